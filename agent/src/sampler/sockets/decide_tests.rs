use super::*;
use crate::sockdiag::TCP_ESTABLISHED;

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
        expires_ms: 0,
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
