//! VRRP between ha-lb daemons in a namespace lab: real raw sockets, real VIPs.

use std::{net::Ipv4Addr, time::Duration};

use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    topology::{DirectorLab, Mode, VIP},
};

fn conf(router: &str, priority: u8, advert_int: f64, extra: &str) -> String {
    format!(
        r#"[global]
router_id = "{router}"
dataplane = "none"
control_socket = "{{socket}}"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
version = 3
priority = {priority}
advert_int = {advert_int}
virtual_ipaddress = ["{VIP}/24"]
{extra}
"#
    )
}

const V: &str = "198.18.0.100";

#[test]
fn two_nodes_elect_the_highest_priority_and_stay_stable() {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("vrrp2").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &conf("d1", 150, 0.1, "")).unwrap();
    let b = HaLb::start(&mut t.lab, &d2, &s, "d2", &conf("d2", 100, 0.1, "")).unwrap();
    eventually(Duration::from_secs(5), "d1 MASTER holding the VIP", || holds(&d1, "eth0", V))
        .unwrap();
    eventually(Duration::from_secs(3), "d2 reports BACKUP", || {
        b.state("VI_1").as_deref() == Some("BACKUP")
    })
    .unwrap();
    // Stable: for 2 s (20 adverts) the backup never takes the VIP.
    for _ in 0..40 {
        assert!(
            !holds(&d2, "eth0", V),
            "backup took the VIP while the master is alive\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.state("VI_1").as_deref(), Some("MASTER"));
    let _ = Ipv4Addr::LOCALHOST;
}

/// kill -9 of the master (and its link, as a dead host): the backup owns the VIP and
/// answers within Master_Down_Interval + 100 ms. advert_int 0.1 s, backup priority 100:
/// MDI = 3 × 100 ms + (256 − 100) × 100 ms / 256 = 360.9 ms.
#[test]
fn kill_9_master_backup_answers_within_master_down_interval() {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("vrrpkill").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &conf("d1", 150, 0.1, "")).unwrap();
    let _b = HaLb::start(&mut t.lab, &d2, &s, "d2", &conf("d2", 100, 0.1, "")).unwrap();
    eventually(Duration::from_secs(5), "d1 holds the VIP", || holds(&d1, "eth0", V)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let prober = ha_lb_lab::probe::Prober::start(
        &t.client,
        VIP,
        Duration::from_millis(10),
        Duration::from_secs(10),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let kill_at = prober.elapsed();
    t.lab.kill(a.pid);
    d1.ip(&["link", "set", "eth0", "down"]).unwrap();
    eventually(Duration::from_secs(3), "d2 holds the VIP", || holds(&d2, "eth0", V)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = prober.stop().unwrap();
    let outage = log.outage_after(kill_at).expect("answers after the kill");
    eprintln!(
        "sent {} answered {} kill_at {:?} outage {:?}",
        log.sent.len(),
        log.answered.len(),
        kill_at,
        outage
    );
    let mdi = Duration::from_micros(360_938);
    // A sanity floor against a broken measurement (the prober once reported 6 ms): the last
    // advert can precede the kill by up to one advert_int (100 ms), probes are 10 ms apart,
    // and under load their send times jitter by tens of ms, so only half the MDI is a safe
    // lower bound; the property under test is the upper bound.
    let floor = mdi / 2;
    assert!(
        outage >= floor,
        "outage {outage:?} below {floor:?}: faster than any VRRP takeover, so the measurement is broken"
    );
    assert!(outage <= mdi + Duration::from_millis(100), "outage {outage:?} > MDI + 100 ms");
}
