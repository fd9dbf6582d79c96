//! The sampling thread of `run`: owns every service instance's [`Session`] (the same sessions the
//! one-shot `diagnose` uses), steps them round by round, re-evaluates the targets at each target
//! discovery, and publishes budget snapshots into [`Shared`] when the exporter or a scrape asks.
//!
//! Sessions stay on a plain thread: sampling is blocking file and netlink I/O on a fixed clock,
//! which an async runtime would only get in the way of.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::session::{Session, SessionConfig};

use super::discovery::{instance_id, Discovery, Group};
use super::netns::{has_cap_sys_admin, run_in_netns_of};
use super::{InstanceMeta, InstanceView, Shared, Skipped};

/// Service instances sampled at once; more are reported as skipped (`instance_limit`), never an
/// unbounded set of sessions.
pub const MAX_INSTANCES: usize = 256;

struct Live {
    meta: Arc<InstanceMeta>,
    session: Session,
}

pub struct Sampler {
    pub discovery: Discovery,
    /// Intervals, dependencies, GC options; `pids` is filled per instance.
    pub template: SessionConfig,
    pub target_interval: std::time::Duration,
    pub host: String,
    pub shared: Arc<Shared>,
    /// Whether processes whose files cannot be read were already reported at warn level.
    pub warned_unreadable: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sampler {
    /// Runs until `shared.stop` is set; then publishes every instance as ended and returns.
    pub fn run(mut self) {
        let cap_sys_admin = has_cap_sys_admin();
        let mut live: BTreeMap<String, Live> = BTreeMap::new();
        let mut next_discovery = Instant::now();
        let mut first = true;
        let mut reported_gone: Vec<u32> = Vec::new();
        let interval = self.template.sample_interval;
        let mut next_round = Instant::now();
        loop {
            let stopping = self.shared.stop.load(Ordering::SeqCst);
            let now = Instant::now();
            if !stopping && now >= next_discovery {
                next_discovery = now + self.target_interval;
                let found = self.discovery.scan();
                for pid in &found.gone_pids {
                    if !reported_gone.contains(pid) {
                        reported_gone.push(*pid);
                        tracing::warn!(
                            pid,
                            "target process is gone (exited, or its pid now belongs to another process: not followed)"
                        );
                    }
                }
                self.reconcile(
                    &mut live,
                    found.groups,
                    &found.unreadable,
                    cap_sys_admin,
                    first,
                );
                if first && live.is_empty() {
                    if self.discovery.sees_only_itself() {
                        tracing::warn!(
                            "no target found: no process but the agent's own is visible (its PID namespace is its own); share the service's process namespace (Kubernetes: shareProcessNamespace: true; podman: pod create --share pid; Docker: --pid container:NAME); looking again at each discovery"
                        );
                    } else {
                        tracing::warn!("no target found yet; looking again at each discovery");
                    }
                }
                first = false;
                self.shared.discovered.store(true, Ordering::SeqCst);
                if self.shared.pinned_targets && live.is_empty() && !found.gone_pids.is_empty() {
                    tracing::warn!("every --pid target has exited: nothing left to watch");
                    self.shared.targets_gone.store(true, Ordering::SeqCst);
                }
            }
            for l in live.values_mut() {
                l.session.step(now);
                self.shared.samples.fetch_add(1, Ordering::Relaxed);
            }
            let dead: Vec<String> = live
                .iter()
                .filter(|(_, l)| !l.session.any_alive())
                .map(|(id, _)| id.clone())
                .collect();
            for id in dead {
                if let Some(l) = live.remove(&id) {
                    tracing::info!(service = %l.meta.service.name, instance = %id, "service instance ended: its processes exited");
                    self.retire(l, now);
                }
            }
            let waiters = std::mem::take(&mut *lock(&self.shared.snapshot_requests));
            if !waiters.is_empty() || stopping {
                self.publish(&mut live, now);
            }
            if stopping {
                let ids: Vec<String> = live.keys().cloned().collect();
                for id in ids {
                    if let Some(l) = live.remove(&id) {
                        self.retire(l, now);
                    }
                }
            }
            for w in waiters {
                let _ = w.send(());
            }
            if stopping {
                for w in std::mem::take(&mut *lock(&self.shared.snapshot_requests)) {
                    let _ = w.send(());
                }
                return;
            }
            next_round += interval;
            let after = Instant::now();
            // After a stall skip the missed rounds instead of bursting (as diagnose does).
            if next_round < after {
                next_round = after + interval;
            }
            std::thread::sleep(next_round.saturating_duration_since(after));
        }
    }

    fn notes(&self) -> Vec<String> {
        let skipped = lock(&self.shared.skipped);
        if skipped.is_empty() {
            return Vec::new();
        }
        let names: Vec<&str> = skipped.values().map(|s| s.service.as_str()).collect();
        let reasons: std::collections::BTreeSet<&str> =
            skipped.values().map(|s| s.reason).collect();
        // A host agent without CAP_SYS_PTRACE may be unable to look at hundreds of processes.
        const SHOWN: usize = 10;
        let more = match names.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        vec![format!(
            "{} service(s) on this host not sampled ({}): {}{more}",
            names.len(),
            reasons.into_iter().collect::<Vec<_>>().join(", "),
            names[..names.len().min(SHOWN)].join(", ")
        )]
    }

    fn view(&self, l: &mut Live, now: Instant, ended: bool) -> InstanceView {
        let mut budget = l.session.snapshot(now);
        for n in self.notes() {
            if !budget.notes.contains(&n) {
                budget.notes.push(n);
            }
        }
        InstanceView {
            meta: l.meta.clone(),
            budget,
            rss_bytes: l.session.rss_bytes(),
            errors: l.session.error_counts(),
            ended,
        }
    }

    fn publish(&self, live: &mut BTreeMap<String, Live>, now: Instant) {
        let views: Vec<(String, InstanceView)> = live
            .iter_mut()
            .map(|(id, l)| (id.clone(), self.view(l, now, false)))
            .collect();
        let mut shared = lock(&self.shared.instances);
        if !self.shared.exporting {
            shared.retain(|_, v| !v.ended);
        }
        for (id, v) in views {
            shared.insert(id, v);
        }
    }

    /// Ends an instance: its last snapshot is published as ended, for one last export.
    fn retire(&self, mut l: Live, now: Instant) {
        let view = self.view(&mut l, now, true);
        {
            let mut retired = lock(&self.shared.retired_errors);
            for (k, n) in &view.errors {
                *retired.entry(*k).or_default() += n;
            }
        }
        lock(&self.shared.instances).insert(l.meta.id.clone(), view);
    }

    fn reconcile(
        &self,
        live: &mut BTreeMap<String, Live>,
        groups: Vec<Group>,
        unreadable: &[(u32, String)],
        cap_sys_admin: bool,
        first: bool,
    ) {
        let now = Instant::now();
        let wanted: BTreeMap<String, Group> = groups
            .into_iter()
            .map(|g| (instance_id(&self.host, &g.members), g))
            .collect();
        let ended: Vec<String> = live
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in ended {
            if let Some(l) = live.remove(&id) {
                tracing::info!(service = %l.meta.service.name, instance = %id, "service instance ended: its set of processes changed");
                self.retire(l, now);
            }
        }
        let own_netns = self.discovery.own_netns();
        let mut skipped_now = BTreeMap::new();
        // Processes whose fds the agent may not read: whether they serve is unknown, and said.
        for (pid, comm) in unreadable {
            skipped_now.insert(
                format!("{comm}@pid:{pid}"),
                Skipped {
                    service: format!("{comm} (pid {pid})"),
                    reason: "no_cap_sys_ptrace",
                },
            );
        }
        for (id, g) in wanted {
            if live.contains_key(&id) {
                continue;
            }
            if live.len() >= MAX_INSTANCES {
                skipped_now.insert(
                    format!("{}@netns:{}", g.service.name, g.netns),
                    Skipped {
                        service: g.service.name.clone(),
                        reason: "instance_limit",
                    },
                );
                continue;
            }
            let pids: Vec<u32> = g.members.iter().map(|m| m.pid).collect();
            let mut cfg = self.template.clone();
            cfg.pids = pids.clone();
            let runtime = crate::runtime::detect(&cfg.proc_root, &pids);
            let foreign = g.netns != 0 && g.netns != own_netns;
            let created = if foreign {
                let key = format!("{}@netns:{}", g.service.name, g.netns);
                if !cap_sys_admin {
                    skipped_now.insert(
                        key,
                        Skipped {
                            service: g.service.name.clone(),
                            reason: "no_cap_sys_admin",
                        },
                    );
                    continue;
                }
                match run_in_netns_of(&cfg.proc_root.clone(), pids[0], move || Session::new(cfg)) {
                    Ok(r) => r,
                    Err(e) => {
                        skipped_now.insert(
                            key,
                            Skipped {
                                service: g.service.name.clone(),
                                reason: e.reason(),
                            },
                        );
                        continue;
                    }
                }
            } else {
                Session::new(cfg)
            };
            match created {
                Ok(session) => {
                    let meta = Arc::new(InstanceMeta {
                        id: id.clone(),
                        service: g.service.clone(),
                        pids: pids.clone(),
                        host: self.host.clone(),
                        start: SystemTime::now(),
                        members: g.members.clone(),
                        runtime,
                    });
                    tracing::info!(
                        service = %g.service.name,
                        instance = %id,
                        pids = ?pids,
                        netns = g.netns,
                        "watching service instance"
                    );
                    live.insert(id, Live { meta, session });
                }
                Err(e) => {
                    // Usually a process that exited between discovery and now.
                    tracing::debug!(service = %g.service.name, error = %e, "cannot sample target");
                }
            }
        }
        let mut skipped = lock(&self.shared.skipped);
        // Processes that cannot be looked at: one line when first seen (a host agent without
        // CAP_SYS_PTRACE may meet hundreds, short-lived ones at every discovery); each new one
        // after that at debug level; the gauge always has the count.
        let unseen: Vec<&str> = skipped_now
            .iter()
            .filter(|(k, s)| {
                s.reason == "no_cap_sys_ptrace" && (first || !skipped.contains_key(*k))
            })
            .map(|(_, s)| s.service.as_str())
            .collect();
        if !unseen.is_empty() {
            let text = format!(
                "{} process(es) skipped: their open files cannot be read (another user's processes: grant the agent CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH), so whether they serve requests is unknown: {}{}",
                unseen.len(),
                unseen[..unseen.len().min(10)].join(", "),
                if unseen.len() > 10 { ", ..." } else { "" }
            );
            if self
                .warned_unreadable
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::debug!("{text}");
            } else {
                tracing::warn!("service skipped: {text}");
            }
        }
        for (key, s) in &skipped_now {
            if s.reason != "no_cap_sys_ptrace" && (!skipped.contains_key(key) || first) {
                tracing::warn!(
                    service = %s.service,
                    reason = s.reason,
                    "service skipped: {}",
                    if s.reason == "instance_limit" {
                        "the agent already samples its maximum of service instances"
                    } else {
                        "it is in another network namespace, whose sockets can only be read from inside it (setns needs CAP_SYS_ADMIN)"
                    }
                );
            }
        }
        *skipped = skipped_now;
    }
}
