//! A real `scalewise-collector` process for end-to-end tests (free loopback port, its own data
//! dir, stopped by pid), an HTTP client for it, and a sender that plays an agent: a budget that
//! grows over time, exported as cumulative OTLP counters built from `wire::budget_points`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use scalewise_collector::otlp_request;
use scalewise_core::budget::{Budget, DependencyTime, RequestSource};

use crate::harness::{free_port, TempDir};
use crate::metrics;

pub fn collector_bin() -> PathBuf {
    crate::harness::agent_bin().with_file_name("scalewise-collector")
}

/// A running collector, killed by pid on drop.
pub struct Collector {
    pub port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    /// With TLS: the CA its certificate chains to (the collector is reached over HTTPS).
    ca: Option<PathBuf>,
    /// A command the collector is started through (another user, a mount namespace).
    wrapper: Vec<String>,
    /// The data dir when the harness made it: removed once `drop` has killed the collector.
    own_dir: Option<TempDir>,
}

impl Collector {
    /// Starts a collector on a free loopback port with a new data dir and a 1 s flush.
    pub fn start(extra: &[&str]) -> anyhow::Result<Collector> {
        let dir = TempDir::new("collector")?;
        let mut c = Collector::start_in(&dir, extra)?;
        c.own_dir = Some(dir);
        Ok(c)
    }

    /// Starts a collector on `data_dir` (reopening a store left by an earlier one).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Collector> {
        Collector::start_with(&[], data_dir, None, extra)
    }

    /// Starts a collector serving TLS with `cert` and `key`, reached over HTTPS trusting `ca`.
    pub fn start_tls(
        ca: &Path,
        cert: &Path,
        key: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Collector> {
        let mut args: Vec<&str> = vec!["--tls-cert", path_str(cert)?, "--tls-key", path_str(key)?];
        args.extend(extra);
        let dir = TempDir::new("collector")?;
        let mut c = Collector::start_with(&[], &dir, Some(ca), &args)?;
        c.own_dir = Some(dir);
        Ok(c)
    }

    /// Starts a collector on `data_dir` through `wrapper`, a command that execs its arguments
    /// (e.g. [`crate::harness::as_nobody`]), so the child's pid is the collector's.
    pub fn start_wrapped(
        wrapper: &[String],
        data_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Collector> {
        Collector::start_with(wrapper, data_dir, None, extra)
    }

    fn start_with(
        wrapper: &[String],
        data_dir: &Path,
        ca: Option<&Path>,
        extra: &[&str],
    ) -> anyhow::Result<Collector> {
        let mut c = Collector {
            port: free_port(),
            data_dir: data_dir.to_path_buf(),
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
            ca: ca.map(Path::to_path_buf),
            wrapper: wrapper.to_vec(),
            own_dir: None,
        };
        c.spawn()?;
        Ok(c)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = crate::harness::wrapped(&self.wrapper, collector_bin())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--flush-interval", "1s"])
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", collector_bin().display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!("collector exited at start: {st}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("collector did not become ready")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait: the collector flushes and exits.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        Ok(child.wait()?)
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts it again on the same port and data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn()
    }

    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        get_with(&format!("{}{path}", self.url()), None, self.ca.as_deref())
    }

    pub fn json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// POSTs an OTLP body; returns the status and the body.
    pub fn post(
        &self,
        content_type: &str,
        encoding: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        post(
            &format!("{}/v1/metrics", self.url()),
            content_type,
            encoding,
            body,
            None,
        )
    }

    /// Resident memory of the collector process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        crate::harness::rss_kib(self.pid()) * 1024
    }

    /// A value from `/metrics`: the first series of `name` with `labels` ([`metrics::value`]).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let (_, text) = self.get("/metrics")?;
        metrics::value(&text, name, labels)
            .ok_or_else(|| anyhow!("no {name} {labels:?} in /metrics"))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("not UTF-8: {}", p.display()))
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// A rustls client configuration trusting only the certificates of the PEM file `ca`.
pub fn client_tls(ca: &Path) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// An HTTP client for a collector: HTTPS trusting `ca` when given.
pub fn http_agent(ca: Option<&Path>) -> anyhow::Result<ureq::Agent> {
    let mut b = ureq::AgentBuilder::new().timeout(Duration::from_secs(60));
    if let Some(ca) = ca {
        b = b.tls_config(client_tls(ca)?);
    }
    Ok(b.build())
}

fn read(r: ureq::Response) -> anyhow::Result<(u16, Vec<u8>)> {
    let status = r.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut body)?;
    Ok((status, body))
}

pub fn get(url: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    get_with(url, token, None)
}

/// [`get`] over HTTPS trusting `ca` when given.
pub fn get_with(
    url: &str,
    token: Option<&str>,
    ca: Option<&Path>,
) -> anyhow::Result<(u16, String)> {
    let mut req = http_agent(ca)?.get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    let (s, b) = read(r)?;
    Ok((s, String::from_utf8_lossy(&b).into_owned()))
}

pub fn post(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: &[u8],
    token: Option<&str>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut req = agent().post(url).set("Content-Type", content_type);
    if let Some(e) = encoding {
        req = req.set("Content-Encoding", e);
    }
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    read(r)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// How a synthetic instance spends each second: request-seconds per component, requests,
/// capacity. Its budget after `t` seconds is `t` times these (a steady service).
#[derive(Clone, Debug)]
pub struct Profile {
    pub in_flight: f64,
    pub rate: f64,
    pub cpu: f64,
    pub cpu_wait: f64,
    pub downstream: Vec<(&'static str, &'static str, f64)>,
    pub capacity_cores: f64,
    pub busiest: f64,
}

impl Profile {
    /// Mostly waiting on PostgreSQL.
    pub fn dependency_bound() -> Profile {
        Profile {
            in_flight: 4.0,
            rate: 200.0,
            cpu: 0.4,
            cpu_wait: 0.1,
            downstream: vec![("127.0.0.1:5432", "postgresql", 3.0)],
            capacity_cores: 4.0,
            busiest: 0.2,
        }
    }

    /// Mostly on CPU, with capacity to spare.
    pub fn cpu_bound() -> Profile {
        Profile {
            in_flight: 2.0,
            rate: 500.0,
            cpu: 1.7,
            cpu_wait: 0.1,
            downstream: vec![],
            capacity_cores: 8.0,
            busiest: 0.5,
        }
    }

    /// The budget after `secs` seconds of this profile.
    pub fn budget(&self, secs: f64) -> Budget {
        let mut b = Budget {
            window_s: secs,
            request_s: self.in_flight * secs,
            requests: (self.rate * secs).round(),
            request_source: RequestSource::Sockets,
            cpu_s: self.cpu * secs,
            cpu_wait_s: self.cpu_wait * secs,
            capacity_core_s: self.capacity_cores * secs,
            busiest_thread_busy_s: self.busiest * secs,
            busiest_thread: Some("worker".into()),
            socket_samples: (secs * 100.0) as u64,
            ..Budget::default()
        };
        for (endpoint, kind, per_s) in &self.downstream {
            b.downstream.insert(
                endpoint.to_string(),
                DependencyTime {
                    kind: kind.to_string(),
                    name: None,
                    awaiting_s: per_s * secs,
                    // A pool one connection larger than its mean busy ones (3 busy: 4 open).
                    connection_s: (per_s + 1.0).ceil() * secs,
                },
            );
        }
        b
    }
}

/// One synthetic instance of a service: sends its cumulative budget at chosen times.
pub struct Instance {
    pub service: String,
    pub id: String,
    pub pid: u32,
    pub profile: Profile,
    pub start_ns: u64,
}

impl Instance {
    pub fn new(service: &str, id: &str, pid: u32, profile: Profile, start_ns: u64) -> Instance {
        Instance {
            service: service.into(),
            id: id.into(),
            pid,
            profile,
            start_ns,
        }
    }

    /// The OTLP protobuf body of its counters as read at `t_ns`.
    pub fn body_at(&self, t_ns: u64) -> Vec<u8> {
        let secs = t_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        let b = self.profile.budget(secs);
        let attrs = otlp_request::resource_attrs(&self.service, &self.id, Some(self.pid));
        otlp_request::encode(&otlp_request::request(&attrs, &b, self.start_ns, t_ns))
    }

    /// Sends one snapshot; fails unless the collector took every point.
    pub fn send(&self, c: &Collector, t_ns: u64) -> anyhow::Result<()> {
        let (status, body) = c.post("application/x-protobuf", None, &self.body_at(t_ns))?;
        if status != 200 {
            bail!(
                "export refused: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}
