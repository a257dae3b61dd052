//! `ha_lb_tc` (the data path at the TC ingress hook, `dataplane = "tc"`) against `ha_lb_xdp`
//! through BPF_PROG_TEST_RUN, inside a lab node (see `xdp_support`): the same source compiled
//! for both hooks must make the same decision and the same bytes of every frame. Two data
//! planes (two loaded objects, so two sets of maps) get the same services and the same frames
//! in the same order, on one pinned CPU.
//!
//! A test run's socket buffer carries no checksum state (CHECKSUM_NONE), so the kernel's
//! checksum helpers the TC build uses must update full checksums exactly as the XDP build's
//! own arithmetic does. The CHECKSUM_PARTIAL case (a local socket's packet on a veth) needs
//! real sockets: `xdp_lab`'s `lab_tc_*` tests cover it.

mod xdp_support;

use std::collections::BTreeMap;

use ha_lb::{
    bpf::{
        lb as maps,
        testrun::{
            run_tc, run_tc_gso, run_xdp, XdpAction, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
        },
        Bpf, PROG_LB, PROG_LB_TC,
    },
    dataplane::{
        xdp::{Hook, XdpDataplane},
        Dataplane, DesiredState, LbAlgo, LbKind, Protocol, ServiceSpec,
    },
};
use ha_lb_lab::{
    frame::{self, Eth, TcpFlags},
    packet::PacketSocket,
};
use xdp_support::*;

struct Both {
    xdp: XdpDataplane,
    tc: XdpDataplane,
}

impl Both {
    /// Both data planes with `state`, each counting as attached to the interfaces `ifaces`
    /// (ifindex, MAC), as the daemon's attach records them (XDP redirects only to those).
    fn new(state: &DesiredState, ifaces: &[(u32, [u8; 6])]) -> Both {
        let load = || Bpf::load(tracing::Level::WARN).expect("load eBPF object");
        let mut xdp = XdpDataplane::with_hook(load(), Hook::Xdp).expect("verifier: ha_lb_xdp");
        let mut tc = XdpDataplane::with_hook(load(), Hook::Tc).expect("verifier: ha_lb_tc");
        for dp in [&mut xdp, &mut tc] {
            dp.apply(state).unwrap();
            for &(i, mac) in ifaces {
                maps::set_interface_mac(dp.bpf_mut(), i, Some(mac)).unwrap();
            }
        }
        Both { xdp, tc }
    }

    /// Runs `f` through both programs as received on `ifindex`; asserts the same verdict and
    /// the same bytes; returns (TC verdict, frame).
    fn run(&mut self, what: &str, ifindex: u32, f: &[u8]) -> (i32, Vec<u8>) {
        let x = run_xdp(self.xdp.bpf_mut().xdp(PROG_LB).unwrap(), f, ifindex, 1).unwrap();
        let t = run_tc(self.tc.bpf_mut().classifier(PROG_LB_TC).unwrap(), f, ifindex, 1)
            .unwrap_or_else(|e| panic!("{what}: {e:?} ({} bytes)", f.len()));
        let want = match x.action {
            XdpAction::Redirect | XdpAction::Tx => TC_ACT_REDIRECT,
            XdpAction::Pass => TC_ACT_UNSPEC,
            XdpAction::Drop => TC_ACT_SHOT,
            a => panic!("{what}: XDP verdict {a:?}"),
        };
        assert_eq!(t.action, want, "{what}: TC verdict (XDP: {:?})", x.action);
        assert_eq!(hex(&t.frame), hex(&x.frame), "{what}: bytes differ between TC and XDP");
        (t.action, t.frame)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn state() -> DesiredState {
    let mut services = BTreeMap::new();
    let mut add = |vip: &str, proto, kind, addrs: &[&str], port| {
        let mut spec = ServiceSpec::new(LbAlgo::Rr, kind);
        spec.real_servers = reals(addrs, port, &vec![1; addrs.len()]);
        services.insert(vs(vip, proto), spec);
    };
    add("198.18.100.1:80", Protocol::Tcp, LbKind::Nat, &["198.18.2.10", "198.18.2.11"], 8080);
    add("198.18.100.1:53", Protocol::Udp, LbKind::Nat, &["198.18.2.12"], 5353);
    add("[fd48:4c42:100::1]:80", Protocol::Tcp, LbKind::Nat, &["fd48:4c42:2::10"], 8080);
    add("[fd48:4c42:100::1]:53", Protocol::Udp, LbKind::Nat, &["fd48:4c42:2::11"], 53);
    add("198.18.100.2:80", Protocol::Tcp, LbKind::Dr, &["198.18.2.13"], 80);
    add("198.18.100.6:80", Protocol::Tcp, LbKind::Tun, &["198.18.2.14"], 80);
    add("198.18.100.6:53", Protocol::Udp, LbKind::Tun, &["198.18.2.14"], 53);
    add("[fd48:4c42:100::6]:80", Protocol::Tcp, LbKind::Tun, &["fd48:4c42:2::14"], 80);
    add("[fd48:4c42:100::6]:53", Protocol::Udp, LbKind::Tun, &["fd48:4c42:2::14"], 53);
    // Behind a route with a smaller MTU than its device's (see the test).
    add("198.18.100.3:53", Protocol::Udp, LbKind::Nat, &["198.18.2.15"], 53);
    DesiredState { services }
}

#[test]
fn tc_and_xdp_forward_every_frame_identically() {
    let env = env();
    let (eth0, eth1, mac0, mac1) = (env.eth0, env.eth1, env.mac0, env.mac1);
    env.d.sh("ip route add 198.18.2.15/32 dev eth1 mtu lock 1400").unwrap();
    env.d
        .run(move || {
            pin_to_cpu0();
            let mut b = Both::new(&state(), &[(eth0, mac0), (eth1, mac1)]);
            let ce = Eth { src: [0x02, 0xcc, 0, 0, 0, 1], dst: mac0 };
            let mut forwarded = 0;

            // NAT TCP and UDP, IPv4 and IPv6, both directions, over many tuples and payload
            // lengths (odd ones pad the checksum); repeated segments take the flow cache.
            for i in 0..120u32 {
                let payload = vec![(i % 251) as u8; (i * 13 % 97) as usize];
                let c4 = client(i * 3 + 1, 1024 + (i as u16) * 7);
                let c6 = sa(&format!("[fd48:4c42:64::{:x}]:{}", i + 1, 2000 + i));
                let cases = [
                    (c4, sa("198.18.100.1:80"), true),
                    (c4, sa("198.18.100.1:53"), false),
                    (c6, sa("[fd48:4c42:100::1]:80"), true),
                    (c6, sa("[fd48:4c42:100::1]:53"), false),
                ];
                for (c, vip, tcp) in cases {
                    let mk = |e: Eth, from, to, flags| {
                        if tcp {
                            frame::tcp(e, from, to, flags, i, &payload)
                        } else {
                            frame::udp(e, from, to, &payload)
                        }
                    };
                    let what = format!("flow {i} {c} -> {vip}");
                    let mut rs = None;
                    for (n, flags) in
                        [TcpFlags::SYN, TcpFlags::ACK, TcpFlags::ACK].iter().enumerate()
                    {
                        let (a, f) = b.run(&format!("{what} #{n}"), eth0, &mk(ce, c, vip, *flags));
                        assert_eq!(a, TC_ACT_REDIRECT, "{what}: forwarded");
                        let p = frame::check(&f).unwrap_or_else(|e| panic!("{what}: {e}"));
                        rs = Some(std::net::SocketAddr::new(p.dst, p.dport));
                        forwarded += 1;
                    }
                    let rs = rs.unwrap();
                    let se = Eth { src: rs_mac(2, 10), dst: mac1 };
                    for n in 0..2 {
                        let (a, f) = b.run(
                            &format!("{what} reply #{n}"),
                            eth1,
                            &mk(se, rs, c, TcpFlags::ACK),
                        );
                        assert_eq!(a, TC_ACT_REDIRECT, "{what}: reply forwarded");
                        let p = frame::check(&f).unwrap_or_else(|e| panic!("{what} reply: {e}"));
                        assert_eq!((p.src, p.sport), (vip.ip(), vip.port()), "{what}: SNAT");
                        forwarded += 1;
                    }
                    if tcp {
                        b.run(&format!("{what} FIN"), eth0, &mk(ce, c, vip, TcpFlags::FIN_ACK));
                    }
                }
            }

            // UDP over IPv4 without a checksum (0) keeps none.
            let mut z = frame::udp(ce, client(7, 999), sa("198.18.100.1:53"), b"query");
            z[40] = 0;
            z[41] = 0;
            let (_, f) = b.run("udp checksum 0", eth0, &z);
            assert_eq!(&f[40..42], &[0, 0]);

            // UDP over IPv6 whose translated checksum computes to 0: sent as all ones (0 is
            // "no checksum", invalid over IPv6). The last two payload bytes are chosen so.
            let (c6, vip6) = (sa("[fd48:4c42:64::99]:4444"), sa("[fd48:4c42:100::1]:53"));
            let rs6 = sa("[fd48:4c42:2::11]:53");
            let zero = (0..=u16::MAX)
                .map(|v| {
                    let mut p = b"checksum zero".to_vec();
                    p.extend_from_slice(&v.to_be_bytes());
                    p
                })
                .find(|p| {
                    let f = frame::udp(Eth { src: mac1, dst: rs_mac(2, 11) }, c6, rs6, p);
                    f[60..62] == [0xff, 0xff]
                })
                .expect("a payload whose translated UDP checksum is 0");
            let (_, f) = b.run("udp6 checksum 0", eth0, &frame::udp(ce, c6, vip6, &zero));
            assert_eq!(&f[60..62], &[0xff, 0xff], "computed 0 sent as all ones");
            frame::check(&f).expect("valid");

            // A datagram longer than the egress MTU (1500) on a flow whose next hop is cached
            // (at TC for lengths up to that MTU): looked up and checked again, so both
            // builds pass it translated for the kernel to fragment (no DF), rather than
            // redirect it oversize.
            let (cb, vip4) = (client(500, 6000), sa("198.18.100.1:53"));
            let (a, _) = b.run("mtu: small first", eth0, &frame::udp(ce, cb, vip4, b"small"));
            assert_eq!(a, TC_ACT_REDIRECT);
            let big = without_df(&frame::udp(ce, cb, vip4, &[7u8; 1600]));
            let (a, f) = b.run("mtu: too long", eth0, &big);
            assert_eq!(a, TC_ACT_UNSPEC, "passed (translated) to the kernel, not redirected");
            let p = frame::check(&f).expect("translated with valid checksums");
            assert_eq!(p.dst, ip("198.18.2.12"));

            // Too long for the path with DF (IPv4) or over IPv6: both builds answer the sender
            // with the same ICMP error (the TC build makes room and cuts the socket buffer
            // instead of moving the frame's start), back out of the interface it came in on.
            let df = frame::udp(ce, client(501, 6001), vip4, &[9u8; 1600]);
            assert_eq!(df[20] & 0x40, 0x40, "DF set");
            let (a, f) = b.run("mtu: too long, DF", eth0, &df);
            assert_eq!(a, TC_ACT_REDIRECT, "answered");
            assert_eq!((f.len(), f[23], f[34], f[35]), (82, 1, 3, 4), "fragmentation needed");
            assert_eq!(&f[42..62], &df[14..34], "quoting the IPv4 header");
            assert_quoted_l4(&f[62..82], &df[34..54], 6);
            // Within the kernel's slack for a VLAN tag (IP length 1502 on a 1500 MTU), which its
            // check of a socket buffer would let through: answered at both hooks.
            let slack = frame::udp(ce, client(502, 6002), vip4, &[4u8; 1474]);
            assert_eq!(slack.len() - 14, 1502);
            let (a, f) = b.run("mtu: 2 bytes too long, DF", eth0, &slack);
            assert_eq!((a, f[34]), (TC_ACT_REDIRECT, 3), "answered");
            // The route's MTU (1400, locked), not the device's, at both hooks.
            let routed = frame::udp(ce, client(503, 6003), sa("198.18.100.3:53"), &[5u8; 1400]);
            let (a, f) = b.run("mtu: route's", eth0, &routed);
            assert_eq!((a, f[34]), (TC_ACT_REDIRECT, 3), "answered");
            assert_eq!(u16::from_be_bytes([f[40], f[41]]), 1400, "the route's MTU");
            let (c6, vip6) = (sa("[fd48:4c42:64::5]:7000"), sa("[fd48:4c42:100::1]:53"));
            let big6 = frame::udp(ce, c6, vip6, &[3u8; 1500]);
            let (a, f) = b.run("mtu: too long, IPv6", eth0, &big6);
            assert_eq!(a, TC_ACT_REDIRECT, "answered");
            assert_eq!((f.len(), f[20], f[54]), (122, 58, 2), "packet too big");
            let dr_big = frame::tcp(
                ce,
                client(4, 4001),
                sa("198.18.100.2:80"),
                TcpFlags::SYN,
                1,
                &[1; 1480],
            );
            let (a, f) = b.run("mtu: too long, DR", eth0, &dr_big);
            assert_eq!((a, f[34]), (TC_ACT_REDIRECT, 3), "answered");

            // TUN: IPIP toward the real server, TCP (first and cached segments) and UDP.
            for (n, flags) in [TcpFlags::SYN, TcpFlags::ACK, TcpFlags::ACK].iter().enumerate() {
                let t = frame::tcp(ce, client(5, 4100), sa("198.18.100.6:80"), *flags, 1, b"tun");
                let (a, f) = b.run(&format!("tun tcp #{n}"), eth0, &t);
                assert_eq!(a, TC_ACT_REDIRECT);
                assert_eq!((f.len(), f[23]), (t.len() + 20, 4), "IPIP");
                assert_eq!(frame::inet_checksum(&[&f[14..34]]), 0, "outer header checksum");
                assert_eq!(&f[34..], &t[14..], "the packet itself, unchanged inside");
                assert_eq!(&f[0..6], &rs_mac(2, 14));
            }
            let u = frame::udp(ce, client(5, 4101), sa("198.18.100.6:53"), b"tun udp");
            let (a, f) = b.run("tun udp", eth0, &u);
            assert_eq!((a, f[23]), (TC_ACT_REDIRECT, 4));
            // 1488 bytes of IP fit eth1 (1500) but not once encapsulated: answered (DF) with
            // the MTU left for the client, or dropped (no DF).
            let t = frame::udp(ce, client(5, 4102), sa("198.18.100.6:53"), &[2u8; 1460]);
            assert_eq!(t.len() - 14, 1488);
            let (a, f) = b.run("tun: too long once encapsulated", eth0, &t);
            assert_eq!((a, f.len(), f[34]), (TC_ACT_REDIRECT, 82, 3), "answered");
            assert_eq!(u16::from_be_bytes([f[40], f[41]]), 1480, "next-hop MTU less 20");
            let (a, _) = b.run("tun: too long, no DF", eth0, &without_df(&t));
            assert_eq!(a, TC_ACT_SHOT);
            // IPv6 in IPv6 likewise (next header 41, 40 bytes more; "packet too big" with the
            // MTU less 40).
            let (c6, tun6) = (sa("[fd48:4c42:64::6]:4100"), sa("[fd48:4c42:100::6]:80"));
            for (n, flags) in [TcpFlags::SYN, TcpFlags::ACK, TcpFlags::ACK].iter().enumerate() {
                let t = frame::tcp(ce, c6, tun6, *flags, 1, b"tun6");
                let (a, f) = b.run(&format!("tun6 tcp #{n}"), eth0, &t);
                assert_eq!(a, TC_ACT_REDIRECT);
                assert_eq!((f.len(), &f[12..14], f[20]), (t.len() + 40, &[0x86, 0xdd][..], 41));
                assert_eq!(&f[54..], &t[14..], "the packet itself, unchanged inside");
                assert_eq!(&f[0..6], &rs_mac(2, 14));
            }
            let u = frame::udp(ce, sa("[fd48:4c42:64::6]:4101"), sa("[fd48:4c42:100::6]:53"), b"u");
            let (a, f) = b.run("tun6 udp", eth0, &u);
            assert_eq!((a, f[20]), (TC_ACT_REDIRECT, 41));
            let t = frame::udp(
                ce,
                sa("[fd48:4c42:64::6]:4102"),
                sa("[fd48:4c42:100::6]:53"),
                &[2; 1440],
            );
            assert_eq!(t.len() - 14, 1488);
            let (a, f) = b.run("tun6: too long once encapsulated", eth0, &t);
            assert_eq!((a, f.len(), f[54]), (TC_ACT_REDIRECT, 122, 2), "packet too big");
            assert_eq!(u32::from_be_bytes(f[58..62].try_into().unwrap()), 1460, "MTU less 40");

            // GSO packets (TC only: XDP never sees one): checked by their segments' length
            // against the route's MTU, not by their own (longer than any MTU) or the device's.
            // A UDP flow to the real server behind the 1400-byte route: 2800 bytes of payload
            // in 1000-byte segments (1028 bytes of IP each) fit; in 1380-byte ones (1408) they
            // do not, and the packet (DF) is answered, cut to the quote first (which ends the
            // GSO), with the route's MTU.
            let tc = b.tc.bpf_mut().classifier(PROG_LB_TC).unwrap();
            let gso = frame::udp(ce, client(504, 6004), sa("198.18.100.3:53"), &[6u8; 2800]);
            let r = run_tc_gso(tc, &gso, eth0, 1000).unwrap();
            assert_eq!(r.action, TC_ACT_REDIRECT, "segments of 1028 bytes fit the 1400 route");
            assert_eq!(frame::check(&r.frame).unwrap().dst, ip("198.18.2.15"));
            // The flow's packets after the next (which fills this CPU's slot) come from the
            // flow cache: its route was checked for that segment length.
            let (hits, _) = maps::cache_stats(b.tc.bpf()).unwrap();
            for _ in 0..2 {
                let tc = b.tc.bpf_mut().classifier(PROG_LB_TC).unwrap();
                assert_eq!(run_tc_gso(tc, &gso, eth0, 1000).unwrap().action, TC_ACT_REDIRECT);
            }
            assert_eq!(maps::cache_stats(b.tc.bpf()).unwrap().0, hits + 1, "sent from the cache");
            let tc = b.tc.bpf_mut().classifier(PROG_LB_TC).unwrap();
            let gso = frame::udp(ce, client(505, 6005), sa("198.18.100.3:53"), &[6u8; 2800]);
            let r = run_tc_gso(tc, &gso, eth0, 1380).unwrap();
            let f = &r.frame;
            assert_eq!((r.action, f.len(), f[34], f[35]), (TC_ACT_REDIRECT, 82, 3, 4), "answered");
            assert_eq!(u16::from_be_bytes([f[40], f[41]]), 1400, "the route's MTU");
            assert_eq!(&f[42..62], &gso[14..34], "quoting the IPv4 header as sent");

            // DR: only the Ethernet header changes.
            let d = frame::tcp(ce, client(3, 4000), sa("198.18.100.2:80"), TcpFlags::SYN, 1, b"x");
            let (a, f) = b.run("dr", eth0, &d);
            assert_eq!(a, TC_ACT_REDIRECT);
            assert_eq!(&f[14..], &d[14..], "DR leaves the IP packet alone");
            assert_eq!(&f[0..6], &rs_mac(2, 13));

            // Not ours, and unusual frames: passed untouched by both.
            let other =
                frame::tcp(ce, client(3, 4000), sa("198.18.100.9:80"), TcpFlags::SYN, 1, b"");
            let mut options = other.clone();
            options[14] = 0x46;
            let mut fragment = frame::udp(ce, client(3, 4000), sa("198.18.100.1:53"), b"q");
            fragment[20] = 0x20; // more fragments
            let mut vlan = other.clone();
            vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
            // (A test run refuses an IPv4 frame shorter than its IP header: cut the TCP header.)
            let truncated = other[..40].to_vec();
            for (what, f) in [
                ("no service", &other),
                ("ipv4 options", &options),
                ("fragment", &fragment),
                ("vlan", &vlan),
                ("truncated", &truncated),
            ] {
                let (a, out) = b.run(what, eth0, f);
                assert_eq!(a, TC_ACT_UNSPEC, "{what}: passed on to the next program");
                assert_eq!(&out, f, "{what}: untouched");
            }
            assert!(forwarded >= 120 * 4 * 5);
        })
        .unwrap();
}

/// Found by review: at the TC hook the kernel has already taken a received 802.1Q tag out of
/// the frame (into the socket buffer's `vlan_tci`) and puts it back on at egress, so a tagged
/// SYN to a VIP looked untagged: it was NATed, redirected and left still tagged. It now passes
/// (on to the VLAN device), counted `vlan`. Real frames on a veth pair: a test run's socket
/// buffer keeps its tag in the frame, which the parser always passed.
#[test]
fn tc_passes_a_frame_whose_tag_the_kernel_took_out() {
    let env = env();
    let (c, s, d) = (env.lab.get("c").clone(), env.lab.get("s").clone(), env.d.clone());
    let mac0 = env.mac0;
    let dp = d
        .run(|| {
            let bpf = Bpf::load(tracing::Level::WARN).unwrap();
            let mut dp = XdpDataplane::with_hook(bpf, Hook::Tc).unwrap();
            dp.attach_interface("eth0").unwrap();
            dp.attach_interface("eth1").unwrap();
            let vip = "198.18.100.1:80";
            dp.apply(&rr_service(Protocol::Tcp, vip, LbKind::Nat, &["198.18.2.10"], 8080)).unwrap();
            dp
        })
        .unwrap();
    let capture = s.run(|| PacketSocket::open("eth0")).unwrap().unwrap();
    let tx = c.run(|| PacketSocket::open("eth0")).unwrap().unwrap();
    let eth = Eth { src: [0x02, 0xcc, 0, 0, 0, 9], dst: mac0 };
    let syn = |port| frame::tcp(eth, client(7, port), sa("198.18.100.1:80"), TcpFlags::SYN, 1, b"");
    let untagged = syn(41001);
    let plain = syn(41000);
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 100]);
    tagged.extend_from_slice(&plain[12..]);
    // A priority tag (VLAN ID 0, priority 5) marks no VLAN: the kernel takes the frame as
    // untagged, and so does the program, forwarding it without the tag.
    let plain = syn(41002);
    let mut priority = plain[..12].to_vec();
    priority.extend_from_slice(&[0x81, 0x00, 0xa0, 0]);
    priority.extend_from_slice(&plain[12..]);
    // An 802.1ad service tag of ID 0 is no priority tag: it passes like any tag.
    let plain = syn(41003);
    let mut service = plain[..12].to_vec();
    service.extend_from_slice(&[0x88, 0xa8, 0xa0, 0]);
    service.extend_from_slice(&plain[12..]);
    let before = maps::counters(dp.bpf()).unwrap();
    tx.send(&tagged).unwrap();
    // The same SYN untagged (another port): forwarded, so the set-up does forward.
    tx.send(&untagged).unwrap();
    tx.send(&priority).unwrap();
    tx.send(&service).unwrap();
    let to_real =
        |f: &[u8]| frame::check(f).is_ok_and(|p| p.dst == ip("198.18.2.10") && p.dport == 8080);
    let got = capture.drain(std::time::Duration::from_millis(500), to_real).unwrap();
    // (The kernel's own IPv6 chatter on the link is counted too: left out.)
    let counted: Vec<_> = maps::counters(dp.bpf())
        .unwrap()
        .since(&before)
        .into_iter()
        .filter(|(r, _)| ["nat_in", "vlan", "dr", "nat_out"].contains(r))
        .collect();
    assert_eq!(counted, vec![("nat_in", 3), ("vlan", 1)], "the VLAN-tagged SYN passed");
    let ports: Vec<u16> = got.iter().map(|f| frame::check(f).unwrap().sport).collect();
    assert_eq!(
        ports,
        [41001, 41002, 41003],
        "the untagged and priority-tagged SYNs reached the real server, untagged"
    );
    drop(dp);
}

/// Found by review: a VLAN-tagged VRRP advert reached `ha_lb_tc` on the parent device
/// (tag out of band) and went through the VRRP filter, which looked its VRID up under the
/// parent's ifindex: an advert for an instance on `eth0.100` was dropped on `eth0` as
/// `unknown_vrid`, that instance heard nothing and both nodes became MASTER. A tagged frame
/// now passes, counted `vlan`, without the filter (the VLAN device's own hook judges it). This
/// kernel has no 8021q module: the advert is tagged on the wire of a plain veth, whose receive
/// path takes the tag out of band just the same.
#[test]
fn tc_passes_a_tagged_vrrp_advert_without_the_vrrp_filter() {
    use ha_lb::bpf::vrrp_filter;
    use ha_lb_common::vrrp::{version_bit, VrrpVridKey, VrrpVridValue, FAMILY_V4};
    let env = env();
    let (c, d, eth0) = (env.lab.get("c").clone(), env.d.clone(), env.eth0);
    let dp = d
        .run(|| {
            let bpf = Bpf::load(tracing::Level::WARN).unwrap();
            let mut dp = XdpDataplane::with_hook(bpf, Hook::Tc).unwrap();
            dp.attach_interface("eth0").unwrap();
            dp.set_vrrp_filter(true).unwrap();
            // VRID 51 is configured, but for another interface (as for `eth0.100`).
            let vrids = BTreeMap::from([(
                VrrpVridKey::new(eth0 + 1000, 51, FAMILY_V4),
                VrrpVridValue { versions: version_bit(3), ..Default::default() },
            )]);
            vrrp_filter::set_vrids(dp.bpf_mut(), &vrids).unwrap();
            dp
        })
        .unwrap();
    let tx = c.run(|| PacketSocket::open("eth0")).unwrap().unwrap();
    let (s4, d4) = (ip("198.18.1.2"), ip("224.0.0.18"));
    let msg = frame::vrrp(3, 51, 100, 100, &[ip("198.18.1.100")], s4, d4);
    let eth = Eth { src: [0x02, 0xcc, 0, 0, 0, 9], dst: [0x01, 0x00, 0x5e, 0, 0, 0x12] };
    let plain = frame::ip(eth, s4, d4, 255, 112, &msg);
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 100]);
    tagged.extend_from_slice(&plain[12..]);
    let counted = |send: &[u8]| {
        let lb = maps::counters(dp.bpf()).unwrap();
        let vrrp = vrrp_filter::counters(dp.bpf()).unwrap();
        tx.send(send).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut out: Vec<(&str, u64)> = maps::counters(dp.bpf())
            .unwrap()
            .since(&lb)
            .into_iter()
            .filter(|(r, _)| *r == "vlan")
            .collect();
        let after = vrrp_filter::counters(dp.bpf()).unwrap();
        out.extend(after.named().zip(vrrp.named()).map(|((n, a), (_, b))| (n, a - b)));
        out.retain(|&(_, n)| n > 0);
        out
    };
    // Untagged, the same advert is the filter's, and it is not known on eth0.
    assert_eq!(counted(&plain), vec![("unknown_vrid", 1)], "the filter is on");
    assert_eq!(counted(&tagged), vec![("vlan", 1)], "the tagged advert passed, unfiltered");
    drop(dp);
}
