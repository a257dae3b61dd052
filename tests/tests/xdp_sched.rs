//! Scheduling and connection state of `ha_lb_xdp`, through BPF_PROG_TEST_RUN over many
//! synthetic flows (inside a lab node, see `xdp_support`): each scheduler's distribution,
//! stickiness, persistence, drain (weight 0), removal (rescheduling), Maglev disruption,
//! active-connection accounting (FIN/RST, expiry) and set switches under way.

mod xdp_support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ha_lb::{
    bpf::{lb as maps, testrun::XdpAction},
    dataplane::{
        xdp::Timeouts, Dataplane, DesiredState, LbAlgo, LbKind, Protocol, RealServerSpec,
        ServiceSpec, VirtualServerKey,
    },
};
use ha_lb_common::lb::{LbReason, LB_FLOW_F_HALF_OPEN, LB_FLOW_F_REPLY};
use ha_lb_lab::frame::{self, TcpFlags};
use xdp_support::*;

const VIP: &str = "198.18.100.1:80";
const R: [&str; 3] = ["198.18.2.10", "198.18.2.11", "198.18.2.12"];

fn svc() -> VirtualServerKey {
    vs(VIP, Protocol::Tcp)
}

fn spec(algo: LbAlgo, addrs: &[&str], weights: &[u32]) -> DesiredState {
    one_service(svc(), algo, LbKind::Nat, reals(addrs, 80, weights))
}

fn shares(t: &BTreeMap<IpAddr, usize>, addrs: &[&str]) -> Vec<usize> {
    addrs.iter().map(|a| t.get(&ip(a)).copied().unwrap_or(0)).collect()
}

/// New TCP connections from `n` distinct clients (same source port) — what sh/mh hash on —,
/// established (the client's SYN, then its ACK); where each went.
fn new_flows(t: &mut Tester, n: u32, first: u32) -> Vec<IpAddr> {
    (first..first + n).map(|i| open(t, client(i, 40000))).collect()
}

/// `c`'s connection to the VIP, established: its SYN, then its ACK; where it went.
fn open(t: &mut Tester, c: SocketAddr) -> IpAddr {
    let to = t.nat_pick(c, sa(VIP), TcpFlags::SYN);
    assert_eq!(t.nat_pick(c, sa(VIP), TcpFlags::ACK), to);
    to
}

#[test]
fn rr_and_wrr_follow_the_weights() {
    let env = env();
    env.run(|t| {
        t.apply(&spec(LbAlgo::Rr, &R, &[1, 5, 9]));
        let picks = new_flows(t, 300, 0);
        assert_eq!(shares(&tally(&picks), &R), vec![100, 100, 100], "rr ignores weights");
        assert_eq!(&picks[..3], &[ip(R[0]), ip(R[1]), ip(R[2])], "in order");

        for weights in [[1u32, 2, 3], [100, 250, 650], [65535, 1000, 3]] {
            // Same clients each round: forget their flows, or they would stick.
            t.dp.flush_connections().unwrap();
            t.apply(&spec(LbAlgo::Wrr, &R, &weights));
            let n = 6000u32;
            let picks = new_flows(t, n, 1000);
            let got = shares(&tally(&picks), &R);
            let total: u32 = weights.iter().sum();
            for i in 0..3 {
                let want = n as f64 * weights[i] as f64 / total as f64;
                let err = (got[i] as f64 - want).abs();
                assert!(
                    err <= want * 0.02 + 1.0,
                    "wrr {weights:?}: server {i} got {} of {n}, want {want:.0}",
                    got[i]
                );
            }
            // Interleaved, not in runs: with 1:2:3 the heaviest never comes three times in a row.
            if weights == [1, 2, 3] {
                assert!(!picks.windows(3).any(|w| w.iter().all(|&p| p == ip(R[2]))));
            }
        }
    });
}

#[test]
fn lc_and_wlc_follow_live_connection_counts() {
    let env = env();
    env.run(|t| {
        t.apply(&spec(LbAlgo::Lc, &R, &[1, 1, 1]));
        let clients: Vec<SocketAddr> = (0..30).map(|i| client(i, 2000)).collect();
        let picks: Vec<IpAddr> = clients.iter().map(|&c| open(t, c)).collect();
        assert_eq!(shares(&tally(&picks), &R), vec![10, 10, 10]);
        // Close 5 connections on R[1] (FIN from the client, RST from the real server).
        let on_r1: Vec<SocketAddr> =
            clients.iter().zip(&picks).filter(|(_, p)| **p == ip(R[1])).map(|(c, _)| *c).collect();
        for c in &on_r1[..3] {
            t.nat_pick(*c, sa(VIP), TcpFlags::FIN_ACK);
        }
        for c in &on_r1[3..5] {
            let rst = frame::tcp(
                t.server_eth(11),
                SocketAddr::new(ip(R[1]), 80),
                *c,
                TcpFlags::RST,
                1,
                b"",
            );
            assert_eq!(t.send_from_servers(&rst).action, XdpAction::Redirect);
        }
        let st = t.dp.stats().unwrap();
        let s = &st.services[&svc()];
        assert_eq!((s.new_conns, s.active_conns), (30, 25));
        assert_eq!(s.real_servers[&(ip(R[1]), 80)].active_conns, 5);
        assert_eq!(
            maps::load(t.dp.bpf(), t.dp.real_id(&svc(), ip(R[1]), 80).unwrap().0).unwrap(),
            5
        );
        // The next 5 new connections all go to the least loaded server.
        let next = new_flows(t, 5, 100);
        assert!(next.iter().all(|p| *p == ip(R[1])), "{next:?}");

        // wlc: active connections end up proportional to weights.
        t.dp.flush_connections().unwrap();
        t.apply(&spec(LbAlgo::Wlc, &R, &[1, 2, 3]));
        let picks = new_flows(t, 60, 200);
        let got = shares(&tally(&picks), &R);
        for (g, w) in got.iter().zip([10i64, 20, 30]) {
            assert!((*g as i64 - w).abs() <= 1, "wlc {got:?}");
        }
    });
}

#[test]
fn sh_and_mh_hash_clients_consistently_and_by_weight() {
    let env = env();
    env.run(|t| {
        for algo in [LbAlgo::Sh, LbAlgo::Mh] {
            t.dp.flush_connections().unwrap();
            t.apply(&spec(algo, &R, &[1, 2, 3]));
            let n = 6000;
            let picks = new_flows(t, n, 0);
            let got = shares(&tally(&picks), &R);
            for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
                let want = n as f64 * w / 6.0;
                assert!(
                    (got[i] as f64 - want).abs() < want * 0.1,
                    "{algo:?}: {got:?} (hash spread, 10% tolerance)"
                );
            }
            // Same client, other source ports (new flows): same real server without
            // `hash_port`...
            t.dp.flush_connections().unwrap();
            for i in [7u32, 99, 1234] {
                let first = t.nat_pick(client(i, 1), sa(VIP), TcpFlags::SYN);
                for port in 2..20 {
                    assert_eq!(t.nat_pick(client(i, port), sa(VIP), TcpFlags::SYN), first);
                }
            }
            // ... and spread by port with it.
            let mut d = spec(algo, &R, &[1, 1, 1]);
            d.services.get_mut(&svc()).unwrap().hash_port = true;
            t.apply(&d);
            let by_port: BTreeSet<IpAddr> = (1..60)
                .map(|p| t.nat_pick(client(5, 10_000 + p), sa(VIP), TcpFlags::SYN))
                .collect();
            assert_eq!(by_port.len(), 3, "{algo:?} with hash_port spreads one client");
        }
    });
}

/// Removing one of N real servers from an `mh` service moves about 1/N of the clients (those
/// of the removed server) and almost nobody else — measured on the data path with connection
/// state flushed, i.e. as a director that has just taken over would see it.
#[test]
fn maglev_removal_moves_about_one_nth_of_clients() {
    let env = env();
    env.run(|t| {
        let addrs: Vec<String> = (10..20).map(|i| format!("198.18.2.{i}")).collect();
        let a: Vec<&str> = addrs.iter().map(String::as_str).collect();
        t.apply(&spec(LbAlgo::Mh, &a, &[1; 10]));
        let n = 3000;
        let before = new_flows(t, n, 0);
        let removed = ip(a[4]);
        t.apply(&spec(LbAlgo::Mh, &[&a[..4], &a[5..]].concat(), &[1; 9]));
        t.dp.flush_connections().unwrap();
        let after = new_flows(t, n, 0);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let collateral =
            before.iter().zip(&after).filter(|(b, a)| b != a && **b != removed).count();
        let on_removed = before.iter().filter(|b| **b == removed).count();
        eprintln!(
            "maglev: {moved}/{n} clients moved ({:.1}%), {on_removed} were on the removed \
             server, {collateral} others moved",
            100.0 * moved as f64 / n as f64
        );
        assert!(!after.contains(&removed));
        assert!((moved as f64 / n as f64) < 0.1 * 1.5, "about 1/N = 10% should move");
        assert!((collateral as f64 / n as f64) < 0.03, "few clients of surviving servers move");
    });
}

#[test]
fn flows_stick_to_their_real_server() {
    let env = env();
    env.run(|t| {
        t.apply(&spec(LbAlgo::Rr, &R, &[1, 1, 1]));
        let flows: Vec<SocketAddr> = (0..9).map(|i| client(i, 5555)).collect();
        let first: Vec<IpAddr> =
            flows.iter().map(|&c| t.nat_pick(c, sa(VIP), TcpFlags::SYN)).collect();
        for round in 0..5 {
            for (j, (c, want)) in flows.iter().zip(&first).enumerate() {
                // New flows in between move the rr cursor; established ones stay put.
                t.nat_pick(client(1000 + round * 9 + j as u32, 1), sa(VIP), TcpFlags::SYN);
                assert_eq!(t.nat_pick(*c, sa(VIP), TcpFlags::ACK), *want);
            }
        }
        // A weight change (new set, slot switch) does not move established flows either.
        t.apply(&spec(LbAlgo::Wrr, &R, &[5, 1, 1]));
        for (c, want) in flows.iter().zip(&first) {
            assert_eq!(t.nat_pick(*c, sa(VIP), TcpFlags::ACK), *want);
        }
        let st = t.dp.stats().unwrap();
        assert_eq!(st.services[&svc()].new_conns, 9 + 5 * 9);
    });
}

#[test]
fn persistence_keeps_a_client_on_its_real_server_within_the_timeout() {
    let env = env();
    env.run(|t| {
        let mut d = spec(LbAlgo::Rr, &R, &[1, 1, 1]);
        d.services.get_mut(&svc()).unwrap().persistence_timeout = 1;
        t.apply(&d);
        let x = |port| client(42, port);
        let home = t.nat_pick(x(1), sa(VIP), TcpFlags::SYN); // rr position 0
        assert_eq!(home, ip(R[0]));
        let mut others = BTreeSet::new();
        for p in 2..6 {
            // Other clients move the cursor on; x's new connections stay home.
            others.insert(t.nat_pick(client(p as u32, 1), sa(VIP), TcpFlags::SYN));
            assert_eq!(t.nat_pick(x(p), sa(VIP), TcpFlags::SYN), home, "persistent");
        }
        assert_eq!(others.len(), 3, "others were scheduled round robin");
        // After the template expires, x is scheduled like anyone: it takes the rr position
        // after the one a probe client just got. (No housekeeping sweep runs here: one would
        // hold the template while x's connections are open, see the next test.)
        std::thread::sleep(Duration::from_millis(1300));
        let probe = t.nat_pick(client(999, 1), sa(VIP), TcpFlags::SYN);
        let expected_next =
            R.iter().map(|a| ip(a)).cycle().skip_while(|a| *a != probe).nth(1).unwrap();
        assert_eq!(t.nat_pick(x(100), sa(VIP), TcpFlags::SYN), expected_next, "template expired");
        // A drained home server gets no new connections, not even persistent ones.
        let home2 = expected_next;
        let w: Vec<u32> = R.iter().map(|a| if ip(a) == home2 { 0 } else { 1 }).collect();
        let mut d = spec(LbAlgo::Rr, &R, &w);
        d.services.get_mut(&svc()).unwrap().persistence_timeout = 1;
        t.apply(&d);
        assert_ne!(t.nat_pick(x(101), sa(VIP), TcpFlags::SYN), home2);
        // ... while its established connection stays.
        assert_eq!(t.nat_pick(x(100), sa(VIP), TcpFlags::ACK), home2);
    });
}

/// Found by review: IPVS keeps a persistence template while it controls connections, but
/// here the template lapsed under a client's open, idle connection (packets refresh it, idle
/// connections send none), and the client's next connection went elsewhere. The housekeeping
/// sweep (`maintain`, every 5 s in the daemon) dates the templates of clients with open
/// connections ahead, past the next sweep; once they are gone, the template lapses.
#[test]
fn persistence_holds_while_a_connection_of_the_client_is_open() {
    let env = env();
    env.run(|t| {
        let mut d = spec(LbAlgo::Rr, &R, &[1, 1, 1]);
        d.services.get_mut(&svc()).unwrap().persistence_timeout = 1;
        t.apply(&d);
        let x = |port| client(42, port);
        let home = t.nat_pick(x(1), sa(VIP), TcpFlags::SYN);
        assert_eq!(t.nat_pick(x(1), sa(VIP), TcpFlags::ACK), home, "established");
        // A sweep, then the connection stays open but idle for longer than the timeout.
        t.dp.maintain().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        // Other clients move the rr cursor until a fresh pick would not be `home`.
        let next_after = |a: IpAddr| R.iter().map(|r| ip(r)).cycle().skip_while(|r| *r != a).nth(1);
        for p in 0..3 {
            let probe = t.nat_pick(client(500 + p, 1), sa(VIP), TcpFlags::SYN);
            if next_after(probe) != Some(home) {
                break;
            }
        }
        assert_eq!(t.nat_pick(x(2), sa(VIP), TcpFlags::SYN), home, "follows the open connection");
    });
}

/// `persistence_granularity`: clients in the same network of that size share one template,
/// so they all land where the first one did; other networks are scheduled as usual.
#[test]
fn persistence_granularity_keeps_a_network_together() {
    let env = env();
    env.run(|t| {
        let mut d = spec(LbAlgo::Rr, &R, &[1, 1, 1]);
        let s = d.services.get_mut(&svc()).unwrap();
        s.persistence_timeout = 60;
        s.persistence_granularity = 24;
        t.apply(&d);
        // client(i, _) is 198.18.64.0 + i: i < 256 share a /24, 256.. the next one.
        let home = t.nat_pick(client(1, 1), sa(VIP), TcpFlags::SYN);
        for i in 2..20 {
            assert_eq!(t.nat_pick(client(i, 1), sa(VIP), TcpFlags::SYN), home, "same /24");
        }
        let mut elsewhere = BTreeSet::new();
        for n in 1..=3 {
            // One client from each of three other /24s: round robin goes on.
            elsewhere.insert(t.nat_pick(client(256 * n + 7, 1), sa(VIP), TcpFlags::SYN));
        }
        assert_eq!(elsewhere.len(), 3, "other networks are scheduled round robin");
        assert_eq!(t.nat_pick(client(200, 9), sa(VIP), TcpFlags::SYN), home);
    });
}

/// Connection sync of persistence templates (docs/conntrack-sync.md): a template exported
/// from `LB_PERSIST` names the service, client network and real server; imported (here into
/// the same data plane after a flush, standing for the backup), it sends the network's new
/// connections to that real server. Templates another director made for three networks,
/// all on R[2], keep all three there — round robin would have spread them. Templates whose
/// service is unknown, not persistent here, of another granularity, or whose real server is
/// unknown are not written.
#[test]
fn imported_persistence_templates_keep_clients_on_their_real_server() {
    use ha_lb::sync::{export::template_entry, SyncTemplate};
    let env = env();
    env.run(|t| {
        let persistent = |timeout, prefix| {
            let mut d = spec(LbAlgo::Rr, &R, &[1, 1, 1]);
            let s = d.services.get_mut(&svc()).unwrap();
            s.persistence_timeout = timeout;
            s.persistence_granularity = prefix;
            d
        };
        t.apply(&persistent(300, 24));
        // client(i, _) is 198.18.64.0 + i; 256 * n + i is the n-th next /24.
        let home = t.nat_pick(client(1, 1), sa(VIP), TcpFlags::SYN);
        let templates = maps::templates(t.dp.bpf()).unwrap();
        assert_eq!(templates.len(), 1);
        let (k, v) = templates[0];
        let index = t.dp.template_index();
        let names = index.names(&k, &v).expect("its service and real server are known");
        let exported = template_entry(&k, &v, maps::monotonic_ns(), &names).unwrap();
        assert_eq!(
            (exported.vip, exported.prefix, exported.real_server),
            (sa(VIP), 24, SocketAddr::new(home, 80))
        );
        assert_eq!(exported.client, "198.18.64.0".parse::<IpAddr>().unwrap(), "the /24");

        // The backup: nothing known, then the template imported.
        t.dp.flush_connections().unwrap();
        assert_eq!(t.dp.import_templates(&[exported], maps::monotonic_coarse_ns()).unwrap(), 1);
        for i in [2, 77, 255] {
            assert_eq!(t.nat_pick(client(i, 5), sa(VIP), TcpFlags::SYN), home, "client {i}");
        }

        t.dp.flush_connections().unwrap();
        let on_r2 = |n: u32| SyncTemplate {
            protocol: Protocol::Tcp,
            vip: sa(VIP),
            // Host bits are cleared on import, as the data path masks.
            client: client(256 * n + 9, 0).ip(),
            prefix: 24,
            real_server: sa(&format!("{}:80", R[2])),
            idle_secs: 10,
        };
        let imported =
            t.dp.import_templates(&[on_r2(1), on_r2(2), on_r2(3)], maps::monotonic_coarse_ns())
                .unwrap();
        assert_eq!(imported, 3);
        for n in 1..=3 {
            let got = t.nat_pick(client(256 * n + 100, 7), sa(VIP), TcpFlags::SYN);
            assert_eq!(got, ip(R[2]), "network {n}");
        }
        // The imported templates age from their idle time: 10 s of the 300 used.
        let idle = maps::templates(t.dp.bpf())
            .unwrap()
            .iter()
            .map(|(_, v)| maps::monotonic_ns().saturating_sub(v.last_seen_ns))
            .max()
            .unwrap();
        assert!(idle < 12_000_000_000, "idle {idle} ns");

        let unknown = [
            SyncTemplate { vip: sa("198.18.100.9:80"), ..on_r2(4) },
            SyncTemplate { protocol: Protocol::Udp, ..on_r2(4) },
            SyncTemplate { real_server: sa("198.18.2.99:80"), ..on_r2(4) },
            SyncTemplate { real_server: sa(&format!("{}:81", R[2])), ..on_r2(4) },
            SyncTemplate { prefix: 16, ..on_r2(4) },
        ];
        assert_eq!(t.dp.import_templates(&unknown, maps::monotonic_coarse_ns()).unwrap(), 0);
        // Idle for the whole persistence_timeout (300 s): expired here, not imported.
        let expired = SyncTemplate { idle_secs: 300, ..on_r2(4) };
        assert_eq!(t.dp.import_templates(&[expired], maps::monotonic_coarse_ns()).unwrap(), 0);

        // The granularity changed by a reload (whole address -> /24): the host keys left in
        // the map are no longer exported (labelled /24 they would steer the host's whole
        // network on the backup to this host's real server). (The other way round, a /24
        // key reads as the key of the network's .0 address, which no client uses.)
        t.dp.flush_connections().unwrap();
        t.apply(&persistent(300, 0));
        t.nat_pick(client(1, 1), sa(VIP), TcpFlags::SYN);
        t.apply(&persistent(300, 24));
        let index = t.dp.template_index();
        let old = maps::templates(t.dp.bpf()).unwrap();
        assert_eq!(old.len(), 1);
        assert!(index.names(&old[0].0, &old[0].1).is_none(), "an old host key exported as /24");
        let net = t.nat_pick(client(2, 1), sa(VIP), TcpFlags::SYN);
        let fresh = maps::templates(t.dp.bpf()).unwrap();
        let named: Vec<_> = fresh.iter().filter_map(|(k, v)| index.names(k, v)).collect();
        assert_eq!(named.len(), 1, "the new /24 key is");
        assert_eq!(named[0].real_server, SocketAddr::new(net, 80));
        t.apply(&persistent(300, 0));
        // No granularity and /32 make the same key: templates pass between such directors.
        let whole = |prefix| SyncTemplate { prefix, client: client(600, 0).ip(), ..on_r2(5) };
        assert_eq!(
            t.dp.import_templates(&[whole(32), whole(0)], maps::monotonic_coarse_ns()).unwrap(),
            2
        );
        t.apply(&persistent(300, 32));
        assert_eq!(t.dp.import_templates(&[whole(0)], maps::monotonic_coarse_ns()).unwrap(), 1);

        t.apply(&persistent(0, 0));
        assert_eq!(t.dp.import_templates(&[on_r2(4)], maps::monotonic_coarse_ns()).unwrap(), 0);
    });
}

#[test]
fn weight_zero_drains_and_removal_reschedules() {
    let env = env();
    env.run(|t| {
        t.apply(&spec(LbAlgo::Rr, &R, &[1, 1, 1]));
        let flows: Vec<SocketAddr> = (0..30).map(|i| client(i, 7000)).collect();
        let first: Vec<IpAddr> =
            flows.iter().map(|&c| t.nat_pick(c, sa(VIP), TcpFlags::SYN)).collect();

        // Drain R[1]: its 10 flows stay, it gets no new ones.
        t.apply(&spec(LbAlgo::Rr, &R, &[1, 0, 1]));
        for (c, want) in flows.iter().zip(&first) {
            assert_eq!(t.nat_pick(*c, sa(VIP), TcpFlags::ACK), *want, "established flow moved");
        }
        let new = new_flows(t, 60, 500);
        assert!(!new.contains(&ip(R[1])), "a drained server got a new connection");
        let st = t.dp.stats().unwrap();
        let r1 = st.services[&svc()].real_servers[&(ip(R[1]), 80)];
        assert_eq!((r1.weight, r1.active_conns), (0, 10));

        // Remove R[1]: its flows are not sent anywhere else (rr schedules a SYN only: their
        // next segment passes, and the director answers it with a RST) and their clients'
        // next connections go to the others; the others' flows do not move.
        let before = t.counters();
        t.apply(&spec(LbAlgo::Rr, &[R[0], R[2]], &[1, 1]));
        for (c, was) in flows.iter().zip(&first) {
            if *was == ip(R[1]) {
                let ack = frame::tcp(t.client_eth(), *c, sa(VIP), TcpFlags::ACK, 1, b"x");
                assert_eq!(t.send_from_client(&ack).action, XdpAction::Pass);
                let now = open(t, *c);
                assert_ne!(now, ip(R[1]), "flow of a removed server rescheduled");
            } else {
                let now = t.nat_pick(*c, sa(VIP), TcpFlags::ACK);
                assert_eq!(now, *was, "flow of a surviving server moved");
            }
        }
        assert_eq!(
            t.counters().since(&before),
            vec![
                (LbReason::NatIn.name(), 40),
                (LbReason::Rescheduled.name(), 10),
                (LbReason::TcpNoFlow.name(), 10)
            ]
        );
        let st = t.dp.stats().unwrap();
        let s = &st.services[&svc()];
        assert!(!s.real_servers.contains_key(&(ip(R[1]), 80)));
        // 30 + 60 opened; 10 of them moved (closed on the old server, reopened elsewhere).
        assert_eq!(s.new_conns, 30 + 60 + 10);
        assert_eq!(s.active_conns, 90);
        let sum: u64 = s.real_servers.values().map(|r| r.active_conns).sum();
        assert_eq!(sum, 90);

        // Re-adding the same address makes a new real server (new generation): old flows
        // already moved stay where they are.
        t.apply(&spec(LbAlgo::Rr, &R, &[1, 1, 1]));
        for (c, was) in flows.iter().zip(&first) {
            let now = t.nat_pick(*c, sa(VIP), TcpFlags::ACK);
            if *was == ip(R[1]) {
                assert_ne!(now, ip(R[1]));
            }
        }
    });
}

#[test]
fn idle_connections_expire_and_stop_counting() {
    let env = env();
    env.run(|t| {
        let vsu = vs("198.18.100.1:53", Protocol::Udp);
        let mut d = one_service(vsu, LbAlgo::Rr, LbKind::Nat, reals(&R, 53, &[1, 1, 1]));
        let mut tcp = spec(LbAlgo::Rr, &R, &[1, 1, 1]);
        d.services.append(&mut tcp.services);
        t.apply(&d);
        t.dp.set_timeouts(Timeouts {
            tcp: Duration::from_secs(60),
            tcp_fin: Duration::from_secs(60),
            udp: Duration::from_millis(1200),
        })
        .unwrap();
        for i in 0..6 {
            t.udp_pick(client(i, 53000), sa("198.18.100.1:53"));
        }
        let t0 = open(t, client(77, 1));
        assert_eq!(t.dp.stats().unwrap().services[&vsu].active_conns, 6);
        assert_eq!(maps::flows(t.dp.bpf()).unwrap().len(), 2 * 7, "forward + reply entries");
        // Not yet idle long enough.
        assert_eq!(t.dp.maintain().unwrap(), 0);
        std::thread::sleep(Duration::from_millis(1500));
        // The data path treats a stale entry as a new flow even before the sweeper runs.
        let before = t.counters();
        t.udp_pick(client(0, 53000), sa("198.18.100.1:53"));
        assert_eq!(
            t.counters().since(&before),
            vec![(LbReason::NatIn.name(), 1), (LbReason::Rescheduled.name(), 1)]
        );
        // The sweeper expires the other five (and their reply entries); TCP stays.
        assert_eq!(t.dp.maintain().unwrap(), 5);
        let st = t.dp.stats().unwrap();
        assert_eq!(st.services[&vsu].active_conns, 1);
        assert_eq!(st.services[&svc()].active_conns, 1);
        assert_eq!(maps::flows(t.dp.bpf()).unwrap().len(), 2 * 2);
        let load: u64 = R
            .iter()
            .map(|a| maps::load(t.dp.bpf(), t.dp.real_id(&vsu, ip(a), 53).unwrap().0).unwrap())
            .sum();
        assert_eq!(load, 1, "lc/wlc load resynchronised from the exact counters");
        assert_eq!(t.nat_pick(client(77, 1), sa(VIP), TcpFlags::ACK), t0);
    });
}

/// Many set switches while flows keep arriving: every packet is forwarded to a real server
/// of the service (never dropped for an empty or half-written set).
#[test]
fn set_switches_never_expose_an_empty_or_partial_set() {
    let env = env();
    env.run(|t| {
        let pool: Vec<String> = (10..40).map(|i| format!("198.18.2.{i}")).collect();
        let before = t.counters();
        for step in 0..40usize {
            let n = 1 + step % 7;
            let members: Vec<RealServerSpec> = (0..n)
                .map(|k| RealServerSpec {
                    addr: pool[(step * 3 + k) % pool.len()].parse().unwrap(),
                    port: 80,
                    weight: 1 + (k as u32 % 3),
                })
                .collect();
            let algo = LbAlgo::ALL[step % LbAlgo::ALL.len()];
            let mut s = ServiceSpec::new(algo, LbKind::Nat);
            s.real_servers = members.clone();
            t.apply(&DesiredState { services: BTreeMap::from([(svc(), s)]) });
            let allowed: BTreeSet<IpAddr> = members.iter().map(|m| m.addr).collect();
            for i in 0..20 {
                let got = t.nat_pick(client(step as u32 * 100 + i, 9), sa(VIP), TcpFlags::SYN);
                assert!(allowed.contains(&got), "step {step} ({algo:?}): {got} not in the set");
            }
        }
        let d = t.counters().since(&before);
        assert_eq!(d, vec![(LbReason::NatIn.name(), 800)], "nothing dropped or passed");
    });
}

/// A connection that vanishes from the table without FIN/RST (what LRU eviction does) keeps
/// counting as active until the next sweep, which recounts from the table.
#[test]
fn a_sweep_recounts_connections_the_table_lost() {
    let env = env();
    env.run(|t| {
        t.apply(&spec(LbAlgo::Lc, &R, &[1, 1, 1]));
        for i in 0..9 {
            open(t, client(i, 3000));
        }
        // "Evict" three forward entries behind the program's back.
        let gone: Vec<_> = maps::flows(t.dp.bpf())
            .unwrap()
            .into_iter()
            .filter(|(_, f)| f.flags & ha_lb_common::lb::LB_FLOW_F_REPLY == 0)
            .take(3)
            .collect();
        for (k, _) in &gone {
            maps::remove_flow(t.dp.bpf_mut(), k).unwrap();
        }
        assert_eq!(t.dp.stats().unwrap().services[&svc()].active_conns, 9, "not noticed yet");
        assert_eq!(t.dp.maintain().unwrap(), 0, "nothing idle");
        let st = t.dp.stats().unwrap();
        let s = &st.services[&svc()];
        assert_eq!((s.new_conns, s.active_conns), (9, 6));
        assert_eq!(s.real_servers.values().map(|r| r.active_conns).sum::<u64>(), 6);
        // lc sees the corrected load: the server that lost the most gets the next flows.
        let loads: Vec<u64> = R
            .iter()
            .map(|a| maps::load(t.dp.bpf(), t.dp.real_id(&svc(), ip(a), 80).unwrap().0).unwrap())
            .collect();
        assert_eq!(loads.iter().sum::<u64>(), 6);
        let min = loads.iter().copied().min().unwrap();
        let least = ip(R[loads.iter().position(|&l| l == min).unwrap()]);
        assert_eq!(t.nat_pick(client(100, 1), sa(VIP), TcpFlags::SYN), least);
    });
}

/// sh and mh adopt a TCP segment without a flow (its entry evicted or swept, a director
/// restarted or taken over without connection sync): it goes to the real server the hash
/// picks, the one the connection was on, and its flow is recorded — not counted as a new
/// connection, and without emptying every CPU's flow cache. A RST or a SYN+ACK is never
/// adopted; rr (and the other schedulers) adopt nothing (see `xdp_flow_cache`).
#[test]
fn sh_and_mh_adopt_a_connection_whose_flow_was_lost() {
    let env = env();
    env.run(|t| {
        for algo in [LbAlgo::Sh, LbAlgo::Mh] {
            t.dp.flush_connections().unwrap();
            t.apply(&spec(algo, &R, &[1, 1, 1]));
            let c = client(11, 5000);
            let first = t.nat_pick(c, sa(VIP), TcpFlags::SYN);
            assert_eq!(t.nat_pick(c, sa(VIP), TcpFlags::ACK), first);
            t.dp.flush_connections().unwrap();
            let new_conns = |t: &Tester| t.dp.stats().unwrap().services[&svc()].new_conns;
            let (n0, e0, before) = (new_conns(t), t.cache_epoch(), t.counters());
            assert_eq!(t.nat_pick(c, sa(VIP), TcpFlags::ACK), first, "{algo:?}: same server");
            assert_eq!(
                t.counters().since(&before),
                vec![("nat_in", 1), ("adopted", 1)],
                "{algo:?}"
            );
            assert_eq!(new_conns(t), n0, "{algo:?}: not a new connection");
            assert_eq!(t.cache_epoch(), e0, "{algo:?}: no flow cache emptied");
            let flows = maps::flows(t.dp.bpf()).unwrap();
            assert!(flows.iter().any(|(k, _)| k.sport == c.port().to_be()), "{algo:?}: recorded");
            // Its next segment takes the known-flow path.
            let before = t.counters();
            assert_eq!(t.nat_pick(c, sa(VIP), TcpFlags::ACK), first);
            assert_eq!(t.counters().since(&before), vec![("nat_in", 1)], "{algo:?}");
            let rst = frame::tcp(t.client_eth(), client(12, 5000), sa(VIP), TcpFlags::RST, 1, b"");
            t.expect_from_client(&rst, XdpAction::Pass, LbReason::TcpNoFlow, "RST");
        }
    });
}

/// Found by review: an adopted segment (sh/mh) made an established flow at once — two table
/// entries for NAT, 900 s, counted active, exported by connection sync — so an ACK flood with
/// random ports against an sh/mh VIP filled the table and evicted every service's real flows.
/// An adopted flow is now half-open as a new one is: inactive, expired after 60 s idle, and
/// established (counted once, closed once) only by the client's next segment.
#[test]
fn an_adopted_flow_is_half_open_until_the_clients_next_segment() {
    let env = env();
    env.run(|t| {
        for algo in [LbAlgo::Sh, LbAlgo::Mh] {
            t.dp.flush_connections().unwrap();
            t.apply(&spec(algo, &R, &[1, 1, 1]));
            let active = |t: &Tester| t.dp.stats().unwrap().services[&svc()].active_conns;
            let new_conns = |t: &Tester| t.dp.stats().unwrap().services[&svc()].new_conns;
            let flow = |t: &Tester, x: SocketAddr| {
                maps::flows(t.dp.bpf()).unwrap().into_iter().find_map(|(k, f)| {
                    let mine = k.sport == x.port().to_be()
                        && k.src[0] == maps::addr_words(x.ip()).0[0]
                        && f.flags & LB_FLOW_F_REPLY == 0;
                    mine.then_some(f)
                })
            };
            let traffic = |t: &Tester, to: IpAddr| {
                let rid = t.dp.real_id(&svc(), to, 80).unwrap().0;
                maps::real_traffic(t.dp.bpf(), rid).unwrap()
            };
            let (a, b) = (client(31, 7000), client(32, 7000));
            let (n0, act0) = (new_conns(t), active(t));
            // Two stray ACKs: adopted, half-open, neither new nor active.
            let before = t.counters();
            t.nat_pick(a, sa(VIP), TcpFlags::ACK);
            let to_b = t.nat_pick(b, sa(VIP), TcpFlags::ACK);
            assert_eq!(
                t.counters().since(&before),
                vec![("nat_in", 2), ("adopted", 2)],
                "{algo:?}"
            );
            for x in [a, b] {
                let f = flow(t, x).unwrap_or_else(|| panic!("{algo:?}: {x} recorded"));
                assert_ne!(f.flags & LB_FLOW_F_HALF_OPEN, 0, "{algo:?}: {x} half-open");
            }
            assert_eq!((new_conns(t), active(t)), (n0, act0), "{algo:?}: adopted: inactive");
            let tb0 = traffic(t, to_b);
            // b's client goes on: established, counted once.
            assert_eq!(t.nat_pick(b, sa(VIP), TcpFlags::ACK), to_b, "{algo:?}");
            assert_eq!(flow(t, b).unwrap().flags & LB_FLOW_F_HALF_OPEN, 0, "{algo:?}");
            assert_eq!(t.nat_pick(b, sa(VIP), TcpFlags::ACK), to_b, "{algo:?}");
            assert_eq!((new_conns(t), active(t)), (n0, act0 + 1), "{algo:?}: b established");
            // a never goes on: 61 s later the sweep expires it, and only it.
            let later = maps::monotonic_ns() + 61_000_000_000;
            assert_eq!(t.dp.expire_connections(later).unwrap(), 1, "{algo:?}: a expired");
            assert!(flow(t, a).is_none() && flow(t, b).is_some(), "{algo:?}");
            assert_eq!((new_conns(t), active(t)), (n0, act0 + 1), "{algo:?}: the sweep agrees");
            // b closes: closed once, as established (not aborted); nothing active is left.
            let fin = frame::tcp(t.client_eth(), b, sa(VIP), TcpFlags::FIN_ACK, 9, b"");
            assert_eq!(t.send_from_client(&fin).action, XdpAction::Redirect, "{algo:?}");
            let tb = traffic(t, to_b);
            assert_eq!(
                (
                    tb.new_conns - tb0.new_conns,
                    tb.established - tb0.established,
                    tb.closed_conns - tb0.closed_conns,
                    tb.aborted - tb0.aborted
                ),
                (0, 1, 1, 0),
                "{algo:?}: (new, established, closed, aborted)"
            );
            assert_eq!((new_conns(t), active(t)), (n0, act0), "{algo:?}: b closed");
            // A FIN+ACK adopted (a closing connection whose flow was lost), then the client's
            // last ACK: closed already, never established (found by review: the ACK counted
            // it established, with no close to follow, until the next sweep).
            let c = client(33, 7000);
            let fin = frame::tcp(t.client_eth(), c, sa(VIP), TcpFlags::FIN_ACK, 9, b"");
            assert_eq!(t.send_from_client(&fin).action, XdpAction::Redirect, "{algo:?}");
            t.nat_pick(c, sa(VIP), TcpFlags::ACK);
            assert_eq!((new_conns(t), active(t)), (n0, act0), "{algo:?}: c not active");
        }
    });
}

/// Found by review: a connection counted as active from its SYN on, and stayed for the
/// established timeout (900 s): a SYN flood, or clients that never complete the handshake,
/// showed as active connections for 15 minutes. As IPVS (SYN_RECV: inactive, 60 s), a
/// connection is now half-open until its client's ACK: not active, and expired after 60 s idle.
#[test]
fn half_open_connections_are_inactive_and_expire_after_60_s() {
    let env = env();
    env.run(|t| {
        t.apply(&spec(LbAlgo::Rr, &R, &[1, 1, 1]));
        let counts = |t: &Tester| {
            let st = t.dp.stats().unwrap();
            let s = &st.services[&svc()];
            let per_real: u64 = s.real_servers.values().map(|r| r.active_conns).sum();
            assert_eq!(per_real, s.active_conns, "real servers add up to the service");
            (s.new_conns, s.active_conns)
        };
        let (a, b, c) = (client(21, 6000), client(22, 6000), client(23, 6000));
        for x in [a, b, c] {
            t.nat_pick(x, sa(VIP), TcpFlags::SYN);
        }
        assert_eq!(counts(t), (3, 0), "three SYNs: new, none active");
        // A retransmitted SYN keeps it half-open (and out of the flow cache, so that the
        // client's ACK is seen).
        t.nat_pick(c, sa(VIP), TcpFlags::SYN);
        assert_eq!(counts(t), (3, 0));
        t.nat_pick(a, sa(VIP), TcpFlags::ACK);
        t.nat_pick(c, sa(VIP), TcpFlags::ACK);
        assert_eq!(counts(t), (3, 2), "the clients' ACKs: established");
        t.nat_pick(a, sa(VIP), TcpFlags::ACK);
        assert_eq!(counts(t), (3, 2), "counted once");
        // b never completes: 61 s later the sweep expires it (IPVS: SYN_RECV 60 s), and only
        // it; the sweep's recount agrees with the data path's.
        let later = maps::monotonic_ns() + 61_000_000_000;
        assert_eq!(t.dp.expire_connections(later).unwrap(), 1, "the half-open one expired");
        let flows = maps::flows(t.dp.bpf()).unwrap();
        let has = |x: SocketAddr| {
            flows.iter().any(|(k, _)| {
                k.sport == x.port().to_be() && k.src[0] == maps::addr_words(x.ip()).0[0]
            })
        };
        assert!(has(a) && has(c) && !has(b));
        assert_eq!(counts(t), (3, 2));
        // A RST before the handshake completes closes a half-open connection: never active.
        let d = client(24, 6000);
        t.nat_pick(d, sa(VIP), TcpFlags::SYN);
        let rst = frame::tcp(t.client_eth(), d, sa(VIP), TcpFlags::RST, 2, b"");
        assert_eq!(t.send_from_client(&rst).action, XdpAction::Redirect);
        assert_eq!(counts(t), (4, 2));
    });
}

/// `check` plans a change without writing it: more services than the tables hold is
/// refused (so a reload is rejected before anything of it applies), a change that fits is
/// accepted, and neither touches what is applied.
#[test]
fn check_refuses_what_does_not_fit_and_changes_nothing() {
    let env = env();
    env.run(|t| {
        t.apply(&spec(LbAlgo::Rr, &["198.18.2.10"], &[1]));
        let too_many = DesiredState {
            services: (0..=ha_lb_common::lb::LB_SERVICES_MAX)
                .map(|i| {
                    let key = VirtualServerKey {
                        address: format!("198.18.{}.{}", 100 + i / 250, 1 + i % 250)
                            .parse()
                            .unwrap(),
                        port: 80,
                        protocol: Protocol::Tcp,
                    };
                    let mut s = ServiceSpec::new(LbAlgo::Rr, LbKind::Nat);
                    s.real_servers = vec![RealServerSpec {
                        addr: "198.18.2.10".parse().unwrap(),
                        port: 80,
                        weight: 1,
                    }];
                    (key, s)
                })
                .collect(),
        };
        let err = t.dp.check(&too_many).expect_err("more services than the tables hold");
        assert!(err.to_string().contains("services"), "{err}");
        t.dp.check(&spec(LbAlgo::Wrr, &["198.18.2.11", "198.18.2.12"], &[1, 2]))
            .expect("a change that fits");
        for i in 0..10 {
            let got = t.nat_pick(client(i, 9), sa(VIP), TcpFlags::SYN);
            assert_eq!(got, "198.18.2.10".parse::<IpAddr>().unwrap(), "check applied nothing");
        }
    });
}
