//! Which connections a round looks up: every one not known idle, and a sample of the idle ones
//! by stratum (Neyman allocation), so a round costs a budget, not the number of connections.

use super::decide::is_quiet;
use super::{Conn, Key, SocketSampler};

/// Whether a connection's last state was a known idle one (sampled, not visited every round).
pub(super) fn is_idle(c: &Conn) -> bool {
    c.decision.resolved() && c.decision.value == 0.0
}

/// The sampling stratum of a known-idle connection: 0, it exchanged something within the last
/// second (a busy keep-alive connection between requests); 1, quiet for longer (a spare
/// connection). The two differ by orders of magnitude in how likely they are to be busy at the
/// next round, so each gets its own share of the lookups.
pub(super) fn stratum(c: &Conn) -> usize {
    usize::from(is_quiet(&c.info))
}

/// A number in [0, 1) from a seed and a round: a fresh, reproducible coin per round
/// (splitmix64's finaliser).
fn unit_hash(seed: u64, round: u64) -> f64 {
    let mut z = seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Lookups per round by default: about 0.1% of a core at five rounds a second (a lookup costs
/// about 3 us, most of it the kernel's netlink reply), whatever the number of connections. It
/// holds the agent to half a percent of a core at 200 busy connections; more buys precision.
pub const DEFAULT_MAX_LOOKUPS: usize = 64;
/// Idle connections looked up per round at least, however many are busy.
pub const MIN_IDLE_LOOKUPS: usize = 32;

/// Splits `budget` lookups between the two idle strata of `sizes` connections in proportion to
/// size times the standard deviation of the busy indicator, estimated from `seen` ((visits,
/// busy) per stratum, with half a busy visit as prior). Each stratum gets at least an eighth of
/// the budget (all of it when smaller): a stratum's rate can change, and the floor keeps
/// learning it. What one stratum cannot use goes to the other.
pub(super) fn neyman(budget: usize, sizes: [usize; 2], seen: [(f64, f64); 2]) -> [usize; 2] {
    let floor = (budget / 8).max(1);
    let sd = |h: usize| {
        let q = (seen[h].1 + 0.5) / (seen[h].0 + 1.0);
        (q * (1.0 - q)).sqrt()
    };
    let a = [sizes[0] as f64 * sd(0), sizes[1] as f64 * sd(1)];
    let share = budget as f64 * a[0] / (a[0] + a[1]).max(f64::MIN_POSITIVE);
    let within = |k: usize, n: usize| k.max(floor.min(n)).min(n);
    let first = within(share.round() as usize, sizes[0]);
    let second = within(budget.saturating_sub(first), sizes[1]);
    [within(budget.saturating_sub(second), sizes[0]), second]
}

impl SocketSampler {
    /// Chooses the connections to look up this round. Every connection whose last state was
    /// not a known idle one is looked up; known-idle ones (keep-alive connections waiting for
    /// their next request, idle pool connections) share the rest of the round's lookups. Each
    /// stratum (see [`stratum`]) gets a share in proportion to its size times the standard
    /// deviation of its busy indicator (Neyman allocation), so the cost follows a budget rather
    /// than the number of connections. A connection skipped for rounds is counted over the whole
    /// gap at its next visit (see [`super::gaps::gap_busy`]): request counts stay exact (cumulative segment
    /// counters) and request time is the gap's exchanges times their duration (all connections
    /// are visited at the end of a window).
    ///
    /// The sample is systematic: every `1/p_h`-th connection of the stratum from a random start,
    /// so each is taken with probability `p_h` exactly and the round costs what it looks up, not
    /// a walk of every known connection.
    pub(super) fn choose_lookups(&mut self, all: bool) {
        self.known.clear();
        let conns = &self.conns;
        let sock = |key: &Key| conns.get(key).map(|c| c.sock.clone());
        self.known.extend(self.busy.iter().filter_map(sock));
        let sizes = [self.idle[0].len(), self.idle[1].len()];
        let idle = sizes[0] + sizes[1];
        let budget = self
            .max_lookups
            .saturating_sub(self.busy.len())
            .max(MIN_IDLE_LOOKUPS);
        if all || idle <= budget {
            for set in &self.idle {
                self.known.extend(set.iter().filter_map(sock));
            }
            self.skipped = (0, 0);
            self.idle_sampled = (idle, 1.0);
            return;
        }
        let take = neyman(budget, sizes, self.strata);
        let mut taken_inbound = 0;
        for h in 0..2 {
            let (n, k) = (sizes[h], take[h]);
            if k == 0 {
                continue;
            }
            let step = n as f64 / k as f64;
            let start = unit_hash(0x5eed + h as u64, self.round + 1) * step;
            for j in 0..k {
                let at = ((start + j as f64 * step) as usize).min(n - 1);
                let Some(c) = self.idle[h].get_index(at).and_then(|key| conns.get(key)) else {
                    continue;
                };
                taken_inbound += usize::from(c.inbound);
                self.known.push(c.sock.clone());
            }
        }
        let taken = take[0] + take[1];
        self.idle_sampled = (idle, taken as f64 / idle as f64);
        self.skipped = (
            self.idle_inbound.saturating_sub(taken_inbound),
            (idle - self.idle_inbound).saturating_sub(taken - taken_inbound),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use super::super::decide::{Decision, How};
    use super::*;
    use crate::sampler::shape::Shape;
    use crate::sockdiag::{TcpInfo, TcpSocket, TCP_ESTABLISHED};

    #[test]
    fn neyman_gives_lookups_where_the_busy_connections_are() {
        // Nothing learnt yet: in proportion to size.
        assert_eq!(neyman(100, [100, 900], [(0.0, 0.0); 2]), [12, 88]);
        // Recently active connections are busy at 5% of visits, quiet ones at 0.05%: the 300
        // active get far more than their 3% of the budget.
        let take = neyman(100, [300, 9_700], [(1000.0, 50.0), (1000.0, 0.5)]);
        assert!((15..=20).contains(&take[0]), "{take:?}");
        assert_eq!(take[0] + take[1], 100);
        // The quiet stratum keeps its floor however rarely it is busy.
        let take = neyman(96, [5_000, 5_000], [(4000.0, 400.0), (4000.0, 0.0)]);
        assert_eq!(take[1], 12, "{take:?}");
        // A stratum smaller than its share takes all of itself; the rest goes to the other.
        assert_eq!(neyman(100, [5, 1_000], [(10.0, 5.0), (10.0, 0.0)]), [5, 95]);
        assert_eq!(neyman(100, [1_000, 5], [(10.0, 5.0), (10.0, 0.0)]), [95, 5]);
    }

    #[test]
    fn idle_connections_are_sampled_at_their_stratum_rate_and_all_at_the_end() {
        let mut sampler = SocketSampler::new().expect("a NETLINK_SOCK_DIAG socket");
        sampler.max_lookups = 64;
        let idle = Decision {
            value: 0.0,
            how: How::Quiet,
        };
        let busy = Decision {
            value: 1.0,
            how: How::Ordered,
        };
        // 40 busy connections, 200 recently active idle ones and 2,000 quiet ones.
        for i in 0..2_240u32 {
            let s = TcpSocket {
                family: libc::AF_INET as u8,
                state: TCP_ESTABLISHED,
                local: SocketAddr::new([127, 0, 0, 1].into(), 10_000 + (i % 50_000) as u16),
                remote: SocketAddr::new([127, 0, 1, (i / 200) as u8].into(), 80),
                inode: 9,
                uid: 0,
                rqueue: 0,
                wqueue: 0,
                expires_ms: 0,
                info: None,
            };
            let ago = if i < 240 { 10 } else { 5_000 };
            let conn = Conn {
                inbound: true,
                sock: s.clone(),
                info: TcpInfo {
                    last_data_sent_ms: ago,
                    last_data_recv_ms: ago,
                    ..TcpInfo::default()
                },
                decision: if i < 40 { busy } else { idle },
                round: 0,
                shape: Shape::default(),
                first_segs_out: 0,
            };
            sampler.put((s.local, s.remote), conn);
        }
        assert_eq!(sampler.busy.len(), 40);
        assert_eq!([sampler.idle[0].len(), sampler.idle[1].len()], [200, 2_000]);
        let mut visits: HashMap<Key, u32> = HashMap::new();
        let rounds: u64 = 2_000;
        let take = neyman(MIN_IDLE_LOOKUPS, [200, 2_000], sampler.strata);
        for r in 0..rounds {
            sampler.round = r;
            sampler.choose_lookups(false);
            assert_eq!(sampler.known.len(), 40 + take[0] + take[1]);
            assert_eq!(sampler.skipped.0 + sampler.known.len(), 2_240);
            for s in &sampler.known {
                *visits.entry((s.local, s.remote)).or_default() += 1;
            }
        }
        // Every connection is looked up at its stratum's rate (systematic sampling from a random
        // start: exactly p each, so no connection is never seen).
        for (key, n) in &visits {
            let c = &sampler.conns[key];
            let rate = f64::from(*n) / rounds as f64;
            let want = if is_idle(c) {
                let h = stratum(c);
                take[h] as f64 / [200.0, 2_000.0][h]
            } else {
                1.0
            };
            assert!((rate - want).abs() < 0.05, "{rate} against {want}");
        }
        assert_eq!(visits.len(), 2_240, "some connection never looked up");
        let all = sampler.conns.len();
        sampler.choose_lookups(true);
        assert_eq!(sampler.known.len(), all);
    }
}
