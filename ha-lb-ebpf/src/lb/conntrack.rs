//! Connection tracking: one LRU entry per flow direction the program must recognise.
//!
//! - forward entry, keyed by client -> VIP: the real server (id + generation) and its address;
//! - NAT reply entry, keyed by real server -> client: the VIP and port to restore.
//!
//! A flow stays on its real server while the entry lives and the real server is still in the
//! service (same generation, not removed). Active connections go up when a forward entry is
//! created and down once per entry (`LB_FLOW_F_CLOSED`) on FIN/RST, on rescheduling, or —
//! from user space — when the sweeper expires it. The flag is set with a plain store: two CPUs
//! closing the same flow in the same instant (client FIN and server FIN of a NAT flow on
//! different receive queues) can count it twice.

use ha_lb_common::lb::{
    LbConfig, LbFlow, LbFlowKey, LbReal, LB_FLOW_F_CLOSED, LB_REAL_F_AVAILABLE,
};

use super::{
    maps::{LB_CONFIG, LB_REALS},
    stats::conn_closed,
    Pkt,
};

/// Refresh `last_seen_ns` at most this often (fewer writes to shared cache lines).
pub const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn key(pkt: &Pkt) -> LbFlowKey {
    LbFlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: 0,
    }
}

/// How long a flow may stay idle: TCP established / TCP after FIN or RST / UDP.
#[inline(always)]
pub fn timeout_ns(tcp: bool, flags: u32) -> u64 {
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
    // Only while the id still names the same real server: a recycled id's counts start fresh.
    if let Some(r) = LB_REALS.get(real_id) {
        if r.gen == real_gen {
            conn_closed(svc_id, real_id);
        }
    }
}
