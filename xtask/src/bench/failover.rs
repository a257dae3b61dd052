//! `cargo xtask bench failover`: unavailability of the VIP when the master dies, keepalived
//! pair vs ha-lb pair, same lab, same advert_int, interleaved runs.
//!
//! The master "dies" as a host would: its link goes down, then every process in its
//! namespace gets SIGKILL (a killed keepalived leaves the VIP configured, and the dead
//! host's kernel would otherwise keep answering for it). A client probes the VIP with ICMP
//! echo every 10 ms; the gap is the time from the last answer before the kill to the first
//! answer after it, minus one probe interval.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ha_lb_lab::{
    probe::{summary, Prober},
    topology::{bin_path, DirectorLab, Mode, VIP},
    wait_for, Node,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Keepalived,
    HaLb,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Keepalived => "keepalived",
            Peer::HaLb => "ha-lb",
        }
    }
}

/// One advert setting to measure.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub version: u8,
    /// advert_int in centiseconds.
    pub advert_cs: u32,
}

impl Setting {
    fn label(&self) -> String {
        format!("v{} advert_int {}s", self.version, self.advert_cs as f64 / 100.0)
    }
}

fn keepalived_conf(setting: Setting, router: &str, priority: u8) -> String {
    format!(
        "global_defs {{\n  router_id {router}\n  vrrp_version {v}\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int {a}\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
        v = setting.version,
        a = setting.advert_cs as f64 / 100.0,
    )
}

fn halb_conf(setting: Setting, router: &str, priority: u8, sock: &Path) -> String {
    format!(
        "[global]\nrouter_id = \"{router}\"\ndataplane = \"none\"\ncontrol_socket = \"{}\"\n\n\
         [[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\n\
         priority = {priority}\nadvert_int = {a}\nversion = {v}\nvirtual_ipaddress = [\"{VIP}/24\"]\n",
        sock.display(),
        v = setting.version,
        a = setting.advert_cs as f64 / 100.0,
    )
}

/// Starts the daemon of `peer` in `node`; returns its pid.
fn start(
    t: &mut DirectorLab,
    peer: Peer,
    setting: Setting,
    idx: usize,
    priority: u8,
    dir: &Path,
) -> Result<u32> {
    let node = t.directors[idx].clone();
    let router = node.name.clone();
    let mut cmd = match peer {
        Peer::Keepalived => {
            let conf = dir.join(format!("{router}.keepalived.conf"));
            std::fs::write(&conf, keepalived_conf(setting, &router, priority))?;
            let mut c = Command::new("keepalived");
            c.args(["-n", "-l", "-D", "-P", "-f"]).arg(&conf);
            c.arg("-p").arg(dir.join(format!("{router}.pid")));
            c.arg("-r").arg(dir.join(format!("{router}.vrrp.pid")));
            c
        }
        Peer::HaLb => {
            let conf = dir.join(format!("{router}.ha-lb.toml"));
            std::fs::write(
                &conf,
                halb_conf(setting, &router, priority, &dir.join(format!("{router}.sock"))),
            )?;
            let mut c = Command::new(bin_path("ha-lb")?);
            c.args(["run", "-c"]).arg(&conf);
            c
        }
    };
    t.lab.spawn_logged(&node, &mut cmd, &dir.join(format!("{router}.log")))
}

fn holds_vip(node: &Node) -> bool {
    node.sh("ip -o -4 addr show dev eth0").map(|s| s.contains(&format!("{VIP}/"))).unwrap_or(false)
}

/// One failover: returns the outage in the client's view.
fn one_run(peer: Peer, setting: Setting, dir: &Path) -> Result<Duration> {
    // Fresh files per run: a SIGKILLed keepalived leaves pid files behind.
    let dir = &tempdir_in(dir)?;
    let mut t = DirectorLab::build(Mode::Dr, 2, 0)?;
    let d1 = start(&mut t, peer, setting, 0, 150, dir)?;
    let _d2 = start(&mut t, peer, setting, 1, 100, dir)?;
    let master = t.directors[0].clone();
    let backup = t.directors[1].clone();
    // Both daemons start as BACKUP; d1 wins after its down timer.
    let settle = Duration::from_millis(setting.advert_cs as u64 * 10 * 6) + Duration::from_secs(3);
    wait_for(settle, Duration::from_millis(20), || holds_vip(&master).then_some(()))
        .with_context(|| format!("{}: d1 never became master", peer.name()))?;
    // Let the backup see a few adverts, then probe steadily before the kill.
    std::thread::sleep(Duration::from_millis((setting.advert_cs as u64 * 10 * 3).max(500)));
    if holds_vip(&backup) {
        bail!("{}: both directors hold the VIP", peer.name());
    }
    let window = Duration::from_secs(12) + Duration::from_millis(setting.advert_cs as u64 * 40);
    let prober = Prober::start(&t.client, VIP, Duration::from_millis(10), window)?;
    // Kill at a random phase of the master's advert timer: the outage depends on how long
    // before the crash the last advert went out, and a fixed phase would bias the medians.
    std::thread::sleep(
        Duration::from_millis(500) + jitter(Duration::from_millis(setting.advert_cs as u64 * 10)),
    );
    let kill_at = prober.elapsed();
    // The host dies: its link goes first (nothing more leaves it, as with a crash), then
    // SIGKILL to everything in its namespace. Killing first would let keepalived's VRRP
    // child see its parent die and send a priority-0 advert: a graceful stop, not a crash.
    master.ip(&["link", "set", "eth0", "down"])?;
    let out = Command::new("ip").args(["netns", "pids", &master.ns]).output()?;
    let pids: Vec<String> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
    if !pids.is_empty() {
        let _ = Command::new("kill").arg("-9").args(&pids).status();
    }
    t.lab.kill(d1);
    let taken = wait_for(window, Duration::from_millis(10), || holds_vip(&backup).then_some(()));
    // Keep probing a little after takeover so the first answers are recorded.
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop()?;
    taken.with_context(|| format!("{}: the backup never took the VIP", peer.name()))?;
    log.outage_after(kill_at).context("no probe answered after the kill")
}

/// A pseudo-random duration in [0, max), from the clock (no RNG dependency needed).
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64;
    let x = nanos.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 11;
    Duration::from_nanos(x % (max.as_nanos().max(1) as u64))
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let d = parent.join(format!("run{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

pub fn run(runs: usize, peers: &[Peer], settings: &[Setting]) -> Result<()> {
    if !crate::is_root() {
        bail!("the failover bench builds namespace labs: run it as root");
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("hlb-bench-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut report = String::new();
    // Peers of a setting without one successful run: nothing was compared.
    let mut no_result: Vec<String> = Vec::new();
    for setting in settings {
        let mut results: Vec<(Peer, Vec<Duration>)> =
            peers.iter().map(|p| (*p, Vec::new())).collect();
        // Interleave: A B A B …
        for run in 0..runs {
            for (peer, out) in results.iter_mut() {
                let t0 = Instant::now();
                match one_run(*peer, *setting, &dir) {
                    Ok(gap) => {
                        println!(
                            "  {} {} run {}: outage {:?} (run took {:.1?})",
                            setting.label(),
                            peer.name(),
                            run + 1,
                            gap,
                            t0.elapsed()
                        );
                        out.push(gap);
                    }
                    Err(e) => println!(
                        "  {} {} run {}: FAILED: {e:#}",
                        setting.label(),
                        peer.name(),
                        run + 1
                    ),
                }
            }
        }
        let _ = writeln!(
            report,
            "\n{} — VIP outage after kill -9 + link down of the master ({} runs each)",
            setting.label(),
            runs
        );
        let _ = writeln!(report, "  {:<12} {:>10} {:>10} {:>10}", "peer", "min", "median", "max");
        let mut medians = Vec::new();
        for (peer, v) in &results {
            if v.is_empty() {
                let _ = writeln!(report, "  {:<12} no successful run", peer.name());
                no_result.push(format!("{} {}", setting.label(), peer.name()));
                continue;
            }
            let (mn, md, mx) = summary(v);
            medians.push((*peer, md));
            let _ = writeln!(
                report,
                "  {:<12} {:>8}ms {:>8}ms {:>8}ms",
                peer.name(),
                mn.as_millis(),
                md.as_millis(),
                mx.as_millis()
            );
        }
        if let (Some((_, ka)), Some((_, hl))) = (
            medians.iter().find(|(p, _)| *p == Peer::Keepalived),
            medians.iter().find(|(p, _)| *p == Peer::HaLb),
        ) {
            let _ = writeln!(
                report,
                "  ratio ha-lb / keepalived (median): {:.2}",
                hl.as_secs_f64() / ka.as_secs_f64().max(1e-9)
            );
        }
    }
    println!("{report}");
    println!("(daemon logs of every run: {})", dir.display());
    if !no_result.is_empty() {
        bail!("no successful run for {} (see the errors above)", no_result.join(", "));
    }
    Ok(())
}
