//! `ha_lb_xdp` packet paths through BPF_PROG_TEST_RUN (inside a lab node, see `xdp_support`):
//! NAT in/out (IPv4 and IPv6, TCP and UDP) with checksums verified by an independent parser,
//! DR MAC rewrite (TX and redirect), FIB failure handling, the malformed-frame corpus, chaining
//! into the VRRP filter, and the per-packet cost against the VRRP filter.

mod xdp_support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use ha_lb::{
    bpf::{
        lb as maps,
        testrun::{run_xdp, RunResult, XdpAction},
        vrrp_filter::{self, set_vrids},
        PROG_LB, PROG_VRRP_FILTER,
    },
    dataplane::{Dataplane, DesiredState, LbAlgo, LbKind, Protocol},
};
use ha_lb_common::{
    lb::{LbFlowKey, LbReason, LB_FLOW_F_CLOSED, LB_FLOW_F_REPLY},
    vrrp::{version_bit, VrrpCounter, VrrpVridKey, VrrpVridValue, FAMILY_V4},
};
use ha_lb_lab::frame::{self, inet_checksum, TcpFlags};
use xdp_support::*;

#[test]
fn nat_in_and_out_rewrite_addresses_ports_macs_and_checksums() {
    let env = env();
    let gw_mac = env.gw_mac;
    let mac1 = env.mac1;
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.1:80", LbKind::Nat, &["198.18.2.10"], 8080);
        let c = client(5, 40000);
        // Odd-length payload: the checksum's trailing byte is padded.
        let syn = frame::tcp(t.client_eth(), c, vip, TcpFlags::SYN, 7, b"hello");
        let r = t.expect_from_client(
            &syn,
            XdpAction::Redirect,
            LbReason::NatIn,
            "egress eth1 != ingress eth0",
        );
        let p = frame::check(&r.frame).expect("checksums valid after DNAT");
        assert_eq!((p.src, p.sport), (c.ip(), c.port()), "source untouched");
        assert_eq!((p.dst, p.dport), (ip("198.18.2.10"), 8080), "DNAT to the real server");
        assert_eq!(p.eth.src, mac1, "leaves by eth1");
        assert_eq!(p.eth.dst, rs_mac(2, 10), "to the real server's MAC");
        assert_eq!(p.ttl, 64, "TTL unchanged, as IPVS");
        assert_eq!(p.payload, b"hello");
        assert_eq!(r.frame.len(), syn.len());

        // The reply, as the real server sends it, arriving on eth1.
        let rs_eth = frame::Eth { src: rs_mac(2, 10), dst: mac1 };
        let synack = frame::tcp(rs_eth, sa("198.18.2.10:8080"), c, TcpFlags::ACK, 9, b"world!");
        let r = t.expect_on(t.eth1, &synack, XdpAction::Redirect, LbReason::NatOut, "reply");
        let p = frame::check(&r.frame).expect("checksums valid after SNAT");
        assert_eq!((p.src, p.sport), (vip.ip(), vip.port()), "SNAT back to the VIP");
        assert_eq!((p.dst, p.dport), (c.ip(), c.port()));
        assert_eq!((p.eth.src, p.eth.dst), (t.mac0, gw_mac), "toward the client's gateway");

        // Checksums hold for many tuples and payload sizes (incremental update vs. recompute).
        for i in 0..300u32 {
            let c = client(i * 7 + 1, 1024 + (i as u16) * 131);
            let payload = vec![(i % 251) as u8; (i % 67) as usize];
            let f = frame::tcp(t.client_eth(), c, vip, TcpFlags::SYN, i, &payload);
            let r = t.send_from_client(&f);
            let p = frame::check(&r.frame).unwrap_or_else(|e| panic!("flow {i}: {e}"));
            assert_eq!(p.dst, ip("198.18.2.10"));
            let back = frame::tcp(rs_eth, sa("198.18.2.10:8080"), c, TcpFlags::ACK, i, &payload);
            let r = t.send_from_servers(&back);
            let p = frame::check(&r.frame).unwrap_or_else(|e| panic!("reply {i}: {e}"));
            assert_eq!((p.src, p.dst), (vip.ip(), c.ip()));
        }
    });
}

#[test]
fn nat_udp_keeps_a_zero_checksum_and_fixes_a_real_one() {
    let env = env();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Udp, "198.18.100.1:53", LbKind::Nat, &["198.18.2.11"], 5353);
        let c = client(9, 5000);
        let f = frame::udp(t.client_eth(), c, vip, b"query");
        let r = t.send_from_client(&f);
        assert_eq!(r.action, XdpAction::Redirect);
        let p = frame::check(&r.frame).expect("UDP checksum valid after DNAT");
        assert_eq!((p.dst, p.dport), (ip("198.18.2.11"), 5353));
        assert_ne!(&r.frame[40..42], &[0, 0], "a real checksum stays a real checksum");

        // UDP over IPv4 with checksum 0 ("none"): stays 0 (RFC 768).
        let mut z = frame::udp(t.client_eth(), client(10, 5001), vip, b"query");
        z[40] = 0;
        z[41] = 0;
        let r = t.send_from_client(&z);
        assert_eq!(r.action, XdpAction::Redirect);
        assert_eq!(&r.frame[40..42], &[0, 0], "zero checksum kept");
        frame::check(&r.frame).expect("IPv4 header checksum valid");

        // Reply path.
        let rs_eth = t.server_eth(11);
        let back = frame::udp(rs_eth, sa("198.18.2.11:5353"), c, b"answer");
        let r = t.send_from_servers(&back);
        assert_eq!(r.action, XdpAction::Redirect);
        let p = frame::check(&r.frame).expect("UDP checksum valid after SNAT");
        assert_eq!((p.src, p.sport), (vip.ip(), 53));
    });
}

#[test]
fn nat_ipv6_in_and_out() {
    let env = env();
    let d = env.d.clone();
    let gw_mac = env.gw_mac;
    env.run(|t| {
        let vip = sa("[fd48:4c42:100::1]:443");
        for proto in [Protocol::Tcp, Protocol::Udp] {
            t.apply(&one_service(
                vs("[fd48:4c42:100::1]:443", proto),
                LbAlgo::Mh,
                LbKind::Nat,
                reals(&["fd48:4c42:2::10"], 8443, &[1]),
            ));
            let c = sa("[fd48:4c42:64::77]:50000");
            let f = match proto {
                Protocol::Tcp => frame::tcp(t.client_eth(), c, vip, TcpFlags::SYN, 1, b"v6!"),
                Protocol::Udp => frame::udp(t.client_eth(), c, vip, b"v6!"),
            };
            let r = t.send_from_client(&f);
            assert_eq!(r.action, XdpAction::Redirect, "{proto:?}");
            let p = frame::check(&r.frame).expect("v6 checksum valid after DNAT");
            assert_eq!((p.dst, p.dport), (ip("fd48:4c42:2::10"), 8443));
            assert_eq!(p.eth.dst, rs_mac(2, 10));
            assert_eq!(p.ttl, 64, "hop limit unchanged");
            let rs_eth = t.server_eth(10);
            let back = match proto {
                Protocol::Tcp => {
                    frame::tcp(rs_eth, sa("[fd48:4c42:2::10]:8443"), c, TcpFlags::ACK, 2, b"ok")
                }
                Protocol::Udp => frame::udp(rs_eth, sa("[fd48:4c42:2::10]:8443"), c, b"ok"),
            };
            let r = t.send_from_servers(&back);
            assert_eq!(r.action, XdpAction::Redirect);
            let p = frame::check(&r.frame).expect("v6 checksum valid after SNAT");
            assert_eq!((p.src, p.sport, p.dst), (vip.ip(), 443, c.ip()));
            assert_eq!(p.eth.dst, gw_mac);
        }

        // Too long for the real server's side: answered with ICMPv6 "packet too big"
        // quoting the packet as the client sent it (IPv6 routers never fragment).
        d.sh("ip link set eth1 mtu 1280").unwrap();
        let c = sa("[fd48:4c42:64::78]:50001");
        let big = frame::udp(t.client_eth(), c, vip, &[5u8; 1300]);
        let r = t.expect_from_client(&big, XdpAction::Tx, LbReason::TooBigAnswered, "too big");
        let e = &r.frame;
        let (src, dst, q_src, q_dst, mac) = parse_icmp_error(e);
        assert_eq!((src, dst, q_src, q_dst), (vip.ip(), c.ip(), c, vip));
        assert_eq!(mac, big[6..12]);
        assert_eq!((e[54], e[55]), (2, 0), "packet too big");
        assert_eq!(u32::from_be_bytes([e[58], e[59], e[60], e[61]]), 1280);
        // The IPv6 header and 20 bytes (see fwd.rs QUOTE_L4), nothing after.
        assert_eq!(e.len(), 62 + 40 + 20);
        assert_eq!(e[62..102], big[14..54], "quoting the IPv6 header");
        assert_quoted_l4(&e[102..], &big[54..74], 6);
    });
}

#[test]
fn dr_rewrites_only_the_ethernet_header() {
    let env = env();
    let mac1 = env.mac1;
    env.run(|t| {
        // Real server on the same L2 as the client side: out the same interface (XDP_TX).
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.2:80", LbKind::Dr, &["198.18.1.20"], 80);
        let f = frame::tcp(t.client_eth(), client(1, 33000), vip, TcpFlags::SYN, 1, b"dr");
        let r = t.expect_from_client(&f, XdpAction::Tx, LbReason::Dr, "same L2 as the client");
        assert_eq!(&r.frame[..6], &rs_mac(1, 20), "destination MAC = real server");
        assert_eq!(&r.frame[6..12], &t.mac0, "source MAC = ours");
        assert_eq!(&r.frame[12..], &f[12..], "IP packet untouched (VIP stays the destination)");

        // Real server behind the other interface: redirect.
        t.serve_rr(Protocol::Tcp, "198.18.100.2:80", LbKind::Dr, &["198.18.2.20"], 80);
        let f = frame::tcp(t.client_eth(), client(2, 33000), vip, TcpFlags::SYN, 1, b"dr");
        let r = t.send_from_client(&f);
        assert_eq!(r.action, XdpAction::Redirect);
        assert_eq!((&r.frame[..6], &r.frame[6..12]), (&rs_mac(2, 20)[..], &mac1[..]));
        assert_eq!(&r.frame[12..], &f[12..]);

        // IPv6 DR.
        let vip6 = sa("[fd48:4c42:100::2]:80");
        t.apply(&one_service(
            vs("[fd48:4c42:100::2]:80", Protocol::Udp),
            LbAlgo::Sh,
            LbKind::Dr,
            reals(&["fd48:4c42:2::30"], 80, &[1]),
        ));
        let f = frame::udp(t.client_eth(), sa("[fd48:4c42:64::5]:999"), vip6, b"x");
        let r = t.send_from_client(&f);
        assert_eq!(r.action, XdpAction::Redirect);
        assert_eq!(&r.frame[..6], &rs_mac(2, 30));
        assert_eq!(&r.frame[12..], &f[12..]);
    });
}

/// Established flows take their next hop from their connection-tracking entry instead of a
/// `bpf_fib_lookup` per packet: a neighbour change reaches new flows at once and known flows
/// at the next once-a-second refresh; a packet longer than any the cached route was checked
/// for is looked up (MTU) again, and one too long for the path answered with ICMP
/// "fragmentation needed" (DF) or passed translated for the kernel to fragment.
#[test]
fn known_flows_use_the_cached_next_hop_until_it_is_refreshed() {
    let env = env();
    let d = env.d.clone();
    let gw_mac = env.gw_mac;
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Udp, "198.18.100.5:53", LbKind::Nat, &["198.18.2.12"], 53);
        let (old_rs, new_rs) = (rs_mac(2, 12), [2, 0, 0, 0, 9, 9]);
        let (old_gw, new_gw) = (gw_mac, [2, 0, 0, 0, 9, 10]);
        let c1 = client(20, 6000);
        let ceth = t.client_eth();
        let to_vip = |c, len: usize| frame::udp(ceth, c, vip, &vec![7u8; len]);
        let rs_eth = t.server_eth(12);
        let back = |c| frame::udp(rs_eth, sa("198.18.2.12:53"), c, b"answer");
        let dst_mac = |r: &RunResult| {
            assert_eq!(r.action, XdpAction::Redirect);
            frame::check(&r.frame).expect("checksums").eth.dst
        };
        let f1 = to_vip(c1, 10);
        let r = t.send_from_client(&f1);
        assert_eq!(dst_mac(&r), old_rs);
        assert_eq!(dst_mac(&t.send_from_servers(&back(c1))), old_gw);

        d.sh(&format!(
            "ip neigh replace 198.18.2.12 lladdr {} dev eth1 nud permanent\n\
             ip neigh replace 198.18.1.2 lladdr {} dev eth0 nud permanent",
            mac_str(new_rs),
            mac_str(new_gw)
        ))
        .unwrap();
        assert_eq!(dst_mac(&t.send_from_client(&f1)), old_rs, "known flow: cached next hop");
        assert_eq!(dst_mac(&t.send_from_servers(&back(c1))), old_gw, "its replies too");
        let c2 = client(21, 6000);
        assert_eq!(dst_mac(&t.send_from_client(&to_vip(c2, 10))), new_rs, "new flow: looked up");
        assert_eq!(dst_mac(&t.send_from_servers(&back(c2))), new_gw);

        std::thread::sleep(std::time::Duration::from_millis(1300));
        assert_eq!(dst_mac(&t.send_from_client(&f1)), new_rs, "refreshed after a second");
        assert_eq!(dst_mac(&t.send_from_servers(&back(c1))), new_gw);

        // A longer packet than the cached route was checked for: looked up, MTU enforced.
        d.sh("ip link set eth1 mtu 1280").unwrap();
        assert_eq!(dst_mac(&t.send_from_client(&f1)), new_rs, "short packets: still cached");
        let big = to_vip(c1, 1400);
        assert_eq!(big[20] & 0x40, 0x40, "DF set");
        // Answered as IPVS does: ICMP "fragmentation needed" quoting the packet as the client
        // sent it (to the VIP), so its socket matches it; back out of eth0.
        let r = t.expect_from_client(
            &big,
            XdpAction::Tx,
            LbReason::TooBigAnswered,
            "too long for eth1: the client is told",
        );
        let (src, dst, q_src, q_dst, mac) = parse_icmp_error(&r.frame);
        assert_eq!((src, dst, q_src, q_dst), (vip.ip(), c1.ip(), c1, vip));
        assert_eq!(mac, big[6..12]);
        assert_eq!(u16::from_be_bytes([r.frame[40], r.frame[41]]), 1280, "next-hop MTU");
        assert_eq!(big[23], 17, "UDP");
        assert_quoted_l4(&r.frame[62..82], &big[34..54], 6);
        // Without DF: translated and passed; the kernel fragments it.
        let r = t.send_from_client(&without_df(&big));
        assert_eq!(r.action, XdpAction::Pass);
        assert_eq!(frame::check(&r.frame).unwrap().dst, ip("198.18.2.12"), "translated");
        assert_eq!(dst_mac(&t.send_from_client(&to_vip(c1, 1000))), new_rs);
    });
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[test]
fn fib_failures_pass_or_drop_as_each_mode_requires() {
    let env = env();
    env.run(|t| {
        let (nat, dr) = (sa("198.18.100.3:80"), sa("198.18.100.4:80"));
        // 198.18.2.60 is on-link on eth1 but has no neighbour entry.
        t.apply(&merged([
            rr_service(Protocol::Tcp, "198.18.100.3:80", LbKind::Nat, &["198.18.2.60"], 80),
            rr_service(Protocol::Tcp, "198.18.100.4:80", LbKind::Dr, &["198.18.2.60"], 80),
        ]));

        let f = t.syn(client(3, 1000), nat);
        let r = t.expect_from_client(
            &f,
            XdpAction::Pass,
            LbReason::NoNeigh,
            "NAT, no neighbour: the kernel resolves it",
        );
        let p = frame::check(&r.frame).expect("passed frame is already rewritten, checksums ok");
        assert_eq!(p.dst, ip("198.18.2.60"));

        let f = t.syn(client(3, 1000), dr);
        let why = "DR: passing would hit the local VIP";
        t.expect_from_client(&f, XdpAction::Drop, LbReason::NoNeigh, why);

        // An unreachable route: dropped in both modes.
        t.serve_rr(Protocol::Tcp, "198.18.100.3:80", LbKind::Nat, &["198.18.200.1"], 80);
        let f = t.syn(client(4, 1000), nat);
        t.expect_from_client(&f, XdpAction::Drop, LbReason::FibUnreachable, "unreachable");
    });
}

#[test]
fn a_service_without_usable_real_servers_drops_new_flows() {
    let env = env();
    env.run(|t| {
        for algo in LbAlgo::ALL {
            t.apply(&one_service(
                vs("198.18.100.5:80", Protocol::Tcp),
                algo,
                LbKind::Nat,
                reals(&["198.18.2.10", "198.18.2.11"], 80, &[0, 0]),
            ));
            let f = t.syn(client(8, 1), sa("198.18.100.5:80"));
            t.expect_from_client(&f, XdpAction::Drop, LbReason::NoRealServer, &format!("{algo:?}"));
        }
        t.apply(&one_service(
            vs("198.18.100.5:80", Protocol::Tcp),
            LbAlgo::Wrr,
            LbKind::Nat,
            vec![],
        ));
        let f = t.syn(client(9, 1), sa("198.18.100.5:80"));
        assert_eq!(t.send_from_client(&f).action, XdpAction::Drop);
    });
}

#[test]
fn malformed_and_unusual_frames_pass_untouched_and_are_counted_per_reason() {
    let env = env();
    env.run(|t| {
        t.apply(&merged([
            rr_service(Protocol::Tcp, "198.18.100.1:80", LbKind::Nat, &["198.18.2.10"], 8080),
            rr_service(
                Protocol::Udp,
                "[fd48:4c42:100::1]:53",
                LbKind::Nat,
                &["fd48:4c42:2::10"],
                53,
            ),
        ]));
        let eth = t.client_eth();
        let vip = sa("198.18.100.1:80");
        let good = frame::tcp(eth, client(1, 4000), vip, TcpFlags::SYN, 1, b"payload!");
        let good6 =
            frame::udp(eth, sa("[fd48:4c42:64::1]:4000"), sa("[fd48:4c42:100::1]:53"), b"q");

        let mut vlan = good.clone();
        vlan.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        let mut qinq = good.clone();
        qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x64]);
        let mut options = good.clone();
        options.splice(34..34, [1, 1, 1, 0]); // NOP NOP NOP EOL
        options[14] = 0x46;
        let tl = u16::from_be_bytes([options[16], options[17]]) + 4;
        options[16..18].copy_from_slice(&tl.to_be_bytes());
        fix_ip_checksum(&mut options);
        let mut first_frag = good.clone();
        first_frag[20] = 0x20; // MF
        fix_ip_checksum(&mut first_frag);
        let mut later_frag = good.clone();
        later_frag[21] = 0x10; // offset 128 bytes
        fix_ip_checksum(&mut later_frag);
        let mut ext6 = good6.clone();
        // Hop-by-hop header (8 bytes: next = UDP, len 0, PadN) between IPv6 and UDP.
        ext6.splice(54..54, [17, 0, 1, 4, 0, 0, 0, 0]);
        ext6[20] = 0;
        let pl = u16::from_be_bytes([ext6[18], ext6[19]]) + 8;
        ext6[18..20].copy_from_slice(&pl.to_be_bytes());
        let mut ihl4 = good.clone();
        ihl4[14] = 0x44;
        let mut version5 = good.clone();
        version5[14] = 0x55;
        let mut short_total = good.clone();
        short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
        fix_ip_checksum(&mut short_total);
        let mut doff4 = good.clone();
        doff4[14 + 20 + 12] = 0x40;
        let mut v6_version = good6.clone();
        v6_version[14] = 0x40;
        let arp = {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&eth.src);
            f.extend_from_slice(&[0x08, 0x06]);
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&eth.src);
            f.extend_from_slice(&[198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 198, 18, 1, 1]);
            f
        };
        let icmp = frame::ip(eth, vip.ip(), vip.ip(), 64, 1, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
        // Found by review: options and fragments of other protocols were counted
        // `not_tcp_udp` (the protocol was checked first).
        let mut icmp_frag = icmp.clone();
        icmp_frag[20] = 0x20; // MF
        fix_ip_checksum(&mut icmp_frag);
        let mut icmp_options = icmp.clone();
        icmp_options.splice(34..34, [1, 1, 1, 0]);
        icmp_options[14] = 0x46;
        let tl = u16::from_be_bytes([icmp_options[16], icmp_options[17]]) + 4;
        icmp_options[16..18].copy_from_slice(&tl.to_be_bytes());
        fix_ip_checksum(&mut icmp_options);
        let to_other_port =
            frame::tcp(eth, client(1, 4000), sa("198.18.100.1:81"), TcpFlags::SYN, 1, b"");
        let to_other_host = frame::udp(eth, client(1, 4000), sa("198.18.1.1:53"), b"q");

        let cases: Vec<(&str, Vec<u8>, LbReason)> = vec![
            ("802.1Q tag", vlan, LbReason::Vlan),
            ("802.1ad tag", qinq, LbReason::Vlan),
            ("IPv4 options", options, LbReason::IpOptions),
            ("first fragment", first_frag, LbReason::Fragment),
            ("later fragment", later_frag, LbReason::Fragment),
            ("IPv6 hop-by-hop header", ext6, LbReason::Ipv6Ext),
            ("IHL 4", ihl4, LbReason::BadIpHeader),
            ("IP version 5", version5, LbReason::BadIpHeader),
            ("total length 10", short_total, LbReason::BadIpHeader),
            ("IPv6 version 4", v6_version, LbReason::BadIpHeader),
            ("TCP data offset 4", doff4, LbReason::BadL4Header),
            ("ethernet only", good[..14].to_vec(), LbReason::Truncated),
            ("IP header cut", good[..14 + 12].to_vec(), LbReason::Truncated),
            ("TCP header cut", good[..14 + 20 + 10].to_vec(), LbReason::Truncated),
            (
                "payload cut (total length beyond frame)",
                good[..good.len() - 3].to_vec(),
                LbReason::Truncated,
            ),
            ("IPv6 payload cut", good6[..good6.len() - 1].to_vec(), LbReason::Truncated),
            ("ARP", arp, LbReason::NotIp),
            ("ICMP to the VIP", icmp, LbReason::NotTcpUdp),
            ("ICMP fragment", icmp_frag, LbReason::Fragment),
            ("ICMP with IPv4 options", icmp_options, LbReason::IpOptions),
            ("TCP to a VIP port without service", to_other_port, LbReason::NotService),
            ("UDP to the director", to_other_host, LbReason::NotService),
        ];
        for (name, f, reason) in cases {
            let r = t.expect_from_client(&f, XdpAction::Pass, reason, name);
            assert_eq!(r.frame, f, "{name}: passed untouched");
        }
        // None of them created state: the next good SYN is the service's first connection.
        let st = t.dp.stats().unwrap();
        assert_eq!(st.services[&vs("198.18.100.1:80", Protocol::Tcp)].new_conns, 0);
        assert_eq!(t.send_from_client(&good).action, XdpAction::Redirect);
    });
}

/// Makes VRRPv3 VRID 51 (IPv4) known to the VRRP filter on the client side.
fn register_vrid_51(t: &mut Tester) {
    let key = VrrpVridKey::new(t.eth0, 51, FAMILY_V4);
    let vrids =
        BTreeMap::from([(key, VrrpVridValue { versions: version_bit(3), ..Default::default() })]);
    set_vrids(t.dp.bpf_mut(), &vrids).unwrap();
}

/// An advert of VRID 51 from the client side's 198.18.1.2, sent with IP TTL `ttl` (VRRP
/// requires 255).
fn advert_51(t: &Tester, ttl: u8) -> Vec<u8> {
    let (s, d) = (ip("198.18.1.2"), ip("224.0.0.18"));
    let m = frame::vrrp(3, 51, 100, 100, &[ip("198.18.100.1")], s, d);
    frame::ip(t.client_eth(), s, d, ttl, 112, &m)
}

#[test]
fn frames_the_lb_does_not_handle_go_through_the_vrrp_filter_when_enabled() {
    let env = env();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.1:80", LbKind::Nat, &["198.18.2.10"], 80);
        register_vrid_51(t);
        let bad = advert_51(t, 64);
        // Filter off: the LB passes VRRP like any non-TCP/UDP frame.
        assert_eq!(t.send_from_client(&bad).action, XdpAction::Pass);
        t.dp.set_vrrp_filter(true).unwrap();
        let before = vrrp_filter::counters(t.dp.bpf()).unwrap();
        assert_eq!(t.send_from_client(&bad).action, XdpAction::Drop, "the VRRP filter dropped it");
        assert_eq!(t.send_from_client(&advert_51(t, 255)).action, XdpAction::Pass);
        let after = vrrp_filter::counters(t.dp.bpf()).unwrap();
        assert_eq!(after.get(VrrpCounter::BadTtl) - before.get(VrrpCounter::BadTtl), 1);
        assert_eq!(after.get(VrrpCounter::Passed) - before.get(VrrpCounter::Passed), 1);
        // Service traffic still forwarded, not filtered.
        let f = t.syn(client(1, 1), vip);
        assert_eq!(t.send_from_client(&f).action, XdpAction::Redirect);
        t.dp.set_vrrp_filter(false).unwrap();
        assert_eq!(t.send_from_client(&bad).action, XdpAction::Pass);
    });
}

/// Per-packet cost from BPF_PROG_TEST_RUN's own timing, reported rather than asserted
/// (absolute numbers depend on the machine). Each measurement is the median of many single
/// runs: with `repeat > 1` the kernel reruns the program on the buffer the previous run
/// already rewrote, so a NAT packet would stop being a service packet after the first run.
#[test]
fn per_packet_cost_nat_in_vs_vrrp_filter() {
    let env = env();
    let eth0 = env.eth0;
    let costs = env.run(|t| {
        t.apply(&merged([
            one_service(
                vs("198.18.100.1:80", Protocol::Tcp),
                LbAlgo::Wrr,
                LbKind::Nat,
                reals(&["198.18.2.10", "198.18.2.11", "198.18.2.12"], 8080, &[1, 2, 3]),
            ),
            one_service(
                vs("198.18.100.2:80", Protocol::Tcp),
                LbAlgo::Mh,
                LbKind::Dr,
                reals(&["198.18.1.20", "198.18.1.21"], 80, &[1, 1]),
            ),
        ]));
        register_vrid_51(t);
        let advert = advert_51(t, 255);
        let c = client(1, 40000);
        let established =
            frame::tcp(t.client_eth(), c, sa("198.18.100.1:80"), TcpFlags::ACK, 1, &[0; 64]);
        let dr = frame::tcp(t.client_eth(), c, sa("198.18.100.2:80"), TcpFlags::ACK, 1, &[0; 64]);
        let passthrough = frame::udp(t.client_eth(), c, sa("198.18.1.1:9999"), &[0; 64]);
        // Create the flows once (a SYN each); then time the established paths.
        for vip in ["198.18.100.1:80", "198.18.100.2:80"] {
            assert_ne!(t.send_from_client(&t.syn(c, sa(vip))).action, XdpAction::Pass, "{vip}");
        }
        let chosen = frame::check(&t.send_from_client(&established).frame).unwrap().dst;
        assert_eq!(t.send_from_client(&dr).action, XdpAction::Tx);
        let reply = frame::tcp(
            t.server_eth(10),
            std::net::SocketAddr::new(chosen, 8080),
            c,
            TcpFlags::ACK,
            1,
            &[0; 64],
        );
        let eth1 = t.eth1;
        let median = |prog: &aya::programs::Xdp, f: &[u8], ifindex: u32, want: XdpAction| {
            let mut v: Vec<u128> = (0..20_001)
                .map(|_| {
                    let r = run_xdp(prog, f, ifindex, 1).unwrap();
                    assert_eq!(r.action, want);
                    r.duration.as_nanos()
                })
                .collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let lb = t.dp.bpf_mut().xdp(PROG_LB).unwrap();
        let nat_in = median(lb, &established, eth0, XdpAction::Redirect);
        let nat_out = median(lb, &reply, eth1, XdpAction::Redirect);
        let dr_cost = median(lb, &dr, eth0, XdpAction::Tx);
        let pass = median(lb, &passthrough, eth0, XdpAction::Pass);
        // Paths that leave the packet as they found it can also be timed in one kernel loop,
        // which shows how much of a single run is the test harness itself.
        let looped = |prog: &aya::programs::Xdp, f: &[u8]| {
            run_xdp(prog, f, eth0, 100_000).unwrap().duration.as_nanos()
        };
        let dr_loop = looped(lb, &dr);
        let pass_loop = looped(lb, &passthrough);
        let vrrp = t.dp.bpf_mut().xdp(PROG_VRRP_FILTER).unwrap();
        let vr = median(vrrp, &advert, eth0, XdpAction::Pass);
        let vr_loop = looped(vrrp, &advert);
        [
            ("nat_in (established), single runs", nat_in),
            ("nat_out (reply), single runs", nat_out),
            ("dr (established), single runs", dr_cost),
            ("not a service, single runs", pass),
            ("vrrp filter, single runs", vr),
            ("dr (established), looped", dr_loop),
            ("not a service, looped", pass_loop),
            ("vrrp filter, looped", vr_loop),
        ]
    });
    for (what, ns) in costs {
        eprintln!("per-packet cost: {what:36} {ns:>6} ns");
    }
}

/// If the LRU evicts only the reply entry of a NAT flow, the client's next packet (at most a
/// second's refresh interval later) writes it again, so replies are translated again.
#[test]
fn a_lost_nat_reply_entry_is_recreated_by_the_clients_next_packet() {
    let env = env();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.1:80", LbKind::Nat, &["198.18.2.10"], 8080);
        let c = client(3, 41000);
        t.nat_pick(c, vip, TcpFlags::SYN);
        let rs_eth = t.server_eth(10);
        let back = frame::tcp(rs_eth, sa("198.18.2.10:8080"), c, TcpFlags::ACK, 1, b"r");
        assert_eq!(t.send_from_servers(&back).action, XdpAction::Redirect);
        let reply_key = maps::flows(t.dp.bpf())
            .unwrap()
            .into_iter()
            .find(|(_, f)| f.flags & LB_FLOW_F_REPLY != 0)
            .unwrap()
            .0;
        maps::remove_flow(t.dp.bpf_mut(), &reply_key).unwrap();
        let why = "no reply entry: not ours";
        t.expect_on(t.eth1, &back, XdpAction::Pass, LbReason::NotService, why);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        t.nat_pick(c, vip, TcpFlags::ACK);
        let r = t.send_from_servers(&back);
        assert_eq!(r.action, XdpAction::Redirect);
        assert_eq!(frame::check(&r.frame).unwrap().src, vip.ip());
    });
}

/// The program forwards only frames addressed to its interfaces' MACs, read at attach: a MAC
/// changed later (`ip link set address`, a bond failing over with `fail_over_mac`) is read
/// again by `maintain()` (every few seconds in the daemon). Before, every frame to the new MAC
/// counted as another host's and went to the kernel for good (found by review).
#[test]
fn a_changed_interface_mac_is_picked_up_by_maintain() {
    let env = env();
    let d = env.d.clone();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.1:80", LbKind::Nat, &["198.18.2.10"], 8080);
        t.dp.attach_interface("eth0").unwrap();
        d.sh("ip link set eth0 address 02:4d:41:43:00:01").unwrap();
        let mut e = t.client_eth();
        e.dst = [0x02, 0x4d, 0x41, 0x43, 0, 1];
        let f = frame::tcp(e, client(8, 42000), vip, TcpFlags::SYN, 1, b"");
        t.expect_from_client(&f, XdpAction::Pass, LbReason::OtherHost, "before maintain");
        t.dp.maintain().unwrap();
        t.expect_from_client(&f, XdpAction::Redirect, LbReason::NatIn, "after maintain");
        t.dp.detach_interface("eth0").unwrap();
    });
}

/// A frame unicast to another host's MAC (a switch flooding an unknown destination, e.g.
/// the failed master's MAC while clients' ARP caches still point at it) is not forwarded:
/// the kernel would drop it as PACKET_OTHERHOST, and two directors on one segment must
/// never both forward the same frame. Addressed to our own MAC, the same frame is.
#[test]
fn frames_for_another_hosts_mac_are_not_forwarded() {
    let env = env();
    let d = env.d.clone();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.1:80", LbKind::Nat, &["198.18.2.10"], 8080);
        let eth0 = t.eth0;
        let mac0 = t.mac0;
        maps::set_interface_mac(t.dp.bpf_mut(), eth0, Some(mac0)).unwrap();
        let mut other = t.client_eth();
        other.dst = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
        let flooded = frame::tcp(other, client(7, 41000), vip, TcpFlags::SYN, 1, b"");
        let r = t.expect_from_client(&flooded, XdpAction::Pass, LbReason::OtherHost, "flooded");
        assert_eq!(r.frame, flooded, "passed untouched");
        let mine = t.syn(client(7, 41000), vip);
        assert_eq!(mine[..6], mac0, "the harness addresses the director's own MAC");
        assert_eq!(t.send_from_client(&mine).action, XdpAction::Redirect);

        // Interfaces with a large ifindex (interface churn) are kept in a hash map instead of
        // the array: the same rule applies there.
        d.sh(
            "ip link add hlbhigh index 5000 type veth peer name hlbhigh1 && ip link set hlbhigh up",
        )
        .unwrap();
        let high_mac = [0x02, 0x50, 0, 0, 0, 1];
        maps::set_interface_mac(t.dp.bpf_mut(), 5000, Some(high_mac)).unwrap();
        t.expect_on(5000, &flooded, XdpAction::Pass, LbReason::OtherHost, "flooded, ifindex 5000");
        let mut to_high = t.client_eth();
        to_high.dst = high_mac;
        let f = frame::tcp(to_high, client(7, 41001), vip, TcpFlags::SYN, 1, b"");
        let other_host = |t: &Tester| t.counters().get(LbReason::OtherHost);
        let before = other_host(t);
        t.run_on(5000, &f);
        assert_eq!(
            other_host(t),
            before,
            "a frame to the interface's own MAC is not another host's"
        );
        // Forgotten (detached): no longer filtered.
        maps::set_interface_mac(t.dp.bpf_mut(), 5000, None).unwrap();
        maps::set_interface_mac(t.dp.bpf_mut(), eth0, None).unwrap();
        let before = other_host(t);
        t.run_on(5000, &flooded);
        t.send_from_client(&flooded);
        assert_eq!(other_host(t), before, "detached: no longer filtered");
    });
}

/// An ICMP error (`ty`/`code`, the 4 bytes after the checksum `rest`) from `from` to `to`
/// about the IP packet in `about` (an Ethernet frame), quoting all of it, in a frame.
fn icmp_error(
    eth: frame::Eth,
    (from, to): (IpAddr, IpAddr),
    (ty, code): (u8, u8),
    rest: [u8; 4],
    about: &[u8],
) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(&about[14..]);
    let c = icmp_checksum(from, to, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let proto = if from.is_ipv6() { 58 } else { 1 };
    frame::ip(eth, from, to, 64, proto, &m)
}

/// The ICMP (v4) / ICMPv6 (with its pseudo-header) checksum of message `m`.
fn icmp_checksum(from: IpAddr, to: IpAddr, m: &[u8]) -> u16 {
    match (from, to) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ph = Vec::new();
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&(m.len() as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, 58]);
            inet_checksum(&[&ph, m])
        }
        _ => inet_checksum(&[m]),
    }
}

/// What an ICMP error frame says, after checking every checksum that must hold: the outer
/// IPv4 header's, the ICMP message's and the quoted IPv4 header's. (outer src, outer dst,
/// quoted src:port, quoted dst:port, destination MAC).
fn parse_icmp_error(f: &[u8]) -> (IpAddr, IpAddr, SocketAddr, SocketAddr, [u8; 6]) {
    let mac: [u8; 6] = f[..6].try_into().unwrap();
    let ip4 = |b: &[u8]| IpAddr::from(<[u8; 4]>::try_from(b).unwrap());
    let ip6 = |b: &[u8]| IpAddr::from(<[u8; 16]>::try_from(b).unwrap());
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    if f[12..14] == [0x08, 0x00] {
        let ip = &f[14..34];
        assert_eq!(inet_checksum(&[ip]), 0, "outer IPv4 header checksum");
        let (src, dst) = (ip4(&ip[12..16]), ip4(&ip[16..20]));
        let m = &f[34..];
        assert_eq!(inet_checksum(&[m]), 0, "ICMP checksum");
        let inner = &m[8..28];
        assert_eq!(inet_checksum(&[inner]), 0, "quoted IPv4 header checksum");
        let l4 = &m[28..];
        let q_src = SocketAddr::new(ip4(&inner[12..16]), port(&l4[0..2]));
        let q_dst = SocketAddr::new(ip4(&inner[16..20]), port(&l4[2..4]));
        (src, dst, q_src, q_dst, mac)
    } else {
        let ip = &f[14..54];
        let (src, dst) = (ip6(&ip[8..24]), ip6(&ip[24..40]));
        let m = &f[54..];
        assert_eq!(icmp_checksum(src, dst, m), 0, "ICMPv6 checksum");
        let inner = &m[8..48];
        let l4 = &m[48..];
        let q_src = SocketAddr::new(ip6(&inner[8..24]), port(&l4[0..2]));
        let q_dst = SocketAddr::new(ip6(&inner[24..40]), port(&l4[2..4]));
        (src, dst, q_src, q_dst, mac)
    }
}

/// ICMP errors about load-balanced flows reach the host they are about, translated as IPVS
/// does: about a packet to the client (addressed to the VIP) → the real server, with the
/// quoted packet and the destination rewritten to the real server (NAT) or unchanged (DR);
/// about a NAT packet to a real server (addressed to the client) → the client, quoted packet
/// back to the VIP, and the source too when the real server sent it. Errors about no known
/// flow, and ICMP that is not an error, pass.
#[test]
fn icmp_errors_about_flows_reach_the_host_they_are_about() {
    let env = env();
    let gw_mac = env.gw_mac;
    env.run(|t| {
        t.apply(&merged([
            rr_service(Protocol::Udp, "198.18.100.1:53", LbKind::Nat, &["198.18.2.11"], 5353),
            rr_service(Protocol::Tcp, "198.18.100.4:80", LbKind::Dr, &["198.18.2.12"], 80),
            rr_service(
                Protocol::Tcp,
                "[fd48:4c42:100::1]:443",
                LbKind::Nat,
                &["fd48:4c42:2::10"],
                8443,
            ),
        ]));
        let ceth = t.client_eth();
        let rs_eth = t.server_eth(11);

        for (vip, c, real) in [
            (sa("198.18.100.1:53"), client(9, 5000), sa("198.18.2.11:5353")),
            (
                sa("[fd48:4c42:100::1]:443"),
                sa("[fd48:4c42:64::77]:50000"),
                sa("[fd48:4c42:2::10]:8443"),
            ),
        ] {
            let v6 = vip.is_ipv6();
            let to_vip = if v6 {
                frame::tcp(ceth, c, vip, TcpFlags::SYN, 1, b"")
            } else {
                frame::udp(ceth, c, vip, b"query")
            };
            let r = t.send_from_client(&to_vip);
            assert_eq!(r.action, XdpAction::Redirect);
            let dnat = r.frame.clone();

            // The real server answers "port unreachable" about the packet it got.
            let unreach = if v6 { (1, 4) } else { (3, 3) };
            let e = icmp_error(rs_eth, (real.ip(), c.ip()), unreach, [0; 4], &dnat);
            let what = format!("{vip}: error toward the client");
            let r = t.expect_on(t.eth1, &e, XdpAction::Redirect, LbReason::IcmpOut, &what);
            let (src, dst, q_src, q_dst, mac) = parse_icmp_error(&r.frame);
            assert_eq!((src, dst), (vip.ip(), c.ip()), "from the VIP, as the client knows it");
            assert_eq!((q_src, q_dst), (c, vip), "quoting the packet the client sent");
            assert_eq!(mac, gw_mac);

            // A router between director and real server: from the VIP too (as IPVS; the client
            // knows no other address of the service).
            let router: IpAddr = if v6 { ip("fd48:4c42:2::99") } else { ip("198.18.2.99") };
            let e =
                icmp_error(rs_eth, (router, c.ip()), (if v6 { 3 } else { 11 }, 0), [0; 4], &dnat);
            let r = t.send_from_servers(&e);
            assert_eq!(r.action, XdpAction::Redirect);
            let (src, dst, q_src, q_dst, _) = parse_icmp_error(&r.frame);
            assert_eq!((src, dst, q_src, q_dst), (vip.ip(), c.ip(), c, vip));

            // A router on the client's side: "fragmentation needed" / "packet too big" about
            // a reply to the client, sent to the VIP.
            let reply = if v6 {
                frame::tcp(ceth, vip, c, TcpFlags::ACK, 1, &[0u8; 40])
            } else {
                frame::udp(ceth, vip, c, b"answer")
            };
            let hop: IpAddr = if v6 { ip("fd48:4c42:1::2") } else { ip("198.18.1.2") };
            // IPv4: type 3 code 4 with the next-hop MTU; IPv6: type 2 with the MTU.
            let (ty, rest) =
                if v6 { ((2, 0), 1280u32.to_be_bytes()) } else { ((3, 4), [0, 0, 5, 0]) };
            let e = icmp_error(ceth, (hop, vip.ip()), ty, rest, &reply);
            let what = format!("{vip}: error toward the real server");
            let r = t.expect_from_client(&e, XdpAction::Redirect, LbReason::IcmpIn, &what);
            let (src, dst, q_src, q_dst, mac) = parse_icmp_error(&r.frame);
            assert_eq!((src, dst), (hop, real.ip()), "to the real server");
            assert_eq!((q_src, q_dst), (real, c), "quoting the reply as the real server sent it");
            let rs_n = if v6 { 10 } else { 11 };
            assert_eq!(mac, rs_mac(2, rs_n));

            // About no known flow: passes untouched.
            let stranger = if v6 { sa("[fd48:4c42:64::78]:1") } else { client(10, 1) };
            let other = frame::udp(ceth, vip, stranger, b"x");
            let e = icmp_error(ceth, (hop, vip.ip()), (if v6 { 1 } else { 3 }, 1), [0; 4], &other);
            let what = format!("{vip}: error about no known flow");
            let r = t.expect_from_client(&e, XdpAction::Pass, LbReason::NotTcpUdp, &what);
            assert_eq!(r.frame, e, "{what}: passed untouched");
        }

        // An echo request to the VIP is not an error: the kernel answers it.
        let ping = frame::ip(ceth, ip("198.18.64.9"), ip("198.18.100.1"), 64, 1, &{
            let mut m = vec![8, 0, 0, 0, 0, 1, 0, 1];
            let c2 = inet_checksum(&[&m]);
            m[2..4].copy_from_slice(&c2.to_be_bytes());
            m
        });
        assert_eq!(t.send_from_client(&ping).action, XdpAction::Pass);

        // DR: forwarded to the real server unchanged but for the MACs.
        let c = client(11, 6000);
        let vip = sa("198.18.100.4:80");
        assert_eq!(t.send_from_client(&t.syn(c, vip)).action, XdpAction::Redirect);
        let reply = frame::tcp(ceth, vip, c, TcpFlags::ACK, 1, &[0u8; 100]);
        let e = icmp_error(ceth, (ip("198.18.1.2"), vip.ip()), (11, 0), [0; 4], &reply);
        let r = t.expect_from_client(&e, XdpAction::Redirect, LbReason::IcmpIn, "DR: error");
        assert_eq!(r.frame[14..], e[14..], "DR: the IP packet is untouched");
        assert_eq!(r.frame[..6], rs_mac(2, 12));
    });
}

/// Sends client frame `f` of a TUN flow and checks it went to real server 2.13 (eth1) one
/// outer header (`outer` bytes) longer; the result.
fn tun_sent(t: &mut Tester, f: &[u8], outer: usize, mac1: [u8; 6], what: &str) -> RunResult {
    let r = t.expect_from_client(f, XdpAction::Redirect, LbReason::Tun, what);
    assert_eq!(r.frame.len(), f.len() + outer, "{what}: one outer header more");
    assert_eq!(r.frame[..6], rs_mac(2, 13), "{what}: to the real server's MAC");
    assert_eq!(r.frame[6..12], mac1, "{what}: from the director's interface toward it");
    r
}

/// LVS-TUN: the client's packet, unchanged, inside an outer IPv4 header (IPIP) from this
/// director's address toward the real server to the real server, whose MAC it is sent to.
/// Known flows go the same way (cached next hop); a packet that no longer fits the path once
/// encapsulated is not passed (that would deliver it to the local VIP): with DF it is answered
/// with ICMP "fragmentation needed" as IPVS does, without it dropped; counted either way.
#[test]
fn tun_encapsulates_in_ipip_to_the_real_server() {
    let env = env();
    let d = env.d.clone();
    let mac1 = env.mac1;
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.6:80", LbKind::Tun, &["198.18.2.13"], 80);
        let c = client(12, 7000);
        let mut ids = Vec::new();
        for (i, flags) in [TcpFlags::SYN, TcpFlags::ACK].into_iter().enumerate() {
            let f = frame::tcp(t.client_eth(), c, vip, flags, i as u32, b"GET / HTTP/1.0\r\n\r\n");
            let r = tun_sent(t, &f, 20, mac1, &format!("packet {i}"));
            let o = &r.frame;
            assert_eq!(o[12..14], [0x08, 0x00]);
            let outer = &o[14..34];
            assert_eq!(outer[0], 0x45);
            assert_eq!(outer[9], 4, "IPIP");
            assert_eq!(inet_checksum(&[outer]), 0, "outer header checksum");
            assert_eq!(u16::from_be_bytes([outer[2], outer[3]]) as usize, o.len() - 14);
            assert_eq!(outer[12..16], [198, 18, 2, 1], "source: the director's address toward it");
            assert_eq!(outer[16..20], [198, 18, 2, 13]);
            assert_eq!(outer[8], f[22], "TTL copied from the inner header");
            assert_eq!(o[34..], f[14..], "the client's packet, unchanged");
            ids.push([outer[4], outer[5]]);
        }
        assert_ne!(ids[0], ids[1], "outer IDs from the director's own sequence");
        // An ICMP error about the flow's reply (sent by the real server from the VIP), addressed
        // to the VIP: encapsulated to the real server like the flow's packets.
        let reply = frame::tcp(t.client_eth(), vip, c, TcpFlags::ACK, 1, &[0u8; 64]);
        let e =
            icmp_error(t.client_eth(), (ip("198.18.1.2"), vip.ip()), (3, 4), [0, 0, 5, 0], &reply);
        let r = t.expect_from_client(&e, XdpAction::Redirect, LbReason::IcmpIn, "ICMP error");
        assert_eq!(r.frame[..6], rs_mac(2, 13));
        assert_eq!((r.frame[23], r.frame[30..34].to_vec()), (4, vec![198, 18, 2, 13]), "IPIP");
        assert_eq!(r.frame[34..], e[14..], "the error itself, unchanged inside");
        // Too long for eth1 once encapsulated (1260 + 20 > 1270): dropped and counted.
        d.sh("ip link set eth1 mtu 1270").unwrap();
        let big = frame::udp(t.client_eth(), client(13, 7001), sa("198.18.100.7:53"), &[0; 1232]);
        t.apply(&merged([
            rr_service(Protocol::Tcp, "198.18.100.6:80", LbKind::Tun, &["198.18.2.13"], 80),
            rr_service(Protocol::Udp, "198.18.100.7:53", LbKind::Tun, &["198.18.2.13"], 53),
        ]));
        assert_eq!(big.len() - 14, 1260);
        assert_eq!(big[20] & 0x40, 0x40, "DF set");
        // Without DF: dropped.
        t.expect_from_client(&without_df(&big), XdpAction::Drop, LbReason::FragNeeded, "no DF");
        // With DF: answered with ICMP "fragmentation needed", next-hop MTU 1270 - 20, back
        // out of the interface it came in on, to the client's MAC, quoting its packet.
        let r = t.expect_from_client(&big, XdpAction::Tx, LbReason::TooBigAnswered, "DF");
        let e = &r.frame;
        assert_eq!(e.len(), 14 + 20 + 8 + 40);
        assert_eq!((e[..6].to_vec(), e[6..12].to_vec()), (big[6..12].to_vec(), big[..6].to_vec()));
        let (src, dst, q_src, q_dst, _) = parse_icmp_error(e);
        assert_eq!((src, dst), (ip("198.18.100.7"), client(13, 7001).ip()));
        assert_eq!((q_src, q_dst), (client(13, 7001), sa("198.18.100.7:53")));
        assert_eq!((e[34], e[35]), (3, 4), "destination unreachable, fragmentation needed");
        assert_eq!(u16::from_be_bytes([e[40], e[41]]), 1250, "the MTU left for the client");
        assert_eq!(e[42..62], big[14..34], "quoting the IPv4 header");
        assert_quoted_l4(&e[62..82], &big[34..54], 6);
        let small = frame::udp(t.client_eth(), client(13, 7002), sa("198.18.100.7:53"), b"q");
        assert_eq!(t.send_from_client(&small).action, XdpAction::Redirect);
    });
}

/// LVS-TUN for IPv6 (RFC 2473, as IPVS's ip6ip6): the client's packet, unchanged, inside an
/// outer IPv6 header (next header 41) from this director's address toward the real server;
/// traffic class, flow label and hop limit carried over from the inner header. ICMPv6 errors
/// about the flow go the same way; a packet that no longer fits the path once encapsulated is
/// answered with "packet too big" carrying the MTU left for it, or dropped when that would be
/// below IPv6's minimum (IPVS drops those too).
#[test]
fn tun_encapsulates_ipv6_in_ipv6_to_the_real_server() {
    let env = env();
    let d = env.d.clone();
    let mac1 = env.mac1;
    env.run(|t| {
        let tcp = rr_service(
            Protocol::Tcp,
            "[fd48:4c42:100::6]:80",
            LbKind::Tun,
            &["fd48:4c42:2::13"],
            80,
        );
        let udp = rr_service(
            Protocol::Udp,
            "[fd48:4c42:100::7]:53",
            LbKind::Tun,
            &["fd48:4c42:2::13"],
            53,
        );
        t.apply(&merged([tcp, udp]));
        let vip = sa("[fd48:4c42:100::6]:80");
        let c = sa("[fd48:4c42:64::12]:7000");
        let director: IpAddr = ip("fd48:4c42:2::1");
        let real: IpAddr = ip("fd48:4c42:2::13");
        let octets = |a: IpAddr| match a {
            IpAddr::V6(a) => a.octets().to_vec(),
            IpAddr::V4(_) => unreachable!(),
        };
        for (i, flags) in [TcpFlags::SYN, TcpFlags::ACK].into_iter().enumerate() {
            let mut f =
                frame::tcp(t.client_eth(), c, vip, flags, i as u32, b"GET / HTTP/1.0\r\n\r\n");
            // Traffic class 0x2e and flow label 0xabcde (in no checksum).
            f[14..18].copy_from_slice(&[0x62, 0xea, 0xbc, 0xde]);
            let r = tun_sent(t, &f, 40, mac1, &format!("packet {i}"));
            let o = &r.frame;
            assert_eq!(o[12..14], [0x86, 0xdd]);
            let outer = &o[14..54];
            assert_eq!(outer[..4], f[14..18], "version, traffic class, flow label");
            let payload = u16::from_be_bytes([outer[4], outer[5]]) as usize;
            assert_eq!(payload, f.len() - 14, "the payload is the whole inner packet");
            assert_eq!(outer[6], 41, "IPv6 in IPv6");
            assert_eq!(outer[7], f[21], "hop limit copied from the inner header");
            assert_eq!(outer[8..24], octets(director), "source: the director's address toward it");
            assert_eq!(outer[24..40], octets(real));
            assert_eq!(o[54..], f[14..], "the client's packet, unchanged");
        }
        // An ICMPv6 error about the flow's reply (sent by the real server from the VIP),
        // addressed to the VIP: encapsulated to the real server like the flow's packets.
        let reply = frame::tcp(t.client_eth(), vip, c, TcpFlags::ACK, 1, &[0u8; 64]);
        let hop = ip("fd48:4c42:1::2");
        let e = icmp_error(t.client_eth(), (hop, vip.ip()), (2, 0), 1280u32.to_be_bytes(), &reply);
        let r = t.expect_from_client(&e, XdpAction::Redirect, LbReason::IcmpIn, "ICMPv6 error");
        assert_eq!(r.frame[..6], rs_mac(2, 13));
        assert_eq!((r.frame[20], r.frame[38..54].to_vec()), (41, octets(real)), "IPv6 in IPv6");
        assert_eq!(r.frame[54..], e[14..], "the error itself, unchanged inside");

        // Too long for eth1 once encapsulated (1300 + 40 > 1320): answered with "packet too
        // big", MTU 1320 - 40, back out of the interface it came in on, quoting the packet.
        d.sh("ip link set eth1 mtu 1320").unwrap();
        let c2 = sa("[fd48:4c42:64::12]:7001");
        let dns = sa("[fd48:4c42:100::7]:53");
        let big = frame::udp(t.client_eth(), c2, dns, &[0; 1300 - 48]);
        let r = t.expect_from_client(&big, XdpAction::Tx, LbReason::TooBigAnswered, "too big");
        let e = &r.frame;
        assert_eq!(e.len(), 14 + 40 + 8 + 40 + 20);
        assert_eq!((e[..6].to_vec(), e[6..12].to_vec()), (big[6..12].to_vec(), big[..6].to_vec()));
        let (src, dst, q_src, q_dst, _) = parse_icmp_error(e);
        assert_eq!((src, dst, q_src, q_dst), (dns.ip(), c2.ip(), c2, dns));
        assert_eq!((e[54], e[55]), (2, 0), "packet too big");
        assert_eq!(u32::from_be_bytes(e[58..62].try_into().unwrap()), 1280, "the MTU left");
        assert_eq!(e[62..102], big[14..54], "quoting the IPv6 header");
        assert_quoted_l4(&e[102..122], &big[54..74], 6);
        let small = frame::udp(t.client_eth(), c2, dns, b"q");
        assert_eq!(t.send_from_client(&small).action, XdpAction::Redirect);
        // A path whose MTU leaves less than IPv6's 1280 once encapsulated: nothing can be
        // told to the client, the packet is dropped (never passed: that would deliver it to
        // the local VIP).
        d.sh("ip link set eth1 mtu 1300").unwrap();
        t.expect_from_client(&big, XdpAction::Drop, LbReason::FragNeeded, "MTU 1300 - 40 < 1280");
    });
}

/// A reload that switches a service from NAT to TUN with the same real servers and weights
/// rewrites their entries with the outer source address: new flows are encapsulated (found by
/// review: the entries used to keep no source, and every new flow was dropped).
#[test]
fn switching_a_service_to_tun_keeps_its_real_servers_usable() {
    let env = env();
    env.run(|t| {
        t.serve_rr(Protocol::Tcp, "198.18.100.8:80", LbKind::Nat, &["198.18.2.13"], 80);
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.8:80", LbKind::Tun, &["198.18.2.13"], 80);
        let f = t.syn(client(14, 7100), vip);
        let why = "a new flow of the (now TUN) service is encapsulated";
        t.expect_from_client(&f, XdpAction::Redirect, LbReason::Tun, why);
    });
}

/// A TUN real server with no route when the service was applied (at boot, before the routing
/// daemon or the interface is up): its flows are dropped as `fib_unreachable` until
/// `maintain()` (every few seconds in the daemon) finds the route and writes the source.
#[test]
fn tun_source_is_resolved_again_once_a_route_appears() {
    let env = env();
    let d = env.d.clone();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.9:80", LbKind::Tun, &["198.18.3.10"], 80);
        let f = t.syn(client(15, 7200), vip);
        t.expect_from_client(&f, XdpAction::Drop, LbReason::FibUnreachable, "no route, no source");
        d.sh("ip route add 198.18.3.0/24 via 198.18.2.10").unwrap();
        // The daemon calls maintain() every few seconds.
        t.dp.maintain().unwrap();
        let f = t.syn(client(15, 7201), vip);
        let why = "route exists now: encapsulated toward 198.18.3.10 via 198.18.2.10";
        t.expect_from_client(&f, XdpAction::Redirect, LbReason::Tun, why);
    });
}

/// DR: a packet with DF too long for the path to the real server is answered with ICMP
/// "fragmentation needed", as IPVS does (`ensure_mtu_is_adequate`); without it path-MTU
/// discovery through a DR director black-holes when the real-server side has the smaller MTU.
#[test]
fn dr_answers_too_long_df_packets_with_fragmentation_needed() {
    let env = env();
    let d = env.d.clone();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.10:80", LbKind::Dr, &["198.18.2.14"], 80);
        d.sh("ip link set eth1 mtu 1280").unwrap();
        let c = client(16, 7300);
        assert_eq!(t.send_from_client(&t.syn(c, vip)).action, XdpAction::Redirect);
        let big = frame::tcp(t.client_eth(), c, vip, TcpFlags::ACK, 1, &[0u8; 1300]);
        assert_eq!(big[20] & 0x40, 0x40, "DF set");
        let why = "the client is told (ICMP fragmentation needed)";
        let r = t.expect_from_client(&big, XdpAction::Tx, LbReason::TooBigAnswered, why);
        let (src, dst, q_src, q_dst, _) = parse_icmp_error(&r.frame);
        assert_eq!((src, dst, q_src, q_dst), (vip.ip(), c.ip(), c, vip));
        assert_quoted_l4(&r.frame[62..82], &big[34..54], 16);

        // Rate-limited per CPU (bursts of 100, 1000/s), as the kernel limits its own errors:
        // a flood of too-long packets does not become a flood of errors.
        let before = t.counters();
        let start = std::time::Instant::now();
        for _ in 0..200 {
            t.send_from_client(&big);
        }
        let ms = start.elapsed().as_millis() as u64;
        let after = t.counters();
        let moved = |r: LbReason| after.get(r) - before.get(r);
        let (answered, dropped) = (moved(LbReason::TooBigAnswered), moved(LbReason::FragNeeded));
        assert_eq!(answered + dropped, 200, "{:?}", after.since(&before));
        // The refill follows the coarse (tick) clock: allow a tick or two of slack.
        assert!(answered <= 100 + ms + 8, "{answered} answered in {ms} ms");
        assert!(dropped > 0 || ms > 100, "{answered} answered in {ms} ms");
    });
}

/// Connection sync (docs/conntrack-sync.md): a flow imported from another director — which
/// scheduled it to a real server this director's scheduler would not have picked — is
/// forwarded there by its first packet here (known-flow path), and its replies are un-NATed.
/// Unknown services or real servers import nothing.
#[test]
fn imported_flows_go_to_the_real_server_the_other_director_chose() {
    let env = env();
    env.run(|t| {
        let vip = t.serve_rr(
            Protocol::Tcp,
            "198.18.100.11:80",
            LbKind::Nat,
            &["198.18.2.10", "198.18.2.11", "198.18.2.12"],
            8080,
        );
        let c = client(30, 9000);
        let imported = |t: &mut Tester, real: &str, kind| {
            t.dp.import_flow(Protocol::Tcp, kind, c, vip, sa(real), 3, maps::monotonic_ns())
                .unwrap()
        };
        assert!(imported(t, "198.18.2.12:8080", LbKind::Nat));
        // A mid-connection packet (no SYN): without the import it would be scheduled rr
        // (198.18.2.10 first).
        let f = frame::tcp(t.client_eth(), c, vip, TcpFlags::ACK, 5, b"more");
        let r = t.expect_from_client(&f, XdpAction::Redirect, LbReason::NatIn, "imported flow");
        let p = frame::check(&r.frame).unwrap();
        assert_eq!((p.dst, p.dport), (ip("198.18.2.12"), 8080));
        let rs_eth = t.server_eth(12);
        let back = frame::tcp(rs_eth, sa("198.18.2.12:8080"), c, TcpFlags::ACK, 9, b"ok");
        let r = t.send_from_servers(&back);
        assert_eq!(r.action, XdpAction::Redirect);
        let p = frame::check(&r.frame).unwrap();
        assert_eq!((p.src, p.sport), (vip.ip(), 80), "un-NATed like a local flow");

        assert!(!imported(t, "198.18.2.99:8080", LbKind::Nat), "unknown real server");
        let other = t.dp.import_flow(
            Protocol::Udp,
            LbKind::Nat,
            c,
            vip,
            sa("198.18.2.12:8080"),
            0,
            maps::monotonic_ns(),
        );
        assert!(!other.unwrap(), "unknown service");
    });
}

/// Found by review: a flow the master closed stayed open on the backup for the TCP timeout.
/// A closed entry marks the copy this director has closed (as the master's is, so it expires
/// on the FIN timeout and no longer counts as active); one it does not have is not written.
#[test]
fn an_imported_close_marks_the_flow_closed() {
    let env = env();
    env.run(|t| {
        let vip =
            t.serve_rr(Protocol::Tcp, "198.18.100.12:80", LbKind::Nat, &["198.18.2.10"], 8080);
        let entry = |client: SocketAddr, closed| ha_lb::sync::SyncEntry {
            protocol: Protocol::Tcp,
            lb_kind: LbKind::Nat,
            client,
            vip,
            real_server: sa("198.18.2.10:8080"),
            idle_secs: 1,
            closed,
        };
        let key = |c: SocketAddr| {
            let (src, family) = maps::addr_words(c.ip());
            let (dst, _) = maps::addr_words(vip.ip());
            LbFlowKey::new(family, 6, (src, maps::port_be(c.port())), (dst, maps::port_be(80)))
        };
        let flags = |t: &Tester, c| maps::flow(t.dp.bpf(), &key(c)).unwrap().map(|f| f.flags);
        let (a, b) = (client(31, 9100), client(32, 9101));
        let r = t.dp.import_flows(&[entry(a, false)], maps::monotonic_ns()).unwrap();
        assert_eq!((r.opened, r.closed), (1, 0));
        assert_eq!(flags(t, a).map(|f| f & LB_FLOW_F_CLOSED), Some(0));
        let r = t.dp.import_flows(&[entry(a, true), entry(b, true)], maps::monotonic_ns()).unwrap();
        assert_eq!((r.opened, r.closed), (0, 1), "only the flow it has");
        assert_eq!(flags(t, a).map(|f| f & LB_FLOW_F_CLOSED), Some(LB_FLOW_F_CLOSED));
        assert_eq!(flags(t, b), None, "a closed flow it never had is not written");
        // A kernel master syncs a short connection's open and its close in one message: the
        // close applies to the open before it, the flow is written closed.
        let c = client(34, 9103);
        let r = t.dp.import_flows(&[entry(c, false), entry(c, true)], maps::monotonic_ns());
        assert_eq!(r.map(|r| (r.opened, r.closed)).unwrap(), (1, 1));
        assert_eq!(flags(t, c).map(|f| f & LB_FLOW_F_CLOSED), Some(LB_FLOW_F_CLOSED));
        // Idle past this director's timeout (TCP 900 s): expired here, not imported — on a
        // director up for less than that it would otherwise be revived (last_seen at 0).
        let old =
            |idle_secs| ha_lb::sync::SyncEntry { idle_secs, ..entry(client(33, 9102), false) };
        let r = t.dp.import_flows(&[old(900)], maps::monotonic_coarse_ns()).unwrap();
        assert_eq!((r.opened, r.closed), (0, 0));
        let r = t.dp.import_flows(&[old(899)], maps::monotonic_coarse_ns()).unwrap();
        assert_eq!((r.opened, r.closed), (1, 0));
    });
}

/// Found by review: a FIN or RST on a flow of a deleted service counted as a close on the
/// service its id was given to next (until the next sweep recounted): a removed real server's
/// entry kept its old service id. It is now in no service, and a close counts only on the
/// service its real server is still in.
#[test]
fn closes_of_a_deleted_services_flows_do_not_count_on_the_next_owner_of_its_id() {
    let env = env();
    env.run(|t| {
        let a = t.serve_rr(
            Protocol::Tcp,
            "198.18.100.1:80",
            LbKind::Nat,
            &["198.18.2.10", "198.18.2.11"],
            8080,
        );
        // Two connections: rr puts the second on the second real server (id 1).
        let (a1, a2) = (client(1, 40000), client(2, 40000));
        assert_eq!(t.nat_pick(a1, a, TcpFlags::SYN), ip("198.18.2.10"));
        assert_eq!(t.nat_pick(a2, a, TcpFlags::SYN), ip("198.18.2.11"));
        // A goes; B comes, with A's service id and A's first real id (a new generation of
        // it); A's second real id stays free.
        t.apply(&DesiredState::default());
        let b = t.serve_rr(Protocol::Tcp, "198.18.100.2:80", LbKind::Nat, &["198.18.2.12"], 8080);
        let b1 = client(3, 40000);
        assert_eq!(t.nat_pick(b1, b, TcpFlags::SYN), ip("198.18.2.12"));
        assert_eq!(t.nat_pick(b1, b, TcpFlags::ACK), ip("198.18.2.12"));
        let active = |t: &Tester| {
            t.dp.stats().unwrap().services[&vs("198.18.100.2:80", Protocol::Tcp)].active_conns
        };
        assert_eq!(active(t), 1);
        // A's second client closes: not a connection of B's.
        let fin = frame::tcp(t.client_eth(), a2, a, TcpFlags::FIN_ACK, 2, b"");
        assert_eq!(t.send_from_client(&fin).action, XdpAction::Pass, "A is gone");
        let rst = frame::tcp(t.client_eth(), a1, a, TcpFlags::RST, 2, b"");
        assert_eq!(t.send_from_client(&rst).action, XdpAction::Pass);
        assert_eq!(active(t), 1, "B's connection is still open");
    });
}

/// Found by review: native XDP redirected to whatever interface the route named, and counted
/// the frame forwarded; an interface that cannot take an XDP redirect (a bridge, a VLAN or
/// macvlan device, a NIC without an XDP program) drops it after the program returned. The
/// program now redirects only to interfaces it is attached to (or transmits back out of the
/// ingress): otherwise NAT passes the packet translated for the kernel to forward, DR and TUN
/// drop it, each counted `egress_no_xdp`; nothing is cached for such a route.
#[test]
fn xdp_redirects_only_to_interfaces_it_is_attached_to() {
    let env = env();
    let (eth1, mac0) = (env.eth1, env.mac0);
    env.run(|t| {
        t.apply(&merged([
            rr_service(Protocol::Tcp, "198.18.100.1:80", LbKind::Nat, &["198.18.2.10"], 8080),
            rr_service(Protocol::Tcp, "198.18.100.2:80", LbKind::Dr, &["198.18.2.11"], 80),
            rr_service(Protocol::Tcp, "198.18.100.6:80", LbKind::Tun, &["198.18.2.12"], 80),
        ]));
        // eth1 (the real servers' side) is not attached.
        maps::set_interface_mac(t.dp.bpf_mut(), eth1, None).unwrap();
        let (c, vip) = (client(30, 7000), sa("198.18.100.1:80"));
        for (i, flags) in [TcpFlags::SYN, TcpFlags::ACK, TcpFlags::ACK].into_iter().enumerate() {
            let f = frame::tcp(t.client_eth(), c, vip, flags, 1, b"x");
            let what = format!("NAT segment {i}");
            let r = t.expect_from_client(&f, XdpAction::Pass, LbReason::EgressNoXdp, &what);
            let p = frame::check(&r.frame).expect("translated, checksums valid");
            assert_eq!((p.dst, p.dport), (ip("198.18.2.10"), 8080), "{what}: translated");
            assert_eq!(p.eth.dst, mac0, "{what}: the Ethernet header is the kernel's to write");
        }
        let (h, _) = maps::cache_stats(t.dp.bpf()).unwrap();
        assert_eq!(h, 0, "nothing sent from the flow cache");
        for (what, vip) in [("DR", "198.18.100.2:80"), ("TUN", "198.18.100.6:80")] {
            let f = t.syn(client(31, 7000), sa(vip));
            t.expect_from_client(&f, XdpAction::Drop, LbReason::EgressNoXdp, what);
        }
        // Attached again: redirected.
        maps::set_interface_mac(t.dp.bpf_mut(), eth1, Some(t.mac1)).unwrap();
        let f = frame::tcp(t.client_eth(), c, vip, TcpFlags::ACK, 1, b"x");
        t.expect_from_client(&f, XdpAction::Redirect, LbReason::NatIn, "eth1 attached");
        let f = t.syn(client(31, 7001), sa("198.18.100.2:80"));
        t.expect_from_client(&f, XdpAction::Redirect, LbReason::Dr, "DR, eth1 attached");
    });
}

/// Found by review: after a NAT service was deleted (or its real server removed), the real
/// server's packets to the old clients were still rewritten to the VIP, from the flow cache
/// too, and counted on the service id (which may be another service's by then), until the
/// reply entry timed out; ICMP errors about its flows were translated likewise. They now
/// pass untranslated.
#[test]
fn replies_of_a_real_server_that_left_are_not_translated() {
    let env = env();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Udp, "198.18.100.1:53", LbKind::Nat, &["198.18.2.11"], 53);
        let c = client(40, 5300);
        let r = t.send_from_client(&frame::udp(t.client_eth(), c, vip, b"query"));
        assert_eq!(r.action, XdpAction::Redirect);
        let dnat = r.frame;
        let back = frame::udp(t.server_eth(11), sa("198.18.2.11:53"), c, b"answer");
        // Twice: the second from the flow cache.
        let (h0, _) = maps::cache_stats(t.dp.bpf()).unwrap();
        for _ in 0..3 {
            t.expect_on(t.eth1, &back, XdpAction::Redirect, LbReason::NatOut, "reply");
        }
        assert!(maps::cache_stats(t.dp.bpf()).unwrap().0 > h0, "cached");
        let unreach =
            icmp_error(t.server_eth(11), (ip("198.18.2.11"), c.ip()), (3, 3), [0; 4], &dnat);
        t.apply(&DesiredState::default());
        let r = t.expect_on(t.eth1, &back, XdpAction::Pass, LbReason::NotService, "service gone");
        assert_eq!(r.frame, back, "untranslated");
        let r = t.expect_on(t.eth1, &unreach, XdpAction::Pass, LbReason::NotTcpUdp, "error");
        assert_eq!(r.frame, unreach, "untranslated");
    });
}

/// Found by review: a reload that switched a TUN service to NAT or DR (same real servers)
/// rewrote each real server's entry without its outer source, so the established TUN flows
/// (whose kind is fixed when they start) were dropped as `fib_unreachable` from then on — and,
/// the client retransmitting kept them alive, hung instead of reset. The sources stay.
#[test]
fn a_tun_flow_goes_on_encapsulated_after_its_service_leaves_tun() {
    for kind in [LbKind::Nat, LbKind::Dr] {
        let env = env();
        env.run(|t| {
            let vip =
                t.serve_rr(Protocol::Tcp, "198.18.100.8:80", LbKind::Tun, &["198.18.2.13"], 80);
            let c = client(14, 7100);
            let syn = t.syn(c, vip);
            t.expect_from_client(&syn, XdpAction::Redirect, LbReason::Tun, "SYN");
            let ack = frame::tcp(t.client_eth(), c, vip, TcpFlags::ACK, 1, b"x");
            let before = t.expect_from_client(&ack, XdpAction::Redirect, LbReason::Tun, "ACK");
            // The reload: the same service and real server, now `kind`.
            t.serve_rr(Protocol::Tcp, "198.18.100.8:80", kind, &["198.18.2.13"], 80);
            let after = t.expect_from_client(&ack, XdpAction::Redirect, LbReason::Tun, "after");
            // As before the switch but for the outer header's IP ID (and so its checksum).
            let (a, b) = (&after.frame, &before.frame);
            assert_eq!(
                (&a[..18], &a[20..24], &a[26..]),
                (&b[..18], &b[20..24], &b[26..]),
                "{kind:?}: encapsulated as before the switch"
            );
            // A new connection takes the service's new kind.
            let want = if kind == LbKind::Nat { LbReason::NatIn } else { LbReason::Dr };
            let syn = t.syn(client(14, 7101), vip);
            t.expect_from_client(&syn, XdpAction::Redirect, want, "a new connection");
        });
    }
}

/// Found by review: every packet too long for the path took a token of the per-CPU ICMP
/// answer budget before the DF check, so packets that are never answered (no DF) used up the
/// budget the DF packets of path-MTU discovery need. Only an answer sent takes a token.
#[test]
fn packets_that_are_not_answered_take_no_icmp_token() {
    let env = env();
    let d = env.d.clone();
    let eth0 = env.eth0;
    env.run(|t| {
        t.apply(&rr_service(Protocol::Udp, "198.18.100.7:53", LbKind::Tun, &["198.18.2.13"], 53));
        d.sh("ip link set eth1 mtu 1270").unwrap();
        let big = frame::udp(t.client_eth(), client(13, 7001), sa("198.18.100.7:53"), &[0; 1232]);
        assert_eq!(big[20] & 0x40, 0x40, "DF set");
        let nodf = without_df(&big);
        // The budget of every CPU (the test run's CPU among them): `n` tokens, refilled now.
        let set_tokens = |t: &mut Tester, n: u64| {
            let mut m: aya::maps::PerCpuArray<_, [u64; 2]> =
                aya::maps::PerCpuArray::try_from(t.dp.bpf_mut().map_mut("LB_ICMP_TOKENS").unwrap())
                    .unwrap();
            let cpus = aya::util::nr_cpus().unwrap();
            let now = maps::monotonic_coarse_ns();
            m.set(0, aya::maps::PerCpuValues::try_from(vec![[n, now]; cpus]).unwrap(), 0).unwrap();
        };
        let tokens = |t: &Tester| {
            let m: aya::maps::PerCpuArray<_, [u64; 2]> =
                aya::maps::PerCpuArray::try_from(t.dp.bpf().map("LB_ICMP_TOKENS").unwrap())
                    .unwrap();
            m.get(&0, 0).unwrap().iter().map(|v| v[0]).collect::<Vec<_>>()
        };
        set_tokens(t, 50);
        let prog = t.dp.bpf_mut().xdp(PROG_LB).unwrap();
        let r = run_xdp(prog, &nodf, eth0, 20).unwrap();
        assert_eq!(r.action, XdpAction::Drop, "no DF: dropped, not answered");
        // (Refills of one token a millisecond can only add.)
        let left = tokens(t);
        assert!(left.iter().all(|&n| n >= 50), "20 unanswered packets took tokens: {left:?}");
        let r = t.send_from_client(&big);
        assert_eq!(r.action, XdpAction::Tx, "the DF packet is answered");
    });
}

/// Found by review: an ICMP error about a TUN flow that no longer fit the path once
/// encapsulated was rewritten into a "fragmentation needed" about the error — an ICMP error
/// answering one, which RFC 1122 3.2.2 forbids — and then passed to the kernel, rewritten.
/// It is dropped, counted `frag_needed`, untouched.
#[test]
fn an_icmp_error_about_a_tun_flow_is_not_answered_with_an_icmp_error() {
    let env = env();
    let d = env.d.clone();
    env.run(|t| {
        let vip = t.serve_rr(Protocol::Tcp, "198.18.100.6:80", LbKind::Tun, &["198.18.2.13"], 80);
        let c = client(12, 7000);
        let syn = t.syn(c, vip);
        t.expect_from_client(&syn, XdpAction::Redirect, LbReason::Tun, "SYN");
        d.sh("ip link set eth1 mtu 1270").unwrap();
        // A router's "fragmentation needed" (DF set) about the real server's 1200-byte reply
        // (sent from the VIP straight to the client).
        let reply = frame::tcp(t.client_eth(), vip, c, TcpFlags::ACK, 1, &[0u8; 1200]);
        let mut m = vec![3u8, 4, 0, 0, 0, 0, 5, 0];
        m.extend_from_slice(&reply[14..]);
        let ck = inet_checksum(&[&m]);
        m[2..4].copy_from_slice(&ck.to_be_bytes());
        let e = frame::ip(t.client_eth(), ip("198.18.1.2"), vip.ip(), 64, 1, &m);
        assert_eq!(e[20] & 0x40, 0x40, "the error has DF");
        let r = t.expect_from_client(&e, XdpAction::Drop, LbReason::FragNeeded, "the error");
        assert_eq!(r.frame, e, "not rewritten");
    });
}
