//! Configuration front-end: the shipped examples load, and every invalid fixture reports
//! exactly the errors written in its `# expect: LINE:COL: message` header lines.

use std::path::{Path, PathBuf};

use ha_lb::config::{self, ConfigErrors, Dataplane, InitialState, LbKind};

mod support;
use support::repo;

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    support::files(dir, "toml")
}

fn show(errors: &ConfigErrors) -> String {
    errors.to_string()
}

#[test]
fn every_example_in_conf_loads() {
    let files = toml_files(&repo().join("conf"));
    assert!(files.len() >= 8, "expected the documented examples, found {files:?}");
    for f in files {
        if let Err(e) = config::load(&f) {
            panic!("{} does not load:\n{}", f.display(), show(&e));
        }
    }
}

#[test]
fn every_invalid_fixture_reports_its_expected_errors() {
    let files = toml_files(&repo().join("ha-lb/tests/fixtures/config"));
    assert!(files.len() >= 20, "only {} fixtures", files.len());
    support::check_invalid_fixtures(&files);
}

#[test]
fn all_errors_are_reported_not_just_the_first() {
    let text = r#"
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 300
virtual_ipaddress = ["192.0.2.10/24"]

[[vrrp_instance]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 52
virtual_ipaddress = ["192.0.2.20/24"]
track_script = ["missing"]

[[virtual_server]]
address = "192.0.2.10"
port = 80
lb_kind = "DR"
[[virtual_server.real_server]]
address = "192.0.2.21"
port = 8080
"#;
    let e = config::parse_str(text, Path::new("three.toml")).unwrap_err();
    let lines: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[0], "three.toml:5:21: virtual_router_id 300 is out of range 1..=255");
    assert!(lines[1].starts_with("three.toml:13:17: track_script \"missing\""), "{}", lines[1]);
    assert!(lines[2].starts_with("three.toml:21:8: real_server port 8080"), "{}", lines[2]);
    // Display is one error per line, in source order.
    assert_eq!(e.to_string().lines().count(), 3);
}

#[test]
fn unreadable_file_is_one_error() {
    let e = config::load(Path::new("/nonexistent/ha-lb.toml")).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(e.errors[0].message.starts_with("cannot read the file"));
}

#[test]
fn two_node_pair_agrees_on_everything_but_state_and_priority() {
    let m = config::load(&repo().join("conf/two-node-master.toml")).unwrap();
    let b = config::load(&repo().join("conf/two-node-backup.toml")).unwrap();
    let (im, ib) = (&m.vrrp_instances[0], &b.vrrp_instances[0]);
    assert_eq!(im.state, InitialState::Master);
    assert_eq!(ib.state, InitialState::Backup);
    assert!(im.priority > ib.priority);
    assert_eq!(im.virtual_router_id, ib.virtual_router_id);
    assert_eq!(im.advert_int, ib.advert_int);
    assert_eq!(im.virtual_ipaddress, ib.virtual_ipaddress);
    assert_eq!(im.unicast_src_ip, ib.unicast_peer.first().copied());
    assert_eq!(m.virtual_servers, b.virtual_servers);
    assert_eq!(m.virtual_servers[0].lb_kind, LbKind::Nat);
}

#[test]
fn three_node_ring_each_node_masters_one_vrid_and_backs_up_another() {
    let nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            config::load(&repo().join(format!("conf/three-node-two-active-{n}.toml"))).unwrap()
        })
        .collect();
    let mut masters = Vec::new();
    for (n, c) in nodes.iter().enumerate() {
        let mut states: Vec<_> = c.vrrp_instances.iter().map(|i| i.state).collect();
        states.sort_by_key(|s| *s == InitialState::Backup);
        assert_eq!(states, [InitialState::Master, InitialState::Backup], "node {n}");
        let m = c.vrrp_instances.iter().find(|i| i.state == InitialState::Master).unwrap();
        masters.push(m.virtual_router_id);
    }
    // Every VRID is run by exactly two nodes: one MASTER with the higher priority and
    // one BACKUP, and the unicast peers point at each other.
    let mut all: Vec<_> = nodes.iter().flat_map(|c| c.vrrp_instances.iter()).collect();
    all.sort_by_key(|i| (i.virtual_router_id, i.state == InitialState::Backup));
    for pair in all.chunks(2) {
        let [m, b] = pair else { panic!("odd VRID count") };
        assert_eq!(m.virtual_router_id, b.virtual_router_id);
        assert_eq!((m.state, b.state), (InitialState::Master, InitialState::Backup));
        assert!(m.priority > b.priority);
        assert_eq!(m.virtual_ipaddress, b.virtual_ipaddress);
        assert_eq!(m.unicast_peer, [b.unicast_src_ip.unwrap()]);
        assert_eq!(b.unicast_peer, [m.unicast_src_ip.unwrap()]);
    }
    masters.sort();
    masters.dedup();
    assert_eq!(masters.len(), 3, "each node masters a different VRID");
}

#[test]
fn reference_config_exercises_every_section_and_check() {
    let c = config::load(&repo().join("conf/ha-lb.toml")).unwrap();
    assert_eq!(c.global.dataplane, Dataplane::Xdp);
    assert!(!c.vrrp_scripts.is_empty() && !c.track_files.is_empty());
    assert!(!c.vrrp_sync_groups.is_empty());
    let mut checks: Vec<&str> = c
        .virtual_servers
        .iter()
        .flat_map(|v| v.real_servers.iter())
        .filter_map(|r| r.check.as_ref().map(|c| c.name()))
        .collect();
    checks.sort();
    checks.dedup();
    assert_eq!(checks, ["HTTP_GET", "MISC_CHECK", "SSL_GET", "TCP_CHECK", "UDP_CHECK"]);
}

#[test]
fn dr_example_keeps_service_ports() {
    let c = config::load(&repo().join("conf/dr-service.toml")).unwrap();
    let vs = &c.virtual_servers[0];
    assert_eq!(vs.lb_kind, LbKind::Dr);
    assert!(vs.real_servers.iter().all(|r| r.port == vs.port));
    assert_eq!(vs.sorry_server.unwrap().port(), vs.port);
}

#[test]
fn tun_services_load_with_every_forwarding_dataplane() {
    for dataplane in ["xdp", "tc", "ipvs"] {
        let text = format!(
            r#"
[global]
dataplane = "{dataplane}"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.10/24"]

[[virtual_server]]
address = "192.0.2.10"
port = 80
lb_kind = "TUN"

[[virtual_server.real_server]]
address = "192.0.2.11"

[[virtual_server]]
address = "2001:db8::10"
port = 80
lb_kind = "TUN"

[[virtual_server.real_server]]
address = "2001:db8::11"
"#
        );
        let c = config::parse_str(&text, Path::new("tun.toml"))
            .unwrap_or_else(|e| panic!("dataplane {dataplane}: {e}"));
        // IPv4 in IPv4 and IPv6 in IPv6 (IPVS: ip6ip6).
        assert!(c.virtual_servers.iter().all(|vs| vs.lb_kind == LbKind::Tun));
    }
}

/// The eBPF data plane's maps have fixed sizes: a file that does not fit them is refused
/// when read (so by `ha-lb check`, and by a reload, which keeps the running configuration),
/// at the line of the virtual_server that goes over, instead of failing when applied (the
/// daemon used to run on with an empty or stale data plane). IPVS has no such limits.
#[test]
fn configs_beyond_the_ebpf_maps_are_refused_at_the_virtual_server_that_goes_over() {
    // Service n (its address on its own line), with `reals` real servers.
    let vs = |n: usize, algo: &str, reals: usize| {
        let mut t = format!(
            "[[virtual_server]]\naddress = \"198.18.{}.{}\"\nport = 80\nlb_algo = \"{algo}\"\n",
            n / 200,
            n % 200 + 1
        );
        for r in 0..reals {
            t += &format!(
                "[[virtual_server.real_server]]\naddress = \"10.{}.{}.{}\"\n",
                n % 200,
                r / 200,
                r % 200 + 1
            );
        }
        t
    };
    let line_of = |text: &str, n: usize| {
        let addr = format!("address = \"198.18.{}.{}\"", n / 200, n % 200 + 1);
        text.lines().position(|l| l == addr).unwrap() + 1
    };
    let refused = |text: &str, n: usize, what: &str| {
        let e = config::parse_str(text, Path::new("big.toml")).expect_err(what).to_string();
        let at = format!("big.toml:{}:", line_of(text, n));
        assert!(e.lines().any(|l| l.starts_with(&at) && l.contains(what)), "{what} at {at}:\n{e}");
        let ipvs = format!("[global]\ndataplane = \"ipvs\"\n{text}");
        config::parse_str(&ipvs, Path::new("big.toml")).expect("IPVS takes it");
    };
    let services: String = (0..257).map(|n| vs(n, "lc", 1)).collect();
    refused(&services, 256, "more than 256 services");
    refused(&vs(0, "wlc", 257), 0, "257 real servers");
    // 4096 real servers in all: the 17th service of 256 goes over.
    let reals: String = (0..17).map(|n| vs(n, "wlc", 256)).collect();
    refused(&reals, 16, "more than 4096 real servers in all");
    // Maglev tables of 164 backends are 32749 entries: 16 fit the half of the table space
    // kept for them, the 17th does not (the same servers with lc need no table).
    let tables: String = (0..17).map(|n| vs(n, "mh", 164)).collect();
    refused(&tables, 16, "lookup tables");
    let lc: String = (0..17).map(|n| vs(n, "lc", 164)).collect();
    // (The eBPF planes go on an instance's interface.)
    let lc = format!(
        "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\n\
         virtual_ipaddress = [\"198.18.0.1/24\"]\n{lc}"
    );
    config::parse_str(&lc, Path::new("big.toml")).expect("lc needs no table");
}

/// Checked against the host (`run`, `reload`, `check --host`): every interface the file names
/// must exist — an instance's, a VIP's device, a tracked one (a typo there would hold the
/// instance in FAULT and fail the director over), lvs_sync_daemon's — each reported at its
/// position; and the eBPF data plane needs an instance to go on.
#[test]
fn interfaces_the_host_lacks_are_errors_at_their_position() {
    let text = r#"[global]
lvs_sync_daemon = { interface = "eth8", vrrp_instance = "VI_1" }

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
track_interface = ["eth1", "eth9"]
virtual_ipaddress = ["192.0.2.10/24", "192.0.2.11/24 dev eth7"]

[[vrrp_instance]]
name = "VI_2"
interface = "bond5"
virtual_router_id = 52
virtual_ipaddress = ["192.0.2.20/24"]
"#;
    let path = std::env::temp_dir().join(format!("hlb-host-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let host = config::Host {
        has_interface: &|i: &str| ["eth0", "eth1"].contains(&i),
        is_own_address: &|_| false,
        can_run: &|_, _| Ok(()),
        running: None,
    };
    assert!(config::load(&path).is_ok(), "the file itself is valid");
    let e = config::load_for_host(&path, &host).unwrap_err();
    let lines: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let p = path.display();
    let want = [
        format!("{p}:2:19: lvs_sync_daemon interface \"eth8\" does not exist on this host"),
        format!("{p}:8:28: track_interface \"eth9\" does not exist on this host"),
        format!("{p}:9:39: virtual_ipaddress 192.0.2.11/24 dev eth7: device \"eth7\" does not exist on this host"),
        format!("{p}:13:13: interface \"bond5\" does not exist on this host"),
    ];
    assert_eq!(lines, want);

    let lvs_only = "[[virtual_server]]\naddress = \"192.0.2.10\"\nport = 80\n\
                    [[virtual_server.real_server]]\naddress = \"192.0.2.11\"\n";
    std::fs::write(&path, lvs_only).unwrap();
    // Not a matter of the host: check (load) says so too.
    let e = config::load(&path).unwrap_err().to_string();
    assert!(e.contains("dataplane \"xdp\" needs a vrrp_instance"), "{e}");
    std::fs::write(&path, format!("[global]\ndataplane = \"ipvs\"\n{lvs_only}")).unwrap();
    config::load_for_host(&path, &host).expect("IPVS needs no instance");

    // A real server that is this host cannot be reached by the eBPF planes (IPVS: can).
    let here = config::Host {
        has_interface: &|i: &str| i == "eth0",
        is_own_address: &|a| a == "192.0.2.11".parse::<std::net::IpAddr>().unwrap(),
        can_run: &|_, _| Ok(()),
        running: None,
    };
    let with_vrrp = format!(
        "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\n\
         virtual_ipaddress = [\"192.0.2.10/24\"]\n{lvs_only}"
    );
    std::fs::write(&path, &with_vrrp).unwrap();
    let e = config::load_for_host(&path, &here).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{}:10:11: real_server 192.0.2.11 is an address of this host: the xdp data plane forwards to other hosts and cannot deliver to this one, so its traffic would be lost; use dataplane = \"ipvs\" (kernel IPVS delivers to a local real server), or run the service on another host", path.display())
    );
    std::fs::write(&path, format!("[global]\ndataplane = \"ipvs\"\n{with_vrrp}")).unwrap();
    config::load_for_host(&path, &here).expect("IPVS delivers locally");
    // A real server that is one of the file's VIPs: refused on every node alike, whether
    // this node holds the VIP now (its address then) or not.
    let on_vip = with_vrrp.replace("address = \"192.0.2.11\"", "address = \"192.0.2.10\"");
    std::fs::write(&path, &on_vip).unwrap();
    let want = format!("{}:10:11: real_server 192.0.2.10 is a VIP of vrrp_instance \"VI_1\": its master is this director, and the xdp data plane forwards to other hosts only; use dataplane = \"ipvs\" for a service on the director itself", path.display());
    assert_eq!(config::load(&path).unwrap_err().to_string(), want);
    let holding = config::Host {
        has_interface: &|i: &str| i == "eth0",
        is_own_address: &|a| a == "192.0.2.10".parse::<std::net::IpAddr>().unwrap(),
        can_run: &|_, _| Ok(()),
        running: None,
    };
    assert_eq!(config::load_for_host(&path, &holding).unwrap_err().to_string(), want);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn host_check_refuses_scripts_that_cannot_run() {
    let text = r#"[global]
dataplane = "ipvs"
notify_master = "/etc/ha-lb/master.sh"

[[vrrp_script]]
name = "chk_haproxy"
script = "killall -0 haproxy"

[[vrrp_script]]
name = "unused"
script = "no-such-program"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.10/24"]
track_script = ["chk_haproxy"]
notify_backup = ["/usr/bin/logger", "backup"]

[[virtual_server]]
address = "192.0.2.10"
port = 80
[[virtual_server.real_server]]
address = "192.0.2.11"
[virtual_server.real_server.MISC_CHECK]
misc_path = "/opt/check web"
user = "checker"
"#;
    let path = std::env::temp_dir().join(format!("hlb-scripts-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let asked = std::sync::Mutex::new(Vec::new());
    let can_run = |program: &str, user: Option<&config::ScriptUser>| {
        asked.lock().unwrap().push(format!("{program} as {:?}", user.map(|u| u.user.as_str())));
        match program {
            "/usr/bin/logger" => Ok(()),
            "/opt/check" => Err("script user: no such user \"checker\"".to_string()),
            p => Err(format!("{p:?} is not in PATH")),
        }
    };
    let host = config::Host {
        has_interface: &|i: &str| i == "eth0",
        is_own_address: &|_| false,
        can_run: &can_run,
        running: None,
    };
    assert!(config::load(&path).is_ok(), "the file itself is valid");
    let e = config::load_for_host(&path, &host).unwrap_err();
    let lines: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let p = path.display();
    let fix = "install the program, give its full path, or remove it";
    assert_eq!(
        lines,
        [
            format!("{p}:3:17: notify_master cannot be run: \"/etc/ha-lb/master.sh\" is not in PATH (keepalived would not run it); {fix}"),
            format!("{p}:7:10: vrrp_script \"chk_haproxy\" cannot be run: \"killall\" is not in PATH (keepalived would disable this tracker and run as if it were not there); {fix}"),
            format!("{p}:27:13: MISC_CHECK cannot be run: script user: no such user \"checker\" (keepalived would not run it); create the user, or name another with script_user (or the script's user)"),
        ]
    );
    // The unused script is not looked at; the instance's own hook is, the inherited not twice.
    let asked = asked.into_inner().unwrap();
    assert!(!asked.iter().any(|a| a.starts_with("no-such-program")), "{asked:?}");
    assert_eq!(asked.iter().filter(|a| a.starts_with("/etc/ha-lb/master.sh")).count(), 1);
    assert!(asked.contains(&"/opt/check as Some(\"checker\")".to_string()), "{asked:?}");
    let _ = std::fs::remove_file(&path);
}

/// A reload (`Host::running`): the keys only a restart can change are named where the new
/// file sets them, with both values, in either front-end.
#[test]
fn a_reload_names_the_restart_only_keys_that_changed_where_they_are() {
    let instance = "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"192.0.2.10/24\"]\n";
    let running_text = format!("[global]\nrouter_id = \"lb1\"\n{instance}");
    let running = config::parse_str(&running_text, Path::new("old.toml")).unwrap().global;
    let dir = std::env::temp_dir().join(format!("hlb-restart-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let host = config::Host {
        has_interface: &|i: &str| i == "eth0",
        is_own_address: &|_| false,
        can_run: &|_, _| Ok(()),
        running: Some(&running),
    };
    let lines = |name: &str, text: &str| -> Vec<String> {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        match config::load_for_host(&path, &host) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    };
    let p = dir.join("ha-lb.toml");
    let p = p.display();
    assert_eq!(lines("ha-lb.toml", &running_text), Vec::<String>::new(), "nothing changed");
    assert_eq!(
        lines(
            "ha-lb.toml",
            &format!("[global]\nrouter_id = \"lb2\"\ndataplane = \"tc\"\ncontrol_socket = \"/run/x.sock\"\n{instance}")
        ),
        [
            format!("{p}:3:13: dataplane changed from \"xdp\" to \"tc\": needs a restart"),
            format!("{p}:4:18: control_socket changed from \"/run/ha-lb/ha-lb.sock\" to \"/run/x.sock\": needs a restart"),
        ]
    );
    assert_eq!(
        lines(
            "ha-lb.toml",
            &format!("[global]\nlvs_sync_daemon = {{ interface = \"eth0\", vrrp_instance = \"VI_1\" }}\n{instance}")
        ),
        [format!("{p}:2:19: lvs_sync_daemon changed from none to {{ interface = \"eth0\", vrrp_instance = \"VI_1\", protocol = \"ha-lb\" }}: needs a restart")]
    );
    // keepalived.conf: at its own line.
    let k = dir.join("keepalived.conf");
    let k = k.display();
    let conf = "global_defs {\n    router_id lb1\n    dataplane ipvs\n}\nvrrp_instance VI_1 {\n    interface eth0\n    virtual_router_id 51\n    virtual_ipaddress {\n        192.0.2.10/24\n    }\n}\n";
    let got = lines("keepalived.conf", conf);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!("{k}:3:"))
            && got[0].ends_with("dataplane changed from \"xdp\" to \"ipvs\": needs a restart"),
        "{got:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
