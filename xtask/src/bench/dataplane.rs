//! `cargo xtask bench dataplane`: what one director core does with small UDP packets and
//! with TCP requests, through ha-lb's XDP programs and through its peers, on one veth
//! topology ([`ha_lb_lab::benchtopo`]) and in one run.
//!
//! Variants (`--variants`): `direct` (client to real server, no director), `routed` (the
//! director's kernel forwarding, no load balancing), `nftables` (DNAT with `numgen`),
//! `haproxy` (TCP mode, one thread), `xdp-drop` / `xdp-redirect` (empty XDP programs on the
//! director: the floor and the ceiling of a forwarding program), `xdp-rewrite` (MACs swapped,
//! then redirected: the ceiling of a program that touches the frame), `tc-redirect` (a TC
//! ingress program redirecting every skb: the ceiling of a TC-hook director, which sees
//! socket skbs without veth's copy into a page for native XDP), `ha-lb-nat` / `ha-lb-dr`
//! (`ha_lb_xdp`), `ha-lb-nat-tc` / `ha-lb-dr-tc` (the same data path at the TC ingress hook,
//! `ha_lb_tc`: `dataplane = "tc"`).
//!
//! Measurements per variant and round:
//! - UDP frames: 60-byte UDP frames from the live-frames generator (`BPF_PROG_RUN` with
//!   `BPF_F_TEST_XDP_LIVE_FRAMES`, XDP_TX on the client's veth), ~2 s per run, arriving at
//!   the director as xdp_frames; many source ports (flows).
//! - UDP skbs: the same traffic from UDP sockets in the client (sendmmsg), arriving as skbs.
//! - TCP keep-alive and new-connection-per-request HTTP (wrk against nginx real servers).
//! - iperf3 throughput (one TCP stream).
//!
//! How each variant is set up on the director (everything else is identical):
//! - ha-lb: an [`XdpDataplane`] on the bench's own copy of the eBPF object, `ha_lb_xdp`
//!   attached to the director's three veths, services applied as the reconciler would
//!   (round robin; NAT, or DR with the real servers answering over their direct link). Driven
//!   directly rather than through `ha-lb run`, so only the data plane is measured (no VRRP,
//!   health checks or daemon threads on the director core).
//! - nftables: a prerouting DNAT chain with `numgen inc mod 2` (conntrack un-NATs replies).
//! - HAProxy: `mode tcp`, one thread, `balance roundrobin`, pinned to the director CPU.
//! - routed: the client addresses real server 1 directly; the director only forwards.
//! - direct: the client talks to real server 1 over their own link; no director at all.
//! - xdp-drop / xdp-redirect / xdp-rewrite: minimal programs on the director's front veth (UDP
//!   only): drop; redirect; swap the MACs and redirect.
//!
//! Real servers are nginx (one worker, `return 200`): event-driven, so new-connection load
//! costs the server core little, unlike the lab's thread-per-connection `hlb-realserver`.
//! UDP frames are dropped and counted by `hlb_bench_sink` on the real servers' veths.
//!
//! The primary figure is the director's CPU time per packet or request: schedstat of its
//! NAPI kthreads and userspace (HAProxy), over the run. A rate is a capacity only when the
//! director core was ≥ 0.9 busy. Foreign CPU (busy time on the machine not used by any task
//! of the bench) is recorded per run; noisy runs are marked and left out of the summary when
//! enough clean ones exist.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId};
use ha_lb::bpf::{
    bench::{
        attach_tc_ingress, detach_tc, gen_frames, run_live_frames, set_gen_config, set_redirect,
        sink_counters, BenchGenConfig, PROG_BENCH_DROP, PROG_BENCH_GEN, PROG_BENCH_PASS,
        PROG_BENCH_REDIRECT, PROG_BENCH_REWRITE, PROG_BENCH_SINK, PROG_BENCH_TC_REDIRECT,
    },
    testrun::run_xdp,
    Bpf, PROG_LB,
};
use ha_lb::dataplane::{
    xdp::{Hook, XdpDataplane},
    LbKind,
};
use ha_lb_lab::{
    benchtopo::{pin_process, pin_task, BenchTopo, NapiThread, Return, CLIENT, REAL_SERVERS, VIP},
    frame,
    topology::http_get,
    Node,
};

use super::{
    common::{
        self, desired, fmt3, min_med_max, ratio, send_skbs, Capture, Window, FIRST_SPORT, FRAME_LEN,
    },
    dataplane_peers::{
        haproxy_conf, nft_ruleset, parse_iperf3, parse_wrk, HTTP_PORT, IPERF_PORT, UDP_PORT,
    },
    dataplane_sys::{self as sys, CpuDelta, Ours},
};

/// Distinct source ports (flows) in the UDP measurements.
const FLOWS: u16 = 1000;
/// A run with more foreign CPU than this (cores) is noisy.
const NOISY_FOREIGN: f64 = 0.10;
/// The machine counts as quiet below this many busy cores.
const QUIET_CORES: f64 = 0.15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    HaLbNat,
    HaLbDr,
    HaLbNatTc,
    HaLbDrTc,
    Direct,
    Routed,
    Nftables,
    Haproxy,
    XdpDrop,
    XdpRedirect,
    XdpRewrite,
    TcRedirect,
}

impl Variant {
    pub const ALL: [Variant; 12] = [
        Variant::HaLbNat,
        Variant::HaLbDr,
        Variant::HaLbNatTc,
        Variant::HaLbDrTc,
        Variant::Direct,
        Variant::Routed,
        Variant::Nftables,
        Variant::Haproxy,
        Variant::XdpDrop,
        Variant::XdpRedirect,
        Variant::XdpRewrite,
        Variant::TcRedirect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::HaLbNat => "ha-lb-nat",
            Variant::HaLbDr => "ha-lb-dr",
            Variant::HaLbNatTc => "ha-lb-nat-tc",
            Variant::HaLbDrTc => "ha-lb-dr-tc",
            Variant::Direct => "direct",
            Variant::Routed => "routed",
            Variant::Nftables => "nftables",
            Variant::Haproxy => "haproxy",
            Variant::XdpDrop => "xdp-drop",
            Variant::XdpRedirect => "xdp-redirect",
            Variant::XdpRewrite => "xdp-rewrite",
            Variant::TcRedirect => "tc-redirect",
        }
    }

    pub fn parse(s: &str) -> Result<Variant> {
        common::parse_name("variant", &Variant::ALL, Variant::name, s)
    }

    fn udp(self) -> bool {
        self != Variant::Haproxy
    }

    fn tcp(self) -> bool {
        !matches!(
            self,
            Variant::XdpDrop | Variant::XdpRedirect | Variant::XdpRewrite | Variant::TcRedirect
        )
    }

    fn is_ha_lb(self) -> bool {
        matches!(self, Variant::HaLbNat | Variant::HaLbDr | Variant::HaLbNatTc | Variant::HaLbDrTc)
    }

    /// DR: real servers answer the client directly.
    fn dr(self) -> bool {
        matches!(self, Variant::HaLbDr | Variant::HaLbDrTc)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    UdpFrames,
    UdpSkbs,
    TcpKeepAlive,
    TcpNewConn,
    Iperf,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::UdpFrames,
        Metric::UdpSkbs,
        Metric::TcpKeepAlive,
        Metric::TcpNewConn,
        Metric::Iperf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::UdpFrames => "udp-frames",
            Metric::UdpSkbs => "udp-skbs",
            Metric::TcpKeepAlive => "tcp-keepalive",
            Metric::TcpNewConn => "tcp-newconn",
            Metric::Iperf => "iperf",
        }
    }

    pub fn parse(s: &str) -> Result<Metric> {
        common::parse_name("metric", &Metric::ALL, Metric::name, s)
    }

    fn title(self) -> &'static str {
        match self {
            Metric::UdpFrames => "UDP 60-byte frames as xdp_frames (live-frames generator)",
            Metric::UdpSkbs => "UDP 60-byte frames as socket skbs (sendmmsg in the client)",
            Metric::TcpKeepAlive => "HTTP keep-alive requests (wrk, nginx real servers)",
            Metric::TcpNewConn => "HTTP new connection per request (wrk, Connection: close)",
            Metric::Iperf => "iperf3 throughput (one TCP stream)",
        }
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
struct Point {
    /// Offered load (pps; UDP only).
    offered: f64,
    /// Processed by the director (pps), requests/s, or bit/s.
    rate: f64,
    /// Delivered to the sinks (pps; UDP only).
    delivered: f64,
    /// Director CPU per packet / request (ns); None without a director.
    per_unit_ns: Option<f64>,
    cpu: CpuDelta,
    noisy: bool,
    errors: u64,
    /// ha-lb: the share of cacheable packets its flow cache sent (hits / (hits + fills)).
    cache_hits: Option<f64>,
}

pub struct Options {
    pub quick: bool,
    /// Overrides the number of rounds (5, or 3 with `quick`).
    pub rounds: Option<usize>,
    pub variants: Vec<Variant>,
    /// Only these measurements.
    pub metrics: Vec<Metric>,
    /// The eBPF object (target/ebpf/ha-lb-ebpf.o).
    pub object: PathBuf,
    /// Real servers behind the UDP service (1..=REAL_SERVERS): 1 sends every frame out of
    /// one device, as the empty redirect program does.
    pub udp_real_servers: usize,
    /// Receive coalescing on the director's veths, microseconds (0: none, veth's default);
    /// see [`BenchTopo::coalesce`].
    pub coalesce_us: u32,
    /// How the director's CPU idles.
    pub director_idle: DirectorIdle,
}

/// How the director's CPU idles during the bench (`--director-idle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectorIdle {
    /// As the machine is set up (here: the paravirtual halt of a VM).
    Default,
    /// Polling: every idle state but POLL disabled ([`sys::IdlePoll`]).
    Poll,
}

impl DirectorIdle {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(Self::Default),
            "poll" => Ok(Self::Poll),
            other => bail!("--director-idle: {other}? (default, poll)"),
        }
    }

    fn words(self, cpu: usize) -> String {
        match self {
            Self::Default => format!("CPU {cpu} idles as the machine is set up"),
            Self::Poll => format!("CPU {cpu} idles by polling (its other idle states disabled)"),
        }
    }
}

/// Rounds, run lengths and what to measure.
struct Plan {
    rounds: usize,
    metrics: Vec<Metric>,
    udp: Duration,
    tcp: Duration,
    quiet_wait: Duration,
}

/// The running bench: topology, loaded programs, what is attached.
struct Bench {
    topo: BenchTopo,
    bpf: Bpf,
    ours: Ours,
    dir: PathBuf,
    kthreads: Vec<NapiThread>,
    /// XDP attachments of the current variant / phase: (program, link).
    links: Vec<(&'static str, XdpLinkId)>,
    /// TC attachments of the current variant: (program, link).
    tc_links: Vec<(&'static str, SchedClassifierLinkId)>,
    sinks: Vec<XdpLinkId>,
    haproxy: Option<u32>,
    /// Generator rate estimate (frames/s), to size each run.
    gen_rate: f64,
    /// The eBPF object's bytes (each ha-lb variant loads its own copy).
    object: Vec<u8>,
    /// ha-lb's data plane while an ha-lb variant runs.
    halb: Option<XdpDataplane>,
    udp_real_servers: usize,
    /// BPF_PROG_TEST_RUN cost of ha_lb_xdp per variant (measured once, on entry).
    halb_costs: Vec<(String, Vec<f64>)>,
}

pub fn run(opts: Options) -> Result<()> {
    if !crate::is_root() {
        bail!("the data-plane bench builds namespace labs and attaches XDP: run it as root");
    }
    super::dataplane_peers::install_missing()?;
    let d = if opts.quick {
        Plan {
            rounds: 3,
            metrics: opts.metrics.clone(),
            udp: Duration::from_secs(2),
            tcp: Duration::from_secs(3),
            quiet_wait: Duration::from_secs(5),
        }
    } else {
        Plan {
            rounds: 5,
            metrics: opts.metrics.clone(),
            udp: Duration::from_secs(2),
            tcp: Duration::from_secs(5),
            quiet_wait: Duration::from_secs(20),
        }
    };
    let mut d = d;
    if let Some(r) = opts.rounds {
        d.rounds = r.max(1);
    }
    let (bytes, bpf) = common::load_object(&opts.object)?;
    let dir = std::env::temp_dir().join(format!("hlb-bench-dataplane-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let (topo, ours) = common::build_lab()?;
    topo.coalesce(opts.coalesce_us)?;
    // Lives until the end of the bench; puts the idle states back on drop.
    let _idle = match opts.director_idle {
        DirectorIdle::Default => None,
        DirectorIdle::Poll => {
            let g = sys::IdlePoll::on(topo.director_cpu)?;
            println!(
                "bench dataplane: director CPU {} idles by polling; if interrupted, undo with: {}",
                topo.director_cpu,
                g.undo_command()
            );
            Some(g)
        }
    };
    let mut b = Bench {
        topo,
        bpf,
        ours,
        dir: dir.clone(),
        kthreads: Vec::new(),
        links: Vec::new(),
        tc_links: Vec::new(),
        sinks: Vec::new(),
        haproxy: None,
        gen_rate: 2e6,
        object: bytes,
        halb: None,
        udp_real_servers: opts.udp_real_servers,
        halb_costs: Vec::new(),
    };
    b.start_servers()?;
    b.park_generator()?;
    b.repin()?;
    println!(
        "bench dataplane: director on CPU {}, client/servers/sinks on CPU {}; {} NAPI kthreads \
         pinned; {} rounds; {}; {}; scratch {}",
        b.topo.director_cpu,
        b.topo.other_cpu,
        b.kthreads.len(),
        d.rounds,
        coalescing(opts.coalesce_us),
        opts.director_idle.words(b.topo.director_cpu),
        dir.display()
    );

    let mut variants = opts.variants.clone();
    let mut pending = Vec::new();
    variants.retain(|v| {
        if v.is_ha_lb() && !ha_lb_available() {
            pending.push(*v);
            false
        } else {
            true
        }
    });

    let mut results: BTreeMap<(Metric, Variant), Vec<Point>> = BTreeMap::new();
    let mut failed: BTreeMap<Variant, String> = BTreeMap::new();
    let t_start = Instant::now();
    for round in 0..d.rounds {
        println!("  round {}: load average {:.2}", round + 1, sys::loadavg());
        for &v in &variants {
            if failed.contains_key(&v) {
                continue;
            }
            let r = b.variant_round(v, round, &d, &mut results);
            let t = b.leave(v);
            common::settle(&mut failed, v, Variant::name, round, r, t);
        }
    }
    let conditions = format!(
        "{}, {}",
        coalescing(opts.coalesce_us),
        opts.director_idle.words(b.topo.director_cpu)
    );
    let mut costs = b.prog_costs();
    costs.append(&mut b.halb_costs);
    drop(b);
    print!("{}", report(&results, &variants, &failed, &pending, d.rounds, &conditions, &costs));
    println!("(total {:.0?}; logs and configs in {})", t_start.elapsed(), dir.display());
    Ok(())
}

/// Whether the ha-lb forwarding program is in this tree (branch `xdp` merged).
fn ha_lb_available() -> bool {
    true
}

impl Bench {
    fn start_servers(&mut self) -> Result<()> {
        for i in 0..REAL_SERVERS {
            common::spawn_nginx(&mut self.topo, &self.dir, i)?;
            let node = self.topo.real_servers[i].clone();
            let name = format!("rs{}", i + 1);
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &self.topo.other_cpu.to_string(), "iperf3", "-s", "-p"])
                .arg(IPERF_PORT.to_string());
            self.topo.lab.spawn_logged(
                &node,
                &mut cmd,
                &self.dir.join(format!("{name}.iperf3.log")),
            )?;
        }
        // Many short connections from one client: widen its port range.
        self.topo.client.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        self.topo.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        common::await_nginx(
            &self.topo.client,
            Duration::from_secs(5),
            Duration::from_millis(50),
            Duration::from_millis(500),
        )
    }

    /// Keeps the generator attached to an idle veth, so each BPF_PROG_RUN call finds it in
    /// the XDP dispatcher instead of swapping it in and out (tens of ms each).
    fn park_generator(&mut self) -> Result<()> {
        let bpf = &mut self.bpf;
        self.topo.client.run(|| bpf.attach_xdp(PROG_BENCH_GEN, "hbpk1"))??;
        Ok(())
    }

    fn repin(&mut self) -> Result<()> {
        self.kthreads = self.topo.pin()?;
        if let Some(pid) = self.haproxy {
            pin_process(pid, self.topo.director_cpu)?;
        }
        Ok(())
    }

    fn sample(&self) -> sys::CpuSample {
        let pids: Vec<u32> = self.haproxy.into_iter().collect();
        sys::sample_napi(&self.ours, &self.kthreads, &pids)
    }

    fn attach(&mut self, node: Node, prog: &'static str, dev: &str) -> Result<XdpLinkId> {
        let bpf = &mut self.bpf;
        let (link, _mode) = node.run(|| bpf.attach_xdp(prog, dev))??;
        Ok(link)
    }

    fn enter(&mut self, v: Variant) -> Result<()> {
        self.topo.set_return(if v.dr() { Return::Direct } else { Return::ViaDirector })?;
        let director = self.topo.director.clone();
        match v {
            Variant::Direct | Variant::Routed => {}
            Variant::Nftables => {
                let path = self.dir.join("nftables.conf");
                std::fs::write(&path, nft_ruleset())?;
                director.exec("nft", &["-f", &path.display().to_string()])?;
            }
            Variant::Haproxy => {
                let path = self.dir.join("haproxy.cfg");
                std::fs::write(&path, haproxy_conf())?;
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", &self.topo.director_cpu.to_string(), "haproxy", "-db", "-f"])
                    .arg(&path);
                let pid = self.topo.lab.spawn_logged(
                    &director,
                    &mut cmd,
                    &self.dir.join("haproxy.log"),
                )?;
                self.haproxy = Some(pid);
                let addr = SocketAddr::new(VIP.into(), HTTP_PORT);
                ha_lb_lab::wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
                    http_get(&self.topo.client, addr, Duration::from_millis(500)).ok()
                })
                .context("HAProxy did not answer")?;
            }
            Variant::XdpDrop => {
                let l = self.attach(director, PROG_BENCH_DROP, "hbd0")?;
                self.links.push((PROG_BENCH_DROP, l));
            }
            Variant::XdpRedirect | Variant::XdpRewrite => {
                let prog = if v == Variant::XdpRedirect {
                    PROG_BENCH_REDIRECT
                } else {
                    PROG_BENCH_REWRITE
                };
                let ifindex = director.ifindex(&BenchTopo::director_back(0))?;
                set_redirect(&mut self.bpf, ifindex)?;
                let l = self.attach(director, prog, "hbd0")?;
                self.links.push((prog, l));
            }
            Variant::TcRedirect => {
                let ifindex = director.ifindex(&BenchTopo::director_back(0))?;
                set_redirect(&mut self.bpf, ifindex)?;
                let bpf = &mut self.bpf;
                let l =
                    director.run(|| attach_tc_ingress(bpf, PROG_BENCH_TC_REDIRECT, "hbd0"))??;
                self.tc_links.push((PROG_BENCH_TC_REDIRECT, l));
            }
            Variant::HaLbNat | Variant::HaLbDr | Variant::HaLbNatTc | Variant::HaLbDrTc => {
                let kind = if v.dr() { LbKind::Dr } else { LbKind::Nat };
                let hook = if matches!(v, Variant::HaLbNatTc | Variant::HaLbDrTc) {
                    Hook::Tc
                } else {
                    Hook::Xdp
                };
                let desired = desired(kind, self.udp_real_servers);
                self.halb = Some(common::attach_halb(&director, &self.object, hook, &desired)?);
                // The test-run cost is the XDP program's (a TC test run adds building a
                // socket buffer, which a received packet already has).
                if hook == Hook::Xdp && !self.halb_costs.iter().any(|(n, _)| n.contains(v.name())) {
                    let c = self.halb_cost()?;
                    self.halb_costs.push((format!("{PROG_LB} ({})", v.name()), c));
                }
            }
        }
        self.repin()
    }

    /// BPF_PROG_TEST_RUN of ha_lb_xdp on a UDP frame to the VIP's UDP service, as received
    /// on the director's front interface: the first run creates the flow, the measured ones
    /// take the known-flow path (see [`single_runs`]).
    fn halb_cost(&mut self) -> Result<Vec<f64>> {
        let director = self.topo.director.clone();
        let eth = frame::Eth { src: self.topo.client.mac("hbc0")?, dst: director.mac("hbd0")? };
        let f = frame::udp(
            eth,
            SocketAddr::new(CLIENT.into(), FIRST_SPORT),
            SocketAddr::new(VIP.into(), UDP_PORT),
            &[0u8; FRAME_LEN - 42],
        );
        let ifindex = director.ifindex("hbd0")?;
        let dp = self.halb.as_mut().context("no ha-lb data plane")?;
        let prog: &aya::programs::Xdp = dp.bpf_mut().xdp(PROG_LB)?;
        director.run(|| single_runs(prog, &f, ifindex))?
    }

    fn leave(&mut self, v: Variant) -> Result<()> {
        self.detach_sinks()?;
        for (prog, link) in std::mem::take(&mut self.links) {
            let bpf = &mut self.bpf;
            self.topo.director.run(|| bpf.detach_xdp(prog, link))??;
        }
        for (prog, link) in std::mem::take(&mut self.tc_links) {
            let bpf = &mut self.bpf;
            self.topo.director.run(|| detach_tc(bpf, prog, link))??;
        }
        if let Some(dp) = self.halb.take() {
            common::detach_halb(&self.topo.director, dp)?;
        }
        if let Some(pid) = self.haproxy.take() {
            self.topo.lab.kill(pid);
        }
        if v == Variant::Nftables {
            let _ = self.topo.director.exec("nft", &["delete", "table", "ip", "hlb_bench"]);
        }
        self.repin()
    }

    fn attach_sinks(&mut self) -> Result<()> {
        common::attach_sinks(&mut self.bpf, &self.topo, &mut self.sinks)?;
        self.repin()
    }

    fn detach_sinks(&mut self) -> Result<()> {
        if self.sinks.is_empty() {
            return Ok(());
        }
        common::detach_sinks(&mut self.bpf, &mut self.sinks)?;
        self.repin()
    }

    /// Where the UDP traffic of `v` goes: (client interface, peer MAC, source, destination).
    fn udp_path(&self, v: Variant) -> Result<(String, [u8; 6], Ipv4Addr, Ipv4Addr)> {
        let t = &self.topo;
        Ok(match v {
            Variant::Direct => (
                BenchTopo::client_direct(0),
                t.real_servers[0].mac(&BenchTopo::rs_direct(0))?,
                BenchTopo::client_direct_addr(0),
                BenchTopo::rs_direct_addr(0),
            ),
            Variant::Routed => {
                ("hbc0".into(), t.director.mac("hbd0")?, CLIENT, BenchTopo::rs_addr(0))
            }
            _ => ("hbc0".into(), t.director.mac("hbd0")?, CLIENT, VIP),
        })
    }

    fn tcp_target(&self, v: Variant) -> Ipv4Addr {
        match v {
            Variant::Direct => BenchTopo::rs_direct_addr(0),
            Variant::Routed => BenchTopo::rs_addr(0),
            _ => VIP,
        }
    }

    fn variant_round(
        &mut self,
        v: Variant,
        round: usize,
        d: &Plan,
        results: &mut BTreeMap<(Metric, Variant), Vec<Point>>,
    ) -> Result<()> {
        self.enter(v)?;
        if round == 0 {
            self.precheck(v).context("correctness pre-check")?;
        }
        let mut line = format!("  round {} {:<13}", round + 1, v.name());
        if v.udp() {
            self.attach_sinks()?;
            for m in [Metric::UdpFrames, Metric::UdpSkbs] {
                if !d.metrics.contains(&m) {
                    continue;
                }
                let p = self.measure(v, m, d)?;
                let _ = write!(line, " {}", short(m, &p));
                results.entry((m, v)).or_default().push(p);
            }
            self.detach_sinks()?;
        }
        if v.tcp() {
            for m in [Metric::TcpKeepAlive, Metric::TcpNewConn, Metric::Iperf] {
                if !d.metrics.contains(&m) {
                    continue;
                }
                let p = self.measure(v, m, d)?;
                let _ = write!(line, " {}", short(m, &p));
                results.entry((m, v)).or_default().push(p);
            }
        }
        println!("{line}");
        Ok(())
    }

    /// Checks that what `v` delivers is well-formed: generator frames captured at the real
    /// servers, and TCP segments of one HTTP request, verified with `frame::check`.
    fn precheck(&mut self, v: Variant) -> Result<()> {
        let (dev, mac, src, dst) = self.udp_path(v)?;
        // HAProxy's server side originates segments on the director.
        let capture = Capture::open(&self.topo, Duration::from_millis(200), true)?;
        if v.udp() && v != Variant::XdpDrop {
            self.generate(&dev, mac, src, dst, 32)?;
            let (good, all) = capture.check(17, UDP_PORT, v.name())?;
            if all == 0 || good != all {
                bail!("UDP: {good} valid of {all} frames delivered to the real servers");
            }
        }
        if v.tcp() {
            let addr = SocketAddr::new(self.tcp_target(v).into(), HTTP_PORT);
            let body = http_get(&self.topo.client, addr, Duration::from_secs(2))?;
            if !body.starts_with("rs") {
                bail!("HTTP through {}: unexpected body {body:?}", v.name());
            }
            let (good, all) = capture.check(6, HTTP_PORT, v.name())?;
            if all == 0 || good != all {
                bail!("TCP: {good} valid of {all} segments seen at the real servers");
            }
        }
        Ok(())
    }

    /// Runs the generator for `frames` frames out of the client's `dev`.
    fn generate(
        &mut self,
        dev: &str,
        dst_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        frames: u32,
    ) -> Result<ha_lb::bpf::bench::LiveRun> {
        let client = self.topo.client.clone();
        let cfg = BenchGenConfig {
            dst_mac,
            src_mac: client.mac(dev)?,
            saddr: u32::from_ne_bytes(src.octets()),
            daddr: u32::from_ne_bytes(dst.octets()),
            sport_base: FIRST_SPORT,
            sport_count: FLOWS,
            dport: UDP_PORT,
            ttl: 64,
            _pad: 0,
        };
        set_gen_config(&mut self.bpf, &cfg)?;
        let ifindex = client.ifindex(dev)?;
        let template = vec![0u8; FRAME_LEN];
        let prog = self.bpf.xdp(PROG_BENCH_GEN)?;
        let cpu = self.topo.other_cpu;
        let run = client.run(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
            pin_task(tid, cpu)?;
            Ok::<_, anyhow::Error>(run_live_frames(prog, &template, ifindex, frames, 64)?)
        })??;
        Ok(run)
    }

    /// The ha-lb flow cache's (hits, fills) while an ha-lb variant is set up.
    fn cache_stats(&self) -> Option<(u64, u64)> {
        let dp = self.halb.as_ref()?;
        ha_lb::bpf::lb::cache_stats(dp.bpf()).ok()
    }

    fn measure(&mut self, v: Variant, m: Metric, d: &Plan) -> Result<Point> {
        let (_busy, quiet) = sys::wait_quiet(d.quiet_wait, QUIET_CORES);
        let mut p = Point::default();
        match m {
            Metric::UdpFrames | Metric::UdpSkbs => {
                let (dev, mac, src, dst) = self.udp_path(v)?;
                let director = self.topo.director.clone();
                let rx0 = sys::if_counters(&director, "hbd0")?;
                let sink0 = sink_counters(&self.bpf)?;
                let gen0 = gen_frames(&self.bpf)?;
                let cache0 = self.cache_stats();
                let s0 = self.sample();
                let offered = if m == Metric::UdpFrames {
                    let want = (self.gen_rate * d.udp.as_secs_f64()).clamp(1e5, 4e9) as u32;
                    let r = self.generate(&dev, mac, src, dst, want)?;
                    self.gen_rate = r.frames as f64 / r.wall.as_secs_f64().max(1e-3);
                    gen_frames(&self.bpf)? - gen0
                } else {
                    send_skbs(&self.topo.client, self.topo.other_cpu, (src, dst), d.udp, u32::MAX)?
                };
                // Let the rings drain into the counters.
                std::thread::sleep(Duration::from_millis(50));
                let s1 = self.sample();
                let rx1 = sys::if_counters(&director, "hbd0")?;
                let sink1 = sink_counters(&self.bpf)?;
                if let (Some((h0, f0)), Some((h1, f1))) = (cache0, self.cache_stats()) {
                    let (h, f) = (h1 - h0, f1 - f0);
                    p.cache_hits = (h + f > 0).then(|| h as f64 / (h + f) as f64);
                }
                p.cpu = sys::delta(&s0, &s1, self.topo.director_cpu);
                let w = p.cpu.wall.as_secs_f64().max(1e-9);
                let processed =
                    if v == Variant::Direct { 0 } else { rx1.rx_packets - rx0.rx_packets };
                p.offered = offered as f64 / w;
                p.rate = processed as f64 / w;
                p.delivered = (sink1.frames - sink0.frames) as f64 / w;
                p.per_unit_ns =
                    (processed > 0).then(|| p.cpu.director_ns as f64 / processed as f64);
            }
            Metric::TcpKeepAlive | Metric::TcpNewConn => {
                let url = format!("http://{}:{HTTP_PORT}/", self.tcp_target(v));
                let mut cmd = common::wrk(&self.topo, d.tcp.as_secs() + 2);
                if m == Metric::TcpNewConn {
                    cmd.args(["-H", "Connection: close"]);
                }
                cmd.arg(&url);
                let (out, cpu) = self.windowed(cmd, d.tcp)?;
                let w = parse_wrk(&out)?;
                p.rate = w.requests_per_s;
                p.errors = w.errors;
                p.cpu = cpu;
                p.per_unit_ns = (v != Variant::Direct && p.rate > 0.0)
                    .then(|| cpu.director_busy * 1e9 / p.rate);
            }
            Metric::Iperf => {
                let secs = d.tcp.as_secs() + 2;
                let mut cmd = self.topo.client.command("taskset");
                cmd.args(["-c", &self.topo.other_cpu.to_string(), "iperf3", "-J", "-c"])
                    .arg(self.tcp_target(v).to_string())
                    .args(["-p", &IPERF_PORT.to_string(), "-t", &secs.to_string()]);
                let (out, cpu) = self.windowed(cmd, d.tcp)?;
                p.rate = parse_iperf3(&out)?;
                p.cpu = cpu;
                // Director ns per 1500-byte packet's worth of payload.
                p.per_unit_ns = (v != Variant::Direct && p.rate > 0.0)
                    .then(|| cpu.director_busy * 1e9 / (p.rate / 8.0 / 1500.0));
            }
        }
        p.noisy = !quiet || p.cpu.foreign > NOISY_FOREIGN;
        Ok(p)
    }

    /// Runs `cmd` (lasting `window` + 2 s) and samples CPU over the middle `window`.
    fn windowed(&self, cmd: Command, window: Duration) -> Result<(String, CpuDelta)> {
        let label = crate::display_cmd(&cmd);
        let w = Window {
            lead: Duration::from_secs(1),
            length: window,
            grace: Duration::from_secs(10),
            poll: Duration::from_millis(50),
        };
        let out = self.dir.join("tool.out");
        let (out, s0, s1) = common::windowed(cmd, &out, &label, &w, || self.sample())?;
        Ok((out, sys::delta(&s0, &s1, self.topo.director_cpu)))
    }

    /// Per-run cost of the programs from BPF_PROG_TEST_RUN (kernel-measured, no I/O): a
    /// UDP frame to the VIP, 1M repeats, 5 times each. (name, [ns per run]).
    fn prog_costs(&mut self) -> Vec<(String, Vec<f64>)> {
        let f = frame::udp(
            frame::Eth::default(),
            SocketAddr::new(CLIENT.into(), FIRST_SPORT),
            SocketAddr::new(VIP.into(), UDP_PORT),
            &[0u8; FRAME_LEN - 42],
        );
        let mut out = Vec::new();
        let progs = [
            PROG_BENCH_DROP,
            PROG_BENCH_PASS,
            PROG_BENCH_REDIRECT,
            PROG_BENCH_REWRITE,
            PROG_BENCH_SINK,
        ];
        for name in progs {
            let Ok(prog) = self.bpf.xdp(name) else {
                out.push((name.to_string(), Vec::new()));
                continue;
            };
            let prog: &aya::programs::Xdp = prog;
            let v = match self.topo.director.run(|| single_runs(prog, &f, 1)) {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    println!("  test run of {name}: {e:#}");
                    Vec::new()
                }
                Err(e) => {
                    println!("  test run of {name}: {e:#}");
                    Vec::new()
                }
            };
            out.push((name.to_string(), v));
        }
        out
    }
}

/// Single runs per BPF_PROG_TEST_RUN sample.
const SINGLE_RUNS: usize = 2000;

/// Five samples of `prog`'s cost on `frame`, each the median kernel-measured duration of
/// [`SINGLE_RUNS`] runs with `repeat = 1`. Not one run with a large `repeat`: the kernel reruns
/// the program on the buffer the previous run rewrote, so after the first run a NAT frame
/// would no longer be a service frame and the figure would be that of the pass path. The
/// kernel's duration of one run includes its timer overhead (one clock read), the same for
/// every program, so compare programs with each other, not with the live figures.
fn single_runs(prog: &aya::programs::Xdp, frame: &[u8], ifindex: u32) -> Result<Vec<f64>> {
    run_xdp(prog, frame, ifindex, 1)?;
    let mut out = Vec::new();
    for _ in 0..5 {
        let mut d = Vec::with_capacity(SINGLE_RUNS);
        for _ in 0..SINGLE_RUNS {
            d.push(run_xdp(prog, frame, ifindex, 1)?.duration.as_nanos() as f64);
        }
        d.sort_by(f64::total_cmp);
        out.push(d[d.len() / 2]);
    }
    Ok(out)
}

fn short(m: Metric, p: &Point) -> String {
    let n = if p.noisy { "*" } else { "" };
    match m {
        Metric::UdpFrames | Metric::UdpSkbs => format!(
            "{}:{:.2}Mpps/{}{}{}",
            if m == Metric::UdpFrames { "frm" } else { "skb" },
            p.rate.max(p.delivered) / 1e6,
            p.per_unit_ns.map(|x| format!("{x:.0}ns")).unwrap_or_else(|| "-".into()),
            n,
            p.cache_hits
                .map(|h| format!(" (flow cache {:.0} % hits)", h * 100.0))
                .unwrap_or_default()
        ),
        Metric::TcpKeepAlive | Metric::TcpNewConn => format!(
            "{}:{:.1}k/{}{}",
            if m == Metric::TcpKeepAlive { "ka" } else { "cc" },
            p.rate / 1e3,
            p.per_unit_ns.map(|x| format!("{:.1}us", x / 1e3)).unwrap_or_else(|| "-".into()),
            n
        ),
        Metric::Iperf => format!("ip:{:.2}G{}", p.rate / 1e9, n),
    }
}

/// The runs a summary uses: clean ones when there are at least 3, else all (flagged).
fn usable(points: &[Point]) -> (Vec<Point>, bool) {
    let clean: Vec<Point> = points.iter().copied().filter(|p| !p.noisy).collect();
    if clean.len() >= 3 || clean.len() == points.len() {
        (clean, false)
    } else {
        (points.to_vec(), true)
    }
}

/// The receive coalescing of a run, in words.
fn coalescing(usecs: u32) -> String {
    match usecs {
        0 => "no receive coalescing (veth's default)".into(),
        n => format!("receive coalescing {n} us on the director's veths"),
    }
}

fn report(
    results: &BTreeMap<(Metric, Variant), Vec<Point>>,
    variants: &[Variant],
    failed: &BTreeMap<Variant, String>,
    pending: &[Variant],
    rounds: usize,
    conditions: &str,
    costs: &[(String, Vec<f64>)],
) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nbench dataplane — {rounds} rounds, variants interleaved, {}; min/median/max over clean \
         runs (a run is noisy, *, when the machine was not quiet before it or foreign CPU > \
         {NOISY_FOREIGN} cores)",
        conditions
    );
    for m in Metric::ALL {
        let rows = common::measured(results, m, variants);
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(r, "\n{}", m.title());
        let (unit, rate_unit, rate_scale) = match m {
            Metric::UdpFrames | Metric::UdpSkbs => ("ns/pkt", "Mpps", 1e6),
            Metric::TcpKeepAlive | Metric::TcpNewConn => ("us/req", "kreq/s", 1e3),
            Metric::Iperf => ("ns/1500B", "Gbit/s", 1e9),
        };
        let udp = matches!(m, Metric::UdpFrames | Metric::UdpSkbs);
        let _ = writeln!(
            r,
            "  {:<13} {:>22} {:>22} {}{:>6} {:>9} {:>7} {:>6}  {:>8} {:>8} {:>8}",
            "variant",
            format!("director {unit}"),
            format!("{} {rate_unit}", if udp { "processed" } else { "rate" }),
            if udp { format!("{:>9} ", "delivered") } else { String::new() },
            "busy",
            "foreign",
            "clean",
            "",
            "/routed",
            "/nft",
            "/ha-lb"
        );
        let med = |v: Variant, f: &dyn Fn(&Point) -> Option<f64>| -> Option<f64> {
            let pts = results.get(&(m, v))?;
            min_med_max(usable(pts).0.iter().filter_map(f).collect()).map(|x| x.1)
        };
        let cost = |p: &Point| p.per_unit_ns;
        let ha_lb = [Variant::HaLbNat, Variant::HaLbDr].into_iter().find_map(|v| med(v, &cost));
        for v in rows {
            let pts = &results[&(m, v)];
            let (use_pts, flagged) = usable(pts);
            let scale =
                if matches!(m, Metric::TcpKeepAlive | Metric::TcpNewConn) { 1e3 } else { 1.0 };
            let c = min_med_max(use_pts.iter().filter_map(cost).collect());
            let rate = min_med_max(use_pts.iter().map(|p| p.rate).collect());
            let delivered = min_med_max(use_pts.iter().map(|p| p.delivered).collect());
            let busy = min_med_max(use_pts.iter().map(|p| p.cpu.director_busy).collect());
            let foreign = min_med_max(pts.iter().map(|p| p.cpu.foreign).collect());
            let dforeign = min_med_max(pts.iter().map(|p| p.cpu.foreign_on_director_cpu).collect());
            let clean = pts.iter().filter(|p| !p.noisy).count();
            let row_cost = c.map(|x| x.1);
            let capacity = busy.map(|b| b.1 >= 0.9).unwrap_or(false);
            let _ = writeln!(
                r,
                "  {:<13} {:>22} {:>22} {}{:>6} {:>9} {:>4}/{:<2} {:>6}  {:>8} {:>8} {:>8}",
                v.name(),
                fmt3(c, scale, if scale > 1.0 { 1 } else { 0 }),
                fmt3(rate, rate_scale, 2),
                if udp {
                    format!("{:>9.2} ", delivered.map(|x| x.1).unwrap_or(0.0) / 1e6)
                } else {
                    String::new()
                },
                busy.map(|b| format!("{:.2}", b.1)).unwrap_or_default(),
                match (foreign, dforeign) {
                    (Some(f), Some(g)) => format!("{:.2}/{:.2}", f.1, g.1),
                    _ => String::new(),
                },
                clean,
                pts.len(),
                match (flagged, capacity) {
                    (true, _) => "NOISY",
                    (false, true) => "cap",
                    _ => "",
                },
                ratio(row_cost, med(Variant::Routed, &cost)),
                ratio(row_cost, med(Variant::Nftables, &cost)),
                ratio(row_cost, ha_lb),
            );
        }
    }
    let _ = writeln!(
        r,
        "\n  ratios: director cost (median) of the row over the routed path / nftables / ha-lb \
         in the same run (<1 is cheaper). busy: director cores busy (median); 'cap': the rate \
         is a capacity (director core ≥ 0.9 busy). foreign: cores used by work outside the \
         bench, all CPUs / the director's CPU (medians over all runs)."
    );
    let _ = writeln!(
        r,
        "\nBPF_PROG_TEST_RUN, 60-byte UDP frame: medians of {SINGLE_RUNS} single runs ×5 (ns per \
         run including the kernel's ~one clock read; min/median/max)"
    );
    for (name, v) in costs {
        match min_med_max(v.clone()) {
            Some((a, b, c)) => {
                let _ = writeln!(r, "  {name:<22} {a:>6.1} {b:>6.1} {c:>6.1}");
            }
            None => {
                let _ = writeln!(r, "  {name:<22} unavailable");
            }
        }
    }
    common::write_failed(&mut r, failed, Variant::name);
    if !pending.is_empty() {
        let _ = writeln!(
            r,
            "\npending: {} — the ha-lb forwarding program (branch xdp) is not in this tree yet",
            pending.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
        );
    }
    r
}
