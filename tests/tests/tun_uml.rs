//! LVS-TUN end to end: real UDP and TCP from a client, through the director encapsulating in
//! IPIP, to a real server that decapsulates on `tunl0` (holding the VIP) and answers from the
//! VIP — once with `ha_lb_xdp`, once with `ha_lb_tc` (`dataplane = "tc"`). The host kernel has
//! no IPIP, so the lab runs in a user-mode-linux guest (Debian's 6.1, with `ipip` as a module;
//! see `ha_lb_lab::uml`). The guest has no network device but `lo`: the lab's namespaces and
//! veths exist inside it only.
//!
//! Guest topology: client (198.18.1.2) — d (198.18.1.1 | 198.18.2.1, the program on both) —
//! rs (198.18.2.10, VIP 198.18.100.1 on tunl0). The real server's replies are routed back
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
use ha_lb_lab::{
    uml::{self, Uml},
    Lab, Node,
};

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
];

#[test]
fn tun_forwards_through_ipip_to_a_real_server_in_a_uml_guest() {
    if uml::in_guest().is_some() {
        guest();
        return;
    }
    let mut uml = Uml::find().expect("a UML kernel");
    uml.mem = "384M".into();
    uml.timeout = Duration::from_secs(180);
    uml.run_test_steps(TEST_NAME, "tun-uml", STEPS);
}

fn ok(hook: &str, step: &str) {
    let step = format!("{hook}_{step}");
    assert!(STEPS.contains(&step.as_str()), "unknown step {step}");
    println!("tun-uml: {step}: ok");
}

fn sh(node: &Node, script: &str) {
    node.sh(script).unwrap_or_else(|e| panic!("{}: {script}: {e:#}", node.name));
}

fn guest() {
    // The guest's / is the host's, read-only: namespaces need a writable /run.
    let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs", "/run"]).status().unwrap();
    assert!(st.success(), "mount /run");
    uml::load_modules(&["veth", "ipip", "sch_ingress", "cls_bpf"]).expect("load the modules");
    lab(Hook::Xdp);
    lab(Hook::Tc);
}

fn lab(hook: Hook) {
    let h = if hook == Hook::Tc { "tc" } else { "xdp" };
    let mut lab = Lab::new().unwrap();
    let client = lab.node("client").unwrap();
    let d = lab.node("d").unwrap();
    let rs = lab.node("rs").unwrap();
    lab.veth(&client, "eth0", &d, "eth0").unwrap();
    lab.veth(&d, "eth1", &rs, "eth0").unwrap();
    sh(
        &client,
        "ip addr add 198.18.1.2/24 dev eth0 && ip route add 198.18.100.0/24 via 198.18.1.1",
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
        sh(&d, "ethtool -K eth1 tx-ipxip4-segmentation off >/dev/null");
    }
    sh(
        &d,
        "ip addr add 198.18.1.1/24 dev eth0 && ip addr add 198.18.2.1/24 dev eth1 \
         && sysctl -qw net.ipv4.ip_forward=1",
    );
    sh(
        &rs,
        "ip addr add 198.18.2.10/24 dev eth0 && ip route add 198.18.1.0/24 via 198.18.2.1 \
         && ip link set tunl0 up && ip addr add 198.18.100.1/32 dev tunl0 \
         && sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.tunl0.rp_filter=0 \
            net.ipv4.conf.eth0.rp_filter=0",
    );
    // The director needs the real server's MAC (health checks would keep it warm).
    sh(&d, "ping -c 1 -W 2 198.18.2.10 >/dev/null");

    // The real server answers on the VIP: UDP echo of its name, and one TCP request.
    let (udp, tcp, bulk) = rs
        .run(|| {
            let u = UdpSocket::bind("198.18.100.1:5353").unwrap();
            u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let t = TcpListener::bind("198.18.100.1:8080").unwrap();
            let b = TcpListener::bind("198.18.100.1:8081").unwrap();
            (u, t, b)
        })
        .unwrap();
    let udp_gso = rs
        .run(|| {
            let u = UdpSocket::bind("198.18.100.1:5354").unwrap();
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
        s.real_servers =
            vec![RealServerSpec { addr: "198.18.2.10".parse().unwrap(), port, weight: 1 }];
        (VirtualServerKey { address: "198.18.100.1".parse().unwrap(), port, protocol }, s)
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

    let vip_udp: SocketAddr = "198.18.100.1:5353".parse().unwrap();
    let answer = client
        .run(|| {
            let s = UdpSocket::bind("198.18.1.2:0").unwrap();
            s.connect(vip_udp).unwrap();
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
            let mut c = TcpStream::connect_timeout(
                &"198.18.100.1:8080".parse().unwrap(),
                Duration::from_secs(10),
            )
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

    // Client segments of 1460 bytes of payload are 1520 bytes once encapsulated, more than
    // d's eth1 (MTU 1500) takes: the director answers with ICMP "fragmentation needed"
    // (MTU 1480), the client's TCP lowers its segment size and the data gets through.
    let before = dp.stats().unwrap().reason("too_big_answered");
    assert_eq!(bulk_through_tun(&client), format!("rs:{BULK}"));
    let frag = dp.stats().unwrap().reason("too_big_answered") - before;
    assert!(frag >= 1, "the director answered too-long segments ({frag})");
    println!("tun-uml: {h}: {frag} segments answered with fragmentation needed");
    ok(h, "path_mtu_through_tun");

    if hook == Hook::Tc {
        // Forget the path MTU learnt above, then send GSO packets of full-size segments: the
        // director encapsulates each whole and the kernel cuts it into segments 20 bytes
        // shorter, which fit — the data arrives intact without any answer needed.
        sh(&client, "ip route flush cache && ethtool -K eth0 tso on gso on >/dev/null");
        let (tun_before, frag_before) = (st_tun(&dp), st_answered(&dp));
        assert_eq!(bulk_through_tun(&client), format!("rs:{BULK}"));
        let (tun, frag) = (st_tun(&dp) - tun_before, st_answered(&dp) - frag_before);
        println!("tun-uml: tc: GSO bulk in {tun} packets, {frag} answered");
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
                let s = UdpSocket::bind("198.18.1.2:0").unwrap();
                s.connect("198.18.100.1:5354").unwrap();
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
        assert_eq!(st_tun(&dp) - tun_before, 1, "one GSO packet encapsulated");
        ok(h, "udp_gso_through_tun");

        // GSO packets whose segments do not fit: a route toward the real server with a
        // smaller MTU (1400) than the client's path. The director answers a GSO packet (cut
        // to the quote first) with MTU 1380, the client's TCP lowers its segment size, and the
        // data gets through.
        sh(&client, "ip route flush cache");
        sh(&d, "ip route add 198.18.2.10/32 dev eth1 mtu lock 1400");
        let frag_before = st_answered(&dp);
        assert_eq!(bulk_through_tun(&client), format!("rs:{BULK}"));
        let frag = st_answered(&dp) - frag_before;
        println!("tun-uml: tc: {frag} GSO packets answered behind a 1400-byte route");
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

/// Sends BULK bytes to the bulk service through the director; the real server's answer.
fn bulk_through_tun(client: &Node) -> String {
    client
        .run(|| {
            let mut c = TcpStream::connect_timeout(
                &"198.18.100.1:8081".parse().unwrap(),
                Duration::from_secs(10),
            )
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
