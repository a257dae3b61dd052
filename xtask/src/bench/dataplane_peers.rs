//! The peers of the data-plane bench and the load tools: nftables DNAT with `numgen`,
//! HAProxy in TCP mode, nginx real servers, wrk and iperf3 (configs and output parsing).

use std::path::Path;

use anyhow::{bail, Context, Result};
use ha_lb_lab::benchtopo::{BenchTopo, REAL_SERVERS, VIP};

/// Debian packages the bench drives.
pub const APT_PEERS: &[&str] = &["nftables", "haproxy", "nginx-light", "wrk", "iperf3", "ethtool"];

/// UDP port of the small-packet service.
pub const UDP_PORT: u16 = 7777;
pub const HTTP_PORT: u16 = 80;
pub const IPERF_PORT: u16 = 5201;

/// Installs the peers that are missing (apt), like `cargo xtask setup` does.
pub fn install_missing() -> Result<()> {
    crate::toolchain::apt_install("bench dataplane", APT_PEERS)
}

fn rs_map() -> String {
    (0..REAL_SERVERS)
        .map(|i| format!("{i} : {}", BenchTopo::rs_addr(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// nftables: stateful DNAT of the VIP's services to the real servers, a new flow's server
/// chosen by `numgen inc` (round robin), replies un-NATed by conntrack. iperf3 goes to one
/// server (its control and data connections must meet).
pub fn nft_ruleset() -> String {
    let m = rs_map();
    format!(
        "table ip hlb_bench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   ip daddr {VIP} tcp dport {HTTP_PORT} dnat to numgen inc mod {REAL_SERVERS} map {{ {m} }}\n\
         \x20   ip daddr {VIP} udp dport {UDP_PORT} dnat to numgen inc mod {REAL_SERVERS} map {{ {m} }}\n\
         \x20   ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {rs1}\n  }}\n}}\n",
        rs1 = BenchTopo::rs_addr(0)
    )
}

/// HAProxy in TCP mode, one thread (pinned with the director), round robin.
pub fn haproxy_conf() -> String {
    let servers: String = (0..REAL_SERVERS)
        .map(|i| format!("  server rs{} {}:{HTTP_PORT}\n", i + 1, BenchTopo::rs_addr(i)))
        .collect();
    format!(
        "global\n  nbthread 1\n  maxconn 8000\n\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\n\
         frontend http\n  bind {VIP}:{HTTP_PORT}\n  default_backend rs\n\n\
         backend rs\n  balance roundrobin\n{servers}\n\
         frontend iperf\n  bind {VIP}:{IPERF_PORT}\n  default_backend iperf\n\n\
         backend iperf\n  server rs1 {}:{IPERF_PORT}\n",
        BenchTopo::rs_addr(0)
    )
}

/// nginx as a real server: one worker, no logs, a fixed body naming the server.
pub fn nginx_conf(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/{name}.pid;\n\
         error_log {d}/{name}.nginx.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 60s;\n\
         \x20 client_body_temp_path {d}/{name}.body;\n  proxy_temp_path {d}/{name}.proxy;\n\
         \x20 fastcgi_temp_path {d}/{name}.fcgi;\n\
         \x20 server {{\n    listen {HTTP_PORT} reuseport;\n    location / {{ return 200 \"{name}\\n\"; }}\n  }}\n}}\n"
    )
}

/// What one wrk run reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct WrkResult {
    pub requests_per_s: f64,
    pub requests: u64,
    /// Socket errors + non-2xx responses.
    pub errors: u64,
}

pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    for l in out.lines() {
        let l = l.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.requests_per_s = v.trim().parse().context("wrk Requests/sec")?;
        } else if l.contains("requests in") {
            r.requests = l.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
                .sum::<u64>();
        }
    }
    if r.requests_per_s <= 0.0 {
        bail!("wrk reported no requests:\n{out}");
    }
    Ok(r)
}

/// Received throughput (bit/s) from `iperf3 -J` output.
pub fn parse_iperf3(json: &str) -> Result<f64> {
    // Avoid a JSON dependency in xtask: find "sum_received" then its bits_per_second.
    let at = json.find("\"sum_received\"").context("iperf3: no sum_received (did it fail?)")?;
    let rest = &json[at..];
    let k = rest.find("\"bits_per_second\"").context("iperf3: no bits_per_second")?;
    let v = rest[k + "\"bits_per_second\"".len()..]
        .trim_start_matches([':', ' ', '\t', '\n'])
        .split([',', '\n', '}'])
        .next()
        .unwrap_or("")
        .trim();
    v.parse().with_context(|| format!("iperf3 bits_per_second {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 3s test @ http://198.18.1.100/\n  1 threads and 32 connections\n\
                   \x20 120000 requests in 3.00s, 20.00MB read\n\
                   \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
                   \x20 Non-2xx or 3xx responses: 4\nRequests/sec:  40000.12\nTransfer/sec: 6.6MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 120000);
        assert_eq!(r.errors, 7);
        assert!((r.requests_per_s - 40000.12).abs() < 1e-6);
    }

    #[test]
    fn iperf3_json_parses() {
        let j = r#"{"end": {"sum_sent": {"bits_per_second": 2.0e9}, "sum_received": {"bytes": 1, "bits_per_second": 1.5e9, "sender": true}}}"#;
        assert_eq!(parse_iperf3(j).unwrap(), 1.5e9);
    }

    #[test]
    fn nft_ruleset_names_every_real_server() {
        let r = nft_ruleset();
        assert!(r.contains("numgen inc mod 2 map { 0 : 198.19.1.11, 1 : 198.19.2.12 }"), "{r}");
    }
}
