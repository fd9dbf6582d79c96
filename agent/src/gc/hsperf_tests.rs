use super::*;
use proptest::prelude::*;

/// Builds an hsperfdata buffer the way HotSpot lays it out.
fn build(big: bool, entries: &[(&str, PerfValue)]) -> Vec<u8> {
    let i32b = |v: i32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut body = Vec::new();
    for (name, value) in entries {
        let mut e = vec![0u8; ENTRY_HEADER];
        let name_off = ENTRY_HEADER;
        e.extend_from_slice(name.as_bytes());
        e.push(0);
        while e.len() % 8 != 0 {
            e.push(0);
        }
        let data_off = e.len();
        let (ty, vlen) = match value {
            PerfValue::Long(v) => {
                e.extend_from_slice(&if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                });
                (b'J', 0)
            }
            PerfValue::Text(s) => {
                e.extend_from_slice(s.as_bytes());
                e.push(0);
                (b'B', s.len() as i32 + 1)
            }
        };
        while e.len() % 8 != 0 {
            e.push(0);
        }
        let len = e.len() as i32;
        e[0..4].copy_from_slice(&i32b(len));
        e[4..8].copy_from_slice(&i32b(name_off as i32));
        e[8..12].copy_from_slice(&i32b(vlen));
        e[12] = ty;
        e[16..20].copy_from_slice(&i32b(data_off as i32));
        body.extend(e);
    }
    let mut buf = vec![0u8; PROLOGUE];
    buf[..4].copy_from_slice(&MAGIC);
    buf[4] = if big { 0 } else { 1 };
    buf[5] = 2;
    buf[7] = 1;
    let used = (PROLOGUE + body.len()) as i32;
    buf[8..12].copy_from_slice(&i32b(used));
    buf[24..28].copy_from_slice(&i32b(PROLOGUE as i32));
    buf[28..32].copy_from_slice(&i32b(entries.len() as i32));
    buf.extend(body);
    buf
}

fn jvm_entries() -> Vec<(&'static str, PerfValue)> {
    vec![
        ("sun.os.hrt.frequency", PerfValue::Long(1_000_000_000)),
        ("sun.gc.collector.0.name", PerfValue::Text("Copy".into())),
        ("sun.gc.collector.0.invocations", PerfValue::Long(40)),
        ("sun.gc.collector.0.time", PerfValue::Long(2_000_000_000)),
        ("sun.gc.collector.1.name", PerfValue::Text("MSC".into())),
        ("sun.gc.collector.1.invocations", PerfValue::Long(2)),
        ("sun.gc.collector.1.time", PerfValue::Long(500_000_000)),
        ("sun.gc.collector.2.name", PerfValue::Text("G1 Conc".into())),
        ("sun.gc.collector.2.invocations", PerfValue::Long(3)),
        ("sun.gc.collector.2.time", PerfValue::Long(9_000_000_000)),
    ]
}

#[test]
fn both_byte_orders() {
    for big in [true, false] {
        let buf = build(big, &jvm_entries());
        let d = parse_hsperfdata(&buf).expect("valid");
        assert_eq!(d.text("sun.gc.collector.0.name"), Some("Copy"));
        let r = d.gc_reading().expect("reading");
        // No safepoint counter: the stop-the-world collectors, without the concurrent one.
        assert!((r.pause_s - 2.5).abs() < 1e-9, "{r:?}");
        assert_eq!(r.collections, 42);
        assert_eq!(r.collectors.len(), 3);
    }
}

#[test]
fn safepoint_time_is_preferred() {
    let mut e = jvm_entries();
    e.push(("sun.rt.safepointTime", PerfValue::Long(3_000_000_000)));
    let r = parse_hsperfdata(&build(false, &e))
        .expect("valid")
        .gc_reading()
        .expect("reading");
    assert!((r.pause_s - 3.0).abs() < 1e-9);
}

#[test]
fn hostile_buffers_are_errors_not_panics() {
    let good = build(false, &jvm_entries());
    for cut in 0..good.len() {
        let _ = parse_hsperfdata(&good[..cut]).and_then(|d| d.gc_reading());
    }
    let mut wrong_magic = good.clone();
    wrong_magic[0] = 0;
    assert!(parse_hsperfdata(&wrong_magic).is_err());
    let mut order = good.clone();
    order[4] = 7;
    assert!(parse_hsperfdata(&order).is_err());
    // An entry length of zero would loop forever if trusted.
    let mut zero = good.clone();
    zero[PROLOGUE..PROLOGUE + 4].copy_from_slice(&0i32.to_le_bytes());
    assert!(parse_hsperfdata(&zero).is_err());
    // Offsets past the end.
    let mut past = good.clone();
    past[PROLOGUE + 16..PROLOGUE + 20].copy_from_slice(&100_000i32.to_le_bytes());
    assert!(parse_hsperfdata(&past).is_err());
    // A huge entry count is bounded by the bytes.
    let mut many = good.clone();
    many[28..32].copy_from_slice(&i32::MAX.to_le_bytes());
    assert!(parse_hsperfdata(&many).is_ok());
    // A name without its NUL.
    let unterminated = build(false, &[("x", PerfValue::Long(1))]);
    let mut u = unterminated.clone();
    let end = u.len();
    for b in &mut u[PROLOGUE + ENTRY_HEADER..end] {
        *b = b'a';
    }
    assert!(parse_hsperfdata(&u).is_err());
    assert!(parse_hsperfdata(&[]).is_err());
    // No counters at all: not a GC reading.
    assert!(parse_hsperfdata(&build(true, &[]))
        .expect("valid")
        .gc_reading()
        .is_err());
}

#[test]
fn symlinks_and_foreign_owners_are_refused() {
    let root = std::env::temp_dir().join(format!("sw-hsperf-{}", std::process::id()));
    let dir = root.join("hsperfdata_me");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("123");
    std::fs::write(&file, build(false, &jvm_entries())).expect("write");
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert!(HsperfSource::open_checked(&file, me).is_ok());
    assert!(matches!(
        HsperfSource::open_checked(&file, me + 1),
        Err(GcError::Unsafe { .. })
    ));
    let link = dir.join("456");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    assert!(matches!(
        HsperfSource::open_checked(&link, me),
        Err(GcError::Unsafe { .. })
    ));
    let linked_dir = root.join("hsperfdata_link");
    std::os::unix::fs::symlink(&dir, &linked_dir).expect("symlink dir");
    assert!(matches!(
        HsperfSource::open_checked(&linked_dir.join("123"), me),
        Err(GcError::Unsafe { .. })
    ));
    assert!(matches!(
        HsperfSource::open_checked(&dir.join("999"), me),
        Err(GcError::NotFound(_))
    ));
    if me == 0 {
        let foreign = dir.join("789");
        std::fs::write(&foreign, b"x").expect("write");
        // SAFETY: chown of our own temp file.
        let c = std::ffi::CString::new(foreign.as_os_str().as_encoded_bytes()).expect("path");
        unsafe { libc::chown(c.as_ptr(), 65534, 65534) };
        assert!(matches!(
            HsperfSource::open_checked(&foreign, 0),
            Err(GcError::Unsafe { .. })
        ));
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A real JVM: start one that allocates, find its file through /proc, read real counters.
#[test]
fn reads_a_live_jvm() {
    let Ok(javac) = std::process::Command::new("javac").arg("-version").output() else {
        panic!("javac not found: run scripts/install-deps");
    };
    assert!(javac.status.success());
    let dir = std::env::temp_dir().join(format!("sw-jvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("Alloc.java"),
        "public class Alloc { public static void main(String[] a) throws Exception { long s = 0; while (true) { byte[] b = new byte[1 << 16]; s += b[(int) (s & 1023)]; if (s == 42) System.out.print(\"\"); } } }",
    )
    .expect("write");
    let ok = std::process::Command::new("javac")
        .arg("-d")
        .arg(&dir)
        .arg(dir.join("Alloc.java"))
        .status()
        .expect("javac")
        .success();
    assert!(ok);
    let mut child = std::process::Command::new("java")
        .args(["-Xmx32m", "-XX:+UseSerialGC", "-cp"])
        .arg(&dir)
        .arg("Alloc")
        .spawn()
        .expect("java");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let found = HsperfSource::locate(Path::new("/proc"), child.id());
    let mut off = std::process::Command::new("java")
        .args(["-XX:+PerfDisableSharedMem", "-Xmx32m", "-cp"])
        .arg(&dir)
        .arg("Alloc")
        .spawn()
        .expect("java");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let without = HsperfSource::locate(Path::new("/proc"), off.id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = off.kill();
    let _ = off.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let mut src = match found {
        Ok(Some(s)) => s,
        Ok(None) => panic!("a JVM was not recognised"),
        Err(LocateError::JvmWithoutFile) => panic!("no hsperfdata file found"),
        Err(LocateError::Gc(e)) => panic!("{e}"),
    };
    // The JVM is gone now, but its file was opened: read what it last published.
    let r = src.read().expect("reading");
    assert!(r.collections > 0, "{r:?}");
    assert!(r.pause_s > 0.0, "{r:?}");
    assert!(
        matches!(without, Err(LocateError::JvmWithoutFile)),
        "{without:?}"
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if bytes.len() >= 5 && bytes[0] & 1 == 0 {
            bytes[..4].copy_from_slice(&MAGIC);
            bytes[4] &= 1;
        }
        let _ = parse_hsperfdata(&bytes).map(|d| d.gc_reading());
    }
}
