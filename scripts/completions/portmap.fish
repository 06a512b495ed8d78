# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_portmap_global_optspecs
    string join \n gateway= json timeout= state= color= v/verbose h/help V/version
end

function __fish_portmap_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_portmap_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_portmap_using_subcommand
    set -l cmd (__fish_portmap_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c portmap -n "__fish_portmap_needs_command" -l gateway -d 'The router to ask, instead of the default gateway' -r
complete -c portmap -n "__fish_portmap_needs_command" -l timeout -d 'Give up on a router that does not answer after this many milliseconds' -r
complete -c portmap -n "__fish_portmap_needs_command" -l state -d 'Where natkit records the mappings it made (default: $NATKIT_STATE_DIR, else $XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)' -r -F
complete -c portmap -n "__fish_portmap_needs_command" -l color -d 'When to colour the text output' -r -f -a "auto\t'Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`'
always\t'Always colour (never with `--json`)'
never\t'Never colour'"
complete -c portmap -n "__fish_portmap_needs_command" -l json -d 'Print JSON (stable keys, `schema` version) instead of text'
complete -c portmap -n "__fish_portmap_needs_command" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c portmap -n "__fish_portmap_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portmap -n "__fish_portmap_needs_command" -s V -l version -d 'Print version'
complete -c portmap -n "__fish_portmap_needs_command" -f -a "probe" -d 'Which protocols the router answers (read-only: creates nothing)'
complete -c portmap -n "__fish_portmap_needs_command" -f -a "external-ip" -d 'The router\'s external address'
complete -c portmap -n "__fish_portmap_needs_command" -f -a "add" -d 'Forward a port of the router to this machine'
complete -c portmap -n "__fish_portmap_needs_command" -f -a "delete" -d 'Remove a mapping'
complete -c portmap -n "__fish_portmap_needs_command" -f -a "list" -d 'The router\'s UPnP table and natkit\'s own NAT-PMP/PCP leases'
complete -c portmap -n "__fish_portmap_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portmap -n "__fish_portmap_using_subcommand probe" -l gateway -d 'The router to ask, instead of the default gateway' -r
complete -c portmap -n "__fish_portmap_using_subcommand probe" -l timeout -d 'Give up on a router that does not answer after this many milliseconds' -r
complete -c portmap -n "__fish_portmap_using_subcommand probe" -l state -d 'Where natkit records the mappings it made (default: $NATKIT_STATE_DIR, else $XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)' -r -F
complete -c portmap -n "__fish_portmap_using_subcommand probe" -l color -d 'When to colour the text output' -r -f -a "auto\t'Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`'
always\t'Always colour (never with `--json`)'
never\t'Never colour'"
complete -c portmap -n "__fish_portmap_using_subcommand probe" -l json -d 'Print JSON (stable keys, `schema` version) instead of text'
complete -c portmap -n "__fish_portmap_using_subcommand probe" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c portmap -n "__fish_portmap_using_subcommand probe" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portmap -n "__fish_portmap_using_subcommand external-ip" -l gateway -d 'The router to ask, instead of the default gateway' -r
complete -c portmap -n "__fish_portmap_using_subcommand external-ip" -l timeout -d 'Give up on a router that does not answer after this many milliseconds' -r
complete -c portmap -n "__fish_portmap_using_subcommand external-ip" -l state -d 'Where natkit records the mappings it made (default: $NATKIT_STATE_DIR, else $XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)' -r -F
complete -c portmap -n "__fish_portmap_using_subcommand external-ip" -l color -d 'When to colour the text output' -r -f -a "auto\t'Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`'
always\t'Always colour (never with `--json`)'
never\t'Never colour'"
complete -c portmap -n "__fish_portmap_using_subcommand external-ip" -l json -d 'Print JSON (stable keys, `schema` version) instead of text'
complete -c portmap -n "__fish_portmap_using_subcommand external-ip" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c portmap -n "__fish_portmap_using_subcommand external-ip" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portmap -n "__fish_portmap_using_subcommand add" -l proto -d 'Protocol' -r -f -a "tcp\t'TCP'
udp\t'UDP'"
complete -c portmap -n "__fish_portmap_using_subcommand add" -l external -d 'External port to ask for (default: the same as PORT; the router may pick another)' -r
complete -c portmap -n "__fish_portmap_using_subcommand add" -l lifetime -d 'Lease in seconds; 0 asks for a permanent mapping (UPnP only)' -r
complete -c portmap -n "__fish_portmap_using_subcommand add" -l via -d 'Protocol to use' -r -f -a "auto\t'PCP, then NAT-PMP, then UPnP: the first that works'
upnp\t'UPnP IGD'
natpmp\t'NAT-PMP (RFC 6886)'
pcp\t'PCP (RFC 6887)'"
complete -c portmap -n "__fish_portmap_using_subcommand add" -l relay -d 'natkit relay HOST[:PORT] for --verify' -r
complete -c portmap -n "__fish_portmap_using_subcommand add" -l gateway -d 'The router to ask, instead of the default gateway' -r
complete -c portmap -n "__fish_portmap_using_subcommand add" -l timeout -d 'Give up on a router that does not answer after this many milliseconds' -r
complete -c portmap -n "__fish_portmap_using_subcommand add" -l state -d 'Where natkit records the mappings it made (default: $NATKIT_STATE_DIR, else $XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)' -r -F
complete -c portmap -n "__fish_portmap_using_subcommand add" -l color -d 'When to colour the text output' -r -f -a "auto\t'Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`'
always\t'Always colour (never with `--json`)'
never\t'Never colour'"
complete -c portmap -n "__fish_portmap_using_subcommand add" -l keep -d 'Stay running: renew at half the lease, re-create the mapping after a router restart, remove it on SIGINT/SIGTERM'
complete -c portmap -n "__fish_portmap_using_subcommand add" -l verify -d 'Ask a natkit relay (--relay) to connect to the external address and port from outside, and report whether it got through'
complete -c portmap -n "__fish_portmap_using_subcommand add" -l ipv6 -d 'Open a pinhole in the router\'s IPv6 firewall for this host\'s global address instead (PCP or UPnP IGD:2; no NAT: the external port is PORT). --verify checks it over IPv6 (the relay needs an IPv6 address, and --alt-addr on IPv6 for UDP)'
complete -c portmap -n "__fish_portmap_using_subcommand add" -l json -d 'Print JSON (stable keys, `schema` version) instead of text'
complete -c portmap -n "__fish_portmap_using_subcommand add" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c portmap -n "__fish_portmap_using_subcommand add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l proto -d 'Protocol' -r -f -a "tcp\t'TCP'
udp\t'UDP'"
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l via -d 'Protocol to use (default: the one natkit recorded, else all three)' -r -f -a "auto\t'PCP, then NAT-PMP, then UPnP: the first that works'
upnp\t'UPnP IGD'
natpmp\t'NAT-PMP (RFC 6886)'
pcp\t'PCP (RFC 6887)'"
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l gateway -d 'The router to ask, instead of the default gateway' -r
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l timeout -d 'Give up on a router that does not answer after this many milliseconds' -r
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l state -d 'Where natkit records the mappings it made (default: $NATKIT_STATE_DIR, else $XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)' -r -F
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l color -d 'When to colour the text output' -r -f -a "auto\t'Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`'
always\t'Always colour (never with `--json`)'
never\t'Never colour'"
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l all-mine -d 'Remove every mapping natkit recorded for this gateway (e.g. after a crash)'
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l ipv6 -d 'Remove an IPv6 pinhole natkit opened (`add --ipv6`) instead'
complete -c portmap -n "__fish_portmap_using_subcommand delete" -l json -d 'Print JSON (stable keys, `schema` version) instead of text'
complete -c portmap -n "__fish_portmap_using_subcommand delete" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c portmap -n "__fish_portmap_using_subcommand delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portmap -n "__fish_portmap_using_subcommand list" -l gateway -d 'The router to ask, instead of the default gateway' -r
complete -c portmap -n "__fish_portmap_using_subcommand list" -l timeout -d 'Give up on a router that does not answer after this many milliseconds' -r
complete -c portmap -n "__fish_portmap_using_subcommand list" -l state -d 'Where natkit records the mappings it made (default: $NATKIT_STATE_DIR, else $XDG_STATE_HOME/natkit, else ~/.local/state/natkit; file portmap.json)' -r -F
complete -c portmap -n "__fish_portmap_using_subcommand list" -l color -d 'When to colour the text output' -r -f -a "auto\t'Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`'
always\t'Always colour (never with `--json`)'
never\t'Never colour'"
complete -c portmap -n "__fish_portmap_using_subcommand list" -l ipv6 -d 'natkit\'s IPv6 pinholes instead (routers cannot list those)'
complete -c portmap -n "__fish_portmap_using_subcommand list" -l json -d 'Print JSON (stable keys, `schema` version) instead of text'
complete -c portmap -n "__fish_portmap_using_subcommand list" -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c portmap -n "__fish_portmap_using_subcommand list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portmap -n "__fish_portmap_using_subcommand help; and not __fish_seen_subcommand_from probe external-ip add delete list help" -f -a "probe" -d 'Which protocols the router answers (read-only: creates nothing)'
complete -c portmap -n "__fish_portmap_using_subcommand help; and not __fish_seen_subcommand_from probe external-ip add delete list help" -f -a "external-ip" -d 'The router\'s external address'
complete -c portmap -n "__fish_portmap_using_subcommand help; and not __fish_seen_subcommand_from probe external-ip add delete list help" -f -a "add" -d 'Forward a port of the router to this machine'
complete -c portmap -n "__fish_portmap_using_subcommand help; and not __fish_seen_subcommand_from probe external-ip add delete list help" -f -a "delete" -d 'Remove a mapping'
complete -c portmap -n "__fish_portmap_using_subcommand help; and not __fish_seen_subcommand_from probe external-ip add delete list help" -f -a "list" -d 'The router\'s UPnP table and natkit\'s own NAT-PMP/PCP leases'
complete -c portmap -n "__fish_portmap_using_subcommand help; and not __fish_seen_subcommand_from probe external-ip add delete list help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
