complete -c natprobe -s s -l server -d 'STUN server HOST[:PORT] (port 3478 when omitted; IPv6 as 2001:db8::1 or [2001:db8::1]:3478, no zone id); repeat to compare servers. Default: a built-in list of public servers, RFC 5780-capable ones first' -r
complete -c natprobe -l timeout -d 'Give up on the first answer after this many milliseconds' -r
complete -c natprobe -l lifetime-max -d 'Longest idle gap tried by --lifetime, in seconds' -r
complete -c natprobe -l color -d 'When to colour the text output' -r -f -a "auto\t'Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`'
always\t'Always colour (never with `--json`)'
never\t'Never colour'"
complete -c natprobe -l json -d 'Print one JSON object (stable keys, `schema` version) instead of text'
complete -c natprobe -l lifetime -d 'Also measure how long an idle mapping survives (takes up to --lifetime-max)'
complete -c natprobe -l no-portmap -d 'Do not ask the router which port-mapping protocols (PCP, NAT-PMP, UPnP IGD) it speaks'
complete -c natprobe -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c natprobe -s h -l help -d 'Print help (see more with \'--help\')'
complete -c natprobe -s V -l version -d 'Print version'
