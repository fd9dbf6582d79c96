//! The refresh, the slow work at the refresh interval: process liveness, threads, fd tables,
//! the inode -> owner map, counters, and what the round after it visits.

use std::path::Path;

use super::fds::{own_socket_inodes, FdRefresh};
use super::{notes, Session, Target};
use crate::proc_files::parse_stat;
use crate::sampler::sockets::Visit;

/// Socket fds beyond which a service that opens a connection per call is not re-listed every
/// round (listing costs about 3 us per fd).
const RELIST_MAX_FDS: usize = 2000;

/// Why a process is no longer sampled.
enum Gone {
    /// Its stat is gone or names another process (the pid was reused).
    Exited,
    /// Its task directory could not be listed.
    TasksUnreadable,
}

impl Target {
    /// Liveness, CPU ticks and the thread table of the process (`proc_pid`, its `/proc/PID`).
    /// The task directory is listed only when the thread count moved, or at the `periodic`
    /// full pass.
    fn refresh_process(&mut self, proc_pid: &Path, periodic: bool) -> Result<(), Gone> {
        // Same pid, different start time: the process exited and the pid was reused.
        let stat = std::fs::read(proc_pid.join("stat"))
            .ok()
            .and_then(|b| parse_stat(&b).ok());
        let threads = match stat {
            Some(s) if s.starttime == self.starttime => {
                let ticks = s.utime + s.stime;
                self.base_ticks.get_or_insert(ticks);
                self.ticks = ticks;
                s.num_threads as usize
            }
            _ => return Err(Gone::Exited),
        };
        // A thread exited and another started in between is found at the periodic full pass.
        if (periodic || threads != self.threads.thread_count()) && !self.threads.refresh() {
            return Err(Gone::TasksUnreadable);
        }
        Ok(())
    }
}

impl Session {
    /// The slow work: process liveness, threads, fd tables, counters. Returns what this
    /// refresh's socket round visits. A full dump when the fd scan found a socket inode it had
    /// not seen at the last dump (a new connection or listener), an fd table could not be read
    /// (new connections are then unseen), or every tenth refresh (a socket created before a
    /// dump and connected after it). A stable set of keep-alive connections thus costs exact
    /// lookups only; the dump walks the kernel's whole TCP hash table (about 5 ms here, the
    /// largest cost at 200 connections). The last round of a window visits every connection.
    pub(super) fn refresh(&mut self) -> Visit {
        let periodic = self.refreshes % 10 == 0;
        // Connections opened per call reuse fd numbers from one round to the next: every link is
        // read again then, as at the periodic full pass.
        let per_call = self.sockets.as_ref().is_some_and(|s| s.outbound_churns());
        let fds_changed = self.refresh_targets(periodic, periodic || per_call);
        if fds_changed {
            self.rebuild_owners();
        }
        // Only an agent that scrapes the service has connections to it; its fd table holds a
        // file per watched thread, too many to read for nothing at every refresh.
        let scrapes = self.cfg.gc.metrics_url.is_some() || self.cfg.gc.expvar_url.is_some();
        if let Some(s) = self.sockets.as_mut().filter(|_| scrapes) {
            s.set_agent_sockets(own_socket_inodes());
        }
        self.refreshes += 1;
        let visit = self.next_visit(periodic, fds_changed);
        let owner = &self.inode_owner;
        self.threads_known
            .readers
            .retain(|inode, _| owner.contains_key(inode));
        self.read_counters(false);
        visit
    }

    /// Between refreshes, when the service opens a connection per call: its fd tables listed
    /// again (cheap for the tens of fds such services hold: links are read only for new fd
    /// numbers) and a full dump, so connections that live a few milliseconds are in the round
    /// that finds them open. Their time outstanding is then a time sample like any other's;
    /// seen only at refreshes, a dependency reached through a new connection per call read
    /// 0.10 of request time where it took 0.95. Above [`RELIST_MAX_FDS`] open fds the cost
    /// would grow with them: such a service is seen at refreshes only, and the evidence says so.
    pub(super) fn relist_fds(&mut self) -> Visit {
        if self.inode_owner.len() > RELIST_MAX_FDS {
            self.notes.add(notes::OUTBOUND_CHURN_UNSEEN.to_string());
            return Visit::Sampled;
        }
        self.notes.add(notes::OUTBOUND_CHURN.to_string());
        // Every link read again: fd numbers are reused from one call to the next, so a socket
        // open at the last dump says nothing about what its fd holds now.
        if self.refresh_targets(false, true) {
            self.rebuild_owners();
        }
        Visit::Dump
    }

    pub(super) fn rebuild_owners(&mut self) {
        self.inode_owner.clear();
        for t in self.targets.iter().filter(|t| t.alive) {
            for (&fd, &inode) in &t.fds {
                self.inode_owner.insert(inode, (t.pid, fd));
            }
        }
    }

    /// Refreshes every live process and its fd table (every link read again when `reread`).
    /// Returns whether the inode -> owner map must be rebuilt (an fd table was listed or a
    /// process left).
    pub(super) fn refresh_targets(&mut self, periodic: bool, reread: bool) -> bool {
        let mut errors: Vec<(&'static str, &'static str)> = Vec::new();
        let mut fds_changed = false;
        for t in self.targets.iter_mut() {
            if !t.alive {
                continue;
            }
            let dir = self.cfg.proc_root.join(t.pid.to_string());
            if let Err(gone) = t.refresh_process(&dir, periodic) {
                t.alive = false;
                fds_changed = true;
                if let Gone::Exited = gone {
                    self.notes.add(notes::exited(t.pid, self.budget.window_s));
                }
                continue;
            }
            // Every tenth refresh re-reads every link: an fd whose socket was closed and
            // reused while a dup kept the old inode open is not missed for long.
            let sockets = self.sockets.as_ref().filter(|_| !reread);
            let known = |inode: u64| sockets.is_some_and(|s| s.open_since_dump(inode));
            match t.refresh_fds(&dir, periodic, &known, &mut self.fd_scratch) {
                FdRefresh::Skipped => {}
                FdRefresh::Listed => fds_changed = true,
                FdRefresh::Denied => {
                    fds_changed = true;
                    errors.push(("fds", "permission_denied"));
                    let lacking =
                        crate::caps::lacking(crate::caps::effective(), crate::caps::PROC_FD);
                    // Read before: it changed credentials or made itself non-dumpable.
                    let after_s = t.fds_read.then_some(self.budget.window_s);
                    let text = notes::fds_unreadable(t.pid, &lacking, after_s);
                    tracing::warn!("{text}");
                    self.notes.add(text);
                }
                FdRefresh::Failed => {
                    fds_changed = true;
                    errors.push(("fds", "io"));
                }
            }
        }
        for e in errors {
            self.count(e.0, e.1);
        }
        fds_changed
    }

    /// What the round after this refresh visits (see [`Session::refresh`]).
    fn next_visit(&mut self, periodic: bool, fds_changed: bool) -> Visit {
        let blind = self.targets.iter().any(|t| t.alive && t.fds_denied);
        let new = fds_changed
            && self
                .inode_owner
                .keys()
                .any(|i| !self.inodes_at_dump.contains(i));
        let all = std::mem::take(&mut self.visit_all);
        if periodic || blind || new {
            self.inodes_at_dump.clear();
            self.inodes_at_dump.extend(self.inode_owner.keys());
            Visit::Dump
        } else if all {
            Visit::All
        } else {
            Visit::Sampled
        }
    }
}
