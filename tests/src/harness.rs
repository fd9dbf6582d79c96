//! Starts and stops the real parts an end-to-end test needs, each on loopback with a free port and
//! each stopped by pid on drop: a private PostgreSQL cluster (initdb into a temp dir), the
//! workload services (and "orders on PostgreSQL", the dependency-bound service several suites
//! share), a JVM, the load generator, `scalewise-agent run` ([`RunAgent`]); and runs the agent's
//! one-shot `diagnose`. Also what every suite needs around them: temp dirs removed on drop,
//! waiting for a condition or a listener, and whether the tests may do what needs root.
//!
//! One place for each, so a suite says what it starts and checks, not how a process is spawned,
//! stopped or cleaned up after.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::workload::Truth;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `target/<profile>/` of the running test executable (which lives in `target/<profile>/deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let deps = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if deps.ends_with("deps") {
        deps.parent().map(Path::to_path_buf).unwrap_or(deps)
    } else {
        deps
    }
}

pub fn workload_bin() -> PathBuf {
    profile_dir().join("scalewise-workload")
}

pub fn agent_bin() -> PathBuf {
    profile_dir().join("scalewise-agent")
}

/// A new directory under the system temp dir, `scalewise-TAG-PID-N`: unique to this process (its
/// pid) and to the call (a counter), so tests running side by side in one binary never share one.
/// Removed with everything in it on drop; [`TempDir::keep`] keeps it.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "scalewise-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // Left by an earlier process that had this pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory, no longer removed on drop (a build kept for the rest of the process).
    pub fn keep(self) -> PathBuf {
        let me = std::mem::ManuallyDrop::new(self);
        me.0.clone()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for TempDir {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops a child by pid: SIGTERM (servers shut down cleanly, an agent exports once more), then
/// SIGKILL after a 10 s grace period. The exit status when it exited within the grace period.
pub fn stop(child: &mut Child) -> Option<ExitStatus> {
    // Already reaped (stopped before): its pid may be another process's by now.
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: signalling our own child by pid, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A child process stopped by pid ([`stop`]) on drop: a server the harness has no type for
/// (Redis, nginx, a collector inside a network namespace).
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Polls `ok` until it holds; panics naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until something listens on loopback `port`, at most 20 s.
pub fn wait_listening(port: u16) {
    wait_until(
        Duration::from_secs(20),
        &format!("a listener on port {port}"),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// Resident memory of a process (`VmRSS` of `/proc/PID/status`), in KiB; 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Whether the tests run as root (namespaces, other users, capabilities). When not, says that
/// the test calling it is skipped and why: such tests pass without root, saying so.
pub fn root(why: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!("skipped: needs root {why}");
    }
    root
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` run through `prefix` (a command that execs its arguments, such as [`as_nobody`] or
/// [`root_with_only`]), so the child's pid is the program's.
pub fn wrapped(prefix: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs a child as `nobody` (uid and gid 65534, no supplementary groups): another user's
/// process. Needs root.
pub fn as_nobody() -> Vec<String> {
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs a child as uid 0 holding exactly `caps` (setpriv's names: `sys_ptrace`,
/// `dac_read_search`, `sys_admin`; none for no capability at all) in its inheritable, ambient,
/// bounding, permitted and effective sets. With `read_only`, also in a private mount namespace
/// whose `/` and `/dev/shm` are remounted read-only: nothing is writable. Needs root.
pub fn root_with_only(caps: &[&str], read_only: bool) -> Vec<String> {
    let set: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut p: Vec<String> = Vec::new();
    if read_only {
        p.extend(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                "mount -o remount,bind,ro / && mount -o remount,bind,ro /dev/shm && exec \"$@\"",
                "sh",
            ]
            .map(String::from),
        );
    }
    p.push("setpriv".into());
    p.push(format!("--inh-caps={set}"));
    p.push(format!("--ambient-caps={set}"));
    p.push(format!("--bounding-set={set}"));
    p.push("--".into());
    p
}

/// A private PostgreSQL cluster, stopped and deleted on drop.
pub struct Postgres {
    pub port: u16,
    /// Removed once `drop` has stopped the server (fields drop after it).
    dir: TempDir,
    child: Child,
}

fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
        .ok_or_else(|| anyhow!("PostgreSQL server binaries not found: run scripts/install-deps"))
}

impl Postgres {
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = pg_bindir()?;
        let dir = TempDir::new("pg")?;
        let data = dir.join("data");
        let port = free_port();
        let root = is_root();
        // initdb refuses to run as root: run the cluster as Debian's `postgres` user.
        let as_user = |program: PathBuf| -> Command {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?
                .success();
            if !ok {
                bail!("chown of {} to postgres failed", dir.display());
            }
        }
        let out = as_user(bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["--auth=trust", "-U", "postgres", "--no-sync"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        if root {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.join("postgres.log"))
                .status();
        }
        let child = as_user(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=32MB",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        let mut pg = Postgres { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if crate::workload::pg::PgConn::connect(&pg.addr()).is_ok() {
                return Ok(pg);
            }
            if Instant::now() > deadline || matches!(pg.child.try_wait(), Ok(Some(_))) {
                let log = std::fs::read_to_string(pg.dir.join("postgres.log")).unwrap_or_default();
                bail!(
                    "postgres did not start: {}",
                    log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The cluster's unix-domain socket (`-k DIR`), as libpq names it: `DIR/.s.PGSQL.PORT`.
    pub fn unix_socket(&self) -> String {
        format!("{}/.s.PGSQL.{}", self.dir.path().display(), self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// "Orders on PostgreSQL": the dependency-bound service several suites watch, a
/// thread-per-request `serve` (8 workers, 2 ms of CPU) spending 25 ms of each request in a query
/// on `pg`.
pub fn orders_on(pg: &Postgres) -> anyhow::Result<Service> {
    Service::workload(&[
        "serve",
        "--workers",
        "8",
        "--cpu-ms",
        "2",
        "--db",
        &pg.addr(),
        "--db-ms",
        "25",
    ])
}

/// A private PostgreSQL cluster and the orders service ([`orders_on`]) using it. Bind both
/// (`let (pg, orders) = ...`): the service stops before the cluster.
pub fn orders_on_postgres() -> anyhow::Result<(Postgres, Service)> {
    let pg = Postgres::start()?;
    let orders = orders_on(&pg)?;
    Ok((pg, orders))
}

/// A running service (or any child that prints `listening ADDR`), killed by pid on drop.
pub struct Service {
    pub pid: u32,
    pub port: u16,
    child: Child,
}

impl Service {
    pub fn spawn(program: impl AsRef<Path>, args: &[&str]) -> anyhow::Result<Service> {
        Service::spawn_env(program, args, &[])
    }

    /// [`Service::spawn`] with extra environment variables (an SDK's configuration).
    pub fn spawn_env(
        program: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let mut child = Command::new(program.as_ref())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", program.as_ref().display()))?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok());
        match port {
            Some(port) => Ok(Service {
                pid: child.id(),
                port,
                child,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} printed {line:?} instead of `listening ADDR`",
                    program.as_ref().display()
                )
            }
        }
    }

    /// A `scalewise-workload` service.
    pub fn workload(args: &[&str]) -> anyhow::Result<Service> {
        Service::spawn(workload_bin(), args)
    }

    /// A `scalewise-workload` service started through `prefix` (e.g. [`as_nobody`]).
    pub fn workload_as(prefix: &[String], args: &[&str]) -> anyhow::Result<Service> {
        let Some((first, rest)) = prefix.split_first() else {
            return Service::workload(args);
        };
        let mut all: Vec<String> = rest.to_vec();
        all.push(workload_bin().to_string_lossy().into_owned());
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Service::spawn(first, &refs)
    }

    /// The Java workload (tests/java/Workload.java), compiled once into a temp dir.
    pub fn java(jvm_flags: &[&str], args: &[&str]) -> anyhow::Result<Service> {
        let classes = java_classes()?;
        let mut all: Vec<&str> = jvm_flags.to_vec();
        let cp = classes.to_string_lossy().into_owned();
        all.extend(["-cp", &cp, "Workload"]);
        all.extend(args);
        Service::spawn("java", &all)
    }

    /// The Go workload (tests/go/main.go), built once into a temp dir with the machine's `go`.
    pub fn go(args: &[&str]) -> anyhow::Result<Service> {
        static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let bin = match BIN.get() {
            Some(b) => b.clone(),
            None => {
                let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/main.go");
                let out = TempDir::new("go")?.keep().join("gowork");
                let st = Command::new("go")
                    .arg("build")
                    .arg("-o")
                    .arg(&out)
                    .arg(&src)
                    .env("GOFLAGS", "")
                    .env("GO111MODULE", "off")
                    .status()
                    .context("running go build (install Go: scripts/install-deps)")?;
                if !st.success() {
                    bail!("go build failed on {}", src.display());
                }
                BIN.get_or_init(|| out).clone()
            }
        };
        Service::spawn(bin, args)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn truth(&self) -> anyhow::Result<Truth> {
        truth(self.port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn java_classes() -> anyhow::Result<PathBuf> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/Workload.java");
    let out = TempDir::new("java")?.keep();
    let st = Command::new("javac")
        .arg("-d")
        .arg(&out)
        .arg(&src)
        .status()
        .context("running javac (install a JDK: scripts/install-deps)")?;
    if !st.success() {
        bail!("javac failed on {}", src.display());
    }
    Ok(DIR.get_or_init(|| out).clone())
}

/// The workload's cumulative ground truth.
pub fn truth(port: u16) -> anyhow::Result<Truth> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /truth HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let body = crate::workload::http::read_body(&mut r)?;
    Ok(serde_json::from_slice(&body)?)
}

/// The load generator as a child process.
pub struct Load {
    child: Child,
}

impl Load {
    pub fn start(
        port: u16,
        concurrency: u32,
        duration_s: f64,
        think_ms: f64,
    ) -> anyhow::Result<Load> {
        Load::start_with(port, concurrency, duration_s, think_ms, &[])
    }

    /// Like [`Load::start`], with extra flags for the load generator (e.g. `--reconnect 1`).
    pub fn start_with(
        port: u16,
        concurrency: u32,
        duration_s: f64,
        think_ms: f64,
        extra: &[&str],
    ) -> anyhow::Result<Load> {
        let mut all = vec!["--think-ms".to_string(), think_ms.to_string()];
        all.extend(extra.iter().map(|e| e.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Load::spawn(
            Command::new(workload_bin()),
            port,
            concurrency,
            duration_s,
            &refs,
        )
    }

    /// Starts `load` through `cmd` (the workload binary, directly or inside a namespace, or
    /// another load generator with the same flags and summary, e.g. `node h2.js`).
    pub fn spawn(
        mut cmd: Command,
        port: u16,
        concurrency: u32,
        duration_s: f64,
        extra: &[&str],
    ) -> anyhow::Result<Load> {
        let child = cmd
            .args([
                "load",
                "--target",
                &format!("127.0.0.1:{port}"),
                "--concurrency",
            ])
            .arg(concurrency.to_string())
            .arg("--duration-s")
            .arg(duration_s.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Load { child })
    }

    /// Waits for the load to end; returns its JSON summary.
    pub fn finish(mut self) -> anyhow::Result<serde_json::Value> {
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out)?;
        }
        let _ = self.child.wait();
        Ok(serde_json::from_str(out.trim())?)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `diagnose --format json` through `cmd` (the agent binary, directly or inside a network
/// namespace) and returns the whole report (`services` and the agent's own `sampler_errors`).
fn run_diagnose(
    mut cmd: Command,
    pids: &[u32],
    duration_s: f64,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    cmd.args(["diagnose", "--format", "json", "--quiet", "--duration"])
        .arg(duration_s.to_string());
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    cmd.args(extra);
    let out = cmd.output().context("running scalewise-agent")?;
    if !out.status.success() {
        bail!("agent failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs `scalewise-agent diagnose --format json` and returns the whole report.
pub fn diagnose_report(
    pids: &[u32],
    duration_s: f64,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    run_diagnose(Command::new(agent_bin()), pids, duration_s, extra)
}

/// The first service's diagnosis from [`diagnose_report`].
pub fn diagnose(
    pids: &[u32],
    duration_s: f64,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    Ok(diagnose_report(pids, duration_s, extra)?["services"][0].clone())
}

/// A running `scalewise-agent run`: stdin closed, stdout and stderr (at `RUST_LOG=info`, no
/// colour) in files of its own temp dir, read with [`RunAgent::stdout`] and
/// [`RunAgent::stderr`]. Stopped by pid on drop or by [`RunAgent::stop`]: SIGTERM (it exports
/// once more and exits), SIGKILL after 10 s.
pub struct RunAgent {
    child: Child,
    /// Removed once `drop` has stopped the agent (fields drop after it).
    logs: TempDir,
}

impl RunAgent {
    /// `scalewise-agent run ARGS`.
    pub fn start(args: &[&str]) -> anyhow::Result<RunAgent> {
        RunAgent::start_with(Command::new(agent_bin()), args)
    }

    /// `run ARGS` through `cmd`, a command for the agent binary that execs it (inside a network
    /// namespace, through `setpriv` or [`wrapped`]), so the child's pid is the agent's.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> anyhow::Result<RunAgent> {
        let logs = TempDir::new("agent")?;
        let child = cmd
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.join("stdout"))?)
            .stderr(std::fs::File::create(logs.join("stderr"))?)
            .spawn()
            .context("starting scalewise-agent run")?;
        Ok(RunAgent { child, logs })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.join("stdout")).unwrap_or_default()
    }

    /// What it wrote to stderr (its log) so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.join("stderr")).unwrap_or_default()
    }

    /// Its resident memory, in KiB (0 once it is gone).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// SIGTERM and wait ([`stop`]): whether it exited successfully within the grace period, and
    /// its stderr.
    pub fn stop(mut self) -> (bool, String) {
        let ok = stop(&mut self.child).is_some_and(|st| st.success());
        (ok, self.stderr())
    }
}

impl Drop for RunAgent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// What headless Chromium printed, and how it ended (`None`: killed after a minute).
pub struct Browser {
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs headless Chromium (Debian's `chromium`, installed by scripts/install-deps) with `args`:
/// no sandbox (root), no network chatter, a fresh profile dir of its own. A browser that hangs
/// is killed after a minute (a guard, not a check).
pub fn chromium<S: AsRef<OsStr>>(args: &[S]) -> anyhow::Result<Browser> {
    let profile = TempDir::new("chromium-profile")?;
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting chromium (install it: scripts/install-deps)")?;
    fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(Browser {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
    })
}

/// Serialises tests that load the machine (2 cores: accuracy needs them alone).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A private network namespace with only loopback, like a Kubernetes pod's: every listener in it
/// is the service's. Processes run in it through [`NetNs::command`]; deleted on drop. Needs root.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> anyhow::Result<NetNs> {
        let name = format!("scalewise-{}-{}", std::process::id(), free_port());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()?
            .success()
            && Command::new("ip")
                .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
                .status()?
                .success();
        if !ok {
            bail!("creating network namespace {name} failed (needs root and iproute2)");
        }
        Ok(NetNs { name })
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs, so the child's
    /// pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Starts a `scalewise-workload` service in the namespace.
    pub fn workload(&self, args: &[&str]) -> anyhow::Result<Service> {
        let mut all = vec![workload_bin().to_string_lossy().into_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut wrapped = vec!["netns", "exec", &self.name];
        wrapped.extend(refs);
        Service::spawn("ip", &wrapped)
    }

    /// The service's truth, fetched from inside the namespace.
    pub fn truth(&self, port: u16) -> anyhow::Result<Truth> {
        let out = self
            .command(workload_bin())
            .args([
                "get",
                "--target",
                &format!("127.0.0.1:{port}"),
                "--path",
                "/truth",
            ])
            .output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The load generator in the namespace.
    pub fn load(
        &self,
        port: u16,
        concurrency: u32,
        duration_s: f64,
        extra: &[&str],
    ) -> anyhow::Result<Load> {
        Load::spawn(
            self.command(workload_bin()),
            port,
            concurrency,
            duration_s,
            extra,
        )
    }

    /// `diagnose --format json` run inside the namespace, as a sidecar would.
    pub fn diagnose(&self, pids: &[u32], duration_s: f64) -> anyhow::Result<serde_json::Value> {
        Ok(run_diagnose(self.command(agent_bin()), pids, duration_s, &[])?["services"][0].clone())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The pid and all its descendants (a master and its workers, a postmaster and its backends).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i];
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        i += 1;
    }
    pids
}

/// A private Redis on a free loopback port, no persistence; stopped by pid on drop.
pub fn redis_server() -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/install-deps installs it)");
    wait_listening(port);
    (Proc(child), port)
}
