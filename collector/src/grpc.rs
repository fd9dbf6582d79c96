//! OTLP/gRPC: `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`, the same ingest
//! as OTLP/HTTP, with the same limits and tokens.
//!
//! The service is ours rather than the one `opentelemetry-proto` generates, for two things the
//! generated one cannot do: the token is checked from the headers before the body is decoded (an
//! unauthenticated sender costs no decoding), and the codec estimates what the message will take
//! once decoded before decoding it ([`scalewise_core::decoded::grpc::BoundedCodec`], the codec the
//! agent's traces receiver serves with too), as OTLP/HTTP does. tonic still frames, decompresses
//! (gzip) and bounds the message's size.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use scalewise_core::decoded::grpc::BoundedCodec;
use scalewise_core::decoded::DecodeError;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::codegen::http::{self, Request, Response};
use tonic::server::{Grpc, UnaryService};
use tonic::Status;

use crate::app::{now_ms, App};
use crate::ingest::IngestError;

/// The method's path, as every OTLP exporter sends it.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// The OTLP/gRPC service, served by [`super::conn::serve`] like the HTTP router (HTTP/2, TLS
/// when configured, the same connection limits).
#[derive(Clone)]
pub struct Service {
    app: Arc<App>,
}

pub fn service(app: Arc<App>) -> Service {
    Service { app }
}

fn status_response(status: &Status) -> Response<tonic::body::Body> {
    status.clone().into_http()
}

impl<B> tower::Service<Request<B>> for Service
where
    B: tonic::codegen::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let app = self.app.clone();
        Box::pin(async move {
            if req.uri().path() != EXPORT_PATH {
                return Ok(status_response(&Status::unimplemented(format!(
                    "unknown method {}: this receiver serves {EXPORT_PATH}",
                    req.uri().path().chars().take(120).collect::<String>()
                ))));
            }
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if !app.tokens().allows(auth) {
                app.telemetry
                    .requests_rejected
                    .with_label_values(&["unauthorized"])
                    .inc();
                return Ok(status_response(&Status::unauthenticated(
                    "missing or wrong bearer token",
                )));
            }
            let limits = &app.config.limits;
            let counted = app.clone();
            let codec: BoundedCodec<ExportMetricsServiceRequest, ExportMetricsServiceResponse, _> =
                BoundedCodec::new(limits.max_decoded_bytes, move |e: &DecodeError| {
                    // Under the reasons OTLP/HTTP counts (`decode` for any malformed message).
                    let reason = IngestError::from(e.clone()).reason();
                    counted
                        .telemetry
                        .requests_rejected
                        .with_label_values(&[reason])
                        .inc();
                });
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = Grpc::new(codec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(limits.max_decompressed_bytes), None);
            Ok(grpc.unary(Export { app }, req).await)
        })
    }
}

struct Export {
    app: Arc<App>,
}

impl UnaryService<ExportMetricsServiceRequest> for Export {
    type Response = ExportMetricsServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<ExportMetricsServiceRequest>) -> Self::Future {
        let resp = self.app.ingest(request.get_ref(), "grpc", now_ms());
        std::future::ready(Ok(tonic::Response::new(resp)))
    }
}
