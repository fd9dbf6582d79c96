//! `scalewise-agent run`: the long-running sidecar / per-host agent.
//!
//! Data flow: [`discovery`] finds the target processes and groups them into service instances;
//! the [`sampler`] thread steps one [`crate::session::Session`] per instance (the code path of
//! `diagnose`) and, when asked, publishes budget snapshots into [`Shared`]; the async side exports
//! them as OTLP metrics ([`export`]) every interval and serves them to Prometheus ([`prom`]);
//! SIGTERM/SIGINT end every instance with one last export.

pub mod discovery;
pub mod export;
pub mod netns;
pub mod prom;
pub mod sampler;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use scalewise_core::Budget;
use thiserror::Error;

use crate::session::{ErrorCounts, SessionConfig};
use discovery::{Discovery, DiscoveryConfig, ProcId, Selector, ServiceInfo};

#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the collector token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the collector token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("cannot read the collector CA file {path}: {source}")]
    CaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the collector CA file {path} holds no PEM certificate: {message}")]
    CaParse { path: PathBuf, message: String },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("HTTPS to the collector needs CA certificates to trust, and this system has no trust store ({0}): give the collector's CA with --collector-ca FILE, or point SSL_CERT_FILE at a PEM bundle (Debian's is /etc/ssl/certs/ca-certificates.crt)")]
    NoTrustStore(String),
    #[error("cannot start the sampling thread: {0}")]
    Sampler(std::io::Error),
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub discovery: DiscoveryConfig,
    /// Sampling intervals, dependency names, GC options for every instance.
    pub session: SessionConfig,
    /// How often targets are re-evaluated.
    pub target_interval: Duration,
    /// The collector's base URL (`http://host:4318`); metrics go to `URL/v1/metrics`.
    pub collector: Option<String>,
    pub collector_token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for an `https://` collector, on top of the system roots.
    pub collector_ca: Option<PathBuf>,
    pub export_interval: Duration,
    pub metrics_listen: Option<SocketAddr>,
}

/// What identifies one service instance: fixed for its life.
#[derive(Debug)]
pub struct InstanceMeta {
    /// `service.instance.id`.
    pub id: String,
    pub service: ServiceInfo,
    pub pids: Vec<u32>,
    pub host: String,
    /// When the instance started counting: the OTLP `start_time_unix_nano`.
    pub start: SystemTime,
    pub members: Vec<ProcId>,
    /// The runtime detected at start (`process.runtime.*`), for the report.
    pub runtime: Option<scalewise_core::engine::Runtime>,
}

/// The latest snapshot of one instance.
#[derive(Clone, Debug)]
pub struct InstanceView {
    pub meta: Arc<InstanceMeta>,
    pub budget: Budget,
    pub rss_bytes: u64,
    pub errors: ErrorCounts,
    /// The instance is over: after its last export it is forgotten.
    pub ended: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub service: String,
    pub reason: &'static str,
}

/// State shared by the sampling thread, the exporter and the Prometheus endpoint. Bounded: one
/// latest snapshot per live instance (plus ended ones until their last export).
#[derive(Default)]
pub struct Shared {
    pub instances: Mutex<BTreeMap<String, InstanceView>>,
    /// Sampler errors of instances that ended (counters never go down).
    pub retired_errors: Mutex<ErrorCounts>,
    /// Services seen but not sampled, by `service@netns`.
    pub skipped: Mutex<BTreeMap<String, Skipped>>,
    /// Woken once the sampling thread has published fresh snapshots.
    pub snapshot_requests: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    pub samples: AtomicU64,
    pub exports_ok: AtomicU64,
    pub exports_failed: AtomicU64,
    pub last_export_unix_ms: AtomicU64,
    pub stop: AtomicBool,
    /// Targets were given as `--pid`.
    pub pinned_targets: bool,
    /// An exporter forgets ended instances after their last export; without one, the sampling
    /// thread does at its next publish.
    pub exporting: bool,
    /// Every `--pid` target is gone.
    pub targets_gone: AtomicBool,
    /// The first discovery round is done (`/readyz`).
    pub discovered: AtomicBool,
}

impl Shared {
    /// Asks the sampling thread for fresh snapshots and waits (at most `wait`) for them.
    pub async fn refresh(&self, wait: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.snapshot_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        let _ = tokio::time::timeout(wait, rx).await;
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn describe(sel: &Selector) -> String {
    match sel {
        Selector::Pids(p) => format!("pids {p:?}"),
        Selector::Process(r) => format!(
            "processes whose command line matches {}",
            r.iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        Selector::Listening => "every process with a listening TCP socket".to_string(),
    }
}

/// Runs until SIGTERM/SIGINT (or, with `--pid`, until every target has exited).
pub fn run(cfg: RunConfig) -> Result<(), RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(run_async(cfg))
}

async fn run_async(cfg: RunConfig) -> Result<(), RunError> {
    let shared = Arc::new(Shared {
        pinned_targets: matches!(cfg.discovery.selector, Selector::Pids(_)),
        exporting: cfg.collector.is_some(),
        ..Shared::default()
    });
    let exporter = match &cfg.collector {
        Some(url) => Some(export::Exporter::new(
            url,
            cfg.collector_token_file.as_deref(),
            cfg.collector_ca.as_deref(),
            shared.clone(),
        )?),
        None => None,
    };
    let listener = match cfg.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Listen { addr, source })?,
        ),
        None => None,
    };
    let host = host_name();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        targets = %describe(&cfg.discovery.selector),
        all_namespaces = cfg.discovery.all_namespaces,
        cap_sys_admin = netns::has_cap_sys_admin(),
        collector = cfg.collector.as_deref().unwrap_or("none"),
        export_interval_s = cfg.export_interval.as_secs_f64(),
        metrics_listen = ?cfg.metrics_listen,
        host = %host,
        "scalewise-agent run starting"
    );
    let sampler = sampler::Sampler {
        discovery: Discovery::new(cfg.discovery.clone()),
        template: cfg.session.clone(),
        target_interval: cfg.target_interval,
        host,
        shared: shared.clone(),
        warned_unreadable: Default::default(),
    };
    let sampler_thread = std::thread::Builder::new()
        .name("sw-sampler".into())
        .spawn(move || sampler.run())
        .map_err(RunError::Sampler)?;

    if let Some(listener) = listener {
        let app = prom::router(shared.clone());
        tracing::info!(addr = ?cfg.metrics_listen, "serving Prometheus metrics on /metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Runtime)?;
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.export_interval,
        cfg.export_interval,
    );
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gone_check = tokio::time::interval(Duration::from_millis(500));
    let mut exporter = exporter;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if let Some(ex) = exporter.as_mut() {
                    shared.refresh(Duration::from_secs(2)).await;
                    ex.export_all().await;
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: last export, then exit");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: last export, then exit");
                break;
            }
            _ = gone_check.tick() => {
                if shared.targets_gone.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    // The sampling thread publishes every instance as ended and returns within a round.
    let joined = tokio::task::spawn_blocking(move || sampler_thread.join());
    let _ = tokio::time::timeout(Duration::from_millis(800), joined).await;
    if let Some(ex) = exporter.as_mut() {
        if tokio::time::timeout(Duration::from_millis(1200), ex.export_all())
            .await
            .is_err()
        {
            tracing::warn!("last export did not finish in time");
        }
    }
    tracing::info!("scalewise-agent run stopped");
    Ok(())
}
