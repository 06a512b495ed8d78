#compdef portmap

autoload -U is-at-least

_portmap() {
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
'--gateway=[The router to ask, instead of the default gateway]:IP:_default' \
'--timeout=[Give up on a router that does not answer after this many milliseconds]:MS:_default' \
'--state=[Where natkit records the mappings it made (default\: \$NATKIT_STATE_DIR, else \$XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)]:FILE:_files' \
'--color=[When to colour the text output]:WHEN:((auto\:"Colour when stdout is a terminal, \`NO_COLOR\` is unset and \`TERM\` is not \`dumb\`"
always\:"Always colour (never with \`--json\`)"
never\:"Never colour"))' \
'--json[Print JSON (stable keys, \`schema\` version) instead of text]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
'-V[Print version]' \
'--version[Print version]' \
":: :_portmap_commands" \
"*::: :->portmap" \
&& ret=0
    case $state in
    (portmap)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:portmap-command-$line[1]:"
        case $line[1] in
            (probe)
_arguments "${_arguments_options[@]}" : \
'--gateway=[The router to ask, instead of the default gateway]:IP:_default' \
'--timeout=[Give up on a router that does not answer after this many milliseconds]:MS:_default' \
'--state=[Where natkit records the mappings it made (default\: \$NATKIT_STATE_DIR, else \$XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)]:FILE:_files' \
'--color=[When to colour the text output]:WHEN:((auto\:"Colour when stdout is a terminal, \`NO_COLOR\` is unset and \`TERM\` is not \`dumb\`"
always\:"Always colour (never with \`--json\`)"
never\:"Never colour"))' \
'--json[Print JSON (stable keys, \`schema\` version) instead of text]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
&& ret=0
;;
(external-ip)
_arguments "${_arguments_options[@]}" : \
'--gateway=[The router to ask, instead of the default gateway]:IP:_default' \
'--timeout=[Give up on a router that does not answer after this many milliseconds]:MS:_default' \
'--state=[Where natkit records the mappings it made (default\: \$NATKIT_STATE_DIR, else \$XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)]:FILE:_files' \
'--color=[When to colour the text output]:WHEN:((auto\:"Colour when stdout is a terminal, \`NO_COLOR\` is unset and \`TERM\` is not \`dumb\`"
always\:"Always colour (never with \`--json\`)"
never\:"Never colour"))' \
'--json[Print JSON (stable keys, \`schema\` version) instead of text]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
&& ret=0
;;
(add)
_arguments "${_arguments_options[@]}" : \
'--proto=[Protocol]:PROTO:((tcp\:"TCP"
udp\:"UDP"))' \
'--external=[External port to ask for (default\: the same as PORT; the router may pick another)]:PORT:_default' \
'--lifetime=[Lease in seconds; 0 asks for a permanent mapping (UPnP only)]:SECS:_default' \
'--via=[Protocol to use]:VIA:((auto\:"PCP, then NAT-PMP, then UPnP\: the first that works"
upnp\:"UPnP IGD"
natpmp\:"NAT-PMP (RFC 6886)"
pcp\:"PCP (RFC 6887)"))' \
'--relay=[natkit relay HOST\[\:PORT\] for --verify]:HOST[:PORT]:_default' \
'--gateway=[The router to ask, instead of the default gateway]:IP:_default' \
'--timeout=[Give up on a router that does not answer after this many milliseconds]:MS:_default' \
'--state=[Where natkit records the mappings it made (default\: \$NATKIT_STATE_DIR, else \$XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)]:FILE:_files' \
'--color=[When to colour the text output]:WHEN:((auto\:"Colour when stdout is a terminal, \`NO_COLOR\` is unset and \`TERM\` is not \`dumb\`"
always\:"Always colour (never with \`--json\`)"
never\:"Never colour"))' \
'--keep[Stay running\: renew at half the lease, re-create the mapping after a router restart, remove it on SIGINT/SIGTERM]' \
'--verify[Ask a natkit relay (--relay) to connect to the external address and port from outside, and report whether it got through]' \
'--ipv6[Open a pinhole in the router'\''s IPv6 firewall for this host'\''s global address instead (PCP or UPnP IGD\:2; no NAT\: the external port is PORT). --verify checks it over IPv6 (the relay needs an IPv6 address, and --alt-addr on IPv6 for UDP)]' \
'--json[Print JSON (stable keys, \`schema\` version) instead of text]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
':port -- Local port to forward to:_default' \
&& ret=0
;;
(delete)
_arguments "${_arguments_options[@]}" : \
'--proto=[Protocol]:PROTO:((tcp\:"TCP"
udp\:"UDP"))' \
'--via=[Protocol to use (default\: the one natkit recorded, else all three)]:VIA:((auto\:"PCP, then NAT-PMP, then UPnP\: the first that works"
upnp\:"UPnP IGD"
natpmp\:"NAT-PMP (RFC 6886)"
pcp\:"PCP (RFC 6887)"))' \
'--gateway=[The router to ask, instead of the default gateway]:IP:_default' \
'--timeout=[Give up on a router that does not answer after this many milliseconds]:MS:_default' \
'--state=[Where natkit records the mappings it made (default\: \$NATKIT_STATE_DIR, else \$XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)]:FILE:_files' \
'--color=[When to colour the text output]:WHEN:((auto\:"Colour when stdout is a terminal, \`NO_COLOR\` is unset and \`TERM\` is not \`dumb\`"
always\:"Always colour (never with \`--json\`)"
never\:"Never colour"))' \
'()--all-mine[Remove every mapping natkit recorded for this gateway (e.g. after a crash)]' \
'--ipv6[Remove an IPv6 pinhole natkit opened (\`add --ipv6\`) instead]' \
'--json[Print JSON (stable keys, \`schema\` version) instead of text]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
'::port -- Local port whose mapping to remove (with --via upnp\: the external port):_default' \
&& ret=0
;;
(list)
_arguments "${_arguments_options[@]}" : \
'--gateway=[The router to ask, instead of the default gateway]:IP:_default' \
'--timeout=[Give up on a router that does not answer after this many milliseconds]:MS:_default' \
'--state=[Where natkit records the mappings it made (default\: \$NATKIT_STATE_DIR, else \$XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)]:FILE:_files' \
'--color=[When to colour the text output]:WHEN:((auto\:"Colour when stdout is a terminal, \`NO_COLOR\` is unset and \`TERM\` is not \`dumb\`"
always\:"Always colour (never with \`--json\`)"
never\:"Never colour"))' \
'--ipv6[natkit'\''s IPv6 pinholes instead (routers cannot list those)]' \
'--json[Print JSON (stable keys, \`schema\` version) instead of text]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
":: :_portmap__subcmd__help_commands" \
"*::: :->help" \
&& ret=0

    case $state in
    (help)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:portmap-help-command-$line[1]:"
        case $line[1] in
            (probe)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(external-ip)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(add)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(delete)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(list)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
        esac
    ;;
esac
;;
        esac
    ;;
esac
}

(( $+functions[_portmap_commands] )) ||
_portmap_commands() {
    local commands; commands=(
'probe:Which protocols the router answers (read-only\: creates nothing)' \
'external-ip:The router'\''s external address' \
'add:Forward a port of the router to this machine' \
'delete:Remove a mapping' \
'list:The router'\''s UPnP table and natkit'\''s own NAT-PMP/PCP leases' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'portmap commands' commands "$@"
}
(( $+functions[_portmap__subcmd__add_commands] )) ||
_portmap__subcmd__add_commands() {
    local commands; commands=()
    _describe -t commands 'portmap add commands' commands "$@"
}
(( $+functions[_portmap__subcmd__delete_commands] )) ||
_portmap__subcmd__delete_commands() {
    local commands; commands=()
    _describe -t commands 'portmap delete commands' commands "$@"
}
(( $+functions[_portmap__subcmd__external-ip_commands] )) ||
_portmap__subcmd__external-ip_commands() {
    local commands; commands=()
    _describe -t commands 'portmap external-ip commands' commands "$@"
}
(( $+functions[_portmap__subcmd__help_commands] )) ||
_portmap__subcmd__help_commands() {
    local commands; commands=(
'probe:Which protocols the router answers (read-only\: creates nothing)' \
'external-ip:The router'\''s external address' \
'add:Forward a port of the router to this machine' \
'delete:Remove a mapping' \
'list:The router'\''s UPnP table and natkit'\''s own NAT-PMP/PCP leases' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'portmap help commands' commands "$@"
}
(( $+functions[_portmap__subcmd__help__subcmd__add_commands] )) ||
_portmap__subcmd__help__subcmd__add_commands() {
    local commands; commands=()
    _describe -t commands 'portmap help add commands' commands "$@"
}
(( $+functions[_portmap__subcmd__help__subcmd__delete_commands] )) ||
_portmap__subcmd__help__subcmd__delete_commands() {
    local commands; commands=()
    _describe -t commands 'portmap help delete commands' commands "$@"
}
(( $+functions[_portmap__subcmd__help__subcmd__external-ip_commands] )) ||
_portmap__subcmd__help__subcmd__external-ip_commands() {
    local commands; commands=()
    _describe -t commands 'portmap help external-ip commands' commands "$@"
}
(( $+functions[_portmap__subcmd__help__subcmd__help_commands] )) ||
_portmap__subcmd__help__subcmd__help_commands() {
    local commands; commands=()
    _describe -t commands 'portmap help help commands' commands "$@"
}
(( $+functions[_portmap__subcmd__help__subcmd__list_commands] )) ||
_portmap__subcmd__help__subcmd__list_commands() {
    local commands; commands=()
    _describe -t commands 'portmap help list commands' commands "$@"
}
(( $+functions[_portmap__subcmd__help__subcmd__probe_commands] )) ||
_portmap__subcmd__help__subcmd__probe_commands() {
    local commands; commands=()
    _describe -t commands 'portmap help probe commands' commands "$@"
}
(( $+functions[_portmap__subcmd__list_commands] )) ||
_portmap__subcmd__list_commands() {
    local commands; commands=()
    _describe -t commands 'portmap list commands' commands "$@"
}
(( $+functions[_portmap__subcmd__probe_commands] )) ||
_portmap__subcmd__probe_commands() {
    local commands; commands=()
    _describe -t commands 'portmap probe commands' commands "$@"
}

if [ "$funcstack[1]" = "_portmap" ]; then
    _portmap "$@"
else
    compdef _portmap portmap
fi
