//! Just enough HTTP/1.1 for keep-alive request/response on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Reads one request head; returns its path, or None at end of stream.
pub fn read_request(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let path = first.split_whitespace().nth(1)?.to_string();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" || line == "\n" {
            return Some(path);
        }
    }
}

/// Writes a whole response in one write call (servers that split head and body end the
/// socket signal's "awaiting" at the first byte).
pub fn write_response(w: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut msg = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    msg.extend_from_slice(body);
    w.write_all(&msg)
}

/// Writes the head and the body in two write calls, as many frameworks do: with Nagle's
/// algorithm on, the small body waits for the client's (delayed) ACK of the head.
pub fn write_response_split(w: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)
}

/// Sends a GET and reads the response body.
pub fn get(conn: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<Vec<u8>> {
    conn.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: w\r\n\r\n").as_bytes())?;
    read_body(conn)
}

/// Reads a response head and its body (by Content-Length, or to end of stream).
pub fn read_body(conn: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut len: Option<usize> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            conn.read_exact(&mut body)?;
        }
        None => {
            conn.read_to_end(&mut body)?;
        }
    }
    Ok(body)
}
