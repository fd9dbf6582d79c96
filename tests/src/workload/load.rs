//! A closed-loop load generator: C keep-alive connections, each sending a request, reading the
//! response, thinking for an exponentially distributed time (mean `--think-ms`), and again.
//! It runs as its own process so that its sockets and threads are not the service's.
//! `--reconnect 1` opens a new connection for every request.

use std::io::BufReader;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::http::get;
use super::Args;

pub fn run(args: &Args) -> anyhow::Result<()> {
    let target = args.get("target").unwrap_or("127.0.0.1:8080").to_string();
    let concurrency = args.num("concurrency", 4.0) as usize;
    let duration = Duration::from_secs_f64(args.num("duration-s", 10.0));
    let think_ms = args.num("think-ms", 0.0);
    // One connection per request, as HTTP/1.0 clients and many scripts do.
    let reconnect = args.num("reconnect", 0.0) > 0.0;
    let path = args.get("path").unwrap_or("/work").to_string();
    let end = Instant::now() + duration;
    let handles: Vec<_> = (0..concurrency)
        .map(|i| {
            let (target, path) = (target.clone(), path.clone());
            std::thread::spawn(move || {
                let mut rng: u64 =
                    0x2545f4914f6cdd1d ^ ((i as u64 + 1).wrapping_mul(0x9e3779b97f4a7c15));
                let mut lat = Vec::new();
                let mut errors = 0u32;
                let mut conn: Option<BufReader<TcpStream>> = None;
                while Instant::now() < end && errors < 100 {
                    if conn.is_none() {
                        match TcpStream::connect(&target) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                conn = Some(BufReader::new(s));
                            }
                            Err(_) => {
                                errors += 1;
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let t = Instant::now();
                    match get(c, &path) {
                        Ok(_) => lat.push(t.elapsed().as_secs_f64()),
                        Err(_) => {
                            errors += 1;
                            conn = None;
                        }
                    }
                    if reconnect {
                        conn = None;
                    }
                    if think_ms > 0.0 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let u = ((rng >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                        std::thread::sleep(Duration::from_secs_f64(-u.ln() * think_ms / 1000.0));
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        if let Ok((l, e)) = h.join() {
            all.extend(l);
            errors += e;
        }
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let mean = if all.is_empty() {
        0.0
    } else {
        all.iter().sum::<f64>() / all.len() as f64
    };
    let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({"requests": all.len(), "errors": errors,
            "mean_latency_ms": mean * 1000.0, "p99_latency_ms": p99 * 1000.0})
    );
    Ok(())
}

/// `get --target ADDR --path P`: prints one response body (reads the truth from inside a network
/// namespace the test process is not in).
pub fn get_once(args: &Args) -> anyhow::Result<()> {
    let target = args.get("target").unwrap_or("127.0.0.1:8080");
    let mut c = BufReader::new(TcpStream::connect(target)?);
    let body = get(&mut c, args.get("path").unwrap_or("/truth"))?;
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
