//! Gratuitous ARP (IPv4) and unsolicited Neighbor Advertisements (IPv6) for VIPs.
//!
//! - Pure frame builders: [`build_garp`], [`build_unsolicited_na`].
//! - [`GarpSender`]: the sending edge; [`PacketGarpSender`] writes whole Ethernet frames on an
//!   `AF_PACKET` socket, for both ARP and NA, as keepalived does: each VIP's out of the device
//!   the VIP lives on, from that device's MAC ([`GarpDevice`]). Building the NA frame
//!   ourselves (instead of an ICMPv6 raw socket) keeps the source = VIP even while the VIP is
//!   absent or tentative, and keeps the bytes exactly what the builder produced.
//! - [`GarpSchedule`]: keepalived's timing, pure (time is passed in), and [`run_garp`], the
//!   tokio driver.
//!
//! Timing (keepalived's `vrrp_garp_*` / per-instance `garp_*` keywords):
//! on becoming MASTER send `garp_master_repeat` messages per VIP at once, then another
//! `garp_master_repeat` after `garp_master_delay` (0: no second set); while MASTER, every
//! `garp_master_refresh` (0: off) send `garp_master_refresh_repeat` per VIP. Consecutive
//! gratuitous ARPs on the interface are spaced by `garp_interval`, NAs by `gna_interval`.
//! A round sends each VIP once; rounds repeat.

use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc;

use super::socket::Interface;

pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// Ethernet address of ff02::1 (RFC 2464 §7).
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Length of a gratuitous ARP frame (no padding: the NIC pads to 60 on the wire).
pub const GARP_LEN: usize = 14 + 28;
/// Length of an unsolicited NA frame: Ethernet + IPv6 + NA + target link-layer option.
pub const NA_LEN: usize = 14 + 40 + 24 + 8;

// ---------------------------------------------------------------------------------------------
// Frames

/// Gratuitous ARP in the request form keepalived sends: broadcast Ethernet destination,
/// op = request, sender = target = `vip`, sender hardware = `mac`, target hardware = broadcast.
pub fn build_garp(mac: [u8; 6], vip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut f = [0u8; GARP_LEN];
    f[0..6].copy_from_slice(&BROADCAST_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let arp = &mut f[14..];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&vip.octets());
    arp[18..24].copy_from_slice(&BROADCAST_MAC);
    arp[24..28].copy_from_slice(&vip.octets());
    f
}

/// Unsolicited Neighbor Advertisement (RFC 4861 §4.4, §7.2.6) as keepalived sends it:
/// from `vip` to ff02::1 (33:33:00:00:00:01), hop limit 255, override flag set, router flag
/// as given (keepalived: the interface forwards IPv6), target = `vip`, target link-layer
/// address option = `mac`.
pub fn build_unsolicited_na(mac: [u8; 6], vip: Ipv6Addr, router: bool) -> [u8; NA_LEN] {
    let mut f = [0u8; NA_LEN];
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let (ip, icmp) = f[14..].split_at_mut(40);
    ip[0] = 0x60; // version 6, traffic class 0, flow label 0
    ip[4..6].copy_from_slice(&32u16.to_be_bytes()); // payload length
    ip[6] = 58; // ICMPv6
    ip[7] = 255; // hop limit (RFC 4861 requires 255)
    ip[8..24].copy_from_slice(&vip.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());
    icmp[0] = 136; // Neighbor Advertisement
    icmp[1] = 0;
    icmp[4] = 0x20 | if router { 0x80 } else { 0 }; // R, S=0, O=1
    icmp[8..24].copy_from_slice(&vip.octets());
    icmp[24] = 2; // target link-layer address option
    icmp[25] = 1; // length in units of 8 octets
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(vip, ALL_NODES, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// ICMPv6 checksum (RFC 4443 §2.3) over the IPv6 pseudo-header and `msg`, with `msg`'s
/// checksum field taken as zero.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let hi = u64::from(c[0]) << 8;
            sum += hi | c.get(1).map_or(0, |&b| u64::from(b));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&msg[..2.min(msg.len())]);
    if msg.len() > 4 {
        add(&msg[4..]);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------------------------------------
// Sender

/// Sends one gratuitous ARP / unsolicited NA for a VIP out of the device `ifindex` it lives
/// on. Calls are non-blocking.
pub trait GarpSender: Send {
    fn send_garp(&self, ifindex: u32, vip: Ipv4Addr) -> io::Result<()>;
    fn send_na(&self, ifindex: u32, vip: Ipv6Addr) -> io::Result<()>;
}

/// A device VIPs are announced on. Receivers learn the VIP at the frame's source MAC, so it
/// must be the MAC of the device that holds the VIP (keepalived sends each VIP's GARP / NA
/// on the VIP's own interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarpDevice {
    pub ifindex: u32,
    /// Source hardware address: the device's, or the VMAC (00:00:5e:00:01:VRID) when the
    /// instance uses one.
    pub mac: [u8; 6],
    /// The NA router flag: whether this device forwards IPv6 ([`ipv6_forwarding`]).
    pub router: bool,
}

impl GarpDevice {
    pub fn new(iface: &Interface, mac: [u8; 6], router: bool) -> Self {
        Self { ifindex: iface.index, mac, router }
    }
}

/// [`GarpSender`] on an `AF_PACKET` socket (protocol 0: it sends only, never receives; being
/// unbound, it sends on whichever device each frame names).
#[derive(Debug)]
pub struct PacketGarpSender {
    sock: Socket,
    devices: Vec<GarpDevice>,
}

impl PacketGarpSender {
    /// A sender for VIPs on `devices`. Needs `CAP_NET_RAW`; the socket lives in the calling
    /// thread's network namespace.
    pub fn new(devices: Vec<GarpDevice>) -> io::Result<Self> {
        let sock = Socket::new(Domain::PACKET, Type::RAW, Some(0.into()))?;
        sock.set_nonblocking(true)?;
        Ok(Self { sock, devices })
    }

    fn device(&self, ifindex: u32) -> Option<&GarpDevice> {
        self.devices.iter().find(|d| d.ifindex == ifindex)
    }

    fn send_frame(
        &self,
        ifindex: u32,
        frame: &[u8],
        ethertype: u16,
        dst: [u8; 6],
    ) -> io::Result<()> {
        // SAFETY: zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst);
        // SAFETY: valid fd; frame and sll live for the call.
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// A VIP on a device this sender has no entry for (one without a MAC address: see
/// `instance::start`) is not announced.
impl GarpSender for PacketGarpSender {
    fn send_garp(&self, ifindex: u32, vip: Ipv4Addr) -> io::Result<()> {
        let Some(d) = self.device(ifindex) else { return Ok(()) };
        self.send_frame(ifindex, &build_garp(d.mac, vip), ETHERTYPE_ARP, BROADCAST_MAC)
    }

    fn send_na(&self, ifindex: u32, vip: Ipv6Addr) -> io::Result<()> {
        let Some(d) = self.device(ifindex) else { return Ok(()) };
        let frame = build_unsolicited_na(d.mac, vip, d.router);
        self.send_frame(ifindex, &frame, ETHERTYPE_IPV6, ALL_NODES_MAC)
    }
}

/// Whether IPv6 forwarding is on for `ifname` (the NA router flag, as keepalived decides it),
/// read from /proc/sys of the calling thread's network namespace.
pub fn ipv6_forwarding(ifname: &str) -> io::Result<bool> {
    let s = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding"))?;
    Ok(s.trim() != "0")
}

// ---------------------------------------------------------------------------------------------
// Schedule

/// keepalived's gratuitous ARP / NA timing knobs, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarpConfig {
    /// `garp_master_delay`: delay of the second set after becoming MASTER; zero: no second set.
    pub master_delay: Duration,
    /// `garp_master_repeat`: messages per VIP in each set after becoming MASTER.
    pub master_repeat: u32,
    /// `garp_master_refresh`: period of refreshes while MASTER; zero: off.
    pub master_refresh: Duration,
    /// `garp_master_refresh_repeat`: messages per VIP in each refresh.
    pub master_refresh_repeat: u32,
    /// `garp_interval`: minimum spacing of gratuitous ARPs on the interface.
    pub garp_interval: Duration,
    /// `gna_interval`: minimum spacing of unsolicited NAs on the interface.
    pub gna_interval: Duration,
}

impl Default for GarpConfig {
    fn default() -> Self {
        Self {
            master_delay: Duration::from_secs(5),
            master_repeat: 5,
            master_refresh: Duration::ZERO,
            master_refresh_repeat: 1,
            garp_interval: Duration::ZERO,
            gna_interval: Duration::ZERO,
        }
    }
}

/// One message the schedule says to send now, with the index of the device it goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GarpMessage {
    Arp(Ipv4Addr, u32),
    Na(Ipv6Addr, u32),
}

/// Paced queue of one message kind.
#[derive(Debug, Clone)]
struct Lane<A> {
    queue: VecDeque<A>,
    interval: Duration,
    /// Earliest time the next message may go (last send + interval).
    not_before: Option<Instant>,
}

impl<A: Copy> Lane<A> {
    fn new(interval: Duration) -> Self {
        Self { queue: VecDeque::new(), interval, not_before: None }
    }

    fn drain(&mut self, now: Instant, out: &mut Vec<A>) {
        while let Some(&a) = self.queue.front() {
            if self.not_before.is_some_and(|t| now < t) {
                return;
            }
            self.queue.pop_front();
            out.push(a);
            if !self.interval.is_zero() {
                self.not_before = Some(now + self.interval);
            }
        }
    }

    fn clear(&mut self) {
        self.queue.clear();
    }
}

/// The gratuitous ARP / NA timing of one instance, without I/O: tell it about state changes,
/// call [`poll`](Self::poll) at [`next_deadline`](Self::next_deadline), send what it returns.
#[derive(Debug, Clone)]
pub struct GarpSchedule {
    config: GarpConfig,
    /// Each VIP with the index of the device it lives on.
    vips: Vec<(IpAddr, u32)>,
    arp: Lane<GarpMessage>,
    na: Lane<GarpMessage>,
    second_set_at: Option<Instant>,
    refresh_at: Option<Instant>,
    /// The latest `now` seen; queued, unpaced messages are due then.
    last_now: Option<Instant>,
}

impl GarpSchedule {
    pub fn new(config: GarpConfig) -> Self {
        Self {
            arp: Lane::new(config.garp_interval),
            na: Lane::new(config.gna_interval),
            config,
            vips: Vec::new(),
            second_set_at: None,
            refresh_at: None,
            last_now: None,
        }
    }

    pub fn config(&self) -> &GarpConfig {
        &self.config
    }

    /// The instance became MASTER owning `vips` (each with the index of the device it lives
    /// on): first set now, second after `master_delay`, refreshes every `master_refresh`.
    /// Replaces anything pending.
    pub fn become_master(&mut self, now: Instant, vips: &[(IpAddr, u32)]) {
        self.leave_master();
        self.last_now = Some(now);
        self.vips = vips.to_vec();
        self.enqueue(self.config.master_repeat);
        if !self.config.master_delay.is_zero() {
            self.second_set_at = Some(now + self.config.master_delay);
        }
        if !self.config.master_refresh.is_zero() {
            self.refresh_at = Some(now + self.config.master_refresh);
        }
    }

    /// The instance left MASTER: nothing more goes out (pacing state is kept, so a quick
    /// return to MASTER still respects the intervals).
    pub fn leave_master(&mut self) {
        self.vips.clear();
        self.arp.clear();
        self.na.clear();
        self.second_set_at = None;
        self.refresh_at = None;
    }

    /// An extra set of `repeat` rounds now (e.g. keepalived's `garp_lower_prio_repeat` when a
    /// lower-priority advert is seen while MASTER). No-op unless MASTER.
    pub fn extra_set(&mut self, now: Instant, repeat: u32) {
        self.last_now = Some(now);
        self.enqueue(repeat);
    }

    fn enqueue(&mut self, rounds: u32) {
        for _ in 0..rounds {
            for &(vip, ifindex) in &self.vips {
                match vip {
                    IpAddr::V4(a) => self.arp.queue.push_back(GarpMessage::Arp(a, ifindex)),
                    IpAddr::V6(a) => self.na.queue.push_back(GarpMessage::Na(a, ifindex)),
                }
            }
        }
    }

    /// What to send at `now`. Call again at [`next_deadline`](Self::next_deadline).
    pub fn poll(&mut self, now: Instant) -> Vec<GarpMessage> {
        self.last_now = Some(now);
        if self.second_set_at.is_some_and(|t| t <= now) {
            self.second_set_at = None;
            self.enqueue(self.config.master_repeat);
        }
        if let Some(t) = self.refresh_at {
            if t <= now {
                // Next refresh one period after this one; if we are late by more than a
                // period, do not send a backlog.
                let mut next = t + self.config.master_refresh;
                if next <= now {
                    next = now + self.config.master_refresh;
                }
                self.refresh_at = Some(next);
                self.enqueue(self.config.master_refresh_repeat);
            }
        }
        let mut out = Vec::new();
        self.arp.drain(now, &mut out);
        self.na.drain(now, &mut out);
        out
    }

    /// When [`poll`](Self::poll) has something to do next; `None`: nothing until the next
    /// state change. Messages queued and not held back by pacing are due at the time of the
    /// last call that saw the clock.
    pub fn next_deadline(&self) -> Option<Instant> {
        let lane = |ready: Option<Instant>, nonempty: bool| match (nonempty, ready, self.last_now) {
            (false, _, _) => None,
            (true, Some(t), Some(n)) => Some(t.max(n)),
            (true, r, n) => r.or(n),
        };
        [
            self.second_set_at,
            self.refresh_at,
            lane(self.arp.not_before, !self.arp.queue.is_empty()),
            lane(self.na.not_before, !self.na.queue.is_empty()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether messages are queued (ignoring future sets and refreshes).
    pub fn has_queued(&self) -> bool {
        !self.arp.queue.is_empty() || !self.na.queue.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Driver

/// State changes for [`run_garp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GarpCommand {
    /// Each VIP with the index of the device it lives on.
    BecomeMaster(Vec<(IpAddr, u32)>),
    LeaveMaster,
    /// Extra set of this many rounds now (only while MASTER).
    ExtraSet(u32),
}

/// Drive a [`GarpSchedule`] with tokio time until `commands` closes. Send errors are logged
/// and do not stop the driver (a lost gratuitous ARP is repaired by the next one).
pub async fn run_garp<S: GarpSender>(
    config: GarpConfig,
    sender: S,
    mut commands: mpsc::Receiver<GarpCommand>,
) {
    let mut sched = GarpSchedule::new(config);
    let now = || tokio::time::Instant::now().into_std();
    loop {
        let deadline = sched.next_deadline();
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(GarpCommand::BecomeMaster(vips)) => sched.become_master(now(), &vips),
                Some(GarpCommand::LeaveMaster) => sched.leave_master(),
                Some(GarpCommand::ExtraSet(n)) => sched.extra_set(now(), n),
                None => return,
            },
            _ = sleep_until_opt(deadline) => {}
        }
        for msg in sched.poll(now()) {
            let res = match msg {
                GarpMessage::Arp(a, ifindex) => sender.send_garp(ifindex, a),
                GarpMessage::Na(a, ifindex) => sender.send_na(ifindex, a),
            };
            if let Err(e) = res {
                tracing::warn!(?msg, error = %e, "sending gratuitous ARP / NA failed");
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        Ethernet2Header, Icmpv6Slice, Icmpv6Type, Ipv6Header, LinkSlice, SlicedPacket,
    };

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn garp_frame_fields() {
        let vip = Ipv4Addr::new(192, 0, 2, 100);
        let f = build_garp(MAC, vip);
        let (eth, rest) = Ethernet2Header::from_slice(&f).unwrap();
        assert_eq!(eth.destination, BROADCAST_MAC);
        assert_eq!(eth.source, MAC);
        assert_eq!(eth.ether_type, etherparse::EtherType::ARP);
        // etherparse 0.16 has no ARP decoder; read RFC 826 fields at their offsets.
        let be16 = |o: usize| u16::from_be_bytes([rest[o], rest[o + 1]]);
        assert_eq!(be16(0), 1, "htype Ethernet");
        assert_eq!(be16(2), 0x0800, "ptype IPv4");
        assert_eq!((rest[4], rest[5]), (6, 4), "hlen, plen");
        assert_eq!(be16(6), 1, "op request");
        assert_eq!(&rest[8..14], &MAC, "sender hw");
        assert_eq!(&rest[14..18], &vip.octets(), "sender ip");
        assert_eq!(&rest[18..24], &BROADCAST_MAC, "target hw");
        assert_eq!(&rest[24..28], &vip.octets(), "target ip");
        assert_eq!(rest.len(), 28);
    }

    #[test]
    fn na_frame_fields_and_checksum() {
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        for router in [false, true] {
            let f = build_unsolicited_na(MAC, vip, router);
            let sliced = SlicedPacket::from_ethernet(&f).unwrap();
            match sliced.link {
                Some(LinkSlice::Ethernet2(e)) => {
                    assert_eq!(e.destination(), ALL_NODES_MAC);
                    assert_eq!(e.source(), MAC);
                }
                other => panic!("{other:?}"),
            }
            let (ip, _) = Ipv6Header::from_slice(&f[14..]).unwrap();
            assert_eq!(ip.source, vip.octets());
            assert_eq!(ip.destination, ALL_NODES.octets());
            assert_eq!(ip.hop_limit, 255);
            assert_eq!(ip.payload_length, 32);
            assert_eq!(ip.next_header, etherparse::IpNumber::IPV6_ICMP);
            let icmp = Icmpv6Slice::from_slice(&f[54..]).unwrap();
            assert_eq!(
                icmp.icmp_type(),
                Icmpv6Type::Unknown {
                    type_u8: 136,
                    code_u8: 0,
                    bytes5to8: [if router { 0xa0 } else { 0x20 }, 0, 0, 0],
                }
            );
            // Independent checksum check: etherparse recomputes it from the pseudo-header.
            let want =
                icmp.icmp_type().calc_checksum(ip.source, ip.destination, icmp.payload()).unwrap();
            assert_eq!(icmp.checksum(), want);
            assert_ne!(want, 0);
            // Target and target link-layer address option.
            assert_eq!(&icmp.payload()[..16], &vip.octets());
            assert_eq!(&icmp.payload()[16..], &[2, 1, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
            // Our own checksum routine agrees with etherparse's.
            assert_eq!(icmpv6_checksum(vip, ALL_NODES, &f[54..]), want);
        }
    }

    /// Two VIPs on device 2, one on device 3.
    fn vips() -> Vec<(IpAddr, u32)> {
        [("192.0.2.100", 2), ("192.0.2.101", 3), ("2001:db8::100", 2)]
            .iter()
            .map(|(s, i)| (s.parse().unwrap(), *i))
            .collect()
    }

    fn count(msgs: &[GarpMessage]) -> (usize, usize) {
        let arps = msgs.iter().filter(|m| matches!(m, GarpMessage::Arp(..))).count();
        (arps, msgs.len() - arps)
    }

    #[test]
    fn default_schedule_is_two_sets_of_five() {
        let t0 = Instant::now();
        let mut s = GarpSchedule::new(GarpConfig::default());
        assert_eq!(s.next_deadline(), None);
        s.become_master(t0, &vips());
        let first = s.poll(t0);
        assert_eq!(count(&first), (10, 5));
        // Rounds: each VIP once per round, in order, each for its own device.
        assert_eq!(first[0], GarpMessage::Arp(Ipv4Addr::new(192, 0, 2, 100), 2));
        assert_eq!(first[1], GarpMessage::Arp(Ipv4Addr::new(192, 0, 2, 101), 3));
        assert_eq!(first[2], GarpMessage::Arp(Ipv4Addr::new(192, 0, 2, 100), 2));
        assert_eq!(first[10], GarpMessage::Na("2001:db8::100".parse().unwrap(), 2));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(s.poll(t0 + Duration::from_millis(4999)).is_empty());
        assert_eq!(count(&s.poll(t0 + Duration::from_secs(5))), (10, 5));
        assert_eq!(s.next_deadline(), None, "refresh is off by default");
        assert!(s.poll(t0 + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn no_second_set_when_delay_zero() {
        let t0 = Instant::now();
        let mut s = GarpSchedule::new(GarpConfig {
            master_delay: Duration::ZERO,
            master_repeat: 2,
            ..GarpConfig::default()
        });
        s.become_master(t0, &vips());
        assert_eq!(count(&s.poll(t0)), (4, 2));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn refresh_repeats_periodically_without_backlog() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut s = GarpSchedule::new(GarpConfig {
            master_delay: secs(5),
            master_repeat: 1,
            master_refresh: secs(60),
            master_refresh_repeat: 2,
            ..GarpConfig::default()
        });
        s.become_master(t0, &vips());
        assert_eq!(count(&s.poll(t0)), (2, 1));
        assert_eq!(s.next_deadline(), Some(t0 + secs(5)));
        assert_eq!(count(&s.poll(t0 + secs(5))), (2, 1));
        assert_eq!(s.next_deadline(), Some(t0 + secs(60)));
        assert_eq!(count(&s.poll(t0 + secs(60))), (4, 2));
        assert_eq!(s.next_deadline(), Some(t0 + secs(120)));
        // Polled very late: one refresh, not a backlog of three.
        assert_eq!(count(&s.poll(t0 + secs(300))), (4, 2));
        assert_eq!(s.next_deadline(), Some(t0 + secs(360)));
        s.leave_master();
        assert_eq!(s.next_deadline(), None);
        assert!(s.poll(t0 + secs(400)).is_empty());
    }

    #[test]
    fn intervals_space_each_kind_independently() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = GarpSchedule::new(GarpConfig {
            master_delay: Duration::ZERO,
            master_repeat: 2,
            garp_interval: ms(100),
            gna_interval: ms(30),
            ..GarpConfig::default()
        });
        s.become_master(t0, &vips());
        // Simulate a driver that polls exactly at each deadline.
        let mut timeline = Vec::new();
        let mut now = t0;
        for _ in 0..20 {
            for m in s.poll(now) {
                timeline.push(((now - t0).as_millis(), m));
            }
            match s.next_deadline() {
                Some(t) => now = t.max(now),
                None => break,
            }
        }
        let arp_times: Vec<u128> = timeline
            .iter()
            .filter(|(_, m)| matches!(m, GarpMessage::Arp(..)))
            .map(|(t, _)| *t)
            .collect();
        let na_times: Vec<u128> = timeline
            .iter()
            .filter(|(_, m)| matches!(m, GarpMessage::Na(..)))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(arp_times, vec![0, 100, 200, 300]);
        assert_eq!(na_times, vec![0, 30]);
        assert!(!s.has_queued());
    }

    #[test]
    fn become_master_again_restarts_and_leave_cancels() {
        let t0 = Instant::now();
        let mut s = GarpSchedule::new(GarpConfig::default());
        s.become_master(t0, &vips());
        s.leave_master();
        assert!(s.poll(t0).is_empty());
        assert!(!s.has_queued());
        s.extra_set(t0, 3);
        assert!(s.poll(t0).is_empty(), "extra sets only while MASTER");
        let t1 = t0 + Duration::from_secs(1);
        s.become_master(t1, &vips()[..1]);
        assert_eq!(count(&s.poll(t1)), (5, 0));
        s.extra_set(t1, 2);
        assert_eq!(count(&s.poll(t1)), (2, 0));
        assert_eq!(s.next_deadline(), Some(t1 + Duration::from_secs(5)));
    }

    #[derive(Clone, Default)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<(tokio::time::Instant, GarpMessage)>>>);

    impl GarpSender for Recorder {
        fn send_garp(&self, ifindex: u32, vip: Ipv4Addr) -> io::Result<()> {
            let m = GarpMessage::Arp(vip, ifindex);
            self.0.lock().unwrap().push((tokio::time::Instant::now(), m));
            Ok(())
        }
        fn send_na(&self, ifindex: u32, vip: Ipv6Addr) -> io::Result<()> {
            let m = GarpMessage::Na(vip, ifindex);
            self.0.lock().unwrap().push((tokio::time::Instant::now(), m));
            Err(io::Error::other("NA send fails; driver must carry on"))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn driver_follows_the_schedule() {
        let rec = Recorder::default();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(run_garp(GarpConfig::default(), rec.clone(), rx));
        let t0 = tokio::time::Instant::now();
        tx.send(GarpCommand::BecomeMaster(vips())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        {
            let sent = rec.0.lock().unwrap();
            assert_eq!(sent.len(), 30);
            assert!(sent[..15].iter().all(|(t, _)| *t - t0 < Duration::from_millis(1)));
            assert!(sent[15..]
                .iter()
                .all(|(t, _)| *t - t0 >= Duration::from_secs(5)
                    && *t - t0 < Duration::from_millis(5001)));
        }
        tx.send(GarpCommand::BecomeMaster(vips())).await.unwrap();
        tx.send(GarpCommand::LeaveMaster).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The first set may have gone out before LeaveMaster was seen; the second must not.
        let n = rec.0.lock().unwrap().len();
        assert!(n == 30 || n == 45, "{n}");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("driver stops when the command channel closes")
            .unwrap();
    }
}
