//! The README's first command, as a newcomer runs it: `scalewise-agent demo` (each sample service
//! diagnosed once, next to its truth) and `scalewise-agent demo --system` (collector, one `run`
//! agent per service, verdicts from the collector as they settle, everything stopped on Ctrl-C).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use scalewise_e2e::harness::{agent_bin, exclusive, stop};

const CASES: [(&str, &str); 3] = [
    ("cpu-bound", "scale_up"),
    ("slow-downstream", "dependency"),
    ("lock-contended", "scale_out"),
];

#[test]
fn demo_prints_each_verdict_next_to_its_truth() {
    let _x = exclusive();
    let out = Command::new(agent_bin())
        .args(["demo", "--duration", "5"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, verdict) in CASES {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], verdict, "{row}");
        assert_eq!(cols[2], verdict, "{row}");
    }
}

/// Every live process whose environment carries `SCALEWISE_DEMO=<pid>`.
fn started_by(demo_pid: u32) -> Vec<u32> {
    let tag = format!("SCALEWISE_DEMO={demo_pid}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == tag.as_bytes()))
        })
        .collect()
}

fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn system_demo_streams_settled_verdicts_and_stops_everything_on_ctrl_c() {
    let _x = exclusive();
    let mut demo = Command::new(agent_bin())
        .args(["demo", "--system"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start demo --system");
    let pid = demo.id();
    let (tx, rx) = mpsc::channel();
    let stdout = demo.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The page's address first, then a line per verdict change, until each service has shown
    // the verdict it should have (a starved host may make one hesitate on the way).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let mut addr = None;
    let mut got: HashMap<&str, bool> = HashMap::new();
    while got.len() < CASES.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => {
                stop(&mut demo);
                panic!("no settled verdicts within 120 s:\n{}", seen.join("\n"));
            }
        };
        if addr.is_none() {
            addr = line
                .split("http://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .map(str::to_string);
        }
        for (name, verdict) in CASES {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(1) == Some(&name) && cols.get(2) == Some(&verdict) {
                got.insert(name, true);
            }
        }
        seen.push(line);
    }
    let addr = addr.unwrap_or_else(|| panic!("no web page address:\n{}", seen.join("\n")));
    let page = get(&addr, "/").unwrap_or_default();
    for (name, _) in CASES {
        assert!(page.contains(name), "{name} not on the page:\n{page}");
    }
    let children = started_by(pid);
    // A collector, a backend, three services, three load generators, three agents.
    assert!(children.len() >= 11, "{children:?}");

    // Ctrl-C: the demo stops what it started and exits cleanly.
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let stopped_by = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = demo.try_wait() {
            break s;
        }
        if Instant::now() > stopped_by {
            stop(&mut demo);
            panic!("demo still running 30 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}\n{}", seen.join("\n"));
    assert_eq!(started_by(pid), Vec::<u32>::new(), "left running");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "collector still up"
    );
    assert!(
        !std::env::temp_dir()
            .join(format!("scalewise-demo-{pid}"))
            .exists(),
        "data directory left behind"
    );
}
