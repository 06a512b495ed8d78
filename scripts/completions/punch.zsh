#compdef punch

autoload -U is-at-least

_punch() {
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
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
'-V[Print version]' \
'--version[Print version]' \
":: :_punch_commands" \
"*::: :->punch" \
&& ret=0
    case $state in
    (punch)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:punch-command-$line[1]:"
        case $line[1] in
            (listen)
_arguments "${_arguments_options[@]}" : \
'--relay=[natkit relay HOST\[\:PORT\] to meet at (port 3478 when omitted). Not used with --manual. Without it (and without NATKIT_RELAY) punch runs serverless, as with --manual, its public address from --stun or from natprobe'\''s built-in public STUN servers]:HOST[:PORT]:_default' \
'--stun=[With --manual\: a STUN server HOST\[\:PORT\] that tells this side'\''s public address (put in the offer; without it, the offer carries only local and router-mapped addresses). Without a relay\: instead of the built-in public servers]:HOST[:PORT]:_default' \
'(--peer-file)--peer=[With --manual\: the other side'\''s offer]:OFFER:_default' \
'--peer-file=[With --manual\: wait for the other side'\''s offer as the first line of FILE. Serverless serve\: peers'\'' offers, one per line appended to FILE]:FILE:_files' \
'--token=[Relay token, hex (when the relay runs with --secret)]:HEX:_default' \
'--direct-timeout=[Give up on a direct path after this many milliseconds and use the relay]:MS:_default' \
'--echo-target=[With --icmp\: where the listener'\''s echo requests go — an address where nothing answers, the same on both sides (default 3.3.3.3, pwnat'\''s)]:IP:_default' \
'--keepalive=[Keepalive interval in seconds (keeps NAT mappings open)]:SECS:_default' \
'--dead-peer-timeout=[End the session (exit 2) when nothing has come from the other side, directly or through the relay, for this many seconds\: a network that changes is a stall, one gone for good is an error. Both sides end by the same rule]:SECS:_default' \
'--code=[Use this code instead of a random one]:CODE:_default' \
'--expose=[Host a local TCP service\: each connection the other side makes (with --local) is carried to HOST\:PORT here]:HOST:PORT:_default' \
'--expose-udp=[Host a local UDP service\: each UDP source on the other side (with --local-udp) is its own flow, reaching HOST\:PORT here from a port of its own]:HOST:PORT:_default' \
'--manual[Serverless\: print a one-line offer to paste on the other side and take theirs (from --peer, --peer-file, or the terminal); no rendezvous server, no relay to fall back to]' \
'--json[JSON lines on stderr instead of text]' \
'--hard[When both NATs pick a new port per destination (symmetric × symmetric), still try birthday probing from both sides for 10 s before settling on the relay (it works only with NATs whose ports are not fully random)]' \
'(--manual --icmp)--tcp[Punch TCP too\: after authenticating, try a direct TCP connection (simultaneous open from the port the relay saw) and carry the pipe over TLS on it when it works; else go on over UDP. Carries the pipe only (not --expose / --local)]' \
'--no-portmap[Do not ask the router (PCP, NAT-PMP, UPnP IGD) to map the punch port; by default a mapped port is offered to the peer as one more candidate and removed at exit]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'(--relay --manual)--icmp[No server at all (the pwnat technique; needs CAP_NET_RAW)\: send ICMP echo requests to --echo-target and wait for a connector'\''s ICMP Time Exceeded, which the NAT lets in and which tells where to punch UDP. Works when the connector has a public address]' \
'-h[Print help]' \
'--help[Print help]' \
&& ret=0
;;
(connect)
_arguments "${_arguments_options[@]}" : \
'--relay=[natkit relay HOST\[\:PORT\] to meet at (port 3478 when omitted). Not used with --manual. Without it (and without NATKIT_RELAY) punch runs serverless, as with --manual, its public address from --stun or from natprobe'\''s built-in public STUN servers]:HOST[:PORT]:_default' \
'--stun=[With --manual\: a STUN server HOST\[\:PORT\] that tells this side'\''s public address (put in the offer; without it, the offer carries only local and router-mapped addresses). Without a relay\: instead of the built-in public servers]:HOST[:PORT]:_default' \
'(--peer-file)--peer=[With --manual\: the other side'\''s offer]:OFFER:_default' \
'--peer-file=[With --manual\: wait for the other side'\''s offer as the first line of FILE. Serverless serve\: peers'\'' offers, one per line appended to FILE]:FILE:_files' \
'--token=[Relay token, hex (when the relay runs with --secret)]:HEX:_default' \
'--direct-timeout=[Give up on a direct path after this many milliseconds and use the relay]:MS:_default' \
'--echo-target=[With --icmp\: where the listener'\''s echo requests go — an address where nothing answers, the same on both sides (default 3.3.3.3, pwnat'\''s)]:IP:_default' \
'--keepalive=[Keepalive interval in seconds (keeps NAT mappings open)]:SECS:_default' \
'--dead-peer-timeout=[End the session (exit 2) when nothing has come from the other side, directly or through the relay, for this many seconds\: a network that changes is a stall, one gone for good is an error. Both sides end by the same rule]:SECS:_default' \
'--local=[Listen on \[HOST\:\]PORT here (HOST defaults to 127.0.0.1) and carry every accepted TCP connection to the other side'\''s --expose service, many at once]:[HOST:]PORT:_default' \
'--local-udp=[Receive UDP on \[HOST\:\]PORT here (HOST defaults to 127.0.0.1)\: every local source is its own flow to the other side'\''s --expose-udp service, and gets its answers]:[HOST:]PORT:_default' \
'(--relay --manual)--icmp=[No server at all (the pwnat technique; needs CAP_NET_RAW)\: send the listener at LISTENER_HOST (its public IPv4 address) an ICMP Time Exceeded that its NAT takes for an answer to its echo requests, then punch UDP]:LISTENER_HOST:_default' \
'--manual[Serverless\: print a one-line offer to paste on the other side and take theirs (from --peer, --peer-file, or the terminal); no rendezvous server, no relay to fall back to]' \
'--json[JSON lines on stderr instead of text]' \
'--hard[When both NATs pick a new port per destination (symmetric × symmetric), still try birthday probing from both sides for 10 s before settling on the relay (it works only with NATs whose ports are not fully random)]' \
'(--manual --icmp)--tcp[Punch TCP too\: after authenticating, try a direct TCP connection (simultaneous open from the port the relay saw) and carry the pipe over TLS on it when it works; else go on over UDP. Carries the pipe only (not --expose / --local)]' \
'--no-portmap[Do not ask the router (PCP, NAT-PMP, UPnP IGD) to map the punch port; by default a mapped port is offered to the peer as one more candidate and removed at exit]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help]' \
'--help[Print help]' \
':code -- The code the listening side printed (or the longer one `punch serve` printed):_default' \
&& ret=0
;;
(serve)
_arguments "${_arguments_options[@]}" : \
'--relay=[natkit relay HOST\[\:PORT\] to meet at (port 3478 when omitted). Not used with --manual. Without it (and without NATKIT_RELAY) punch runs serverless, as with --manual, its public address from --stun or from natprobe'\''s built-in public STUN servers]:HOST[:PORT]:_default' \
'--stun=[With --manual\: a STUN server HOST\[\:PORT\] that tells this side'\''s public address (put in the offer; without it, the offer carries only local and router-mapped addresses). Without a relay\: instead of the built-in public servers]:HOST[:PORT]:_default' \
'(--peer-file)--peer=[With --manual\: the other side'\''s offer]:OFFER:_default' \
'--peer-file=[With --manual\: wait for the other side'\''s offer as the first line of FILE. Serverless serve\: peers'\'' offers, one per line appended to FILE]:FILE:_files' \
'--token=[Relay token, hex (when the relay runs with --secret)]:HEX:_default' \
'--direct-timeout=[Give up on a direct path after this many milliseconds and use the relay]:MS:_default' \
'--echo-target=[With --icmp\: where the listener'\''s echo requests go — an address where nothing answers, the same on both sides (default 3.3.3.3, pwnat'\''s)]:IP:_default' \
'--keepalive=[Keepalive interval in seconds (keeps NAT mappings open)]:SECS:_default' \
'--dead-peer-timeout=[End the session (exit 2) when nothing has come from the other side, directly or through the relay, for this many seconds\: a network that changes is a stall, one gone for good is an error. Both sides end by the same rule]:SECS:_default' \
'--expose=[The local TCP service\: each connection a peer makes (with --local) is carried to HOST\:PORT here]:HOST:PORT:_default' \
'--expose-udp=[Host a local UDP service\: each UDP source on the other side (with --local-udp) is its own flow, reaching HOST\:PORT here from a port of its own]:HOST:PORT:_default' \
'--manual[Serverless\: print a one-line offer to paste on the other side and take theirs (from --peer, --peer-file, or the terminal); no rendezvous server, no relay to fall back to]' \
'--json[JSON lines on stderr instead of text]' \
'--hard[When both NATs pick a new port per destination (symmetric × symmetric), still try birthday probing from both sides for 10 s before settling on the relay (it works only with NATs whose ports are not fully random)]' \
'(--manual --icmp)--tcp[Punch TCP too\: after authenticating, try a direct TCP connection (simultaneous open from the port the relay saw) and carry the pipe over TLS on it when it works; else go on over UDP. Carries the pipe only (not --expose / --local)]' \
'--no-portmap[Do not ask the router (PCP, NAT-PMP, UPnP IGD) to map the punch port; by default a mapped port is offered to the peer as one more candidate and removed at exit]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'--icmp[Not for serve (it needs the relay'\''s lobby); present so the shared options parse]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
&& ret=0
;;
(help)
_arguments "${_arguments_options[@]}" : \
":: :_punch__subcmd__help_commands" \
"*::: :->help" \
&& ret=0

    case $state in
    (help)
        words=($line[1] "${words[@]}")
        (( CURRENT += 1 ))
        curcontext="${curcontext%:*:*}:punch-help-command-$line[1]:"
        case $line[1] in
            (listen)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(connect)
_arguments "${_arguments_options[@]}" : \
&& ret=0
;;
(serve)
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

(( $+functions[_punch_commands] )) ||
_punch_commands() {
    local commands; commands=(
'listen:Wait for the other side; prints a code unless --code is given' \
'connect:Join the side that printed CODE' \
'serve:Host a service for everyone who has the code\: prints a long code (a number and eight words) and serves every peer that joins it with \`punch connect CODE\`, one after another and several at once, each in its own session, until SIGINT or SIGTERM' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'punch commands' commands "$@"
}
(( $+functions[_punch__subcmd__connect_commands] )) ||
_punch__subcmd__connect_commands() {
    local commands; commands=()
    _describe -t commands 'punch connect commands' commands "$@"
}
(( $+functions[_punch__subcmd__help_commands] )) ||
_punch__subcmd__help_commands() {
    local commands; commands=(
'listen:Wait for the other side; prints a code unless --code is given' \
'connect:Join the side that printed CODE' \
'serve:Host a service for everyone who has the code\: prints a long code (a number and eight words) and serves every peer that joins it with \`punch connect CODE\`, one after another and several at once, each in its own session, until SIGINT or SIGTERM' \
'help:Print this message or the help of the given subcommand(s)' \
    )
    _describe -t commands 'punch help commands' commands "$@"
}
(( $+functions[_punch__subcmd__help__subcmd__connect_commands] )) ||
_punch__subcmd__help__subcmd__connect_commands() {
    local commands; commands=()
    _describe -t commands 'punch help connect commands' commands "$@"
}
(( $+functions[_punch__subcmd__help__subcmd__help_commands] )) ||
_punch__subcmd__help__subcmd__help_commands() {
    local commands; commands=()
    _describe -t commands 'punch help help commands' commands "$@"
}
(( $+functions[_punch__subcmd__help__subcmd__listen_commands] )) ||
_punch__subcmd__help__subcmd__listen_commands() {
    local commands; commands=()
    _describe -t commands 'punch help listen commands' commands "$@"
}
(( $+functions[_punch__subcmd__help__subcmd__serve_commands] )) ||
_punch__subcmd__help__subcmd__serve_commands() {
    local commands; commands=()
    _describe -t commands 'punch help serve commands' commands "$@"
}
(( $+functions[_punch__subcmd__listen_commands] )) ||
_punch__subcmd__listen_commands() {
    local commands; commands=()
    _describe -t commands 'punch listen commands' commands "$@"
}
(( $+functions[_punch__subcmd__serve_commands] )) ||
_punch__subcmd__serve_commands() {
    local commands; commands=()
    _describe -t commands 'punch serve commands' commands "$@"
}

if [ "$funcstack[1]" = "_punch" ]; then
    _punch "$@"
else
    compdef _punch punch
fi
