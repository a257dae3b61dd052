//! Choosing a real server for a new flow: persistence templates first, then the service's
//! scheduler over its active backend set.
//!
//! - rr, wrr: walk the set's ring (user space lays wrr out as a smooth weighted sequence) with a
//!   per-CPU cursor per service;
//! - sh, mh: index the ring (a weighted bucket table / a Maglev table) by a hash of the client
//!   address (and port with `LB_SVC_F_HASH_PORT`);
//! - lc, wlc: scan the set for the fewest active connections (weighted: fewest per weight).

use ha_lb_common::lb::{
    LbBackendSet, LbPersist, LbPersistKey, LbReal, LbService, LB_ALGO_LC, LB_ALGO_MH, LB_ALGO_RR,
    LB_ALGO_SH, LB_ALGO_WLC, LB_ALGO_WRR, LB_REALS_PER_SERVICE, LB_REAL_F_AVAILABLE,
    LB_REAL_F_QUIESCED, LB_RING_CHUNK, LB_SVC_F_HASH_PORT,
};

use super::{
    maps::{scratch, LB_PERSIST, LB_REALS, LB_RING, LB_RR, LB_SETS},
    stats::load,
    Pkt,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// Whether `real` may take a new flow of service `svc_id` (present, same generation, not
/// drained).
#[inline(always)]
pub fn schedulable(real: &LbReal, gen: u32, svc_id: u32) -> bool {
    real.gen == gen
        && real.flags & (LB_REAL_F_AVAILABLE | LB_REAL_F_QUIESCED) == LB_REAL_F_AVAILABLE
        && real.service_id == svc_id
}

/// A real server for a new flow of `svc`, or `None` when no real server can take it.
#[inline(always)]
pub fn pick(svc: &LbService, pkt: &Pkt, now: u64) -> Option<(u32, *const LbReal)> {
    let persist = svc.persistence_timeout != 0;
    let sc = scratch()?;
    // SAFETY: per-CPU scratch map.
    let pkey = unsafe { &raw mut (*sc).pkey };
    if persist {
        set_persist_key(pkey, svc.id, svc.persist_prefix, pkt);
        // SAFETY: as above.
        if let Some(t) = LB_PERSIST.get_ptr_mut(unsafe { &*pkey }) {
            // SAFETY: map value pointer from a successful lookup.
            let tv = unsafe { *t };
            // Signed: user space may date a template of a client with open connections a
            // little ahead (`XdpDataplane::hold_templates`), never more than seconds.
            let age = now.wrapping_sub(tv.last_seen_ns) as i64;
            if age <= (svc.persistence_timeout as u64 * NS_PER_SEC) as i64 {
                if let Some(r) = LB_REALS.get_ptr(tv.real_id) {
                    // SAFETY: array value pointer.
                    if schedulable(unsafe { &*r }, tv.real_gen, svc.id) {
                        if age > 0 {
                            // SAFETY: as above; a racing writer can only store another
                            // timestamp.
                            unsafe { (*t).last_seen_ns = now };
                        }
                        return Some((tv.real_id, r));
                    }
                }
            }
        }
    }
    let set = LB_SETS.get_ptr(svc.set_index())?;
    let id = match svc.lb_algo {
        LB_ALGO_RR | LB_ALGO_WRR => ring_rr(set, svc.id),
        LB_ALGO_SH | LB_ALGO_MH => {
            ring_hash(set, hash_client(pkt, svc.flags & LB_SVC_F_HASH_PORT != 0))
        }
        LB_ALGO_LC => least_checked(svc.set_index(), 0),
        LB_ALGO_WLC => least_checked(svc.set_index(), 1),
        _ => None,
    }?;
    let r = LB_REALS.get_ptr(id)?;
    // SAFETY: array value pointer.
    let real = unsafe { &*r };
    // The ring only holds schedulable servers; this guards against a packet that raced a set
    // switch and read a slot that is being rewritten.
    if !schedulable(real, real.gen, svc.id) {
        return None;
    }
    if persist {
        let t = LbPersist { real_id: id, real_gen: real.gen, last_seen_ns: now };
        // SAFETY: as above; still holds this client's key.
        let _ = LB_PERSIST.insert(unsafe { &*pkey }, &t, 0);
    }
    Some((id, r))
}

/// Restarts the persistence timer of the client of `pkt` (called while its flows are alive).
#[inline(always)]
pub fn refresh_template(svc_id: u32, prefix: u8, pkt: &Pkt, now: u64) {
    let Some(sc) = scratch() else { return };
    // SAFETY: per-CPU scratch map.
    let pkey = unsafe { &raw mut (*sc).pkey };
    set_persist_key(pkey, svc_id, prefix, pkt);
    // SAFETY: as above.
    if let Some(t) = LB_PERSIST.get_ptr_mut(unsafe { &*pkey }) {
        // SAFETY: map value pointer from a successful lookup. Never moved back (see `pick`).
        unsafe {
            if now.wrapping_sub((*t).last_seen_ns) as i64 > 0 {
                (*t).last_seen_ns = now;
            }
        }
    }
}

#[inline(always)]
fn set_persist_key(k: *mut LbPersistKey, svc_id: u32, prefix: u8, pkt: &Pkt) {
    // SAFETY: `k` points into the per-CPU scratch map.
    unsafe {
        (*k).service_id = svc_id;
        (*k).family = pkt.family;
        (*k)._pad8 = 0;
        (*k)._pad16 = 0;
        (*k).client = [
            pkt.src[0] & prefix_mask(prefix, 0),
            pkt.src[1] & prefix_mask(prefix, 1),
            pkt.src[2] & prefix_mask(prefix, 2),
            pkt.src[3] & prefix_mask(prefix, 3),
        ];
    }
}

/// Word `w` (0..4, wire order) of the netmask of prefix length `prefix` (0: all ones, the
/// whole address). IPv4 uses word 0 only (the others are zero in our representation).
#[inline(always)]
fn prefix_mask(prefix: u8, w: u32) -> u32 {
    if prefix == 0 {
        return u32::MAX;
    }
    let p = prefix as u32;
    let bits = if p > 32 * w { (p - 32 * w).min(32) } else { 0 };
    let host = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    host.to_be()
}

#[inline(always)]
fn ring_at(set: *const LbBackendSet, pos: u32) -> Option<u32> {
    // SAFETY: array value pointer.
    let first = unsafe { (*set).ring_chunk };
    let chunk = LB_RING.get(first + pos / LB_RING_CHUNK as u32)?;
    Some(chunk.reals[(pos % LB_RING_CHUNK as u32) as usize])
}

#[inline(always)]
fn ring_rr(set: *const LbBackendSet, svc_id: u32) -> Option<u32> {
    // SAFETY: array value pointer.
    let len = unsafe { (*set).ring_len };
    if len == 0 {
        return None;
    }
    let cursor = LB_RR.get_ptr_mut(svc_id)?;
    // SAFETY: per-CPU slot.
    let pos = unsafe {
        let mut pos = *cursor;
        if pos >= len {
            pos = 0;
        }
        *cursor = pos + 1;
        pos
    };
    ring_at(set, pos)
}

#[inline(always)]
fn ring_hash(set: *const LbBackendSet, h: u32) -> Option<u32> {
    // SAFETY: array value pointer.
    let len = unsafe { (*set).ring_len };
    if len == 0 {
        return None;
    }
    ring_at(set, h % len)
}

#[inline(always)]
fn least_checked(set_index: u32, weighted: u32) -> Option<u32> {
    match ha_lb_sched_least(set_index, weighted) {
        u32::MAX => None,
        id => Some(id),
    }
}

/// The real server of backend set `set_index` with the fewest active connections (`weighted`
/// != 0: per unit of weight; IPVS wlc compares `active_a * weight_b < active_b * weight_a`),
/// or `u32::MAX` if none has a weight. Ties go to the first in the set.
///
/// A global BPF function: the verifier checks it once on its own, with unknown arguments,
/// instead of walking its 256-iteration loop again for every distinct caller state (which
/// took the program from ~40k to over 500k verified instructions).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ha_lb_sched_least(set_index: u32, weighted: u32) -> u32 {
    let Some(set) = LB_SETS.get_ptr(set_index) else { return u32::MAX };
    // SAFETY: array value pointer.
    let n = unsafe { (*set).n_reals } as usize;
    let mut best = u32::MAX;
    let mut best_load: u64 = 0;
    let mut best_weight: u64 = 1;
    let mut i = 0usize;
    while i < LB_REALS_PER_SERVICE {
        if i >= n {
            break;
        }
        // SAFETY: i < LB_REALS_PER_SERVICE, the arrays' length (the compiler loses track of
        // that bound after loop rotation and would keep a panic branch the verifier rejects).
        let (w, id) =
            unsafe { (*(*set).weights.get_unchecked(i) as u64, *(*set).reals.get_unchecked(i)) };
        if w != 0 {
            let load = load(id) & 0xffff_ffff;
            let better = best == u32::MAX
                || if weighted != 0 {
                    load * best_weight < best_load * w
                } else {
                    load < best_load
                };
            if better {
                best = id;
                best_load = load;
                best_weight = w;
            }
        }
        i += 1;
    }
    best
}

#[inline(always)]
fn mix(h: u32, v: u32) -> u32 {
    let k = v.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// A murmur3-style hash of the client address (and source port if `port`).
#[inline(always)]
fn hash_client(pkt: &Pkt, port: bool) -> u32 {
    let mut h = 0x9e37_79b9u32;
    h = mix(h, pkt.src[0]);
    h = mix(h, pkt.src[1]);
    h = mix(h, pkt.src[2]);
    h = mix(h, pkt.src[3]);
    if port {
        h = mix(h, pkt.sport as u32);
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
