//! L4 forwarding: service lookup, schedulers, conntrack, NAT, DR and TUN (program `ha_lb_xdp`;
//! the same code at the TC ingress hook is `ha_lb_tc`, see `parse::Frame` for what differs).
//!
//! Per frame: parse Ethernet + IPv4/IPv6 + TCP/UDP (one bounds check per header); a packet of
//! a NAT or DR flow this CPU sent recently (no SYN/FIN/RST) is sent from the per-CPU flow
//! cache (`cache`: no table lookup, no clock helper); otherwise look the 5-tuple up in the
//! connection-tracking table `LB_CONNS`:
//! - a forward entry (client -> VIP of a known flow) whose real server is still in its
//!   service: send the packet there;
//! - a NAT reply entry (real server -> client): rewrite the source back to the VIP and send it
//!   toward the client;
//! - otherwise look the destination up in `LB_SERVICES`; for a service, schedule a real server,
//!   send the packet and record the flow.
//!
//! Sending: NAT rewrites the destination address/port (checksums updated incrementally); both
//! NAT and DR (the IP packet untouched) rewrite the MACs for the next hop and TX or redirect.
//! The next hop comes from `bpf_fib_lookup` for a flow's first packet and once a second after
//! that, and from the flow's entry in between (see `fwd::send`): an established flow costs one
//! hash lookup. Everything else passes untouched (through the VRRP filter's checks when
//! `LB_CFG_F_VRRP_FILTER` is set). ICMP errors about known flows are translated and sent to
//! the host the error is about (`icmp`).
//! Unusual frames (VLAN — at TC the tag is out of band, `Frame::vlan_tagged` —, IPv4
//! options, fragments, IPv6 extension headers, truncated) pass and are counted per reason in
//! `LB_REASONS`; a VLAN-tagged frame without the VRRP filter's checks (its VRIDs are the VLAN
//! device's, not this one's).
//!
//! TTL/hop limit is not decremented (as IPVS, which forwards from LOCAL_IN).
//!
//! Verifier shape (must load on Debian 12's 6.1 too, JIT or interpreter: hence no tail calls,
//! which the kernel refuses next to BPF-to-BPF calls unless it JIT-compiles): everything is
//! inlined except
//! - `established`, `new_flow`, `forward`, `reply`, `icmp_error`, `conntrack::put_reply`:
//!   static subprograms, so their helper-call spills do not add up in one frame;
//! - `sched::ha_lb_sched_least`: a global function, verified once with its bounded 256-step
//!   loop instead of once per caller state.
//! Large temporaries live in the per-CPU `LB_SCRATCH` map. Budget: the verifier sums frames
//! along each call chain, each rounded up to 32 bytes before Linux 6.8, against 512 bytes;
//! the worst chains are main 224 + `established` 128 + `forward` 136 (160 rounded) = 512 — the
//! limit — and main 224 + `icmp_error` 240 (256 rounded) = 480. Nothing may call `memmove`/`memcpy` (byte-loop
//! subprograms the compiler emits for struct copies it cannot prove disjoint: one more frame
//! on a chain; `copy_addr`). Check after changes with `llvm-objdump -d` (deepest `r10 - N` per
//! function); `tests/tests/ebpf_uml.rs` loads the object on 6.1.

mod cache;
mod conntrack;
mod csum;
mod fwd;
mod icmp;
mod maps;
mod sched;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use ha_lb_common::lb::{
    LbFlow, LbReal, LbReason, LbService, FAMILY_V4, FAMILY_V6, LB_ALGO_MH, LB_ALGO_SH,
    LB_CFG_F_VRRP_FILTER,
    LB_FLOW_F_CLOSED, LB_FLOW_F_DR, LB_FLOW_F_HALF_OPEN, LB_FLOW_F_PERSIST, LB_FLOW_F_REPLY,
    LB_FLOW_F_TUN,
    LB_FLOW_PERSIST_PREFIX_SHIFT, LB_IF_MAC_DIRECT, LB_KIND_DR, LB_KIND_NAT, LB_KIND_TUN,
};

pub use self::maps::LB_TX_PORTS;
use self::{
    fwd::Fib,
    maps::{scratch, LB_CONFIG, LB_CONNS, LB_REALS, LB_SERVICES},
    stats::count,
};
use crate::parse::{
    ipv6_is_ext, ptr_at, EthHdr, Frame, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, ETH_HLEN, ETH_P_8021AD,
    ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN,
    IP_MF_OFFSET, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// A parsed TCP/UDP packet. Addresses and ports as on the wire.
#[derive(Clone, Copy)]
pub struct Pkt {
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
    /// Not ours: pass, through the VRRP filter if enabled (not a VLAN-tagged frame: `Act`).
    Chain(LbReason),
    Act(Outcome),
}

#[xdp]
pub fn ha_lb_xdp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// TC's "no verdict: go on with the next program or filter" (TCX_NEXT).
const TC_ACT_UNSPEC: i32 = -1;

/// The same data path at the TC ingress hook (`dataplane = "tc"`), for interfaces where a
/// socket buffer already exists when the packet arrives (veth pairs of containers and
/// namespaces: their XDP first copies every socket's packet into a page, then the receiving
/// end builds a socket buffer again and verifies its checksums): redirected socket buffers
/// keep their checksum state (see `parse::Frame` for what differs).
#[classifier]
pub fn ha_lb_tc(ctx: TcContext) -> i32 {
    // Headers outside the linear part are out of direct reach: pull them in (rare: a
    // socket's packets and received frames start with their headers linear; pulling more
    // than the headers would copy payload out of the fragments for nothing).
    let need = headers_len(&ctx);
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < need && ctx.len() > linear {
        let _ = ctx.pull_data(if ctx.len() < need { ctx.len() } else { need });
    }
    // Passed frames go on to the next program or filter on the hook (TC_ACT_UNSPEC, TCX's
    // "next"): TC_ACT_OK would end the chain, cutting other ingress programs off from the
    // traffic ha-lb does not handle. XDP_TX cannot happen here (`Frame::redirect`).
    match run(&ctx) {
        xdp_action::XDP_REDIRECT => TC_ACT_REDIRECT as i32,
        xdp_action::XDP_PASS => TC_ACT_UNSPEC,
        _ => TC_ACT_SHOT as i32,
    }
}

/// How many bytes from the start the parser needs in reach: Ethernet, the IP header and 20
/// bytes of TCP/UDP (the fixed TCP header; what an ICMP "too big" answer quotes) — an ICMP
/// error: what it quotes too — as far as the bytes already in reach tell (more for what they
/// do not show yet).
#[inline(always)]
fn headers_len(ctx: &TcContext) -> u32 {
    const L4_LEN: u32 = 20;
    let eth = ETH_HLEN as u32;
    // Unknown so far: as much as the longest case (an ICMPv6 error) needs.
    const MOST: u32 = (ETH_HLEN + 2 * IPV6_HLEN + icmp::ICMP_HLEN + 8) as u32;
    let (ip_len, proto) = match crate::parse::ether_type(ctx) {
        Some(ETH_P_IP) => match ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) {
            // SAFETY: bounds-checked by ptr_at.
            Some(ip) => (IPV4_HLEN as u32, unsafe { (*ip).proto }),
            None => return MOST,
        },
        Some(ETH_P_IPV6) => match ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) {
            // SAFETY: bounds-checked by ptr_at.
            Some(ip) => (IPV6_HLEN as u32, unsafe { (*ip).nexthdr }),
            None => return MOST,
        },
        Some(_) => return eth,
        None => return MOST,
    };
    eth + ip_len
        + match proto {
            // An ICMP error: its header, then the quoted IP header and 8 bytes of ports.
            icmp::IPPROTO_ICMP | icmp::IPPROTO_ICMPV6 => icmp::ICMP_HLEN as u32 + ip_len + 8,
            _ => L4_LEN,
        }
}

/// One packet through the data path: the XDP action for it (at the TC hook: `XDP_REDIRECT`
/// once redirected, `XDP_DROP` or `XDP_PASS`; see `parse::Frame::redirect`).
#[inline(always)]
fn run(ctx: &impl Frame) -> u32 {
    match process(ctx) {
        Verdict::Act((a, r)) => {
            count(r);
            a
        }
        Verdict::Chain(r) => {
            count(r);
            let vrrp = match LB_CONFIG.get(0) {
                Some(c) => c.flags & LB_CFG_F_VRRP_FILTER != 0,
                None => false,
            };
            if vrrp {
                crate::vrrp_filter::run(ctx)
            } else {
                xdp_action::XDP_PASS
            }
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
fn for_us(ctx: &impl Frame) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else { return true };
    // SAFETY: bounds-checked by ptr_at.
    if unsafe { (*eth).dst[0] } & 1 != 0 {
        // Multicast and broadcast (ARP, neighbour discovery, VRRP) are for every host.
        return true;
    }
    let ifindex = ctx.ifindex();
    let m = if ifindex < LB_IF_MAC_DIRECT {
        match maps::LB_IF_MAC.get(ifindex) {
            Some(m) if m.attached != 0 => Some(m),
            _ => None,
        }
    } else {
        // SAFETY: read-only lookup of plain data.
        unsafe { maps::LB_IF_MAC_HASH.get(&ifindex) }
    };
    match m {
        None => true,
        // SAFETY: eth is bounds-checked by ptr_at.
        Some(m) => (unsafe { (*eth).dst }) == m.mac,
    }
}

#[inline(always)]
fn process(ctx: &impl Frame) -> Verdict {
    // A tagged frame belongs to a VLAN device on top of this one: neither the data path nor
    // the VRRP filter (whose VRIDs are keyed by the receiving interface, here the parent,
    // and which reads the EtherType as the frame's) knows it. It passes, for the VLAN device's
    // own hook to judge. At TC the tag is out of band (see `Frame::vlan_tagged`) and the frame
    // looks untagged; checked before `for_us`, which knows the parent's MAC only.
    if ctx.vlan_tagged() {
        return Verdict::Act(pass(LbReason::Vlan));
    }
    if !for_us(ctx) {
        return Verdict::Chain(LbReason::OtherHost);
    }
    let pkt = match parse(ctx) {
        Ok(p) => p,
        Err(LbReason::NotTcpUdp) => {
            return match icmp_error(ctx) {
                0 => Verdict::Chain(LbReason::NotTcpUdp),
                v => Verdict::Act(unpack(v)),
            }
        }
        Err(LbReason::Vlan) => return Verdict::Act(pass(LbReason::Vlan)),
        Err(r) => return Verdict::Chain(r),
    };
    // A flow this CPU sent recently: from the flow cache, without the table lookup.
    if let Some(o) = cache::send(ctx, &pkt) {
        return Verdict::Act(o);
    }
    cache::forget(&pkt);
    let Some(sc) = scratch() else { return Verdict::Chain(LbReason::NotService) };
    // SAFETY: per-CPU scratch map; `fkey` keeps this packet's key until the flow is written.
    let key = unsafe { &raw mut (*sc).fkey };
    conntrack::set_key(key, &pkt);
    // Known flows first: one table lookup and no service lookup. A forward entry names its
    // real server, whose entry says whether it is still in the service; a stale entry (0)
    // falls through to scheduling.
    let mut stale = false;
    // SAFETY: initialised above.
    if let Some(f) = LB_CONNS.get_ptr_mut(unsafe { &*key }) {
        // SAFETY: LRU value pointer from a successful lookup.
        let v = if unsafe { (*f).flags } & LB_FLOW_F_REPLY != 0 {
            reply(ctx, &pkt, f)
        } else {
            established(ctx, &pkt, f)
        };
        if v != 0 {
            return Verdict::Act(unpack(v));
        }
        stale = true;
    }
    // SAFETY: per-CPU scratch map; the service value is plain data, copied out at once.
    let found = unsafe {
        let k = &raw mut (*sc).skey;
        (*k).addr = pkt.dst;
        (*k).port = pkt.dport;
        (*k).proto = pkt.proto;
        (*k).family = pkt.family;
        LB_SERVICES.get(&*k)
    };
    match found {
        Some(svc) => {
            let svc = *svc;
            Verdict::Act(schedule(ctx, &pkt, &svc, stale))
        }
        None => Verdict::Chain(LbReason::NotService),
    }
}

/// Flow timestamps: CLOCK_MONOTONIC at tick resolution (flow timeouts are seconds; the coarse
/// clock costs no clock-source read per packet).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn parse(ctx: &impl Frame) -> Result<Pkt, LbReason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(LbReason::Truncated)?;
    // (A tag out of band, at TC, was checked by `process`.)
    let len = ctx.len();
    // SAFETY: bounds-checked by ptr_at.
    match u16::from_be(unsafe { (*eth).proto }) {
        ETH_P_IP => parse_v4(ctx, len),
        ETH_P_IPV6 => parse_v6(ctx, len),
        ETH_P_8021Q | ETH_P_8021AD => Err(LbReason::Vlan),
        _ => Err(LbReason::NotIp),
    }
}

#[inline(always)]
fn parse_v4(ctx: &impl Frame, len: u32) -> Result<Pkt, LbReason> {
    let ipp = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(LbReason::Truncated)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { *ipp };
    let ihl = ip.vihl & 0x0f;
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return Err(LbReason::BadIpHeader);
    }
    // Options and fragments first, whatever the protocol (an ICMP error with options or in
    // fragments is not translated either: `icmp` takes plain unfragmented headers only).
    if ihl != 5 {
        return Err(LbReason::IpOptions);
    }
    if u16::from_be(ip.frag_off) & IP_MF_OFFSET != 0 {
        return Err(LbReason::Fragment);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(LbReason::NotTcpUdp);
    }
    let ip_len = u16::from_be(ip.tot_len);
    if (ip_len as usize) < IPV4_HLEN {
        return Err(LbReason::BadIpHeader);
    }
    if ETH_HLEN as u32 + ip_len as u32 > len {
        return Err(LbReason::Truncated);
    }
    let (sport, dport, tcp_flags) =
        parse_l4(ctx, ip.proto, ETH_HLEN + IPV4_HLEN, ip_len as u32 - IPV4_HLEN as u32)?;
    Ok(Pkt {
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
fn parse_v6(ctx: &impl Frame, len: u32) -> Result<Pkt, LbReason> {
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
    let (sport, dport, tcp_flags) = parse_l4(ctx, ip.nexthdr, ETH_HLEN + IPV6_HLEN, payload)?;
    Ok(Pkt {
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

/// The TCP/UDP header at `off`: (source port, destination port, TCP flags).
#[inline(always)]
fn parse_l4(
    ctx: &impl Frame,
    proto: u8,
    off: usize,
    l4_len: u32,
) -> Result<(u16, u16, u8), LbReason> {
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
        Ok((t.source, t.dest, t.flags))
    } else {
        let uh = ptr_at::<UdpHdr>(ctx, off).ok_or(LbReason::Truncated)?;
        if l4_len < core::mem::size_of::<UdpHdr>() as u32 {
            return Err(LbReason::Truncated);
        }
        // SAFETY: bounds-checked by ptr_at.
        let u = unsafe { *uh };
        Ok((u.source, u.dest, 0))
    }
}

/// Client -> VIP on a known flow (`f`, its forward entry): send it to the flow's real server.
/// Returns a packed [`Outcome`], or 0 when the entry is stale (real server gone from the
/// service, flow expired, or a new SYN on a closed flow): the entry is closed and the packet
/// is scheduled anew.
///
/// This, [`forward`], [`reply`], `new_flow` and `conntrack::put_reply` are BPF subprograms
/// rather than inlined: the BPF calling convention spills everything live across a helper call
/// to the stack, and inlined into one function the spills of scheduling, FIB lookup and
/// rewriting add up past the 512-byte stack. As subprograms, each gets its own frame.
#[inline(never)]
fn established(ctx: &impl Frame, pkt: &Pkt, f: *mut LbFlow) -> u64 {
    let now = now_ns();
    // SAFETY: LRU value pointer from a successful lookup; fields read one by one.
    let (real_id, real_gen, svc_id, flags, last_seen) =
        unsafe { ((*f).real_id, (*f).real_gen, (*f).service_id, (*f).flags, (*f).last_seen_ns) };
    let tcp = pkt.proto == IPPROTO_TCP;
    let closing = tcp && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let syn_only = tcp && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let Some(real) = LB_REALS.get_ptr(real_id) else { return 0 };
    // SAFETY: array value pointer.
    let alive = conntrack::real_alive(unsafe { &*real }, real_gen, svc_id);
    let idle = now.wrapping_sub(last_seen);
    let expired = idle > conntrack::timeout_ns(tcp, flags);
    let reused = syn_only && flags & LB_FLOW_F_CLOSED != 0;
    if !alive || expired || reused {
        // Its real server left the service, or the state is stale: schedule anew where
        // `schedule` may (a SYN; any segment for sh/mh; UDP), which also makes every CPU's
        // flow cache forget the old real server where needed.
        conntrack::close(f, svc_id, real_id, real_gen, flags);
        return 0;
    }
    let mut refresh = idle > conntrack::REFRESH_NS;
    if closing {
        conntrack::close(f, svc_id, real_id, real_gen, flags);
    } else if flags & (LB_FLOW_F_HALF_OPEN | LB_FLOW_F_CLOSED) == LB_FLOW_F_HALF_OPEN
        && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK
    {
        // (Not one already closed: a FIN+ACK adopted, or a FIN/RST before the handshake
        // ended, was never counted open and is not established by the ACK after it.)
        // The client acknowledged the real server's SYN+ACK: established (IPVS: SYN_RECV ->
        // ESTABLISHED, inactive -> active), on the established timeout from now.
        // SAFETY: as above; a racing CPU can only make the same change (or count it twice,
        // which the sweep corrects).
        unsafe { (*f).flags = flags & !LB_FLOW_F_HALF_OPEN };
        stats::conn_established(svc_id, real_id);
        refresh = true;
    }
    let kind = flow_kind(flags);
    if refresh {
        // SAFETY: as above; racing writers only store other timestamps.
        unsafe { (*f).last_seen_ns = now };
        if flags & LB_FLOW_F_PERSIST != 0 {
            let prefix = (flags >> LB_FLOW_PERSIST_PREFIX_SHIFT) as u8;
            sched::refresh_template(svc_id, prefix, pkt, now);
        }
    }
    stats::traffic(svc_id, Some(real_id), pkt.len as u64, false, false);
    let v = forward(ctx, pkt, real, f, fwd_mode(kind, refresh));
    // Sent by NAT or DR (these reasons mean sent; TUN is not cached): this CPU's later
    // packets of the flow take the flow cache — once established: the client's ACK must come
    // this way to make it so (a half-open flow's segments are retransmitted SYNs).
    let ident = (real_id, real_gen, svc_id);
    // SAFETY: array value pointer; a live generation's address and port never change. The
    // flags are read again rather than kept across `forward` (the stack: see the module
    // docs); `fill` checks that `f` still holds this flow.
    let (to, half_open) = unsafe {
        let flags = core::ptr::read_volatile(&raw const (*f).flags);
        (((*real).addr[0], (*real).port), flags & LB_FLOW_F_HALF_OPEN != 0)
    };
    match unpack(v).1 {
        LbReason::NatIn if !half_open => cache::fill(pkt, f, cache::KIND_NAT, ident, to),
        LbReason::Dr if !half_open => cache::fill(pkt, f, cache::KIND_DR, ident, to),
        _ => {}
    }
    // Re-create the reply entry should the LRU have evicted it alone. Only after `forward`,
    // which writes the next-hop cache through `f`: an insert into a full table may evict and
    // reuse `f`'s element, and the cache would then be written into another flow's entry.
    if refresh && kind == LB_KIND_NAT {
        conntrack::put_reply(pkt, real, real_id, svc_id, now);
    }
    v
}

/// Client -> VIP, no known flow (`stale`: its entry was stale): schedule it, send the packet,
/// then record the flow (with the next hop the send looked up) and, for NAT, its reply entry.
///
/// TCP is scheduled on a SYN only (without ACK or RST), as IPVS does (`tcp_conn_schedule`,
/// without `sloppy_tcp`; IPVS also takes a SYN+ACK, for active FTP, which ha-lb has no helper
/// for): another segment without a flow — a stray ACK, backscatter, a RST, the next segment
/// of a connection whose entry was lost — is passed (`TcpNoFlow`), and the kernel answers a
/// local VIP with a RST. Except for sh/mh: their pick depends on the client alone, so a
/// connection whose entry was lost (evicted, swept, a restart or failover without connection
/// sync) goes on to the real server it was on as long as the set is the same — what Maglev is
/// for. Such a segment is adopted (`Adopted`): sent, and its flow recorded, but not counted as
/// a new connection (the sweep counts it open, as an imported one). Not a SYN+ACK (a server's
/// segment, backscatter of spoofed SYNs, never a client's) nor a RST. An adopted flow starts
/// half-open, as a new one does (60 s, inactive, not cached, not synced): a stray ACK (an ACK
/// flood with random ports) leaves no more than a SYN would; the client's next ACK makes it
/// established (`established`, counted there once, and closed once later).
#[inline(always)]
fn schedule(ctx: &impl Frame, pkt: &Pkt, svc: &LbService, stale: bool) -> Outcome {
    let kind = svc.lb_kind;
    if kind != LB_KIND_NAT && kind != LB_KIND_DR && kind != LB_KIND_TUN {
        return drop(LbReason::FibOther);
    }
    let tcp = pkt.proto == IPPROTO_TCP;
    let adopt = tcp && pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN;
    if adopt
        && (pkt.tcp_flags & (TCP_SYN | TCP_RST) != 0
            || (svc.lb_algo != LB_ALGO_SH && svc.lb_algo != LB_ALGO_MH))
    {
        return pass(LbReason::TcpNoFlow);
    }
    let now = now_ns();
    let closing = tcp && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    // A new TCP connection is half-open until its client's ACK after the SYN (`established`);
    // an adopted one until its client's next ACK after the adopted segment (which may be a
    // stray one: this packet does not count); a UDP flow never has it.
    let mut state = 0;
    if closing {
        state |= LB_FLOW_F_CLOSED;
    }
    if tcp {
        state |= LB_FLOW_F_HALF_OPEN;
    }
    let id = new_flow(pkt, svc, now, state);
    let Some(real) = LB_REALS.get_ptr(id) else {
        return drop(LbReason::NoRealServer);
    };
    let Some(sc) = scratch() else { return pass(LbReason::FibOther) };
    // SAFETY: per-CPU scratch map: `new_flow` filled `flow` for this packet's key `fkey`.
    let f = unsafe { &raw mut (*sc).flow };
    let o = unpack(forward(ctx, pkt, real, f, fwd_mode(kind, true)));
    // SAFETY: as above.
    unsafe {
        if LB_CONNS.insert(&(*sc).fkey, &*f, 0).is_err() {
            count(LbReason::ConntrackFull);
        }
    }
    // A port reused after close (a SYN on a closed entry) starts a new connection that may
    // go to another real server, while another CPU may still hold the old one's slot in its
    // flow cache (filled by the old connection's last segments, valid for up to
    // `cache::VALID_JIFFIES`): every CPU's cache forgets. After the insert, so that a full path
    // starting after the bump finds the new entry. Nothing else needs the bump, which costs
    // every CPU its cached flows: a brand-new flow has no slot anywhere; a real server leaving
    // is checked by a cached send; an expired flow's slots expired long before; an adopted
    // segment (sh/mh) continues a connection another CPU's slot, if any, still sends where it
    // was (the same server while the set is unchanged), for that long at most.
    if tcp && stale && !adopt {
        cache::bump_epoch();
    }
    if adopt {
        count(LbReason::Adopted);
    } else if stale {
        count(LbReason::Rescheduled);
    }
    if kind == LB_KIND_NAT {
        conntrack::put_reply(pkt, real, id, svc.id, now);
    }
    stats::traffic(svc.id, Some(id), pkt.len as u64, false, !adopt);
    if !tcp {
        stats::conn_established(svc.id, id);
    } else if closing && !adopt {
        stats::conn_closed(svc.id, id, true);
    }
    o
}

/// Schedules a new flow of `svc` and fills the scratch `flow` value for it (without a next
/// hop), its flags with `state` (`LB_FLOW_F_CLOSED`, `LB_FLOW_F_HALF_OPEN`); returns the real
/// server's id (`u32::MAX`: none could take it).
#[inline(never)]
fn new_flow(pkt: &Pkt, svc: &LbService, now: u64, state: u32) -> u32 {
    let Some((id, r)) = sched::pick(svc, pkt, now) else {
        return u32::MAX;
    };
    let mut flags = state;
    if svc.persistence_timeout != 0 {
        flags |= LB_FLOW_F_PERSIST | (svc.persist_prefix as u32) << LB_FLOW_PERSIST_PREFIX_SHIFT;
    }
    if svc.lb_kind == LB_KIND_DR {
        flags |= LB_FLOW_F_DR;
    } else if svc.lb_kind == LB_KIND_TUN {
        flags |= LB_FLOW_F_TUN;
    }
    let Some(sc) = scratch() else { return u32::MAX };
    // SAFETY: array value pointer and the per-CPU scratch map.
    unsafe {
        let f = &raw mut (*sc).flow;
        (*f).real_id = id;
        (*f).real_gen = (*r).gen;
        (*f).service_id = svc.id;
        (*f).flags = flags;
        (*f).last_seen_ns = now;
        copy_addr(&raw mut (*f).addr, &raw const (*r).addr);
        (*f).port = (*r).port;
        conntrack::clear_next_hop(f);
    }
    id
}

/// Copies an address (four words). Word by word, the stores volatile: a plain copy between two
/// pointers the compiler cannot prove disjoint becomes a `memmove` call on this target — a
/// byte loop, and one more frame on the verifier's call chains (see the module docs).
#[inline(always)]
pub fn copy_addr(dst: *mut [u32; 4], src: *const [u32; 4]) {
    let d = dst.cast::<u32>();
    // SAFETY: both point to four u32 words (callers pass map values or stack arrays). The
    // words are read first (registers), then written volatile (no merged copy).
    unsafe {
        let [w0, w1, w2, w3] = *src;
        core::ptr::write_volatile(d, w0);
        core::ptr::write_volatile(d.add(1), w1);
        core::ptr::write_volatile(d.add(2), w2);
        core::ptr::write_volatile(d.add(3), w3);
    }
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

/// An ICMP error about a known flow, translated and sent (packed [`Outcome`]), or 0. A
/// subprogram, like [`forward`].
#[inline(never)]
fn icmp_error(ctx: &impl Frame) -> u64 {
    match icmp::error(ctx) {
        Some(o) => pack(o),
        None => 0,
    }
}

/// The forwarding method (`LB_KIND_*`) of a forward entry with `flags`.
#[inline(always)]
fn flow_kind(flags: u32) -> u8 {
    if flags & LB_FLOW_F_DR != 0 {
        LB_KIND_DR
    } else if flags & LB_FLOW_F_TUN != 0 {
        LB_KIND_TUN
    } else {
        LB_KIND_NAT
    }
}

/// Whether user space found a TUN outer source address (`LbReal::tun_src()`; all zero: none).
#[inline(always)]
pub fn tun_src_known(src: &[u32; 4]) -> bool {
    src[0] | src[1] | src[2] | src[3] != 0
}

/// [`forward`]'s mode: the forwarding method (`LB_KIND_*`, low byte), and whether to look the
/// next hop up afresh.
const FWD_FRESH: u32 = 0x100;

#[inline(always)]
fn fwd_mode(kind: u8, fresh: bool) -> u32 {
    kind as u32 | if fresh { FWD_FRESH } else { 0 }
}

/// Sends a client -> VIP packet to real server `real`: NAT rewrites the destination, TUN
/// encapsulates; all rewrite the Ethernet header for the next hop (cached in `nh`, the flow's
/// forward entry).
#[inline(never)]
fn forward(ctx: &impl Frame, pkt: &Pkt, real: *const LbReal, nh: *mut LbFlow, mode: u32) -> u64 {
    pack(forward_inline(ctx, pkt, real, nh, mode))
}

#[inline(always)]
fn forward_inline(
    ctx: &impl Frame,
    pkt: &Pkt,
    real: *const LbReal,
    nh: *mut LbFlow,
    mode: u32,
) -> Outcome {
    // SAFETY: array value pointer. A live entry is rewritten in place only with the same
    // address and port (and the TUN source double-buffered: see `LbReal::tun_src`).
    let (raddr, rport) = unsafe { (&(*real).addr, (*real).port) };
    let fresh = mode & FWD_FRESH != 0;
    let kind = (mode & 0xff) as u8;
    if kind == LB_KIND_TUN {
        // SAFETY: array value pointer, as above.
        let src = unsafe { (*real).tun_src() };
        if !tun_src_known(src) {
            // User space found no route toward the real server when it was configured.
            return drop(LbReason::FibUnreachable);
        }
        // Passing would deliver the packet to the local VIP: failures drop, as for DR.
        return match fwd::tun(ctx, pkt, (src, raddr), nh, fresh) {
            Fib::Sent(a) => (a, LbReason::Tun),
            Fib::Answered(a) => (a, LbReason::TooBigAnswered),
            Fib::Unanswered => drop(LbReason::FragNeeded),
            Fib::NoNeigh => drop(LbReason::NoNeigh),
            Fib::FragNeeded => drop(LbReason::FragNeeded),
            Fib::Other => drop(LbReason::FibOther),
            Fib::Unreachable => drop(LbReason::FibUnreachable),
            // The kernel would refuse the outer packet's local source address.
            Fib::NoXdp => drop(LbReason::EgressNoXdp),
        };
    }
    if kind == LB_KIND_NAT {
        let route = fwd::Route {
            family: pkt.family,
            proto: pkt.proto,
            addrs: (&pkt.src, raddr),
            ports: (pkt.sport, rport),
            len: pkt.ip_len,
        };
        match fwd::nat(ctx, pkt, (true, raddr, rport), &route, nh, fresh) {
            Fib::Sent(a) => (a, LbReason::NatIn),
            Fib::Answered(a) => (a, LbReason::TooBigAnswered),
            Fib::Unanswered => drop(LbReason::FragNeeded),
            // The rewritten packet goes to the kernel, which resolves the neighbour (or
            // fragments / answers with ICMP) and forwards it.
            Fib::NoNeigh => pass(LbReason::NoNeigh),
            Fib::FragNeeded => pass(LbReason::FragNeeded),
            Fib::Other => pass(LbReason::FibOther),
            Fib::Unreachable => drop(LbReason::FibUnreachable),
            // Translated: the kernel forwards it (`Fib::NoXdp`).
            Fib::NoXdp => pass(LbReason::EgressNoXdp),
        }
    } else {
        match fwd::send_answering(ctx, pkt, (&pkt.src, raddr), (pkt.sport, pkt.dport), nh, fresh) {
            Fib::Sent(a) => (a, LbReason::Dr),
            Fib::Answered(a) => (a, LbReason::TooBigAnswered),
            Fib::Unanswered => drop(LbReason::FragNeeded),
            // Passing would deliver the packet to the local VIP: drop; the client retransmits.
            Fib::NoNeigh => drop(LbReason::NoNeigh),
            Fib::FragNeeded => drop(LbReason::FragNeeded),
            Fib::Other => drop(LbReason::FibOther),
            Fib::Unreachable => drop(LbReason::FibUnreachable),
            Fib::NoXdp => drop(LbReason::EgressNoXdp),
        }
    }
}

/// Real server -> client on a NAT flow (`f`, its reply entry): restore the VIP as source and
/// send it on. Returns a packed [`Outcome`]. A subprogram, like [`forward`].
#[inline(never)]
fn reply(ctx: &impl Frame, pkt: &Pkt, f: *mut LbFlow) -> u64 {
    pack(reply_inline(ctx, pkt, f))
}

#[inline(always)]
fn reply_inline(ctx: &impl Frame, pkt: &Pkt, f: *mut LbFlow) -> Outcome {
    // SAFETY: LRU value pointer from a successful lookup; fields read one by one.
    let (real_id, real_gen, service_id, last_seen, vport) =
        unsafe { ((*f).real_id, (*f).real_gen, (*f).service_id, (*f).last_seen_ns, (*f).port) };
    // A real server that left its service (or whose service was deleted, its id perhaps given
    // to another) has no flows here any more: its packets pass untranslated (the client
    // answers a segment from an address it does not know with a RST, which ends the
    // connection on the real server too), and count on no service.
    let alive = match LB_REALS.get(real_id) {
        Some(r) => conntrack::real_alive(r, real_gen, service_id),
        None => false,
    };
    if !alive {
        return pass(LbReason::NotService);
    }
    // SAFETY: as above.
    let vip = unsafe { (*f).addr };
    let now = now_ns();
    let closing = pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let refresh = now.wrapping_sub(last_seen) > conntrack::REFRESH_NS;
    if closing || refresh {
        // SAFETY: as above.
        unsafe { (*f).last_seen_ns = now };
        touch_forward(pkt, &vip, vport, (service_id, real_id, real_gen), now, closing);
    }
    stats::traffic(service_id, Some(real_id), pkt.len as u64, true, false);
    let route = fwd::Route {
        family: pkt.family,
        proto: pkt.proto,
        addrs: (&vip, &pkt.dst),
        ports: (vport, pkt.dport),
        len: pkt.ip_len,
    };
    match fwd::nat(ctx, pkt, (false, &vip, vport), &route, f, refresh) {
        Fib::Sent(a) => {
            cache::fill(
                pkt,
                f,
                cache::KIND_REPLY,
                (real_id, real_gen, service_id),
                (vip[0], vport),
            );
            (a, LbReason::NatOut)
        }
        Fib::Answered(a) => (a, LbReason::TooBigAnswered),
        Fib::Unanswered => drop(LbReason::FragNeeded),
        Fib::NoNeigh => pass(LbReason::NoNeigh),
        Fib::FragNeeded => pass(LbReason::FragNeeded),
        Fib::Other => pass(LbReason::FibOther),
        Fib::Unreachable => drop(LbReason::FibUnreachable),
        // Translated: the kernel forwards it (with `accept_local` on the ingress: its source
        // is the VIP, a local address).
        Fib::NoXdp => pass(LbReason::EgressNoXdp),
    }
}

/// Keeps the forward entry of the NAT flow whose reply `pkt` is alive too (server-push
/// flows), and closes it on FIN/RST. `flow` = (service id, real id, real generation).
#[inline(always)]
fn touch_forward(
    pkt: &Pkt,
    vip: &[u32; 4],
    vport: u16,
    flow: (u32, u32, u32),
    now: u64,
    closing: bool,
) {
    let (service_id, real_id, real_gen) = flow;
    let Some(sc) = scratch() else { return };
    // SAFETY: scratch map value; the forward key is this packet's with the ends swapped.
    let key = unsafe { &raw mut (*sc).rkey };
    // SAFETY: as above.
    unsafe {
        (*key).src = pkt.dst;
        (*key).sport = pkt.dport;
        (*key).dst = *vip;
        (*key).dport = vport;
        (*key).proto = pkt.proto;
        (*key).family = pkt.family;
        (*key)._pad = 0;
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

#[inline(always)]
fn pass(r: LbReason) -> Outcome {
    (xdp_action::XDP_PASS, r)
}

#[inline(always)]
fn drop(r: LbReason) -> Outcome {
    (xdp_action::XDP_DROP, r)
}
