//! What a verdict is worth: the deciding rule's own confidence, scaled down for a short window,
//! few requests, a model that did not fit, and a request side measured badly. Apart from the rules
//! because it applies the same way whichever rule decided.

use super::{Facts, Verdict};
use crate::budget::RequestSource;

/// The verdict and its confidence (unclamped, unrounded); `None` is insufficient data, at zero.
pub(super) fn weigh(decided: Option<(Verdict, f64)>, f: &Facts) -> (Verdict, f64) {
    let (b, t, m) = (f.b, f.t, &f.m);
    let Some((verdict, c)) = decided else {
        return (Verdict::InsufficientData, 0.0);
    };
    // Full weight from 100 requests and a 5 s window.
    let mut c = c * (b.requests / 100.0).min(1.0).sqrt() * (m.window / 5.0).min(1.0);
    if f.s.normalised {
        c *= 0.7;
    }
    // The request side is contradicted: the shares stand, but nothing confident rests on them.
    if f.s.overflow {
        c = c.min(0.55);
    }
    if b.request_source == RequestSource::Sockets {
        c *= 1.0 - m.unresolved;
        if m.unresolved > t.unresolved_share {
            c = c.min(0.55);
        }
    }
    (verdict, c)
}
