//! scalewise-agent: samples running processes, without code changes, and tells where their
//! request time goes.
//!
//! Data flow: samplers ([`sampler::threads`], [`sampler::sockets`], [`cgroup`], [`gc`]) feed a
//! [`session::Session`], which keeps one cumulative [`scalewise_core::Budget`] per service;
//! [`diagnose`] runs a session for a while and hands the budget to the shared engine in
//! `scalewise-collector`. Parsers of data the monitored process controls ([`proc_files`],
//! [`sockdiag`], [`gc`]) are pure functions over bytes, tested with hostile input and fuzzed.

pub mod caps;
pub mod cgroup;
pub mod demo;
pub mod deps;
pub mod diagnose;
pub mod gc;
pub mod peer;
pub mod proc_files;
pub mod render;
pub mod report;
pub mod run;
pub mod runtime;
pub mod session;
pub mod sockdiag;
pub mod spans;
pub mod stop;
pub mod tls;

pub mod sampler {
    //! Samplers: each reads one kind of kernel signal about the service's processes.
    pub mod shape;
    pub mod sockets;
    pub mod threads;
}
