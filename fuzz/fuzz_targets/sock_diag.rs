//! NETLINK_SOCK_DIAG replies, parsed as if the kernel could not be trusted.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scalewise_agent::sockdiag::parse_messages(data);
    let _ = scalewise_agent::sockdiag::parse_unix_messages(data);
});
