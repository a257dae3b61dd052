//! Sync groups and notify hooks, end to end: two directors, each with a public and a gateway
//! instance in one `vrrp_sync_group`. Notify hooks get keepalived's arguments; a failure of
//! one member's interface moves both VIPs; a stop runs the STOP hooks.

use std::{path::Path, time::Duration};

use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    topology::{DirectorLab, Mode},
};

const VIP: &str = "198.18.0.100";
const GW: &str = "198.19.0.254";

fn conf(router: &str, priority: u8, log: &Path) -> String {
    // `notify` gets "INSTANCE|GROUP name STATE priority" appended; notify_master /
    // notify_stop get nothing (keepalived's conventions).
    let hook = |tag: &str| {
        format!(r#"["/bin/sh", "-c", "echo {tag} \"$*\" >> {}", "hook"]"#, log.display())
    };
    format!(
        r#"[global]
router_id = "{router}"
dataplane = "none"
control_socket = "{{socket}}"

[[vrrp_instance]]
name = "VI_PUBLIC"
interface = "eth0"
virtual_router_id = 51
version = 3
priority = {priority}
advert_int = 0.1
virtual_ipaddress = ["{VIP}/24"]
notify = {n}
notify_master = {m}
notify_stop = {s}

[[vrrp_instance]]
name = "VI_GATEWAY"
interface = "eth1"
virtual_router_id = 52
version = 3
priority = {priority}
advert_int = 0.1
virtual_ipaddress = ["{GW}/24"]
notify = {n}

[[vrrp_sync_group]]
name = "director"
group = ["VI_PUBLIC", "VI_GATEWAY"]
notify = {g}
"#,
        n = hook("notify"),
        m = hook("notify_master"),
        s = hook("notify_stop"),
        g = hook("group"),
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(|l| l.trim().to_string()).collect()
}

fn has(p: &Path, line: &str) -> bool {
    lines(p).iter().any(|l| l == line)
}

fn both(n: &ha_lb_lab::Node) -> bool {
    holds(n, "eth0", VIP) && holds(n, "eth1", GW)
}

/// The pair: d1 (priority 150) started first and holding both VIPs, then d2 (100); their
/// daemons and notify logs (kept, with the lab and the scratch directory, for the test).
struct Pair {
    t: DirectorLab,
    a: HaLb,
    log1: std::path::PathBuf,
    log2: std::path::PathBuf,
    b: HaLb,
    _s: Scratch,
}

impl Pair {
    /// Until d2's group is BACKUP (its notify hook ran).
    fn wait_backup(&self) {
        eventually(Duration::from_secs(3), "d2 BACKUP", || {
            has(&self.log2, "group GROUP director BACKUP 100")
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", lines(&self.log2)));
    }
}

/// `ok()` holds all through the next `d` (sampled every 50 ms); panics with `what()` if not.
fn holds_for(d: Duration, mut ok: impl FnMut() -> bool, what: impl Fn() -> String) {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        assert!(ok(), "{}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pair(name: &str) -> Pair {
    let mut t = DirectorLab::build(Mode::Nat, 2, 0).unwrap();
    let s = Scratch::new(name).unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let (log1, log2) = (s.dir.join("d1.notify"), s.dir.join("d2.notify"));
    // d1 first, so the tests are about sync groups and hooks, not about a start-up race.
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &conf("d1", 150, &log1)).unwrap();
    eventually(Duration::from_secs(5), "d1 holds both VIPs", || both(&d1)).unwrap();
    let b = HaLb::start(&mut t.lab, &d2, &s, "d2", &conf("d2", 100, &log2)).unwrap();
    Pair { t, a, log1, log2, b, _s: s }
}

#[test]
fn sync_group_moves_together_and_notify_gets_keepalived_arguments() {
    let mut p = pair("syncnotify");
    let (d1, d2) = (p.t.directors[0].clone(), p.t.directors[1].clone());
    let (t, a, log1, log2) = (&mut p.t, &p.a, &p.log1, &p.log2);
    eventually(Duration::from_secs(3), "d1's MASTER hooks ran", || {
        has(log1, "notify INSTANCE VI_PUBLIC MASTER 150")
            && has(log1, "notify INSTANCE VI_GATEWAY MASTER 150")
            && has(log1, "notify_master")
            && has(log1, "group GROUP director MASTER 150")
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", lines(log1)));
    eventually(Duration::from_secs(3), "d2's BACKUP hooks ran", || {
        has(log2, "notify INSTANCE VI_PUBLIC BACKUP 100")
            && has(log2, "group GROUP director BACKUP 100")
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", lines(log2)));
    assert!(!has(log2, "notify_master"), "d2 never became master");

    // d1 loses its inside link: VI_GATEWAY goes FAULT, and the sync group takes VI_PUBLIC
    // (whose own link is fine) down with it, so d2 holds both VIPs — never split.
    d1.ip(&["link", "set", "eth1", "down"]).unwrap();
    eventually(Duration::from_secs(3), "d2 holds both VIPs", || both(&d2)).unwrap();
    eventually(Duration::from_secs(2), "d1 released the public VIP", || !holds(&d1, "eth0", VIP))
        .unwrap();
    eventually(Duration::from_secs(2), "FAULT hooks ran on d1", || {
        has(log1, "notify INSTANCE VI_PUBLIC FAULT 150")
            && has(log1, "notify INSTANCE VI_GATEWAY FAULT 150")
            && has(log1, "group GROUP director FAULT 150")
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", lines(log1)));
    let st = a.status().unwrap();
    for i in st["vrrp_instances"].as_array().unwrap() {
        assert_eq!(i["state"], "FAULT", "{i}");
        assert_eq!(i["sync_group"], "director");
    }

    // The link returns: d1 leaves FAULT and, with the higher priority, takes both back.
    d1.ip(&["link", "set", "eth1", "up"]).unwrap();
    eventually(Duration::from_secs(5), "d1 holds both VIPs again", || both(&d1)).unwrap();
    eventually(Duration::from_secs(2), "d2 released both", || {
        !holds(&d2, "eth0", VIP) && !holds(&d2, "eth1", GW)
    })
    .unwrap();

    // Graceful stop: STOP hooks, after the hand-over.
    t.lab.signal(a.pid, libc::SIGTERM).unwrap();
    let st = t.lab.wait(a.pid, Duration::from_secs(10)).unwrap();
    assert!(st.success(), "ha-lb exits 0 after a graceful stop");
    assert!(both(&d2), "d2 holds both VIPs after d1 stopped");
    eventually(Duration::from_secs(2), "STOP hooks ran", || {
        has(log1, "notify_stop") && has(log1, "notify INSTANCE VI_PUBLIC STOP 150")
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", lines(log1)));
}

/// A reload that removes an instance stops it as a graceful stop would: its STOP hooks run
/// (with the configuration it ran with: the new one no longer has them) and its VIP goes.
#[test]
fn reload_that_removes_an_instance_runs_its_stop_hooks() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 0).unwrap();
    let s = Scratch::new("reloadstop").unwrap();
    let d1 = t.directors[0].clone();
    let log = s.dir.join("d1.notify");
    let a = HaLb::start(&mut t.lab, &d1, &s, "d1", &conf("d1", 150, &log)).unwrap();
    eventually(Duration::from_secs(5), "d1 holds both VIPs", || {
        holds(&d1, "eth0", VIP) && holds(&d1, "eth1", GW) && has(&log, "notify_master")
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", lines(&log)));

    // The same file without VI_PUBLIC (and the sync group that names it).
    let full = std::fs::read_to_string(&a.config).unwrap();
    let start = full.find("[[vrrp_instance]]\nname = \"VI_PUBLIC\"").unwrap();
    let end = full.find("[[vrrp_instance]]\nname = \"VI_GATEWAY\"").unwrap();
    let group = full.find("[[vrrp_sync_group]]").unwrap();
    std::fs::write(&a.config, format!("{}{}", &full[..start], &full[end..group])).unwrap();
    t.lab.signal(a.pid, libc::SIGHUP).unwrap();
    eventually(Duration::from_secs(3), "VI_PUBLIC's STOP hooks ran", || {
        has(&log, "notify_stop") && has(&log, "notify INSTANCE VI_PUBLIC STOP 150")
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", lines(&log), a.log_text()));
    eventually(Duration::from_secs(2), "the public VIP is gone", || !holds(&d1, "eth0", VIP))
        .unwrap();
    assert!(holds(&d1, "eth1", GW), "VI_GATEWAY keeps its VIP");
    let st = a.status().unwrap();
    let names: Vec<&str> = st["vrrp_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["VI_GATEWAY"]);
}

/// A reload that changes one member's VRRP parameters restarts the whole sync group: the
/// peer takes both VIPs, then the higher-priority node takes both back. Restarting the member
/// alone handed only its VIP to the peer while this node kept the other (a NAT director's
/// public VIP on one node, its gateway on the other).
#[test]
fn reload_restarting_one_member_moves_its_whole_sync_group() {
    let p = pair("syncrestart");
    let (d1, d2) = (p.t.directors[0].clone(), p.t.directors[1].clone());
    let (t, a, log2) = (&p.t, &p.a, &p.log2);
    p.wait_backup();

    // VI_PUBLIC's advert interval changes (an election parameter); VI_GATEWAY's nothing.
    let text = std::fs::read_to_string(&a.config).unwrap();
    let changed = text.replacen("advert_int = 0.1", "advert_int = 0.2", 1);
    assert_ne!(changed, text);
    std::fs::write(&a.config, changed).unwrap();
    t.lab.signal(a.pid, libc::SIGHUP).unwrap();
    eventually(Duration::from_secs(3), "the gateway VIP followed the public one to d2", || {
        has(log2, "notify INSTANCE VI_PUBLIC MASTER 100")
            && has(log2, "notify INSTANCE VI_GATEWAY MASTER 100")
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", lines(log2), a.log_text()));
    eventually(Duration::from_secs(5), "d1 holds both VIPs again", || both(&d1)).unwrap();
    eventually(Duration::from_secs(2), "d2 released both", || {
        !holds(&d2, "eth0", VIP) && !holds(&d2, "eth1", GW)
    })
    .unwrap();
}

/// Drops the VRRP adverts `node` sends out of `dev` (its peer no longer hears it there).
fn mute_adverts(node: &ha_lb_lab::Node, dev: &str) {
    node.sh(&format!(
        "nft add table ip mute && nft add chain ip mute out '{{ type filter hook output priority 0; }}' \
         && nft add rule ip mute out oifname {dev} ip protocol vrrp drop"
    ))
    .unwrap();
}

fn states(d: &HaLb) -> Vec<(String, String)> {
    let st = d.status().unwrap();
    st["vrrp_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (i["name"].as_str().unwrap().to_string(), i["state"].as_str().unwrap().to_string())
        })
        .collect()
}

/// keepalived's "MASTER together": d2 stops hearing d1 on the inside link only. Its gateway
/// instance would take over alone (the gateway VIP on d2, the public one on d1: NAT replies
/// to the wrong director); as a sync group member it only gets ready, and waits while its
/// public instance still hears d1.
#[test]
fn sync_group_does_not_go_master_while_one_member_hears_a_master() {
    let p = pair("syncgate");
    let (d1, d2) = (p.t.directors[0].clone(), p.t.directors[1].clone());
    p.wait_backup();
    mute_adverts(&d1, "eth1");
    // Ready once its Master_Down_Interval (≈ 0.36 s here) passes without an advert.
    eventually(Duration::from_secs(3), "d2's gateway instance is ready and waits", || {
        let st = p.b.status().unwrap();
        st["vrrp_instances"].as_array().unwrap().iter().any(|i| {
            i["name"] == "VI_GATEWAY"
                && i["sync_group_waits_for"] == serde_json::json!(["VI_PUBLIC"])
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.b.log_text()));
    // And it stays so: many Master_Down_Intervals later d2 holds nothing, d1 both.
    holds_for(
        Duration::from_secs(2),
        || !holds(&d2, "eth1", GW) && !holds(&d2, "eth0", VIP),
        || format!("d2 took a VIP alone\n{}", p.b.log_text()),
    );
    assert!(both(&d1));
    assert!(states(&p.b).iter().all(|(_, s)| s == "BACKUP"), "{:?}", states(&p.b));
    assert!(!has(&p.log2, "notify INSTANCE VI_GATEWAY MASTER 100"), "{:?}", lines(&p.log2));
}

/// keepalived's "BACKUP together": d1 does not hear d2 on the inside link; d2 gets the higher
/// priority and takes both instances (each hears d1's lower adverts: every member is ready).
/// d1's public instance loses its election; its gateway instance hears nothing that would
/// make it yield, and leaves MASTER with its group — without that, both directors would
/// hold the gateway VIP.
#[test]
fn a_member_that_loses_its_election_takes_its_group_to_backup() {
    let p = pair("syncbackup");
    let (d1, d2) = (p.t.directors[0].clone(), p.t.directors[1].clone());
    p.wait_backup();
    mute_adverts(&d2, "eth1");
    std::fs::write(
        &p.b.config,
        conf("d2", 200, &p.log2).replace("{socket}", &p.b.socket.display().to_string()),
    )
    .unwrap();
    p.t.lab.signal(p.b.pid, libc::SIGHUP).unwrap();
    eventually(Duration::from_secs(5), "d2 holds both VIPs", || both(&d2))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.b.log_text()));
    eventually(Duration::from_secs(3), "d1 released the gateway VIP with its group", || {
        !holds(&d1, "eth1", GW) && !holds(&d1, "eth0", VIP)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.a.log_text()));
    // d1's gateway instance, alone on its link now, gets ready, but its public instance
    // follows d2: d1 stays out.
    holds_for(
        Duration::from_secs(2),
        || !holds(&d1, "eth1", GW),
        || format!("d1 took the gateway VIP back alone\n{}", p.a.log_text()),
    );
    assert!(states(&p.a).iter().all(|(_, s)| s == "BACKUP"), "{:?}", states(&p.a));
    assert!(both(&d2));
}

/// One director's instances, each `(name, interface, vrid, priority, vip)`, and the sync
/// group of those named in `group` (none when empty).
fn instances_conf(router: &str, insts: &[(&str, &str, u8, u8, &str)], group: &[&str]) -> String {
    let mut s = format!(
        "[global]\nrouter_id = \"{router}\"\ndataplane = \"none\"\ncontrol_socket = \"{{socket}}\"\n"
    );
    for (name, dev, vrid, prio, vip) in insts {
        s += &format!(
            "\n[[vrrp_instance]]\nname = \"{name}\"\ninterface = \"{dev}\"\nvirtual_router_id = {vrid}\n\
             version = 3\npriority = {prio}\nadvert_int = 0.1\nvirtual_ipaddress = [\"{vip}/24\"]\n"
        );
    }
    if !group.is_empty() {
        let members: Vec<String> = group.iter().map(|m| format!("\"{m}\"")).collect();
        s += &format!(
            "\n[[vrrp_sync_group]]\nname = \"director\"\ngroup = [{}]\n",
            members.join(", ")
        );
    }
    s
}

/// A reload that adds a new instance to a sync group that is MASTER here restarts the group:
/// the newcomer follows the peer's master, so the group must not stay MASTER with it (the
/// peer would hold the gateway VIP, this node the public one).
#[test]
fn reload_adding_a_member_restarts_its_group() {
    let mut t = DirectorLab::build(Mode::Nat, 2, 0).unwrap();
    let s = Scratch::new("syncgrow").unwrap();
    let (d1, d2) = (t.directors[0].clone(), t.directors[1].clone());
    let public = ("VI_PUBLIC", "eth0", 51, 150, VIP);
    let gateway = ("VI_GATEWAY", "eth1", 52, 150, GW);
    // d2: both instances, no group; the gateway with the higher priority.
    let d2_conf = instances_conf(
        "d2",
        &[("VI_PUBLIC", "eth0", 51, 100, VIP), ("VI_GATEWAY", "eth1", 52, 200, GW)],
        &[],
    );
    let a =
        HaLb::start(&mut t.lab, &d1, &s, "d1", &instances_conf("d1", &[public], &["VI_PUBLIC"]))
            .unwrap();
    eventually(Duration::from_secs(5), "d1 holds the public VIP", || holds(&d1, "eth0", VIP))
        .unwrap();
    let _b = HaLb::start(&mut t.lab, &d2, &s, "d2", &d2_conf).unwrap();
    eventually(Duration::from_secs(5), "d2 holds the gateway VIP", || holds(&d2, "eth1", GW))
        .unwrap();
    assert!(holds(&d1, "eth0", VIP), "d1 keeps the public VIP (higher priority)");

    let grown = instances_conf("d1", &[public, gateway], &["VI_PUBLIC", "VI_GATEWAY"]);
    std::fs::write(&a.config, grown.replace("{socket}", &a.socket.display().to_string())).unwrap();
    t.lab.signal(a.pid, libc::SIGHUP).unwrap();
    // The group starts again; its gateway member follows d2 (priority 200), so the public
    // member waits, BACKUP, and d2 takes the public VIP too.
    eventually(Duration::from_secs(5), "d2 holds both VIPs", || both(&d2))
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_text()));
    // Make-before-break: d1's stopping member keeps the VIP an advert interval after d2
    // took it, then lets it go, and its restarted group does not take it back.
    eventually(Duration::from_secs(2), "d1 released the public VIP", || !holds(&d1, "eth0", VIP))
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_text()));
    holds_for(
        Duration::from_secs(1),
        || !holds(&d1, "eth0", VIP),
        || format!("d1 kept the public VIP\n{}", a.log_text()),
    );
}

/// keepalived starts an instance that cannot run (its interface missing or without an address)
/// in FAULT, and a sync group is in FAULT while any member is. Here a reload adds a member on
/// an interface without an address yet: its start fails (retried every 5 s), and the other
/// member goes to FAULT, naming it, instead of waiting BACKUP for it for ever with the group's
/// VIP held nowhere on this node. Once the address is there, the member starts and the group
/// is MASTER again.
#[test]
fn a_member_that_cannot_start_puts_its_group_in_fault() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 0).unwrap();
    let s = Scratch::new("syncfault").unwrap();
    let d1 = t.directors[0].clone();
    let public = ("VI_PUBLIC", "eth0", 51, 150, VIP);
    let late = ("VI_LATE", "late0", 53, 150, "198.18.9.100");
    let a =
        HaLb::start(&mut t.lab, &d1, &s, "d1", &instances_conf("d1", &[public], &["VI_PUBLIC"]))
            .unwrap();
    eventually(Duration::from_secs(5), "d1 holds the public VIP", || holds(&d1, "eth0", VIP))
        .unwrap();

    d1.ip(&["link", "add", "late0", "type", "veth", "peer", "name", "late1"]).unwrap();
    d1.ip(&["link", "set", "late1", "up"]).unwrap();
    d1.ip(&["link", "set", "late0", "up"]).unwrap();
    let grown = instances_conf("d1", &[public, late], &["VI_PUBLIC", "VI_LATE"]);
    std::fs::write(&a.config, grown.replace("{socket}", &a.socket.display().to_string())).unwrap();
    t.lab.signal(a.pid, libc::SIGHUP).unwrap();
    eventually(Duration::from_secs(5), "VI_PUBLIC in FAULT", || {
        a.state("VI_PUBLIC").as_deref() == Some("FAULT")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_text()));
    assert!(!holds(&d1, "eth0", VIP), "a member in FAULT holds no VIP");
    let log = a.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("VI_PUBLIC")
            && l.contains("VI_LATE cannot start")),
        "no WARN naming the member that cannot start\n{log}"
    );

    // The address appears: the member starts on a retry, and the group runs again.
    d1.ip(&["addr", "add", "198.18.9.1/24", "dev", "late0"]).unwrap();
    eventually(Duration::from_secs(15), "both members MASTER", || {
        a.state("VI_PUBLIC").as_deref() == Some("MASTER")
            && a.state("VI_LATE").as_deref() == Some("MASTER")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_text()));
    assert!(holds(&d1, "eth0", VIP));
}
