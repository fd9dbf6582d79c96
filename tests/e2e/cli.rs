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
        "Ctrl-C",
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

/// Sends `sig` to a child by pid.
fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: signalling our own child by pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Waits at most `max` for a child to exit; kills it and fails the test if it does not.
fn exits_within(child: &mut std::process::Child, max: std::time::Duration) -> std::time::Duration {
    let start = std::time::Instant::now();
    while start.elapsed() < max {
        if let Ok(Some(_)) = child.try_wait() {
            return start.elapsed();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the agent did not exit within {max:?} of the signal");
}

#[test]
fn ctrl_c_ends_the_window_early_with_the_diagnosis_so_far() {
    use std::process::Stdio;
    use std::time::Duration;
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "8", "--cpu-ms", "1", "--lock-ms", "5"])
        .expect("service");
    let _load = Load::start(svc.port, 8, 30.0, 0.0).expect("load");
    std::thread::sleep(Duration::from_secs(1));
    let dir = scalewise_e2e::harness::TempDir::new("ctrlc").expect("temp dir");
    let report = dir.path().join("report.md");
    let mut child = Command::new(agent_bin())
        .args(["diagnose", "--pid", &svc.pid.to_string()])
        .args(["--duration", "60", "--format", "json", "--report"])
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_secs(8));
    signal(&child, libc::SIGINT);
    let took = exits_within(&mut child, Duration::from_secs(3));
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("exited {took:?} after SIGINT");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("stopping: finishing the window at") && err.contains("Ctrl-C again to abort"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["services"][0];
    let window = d["window_s"].as_f64().unwrap_or(0.0);
    assert!((6.0..=11.0).contains(&window), "window {window}: {d:#}");
    assert_eq!(d["verdict"], "scale_out", "{d:#}");
    assert!(
        d["evidence"]
            .to_string()
            .contains("window cut short by SIGINT at"),
        "{d:#}"
    );
    let written = std::fs::metadata(&report).map(|m| m.len()).unwrap_or(0);
    assert!(written > 0, "no report at {}: {err}", report.display());
}

#[test]
fn a_second_ctrl_c_aborts_at_once() {
    use std::process::Stdio;
    use std::time::Duration;
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "4", "--cpu-ms", "1", "--lock-ms", "4"])
        .expect("service");
    let _load = Load::start(svc.port, 4, 20.0, 0.0).expect("load");
    // A metrics endpoint that accepts connections (the kernel's backlog does) and never answers:
    // each GC read, the window's last included, waits out its 2 s timeout, so the agent is still
    // finishing when the second Ctrl-C comes. That is when a user presses it.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let url = format!("http://{}/metrics", hung.local_addr().expect("addr"));
    let mut child = Command::new(agent_bin())
        .args(["diagnose", "--pid", &svc.pid.to_string()])
        .args([
            "--duration",
            "60",
            "--format",
            "json",
            "--metrics-url",
            &url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_secs(3));
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGINT);
    let took = exits_within(&mut child, Duration::from_secs(1));
    let out = child.wait_with_output().expect("output");
    eprintln!("exited {took:?} after the second SIGINT");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(hung);
}
