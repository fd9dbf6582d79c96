//! `scalewise-agent demo`: start three sample services with known behaviour, load them, diagnose
//! each and print the verdict next to the ground truth the services recorded about themselves.
//!
//! The services are the `scalewise-workload` binary built with this workspace (the same programs
//! the end-to-end tests use): a CPU-bound one, one waiting on a slow downstream HTTP service, and
//! one contending on an in-process lock. Everything runs on loopback and stops by pid.
//!
//! `demo --system` ([`system`]) runs the same services as the whole pipeline would see them:
//! a collector, one `scalewise-agent run` per service, and the verdicts as they settle.

pub mod system;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scalewise_core::engine::{Diagnosis, Thresholds};
use thiserror::Error;

use crate::session::SessionConfig;

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("the sample workloads binary was not found at {0} (build it with `cargo build --release --workspace`)")]
    NoWorkloads(PathBuf),
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} did not say which port it listens on")]
    NoPort(String),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
}

/// A child process killed and reaped on drop, so a failed demo leaves nothing running.
struct Proc {
    child: Child,
    port: u16,
}

/// Every process the demo starts carries this variable (with the demo's own pid), so what it
/// started can be found and shown gone.
pub const DEMO_ENV: &str = "SCALEWISE_DEMO";

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, args: &[String]) -> Result<Proc, DemoError> {
    let what = format!("{} {}", bin.display(), args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .env(DEMO_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| DemoError::Spawn {
            what: what.clone(),
            source,
        })?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| DemoError::NoPort(what.clone()))?;
    Ok(Proc { child, port })
}

/// Ground truth from the workload's `/truth` endpoint (cumulative counters).
fn truth(port: u16) -> Option<serde_json::Value> {
    get_json(&format!("127.0.0.1:{port}"), "/truth").map(|(_, v)| v)
}

/// `GET path` on `addr`, the status and the JSON body. The response is read by its
/// Content-Length: the workloads keep connections alive. Only for the demo's own loopback
/// services (a full client would be a dependency for two requests).
fn get_json(addr: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]);
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())?;
        let body = &buf[end + 4..];
        if body.len() >= len {
            return Some((status, serde_json::from_slice(&body[..len]).ok()?));
        }
    }
}

fn truth_shares(before: &serde_json::Value, after: &serde_json::Value) -> Option<[f64; 3]> {
    let d = |k: &str| Some(after.get(k)?.as_f64()? - before.get(k)?.as_f64()?);
    let latency = d("latency_s")?;
    if latency <= 0.0 {
        return None;
    }
    let cpu = (d("cpu_s")? + d("cpu_wait_s").unwrap_or(0.0)) / latency;
    let down = d("downstream_s")? / latency;
    Some([cpu, down, (1.0 - cpu - down).max(0.0)])
}

pub struct DemoCase {
    pub name: &'static str,
    pub expect: &'static str,
    pub diagnosis: Diagnosis,
    /// Ground truth shares: cpu (with run-queue wait), downstream, local wait.
    pub truth: Option<[f64; 3]>,
}

/// Runs the demo; `say` receives progress and result lines as they happen.
pub fn run(duration: Duration, say: &mut dyn FnMut(&str)) -> Result<Vec<DemoCase>, DemoError> {
    let bin = sibling("scalewise-workload")?;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let backend = spawn(&bin, &s(&["backend", "--port", "0", "--ms", "40"]))?;
    let mut results = Vec::new();
    for (name, expect, args) in sample_cases(&format!("127.0.0.1:{}", backend.port)) {
        say(&format!(
            "starting sample service '{name}' ({})",
            args.join(" ")
        ));
        let service = spawn(&bin, &args)?;
        let load_s = (duration.as_secs_f64() + 3.0).ceil() as u64;
        let _load = spawn_load(&bin, service.port, 8, load_s)?;
        std::thread::sleep(Duration::from_secs(1));
        let before = truth(service.port);
        let cfg = SessionConfig::new(vec![service.child.id()]);
        let report = crate::diagnose::run(
            cfg,
            Some(name.to_string()),
            duration,
            &Thresholds::default(),
            &mut |line| say(line),
        )?;
        let after = truth(service.port);
        let truth = match (before, after) {
            (Some(b), Some(a)) => truth_shares(&b, &a),
            _ => None,
        };
        if let Some(d) = report.services.into_iter().next() {
            results.push(DemoCase {
                name,
                expect,
                diagnosis: d,
                truth,
            });
        }
    }
    drop(backend);
    Ok(results)
}

/// A binary built beside this one (the workloads, the collector).
fn sibling(name: &str) -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let bin = exe.with_file_name(name);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(DemoError::NoWorkloads(bin))
    }
}

/// The three sample services: name, the verdict they should get, and the workload's arguments.
fn sample_cases(backend_addr: &str) -> [(&'static str, &'static str, Vec<String>); 3] {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    [
        (
            "cpu-bound",
            "scale_up",
            s(&["serve", "--port", "0", "--workers", "8", "--cpu-ms", "15"]),
        ),
        (
            "slow-downstream",
            "dependency",
            s(&[
                "serve",
                "--port",
                "0",
                "--workers",
                "16",
                "--cpu-ms",
                "2",
                "--backend",
                backend_addr,
                "--backend-ms",
                "40",
            ]),
        ),
        (
            "lock-contended",
            "scale_out",
            s(&[
                "serve",
                "--port",
                "0",
                "--workers",
                "16",
                "--cpu-ms",
                "1",
                "--lock-ms",
                "8",
            ]),
        ),
    ]
}

fn spawn_load(bin: &Path, port: u16, concurrency: u32, seconds: u64) -> Result<Proc, DemoError> {
    let mut child = Command::new(bin)
        .args([
            "load",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--concurrency",
            &concurrency.to_string(),
            "--duration-s",
            &seconds.to_string(),
        ])
        .env(DEMO_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| DemoError::Spawn {
            what: "load generator".into(),
            source,
        })?;
    // Not waited for here: Drop kills it when the case is done.
    let _ = child.stdin.take();
    Ok(Proc { child, port })
}

/// The demo's closing table: verdict, expectation, and measured vs. true shares.
pub fn summary(cases: &[DemoCase]) -> String {
    let mut out = String::from(
        "\ncase              verdict        expected     cpu (truth)   downstream (truth)   local_wait (truth)\n",
    );
    for c in cases {
        let b = &c.diagnosis.breakdown;
        let t = c.truth.unwrap_or([f64::NAN; 3]);
        out.push_str(&format!(
            "{:<17} {:<14} {:<12} {:>3.0}% ({:>3.0}%)    {:>3.0}% ({:>3.0}%)           {:>3.0}% ({:>3.0}%)\n",
            c.name,
            c.diagnosis.verdict.as_str(),
            c.expect,
            (b.cpu + b.cpu_wait + b.gc) * 100.0,
            t[0] * 100.0,
            b.downstream * 100.0,
            t[1] * 100.0,
            b.local_wait * 100.0,
            t[2] * 100.0,
        ));
    }
    out
}
