//! scalewise-core: the pure library both binaries share.
//!
//! [`budget`] holds the counters that travel (request-seconds per component), [`engine`] turns a
//! window of them into a verdict, [`wire`] is the agent → collector format, [`report`] projects
//! what a rewrite would buy, [`decoded`] is the one bounded way OTLP bodies are decoded. All pure
//! (no I/O, no clock, no async runtime) so the agent's one-shot `diagnose` and the collector reach
//! the same answer from the same numbers, and the fuzz targets and case files exercise exactly what
//! production runs. The one exception is opt-in: the `grpc` feature adds `decoded::grpc`, a tonic
//! codec (tonic brings tokio), for the two binaries' OTLP/gRPC receivers.

pub mod budget;
pub mod decoded;
pub mod engine;
pub mod report;
pub mod text;
pub mod wire;

pub use budget::{Budget, DependencyTime, RequestSource};
pub use engine::{diagnose, Diagnosis, Thresholds, Verdict};
