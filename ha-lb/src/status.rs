//! What `ha-lb status` shows: VRRP instances, virtual servers and their real servers, the
//! forwarding program's frames per reason, and the VRRP filter's counters. One serialisable model; `--json` prints it as is, the default
//! rendering is a table in the spirit of `ipvsadm -Ln --stats`.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub router_id: Option<String>,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config_file: String,
    /// `xdp`, `tc`, `ipvs` or `none`.
    pub dataplane: String,
    /// Reloads applied / rejected since start.
    pub reloads: u64,
    pub reloads_rejected: u64,
    /// Scripts of the running configuration that cannot be run (the sentence for each):
    /// tracked ones are disabled, as keepalived does (see `ha-lb check --host`).
    #[serde(default)]
    pub scripts_not_runnable: Vec<String>,
    pub vrrp_instances: Vec<InstanceStatus>,
    pub virtual_servers: Vec<VirtualServerStatus>,
    /// VRRP fast-path filter counters (name -> value), summed over interfaces.
    pub vrrp_filter: BTreeMap<String, u64>,
    /// The forwarding program's frames per reason (forwarded, passed, dropped and why), the
    /// ones seen so far (dataplane `xdp` or `tc`).
    #[serde(default)]
    pub forwarding: BTreeMap<String, u64>,
    /// The forwarding program's flow cache: `hits` (packets sent without a
    /// connection-tracking lookup) and `fills` (slots the full path (re)filled after a send).
    #[serde(default)]
    pub flow_cache: BTreeMap<String, u64>,
    /// Connection sync (`lvs_sync_daemon`) counters: datagrams, connections and persistence
    /// templates sent, imported, rejected. JSON key `lvs_sync_daemon`, as the configuration
    /// key (`lvs_sync` before: still read).
    #[serde(default, rename = "lvs_sync_daemon", alias = "lvs_sync")]
    pub lvs_sync: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub version: u8,
    /// `INIT`, `BACKUP`, `MASTER`, `FAULT`, `STOPPING` (handing over: priority 0 sent,
    /// still serving until the new master takes over), `RESTART` (a reload changed it; the
    /// old run is ending) or `STOP` (not running: see `start_error`).
    pub state: String,
    pub priority: u8,
    pub effective_priority: u8,
    /// Address of the current master, when known.
    pub master: Option<String>,
    pub virtual_ipaddress: Vec<String>,
    /// Why the instance is held in FAULT (a tracked interface, script or file, or its sync
    /// group), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_reason: Option<String>,
    /// Held with the instance like its VIPs, not advertised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ipaddress_excluded: Vec<String>,
    pub sync_group: Option<String>,
    /// A sync group member in BACKUP that would be MASTER: the members its group waits for
    /// (neither MASTER nor ready). The group becomes MASTER only when every member would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_group_waits_for: Option<Vec<String>>,
    /// Why it last failed to start, while it is not running (a reload or restart could not
    /// start it; it is tried again every 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
    /// Protocol counters: adverts sent/received, rejected per reason, …
    pub counters: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VirtualServerStatus {
    /// The virtual server's name, as the logs give it: `198.18.0.100:80 TCP` (`address` and
    /// `protocol` together: a TCP and a UDP service may share an address and port).
    #[serde(default)]
    pub name: String,
    /// `ADDRESS:PORT`.
    pub address: String,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// The `virtual_server_group` it is a member of (its real servers' health is the
    /// group's: checked once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub lb_algo: String,
    pub lb_kind: String,
    pub persistence_timeout: Option<u64>,
    /// False while fewer real servers are up than `quorum` (the service is then down).
    pub quorum_met: bool,
    /// True while the sorry server takes the traffic.
    pub sorry_server_active: bool,
    pub real_servers: Vec<RealServerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RealServerStatus {
    pub address: String,
    /// Weight in the data plane now (0 when inhibited or draining).
    pub weight: u32,
    pub configured_weight: u32,
    /// `up` or `down` as its checks say (before their first result: `up`, or `down` with
    /// `alpha`, as keepalived starts them), `unchecked` (no check), or `sorry` (the sorry
    /// server).
    pub health: String,
    /// While `health` is `down` by a check's verdict: the check result that took it down
    /// (as the log's `real server health changed … reason`), e.g. `HTTP status 200 on
    /// /health not in 204`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    pub active_conns: u64,
    /// IPVS's InActConn; `null` where the data plane does not count them (XDP, TC).
    pub inactive_conns: Option<u64>,
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub sorry_server: bool,
}

/// A real server's `health` word: `unchecked` when it has no check; else `up` or `down` as
/// its checks say — before their first result, the start state: `up`, or `down` with
/// `alpha` (keepalived's; checkers report changes only, so a server that starts up and
/// passes is never reported, and "no result yet" cannot be told from "passing").
pub fn real_server_health(has_check: bool, h: Option<&crate::reconcile::Health>) -> &'static str {
    match h {
        _ if !has_check => "unchecked",
        Some(h) if h.up => "up",
        _ => "down",
    }
}

fn lb_kind_short(kind: &str) -> &str {
    // ipvsadm's column words.
    match kind {
        "NAT" => "Masq",
        "DR" => "Route",
        "TUN" => "Tunnel",
        k => k,
    }
}

/// The human-readable rendering.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "ha-lb pid {}  up {}s  dataplane {}  config {}  reloads: {} applied, {} rejected",
        s.pid, s.uptime_secs, s.dataplane, s.config_file, s.reloads, s.reloads_rejected
    );
    for m in &s.scripts_not_runnable {
        let _ = writeln!(o, "  ! {m}");
    }
    let _ = writeln!(o, "\nVRRP instances");
    if s.vrrp_instances.is_empty() {
        let _ = writeln!(o, "  (none)");
    } else {
        let _ = writeln!(
            o,
            "  {:<12} {:<10} {:>4} {:>3} {:<7} {:>4} {:>9} {:<26} VIRTUAL_IPADDRESS",
            "NAME", "INTERFACE", "VRID", "VER", "STATE", "PRIO", "EFFECTIVE", "MASTER"
        );
        for i in &s.vrrp_instances {
            let _ = writeln!(
                o,
                "  {:<12} {:<10} {:>4} {:>3} {:<7} {:>4} {:>9} {:<26} {}",
                i.name,
                i.interface,
                i.virtual_router_id,
                i.version,
                i.state,
                i.priority,
                i.effective_priority,
                i.master.as_deref().unwrap_or("-"),
                i.virtual_ipaddress
                    .iter()
                    .cloned()
                    .chain(i.virtual_ipaddress_excluded.iter().map(|v| format!("{v} (excluded)")))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    for i in s.vrrp_instances.iter() {
        if let Some(r) = &i.fault_reason {
            let _ = writeln!(o, "  {} is held in FAULT by: {r}", i.name);
        }
        if let Some(e) = &i.start_error {
            let _ = writeln!(o, "  {} could not start (tried again every 5 s): {e}", i.name);
        }
        if let Some(w) = i.sync_group_waits_for.as_ref().filter(|w| !w.is_empty()) {
            let _ = writeln!(
                o,
                "  {} is ready to be MASTER; sync group {} waits for: {}",
                i.name,
                i.sync_group.as_deref().unwrap_or("-"),
                w.join(", ")
            );
        }
    }
    let _ = writeln!(o, "\nVirtual servers");
    if s.virtual_servers.is_empty() {
        let _ = writeln!(o, "  (none)");
    } else {
        let _ = writeln!(o, "  Prot LocalAddress:Port Scheduler Flags");
        let _ = writeln!(
            o,
            "    -> {:<28} {:<7} {:>6} {:>6} {:>10} {:>9} {:>9} {:>8} {:>10}",
            "RemoteAddress:Port",
            "Forward",
            "Weight",
            "Health",
            "ActiveConn",
            "InActConn",
            "Conns",
            "Packets",
            "Bytes"
        );
        for v in &s.virtual_servers {
            let mut flags = Vec::new();
            if let Some(t) = v.persistence_timeout {
                flags.push(format!("persistent {t}"));
            }
            if !v.quorum_met {
                flags.push("quorum-down".into());
            }
            if v.sorry_server_active {
                flags.push("sorry".into());
            }
            if let Some(g) = &v.group {
                flags.push(format!("group {g}"));
            }
            let _ =
                writeln!(o, "  {:<4} {} {} {}", v.protocol, v.address, v.lb_algo, flags.join(" "));
            for r in &v.real_servers {
                let addr = if r.sorry_server {
                    format!("{} (sorry)", r.address)
                } else {
                    r.address.to_string()
                };
                let _ = writeln!(
                    o,
                    "    -> {:<28} {:<7} {:>6} {:>6} {:>10} {:>9} {:>9} {:>8} {:>10}",
                    addr,
                    lb_kind_short(&v.lb_kind),
                    r.weight,
                    r.health,
                    r.active_conns,
                    r.inactive_conns.map_or("-".to_string(), |n| n.to_string()),
                    r.conns,
                    r.packets,
                    r.bytes
                );
                if let Some(why) = &r.health_reason {
                    let _ = writeln!(o, "       down: {why}");
                }
            }
        }
    }
    if !s.forwarding.is_empty() {
        let parts: Vec<String> = s.forwarding.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "\nForwarding: {}", parts.join(" "));
    }
    if !s.flow_cache.is_empty() {
        let parts: Vec<String> = s.flow_cache.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "Flow cache: {}", parts.join(" "));
    }
    if !s.lvs_sync.is_empty() {
        let parts: Vec<String> = s.lvs_sync.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "\nConnection sync (lvs_sync_daemon): {}", parts.join(" "));
    }
    if !s.vrrp_filter.is_empty() {
        let parts: Vec<String> = s.vrrp_filter.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "\nVRRP filter: {}", parts.join(" "));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection-sync counters are named as the configuration key, in JSON and text; a
    /// status written with the old JSON key is still read.
    #[test]
    fn connection_sync_counters_are_named_lvs_sync_daemon() {
        let mut s = Status::default();
        s.lvs_sync.insert("connections_sent".into(), 3);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["lvs_sync_daemon"]["connections_sent"], 3);
        assert!(json.get("lvs_sync").is_none());
        assert!(render(&s).contains("Connection sync (lvs_sync_daemon): connections_sent=3"));
        let mut old = json;
        let counters = old.as_object_mut().unwrap().remove("lvs_sync_daemon").unwrap();
        old["lvs_sync"] = counters;
        old["lvs_sync"]["connections_sent"] = 4.into();
        let back: Status = serde_json::from_value(old).unwrap();
        assert_eq!(back.lvs_sync["connections_sent"], 4);
    }

    fn sample() -> Status {
        Status {
            pid: 42,
            dataplane: "xdp".into(),
            config_file: "/etc/ha-lb/ha-lb.toml".into(),
            vrrp_instances: vec![InstanceStatus {
                name: "VI_1".into(),
                interface: "eth0".into(),
                virtual_router_id: 51,
                version: 3,
                state: "MASTER".into(),
                priority: 150,
                effective_priority: 150,
                master: Some("198.18.0.1".into()),
                virtual_ipaddress: vec!["198.18.0.100/24".into()],
                virtual_ipaddress_excluded: vec!["2001:db8::10/64".into()],
                fault_reason: Some("track_interface eth1".into()),
                start_error: Some("interface eth9 not found".into()),
                sync_group: Some("director".into()),
                sync_group_waits_for: Some(vec!["VI_2".into()]),
                ..Default::default()
            }],
            virtual_servers: vec![VirtualServerStatus {
                name: "198.18.0.100:80 TCP".into(),
                address: "198.18.0.100:80".into(),
                protocol: "TCP".into(),
                lb_algo: "wrr".into(),
                lb_kind: "NAT".into(),
                quorum_met: true,
                real_servers: vec![RealServerStatus {
                    address: "198.18.1.1:80".into(),
                    weight: 3,
                    configured_weight: 3,
                    health: "up".into(),
                    active_conns: 2,
                    packets: 10,
                    bytes: 1000,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            vrrp_filter: BTreeMap::from([("passed".into(), 7), ("bad_ttl".into(), 1)]),
            forwarding: BTreeMap::from([("nat_in".into(), 12), ("other_host".into(), 2)]),
            flow_cache: BTreeMap::from([("hits".into(), 10), ("fills".into(), 2)]),
            ..Default::default()
        }
    }

    #[test]
    fn table_shows_instances_services_and_counters() {
        let t = render(&sample());
        assert!(t.contains("VI_1"), "{t}");
        assert!(t.contains("MASTER"));
        assert!(t.contains("198.18.0.100/24 2001:db8::10/64 (excluded)"), "{t}");
        assert!(t.contains("VI_1 is held in FAULT by: track_interface eth1"), "{t}");
        assert!(
            t.contains("VI_1 is ready to be MASTER; sync group director waits for: VI_2"),
            "{t}"
        );
        assert!(t.contains("TCP  198.18.0.100:80 wrr"), "{t}");
        let rs = t.lines().find(|l| l.contains("-> 198.18.1.1:80")).unwrap();
        let cols: Vec<&str> = rs.split_whitespace().collect();
        // InActConn: "-" where the data plane does not count them.
        assert_eq!(cols[2..7], ["Masq", "3", "up", "2", "-"], "{rs}");
        assert!(t.contains("VI_1 could not start (tried again every 5 s): interface eth9"), "{t}");
        // Each value under its header (the header used to be 2 columns off).
        let head = t.lines().find(|l| l.contains("RemoteAddress:Port")).unwrap();
        assert_eq!(head.find("Forward"), rs.find("Masq"), "\n{head}\n{rs}");
        assert_eq!(head.trim_end(), head, "no trailing blanks");
        for (h, v) in [("Weight", " 3 "), ("ActiveConn", " 2 ")] {
            let end = head.find(h).unwrap() + h.len();
            assert_eq!(rs[..end].trim_end().len(), end, "{h} right-aligned over its value");
            assert!(rs[..end + 1].ends_with(v), "{h}: {rs}");
        }
        assert!(t.contains("VRRP filter: bad_ttl=1 passed=7"));
        assert!(t.contains("Forwarding: nat_in=12 other_host=2"));
        assert!(t.contains("Flow cache: fills=2 hits=10"));
    }

    /// A real server a check took down says why, under its row and as `health_reason`.
    #[test]
    fn a_down_real_server_shows_the_check_result_that_took_it_down() {
        let mut s = sample();
        let rs = &mut s.virtual_servers[0].real_servers[0];
        rs.health = "down".into();
        rs.health_reason = Some("HTTP status 200 on /health not in 204".into());
        let t = render(&s);
        let lines: Vec<&str> = t.lines().collect();
        let row = lines.iter().position(|l| l.contains("-> 198.18.1.1:80")).unwrap();
        assert_eq!(lines[row + 1], "       down: HTTP status 200 on /health not in 204", "{t}");
        let j = serde_json::to_value(&s).unwrap();
        let rs = &j["virtual_servers"][0]["real_servers"][0];
        assert_eq!(rs["health_reason"], "HTTP status 200 on /health not in 204", "{rs}");
        assert_eq!(serde_json::from_value::<Status>(j).unwrap(), s);
        // An up one has none.
        let j = serde_json::to_value(sample()).unwrap();
        assert!(j["virtual_servers"][0]["real_servers"][0].get("health_reason").is_none());
        assert!(!render(&sample()).contains("down:"));
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&j).unwrap(), s);
    }

    #[test]
    fn a_checked_real_server_shows_its_start_state_until_a_check_says_otherwise() {
        use crate::reconcile::Health;
        let h = |up, initial| Health { up, dynamic_weight: None, initial, reason: None };
        assert_eq!(real_server_health(false, None), "unchecked");
        assert_eq!(real_server_health(false, Some(&h(true, false))), "unchecked");
        // Before any result: up, or down with alpha.
        assert_eq!(real_server_health(true, Some(&h(true, true))), "up");
        assert_eq!(real_server_health(true, Some(&h(false, true))), "down");
        assert_eq!(real_server_health(true, Some(&h(true, false))), "up");
        assert_eq!(real_server_health(true, Some(&h(false, false))), "down");
        assert_eq!(real_server_health(true, None), "down");
    }

    #[test]
    fn inactive_connections_are_null_where_not_counted() {
        let mut s = sample();
        let j: serde_json::Value = serde_json::to_value(&s).unwrap();
        let rs = &j["virtual_servers"][0]["real_servers"][0];
        assert!(rs["inactive_conns"].is_null(), "{rs}");
        assert_eq!(j["virtual_servers"][0]["name"], "198.18.0.100:80 TCP");
        assert_eq!(j["vrrp_instances"][0]["start_error"], "interface eth9 not found");
        // IPVS counts them.
        s.virtual_servers[0].real_servers[0].inactive_conns = Some(4);
        let t = render(&s);
        let row = t.lines().find(|l| l.contains("-> 198.18.1.1:80")).unwrap();
        assert_eq!(row.split_whitespace().nth(6), Some("4"), "{row}");
        let j: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(j["virtual_servers"][0]["real_servers"][0]["inactive_conns"], 4);
    }
}
