//! scalewise-collector: the server that receives agents' OTLP metrics and serves, per service,
//! where request time goes and what limits it.
//!
//! ```text
//!  POST /v1/metrics ─┐                 ┌─ memory (recent snapshots) ─┐
//!  gRPC Export ──────┼─ ingest ─▶ App ─┤                             ├─ window ─▶ engine::diagnose
//!                    │  (decode,       └─ sqlite (flushed, thinned) ─┘     ─▶ REST, /metrics, page
//!                    │   bound, count)
//! ```
//!
//! [`app::App`] holds the state; [`rest::router`] serves it over HTTP, [`grpc`] over OTLP/gRPC,
//! [`app::serve`] runs both plus the flusher until shutdown. Pure parts ([`window`], [`limits`],
//! [`ingest`]'s decoding, [`store::Memory`]) take data and time as parameters and are unit-tested.
//! The engine, the wire format and the report are `scalewise-core`'s: the agent links them
//! without this server.

pub mod app;
pub mod auth;
pub mod config;
pub mod conn;
pub mod duration;
pub mod grpc;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod otlp_request;
pub mod page;
pub mod rest;
pub mod sqlite;
pub mod store;
pub mod tls;
pub mod window;

pub use app::{now_ms, serve, App};
pub use config::Config;
pub use rest::router;
