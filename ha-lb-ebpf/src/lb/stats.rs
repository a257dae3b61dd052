//! Counters: per-CPU per-reason and per-service / per-real-server traffic and connections
//! (exact), and the shared live load estimate the least-connection schedulers read.

use ha_lb_common::lb::{LbReason, LbTraffic};

use super::maps::{LB_REAL_LOAD, LB_REAL_STATS, LB_REASONS, LB_SERVICE_STATS};

#[inline(always)]
pub fn count(r: LbReason) {
    if let Some(p) = LB_REASONS.get_ptr_mut(r as u32) {
        // SAFETY: per-CPU slot; nothing else on this CPU writes it concurrently.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn add(p: *mut LbTraffic, bytes: u64, out: bool, new_conn: bool) {
    // SAFETY: per-CPU slot; nothing else on this CPU writes it concurrently.
    unsafe {
        if out {
            (*p).out_packets += 1;
            (*p).out_bytes += bytes;
        } else {
            (*p).in_packets += 1;
            (*p).in_bytes += bytes;
        }
        if new_conn {
            (*p).new_conns += 1;
        }
    }
}

/// Counts one packet of `bytes` for service `svc` and real server `real` (`None`: the real
/// server's id has been given to another one since), and a new connection if `new_conn`.
#[inline(always)]
pub fn traffic(svc: u32, real: Option<u32>, bytes: u64, out: bool, new_conn: bool) {
    if let Some(p) = LB_SERVICE_STATS.get_ptr_mut(svc) {
        add(p, bytes, out, new_conn);
    }
    if let Some(real) = real {
        if let Some(p) = LB_REAL_STATS.get_ptr_mut(real) {
            add(p, bytes, out, new_conn);
        }
        if new_conn {
            if let Some(l) = LB_REAL_LOAD.get_ptr_mut(real) {
                // SAFETY: shared slot; a racing CPU can make this lose one update, which the
                // user-space resync corrects (see `LbTraffic`).
                unsafe { *l += 1 };
            }
        }
    }
}

/// Counts a connection of service `svc` on real server `real` as closed (`aborted`: while
/// half-open, never established).
#[inline(always)]
pub fn conn_closed(svc: u32, real: u32, aborted: bool) {
    if let Some(p) = LB_SERVICE_STATS.get_ptr_mut(svc) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*p).closed_conns += 1;
            if aborted {
                (*p).aborted += 1;
            }
        }
    }
    if let Some(p) = LB_REAL_STATS.get_ptr_mut(real) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*p).closed_conns += 1;
            if aborted {
                (*p).aborted += 1;
            }
        }
    }
    if let Some(l) = LB_REAL_LOAD.get_ptr_mut(real) {
        // SAFETY: shared slot, as in `traffic`.
        unsafe {
            if *l > 0 {
                *l -= 1;
            }
        }
    }
}

/// Counts a connection of service `svc` on real server `real` as established (a TCP flow's
/// client acknowledged, or a new UDP flow).
#[inline(always)]
pub fn conn_established(svc: u32, real: u32) {
    if let Some(p) = LB_SERVICE_STATS.get_ptr_mut(svc) {
        // SAFETY: per-CPU slot.
        unsafe { (*p).established += 1 };
    }
    if let Some(p) = LB_REAL_STATS.get_ptr_mut(real) {
        // SAFETY: per-CPU slot.
        unsafe { (*p).established += 1 };
    }
}

/// The live active-connection estimate of a real server.
#[inline(always)]
pub fn load(real: u32) -> u64 {
    match LB_REAL_LOAD.get(real) {
        Some(l) => *l,
        None => 0,
    }
}
