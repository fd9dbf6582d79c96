//! OTLP export of every instance's cumulative budget, with the OpenTelemetry SDK.
//!
//! One `SdkMeterProvider` per service instance: the SDK ties the resource (`service.name`,
//! `service.instance.id`, ...) to the provider, and the instance's life to the provider's gives
//! the right `start_time_unix_nano` for free (the SDK stamps a cumulative Sum with the time its
//! aggregation began, i.e. when the instance started counting). Each provider has a
//! `ManualReader` and observable instruments whose callbacks read the instance's latest
//! snapshot through [`wire::budget_points`]; one shared OTLP/HTTP exporter (protobuf, gzip, with
//! the exporter's own retry and backoff) sends every instance at each tick, concurrently. A
//! `PeriodicReader` per instance would cost a thread per instance and lose the agent's control
//! of the clock (the last export on shutdown, the snapshot taken just before).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::Resource;
use scalewise_core::wire::{self, WirePoint};

use super::{InstanceMeta, InstanceView, RunError, Shared};

/// Exports of an ended instance that may fail before it is dropped anyway (memory stays bounded
/// when the collector is away for good).
const MAX_FINAL_ATTEMPTS: u32 = 30;
/// At most one failure log line per this long (the count goes in the line).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A `ManualReader` the exporter keeps a handle on after giving it to the provider.
#[derive(Clone, Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

#[derive(Default)]
struct Values {
    points: Vec<WirePoint>,
    rss_bytes: f64,
}

struct Entry {
    provider: SdkMeterProvider,
    reader: SharedReader,
    values: Arc<Mutex<Values>>,
    failed_final: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The resource attributes of an instance (docs/metrics.md).
pub fn resource_attributes(meta: &InstanceMeta) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("service.name", meta.service.name.clone()),
        KeyValue::new("service.instance.id", meta.id.clone()),
        KeyValue::new("host.name", meta.host.clone()),
        KeyValue::new(
            "process.pid",
            meta.pids.first().copied().unwrap_or_default() as i64,
        ),
    ];
    for (k, v) in &meta.service.attrs {
        attrs.push(KeyValue::new(*k, v.clone()));
    }
    if let Some(r) = &meta.runtime {
        attrs.push(KeyValue::new("process.runtime.name", r.name.clone()));
        if let Some(v) = &r.version {
            attrs.push(KeyValue::new("process.runtime.version", v.clone()));
        }
    }
    attrs
}

fn entry(meta: &InstanceMeta) -> Entry {
    let reader = SharedReader(Arc::new(
        ManualReader::builder()
            .with_temporality(Temporality::Cumulative)
            .build(),
    ));
    let provider = SdkMeterProvider::builder()
        .with_resource(
            Resource::builder_empty()
                .with_attributes(resource_attributes(meta))
                .build(),
        )
        .with_reader(reader.clone())
        .build();
    let meter = provider.meter("scalewise-agent");
    let values: Arc<Mutex<Values>> = Arc::default();
    for &(name, unit, is_sum) in wire::METRICS {
        let v = values.clone();
        let observe = move |obs: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
            let v = lock(&v);
            if name == wire::MEMORY_RSS {
                obs.observe(v.rss_bytes, &[]);
                return;
            }
            for p in v.points.iter().filter(|p| p.metric == name) {
                let attrs: Vec<KeyValue> = p
                    .attrs
                    .iter()
                    .map(|(k, val)| KeyValue::new(*k, val.clone()))
                    .collect();
                obs.observe(p.value + 0.0, &attrs); // -0.0 (an empty sum) as 0
            }
        };
        // The instruments stay registered for the provider's life; the handles are not needed.
        if is_sum {
            let _ = meter
                .f64_observable_counter(name)
                .with_unit(unit)
                .with_callback(observe)
                .build();
        } else {
            let _ = meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_callback(observe)
                .build();
        }
    }
    Entry {
        provider,
        reader,
        values,
        failed_final: 0,
    }
}

/// The exporter's HTTP client: reqwest on rustls (`ring`). Plain HTTP needs no trust store, so
/// none is loaded (a minimal image has none). Over HTTPS it trusts the system store and, for a
/// self-signed collector, the certificates of `ca_file` too; with `ca_file` and no system store,
/// those certificates alone; with neither, it says what to give. The timeout is the client's: the
/// exporter's own applies only to a client it builds itself.
pub fn http_client(
    endpoint: &str,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client, RunError> {
    crate::tls::init();
    let mut certs = Vec::new();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| RunError::CaRead {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| RunError::CaParse {
            path: path.to_path_buf(),
            message,
        };
        certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block".to_string()));
        }
    }
    let builder = || reqwest::Client::builder().timeout(timeout);
    let exporter_error = |e: reqwest::Error| RunError::Exporter(format!("HTTP client: {e}"));
    if !endpoint.starts_with("https://") {
        return builder()
            .tls_certs_only(certs)
            .build()
            .map_err(exporter_error);
    }
    match builder().tls_certs_merge(certs.clone()).build() {
        Ok(client) => Ok(client),
        // The system store could not be loaded: the given CA alone, or say what is missing.
        Err(_) if !certs.is_empty() => builder()
            .tls_certs_only(certs)
            .build()
            .map_err(exporter_error),
        Err(e) => Err(RunError::NoTrustStore(
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string()),
        )),
    }
}

pub struct Exporter {
    exporter: Arc<opentelemetry_otlp::MetricExporter>,
    entries: HashMap<String, Entry>,
    shared: Arc<Shared>,
    endpoint: String,
    last_log: Option<Instant>,
    failures_since_log: u64,
}

impl Exporter {
    pub fn new(
        base: &str,
        token_file: Option<&std::path::Path>,
        ca_file: Option<&std::path::Path>,
        shared: Arc<Shared>,
    ) -> Result<Exporter, RunError> {
        let endpoint = format!("{}/v1/metrics", base.trim_end_matches('/'));
        let mut headers = HashMap::new();
        if let Some(path) = token_file {
            let token = std::fs::read_to_string(path).map_err(|source| RunError::Token {
                path: path.to_path_buf(),
                source,
            })?;
            let token = token.trim();
            if token.is_empty() {
                return Err(RunError::EmptyToken(path.to_path_buf()));
            }
            headers.insert("authorization".to_string(), format!("Bearer {token}"));
        }
        let timeout = Duration::from_secs(10);
        let client = http_client(&endpoint, ca_file, timeout)?;
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_compression(opentelemetry_otlp::Compression::Gzip)
            .with_timeout(timeout)
            .with_headers(headers)
            .with_temporality(Temporality::Cumulative)
            .build()
            .map_err(|e| RunError::Exporter(e.to_string()))?;
        Ok(Exporter {
            exporter: Arc::new(exporter),
            entries: HashMap::new(),
            shared,
            endpoint,
            last_log: None,
            failures_since_log: 0,
        })
    }

    /// Exports the latest snapshot of every instance; forgets ended instances once their last
    /// export went through.
    pub async fn export_all(&mut self) {
        let views: Vec<(String, InstanceView)> = lock(&self.shared.instances)
            .iter()
            .map(|(id, v)| (id.clone(), v.clone()))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (id, view) in views {
            let e = self
                .entries
                .entry(id.clone())
                .or_insert_with(|| entry(&view.meta));
            {
                let mut v = lock(&e.values);
                v.points = wire::budget_points(&view.budget);
                v.rss_bytes = view.rss_bytes as f64;
            }
            let mut rm = ResourceMetrics::default();
            if let Err(err) = e.reader.collect(&mut rm) {
                tracing::debug!(instance = %id, error = %err, "collect failed");
                continue;
            }
            let exporter = self.exporter.clone();
            tasks.spawn(async move {
                let result = exporter.export(&rm).await;
                (id, view.ended, result)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((id, ended, result)) = done else {
                continue;
            };
            let mut forget = false;
            match result {
                Ok(()) => {
                    self.shared.exports_ok.fetch_add(1, Ordering::Relaxed);
                    let now_ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    self.shared
                        .last_export_unix_ms
                        .store(now_ms, Ordering::Relaxed);
                    if self.failures_since_log > 0 || self.last_log.is_some() {
                        tracing::info!(endpoint = %self.endpoint, "exports to the collector succeed again");
                        self.failures_since_log = 0;
                        self.last_log = None;
                    }
                    forget = ended;
                }
                Err(err) => {
                    self.shared.exports_failed.fetch_add(1, Ordering::Relaxed);
                    self.failures_since_log += 1;
                    if self.last_log.map_or(true, |t| t.elapsed() >= LOG_EVERY) {
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            failures = self.failures_since_log,
                            error = %err,
                            "export to the collector failed; sampling goes on and the next export carries the totals"
                        );
                        self.last_log = Some(Instant::now());
                        self.failures_since_log = 0;
                    }
                    if ended {
                        if let Some(e) = self.entries.get_mut(&id) {
                            e.failed_final += 1;
                            forget = e.failed_final >= MAX_FINAL_ATTEMPTS;
                        }
                    }
                }
            }
            if forget {
                if let Some(e) = self.entries.remove(&id) {
                    let _ = e.provider.shutdown();
                }
                lock(&self.shared.instances).remove(&id);
            }
        }
    }
}
