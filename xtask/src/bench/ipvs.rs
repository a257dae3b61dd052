//! `cargo xtask bench ipvs`: ha-lb's NAT (XDP and TC hooks) against kernel IPVS NAT and the
//! routed path, side by side in one run, on Debian 12's 6.1 kernel in a QEMU guest.
//!
//! Why a guest: the host kernel may have no IPVS (6.18 here has none). Why QEMU without KVM
//! (TCG) rather than user-mode Linux: UML has no BPF JIT, so XDP programs would run in the
//! interpreter — unfair to ha-lb; under TCG the guest kernel JIT-compiles BPF to x86 code
//! like on hardware and QEMU translates it like IPVS's own code. See [`ha_lb_lab::qemu`].
//!
//! The host side ([`run`]) installs what is missing (qemu-system-x86, busybox-static, kmod,
//! nginx-light, wrk, ethtool), fetches Debian's `linux-image-6.1.*-amd64` package without
//! installing it (`apt-get download` + `dpkg-deb -x` into the target directory, `depmod`
//! there: no maintainer scripts, nothing in `/boot` or `/lib/modules`, no initramfs or boot
//! loader hook runs), builds the eBPF object and boots a guest (2 vCPUs, host `/` read-only
//! over 9p, no network device) that re-runs this binary with the hidden `bench-ipvs-guest`
//! subcommand ([`guest`]).
//!
//! The guest side builds the data-plane bench's topology ([`BenchTopo`]: client → director →
//! two nginx real servers, director NAPI kthreads pinned to vCPU 1, everything else to
//! vCPU 0, threaded NAPI, GRO on) and measures, in interleaved rounds (the order rotates each
//! round):
//! - `ha-lb-nat`: an [`XdpDataplane`] (`ha_lb_xdp` on the director's three veths), driven
//!   directly as `bench dataplane` does, services from the same [`desired`] state;
//! - `ha-lb-nat-tc`: the same at the TC ingress hook (`ha_lb_tc`, clsact on 6.1), which
//!   takes the socket skbs as they are rather than copied into pages for XDP;
//! - `ipvs-nat`: kernel IPVS (`ip_vs`, `ip_vs_rr` from the guest kernel) configured through
//!   ha-lb's own [`IpvsDataplane`] with the same desired state (round robin, masquerading),
//!   IPVS sysctls at their defaults;
//! - `routed`: the client addresses real server 1; the director only forwards.
//!
//! Measurements: small UDP datagrams from sockets in the client (sendmmsg, 64 flows; dropped
//! and counted by `hlb_bench_sink` on the real servers' veths), and HTTP keep-alive requests
//! (wrk, 32 connections). The figure is the director's CPU time per packet / request from
//! the schedstat of its NAPI kthreads (`dataplane_sys`), as in `bench dataplane`.
//!
//! TCG distorts absolute numbers (every guest instruction is translated; memory accesses,
//! atomics and clock reads cost differently than on hardware, and the vCPUs are host threads
//! sharing the host's cores with QEMU's I/O thread and anything else running). Only ratios
//! between variants measured in the same run mean anything, and the report says so.
//!
//! Noise: guest CPU time is host time, so a host thread preempted by other work inflates
//! whatever guest task was running. On the 2-core shared host, 5 rounds gave per-round
//! ha-lb/IPVS ratios of 0.55–2.49 (UDP) and 0.60–1.42 (HTTP). QEMU's deterministic clock
//! (`-icount shift=0`, single-threaded TCG), which would make guest CPU time an instruction
//! count immune to host load, hangs bringing up the second vCPU (QEMU 7.2, this kernel).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::xdp::XdpLinkId;
use ha_lb::{
    bpf::{bench::sink_counters, Bpf},
    dataplane::{
        ipvs::IpvsDataplane,
        xdp::{Hook, XdpDataplane},
        Dataplane, LbKind,
    },
};
use ha_lb_lab::{
    benchtopo::{BenchTopo, NapiThread, CLIENT, REAL_SERVERS, VIP},
    qemu::{self, Qemu},
    topology::http_get,
};

use super::{
    common::{self, desired, fmt3, min_med_max, ratio, send_skbs, Capture, Window},
    dataplane_peers::{parse_wrk, HTTP_PORT, UDP_PORT},
    dataplane_sys::{self as sys, Ours},
};

/// Debian packages the bench needs on the host (the guest runs the host's binaries).
const APT: &[&str] =
    &["qemu-system-x86", "busybox-static", "kmod", "nginx-light", "wrk", "ethtool", "ipvsadm"];
/// The guest kernel: what Debian 12's `linux-image-amd64` depends on.
const KERNEL_META: &str = "linux-image-amd64";
const KERNEL_PREFIX: &str = "linux-image-6.1.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    HaLbNat,
    /// The same at the TC ingress hook (`dataplane = "tc"`): no copy of each socket skb.
    HaLbNatTc,
    IpvsNat,
    Routed,
}

impl Variant {
    pub const ALL: [Variant; 4] =
        [Variant::HaLbNat, Variant::HaLbNatTc, Variant::IpvsNat, Variant::Routed];

    pub fn name(self) -> &'static str {
        match self {
            Variant::HaLbNat => "ha-lb-nat",
            Variant::HaLbNatTc => "ha-lb-nat-tc",
            Variant::IpvsNat => "ipvs-nat",
            Variant::Routed => "routed",
        }
    }

    pub fn parse(s: &str) -> Result<Variant> {
        common::parse_name("variant", &Variant::ALL, Variant::name, s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    UdpSkbs,
    TcpKeepAlive,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::UdpSkbs, Metric::TcpKeepAlive];

    pub fn name(self) -> &'static str {
        match self {
            Metric::UdpSkbs => "udp-skbs",
            Metric::TcpKeepAlive => "tcp-keepalive",
        }
    }

    pub fn parse(s: &str) -> Result<Metric> {
        common::parse_name("metric", &Metric::ALL, Metric::name, s)
    }

    fn title(self) -> &'static str {
        match self {
            Metric::UdpSkbs => "UDP 60-byte frames as socket skbs (sendmmsg in the client)",
            Metric::TcpKeepAlive => "HTTP keep-alive requests (wrk -c32, nginx real servers)",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub rounds: usize,
    /// Length of one UDP run.
    pub udp: Duration,
    /// Measured window of one HTTP run.
    pub tcp: Duration,
    pub variants: Vec<Variant>,
    pub metrics: Vec<Metric>,
    /// The eBPF object (target/ebpf/ha-lb-ebpf.o).
    pub object: PathBuf,
}

impl Options {
    /// The hidden guest subcommand's arguments for these options.
    fn guest_args(&self) -> Vec<String> {
        let join = |v: Vec<&str>| v.join(",");
        vec![
            "bench-ipvs-guest".into(),
            "--rounds".into(),
            self.rounds.to_string(),
            "--udp-secs".into(),
            self.udp.as_secs().to_string(),
            "--tcp-secs".into(),
            self.tcp.as_secs().to_string(),
            "--variants".into(),
            join(self.variants.iter().map(|v| v.name()).collect()),
            "--metrics".into(),
            join(self.metrics.iter().map(|m| m.name()).collect()),
            "--object".into(),
            self.object.display().to_string(),
        ]
    }

    /// A generous bound on the guest's whole run: boot, lab, rounds.
    pub fn default_timeout(&self) -> Duration {
        let per_variant = self.udp.as_secs() + self.tcp.as_secs() + 40;
        Duration::from_secs(300 + self.rounds as u64 * self.variants.len() as u64 * per_variant)
    }
}

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------

const TCG_NOTE: &str = "\
NOTE: this runs in a QEMU guest WITHOUT hardware virtualisation (TCG: every guest instruction,
ha-lb's JIT-compiled XDP program and IPVS alike, is translated by QEMU). TCG distorts absolute
numbers — per-packet times are tens of times those on hardware, and memory accesses, atomics,
clock reads and interrupts are distorted by different factors than plain arithmetic. Only the
ratios between variants measured side by side in this run mean anything; do not compare the
absolute figures with `bench dataplane` or with each other across runs.";

/// Host: provisions, boots the guest, streams its report.
pub fn run(target: &Path, opts: Options, timeout: Option<Duration>) -> Result<()> {
    if !crate::is_root() {
        bail!("the IPVS bench boots a QEMU guest with the host's / shared: run it as root");
    }
    ensure_packages(APT)?;
    let kernel = guest_kernel(&target.join("guest-kernel"))?;
    let mut q = Qemu::new(&kernel.0, &kernel.1)?;
    q.echo = true;
    q.timeout = timeout.unwrap_or_else(|| opts.default_timeout());
    let exe = std::env::current_exe()?;
    println!(
        "bench ipvs: QEMU TCG guest, kernel {} ({}), {} vCPUs, {} MiB, timeout {:?}; host {} \
         CPUs, load average {:.2}\n{TCG_NOTE}\n",
        q.release(),
        kernel.0.display(),
        q.cpus,
        q.mem_mb,
        q.timeout,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        sys::loadavg()
    );
    let args = opts.guest_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let busy0: u64 = sys::cpu_busy_ns().iter().sum();
    let ru0 = children_cpu_ns();
    let t0 = Instant::now();
    let guest = q.run(&exe, &args)?;
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let busy1: u64 = sys::cpu_busy_ns().iter().sum();
    let qemu_cores = children_cpu_ns().saturating_sub(ru0) as f64 / 1e9 / wall;
    let host_cores = busy1.saturating_sub(busy0) as f64 / 1e9 / wall;
    println!(
        "\nhost during the guest's run ({:.0?}): QEMU {:.2} cores, other work on the host {:.2} \
         cores (of {}); load average now {:.2}. Other work competes with the vCPU threads and \
         shows up as spread between rounds.",
        guest.elapsed,
        qemu_cores,
        (host_cores - qemu_cores).max(0.0),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        sys::loadavg()
    );
    if guest.timed_out || guest.exit_code != Some(0) {
        // The output was echoed already; show the console's end.
        let tail: Vec<&str> = guest.console.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the guest {} (exit {:?} after {:.0?})\n--- guest console (last lines) ---\n{}",
            if guest.timed_out { "TIMED OUT and was killed" } else { "failed" },
            guest.exit_code,
            guest.elapsed,
            tail.join("\n")
        );
    }
    Ok(())
}

/// CPU time (ns) of this process's reaped children (QEMU, once it has exited).
fn children_cpu_ns() -> u64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into `ru`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    crate::toolchain::apt_install("bench ipvs", pkgs)
}

/// Debian 12's kernel image and module tree, unpacked under `cache` (not installed):
/// (vmlinuz, `…/lib/modules/<release>`).
fn guest_kernel(cache: &Path) -> Result<(PathBuf, PathBuf)> {
    if let Some(k) = find_unpacked(cache) {
        return Ok(k);
    }
    let deps = |cmd: &mut Command| -> Result<Option<String>> {
        let out = cmd.output().context("apt-cache")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with(KERNEL_PREFIX) && p.ends_with("-amd64"))
            .map(str::to_string))
    };
    let mut pkg = deps(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
    if pkg.is_none() {
        crate::run(Command::new("apt-get").args(["update", "-q"]))?;
        pkg = deps(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
    }
    let pkg = pkg.with_context(|| {
        format!(
            "apt knows no {KERNEL_META} that depends on a {KERNEL_PREFIX}* package: the guest \
             needs Debian 12's 6.1 kernel (bookworm in the apt sources)"
        )
    })?;
    println!(
        "bench ipvs: fetching {pkg} (apt-get download; unpacked under {}, not installed: no \
         maintainer scripts, /boot and /lib/modules untouched)",
        cache.display()
    );
    let dl = cache.join("download");
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl)?;
    crate::run(Command::new("apt-get").current_dir(&dl).args(["download", "-q", &pkg]))?;
    let deb = std::fs::read_dir(&dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let partial = cache.join(format!("{pkg}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let release = pkg.strip_prefix("linux-image-").unwrap_or(&pkg).to_string();
    crate::run(Command::new("depmod").arg("-b").arg(&partial).arg(&release))?;
    std::fs::rename(&partial, cache.join(&pkg))?;
    let _ = std::fs::remove_dir_all(&dl);
    find_unpacked(cache).context("the unpacked kernel package has no vmlinuz or modules.dep")
}

fn find_unpacked(cache: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(KERNEL_PREFIX) && !n.ends_with(".partial"))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find_map(|d| {
        let boot = std::fs::read_dir(d.join("boot")).ok()?;
        let vmlinuz = boot.flatten().map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-"))
        })?;
        let release = vmlinuz.file_name()?.to_str()?.strip_prefix("vmlinuz-")?.to_string();
        ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|m| d.join(m).join(&release))
            .find(|m| m.join("modules.dep").exists())
            .map(|m| (vmlinuz.clone(), m))
    })
}

// ---------------------------------------------------------------------------------------
// Guest side
// ---------------------------------------------------------------------------------------

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
struct Point {
    /// Packets processed by the director (pps), or requests/s.
    rate: f64,
    /// Delivered to the sinks (pps; UDP only).
    delivered: f64,
    /// Director CPU per packet / request (ns).
    per_unit_ns: Option<f64>,
    /// Director cores busy.
    busy: f64,
    errors: u64,
}

struct Guest {
    topo: BenchTopo,
    /// The bench's copy of the object: the sinks.
    bpf: Bpf,
    object: Vec<u8>,
    ours: Ours,
    dir: PathBuf,
    kthreads: Vec<NapiThread>,
    sinks: Vec<XdpLinkId>,
    halb: Option<XdpDataplane>,
    ipvs: Option<IpvsDataplane>,
}

/// Guest: the measurements and the report. Refuses to run outside a QEMU guest (it loads
/// kernel modules and configures IPVS).
pub fn guest(opts: Options) -> Result<()> {
    let dir = qemu::in_guest()
        .context("bench-ipvs-guest runs inside the guest that `cargo xtask bench ipvs` boots")?;
    qemu::modprobe(&["veth", "ip_vs", "ip_vs_rr", "sch_ingress", "cls_bpf"])?;
    std::fs::write("/proc/sys/net/core/bpf_jit_enable", "1").context("enabling the BPF JIT")?;
    let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let t_start = Instant::now();

    let (object, bpf) = common::load_object(&opts.object)?;
    let (topo, ours) = common::build_lab()?;
    let mut g = Guest {
        topo,
        bpf,
        object,
        ours,
        dir: dir.join("bench"),
        kthreads: Vec::new(),
        sinks: Vec::new(),
        halb: None,
        ipvs: None,
    };
    std::fs::create_dir_all(&g.dir)?;
    g.start_servers()?;
    g.repin()?;
    println!(
        "guest: kernel {} , {cpus} vCPUs, bpf_jit_enable={}; director on vCPU {}, client/servers \
         on vCPU {}; {} NAPI kthreads pinned; {} rounds (order rotates); set up in {:.0?}",
        release.trim(),
        jit.trim(),
        g.topo.director_cpu,
        g.topo.other_cpu,
        g.kthreads.len(),
        opts.rounds,
        t_start.elapsed()
    );

    let mut results: BTreeMap<(Metric, Variant), Vec<Option<Point>>> = BTreeMap::new();
    let mut failed: BTreeMap<Variant, String> = BTreeMap::new();
    let n = opts.variants.len();
    for round in 0..opts.rounds {
        for k in 0..n {
            let v = opts.variants[(k + round) % n];
            if failed.contains_key(&v) {
                continue;
            }
            let r = g.variant_round(v, round, &opts, &mut results);
            let t = g.leave();
            common::settle(&mut failed, v, Variant::name, round, r, t);
        }
    }
    drop(g);
    print!("{}", report(&results, &opts, &failed, release.trim()));
    println!("(guest total {:.0?})", t_start.elapsed());
    Ok(())
}

impl Guest {
    fn start_servers(&mut self) -> Result<()> {
        for i in 0..REAL_SERVERS {
            common::spawn_nginx(&mut self.topo, &self.dir, i)?;
        }
        common::await_nginx(
            &self.topo.client,
            Duration::from_secs(20),
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
    }

    fn repin(&mut self) -> Result<()> {
        self.kthreads = self.topo.pin()?;
        Ok(())
    }

    fn sample(&self) -> sys::CpuSample {
        sys::sample_napi(&self.ours, &self.kthreads, &[])
    }

    fn enter(&mut self, v: Variant) -> Result<()> {
        let director = self.topo.director.clone();
        match v {
            Variant::Routed => {}
            Variant::HaLbNat | Variant::HaLbNatTc => {
                let hook = if v == Variant::HaLbNatTc { Hook::Tc } else { Hook::Xdp };
                let desired = desired(LbKind::Nat, REAL_SERVERS);
                self.halb = Some(common::attach_halb(&director, &self.object, hook, &desired)?);
            }
            Variant::IpvsNat => {
                // The generic netlink socket is opened in the director's namespace: IPVS
                // state is per namespace.
                let mut dp = director.run(IpvsDataplane::open)??;
                dp.apply(&desired(LbKind::Nat, REAL_SERVERS))?;
                self.ipvs = Some(dp);
            }
        }
        self.repin()
    }

    fn leave(&mut self) -> Result<()> {
        self.detach_sinks()?;
        if let Some(dp) = self.halb.take() {
            common::detach_halb(&self.topo.director, dp)?;
        }
        if let Some(mut dp) = self.ipvs.take() {
            dp.apply(&ha_lb::dataplane::DesiredState::default())?;
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

    fn target(&self, v: Variant) -> Ipv4Addr {
        match v {
            Variant::Routed => BenchTopo::rs_addr(0),
            _ => VIP,
        }
    }

    fn variant_round(
        &mut self,
        v: Variant,
        round: usize,
        opts: &Options,
        results: &mut BTreeMap<(Metric, Variant), Vec<Option<Point>>>,
    ) -> Result<()> {
        self.enter(v)?;
        if round == 0 {
            self.precheck(v).context("correctness pre-check")?;
        }
        let mut line = format!("  round {} {:<12}", round + 1, v.name());
        for m in Metric::ALL {
            if !opts.metrics.contains(&m) {
                continue;
            }
            let p = self.measure(v, m, opts)?;
            let _ = write!(line, " {}", short(m, &p));
            // Index = round, so per-round ratios pair the right runs.
            let slot = results.entry((m, v)).or_default();
            slot.resize(round, None);
            slot.push(Some(p));
        }
        if v == Variant::IpvsNat {
            let _ = write!(line, " (ipvs: {})", self.ipvs_conns());
        }
        println!("{line}");
        Ok(())
    }

    /// IPVS's own view, to show it carried the traffic: connections and packets in.
    fn ipvs_conns(&self) -> String {
        match self.topo.director.exec("ipvsadm", &["-Ln", "--stats"]) {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                text.lines()
                    .filter(|l| l.starts_with("TCP") || l.starts_with("UDP"))
                    .filter_map(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        (w.len() >= 4).then(|| format!("{} {} conns {} pkts", w[0], w[2], w[3]))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            Err(e) => format!("ipvsadm: {e:#}"),
        }
    }

    /// What `v` delivers is well-formed and balanced: UDP datagrams and the TCP segments of
    /// HTTP requests captured at the real servers and verified with `frame::check`; requests
    /// through a load balancer reach both real servers.
    fn precheck(&mut self, v: Variant) -> Result<()> {
        // No variant here originates segments on the director: every checksum must be right.
        let capture = Capture::open(&self.topo, Duration::from_millis(500), false)?;
        let sent = send_skbs(
            &self.topo.client,
            self.topo.other_cpu,
            (CLIENT, self.target(v)),
            Duration::from_millis(100),
            4,
        )?;
        let (good, all) = capture.check(17, UDP_PORT, v.name())?;
        if all == 0 || good != all {
            bail!("UDP: {good} valid of {all} frames delivered to the real servers ({sent} sent)");
        }
        let mut bodies = Vec::new();
        for _ in 0..4 {
            let addr = SocketAddr::new(self.target(v).into(), HTTP_PORT);
            let body = http_get(&self.topo.client, addr, Duration::from_secs(5))?;
            if !body.starts_with("rs") {
                bail!("HTTP through {}: unexpected body {body:?}", v.name());
            }
            bodies.push(body.trim().to_string());
        }
        bodies.sort();
        bodies.dedup();
        if v != Variant::Routed && bodies.len() < REAL_SERVERS {
            bail!("HTTP through {}: only {bodies:?} answered 4 new connections", v.name());
        }
        let (good, all) = capture.check(6, HTTP_PORT, v.name())?;
        if all == 0 || good != all {
            bail!("TCP: {good} valid of {all} segments seen at the real servers");
        }
        Ok(())
    }

    fn measure(&mut self, v: Variant, m: Metric, opts: &Options) -> Result<Point> {
        let mut p = Point::default();
        match m {
            Metric::UdpSkbs => {
                self.attach_sinks()?;
                let director = self.topo.director.clone();
                let rx0 = sys::if_counters(&director, "hbd0")?;
                let sink0 = sink_counters(&self.bpf)?;
                let s0 = self.sample();
                send_skbs(
                    &self.topo.client,
                    self.topo.other_cpu,
                    (CLIENT, self.target(v)),
                    opts.udp,
                    u32::MAX,
                )?;
                // Let the rings drain into the counters (TCG is slow).
                std::thread::sleep(Duration::from_millis(300));
                let s1 = self.sample();
                let rx1 = sys::if_counters(&director, "hbd0")?;
                let sink1 = sink_counters(&self.bpf)?;
                self.detach_sinks()?;
                let cpu = sys::delta(&s0, &s1, self.topo.director_cpu);
                let w = cpu.wall.as_secs_f64().max(1e-9);
                let processed = rx1.rx_packets - rx0.rx_packets;
                p.rate = processed as f64 / w;
                p.delivered = (sink1.frames - sink0.frames) as f64 / w;
                p.busy = cpu.director_busy;
                p.per_unit_ns = (processed > 0).then(|| cpu.director_ns as f64 / processed as f64);
            }
            Metric::TcpKeepAlive => {
                let url = format!("http://{}:{HTTP_PORT}/", self.target(v));
                let lead = Duration::from_secs(2);
                let mut cmd = common::wrk(&self.topo, (lead + opts.tcp).as_secs() + 2);
                cmd.arg(&url);
                let window = Window {
                    lead,
                    length: opts.tcp,
                    grace: Duration::from_secs(30),
                    poll: Duration::from_millis(100),
                };
                let out = self.dir.join("wrk.out");
                let (out, s0, s1) = common::windowed(cmd, &out, "wrk", &window, || self.sample())?;
                let w = parse_wrk(&out)?;
                let cpu = sys::delta(&s0, &s1, self.topo.director_cpu);
                // wrk's rate is over its whole run; the window is its middle, at full load.
                p.rate = w.requests_per_s;
                p.errors = w.errors;
                p.busy = cpu.director_busy;
                p.per_unit_ns = (p.rate > 0.0).then(|| cpu.director_busy * 1e9 / p.rate);
            }
        }
        Ok(p)
    }
}

fn short(m: Metric, p: &Point) -> String {
    let cost = p.per_unit_ns.map(|x| format!("{:.1}us", x / 1e3)).unwrap_or_else(|| "-".into());
    match m {
        Metric::UdpSkbs => format!(
            "udp: {:.1}kpps (sinks {:.1}k) {cost}/pkt busy {:.2}",
            p.rate / 1e3,
            p.delivered / 1e3,
            p.busy
        ),
        Metric::TcpKeepAlive => format!(
            "http-ka: {:.2}kreq/s {cost}/req busy {:.2}{}",
            p.rate / 1e3,
            p.busy,
            if p.errors > 0 { format!(" ({} errors)", p.errors) } else { String::new() }
        ),
    }
}

/// Per-round ratios of `a`'s director cost over `b`'s (rounds where both were measured).
fn paired(pts_a: &[Option<Point>], pts_b: &[Option<Point>]) -> Vec<f64> {
    pts_a
        .iter()
        .zip(pts_b)
        .filter_map(|(a, b)| {
            let (a, b) = (a.as_ref()?.per_unit_ns?, b.as_ref()?.per_unit_ns?);
            (b > 0.0).then(|| a / b)
        })
        .collect()
}

fn report(
    results: &BTreeMap<(Metric, Variant), Vec<Option<Point>>>,
    opts: &Options,
    failed: &BTreeMap<Variant, String>,
    release: &str,
) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nbench ipvs — QEMU TCG guest, kernel {release}; {} rounds, variants interleaved; \
         min/median/max over rounds. TCG-distorted absolute figures: read the ratios.",
        opts.rounds
    );
    for m in Metric::ALL {
        let rows = common::measured(results, m, &opts.variants);
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(r, "\n{}", m.title());
        let (unit, rate_unit) = match m {
            Metric::UdpSkbs => ("us/pkt", "kpps"),
            Metric::TcpKeepAlive => ("us/req", "kreq/s"),
        };
        let udp = m == Metric::UdpSkbs;
        let _ = writeln!(
            r,
            "  {:<12} {:>22} {:>22} {}{:>6}  {:>8} {:>8}",
            "variant",
            format!("director {unit}"),
            format!("{} {rate_unit}", if udp { "processed" } else { "rate" }),
            if udp { format!("{:>10} ", "delivered") } else { String::new() },
            "busy",
            "/routed",
            "/ipvs"
        );
        let pts = |v: Variant| -> Vec<Point> {
            results.get(&(m, v)).map(|x| x.iter().flatten().copied().collect()).unwrap_or_default()
        };
        let med_cost = |v: Variant| {
            min_med_max(pts(v).iter().filter_map(|p| p.per_unit_ns).collect()).map(|x| x.1)
        };
        for v in &rows {
            let p = pts(*v);
            let c = min_med_max(p.iter().filter_map(|p| p.per_unit_ns).collect());
            let rate = min_med_max(p.iter().map(|p| p.rate).collect());
            let delivered = min_med_max(p.iter().map(|p| p.delivered).collect());
            let busy = min_med_max(p.iter().map(|p| p.busy).collect());
            let row_cost = c.map(|x| x.1);
            let _ = writeln!(
                r,
                "  {:<12} {:>22} {:>22} {}{:>6}  {:>8} {:>8}",
                v.name(),
                fmt3(c, 1e3, 1),
                fmt3(rate, 1e3, 2),
                if udp {
                    format!("{:>10.2} ", delivered.map(|x| x.1).unwrap_or(0.0) / 1e3)
                } else {
                    String::new()
                },
                busy.map(|b| format!("{:.2}", b.1)).unwrap_or_default(),
                ratio(row_cost, med_cost(Variant::Routed)),
                ratio(row_cost, med_cost(Variant::IpvsNat)),
            );
        }
        // Ratios within each round: drift of the host between rounds cancels out.
        let get = |v: Variant| results.get(&(m, v)).cloned().unwrap_or_default();
        for (a, b) in [
            (Variant::HaLbNat, Variant::IpvsNat),
            (Variant::HaLbNatTc, Variant::IpvsNat),
            (Variant::HaLbNat, Variant::Routed),
            (Variant::HaLbNatTc, Variant::Routed),
            (Variant::IpvsNat, Variant::Routed),
        ] {
            let v = paired(&get(a), &get(b));
            if let Some(x) = min_med_max(v.clone()) {
                let _ = writeln!(
                    r,
                    "  {} / {}: director cost ratio per round {:.2}/{:.2}/{:.2} (min/median/max \
                     of {} rounds)",
                    a.name(),
                    b.name(),
                    x.0,
                    x.1,
                    x.2,
                    v.len()
                );
            }
        }
    }
    let _ = writeln!(
        r,
        "\n  director cost: CPU time of the director's NAPI kthreads (schedstat) per packet \
         processed / per request; /routed, /ipvs: ratio of the row's median to that variant's \
         median in this run (<1 is cheaper). busy: director vCPU busy (median); a rate is a \
         capacity only when busy ≥ 0.9 — under TCG the client usually saturates first. \
         Socket skbs on veth: before native XDP runs, veth copies an skb with less than \
         256 bytes of headroom into a fresh page (veth_xdp_rcv_skb), a cost the stack's path \
         (IPVS, routed) does not pay and a NIC's XDP does not either."
    );
    common::write_failed(&mut r, failed, Variant::name);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_args_round_trip_names() {
        let o = Options {
            rounds: 3,
            udp: Duration::from_secs(2),
            tcp: Duration::from_secs(4),
            variants: Variant::ALL.to_vec(),
            metrics: Metric::ALL.to_vec(),
            object: "/x/o.o".into(),
        };
        let a = o.guest_args();
        assert_eq!(a[0], "bench-ipvs-guest");
        assert!(a
            .windows(2)
            .any(|w| w[0] == "--variants" && w[1] == "ha-lb-nat,ha-lb-nat-tc,ipvs-nat,routed"));
        for v in Variant::ALL {
            assert_eq!(Variant::parse(v.name()).unwrap(), v);
        }
        assert!(o.default_timeout() > Duration::from_secs(300));
    }

    #[test]
    fn paired_ratios_skip_missing_rounds() {
        let p = |c: f64| Some(Point { per_unit_ns: Some(c), ..Default::default() });
        let a = vec![p(1.0), None, p(3.0)];
        let b = vec![p(2.0), p(2.0), p(6.0)];
        assert_eq!(paired(&a, &b), vec![0.5, 0.5]);
    }
}
