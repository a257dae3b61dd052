//! ha-lb's eBPF programs against the verifier of Debian 12's kernel (6.1), not only the
//! host's, in a user-mode-linux guest running Debian's UML build of 6.1 (see
//! `ha_lb_lab::uml`; the guest has no network device but `lo` and the veth pair it makes
//! itself, so nothing it does can leave it).
//!
//! The test binary first loads every program on the host (for the host's figures), then boots
//! a guest that runs this same test again. Inside the guest (`uml::in_guest()` set) it:
//! - lists every program in the eBPF object compiled into this binary (from the object's
//!   ELF, not from a hard-coded list), and checks the object needs nothing this kernel lacks
//!   (no CO-RE relocations, no tail calls: see below);
//! - loads each program of the unmodified object with ha-lb's own loader (`Bpf`), at the
//!   daemon's log level (WARN) and at TRACE, where every aya-log statement is live code the
//!   verifier must walk too (the level is a read-only global, so the verifier prunes disabled
//!   log paths). Every program must verify; a rejection prints the end of the verifier's log;
//! - prints what the 6.1 verifier reports per program (verified instructions, translated size);
//! - loads veth, makes one veth pair (d0: client side, d1: real-server side), attaches
//!   `ha_lb_xdp` to d0 for real, and runs it with BPF_PROG_TEST_RUN (in the interpreter):
//!   UDP NAT in, a second packet of a known UDP flow (forwarded from its connection-tracking
//!   entry with the next hop cached there, no service or FIB lookup), the reply, TCP NAT
//!   through wlc (whose scheduler is a separate, global BPF function: a bpf-to-bpf call at run
//!   time), IPv6 NAT, a frame for no service passing untouched, VRRP passing `ha_lb_xdp`
//!   untouched with its VRRP filter off and filtered by it when on
//!   (`XdpDataplane::set_vrrp_filter`: a bad-TTL advert dropped, a good one passed); and runs
//!   the standalone VRRP filter program on d0 the same way.
//!
//! What this 6.1 kernel cannot do, and how the test deals with it:
//! - It has no BPF JIT (UML has none: programs run in the interpreter). The 6.1 verifier
//!   refuses a program that mixes a tail call with bpf-to-bpf calls unless a JIT compiles it
//!   ("tail_calls are not allowed in non-JITed programs with bpf-to-bpf calls"), and
//!   `ha_lb_xdp` has bpf-to-bpf calls (its static subprograms, the global
//!   `ha_lb_sched_least`). Debian 12's amd64 kernel has the JIT on by default
//!   (CONFIG_BPF_JIT_DEFAULT_ON=y, not ALWAYS_ON), but the programs do not depend on it:
//!   they make no tail calls (the VRRP filter runs inline in `ha_lb_xdp`), so they load the
//!   same with `net.core.bpf_jit_enable=0` as here. The test checks the object has no
//!   `call bpf_tail_call`, so one is not reintroduced unnoticed.
//! - It has no kernel BTF (`/sys/kernel/btf/vmlinux`; Debian's amd64 kernel has it). The
//!   object needs none: it carries no CO-RE relocations (checked, from its `.BTF.ext`).
//! - Anything that only fails in a JIT (an image the JIT cannot emit) cannot show here.
//!
//! Each guest step prints `ebpf-uml: <step>: ok`; the host checks every step ran, every
//! program verified at both levels, and the guest exited 0.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use aya_obj::ProgramSection;
use ha_lb::{
    bpf::{
        self,
        lb::{self as lbmaps, LbCounters},
        testrun::{run_xdp, XdpAction},
        vrrp_filter::{self, set_vrids},
        Bpf, PROG_LB, PROG_VRRP_FILTER,
    },
    dataplane::{
        xdp::XdpDataplane, Dataplane, DesiredState, LbAlgo, LbKind, Protocol, RealServerSpec,
        ServiceSpec, VirtualServerKey,
    },
};
use ha_lb_common::{
    lb::{LbFlowKey, LbReason, IPPROTO_UDP},
    vrrp::{version_bit, VrrpCounter, VrrpVridKey, VrrpVridValue, FAMILY_V4},
};
use ha_lb_lab::{
    frame::{self, Eth, TcpFlags},
    uml::{self, Uml},
};

const TEST_NAME: &str = "ebpf_programs_pass_the_6_1_verifier_in_a_uml_guest";

const STEPS: &[&str] = &[
    "kernel_is_6_1",
    "object_lists_programs",
    "loads_at_trace",
    "loads_at_warn",
    "veth_pair_up",
    "xdp_attached_to_veth",
    "nat_udp_in",
    "nat_udp_known_flow",
    "nat_udp_reply",
    "nat_tcp_wlc_in",
    "nat_ipv6_udp_in",
    "non_service_passes",
    "vrrp_passes_the_lb_with_filter_off",
    "vrrp_filtered_by_the_lb_with_filter_on",
    "vrrp_filter_on_veth",
];

/// Programs that must be in the object (every other one found in it is verified the same).
const REQUIRED: &[&str] = &[PROG_LB, PROG_VRRP_FILTER];

#[test]
fn ebpf_programs_pass_the_6_1_verifier_in_a_uml_guest() {
    if let Some(_dir) = uml::in_guest() {
        guest();
        return;
    }
    // The host's verifier first: the same programs, for comparison with the guest's figures.
    let label = format!("host {} WARN", kernel_release());
    let mut bpf = Bpf::load(tracing::Level::WARN).expect("load the eBPF object on the host");
    let outcomes = verify_all(&mut bpf, &label).unwrap_or_else(|e| panic!("{e}"));
    report(&label, &outcomes);
    drop(bpf);

    let mut uml = Uml::find().expect("a UML kernel");
    // Each loaded object preallocates its LRU flow tables (tens of MB) and the guest loads
    // two in turn; it also reads this test binary through hostfs.
    uml.mem = "512M".into();
    // Generous: the machine may be busy and the test may run under `nice`. Boot plus the
    // guest's work take under 10 s on an idle host.
    uml.timeout = Duration::from_secs(180);
    let run = uml.run_test_steps(TEST_NAME, "ebpf-uml", STEPS);
    // Every program of the unmodified object, at both levels, in the interpreter.
    for p in programs_in_object().keys() {
        for level in ["WARN", "TRACE"] {
            let line = format!("ebpf-uml: 6.1 {level}: {p}: verified");
            assert!(run.output.contains(&line), "no `{line}` line\n{}", run.report());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Both sides
// ---------------------------------------------------------------------------------------

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_string()
}

/// The programs in the eBPF object compiled into this binary, by name, with their section
/// kind, read from the object's ELF (no kernel involved).
fn programs_in_object() -> BTreeMap<String, ProgramSection> {
    let bytes = bpf::object().unwrap_or_else(|e| panic!("{e}"));
    let obj = aya_obj::Object::parse(bytes).expect("parse the eBPF object");
    obj.programs.into_iter().map(|(name, p)| (name, p.section)).collect()
}

/// What the kernel reports about a program it verified.
struct Verified {
    verified_insns: Option<u32>,
    translated_bytes: Option<u32>,
}

/// The first line and the last `keep` lines of `text` (a verifier log can run to megabytes;
/// its verdict is at the end).
fn tail(text: &str, keep: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= keep + 1 {
        return text.to_string();
    }
    format!(
        "{}\n[... {} lines of the verifier log left out ...]\n{}",
        lines[0],
        lines.len() - keep - 1,
        lines[lines.len() - keep..].join("\n")
    )
}

/// Loads (verifies) every program of the object into the kernel through `bpf`. Every program
/// is tried; all rejections are reported together, each with the end of its verifier log.
fn verify_all(bpf: &mut Bpf, label: &str) -> Result<Vec<(String, Verified)>, String> {
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (name, section) in programs_in_object() {
        let info = match section {
            ProgramSection::Xdp { .. } => bpf.xdp(&name).map(|p| p.info()),
            ProgramSection::SchedClassifier => bpf.classifier(&name).map(|p| p.info()),
            _ => {
                // ha-lb's loader loads XDP and TC programs; a new kind needs this extended.
                failures.push(format!("{name}: a {section:?} program: extend ebpf_uml.rs"));
                continue;
            }
        };
        match info {
            Ok(info) => {
                let info = info.map_err(|e| format!("{name}: program info: {e}"))?;
                let v = Verified {
                    verified_insns: info.verified_instruction_count(),
                    translated_bytes: info.size_translated(),
                };
                outcomes.push((name, v));
            }
            // The error's text carries the verifier's log (aya's LoadError).
            Err(e) => {
                failures.push(format!("{name}: REJECTED ({label}):\n{}", tail(&e.to_string(), 120)))
            }
        }
    }
    if failures.is_empty() {
        Ok(outcomes)
    } else {
        Err(format!("{label}:\n{}", failures.join("\n\n")))
    }
}

fn report(label: &str, outcomes: &[(String, Verified)]) {
    let n = |v: &Option<u32>| v.map_or("n/a".to_string(), |v| v.to_string());
    for (name, v) in outcomes {
        println!(
            "ebpf-uml: {label}: {name}: verified, verified_insns={} translated={} bytes \
             ({} insns)",
            n(&v.verified_insns),
            n(&v.translated_bytes),
            n(&v.translated_bytes.map(|b| b / 8)),
        );
    }
}

/// The sections of the 64-bit little-endian ELF object `elf`: (name, flags, offset, size).
fn elf_sections(elf: &[u8]) -> Vec<(String, u64, usize, usize)> {
    assert_eq!(&elf[..6], b"\x7fELF\x02\x01", "a 64-bit little-endian ELF object");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (shoff, shentsize, shnum) = (u64_at(0x28) as usize, u16_at(0x3a), u16_at(0x3c));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(u16_at(0x3e)) + 24) as usize;
    (0..shnum)
        .map(|i| {
            let sh = header(i);
            let name_at = strtab + u32_at(sh);
            let len = elf[name_at..].iter().position(|&b| b == 0).unwrap();
            let name = String::from_utf8_lossy(&elf[name_at..name_at + len]).into_owned();
            (name, u64_at(sh + 8), u64_at(sh + 24) as usize, u64_at(sh + 32) as usize)
        })
        .collect()
}

/// How many CO-RE relocations the object's `.BTF.ext` carries (`core_relo_len` of its
/// header; 0 when the header predates them or there is no `.BTF.ext`).
fn core_relocation_bytes(elf: &[u8]) -> usize {
    let Some((_, _, offset, _)) = elf_sections(elf).into_iter().find(|s| s.0 == ".BTF.ext") else {
        return 0;
    };
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    // struct btf_ext_header: magic u16, version u8, flags u8, hdr_len u32, then
    // func_info_off/len, line_info_off/len, core_relo_off/len (u32 each).
    assert_eq!(&elf[offset..offset + 2], &0xeb9fu16.to_le_bytes(), ".BTF.ext magic");
    let hdr_len = u32_at(offset + 4);
    if hdr_len < 32 {
        0
    } else {
        u32_at(offset + 28)
    }
}

/// The executable sections of the ELF object `elf` that contain a `call bpf_tail_call`
/// (BPF_JMP | BPF_CALL = 0x85 with src_reg 0, i.e. a helper call rather than a bpf-to-bpf
/// call, and helper id 12 in imm). Helper calls carry no relocation: the instruction is in
/// the section as the kernel gets it.
fn sections_with_tail_calls(elf: &[u8]) -> Vec<String> {
    const SHF_EXECINSTR: u64 = 0x4;
    let is_tail_call = |i: &[u8]| i[0] == 0x85 && i[1] >> 4 == 0 && i[4..8] == 12u32.to_le_bytes();
    elf_sections(elf)
        .into_iter()
        .filter(|&(_, flags, offset, size)| {
            flags & SHF_EXECINSTR != 0
                && elf[offset..offset + size].chunks_exact(8).any(is_tail_call)
        })
        .map(|(name, ..)| name)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Guest side
// ---------------------------------------------------------------------------------------

fn ok(step: &str) {
    uml::step_ok("ebpf-uml", STEPS, step);
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-exc", script]).output().expect("sh");
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn vs(s: &str, protocol: Protocol) -> VirtualServerKey {
    let a = sa(s);
    VirtualServerKey { address: a.ip(), port: a.port(), protocol }
}

fn service(algo: LbAlgo, reals: &[(&str, u16, u32)]) -> ServiceSpec {
    let mut s = ServiceSpec::new(algo, LbKind::Nat);
    s.real_servers = reals
        .iter()
        .map(|&(a, port, weight)| RealServerSpec { addr: ip(a), port, weight })
        .collect();
    s
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The client-side gateway's MAC (a static neighbour of d0; nothing answers to it).
const GW_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 1];
/// Real server 198.18.2.<n> / fd48:4c42:2::<n>'s MAC (static neighbours of d1).
fn rs_mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 2, n]
}

fn guest() {
    // This kernel, and what it lacks compared with Debian's amd64 6.1 kernel.
    let release = kernel_release();
    assert!(release.starts_with("6.1."), "guest kernel {release}, want Debian 12's 6.1");
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").ok();
    println!(
        "ebpf-uml: guest kernel {release}: kernel BTF {}, BPF JIT {}",
        if btf { "present" } else { "absent (no CONFIG_DEBUG_INFO_BTF)" },
        match &jit {
            Some(v) => format!("bpf_jit_enable={}", v.trim()),
            None => "absent (UML has no BPF JIT: programs run in the interpreter)".into(),
        }
    );
    assert!(jit.is_none(), "this kernel has a JIT: the test means to verify and run without one");
    ok("kernel_is_6_1");

    let programs = programs_in_object();
    println!(
        "ebpf-uml: programs in the object: {}",
        programs.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    for p in REQUIRED {
        assert!(programs.contains_key(*p), "{p} missing from the eBPF object");
    }
    let object = bpf::object().unwrap();
    // Without kernel BTF, aya leaves CO-RE relocations unapplied (it has nothing to relocate
    // against): the programs would load here and misbehave. There must be none.
    assert_eq!(core_relocation_bytes(object), 0, "the object has CO-RE relocations");
    // The kernel refuses a tail call in a program with BPF-to-BPF calls unless a JIT compiles
    // it, and ha_lb_xdp has BPF-to-BPF calls: a tail call would not load with the JIT off
    // (`net.core.bpf_jit_enable=0`) or absent (here). Said here plainly, rather than by the
    // verifier log of the load below.
    assert_eq!(
        sections_with_tail_calls(object),
        Vec::<String>::new(),
        "`call bpf_tail_call` in the object: it would not load without a JIT"
    );
    ok("object_lists_programs");

    // Each object is loaded on its own and dropped (its flow tables are large), but the last,
    // which goes on to the packet checks.
    let mut packet_bpf = None;
    for (step, level, label) in [
        ("loads_at_trace", tracing::Level::TRACE, "6.1 TRACE"),
        ("loads_at_warn", tracing::Level::WARN, "6.1 WARN"),
    ] {
        let mut bpf = Bpf::load(level).unwrap_or_else(|e| panic!("{label}: {e}"));
        let outcomes = verify_all(&mut bpf, label).unwrap_or_else(|e| panic!("{e}"));
        report(label, &outcomes);
        assert_eq!(outcomes.len(), programs.len(), "{label}: every program verified");
        ok(step);
        packet_bpf = Some(bpf);
    }

    packet_checks(packet_bpf.expect("the object at WARN"));
}

/// One veth pair in the guest's only network namespace: d0 the client side, d1 the
/// real-server side, with static neighbours so `bpf_fib_lookup` resolves next hops.
fn veth_pair() {
    // Both are modules in this kernel (CONFIG_VETH=m, CONFIG_IPV6=m).
    uml::load_modules(&["veth", "ipv6"]).expect("load veth and ipv6");
    let mut script = String::from(
        "ip link add d0 type veth peer name d1\n\
         ip link set d0 up\n\
         ip link set d1 up\n\
         ip addr add 198.18.1.1/24 dev d0\n\
         ip addr add 198.18.2.1/24 dev d1\n\
         ip addr add fd48:4c42:1::1/64 dev d0 nodad\n\
         ip addr add fd48:4c42:2::1/64 dev d1 nodad\n\
         echo 1 > /proc/sys/net/ipv4/conf/all/forwarding\n\
         echo 1 > /proc/sys/net/ipv4/conf/d0/forwarding\n\
         echo 1 > /proc/sys/net/ipv4/conf/d1/forwarding\n\
         echo 1 > /proc/sys/net/ipv6/conf/all/forwarding\n",
    );
    script += &format!(
        "ip neigh replace 198.18.1.2 lladdr {g} dev d0 nud permanent\n\
         ip neigh replace fd48:4c42:1::2 lladdr {g} dev d0 nud permanent\n\
         ip route add 198.18.64.0/18 via 198.18.1.2 dev d0\n\
         ip route add fd48:4c42:64::/48 via fd48:4c42:1::2 dev d0\n",
        g = mac_text(GW_MAC)
    );
    for n in [10u8, 11, 12] {
        script += &format!(
            "ip neigh replace 198.18.2.{n} lladdr {m} dev d1 nud permanent\n\
             ip neigh replace fd48:4c42:2::{n} lladdr {m} dev d1 nud permanent\n",
            m = mac_text(rs_mac(n))
        );
    }
    sh(&script);
}

fn packet_checks(bpf: Bpf) {
    veth_pair();
    let d0 = bpf::ifindex_of("d0").expect("d0");
    let d1 = bpf::ifindex_of("d1").expect("d1");
    let mac0 = lbmaps::interface_mac("d0").unwrap();
    let mac1 = lbmaps::interface_mac("d1").unwrap();
    ok("veth_pair_up");

    let mut dp = XdpDataplane::new(bpf).expect("ha_lb_xdp loaded");
    // A real attach (veth has native XDP); test runs on d0 then need frames to d0's MAC.
    let mode = dp.attach_interface("d0").expect("attach ha_lb_xdp to d0");
    println!("ebpf-uml: ha_lb_xdp attached to d0 ({})", mode.as_str());
    assert_eq!(dp.interfaces().len(), 1);
    // d1, where it redirects to, recorded as attached (the map entries an attach writes: an
    // XDP program redirects only to interfaces it is attached to, see LbReason::EgressNoXdp),
    // without attaching there, whose counters the kernel's own IPv6 chatter from d0 would
    // move.
    lbmaps::set_interface_mac(dp.bpf_mut(), d1, Some(mac1)).expect("record d1");
    // The guest's own IPv6 chatter on the new link (MLD reports for the addresses just
    // added, with a hop-by-hop header) reaches d0 for a second or two and is counted: wait
    // until the counters stand still, so each check below sees only its frame.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut last = lbmaps::counters(dp.bpf()).unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let now = lbmaps::counters(dp.bpf()).unwrap();
        if now == last || std::time::Instant::now() > deadline {
            break;
        }
        last = now;
    }
    ok("xdp_attached_to_veth");

    dp.apply(&DesiredState {
        services: BTreeMap::from([
            (
                vs("198.18.100.1:53", Protocol::Udp),
                service(LbAlgo::Rr, &[("198.18.2.10", 5353, 1)]),
            ),
            (
                vs("198.18.100.1:80", Protocol::Tcp),
                service(LbAlgo::Wlc, &[("198.18.2.11", 8080, 1), ("198.18.2.12", 8080, 3)]),
            ),
            (
                vs("[fd48:4c42:100::1]:53", Protocol::Udp),
                service(LbAlgo::Rr, &[("fd48:4c42:2::10", 5353, 1)]),
            ),
        ]),
    })
    .expect("apply services");

    let client_eth = Eth { src: GW_MAC, dst: mac0 };
    let send = |dp: &mut XdpDataplane, ifindex: u32, f: &[u8]| {
        let prog = dp.bpf_mut().xdp(PROG_LB).unwrap();
        run_xdp(prog, f, ifindex, 1).expect("BPF_PROG_TEST_RUN")
    };
    let counters = |dp: &XdpDataplane| -> LbCounters { lbmaps::counters(dp.bpf()).unwrap() };

    // UDP NAT in: destination rewritten to the real server, out by d1 (a redirect).
    let vip = sa("198.18.100.1:53");
    let c = sa("198.18.64.5:5000");
    let before = counters(&dp);
    let r = send(&mut dp, d0, &frame::udp(client_eth, c, vip, b"query"));
    assert_eq!(r.action, XdpAction::Redirect, "egress d1 != ingress d0");
    let p = frame::check(&r.frame).expect("checksums valid after DNAT");
    assert_eq!((p.src, p.sport), (c.ip(), c.port()), "source untouched");
    assert_eq!((p.dst, p.dport), (ip("198.18.2.10"), 5353), "DNAT to the real server");
    assert_eq!((p.eth.src, p.eth.dst), (mac1, rs_mac(10)));
    assert_eq!(p.payload, b"query");
    assert_eq!(counters(&dp).since(&before), vec![(LbReason::NatIn.name(), 1)]);
    ok("nat_udp_in");

    // An established flow: its first packet is scheduled and looked up (service, FIB) and
    // leaves the next hop in the flow's connection-tracking entry; the second is forwarded
    // from that entry alone (the next-hop cache path: no service lookup, no bpf_fib_lookup,
    // within a second of the first and no longer than it).
    let c2 = sa("198.18.64.6:5001");
    let before = counters(&dp);
    let (w, family) = lbmaps::addr_words(c2.ip());
    let key = LbFlowKey {
        src: w,
        dst: lbmaps::addr_words(vip.ip()).0,
        sport: lbmaps::port_be(c2.port()),
        dport: lbmaps::port_be(vip.port()),
        proto: IPPROTO_UDP,
        family,
        _pad: 0,
    };
    for (i, payload) in [b"first", b"again"].into_iter().enumerate() {
        let r = send(&mut dp, d0, &frame::udp(client_eth, c2, vip, payload));
        assert_eq!(r.action, XdpAction::Redirect, "packet {i}");
        let p = frame::check(&r.frame).unwrap_or_else(|e| panic!("packet {i}: checksums: {e}"));
        assert_eq!((p.src, p.sport), (c2.ip(), c2.port()), "packet {i}");
        assert_eq!((p.dst, p.dport), (ip("198.18.2.10"), 5353), "packet {i}: same real server");
        assert_eq!((p.eth.src, p.eth.dst), (mac1, rs_mac(10)), "packet {i}");
        assert_eq!(p.payload, payload, "packet {i}");
        // The forward entry holds the next hop the first packet's FIB lookup found.
        let f = lbmaps::flow(dp.bpf(), &key).unwrap().expect("the flow's forward entry");
        let macs: Vec<u8> = f.nh_macs.iter().flat_map(|m| m.to_ne_bytes()).collect();
        assert_ne!(f.nh_len, 0, "packet {i}: next hop cached");
        assert_eq!(f.nh_ifindex, d1, "packet {i}: cached egress");
        assert_eq!(macs, [rs_mac(10), mac1].concat(), "packet {i}: cached MACs");
    }
    assert_eq!(counters(&dp).since(&before), vec![(LbReason::NatIn.name(), 2)]);
    ok("nat_udp_known_flow");

    // The reply, from the real server on d1: source rewritten back to the VIP, out by d0.
    let before = counters(&dp);
    let rs_eth = Eth { src: rs_mac(10), dst: mac1 };
    let r = send(&mut dp, d1, &frame::udp(rs_eth, sa("198.18.2.10:5353"), c, b"answer"));
    assert_eq!(r.action, XdpAction::Redirect);
    let p = frame::check(&r.frame).expect("checksums valid after SNAT");
    assert_eq!((p.src, p.sport), (vip.ip(), vip.port()), "SNAT back to the VIP");
    assert_eq!((p.dst, p.dport), (c.ip(), c.port()));
    assert_eq!((p.eth.src, p.eth.dst), (mac0, GW_MAC), "toward the client's gateway");
    assert_eq!(counters(&dp).since(&before), vec![(LbReason::NatOut.name(), 1)]);
    ok("nat_udp_reply");

    // TCP through wlc: the scheduler is a global BPF function (a bpf-to-bpf call).
    let tvip = sa("198.18.100.1:80");
    let before = counters(&dp);
    let mut picked = Vec::new();
    for i in 0..4u16 {
        let c = SocketAddr::new(ip("198.18.64.9"), 40000 + i);
        let r = send(&mut dp, d0, &frame::tcp(client_eth, c, tvip, TcpFlags::SYN, 1, b"x"));
        assert_eq!(r.action, XdpAction::Redirect);
        let p = frame::check(&r.frame).expect("TCP checksum valid after DNAT");
        assert_eq!(p.dport, 8080);
        picked.push(p.dst);
    }
    assert!(
        picked.iter().all(|a| [ip("198.18.2.11"), ip("198.18.2.12")].contains(a)),
        "{picked:?}"
    );
    println!("ebpf-uml: wlc picked {picked:?}");
    assert_eq!(counters(&dp).since(&before), vec![(LbReason::NatIn.name(), 4)]);
    ok("nat_tcp_wlc_in");

    // IPv6 NAT in.
    let before = counters(&dp);
    let c6 = sa("[fd48:4c42:64::7]:5000");
    let r = send(&mut dp, d0, &frame::udp(client_eth, c6, sa("[fd48:4c42:100::1]:53"), b"v6"));
    assert_eq!(r.action, XdpAction::Redirect);
    let p = frame::check(&r.frame).expect("v6 UDP checksum valid after DNAT");
    assert_eq!((p.dst, p.dport), (ip("fd48:4c42:2::10"), 5353));
    assert_eq!((p.eth.src, p.eth.dst), (mac1, rs_mac(10)));
    assert_eq!(counters(&dp).since(&before), vec![(LbReason::NatIn.name(), 1)]);
    ok("nat_ipv6_udp_in");

    // A frame for no service passes untouched.
    let before = counters(&dp);
    let f = frame::udp(client_eth, c, sa("198.18.100.9:53"), b"other");
    let r = send(&mut dp, d0, &f);
    assert_eq!(r.action, XdpAction::Pass);
    assert_eq!(r.frame, f, "untouched");
    assert_eq!(counters(&dp).since(&before), vec![(LbReason::NotService.name(), 1)]);
    ok("non_service_passes");

    // VRRP is not the LB's: with its VRRP filter off, ha_lb_xdp passes it like any
    // non-TCP/UDP frame, even an advert the filter would drop.
    let (s, d) = (ip("198.18.1.2"), ip("224.0.0.18"));
    let adv = |ttl: u8| {
        let m = frame::vrrp(3, 51, 100, 100, &[ip("198.18.100.1")], s, d);
        frame::ip(client_eth, s, d, ttl, 112, &m)
    };
    let vrids = BTreeMap::from([(
        VrrpVridKey::new(d0, 51, FAMILY_V4),
        VrrpVridValue { versions: version_bit(3), ..Default::default() },
    )]);
    set_vrids(dp.bpf_mut(), &vrids).unwrap();
    let before = counters(&dp);
    let bad = adv(64);
    let r = send(&mut dp, d0, &bad);
    assert_eq!((r.action, &r.frame), (XdpAction::Pass, &bad), "passed untouched");
    assert_eq!(counters(&dp).since(&before), vec![(LbReason::NotTcpUdp.name(), 1)]);
    ok("vrrp_passes_the_lb_with_filter_off");

    // With the filter on, ha_lb_xdp runs the VRRP filter's checks on the frames it does not
    // forward (inline, no tail call): it drops an advert with TTL != 255 and passes a good
    // one for a configured VRID, counting both in the filter's counters.
    dp.set_vrrp_filter(true).unwrap();
    let before = vrrp_filter::counters(dp.bpf()).unwrap();
    assert_eq!(send(&mut dp, d0, &bad).action, XdpAction::Drop, "bad TTL: dropped by the LB");
    let good = adv(255);
    let r = send(&mut dp, d0, &good);
    assert_eq!((r.action, &r.frame), (XdpAction::Pass, &good), "good advert: passed untouched");
    let after = vrrp_filter::counters(dp.bpf()).unwrap();
    assert_eq!(after.get(VrrpCounter::BadTtl) - before.get(VrrpCounter::BadTtl), 1);
    assert_eq!(after.get(VrrpCounter::Passed) - before.get(VrrpCounter::Passed), 1);
    ok("vrrp_filtered_by_the_lb_with_filter_on");

    // The standalone VRRP filter program (for interfaces that carry VRRP only), run on d0
    // directly with the same VRIDs: the same verdicts.
    let before = vrrp_filter::counters(dp.bpf()).unwrap();
    let filter = dp.bpf_mut().xdp(PROG_VRRP_FILTER).unwrap();
    assert_eq!(run_xdp(filter, &bad, d0, 1).unwrap().action, XdpAction::Drop, "bad TTL");
    assert_eq!(run_xdp(filter, &good, d0, 1).unwrap().action, XdpAction::Pass, "good");
    let after = vrrp_filter::counters(dp.bpf()).unwrap();
    assert_eq!(after.get(VrrpCounter::BadTtl) - before.get(VrrpCounter::BadTtl), 1);
    assert_eq!(after.get(VrrpCounter::Passed) - before.get(VrrpCounter::Passed), 1);
    ok("vrrp_filter_on_veth");

    dp.detach_interface("d0").unwrap();
}
