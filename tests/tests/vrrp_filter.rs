//! The VRRP fast-path filter: packet tests through BPF_PROG_TEST_RUN, and a lab test that
//! attaches it to a veth in a namespace and sends it real frames.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use ha_lb::bpf::{
    testrun::{run_xdp, XdpAction},
    vrrp_filter::{counters, set_vrids, VrrpFilterCounters},
    AttachMode, Bpf, PROG_VRRP_FILTER,
};
use ha_lb_common::vrrp::{
    version_bit, VrrpCounter, VrrpVridKey, VrrpVridValue, FAMILY_V4, FAMILY_V6,
};
use ha_lb_lab::{
    frame::{self, Eth},
    packet::PacketSocket,
    Lab,
};

const LO: u32 = 1;

fn ip4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse().unwrap())
}
fn ip6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().unwrap())
}

fn vrids(ifindex: u32) -> BTreeMap<VrrpVridKey, VrrpVridValue> {
    BTreeMap::from([
        (
            VrrpVridKey::new(ifindex, 51, FAMILY_V4),
            VrrpVridValue { versions: version_bit(3), ..Default::default() },
        ),
        (
            VrrpVridKey::new(ifindex, 52, FAMILY_V4),
            VrrpVridValue { versions: version_bit(2) | version_bit(3), ..Default::default() },
        ),
        (
            VrrpVridKey::new(ifindex, 51, FAMILY_V6),
            VrrpVridValue { versions: version_bit(3), ..Default::default() },
        ),
    ])
}

/// A VRRP frame: `vrrp(version, vrid)` over IPv4 with the given TTL.
fn adv4(version: u8, vrid: u8, ttl: u8) -> Vec<u8> {
    let (s, d) = (ip4("198.18.0.1"), ip4("224.0.0.18"));
    let msg = frame::vrrp(version, vrid, 100, 100, &[ip4("198.18.0.100")], s, d);
    frame::ip(Eth::default(), s, d, ttl, 112, &msg)
}

fn adv6(vrid: u8, hop_limit: u8) -> Vec<u8> {
    let (s, d) = (ip6("fe80::1"), ip6("ff02::12"));
    let msg = frame::vrrp(3, vrid, 100, 100, &[ip6("fd48:4c42::100")], s, d);
    frame::ip(Eth::default(), s, d, hop_limit, 112, &msg)
}

fn loaded() -> Bpf {
    let mut bpf = Bpf::load(tracing::Level::WARN).expect("load eBPF object");
    bpf.xdp(PROG_VRRP_FILTER).expect("verifier accepts the VRRP filter");
    set_vrids(&mut bpf, &vrids(LO)).unwrap();
    bpf
}

fn run(bpf: &mut Bpf, f: &[u8]) -> (XdpAction, Vec<u8>) {
    let prog = bpf.xdp(PROG_VRRP_FILTER).unwrap();
    let r = run_xdp(prog, f, LO, 1).unwrap();
    (r.action, r.frame)
}

fn delta(after: VrrpFilterCounters, before: VrrpFilterCounters) -> Vec<(&'static str, u64)> {
    after
        .named()
        .zip(before.named())
        .map(|((n, a), (_, b))| (n, a - b))
        .filter(|(_, d)| *d > 0)
        .collect()
}

#[test]
fn each_verdict_drops_or_passes_and_counts_its_reason() {
    let mut bpf = loaded();
    let mut truncated = adv4(3, 51, 255);
    truncated.truncate(14 + 20 + 5);
    // IPv4 header with IHL 4 (< 20 bytes): malformed.
    let mut bad_ihl = adv4(3, 51, 255);
    bad_ihl[14] = 0x44;
    let cases: Vec<(&str, Vec<u8>, XdpAction, Option<VrrpCounter>)> = vec![
        ("good v3", adv4(3, 51, 255), XdpAction::Pass, Some(VrrpCounter::Passed)),
        ("good v2 where v2 allowed", adv4(2, 52, 255), XdpAction::Pass, Some(VrrpCounter::Passed)),
        ("ttl 254", adv4(3, 51, 254), XdpAction::Drop, Some(VrrpCounter::BadTtl)),
        ("ttl 1", adv4(3, 51, 1), XdpAction::Drop, Some(VrrpCounter::BadTtl)),
        ("v2 where only v3", adv4(2, 51, 255), XdpAction::Drop, Some(VrrpCounter::BadVersion)),
        ("unknown vrid", adv4(3, 99, 255), XdpAction::Drop, Some(VrrpCounter::UnknownVrid)),
        ("truncated", truncated, XdpAction::Drop, Some(VrrpCounter::Truncated)),
        ("ihl < 5", bad_ihl, XdpAction::Drop, Some(VrrpCounter::Truncated)),
        ("good v6", adv6(51, 255), XdpAction::Pass, Some(VrrpCounter::Passed)),
        ("v6 hop limit 64", adv6(51, 64), XdpAction::Drop, Some(VrrpCounter::BadTtl)),
        (
            "v6 vrid only configured for v4",
            adv6(52, 255),
            XdpAction::Drop,
            Some(VrrpCounter::UnknownVrid),
        ),
        (
            "udp is not ours",
            frame::udp(
                Eth::default(),
                "198.18.0.1:5000".parse().unwrap(),
                "198.18.0.2:53".parse().unwrap(),
                b"x",
            ),
            XdpAction::Pass,
            None,
        ),
        // BPF_PROG_TEST_RUN refuses input shorter than an Ethernet header, so the shortest
        // runt is an IPv4-typed Ethernet header with no IP header behind it.
        ("ethernet header only", adv4(3, 51, 255)[..14].to_vec(), XdpAction::Pass, None),
        ("ip header cut short", adv4(3, 51, 255)[..14 + 12].to_vec(), XdpAction::Pass, None),
    ];
    for (name, f, want, counter) in cases {
        let before = counters(&bpf).unwrap();
        let (got, out) = run(&mut bpf, &f);
        assert_eq!(got, want, "{name}: verdict");
        if got == XdpAction::Pass {
            assert_eq!(out, f, "{name}: a passed frame is untouched");
        }
        let d = delta(counters(&bpf).unwrap(), before);
        match counter {
            Some(c) => assert_eq!(d, vec![(c.name(), 1)], "{name}: counters"),
            None => assert!(d.is_empty(), "{name}: counted {d:?}"),
        }
    }
}

/// Unicast peers may be routed, so keepalived checks TTL 255 only for instances without
/// them: an advert with TTL / hop limit 64 passes on a VRID flagged unicast and is dropped as
/// bad_ttl on a multicast one. The other checks still apply to unicast VRIDs.
#[test]
fn ttl_is_checked_only_for_multicast_vrids() {
    let mut bpf = loaded();
    let unicast = VrrpVridValue { versions: version_bit(3), unicast: 1, ..Default::default() };
    let mut wanted = vrids(LO);
    wanted.insert(VrrpVridKey::new(LO, 53, FAMILY_V4), unicast);
    wanted.insert(VrrpVridKey::new(LO, 53, FAMILY_V6), unicast);
    set_vrids(&mut bpf, &wanted).unwrap();
    let cases = [
        ("unicast, ttl 64", adv4(3, 53, 64), XdpAction::Pass, VrrpCounter::Passed),
        ("unicast, ttl 255", adv4(3, 53, 255), XdpAction::Pass, VrrpCounter::Passed),
        ("unicast, v6 hop limit 64", adv6(53, 64), XdpAction::Pass, VrrpCounter::Passed),
        ("multicast, ttl 64", adv4(3, 51, 64), XdpAction::Drop, VrrpCounter::BadTtl),
        ("multicast, v6 hop limit 64", adv6(51, 64), XdpAction::Drop, VrrpCounter::BadTtl),
        (
            "unicast, ttl 64, wrong version",
            adv4(2, 53, 64),
            XdpAction::Drop,
            VrrpCounter::BadVersion,
        ),
    ];
    for (name, f, want, counter) in cases {
        let before = counters(&bpf).unwrap();
        assert_eq!(run(&mut bpf, &f).0, want, "{name}: verdict");
        assert_eq!(delta(counters(&bpf).unwrap(), before), vec![(counter.name(), 1)], "{name}");
    }
}

#[test]
fn bad_version_and_type_are_dropped() {
    let mut bpf = loaded();
    for (byte0, reason) in [
        (0x41u8, VrrpCounter::BadVersion),
        (0x11, VrrpCounter::BadVersion),
        (0x32, VrrpCounter::BadType),
    ] {
        let mut f = adv4(3, 51, 255);
        f[14 + 20] = byte0;
        let before = counters(&bpf).unwrap();
        assert_eq!(run(&mut bpf, &f).0, XdpAction::Drop, "byte0 {byte0:#x}");
        assert_eq!(delta(counters(&bpf).unwrap(), before), vec![(reason.name(), 1)]);
    }
}

#[test]
fn vrid_map_follows_the_configuration() {
    let mut bpf = loaded();
    assert_eq!(run(&mut bpf, &adv4(3, 51, 255)).0, XdpAction::Pass);
    // Reconfigure: VRID 51 gone, 60 added; 52 stays.
    let mut wanted = BTreeMap::new();
    wanted.insert(
        VrrpVridKey::new(LO, 60, FAMILY_V4),
        VrrpVridValue { versions: version_bit(3), ..Default::default() },
    );
    wanted.insert(
        VrrpVridKey::new(LO, 52, FAMILY_V4),
        VrrpVridValue { versions: version_bit(3), ..Default::default() },
    );
    set_vrids(&mut bpf, &wanted).unwrap();
    assert_eq!(run(&mut bpf, &adv4(3, 51, 255)).0, XdpAction::Drop);
    assert_eq!(run(&mut bpf, &adv4(3, 60, 255)).0, XdpAction::Pass);
    assert_eq!(run(&mut bpf, &adv4(2, 52, 255)).0, XdpAction::Drop, "52 now v3 only");
    assert_eq!(run(&mut bpf, &adv4(3, 52, 255)).0, XdpAction::Pass);
}

/// Real frames on a veth: only well-formed adverts for configured VRIDs reach a raw VRRP
/// socket on the filtered side, and the counters say why the others did not.
#[test]
fn lab_filter_on_veth_drops_bad_adverts_before_the_stack() {
    let mut lab = Lab::new().unwrap();
    let a = lab.node("a").unwrap();
    let b = lab.node("b").unwrap();
    lab.veth(&a, "eth0", &b, "eth0").unwrap();
    a.addr("eth0", "198.18.0.1/24").unwrap();
    b.addr("eth0", "198.18.0.2/24").unwrap();
    let b_mac = b.mac("eth0").unwrap();
    let a_mac = a.mac("eth0").unwrap();
    let b_if = b.ifindex("eth0").unwrap();

    // Load and attach inside b; the raw VRRP socket lives in b too.
    let (mut bpf, mode, sock) = b
        .run(|| {
            let mut bpf = Bpf::load(tracing::Level::WARN).unwrap();
            let (_, mode) = bpf.attach_xdp(PROG_VRRP_FILTER, "eth0").unwrap();
            set_vrids(&mut bpf, &vrids(b_if)).unwrap();
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(112)),
            )
            .unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            (bpf, mode, sock)
        })
        .unwrap();
    assert_eq!(mode, AttachMode::Native, "veth supports native XDP");

    let eth = Eth { src: a_mac, dst: b_mac };
    let (s, d) = (ip4("198.18.0.1"), ip4("198.18.0.2"));
    let mk = |version: u8, vrid: u8, ttl: u8| {
        let msg = frame::vrrp(version, vrid, 100, 100, &[ip4("198.18.0.100")], s, d);
        frame::ip(eth, s, d, ttl, 112, &msg)
    };
    let frames = vec![
        (mk(3, 51, 255), true),
        (mk(3, 51, 64), false),
        (mk(3, 77, 255), false),
        (mk(2, 51, 255), false),
        (mk(2, 52, 255), true),
        (mk(3, 51, 255), true),
    ];
    a.run(|| {
        let ps = PacketSocket::open("eth0").unwrap();
        for (f, _) in &frames {
            ps.send(f).unwrap();
        }
    })
    .unwrap();

    // Exactly the good ones arrive, in order, byte for byte (the raw socket gives the IP
    // packet with its header).
    let mut got = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while let Ok(n) = sock.recv(&mut buf) {
        // SAFETY: recv initialised the first n bytes.
        got.push(buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect::<Vec<u8>>());
    }
    let want: Vec<Vec<u8>> =
        frames.iter().filter(|(_, ok)| *ok).map(|(f, _)| f[14..].to_vec()).collect();
    assert_eq!(got.len(), want.len(), "adverts delivered to the VRRP socket");
    for (g, w) in got.iter().zip(&want) {
        // The kernel rewrites the IPv4 total length into host order on raw receive in some
        // versions; compare everything after the IP header plus src/dst/ttl.
        assert_eq!(&g[20..], &w[20..], "VRRP message");
        assert_eq!(g[8], 255, "ttl");
        assert_eq!(&g[12..20], &w[12..20], "addresses");
    }
    let c = counters(&bpf).unwrap();
    assert_eq!(c.get(VrrpCounter::Passed), 3);
    assert_eq!(c.get(VrrpCounter::BadTtl), 1);
    assert_eq!(c.get(VrrpCounter::UnknownVrid), 1);
    assert_eq!(c.get(VrrpCounter::BadVersion), 1);
    // Detach: the same bad frame now reaches the stack (and the socket) unfiltered.
    drop(bpf.xdp(PROG_VRRP_FILTER));
    drop(bpf);
    a.run(|| PacketSocket::open("eth0").unwrap().send(&mk(3, 77, 255)).unwrap()).unwrap();
    let n = sock.recv(&mut buf).expect("unfiltered after detach");
    assert!(n > 20);
    drop(lab);
}
