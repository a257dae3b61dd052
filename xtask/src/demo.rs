//! `cargo xtask demo`: two ha-lb directors (conf/two-node-master.toml and
//! conf/two-node-backup.toml, unchanged but for their control sockets), three HTTP real
//! servers and a client, in a namespace lab; narrated with live figures. Leaves nothing
//! behind.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    topology::{bin_path, http_get, DirectorLab, KeepAlive, Mode, HTTP_PORT, VIP},
};

const VIP_S: &str = "198.18.0.100";
const GW_S: &str = "198.19.0.254";

/// Keep-alive connections opened through the master, and the real server each was on.
struct Established(Vec<(KeepAlive, String)>);

impl Established {
    fn open(t: &DirectorLab, n: usize) -> Result<Established> {
        let mut v = Vec::new();
        for _ in 0..n {
            let mut c = KeepAlive::open(&t.client, vip(), || {})?;
            let on = c.get()?;
            v.push((c, on));
        }
        Ok(Established(v))
    }

    /// One more request on each (TCP may need a retransmission right after a takeover):
    /// how many were answered by the real server they were on.
    fn still_served(&mut self) -> usize {
        let mut n = 0;
        for (c, on) in self.0.iter_mut() {
            if (0..3).any(|_| c.get().is_ok_and(|got| got == *on)) {
                n += 1;
            }
        }
        n
    }
}

/// `--keep`: says how to look at the running lab, and waits for Enter (or the end of
/// standard input).
fn hold(t: &DirectorLab, directors: &[(&HaLb, &ha_lb_lab::Node)], scratch: &Scratch) {
    say("The lab stays up (--keep). Try, as root:");
    println!("   ip netns exec {} curl -s http://{VIP_S}/", t.client.ns);
    for (d, n) in directors {
        println!(
            "   {} status --socket {}     # director in {}",
            bin_path("ha-lb").map(|p| p.display().to_string()).unwrap_or_else(|_| "ha-lb".into()),
            d.socket.display(),
            n.ns
        );
    }
    for (_, n) in directors {
        println!("   ip netns exec {} ip -br addr     # does this director hold the VIPs?", n.ns);
    }
    println!("   logs and configs: {}", scratch.dir.display());
    println!(
        "   kill PID     # stop a director gracefully: the other takes over (pids {})",
        directors.iter().map(|(d, _)| d.pid.to_string()).collect::<Vec<_>>().join(", ")
    );
    println!(
        "Press Enter to tear the lab down (Ctrl-C stops the demo's processes but leaves its \
         namespaces: `{} sweep` removes them).",
        crate::SUDO_XTASK
    );
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn say(s: &str) {
    println!("\n== {s}");
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.into(), HTTP_PORT)
}

/// `n` requests, each on a new connection; answers counted by real server.
fn spread(t: &DirectorLab, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let who = http_get(&t.client, vip(), Duration::from_millis(500))
            .unwrap_or_else(|_| "(failed)".into());
        *m.entry(who).or_insert(0) += 1;
    }
    m
}

fn print_spread(m: &BTreeMap<String, usize>) {
    let total: usize = m.values().sum();
    for (who, n) in m {
        println!(
            "   {who:<9} {n:>4}  {:>5.1}%  {}",
            100.0 * *n as f64 / total as f64,
            "#".repeat(n * 60 / total.max(1))
        );
    }
}

fn print_status(d: &HaLb) {
    match std::process::Command::new(ha_lb_lab::topology::bin_path("ha-lb").unwrap_or_default())
        .args(["status", "--socket"])
        .arg(&d.socket)
        .output()
    {
        Ok(o) => {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                println!("   | {l}");
            }
        }
        Err(e) => println!("   (status unavailable: {e})"),
    }
}

/// (time since start, the answering real server or `None` for a failed request).
type RequestLog = Vec<(Duration, Option<String>)>;

/// Client traffic in the background: one request every 20 ms, each on a new connection,
/// recording (time, answer).
struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<RequestLog>>,
    handle: std::thread::JoinHandle<()>,
    t0: Instant,
}

impl Traffic {
    fn start(t: &DirectorLab) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s2, l2, client) = (stop.clone(), log.clone(), t.client.clone());
        let t0 = Instant::now();
        let handle = std::thread::spawn(move || {
            let deadline = t0 + Duration::from_secs(60);
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let at = t0.elapsed();
                let r = http_get(&client, vip(), Duration::from_millis(150)).ok();
                l2.lock().unwrap().push((at, r));
                std::thread::sleep(Duration::from_millis(20).saturating_sub(t0.elapsed() - at));
            }
        });
        Traffic { stop, log, handle, t0 }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn stop(self) -> RequestLog {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        Arc::try_unwrap(self.log).map(|m| m.into_inner().unwrap()).unwrap_or_default()
    }
}

/// Longest run of failed requests after `from`, as (first failure, last failure, count).
fn longest_failure(
    log: &[(Duration, Option<String>)],
    from: Duration,
) -> Option<(Duration, Duration, usize)> {
    let mut best: Option<(Duration, Duration, usize)> = None;
    let mut cur: Option<(Duration, Duration, usize)> = None;
    for (at, r) in log.iter().filter(|(at, _)| *at >= from) {
        match r {
            None => cur = Some(cur.map(|(s, _, n)| (s, *at, n + 1)).unwrap_or((*at, *at, 1))),
            Some(_) => {
                if let Some(c) = cur.take() {
                    if best.map(|b| c.2 > b.2).unwrap_or(true) {
                        best = Some(c);
                    }
                }
            }
        }
    }
    if let Some(c) = cur {
        if best.map(|b| c.2 > b.2).unwrap_or(true) {
            best = Some(c);
        }
    }
    best
}

fn director_conf(root: &Path, file: &str, dataplane: &str) -> Result<String> {
    let text = std::fs::read_to_string(root.join("conf").join(file))
        .with_context(|| format!("reading conf/{file}"))?;
    // Both directors share this host's filesystem: give each its own control socket.
    Ok(text.replacen("[global]\n", "[global]\ncontrol_socket = \"{socket}\"\n", 1).replacen(
        "dataplane = \"xdp\"",
        &format!("dataplane = \"{dataplane}\""),
        1,
    ))
}

/// The caller has checked for root (`require_root`, before any build).
pub fn run(root: &Path, dataplane: &str, keep: bool) -> Result<()> {
    say("Building a lab: client, two directors (lb1, lb2), three real servers (NAT)");
    let mut t = DirectorLab::build(Mode::Nat, 2, 3)?;
    let pids = t.start_real_servers()?;
    println!(
        "   namespaces: {}",
        [&t.client, &t.directors[0], &t.directors[1]]
            .iter()
            .map(|n| n.ns.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let scratch = Scratch::new("demo")?;
    let (d1n, d2n) = (t.directors[0].clone(), t.directors[1].clone());
    let lb1 = HaLb::start(
        &mut t.lab,
        &d1n,
        &scratch,
        "lb1",
        &director_conf(root, "two-node-master.toml", dataplane)?,
    )?;
    let lb2 = HaLb::start(
        &mut t.lab,
        &d2n,
        &scratch,
        "lb2",
        &director_conf(root, "two-node-backup.toml", dataplane)?,
    )?;
    println!("   lb1: ha-lb run -c conf/two-node-master.toml   lb2: ha-lb run -c conf/two-node-backup.toml");
    if dataplane != "xdp" {
        println!("   (with dataplane = \"{dataplane}\" instead of the files' \"xdp\")");
    }
    println!("   logs: {}", scratch.dir.display());

    say("Election: both start as BACKUP (as keepalived does); lb1 (priority 150) wins");
    let t0 = Instant::now();
    eventually(Duration::from_secs(10), "lb1 holds both VIPs", || {
        holds(&d1n, "eth0", VIP_S) && holds(&d1n, "eth1", GW_S)
    })?;
    println!(
        "   lb1 is MASTER of VI_PUBLIC ({VIP_S}) and VI_GATEWAY ({GW_S}) after {:.1?}",
        t0.elapsed()
    );
    eventually(Duration::from_secs(5), "the VIP answers HTTP", || {
        http_get(&t.client, vip(), Duration::from_millis(300)).is_ok()
    })?;
    print_status(&lb1);

    say("Traffic: 120 new connections to http://198.18.0.100/ (lb_algo wrr, weights 3:2:1)");
    print_spread(&spread(&t, 120));

    say("Real server rs2 dies (its process is killed)");
    t.lab.kill(pids[1]);
    let t0 = Instant::now();
    eventually(Duration::from_secs(10), "lb1 reports rs2 down", || {
        lb1.status()
            .map(|s| {
                s.to_string().contains("\"address\":\"198.19.0.12:80\"")
                    && s["virtual_servers"][0]["real_servers"][1]["health"] == "down"
            })
            .unwrap_or(false)
    })?;
    println!(
        "   TCP_CHECK (delay_loop 1 s) marked it down after {:.1?}; it left the data plane",
        t0.elapsed()
    );
    print_spread(&spread(&t, 60));

    say("The master dies: kill -9 of lb1 and its links go down, while the client keeps sending");
    // Established connections too: lb1 sends its connections to lb2 (lvs_sync_daemon).
    let mut established = Established::open(&t, 6)?;
    std::thread::sleep(Duration::from_millis(1500));
    let traffic = Traffic::start(&t);
    std::thread::sleep(Duration::from_millis(1000));
    let killed_at = traffic.now();
    t.lab.kill(lb1.pid);
    d1n.ip(&["link", "set", "eth0", "down"])?;
    d1n.ip(&["link", "set", "eth1", "down"])?;
    let t0 = Instant::now();
    eventually(Duration::from_secs(10), "lb2 holds both VIPs", || {
        holds(&d2n, "eth0", VIP_S) && holds(&d2n, "eth1", GW_S)
    })?;
    println!("   lb2 took over both VIPs {:.0?} after the kill (advert_int 1 s: Master_Down_Interval 3.6 s)", t0.elapsed());
    std::thread::sleep(Duration::from_millis(1500));
    let log = traffic.stop();
    let ok = log.iter().filter(|(at, r)| *at > killed_at && r.is_some()).count();
    match longest_failure(&log, killed_at) {
        Some((a, b, n)) => println!("   client: {n} requests failed between +{:.2}s and +{:.2}s after the kill; {ok} succeeded after it", (a - killed_at).as_secs_f64(), (b - killed_at).as_secs_f64()),
        None => println!("   client: no request failed; {ok} succeeded after the kill"),
    }
    println!(
        "   {} of {} keep-alive connections opened through lb1 went on through lb2, each with its real server (connection sync)",
        established.still_served(),
        established.0.len()
    );
    print_status(&lb2);
    print_spread(&spread(&t, 60));

    say("lb1 comes back (links up, daemon restarted): it asks lb2 for its connections, then preempts and takes the VIPs back");
    d1n.ip(&["link", "set", "eth0", "up"])?;
    d1n.ip(&["link", "set", "eth1", "up"])?;
    let lb1 = HaLb::start(
        &mut t.lab,
        &d1n,
        &scratch,
        "lb1-again",
        &director_conf(root, "two-node-master.toml", dataplane)?,
    )?;
    let t0 = Instant::now();
    // (kill -9 left lb1's VIPs on its links; the new daemon removes them at start.)
    eventually(Duration::from_secs(15), "lb1 MASTER with both VIPs again", || {
        lb1.state("VI_PUBLIC").as_deref() == Some("MASTER")
            && lb1.state("VI_GATEWAY").as_deref() == Some("MASTER")
            && holds(&d1n, "eth0", VIP_S)
            && holds(&d1n, "eth1", GW_S)
    })?;
    eventually(Duration::from_secs(5), "lb2 released them", || !holds(&d2n, "eth0", VIP_S))?;
    println!("   lb1 is MASTER again after {:.1?}; lb2 is BACKUP", t0.elapsed());
    println!(
        "   {} of {} keep-alive connections still answered by their real server, now through lb1",
        established.still_served(),
        established.0.len()
    );
    eventually(Duration::from_secs(5), "lb1's checks see rs1 and rs3 up, rs2 down", || {
        lb1.status()
            .map(|s| {
                let h: Vec<String> = s["virtual_servers"][0]["real_servers"]
                    .as_array()
                    .map(|a| {
                        a.iter().map(|r| r["health"].as_str().unwrap_or("").to_string()).collect()
                    })
                    .unwrap_or_default();
                h == ["up", "down", "up"]
            })
            .unwrap_or(false)
    })?;
    println!("   (alpha: lb1's real servers started down; its checks found rs1 and rs3 up, rs2 still dead)");
    eventually(Duration::from_secs(5), "the VIP answers HTTP", || {
        http_get(&t.client, vip(), Duration::from_millis(300)).is_ok()
    })?;
    print_spread(&spread(&t, 60));
    print_status(&lb1);

    if keep {
        hold(&t, &[(&lb1, &d1n), (&lb2, &d2n)], &scratch);
    }

    say("Stopping: SIGTERM to both directors, then the lab is torn down");
    let _ = t.lab.signal(lb1.pid, 15);
    let _ = t.lab.signal(lb2.pid, 15);
    let _ = t.lab.wait(lb1.pid, Duration::from_secs(10));
    let _ = t.lab.wait(lb2.pid, Duration::from_secs(10));
    drop(t);
    drop(scratch);
    println!("   done: no namespace, interface or process of the demo is left");
    Ok(())
}
