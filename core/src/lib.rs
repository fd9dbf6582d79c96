//! scalewise-core: the pure library both binaries share.
//!
//! [`budget`] holds the counters that travel (request-seconds per component), [`engine`] turns a
//! window of them into a verdict, [`wire`] is the agent → collector format, [`report`] projects
//! what a rewrite would buy. All pure (no I/O, no clock, no async runtime) so the agent's one-shot
//! `diagnose` and the collector reach the same answer from the same numbers, and the fuzz targets
//! and case files exercise exactly what production runs.

pub mod budget;
pub mod decoded;
pub mod engine;
pub mod report;
pub mod text;
pub mod wire;

pub use budget::{Budget, DependencyTime, RequestSource};
pub use engine::{diagnose, Diagnosis, Thresholds, Verdict};
