//! What decoding a sender's OTLP message will cost in memory, estimated before decoding it.
//!
//! A size limit on the body is not a limit on memory: an empty protobuf message takes two bytes on
//! the wire (tag, zero length) and about a hundred once decoded (a data point with its empty
//! vectors), so 16 MiB of empty data points decode to over half a gigabyte; JSON's `{}` does the
//! same. The decoders (prost, serde) have no budget of their own, so the receivers count first:
//! every nested message the body could hold is charged [`PER_MESSAGE`] bytes, plus the body's own
//! size for the strings and numbers it carries, and a body whose estimate exceeds the limit is
//! refused before any of it is decoded.
//!
//! Written by hand because no crate offers it: the protobuf count walks the wire format without a
//! schema, reading every length-delimited field as a message when it parses as one (a string that
//! happens to parse is over-counted, which only errs towards refusing). Nesting deeper than
//! [`MAX_DEPTH`] is counted as bytes, so the walk costs at most `MAX_DEPTH` passes over the body.

/// Bytes charged per decoded message or JSON object/array: a decoded OTLP data point, key-value or
/// any-value with its vectors' headers is 60-100 bytes, and vectors may hold up to twice that in
/// capacity.
pub const PER_MESSAGE: usize = 128;
/// Nesting followed when counting protobuf messages (OTLP metrics and traces nest 8-10 deep;
/// deeper any-values are counted as their bytes).
pub const MAX_DEPTH: usize = 16;

/// Estimated memory of a decoded protobuf body.
pub fn protobuf_estimate(body: &[u8]) -> usize {
    body.len()
        .saturating_add(count_messages(body, 0).unwrap_or(0) * PER_MESSAGE)
}

/// Estimated memory of a decoded JSON body: every object and array outside strings.
pub fn json_estimate(body: &[u8]) -> usize {
    let mut containers = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => containers += 1,
                _ => {}
            }
        }
    }
    body.len()
        .saturating_add(containers.saturating_mul(PER_MESSAGE))
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Messages nested in `buf` read as a message, or `None` when it does not parse as one.
fn count_messages(buf: &[u8], depth: usize) -> Option<usize> {
    let mut at = 0;
    let mut count = 0usize;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        if key >> 3 == 0 {
            return None; // field number 0 is invalid
        }
        match key & 7 {
            0 => {
                varint(buf, &mut at)?;
            }
            1 => at = at.checked_add(8).filter(|&e| e <= buf.len())?,
            5 => at = at.checked_add(4).filter(|&e| e <= buf.len())?,
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|&e| e <= buf.len())?;
                count += 1;
                if depth + 1 < MAX_DEPTH {
                    count += count_messages(&buf[at..end], depth + 1).unwrap_or(0);
                }
                at = end;
            }
            _ => return None, // groups (deprecated, unused by OTLP) and invalid wire types
        }
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_messages_are_charged_far_beyond_their_two_bytes() {
        // 1,000 empty repeated messages: 2 bytes each on the wire.
        let body: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 1000).flatten().collect();
        assert_eq!(protobuf_estimate(&body), 2000 + 1000 * PER_MESSAGE);
        // Nested: each level counts.
        let nested = [0x0a, 0x04, 0x12, 0x02, 0x1a, 0x00];
        assert_eq!(protobuf_estimate(&nested), 6 + 3 * PER_MESSAGE);
    }

    #[test]
    fn strings_that_do_not_parse_are_bytes_and_malformed_bodies_are_not_counted_past_their_error() {
        // field 1, "service" (its first byte, 's' = 0x73, is wire type 3: not a message).
        let mut body = vec![0x0a, 7];
        body.extend_from_slice(b"service");
        assert_eq!(protobuf_estimate(&body), body.len() + PER_MESSAGE);
        // A length running past the end: not a message at all.
        assert_eq!(protobuf_estimate(&[0x0a, 0x7f, 0x00]), 3);
        assert_eq!(protobuf_estimate(&[0xff; 20]), 20);
    }

    #[test]
    fn deep_nesting_stops_counting_at_the_depth_limit() {
        // 60 messages, each the only field of the one around it.
        let mut body: Vec<u8> = Vec::new();
        for _ in 0..60 {
            let len = u8::try_from(body.len()).expect("short");
            body = [vec![0x0a, len], body].concat();
        }
        let n = (protobuf_estimate(&body) - body.len()) / PER_MESSAGE;
        assert_eq!(n, MAX_DEPTH);
    }

    #[test]
    fn json_counts_objects_and_arrays_outside_strings() {
        assert_eq!(json_estimate(b"[{},{}]"), 7 + 3 * PER_MESSAGE);
        let s = br#"{"a":"{[\"}{"}"#;
        assert_eq!(json_estimate(s), s.len() + PER_MESSAGE);
    }
}
