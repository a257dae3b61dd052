//! Programs for `cargo xtask bench dataplane`, not part of the load balancer:
//!
//! - `hlb_bench_gen`: a live-frames UDP generator. Run with `BPF_PROG_RUN` and
//!   `BPF_F_TEST_XDP_LIVE_FRAMES`, it rewrites the whole Ethernet/IPv4/UDP header of every
//!   frame from `BENCH_GEN_CONFIG` (pages are recycled with whatever the receiver wrote into
//!   them, so nothing of the previous run may be trusted), varies the source port so the
//!   director sees many flows, and returns XDP_TX: the frame leaves the veth it is
//!   "received" on, towards its peer, as an xdp_frame.
//! - `hlb_bench_sink`: counts frames and bytes per CPU, then XDP_DROP.
//! - `hlb_bench_pass`: XDP_PASS (gives a veth peer NAPI without changing anything).
//! - `hlb_bench_drop`: XDP_DROP (the floor of a director).
//! - `hlb_bench_redirect`: redirects everything to the ifindex in `BENCH_REDIRECT` (the
//!   ceiling of a forwarding director: no parsing, no lookup, no rewrite).
//! - `hlb_bench_tc_redirect`: a TC (sched_cls) program redirecting every skb to the same
//!   ifindex: the ceiling of a TC-hook director, which sees socket skbs without the copy
//!   veth makes before native XDP can run on them.
//! - `hlb_bench_rewrite`: the same, after swapping the frame's MAC addresses: the least any
//!   forwarding program does (its first touch of the frame's data costs a cache miss on the
//!   director, since the frame was written on another CPU).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use ha_lb_common::bench::{BenchGenConfig, BenchSinkCounter};

use crate::parse::{ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP};

const IPPROTO_UDP: u8 = 17;
const IPV4_HLEN: usize = 20;

#[repr(C)]
#[derive(Clone, Copy)]
struct UdpHdr {
    sport: u16,
    dport: u16,
    len: u16,
    check: u16,
}

#[map(name = "BENCH_GEN_CONFIG")]
static BENCH_GEN_CONFIG: Array<BenchGenConfig> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_GEN_SEQ")]
static BENCH_GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "BENCH_SINK_STATS")]
static BENCH_SINK_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(BenchSinkCounter::COUNT, 0);

#[map(name = "BENCH_REDIRECT")]
static BENCH_REDIRECT: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
pub fn hlb_bench_gen(ctx: XdpContext) -> u32 {
    match generate(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// Adds the two 16-bit halves of a host-order u32 to a checksum accumulator.
#[inline(always)]
fn add32(sum: u32, v: u32) -> u32 {
    sum + (v >> 16) + (v & 0xffff)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<()> {
    let cfg = *BENCH_GEN_CONFIG.get(0)?;
    let seq = BENCH_GEN_SEQ.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; the generator runs on one CPU at a time per slot.
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    let count = if cfg.sport_count == 0 { 1 } else { cfg.sport_count as u64 };
    let sport = cfg.sport_base.wrapping_add((n % count) as u16);

    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    let udp = ptr_at::<UdpHdr>(ctx, ETH_HLEN + IPV4_HLEN)?;
    let len = ctx.data_end() - ctx.data();
    let ip_len = (len - ETH_HLEN) as u32;
    let udp_len = ip_len - IPV4_HLEN as u32;

    let saddr = u32::from_be(cfg.saddr);
    let daddr = u32::from_be(cfg.daddr);
    // IPv4 header: 0x4500, tot_len, id 0, frag 0, ttl/proto, check, saddr, daddr.
    let mut s = 0x4500 + ip_len + (((cfg.ttl as u32) << 8) | IPPROTO_UDP as u32);
    s = add32(add32(s, saddr), daddr);
    let ip_check = fold(s);
    // UDP over the pseudo-header; the payload is zeros (data_in) and adds nothing.
    let mut u = IPPROTO_UDP as u32 + udp_len;
    u = add32(add32(u, saddr), daddr);
    u += sport as u32 + cfg.dport as u32 + udp_len;
    let mut udp_check = fold(u);
    if udp_check == 0 {
        udp_check = 0xffff;
    }

    // SAFETY: all three headers were bounds-checked by ptr_at.
    unsafe {
        (*eth).dst = cfg.dst_mac;
        (*eth).src = cfg.src_mac;
        (*eth).proto = ETH_P_IP.to_be();
        *ip = Ipv4Hdr {
            vihl: 0x45,
            tos: 0,
            tot_len: (ip_len as u16).to_be(),
            id: 0,
            frag_off: 0,
            ttl: cfg.ttl,
            proto: IPPROTO_UDP,
            check: ip_check.to_be(),
            saddr: cfg.saddr,
            daddr: cfg.daddr,
        };
        *udp = UdpHdr {
            sport: sport.to_be(),
            dport: cfg.dport.to_be(),
            len: (udp_len as u16).to_be(),
            check: udp_check.to_be(),
        };
    }
    Some(())
}

#[xdp]
pub fn hlb_bench_sink(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(p) = BENCH_SINK_STATS.get_ptr_mut(BenchSinkCounter::Frames as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
    if let Some(p) = BENCH_SINK_STATS.get_ptr_mut(BenchSinkCounter::Bytes as u32) {
        // SAFETY: as above.
        unsafe { *p += len };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn hlb_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn hlb_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn hlb_bench_redirect(_ctx: XdpContext) -> u32 {
    match BENCH_REDIRECT.get(0) {
        // SAFETY: plain helper call.
        Some(&ifindex) if ifindex != 0 => unsafe { bpf_redirect(ifindex, 0) as u32 },
        _ => xdp_action::XDP_ABORTED,
    }
}

#[xdp]
pub fn hlb_bench_rewrite(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<[u16; 6]>(&ctx, 0) else { return xdp_action::XDP_ABORTED };
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        let e = *eth;
        *eth = [e[3], e[4], e[5], e[0], e[1], e[2]];
    }
    match BENCH_REDIRECT.get(0) {
        // SAFETY: plain helper call.
        Some(&ifindex) if ifindex != 0 => unsafe { bpf_redirect(ifindex, 0) as u32 },
        _ => xdp_action::XDP_ABORTED,
    }
}

#[classifier]
pub fn hlb_bench_tc_redirect(_ctx: TcContext) -> i32 {
    match BENCH_REDIRECT.get(0) {
        // SAFETY: plain helper call; flags 0 = the egress of `ifindex`.
        Some(&ifindex) if ifindex != 0 => unsafe { bpf_redirect(ifindex, 0) as i32 },
        // TC_ACT_SHOT
        _ => 2,
    }
}
