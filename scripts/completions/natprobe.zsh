#compdef natprobe

autoload -U is-at-least

_natprobe() {
    typeset -A opt_args
    typeset -a _arguments_options
    local ret=1

    if is-at-least 5.2; then
        _arguments_options=(-s -S -C)
    else
        _arguments_options=(-s -C)
    fi

    local context curcontext="$curcontext" state line
    _arguments "${_arguments_options[@]}" : \
'*-s+[STUN server HOST\[\:PORT\] (port 3478 when omitted; IPv6 as 2001\:db8\:\:1 or \[2001\:db8\:\:1\]\:3478, no zone id); repeat to compare servers. Default\: a built-in list of public servers, RFC 5780-capable ones first]:HOST[:PORT]:_default' \
'*--server=[STUN server HOST\[\:PORT\] (port 3478 when omitted; IPv6 as 2001\:db8\:\:1 or \[2001\:db8\:\:1\]\:3478, no zone id); repeat to compare servers. Default\: a built-in list of public servers, RFC 5780-capable ones first]:HOST[:PORT]:_default' \
'--timeout=[Give up on the first answer after this many milliseconds]:MS:_default' \
'--lifetime-max=[Longest idle gap tried by --lifetime, in seconds]:SECS:_default' \
'--color=[When to colour the text output]:WHEN:((auto\:"Colour when stdout is a terminal, \`NO_COLOR\` is unset and \`TERM\` is not \`dumb\`"
always\:"Always colour (never with \`--json\`)"
never\:"Never colour"))' \
'--json[Print one JSON object (stable keys, \`schema\` version) instead of text]' \
'--lifetime[Also measure how long an idle mapping survives (takes up to --lifetime-max)]' \
'--no-portmap[Do not ask the router which port-mapping protocols (PCP, NAT-PMP, UPnP IGD) it speaks]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
'-V[Print version]' \
'--version[Print version]' \
&& ret=0
}

(( $+functions[_natprobe_commands] )) ||
_natprobe_commands() {
    local commands; commands=()
    _describe -t commands 'natprobe commands' commands "$@"
}

if [ "$funcstack[1]" = "_natprobe" ]; then
    _natprobe "$@"
else
    compdef _natprobe natprobe
fi
