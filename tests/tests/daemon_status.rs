//! What `ha-lb status` says about an instance that cannot start: a reload adds an instance
//! on an interface without an IPv4 address (nothing to send adverts from). It shows STOP
//! with the reason, and once the address is there (the daemon retries every 5 s) it runs
//! and the reason is gone. Also: virtual servers are named with their protocol, and
//! InActConn is null where the data plane does not count it. The same at start-up: the
//! daemon runs its other instances and retries the one that cannot start.

mod daemon_support;

use std::time::Duration;

use daemon_support::*;
use ha_lb_lab::{
    daemon::{eventually, Scratch},
    topology::{DirectorLab, Mode},
};

/// The services (and `extra` blocks) of the single director.
fn services(extra: &str) -> String {
    format!("{}\n{extra}", virtual_server("lb_algo = \"rr\"", &[real_server(1, 1, "", None)]))
}

const EXTRA: &str = r#"
[[vrrp_instance]]
name = "VI_EXTRA"
interface = "dum0"
virtual_router_id = 60
priority = 100
advert_int = 0.1
version = 3
virtual_ipaddress = ["198.51.100.60/32 dev dum0"]
"#;

fn instance<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["vrrp_instances"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap()
}

#[test]
fn an_instance_that_cannot_start_shows_why() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 1).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("status").unwrap();
    let n = t.directors[0].clone();
    let d = single_director(&mut t, &s, &services(""));

    let st = d.status().unwrap();
    assert_eq!(vs0(&st)["name"], format!("{VIP_S}:80 TCP"));
    let r = rs_status(&st, "198.19.0.11:80").unwrap();
    assert!(r["inactive_conns"].is_null(), "XDP does not count them: {r}");

    // An interface with no address: VI_EXTRA cannot pick a source for its adverts.
    n.ip(&["link", "add", "dum0", "type", "veth", "peer", "name", "dum1"]).unwrap();
    n.ip(&["link", "set", "dum0", "up"]).unwrap();
    n.ip(&["link", "set", "dum1", "up"]).unwrap();
    let text = director_conf(1, None, 150, 0.1, &services(EXTRA))
        .replace("{socket}", &d.socket.display().to_string());
    std::fs::write(&d.config, text).unwrap();
    t.lab.signal(d.pid, libc::SIGHUP).unwrap();
    eventually(Duration::from_secs(5), "the reload applied", || counter(&d, "reloads") == Some(1))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    let st = d.status().unwrap();
    let i = instance(&st, "VI_EXTRA");
    assert_eq!(i["state"], "STOP", "{i}");
    let why = i["start_error"].as_str().unwrap_or_else(|| panic!("no start_error: {i}"));
    assert!(why.contains("dum0") && why.contains("no IPv4 address"), "{why}");
    let table = std::process::Command::new(ha_lb_lab::topology::bin_path("ha-lb").unwrap())
        .args(["status", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("VI_EXTRA could not start (tried again every 5 s): "), "{table}");

    // With an address, the retry starts it: the reason goes.
    n.ip(&["addr", "add", "192.0.2.1/24", "dev", "dum0"]).unwrap();
    eventually(Duration::from_secs(10), "VI_EXTRA running", || {
        d.status().is_ok_and(|st| {
            let i = instance(&st, "VI_EXTRA");
            i["state"] != "STOP" && i.get("start_error").is_none()
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
}

#[test]
fn an_instance_that_cannot_start_at_start_up_is_retried() {
    let mut t = DirectorLab::build(Mode::Nat, 1, 1).unwrap();
    t.start_real_servers().unwrap();
    let s = Scratch::new("status-start").unwrap();
    let n = t.directors[0].clone();
    // VI_EXTRA's interface exists (the configuration is valid on this host) but has no
    // address yet, as before DHCP at boot.
    n.ip(&["link", "add", "dum0", "type", "veth", "peer", "name", "dum1"]).unwrap();
    n.ip(&["link", "set", "dum0", "up"]).unwrap();
    n.ip(&["link", "set", "dum1", "up"]).unwrap();
    // The other instances start and serve.
    let d = single_director(&mut t, &s, &services(EXTRA));
    if let Ok(exit) = t.lab.wait(d.pid, Duration::ZERO) {
        panic!("ha-lb run exited ({exit}):\n{}", d.log_text());
    }
    let st = d.status().unwrap();
    let i = instance(&st, "VI_EXTRA");
    assert_eq!(i["state"], "STOP", "{i}");
    let why = i["start_error"].as_str().unwrap_or_else(|| panic!("no start_error: {i}"));
    assert!(why.contains("dum0") && why.contains("no IPv4 address"), "{why}");
    assert!(
        d.log_text().lines().any(|l| l.contains("ERROR")
            && l.contains("starting vrrp_instance failed; retrying every 5 s")
            && l.contains("VI_EXTRA")),
        "{}",
        d.log_text()
    );

    // Once the address is there, the retry starts it.
    n.ip(&["addr", "add", "192.0.2.1/24", "dev", "dum0"]).unwrap();
    eventually(Duration::from_secs(10), "VI_EXTRA running", || {
        d.status().is_ok_and(|st| {
            let i = instance(&st, "VI_EXTRA");
            i["state"] != "STOP" && i.get("start_error").is_none()
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert!(holds_both_vips(&n), "the other instances still hold their VIPs");
}
