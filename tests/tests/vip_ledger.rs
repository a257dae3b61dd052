//! VIPs a crashed `ha-lb run` leaves behind, on the NAT director lab:
//! - the daemon records the VIPs it adds in a ledger beside its control socket, so the next
//!   run removes those the new configuration no longer names (the instances' own start-up
//!   clean-up only knows the configured ones), and touches no address the ledger does not
//!   name;
//! - a VIP an earlier run left under another prefix goes by the ledger too; the same address
//!   under another prefix that ha-lb did not add (the host's own) is never removed;
//! - a VIP whose device is deleted went with it: no error is logged for its removal;
//! - a run that fails after binding its control socket removes the socket file.

mod daemon_support;

use std::time::Duration;

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    topology::{DirectorLab, Mode},
};

/// The single director's file with `vip` (instead of the lab's VIP, with its prefix) on eth0,
/// no services, no data plane.
fn conf_prefix(vip: &str, prefix: u8) -> String {
    director_conf(1, None, 150, 0.1, "")
        .replace("dataplane = \"xdp\"", "dataplane = \"none\"")
        .replace(&format!("\"{VIP_S}/24 dev eth0\""), &format!("\"{vip}/{prefix} dev eth0\""))
}

fn conf(vip: &str) -> String {
    conf_prefix(vip, 24)
}

/// The entries of `addr` on `dev` in `node`, as `ip -o addr` shows them (`addr/prefix`).
fn entries(node: &ha_lb_lab::Node, dev: &str, addr: &str) -> Vec<String> {
    let out = node.sh(&format!("ip -o addr show dev {dev}")).unwrap();
    out.split_whitespace().filter(|w| w.split('/').next() == Some(addr)).map(String::from).collect()
}

/// A VIP an earlier run added as /24 and left behind (kill -9), configured now as /32: the
/// ledger names the /24, so it goes before the instance starts; the instance then holds the
/// /32 only.
#[test]
fn a_vip_left_with_another_prefix_by_an_earlier_run_is_removed_at_start() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 1).unwrap();
    let s = Scratch::new("vipprefix").unwrap();
    let n = t.directors[0].clone();
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &conf_prefix("198.18.0.110", 24)).unwrap();
    eventually(Duration::from_secs(10), "d1 holds 198.18.0.110/24", || {
        entries(&n, "eth0", "198.18.0.110") == ["198.18.0.110/24"]
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    t.lab.kill(d.pid);
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &conf_prefix("198.18.0.110", 32)).unwrap();
    eventually(Duration::from_secs(10), "d1 MASTER", || {
        d.state("VI_PUBLIC").as_deref() == Some("MASTER")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert_eq!(entries(&n, "eth0", "198.18.0.110"), ["198.18.0.110/32"], "{}", d.log_text());
    assert!(d.log_text().contains("198.18.0.110/24"), "the log names what it removed");
    t.lab.signal(d.pid, libc::SIGTERM).unwrap();
    t.lab.wait(d.pid, Duration::from_secs(10)).unwrap();
    assert!(entries(&n, "eth0", "198.18.0.110").is_empty());
}

/// The VIP's address is also the host's own under another prefix (an address owner's
/// interface address, or a static one): ha-lb adds and removes its /32 beside it and never
/// removes the host's /24 (found by review: the start-up clean-up matched by address alone).
#[test]
fn the_hosts_own_address_under_another_prefix_is_never_removed() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 1).unwrap();
    let s = Scratch::new("vipown").unwrap();
    let n = t.directors[0].clone();
    n.ip(&["addr", "add", "198.18.0.110/24", "dev", "eth0"]).unwrap();
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &conf_prefix("198.18.0.110", 32)).unwrap();
    eventually(Duration::from_secs(10), "d1 MASTER with the /32 beside the /24", || {
        d.state("VI_PUBLIC").as_deref() == Some("MASTER")
            && entries(&n, "eth0", "198.18.0.110").len() == 2
    })
    .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", entries(&n, "eth0", "198.18.0.110"), d.log_text()));
    assert!(
        d.log_text().contains("which is not the VIP as configured: left as it is"),
        "{}",
        d.log_text()
    );
    t.lab.signal(d.pid, libc::SIGTERM).unwrap();
    t.lab.wait(d.pid, Duration::from_secs(10)).unwrap();
    assert_eq!(entries(&n, "eth0", "198.18.0.110"), ["198.18.0.110/24"]);
}

#[test]
fn a_vip_dropped_from_the_config_after_a_crash_is_removed_at_the_next_start() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 1).unwrap();
    let s = Scratch::new("vipledger").unwrap();
    let n = t.directors[0].clone();
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &conf("198.18.0.110")).unwrap();
    eventually(Duration::from_secs(10), "d1 holds 198.18.0.110", || {
        holds(&n, "eth0", "198.18.0.110") && holds(&n, "eth1", GW_S)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    // kill -9: nothing is cleaned up.
    t.lab.kill(d.pid);
    assert!(holds(&n, "eth0", "198.18.0.110"));
    // Someone else's address, which the ledger does not name: never touched.
    n.ip(&["addr", "add", "198.18.0.120/32", "dev", "eth0"]).unwrap();

    // The new configuration has .111 instead of .110; same control socket, same ledger.
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &conf("198.18.0.111")).unwrap();
    eventually(Duration::from_secs(10), "d1 holds 198.18.0.111", || {
        holds(&n, "eth0", "198.18.0.111")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert!(!holds(&n, "eth0", "198.18.0.110"), "{}", n.sh("ip -o addr show dev eth0").unwrap());
    assert!(holds(&n, "eth0", "198.18.0.120"), "{}", n.sh("ip -o addr show dev eth0").unwrap());
    assert!(holds(&n, "eth1", GW_S));
    let log = d.log_text();
    assert!(
        log.contains("removed virtual addresses an earlier run added and left behind")
            && log.contains("198.18.0.110/24 dev eth0"),
        "{log}"
    );

    // A clean stop removes its VIPs and leaves the ledger empty.
    t.lab.signal(d.pid, libc::SIGTERM).unwrap();
    t.lab.wait(d.pid, Duration::from_secs(10)).unwrap();
    assert!(!holds(&n, "eth0", "198.18.0.111"));
    let ledger = std::fs::read_to_string(s.dir.join("d1.vips")).unwrap();
    assert!(ledger.lines().all(|l| l.starts_with('#')), "{ledger}");
}

/// A MASTER's VIP device is deleted: the address went with it, so its removal (the instance
/// leaves MASTER) finds no device — an expected event, logged at debug, not an ERROR.
#[test]
fn a_vip_gone_with_its_deleted_device_is_no_error() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 1).unwrap();
    let s = Scratch::new("vipnodev").unwrap();
    let n = t.directors[0].clone();
    n.ip(&["link", "add", "dum0", "type", "veth", "peer", "name", "dum1"]).unwrap();
    n.ip(&["addr", "add", "192.0.2.1/24", "dev", "dum0"]).unwrap();
    n.ip(&["link", "set", "dum0", "up"]).unwrap();
    n.ip(&["link", "set", "dum1", "up"]).unwrap();
    let extra = r#"
[[vrrp_instance]]
name = "VI_EXTRA"
interface = "dum0"
virtual_router_id = 60
priority = 100
advert_int = 0.1
version = 3
virtual_ipaddress = ["198.51.100.60/32 dev dum0"]
"#;
    let text = director_conf(1, None, 150, 0.1, extra)
        .replace("dataplane = \"xdp\"", "dataplane = \"none\"");
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &text).unwrap();
    eventually(Duration::from_secs(10), "d1 holds 198.51.100.60 on dum0", || {
        holds(&n, "dum0", "198.51.100.60")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    n.ip(&["link", "del", "dum0"]).unwrap();
    eventually(Duration::from_secs(10), "the VIP's removal found no device", || {
        d.log_text().contains("virtual address gone with its deleted device")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    let log = d.log_text();
    assert!(!log.contains("removing virtual address failed"), "{log}");
    assert!(d.status().is_ok(), "the daemon runs on");
}

/// `ha-lb run` fails after binding its control socket (the sync port is taken): the socket
/// file goes with it, not left for the next run or `ha-lb status` to find.
#[test]
fn a_failed_run_removes_its_control_socket() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 1).unwrap();
    let s = Scratch::new("failsock").unwrap();
    let n = t.directors[0].clone();
    // Bound without SO_REUSEADDR: the daemon's sync socket on 224.0.0.81:8848 cannot bind.
    let _taken = n.run(|| std::net::UdpSocket::bind("0.0.0.0:8848")).unwrap().unwrap();
    let text = director_conf(1, None, 150, 0.1, "").replace(
        "dataplane = \"xdp\"",
        "dataplane = \"xdp\"\nlvs_sync_daemon = { interface = \"eth1\", vrrp_instance = \"VI_GATEWAY\" }",
    );
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &text).unwrap();
    let exit = t.lab.wait(d.pid, Duration::from_secs(20)).unwrap();
    assert!(!exit.success(), "{}", d.log_text());
    assert!(
        d.log_text().contains("eBPF forwarding attached"),
        "failed after binding: {}",
        d.log_text()
    );
    assert!(!d.socket.exists(), "{} left behind:\n{}", d.socket.display(), d.log_text());
}
