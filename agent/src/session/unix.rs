//! Dependencies reached over unix-domain sockets: a local PostgreSQL (`.s.PGSQL.5432`),
//! pgbouncer, Redis, a sidecar proxy. The TCP sampler never sees them, and without this their
//! time would be left over as in-process waiting.
//!
//! A thread blocked reading a socket that is not one of the service's TCP connections is asked
//! about, once per socket: a unix-domain socket with no name of its own whose peer has one (a
//! listener's path) is a connection to a server at that path. Its time outstanding is sampled
//! from the threads blocked reading it, one request per thread, as thread-per-request servers
//! (Python, Java, blocking Rust) wait. Sockets the service serves on (they carry the listener's
//! name), socket pairs (no name at either end: in-process hand-offs) and other kinds of socket
//! are remembered as not a dependency. Event loops never block on one socket: their unix
//! dependencies are not measured here, and the evidence says so where they would matter.

use foldhash::HashMap;

use std::path::Path;

use crate::deps::kind_for_unix_path;
use crate::peer::kind_of_local_server;
use crate::sampler::sockets::SocketSampler;

/// What a socket a thread blocked on turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    /// A connection to the server listening at this path: (endpoint, kind).
    Dependency(String, &'static str),
    NotADependency,
}

/// Sockets asked about, kept across rounds (a pooled connection lives long).
#[derive(Default)]
pub(super) struct UnixDependencies {
    roles: HashMap<u64, Role>,
    /// At least one dependency over a unix socket was found: thread states are then sampled
    /// every round, since they are its only measure.
    pub(super) found: bool,
}

/// Sockets remembered at most; past this the memory starts over (closed sockets' inodes).
const MAX_REMEMBERED: usize = 4096;

impl UnixDependencies {
    /// Threads blocked on each unix-socket dependency, from the inodes of sockets that are not
    /// the service's TCP connections which threads were blocked reading (one entry a thread).
    pub(super) fn waiting(
        &mut self,
        blocked_on: &[u64],
        sockets: &mut SocketSampler,
        proc_root: &Path,
    ) -> Vec<(String, &'static str, usize)> {
        if self.roles.len() > MAX_REMEMBERED {
            self.roles.clear();
        }
        let mut out: Vec<(String, &'static str, usize)> = Vec::new();
        for &inode in blocked_on {
            let role = self
                .roles
                .entry(inode)
                .or_insert_with(|| classify(inode, sockets, proc_root));
            if let Role::Dependency(endpoint, kind) = role {
                self.found = true;
                match out.iter_mut().find(|(e, _, _)| e == endpoint) {
                    Some(entry) => entry.2 += 1,
                    None => out.push((endpoint.clone(), kind, 1)),
                }
            }
        }
        out
    }
}

fn classify(inode: u64, sockets: &mut SocketSampler, proc_root: &Path) -> Role {
    let Ok(Some(me)) = sockets.unix_socket(inode) else {
        return Role::NotADependency;
    };
    if me.name.is_some() {
        // Bound: the service's own listener path (a connection it serves) or a bound client.
        return Role::NotADependency;
    }
    let Some(peer) = me.peer.and_then(|p| sockets.unix_socket(p).ok().flatten()) else {
        return Role::NotADependency;
    };
    match peer.name {
        Some(path) => {
            // The path tells the kind, or else the server process at the other end does.
            let kind = match kind_for_unix_path(&path) {
                "unknown" => kind_of_local_server(proc_root, peer.inode).unwrap_or("unknown"),
                kind => kind,
            };
            Role::Dependency(format!("unix:{path}"), kind)
        }
        None => Role::NotADependency,
    }
}
