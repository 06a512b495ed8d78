# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_punch_global_optspecs
    string join \n h/help V/version
end

function __fish_punch_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_punch_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_punch_using_subcommand
    set -l cmd (__fish_punch_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c punch -n "__fish_punch_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c punch -n "__fish_punch_needs_command" -s V -l version -d 'Print version'
complete -c punch -n "__fish_punch_needs_command" -f -a "listen" -d 'Wait for the other side; prints a code unless --code is given'
complete -c punch -n "__fish_punch_needs_command" -f -a "connect" -d 'Join the side that printed CODE'
complete -c punch -n "__fish_punch_needs_command" -f -a "serve" -d 'Host a service for everyone who has the code: prints a long code (a number and eight words) and serves every peer that joins it with `punch connect CODE`, one after another and several at once, each in its own session, until SIGINT or SIGTERM'
complete -c punch -n "__fish_punch_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c punch -n "__fish_punch_using_subcommand listen" -l relay -d 'natkit relay HOST[:PORT] to meet at (port 3478 when omitted). Not used with --manual. Without it (and without NATKIT_RELAY) punch runs serverless, as with --manual, its public address from --stun or from natprobe\'s built-in public STUN servers' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l stun -d 'With --manual: a STUN server HOST[:PORT] that tells this side\'s public address (put in the offer; without it, the offer carries only local and router-mapped addresses). Without a relay: instead of the built-in public servers' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l peer -d 'With --manual: the other side\'s offer' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l peer-file -d 'With --manual: wait for the other side\'s offer as the first line of FILE. Serverless serve: peers\' offers, one per line appended to FILE' -r -F
complete -c punch -n "__fish_punch_using_subcommand listen" -l token -d 'Relay token, hex (when the relay runs with --secret)' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l direct-timeout -d 'Give up on a direct path after this many milliseconds and use the relay' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l echo-target -d 'With --icmp: where the listener\'s echo requests go — an address where nothing answers, the same on both sides (default 3.3.3.3, pwnat\'s)' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l keepalive -d 'Keepalive interval in seconds (keeps NAT mappings open)' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l dead-peer-timeout -d 'End the session (exit 2) when nothing has come from the other side, directly or through the relay, for this many seconds: a network that changes is a stall, one gone for good is an error. Both sides end by the same rule' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l code -d 'Use this code instead of a random one' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l expose -d 'Host a local TCP service: each connection the other side makes (with --local) is carried to HOST:PORT here' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l expose-udp -d 'Host a local UDP service: each UDP source on the other side (with --local-udp) is its own flow, reaching HOST:PORT here from a port of its own' -r
complete -c punch -n "__fish_punch_using_subcommand listen" -l manual -d 'Serverless: print a one-line offer to paste on the other side and take theirs (from --peer, --peer-file, or the terminal); no rendezvous server, no relay to fall back to'
complete -c punch -n "__fish_punch_using_subcommand listen" -l json -d 'JSON lines on stderr instead of text'
complete -c punch -n "__fish_punch_using_subcommand listen" -l hard -d 'When both NATs pick a new port per destination (symmetric × symmetric), still try birthday probing from both sides for 10 s before settling on the relay (it works only with NATs whose ports are not fully random)'
complete -c punch -n "__fish_punch_using_subcommand listen" -l tcp -d 'Punch TCP too: after authenticating, try a direct TCP connection (simultaneous open from the port the relay saw) and carry the pipe over TLS on it when it works; else go on over UDP. Carries the pipe only (not --expose / --local)'
complete -c punch -n "__fish_punch_using_subcommand listen" -l no-portmap -d 'Do not ask the router (PCP, NAT-PMP, UPnP IGD) to map the punch port; by default a mapped port is offered to the peer as one more candidate and removed at exit'
complete -c punch -n "__fish_punch_using_subcommand listen" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c punch -n "__fish_punch_using_subcommand listen" -l icmp -d 'No server at all (the pwnat technique; needs CAP_NET_RAW): send ICMP echo requests to --echo-target and wait for a connector\'s ICMP Time Exceeded, which the NAT lets in and which tells where to punch UDP. Works when the connector has a public address'
complete -c punch -n "__fish_punch_using_subcommand listen" -s h -l help -d 'Print help'
complete -c punch -n "__fish_punch_using_subcommand connect" -l relay -d 'natkit relay HOST[:PORT] to meet at (port 3478 when omitted). Not used with --manual. Without it (and without NATKIT_RELAY) punch runs serverless, as with --manual, its public address from --stun or from natprobe\'s built-in public STUN servers' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l stun -d 'With --manual: a STUN server HOST[:PORT] that tells this side\'s public address (put in the offer; without it, the offer carries only local and router-mapped addresses). Without a relay: instead of the built-in public servers' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l peer -d 'With --manual: the other side\'s offer' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l peer-file -d 'With --manual: wait for the other side\'s offer as the first line of FILE. Serverless serve: peers\' offers, one per line appended to FILE' -r -F
complete -c punch -n "__fish_punch_using_subcommand connect" -l token -d 'Relay token, hex (when the relay runs with --secret)' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l direct-timeout -d 'Give up on a direct path after this many milliseconds and use the relay' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l echo-target -d 'With --icmp: where the listener\'s echo requests go — an address where nothing answers, the same on both sides (default 3.3.3.3, pwnat\'s)' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l keepalive -d 'Keepalive interval in seconds (keeps NAT mappings open)' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l dead-peer-timeout -d 'End the session (exit 2) when nothing has come from the other side, directly or through the relay, for this many seconds: a network that changes is a stall, one gone for good is an error. Both sides end by the same rule' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l local -d 'Listen on [HOST:]PORT here (HOST defaults to 127.0.0.1) and carry every accepted TCP connection to the other side\'s --expose service, many at once' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l local-udp -d 'Receive UDP on [HOST:]PORT here (HOST defaults to 127.0.0.1): every local source is its own flow to the other side\'s --expose-udp service, and gets its answers' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l icmp -d 'No server at all (the pwnat technique; needs CAP_NET_RAW): send the listener at LISTENER_HOST (its public IPv4 address) an ICMP Time Exceeded that its NAT takes for an answer to its echo requests, then punch UDP' -r
complete -c punch -n "__fish_punch_using_subcommand connect" -l manual -d 'Serverless: print a one-line offer to paste on the other side and take theirs (from --peer, --peer-file, or the terminal); no rendezvous server, no relay to fall back to'
complete -c punch -n "__fish_punch_using_subcommand connect" -l json -d 'JSON lines on stderr instead of text'
complete -c punch -n "__fish_punch_using_subcommand connect" -l hard -d 'When both NATs pick a new port per destination (symmetric × symmetric), still try birthday probing from both sides for 10 s before settling on the relay (it works only with NATs whose ports are not fully random)'
complete -c punch -n "__fish_punch_using_subcommand connect" -l tcp -d 'Punch TCP too: after authenticating, try a direct TCP connection (simultaneous open from the port the relay saw) and carry the pipe over TLS on it when it works; else go on over UDP. Carries the pipe only (not --expose / --local)'
complete -c punch -n "__fish_punch_using_subcommand connect" -l no-portmap -d 'Do not ask the router (PCP, NAT-PMP, UPnP IGD) to map the punch port; by default a mapped port is offered to the peer as one more candidate and removed at exit'
complete -c punch -n "__fish_punch_using_subcommand connect" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c punch -n "__fish_punch_using_subcommand connect" -s h -l help -d 'Print help'
complete -c punch -n "__fish_punch_using_subcommand serve" -l relay -d 'natkit relay HOST[:PORT] to meet at (port 3478 when omitted). Not used with --manual. Without it (and without NATKIT_RELAY) punch runs serverless, as with --manual, its public address from --stun or from natprobe\'s built-in public STUN servers' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l stun -d 'With --manual: a STUN server HOST[:PORT] that tells this side\'s public address (put in the offer; without it, the offer carries only local and router-mapped addresses). Without a relay: instead of the built-in public servers' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l peer -d 'With --manual: the other side\'s offer' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l peer-file -d 'With --manual: wait for the other side\'s offer as the first line of FILE. Serverless serve: peers\' offers, one per line appended to FILE' -r -F
complete -c punch -n "__fish_punch_using_subcommand serve" -l token -d 'Relay token, hex (when the relay runs with --secret)' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l direct-timeout -d 'Give up on a direct path after this many milliseconds and use the relay' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l echo-target -d 'With --icmp: where the listener\'s echo requests go — an address where nothing answers, the same on both sides (default 3.3.3.3, pwnat\'s)' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l keepalive -d 'Keepalive interval in seconds (keeps NAT mappings open)' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l dead-peer-timeout -d 'End the session (exit 2) when nothing has come from the other side, directly or through the relay, for this many seconds: a network that changes is a stall, one gone for good is an error. Both sides end by the same rule' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l expose -d 'The local TCP service: each connection a peer makes (with --local) is carried to HOST:PORT here' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l expose-udp -d 'Host a local UDP service: each UDP source on the other side (with --local-udp) is its own flow, reaching HOST:PORT here from a port of its own' -r
complete -c punch -n "__fish_punch_using_subcommand serve" -l manual -d 'Serverless: print a one-line offer to paste on the other side and take theirs (from --peer, --peer-file, or the terminal); no rendezvous server, no relay to fall back to'
complete -c punch -n "__fish_punch_using_subcommand serve" -l json -d 'JSON lines on stderr instead of text'
complete -c punch -n "__fish_punch_using_subcommand serve" -l hard -d 'When both NATs pick a new port per destination (symmetric × symmetric), still try birthday probing from both sides for 10 s before settling on the relay (it works only with NATs whose ports are not fully random)'
complete -c punch -n "__fish_punch_using_subcommand serve" -l tcp -d 'Punch TCP too: after authenticating, try a direct TCP connection (simultaneous open from the port the relay saw) and carry the pipe over TLS on it when it works; else go on over UDP. Carries the pipe only (not --expose / --local)'
complete -c punch -n "__fish_punch_using_subcommand serve" -l no-portmap -d 'Do not ask the router (PCP, NAT-PMP, UPnP IGD) to map the punch port; by default a mapped port is offered to the peer as one more candidate and removed at exit'
complete -c punch -n "__fish_punch_using_subcommand serve" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c punch -n "__fish_punch_using_subcommand serve" -l icmp -d 'Not for serve (it needs the relay\'s lobby); present so the shared options parse'
complete -c punch -n "__fish_punch_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c punch -n "__fish_punch_using_subcommand help; and not __fish_seen_subcommand_from listen connect serve help" -f -a "listen" -d 'Wait for the other side; prints a code unless --code is given'
complete -c punch -n "__fish_punch_using_subcommand help; and not __fish_seen_subcommand_from listen connect serve help" -f -a "connect" -d 'Join the side that printed CODE'
complete -c punch -n "__fish_punch_using_subcommand help; and not __fish_seen_subcommand_from listen connect serve help" -f -a "serve" -d 'Host a service for everyone who has the code: prints a long code (a number and eight words) and serves every peer that joins it with `punch connect CODE`, one after another and several at once, each in its own session, until SIGINT or SIGTERM'
complete -c punch -n "__fish_punch_using_subcommand help; and not __fish_seen_subcommand_from listen connect serve help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
