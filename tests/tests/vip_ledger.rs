//! VIPs a crashed `ha-lb run` leaves behind, on the NAT director lab: the daemon records the
//! VIPs it adds in a ledger beside its control socket, so the next run removes those the new
//! configuration no longer names (the instances' own start-up clean-up only knows the
//! configured ones), and touches no address the ledger does not name.

mod daemon_support;

use std::time::Duration;

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    topology::{DirectorLab, Mode},
};

/// The single director's file with `vip` (instead of the lab's VIP) on eth0, no services,
/// no data plane.
fn conf(vip: &str) -> String {
    director_conf(1, None, 150, 0.1, "")
        .replace("dataplane = \"xdp\"", "dataplane = \"none\"")
        .replace(&format!("\"{VIP_S}/24 dev eth0\""), &format!("\"{vip}/24 dev eth0\""))
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
