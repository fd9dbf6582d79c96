//! A thread-per-connection HTTP service: each request waits for one of N worker permits, then
//! burns CPU, takes a global lock, queries PostgreSQL through a pool of K connections and/or
//! calls a slow HTTP backend, in that order, and records where its time went.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::http::{get, read_request, write_response, write_response_split};
use super::pg::PgConn;
use super::{burn_cpu_ms, thread_cpu_s, thread_run_delay_s, Args, Truth};

/// A counting semaphore; the time to acquire is what the truth calls a wait.
struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Permits {
    fn new(n: usize) -> Self {
        Permits {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }
    fn acquire(&self) {
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *f == 0 {
            f = self.cv.wait(f).unwrap_or_else(|e| e.into_inner());
        }
        *f -= 1;
    }
    fn release(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_one();
    }
}

/// A pool of connections handed out under a condvar.
struct Pool<C> {
    conns: Mutex<Vec<C>>,
    cv: Condvar,
}

impl<C> Pool<C> {
    fn take(&self) -> C {
        let mut v = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = v.pop() {
                return c;
            }
            v = self.cv.wait(v).unwrap_or_else(|e| e.into_inner());
        }
    }
    fn give(&self, c: C) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        self.cv.notify_one();
    }
}

struct Service {
    cpu_ms: f64,
    lock_ms: f64,
    lock_cpu_ms: f64,
    db_ms: f64,
    backend_ms: f64,
    workers: Permits,
    lock: Mutex<()>,
    db: Option<Pool<PgConn>>,
    backend: Option<Pool<BufReader<TcpStream>>>,
    /// `--backend-per-call 1`: a new connection to the backend for every call, closed after
    /// it (an HTTP client without keep-alive).
    backend_per_call: Option<String>,
    truth: Mutex<Truth>,
    started: Instant,
    /// Head and body in two writes, and Nagle's algorithm left on (`--split 1 --nodelay 0`).
    split: bool,
    nodelay: bool,
}

impl Service {
    fn handle(&self) -> std::io::Result<()> {
        let t0 = Instant::now();
        let cpu0 = thread_cpu_s();
        let delay0 = thread_run_delay_s();
        let mut t = Truth::default();
        self.workers.acquire();
        t.worker_wait_s = t0.elapsed().as_secs_f64();
        let result = self.work(&mut t);
        self.workers.release();
        t.cpu_s = thread_cpu_s() - cpu0;
        t.cpu_wait_s = thread_run_delay_s() - delay0;
        t.latency_s = t0.elapsed().as_secs_f64();
        t.requests = 1.0;
        let mut sum = self.truth.lock().unwrap_or_else(|e| e.into_inner());
        sum.requests += t.requests;
        sum.latency_s += t.latency_s;
        sum.cpu_s += t.cpu_s;
        sum.cpu_wait_s += t.cpu_wait_s;
        sum.downstream_s += t.downstream_s;
        sum.lock_wait_s += t.lock_wait_s;
        sum.pool_wait_s += t.pool_wait_s;
        sum.worker_wait_s += t.worker_wait_s;
        result
    }

    fn work(&self, t: &mut Truth) -> std::io::Result<()> {
        if self.cpu_ms > 0.0 {
            burn_cpu_ms(self.cpu_ms);
        }
        if self.lock_ms > 0.0 || self.lock_cpu_ms > 0.0 {
            let w = Instant::now();
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            t.lock_wait_s = w.elapsed().as_secs_f64();
            if self.lock_cpu_ms > 0.0 {
                burn_cpu_ms(self.lock_cpu_ms);
            }
            if self.lock_ms > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(self.lock_ms / 1000.0));
            }
        }
        if let Some(pool) = &self.db {
            let w = Instant::now();
            let mut c = pool.take();
            t.pool_wait_s += w.elapsed().as_secs_f64();
            let q = Instant::now();
            let r = c.query(&format!("SELECT pg_sleep({})", self.db_ms / 1000.0));
            t.downstream_s += q.elapsed().as_secs_f64();
            pool.give(c);
            r?;
        }
        if let Some(addr) = &self.backend_per_call {
            let q = Instant::now();
            let r = TcpStream::connect(addr.as_str()).and_then(|s| {
                s.set_nodelay(true)?;
                get(
                    &mut BufReader::new(s),
                    &format!("/sleep?ms={}", self.backend_ms),
                )
            });
            t.downstream_s += q.elapsed().as_secs_f64();
            r?;
        }
        if let Some(pool) = &self.backend {
            let w = Instant::now();
            let mut c = pool.take();
            t.pool_wait_s += w.elapsed().as_secs_f64();
            let q = Instant::now();
            let r = get(&mut c, &format!("/sleep?ms={}", self.backend_ms));
            t.downstream_s += q.elapsed().as_secs_f64();
            pool.give(c);
            r?;
        }
        Ok(())
    }

    fn truth_json(&self) -> Vec<u8> {
        let mut t = *self.truth.lock().unwrap_or_else(|e| e.into_inner());
        t.wall_s = self.started.elapsed().as_secs_f64();
        serde_json::to_vec(&t).unwrap_or_default()
    }
}

fn connection(svc: Arc<Service>, stream: TcpStream) {
    let _ = stream.set_nodelay(svc.nodelay);
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    while let Some(path) = read_request(&mut r) {
        let body = if path == "/truth" {
            svc.truth_json()
        } else {
            match svc.handle() {
                Ok(()) => b"{\"ok\":true}".to_vec(),
                Err(e) => format!("{{\"error\":{:?}}}", e.to_string()).into_bytes(),
            }
        };
        let written = if svc.split {
            write_response_split(&mut w, &body)
        } else {
            write_response(&mut w, &body)
        };
        if written.is_err() {
            return;
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let workers = args.num("workers", 8.0) as usize;
    let pool_size = args.num("pool", workers as f64) as usize;
    let db = match args.get("db") {
        Some(addr) => {
            let conns = (0..pool_size)
                .map(|_| PgConn::connect(addr))
                .collect::<std::io::Result<Vec<_>>>()?;
            Some(Pool {
                conns: Mutex::new(conns),
                cv: Condvar::new(),
            })
        }
        None => None,
    };
    let per_call = args.num("backend-per-call", 0.0) > 0.0;
    let backend = match args.get("backend").filter(|_| !per_call) {
        Some(addr) => {
            let mut conns = Vec::new();
            for _ in 0..pool_size {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                conns.push(BufReader::new(s));
            }
            Some(Pool {
                conns: Mutex::new(conns),
                cv: Condvar::new(),
            })
        }
        None => None,
    };
    let svc = Arc::new(Service {
        cpu_ms: args.num("cpu-ms", 0.0),
        lock_ms: args.num("lock-ms", 0.0),
        lock_cpu_ms: args.num("lock-cpu-ms", 0.0),
        db_ms: args.num("db-ms", 0.0),
        backend_ms: args.num("backend-ms", 0.0),
        workers: Permits::new(workers),
        lock: Mutex::new(()),
        db,
        backend,
        backend_per_call: args.get("backend").filter(|_| per_call).map(str::to_string),
        truth: Mutex::new(Truth::default()),
        started: Instant::now(),
        split: args.num("split", 0.0) > 0.0,
        nodelay: args.num("nodelay", 1.0) > 0.0,
    });
    // `--host 0.0.0.0`: reachable through a container's published port.
    let host = args.get("host").unwrap_or("127.0.0.1");
    let listener = TcpListener::bind((host, args.num("port", 0.0) as u16))?;
    println!("listening {}", listener.local_addr()?);
    if let Some(after) = args
        .get("undumpable-after-s")
        .and_then(|v| v.parse::<f64>().ok())
    {
        // A process that turns itself unreadable mid-run (as one that changes its credentials
        // does): /proc/PID/* becomes root's and ptrace access needs CAP_SYS_PTRACE.
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs_f64(after));
            // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers and touches no memory.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        });
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let svc = svc.clone();
        std::thread::spawn(move || connection(svc, stream));
    }
    Ok(())
}

/// A slow downstream HTTP service: sleeps `--ms` per request (or `?ms=` in the path).
pub fn backend(args: &Args) -> anyhow::Result<()> {
    let default_ms = args.num("ms", 20.0);
    let listener = TcpListener::bind(("127.0.0.1", args.num("port", 0.0) as u16))?;
    println!("listening {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let Ok(mut w) = stream.try_clone() else {
                return;
            };
            let mut r = BufReader::new(stream);
            while let Some(path) = read_request(&mut r) {
                let ms = path
                    .split_once("ms=")
                    .and_then(|(_, v)| v.parse::<f64>().ok())
                    .unwrap_or(default_ms);
                std::thread::sleep(std::time::Duration::from_secs_f64(ms / 1000.0));
                if write_response(&mut w, b"{}").is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}
