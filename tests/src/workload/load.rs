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
    let t0 = Instant::now();
    let end = t0 + duration;
    // The client's view over a window, to compare with the agent's: requests completed in it,
    // their mean latency, and the exact mean number in flight (overlap of every request with it).
    let from = args.num("measure-after-s", 0.0);
    let to = from + args.num("measure-for-s", duration.as_secs_f64());
    let handles: Vec<_> = (0..concurrency)
        .map(|i| {
            let (target, path) = (target.clone(), path.clone());
            std::thread::spawn(move || {
                let mut rng: u64 =
                    0x2545f4914f6cdd1d ^ ((i as u64 + 1).wrapping_mul(0x9e3779b97f4a7c15));
                let mut lat: Vec<(f64, f64)> = Vec::new();
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
                        Ok(_) => lat.push((
                            t.duration_since(t0).as_secs_f64(),
                            t.elapsed().as_secs_f64(),
                        )),
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
    let mut all: Vec<(f64, f64)> = Vec::new();
    let mut errors = 0;
    for h in handles {
        if let Ok((l, e)) = h.join() {
            all.extend(l);
            errors += e;
        }
    }
    let mut lat: Vec<f64> = all.iter().map(|&(_, l)| l).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().sum::<f64>() / lat.len() as f64
    };
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(0.0);
    let span = (to - from).max(1e-9);
    let overlap: f64 = all
        .iter()
        .map(|&(s, l)| ((s + l).min(to) - s.max(from)).max(0.0))
        .sum();
    let done: Vec<f64> = all
        .iter()
        .filter(|&&(s, l)| s + l >= from && s + l < to)
        .map(|&(_, l)| l)
        .collect();
    let window_mean = if done.is_empty() {
        0.0
    } else {
        done.iter().sum::<f64>() / done.len() as f64
    };
    println!(
        "{}",
        serde_json::json!({"requests": lat.len(), "errors": errors,
            "mean_latency_ms": mean * 1000.0, "p99_latency_ms": p99 * 1000.0,
            "window": {"from_s": from, "to_s": to, "requests": done.len(),
                "rate_per_s": done.len() as f64 / span,
                "mean_latency_ms": window_mean * 1000.0, "mean_in_flight": overlap / span}})
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
