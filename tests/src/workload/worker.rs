//! A queue worker with no inbound requests: N threads, each with its own Redis connection and
//! PostgreSQL connection, loop on `BRPOP jobs 1` and run each job (CPU, then `pg_sleep`). The
//! job's time (from the fetch's answer to the job's end) is what the worker records as its
//! truth, written every 100 ms to `--truth-file` as JSON with the other workloads' keys: a
//! worker serves nothing, so its truth cannot be asked for over HTTP. `--fill N` first pushes N
//! jobs, so the queue stays full for the run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pg::PgConn;
use super::{burn_cpu_ms, thread_cpu_s, thread_run_delay_s, Args, Truth};

/// Just enough RESP: a command as an array of bulk strings, and a reply read whole.
struct Redis(BufReader<TcpStream>);

#[derive(Debug, PartialEq)]
enum Reply {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
}

impl Redis {
    fn connect(addr: &str) -> std::io::Result<Redis> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Redis(BufReader::new(s)))
    }

    fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        let mut m = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            m.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            m.extend_from_slice(a);
            m.extend_from_slice(b"\r\n");
        }
        self.0.get_mut().write_all(&m)?;
        self.reply()
    }

    fn reply(&mut self) -> std::io::Result<Reply> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut line = String::new();
        if self.0.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let (kind, rest) = line.split_at(1);
        let n: i64 = rest.trim().parse().unwrap_or(0);
        match kind {
            ":" => Ok(Reply::Int(n)),
            "+" => Ok(Reply::Bulk(rest.trim_end().as_bytes().to_vec())),
            "-" => Err(bad(line.trim())),
            "$" if n < 0 => Ok(Reply::Nil),
            "$" => {
                let mut b = vec![0u8; n as usize + 2];
                self.0.read_exact(&mut b)?;
                b.truncate(n as usize);
                Ok(Reply::Bulk(b))
            }
            "*" if n < 0 => Ok(Reply::Nil),
            "*" => (0..n)
                .map(|_| self.reply())
                .collect::<Result<_, _>>()
                .map(Reply::Array),
            _ => Err(bad("unknown reply")),
        }
    }
}

fn work(
    redis: &str,
    db: Option<&str>,
    cpu_ms: f64,
    db_ms: f64,
    truth: &Mutex<Truth>,
) -> std::io::Result<()> {
    let mut q = Redis::connect(redis)?;
    let mut pg = db.map(PgConn::connect).transpose()?;
    let sql = format!("SELECT pg_sleep({})", db_ms / 1000.0);
    loop {
        if q.command(&[b"BRPOP", b"jobs", b"1"])? == Reply::Nil {
            continue;
        }
        let t0 = Instant::now();
        let (cpu0, delay0) = (thread_cpu_s(), thread_run_delay_s());
        burn_cpu_ms(cpu_ms);
        let mut down = 0.0;
        if let Some(c) = pg.as_mut() {
            let w = Instant::now();
            c.query(&sql)?;
            down = w.elapsed().as_secs_f64();
        }
        let mut t = truth.lock().unwrap_or_else(|e| e.into_inner());
        t.requests += 1.0;
        t.latency_s += t0.elapsed().as_secs_f64();
        t.cpu_s += thread_cpu_s() - cpu0;
        t.cpu_wait_s += thread_run_delay_s() - delay0;
        t.downstream_s += down;
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let redis = args.get("redis").unwrap_or("127.0.0.1:6379").to_string();
    let db = args.get("db").map(str::to_string);
    let threads = args.num("threads", 4.0) as usize;
    let (cpu_ms, db_ms) = (args.num("cpu-ms", 0.0), args.num("db-ms", 10.0));
    let truth_file = args
        .get("truth-file")
        .ok_or_else(|| anyhow::anyhow!("--truth-file PATH"))?
        .to_string();
    let fill = args.num("fill", 0.0) as usize;
    let mut r = Redis::connect(&redis)?;
    for chunk in (0..fill).collect::<Vec<_>>().chunks(1000) {
        let mut cmd: Vec<&[u8]> = vec![b"LPUSH", b"jobs"];
        cmd.extend(chunk.iter().map(|_| b"job".as_slice()));
        r.command(&cmd)?;
    }
    let truth = Arc::new(Mutex::new(Truth::default()));
    let started = Instant::now();
    for _ in 0..threads {
        let (redis, db, truth) = (redis.clone(), db.clone(), truth.clone());
        std::thread::spawn(move || {
            if let Err(e) = work(&redis, db.as_deref(), cpu_ms, db_ms, &truth) {
                eprintln!("worker: {e}");
                std::process::exit(1);
            }
        });
    }
    println!("working");
    std::io::stdout().flush()?;
    loop {
        let mut t = *truth.lock().unwrap_or_else(|e| e.into_inner());
        t.wall_s = started.elapsed().as_secs_f64();
        let tmp = format!("{truth_file}.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&t)?)?;
        std::fs::rename(&tmp, &truth_file)?;
        std::thread::sleep(Duration::from_millis(100));
    }
}
