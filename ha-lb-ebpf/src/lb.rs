//! L4 forwarding: service lookup, schedulers, conntrack, NAT and DR (program `ha_lb_xdp`).
//!
//! Per frame: parse Ethernet + IPv4/IPv6 + TCP/UDP (one bounds check per header); look the
//! destination up in `LB_SERVICES`; if it is a service, find or create the flow's
//! connection-tracking entry (scheduling new flows), then
//! - NAT: rewrite destination address/port to the real server's (checksums updated
//!   incrementally), FIB lookup toward it, MACs from the result, TX or redirect;
//! - DR: FIB lookup toward the real server, MACs from the result (the IP packet is untouched).
//!
//! Otherwise, if it matches a NAT reply entry (real server -> client), rewrite the source back
//! to the VIP and send it toward the client the same way. Everything else passes untouched
//! (after a tail call into `LB_CHAIN[0]` when one is installed, e.g. the VRRP filter).
//! Unusual frames (VLAN, IPv4 options, fragments, IPv6 extension headers, truncated) pass and
//! are counted per reason in `LB_REASONS`.
//!
//! TTL/hop limit is not decremented (as IPVS, which forwards from LOCAL_IN).
//!
//! Verifier shape (must load on Debian 12's 6.1 too): everything is inlined except
//! - `new_flow`, `forward`, `reply`, `conntrack::put_reply`: static subprograms, siblings under
//!   the main program, so their helper-call spills do not add up in one frame;
//! - `sched::ha_lb_sched_least`: a global function, verified once with its bounded 256-step
//!   loop instead of once per caller state.
//! Large temporaries live in the per-CPU `LB_SCRATCH` map. Budget: the verifier sums frames
//! along each call chain, each rounded up to 32 bytes before Linux 6.8, against 512 bytes;
//! the worst chain (main 192 + `reply` 136) is 352. Check after changes with
//! `llvm-objdump -d` (deepest `r10 - N` per function).

mod conntrack;
mod csum;
mod fwd;
mod maps;
mod sched;
mod stats;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use ha_lb_common::lb::{
    LbReal, LbReason, LbService, FAMILY_V4, FAMILY_V6, LB_FLOW_F_CLOSED, LB_FLOW_F_PERSIST,
    LB_FLOW_F_REPLY, LB_KIND_DR, LB_KIND_NAT,
};

use self::{
    fwd::Fib,
    maps::{scratch, LB_CHAIN, LB_CONNS, LB_REALS, LB_SERVICES},
    stats::count,
};
use crate::parse::{
    ipv6_is_ext, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, ETH_HLEN, ETH_P_8021AD,
    ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN,
    IP_MF_OFFSET, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// A parsed TCP/UDP packet. Addresses and ports as on the wire.
#[derive(Clone, Copy)]
pub struct Pkt {
    /// Address of the IP header (bounds-checked).
    pub l3: usize,
    /// Address of the TCP/UDP header (bounds-checked for the fixed header).
    pub l4: usize,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// IP total length, host order (FIB MTU check).
    pub ip_len: u16,
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    /// Frame length in bytes.
    pub len: u32,
}

/// An XDP action and why. The reason is counted once, in `ha_lb_xdp`: every inlined counter
/// update would otherwise take its own stack slot for the map key.
type Outcome = (u32, LbReason);

enum Verdict {
    /// Not ours: pass, through `LB_CHAIN[0]` if installed.
    Chain(LbReason),
    Act(Outcome),
}

#[xdp]
pub fn ha_lb_xdp(ctx: XdpContext) -> u32 {
    match process(&ctx) {
        Verdict::Act((a, r)) => {
            count(r);
            a
        }
        Verdict::Chain(r) => {
            count(r);
            // SAFETY: tail call with our own context; returns only when the slot is empty.
            unsafe { LB_CHAIN.tail_call(&ctx, 0) };
            xdp_action::XDP_PASS
        }
    }
}

/// Passes every frame. For the far end of a veth that `ha_lb_xdp` sends into with XDP_TX
/// (namespace labs): the kernel wakes a veth peer for XDP_TX frames only when that peer runs
/// an XDP program itself (GRO/NAPI alone suffices for XDP_REDIRECT, not for XDP_TX).
#[xdp]
pub fn ha_lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// False for a frame unicast to another host's MAC (a switch flooding an unknown
/// destination): the kernel would drop it as PACKET_OTHERHOST, and forwarding it would make
/// every director on the segment forward the same frame. Interfaces with no entry (not
/// attached by the daemon, e.g. in test runs) accept everything.
#[inline(always)]
fn for_us(ctx: &XdpContext) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return true };
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: read-only lookup of plain data; eth is bounds-checked by ptr_at.
    match unsafe { maps::LB_IF_MAC.get(&ifindex) } {
        None => true,
        Some(m) => (unsafe { (*eth).dst }) == m.mac,
    }
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Verdict {
    if !for_us(ctx) {
        return Verdict::Chain(LbReason::OtherHost);
    }
    let pkt = match parse(ctx) {
        Ok(p) => p,
        Err(r) => return Verdict::Chain(r),
    };
    let Some(sc) = scratch() else { return Verdict::Chain(LbReason::NotService) };
    // SAFETY: per-CPU scratch map; the service value is plain data, copied out at once.
    let found = unsafe {
        let k = &raw mut (*sc).skey;
        (*k).addr = pkt.dst;
        (*k).port = pkt.dport;
        (*k).proto = pkt.proto;
        (*k).family = pkt.family;
        LB_SERVICES.get(&*k)
    };
    if let Some(svc) = found {
        let svc = *svc;
        return Verdict::Act(inbound(ctx, &pkt, &svc));
    }
    match reply(ctx, &pkt) {
        0 => {}
        v => return Verdict::Act(unpack(v)),
    }
    Verdict::Chain(LbReason::NotService)
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Pkt, LbReason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(LbReason::Truncated)?;
    let len = (ctx.data_end() - ctx.data()) as u32;
    // SAFETY: bounds-checked by ptr_at.
    match u16::from_be(unsafe { (*eth).proto }) {
        ETH_P_IP => parse_v4(ctx, len),
        ETH_P_IPV6 => parse_v6(ctx, len),
        ETH_P_8021Q | ETH_P_8021AD => Err(LbReason::Vlan),
        _ => Err(LbReason::NotIp),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, len: u32) -> Result<Pkt, LbReason> {
    let ipp = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(LbReason::Truncated)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { *ipp };
    let ihl = ip.vihl & 0x0f;
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return Err(LbReason::BadIpHeader);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(LbReason::NotTcpUdp);
    }
    if ihl != 5 {
        return Err(LbReason::IpOptions);
    }
    if u16::from_be(ip.frag_off) & IP_MF_OFFSET != 0 {
        return Err(LbReason::Fragment);
    }
    let ip_len = u16::from_be(ip.tot_len);
    if (ip_len as usize) < IPV4_HLEN {
        return Err(LbReason::BadIpHeader);
    }
    if ETH_HLEN as u32 + ip_len as u32 > len {
        return Err(LbReason::Truncated);
    }
    let (l4, sport, dport, tcp_flags) =
        parse_l4(ctx, ip.proto, ETH_HLEN + IPV4_HLEN, ip_len as u32 - IPV4_HLEN as u32)?;
    Ok(Pkt {
        l3: ipp as usize,
        l4,
        src: [ip.saddr, 0, 0, 0],
        dst: [ip.daddr, 0, 0, 0],
        sport,
        dport,
        ip_len,
        family: FAMILY_V4,
        proto: ip.proto,
        tcp_flags,
        len,
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, len: u32) -> Result<Pkt, LbReason> {
    let ipp = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).ok_or(LbReason::Truncated)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { *ipp };
    if u32::from_be(ip.vtc_flow) >> 28 != 6 {
        return Err(LbReason::BadIpHeader);
    }
    if ipv6_is_ext(ip.nexthdr) {
        return Err(LbReason::Ipv6Ext);
    }
    if ip.nexthdr != IPPROTO_TCP && ip.nexthdr != IPPROTO_UDP {
        return Err(LbReason::NotTcpUdp);
    }
    let payload = u16::from_be(ip.payload_len) as u32;
    if (ETH_HLEN + IPV6_HLEN) as u32 + payload > len || payload > 0xffff - IPV6_HLEN as u32 {
        return Err(LbReason::Truncated);
    }
    let (l4, sport, dport, tcp_flags) = parse_l4(ctx, ip.nexthdr, ETH_HLEN + IPV6_HLEN, payload)?;
    Ok(Pkt {
        l3: ipp as usize,
        l4,
        src: ip.saddr,
        dst: ip.daddr,
        sport,
        dport,
        ip_len: (payload + IPV6_HLEN as u32) as u16,
        family: FAMILY_V6,
        proto: ip.nexthdr,
        tcp_flags,
        len,
    })
}

/// The TCP/UDP header at `off`: (address, source port, destination port, TCP flags).
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    proto: u8,
    off: usize,
    l4_len: u32,
) -> Result<(usize, u16, u16, u8), LbReason> {
    if proto == IPPROTO_TCP {
        let th = ptr_at::<TcpHdr>(ctx, off).ok_or(LbReason::Truncated)?;
        // SAFETY: bounds-checked by ptr_at.
        let t = unsafe { *th };
        let doff = (t.doff_res >> 4) as u32;
        if doff < 5 {
            return Err(LbReason::BadL4Header);
        }
        if l4_len < doff * 4 {
            return Err(LbReason::Truncated);
        }
        Ok((th as usize, t.source, t.dest, t.flags))
    } else {
        let uh = ptr_at::<UdpHdr>(ctx, off).ok_or(LbReason::Truncated)?;
        if l4_len < core::mem::size_of::<UdpHdr>() as u32 {
            return Err(LbReason::Truncated);
        }
        // SAFETY: bounds-checked by ptr_at.
        let u = unsafe { *uh };
        Ok((uh as usize, u.source, u.dest, 0))
    }
}

/// Client -> VIP: find or schedule the flow's real server and send the packet there.
///
/// Stack is tight (512 bytes for the main program plus the deepest subprogram): map values
/// are read through their pointers rather than copied.
#[inline(always)]
fn inbound(ctx: &XdpContext, pkt: &Pkt, svc: &LbService) -> Outcome {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(sc) = scratch() else { return pass(LbReason::FibOther) };
    // SAFETY: per-CPU scratch map; `fkey` keeps this packet's key until `new_flow` used it.
    let key = unsafe { &raw mut (*sc).fkey };
    conntrack::set_key(key, pkt);
    let tcp = pkt.proto == IPPROTO_TCP;
    let closing = tcp && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let syn_only = tcp && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;

    // The real server's id and a pointer to its LB_REALS entry (address, port).
    let mut chosen: Option<(u32, *const LbReal)> = None;
    // One call site for the NAT reply entry (new flows, and refreshes): each inlined copy
    // would take its own stack slots, and the whole program has 512 bytes.
    let mut write_reply = false;
    // SAFETY: scratch map value, initialised above.
    if let Some(f) = LB_CONNS.get_ptr_mut(unsafe { &*key }) {
        // SAFETY: LRU value pointer from a successful lookup; fields read one by one.
        let (real_id, real_gen, flags, last_seen) =
            unsafe { ((*f).real_id, (*f).real_gen, (*f).flags, (*f).last_seen_ns) };
        if flags & LB_FLOW_F_REPLY == 0 {
            let real = LB_REALS.get_ptr(real_id);
            let alive = match real {
                // SAFETY: array value pointer.
                Some(r) => conntrack::real_alive(unsafe { &*r }, real_gen, svc.id),
                None => false,
            };
            let idle = now.wrapping_sub(last_seen);
            let expired = idle > conntrack::timeout_ns(tcp, flags);
            let reused = syn_only && flags & LB_FLOW_F_CLOSED != 0;
            match real {
                Some(r) if alive && !expired && !reused => {
                    if closing {
                        conntrack::close(f, svc.id, real_id, real_gen, flags);
                    }
                    if idle > conntrack::REFRESH_NS {
                        // SAFETY: as above; racing writers only store other timestamps.
                        unsafe { (*f).last_seen_ns = now };
                        if flags & LB_FLOW_F_PERSIST != 0 && svc.persistence_timeout != 0 {
                            sched::refresh_template(svc, pkt, now);
                        }
                        // Re-create the reply entry should the LRU have evicted it alone.
                        write_reply = svc.lb_kind == LB_KIND_NAT;
                    }
                    chosen = Some((real_id, r));
                }
                _ => {
                    // Its real server left the service, or the state is stale: schedule anew.
                    conntrack::close(f, svc.id, real_id, real_gen, flags);
                    count(LbReason::Rescheduled);
                }
            }
        }
    }
    let new_conn = chosen.is_none();
    let (real_id, real) = match chosen {
        Some(c) => c,
        None => {
            let id = new_flow(pkt, svc, now, closing);
            let Some(r) = LB_REALS.get_ptr(id) else {
                return drop(LbReason::NoRealServer);
            };
            write_reply = svc.lb_kind == LB_KIND_NAT;
            (id, r)
        }
    };
    if write_reply {
        conntrack::put_reply(pkt, real, real_id, svc.id, now);
    }
    stats::traffic(svc.id, Some(real_id), pkt.len as u64, false, new_conn);
    if new_conn && closing {
        stats::conn_closed(svc.id, real_id);
    }
    unpack(forward(ctx, pkt, real, svc.lb_kind))
}

/// Schedules a new flow of `svc` and writes its forward entry; returns the real server's id
/// (`u32::MAX`: none could take it).
///
/// This and [`forward`] are BPF subprograms rather than inlined: the BPF calling convention
/// spills everything live across a helper call to the stack, and inlined into one function
/// the spills of scheduling, FIB lookup and rewriting add up past the 512-byte stack. As
/// siblings, each gets its own frame.
#[inline(never)]
fn new_flow(pkt: &Pkt, svc: &LbService, now: u64, closing: bool) -> u32 {
    let Some((id, r)) = sched::pick(svc, pkt, now) else {
        return u32::MAX;
    };
    let mut flags = 0;
    if svc.persistence_timeout != 0 {
        flags |= LB_FLOW_F_PERSIST;
    }
    if closing {
        flags |= LB_FLOW_F_CLOSED;
    }
    let Some(sc) = scratch() else { return u32::MAX };
    // SAFETY: array value pointer and the per-CPU scratch map, whose `fkey` the caller set to
    // this packet's key.
    unsafe {
        let f = &raw mut (*sc).flow;
        (*f).real_id = id;
        (*f).real_gen = (*r).gen;
        (*f).service_id = svc.id;
        (*f).flags = flags;
        (*f).last_seen_ns = now;
        (*f).addr = (*r).addr;
        (*f).port = (*r).port;
        (*f)._pad16 = 0;
        (*f)._pad32 = 0;
        if LB_CONNS.insert(&(*sc).fkey, &*f, 0).is_err() {
            count(LbReason::ConntrackFull);
        }
    }
    id
}

/// An [`Outcome`] in one register (BPF subprograms return a single 64-bit value).
#[inline(always)]
fn pack(o: Outcome) -> u64 {
    o.0 as u64 | (o.1 as u64) << 32
}

#[inline(always)]
fn unpack(v: u64) -> Outcome {
    let r = (v >> 32) as u32;
    let reason = if r < LbReason::COUNT {
        // SAFETY: LbReason is repr(u32) with the discriminants 0..COUNT, and r < COUNT.
        unsafe { core::mem::transmute::<u32, LbReason>(r) }
    } else {
        LbReason::FibOther
    };
    (v as u32, reason)
}

/// Sends a client -> VIP packet to real server `real` by `lb_kind`: NAT rewrites the
/// destination; both look up the next hop and rewrite the Ethernet header.
#[inline(never)]
fn forward(ctx: &XdpContext, pkt: &Pkt, real: *const LbReal, lb_kind: u8) -> u64 {
    pack(forward_inline(ctx, pkt, real, lb_kind))
}

#[inline(always)]
fn forward_inline(ctx: &XdpContext, pkt: &Pkt, real: *const LbReal, lb_kind: u8) -> Outcome {
    // SAFETY: array value pointer; entries of a live generation are never rewritten.
    let (raddr, rport) = unsafe { (&(*real).addr, (*real).port) };

    if lb_kind == LB_KIND_NAT {
        fwd::rewrite(ctx, pkt, true, raddr, rport);
        match fwd::send(ctx, pkt, &pkt.src, raddr, pkt.sport, rport) {
            Fib::Sent(a) => (a, LbReason::NatIn),
            // The rewritten packet goes to the kernel, which resolves the neighbour (or
            // fragments / answers with ICMP) and forwards it.
            Fib::NoNeigh => pass(LbReason::NoNeigh),
            Fib::FragNeeded => pass(LbReason::FragNeeded),
            Fib::Other => pass(LbReason::FibOther),
            Fib::Unreachable => drop(LbReason::FibUnreachable),
        }
    } else if lb_kind == LB_KIND_DR {
        match fwd::send(ctx, pkt, &pkt.src, raddr, pkt.sport, pkt.dport) {
            Fib::Sent(a) => (a, LbReason::Dr),
            // Passing would deliver the packet to the local VIP: drop; the client retransmits.
            Fib::NoNeigh => drop(LbReason::NoNeigh),
            Fib::FragNeeded => drop(LbReason::FragNeeded),
            Fib::Other => drop(LbReason::FibOther),
            Fib::Unreachable => drop(LbReason::FibUnreachable),
        }
    } else {
        // TUN is not implemented in the data path; user space refuses to configure it.
        drop(LbReason::FibOther)
    }
}

/// Real server -> client on a NAT flow: restore the VIP as source and send it on. Returns a
/// packed [`Outcome`], or 0 if `pkt` is not a NAT reply. A subprogram, like [`forward`].
#[inline(never)]
fn reply(ctx: &XdpContext, pkt: &Pkt) -> u64 {
    match reply_inline(ctx, pkt) {
        Some(o) => pack(o),
        None => 0,
    }
}

#[inline(always)]
fn reply_inline(ctx: &XdpContext, pkt: &Pkt) -> Option<Outcome> {
    let sc = scratch()?;
    // SAFETY: per-CPU scratch map.
    let key = unsafe { &raw mut (*sc).fkey };
    conntrack::set_key(key, pkt);
    // SAFETY: initialised above.
    let f = LB_CONNS.get_ptr_mut(unsafe { &*key })?;
    // SAFETY: LRU value pointer from a successful lookup; fields read one by one.
    let (real_id, real_gen, service_id, flags, last_seen, vport) = unsafe {
        ((*f).real_id, (*f).real_gen, (*f).service_id, (*f).flags, (*f).last_seen_ns, (*f).port)
    };
    if flags & LB_FLOW_F_REPLY == 0 {
        return None;
    }
    // SAFETY: as above.
    let vip = unsafe { (*f).addr };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let closing = pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if closing || now.wrapping_sub(last_seen) > conntrack::REFRESH_NS {
        // SAFETY: as above.
        unsafe { (*f).last_seen_ns = now };
        // Keep the forward entry alive too (server-push flows), and close it on FIN/RST.
        // SAFETY: scratch map value; the forward key is this one with the ends swapped.
        unsafe {
            (*key).src = pkt.dst;
            (*key).sport = pkt.dport;
            (*key).dst = vip;
            (*key).dport = vport;
        }
        // SAFETY: as above.
        if let Some(ff) = LB_CONNS.get_ptr_mut(unsafe { &*key }) {
            // SAFETY: LRU value pointer from a successful lookup.
            let (fid, fgen, fflags) = unsafe { ((*ff).real_id, (*ff).real_gen, (*ff).flags) };
            if fid == real_id && fgen == real_gen {
                // SAFETY: as above.
                unsafe { (*ff).last_seen_ns = now };
                if closing {
                    conntrack::close(ff, service_id, real_id, real_gen, fflags);
                }
            }
        }
    }
    let real_same = match LB_REALS.get(real_id) {
        Some(r) => r.gen == real_gen,
        None => false,
    };
    stats::traffic(
        service_id,
        if real_same { Some(real_id) } else { None },
        pkt.len as u64,
        true,
        false,
    );
    fwd::rewrite(ctx, pkt, false, &vip, vport);
    Some(match fwd::send(ctx, pkt, &vip, &pkt.dst, vport, pkt.dport) {
        Fib::Sent(a) => (a, LbReason::NatOut),
        Fib::NoNeigh => pass(LbReason::NoNeigh),
        Fib::FragNeeded => pass(LbReason::FragNeeded),
        Fib::Other => pass(LbReason::FibOther),
        Fib::Unreachable => drop(LbReason::FibUnreachable),
    })
}

#[inline(always)]
fn pass(r: LbReason) -> Outcome {
    (xdp_action::XDP_PASS, r)
}

#[inline(always)]
fn drop(r: LbReason) -> Outcome {
    (xdp_action::XDP_DROP, r)
}
