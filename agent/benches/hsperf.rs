//! Cost of reading a live JVM's hsperfdata: `cargo bench -p scalewise-agent --bench hsperf`.
//! Starts a JVM (java on PATH), locates its file through /proc, then times N reads
//! (pread of the whole file + parse + GC reading) and N parses of the captured bytes.

use std::path::Path;
use std::time::{Duration, Instant};

use scalewise_agent::gc::hsperf::{parse_hsperfdata, HsperfSource};
use scalewise_agent::gc::GcSource;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sw-bench-jvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("Idle.java"),
        "public class Idle { public static void main(String[] a) throws Exception { Thread.sleep(60000); } }",
    )
    .expect("write");
    let ok = std::process::Command::new("javac")
        .arg("-d")
        .arg(&dir)
        .arg(dir.join("Idle.java"))
        .status()
        .expect("javac")
        .success();
    assert!(ok, "javac failed");
    let mut jvm = std::process::Command::new("java")
        .arg("-cp")
        .arg(&dir)
        .arg("Idle")
        .spawn()
        .expect("java");
    std::thread::sleep(Duration::from_millis(1500));
    let mut src = match HsperfSource::locate(Path::new("/proc"), jvm.id()) {
        Ok(Some(s)) => s,
        other => panic!("no hsperfdata: {other:?}"),
    };
    let bytes = std::fs::read(src.path()).expect("read file");
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        let r = src.read().expect("reading");
        std::hint::black_box(r);
    }
    let read = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        let d = parse_hsperfdata(&bytes).expect("parse");
        std::hint::black_box(d.gc_reading().ok());
    }
    let parse = t.elapsed() / n;
    let entries = parse_hsperfdata(&bytes)
        .map(|d| d.entries.len())
        .unwrap_or(0);
    let _ = jvm.kill();
    let _ = jvm.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "hsperfdata: file {} bytes, {entries} entries: read+parse {:.1} us, parse alone {:.1} us (mean of {n})",
        bytes.len(),
        read.as_secs_f64() * 1e6,
        parse.as_secs_f64() * 1e6
    );
}
