//! An event-loop HTTP service: one thread runs every request and the database driver
//! (tokio current-thread runtime, tokio-postgres). Requests burn CPU on the loop, then await a
//! `pg_sleep` query on a pool of K connections. This is the shape of Node, Netty or Go services,
//! where no thread ever blocks on one socket.

use std::rc::Rc;
use std::sync::Mutex;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::{burn_cpu_ms, Args, Truth};

struct Service {
    cpu_ms: f64,
    db_ms: f64,
    pool: tokio::sync::Semaphore,
    clients: Mutex<Vec<tokio_postgres::Client>>,
    truth: Mutex<Truth>,
    started: Instant,
    /// No `--db`: answer right after the CPU burst.
    no_db: bool,
}

impl Service {
    async fn handle(&self) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut t = Truth {
            requests: 1.0,
            ..Truth::default()
        };
        if self.cpu_ms > 0.0 {
            let c = super::thread_cpu_s();
            burn_cpu_ms(self.cpu_ms);
            t.cpu_s = super::thread_cpu_s() - c;
        }
        if self.no_db {
            t.latency_s = t0.elapsed().as_secs_f64();
            if let Ok(mut sum) = self.truth.lock() {
                sum.requests += 1.0;
                sum.latency_s += t.latency_s;
                sum.cpu_s += t.cpu_s;
            }
            return Ok(());
        }
        let w = Instant::now();
        let permit = self.pool.acquire().await?;
        let client = self
            .clients
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .pop();
        t.pool_wait_s = w.elapsed().as_secs_f64();
        let result = match client {
            Some(client) => {
                let q = Instant::now();
                let r = client
                    .simple_query(&format!("SELECT pg_sleep({})", self.db_ms / 1000.0))
                    .await;
                t.downstream_s = q.elapsed().as_secs_f64();
                if let Ok(mut v) = self.clients.lock() {
                    v.push(client);
                }
                r.map(|_| ()).map_err(anyhow::Error::from)
            }
            None => Err(anyhow::anyhow!("pool empty")),
        };
        drop(permit);
        t.latency_s = t0.elapsed().as_secs_f64();
        if let Ok(mut sum) = self.truth.lock() {
            sum.requests += 1.0;
            sum.latency_s += t.latency_s;
            sum.cpu_s += t.cpu_s;
            sum.downstream_s += t.downstream_s;
            sum.pool_wait_s += t.pool_wait_s;
        }
        result
    }
}

async fn connection(svc: Rc<Service>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut h = String::new();
        loop {
            h.clear();
            match r.read_line(&mut h).await {
                Ok(0) | Err(_) => return,
                Ok(_) if h == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let body = if path == "/truth" {
            let mut t = svc.truth.lock().map(|t| *t).unwrap_or_default();
            t.wall_s = svc.started.elapsed().as_secs_f64();
            serde_json::to_vec(&t).unwrap_or_default()
        } else {
            match svc.handle().await {
                Ok(()) => b"{\"ok\":true}".to_vec(),
                Err(e) => format!("{{\"error\":{:?}}}", e.to_string()).into_bytes(),
            }
        };
        let mut msg = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        msg.extend_from_slice(&body);
        if w.write_all(&msg).await.is_err() {
            return;
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let db = args.get("db");
        let k = args.num("pool", 8.0) as usize;
        let mut clients = Vec::new();
        for _ in 0..if db.is_some() { k } else { 0 } {
            let (host, port) = db
                .and_then(|d| d.rsplit_once(':'))
                .ok_or_else(|| anyhow::anyhow!("--db ADDR:PORT"))?;
            let (client, conn) = tokio_postgres::connect(
                &format!("host={host} port={port} user=postgres dbname=postgres"),
                tokio_postgres::NoTls,
            )
            .await?;
            tokio::task::spawn_local(conn);
            clients.push(client);
        }
        let svc = Rc::new(Service {
            cpu_ms: args.num("cpu-ms", 0.0),
            db_ms: args.num("db-ms", 10.0),
            pool: tokio::sync::Semaphore::new(k),
            clients: Mutex::new(clients),
            truth: Mutex::new(Truth::default()),
            started: Instant::now(),
            no_db: db.is_none(),
        });
        let listener = tokio::net::TcpSocket::new_v4()?;
        listener.set_reuseaddr(true)?;
        listener.bind(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            args.num("port", 0.0) as u16,
        )))?;
        let listener: TcpListener = listener.listen(4096)?;
        println!("listening {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::task::spawn_local(connection(svc.clone(), stream));
        }
    })
}
