//! `ha-lb run` end to end on the NAT director lab: health checks driving the XDP data plane
//! (detection, rise, `inhibit_on_failure`, quorum with hysteresis and the sorry server),
//! and VRRP + forwarding together (real-server death and director failover under traffic,
//! graceful stop make-before-break).
//!
//! What is asserted is what a client and an operator see: which real server answers new and
//! established connections, `ha-lb status --json`, and timings against the configured
//! intervals. Every wait is bounded; margins allow for 2 busy cores.

mod daemon_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    topology::{DirectorLab, Mode},
};

/// Scheduling and observation slack on top of a configured interval (status is polled every
/// 20 ms through `ha-lb status`, which itself takes a few ms; 2 cores shared with other
/// tests).
const MARGIN: Duration = Duration::from_millis(600);

/// A killed real server leaves the data plane within one `delay_loop` (TCP_CHECK, retry 0)
/// and comes back only after `rise` consecutive successful rounds once restarted.
#[test]
fn dead_real_server_leaves_within_one_check_interval_and_returns_after_rise() {
    const DELAY_LOOP: Duration = Duration::from_secs(1);
    const RISE: u32 = 3;
    let mut t = DirectorLab::build(Mode::Nat, 1, 3).unwrap();
    let pids = t.start_real_servers().unwrap();
    let s = Scratch::new("dhealth").unwrap();
    let check = format!("rise = {RISE}");
    let rss: Vec<String> = (1..=3).map(|n| real_server(n, 1, "", Some(&check))).collect();
    let d = single_director(
        &mut t,
        &s,
        &virtual_server("lb_algo = \"rr\"\ndelay_loop = 1\nretry = 0", &rss),
    );
    let m = spread(&t.client, 12);
    assert_eq!(names(&m), ["rs1", "rs2", "rs3"], "all three serve at start: {m:?}");

    // rs2's process dies: its port refuses, the next check round fails.
    t.lab.kill(pids[1]);
    let killed = Instant::now();
    eventually(
        DELAY_LOOP + MARGIN + Duration::from_secs(2),
        "rs2 down and out of the data plane",
        || health_weight(&d, &rs_key(2)) == Some(("down".into(), 0)),
    )
    .unwrap();
    let detection = killed.elapsed();
    let m = spread(&t.client, 15);
    eprintln!("rs2 detected down {detection:?} after the kill; then {m:?}");
    assert!(detection <= DELAY_LOOP + MARGIN, "detection took {detection:?} > delay_loop + margin");
    assert_eq!(names(&m), ["rs1", "rs3"], "no new connection reaches the dead rs2, none fails");

    // rs2 restarts: it must pass RISE rounds (each delay_loop apart) before it gets traffic.
    let spawned = Instant::now();
    spawn_real_server(&mut t, 1, "rs2", 80);
    let listening = Instant::now();
    let m = spread(&t.client, 6);
    assert!(!m.contains_key("rs2"), "rs2 got traffic before {RISE} successful rounds: {m:?}");
    eventually(RISE * DELAY_LOOP + MARGIN + Duration::from_secs(2), "rs2 up again", || {
        health_weight(&d, &rs_key(2)) == Some(("up".into(), 1))
    })
    .unwrap();
    let (since_listen, since_spawn) = (listening.elapsed(), spawned.elapsed());
    eprintln!(
        "rs2 up {since_listen:?} after it listened again (rise {RISE}, delay_loop {DELAY_LOOP:?})"
    );
    assert!(
        since_listen >= (RISE - 1) * DELAY_LOOP - Duration::from_millis(50),
        "rs2 came back after {since_listen:?}: fewer than {RISE} rounds"
    );
    // At most RISE rounds: the first success comes within one delay_loop of the restart.
    let bound = RISE * DELAY_LOOP + Duration::from_millis(900);
    assert!(since_spawn <= bound, "rs2 came back only after {since_spawn:?} > {bound:?}");
    let m = spread(&t.client, 12);
    assert_eq!(names(&m), ["rs1", "rs2", "rs3"], "rs2 serves again: {m:?}");
    assert!(m["rs2"] >= 3, "rs2 takes its rr share again: {m:?}");
}

/// A `virtual_server_group`: one virtual_server serves VIP:80 and VIP:8080 (two services in
/// the data plane), its real servers checked once for both; a dead real server leaves both.
#[test]
fn a_group_serves_each_member_and_a_dead_real_server_leaves_all() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 3).unwrap();
    let pids = t.start_real_servers().unwrap();
    let s = Scratch::new("dgroup").unwrap();
    let rss: Vec<String> = (1..=3).map(|n| real_server(n, 1, "", Some(""))).collect();
    let services = virtual_server("lb_algo = \"rr\"\ndelay_loop = 1\nretry = 0", &rss)
        .replace(&format!("address = \"{VIP_S}\"\nport = 80\n"), "group = \"web\"\n");
    let group = format!(
        "[[virtual_server_group]]\nname = \"web\"\nmembers = [\"{VIP_S} 80\", \"{VIP_S} 8080\"]\n\n"
    );
    let d = single_director(&mut t, &s, &format!("{group}{services}"));
    let alt: SocketAddr = format!("{VIP_S}:8080").parse().unwrap();
    for (to, m) in [(vip(), spread(&t.client, 9)), (alt, spread_to(&t.client, alt, 9))] {
        assert_eq!(names(&m), ["rs1", "rs2", "rs3"], "{to}: all three serve: {m:?}");
    }
    let st = d.status().unwrap();
    let listed: Vec<(&str, &str)> = st["virtual_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["group"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(
        listed,
        [(&*format!("{VIP_S}:80 TCP"), "web"), (&*format!("{VIP_S}:8080 TCP"), "web")]
    );

    // rs2 dies: the group's one check takes it out of both services.
    t.lab.kill(pids[1]);
    eventually(Duration::from_secs(1) + MARGIN + Duration::from_secs(2), "rs2 out of both", || {
        let st = d.status().unwrap();
        st["virtual_servers"].as_array().unwrap().iter().all(|v| {
            let r =
                v["real_servers"].as_array().unwrap().iter().find(|r| r["address"] == rs_key(2));
            r.is_some_and(|r| r["health"] == "down" && r["weight"] == 0)
        })
    })
    .unwrap();
    for (to, m) in [(vip(), spread(&t.client, 8)), (alt, spread_to(&t.client, alt, 8))] {
        assert_eq!(names(&m), ["rs1", "rs3"], "{to}: no new connection reaches rs2: {m:?}");
    }
}

/// `inhibit_on_failure`: a real server whose check fails stays in the data plane with weight
/// 0. Its established connection keeps being served by it; new connections avoid it. The
/// check targets a separate health listener (`connect_port`), so the service process — and
/// the established connection — stay alive while the health endpoint is down.
#[test]
fn inhibit_on_failure_drains_keeps_established_connection() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 3).unwrap();
    t.start_real_servers().unwrap();
    let health = spawn_real_server(&mut t, 0, "rs1-health", 8080);
    let s = Scratch::new("dinhibit").unwrap();
    let rss = vec![
        real_server(1, 1, "inhibit_on_failure = true", Some("connect_port = 8080")),
        real_server(2, 1, "", Some("")),
        real_server(3, 1, "", Some("")),
    ];
    let d = single_director(
        &mut t,
        &s,
        &virtual_server("lb_algo = \"rr\"\ndelay_loop = 0.5\nretry = 0", &rss),
    );
    let mut conn = KeepAlive::open_to(&t.client, "rs1");

    t.lab.kill(health);
    eventually(Duration::from_secs(3), "rs1 inhibited (down, weight 0, still listed)", || {
        health_weight(&d, &rs_key(1)) == Some(("down".into(), 0))
    })
    .unwrap();
    let st = d.status().unwrap();
    assert_eq!(rs_status(&st, &rs_key(1)).unwrap()["configured_weight"], 1);
    // The forwarding program's reasons are in the status: the keep-alive connection's
    // packets went in and out through NAT.
    assert!(st["forwarding"]["nat_in"].as_u64().unwrap_or(0) > 0, "{}", st["forwarding"]);
    assert!(st["forwarding"]["nat_out"].as_u64().unwrap_or(0) > 0, "{}", st["forwarding"]);
    for i in 0..3 {
        assert_eq!(
            conn.get().unwrap(),
            "rs1",
            "established connection, request {i}, after inhibit"
        );
    }
    let m = spread(&t.client, 12);
    assert_eq!(names(&m), ["rs2", "rs3"], "new connections avoid the inhibited rs1: {m:?}");
    assert_eq!(conn.get().unwrap(), "rs1", "established connection after new ones were scheduled");

    spawn_real_server(&mut t, 0, "rs1-health", 8080);
    eventually(Duration::from_secs(3), "rs1 back at weight 1", || {
        health_weight(&d, &rs_key(1)) == Some(("up".into(), 1))
    })
    .unwrap();
    let m = spread(&t.client, 12);
    assert_eq!(names(&m), ["rs1", "rs2", "rs3"], "rs1 takes new connections again: {m:?}");
    assert_eq!(conn.get().unwrap(), "rs1");
}

/// quorum 3 with hysteresis 1 over rs1 (weight 2) and rs2 (weight 2), sorry server rs3:
/// quorum holds while live weight ≥ 2, is lost below, and comes back only at ≥ 4. While it
/// is lost every new connection goes to the sorry server.
#[test]
fn sorry_server_serves_while_quorum_is_lost_with_hysteresis() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 3).unwrap();
    let pids = t.start_real_servers().unwrap();
    let s = Scratch::new("dsorry").unwrap();
    let rss = vec![real_server(1, 2, "", Some("")), real_server(2, 2, "", Some(""))];
    let d = single_director(
        &mut t,
        &s,
        &virtual_server(
            "lb_algo = \"rr\"\ndelay_loop = 0.5\nretry = 0\nquorum = 3\nhysteresis = 1\n\
             sorry_server = { address = \"198.19.0.13\", port = 80 }",
            &rss,
        ),
    );
    let quorum = |d: &HaLb| {
        d.status()
            .ok()
            .map(|st| (vs0(&st)["quorum_met"] == true, vs0(&st)["sorry_server_active"] == true))
    };
    assert_eq!(quorum(&d), Some((true, false)));
    let m = spread(&t.client, 8);
    assert_eq!(names(&m), ["rs1", "rs2"], "{m:?}");

    t.lab.kill(pids[0]);
    eventually(Duration::from_secs(3), "rs1 down", || {
        health_weight(&d, &rs_key(1)).map(|h| h.0) == Some("down".into())
    })
    .unwrap();
    assert_eq!(quorum(&d), Some((true, false)), "live 2 ≥ quorum − hysteresis: quorum holds");
    let m = spread(&t.client, 6);
    assert_eq!(names(&m), ["rs2"], "{m:?}");

    t.lab.kill(pids[1]);
    let lost = Instant::now();
    eventually(Duration::from_secs(3), "quorum lost, sorry server active", || {
        quorum(&d) == Some((false, true))
    })
    .unwrap();
    eprintln!("quorum lost {:?} after the last real server died", lost.elapsed());
    let m = spread(&t.client, 6);
    assert_eq!(names(&m), ["rs3"], "the sorry server takes every new connection: {m:?}");
    let st = d.status().unwrap();
    let sorry: Vec<_> = vs0(&st)["real_servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["sorry_server"] == true)
        .collect();
    assert_eq!(sorry.len(), 1);
    assert_eq!(sorry[0]["address"], "198.19.0.13:80");

    // rs1 back: live 2 < quorum + hysteresis = 4, so quorum stays lost (the dampener).
    spawn_real_server(&mut t, 0, "rs1", 80);
    eventually(Duration::from_secs(3), "rs1 up", || {
        health_weight(&d, &rs_key(1)).map(|h| h.0) == Some("up".into())
    })
    .unwrap();
    for _ in 0..10 {
        assert_eq!(quorum(&d), Some((false, true)), "live 2 < 4 must not regain quorum");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = spread(&t.client, 6);
    assert_eq!(names(&m), ["rs3"], "{m:?}");

    spawn_real_server(&mut t, 1, "rs2", 80);
    eventually(Duration::from_secs(3), "quorum regained, sorry server off", || {
        quorum(&d) == Some((true, false))
    })
    .unwrap();
    let m = spread(&t.client, 8);
    assert_eq!(names(&m), ["rs1", "rs2"], "back on the real servers: {m:?}");
    assert!(d.log_text().contains("quorum lost") && d.log_text().contains("quorum gained"));
}

const PAIR_ADVERT: f64 = 0.2;

/// Two directors (d1 priority 150, d2 100) with a checked wrr service on rs1..rs3; waits
/// for d1 to serve and d2 to be BACKUP with all real servers up.
///
/// d1 starts first and d2 once d1 is MASTER, as a pair is brought up in practice. Started
/// together, both can time out as BACKUP in the same instant (their Master_Down_Intervals
/// differ by only 39 ms at advert_int 0.2 s) and both go MASTER for one advert interval;
/// what follows a dual master is `dual_master_resolution_moves_traffic_back_to_the_winner`'s subject.
fn pair(t: &mut DirectorLab, s: &Scratch) -> (HaLb, HaLb) {
    pair_with(t, s, "xdp")
}

/// [`pair`] with `dataplane = <dataplane>`.
fn pair_with(t: &mut DirectorLab, s: &Scratch, dataplane: &str) -> (HaLb, HaLb) {
    let rss: Vec<String> = (1..=3).map(|n| real_server(n, 1, "", Some(""))).collect();
    let vs = virtual_server("lb_algo = \"wrr\"\ndelay_loop = 0.5\nretry = 0", &rss);
    let (n1, n2) = (t.directors[0].clone(), t.directors[1].clone());
    let conf = |n, peer, prio| {
        director_conf(n, Some(peer), prio, PAIR_ADVERT, &vs).replacen(
            "dataplane = \"xdp\"",
            &format!("dataplane = \"{dataplane}\""),
            1,
        )
    };
    let d1 = HaLb::start(&mut t.lab, &n1, s, "d1", &conf(1, 2, 150)).unwrap();
    wait_master_serving(t, &d1);
    let d2 = HaLb::start(&mut t.lab, &n2, s, "d2", &conf(2, 1, 100)).unwrap();
    eventually(Duration::from_secs(5), "d2 BACKUP in both instances", || {
        d2.state("VI_PUBLIC").as_deref() == Some("BACKUP")
            && d2.state("VI_GATEWAY").as_deref() == Some("BACKUP")
    })
    .unwrap();
    assert!(!holds(&n2, "eth0", VIP_S) && !holds(&n2, "eth1", GW_S));
    (d1, d2)
}

/// Traffic through the VIP (a new connection every 20 ms) survives a real-server death —
/// failures only until the check removes it — and the master's death (kill -9, links down):
/// new connections succeed again within Master_Down_Interval + margin, through the backup.
#[test]
fn pair_traffic_survives_real_server_death_and_director_failover() {
    const DELAY_LOOP: Duration = Duration::from_millis(500);
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    let pids = t.start_real_servers().unwrap();
    let s = Scratch::new("dpair").unwrap();
    let (d1, d2) = pair(&mut t, &s);
    let n2 = d2.node.clone();

    let traffic = Traffic::start(&t.client, Duration::from_millis(20), Duration::from_millis(250));
    std::thread::sleep(Duration::from_millis(500));
    let rs_killed = traffic.now();
    t.lab.kill(pids[1]);
    for d in [&d1, &d2] {
        eventually(Duration::from_secs(3), &format!("{} sees rs2 down", d.node.name), || {
            health_weight(d, &rs_key(2)) == Some(("down".into(), 0))
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));

    // d2 has never talked to the client (it ARPed for the VIP while d1 held it); make sure
    // no neighbour entry hides how replies are forwarded right after a takeover.
    let _ = n2.ip(&["neigh", "flush", "dev", "eth0"]);
    let killed = traffic.now();
    crash(&mut t, &d1);
    eventually(Duration::from_secs(3), "d2 holds both VIPs", || holds_both_vips(&n2)).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let log = traffic.stop();
    let ctx = describe(&log);
    // Before the real server died: every request answered.
    assert!(log.iter().filter(|r| r.at < rs_killed).all(|r| r.result.is_ok()), "{ctx}");
    // The dead real server: failures only within one check round of its death.
    let rs_window = rs_killed + DELAY_LOOP + MARGIN;
    let rs_failures: Vec<_> =
        log.iter().filter(|r| r.at >= rs_killed && r.at < killed && r.result.is_err()).collect();
    assert!(
        rs_failures.iter().all(|r| r.at < rs_window),
        "requests failed later than delay_loop + margin after rs2 died:\n{ctx}"
    );
    assert!(
        log.iter().filter(|r| r.at >= rs_window).all(|r| r
            .result
            .as_deref()
            .map(|w| w != "rs2")
            .unwrap_or(true)),
        "rs2 answered after it died?\n{ctx}"
    );
    // The director's death: outage from the kill to the first answered new connection
    // after the first failure (requests started just after the kill can still make it
    // before the kill and the link changes land).
    let first_fail = log
        .iter()
        .find(|r| r.at >= killed && r.result.is_err())
        .unwrap_or_else(|| panic!("no request failed after the master died?\n{ctx}"));
    let first_ok = log
        .iter()
        .find(|r| r.at > first_fail.at && r.result.is_ok())
        .unwrap_or_else(|| panic!("no request succeeded after the failover:\n{ctx}"));
    let outage = first_ok.at - killed;
    let mdi = master_down_interval(Duration::from_secs_f64(PAIR_ADVERT), 100);
    let after: Vec<_> = log.iter().filter(|r| r.at >= first_ok.at).collect();
    eprintln!(
        "rs2 death: {} failed requests; director failover: outage {outage:?} (MDI {mdi:?}), {} requests after it, {} failed",
        rs_failures.len(),
        after.len(),
        after.iter().filter(|r| r.result.is_err()).count()
    );
    assert!(
        outage >= mdi.saturating_sub(Duration::from_secs_f64(PAIR_ADVERT) + Duration::from_millis(50)),
        "outage {outage:?} shorter than a VRRP takeover can be (did traffic go through d1?):\n{ctx}"
    );
    // A request started just before the takeover may still be waiting out its 250 ms
    // timeout when the backup starts serving: that quantisation is part of the bound.
    let bound = mdi + Duration::from_millis(250) + MARGIN;
    assert!(outage <= bound, "failover outage {outage:?} > {bound:?}:\n{ctx}");
    assert!(after.len() >= 20, "too little traffic after the failover:\n{ctx}");
    assert!(
        after.iter().all(|r| matches!(r.result.as_deref(), Ok("rs1") | Ok("rs3"))),
        "after the takeover every new connection succeeds, on rs1/rs3:\n{ctx}"
    );
    assert_eq!(d2.state("VI_PUBLIC").as_deref(), Some("MASTER"));
}

/// SIGTERM to the master while traffic runs: it hands over make-before-break (priority 0,
/// VIPs kept until the backup took over), so at most the one request in flight at the switch
/// fails; afterwards its XDP programs are gone from both interfaces.
#[test]
fn graceful_stop_of_the_master_under_traffic_loses_at_most_one_request() {
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("dstop").unwrap();
    let (d1, d2) = pair(&mut t, &s);
    let (n1, n2) = (d1.node.clone(), d2.node.clone());
    for dev in ["eth0", "eth1"] {
        assert!(has_xdp(&n1, dev), "d1 {dev} has the forwarding program while running");
    }

    let traffic = Traffic::start(&t.client, Duration::from_millis(20), Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(600));
    let stopped_at = traffic.now();
    let sent = Instant::now();
    t.lab.signal(d1.pid, libc::SIGTERM).unwrap();
    eventually(Duration::from_secs(3), "d2 holds both VIPs", || holds_both_vips(&n2)).unwrap();
    let takeover = sent.elapsed();
    let status = t.lab.wait(d1.pid, Duration::from_secs(5)).unwrap();
    let exited = sent.elapsed();
    assert!(status.success(), "ha-lb exit status after SIGTERM: {status}\n{}", d1.log_text());
    std::thread::sleep(Duration::from_millis(1200));
    let log = traffic.stop();
    let ctx = describe(&log);

    let after: Vec<_> = log.iter().filter(|r| r.at >= stopped_at).collect();
    let failed = after.iter().filter(|r| r.result.is_err()).count();
    eprintln!(
        "graceful stop: d2 owned the VIPs after {takeover:?}, d1 exited after {exited:?}; {} requests after SIGTERM, {failed} failed",
        after.len()
    );
    // ≥ 1.3 s at one request per 20 ms, less the 500 ms a lost request waits.
    assert!(after.len() >= 30, "too little traffic across the stop:\n{ctx}");
    assert!(failed <= 1, "{failed} requests failed across a graceful stop:\n{ctx}");
    assert!(log.iter().filter(|r| r.at < stopped_at).all(|r| r.result.is_ok()), "{ctx}");

    for dev in ["eth0", "eth1"] {
        assert!(!has_xdp(&n1, dev), "d1 {dev} still has an XDP program after a graceful stop");
    }
    assert!(!holds(&n1, "eth0", VIP_S) && !holds(&n1, "eth1", GW_S), "d1 released the VIPs");
    assert_eq!(d2.state("VI_PUBLIC").as_deref(), Some("MASTER"));
    assert_eq!(d2.state("VI_GATEWAY").as_deref(), Some("MASTER"));
    let log1 = d1.log_text();
    assert!(log1.contains("ha-lb stopped"), "d1 log:\n{log1}");
    assert!(!log1.contains("did not hand over in time"), "d1 log:\n{log1}");
}

/// The MAC address `node` has in its neighbour table for `ip`, if any.
fn neigh_mac(node: &ha_lb_lab::Node, ip: &str) -> Option<String> {
    let s = node.sh(&format!("ip neigh show {ip}")).ok()?;
    s.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).map(String::from)
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Two masters at once (the directors cannot hear each other for a while: a partition, or
/// both starting in the same instant) end with the higher-priority one as the only master.
/// The loser announced itself with GARPs, so the winner must refresh the neighbours' caches
/// (keepalived answers a lower-priority advert with an advert and GARPs). Otherwise the
/// client keeps sending to the BACKUP — traffic then depends on a director that is not
/// master, and dies with it: here the backup host dies and the client is black-holed until
/// its ARP entry expires (15–45 s).
///
/// ha-lb's master answers a lower-priority advert (a second master) with an early advert
/// and one gratuitous burst, rate-limited to one per 10 × advert_int (`vrrp::machine`,
/// rule 5), which moves the caches back.
#[test]
fn dual_master_resolution_moves_traffic_back_to_the_winner() {
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("ddual").unwrap();
    let (d1, d2) = pair(&mut t, &s);
    let (n1, n2) = (d1.node.clone(), d2.node.clone());
    let (mac1, mac2) = (mac_str(n1.mac("eth0").unwrap()), mac_str(n2.mac("eth0").unwrap()));
    let isolate = |on: &str| {
        // Isolated bridge ports reach every other port but not each other: the directors
        // lose each other's adverts, clients and real servers still reach both.
        for p in ["d1f", "d1b", "d2f", "d2b"] {
            t.switch.exec("bridge", &["link", "set", "dev", p, "isolated", on]).unwrap();
        }
    };
    isolate("on");
    eventually(Duration::from_secs(3), "d2 MASTER too while partitioned", || holds_both_vips(&n2))
        .unwrap();
    eventually(Duration::from_secs(2), "the client follows d2's GARP", || {
        neigh_mac(&t.client, VIP_S).as_deref() == Some(mac2.as_str())
    })
    .unwrap();
    assert!(holds(&n1, "eth0", VIP_S), "d1 stays MASTER on its side of the partition");

    isolate("off");
    let healed = Instant::now();
    eventually(Duration::from_secs(3), "d2 steps down and removes its VIPs", || {
        !holds(&n2, "eth0", VIP_S) && !holds(&n2, "eth1", GW_S)
    })
    .unwrap();
    let stepped_down = healed.elapsed();
    let back = ha_lb_lab::wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
        (neigh_mac(&t.client, VIP_S).as_deref() == Some(mac1.as_str())).then_some(())
    });
    eprintln!(
        "partition healed: d2 BACKUP after {stepped_down:?}; client's VIP entry {} ({:?} after the heal)",
        neigh_mac(&t.client, VIP_S).unwrap_or_default(),
        healed.elapsed()
    );

    // The backup host dies: with the client's cache on d1 this costs nothing.
    let traffic = Traffic::start(&t.client, Duration::from_millis(20), Duration::from_millis(250));
    std::thread::sleep(Duration::from_millis(300));
    let killed = traffic.now();
    t.lab.kill(d2.pid);
    n2.ip(&["link", "set", "eth0", "down"]).unwrap();
    n2.ip(&["link", "set", "eth1", "down"]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let log = traffic.stop();
    let failed = log.iter().filter(|r| r.at >= killed && r.result.is_err()).count();
    let after = log.iter().filter(|r| r.at >= killed).count();
    eprintln!("the BACKUP died: {failed} of {after} requests after it failed");
    assert!(
        back.is_some(),
        "2 s after the dual master resolved, the client still sends the VIP's traffic to the \
         BACKUP d2 ({mac2}), not to the MASTER d1 ({mac1}): the winner sent no GARP"
    );
    assert!(failed <= 1, "{failed} requests failed when the BACKUP died:\n{}", describe(&log));
}

/// `dataplane = "tc"`: the same pair with the forwarding program at the TC ingress hook. The
/// master forwards through the VIP (the program's NAT counters in `ha-lb status`, no XDP
/// program on its interfaces), and the backup takes over when the master dies.
#[test]
fn tc_data_plane_pair_forwards_and_fails_over() {
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("dtc").unwrap();
    let (d1, d2) = pair_with(&mut t, &s, "tc");
    let m = spread(&t.client, 12);
    assert_eq!(names(&m), ["rs1", "rs2", "rs3"], "wrr over all three: {m:?}");
    let st = d1.status().unwrap();
    assert_eq!(st["dataplane"], "tc");
    let fwd = |k: &str| st["forwarding"][k].as_u64().unwrap_or(0);
    assert!(fwd("nat_in") >= 12 && fwd("nat_out") >= 12, "forwarded by ha_lb_tc: {st}");
    assert!(!has_xdp(&d1.node, "eth0") && !has_xdp(&d1.node, "eth1"), "no XDP at the TC hook");

    crash(&mut t, &d1);
    wait_master_serving(&t, &d2);
    let m = spread(&t.client, 6);
    assert_eq!(m.values().sum::<usize>(), 6, "every request answered through d2: {m:?}");
    let st = d2.status().unwrap();
    assert!(st["forwarding"]["nat_in"].as_u64().unwrap_or(0) >= 6, "d2 forwarded: {st}");
}

/// A second `ha-lb run` with the same control socket is refused before it touches anything:
/// the running daemon keeps its program, its VIPs and its traffic. (It used to open the data
/// plane first — with IPVS, adopting the running daemon's services and removing them as it
/// failed.)
#[test]
fn a_second_daemon_is_refused_before_touching_the_data_plane() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("dsecond").unwrap();
    let rss: Vec<String> = (1..=2).map(|n| real_server(n, 1, "", None)).collect();
    let d = single_director(&mut t, &s, &virtual_server("lb_algo = \"rr\"", &rss));
    let n = t.directors[0].clone();
    let config = std::fs::read_to_string(&d.config).unwrap();
    // The same file (its control_socket is d1's), its own log.
    let second = HaLb::start(&mut t.lab, &n, &s, "again", &config).unwrap();
    let st = t.lab.wait(second.pid, Duration::from_secs(5)).unwrap();
    assert!(!st.success(), "the second daemon must fail");
    let log = second.log_text();
    assert!(log.contains("another ha-lb is already running"), "{log}");
    assert!(!log.contains("XDP attached"), "it attached before refusing:\n{log}");
    assert!(has_xdp(&n, "eth0"), "the first daemon's program is still attached");
    assert!(holds_both_vips(&n));
    assert_eq!(d.state("VI_PUBLIC").as_deref(), Some("MASTER"));
    let m = spread(&t.client, 6);
    assert_eq!(names(&m), ["rs1", "rs2"], "{m:?}");

    // Found by an operator trial: a second daemon with another control socket (another file
    // for the same host) was not refused; with the TC hook it started, removed the running
    // master's VIPs as stale and ran the same VRIDs. One daemon per network namespace.
    let line = config.lines().find(|l| l.starts_with("control_socket")).unwrap();
    let other = config
        .replace(line, &format!("control_socket = \"{}\"", s.dir.join("other.sock").display()))
        .replace("dataplane = \"xdp\"", "dataplane = \"tc\"");
    assert_ne!(other, config);
    let third = HaLb::start(&mut t.lab, &n, &s, "other", &other).unwrap();
    let st = t.lab.wait(third.pid, Duration::from_secs(5)).unwrap();
    assert!(!st.success(), "a daemon with another control socket must fail too");
    let log = third.log_text();
    assert!(log.contains("already running in this network namespace"), "{log}");
    assert!(holds_both_vips(&n), "the running master's VIPs stay");
    assert_eq!(d.state("VI_PUBLIC").as_deref(), Some("MASTER"));
    let m = spread(&t.client, 6);
    assert_eq!(names(&m), ["rs1", "rs2"], "{m:?}");
}

/// Found by an operator trial: a master killed with kill -9 (its links up) kept its VIPs
/// while its forwarding program went with the process; once the backup had taken over, a
/// client whose neighbour entry resolved to the dead master got its connections reset.
/// `ha-lb cleanup` (the systemd unit's `ExecStopPost=`) removes them: every new resolution
/// then finds the backup, and each request is answered. It refuses to run beside a daemon.
#[test]
fn cleanup_after_a_crash_removes_the_dead_masters_vips() {
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("dclean").unwrap();
    let (d1, d2) = pair_with(&mut t, &s, "xdp");
    let bin = ha_lb_lab::topology::bin_path("ha-lb").unwrap();
    let cleanup = |d: &HaLb| {
        let out = d
            .node
            .command(bin.to_str().unwrap())
            .arg("cleanup")
            .arg("-c")
            .arg(&d.config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // Beside a running daemon: refused, nothing removed.
    let (ok, text) = cleanup(&d1);
    assert!(!ok && text.contains("already running in this network namespace"), "{text}");
    assert!(holds_both_vips(&d1.node));

    t.lab.kill(d1.pid);
    eventually(Duration::from_secs(10), "d2 MASTER", || {
        d2.state("VI_PUBLIC").as_deref() == Some("MASTER") && holds_both_vips(&d2.node)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d2.log_text()));
    assert!(holds_both_vips(&d1.node), "kill -9 leaves the VIPs behind");

    let (ok, text) = cleanup(&d1);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("removed VIP {VIP_S}/")), "{text}");
    assert!(!holds(&d1.node, "eth0", VIP_S) && !holds(&d1.node, "eth1", GW_S), "{text}");
    for i in 0..10 {
        t.client.ip(&["neigh", "flush", "all"]).unwrap();
        ha_lb_lab::topology::http_get(&t.client, vip(), Duration::from_millis(1000))
            .unwrap_or_else(|e| panic!("request {i} after a fresh resolution: {e}"));
    }
    // Again: nothing left.
    let (ok, text) = cleanup(&d1);
    assert!(ok && text.contains("no VIP left behind"), "{text}");
}

/// Found by an operator trial: a VIP removed by something else (`ip addr del`, a network
/// manager reconfiguring the interface) went unnoticed — the master advertised on and
/// `ha-lb status` showed it held, while the VIP no longer answered. The housekeeping (every
/// 5 s) puts it back, says so in the log, and the VIP answers again.
#[test]
fn a_held_vip_removed_by_someone_else_is_put_back() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("drestore").unwrap();
    let rss: Vec<String> = (1..=2).map(|n| real_server(n, 1, "", None)).collect();
    let d = single_director(&mut t, &s, &virtual_server("lb_algo = \"rr\"", &rss));
    let n = t.directors[0].clone();
    let line = n.sh("ip -o addr show dev eth0").unwrap();
    let cidr = line.split_whitespace().find(|w| w.starts_with(&format!("{VIP_S}/"))).unwrap();
    n.ip(&["addr", "del", cidr, "dev", "eth0"]).unwrap();
    assert!(!holds(&n, "eth0", VIP_S));
    eventually(Duration::from_secs(8), "the VIP back on eth0", || holds(&n, "eth0", VIP_S))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert!(d.log_text().contains("removed from the host by something else: added again"));
    assert_eq!(d.state("VI_PUBLIC").as_deref(), Some("MASTER"));
    t.client.ip(&["neigh", "flush", "all"]).unwrap();
    let m = spread(&t.client, 4);
    assert_eq!(names(&m), ["rs1", "rs2"], "{m:?}");
}
