//! Shared setup for the XDP forwarding tests (`xdp_*.rs`).
//!
//! Packet tests run `ha_lb_xdp` with `BPF_PROG_TEST_RUN` *inside a lab node* ("d", the
//! director): the program's `bpf_fib_lookup` resolves routes and neighbours in the namespace
//! of the ingress interface, so d gets real interfaces, routes and static neighbour entries,
//! and tests run from a thread inside d (`Node::run`). XDP_TX/XDP_REDIRECT are only verdicts
//! under test-run (nothing is transmitted); which interface a frame would leave by shows in
//! its rewritten source MAC. The test thread is pinned to one CPU so per-CPU state (the
//! round-robin cursor) is deterministic.
//!
//! d: eth0 198.18.1.1/24 fd48:4c42:1::1/64  (client side; peer "c")
//!    eth1 198.18.2.1/24 fd48:4c42:2::1/64  (real-server side; peer "s")
//!    clients 198.18.64.0/18 and fd48:4c42:64::/48 via c (198.18.1.2 / fd48:4c42:1::2)
//!    real servers 198.18.2.10-59 / fd48:4c42:2::10-59 on eth1, 198.18.1.10-59 on eth0
//!    (static neighbours with MACs 02:00:00:00:<side>:<n>)
//!    198.18.200.0/24 unreachable

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use ha_lb::{
    bpf::{
        lb::{counters, LbCounters},
        testrun::{run_xdp, RunResult, XdpAction},
        Bpf, PROG_LB,
    },
    dataplane::{
        xdp::XdpDataplane, Dataplane, DesiredState, LbAlgo, LbKind, Protocol, RealServerSpec,
        ServiceSpec, VirtualServerKey,
    },
};
use ha_lb_common::lb::LbReason;
use ha_lb_lab::{
    frame::{self, Eth, TcpFlags},
    Lab, Node,
};

pub struct Env {
    pub lab: Lab,
    pub d: Node,
    pub eth0: u32,
    pub eth1: u32,
    pub mac0: [u8; 6],
    pub mac1: [u8; 6],
    /// MAC of the client-side gateway (c:eth0).
    pub gw_mac: [u8; 6],
}

/// The static neighbour MAC of real server number `n` on side `side` (1 = eth0, 2 = eth1).
pub fn rs_mac(side: u8, n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, side, n]
}

pub fn env() -> Env {
    let mut lab = Lab::new().unwrap();
    let d = lab.node("d").unwrap();
    let c = lab.node("c").unwrap();
    let s = lab.node("s").unwrap();
    lab.veth(&d, "eth0", &c, "eth0").unwrap();
    lab.veth(&d, "eth1", &s, "eth0").unwrap();
    d.addr("eth0", "198.18.1.1/24").unwrap();
    d.addr("eth1", "198.18.2.1/24").unwrap();
    d.addr("eth0", "fd48:4c42:1::1/64").unwrap();
    d.addr("eth1", "fd48:4c42:2::1/64").unwrap();
    c.addr("eth0", "198.18.1.2/24").unwrap();
    c.addr("eth0", "fd48:4c42:1::2/64").unwrap();
    d.sysctl("net.ipv4.ip_forward", "1").unwrap();
    d.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    let gw_mac = c.mac("eth0").unwrap();
    let mut script = String::new();
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    script += &format!(
        "ip neigh replace 198.18.1.2 lladdr {g} dev eth0 nud permanent\n\
         ip neigh replace fd48:4c42:1::2 lladdr {g} dev eth0 nud permanent\n\
         ip route add 198.18.64.0/18 via 198.18.1.2\n\
         ip route add fd48:4c42:64::/48 via fd48:4c42:1::2\n\
         ip route add unreachable 198.18.200.0/24\n",
        g = mac(gw_mac)
    );
    for n in 10..60u8 {
        script += &format!(
            "ip neigh replace 198.18.2.{n} lladdr {m2} dev eth1 nud permanent\n\
             ip neigh replace fd48:4c42:2::{n} lladdr {m2} dev eth1 nud permanent\n\
             ip neigh replace 198.18.1.{n} lladdr {m1} dev eth0 nud permanent\n",
            m1 = mac(rs_mac(1, n)),
            m2 = mac(rs_mac(2, n)),
        );
    }
    d.sh(&script).unwrap();
    Env {
        eth0: d.ifindex("eth0").unwrap(),
        eth1: d.ifindex("eth1").unwrap(),
        mac0: d.mac("eth0").unwrap(),
        mac1: d.mac("eth1").unwrap(),
        gw_mac,
        d,
        lab,
    }
}

impl Env {
    /// Runs `f` on a thread inside d, pinned to CPU 0, with a fresh data plane whose program
    /// counts as attached to eth0 and eth1 (their MACs recorded, as an attach records them):
    /// it forwards frames addressed to them, and redirects to them.
    pub fn run<T: Send>(&self, f: impl FnOnce(&mut Tester) -> T + Send) -> T {
        let (eth0, eth1, mac0, mac1) = (self.eth0, self.eth1, self.mac0, self.mac1);
        self.d
            .run(move || {
                pin_to_cpu0();
                let bpf = Bpf::load(tracing::Level::WARN).expect("load eBPF object");
                let dp = XdpDataplane::new(bpf).expect("verifier accepts ha_lb_xdp");
                let mut t = Tester { dp, eth0, eth1, mac0, mac1 };
                t.register_interfaces();
                f(&mut t)
            })
            .expect("test body")
    }
}

pub fn pin_to_cpu0() {
    pin_to(0);
}

/// Pins the calling thread to CPU `cpu`.
pub fn pin_to(cpu: usize) {
    // SAFETY: plain sched_setaffinity on the calling thread with a valid cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
    }
}

pub struct Tester {
    pub dp: XdpDataplane,
    pub eth0: u32,
    pub eth1: u32,
    pub mac0: [u8; 6],
    pub mac1: [u8; 6],
}

impl Tester {
    /// Records eth0 and eth1 as interfaces the program is attached to (`LB_IF_MAC`), as the
    /// daemon's attach does: an XDP program redirects only to those.
    pub fn register_interfaces(&mut self) {
        let bpf = self.dp.bpf_mut();
        ha_lb::bpf::lb::set_interface_mac(bpf, self.eth0, Some(self.mac0)).unwrap();
        ha_lb::bpf::lb::set_interface_mac(bpf, self.eth1, Some(self.mac1)).unwrap();
    }

    /// A frame from the real-server side's Ethernet header: from real server `n`'s MAC to
    /// eth1's.
    pub fn server_eth(&self, n: u8) -> Eth {
        Eth { src: rs_mac(2, n), dst: self.mac1 }
    }

    pub fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> RunResult {
        let prog = self.dp.bpf_mut().xdp(PROG_LB).unwrap();
        run_xdp(prog, frame, ifindex, 1).unwrap()
    }

    /// A frame from the client side.
    pub fn send_from_client(&mut self, frame: &[u8]) -> RunResult {
        let i = self.eth0;
        self.run_on(i, frame)
    }

    /// A frame from the real-server side.
    pub fn send_from_servers(&mut self, frame: &[u8]) -> RunResult {
        let i = self.eth1;
        self.run_on(i, frame)
    }

    pub fn counters(&self) -> LbCounters {
        counters(self.dp.bpf()).unwrap()
    }

    /// Sends `frame` as received on `ifindex` and asserts what it did: the verdict `action`,
    /// and `reason` as the one reason counter it moved (by one). `what` names the frame in
    /// the failure messages. Returns the result (the frame as the program left it).
    pub fn expect_on(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        action: XdpAction,
        reason: LbReason,
        what: &str,
    ) -> RunResult {
        let before = self.counters();
        let r = self.run_on(ifindex, frame);
        assert_eq!(r.action, action, "{what}: verdict");
        assert_eq!(self.counters().since(&before), vec![(reason.name(), 1)], "{what}: counters");
        r
    }

    /// [`Tester::expect_on`] for a frame from the client side (the usual one; the real-server
    /// side is `t.expect_on(t.eth1, ..)`).
    pub fn expect_from_client(
        &mut self,
        frame: &[u8],
        action: XdpAction,
        reason: LbReason,
        what: &str,
    ) -> RunResult {
        let i = self.eth0;
        self.expect_on(i, frame, action, reason, what)
    }

    pub fn apply(&mut self, d: &DesiredState) {
        self.dp.apply(d).unwrap();
    }

    /// Applies [`rr_service`] as the only service; returns its VIP.
    pub fn serve_rr(
        &mut self,
        proto: Protocol,
        vip: &str,
        kind: LbKind,
        addrs: &[&str],
        port: u16,
    ) -> SocketAddr {
        self.apply(&rr_service(proto, vip, kind, addrs, port));
        sa(vip)
    }

    /// A client's SYN from `c` to `vip`, without payload.
    pub fn syn(&self, c: SocketAddr, vip: SocketAddr) -> Vec<u8> {
        frame::tcp(self.client_eth(), c, vip, TcpFlags::SYN, 1, b"")
    }

    /// Sends a TCP segment client -> `vip` and returns the real server address it was
    /// forwarded (NAT) to; panics unless it was forwarded with valid checksums.
    pub fn nat_pick(&mut self, client: SocketAddr, vip: SocketAddr, flags: TcpFlags) -> IpAddr {
        let f = frame::tcp(self.client_eth(), client, vip, flags, 1, b"x");
        let r = self.send_from_client(&f);
        assert_eq!(r.action, XdpAction::Redirect, "forwarded");
        frame::check(&r.frame).expect("valid checksums").dst
    }

    pub fn udp_pick(&mut self, client: SocketAddr, vip: SocketAddr) -> IpAddr {
        let f = frame::udp(self.client_eth(), client, vip, b"q");
        let r = self.send_from_client(&f);
        assert_eq!(r.action, XdpAction::Redirect, "forwarded");
        frame::check(&r.frame).expect("valid checksums").dst
    }

    /// The data path's word of the flow-cache epoch (`LB_CACHE_EPOCH[0]`): bumped whenever the
    /// data path makes every CPU's flow cache forget (user space bumps word 1).
    pub fn cache_epoch(&self) -> u64 {
        let m: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(self.dp.bpf().map("LB_CACHE_EPOCH").unwrap()).unwrap();
        m.get(&0, 0).unwrap()
    }

    pub fn client_eth(&self) -> Eth {
        Eth { src: [0x02, 0xcc, 0, 0, 0, 1], dst: self.mac0 }
    }
}

pub fn vs(s: &str, protocol: Protocol) -> VirtualServerKey {
    let sa: SocketAddr = s.parse().unwrap();
    VirtualServerKey { address: sa.ip(), port: sa.port(), protocol }
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Real servers `addrs` with `weights`, all on `port`.
pub fn reals(addrs: &[&str], port: u16, weights: &[u32]) -> Vec<RealServerSpec> {
    addrs
        .iter()
        .zip(weights)
        .map(|(a, &w)| RealServerSpec { addr: a.parse().unwrap(), port, weight: w })
        .collect()
}

pub fn one_service(
    vs: VirtualServerKey,
    algo: LbAlgo,
    kind: LbKind,
    real_servers: Vec<RealServerSpec>,
) -> DesiredState {
    let mut spec = ServiceSpec::new(algo, kind);
    spec.real_servers = real_servers;
    DesiredState { services: BTreeMap::from([(vs, spec)]) }
}

/// Recomputes the IPv4 header checksum of frame `f` after a test edited the header.
pub fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = (f[14] & 0x0f) as usize * 4;
    f[24] = 0;
    f[25] = 0;
    let c = frame::inet_checksum(&[&f[14..14 + ihl]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// IPv4 frame `f` without the don't-fragment bit (header checksum fixed).
pub fn without_df(f: &[u8]) -> Vec<u8> {
    let mut f = f.to_vec();
    f[20] &= !0x40;
    fix_ip_checksum(&mut f);
    f
}

/// One rr service at `vip` ("address:port") of `kind`, with real servers `addrs` on `port`,
/// weight 1 each.
pub fn rr_service(
    proto: Protocol,
    vip: &str,
    kind: LbKind,
    addrs: &[&str],
    port: u16,
) -> DesiredState {
    one_service(vs(vip, proto), LbAlgo::Rr, kind, reals(addrs, port, &vec![1; addrs.len()]))
}

/// The services of all of `states` in one desired state.
pub fn merged(states: impl IntoIterator<Item = DesiredState>) -> DesiredState {
    DesiredState { services: states.into_iter().flat_map(|s| s.services).collect() }
}

/// Client number `i` (distinct addresses in 198.18.64.0/18).
pub fn client(i: u32, port: u16) -> SocketAddr {
    let a = u32::from_be_bytes([198, 18, 64, 0]) + (i % 16384);
    SocketAddr::new(IpAddr::from(a.to_be_bytes()), port)
}

/// How many of `picks` went to each address.
pub fn tally(picks: &[IpAddr]) -> BTreeMap<IpAddr, usize> {
    let mut m = BTreeMap::new();
    for p in picks {
        *m.entry(*p).or_insert(0) += 1;
    }
    m
}

/// An answer quotes 20 bytes of the packet's L4 header (`q`) as it was sent (`sent`) but for
/// the checksum field at `field` (TCP 16, UDP 6), which holds the value that finishing a
/// checksum over the quote leaves as it is (fwd.rs `neutral_quote`).
pub fn assert_quoted_l4(q: &[u8], sent: &[u8], field: usize) {
    assert_eq!(q.len(), 20);
    assert_eq!((&q[..field], &q[field + 2..]), (&sent[..field], &sent[field + 2..]), "quoted");
    let v = u16::from_be_bytes([q[field], q[field + 1]]);
    let finished = ha_lb_lab::frame::inet_checksum(&[q]);
    assert!(finished == v || (finished, v) == (0, 0xffff) || (finished, v) == (0xffff, 0));
}
