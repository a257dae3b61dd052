//! Reloading a running `ha-lb run` (SIGHUP and `ha-lb reload`) on the NAT director lab:
//! changed weights and changed real-server sets apply as a difference — established
//! connections keep their real server, new ones follow the new configuration, the VIP never
//! moves — and a broken file (syntax or semantic error) is rejected with its `file:line:col`
//! errors while the daemon keeps serving the old configuration.

mod daemon_support;

use std::{process::Command, time::Duration};

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, holds, HaLb, Scratch},
    topology::{bin_path, DirectorLab, Mode},
};

/// The virtual server with `real_servers` (checked every second).
fn conf(lb_algo: &str, vs_extra: &str, real_servers: &[String]) -> String {
    virtual_server(
        &format!("lb_algo = \"{lb_algo}\"\ndelay_loop = 1\nretry = 0\n{vs_extra}"),
        real_servers,
    )
}

/// The whole file of the single director (as `single_director` writes it) for `services`.
fn full(services: &str) -> String {
    director_conf(1, None, 150, 0.1, services)
}

fn rs(n: usize, weight: u32) -> String {
    real_server(n, weight, "", Some(""))
}

/// Writes the daemon's config file for `services` as `HaLb::start` does (with its control
/// socket).
fn rewrite(d: &HaLb, services: &str) {
    let text = full(services).replace("{socket}", &d.socket.display().to_string());
    std::fs::write(&d.config, text).unwrap();
}

fn sighup(t: &DirectorLab, d: &HaLb) {
    t.lab.signal(d.pid, libc::SIGHUP).unwrap();
}

/// Waits until status shows `reloads` applied and `rejected` rejected reloads.
fn wait_reloads(d: &HaLb, reloads: u64, rejected: u64) {
    eventually(
        Duration::from_secs(5),
        &format!("reloads = {reloads}, reloads_rejected = {rejected}"),
        || {
            counter(d, "reloads") == Some(reloads)
                && counter(d, "reloads_rejected") == Some(rejected)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
}

/// `ha-lb reload ARGS` (`--socket S`, or `-c CONFIG` to use its control_socket): (success,
/// stdout, stderr).
fn cli_reload(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(bin_path("ha-lb").unwrap()).arg("reload").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `text` has a `PATH:LINE:COL: …` error for `line` whose message mentions `what`.
fn has_error_at(text: &str, path: &str, line: usize, what: &str) -> bool {
    let prefix = format!("{path}:{line}:");
    text.lines().any(|l| {
        l.split_once(&prefix).is_some_and(|(_, rest)| {
            rest.split_once(':').is_some_and(|(col, msg)| {
                col.parse::<usize>().is_ok_and(|c| c >= 1) && msg.contains(what)
            })
        })
    })
}

/// The forwarding program is attached to `dev` in `d`'s node and IP forwarding is on there.
fn assert_forwarding_on(d: &HaLb, dev: &str) {
    let link = d.node.sh(&format!("ip -d link show {dev}")).unwrap();
    assert!(
        link.contains("prog/xdp"),
        "the forwarding program is on {dev}: {link}\n{}",
        d.log_text()
    );
    let fwd = d.node.sh(&format!("cat /proc/sys/net/ipv4/conf/{dev}/forwarding")).unwrap();
    assert_eq!(fwd.trim(), "1", "forwarding on {dev}");
}

/// 1-based number of the first line of `text` that equals `line`.
fn line_of(text: &str, line: &str) -> usize {
    text.lines().position(|l| l == line).unwrap_or_else(|| panic!("no line {line:?}")) + 1
}

/// Weights change with SIGHUP: keep-alive connections opened before keep their real server
/// (also the one whose weight goes to 0, which drains), new connections follow the new
/// weights exactly, health states and the VIP are untouched.
#[test]
fn sighup_new_weights_keep_established_connections() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 3).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rweight").unwrap();
    let d = single_director(&mut t, &s, &conf("wrr", "", &[rs(1, 1), rs(2, 1), rs(3, 1)]));
    eventually(Duration::from_secs(5), "every real server checked up", || {
        (1..=3).all(|n| health_weight(&d, &rs_key(n)) == Some(("up".into(), 1)))
    })
    .unwrap();
    let mut c1 = KeepAlive::open_to(&t.client, "rs1");
    let mut c3 = KeepAlive::open_to(&t.client, "rs3");
    let m = spread(&t.client, 30);
    assert_eq!(names(&m), ["rs1", "rs2", "rs3"], "{m:?}");
    assert!(m.values().all(|n| (8..=12).contains(n)), "1:1:1 before the reload: {m:?}");
    let changes = state_changes(&d);
    let checks_logged = d.log_text().matches("real server health changed").count();

    rewrite(&d, &conf("wrr", "", &[rs(1, 3), rs(2, 1), rs(3, 0)]));
    sighup(&t, &d);
    wait_reloads(&d, 1, 0);
    let st = d.status().unwrap();
    for (n, w) in [(1, 3), (2, 1), (3, 0)] {
        let r = rs_status(&st, &rs_key(n)).unwrap();
        assert_eq!((r["weight"].as_u64(), r["configured_weight"].as_u64()), (Some(w), Some(w)));
        assert_eq!(r["health"], "up", "rs{n}'s health is kept across the reload");
    }

    for i in 0..5 {
        assert_eq!(c1.get().unwrap(), "rs1", "established connection to rs1, request {i}");
        assert_eq!(c3.get().unwrap(), "rs3", "established connection to drained rs3, request {i}");
    }
    // The cursor is per CPU; the client thread is pinned, but a flow can still be handled on
    // the other CPU now and then: ratios are checked with a tolerance that still tells
    // 3:1 (45 of 60) from 2:1 (40) or 1:1 (30).
    let m = spread(&t.client, 60);
    eprintln!("after the reload (3:1:0): {m:?}");
    assert_eq!(names(&m), ["rs1", "rs2"], "no new connection to rs3 (weight 0), none fails");
    assert!((42..=48).contains(&m["rs1"]), "rs1:rs2 should be 3:1 over 60: {m:?}");
    assert_eq!(c1.get().unwrap(), "rs1");
    assert_eq!(c3.get().unwrap(), "rs3");

    assert!(holds_both_vips(&d.node));
    assert_eq!(state_changes(&d), changes, "the reload changed a VRRP state");
    assert_eq!(
        d.log_text().matches("real server health changed").count(),
        checks_logged,
        "the reload flapped a health state"
    );
}

/// `ha-lb reload` (the control socket) adding rs3 and removing rs1: exit 0 and "reloaded";
/// the surviving rs2 keeps its established connection; new connections go to rs2 and rs3
/// only. The same command with a broken file exits 1 and prints the `file:line:col` error.
#[test]
fn cli_reload_adds_and_removes_real_servers() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 3).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rcli").unwrap();
    let d = single_director(&mut t, &s, &conf("rr", "", &[rs(1, 1), rs(2, 1)]));
    let mut c2 = KeepAlive::open_to(&t.client, "rs2");
    let m = spread(&t.client, 10);
    assert_eq!(names(&m), ["rs1", "rs2"], "{m:?}");

    let good = conf("rr", "", &[rs(2, 1), rs(3, 1)]);
    rewrite(&d, &good);
    let (ok, out, err) = cli_reload(&["--socket".as_ref(), d.socket.as_os_str()]);
    assert!(ok, "ha-lb reload failed: {out}{err}");
    assert_eq!(out.trim(), "reloaded");
    assert_eq!(counter(&d, "reloads"), Some(1), "the answer comes after the reload is applied");
    assert_eq!(listed(&d.status().unwrap()), [rs_key(2), rs_key(3)]);
    for i in 0..3 {
        assert_eq!(c2.get().unwrap(), "rs2", "established connection to rs2, request {i}");
    }
    let m = spread(&t.client, 20);
    assert_eq!(names(&m), ["rs2", "rs3"], "new connections only on rs2 and rs3: {m:?}");
    assert!((8..=12).contains(&m["rs3"]), "rr over the new pair: {m:?}");

    // A valid copy that names the daemon's socket, for `reload -c`.
    let good_file = s.dir.join("good-copy.toml");
    std::fs::copy(&d.config, &good_file).unwrap();
    let bad = good.replacen("weight = 1\n", "weight = \"heavy\"\n", 1);
    let bad_line = line_of(&full(&bad), "weight = \"heavy\"");
    rewrite(&d, &bad);
    // The daemon's own file names its socket (`-c`); the file is what the daemon rejects.
    let (ok, out, err) = cli_reload(&["-c".as_ref(), good_file.as_os_str()]);
    assert!(!ok, "ha-lb reload of an invalid file must fail: {out}");
    let path = d.config.display().to_string();
    assert!(
        has_error_at(&err, &path, bad_line, "weight"),
        "stderr {err:?} lacks {path}:{bad_line}:COL"
    );
    assert_eq!(counter(&d, "reloads_rejected"), Some(1));
    assert_eq!(counter(&d, "reloads"), Some(1));
    assert_eq!(c2.get().unwrap(), "rs2");
    let m = spread(&t.client, 10);
    assert_eq!(names(&m), ["rs2", "rs3"], "the running configuration stays: {m:?}");

    // A tracked script whose program is missing: applied, the tracker disabled as keepalived
    // does, and `ha-lb reload` says so with exit status 2 (not success).
    let text = full(&good).replace("{socket}", &d.socket.display().to_string());
    assert!(text.contains("virtual_router_id = "));
    let text = text.replacen(
        "virtual_router_id = ",
        "track_script = [\"chk_gone\"]\nvirtual_router_id = ",
        1,
    )
        + "\n[[vrrp_script]]\nname = \"chk_gone\"\nscript = \"hlb-no-such-program -0 haproxy\"\n";
    std::fs::write(&d.config, text).unwrap();
    let out = Command::new(bin_path("ha-lb").unwrap())
        .args(["reload", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    // Heading and list together on stderr; nothing on stdout (it is not a plain success).
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("reloaded, with scripts that cannot be run disabled"), "{stderr}");
    assert!(stderr.contains("vrrp_script \"chk_gone\" cannot be run"), "{stderr}");
    assert_eq!(counter(&d, "reloads"), Some(2));
    let st = d.status().unwrap();
    assert_eq!(st["scripts_not_runnable"].as_array().map(Vec::len), Some(1), "{st}");
    assert_eq!(st["vrrp_instances"][0]["state"], "MASTER", "{st}");
}

/// SIGHUP with a syntax error, then with a semantic error (which also changes a weight):
/// both rejected with `file:line:col` in the log and `reloads_rejected` counted, nothing of
/// them applied, the VIP and traffic (new and established connections) unaffected. The
/// fixed file then applies.
#[test]
fn sighup_with_broken_file_keeps_serving() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 3).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rbroken").unwrap();
    let good = conf("rr", "", &[rs(1, 1), rs(2, 1), rs(3, 1)]);
    let d = single_director(&mut t, &s, &good);
    let mut c = KeepAlive::open(&t.client).unwrap();
    let who = c.get().unwrap();
    let changes = state_changes(&d);
    let path = d.config.display().to_string();
    let serving = |c: &mut KeepAlive, what: &str| {
        assert!(holds_both_vips(&d.node), "{what}: VIPs");
        assert_eq!(d.state("VI_PUBLIC").as_deref(), Some("MASTER"), "{what}");
        assert_eq!(c.get().unwrap(), who, "{what}: established connection");
        let m = spread(&t.client, 9);
        assert_eq!(names(&m), ["rs1", "rs2", "rs3"], "{what}: {m:?}");
    };

    // Syntax error.
    let syntax =
        good.replacen("lb_kind = \"NAT\"\n", "lb_kind = \"NAT\"\nlb_algo = = \"wrr\"\n", 1);
    let syntax_line = line_of(&full(&syntax), "lb_algo = = \"wrr\"");
    rewrite(&d, &syntax);
    sighup(&t, &d);
    wait_reloads(&d, 0, 1);
    let log = d.log_text();
    assert!(has_error_at(&log, &path, syntax_line, ""), "no {path}:{syntax_line}:COL in\n{log}");
    assert!(log.contains("reload rejected"));
    serving(&mut c, "after the syntax error");

    // Semantic error (hysteresis must be < quorum), plus a weight change that must not apply.
    let semantic = conf("rr", "hysteresis = 5", &[rs(1, 7), rs(2, 1), rs(3, 1)]);
    let semantic_line = line_of(&full(&semantic), "hysteresis = 5");
    rewrite(&d, &semantic);
    sighup(&t, &d);
    wait_reloads(&d, 0, 2);
    let log = d.log_text();
    assert!(
        has_error_at(&log, &path, semantic_line, "hysteresis"),
        "no {path}:{semantic_line}:COL: … hysteresis in\n{log}"
    );
    let st = d.status().unwrap();
    assert_eq!(rs_status(&st, &rs_key(1)).unwrap()["configured_weight"], 1, "nothing applied");
    serving(&mut c, "after the semantic error");

    // Fixed: rs3 removed.
    rewrite(&d, &conf("rr", "", &[rs(1, 1), rs(2, 1)]));
    sighup(&t, &d);
    wait_reloads(&d, 1, 2);
    assert_eq!(listed(&d.status().unwrap()), [rs_key(1), rs_key(2)]);
    let m = spread(&t.client, 10);
    assert_eq!(names(&m), ["rs1", "rs2"], "the fixed file applies: {m:?}");
    if who != "rs3" {
        assert_eq!(c.get().unwrap(), who, "established connection to a surviving server");
    }
    assert_eq!(state_changes(&d), changes, "no reload changed a VRRP state");
}

/// A reload that adds an instance on an interface the host does not have is rejected whole
/// (it used to apply the rest and leave the instance stopped for good); once the interface
/// exists the same file applies: the instance runs and the forwarding program and IP
/// forwarding are on the new interface (they were set up at start-up only).
#[test]
fn reload_adding_an_instance_needs_its_interface_and_brings_the_data_plane_there() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rnewif").unwrap();
    let d = single_director(&mut t, &s, &conf("rr", "", &[rs(1, 1), rs(2, 1)]));
    let changes = state_changes(&d);
    let extra = "\n[[vrrp_instance]]\nname = \"VI_EXTRA\"\ninterface = \"eth2\"\n\
                 virtual_router_id = 60\nversion = 3\npriority = 150\nadvert_int = 0.1\n\
                 virtual_ipaddress = [\"198.18.9.100/24\"]\n";
    let base = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{base}{extra}")).unwrap();
    sighup(&t, &d);
    wait_reloads(&d, 0, 1);
    let log = d.log_text();
    let path = d.config.display().to_string();
    let line = line_of(&format!("{base}{extra}"), "interface = \"eth2\"");
    assert!(
        has_error_at(&log, &path, line, "interface \"eth2\" does not exist on this host"),
        "no {path}:{line}:COL error in\n{log}"
    );
    assert_eq!(d.state("VI_EXTRA"), None, "nothing applied");

    // A link of the director's own (a veth pair inside its namespace: nothing leaves it).
    d.node
        .sh("ip link add eth2 type veth peer name eth2p && ip link set eth2p up \
             && ip link set eth2 up && ip addr add 198.18.9.1/24 dev eth2")
        .unwrap();
    sighup(&t, &d);
    wait_reloads(&d, 1, 1);
    eventually(Duration::from_secs(3), "VI_EXTRA MASTER", || {
        d.state("VI_EXTRA").as_deref() == Some("MASTER")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert_forwarding_on(&d, "eth2");
    let extra_changes =
        d.log_text().lines().filter(|l| l.contains("vrrp_instance=VI_EXTRA from=")).count();
    assert_eq!(state_changes(&d) - extra_changes, changes, "the other instances never changed");
    let m = spread(&t.client, 6);
    assert_eq!(names(&m), ["rs1", "rs2"], "still serving: {m:?}");
}

/// A reload may turn a VIP the new file drops into a real server: the node holding that
/// address now (the master) accepts the file, as its backup does — the running
/// configuration's VIPs are not "this host" for the own-address check (they were, and the
/// two nodes of a pair disagreed about one file) — and the address stops being a VIP.
#[test]
fn reload_turning_a_dropped_vip_into_a_real_server_is_accepted_on_the_master() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rvipsrv").unwrap();
    let d = single_director(&mut t, &s, &conf("rr", "", &[rs(1, 1), rs(2, 1)]));
    let base = std::fs::read_to_string(&d.config).unwrap();
    let moved = base.replace(&format!("\"{GW_S}/24 dev eth1\""), "\"198.19.0.253/24 dev eth1\"");
    assert_ne!(moved, base);
    let extra =
        format!("\n[[virtual_server.real_server]]\naddress = \"{GW_S}\"\nport = 80\nweight = 1\n");
    std::fs::write(&d.config, format!("{moved}{extra}")).unwrap();
    sighup(&t, &d);
    wait_reloads(&d, 1, 0);
    assert_eq!(
        listed(&d.status().unwrap()),
        [rs_key(1), rs_key(2), format!("{GW_S}:80")],
        "{}",
        d.log_text()
    );
    eventually(Duration::from_secs(3), "the gateway VIP moved to .253", || {
        holds(&d.node, "eth1", "198.19.0.253") && !holds(&d.node, "eth1", GW_S)
    })
    .unwrap();
}

/// The `VRRP state change` lines the daemon logged for `instance`: (from, to, reason).
fn transitions(d: &HaLb, instance: &str) -> Vec<(String, String, String)> {
    let tag = format!("ha_lb::vrrp::instance: VRRP state change vrrp_instance={instance} ");
    d.log_text()
        .lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest.to_string()))
        .filter_map(|rest| {
            let from = rest.strip_prefix("from=\"")?.split('"').next()?.to_string();
            let after = rest.split_once(" to=\"")?.1;
            let to = after.split('"').next()?.to_string();
            let reason = after.split_once(" reason=")?.1;
            let reason = reason.rsplit_once(" priority=").map_or(reason, |(r, _)| r);
            Some((from, to, reason.to_string()))
        })
        .collect()
}

/// A reload that restarts a MASTER's instances (a new VRID) stops them make-before-break:
/// STOPPING with the VIPs held until the stop timeout (no peer here to take over), not a
/// forced stop that drops them at once; then the instances start again and take the VIPs.
#[test]
fn reload_restarting_a_master_keeps_make_before_break() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rmbb").unwrap();
    let d = single_director(&mut t, &s, &conf("rr", "", &[rs(1, 1), rs(2, 1)]));
    let base = std::fs::read_to_string(&d.config).unwrap();
    let renumbered = base.replace("virtual_router_id = 51", "virtual_router_id = 61");
    assert_ne!(renumbered, base);
    std::fs::write(&d.config, renumbered).unwrap();
    sighup(&t, &d);
    wait_reloads(&d, 1, 0);
    eventually(Duration::from_secs(5), "VI_PUBLIC stopped and MASTER again", || {
        let tr = transitions(&d, "VI_PUBLIC");
        tr.iter().any(|(f, t, _)| f == "STOPPING" && t == "INIT")
            && tr.last().is_some_and(|(_, t, _)| t == "MASTER")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    for inst in ["VI_PUBLIC", "VI_GATEWAY"] {
        let tr = transitions(&d, inst);
        let stop = tr.iter().find(|(f, t, _)| f == "STOPPING" && t == "INIT");
        assert_eq!(
            stop.map(|(_, _, r)| r.as_str()),
            Some("nobody took over within the stop timeout"),
            "{inst}: {tr:?}"
        );
    }
    wait_master_serving(&t, &d);
}

/// A reload that changes only the priority (150 → 140) and adds a VIP keeps the MASTER
/// running (keepalived does the same): no state change, the new VIP added in place, the
/// new priority in its adverts (its effective priority).
#[test]
fn reload_changing_priority_and_vips_keeps_the_master() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rinplace").unwrap();
    let d = single_director(&mut t, &s, &conf("rr", "", &[rs(1, 1), rs(2, 1)]));
    let changes = state_changes(&d);
    let base = std::fs::read_to_string(&d.config).unwrap();
    let text = base.replace("priority = 150", "priority = 140").replace(
        &format!("[\"{VIP_S}/24 dev eth0\"]"),
        &format!("[\"{VIP_S}/24 dev eth0\", \"198.18.0.101/24 dev eth0\"]"),
    );
    assert_eq!(text.matches("priority = 140").count(), 2);
    assert!(text.contains("198.18.0.101"));
    std::fs::write(&d.config, text).unwrap();
    sighup(&t, &d);
    wait_reloads(&d, 1, 0);
    eventually(Duration::from_secs(3), "the new VIP held", || {
        holds(&d.node, "eth0", "198.18.0.101")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state_changes(&d), changes, "no state change:\n{}", d.log_text());
    assert!(holds_both_vips(&d.node));
    let st = d.status().unwrap();
    for i in st["vrrp_instances"].as_array().unwrap() {
        assert_eq!(i["state"], "MASTER", "{i}");
        assert_eq!(i["effective_priority"], 140, "{i}");
    }
    let m = spread(&t.client, 6);
    assert_eq!(names(&m), ["rs1", "rs2"], "still serving: {m:?}");
}

/// A SIGHUP during start-up (after the data plane is attached, while the instances start)
/// neither kills the daemon (the default action of an unhandled SIGHUP: everything it set
/// up left behind) nor is lost: it reloads once the daemon runs.
#[test]
fn sighup_during_start_up_is_a_reload() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rhupstart").unwrap();
    let n = t.directors[0].clone();
    let d = HaLb::start(&mut t.lab, &n, &s, "d1", &full(&conf("rr", "", &[rs(1, 1), rs(2, 1)])))
        .unwrap();
    // Right after the forwarding program is attached (logged before the instances start):
    // looked for every millisecond, the instances take longer than that to start.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("eBPF forwarding attached") {
        assert!(std::time::Instant::now() < deadline, "not attached:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(1));
    }
    sighup(&t, &d);
    wait_master_serving(&t, &d);
    wait_reloads(&d, 1, 0);
}

/// A reload that renumbers the MASTER's instances (new VRIDs) in a pair: the old ones stop
/// make-before-break and hear the backup take over — its adverts, for the old VRIDs, still
/// pass this node's XDP VRRP filter until the old instances have ended — rather than
/// holding the VIPs, both nodes at once, until their stop timeout.
#[test]
fn reload_renumbering_the_master_hears_the_backup_take_over() {
    let mut t = DirectorLab::build(Mode::Nat, 2, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rrenum").unwrap();
    let vs = conf("rr", "", &[rs(1, 1), rs(2, 1)]);
    let (n1, n2) = (t.directors[0].clone(), t.directors[1].clone());
    let d1 =
        HaLb::start(&mut t.lab, &n1, &s, "d1", &director_conf(1, Some(2), 150, 0.1, &vs)).unwrap();
    wait_master_serving(&t, &d1);
    let d2 =
        HaLb::start(&mut t.lab, &n2, &s, "d2", &director_conf(2, Some(1), 100, 0.1, &vs)).unwrap();
    eventually(Duration::from_secs(5), "d2 BACKUP", || {
        d2.state("VI_PUBLIC").as_deref() == Some("BACKUP")
            && d2.state("VI_GATEWAY").as_deref() == Some("BACKUP")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d2.log_text()));

    let base = std::fs::read_to_string(&d1.config).unwrap();
    let text = base
        .replace("virtual_router_id = 51", "virtual_router_id = 61")
        .replace("virtual_router_id = 52", "virtual_router_id = 62");
    std::fs::write(&d1.config, text).unwrap();
    sighup(&t, &d1);
    wait_reloads(&d1, 1, 0);
    eventually(Duration::from_secs(5), "d1's old instances stopped", || {
        ["VI_PUBLIC", "VI_GATEWAY"]
            .iter()
            .all(|i| transitions(&d1, i).iter().any(|(f, t, _)| f == "STOPPING" && t == "INIT"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d1.log_text()));
    for (inst, peer) in [("VI_PUBLIC", "198.18.0.2"), ("VI_GATEWAY", "198.19.0.2")] {
        let tr = transitions(&d1, inst);
        let stop = tr.iter().find(|(f, t, _)| f == "STOPPING" && t == "INIT");
        assert_eq!(
            stop.map(|(_, _, r)| r.clone()),
            Some(format!("{peer} took over")),
            "{inst}: {tr:?}\n{}",
            d1.log_text()
        );
    }
}

/// An instance's interface deleted and created again (ifdown/ifup of a VLAN or bond gives it
/// a new index): the instance, bound to the old index, is started again on the new one and
/// holds its VIP there (it used to say MASTER with every send and VIP add failing).
#[test]
fn an_interface_created_again_gets_its_instance_back() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("rrelink").unwrap();
    let d = single_director(&mut t, &s, &conf("rr", "", &[rs(1, 1), rs(2, 1)]));
    let make = "ip link add eth2 type veth peer name eth2p && ip link set eth2p up \
                && ip link set eth2 up && ip addr add 198.18.9.1/24 dev eth2";
    d.node.sh(make).unwrap();
    let extra = "\n[[vrrp_instance]]\nname = \"VI_EXTRA\"\ninterface = \"eth2\"\n\
                 virtual_router_id = 60\nversion = 3\npriority = 150\nadvert_int = 0.1\n\
                 virtual_ipaddress = [\"198.18.9.100/24\"]\n";
    let base = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{base}{extra}")).unwrap();
    sighup(&t, &d);
    wait_reloads(&d, 1, 0);
    eventually(Duration::from_secs(3), "VI_EXTRA MASTER with its VIP", || {
        d.state("VI_EXTRA").as_deref() == Some("MASTER") && holds(&d.node, "eth2", "198.18.9.100")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));

    d.node.sh("ip link del eth2").unwrap();
    eventually(Duration::from_secs(3), "VI_EXTRA FAULT", || {
        d.state("VI_EXTRA").as_deref() == Some("FAULT")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    d.node.sh(make).unwrap();
    // (It may start before the address is there: then it is tried again within 5 s.)
    eventually(Duration::from_secs(10), "VI_EXTRA MASTER with its VIP on the new eth2", || {
        d.state("VI_EXTRA").as_deref() == Some("MASTER") && holds(&d.node, "eth2", "198.18.9.100")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    let log = d.log_text();
    assert!(log.contains("its interface was created again"), "{log}");
    // The forwarding program and IP forwarding were the deleted device's: the new one gets
    // them too.
    assert_forwarding_on(&d, "eth2");
    let m = spread(&t.client, 6);
    assert_eq!(names(&m), ["rs1", "rs2"], "the other instances still serve: {m:?}");

    // Renamed away, and a new device takes the name: the same as a deletion (no DELLINK
    // for the name ever comes).
    // (Renamed twice: found by review, the name's marker was lost at the second rename.)
    d.node
        .sh("ip link set eth2 down && ip link set eth2 name eth2x \
             && ip link set eth2x name eth2old && ip addr flush dev eth2old")
        .unwrap();
    d.node.sh(&make.replace("eth2p", "eth2q")).unwrap();
    eventually(Duration::from_secs(10), "VI_EXTRA MASTER with its VIP on the next eth2", || {
        d.state("VI_EXTRA").as_deref() == Some("MASTER") && holds(&d.node, "eth2", "198.18.9.100")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert_forwarding_on(&d, "eth2");
    assert!(!has_xdp(&d.node, "eth2old"), "the program left the renamed device");
}

/// Without the forwarding program (`dataplane = "none"`; `ipvs` alike) the VRRP filter is a
/// program of its own: a reload's new instance interface gets it, and so does an instance
/// interface created again (the old attachment went with the deleted device), with its
/// VRIDs — the instance there still wins its election and holds its VIP.
#[test]
fn without_forwarding_the_vrrp_filter_follows_new_and_recreated_interfaces() {
    let mut t = DirectorLab::build(Mode::Dr, 1, 0).unwrap();
    let s = Scratch::new("rfilter").unwrap();
    let node = t.directors[0].clone();
    let base = format!(
        "[global]\nrouter_id = \"d1\"\ndataplane = \"none\"\ncontrol_socket = \"{{socket}}\"\n\n\
         [[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\n\
         version = 3\npriority = 150\nadvert_int = 0.1\nvirtual_ipaddress = [\"{VIP_S}/24\"]\n"
    );
    let d = HaLb::start(&mut t.lab, &node, &s, "d1", &base).unwrap();
    eventually(Duration::from_secs(5), "VI_1 MASTER", || holds(&node, "eth0", VIP_S)).unwrap();
    assert!(has_xdp(&node, "eth0"), "the VRRP filter is on eth0");
    let make = "ip link add eth2 type veth peer name eth2p && ip link set eth2p up \
                && ip link set eth2 up && ip addr add 198.18.9.1/24 dev eth2";
    node.sh(make).unwrap();
    let extra = "\n[[vrrp_instance]]\nname = \"VI_EXTRA\"\ninterface = \"eth2\"\n\
                 virtual_router_id = 60\nversion = 3\npriority = 150\nadvert_int = 0.1\n\
                 virtual_ipaddress = [\"198.18.9.100/24\"]\n";
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{text}{extra}")).unwrap();
    sighup(&t, &d);
    wait_reloads(&d, 1, 0);
    let extra_master =
        || d.state("VI_EXTRA").as_deref() == Some("MASTER") && holds(&node, "eth2", "198.18.9.100");
    eventually(Duration::from_secs(3), "VI_EXTRA MASTER with its VIP", extra_master)
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert!(has_xdp(&node, "eth2"), "the reload put the VRRP filter on eth2\n{}", d.log_text());

    node.sh("ip link del eth2").unwrap();
    eventually(Duration::from_secs(3), "VI_EXTRA FAULT", || {
        d.state("VI_EXTRA").as_deref() == Some("FAULT")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    node.sh(make).unwrap();
    eventually(Duration::from_secs(10), "VI_EXTRA MASTER on the new eth2", extra_master)
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert!(has_xdp(&node, "eth2"), "the VRRP filter is on the new eth2\n{}", d.log_text());
    assert_eq!(d.state("VI_1").as_deref(), Some("MASTER"));
}
