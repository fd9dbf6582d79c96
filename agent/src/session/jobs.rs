//! Queue workers: a process with no inbound requests that takes jobs from a queue (Redis
//! `BRPOP`/`BLMOVE`/`XREADGROUP BLOCK`, or any endpoint named with the kind `queue`, such as a
//! database polling loop) is measured like a server whose requests are its jobs.
//!
//! Each worker thread holds a fetch connection and alternates: a fetch outstanding on it (the
//! wait for the next job, idle as a keep-alive connection between requests is), then the job
//! (CPU, other dependencies, locks) with the fetch connection quiet. So a job source's
//! connections count as jobs in flight exactly when they are *not* awaiting an answer, the
//! fetches sent on them count the jobs, and the time waiting for the next job is left out of
//! the dependency's share. Consumers that fetch ahead of their work (Kafka, AMQP with a prefetch
//! window) break the alternation: their endpoints are not taken as job sources unless named.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::sampler::sockets::Outbound;

/// The worker view of one round: job-seconds, jobs fetched, and which endpoints were job sources.
#[derive(Default)]
pub(super) struct JobRound {
    pub(super) in_flight: f64,
    pub(super) fetched: f64,
}

#[derive(Default)]
pub(super) struct Jobs {
    /// Per endpoint, once: is it a job source (its kind is `queue`, or Redis).
    sources: HashMap<SocketAddr, bool>,
    /// Totals over the session: jobs fetched, and requests served on inbound connections.
    fetched: f64,
    served: f64,
    /// The endpoints taken as job sources so far (for the evidence).
    pub(super) named: Vec<SocketAddr>,
}

impl Jobs {
    /// Whether the endpoint is a job source, once decided ([`Jobs::decide`]).
    pub(super) fn source(&self, endpoint: SocketAddr) -> Option<bool> {
        self.sources.get(&endpoint).copied()
    }

    /// Decides once per endpoint from its kind: `queue`, or Redis.
    pub(super) fn decide(&mut self, endpoint: SocketAddr, kind: &str) -> bool {
        let is = kind == "queue" || kind == "redis";
        if self.sources.len() < 4096 {
            self.sources.insert(endpoint, is);
        }
        is
    }

    /// Counts a round's inbound requests and fetched jobs; returns whether the service is a
    /// worker: it has fetched jobs and served under one request per hundred of them (a metrics
    /// scrape now and then does not make a worker a server).
    pub(super) fn worker(&mut self, served: f64, fetched: f64) -> bool {
        self.served += served;
        self.fetched += fetched;
        self.fetched > 0.0 && self.served < 1.0 + self.fetched / 100.0
    }

    pub(super) fn note(&mut self, endpoint: SocketAddr) {
        if !self.named.contains(&endpoint) && self.named.len() < 8 {
            self.named.push(endpoint);
        }
    }
}

/// Jobs in flight and fetched on the job sources of one round: `by_endpoint` is each endpoint's
/// connections (those decided at this instant, requests sent), `awaiting` its requests
/// outstanding.
pub(super) fn job_round(
    sources: &[SocketAddr],
    by_endpoint: &HashMap<SocketAddr, Outbound>,
    awaiting: &[(SocketAddr, f64)],
) -> JobRound {
    let mut r = JobRound::default();
    for ep in sources {
        let Some(&Outbound {
            active: conns,
            sent,
            ..
        }) = by_endpoint.get(ep)
        else {
            continue;
        };
        let waiting: f64 = awaiting
            .iter()
            .filter(|(e, _)| e == ep)
            .map(|(_, v)| v)
            .sum();
        r.in_flight += (conns as f64 - waiting).max(0.0);
        r.fetched += sent;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_fetch_connections_are_jobs_running() {
        let q: SocketAddr = "127.0.0.1:6379".parse().expect("addr");
        let db: SocketAddr = "127.0.0.1:5432".parse().expect("addr");
        let conns = |active, sent| Outbound {
            open: active,
            active,
            sent,
        };
        let by = HashMap::from([(q, conns(4, 30.0)), (db, conns(4, 28.0))]);
        // One worker waits for its next job; three run one (and wait on the database).
        let r = job_round(&[q], &by, &[(q, 1.0), (db, 3.0)]);
        assert_eq!(r.in_flight, 3.0);
        assert_eq!(r.fetched, 30.0);
    }

    #[test]
    fn a_server_is_not_a_worker_and_a_scrape_does_not_make_one() {
        let mut j = Jobs::default();
        assert!(!j.worker(0.0, 0.0), "nothing fetched yet");
        assert!(j.worker(0.0, 500.0));
        assert!(j.worker(2.0, 500.0), "a couple of scrapes beside 500 jobs");
        let mut s = Jobs::default();
        assert!(!s.worker(50.0, 40.0));
    }
}
