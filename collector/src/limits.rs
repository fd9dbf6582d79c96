//! Bounds on everything a sender controls: body sizes, label lengths, how many services,
//! instances and dependencies are tracked. Each overflow is dropped and counted, never grown into
//! an unbounded map (the OpenTelemetry SDK's cardinality limit does the same).

use serde::{Deserialize, Serialize};

use crate::duration::Dur;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted as received (compressed or not), in bytes.
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression; a gzip bomb stops here instead of inflating.
    pub max_decompressed_bytes: usize,
    /// Largest memory a body may take once decoded, estimated before decoding it (see
    /// [`scalewise_core::decoded`]): 2-byte empty messages cannot decode to a hundred times their size.
    pub max_decoded_bytes: usize,
    /// Snapshots kept for SQLite while its writes fail (a full disk); past this the oldest are
    /// dropped and counted (`scalewise_collector_pending_dropped_total`). ~250 bytes each.
    pub max_pending_snapshots: usize,
    /// Services tracked; points of further services are dropped and counted.
    pub max_services: usize,
    /// Instances tracked per service.
    pub max_instances_per_service: usize,
    /// Dependencies tracked per service.
    pub max_dependencies_per_service: usize,
    /// Longest label value kept (service name, instance id, dependency); longer ones are cut at
    /// a character boundary and counted.
    pub max_label_length: usize,
    /// Points stamped further than this in the future are refused, in seconds.
    pub max_future_skew_s: u64,
    /// Open connections over both listeners; further ones are closed at once and counted.
    pub max_connections: usize,
    /// A connection must complete its TLS handshake and its first request's headers within this
    /// long, and later requests' headers too (an idle HTTP/1.1 keep-alive closes after it).
    pub header_timeout: Dur,
    /// An OTLP/HTTP body must be read whole within this long after its headers.
    pub body_timeout: Dur,
    /// Every request must be answered within this long (body read included).
    pub request_timeout: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_decompressed_bytes: 16 << 20,
            max_decoded_bytes: 128 << 20,
            max_pending_snapshots: 1_000_000,
            max_services: 2000,
            max_instances_per_service: 200,
            max_dependencies_per_service: 64,
            max_label_length: 256,
            max_future_skew_s: 300,
            max_connections: 1024,
            header_timeout: Dur::secs(30),
            body_timeout: Dur::secs(10),
            request_timeout: Dur::secs(30),
        }
    }
}

/// A label value cut to `max` bytes, and whether it was cut.
pub use scalewise_core::text::cut as bound_label;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_cut_on_character_boundaries() {
        assert_eq!(bound_label("short", 10), ("short".to_string(), false));
        let (cut, was) = bound_label(&"é".repeat(10), 5);
        assert!(was);
        assert_eq!(cut, "éé");
    }
}
