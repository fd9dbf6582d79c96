//! The agent's own capabilities (`/proc/self/status` CapEff), so that a read the kernel refuses
//! is reported with the capability the agent lacks rather than a bare "permission denied".

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;

/// What reading another user's `/proc/PID/fd` takes: the directory is the owner's, mode 0500
/// (`CAP_DAC_READ_SEARCH`), and the kernel's ptrace access check (`CAP_SYS_PTRACE`).
pub const PROC_FD: &[(u32, &str)] = &[
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
];

/// The effective set from the text of a `/proc/PID/status`.
pub fn parse_effective(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The agent's effective capabilities (`None` when `/proc/self/status` is unreadable).
pub fn effective() -> Option<u64> {
    parse_effective(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Whether the agent holds `cap` in its effective set.
pub fn has(cap: u32) -> bool {
    effective().is_some_and(|caps| caps & (1 << cap) != 0)
}

/// The names of the `wanted` capabilities missing from `effective`.
pub fn missing(effective: u64, wanted: &[(u32, &'static str)]) -> Vec<&'static str> {
    wanted
        .iter()
        .filter(|(cap, _)| effective & (1 << cap) == 0)
        .map(|&(_, name)| name)
        .collect()
}

/// A clause naming what the agent lacks of `wanted`, for a message about a refused read:
/// "the agent lacks CAP_SYS_PTRACE", or why it is refused although it holds them all.
pub fn lacking(effective: Option<u64>, wanted: &[(u32, &'static str)]) -> String {
    match effective {
        None => "the agent's own capabilities are unreadable".to_string(),
        Some(eff) => {
            let lacks = missing(eff, wanted);
            if lacks.is_empty() {
                "the agent holds the capabilities, so a user namespace or a security module refuses it".to_string()
            } else {
                format!("the agent lacks {}", lacks.join(" and "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exactly_the_missing_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000080004\n";
        let eff = parse_effective(status);
        assert_eq!(
            eff,
            Some((1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH))
        );
        assert_eq!(
            lacking(eff, PROC_FD),
            "the agent holds the capabilities, so a user namespace or a security module refuses it"
        );
        assert_eq!(
            lacking(Some(1 << CAP_DAC_READ_SEARCH), PROC_FD),
            "the agent lacks CAP_SYS_PTRACE"
        );
        assert_eq!(
            lacking(Some(1 << CAP_SYS_PTRACE), PROC_FD),
            "the agent lacks CAP_DAC_READ_SEARCH"
        );
        assert_eq!(
            lacking(Some(0), PROC_FD),
            "the agent lacks CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
        );
        assert_eq!(parse_effective("CapEff:\tzz\n"), None);
        assert_eq!(parse_effective(""), None);
    }
}
