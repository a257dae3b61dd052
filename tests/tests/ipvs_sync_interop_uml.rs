//! Connection sync between a kernel-IPVS director and an ha-lb XDP director — the migration
//! from keepalived + IPVS, one director at a time — in a user-mode-linux guest (the host kernel
//! has no IPVS; Debian's 6.1 guest has it as modules, and runs the XDP program on veths, see
//! `ha_lb_lab::uml` and `tun_uml.rs`).
//!
//! The NAT pair lab of the host tests (client, two directors, three real servers, in
//! namespaces and veths inside the guest): d1 is `ha-lb run` with `dataplane = "ipvs"` and
//! `lvs_sync_daemon` (the kernel's own sync thread, master while d1 is MASTER, as keepalived
//! runs it), d2 is `ha-lb run` with the XDP data plane and `lvs_sync_daemon`. Keep-alive
//! connections through d1; d2 imports the kernel's sync messages (`sync::ipvs_wire`); d1 is
//! killed (`kill -9`, links down); every connection goes on through d2's XDP program,
//! answered by the same real server — with round robin and no imported state, d2 would
//! schedule each mid-connection segment afresh and most would be reset.
//!
//! And the other way round (`xdp_master_syncs_to_a_kernel_ipvs_director_in_a_uml_guest`): the
//! XDP director is the master and sends the kernel's format (`protocol = "ipvs"`), the kernel
//! IPVS director's backup sync thread imports it, and the connections survive a `kill -9` of
//! the XDP director, now through the kernel's IPVS.
//!
//! See docs/conntrack-sync.md, "Kernel IPVS sync".

mod daemon_support;

use std::{process::Command, time::Duration};

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, HaLb, Scratch},
    topology::{DirectorLab, Mode},
    uml, Node,
};

const TEST_NAME: &str = "kernel_ipvs_master_syncs_to_an_xdp_director_in_a_uml_guest";
const STEPS: &[&str] = &[
    "ipvs_master_and_xdp_backup_up",
    "xdp_backup_imports_the_kernels_sync",
    "connections_survive_the_failover_to_xdp",
];

#[test]
fn kernel_ipvs_master_syncs_to_an_xdp_director_in_a_uml_guest() {
    in_the_guest(TEST_NAME, STEPS, guest);
}

/// The host half of each test: boots the guest, which runs `guest` (this test binary, the
/// same test) and checks that every step of `steps` reported ok.
fn in_the_guest(test_name: &str, steps: &[&str], guest: fn()) {
    let timeout = Duration::from_secs(240);
    uml::host_or_guest(test_name, "ipvs-sync-interop-uml", steps, "512M", timeout, guest);
}

/// The line the host half looks for after step `step` of `steps`.
fn ok_in(steps: &[&str], step: &str) {
    uml::step_ok("ipvs-sync-interop-uml", steps, step);
}

fn ok(step: &str) {
    ok_in(STEPS, step);
}

const ADVERT: f64 = 0.2;
const SYNC: &str = "lvs_sync_daemon = { interface = \"eth1\", vrrp_instance = \"VI_GATEWAY\" }\n";

/// Director `n`'s configuration on `dataplane` ("ipvs" or "xdp"), with `lvs_sync_daemon`.
fn conf(n: u8, peer: u8, priority: u8, dataplane: &str, vs: &str) -> String {
    director_conf(n, Some(peer), priority, ADVERT, vs).replacen(
        "dataplane = \"xdp\"\n",
        &format!("dataplane = \"{dataplane}\"\n{SYNC}"),
        1,
    )
}

/// [`conf`] for the XDP director that sends the kernel's format.
fn conf_sending_ipvs(n: u8, peer: u8, priority: u8, vs: &str) -> String {
    conf(n, peer, priority, "xdp", vs).replacen(
        "vrrp_instance = \"VI_GATEWAY\" }",
        "vrrp_instance = \"VI_GATEWAY\", protocol = \"ipvs\" }",
        1,
    )
}

/// `ipvsadm ARGS` in `node`'s namespace.
fn ipvsadm(node: &Node, args: &[&str]) -> String {
    let out = node.exec("ipvsadm", args).unwrap_or_else(|e| panic!("ipvsadm {args:?}: {e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `d`'s connection-sync counter `key` (0 when it has not counted any).
fn sync_counter(d: &HaLb, key: &str) -> u64 {
    d.status().ok().and_then(|s| s["lvs_sync_daemon"][key].as_u64()).unwrap_or(0)
}

/// The guest's set-up: a writable /run (the guest's / is the host's, read-only: namespaces
/// and ha-lb's /run/ha-lb need one) and the modules.
fn guest_setup() {
    let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs", "/run"]).status().unwrap();
    assert!(st.success(), "mount /run");
    uml::load_modules(&["veth", "bridge", "ip_vs", "ip_vs_rr"]).expect("load the modules");
}

/// The NAT pair in the guest: d1 MASTER on kernel IPVS with its sync thread, d2 BACKUP on
/// the XDP plane, both syncing; round robin over three real servers, `vs_extra` on the
/// virtual server. (The real servers' pids and the scratch directory live as long as this.)
struct KernelMasterXdpBackup {
    t: DirectorLab,
    _pids: Vec<u32>,
    _s: Scratch,
    d1: HaLb,
    d2: HaLb,
    n1: Node,
    n2: Node,
}

fn kernel_master_xdp_backup(scratch: &str, vs_extra: &str) -> KernelMasterXdpBackup {
    guest_setup();
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    let _pids = t.start_real_servers().unwrap();
    let s = Scratch::new(scratch).unwrap();
    let rss: Vec<String> = (1..=3).map(|n| real_server(n, 1, "", None)).collect();
    let vs = virtual_server(&format!("lb_algo = \"rr\"\n{vs_extra}"), &rss);
    let (n1, n2) = (t.directors[0].clone(), t.directors[1].clone());
    let d1 = HaLb::start(&mut t.lab, &n1, &s, "d1", &conf(1, 2, 150, "ipvs", &vs)).unwrap();
    wait_master_serving(&t, &d1);
    let d2 = HaLb::start(&mut t.lab, &n2, &s, "d2", &conf(2, 1, 100, "xdp", &vs)).unwrap();
    eventually(Duration::from_secs(10), "d2 BACKUP", || {
        d2.state("VI_GATEWAY").as_deref() == Some("BACKUP")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d2.log_text()));
    eventually(Duration::from_secs(5), "the kernel's master sync thread on d1", || {
        ipvsadm(&n1, &["-L", "--daemon"]).contains("master sync daemon (mcast=eth1, syncid=52")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", ipvsadm(&n1, &["-L", "--daemon"]), d1.log_text()));
    KernelMasterXdpBackup { t, _pids, _s: s, d1, d2, n1, n2 }
}

fn guest() {
    let KernelMasterXdpBackup { mut t, _pids, _s, d1, d2, n1, n2 } =
        kernel_master_xdp_backup("ipvsx", "");
    assert!(has_xdp(&n2, "eth0"), "d2 forwards with the XDP program");
    ok("ipvs_master_and_xdp_backup_up");

    let (mut conns, names) = open_spread(&t.client, 6, 3);
    // The kernel syncs a connection at its third packet and flushes its sync buffer at least
    // every 2 s.
    eventually(Duration::from_secs(10), "d2 imported d1's six connections", || {
        sync_counter(&d2, "connections_imported") >= 6
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nd2 status: {}\nd1's IPVS: {}\n{}",
            d2.status().map(|s| s["lvs_sync_daemon"].to_string()).unwrap_or_default(),
            ipvsadm(&n1, &["-Lnc"]),
            d2.log_text()
        )
    });
    assert!(sync_counter(&d2, "datagrams_ipvs") >= 1);
    // (`connections_unknown` may count the closes of the short probe connections d2 never
    // had open: a close of a flow a director does not have is not written.)
    let rejected: Vec<String> =
        d2.log_text().lines().filter(|l| l.contains("bad")).map(str::to_owned).collect();
    assert_eq!(sync_counter(&d2, "datagrams_rejected"), 0, "{rejected:#?}");
    ok("xdp_backup_imports_the_kernels_sync");

    let _ = n2.ip(&["neigh", "flush", "dev", "eth0"]);
    crash(&mut t, &d1);
    eventually(Duration::from_secs(5), "d2 holds both VIPs", || holds_both_vips(&n2))
        .unwrap_or_else(|e| panic!("{e}\n{}", d2.log_text()));
    still_served(&mut conns, &names, "after the failover to the XDP director", &|| d2.log_text());
    // And from the imported flows, not by scheduling afresh (which could land on the same
    // real servers by chance): d2 forwarded their packets with no new connection counted.
    let st = d2.status().unwrap();
    let reals = st["virtual_servers"][0]["real_servers"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| reals.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    assert_eq!(sum("conns"), 0, "d2 scheduled connections itself: {reals:#?}");
    assert!(sum("packets") > 0, "d2 forwarded nothing: {reals:#?}");
    ok("connections_survive_the_failover_to_xdp");
}

const TEST_NAME_BACK: &str = "xdp_master_syncs_to_a_kernel_ipvs_director_in_a_uml_guest";
const STEPS_BACK: &[&str] = &[
    "xdp_master_and_ipvs_backup_up",
    "kernel_backup_imports_the_xdp_masters_sync",
    "connections_survive_the_failover_to_ipvs",
];

#[test]
fn xdp_master_syncs_to_a_kernel_ipvs_director_in_a_uml_guest() {
    in_the_guest(TEST_NAME_BACK, STEPS_BACK, guest_back);
}

fn ok_back(step: &str) {
    ok_in(STEPS_BACK, step);
}

fn guest_back() {
    guest_setup();
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    let _pids = t.start_real_servers().unwrap();
    let s = Scratch::new("ipvsy").unwrap();
    let rss: Vec<String> = (1..=3).map(|n| real_server(n, 1, "", None)).collect();
    let vs = virtual_server("lb_algo = \"rr\"", &rss);
    let (n1, n2) = (t.directors[0].clone(), t.directors[1].clone());
    // d1, the XDP director, is the master; d2 runs kernel IPVS (its backup sync thread).
    let d1 = HaLb::start(&mut t.lab, &n1, &s, "d1", &conf_sending_ipvs(1, 2, 150, &vs)).unwrap();
    wait_master_serving(&t, &d1);
    assert!(has_xdp(&n1, "eth0"), "d1 forwards with the XDP program");
    let d2 = HaLb::start(&mut t.lab, &n2, &s, "d2", &conf(2, 1, 100, "ipvs", &vs)).unwrap();
    eventually(Duration::from_secs(10), "d2 BACKUP", || {
        d2.state("VI_GATEWAY").as_deref() == Some("BACKUP")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d2.log_text()));
    eventually(Duration::from_secs(5), "the kernel's backup sync thread on d2", || {
        ipvsadm(&n2, &["-L", "--daemon"]).contains("backup sync daemon (mcast=eth1, syncid=52")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", ipvsadm(&n2, &["-L", "--daemon"]), d2.log_text()));
    ok_back("xdp_master_and_ipvs_backup_up");

    let (mut conns, names) = open_spread(&t.client, 6, 3);
    // d1 sends its new connections once a second, in the kernel's format.
    eventually(Duration::from_secs(10), "d2's IPVS has d1's six connections", || {
        ipvsadm(&n2, &["-Lnc"]).lines().filter(|l| l.contains("ESTABLISHED")).count() >= 6
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\nd1 status: {}\n{}",
            ipvsadm(&n2, &["-Lnc"]),
            d1.status().map(|s| s["lvs_sync_daemon"].to_string()).unwrap_or_default(),
            d1.log_text()
        )
    });
    assert!(sync_counter(&d1, "connections_sent") >= 6);
    ok_back("kernel_backup_imports_the_xdp_masters_sync");

    crash(&mut t, &d1);
    eventually(Duration::from_secs(5), "d2 holds both VIPs", || holds_both_vips(&n2))
        .unwrap_or_else(|e| panic!("{e}\n{}", d2.log_text()));
    eventually(Duration::from_secs(5), "d2's sync thread is the master now", || {
        ipvsadm(&n2, &["-L", "--daemon"]).contains("master sync daemon")
    })
    .unwrap();
    still_served(&mut conns, &names, "after the failover to the kernel IPVS director", &|| {
        d2.log_text()
    });
    ok_back("connections_survive_the_failover_to_ipvs");
}

const TEST_NAME_TPL: &str =
    "kernel_ipvs_persistence_templates_reach_an_xdp_director_in_a_uml_guest";
const STEPS_TPL: &[&str] = &[
    "persistent_clients_on_the_ipvs_master",
    "xdp_backup_imports_the_kernels_templates",
    "persistent_clients_keep_their_real_servers_after_the_failover",
];

/// The kernel's persistence templates too: with `persistence_timeout`, six client addresses
/// each get a real server from d1's IPVS (round robin); d2 (XDP) imports the kernel's
/// templates (under its own `persistence_granularity`, IPVS messages carry none); after a
/// `kill -9` of d1 each client's *new* connection, in the reverse order, reaches its old real
/// server through d2 — round robin alone cannot give all six theirs (the wanted sequence runs
/// backwards through the ring).
#[test]
fn kernel_ipvs_persistence_templates_reach_an_xdp_director_in_a_uml_guest() {
    in_the_guest(TEST_NAME_TPL, STEPS_TPL, guest_templates);
}

fn ok_tpl(step: &str) {
    ok_in(STEPS_TPL, step);
}

fn guest_templates() {
    let KernelMasterXdpBackup { mut t, _pids, _s, d1, d2, n1, n2 } =
        kernel_master_xdp_backup("ipvsz", "persistence_timeout = 300");

    let clients = more_client_addresses(&t.client);
    let before: Vec<String> = clients.iter().map(|&c| get_from(&t.client, c).unwrap()).collect();
    assert_spread(&before, 3);
    for (&c, want) in clients.iter().zip(&before) {
        assert_eq!(&get_from(&t.client, c).unwrap(), want, "{c} persistent on the IPVS master");
    }
    ok_tpl("persistent_clients_on_the_ipvs_master");

    eventually(Duration::from_secs(10), "d2 imported the kernel's six templates", || {
        sync_counter(&d2, "templates_imported") >= 6
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nd2 status: {}\nd1's IPVS: {}\n{}",
            d2.status().map(|s| s["lvs_sync_daemon"].to_string()).unwrap_or_default(),
            ipvsadm(&n1, &["-Lnc"]),
            d2.log_text()
        )
    });
    assert_eq!(sync_counter(&d2, "templates_unknown"), 0);
    ok_tpl("xdp_backup_imports_the_kernels_templates");

    let _ = n2.ip(&["neigh", "flush", "dev", "eth0"]);
    crash(&mut t, &d1);
    eventually(Duration::from_secs(5), "d2 holds both VIPs", || holds_both_vips(&n2))
        .unwrap_or_else(|e| panic!("{e}\n{}", d2.log_text()));
    let after = new_connections_reversed(&t.client, &clients);
    assert_eq!(after, before, "each client's new connection after the failover\n{}", d2.log_text());
    ok_tpl("persistent_clients_keep_their_real_servers_after_the_failover");
}
