//! The `scalewise-agent` binary: parses flags, sets up logging, runs a command from the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use scalewise_agent::deps::DependencySpec;
use scalewise_agent::gc::GcOptions;
use scalewise_agent::session::SessionConfig;
use scalewise_core::engine::Thresholds;

/// Where does a service's request time go, and what kind of scale is it limited by?
///
/// scalewise samples running processes without code changes: CPU time and run-queue delay per
/// thread (schedstat), what blocked threads wait on (/proc/TID/syscall), each TCP connection's
/// last exchange (NETLINK_SOCK_DIAG tcp_info), cgroup CPU limits and GC pauses. From these it
/// builds a request time budget (cpu, gc, cpu_wait, downstream, local_wait) and a verdict:
/// scale_up (CPU-bound), scale_out (waiting in-process with CPU to spare), dependency (waiting on
/// downstream) or insufficient_data.
///
/// Permissions: run as the service's user, or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH.
/// In Kubernetes, run as a sidecar with shareProcessNamespace: true.
#[derive(Parser, Debug)]
#[command(name = "scalewise-agent", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Log filter (tracing EnvFilter syntax), also read from RUST_LOG [default: info for run,
    /// warn otherwise].
    #[arg(long, global = true, env = "RUST_LOG")]
    log: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    /// A readable table with bars and evidence.
    Text,
    /// The JSON document of the diagnose contract (docs/ARCHITECTURE.md).
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Sample a running service for a while and print where its request time goes.
    ///
    /// Ctrl-C (or SIGTERM) ends the window early: the diagnosis over the time sampled so far is
    /// printed and the --report files written, as at a normal end (exit 0), and the evidence says
    /// the window was cut short. A second Ctrl-C aborts at once (exit 130).
    ///
    /// Example: scalewise-agent diagnose --pid 1234 --duration 20
    Diagnose {
        /// A process of the service; repeat for a service made of several processes.
        #[arg(long = "pid", required = true, value_name = "PID")]
        pids: Vec<u32>,
        /// Service name in the report (default: the first process's command name).
        #[arg(long)]
        service: Option<String>,
        /// How long to sample, in seconds. Longer windows give more confident answers. Ctrl-C
        /// ends the window sooner, with the diagnosis of what was sampled.
        #[arg(
            long,
            default_value_t = 20.0,
            value_name = "SECONDS",
            allow_negative_numbers = true
        )]
        duration: f64,
        /// Name a downstream endpoint: ADDR:PORT=NAME[:KIND], e.g. 10.0.0.5:5432=orders-db.
        #[arg(long = "dependency", value_name = "ADDR:PORT=NAME")]
        dependencies: Vec<DependencySpec>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// The service's Prometheus endpoint, read for GC metrics (go_gc_duration_seconds,
        /// jvm_gc_pause_seconds, nodejs_gc_duration_seconds, ...), e.g. http://127.0.0.1:9100/metrics.
        #[arg(long, value_name = "URL")]
        metrics_url: Option<String>,
        /// A Go service's expvar endpoint (http://HOST:PORT/debug/vars), read at most every 30 s
        /// because it stops the world. Opt-in.
        #[arg(long, value_name = "URL")]
        expvar_url: Option<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Do not print progress on stderr.
        #[arg(long, short)]
        quiet: bool,
        /// Also write the rewrite report here (format from the extension: .html, .md, .json);
        /// repeat for several formats.
        #[arg(long = "report", value_name = "FILE")]
        reports: Vec<std::path::PathBuf>,
        #[command(flatten)]
        projection: scalewise_agent::report::ProjectionArgs,
        #[command(flatten)]
        otlp: OtlpArgs,
    },
    /// Should we rewrite? What a rewrite to each target would buy, next to fixing dependencies,
    /// scaling out, growing pools and tuning GC, from a saved `diagnose --format json`.
    ///
    /// Example: scalewise-agent report --input diagnosis.json --target rust --format html --output report.html
    Report(scalewise_agent::report::ReportArgs),
    /// Watch services indefinitely and stream their budget counters: OTLP to a collector,
    /// Prometheus text to a scraper. The sidecar / per-host daemon.
    ///
    /// Targets (re-evaluated at each discovery): --pid (one service), --process REGEX (a service
    /// that restarts under a new pid is picked up again), or neither: every process with a
    /// listening TCP socket in the agent's network namespace (the sidecar default with
    /// shareProcessNamespace: true), grouped into services by cgroup and name; add
    /// --all-namespaces on a host to reach every network namespace (needs CAP_SYS_ADMIN for
    /// setns; without it, services in other namespaces are reported as skipped).
    ///
    /// Service name: --service, else the target's OTEL_SERVICE_NAME or service.name in
    /// OTEL_RESOURCE_ATTRIBUTES, else its command name. Kubernetes attributes come from the
    /// downward-API variables (K8S_POD_NAME/POD_NAME, K8S_NAMESPACE/POD_NAMESPACE,
    /// K8S_NODE_NAME/NODE_NAME) of the target or the agent.
    ///
    /// Example: scalewise-agent run --process 'gunicorn' --collector http://collector:4318
    Run {
        /// A process of the service; repeat for a service made of several processes.
        #[arg(long = "pid", value_name = "PID", conflicts_with = "processes")]
        pids: Vec<u32>,
        /// Watch processes whose command line matches this regex (repeatable).
        #[arg(long = "process", value_name = "REGEX")]
        processes: Vec<String>,
        /// Service name for every target (default: from the target's environment, else its
        /// command name).
        #[arg(long)]
        service: Option<String>,
        /// Also watch services in other network namespaces (per-host mode; needs CAP_SYS_ADMIN).
        #[arg(long)]
        all_namespaces: bool,
        /// The collector's base URL, e.g. http://collector:4318 (OTLP/HTTP protobuf, gzip, to
        /// URL/v1/metrics).
        #[arg(long, value_name = "URL")]
        collector: Option<String>,
        /// A file holding a bearer token for the collector.
        #[arg(long, value_name = "FILE", requires = "collector")]
        collector_token_file: Option<std::path::PathBuf>,
        /// PEM CA certificate(s) to trust for an https:// collector (a self-signed deployment),
        /// on top of the system roots.
        #[arg(long, value_name = "FILE", requires = "collector")]
        collector_ca: Option<std::path::PathBuf>,
        /// Seconds between exports.
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        export_interval: f64,
        /// Serve Prometheus metrics (budget counters and the agent's own) on ADDR/metrics,
        /// e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Seconds between target discoveries (new processes, exits, restarts).
        #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
        discovery_interval: f64,
        /// Name a downstream endpoint: ADDR:PORT=NAME[:KIND], e.g. 10.0.0.5:5432=orders-db.
        #[arg(long = "dependency", value_name = "ADDR:PORT=NAME")]
        dependencies: Vec<DependencySpec>,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// Start sample services (CPU-bound, slow downstream, lock-contended), load them, diagnose
    /// each and compare with the ground truth they record about themselves.
    ///
    /// With --system: the whole pipeline instead. A collector on a loopback port, the three
    /// services under load, one `scalewise-agent run` per service exporting to the collector,
    /// and each service's verdict from the collector as it settles (with the truth), until
    /// Ctrl-C stops everything it started. The web page's address is printed first.
    Demo {
        /// Seconds of sampling per sample service (not with --system).
        #[arg(long, default_value_t = 6.0, value_name = "SECONDS")]
        duration: f64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Run the collector and one `run` agent per service, and follow the verdicts.
        #[arg(long)]
        system: bool,
        /// With --system: the collector's address [default: a free loopback port].
        #[arg(long, value_name = "ADDR", requires = "system")]
        listen: Option<std::net::SocketAddr>,
        /// With --system: stop by itself after this many seconds instead of waiting for Ctrl-C.
        #[arg(long, value_name = "SECONDS", requires = "system")]
        stop_after: Option<f64>,
    },
}

/// How densely a session samples: shared by `diagnose` and `run`.
#[derive(clap::Args, Debug, Clone)]
struct SamplingArgs {
    /// Socket sampling interval in milliseconds.
    #[arg(long = "sample-interval-ms", default_value_t = 200, value_name = "MS")]
    sample_interval_ms: u64,
    /// Connections looked up per sampling round (about 3 us of CPU each). Connections with
    /// a request outstanding are always looked up; idle ones share the rest, sampled
    /// without bias. More buys a smaller sampling error on services with many connections
    /// (the evidence states it); fewer costs less.
    #[arg(long = "max-lookups", default_value_t = scalewise_agent::sampler::sockets::DEFAULT_MAX_LOOKUPS, value_name = "N")]
    max_lookups: usize,
}

impl SamplingArgs {
    /// Checks the flags and sets them on a session's configuration.
    fn apply(&self, cfg: &mut SessionConfig) -> anyhow::Result<()> {
        if !(10..=10_000).contains(&self.sample_interval_ms) {
            anyhow::bail!("--sample-interval-ms must be between 10 and 10000");
        }
        cfg.sample_interval = Duration::from_millis(self.sample_interval_ms);
        cfg.max_lookups = self.max_lookups;
        Ok(())
    }
}

/// Spans: the exact source of request time, for services instrumented with OpenTelemetry.
#[derive(clap::Args, Debug, Clone)]
struct OtlpArgs {
    /// Receive OTLP traces here: HTTP/protobuf or JSON on /v1/traces (gzip or not) and gRPC, on
    /// the same port. Point the service's SDK at it (the SDKs' default is 127.0.0.1:4318 for
    /// HTTP, 4317 for gRPC; repeat the flag to listen on both). Services that send spans get
    /// their request time, rate, latency and downstream time from them (`requests.source` is
    /// `spans`). Loopback only, unless --otlp-insecure.
    #[arg(long = "otlp-listen", value_name = "ADDR")]
    otlp_listen: Vec<std::net::SocketAddr>,
    /// Forward every received traces body unchanged (HTTP/protobuf) to the team's pipeline, e.g.
    /// http://otel-collector:4318/v1/traces. Best-effort: a slow or dead target never holds up
    /// the agent; what cannot be queued is dropped and counted.
    #[arg(long, value_name = "URL", requires = "otlp_listen")]
    traces_forward: Option<String>,
    /// After sampling, wait at most this long for the service's exporter to send the spans that
    /// ended in the window (SDKs batch them, by default every 5 s).
    #[arg(long, default_value_t = 6.0, value_name = "SECONDS")]
    otlp_flush_wait: f64,
    /// Allow a non-loopback --otlp-listen address with no authentication.
    #[arg(long)]
    otlp_insecure: bool,
}

impl OtlpArgs {
    /// The running receiver, if asked for.
    fn start(&self) -> anyhow::Result<Option<scalewise_agent::spans::Spans>> {
        if self.otlp_listen.is_empty() {
            return Ok(None);
        }
        if !(self.otlp_flush_wait.is_finite() && (0.0..=300.0).contains(&self.otlp_flush_wait)) {
            anyhow::bail!("--otlp-flush-wait must be between 0 and 300 seconds");
        }
        let mut cfg = scalewise_agent::spans::ReceiverConfig::new(self.otlp_listen.clone());
        cfg.forward = self.traces_forward.clone();
        cfg.insecure = self.otlp_insecure;
        Ok(Some(scalewise_agent::spans::Spans::start(cfg)?))
    }
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
        anyhow::bail!("{flag} must be between 0 and 86400 seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// Writes to stdout; a reader that went away (`| head`) ends the output quietly, not in a panic.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Diagnose {
            pids,
            service,
            duration,
            dependencies,
            format,
            metrics_url,
            expvar_url,
            sampling,
            quiet,
            reports,
            projection,
            otlp,
        } => {
            let duration = seconds("--duration", duration)?;
            // Refuse a bad report request before sampling, not after.
            for path in &reports {
                scalewise_agent::report::format_of(path)?;
                scalewise_agent::report::options(&projection)?;
            }
            let mut cfg = SessionConfig::new(pids);
            sampling.apply(&mut cfg)?;
            cfg.dependencies = dependencies;
            cfg.gc = GcOptions {
                metrics_url,
                expvar_url,
                ..GcOptions::default()
            };
            let spans = otlp.start()?;
            // Ctrl-C (or SIGTERM) closes the window early; a second one aborts.
            scalewise_agent::stop::install()?;
            let report = scalewise_agent::diagnose::run_with_spans(
                cfg,
                service,
                duration,
                &Thresholds::default(),
                spans
                    .as_ref()
                    .map(|spans| scalewise_agent::diagnose::SpanSource {
                        spans,
                        flush_wait: Duration::from_secs_f64(otlp.otlp_flush_wait),
                    }),
                &scalewise_agent::diagnose::Stop {
                    requested: &scalewise_agent::stop::requested,
                    hint: "Ctrl-C again to abort",
                },
                &mut |line| {
                    if !quiet {
                        eprintln!("{line}");
                    }
                },
            )?;
            match format {
                Format::Json => emit(&serde_json::to_string_pretty(&report)?)?,
                Format::Text => {
                    for d in &report.services {
                        emit(&scalewise_agent::render::text(d))?;
                    }
                }
            }
            for path in reports {
                for f in scalewise_agent::report::write_for(&report.services, &path, &projection)? {
                    if !quiet {
                        eprintln!("rewrite report written to {}", f.display());
                    }
                }
            }
        }
        Cmd::Report(args) => match scalewise_agent::report::run(&args)? {
            scalewise_agent::report::Output::Stdout(text) => emit(&text)?,
            scalewise_agent::report::Output::Files(files) => {
                for f in files {
                    eprintln!("rewrite report written to {}", f.display());
                }
            }
        },
        Cmd::Run {
            pids,
            processes,
            service,
            all_namespaces,
            collector,
            collector_token_file,
            collector_ca,
            export_interval,
            metrics_listen,
            discovery_interval,
            dependencies,
            sampling,
        } => {
            use scalewise_agent::run::discovery::{DiscoveryConfig, Selector};
            if collector.is_none() && metrics_listen.is_none() {
                anyhow::bail!("run needs --collector URL or --metrics-listen ADDR (or both)");
            }
            if let Some(url) = &collector {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!("--collector must be an http:// or https:// URL, got {url}");
                }
            }
            let interval = |flag: &str, s: f64| {
                if s.is_finite() && (0.5..=3600.0).contains(&s) {
                    Ok(Duration::from_secs_f64(s))
                } else {
                    Err(anyhow::anyhow!(
                        "{flag} must be between 0.5 and 3600 seconds, got {s}"
                    ))
                }
            };
            let export_interval = interval("--export-interval", export_interval)?;
            let target_interval = interval("--discovery-interval", discovery_interval)?;
            let mut session = SessionConfig::new(Vec::new());
            sampling.apply(&mut session)?;
            let selector = if !pids.is_empty() {
                Selector::Pids(pids)
            } else if !processes.is_empty() {
                let mut regexes = Vec::new();
                for p in &processes {
                    regexes.push(
                        regex::Regex::new(p)
                            .map_err(|e| anyhow::anyhow!("--process {p:?}: {e}"))?,
                    );
                }
                Selector::Process(regexes)
            } else {
                Selector::Listening
            };
            session.dependencies = dependencies;
            let cfg = scalewise_agent::run::RunConfig {
                discovery: DiscoveryConfig {
                    selector,
                    service,
                    all_namespaces,
                    proc_root: session.proc_root.clone(),
                },
                session,
                target_interval,
                collector,
                collector_token_file,
                collector_ca,
                export_interval,
                metrics_listen,
            };
            scalewise_agent::run::run(cfg)?;
        }
        Cmd::Demo {
            system: true,
            listen,
            stop_after,
            format,
            ..
        } => {
            let opts = scalewise_agent::demo::system::SystemOptions {
                listen,
                stop_after: stop_after.map(|s| seconds("--stop-after", s)).transpose()?,
            };
            let json = matches!(format, Format::Json);
            let last = scalewise_agent::demo::system::run(opts, &mut |line| {
                if json {
                    eprintln!("{line}");
                } else {
                    let _ = emit(line);
                }
            })?;
            if json {
                let services: Vec<_> = last.iter().map(|s| &s.diagnosis).collect();
                emit(&serde_json::to_string_pretty(
                    &serde_json::json!({ "services": services }),
                )?)?;
            }
        }
        Cmd::Demo {
            duration, format, ..
        } => {
            let duration = seconds("--duration", duration)?;
            let cases = scalewise_agent::demo::run(duration, &mut |line| eprintln!("{line}"))?;
            match format {
                Format::Json => {
                    let services: Vec<_> = cases.iter().map(|c| &c.diagnosis).collect();
                    emit(&serde_json::to_string_pretty(
                        &serde_json::json!({ "services": services }),
                    )?)?;
                }
                Format::Text => {
                    for c in &cases {
                        emit(&scalewise_agent::render::text(&c.diagnosis))?;
                    }
                    emit(&scalewise_agent::demo::summary(&cases))?;
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Cmd::Run { .. } => "info",
        _ => "warn",
    };
    let log = cli.log.clone().unwrap_or_else(|| default_log.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a container's log (`podman logs`, `kubectl logs`) or a
        // journal gets plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
