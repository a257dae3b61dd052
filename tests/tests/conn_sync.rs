//! `lvs_sync_daemon`: established connections survive a director failover. Two directors
//! (NAT, round robin over three real servers); a dozen keep-alive connections through the
//! master; the master is killed (`kill -9`, links down); every connection goes on through the
//! backup, answered by the same real server as before — which, with round robin and no shared
//! state, would not happen (the backup would schedule each as new; a mid-connection segment to
//! another server is reset). See docs/conntrack-sync.md.
//!
//! Persistence templates are synced too: with `persistence_timeout`, a client's *new*
//! connection after the failover goes to the real server it had before.

mod daemon_support;

use std::time::Duration;

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, HaLb, Scratch},
    topology::{DirectorLab, Mode},
};

const ADVERT: f64 = 0.2;

/// `d`'s connection-sync counter `key` (0 when it has not counted any).
fn sync_counter(d: &HaLb, key: &str) -> u64 {
    d.status().ok().and_then(|s| s["lvs_sync_daemon"][key].as_u64()).unwrap_or(0)
}

/// Sends `payload` from `node`'s sync-link address 198.19.0.`n` to `to` (UDP), out of eth1.
fn send_from(node: &ha_lb_lab::netns::Node, n: u8, to: &str, payload: &[u8]) {
    send_from_addr(node, &format!("198.19.0.{n}"), to, payload)
}

/// Sends `payload` from `node`'s address `src` to `to` (UDP), out of `src`'s interface.
fn send_from_addr(node: &ha_lb_lab::netns::Node, src: &str, to: &str, payload: &[u8]) {
    let (src, to): (std::net::SocketAddrV4, std::net::SocketAddrV4) =
        (format!("{src}:0").parse().unwrap(), to.parse().unwrap());
    let payload = payload.to_vec();
    node.run(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.bind(&src.into()).unwrap();
        s.set_multicast_if_v4(src.ip()).unwrap();
        s.set_multicast_ttl_v4(1).unwrap();
        s.send_to(&payload, &to.into()).unwrap();
    })
    .unwrap();
}

fn conf(n: u8, peer: u8, priority: u8, vs: &str) -> String {
    director_conf(n, Some(peer), priority, ADVERT, vs).replacen(
        "dataplane = \"xdp\"\n",
        "dataplane = \"xdp\"\nlvs_sync_daemon = { interface = \"eth1\", vrrp_instance = \"VI_GATEWAY\" }\n",
        1,
    )
}

/// The NAT pair with connection sync: three real servers serving, the virtual server (rr
/// over them, with `vs_extra` lines) on both directors, d1 MASTER, d2 BACKUP.
struct Pair {
    t: DirectorLab,
    _pids: Vec<u32>,
    s: Scratch,
    vs: String,
    n1: ha_lb_lab::Node,
    n2: ha_lb_lab::Node,
    d1: HaLb,
    d2: HaLb,
}

fn pair(scratch: &str, vs_extra: &str) -> Pair {
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    let _pids = t.start_real_servers().unwrap();
    let s = Scratch::new(scratch).unwrap();
    let rss: Vec<String> = (1..=3).map(|n| real_server(n, 1, "", None)).collect();
    let vs = virtual_server(vs_extra, &rss);
    let (n1, n2) = (t.directors[0].clone(), t.directors[1].clone());
    let d1 = HaLb::start(&mut t.lab, &n1, &s, "d1", &conf(1, 2, 150, &vs)).unwrap();
    wait_master_serving(&t, &d1);
    let d2 = HaLb::start(&mut t.lab, &n2, &s, "d2", &conf(2, 1, 100, &vs)).unwrap();
    eventually(Duration::from_secs(5), "d2 BACKUP", || {
        d2.state("VI_GATEWAY").as_deref() == Some("BACKUP")
    })
    .unwrap();
    Pair { t, _pids, s, vs, n1, n2, d1, d2 }
}

#[test]
fn established_connections_survive_a_failover_with_lvs_sync_daemon() {
    let Pair { mut t, _pids, s, vs, n1, n2, d1, d2 } = pair("csync", "lb_algo = \"rr\"");

    // Found by review: the receiver took datagrams sent to any of its addresses, unicast
    // too. It takes only those sent to the sync group (a table request of another sync id
    // here, counted as such when it is taken).
    let other_id = ha_lb::sync::request(99);
    send_from(&n1, 1, "198.19.0.2:8848", &other_id);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sync_counter(&d2, "datagrams_other_id"), 0, "unicast datagram taken");
    send_from(&n1, 1, "224.0.0.81:8848", &other_id);
    eventually(Duration::from_secs(2), "the multicast one is taken", || {
        sync_counter(&d2, "datagrams_other_id") == 1
    })
    .unwrap();

    let (mut conns, names) = open_spread(&t.client, 12, 3);
    // The master sends its new connections once a second.
    std::thread::sleep(Duration::from_millis(2500));

    let _ = n2.ip(&["neigh", "flush", "dev", "eth0"]);
    crash(&mut t, &d1);
    eventually(Duration::from_secs(3), "d2 holds both VIPs", || holds_both_vips(&n2)).unwrap();

    still_served(&mut conns, &names, "after the failover", &|| d2.log_text());

    // d1 comes back (a fresh daemon, an empty table) with the higher priority and takes the
    // VIPs back: it asks d2 for its whole table at start and holds its preemption until it
    // can have it, so the connections survive the fail-back too (d2 had sent them only
    // when they were new, and a new director would have scheduled each afresh).
    n1.ip(&["link", "set", "eth0", "up"]).unwrap();
    n1.ip(&["link", "set", "eth1", "up"]).unwrap();
    let d1 = HaLb::start(&mut t.lab, &n1, &s, "d1b", &conf(1, 2, 150, &vs)).unwrap();
    // (The killed d1 left its VIPs on its links; the new one removes them at start.)
    eventually(Duration::from_secs(10), "d1 MASTER with both VIPs again", || {
        d1.state("VI_GATEWAY").as_deref() == Some("MASTER")
            && d1.state("VI_PUBLIC").as_deref() == Some("MASTER")
            && holds_both_vips(&n1)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d1.log_text()));
    eventually(Duration::from_secs(3), "d2 released them", || !holds_both_vips(&n2))
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", d2.log_text(), d1.log_text()));
    still_served(&mut conns, &names, "after the fail-back", &|| d1.log_text());
    // d2 marked the end of its whole-table answer, and d1 saw it (its start hold waits for
    // that end when the table takes longer than the 5 s to arrive).
    assert!(sync_counter(&d2, "table_ends_sent") >= 1, "{}", d2.log_text());
    assert!(sync_counter(&d1, "table_ends_received") >= 1, "{}", d1.log_text());
}

/// A restarted higher-priority director held its preemption a fixed 5 s after start, however
/// much of the master's table was still arriving (more than ~40,000 connections). It holds it
/// while a whole-table send is arriving, until its end mark — end to end through the daemon
/// and its instances. Here the send is played by hand: d2's own datagrams are dropped on
/// their way into d1's node, and marked datagrams are sent on d1's node (looped back to it).
#[test]
fn a_restarted_director_holds_its_preemption_until_the_table_is_complete() {
    let Pair { mut t, _pids, s, vs, n1, n2, d1, d2: _d2 } = pair("hsync", "lb_algo = \"rr\"");
    crash(&mut t, &d1);
    eventually(Duration::from_secs(3), "d2 holds both VIPs", || holds_both_vips(&n2)).unwrap();
    n1.sh("nft add table inet hold && \
         nft add chain inet hold in '{ type filter hook input priority 0; }' && \
         nft add rule inet hold in ip saddr 198.19.0.2 udp dport 8848 drop")
        .unwrap();
    n1.ip(&["link", "set", "eth0", "up"]).unwrap();
    n1.ip(&["link", "set", "eth1", "up"]).unwrap();
    let d1 = HaLb::start(&mut t.lab, &n1, &s, "d1b", &conf(1, 2, 150, &vs)).unwrap();
    eventually(Duration::from_secs(5), "d1 BACKUP", || {
        d1.state("VI_GATEWAY").as_deref() == Some("BACKUP")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d1.log_text()));
    let entry = |i: u16| ha_lb::sync::SyncEntry {
        protocol: ha_lb::config::Protocol::Tcp,
        lb_kind: ha_lb::config::LbKind::Nat,
        client: std::net::SocketAddr::new([198, 18, 0, 77].into(), 40_000 + i),
        vip: vip(),
        real_server: "198.19.0.11:80".parse().unwrap(),
        idle_secs: 0,
        closed: false,
    };
    let marked = |i: u16, end: bool| {
        let mut d = ha_lb::sync::encode(52, &[entry(i)]).remove(0);
        ha_lb::sync::wire::mark_table(&mut d, end);
        d
    };
    // 10 s of a whole-table send, a datagram every 400 ms: d1 does not preempt.
    let start = std::time::Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(10) {
        send_from(&n1, 1, "224.0.0.81:8848", &marked(i, false));
        i += 1;
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            d1.state("VI_GATEWAY").as_deref(),
            Some("BACKUP"),
            "after {:?}\n{}",
            start.elapsed(),
            d1.log_text()
        );
    }
    assert!(holds_both_vips(&n2));
    // Its end: d1 preempts.
    send_from(&n1, 1, "224.0.0.81:8848", &marked(i, true));
    eventually(Duration::from_secs(5), "d1 MASTER with both VIPs", || {
        d1.state("VI_GATEWAY").as_deref() == Some("MASTER")
            && d1.state("VI_PUBLIC").as_deref() == Some("MASTER")
            && holds_both_vips(&n1)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d1.log_text()));
    let log = d1.log_text();
    assert!(log.contains("the master's whole table is arriving"), "{log}");
    assert!(log.contains("start hold released: the master's whole table has arrived"), "{log}");
}

/// Persistence templates (`LB_PERSIST`) are synced with the connections: six client
/// addresses of a persistent service (rr over three real servers) each have a real server on
/// the master; after a `kill -9` of the master, each one's *new* connection goes to that
/// same real server through the backup. Without the templates the backup schedules each
/// afresh: connecting in the reverse order, round robin cannot give all six their old real
/// servers (the wanted sequence runs backwards through the ring).
#[test]
fn persistent_clients_keep_their_real_server_after_a_failover() {
    let Pair { mut t, _pids, s: _s, vs: _vs, n1: _n1, n2, d1, d2 } =
        pair("psync", "lb_algo = \"rr\"\npersistence_timeout = 300");

    let clients = more_client_addresses(&t.client);
    let before: Vec<String> = clients.iter().map(|&c| get_from(&t.client, c).unwrap()).collect();
    assert_spread(&before, 3);
    // Persistent: a second connection of each goes where the first did.
    for (&c, want) in clients.iter().zip(&before) {
        assert_eq!(&get_from(&t.client, c).unwrap(), want, "{c} persistent on the master");
    }
    eventually(Duration::from_secs(4), "d2 imported the six templates", || {
        sync_counter(&d2, "templates_imported") >= 6
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", d1.log_text(), d2.log_text()));
    assert!(sync_counter(&d1, "templates_sent") >= 6);
    assert_eq!(sync_counter(&d2, "templates_unknown"), 0);

    let _ = n2.ip(&["neigh", "flush", "dev", "eth0"]);
    crash(&mut t, &d1);
    eventually(Duration::from_secs(3), "d2 holds both VIPs", || holds_both_vips(&n2)).unwrap();

    // New connections, in the reverse order.
    let after = new_connections_reversed(&t.client, &clients);
    assert_eq!(after, before, "each client's new connection after the failover\n{}", d2.log_text());
}

/// Kernel IPVS sync messages (a keepalived + IPVS director on the sync link) take the same
/// gate as ours, end to end through the daemon: a backup imports a hand-built version-1
/// message's connection (and counts an entry it cannot have, a firewall mark's, as unknown),
/// ignores another sync id, rejects a version-0 message; the master does not import. (The
/// kernel's own messages, and the failover they serve, are `ipvs_sync_interop_uml`'s.)
#[test]
fn kernel_ipvs_messages_take_the_same_gate() {
    use ha_lb::sync::ipvs_wire::{self, IpvsConn};
    let Pair { t: _t, _pids, s: _s, vs: _vs, n1, n2, d1, d2 } = pair("isync", "lb_algo = \"rr\"");

    let conn = IpvsConn::from_entry(
        &ha_lb::sync::SyncEntry {
            protocol: ha_lb::config::Protocol::Tcp,
            lb_kind: ha_lb::config::LbKind::Nat,
            client: "198.18.0.77:40000".parse().unwrap(),
            vip: vip(),
            real_server: "198.19.0.11:80".parse().unwrap(),
            idle_secs: 0,
            closed: false,
        },
        &Default::default(),
    )
    .unwrap();
    let fwmark = IpvsConn { fwmark: 5, ..conn };
    // (d1, the master, sends its own connections too — the probes' — so d2's
    // `connections_*` counters are lower bounds here.)
    // From the client's side of the sync link: d2 (BACKUP) imports.
    send_from(&n1, 1, "224.0.0.81:8848", &ipvs_wire::encode(52, &[conn, fwmark]).remove(0));
    eventually(Duration::from_secs(2), "d2 imported the kernel's connection", || {
        sync_counter(&d2, "datagrams_ipvs") == 1
            && sync_counter(&d2, "connections_imported") >= 1
            && sync_counter(&d2, "connections_unknown") >= 1
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", d2.status().map(|s| s["lvs_sync_daemon"].clone())));
    send_from(&n1, 1, "224.0.0.81:8848", &ipvs_wire::encode(99, &[conn]).remove(0));
    let mut v0 = vec![1, 52, 0, 28];
    v0.extend_from_slice(&[0; 24]);
    send_from(&n1, 1, "224.0.0.81:8848", &v0);
    eventually(Duration::from_secs(2), "another id ignored, version 0 rejected", || {
        sync_counter(&d2, "datagrams_ipvs") == 3
            && sync_counter(&d2, "datagrams_other_id") == 1
            && sync_counter(&d2, "datagrams_rejected") == 1
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", d2.status().map(|s| s["lvs_sync_daemon"].clone())));
    assert!(d2.log_text().contains("protocol version 0 are not imported"), "{}", d2.log_text());
    // The master does not import — once IMPORT_AFTER_MASTER (11 s: the last diff of the
    // director that left) have passed since it became MASTER; until then it did (the
    // messages above reached it too, looped back on n1).
    std::thread::sleep(ha_lb::sync::session::IMPORT_AFTER_MASTER);
    let (before, ignored) = (
        sync_counter(&d1, "connections_imported"),
        sync_counter(&d1, "connections_ignored_as_master"),
    );
    send_from(&n2, 2, "224.0.0.81:8848", &ipvs_wire::encode(52, &[conn]).remove(0));
    eventually(Duration::from_secs(2), "d1 (MASTER) ignored it", || {
        sync_counter(&d1, "connections_ignored_as_master") > ignored
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", d1.status().map(|s| s["lvs_sync_daemon"].clone())));
    assert_eq!(sync_counter(&d1, "connections_imported"), before);
}

/// Makes `node`'s sync link `sync0` (a macvlan on eth1: the lab's kernel may have no VLANs)
/// with address 198.20.0.`n`/24, up.
fn make_sync_vlan(node: &ha_lb_lab::Node, n: u8) {
    let add = ["link", "add", "link", "eth1", "name", "sync0", "type", "macvlan", "mode", "bridge"];
    node.ip(&add).unwrap();
    node.ip(&["addr", "add", &format!("198.20.0.{n}/24"), "dev", "sync0"]).unwrap();
    node.ip(&["link", "set", "sync0", "up"]).unwrap();
}

/// Found by review: the sync socket is bound to its interface's device (SO_BINDTODEVICE, the
/// group joined on its index) once, at start; when that interface was deleted and created
/// again (a sync VLAN or bond re-made; here a macvlan), nothing more was received on it (nor sent). The
/// daemon makes the socket again on the new device, as it restarts instances on one.
#[test]
fn a_sync_interface_created_again_is_used_again() {
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    let _pids = t.start_real_servers().unwrap();
    let s = Scratch::new("rsync").unwrap();
    let rss: Vec<String> = (1..=3).map(|n| real_server(n, 1, "", None)).collect();
    let vs = virtual_server("lb_algo = \"rr\"", &rss);
    let (n1, n2) = (t.directors[0].clone(), t.directors[1].clone());
    make_sync_vlan(&n1, 1);
    make_sync_vlan(&n2, 2);
    let conf = |n, peer, priority| {
        conf(n, peer, priority, &vs).replacen(
            "interface = \"eth1\", vrrp_instance",
            "interface = \"sync0\", vrrp_instance",
            1,
        )
    };
    let d1 = HaLb::start(&mut t.lab, &n1, &s, "d1", &conf(1, 2, 150)).unwrap();
    wait_master_serving(&t, &d1);
    let d2 = HaLb::start(&mut t.lab, &n2, &s, "d2", &conf(2, 1, 100)).unwrap();
    eventually(Duration::from_secs(5), "d2 BACKUP", || {
        d2.state("VI_GATEWAY").as_deref() == Some("BACKUP")
    })
    .unwrap();
    let other_id = ha_lb::sync::request(99);
    let lsync = |d: &HaLb| d.status().map(|s| s["lvs_sync_daemon"].clone());
    send_from_addr(&n1, "198.20.0.1", "224.0.0.81:8848", &other_id);
    eventually(Duration::from_secs(2), "d2 receives on sync0", || {
        sync_counter(&d2, "datagrams_other_id") == 1
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", lsync(&d2), d2.log_text()));

    n2.ip(&["link", "del", "sync0"]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    make_sync_vlan(&n2, 2);
    eventually(Duration::from_secs(3), "d2 receives on the new sync0", || {
        send_from_addr(&n1, "198.20.0.1", "224.0.0.81:8848", &other_id);
        std::thread::sleep(Duration::from_millis(200));
        sync_counter(&d2, "datagrams_other_id") >= 2
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", lsync(&d2), d2.log_text()));
    // And sends on one: the master's sync0 made again, its new connections reach d2.
    n1.ip(&["link", "del", "sync0"]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    make_sync_vlan(&n1, 1);
    std::thread::sleep(Duration::from_millis(500));
    let before = sync_counter(&d2, "connections_imported");
    let (_conns, _names) = open_spread(&t.client, 3, 3);
    eventually(Duration::from_secs(4), "d2 imports d1's new connections", || {
        sync_counter(&d2, "connections_imported") >= before + 3
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} {:?}\n{}", lsync(&d1), lsync(&d2), d1.log_text()));
}
