//! What `ha-lb run` needs from the kernel, checked before anything else: without it the
//! first failure would be an unrelated one (creating the control socket's directory).

/// Capabilities `run` needs, by bit number (linux/capability.h), with what for.
const NEEDED: &[(u32, &str, &str)] = &[
    (12, "CAP_NET_ADMIN", "VIPs, XDP/TC attach, IPVS"),
    (13, "CAP_NET_RAW", "VRRP and ARP/NA sockets"),
    (39, "CAP_BPF", "loading the eBPF programs"),
];
/// Before Linux 5.8 (no CAP_BPF), CAP_SYS_ADMIN is what BPF needs.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The effective capability set from the text of /proc/self/status.
pub fn cap_eff(proc_status: &str) -> Option<u64> {
    let hex = proc_status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The needed capabilities `cap_eff` lacks, each as `NAME (what for)`. CAP_BPF only with
/// `bpf`: the `ipvs` and `none` planes run without eBPF (the VRRP filter is then left out,
/// with a warning), as keepalived runs with CAP_NET_ADMIN and CAP_NET_RAW.
pub fn missing(cap_eff: u64, bpf: bool) -> Vec<String> {
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    let has_or_stands_in = |bit: u32| has(bit) || (bit == CAP_BPF && has(CAP_SYS_ADMIN));
    NEEDED
        .iter()
        .filter(|(bit, _, _)| bpf || *bit != CAP_BPF)
        .filter(|(bit, _, _)| !has_or_stands_in(*bit))
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect()
}

/// An error naming what this process lacks to run the daemon (with `bpf`: an eBPF data
/// plane), or `None` when it has it (or /proc cannot tell).
pub fn check_run(bpf: bool) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let lacking = missing(cap_eff(&status)?, bpf);
    if lacking.is_empty() {
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let who = if uid == 0 { "root without all its capabilities" } else { "not root" };
    Some(format!(
        "`ha-lb run` needs root, or CAP_NET_ADMIN, CAP_NET_RAW{}; this process is {who} (euid {uid}) and lacks {}",
        if bpf { " and CAP_BPF (dataplane xdp or tc)" } else { "" },
        lacking.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_which_capabilities_are_missing() {
        let status = "Name:\tha-lb\nCapInh:\t0000000000000000\nCapEff:\t0000000000003000\n";
        let eff = cap_eff(status).unwrap();
        assert_eq!(eff, 0x3000);
        assert_eq!(missing(eff, true), ["CAP_BPF (loading the eBPF programs)"]);
        // The ipvs and none planes need no eBPF (found by review: they ran with these two).
        assert!(missing(eff, false).is_empty());
        // Before CAP_BPF existed, CAP_SYS_ADMIN stands for it.
        assert!(missing(0x3000 | 1 << 21, true).is_empty());
        assert!(missing(0x1ff_ffff_ffff, true).is_empty());
        assert_eq!(missing(0, true).len(), 3);
        assert_eq!(missing(0, false).len(), 2);
        assert_eq!(cap_eff("Name:\tx\n"), None);
    }
}
