//! Wire compatibility with keepalived: adverts captured from Debian's keepalived 2.2.7
//! (tests/fixtures/keepalived, see capture.sh there) decode with ha-lb's codec to the values
//! keepalived was configured with, and re-encode to the same bytes.

use std::net::{IpAddr, Ipv6Addr};

use ha_lb::vrrp::packet::{self, Auth, RxOptions, V3Checksum, Version};

fn frame(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/keepalived/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().concat();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// Decodes an IPv4 capture the way the raw socket sees it (IP header included).
fn v4(name: &str) -> packet::Received {
    packet::decode_ipv4_packet(&frame(name)[14..], &RxOptions::default()).unwrap()
}

fn reencode(r: &packet::Received, ip_header_len: usize, name: &str) {
    let f = frame(name);
    let bytes = r.advert.encode(r.src, r.dst, V3Checksum::PseudoHeader).unwrap();
    assert_eq!(bytes, f[14 + ip_header_len..], "{name}: re-encoded bytes");
}

#[test]
fn v2_advert() {
    let r = v4("v2");
    assert_eq!(r.advert.version, Version::V2);
    assert_eq!((r.advert.vrid, r.advert.priority, r.advert.adver_int_cs), (51, 150, 100));
    assert_eq!(r.advert.addrs, vec!["198.18.0.100".parse::<IpAddr>().unwrap()]);
    assert_eq!(r.advert.auth, Auth::None);
    assert_eq!(r.hop_limit, 255);
    reencode(&r, 20, "v2");
}

#[test]
fn v2_pass_authentication() {
    let r = v4("v2auth");
    assert_eq!(r.advert.auth, Auth::password("secret12"));
    assert_eq!((r.advert.vrid, r.advert.priority), (52, 100));
    reencode(&r, 20, "v2auth");
}

#[test]
fn v3_checksum_includes_the_ipv4_pseudo_header() {
    let r = v4("v3");
    assert_eq!(r.advert.version, Version::V3);
    assert_eq!((r.advert.vrid, r.advert.priority, r.advert.adver_int_cs), (51, 150, 50));
    reencode(&r, 20, "v3");
    // It verified as the RFC 5798 form, and the message-only ("as v2") one would not.
    assert_eq!(r.checksum, packet::ChecksumForm::PseudoHeader);
    let f = frame("v3");
    let msg = &f[14 + 20..];
    assert!(packet::Advert::decode(r.src, r.dst, msg, V3Checksum::AsV2).is_err());
}

#[test]
fn v3_unicast() {
    let r = v4("v3uni");
    assert_eq!(r.dst, "198.18.0.2".parse::<IpAddr>().unwrap());
    assert_eq!((r.advert.vrid, r.advert.priority, r.advert.adver_int_cs), (71, 120, 100));
    reencode(&r, 20, "v3uni");
}

#[test]
fn v3_ipv6() {
    let f = frame("v3v6");
    let ip = &f[14..];
    assert_eq!(ip[6], 112, "next header VRRP");
    let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap()));
    let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()));
    let r = packet::decode(src, dst, ip[7], &ip[40..], &RxOptions::default()).unwrap();
    assert_eq!(r.advert.version, Version::V3);
    assert_eq!((r.advert.vrid, r.advert.priority), (61, 200));
    assert_eq!(r.advert.addrs, vec!["fd48:4c42::100".parse::<IpAddr>().unwrap()]);
    reencode(&r, 40, "v3v6");
}
