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
