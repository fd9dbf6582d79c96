//! OTLP/gRPC: `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`, the same ingest
//! as OTLP/HTTP, with the same limits (tonic bounds the decoded message) and tokens.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{now_ms, App};

pub struct Receiver {
    app: Arc<App>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        if !self.app.tokens().allows(auth.as_deref()) {
            self.app
                .telemetry
                .requests_rejected
                .with_label_values(&["unauthorized"])
                .inc();
            return Err(Status::unauthenticated("missing or wrong bearer token"));
        }
        let resp = self.app.ingest(request.get_ref(), "grpc", now_ms());
        Ok(Response::new(resp))
    }
}

/// The OTLP/gRPC service, served by [`super::conn::serve`] like the HTTP router (HTTP/2, TLS
/// when configured, the same connection limits).
pub fn service(app: Arc<App>) -> MetricsServiceServer<Receiver> {
    let limit = app.config.limits.max_decompressed_bytes;
    MetricsServiceServer::new(Receiver { app })
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
}
