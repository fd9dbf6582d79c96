use super::*;
use proptest::prelude::*;

const STAT: &[u8] = b"4242 (java) S 1 4242 4242 0 -1 4194560 1543 0 3 0 250 40 0 0 20 0 25 0 98765 3000000000 9000 18446744073709551615 1 1 0 0 0 0 0 4096 1260 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

#[test]
fn stat_plain() {
    let s = parse_stat(STAT).expect("valid");
    assert_eq!(s.pid, 4242);
    assert_eq!(s.comm, "java");
    assert_eq!(s.state, 'S');
    assert_eq!(s.ppid, 1);
    assert_eq!((s.utime, s.stime), (250, 40));
    assert_eq!(s.num_threads, 25);
    assert_eq!(s.starttime, 98765);
}

#[test]
fn stat_hostile_comm() {
    // A thread may name itself anything up to 15 bytes, including the field separators.
    let hostile = b"77 () R 1 () S 1 77 77 0 -1 0 0 0 0 0 7 8 0 0 20 0 3 0 555 0 0 0\n";
    let s = parse_stat(hostile).expect("valid");
    assert_eq!(s.comm, ") R 1 (");
    assert_eq!(s.state, 'S');
    assert_eq!(
        (s.utime, s.stime, s.num_threads, s.starttime),
        (7, 8, 3, 555)
    );
    let newline = b"78 (a\nb) R 1 78 78 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 9 0 0 0\n";
    assert_eq!(parse_stat(newline).expect("valid").comm, "a\nb");
    let invalid_utf8 = b"79 (\xff\xfe) R 1 79 79 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 9 0 0 0\n";
    assert_eq!(parse_stat(invalid_utf8).expect("valid").pid, 79);
}

#[test]
fn stat_bad_input_is_an_error_not_a_panic() {
    assert_eq!(parse_stat(b""), Err(ParseError::Empty));
    assert_eq!(parse_stat(b"12 (x"), Err(ParseError::Missing("comm")));
    assert_eq!(parse_stat(b"12 )x( R"), Err(ParseError::Missing("comm")));
    assert!(parse_stat(b"12 (x) R 1 2").is_err());
    assert!(matches!(
        parse_stat(b"zz (x) R 1 1 1 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 9"),
        Err(ParseError::NotANumber { field: "pid", .. })
    ));
    for cut in 0..STAT.len() {
        let _ = parse_stat(&STAT[..cut]);
    }
}

#[test]
fn schedstat() {
    assert_eq!(
        parse_schedstat(b"559439 1200 17\n"),
        Ok(Schedstat {
            on_cpu_ns: 559439,
            run_delay_ns: 1200,
            timeslices: 17
        })
    );
    assert_eq!(parse_schedstat(b""), Err(ParseError::Empty));
    assert_eq!(parse_schedstat(b"\n"), Err(ParseError::Empty));
    assert_eq!(
        parse_schedstat(b"559439 12"),
        Err(ParseError::Missing("timeslices"))
    );
    assert!(parse_schedstat(b"-5 1 1").is_err());
    assert!(parse_schedstat(b"\xff 1 1").is_err());
}

#[test]
fn syscall_states() {
    assert_eq!(parse_syscall(b"running\n"), Ok(SyscallState::Running));
    assert_eq!(
        parse_syscall(b"-1 0x7ffc 0x7f00\n"),
        Ok(SyscallState::BlockedNoSyscall)
    );
    let read = parse_syscall(
        b"0 0x3 0x7f8e7f08e000 0x20000 0x7f8e7f121b60 0xffffffff 0x0 0x7ffcc1d07dc8 0x7f8e7f20a2ad\n",
    );
    assert_eq!(
        read,
        Ok(SyscallState::InSyscall {
            nr: 0,
            args: [3, 0x7f8e7f08e000, 0x20000, 0x7f8e7f121b60, 0xffffffff, 0]
        })
    );
    assert_eq!(parse_syscall(b""), Err(ParseError::Empty));
    assert_eq!(
        parse_syscall(b"7 0x1 0x2"),
        Err(ParseError::Missing("syscall argument"))
    );
    assert!(parse_syscall(b"7 0xZZ 0 0 0 0 0 0 0").is_err());
    assert!(parse_syscall(b"seven").is_err());
}

#[test]
fn status_uids_and_nspid() {
    let text = b"Name:\tjava\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nNSpid:\t4242\t1\n";
    let s = parse_status(text).expect("valid");
    assert_eq!(s.uids, [1000; 4]);
    assert_eq!(s.nspids, vec![4242, 1]);
    assert_eq!(parse_status(b""), Err(ParseError::Missing("Uid")));
    assert!(parse_status(b"Uid:\t1000\n").is_err());
    assert!(parse_status(b"Uid:\t1 1 1 1\nNSpid:\tx\n").is_err());
}

#[test]
fn socket_links() {
    assert_eq!(parse_socket_link(b"socket:[123456]"), Some(123456));
    assert_eq!(parse_socket_link(b"pipe:[1]"), None);
    assert_eq!(parse_socket_link(b"socket:[]"), None);
    assert_eq!(parse_socket_link(b"socket:[12"), None);
    assert_eq!(parse_socket_link(b"/dev/null"), None);
}

#[test]
fn snmp_tcp_counters() {
    let snmp = b"Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\nTcp: 1 200 120000 -1 2406 1958 3\nUdp: InDatagrams\nUdp: 5\n";
    assert_eq!(parse_tcp_counter(snmp, "PassiveOpens"), Some(1958));
    assert_eq!(parse_tcp_counter(snmp, "ActiveOpens"), Some(2406));
    assert_eq!(parse_tcp_counter(snmp, "Nope"), None);
    assert_eq!(
        parse_tcp_counter(b"Tcp: PassiveOpens\n", "PassiveOpens"),
        None
    );
    assert_eq!(
        parse_tcp_counter(b"Tcp: PassiveOpens\nTcp: x\n", "PassiveOpens"),
        None
    );
    assert_eq!(parse_tcp_counter(b"", "PassiveOpens"), None);
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_stat(&bytes);
        let _ = parse_schedstat(&bytes);
        let _ = parse_syscall(&bytes);
        let _ = parse_status(&bytes);
        let _ = parse_socket_link(&bytes);
        let _ = parse_tcp_counter(&bytes, "PassiveOpens");
    }

    #[test]
    fn any_comm_round_trips(comm in proptest::collection::vec(any::<u8>().prop_filter("kernel strips NUL", |b| *b != 0), 0..16)) {
        let mut line = b"99 (".to_vec();
        line.extend_from_slice(&comm);
        line.extend_from_slice(b") S 1 99 99 0 -1 0 0 0 0 0 5 6 0 0 20 0 4 0 321 0 0 0\n");
        let s = parse_stat(&line).expect("valid stat line");
        prop_assert_eq!(s.pid, 99);
        prop_assert_eq!((s.utime, s.stime, s.num_threads, s.starttime), (5, 6, 4, 321));
        prop_assert_eq!(s.comm, String::from_utf8_lossy(&comm).into_owned());
    }
}

#[test]
fn epoll_interest_lists() {
    let text = b"pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
tfd:       27 events:       19 data: 1b  pos:0 ino:4f3a sdev:8\n\
tfd:        5 events: 80002019 data: 5  pos:0 ino:61af sdev:7\n\
tfd: garbage events: zz\ntfd:\n";
    let mut out = Vec::new();
    parse_epoll_fdinfo(text, &mut out);
    assert_eq!(out, vec![(27, 0x19), (5, 0x8000_2019)]);
    parse_epoll_fdinfo(b"", &mut out);
    assert!(out.is_empty());
    assert!(is_epoll_link(b"anon_inode:[eventpoll]"));
    assert!(!is_epoll_link(b"socket:[12]"));
}
