//! CPU capacity and throttling of a process, from its cgroups.
//!
//! The capacity a service may use is the smallest of: the host's online cores, its cpuset, and the
//! CPU quota of its cgroup and of every ancestor (a parent's quota caps its children). Throttling
//! looks like run-queue delay from inside the process; `cpu.stat` tells them apart. Both cgroup v2
//! (unified) and v1 (`cpu,cpuacct` hierarchy) are read. Paths are relative to an injectable sysfs
//! root so tests use a fake tree.

use std::path::{Path, PathBuf};

/// One line of `/proc/PID/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLine {
    pub id: u32,
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(buf: &[u8]) -> Vec<CgroupLine> {
    String::from_utf8_lossy(buf)
        .lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let id = it.next()?.parse().ok()?;
            let controllers = it
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            let path = it.next()?.to_string();
            path.starts_with('/').then_some(CgroupLine {
                id,
                controllers,
                path,
            })
        })
        .collect()
}

/// Cores a quota allows: v2 `cpu.max` (`max 100000` or `200000 100000`).
pub fn parse_cpu_max(buf: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(buf);
    let mut it = text.split_ascii_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// Cores a v1 quota allows: `cpu.cfs_quota_us` (`-1` is none) over `cpu.cfs_period_us`.
pub fn parse_cfs_quota(quota: &[u8], period: &[u8]) -> Option<f64> {
    let q: i64 = String::from_utf8_lossy(quota).trim().parse().ok()?;
    let p: i64 = String::from_utf8_lossy(period).trim().parse().ok()?;
    (q > 0 && p > 0).then_some(q as f64 / p as f64)
}

/// Number of CPUs in a list like `0-3,8,10-11`.
pub fn parse_cpu_list(buf: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(buf);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for part in text.split(',') {
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.parse().ok()?;
                let b: u32 = b.parse().ok()?;
                b.checked_sub(a)?.checked_add(1)?
            }
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
        n = n.checked_add(count)?;
    }
    Some(n)
}

/// Throttled seconds from `cpu.stat`: v2 `throttled_usec`, v1 `throttled_time` (ns).
pub fn parse_throttled_s(buf: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(buf);
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
            (Some("throttled_usec"), Some(v)) => return Some(v as f64 / 1e6),
            (Some("throttled_time"), Some(v)) => return Some(v as f64 / 1e9),
            _ => {}
        }
    }
    None
}

/// `cpu.pressure` "some" total in seconds: time at least one task waited for a CPU.
pub fn parse_pressure_some_s(buf: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(buf);
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let total = line
        .split_ascii_whitespace()
        .find_map(|kv| kv.strip_prefix("total="))?;
    total.parse::<u64>().ok().map(|us| us as f64 / 1e6)
}

/// Where a process's CPU limits live, resolved once per process.
#[derive(Clone, Debug, Default)]
pub struct CpuLimits {
    /// Directories (v2 unified, or v1 cpu) from the process's cgroup up to the root.
    quota_dirs: Vec<(PathBuf, bool)>,
    cpuset_file: Option<PathBuf>,
    stat_file: Option<PathBuf>,
    pressure_file: Option<PathBuf>,
}

/// A reading of capacity and throttling.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuReading {
    pub host_cores: u32,
    pub capacity_cores: f64,
    /// Cumulative throttled seconds of the process's own cgroup, if it has a quota file.
    pub throttled_s: Option<f64>,
    pub pressure_some_s: Option<f64>,
}

fn ancestors(base: &Path, cgroup_path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut p = PathBuf::from(cgroup_path.trim_start_matches('/'));
    loop {
        dirs.push(base.join(&p));
        if !p.pop() {
            break;
        }
    }
    dirs
}

impl CpuLimits {
    /// Resolves the cgroup directories of a process from `/proc/PID/cgroup` contents.
    pub fn resolve(sys_root: &Path, proc_cgroup: &[u8]) -> CpuLimits {
        let lines = parse_proc_cgroup(proc_cgroup);
        let cg = sys_root.join("fs/cgroup");
        let mut limits = CpuLimits::default();
        // v1 cpu controller first: where it is mounted, quotas live there, not in the unified tree.
        if let Some(v1) = lines
            .iter()
            .find(|l| l.controllers.iter().any(|c| c == "cpu"))
        {
            let base = ["cpu,cpuacct", "cpu", "cpuacct,cpu"]
                .iter()
                .map(|d| cg.join(d))
                .find(|d| d.join("cpu.cfs_quota_us").exists());
            if let Some(base) = base {
                limits.quota_dirs = ancestors(&base, &v1.path)
                    .into_iter()
                    .map(|d| (d, true))
                    .collect();
                limits.stat_file = limits.quota_dirs.first().map(|(d, _)| d.join("cpu.stat"));
            }
        }
        if let Some(set) = lines
            .iter()
            .find(|l| l.controllers.iter().any(|c| c == "cpuset"))
        {
            let f = cg.join("cpuset").join(set.path.trim_start_matches('/'));
            limits.cpuset_file = Some(f.join("cpuset.cpus"));
        }
        if let Some(v2) = lines.iter().find(|l| l.id == 0 && l.controllers.is_empty()) {
            // Hybrid hosts mount the unified tree at fs/cgroup/unified.
            let base = if cg.join("cgroup.controllers").exists() {
                cg.clone()
            } else {
                cg.join("unified")
            };
            let dir = base.join(v2.path.trim_start_matches('/'));
            if limits.quota_dirs.is_empty() {
                limits.quota_dirs = ancestors(&base, &v2.path)
                    .into_iter()
                    .map(|d| (d, false))
                    .collect();
                limits.stat_file = Some(dir.join("cpu.stat"));
            }
            if limits.cpuset_file.is_none() {
                limits.cpuset_file = Some(dir.join("cpuset.cpus.effective"));
            }
            limits.pressure_file = Some(dir.join("cpu.pressure"));
        }
        limits
    }

    /// Reads the current capacity; `host_cores` comes from the caller (online CPUs).
    pub fn read(&self, host_cores: u32) -> CpuReading {
        let mut capacity = host_cores as f64;
        if let Some(n) = self
            .cpuset_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| parse_cpu_list(&b))
        {
            capacity = capacity.min(n as f64);
        }
        for (dir, v1) in &self.quota_dirs {
            let quota = if *v1 {
                match (
                    std::fs::read(dir.join("cpu.cfs_quota_us")),
                    std::fs::read(dir.join("cpu.cfs_period_us")),
                ) {
                    (Ok(q), Ok(p)) => parse_cfs_quota(&q, &p),
                    _ => None,
                }
            } else {
                std::fs::read(dir.join("cpu.max"))
                    .ok()
                    .and_then(|b| parse_cpu_max(&b))
            };
            if let Some(q) = quota {
                capacity = capacity.min(q);
            }
        }
        CpuReading {
            host_cores,
            capacity_cores: capacity,
            throttled_s: self
                .stat_file
                .as_ref()
                .and_then(|f| std::fs::read(f).ok())
                .and_then(|b| parse_throttled_s(&b)),
            pressure_some_s: self
                .pressure_file
                .as_ref()
                .and_then(|f| std::fs::read(f).ok())
                .and_then(|b| parse_pressure_some_s(&b)),
        }
    }
}

/// Online CPUs of the host, from `<sys_root>/devices/system/cpu/online`.
pub fn host_cores(sys_root: &Path) -> u32 {
    std::fs::read(sys_root.join("devices/system/cpu/online"))
        .ok()
        .and_then(|b| parse_cpu_list(&b))
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u32)
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_v1_and_v2() {
        let lines = parse_proc_cgroup(
            b"12:cpu,cpuacct:/kubepods/pod1/c1\n3:cpuset:/kubepods/pod1/c1\n0::/system.slice/x.service\nbogus\n",
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(lines[2].id, 0);
        assert!(lines[2].controllers.is_empty());
        assert!(parse_proc_cgroup(b"").is_empty());
        assert!(parse_proc_cgroup(b"1:cpu:relative").is_empty());
    }

    #[test]
    fn quotas_and_lists() {
        assert_eq!(parse_cpu_max(b"max 100000\n"), None);
        assert_eq!(parse_cpu_max(b"150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max(b"150000 0\n"), None);
        assert_eq!(parse_cpu_max(b""), None);
        assert_eq!(parse_cfs_quota(b"-1\n", b"100000\n"), None);
        assert_eq!(parse_cfs_quota(b"50000\n", b"100000\n"), Some(0.5));
        assert_eq!(parse_cpu_list(b"0-3,8,10-11\n"), Some(7));
        assert_eq!(parse_cpu_list(b"0\n"), Some(1));
        assert_eq!(parse_cpu_list(b"3-1"), None);
        assert_eq!(parse_cpu_list(b"0-4294967295"), None);
        assert_eq!(parse_cpu_list(b""), None);
    }

    #[test]
    fn throttling_and_pressure() {
        assert_eq!(
            parse_throttled_s(
                b"usage_usec 10\nnr_periods 5\nnr_throttled 2\nthrottled_usec 250000\n"
            ),
            Some(0.25)
        );
        assert_eq!(
            parse_throttled_s(b"nr_periods 5\nnr_throttled 2\nthrottled_time 2000000000\n"),
            Some(2.0)
        );
        assert_eq!(parse_throttled_s(b"usage_usec 10\n"), None);
        assert_eq!(
            parse_pressure_some_s(
                b"some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            ),
            Some(1.5)
        );
    }

    #[test]
    fn capacity_is_the_minimum_over_ancestors_and_cpuset() {
        let dir = std::env::temp_dir().join(format!("scalewise-cg-{}", std::process::id()));
        let cg = dir.join("fs/cgroup");
        let leaf = cg.join("kubepods/pod1/c1");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        std::fs::write(cg.join("cgroup.controllers"), "cpu cpuset\n").expect("write");
        std::fs::write(cg.join("kubepods/cpu.max"), "300000 100000\n").expect("write");
        std::fs::write(cg.join("kubepods/pod1/cpu.max"), "150000 100000\n").expect("write");
        std::fs::write(leaf.join("cpu.max"), "max 100000\n").expect("write");
        std::fs::write(leaf.join("cpuset.cpus.effective"), "0-1\n").expect("write");
        std::fs::write(leaf.join("cpu.stat"), "throttled_usec 500000\n").expect("write");
        let limits = CpuLimits::resolve(&dir, b"0::/kubepods/pod1/c1\n");
        let r = limits.read(8);
        assert_eq!(r.capacity_cores, 1.5);
        assert_eq!(r.throttled_s, Some(0.5));
        std::fs::write(leaf.join("cpuset.cpus.effective"), "3\n").expect("write");
        assert_eq!(limits.read(8).capacity_cores, 1.0);
        // No cgroup information at all: the host's cores.
        assert_eq!(CpuLimits::resolve(&dir, b"").read(8).capacity_cores, 8.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
