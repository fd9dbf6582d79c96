//! The service's fd tables: which fds are sockets (by inode) and epoll instances, read with
//! `readlinkat` from a kept-open directory, and listed again only when the table's mark moved.

use std::path::Path;

use foldhash::HashMap;

use super::Target;
use crate::proc_files::{is_epoll_link, parse_socket_link};

/// The agent's own sockets (its scrapes of the service's metrics endpoints, its exports): the
/// service's end of such a connection is the agent's traffic, not a client's request.
pub(super) fn own_socket_inodes() -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return std::collections::HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| parse_socket_link(t.as_os_str().as_encoded_bytes()))
        .collect()
}

/// What listing a process's fd table came to.
pub(super) enum FdRefresh {
    /// Not listed: its mark has not moved, or it was refused before.
    Skipped,
    Listed,
    /// Refused (no ptrace access to the process).
    Denied,
    /// Unreadable for another reason (the process exiting).
    Failed,
}

impl Target {
    /// Lists the fd table of the process (`proc_pid`, its `/proc/PID`) unless its mark says
    /// nothing changed. `periodic`: the periodic full pass, which lists it and re-reads every
    /// link; `open_since_dump(inode)`: a socket still open since the last full dump, whose fd
    /// keeps its inode without a readlink.
    pub(super) fn refresh_fds(
        &mut self,
        proc_pid: &Path,
        periodic: bool,
        open_since_dump: &dyn Fn(u64) -> bool,
        scratch: &mut HashMap<i32, u64>,
    ) -> FdRefresh {
        // Listing 10,000 fds costs 30 ms (the kernel instantiates an entry per fd): it is
        // skipped while the table's mark has not moved (same number of open fds, no TCP
        // connection opened in the network namespace), except at the periodic full pass.
        let mark = fd_table_mark(proc_pid).filter(|_| !self.fds_denied);
        let unchanged = !periodic && mark.is_some() && mark == self.fds_mark;
        if self.fds_denied || unchanged {
            return FdRefresh::Skipped;
        }
        match scan_fds(
            proc_pid,
            &mut self.fds,
            &mut self.epoll_fds,
            scratch,
            open_since_dump,
        ) {
            Ok(()) => {
                self.fds_read = true;
                self.fds_mark = mark;
                FdRefresh::Listed
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                self.fds_denied = true;
                FdRefresh::Denied
            }
            Err(_) => FdRefresh::Failed,
        }
    }
}

/// What can be learnt of an fd table without listing it: its number of open fds (the size
/// `stat` gives `/proc/PID/fd` since Linux 6.2; `None` before), its owner and the TCP
/// connections opened in the process's network namespace (`ActiveOpens + PassiveOpens`). A new
/// connection moves the last; a new epoll instance or a socket passed in moves the first, unless
/// another fd closed in the same interval, which the periodic full pass catches. The owner moves
/// when the process changes credentials or makes itself non-dumpable (its /proc files become
/// root's): the table is listed again, and a refusal is said when it happens, not at the next
/// new connection.
pub(super) fn fd_table_mark(proc_pid: &Path) -> Option<FdMark> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(proc_pid.join("fd")).ok()?;
    if meta.len() == 0 {
        return None;
    }
    let snmp = std::fs::read(proc_pid.join("net/snmp")).ok()?;
    let opens = crate::proc_files::parse_tcp_counter(&snmp, "ActiveOpens")?
        + crate::proc_files::parse_tcp_counter(&snmp, "PassiveOpens")?;
    Some(FdMark {
        open: meta.len(),
        owner: (meta.uid(), meta.gid()),
        tcp_opens: opens,
    })
}

/// See [`fd_table_mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FdMark {
    open: u64,
    owner: (u32, u32),
    tcp_opens: u64,
}

/// `readlinkat(dir, name)`: std has only the path-based `read_link`, whose walk from `/` to
/// `/proc/PID/fd/N` was half the cost of reading 10,000 links. Targets longer than the buffer
/// come back truncated, which is harmless here: only socket and epoll links are parsed, and
/// both are short.
fn readlink_at<'b>(
    dir: &std::fs::File,
    name: &[u8],
    buf: &'b mut [u8; 64],
) -> std::io::Result<&'b [u8]> {
    use std::os::fd::AsRawFd;
    let mut cname = [0u8; 24];
    if name.len() >= cname.len() || name.contains(&0) {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    cname[..name.len()].copy_from_slice(name);
    // SAFETY: `cname` is NUL-terminated (zeroed beyond `name`, which has no NUL), `buf` is
    // writable for its length, and `dir` is an open descriptor for the call's duration.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            cname.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(&buf[..n as usize])
}

/// Maps the process's socket fds to inodes. Rebuilt each time (fd numbers are reused), but an fd
/// last seen on a socket that was still open at the last dump (`known`) keeps its inode without
/// a readlink: a closed socket's fd is re-read, and a reused fd number whose old socket stayed
/// open through a dup is caught by the periodic full re-read. On a server with 10,000
/// connections, that readlink per fd per refresh was a sixth of the agent's CPU.
///
/// Built aside (in `next`) and swapped in whole: a table refused mid-window keeps the
/// connections known so far (their sockets are still looked up by inode), rather than
/// forgetting them.
fn scan_fds(
    proc_pid: &Path,
    out: &mut HashMap<i32, u64>,
    epolls: &mut Vec<i32>,
    next: &mut HashMap<i32, u64>,
    known: &dyn Fn(u64) -> bool,
) -> std::io::Result<()> {
    next.clear();
    let mut loops = Vec::new();
    let fd_dir = proc_pid.join("fd");
    let dir = std::fs::File::open(&fd_dir)?;
    let mut link_buf = [0u8; 64];
    for entry in std::fs::read_dir(&fd_dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        let Some(fd) = std::str::from_utf8(name)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(&inode) = out.get(&fd) {
            if known(inode) {
                next.insert(fd, inode);
                continue;
            }
        }
        let link = match readlink_at(&dir, name, &mut link_buf) {
            Ok(t) => t,
            // The directory is listable with CAP_DAC_READ_SEARCH alone, but each link needs
            // ptrace access (CAP_SYS_PTRACE): refused, not closed.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(e),
            Err(_) => continue, // closed since readdir
        };
        if let Some(inode) = parse_socket_link(link) {
            next.insert(fd, inode);
        } else if is_epoll_link(link) {
            loops.push(fd);
        }
    }
    std::mem::swap(out, next);
    *epolls = loops;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldhash::HashMapExt;

    fn link(dir: &Path, fd: i32, target: &str) {
        let path = dir.join("fd").join(fd.to_string());
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, path).expect("test fixture");
    }

    #[test]
    fn an_fd_on_a_socket_still_open_is_not_read_again_and_a_closed_one_is() {
        let dir = std::env::temp_dir().join(format!("scalewise-scan-fds-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("fd")).expect("test fixture");
        link(&dir, 3, "socket:[100]");
        link(&dir, 4, "socket:[200]");
        link(&dir, 5, "anon_inode:[eventpoll]");
        link(&dir, 6, "/var/log/app.log");
        let (mut fds, mut epolls, mut scratch) = (HashMap::new(), Vec::new(), HashMap::new());
        scan_fds(&dir, &mut fds, &mut epolls, &mut scratch, &|_| false).expect("test fixture");
        assert_eq!(fds, HashMap::from_iter([(3, 100), (4, 200)]));
        assert_eq!(epolls, vec![5]);

        // Both fd numbers now hold new sockets; only 100 was open at the last dump (so fd 3 is
        // taken to be unchanged until the periodic full read), 200 was closed: fd 4 is re-read.
        link(&dir, 3, "socket:[300]");
        link(&dir, 4, "socket:[400]");
        std::fs::remove_file(dir.join("fd").join("6")).expect("test fixture");
        let open = |inode: u64| inode == 100;
        scan_fds(&dir, &mut fds, &mut epolls, &mut scratch, &open).expect("test fixture");
        assert_eq!(fds, HashMap::from_iter([(3, 100), (4, 400)]));
        // The full read.
        scan_fds(&dir, &mut fds, &mut epolls, &mut scratch, &|_| false).expect("test fixture");
        assert_eq!(fds, HashMap::from_iter([(3, 300), (4, 400)]));
        // A closed fd disappears whatever its socket.
        std::fs::remove_file(dir.join("fd").join("3")).expect("test fixture");
        scan_fds(&dir, &mut fds, &mut epolls, &mut scratch, &|_| true).expect("test fixture");
        assert_eq!(fds, HashMap::from_iter([(4, 400)]));
        std::fs::remove_dir_all(&dir).expect("test fixture");
    }

    #[test]
    fn the_fd_table_mark_moves_when_a_connection_opens() {
        let me = Path::new("/proc/self");
        let open = std::fs::metadata(me.join("fd"))
            .expect("/proc/self/fd")
            .len();
        let before = fd_table_mark(me);
        if open == 0 {
            // Before Linux 6.2 the directory's size is not its fd count: always listed.
            assert_eq!(before, None);
            return;
        }
        let before = before.expect("a mark on Linux 6.2 and later");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let after = fd_table_mark(me).expect("mark");
        // Opens only grow (tests running beside this one can only add to them).
        assert!(
            after.tcp_opens >= before.tcp_opens + 2,
            "{before:?} -> {after:?}"
        );
        assert_eq!(after.owner, before.owner);
    }
}
