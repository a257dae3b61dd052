//! The standard director lab: a client, N directors, M real servers, and a switch namespace
//! holding the bridges that join them.
//!
//! ```text
//!  client 198.18.0.10 ─┐             ┌─ d1 eth0 198.18.0.1   (front, VIP 198.18.0.100)
//!                      ├── front ────┼─ d2 eth0 198.18.0.2
//!  (DR: rsN eth0 198.18.0.1N, VIP on lo)
//!                                    ┌─ d1 eth1 198.19.0.1   (back, NAT gateway VIP 198.19.0.254)
//!  rsN eth0 198.19.0.1N ── back ─────┼─ d2 eth1 198.19.0.2
//! ```
//! NAT: real servers sit on the back segment and route the client network via the gateway VIP
//! (keepalived's classic LVS-NAT layout: a second VRRP instance on the inside, in a sync group
//! with the front one). DR: real servers sit on the front segment with the VIP on `lo`,
//! `arp_ignore=1`, `arp_announce=2`.
//!
//! veth details that bite, handled here: TX checksum offload is off on the client and real
//! servers (socket skbs carry CHECKSUM_PARTIAL, which XDP rewriting loses, so the receiver
//! would see bad L4 checksums); GRO is on at every switch port, because XDP_TX/XDP_REDIRECT
//! into a veth needs NAPI on its peer.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{Lab, Node};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Nat,
    Dr,
}

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const GATEWAY_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 254);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// Port real servers answer HTTP on, and UDP.
pub const HTTP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 5353;

pub struct DirectorLab {
    pub lab: Lab,
    pub mode: Mode,
    pub client: Node,
    pub switch: Node,
    pub directors: Vec<Node>,
    pub real_servers: Vec<Node>,
}

impl DirectorLab {
    /// Builds the lab (no daemons running yet).
    pub fn build(mode: Mode, directors: usize, real_servers: usize) -> Result<DirectorLab> {
        let mut lab = Lab::new()?;
        let switch = lab.node("sw")?;
        let client = lab.node("client")?;
        let mut ds = Vec::new();
        for i in 1..=directors {
            ds.push(lab.node(&format!("d{i}"))?);
        }
        let mut rss = Vec::new();
        for i in 1..=real_servers {
            rss.push(lab.node(&format!("rs{i}"))?);
        }
        let mut front = vec!["c".to_string()];
        let mut back = Vec::new();

        lab.veth(&client, "eth0", &switch, "c")?;
        client.addr("eth0", &format!("{CLIENT}/24"))?;
        tx_offload_off(&client, "eth0")?;

        for (i, d) in ds.iter().enumerate() {
            let n = i + 1;
            lab.veth(d, "eth0", &switch, &format!("d{n}f"))?;
            d.addr("eth0", &format!("198.18.0.{n}/24"))?;
            front.push(format!("d{n}f"));
            d.sysctl("net.ipv4.ip_forward", "1")?;
            for c in ["all", "default", "eth0"] {
                d.sysctl(&format!("net.ipv4.conf.{c}.rp_filter"), "0")?;
            }
            if mode == Mode::Nat {
                lab.veth(d, "eth1", &switch, &format!("d{n}b"))?;
                d.addr("eth1", &format!("198.19.0.{n}/24"))?;
                d.sysctl("net.ipv4.conf.eth1.rp_filter", "0")?;
                back.push(format!("d{n}b"));
            }
        }
        for (i, r) in rss.iter().enumerate() {
            let n = i + 1;
            let port = format!("r{n}");
            lab.veth(r, "eth0", &switch, &port)?;
            tx_offload_off(r, "eth0")?;
            match mode {
                Mode::Nat => {
                    r.addr("eth0", &format!("198.19.0.{}/24", 10 + n))?;
                    // Replies to clients go through the directors' gateway VIP.
                    r.route(&["198.18.0.0/24", "via", &GATEWAY_VIP.to_string()])?;
                    back.push(port);
                }
                Mode::Dr => {
                    r.addr("eth0", &format!("198.18.0.{}/24", 10 + n))?;
                    r.addr("lo", &format!("{VIP}/32"))?;
                    for c in ["all", "eth0"] {
                        r.sysctl(&format!("net.ipv4.conf.{c}.arp_ignore"), "1")?;
                        r.sysctl(&format!("net.ipv4.conf.{c}.arp_announce"), "2")?;
                    }
                    front.push(port);
                }
            }
        }
        let f: Vec<&str> = front.iter().map(String::as_str).collect();
        lab.bridge(&switch, "front", &f)?;
        if !back.is_empty() {
            let b: Vec<&str> = back.iter().map(String::as_str).collect();
            lab.bridge(&switch, "back", &b)?;
        }
        for p in front.iter().chain(back.iter()) {
            switch.exec("ethtool", &["-K", p, "gro", "on"])?;
        }
        Ok(DirectorLab { lab, mode, client, switch, directors: ds, real_servers: rss })
    }

    /// The address real server `i` (0-based) listens on.
    pub fn real_server_addr(&self, i: usize) -> Ipv4Addr {
        match self.mode {
            Mode::Nat => Ipv4Addr::new(198, 19, 0, 11 + i as u8),
            Mode::Dr => Ipv4Addr::new(198, 18, 0, 11 + i as u8),
        }
    }

    /// Starts `hlb-realserver rsN` in every real-server namespace (HTTP on :80, UDP on :5353).
    /// Returns their pids, in order.
    pub fn start_real_servers(&mut self) -> Result<Vec<u32>> {
        let bin = bin_path("hlb-realserver")?;
        let mut pids = Vec::new();
        for i in 0..self.real_servers.len() {
            let node = self.real_servers[i].clone();
            let mut cmd = Command::new(&bin);
            cmd.arg(&node.name)
                .args(["--tcp", &format!("0.0.0.0:{HTTP_PORT}")])
                .args(["--udp", &format!("0.0.0.0:{UDP_PORT}")]);
            pids.push(self.lab.spawn(&node, &mut cmd)?);
        }
        for (i, node) in self.real_servers.iter().enumerate() {
            let addr = SocketAddr::new(self.real_server_addr(i).into(), HTTP_PORT);
            crate::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
                node.run(|| {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
                .ok()
                .filter(|ok| *ok)
            })
            .with_context(|| format!("real server {} did not come up", node.name))?;
        }
        Ok(pids)
    }
}

fn tx_offload_off(node: &Node, dev: &str) -> Result<()> {
    node.exec("ethtool", &["-K", dev, "tx", "off"]).map(|_| ())
}

/// Path of a binary built from this workspace (`target/<profile>/NAME`), found next to the
/// running executable (tests run from `target/<profile>/deps`).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(format!("HLB_BIN_{}", name.replace('-', "_").to_uppercase()))
    {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "binary `{name}` not found near {}: build it first (`cargo build --workspace --all-targets`)",
        exe.display()
    )
}

/// A keep-alive HTTP/1.1 connection from inside a node to a server: several requests, one
/// TCP connection (what a connection-tracking failover must keep).
pub struct KeepAlive {
    r: std::io::BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
    host: String,
}

impl KeepAlive {
    /// Opens one from inside `node` to `addr`; `prepare` runs first, on the thread that
    /// connects (inside the namespace: to pin it to a CPU, say).
    pub fn open(node: &Node, addr: SocketAddr, prepare: fn()) -> Result<KeepAlive> {
        node.run(move || -> Result<KeepAlive> {
            prepare();
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            KeepAlive::over(s, addr)
        })?
    }

    /// One over an open connection to `addr`.
    pub fn over(s: std::net::TcpStream, addr: SocketAddr) -> Result<KeepAlive> {
        // 2 s unless the caller chose (a one-shot request's shorter timeout stays).
        if s.read_timeout()?.is_none() {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
        }
        s.set_nodelay(true)?;
        let host = addr.ip().to_string();
        Ok(KeepAlive { w: s.try_clone()?, r: std::io::BufReader::new(s), host })
    }

    /// One GET on this connection; the body (the lab's real servers answer their name).
    pub fn get(&mut self) -> Result<String> {
        use std::io::{BufRead, Read, Write};
        self.w.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.host).as_bytes())?;
        let mut status = String::new();
        if self.r.read_line(&mut status)? == 0 {
            bail!("connection closed by the peer");
        }
        if !status.starts_with("HTTP/1.1 200") {
            bail!("unexpected status line {status:?}");
        }
        let mut len = None;
        loop {
            let mut h = String::new();
            if self.r.read_line(&mut h)? == 0 {
                bail!("connection closed in the headers");
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = Some(v.trim().parse::<usize>()?);
            }
            if h == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len.context("no Content-Length")?];
        self.r.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

/// One HTTP/1.1 GET from inside `node` to `addr`, on a new connection. Returns the body.
pub fn http_get(node: &Node, addr: SocketAddr, timeout: Duration) -> Result<String> {
    node.run(move || -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let body = text.split("\r\n\r\n").nth(1).context("no HTTP body")?;
        Ok(body.trim().to_string())
    })?
}
