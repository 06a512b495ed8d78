#compdef relay

autoload -U is-at-least

_relay() {
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
'*--addr=[Primary IP address to serve on; once per family (IPv4 and IPv6)]:IP:_default' \
'*--alt-addr=[Second IP address\: turns on RFC 5780 behaviour discovery; once per family]:IP2:_default' \
'--port=[Primary port (STUN, rendezvous and relay; UDP and TCP)]:PORT:_default' \
'--alt-port=[Alternate port for RFC 5780]:ALT_PORT:_default' \
'--secret=[Require tokens made from this secret for rendezvous and relaying]:SECRET:_default' \
'--print-token=[Print a token valid for SECS seconds (needs --secret) and exit]:SECS:_default' \
'--metrics=[Serve Prometheus metrics over HTTP on this address; bind it to localhost (e.g. 127.0.0.1\:9478)\: it has no authentication and no connection cap]:ADDR:_default' \
'--rate=[Requests per second per source IP]:RATE:_default' \
'--burst=[Request burst per source IP]:BURST:_default' \
'--max-sessions=[Most sessions at once]:MAX_SESSIONS:_default' \
'--sessions-per-source=[Most sessions per source IP]:SESSIONS_PER_SOURCE:_default' \
'--session-bytes=[Bytes relayed per session]:SESSION_BYTES:_default' \
'--session-secs=[Longest session life, in seconds]:SESSION_SECS:_default' \
'--idle-secs=[Idle seconds before a registration expires]:IDLE_SECS:_default' \
'--dialbacks-per-min=[Dial-backs per minute per source IP]:DIALBACKS_PER_MIN:_default' \
'--max-tcp=[Most TCP connections open at once (kept under the descriptor limit too)]:MAX_TCP:_default' \
'--tcp-per-source=[Most TCP connections per source (IPv4 address or IPv6 /64)]:TCP_PER_SOURCE:_default' \
'--json[Print the startup line as JSON]' \
'--allow-private[Serve and relay for private, loopback and CGNAT addresses (labs and tests only)]' \
'*-v[More log output on stderr (-v, -vv)]' \
'*--verbose[More log output on stderr (-v, -vv)]' \
'-h[Print help (see more with '\''--help'\'')]' \
'--help[Print help (see more with '\''--help'\'')]' \
'-V[Print version]' \
'--version[Print version]' \
&& ret=0
}

(( $+functions[_relay_commands] )) ||
_relay_commands() {
    local commands; commands=()
    _describe -t commands 'relay commands' commands "$@"
}

if [ "$funcstack[1]" = "_relay" ]; then
    _relay "$@"
else
    compdef _relay relay
fi
