//! The agent and the collector in a real container runtime (podman with runc), from the
//! project's own images: `scripts/images` builds `localhost/scalewise-agent:dev`,
//! `localhost/scalewise-collector:dev` and, for the service, `localhost/scalewise-workload:dev`
//! (the e2e crate's workload on the same FROM-scratch runtime), with no registry.
//!
//! - A sidecar pod shaped like deploy/kubernetes/sidecar-example.yaml: one pod sharing the PID,
//!   network and IPC namespaces (`shareProcessNamespace`), the service as user 10001, the agent
//!   with every capability dropped but SYS_PTRACE and DAC_READ_SEARCH, no new privileges and a
//!   read-only root; the collector in a container of its own, as 65532, with a token. Load from
//!   the host through the pod's published port; the collector answers `scale_up`.
//! - Without SYS_PTRACE the agent says so: a warning naming the capability in `podman logs`, and
//!   `scalewise_agent_skipped_services{reason="no_cap_sys_ptrace"}` on its `/metrics`. Without the
//!   shared PID namespace, its warning says that.
//! - Probes and shutdown: `/healthz` and `/readyz` of both through published ports; `podman stop`
//!   ends the agent with exit code 0 well within the grace period, after a last export the
//!   collector has; the collector's stop flushes its store (its periodic flush is set to an hour,
//!   so only the flush at stop can have written what it answers after a restart).
//! - The per-host shape (a DaemonSet's): one agent with `--pid host` and SYS_ADMIN added, watching
//!   two pods with network namespaces of their own, naming each from its `OTEL_SERVICE_NAME`.
//!
//! Every container and pod has a name unique to the test run and is removed on drop, also when an
//! assertion fails. Podman runs with `--runtime runc` and a containers.conf with no default
//! ulimits (see docs/deploy.md, "Trying it on a laptop with podman or Docker").

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scalewise_e2e::collector::{collector_bin, get};
use scalewise_e2e::harness::{
    agent_bin, exclusive, free_port, wait_until, workload_bin, Load, TempDir,
};
use scalewise_e2e::metrics::value;

const AGENT: &str = "localhost/scalewise-agent:dev";
const COLLECTOR: &str = "localhost/scalewise-collector:dev";
const WORKLOAD: &str = "localhost/scalewise-workload:dev";
const TOKEN: &str = "containers-test-token";

fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Podman with the test's containers.conf (no default ulimits: root here lacks
/// CAP_SYS_RESOURCE), the token file the collector and agents mount, and every container and pod
/// the test made, removed on drop.
struct Podman {
    dir: TempDir,
    tag: String,
    containers: Vec<String>,
    pods: Vec<String>,
}

impl Podman {
    /// Builds the images (once per test process) and returns a podman for one test; `None`, with
    /// a printed reason, when podman cannot run here at all.
    fn new() -> Option<Podman> {
        images_built()?;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = TempDir::new("containers").expect("temp dir");
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n",
        )
        .expect("containers.conf");
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("token");
        Some(Podman {
            tag: format!(
                "sw-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            dir,
            containers: Vec::new(),
            pods: Vec::new(),
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    /// `podman ARGS`, which must succeed; its stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().expect("running podman");
        assert!(
            out.status.success(),
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A name unique to this test run.
    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    /// `podman run -d --runtime runc --name NAME ARGS` (ARGS: options, image, command).
    fn run(&mut self, role: &str, args: &[&str]) -> String {
        let name = self.name(role);
        self.containers.push(name.clone());
        let mut all = vec!["run", "-d", "--runtime", "runc", "--name", &name];
        all.extend(args);
        self.ok(&all);
        name
    }

    /// A pod sharing the PID, network and IPC namespaces (a Kubernetes pod with
    /// `shareProcessNamespace: true`), with `ports` published on loopback and `hosts` entries.
    fn pod(&mut self, role: &str, ports: &[(u16, u16)], hosts: &[String]) -> String {
        self.pod_sharing(role, "pid,net,ipc", ports, hosts)
    }

    /// A pod whose containers share the namespaces `share` names.
    fn pod_sharing(
        &mut self,
        role: &str,
        share: &str,
        ports: &[(u16, u16)],
        hosts: &[String],
    ) -> String {
        let name = self.name(role);
        self.pods.push(name.clone());
        let mut args: Vec<String> = ["pod", "create", "--name", &name, "--share", share]
            .map(String::from)
            .to_vec();
        for (host, inside) in ports {
            args.push("--publish".into());
            args.push(format!("127.0.0.1:{host}:{inside}"));
        }
        for h in hosts {
            args.push("--add-host".into());
            args.push(h.clone());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&refs);
        name
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, name])
    }

    fn logs(&self, name: &str) -> String {
        let out = self
            .command()
            .args(["logs", name])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `podman stop -t GRACE NAME`: how long it took and the container's exit code.
    fn stop(&self, name: &str, grace_s: u32) -> (Duration, i32) {
        let t = Instant::now();
        self.ok(&["stop", "-t", &grace_s.to_string(), name]);
        let took = t.elapsed();
        let code = self
            .inspect(name, "{{.State.ExitCode}}")
            .parse()
            .expect("exit code");
        (took, code)
    }

    fn token_mount(&self, at: &str) -> String {
        format!("{}:{at}:ro", self.dir.join("token").display())
    }

    /// A collector container (as its image's user, 65532) on a published loopback port, with a
    /// token, flushing to SQLite every `flush`; its name, host port and address on podman's
    /// network. Waits until `/readyz` answers 200 and says how long that took.
    fn collector(&mut self, flush: &str) -> (String, u16, String) {
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:4318");
        let token = self.token_mount("/run/scalewise/tokens");
        let t = Instant::now();
        let name = self.run(
            "collector",
            &[
                "--publish",
                &publish,
                "--volume",
                &token,
                COLLECTOR,
                "--listen",
                "0.0.0.0:4318",
                "--data-dir",
                "/var/lib/scalewise",
                "--token-file",
                "/run/scalewise/tokens",
                "--flush-interval",
                flush,
            ],
        );
        wait_status(port, "/readyz", 200, Duration::from_secs(20));
        eprintln!(
            "collector container: `podman run` to /readyz 200 in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        let ip = self.inspect(&name, "{{.NetworkSettings.IPAddress}}");
        assert!(
            !ip.is_empty(),
            "collector has no address on podman's network"
        );
        (name, port, ip)
    }

    /// The workload service (CPU-bound, thread per request: `scale_up`) in `pod`, as user 10001,
    /// nothing added, read-only root, listening on the pod's port 8080.
    fn service(&mut self, pod: &str, role: &str, env: &[&str]) -> String {
        let mut args: Vec<&str> = vec![
            "--pod",
            pod,
            "--user",
            "10001:10001",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
        ];
        for e in env {
            args.extend(["--env", e]);
        }
        args.extend([
            WORKLOAD,
            "/usr/local/bin/scalewise-workload",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--workers",
            "4",
            "--cpu-ms",
            "15",
        ]);
        self.run(role, &args)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Also on a failed assertion: nothing this test started outlives it.
        for c in &self.containers {
            let _ = self
                .command()
                .args(["rm", "--force", "--volumes", "--time", "0", c])
                .output();
        }
        for p in &self.pods {
            let _ = self
                .command()
                .args(["pod", "rm", "--force", "--time", "0", p])
                .output();
        }
    }
}

/// Runs `scripts/images --program WORKLOAD` once per test process: `Some` when the images are
/// there, `None` (with a printed reason) when podman cannot run here at all.
fn images_built() -> Option<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        let have_podman = Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        // SAFETY: geteuid has no preconditions.
        if !have_podman && unsafe { libc::geteuid() } != 0 {
            return Err(
                "podman is not installed and installing it needs root (scripts/install-deps)"
                    .into(),
            );
        }
        let mut cmd = Command::new(root_dir().join("scripts/images"));
        // The binaries the other end-to-end tests run, as they are (scripts/test builds them).
        if [agent_bin(), collector_bin(), workload_bin()]
            .iter()
            .all(|b| b.exists())
        {
            cmd.arg("--no-build");
        }
        let t = Instant::now();
        let out = cmd
            .arg("--program")
            .arg(workload_bin())
            .output()
            .expect("running scripts/images");
        assert!(
            out.status.success(),
            "scripts/images failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "scripts/images in {:.1} s:\n{}",
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(())
    });
    match r {
        Ok(()) => Some(()),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Waits until `GET http://127.0.0.1:PORT{path}` answers `status`.
fn wait_status(port: u16, path: &str, status: u16, limit: Duration) {
    let url = format!("http://127.0.0.1:{port}{path}");
    wait_until(limit, &format!("{status} from {url}"), || {
        get(&url, None).is_ok_and(|(s, _)| s == status)
    });
}

/// The collector's REST answer at `path` (with the token), parsed.
fn rest(port: u16, path: &str) -> serde_json::Value {
    let (status, body) =
        get(&format!("http://127.0.0.1:{port}{path}"), Some(TOKEN)).expect("collector REST");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The entry of `service` in the collector's `/api/v1/services`, if listed.
fn listed(port: u16, service: &str) -> Option<serde_json::Value> {
    rest(port, "/api/v1/services")["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service)
        .cloned()
}

fn scrape(port: u16) -> String {
    get(&format!("http://127.0.0.1:{port}/metrics"), None)
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// An agent in `pod` with only the capabilities `caps`, watching the service `orders` with no
/// collector, its `/metrics` published on `metrics_port`; returned once it is ready.
fn watching_agent(
    podman: &mut Podman,
    pod: &str,
    caps: &[&'static str],
    metrics_port: u16,
) -> String {
    let mut args = agent_security(caps);
    args.extend([
        "--pod",
        pod,
        AGENT,
        "run",
        "--service",
        "orders",
        "--metrics-listen",
        "0.0.0.0:9464",
    ]);
    let agent = podman.run("agent", &args);
    wait_status(metrics_port, "/readyz", 200, Duration::from_secs(20));
    agent
}

/// The agent's options of deploy/kubernetes/sidecar-example.yaml: everything dropped but
/// SYS_PTRACE and DAC_READ_SEARCH (`add`, from which SYS_PTRACE may be left out), no new
/// privileges, read-only root.
fn agent_security(add: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
    ];
    for c in add {
        v.extend(["--cap-add", c]);
    }
    v
}

#[test]
fn sidecar_pod_gives_the_service_its_verdict_and_stops_cleanly() {
    let _x = exclusive();
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let (collector, collector_port, collector_ip) = podman.collector("1h");
    assert_eq!(
        podman.inspect(&collector, "{{.Config.User}}"),
        "65532:65532",
        "the collector runs as non-root"
    );

    let (svc_port, metrics_port) = (free_port(), free_port());
    let pod = podman.pod(
        "sidecar",
        &[(svc_port, 8080), (metrics_port, 9464)],
        &[format!("scalewise-collector:{collector_ip}")],
    );
    podman.service(&pod, "orders", &[]);
    let token = podman.token_mount("/run/scalewise/token");
    let mut args = agent_security(&["SYS_PTRACE", "DAC_READ_SEARCH"]);
    args.extend([
        "--pod",
        &pod,
        "--volume",
        &token,
        AGENT,
        "run",
        "--service",
        "orders",
        "--collector",
        "http://scalewise-collector:4318",
        "--collector-token-file",
        "/run/scalewise/token",
        "--metrics-listen",
        "0.0.0.0:9464",
        "--export-interval",
        "2",
    ]);
    let started = Instant::now();
    let agent = podman.run("agent", &args);

    // Probes, through the pod's published port.
    wait_status(metrics_port, "/healthz", 200, Duration::from_secs(20));
    wait_status(metrics_port, "/readyz", 200, Duration::from_secs(20));
    wait_status(collector_port, "/healthz", 200, Duration::from_secs(5));

    // The service is found by its listening socket in the shared namespaces and exported.
    wait_until(
        Duration::from_secs(30),
        "the first export of orders",
        || listed(collector_port, "orders").is_some(),
    );
    eprintln!(
        "agent container: `podman run` to its first export at the collector in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let log = podman.logs(&agent);
    assert!(log.contains("watching service instance"), "{log}");
    assert!(
        !log.contains('\x1b') && !podman.logs(&collector).contains('\x1b'),
        "plain text in a container's log, no colours: {log:?}"
    );

    // CPU-bound load from the host through the published port: scale_up.
    let _load = Load::start(svc_port, 8, 120.0, 0.0).expect("load");
    let t = Instant::now();
    // A window under load from end to end before the first look.
    std::thread::sleep(Duration::from_secs(11));
    let last = loop {
        let got = rest(collector_port, "/api/v1/services/orders?window=10s");
        if got["verdict"] == "scale_up" || t.elapsed() > Duration::from_secs(90) {
            break got;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(
        last["verdict"],
        "scale_up",
        "after {:?}: {last:#}",
        t.elapsed()
    );
    assert_eq!(last["requests"]["source"], "sockets", "{last:#}");
    assert!(
        last["requests"]["rate_per_s"].as_f64().unwrap_or(0.0) > 10.0,
        "the host's load is seen: {last:#}"
    );
    eprintln!(
        "scale_up after {:.1} s of load, confidence {}",
        t.elapsed().as_secs_f64(),
        last["confidence"]
    );
    drop(_load);

    // SIGTERM through podman: a last export, exit code 0, well within the 10 s grace.
    let before_stop = unix_now();
    let (took, code) = podman.stop(&agent, 10);
    assert_eq!(code, 0, "agent exit code\n{}", podman.logs(&agent));
    assert!(
        took < Duration::from_secs(5),
        "agent stop took {took:?} (grace 10 s)"
    );
    let seen = listed(collector_port, "orders").expect("orders listed");
    let last_seen = seen["last_seen_unix"].as_f64().expect("last_seen_unix");
    assert!(
        last_seen >= before_stop - 0.05,
        "the export at shutdown reached the collector: last seen {last_seen}, stop at {before_stop}"
    );
    assert!(podman.logs(&agent).contains("SIGTERM: last export"));

    // The collector's stop flushes: its periodic flush is an hour away, so what it answers after
    // a restart on the same volume was written at stop.
    let (took, code) = podman.stop(&collector, 10);
    assert_eq!(code, 0, "collector exit code\n{}", podman.logs(&collector));
    assert!(
        took < Duration::from_secs(5),
        "collector stop took {took:?} (grace 10 s)"
    );
    assert!(
        podman.logs(&collector).contains("store flushed"),
        "{}",
        podman.logs(&collector)
    );
    podman.ok(&["start", &collector]);
    wait_status(collector_port, "/readyz", 200, Duration::from_secs(20));
    let again = listed(collector_port, "orders").expect("orders kept across the restart");
    assert!(
        (again["last_seen_unix"].as_f64().unwrap_or(0.0) - last_seen).abs() < 0.01,
        "after restart: {again:#}, before: {seen:#}"
    );
}

#[test]
fn sidecar_without_sys_ptrace_says_what_it_cannot_see() {
    let _x = exclusive();
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let metrics_port = free_port();
    let pod = podman.pod("noptrace", &[(metrics_port, 9464)], &[]);
    podman.service(&pod, "orders", &[]);
    let agent = watching_agent(&mut podman, &pod, &["DAC_READ_SEARCH"], metrics_port);
    let mut text = String::new();
    wait_until(
        Duration::from_secs(20),
        "skipped services on the agent's /metrics",
        || {
            text = scrape(metrics_port);
            value(
                &text,
                "scalewise_agent_skipped_services",
                &[("reason", "no_cap_sys_ptrace")],
            )
            .is_some_and(|n| n >= 1.0)
        },
    );
    assert_eq!(
        value(&text, "scalewise_agent_services", &[]),
        Some(0.0),
        "nothing is sampled without ptrace access: {text}"
    );
    let log = podman.logs(&agent);
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("service skipped"))
        .unwrap_or_else(|| panic!("no warning in the agent's log:\n{log}"));
    assert!(
        warning.contains("CAP_SYS_PTRACE") && warning.contains("scalewise-workl"),
        "the warning names the capability and the service's process: {warning}"
    );
    let (_, code) = podman.stop(&agent, 10);
    assert_eq!(code, 0, "{}", podman.logs(&agent));
}

#[test]
fn sidecar_without_a_shared_pid_namespace_says_so() {
    let _x = exclusive();
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let metrics_port = free_port();
    let pod = podman.pod_sharing("nopid", "net,ipc", &[(metrics_port, 9464)], &[]);
    podman.service(&pod, "orders", &[]);
    let agent = watching_agent(
        &mut podman,
        &pod,
        &["SYS_PTRACE", "DAC_READ_SEARCH"],
        metrics_port,
    );
    let text = scrape(metrics_port);
    assert_eq!(
        value(&text, "scalewise_agent_services", &[]),
        Some(0.0),
        "{text}"
    );
    let log = podman.logs(&agent);
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("no process but the agent's own is visible")
            && l.contains("shareProcessNamespace")),
        "the agent names the missing shared PID namespace:\n{log}"
    );
}

/// The per-host shape of deploy/kubernetes/daemonset-agent.yaml: one agent container in the
/// host's PID namespace (`hostPID`) with SYS_ADMIN added, `run --all-namespaces`, and two pods
/// with network namespaces of their own. The agent enters each pod's network namespace to read
/// its sockets and names each service from its `OTEL_SERVICE_NAME`. The same agent without
/// SYS_ADMIN says which services it skipped and why.
///
/// `--process` keeps the agent to this test's services: in the host's PID namespace it would
/// otherwise also watch every listener of whatever else runs on the machine.
#[test]
fn per_host_agent_enters_each_pods_network_namespace() {
    let _x = exclusive();
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let (_collector, collector_port, collector_ip) = podman.collector("5s");
    let svc_port = free_port();
    let a = podman.pod_sharing("host-a", "net,ipc,uts", &[(svc_port, 8080)], &[]);
    let b = podman.pod_sharing("host-b", "net,ipc,uts", &[], &[]);
    let (name_a, name_b) = (podman.name("orders"), podman.name("payments"));
    podman.service(&a, "orders", &[&format!("OTEL_SERVICE_NAME={name_a}")]);
    podman.service(&b, "payments", &[&format!("OTEL_SERVICE_NAME={name_b}")]);
    // The services' command lines from their start: not a podman command that names them.
    let regex = "^/usr/local/bin/scalewise-workload serve --host 0.0.0.0 --port 8080";

    let token = podman.token_mount("/run/scalewise/token");
    let collector_url = format!("http://{collector_ip}:4318");
    let agent_args = |metrics_port: u16, add: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = agent_security(add).iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "--pid",
                "host",
                "--publish",
                &format!("127.0.0.1:{metrics_port}:9464"),
                "--volume",
                &token,
                AGENT,
                "run",
                "--all-namespaces",
                "--process",
                regex,
                "--collector",
                &collector_url,
                "--collector-token-file",
                "/run/scalewise/token",
                "--metrics-listen",
                "0.0.0.0:9464",
                "--export-interval",
                "2",
            ]
            .map(String::from),
        );
        v
    };
    let full = agent_args(free_port(), &["SYS_PTRACE", "DAC_READ_SEARCH", "SYS_ADMIN"]);
    let agent = podman.run(
        "host-agent",
        &full.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let lacking_port = free_port();
    let lacking = agent_args(lacking_port, &["SYS_PTRACE", "DAC_READ_SEARCH"]);
    let lacking_agent = podman.run(
        "host-agent-nosysadmin",
        &lacking.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // Both services, named from their environment, exported from their own namespaces.
    wait_until(
        Duration::from_secs(30),
        "both pods' services exported",
        || listed(collector_port, &name_a).is_some() && listed(collector_port, &name_b).is_some(),
    );
    let log = podman.logs(&agent);
    let netns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("watching service instance"))
        .filter_map(|l| l.split("netns=").nth(1))
        .collect();
    assert_eq!(netns.len(), 2, "{log}");
    assert_ne!(netns[0], netns[1], "two network namespaces: {log}");

    // Sockets read inside pod a's namespace: its requests from the host are counted.
    let _load = Load::start(svc_port, 4, 60.0, 0.0).expect("load");
    let mut got = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(40),
        "pod a's requests seen by the per-host agent",
        || {
            got = rest(
                collector_port,
                &format!("/api/v1/services/{name_a}?window=6s"),
            );
            got["requests"]["rate_per_s"].as_f64().unwrap_or(0.0) > 10.0
        },
    );
    assert_eq!(got["requests"]["source"], "sockets", "{got:#}");

    // Without SYS_ADMIN: both skipped, said in the log and on /metrics.
    let mut text = String::new();
    wait_until(
        Duration::from_secs(20),
        "skipped services on /metrics",
        || {
            text = scrape(lacking_port);
            value(
                &text,
                "scalewise_agent_skipped_services",
                &[("reason", "no_cap_sys_admin")],
            ) == Some(2.0)
        },
    );
    assert_eq!(value(&text, "scalewise_agent_services", &[]), Some(0.0));
    let log = podman.logs(&lacking_agent);
    for name in [&name_a, &name_b] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("service skipped")
                && l.contains(name.as_str())
                && l.contains("CAP_SYS_ADMIN")),
            "a warning naming {name} and CAP_SYS_ADMIN:\n{log}"
        );
    }
}

/// The lines of `stage` in a build file that give an image its shape (who it runs as, what it
/// runs, what it exposes): the local build must give the same images as the published one.
fn shape(file: &str, stage: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root_dir().join(file)).expect(file);
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("FROM ") {
            inside = line.ends_with(&format!(" AS {stage}"));
        } else if inside
            && ["USER ", "EXPOSE ", "VOLUME ", "ENTRYPOINT ", "CMD "]
                .iter()
                .any(|k| line.starts_with(k))
        {
            out.push(line.to_string());
        }
    }
    out
}

#[test]
fn the_local_build_gives_the_published_images_shape() {
    for stage in ["agent", "collector"] {
        let published = shape("deploy/container/Dockerfile", stage);
        assert_eq!(
            published.len(),
            5 - usize::from(stage == "agent"),
            "{published:?}"
        );
        assert_eq!(
            shape("deploy/container/Containerfile.local", stage),
            published,
            "stage {stage}"
        );
    }
}
