//! The OTLP traces receiver: `POST /v1/traces` (protobuf or JSON, gzip or not) and gRPC
//! `TraceService/Export`, both on every `--otlp-listen` address (HTTP/1.1 and HTTP/2 cleartext
//! share a port), feeding a [`SharedAggregate`] and, optionally, a forwarder.
//!
//! Input is the monitored service's: bodies are bounded before and after decompression, and what
//! they would take once decoded is estimated before decoding, over HTTP and gRPC alike (both
//! through `scalewise_core::decoded`, as the collector's receiver); every refusal is a 4xx (a
//! gRPC status) with the reason and a counter, nothing in a body can panic the agent
//! ([`decode_http`] is pure and fuzzed). Forwarding is best-effort: bodies wait in a queue bounded
//! in count and bytes for one sender; when the target is slow or gone the queue fills and further
//! bodies are dropped and counted, so ingestion never waits on it and memory never grows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use scalewise_core::decoded::{self, grpc::BoundedCodec, gunzip_bounded, InflateError};
use serde::Serialize;
use thiserror::Error;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::server::UnaryService;

use super::{unix_ns, with, SharedAggregate};

/// Largest body accepted as sent (compressed or not), and after decompression.
pub const MAX_BODY_BYTES: usize = 8 << 20;
pub const MAX_DECODED_BYTES: usize = 32 << 20;
/// Largest memory a body may take once decoded, estimated before decoding it (see
/// `scalewise_core::decoded`: empty messages are 2 bytes on the wire, ~100 in memory).
pub const MAX_DECODED_MEMORY: usize = 128 << 20;
/// Largest OTLP/gRPC message (decompressed) on the traces receiver: gRPC's usual 4 MiB. What it
/// decodes to is bounded by the estimate ([`MAX_DECODED_MEMORY`]), as over HTTP.
pub const GRPC_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The gRPC method served, as every OTLP exporter sends it.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Bodies waiting for the forward target, at most.
pub const FORWARD_QUEUE: usize = 256;
pub const FORWARD_QUEUE_BYTES: usize = 32 << 20;
/// One forward request may take this long before it counts as failed.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ReceiverError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--otlp-listen {0} is not a loopback address: anyone who can reach it could feed the diagnosis (pass --otlp-insecure to allow it)")]
    NotLoopback(SocketAddr),
    #[error("--traces-forward {0:?}: {1}")]
    ForwardUrl(String, &'static str),
    #[error("cannot start the receiver's runtime: {0}")]
    Runtime(std::io::Error),
}

/// Why a body was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("body over {0} bytes")]
    TooLarge(usize),
    #[error("decompressed body over {0} bytes")]
    DecompressedTooLarge(usize),
    #[error("body would take about {0} bytes once decoded (limit {1})")]
    DecodesTooLarge(usize, usize),
    #[error("bad gzip: {0}")]
    Gzip(String),
    #[error("bad protobuf: {0}")]
    Protobuf(String),
    #[error("bad JSON: {0}")]
    Json(String),
    #[error("unsupported content-type {0:?} (application/x-protobuf or application/json)")]
    ContentType(String),
    #[error("unsupported content-encoding {0:?} (gzip or none)")]
    ContentEncoding(String),
}

impl From<InflateError> for DecodeError {
    fn from(e: InflateError) -> Self {
        match e {
            InflateError::TooLarge(limit) => DecodeError::DecompressedTooLarge(limit),
            InflateError::Gzip(m) => DecodeError::Gzip(m),
        }
    }
}

impl From<decoded::DecodeError> for DecodeError {
    fn from(e: decoded::DecodeError) -> Self {
        match e {
            decoded::DecodeError::TooLarge { estimate, limit } => {
                DecodeError::DecodesTooLarge(estimate, limit)
            }
            decoded::DecodeError::Protobuf(m) => DecodeError::Protobuf(m),
            decoded::DecodeError::Json(m) => DecodeError::Json(m),
        }
    }
}

impl DecodeError {
    /// The counter a refusal is filed under.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_)
            | DecodeError::DecompressedTooLarge(_)
            | DecodeError::DecodesTooLarge(..) => "too_large",
            DecodeError::Gzip(_) => "bad_gzip",
            DecodeError::Protobuf(_) => "bad_protobuf",
            DecodeError::Json(_) => "bad_json",
            DecodeError::ContentType(_) | DecodeError::ContentEncoding(_) => "unsupported",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            DecodeError::TooLarge(_)
            | DecodeError::DecompressedTooLarge(_)
            | DecodeError::DecodesTooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
            DecodeError::ContentType(_) | DecodeError::ContentEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A body's encoding, from its content type.
pub use scalewise_core::decoded::Encoding as Format;

/// Decodes one `/v1/traces` body. `gzip` says whether it is compressed; `limit` bounds the
/// decompressed size, [`MAX_DECODED_MEMORY`] the estimate of what it decodes to.
pub fn decode_http(
    body: &[u8],
    format: Format,
    gzip: bool,
    limit: usize,
) -> Result<ExportTraceServiceRequest, DecodeError> {
    let inflated;
    let raw: &[u8] = if gzip {
        inflated = gunzip_bounded(body, limit)?;
        &inflated
    } else {
        body
    };
    Ok(decoded::decode(raw, format, MAX_DECODED_MEMORY)?)
}

/// What the receiver has done, for the agent's self-metrics.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub http_requests: AtomicU64,
    pub grpc_requests: AtomicU64,
    pub too_large: AtomicU64,
    pub bad_gzip: AtomicU64,
    pub bad_protobuf: AtomicU64,
    pub bad_json: AtomicU64,
    pub unsupported: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_failed: AtomicU64,
    pub forward_dropped: AtomicU64,
}

/// A copy of [`ReceiverStats`] (and the aggregate's counters) at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub http_requests: u64,
    pub grpc_requests: u64,
    /// Refused bodies by reason: too_large, bad_gzip, bad_protobuf, bad_json, unsupported.
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
    pub forwarded: u64,
    pub forward_failed: u64,
    pub forward_dropped: u64,
    pub spans: super::AggregateStats,
}

impl ReceiverStats {
    /// Counts a refusal under its reason ([`DecodeError::kind`]).
    fn reject(&self, reason: &str) {
        let c = match reason {
            "too_large" => &self.too_large,
            "bad_gzip" => &self.bad_gzip,
            "bad_protobuf" => &self.bad_protobuf,
            "bad_json" => &self.bad_json,
            _ => &self.unsupported,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, spans: super::AggregateStats) -> StatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            http_requests: l(&self.http_requests),
            grpc_requests: l(&self.grpc_requests),
            rejected: [
                ("too_large", l(&self.too_large)),
                ("bad_gzip", l(&self.bad_gzip)),
                ("bad_protobuf", l(&self.bad_protobuf)),
                ("bad_json", l(&self.bad_json)),
                ("unsupported", l(&self.unsupported)),
            ]
            .into_iter()
            .collect(),
            forwarded: l(&self.forwarded),
            forward_failed: l(&self.forward_failed),
            forward_dropped: l(&self.forward_dropped),
            spans,
        }
    }
}

/// Where to listen and where to forward.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub listen: Vec<SocketAddr>,
    /// `http://host:port/path` receiving the bodies unchanged (HTTP/protobuf for gRPC input).
    pub forward: Option<String>,
    /// Allow non-loopback listen addresses without authentication.
    pub insecure: bool,
    pub max_body_bytes: usize,
}

impl ReceiverConfig {
    pub fn new(listen: Vec<SocketAddr>) -> Self {
        ReceiverConfig {
            listen,
            forward: None,
            insecure: false,
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

struct Forward {
    body: Bytes,
    content_type: HeaderValue,
    content_encoding: Option<HeaderValue>,
}

#[derive(Clone)]
struct Forwarder {
    tx: tokio::sync::mpsc::Sender<Forward>,
    queued_bytes: Arc<AtomicUsize>,
    stats: Arc<ReceiverStats>,
}

impl Forwarder {
    fn submit(&self, f: Forward) {
        let len = f.body.len();
        let queued = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if queued + len > FORWARD_QUEUE_BYTES || self.tx.try_send(f).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.stats.forward_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn forward_loop(
    mut rx: tokio::sync::mpsc::Receiver<Forward>,
    uri: axum::http::Uri,
    queued_bytes: Arc<AtomicUsize>,
    stats: Arc<ReceiverStats>,
) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    while let Some(f) = rx.recv().await {
        let len = f.body.len();
        let mut req =
            axum::http::Request::post(uri.clone()).header(header::CONTENT_TYPE, f.content_type);
        if let Some(ce) = f.content_encoding {
            req = req.header(header::CONTENT_ENCODING, ce);
        }
        let ok = match req.body(Full::new(f.body)) {
            Ok(req) => {
                let send = async {
                    let resp = client.request(req).await.ok()?;
                    let status = resp.status();
                    // Read (a bounded amount of) the answer so the connection can be reused.
                    let _ = Limited::new(resp.into_body(), 64 << 10).collect().await;
                    Some(status.is_success())
                };
                matches!(
                    tokio::time::timeout(FORWARD_TIMEOUT, send).await,
                    Ok(Some(true))
                )
            }
            Err(_) => false,
        };
        let counter = if ok {
            &stats.forwarded
        } else {
            &stats.forward_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    aggregate: SharedAggregate,
    stats: Arc<ReceiverStats>,
    forward: Option<Forwarder>,
    max_body: usize,
}

impl AppState {
    fn ingest(&self, req: &ExportTraceServiceRequest) {
        let now = unix_ns(SystemTime::now());
        with(&self.aggregate, |a| a.ingest(req, now));
    }
}

fn refuse(st: &AppState, e: DecodeError) -> Response {
    st.stats.reject(e.kind());
    tracing::debug!(error = %e, "OTLP traces body refused");
    (e.status(), e.to_string()).into_response()
}

async fn http_traces(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    st.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let text = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let ct = text(header::CONTENT_TYPE);
    let mime = ct.split(';').next().unwrap_or("").trim();
    let format = match mime {
        "application/x-protobuf" | "application/protobuf" | "" => Format::Protobuf,
        "application/json" => Format::Json,
        _ => return refuse(&st, DecodeError::ContentType(mime.to_string())),
    };
    let ce = text(header::CONTENT_ENCODING);
    let gzip = match ce.as_str() {
        "gzip" => true,
        "" | "identity" => false,
        _ => return refuse(&st, DecodeError::ContentEncoding(ce)),
    };
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_body as u64) {
        return refuse(&st, DecodeError::TooLarge(st.max_body));
    }
    let raw = match Limited::new(body, st.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return refuse(&st, DecodeError::TooLarge(st.max_body)),
    };
    let req = match decode_http(&raw, format, gzip, MAX_DECODED_BYTES) {
        Ok(r) => r,
        Err(e) => return refuse(&st, e),
    };
    st.ingest(&req);
    if let Some(f) = &st.forward {
        f.submit(Forward {
            body: raw,
            content_type: headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("application/x-protobuf")),
            content_encoding: headers.get(header::CONTENT_ENCODING).cloned(),
        });
    }
    let response = ExportTraceServiceResponse::default();
    match format {
        Format::Protobuf => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            response.encode_to_vec(),
        )
            .into_response(),
        Format::Json => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
        )
            .into_response(),
    }
}

/// gRPC `TraceService/Export`: our own unary service rather than the generated one, so the
/// message goes through the bounded codec (the estimate before prost decodes it, as over HTTP).
async fn grpc_traces(State(st): State<AppState>, req: Request) -> Response {
    st.stats.grpc_requests.fetch_add(1, Ordering::Relaxed);
    let stats = st.stats.clone();
    let codec: BoundedCodec<ExportTraceServiceRequest, ExportTraceServiceResponse, _> =
        BoundedCodec::new(MAX_DECODED_MEMORY, move |e: &decoded::DecodeError| {
            stats.reject(e.reason());
            tracing::debug!(error = %e, "OTLP/gRPC traces message refused");
        });
    let mut accept = EnabledCompressionEncodings::default();
    accept.enable(CompressionEncoding::Gzip);
    let mut grpc = tonic::server::Grpc::new(codec)
        .apply_compression_config(accept, EnabledCompressionEncodings::default())
        .apply_max_message_size_config(Some(GRPC_MAX_MESSAGE_BYTES), None);
    grpc.unary(GrpcExport(st), req).await.into_response()
}

struct GrpcExport(AppState);

impl UnaryService<ExportTraceServiceRequest> for GrpcExport {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<ExportTraceServiceRequest>) -> Self::Future {
        let req = request.into_inner();
        self.0.ingest(&req);
        if let Some(f) = &self.0.forward {
            f.submit(Forward {
                body: Bytes::from(req.encode_to_vec()),
                content_type: HeaderValue::from_static("application/x-protobuf"),
                content_encoding: None,
            });
        }
        std::future::ready(Ok(tonic::Response::new(
            ExportTraceServiceResponse::default(),
        )))
    }
}

/// Running listeners. Dropping it stops them (and the runtime, if it owns one).
pub struct Receiver {
    /// The bound addresses (a port 0 in the config is resolved here).
    pub addrs: Vec<SocketAddr>,
    pub stats: Arc<ReceiverStats>,
    aggregate: SharedAggregate,
    shutdown: tokio::sync::watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts on a runtime of its own (one worker thread: a few export requests a second).
    pub fn start_owned(
        cfg: ReceiverConfig,
        aggregate: SharedAggregate,
    ) -> Result<Receiver, ReceiverError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("scalewise-otlp")
            .enable_all()
            .build()
            .map_err(ReceiverError::Runtime)?;
        let mut r = Receiver::start_on(rt.handle(), cfg, aggregate)?;
        r.runtime = Some(rt);
        Ok(r)
    }

    /// Starts on the given runtime.
    pub fn start_on(
        handle: &tokio::runtime::Handle,
        cfg: ReceiverConfig,
        aggregate: SharedAggregate,
    ) -> Result<Receiver, ReceiverError> {
        if !cfg.insecure {
            if let Some(a) = cfg.listen.iter().find(|a| !a.ip().is_loopback()) {
                return Err(ReceiverError::NotLoopback(*a));
            }
        }
        let forward_uri = match &cfg.forward {
            None => None,
            Some(url) => {
                let uri: axum::http::Uri = url
                    .parse()
                    .map_err(|_| ReceiverError::ForwardUrl(url.clone(), "not a URL"))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(ReceiverError::ForwardUrl(
                        url.clone(),
                        "only http://HOST:PORT/PATH is supported (forward to a local OpenTelemetry Collector for TLS)",
                    ));
                }
                Some(uri)
            }
        };
        let stats = Arc::new(ReceiverStats::default());
        let forward = forward_uri.map(|uri| {
            let (tx, rx) = tokio::sync::mpsc::channel(FORWARD_QUEUE);
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            handle.spawn(forward_loop(rx, uri, queued_bytes.clone(), stats.clone()));
            Forwarder {
                tx,
                queued_bytes,
                stats: stats.clone(),
            }
        });
        let state = AppState {
            aggregate: aggregate.clone(),
            stats: stats.clone(),
            forward,
            max_body: cfg.max_body_bytes,
        };
        let app = axum::Router::new()
            .route("/v1/traces", post(http_traces))
            .route(GRPC_EXPORT_PATH, post(grpc_traces))
            .with_state(state);
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        let mut addrs = Vec::new();
        for &addr in &cfg.listen {
            let std_listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .map_err(|source| ReceiverError::Bind { addr, source })?;
            let bound = std_listener
                .local_addr()
                .map_err(|source| ReceiverError::Bind { addr, source })?;
            let listener = {
                let _guard = handle.enter();
                tokio::net::TcpListener::from_std(std_listener)
                    .map_err(|source| ReceiverError::Bind { addr, source })?
            };
            let app = app.clone();
            let mut watch = watch.clone();
            handle.spawn(async move {
                let stop = async move {
                    let _ = watch.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::warn!(addr = %bound, error = %e, "OTLP listener stopped");
                }
            });
            addrs.push(bound);
        }
        Ok(Receiver {
            addrs,
            stats,
            aggregate,
            shutdown,
            runtime: None,
        })
    }

    /// The counters, with the aggregate's.
    pub fn snapshot(&self) -> StatsSnapshot {
        let spans = with(&self.aggregate, |a| a.stats.clone());
        self.stats.snapshot(spans)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{BufRead, Write};

    fn sample() -> ExportTraceServiceRequest {
        serde_json::from_str(
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
               "scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
               "name":"GET /","kind":2,"startTimeUnixNano":"1000","endTimeUnixNano":"2000"}]}]}]}"#,
        )
        .expect("valid OTLP JSON")
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn protobuf_json_and_gzip_decode_to_the_same_request() {
        let req = sample();
        assert_eq!(req.resource_spans[0].scope_spans[0].spans[0].kind, 2);
        let pb = req.encode_to_vec();
        assert_eq!(
            decode_http(&pb, Format::Protobuf, false, 1 << 20),
            Ok(req.clone())
        );
        assert_eq!(
            decode_http(&gzip(&pb), Format::Protobuf, true, 1 << 20),
            Ok(req.clone())
        );
        let json = serde_json::to_vec(&req).expect("json");
        assert_eq!(decode_http(&json, Format::Json, false, 1 << 20), Ok(req));
    }

    #[test]
    fn json_as_the_sdks_write_it() {
        // int64 as strings or numbers, enums as integers, ids in hex (OTLP/JSON).
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"api"}},
            {"key":"process.pid","value":{"intValue":"4242"}}]},
          "scopeSpans":[{"scope":{"name":"x"},"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
             "name":"SELECT","kind":3,"startTimeUnixNano":1700000000001000000,
             "endTimeUnixNano":"1700000000002000000",
             "attributes":[{"key":"server.port","value":{"intValue":5432}},
                           {"key":"db.system.name","value":{"stringValue":"postgresql"}}],
             "status":{}}]}]}]}"#;
        let req = decode_http(body, Format::Json, false, 1 << 20).expect("valid OTLP/JSON");
        let rs = &req.resource_spans[0];
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.kind, 3);
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_001_000_000);
        assert_eq!(span.end_time_unix_nano, 1_700_000_000_002_000_000);
        assert_eq!(span.trace_id.len(), 16);
        let pid = &rs.resource.as_ref().expect("resource").attributes[1];
        assert_eq!(
            pid.value.as_ref().and_then(|v| v.value.clone()),
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(4242))
        );
    }

    #[test]
    fn hostile_bodies_are_refused_with_a_reason() {
        let pb = sample().encode_to_vec();
        let e = decode_http(&pb[..pb.len() - 3], Format::Protobuf, false, 1 << 20)
            .expect_err("truncated");
        assert_eq!(e.kind(), "bad_protobuf");
        let e = decode_http(b"{\"resourceSpans\":[", Format::Json, false, 1 << 20)
            .expect_err("bad json");
        assert_eq!(e.kind(), "bad_json");
        let e = decode_http(b"not gzip", Format::Protobuf, true, 1 << 20).expect_err("bad gzip");
        assert_eq!(e.kind(), "bad_gzip");
        // 64 MiB of zeros compress to ~64 KiB: refused at the limit, not inflated whole.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        let e = decode_http(&bomb, Format::Protobuf, true, 1 << 20).expect_err("bomb");
        assert_eq!(e, DecodeError::DecompressedTooLarge(1 << 20));
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // 2 MiB of empty spans lists: under the size limit, over the decoded-memory estimate.
        let empties: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 1 << 20)
            .flatten()
            .collect();
        let e = decode_http(&empties, Format::Protobuf, false, MAX_DECODED_BYTES)
            .expect_err("estimate");
        assert!(matches!(e, DecodeError::DecodesTooLarge(..)), "{e}");
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// POSTs a protobuf body; returns the status code.
    fn post(addr: SocketAddr, body: &[u8]) -> u16 {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write");
        s.write_all(body).expect("write");
        let mut line = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut line)
            .expect("read");
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_forward_target_that_never_answers_does_not_hold_up_ingestion() {
        // Accepts connections, never reads nor answers.
        let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let target = sink.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in sink.incoming().flatten() {
                held.push(c);
            }
        });
        let mut cfg = ReceiverConfig::new(vec!["127.0.0.1:0".parse().expect("addr")]);
        cfg.forward = Some(format!("http://{target}/v1/traces"));
        let agg = SharedAggregate::default();
        let r = Receiver::start_owned(cfg, agg).expect("receiver");
        let body = sample().encode_to_vec();
        let n = FORWARD_QUEUE + 50;
        for _ in 0..n {
            assert_eq!(post(r.addrs[0], &body), 200);
        }
        let s = r.snapshot();
        assert_eq!(s.spans.server_spans, n as u64);
        // At most the queue and the one in flight wait; the rest are dropped and counted.
        assert!(s.forward_dropped > 0, "{s:?}");
        assert_eq!(s.forwarded, 0);
    }

    /// One gRPC `TraceService/Export` of `body` (bytes as sent, protobuf), as an SDK exporter
    /// makes it (gzip when asked); the status on refusal.
    async fn grpc_export(addr: SocketAddr, body: Vec<u8>, gzip: bool) -> Result<(), tonic::Status> {
        use prost::bytes::{Buf, BufMut};
        use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
        struct Raw;
        impl Encoder for Raw {
            type Item = Vec<u8>;
            type Error = tonic::Status;
            fn encode(
                &mut self,
                item: Vec<u8>,
                buf: &mut EncodeBuf<'_>,
            ) -> Result<(), Self::Error> {
                buf.put_slice(&item);
                Ok(())
            }
        }
        impl Decoder for Raw {
            type Item = ExportTraceServiceResponse;
            type Error = tonic::Status;
            fn decode(
                &mut self,
                buf: &mut DecodeBuf<'_>,
            ) -> Result<Option<Self::Item>, Self::Error> {
                let bytes = buf.copy_to_bytes(buf.remaining());
                ExportTraceServiceResponse::decode(bytes)
                    .map(Some)
                    .map_err(|e| tonic::Status::internal(e.to_string()))
            }
        }
        impl Codec for Raw {
            type Encode = Vec<u8>;
            type Decode = ExportTraceServiceResponse;
            type Encoder = Raw;
            type Decoder = Raw;
            fn encoder(&mut self) -> Raw {
                Raw
            }
            fn decoder(&mut self) -> Raw {
                Raw
            }
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::unknown(e.to_string()))?
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        if gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH);
        grpc.unary(tonic::Request::new(body), path, Raw)
            .await
            .map(|_| ())
    }

    #[test]
    fn grpc_exports_are_decoded_within_the_estimate() {
        let r = Receiver::start_owned(
            ReceiverConfig::new(vec!["127.0.0.1:0".parse().expect("addr")]),
            SharedAggregate::default(),
        )
        .expect("receiver");
        let addr = r.addrs[0];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let good = sample().encode_to_vec();
        rt.block_on(grpc_export(addr, good.clone(), false))
            .expect("accepted");
        rt.block_on(grpc_export(addr, good, true))
            .expect("accepted gzipped");
        // 2 MiB of empty resource-spans: under the 4 MiB message limit, ~130 MiB once decoded.
        let empties: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 1 << 20)
            .flatten()
            .collect();
        assert!(empties.len() < GRPC_MAX_MESSAGE_BYTES);
        let status = rt
            .block_on(grpc_export(addr, empties, true))
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
        assert!(status.message().contains("once decoded"), "{status}");
        let status = rt
            .block_on(grpc_export(addr, vec![0x0a, 0xff], false))
            .expect_err("malformed");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        let s = r.snapshot();
        assert_eq!(s.grpc_requests, 4, "{s:?}");
        assert_eq!(s.spans.server_spans, 2, "{s:?}");
        assert_eq!(s.rejected["too_large"], 1, "{s:?}");
        assert_eq!(s.rejected["bad_protobuf"], 1, "{s:?}");
    }

    #[test]
    fn the_listener_is_loopback_unless_told_otherwise() {
        let cfg = ReceiverConfig::new(vec!["0.0.0.0:0".parse().expect("addr")]);
        let e = Receiver::start_owned(cfg, SharedAggregate::default()).err();
        assert!(matches!(e, Some(ReceiverError::NotLoopback(_))), "{e:?}");
        let mut cfg = ReceiverConfig::new(vec!["127.0.0.1:0".parse().expect("addr")]);
        cfg.forward = Some("https://collector:4318/v1/traces".into());
        let e = Receiver::start_owned(cfg, SharedAggregate::default()).err();
        assert!(matches!(e, Some(ReceiverError::ForwardUrl(..))), "{e:?}");
    }

    proptest! {
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), mode in 0u8..4) {
            let format = if mode & 1 == 0 { Format::Protobuf } else { Format::Json };
            if let Ok(req) = decode_http(&body, format, mode & 2 != 0, 1 << 16) {
                let mut a = super::super::SpanAggregate::new();
                a.ingest(&req, 1_700_000_000_000_000_000);
                for s in a.services() {
                    let _ = a.window(&s, 0, u64::MAX);
                }
            }
        }
    }
}
