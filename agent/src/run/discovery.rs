//! Which processes to watch, grouped into services, re-evaluated at each target discovery.
//!
//! Uses the `procfs` crate (listing processes, command lines, cgroups, namespaces, start times,
//! the per-namespace TCP tables): discovery runs every few seconds, not every sampling round, so
//! a general-purpose reader is cheap enough here. The hot reads of a watched service (schedstat,
//! fds, netlink) stay hand-written in the samplers.
//!
//! A process is known by `(pid, start time)` ([`ProcId`]): a pid reused by another process is a
//! different process, never merged with the old one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procfs::process::{FDTarget, Process};
use regex::Regex;
use scalewise_core::wire::bounded;

/// What to watch.
#[derive(Clone, Debug)]
pub enum Selector {
    /// These processes, as one service (each as first seen: a reused pid is not followed).
    Pids(Vec<u32>),
    /// Processes whose command line matches any of these.
    Process(Vec<Regex>),
    /// Every process with a listening TCP socket (in the agent's network namespace, or in every
    /// one with `all_namespaces`).
    Listening,
}

#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    pub selector: Selector,
    /// Overrides the service name of every target.
    pub service: Option<String>,
    /// Look for listening sockets in every network namespace, not only the agent's.
    pub all_namespaces: bool,
    pub proc_root: PathBuf,
}

/// One process start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId {
    pub pid: u32,
    /// Clock ticks after boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

/// What a service is called and where it runs: the resource attributes of its instances.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceInfo {
    pub name: String,
    /// `service.namespace`, `k8s.*` ... in a stable order.
    pub attrs: Vec<(&'static str, String)>,
}

/// A set of processes watched together as one service instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub service: ServiceInfo,
    /// Sorted.
    pub members: Vec<ProcId>,
    /// The network namespace (inode of `/proc/PID/ns/net`); 0 when unknown.
    pub netns: u64,
}

/// What the process environment says about the service, read once per process start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvInfo {
    pub service_name: Option<String>,
    pub attrs: BTreeMap<&'static str, String>,
}

/// The most of `/proc/PID/environ` read: the variables that matter are set by the deployment
/// and come early; a huge environment is not read whole.
pub const ENVIRON_MAX: usize = 64 * 1024;
/// A read of `environ` waits on the target's memory map lock; never longer than this.
pub const ENVIRON_TIMEOUT: Duration = Duration::from_millis(300);

/// Kubernetes downward-API variables, as commonly named in pod specs, and their attribute.
const K8S_VARS: &[(&str, &str)] = &[
    ("K8S_POD_NAME", "k8s.pod.name"),
    ("POD_NAME", "k8s.pod.name"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
    ("K8S_NAMESPACE", "k8s.namespace.name"),
    ("POD_NAMESPACE", "k8s.namespace.name"),
    ("K8S_NODE_NAME", "k8s.node.name"),
    ("NODE_NAME", "k8s.node.name"),
];

/// Resource attributes taken from `OTEL_RESOURCE_ATTRIBUTES` besides `service.name`.
const RESOURCE_KEYS: &[&str] = &[
    "service.namespace",
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.node.name",
];

/// Parses a NUL-separated environment (possibly cut short) for the service's identity.
pub fn parse_environ(buf: &[u8]) -> EnvInfo {
    let mut vars: HashMap<&str, String> = HashMap::new();
    let complete = buf.last().map_or(true, |&b| b == 0);
    let mut entries: Vec<&[u8]> = buf.split(|&b| b == 0).collect();
    if !complete {
        entries.pop(); // cut mid-variable: not trusted
    }
    for entry in entries {
        let Ok(text) = std::str::from_utf8(entry) else {
            continue;
        };
        let Some((k, v)) = text.split_once('=') else {
            continue;
        };
        let wanted = k == "OTEL_SERVICE_NAME"
            || k == "OTEL_RESOURCE_ATTRIBUTES"
            || K8S_VARS.iter().any(|(var, _)| *var == k);
        if wanted && !v.trim().is_empty() {
            vars.insert(k, v.trim().to_string());
        }
    }
    env_info(&|k| vars.get(k).cloned())
}

/// The identity from variables looked up by `get` (a process's, or the agent's own).
pub fn env_info(get: &dyn Fn(&str) -> Option<String>) -> EnvInfo {
    let mut info = EnvInfo::default();
    let mut resource: HashMap<String, String> = HashMap::new();
    if let Some(ra) = get("OTEL_RESOURCE_ATTRIBUTES") {
        for pair in ra.split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                let v = percent_decode(v.trim());
                if !v.is_empty() {
                    resource.insert(k.trim().to_string(), v);
                }
            }
        }
    }
    info.service_name = get("OTEL_SERVICE_NAME")
        .or_else(|| resource.get("service.name").cloned())
        .map(|n| bounded(&n));
    for key in RESOURCE_KEYS {
        if let Some(v) = resource.get(*key) {
            info.attrs.insert(key, bounded(v));
        }
    }
    for (var, key) in K8S_VARS {
        if info.attrs.contains_key(key) {
            continue;
        }
        if let Some(v) = get(var) {
            info.attrs.insert(key, bounded(&v));
        }
    }
    info
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads at most [`ENVIRON_MAX`] bytes of a process's environment, giving up after
/// [`ENVIRON_TIMEOUT`] (the read runs on a short-lived thread that is left behind if stuck).
pub fn read_environ(proc_root: &Path, pid: u32) -> Option<Vec<u8>> {
    let path = proc_root.join(pid.to_string()).join("environ");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sw-environ".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let r = std::fs::File::open(&path)
                .and_then(|f| f.take(ENVIRON_MAX as u64).read_to_end(&mut buf));
            let _ = tx.send(r.ok().map(|_| buf));
        })
        .ok()?;
    rx.recv_timeout(ENVIRON_TIMEOUT).ok().flatten()
}

/// What one discovery found.
#[derive(Debug, Default)]
pub struct Found {
    pub groups: Vec<Group>,
    /// `--pid` targets that are gone (exited, or their pid now belongs to another process).
    pub gone_pids: Vec<u32>,
    /// Listening mode: processes whose fd table the agent may not read (another user's, without
    /// `CAP_SYS_PTRACE`): whether they serve anything cannot be known. Pid and command name.
    pub unreadable: Vec<(u32, String)>,
}

struct Known {
    comm: String,
    cgroup: String,
    netns: u64,
    env: EnvInfo,
}

pub struct Discovery {
    cfg: DiscoveryConfig,
    own_pid: u32,
    own_netns: u64,
    /// The agent's own environment: a sidecar shares the pod's downward-API variables.
    own_env: EnvInfo,
    known: HashMap<ProcId, Known>,
    /// `--pid` targets as first seen.
    pinned: BTreeMap<u32, Option<u64>>,
    /// Listening mode: per process start, whether it held a listener and at which scan.
    fd_checks: HashMap<ProcId, (bool, u64)>,
    netns_cache: HashMap<ProcId, u64>,
    scans: u64,
    /// Processes whose fd table could not be read at their last check (see
    /// [`Found::unreadable`]), with their command names.
    unreadable: HashMap<ProcId, String>,
}

/// Listening mode: a process seen without a listener is looked at again after this many
/// discoveries (30 s at the default 5 s).
pub const RECHECK_SCANS: u64 = 6;

fn netns_of(p: &Process) -> u64 {
    p.namespaces()
        .ok()
        .and_then(|ns| ns.0.get(std::ffi::OsStr::new("net")).map(|n| n.identifier))
        .unwrap_or(0)
}

fn start_of(p: &Process) -> Option<(u64, String)> {
    p.stat().ok().map(|s| (s.starttime, s.comm))
}

impl Discovery {
    pub fn new(cfg: DiscoveryConfig) -> Discovery {
        let own_pid = std::process::id();
        let own_netns = Process::new_with_root(cfg.proc_root.join(own_pid.to_string()))
            .map(|p| netns_of(&p))
            .unwrap_or(0);
        let own_env = env_info(&|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
        let pinned = match &cfg.selector {
            Selector::Pids(pids) => pids.iter().map(|&p| (p, None)).collect(),
            _ => BTreeMap::new(),
        };
        Discovery {
            cfg,
            own_pid,
            own_netns,
            own_env,
            known: HashMap::new(),
            pinned,
            fd_checks: HashMap::new(),
            netns_cache: HashMap::new(),
            unreadable: HashMap::new(),
            scans: 0,
        }
    }

    pub fn own_netns(&self) -> u64 {
        self.own_netns
    }

    fn process(&self, pid: u32) -> Option<Process> {
        Process::new_with_root(self.cfg.proc_root.join(pid.to_string())).ok()
    }

    /// Whether no process but the agent's own is visible: a sidecar whose PID namespace is its
    /// own (the pod does not share its process namespace).
    pub fn sees_only_itself(&self) -> bool {
        self.all_pids().is_empty()
    }

    fn all_pids(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir(&self.cfg.proc_root) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&p| p != self.own_pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Learns a process once per start: its cgroup, network namespace and environment.
    fn learn(&mut self, id: ProcId, comm: String, p: &Process) {
        if self.known.contains_key(&id) {
            return;
        }
        let cgroup = p
            .cgroups()
            .map(|cg| {
                cg.0.iter()
                    .map(|c| c.pathname.as_str())
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .unwrap_or_default();
        let env = read_environ(&self.cfg.proc_root, id.pid)
            .map(|b| parse_environ(&b))
            .unwrap_or_default();
        self.known.insert(
            id,
            Known {
                comm,
                cgroup,
                netns: netns_of(p),
                env,
            },
        );
    }

    fn service_of(&self, k: &Known) -> ServiceInfo {
        let name = self
            .cfg
            .service
            .clone()
            .or_else(|| k.env.service_name.clone())
            .unwrap_or_else(|| k.comm.clone());
        let mut attrs = self.own_env.attrs.clone();
        attrs.extend(k.env.attrs.iter().map(|(a, v)| (*a, v.clone())));
        ServiceInfo {
            name,
            attrs: attrs.into_iter().collect(),
        }
    }

    /// One discovery pass.
    pub fn scan(&mut self) -> Found {
        let mut found = Found::default();
        let candidates: Vec<(ProcId, String, Process)> = match self.cfg.selector.clone() {
            Selector::Pids(_) => {
                let mut out = Vec::new();
                let pins: Vec<(u32, Option<u64>)> =
                    self.pinned.iter().map(|(&p, &s)| (p, s)).collect();
                for (pid, start) in pins {
                    let cur = self.process(pid).and_then(|p| start_of(&p).map(|s| (p, s)));
                    match (cur, start) {
                        (Some((p, (st, comm))), None) => {
                            self.pinned.insert(pid, Some(st));
                            out.push((ProcId { pid, start: st }, comm, p));
                        }
                        (Some((p, (st, comm))), Some(s)) if st == s => {
                            out.push((ProcId { pid, start: st }, comm, p));
                        }
                        _ => found.gone_pids.push(pid),
                    }
                }
                out
            }
            Selector::Process(regexes) => {
                let mut out = Vec::new();
                for pid in self.all_pids() {
                    let Some(p) = self.process(pid) else { continue };
                    let Ok(cmdline) = p.cmdline() else { continue };
                    if cmdline.is_empty() {
                        continue; // kernel threads, zombies
                    }
                    let line = cmdline.join(" ");
                    if !regexes.iter().any(|r| r.is_match(&line)) {
                        continue;
                    }
                    if let Some((st, comm)) = start_of(&p) {
                        out.push((ProcId { pid, start: st }, comm, p));
                    }
                }
                out
            }
            Selector::Listening => {
                let out = self.listening();
                found.unreadable = self
                    .unreadable
                    .iter()
                    .map(|(id, comm)| (id.pid, comm.clone()))
                    .collect();
                found.unreadable.sort();
                out
            }
        };
        let mut live = HashSet::new();
        let mut groups: BTreeMap<(u64, String, ServiceInfo), BTreeSet<ProcId>> = BTreeMap::new();
        let single = matches!(self.cfg.selector, Selector::Pids(_));
        for (id, comm, p) in candidates {
            live.insert(id);
            self.learn(id, comm, &p);
            let Some(k) = self.known.get(&id) else {
                continue;
            };
            let service = self.service_of(k);
            // `--pid` names one service; otherwise processes of one name in one container
            // (cgroup) and network namespace are one instance.
            let key = if single {
                (0, String::new(), service)
            } else {
                (k.netns, k.cgroup.clone(), service)
            };
            groups.entry(key).or_default().insert(id);
        }
        self.known.retain(|id, _| live.contains(id));
        for ((_, _, service), members) in groups {
            let members: Vec<ProcId> = members.into_iter().collect();
            let netns = members
                .first()
                .and_then(|m| self.known.get(m))
                .map_or(0, |k| k.netns);
            found.groups.push(Group {
                service,
                members,
                netns,
            });
        }
        found
    }

    /// Processes holding a listening TCP socket: in the agent's network namespace, or in every
    /// namespace with `all_namespaces` (each namespace's table read through one of its processes).
    ///
    /// Walking every process's fd table is the costly part, so its answer is kept per process
    /// start: a listener stays a target for its life, and a process without one is looked at
    /// again only every [`RECHECK_SCANS`] discoveries.
    fn listening(&mut self) -> Vec<(ProcId, String, Process)> {
        self.scans += 1;
        let mut procs: Vec<(ProcId, String, Process, u64)> = Vec::new();
        for pid in self.all_pids() {
            let Some(p) = self.process(pid) else { continue };
            let Some((start, comm)) = start_of(&p) else {
                continue;
            };
            let id = ProcId { pid, start };
            let netns = if self.cfg.all_namespaces {
                *self.netns_cache.entry(id).or_insert_with(|| netns_of(&p))
            } else {
                self.own_netns
            };
            procs.push((id, comm, p, netns));
        }
        let live: HashSet<ProcId> = procs.iter().map(|p| p.0).collect();
        self.netns_cache.retain(|id, _| live.contains(id));
        self.fd_checks.retain(|id, _| live.contains(id));
        self.unreadable.retain(|id, _| live.contains(id));
        let scans = self.scans;
        let due = |c: Option<&(bool, u64)>| match c {
            None => true,
            Some(&(listening, at)) => !listening && scans - at >= RECHECK_SCANS,
        };
        // Listening inodes per namespace, read only where some process needs a look.
        let mut listeners: HashMap<u64, HashSet<u64>> = HashMap::new();
        let mut tables: HashMap<u64, &Process> = HashMap::new();
        for (id, _, p, ns) in &procs {
            if due(self.fd_checks.get(id)) {
                tables.entry(*ns).or_insert(p);
            }
        }
        let own = self.process(self.own_pid);
        for (ns, p) in tables {
            let p = if self.cfg.all_namespaces {
                p
            } else {
                match own.as_ref() {
                    Some(o) => o,
                    None => continue,
                }
            };
            let mut set = HashSet::new();
            for table in [p.tcp(), p.tcp6()].into_iter().flatten() {
                set.extend(
                    table
                        .into_iter()
                        .filter(|e| e.state == procfs::net::TcpState::Listen)
                        .map(|e| e.inode),
                );
            }
            listeners.insert(ns, set);
        }
        let mut out = Vec::new();
        for (id, comm, p, ns) in procs {
            let check = self.fd_checks.get(&id).copied();
            let holds = if !due(check.as_ref()) {
                check.is_some_and(|c| c.0)
            } else {
                self.unreadable.remove(&id);
                let set = listeners.get(&ns).filter(|set| !set.is_empty());
                // The directory lists with CAP_DAC_READ_SEARCH alone, but each link needs
                // ptrace access, and procfs skips the links it cannot read: a table that yields
                // nothing is checked directly. Refused, whether it serves is unknown (looked at
                // again at the next recheck: capabilities may be granted).
                let holds = match set.map(|set| (set, p.fd())) {
                    None => false,
                    Some((set, Ok(fds))) => {
                        let (mut seen, mut holds) = (false, false);
                        for fd in fds.flatten() {
                            seen = true;
                            if matches!(fd.target, FDTarget::Socket(inode) if set.contains(&inode))
                            {
                                holds = true;
                                break;
                            }
                        }
                        if !seen && fds_denied(&self.cfg.proc_root.join(id.pid.to_string())) {
                            self.unreadable.insert(id, comm.clone());
                        }
                        holds
                    }
                    Some((_, Err(procfs::ProcError::PermissionDenied(_)))) => {
                        self.unreadable.insert(id, comm.clone());
                        false
                    }
                    Some((_, Err(_))) => false, // exited meanwhile
                };
                self.fd_checks.insert(id, (holds, scans));
                holds
            };
            if holds {
                out.push((id, comm, p));
            }
        }
        out
    }
}

/// Whether `/proc/PID/fd` holds links the agent may not read.
fn fds_denied(proc_pid: &std::path::Path) -> bool {
    let Ok(mut dir) = std::fs::read_dir(proc_pid.join("fd")) else {
        return false;
    };
    dir.find_map(Result::ok).is_some_and(|e| {
        std::fs::read_link(e.path())
            .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

/// `service.instance.id`: a UUIDv5 of the host and the members' pids and start times, so the
/// same process start always gets the same id and a restart gets a new one.
pub fn instance_id(host: &str, members: &[ProcId]) -> String {
    let mut key = host.to_string();
    for m in members {
        key.push_str(&format!("|{}:{}", m.pid, m.start));
    }
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_from_the_environment() {
        let env = parse_environ(b"PATH=/bin\0OTEL_SERVICE_NAME=orders\0POD_NAME=orders-7f\0");
        assert_eq!(env.service_name.as_deref(), Some("orders"));
        assert_eq!(
            env.attrs.get("k8s.pod.name").map(String::as_str),
            Some("orders-7f")
        );
        let env = parse_environ(
            b"OTEL_RESOURCE_ATTRIBUTES=service.name=cart,service.namespace=shop,k8s.node.name=n%2D1\0",
        );
        assert_eq!(env.service_name.as_deref(), Some("cart"));
        assert_eq!(
            env.attrs.get("service.namespace").map(String::as_str),
            Some("shop")
        );
        assert_eq!(
            env.attrs.get("k8s.node.name").map(String::as_str),
            Some("n-1")
        );
        // OTEL_SERVICE_NAME wins over the resource attribute, as in the SDKs.
        let env = parse_environ(b"OTEL_RESOURCE_ATTRIBUTES=service.name=a\0OTEL_SERVICE_NAME=b\0");
        assert_eq!(env.service_name.as_deref(), Some("b"));
    }

    #[test]
    fn hostile_environments() {
        assert_eq!(parse_environ(b""), EnvInfo::default());
        // Cut mid-variable (the read bound): the partial variable is dropped.
        assert_eq!(parse_environ(b"OTEL_SERVICE_NAME=ord").service_name, None);
        assert_eq!(
            parse_environ(b"\xff\xfe=\0=\0OTEL_SERVICE_NAME=\0"),
            EnvInfo::default()
        );
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        let long = format!("OTEL_SERVICE_NAME={}\0", "x".repeat(10_000));
        let name = parse_environ(long.as_bytes())
            .service_name
            .unwrap_or_default();
        assert_eq!(name.len(), scalewise_core::wire::MAX_ATTR_LEN);
    }

    #[test]
    fn instance_ids_are_per_process_start() {
        let a = [ProcId { pid: 10, start: 5 }];
        let reused = [ProcId { pid: 10, start: 9 }];
        assert_eq!(instance_id("h", &a), instance_id("h", &a));
        assert_ne!(instance_id("h", &a), instance_id("h", &reused));
        assert_ne!(instance_id("h", &a), instance_id("other", &a));
    }

    fn fake_proc(root: &Path, pid: u32, start: u64, comm: &str, cmdline: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("fixture");
        let stat = format!(
            "{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        );
        std::fs::write(dir.join("stat"), stat).expect("fixture");
        std::fs::write(dir.join("cmdline"), cmdline.replace(' ', "\0") + "\0").expect("fixture");
        std::fs::write(dir.join("cgroup"), "0::/svc\n").expect("fixture");
        std::fs::write(dir.join("environ"), "").expect("fixture");
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let root = std::env::temp_dir().join(format!("sw-disc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fake_proc(&root, 100, 5000, "api", "api --port 1");
        let mut d = Discovery::new(DiscoveryConfig {
            selector: Selector::Pids(vec![100]),
            service: None,
            all_namespaces: false,
            proc_root: root.clone(),
        });
        let first = d.scan();
        assert_eq!(first.groups.len(), 1);
        assert_eq!(
            first.groups[0].members,
            vec![ProcId {
                pid: 100,
                start: 5000
            }]
        );
        assert_eq!(first.groups[0].service.name, "api");
        // Exit, then an unrelated process gets the pid: `--pid` does not follow it.
        fake_proc(&root, 100, 7000, "cron", "cron");
        let after = d.scan();
        assert!(after.groups.is_empty());
        assert_eq!(after.gone_pids, vec![100]);

        // `--process` follows the command line: the new start is a new group member id.
        fake_proc(&root, 100, 5000, "api", "api --port 1");
        let mut d = Discovery::new(DiscoveryConfig {
            selector: Selector::Process(vec![Regex::new("^api ").expect("fixture")]),
            service: Some("orders".into()),
            all_namespaces: false,
            proc_root: root.clone(),
        });
        let a = d.scan();
        fake_proc(&root, 100, 9000, "api", "api --port 1");
        let b = d.scan();
        assert_eq!(a.groups[0].service.name, "orders");
        assert_ne!(a.groups[0].members, b.groups[0].members);
        assert_eq!(b.groups[0].members[0].start, 9000);
        let _ = std::fs::remove_dir_all(&root);
    }
}
