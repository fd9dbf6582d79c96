//! `scalewise-collector`: receives the agents' OTLP metrics and serves every service's verdict.
//! Thin: flags and config, tracing, then [`scalewise_collector::serve`] until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use scalewise_collector::config::{parse_duration, Config, Dur};
use scalewise_collector::{serve, App};

/// Receives scalewise agents' OTLP metrics and serves, per service, where request time goes and
/// what limits it (REST, Prometheus /metrics, a web page).
#[derive(Parser, Debug)]
#[command(name = "scalewise-collector", version)]
struct Args {
    /// TOML configuration file (see deploy/collector.toml); flags override it.
    #[arg(long, env = "SCALEWISE_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// OTLP/HTTP, REST, /metrics and the web page [default: 127.0.0.1:4318].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also serve OTLP/gRPC here (e.g. 127.0.0.1:4317).
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// Directory of the SQLite store [default: ./scalewise-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// File of bearer tokens (one per line), required for a non-loopback listen.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Allow a non-loopback listen without tokens.
    #[arg(long)]
    insecure: bool,
    /// PEM certificate chain: serve HTTPS on --listen and gRPC over TLS on --grpc-listen
    /// (needs --tls-key). TLS does not replace --token-file.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most open connections, both listeners together; more are closed at once [default: 1024].
    #[arg(long)]
    max_connections: Option<usize>,
    /// A connection's TLS handshake and request headers must arrive within this [default: 30s].
    #[arg(long, value_parser = dur)]
    header_timeout: Option<Dur>,
    /// An OTLP/HTTP body must arrive within this after its headers [default: 10s].
    #[arg(long, value_parser = dur)]
    body_timeout: Option<Dur>,
    /// Every request is answered (or refused) within this [default: 30s].
    #[arg(long, value_parser = dur)]
    request_timeout: Option<Dur>,
    /// How often snapshots are written to SQLite (e.g. 5s) [default: 5s].
    #[arg(long, value_parser = dur)]
    flush_interval: Option<Dur>,
    /// Window of the engine results in /metrics and the fleet page [default: 5m].
    #[arg(long, value_parser = dur)]
    metrics_window: Option<Dur>,
    /// Recent snapshots kept in memory; older windows read SQLite [default: 10m].
    #[arg(long, value_parser = dur)]
    memory_retention: Option<Dur>,
    /// Most services tracked [default: 2000].
    #[arg(long)]
    max_services: Option<usize>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn dur(s: &str) -> Result<Dur, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = args.grpc_listen {
        c.grpc_listen = Some(v);
    }
    if let Some(v) = &args.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = &args.token_file {
        c.token_file = Some(v.clone());
    }
    c.insecure |= args.insecure;
    if let Some(v) = &args.tls_cert {
        c.tls_cert = Some(v.clone());
    }
    if let Some(v) = &args.tls_key {
        c.tls_key = Some(v.clone());
    }
    if let Some(v) = args.max_connections {
        c.limits.max_connections = v;
    }
    if let Some(v) = args.header_timeout {
        c.limits.header_timeout = v;
    }
    if let Some(v) = args.body_timeout {
        c.limits.body_timeout = v;
    }
    if let Some(v) = args.request_timeout {
        c.limits.request_timeout = v;
    }
    if let Some(v) = args.flush_interval {
        c.flush_interval = v;
    }
    if let Some(v) = args.metrics_window {
        c.metrics_window = v;
    }
    if let Some(v) = args.memory_retention {
        c.memory_retention = v;
    }
    if let Some(v) = args.max_services {
        c.limits.max_services = v;
    }
    c.validate()?;
    Ok(c)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a container's log (`podman logs`, `kubectl logs`) or a
        // journal gets plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scalewise-collector: {e:#}");
            std::process::exit(64);
        }
    };
    if args.print_config {
        print!("{}", toml::to_string(&cfg).unwrap_or_default());
        return;
    }
    if let Err(e) = run(cfg) {
        eprintln!("scalewise-collector: {e:#}");
        std::process::exit(1);
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let app = App::open(cfg.clone())?;
        let http = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listen on {}", cfg.listen))?;
        let grpc = match cfg.grpc_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("listen on {a}"))?,
            ),
            None => None,
        };
        let scheme = if app.tls.is_some() { "https" } else { "http" };
        tracing::info!(
            listen = %http.local_addr()?,
            grpc = ?grpc.as_ref().and_then(|g| g.local_addr().ok()),
            tls = app.tls.is_some(),
            data_dir = %cfg.data_dir.display(),
            "scalewise-collector serving; web page at {scheme}://{}/",
            http.local_addr()?
        );
        serve(app, http, grpc, shutdown_signal()).await?;
        tracing::info!("stopped; store flushed");
        Ok(())
    })
}
