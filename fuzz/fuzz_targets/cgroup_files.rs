//! /proc/PID/cgroup and cgroup control files (a container can be given odd ones).
#![no_main]
use libfuzzer_sys::fuzz_target;
use scalewise_agent::cgroup::*;

fuzz_target!(|data: &[u8]| {
    let _ = parse_proc_cgroup(data);
    let _ = parse_cpu_max(data);
    let _ = parse_cpu_list(data);
    let _ = parse_throttled_s(data);
    let _ = parse_pressure_some_s(data);
    let half = data.len() / 2;
    let _ = parse_cfs_quota(&data[..half], &data[half..]);
});
