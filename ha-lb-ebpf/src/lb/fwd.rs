//! Header rewrites (NAT) and sending a frame on toward an address (FIB lookup, MAC rewrite,
//! XDP_TX or redirect).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LKUP_RET_UNREACHABLE, BPF_F_MARK_ENFORCE, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns,
        bpf_l4_csum_replace,
    },
};
use ha_lb_common::lb::{LbFlow, FAMILY_V4};

use super::{
    copy_addr, csum,
    icmp::{ICMP_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6},
    maps::{scratch, LB_ICMP_TOKENS, LB_TUN_ID},
    Pkt,
};
use crate::parse::{
    ptr_at, EthHdr, Frame, Ipv4Hdr, Ipv6Hdr, Room, TcpHdr, UdpHdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6,
    IPPROTO_TCP, IPV4_HLEN, IPV6_HLEN,
};

/// IPv4-in-IPv4 (RFC 2003).
const IPPROTO_IPIP: u8 = 4;
/// IPv6-in-IPv6 (RFC 2473).
const IPPROTO_IPV6: u8 = 41;
/// The IPv4 "don't fragment" flag (host order).
const IP_DF: u16 = 0x4000;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Rewrites the destination (`dst = true`, DNAT) or source (SNAT) address and port of `pkt`,
/// updating the IPv4 header checksum and the TCP/UDP checksum incrementally. A UDP/IPv4
/// checksum of zero ("none") stays zero.
///
/// The headers are found again from the frame's start at their fixed offsets (the parser
/// passes only plain IPv4 and IPv6 headers) and bounds-checked here, rather than carried over
/// from the parser as addresses: a packet pointer kept in a stack struct can reach a
/// subprogram as a plain number for the verifier (seen on 6.1), which then refuses it.
#[inline(always)]
pub fn rewrite(ctx: &impl Frame, pkt: &Pkt, dst: bool, addr: &[u32; 4], port: u16) {
    let (old, old_port) = if dst { (pkt.dst, pkt.dport) } else { (pkt.src, pkt.sport) };
    if pkt.family == FAMILY_V4 {
        rewrite_l4(ctx, pkt, ETH_HLEN + IPV4_HLEN, (dst, old_port, port), (&old, addr), |c| {
            csum::replace_addr4_port(c, old[0], addr[0], old_port, port)
        });
        let Some(ih) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return };
        // SAFETY: bounds-checked by ptr_at.
        unsafe {
            (*ih).check = csum::replace4((*ih).check, old[0], addr[0]);
            if dst {
                (*ih).daddr = addr[0];
            } else {
                (*ih).saddr = addr[0];
            }
        }
    } else {
        rewrite_l4(ctx, pkt, ETH_HLEN + IPV6_HLEN, (dst, old_port, port), (&old, addr), |c| {
            csum::replace_addr6_port(c, &old, addr, old_port, port)
        });
        let Some(ih) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else { return };
        // SAFETY: bounds-checked by ptr_at.
        unsafe {
            if dst {
                (*ih).daddr = *addr;
            } else {
                (*ih).saddr = *addr;
            }
        }
    }
}

/// The TCP/UDP half of [`rewrite`]: the header at `off`, its port (`dst`: the destination
/// port, from `old_port` to `port`), and its checksum through `update` (a UDP/IPv4 checksum
/// of zero stays zero; a computed zero is sent as all ones). At the TC hook through the
/// kernel's helper instead, given the address change `addrs` (old, new): see [`Frame`].
/// (`update` comes from the caller, one per family: a single closure choosing the family
/// inside is emitted as a subprogram and costs the main chain 48 bytes of the 6.1 stack.)
#[inline(always)]
fn rewrite_l4(
    ctx: &impl Frame,
    pkt: &Pkt,
    off: usize,
    (dst, old_port, port): (bool, u16, u16),
    addrs: (&[u32; 4], &[u32; 4]),
    update: impl Fn(u16) -> u16,
) {
    if ctx.skb() {
        skb_l4_csum(ctx, pkt, off, (old_port, port), addrs);
    }
    if pkt.proto == IPPROTO_TCP {
        let Some(th) = ptr_at::<TcpHdr>(ctx, off) else { return };
        // SAFETY: bounds-checked by ptr_at.
        unsafe {
            if !ctx.skb() {
                (*th).check = update((*th).check);
            }
            if dst {
                (*th).dest = port;
            } else {
                (*th).source = port;
            }
        }
    } else {
        let Some(uh) = ptr_at::<UdpHdr>(ctx, off) else { return };
        // SAFETY: bounds-checked by ptr_at.
        unsafe {
            let c = (*uh).check;
            if !ctx.skb() && (c != 0 || pkt.family != FAMILY_V4) {
                let n = update(c);
                // RFC 768: a computed zero is sent as all ones.
                (*uh).check = if n == 0 { 0xffff } else { n };
            }
            if dst {
                (*uh).dest = port;
            } else {
                (*uh).source = port;
            }
        }
    }
}

/// The TCP/UDP checksum update at the TC hook, for an address change `addrs` (old, new; the
/// pseudo-header) and a port change `ports` (old, new): `bpf_l4_csum_replace`, which updates a
/// full checksum as [`csum`] would, and a CHECKSUM_PARTIAL one (the pseudo-header sum a
/// socket's packet carries until the device or the kernel completes it) for the address only.
/// A UDP/IPv4 checksum of zero stays zero (BPF_F_MARK_MANGLED_0). Invalidates every packet
/// pointer.
///
/// IPv6 passes BPF_F_IPV6, without which the helper adjusts a CHECKSUM_COMPLETE packet's
/// `skb->csum` (a NIC's receive checksum) as for IPv4, where the header checksum absorbs the
/// address change; IPv6 has none, so that adjustment would be wrong. Kernels before 6.16
/// refuse the flag (nothing is changed then) and get the call without it: their
/// CHECKSUM_COMPLETE IPv6 packets keep that error, harmless for a redirected packet (the
/// kernel may log a checksum fault for one passed up translated). veth never sets it.
#[inline(always)]
fn skb_l4_csum(
    ctx: &impl Frame,
    pkt: &Pkt,
    off: usize,
    ports: (u16, u16),
    addrs: (&[u32; 4], &[u32; 4]),
) {
    let check = off + l4_check_offset(pkt.proto);
    // UDP: a computed 0 goes out as all ones (RFC 768 / RFC 8200 §8.1). Over IPv4 a 0 in
    // the packet means "no checksum" and stays; over IPv6 0 is invalid, so it is updated
    // like any value (BPF_F_MARK_ENFORCE).
    let zero_ok = match (pkt.proto != IPPROTO_TCP, pkt.family == FAMILY_V4) {
        (false, _) => 0,
        (true, true) => BPF_F_MARK_MANGLED_0 as u64,
        (true, false) => BPF_F_MARK_MANGLED_0 as u64 | BPF_F_MARK_ENFORCE as u64,
    };
    let words = if pkt.family == FAMILY_V4 { 1 } else { 4 };
    let d = csum::diff(addrs.0, addrs.1, words);
    let skb = ctx.as_ptr().cast();
    // SAFETY: plain helper calls on this program's socket buffer (size 0: `to` is a checksum
    // difference; 2: a 16-bit field). Failures leave the checksum as it was (the receiver
    // drops the packet).
    unsafe {
        let pseudo = BPF_F_PSEUDO_HDR as u64 | zero_ok;
        if pseudo_done(skb, check as u32, d, pseudo, pkt.family != FAMILY_V4) {
            bpf_l4_csum_replace(skb, check as u32, ports.0 as u64, ports.1 as u64, 2 | zero_ok);
        }
    }
}

/// The pseudo-header part of [`skb_l4_csum`]: `bpf_l4_csum_replace` with difference `d`,
/// for IPv6 with BPF_F_IPV6 first (see there). False if the helper refused the update.
///
/// # Safety
/// `skb` is this program's socket buffer.
#[inline(always)]
unsafe fn pseudo_done(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    check: u32,
    d: u32,
    flags: u64,
    v6: bool,
) -> bool {
    /// BPF_F_IPV6 (Linux 6.16; not in these bindings yet).
    const F_IPV6: u64 = 1 << 7;
    // SAFETY: plain helper calls on the caller's socket buffer.
    unsafe {
        if v6 && bpf_l4_csum_replace(skb, check, 0, d as u64, flags | F_IPV6) == 0 {
            return true;
        }
        bpf_l4_csum_replace(skb, check, 0, d as u64, flags) == 0
    }
}

/// Where the checksum sits in a TCP (`proto`) or UDP header, in bytes from its start.
#[inline(always)]
fn l4_check_offset(proto: u8) -> usize {
    if proto == IPPROTO_TCP {
        core::mem::offset_of!(TcpHdr, check)
    } else {
        core::mem::offset_of!(UdpHdr, check)
    }
}

/// What a FIB lookup toward the next hop said.
pub enum Fib {
    /// MACs rewritten; the XDP action that sends the frame (TX or REDIRECT).
    Sent(u32),
    /// Too long for the path: the frame was turned into an ICMP error to its sender, sent with
    /// this XDP action.
    Answered(u32),
    /// Too long for the path, and the frame was changed on the way to an answer that could
    /// not be finished: it is no longer the packet, so it must be dropped.
    Unanswered,
    NoNeigh,
    Unreachable,
    FragNeeded,
    Other,
    /// XDP: the route leaves by an interface the program is not attached to (not in
    /// `LB_TX_PORTS`: see [`Frame::redirect`]), which an XDP redirect cannot reach: the
    /// kernel would drop the frame after the program returned (a bridge, a VLAN or macvlan
    /// device, a NIC without an XDP program: no `ndo_xdp_xmit`, or no XDP transmit queues).
    /// The frame keeps its Ethernet header.
    NoXdp,
}

/// `struct bpf_fib_lookup` with plain fields instead of unions, so it can be built field by
/// field (the target has no usable memset/memcpy builtins: whole-struct zeroing and 6-byte MAC
/// copies would become byte-loop subprogram calls).
#[repr(C)]
pub struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    /// In: IP total length to check the route's MTU against ([`wire_len`]). Out: that MTU
    /// when FRAG_NEEDED.
    tot_len: u16,
    ifindex: u32,
    /// tos (IPv4) / flowinfo (IPv6); out: route metric.
    flowinfo: u32,
    src: [u32; 4],
    dst: [u32; 4],
    /// h_vlan_proto + h_vlan_TCI (out) / tbid (in, with BPF_FIB_LOOKUP_TBID).
    vlan: u32,
    /// Out: smac (words 0..3) and dmac (words 3..6).
    macs: [u16; 6],
    /// Keeps `macs` 4-byte aligned for the zeroing writes (the struct is 64 bytes either way).
    _align: [u32; 0],
}

const _: () = assert!(core::mem::size_of::<FibParams>() == core::mem::size_of::<bpf_fib_lookup>());

/// Sends the packet toward `dst` as if forwarding it from the ingress interface: rewrites the
/// Ethernet addresses and returns `XDP_TX` (egress = ingress) or the redirect verdict.
///
/// The next hop comes from `nh`'s cache (a connection-tracking entry of this flow direction)
/// when it holds one checked for a packet at least this long and `fresh` is false; otherwise
/// from `bpf_fib_lookup` (route, neighbour, MTU), whose result is cached in `nh`. Callers pass
/// `fresh` once a second per flow (with the idle-time refresh), so a changed route or
/// neighbour is picked up within a second; a failed lookup empties the cache.
///
/// Two CPUs may write the same entry's cache at once (both directions of a NAT flow use
/// different entries; one direction on two receive queues does not normally happen); the
/// length is cleared first and written last, so a reader that sees a length sees the fields
/// of a completed write on x86's store order, and at worst one frame takes a stale next hop.
#[inline(always)]
pub fn send(
    ctx: &impl Frame,
    pkt: &Pkt,
    addrs: (&[u32; 4], &[u32; 4]),
    ports: (u16, u16),
    nh: *mut LbFlow,
    fresh: bool,
) -> Fib {
    let route = Route { family: pkt.family, proto: pkt.proto, addrs, ports, len: pkt.ip_len };
    match next_hop(ctx, &route, nh, fresh) {
        Ok((macs, out_if)) => out(ctx, &macs, out_if),
        Err(f) => f,
    }
}

/// NAT: the next hop for the translated packet (`route`) is looked up first, so that a packet
/// too long for the path (IPv4: with DF set) is answered with ICMP "fragmentation needed" /
/// ICMPv6 "packet too big" quoting it as its sender sent it (as IPVS does: the kernel's own
/// error would quote the translated packet, which the sender cannot match); otherwise the
/// packet is translated (`rewrite` with `dst`, `addr`, `port`) and sent, or passed on
/// translated when the lookup fails (the kernel resolves the neighbour, fragments, or
/// answers).
#[inline(always)]
pub fn nat(
    ctx: &impl Frame,
    pkt: &Pkt,
    (dst, addr, port): (bool, &[u32; 4], u16),
    route: &Route,
    nh: *mut LbFlow,
    fresh: bool,
) -> Fib {
    match next_hop(ctx, route, nh, fresh) {
        Ok((macs, out_if)) => {
            rewrite(ctx, pkt, dst, addr, port);
            out(ctx, &macs, out_if)
        }
        Err(Fib::FragNeeded) => {
            let answer =
                if pkt.family == FAMILY_V4 { frag_needed(ctx, 0) } else { packet_too_big(ctx, 0) };
            match answer {
                Fib::FragNeeded => {
                    // Untouched (no DF): the kernel fragments it.
                    rewrite(ctx, pkt, dst, addr, port);
                    Fib::FragNeeded
                }
                a => a,
            }
        }
        Err(f) => {
            rewrite(ctx, pkt, dst, addr, port);
            f
        }
    }
}

/// [`send`], answering a packet too long for the path (IPv4 with DF: ICMP "fragmentation
/// needed"; IPv6: "packet too big") instead of reporting `FragNeeded` — for DR, whose packets
/// cannot be passed to the kernel (it would deliver them to the local VIP).
#[inline(always)]
pub fn send_answering(
    ctx: &impl Frame,
    pkt: &Pkt,
    addrs: (&[u32; 4], &[u32; 4]),
    ports: (u16, u16),
    nh: *mut LbFlow,
    fresh: bool,
) -> Fib {
    let route = Route { family: pkt.family, proto: pkt.proto, addrs, ports, len: pkt.ip_len };
    match next_hop(ctx, &route, nh, fresh) {
        Ok((macs, out_if)) => out(ctx, &macs, out_if),
        Err(Fib::FragNeeded) if pkt.family == FAMILY_V4 => frag_needed(ctx, 0),
        Err(Fib::FragNeeded) => packet_too_big(ctx, 0),
        Err(f) => f,
    }
}

/// What a next-hop lookup is for: the packet as it will leave (family, L4 protocol, addresses,
/// ports, IP length for the MTU check).
pub struct Route<'a> {
    pub family: u8,
    pub proto: u8,
    pub addrs: (&'a [u32; 4], &'a [u32; 4]),
    pub ports: (u16, u16),
    pub len: u16,
}

/// The IP length of the longest packet on the wire for a packet of `family` that leaves `len`
/// bytes long (which includes what the path adds, as TUN's outer header): `len`, or for a GSO
/// packet (TC) one segment's — the packet's headers, `gso_size` bytes of payload and what the
/// path adds — since the kernel cuts it into those on the way out. The route's MTU is checked
/// against this length, and the next hop cached per flow serves packets up to it.
#[inline(always)]
pub fn wire_len(ctx: &impl Frame, family: u8, len: u16) -> u16 {
    let gso = ctx.gso_size();
    if gso == 0 {
        return len;
    }
    // Plain IPv4/IPv6 headers (the parser passes nothing else), then TCP's data offset or
    // UDP's 8 bytes; the packet's own family and protocol (TUN's route is IPIP).
    let (iph, proto) = if family == FAMILY_V4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return len };
        // SAFETY: bounds-checked by ptr_at.
        (IPV4_HLEN, unsafe { (*ip).proto })
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else { return len };
        // SAFETY: as above.
        (IPV6_HLEN, unsafe { (*ip).nexthdr })
    };
    let l4 = if proto == IPPROTO_TCP {
        let Some(t) = ptr_at::<TcpHdr>(ctx, ETH_HLEN + iph) else { return len };
        // SAFETY: as above.
        ((unsafe { (*t).doff_res } >> 4) as u32) * 4
    } else {
        8
    };
    let whole = ctx.len().saturating_sub(ETH_HLEN as u32);
    let added = (len as u32).saturating_sub(whole);
    let seg = iph as u32 + l4 + gso + added;
    if seg > 0xffff {
        0xffff
    } else {
        seg as u16
    }
}

/// The next hop (Ethernet addresses as on the wire, egress ifindex) for `r`: from `nh`'s cache
/// or `bpf_fib_lookup` (see [`send`]).
#[inline(always)]
pub fn next_hop(
    ctx: &impl Frame,
    r: &Route,
    nh: *mut LbFlow,
    fresh: bool,
) -> Result<([u16; 6], u32), Fib> {
    let wire = wire_len(ctx, r.family, r.len);
    if !fresh {
        // SAFETY: `nh` points into an LRU map value or the per-CPU scratch map.
        let len = unsafe { (*nh).nh_len };
        if len != 0 && wire <= len {
            // SAFETY: as above.
            return Ok(unsafe { ((*nh).nh_macs, (*nh).nh_ifindex) });
        }
    }
    let (src, dst) = r.addrs;
    let (sport, dport) = r.ports;
    let v4 = r.family == FAMILY_V4;
    // The parameter block lives in the per-CPU scratch map, not on the stack.
    let Some(sc) = scratch() else { return Err(Fib::Other) };
    // SAFETY: per-CPU map value, used by this packet only.
    let pp = unsafe { &raw mut (*sc).fib };
    // SAFETY: every field is written before use. The constant-zero fields are written
    // volatile so the compiler cannot merge them into a memset call (a byte-loop subprogram
    // on this target).
    unsafe {
        (*pp).family = if v4 { AF_INET } else { AF_INET6 };
        (*pp).l4_protocol = r.proto;
        (*pp).sport = sport;
        (*pp).dport = dport;
        // The route's MTU is checked against this length (so the kernel does not check the
        // socket buffer at TC, which would pass any GSO packet whatever its segments).
        (*pp).tot_len = wire;
        (*pp).ifindex = ctx.ifindex();
        // IPv4 uses word 0 (the others are zero in our representation).
        copy_addr(&raw mut (*pp).src, src);
        copy_addr(&raw mut (*pp).dst, dst);
        core::ptr::write_volatile(&raw mut (*pp).flowinfo, 0);
        core::ptr::write_volatile(&raw mut (*pp).vlan, 0);
        let macs = (&raw mut (*pp).macs).cast::<u32>();
        core::ptr::write_volatile(macs, 0);
        core::ptr::write_volatile(macs.add(1), 0);
        core::ptr::write_volatile(macs.add(2), 0);
    }
    // SAFETY: `p` has the layout of `struct bpf_fib_lookup` and is fully initialised.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            pp.cast::<bpf_fib_lookup>(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    // SAFETY: as above (cache written length-last, see the function's documentation).
    unsafe { core::ptr::write_volatile(&raw mut (*nh).nh_len, 0) };
    if rc < 0 {
        return Err(Fib::Other);
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // SAFETY: the helper filled in `pp`; `nh` as above.
            Ok(unsafe {
                let m = (*pp).macs;
                let out_if = (*pp).ifindex;
                // Ethernet header order: destination MAC, then source MAC.
                let c = [m[3], m[4], m[5], m[0], m[1], m[2]];
                (*nh).nh_macs = c;
                (*nh).nh_ifindex = out_if;
                core::ptr::write_volatile(&raw mut (*nh).nh_len, wire);
                (c, out_if)
            })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Fib::NoNeigh),
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Err(Fib::Unreachable)
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Fib::FragNeeded),
        _ => Err(Fib::Other),
    }
}

/// LVS-TUN: encapsulates `pkt` in an outer header of its own family from `src` to `dst` and
/// sends it toward `dst`:
/// - IPv4 in IPv4 (IPIP, RFC 2003: protocol 4; TOS, TTL and DF copied from the inner header,
///   as IPVS does; the ID from a per-CPU counter, since the inner packet's ID was chosen for
///   another address pair and could repeat within a reassembly window toward the real server);
/// - IPv6 in IPv6 (RFC 2473: next header 41; traffic class, flow label and hop limit copied
///   from the inner header — IPVS copies the class and the hop limit; the flow label keeps the
///   inner flow's ECMP hash on the outer one, RFC 6438).
///
/// The route is checked for the encapsulated length: a packet that no longer fits the path is
/// answered with ICMP "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big", with
/// the path's MTU less the outer header, or `FragNeeded` (at TC a GSO packet fits: its
/// segments shrink by the outer header).
#[inline(always)]
pub fn tun(
    ctx: &impl Frame,
    pkt: &Pkt,
    (src, dst): (&[u32; 4], &[u32; 4]),
    nh: *mut LbFlow,
    fresh: bool,
) -> Fib {
    let v4 = pkt.family == FAMILY_V4;
    let outer = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    let len = pkt.ip_len as u32 + outer as u32;
    if len > 0xffff {
        // A GSO packet of nearly 64 KiB (TC): no room for the outer header in its length.
        return Fib::FragNeeded;
    }
    // At TC a TCP GSO packet's segments shrink by the outer header, so each leaves as long as
    // it came; a UDP one's keep their size (they delimit its datagrams) and grow.
    let fixed_segments = pkt.proto != IPPROTO_TCP;
    let shrinks = !fixed_segments && ctx.gso_size() != 0;
    let route = Route {
        family: pkt.family,
        proto: if v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 },
        addrs: (src, dst),
        ports: (0, 0),
        len: if shrinks { pkt.ip_len } else { len as u16 },
    };
    let (macs, out_if) = match next_hop(ctx, &route, nh, fresh) {
        Ok(h) => h,
        Err(Fib::FragNeeded) if v4 => return frag_needed(ctx, IPV4_HLEN as u16),
        Err(Fib::FragNeeded) => return packet_too_big(ctx, IPV6_HLEN as u32),
        Err(f) => return f,
    };
    let room = Room::Tunnel { outer_v6: !v4, fixed_segments };
    if v4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return Fib::Other };
        // SAFETY: bounds-checked by ptr_at.
        let inner = unsafe { *ip };
        // Room for the outer header in front of the inner one.
        if !ctx.push_head(IPV4_HLEN as u32, room) {
            return Fib::Other;
        }
        // Every packet pointer is invalid now: derive them again.
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return Fib::Other };
        let Some(outer) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return Fib::Other };
        let mut h = Ipv4Hdr {
            vihl: 0x45,
            tos: inner.tos,
            tot_len: (len as u16).to_be(),
            id: tun_id(),
            frag_off: inner.frag_off & IP_DF.to_be(),
            ttl: inner.ttl,
            proto: IPPROTO_IPIP,
            check: 0,
            saddr: src[0],
            daddr: dst[0],
        };
        h.check = csum::ipv4_header(&h);
        // SAFETY: bounds-checked by ptr_at.
        unsafe {
            (*eth).proto = ETH_P_IP.to_be();
            *outer = h;
        }
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else { return Fib::Other };
        // SAFETY: bounds-checked by ptr_at.
        let (vtc_flow, hop_limit) = unsafe { ((*ip).vtc_flow, (*ip).hop_limit) };
        if !ctx.push_head(IPV6_HLEN as u32, room) {
            return Fib::Other;
        }
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return Fib::Other };
        let Some(outer) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else { return Fib::Other };
        // SAFETY: bounds-checked by ptr_at; field by field, the addresses from the map value
        // (no 40-byte header on the stack).
        unsafe {
            (*eth).proto = ETH_P_IPV6.to_be();
            (*outer).vtc_flow = vtc_flow;
            // The payload is the whole inner packet.
            (*outer).payload_len = pkt.ip_len.to_be();
            (*outer).nexthdr = IPPROTO_IPV6;
            (*outer).hop_limit = hop_limit;
            copy_addr(&raw mut (*outer).saddr, src);
            copy_addr(&raw mut (*outer).daddr, dst);
        }
    }
    out(ctx, &macs, out_if)
}

/// Sends the frame out of `out_if` and writes the Ethernet addresses (`macs`: destination then
/// source, as on the wire) — unless the program cannot redirect there (XDP: an interface it
/// is not attached to), which leaves the frame's Ethernet header as it was (`NoXdp`).
#[inline(always)]
pub fn out(ctx: &impl Frame, macs: &[u16; 6], out_if: u32) -> Fib {
    ctx.untag();
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else { return Fib::Other };
    let a = ctx.redirect(out_if);
    if a == aya_ebpf::bindings::xdp_action::XDP_PASS {
        return Fib::NoXdp;
    }
    // SAFETY: bounds-checked by ptr_at (a redirect changes no packet data).
    unsafe { *eth = *macs };
    Fib::Sent(a)
}

/// An IPv4 packet too long for the path (once encapsulated: `overhead`): as IPVS does, answer
/// its sender with ICMP "fragmentation needed" (type 3 code 4) carrying the path MTU less the
/// overhead, so its TCP lowers the segment size (RFC 1191), when the packet has DF set; the
/// frame is rewritten in place into that error (quoting the IP header and [`QUOTE_L4`] bytes)
/// and sent back out of the interface it came in on. Without DF (or if the rewrite fails) it
/// is dropped: `Answered(XDP_TX)` when the error goes out, else `FragNeeded` (`Unanswered` if
/// the frame is no longer the packet).
#[inline(always)]
fn frag_needed(ctx: &impl Frame, overhead: u16) -> Fib {
    let Some(sc) = scratch() else { return Fib::FragNeeded };
    // SAFETY: per-CPU scratch map; after FRAG_NEEDED the helper left the MTU in `tot_len`.
    let mtu = unsafe { (*sc).fib.tot_len };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return Fib::FragNeeded };
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return Fib::FragNeeded };
    // SAFETY: bounds-checked by ptr_at.
    let (e, i) = unsafe { (*eth, *ip) };
    // No error about an ICMP error (RFC 1122 3.2.2: here one about a TUN flow, too long once
    // encapsulated); a token of the answer budget only for an answer that goes out.
    if u16::from_be(i.frag_off) & IP_DF == 0
        || (mtu as usize) < overhead as usize + 68
        || i.proto == IPPROTO_ICMP
        || !icmp_allowed()
    {
        return Fib::FragNeeded;
    }
    // New frame: Ethernet, IPv4, ICMP, then the quoted IPv4 header and L4 bytes, which is
    // where the old IPv4 header lands once HEAD bytes of room are made in front of it.
    const QUOTE: usize = IPV4_HLEN + QUOTE_L4;
    const HEAD: usize = IPV4_HLEN + ICMP_HLEN;
    if let Err(f) = reframe(ctx, QUOTE, HEAD) {
        return f;
    }
    let Some(neth) = ptr_at::<EthHdr>(ctx, 0) else { return Fib::Unanswered };
    let Some(nip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return Fib::Unanswered };
    let Some(icmp) = ptr_at::<[u16; (ICMP_HLEN + QUOTE) / 2]>(ctx, ETH_HLEN + IPV4_HLEN) else {
        return Fib::Unanswered;
    };
    let mut h = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len: ((HEAD + QUOTE) as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: 64,
        proto: 1,
        check: 0,
        // From the VIP the client sent to (any source will do for RFC 1191).
        saddr: i.daddr,
        daddr: i.saddr,
    };
    h.check = csum::ipv4_header(&h);
    // SAFETY: bounds-checked by ptr_at; the quoted bytes are already in place (from word 4 of
    // `icmp` on).
    unsafe {
        *neth = EthHdr { dst: e.src, src: e.dst, proto: ETH_P_IP.to_be() };
        *nip = h;
        let m = &mut *icmp;
        m[0] = u16::from_be_bytes([3, 4]).to_be();
        m[1] = 0;
        m[2] = 0;
        m[3] = (mtu - overhead).to_be();
        neutral_quote(m, (ICMP_HLEN + IPV4_HLEN) / 2, i.proto);
        m[1] = csum::finish(sum_words(m));
    }
    ctx.untag();
    Fib::Answered(ctx.redirect(ctx.ifindex()))
}

/// How much of a too-long packet an ICMP answer quotes after its IP header: 20 bytes, the
/// fixed TCP header (a UDP header and 12 payload bytes). RFC 792 asks for at least 8 and
/// RFC 1812 §4.3.2.3 for as much as fits; 20 keeps the L4 checksum field of either protocol
/// inside the answer, which the TC hook needs: the kernel will not cut a CHECKSUM_PARTIAL
/// socket buffer (a local socket's packet) short of the end of that field.
const QUOTE_L4: usize = 20;

/// Gives the TCP/UDP checksum field of the L4 header quoted from word `at` of `m`
/// ([`QUOTE_L4`] bytes) the value that finishing a checksum over the quote leaves as it is
/// ([`csum::self_completing`]). A CHECKSUM_PARTIAL socket buffer (TC) keeps its state through
/// the rewrite into an answer — no helper can clear it — and its offsets point at that
/// field: a device that finishes it must not break the answer's own checksum. Receivers
/// match an error by its addresses and ports, never by this field.
#[inline(always)]
fn neutral_quote<const N: usize>(m: &mut [u16; N], at: usize, proto: u8) {
    let field = at + l4_check_offset(proto) / 2;
    m[field] = 0;
    let mut sum = 0u32;
    let mut k = 0;
    while k < QUOTE_L4 / 2 {
        sum += m[at + k] as u32;
        k += 1;
    }
    m[field] = csum::self_completing(sum);
}

/// The ones' complement sum (unfolded) of `m`'s 16-bit words.
#[inline(always)]
fn sum_words<const N: usize>(m: &[u16; N]) -> u32 {
    let mut sum = 0u32;
    let mut k = 0;
    while k < N {
        sum += m[k] as u32;
        k += 1;
    }
    sum
}

/// An IPv6 packet too long for the path (once encapsulated: `overhead`): answer its sender
/// with ICMPv6 "packet too big" (RFC 4443 §3.2: type 2, the path's MTU less the overhead),
/// quoting its IPv6 header and [`QUOTE_L4`] bytes,
/// back out of the interface it came in on (IPv6 routers never fragment, so without this
/// answer path-MTU discovery through the director fails). `Answered(XDP_TX)`, or
/// `FragNeeded` with the frame untouched (`Unanswered` if no longer) when it cannot be done.
#[inline(always)]
fn packet_too_big(ctx: &impl Frame, overhead: u32) -> Fib {
    let Some(sc) = scratch() else { return Fib::FragNeeded };
    // SAFETY: per-CPU scratch map; after FRAG_NEEDED the helper left the MTU in `tot_len`.
    let mtu = unsafe { (*sc).fib.tot_len };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return Fib::FragNeeded };
    // SAFETY: bounds-checked by ptr_at.
    let e = unsafe { *eth };
    // An MTU below IPv6's minimum once encapsulated cannot be told (IPVS drops these too).
    // Nor an answer to an ICMPv6 error (RFC 4443 2.4 (e)); a token only for an answer sent.
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else { return Fib::FragNeeded };
    // SAFETY: bounds-checked by ptr_at.
    let nexthdr = unsafe { (*ip).nexthdr };
    if (mtu as u32) < 1280 + overhead || nexthdr == IPPROTO_ICMPV6 || !icmp_allowed() {
        return Fib::FragNeeded;
    }
    const QUOTE: usize = IPV6_HLEN + QUOTE_L4;
    const HEAD: usize = IPV6_HLEN + ICMP_HLEN;
    if let Err(f) = reframe(ctx, QUOTE, HEAD) {
        return f;
    }
    let Some(neth) = ptr_at::<EthHdr>(ctx, 0) else { return Fib::Unanswered };
    let Some(nip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else { return Fib::Unanswered };
    let Some(icmp) = ptr_at::<[u16; (ICMP_HLEN + QUOTE) / 2]>(ctx, ETH_HLEN + IPV6_HLEN) else {
        return Fib::Unanswered;
    };
    let body = (ICMP_HLEN + QUOTE) as u16;
    // SAFETY: bounds-checked by ptr_at; the quoted bytes are already in place (from word 4 of
    // `icmp` on: the packet's own IPv6 header, `q`, then its L4 bytes). The new header's
    // addresses are copied from the quote word by word, and summed from where they were
    // written, rather than kept in registers across the reframe (each one held is a stack
    // slot on the longest call chain: see `lb`'s module docs).
    unsafe {
        *neth = EthHdr { dst: e.src, src: e.dst, proto: ETH_P_IPV6.to_be() };
        let q = icmp.cast::<u8>().add(ICMP_HLEN).cast::<Ipv6Hdr>();
        (*nip).vtc_flow = (6u32 << 28).to_be();
        (*nip).payload_len = body.to_be();
        (*nip).nexthdr = 58;
        (*nip).hop_limit = 64;
        // From the address the sender sent to (any source will do for RFC 8201).
        copy_addr(&raw mut (*nip).saddr, &raw const (*q).daddr);
        copy_addr(&raw mut (*nip).daddr, &raw const (*q).saddr);
        let nexthdr = (*q).nexthdr;
        let m = &mut *icmp;
        m[0] = u16::from_be_bytes([2, 0]).to_be();
        m[1] = 0;
        let mtu_be = (mtu as u32 - overhead).to_be();
        m[2] = mtu_be as u16;
        m[3] = (mtu_be >> 16) as u16;
        // The pseudo-header: addresses, upper-layer length, next header (RFC 8200 §8.1).
        let a = (&raw const (*nip).saddr).cast::<u32>();
        let mut sum = 0u32;
        let mut k = 0;
        while k < 8 {
            let w = core::ptr::read_volatile(a.add(k));
            sum += (w & 0xffff) + (w >> 16);
            k += 1;
        }
        sum += body.to_be() as u32 + 58u16.to_be() as u32;
        neutral_quote(m, (ICMP_HLEN + IPV6_HLEN) / 2, nexthdr);
        m[1] = csum::finish(sum + sum_words(m));
    }
    ctx.untag();
    Fib::Answered(ctx.redirect(ctx.ifindex()))
}

/// ICMP errors the program sends itself, per CPU: bursts of up to this many, refilled at
/// [`ICMP_PER_SEC`] (the kernel rate-limits its own errors too, `icmp_ratelimit`): a flood of
/// too-long packets with forged sources does not become a flood of errors.
const ICMP_BURST: u64 = 100;
const ICMP_PER_SEC: u64 = 1000;

#[inline(always)]
fn icmp_allowed() -> bool {
    let Some(b) = LB_ICMP_TOKENS.get_ptr_mut(0) else { return false };
    // SAFETY: plain helper call; per-CPU map value, this CPU only.
    unsafe {
        let now = bpf_ktime_get_coarse_ns();
        let [tokens, last] = *b;
        let refill = now.wrapping_sub(last) / (1_000_000_000 / ICMP_PER_SEC);
        let mut t = tokens + refill;
        if t > ICMP_BURST {
            t = ICMP_BURST;
        }
        let last = if refill > 0 { now } else { last };
        if t == 0 {
            *b = [0, last];
            return false;
        }
        *b = [t - 1, last];
        true
    }
}

/// The next outer IPv4 ID for TUN on this CPU (CPUs start their sequences far apart).
#[inline(always)]
fn tun_id() -> u16 {
    let Some(c) = LB_TUN_ID.get_ptr_mut(0) else { return 0 };
    // SAFETY: per-CPU map value, this CPU only; plain helper call.
    unsafe {
        let n = *c;
        *c = n.wrapping_add(1);
        let cpu = bpf_get_smp_processor_id();
        (n as u16).wrapping_add((cpu as u16).wrapping_mul(0x9e37)).to_be()
    }
}

/// Turns the frame into an ICMP error's shape in place: cut to the Ethernet header and the
/// `quote`, then `head` bytes of room in front of the IP header (for the new IP and ICMP
/// headers, so the old IP header lands where the quote starts; the Ethernet header is
/// written again). Cutting first means a failure to cut (at TC the kernel first makes the
/// whole buffer writable, a GSO one too) leaves the packet as it was (`FragNeeded`), as does
/// a frame whose first Ethernet + `quote` bytes are not in reach; a failed push leaves it
/// cut (`Unanswered`: drop). At TC the cut also ends any GSO.
#[inline(always)]
fn reframe(ctx: &impl Frame, quote: usize, head: usize) -> Result<(), Fib> {
    if ctx.data_end() - ctx.data() < ETH_HLEN + quote {
        return Err(Fib::FragNeeded);
    }
    if !ctx.truncate((ETH_HLEN + quote) as u32) {
        return Err(Fib::FragNeeded);
    }
    if !ctx.push_head(head as u32, Room::Answer) {
        return Err(Fib::Unanswered);
    }
    Ok(())
}
