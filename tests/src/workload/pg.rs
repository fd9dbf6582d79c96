//! A minimal PostgreSQL wire-protocol client (simple query, trust authentication).
//!
//! Hand-written on purpose: the `postgres` crate runs a tokio runtime on a hidden thread, so the
//! calling worker would wait on a futex while another thread reads the socket. Real
//! thread-per-request drivers (JDBC, psycopg2, libpq) block the worker in a read of the database
//! socket itself, and that is what this client does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

pub struct PgConn {
    s: Stream,
}

/// TCP (`HOST:PORT`) or the server's unix-domain socket (a path: `DIR/.s.PGSQL.PORT`), as
/// libpq connects either way.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

fn read_msg(s: &mut Stream, body: &mut Vec<u8>) -> std::io::Result<u8> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    body.resize(len.saturating_sub(4), 0);
    s.read_exact(body)?;
    Ok(head[0])
}

fn bad(what: String) -> std::io::Error {
    std::io::Error::other(what)
}

impl PgConn {
    pub fn connect(addr: &str) -> std::io::Result<PgConn> {
        let mut s = if addr.starts_with('/') {
            Stream::Unix(UnixStream::connect(addr)?)
        } else {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Stream::Tcp(s)
        };
        let mut params = Vec::new();
        params.extend_from_slice(&196608u32.to_be_bytes());
        for kv in ["user", "postgres", "database", "postgres"] {
            params.extend_from_slice(kv.as_bytes());
            params.push(0);
        }
        params.push(0);
        let mut msg = ((params.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&params);
        s.write_all(&msg)?;
        let mut body = Vec::new();
        loop {
            match read_msg(&mut s, &mut body)? {
                b'R' if body.get(..4) == Some(&[0, 0, 0, 0]) => {}
                b'R' => return Err(bad("server wants a password: use trust auth".into())),
                b'E' => return Err(bad(String::from_utf8_lossy(&body).into_owned())),
                b'Z' => return Ok(PgConn { s }),
                _ => {}
            }
        }
    }

    /// Runs one simple query and waits for ReadyForQuery.
    pub fn query(&mut self, sql: &str) -> std::io::Result<()> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.s.write_all(&msg)?;
        let mut body = Vec::new();
        let mut error = None;
        loop {
            match read_msg(&mut self.s, &mut body)? {
                b'E' => error = Some(String::from_utf8_lossy(&body).into_owned()),
                b'Z' => return error.map_or(Ok(()), |e| Err(bad(e))),
                _ => {}
            }
        }
    }
}
