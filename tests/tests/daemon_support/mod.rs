//! Shared setup for the daemon-level lab tests (`daemon_*.rs`): `ha-lb run` on the NAT
//! director lab (`DirectorLab`), configuration text, `ha-lb status --json` accessors, HTTP
//! clients (new connections and keep-alive ones) and a background traffic recorder.
//!
//! Addressing is the lab's (see `ha_lb_lab::topology`): client 198.18.0.10, directors
//! 198.18.0.N (front) / 198.19.0.N (back), VIP 198.18.0.100, gateway VIP 198.19.0.254,
//! real servers 198.19.0.11.. answering HTTP on :80 with their own name.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    topology::{self as lab, bin_path, http_get, DirectorLab, HTTP_PORT, VIP},
    Node,
};

pub const VIP_S: &str = "198.18.0.100";
pub const GW_S: &str = "198.19.0.254";

pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP.into(), HTTP_PORT)
}

/// `198.19.0.1N:80`, the status key of real server N (1-based).
pub fn rs_key(n: usize) -> String {
    format!("198.19.0.{}:80", 10 + n)
}

/// Master_Down_Interval (RFC 5798): 3 × advert_int + Skew_Time.
pub fn master_down_interval(advert_int: Duration, priority: u8) -> Duration {
    advert_int * 3 + advert_int * (256 - priority as u32) / 256
}

/// One director's configuration: the NAT pair layout of `conf/two-node-master.toml`
/// (VI_PUBLIC with the VIP on eth0, VI_GATEWAY with the real servers' gateway on eth1, one
/// sync group), XDP data plane, `services` appended as is. `n` is the director's number
/// (its addresses end in `.n`); `peer` the other director's number, if there is one.
pub fn director_conf(
    n: u8,
    peer: Option<u8>,
    priority: u8,
    advert_int: f64,
    services: &str,
) -> String {
    let unicast = |net: &str| match peer {
        Some(p) => format!("unicast_src_ip = \"{net}.{n}\"\nunicast_peer = [\"{net}.{p}\"]"),
        None => String::new(),
    };
    let (front, back) = (unicast("198.18.0"), unicast("198.19.0"));
    format!(
        r#"[global]
router_id = "lb{n}"
dataplane = "xdp"
control_socket = "{{socket}}"

[[vrrp_instance]]
name = "VI_PUBLIC"
interface = "eth0"
virtual_router_id = 51
priority = {priority}
advert_int = {advert_int}
version = 3
{front}
virtual_ipaddress = ["{VIP_S}/24 dev eth0"]
track_interface = ["eth1"]

[[vrrp_instance]]
name = "VI_GATEWAY"
interface = "eth1"
virtual_router_id = 52
priority = {priority}
advert_int = {advert_int}
version = 3
{back}
virtual_ipaddress = ["{GW_S}/24 dev eth1"]
track_interface = ["eth0"]

[[vrrp_sync_group]]
name = "director"
group = ["VI_PUBLIC", "VI_GATEWAY"]

{services}"#
    )
}

/// `[[virtual_server]]` for VIP:80/TCP, NAT, with `extra` lines (lb_algo, delay_loop, quorum…)
/// and the given real-server blocks.
pub fn virtual_server(extra: &str, real_servers: &[String]) -> String {
    format!(
        "[[virtual_server]]\naddress = \"{VIP_S}\"\nport = 80\nprotocol = \"TCP\"\nlb_kind = \"NAT\"\n{extra}\n\n{}",
        real_servers.join("\n")
    )
}

/// Real server N (1-based, 198.19.0.1N:80) with `weight`, `extra` lines, and a TCP_CHECK
/// (with `check` lines) unless `check` is `None`.
pub fn real_server(n: usize, weight: u32, extra: &str, check: Option<&str>) -> String {
    let mut s = format!(
        "[[virtual_server.real_server]]\naddress = \"198.19.0.{}\"\nport = 80\nweight = {weight}\n{extra}\n",
        10 + n
    );
    if let Some(c) = check {
        s += &format!("[virtual_server.real_server.TCP_CHECK]\nconnect_timeout = 0.5\n{c}\n");
    }
    s
}

/// Starts `hlb-realserver NAME` answering HTTP on `port` in `node`; returns its pid once it
/// accepts connections (it is killed with the lab, or earlier with `Lab::kill`).
pub fn spawn_real_server(t: &mut DirectorLab, idx: usize, name: &str, port: u16) -> u32 {
    let node = t.real_servers[idx].clone();
    let mut cmd = Command::new(bin_path("hlb-realserver").unwrap());
    cmd.arg(name).args(["--tcp", &format!("0.0.0.0:{port}")]);
    let pid = t.lab.spawn(&node, &mut cmd).unwrap();
    let addr = SocketAddr::new(t.real_server_addr(idx).into(), port);
    eventually(Duration::from_secs(5), &format!("{name} listening on {addr}"), || {
        node.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
            .unwrap_or(false)
    })
    .unwrap();
    pid
}

/// One director (d1) running `services`, serving once this returns.
pub fn single_director(t: &mut DirectorLab, s: &Scratch, services: &str) -> HaLb {
    let n = t.directors[0].clone();
    let d =
        HaLb::start(&mut t.lab, &n, s, "d1", &director_conf(1, None, 150, 0.1, services)).unwrap();
    wait_master_serving(t, &d);
    d
}

/// The names that answered, sorted.
pub fn names(m: &BTreeMap<String, usize>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

/// VRRP state changes the daemon logged so far (a reload must add none).
pub fn state_changes(d: &HaLb) -> usize {
    d.log_text().lines().filter(|l| l.contains("ha_lb::vrrp::instance: VRRP state change")).count()
}

// ---- status ----

/// The first virtual server's entry in a status document.
pub fn vs0(st: &serde_json::Value) -> &serde_json::Value {
    &st["virtual_servers"][0]
}

/// The (non-sorry) real server `addr` of the first virtual server, if listed.
pub fn rs_status<'a>(st: &'a serde_json::Value, addr: &str) -> Option<&'a serde_json::Value> {
    vs0(st)["real_servers"]
        .as_array()?
        .iter()
        .find(|r| r["address"] == addr && r["sorry_server"] == false)
}

/// (health, weight in the data plane) of real server `addr`, if the daemon answers.
pub fn health_weight(d: &HaLb, addr: &str) -> Option<(String, u64)> {
    let st = d.status().ok()?;
    let r = rs_status(&st, addr)?;
    Some((r["health"].as_str()?.to_string(), r["weight"].as_u64()?))
}

/// Addresses of the first virtual server's real servers, in status order.
pub fn listed(st: &serde_json::Value) -> Vec<String> {
    vs0(st)["real_servers"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["address"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub fn counter(d: &HaLb, key: &str) -> Option<u64> {
    d.status().ok()?[key].as_u64()
}

/// Whether `node` holds both VIPs: the VIP on eth0 and the real servers' gateway on eth1.
pub fn holds_both_vips(node: &Node) -> bool {
    holds(node, "eth0", VIP_S) && holds(node, "eth1", GW_S)
}

/// Waits (bounded) for `d` to own both VIPs and the VIP to answer HTTP.
pub fn wait_master_serving(t: &DirectorLab, d: &HaLb) {
    eventually(Duration::from_secs(10), &format!("{} holds both VIPs", d.node.name), || {
        holds_both_vips(&d.node)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    eventually(Duration::from_secs(5), "the VIP answers HTTP", || {
        http_get(&t.client, vip(), Duration::from_millis(300)).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
}

/// Crashes director `d`: `kill -9`, then both its links down.
pub fn crash(t: &mut DirectorLab, d: &HaLb) {
    t.lab.kill(d.pid);
    d.node.ip(&["link", "set", "eth0", "down"]).unwrap();
    d.node.ip(&["link", "set", "eth1", "down"]).unwrap();
}

// ---- clients ----

/// Pins the calling thread to CPU 0. The XDP program then runs on CPU 0 for this thread's
/// packets (veth delivers on the sending CPU), so the per-CPU wrr cursor is one cursor and
/// weight ratios are exact.
pub fn pin_to_cpu0() {
    // SAFETY: plain sched_setaffinity on the calling thread with a valid cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `n` GETs from the client to the VIP, each on a new connection (from a thread pinned to
/// CPU 0); answers counted by real-server name, failures under `"(failed)"`.
pub fn spread(client: &Node, n: usize) -> BTreeMap<String, usize> {
    spread_to(client, vip(), n)
}

/// [`spread`] to another address and port.
pub fn spread_to(client: &Node, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    client
        .run(move || {
            pin_to_cpu0();
            let mut m = BTreeMap::new();
            for _ in 0..n {
                let who =
                    get_once(to, Duration::from_millis(1000)).unwrap_or_else(|_| "(failed)".into());
                *m.entry(who).or_insert(0) += 1;
            }
            m
        })
        .unwrap()
}

/// One GET on a new connection, from the calling thread's namespace. Returns the body.
fn get_once(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    lab::KeepAlive::over(s, addr)?.get()
}

/// Each keep-alive connection in `conns` is still answered by the real server that answered
/// it before (`names`, in the same order); `when` and `log` for the message.
pub fn still_served(
    conns: &mut [KeepAlive],
    names: &[String],
    when: &str,
    log: &dyn Fn() -> String,
) {
    for (i, (c, before)) in conns.iter_mut().zip(names).enumerate() {
        // The first request after a takeover may need TCP's retransmission.
        let mut got = c.get();
        for _ in 0..3 {
            if got.is_ok() {
                break;
            }
            got = c.get();
        }
        assert_eq!(
            got.as_deref().ok(),
            Some(before.as_str()),
            "connection {i} (was on {before}) {when}: {got:?}\n{}",
            log()
        );
    }
}

/// Asserts that `names` (the real servers that answered) are spread over `servers` distinct
/// real servers (round robin).
pub fn assert_spread(names: &[String], servers: usize) {
    let mut distinct = names.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), servers, "round robin spread them: {names:?}");
}

/// `n` keep-alive connections from the client to the VIP, and the real server that answered
/// each one's first request; asserts they are spread over `servers` real servers.
pub fn open_spread(client: &Node, n: usize, servers: usize) -> (Vec<KeepAlive>, Vec<String>) {
    let mut conns: Vec<KeepAlive> = (0..n).map(|_| KeepAlive::open(client).unwrap()).collect();
    let names: Vec<String> = conns.iter_mut().map(|c| c.get().unwrap()).collect();
    assert_spread(&names, servers);
    (conns, names)
}

/// Six more client addresses on the client's front link, 198.18.0.41–46 (the lab's own
/// addresses end in .1, .2, .10, .1N and .100), for persistence tests.
pub fn more_client_addresses(client: &Node) -> Vec<std::net::IpAddr> {
    let clients: Vec<std::net::IpAddr> =
        (41..47).map(|n| format!("198.18.0.{n}").parse().unwrap()).collect();
    for c in &clients {
        client.addr("eth0", &format!("{c}/24")).unwrap();
    }
    clients
}

/// One GET on a new connection from `src` (an address of the client node) to the VIP: the
/// answering real server's name.
pub fn get_from(client: &Node, src: std::net::IpAddr) -> Result<String> {
    client.run(move || -> Result<String> {
        pin_to_cpu0();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        s.connect_timeout(&vip().into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        lab::KeepAlive::over(s.into(), vip())?.get()
    })?
}

/// A new connection from each of `clients`, in the reverse order (so that a scheduler
/// deciding afresh cannot give each its earlier real server by chance), each tried up to
/// four times (the first after a takeover may need TCP's retransmission): the answering
/// real servers, in `clients`' order (`(failed: …)` for one that never answered).
pub fn new_connections_reversed(client: &Node, clients: &[std::net::IpAddr]) -> Vec<String> {
    let mut after = vec![String::new(); clients.len()];
    for (i, &c) in clients.iter().enumerate().rev() {
        let mut got = get_from(client, c);
        for _ in 0..3 {
            if got.is_ok() {
                break;
            }
            got = get_from(client, c);
        }
        after[i] = got.unwrap_or_else(|e| format!("(failed: {e})"));
    }
    after
}

/// A keep-alive HTTP/1.1 connection from the client to the VIP (`ha_lb_lab`'s, opened on
/// CPU 0, see [`pin_to_cpu0`]).
pub struct KeepAlive(lab::KeepAlive);

impl KeepAlive {
    pub fn open(client: &Node) -> Result<KeepAlive> {
        lab::KeepAlive::open(client, vip(), pin_to_cpu0).map(KeepAlive)
    }

    /// Opens keep-alive connections until one is answered by `want` (at most 20 tries).
    pub fn open_to(client: &Node, want: &str) -> KeepAlive {
        for _ in 0..20 {
            let mut c = KeepAlive::open(client).unwrap();
            if c.get().unwrap() == want {
                return c;
            }
        }
        panic!("no connection landed on {want} in 20 tries");
    }

    /// One GET on this connection; the answering real server's name.
    pub fn get(&mut self) -> Result<String> {
        self.0.get()
    }
}

/// One request of a [`Traffic`] run: when it started (since the run's start), how long it
/// took, and the answering real server or the error.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: Duration,
    pub took: Duration,
    pub result: Result<String, String>,
}

/// Client traffic in the background: a new connection every `every` (or as soon as the
/// previous one ended), each with `timeout`.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Request>>>,
    handle: std::thread::JoinHandle<()>,
    pub t0: Instant,
}

impl Traffic {
    pub fn start(client: &Node, every: Duration, timeout: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s2, l2) = (stop.clone(), log.clone());
        let path = format!("/run/netns/{}", client.ns);
        let t0 = Instant::now();
        let handle = std::thread::spawn(move || {
            ha_lb_lab::netns::enter(&path).unwrap();
            let deadline = t0 + Duration::from_secs(40);
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let at = t0.elapsed();
                let result = get_once(vip(), timeout).map_err(|e| e.to_string());
                let took = t0.elapsed() - at;
                l2.lock().unwrap().push(Request { at, took, result });
                std::thread::sleep(every.saturating_sub(took));
            }
        });
        Traffic { stop, log, handle, t0 }
    }

    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn stop(self) -> Vec<Request> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        Arc::try_unwrap(self.log).unwrap().into_inner().unwrap()
    }
}

/// Compact rendering of a request log around failures, for assertion messages.
pub fn describe(log: &[Request]) -> String {
    let mut out = String::new();
    for r in log {
        out += &format!(
            "  +{:>7.3}s {:>5}ms {}\n",
            r.at.as_secs_f64(),
            r.took.as_millis(),
            match &r.result {
                Ok(w) => w.clone(),
                Err(e) => format!("FAILED: {e}"),
            }
        );
    }
    out
}

/// `ip -n NS link show DEV` mentions an XDP program.
pub fn has_xdp(node: &Node, dev: &str) -> bool {
    let s = node.sh(&format!("ip link show {dev}")).unwrap();
    s.contains("xdp") || s.contains("prog/xdp")
}
