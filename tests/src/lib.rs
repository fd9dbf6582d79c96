//! scalewise's end-to-end test support: workloads that record their own ground truth, and a
//! harness that starts real servers (a private PostgreSQL cluster, the workloads, a JVM, the
//! agent's `run`, the collector, Prometheus) on loopback and stops them by pid, with one reader
//! of the Prometheus text they serve (`metrics`).

pub mod collector;
pub mod harness;
pub mod metrics;
pub mod prometheus;
pub mod receiver;
pub mod verdicts;
pub mod workload;
