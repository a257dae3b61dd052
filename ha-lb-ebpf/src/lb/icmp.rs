//! ICMP errors about load-balanced flows, translated as IPVS translates them (`ip_vs_in_icmp`,
//! `ip_vs_out_icmp`), so path-MTU discovery, "port unreachable" and friends reach the host
//! whose socket the error is about:
//! - about a packet sent to a client (inner packet VIP -> client; the error is addressed to the
//!   VIP, which this director holds): forwarded to the flow's real server. NAT: the inner
//!   source and the outer destination become the real server's address (and the inner source
//!   port its port), so its stack matches the error to its socket. DR: unchanged (the real
//!   server holds the VIP too), only the MACs change.
//! - about a NAT packet sent to a real server (inner packet client -> real server; the error
//!   is addressed to the client): the inner destination and the outer source become the VIP
//!   (whoever sent it, as IPVS: internal addresses would leak or be filtered on the way);
//!   forwarded to the client.
//! - TUN: an error about a packet to the client is encapsulated to the real server like the
//!   flow's own packets.
//!
//! Only the first 8 bytes of the inner transport header are guaranteed in an ICMP error: the
//! ports are translated, the inner TCP/UDP checksum is left as it is (as IPVS does; it cannot
//! be verified over a truncated packet and receivers do not check it). The inner IPv4 header
//! checksum and the ICMP checksum (for ICMPv6 including its pseudo-header) are updated.
//! Errors that match no flow, and anything unusual (IPv4 options, fragments, extension
//! headers), pass to the kernel.

use ha_lb_common::lb::{
    LbReason, FAMILY_V4, FAMILY_V6, LB_FLOW_F_DR, LB_FLOW_F_REPLY, LB_FLOW_F_TUN,
};

use super::{
    csum, drop,
    fwd::{self, Fib},
    maps::{scratch, LB_CONNS, LB_REALS},
    pass, tun_src_known, Outcome, Pkt,
};
use crate::parse::{
    ether_type, ptr_at, Frame, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP,
    IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, IP_MF_OFFSET,
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMP_HLEN: usize = 8;

#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    check: u16,
    rest: u32,
}

const V4_ICMP: usize = ETH_HLEN + IPV4_HLEN;
const V4_INNER: usize = V4_ICMP + ICMP_HLEN;
const V4_PORTS: usize = V4_INNER + IPV4_HLEN;
const V6_ICMP: usize = ETH_HLEN + IPV6_HLEN;
const V6_INNER: usize = V6_ICMP + ICMP_HLEN;
const V6_PORTS: usize = V6_INNER + IPV6_HLEN;

/// An ICMP error about a known flow, translated and sent on; `None`: not one (the caller
/// passes the frame on).
#[inline(always)]
pub fn error(ctx: &impl Frame) -> Option<Outcome> {
    match ether_type(ctx)? {
        ETH_P_IP => v4(ctx),
        ETH_P_IPV6 => v6(ctx),
        _ => None,
    }
}

/// The connection-tracking entry of the flow direction opposite to an inner packet
/// `src:sport -> dst:dport` (the error is about a packet this director sent, so the entry that
/// matched the packet it was made from is keyed the other way round).
#[inline(always)]
fn flow_of(
    family: u8,
    proto: u8,
    (src, sport): ([u32; 4], u16),
    (dst, dport): ([u32; 4], u16),
) -> Option<*mut ha_lb_common::lb::LbFlow> {
    let sc = scratch()?;
    // SAFETY: per-CPU scratch map.
    let k = unsafe { &raw mut (*sc).fkey };
    // SAFETY: as above.
    unsafe {
        (*k).src = dst;
        (*k).dst = src;
        (*k).sport = dport;
        (*k).dport = sport;
        (*k).proto = proto;
        (*k).family = family;
        (*k)._pad = 0;
    }
    // SAFETY: initialised above.
    LB_CONNS.get_ptr_mut(unsafe { &*k })
}

/// Sends the (translated) error toward `to`; lookup failures pass it to the kernel, which
/// handles it as it would have without us.
#[inline(always)]
fn send(ctx: &impl Frame, pkt: &Pkt, to: &[u32; 4], reason: LbReason) -> Outcome {
    let Some(sc) = scratch() else { return pass(LbReason::FibOther) };
    // No next-hop cache for errors: the scratch flow value takes the lookup's result.
    // SAFETY: per-CPU scratch map.
    let nh = unsafe { &raw mut (*sc).flow };
    match fwd::send(ctx, pkt, (&pkt.src, to), (0, 0), nh, true) {
        Fib::Sent(a) => (a, reason),
        Fib::Answered(a) => (a, LbReason::TooBigAnswered),
        Fib::Unanswered => drop(LbReason::FragNeeded),
        Fib::NoNeigh => pass(LbReason::NoNeigh),
        Fib::FragNeeded => pass(LbReason::FragNeeded),
        Fib::Unreachable => pass(LbReason::FibUnreachable),
        Fib::Other => pass(LbReason::FibOther),
        Fib::NoXdp => pass(LbReason::EgressNoXdp),
    }
}

#[inline(always)]
fn v4(ctx: &impl Frame) -> Option<Outcome> {
    let op = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds-checked by ptr_at (every pointer below likewise).
    let o = unsafe { *op };
    if o.vihl != 0x45 || o.proto != IPPROTO_ICMP || u16::from_be(o.frag_off) & IP_MF_OFFSET != 0 {
        return None;
    }
    let hp = ptr_at::<IcmpHdr>(ctx, V4_ICMP)?;
    // SAFETY: as above.
    let ty = unsafe { (*hp).ty };
    // Destination unreachable, time exceeded, parameter problem.
    if ty != 3 && ty != 11 && ty != 12 {
        return None;
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, V4_INNER)?;
    let pp = ptr_at::<[u16; 2]>(ctx, V4_PORTS)?;
    // SAFETY: as above.
    let (i, ports) = unsafe { (*ip, *pp) };
    if i.vihl != 0x45 || (i.proto != IPPROTO_TCP && i.proto != IPPROTO_UDP) {
        return None;
    }
    let f = flow_of(
        FAMILY_V4,
        i.proto,
        ([i.saddr, 0, 0, 0], ports[0]),
        ([i.daddr, 0, 0, 0], ports[1]),
    )?;
    // SAFETY: LRU value pointer from a successful lookup.
    let (flags, addr, port, real) =
        unsafe { ((*f).flags, (*f).addr[0], (*f).port, ((*f).real_id, (*f).real_gen)) };
    // SAFETY: as above.
    if !real_alive(real, unsafe { (*f).service_id }) {
        return None;
    }
    let mut pkt = Pkt {
        src: [o.saddr, 0, 0, 0],
        dst: [o.daddr, 0, 0, 0],
        sport: 0,
        dport: 0,
        ip_len: u16::from_be(o.tot_len),
        family: FAMILY_V4,
        proto: IPPROTO_ICMP,
        tcp_flags: 0,
        len: ctx.len(),
    };
    if flags & LB_FLOW_F_REPLY == 0 {
        // About a packet to the client; `f` is the flow's forward entry: the real server.
        if o.daddr != i.saddr {
            return None;
        }
        let real_addr = [addr, 0, 0, 0];
        if flags & LB_FLOW_F_TUN != 0 {
            return tun(ctx, &pkt, real, &real_addr);
        }
        if flags & LB_FLOW_F_DR == 0 {
            // SAFETY: bounds-checked pointers into the frame.
            unsafe {
                let nic = csum::replace4(i.check, i.saddr, addr);
                (*ip).saddr = addr;
                (*ip).check = nic;
                (*pp)[0] = port;
                let mut c = (*hp).check;
                c = csum::replace4(c, i.saddr, addr);
                c = csum::replace2(c, ports[0], port);
                c = csum::replace2(c, i.check, nic);
                (*hp).check = c;
                (*op).check = csum::replace4(o.check, o.daddr, addr);
                (*op).daddr = addr;
            }
            pkt.dst = real_addr;
        }
        Some(send(ctx, &pkt, &real_addr, LbReason::IcmpIn))
    } else {
        // About a packet to a real server; `f` is the flow's NAT reply entry: the VIP.
        let real = i.daddr;
        // SAFETY: bounds-checked pointers into the frame.
        unsafe {
            let nic = csum::replace4(i.check, real, addr);
            (*ip).daddr = addr;
            (*ip).check = nic;
            (*pp)[1] = port;
            let mut c = (*hp).check;
            c = csum::replace4(c, real, addr);
            c = csum::replace2(c, ports[1], port);
            c = csum::replace2(c, i.check, nic);
            (*hp).check = c;
            // From the VIP, whoever sent it (as IPVS): the client knows no other address of
            // the service, and internal addresses would leak (or be filtered on the way).
            (*op).check = csum::replace4(o.check, o.saddr, addr);
            (*op).saddr = addr;
            pkt.src = [addr, 0, 0, 0];
        }
        let to = pkt.dst;
        Some(send(ctx, &pkt, &to, LbReason::IcmpOut))
    }
}

#[inline(always)]
fn v6(ctx: &impl Frame) -> Option<Outcome> {
    let op = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds-checked by ptr_at (every pointer below likewise).
    let o = unsafe { *op };
    if o.nexthdr != IPPROTO_ICMPV6 {
        return None;
    }
    let hp = ptr_at::<IcmpHdr>(ctx, V6_ICMP)?;
    // SAFETY: as above.
    let ty = unsafe { (*hp).ty };
    // Destination unreachable, packet too big, time exceeded, parameter problem.
    if !(1..=4).contains(&ty) {
        return None;
    }
    let ip = ptr_at::<Ipv6Hdr>(ctx, V6_INNER)?;
    let pp = ptr_at::<[u16; 2]>(ctx, V6_PORTS)?;
    // SAFETY: as above.
    let (i, ports) = unsafe { (*ip, *pp) };
    if i.nexthdr != IPPROTO_TCP && i.nexthdr != IPPROTO_UDP {
        return None;
    }
    let f = flow_of(FAMILY_V6, i.nexthdr, (i.saddr, ports[0]), (i.daddr, ports[1]))?;
    // SAFETY: LRU value pointer from a successful lookup.
    let (flags, addr, port, real) =
        unsafe { ((*f).flags, (*f).addr, (*f).port, ((*f).real_id, (*f).real_gen)) };
    // SAFETY: as above.
    if !real_alive(real, unsafe { (*f).service_id }) {
        return None;
    }
    let mut pkt = Pkt {
        src: o.saddr,
        dst: o.daddr,
        sport: 0,
        dport: 0,
        ip_len: u16::from_be(o.payload_len).wrapping_add(IPV6_HLEN as u16),
        family: FAMILY_V6,
        proto: IPPROTO_ICMPV6,
        tcp_flags: 0,
        len: ctx.len(),
    };
    if flags & LB_FLOW_F_REPLY == 0 {
        if o.daddr != i.saddr {
            return None;
        }
        if flags & LB_FLOW_F_TUN != 0 {
            return tun(ctx, &pkt, real, &addr);
        }
        if flags & LB_FLOW_F_DR == 0 {
            // SAFETY: bounds-checked pointers into the frame.
            unsafe {
                (*ip).saddr = addr;
                (*pp)[0] = port;
                let mut c = (*hp).check;
                c = csum::replace16(c, &i.saddr, &addr);
                c = csum::replace2(c, ports[0], port);
                // The outer destination is in ICMPv6's pseudo-header.
                c = csum::replace16(c, &o.daddr, &addr);
                (*hp).check = c;
                (*op).daddr = addr;
            }
            pkt.dst = addr;
        }
        Some(send(ctx, &pkt, &addr, LbReason::IcmpIn))
    } else {
        let real = i.daddr;
        // SAFETY: bounds-checked pointers into the frame.
        unsafe {
            (*ip).daddr = addr;
            (*pp)[1] = port;
            let mut c = (*hp).check;
            c = csum::replace16(c, &real, &addr);
            c = csum::replace2(c, ports[1], port);
            // From the VIP, whoever sent it (as IPVS; see the IPv4 case).
            c = csum::replace16(c, &o.saddr, &addr);
            (*op).saddr = addr;
            pkt.src = addr;
            (*hp).check = c;
        }
        let to = pkt.dst;
        Some(send(ctx, &pkt, &to, LbReason::IcmpOut))
    }
}

/// Whether the flow's real server `(id, generation)` is still in its service `svc`: errors
/// about flows of one that left (or whose service was deleted) are not translated, as their
/// packets are not (`reply`, `established`).
#[inline(always)]
fn real_alive((id, gen): (u32, u32), svc: u32) -> bool {
    match LB_REALS.get(id) {
        Some(r) => super::conntrack::real_alive(r, gen, svc),
        None => false,
    }
}

/// TUN: an error about a packet to the client goes to the flow's real server at `real`
/// (`(id, generation)`) encapsulated, like the flow's packets (`pkt`: the error as it is) —
/// while the id still names that server (ids are reused: another's outer source would be
/// wrong).
#[inline(always)]
fn tun(ctx: &impl Frame, pkt: &Pkt, (id, gen): (u32, u32), real: &[u32; 4]) -> Option<Outcome> {
    let r = LB_REALS.get(id)?;
    if r.gen != gen || !tun_src_known(r.tun_src()) {
        return None;
    }
    let src = r.tun_src();
    let sc = scratch()?;
    // SAFETY: per-CPU scratch map (no next-hop cache for errors).
    let nh = unsafe { &raw mut (*sc).flow };
    Some(match fwd::tun(ctx, pkt, (src, real), nh, true) {
        Fib::Sent(a) => (a, LbReason::IcmpIn),
        Fib::NoXdp => pass(LbReason::EgressNoXdp),
        // An error is never answered with one (`fwd::frag_needed`): too long once
        // encapsulated, it goes no further (the kernel could only deliver it to the VIP).
        Fib::FragNeeded => drop(LbReason::FragNeeded),
        // Cannot happen (see above); the frame may no longer be the error.
        Fib::Answered(_) | Fib::Unanswered => drop(LbReason::FragNeeded),
        _ => pass(LbReason::FibOther),
    })
}
