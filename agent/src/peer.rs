//! The local process behind a dependency: a PostgreSQL on port 55432, or behind a unix socket
//! with a name that says nothing, is still PostgreSQL. When a dependency's endpoint does not tell
//! its kind (no well-known port, no telling path) and the server runs on this host, its process's
//! command name does.
//!
//! Finding the process that holds a socket means reading fd links across `/proc`: bounded (a
//! budget of links read) and done once per new dependency, never per round.

use std::path::Path;

/// Fd links read at most in one search (a few milliseconds on a busy host).
const MAX_LINKS: usize = 200_000;

/// The usual kind of a server process, from its command name.
pub fn kind_for_process(comm: &str) -> &'static str {
    let c = comm.to_ascii_lowercase();
    let is = |names: &[&str]| {
        names
            .iter()
            .any(|n| c == *n || c.starts_with(&format!("{n}:")))
    };
    if is(&["postgres", "postmaster", "pgbouncer"]) {
        "postgresql"
    } else if is(&["redis-server", "valkey-server", "keydb-server"]) {
        "redis"
    } else if is(&["mysqld", "mariadbd"]) {
        "mysql"
    } else if is(&["memcached"]) {
        "memcached"
    } else if is(&["mongod", "mongos"]) {
        "mongodb"
    } else if is(&["nginx", "httpd", "apache2", "envoy", "haproxy", "caddy"]) {
        "http"
    } else {
        "unknown"
    }
}

/// The command name of a process on this host holding the socket with this inode, searching at
/// most [`MAX_LINKS`] fd links.
pub fn process_holding(proc_root: &Path, inode: u64) -> Option<String> {
    let want = format!("socket:[{inode}]");
    let mut budget = MAX_LINKS;
    for entry in std::fs::read_dir(proc_root).ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if budget == 0 {
                return None;
            }
            budget -= 1;
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                let comm = std::fs::read_to_string(proc_root.join(pid).join("comm")).ok()?;
                return Some(comm.trim().to_string());
            }
        }
    }
    None
}

/// The kind of the local server holding `inode`, if it tells one.
pub fn kind_of_local_server(proc_root: &Path, inode: u64) -> Option<&'static str> {
    let kind = kind_for_process(&process_holding(proc_root, inode)?);
    (kind != "unknown").then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_processes_name_their_kind() {
        assert_eq!(kind_for_process("postgres"), "postgresql");
        assert_eq!(kind_for_process("redis-server"), "redis");
        assert_eq!(kind_for_process("mysqld"), "mysql");
        assert_eq!(kind_for_process("python3"), "unknown");
        assert_eq!(kind_for_process("postgresx"), "unknown");
    }

    #[test]
    fn the_process_holding_a_socket_is_found() {
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        use std::os::fd::AsRawFd;
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .expect("fd")
            .ino();
        let me = std::fs::read_to_string("/proc/self/comm").expect("comm");
        assert_eq!(
            process_holding(Path::new("/proc"), inode).as_deref(),
            Some(me.trim())
        );
        assert_eq!(process_holding(Path::new("/proc"), u64::MAX), None);
    }
}
