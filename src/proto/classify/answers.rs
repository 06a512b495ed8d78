//! What each answer means: STUN responses, error responses and silence, per test (RFC 5780
//! §4.3 mapping, §4.4 filtering, §4.5 hairpinning), and whether a server can be trusted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::hops::routers_crossed;
use super::lifetime::kept_socket;
use super::{Outcome, Prober, SocketId, Test, S_FILTER_BOTH, S_FILTER_PORT};
use crate::defaults;
use crate::wire::netaddr;
use crate::wire::stun::{self, Change, Class};

impl Prober {
    /// A datagram on one of our sockets: a STUN answer to one of the tests, or junk.
    pub(super) fn on_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
        ttl: Option<u8>,
    ) {
        let m = match stun::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.ignore(format!("{} bytes from {from}: {e}", data.len()));
                return;
            }
        };
        let Some(i) = self.find(&m.tid) else {
            self.ignore(format!(
                "STUN message from {from} with an unknown transaction id"
            ));
            return;
        };
        let test = self.pending[i].test;
        let dst = self.pending[i].dst;
        if test == Test::Hairpin {
            // RFC 5780 §4.5: the client receives its own request.
            if m.is_binding_request() {
                self.pending[i].txn.answered(now);
                self.hairpin = Outcome::Got(());
            } else {
                self.ignore(format!("hairpin probe answered by {from} with a response"));
            }
            return;
        }
        if m.class == Class::Request || m.class == Class::Indication {
            self.ignore(format!("STUN request from {from} reusing a transaction id"));
            return;
        }
        let rtt = self.pending[i].txn.answered(now);
        if m.class == Class::Error {
            let (code, reason) = m.error.clone().unwrap_or((0, String::new()));
            self.on_error_response(now, test, format!("error {code} {reason}"));
            return;
        }
        let Some(mapped) = m.reflexive() else {
            self.on_error_response(now, test, "a response without a mapped address".into());
            return;
        };
        match test {
            Test::Binding(s) => {
                if s == 0 && from == dst {
                    // The path probes go to the first server: how far it is tells which silent
                    // hops are routers (see `hop_is_router`).
                    self.server_hops = ttl.map(routers_crossed);
                }
                self.on_binding(now, s, from, dst, rtt, &m, mapped, socket)
            }
            Test::MapII | Test::MapIII => {
                let r = if from == dst {
                    Outcome::Got(mapped)
                } else {
                    self.ignore(format!("mapping test answered from {from}, sent to {dst}"));
                    Outcome::Bogus
                };
                if test == Test::MapII {
                    self.map2 = r
                } else {
                    self.map3 = r
                }
            }
            Test::FilterBoth(_) | Test::FilterPort(_) => {
                let expect = self.expected_change_source(test);
                let r = if Some(from) == expect {
                    Outcome::Got(())
                } else {
                    self.notes_filtering = Some(format!(
                        "the server answered a CHANGE-REQUEST from {from} instead of {}: it does \
                         not honour CHANGE-REQUEST, so filtering cannot be measured with it",
                        expect.map_or("its alternate address".to_string(), |e| e.to_string())
                    ));
                    Outcome::Bogus
                };
                self.set_filter(now, test, r);
            }
            Test::Hop(_) => {
                // The probe reached the server: no router at this distance.
            }
            Test::LifetimeArm(k) => {
                let slot = &mut self.lifetime[k];
                slot.armed_at = Some(now);
                slot.mapped = Some(mapped);
                slot.check_at = Some(now + slot.gap);
            }
            Test::LifetimeCheck(k) => {
                // The answer must reach the kept mapping's socket, not the asking one.
                let kept = kept_socket(k);
                self.lifetime[k].result = Some(socket == kept);
                if socket != kept {
                    self.ignore(format!(
                        "lifetime check answered on the asking socket: {from} ignored RESPONSE-PORT"
                    ));
                }
                self.finish_lifetime_if_bracketed();
            }
            Test::Hairpin | Test::Tcp(_) => {}
        }
    }

    fn set_filter(&mut self, now: Instant, test: Test, r: Outcome<()>) {
        let (k, pair, sockets, what) = match test {
            Test::FilterBoth(k) => {
                self.filter_both[k] = r;
                (k, self.filter_both, S_FILTER_BOTH, "IP and port")
            }
            Test::FilterPort(k) => {
                self.filter_port[k] = r;
                (k, self.filter_port, S_FILTER_PORT, "port")
            }
            _ => return,
        };
        match (k, r) {
            (0, Outcome::Got(())) => {
                let Some(p) = self.primary.map(|i| self.cfg.servers[i]) else {
                    return;
                };
                let (again, change) = match test {
                    Test::FilterBoth(_) => (Test::FilterBoth(1), Change::IP_AND_PORT),
                    _ => (Test::FilterPort(1), Change::PORT),
                };
                let sched = self.followup();
                self.add(now, again, sockets[1], None, p, change, sched);
            }
            (1, Outcome::NoAnswer) if pair[0] == Outcome::Got(()) => {
                let port = self.local_of(sockets[0]).map(|a| a.port());
                self.ignore(format!(
                    "the answer to CHANGE-REQUEST ({what}) on local port {} was not confirmed \
                     on a fresh socket: the NAT still kept an earlier flow's mapping of that \
                     port, so it does not count",
                    port.map_or("?".to_string(), |p| p.to_string())
                ));
            }
            _ => {}
        }
    }

    /// One filtering test: open only when the answer to the first socket was confirmed on the
    /// second. A first socket answered and a second not means the first's port still had an
    /// earlier flow's mapping and filter state at the NAT (a previous run's): the fresh one
    /// tells the truth.
    pub(super) fn filter_outcome(o: [Outcome<()>; 2]) -> Outcome<()> {
        match o {
            [Outcome::Got(()), second] => second,
            [first, _] => first,
        }
    }

    fn expected_change_source(&self, test: Test) -> Option<SocketAddr> {
        let p = self.primary.map(|i| self.cfg.servers[i])?;
        let o = self.other?;
        Some(match test {
            Test::FilterBoth(_) => o,
            _ => SocketAddr::new(p.ip(), o.port()),
        })
    }

    fn on_error_response(&mut self, now: Instant, test: Test, what: String) {
        match test {
            Test::Binding(s) => {
                self.servers[s]
                    .problems
                    .push(format!("answered a Binding request with {what}"));
                self.binding_finished(now);
            }
            Test::FilterBoth(_) | Test::FilterPort(_) => {
                self.notes_filtering = Some(format!(
                    "the server answered CHANGE-REQUEST with {what}: it does not support \
                     RFC 5780 behaviour discovery"
                ));
                self.set_filter(now, test, Outcome::Bogus);
            }
            Test::MapII => self.map2 = Outcome::Bogus,
            Test::MapIII => self.map3 = Outcome::Bogus,
            Test::LifetimeCheck(k) | Test::LifetimeArm(k) => {
                self.ignore(format!("lifetime test {k}: {what}"));
                self.lifetime[k].result = None;
                self.lifetime[k].check_at = None;
            }
            _ => {}
        }
    }

    /// A server answered its Binding request: record what it said and whether it can be
    /// trusted for behaviour discovery; the first trusted one becomes the primary.
    #[allow(clippy::too_many_arguments)]
    fn on_binding(
        &mut self,
        now: Instant,
        s: usize,
        from: SocketAddr,
        dst: SocketAddr,
        rtt: Option<Duration>,
        m: &stun::Message,
        mapped: SocketAddr,
        _socket: SocketId,
    ) {
        let srv = &mut self.servers[s];
        if from != dst {
            srv.problems.push(format!(
                "answered from {from} although the request went to {dst}"
            ));
        }
        srv.answered = true;
        srv.mapped = Some(mapped);
        srv.software = m.software.clone();
        srv.rtt_ms = rtt.map(|d| d.as_secs_f64() * 1000.0);
        srv.other_address = m.other_address;
        // RFC 5780 §7.3: RESPONSE-ORIGIN is where the server says it sent the answer from. A
        // server that leaves it out, or names another address than the one the answer came
        // from (a server behind NAT, or one that does not know its own addresses), cannot be
        // trusted to answer CHANGE-REQUEST from the addresses it claims: its behaviour
        // discovery is not used, only reported.
        let origin_problem = match m.response_origin {
            None if m.other_address.is_some() => {
                Some("sent OTHER-ADDRESS but no RESPONSE-ORIGIN".to_string())
            }
            Some(o) if o != from => Some(format!(
                "RESPONSE-ORIGIN says {o} but the answer came from {from} \
                 (server behind NAT or misconfigured)"
            )),
            _ => None,
        };
        let other_problem = m.other_address.and_then(|o| {
            if o.ip() == dst.ip() {
                Some(format!(
                    "OTHER-ADDRESS {o} has the same IP as the server \
                     (behaviour discovery needs two addresses)"
                ))
            } else if o.port() == dst.port() {
                Some(format!("OTHER-ADDRESS {o} has the same port as the server"))
            } else if o.is_ipv4() != dst.is_ipv4() {
                Some(format!("OTHER-ADDRESS {o} is of another address family"))
            } else if netaddr::is_unroutable(o.ip()) && !netaddr::is_unroutable(dst.ip()) {
                Some(format!(
                    "OTHER-ADDRESS {o} is not a public address although the server's is"
                ))
            } else {
                None
            }
        });
        let why_not: Vec<String> = origin_problem.into_iter().chain(other_problem).collect();
        if m.other_address.is_some() && why_not.is_empty() {
            srv.rfc5780 = true;
        } else if m.other_address.is_some() {
            let why = why_not.join("; ");
            srv.problems.push(format!(
                "{why}: not trusted for RFC 5780 behaviour discovery"
            ));
            self.distrusted.push(format!("{dst}: {why}"));
        } else {
            // No OTHER-ADDRESS: no behaviour discovery claimed; a wrong origin is still odd.
            srv.problems.extend(why_not);
        }
        if let Some(r) = rtt {
            self.srtt = Some(match self.srtt {
                // RFC 6298 §2.3 smoothing.
                Some(old) => (old * 7 + r) / 8,
                None => r,
            });
        }
        if self.primary.is_none() && self.servers[s].rfc5780 {
            self.primary = Some(s);
            self.other = m.other_address;
        }
        // Don't let slow secondary servers hold up the report.
        let grace =
            defaults::SECONDARY_GRACE.max(self.followup().rto * defaults::SECONDARY_GRACE_RTOS);
        for p in &mut self.pending {
            if matches!(p.test, Test::Binding(_)) {
                p.txn.cap_deadline(now + grace);
            }
        }
        self.binding_finished(now);
    }

    /// A test's transaction ran out of retransmissions without an answer.
    pub(super) fn on_no_answer(&mut self, now: Instant, test: Test) {
        match test {
            Test::Binding(_) => self.binding_finished(now),
            Test::MapII => self.map2 = Outcome::NoAnswer,
            Test::MapIII => self.map3 = Outcome::NoAnswer,
            Test::FilterBoth(_) | Test::FilterPort(_) => {
                self.set_filter(now, test, Outcome::NoAnswer)
            }
            Test::Hairpin => self.hairpin = Outcome::NoAnswer,
            Test::Hop(ttl) => self.retry_silent_hop(now, ttl),
            Test::Tcp(_) => {
                if self.tcp_ok.is_none() {
                    self.tcp_ok = Some(false)
                }
            }
            Test::LifetimeArm(k) => {
                self.lifetime[k].result = None;
            }
            Test::LifetimeCheck(k) => {
                self.lifetime[k].result = Some(false);
                self.finish_lifetime_if_bracketed();
            }
        }
    }
}
