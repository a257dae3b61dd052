//! Hostile VRRP input from a rogue on the segment (the lab client, sending crafted frames
//! with an AF_PACKET socket): wrong TTL, bad checksum, wrong VRID, wrong version or type,
//! truncated messages, a wrong v2 password, forged higher-priority adverts from an unknown
//! source and a forged v3 advert with Max Adver Int 4095. None of it moves the VIP, and
//! each frame is counted where it was dropped: by the XDP VRRP filter (`vrrp_filter` in
//! `ha-lb status --json`) or by the instance (`rx_errors`, `adverts_ignored`).

mod vrrp_support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    frame::{self, inet_checksum, Eth},
    packet::PacketSocket,
    topology::{DirectorLab, Mode},
    Node,
};
use vrrp_support::*;

fn vip() -> IpAddr {
    ip4(V.parse().unwrap())
}

/// Everything we compare before and after a case, for one director.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    filter: BTreeMap<String, u64>,
    rx_errors: u64,
    adverts_ignored: u64,
}

fn seen(d: &HaLb) -> Seen {
    let c = counters(d);
    Seen { filter: filter(d), rx_errors: c["rx_errors"], adverts_ignored: c["adverts_ignored"] }
}

/// (filter counters that grew, rx_errors delta, adverts_ignored delta); `passed` is left out
/// when `skip_passed` (a backup hears the master's real adverts all the time).
fn delta(after: &Seen, before: &Seen, skip_passed: bool) -> (Vec<(String, u64)>, u64, u64) {
    let f = after
        .filter
        .iter()
        .map(|(k, v)| (k.clone(), v - before.filter.get(k).copied().unwrap_or(0)))
        .filter(|(k, d)| *d > 0 && !(skip_passed && k == "passed"))
        .collect();
    (f, after.rx_errors - before.rx_errors, after.adverts_ignored - before.adverts_ignored)
}

/// A frame to the VRRP group from the rogue (the client's MAC) with source `src`.
struct Rogue {
    sock: PacketSocket,
    mac: [u8; 6],
}

impl Rogue {
    fn new(client: &Node) -> Rogue {
        let sock = client.run(|| PacketSocket::open("eth0").unwrap()).unwrap();
        Rogue { sock, mac: client.mac("eth0").unwrap() }
    }
    fn send(&self, src: Ipv4Addr, ttl: u8, msg: &[u8]) {
        let eth = Eth { src: self.mac, dst: MCAST_MAC };
        self.sock.send(&frame::ip(eth, ip4(src), ip4(MCAST), ttl, 112, msg)).unwrap();
    }
}

/// A valid v3 advert (checksum over the pseudo-header) from `src`.
fn v3(src: Ipv4Addr, vrid: u8, priority: u8, adver_cs: u16) -> Vec<u8> {
    frame::vrrp(3, vrid, priority, adver_cs, &[vip()], ip4(src), ip4(MCAST))
}

/// Re-checksums a v2 message (checksum over the message only).
fn v2_fix_checksum(m: &mut [u8]) {
    m[6] = 0;
    m[7] = 0;
    let c = inet_checksum(&[m]);
    m[6..8].copy_from_slice(&c.to_be_bytes());
}

/// A v2 advert with simple-password authentication (type 1).
fn v2_pass(src: Ipv4Addr, priority: u8, adver_s: u16, pass: &[u8]) -> Vec<u8> {
    let mut m = frame::vrrp(2, VRID, priority, adver_s, &[vip()], ip4(src), ip4(MCAST));
    m[4] = 1;
    let n = m.len();
    m[n - 8..].fill(0);
    m[n - 8..n - 8 + pass.len()].copy_from_slice(pass);
    v2_fix_checksum(&mut m);
    m
}

/// Samples who holds the VIP on a thread while the rogue works.
fn watch_holders(d1: &Node, d2: &Node, for_: Duration) -> std::thread::JoinHandle<Vec<Held>> {
    let (a, b) = (d1.clone(), d2.clone());
    std::thread::spawn(move || hold_pattern(&[&a, &b], for_))
}

struct Case {
    name: &'static str,
    /// (source, TTL, message, pause after it)
    frames: Vec<(Ipv4Addr, u8, Vec<u8>, Duration)>,
    /// Expected on the master d1: filter counters (passed included), rx_errors, adverts_ignored.
    d1: (Vec<(&'static str, u64)>, u64, u64),
    /// Expected on the backup d2 (filter `passed` not compared).
    d2: (Vec<(&'static str, u64)>, u64, u64),
}

fn run_cases(rogue: &Rogue, a: &HaLb, b: &HaLb, cases: &[Case]) {
    for c in cases {
        let (s1, s2) = (seen(a), seen(b));
        for (src, ttl, msg, pause) in &c.frames {
            rogue.send(*src, *ttl, msg);
            std::thread::sleep(*pause);
        }
        std::thread::sleep(Duration::from_millis(150));
        let want = |w: &(Vec<(&str, u64)>, u64, u64)| {
            (w.0.iter().map(|(k, n)| (k.to_string(), *n)).collect::<Vec<_>>(), w.1, w.2)
        };
        let (g1, g2) = (delta(&seen(a), &s1, false), delta(&seen(b), &s2, true));
        eprintln!("hostile {}: d1 {g1:?} d2 {g2:?}", c.name);
        assert_eq!(
            g1,
            want(&c.d1),
            "{}: counted on the master d1 (filter, rx_errors, ignored)",
            c.name
        );
        assert_eq!(
            g2,
            want(&c.d2),
            "{}: counted on the backup d2 (filter, rx_errors, ignored)",
            c.name
        );
    }
}

/// d1 (150) starts first and is MASTER before d2 (100) starts, so d2 never advertises and
/// d1 has heard no peer at all: the usual state of a master in a multicast pair.
fn pair(t: &mut DirectorLab, s: &Scratch, c1: &Inst, c2: &Inst) -> (HaLb, HaLb) {
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let a = HaLb::start(&mut t.lab, &d1, s, "d1", &c1.halb("d1")).unwrap();
    eventually(c1.mdi() * 2 + Duration::from_secs(3), "d1 holds the VIP", || holds(&d1, "eth0", V))
        .unwrap();
    let b = HaLb::start(&mut t.lab, &d2, s, "d2", &c2.halb("d2")).unwrap();
    eventually(Duration::from_secs(2), "d2 BACKUP", || {
        b.state("VI_1").as_deref() == Some("BACKUP")
    })
    .unwrap();
    assert!(!filter(&a).is_empty(), "the XDP VRRP filter is attached (eBPF object built in)");
    (a, b)
}

/// VRRPv3 at 0.1 s: every malformed or forged frame is dropped and counted, the VIP stays on
/// d1 throughout, and afterwards d2 still takes over within its normal Master_Down_Interval
/// (the 4095 cs advert did not stretch its timer).
#[test]
fn v3_hostile_frames_change_nothing_and_are_counted() {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("hostile3").unwrap();
    let (c1, c2) = (Inst::new(3, 150, 0.1), Inst::new(3, 100, 0.1));
    let (a, b) = pair(&mut t, &s, &c1, &c2);
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    // d2's allow-list locks 10 intervals after it first heard d1.
    std::thread::sleep(Duration::from_millis(1200));
    let rogue = Rogue::new(&t.client);
    let (m1, m2) = (counter(&a, "became_master"), counter(&b, "became_master"));
    let holders = watch_holders(&d1, &d2, Duration::from_secs(4));

    let ms = Duration::from_millis;
    let good = v3(ROGUE, VRID, 254, 10);
    let mut bad_ck = good.clone();
    bad_ck[7] ^= 0x5a;
    let mut v4 = good.clone();
    v4[0] = 0x41;
    let mut type2 = good.clone();
    type2[0] = 0x32;
    // Count says one address, none follows (8 bytes: a whole header, so XDP passes it).
    let mut count_lies = frame::vrrp(3, VRID, 254, 10, &[], ip4(ROGUE), ip4(MCAST));
    count_lies[3] = 1;
    // RFC 9568's IPv4 checksum (the message only, as keepalived's v3_checksum_as_v2): taken,
    // and counted by form in status.
    let mut message_only = v3(ROGUE, VRID, 50, 10);
    v2_fix_checksum(&mut message_only);
    let (mo1, mo2) = (counter(&a, "checksum_message_only"), counter(&b, "checksum_message_only"));
    let cases = vec![
        Case {
            name: "TTL 64",
            frames: vec![(ROGUE, 64, good.clone(), ms(0))],
            d1: (vec![("bad_ttl", 1)], 0, 0),
            d2: (vec![("bad_ttl", 1)], 0, 0),
        },
        Case {
            name: "bad checksum",
            frames: vec![(ROGUE, 255, bad_ck, ms(0))],
            d1: (vec![("passed", 1)], 1, 0),
            d2: (vec![], 1, 0),
        },
        Case {
            name: "wrong VRID",
            frames: vec![(ROGUE, 255, v3(ROGUE, 77, 254, 10), ms(0))],
            d1: (vec![("unknown_vrid", 1)], 0, 0),
            d2: (vec![("unknown_vrid", 1)], 0, 0),
        },
        Case {
            name: "wrong version (v2 to a v3 VRID, and version 4)",
            frames: vec![
                (ROGUE, 255, frame::vrrp(2, VRID, 254, 1, &[vip()], ip4(ROGUE), ip4(MCAST)), ms(0)),
                (ROGUE, 255, v4, ms(0)),
            ],
            d1: (vec![("bad_version", 2)], 0, 0),
            d2: (vec![("bad_version", 2)], 0, 0),
        },
        Case {
            name: "type 2",
            frames: vec![(ROGUE, 255, type2, ms(0))],
            d1: (vec![("bad_type", 1)], 0, 0),
            d2: (vec![("bad_type", 1)], 0, 0),
        },
        Case {
            name: "truncated (4-byte VRRP message)",
            frames: vec![(ROGUE, 255, good[..4].to_vec(), ms(0))],
            d1: (vec![("truncated", 1)], 0, 0),
            d2: (vec![("truncated", 1)], 0, 0),
        },
        Case {
            name: "truncated (address count without the address)",
            frames: vec![(ROGUE, 255, count_lies, ms(0))],
            d1: (vec![("passed", 1)], 1, 0),
            d2: (vec![], 1, 0),
        },
        Case {
            name: "forged priority 254 from an unknown source, twice on schedule",
            frames: vec![(ROGUE, 255, good.clone(), ms(100)), (ROGUE, 255, good.clone(), ms(0))],
            d1: (vec![("passed", 2)], 0, 2),
            d2: (vec![], 0, 2),
        },
        Case {
            name: "forged v3 Max Adver Int 4095 from the master's address",
            frames: vec![(dir_ip(1), 255, v3(dir_ip(1), VRID, 254, 4095), ms(0))],
            // d2 refuses the interval (rule 3). d1's kernel drops a packet claiming d1's own
            // address as its source (martian) before any socket; its filter saw it pass.
            d1: (vec![("passed", 1)], 0, 0),
            d2: (vec![], 0, 1),
        },
    ];
    run_cases(&rogue, &a, &b, &cases);
    rogue.send(ROGUE, 255, &message_only);
    eventually(Duration::from_secs(2), "the message-only checksum counted in status", || {
        counter(&a, "checksum_message_only") == mo1 + 1
            && counter(&b, "checksum_message_only") == mo2 + 1
    })
    .unwrap();
    let held = holders.join().unwrap();
    assert_eq!(
        held,
        vec![Always, Never],
        "hostile frames moved the VIP\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    assert_eq!(a.state("VI_1").as_deref(), Some("MASTER"));
    assert_eq!(b.state("VI_1").as_deref(), Some("BACKUP"));
    assert_eq!((counter(&a, "became_master"), counter(&b, "became_master")), (m1, m2));

    // The master dies right after the 4095 cs forgery: d2's timer is still 0.1 s based.
    let rogue_msg = v3(dir_ip(1), VRID, 150, 4095);
    let w2 = AddrWatch::start(&d2);
    rogue.send(dir_ip(1), 255, &rogue_msg);
    let killed = Instant::now();
    kill_host(&mut t.lab, &d1, a.pid);
    eventually(Duration::from_secs(3), "d2 holds the VIP", || holds(&d2, "eth0", V)).unwrap();
    let took = w2.added_after(killed).unwrap() - killed;
    eprintln!("hostile: d2 took over {took:?} after the kill (MDI {:?})", c2.mdi());
    assert!(took <= c2.mdi() + Duration::from_millis(100), "took {took:?}: timer stretched?");
}

/// VRRPv2 with `auth_type PASS`: adverts with a wrong password or none, and a v2 advert with
/// another interval, are ignored and counted on both nodes; the VIP stays.
#[test]
fn v2_wrong_password_and_interval_change_nothing_and_are_counted() {
    let mut t = DirectorLab::build(Mode::Dr, 2, 0).unwrap();
    let s = Scratch::new("hostile2").unwrap();
    let auth = "authentication = { auth_type = \"PASS\", auth_pass = \"s3cret\" }";
    let (c1, c2) = (Inst::new(2, 150, 1.0).extra(auth), Inst::new(2, 100, 1.0).extra(auth));
    let (a, b) = pair(&mut t, &s, &c1, &c2);
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    eventually(Duration::from_secs(3), "d2 hears d1", || counter(&b, "adverts_received") >= 1)
        .unwrap();
    assert_eq!(counter(&b, "adverts_ignored"), 0, "d2 accepts d1's authenticated adverts");
    let rogue = Rogue::new(&t.client);
    let holders = watch_holders(&d1, &d2, Duration::from_millis(2500));
    let ms = Duration::from_millis;
    let cases = vec![
        Case {
            name: "wrong password",
            frames: vec![(ROGUE, 255, v2_pass(ROGUE, 254, 1, b"guess"), ms(0))],
            d1: (vec![("passed", 1)], 0, 1),
            d2: (vec![], 0, 1),
        },
        Case {
            name: "no authentication",
            frames: vec![(
                ROGUE,
                255,
                frame::vrrp(2, VRID, 254, 1, &[vip()], ip4(ROGUE), ip4(MCAST)),
                ms(0),
            )],
            d1: (vec![("passed", 1)], 0, 1),
            d2: (vec![], 0, 1),
        },
        Case {
            name: "right password, advert_int 2 s, from the master's address",
            frames: vec![(dir_ip(1), 255, v2_pass(dir_ip(1), 254, 2, b"s3cret"), ms(0))],
            // d2: interval mismatch (v2 requires equal). d1: martian source, dropped by the
            // kernel.
            d1: (vec![("passed", 1)], 0, 0),
            d2: (vec![], 0, 1),
        },
        Case {
            name: "right password, TTL 1",
            frames: vec![(ROGUE, 1, v2_pass(ROGUE, 254, 1, b"s3cret"), ms(0))],
            d1: (vec![("bad_ttl", 1)], 0, 0),
            d2: (vec![("bad_ttl", 1)], 0, 0),
        },
    ];
    run_cases(&rogue, &a, &b, &cases);
    let held = holders.join().unwrap();
    assert_eq!(held, vec![Always, Never], "hostile frames moved the VIP");
    assert_eq!(a.state("VI_1").as_deref(), Some("MASTER"));
    assert_eq!(b.state("VI_1").as_deref(), Some("BACKUP"));
    assert_eq!(counter(&b, "became_master"), 0);
}
