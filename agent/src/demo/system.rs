//! `scalewise-agent demo --system`: the whole pipeline on one machine, with one command.
//!
//! It starts a collector (`scalewise-collector`, the sibling binary) on a loopback port with a
//! throw-away data directory, the three sample services under load, and one
//! `scalewise-agent run` per service exporting to the collector, exactly as a sidecar would.
//! Then it asks the collector, every two seconds, for each service's verdict over the last
//! window and prints a line whenever one changes, next to the ground truth the service recorded
//! over the same interval. Everything it started is stopped (agents and collector with SIGTERM,
//! so they flush) on Ctrl-C, SIGTERM or after `--stop-after`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{
    get_json, sample_cases, sibling, spawn, spawn_load, truth, truth_shares, DemoError, DEMO_ENV,
};

/// The window the collector is asked about: long enough for a few exports, short enough to
/// settle quickly.
const WINDOW_S: u64 = 20;
const POLL: Duration = Duration::from_secs(2);
const EXPORT_INTERVAL_S: &str = "2";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag the loop polls (an atomic store is async-signal-safe).
fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic; sigaction with a zeroed mask is valid.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub struct SystemOptions {
    /// Where the collector listens; a free loopback port when `None`.
    pub listen: Option<std::net::SocketAddr>,
    /// Stop by itself after this long (for scripts and tests); Ctrl-C otherwise.
    pub stop_after: Option<Duration>,
}

/// A service's latest answer from the collector, as printed.
#[derive(Clone, Debug)]
pub struct Settled {
    pub name: &'static str,
    pub expect: &'static str,
    pub diagnosis: serde_json::Value,
    pub truth: Option<[f64; 3]>,
}

/// The throw-away data directory, removed when the demo ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> Result<u16, DemoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| DemoError::Spawn {
        what: "a free loopback port".into(),
        source,
    })?;
    Ok(l.local_addr().map(|a| a.port()).unwrap_or(0))
}

fn start_logged(bin: &Path, args: &[String], log: &Path, what: &str) -> Result<Child, DemoError> {
    let err = |source| DemoError::Spawn {
        what: what.to_string(),
        source,
    };
    let file = std::fs::File::create(log).map_err(err)?;
    Command::new(bin)
        .args(args)
        .env(DEMO_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(err)
}

/// One line per answer worth printing: the verdict, the budget and the truth.
fn line(elapsed: Duration, s: &Settled) -> String {
    let d = &s.diagnosis;
    let f = |path: &[&str]| {
        let mut v = d;
        for p in path {
            v = &v[*p];
        }
        v.as_f64().unwrap_or(0.0)
    };
    let cpu = f(&["breakdown", "cpu"]) + f(&["breakdown", "cpu_wait"]) + f(&["breakdown", "gc"]);
    let truth = s.truth.map_or(String::new(), |t| {
        format!(
            "  truth {:>3.0}% {:>3.0}% {:>3.0}%",
            t[0] * 100.0,
            t[1] * 100.0,
            t[2] * 100.0
        )
    });
    format!(
        "{:>4}s  {:<16} {:<18} {:<5} cpu {:>3.0}%  downstream {:>3.0}%  in-process {:>3.0}%  {:>6.1} req/s {:>6.1} ms{truth}",
        elapsed.as_secs(),
        s.name,
        d["verdict"].as_str().unwrap_or("?"),
        format!("{:.2}", f(&["confidence"])),
        cpu * 100.0,
        f(&["breakdown", "downstream"]) * 100.0,
        f(&["breakdown", "local_wait"]) * 100.0,
        f(&["requests", "rate_per_s"]),
        f(&["requests", "mean_latency_ms"]),
    )
}

/// Runs the system demo until Ctrl-C (or `stop_after`); returns each service's last answer.
pub fn run(opts: SystemOptions, say: &mut dyn FnMut(&str)) -> Result<Vec<Settled>, DemoError> {
    install_signal_handlers();
    let workload = sibling("scalewise-workload")?;
    let collector_bin = sibling("scalewise-collector")?;
    let agent_bin = std::env::current_exe().unwrap_or_default();
    let dir = TempDir(std::env::temp_dir().join(format!("scalewise-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|source| DemoError::Spawn {
        what: format!("data directory {}", dir.0.display()),
        source,
    })?;
    let addr = match opts.listen {
        Some(a) => a.to_string(),
        None => format!("127.0.0.1:{}", free_port()?),
    };

    let mut collector = start_logged(
        &collector_bin,
        &[
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            dir.0.display().to_string(),
        ],
        &dir.0.join("collector.log"),
        "scalewise-collector",
    )?;
    let ready_by = Instant::now() + Duration::from_secs(15);
    while !matches!(get_json(&addr, "/api/v1/services"), Some((200, _))) {
        if Instant::now() > ready_by || !matches!(collector.try_wait(), Ok(None)) {
            let log = std::fs::read_to_string(dir.0.join("collector.log")).unwrap_or_default();
            terminate(&mut collector, Duration::from_secs(1));
            return Err(DemoError::Spawn {
                what: format!("scalewise-collector on {addr}: {}", log.trim()),
                source: std::io::Error::other("it did not become ready"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    say(&format!(
        "collector: web page http://{addr}/ (data in {}, removed at the end)",
        dir.0.display()
    ));

    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let backend = spawn(&workload, &s(&["backend", "--port", "0", "--ms", "40"]))?;
    let mut services = Vec::new();
    let mut loads = Vec::new();
    let mut agents = Vec::new();
    for (name, expect, args) in sample_cases(&format!("127.0.0.1:{}", backend.port)) {
        let service = spawn(&workload, &args)?;
        // A day: the load generators are stopped with everything else.
        loads.push(spawn_load(&workload, service.port, 8, 86_400)?);
        let agent = start_logged(
            &agent_bin,
            &[
                "run".into(),
                "--pid".into(),
                service.child.id().to_string(),
                "--service".into(),
                name.into(),
                "--collector".into(),
                format!("http://{addr}"),
                "--export-interval".into(),
                EXPORT_INTERVAL_S.into(),
                "--discovery-interval".into(),
                "2".into(),
                "--log".into(),
                "warn".into(),
            ],
            &dir.0.join(format!("agent-{name}.log")),
            "scalewise-agent run",
        )?;
        say(&format!(
            "started '{name}' (pid {}, {}) under load, and `scalewise-agent run --pid {} --service {name}` (pid {})",
            service.child.id(),
            args.join(" "),
            service.child.id(),
            agent.id()
        ));
        services.push((name, expect, service));
        agents.push(agent);
    }
    say(&format!(
        "asking the collector for each service's verdict over the last {WINDOW_S} s; a line when one changes (truth: what the service recorded about itself). Ctrl-C stops everything."
    ));
    say(&format!(
        "{:>5}  {:<16} {:<18} {:<5} {:<58}  truth: cpu, downstream, in-process",
        "", "service", "verdict", "conf", "request time"
    ));

    let started = Instant::now();
    let mut truths: HashMap<&str, VecDeque<(Instant, serde_json::Value)>> = HashMap::new();
    let mut printed: HashMap<&str, String> = HashMap::new();
    let mut last: Vec<Settled> = Vec::new();
    let mut all_said = false;
    while !STOP.load(Ordering::SeqCst) && opts.stop_after.map_or(true, |d| started.elapsed() < d) {
        let now = Instant::now();
        let mut current = Vec::new();
        for (name, expect, service) in &services {
            let history = truths.entry(name).or_default();
            if let Some(t) = truth(service.port) {
                history.push_back((now, t));
            }
            while history.len() > 2
                && now.duration_since(history[1].0) >= Duration::from_secs(WINDOW_S)
            {
                history.pop_front();
            }
            let window_truth = match (history.front(), history.back()) {
                (Some((_, a)), Some((_, b))) if history.len() > 1 => truth_shares(a, b),
                _ => None,
            };
            let path = format!("/api/v1/services/{name}?window={WINDOW_S}s");
            let Some((200, diagnosis)) = get_json(&addr, &path) else {
                continue;
            };
            let settled = Settled {
                name,
                expect,
                diagnosis,
                truth: window_truth,
            };
            let verdict = settled.diagnosis["verdict"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            if printed.get(name) != Some(&verdict) {
                say(&line(started.elapsed(), &settled));
                printed.insert(name, verdict);
            }
            current.push(settled);
        }
        if !all_said
            && current.len() == services.len()
            && current
                .iter()
                .all(|s| s.diagnosis["verdict"] != "insufficient_data")
        {
            all_said = true;
            say(&format!(
                "every service has a verdict: open http://{addr}/ (per service: /api/v1/services/NAME, /api/v1/services/NAME/report)"
            ));
        }
        if !current.is_empty() {
            last = current;
        }
        let next = now + POLL;
        while Instant::now() < next && !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    say("stopping: agents (last export), load, services, collector (flush)");
    for a in &mut agents {
        terminate(a, Duration::from_secs(3));
    }
    drop(loads);
    drop(services);
    drop(backend);
    terminate(&mut collector, Duration::from_secs(5));
    for s in &last {
        say(&line(started.elapsed(), s));
    }
    Ok(last)
}
