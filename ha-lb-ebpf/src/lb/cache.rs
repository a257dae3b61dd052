//! The flow cache: a per-CPU, direct-mapped exact-match cache in front of the
//! connection-tracking tables (as Open vSwitch's EMC sits in front of its classifier).
//!
//! Why: on x86 with return-stack mitigations (here AMD's SRSO "Safe RET") every function
//! return costs several nanoseconds, and an LRU hash lookup is four nested kernel calls
//! (lookup, hash, bucket walk, memcmp): ≈ 40 ns, a third of the program. A per-CPU array
//! lookup is inlined by the verifier: no call at all. So a packet of a flow this CPU has
//! forwarded recently is matched here, by its whole key, and sent with what the slot holds:
//! no `LB_CONNS` lookup, no BPF-to-BPF call, no clock helper (jiffies, which the verifier
//! inlines).
//!
//! Only what cannot change the flow's state takes this path: TCP segments without SYN, FIN or
//! RST, and UDP; IPv4 NAT and DR (TUN and IPv6 always go the full way: a slot is one cache
//! line, 64 bytes, which holds an IPv4 flow and not an IPv6 one; the slot's line is the one
//! memory miss of a cached packet besides the frame itself). Everything else — a cache miss, a
//! SYN/FIN/RST, a packet longer than the cached route was checked for, a real server that left
//! its service — takes the full path, which forgets this CPU's slot for the key first and
//! fills it again after a send. A slot is valid for [`VALID_JIFFIES`] (0.064–0.64 s,
//! depending on the kernel's HZ) and while the epoch in `LB_CACHE_EPOCH` is the one it was
//! filled under: the full path refreshes the flow's timestamp and re-checks its route at
//! least that often for a busy flow, and the epoch is bumped when a TCP flow may have moved
//! to another real server (by the data path, see `schedule`) and whenever user space changes
//! the tables, which invalidates every CPU's slots at once.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64},
    macros::map,
    maps::{Array, PerCpuArray},
};
use ha_lb_common::lb::{LbFlow, LbReason, FAMILY_V4, LB_FLOW_CACHE_SLOTS};

use super::{
    conntrack, fwd,
    maps::{scratch, LB_REALS},
    stats, Outcome, Pkt,
};
use crate::parse::{Frame, IPPROTO_TCP, TCP_FIN, TCP_RST, TCP_SYN};

/// Slots per CPU (a power of two): 8192 × 64 bytes = 512 KiB per CPU.
const SLOTS: u32 = LB_FLOW_CACHE_SLOTS;
const SLOT_BITS: u32 = 13;
const _: () = assert!(1 << SLOT_BITS == SLOTS);

/// How long a slot stays valid, in jiffies.
pub const VALID_JIFFIES: u64 = 64;

/// What a slot sends with ([`fill`]'s `kind`).
pub const KIND_NAT: u8 = 1;
pub const KIND_DR: u8 = 2;
pub const KIND_REPLY: u8 = 3;

/// One IPv4 flow direction, in one cache line. Addresses and ports as on the wire.
#[repr(C, align(64))]
pub struct Slot {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    /// `KIND_*`; 0 = empty.
    kind: u8,
    /// The largest IP length the cached route was checked for (`LbFlow::nh_len`).
    nh_len: u16,
    /// `LB_CACHE_EPOCH` when filled.
    epoch: u32,
    /// The low 32 bits of jiffies when filled; valid for [`VALID_JIFFIES`] after (an unsigned
    /// difference: a slot left alone for 2^32 jiffies revives for at most that long, and the
    /// epoch has almost surely moved by then).
    filled: u32,
    real_id: u32,
    real_gen: u32,
    service_id: u32,
    /// NAT forward: the real server; reply: the VIP.
    addr: u32,
    port: u16,
    _pad: u16,
    nh_ifindex: u32,
    /// Destination and source MAC, as the Ethernet header's first 12 bytes.
    nh_macs: [u16; 6],
}

const _: () = assert!(core::mem::size_of::<Slot>() == 64);

/// CPU `c`'s slots are `c * SLOTS ..`: one plain array rather than a per-CPU one, whose
/// lookup first reads the element's per-CPU pointer from a table (a second dependent cache
/// miss per packet, measured). Mmapable, so that the values start page-aligned and every slot
/// is exactly one cache line. User space sizes it to the possible CPUs (`Bpf::load`); a CPU
/// beyond the size finds no slot and takes the full path.
#[map(name = "LB_FLOW_CACHE")]
static LB_FLOW_CACHE: Array<Slot> = Array::with_max_entries(SLOTS, BPF_F_MMAPABLE);

/// Bumped (never reset) whenever a cached flow may have changed: see the module docs. Two
/// words, each with one kind of writer, so that neither can move the epoch backwards: [0] is
/// added to atomically by the data path, [1] only by user space (read, +1, write: the daemon
/// is its only writer). A slot is valid under their (wrapping) sum.
#[map(name = "LB_CACHE_EPOCH")]
pub static LB_CACHE_EPOCH: Array<u64> = Array::with_max_entries(2, 0);

/// Per CPU: [packets sent from a slot, slots filled].
#[map(name = "LB_CACHE_STATS")]
static LB_CACHE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
fn stat(i: u32) {
    if let Some(p) = LB_CACHE_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn epoch() -> u32 {
    let w = |i: u32| match LB_CACHE_EPOCH.get(i) {
        Some(e) => *e,
        None => 0,
    };
    w(0).wrapping_add(w(1)) as u32
}

/// Invalidates every CPU's slots (a TCP flow was scheduled anew: see `process`).
#[inline(always)]
pub fn bump_epoch() {
    if let Some(e) = LB_CACHE_EPOCH.get_ptr_mut(0) {
        // SAFETY: array value shared by all CPUs, 8-byte aligned: an atomic add (BPF XADD;
        // `AtomicU64::fetch_add` is not offered on this target, which has no compare-and-swap).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                e, 1,
            )
        };
    }
}

/// This CPU's slot for `pkt`'s key. The words of the 5-tuple are mixed in one after another
/// (multiply, fold), so that keys differing in correlated fields — consecutive ports of one
/// client, consecutive clients — spread like random ones; a collision only costs a miss (the
/// whole key is compared), but two colliding busy flows miss on every packet.
#[inline(always)]
fn slot(pkt: &Pkt) -> Option<*mut Slot> {
    if pkt.family != FAMILY_V4 {
        return None;
    }
    let p = (pkt.sport as u32) << 16 | pkt.dport as u32;
    let mut h = pkt.src[0].wrapping_mul(0x9e37_79b1);
    h = (h ^ h >> 16 ^ pkt.dst[0]).wrapping_mul(0x85eb_ca6b);
    h = (h ^ h >> 13 ^ p).wrapping_mul(0xc2b2_ae35);
    h = (h ^ h >> 16 ^ pkt.proto as u32).wrapping_mul(0x9e37_79b1);
    // SAFETY: plain helper call (inlined by the verifier on x86-64).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    LB_FLOW_CACHE.get_ptr_mut(cpu.wrapping_mul(SLOTS) + (h >> (32 - SLOT_BITS)))
}

/// Whether slot `s` holds `pkt`'s flow direction (`pkt` is IPv4: see [`slot`]).
#[inline(always)]
fn same_key(s: *const Slot, pkt: &Pkt) -> bool {
    // SAFETY: `s` points into a per-CPU map value.
    unsafe {
        (*s).sport == pkt.sport
            && (*s).dport == pkt.dport
            && (*s).src == pkt.src[0]
            && (*s).dst == pkt.dst[0]
            && (*s).proto == pkt.proto
    }
}

/// Sends `pkt` from this CPU's slot, if the slot holds its flow and is valid (see the module
/// docs); `None`: take the full path.
#[inline(always)]
pub fn send(ctx: &impl Frame, pkt: &Pkt) -> Option<Outcome> {
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return None;
    }
    let s = slot(pkt)?;
    // SAFETY: per-CPU map value, used by this CPU only (XDP runs with migration disabled); the
    // fields are read one by one.
    let (kind, ep, filled, nh_len) = unsafe { ((*s).kind, (*s).epoch, (*s).filled, (*s).nh_len) };
    // A GSO packet (TC) by its segments' length, as the route was checked.
    if kind == 0 || fwd::wire_len(ctx, FAMILY_V4, pkt.ip_len) > nh_len || !same_key(s, pkt) {
        return None;
    }
    // SAFETY: plain helper call (inlined by the verifier on 64-bit).
    let now = unsafe { bpf_jiffies64() } as u32;
    if now.wrapping_sub(filled) >= VALID_JIFFIES as u32 || ep != epoch() {
        return None;
    }
    // SAFETY: as above.
    let (real_id, real_gen, svc_id, addr, port) =
        unsafe { ((*s).real_id, (*s).real_gen, (*s).service_id, [(*s).addr, 0, 0, 0], (*s).port) };
    // The flow's real server still in its service, for either direction (a reply of one that
    // left is the full path's to pass untranslated).
    match LB_REALS.get(real_id) {
        Some(r) if conntrack::real_alive(r, real_gen, svc_id) => {}
        _ => return None,
    }
    let reply = kind == KIND_REPLY;
    stats::traffic(svc_id, Some(real_id), pkt.len as u64, reply, false);
    if kind != KIND_DR {
        fwd::rewrite(ctx, pkt, !reply, &addr, port);
    }
    // SAFETY: as above (the MACs by reference: a copy would be a `memmove` call).
    let (macs, out_if) = unsafe { (&*(&raw const (*s).nh_macs), (*s).nh_ifindex) };
    let reason = match kind {
        KIND_REPLY => LbReason::NatOut,
        KIND_NAT => LbReason::NatIn,
        _ => LbReason::Dr,
    };
    stat(0);
    match fwd::out(ctx, macs, out_if) {
        fwd::Fib::Sent(a) => Some((a, reason)),
        // Detached since the slot was filled: NAT passes translated, as the full path would.
        fwd::Fib::NoXdp if kind != KIND_DR => {
            Some((aya_ebpf::bindings::xdp_action::XDP_PASS, LbReason::EgressNoXdp))
        }
        fwd::Fib::NoXdp => Some((aya_ebpf::bindings::xdp_action::XDP_DROP, LbReason::EgressNoXdp)),
        _ => Some((aya_ebpf::bindings::xdp_action::XDP_DROP, LbReason::FibOther)),
    }
}

/// Empties this CPU's slot for `pkt` if it holds `pkt`'s flow: the full path is about to
/// decide anew (and [`fill`]s the slot again after a send). Notes the epoch in the scratch
/// map first, so a slot filled later is stale at once if a reschedule happens meanwhile.
#[inline(always)]
pub fn forget(pkt: &Pkt) {
    let Some(sc) = scratch() else { return };
    // SAFETY: per-CPU scratch map.
    unsafe { (*sc).cache_epoch = epoch() };
    let Some(s) = slot(pkt) else { return };
    if same_key(s, pkt) {
        // SAFETY: as above.
        unsafe { (*s).kind = 0 };
    }
}

/// Caches the flow `pkt` was just sent for: `f` is its connection-tracking entry (forward or
/// NAT reply), `kind` one of `KIND_*`, `ident` the (real id, generation, service id) and
/// `to` the NAT (address, port) the full path sent with — taken from the values it decided
/// with, not re-read from `f`: another CPU's insert into a full table may have evicted and
/// reused `f`'s element meanwhile. The next hop is read from `f`, and the slot is left empty
/// unless `f` still names the same flow and route afterwards. TUN flows are not cached.
#[inline(always)]
pub fn fill(pkt: &Pkt, f: *const LbFlow, kind: u8, ident: (u32, u32, u32), to: (u32, u16)) {
    let (real_id, real_gen, svc_id) = ident;
    let Some(s) = slot(pkt) else { return };
    let Some(sc) = scratch() else { return };
    // SAFETY: per-CPU map values; `f` is an LRU value (read field by field). `kind` is written
    // last, and only if the entry was unchanged around the copy of its next hop.
    unsafe {
        (*s).kind = 0;
        let nh_len = core::ptr::read_volatile(&raw const (*f).nh_len);
        if nh_len == 0 {
            return;
        }
        (*s).src = pkt.src[0];
        (*s).dst = pkt.dst[0];
        (*s).sport = pkt.sport;
        (*s).dport = pkt.dport;
        (*s).proto = pkt.proto;
        (*s).nh_len = nh_len;
        (*s).epoch = (*sc).cache_epoch;
        (*s).filled = bpf_jiffies64() as u32;
        (*s).real_id = real_id;
        (*s).real_gen = real_gen;
        (*s).service_id = svc_id;
        (*s).addr = to.0;
        (*s).port = to.1;
        (*s).nh_ifindex = (*f).nh_ifindex;
        let m = (&raw mut (*s).nh_macs).cast::<u32>();
        let n = (&raw const (*f).nh_macs).cast::<u32>();
        core::ptr::write_volatile(m, core::ptr::read_volatile(n));
        core::ptr::write_volatile(m.add(1), core::ptr::read_volatile(n.add(1)));
        core::ptr::write_volatile(m.add(2), core::ptr::read_volatile(n.add(2)));
        let same = core::ptr::read_volatile(&raw const (*f).nh_len) == nh_len
            && core::ptr::read_volatile(&raw const (*f).real_id) == real_id
            && core::ptr::read_volatile(&raw const (*f).real_gen) == real_gen
            && core::ptr::read_volatile(&raw const (*f).service_id) == svc_id;
        if !same {
            return;
        }
        (*s).kind = kind;
    }
    stat(1);
}
