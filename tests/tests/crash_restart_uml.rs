//! What a `kill -9`ed `ha-lb run` leaves in the kernel, and the next run cleans up, on
//! Debian 12's 6.1 kernel in a user-mode-linux guest (see `ha_lb_lab::uml`: the host has
//! neither kernel IPVS nor a kernel without TCX). One director of the NAT lab, inside the
//! guest:
//! - `dataplane = "tc"`: below 6.6 the forwarding program is a netlink filter of the clsact
//!   qdisc, which outlives the process. After a crash the next run must remove the old filter
//!   (with its frozen maps) before attaching its own: one `ha_lb_tc` per interface, not two.
//! - `dataplane = "ipvs"` with `lvs_sync_daemon`: the kernel's sync thread outlives the
//!   process too. A restart whose configuration no longer has `lvs_sync_daemon` stops it
//!   (the ledger says an earlier run started it); a clean stop leaves none either.

mod daemon_support;

use std::{process::Command, time::Duration};

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, HaLb, Scratch},
    topology::{DirectorLab, Mode},
    uml, Node,
};

const TEST_NAME: &str = "crash_leftovers_are_cleaned_up_at_restart_in_a_uml_guest";
const STEPS: &[&str] = &[
    "tc_filter_left_by_a_crash",
    "tc_restart_leaves_one_filter",
    "ipvs_sync_thread_left_by_a_crash",
    "ipvs_restart_without_sync_stops_it",
];

#[test]
fn crash_leftovers_are_cleaned_up_at_restart_in_a_uml_guest() {
    uml::host_or_guest(TEST_NAME, "crash-uml", STEPS, "512M", Duration::from_secs(240), guest);
}

fn ok(step: &str) {
    uml::step_ok("crash-uml", STEPS, step);
}

/// The single director's file with `dataplane` (and `extra` global lines) and `services`.
fn conf(dataplane: &str, extra: &str, services: &str) -> String {
    director_conf(1, None, 150, 0.2, services).replacen(
        "dataplane = \"xdp\"\n",
        &format!("dataplane = \"{dataplane}\"\n{extra}"),
        1,
    )
}

/// `tc filter show dev DEV ingress` in `node`.
fn tc_show(node: &Node, dev: &str) -> String {
    node.sh(&format!("tc filter show dev {dev} ingress 2>&1")).unwrap()
}

/// How many BPF filters the ingress of `dev` has. (The UML kernel has no tracepoints, so aya
/// finds it cannot name programs, and the filters' names are empty: count them all.)
fn tc_filters(node: &Node, dev: &str) -> usize {
    tc_show(node, dev).lines().filter(|l| l.contains(" bpf ") && l.contains(" handle ")).count()
}

fn ipvs_daemons(node: &Node) -> String {
    let out = node.exec("ipvsadm", &["-L", "--daemon"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for this run of d1 to be MASTER of both instances (its status answers: the VIPs a
/// killed run left are there before it is up) and to hold both VIPs.
fn wait_vips(d: &HaLb) {
    eventually(Duration::from_secs(20), "d1 MASTER with both VIPs", || {
        d.state("VI_PUBLIC").as_deref() == Some("MASTER")
            && d.state("VI_GATEWAY").as_deref() == Some("MASTER")
            && holds_both_vips(&d.node)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
}

fn guest() {
    // The guest's / is the host's, read-only: namespaces and /run/ha-lb need a writable /run.
    let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs", "/run"]).status().unwrap();
    assert!(st.success(), "mount /run");
    uml::load_modules(&["veth", "bridge", "sch_ingress", "cls_bpf", "ip_vs", "ip_vs_rr"])
        .expect("load the modules");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(release.starts_with("6.1."), "{release}");

    let mut t = DirectorLab::build(Mode::Nat, 1, 1).unwrap();
    let s = Scratch::new("crash").unwrap();
    let n = t.directors[0].clone();

    // --- tc: a netlink filter left by a crash
    let tc = conf("tc", "", "");
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &tc).unwrap();
    wait_vips(&d);
    for dev in ["eth0", "eth1"] {
        assert_eq!(tc_filters(&n, dev), 1, "{dev}: {}", tc_show(&n, dev));
    }
    t.lab.kill(d.pid);
    // Still there without its process.
    assert_eq!(tc_filters(&n, "eth0"), 1);
    ok("tc_filter_left_by_a_crash");

    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &tc).unwrap();
    wait_vips(&d);
    for dev in ["eth0", "eth1"] {
        assert_eq!(tc_filters(&n, dev), 1, "{dev}: {}\n{}", tc_show(&n, dev), d.log_text());
    }
    assert!(d.log_text().contains("removed a TC ingress filter an earlier run left"));
    t.lab.signal(d.pid, libc::SIGTERM).unwrap();
    t.lab.wait(d.pid, Duration::from_secs(20)).unwrap();
    assert_eq!(tc_filters(&n, "eth0"), 0, "a clean stop removes its filter");
    ok("tc_restart_leaves_one_filter");

    // --- ipvs: a kernel sync thread left by a crash
    let _pids = t.start_real_servers().unwrap();
    let vs = virtual_server("lb_algo = \"rr\"", &[real_server(1, 1, "", None)]);
    let sync = "lvs_sync_daemon = { interface = \"eth1\", vrrp_instance = \"VI_GATEWAY\" }\n";
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &conf("ipvs", sync, &vs)).unwrap();
    wait_vips(&d);
    eventually(Duration::from_secs(10), "the master sync thread runs", || {
        ipvs_daemons(&n).contains("master sync daemon")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    t.lab.kill(d.pid);
    assert!(ipvs_daemons(&n).contains("master sync daemon"));
    ok("ipvs_sync_thread_left_by_a_crash");

    // The same director without lvs_sync_daemon.
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &conf("ipvs", "", &vs)).unwrap();
    wait_vips(&d);
    let daemons = ipvs_daemons(&n);
    assert!(!daemons.contains("sync daemon"), "{daemons}\n{}", d.log_text());
    assert!(d.log_text().contains("stopped the kernel sync thread an earlier run left"));
    // IPVS counts InActConn: a number in status (null with XDP).
    let st = d.status().unwrap();
    let r = rs_status(&st, "198.19.0.11:80").unwrap();
    assert_eq!(r["inactive_conns"].as_u64(), Some(0), "{r}");
    t.lab.signal(d.pid, libc::SIGTERM).unwrap();
    t.lab.wait(d.pid, Duration::from_secs(20)).unwrap();
    let daemons = ipvs_daemons(&n);
    assert!(!daemons.contains("sync daemon"), "{daemons}");
    ok("ipvs_restart_without_sync_stops_it");
}
