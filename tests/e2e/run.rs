//! `scalewise-agent run` end to end: real workloads under load, the agent as a long-running
//! process exporting OTLP to a test receiver built on `opentelemetry-proto`, and the one-shot
//! `diagnose` of the same processes over the same window as the reference.
//!
//! The window of the exported counters is the difference of two received cumulative snapshots
//! (`Budget::since`) run through the same engine (`engine::diagnose`): same verdict, shares
//! within 0.05.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use scalewise_core::engine::{diagnose, Thresholds};
use scalewise_core::Budget;
use scalewise_e2e::harness::{
    agent_bin, exclusive, free_port, root, workload_bin, Load, NetNs, RunAgent, Service, TempDir,
};
use scalewise_e2e::metrics::{scrape, value};
use scalewise_e2e::receiver::{Receiver, Snapshot};

const SHARE_TOLERANCE: f64 = 0.05;

/// A workload service with environment variables (through `env`, which execs: same pid).
fn service_with_env(env: &[&str], args: &[&str]) -> Service {
    let bin = workload_bin().to_string_lossy().into_owned();
    let mut all: Vec<&str> = env.to_vec();
    all.push(&bin);
    all.extend(args);
    Service::spawn("env", &all).expect("service")
}

/// The snapshot of `service` taken (SDK collection time) closest to `at`.
fn closest(snaps: &[Snapshot], service: &str, at: SystemTime) -> Snapshot {
    let dist = |s: &Snapshot| match s.taken().duration_since(at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    snaps
        .iter()
        .filter(|s| s.service() == service)
        .min_by_key(|s| dist(s))
        .cloned()
        .expect("a snapshot of the service")
}

/// Shares and verdict of the received counters over [t0, t1] against a diagnose JSON.
fn assert_same(label: &str, window: &Budget, service: &str, pids: &[u32], d: &serde_json::Value) {
    let mine = serde_json::to_value(diagnose(service, pids, window, &Thresholds::default()))
        .expect("json");
    let mut worst = 0.0f64;
    for c in ["cpu", "gc", "cpu_wait", "downstream", "local_wait"] {
        let a = mine["breakdown"][c].as_f64().unwrap_or(f64::NAN);
        let b = d["breakdown"][c].as_f64().unwrap_or(f64::NAN);
        worst = worst.max((a - b).abs());
        assert!(
            (a - b).abs() <= SHARE_TOLERANCE,
            "{label}: {c} share from run {a:.3} vs diagnose {b:.3}\nrun: {mine:#}\ndiagnose: {d:#}"
        );
    }
    eprintln!(
        "{label}: verdict {} / {}, largest share difference {worst:.3}",
        mine["verdict"], d["verdict"]
    );
    assert_eq!(
        mine["verdict"], d["verdict"],
        "{label}: verdict\nrun: {mine:#}\ndiagnose: {d:#}"
    );
}

/// Runs `diagnose` (through `cmd`) for `duration_s` while `run` exports, and compares the run's
/// window [diagnose start, diagnose end] with it.
fn compare_with_diagnose(
    label: &str,
    receiver: &Receiver,
    service: &str,
    pids: &[u32],
    diagnose_cmd: impl FnOnce(f64) -> serde_json::Value,
    duration_s: f64,
) {
    let d = diagnose_cmd(duration_s);
    let t1 = Instant::now();
    let end = SystemTime::now();
    let snaps = receiver
        .wait_for(Duration::from_secs(15), |s| {
            s.iter()
                .any(|s| s.service() == service && s.received > t1 + Duration::from_millis(300))
        })
        .expect("exports after the window");
    // diagnose's window: `window_s` seconds ending as it printed its report (just before t1).
    let window_s = d["window_s"].as_f64().unwrap_or(duration_s);
    let s0 = closest(&snaps, service, end - Duration::from_secs_f64(window_s));
    let s1 = closest(&snaps, service, end);
    assert_eq!(s0.instance(), s1.instance(), "{label}: one instance");
    let window = s1.budget().since(&s0.budget()).expect("no reset");
    assert!(
        window.window_s > duration_s * 0.6,
        "{label}: window {:.1}s",
        window.window_s
    );
    assert_same(label, &window, service, pids, &d);
}

/// Socket rounds every 50 ms for both `run` and `diagnose` in the comparisons: two agents sample
/// independently, and at the default 200 ms the sampling noise of one share over a 10 s window
/// (a few hundred connection samples) is already a few points.
const FAST: &str = "50";

fn diagnose_json(pids: &[u32], duration_s: f64) -> serde_json::Value {
    scalewise_e2e::harness::diagnose(pids, duration_s, &["--sample-interval-ms", FAST])
        .expect("diagnose")
}

#[test]
fn run_exports_what_diagnose_sees_over_the_same_window() {
    let _x = exclusive();
    let backend = Service::workload(&["backend", "--ms", "15"]).expect("backend");
    let svc = Service::workload(&[
        "serve",
        "--workers",
        "8",
        "--cpu-ms",
        "2",
        "--backend",
        &backend.addr(),
        "--backend-ms",
        "15",
    ])
    .expect("service");
    let _load = Load::start(svc.port, 4, 40.0, 0.0).expect("load");
    let receiver = Receiver::start().expect("receiver");
    let token_dir = TempDir::new("token").expect("temp dir");
    let token = token_dir.join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let agent = RunAgent::start(&[
        "--pid",
        &svc.pid.to_string(),
        "--service",
        "orders",
        "--collector",
        &receiver.url(),
        "--collector-token-file",
        &token.to_string_lossy(),
        "--export-interval",
        "1",
        "--sample-interval-ms",
        FAST,
    ])
    .expect("start agent");
    receiver
        .wait_for(Duration::from_secs(15), |s| s.len() >= 2)
        .expect("first exports");
    compare_with_diagnose(
        "single",
        &receiver,
        "orders",
        &[svc.pid],
        |d| diagnose_json(&[svc.pid], d),
        10.0,
    );

    // The wire: cumulative monotonic sums with one start time, the resource attributes, gzip,
    // the bearer token.
    let snaps = receiver.of_service("orders");
    let first = &snaps[0];
    let last = snaps.last().expect("snapshots");
    assert!(last.gzip && last.authorization.as_deref() == Some("Bearer s3cret"));
    assert_eq!(first.resource["process.pid"], svc.pid.to_string());
    assert!(first.resource.contains_key("host.name"));
    assert_eq!(first.instance(), last.instance());
    assert_eq!(first.start_unix_nano(), last.start_unix_nano());
    for p in &last.points {
        let gauge = p.metric == "scalewise.memory.rss" || p.metric == "scalewise.note";
        assert_eq!(p.cumulative_sum, !gauge, "{}", p.metric);
        if !gauge {
            assert!(p.start_unix_nano > 0 && p.start_unix_nano <= p.time_unix_nano);
        }
    }
    assert!(last.value("scalewise.memory.rss").unwrap_or(0.0) > 1e6);
    assert!(last.budget().requests > first.budget().requests);

    // SIGTERM: one last export, a clean exit.
    let before = receiver.snapshots().len();
    let (ok, log) = agent.stop();
    assert!(ok, "{log}");
    assert!(receiver.snapshots().len() > before, "no last export\n{log}");
    assert!(log.contains("watching service instance"), "{log}");
}

#[test]
fn a_service_of_two_processes_is_one_instance() {
    let _x = exclusive();
    // CPU and lock waits, so the shares are a mix and the comparison means something.
    let args = ["serve", "--workers", "4", "--cpu-ms", "1", "--lock-ms", "4"];
    let a = Service::workload(&args).expect("a");
    let b = Service::workload(&args).expect("b");
    let _la = Load::start(a.port, 2, 30.0, 1.0).expect("load a");
    let _lb = Load::start(b.port, 2, 30.0, 1.0).expect("load b");
    let receiver = Receiver::start().expect("receiver");
    let _agent = RunAgent::start(&[
        "--pid",
        &a.pid.to_string(),
        "--pid",
        &b.pid.to_string(),
        "--service",
        "pair",
        "--collector",
        &receiver.url(),
        "--export-interval",
        "1",
        "--sample-interval-ms",
        FAST,
    ])
    .expect("start agent");
    receiver
        .wait_for(Duration::from_secs(15), |s| s.len() >= 2)
        .expect("first exports");
    compare_with_diagnose(
        "two processes",
        &receiver,
        "pair",
        &[a.pid, b.pid],
        |d| diagnose_json(&[a.pid, b.pid], d),
        8.0,
    );
    let instances: std::collections::BTreeSet<String> = receiver
        .of_service("pair")
        .iter()
        .map(|s| s.instance().to_string())
        .collect();
    assert_eq!(instances.len(), 1, "{instances:?}");
}

#[test]
fn one_agent_watches_two_services_named_by_their_environment() {
    let _x = exclusive();
    let tag = format!("sw-two-{}", std::process::id());
    let backend = Service::workload(&["backend", "--ms", "20"]).expect("backend");
    let alpha = service_with_env(
        &["OTEL_SERVICE_NAME=alpha"],
        &["serve", "--workers", "4", "--cpu-ms", "4", "--tag", &tag],
    );
    let beta = service_with_env(
        &[
            "OTEL_RESOURCE_ATTRIBUTES=service.name=beta,service.namespace=shop",
            "POD_NAME=beta-0",
        ],
        &[
            "serve",
            "--workers",
            "8",
            "--backend",
            &backend.addr(),
            "--backend-ms",
            "20",
            "--tag",
            &tag,
        ],
    );
    let _la = Load::start(alpha.port, 2, 30.0, 2.0).expect("load");
    let _lb = Load::start(beta.port, 4, 30.0, 0.0).expect("load");
    let receiver = Receiver::start().expect("receiver");
    let _agent = RunAgent::start(&[
        "--process",
        &format!("serve .*tag {tag}$"),
        "--collector",
        &receiver.url(),
        "--export-interval",
        "1",
        "--discovery-interval",
        "1",
        "--sample-interval-ms",
        FAST,
    ])
    .expect("start agent");
    receiver
        .wait_for(Duration::from_secs(20), |s| {
            s.iter().any(|s| s.service() == "alpha") && s.iter().any(|s| s.service() == "beta")
        })
        .expect("both services");
    // Both windows at once, against two diagnoses over the same seconds.
    let (ap, bp) = (alpha.pid, beta.pid);
    let timed =
        |pid: u32| std::thread::spawn(move || (diagnose_json(&[pid], 8.0), SystemTime::now()));
    let (da, db) = (timed(ap), timed(bp));
    let (da, db) = (da.join().expect("alpha"), db.join().expect("beta"));
    let t1 = Instant::now();
    let snaps = receiver
        .wait_for(Duration::from_secs(15), |s| {
            s.iter()
                .filter(|s| s.received > t1 + Duration::from_millis(300))
                .count()
                >= 2
        })
        .expect("exports after the window");
    for (name, pid, (d, end)) in [("alpha", ap, &da), ("beta", bp, &db)] {
        let window_s = d["window_s"].as_f64().unwrap_or(8.0);
        let s0 = closest(&snaps, name, *end - Duration::from_secs_f64(window_s));
        let s1 = closest(&snaps, name, *end);
        let window = s1.budget().since(&s0.budget()).expect("no reset");
        assert_same(name, &window, name, &[pid], d);
    }

    let beta_snap = receiver.of_service("beta").pop().expect("beta");
    assert_eq!(beta_snap.resource["service.namespace"], "shop");
    assert_eq!(beta_snap.resource["k8s.pod.name"], "beta-0");
    assert_ne!(
        receiver.of_service("alpha")[0].instance(),
        beta_snap.instance()
    );
}

/// Namespaces, `ns_last_pid` and dropping capabilities need root; elsewhere those tests say so
/// and pass (as `tests/e2e/cli.rs` does).
const ROOT_FOR: &str = "for namespaces, ns_last_pid and dropping capabilities";

#[test]
fn sidecar_mode_finds_the_service_by_its_listening_socket() {
    if !root(ROOT_FOR) {
        return;
    }
    let _x = exclusive();
    let ns = NetNs::new().expect("netns (needs root)");
    let svc = ns
        .workload(&["serve", "--workers", "4", "--cpu-ms", "3"])
        .expect("service");
    let _load = ns.load(svc.port, 3, 40.0, &[]).expect("load");
    let receiver = Receiver::start_in_netns(&ns.name).expect("receiver in the pod");
    // Like a sidecar with shareProcessNamespace: no target given, the pod's network namespace.
    let _agent = RunAgent::start_with(
        ns.command(agent_bin()),
        &[
            "--collector",
            &receiver.url(),
            "--export-interval",
            "1",
            "--discovery-interval",
            "1",
        ],
    )
    .expect("start agent");
    let snaps = receiver
        .wait_for(Duration::from_secs(20), |s| {
            s.iter()
                .any(|s| s.resource.get("process.pid") == Some(&svc.pid.to_string()))
        })
        .expect("the service found by its listener");
    let service = snaps
        .iter()
        .find(|s| s.resource.get("process.pid") == Some(&svc.pid.to_string()))
        .map(|s| s.service().to_string())
        .expect("service name");
    // No OTEL_SERVICE_NAME: the command name.
    assert!(service.starts_with("scalewise-work"), "{service}");
    let pids = [svc.pid];
    compare_with_diagnose(
        "sidecar",
        &receiver,
        &service,
        &pids,
        |d| ns.diagnose(&pids, d).expect("diagnose in the pod"),
        8.0,
    );
}

/// Pids of instances of `service`: (instance id, process.pid, start time, sampled seconds).
fn instances(r: &Receiver, service: &str) -> Vec<(String, String, u64, f64)> {
    let mut out: Vec<(String, String, u64, f64)> = Vec::new();
    for s in r.of_service(service) {
        let v = s.value("scalewise.sampled.time").unwrap_or(0.0);
        match out.iter_mut().find(|o| o.0 == s.instance()) {
            Some(o) => o.3 = o.3.max(v),
            None => out.push((
                s.instance().to_string(),
                s.resource.get("process.pid").cloned().unwrap_or_default(),
                s.start_unix_nano(),
                v,
            )),
        }
    }
    out
}

#[test]
fn process_regex_follows_a_restart_and_never_merges_a_reused_pid() {
    if !root(ROOT_FOR) {
        return;
    }
    let _x = exclusive();
    let tag = format!("sw-restart-{}", std::process::id());
    let args = ["serve", "--workers", "2", "--cpu-ms", "1", "--tag", &tag];
    let first = Service::workload(&args).expect("first");
    let receiver = Receiver::start().expect("receiver");
    let _agent = RunAgent::start(&[
        "--process",
        &format!("tag {tag}$"),
        "--service",
        "restarts",
        "--collector",
        &receiver.url(),
        "--export-interval",
        "1",
        "--discovery-interval",
        "1",
    ])
    .expect("start agent");
    receiver
        .wait_for(Duration::from_secs(15), |s| {
            s.iter().filter(|s| s.service() == "restarts").count() >= 2
        })
        .expect("first instance");
    let old_pid = first.pid;
    drop(first);

    // The restart gets the same pid (ns_last_pid, as root): the harshest case of pid reuse.
    let mut second = None;
    for _ in 0..50 {
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (old_pid - 1).to_string());
        let s = Service::workload(&args).expect("restart");
        if s.pid == old_pid {
            second = Some(s);
            break;
        }
    }
    let second = second.expect("could not get the same pid back (ns_last_pid needs root)");
    receiver
        .wait_for(Duration::from_secs(20), |_| {
            instances(&receiver, "restarts")
                .iter()
                .filter(|i| i.1 == old_pid.to_string())
                .count()
                >= 2
        })
        .expect("a second instance");
    std::thread::sleep(Duration::from_secs(2));
    // Attempts that did not get the pid back may have been seen for a moment: keep the pid's.
    let inst: Vec<_> = instances(&receiver, "restarts")
        .into_iter()
        .filter(|i| i.1 == old_pid.to_string())
        .collect();
    assert_eq!(inst.len(), 2, "{inst:?}");
    let (a, b) = (&inst[0], &inst[1]);
    // Same pid, two processes: two instances, two start times, counting from zero again.
    assert_eq!(second.pid, old_pid);
    assert_ne!(a.0, b.0);
    assert!(b.2 > a.2, "the new instance starts later");
    let b_first = receiver
        .of_service("restarts")
        .into_iter()
        .find(|s| s.instance() == b.0)
        .and_then(|s| s.value("scalewise.sampled.time"))
        .unwrap_or(f64::NAN);
    assert!(
        b_first < a.3,
        "the new instance counts from zero: {b_first} vs {}",
        a.3
    );
}

#[test]
fn a_collector_outage_loses_nothing_and_memory_stays_flat() {
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "4", "--cpu-ms", "2"]).expect("service");
    let _load = Load::start(svc.port, 2, 90.0, 1.0).expect("load");
    let mut receiver = Receiver::start().expect("receiver");
    let prom = free_port();
    let agent = RunAgent::start(&[
        "--pid",
        &svc.pid.to_string(),
        "--service",
        "outage",
        "--collector",
        &receiver.url(),
        "--export-interval",
        "1",
        "--metrics-listen",
        &format!("127.0.0.1:{prom}"),
    ])
    .expect("start agent");
    receiver
        .wait_for(Duration::from_secs(15), |s| s.len() >= 3)
        .expect("exports before the outage");
    let outage_s = 45.0;
    receiver.stop();
    let before = receiver.snapshots().pop().expect("last before");
    let rss_start = agent.rss_kib();
    std::thread::sleep(Duration::from_secs_f64(outage_s / 2.0));
    let rss_mid = agent.rss_kib();
    std::thread::sleep(Duration::from_secs_f64(outage_s / 2.0));
    let rss_end = agent.rss_kib();
    let text = scrape(prom).expect("scrape");
    assert!(
        value(
            &text,
            "scalewise_agent_exports_total",
            &[("result", "failed")]
        )
        .unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    assert!(
        value(&text, "scalewise_sampled_seconds_total", &[]).unwrap_or(0.0) > outage_s,
        "{text}"
    );
    assert!(
        text.contains("scalewise_agent_resident_memory_bytes"),
        "{text}"
    );
    receiver.restart().expect("collector back");
    let n = receiver.snapshots().len();
    let after = receiver
        .wait_for(Duration::from_secs(20), |s| s.len() > n)
        .expect("exports after the outage")
        .pop()
        .expect("first after");
    assert_eq!(before.instance(), after.instance());
    // Cumulative counters: the first export after the outage covers it in full.
    let gap = after.received.duration_since(before.received).as_secs_f64();
    let covered = after.budget().since(&before.budget()).expect("no reset");
    // (The export that lands first after the outage may carry a snapshot taken just before the
    // collector came back: a couple of seconds of slack, never the outage itself.)
    assert!(
        covered.window_s > outage_s - 3.0 && covered.window_s > gap - 3.0,
        "sampled {:.1}s over a {gap:.1}s gap",
        covered.window_s
    );
    assert!(covered.requests > 0.0 && covered.request_s > 0.0);
    // Memory does not grow with the outage (generous bound; the figure is in BENCHMARKS.md).
    assert!(
        rss_end < rss_start + 4096 && rss_mid < rss_start + 4096,
        "RSS {rss_start} -> {rss_mid} -> {rss_end} KiB"
    );
    let log = agent.stderr();
    let failures = log.matches("export to the collector failed").count();
    assert!(
        (1..=3).contains(&failures),
        "failure logs are rate-limited: {failures}\n{log}"
    );
    eprintln!("outage {outage_s}s: agent RSS {rss_start} -> {rss_mid} -> {rss_end} KiB");
}

#[test]
fn per_host_mode_reaches_other_network_namespaces_or_says_why_not() {
    if !root(ROOT_FOR) {
        return;
    }
    let _x = exclusive();
    let ns = NetNs::new().expect("netns (needs root)");
    let tag = format!("sw-pod-{}", std::process::id());
    let svc = ns
        .workload(&["serve", "--workers", "4", "--cpu-ms", "2", "--tag", &tag])
        .expect("service in its own network namespace");
    let _load = ns
        .load(svc.port, 2, 60.0, &["--think-ms", "1"])
        .expect("load");
    let receiver = Receiver::start().expect("receiver");
    let regex = format!("tag {tag}$");
    let args = [
        "--all-namespaces",
        "--process",
        regex.as_str(),
        "--service",
        "pod",
        "--collector",
        &receiver.url(),
        "--export-interval",
        "1",
        "--discovery-interval",
        "1",
    ];

    // With CAP_SYS_ADMIN (root): the service's sockets are read from inside its namespace.
    let agent = RunAgent::start(&args).expect("start agent");
    let snaps = receiver
        .wait_for(Duration::from_secs(20), |s| {
            s.iter()
                .filter(|s| s.service() == "pod")
                .any(|s| s.budget().requests > 20.0)
        })
        .expect("requests seen through the namespace's own netlink socket");
    let b = snaps.last().expect("snapshot").budget();
    assert!(b.request_s > 0.0);
    drop(agent);

    // Without it: sampled what it can, the service reported as skipped with the reason.
    let prom = free_port();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"])
        .arg(agent_bin());
    let listen = format!("127.0.0.1:{prom}");
    let mut with_prom: Vec<&str> = args.to_vec();
    with_prom.extend(["--metrics-listen", &listen]);
    let agent = RunAgent::start_with(cmd, &with_prom).expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut text = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(t) = scrape(prom) {
            text = t;
            if text.contains("scalewise_agent_skipped_services{") {
                break;
            }
        }
    }
    assert_eq!(
        value(
            &text,
            "scalewise_agent_skipped_services",
            &[("reason", "no_cap_sys_admin")]
        ),
        Some(1.0),
        "{text}\n{}",
        agent.stderr()
    );
    let (_, log) = agent.stop();
    assert!(
        log.contains("skipped") && log.contains("CAP_SYS_ADMIN"),
        "{log}"
    );
}

#[test]
fn run_explains_itself_and_refuses_bad_flags() {
    let out = Command::new(agent_bin())
        .args(["run", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--pid",
        "--process",
        "--service",
        "--collector",
        "--export-interval",
        "--metrics-listen",
        "--all-namespaces",
        "CAP_SYS_ADMIN",
        "OTEL_SERVICE_NAME",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
    for (args, says) in [
        (vec!["run", "--pid", "1"], "--collector"),
        (
            vec!["run", "--pid", "1", "--collector", "host:4318"],
            "http://",
        ),
        (
            vec!["run", "--process", "(", "--collector", "http://h:1"],
            "--process",
        ),
        (
            vec![
                "run",
                "--pid",
                "1",
                "--process",
                "x",
                "--collector",
                "http://h:1",
            ],
            "--process",
        ),
        (
            vec![
                "run",
                "--pid",
                "1",
                "--collector",
                "http://h:1",
                "--export-interval",
                "0",
            ],
            "--export-interval",
        ),
    ] {
        let out = Command::new(agent_bin()).args(&args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
