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

use super::{now_ms, App, ServerError};

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

/// Serves OTLP/gRPC on `listener` until `shutdown` resolves.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let limit = app.config.limits.max_decompressed_bytes;
    let svc = MetricsServiceServer::new(Receiver { app })
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ServerError::Serve(e.to_string()))
}
