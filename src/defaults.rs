//! Every timeout and limit natkit uses, in one place, each with the reason for its value.
//!
//! Other tools wait a fixed 2–3 s for every answer that never comes. natkit instead measures
//! the round trip to the server first and derives its retransmission timers from it, so a
//! "no answer" is known after a few round trips.

use std::time::Duration;

/// Initial retransmission timeout before any RTT is known. 100 ms follows tailscale's
/// 0/100/200 ms sends: short enough to recover one lost packet fast, long enough not to flood.
pub const INITIAL_RTO: Duration = Duration::from_millis(100);

/// How many times the first Binding request is sent (0, 100, 300, 700, 1500 ms with
/// [`INITIAL_RTO`]): five tries survive heavy loss and still fit the default deadline.
pub const FIRST_MAX_SENDS: u32 = 5;

/// Default give-up for the first answer from any server (`--timeout`). The issue contract asks
/// for "udp blocked"/"offline" verdicts within 3 s including start-up and DNS.
pub const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_millis(2000);

/// Once an RTT is measured, RTO = `RTT_RTO_FACTOR` × RTT, but never below [`MIN_RTO`]:
/// three RTTs absorb ordinary jitter on a path that has just answered.
pub const RTT_RTO_FACTOR: u32 = 3;

/// Floor for the RTT-derived RTO. Below ~25 ms, scheduler and timer granularity on a busy
/// host dominate, and a lab round trip (≈0.1 ms) would otherwise give a 0.3 ms RTO.
pub const MIN_RTO: Duration = Duration::from_millis(25);

/// Ceiling for the RTT-derived RTO, so one slow sample cannot stall a run.
pub const MAX_RTO: Duration = Duration::from_millis(600);

/// Sends per follow-up test (mapping, filtering, hairpin). Five sends at a doubling RTO make a
/// false "filtered" verdict from packet loss negligible: at 5 % loss each way the chance that
/// all five exchanges are lost is below 1e-5.
pub const FOLLOWUP_MAX_SENDS: u32 = 5;

/// After the last send of a negative test, wait this many RTOs for a late answer.
pub const FINAL_WAIT_RTOS: u32 = 4;

/// How long to wait for other servers after the first one answered: a slow or dead
/// secondary server must not hold the report hostage.
pub const SECONDARY_GRACE: Duration = Duration::from_millis(400);

/// When no UDP answer came this long after start, natprobe also tries STUN over TCP to the
/// same server, to tell "UDP is blocked" from "no server answered".
pub const TCP_FALLBACK_AFTER: Duration = Duration::from_millis(400);

/// Timeout for one STUN-over-TCP exchange (connect + request + response).
pub const TCP_EXCHANGE_TIMEOUT: Duration = Duration::from_millis(1200);

/// DNS lookups of server names. Short: an offline machine must fail fast, and a resolver that
/// is slower than this is not worth the wait for a diagnosis.
pub const DNS_TIMEOUT: Duration = Duration::from_millis(1000);

/// Highest TTL tried when looking for carrier-grade NAT on the path: a CGNAT sits one or two
/// hops behind the home router.
pub const MAX_HOP_TTL: u8 = 4;

/// Retransmission timeout of the TTL-limited path probes, sent before any RTT is known. The
/// routers they reach are the first few hops, well under 50 ms away on any access network.
pub const HOP_RTO: Duration = Duration::from_millis(50);

/// Retransmission timeout when a hop stayed silent while a farther one answered: its ICMP
/// budget refills at one per second on Linux, so retries at 0, 350 and 1050 ms catch the next
/// token.
pub const HOP_RETRY_RTO: Duration = Duration::from_millis(350);

/// Binding-lifetime search: the idle gaps probed in parallel (seconds). RFC 4787 REQ-5 asks
/// for ≥ 120 s, but many NATs expire at 30 s (Linux conntrack's default for one-shot UDP),
/// so the gaps are dense below a minute.
pub const LIFETIME_GAPS_S: &[u64] = &[5, 10, 15, 20, 25, 30, 45, 60, 90, 120, 180];

/// Default upper bound for the lifetime search (`--lifetime-max`).
pub const LIFETIME_MAX: Duration = Duration::from_secs(180);

/// Default STUN port (RFC 8489 §18.6).
pub const STUN_PORT: u16 = 3478;

/// Built-in public STUN servers, by hostname only so that an offline machine sends nothing
/// anywhere. RFC 5780-capable ones first; the binding-only ones still let the mapping be
/// compared across servers.
pub const DEFAULT_SERVERS: &[&str] = &[
    "stunserver2024.stunprotocol.org:3478",
    "stun.voipgate.com:3478",
    "stun.l.google.com:19302",
    "stun.cloudflare.com:3478",
];

/// Largest datagram natkit reads; anything longer is truncated and then rejected by the
/// decoder, never trusted.
pub const MAX_DATAGRAM: usize = 2048;

/// Relay: STUN and rendezvous requests per second per source IP (token bucket refill).
/// A NAT classification needs about 20 requests; a punch a few dozen over its lifetime.
pub const RELAY_REQS_PER_SEC: u32 = 50;
/// Relay: token-bucket burst per source IP.
pub const RELAY_REQS_BURST: u32 = 100;
/// Relay: most source IPs tracked by the rate limiter; new sources beyond it are dropped
/// until idle ones age out, so a spoofed-source flood cannot grow memory.
pub const RELAY_MAX_SOURCES: usize = 100_000;
/// Relay: most sessions at once (libp2p circuit relay v2 uses per-peer caps; this is the
/// whole-relay cap).
pub const RELAY_MAX_SESSIONS: usize = 10_000;
/// Relay: most sessions registered from one source IP (libp2p: 4 circuits per peer; a NAT
/// can hide a household, so a little more).
pub const RELAY_SESSIONS_PER_SOURCE: usize = 16;
/// Relay: bytes relayed per session before it is cut (both directions together). A shell
/// session fits easily; bulk transfers should go direct.
pub const RELAY_SESSION_BYTES: u64 = 512 * 1024 * 1024;
/// Relay: longest life of a session.
pub const RELAY_SESSION_SECS: u64 = 4 * 3600;
/// Relay: a registration not refreshed (any frame) for this long is dropped. Clients keep
/// alive every 15 s, well inside.
pub const RELAY_IDLE_SECS: u64 = 60;
/// How long a peer's relay path (the family it registered over first) must have been silent
/// before a registration over the other family moves the path there instead of being kept
/// as one more candidate: two of punch's 15 s keepalives lost, so the first family is gone.
pub const RELAY_FAMILY_MOVE: Duration = Duration::from_secs(30);
/// Relay: dial-back requests per minute per source IP.
pub const RELAY_DIALBACKS_PER_MIN: u32 = 10;
/// Relay: how long the relay waits for a pong before starting with the RTTs it has.
pub const RELAY_PONG_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long portmap waits for a router before calling a protocol unavailable. Routers answer
/// on the LAN within milliseconds; three retransmissions (125, 250 ms) fit, and `portmap
/// probe` must say "none" within a second (natpmpc takes up to 128 s, upnpc 2 s).
pub const PORTMAP_TIMEOUT: Duration = Duration::from_millis(700);

/// First NAT-PMP/PCP retransmission timeout on the LAN. RFC 6886 §3.1 and RFC 6887 §8.1.1 say
/// 250 ms / 3 s for the general case; a gateway one hop away answers in well under 10 ms.
pub const PORTMAP_RTO: Duration = Duration::from_millis(125);

/// Default lease: RFC 6886 §3.3 recommends 7200 s for a new mapping.
pub const PORTMAP_LIFETIME: Duration = Duration::from_secs(7200);

/// Time for a UPnP SOAP call (HTTP on the LAN) before giving up on the router.
pub const UPNP_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// With --keep, how often the router's epoch / the mapping is checked between renewals, so a
/// restarted router is noticed quickly (the renewal itself is at half the lease, RFC 6886 §3.3).
pub const PORTMAP_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How long --verify waits for the relay's connection from outside.
pub const PORTMAP_VERIFY_TIMEOUT: Duration = Duration::from_secs(3);

/// Lease asked for the punch socket's port mapping: renewed at half while the session lasts
/// (portmap's --keep logic) and removed at exit, so a crash leaves it for at most 10 minutes.
pub const PUNCH_PORTMAP_LIFETIME: Duration = Duration::from_secs(600);

/// TCP hole punching: the whole attempt, from exchanging endpoints to a connection. A
/// direct TCP connection needs a few round trips through the relay; beyond that the pair
/// cannot punch TCP (symmetric NAT, a firewall), and the session goes on over UDP/QUIC.
pub const TCP_PUNCH_BUDGET: Duration = Duration::from_secs(5);

/// Between repeats of our TCP offer through the relay (relayed UDP frames may be lost).
pub const TCP_OFFER_INTERVAL: Duration = Duration::from_millis(500);

/// Crossing SYNs between neighbouring NATs (`proto::punch::tcp`'s `Plan::Cross`): how long
/// one SYN waits for its answer (a reset from the peer's router, or the simultaneous open)
/// before the next; a neighbour answers within one round trip between the NATs.
pub const CROSS_RESET_WAIT: Duration = Duration::from_millis(20);
/// Crossing SYNs: the mean pause between two (0.5–1.5×, random, so the sides never stay in
/// lockstep). Each SYN's window is one one-way delay between the NATs: in the lab about 1
/// round in 20 crosses.
pub const CROSS_GAP: Duration = Duration::from_millis(1);
/// Crossing SYNs: most one attempt sends (a few seconds of them), so a peer that never fires
/// costs its router a bounded number of resets.
pub const CROSS_SYNS: u32 = 2000;
/// Pause after a failed TCP attempt (refused, reset) before the next: the peer's arming SYN
/// may still be on its way, and a Linux NAT needs the reset connection's entry closed.
pub const TCP_RETRY: Duration = Duration::from_millis(250);

/// One TCP connection attempt (a SYN that is dropped is only resent after Linux's 1 s
/// initial RTO, RFC 6298 §2): give it one retransmission.
pub const TCP_ATTEMPT: Duration = Duration::from_millis(1500);

/// The relay's TCP STUN answer that tells us our public TCP endpoint.
pub const TCP_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(2);

/// Unanswered TCP keepalive probes (one per `--keepalive` interval, 15 s by default) before
/// an idle punched TCP connection counts as dead: 75 s without a word from the peer by
/// default, which outlasts a NAT's brief hiccup but not a peer that is gone.
pub const TCP_KEEPALIVE_PROBES: u32 = 4;

/// `--icmp`: the listener's echo requests to the echo target. They keep the NAT's query
/// mapping alive (Linux keeps an ICMP mapping 30 s, RFC 5508 §3.2 asks for at least 60 s)
/// and must be out before the connector's first Time Exceeded arrives.
pub const ICMP_ECHO_INTERVAL: Duration = Duration::from_secs(2);

/// `--icmp`: the connector repeats its Time Exceeded this often until the listener's UDP
/// arrives (the first may come before the listener's NAT has the mapping).
pub const ICMP_KNOCK_INTERVAL: Duration = Duration::from_millis(500);

/// `--icmp`: the listener's raw socket is read with this timeout, so it also sends its echo
/// requests on time ([`ICMP_ECHO_INTERVAL`]) while no ICMP arrives.
pub const ICMP_POLL: Duration = Duration::from_millis(200);

/// `--icmp`: the default echo target, pwnat's: an address where nothing answers, so the
/// echo requests never get replies that would close the NAT's mapping. Tests point it into
/// the lab.
pub const ICMP_ECHO_TARGET: std::net::Ipv4Addr = std::net::Ipv4Addr::new(3, 3, 3, 3);

// --- natprobe ---

/// Sends per TTL-limited path probe (0, 50, 150 ms with [`HOP_RTO`]): a router that rate-limits
/// its ICMP errors still gets a second and third chance, and the path is known within ~350 ms.
pub const HOP_MAX_SENDS: u32 = 3;

/// Once the first server answered, slower servers get at most [`SECONDARY_GRACE`] or this many
/// RTOs, whichever is longer: on a slow path 400 ms would cut off servers that are merely far.
pub const SECONDARY_GRACE_RTOS: u32 = 8;

/// How many servers STUN over TCP is tried with when UDP stays silent: two tell "UDP blocked"
/// from "one server down" without opening a connection to every server given.
pub const TCP_FALLBACK_SERVERS: usize = 2;

/// Most ignored datagrams natprobe reports: a flood of junk must not grow memory (or the
/// report) without limit, and a few examples say what went wrong.
pub const MAX_IGNORED: usize = 32;

/// Events (datagrams, ICMP errors, TCP answers) queued between natprobe's receive tasks and
/// its prober: a run sends a few dozen requests, so 256 never fills unless flooded, and then
/// the receive tasks wait instead of growing memory.
pub const NATPROBE_EVENT_QUEUE: usize = 256;

// --- portmap ---

/// NAT-PMP/PCP sends per exchange. With [`PORTMAP_RTO`] they go at 0, 125 and 375 ms, inside
/// [`PORTMAP_TIMEOUT`]; a fourth (875 ms) only with a longer `--timeout`. RFC 6886 §3.1 sends 9
/// over 64 s, which would make "no router speaks it" take a minute.
pub const PORTMAP_MAX_SENDS: u32 = 4;

/// Wait for an ICMP error from the gateway one hop away (the TTL-1 check of whether the router
/// owns its external address, the SSDP port-unreachable check): it comes within milliseconds,
/// so one lost datagram is resent after this.
pub const PORTMAP_ICMP_WAIT: Duration = Duration::from_millis(100);

/// Sends of those ICMP-provoking probes: three survive a lost datagram and the gateway's ICMP
/// rate limit, and together (300 ms) stay well inside [`PORTMAP_TIMEOUT`].
pub const PORTMAP_ICMP_SENDS: u32 = 3;

/// --verify: how long a TCP connection accepted on the mapped port may take to send the relay's
/// probe frame. The relay writes it right after connecting; a stranger that stays silent must
/// not hold the check past its own [`PORTMAP_VERIFY_TIMEOUT`].
pub const PORTMAP_VERIFY_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// --verify: the dial-back request to the relay goes again this often (a lost UDP datagram
/// must not make the mapping look unreachable); six fit into [`PORTMAP_VERIFY_TIMEOUT`].
pub const PORTMAP_VERIFY_RESEND: Duration = Duration::from_millis(500);

/// --verify over TCP: most dial-back requests sent. Unlike UDP, the answer (a connection)
/// does not depend on which request got through, so three cover loss without flooding.
pub const PORTMAP_VERIFY_TCP_SENDS: u32 = 3;

/// Most UPnP table entries read (`portmap list`, --keep's presence check): a router with a
/// huge (or endless, buggy) table cannot keep natkit looping.
pub const UPNP_MAX_ENTRIES: u32 = 1024;

// --- punch ---

/// How often a peer probes each candidate during a punch (bounded: home routers drop floods).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Default bound on punching before falling back to the relay (issue contract: 3 s).
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time between the low-TTL opening packets and the first full probe round: covers the
/// start-time difference between the two sides.
pub const OPENING_LEAD: Duration = Duration::from_millis(50);
/// Round interval while the connectivity checks are quiet (before the peer's first probe):
/// it only keeps our own NAT binding open.
pub const QUIET_INTERVAL: Duration = Duration::from_millis(500);
/// First resend of a silent TTL-limited measurement probe (doubling after): Linux sends at
/// most one ICMP error per second to a destination after a burst of 6, and a first packet
/// to a new neighbour may wait for ARP.
pub const TTL_PROBE_RTO: Duration = Duration::from_millis(50);
/// Sends per TTL-limited measurement probe before its hop counts as silent (0, 50, 150, 300,
/// 500, 750, 1050 and 1400 ms, given up at 1.8 s): a router whose ICMP budget for us is spent
/// (Linux: one per second after a burst of 6, and a busy session just before may have spent
/// it) answers again within a second.
pub const TTL_PROBE_SENDS: u32 = 8;
/// Longest wait, after our own TTL measurement towards the peer is in, for the peer's
/// (its `Hops` frame through the relay) when ours is ambiguous — the hop after our NAT said
/// nothing, which is either an input firewall or a router whose ICMP budget is spent. The
/// peer's measurement ends within its 1.8 s of resends, as ours does; an older peer never
/// sends one.
pub const PEER_HOPS_WAIT: Duration = Duration::from_millis(1000);
/// Gap between the sends of our `Hops` frame (3 sends: relayed UDP may be lost).
pub const HOPS_RESEND: Duration = Duration::from_millis(300);
/// `--manual`: longest wait for the TTL measurement towards the peer before the checks start
/// (its probes are resent at 50 and 150 ms; an adjacent NAT answers within a millisecond).
pub const TTL_MEASURE_WAIT: Duration = Duration::from_millis(200);
/// When the NATs clash, how long after the leader's first probe the follower's first one
/// goes: the two sides' start signals differ by the relay's jitter, well under this.
pub const CLASH_FOLLOW_DELAY: Duration = Duration::from_millis(150);
/// How long both sides stay silent towards each other to let the conntrack entries of a
/// clash expire: Linux forgets an unanswered UDP flow after 30 s
/// (nf_conntrack_udp_timeout); 5 s on top for the routers' timer granularity.
pub const CLASH_EXPIRY_WAIT: Duration = Duration::from_secs(35);
/// Interval of the TTL-limited packets that keep the leader's mapping alive meanwhile:
/// well inside the 30 s an unanswered UDP mapping lives on Linux.
pub const CLASH_KEEP_OPEN: Duration = Duration::from_secs(5);
/// First retry of a direct path after falling back to the relay: a NAT that just forgot its
/// bindings usually accepts a fresh punch at once.
pub const UPGRADE_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between upgrade attempts: each costs a few probes per candidate, and a pair
/// that failed several times (symmetric NATs) rarely changes quickly.
pub const UPGRADE_MAX: Duration = Duration::from_secs(60);
/// Default keepalive towards the relay and the peer: well under the 30 s many NATs allow.
pub const PUNCH_KEEPALIVE: Duration = Duration::from_secs(15);
/// How long, after the relay answered over IPv6, we wait for its IPv4 answer before meeting
/// it over IPv6 (RFC 8305 §5's recommended Connection Attempt Delay): IPv4 is preferred for
/// meeting (the peer learns our IPv4 server-reflexive address), and its answer trails
/// IPv6's by far less unless IPv4 UDP is blocked.
pub const RELAY_FAMILY_GRACE: Duration = Duration::from_millis(250);

/// The last wait after the relay address race's four sends (0, 100, 300, 700 ms): about a
/// second in all before a silent relay is left to the registration's own timeout (and TCP).
pub const RELAY_FAMILY_FINAL_WAIT: Duration = Duration::from_millis(300);

/// The relay registration's last wait after its sends: a relay across the world answers in
/// well under a second.
pub const REGISTER_FINAL_WAIT: Duration = Duration::from_millis(800);
/// Retransmission timeout of the start-signal request (the relay answers at once; 300 ms
/// covers a slow path without flooding).
pub const SYNC_RTO: Duration = Duration::from_millis(300);
/// Last wait after the start-signal request's sends.
pub const SYNC_FINAL_WAIT: Duration = Duration::from_millis(1200);
/// How long a direct path may stay silent while we keep sending before it is declared dead:
/// a NAT that dropped or renumbered our mapping (conntrack flush, reboot, rebinding) answers
/// nothing, and the relay is always there.
pub const PATH_STALL: Duration = Duration::from_secs(2);
/// How long after a switch to the direct path relayed packets from the peer are still
/// expected (in flight, or the peer switching a moment later): only after it does a relayed
/// packet mean the peer has left the direct path.
pub const FOLLOW_GRACE: Duration = Duration::from_secs(1);
/// Give up on the peer's key exchange after this long: both sides reached each other
/// already, so a PAKE that takes longer means the other side is gone or not natkit.
pub const PAKE_TIMEOUT: Duration = Duration::from_secs(4);
/// Resend our key-exchange messages this often until confirmed (a lost datagram costs one
/// interval, and 20 frames over the timeout are no flood).
pub const PAKE_RESEND: Duration = Duration::from_millis(200);
/// A repeated PAKE message from the peer is answered at most this often: answering every
/// repeat made the two sides bounce PAKE frames forever (~57 000/s through the relay on an
/// idle session).
pub const PAKE_ANSWER_GAP: Duration = Duration::from_millis(500);
/// Wait this long for the peer to show up at the relay (the code travels by hand).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a `--manual` side waits for the other (offers travel by hand).
pub const MANUAL_TIMEOUT: Duration = Duration::from_secs(120);
/// `--peer-file`: how often the file is read again until the offer is in it.
pub const OFFER_FILE_POLL: Duration = Duration::from_millis(100);
/// One STUN try for our server-reflexive address on the punch socket (three tries): a STUN
/// server answers within a round trip.
pub const REFLEXIVE_WAIT: Duration = Duration::from_millis(200);
/// The NAT classification run alongside a punch: its first answer's wait (a relay that
/// answers the rendezvous answers STUN as fast).
pub const PUNCH_CLASSIFY_FIRST_TIMEOUT: Duration = Duration::from_millis(1500);
/// UDP to the relay failed: connecting to its TCP port gets this long before the relay
/// counts as unreachable.
pub const RELAY_TCP_CONNECT: Duration = Duration::from_secs(3);
/// After the `Bye` to the relay over TCP: time for the writer task to flush it.
pub const RELAY_TCP_FLUSH: Duration = Duration::from_millis(20);
/// Removing the punch port's router mapping at exit: bounded, the router may be gone.
pub const PUNCH_UNMAP_TIMEOUT: Duration = Duration::from_secs(2);
/// Birthday probing: how often the opener refreshes its mappings (well under any UDP
/// binding timeout).
pub const BIRTHDAY_OPEN_REFRESH: Duration = Duration::from_secs(5);
/// Birthday probing's default budget: ~2 500 probes at its probe rate against 256 open
/// ports of ~64 500, a miss chance of e^-9.8 ≈ 0.006 % for one symmetric side. It was 15 s
/// (1 500 probes, 0.26 %), and 3 of 340 lab sessions missed (one captured with both routers'
/// conntrack tables: nothing wrong, no probe had landed on any of the 256 mappings); a
/// search that stops at its first hit costs nothing more when it succeeds, and the relay
/// carries the data meanwhile.
pub const BIRTHDAY_BUDGET: Duration = Duration::from_secs(25);
/// Budget of a `--hard` attempt between two symmetric NATs: it rarely works (only when the
/// NATs' ports are not fully random), so it gets less time before the relay is final.
pub const BIRTHDAY_HARD_BUDGET: Duration = Duration::from_secs(10);
/// Port prediction's budget: several passes over the window of next ports.
pub const PREDICTION_BUDGET: Duration = Duration::from_secs(6);
/// The sequential NAT's side of port prediction keeps its opened mapping this much longer
/// than the prober probes (the prober starts only once our `Predict` frame arrives).
pub const PREDICTION_OPEN_EXTRA: Duration = Duration::from_secs(2);
/// Our `Predict` frame is repeated this often (relayed UDP may be lost; three sends).
pub const PREDICT_RESEND: Duration = Duration::from_millis(400);
/// The NAT classification exchange: our class is resent this often until the peer's
/// arrives (relayed frames may be lost).
pub const NAT_EXCHANGE_RESEND: Duration = Duration::from_secs(1);
/// The NAT classification exchange: a repeated class from the peer is answered at most this
/// often (so that two sides never bounce frames).
pub const NAT_EXCHANGE_ANSWER_GAP: Duration = Duration::from_millis(500);
/// `--manual --portmap`: how much longer than the router's own answer bound the offer waits
/// for the mapped port (the mapping task starts a moment after the offer's STUN query).
pub const PUNCH_PORTMAP_OFFER_GRACE: Duration = Duration::from_millis(300);
/// The punch control loop wakes at least this often, to notice a dead direct path soon.
pub const CONTROL_TICK: Duration = Duration::from_millis(250);
/// `--dead-peer-timeout`'s default, QUIC's idle timeout: a session that has heard nothing
/// authenticated from the peer (directly or through the relay; the relay's own answers do
/// not count) for this long ends with exit 2. Long enough for a NAT rebinding, a path change,
/// a Wi-Fi roam or a link that drops for tens of seconds (each a stall the session repairs);
/// short enough that a network gone for good ends the session within a minute.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// QUIC keepalives are sent at least this many times per dead-peer bound, so that an idle
/// session never comes near it (RFC 9000 §10.1.2).
pub const DEAD_PEER_KEEPALIVES: u32 = 3;
/// How often a punch looks at its own network (the local address towards the relay, without
/// sending anything): a route that comes back is noticed within this, well inside the 2 s
/// the session aims to stall at most once the network is back.
pub const NET_CHECK: Duration = Duration::from_millis(250);
/// The QUIC or TLS handshake after the PAKE: both sides are known to be there, so a
/// handshake that takes longer has failed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// --- relay ---

/// How often the relay sweeps idle registrations and refilled rate-limit buckets: idle expiry
/// is counted in whole seconds, so a finer sweep buys nothing.
pub const RELAY_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A dial-back bucket is forgotten once it has been untouched this long: the per-minute
/// budget has refilled by then, so the source is back to the default state.
pub const RELAY_DIALBACK_FORGET: Duration = Duration::from_secs(60);

/// A TCP dial-back (connect, write the probe, close) gives up after this: a port that does
/// not accept within one SYN retransmission (RFC 6298 §2: 1 s initial RTO) is not reachable.
pub const RELAY_DIALBACK_CONNECT: Duration = Duration::from_secs(3);

/// The metrics endpoint reads the HTTP request for at most this long before answering.
pub const RELAY_METRICS_READ: Duration = Duration::from_secs(2);

/// Most relay TCP connections open at once: each holds a descriptor and a task. The driver
/// also keeps [`RELAY_FD_RESERVE`] descriptors below its soft RLIMIT_NOFILE.
pub const RELAY_MAX_TCP: usize = 4096;

/// Most relay TCP connections per source (IPv4 address or IPv6 /64): one punch client needs
/// one, plus one for its TCP endpoint check; a household behind one address gets a few.
pub const RELAY_TCP_PER_SOURCE: usize = 16;

/// Descriptors the relay keeps free under its limit for what is not an accepted connection
/// (UDP sockets, listeners, metrics, dial-backs, logging).
pub const RELAY_FD_RESERVE: usize = 64;

/// A new TCP connection must complete its first message within this: a client that connects
/// speaks at once (punch sends Register or a STUN request right away).
pub const RELAY_TCP_FIRST_MESSAGE: Duration = Duration::from_secs(10);

/// Once a message has begun, all of it must arrive within this (slowloris: a few bytes a
/// minute would otherwise hold the connection forever).
pub const RELAY_TCP_MESSAGE: Duration = Duration::from_secs(5);

/// First pause after a failed accept (EMFILE, ENFILE, ENOBUFS); doubled up to
/// [`RELAY_ACCEPT_BACKOFF_MAX`] while accepts keep failing, so the loop does not spin.
pub const RELAY_ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Longest pause between accept attempts while they fail.
pub const RELAY_ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The metrics endpoint writes its answer within this, or drops the connection: a reader
/// that never reads must not hold a task and a descriptor.
pub const RELAY_METRICS_WRITE: Duration = Duration::from_secs(2);

/// A repeated warning (source table full, connection caps hit) is logged at most this often,
/// with the count of what it left out: a flood must not become a flood of log lines.
pub const RELAY_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Dial-backs per second from all sources together: each TCP dial-back is a connect attempt
/// of up to [`RELAY_DIALBACK_CONNECT`], so their number must not grow with the number of
/// (possibly spoofed) sources.
pub const RELAY_DIALBACKS_PER_SEC: u32 = 20;

/// Most sources tracked for the per-source dial-back rate; the least recently used is
/// forgotten beyond it.
pub const RELAY_DIAL_SOURCES: usize = 10_000;

/// Longest relay token lifetime (`--print-token`, and the farthest expiry the relay accepts):
/// a leaked token stops working within a month.
pub const RELAY_TOKEN_MAX_SECS: u64 = 30 * 86_400;

/// Shortest `--secret` (bytes): 128 bits from a random hex string; shorter ones fall to
/// offline guessing by anyone who holds one token.
pub const RELAY_SECRET_MIN_LEN: usize = 16;

// --- punch security ---

/// Path validation (RFC 9000 §8.2 in spirit): a challenge to a new address of the peer is
/// answered within a few round trips or forgotten, so that strangers cannot hold the
/// challenge slots for long.
pub const PATH_CHALLENGE_TTL: Duration = Duration::from_secs(1);
/// At most one challenge to one address this often: a stream of packets from a new address
/// (the peer's NAT rebinding mid-transfer) is challenged a few times per round trip, not once
/// per packet.
pub const PATH_CHALLENGE_GAP: Duration = Duration::from_millis(100);
/// Addresses challenged at once (RFC 9000 §9.3: bound the work an off-path sender causes).
pub const PATH_CHALLENGES_MAX: usize = 4;
/// Path challenges answered per [`PATH_ANSWER_WINDOW`], in all: the answer goes to the
/// challenge's source, so it must not become a reflector.
pub const PATH_ANSWERS_MAX: u32 = 16;
/// The window [`PATH_ANSWERS_MAX`] counts in.
pub const PATH_ANSWER_WINDOW: Duration = Duration::from_secs(1);
/// QUIC handshakes the listener runs at once while waiting for the pinned peer (a stranger's
/// Initial must not take the only accept).
pub const QUIC_PENDING_HANDSHAKES: usize = 4;
/// Hand-made codes remembered (salted hashes) to warn when one is reused.
pub const CODE_REUSE_MAX: usize = 256;
/// How long a hand-made code is remembered: reuse within this long is warned about.
pub const CODE_REUSE_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);

// --- relay (return routability) ---

/// A relay cookie is made for one window of this many seconds and accepted in that window and
/// the next: long enough for a slow client's retry, short enough that a cookie seen on the
/// path soon stops working. Punch refreshes its registration every 15 s, so it renews its
/// cookie at most once a window, one extra round trip.
pub const RELAY_COOKIE_WINDOW_SECS: u64 = 60;

/// Bytes of HMAC-SHA256 in a relay cookie: 128 bits, no guessing it from off the path.
pub const RELAY_COOKIE_LEN: usize = 16;

/// Most nameplates a listener draws before giving up: with [`crate::proto::punch::code`]'s
/// seven digits, even 100,000 listeners at once make a draw fail 1 time in 100, so eight
/// failures in a row mean the relay is full or someone holds nameplates on purpose.
pub const NAMEPLATE_DRAWS: usize = 8;

// --- punch serve ---

/// A connector repeats its lobby hello this often until the serving side acknowledges it:
/// one relay round trip is a few ms to a few hundred; a lost hello costs one interval.
pub const SERVE_HELLO_RESEND: Duration = Duration::from_millis(250);
/// A connector gives up on a serve code's lobby after this long (nobody serves the code, or
/// the serving side keeps refusing because it is being guessed at).
pub const SERVE_JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Another connector holds the lobby (for one round trip): try again after about this long.
pub const SERVE_LOBBY_RETRY: Duration = Duration::from_millis(150);
/// A peer's session that has not authenticated this long after its hello ends and counts as
/// a failed guess: a connector starts its session right after the hello's answer, and a
/// punch plus a PAKE take seconds at most (the relay fallback is 3 s).
pub const SERVE_AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed guesses at a serve code allowed in a burst before the rate limit applies.
pub const SERVE_GUESS_BURST: u32 = 10;
/// One more failed guess is allowed per this long after the burst: with 64 bits of secret,
/// guessing then takes 2^63 s (2.9 × 10^11 years) on average.
pub const SERVE_GUESS_REFILL: Duration = Duration::from_secs(1);
/// While hellos are refused by the rate limit, serve says so at most this often (one line
/// per attack burst, not one per hello).
pub const SERVE_LIMIT_WARN_GAP: Duration = Duration::from_secs(10);
/// Peers' sessions that have not authenticated yet, at most, at once.
pub const SERVE_MAX_PENDING: usize = 16;
/// On SIGINT/SIGTERM, peers' sessions get this long to close and remove their router
/// mappings (a router that does not answer is not waited for longer).
pub const SERVE_SHUTDOWN: Duration = Duration::from_secs(3);
/// Serverless serve: a session waiting for its peer's offer that ends sooner than this failed
/// in its setup (a socket, the STUN server's name), and the next one would too: serve ends
/// with its error instead of printing offers in a loop. One that ends later (no offer within
/// `PEER_TIMEOUT`) is replaced by a fresh one with a fresh offer.
pub const SERVE_OFFER_FAIL_FAST: Duration = Duration::from_secs(5);

// --- UDP services (--expose-udp, --local-udp) ---

/// A UDP flow silent this long is forgotten (its socket towards the service closed): game
/// and voice traffic is never that quiet, and the peer's next datagram opens a new flow.
pub const UDP_FLOW_IDLE: Duration = Duration::from_secs(60);
/// Flows per session at most (each is a socket on the serving side).
pub const UDP_MAX_FLOWS: usize = 1024;
/// A flow's socket got an error (the service is not listening yet, ICMP port unreachable):
/// read again after this pause rather than spin.
pub const UDP_ERROR_PAUSE: Duration = Duration::from_millis(10);
