//! LVS-TUN end to end: real UDP and TCP from a client, through the director encapsulating, to
//! a real server that decapsulates (holding the VIP on its tunnel device) and answers from the
//! VIP — with `ha_lb_xdp` and with `ha_lb_tc` (`dataplane = "tc"`), each over IPv4 (IPIP, the
//! VIP on `tunl0`) and over IPv6 (IPv6 in IPv6, the VIP on `ip6tnl0`). The host kernel has
//! neither tunnel, so the lab runs in a user-mode-linux guest (Debian's 6.1, with `ipip` and
//! `ip6_tunnel` as modules; see `ha_lb_lab::uml`). The guest has no network device but `lo`:
//! the lab's namespaces and veths exist inside it only.
//!
//! Guest topology: client (198.18.1.2, fd48:4c42:1::2) — d (198.18.1.1 | 198.18.2.1, and
//! fd48:4c42:1::1 | fd48:4c42:2::1; the program on both) — rs (198.18.2.10, fd48:4c42:2::10;
//! VIPs 198.18.100.1 and fd48:4c42:100::1). The real server's replies are routed back
//! through d's kernel (they are not a NAT flow: the program passes them), which is enough to
//! show the client gets answers from the VIP that only the real server could have sent.
//!
//! At the TC hook the client keeps its TX checksum offload, so its packets arrive as
//! CHECKSUM_PARTIAL socket buffers (what the hook is for): encapsulated, and turned into ICMP
//! answers, without losing that state; then with segmentation offload on too, GSO packets are
//! encapsulated whole and cut into segments that fit (each shorter by the outer header).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use ha_lb::{
    bpf::{lb::PROG_PASS, Bpf},
    dataplane::{
        xdp::{Hook, XdpDataplane},
        Dataplane, DesiredState, LbAlgo, LbKind, Protocol, RealServerSpec, ServiceSpec,
        VirtualServerKey,
    },
};
use ha_lb_lab::{uml, Lab, Node};

/// Bytes the client sends on the bulk connection (several full-size segments).
const BULK: usize = 20_000;

const TEST_NAME: &str = "tun_forwards_through_ipip_to_a_real_server_in_a_uml_guest";
const STEPS: &[&str] = &[
    "xdp_lab_up",
    "xdp_udp_through_tun",
    "xdp_tcp_through_tun",
    "xdp_path_mtu_through_tun",
    "xdp_counted",
    "tc_lab_up",
    "tc_udp_through_tun",
    "tc_tcp_through_tun",
    "tc_path_mtu_through_tun",
    "tc_gso_through_tun",
    "tc_udp_gso_through_tun",
    "tc_gso_path_mtu_through_tun",
    "tc_counted",
    "xdp_ipv6_lab_up",
    "xdp_ipv6_udp_through_tun",
    "xdp_ipv6_tcp_through_tun",
    "xdp_ipv6_path_mtu_through_tun",
    "xdp_ipv6_counted",
    "tc_ipv6_lab_up",
    "tc_ipv6_udp_through_tun",
    "tc_ipv6_tcp_through_tun",
    "tc_ipv6_path_mtu_through_tun",
    "tc_ipv6_gso_through_tun",
    "tc_ipv6_udp_gso_through_tun",
    "tc_ipv6_gso_path_mtu_through_tun",
    "tc_ipv6_counted",
];

#[test]
fn tun_forwards_through_ipip_to_a_real_server_in_a_uml_guest() {
    uml::host_or_guest(TEST_NAME, "tun-uml", STEPS, "384M", Duration::from_secs(180), guest);
}

fn ok(hook: &str, step: &str) {
    uml::step_ok("tun-uml", STEPS, &format!("{hook}_{step}"));
}

fn sh(node: &Node, script: &str) {
    node.sh(script).unwrap_or_else(|e| panic!("{}: {script}: {e:#}", node.name));
}

fn guest() {
    // The guest's / is the host's, read-only: namespaces need a writable /run.
    let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs", "/run"]).status().unwrap();
    assert!(st.success(), "mount /run");
    let modules = ["veth", "ipip", "ip6_tunnel", "sch_ingress", "cls_bpf"];
    uml::load_modules(&modules).expect("load the modules");
    for fam in [&IPV4, &IPV6] {
        lab(Hook::Xdp, fam);
        lab(Hook::Tc, fam);
    }
}

/// One address family's lab: addresses, and what differs in setting it up.
struct Family {
    /// Step-name prefix after the hook's ("" for IPv4).
    step: &'static str,
    client: &'static str,
    d_front: &'static str,
    d_back: &'static str,
    rs: &'static str,
    vip: &'static str,
    /// Prefix length of the lab's links.
    plen: u8,
    /// The VIP's network, routed to d by the client.
    vip_net: &'static str,
    /// The real server's tunnel device (the kernel's catch-all one), where the VIP lives.
    tunnel_dev: &'static str,
    /// Encapsulated GSO at TC: the device feature that would pass it whole.
    gso_feature: &'static str,
    /// `ip` with the family's flag (for `route flush cache`).
    ip: &'static str,
    /// Path MTU step: what the director answers with for d's eth1 (1500).
    mtu_left: u16,
}

const IPV4: Family = Family {
    step: "",
    client: "198.18.1.2",
    d_front: "198.18.1.1",
    d_back: "198.18.2.1",
    rs: "198.18.2.10",
    vip: "198.18.100.1",
    plen: 24,
    vip_net: "198.18.100.0/24",
    tunnel_dev: "tunl0",
    gso_feature: "tx-ipxip4-segmentation",
    ip: "ip -4",
    mtu_left: 1480,
};

const IPV6: Family = Family {
    step: "ipv6_",
    client: "fd48:4c42:1::2",
    d_front: "fd48:4c42:1::1",
    d_back: "fd48:4c42:2::1",
    rs: "fd48:4c42:2::10",
    vip: "fd48:4c42:100::1",
    plen: 64,
    vip_net: "fd48:4c42:100::/64",
    tunnel_dev: "ip6tnl0",
    gso_feature: "tx-ipxip6-segmentation",
    ip: "ip -6",
    mtu_left: 1460,
};

impl Family {
    fn v6(&self) -> bool {
        self.plen == 64
    }

    /// The prefix length of one address.
    fn host_plen(&self) -> u8 {
        if self.v6() {
            128
        } else {
            32
        }
    }

    fn sa(&self, addr: &str, port: u16) -> SocketAddr {
        SocketAddr::new(addr.parse().unwrap(), port)
    }

    /// `ip addr add` of `addr` on `dev` (IPv6 without duplicate address detection, so the
    /// address is usable at once).
    fn addr_add(&self, addr: &str, plen: u8, dev: &str) -> String {
        let nodad = if self.v6() { " nodad" } else { "" };
        format!("ip addr add {addr}/{plen} dev {dev}{nodad}")
    }
}

fn lab(hook: Hook, fam: &Family) {
    let h = format!("{}_{}", if hook == Hook::Tc { "tc" } else { "xdp" }, fam.step);
    let h = h.trim_end_matches('_');
    let mut lab = Lab::new().unwrap();
    let client = lab.node("client").unwrap();
    let d = lab.node("d").unwrap();
    let rs = lab.node("rs").unwrap();
    lab.veth(&client, "eth0", &d, "eth0").unwrap();
    lab.veth(&d, "eth1", &rs, "eth0").unwrap();
    let plen = fam.plen;
    sh(
        &client,
        &format!(
            "{} && ip route add {} via {}",
            fam.addr_add(fam.client, plen, "eth0"),
            fam.vip_net,
            fam.d_front
        ),
    );
    if hook == Hook::Xdp {
        // XDP forwards bytes: a CHECKSUM_PARTIAL packet would arrive with an unfinished
        // checksum (see xdp_lab.rs). At TC it keeps that state, and segmentation offload
        // stays off until the GSO step, so that full-size segments meet the MTU one by one.
        sh(&client, "ethtool -K eth0 tx off >/dev/null");
    } else {
        sh(&client, "ethtool -K eth0 tso off gso off >/dev/null");
        // Encapsulated GSO packets are cut into segments on the director's way out (a veth
        // would pass them whole, and its peer's MTU check lets any GSO packet through), so
        // every segment meets eth1's MTU.
        sh(&d, &format!("ethtool -K eth1 {} off >/dev/null", fam.gso_feature));
    }
    sh(
        &d,
        &format!(
            "{} && {} && sysctl -qw net.ipv4.ip_forward=1{}",
            fam.addr_add(fam.d_front, plen, "eth0"),
            fam.addr_add(fam.d_back, plen, "eth1"),
            if fam.v6() { " net.ipv6.conf.all.forwarding=1" } else { "" }
        ),
    );
    let client_net = if fam.v6() { "fd48:4c42:1::/64" } else { "198.18.1.0/24" };
    sh(
        &rs,
        &format!(
            "{} && ip route add {client_net} via {} && ip link set {dev} up && {} \
             && sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.tunl0.rp_filter=0 \
                net.ipv4.conf.eth0.rp_filter=0",
            fam.addr_add(fam.rs, plen, "eth0"),
            fam.d_back,
            fam.addr_add(fam.vip, fam.host_plen(), fam.tunnel_dev),
            dev = fam.tunnel_dev,
        ),
    );
    // The director needs the real server's MAC (health checks would keep it warm).
    sh(&d, &format!("ping -c 1 -W 2 {} >/dev/null", fam.rs));

    // The real server answers on the VIP: UDP echo of its name, and one TCP request.
    let vip = |port| fam.sa(fam.vip, port);
    let (udp, tcp, bulk) = rs
        .run(|| {
            let u = UdpSocket::bind(vip(5353)).unwrap();
            u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let t = TcpListener::bind(vip(8080)).unwrap();
            let b = TcpListener::bind(vip(8081)).unwrap();
            (u, t, b)
        })
        .unwrap();
    let udp_gso = rs
        .run(|| {
            let u = UdpSocket::bind(vip(5354)).unwrap();
            u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            u
        })
        .unwrap();
    // One bulk connection at XDP; at TC another for the GSO step.
    let bulks = if hook == Hook::Tc { 3 } else { 1 };
    let servers = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let (n, from) = udp.recv_from(&mut buf).expect("the datagram reached the real server");
        udp.send_to(&[b"rs:", &buf[..n]].concat(), from).unwrap();
        let (mut c, _) = tcp.accept().expect("the connection reached the real server");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = c.read(&mut buf).unwrap();
        c.write_all(&[b"rs:", &buf[..n]].concat()).unwrap();
        // Full-size segments: only get through once the client has learnt the path MTU (or,
        // GSO at TC, once cut shorter by the director).
        for _ in 0..bulks {
            let (mut c, _) = bulk.accept().expect("the bulk connection reached the real server");
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut got = vec![0u8; BULK];
            c.read_exact(&mut got).expect("all bulk bytes arrived");
            assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
            c.write_all(format!("rs:{}", got.len()).as_bytes()).unwrap();
        }
    });

    let bpf = Bpf::load(tracing::Level::WARN).expect("load the eBPF object");
    let mut dp = XdpDataplane::with_hook(bpf, hook).expect("the program loads");
    d.run(|| {
        dp.attach_interface("eth0").unwrap();
        dp.attach_interface("eth1").unwrap();
    })
    .unwrap();
    let mut pass = Bpf::load(tracing::Level::WARN).expect("load the eBPF object");
    if hook == Hook::Xdp {
        // XDP_REDIRECT into a veth needs NAPI on its peer.
        rs.run(|| pass.attach_xdp(PROG_PASS, "eth0").unwrap()).unwrap();
        client.run(|| pass.attach_xdp(PROG_PASS, "eth0").unwrap()).unwrap();
    }
    let tun = |port: u16, protocol| {
        let mut s = ServiceSpec::new(LbAlgo::Rr, LbKind::Tun);
        s.real_servers = vec![RealServerSpec { addr: fam.rs.parse().unwrap(), port, weight: 1 }];
        (VirtualServerKey { address: fam.vip.parse().unwrap(), port, protocol }, s)
    };
    let desired = DesiredState {
        services: BTreeMap::from([
            tun(5353, Protocol::Udp),
            tun(5354, Protocol::Udp),
            tun(8080, Protocol::Tcp),
            tun(8081, Protocol::Tcp),
        ]),
    };
    // Applied inside d: the outer source is d's address toward the real server.
    d.run(|| dp.apply(&desired).unwrap()).unwrap();
    ok(h, "lab_up");

    let from = fam.sa(fam.client, 0);
    let answer = client
        .run(|| {
            let s = UdpSocket::bind(from).unwrap();
            s.connect(vip(5353)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.send(b"hello").unwrap();
            let mut buf = [0u8; 64];
            s.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .unwrap();
    if answer.is_err() {
        let st = dp.stats().unwrap();
        let nonzero: Vec<_> = st.reasons.iter().filter(|(_, v)| *v > 0).collect();
        println!("tun-uml: director reasons {nonzero:?}");
        println!("{}", rs.sh("ip -s link; ip addr; cat /proc/net/snmp").unwrap_or_default());
    }
    assert_eq!(answer.expect("an answer from the VIP"), "rs:hello");
    ok(h, "udp_through_tun");

    let answer = client
        .run(|| {
            let mut c = TcpStream::connect_timeout(&vip(8080), Duration::from_secs(10))
                .expect("connect through TUN");
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"GET").unwrap();
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .unwrap();
    assert_eq!(answer, "rs:GET");
    ok(h, "tcp_through_tun");

    // Client segments of full size (1500 bytes of IP) are 20 (IPv4) or 40 (IPv6) bytes longer
    // once encapsulated than d's eth1 (MTU 1500) takes: the director answers with ICMP
    // "fragmentation needed" / ICMPv6 "packet too big" (MTU 1480 / 1460), the client's TCP
    // lowers its segment size and the data gets through.
    let before = dp.stats().unwrap().reason("too_big_answered");
    assert_eq!(bulk_through_tun(&client, vip(8081)), format!("rs:{BULK}"));
    let frag = dp.stats().unwrap().reason("too_big_answered") - before;
    assert!(frag >= 1, "the director answered too-long segments ({frag})");
    let pmtu = client.sh(&format!("{} route get {}", fam.ip, fam.vip)).unwrap_or_default();
    assert!(pmtu.contains(&format!("mtu {}", fam.mtu_left)), "the client learnt: {pmtu}");
    println!("tun-uml: {h}: {frag} segments answered (path MTU {})", fam.mtu_left);
    ok(h, "path_mtu_through_tun");

    if hook == Hook::Tc {
        // Forget the path MTU learnt above, then send GSO packets of full-size segments: the
        // director encapsulates each whole and the kernel cuts it into segments shorter by
        // the outer header, which fit — the data arrives intact without any answer needed.
        let flush = format!("{} route flush cache", fam.ip);
        sh(&client, &format!("{flush} && ethtool -K eth0 tso on gso on >/dev/null"));
        let (tun_before, frag_before) = (st_tun(&dp), st_answered(&dp));
        assert_eq!(bulk_through_tun(&client, vip(8081)), format!("rs:{BULK}"));
        let (tun, frag) = (st_tun(&dp) - tun_before, st_answered(&dp) - frag_before);
        println!("tun-uml: {h}: GSO bulk in {tun} packets, {frag} answered");
        // Handshake and FIN included: fewer packets than the data's full-size segments.
        assert!(tun < BULK.div_ceil(1460) as u64, "GSO packets encapsulated whole ({tun})");
        assert_eq!(frag, 0, "nothing needed answering");
        ok(h, "gso_through_tun");

        // UDP GSO (one send of three datagrams, UDP_SEGMENT): one packet to the director,
        // encapsulated with its segment size kept (it delimits the datagrams), three
        // datagrams at the real server.
        let tun_before = st_tun(&dp);
        client
            .run(|| {
                let s = UdpSocket::bind(from).unwrap();
                s.connect(vip(5354)).unwrap();
                let seg: libc::c_int = 1000;
                // SAFETY: setsockopt on an open socket with a c_int option value.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::SOL_UDP,
                        libc::UDP_SEGMENT,
                        (&seg as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "UDP_SEGMENT");
                let data: Vec<u8> = (0..3000).map(|i| (i / 1000) as u8).collect();
                s.send(&data).unwrap();
            })
            .unwrap();
        let mut buf = [0u8; 2000];
        for k in 0..3u8 {
            let n = udp_gso.recv(&mut buf).expect("each datagram reached the real server");
            assert_eq!(n, 1000);
            assert!(buf[..n].iter().all(|b| *b == k), "datagram {k} intact");
        }
        // One GSO packet for the three datagrams (a straggler of the previous step's
        // connection, its last ACK say, may be counted beside it: fewer than three is what
        // shows the datagrams went through as one packet).
        let tun = st_tun(&dp) - tun_before;
        assert!((1..3).contains(&tun), "one GSO packet encapsulated, not 3 datagrams: {tun}");
        ok(h, "udp_gso_through_tun");

        // GSO packets whose segments do not fit: a route toward the real server with a
        // smaller MTU (1400) than the client's path. The director answers a GSO packet (cut
        // to the quote first) with the MTU left, the client's TCP lowers its segment size,
        // and the data gets through.
        sh(&client, &flush);
        sh(&d, &format!("ip route add {}/{} dev eth1 mtu lock 1400", fam.rs, fam.host_plen()));
        let frag_before = st_answered(&dp);
        assert_eq!(bulk_through_tun(&client, vip(8081)), format!("rs:{BULK}"));
        let frag = st_answered(&dp) - frag_before;
        println!("tun-uml: {h}: {frag} GSO packets answered behind a 1400-byte route");
        assert!(frag >= 1, "the director answered too-long GSO packets ({frag})");
        ok(h, "gso_path_mtu_through_tun");
    }

    servers.join().unwrap();
    let st = dp.stats().unwrap();
    assert!(st.reason("tun") >= 3, "encapsulated: {}", st.reason("tun"));
    println!("tun-uml: {h}: {} packets encapsulated", st.reason("tun"));
    ok(h, "counted");
    drop(dp);
    drop(lab);
}

/// Sends BULK bytes to the bulk service `to` through the director; the real server's answer.
fn bulk_through_tun(client: &Node, to: SocketAddr) -> String {
    client
        .run(|| {
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(10))
                .expect("connect through TUN");
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
            c.write_all(&data).unwrap();
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).expect("an answer after the bulk data");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .unwrap()
}

fn st_tun(dp: &XdpDataplane) -> u64 {
    dp.stats().unwrap().reason("tun")
}

fn st_answered(dp: &XdpDataplane) -> u64 {
    dp.stats().unwrap().reason("too_big_answered")
}
