//! Helpers shared by `vrrp_failover`, `vrrp_interop` and `vrrp_hostile`: configs for ha-lb and
//! keepalived, killing a "host", status counters, and timestamped observation of the lab
//! (frames on a wire, VIP add/remove events on a director).
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ha_lb::vrrp::machine::{master_down_interval, skew_time};
use ha_lb::vrrp::packet::Version;
use ha_lb_lab::{
    daemon::{holds, HaLb},
    packet::PacketSocket,
    Lab, Node,
};

pub const V: &str = "198.18.0.100";
pub const VRID: u8 = 51;
/// A lab address no director or client uses: the rogue's claimed source.
pub const ROGUE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
pub const MCAST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
pub const MCAST_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12];
/// A lab address toggled on a node's `lo` to know an address monitor is listening.
const MARKER: &str = "198.18.255.254";

/// Director `n`'s (1-based) front address.
pub fn dir_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n as u8)
}

/// One `[[vrrp_instance]]` named VI_1 on eth0, VRID 51, VIP 198.18.0.100/24.
#[derive(Clone, Debug)]
pub struct Inst {
    pub version: u8,
    pub priority: u8,
    /// Seconds.
    pub advert_int: f64,
    /// `Some((src, peers))`: unicast.
    pub unicast: Option<(Ipv4Addr, Vec<Ipv4Addr>)>,
    /// Extra instance keys (TOML lines) for ha-lb.
    pub extra: String,
    /// Extra top-level tables appended after the instance (e.g. `[[vrrp_script]]`).
    pub tables: String,
}

impl Inst {
    pub fn new(version: u8, priority: u8, advert_int: f64) -> Inst {
        Inst {
            version,
            priority,
            advert_int,
            unicast: None,
            extra: String::new(),
            tables: String::new(),
        }
    }
    pub fn unicast(mut self, src: Ipv4Addr, peers: &[Ipv4Addr]) -> Inst {
        self.unicast = Some((src, peers.to_vec()));
        self
    }
    pub fn extra(mut self, lines: &str) -> Inst {
        self.extra.push_str(lines);
        self.extra.push('\n');
        self
    }
    pub fn tables(mut self, t: &str) -> Inst {
        self.tables.push_str(t);
        self.tables.push('\n');
        self
    }
    fn version_enum(&self) -> Version {
        if self.version == 2 {
            Version::V2
        } else {
            Version::V3
        }
    }
    pub fn advert_cs(&self) -> u16 {
        (self.advert_int * 100.0).round() as u16
    }
    /// RFC Master_Down_Interval of a node with this config's priority.
    pub fn mdi(&self) -> Duration {
        master_down_interval(self.version_enum(), self.priority, self.advert_cs())
    }
    /// RFC Skew_Time of a node with this config's priority.
    pub fn skew(&self) -> Duration {
        skew_time(self.version_enum(), self.priority, self.advert_cs())
    }

    /// ha-lb's TOML.
    pub fn halb(&self, router: &str) -> String {
        let mut s = format!(
            "[global]\nrouter_id = \"{router}\"\ndataplane = \"none\"\ncontrol_socket = \"{{socket}}\"\n\n\
             [[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = {VRID}\n\
             version = {}\npriority = {}\nadvert_int = {}\nvirtual_ipaddress = [\"{V}/24\"]\n",
            self.version, self.priority, self.advert_int
        );
        if let Some((src, peers)) = &self.unicast {
            let p: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
            s.push_str(&format!("unicast_src_ip = \"{src}\"\nunicast_peer = [{}]\n", p.join(", ")));
        }
        s.push_str(&self.extra);
        s.push('\n');
        s.push_str(&self.tables);
        s
    }

    /// keepalived.conf with the same instance (`extra`/`tables` are ha-lb only).
    pub fn keepalived(&self, router: &str) -> String {
        let mut s = format!(
            "global_defs {{\n  router_id {router}\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {VRID}\n  \
             version {}\n  priority {}\n  advert_int {}\n  virtual_ipaddress {{\n    {V}/24\n  }}\n",
            self.version, self.priority, self.advert_int
        );
        if let Some((src, peers)) = &self.unicast {
            s.push_str(&format!("  unicast_src_ip {src}\n  unicast_peer {{\n"));
            for p in peers {
                s.push_str(&format!("    {p}\n"));
            }
            s.push_str("  }\n");
        }
        s.push_str("}\n");
        s
    }
}

/// The instance's counters from `ha-lb status --json` (empty if the daemon does not answer).
pub fn counters(d: &HaLb) -> BTreeMap<String, u64> {
    let Ok(s) = d.status() else { return BTreeMap::new() };
    let Some(i) =
        s["vrrp_instances"].as_array().and_then(|a| a.iter().find(|i| i["name"] == "VI_1"))
    else {
        return BTreeMap::new();
    };
    i["counters"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

pub fn counter(d: &HaLb, name: &str) -> u64 {
    counters(d).get(name).copied().unwrap_or(0)
}

/// The XDP VRRP filter's counters from `ha-lb status --json`.
pub fn filter(d: &HaLb) -> BTreeMap<String, u64> {
    let Ok(s) = d.status() else { return BTreeMap::new() };
    s["vrrp_filter"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

/// `ha-lb status` field of VI_1 (e.g. "effective_priority").
pub fn field(d: &HaLb, name: &str) -> serde_json::Value {
    d.status()
        .ok()
        .and_then(|s| {
            s["vrrp_instances"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["name"] == "VI_1"))
                .map(|i| i[name].clone())
        })
        .unwrap_or(serde_json::Value::Null)
}

/// A dead host: SIGKILL every process in the node's namespace (keepalived forks a VRRP
/// child), reap the one the lab spawned, then take the link down.
pub fn kill_host(lab: &mut Lab, node: &Node, pid: u32) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", &node.ns]).output() {
        for p in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(p) = p.parse::<i32>() {
                if p as u32 != pid {
                    // SAFETY: plain kill(2) of a process inside our own lab namespace.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
    }
    lab.kill(pid);
    node.ip(&["link", "set", "eth0", "down"]).unwrap();
}

/// Every process in the namespace has exited (keepalived's VRRP child included).
pub fn namespace_empty(node: &Node) -> bool {
    Command::new("ip")
        .args(["netns", "pids", &node.ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().is_empty())
        .unwrap_or(false)
}

/// How a node held the VIP over a sampling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Always,
    Never,
    Sometimes,
}
pub use Held::{Always, Never};

/// Samples `holds(node, eth0, VIP)` on every node every 50 ms for `d`.
pub fn hold_pattern(nodes: &[&Node], d: Duration) -> Vec<Held> {
    let mut any = vec![false; nodes.len()];
    let mut all = vec![true; nodes.len()];
    let end = Instant::now() + d;
    while Instant::now() < end {
        for (i, n) in nodes.iter().enumerate() {
            let h = holds(n, "eth0", V);
            any[i] |= h;
            all[i] &= h;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    any.iter()
        .zip(&all)
        .map(|(a, l)| match (a, l) {
            (_, true) => Always,
            (false, _) => Never,
            _ => Held::Sometimes,
        })
        .collect()
}

/// Timestamped frames seen on an interface, captured on a thread.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(Instant, Vec<u8>)>>,
}

impl Capture {
    /// Starts capturing on `dev` in `node` (only frames that `keep` accepts are stored).
    pub fn start(node: &Node, dev: &str, keep: fn(&[u8]) -> bool) -> Capture {
        let dev = dev.to_string();
        let sock = node.run(move || PacketSocket::open(&dev)).unwrap().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(Some(f)) = sock.recv(Duration::from_millis(20)) {
                    let t = Instant::now();
                    if keep(&f) {
                        out.push((t, f));
                    }
                }
            }
            out
        });
        Capture { stop, handle }
    }

    pub fn stop(self) -> Vec<(Instant, Vec<u8>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// A VRRP advert in an Ethernet frame: (IP source, version, VRID, priority).
pub fn vrrp_of(f: &[u8]) -> Option<(Ipv4Addr, u8, u8, u8)> {
    if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 112 {
        return None;
    }
    let ihl = (f[14] & 0x0f) as usize * 4;
    let v = f.get(14 + ihl..14 + ihl + 8)?;
    let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    Some((src, v[0] >> 4, v[1], v[2]))
}

pub fn is_vrrp(f: &[u8]) -> bool {
    vrrp_of(f).is_some()
}

/// A gratuitous ARP for the VIP: the sender's MAC.
pub fn garp_of(f: &[u8]) -> Option<[u8; 6]> {
    let vip: Ipv4Addr = V.parse().unwrap();
    (f.len() >= 42
        && f[12..14] == [0x08, 0x06]
        && f[28..32] == vip.octets()
        && f[38..42] == vip.octets())
    .then(|| f[22..28].try_into().unwrap())
}

pub fn is_vrrp_or_garp(f: &[u8]) -> bool {
    is_vrrp(f) || garp_of(f).is_some()
}

/// VIP add/remove events on one node's eth0, from `ip -ts monitor address`. Times are the
/// monitor process's own wall-clock stamps (taken when the kernel's notification woke it, so
/// events seen by two monitors compare without our threads' scheduling jitter), mapped onto
/// `Instant`.
pub struct AddrWatch {
    child: Child,
    events: Arc<Mutex<Vec<(Instant, bool)>>>,
}

/// "2026-11-22T09:30:20.653600" (UTC) → seconds since the epoch.
fn parse_ts(ts: &str) -> Option<f64> {
    let (date, time) = ts.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<f64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    // Days from civil (H. Hinnant).
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days as f64 * 86400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2])
}

impl AddrWatch {
    pub fn start(node: &Node) -> AddrWatch {
        let mut cmd = Command::new("ip");
        cmd.args(["-ts", "-n", &node.ns, "monitor", "address"]).env("TZ", "UTC");
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("ip monitor");
        let out = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let subscribed = Arc::new(AtomicBool::new(false));
        let sub = subscribed.clone();
        let (ref_wall, ref_mono) = (
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64(),
            Instant::now(),
        );
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains(&format!(" {MARKER}/")) {
                    sub.store(true, Ordering::Relaxed);
                }
                if !line.contains(&format!(" {V}/")) || !line.contains(" eth0 ") {
                    continue;
                }
                let Some((ts, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] "))
                else {
                    continue;
                };
                let Some(wall) = parse_ts(ts) else { continue };
                let off = Duration::from_secs_f64((wall - ref_wall).abs());
                let at = if wall >= ref_wall { ref_mono + off } else { ref_mono - off };
                ev.lock().unwrap().push((at, !rest.starts_with("Deleted")));
            }
        });
        // Wait until the monitor is subscribed (a loaded machine can take a while to start
        // it): toggle a marker address on the node's lo until the monitor reports it.
        let marker = format!("{MARKER}/32");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !subscribed.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "ip monitor did not subscribe in 5 s");
            let _ = node.ip(&["addr", "add", &marker, "dev", "lo"]);
            std::thread::sleep(Duration::from_millis(30));
            let _ = node.ip(&["addr", "del", &marker, "dev", "lo"]);
        }
        AddrWatch { child, events }
    }

    /// (time, added?) events so far.
    pub fn events(&self) -> Vec<(Instant, bool)> {
        self.events.lock().unwrap().clone()
    }

    /// First time the VIP was added at or after `after`. Waits up to 2 s for the event (the
    /// address can be visible to `ip addr` before the monitor's line was read).
    pub fn added_after(&self, after: Instant) -> Option<Instant> {
        self.first(after, true)
    }

    pub fn removed_after(&self, after: Instant) -> Option<Instant> {
        self.first(after, false)
    }

    fn first(&self, after: Instant, added: bool) -> Option<Instant> {
        ha_lb_lab::wait_for(Duration::from_secs(2), Duration::from_millis(10), || {
            self.events().into_iter().find(|(t, a)| *a == added && *t >= after).map(|(t, _)| t)
        })
    }
}

impl Drop for AddrWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// keepalived log lines that point at a protocol problem. ("received lower priority (N)
/// advert … - discarding" is not one: it is a preempting backup's normal log line.)
pub fn keepalived_protocol_errors(log: &str) -> Vec<String> {
    const WORDS: [&str; 8] =
        ["bad", "invalid", "checksum", "error", "mismatch", "wrong", "malformed", "unknown"];
    log.lines()
        .filter(|l| {
            // Words, not addresses: a link-local address such as fe80::…:bad3 is no complaint.
            l.split_whitespace()
                .filter(|t| !t.contains(':') && !t.chars().any(|c| c.is_ascii_digit()))
                .any(|t| WORDS.iter().any(|w| t.to_ascii_lowercase().contains(w)))
        })
        .map(String::from)
        .collect()
}

pub fn ip4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
