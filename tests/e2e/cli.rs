//! The `scalewise-agent` binary as a user meets it: bad pids, processes that exit mid-window,
//! missing permissions, bad flags. Each gets a clear message and, where there is data, a report.

use std::process::Command;

use scalewise_e2e::harness::{agent_bin, exclusive, Load, Service};

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run agent")
}

#[test]
fn unknown_pid_is_a_clear_error() {
    // Pids above pid_max cannot exist.
    let out = agent(&["diagnose", "--pid", "4194305", "--duration", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process with pid 4194305"), "{err}");
}

#[test]
fn bad_flags_say_what_is_wrong() {
    let out = agent(&["diagnose", "--pid", "1", "--duration", "-3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
    let out = agent(&["diagnose", "--pid", "1", "--dependency", "nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ADDR:PORT=NAME"));
    let out = agent(&["diagnose", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--pid",
        "--duration",
        "--dependency",
        "--format",
        "--metrics-url",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}

#[test]
fn a_process_that_exits_mid_window_is_reported_with_what_was_gathered() {
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "4", "--cpu-ms", "2"]).expect("service");
    let _load = Load::start(svc.port, 2, 10.0, 0.0).expect("load");
    let pid = svc.pid;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(3));
        drop(svc);
    });
    let start = std::time::Instant::now();
    let out = agent(&[
        "diagnose",
        "--pid",
        &pid.to_string(),
        "--duration",
        "20",
        "--format",
        "json",
        "--quiet",
    ]);
    killer.join().expect("killer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed().as_secs_f64() < 12.0,
        "the agent should stop sampling once its only process is gone"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["services"][0];
    let evidence = d["evidence"].to_string();
    assert!(evidence.contains("exited"), "{d:#}");
    assert!(d["window_s"].as_f64().unwrap_or(0.0) >= 2.0, "{d:#}");
    assert!(
        d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{d:#}"
    );
}

#[test]
fn missing_permissions_name_the_capability() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the agent as another user");
        return;
    }
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "2", "--cpu-ms", "1"]).expect("service");
    let _load = Load::start(svc.port, 2, 6.0, 0.0).expect("load");
    // The agent as `nobody` watching a root process: /proc/PID/fd and syscall are closed to it.
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(agent_bin())
        .args([
            "diagnose",
            "--pid",
            &svc.pid.to_string(),
            "--duration",
            "3",
            "--format",
            "json",
            "--quiet",
        ])
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["services"][0];
    assert_eq!(d["verdict"], "insufficient_data", "{d:#}");
    assert!(
        d["evidence"].to_string().contains("CAP_SYS_PTRACE"),
        "{d:#}"
    );
    let errors = v["agent"]["sampler_errors"].to_string();
    assert!(errors.contains("permission_denied"), "{errors}");
}

#[test]
fn a_service_of_two_processes_is_diagnosed_as_one() {
    let _x = exclusive();
    let a = Service::workload(&["serve", "--workers", "4", "--cpu-ms", "1", "--lock-ms", "4"])
        .expect("a");
    let b = Service::workload(&["serve", "--workers", "4", "--cpu-ms", "1", "--lock-ms", "4"])
        .expect("b");
    let _la = Load::start(a.port, 3, 10.0, 0.0).expect("load a");
    let _lb = Load::start(b.port, 3, 10.0, 0.0).expect("load b");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (a0, b0) = (a.truth().expect("truth"), b.truth().expect("truth"));
    let d = scalewise_e2e::harness::diagnose(&[a.pid, b.pid], 5.0, &["--service", "orders"])
        .expect("diagnose");
    let (a1, b1) = (a.truth().expect("truth"), b.truth().expect("truth"));
    let (da, db) = (a1.delta(&a0), b1.delta(&b0));
    let true_rate = (da.requests + db.requests) / da.wall_s;
    let true_in_flight = (da.latency_s + db.latency_s) / da.wall_s;
    assert_eq!(d["service"], "orders");
    assert_eq!(d["pids"].as_array().map(|p| p.len()), Some(2), "{d:#}");
    let rate = d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0);
    let in_flight = d["requests"]["mean_in_flight"].as_f64().unwrap_or(0.0);
    eprintln!("two processes: rate {rate:.1} (truth {true_rate:.1}), in flight {in_flight:.2} (truth {true_in_flight:.2})");
    assert!(
        (rate / true_rate - 1.0).abs() < 0.15,
        "rate {rate} vs {true_rate}: {d:#}"
    );
    assert!(
        (in_flight - true_in_flight).abs() < 0.1 * true_in_flight.max(1.0),
        "{d:#}"
    );
    assert_eq!(d["verdict"], "scale_out", "{d:#}");
}

#[test]
fn one_request_per_connection_in_a_pod_network_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let _x = exclusive();
    let ns = scalewise_e2e::harness::NetNs::new().expect("netns");
    let svc = ns
        .workload(&["serve", "--workers", "4", "--cpu-ms", "2", "--lock-ms", "4"])
        .expect("service");
    let _load = ns
        .load(svc.port, 4, 10.0, &["--reconnect", "1"])
        .expect("load");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let t0 = ns.truth(svc.port).expect("truth");
    let d = ns.diagnose(&[svc.pid], 6.0).expect("diagnose");
    let t1 = ns.truth(svc.port).expect("truth");
    let t = t1.delta(&t0);
    let (true_rate, true_in_flight) = (t.requests / t.wall_s, t.latency_s / t.wall_s);
    let rate = d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0);
    let in_flight = d["requests"]["mean_in_flight"].as_f64().unwrap_or(0.0);
    let local = d["breakdown"]["local_wait"].as_f64().unwrap_or(0.0);
    eprintln!(
        "pod netns, one request per connection: rate {rate:.1} (truth {true_rate:.1}), in flight {in_flight:.2} (truth {true_in_flight:.2}), local_wait {local:.2} (truth {:.2})",
        t.shares().local_wait
    );
    assert!(d["evidence"].to_string().contains("short-lived"), "{d:#}");
    assert!(
        (rate / true_rate - 1.0).abs() < 0.15,
        "rate {rate} vs {true_rate}: {d:#}"
    );
    assert!(
        (in_flight - true_in_flight).abs() < 0.15 * true_in_flight,
        "{d:#}"
    );
    assert!((local - t.shares().local_wait).abs() <= 0.10, "{d:#}");
}
