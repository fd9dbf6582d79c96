//! GC pauses of managed runtimes, from whatever the runtime exposes without code changes.
//!
//! Every source yields cumulative readings ([`GcReading`]); the session diffs successive readings
//! (a smaller value is a restart or a torn read: rebased, never negative) and weights pause time
//! by the requests in flight, since a stop-the-world pause stalls every one of them.
//!
//! Sources, best first: the JVM's hsperfdata file ([`hsperf`], zero instrumentation), the
//! service's Prometheus endpoint ([`prom`]), Go's expvar ([`expvar`], opt-in: it stops the world).

pub mod expvar;
pub mod hsperf;
pub mod otlp;
pub mod prom;

use std::path::Path;
use std::time::Duration;

use thiserror::Error;

/// What a reading's time means; not every runtime exposes pauses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcSemantics {
    /// Stop-the-world pause time: stalls every request in flight.
    Pauses,
    /// Total collector time, pauses and concurrent work together (an upper bound on pauses).
    TotalGcTime,
    /// Only collection counts: the share is unknown, and said to be.
    CountsOnly,
}

/// One cumulative reading of a process's GC.
#[derive(Clone, Debug, PartialEq)]
pub struct GcReading {
    pub source: &'static str,
    pub semantics: GcSemantics,
    /// Cumulative stop-the-world seconds.
    pub pause_s: f64,
    pub collections: u64,
    /// Per collector: name, invocations, cumulative seconds.
    pub collectors: Vec<(String, u64, f64)>,
}

#[derive(Debug, Error)]
pub enum GcError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    #[error("{path}: refused: {why}")]
    Unsafe { path: String, why: &'static str },
    #[error("{what}: malformed: {why}")]
    Malformed { what: String, why: String },
    #[error("{url}: {why}")]
    Http { url: String, why: String },
}

impl GcError {
    /// A bounded label value for `scalewise_agent_sampler_errors_total{sampler="gc",kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            GcError::NotFound(_) => "not_found",
            GcError::PermissionDenied(_) => "permission_denied",
            GcError::Unsafe { .. } => "unsafe",
            GcError::Malformed { .. } => "malformed",
            GcError::Http { .. } => "http",
        }
    }
}

/// A source of cumulative GC readings for one process.
pub trait GcSource: Send {
    fn read(&mut self) -> Result<GcReading, GcError>;
    /// The last read of a window: sources that rate-limit themselves read anyway, once, so a
    /// window shorter than their interval still has two readings.
    fn read_final(&mut self) -> Result<GcReading, GcError> {
        self.read()
    }
    fn describe(&self) -> String;
}

#[derive(Clone, Debug)]
pub struct GcOptions {
    /// The service's Prometheus endpoint.
    pub metrics_url: Option<String>,
    /// A Go service's `/debug/vars` (opt-in).
    pub expvar_url: Option<String>,
    /// expvar's `ReadMemStats` stops the world: never read it more often than this.
    pub expvar_min_interval: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            metrics_url: None,
            expvar_url: None,
            expvar_min_interval: Duration::from_secs(30),
        }
    }
}

/// Picks the best source for a pid: hsperfdata if the process is a JVM with a usable file, else
/// the given metrics URL, else expvar if opted in. Returns notes for the evidence.
pub fn detect(
    proc_root: &Path,
    pid: u32,
    opts: &GcOptions,
) -> (Option<Box<dyn GcSource>>, Vec<String>) {
    let mut notes = Vec::new();
    match hsperf::HsperfSource::locate(proc_root, pid) {
        Ok(Some(src)) => {
            // A first read proves the file is usable before it is chosen.
            let mut src = src;
            match src.read() {
                Ok(_) => return (Some(Box::new(src)), notes),
                Err(e) => notes.push(format!("JVM hsperfdata unusable ({e}); GC pauses unknown")),
            }
        }
        Ok(None) => {}
        Err(hsperf::LocateError::JvmWithoutFile) => notes.push(
            "JVM without an hsperfdata file (-XX:+PerfDisableSharedMem?): GC pauses from --metrics-url if given".to_string(),
        ),
        Err(hsperf::LocateError::Gc(e)) => notes.push(format!("JVM hsperfdata unusable ({e})")),
    }
    if let Some(url) = &opts.metrics_url {
        return (Some(Box::new(prom::PromSource::new(url.clone()))), notes);
    }
    if let Some(url) = &opts.expvar_url {
        return (
            Some(Box::new(expvar::ExpvarSource::new(
                url.clone(),
                opts.expvar_min_interval,
            ))),
            notes,
        );
    }
    (None, notes)
}

/// A blocking HTTP GET of the service's own metrics endpoint (loopback or pod-local), bounded in
/// time and body size. The client is the one the OTLP exporter brings (reqwest), kept for the
/// process's life; it decodes gzip and chunked bodies, and speaks HTTPS (rustls). Call it from a plain thread, never from
/// inside an async runtime (the blocking client runs its own).
pub fn http_get(url: &str, timeout: Duration, max_body: usize) -> Result<Vec<u8>, GcError> {
    use std::io::Read;
    static CLIENT: std::sync::OnceLock<Result<reqwest::blocking::Client, String>> =
        std::sync::OnceLock::new();
    let err = |why: String| GcError::Http {
        url: url.to_string(),
        why,
    };
    let client = CLIENT
        .get_or_init(|| {
            crate::tls::init();
            let builder = || {
                reqwest::blocking::Client::builder()
                    .no_proxy()
                    .connect_timeout(Duration::from_secs(2))
                    .redirect(reqwest::redirect::Policy::limited(3))
            };
            // Without a system trust store (a minimal image), plain HTTP still works; an HTTPS
            // endpoint then fails its handshake with that reason.
            builder()
                .build()
                .or_else(|_| builder().tls_certs_only(Vec::new()).build())
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| err(e.clone()))?;
    let resp = client
        .get(url)
        .header("accept", "text/plain")
        .timeout(timeout)
        .send()
        .map_err(|e| err(e.without_url().to_string()))?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Err(err(format!("HTTP status {}", status.as_u16())));
    }
    let mut body = Vec::new();
    resp.take(max_body as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| err(e.to_string()))?;
    if body.len() > max_body {
        return Err(err(format!("body larger than {max_body} bytes")));
    }
    Ok(body)
}
