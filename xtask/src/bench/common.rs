//! What `bench dataplane` and `bench ipvs` share: setting up the lab on [`BenchTopo`] (the
//! eBPF object, nginx real servers, sinks, ha-lb's data plane), the pre-check of what a
//! variant delivers, a load tool's run with CPU sampled over its middle, the cells of their
//! reports and the bookkeeping of their rounds. One copy, so that both benches measure the
//! same set-up in the same way, their tables read alike, and a fix to one reaches the other.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::xdp::XdpLinkId;
use ha_lb::{
    bpf::{bench::PROG_BENCH_SINK, Bpf},
    dataplane::{
        xdp::{Hook, XdpDataplane},
        Dataplane, DesiredState, LbAlgo, LbKind, Protocol, RealServerSpec, ServiceSpec,
        VirtualServerKey,
    },
};
use ha_lb_lab::{
    benchtopo::{pin_process, pin_task, BenchTopo, REAL_SERVERS, VIP},
    frame,
    packet::PacketSocket,
    topology::http_get,
    Node,
};

use super::{
    dataplane_peers::{nginx_conf, HTTP_PORT, IPERF_PORT, UDP_PORT},
    dataplane_sys::{CpuSample, Ours},
};

/// Frame length of the small-UDP measurements (without FCS): 14 + 20 + 8 + 18.
pub(crate) const FRAME_LEN: usize = 60;
/// The first source port of the UDP measurements' flows.
pub(crate) const FIRST_SPORT: u16 = 20000;

/// The eBPF object's bytes (each ha-lb variant loads its own copy from them) and the
/// bench's own load of it (sinks, and in `bench dataplane` the generator and the empty
/// programs).
pub(crate) fn load_object(path: &Path) -> Result<(Vec<u8>, Bpf)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the eBPF object {}", path.display()))?;
    let bpf = Bpf::load_bytes(&bytes, tracing::Level::WARN).context("loading the eBPF object")?;
    Ok((bytes, bpf))
}

/// Builds the bench topology and pins this process (and every thread it starts) to the
/// client side's CPU, away from the director's. [`Ours`] names the lab's namespaces, so
/// CPU used in them counts as the bench's own and not as foreign.
pub(crate) fn build_lab() -> Result<(BenchTopo, Ours)> {
    let topo = BenchTopo::build()?;
    pin_process(std::process::id(), topo.other_cpu)?;
    let mut nodes = vec![&topo.client, &topo.director];
    nodes.extend(topo.real_servers.iter());
    let ours = Ours::new(&nodes)?;
    Ok((topo, ours))
}

/// The bench's services, as ha-lb and IPVS are given them (nftables and HAProxy are
/// configured to match): HTTP and UDP round robin over the real servers (UDP over the
/// first `udp_real_servers`), iperf3 to the first one.
pub(crate) fn desired(kind: LbKind, udp_real_servers: usize) -> DesiredState {
    let mut d = DesiredState::default();
    let rs = |port: u16, n: usize| -> Vec<RealServerSpec> {
        (0..n)
            .map(|i| RealServerSpec { addr: BenchTopo::rs_addr(i).into(), port, weight: 1 })
            .collect()
    };
    for (port, protocol, n) in [
        (HTTP_PORT, Protocol::Tcp, REAL_SERVERS),
        (UDP_PORT, Protocol::Udp, udp_real_servers.clamp(1, REAL_SERVERS)),
        (IPERF_PORT, Protocol::Tcp, 1),
    ] {
        let mut spec = ServiceSpec::new(LbAlgo::Rr, kind);
        spec.real_servers = rs(port, n);
        d.services.insert(VirtualServerKey { address: VIP.into(), port, protocol }, spec);
    }
    d
}

/// Starts nginx as real server `i` (`rs1`, `rs2`, …) on the client side's CPU, with its
/// config and logs in `dir`.
pub(crate) fn spawn_nginx(topo: &mut BenchTopo, dir: &Path, i: usize) -> Result<()> {
    let node = topo.real_servers[i].clone();
    let name = format!("rs{}", i + 1);
    let conf = dir.join(format!("{name}.nginx.conf"));
    std::fs::write(&conf, nginx_conf(dir, &name))?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &topo.other_cpu.to_string(), "nginx", "-e"])
        .arg(dir.join(format!("{name}.nginx.err")))
        .arg("-c")
        .arg(&conf);
    topo.lab.spawn_logged(&node, &mut cmd, &dir.join(format!("{name}.log")))?;
    Ok(())
}

/// Waits until every real server's nginx answers the client over their direct link, trying
/// every `poll` for at most `within`, each request allowed `request` (the guest of `bench
/// ipvs` is slower than the host, so it allows more).
pub(crate) fn await_nginx(
    client: &Node,
    within: Duration,
    poll: Duration,
    request: Duration,
) -> Result<()> {
    for i in 0..REAL_SERVERS {
        let addr = SocketAddr::new(BenchTopo::rs_direct_addr(i).into(), HTTP_PORT);
        ha_lb_lab::wait_for(within, poll, || http_get(client, addr, request).ok())
            .with_context(|| format!("nginx on rs{} did not answer", i + 1))?;
    }
    Ok(())
}

/// wrk in the client, pinned to the client side's CPU: one thread, 32 connections, for
/// `secs`. The caller adds any header and the URL. One place, so both benches offer the same
/// HTTP load.
pub(crate) fn wrk(topo: &BenchTopo, secs: u64) -> Command {
    let mut cmd = topo.client.command("taskset");
    cmd.args(["-c", &topo.other_cpu.to_string(), "wrk", "-t1", "-c32"]).arg(format!("-d{secs}s"));
    cmd
}

/// Connected sockets (distinct source ports) the socket-skb measurements send from.
pub(crate) const SKB_FLOWS: u16 = 64;

/// Small UDP datagrams from sockets in `client` (pinned to `cpu`): sendmmsg batches of 32
/// over [`SKB_FLOWS`] connected sockets, `src` -> `dst`:[`UDP_PORT`], for `dur` or `passes`
/// rounds over the sockets, whichever ends first. Returns datagrams sent.
pub(crate) fn send_skbs(
    client: &Node,
    cpu: usize,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    dur: Duration,
    passes: u32,
) -> Result<u64> {
    client.run(move || -> Result<u64> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        pin_task(tid, cpu)?;
        let mut socks = Vec::new();
        for i in 0..SKB_FLOWS {
            let s = std::net::UdpSocket::bind(SocketAddrV4::new(src, FIRST_SPORT + i))?;
            s.connect(SocketAddrV4::new(dst, UDP_PORT))?;
            socks.push(s);
        }
        let payload = [0u8; FRAME_LEN - 42];
        let end = Instant::now() + dur;
        let mut sent = 0u64;
        const BATCH: usize = 32;
        let mut iov: Vec<libc::iovec> = (0..BATCH)
            .map(|_| libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; each points at one iovec that outlives the call.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut done = 0u32;
        'outer: loop {
            for s in &socks {
                use std::os::fd::AsRawFd;
                // SAFETY: msgs is a valid array of BATCH headers.
                let n = unsafe {
                    libc::sendmmsg(
                        s.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    sent += n as u64;
                }
                if Instant::now() >= end {
                    break 'outer;
                }
            }
            done += 1;
            if done >= passes {
                break;
            }
        }
        Ok(sent)
    })?
}

/// Attaches `hlb_bench_sink` (counts and drops UDP frames) to both veths of every real
/// server: traffic through the director arrives on one, direct traffic on the other. Each
/// link goes into `sinks` as soon as it exists, so a failure midway leaves nothing that
/// [`detach_sinks`] would miss.
pub(crate) fn attach_sinks(
    bpf: &mut Bpf,
    topo: &BenchTopo,
    sinks: &mut Vec<XdpLinkId>,
) -> Result<()> {
    for i in 0..REAL_SERVERS {
        let rs = &topo.real_servers[i];
        for dev in [BenchTopo::rs_back(i), BenchTopo::rs_direct(i)] {
            let (l, _mode) = rs.run(|| bpf.attach_xdp(PROG_BENCH_SINK, &dev))??;
            sinks.push(l);
        }
    }
    Ok(())
}

/// Detaches what [`attach_sinks`] attached. Closing a bpf_link is valid from any namespace.
pub(crate) fn detach_sinks(bpf: &mut Bpf, sinks: &mut Vec<XdpLinkId>) -> Result<()> {
    for l in std::mem::take(sinks) {
        bpf.detach_xdp(PROG_BENCH_SINK, l)?;
    }
    Ok(())
}

/// ha-lb's data plane as a bench variant: its own load of the eBPF object, the forwarding
/// program at `hook` on the director's front veth and its back veths, `desired` applied as
/// the reconciler would. Driven directly rather than through `ha-lb run`, so only the data
/// plane is measured.
pub(crate) fn attach_halb(
    director: &Node,
    object: &[u8],
    hook: Hook,
    desired: &DesiredState,
) -> Result<XdpDataplane> {
    let bpf = Bpf::load_bytes(object, tracing::Level::WARN)?;
    let mut dp = XdpDataplane::with_hook(bpf, hook)?;
    let devs: Vec<String> = std::iter::once("hbd0".to_string())
        .chain((0..REAL_SERVERS).map(BenchTopo::director_back))
        .collect();
    director.run(|| -> Result<()> {
        for dev in &devs {
            dp.attach_interface(dev)?;
        }
        Ok(())
    })??;
    dp.apply(desired)?;
    Ok(dp)
}

/// Detaches ha-lb's data plane from every interface it is on (in the director's namespace,
/// where they are).
pub(crate) fn detach_halb(director: &Node, mut dp: XdpDataplane) -> Result<()> {
    let devs: Vec<(String, _)> = dp.interfaces();
    director.run(|| -> Result<()> {
        for (dev, _) in &devs {
            dp.detach_interface(dev)?;
        }
        Ok(())
    })??;
    Ok(())
}

/// What a variant delivers to the real servers, captured on both veths of each (packet
/// sockets opened before the traffic is sent), for the pre-check of a variant's first
/// round.
pub(crate) struct Capture {
    socks: Vec<PacketSocket>,
    /// How long a socket must stay quiet for its capture to be complete.
    quiet: Duration,
    /// Count TCP segments the director originates itself as valid despite a wrong TCP
    /// checksum: a proxy's server side (HAProxy in `bench dataplane`) sends them with
    /// CHECKSUM_PARTIAL over veth (TX offload stays on, as on a real NIC), so nobody fills
    /// the checksum in and the receiver does not check it. Their IPv4 header must still be
    /// right.
    excuse_own_checksums: bool,
}

impl Capture {
    pub(crate) fn open(
        topo: &BenchTopo,
        quiet: Duration,
        excuse_own_checksums: bool,
    ) -> Result<Capture> {
        let rs: Vec<(Node, String)> = (0..REAL_SERVERS)
            .flat_map(|i| {
                let n = topo.real_servers[i].clone();
                [(n.clone(), BenchTopo::rs_back(i)), (n, BenchTopo::rs_direct(i))]
            })
            .collect();
        let socks: Vec<PacketSocket> =
            rs.iter().map(|(n, dev)| n.run(|| PacketSocket::open(dev))?).collect::<Result<_>>()?;
        Ok(Capture { socks, quiet, excuse_own_checksums })
    }

    /// Drains the captured IPv4 frames of IP protocol `proto` to or from `port` and checks
    /// each with `frame::check`: (valid, all). Each invalid frame is printed, under the
    /// `variant`'s name.
    pub(crate) fn check(&self, proto: u8, port: u16, variant: &str) -> Result<(usize, usize)> {
        let (mut good, mut all) = (0, 0);
        for s in &self.socks {
            for f in
                s.drain(self.quiet, |f| f.len() >= 38 && f[12..14] == [8, 0] && f[23] == proto)?
            {
                let p = frame::check(&f);
                if let Ok(p) = &p {
                    if p.dport != port && p.sport != port {
                        continue;
                    }
                }
                all += 1;
                // Source 198.19.x.1: the director's address on a back link.
                let own = self.excuse_own_checksums && f[26] == 198 && f[27] == 19 && f[29] == 1;
                match p {
                    Ok(_) => good += 1,
                    Err(e) if own && e.to_string().contains("TCP checksum") => good += 1,
                    Err(e) => println!("  {variant}: invalid frame delivered: {e:#}"),
                }
            }
        }
        Ok((good, all))
    }
}

/// The timing of a load tool's run: CPU is sampled over `length` once the tool has run for
/// `lead` (so at full load, not while it connects), then the tool must exit within
/// `grace`, looked at every `poll`. The tool itself is told to run longer than
/// `lead + length`.
pub(crate) struct Window {
    pub lead: Duration,
    pub length: Duration,
    pub grace: Duration,
    pub poll: Duration,
}

/// Runs `cmd` with its output to the file `out`, takes a CPU `sample` at the start and end
/// of the window `w`, and waits for the tool to exit. Returns its output and the two
/// samples; `label` names the tool in the errors (it is killed if it overstays).
pub(crate) fn windowed(
    mut cmd: Command,
    out: &Path,
    label: &str,
    w: &Window,
    sample: impl Fn() -> CpuSample,
) -> Result<(String, CpuSample, CpuSample)> {
    cmd.stdout(std::fs::File::create(out)?).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().with_context(|| crate::display_cmd(&cmd))?;
    std::thread::sleep(w.lead);
    let s0 = sample();
    std::thread::sleep(w.length);
    let s1 = sample();
    let deadline = Instant::now() + w.grace;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{label} did not finish");
        }
        std::thread::sleep(w.poll);
    };
    let text = std::fs::read_to_string(out)?;
    if !status.success() {
        bail!("{label} failed ({status}):\n{text}");
    }
    Ok((text, s0, s1))
}

/// `s` as one of `all`, matched by `name` (the name the command line and the report use);
/// the error lists every name, so a typo on the command line shows what would have worked.
pub(crate) fn parse_name<T: Copy>(
    what: &str,
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
) -> Result<T> {
    all.iter().copied().find(|x| name(*x) == s).with_context(|| {
        let names: Vec<&str> = all.iter().map(|x| name(*x)).collect();
        format!("unknown {what} {s} ({})", names.join(", "))
    })
}

/// (min, median, max) of `v`; the median of an even count is the upper middle value.
/// None for no values, which the tables print as `-`.
pub(crate) fn min_med_max(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[0], v[v.len() / 2], v[v.len() - 1]))
}

/// A `min/median/max` cell, each divided by `scale` and shown with `prec` decimals; `-`
/// when nothing was measured.
pub(crate) fn fmt3(x: Option<(f64, f64, f64)>, scale: f64, prec: usize) -> String {
    match x {
        Some((a, b, c)) => {
            format!("{:.p$}/{:.p$}/{:.p$}", a / scale, b / scale, c / scale, p = prec)
        }
        None => "-".into(),
    }
}

/// A ratio cell: the row's median director cost over a base variant's (<1: the row is
/// cheaper); `-` when either is missing or the base is zero (no director, nothing to divide
/// by).
pub(crate) fn ratio(row: Option<f64>, base: Option<f64>) -> String {
    match (row, base) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// The rows of metric `m`'s table: the variants, in the order given, that have results for
/// it (a variant that failed or was never run for `m` gets no row).
pub(crate) fn measured<M: Ord + Copy, V: Ord + Copy, P>(
    results: &BTreeMap<(M, V), P>,
    m: M,
    variants: &[V],
) -> Vec<V> {
    variants.iter().copied().filter(|v| results.contains_key(&(m, *v))).collect()
}

/// The report's closing lines for the variants that failed: why, and that their rows are
/// missing from the tables.
pub(crate) fn write_failed<V: Copy>(
    r: &mut String,
    failed: &BTreeMap<V, String>,
    name: fn(V) -> &'static str,
) {
    for (v, e) in failed {
        let _ = writeln!(r, "\n{} FAILED (left out of the tables): {e}", name(*v));
    }
}

/// Books one variant's round, after it was measured and torn down: a teardown error is
/// printed only, a failed round is printed and drops the variant (`failed`) from the rounds
/// to come and from the report's tables.
pub(crate) fn settle<V: Ord + Copy>(
    failed: &mut BTreeMap<V, String>,
    v: V,
    name: fn(V) -> &'static str,
    round: usize,
    measured: Result<()>,
    teardown: Result<()>,
) {
    let name = name(v);
    if let Err(e) = teardown {
        println!("  {name}: teardown: {e:#}");
    }
    if let Err(e) = measured {
        println!("  {name} round {}: FAILED: {e:#}", round + 1);
        failed.insert(v, format!("{e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_med_max_takes_the_upper_middle() {
        assert_eq!(min_med_max(vec![]), None);
        assert_eq!(min_med_max(vec![3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(min_med_max(vec![4.0, 1.0, 3.0, 2.0]), Some((1.0, 3.0, 4.0)));
    }

    #[test]
    fn cells_show_dashes_for_what_is_missing() {
        assert_eq!(fmt3(Some((1000.0, 1500.0, 2250.0)), 1e3, 1), "1.0/1.5/2.2");
        assert_eq!(fmt3(None, 1.0, 0), "-");
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "-");
        assert_eq!(ratio(None, Some(1.0)), "-");
    }

    #[test]
    fn names_parse_and_list_the_choices() {
        let name = |x: u8| ["a", "b"][x as usize];
        assert_eq!(parse_name("thing", &[0, 1], name, "b").unwrap(), 1);
        let e = parse_name("thing", &[0, 1], name, "c").unwrap_err();
        assert_eq!(e.to_string(), "unknown thing c (a, b)");
    }

    #[test]
    fn rows_keep_the_given_order() {
        let results: BTreeMap<(u8, u8), ()> = [((0, 2), ()), ((0, 1), ()), ((1, 3), ())].into();
        assert_eq!(measured(&results, 0, &[3, 2, 1]), vec![2, 1]);
    }
}
