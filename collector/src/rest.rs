//! The HTTP surface on one port: OTLP/HTTP ingest, the pinned REST API, `/metrics`, probes and
//! the web page. Handlers are thin: they parse, call [`App`], and turn its answer into JSON, HTML
//! or the Prometheus text format. Errors are 4xx with a JSON `{"error": ...}` naming the reason;
//! a refused OTLP export gets a `google.rpc.Status` instead, as OTLP/HTTP specifies.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prost::Message;

use crate::app::{now_ms, App};
use crate::config;
use crate::ingest::{decode_body, Format, IngestError};
use crate::{metrics, page};
use scalewise_core::decoded::InflateError;

const DEFAULT_WINDOW_MS: i64 = 300_000;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Every route. `/healthz` and `/readyz` never need a token; everything else does when tokens
/// are configured.
pub fn router(app: Arc<App>) -> Router {
    let guarded = Router::new()
        .route("/v1/metrics", post(otlp_http))
        .route("/api/v1/services", get(list))
        .route("/api/v1/services/{service}", get(one))
        .route("/api/v1/services/{service}/history", get(history))
        .route("/api/v1/services/{service}/report", get(report))
        .route("/metrics", get(prometheus))
        .route("/", get(fleet_page))
        .route("/services/{service}", get(service_page))
        .layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        // Bodies are bounded by the ingest handler itself, so the refusal is counted.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if app.tokens().allows(auth) {
        return next.run(req).await;
    }
    app.telemetry
        .requests_rejected
        .with_label_values(&["unauthorized"])
        .inc();
    let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

/// `google.rpc.Status`, the body OTLP/HTTP specifies for a refused export. Two fields of a
/// well-known message: declared here rather than pulling in a crate of Google API types.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// A refused OTLP export, counted by reason. The body is a `google.rpc.Status` in the request's
/// own encoding (protobuf, or its JSON mapping), as OTLP/HTTP requires of servers.
fn reject(
    app: &App,
    headers: &HeaderMap,
    reason: &'static str,
    status: StatusCode,
    message: String,
) -> Response {
    app.telemetry
        .requests_rejected
        .with_label_values(&[reason])
        .inc();
    // gRPC codes: INVALID_ARGUMENT, RESOURCE_EXHAUSTED for what is too large.
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        8
    } else {
        3
    };
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-protobuf"));
    if protobuf {
        let body = RpcStatus { code, message }.encode_to_vec();
        (
            status,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            body,
        )
            .into_response()
    } else {
        (
            status,
            Json(serde_json::json!({ "code": code, "message": message })),
        )
            .into_response()
    }
}

async fn otlp_http(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let limits = &app.config.limits;
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    let bytes = match tokio::time::timeout(limits.body_timeout.std(), read).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            return reject(
                &app,
                &headers,
                "body_timeout",
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {}", limits.body_timeout),
            )
        }
        Ok(Err(_)) => {
            return reject(
                &app,
                &headers,
                "too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body larger than {} bytes (or unreadable)",
                    limits.max_body_bytes
                ),
            )
        }
    };
    let h = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let decoded = decode_body(
        h(header::CONTENT_TYPE),
        h(header::CONTENT_ENCODING),
        &bytes,
        limits,
    );
    let (req, format) = match decoded {
        Ok(x) => x,
        Err(e) => {
            let status = match &e {
                IngestError::TooLarge(_)
                | IngestError::DecodesTooLarge(..)
                | IngestError::Inflate(InflateError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
                IngestError::MediaType(_) | IngestError::Encoding(_) => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                _ => StatusCode::BAD_REQUEST,
            };
            return reject(&app, &headers, e.reason(), status, e.to_string());
        }
    };
    let resp = app.ingest(&req, "http", now_ms());
    match format {
        Format::Protobuf => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response(),
        Format::Json => Json(resp).into_response(),
    }
}

/// A 4xx or 5xx answer, built late so results stay small.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// `window` (and `step`) from the query: `20s`, `5m`, `1h` or seconds.
fn window_param(q: &HashMap<String, String>, key: &str, default_ms: i64) -> Result<i64, Refusal> {
    config::window_param(q.get(key).map(String::as_str), key, default_ms)
        .map_err(|m| Refusal(StatusCode::BAD_REQUEST, m))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn list(State(app): State<Arc<App>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let window = match window_param(&q, "window", DEFAULT_WINDOW_MS) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    match blocking(move || app.summaries(window, now_ms())).await {
        Ok(s) => {
            let services: Vec<_> = s.into_iter().map(|(_, s)| s).collect();
            Json(serde_json::json!({ "services": services })).into_response()
        }
        Err(r) => r.into_response(),
    }
}

fn unknown(service: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "unknown service {:?}",
            crate::limits::bound_label(service, 256).0
        ),
    )
}

async fn one(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let window = match window_param(&q, "window", DEFAULT_WINDOW_MS) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let name = service.clone();
    match blocking(move || app.service_view(&name, window, now_ms())).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => unknown(&service),
        Err(r) => r.into_response(),
    }
}

/// The rewrite report over a window: `format=html|md|json`, `target=rust` (repeatable), and the
/// report's other options (see `report::ReportOptions::from_query`); `instances` defaults to the
/// instances seen in the window.
async fn report(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let map: HashMap<String, String> = q.iter().cloned().collect();
    let window = match window_param(&map, "window", DEFAULT_WINDOW_MS) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let (mut opts, format) = match scalewise_core::report::ReportOptions::from_query(
        q.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let name = service.clone();
    let view = match blocking(move || app.service_view(&name, window, now_ms())).await {
        Ok(Some(v)) => v,
        Ok(None) => return unknown(&service),
        Err(r) => return r.into_response(),
    };
    if opts.instances.is_none() && view.instances > 0 {
        opts.instances = Some(view.instances as f64);
    }
    match scalewise_core::report::render(&view.diagnosis, &opts, format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn history(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let window = match window_param(&q, "window", 3_600_000) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let step = match window_param(&q, "step", (window / 60).max(1000)) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    if window / step > 2000 {
        return error(StatusCode::BAD_REQUEST, "at most 2000 steps per window");
    }
    let name = service.clone();
    match blocking(move || app.history(&name, window, step, now_ms())).await {
        Ok(Some(h)) => Json(h).into_response(),
        Ok(None) => unknown(&service),
        Err(r) => r.into_response(),
    }
}

async fn prometheus(State(app): State<Arc<App>>) -> Response {
    match blocking(move || metrics::render(&app, now_ms())).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn fleet_page(State(app): State<Arc<App>>) -> Response {
    let window = app.config.metrics_window.ms();
    match blocking(move || {
        let now = now_ms();
        page::fleet(&app.summaries(window, now), window, now)
    })
    .await
    {
        Ok(html) => Html(html).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn service_page(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let window = match window_param(&q, "window", 3_600_000) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let name = service.clone();
    let current = app.config.metrics_window.ms();
    let r = blocking(move || {
        let now = now_ms();
        let view = app.service_view(&name, current, now)?;
        let hist = app.history(&name, window, (window / 60).max(1000), now)?;
        Some(page::service(&view, &hist))
    })
    .await;
    match r {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Html(page::not_found(&service))).into_response(),
        Err(r) => r.into_response(),
    }
}
