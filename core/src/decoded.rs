//! OTLP bodies decoded within bounds: gunzipped without holding more than a limit
//! ([`gunzip_bounded`]), and what decoding will cost in memory estimated before decoding
//! ([`decode`]). Every OTLP receiver (the collector's metrics over HTTP and gRPC, the agent's
//! traces over HTTP and gRPC) decodes through here; [`grpc`] is the tonic codec the gRPC ones
//! share (behind the `grpc` feature).
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

use std::io::Read;

use thiserror::Error;

#[cfg(feature = "grpc")]
pub mod grpc;

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

/// How an OTLP body is encoded: OTLP/HTTP's two content types (gRPC is always protobuf).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Why a gzip body was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InflateError {
    #[error("body is larger than {0} bytes after decompression")]
    TooLarge(usize),
    #[error("body is not valid gzip: {0}")]
    Gzip(String),
}

impl InflateError {
    /// A fixed reason, for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            InflateError::TooLarge(_) => "too_large",
            InflateError::Gzip(_) => "bad_gzip",
        }
    }
}

/// Decompresses gzip without ever holding more than `max` bytes: a bomb is refused after `max`
/// bytes of output, not inflated.
pub fn gunzip_bounded(body: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| InflateError::Gzip(e.to_string()))?;
    if out.len() > max {
        return Err(InflateError::TooLarge(max));
    }
    Ok(out)
}

/// Why a (decompressed) body was not decoded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Refused on the estimate, before decoding.
    #[error("body would take about {estimate} bytes once decoded (limit {limit})")]
    TooLarge { estimate: usize, limit: usize },
    #[error("cannot decode OTLP protobuf: {0}")]
    Protobuf(String),
    #[error("cannot decode OTLP JSON: {0}")]
    Json(String),
}

impl DecodeError {
    /// A fixed reason, for counters: `too_large`, `bad_protobuf` or `bad_json`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Protobuf(_) => "bad_protobuf",
            DecodeError::Json(_) => "bad_json",
        }
    }
}

/// Estimated memory of `raw` decoded: [`protobuf_estimate`] or [`json_estimate`].
pub fn estimate(raw: &[u8], encoding: Encoding) -> usize {
    match encoding {
        Encoding::Protobuf => protobuf_estimate(raw),
        Encoding::Json => json_estimate(raw),
    }
}

/// Decodes an OTLP message (already decompressed) when its [`estimate`] is at most
/// `max_decoded`; refuses it before decoding a byte otherwise. Protobuf through prost, OTLP/JSON
/// through serde (`opentelemetry-proto`'s `with-serde` types: hex ids, int64 as strings).
pub fn decode<M>(raw: &[u8], encoding: Encoding, max_decoded: usize) -> Result<M, DecodeError>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    let estimate = estimate(raw, encoding);
    if estimate > max_decoded {
        return Err(DecodeError::TooLarge {
            estimate,
            limit: max_decoded,
        });
    }
    match encoding {
        Encoding::Protobuf => M::decode(raw).map_err(|e| DecodeError::Protobuf(e.to_string())),
        Encoding::Json => serde_json::from_slice(raw).map_err(|e| DecodeError::Json(e.to_string())),
    }
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

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    use prost::Message;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn sample() -> ExportTraceServiceRequest {
        serde_json::from_str(
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
               "scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
               "name":"GET /","kind":2,"startTimeUnixNano":"1000","endTimeUnixNano":"2000"}]}]}]}"#,
        )
        .expect("valid OTLP JSON")
    }

    #[test]
    fn decode_reads_protobuf_and_otlp_json_to_the_same_message() {
        let req = sample();
        assert_eq!(
            req.resource_spans[0].scope_spans[0].spans[0].span_id.len(),
            8
        );
        let pb = req.encode_to_vec();
        assert_eq!(decode(&pb, Encoding::Protobuf, 1 << 20), Ok(req.clone()));
        let json = serde_json::to_vec(&req).expect("json");
        assert_eq!(decode(&json, Encoding::Json, 1 << 20), Ok(req.clone()));
        // Gzipped, then decoded: the path every HTTP receiver takes.
        let raw = gunzip_bounded(&gzip(&pb), 1 << 20).expect("fits");
        assert_eq!(decode(&raw, Encoding::Protobuf, 1 << 20), Ok(req));
    }

    #[test]
    fn a_gzip_bomb_is_refused_not_inflated() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20, "64 MiB of zeros compress small");
        let e = gunzip_bounded(&bomb, 1 << 20).expect_err("bomb");
        assert_eq!(e, InflateError::TooLarge(1 << 20));
        assert_eq!(e.reason(), "too_large");
        assert_eq!(gunzip_bounded(&gzip(b"hello"), 5).expect("fits"), b"hello");
        let e = gunzip_bounded(b"not gzip", 100).expect_err("not gzip");
        assert!(matches!(e, InflateError::Gzip(_)), "{e}");
        assert_eq!(e.reason(), "bad_gzip");
    }

    /// A message that would panic if decoded: the refusal must come from the estimate alone.
    #[derive(Debug, Default, serde::Deserialize)]
    struct Untouchable;

    impl prost::Message for Untouchable {
        fn encode_raw(&self, _: &mut impl prost::bytes::BufMut) {}
        fn merge_field(
            &mut self,
            _: u32,
            _: prost::encoding::WireType,
            _: &mut impl prost::bytes::Buf,
            _: prost::encoding::DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            panic!("decoded despite the estimate")
        }
        fn encoded_len(&self) -> usize {
            0
        }
        fn clear(&mut self) {}
    }

    #[test]
    fn an_over_estimate_is_refused_before_decoding() {
        // 2 MiB of empty resource-spans: ~130 MiB decoded.
        let empties: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 1 << 20)
            .flatten()
            .collect();
        let e = decode::<Untouchable>(&empties, Encoding::Protobuf, 128 << 20).expect_err("over");
        assert_eq!(
            e,
            DecodeError::TooLarge {
                estimate: (2 << 20) + (1 << 20) * PER_MESSAGE,
                limit: 128 << 20
            }
        );
        assert_eq!(e.reason(), "too_large");
        assert!(e.to_string().contains("once decoded"), "{e}");
        let mut json = b"{\"resourceSpans\":[".to_vec();
        json.extend(std::iter::repeat_n(&b"{},"[..], 1 << 16).flatten());
        json.extend_from_slice(b"{}]}");
        let e =
            decode::<ExportTraceServiceRequest>(&json, Encoding::Json, 1 << 20).expect_err("over");
        assert_eq!(e.reason(), "too_large");
        // Under the bound, the same shapes decode.
        let req: ExportTraceServiceRequest =
            decode(&empties[..2000], Encoding::Protobuf, 1 << 20).expect("small");
        assert_eq!(req.resource_spans, vec![ResourceSpans::default(); 1000]);
        let req: ExportTraceServiceRequest =
            decode(&json, Encoding::Json, 128 << 20).expect("bounded");
        assert_eq!(req.resource_spans.len(), (1 << 16) + 1);
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        let pb = sample().encode_to_vec();
        let e =
            decode::<ExportTraceServiceRequest>(&pb[..pb.len() - 3], Encoding::Protobuf, 1 << 20)
                .expect_err("truncated");
        assert_eq!(e.reason(), "bad_protobuf");
        assert!(
            e.to_string().starts_with("cannot decode OTLP protobuf: "),
            "{e}"
        );
        for bad in [&b"{\"resourceSpans\":["[..], b"[1,2]", b"", b"\xff"] {
            let e = decode::<ExportTraceServiceRequest>(bad, Encoding::Json, 1 << 20)
                .expect_err("bad json");
            assert_eq!(e.reason(), "bad_json");
        }
        // Random bytes never panic, whatever the encoding.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..400 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for enc in [Encoding::Protobuf, Encoding::Json] {
                let _ = decode::<ExportTraceServiceRequest>(&body, enc, 1 << 16);
            }
        }
    }

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
