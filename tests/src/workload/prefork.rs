//! A prefork server, as gunicorn's sync workers, Apache's prefork MPM or PHP-FPM run: the
//! parent binds the socket and forks N single-threaded workers; each accepts one connection,
//! serves its one request (CPU, then PostgreSQL over the worker's own connection), answers with
//! `Connection: close` and closes it first. Requests wait for a free worker in the listen
//! queue, which no worker can time: the clients' measurement is the truth of request time.
//! The workers' own time is recorded in memory shared across the fork.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::http::read_request;
use super::pg::PgConn;
use super::{burn_cpu_ms, thread_cpu_s, thread_run_delay_s, Args, Truth};

/// Totals shared by every worker: requests (a count), then nanoseconds of latency, cpu,
/// cpu_wait and downstream.
struct Shared([AtomicU64; 5]);

impl Shared {
    /// A zeroed region shared with the children forked after it.
    fn map() -> anyhow::Result<&'static Shared> {
        // SAFETY: an anonymous shared mapping of the struct's size, checked for failure; zeroed
        // memory is a valid `Shared` (atomics of 0), and it is never unmapped ('static).
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Shared>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                anyhow::bail!("mmap: {}", std::io::Error::last_os_error());
            }
            Ok(&*(p as *const Shared))
        }
    }

    fn add(&self, i: usize, s: f64) {
        self.0[i].fetch_add((s * 1e9) as u64, Ordering::Relaxed);
    }

    fn truth(&self, started: Instant) -> Truth {
        let s = |i: usize| self.0[i].load(Ordering::Relaxed) as f64 / 1e9;
        Truth {
            // A count, not nanoseconds.
            requests: self.0[0].load(Ordering::Relaxed) as f64,
            latency_s: s(1),
            cpu_s: s(2),
            cpu_wait_s: s(3),
            downstream_s: s(4),
            wall_s: started.elapsed().as_secs_f64(),
            ..Truth::default()
        }
    }
}

fn reply(mut s: &TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut msg = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    msg.extend_from_slice(body);
    s.write_all(&msg)
}

/// One worker process: accept, serve one request, close, forever.
fn worker(listener: &TcpListener, shared: &Shared, started: Instant, args: &Args) -> ! {
    let cpu_ms = args.num("cpu-ms", 0.0);
    let db_ms = args.num("db-ms", 0.0);
    let mut db = args
        .get("db")
        .map(|a| PgConn::connect(a).expect("postgres"));
    loop {
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(read) = stream.try_clone() else {
            continue;
        };
        let Some(path) = read_request(&mut BufReader::new(read)) else {
            continue;
        };
        if path == "/truth" {
            let body = serde_json::to_vec(&shared.truth(started)).unwrap_or_default();
            let _ = reply(&stream, &body);
            continue;
        }
        let t0 = Instant::now();
        let (cpu0, delay0) = (thread_cpu_s(), thread_run_delay_s());
        burn_cpu_ms(cpu_ms);
        if let Some(c) = db.as_mut() {
            let q = Instant::now();
            let _ = c.query(&format!("SELECT pg_sleep({})", db_ms / 1000.0));
            shared.add(4, q.elapsed().as_secs_f64());
        }
        shared.add(2, thread_cpu_s() - cpu0);
        shared.add(3, thread_run_delay_s() - delay0);
        shared.add(1, t0.elapsed().as_secs_f64());
        shared.0[0].fetch_add(1, Ordering::Relaxed);
        let _ = reply(&stream, b"{\"ok\":true}");
        // The server closes first (its socket goes to TIME_WAIT), as prefork servers do.
        drop(stream);
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let workers = args.num("workers", 4.0) as usize;
    let listener = TcpListener::bind(("127.0.0.1", args.num("port", 0.0) as u16))?;
    let shared = Shared::map()?;
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..workers {
        // SAFETY: fork in a process that has started no threads; the child runs only its
        // accept loop and never returns.
        match unsafe { libc::fork() } {
            -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                // A worker dies with its parent, which the tests stop by pid.
                // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
                worker(&listener, shared, started, args)
            }
            pid => children.push(pid),
        }
    }
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    // The parent only waits; when a worker dies, the server stops.
    let mut status = 0;
    // SAFETY: waitpid on our own children with a valid status pointer.
    unsafe { libc::waitpid(-1, &mut status, 0) };
    for pid in children {
        // SAFETY: kill takes plain integers; these are our own children.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Ok(())
}
