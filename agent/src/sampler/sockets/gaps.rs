//! Connections that sampling skipped for rounds: their gap counted at the next visit from exact
//! exchange counts and the kernel's timestamps.

use super::decide::Decision;
use crate::sockdiag::TcpInfo;

/// Requests since the last visit (`old`): inbound, the peer's; outbound, ours (data segment
/// counters, exact).
fn exchanges(inbound: bool, old: &TcpInfo, new: &TcpInfo) -> u32 {
    if inbound {
        new.data_segs_in.saturating_sub(old.data_segs_in)
    } else {
        new.data_segs_out.saturating_sub(old.data_segs_out)
    }
}

/// The last request's age and its answer's age (ms): inbound, what the peer sent and what we
/// sent back; outbound, the reverse.
fn ask_and_answer_ms(inbound: bool, info: &TcpInfo) -> (u32, u32) {
    if inbound {
        (info.last_data_recv_ms, info.last_data_sent_ms)
    } else {
        (info.last_data_sent_ms, info.last_data_recv_ms)
    }
}

/// The duration of the last exchange (ms) when the connection is idle now with exchanges since
/// the last visit: from the last request segment to the last segment of its answer, by the
/// kernel's timestamps (tick resolution, so a sub-tick exchange reads 0 or one tick, right on
/// average).
pub(super) fn last_exchange_ms(
    inbound: bool,
    old: &TcpInfo,
    new: &TcpInfo,
    d: &Decision,
) -> Option<f64> {
    let idle = d.resolved() && d.value < 0.5;
    (idle && exchanges(inbound, old, new) > 0).then(|| {
        let (asked, answered) = ask_and_answer_ms(inbound, new);
        f64::from(asked.saturating_sub(answered))
    })
}

/// Request-seconds on a connection over a gap of rounds that sampling skipped, from what its
/// `tcp_info` says now and said at the last visit (`old`), with `d` the decision now and `last`
/// the last exchange's duration ([`last_exchange_ms`]). The gap's exchanges are exact. Idle
/// now: the gap held `k` exchanges of about the last one's duration. Busy now: the current
/// one's elapsed time plus `k − 1` earlier ones at the mean duration `mean_ms` (learnt from idle
/// connections). Unresolved: `k` at the mean. Either way, every exchange of the gap is counted
/// once, instead of a sampled instant standing for connections not looked at.
pub(super) fn gap_busy(
    inbound: bool,
    old: &TcpInfo,
    new: &TcpInfo,
    d: &Decision,
    mean_ms: f64,
    last: Option<f64>,
) -> f64 {
    let k = f64::from(exchanges(inbound, old, new));
    let ms = if !d.resolved() {
        k * mean_ms
    } else if d.value >= 0.5 {
        f64::from(ask_and_answer_ms(inbound, new).0) + (k - 1.0).max(0.0) * mean_ms
    } else {
        k * last.unwrap_or(0.0)
    };
    ms / 1000.0
}

#[cfg(test)]
mod tests {
    use super::super::decide::How;
    use super::*;

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
}
