//! The lab harness itself: teardown on drop and on panic, the sweeper after a killed run,
//! and that lab nodes really are isolated.

use std::{path::Path, process::Command, time::Duration};

use ha_lb_lab::{sweep, wait_for, Lab};

fn exists(ns: &str) -> bool {
    Path::new(&format!("/run/netns/{ns}")).exists()
}

#[test]
fn namespaces_go_away_on_drop_and_on_panic() {
    let mut lab = Lab::new().unwrap();
    let n = lab.node("x").unwrap();
    let pid = lab.spawn(&n, Command::new("sleep").arg("30")).unwrap();
    assert!(exists(&n.ns));
    drop(lab);
    assert!(!exists(&n.ns));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(" Z "))
                .unwrap_or(true)
    );

    let ns = std::thread::spawn(|| {
        let mut lab = Lab::new().unwrap();
        let n = lab.node("p").unwrap();
        let ns = n.ns.clone();
        std::panic::set_hook(Box::new(|_| {}));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _keep = &lab;
            panic!("test failure inside a lab");
        }));
        let _ = std::panic::take_hook();
        assert!(r.is_err());
        drop(lab);
        ns
    })
    .join()
    .unwrap();
    assert!(!exists(&ns), "namespace removed while unwinding");
}

#[test]
fn sweeper_removes_leftovers_of_a_killed_run_and_nothing_else() {
    // A "test run" that creates a namespace the way a lab does, then is killed -9.
    let mut child = Command::new("sh")
        .args(["-c", "ip netns add hlb-$$-0-killed && echo ready && exec sleep 30"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ns = format!("hlb-{}-0-killed", child.id());
    assert!(wait_for(Duration::from_secs(5), Duration::from_millis(20), || exists(&ns)
        .then_some(()))
    .is_some());
    child.kill().unwrap();
    child.wait().unwrap();
    // A namespace of a live process (this one) with the prefix, and one without the prefix.
    let mut live = Lab::new().unwrap();
    let mine = live.node("alive").unwrap();
    let foreign = format!("hlbt-foreign-{}", std::process::id());
    Command::new("ip").args(["netns", "add", &foreign]).status().unwrap();

    sweep().unwrap();
    let foreign_survived = exists(&foreign);
    Command::new("ip").args(["netns", "del", &foreign]).status().unwrap();
    assert!(!exists(&ns), "killed run's namespace swept");
    assert!(exists(&mine.ns), "a live run's namespace is kept");
    assert!(foreign_survived, "namespaces without the prefix are never touched");
    drop(live);
}

#[test]
fn nodes_are_isolated_and_veths_live_only_inside_the_lab() {
    let mut lab = Lab::new().unwrap();
    let a = lab.node("a").unwrap();
    let b = lab.node("b").unwrap();
    let c = lab.node("c").unwrap();
    lab.veth(&a, "eth0", &b, "eth0").unwrap();
    a.addr("eth0", "198.18.1.1/24").unwrap();
    b.addr("eth0", "198.18.1.2/24").unwrap();
    a.exec("ping", &["-c1", "-W2", "198.18.1.2"]).expect("a reaches b over the veth");
    // c has no link: no route anywhere, not even to the lab.
    assert!(c.exec("ping", &["-c1", "-W1", "198.18.1.2"]).is_err());
    // No namespace has a default route.
    for n in [&a, &b, &c] {
        assert!(!n.sh("ip route show default").unwrap().contains("default"));
    }
    // The root namespace holds no interface named like the lab's.
    let root_links =
        String::from_utf8(Command::new("ip").args(["-o", "link"]).output().unwrap().stdout)
            .unwrap();
    assert!(!root_links.contains(&a.ns));
    assert_eq!(a.sysctl("net.ipv4.ip_forward", "1").ok(), Some(()));
    assert_eq!(a.sh("cat /proc/sys/net/ipv4/ip_forward").unwrap().trim(), "1");
    assert_eq!(
        b.sh("cat /proc/sys/net/ipv4/ip_forward").unwrap().trim(),
        "0",
        "sysctl is per namespace"
    );
}
