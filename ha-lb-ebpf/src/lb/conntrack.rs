//! Connection tracking: one LRU entry per flow direction the program must recognise.
//!
//! - forward entry, keyed by client -> VIP: the real server (id + generation) and its address;
//! - NAT reply entry, keyed by real server -> client: the VIP and port to restore.
//!
//! A flow stays on its real server while the entry lives and the real server is still in the
//! service (same generation, not removed). Connections go up when a forward entry is created
//! and down once per entry (`LB_FLOW_F_CLOSED`) on FIN/RST, on rescheduling, or — from user
//! space — when the sweeper expires it. A TCP connection is half-open from its SYN until its
//! client's first ACK (`LB_FLOW_F_HALF_OPEN`, IPVS's SYN_RECV: 60 s idle at most), and active
//! only from then on. The flag is set with a plain store: two CPUs
//! closing the same flow in the same instant (client FIN and server FIN of a NAT flow on
//! different receive queues) can count it twice.

use ha_lb_common::lb::{
    LbConfig, LbFlow, LbFlowKey, LbReal, LbReason, LB_FLOW_F_CLOSED, LB_FLOW_F_HALF_OPEN,
    LB_FLOW_F_REPLY, LB_REAL_F_AVAILABLE, TCP_SYN_RECV_TIMEOUT_NS,
};

use super::{
    copy_addr,
    maps::{scratch, LB_CONFIG, LB_CONNS, LB_REALS},
    stats::{conn_closed, count},
    Pkt,
};

/// Refresh `last_seen_ns` at most this often (fewer writes to shared cache lines).
pub const REFRESH_NS: u64 = 1_000_000_000;

/// Writes the connection-tracking key of `pkt` into `k`.
#[inline(always)]
pub fn set_key(k: *mut LbFlowKey, pkt: &Pkt) {
    // SAFETY: `k` points into the per-CPU scratch map.
    unsafe {
        (*k).src = pkt.src;
        (*k).dst = pkt.dst;
        (*k).sport = pkt.sport;
        (*k).dport = pkt.dport;
        (*k).proto = pkt.proto;
        (*k).family = pkt.family;
        (*k)._pad = 0;
    }
}

/// How long a flow may stay idle: TCP half-open (IPVS's SYN_RECV, fixed) / established /
/// after FIN or RST / UDP.
#[inline(always)]
pub fn timeout_ns(tcp: bool, flags: u32) -> u64 {
    if tcp && flags & LB_FLOW_F_HALF_OPEN != 0 {
        return TCP_SYN_RECV_TIMEOUT_NS;
    }
    let cfg = match LB_CONFIG.get(0) {
        Some(c) => *c,
        None => LbConfig::DEFAULT,
    };
    let t = if !tcp {
        cfg.udp_timeout_ns
    } else if flags & LB_FLOW_F_CLOSED != 0 {
        cfg.tcp_fin_timeout_ns
    } else {
        cfg.tcp_timeout_ns
    };
    if t == 0 {
        // Unset configuration: IPVS defaults.
        if !tcp {
            LbConfig::DEFAULT.udp_timeout_ns
        } else if flags & LB_FLOW_F_CLOSED != 0 {
            LbConfig::DEFAULT.tcp_fin_timeout_ns
        } else {
            LbConfig::DEFAULT.tcp_timeout_ns
        }
    } else {
        t
    }
}

/// Whether the flow's real server is still the one it was scheduled to (same id generation,
/// still in service `svc_id`). Drained (weight 0) servers keep their flows.
#[inline(always)]
pub fn real_alive(real: &LbReal, gen: u32, svc_id: u32) -> bool {
    real.gen == gen && real.flags & LB_REAL_F_AVAILABLE != 0 && real.service_id == svc_id
}

/// Marks forward entry `f` (whose flags were `flags`) closed and counts the closed
/// connection, once per entry.
#[inline(always)]
pub fn close(f: *mut LbFlow, svc_id: u32, real_id: u32, real_gen: u32, flags: u32) {
    if flags & LB_FLOW_F_CLOSED != 0 {
        return;
    }
    // SAFETY: `f` points into an LRU map value.
    unsafe { (*f).flags = flags | LB_FLOW_F_CLOSED };
    let aborted = flags & LB_FLOW_F_HALF_OPEN != 0;
    // Only while the id still names the same real server in the same service: a recycled
    // id's counts start fresh, and a real server that left its service (or whose service was
    // deleted, its id perhaps given to another) has `LB_REAL_NO_SERVICE` (the sweep recounts
    // its flows as gone).
    if let Some(r) = LB_REALS.get(real_id) {
        if r.gen == real_gen && r.service_id == svc_id {
            conn_closed(svc_id, real_id, aborted);
        }
    }
}

/// Writes the NAT reply entry of the flow of `pkt` (client -> VIP) served by `real`: keyed by
/// real server -> client, restoring VIP:port.
///
/// Not inlined on purpose: it runs for new flows and once-a-second refreshes only, and as a
/// BPF subprogram it keeps its spills out of the main program's frame.
#[inline(never)]
pub fn put_reply(pkt: &Pkt, real: *const LbReal, real_id: u32, svc_id: u32, now: u64) {
    let Some(sc) = scratch() else { return };
    // SAFETY: array value pointer (a live entry is rewritten only with the same address and
    // port: see `LbReal::tun_src`) and the
    // per-CPU scratch map.
    unsafe {
        let k = &raw mut (*sc).rkey;
        copy_addr(&raw mut (*k).src, &raw const (*real).addr);
        (*k).dst = pkt.src;
        (*k).sport = (*real).port;
        (*k).dport = pkt.sport;
        (*k).proto = pkt.proto;
        (*k).family = pkt.family;
        (*k)._pad = 0;
        let f = &raw mut (*sc).flow;
        (*f).real_id = real_id;
        (*f).real_gen = (*real).gen;
        (*f).service_id = svc_id;
        (*f).flags = LB_FLOW_F_REPLY;
        (*f).last_seen_ns = now;
        (*f).addr = pkt.dst;
        (*f).port = pkt.dport;
        clear_next_hop(f);
        if LB_CONNS.insert(&*k, &*f, 0).is_err() {
            count(LbReason::ConntrackFull);
        }
    }
}

/// Empties the next-hop cache of entry value `f` (and its padding). Volatile word stores: a
/// zeroing the compiler merged into a memset would be a byte-loop call on this target.
#[inline(always)]
pub fn clear_next_hop(f: *mut LbFlow) {
    // SAFETY: `f` points to a whole `LbFlow` (scratch map); `nh_macs` is 4-byte aligned.
    unsafe {
        core::ptr::write_volatile(&raw mut (*f).nh_len, 0);
        core::ptr::write_volatile(&raw mut (*f).nh_ifindex, 0);
        let m = (&raw mut (*f).nh_macs).cast::<u32>();
        core::ptr::write_volatile(m, 0);
        core::ptr::write_volatile(m.add(1), 0);
        core::ptr::write_volatile(m.add(2), 0);
        core::ptr::write_volatile(&raw mut (*f)._pad32, 0);
    }
}
