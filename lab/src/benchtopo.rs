//! The data-plane bench topology: a client, one director, two real servers, point-to-point
//! veths only (no bridge: every hop a frame takes is one the bench can attribute), and every
//! veth's NAPI in its own pinnable kthread.
//!
//! ```text
//!  client                         director                          real servers
//!  hbc0 198.18.1.2/24 ─────────── hbd0 198.18.1.1/24   (VIP 198.18.1.100 on lo)
//!                                 hbd1 198.19.1.1/24 ─────────── hbr1d 198.19.1.11/24  rs1
//!                                 hbd2 198.19.2.1/24 ─────────── hbr2d 198.19.2.12/24  rs2
//!  hbc1 198.18.11.2/24 ───────────────────────────────────────── hbr1c 198.18.11.1/24  rs1
//!  hbc2 198.18.12.2/24 ───────────────────────────────────────── hbr2c 198.18.12.1/24  rs2
//!  hbpk0 ── hbpk1 (idle pair in the client: where the live-frames generator is parked)
//! ```
//! The direct links carry the "no director" path and the return path of DR (real servers
//! hold the VIP on `lo` with `arp_ignore=1`/`arp_announce=2`); [`BenchTopo::set_return`]
//! chooses whether real servers answer the client network through the director (NAT, the
//! routed path, nftables) or over the direct link (DR).
//!
//! Roles and CPUs: the director's NAPI kthreads (`napi/hbd*`) and its userspace go on
//! [`BenchTopo::director_cpu`], everything else (client, real servers, their NAPI kthreads,
//! the generator) on [`BenchTopo::other_cpu`]. Every veth has GRO on and TSO off (without
//! NAPI, veth delivers on the sender's CPU and the director would show no CPU at all), and
//! threaded NAPI. TX checksum offload is off on the client's and real servers' veths (socket
//! skbs would carry CHECKSUM_PARTIAL, which XDP rewriting loses). Neighbour entries are
//! static: a sink that drops everything also drops ARP.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context, Result};

use crate::{Lab, Node};

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const DIRECTOR_FRONT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Number of real servers.
pub const REAL_SERVERS: usize = 2;

/// Prefix of every interface this topology creates (and of their NAPI kthreads' names).
pub const DEV_PREFIX: &str = "hb";

/// Where real servers send replies to the client network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    /// Through the director (NAT, routed path, nftables, HAProxy).
    ViaDirector,
    /// Over the direct link to the client (DR).
    Direct,
}

pub struct BenchTopo {
    pub lab: Lab,
    pub client: Node,
    pub director: Node,
    pub real_servers: Vec<Node>,
    /// CPU of the director's NAPI kthreads and userspace.
    pub director_cpu: usize,
    /// CPU of everything else.
    pub other_cpu: usize,
}

/// A NAPI kthread of one of this topology's veths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NapiThread {
    pub pid: u32,
    pub comm: String,
    /// True for the director's interfaces.
    pub director: bool,
}

impl BenchTopo {
    /// Director's interface towards real server `i` (0-based).
    pub fn director_back(i: usize) -> String {
        format!("hbd{}", i + 1)
    }
    /// Real server `i`'s interface towards the director.
    pub fn rs_back(i: usize) -> String {
        format!("hbr{}d", i + 1)
    }
    /// Real server `i`'s interface towards the client (direct path).
    pub fn rs_direct(i: usize) -> String {
        format!("hbr{}c", i + 1)
    }
    /// The client's interface towards real server `i` (direct path).
    pub fn client_direct(i: usize) -> String {
        format!("hbc{}", i + 1)
    }
    /// Real server `i`'s address behind the director.
    pub fn rs_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, i as u8 + 1, 11 + i as u8)
    }
    /// The director's address on real server `i`'s link.
    pub fn director_back_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, i as u8 + 1, 1)
    }
    /// Real server `i`'s address on the direct link.
    pub fn rs_direct_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 11 + i as u8, 1)
    }
    /// The client's address on the direct link to real server `i`.
    pub fn client_direct_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 11 + i as u8, 2)
    }

    /// Every interface of the topology, by node.
    fn interfaces(&self) -> Vec<(Node, String)> {
        let mut v = vec![
            (self.client.clone(), "hbc0".to_string()),
            (self.client.clone(), "hbpk0".into()),
            (self.client.clone(), "hbpk1".into()),
            (self.director.clone(), "hbd0".into()),
        ];
        for (i, rs) in self.real_servers.iter().enumerate() {
            v.push((self.client.clone(), Self::client_direct(i)));
            v.push((self.director.clone(), Self::director_back(i)));
            v.push((rs.clone(), Self::rs_back(i)));
            v.push((rs.clone(), Self::rs_direct(i)));
        }
        v
    }

    /// Builds the topology. Refuses to run when another bench topology's kthreads exist
    /// (their names would be ambiguous).
    pub fn build() -> Result<BenchTopo> {
        if !napi_threads_named(DEV_PREFIX)?.is_empty() {
            bail!(
                "NAPI kthreads named napi/{DEV_PREFIX}* already exist: another data-plane bench \
                 is running (or its namespaces are being removed); try again later"
            );
        }
        let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if ncpu < 2 {
            bail!("the data-plane bench needs at least 2 CPUs (one for the director)");
        }
        let mut lab = Lab::new()?;
        let client = lab.node("client")?;
        let director = lab.node("director")?;
        let mut rss = Vec::new();
        for i in 0..REAL_SERVERS {
            rss.push(lab.node(&format!("rs{}", i + 1))?);
        }
        let t = BenchTopo {
            lab,
            client,
            director,
            real_servers: rss,
            director_cpu: ncpu - 1,
            other_cpu: 0,
        };
        let (c, d) = (&t.client, &t.director);
        t.lab.veth(c, "hbc0", d, "hbd0")?;
        t.lab.veth(c, "hbpk0", c, "hbpk1")?;
        c.addr("hbc0", &format!("{CLIENT}/24"))?;
        d.addr("hbd0", &format!("{DIRECTOR_FRONT}/24"))?;
        d.addr("lo", &format!("{VIP}/32"))?;
        d.sysctl("net.ipv4.ip_forward", "1")?;
        for k in ["all", "default"] {
            d.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
            c.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
        }
        c.route(&["198.19.0.0/16", "via", &DIRECTOR_FRONT.to_string()])?;
        for (i, rs) in t.real_servers.iter().enumerate() {
            let (db, rb, rd, cd) = (
                Self::director_back(i),
                Self::rs_back(i),
                Self::rs_direct(i),
                Self::client_direct(i),
            );
            t.lab.veth(d, &db, rs, &rb)?;
            t.lab.veth(c, &cd, rs, &rd)?;
            d.addr(&db, &format!("{}/24", Self::director_back_addr(i)))?;
            rs.addr(&rb, &format!("{}/24", Self::rs_addr(i)))?;
            rs.addr(&rd, &format!("{}/24", Self::rs_direct_addr(i)))?;
            c.addr(&cd, &format!("{}/24", Self::client_direct_addr(i)))?;
            rs.addr("lo", &format!("{VIP}/32"))?;
            for k in ["all", "default"] {
                rs.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
                rs.sysctl(&format!("net.ipv4.conf.{k}.arp_ignore"), "1")?;
                rs.sysctl(&format!("net.ipv4.conf.{k}.arp_announce"), "2")?;
            }
            for dev in [&db, &rb, &rd, &cd] {
                let n = if dev.starts_with("hbd") {
                    d
                } else if dev.starts_with("hbc") {
                    c
                } else {
                    rs
                };
                n.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")?;
            }
            // Static neighbours both ways on every link.
            neigh(d, &db, Self::rs_addr(i), rs.mac(&rb)?)?;
            neigh(rs, &rb, Self::director_back_addr(i), d.mac(&db)?)?;
            neigh(c, &cd, Self::rs_direct_addr(i), rs.mac(&rd)?)?;
            neigh(rs, &rd, Self::client_direct_addr(i), c.mac(&cd)?)?;
        }
        let (cmac, dmac) = (c.mac("hbc0")?, d.mac("hbd0")?);
        neigh(c, "hbc0", DIRECTOR_FRONT, dmac)?;
        neigh(c, "hbc0", VIP, dmac)?;
        neigh(d, "hbd0", CLIENT, cmac)?;
        for (node, dev) in t.interfaces() {
            node.exec("ethtool", &["-K", &dev, "gro", "on", "tso", "off"])?;
            if !dev.starts_with("hbd") {
                node.exec("ethtool", &["-K", &dev, "tx", "off"])?;
            }
            node.sh(&format!("echo 1 > /sys/class/net/{dev}/threaded"))
                .with_context(|| format!("threaded NAPI on {dev}"))?;
        }
        t.set_return(Return::ViaDirector)?;
        Ok(t)
    }

    /// Gives the director's veths NIC-like receive interrupt coalescing: after a poll that
    /// found work, NAPI is not re-armed for `usecs` (`gro_flush_timeout`) and polls again from
    /// a timer, up to twice with nothing to do (`napi_defer_hard_irqs`) before waiting for the
    /// next packet's wake-up again. veth has no coalescing of its own: without this every
    /// packet a lightly loaded director receives costs a NAPI-thread wake-up, as a real NIC's
    /// interrupt moderation (`ethtool -C DEV rx-usecs N`) would not. 0 turns it off. Applies
    /// to every variant alike; the settings outlive XDP attaches (NAPI instances take the
    /// device's values when they are re-created).
    pub fn coalesce(&self, usecs: u32) -> Result<()> {
        let (timeout_ns, defer) = (u64::from(usecs) * 1000, if usecs == 0 { 0 } else { 2 });
        for (node, dev) in self.interfaces() {
            if !dev.starts_with("hbd") {
                continue;
            }
            node.sh(&format!(
                "echo {timeout_ns} > /sys/class/net/{dev}/gro_flush_timeout && \
                 echo {defer} > /sys/class/net/{dev}/napi_defer_hard_irqs"
            ))
            .with_context(|| format!("receive coalescing on {dev}"))?;
        }
        Ok(())
    }

    /// Routes real servers' replies to the client network through the director or over
    /// their direct link.
    pub fn set_return(&self, how: Return) -> Result<()> {
        for (i, rs) in self.real_servers.iter().enumerate() {
            let via = match how {
                Return::ViaDirector => Self::director_back_addr(i),
                Return::Direct => Self::client_direct_addr(i),
            };
            rs.ip(&["route", "replace", "198.18.1.0/24", "via", &via.to_string()])?;
        }
        Ok(())
    }

    /// The NAPI kthreads of this topology's veths. Names are `napi/<dev>-<id>`.
    pub fn napi_threads(&self) -> Result<Vec<NapiThread>> {
        Ok(napi_threads_named(DEV_PREFIX)?
            .into_iter()
            .map(|(pid, comm)| {
                let director = comm.starts_with("napi/hbd");
                NapiThread { pid, comm, director }
            })
            .collect())
    }

    /// Pins the director's NAPI kthreads to [`Self::director_cpu`] and every other NAPI
    /// kthread of the topology to [`Self::other_cpu`]. Call again after anything that may
    /// recreate NAPI instances (an XDP attach or detach). Returns the threads pinned.
    pub fn pin(&self) -> Result<Vec<NapiThread>> {
        // NAPI kthreads appear when NAPI is (re-)enabled: give them a moment.
        let threads = crate::wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
            let t = self.napi_threads().ok()?;
            let directors = t.iter().filter(|t| t.director).count();
            (directors > REAL_SERVERS).then_some(t)
        })
        .context("the director's NAPI kthreads did not appear (threaded NAPI off?)")?;
        for t in &threads {
            let cpu = if t.director { self.director_cpu } else { self.other_cpu };
            pin_task(t.pid, cpu).with_context(|| format!("pinning {} ({})", t.comm, t.pid))?;
        }
        Ok(threads)
    }
}

/// A permanent neighbour entry.
fn neigh(node: &Node, dev: &str, addr: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
    let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    node.ip(&[
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
}

/// Kernel threads whose name starts with `napi/<prefix>`: (pid, name).
pub fn napi_threads_named(prefix: &str) -> Result<Vec<(u32, String)>> {
    let want = format!("napi/{prefix}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        let comm = comm.trim();
        if comm.starts_with(&want) {
            out.push((pid, comm.to_string()));
        }
    }
    Ok(out)
}

/// Pins one task (a thread id) to `cpu`.
pub fn pin_task(tid: u32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity({tid}, cpu {cpu}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins every thread of process `pid` to `cpu`.
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            pin_task(tid, cpu)?;
        }
    }
    Ok(())
}
