use super::decide::*;
use super::gaps::*;
use super::lookups::*;
use super::*;

struct Knows(Reader);
impl ThreadOracle for Knows {
    fn reader(&mut self, _: u64, _: bool) -> Reader {
        self.0
    }
}

fn sock(rqueue: u32) -> TcpSocket {
    TcpSocket {
        family: libc::AF_INET as u8,
        state: TCP_ESTABLISHED,
        local: "127.0.0.1:40000".parse().expect("addr"),
        remote: "127.0.0.1:5432".parse().expect("addr"),
        inode: 9,
        uid: 0,
        rqueue,
        wqueue: 0,
        info: None,
    }
}

fn info(sent: u32, recv: u32, bytes: u64) -> TcpInfo {
    TcpInfo {
        last_data_sent_ms: sent,
        last_data_recv_ms: recv,
        bytes_acked: bytes,
        bytes_received: bytes,
        data_segs_in: 3,
        data_segs_out: 3,
        ..TcpInfo::default()
    }
}

#[test]
fn a_gap_counts_its_exchanges_at_their_duration() {
    let idle = Decision {
        value: 0.0,
        how: How::Ordered,
    };
    let at = |segs: u32, recv: u32, sent: u32| TcpInfo {
        data_segs_in: segs,
        data_segs_out: segs,
        last_data_recv_ms: recv,
        last_data_sent_ms: sent,
        ..TcpInfo::default()
    };
    // Five requests since the last visit, the last one answered 8 ms after it arrived.
    let (old, new) = (at(10, 900, 900), at(15, 30, 22));
    let last = last_exchange_ms(true, &old, &new, &idle);
    assert_eq!(last, Some(8.0));
    let s = gap_busy(true, &old, &new, &idle, 0.0, last);
    assert!((s - 0.040).abs() < 1e-9, "{s}");
    // Busy now for 12 ms, after two earlier requests of the mean's 8 ms.
    let busy = Decision {
        value: 1.0,
        how: How::Ordered,
    };
    let (old, new) = (at(15, 30, 22), at(18, 12, 40));
    assert_eq!(last_exchange_ms(true, &old, &new, &busy), None);
    let s = gap_busy(true, &old, &new, &busy, 8.0, None);
    assert!((s - 0.028).abs() < 1e-9, "{s}");
    // Nothing happened: nothing counted, nothing learnt.
    let (old, new) = (at(18, 12, 40), at(18, 300, 300));
    assert_eq!(last_exchange_ms(true, &old, &new, &idle), None);
    assert_eq!(gap_busy(true, &old, &new, &idle, 8.0, None), 0.0);
    // Outbound: our request went out 20 ms ago, its answer came 5 ms ago.
    let (old, new) = (at(1, 900, 900), at(2, 5, 20));
    let last = last_exchange_ms(false, &old, &new, &idle);
    let s = gap_busy(false, &old, &new, &idle, 0.0, last);
    assert!((s - 0.015).abs() < 1e-9, "{s}");
}

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
    // 40 busy connections, 200 recently active idle ones and 2,000 quiet ones.
    for i in 0..2_240u32 {
        let mut s = sock(0);
        s.local = SocketAddr::new([127, 0, 0, 1].into(), 10_000 + (i % 50_000) as u16);
        s.remote = SocketAddr::new([127, 0, 1, (i / 200) as u8].into(), 80);
        let ago = if i < 240 { 10 } else { 5_000 };
        let conn = Conn {
            inbound: true,
            sock: s.clone(),
            info: info(ago, ago, 1),
            decision: if i < 40 { known_state(1.0) } else { idle },
            round: 0,
            shape: Shape::default(),
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

fn known_state(value: f64) -> Decision {
    Decision {
        value,
        how: How::Ordered,
    }
}

#[test]
fn ordering_decides_both_directions() {
    let mut o = Knows(Reader::Unknown);
    // We sent 4 ms ago, last heard 20 ms ago: outbound awaits, inbound (peer waits) does not.
    let i = info(4, 20, 1);
    assert_eq!(decide(false, &sock(0), &i, None, &mut o, None).value, 1.0);
    assert_eq!(decide(true, &sock(0), &i, None, &mut o, None).value, 0.0);
    let i = info(20, 4, 1);
    assert_eq!(decide(false, &sock(0), &i, None, &mut o, None).value, 0.0);
    assert_eq!(decide(true, &sock(0), &i, None, &mut o, None).value, 1.0);
}

#[test]
fn unread_bytes_win() {
    let mut o = Knows(Reader::Unknown);
    let i = info(4, 20, 1);
    assert_eq!(decide(false, &sock(10), &i, None, &mut o, None).value, 0.0);
    let d = decide(true, &sock(10), &i, None, &mut o, None);
    assert_eq!((d.value, d.how), (1.0, How::Queued));
}

#[test]
fn a_response_held_in_the_send_queue_is_still_in_flight() {
    let mut o = Knows(Reader::Unknown);
    // Headers sent last (timestamps say "answered"), body held by Nagle.
    let mut i = info(4, 20, 1);
    i.notsent_bytes = 512;
    let d = decide(true, &sock(0), &i, None, &mut o, None);
    assert_eq!((d.value, d.how), (1.0, How::SendQueue));
}

#[test]
fn the_learnt_shape_settles_a_tie_and_a_part_sent_response() {
    let mut o = Knows(Reader::Unknown);
    let tie = info(4, 4, 100);
    let d = decide(true, &sock(0), &tie, None, &mut o, Some(1.0));
    assert_eq!((d.value, d.how), (1.0, How::Shape));
    // Timestamps say we spoke last, but the shape says the response is part-sent.
    let d = decide(true, &sock(0), &info(4, 20, 1), None, &mut o, Some(1.0));
    assert_eq!((d.value, d.how), (1.0, How::Shape));
    // The peer speaking last is in flight whatever the shape says.
    let d = decide(true, &sock(0), &info(20, 4, 1), None, &mut o, Some(0.0));
    assert_eq!(d.value, 1.0);
}

#[test]
fn ties_carry_only_a_known_state_then_ask_threads_then_stay_unresolved() {
    let tie = info(4, 4, 100);
    let prev = info(4, 4, 100);
    let d = decide(
        false,
        &sock(0),
        &tie,
        Some((&prev, known_state(1.0))),
        &mut Knows(Reader::Unknown),
        None,
    );
    assert_eq!((d.value, d.how), (1.0, How::Carried));
    // An unresolved state never carries: an idle keep-alive connection whose last exchange
    // fell in one tick must not stay "half in flight" for as long as it is idle.
    let unresolved = Decision {
        value: 0.0,
        how: How::Unresolved,
    };
    let d = decide(
        true,
        &sock(0),
        &tie,
        Some((&prev, unresolved)),
        &mut Knows(Reader::Unknown),
        None,
    );
    assert_eq!(d.how, How::Unresolved);
    // ... until it has been quiet for a second: then it is idle.
    let quiet = info(1200, 1200, 100);
    let d = decide(
        true,
        &sock(0),
        &quiet,
        Some((&quiet, unresolved)),
        &mut Knows(Reader::Unknown),
        None,
    );
    assert_eq!((d.value, d.how), (0.0, How::Quiet));
    // Data moved: a thread blocked reading the socket means outbound awaits.
    let moved = info(0, 0, 50);
    let d = decide(
        false,
        &sock(0),
        &tie,
        Some((&moved, known_state(0.0))),
        &mut Knows(Reader::Blocked),
        None,
    );
    assert_eq!(d.value, 1.0);
    let d = decide(
        true,
        &sock(0),
        &tie,
        Some((&moved, known_state(1.0))),
        &mut Knows(Reader::Blocked),
        None,
    );
    assert_eq!(d.value, 0.0, "a thread reading an inbound socket is idle");
    let d = decide(
        true,
        &sock(0),
        &tie,
        Some((&moved, known_state(0.0))),
        &mut Knows(Reader::Unread),
        None,
    );
    assert_eq!(d.value, 1.0, "an unread inbound socket carries a request");
    let d = decide(
        false,
        &sock(0),
        &tie,
        Some((&moved, known_state(0.0))),
        &mut Knows(Reader::Unknown),
        None,
    );
    assert_eq!(d.how, How::Unresolved);
    // First sight of a long-quiet connection: idle.
    let d = decide(
        false,
        &sock(0),
        &info(5000, 5000, 1),
        None,
        &mut Knows(Reader::Unknown),
        None,
    );
    assert_eq!((d.value, d.how), (0.0, How::Quiet));
}

#[test]
fn unresolved_samples_take_the_rate_of_resolved_ties_not_a_half() {
    let mut f = Fill::default();
    assert_eq!(f.estimate(), None);
    let idle = Decision {
        value: 0.0,
        how: How::Shape,
    };
    let busy = Decision {
        value: 1.0,
        how: How::Ordered,
    };
    f.learn(&busy, false);
    assert_eq!(
        f.estimate(),
        Some(1.0),
        "before enough ties, every resolved sample"
    );
    for _ in 0..99 {
        f.learn(&idle, true);
    }
    f.learn(&busy, true);
    assert!((f.estimate().expect("estimate") - 0.01).abs() < 1e-9);
}
