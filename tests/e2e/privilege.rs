//! Least privilege, tested: the agent and the collector with exactly the capabilities
//! docs/deploy.md asks for, and each one taken away. Every test needs root (to start services as
//! another user and to drop capabilities with `setpriv`) and is skipped without it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scalewise_e2e::collector::{now_ns, Collector, Instance, Profile};
use scalewise_e2e::harness::{
    agent_bin, as_nobody, exclusive, free_port, root_with_only, stop, wrapped, Load, NetNs,
    RunAgent, Service, TempDir,
};
use scalewise_e2e::metrics::{scrape, sum, value};

fn root() -> bool {
    scalewise_e2e::harness::root("to run processes as other users and drop capabilities")
}

/// The real uid of a process, from `/proc/PID/status`.
fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// What a child started through `prefix` holds: its effective capabilities, and whether it can
/// create a file in the system temp dir.
fn inside(prefix: &[String]) -> (u64, bool) {
    let probe = std::env::temp_dir().join(format!("scalewise-probe-{}", std::process::id()));
    let out = wrapped(prefix, "sh")
        .arg("-c")
        .arg(format!(
            "grep CapEff /proc/self/status; touch {} 2>/dev/null && echo writable",
            probe.display()
        ))
        .output()
        .expect("probe");
    let _ = std::fs::remove_file(&probe);
    let text = String::from_utf8_lossy(&out.stdout);
    let caps = text
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    (caps, text.contains("writable"))
}

/// A CPU-using thread-per-connection service running as `nobody`, under closed-loop load.
fn other_users_service(load_s: f64) -> (Service, Load) {
    let svc = Service::workload_as(
        &as_nobody(),
        &["serve", "--port", "0", "--workers", "4", "--cpu-ms", "2"],
    )
    .expect("service as nobody");
    assert_eq!(uid_of(svc.pid), Some(65534), "the service runs as nobody");
    let load = Load::start(svc.port, 4, load_s, 0.0).expect("load");
    (svc, load)
}

/// `diagnose --format json` of `pid` for `secs`, run through `prefix`: (exit status, stdout as
/// JSON, stderr).
fn diagnose_through(
    prefix: &[String],
    pid: u32,
    secs: u32,
) -> (std::process::ExitStatus, serde_json::Value, String) {
    let out = wrapped(prefix, agent_bin())
        .args(["diagnose", "--pid", &pid.to_string(), "--duration"])
        .arg(secs.to_string())
        .args(["--format", "json"])
        .output()
        .expect("agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agent printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status, json, stderr)
}

#[test]
fn ptrace_and_dac_read_search_alone_diagnose_another_users_service_on_a_read_only_root() {
    if !root() {
        return;
    }
    let _x = exclusive();
    let agent = root_with_only(&["sys_ptrace", "dac_read_search"], true);
    // The sandbox is what it claims: exactly these two capabilities, nothing writable.
    let (caps, writable) = inside(&agent);
    assert_eq!(
        caps,
        (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH),
        "CapEff {caps:x}"
    );
    assert!(!writable, "the agent's root should be read-only");

    let (svc, _load) = other_users_service(10.0);
    std::thread::sleep(Duration::from_millis(500));
    let (status, v, stderr) = diagnose_through(&agent, svc.pid, 5);
    assert!(status.success(), "{status}: {stderr}");
    let d = &v["services"][0];
    eprintln!(
        "as root with 2 capabilities on a read-only root: {} at {:.0} req/s, {:.2} cores",
        d["verdict"], d["requests"]["rate_per_s"], d["cpu"]["used_cores"]
    );
    assert_ne!(d["verdict"], "insufficient_data", "{d:#}");
    assert!(
        d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0) > 50.0,
        "{d:#}"
    );
    assert!(
        d["cpu"]["used_cores"].as_f64().unwrap_or(0.0) > 0.0,
        "{d:#}"
    );
    let evidence = d["evidence"].to_string().to_lowercase();
    assert!(
        !evidence.contains("permission")
            && !evidence.contains("cap_")
            && !evidence.contains("unreadable"),
        "{d:#}"
    );
    let errors = v["agent"]["sampler_errors"].to_string();
    assert!(!errors.contains("permission_denied"), "{errors}");
}

/// Without one of the two capabilities the agent still reports (exit 0, a JSON document), says
/// `insufficient_data` rather than zeros, names the capability it lacks in the evidence and on
/// stderr, and counts the refusals.
fn degrades_naming(held: &str, missing: &str) {
    let _x = exclusive();
    let agent = root_with_only(&[held], true);
    let (svc, _load) = other_users_service(8.0);
    let (status, v, stderr) = diagnose_through(&agent, svc.pid, 3);
    assert!(status.success(), "{status}: {stderr}");
    let d = &v["services"][0];
    assert_eq!(d["verdict"], "insufficient_data", "{d:#}");
    assert_eq!(d["confidence"], 0.0, "{d:#}");
    let lacks = format!("lacks {missing}");
    assert!(d["evidence"].to_string().contains(&lacks), "{d:#}");
    assert!(stderr.contains(&lacks), "stderr: {stderr}");
    let errors = &v["agent"]["sampler_errors"];
    let fds_denied = errors
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["sampler"] == "fds" && e["kind"] == "permission_denied" && e["count"] != 0);
    assert!(fds_denied, "{errors}");
    // CPU is still measured: schedstat is world-readable. A degraded report is not a zero one.
    assert!(
        d["cpu"]["used_cores"].as_f64().unwrap_or(0.0) > 0.0,
        "{d:#}"
    );
}

#[test]
fn without_cap_sys_ptrace_the_report_names_it() {
    if root() {
        degrades_naming("dac_read_search", "CAP_SYS_PTRACE");
    }
}

#[test]
fn without_cap_dac_read_search_the_report_names_it() {
    if root() {
        degrades_naming("sys_ptrace", "CAP_DAC_READ_SEARCH");
    }
}

/// `run --pid P --all-namespaces --metrics-listen` through `prefix` for a service in a pod-like
/// network namespace: the last scrape after at most `secs`, when `done` holds, and stderr.
fn per_host_agent(
    prefix: &[String],
    pid: u32,
    secs: u64,
    done: impl Fn(&str) -> bool,
) -> (String, String) {
    run_agent(
        prefix,
        &["--all-namespaces", "--pid", &pid.to_string()],
        secs,
        done,
    )
}

/// `run ARGS --metrics-listen` through `prefix`: the last scrape after at most `secs`, when
/// `done` holds, and stderr.
fn run_agent(
    prefix: &[String],
    args: &[&str],
    secs: u64,
    done: impl Fn(&str) -> bool,
) -> (String, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = args.to_vec();
    all.extend(["--metrics-listen", &listen]);
    all.extend(["--discovery-interval", "1", "--export-interval", "2"]);
    let agent = RunAgent::start_with(wrapped(prefix, agent_bin()), &all).expect("agent run");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut text = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        text = scrape(port).unwrap_or_default();
        if done(&text) {
            break;
        }
    }
    let (_, stderr) = agent.stop();
    (text, stderr)
}

#[test]
fn per_host_mode_reaches_another_network_namespace_only_with_cap_sys_admin() {
    if !root() {
        return;
    }
    let _x = exclusive();
    let ns = NetNs::new().expect("netns");
    // The service runs as nobody inside the namespace; its load too.
    let mut args: Vec<String> = vec!["netns".into(), "exec".into(), ns.name.clone()];
    args.extend(as_nobody());
    args.push(
        scalewise_e2e::harness::workload_bin()
            .to_string_lossy()
            .into_owned(),
    );
    args.extend(["serve", "--port", "0", "--workers", "4", "--cpu-ms", "2"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::spawn("ip", &refs).expect("service in a namespace");
    assert_eq!(uid_of(svc.pid), Some(65534));
    let _load = ns.load(svc.port, 4, 40.0, &[]).expect("load");

    let three = root_with_only(&["sys_admin", "sys_ptrace", "dac_read_search"], true);
    let (caps, _) = inside(&three);
    assert_eq!(
        caps,
        (1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH)
    );
    let (text, stderr) = per_host_agent(&three, svc.pid, 25, |t| {
        sum(t, "scalewise_requests_total") > 100.0
    });
    assert!(
        sum(&text, "scalewise_requests_total") > 100.0,
        "{text}\n{stderr}"
    );
    assert!(
        sum(&text, "scalewise_request_time_seconds_total") > 0.0,
        "{text}"
    );
    assert_eq!(
        sum(&text, "scalewise_agent_skipped_services"),
        0.0,
        "{text}"
    );

    let two = root_with_only(&["sys_ptrace", "dac_read_search"], true);
    let (text, stderr) = per_host_agent(&two, svc.pid, 20, |t| {
        t.contains("scalewise_agent_skipped_services{reason=\"no_cap_sys_admin\"} 1")
    });
    assert!(
        text.contains("scalewise_agent_skipped_services{reason=\"no_cap_sys_admin\"} 1"),
        "{text}\n{stderr}"
    );
    assert_eq!(sum(&text, "scalewise_requests_total"), 0.0, "{text}");
    assert!(
        stderr.contains("service skipped") && stderr.contains("CAP_SYS_ADMIN"),
        "{stderr}"
    );
}

#[test]
fn discovering_listeners_without_cap_sys_ptrace_names_what_it_cannot_see() {
    if !root() {
        return;
    }
    let _x = exclusive();
    let (svc, _load) = other_users_service(30.0);
    // Every process with a listener, no target given: another user's fds need CAP_SYS_PTRACE.
    let one = root_with_only(&["dac_read_search"], true);
    let skipped = |t: &str| {
        value(
            t,
            "scalewise_agent_skipped_services",
            &[("reason", "no_cap_sys_ptrace")],
        )
        .unwrap_or(0.0)
    };
    let (text, stderr) = run_agent(&one, &[], 20, |t| skipped(t) >= 1.0);
    assert!(skipped(&text) >= 1.0, "{text}\n{stderr}");
    // One line for all of them (the service's pid among the first ten named, or cut short).
    let pid = format!("pid {}", svc.pid);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("service skipped"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("CAP_SYS_PTRACE")
            && (lines[0].contains(&pid) || lines[0].contains(", ...")),
        "{stderr}"
    );
    // With CAP_SYS_PTRACE it is found and sampled.
    let two = root_with_only(&["sys_ptrace", "dac_read_search"], true);
    let (text, stderr) = run_agent(&two, &[], 20, |t| {
        sum(t, "scalewise_requests_total") > 100.0
    });
    assert!(
        sum(&text, "scalewise_requests_total") > 100.0,
        "{text}\n{stderr}"
    );
}

#[test]
fn the_collector_runs_as_nobody_with_only_its_data_dir_writable() {
    if !root() {
        return;
    }
    let dir = TempDir::new("privilege-collector").expect("temp dir");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let ok = Command::new("chown")
        .args(["65534:65534"])
        .arg(&data)
        .status()
        .expect("chown")
        .success();
    assert!(ok);
    let mut c = Collector::start_wrapped(&as_nobody(), &data, &[]).expect("collector as nobody");
    assert_eq!(uid_of(c.pid()), Some(65534));
    let t0 = now_ns() - 60_000_000_000;
    let i = Instance::new("orders", "orders-1", 7, Profile::dependency_bound(), t0);
    for k in 1..=6u64 {
        i.send(&c, t0 + k * 10_000_000_000).expect("export");
    }
    let services = c.json("/api/v1/services").expect("services");
    assert!(services.to_string().contains("\"orders\""), "{services}");
    let d = c.json("/api/v1/services/orders?window=5m").expect("orders");
    assert_eq!(d["verdict"], "dependency", "{d:#}");
    // It wrote its store, as nobody, in the one directory it may write.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .metric("scalewise_collector_pending_snapshots", &[])
        .unwrap_or(1.0)
        > 0.0
    {
        assert!(Instant::now() < deadline, "never flushed");
        std::thread::sleep(Duration::from_millis(200));
    }
    use std::os::unix::fs::MetadataExt;
    let db = std::fs::metadata(data.join("scalewise.sqlite")).expect("store");
    assert_eq!(db.uid(), 65534);
    assert!(c.stop().expect("stop").success());
}

#[test]
fn a_collector_whose_data_dir_is_not_writable_refuses_to_start_naming_it() {
    if !root() {
        return;
    }
    // Owned by root, mode 0755: nobody may read it but not write it.
    let data = TempDir::new("privilege-readonly").expect("temp dir");
    for dir in [data.to_path_buf(), data.join("missing")] {
        let mut child = wrapped(&as_nobody(), scalewise_e2e::collector::collector_bin())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("collector");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break Some(st);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(status) = status else {
            stop(&mut child);
            panic!("a collector with an unwritable data dir kept running");
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        assert!(!status.success(), "{status}: {stderr}");
        // An existing directory is not writable; a missing one cannot be created in its parent.
        let why = if dir == data.path() {
            "is not writable"
        } else {
            "cannot be created"
        };
        assert!(
            stderr.contains(&format!("data dir {} {why}", dir.display())),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
