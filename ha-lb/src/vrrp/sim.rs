//! Deterministic simulator (test-only): N [`Machine`]s on one virtual L2
//! segment. Every advert goes through the real codec (`Advert::encode` →
//! `packet::decode`), is "multicast" to every other live node with seeded
//! random latency and loss, and VIP ownership is tracked from the actions.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::machine::{Action, Config, Machine, Reason, State};
use super::packet::{self, Advert, RxOptions, VRRP_MCAST_V4, VRRP_MCAST_V6, VRRP_TTL};

/// SplitMix64: tiny, seedable, good enough for scheduling noise.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance_permille(&mut self, p: u32) -> bool {
        self.below(1000) < u64::from(p)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Net {
    pub latency_min: Duration,
    pub latency_max: Duration,
    pub loss_permille: u32,
}

impl Net {
    pub fn perfect() -> Net {
        Net { latency_min: Duration::ZERO, latency_max: Duration::ZERO, loss_permille: 0 }
    }
}

pub struct Node {
    pub m: Machine,
    pub ip: IpAddr,
    pub alive: bool,
    pub holds_vips: bool,
}

enum Event {
    Deliver {
        to: usize,
        src: IpAddr,
        dst: IpAddr,
        bytes: Vec<u8>,
    },
    Start(usize),
    Kill(usize),
    Shutdown(usize),
    /// Tracking changed a node's priority adjustment.
    PriorityAdjust(usize, i32),
}

/// A recorded state change.
#[derive(Clone, Debug)]
pub struct Transition {
    pub at: Instant,
    pub node: usize,
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

pub struct Sim {
    pub t0: Instant,
    pub now: Instant,
    pub net: Net,
    pub nodes: Vec<Node>,
    rng: Rng,
    queue: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    pub transitions: Vec<Transition>,
    /// (time, number of live VIP holders) at every change.
    pub holders_log: Vec<(Instant, usize)>,
    pub decode_errors: u64,
}

impl Sim {
    pub fn new(configs: Vec<Config>, net: Net, seed: u64) -> Sim {
        let t0 = Instant::now();
        let nodes = configs
            .into_iter()
            .map(|c| Node {
                ip: c.primary_address,
                m: Machine::new(c).expect("valid config"),
                alive: true,
                holds_vips: false,
            })
            .collect();
        Sim {
            t0,
            now: t0,
            net,
            nodes,
            rng: Rng::new(seed),
            queue: BTreeMap::new(),
            seq: 0,
            transitions: Vec::new(),
            holders_log: vec![(t0, 0)],
            decode_errors: 0,
        }
    }

    pub fn at(&self, offset: Duration) -> Instant {
        self.t0 + offset
    }

    fn push(&mut self, at: Instant, ev: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    pub fn start_at(&mut self, node: usize, at: Instant) {
        self.push(at, Event::Start(node));
    }
    /// Crash: the node stops processing and its VIPs vanish with it.
    pub fn kill_at(&mut self, node: usize, at: Instant) {
        self.push(at, Event::Kill(node));
    }
    pub fn shutdown_at(&mut self, node: usize, at: Instant) {
        self.push(at, Event::Shutdown(node));
    }
    /// Tracking (a script's weight, say) sets node's priority adjustment.
    pub fn priority_adjust_at(&mut self, node: usize, at: Instant, adjust: i32) {
        self.push(at, Event::PriorityAdjust(node, adjust));
    }
    /// Put raw advert bytes on the wire from `src` to `to` (forgery).
    pub fn inject_at(&mut self, at: Instant, to: usize, src: IpAddr, advert: &Advert) {
        let dst = mcast_for(src);
        let bytes = advert.encode(src, dst, packet::V3Checksum::PseudoHeader).expect("encodable");
        self.push(at, Event::Deliver { to, src, dst, bytes });
    }

    pub fn holders(&self) -> usize {
        self.nodes.iter().filter(|n| n.alive && n.holds_vips).count()
    }

    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && self.nodes[i].m.state() == State::Master)
            .collect()
    }

    fn note_holders(&mut self) {
        let h = self.holders();
        if self.holders_log.last().map(|(_, n)| *n) != Some(h) {
            self.holders_log.push((self.now, h));
        }
    }

    /// Total time within `[from, to)` during which nobody held the VIPs.
    pub fn unheld_time(&self, from: Instant, to: Instant) -> Duration {
        let mut total = Duration::ZERO;
        for (k, (t, n)) in self.holders_log.iter().enumerate() {
            let end = self.holders_log.get(k + 1).map_or(to, |(t2, _)| *t2).min(to);
            let start = (*t).max(from);
            if *n == 0 && end > start {
                total += end - start;
            }
        }
        total
    }

    /// Total time within `[from, to)` during which more than one node held the VIPs.
    pub fn dual_held_time(&self, from: Instant, to: Instant) -> Duration {
        let mut total = Duration::ZERO;
        for (k, (t, n)) in self.holders_log.iter().enumerate() {
            let end = self.holders_log.get(k + 1).map_or(to, |(t2, _)| *t2).min(to);
            let start = (*t).max(from);
            if *n > 1 && end > start {
                total += end - start;
            }
        }
        total
    }

    /// First transition into `to` at or after `after`.
    pub fn first_entry(&self, to: State, after: Instant) -> Option<&Transition> {
        self.transitions.iter().find(|t| t.to == to && t.at >= after)
    }

    fn drain_actions(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(a) = self.nodes[i].m.poll_action() {
                if !self.nodes[i].alive {
                    continue;
                }
                match a {
                    Action::SendAdvert(adv) => {
                        let src = self.nodes[i].ip;
                        let dst = mcast_for(src);
                        let bytes = adv
                            .encode(src, dst, packet::V3Checksum::PseudoHeader)
                            .expect("encodable");
                        for j in 0..self.nodes.len() {
                            if j == i || self.rng.chance_permille(self.net.loss_permille) {
                                continue;
                            }
                            let span =
                                (self.net.latency_max - self.net.latency_min).as_nanos() as u64;
                            let lat = self.net.latency_min
                                + Duration::from_nanos(self.rng.below(span + 1));
                            let at = self.now + lat;
                            self.push(at, Event::Deliver { to: j, src, dst, bytes: bytes.clone() });
                        }
                    }
                    Action::AddVips => self.nodes[i].holds_vips = true,
                    Action::RemoveVips => self.nodes[i].holds_vips = false,
                    Action::SendGratuitous => {}
                    // One segment, no sync groups.
                    Action::SyncGroupReady(_) => {}
                    Action::StateChanged { from, to, reason } => self
                        .transitions
                        .push(Transition { at: self.now, node: i, from, to, reason }),
                }
            }
        }
        self.note_holders();
    }

    /// Advance virtual time to `end`, processing every event and timer on the way.
    pub fn run_until(&mut self, end: Instant) {
        loop {
            let next_timer =
                self.nodes.iter().filter(|n| n.alive).filter_map(|n| n.m.poll_timeout()).min();
            let next_event = self.queue.keys().next().map(|(t, _)| *t);
            let Some(t) = [next_timer, next_event].into_iter().flatten().min() else {
                break;
            };
            if t > end {
                break;
            }
            self.now = t;
            if next_event == Some(t) {
                let (_, ev) = self.queue.pop_first().expect("present");
                self.apply(ev);
            } else {
                for n in self.nodes.iter_mut().filter(|n| n.alive) {
                    if n.m.poll_timeout().is_some_and(|d| d <= t) {
                        n.m.handle_timeout(t);
                    }
                }
            }
            self.drain_actions();
        }
        self.now = end;
    }

    fn apply(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::Deliver { to, src, dst, bytes } => {
                let n = &mut self.nodes[to];
                if !n.alive {
                    return;
                }
                match packet::decode(src, dst, VRRP_TTL, &bytes, &RxOptions::default()) {
                    Ok(rx) => n.m.handle_received(now, &rx),
                    Err(e) => {
                        self.decode_errors += 1;
                        n.m.handle_rx_error(&e);
                    }
                }
            }
            Event::Start(i) => {
                if self.nodes[i].alive {
                    self.nodes[i].m.start(now);
                }
            }
            Event::Kill(i) => {
                self.nodes[i].alive = false;
                self.nodes[i].holds_vips = false;
            }
            Event::Shutdown(i) => {
                if self.nodes[i].alive {
                    self.nodes[i].m.shutdown(now);
                }
            }
            Event::PriorityAdjust(i, adjust) => {
                if self.nodes[i].alive {
                    self.nodes[i].m.set_priority_adjust(now, adjust);
                }
            }
        }
    }
}

fn mcast_for(src: IpAddr) -> IpAddr {
    if src.is_ipv4() {
        IpAddr::V4(VRRP_MCAST_V4)
    } else {
        IpAddr::V6(VRRP_MCAST_V6)
    }
}

/// Node `i`'s address: 10.0.0.(i+1).
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::machine::master_down_interval;
    use crate::vrrp::packet::Version;
    use proptest::prelude::*;

    const VIP: &str = "192.168.1.100";

    #[derive(Clone, Debug)]
    struct Setup {
        version: Version,
        advert_int_cs: u16,
        priorities: Vec<u8>,
        starts_ms: Vec<u64>,
        latency_max_ms: u64,
        configured_peers: bool,
        seed: u64,
    }

    impl Setup {
        fn configs(&self) -> Vec<Config> {
            let n = self.priorities.len();
            (0..n)
                .map(|i| {
                    let mut c = Config::new(7, node_ip(i), vec![VIP.parse().unwrap()]);
                    c.version = self.version;
                    c.priority = self.priorities[i];
                    c.advert_int_cs = self.advert_int_cs;
                    if self.configured_peers {
                        c.unicast_peers = (0..n).filter(|&j| j != i).map(node_ip).collect();
                    }
                    c
                })
                .collect()
        }
        /// Largest Master_Down_Interval in the group.
        fn mdi_max(&self) -> Duration {
            master_down_interval(self.version, 1, self.advert_int_cs)
        }
        fn sim(&self, loss_permille: u32) -> Sim {
            let net = Net {
                latency_min: Duration::ZERO,
                latency_max: Duration::from_millis(self.latency_max_ms),
                loss_permille,
            };
            let mut s = Sim::new(self.configs(), net, self.seed);
            for (i, ms) in self.starts_ms.iter().enumerate() {
                let at = s.at(Duration::from_millis(*ms));
                s.start_at(i, at);
            }
            s
        }
        fn settle_time(&self) -> Duration {
            Duration::from_millis(*self.starts_ms.iter().max().unwrap()) + self.mdi_max() * 12
        }
        /// Every node.
        fn all(&self) -> Vec<usize> {
            (0..self.priorities.len()).collect()
        }
        /// A simulation on a healthy network, run until it settles: the simulation, that
        /// moment and its single master.
        fn settled(&self) -> Result<(Sim, Instant, usize), TestCaseError> {
            let mut s = self.sim(0);
            let settled = s.at(self.settle_time());
            s.run_until(settled);
            let m = assert_single_master(&s, self, &self.all())?;
            Ok((s, settled, m))
        }
        /// Winner among `alive`: highest priority, then highest address.
        fn expected_master(&self, alive: &[usize]) -> usize {
            *alive.iter().max_by_key(|&&i| (self.priorities[i], node_ip(i))).unwrap()
        }
    }

    /// `n` nodes with distinct priorities (or all equal and a simultaneous start
    /// when `ties`), random start offsets, latency and seed.
    fn setup(ties: bool) -> impl Strategy<Value = Setup> {
        (
            2usize..=5,
            prop_oneof![Just(Version::V2), Just(Version::V3)],
            prop::sample::select(vec![20u16, 50, 100, 200]),
            any::<bool>(),
            0u64..=20,
            any::<u64>(),
        )
            .prop_flat_map(
                move |(n, version, int_cs, configured_peers, latency_max_ms, seed)| {
                    let advert_int_cs =
                        if version == Version::V2 { int_cs.max(100) / 100 * 100 } else { int_cs };
                    let prios = if ties {
                        Just(vec![100u8; n]).boxed()
                    } else {
                        prop::collection::btree_set(1u8..=254, n)
                            .prop_map(|s| s.into_iter().collect::<Vec<_>>())
                            .prop_shuffle()
                            .boxed()
                    };
                    let starts = if ties {
                        Just(vec![0u64; n]).boxed()
                    } else {
                        prop::collection::vec(0u64..=3000, n).boxed()
                    };
                    (prios, starts).prop_map(move |(priorities, starts_ms)| Setup {
                        version,
                        advert_int_cs,
                        priorities,
                        starts_ms,
                        latency_max_ms,
                        configured_peers,
                        seed,
                    })
                },
            )
    }

    fn assert_single_master(
        s: &Sim,
        setup: &Setup,
        alive: &[usize],
    ) -> Result<usize, TestCaseError> {
        let masters = s.masters();
        prop_assert_eq!(masters.len(), 1, "masters {:?}", masters);
        let m = masters[0];
        prop_assert_eq!(m, setup.expected_master(alive));
        for &i in alive {
            if i != m {
                prop_assert_eq!(s.nodes[i].m.state(), State::Backup);
            }
        }
        prop_assert_eq!(s.holders(), 1);
        prop_assert_eq!(s.decode_errors, 0);
        Ok(m)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// After a healthy network settles there is exactly one MASTER per VRID,
        /// with the highest priority.
        #[test]
        fn settles_to_single_highest_master(setup in setup(false)) {
            setup.settled()?;
        }

        /// Equal priorities started together: the highest primary address wins.
        #[test]
        fn ties_break_to_highest_address(setup in setup(true)) {
            let (_, _, m) = setup.settled()?;
            prop_assert_eq!(m, setup.priorities.len() - 1);
        }

        /// Killing the master: some backup is MASTER within its
        /// Master_Down_Interval (+ latency), and the group re-settles on the
        /// highest survivor.
        #[test]
        fn failover_within_master_down_interval(setup in setup(false)) {
            let (mut s, settled, old) = setup.settled()?;
            let all = setup.all();
            s.kill_at(old, settled);
            s.run_until(settled + setup.mdi_max() * 12);
            let eps = Duration::from_millis(setup.latency_max_ms) + Duration::from_micros(1);
            let bound = all
                .iter()
                .filter(|&&i| i != old)
                .map(|&i| master_down_interval(setup.version, setup.priorities[i], setup.advert_int_cs))
                .max()
                .unwrap();
            let first = s.first_entry(State::Master, settled).expect("someone took over");
            prop_assert!(first.at <= settled + bound + eps, "took {:?}, bound {:?}", first.at - settled, bound);
            let alive: Vec<usize> = all.into_iter().filter(|&i| i != old).collect();
            assert_single_master(&s, &setup, &alive)?;
        }

        /// Graceful stop is make-before-break: the VIPs are never unheld, also
        /// when the network loses up to 20 % of adverts during the handover.
        #[test]
        fn graceful_shutdown_never_unholds_vips(setup in setup(false), loss in prop_oneof![Just(0u32), 0u32..=200]) {
            let (mut s, settled, old) = setup.settled()?;
            s.net.loss_permille = loss;
            s.shutdown_at(old, settled);
            let handover = settled + setup.mdi_max() * 2;
            s.run_until(handover);
            prop_assert_eq!(s.nodes[old].m.state(), State::Initialize);
            prop_assert!(!s.nodes[old].holds_vips);
            s.net.loss_permille = 0;
            let end = handover + setup.mdi_max() * 12;
            s.run_until(end);
            prop_assert_eq!(s.unheld_time(settled, end), Duration::ZERO);
            let alive: Vec<usize> = setup.all().into_iter().filter(|&i| i != old).collect();
            assert_single_master(&s, &setup, &alive)?;
        }

        /// With loss (up to 20 %) and latency, once someone is master the VIPs are
        /// never unheld; after the network heals the group settles again.
        #[test]
        fn lossy_network_never_black_holes(setup in setup(false), loss in 0u32..=200) {
            let mut s = setup.sim(loss);
            let mid = s.at(setup.settle_time());
            s.run_until(mid);
            let first = s.first_entry(State::Master, s.t0).map(|t| t.at).expect("a master");
            prop_assert_eq!(s.unheld_time(first, mid), Duration::ZERO);
            s.net.loss_permille = 0;
            let end = mid + setup.mdi_max() * 12;
            s.run_until(end);
            assert_single_master(&s, &setup, &setup.all())?;
        }

        /// Forged higher-priority adverts spoofing a real peer, one at a time,
        /// never leave the VIPs unheld and never move mastership for good.
        #[test]
        fn forged_adverts_do_not_black_hole(setup in setup(false), forgeries in prop::collection::vec((0u64..60_000, 0usize..5), 1..10)) {
            let (mut s, settled, m) = setup.settled()?;
            let n = setup.priorities.len();
            // Space forgeries so no two fall within one confirmation window.
            let gap = setup.advert_int_cs as u64 * 10 * 3;
            let mut times: Vec<u64> = forgeries.iter().map(|(t, _)| *t / gap * gap).collect();
            times.sort_unstable();
            times.dedup();
            for (k, t) in times.iter().enumerate() {
                let spoofed = forgeries[k % forgeries.len()].1 % n;
                let spoofed = if spoofed == m { (m + 1) % n } else { spoofed };
                let adv = Advert {
                    version: setup.version,
                    vrid: 7,
                    priority: 254,
                    adver_int_cs: setup.advert_int_cs,
                    addrs: vec![VIP.parse().unwrap()],
                    auth: packet::Auth::None,
                };
                let at = settled + Duration::from_millis(*t);
                s.inject_at(at, m, node_ip(spoofed), &adv);
            }
            let end = settled + Duration::from_secs(60) + setup.mdi_max() * 4;
            s.run_until(end);
            prop_assert_eq!(s.unheld_time(settled, end), Duration::ZERO);
            prop_assert_eq!(s.masters(), vec![m]);
            let c = s.nodes[m].m.counters();
            prop_assert!(c.yields_aborted + c.ignored_not_allowed + c.lower_priority_received > 0);
        }
    }

    /// The acceptance example, end to end through the codec: priority 100 backup,
    /// advert_int 1 s, takes over 3 s + 156/256 s after the master's last advert.
    #[test]
    fn backup_takes_over_at_rfc_time_after_master_dies() {
        let mut a = Config::new(1, node_ip(0), vec![VIP.parse().unwrap()]);
        a.priority = 200;
        let mut b = Config::new(1, node_ip(1), vec![VIP.parse().unwrap()]);
        b.priority = 100;
        let mut s = Sim::new(vec![a, b], Net::perfect(), 1);
        s.start_at(0, s.t0);
        s.start_at(1, s.t0);
        let t = s.at(Duration::from_secs(20));
        s.run_until(t);
        assert_eq!(s.masters(), vec![0]);
        // A's adverts go out on whole seconds from when it became master.
        let a_master = s.first_entry(State::Master, s.t0).unwrap().at;
        let kill = t + Duration::from_millis(1);
        s.kill_at(0, kill);
        s.run_until(t + Duration::from_secs(10));
        let last_advert = a_master + Duration::from_secs((kill - a_master).as_secs());
        let took = s.first_entry(State::Master, kill).unwrap();
        assert_eq!(took.node, 1);
        assert_eq!((took.from, &took.reason), (State::Backup, &Reason::MasterDown));
        assert_eq!(took.at - last_advert, Duration::from_nanos(3_609_375_000));
    }

    /// IPv6 (VRRPv3 only) end to end: link-local primaries, pseudo-header checksums.
    #[test]
    fn ipv6_group_elects_and_fails_over() {
        let cfgs: Vec<Config> = (0..3u16)
            .map(|i| {
                let me = IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i + 1));
                let mut c = Config::new(9, me, vec!["2001:db8::100".parse().unwrap()]);
                c.priority = 100 + i as u8;
                c.advert_int_cs = 50;
                c
            })
            .collect();
        assert_eq!(cfgs[0].version, Version::V3);
        let net = Net {
            latency_min: Duration::ZERO,
            latency_max: Duration::from_millis(5),
            loss_permille: 0,
        };
        let mut s = Sim::new(cfgs, net, 9);
        for i in 0..3 {
            s.start_at(i, s.t0);
        }
        let t = s.at(Duration::from_secs(20));
        s.run_until(t);
        assert_eq!(s.masters(), vec![2]);
        assert_eq!(s.decode_errors, 0);
        s.kill_at(2, t);
        s.run_until(t + Duration::from_secs(20));
        assert_eq!(s.masters(), vec![1]);
        let took = s.first_entry(State::Master, t).unwrap();
        assert!(
            took.at - t <= master_down_interval(Version::V3, 101, 50) + Duration::from_millis(5)
        );
    }

    /// Start-up race (multicast, learned allow-list, 0.2 s, 150/100): started
    /// together, or the lower one up to just under the difference of the two
    /// Master_Down_Intervals (39 ms) earlier, the lower one accepts the higher
    /// one's first advert while still learning and never becomes MASTER.
    #[test]
    fn simultaneous_start_has_no_dual_master() {
        let mk = |i: usize, p: u8| {
            let mut c = Config::new(7, node_ip(i), vec![VIP.parse().unwrap()]);
            c.version = Version::V3;
            c.priority = p;
            c.advert_int_cs = 20;
            c
        };
        let gap =
            master_down_interval(Version::V3, 100, 20) - master_down_interval(Version::V3, 150, 20);
        for lat_ms in [0u64, 1, 5] {
            for lead_ms in [0u64, 10, 30, gap.as_millis() as u64 - lat_ms - 1] {
                let net = Net {
                    latency_min: Duration::ZERO,
                    latency_max: Duration::from_millis(lat_ms),
                    loss_permille: 0,
                };
                let mut s = Sim::new(vec![mk(0, 150), mk(1, 100)], net, 5);
                s.start_at(1, s.t0);
                s.start_at(0, s.at(Duration::from_millis(lead_ms)));
                s.run_until(s.at(Duration::from_secs(5)));
                assert_eq!(s.masters(), vec![0], "latency {lat_ms} ms, lead {lead_ms} ms");
                let c = s.nodes[1].m.counters();
                assert_eq!(c.became_master, 0, "latency {lat_ms} ms, lead {lead_ms} ms");
                assert_eq!(c.ignored_not_allowed, 0);
                assert!(s.nodes[1].m.peers().0.contains(&node_ip(0)));
            }
        }
    }

    /// A normal handover in a multicast pair: the master's priority drops below the backup's
    /// (a track script's weight) and the backup preempts. The master never heard the backup
    /// while it learned its peers (backups are silent), so the backup is not on its
    /// allow-list; it must still step down on the backup's adverts as quickly as for a known
    /// peer (rule 4: one interval), not only once the backup has passed probation (it used to
    /// take 3 adverts: both held the VIPs for 1.4 s at `advert_int 1`).
    #[test]
    fn preempting_an_unlearned_backup_overlaps_one_interval_at_most() {
        let net = Net {
            latency_min: Duration::ZERO,
            latency_max: Duration::from_millis(5),
            loss_permille: 0,
        };
        for (version, int_cs) in [(Version::V2, 100u16), (Version::V3, 100), (Version::V3, 20)] {
            let mk = |i: usize, p: u8| {
                let mut c = Config::new(4, node_ip(i), vec![VIP.parse().unwrap()]);
                c.version = version;
                c.advert_int_cs = int_cs;
                c.priority = p;
                c
            };
            let what = format!("{version:?} advert_int {int_cs} cs");
            let mut s = Sim::new(vec![mk(0, 150), mk(1, 100)], net, 11);
            s.start_at(0, s.t0);
            s.start_at(1, s.t0);
            let drop_at = s.at(Duration::from_secs(60));
            s.run_until(drop_at);
            assert_eq!(s.masters(), vec![0], "{what}");
            assert!(s.nodes[0].m.peers().0.is_empty(), "{what}: the master learned nobody");
            s.priority_adjust_at(0, drop_at, -60);
            let end = drop_at + Duration::from_secs(30);
            s.run_until(end);
            assert_eq!(s.masters(), vec![1], "{what}");
            assert_eq!(s.nodes[0].m.state(), State::Backup, "{what}");
            assert_eq!(s.nodes[0].m.counters().yields_confirmed, 1, "{what}");
            let interval = Duration::from_millis(10 * u64::from(int_cs));
            let overlap = s.dual_held_time(drop_at, end);
            assert!(
                overlap <= interval + Duration::from_millis(10),
                "{what}: both held the VIPs for {overlap:?}"
            );
            assert_eq!(s.unheld_time(drop_at, end), Duration::ZERO, "{what}");
            assert_eq!(s.transitions.iter().filter(|t| t.at > drop_at).count(), 2, "{what}");
        }
    }

    /// Determinism: same seed, same history.
    #[test]
    fn same_seed_same_history() {
        let run = |seed| {
            let cfgs: Vec<Config> = (0..4)
                .map(|i| {
                    let mut c = Config::new(3, node_ip(i), vec![VIP.parse().unwrap()]);
                    c.priority = 50 + 40 * i as u8;
                    c
                })
                .collect();
            let net = Net {
                latency_min: Duration::ZERO,
                latency_max: Duration::from_millis(30),
                loss_permille: 100,
            };
            let mut s = Sim::new(cfgs, net, seed);
            for i in 0..4 {
                let at = s.at(Duration::from_millis(300 * i as u64));
                s.start_at(i, at);
            }
            let end = s.at(Duration::from_secs(60));
            s.run_until(end);
            s.transitions.iter().map(|t| (t.at - s.t0, t.node, t.to)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }
}
