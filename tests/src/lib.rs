//! scalewise's end-to-end test support: workloads that record their own ground truth, and a
//! harness that starts real servers (a private PostgreSQL cluster, the workloads, a JVM) on
//! loopback and stops them by pid.

pub mod collector;
pub mod harness;
pub mod metrics;
pub mod prometheus;
pub mod receiver;
pub mod workload;
