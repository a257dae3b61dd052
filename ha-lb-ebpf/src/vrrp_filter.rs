//! The VRRP fast-path filter.
//!
//! On a VRRP instance's interface: IP protocol 112 frames with TTL/hop limit != 255
//! (RFC 5798 §7.1; not checked for a VRID whose instance has unicast peers, which may be
//! routed), a version other than 2/3 or than the one configured for the VRID, a type other
//! than ADVERTISEMENT, or a VRID not configured on this interface are dropped and counted per
//! reason. Everything else passes untouched, uncounted unless it is VRRP.
//! The daemon still validates every advert it receives (checksum, auth, addresses); this
//! program only keeps garbage off the slow path cheaply.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use ha_lb_common::vrrp::{
    version_bit, VrrpCounter, VrrpVridKey, VrrpVridValue, FAMILY_V4, FAMILY_V6, IPPROTO_VRRP,
    VRRP_VRIDS_MAX,
};

use crate::parse::{
    ether_type, ptr_at, Frame, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV6_HLEN,
};

/// Length of the fixed VRRP header (v2 and v3).
const VRRP_HLEN: usize = 8;
const VRRP_TYPE_ADVERTISEMENT: u8 = 1;

#[map(name = "VRRP_VRIDS")]
static VRRP_VRIDS: HashMap<VrrpVridKey, VrrpVridValue> =
    HashMap::with_max_entries(VRRP_VRIDS_MAX, 0);

#[map(name = "VRRP_STATS")]
static VRRP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VrrpCounter::COUNT, 0);

#[xdp]
pub fn ha_lb_vrrp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// The filter's verdict for one frame; also run by `ha_lb_xdp` on the frames it does not
/// forward when its VRRP filter is enabled (one XDP program per interface).
#[inline(always)]
pub fn run(ctx: &impl Frame) -> u32 {
    match filter(ctx) {
        Verdict::NotVrrp => xdp_action::XDP_PASS,
        Verdict::Counted(c) => {
            count(c);
            if matches!(c, VrrpCounter::Passed) {
                xdp_action::XDP_PASS
            } else {
                // Off unless the daemon runs at debug level (AYA_LOG_LEVEL).
                debug!(ctx, "vrrp filter drop: reason {}", c as u32);
                xdp_action::XDP_DROP
            }
        }
    }
}

enum Verdict {
    NotVrrp,
    Counted(VrrpCounter),
}

#[inline(always)]
fn count(c: VrrpCounter) {
    if let Some(p) = VRRP_STATS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn filter(ctx: &impl Frame) -> Verdict {
    let (family, hop_limit, vrrp_off) = match ether_type(ctx) {
        Some(ETH_P_IP) => {
            let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
                return Verdict::NotVrrp;
            };
            // SAFETY: bounds-checked by ptr_at.
            let ip = unsafe { *ip };
            if ip.proto != IPPROTO_VRRP {
                return Verdict::NotVrrp;
            }
            // Non-first fragments carry no VRRP header; the kernel reassembles and the
            // daemon validates the result.
            if u16::from_be(ip.frag_off) & 0x3fff != 0 {
                return Verdict::NotVrrp;
            }
            let ihl = (ip.vihl & 0x0f) as usize * 4;
            if ihl < 20 {
                return Verdict::Counted(VrrpCounter::Truncated);
            }
            (FAMILY_V4, ip.ttl, ETH_HLEN + ihl)
        }
        Some(ETH_P_IPV6) => {
            let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
                return Verdict::NotVrrp;
            };
            // SAFETY: bounds-checked by ptr_at.
            let ip = unsafe { *ip };
            // VRRP over IPv6 carries no extension headers; anything else is not ours.
            if ip.nexthdr != IPPROTO_VRRP {
                return Verdict::NotVrrp;
            }
            (FAMILY_V6, ip.hop_limit, ETH_HLEN + IPV6_HLEN)
        }
        _ => return Verdict::NotVrrp,
    };
    // The IPv4 header length is variable: bound it so the verifier sees a constant range.
    if vrrp_off > ETH_HLEN + 60 {
        return Verdict::Counted(VrrpCounter::Truncated);
    }
    let Some(hdr) = ptr_at::<[u8; VRRP_HLEN]>(ctx, vrrp_off) else {
        return Verdict::Counted(VrrpCounter::Truncated);
    };
    // SAFETY: bounds-checked by ptr_at.
    let hdr = unsafe { *hdr };
    let version = hdr[0] >> 4;
    if version != 2 && version != 3 {
        return Verdict::Counted(VrrpCounter::BadVersion);
    }
    if hdr[0] & 0x0f != VRRP_TYPE_ADVERTISEMENT {
        return Verdict::Counted(VrrpCounter::BadType);
    }
    let key = VrrpVridKey::new(ctx.ifindex(), hdr[1], family);
    // SAFETY: read-only lookup; the value is plain data.
    match unsafe { VRRP_VRIDS.get(&key) } {
        None => Verdict::Counted(VrrpCounter::UnknownVrid),
        Some(v) if v.versions & version_bit(version) == 0 => {
            Verdict::Counted(VrrpCounter::BadVersion)
        }
        // TTL 255 proves a multicast advert was not routed; unicast peers may be a router
        // away, and keepalived skips the check for them, so the VRID decides.
        Some(v) if hop_limit != 255 && v.unicast == 0 => Verdict::Counted(VrrpCounter::BadTtl),
        Some(_) => Verdict::Counted(VrrpCounter::Passed),
    }
}
