//! VRRP failover between ha-lb daemons in a namespace lab: elections among three nodes,
//! kill -9, graceful stop (make-before-break, also handing over to keepalived), preemption and
//! `nopreempt`, unicast mode, and tracking (script, own interface) moving the VIP.
//!
//! Timers are VRRPv3 at advert_int 0.1 s unless a test says otherwise; every wait is bounded.

mod vrrp_support;

use std::time::{Duration, Instant};

use ha_lb_lab::{
    daemon::{eventually, holds, start_keepalived, HaLb, Scratch},
    frame::{self, Eth},
    packet::PacketSocket,
    probe::Prober,
    topology::{DirectorLab, Mode, VIP},
};
use vrrp_support::*;

fn state(d: &HaLb) -> String {
    d.state("VI_1").unwrap_or_default()
}

/// Three nodes: the highest priority wins and the others stay BACKUP; kill -9 of the master
/// (and its link, as a dead host) → the next highest takes over within its
/// Master_Down_Interval, and the lowest never becomes MASTER on the way.
#[test]
fn three_nodes_elect_highest_and_next_highest_takes_over_after_kill() {
    let mut t = DirectorLab::build(Mode::Dr, 3, 0).unwrap();
    let s = Scratch::new("vrrp3").unwrap();
    let d = t.directors.clone();
    let cfg = [Inst::new(3, 200, 0.1), Inst::new(3, 150, 0.1), Inst::new(3, 100, 0.1)];
    let mut h = Vec::new();
    for i in 0..3 {
        let name = format!("d{}", i + 1);
        h.push(HaLb::start(&mut t.lab, &d[i], &s, &name, &cfg[i].halb(&name)).unwrap());
    }
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d[0], "eth0", V)).unwrap();
    eventually(Duration::from_secs(3), "d2 and d3 BACKUP", || {
        state(&h[1]) == "BACKUP" && state(&h[2]) == "BACKUP"
    })
    .unwrap();
    let held = hold_pattern(&[&d[0], &d[1], &d[2]], Duration::from_millis(1500));
    assert_eq!(held, vec![Always, Never, Never], "only d1 holds the VIP");
    assert_eq!(state(&h[0]), "MASTER");

    // (A daemon that starts late can lose the start-up race for a moment: count from here.)
    let d3_master = counter(&h[2], "became_master");
    let w2 = AddrWatch::start(&d[1]);
    let w3 = AddrWatch::start(&d[2]);
    let prober =
        Prober::start(&t.client, VIP, Duration::from_millis(10), Duration::from_secs(8)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let kill_at = prober.elapsed();
    let killed = Instant::now();
    kill_host(&mut t.lab, &d[0], h[0].pid);
    eventually(Duration::from_secs(3), "d2 holds the VIP", || holds(&d[1], "eth0", V)).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let log = prober.stop().unwrap();
    let outage = log.outage_after(kill_at).expect("answers after the kill");
    let took = w2.added_after(killed).expect("d2 added the VIP") - killed;
    let mdi = cfg[1].mdi();
    eprintln!("3 nodes: d2 added the VIP {took:?} after the kill (MDI {mdi:?}), ICMP outage {outage:?}; d3 events {:?}", w3.events().len());
    assert!(took <= mdi + Duration::from_millis(100), "d2 took {took:?} > MDI {mdi:?} + 100 ms");
    assert!(took + Duration::from_millis(100) >= mdi, "d2 took {took:?}, before MDI {mdi:?}?");
    assert!(outage <= mdi + Duration::from_millis(100), "outage {outage:?}");
    assert_eq!(state(&h[1]), "MASTER");
    assert_eq!(state(&h[2]), "BACKUP");
    assert!(w3.events().is_empty(), "d3 (lowest) touched the VIP: {:?}", w3.events());
    assert_eq!(
        counter(&h[2], "became_master"),
        d3_master,
        "d3 was MASTER on the way\n{}",
        h[2].log_text()
    );
    assert!(!holds(&d[2], "eth0", V));
}

enum Peer {
    HaLb,
    Keepalived,
}

/// SIGTERM to the master: it sends priority 0 and keeps the VIP until the backup took over
/// (make-before-break). The backup adds the VIP within Skew_Time + 100 ms of the priority-0
/// advert, the old master removes it only after that (one advert_int later), and a client
/// pinging every 10 ms loses nothing.
fn graceful_stop(peer: Peer) {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("vrrpterm").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let (c1, c2) = (Inst::new(3, 150, 0.1), Inst::new(3, 100, 0.1));
    // d1 first, so it is MASTER before d2 starts and has never heard d2 (the usual pair:
    // a backup never advertises).
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &c1.halb("d1")).unwrap();
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    let b = match peer {
        Peer::HaLb => Some(HaLb::start(&mut t.lab, &d2, &s, "d2", &c2.halb("d2")).unwrap()),
        Peer::Keepalived => {
            start_keepalived(&mut t.lab, &d2, &s, "d2", &c2.keepalived("d2")).unwrap();
            None
        }
    };
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(!holds(&d2, "eth0", V), "both hold the VIP before the stop");
    if let Some(b) = &b {
        assert_eq!(state(b), "BACKUP");
    }

    let cap = Capture::start(&t.client, "eth0", is_vrrp);
    let w1 = AddrWatch::start(&d1);
    let w2 = AddrWatch::start(&d2);
    let prober =
        Prober::start(&t.client, VIP, Duration::from_millis(10), Duration::from_secs(8)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let term_at = prober.elapsed();
    let termed = Instant::now();
    t.lab.signal(a.pid, libc::SIGTERM).unwrap();
    eventually(Duration::from_secs(2), "d2 holds the VIP", || holds(&d2, "eth0", V)).unwrap();
    let status = t.lab.wait(a.pid, Duration::from_secs(5)).expect("d1 exits after handing over");
    assert!(status.success(), "d1 exit status {status:?}\n{}", a.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let log = prober.stop().unwrap();
    let frames = cap.stop();

    let prio0 = frames
        .iter()
        .find(|(t, f)| {
            *t >= termed && vrrp_of(f).is_some_and(|(src, _, _, p)| src == dir_ip(1) && p == 0)
        })
        .map(|(t, _)| *t)
        .expect("d1 sent a priority-0 advert");
    let added = w2.added_after(termed).expect("d2 added the VIP");
    let removed = w1.removed_after(termed).expect("d1 removed the VIP");
    let skew = c2.skew();
    let takeover = added.saturating_duration_since(prio0);
    let outage = log.outage_after(term_at).expect("answers after the stop");
    let lost_after: Vec<usize> = (0..log.sent.len())
        .filter(|i| {
            log.sent[*i] > term_at
                && log.sent[*i] + Duration::from_millis(200) < log.sent[log.sent.len() - 1]
        })
        .filter(|i| !log.answered.iter().any(|(s, _)| *s as usize == *i))
        .collect();
    eprintln!(
        "graceful stop ({}): prio-0 → d2 VIP {takeover:?} (skew {skew:?}); d1 removed {:?} after / {:?} before d2 added; \
         probes sent {} lost after SIGTERM {:?}, outage {outage:?}",
        if b.is_some() { "ha-lb backup" } else { "keepalived backup" },
        removed.saturating_duration_since(added),
        added.saturating_duration_since(removed),
        log.sent.len(),
        lost_after,
    );
    assert!(added > prio0, "d2 added the VIP before d1's priority-0 advert");
    assert!(
        takeover <= skew + Duration::from_millis(100),
        "takeover {takeover:?} > skew {skew:?} + 100 ms"
    );
    if b.is_some() {
        assert!(
            takeover + Duration::from_millis(5) >= skew,
            "takeover {takeover:?} < skew {skew:?}"
        );
    }
    assert!(removed >= added, "break before make: d1 removed the VIP before d2 added it");
    // ... and not much later: one advert_int of linger (100 ms), not a probation period.
    assert!(
        removed - added <= Duration::from_millis(180),
        "d1 kept the VIP {:?} after d2 had it",
        removed - added
    );
    // Make-before-break: some director always holds the VIP, and the GARP that moves the
    // client happens while both do, so no probe is lost. That is what is asserted:
    // `outage_after` is measured on send times, and a prober thread the scheduler delays
    // (2 cores, tests in parallel) shows gaps of 10-25 ms with every probe answered.
    assert!(lost_after.is_empty(), "probes lost on a graceful stop: {lost_after:?}");
    assert!(!holds(&d1, "eth0", V), "d1 kept the VIP after exiting");
    if let Some(b) = &b {
        assert_eq!(state(b), "MASTER");
        assert_eq!(counter(b, "rx_errors"), 0);
    } else {
        let klog = std::fs::read_to_string(s.dir.join("d2.log")).unwrap();
        assert!(klog.contains("Entering MASTER STATE"), "keepalived log:\n{klog}");
        let errs = keepalived_protocol_errors(&klog);
        assert!(errs.is_empty(), "keepalived complained: {errs:#?}");
    }
}

#[test]
fn graceful_stop_make_before_break_loses_no_probe() {
    graceful_stop(Peer::HaLb);
}

#[test]
fn graceful_stop_hands_over_to_keepalived_backup_without_loss() {
    graceful_stop(Peer::Keepalived);
}

/// d1 (150) is killed, d2 (100) takes over; d1 comes back (fresh daemon, link up) and
/// preempts: it holds the VIP again and d2 releases it. With `nopreempt` on both
/// (state BACKUP), the returning d1 stays BACKUP and d2 keeps the VIP.
fn old_master_returns(nopreempt: bool) {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new(if nopreempt { "vrrpnopre" } else { "vrrppre" }).unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let extra = if nopreempt { "state = \"BACKUP\"\nnopreempt = true" } else { "" };
    let c1 = Inst::new(3, 150, 0.1).extra(extra);
    let c2 = Inst::new(3, 100, 0.1).extra(extra);
    // d1 first: with nopreempt, whoever is MASTER first keeps it, and both daemons start
    // as BACKUP with down timers only 20 ms apart.
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &c1.halb("d1")).unwrap();
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    let b = HaLb::start(&mut t.lab, &d2, &s, "d2", &c2.halb("d2")).unwrap();
    eventually(Duration::from_secs(2), "d2 BACKUP", || state(&b) == "BACKUP").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(holds(&d1, "eth0", V) && !holds(&d2, "eth0", V));
    kill_host(&mut t.lab, &d1, a.pid);
    eventually(Duration::from_secs(3), "d2 holds the VIP", || holds(&d2, "eth0", V)).unwrap();
    // The dead host comes back: link up, a new daemon (the stale VIP is removed at start).
    d1.ip(&["link", "set", "eth0", "up"]).unwrap();
    let w1 = AddrWatch::start(&d1);
    let restarted = Instant::now();
    let a2 = HaLb::start(&mut t.lab, &d1, &s, "d1-again", &c1.halb("d1")).unwrap();
    if nopreempt {
        eventually(Duration::from_secs(3), "returning d1 BACKUP", || state(&a2) == "BACKUP")
            .unwrap();
        let held = hold_pattern(&[&d1, &d2], Duration::from_secs(2));
        assert_eq!(held, vec![Never, Always], "nopreempt: d2 keeps the VIP\n{}", a2.log_text());
        assert_eq!(state(&a2), "BACKUP");
        assert_eq!(field(&a2, "master").as_str(), Some("198.18.0.2"));
        assert_eq!(counter(&a2, "became_master"), 0);
        assert_eq!(state(&b), "MASTER");
    } else {
        eventually(Duration::from_secs(3), "d1 preempts", || {
            holds(&d1, "eth0", V) && !holds(&d2, "eth0", V)
        })
        .unwrap();
        let took = w1.added_after(restarted).expect("d1 added the VIP") - restarted;
        eprintln!("preempt: d1 holds the VIP {took:?} after its daemon was restarted");
        let held = hold_pattern(&[&d1, &d2], Duration::from_millis(1000));
        assert_eq!(held, vec![Always, Never], "after preemption");
        assert_eq!(state(&a2), "MASTER");
        assert_eq!(state(&b), "BACKUP");
        assert_eq!(counter(&a2, "became_master"), 1);
    }
    assert_eq!(counter(&b, "rx_errors"), 0);
}

#[test]
fn preempt_returning_higher_priority_takes_the_vip_back() {
    old_master_returns(false);
}

#[test]
fn nopreempt_returning_higher_priority_stays_backup() {
    old_master_returns(true);
}

/// Unicast (`unicast_src_ip`/`unicast_peer`): the election and a kill -9 failover work, and
/// a stream of higher-priority unicast adverts from a host that is not a peer changes nothing
/// and is counted as ignored.
#[test]
fn unicast_elects_fails_over_and_ignores_non_peers() {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("vrrpuni").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let c1 = Inst::new(3, 150, 0.1).unicast(dir_ip(1), &[dir_ip(2)]);
    let c2 = Inst::new(3, 100, 0.1).unicast(dir_ip(2), &[dir_ip(1)]);
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &c1.halb("d1")).unwrap();
    let b = HaLb::start(&mut t.lab, &d2, &s, "d2", &c2.halb("d2")).unwrap();
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    eventually(Duration::from_secs(2), "d2 BACKUP", || state(&b) == "BACKUP").unwrap();
    // The adverts really are unicast: the client sees none of them.
    let cap = Capture::start(&t.client, "eth0", is_vrrp);
    std::thread::sleep(Duration::from_millis(500));
    assert!(cap.stop().is_empty(), "unicast adverts reached a third host");
    let received = counter(&b, "adverts_received");
    assert!(received >= 3, "d2 received {received} adverts");

    // A non-peer on the segment (the client, 198.18.0.10) sends priority-254 unicast adverts
    // to both directors, on schedule, for 2 s.
    let (m1, m2, mc) =
        (d1.mac("eth0").unwrap(), d2.mac("eth0").unwrap(), t.client.mac("eth0").unwrap());
    let client_ip = ip4(ha_lb_lab::topology::CLIENT);
    let ign = (counter(&a, "adverts_ignored"), counter(&b, "adverts_ignored"));
    let became = (counter(&a, "became_master"), counter(&b, "became_master"));
    let sender = t.client.run(|| PacketSocket::open("eth0").unwrap()).unwrap();
    let rogue = std::thread::spawn(move || {
        for _ in 0..20 {
            for (mac, dst) in [(m1, dir_ip(1)), (m2, dir_ip(2))] {
                let msg =
                    frame::vrrp(3, VRID, 254, 10, &[ip4(V.parse().unwrap())], client_ip, ip4(dst));
                sender
                    .send(&frame::ip(
                        Eth { src: mc, dst: mac },
                        client_ip,
                        ip4(dst),
                        255,
                        112,
                        &msg,
                    ))
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let held = hold_pattern(&[&d1, &d2], Duration::from_millis(2500));
    rogue.join().unwrap();
    assert_eq!(held, vec![Always, Never], "a non-peer moved the VIP");
    assert_eq!((state(&a), state(&b)), ("MASTER".into(), "BACKUP".into()));
    let ign2 = (counter(&a, "adverts_ignored"), counter(&b, "adverts_ignored"));
    assert_eq!((ign2.0 - ign.0, ign2.1 - ign.1), (20, 20), "non-peer adverts counted as ignored");
    assert_eq!((counter(&a, "became_master"), counter(&b, "became_master")), became);

    // Failover.
    let w2 = AddrWatch::start(&d2);
    let killed = Instant::now();
    kill_host(&mut t.lab, &d1, a.pid);
    eventually(Duration::from_secs(3), "d2 holds the VIP", || holds(&d2, "eth0", V)).unwrap();
    let took = w2.added_after(killed).unwrap() - killed;
    eprintln!("unicast: d2 added the VIP {took:?} after the kill (MDI {:?})", c2.mdi());
    assert!(took <= c2.mdi() + Duration::from_millis(100), "took {took:?}");
    assert_eq!(state(&b), "MASTER");
}

/// A tracking script with weight 0 that starts failing puts the master in FAULT: it removes
/// the VIP and sends priority 0, the peer takes over; when the script succeeds again the
/// higher-priority node preempts back. With a negative weight, the failure drops the
/// effective priority below the peer's instead (BACKUP, not FAULT).
fn track_script(weight: i32) {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("vrrptrack").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let flag = s.dir.join("healthy");
    std::fs::write(&flag, "").unwrap();
    let c1 = Inst::new(3, 150, 0.1).extra("track_script = [\"chk\"]").tables(&format!(
        "[[vrrp_script]]\nname = \"chk\"\nscript = [\"/usr/bin/test\", \"-f\", \"{}\"]\n\
         interval = 0.1\nweight = {weight}\nrise = 1\nfall = 1\n",
        flag.display()
    ));
    let c2 = Inst::new(3, 100, 0.1);
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &c1.halb("d1")).unwrap();
    let b = HaLb::start(&mut t.lab, &d2, &s, "d2", &c2.halb("d2")).unwrap();
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    eventually(Duration::from_secs(2), "d2 BACKUP", || state(&b) == "BACKUP").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&a), "MASTER", "{}", a.log_text());

    let w2 = AddrWatch::start(&d2);
    let failed = Instant::now();
    std::fs::remove_file(&flag).unwrap();
    eventually(Duration::from_secs(3), "d2 holds the VIP", || {
        holds(&d2, "eth0", V) && !holds(&d1, "eth0", V)
    })
    .unwrap();
    let took = w2.added_after(failed).unwrap() - failed;
    let want = if weight == 0 { "FAULT" } else { "BACKUP" };
    eventually(Duration::from_secs(1), want, || state(&a) == want).unwrap();
    let eff = field(&a, "effective_priority").as_u64();
    eprintln!("track_script weight {weight}: d2 holds the VIP {took:?} after the file went; d1 {want} at {eff:?}");
    // One script interval, plus (weight 0) priority 0 → Skew_Time, or (weight < 0) the early
    // advert at the lower priority → d2 preempts after Skew_Time, plus scheduling.
    assert!(
        took <= Duration::from_millis(100) + c2.skew() + Duration::from_millis(300),
        "took {took:?}"
    );
    assert_eq!(eff, Some(if weight == 0 { 150 } else { (150 + weight) as u64 }));
    let why = field(&a, "fault_reason");
    if weight == 0 {
        assert_eq!(why.as_str(), Some("track_script chk"), "status says why");
    } else {
        assert!(why.is_null(), "not in FAULT: {why}");
    }
    let held = hold_pattern(&[&d1, &d2], Duration::from_millis(700));
    assert_eq!(held, vec![Never, Always], "VIP while d1's script fails");

    // A reload keeps the failure: d1's tracker is rebuilt from the script's last state (it
    // used to start from "passing", and the script reports changes only: d1 took the VIP
    // back and kept it while its check failed).
    t.lab.signal(a.pid, libc::SIGHUP).unwrap();
    eventually(Duration::from_secs(3), "d1 reloaded", || {
        a.status().map(|s| s["reloads"].as_u64() == Some(1)).unwrap_or(false)
    })
    .unwrap();
    let held = hold_pattern(&[&d1, &d2], Duration::from_millis(700));
    assert_eq!(held, vec![Never, Always], "VIP after a reload while d1's script fails");
    assert_eq!(state(&a), want, "after the reload");
    assert_eq!(field(&a, "effective_priority").as_u64(), eff);

    std::fs::write(&flag, "").unwrap();
    eventually(Duration::from_secs(3), "d1 takes the VIP back", || {
        holds(&d1, "eth0", V) && !holds(&d2, "eth0", V)
    })
    .unwrap();
    eventually(Duration::from_secs(1), "d1 MASTER / d2 BACKUP", || {
        state(&a) == "MASTER" && state(&b) == "BACKUP"
    })
    .unwrap();
    assert_eq!(field(&a, "effective_priority").as_u64(), Some(150));
    assert_eq!(counter(&b, "rx_errors") + counter(&a, "rx_errors"), 0);
}

#[test]
fn track_script_weight_0_failure_is_fault_and_moves_the_vip() {
    track_script(0);
}

#[test]
fn track_script_negative_weight_drops_priority_below_peer() {
    track_script(-60);
}

/// The instance's own interface going down (daemon alive) → FAULT, VIP removed, the peer
/// takes over after its Master_Down_Interval (the priority-0 advert cannot leave a down
/// link); link up → the higher-priority node preempts back.
#[test]
fn instance_link_down_moves_vip_and_link_up_brings_it_back() {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("vrrplink").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let (c1, c2) = (Inst::new(3, 150, 0.1), Inst::new(3, 100, 0.1));
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &c1.halb("d1")).unwrap();
    let b = HaLb::start(&mut t.lab, &d2, &s, "d2", &c2.halb("d2")).unwrap();
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    eventually(Duration::from_secs(2), "d2 BACKUP", || state(&b) == "BACKUP").unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let w2 = AddrWatch::start(&d2);
    let down = Instant::now();
    d1.ip(&["link", "set", "eth0", "down"]).unwrap();
    eventually(Duration::from_secs(3), "d2 holds the VIP", || holds(&d2, "eth0", V)).unwrap();
    eventually(Duration::from_secs(1), "d1 FAULT without the VIP", || {
        state(&a) == "FAULT" && !holds(&d1, "eth0", V)
    })
    .unwrap();
    let took = w2.added_after(down).unwrap() - down;
    eprintln!("link down: d2 holds the VIP {took:?} after (MDI {:?})", c2.mdi());
    assert!(took <= c2.mdi() + Duration::from_millis(150), "took {took:?}");
    assert!(a.log_text().contains("tracked interface changed"), "{}", a.log_text());

    let up = Instant::now();
    d1.ip(&["link", "set", "eth0", "up"]).unwrap();
    eventually(Duration::from_secs(3), "d1 holds the VIP again, d2 released it", || {
        holds(&d1, "eth0", V) && !holds(&d2, "eth0", V)
    })
    .unwrap();
    eprintln!("link up: d1 holds the VIP again after {:?}", up.elapsed());
    eventually(Duration::from_secs(1), "d1 MASTER / d2 BACKUP", || {
        state(&a) == "MASTER" && state(&b) == "BACKUP"
    })
    .unwrap();
    let held = hold_pattern(&[&d1, &d2], Duration::from_millis(700));
    assert_eq!(held, vec![Always, Never]);
}

/// With `dont_track_primary` the instance's own link going down is not a fault: d1 stays
/// MASTER with its VIP (cross-connected pairs, whose adverts also travel another way); and
/// it is still an election member: link up, it goes on as MASTER.
#[test]
fn dont_track_primary_keeps_the_master_when_its_link_goes_down() {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("vrrpdtp").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let c1 = Inst::new(3, 150, 0.1).extra("dont_track_primary = true");
    let c2 = Inst::new(3, 100, 0.1);
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &c1.halb("d1")).unwrap();
    let b = HaLb::start(&mut t.lab, &d2, &s, "d2", &c2.halb("d2")).unwrap();
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    eventually(Duration::from_secs(2), "d2 BACKUP", || state(&b) == "BACKUP").unwrap();

    d1.ip(&["link", "set", "eth0", "down"]).unwrap();
    // The peer hears nothing and takes over after its Master_Down_Interval.
    eventually(Duration::from_secs(3), "d2 holds the VIP", || holds(&d2, "eth0", V)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&a), "MASTER", "{}", a.log_text());
    assert!(holds(&d1, "eth0", V), "d1 keeps its VIP");
    assert!(!a.log_text().contains("entering FAULT"), "{}", a.log_text());

    d1.ip(&["link", "set", "eth0", "up"]).unwrap();
    eventually(Duration::from_secs(3), "d1 MASTER, d2 back to BACKUP", || {
        state(&a) == "MASTER" && state(&b) == "BACKUP" && !holds(&d2, "eth0", V)
    })
    .unwrap();
}

/// A track script whose program is missing: `check --host` refuses the file, but `run`
/// starts, disables the tracker as keepalived does (the instance is MASTER, not FAULT: a pair
/// updated alike must not go down together for a lost `killall`) and says so in status.
#[test]
fn a_track_script_that_cannot_run_is_disabled_not_fatal() {
    let mut t = DirectorLab::build(Mode::Dr, 1, 0).unwrap();
    let s = Scratch::new("vrrpnoscript").unwrap();
    let d1 = t.directors[0].clone();
    let c1 = Inst::new(3, 150, 0.1).extra("track_script = [\"chk_gone\"]").tables(
        "[[vrrp_script]]\nname = \"chk_gone\"\nscript = \"hlb-no-such-program -0 haproxy\"",
    );
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &c1.halb("d1")).unwrap();
    eventually(Duration::from_secs(5), "d1 MASTER with the VIP", || {
        state(&a) == "MASTER" && holds(&d1, "eth0", V)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_text()));
    let st = a.status().unwrap();
    let msgs = st["scripts_not_runnable"].as_array().cloned().unwrap_or_default();
    assert_eq!(msgs.len(), 1, "{st}");
    assert!(
        msgs[0].as_str().unwrap().starts_with("vrrp_script \"chk_gone\" cannot be run"),
        "{st}"
    );
    assert!(a.log_text().contains("cannot be run"), "{}", a.log_text());
}

/// Two daemons started in the same instant (multicast, so both learn the allow-list; advert_int
/// 0.2 s, 250/10): the higher one's down timer fires first (Skew_Time), and the lower one,
/// still learning its peers, accepts its first advert at once: it never becomes MASTER.
/// "The same instant" is within the two Skew_Times' difference, (250 - 10) / 256 × 0.2 s =
/// 187 ms (with 150/100 it was 39 ms, and a loaded CI machine once took 76 ms to start the
/// second daemon).
#[test]
fn simultaneous_start_elects_the_higher_without_a_dual_master() {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("vrrprace").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let c1 = Inst::new(3, 250, 0.2);
    let c2 = Inst::new(3, 10, 0.2);
    let w2 = AddrWatch::start(&d2);
    // The lower one first: the start-up gap counts against the property under test (the lower
    // one's down timer starts earlier).
    let b = HaLb::start(&mut t.lab, &d2, &s, "d2", &c2.halb("d2")).unwrap();
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &c1.halb("d1")).unwrap();
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    eventually(Duration::from_secs(3), "d2 BACKUP", || state(&b) == "BACKUP").unwrap();
    let held = hold_pattern(&[&d1, &d2], Duration::from_millis(1000));
    let logs = || format!("d1:\n{}\nd2:\n{}", a.log_text(), b.log_text());
    assert_eq!(held, vec![Always, Never], "{}", logs());
    assert_eq!(state(&a), "MASTER");
    assert_eq!(counter(&b, "became_master"), 0, "d2 was MASTER at start-up\n{}", logs());
    assert!(w2.events().is_empty(), "d2 touched the VIP: {:?}\n{}", w2.events(), logs());
}
