//! Which runtime a service runs on and how much memory it holds: what the rewrite report needs to
//! know about the current implementation. Read once per diagnosis, cheaply: the executable's name,
//! the libraries mapped (`/proc/PID/maps`), a JVM's hsperfdata, a Go binary's `.go.buildinfo`
//! section, and `statm`.
//!
//! The classifiers are pure functions over bytes ([`classify`], [`go_build_version`],
//! [`elf_section`], [`parse_statm_resident`]); [`detect`] and [`resident_bytes`] do the reading.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use scalewise_core::engine::Runtime;

/// Reads at most this much of `/proc/PID/maps` (a JVM maps thousands of regions).
const MAPS_LIMIT: u64 = 4 << 20;
/// A `.go.buildinfo` section is a header and two strings; anything bigger is not one.
const BUILDINFO_LIMIT: u64 = 1 << 20;

fn rt(name: &str, version: Option<String>, evidence: &str) -> Runtime {
    Runtime {
        name: name.to_string(),
        version,
        evidence: evidence.to_string(),
    }
}

/// The first version-looking run (`17`, `3.11`, `8.0.1`) after `prefix` in `s`.
fn version_after(s: &str, prefix: &str) -> Option<String> {
    let at = s.find(prefix)? + prefix.len();
    let v: String = s[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v = v.trim_end_matches('.').to_string();
    (!v.is_empty() && v.starts_with(|c: char| c.is_ascii_digit())).then_some(v)
}

/// Classifies by the executable's file name and the mapped libraries. `None`: nothing known
/// (maybe Go, whose binaries are static: see [`go_build_version`]).
pub fn classify(exe_name: &str, maps: &str) -> Option<Runtime> {
    let lib = |name: &str| {
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with(name)))
    };
    if exe_name == "java" || lib("libjvm.so").is_some() {
        let version = lib("libjvm.so")
            .and_then(|p| version_after(p, "java-").or_else(|| version_after(p, "jdk-")));
        return Some(rt("java", version, "libjvm.so mapped"));
    }
    if exe_name == "dotnet" || lib("libcoreclr.so").is_some() {
        let version = lib("libcoreclr.so").and_then(|p| version_after(p, "Microsoft.NETCore.App/"));
        return Some(rt("csharp", version, "the .NET runtime (libcoreclr.so)"));
    }
    if exe_name == "node" || exe_name == "nodejs" || lib("libnode.so").is_some() {
        return Some(rt("node", None, "executable node"));
    }
    if exe_name.starts_with("python") || lib("libpython").is_some() {
        let version = version_after(exe_name, "python")
            .or_else(|| lib("libpython").and_then(|p| version_after(p, "libpython")));
        return Some(rt("python", version, "executable python"));
    }
    None
}

/// The Go version in a `.go.buildinfo` section (`go1.22.1`). Since Go 1.18 the strings follow
/// a 32-byte header as varint-length-prefixed bytes (flag bit 1); older binaries point to them
/// instead, and give `Some("")`: Go, version unknown. `None`: not a Go build info.
pub fn go_build_version(section: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    let at = section.windows(MAGIC.len()).position(|w| w == MAGIC)?;
    let s = &section[at..];
    if s.len() < 32 {
        return Some(String::new());
    }
    let flags = s[15];
    if flags & 2 == 0 {
        return Some(String::new());
    }
    let mut len: u64 = 0;
    let mut shift = 0;
    let mut i = 32;
    loop {
        let b = *s.get(i)?;
        i += 1;
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Some(String::new());
        }
    }
    let end = i.checked_add(usize::try_from(len).ok()?)?;
    let v = s.get(i..end)?;
    let v = String::from_utf8_lossy(v).into_owned();
    Some(if v.starts_with("go") && v.len() < 64 {
        v
    } else {
        String::new()
    })
}

/// The bytes of the named section of a 64-bit little-endian ELF file, if it has one (at most
/// `limit` bytes). Not an ELF, another class, or no such section: `Ok(None)`.
pub fn elf_section<R: Read + Seek>(
    r: &mut R,
    name: &str,
    limit: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut h = [0u8; 64];
    if r.read_exact(&mut h).is_err() || &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Ok(None);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    let shoff = u64_at(&h, 0x28);
    let shentsize = u16_at(&h, 0x3a) as u64;
    let shnum = u16_at(&h, 0x3c) as u64;
    let shstrndx = u16_at(&h, 0x3e) as u64;
    if shoff == 0 || shentsize < 64 || shnum == 0 || shnum > 4096 || shstrndx >= shnum {
        return Ok(None);
    }
    let mut table = vec![0u8; (shentsize * shnum) as usize];
    r.seek(SeekFrom::Start(shoff))?;
    if r.read_exact(&mut table).is_err() {
        return Ok(None);
    }
    let entry = |i: u64| &table[(i * shentsize) as usize..((i + 1) * shentsize) as usize];
    let read_at = |r: &mut R, off: u64, size: u64| -> std::io::Result<Option<Vec<u8>>> {
        if size > limit {
            return Ok(None);
        }
        let mut buf = vec![0u8; size as usize];
        r.seek(SeekFrom::Start(off))?;
        Ok(r.read_exact(&mut buf).ok().map(|_| buf))
    };
    let strtab = entry(shstrndx);
    let Some(names) = read_at(r, u64_at(strtab, 0x18), u64_at(strtab, 0x20))? else {
        return Ok(None);
    };
    for i in 0..shnum {
        let e = entry(i);
        let off = u32_at(e, 0) as usize;
        let Some(tail) = names.get(off..) else {
            continue;
        };
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if &tail[..end] == name.as_bytes() {
            return read_at(r, u64_at(e, 0x18), u64_at(e, 0x20));
        }
    }
    Ok(None)
}

/// Resident pages from `statm` (its second field).
pub fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// The JVM's version from its hsperfdata (`java.property.java.version`), when the file is there.
fn jvm_version(proc_root: &Path, pid: u32) -> Option<String> {
    let src = crate::gc::hsperf::HsperfSource::locate(proc_root, pid).ok()??;
    let mut buf = Vec::new();
    std::fs::File::open(src.path())
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut buf)
        .ok()?;
    let data = crate::gc::hsperf::parse_hsperfdata(&buf).ok()?;
    data.text("java.property.java.version").map(str::to_string)
}

/// Detects the runtime of the first pid that says something; a Go binary is recognised by its
/// build info, anything else unrecognised is `native`.
pub fn detect(proc_root: &Path, pids: &[u32]) -> Option<Runtime> {
    let mut native = None;
    for &pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Ok(exe) = std::fs::read_link(dir.join("exe")) else {
            continue;
        };
        let exe_name = exe
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
            .unwrap_or_default();
        let mut maps = Vec::new();
        if let Ok(f) = std::fs::File::open(dir.join("maps")) {
            let _ = f.take(MAPS_LIMIT).read_to_end(&mut maps);
        }
        let maps = String::from_utf8_lossy(&maps);
        if let Some(mut r) = classify(&exe_name, &maps) {
            if r.name == "java" {
                if let Some(v) = jvm_version(proc_root, pid) {
                    r.version = Some(v);
                    r.evidence = "hsperfdata".to_string();
                }
            }
            return Some(r);
        }
        // /proc/PID/exe opens the running binary even if its path was replaced or deleted.
        if let Ok(mut f) = std::fs::File::open(dir.join("exe")) {
            if let Ok(Some(section)) = elf_section(&mut f, ".go.buildinfo", BUILDINFO_LIMIT) {
                if let Some(v) = go_build_version(&section) {
                    return Some(rt(
                        "go",
                        (!v.is_empty()).then_some(v),
                        "ELF .go.buildinfo section",
                    ));
                }
            }
        }
        native.get_or_insert_with(|| rt("native", None, "no runtime recognised"));
    }
    native
}

/// Resident memory of the processes, summed; `None` when none could be read.
pub fn resident_bytes(proc_root: &Path, pids: &[u32]) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096);
    let pages: Vec<u64> = pids
        .iter()
        .filter_map(|pid| {
            let s = std::fs::read_to_string(proc_root.join(pid.to_string()).join("statm")).ok()?;
            parse_statm_resident(&s)
        })
        .collect();
    (!pages.is_empty()).then(|| pages.iter().sum::<u64>() * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JVM_MAPS: &str = "7f00-7f10 r-xp 00000000 08:01 1234 /usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so\n\
7f10-7f20 r--p 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6\n";

    #[test]
    fn classifies_by_executable_and_libraries() {
        let j = classify("java", JVM_MAPS).expect("jvm");
        assert_eq!(
            (j.name.as_str(), j.version.as_deref()),
            ("java", Some("17"))
        );
        // A launcher under another name is still a JVM.
        assert_eq!(
            classify("kafka-server", JVM_MAPS).map(|r| r.name),
            Some("java".into())
        );
        let dn = classify(
            "MyApi",
            "1-2 r-xp 0 0:0 1 /usr/share/dotnet/shared/Microsoft.NETCore.App/8.0.1/libcoreclr.so\n",
        )
        .expect(".net");
        assert_eq!(
            (dn.name.as_str(), dn.version.as_deref()),
            ("csharp", Some("8.0.1"))
        );
        assert_eq!(classify("node", "").map(|r| r.name), Some("node".into()));
        let py = classify("python3.11", "").expect("python");
        assert_eq!(py.version.as_deref(), Some("3.11"));
        let emb = classify("uwsgi", "1-2 r-xp 0 0:0 1 /usr/lib/libpython3.12.so.1.0\n")
            .expect("embedded python");
        assert_eq!(
            (emb.name.as_str(), emb.version.as_deref()),
            ("python", Some("3.12"))
        );
        assert_eq!(
            classify("postgres", "1-2 r-xp 0 0:0 1 /usr/lib/libc.so.6\n"),
            None
        );
        // Hostile: a library path that merely contains the name in a directory.
        assert_eq!(
            classify("x", "1-2 r-xp 0 0:0 1 /opt/libjvm.so.d/other.so\n"),
            None
        );
        assert_eq!(classify("", ""), None);
    }

    fn buildinfo(version: &str) -> Vec<u8> {
        let mut s = b"\xff Go buildinf:".to_vec();
        s.push(8); // pointer size
        s.push(2); // inline strings
        s.resize(32, 0);
        s.push(version.len() as u8);
        s.extend_from_slice(version.as_bytes());
        s.push(0);
        s
    }

    #[test]
    fn reads_the_go_version_from_build_info() {
        assert_eq!(
            go_build_version(&buildinfo("go1.22.1")).as_deref(),
            Some("go1.22.1")
        );
        // Pre-1.18 layout: Go, version unknown.
        let mut old = buildinfo("go1.16");
        old[15] = 0;
        assert_eq!(go_build_version(&old).as_deref(), Some(""));
        // Every truncation is handled without a panic.
        let full = buildinfo("go1.22.1");
        for n in 0..full.len() {
            let _ = go_build_version(&full[..n]);
        }
        assert_eq!(go_build_version(b"not go"), None);
    }

    /// A minimal ELF64 with a `.go.buildinfo` section and a section name table.
    fn elf(section: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.go.buildinfo\0".to_vec();
        let data_off = 64u64;
        let names_off = data_off + section.len() as u64;
        let shoff = names_off + names.len() as u64;
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(section);
        f.extend_from_slice(&names);
        let sh = |name: u32, off: u64, size: u64| {
            let mut e = vec![0u8; 64];
            e[0..4].copy_from_slice(&name.to_le_bytes());
            e[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            e[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            e
        };
        f.extend(sh(0, 0, 0));
        f.extend(sh(1, names_off, names.len() as u64));
        f.extend(sh(11, data_off, section.len() as u64));
        f
    }

    #[test]
    fn finds_an_elf_section_by_name() {
        let info = buildinfo("go1.21.6");
        let file = elf(&info);
        let got = elf_section(&mut std::io::Cursor::new(&file), ".go.buildinfo", 1 << 20)
            .expect("io")
            .expect("section");
        assert_eq!(go_build_version(&got).as_deref(), Some("go1.21.6"));
        assert_eq!(
            elf_section(&mut std::io::Cursor::new(&file), ".text", 1 << 20).expect("io"),
            None
        );
        // Too big for the limit, not an ELF, truncated: no section, no panic.
        assert_eq!(
            elf_section(&mut std::io::Cursor::new(&file), ".go.buildinfo", 4).expect("io"),
            None
        );
        assert_eq!(
            elf_section(&mut std::io::Cursor::new(b"#!/bin/sh\n".to_vec()), ".x", 10).expect("io"),
            None
        );
        for n in 0..file.len() {
            let _ = elf_section(
                &mut std::io::Cursor::new(&file[..n]),
                ".go.buildinfo",
                1 << 20,
            );
        }
    }

    #[test]
    fn this_test_binary_is_native_and_has_memory() {
        let me = std::process::id();
        let root = Path::new("/proc");
        let r = detect(root, &[me]).expect("runtime");
        assert_eq!(r.name, "native");
        let bytes = resident_bytes(root, &[me]).expect("statm");
        assert!(bytes > 1 << 20, "{bytes}");
        assert_eq!(resident_bytes(root, &[4_194_305]), None);
        assert_eq!(parse_statm_resident("1000 250 30 1 0 100 0\n"), Some(250));
        assert_eq!(parse_statm_resident(""), None);
    }
}
