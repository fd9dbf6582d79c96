//! `scalewise-soak`: issue 12's soak bench. A real `scalewise-collector` (release binary, temp
//! data dir, loopback port, retention short enough to show within the run) fed for
//! `--duration-s` by many simulated agents over OTLP/HTTP protobuf (cumulative counters, export
//! every `--interval-s` spread evenly, occasional agent restarts that reset the counters, a few
//! instances coming and going) and by real `scalewise-agent run` processes watching real
//! `scalewise-workload serve` services under load. Every `--sample-s` it records the collector's
//! RSS, open fds, SQLite size, CPU, answer latencies, ingest refusals and whether known simulated
//! services still get the answer their profile should give, to a CSV; at the end it prints a
//! summary. `scripts/soak` builds, runs this and plots the CSV (`scripts/soak-plot.py`).
//!
//! scalewise-soak [--duration-s 3600] [--services 1200] [--instances 2000] [--interval-s 10]
//!                [--sample-s 30] [--senders 4] [--real 2] [--restarts-per-hour 1]
//!                [--churn-per-min 2] [--watched 12] [--csv target/soak/soak.csv]
//!
//! Traffic stays on loopback and every loop is bounded by the duration; it stops by itself
//! (or on SIGINT/SIGTERM, after writing what it has).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use scalewise_core::engine::{diagnose, Thresholds};
use scalewise_e2e::collector::{collector_bin, get, now_ns, Instance, Profile};
use scalewise_e2e::harness::{free_port, rss_kib, stop, Load, RunAgent, Service, TempDir};
use scalewise_e2e::metrics;
use scalewise_e2e::workload::Args;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Opts {
    duration_s: f64,
    services: usize,
    instances: usize,
    interval_s: f64,
    sample_s: f64,
    senders: usize,
    real: usize,
    restarts_per_hour: f64,
    churn_per_min: f64,
    watched: usize,
    csv: PathBuf,
}

impl Opts {
    fn parse(a: &Args) -> Opts {
        Opts {
            duration_s: a.num("duration-s", 3600.0),
            services: a.num("services", 1200.0) as usize,
            instances: a.num("instances", 2000.0) as usize,
            interval_s: a.num("interval-s", 10.0),
            sample_s: a.num("sample-s", 30.0),
            senders: (a.num("senders", 4.0) as usize).max(1),
            real: a.num("real", 2.0) as usize,
            restarts_per_hour: a.num("restarts-per-hour", 1.0),
            churn_per_min: a.num("churn-per-min", 2.0),
            watched: a.num("watched", 12.0) as usize,
            csv: PathBuf::from(a.get("csv").unwrap_or("target/soak/soak.csv")),
        }
    }
}

/// Mostly waiting on a lock: scale-out.
fn lock_bound() -> Profile {
    Profile {
        in_flight: 6.0,
        rate: 300.0,
        cpu: 0.3,
        cpu_wait: 0.05,
        downstream: vec![],
        capacity_cores: 4.0,
        busiest: 0.3,
    }
}

fn profile_of(service: usize) -> Profile {
    match service % 3 {
        0 => Profile::dependency_bound(),
        1 => Profile::cpu_bound(),
        _ => lock_bound(),
    }
}

fn service_name(i: usize) -> String {
    format!("soak-svc-{i:04}")
}

/// xorshift64*: deterministic, good enough to pick restarts and churn.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default)]
struct SendStats {
    sent: AtomicU64,
    errors: AtomicU64,
    restarts: AtomicU64,
    churned: AtomicU64,
    /// Largest lateness of a send against its schedule since the last sample, in ms.
    lag_max_ms: AtomicU64,
    live: AtomicU64,
}

struct Sim {
    inst: Instance,
    phase_s: f64,
    /// An instance of a watched service: never churned away.
    keep: bool,
}

/// One sender thread: its share of the instances, each sent once per interval at its phase, over
/// one keep-alive connection (an OpenTelemetry Collector or a proxy in front would do the same).
#[allow(clippy::too_many_arguments)]
fn sender(
    url: String,
    mut sims: Vec<Sim>,
    t0: Instant,
    opts_interval: f64,
    end_s: f64,
    restart_p: f64,
    churn_per_round: f64,
    services: usize,
    seed: u64,
    next_id: Arc<AtomicU64>,
    stats: Arc<SendStats>,
) {
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let mut rng = Rng(seed | 1);
    let mut round: u64 = 0;
    loop {
        sims.sort_by(|a, b| a.phase_s.total_cmp(&b.phase_s));
        for s in &mut sims {
            let due = round as f64 * opts_interval + s.phase_s;
            if due >= end_s || STOP.load(Ordering::Relaxed) {
                return;
            }
            let now = t0.elapsed().as_secs_f64();
            if due > now {
                std::thread::sleep(Duration::from_secs_f64(due - now));
            } else {
                let lag = ((now - due) * 1000.0) as u64;
                stats.lag_max_ms.fetch_max(lag, Ordering::Relaxed);
            }
            let t_ns = now_ns();
            if rng.next() < restart_p {
                // The agent (or its process) restarted: counters start again from zero.
                s.inst.start_ns = t_ns.saturating_sub(1_000_000_000);
                s.inst.pid += 100_000;
                stats.restarts.fetch_add(1, Ordering::Relaxed);
            }
            let body = s.inst.body_at(t_ns);
            let ok = http
                .post(&url)
                .set("Content-Type", "application/x-protobuf")
                .send_bytes(&body)
                .map(|r| {
                    let st = r.status();
                    let _ = r.into_string();
                    st == 200
                })
                .unwrap_or(false);
            stats.sent.fetch_add(1, Ordering::Relaxed);
            if !ok {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        round += 1;
        // Instances coming and going: one leaves (it just stops sending) and a new one arrives
        // on another service, never on a watched one's only instance.
        let mut churn = churn_per_round;
        while churn > 0.0 && sims.len() > 1 {
            if rng.next() >= churn {
                break;
            }
            churn -= 1.0;
            let leave = (rng.next() * sims.len() as f64) as usize % sims.len();
            if sims[leave].keep {
                continue;
            }
            let phase_s = sims[leave].phase_s;
            sims.swap_remove(leave);
            let svc = (rng.next() * services as f64) as usize % services;
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            sims.push(Sim {
                inst: Instance::new(
                    &service_name(svc),
                    &format!("churn-{id}"),
                    (500_000 + id) as u32,
                    profile_of(svc),
                    now_ns(),
                ),
                phase_s,
                keep: false,
            });
            stats.churned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// utime + stime of a process, in seconds.
fn proc_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based) => index 11, 12.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

fn dir_bytes(dir: &Path) -> (u64, u64) {
    let mut all = 0;
    let mut wal = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let len = e.metadata().map_or(0, |m| m.len());
        all += len;
        if e.file_name().to_string_lossy().ends_with("-wal") {
            wal += len;
        }
    }
    (all, wal)
}

/// Times `n` GETs of `url`: (p50 ms, max ms, last body, all answered 200).
fn timed(url: &str, n: usize) -> (f64, f64, String, bool) {
    let mut ms = Vec::with_capacity(n);
    let mut body = String::new();
    let mut ok = true;
    for _ in 0..n {
        let t = Instant::now();
        match get(url, None) {
            Ok((200, b)) => body = b,
            _ => ok = false,
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1], body, ok)
}

/// What a watched service's answer should be: verdict and shares of its steady profile.
struct Expected {
    service: String,
    verdict: String,
    shares: BTreeMap<String, f64>,
}

fn expected(service: usize) -> Expected {
    let name = service_name(service);
    let d = diagnose(
        &name,
        &[],
        &profile_of(service).budget(300.0),
        &Thresholds::default(),
    );
    let b = serde_json::to_value(d.breakdown).unwrap_or_default();
    let shares = ["cpu", "gc", "cpu_wait", "downstream", "local_wait"]
        .iter()
        .map(|c| (c.to_string(), b[c].as_f64().unwrap_or(f64::NAN)))
        .collect();
    Expected {
        service: name,
        verdict: d.verdict.as_str().to_string(),
        shares,
    }
}

/// Whether the collector's answer is the expected one; the reason when it is not.
fn check(answer: &str, e: &Expected) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(answer).map_err(|x| x.to_string())?;
    if v["verdict"] != e.verdict.as_str() {
        return Err(format!(
            "{}: verdict {} (want {})",
            e.service, v["verdict"], e.verdict
        ));
    }
    for (c, want) in &e.shares {
        let got = v["breakdown"][c].as_f64().unwrap_or(f64::NAN);
        if (got - want).abs() > 0.05 || got.is_nan() {
            return Err(format!("{}: {c} {got:.3} (want {want:.3})", e.service));
        }
    }
    Ok(())
}

const COLUMNS: &[&str] = &[
    "t_s",
    "rss_mib",
    "fds",
    "sqlite_mib",
    "wal_mib",
    "cpu_pct",
    "list_p50_ms",
    "list_max_ms",
    "one_p50_ms",
    "one_max_ms",
    "metrics_p50_ms",
    "metrics_max_ms",
    "services",
    "instances",
    "points_received",
    "points_rejected",
    "requests_rejected",
    "overflow_dropped",
    "exports_sent",
    "export_errors",
    "restarts",
    "churned",
    "send_lag_max_ms",
    "watched_ok",
    "watched",
    "real_ok",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("scalewise-soak: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let opts = Opts::parse(&Args::new(std::env::args().skip(1).collect()));
    if opts.services == 0 || opts.instances < opts.services {
        bail!("--instances must be at least --services (> 0)");
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    let work = TempDir::new("soak")?;
    let data = work.join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // Retention that shows within an hour: full resolution for 10 minutes, then one snapshot per
    // minute, deleted after 30 minutes; instances silent for 15 minutes leave memory.
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         data_dir = {data:?}\n\
         flush_interval = \"5s\"\n\
         metrics_window = \"5m\"\n\
         memory_retention = \"10m\"\n\
         memory_resolution = \"30s\"\n\
         instance_ttl = \"15m\"\n\
         [limits]\n\
         max_services = 2000\n\
         [retention]\n\
         max_age = \"30m\"\n\
         [[retention.tiers]]\n\
         older_than = \"10m\"\n\
         resolution = \"1m\"\n",
        data = data.to_string_lossy()
    );
    std::fs::write(work.join("collector.toml"), &config)?;
    let log = std::fs::File::create(work.join("collector.log"))?;
    let mut collector = Command::new(collector_bin())
        .arg("--config")
        .arg(work.join("collector.toml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", collector_bin().display()))?;
    let cpid = collector.id();
    let ready = Instant::now();
    while !matches!(get(&format!("{base}/readyz"), None), Ok((200, _))) {
        if ready.elapsed() > Duration::from_secs(30) {
            stop(&mut collector);
            bail!("collector did not become ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "soak: collector pid {cpid} on {base}, data {}, config:\n{config}",
        data.display()
    );

    // Real workloads under load, each watched by a real agent.
    let mut services = Vec::new();
    let mut loads = Vec::new();
    let mut agents = Vec::new();
    let real_names = ["real-cpu", "real-lock"];
    for (i, name) in real_names.iter().enumerate().take(opts.real) {
        let svc = if i == 0 {
            Service::workload(&["serve", "--workers", "4", "--cpu-ms", "1"])?
        } else {
            Service::workload(&["serve", "--workers", "8", "--lock-ms", "4"])?
        };
        loads.push(Load::start(svc.port, 4, opts.duration_s + 60.0, 10.0)?);
        let agent = RunAgent::start(&[
            "--pid",
            &svc.pid.to_string(),
            "--service",
            name,
            "--collector",
            &base,
            "--export-interval",
            "10",
        ])?;
        println!(
            "soak: real service {name} pid {} port {}, agent pid {}",
            svc.pid,
            svc.port,
            agent.pid()
        );
        agents.push(agent);
        services.push(svc);
    }

    // Watched services: spread over the three profiles.
    let step = (opts.services / opts.watched.max(1)).max(1);
    let watched_idx: Vec<usize> = (0..opts.watched.min(opts.services))
        .map(|i| (i * step + i % 3) % opts.services)
        .collect();
    let watched: Vec<Expected> = watched_idx.iter().map(|&i| expected(i)).collect();
    for e in &watched {
        println!(
            "soak: watching {} (expect {} {:?})",
            e.service, e.verdict, e.shares
        );
    }

    // Simulated instances: every service gets one, the rest go round the services again.
    let start = now_ns();
    let n = opts.instances;
    let mut per_thread: Vec<Vec<Sim>> = (0..opts.senders).map(|_| Vec::new()).collect();
    for k in 0..n {
        let svc = k % opts.services;
        let inst = Instance::new(
            &service_name(svc),
            &format!("i{k:05}"),
            10_000 + k as u32,
            profile_of(svc),
            // Agents started at different times before the soak.
            start.saturating_sub((k as u64 % 3600) * 1_000_000_000),
        );
        per_thread[k % opts.senders].push(Sim {
            inst,
            phase_s: k as f64 * opts.interval_s / n as f64,
            keep: watched_idx.contains(&svc),
        });
    }
    let stats = Arc::new(SendStats::default());
    stats.live.store(n as u64, Ordering::Relaxed);
    let next_id = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let restart_p = opts.restarts_per_hour * opts.interval_s / 3600.0;
    let churn_per_round = opts.churn_per_min * opts.interval_s / 60.0 / opts.senders as f64;
    let mut threads = Vec::new();
    for (i, sims) in per_thread.into_iter().enumerate() {
        let url = format!("{base}/v1/metrics");
        let (stats, next_id) = (Arc::clone(&stats), Arc::clone(&next_id));
        let (interval, end, services_n) = (opts.interval_s, opts.duration_s, opts.services);
        threads.push(std::thread::spawn(move || {
            sender(
                url,
                sims,
                t0,
                interval,
                end,
                restart_p,
                churn_per_round,
                services_n,
                0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1234_5678),
                next_id,
                stats,
            )
        }));
    }
    println!(
        "soak: {n} simulated instances over {} services, one export each {} s ({:.0}/s), {} sender threads, restarts {}/instance/h, churn {}/min, {} real agents, {} s",
        opts.services,
        opts.interval_s,
        n as f64 / opts.interval_s,
        opts.senders,
        opts.restarts_per_hour,
        opts.churn_per_min,
        agents.len(),
        opts.duration_s
    );

    if let Some(dir) = opts.csv.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut csv = std::fs::File::create(&opts.csv)
        .with_context(|| format!("creating {}", opts.csv.display()))?;
    writeln!(csv, "{}", COLUMNS.join(","))?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut last_cpu = (proc_cpu_s(cpid), Instant::now());
    let mut mismatches = 0u64;
    let mut next = opts.sample_s.min(30.0);
    let mut collector_exit = None;
    loop {
        while t0.elapsed().as_secs_f64() < next && !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let t = t0.elapsed().as_secs_f64();
        if let Ok(Some(st)) = collector.try_wait() {
            println!("soak: COLLECTOR EXITED: {st}");
            collector_exit = Some(st);
            break;
        }
        let rss = rss_kib(cpid) as f64 / 1024.0;
        let fds = std::fs::read_dir(format!("/proc/{cpid}/fd")).map_or(0, |d| d.count()) as f64;
        let (db, wal) = dir_bytes(&data);
        let cpu = proc_cpu_s(cpid);
        let now = Instant::now();
        let cpu_pct =
            100.0 * (cpu - last_cpu.0) / now.duration_since(last_cpu.1).as_secs_f64().max(1e-3);
        last_cpu = (cpu, now);
        let (list50, listmax, list_body, _) = timed(&format!("{base}/api/v1/services"), 3);
        let first = watched.first().map_or("x", |e| e.service.as_str());
        let (one50, onemax, _, _) = timed(&format!("{base}/api/v1/services/{first}?window=5m"), 3);
        let (m50, mmax, mtext, _) = timed(&format!("{base}/metrics"), 3);
        let listed: serde_json::Value = serde_json::from_str(&list_body).unwrap_or_default();
        let listed = listed["services"].as_array().cloned().unwrap_or_default();
        let mut ok = 0;
        for e in &watched {
            let url = format!("{base}/api/v1/services/{}?window=5m", e.service);
            match get(&url, None)
                .map_err(|x| x.to_string())
                .and_then(|(_, b)| check(&b, e))
            {
                Ok(()) => ok += 1,
                Err(why) => {
                    mismatches += 1;
                    if mismatches <= 50 {
                        println!("soak: t={t:.0}s answer changed: {why}");
                    }
                }
            }
        }
        let real: Vec<String> = real_names[..services.len()]
            .iter()
            .filter_map(|r| {
                let s = listed.iter().find(|s| s["service"] == *r)?;
                Some(format!("{r}={}", s["verdict"].as_str()?))
            })
            .collect();
        let real_ok = real.len();
        let row = vec![
            t.round(),
            rss,
            fds,
            db as f64 / 1048576.0,
            wal as f64 / 1048576.0,
            cpu_pct,
            list50,
            listmax,
            one50,
            onemax,
            m50,
            mmax,
            metrics::sum(&mtext, "scalewise_collector_services"),
            metrics::sum(&mtext, "scalewise_collector_instances"),
            metrics::sum(&mtext, "scalewise_collector_points_received_total"),
            metrics::sum(&mtext, "scalewise_collector_points_rejected_total"),
            metrics::sum(&mtext, "scalewise_collector_requests_rejected_total"),
            metrics::sum(&mtext, "scalewise_collector_overflow_dropped_total"),
            stats.sent.load(Ordering::Relaxed) as f64,
            stats.errors.load(Ordering::Relaxed) as f64,
            stats.restarts.load(Ordering::Relaxed) as f64,
            stats.churned.load(Ordering::Relaxed) as f64,
            stats.lag_max_ms.swap(0, Ordering::Relaxed) as f64,
            ok as f64,
            watched.len() as f64,
            real_ok as f64,
        ];
        let text: Vec<String> = row.iter().map(|v| format!("{v:.3}")).collect();
        writeln!(csv, "{}", text.join(","))?;
        csv.flush()?;
        println!(
            "soak: t={:>5.0}s rss {rss:.1} MiB fds {fds} sqlite {:.1} MiB (wal {:.1}) cpu {cpu_pct:.1}% \
             list {list50:.0}/{listmax:.0} ms one {one50:.0}/{onemax:.0} ms metrics {m50:.0}/{mmax:.0} ms \
             services {} instances {} sent {} errors {} rejected {} restarts {} churned {} lag {} ms \
             answers {ok}/{} real {real_ok}/{} {}",
            t,
            row[3],
            row[4],
            row[12],
            row[13],
            row[18],
            row[19],
            row[15] + row[16] + row[17],
            row[20],
            row[21],
            row[22],
            watched.len(),
            services.len(),
            real.join(" ")
        );
        rows.push(row);
        if t >= opts.duration_s || STOP.load(Ordering::Relaxed) {
            break;
        }
        next += opts.sample_s;
    }
    STOP.store(true, Ordering::SeqCst);
    for th in threads {
        let _ = th.join();
    }
    drop(agents);
    drop(loads);
    drop(services);
    let exit = match collector_exit {
        Some(st) => st,
        None => {
            stop(&mut collector);
            collector.wait()?
        }
    };
    println!("soak: collector stopped: {exit}; answer mismatches: {mismatches}");
    summary(&rows);
    let log = std::fs::read_to_string(work.join("collector.log")).unwrap_or_default();
    let warn: Vec<&str> = log.lines().collect();
    println!("soak: collector log: {} lines", warn.len());
    for l in warn.iter().take(20) {
        println!("  {l}");
    }
    drop(work);
    println!("soak: CSV in {}", opts.csv.display());
    Ok(())
}

/// Start, end and max of each column, and its growth per hour after the first 10 minutes
/// (least-squares slope).
fn summary(rows: &[Vec<f64>]) {
    println!(
        "{:<18} {:>12} {:>12} {:>12} {:>14}",
        "metric", "start", "end", "max", "growth/h >10m"
    );
    for (c, name) in COLUMNS.iter().enumerate().skip(1) {
        let col: Vec<(f64, f64)> = rows.iter().map(|r| (r[0], r[c])).collect();
        let (Some(first), Some(last)) = (col.first(), col.last()) else {
            return;
        };
        let max = col.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let late: Vec<&(f64, f64)> = col.iter().filter(|p| p.0 >= 600.0).collect();
        let slope = if late.len() >= 3 {
            let n = late.len() as f64;
            let mx = late.iter().map(|p| p.0).sum::<f64>() / n;
            let my = late.iter().map(|p| p.1).sum::<f64>() / n;
            let sxy: f64 = late.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let sxx: f64 = late.iter().map(|p| (p.0 - mx).powi(2)).sum();
            format!("{:.3}", sxy / sxx.max(1e-9) * 3600.0)
        } else {
            "-".to_string()
        };
        println!(
            "{name:<18} {:>12.2} {:>12.2} {max:>12.2} {slope:>14}",
            first.1, last.1
        );
    }
}
