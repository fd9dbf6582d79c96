//! Per-connection exchange shape: how many data segments one response takes, learnt from the
//! kernel's exact segment counters, so that "is a request outstanding right now?" can be answered
//! from counts rather than from `tcp_info`'s tick-resolution timestamps.
//!
//! Request/response protocols (HTTP/1.x, the PostgreSQL, MySQL and Redis protocols, most RPC over
//! one connection without pipelining) send a request, then a response, then the next request. If
//! a request takes one data segment and a response `k`, then after `q` requests and `p` complete
//! responses the counters read `in = q` and `out = k p + partial`, and the number of requests
//! outstanding, `in − out / k`, is 0 when the connection is idle, 1 while a request is being
//! served, and in between while a response is part-way out (headers sent, body held by Nagle's
//! algorithm). Counters are exact at the instant of the sample, so this holds for requests far
//! shorter than a kernel tick, where timestamps tie.
//!
//! `k` is not known in advance: every candidate (1 to [`MAX_SEGMENTS`]) starts possible and a
//! candidate is dropped as soon as a reading puts its outstanding count outside `[0, 1]` or
//! contradicts a state known for sure (unread request bytes, a thread blocked reading the socket).
//! A prediction is made only when every remaining candidate agrees, after enough exchanges to have
//! told them apart. Protocols that pipeline, stream or vary their segment counts lose every
//! candidate and get no opinion from here; the caller then says the sample is unresolved.
//!
//! Counts are taken from a base: the connection's start (counters are cumulative from it), or,
//! once every candidate has been dropped, the next reading known to be idle (a handshake that
//! does not follow the pattern, such as TLS's, is left behind that way).

/// Largest number of data segments per response considered.
pub const MAX_SEGMENTS: u32 = 4;
/// Requests seen since the base before a prediction is made (every remaining candidate must
/// also agree, which is what really guards it: after one exchange of one segment each way,
/// "one segment per response, idle" and "two, half-sent" still both fit).
const MIN_EXCHANGES: u32 = 2;
const ALL: u8 = (1 << MAX_SEGMENTS) - 1;
const EPS: f64 = 0.01;

/// What is known for sure about a connection at one reading, besides its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    Nothing,
    /// A request is outstanding (its bytes are unread, or a thread works on it).
    Outstanding,
    /// Nothing is outstanding (a thread of the service waits to read the next request).
    Idle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    base_asked: u32,
    base_answered: u32,
    last_asked: u32,
    last_answered: u32,
    /// Bit `k − 1` set: `k` segments per response is still possible.
    candidates: u8,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            base_asked: 0,
            base_answered: 0,
            last_asked: 0,
            last_answered: 0,
            candidates: ALL,
        }
    }
}

impl Shape {
    fn outstanding(&self, k: u32, asked: u32, answered: u32) -> f64 {
        f64::from(asked.wrapping_sub(self.base_asked))
            - f64::from(answered.wrapping_sub(self.base_answered)) / f64::from(k)
    }

    fn fits(o: f64, known: Known) -> bool {
        (-EPS..=1.0 + EPS).contains(&o)
            && match known {
                Known::Nothing => true,
                Known::Outstanding => o > EPS,
                Known::Idle => o.abs() <= EPS,
            }
    }

    /// Takes one reading: `asked` = data segments from the side that asks (inbound: the peer;
    /// outbound: us), `answered` = data segments from the side that answers.
    pub fn observe(&mut self, asked: u32, answered: u32, known: Known) {
        if asked < self.last_asked || answered < self.last_answered {
            *self = Shape::default(); // a different connection behind the same addresses
        }
        self.last_asked = asked;
        self.last_answered = answered;
        for k in 1..=MAX_SEGMENTS {
            let bit = 1u8 << (k - 1);
            if self.candidates & bit != 0
                && !Self::fits(self.outstanding(k, asked, answered), known)
            {
                self.candidates &= !bit;
            }
        }
        if self.candidates == 0 && known == Known::Idle {
            *self = Shape {
                base_asked: asked,
                base_answered: answered,
                last_asked: asked,
                last_answered: answered,
                candidates: ALL,
            };
        }
    }

    /// 1.0 (a request outstanding, possibly part-answered) or 0.0 (idle), when every remaining
    /// candidate agrees and enough exchanges have been seen; else `None`.
    pub fn predict(&self, asked: u32, answered: u32) -> Option<f64> {
        if self.candidates == 0 || asked.wrapping_sub(self.base_asked) < MIN_EXCHANGES {
            return None;
        }
        let mut verdict = None;
        for k in 1..=MAX_SEGMENTS {
            if self.candidates & (1 << (k - 1)) == 0 {
                continue;
            }
            let o = self.outstanding(k, asked, answered);
            let v = if o.abs() <= EPS {
                0.0
            } else if o > EPS && o <= 1.0 + EPS {
                1.0
            } else {
                return None;
            };
            match verdict {
                None => verdict = Some(v),
                Some(x) if x != v => return None,
                _ => {}
            }
        }
        verdict
    }

    /// Segments per response, once only one candidate is left.
    pub fn segments_per_response(&self) -> Option<u32> {
        (self.candidates.count_ones() == 1).then(|| self.candidates.trailing_zeros() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays a connection: each exchange is one request segment and `k` response segments.
    fn replay(shape: &mut Shape, k: u32, exchanges: u32) -> (u32, u32) {
        let (mut asked, mut answered) = (0, 0);
        for _ in 0..exchanges {
            asked += 1;
            shape.observe(asked, answered, Known::Nothing);
            answered += k;
            shape.observe(asked, answered, Known::Nothing);
        }
        (asked, answered)
    }

    #[test]
    fn one_segment_responses_are_learnt_from_counts_alone() {
        let mut s = Shape::default();
        let (a, b) = replay(&mut s, 1, 6);
        assert_eq!(s.segments_per_response(), Some(1));
        assert_eq!(s.predict(a, b), Some(0.0), "idle between exchanges");
        assert_eq!(s.predict(a + 1, b), Some(1.0), "a request outstanding");
    }

    #[test]
    fn headers_then_body_is_two_segments_and_a_held_body_is_still_in_flight() {
        let mut s = Shape::default();
        let (a, b) = replay(&mut s, 2, 6);
        assert_eq!(s.segments_per_response(), Some(2));
        assert_eq!(s.predict(a, b), Some(0.0));
        assert_eq!(s.predict(a + 1, b), Some(1.0));
        // Headers sent, body held: the client is still waiting.
        assert_eq!(s.predict(a + 1, b + 1), Some(1.0));
    }

    #[test]
    fn too_few_exchanges_give_no_opinion() {
        let mut s = Shape::default();
        let (a, b) = replay(&mut s, 1, 1);
        assert_eq!(s.predict(a, b), None);
        // Two exchanges seen only at idle moments: one segment per response (idle) and two
        // (a request outstanding, half answered) both fit, so there is no opinion yet.
        let mut t = Shape::default();
        t.observe(1, 1, Known::Nothing);
        t.observe(2, 2, Known::Nothing);
        assert_eq!(t.predict(2, 2), None);
        t.observe(3, 3, Known::Nothing);
        assert_eq!(t.predict(3, 3), Some(0.0));
    }

    #[test]
    fn pipelining_and_streaming_lose_every_candidate() {
        let mut s = Shape::default();
        // Five requests before any answer: more than one outstanding.
        s.observe(5, 0, Known::Nothing);
        assert_eq!(s.candidates, 0);
        assert_eq!(s.predict(5, 0), None);
        // A server push stream: answers without questions.
        let mut t = Shape::default();
        t.observe(1, 40, Known::Nothing);
        assert_eq!(t.predict(1, 40), None);
    }

    #[test]
    fn a_handshake_that_breaks_the_pattern_is_left_behind_at_the_next_known_idle() {
        let mut s = Shape::default();
        // A TLS-like start: 2 segments in, 3 out, then plain 1:1 exchanges.
        s.observe(2, 3, Known::Nothing);
        s.observe(3, 3, Known::Nothing);
        s.observe(3, 4, Known::Nothing);
        s.observe(9, 4, Known::Nothing); // contradicts every candidate
        assert_eq!(s.candidates, 0);
        s.observe(9, 10, Known::Idle);
        let (mut a, mut b) = (9, 10);
        for _ in 0..5 {
            a += 1;
            s.observe(a, b, Known::Nothing);
            b += 1;
            s.observe(a, b, Known::Nothing);
        }
        assert_eq!(s.predict(a, b), Some(0.0));
        assert_eq!(s.predict(a + 1, b), Some(1.0));
    }

    #[test]
    fn known_states_drop_candidates_that_contradict_them() {
        let mut s = Shape::default();
        s.observe(4, 4, Known::Idle);
        // k = 1 says idle (4 − 4 = 0); k = 2 says 2 outstanding: dropped by range; k = 4: 3.
        assert_eq!(s.segments_per_response(), Some(1));
    }

    #[test]
    fn counters_going_backwards_start_again() {
        let mut s = Shape::default();
        replay(&mut s, 2, 6);
        s.observe(1, 0, Known::Nothing);
        assert_eq!(s, {
            let mut fresh = Shape::default();
            fresh.observe(1, 0, Known::Nothing);
            fresh
        });
    }
}
