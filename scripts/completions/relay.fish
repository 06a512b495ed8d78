complete -c relay -l addr -d 'Primary IP address to serve on; once per family (IPv4 and IPv6)' -r
complete -c relay -l alt-addr -d 'Second IP address: turns on RFC 5780 behaviour discovery; once per family' -r
complete -c relay -l port -d 'Primary port (STUN, rendezvous and relay; UDP and TCP)' -r
complete -c relay -l alt-port -d 'Alternate port for RFC 5780' -r
complete -c relay -l secret -d 'Require tokens made from this secret for rendezvous and relaying' -r
complete -c relay -l print-token -d 'Print a token valid for SECS seconds (needs --secret) and exit' -r
complete -c relay -l metrics -d 'Serve Prometheus metrics over HTTP on this address; bind it to localhost (e.g. 127.0.0.1:9478): it has no authentication and no connection cap' -r
complete -c relay -l rate -d 'Requests per second per source IP' -r
complete -c relay -l burst -d 'Request burst per source IP' -r
complete -c relay -l max-sessions -d 'Most sessions at once' -r
complete -c relay -l sessions-per-source -d 'Most sessions per source IP' -r
complete -c relay -l session-bytes -d 'Bytes relayed per session' -r
complete -c relay -l session-secs -d 'Longest session life, in seconds' -r
complete -c relay -l idle-secs -d 'Idle seconds before a registration expires' -r
complete -c relay -l dialbacks-per-min -d 'Dial-backs per minute per source IP' -r
complete -c relay -l max-tcp -d 'Most TCP connections open at once (kept under the descriptor limit too)' -r
complete -c relay -l tcp-per-source -d 'Most TCP connections per source (IPv4 address or IPv6 /64)' -r
complete -c relay -l json -d 'Print the startup line as JSON'
complete -c relay -l allow-private -d 'Serve and relay for private, loopback and CGNAT addresses (labs and tests only)'
complete -c relay -s v -l verbose -d 'More log output on stderr (-v, -vv)'
complete -c relay -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relay -s V -l version -d 'Print version'
