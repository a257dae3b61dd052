//! The benchmark programs (`cargo xtask bench dataplane`): the live-frames generator's frames
//! arrive on the veth peer with valid checksums and the flows it was told to make, and the
//! sink counts exactly what was sent. Correctness only: nothing here is timed.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use ha_lb::bpf::{
    bench::{
        gen_frames, run_live_frames, set_gen_config, sink_counters, BenchGenConfig, PROG_BENCH_GEN,
        PROG_BENCH_PASS, PROG_BENCH_SINK,
    },
    Bpf,
};
use ha_lb_lab::{frame, packet::PacketSocket, wait_for, Lab};

const FRAME_LEN: usize = 60;

#[test]
fn generator_frames_are_valid_and_the_sink_counts_them() {
    let mut lab = Lab::new().unwrap();
    let a = lab.node("gen").unwrap();
    let b = lab.node("rcv").unwrap();
    // The sink counts every frame on its link: keep the kernel's own IPv6 chatter (MLD,
    // router solicitations of a freshly-up veth) off it, so the count is exactly ours.
    for n in [&a, &b] {
        for c in ["all", "default"] {
            n.sysctl(&format!("net.ipv6.conf.{c}.disable_ipv6"), "1").unwrap();
        }
    }
    lab.veth(&a, "g0", &b, "r0").unwrap();
    let g0 = a.ifindex("g0").unwrap();
    let (src_mac, dst_mac) = (a.mac("g0").unwrap(), b.mac("r0").unwrap());

    let mut bpf = Bpf::load(tracing::Level::WARN).expect("load eBPF object");
    for p in [PROG_BENCH_GEN, PROG_BENCH_PASS, PROG_BENCH_SINK] {
        bpf.xdp(p).unwrap_or_else(|e| panic!("verifier rejects {p}: {e}"));
    }
    let cfg = BenchGenConfig {
        dst_mac,
        src_mac,
        saddr: u32::from_ne_bytes([198, 18, 9, 1]),
        daddr: u32::from_ne_bytes([198, 18, 9, 2]),
        sport_base: 40000,
        sport_count: 4,
        dport: 9,
        ttl: 64,
        _pad: 0,
    };
    set_gen_config(&mut bpf, &cfg).unwrap();
    // The receiving veth needs NAPI for XDP_TX frames from its peer: an XDP program gives it.
    let (pass, _) = b.run(|| bpf.attach_xdp(PROG_BENCH_PASS, "r0")).unwrap().unwrap();
    // Stale bytes in the input frame must not survive: the program rewrites every header.
    let template = vec![0xa5u8; 14 + 20 + 8]
        .into_iter()
        .chain(std::iter::repeat_n(0u8, FRAME_LEN - 42))
        .collect::<Vec<u8>>();

    let sock = b.run(|| PacketSocket::open("r0")).unwrap().unwrap();
    let prog = bpf.xdp(PROG_BENCH_GEN).unwrap();
    let run = a.run(|| run_live_frames(prog, &template, g0, 8, 64)).unwrap().unwrap();
    assert_eq!(run.frames, 8);
    // IPv4 UDP only: the fresh interfaces send their own IPv6 neighbour discovery.
    let frames = sock
        .drain(Duration::from_millis(300), |f| f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 17)
        .unwrap();
    assert_eq!(frames.len(), 8, "every generated frame arrives");
    let mut ports = BTreeSet::new();
    for f in &frames {
        let p = frame::check(f).unwrap_or_else(|e| panic!("generated frame invalid: {e:#}"));
        assert_eq!(p.eth.src, src_mac);
        assert_eq!(p.eth.dst, dst_mac);
        assert_eq!(p.src, IpAddr::V4("198.18.9.1".parse().unwrap()));
        assert_eq!(p.dst, IpAddr::V4("198.18.9.2".parse().unwrap()));
        assert_eq!((p.proto, p.ttl, p.dport), (17, 64, 9));
        assert_eq!(p.payload, vec![0u8; FRAME_LEN - 42]);
        assert!(f[14 + 10..14 + 12] != [0, 0], "IPv4 checksum computed");
        assert!(f[34 + 6..34 + 8] != [0, 0], "UDP checksum computed, not omitted");
        ports.insert(p.sport);
    }
    assert_eq!(ports, BTreeSet::from([40000, 40001, 40002, 40003]));

    // The sink replaces the pass program and counts exactly what was generated.
    bpf.detach_xdp(PROG_BENCH_PASS, pass).unwrap();
    let _sink = b.run(|| bpf.attach_xdp(PROG_BENCH_SINK, "r0")).unwrap().unwrap();
    let before = (gen_frames(&bpf).unwrap(), sink_counters(&bpf).unwrap());
    let prog = bpf.xdp(PROG_BENCH_GEN).unwrap();
    a.run(|| run_live_frames(prog, &template, g0, 10_000, 64)).unwrap().unwrap();
    let generated = gen_frames(&bpf).unwrap() - before.0;
    assert_eq!(generated, 10_000);
    let counted = wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
        let c = sink_counters(&bpf).unwrap();
        (c.frames - before.1.frames == generated).then_some(c)
    })
    .unwrap_or_else(|| panic!("sink counted {:?}, expected {generated}", sink_counters(&bpf)));
    assert_eq!(counted.bytes - before.1.bytes, generated * FRAME_LEN as u64);
}
