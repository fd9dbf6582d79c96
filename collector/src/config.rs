//! The collector's configuration: one struct, read from a TOML file (`--config`) and overridden
//! by flags. Every field has a default, so an empty file is a valid configuration; unknown keys
//! are an error, so a typo does not silently fall back to a default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::duration::{parse_duration, Dur, DurationError};
use crate::limits::Limits;

/// Windows longer than this are refused by the REST API (the store keeps 30 days by default).
pub const MAX_WINDOW_MS: i64 = 90 * 86_400_000;

/// A REST `window` (or `step`) query parameter, in milliseconds: `default_ms` when absent, else a
/// duration ([`parse_duration`]) between 1s and 90d. The error is the 400's message.
pub fn window_param(value: Option<&str>, key: &str, default_ms: i64) -> Result<i64, String> {
    match value {
        None => Ok(default_ms),
        Some(w) => match parse_duration(w) {
            Ok(d) if d.ms() <= MAX_WINDOW_MS && d.ms() >= 1000 => Ok(d.ms()),
            Ok(_) => Err(format!("{key} must be between 1s and 90d")),
            Err(e) => Err(format!("{key}: {e}")),
        },
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One step of downsampling: snapshots older than `older_than` are kept one per `resolution`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub older_than: Dur,
    pub resolution: Dur,
}

/// How long snapshots are kept, and how coarse they become with age.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Downsampling steps, by age. Younger snapshots are kept as received.
    pub tiers: Vec<Tier>,
    /// Snapshots older than this are deleted.
    pub max_age: Dur,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            tiers: vec![
                Tier {
                    older_than: Dur::secs(3600),
                    resolution: Dur::secs(60),
                },
                Tier {
                    older_than: Dur::secs(86_400),
                    resolution: Dur::secs(600),
                },
            ],
            max_age: Dur::secs(30 * 86_400),
        }
    }
}

/// Everything `scalewise-collector` can be told. The flags mirror these fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// OTLP/HTTP, REST, `/metrics` and the web page, on one port. Loopback by default.
    pub listen: SocketAddr,
    /// OTLP/gRPC (`MetricsService/Export`), off unless set.
    pub grpc_listen: Option<SocketAddr>,
    /// Where the SQLite store lives (created if missing).
    pub data_dir: PathBuf,
    /// A file of bearer tokens, one per line; required to listen on a non-loopback address.
    pub token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without tokens (behind a trusted proxy or mesh).
    pub insecure: bool,
    /// PEM certificate chain (server certificate first). With `tls_key`, both listeners serve
    /// TLS only (HTTPS and gRPC over TLS).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// How often received snapshots are written to SQLite: a `kill -9` loses at most this much.
    pub flush_interval: Dur,
    /// The window of the engine results in `/metrics` and of the fleet page.
    pub metrics_window: Dur,
    /// How much of each instance's recent snapshots is kept in memory; older windows are read
    /// from SQLite.
    pub memory_retention: Dur,
    /// In memory, snapshots older than two minutes are thinned to one per this step (SQLite keeps
    /// full resolution for an hour and serves single-service windows reaching that far back).
    pub memory_resolution: Dur,
    /// An instance that sent nothing for this long is forgotten from memory (its history stays).
    pub instance_ttl: Dur,
    pub limits: Limits,
    pub retention: Retention,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 4318)),
            grpc_listen: None,
            data_dir: PathBuf::from("scalewise-data"),
            token_file: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            flush_interval: Dur::secs(5),
            metrics_window: Dur::secs(300),
            memory_retention: Dur::secs(600),
            memory_resolution: Dur::secs(30),
            instance_ttl: Dur::secs(3600),
            limits: Limits::default(),
            retention: Retention::default(),
        }
    }
}

impl Config {
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Config::from_toml(&text, path)
    }

    /// Refuses what would be unsafe or cannot work: a non-loopback listen with neither tokens
    /// nor `insecure`, a memory retention shorter than the metrics window.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let exposed = !self.listen.ip().is_loopback()
            || self.grpc_listen.is_some_and(|g| !g.ip().is_loopback());
        if exposed && self.token_file.is_none() && !self.insecure {
            return Err(ConfigError::Invalid(format!(
                "listening on a non-loopback address ({}) needs --token-file (or --insecure)",
                self.listen
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "TLS needs both --tls-cert and --tls-key".to_string(),
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1".to_string(),
            ));
        }
        if self.memory_retention < self.metrics_window {
            return Err(ConfigError::Invalid(
                "memory_retention must be at least metrics_window".to_string(),
            ));
        }
        if self.flush_interval.0 < 100 {
            return Err(ConfigError::Invalid(
                "flush_interval must be at least 100ms".to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_rest_api_says() {
        assert_eq!(parse_duration("20s").expect("ok"), Dur::secs(20));
        assert_eq!(parse_duration("5m").expect("ok"), Dur::secs(300));
        assert_eq!(parse_duration("1h").expect("ok"), Dur::secs(3600));
        assert_eq!(parse_duration("90").expect("ok"), Dur::secs(90));
        assert_eq!(parse_duration("250ms").expect("ok"), Dur(250));
        for bad in ["", "-5s", "abc", "5x", "0", "1e30d", "NaNs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(Dur::secs(300).to_string(), "5m");
    }

    #[test]
    fn no_duration_is_zero_or_overflows() {
        // Found by the collector_config fuzz target: whole seconds skipped the text's bounds
        // (`metrics_window = 0` was accepted, a huge count overflowed), and under half a
        // millisecond of text rounded to a zero duration.
        let p = std::path::Path::new("x.toml");
        for bad in [
            "metrics_window = 0",
            "instance_ttl = 9223372036854775807",
            "flush_interval = 320000001",
            "metrics_window = \"0.1ms\"",
        ] {
            assert!(Config::from_toml(bad, p).is_err(), "{bad}");
        }
        assert!(parse_duration("0.4ms").is_err());
        assert_eq!(parse_duration("0.5ms").expect("rounds up"), Dur(1));
        let cfg = Config::from_toml("metrics_window = 120\ninstance_ttl = 320000000", p)
            .expect("whole seconds");
        assert_eq!(cfg.metrics_window, Dur::secs(120));
        assert_eq!(cfg.instance_ttl, Dur::secs(320_000_000));
    }

    #[test]
    fn window_params_are_between_one_second_and_ninety_days() {
        assert_eq!(window_param(None, "window", 300_000), Ok(300_000));
        assert_eq!(window_param(Some("1h"), "window", 0), Ok(3_600_000));
        assert_eq!(window_param(Some("90d"), "window", 0), Ok(MAX_WINDOW_MS));
        let e = window_param(Some("999ms"), "step", 0).expect_err("too short");
        assert_eq!(e, "step must be between 1s and 90d");
        assert!(window_param(Some("91d"), "window", 0).is_err());
        let e = window_param(Some("soon"), "window", 0).expect_err("not a duration");
        assert!(e.starts_with("window: not a duration"), "{e}");
    }

    #[test]
    fn the_shipped_example_parses_to_the_defaults() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.toml");
        let cfg = Config::load(&path).expect("deploy/collector.toml parses");
        assert_eq!(
            cfg,
            Config::default(),
            "deploy/collector.toml drifted from the defaults"
        );
        // And what the code would write is what is documented.
        let text = toml::to_string(&Config::default()).expect("serialise");
        let back = Config::from_toml(&text, &path).expect("round trip");
        assert_eq!(back, Config::default());
    }

    #[test]
    fn unknown_keys_and_unsafe_listens_are_refused() {
        let p = std::path::Path::new("x.toml");
        assert!(Config::from_toml("listne = \"0.0.0.0:1\"", p).is_err());
        let cfg = Config::from_toml("listen = \"0.0.0.0:4318\"", p).expect("parses");
        assert!(cfg.validate().is_err());
        let cfg = Config::from_toml("listen = \"0.0.0.0:4318\"\ninsecure = true", p).expect("ok");
        assert!(cfg.validate().is_ok());
        assert!(Config::default().validate().is_ok());
        // TLS alone does not replace tokens, and needs both halves.
        let tls = "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        let cfg = Config::from_toml(&format!("listen = \"0.0.0.0:4318\"\n{tls}"), p).expect("ok");
        assert!(cfg.validate().is_err());
        let cfg = Config::from_toml(
            &format!("listen = \"0.0.0.0:4318\"\ntoken_file = \"t\"\n{tls}"),
            p,
        )
        .expect("ok");
        assert!(cfg.validate().is_ok());
        let cfg = Config::from_toml("tls_cert = \"c.pem\"", p).expect("ok");
        assert!(cfg.validate().is_err());
        let cfg = Config::from_toml("[limits]\nrequest_timeout = \"5s\"", p).expect("ok");
        assert_eq!(cfg.limits.request_timeout, Dur::secs(5));
    }
}
