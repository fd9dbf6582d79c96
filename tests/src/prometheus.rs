//! A real Prometheus (Debian's 2.42) for the dashboard and rule tests: started on loopback with a
//! free port and a temp dir, queried through its HTTP API, stopped by pid on drop. Also what those
//! tests share about the shipped files: every query of every dashboard panel, Grafana's template
//! variables substituted, and YAML read through Python's PyYAML (there is no YAML crate in the
//! workspace; PyYAML comes with `kubernetes-validate`, which `scripts/install-deps` installs).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A tool the tests need, found on PATH; an error that says how to get it otherwise (the tests
/// fail rather than skip: a missing tool must not look like a pass).
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("`{name}` not found on PATH: run scripts/install-deps (Debian `prometheus` for promtool/prometheus, PyPI `kubernetes-validate`, systemd)")
        })
}

/// Runs a tool; returns stdout+stderr, or an error with both when it exits non-zero.
pub fn run_tool(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// `promtool check metrics` on an exposition: whether promtool accepted it, and what it said
/// (stdout and stderr; lint findings come with success too).
pub fn promtool_check_metrics(body: &str) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new(tool("promtool")?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("promtool has no stdin"))?
        .write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// One GET over HTTP/1.0 (so the server closes the connection and sends no chunked body):
/// the status code and the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end in answer from {addr}{path}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line from {addr}{path}: {head}"))?;
    Ok((code, body.to_string()))
}

/// Percent-encoding for a query-string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Prometheus server, stopped by pid on drop.
pub struct Prometheus {
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` on 127.0.0.1 with `config` and its TSDB in `tsdb`; waits until ready.
    pub fn start(config: &Path, tsdb: &Path) -> anyhow::Result<Prometheus> {
        let bin = tool("prometheus")?;
        let port = crate::harness::free_port();
        let log = tsdb.with_extension("log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=30d")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting prometheus")?;
        let mut p = Prometheus { port, child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&p.addr(), "/-/ready") {
                return Ok(p);
            }
            if Instant::now() > deadline || matches!(p.child.try_wait(), Ok(Some(_))) {
                bail!("prometheus did not become ready:\n{}", p.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An API GET; the `data` member of a successful answer.
    pub fn api(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let (code, body) = http_get(&self.addr(), path_and_query)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("HTTP {code} from {path_and_query}: {body}"))?;
        if v["status"] != "success" {
            bail!(
                "{path_and_query}: HTTP {code}: {} {}",
                v["errorType"],
                v["error"]
            );
        }
        Ok(v["data"].clone())
    }

    /// An instant query at now: the result vector (or a scalar as one element).
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        Ok(match data["resultType"].as_str() {
            Some("scalar") | Some("string") => vec![data["result"].clone()],
            _ => data["result"].as_array().cloned().unwrap_or_default(),
        })
    }

    /// Polls `expr` until it returns something, or fails after `timeout`.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.query(expr)?.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no data for `{expr}` after {timeout:?}; prometheus log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        crate::harness::stop(&mut self.child);
    }
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// The shipped dashboards: (file name, parsed JSON), in a stable order.
pub fn dashboards() -> anyhow::Result<Vec<(String, Value)>> {
    let dir = repo_root().join("dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.is_empty() {
        bail!("no dashboards in {}", dir.display());
    }
    Ok(out)
}

/// Every panel of a dashboard, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for inner in p["panels"].as_array().into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

/// Every query (target `expr`) of every panel of every shipped dashboard, unsubstituted.
pub fn dashboard_queries() -> anyhow::Result<Vec<PanelQuery>> {
    let mut out = Vec::new();
    for (file, d) in dashboards()? {
        let title = d["title"].as_str().unwrap_or(&file).to_string();
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(PanelQuery {
                        dashboard: title.clone(),
                        panel: p["title"].as_str().unwrap_or("?").to_string(),
                        ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                        expr: expr.to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Grafana's template variables in `text` (`$name`, `${name}`, `${name:format}`), in order.
pub fn variables_used(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let start = if b.get(i + 1) == Some(&b'{') {
                i + 2
            } else {
                i + 1
            };
            let mut j = start;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j > start {
                out.push(text[start..j].to_string());
            }
            // Past the name (and the `:format` of `${name:format}`, which is not a variable).
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// `expr` with Grafana's variables replaced: `vars` for the dashboard's own, fixed values for the
/// built-in intervals (`$__rate_interval` 1m, `$__interval` 15s, `$__range` 1h).
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut all: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.extend(
        [
            ("__rate_interval", "1m"),
            ("__interval", "15s"),
            ("__range", "1h"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    // Longest names first, so `$service` never eats `$service_x`'s prefix.
    all.sort_by_key(|kv| std::cmp::Reverse(kv.0.len()));
    let mut out = expr.to_string();
    for (k, v) in &all {
        out = out.replace(&format!("${{{k}}}"), v);
        out = out.replace(&format!("${k}"), v);
    }
    out
}

/// `expr` as a dashboard shows it for one service: [`substitute`] with `$service` set to
/// `service` and every instance, agent and collector selected (`.*`).
pub fn for_service(expr: &str, service: &str) -> String {
    substitute(
        expr,
        &[
            ("service", service),
            ("instance", ".*"),
            ("agent", ".*"),
            ("collector", ".*"),
        ],
    )
}

/// A YAML file's documents as JSON, through Python's PyYAML.
pub fn yaml_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let python = tool("python3")?;
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
        ])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "reading {} as YAML failed (needs PyYAML: scripts/install-deps): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Writes the shipped Prometheus configuration into `dir` as the tests run it: the rules beside
/// it, the given file_sd targets, scrapes and rule evaluation every `interval` instead of 15s.
pub fn prometheus_config(
    dir: &Path,
    agents: &[String],
    collectors: &[String],
    interval: &str,
) -> anyhow::Result<PathBuf> {
    let shipped = std::fs::read_to_string(repo_root().join("deploy/prometheus/prometheus.yml"))?;
    if !(shipped.contains("scrape_interval: 15s") && shipped.contains("evaluation_interval: 15s")) {
        bail!("deploy/prometheus/prometheus.yml no longer sets 15s intervals");
    }
    let config = shipped
        .replace(
            "scrape_interval: 15s",
            &format!("scrape_interval: {interval}"),
        )
        .replace(
            "evaluation_interval: 15s",
            &format!("evaluation_interval: {interval}"),
        );
    std::fs::create_dir_all(dir.join("targets"))?;
    let targets = |t: &[String]| serde_json::json!([{ "targets": t }]).to_string();
    std::fs::write(dir.join("targets/scalewise-agents.json"), targets(agents))?;
    std::fs::write(
        dir.join("targets/scalewise-collectors.json"),
        targets(collectors),
    )?;
    std::fs::copy(
        repo_root().join("dashboards/rules/scalewise.rules.yaml"),
        dir.join("scalewise.rules.yaml"),
    )?;
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config)?;
    Ok(path)
}
