//! VRRP interop with real keepalived (Debian 2.2.7) in a namespace lab: ha-lb master +
//! keepalived backup and the reverse, VRRPv2 (advert_int 1 s, keepalived's v2 minimum) and
//! VRRPv3 (0.1 s), multicast and unicast.
//!
//! Each case: the higher priority (150, on d1) wins the election; a graceful stop of the
//! master hands over to the backup within Skew_Time + 100 ms of its priority-0 advert; the
//! master's daemon comes back and preempts; kill -9 (+ link down) of the master → the backup
//! takes over within its Master_Down_Interval + 100 ms. Neither side logs a protocol error:
//! keepalived's log has no "bad"/"invalid"/"checksum"/"error" line, and ha-lb's `rx_errors`
//! and `adverts_ignored` stay 0 for keepalived's adverts.

mod vrrp_support;

use std::time::{Duration, Instant};

use ha_lb_lab::{
    daemon::{eventually, holds, start_keepalived, HaLb, Scratch},
    topology::{DirectorLab, Mode},
    Node,
};
use vrrp_support::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    HaLb,
    Keepalived,
}

/// A running daemon of either kind on a director.
struct Daemon {
    who: Who,
    pid: u32,
    halb: Option<HaLb>,
    log: std::path::PathBuf,
}

fn start(t: &mut DirectorLab, s: &Scratch, who: Who, node: &Node, name: &str, c: &Inst) -> Daemon {
    match who {
        Who::HaLb => {
            let h = HaLb::start(&mut t.lab, node, s, name, &c.halb(name)).unwrap();
            Daemon { who, pid: h.pid, log: h.log.clone(), halb: Some(h) }
        }
        Who::Keepalived => {
            let pid = start_keepalived(&mut t.lab, node, s, name, &c.keepalived(name)).unwrap();
            Daemon { who, pid, halb: None, log: s.dir.join(format!("{name}.log")) }
        }
    }
}

impl Daemon {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// ha-lb: (rx_errors, adverts_ignored, adverts_received); keepalived: protocol complaints.
    fn check_clean(&self, what: &str) {
        match &self.halb {
            Some(h) => {
                let c = counters(h);
                assert!(c.contains_key("rx_errors"), "{what}: no status from ha-lb");
                assert_eq!(
                    (c["rx_errors"], c["adverts_ignored"]),
                    (0, 0),
                    "{what}: ha-lb rejected keepalived's adverts: {c:?}\n{}",
                    h.log_text()
                );
            }
            None => {
                let errs = keepalived_protocol_errors(&self.log_text());
                assert!(errs.is_empty(), "{what}: keepalived complained: {errs:#?}");
            }
        }
    }
}

fn other(w: Who) -> Who {
    match w {
        Who::HaLb => Who::Keepalived,
        Who::Keepalived => Who::HaLb,
    }
}

/// When the first priority-0 advert from `src` was seen after `after`.
fn prio0_after(
    frames: &[(Instant, Vec<u8>)],
    after: Instant,
    src: std::net::Ipv4Addr,
) -> Option<Instant> {
    frames
        .iter()
        .find(|(t, f)| *t >= after && vrrp_of(f).is_some_and(|(s, _, _, p)| s == src && p == 0))
        .map(|(t, _)| *t)
}

fn interop(master: Who, version: u8, unicast: bool) {
    let label = format!(
        "{master:?} master / {:?} backup, v{version}, {}",
        other(master),
        if unicast { "unicast" } else { "multicast" }
    );
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s =
        Scratch::new(&format!("interop-v{version}-{}-{master:?}", if unicast { "u" } else { "m" }))
            .unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let advert = if version == 2 { 1.0 } else { 0.1 };
    let mut c1 = Inst::new(version, 150, advert);
    let mut c2 = Inst::new(version, 100, advert);
    if unicast {
        c1 = c1.unicast(dir_ip(1), &[dir_ip(2)]);
        c2 = c2.unicast(dir_ip(2), &[dir_ip(1)]);
    }
    let slack = Duration::from_millis(100);

    // 1. Election: both start as BACKUP; d1 (150) wins after its down interval.
    let a = start(&mut t, &s, master, &d1, "d1", &c1);
    let b = start(&mut t, &s, other(master), &d2, "d2", &c2);
    // (Whichever daemon starts faster may be MASTER for a moment first; the higher priority
    // must end up with the VIP alone.)
    eventually(c1.mdi() * 2 + Duration::from_secs(3), "d1 alone holds the VIP", || {
        holds(&d1, "eth0", V) && !holds(&d2, "eth0", V)
    })
    .unwrap_or_else(|e| panic!("{label}: {e}\n{}\n{}", a.log_text(), b.log_text()));
    let settle = (c1.mdi() / 2).max(Duration::from_millis(700));
    assert_eq!(hold_pattern(&[&d1, &d2], settle), vec![Always, Never], "{label}: election");
    if let Some(h) = &b.halb {
        assert_eq!(h.state("VI_1").as_deref(), Some("BACKUP"), "{label}");
        assert!(counter(h, "adverts_received") >= 2, "{label}: ha-lb heard keepalived's adverts");
    }
    a.check_clean(&label);
    b.check_clean(&label);

    // 2. Graceful stop of the master (SIGTERM): the backup takes over Skew_Time after the
    // priority-0 advert.
    let cap = Capture::start(if unicast { &d2 } else { &t.client }, "eth0", is_vrrp);
    let w2 = AddrWatch::start(&d2);
    std::thread::sleep(Duration::from_millis(200));
    a.check_clean(&label);
    let termed = Instant::now();
    t.lab.signal(a.pid, libc::SIGTERM).unwrap();
    eventually(Duration::from_secs(3), "d2 holds the VIP after SIGTERM", || holds(&d2, "eth0", V))
        .unwrap_or_else(|e| panic!("{label}: {e}\n{}\n{}", a.log_text(), b.log_text()));
    let status = t.lab.wait(a.pid, c1.mdi() + Duration::from_secs(3)).expect("master exits");
    assert!(status.success(), "{label}: exit {status:?}");
    std::thread::sleep(Duration::from_millis(100));
    let frames = cap.stop();
    let p0 = prio0_after(&frames, termed, dir_ip(1))
        .unwrap_or_else(|| panic!("{label}: no priority-0 advert seen"));
    let added = w2.added_after(termed).expect("d2 added the VIP");
    let graceful = added.saturating_duration_since(p0);
    assert!(
        graceful <= c2.skew() + slack,
        "{label}: graceful takeover {graceful:?} > skew {:?} + 100 ms",
        c2.skew()
    );
    assert!(!holds(&d1, "eth0", V), "{label}: d1 kept the VIP after stopping");
    if a.who == Who::Keepalived {
        a.check_clean(&label);
    }
    b.check_clean(&label);
    drop(w2);
    // keepalived's VRRP child exits with its parent; wait so the restart below is clean.
    eventually(Duration::from_secs(3), "d1's namespace has no process left", || {
        namespace_empty(&d1)
    })
    .unwrap();

    // 3. The master comes back and preempts.
    let restarted = Instant::now();
    let a = start(&mut t, &s, master, &d1, "d1-again", &c1);
    let w1 = AddrWatch::start(&d1);
    eventually(c1.mdi() + Duration::from_secs(4), "d1 preempts", || {
        holds(&d1, "eth0", V) && !holds(&d2, "eth0", V)
    })
    .unwrap_or_else(|e| panic!("{label}: {e}\n{}\n{}", a.log_text(), b.log_text()));
    let preempt = w1.added_after(restarted).map(|x| x - restarted);
    assert_eq!(hold_pattern(&[&d1, &d2], settle), vec![Always, Never], "{label}: after preemption");
    a.check_clean(&label);
    b.check_clean(&label);

    // 4. kill -9 of the master host → the backup within Master_Down_Interval.
    let w2 = AddrWatch::start(&d2);
    a.check_clean(&label);
    let killed = Instant::now();
    kill_host(&mut t.lab, &d1, a.pid);
    eventually(c2.mdi() + Duration::from_secs(2), "d2 holds the VIP after kill -9", || {
        holds(&d2, "eth0", V)
    })
    .unwrap_or_else(|e| panic!("{label}: {e}\n{}", b.log_text()));
    let took = w2.added_after(killed).expect("d2 added the VIP") - killed;
    assert!(
        took <= c2.mdi() + slack,
        "{label}: kill takeover {took:?} > MDI {:?} + 100 ms",
        c2.mdi()
    );
    std::thread::sleep(Duration::from_millis(200));
    b.check_clean(&label);
    if b.who == Who::Keepalived {
        assert!(
            b.log_text().matches("Entering MASTER STATE").count() >= 2,
            "{label}:\n{}",
            b.log_text()
        );
    } else {
        assert_eq!(b.halb.as_ref().unwrap().state("VI_1").as_deref(), Some("MASTER"));
    }
    eprintln!(
        "interop {label}: graceful {graceful:?} (skew {:?}), preempt after restart {preempt:?}, kill {took:?} (MDI {:?})",
        c2.skew(),
        c2.mdi()
    );
}

#[test]
fn v3_multicast_halb_master_keepalived_backup() {
    interop(Who::HaLb, 3, false);
}

#[test]
fn v3_multicast_keepalived_master_halb_backup() {
    interop(Who::Keepalived, 3, false);
}

#[test]
fn v3_unicast_halb_master_keepalived_backup() {
    interop(Who::HaLb, 3, true);
}

#[test]
fn v3_unicast_keepalived_master_halb_backup() {
    interop(Who::Keepalived, 3, true);
}

#[test]
fn v2_multicast_halb_master_keepalived_backup() {
    interop(Who::HaLb, 2, false);
}

#[test]
fn v2_multicast_keepalived_master_halb_backup() {
    interop(Who::Keepalived, 2, false);
}

#[test]
fn v2_unicast_halb_master_keepalived_backup() {
    interop(Who::HaLb, 2, true);
}

#[test]
fn v2_unicast_keepalived_master_halb_backup() {
    interop(Who::Keepalived, 2, true);
}
