//! scalewise-collector: the diagnosis engine shared by the agent and the collector server.
//!
//! [`budget`] holds the counters that travel (request-seconds per component), [`engine`] turns a
//! window of them into a verdict. Both are pure so the agent's one-shot `diagnose` and the
//! collector reach the same answer from the same numbers. [`wire`] is the agent → collector
//! format; behind the `server` feature, [`server`] is the collector itself.

pub mod budget;
pub mod decoded;
pub mod engine;
pub mod report;
pub mod wire;

/// The collector server (OTLP receiver, windows, store, REST, `/metrics`, web page).
#[cfg(feature = "server")]
pub mod server;

pub use budget::{Budget, DependencyTime, RequestSource};
pub use engine::{diagnose, Diagnosis, Thresholds, Verdict};
