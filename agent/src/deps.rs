//! Naming downstream endpoints: a kind from well-known ports, and names the user gives.

use std::collections::HashMap;
use std::net::SocketAddr;

use thiserror::Error;

/// The usual kind of service on a well-known port; `unknown` otherwise.
pub fn kind_for_port(port: u16) -> &'static str {
    match port {
        5432 => "postgresql",
        3306 => "mysql",
        6379 => "redis",
        27017 => "mongodb",
        11211 => "memcached",
        9092 => "kafka",
        5672 => "amqp",
        4222 => "nats",
        9200 => "elasticsearch",
        80 | 8080 => "http",
        443 => "https",
        _ => "unknown",
    }
}

/// The usual kind of service behind a unix-domain socket, from its path: PostgreSQL's
/// `.s.PGSQL.5432` (any directory, any port), and names that say what they are.
pub fn kind_for_unix_path(path: &str) -> &'static str {
    let file = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    if file.starts_with(".s.pgsql.") {
        return "postgresql";
    }
    let has = |w: &str| file.contains(w);
    if has("pgbouncer") {
        "postgresql"
    } else if has("mysql") || has("mariadb") {
        "mysql"
    } else if has("redis") || has("valkey") {
        "redis"
    } else if has("memcache") {
        "memcached"
    } else if has("docker") || has("containerd") {
        "docker"
    } else {
        "unknown"
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DependencySpecError {
    #[error("--dependency {0:?}: expected ADDR:PORT=NAME or ADDR:PORT=NAME:KIND, e.g. 10.0.0.5:5432=orders-db")]
    Syntax(String),
}

/// One `--dependency` flag: an endpoint with a name and optionally a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependencySpec {
    pub endpoint: SocketAddr,
    pub name: String,
    pub kind: Option<String>,
}

impl std::str::FromStr for DependencySpec {
    type Err = DependencySpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DependencySpecError::Syntax(s.to_string());
        let (addr, rest) = s.split_once('=').ok_or_else(err)?;
        let endpoint: SocketAddr = addr.trim().parse().map_err(|_| err())?;
        let (name, kind) = match rest.split_once(':') {
            Some((n, k)) => (n, Some(k.to_string())),
            None => (rest, None),
        };
        if name.is_empty() || name.len() > 64 {
            return Err(err());
        }
        Ok(DependencySpec {
            endpoint,
            name: name.to_string(),
            kind,
        })
    }
}

/// Resolves an endpoint to (kind, name).
#[derive(Clone, Debug, Default)]
pub struct DependencyNames {
    given: HashMap<SocketAddr, DependencySpec>,
}

impl DependencyNames {
    pub fn new(specs: &[DependencySpec]) -> Self {
        DependencyNames {
            given: specs.iter().map(|s| (s.endpoint, s.clone())).collect(),
        }
    }

    pub fn resolve(&self, endpoint: SocketAddr) -> (String, Option<String>) {
        match self.given.get(&endpoint) {
            Some(spec) => (
                spec.kind
                    .clone()
                    .unwrap_or_else(|| kind_for_port(endpoint.port()).to_string()),
                Some(spec.name.clone()),
            ),
            None => (kind_for_port(endpoint.port()).to_string(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_kinds() {
        let s: DependencySpec = "10.0.0.5:5432=orders-db".parse().expect("valid");
        assert_eq!(s.name, "orders-db");
        let names = DependencyNames::new(&[s]);
        assert_eq!(
            names.resolve("10.0.0.5:5432".parse().expect("addr")),
            ("postgresql".to_string(), Some("orders-db".to_string()))
        );
        assert_eq!(
            names.resolve("10.0.0.6:6379".parse().expect("addr")),
            ("redis".to_string(), None)
        );
        let k: DependencySpec = "127.0.0.1:7000=ledger:grpc".parse().expect("valid");
        assert_eq!(k.kind.as_deref(), Some("grpc"));
        assert!("nonsense".parse::<DependencySpec>().is_err());
        assert!("1.2.3.4=db".parse::<DependencySpec>().is_err());
        assert!("1.2.3.4:5=".parse::<DependencySpec>().is_err());
    }

    #[test]
    fn unix_paths_name_their_kind() {
        assert_eq!(
            kind_for_unix_path("/var/run/postgresql/.s.PGSQL.55432"),
            "postgresql"
        );
        assert_eq!(kind_for_unix_path("/run/redis/redis-server.sock"), "redis");
        assert_eq!(kind_for_unix_path("/var/run/mysqld/mysqld.sock"), "mysql");
        assert_eq!(kind_for_unix_path("/tmp/app.sock"), "unknown");
    }
}
