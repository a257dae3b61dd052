//! `ha-lb run` with `dataplane = "ipvs"`, end to end, in a user-mode-linux guest (the host
//! kernel has no IPVS; Debian's 6.1 guest has it as modules, see `ha_lb_lab::uml`): the NAT
//! pair lab of the host tests — client, two directors, real servers, in namespaces and veths
//! inside the guest — with kernel IPVS forwarding and `lvs_sync_daemon` as keepalived runs it
//! (the kernel's own sync thread, master on the MASTER director, backup on the other).
//!
//! What it shows: the daemon programs IPVS (`ipvsadm -Ln` in the director's namespace), turns
//! forwarding on, switches the sync threads with the VRRP state, and established keep-alive
//! connections survive the master's death (kill -9, links down) with the same real servers:
//! the backup's IPVS had them from the kernel's sync.

mod daemon_support;

use std::{process::Command, time::Duration};

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, HaLb, Scratch},
    topology::{DirectorLab, Mode},
    uml, Node,
};

const TEST_NAME: &str = "ipvs_data_plane_daemon_pair_in_a_uml_guest";
const STEPS: &[&str] =
    &["master_programs_ipvs", "sync_threads_follow_the_roles", "connections_survive_the_failover"];

#[test]
fn ipvs_data_plane_daemon_pair_in_a_uml_guest() {
    uml::host_or_guest(
        TEST_NAME,
        "ipvs-daemon-uml",
        STEPS,
        "512M",
        Duration::from_secs(240),
        guest,
    );
}

fn ok(step: &str) {
    uml::step_ok("ipvs-daemon-uml", STEPS, step);
}

const ADVERT: f64 = 0.2;

fn conf(n: u8, peer: u8, priority: u8, vs: &str) -> String {
    director_conf(n, Some(peer), priority, ADVERT, vs).replacen(
        "dataplane = \"xdp\"\n",
        "dataplane = \"ipvs\"\nlvs_sync_daemon = { interface = \"eth1\", vrrp_instance = \"VI_GATEWAY\" }\n",
        1,
    )
}

/// `ipvsadm ARGS` in `node`'s namespace.
fn ipvsadm(node: &Node, args: &[&str]) -> String {
    let out = node.exec("ipvsadm", args).unwrap_or_else(|e| panic!("ipvsadm {args:?}: {e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn guest() {
    // The guest's / is the host's, read-only: namespaces and ha-lb's /run/ha-lb need a
    // writable /run.
    let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs", "/run"]).status().unwrap();
    assert!(st.success(), "mount /run");
    uml::load_modules(&["veth", "bridge", "ip_vs", "ip_vs_rr"]).expect("load the modules");

    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    let _pids = t.start_real_servers().unwrap();
    let s = Scratch::new("ipvsd").unwrap();
    let rss: Vec<String> = (1..=3).map(|n| real_server(n, 1, "", None)).collect();
    let vs = virtual_server("lb_algo = \"rr\"", &rss);
    let (n1, n2) = (t.directors[0].clone(), t.directors[1].clone());
    let d1 = HaLb::start(&mut t.lab, &n1, &s, "d1", &conf(1, 2, 150, &vs)).unwrap();
    wait_master_serving(&t, &d1);
    let table = ipvsadm(&n1, &["-Ln"]);
    for n in 1..=3 {
        assert!(table.contains(&format!("-> {}:80", t.real_server_addr(n - 1))), "{table}");
    }
    assert!(table.contains(&format!("TCP  {VIP_S}:80 rr")), "{table}");
    let fwd = n1.sh("cat /proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(fwd.trim(), "1", "NAT through IPVS needs forwarding");
    ok("master_programs_ipvs");

    let d2 = HaLb::start(&mut t.lab, &n2, &s, "d2", &conf(2, 1, 100, &vs)).unwrap();
    eventually(Duration::from_secs(10), "d2 BACKUP", || {
        d2.state("VI_GATEWAY").as_deref() == Some("BACKUP")
    })
    .unwrap();
    eventually(Duration::from_secs(5), "master thread on d1, backup thread on d2", || {
        ipvsadm(&n1, &["-L", "--daemon"]).contains("master sync daemon (mcast=eth1, syncid=52")
            && ipvsadm(&n2, &["-L", "--daemon"])
                .contains("backup sync daemon (mcast=eth1, syncid=52")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nd1: {}\nd2: {}\n{}",
            ipvsadm(&n1, &["-L", "--daemon"]),
            ipvsadm(&n2, &["-L", "--daemon"]),
            d1.log_text()
        )
    });
    ok("sync_threads_follow_the_roles");

    let (mut conns, names) = open_spread(&t.client, 6, 3);
    // The kernel syncs a connection at its third packet and flushes its sync buffer at least
    // every 2 s: wait until d2's IPVS has all six (bounded).
    eventually(Duration::from_secs(10), "d2's IPVS has d1's six connections", || {
        ipvsadm(&n2, &["-Lnc"]).lines().filter(|l| l.contains("ESTABLISHED")).count() >= 6
    })
    .unwrap_or_else(|e| panic!("{e}: {}", ipvsadm(&n2, &["-Lnc"])));

    crash(&mut t, &d1);
    eventually(Duration::from_secs(5), "d2 holds both VIPs", || holds_both_vips(&n2)).unwrap();
    eventually(Duration::from_secs(5), "d2's sync thread is the master now", || {
        ipvsadm(&n2, &["-L", "--daemon"]).contains("master sync daemon")
    })
    .unwrap();
    // Status counts the switches (backup at start, master now), none pending or failed.
    let st = d2.status().unwrap();
    let sync = &st["lvs_sync_daemon"];
    assert!(sync["kernel_thread_switches"].as_u64() >= Some(2), "{sync}");
    assert_eq!(sync["kernel_thread_switch_pending"].as_u64(), Some(0), "{sync}");
    assert_eq!(sync["kernel_thread_switch_failures"].as_u64(), Some(0), "{sync}");
    still_served(&mut conns, &names, "after the failover", &|| d2.log_text());
    ok("connections_survive_the_failover");
}
