//! Header rewrites (NAT) and sending a frame on toward an address (FIB lookup, MAC rewrite,
//! XDP_TX or redirect).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use ha_lb_common::lb::{LbFlow, FAMILY_V4};

use super::{csum, maps::scratch, Pkt};
use crate::parse::{ptr_at, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, IPPROTO_TCP};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Rewrites the destination (`dst = true`, DNAT) or source (SNAT) address and port of `pkt`,
/// updating the IPv4 header checksum and the TCP/UDP checksum incrementally. A UDP/IPv4
/// checksum of zero ("none") stays zero.
///
/// The header pointers are bounds-checked again here: the parser checked them, but the
/// verifier does not always connect "this is TCP" here with the branch that checked a TCP-sized
/// header there.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Pkt, dst: bool, addr: &[u32; 4], port: u16) {
    let (old, old_port) = if dst { (pkt.dst, pkt.dport) } else { (pkt.src, pkt.sport) };
    let v4 = pkt.family == FAMILY_V4;
    let end = ctx.data_end();
    // SAFETY: every header pointer is checked against `end` before it is dereferenced.
    unsafe {
        if pkt.proto == IPPROTO_TCP {
            if pkt.l4 + core::mem::size_of::<TcpHdr>() > end {
                return;
            }
            let th = pkt.l4 as *mut TcpHdr;
            let c = (*th).check;
            (*th).check = if v4 {
                csum::replace_addr4_port(c, old[0], addr[0], old_port, port)
            } else {
                csum::replace_addr6_port(c, &old, addr, old_port, port)
            };
            if dst {
                (*th).dest = port;
            } else {
                (*th).source = port;
            }
        } else {
            if pkt.l4 + core::mem::size_of::<UdpHdr>() > end {
                return;
            }
            let uh = pkt.l4 as *mut UdpHdr;
            let c = (*uh).check;
            if c != 0 || !v4 {
                let n = if v4 {
                    csum::replace_addr4_port(c, old[0], addr[0], old_port, port)
                } else {
                    csum::replace_addr6_port(c, &old, addr, old_port, port)
                };
                // RFC 768: a computed zero is sent as all ones.
                (*uh).check = if n == 0 { 0xffff } else { n };
            }
            if dst {
                (*uh).dest = port;
            } else {
                (*uh).source = port;
            }
        }
        if v4 {
            if pkt.l3 + core::mem::size_of::<Ipv4Hdr>() > end {
                return;
            }
            let ih = pkt.l3 as *mut Ipv4Hdr;
            (*ih).check = csum::replace4((*ih).check, old[0], addr[0]);
            if dst {
                (*ih).daddr = addr[0];
            } else {
                (*ih).saddr = addr[0];
            }
        } else {
            if pkt.l3 + core::mem::size_of::<Ipv6Hdr>() > end {
                return;
            }
            let ih = pkt.l3 as *mut Ipv6Hdr;
            if dst {
                (*ih).daddr = *addr;
            } else {
                (*ih).saddr = *addr;
            }
        }
    }
}

/// What a FIB lookup toward the next hop said.
pub enum Fib {
    /// MACs rewritten; the XDP action that sends the frame (TX or REDIRECT).
    Sent(u32),
    NoNeigh,
    Unreachable,
    FragNeeded,
    Other,
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
    /// In: IP total length (MTU check). Out: MTU when FRAG_NEEDED.
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
    ctx: &XdpContext,
    pkt: &Pkt,
    addrs: (&[u32; 4], &[u32; 4]),
    ports: (u16, u16),
    nh: *mut LbFlow,
    fresh: bool,
) -> Fib {
    if !fresh {
        // SAFETY: `nh` points into an LRU map value or the per-CPU scratch map.
        let len = unsafe { (*nh).nh_len };
        if len != 0 && pkt.ip_len <= len {
            // SAFETY: as above.
            let (macs, out_if) = unsafe { ((*nh).nh_macs, (*nh).nh_ifindex) };
            return out(ctx, &macs, out_if);
        }
    }
    let (src, dst) = addrs;
    let (sport, dport) = ports;
    let v4 = pkt.family == FAMILY_V4;
    // The parameter block lives in the per-CPU scratch map, not on the stack.
    let Some(sc) = scratch() else { return Fib::Other };
    // SAFETY: per-CPU map value, used by this packet only.
    let pp = unsafe { &raw mut (*sc).fib };
    // SAFETY: every field is written before use. The constant-zero fields are written
    // volatile so the compiler cannot merge them into a memset call (a byte-loop subprogram
    // on this target).
    unsafe {
        (*pp).family = if v4 { AF_INET } else { AF_INET6 };
        (*pp).l4_protocol = pkt.proto;
        (*pp).sport = sport;
        (*pp).dport = dport;
        (*pp).tot_len = pkt.ip_len;
        (*pp).ifindex = ctx.ingress_ifindex() as u32;
        // IPv4 uses word 0 (the others are zero in our representation).
        (*pp).src = *src;
        (*pp).dst = *dst;
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
        return Fib::Other;
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // SAFETY: the helper filled in `pp`; `nh` as above.
            let (macs, out_if) = unsafe {
                let m = (*pp).macs;
                let out_if = (*pp).ifindex;
                // Ethernet header order: destination MAC, then source MAC.
                let c = [m[3], m[4], m[5], m[0], m[1], m[2]];
                (*nh).nh_macs = c;
                (*nh).nh_ifindex = out_if;
                core::ptr::write_volatile(&raw mut (*nh).nh_len, pkt.ip_len);
                (c, out_if)
            };
            out(ctx, &macs, out_if)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::NoNeigh,
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Fib::Unreachable
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Fib::FragNeeded,
        _ => Fib::Other,
    }
}

/// Writes the Ethernet addresses (`macs`: destination then source, as on the wire) and sends
/// the frame out of `out_if`.
#[inline(always)]
fn out(ctx: &XdpContext, macs: &[u16; 6], out_if: u32) -> Fib {
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else { return Fib::Other };
    // SAFETY: bounds-checked by ptr_at.
    unsafe { *eth = *macs };
    if out_if == ctx.ingress_ifindex() as u32 {
        Fib::Sent(xdp_action::XDP_TX)
    } else {
        // SAFETY: plain helper call; flags 0.
        Fib::Sent(unsafe { bpf_redirect(out_if, 0) } as u32)
    }
}
