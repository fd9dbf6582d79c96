//! Faults, each against real processes: a full disk and a removed store under a running
//! collector, clock jumps in what an agent sends, a target that becomes unreadable while it is
//! sampled, and a network partition between a `run` agent and its collector. Mount and network
//! namespaces and other users need root; those tests are skipped without it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scalewise_collector::otlp_request;
use scalewise_e2e::collector::{collector_bin, now_ns, Collector, Instance, Profile};
use scalewise_e2e::harness::{
    agent_bin, as_nobody, exclusive, free_port, root_with_only, wait_until, workload_bin, wrapped,
    NetNs, Proc, RunAgent, Service, TempDir,
};
use scalewise_e2e::metrics::{sum, value};

const S: u64 = 1_000_000_000;

fn root() -> bool {
    scalewise_e2e::harness::root("for mount and network namespaces and other users")
}

/// Sends `inst`'s snapshot now, once a second, for `secs` seconds.
fn export_for(c: &Collector, inst: &Instance, secs: u64) {
    for _ in 0..secs {
        inst.send(c, now_ns()).expect("export");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The collector's answer for `service` over the last `window`, checked against the instance's
/// steady profile: the rate it sends, and the request time per second.
fn assert_steady(c: &Collector, service: &str, window: &str, p: &Profile) -> serde_json::Value {
    let d = c
        .json(&format!("/api/v1/services/{service}?window={window}"))
        .expect("answer");
    let rate = d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0);
    let in_flight = d["requests"]["mean_in_flight"].as_f64().unwrap_or(0.0);
    assert!((rate / p.rate - 1.0).abs() < 0.02, "rate {rate}: {d:#}");
    assert!(
        (in_flight / p.in_flight - 1.0).abs() < 0.02,
        "in flight {in_flight}: {d:#}"
    );
    d
}

#[test]
fn a_full_disk_is_counted_served_from_memory_and_recovered_from() {
    if !root() {
        return;
    }
    // The data dir is a 512 KiB tmpfs mounted in the collector's own mount namespace: it goes
    // away with the collector, and the test reaches it through /proc/PID/root.
    let data = TempDir::new("faults-enospc").expect("temp dir");
    let wrapper: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "mount -t tmpfs -o size=512k scalewise-test \"$0\" && exec \"$@\"",
    ]
    .into_iter()
    .map(String::from)
    .chain([data.to_string_lossy().into_owned()])
    .collect();
    // Room for 6 snapshots while the disk is full: the oldest beyond that are dropped, counted.
    let config_dir = TempDir::new("faults-enospc-config").expect("temp dir");
    let config = config_dir.join("collector.toml");
    std::fs::write(&config, "[limits]\nmax_pending_snapshots = 6\n").expect("config");
    let c = Collector::start_wrapped(
        &wrapper,
        &data,
        &["--config", config.to_str().expect("utf8")],
    )
    .expect("collector on a tmpfs");
    let inside = PathBuf::from(format!("/proc/{}/root", c.pid()))
        .join(data.strip_prefix("/").unwrap_or(&data));
    let p = Profile::dependency_bound();
    let inst = Instance::new("orders", "orders-1", 11, p.clone(), now_ns() - 30 * S);
    export_for(&c, &inst, 3);
    wait_until(Duration::from_secs(10), "the first flush", || {
        c.metric("scalewise_collector_pending_snapshots", &[]).ok() == Some(0.0)
    });
    assert!(inside.join("scalewise.sqlite").exists());
    assert!(!data.join("scalewise.sqlite").exists(), "not on the tmpfs");

    // Fill it.
    let fill = inside.join("fill");
    let mut f = std::fs::File::create(&fill).expect("fill file");
    let chunk = vec![0u8; 16 * 1024];
    let err = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    drop(f);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let failed = || {
        c.metric(
            "scalewise_collector_sqlite_write_errors_total",
            &[("reason", "disk_full")],
        )
    };
    let before = failed().expect("write error counter");
    export_for(&c, &inst, 4);
    wait_until(Duration::from_secs(10), "a failed flush", || {
        failed().unwrap_or(0.0) > before
    });
    let pending = c
        .metric("scalewise_collector_pending_snapshots", &[])
        .expect("pending");
    assert!(pending > 0.0, "kept in memory for the next flush");
    // More than the room for them: the newest kept, the rest counted as dropped.
    export_for(&c, &inst, 6);
    wait_until(
        Duration::from_secs(10),
        "pending snapshots dropped past the limit",
        || {
            c.metric("scalewise_collector_pending_dropped_total", &[])
                .unwrap_or(0.0)
                > 0.0
        },
    );
    let held = c
        .metric("scalewise_collector_pending_snapshots", &[])
        .expect("pending");
    assert!(held <= 6.0, "{held} pending with room for 6");
    // Still answering, from memory, with the snapshots the disk refused.
    assert_steady(&c, "orders", "1m", &p);
    assert!(c.get("/readyz").expect("ready").0 == 200);

    // Space again: the next flushes write what was kept, and the failures stop.
    std::fs::remove_file(&fill).expect("free space");
    export_for(&c, &inst, 1);
    wait_until(
        Duration::from_secs(15),
        "a flush after the disk has room",
        || c.metric("scalewise_collector_pending_snapshots", &[]).ok() == Some(0.0),
    );
    let after = failed().expect("counter");
    export_for(&c, &inst, 3);
    wait_until(Duration::from_secs(10), "the last exports flushed", || {
        c.metric("scalewise_collector_pending_snapshots", &[]).ok() == Some(0.0)
    });
    assert_eq!(failed().expect("counter"), after, "no failure once freed");
    assert_steady(&c, "orders", "1m", &p);
    eprintln!(
        "disk full: {} failed flushes, {pending} snapshots held, all written after",
        after - before
    );
}

#[test]
fn a_store_removed_while_running_is_created_anew_with_what_memory_holds() {
    let data = TempDir::new("faults-removed").expect("temp dir");
    let mut c = Collector::start_in(&data, &[]).expect("collector");
    let p = Profile::cpu_bound();
    let inst = Instance::new("render", "render-1", 21, p.clone(), now_ns() - 20 * S);
    export_for(&c, &inst, 3);
    wait_until(Duration::from_secs(10), "the first flush", || {
        c.metric("scalewise_collector_pending_snapshots", &[]).ok() == Some(0.0)
    });
    for f in [
        "scalewise.sqlite",
        "scalewise.sqlite-wal",
        "scalewise.sqlite-shm",
    ] {
        let _ = std::fs::remove_file(data.join(f));
    }
    export_for(&c, &inst, 3);
    wait_until(Duration::from_secs(10), "the store created anew", || {
        c.metric("scalewise_collector_sqlite_recreated_total", &[])
            .ok()
            == Some(1.0)
            && c.metric("scalewise_collector_pending_snapshots", &[]).ok() == Some(0.0)
    });
    assert!(data.join("scalewise.sqlite").exists());
    assert_eq!(
        c.metric(
            "scalewise_collector_sqlite_write_errors_total",
            &[("reason", "other")]
        )
        .ok(),
        Some(0.0)
    );
    assert_steady(&c, "render", "1m", &p);
    // What was sent before the removal is in the new store: a restarted collector (memory
    // rebuilt from SQLite alone) answers for the whole time.
    c.restart().expect("restart");
    let d = assert_steady(&c, "render", "5m", &p);
    let span = d["window_s"].as_f64().unwrap_or(0.0);
    assert!(
        span >= 25.0,
        "the window covers the time before the removal: {d:#}"
    );
    assert!(c.stop().expect("stop").success());
}

#[test]
fn a_corrupt_store_at_start_is_set_aside_and_the_collector_serves() {
    let data = TempDir::new("faults-corrupt").expect("temp dir");
    std::fs::create_dir_all(&data).expect("data dir");
    // Not a database at all, and a header-intact store whose pages are garbage.
    for (i, damage) in ["header", "pages"].into_iter().enumerate() {
        let store = data.join("scalewise.sqlite");
        if damage == "header" {
            std::fs::write(&store, vec![0x5a; 64 << 10]).expect("garbage");
        } else {
            let mut c = Collector::start_in(&data, &[]).expect("collector");
            let inst = Instance::new("ok", "ok-1", 1, Profile::cpu_bound(), now_ns() - 20 * S);
            export_for(&c, &inst, 2);
            wait_until(Duration::from_secs(10), "a flush", || {
                c.metric("scalewise_collector_pending_snapshots", &[]).ok() == Some(0.0)
            });
            assert!(c.stop().expect("stop").success());
            let mut bytes = std::fs::read(&store).expect("store");
            assert!(bytes.len() > 4096, "a store with pages");
            for b in &mut bytes[4096..] {
                *b = 0xa5;
            }
            std::fs::write(&store, bytes).expect("damage");
        }
        let c = Collector::start_in(&data, &[]).expect("starts despite a corrupt store");
        assert_eq!(
            c.metric("scalewise_collector_sqlite_corrupt_total", &[])
                .ok(),
            Some(1.0),
            "{damage}"
        );
        let aside = std::fs::read_dir(&data)
            .expect("list")
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("scalewise.sqlite.corrupt-")
                    && !name.ends_with("-wal")
                    && !name.ends_with("-shm")
            })
            .count();
        assert_eq!(
            aside,
            i + 1,
            "{damage}: the damaged file is kept for inspection"
        );
        assert_eq!(c.get("/readyz").expect("ready").0, 200);
        let p = Profile::dependency_bound();
        let inst = Instance::new("after", "a-1", 2, p.clone(), now_ns() - 20 * S);
        export_for(&c, &inst, 3);
        wait_until(
            Duration::from_secs(10),
            "a flush into the new store",
            || c.metric("scalewise_collector_pending_snapshots", &[]).ok() == Some(0.0),
        );
        assert_eq!(
            c.metric(
                "scalewise_collector_sqlite_write_errors_total",
                &[("reason", "corrupt")]
            )
            .unwrap_or(0.0),
            0.0
        );
        assert_steady(&c, "after", "1m", &p);
        // Sleeping a second between damages keeps the set-aside names apart.
        std::thread::sleep(Duration::from_millis(1100));
    }
}

/// `inst`'s counters at the real time `real_ns`, stamped `stamp_ns` by a clock that jumped.
fn body_stamped(inst: &Instance, real_ns: u64, stamp_ns: u64) -> Vec<u8> {
    let b = inst
        .profile
        .budget(real_ns.saturating_sub(inst.start_ns) as f64 / 1e9);
    let attrs = otlp_request::resource_attrs(&inst.service, &inst.id, Some(inst.pid));
    otlp_request::encode(&otlp_request::request(&attrs, &b, inst.start_ns, stamp_ns))
}

#[test]
fn clock_jumps_are_dropped_and_counted_and_leave_other_services_alone() {
    let c = Collector::start(&[]).expect("collector");
    let now = now_ns();
    // `jumpy` has run for two hours; `steady` alongside, with a good clock.
    let jumpy = Instance::new("jumpy", "jumpy-1", 31, Profile::cpu_bound(), now - 7200 * S);
    let steady = Instance::new(
        "steady",
        "steady-1",
        32,
        Profile::dependency_bound(),
        now - 60 * S,
    );
    for k in (1..=6u64).rev() {
        jumpy.send(&c, now - k * 10 * S).expect("jumpy");
        steady.send(&c, now - k * 10 * S).expect("steady");
    }
    let steady_before = assert_steady(&c, "steady", "1m", &steady.profile);
    let jumpy_before = assert_steady(&c, "jumpy", "1m", &jumpy.profile);
    let rejected = |reason: &str| {
        c.metric(
            "scalewise_collector_points_rejected_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    // The clock steps back an hour for three exports, then forward a day for three.
    for (k, offset) in [
        (0, -3600i64),
        (1, -3600),
        (2, -3600),
        (3, 86_400),
        (4, 86_400),
        (5, 86_400),
    ] {
        let real = now_ns() + k * S;
        let stamp = (real as i64 + offset * S as i64) as u64;
        let (status, body) = c
            .post(
                "application/x-protobuf",
                None,
                &body_stamped(&jumpy, real, stamp),
            )
            .expect("post");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        steady.send(&c, now_ns()).expect("steady");
    }
    let back = rejected("out_of_order");
    let ahead = rejected("future_timestamp");
    eprintln!("clock jumps: {back} points refused as out of order, {ahead} as in the future");
    assert!(back > 0.0, "the hour back is refused and counted");
    assert!(ahead > 0.0, "the day ahead is refused and counted");
    // The jumps changed no window: both services answer as before (plus the new real exports).
    let jumpy_after = assert_steady(&c, "jumpy", "1m", &jumpy.profile);
    let steady_after = assert_steady(&c, "steady", "1m", &steady.profile);
    for (before, after) in [
        (&jumpy_before, &jumpy_after),
        (&steady_before, &steady_after),
    ] {
        assert_eq!(before["verdict"], after["verdict"]);
        assert_eq!(before["breakdown"], after["breakdown"]);
    }
    // A window reaching back over the hour the clock jumped to holds no stray snapshot.
    let hour = c.json("/api/v1/services/jumpy?window=2h").expect("2h");
    assert_eq!(hour["verdict"], jumpy_before["verdict"], "{hour:#}");
    let rate = hour["requests"]["rate_per_s"].as_f64().unwrap_or(0.0);
    assert!((rate / jumpy.profile.rate - 1.0).abs() < 0.02, "{hour:#}");
    // Its exports with a good clock span 50 s (t-60 s to t-10 s). A snapshot an hour back with
    // the counters of now would read as a reset before them and count the two hours again.
    let sampled = hour["window_s"].as_f64().unwrap_or(0.0);
    assert!((sampled - 50.0).abs() < 1.0, "window {sampled}: {hour:#}");
    // The clock is right again: its exports count.
    jumpy.send(&c, now_ns()).expect("jumpy, corrected");
    assert_steady(&c, "jumpy", "1m", &jumpy.profile);
}

#[test]
fn a_target_that_becomes_unreadable_mid_window_is_named_and_counted() {
    if !root() {
        return;
    }
    let _x = exclusive();
    // The service and the agent are both `nobody`: the agent reads the service's /proc as its
    // owner, until the service makes itself non-dumpable after 2 s.
    let svc = Service::workload_as(
        &as_nobody(),
        &[
            "serve",
            "--port",
            "0",
            "--workers",
            "4",
            "--cpu-ms",
            "1",
            "--undumpable-after-s",
            "2.5",
        ],
    )
    .expect("service");
    let _load = scalewise_e2e::harness::Load::start(svc.port, 4, 10.0, 0.0).expect("load");
    let mut agent_as: Vec<String> = root_with_only(&[], false);
    agent_as.pop(); // "--"
    agent_as.extend(["--reuid=65534", "--regid=65534", "--clear-groups", "--"].map(String::from));
    let out = wrapped(&agent_as, agent_bin())
        .args(["diagnose", "--pid", &svc.pid.to_string(), "--duration", "6"])
        .args(["--format", "json"])
        .output()
        .expect("agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["services"][0];
    let evidence = d["evidence"].to_string();
    eprintln!("unreadable mid-window: {} {evidence}", d["verdict"]);
    assert!(evidence.contains(&format!("/proc/{}/", svc.pid)), "{d:#}");
    assert!(evidence.contains("CAP_SYS_PTRACE"), "{d:#}");
    assert!(evidence.contains("became unreadable"), "{d:#}");
    assert!(stderr.contains("CAP_SYS_PTRACE"), "{stderr}");
    let denied: u64 = v["agent"]["sampler_errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "permission_denied")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    assert!(denied > 0, "{:#}", v["agent"]);
    // What was gathered before is reported, not a zero.
    assert!(
        d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{d:#}"
    );
    assert!(
        d["cpu"]["used_cores"].as_f64().unwrap_or(0.0) > 0.0,
        "{d:#}"
    );
}

/// Two network namespaces joined by a veth pair: the agent's side (with its service) and the
/// collector's. Both are made here and deleted on drop; nothing else is reachable from either.
struct Partitionable {
    agent: NetNs,
    collector: NetNs,
    collector_if: String,
}

const AGENT_ADDR: &str = "198.18.0.1";
const COLLECTOR_ADDR: &str = "198.18.0.2";

impl Partitionable {
    fn new() -> Partitionable {
        let agent = NetNs::new().expect("agent netns");
        let collector = NetNs::new().expect("collector netns");
        let tag = std::process::id() % 100_000;
        let (a_if, c_if) = (format!("swa{tag}"), format!("swc{tag}"));
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .expect("ip")
                .success();
            assert!(ok, "ip {args:?}");
        };
        ip(&[
            "link",
            "add",
            &a_if,
            "netns",
            &agent.name,
            "type",
            "veth",
            "peer",
            "name",
            &c_if,
            "netns",
            &collector.name,
        ]);
        ip(&[
            "-n",
            &agent.name,
            "addr",
            "add",
            &format!("{AGENT_ADDR}/30"),
            "dev",
            &a_if,
        ]);
        ip(&[
            "-n",
            &collector.name,
            "addr",
            "add",
            &format!("{COLLECTOR_ADDR}/30"),
            "dev",
            &c_if,
        ]);
        ip(&["-n", &agent.name, "link", "set", &a_if, "up"]);
        ip(&["-n", &collector.name, "link", "set", &c_if, "up"]);
        Partitionable {
            agent,
            collector,
            collector_if: c_if,
        }
    }

    /// Cuts (or restores) the link: the collector's end goes down, the agent's packets go
    /// nowhere.
    fn link(&self, up: bool) {
        let ok = Command::new("ip")
            .args([
                "-n",
                &self.collector.name,
                "link",
                "set",
                &self.collector_if,
            ])
            .arg(if up { "up" } else { "down" })
            .status()
            .expect("ip")
            .success();
        assert!(ok);
    }
}

/// `GET path` from inside `ns` (the test itself is outside both namespaces).
fn ns_get(ns: &NetNs, addr: &str, path: &str) -> Option<String> {
    let out = ns
        .command(workload_bin())
        .args(["get", "--target", addr, "--path", path])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_partition_between_agent_and_collector_loses_no_request_time() {
    if !root() {
        return;
    }
    let _x = exclusive();
    let net = Partitionable::new();
    let data = TempDir::new("faults-partition").expect("temp dir");
    let cport = free_port();
    let caddr = format!("{COLLECTOR_ADDR}:{cport}");
    let _collector = Proc(
        net.collector
            .command(collector_bin())
            .args(["--listen", &caddr, "--insecure", "--flush-interval", "1s"])
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("collector"),
    );
    wait_until(Duration::from_secs(30), "the collector", || {
        ns_get(&net.collector, &caddr, "/readyz").is_some()
    });
    let svc = net
        .agent
        .workload(&[
            "serve",
            "--port",
            "0",
            "--workers",
            "4",
            "--cpu-ms",
            "1",
            "--lock-ms",
            "2",
        ])
        .expect("service");
    let _load = net.agent.load(svc.port, 3, 58.0, &[]).expect("load");
    let mport = free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let collector_url = format!("http://{caddr}");
    let _agent = RunAgent::start_with(
        net.agent.command(agent_bin()),
        &[
            "--pid",
            &svc.pid.to_string(),
            "--service",
            "partitioned",
            "--collector",
            &collector_url,
            "--export-interval",
            "2",
            "--discovery-interval",
            "1",
            "--metrics-listen",
            &maddr,
        ],
    )
    .expect("agent");
    let answer = |window: &str| -> Option<serde_json::Value> {
        let body = ns_get(
            &net.collector,
            &caddr,
            &format!("/api/v1/services/partitioned?window={window}"),
        )?;
        serde_json::from_str(&body).ok()
    };
    wait_until(Duration::from_secs(30), "the first exports", || {
        answer("1m").is_some_and(|d| d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0) > 0.0)
    });
    let truth_at = || net.agent.truth(svc.port).expect("truth");
    let t0 = truth_at();
    let started = Instant::now();
    let agent_metrics = || ns_get(&net.agent, &maddr, "/metrics").unwrap_or_default();
    let exports = |text: &str, result: &str| {
        value(text, "scalewise_agent_exports_total", &[("result", result)]).unwrap_or(0.0)
    };
    let samples = "scalewise_agent_samples_total";
    let before = agent_metrics();

    net.link(false);
    std::thread::sleep(Duration::from_secs(20));
    let during = agent_metrics();
    net.link(true);
    assert!(
        exports(&during, "failed") > exports(&before, "failed"),
        "export failures counted:\n{during}"
    );
    assert!(
        sum(&during, samples) > sum(&before, samples),
        "sampling went on:\n{during}"
    );
    // The first export after the partition carries everything since (cumulative counters).
    let ok_during = exports(&during, "ok");
    wait_until(
        Duration::from_secs(30),
        "an export after the partition",
        || exports(&agent_metrics(), "ok") > ok_during + 1.0,
    );
    let t1 = truth_at();
    let span = started.elapsed().as_secs_f64();
    let truth = t1.delta(&t0);
    let window = format!("{}s", span.ceil() as u64);
    let d = answer(&window).expect("answer over the partition");
    let rate = d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0);
    let in_flight = d["requests"]["mean_in_flight"].as_f64().unwrap_or(0.0);
    let (true_rate, true_in_flight) = (
        truth.requests / truth.wall_s,
        truth.latency_s / truth.wall_s,
    );
    eprintln!(
        "partition: {span:.0}s window, rate {rate:.1} (truth {true_rate:.1}), in flight {in_flight:.2} (truth {true_in_flight:.2}), exports failed {}",
        exports(&during, "failed")
    );
    // Without cumulative counters the 20 s outage would be missing: about half of the window.
    assert!((rate / true_rate - 1.0).abs() < 0.2, "{d:#}");
    assert!((in_flight / true_in_flight - 1.0).abs() < 0.2, "{d:#}");
}
