//! Reaching another network namespace's sockets: a NETLINK_SOCK_DIAG socket answers for the
//! namespace it was opened in, so a per-host agent opens a service's socket from a thread that has
//! joined the service's namespace (`setns`, which needs `CAP_SYS_ADMIN`). The thread is dedicated
//! and short-lived: the sampler threads themselves never change namespace.

use std::os::fd::AsRawFd;
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("pid {pid}: cannot open its network namespace: {source}")]
    Open { pid: u32, source: std::io::Error },
    #[error("joining pid {pid}'s network namespace needs CAP_SYS_ADMIN ({source})")]
    PermissionDenied { pid: u32, source: std::io::Error },
    #[error("pid {pid}: setns failed: {source}")]
    Setns { pid: u32, source: std::io::Error },
    #[error("the namespace thread could not run")]
    Thread,
}

impl NetnsError {
    /// A bounded label value for `scalewise_agent_skipped_services{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            NetnsError::PermissionDenied { .. } => "no_cap_sys_admin",
            NetnsError::Open { .. } => "netns_unreadable",
            NetnsError::Setns { .. } | NetnsError::Thread => "setns_failed",
        }
    }
}

/// Runs `f` on a new thread inside the network namespace of `pid` and returns its result.
pub fn run_in_netns_of<T: Send + 'static>(
    proc_root: &Path,
    pid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let ns = std::fs::File::open(proc_root.join(pid.to_string()).join("ns/net"))
        .map_err(|source| NetnsError::Open { pid, source })?;
    let handle = std::thread::Builder::new()
        .name("sw-netns".into())
        .spawn(move || {
            // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let source = std::io::Error::last_os_error();
                return Err(if source.raw_os_error() == Some(libc::EPERM) {
                    NetnsError::PermissionDenied { pid, source }
                } else {
                    NetnsError::Setns { pid, source }
                });
            }
            Ok(f())
        })
        .map_err(|_| NetnsError::Thread)?;
    handle.join().map_err(|_| NetnsError::Thread)?
}

/// Whether the agent holds `CAP_SYS_ADMIN` in its effective set (`/proc/self/status` CapEff).
pub fn has_cap_sys_admin() -> bool {
    crate::caps::has(crate::caps::CAP_SYS_ADMIN)
}
