//! The `ipvs` data plane against a real kernel IPVS, in a user-mode-linux guest (the host
//! kernel may have no IPVS; see `ha_lb_lab::uml`). The guest has no network device but `lo`.
//!
//! The test binary boots a guest that runs this same test again; inside the guest (where
//! `uml::in_guest()` is set) the test loads ip_vs and its schedulers, drives an
//! `IpvsDataplane` through a sequence of desired states and checks the kernel's view after
//! each, through the data plane's own dumps *and* through `ipvsadm -Ln` (an independent
//! netlink client). Each step prints `ipvs-uml: <step>: ok`; the host checks that every step
//! ran and the guest exited 0.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    net::{IpAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use ha_lb::dataplane::{
    ipvs::{IpvsDataplane, SyncDaemon},
    ApplyReport, Dataplane, DataplaneError, DataplaneStats, DesiredState, LbAlgo, LbKind, Protocol,
    RealServerSpec, ServiceSpec, VirtualServerKey,
};
use ha_lb_lab::uml::{self, Uml};

const TEST_NAME: &str = "ipvs_dataplane_in_a_uml_guest";

const STEPS: &[&str] = &[
    "no_ipvs_is_unsupported",
    "modules_loaded",
    "first_apply_creates_and_adopts",
    "reapply_is_a_no_op",
    "local_traffic_is_counted",
    "changes_apply_in_place",
    "maintain_repairs_drift",
    "ledger_survives_a_restart",
    "failed_apply_recovers",
    "mixed_family_destination_is_removed",
    "sync_daemon_follows_the_role",
    "drop_removes_only_owned_services",
];

#[test]
fn ipvs_dataplane_in_a_uml_guest() {
    if let Some(dir) = uml::in_guest() {
        guest(&dir);
        return;
    }
    let uml = Uml::find().expect("a UML kernel");
    uml.run_test_steps(TEST_NAME, "ipvs-uml", STEPS);
}

// ---------------------------------------------------------------------------------------
// Guest side
// ---------------------------------------------------------------------------------------

fn ok(step: &str) {
    uml::step_ok("ipvs-uml", STEPS, step);
}

fn vs(s: &str, protocol: Protocol) -> VirtualServerKey {
    let sa: std::net::SocketAddr = s.parse().unwrap();
    VirtualServerKey { address: sa.ip(), port: sa.port(), protocol }
}

fn tcp(s: &str) -> VirtualServerKey {
    vs(s, Protocol::Tcp)
}

fn rs(a: &str, port: u16, weight: u32) -> RealServerSpec {
    RealServerSpec { addr: a.parse().unwrap(), port, weight }
}

fn spec(algo: LbAlgo, kind: LbKind, reals: &[RealServerSpec]) -> ServiceSpec {
    let mut s = ServiceSpec::new(algo, kind);
    s.real_servers = reals.to_vec();
    s
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ipvsadm -Ln` in a canonical form: services sorted, each followed by its destinations
/// sorted, as `-> address:port Forward Weight` (connection counts left out).
fn ipvsadm() -> String {
    let text = run("ipvsadm", &["-Ln"]);
    let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first() {
            Some(&"TCP") | Some(&"UDP") => {
                let h = w.join(" ");
                services.entry(h.clone()).or_default();
                current = Some(h);
            }
            Some(&"->") if w.get(1) != Some(&"RemoteAddress:Port") => {
                let d = format!("-> {} {} {}", w[1], w[2], w[3]);
                services.get_mut(current.as_ref().expect("a service first")).unwrap().insert(d);
            }
            _ => {}
        }
    }
    let mut out = String::new();
    for (h, ds) in services {
        out.push_str(&h);
        out.push('\n');
        for d in ds {
            out.push_str("  ");
            out.push_str(&d);
            out.push('\n');
        }
    }
    out
}

/// The same view through the data plane's own dumps (`IpvsDataplane::kernel_services`).
fn dumped(dp: &IpvsDataplane) -> BTreeMap<VirtualServerKey, String> {
    dp.kernel_services()
        .unwrap()
        .iter()
        .map(|(s, d)| (s.key, ha_lb::dataplane::ipvs::describe(s, d)))
        .collect()
}

fn expect_ipvsadm(want: &str, context: &str) {
    let got = ipvsadm();
    let want: String = want
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let l = l.trim_start();
            if l.starts_with("->") {
                format!("  {l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(got, want, "{context}: ipvsadm -Ln differs");
}

const FOREIGN: &str = "
TCP 198.18.9.9:80 rr
  -> 198.18.2.99:80 Masq 1
";

fn d1() -> DesiredState {
    let mut b = spec(LbAlgo::Sh, LbKind::Nat, &[rs("198.18.2.20", 5353, 1)]);
    b.hash_port = true;
    b.persistence_timeout = 300;
    let mut c =
        spec(LbAlgo::Mh, LbKind::Dr, &[rs("fd48:4c42::10", 8443, 1), rs("fd48:4c42::11", 8443, 3)]);
    c.hash_port = true;
    let mut g = spec(LbAlgo::Wlc, LbKind::Nat, &[rs("198.18.2.50", 80, 1)]);
    g.persistence_timeout = 60;
    DesiredState {
        services: BTreeMap::from([
            (
                tcp("198.18.0.1:80"),
                spec(
                    LbAlgo::Wrr,
                    LbKind::Nat,
                    &[
                        rs("198.18.2.10", 8080, 1),
                        rs("198.18.2.11", 8080, 2),
                        rs("198.18.2.12", 8080, 0),
                    ],
                ),
            ),
            (vs("198.18.0.2:53", Protocol::Udp), b),
            (tcp("[fd48:4c42::1]:443"), c),
            // IPv6 in IPv6 (ip6ip6), as the eBPF data plane does it.
            (
                tcp("[fd48:4c42::2]:80"),
                spec(LbAlgo::Rr, LbKind::Tun, &[rs("fd48:4c42::20", 80, 1)]),
            ),
            (
                tcp("198.18.0.3:80"),
                spec(LbAlgo::Rr, LbKind::Dr, &[rs("198.18.2.30", 80, 5), rs("198.18.2.31", 80, 1)]),
            ),
            (tcp("198.18.0.4:80"), spec(LbAlgo::Lc, LbKind::Nat, &[rs("198.18.2.40", 80, 1)])),
            (tcp("198.18.0.5:80"), g),
            (tcp("198.18.0.7:80"), spec(LbAlgo::Rr, LbKind::Nat, &[rs("127.0.0.1", 80, 1)])),
        ]),
    }
}

const D1_IPVSADM: &str = "
TCP 198.18.0.1:80 wrr
  -> 198.18.2.10:8080 Masq 1
  -> 198.18.2.11:8080 Masq 2
  -> 198.18.2.12:8080 Masq 0
TCP 198.18.0.3:80 rr
  -> 198.18.2.30:80 Route 5
  -> 198.18.2.31:80 Route 1
TCP 198.18.0.4:80 lc
  -> 198.18.2.40:80 Masq 1
TCP 198.18.0.5:80 wlc persistent 60
  -> 198.18.2.50:80 Masq 1
TCP 198.18.0.7:80 rr
  -> 127.0.0.1:80 Masq 1
TCP 198.18.9.9:80 rr
  -> 198.18.2.99:80 Masq 1
TCP [fd48:4c42::1]:443 mh (mh-port)
  -> [fd48:4c42::10]:443 Route 1
  -> [fd48:4c42::11]:443 Route 3
TCP [fd48:4c42::2]:80 rr
  -> [fd48:4c42::20]:80 Tunnel 1
UDP 198.18.0.2:53 sh (sh-port) persistent 300
  -> 198.18.2.20:5353 Masq 1
";

fn d2() -> DesiredState {
    let mut d = d1();
    let s = &mut d.services;
    s.insert(
        tcp("198.18.0.1:80"),
        spec(
            LbAlgo::Wlc,
            LbKind::Nat,
            &[rs("198.18.2.11", 8080, 2), rs("198.18.2.12", 8080, 1), rs("198.18.2.13", 8080, 4)],
        ),
    );
    s.remove(&vs("198.18.0.2:53", Protocol::Udp));
    s.get_mut(&tcp("[fd48:4c42::1]:443")).unwrap().real_servers[1].weight = 0;
    s.insert(
        tcp("198.18.0.7:80"),
        spec(LbAlgo::Wrr, LbKind::Nat, &[rs("127.0.0.1", 80, 1), rs("198.18.2.70", 80, 0)]),
    );
    d
}

const D2_IPVSADM: &str = "
TCP 198.18.0.1:80 wlc
  -> 198.18.2.11:8080 Masq 2
  -> 198.18.2.12:8080 Masq 1
  -> 198.18.2.13:8080 Masq 4
TCP 198.18.0.3:80 rr
  -> 198.18.2.30:80 Route 5
  -> 198.18.2.31:80 Route 1
TCP 198.18.0.4:80 lc
  -> 198.18.2.40:80 Masq 1
TCP 198.18.0.5:80 wlc persistent 60
  -> 198.18.2.50:80 Masq 1
TCP 198.18.0.7:80 wrr
  -> 127.0.0.1:80 Masq 1
  -> 198.18.2.70:80 Masq 0
TCP 198.18.9.9:80 rr
  -> 198.18.2.99:80 Masq 1
TCP [fd48:4c42::1]:443 mh (mh-port)
  -> [fd48:4c42::10]:443 Route 1
  -> [fd48:4c42::11]:443 Route 0
TCP [fd48:4c42::2]:80 rr
  -> [fd48:4c42::20]:80 Tunnel 1
";

/// D2 without 198.18.0.4:80.
fn d3() -> DesiredState {
    let mut d = d2();
    d.services.remove(&tcp("198.18.0.4:80"));
    d
}

fn without(text: &str, header: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for l in text.lines() {
        if !l.starts_with(' ') {
            skip = l.trim() == header;
        }
        if !skip {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn connect_three_times(listener: &TcpListener) {
    for i in 0..3 {
        let mut c =
            TcpStream::connect_timeout(&"198.18.0.7:80".parse().unwrap(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i} through the virtual server: {e}"));
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = std::io::Write::write_all(&mut c, b"x");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
}

/// The data plane's counters once `f` holds (the kernel folds its per-CPU counters into what
/// it reports every 2 s, in its rate estimator), or after 6 s.
fn stats_when(dp: &IpvsDataplane, f: impl Fn(&DataplaneStats) -> bool) -> DataplaneStats {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let st = dp.stats().unwrap();
        if f(&st) || Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn report_counts(r: &ApplyReport) -> (usize, usize, usize, usize, usize, usize) {
    (
        r.services_added.len(),
        r.services_changed.len(),
        r.services_removed.len(),
        r.real_servers_added,
        r.real_servers_removed,
        r.real_servers_reweighted,
    )
}

fn guest(dir: &Path) {
    let ledger = dir.join("run").join("ipvs-services");

    // Before ip_vs is loaded the family does not exist: a clear "unsupported".
    match IpvsDataplane::open() {
        Err(e @ DataplaneError::Unsupported { .. }) => {
            assert!(e.to_string().contains("modprobe ip_vs"), "{e}")
        }
        Err(e) => panic!("want Unsupported, got {e}"),
        Ok(_) => panic!("IPVS present before ip_vs was loaded"),
    }
    ok("no_ipvs_is_unsupported");

    uml::load_modules(&[
        "ip_vs",
        "ip_vs_rr",
        "ip_vs_wrr",
        "ip_vs_lc",
        "ip_vs_wlc",
        "ip_vs_sh",
        "ip_vs_mh",
    ])
    .unwrap();
    // The local-traffic service's VIP, on lo (the guest has no other interface).
    run("ip", &["addr", "add", "198.18.0.7/32", "dev", "lo"]);
    // Someone else's service (never to be touched), and one ha-lb will adopt.
    run("ipvsadm", &["-A", "-t", "198.18.9.9:80", "-s", "rr"]);
    run("ipvsadm", &["-a", "-t", "198.18.9.9:80", "-r", "198.18.2.99:80", "-m", "-w", "1"]);
    run("ipvsadm", &["-A", "-t", "198.18.0.3:80", "-s", "wlc"]);
    run("ipvsadm", &["-a", "-t", "198.18.0.3:80", "-r", "198.18.2.30:80", "-m", "-w", "1"]);
    run("ipvsadm", &["-a", "-t", "198.18.0.3:80", "-r", "198.18.2.39:80", "-m", "-w", "1"]);
    ok("modules_loaded");

    let mut dp = IpvsDataplane::open_with_ledger(&ledger).unwrap();
    assert_eq!(dp.name(), "ipvs");
    let rep = dp.apply(&d1()).unwrap();
    // 7 new services; the pre-existing 198.18.0.3:80 adopted and edited in place (scheduler,
    // forwarding method, weight; .31 added, .39 removed).
    assert_eq!(report_counts(&rep), (7, 1, 0, 11, 1, 1), "{rep:?}");
    assert_eq!(rep.services_changed, vec![tcp("198.18.0.3:80")]);
    expect_ipvsadm(D1_IPVSADM, "after the first apply");
    let view = dumped(&dp);
    assert_eq!(
        view[&tcp("198.18.0.1:80")],
        "198.18.0.1:80 TCP wrr flags=0x0 timeout=0 -> 198.18.2.10:8080 fwd=0 w=1 -> \
         198.18.2.11:8080 fwd=0 w=2 -> 198.18.2.12:8080 fwd=0 w=0"
    );
    assert_eq!(
        view[&vs("198.18.0.2:53", Protocol::Udp)],
        "198.18.0.2:53 UDP sh flags=0x11 timeout=300 -> 198.18.2.20:5353 fwd=0 w=1"
    );
    assert_eq!(
        view[&tcp("[fd48:4c42::1]:443")],
        "[fd48:4c42::1]:443 TCP mh flags=0x10 timeout=0 -> [fd48:4c42::10]:443 fwd=3 w=1 -> \
         [fd48:4c42::11]:443 fwd=3 w=3"
    );
    assert_eq!(
        view[&tcp("[fd48:4c42::2]:80")],
        "[fd48:4c42::2]:80 TCP rr flags=0x0 timeout=0 -> [fd48:4c42::20]:80 fwd=2 w=1",
        "IPv6 TUN: IP_VS_CONN_F_TUNNEL"
    );
    let owned: BTreeSet<_> = dp.owned().copied().collect();
    assert_eq!(owned, d1().services.keys().copied().collect(), "the adopted one included");
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    assert!(ledger_text.contains("198.18.0.3:80 TCP"), "{ledger_text}");
    assert!(!ledger_text.contains("198.18.9.9"), "{ledger_text}");
    ok("first_apply_creates_and_adopts");

    let rep = dp.apply(&d1()).unwrap();
    assert!(rep.is_empty(), "{rep:?}");
    assert_eq!(dp.maintain().unwrap(), 0);
    expect_ipvsadm(D1_IPVSADM, "after re-applying and maintain");
    ok("reapply_is_a_no_op");

    let listener = TcpListener::bind("0.0.0.0:80").unwrap();
    connect_three_times(&listener);
    let st = stats_when(&dp, |st| st.services[&tcp("198.18.0.7:80")].new_conns >= 3);
    assert!(st.reasons.is_empty());
    assert!(!st.services.contains_key(&tcp("198.18.9.9:80")), "not ours");
    assert_eq!(st.services.len(), 8);
    let l = &st.services[&tcp("198.18.0.7:80")];
    assert_eq!(l.new_conns, 3, "{l:?}");
    assert!(l.packets >= 3 && l.bytes > 0, "{l:?}");
    let r = l.real_servers[&("127.0.0.1".parse::<IpAddr>().unwrap(), 80)];
    assert_eq!((r.weight, r.new_conns), (1, 3), "{r:?}");
    // DR real servers are reported under their configured port, not IPVS's virtual one.
    let c = &st.services[&tcp("[fd48:4c42::1]:443")];
    assert!(c.real_servers.contains_key(&("fd48:4c42::11".parse().unwrap(), 8443)), "{c:?}");
    assert_eq!(c.real_servers[&("fd48:4c42::11".parse().unwrap(), 8443)].weight, 3);
    ok("local_traffic_is_counted");

    let rep = dp.apply(&d2()).unwrap();
    assert_eq!(report_counts(&rep), (0, 3, 1, 2, 2, 2), "{rep:?}");
    expect_ipvsadm(D2_IPVSADM, "after the second apply");
    // Edited in place (SET_SERVICE, not delete + add): the counters survived.
    let st = dp.stats().unwrap();
    assert_eq!(st.services[&tcp("198.18.0.7:80")].new_conns, 3);
    connect_three_times(&listener);
    let st = stats_when(&dp, |st| st.services[&tcp("198.18.0.7:80")].new_conns >= 6);
    let l = &st.services[&tcp("198.18.0.7:80")];
    assert_eq!(l.new_conns, 6, "the drained 198.18.2.70 gets none: {l:?}");
    assert_eq!(l.real_servers[&("198.18.2.70".parse().unwrap(), 80)].new_conns, 0);
    ok("changes_apply_in_place");

    // Someone edits IPVS by hand; the next maintenance puts ha-lb's services back.
    run("ipvsadm", &["-D", "-t", "198.18.0.1:80"]);
    run("ipvsadm", &["-e", "-t", "198.18.0.3:80", "-r", "198.18.2.30:80", "-m", "-w", "9"]);
    run("ipvsadm", &["-a", "-t", "198.18.0.4:80", "-r", "198.18.2.41:80", "-m", "-w", "1"]);
    assert_eq!(dp.maintain().unwrap(), 0);
    expect_ipvsadm(D2_IPVSADM, "after maintain repaired the drift");
    ok("maintain_repairs_drift");

    // A restart that keeps the services: the new instance learns from the ledger that
    // 198.18.0.4:80 is ha-lb's, so dropping it from the configuration removes it.
    dp.keep_on_drop(true);
    drop(dp);
    expect_ipvsadm(D2_IPVSADM, "after a drop that keeps the services");
    let mut dp = IpvsDataplane::open_with_ledger(&ledger).unwrap();
    let rep = dp.apply(&d3()).unwrap();
    assert_eq!(rep.services_removed, vec![tcp("198.18.0.4:80")], "{rep:?}");
    assert_eq!(report_counts(&rep), (0, 0, 1, 0, 1, 0), "{rep:?}");
    let d3_text = without(D2_IPVSADM, "TCP 198.18.0.4:80 lc");
    expect_ipvsadm(&d3_text, "after the restart");
    ok("ledger_survives_a_restart");

    // The kernel refuses a multicast real server after the service exists: the apply fails
    // half-way for that virtual server — not for the others: a weight change planned after
    // it goes through (each virtual server on its own, as keepalived) — and the next apply
    // plans from what the kernel really holds.
    let mut d4 = d3();
    d4.services
        .insert(tcp("198.18.0.8:80"), spec(LbAlgo::Rr, LbKind::Nat, &[rs("224.0.0.1", 80, 1)]));
    let v6 = tcp("[fd48:4c42::2]:80");
    d4.services.get_mut(&v6).unwrap().real_servers[0].weight = 3;
    let e = dp.apply(&d4).unwrap_err().to_string();
    assert!(e.contains("224.0.0.1:80"), "{e}");
    println!("ipvs-uml: (expected) {e}");
    let partial = d3_text
        .replace("TCP 198.18.9.9:80 rr", "TCP 198.18.0.8:80 rr\nTCP 198.18.9.9:80 rr")
        .replace("-> [fd48:4c42::20]:80 Tunnel 1", "-> [fd48:4c42::20]:80 Tunnel 3");
    assert_ne!(partial, d3_text);
    expect_ipvsadm(&partial, "after an apply one virtual server of which the kernel refused");
    let rep = dp.apply(&d3()).unwrap();
    assert_eq!(rep.services_removed, vec![tcp("198.18.0.8:80")], "{rep:?}");
    expect_ipvsadm(&d3_text, "after recovering from a failed apply");
    ok("failed_apply_recovers");

    // keepalived can leave an IPv6 tunnel real server under an IPv4 service (IPVS allows it
    // while no sync thread runs). Adopted with the configuration's own real server, that one
    // is removed: DEL_DEST names the destination's family (without it the kernel looks the
    // address up as IPv4: ENOENT at every retry). check() finds every scheduler loaded.
    run("ipvsadm", &["-A", "-t", "198.18.0.20:80", "-s", "rr"]);
    run("ipvsadm", &["-a", "-t", "198.18.0.20:80", "-r", "[fd48:4c42::30]:80", "-i"]);
    assert!(ipvsadm().contains("[fd48:4c42::30]:80"), "{}", ipvsadm());
    let mut d5 = d3();
    d5.services
        .insert(tcp("198.18.0.20:80"), spec(LbAlgo::Rr, LbKind::Tun, &[rs("198.18.2.20", 80, 1)]));
    dp.check(&d5).unwrap();
    dp.apply(&d5).unwrap();
    let text = ipvsadm();
    assert!(!text.contains("fd48:4c42::30"), "{text}");
    assert!(text.contains("TCP 198.18.0.20:80 rr\n  -> 198.18.2.20:80 Tunnel 1\n"), "{text}");
    dp.apply(&d3()).unwrap();
    expect_ipvsadm(&d3_text, "after the mixed-family service went");
    ok("mixed_family_destination_is_removed");

    // lvs_sync_daemon with kernel IPVS: the kernel's sync thread, backup or master as the
    // synced instance is; one left running by someone else is replaced. The switch is made
    // on a thread of its own: set_sync returns at once (stopping a thread ipvsadm started a
    // moment before holds the request for seconds here, in UML).
    run("ipvsadm", &["--start-daemon", "master", "--mcast-interface", "lo", "--syncid", "7"]);
    let sync = |master| SyncDaemon { master, interface: "lo".into(), sync_id: 51 };
    let t = std::time::Instant::now();
    dp.set_sync(Some(sync(false))).unwrap();
    assert!(t.elapsed() < Duration::from_millis(200), "set_sync waited {:?}", t.elapsed());
    dp.sync_settle(Duration::from_secs(20)).unwrap();
    println!("ipvs-uml: sync thread switched in {:?}", t.elapsed());
    let daemons = run("ipvsadm", &["-L", "--daemon"]);
    assert!(daemons.contains("backup sync daemon (mcast=lo, syncid=51"), "{daemons}");
    assert!(!daemons.contains("master"), "{daemons}");
    dp.set_sync(Some(sync(true))).unwrap();
    dp.sync_settle(Duration::from_secs(20)).unwrap();
    let daemons = run("ipvsadm", &["-L", "--daemon"]);
    assert!(daemons.contains("master sync daemon (mcast=lo, syncid=51"), "{daemons}");
    assert!(!daemons.contains("backup"), "{daemons}");
    ok("sync_daemon_follows_the_role");

    drop(dp);
    let daemons = run("ipvsadm", &["-L", "--daemon"]);
    assert!(daemons.trim().is_empty(), "the sync daemon stops with the data plane: {daemons}");
    expect_ipvsadm(FOREIGN, "after dropping the data plane");
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    assert!(ledger_text.lines().all(|l| l.starts_with('#')), "{ledger_text}");
    ok("drop_removes_only_owned_services");
}
