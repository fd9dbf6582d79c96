//! TCP sockets and their `tcp_info`, and unix-domain sockets' names and peers, from
//! NETLINK_SOCK_DIAG.
//!
//! Written by hand: it is a tight loop on the sampling path (a dump of the host's TCP sockets with
//! `tcp_info` several times a second), we need exactly one request shape and a handful of
//! `tcp_info` fields, and the crates that wrap netlink bring a generic message framework for it.
//! The parsers [`parse_messages`] and [`parse_unix_messages`] are pure and fuzzed: the kernel writes these bytes, but the
//! parser is written as if it did not, so every length is checked.
//!
//! Only what is needed to tell "a request is outstanding on this connection" is kept:
//! `last_data_sent`/`last_data_recv` (ms ago, kernel-tick resolution) order the last exchange,
//! and `data_segs_in`/`bytes_received`/`bytes_acked` move when data does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const INET_DIAG_INFO: u16 = 2;
const NLMSG_HDR: usize = 16;
const DIAG_MSG: usize = 72;

/// TCP states, as the kernel numbers them.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_LISTEN: u8 = 10;

#[derive(Debug, Error)]
pub enum SockDiagError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink send: {0}")]
    Send(std::io::Error),
    #[error("netlink receive: {0}")]
    Recv(std::io::Error),
    #[error("kernel answered error {0}")]
    Kernel(i32),
    #[error("malformed netlink message: {0}")]
    Malformed(&'static str),
}

impl SockDiagError {
    pub fn kind(&self) -> &'static str {
        match self {
            SockDiagError::Socket(_) => "socket",
            SockDiagError::Send(_) | SockDiagError::Recv(_) => "io",
            SockDiagError::Kernel(_) => "kernel",
            SockDiagError::Malformed(_) => "malformed",
        }
    }
}

/// The `tcp_info` fields the agent uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Milliseconds since data was last sent / received (kernel-tick resolution).
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    /// Milliseconds since an ACK was last received.
    pub last_ack_recv_ms: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes the process wrote that the kernel has not sent yet (Nagle, cwnd, peer window).
    pub notsent_bytes: u32,
    /// Bytes sent, retransmissions included (0 on kernels before 4.19).
    pub bytes_sent: u64,
}

/// One TCP socket from a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// AF_INET or AF_INET6 as the kernel keeps the socket (a dual-stack socket's IPv4 peer is
    /// shown as IPv4 in `remote`, but is looked up as IPv6).
    pub family: u8,
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// 0 for a connection not yet accepted by the process.
    pub inode: u64,
    pub uid: u32,
    /// Bytes received and not yet read by the process (for LISTEN: the accept backlog).
    pub rqueue: u32,
    pub wqueue: u32,
    /// Milliseconds left on the socket's timer (for TIME_WAIT, until it goes: a socket enters
    /// TIME_WAIT with [`TIME_WAIT_MS`] on it).
    pub expires_ms: u32,
    pub info: Option<TcpInfo>,
}

/// How long a closed connection stays in TIME_WAIT on the side that closed first (Linux's
/// fixed `TCP_TIMEWAIT_LEN`).
pub const TIME_WAIT_MS: u32 = 60_000;

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_ne(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Turns a v4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) into IPv4, so
/// the same endpoint has one name.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn addr(family: u8, raw: &[u8], port_be: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(port_be.try_into().ok()?);
    let ip = if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let octets: [u8; 16] = raw.get(..16)?.try_into().ok()?;
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Some(SocketAddr::new(canonical(ip), port))
}

fn parse_tcp_info(b: &[u8]) -> Option<TcpInfo> {
    // Offsets in struct tcp_info (include/uapi/linux/tcp.h); fields past what an older kernel
    // sends are left at zero rather than rejecting the socket.
    Some(TcpInfo {
        last_data_sent_ms: u32_ne(b, 44)?,
        last_data_recv_ms: u32_ne(b, 52)?,
        bytes_acked: u64_ne(b, 120).unwrap_or(0),
        bytes_received: u64_ne(b, 128).unwrap_or(0),
        data_segs_in: u32_ne(b, 152).unwrap_or(0),
        data_segs_out: u32_ne(b, 156).unwrap_or(0),
        last_ack_recv_ms: u32_ne(b, 56).unwrap_or(0),
        unacked: u32_ne(b, 24).unwrap_or(0),
        notsent_bytes: u32_ne(b, 144).unwrap_or(0),
        bytes_sent: u64_ne(b, 200).unwrap_or(0),
    })
}

/// What one receive buffer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Sockets with the sequence number of the request they answer.
    pub sockets: Vec<(u32, TcpSocket)>,
    /// Requests the kernel refused, with the error (ENOENT: the socket is gone).
    pub errors: Vec<(u32, i32)>,
    pub done: bool,
}

/// Parses a buffer of netlink messages answering an inet_diag request.
pub fn parse_messages(mut buf: &[u8]) -> Result<Parsed, SockDiagError> {
    let mut out = Parsed::default();
    while buf.len() >= NLMSG_HDR {
        let len = u32_ne(buf, 0).ok_or(SockDiagError::Malformed("header"))? as usize;
        let kind = u16_ne(buf, 4).ok_or(SockDiagError::Malformed("header"))?;
        let seq = u32_ne(buf, 8).ok_or(SockDiagError::Malformed("header"))?;
        if len < NLMSG_HDR || len > buf.len() {
            return Err(SockDiagError::Malformed("message length"));
        }
        let body = &buf[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => {
                out.done = true;
                return Ok(out);
            }
            NLMSG_ERROR => {
                let code = u32_ne(body, 0).ok_or(SockDiagError::Malformed("error body"))? as i32;
                if code != 0 {
                    // Errors are negated errnos; a hostile i32::MIN must not overflow.
                    out.errors.push((seq, code.saturating_neg()));
                }
            }
            SOCK_DIAG_BY_FAMILY => {
                if body.len() < DIAG_MSG {
                    return Err(SockDiagError::Malformed("inet_diag_msg"));
                }
                let family = body[0];
                let local = addr(family, &body[8..24], &body[4..6])
                    .ok_or(SockDiagError::Malformed("address"))?;
                let remote = addr(family, &body[24..40], &body[6..8])
                    .ok_or(SockDiagError::Malformed("address"))?;
                let mut sock = TcpSocket {
                    family,
                    state: body[1],
                    local,
                    remote,
                    rqueue: u32_ne(body, 56).unwrap_or(0),
                    wqueue: u32_ne(body, 60).unwrap_or(0),
                    uid: u32_ne(body, 64).unwrap_or(0),
                    inode: u32_ne(body, 68).unwrap_or(0) as u64,
                    expires_ms: u32_ne(body, 52).unwrap_or(0),
                    info: None,
                };
                let mut attrs = &body[DIAG_MSG..];
                while attrs.len() >= 4 {
                    let alen = u16_ne(attrs, 0).unwrap_or(0) as usize;
                    let atype = u16_ne(attrs, 2).unwrap_or(0);
                    if alen < 4 || alen > attrs.len() {
                        return Err(SockDiagError::Malformed("attribute length"));
                    }
                    if atype == INET_DIAG_INFO {
                        sock.info = parse_tcp_info(&attrs[4..alen]);
                    }
                    let aligned = (alen + 3) & !3;
                    attrs = attrs.get(aligned..).unwrap_or(&[]);
                }
                out.sockets.push((seq, sock));
            }
            _ => {}
        }
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    Ok(out)
}

/// `unix_diag_msg` and the attributes asked for (include/uapi/linux/unix_diag.h).
const UNIX_DIAG_MSG: usize = 16;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;

/// One unix-domain socket: its bound name (a listener's path, which its accepted connections
/// share; `@...` for an abstract name) and the inode of the socket at its other end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixSocket {
    pub inode: u64,
    pub name: Option<String>,
    pub peer: Option<u64>,
}

/// Parses a buffer of netlink messages answering a unix_diag request.
pub fn parse_unix_messages(mut buf: &[u8]) -> Result<(Vec<UnixSocket>, Vec<i32>), SockDiagError> {
    let mut sockets = Vec::new();
    let mut errors = Vec::new();
    while buf.len() >= NLMSG_HDR {
        let len = u32_ne(buf, 0).ok_or(SockDiagError::Malformed("header"))? as usize;
        let kind = u16_ne(buf, 4).ok_or(SockDiagError::Malformed("header"))?;
        if len < NLMSG_HDR || len > buf.len() {
            return Err(SockDiagError::Malformed("message length"));
        }
        let body = &buf[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => break,
            NLMSG_ERROR => {
                let code = u32_ne(body, 0).ok_or(SockDiagError::Malformed("error body"))? as i32;
                if code != 0 {
                    errors.push(code.saturating_neg());
                }
            }
            SOCK_DIAG_BY_FAMILY => {
                if body.len() < UNIX_DIAG_MSG {
                    return Err(SockDiagError::Malformed("unix_diag_msg"));
                }
                let mut sock = UnixSocket {
                    inode: u32_ne(body, 4).unwrap_or(0) as u64,
                    ..UnixSocket::default()
                };
                let mut attrs = &body[UNIX_DIAG_MSG..];
                while attrs.len() >= 4 {
                    let alen = u16_ne(attrs, 0).unwrap_or(0) as usize;
                    let atype = u16_ne(attrs, 2).unwrap_or(0);
                    if alen < 4 || alen > attrs.len() {
                        return Err(SockDiagError::Malformed("attribute length"));
                    }
                    let value = &attrs[4..alen];
                    match atype {
                        UNIX_DIAG_NAME if !value.is_empty() => {
                            // An abstract name starts with a NUL byte; a path ends at one.
                            let (abstract_name, bytes) = match value.split_first() {
                                Some((0, rest)) => (true, rest),
                                _ => (false, value),
                            };
                            let end = if abstract_name {
                                bytes.len()
                            } else {
                                bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())
                            };
                            let text = String::from_utf8_lossy(&bytes[..end]);
                            sock.name = Some(if abstract_name {
                                format!("@{text}")
                            } else {
                                text.into_owned()
                            });
                        }
                        UNIX_DIAG_PEER => sock.peer = u32_ne(value, 0).map(u64::from),
                        _ => {}
                    }
                    let aligned = (alen + 3) & !3;
                    attrs = attrs.get(aligned..).unwrap_or(&[]);
                }
                sockets.push(sock);
            }
            _ => {}
        }
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    Ok((sockets, errors))
}

/// An exact-match unix_diag request for the socket with this inode (no dump), with its name and
/// its peer.
fn unix_lookup_request(inode: u64, seq: u32) -> [u8; NLMSG_HDR + 24] {
    let mut m = [0u8; NLMSG_HDR + 24];
    m[0..4].copy_from_slice(&((NLMSG_HDR + 24) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m[16] = libc::AF_UNIX as u8;
    m[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    m[24..28].copy_from_slice(&(inode as u32).to_ne_bytes());
    m[28..32].copy_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    // cookie = INET_DIAG_NOCOOKIE: match by inode alone.
    m[32..40].copy_from_slice(&[0xff; 8]);
    m
}

/// The states a full dump asks for: established, listen, and the closing ones where a response
/// may still be outstanding (peer half-closed). TIME_WAIT and friends carry no requests.
const DUMP_STATES: u32 = (1 << TCP_ESTABLISHED) | (1 << TCP_LISTEN) | (1 << 8) | (1 << 3);
/// TIME_WAIT, what the kernel keeps of a connection for a minute after the side that closed
/// first has closed it.
pub const TCP_TIME_WAIT: u8 = 6;

/// A dump request for every TCP socket of one address family in `states`, with `tcp_info`.
fn dump_request(family: u8, seq: u32, states: u32) -> [u8; NLMSG_HDR + 56] {
    let mut m = [0u8; NLMSG_HDR + 56];
    m[0..4].copy_from_slice(&((NLMSG_HDR + 56) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m[16] = family;
    m[17] = libc::IPPROTO_TCP as u8;
    m[18] = 1 << (INET_DIAG_INFO - 1);
    m[20..24].copy_from_slice(&states.to_ne_bytes());
    m
}

/// An exact-match request for one known socket (no dump: the kernel looks it up by its
/// addresses and ports in the hash table, a few microseconds instead of a walk of the table).
fn lookup_request(sock: &TcpSocket, seq: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + NLMSG_HDR + 56, 0);
    let m = &mut out[start..];
    m[0..4].copy_from_slice(&((NLMSG_HDR + 56) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m[16] = sock.family;
    m[17] = libc::IPPROTO_TCP as u8;
    m[18] = 1 << (INET_DIAG_INFO - 1);
    m[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    m[24..26].copy_from_slice(&sock.local.port().to_be_bytes());
    m[26..28].copy_from_slice(&sock.remote.port().to_be_bytes());
    let raw = |ip: IpAddr| -> [u8; 16] {
        match (sock.family == libc::AF_INET as u8, ip) {
            (true, IpAddr::V4(v4)) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                b
            }
            (_, IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
            (_, IpAddr::V6(v6)) => v6.octets(),
        }
    };
    m[28..44].copy_from_slice(&raw(sock.local.ip()));
    m[44..60].copy_from_slice(&raw(sock.remote.ip()));
    // if = 0, cookie = INET_DIAG_NOCOOKIE: match by addresses alone.
    m[64..72].copy_from_slice(&[0xff; 8]);
}

/// Requests per send: the replies (about 330 bytes each) must fit the receive buffer.
const LOOKUP_BATCH: usize = 128;
/// Room for one lookup reply in the receive buffer (a reply is about 330 bytes today; `tcp_info`
/// grows with kernels, so leave it room).
const SLOT: usize = 1024;

/// A NETLINK_SOCK_DIAG socket with a reused receive buffer.
pub struct SockDiag {
    fd: std::os::fd::OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> Result<SockDiag, SockDiagError> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2) call; the fd is owned immediately below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(SockDiagError::Socket(std::io::Error::last_os_error()));
        }
        let rcvbuf: libc::c_int = 1 << 20;
        // SAFETY: setting an int socket option on our own fd; failure only leaves the default.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        Ok(SockDiag {
            // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
            buf: vec![0u8; 64 * 1024],
            seq: 0,
        })
    }

    /// Every TCP socket of the network namespace (IPv4 and IPv6) in [`DUMP_STATES`].
    pub fn dump(&mut self, out: &mut Vec<TcpSocket>) -> Result<(), SockDiagError> {
        self.dump_states(DUMP_STATES, out)
    }

    /// Every socket of the namespace in TIME_WAIT.
    pub fn dump_time_wait(&mut self, out: &mut Vec<TcpSocket>) -> Result<(), SockDiagError> {
        self.dump_states(1 << TCP_TIME_WAIT, out)
    }

    fn dump_states(&mut self, states: u32, out: &mut Vec<TcpSocket>) -> Result<(), SockDiagError> {
        out.clear();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.seq = self.seq.wrapping_add(1);
            let req = dump_request(family, self.seq, states);
            self.send(&req)?;
            loop {
                let n = self.recv()?;
                let parsed = parse_messages(&self.buf[..n])?;
                if let Some(&(_, code)) = parsed.errors.first() {
                    return Err(SockDiagError::Kernel(code));
                }
                out.extend(parsed.sockets.into_iter().map(|(_, s)| s));
                if parsed.done || n == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Fresh state of known sockets, looked up one by one in batches of requests per send.
    /// `out[i]` answers `socks[i]`: `None` when the socket is gone.
    pub fn lookup(
        &mut self,
        socks: &[TcpSocket],
        out: &mut Vec<Option<TcpSocket>>,
    ) -> Result<(), SockDiagError> {
        out.clear();
        out.resize(socks.len(), None);
        let mut req = Vec::with_capacity(LOOKUP_BATCH * (NLMSG_HDR + 56));
        for (chunk_no, chunk) in socks.chunks(LOOKUP_BATCH).enumerate() {
            req.clear();
            let base = self.seq.wrapping_add(1);
            for (i, s) in chunk.iter().enumerate() {
                lookup_request(s, base.wrapping_add(i as u32), &mut req);
            }
            self.seq = base.wrapping_add(chunk.len() as u32);
            self.send(&req)?;
            let mut answered = 0;
            while answered < chunk.len() {
                let lens = self.recv_many()?;
                if lens.is_empty() {
                    break;
                }
                for (slot, &n) in lens.iter().enumerate() {
                    let at = slot * SLOT;
                    let parsed = parse_messages(&self.buf[at..at + n.min(SLOT)])?;
                    answered += (parsed.sockets.len() + parsed.errors.len()).max(1);
                    for (seq, sock) in parsed.sockets {
                        let i = seq.wrapping_sub(base) as usize;
                        // The kernel's lookup falls back to the listener when a connection is
                        // gone, and a new connection can reuse a 4-tuple: only the same socket
                        // counts.
                        if let Some(asked) = chunk.get(i) {
                            if sock.local == asked.local
                                && sock.remote == asked.remote
                                && (asked.inode == 0 || sock.inode == asked.inode)
                            {
                                out[chunk_no * LOOKUP_BATCH + i] = Some(sock);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The unix-domain socket with this inode in the namespace, with its name and peer; `None`
    /// when there is none (the inode is another kind of socket, or closed).
    pub fn unix_lookup(&mut self, inode: u64) -> Result<Option<UnixSocket>, SockDiagError> {
        if inode > u64::from(u32::MAX) {
            return Ok(None);
        }
        self.seq = self.seq.wrapping_add(1);
        self.send(&unix_lookup_request(inode, self.seq))?;
        let n = self.recv()?;
        let (sockets, _errors) = parse_unix_messages(&self.buf[..n])?;
        Ok(sockets.into_iter().find(|s| s.inode == inode))
    }

    fn send(&self, msg: &[u8]) -> Result<(), SockDiagError> {
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and sa are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(SockDiagError::Send(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Receives up to `buf.len() / SLOT` datagrams in one system call (a lookup's replies come
    /// one datagram each; a `recv` apiece cost as much as the lookups). Returns their lengths.
    fn recv_many(&mut self) -> Result<Vec<usize>, SockDiagError> {
        use std::os::fd::AsRawFd;
        let slots = self.buf.len() / SLOT;
        let mut iov: Vec<libc::iovec> = self
            .buf
            .chunks_exact_mut(SLOT)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: SLOT,
            })
            .collect();
        // SAFETY: zeroed mmsghdr is a valid empty header; each points at its own iovec.
        let mut hdrs: Vec<libc::mmsghdr> =
            (0..slots).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        loop {
            // SAFETY: hdrs/iov point into self.buf, valid and exclusively borrowed for the call.
            // MSG_WAITFORONE: block for the first datagram, then take what is already queued.
            let r = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    slots as u32,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SockDiagError::Recv(e));
            }
            return Ok(hdrs[..r as usize]
                .iter()
                .map(|h| h.msg_len as usize)
                .collect());
        }
    }

    fn recv(&mut self) -> Result<usize, SockDiagError> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: the buffer is valid for its length and owned by self.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SockDiagError::Recv(e));
            }
            return Ok(r as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn diag_body(info: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG];
        b[0] = libc::AF_INET as u8;
        b[1] = TCP_ESTABLISHED;
        b[4..6].copy_from_slice(&5432u16.to_be_bytes());
        b[6..8].copy_from_slice(&40000u16.to_be_bytes());
        b[8..12].copy_from_slice(&[127, 0, 0, 1]);
        b[24..28].copy_from_slice(&[127, 0, 0, 2]);
        b[68..72].copy_from_slice(&777u32.to_ne_bytes());
        if let Some(info) = info {
            b.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
            b.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
            b.extend_from_slice(info);
        }
        b
    }

    #[test]
    fn parses_a_socket_with_tcp_info() {
        let mut info = vec![0u8; 232];
        info[44..48].copy_from_slice(&8u32.to_ne_bytes());
        info[52..56].copy_from_slice(&12u32.to_ne_bytes());
        info[152..156].copy_from_slice(&3u32.to_ne_bytes());
        let mut buf = msg(SOCK_DIAG_BY_FAMILY, &diag_body(Some(&info)));
        buf.extend(msg(NLMSG_DONE, &[0; 4]));
        let p = parse_messages(&buf).expect("valid");
        assert!(p.done);
        assert_eq!(p.sockets.len(), 1);
        let s = &p.sockets[0].1;
        assert_eq!(s.local, "127.0.0.1:5432".parse().expect("addr"));
        assert_eq!(s.remote, "127.0.0.2:40000".parse().expect("addr"));
        assert_eq!(s.inode, 777);
        let i = s.info.expect("info");
        assert_eq!((i.last_data_sent_ms, i.last_data_recv_ms), (8, 12));
        assert_eq!(i.data_segs_in, 3);
    }

    #[test]
    fn short_tcp_info_from_an_old_kernel_keeps_what_it_has() {
        let info = vec![0u8; 104];
        let buf = msg(SOCK_DIAG_BY_FAMILY, &diag_body(Some(&info)));
        let p = parse_messages(&buf).expect("valid");
        assert_eq!(p.sockets[0].1.info.map(|i| i.bytes_acked), Some(0));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let good = msg(SOCK_DIAG_BY_FAMILY, &diag_body(None));
        for cut in 0..good.len() {
            let _ = parse_messages(&good[..cut]);
        }
        let mut bad_len = good.clone();
        bad_len[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(matches!(
            parse_messages(&bad_len),
            Err(SockDiagError::Malformed(_))
        ));
        let mut bad_attr = diag_body(None);
        bad_attr.extend_from_slice(&[200, 0, 2, 0]);
        assert!(parse_messages(&msg(SOCK_DIAG_BY_FAMILY, &bad_attr)).is_err());
        let err = msg(NLMSG_ERROR, &(-2i32).to_ne_bytes());
        assert_eq!(parse_messages(&err).expect("valid").errors, vec![(0, 2)]);
        // Found by the fuzzer: an error code of i32::MIN overflowed its negation.
        let min = msg(NLMSG_ERROR, &i32::MIN.to_ne_bytes());
        assert_eq!(
            parse_messages(&min).expect("valid").errors,
            vec![(0, i32::MAX)]
        );
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let v6: IpAddr = "::ffff:127.0.0.1".parse().expect("addr");
        assert_eq!(canonical(v6), "127.0.0.1".parse::<IpAddr>().expect("addr"));
    }

    #[test]
    fn dump_sees_a_live_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let mut diag = SockDiag::open().expect("netlink");
        let mut socks = Vec::new();
        diag.dump(&mut socks).expect("dump");
        assert!(socks
            .iter()
            .any(|s| s.state == TCP_LISTEN && s.local.port() == port));
        let server_side = socks
            .iter()
            .find(|s| s.state == TCP_ESTABLISHED && s.local.port() == port)
            .expect("accepted socket in the dump");
        assert!(server_side.inode != 0);
        assert!(server_side.info.is_some());
        // Exact lookups find the same socket, and say when one is gone.
        let mut gone = server_side.clone();
        gone.remote = "127.0.0.1:1".parse().expect("addr");
        let mut found = Vec::new();
        diag.lookup(&[server_side.clone(), gone], &mut found)
            .expect("lookup");
        assert_eq!(found[0].as_ref().map(|s| s.inode), Some(server_side.inode));
        assert!(found[1].is_none());
    }

    #[test]
    fn unix_replies_give_name_and_peer() {
        let mut body = vec![0u8; UNIX_DIAG_MSG];
        body[0] = libc::AF_UNIX as u8;
        body[4..8].copy_from_slice(&4242u32.to_ne_bytes());
        let mut name = b"/tmp/pg/.s.PGSQL.5432\0".to_vec();
        let alen = 4 + name.len();
        body.extend_from_slice(&(alen as u16).to_ne_bytes());
        body.extend_from_slice(&UNIX_DIAG_NAME.to_ne_bytes());
        body.append(&mut name);
        while body.len() % 4 != 0 {
            body.push(0);
        }
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        body.extend_from_slice(&77u32.to_ne_bytes());
        let (socks, errors) = parse_unix_messages(&msg(SOCK_DIAG_BY_FAMILY, &body)).expect("parse");
        assert!(errors.is_empty());
        assert_eq!(
            socks,
            vec![UnixSocket {
                inode: 4242,
                name: Some("/tmp/pg/.s.PGSQL.5432".into()),
                peer: Some(77),
            }]
        );
        assert!(parse_unix_messages(&msg(SOCK_DIAG_BY_FAMILY, &body[..10])).is_err());
    }

    #[test]
    fn a_unix_connection_is_found_with_its_listener_path() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("sw-unix-diag-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("server.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        let (served, _) = listener.accept().expect("accept");
        let inode_of = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .map(|m| m.ino())
                .expect("fd")
        };
        use std::os::fd::AsRawFd;
        let client_inode = inode_of(client.as_raw_fd());
        let mut diag = SockDiag::open().expect("netlink");
        let me = diag
            .unix_lookup(client_inode)
            .expect("lookup")
            .expect("found");
        assert_eq!(me.name, None, "a connecting client has no name");
        let peer = diag
            .unix_lookup(me.peer.expect("peer"))
            .expect("lookup")
            .expect("peer found");
        assert_eq!(peer.name.as_deref(), path.to_str());
        assert_eq!(diag.unix_lookup(1).expect("lookup"), None);
        drop((listener, client, served));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
