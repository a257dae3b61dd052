//! Bounded header access shared by all programs.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ADJ_ROOM_NO_CSUM_RESET,
    },
    helpers::{
        bpf_redirect, bpf_skb_change_tail, bpf_skb_vlan_pop, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
    EbpfContext,
};

/// What the forwarding code needs from its hook: XDP (`XdpContext`: a frame, before the
/// kernel allocates anything) or TC ingress (`TcContext`: a socket buffer). One code path,
/// compiled once per hook; where the two differ:
/// - [`Frame::SKB`]: TCP/UDP checksums are updated through the kernel's helpers, which know
///   the socket buffer's checksum state (a socket's packet on a veth carries only the
///   pseudo-header sum, CHECKSUM_PARTIAL: an incremental update of the full checksum would
///   corrupt it);
/// - room for a new header goes between the Ethernet and IP headers rather than at the start
///   ([`Frame::push_head`]), and a GSO packet ([`Frame::gso_size`]) is cut into segments on
///   the way out;
/// - every send is a redirect (XDP: TX back out of the ingress interface, or redirect).
pub trait Frame: EbpfContext {
    const SKB: bool;
    #[inline(always)]
    fn skb(&self) -> bool {
        Self::SKB
    }
    /// Start of the directly accessible bytes (a socket buffer's linear part).
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The packet's whole length (a socket buffer may hold more than its linear part).
    fn len(&self) -> u32;
    fn ifindex(&self) -> u32;
    /// Makes `len` bytes of room in front of the IP header for a header to be written there;
    /// the Ethernet header is to be written again afterwards (at XDP the room is at the start
    /// of the frame, at TC between the Ethernet and IP headers). `room` says what for
    /// ([`Room`]: what a GSO packet's segments become at TC). False if it cannot.
    fn push_head(&self, len: u32, room: Room) -> bool;
    /// Cuts the frame to its first `len` bytes; false if it cannot.
    fn truncate(&self, len: u32) -> bool;
    /// A GSO packet's segment payload size, 0 for a plain packet (always at XDP). A GSO
    /// packet (TC) holds several segments' worth, which the kernel cuts on the way out: its
    /// own length says nothing about the path MTU, its segments' does.
    fn gso_size(&self) -> u32;
    /// Sends the frame out of `ifindex`: the XDP action (`XDP_TX` or `XDP_REDIRECT`) for it,
    /// or `XDP_PASS` when it cannot. At XDP a redirect reaches only an interface running an
    /// XDP program (a bridge, a VLAN or macvlan device, a NIC without one has no
    /// `ndo_xdp_xmit` or no XDP transmit queues: the kernel drops the frame after the program
    /// returned), so it goes through `LB_TX_PORTS`, the interfaces the daemon attached the
    /// program to: another fails here. At TC a redirect reaches any device.
    fn redirect(&self, ifindex: u32) -> u32;
    /// Before a frame is sent on: at TC, takes off a priority tag ([`Self::vlan_tagged`]
    /// handled the frame as untagged), so it leaves as the kernel would forward it. May move
    /// packet data: call it before taking packet pointers, or last.
    fn untag(&self);
    /// Whether the frame carries an 802.1Q/802.1ad tag the kernel took out of it. At TC the
    /// kernel has always moved a received tag out of band (`skb->vlan_tci`) before the
    /// program runs, and puts it back on at egress: a tagged frame looks untagged and must be
    /// recognised by this. At XDP a tag is in the frame (the parser passes it), except on a
    /// NIC that strips tags in hardware (`rxvlan` on), which XDP cannot see before Linux 6.8
    /// (`bpf_xdp_metadata_rx_vlan_tag`): there tagged traffic must not reach the program
    /// (`ethtool -K <dev> rxvlan off`, or the TC hook). At TC a priority tag (VLAN ID 0: an
    /// 802.1p priority, no VLAN) is not one: the kernel takes such a frame as untagged, and
    /// so does the program (the tag comes off only if it sends the frame on: [`Self::untag`];
    /// a frame it passes keeps it for the stack, a bridge or a VLAN device of ID 0). A tag
    /// still in the frame behind it is the parser's to pass.
    fn vlan_tagged(&self) -> bool;
}

impl Frame for XdpContext {
    const SKB: bool = false;
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn push_head(&self, len: u32, _room: Room) -> bool {
        // SAFETY: plain helper call; packet pointers are derived again afterwards.
        unsafe { bpf_xdp_adjust_head(self.ctx, -(len as i32)) == 0 }
    }
    #[inline(always)]
    fn truncate(&self, len: u32) -> bool {
        let now = Frame::len(self);
        // SAFETY: as above.
        len <= now && unsafe { bpf_xdp_adjust_tail(self.ctx, len as i32 - now as i32) == 0 }
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        if ifindex == self.ifindex() {
            aya_ebpf::bindings::xdp_action::XDP_TX
        } else {
            // XDP_PASS when `ifindex` is not in the map (the helper's fallback action).
            let pass = aya_ebpf::bindings::xdp_action::XDP_PASS;
            match crate::lb::LB_TX_PORTS.redirect(ifindex, pass as u64) {
                Ok(a) => a,
                Err(_) => pass,
            }
        }
    }
    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        false
    }
    #[inline(always)]
    fn untag(&self) {}
}

impl Frame for TcContext {
    const SKB: bool = true;
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the program's context pointer.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn push_head(&self, len: u32, room: Room) -> bool {
        // Room after the MAC header: the bytes behind it keep their place in the buffer, so a
        // socket's CHECKSUM_PARTIAL offsets still point at its L4 checksum. The ENCAP_L3 flag
        // marks the buffer encapsulated (inner headers, GSO type, the outer protocol) and the
        // no-reset flag keeps a verified inner checksum verified (IPIP and IPv6-in-IPv6 add
        // no checksum of their own).
        let flags = match room {
            Room::Answer => 0,
            Room::Tunnel { outer_v6, fixed_segments } => {
                let l3 = if outer_v6 {
                    BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
                } else {
                    BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
                };
                let fixed = if fixed_segments { BPF_F_ADJ_ROOM_FIXED_GSO } else { 0 };
                (l3 | BPF_F_ADJ_ROOM_NO_CSUM_RESET | fixed) as u64
            }
        };
        self.adjust_room(len as i32, BPF_ADJ_ROOM_MAC, flags).is_ok()
    }
    #[inline(always)]
    fn truncate(&self, len: u32) -> bool {
        // SAFETY: plain helper call on this program's socket buffer; flags 0. It refuses to
        // cut a CHECKSUM_PARTIAL buffer before the end of its L4 checksum field.
        unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) == 0 }
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: the program's context pointer.
        unsafe { (*self.skb.skb).gso_size }
    }
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // SAFETY: plain helper call; flags 0 (egress of `ifindex`). Returns TC_ACT_REDIRECT,
        // which the TC entry point makes of XDP_REDIRECT.
        unsafe { bpf_redirect(ifindex, 0) };
        aya_ebpf::bindings::xdp_action::XDP_REDIRECT
    }
    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        // SAFETY: the program's context pointer.
        unsafe { (*self.skb.skb).vlan_present != 0 && (*self.skb.skb).vlan_tci & 0x0fff != 0 }
    }
    #[inline(always)]
    fn untag(&self) {
        let skb = self.skb.skb;
        // SAFETY: the program's context pointer; a plain helper call on its socket buffer
        // (the callers hold no packet pointer across it).
        unsafe {
            if (*skb).vlan_present != 0 && (*skb).vlan_tci & 0x0fff == 0 {
                bpf_skb_vlan_pop(skb);
            }
        }
    }
}

/// What [`Frame::push_head`] makes room for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// The IP and ICMP headers of an answer (the buffer has been cut to the quote first,
    /// which ends any GSO).
    Answer,
    /// An outer IP header (TUN: IPv4 in IPv4, RFC 2003, or IPv6 in IPv6, RFC 2473). A GSO
    /// packet's segment size shrinks by it, so that each segment is as long once encapsulated
    /// as it was before (TCP) — unless `fixed_segments`: a UDP GSO packet's segment size
    /// delimits its datagrams (the kernel refuses to change it).
    Tunnel { outer_v6: bool, fixed_segments: bool },
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPV6_HLEN: usize = 40;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

/// A pointer to a `T` at `offset` bytes into the packet, or `None` if it does not fit.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Frame, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The EtherType of an untagged frame (host order), or `None` if the frame is shorter than
/// an Ethernet header.
#[inline(always)]
pub fn ether_type(ctx: &impl Frame) -> Option<u16> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked by ptr_at.
    Some(u16::from_be(unsafe { (*eth).proto }))
}

pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPV4_HLEN: usize = 20;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 `frag_off` bits (host order): more-fragments flag and the offset.
pub const IP_MF_OFFSET: u16 = 0x3fff;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset (high nibble) and reserved bits.
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

/// Whether IPv6 next-header value `nh` is an extension header (RFC 8200 §4, plus AH, ESP
/// and the Mobility/HIP/Shim6 headers) rather than an upper-layer protocol.
#[inline(always)]
pub fn ipv6_is_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}
