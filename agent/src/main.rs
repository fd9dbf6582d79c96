//! The `scalewise-agent` binary: parses flags, sets up logging, runs a command from the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use scalewise_agent::deps::DependencySpec;
use scalewise_agent::gc::GcOptions;
use scalewise_agent::session::SessionConfig;
use scalewise_collector::engine::Thresholds;

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
    /// Log filter (tracing EnvFilter syntax), also read from RUST_LOG.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "warn")]
    log: String,
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
    /// Example: scalewise-agent diagnose --pid 1234 --duration 20
    Diagnose {
        /// A process of the service; repeat for a service made of several processes.
        #[arg(long = "pid", required = true, value_name = "PID")]
        pids: Vec<u32>,
        /// Service name in the report (default: the first process's command name).
        #[arg(long)]
        service: Option<String>,
        /// How long to sample, in seconds. Longer windows give more confident answers.
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
        /// Socket sampling interval in milliseconds.
        #[arg(long, default_value_t = 200, value_name = "MS")]
        sample_interval_ms: u64,
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
    /// Start sample services (CPU-bound, slow downstream, lock-contended), load them, diagnose
    /// each and compare with the ground truth they record about themselves.
    Demo {
        /// Seconds of sampling per sample service.
        #[arg(long, default_value_t = 6.0, value_name = "SECONDS")]
        duration: f64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
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

fn seconds(s: f64) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
        anyhow::bail!("--duration must be between 0 and 86400 seconds, got {s}");
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
            sample_interval_ms,
            quiet,
            reports,
            projection,
            otlp,
        } => {
            let duration = seconds(duration)?;
            // Refuse a bad report request before sampling, not after.
            for path in &reports {
                scalewise_agent::report::format_of(path)?;
                scalewise_agent::report::options(&projection)?;
            }
            if !(10..=10_000).contains(&sample_interval_ms) {
                anyhow::bail!("--sample-interval-ms must be between 10 and 10000");
            }
            let mut cfg = SessionConfig::new(pids);
            cfg.sample_interval = Duration::from_millis(sample_interval_ms);
            cfg.dependencies = dependencies;
            cfg.gc = GcOptions {
                metrics_url,
                expvar_url,
                ..GcOptions::default()
            };
            let spans = otlp.start()?;
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
        Cmd::Demo { duration, format } => {
            let duration = seconds(duration)?;
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
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
