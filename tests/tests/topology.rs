//! The standard director lab is wired as documented: plain kernel routing (no ha-lb yet)
//! already carries client traffic to every real server and back, in both modes.

use std::{net::SocketAddr, time::Duration};

use ha_lb_lab::topology::{http_get, DirectorLab, Mode, GATEWAY_VIP, HTTP_PORT};

#[test]
fn nat_lab_routes_through_the_director_gateway() {
    let mut t = DirectorLab::build(Mode::Nat, 2, 3).unwrap();
    t.start_real_servers().unwrap();
    // Stand-in for the gateway VIP: d1 holds it, and the client routes the back network
    // via d1.
    t.directors[0].addr("eth1", &format!("{GATEWAY_VIP}/24")).unwrap();
    t.client.route(&["198.19.0.0/24", "via", "198.18.0.1"]).unwrap();
    for i in 0..3 {
        let addr = SocketAddr::new(t.real_server_addr(i).into(), HTTP_PORT);
        let body = http_get(&t.client, addr, Duration::from_secs(3)).unwrap();
        assert_eq!(body, format!("rs{}", i + 1));
    }
}

#[test]
fn dr_lab_real_servers_hold_the_vip_on_lo_without_answering_arp() {
    let mut t = DirectorLab::build(Mode::Dr, 1, 2).unwrap();
    t.start_real_servers().unwrap();
    for i in 0..2 {
        let addr = SocketAddr::new(t.real_server_addr(i).into(), HTTP_PORT);
        assert_eq!(
            http_get(&t.client, addr, Duration::from_secs(3)).unwrap(),
            format!("rs{}", i + 1)
        );
    }
    // Nobody owns the VIP on the wire yet: arp_ignore keeps the real servers silent.
    let out = t.client.command("arping").args(["-c1", "-w1", "198.18.0.100"]).output();
    if let Ok(o) = out {
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("reply from"),
            "a real server answered ARP for the VIP"
        );
    }
    let vip = SocketAddr::new(ha_lb_lab::topology::VIP.into(), HTTP_PORT);
    assert!(http_get(&t.client, vip, Duration::from_millis(500)).is_err());
}
