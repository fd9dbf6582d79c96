//! JVM GC and safepoint time from the hsperfdata file, with no agent in the JVM.
//!
//! HotSpot publishes its performance counters in a memory-mapped file,
//! `/tmp/hsperfdata_<user>/<pid>` inside the JVM's mount namespace (reached as
//! `/proc/<pid>/root/tmp/...`, with the pid as the JVM sees it: the last `NSpid`), which `jstat`
//! reads. The file is written by the monitored process, so it is hostile input: like HotSpot
//! itself, the locator refuses symlinks and files not owned by the process's user, and the parser
//! bounds every offset and length and trusts no count.
//!
//! Pause time is `sun.rt.safepointTime`: the total time all Java threads were stopped at
//! safepoints. Every stop-the-world collection happens at a safepoint, and so do other VM
//! operations that stall requests the same way (deoptimisation, biased-lock revocation), so it is
//! the right number for "time every in-flight request stood still". When it is missing, the sum of
//! the stop-the-world collectors' time is used. Concurrent cycles (G1's `G1 Conc`, ZGC, Shenandoah)
//! are work on other threads, not pauses, and are left out.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{GcError, GcReading, GcSemantics, GcSource};
use crate::proc_files::parse_status;

const MAGIC: [u8; 4] = [0xCA, 0xFE, 0xC0, 0xC0];
const PROLOGUE: usize = 32;
const ENTRY_HEADER: usize = 20;
/// Real files are 32 KiB by default (-XX:PerfDataMemorySize); anything past this is refused.
const MAX_FILE: u64 = 16 << 20;

/// A counter's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PerfValue {
    Long(i64),
    Text(String),
}

/// The parsed counters of one hsperfdata file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerfData {
    pub entries: HashMap<String, PerfValue>,
}

impl PerfData {
    pub fn long(&self, name: &str) -> Option<i64> {
        match self.entries.get(name) {
            Some(PerfValue::Long(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.entries.get(name) {
            Some(PerfValue::Text(v)) => Some(v),
            _ => None,
        }
    }

    /// GC and safepoint time as a cumulative reading.
    pub fn gc_reading(&self) -> Result<GcReading, GcError> {
        let malformed = |why: &str| GcError::Malformed {
            what: "hsperfdata".into(),
            why: why.into(),
        };
        let freq = self
            .long("sun.os.hrt.frequency")
            .filter(|&f| f > 0)
            .ok_or_else(|| malformed("no sun.os.hrt.frequency"))? as f64;
        let mut collectors = Vec::new();
        let mut stw_s = 0.0;
        let mut collections = 0u64;
        for n in 0..16 {
            let key = |f: &str| format!("sun.gc.collector.{n}.{f}");
            let (Some(inv), Some(time)) = (self.long(&key("invocations")), self.long(&key("time")))
            else {
                continue;
            };
            let name = self.text(&key("name")).unwrap_or("?").to_string();
            let secs = time.max(0) as f64 / freq;
            let inv = inv.max(0) as u64;
            // G1's concurrent cycle is published as a collector too; it is not a pause.
            let concurrent =
                name.contains("Conc") || name.starts_with("Z") || name.contains("Shenandoah");
            if !concurrent {
                stw_s += secs;
                collections += inv;
            }
            collectors.push((name, inv, secs));
        }
        let pause_s = match self.long("sun.rt.safepointTime") {
            Some(t) if t >= 0 => t as f64 / freq,
            _ => stw_s,
        };
        if collectors.is_empty() && self.long("sun.rt.safepointTime").is_none() {
            return Err(malformed("no GC or safepoint counters"));
        }
        Ok(GcReading {
            source: "hsperfdata",
            semantics: GcSemantics::Pauses,
            pause_s,
            collections,
            collectors,
        })
    }
}

fn bad(why: String) -> GcError {
    GcError::Malformed {
        what: "hsperfdata".into(),
        why,
    }
}

fn i32_at(buf: &[u8], at: usize, big: bool) -> Result<i32, GcError> {
    let b: [u8; 4] = buf
        .get(
            at..at
                .checked_add(4)
                .ok_or_else(|| bad("offset overflow".into()))?,
        )
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad(format!("int at {at} past the end")))?;
    Ok(if big {
        i32::from_be_bytes(b)
    } else {
        i32::from_le_bytes(b)
    })
}

fn i64_at(buf: &[u8], at: usize, big: bool) -> Result<i64, GcError> {
    let b: [u8; 8] = buf
        .get(
            at..at
                .checked_add(8)
                .ok_or_else(|| bad("offset overflow".into()))?,
        )
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad(format!("long at {at} past the end")))?;
    Ok(if big {
        i64::from_be_bytes(b)
    } else {
        i64::from_le_bytes(b)
    })
}

/// Parses an hsperfdata buffer. Entries that do not fit are an error; unknown types are skipped.
pub fn parse_hsperfdata(buf: &[u8]) -> Result<PerfData, GcError> {
    if buf.len() < PROLOGUE {
        return Err(bad(format!(
            "{} bytes: shorter than the prologue",
            buf.len()
        )));
    }
    if buf[..4] != MAGIC {
        return Err(bad("wrong magic (not 0xCAFEC0C0)".into()));
    }
    let big = match buf[4] {
        0 => true,
        1 => false,
        other => return Err(bad(format!("byte order flag {other}"))),
    };
    let used = i32_at(buf, 8, big)?;
    let entry_offset = i32_at(buf, 24, big)?;
    let num_entries = i32_at(buf, 28, big)?;
    if used < 0 || entry_offset < PROLOGUE as i32 || num_entries < 0 {
        return Err(bad("negative or impossible header fields".into()));
    }
    // The JVM may be appending: only what `used` covers is published, and never past the buffer.
    let end = (used as usize).min(buf.len());
    let mut at = entry_offset as usize;
    let mut data = PerfData::default();
    // Each entry is at least a header long, so the count is bounded by the bytes, whatever it says.
    let max_entries = (num_entries as usize).min(end / ENTRY_HEADER + 1);
    for _ in 0..max_entries {
        if at + ENTRY_HEADER > end {
            break;
        }
        let entry_len = i32_at(buf, at, big)?;
        let name_off = i32_at(buf, at + 4, big)?;
        let vector_len = i32_at(buf, at + 8, big)?;
        let data_type = buf[at + 12];
        let data_off = i32_at(buf, at + 16, big)?;
        if entry_len < ENTRY_HEADER as i32 || name_off < 0 || data_off < 0 || vector_len < 0 {
            return Err(bad(format!("entry at {at}: impossible lengths")));
        }
        let entry_end = at
            .checked_add(entry_len as usize)
            .filter(|&e| e <= end)
            .ok_or_else(|| bad(format!("entry at {at} runs past the end")))?;
        let entry = &buf[at..entry_end];
        let name_start = name_off as usize;
        let name_bytes = entry
            .get(name_start..)
            .ok_or_else(|| bad(format!("entry at {at}: name past the entry")))?;
        let nul = name_bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad(format!("entry at {at}: name not terminated")))?;
        let name = String::from_utf8_lossy(&name_bytes[..nul]).into_owned();
        let d = data_off as usize;
        let value = match (data_type, vector_len) {
            (b'J', 0) => Some(PerfValue::Long(i64_at(entry, d, big)?)),
            (b'B', n) if n > 0 => {
                let bytes = entry
                    .get(d..d.saturating_add(n as usize))
                    .ok_or_else(|| bad(format!("entry {name}: string past the entry")))?;
                let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                Some(PerfValue::Text(
                    String::from_utf8_lossy(&bytes[..len]).into_owned(),
                ))
            }
            _ => None,
        };
        if let Some(v) = value {
            data.entries.insert(name, v);
        }
        at = entry_end;
    }
    Ok(data)
}

#[derive(Debug)]
pub enum LocateError {
    /// The process is a JVM but publishes no file (-XX:+PerfDisableSharedMem, or -XX:-UsePerfData).
    JvmWithoutFile,
    Gc(GcError),
}

#[derive(Debug)]
/// Reads one JVM's hsperfdata file through a descriptor kept open (the JVM maps it; re-reading
/// at offset 0 sees its live values).
pub struct HsperfSource {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
}

fn is_jvm(proc_root: &Path, pid: u32) -> bool {
    let dir = proc_root.join(pid.to_string());
    if std::fs::read_link(dir.join("exe"))
        .map(|p| p.file_name().is_some_and(|n| n == "java"))
        .unwrap_or(false)
    {
        return true;
    }
    // Launchers embed the JVM under other names: look for libjvm in the first 4 MiB of maps.
    use std::io::Read;
    let mut maps = Vec::new();
    if let Ok(f) = File::open(dir.join("maps")) {
        let _ = f.take(4 << 20).read_to_end(&mut maps);
    }
    maps.windows(9).any(|w| w == b"libjvm.so")
}

impl HsperfSource {
    /// Finds and opens the file of `pid`. `Ok(None)`: not a JVM.
    pub fn locate(proc_root: &Path, pid: u32) -> Result<Option<HsperfSource>, LocateError> {
        // Only a JVM has an hsperfdata file worth reading: another process's /tmp may hold other
        // users' files, which would only produce notes about runtimes the service does not have.
        if !is_jvm(proc_root, pid) {
            return Ok(None);
        }
        let dir = proc_root.join(pid.to_string());
        let status = std::fs::read(dir.join("status"))
            .map_err(|e| LocateError::Gc(GcError::NotFound(format!("pid {pid}: {e}"))))?;
        let status = parse_status(&status).map_err(|e| {
            LocateError::Gc(GcError::Malformed {
                what: format!("/proc/{pid}/status"),
                why: e.to_string(),
            })
        })?;
        let uid = status.uids[1];
        let nspid = status.nspids.last().copied().unwrap_or(pid);
        let tmp = dir.join("root/tmp");
        let mut candidates: Vec<PathBuf> = std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("hsperfdata_"))
                    .map(|e| e.path().join(nspid.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        candidates.sort();
        for path in candidates {
            match Self::open_checked(&path, uid) {
                Ok(file) => {
                    return Ok(Some(HsperfSource {
                        path,
                        file,
                        buf: Vec::new(),
                    }))
                }
                Err(GcError::NotFound(_)) => continue,
                Err(e) => return Err(LocateError::Gc(e)),
            }
        }
        Err(LocateError::JvmWithoutFile)
    }

    /// Opens the file only if neither it nor its directory is a symlink, both belong to the
    /// process's user, and it is a regular file of sane size.
    pub fn open_checked(path: &Path, uid: u32) -> Result<File, GcError> {
        let p = path.display().to_string();
        let dir = path.parent().ok_or_else(|| GcError::NotFound(p.clone()))?;
        let dmeta = match std::fs::symlink_metadata(dir) {
            Ok(m) => m,
            Err(_) => return Err(GcError::NotFound(p)),
        };
        if dmeta.file_type().is_symlink() || !dmeta.is_dir() {
            return Err(GcError::Unsafe {
                path: dir.display().to_string(),
                why: "directory is a symlink or not a directory",
            });
        }
        if dmeta.uid() != uid {
            return Err(GcError::Unsafe {
                path: dir.display().to_string(),
                why: "directory not owned by the process's user",
            });
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(GcError::NotFound(p)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(GcError::PermissionDenied(p))
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(GcError::Unsafe {
                    path: p,
                    why: "file is a symlink",
                })
            }
            Err(_) => return Err(GcError::NotFound(p)),
        };
        let meta = file.metadata().map_err(|_| GcError::NotFound(p.clone()))?;
        if !meta.is_file() {
            return Err(GcError::Unsafe {
                path: p,
                why: "not a regular file",
            });
        }
        if meta.uid() != uid {
            return Err(GcError::Unsafe {
                path: p,
                why: "file not owned by the process's user",
            });
        }
        if meta.len() > MAX_FILE {
            return Err(GcError::Unsafe {
                path: p,
                why: "file larger than 16 MiB",
            });
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl GcSource for HsperfSource {
    fn read(&mut self) -> Result<GcReading, GcError> {
        let len = self
            .file
            .metadata()
            .map(|m| m.len().min(MAX_FILE) as usize)
            .map_err(|e| GcError::NotFound(format!("{}: {e}", self.path.display())))?;
        self.buf.resize(len, 0);
        let n = self
            .file
            .read_at(&mut self.buf, 0)
            .map_err(|e| GcError::NotFound(format!("{}: {e}", self.path.display())))?;
        parse_hsperfdata(&self.buf[..n])?.gc_reading()
    }

    fn describe(&self) -> String {
        format!("hsperfdata {}", self.path.display())
    }
}

#[cfg(test)]
#[path = "hsperf_tests.rs"]
mod tests;
