//! The accept loop both listeners share (HTTP and OTLP/gRPC): TLS when configured, a cap on open
//! connections, timeouts for slow or silent clients, and a graceful stop.
//!
//! - A connection over `max_connections` (both listeners together) is closed at once.
//! - Within `header_timeout` of its accept, a connection must finish its TLS handshake and send
//!   its first request's headers (a silent client, a slow handshake or one header byte a second
//!   is cut off); HTTP/1.1 holds later requests' headers, and idle keep-alives, to the same bound.
//! - Every request is answered within `request_timeout` (503, or `DEADLINE_EXCEEDED` for gRPC).
//!
//! Each cut is counted in `scalewise_collector_connections_dropped_total{reason}` or
//! `scalewise_collector_requests_rejected_total{reason="timeout"}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::app::App;

/// How long open connections may take to finish after a stop before they are dropped.
const DRAIN: Duration = Duration::from_secs(10);

/// What a listener speaks, for the answer to a request that ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Http,
    Grpc,
}

/// What both listeners share: TLS, the connection cap.
#[derive(Clone)]
pub struct Transport {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub slots: Arc<Semaphore>,
}

impl Transport {
    pub fn new(app: &App) -> Transport {
        Transport {
            tls: app.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            slots: Arc::new(Semaphore::new(app.config.limits.max_connections)),
        }
    }
}

fn timed_out(kind: Kind, after: Duration) -> Response<Body> {
    let message = format!("request not answered within {after:?}");
    let mut r = match kind {
        Kind::Http => {
            let body = serde_json::json!({ "error": message }).to_string();
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Kind::Grpc => tonic::Status::deadline_exceeded(message)
            .into_http::<Body>()
            .map(Body::new),
    };
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

/// Serves `svc` on `listener` until `stop` turns true; then lets open connections finish their
/// requests (at most [`DRAIN`]).
pub async fn serve<S, B>(
    app: Arc<App>,
    transport: Transport,
    listener: TcpListener,
    kind: Kind,
    svc: S,
    mut stop: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let limits = &app.config.limits;
    let header_timeout = limits.header_timeout.std();
    let request_timeout = limits.request_timeout.std();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%e, "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = transport.slots.clone().try_acquire_owned() else {
            app.telemetry.dropped("limit");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = transport.tls.clone();
        let builder = builder.clone();
        let svc = svc.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            app.telemetry.connections_open.inc();
            let deadline = tokio::time::Instant::now() + header_timeout;
            let conn = Conn {
                app: &app,
                builder: &builder,
                deadline,
                request_timeout,
                kind,
                stop,
            };
            match tls {
                None => conn.run(tcp, svc).await,
                Some(acceptor) => {
                    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(io)) => conn.run(io, svc).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%e, "TLS handshake failed");
                            app.telemetry.dropped("tls_handshake");
                        }
                        Err(_) => app.telemetry.dropped("timeout"),
                    }
                }
            }
            app.telemetry.connections_open.dec();
        });
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
}

struct Conn<'a> {
    app: &'a Arc<App>,
    builder: &'a hyper_util::server::conn::auto::Builder<TokioExecutor>,
    deadline: tokio::time::Instant,
    request_timeout: Duration,
    kind: Kind,
    stop: watch::Receiver<bool>,
}

impl Conn<'_> {
    async fn run<I, S, B>(mut self, io: I, svc: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let first = Arc::new(Notify::new());
        let (app, kind, limit) = (self.app.clone(), self.kind, self.request_timeout);
        let seen = first.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            seen.notify_one();
            let (svc, app) = (svc.clone(), app.clone());
            async move {
                match tokio::time::timeout(limit, svc.oneshot(req)).await {
                    Ok(Ok(resp)) => Ok::<_, Infallible>(resp.map(Body::new)),
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        app.telemetry
                            .requests_rejected
                            .with_label_values(&["timeout"])
                            .inc();
                        Ok(timed_out(kind, limit))
                    }
                }
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let first_request = tokio::time::sleep_until(self.deadline);
        tokio::pin!(first_request);
        let mut waiting = true;
        let mut stopping = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = first.notified(), if waiting => waiting = false,
                _ = &mut first_request, if waiting => {
                    self.app.telemetry.dropped("timeout");
                    return;
                }
                _ = self.stop.changed(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            let timeout = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout);
            if timeout {
                self.app.telemetry.dropped("timeout");
            } else {
                tracing::debug!(%e, "connection ended with an error");
            }
        }
    }
}
