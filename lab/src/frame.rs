//! Crafted frames for packet tests (Ethernet / IPv4 / IPv6 / TCP / UDP / VRRP), always with
//! correct checksums unless a test breaks them on purpose, and an independent checker that
//! verifies the checksums of a frame a program produced.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{bail, Context, Result};
use etherparse::{IpNumber, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// Ethernet addresses of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eth {
    pub src: [u8; 6],
    pub dst: [u8; 6],
}

impl Default for Eth {
    fn default() -> Self {
        Eth { src: [0x02, 0, 0, 0, 0, 0x01], dst: [0x02, 0, 0, 0, 0, 0x02] }
    }
}

/// TCP flags for [`tcp`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl TcpFlags {
    pub const SYN: TcpFlags =
        TcpFlags { syn: true, ack: false, fin: false, rst: false, psh: false };
    pub const ACK: TcpFlags =
        TcpFlags { syn: false, ack: true, fin: false, rst: false, psh: false };
    pub const FIN_ACK: TcpFlags =
        TcpFlags { syn: false, ack: true, fin: true, rst: false, psh: false };
    pub const RST: TcpFlags =
        TcpFlags { syn: false, ack: false, fin: false, rst: true, psh: false };
}

/// An IP packet with a raw payload of protocol `proto`, in an Ethernet frame.
pub fn ip(eth: Eth, src: IpAddr, dst: IpAddr, ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(eth.src, eth.dst);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b
            .ipv4(s.octets(), d.octets(), ttl)
            .write(&mut out, IpNumber(proto), payload)
            .expect("ipv4 frame"),
        (IpAddr::V6(s), IpAddr::V6(d)) => b
            .ipv6(s.octets(), d.octets(), ttl)
            .write(&mut out, IpNumber(proto), payload)
            .expect("ipv6 frame"),
        _ => panic!("mixed address families"),
    }
    out
}

/// A UDP datagram in an Ethernet frame.
pub fn udp(eth: Eth, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(eth.src, eth.dst);
    let mut out = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => b
            .ipv4(s.ip().octets(), d.ip().octets(), 64)
            .udp(s.port(), d.port())
            .write(&mut out, payload)
            .expect("udp4"),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => b
            .ipv6(s.ip().octets(), d.ip().octets(), 64)
            .udp(s.port(), d.port())
            .write(&mut out, payload)
            .expect("udp6"),
        _ => panic!("mixed address families"),
    }
    out
}

/// A TCP segment in an Ethernet frame.
pub fn tcp(
    eth: Eth,
    src: SocketAddr,
    dst: SocketAddr,
    flags: TcpFlags,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(eth.src, eth.dst);
    let mut out = Vec::new();
    macro_rules! finish {
        ($b:expr) => {{
            let mut b = $b.tcp(src.port(), dst.port(), seq, 65535);
            if flags.syn {
                b = b.syn();
            }
            if flags.ack {
                b = b.ack(1);
            }
            if flags.fin {
                b = b.fin();
            }
            if flags.rst {
                b = b.rst();
            }
            if flags.psh {
                b = b.psh();
            }
            b.write(&mut out, payload).expect("tcp frame");
        }};
    }
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            finish!(b.ipv4(s.ip().octets(), d.ip().octets(), 64))
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            finish!(b.ipv6(s.ip().octets(), d.ip().octets(), 64))
        }
        _ => panic!("mixed address families"),
    }
    out
}

/// The Internet checksum (RFC 1071) of `data`, folded and complemented.
pub fn inet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut it = chunk.chunks(2);
        for w in &mut it {
            let v = if w.len() == 2 {
                u16::from_be_bytes([w[0], w[1]])
            } else {
                u16::from_be_bytes([w[0], 0])
            };
            sum += v as u32;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A VRRP advertisement message (the bytes after the IP header), built independently of
/// ha-lb's codec so tests do not check the codec against itself.
/// v3: checksum over the pseudo-header + message (RFC 5798 §5.2.8); v2: over the message,
/// `adver` in seconds, authentication type 0 with 8 zero bytes.
pub fn vrrp(
    version: u8,
    vrid: u8,
    priority: u8,
    adver: u16,
    addrs: &[IpAddr],
    src: IpAddr,
    dst: IpAddr,
) -> Vec<u8> {
    let mut m = vec![(version << 4) | 1, vrid, priority, addrs.len() as u8];
    if version == 2 {
        m.extend_from_slice(&[0, adver as u8, 0, 0]);
    } else {
        m.extend_from_slice(&(adver & 0x0fff).to_be_bytes());
        m.extend_from_slice(&[0, 0]);
    }
    for a in addrs {
        match a {
            IpAddr::V4(a) => m.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => m.extend_from_slice(&a.octets()),
        }
    }
    if version == 2 {
        m.extend_from_slice(&[0u8; 8]);
    }
    let ck = if version == 3 {
        let len = (m.len() as u32).to_be_bytes();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                inet_checksum(&[&s.octets(), &d.octets(), &[0, 112], &len[2..], &m])
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                inet_checksum(&[&s.octets(), &d.octets(), &len, &[0, 0, 0, 112], &m])
            }
            _ => panic!("mixed address families"),
        }
    } else {
        inet_checksum(&[&m])
    };
    m[6..8].copy_from_slice(&ck.to_be_bytes());
    m
}

/// What [`check`] found in a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub eth: Eth,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    /// Transport source/destination port (0 for non-TCP/UDP).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub payload: Vec<u8>,
}

/// Parses `frame` with etherparse and verifies the IPv4 header checksum and the TCP/UDP
/// checksum (a UDP checksum of zero over IPv4 means "none" and is accepted).
pub fn check(frame: &[u8]) -> Result<Parsed> {
    let p = SlicedPacket::from_ethernet(frame).context("parsing frame")?;
    let Some(etherparse::LinkSlice::Ethernet2(e)) = &p.link else { bail!("not Ethernet II") };
    let eth = Eth { src: e.source(), dst: e.destination() };
    let (src, dst, ttl, proto) = match &p.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            let hdr = h.to_header();
            if hdr.calc_header_checksum() != hdr.header_checksum {
                bail!("bad IPv4 header checksum {:#06x}", hdr.header_checksum);
            }
            (IpAddr::V4(h.source_addr()), IpAddr::V4(h.destination_addr()), h.ttl(), h.protocol().0)
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.hop_limit(),
                h.next_header().0,
            )
        }
        _ => bail!("not IP"),
    };
    let (sport, dport, payload) = match &p.transport {
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            let ok = match (&p.net, src, dst) {
                (Some(NetSlice::Ipv4(_)), IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.checksum == 0
                        || h.calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload()).ok()
                            == Some(h.checksum)
                }
                (Some(NetSlice::Ipv6(_)), IpAddr::V6(s), IpAddr::V6(d)) => {
                    h.calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload()).ok()
                        == Some(h.checksum)
                }
                _ => false,
            };
            if !ok {
                bail!("bad UDP checksum {:#06x}", h.checksum);
            }
            (h.source_port, h.destination_port, u.payload().to_vec())
        }
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            let calc = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.calc_checksum_ipv4_raw(s.octets(), d.octets(), t.payload()).ok()
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    h.calc_checksum_ipv6_raw(s.octets(), d.octets(), t.payload()).ok()
                }
                _ => None,
            };
            // A checksum that computes to 0 may be sent as 0xffff, its other one's complement
            // form: the kernel's own software checksum does (skb_checksum_help writes
            // CSUM_MANGLED_0), as may an incremental update (RFC 1624).
            if calc != Some(h.checksum) && !(calc == Some(0) && h.checksum == 0xffff) {
                bail!("bad TCP checksum {:#06x} (expected {:?})", h.checksum, calc);
            }
            (h.source_port, h.destination_port, t.payload().to_vec())
        }
        _ => (0, 0, p.ip_payload().map(|x| x.payload.to_vec()).unwrap_or_default()),
    };
    Ok(Parsed { eth, src, dst, ttl, sport, dport, proto, payload })
}

pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (before complement).
        assert_eq!(inet_checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), !0xddf2);
    }

    #[test]
    fn vrrp_v3_checksum_verifies_to_zero_over_pseudo_header() {
        let (s, d) = (IpAddr::V4(v4("198.18.0.1")), IpAddr::V4(v4("224.0.0.18")));
        let m = vrrp(3, 51, 100, 100, &[IpAddr::V4(v4("198.18.0.100"))], s, d);
        assert_eq!(m.len(), 12);
        let len = (m.len() as u16).to_be_bytes();
        assert_eq!(
            inet_checksum(&[
                &v4("198.18.0.1").octets(),
                &v4("224.0.0.18").octets(),
                &[0, 112],
                &len,
                &m
            ]),
            0
        );
        let m2 = vrrp(2, 51, 100, 1, &[IpAddr::V4(v4("198.18.0.100"))], s, d);
        assert_eq!(m2.len(), 20);
        assert_eq!(inet_checksum(&[&m2]), 0);
    }

    #[test]
    fn check_accepts_built_frames_and_rejects_corruption() {
        let f = tcp(
            Eth::default(),
            "198.18.0.1:1234".parse().unwrap(),
            "198.18.0.2:80".parse().unwrap(),
            TcpFlags::SYN,
            7,
            b"hi",
        );
        let p = check(&f).unwrap();
        assert_eq!((p.sport, p.dport, p.proto), (1234, 80, 6));
        let mut bad = f.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert!(check(&bad).unwrap_err().to_string().contains("TCP checksum"));
        let mut bad_ip = f;
        bad_ip[14 + 8] = 3; // TTL changed without fixing the header checksum
        assert!(check(&bad_ip).unwrap_err().to_string().contains("IPv4 header checksum"));
        let u6 = udp(
            Eth::default(),
            "[fd48:4c42::1]:5000".parse().unwrap(),
            "[fd48:4c42::2]:53".parse().unwrap(),
            b"q",
        );
        assert_eq!(check(&u6).unwrap().dport, 53);
    }

    /// A TCP checksum that computes to 0 is valid as 0x0000 and as 0xffff (what the kernel's
    /// skb_checksum_help writes): a lab once failed on such a segment from a real socket.
    #[test]
    fn check_accepts_both_forms_of_a_zero_tcp_checksum() {
        let seg = |v: u16| {
            let (s, d) = ("198.18.0.1:1234".parse().unwrap(), "198.18.0.2:80".parse().unwrap());
            tcp(Eth::default(), s, d, TcpFlags::ACK, 7, &v.to_be_bytes())
        };
        let mut f = (0..=u16::MAX).map(seg).find(|f| f[50..52] == [0, 0]).expect("a zero sum");
        assert!(check(&f).is_ok());
        f[50..52].copy_from_slice(&[0xff, 0xff]);
        assert!(check(&f).is_ok(), "0xffff is the same checksum");
        f[50..52].copy_from_slice(&[0xff, 0xfe]);
        assert!(check(&f).is_err());
    }
}
