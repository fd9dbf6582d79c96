//! The collector's state ([`App`]): instances' snapshots in memory and in SQLite, windows over
//! them, and the verdicts the REST routes, `/metrics` and the page serve. [`serve`] runs the HTTP
//! and gRPC listeners and the flusher until shutdown.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use serde::Serialize;
use thiserror::Error;

use crate::config::Config;
use crate::ingest::Resource;
use crate::rest::router;
use crate::sqlite::{Db, StoreError};
use crate::store::{Memory, StoredMeta};
use crate::window::Snapshot;
use crate::{auth, config, conn, grpc, ingest, metrics, tls, window};
use scalewise_core::engine::{self, Breakdown, Diagnosis, Thresholds};
use scalewise_core::Budget;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("token file {path}: {source}")]
    TokenFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("token file {0} holds no token")]
    NoToken(std::path::PathBuf),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(String),
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn unix(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// One instance as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub resource: Resource,
    pub last_seen_unix: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<f64>,
}

/// `GET /api/v1/services/{service}`: the diagnose contract's service object, field for field,
/// plus the instances and the window's bounds.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    #[serde(flatten)]
    pub diagnosis: Diagnosis,
    /// Instances that contributed to the window.
    pub instances: usize,
    pub instance_list: Vec<InstanceView>,
    pub window_start_unix: f64,
    pub window_end_unix: f64,
    pub last_seen_unix: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One row of `GET /api/v1/services`.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceSummary {
    pub service: String,
    pub verdict: engine::Verdict,
    pub confidence: f64,
    pub breakdown: Breakdown,
    pub instances: usize,
    pub last_seen_unix: f64,
    pub window_s: f64,
    pub requests: engine::Requests,
    pub cpu: engine::CpuUse,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One step of `GET /api/v1/services/{service}/history`.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryPoint {
    pub start_unix: f64,
    pub end_unix: f64,
    pub verdict: engine::Verdict,
    pub confidence: f64,
    pub breakdown: Breakdown,
    pub requests_per_s: f64,
    pub mean_latency_ms: Option<f64>,
    pub instances: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct History {
    pub service: String,
    pub window_start_unix: f64,
    pub window_end_unix: f64,
    pub step_s: f64,
    pub points: Vec<HistoryPoint>,
}

/// Memory keeps every snapshot of the last two minutes; older ones are thinned to
/// `memory_resolution`. Single-service answers read SQLite (full resolution for an hour) for
/// anything older, so only the fleet-wide summaries see thinned edges.
const FULL_RESOLUTION_MS: i64 = 120_000;

/// An instance's snapshots for a query, with what they mean.
type Series = Vec<(StoredMeta, Vec<Snapshot>)>;

/// The collector's state, shared by every handler.
pub struct App {
    pub config: Config,
    pub thresholds: Thresholds,
    mem: Mutex<Memory>,
    db: Mutex<Db>,
    pub telemetry: metrics::Telemetry,
    tokens: auth::Tokens,
    /// Both listeners serve TLS with this when `tls_cert` and `tls_key` are set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    ready: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl App {
    /// Opens the store in `config.data_dir` and loads the recent snapshots into memory.
    pub fn open(config: Config) -> Result<Arc<App>, ServerError> {
        config.validate()?;
        let tokens = match &config.token_file {
            Some(path) => auth::Tokens::load(path)?,
            None => auth::Tokens::none(),
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let (db, aside) = Db::open_or_set_aside(&config.data_dir)?;
        if let Some(aside) = &aside {
            tracing::error!(
                moved_to = %aside.display(),
                "the SQLite store is corrupt: set aside, starting with an empty one (its history is not served)"
            );
        }
        let now = now_ms();
        let mut mem = Memory::default();
        for (service, instance, meta, snaps) in db.load_recent(
            now - config.instance_ttl.ms(),
            now - config.memory_retention.ms() - config.metrics_window.ms(),
        )? {
            mem.restore(&service, &instance, meta, snaps);
        }
        let app = Arc::new(App {
            thresholds: Thresholds::default(),
            mem: Mutex::new(mem),
            db: Mutex::new(db),
            telemetry: metrics::Telemetry::new(),
            tokens,
            tls,
            ready: AtomicBool::new(true),
            config,
        });
        if aside.is_some() {
            app.telemetry.sqlite_corrupt.inc();
        }
        app.update_gauges();
        Ok(app)
    }

    pub fn tokens(&self) -> &auth::Tokens {
        &self.tokens
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn update_gauges(&self) {
        let mem = lock(&self.mem);
        self.telemetry.services.set(mem.services.len() as i64);
        self.telemetry.instances.set(mem.instance_count() as i64);
    }

    /// Takes an OTLP export in and answers as OTLP says (partial success when points were
    /// refused). `transport` labels the counters (`http`, `grpc`).
    pub fn ingest(
        &self,
        req: &ExportMetricsServiceRequest,
        transport: &'static str,
        now_ms: i64,
    ) -> ExportMetricsServiceResponse {
        let (reports, mut rejected, total) = ingest::reports(req, now_ms, &self.config.limits);
        let t = &self.telemetry;
        t.points_received
            .with_label_values(&[transport])
            .inc_by(total);
        let mut cut = 0;
        {
            let mut mem = lock(&self.mem);
            for r in reports {
                cut += r.cut_labels;
                let out = mem.ingest(r, &self.config.limits);
                for (limit, n) in out.overflow {
                    t.overflow.with_label_values(&[limit.label()]).inc_by(n);
                    rejected.add("overflow", n, || {
                        format!("{} limit reached: points dropped", limit.label())
                    });
                }
                if out.out_of_order > 0 {
                    rejected.add("out_of_order", out.out_of_order, || {
                        "counters larger than a later export's of the same start: a clock that jumped back?".to_string()
                    });
                }
            }
            t.services.set(mem.services.len() as i64);
            t.instances.set(mem.instance_count() as i64);
            t.pending.set(mem.pending.len() as i64);
        }
        if cut > 0 {
            t.overflow.with_label_values(&["label_length"]).inc_by(cut);
        }
        for (reason, n) in &rejected.by_reason {
            t.points_rejected.with_label_values(&[reason]).inc_by(*n);
        }
        let partial_success = (rejected.total() > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(rejected.total()).unwrap_or(i64::MAX),
            error_message: rejected.messages.join("; "),
        });
        ExportMetricsServiceResponse { partial_success }
    }

    /// Writes what arrived since the last flush to SQLite (one transaction). A failure (a full
    /// disk, an I/O error) is counted and what could not be written is kept for the next flush;
    /// a store file removed under the running collector is created anew and given what memory
    /// holds.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let result = self.write_pending();
        if let Err(e) = &result {
            self.telemetry
                .sqlite_write_errors
                .with_label_values(&[e.kind()])
                .inc();
        }
        result
    }

    /// The store went corrupt under the running collector: set it aside, open a new one, and
    /// mark what memory holds to be written into it at the next flush.
    fn set_aside_corrupt(&self) {
        let dir = self.config.data_dir.clone();
        let mut db = lock(&self.db);
        // The open connection holds the old file; a new `Db` replaces it once set aside.
        match Db::open_or_set_aside(&dir) {
            Ok((fresh, aside)) => {
                *db = fresh;
                drop(db);
                self.telemetry.sqlite_corrupt.inc();
                tracing::error!(
                    moved_to = %aside.map(|a| a.display().to_string()).unwrap_or_default(),
                    "the SQLite store went corrupt: set aside, writing what memory holds (the last {}) into a new one",
                    self.config.memory_retention
                );
                lock(&self.mem).pend_all();
            }
            Err(e) => {
                tracing::error!(error = %e, "the SQLite store is corrupt and cannot be replaced")
            }
        }
    }

    fn write_pending(&self) -> Result<usize, StoreError> {
        if lock(&self.db).reopen_if_removed()? {
            self.telemetry.sqlite_recreated.inc();
            tracing::warn!(
                data_dir = %self.config.data_dir.display(),
                "the SQLite store was removed while running: created a new one and writing into it what memory holds (the last {})",
                self.config.memory_retention
            );
            lock(&self.mem).pend_all();
        }
        let (snaps, metas) = {
            let mut mem = lock(&self.mem);
            let snaps = std::mem::take(&mut mem.pending);
            let dirty = std::mem::take(&mut mem.dirty);
            let metas: Vec<(String, String, StoredMeta)> = dirty
                .into_iter()
                .filter_map(|(s, i)| {
                    let meta = mem.services.get(&s)?.instances.get(&i)?.meta.clone();
                    Some((s, i, meta))
                })
                .collect();
            (snaps, metas)
        };
        if snaps.is_empty() && metas.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let result = lock(&self.db).write(&snaps, &metas);
        self.telemetry
            .sqlite_write
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            if e.kind() == "corrupt" {
                self.set_aside_corrupt();
            }
        }
        if let Err(e) = result {
            // Keep what could not be written for the next flush.
            let mut mem = lock(&self.mem);
            let mut again = snaps;
            again.append(&mut mem.pending);
            // A disk full for hours: keep the newest, drop and count the oldest.
            let over = again
                .len()
                .saturating_sub(self.config.limits.max_pending_snapshots);
            if over > 0 {
                again.drain(..over);
                self.telemetry.pending_dropped.inc_by(over as u64);
                tracing::error!(
                    dropped = over,
                    "SQLite writes have failed for longer than max_pending_snapshots can hold: the oldest snapshots will not be stored (memory still serves the last {})",
                    self.config.memory_retention
                );
            }
            self.telemetry.pending.set(again.len() as i64);
            mem.pending = again;
            for (s, i, _) in metas {
                mem.dirty.insert((s, i));
            }
            return Err(e);
        }
        // Only now is what was pending durable.
        let left = lock(&self.mem).pending.len();
        self.telemetry.pending.set(left as i64);
        Ok(snaps.len())
    }

    /// Forgets old snapshots from memory and thins the store.
    pub fn maintain(&self, now_ms: i64) -> Result<usize, StoreError> {
        {
            let mut mem = lock(&self.mem);
            mem.prune(
                now_ms - self.config.memory_retention.ms(),
                now_ms - self.config.instance_ttl.ms(),
                now_ms - FULL_RESOLUTION_MS,
                self.config.memory_resolution.ms(),
            );
        }
        self.update_gauges();
        lock(&self.db).downsample(now_ms, &self.config.retention)
    }

    /// How far back SQLite is read before a window starting at `from_ms`, for its baseline
    /// snapshot: the store's resolution at that age, plus five minutes of export gaps.
    fn lookback_ms(&self, from_ms: i64, now_ms: i64) -> i64 {
        let age = now_ms - from_ms;
        let resolution = self
            .config
            .retention
            .tiers
            .iter()
            .filter(|t| t.older_than.ms() <= age + 300_000)
            .map(|t| t.resolution.ms())
            .max()
            .unwrap_or(0);
        resolution + 300_000
    }

    /// The snapshots of `service` a window `(from_ms, to_ms]` needs; `None` if the service is
    /// unknown.
    fn series(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        exact: bool,
    ) -> Option<Series> {
        let mut by_instance: BTreeMap<String, (StoredMeta, Vec<Snapshot>)> = BTreeMap::new();
        {
            let mem = lock(&self.mem);
            if let Some(svc) = mem.services.get(service) {
                for (id, inst) in &svc.instances {
                    let first = inst.snaps.partition_point(|s| s.t_ms <= from_ms);
                    let last = inst.snaps.partition_point(|s| s.t_ms <= to_ms);
                    let snaps = inst.snaps[first.saturating_sub(1)..last.max(first)].to_vec();
                    by_instance.insert(id.clone(), (inst.meta.clone(), snaps));
                }
            }
        }
        let memory_from = if exact {
            now_ms - FULL_RESOLUTION_MS
        } else {
            now_ms - self.config.memory_retention.ms()
        };
        if from_ms < memory_from {
            let stored = lock(&self.db)
                .service_series(service, from_ms - self.lookback_ms(from_ms, now_ms), to_ms)
                .unwrap_or_else(|e| {
                    tracing::warn!(%e, "reading history");
                    Vec::new()
                });
            for (_, id, meta, snaps) in stored {
                let entry = by_instance.entry(id).or_insert_with(|| (meta, Vec::new()));
                let mut merged: BTreeMap<i64, Snapshot> =
                    snaps.into_iter().map(|s| (s.t_ms, s)).collect();
                for s in std::mem::take(&mut entry.1) {
                    merged.insert(s.t_ms, s);
                }
                entry.1 = merged.into_values().collect();
            }
        }
        if by_instance.is_empty() {
            return None;
        }
        Some(by_instance.into_values().collect())
    }

    fn diagnose_series(
        &self,
        service: &str,
        series: &Series,
        from_ms: i64,
        to_ms: i64,
    ) -> (Diagnosis, Vec<InstanceView>) {
        let (budget, counted) = window::service_window(
            series
                .iter()
                .map(|(meta, snaps)| (snaps.as_slice(), &meta.counters)),
            from_ms,
            to_ms,
        );
        let mut pids = Vec::new();
        let mut views = Vec::new();
        for meta in counted
            .iter()
            .filter_map(|&i| series.get(i).map(|(m, _)| m))
        {
            pids.extend(meta.resource.pid);
            views.push(InstanceView {
                resource: meta.resource.clone(),
                last_seen_unix: unix(meta.last_seen_ms),
                rss_bytes: meta.rss_bytes,
            });
        }
        pids.sort_unstable();
        pids.dedup();
        let mut diagnosis = engine::diagnose(service, &pids, &budget, &self.thresholds);
        // What the report needs beyond the budget: the runtime the agents detected (resource
        // attributes) and the mean resident memory of an instance.
        diagnosis.runtime = views.iter().find_map(|v| {
            Some(engine::Runtime {
                name: v.resource.runtime.clone()?,
                version: v.resource.runtime_version.clone(),
                evidence: "process.runtime.* resource attributes".to_string(),
            })
        });
        let rss: Vec<f64> = views.iter().filter_map(|v| v.rss_bytes).collect();
        if !rss.is_empty() {
            diagnosis.memory_bytes = Some((rss.iter().sum::<f64>() / rss.len() as f64) as u64);
        }
        (diagnosis, views)
    }

    /// The budget of `service` over the last `window_ms` before `now_ms`: what its diagnosis is
    /// computed from. `None` if the service is unknown.
    pub fn service_budget(&self, service: &str, window_ms: i64, now_ms: i64) -> Option<Budget> {
        let from = now_ms - window_ms;
        let series = self.series(service, from, now_ms, now_ms, true)?;
        let instances = series
            .iter()
            .map(|(meta, snaps)| (snaps.as_slice(), &meta.counters));
        Some(window::service_window(instances, from, now_ms).0)
    }

    /// The diagnosis of `service` over the last `window_ms` before `now_ms`.
    pub fn service_view(&self, service: &str, window_ms: i64, now_ms: i64) -> Option<ServiceView> {
        self.view(service, window_ms, now_ms, true)
    }

    fn view(&self, service: &str, window_ms: i64, now_ms: i64, exact: bool) -> Option<ServiceView> {
        let from = now_ms - window_ms;
        let series = self.series(service, from, now_ms, now_ms, exact)?;
        let (diagnosis, views) = self.diagnose_series(service, &series, from, now_ms);
        let last_seen = series
            .iter()
            .map(|(m, _)| m.last_seen_ms)
            .max()
            .unwrap_or(0);
        let namespace = series
            .iter()
            .find_map(|(m, _)| m.resource.namespace.clone());
        Some(ServiceView {
            diagnosis,
            instances: views.len(),
            instance_list: views,
            window_start_unix: unix(from),
            window_end_unix: unix(now_ms),
            last_seen_unix: unix(last_seen),
            namespace,
        })
    }

    /// Every service known in memory, diagnosed over `window_ms`.
    pub fn summaries(&self, window_ms: i64, now_ms: i64) -> Vec<(ServiceView, ServiceSummary)> {
        let names: Vec<String> = lock(&self.mem).services.keys().cloned().collect();
        names
            .into_iter()
            .filter_map(|name| {
                let v = self.view(&name, window_ms, now_ms, false)?;
                let s = ServiceSummary {
                    service: name,
                    verdict: v.diagnosis.verdict,
                    confidence: v.diagnosis.confidence,
                    breakdown: v.diagnosis.breakdown,
                    instances: v.instances,
                    last_seen_unix: v.last_seen_unix,
                    window_s: v.diagnosis.window_s,
                    requests: v.diagnosis.requests.clone(),
                    cpu: v.diagnosis.cpu,
                    namespace: v.namespace.clone(),
                };
                Some((v, s))
            })
            .collect()
    }

    /// Verdict, confidence and shares per `step_ms` over the last `window_ms`.
    pub fn history(
        &self,
        service: &str,
        window_ms: i64,
        step_ms: i64,
        now_ms: i64,
    ) -> Option<History> {
        let from = now_ms - window_ms;
        let series = self.series(service, from, now_ms, now_ms, true)?;
        let steps = (window_ms / step_ms.max(1)).clamp(1, 2000);
        let mut points = Vec::new();
        for k in 0..steps {
            let start = from + k * step_ms;
            let end = (start + step_ms).min(now_ms);
            let (d, views) = self.diagnose_series(service, &series, start, end);
            points.push(HistoryPoint {
                start_unix: unix(start),
                end_unix: unix(end),
                verdict: d.verdict,
                confidence: d.confidence,
                breakdown: d.breakdown,
                requests_per_s: d.requests.rate_per_s,
                mean_latency_ms: d.requests.mean_latency_ms,
                instances: views.len(),
            });
        }
        Some(History {
            service: service.to_string(),
            window_start_unix: unix(from),
            window_end_unix: unix(now_ms),
            step_s: step_ms as f64 / 1000.0,
            points,
        })
    }

    /// Per instance, the latest snapshot and what it means (for the re-exported counters).
    pub fn latest(&self) -> Vec<(String, StoredMeta, Snapshot)> {
        let mem = lock(&self.mem);
        let mut out = Vec::new();
        for (name, svc) in &mem.services {
            for inst in svc.instances.values() {
                if let Some(s) = inst.snaps.last() {
                    out.push((name.clone(), inst.meta.clone(), s.clone()));
                }
            }
        }
        out
    }
}

/// Runs the collector until `shutdown` resolves: HTTP (and gRPC when configured), the flusher
/// and the maintenance loop; flushes once more on the way out.
pub async fn serve(
    app: Arc<App>,
    http: tokio::net::TcpListener,
    grpc: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flusher = {
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(app.config.flush_interval.std());
            let mut last_maintain = Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let a = app.clone();
                let maintain = last_maintain.elapsed().as_secs() >= 60;
                if maintain {
                    last_maintain = Instant::now();
                }
                let r = tokio::task::spawn_blocking(move || {
                    let flushed = a.flush();
                    if maintain {
                        if let Err(e) = a.maintain(now_ms()) {
                            tracing::warn!(%e, "maintenance");
                        }
                    }
                    flushed
                })
                .await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(%e, "flush to SQLite failed; will retry");
                }
            }
        })
    };
    let transport = conn::Transport::new(&app);
    let grpc_task = grpc.map(|listener| {
        tokio::spawn(conn::serve(
            app.clone(),
            transport.clone(),
            listener,
            conn::Kind::Grpc,
            grpc::service(app.clone()),
            stop_rx.clone(),
        ))
    });
    let http_handle = tokio::spawn(conn::serve(
        app.clone(),
        transport,
        http,
        conn::Kind::Http,
        router(app.clone()),
        stop_rx.clone(),
    ));
    shutdown.await;
    app.ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = http_handle.await;
    if let Some(g) = grpc_task {
        let _ = g.await;
    }
    let _ = flusher.await;
    let a = app.clone();
    tokio::task::spawn_blocking(move || a.flush())
        .await
        .map_err(|e| ServerError::Serve(e.to_string()))??;
    Ok(())
}
