//! /proc/PID/{stat,schedstat,syscall,status,fdinfo/EPFD} and fd link targets: a thread names itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scalewise_agent::proc_files::*;

fuzz_target!(|data: &[u8]| {
    let _ = parse_stat(data);
    let _ = parse_schedstat(data);
    let _ = parse_syscall(data);
    let _ = parse_status(data);
    let _ = parse_socket_link(data);
    let _ = parse_tcp_counter(data, "PassiveOpens");
    let _ = parse_tcp_counter(data, "ActiveOpens");
    let mut interest = Vec::new();
    parse_epoll_fdinfo(data, &mut interest);
    let _ = is_epoll_link(data);
});
