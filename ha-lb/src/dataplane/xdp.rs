//! The XDP data plane: [`XdpDataplane`] drives the `ha_lb_xdp` program's maps.
//!
//! `apply` is split in two:
//! - a pure planner ([`plan`]) that diffs the desired state against what was last applied and
//!   produces an ordered list of map operations plus the new bookkeeping (service/real ids,
//!   active slots, ring regions). The order is what keeps live services consistent:
//!   1. a new real server's `LB_REALS` entry (and a drained one coming back) before any set
//!      that names it;
//!   2. the new backend set and its ring into the service's *inactive* slot;
//!   3. one `LB_SERVICES` update that flips the active slot (hash-map updates replace the whole
//!      value, so a packet sees the old set or the new one, never a mix);
//!   4. only then: drained servers marked quiesced, removed servers marked gone (their flows
//!      are rescheduled on their next packet), ids and ring regions released — for reuse in a
//!      later apply, never the same one.
//! - an executor that performs the operations one map update at a time.
//!
//! If a map update fails (it should not: sizes are checked while planning), the data plane
//! refuses further applies: the daemon should drop it and build a new one.
//!
//! # What the integrator must provide
//! - `forwarding=1` on every interface the program is attached to (`bpf_fib_lookup` refuses
//!   to route otherwise and the program passes NAT packets / drops DR ones, counted as
//!   `fib_other`); IPv6 forwarding for IPv6 services. NAT real servers route replies via the
//!   director, as for LVS-NAT.
//! - DR: the director must know the real servers' MACs (neighbour entries). On a miss the
//!   program drops (passing would deliver the packet to the local VIP) and counts `no_neigh`;
//!   health checks that talk to the real servers keep the entries warm. NAT passes the already
//!   rewritten packet on a miss and the kernel resolves and forwards it — for replies (source
//!   = VIP, a local address) the kernel only does so with `accept_local=1` on the real-server
//!   side; in practice the client's neighbour entry exists (it ARPed for the VIP).
//! - XDP: the program attached to every interface the routes toward real servers and clients
//!   leave by, not to a bridge or VLAN device above them (attach to the bridge's or VLAN's
//!   ports, or use the TC hook). An XDP redirect reaches only an interface running an XDP
//!   program in native mode, so the program redirects only to interfaces it is attached to
//!   natively (`LB_TX_PORTS`, filled at attach; a generic-mode attach is left out); toward
//!   any other, NAT passes the translated packet for the kernel to
//!   forward (replies, whose source is the VIP, only with `accept_local=1` on the ingress),
//!   DR and TUN drop, counted `egress_no_xdp`. The TC hook redirects anywhere.
//! - XDP on a NIC that strips VLAN tags in hardware (`rxvlan` on) sees tagged frames untagged
//!   (XDP has no access to the stripped tag before Linux 6.8): turn it off (`ethtool -K <dev>
//!   rxvlan off`) where tagged traffic arrives, or use the TC hook, which passes frames whose
//!   tag the kernel took out of band (`vlan`).
//! - `maintain()` every few seconds: it expires idle connections and recounts open ones.
//! - One XDP program per interface: where VRRP and service traffic share an interface, attach
//!   `ha_lb_xdp` and turn on its VRRP filter ([`XdpDataplane::set_vrrp_filter`]; same `Bpf`
//!   object, so the VRRP daemon must use this object's `VRRP_VRIDS` map: see
//!   [`XdpDataplane::bpf_mut`]).
//!
//! # Limits and caveats
//! - Connection counts: opened/closed are exact per-CPU counters, but a connection that leaves
//!   the LRU table without FIN/RST (eviction under pressure) is only noticed at the next sweep,
//!   which recounts from the table; until then active counts are too high. lc/wlc schedule by a
//!   shared load counter updated without atomics (the BPF target offers Rust none without a
//!   crate-level unstable feature): two CPUs racing can lose an update, corrected at each sweep.
//!   Two CPUs closing the same flow at the same instant can count it closed twice (same cure).
//!   A TCP connection is half-open from its SYN until its client's first ACK (IPVS's
//!   SYN_RECV): not active (it counts in the lc/wlc load, as the table holds it), and
//!   expired after 60 s idle; connection sync sends it once established.
//! - TCP is scheduled on a SYN only (as IPVS without `sloppy_tcp`): another segment with no
//!   flow passes to the kernel (`tcp_no_flow`), which answers a local VIP with a RST; sh/mh
//!   services adopt it instead (`adopted`: sent where the hash points, its flow recorded
//!   half-open until the client's next ACK, not counted as a new connection; never a SYN+ACK
//!   or RST), so a connection whose entry was lost stays on its server while the set is
//!   unchanged, and a flood of stray segments holds table entries for 60 s, not 900.
//! - A NAT flow takes two table entries (`LB_CONNS_MAX` = 262144 entries, a compile-time
//!   constant like every map size). An evicted reply entry is written again by the client's
//!   next packet (within the one-second refresh interval); until then replies pass
//!   un-rewritten to the kernel. An evicted forward entry: sh/mh adopt the flow's next segment
//!   (the same server); for rr/wrr/lc/wlc it passes (`tcp_no_flow`) and the connection is
//!   reset, as with IPVS; UDP is scheduled anew.
//! - Persistence is per client network (`persistence_granularity`, default the full address),
//!   and a drained (weight 0) server gets no new connections even from persistent clients (IPVS with
//!   `expire_quiescent_template=1`). A template lives while a connection it sent is open, idle
//!   or not, as IPVS keeps one while it controls connections: `maintain()` dates it ahead so
//!   it outlasts the next sweep ([`XdpDataplane::hold_templates`]); a connection's packets
//!   refresh it too.
//! - Not load-balanced, passed to the kernel and counted: IP fragments, IPv4 options, IPv6
//!   extension headers, VLAN-tagged frames, ICMP other than errors about known flows (those are
//!   translated and forwarded as IPVS does: `icmp_in` / `icmp_out`).
//! - TTL/hop limit is not decremented (as IPVS). TUN is IPv4-in-IPv4 and IPv6-in-IPv6 (IPVS's
//!   ipip and ip6ip6), not across families; its outer source address (this host's route
//!   source toward the real server) is looked up when applied and again by `maintain()`,
//!   which rewrites it when the route changed.
//! - All state lives in the loaded object: a restarted daemon starts with an empty connection
//!   table (sh/mh keep most clients on the same servers, the Maglev table being a function of
//!   the configuration; rr/wrr/lc/wlc do not), unless
//!   `lvs_sync_daemon` refills it from the other director ([`XdpDataplane::import_flows`],
//!   and the persistence templates with [`XdpDataplane::import_templates`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId};
use ha_lb_common::lb::{
    LbBackendSet, LbConfig, LbFlow, LbFlowKey, LbPersist, LbPersistKey, LbReal, LbService,
    LbServiceKey, LbTraffic, IPPROTO_TCP, LB_ALGO_LC, LB_ALGO_MH, LB_ALGO_RR, LB_ALGO_SH,
    LB_ALGO_WLC, LB_ALGO_WRR, LB_CFG_F_VRRP_FILTER, LB_FLOW_F_CLOSED, LB_FLOW_F_DR,
    LB_FLOW_F_HALF_OPEN, LB_FLOW_F_PERSIST, LB_FLOW_F_REPLY, LB_FLOW_F_TUN,
    LB_FLOW_PERSIST_PREFIX_SHIFT, LB_KIND_DR, LB_KIND_NAT, LB_KIND_TUN, LB_REALS_MAX,
    LB_REAL_F_AVAILABLE, LB_REAL_F_QUIESCED, LB_REAL_NO_SERVICE, LB_RING_CHUNK, LB_RING_CHUNKS,
    LB_SERVICES_MAX, LB_SVC_F_HASH_PORT, TCP_SYN_RECV_TIMEOUT_NS,
};
use tracing::warn;

use super::{
    sched::{self, Backend},
    ApplyReport, Dataplane, DataplaneError, DataplaneStats, DesiredState, LbAlgo, LbKind, Protocol,
    RealServerSpec, RealServerStats, ServiceSpec, ServiceStats, VirtualServerKey,
    REAL_SERVERS_PER_SERVICE_MAX, TEMPLATE_HOLD,
};
use crate::bpf::{
    lb::{self as maps, addr_words, port_be, words_addr},
    AttachMode, Bpf, BpfError, PROG_LB, PROG_LB_TC,
};

fn backend(e: BpfError) -> DataplaneError {
    DataplaneError::Backend(Box::new(e))
}

/// One map operation, in the order the planner wants them performed.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    ResetServiceCounters(u32),
    ResetRealCounters(u32),
    PutReal(u32, LbReal),
    WriteRing { first_chunk: u32, entries: Vec<u32> },
    WriteSet { index: u32, set: Box<LbBackendSet> },
    PutService(LbServiceKey, LbService),
    DeleteService(LbServiceKey),
}

/// A real server as last applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AppliedReal {
    id: u32,
    gen: u32,
    weight: u32,
    /// TUN: the outer source address written for it (`LbReal::tun_src`; all zero: none),
    /// and the slot it is live in (`LbReal::tun_slot`).
    tun_src: [u32; 4],
    tun_slot: u32,
}

/// A virtual server as last applied.
#[derive(Clone, Debug)]
struct AppliedService {
    id: u32,
    /// The live `LB_SETS` slot (0/1).
    slot: u32,
    spec: ServiceSpec,
    reals: BTreeMap<(IpAddr, u16), AppliedReal>,
    /// The live slot's ring region (first chunk, chunks).
    ring: Option<(u32, u32)>,
}

/// Lowest-first id allocation.
#[derive(Clone, Debug)]
struct IdPool {
    free: BTreeSet<u32>,
}

impl IdPool {
    fn new(n: u32) -> IdPool {
        IdPool { free: (0..n).collect() }
    }
    fn take(&mut self) -> Option<u32> {
        self.free.pop_first()
    }
    fn give(&mut self, id: u32) {
        self.free.insert(id);
    }
}

/// First-fit allocation of ring chunks, with coalescing frees.
#[derive(Clone, Debug)]
pub struct RingAlloc {
    /// start -> length of free runs.
    free: BTreeMap<u32, u32>,
}

impl RingAlloc {
    pub fn new(chunks: u32) -> RingAlloc {
        RingAlloc { free: BTreeMap::from([(0, chunks)]) }
    }
    pub fn alloc(&mut self, n: u32) -> Option<u32> {
        let (&start, &len) = self.free.iter().find(|(_, &len)| len >= n)?;
        self.free.remove(&start);
        if len > n {
            self.free.insert(start + n, len - n);
        }
        Some(start)
    }
    pub fn release(&mut self, start: u32, n: u32) {
        let (mut s, mut l) = (start, n);
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.free.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(start + n)) {
            self.free.remove(&(start + n));
            l += nl;
        }
        self.free.insert(s, l);
    }
    pub fn free_chunks(&self) -> u32 {
        self.free.values().sum()
    }
}

/// The planner's bookkeeping: everything `apply` needs to diff and to place new state.
#[derive(Clone, Debug)]
pub struct State {
    services: BTreeMap<VirtualServerKey, AppliedService>,
    service_ids: IdPool,
    real_ids: IdPool,
    /// Generation last given to each real id.
    real_gens: Vec<u32>,
    /// Free real ids whose entry still names the live service they left (so that closes of
    /// their flows count on it): real id -> (service id, address, port, generation). Rewritten
    /// in no service when that service is deleted; forgotten when the id is taken again.
    retired: BTreeMap<u32, (u32, IpAddr, u16, u32)>,
    ring: RingAlloc,
}

impl Default for State {
    fn default() -> Self {
        State {
            services: BTreeMap::new(),
            service_ids: IdPool::new(LB_SERVICES_MAX),
            real_ids: IdPool::new(LB_REALS_MAX),
            real_gens: vec![0; LB_REALS_MAX as usize],
            retired: BTreeMap::new(),
            ring: RingAlloc::new(LB_RING_CHUNKS),
        }
    }
}

impl State {
    /// Real id -> (service id, generation) of every live real server.
    fn live_reals(&self) -> HashMap<u32, (u32, u32)> {
        self.services
            .values()
            .flat_map(|s| s.reals.values().map(move |r| (r.id, (s.id, r.gen))))
            .collect()
    }
}

pub fn service_key(vs: &VirtualServerKey) -> LbServiceKey {
    let (addr, family) = addr_words(vs.address);
    LbServiceKey { addr, port: port_be(vs.port), proto: super::ip_protocol(vs.protocol), family }
}

fn algo_code(a: LbAlgo) -> u8 {
    match a {
        LbAlgo::Rr => LB_ALGO_RR,
        LbAlgo::Wrr => LB_ALGO_WRR,
        LbAlgo::Lc => LB_ALGO_LC,
        LbAlgo::Wlc => LB_ALGO_WLC,
        LbAlgo::Sh => LB_ALGO_SH,
        LbAlgo::Mh => LB_ALGO_MH,
    }
}

fn kind_code(k: LbKind) -> u8 {
    match k {
        LbKind::Nat => LB_KIND_NAT,
        LbKind::Dr => LB_KIND_DR,
        LbKind::Tun => LB_KIND_TUN,
    }
}

/// A forward entry's `LB_FLOW_F_*` bits for forwarding method `k` (NAT: none), and back:
/// the data path's encoding, in one place on this side (`flow_kind` in the program).
pub fn kind_flags(k: LbKind) -> u32 {
    match k {
        LbKind::Nat => 0,
        LbKind::Dr => LB_FLOW_F_DR,
        LbKind::Tun => LB_FLOW_F_TUN,
    }
}

pub fn flow_kind(flags: u32) -> LbKind {
    if flags & LB_FLOW_F_DR != 0 {
        LbKind::Dr
    } else if flags & LB_FLOW_F_TUN != 0 {
        LbKind::Tun
    } else {
        LbKind::Nat
    }
}

fn real_entry(addr: IpAddr, port: u16, flags: u8, service_id: u32, gen: u32) -> LbReal {
    let (a, family) = addr_words(addr);
    LbReal {
        addr: a,
        port: port_be(port),
        family,
        flags,
        service_id,
        gen,
        tun_slot: 0,
        tun_srcs: [[0; 4]; 2],
    }
}

/// The entry of a real server whose service was deleted: not available, and in no service,
/// so that the data path counts no close of its flows on the service id, which may be given
/// to another service before its flows are gone (the sweep counts them as gone instead).
fn gone_real_entry(addr: IpAddr, port: u16, gen: u32) -> LbReal {
    real_entry(addr, port, 0, LB_REAL_NO_SERVICE, gen)
}

/// The real server entry of `rs` in service `service_id`, generation `gen`, but its TUN
/// outer source ([`tun_writes`]).
fn live_real_entry(rs: &RealServerSpec, service_id: u32, gen: u32) -> LbReal {
    real_entry(rs.addr, rs.port, weight_flags(rs.weight), service_id, gen)
}

/// The TUN outer source address of `rs` in a service of kind `kind`: the one `tun_source`
/// gives for it (all zero if none: the program then drops its flows; and for other kinds).
fn tun_src_for(
    rs: &RealServerSpec,
    kind: LbKind,
    tun_source: &dyn Fn(IpAddr) -> Option<IpAddr>,
) -> [u32; 4] {
    if kind != LbKind::Tun {
        return [0; 4];
    }
    // The outer header is of the real server's family (IPv4 in IPv4, IPv6 in IPv6).
    tun_source(rs.addr)
        .filter(|s| s.is_ipv4() == rs.addr.is_ipv4())
        .map(|s| addr_words(s).0)
        .unwrap_or([0; 4])
}

/// The writes that make `base` (an entry but its TUN source) the real server's entry with
/// TUN outer source `src`, where the live entry has `old` in slot `slot` (a new entry: `src`
/// and 0), and the live slot after them. The data path may read the entry while a write
/// copies it in place, not atomically (see `LbReal::tun_src`): a changed source goes in the
/// other slot first, the live one rewritten with its own bytes, then the live slot index
/// moves to it; no write changes a byte a reader uses but that one-byte index.
fn tun_writes(base: LbReal, (old, slot): ([u32; 4], u32), src: [u32; 4]) -> (Vec<LbReal>, u32) {
    let slot = slot & 1;
    let mut e = base;
    e.tun_slot = slot;
    e.tun_srcs[slot as usize] = old;
    e.tun_srcs[(slot ^ 1) as usize] = src;
    if old == src {
        return (vec![e], slot);
    }
    let flip = LbReal { tun_slot: slot ^ 1, ..e };
    (vec![e, flip], slot ^ 1)
}

/// This host's source address toward `addr` (the route's preferred source), found the way the
/// kernel picks one for a datagram socket: connect (which sends nothing) and read it back.
/// Why nothing more is applied after a map update failed half-way: which slot is live is
/// no longer known, and writing on would risk a half-written backend set under traffic.
fn broken_error(why: &str) -> DataplaneError {
    DataplaneError::Backend(
        format!(
            "an earlier apply failed half-way ({why}); restart ha-lb to rebuild the data plane"
        )
        .into(),
    )
}

pub fn source_toward(addr: IpAddr) -> Option<IpAddr> {
    let any: IpAddr =
        if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let s = std::net::UdpSocket::bind((any, 0)).ok()?;
    s.connect((addr, 9)).ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|src| !src.is_unspecified())
}

fn weight_flags(weight: u32) -> u8 {
    if weight == 0 {
        LB_REAL_F_AVAILABLE | LB_REAL_F_QUIESCED
    } else {
        LB_REAL_F_AVAILABLE
    }
}

/// Plans the map operations that take the data plane from `state` to `desired`.
/// Returns the new state (to adopt once every operation succeeded), the operations in order,
/// and what changed.
pub fn plan(
    state: &State,
    desired: &DesiredState,
) -> Result<(State, Vec<Op>, ApplyReport), DataplaneError> {
    plan_with(state, desired, &|_| None)
}

/// Connections open by the data path's counters, corrected by `offset` (see
/// `XdpDataplane::offset_real`).
fn active(new: u64, closed: u64, offset: i64) -> u64 {
    (new as i128 - closed as i128 - offset as i128).clamp(0, u64::MAX as i128) as u64
}

/// The offset that makes [`active`] say `open`.
fn offset(new: u64, closed: u64, open: u64) -> i64 {
    (new as i128 - closed as i128 - open as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// What a real server's or service's counters are off by (see `XdpDataplane::offset_real`):
/// for the connections in the table (half-open ones too: the load lc/wlc schedule by), and
/// for the established (active) ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Offset {
    open: i64,
    active: i64,
}

/// (connections in the table, active connections) by the data path's counters `t`, corrected
/// by `o`. A half-open TCP connection (IPVS's inactive SYN_RECV) is in the first only.
fn counts(t: &LbTraffic, o: Offset) -> (u64, u64) {
    (
        active(t.new_conns, t.closed_conns, o.open),
        active(t.established, t.closed_conns.saturating_sub(t.aborted), o.active),
    )
}

/// The offsets that make [`counts`] say (`open`, `established`).
fn offsets(t: &LbTraffic, open: u64, established: u64) -> Offset {
    Offset {
        open: offset(t.new_conns, t.closed_conns, open),
        active: offset(t.established, t.closed_conns.saturating_sub(t.aborted), established),
    }
}

/// One planned step: the state it leaves, its map operations in order, what it changed.
pub type Step = (State, Vec<Op>, ApplyReport);

/// [`plan_with`], or — when the change does not fit the tables in one step — the same change
/// service by service ([`steps`]), each step freeing what it replaces before the next one
/// allocates. One step holds every new id and lookup table beside the old ones until its
/// end, so a change that fits the tables may still not fit beside what it replaces: a
/// service renamed at the service limit, a real server renumbered at the real-server
/// limit, new tables in a ring fragmented by earlier changes. Every step leaves a complete
/// desired state (no live service ever has an empty or half-written backend set).
pub fn plan_or_steps(
    state: &State,
    desired: &DesiredState,
    tun_source: &dyn Fn(IpAddr) -> Option<IpAddr>,
) -> Result<Vec<Step>, DataplaneError> {
    match plan_with(state, desired, tun_source) {
        Ok(step) => Ok(vec![step]),
        Err(DataplaneError::Capacity(why)) => {
            warn!(%why, "the change does not fit the tables in one step: applying it service by service");
            let mut at = state.clone();
            let mut out = Vec::new();
            for d in steps(state, desired) {
                let step = plan_with(&at, &d, tun_source)?;
                at = step.0.clone();
                out.push(step);
            }
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

/// The desired states that lead from `state` to `desired` one service at a time: services
/// that go, then real servers that go (a service keeps at least one of its own until its new
/// set is written), then each service as desired.
pub fn steps(state: &State, desired: &DesiredState) -> Vec<DesiredState> {
    let mut now: BTreeMap<VirtualServerKey, ServiceSpec> =
        state.services.iter().map(|(k, s)| (*k, s.spec.clone())).collect();
    let mut out = Vec::new();
    for k in state.services.keys().filter(|k| !desired.services.contains_key(k)) {
        now.remove(k);
        out.push(DesiredState { services: now.clone() });
    }
    for (k, want) in &desired.services {
        let Some(have) = now.get(k) else { continue };
        let staying = |r: &&RealServerSpec| {
            want.real_servers.iter().any(|w| (w.addr, w.port) == (r.addr, r.port))
        };
        let keep: Vec<RealServerSpec> = have.real_servers.iter().filter(staying).cloned().collect();
        if !keep.is_empty() && keep.len() < have.real_servers.len() {
            let shrunk = ServiceSpec { real_servers: keep, ..have.clone() };
            now.insert(*k, shrunk);
            out.push(DesiredState { services: now.clone() });
        }
    }
    for (k, want) in &desired.services {
        if now.get(k) != Some(want) {
            now.insert(*k, want.clone());
            out.push(DesiredState { services: now.clone() });
        }
    }
    out
}

/// [`plan`], with TUN real servers' outer source addresses from `tun_source`.
pub fn plan_with(
    state: &State,
    desired: &DesiredState,
    tun_source: &dyn Fn(IpAddr) -> Option<IpAddr>,
) -> Result<(State, Vec<Op>, ApplyReport), DataplaneError> {
    desired.validate()?;
    for (vs, spec) in &desired.services {
        if spec.real_servers.len() > REAL_SERVERS_PER_SERVICE_MAX {
            return Err(DataplaneError::Invalid(format!(
                "virtual_server {vs}: {} real_servers (the eBPF maps hold at most \
                 {REAL_SERVERS_PER_SERVICE_MAX})",
                spec.real_servers.len()
            )));
        }
    }
    let mut next = state.clone();
    let mut ops = Vec::new();
    let mut report = ApplyReport::default();
    // Released only after the whole plan, so nothing is reused within one apply.
    let mut free_service_ids = Vec::new();
    let mut free_real_ids = Vec::new();
    let mut free_rings = Vec::new();

    // Services that go away.
    let gone: Vec<VirtualServerKey> =
        state.services.keys().filter(|k| !desired.services.contains_key(k)).copied().collect();
    for vs in gone {
        let applied = next.services.remove(&vs).expect("listed from the same map");
        ops.push(Op::DeleteService(service_key(&vs)));
        for (&(addr, port), r) in &applied.reals {
            ops.push(Op::PutReal(r.id, gone_real_entry(addr, port, r.gen)));
            free_real_ids.push(r.id);
            report.real_servers_removed += 1;
        }
        // Real servers that left it earlier (their ids not taken since) leave it too.
        let earlier: Vec<u32> =
            next.retired.iter().filter(|(_, r)| r.0 == applied.id).map(|(&id, _)| id).collect();
        for id in earlier {
            let (_, addr, port, gen) = next.retired.remove(&id).expect("listed above");
            ops.push(Op::PutReal(id, gone_real_entry(addr, port, gen)));
        }
        free_service_ids.push(applied.id);
        free_rings.extend(applied.ring);
        report.services_removed.push(vs);
    }

    for (vs, spec) in &desired.services {
        let mut spec = spec.clone();
        spec.real_servers.sort();
        let old = next.services.get(vs).cloned();
        if old.as_ref().is_some_and(|o| o.spec == spec) {
            continue;
        }
        let id = match &old {
            Some(o) => o.id,
            None => {
                let id = next.service_ids.take().ok_or_else(|| {
                    DataplaneError::Capacity(format!("more than {LB_SERVICES_MAX} services"))
                })?;
                ops.push(Op::ResetServiceCounters(id));
                id
            }
        };
        let old_reals = old.as_ref().map(|o| o.reals.clone()).unwrap_or_default();
        let kind_changed = old.as_ref().is_some_and(|o| o.spec.lb_kind != spec.lb_kind);
        let mut reals = BTreeMap::new();
        let mut after_switch = Vec::new();
        for rs in &spec.real_servers {
            let k = (rs.addr, rs.port);
            let r = match old_reals.get(&k) {
                Some(o) => {
                    // A service switched away from TUN keeps its real servers' outer sources:
                    // its established TUN flows stay encapsulated (a flow's kind is fixed when
                    // it starts) until they end.
                    let src = if spec.lb_kind == LbKind::Tun {
                        tun_src_for(rs, spec.lb_kind, tun_source)
                    } else {
                        o.tun_src
                    };
                    // The entry carries the weight (drained or not) and, for TUN, the outer
                    // source: rewritten when either changes, or when the service's lb_kind
                    // does (a switch to TUN needs the source).
                    if o.weight != rs.weight || kind_changed || src != o.tun_src {
                        if o.weight != rs.weight {
                            report.real_servers_reweighted += 1;
                        }
                        let base = live_real_entry(rs, id, o.gen);
                        let (writes, slot) = tun_writes(base, (o.tun_src, o.tun_slot), src);
                        // Back from drained: usable before the new set names it. Drained:
                        // only once the new set (without it) is live.
                        let to = if rs.weight > 0 { &mut ops } else { &mut after_switch };
                        to.extend(writes.into_iter().map(|e| Op::PutReal(o.id, e)));
                        AppliedReal { weight: rs.weight, tun_src: src, tun_slot: slot, ..*o }
                    } else {
                        *o
                    }
                }
                None => {
                    let rid = next.real_ids.take().ok_or_else(|| {
                        DataplaneError::Capacity(format!("more than {LB_REALS_MAX} real servers"))
                    })?;
                    next.retired.remove(&rid);
                    let g = &mut next.real_gens[rid as usize];
                    *g = g.wrapping_add(1).max(1);
                    let gen = *g;
                    ops.push(Op::ResetRealCounters(rid));
                    let src = tun_src_for(rs, spec.lb_kind, tun_source);
                    let (writes, slot) = tun_writes(live_real_entry(rs, id, gen), (src, 0), src);
                    ops.extend(writes.into_iter().map(|e| Op::PutReal(rid, e)));
                    report.real_servers_added += 1;
                    AppliedReal { id: rid, gen, weight: rs.weight, tun_src: src, tun_slot: slot }
                }
            };
            reals.insert(k, r);
        }
        for (&(addr, port), o) in &old_reals {
            if !reals.contains_key(&(addr, port)) {
                // Still in the service as far as closes of its flows go (see `retired`).
                after_switch.push(Op::PutReal(o.id, real_entry(addr, port, 0, id, o.gen)));
                next.retired.insert(o.id, (id, addr, port, o.gen));
                free_real_ids.push(o.id);
                report.real_servers_removed += 1;
            }
        }

        // The new backend set, in the inactive slot.
        let mut set = Box::<LbBackendSet>::default();
        set.n_reals = spec.real_servers.len() as u32;
        let mut backends = Vec::with_capacity(spec.real_servers.len());
        for (i, rs) in spec.real_servers.iter().enumerate() {
            set.reals[i] = reals[&(rs.addr, rs.port)].id;
            set.weights[i] = rs.weight;
            let mut key = match rs.addr {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            key.extend_from_slice(&rs.port.to_be_bytes());
            backends.push(Backend { key, weight: rs.weight });
        }
        let configured = Some(spec.configured_real_servers).filter(|&n| n > 0);
        let (table, _) = sched::ring(spec.lb_algo, &backends, configured);
        let entries: Vec<u32> = table.iter().map(|&i| set.reals[i]).collect();
        let ring = if entries.is_empty() {
            None
        } else {
            let chunks = entries.len().div_ceil(LB_RING_CHUNK) as u32;
            let first = next.ring.alloc(chunks).ok_or_else(|| {
                DataplaneError::Capacity(format!(
                    "lookup tables: {chunks} chunks wanted, {} free",
                    next.ring.free_chunks()
                ))
            })?;
            set.ring_chunk = first;
            set.ring_len = entries.len() as u32;
            ops.push(Op::WriteRing { first_chunk: first, entries });
            Some((first, chunks))
        };
        let slot = match &old {
            Some(o) => 1 - o.slot,
            None => 0,
        };
        ops.push(Op::WriteSet { index: id * 2 + slot, set });
        ops.push(Op::PutService(
            service_key(vs),
            LbService {
                id,
                active_slot: slot,
                persistence_timeout: spec.persistence_timeout,
                lb_algo: algo_code(spec.lb_algo),
                lb_kind: kind_code(spec.lb_kind),
                flags: if spec.hash_port { LB_SVC_F_HASH_PORT } else { 0 },
                persist_prefix: spec.persistence_granularity,
            },
        ));
        ops.extend(after_switch);
        if let Some(o) = &old {
            free_rings.extend(o.ring);
            report.services_changed.push(*vs);
        } else {
            report.services_added.push(*vs);
        }
        next.services.insert(*vs, AppliedService { id, slot, spec, reals, ring });
    }

    for id in free_service_ids {
        next.service_ids.give(id);
    }
    for id in free_real_ids {
        next.real_ids.give(id);
    }
    for (first, n) in free_rings {
        next.ring.release(first, n);
    }
    Ok((next, ops, report))
}

fn execute(bpf: &mut Bpf, op: &Op) -> Result<(), BpfError> {
    match op {
        Op::ResetServiceCounters(id) => maps::reset_service_counters(bpf, *id),
        Op::ResetRealCounters(id) => maps::reset_real_counters(bpf, *id),
        Op::PutReal(id, r) => maps::put_real(bpf, *id, r),
        Op::WriteRing { first_chunk, entries } => maps::write_ring(bpf, *first_chunk, entries),
        Op::WriteSet { index, set } => maps::set_backend_set(bpf, *index, set),
        Op::PutService(k, v) => maps::put_service(bpf, k, v),
        Op::DeleteService(k) => maps::delete_service(bpf, k),
    }
}

/// Flow idle timeouts (IPVS defaults: TCP 900 s, after FIN/RST 120 s, UDP 300 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: std::time::Duration,
    pub tcp_fin: std::time::Duration,
    pub udp: std::time::Duration,
}

impl Timeouts {
    /// The idle timeout of an established flow of IP protocol `proto`: TCP open, TCP
    /// `closed` (FIN/RST seen), anything else UDP's. (A half-open TCP flow has its own, the
    /// data path's `TCP_SYN_RECV_TIMEOUT_NS`.)
    pub fn for_flow(&self, proto: u8, closed: bool) -> std::time::Duration {
        match (proto, closed) {
            (IPPROTO_TCP, false) => self.tcp,
            (IPPROTO_TCP, true) => self.tcp_fin,
            _ => self.udp,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        let d = LbConfig::DEFAULT;
        Timeouts {
            tcp: std::time::Duration::from_nanos(d.tcp_timeout_ns),
            tcp_fin: std::time::Duration::from_nanos(d.tcp_fin_timeout_ns),
            udp: std::time::Duration::from_nanos(d.udp_timeout_ns),
        }
    }
}

/// Where the forwarding program runs: one code path (`ha_lb_xdp` / `ha_lb_tc`, the same
/// source compiled for each hook) and the same maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// XDP: before the kernel allocates a socket buffer (NICs; the default).
    Xdp,
    /// TC ingress: after. On veth pairs this avoids XDP's copy of every socket's packet and
    /// the receiver's rebuild of a socket buffer from the frame.
    Tc,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
}

enum Link {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

/// `addr` with the bits past `prefix` cleared, as the data path masks a client for its
/// persistence template (`prefix` 0: the whole address).
/// A persistence prefix with 0 (unset: the whole address) written as the address length:
/// 0 and 32 (128 for IPv6) make the same key.
pub fn full_prefix(prefix: u8, v6: bool) -> u8 {
    match (prefix, v6) {
        (0, false) => 32,
        (0, true) => 128,
        (p, _) => p,
    }
}

pub fn mask_prefix(addr: IpAddr, prefix: u8) -> IpAddr {
    if prefix == 0 {
        return addr;
    }
    match addr {
        IpAddr::V4(a) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & keep))
        }
        IpAddr::V6(a) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & keep))
        }
    }
}

/// Local ids to director-independent names, for the export of persistence templates
/// ([`XdpDataplane::template_index`]).
#[derive(Clone, Debug, Default)]
pub struct TemplateIndex {
    /// Service id -> (protocol, VIP, persistence_granularity, persistence_timeout).
    services: HashMap<u32, (Protocol, std::net::SocketAddr, u8, u32)>,
    /// (service id, real id, generation) -> real server.
    reals: HashMap<(u32, u32, u32), std::net::SocketAddr>,
}

impl TemplateIndex {
    /// What the template `key` -> `t` names here, or `None` when its service is gone or its
    /// real server is not that service's live one (a template left from an id since given to
    /// another service or real server).
    pub fn names(
        &self,
        key: &LbPersistKey,
        t: &LbPersist,
    ) -> Option<crate::sync::export::TemplateNames> {
        let &(protocol, vip, prefix, timeout_secs) = self.services.get(&key.service_id)?;
        // A key masked otherwise was made under another persistence_granularity (changed by
        // a reload): the data path no longer looks it up, and labelled with the current
        // prefix it would name another network on the backup.
        let client = maps::words_addr(&key.client, key.family);
        if mask_prefix(client, prefix) != client {
            return None;
        }
        let real_server = *self.reals.get(&(key.service_id, t.real_id, t.real_gen))?;
        Some(crate::sync::export::TemplateNames {
            protocol,
            vip,
            prefix,
            timeout_secs,
            real_server,
        })
    }
}

/// What [`XdpDataplane::import_flows`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Open flows written.
    pub opened: usize,
    /// Flows marked closed.
    pub closed: usize,
}

/// The table entries [`XdpDataplane::import_flow`] writes for `e` (none: unknown here).
/// `has_flow` says whether this director has a flow (a closed one is written only over one).
fn imported(
    state: &State,
    timeouts: &Timeouts,
    e: &crate::sync::SyncEntry,
    now_ns: u64,
    has_flow: &dyn Fn(&LbFlowKey) -> bool,
    out: &mut Vec<(LbFlowKey, LbFlow)>,
) -> bool {
    let crate::sync::SyncEntry {
        protocol,
        lb_kind: kind,
        client,
        vip,
        real_server,
        idle_secs,
        closed,
    } = *e;
    let key = VirtualServerKey { address: vip.ip(), port: vip.port(), protocol };
    let Some(svc) = state.services.get(&key) else { return false };
    let Some(r) = svc.reals.get(&(real_server.ip(), real_server.port())) else {
        return false;
    };
    if !e.same_family() {
        return false;
    }
    let proto = super::ip_protocol(protocol);
    let (c, family) = addr_words(client.ip());
    let (v, _) = addr_words(vip.ip());
    let (a, _) = addr_words(real_server.ip());
    let mut flags = kind_flags(kind);
    if svc.spec.persistence_timeout != 0 {
        flags |= LB_FLOW_F_PERSIST
            | (svc.spec.persistence_granularity as u32) << LB_FLOW_PERSIST_PREFIX_SHIFT;
    }
    // Idle past this director's timeout for it: expired here, not imported (on a director
    // up for less than that, `last_seen` would be clamped at 0 and the flow revived).
    if u64::from(idle_secs) >= timeouts.for_flow(proto, closed).as_secs() {
        return false;
    }
    let last_seen_ns = now_ns.saturating_sub(idle_secs as u64 * 1_000_000_000);
    let fkey = LbFlowKey::new(family, proto, (c, port_be(client.port())), (v, port_be(vip.port())));
    if closed {
        if !has_flow(&fkey) {
            return false;
        }
        flags |= LB_FLOW_F_CLOSED;
    }
    let forward = LbFlow {
        real_id: r.id,
        real_gen: r.gen,
        service_id: svc.id,
        flags,
        last_seen_ns,
        addr: a,
        port: port_be(real_server.port()),
        ..LbFlow::default()
    };
    out.push((fkey, forward));
    if kind == LbKind::Nat {
        let rkey = LbFlowKey::new(
            family,
            proto,
            (a, port_be(real_server.port())),
            (c, port_be(client.port())),
        );
        // The data path marks only the forward entry closed; the reply entry expires with it.
        let reply =
            LbFlow { flags: LB_FLOW_F_REPLY, addr: v, port: port_be(vip.port()), ..forward };
        out.push((rkey, reply));
    }
    true
}

/// The table writes for a batch of entries from another director ([`imported`] for each, in
/// order), and what they are. A key written twice is written once, in its final state; a closed
/// entry finds the flows the batch opens before it as well as those `live` in the table: a
/// kernel master syncs a short connection's open and its close in the same message.
fn import_writes(
    state: &State,
    timeouts: &Timeouts,
    entries: &[crate::sync::SyncEntry],
    now_ns: u64,
    live: &dyn Fn(&LbFlowKey) -> bool,
) -> (Vec<(LbFlowKey, LbFlow)>, ImportReport) {
    let mut writes: Vec<(LbFlowKey, LbFlow)> = Vec::with_capacity(2 * entries.len());
    // Where each key written so far is in `writes`.
    let mut at: HashMap<LbFlowKey, usize> = HashMap::with_capacity(2 * entries.len());
    let mut r = ImportReport::default();
    let mut one = Vec::with_capacity(2);
    for e in entries {
        let has_flow = |k: &LbFlowKey| at.contains_key(k) || live(k);
        if !imported(state, timeouts, e, now_ns, &has_flow, &mut one) {
            continue;
        }
        if e.closed {
            r.closed += 1;
        } else {
            r.opened += 1;
        }
        for (k, f) in one.drain(..) {
            match at.get(&k) {
                Some(&i) => writes[i].1 = f,
                None => {
                    at.insert(k, writes.len());
                    writes.push((k, f));
                }
            }
        }
    }
    (writes, r)
}

/// The eBPF data plane (XDP or TC hook).
pub struct XdpDataplane {
    bpf: Bpf,
    hook: Hook,
    links: Vec<(String, Link, AttachMode)>,
    state: State,
    timeouts: Timeouts,
    /// `LB_CFG_F_*` written with the timeouts.
    config_flags: u64,
    /// What the data path's opened - closed counts are off by, per real id / service id, as
    /// the last sweep found (open = opened - closed - offset; likewise for the established
    /// ones: [`counts`]): connections that left without FIN/RST (expired, evicted) make it
    /// positive; connections imported by connection sync or adopted (sh/mh), open here but
    /// not opened here, make it negative. Reset when an id is given to a new server.
    offset_real: HashMap<u32, Offset>,
    offset_service: HashMap<u32, Offset>,
    broken: Option<String>,
}

impl XdpDataplane {
    /// Loads the eBPF object compiled into this binary and attaches `ha_lb_xdp` to every
    /// interface in `interfaces` (native XDP, generic where the driver has none). Forwarding
    /// also needs `net.ipv4.conf.<iface>.forwarding=1` (and IPv6 forwarding for IPv6
    /// services) on those interfaces: `bpf_fib_lookup` refuses otherwise.
    pub fn attach(interfaces: &[&str], hook: Hook) -> Result<XdpDataplane, DataplaneError> {
        let bpf = Bpf::load(tracing::Level::WARN).map_err(backend)?;
        let mut dp = XdpDataplane::with_hook(bpf, hook)?;
        for iface in interfaces {
            dp.attach_interface(iface)?;
        }
        Ok(dp)
    }

    /// Wraps an already loaded object without attaching anything (tests drive it with
    /// `BPF_PROG_TEST_RUN`; the daemon can share one `Bpf` with the VRRP filter).
    pub fn new(bpf: Bpf) -> Result<XdpDataplane, DataplaneError> {
        Self::with_hook(bpf, Hook::Xdp)
    }

    /// [`XdpDataplane::new`] for interfaces attached at `hook`.
    pub fn with_hook(mut bpf: Bpf, hook: Hook) -> Result<XdpDataplane, DataplaneError> {
        // Load (verify) the program now, so a verifier rejection surfaces here.
        match hook {
            Hook::Xdp => bpf.xdp(PROG_LB).map(drop),
            Hook::Tc => bpf.classifier(PROG_LB_TC).map(drop),
        }
        .map_err(backend)?;
        maps::set_config(&mut bpf, &LbConfig::DEFAULT).map_err(backend)?;
        Ok(XdpDataplane {
            bpf,
            hook,
            links: Vec::new(),
            state: State::default(),
            timeouts: Timeouts::default(),
            config_flags: 0,
            offset_real: HashMap::new(),
            offset_service: HashMap::new(),
            broken: None,
        })
    }

    pub fn attach_interface(&mut self, iface: &str) -> Result<AttachMode, DataplaneError> {
        // Only frames addressed to this host are forwarded (see LbReason::OtherHost).
        let mac = crate::bpf::lb::interface_mac(iface)
            .map_err(|e| DataplaneError::Invalid(format!("interface {iface}: {e}")))?;
        let ifindex = crate::bpf::ifindex_of(iface)
            .ok_or_else(|| DataplaneError::Invalid(format!("interface {iface} not found")))?;
        maps::set_interface_mac(&mut self.bpf, ifindex, Some(mac)).map_err(backend)?;
        let (link, mode) = match self.hook {
            Hook::Xdp => {
                let (l, m) = self.bpf.attach_xdp(PROG_LB, iface).map_err(backend)?;
                (Link::Xdp(l), m)
            }
            Hook::Tc => {
                let l = crate::bpf::attach_tc_ingress(&mut self.bpf, PROG_LB_TC, iface)
                    .map_err(backend)?;
                tracing::info!(program = PROG_LB_TC, interface = iface, "TC ingress attached");
                (Link::Tc(l), AttachMode::Tc)
            }
        };
        if mode == AttachMode::Generic {
            // Not a redirect target (see `forget_tx_port`).
            maps::forget_tx_port(&mut self.bpf, ifindex).map_err(backend)?;
            tracing::info!(interface = iface, "XDP in generic mode here: frames routed out of this interface are not redirected to it (NAT: the kernel forwards them translated; DR/TUN: dropped, egress_no_xdp)");
        }
        self.links.push((iface.to_string(), link, mode));
        Ok(mode)
    }

    /// Reads the attached interfaces' MACs again (`maintain`): the program forwards only
    /// frames addressed to them, so a MAC changed after attach (`ip link set address`, a bond
    /// failing over with `fail_over_mac`) would turn every frame into another host's. Returns
    /// how many changed.
    pub fn refresh_interface_macs(&mut self) -> Result<usize, DataplaneError> {
        let mut changed = 0;
        for (iface, _, mode) in &self.links {
            let (Ok(mac), Some(ifindex)) =
                (crate::bpf::lb::interface_mac(iface), crate::bpf::ifindex_of(iface))
            else {
                continue;
            };
            if maps::interface_mac_of(&self.bpf, ifindex).map_err(backend)? != Some(mac) {
                maps::set_interface_mac(&mut self.bpf, ifindex, Some(mac)).map_err(backend)?;
                if *mode == AttachMode::Generic {
                    maps::forget_tx_port(&mut self.bpf, ifindex).map_err(backend)?;
                }
                tracing::info!(interface = %iface, "interface MAC changed; forwarding frames to the new one");
                changed += 1;
            }
        }
        Ok(changed)
    }

    pub fn detach_interface(&mut self, iface: &str) -> Result<(), DataplaneError> {
        if let Some(i) = crate::bpf::ifindex_of(iface) {
            let _ = maps::set_interface_mac(&mut self.bpf, i, None);
        }
        if let Some(i) = self.links.iter().position(|(n, _, _)| n == iface) {
            match self.links.remove(i).1 {
                Link::Xdp(l) => self.bpf.detach_xdp(PROG_LB, l).map_err(backend)?,
                Link::Tc(l) => {
                    crate::bpf::detach_tc(&mut self.bpf, PROG_LB_TC, l).map_err(backend)?
                }
            }
        }
        Ok(())
    }

    /// Interfaces the program is attached to, and how.
    pub fn interfaces(&self) -> Vec<(String, AttachMode)> {
        self.links.iter().map(|(n, _, m)| (n.clone(), *m)).collect()
    }

    /// Whether `ha_lb_xdp` applies the VRRP filter's checks (`PROG_VRRP_FILTER`, same object
    /// and maps) to the frames it does not forward: for interfaces that carry both VRRP and
    /// service traffic, since only one XDP program can be attached per interface.
    ///
    /// The filter runs inside `ha_lb_xdp` rather than as a tail call: the kernel refuses tail
    /// calls from programs with BPF-to-BPF calls unless it JIT-compiles them, so a tail call
    /// would not load where the JIT is off (`net.core.bpf_jit_enable=0`) or absent (UML).
    pub fn set_vrrp_filter(&mut self, on: bool) -> Result<(), DataplaneError> {
        let flags = if on {
            self.config_flags | LB_CFG_F_VRRP_FILTER
        } else {
            self.config_flags & !LB_CFG_F_VRRP_FILTER
        };
        self.write_config(self.timeouts, flags)
    }

    /// The connection timeouts the data path expires flows after.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    pub fn set_timeouts(&mut self, t: Timeouts) -> Result<(), DataplaneError> {
        self.write_config(t, self.config_flags)
    }

    fn write_config(&mut self, t: Timeouts, flags: u64) -> Result<(), DataplaneError> {
        let cfg = LbConfig {
            tcp_timeout_ns: t.tcp.as_nanos() as u64,
            tcp_fin_timeout_ns: t.tcp_fin.as_nanos() as u64,
            udp_timeout_ns: t.udp.as_nanos() as u64,
            flags,
        };
        maps::set_config(&mut self.bpf, &cfg).map_err(backend)?;
        self.timeouts = t;
        self.config_flags = flags;
        Ok(())
    }

    pub fn bpf(&self) -> &Bpf {
        &self.bpf
    }

    pub fn bpf_mut(&mut self) -> &mut Bpf {
        &mut self.bpf
    }

    /// Forgets every tracked connection and persistence template.
    pub fn flush_connections(&mut self) -> Result<(), DataplaneError> {
        maps::flush_flows(&mut self.bpf).map_err(backend)?;
        // Everything open is gone: let the counters say so.
        let live = self.state.live_reals();
        for (&rid, &(sid, _)) in &live {
            let t = maps::real_traffic(&self.bpf, rid).map_err(backend)?;
            let (open, active) = counts(&t, self.offset(rid, true));
            for o in [self.offset_real.entry(rid), self.offset_service.entry(sid)] {
                let o = o.or_default();
                o.open += open as i64;
                o.active += active as i64;
            }
            maps::set_load(&mut self.bpf, rid, 0).map_err(backend)?;
        }
        Ok(())
    }

    /// The real id and generation serving `addr:port` in `vs` (tests, status).
    pub fn real_id(&self, vs: &VirtualServerKey, addr: IpAddr, port: u16) -> Option<(u32, u32)> {
        self.state.services.get(vs)?.reals.get(&(addr, port)).map(|r| (r.id, r.gen))
    }

    /// The offset of real id (`real`) or service id `id` (see the field).
    fn offset(&self, id: u32, real: bool) -> Offset {
        let m = if real { &self.offset_real } else { &self.offset_service };
        m.get(&id).copied().unwrap_or_default()
    }

    /// Writes a flow another director scheduled (connection sync, see
    /// docs/conntrack-sync.md): `client` -> `vip` (`protocol`) served by `real_server` with
    /// method `kind`, idle for `idle_secs` as of `now_ns`. The forward entry (and for NAT the
    /// reply entry) is written as the program would have written it, so the flow's next packet
    /// here takes the known-flow path to the same real server. Returns `false`, writing
    /// nothing, when this director has no such service or real server (ids differ between
    /// directors: both are looked up by address).
    ///
    /// A closed flow (see [`crate::sync::SyncEntry::closed`]) is written only over a copy
    /// this director has: marked closed (`LB_FLOW_F_CLOSED`, as the other director's entry
    /// is), it no longer counts as active and expires on the FIN timeout. One it does not have
    /// is not written (it would only fill the table).
    #[allow(clippy::too_many_arguments)]
    pub fn import_flow(
        &mut self,
        protocol: Protocol,
        kind: LbKind,
        client: std::net::SocketAddr,
        vip: std::net::SocketAddr,
        real_server: std::net::SocketAddr,
        idle_secs: u32,
        now_ns: u64,
    ) -> Result<bool, DataplaneError> {
        let e = crate::sync::SyncEntry {
            protocol,
            lb_kind: kind,
            client,
            vip,
            real_server,
            idle_secs,
            closed: false,
        };
        Ok(self.import_flows(&[e], now_ns)?.opened == 1)
    }

    /// [`XdpDataplane::import_flow`] for each entry received from another director, written
    /// together with one flow-cache invalidation; says how many were written (the others name
    /// a service or real server unknown here, or are closed flows this director does not have).
    pub fn import_flows(
        &mut self,
        entries: &[crate::sync::SyncEntry],
        now_ns: u64,
    ) -> Result<ImportReport, DataplaneError> {
        let bpf = &self.bpf;
        let live = |k: &LbFlowKey| matches!(maps::flow(bpf, k), Ok(Some(_)));
        let (writes, r) = import_writes(&self.state, &self.timeouts, entries, now_ns, &live);
        maps::put_flows(&mut self.bpf, &writes).map_err(backend)?;
        Ok(r)
    }

    /// What the local ids of persistence templates name, for connection sync's export (see
    /// [`TemplateIndex::names`]), as of the last apply.
    pub fn template_index(&self) -> TemplateIndex {
        let mut index = TemplateIndex::default();
        for (vs, svc) in &self.state.services {
            index.services.insert(
                svc.id,
                (
                    vs.protocol,
                    std::net::SocketAddr::new(vs.address, vs.port),
                    svc.spec.persistence_granularity,
                    svc.spec.persistence_timeout,
                ),
            );
            for (&(addr, port), r) in &svc.reals {
                index.reals.insert((svc.id, r.id, r.gen), std::net::SocketAddr::new(addr, port));
            }
        }
        index
    }

    /// Writes persistence templates another director made (connection sync, see
    /// docs/conntrack-sync.md), with `last_seen` = `now_ns` − idle, so each expires here after
    /// this director's own `persistence_timeout`, as it would have there. Each template's
    /// service (VIP, port, protocol) and real server (address, port) are looked up here (ids
    /// differ between directors). Returns how many were written; the others name a service
    /// this director does not have, or that has no persistence here or another
    /// `persistence_granularity` (its data path would look the client up under another key),
    /// or a real server it does not have (not configured, or out of the pool).
    ///
    /// `now_ns` must not be ahead of the data path's clock ([`maps::monotonic_coarse_ns`]):
    /// the data path follows a template only while `now - last_seen` is within the timeout,
    /// and a `last_seen` in its future wraps to "expired" (the client's next connection would
    /// be scheduled afresh and overwrite the template).
    pub fn import_templates(
        &mut self,
        templates: &[crate::sync::SyncTemplate],
        now_ns: u64,
    ) -> Result<usize, DataplaneError> {
        let writes: Vec<(LbPersistKey, LbPersist)> =
            templates.iter().filter_map(|t| self.imported_template(t, now_ns)).collect();
        maps::put_templates(&mut self.bpf, &writes).map_err(backend)?;
        Ok(writes.len())
    }

    /// The `LB_PERSIST` entry [`XdpDataplane::import_templates`] writes for `t` (none: unknown
    /// here).
    fn imported_template(
        &self,
        t: &crate::sync::SyncTemplate,
        now_ns: u64,
    ) -> Option<(LbPersistKey, LbPersist)> {
        if !t.same_family() {
            return None;
        }
        let key =
            VirtualServerKey { address: t.vip.ip(), port: t.vip.port(), protocol: t.protocol };
        let svc = self.state.services.get(&key)?;
        let v6 = t.vip.is_ipv6();
        if svc.spec.persistence_timeout == 0
            || full_prefix(svc.spec.persistence_granularity, v6) != full_prefix(t.prefix, v6)
        {
            return None;
        }
        let r = svc.reals.get(&(t.real_server.ip(), t.real_server.port()))?;
        let (client, family) = addr_words(mask_prefix(t.client, t.prefix));
        let pkey = LbPersistKey { service_id: svc.id, family, _pad8: 0, _pad16: 0, client };
        // Expired here already (see `imported`: not revived on a director up for less).
        if u64::from(t.idle_secs) >= u64::from(svc.spec.persistence_timeout) {
            return None;
        }
        let last_seen_ns = now_ns.saturating_sub(u64::from(t.idle_secs) * 1_000_000_000);
        Some((pkey, LbPersist { real_id: r.id, real_gen: r.gen, last_seen_ns }))
    }

    /// Looks the TUN real servers' outer source addresses up again (a route that appeared or
    /// changed since they were applied) and rewrites the entries whose source changed.
    pub fn refresh_tun_sources(&mut self) -> Result<usize, DataplaneError> {
        self.refresh_tun_sources_with(&source_toward)
    }

    fn refresh_tun_sources_with(
        &mut self,
        tun_source: &dyn Fn(IpAddr) -> Option<IpAddr>,
    ) -> Result<usize, DataplaneError> {
        let mut changed = 0;
        for (vs, s) in self.state.services.iter_mut() {
            if s.spec.lb_kind != LbKind::Tun {
                continue;
            }
            for (&(addr, port), r) in s.reals.iter_mut() {
                let rs = RealServerSpec { addr, port, weight: r.weight };
                let src = tun_src_for(&rs, LbKind::Tun, tun_source);
                if src == r.tun_src {
                    continue;
                }
                let base = live_real_entry(&rs, s.id, r.gen);
                let (writes, slot) = tun_writes(base, (r.tun_src, r.tun_slot), src);
                for e in writes {
                    execute(&mut self.bpf, &Op::PutReal(r.id, e)).map_err(backend)?;
                }
                tracing::info!(virtual_server = %vs, real_server = %addr,
                    source = %words_addr(&src, base.family),
                    "TUN: outer source address changed");
                (r.tun_src, r.tun_slot) = (src, slot);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Expires idle connections (see [`Dataplane::maintain`]) as of `now_ns` (CLOCK_MONOTONIC),
    /// then recounts the open connections per service and real server from the table, which
    /// corrects the active counts for connections that vanished without a FIN/RST (LRU
    /// eviction) and resynchronises the lc/wlc load. Between sweeps, evictions make active
    /// counts too high. Cost: the table is read in batches (about 45 ms per 100,000 entries)
    /// and expired entries are deleted in batches after one lookup each.
    pub fn expire_connections(&mut self, now_ns: u64) -> Result<usize, DataplaneError> {
        let live = self.state.live_reals();
        let t = self.timeouts;
        let timeout = |proto: u8, flags: u32| -> u64 {
            let d = if proto == IPPROTO_TCP && flags & LB_FLOW_F_HALF_OPEN != 0 {
                std::time::Duration::from_nanos(TCP_SYN_RECV_TIMEOUT_NS)
            } else {
                t.for_flow(proto, flags & LB_FLOW_F_CLOSED != 0)
            };
            d.as_nanos() as u64
        };
        let flows = maps::flows(&self.bpf).map_err(backend)?;
        let by_key: HashMap<_, _> = flows.iter().cloned().collect();
        let mut expired = 0;
        // Deleted together after the walk (batch deletion where the kernel has it).
        let mut remove = Vec::new();
        for (k, f) in &flows {
            let idle = now_ns.saturating_sub(f.last_seen_ns);
            if f.flags & LB_FLOW_F_REPLY != 0 {
                // A reply entry lives as long as the forward entry of the same flow.
                let fwd = LbFlowKey::new(k.family, k.proto, (k.dst, k.dport), (f.addr, f.port));
                let owned = by_key
                    .get(&fwd)
                    .is_some_and(|ff| ff.real_id == f.real_id && ff.real_gen == f.real_gen);
                if !owned && idle > timeout(k.proto, f.flags) {
                    remove.push(*k);
                }
                continue;
            }
            if idle <= timeout(k.proto, f.flags) {
                continue;
            }
            remove.push(*k);
            let reply = LbFlowKey::new(k.family, k.proto, (f.addr, f.port), (k.src, k.sport));
            if by_key.get(&reply).is_some_and(|r| r.real_id == f.real_id) {
                remove.push(reply);
            }
            expired += 1;
        }
        // The walk worked on a snapshot: an entry the data path refreshed or replaced since
        // (a flow rescheduled under the same 5-tuple) must not go. Re-read each doomed entry
        // and keep it unless it is still the one that expired.
        let snapshot = |k: &ha_lb_common::lb::LbFlowKey| by_key.get(k).map(|f| f.last_seen_ns);
        let mut still_expired = Vec::with_capacity(remove.len());
        for k in remove {
            match maps::flow(&self.bpf, &k).map_err(backend)? {
                Some(now) if Some(now.last_seen_ns) != snapshot(&k) => {}
                _ => still_expired.push(k),
            }
        }
        maps::remove_flows(&mut self.bpf, &still_expired).map_err(backend)?;
        // Recount what is really open from the table we just walked, so counts that drifted
        // (entries the LRU evicted without a FIN, flows of removed servers never seen again,
        // an update lost to racing CPUs) are corrected at every sweep: "expired" becomes
        // whatever was opened and never closed but is no longer in the table.
        // (open, established) per real id and service id: half-open ones are open, not active.
        let mut open_real: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut open_service: HashMap<u32, (u64, u64)> = HashMap::new();
        for (k, f) in &flows {
            let idle = now_ns.saturating_sub(f.last_seen_ns);
            if f.flags & (LB_FLOW_F_REPLY | LB_FLOW_F_CLOSED) != 0
                || idle > timeout(k.proto, f.flags)
            {
                continue;
            }
            if live.get(&f.real_id) == Some(&(f.service_id, f.real_gen)) {
                let est = u64::from(f.flags & LB_FLOW_F_HALF_OPEN == 0);
                for c in [open_real.entry(f.real_id), open_service.entry(f.service_id)] {
                    let c = c.or_default();
                    c.0 += 1;
                    c.1 += est;
                }
            }
        }
        let services: Vec<u32> = self.state.services.values().map(|s| s.id).collect();
        for sid in services {
            let t = maps::service_traffic(&self.bpf, sid).map_err(backend)?;
            let (open, est) = open_service.get(&sid).copied().unwrap_or_default();
            self.offset_service.insert(sid, offsets(&t, open, est));
        }
        for &rid in live.keys() {
            let t = maps::real_traffic(&self.bpf, rid).map_err(backend)?;
            let (open, est) = open_real.get(&rid).copied().unwrap_or_default();
            self.offset_real.insert(rid, offsets(&t, open, est));
            maps::set_load(&mut self.bpf, rid, open).map_err(backend)?;
        }
        let open: Vec<_> = flows
            .iter()
            .filter(|(k, f)| {
                f.flags & (LB_FLOW_F_REPLY | LB_FLOW_F_CLOSED) == 0
                    && f.flags & LB_FLOW_F_PERSIST != 0
                    && now_ns.saturating_sub(f.last_seen_ns) <= timeout(k.proto, f.flags)
                    && live.get(&f.real_id) == Some(&(f.service_id, f.real_gen))
            })
            .collect();
        self.hold_templates(&open, now_ns)?;
        Ok(expired)
    }

    /// Keeps the persistence templates of clients with open connections (`open`: forward
    /// entries of persistent services, not closed or expired) alive until the next sweep,
    /// however idle the connections are: IPVS does not expire a template while it controls
    /// connections (`n_control`), so a client's new connection follows its open one; the data
    /// path refreshes a template only on a connection's packets. A template is dated so that it
    /// outlives [`TEMPLATE_HOLD`] from now — ahead of now when the service's
    /// `persistence_timeout` is shorter (the data path compares signed) — and only if it names
    /// the connection's real server; one the LRU evicted is written again. After the last
    /// connection closes, a template lives up to its timeout, or `TEMPLATE_HOLD` if longer.
    fn hold_templates(
        &mut self,
        open: &[&(LbFlowKey, LbFlow)],
        now_ns: u64,
    ) -> Result<usize, DataplaneError> {
        let timeouts: HashMap<u32, u64> = (self.state.services.values())
            .filter(|s| s.spec.persistence_timeout != 0)
            .map(|s| (s.id, u64::from(s.spec.persistence_timeout) * 1_000_000_000))
            .collect();
        let hold = TEMPLATE_HOLD.as_nanos() as u64;
        let mut seen = std::collections::HashSet::new();
        let mut writes = Vec::new();
        for (k, f) in open {
            let Some(&timeout) = timeouts.get(&f.service_id) else { continue };
            let prefix = (f.flags >> LB_FLOW_PERSIST_PREFIX_SHIFT) as u8;
            let client = mask_prefix(maps::words_addr(&k.src, k.family), prefix);
            let (words, family) = addr_words(client);
            let pkey = LbPersistKey {
                service_id: f.service_id,
                family,
                _pad8: 0,
                _pad16: 0,
                client: words,
            };
            if !seen.insert(pkey) {
                continue;
            }
            // Dated `hold - timeout` from now: alive for `hold`.
            let dated = (now_ns + hold).wrapping_sub(timeout);
            let t = match maps::template(&self.bpf, &pkey).map_err(backend)? {
                Some(t) if (t.real_id, t.real_gen) != (f.real_id, f.real_gen) => continue,
                Some(t) if dated.wrapping_sub(t.last_seen_ns) as i64 <= 0 => continue,
                Some(t) => LbPersist { last_seen_ns: dated, ..t },
                None => LbPersist { real_id: f.real_id, real_gen: f.real_gen, last_seen_ns: dated },
            };
            writes.push((pkey, t));
        }
        maps::put_templates(&mut self.bpf, &writes).map_err(backend)?;
        Ok(writes.len())
    }

    /// Rewrites the shared load estimate lc/wlc read from the exact per-CPU counters
    /// (corrects updates lost to CPUs racing on it).
    pub fn sync_load(&mut self) -> Result<(), DataplaneError> {
        for (rid, _) in self.state.live_reals() {
            let t = maps::real_traffic(&self.bpf, rid).map_err(backend)?;
            let (open, _) = counts(&t, self.offset(rid, true));
            maps::set_load(&mut self.bpf, rid, open).map_err(backend)?;
        }
        Ok(())
    }
}

impl Dataplane for XdpDataplane {
    fn name(&self) -> &'static str {
        self.hook.as_str()
    }

    /// Plans the change without writing anything: a reload that does not fit the tables
    /// (services, real servers, lookup tables — in one step or service by service) is
    /// refused before anything of it is applied; so is any change once an apply failed
    /// half-way (see [`Dataplane::apply`]: only a restart rebuilds the tables).
    fn check(&self, desired: &DesiredState) -> Result<(), DataplaneError> {
        desired.validate()?;
        if let Some(why) = &self.broken {
            return Err(broken_error(why));
        }
        match plan_with(&self.state, desired, &source_toward) {
            Err(DataplaneError::Capacity(_)) => {
                plan_or_steps(&self.state, desired, &source_toward).map(|_| ())
            }
            r => r.map(|_| ()),
        }
    }

    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError> {
        if let Some(why) = &self.broken {
            return Err(broken_error(why));
        }
        let planned = plan_or_steps(&self.state, desired, &|a| {
            let src = source_toward(a);
            if src.is_none() {
                warn!(real_server = %a, "TUN: no route toward the real server; its flows are dropped");
            }
            src
        })?;
        let mut report = ApplyReport::default();
        for (i, (next, ops, r)) in planned.into_iter().enumerate() {
            if i > 0 {
                // What the previous step freed may be taken now: let packets still reading
                // it (an XDP run takes microseconds) finish first.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            for op in &ops {
                if let Err(e) = execute(&mut self.bpf, op) {
                    self.broken = Some(e.to_string());
                    return Err(backend(e));
                }
                match op {
                    Op::ResetRealCounters(id) => {
                        self.offset_real.remove(id);
                    }
                    Op::ResetServiceCounters(id) => {
                        self.offset_service.remove(id);
                    }
                    _ => {}
                }
            }
            self.state = next;
            report.merge(r);
        }
        Ok(report)
    }

    fn stats(&self) -> Result<DataplaneStats, DataplaneError> {
        let mut out = DataplaneStats::default();
        for (vs, s) in &self.state.services {
            let t = maps::service_traffic(&self.bpf, s.id).map_err(backend)?;
            let e = self.offset(s.id, false);
            let mut ss = ServiceStats {
                packets: t.in_packets + t.out_packets,
                bytes: t.in_bytes + t.out_bytes,
                new_conns: t.new_conns,
                active_conns: counts(&t, e).1,
                real_servers: BTreeMap::new(),
            };
            for (&k, r) in &s.reals {
                let t = maps::real_traffic(&self.bpf, r.id).map_err(backend)?;
                let e = self.offset(r.id, true);
                ss.real_servers.insert(
                    k,
                    RealServerStats {
                        weight: r.weight,
                        in_packets: t.in_packets,
                        in_bytes: t.in_bytes,
                        out_packets: t.out_packets,
                        out_bytes: t.out_bytes,
                        new_conns: t.new_conns,
                        active_conns: counts(&t, e).1,
                        inactive_conns: None,
                    },
                );
            }
            out.services.insert(*vs, ss);
        }
        out.reasons = maps::counters(&self.bpf).map_err(backend)?.named().collect();
        out.flow_cache = Some(maps::cache_stats(&self.bpf).map_err(backend)?);
        Ok(out)
    }

    fn maintain(&mut self) -> Result<usize, DataplaneError> {
        self.refresh_tun_sources()?;
        self.refresh_interface_macs()?;
        self.expire_connections(maps::monotonic_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::RealServerSpec;

    fn vs(s: &str) -> VirtualServerKey {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        VirtualServerKey { address: sa.ip(), port: sa.port(), protocol: Protocol::Tcp }
    }

    fn rs(a: &str, w: u32) -> RealServerSpec {
        RealServerSpec { addr: a.parse().unwrap(), port: 8080, weight: w }
    }

    fn desired(algo: LbAlgo, reals: &[RealServerSpec]) -> DesiredState {
        let mut spec = ServiceSpec::new(algo, LbKind::Nat);
        spec.real_servers = reals.to_vec();
        DesiredState { services: BTreeMap::from([(vs("198.18.100.1:80"), spec)]) }
    }

    fn pos(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).expect("op present")
    }

    /// Found by review: a kernel master syncs a short connection's open (ESTABLISHED) and its
    /// close in one message; the close looked only at the table, which the batch is written
    /// to after the loop, so it was dropped and the open written: the copy stayed open (and
    /// active for lc/wlc) for the TCP timeout. The close now sees the batch's own opens.
    #[test]
    fn a_close_after_its_open_in_the_same_batch_is_written_closed() {
        let (state, _, _) =
            plan(&State::default(), &desired(LbAlgo::Rr, &[rs("198.18.2.10", 1)])).unwrap();
        let open = crate::sync::SyncEntry {
            protocol: Protocol::Tcp,
            lb_kind: LbKind::Nat,
            client: "198.51.100.7:40000".parse().unwrap(),
            vip: "198.18.100.1:80".parse().unwrap(),
            real_server: "198.18.2.10:8080".parse().unwrap(),
            idle_secs: 1,
            closed: false,
        };
        let closed = crate::sync::SyncEntry { closed: true, ..open };
        let t = Timeouts::default();
        let nothing = |_: &LbFlowKey| false;
        let (w, r) = import_writes(&state, &t, &[open, closed], 10_000_000_000, &nothing);
        assert_eq!(r, ImportReport { opened: 1, closed: 1 });
        // One forward entry, closed, and its reply entry: each key once, in its final state.
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].1.flags & LB_FLOW_F_CLOSED, LB_FLOW_F_CLOSED);
        assert_eq!(w[1].1.flags & LB_FLOW_F_REPLY, LB_FLOW_F_REPLY);
        // A close alone, of a flow not in the table: nothing written; of one there: written.
        let (w, r) = import_writes(&state, &t, &[closed], 10_000_000_000, &nothing);
        assert_eq!((w.len(), r), (0, ImportReport::default()));
        let (w, r) = import_writes(&state, &t, &[closed], 10_000_000_000, &|_| true);
        assert_eq!((w.len(), r), (2, ImportReport { opened: 0, closed: 1 }));
        // An open after its close (a new connection on the same ports) ends open.
        let (w, _) = import_writes(&state, &t, &[open, closed, open], 10_000_000_000, &nothing);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].1.flags & LB_FLOW_F_CLOSED, 0);
    }

    /// Found by review: flows imported by connection sync are open here but were opened on
    /// another director; when they closed, the closes outnumbered the opens and the active
    /// count saturated at 0, and stayed below the truth for good. The sweep's offset may now
    /// be negative.
    #[test]
    fn imported_flows_count_as_active_until_they_close() {
        // After a failover: 100 imported flows open, none opened here.
        let o = offset(0, 0, 100);
        assert_eq!(active(0, 0, o), 100);
        // 30 of them close, 10 new ones open: 80 open.
        assert_eq!(active(10, 30, o), 80);
        // The next sweep finds 80 open: nothing to correct.
        assert_eq!(offset(10, 30, 80), o);
        // Evictions without FIN still count as gone (a positive offset).
        assert_eq!(active(50, 0, offset(50, 0, 20)), 20);
    }

    /// Applies `desired` to `state` as `apply` does (one step, or service by service when it
    /// does not fit): the state reached, after checking every step keeps each service that
    /// lives through it with real servers if it had any.
    fn apply_pure(state: &State, desired: &DesiredState) -> Result<State, DataplaneError> {
        let steps = plan_or_steps(state, desired, &|_| None)?;
        let mut at = state.clone();
        for (next, _, _) in steps {
            for (k, s) in &next.services {
                let before = at.services.get(k).map(|o| !o.spec.real_servers.is_empty());
                assert!(
                    before != Some(true) || !s.spec.real_servers.is_empty(),
                    "{k}: emptied by a step"
                );
            }
            at = next;
        }
        Ok(at)
    }

    fn specs(s: &State) -> BTreeMap<VirtualServerKey, ServiceSpec> {
        s.services.iter().map(|(k, a)| (*k, a.spec.clone())).collect()
    }

    fn sorted(d: &DesiredState) -> BTreeMap<VirtualServerKey, ServiceSpec> {
        let mut d = d.services.clone();
        for s in d.values_mut() {
            s.real_servers.sort();
        }
        d
    }

    /// Found by review: a change that fits the tables but not beside what it replaces — a
    /// service renamed at the service limit, a real server renumbered at the real-server
    /// limit — was refused whole (and so was every later apply, which still held it). It is
    /// now applied service by service.
    #[test]
    fn a_change_at_the_id_limits_is_applied_service_by_service() {
        let one = |i: u32| {
            let mut spec = ServiceSpec::new(LbAlgo::Lc, LbKind::Nat);
            spec.real_servers = vec![rs("198.18.2.10", 1)];
            (vs(&format!("198.18.{}.{}:80", 100 + i / 200, i % 200 + 1)), spec)
        };
        let mut d = DesiredState { services: (0..LB_SERVICES_MAX).map(one).collect() };
        let s = apply_pure(&State::default(), &d).unwrap();
        let (k, spec) = d.services.pop_first().unwrap();
        d.services.insert(VirtualServerKey { port: 8080, ..k }, spec);
        assert!(matches!(plan(&s, &d), Err(DataplaneError::Capacity(_))), "one step does not fit");
        assert_eq!(specs(&apply_pure(&s, &d).unwrap()), sorted(&d));

        let svc = |i: u32| {
            let mut spec = ServiceSpec::new(LbAlgo::Lc, LbKind::Nat);
            spec.real_servers = (0..256u32)
                .map(|j| RealServerSpec {
                    addr: format!("10.{i}.{j}.1").parse().unwrap(),
                    port: 80,
                    weight: 1,
                })
                .collect();
            (vs(&format!("198.18.100.{}:80", i + 1)), spec)
        };
        let mut d = DesiredState { services: (0..16).map(svc).collect() };
        let s = apply_pure(&State::default(), &d).unwrap();
        d.services.values_mut().next().unwrap().real_servers[0].addr =
            "10.200.0.1".parse().unwrap();
        assert!(matches!(plan(&s, &d), Err(DataplaneError::Capacity(_))), "one step does not fit");
        assert_eq!(specs(&apply_pure(&s, &d).unwrap()), sorted(&d));
    }

    /// Found by review: new lookup tables for every service, which fit the ring twice over
    /// (as configuration checks), found no contiguous room in a ring fragmented by earlier
    /// one-service changes. Service by service, each old table is freed before the next new
    /// one is placed.
    #[test]
    fn new_tables_that_do_not_fit_a_fragmented_ring_go_in_service_by_service() {
        // Chunks per service, 8190 in all (what configuration checks allow).
        let sizes: [u32; 45] = [
            1, 16, 512, 16, 128, 256, 1024, 32, 256, 256, 1, 8, 4, 128, 64, 512, 4, 256, 1024, 1,
            32, 4, 8, 128, 256, 1, 1, 16, 8, 512, 1, 1024, 4, 256, 512, 32, 16, 512, 32, 16, 128,
            16, 32, 128, 16,
        ];
        assert!(sizes.iter().sum::<u32>() <= LB_RING_CHUNKS / 2);
        let svc = |i: usize, persist: bool| {
            let mut spec = ServiceSpec::new(LbAlgo::Wrr, LbKind::Nat);
            // A wrr table of 1 + (64 s - 1) entries: s chunks.
            spec.real_servers = vec![
                RealServerSpec { addr: "198.18.2.1".parse().unwrap(), port: 80, weight: 1 },
                RealServerSpec {
                    addr: "198.18.2.2".parse().unwrap(),
                    port: 80,
                    weight: 64 * sizes[i] - 1,
                },
            ];
            spec.persistence_timeout = if persist { 300 } else { 0 };
            (vs(&format!("198.18.100.{}:80", i + 1)), spec)
        };
        let mut persist = [false; 45];
        let desired_of =
            |p: &[bool; 45]| DesiredState { services: (0..45).map(|i| svc(i, p[i])).collect() };
        let mut s = apply_pure(&State::default(), &desired_of(&persist)).unwrap();
        for i in [22, 43, 40, 39, 15] {
            persist[i] = !persist[i];
            s = apply_pure(&s, &desired_of(&persist)).unwrap();
        }
        for p in persist.iter_mut() {
            *p = !*p;
        }
        let d = desired_of(&persist);
        assert!(matches!(plan(&s, &d), Err(DataplaneError::Capacity(_))), "one step does not fit");
        assert_eq!(specs(&apply_pure(&s, &d).unwrap()), sorted(&d));
    }

    #[test]
    fn new_service_writes_reals_then_set_then_service() {
        let (s, ops, rep) = plan(
            &State::default(),
            &desired(LbAlgo::Wrr, &[rs("198.18.2.10", 1), rs("198.18.2.11", 2)]),
        )
        .unwrap();
        assert_eq!(rep.services_added.len(), 1);
        assert_eq!(rep.real_servers_added, 2);
        let last_real = ops.iter().rposition(|o| matches!(o, Op::PutReal(..))).unwrap();
        let ring = pos(&ops, |o| matches!(o, Op::WriteRing { .. }));
        let set = pos(&ops, |o| matches!(o, Op::WriteSet { .. }));
        let svc = pos(&ops, |o| matches!(o, Op::PutService(..)));
        assert!(last_real < ring && ring < set && set < svc);
        match &ops[svc] {
            Op::PutService(_, v) => assert_eq!(v.active_slot, 0),
            _ => unreachable!(),
        }
        match &ops[ring] {
            Op::WriteRing { entries, .. } => assert_eq!(entries.len(), 3, "wrr 1:2"),
            _ => unreachable!(),
        }
        assert_eq!(s.services.len(), 1);
        // Applying the same state again changes nothing.
        let (_, ops2, rep2) =
            plan(&s, &desired(LbAlgo::Wrr, &[rs("198.18.2.11", 2), rs("198.18.2.10", 1)])).unwrap();
        assert!(ops2.is_empty() && rep2.is_empty(), "{ops2:?}");
    }

    #[test]
    fn changes_go_to_the_inactive_slot_and_removals_after_the_switch() {
        let d1 = desired(LbAlgo::Rr, &[rs("198.18.2.10", 1), rs("198.18.2.11", 1)]);
        let (s1, _, _) = plan(&State::default(), &d1).unwrap();
        let d2 = desired(LbAlgo::Rr, &[rs("198.18.2.10", 0), rs("198.18.2.12", 1)]);
        let (s2, ops, rep) = plan(&s1, &d2).unwrap();
        assert_eq!(
            (rep.real_servers_added, rep.real_servers_removed, rep.real_servers_reweighted),
            (1, 1, 1)
        );
        let set = pos(&ops, |o| matches!(o, Op::WriteSet { .. }));
        let svc = pos(&ops, |o| matches!(o, Op::PutService(..)));
        match (&ops[set], &ops[svc]) {
            (Op::WriteSet { index, set }, Op::PutService(_, v)) => {
                assert_eq!(*index, v.id * 2 + 1, "the inactive slot");
                assert_eq!(v.active_slot, 1);
                assert_eq!(set.n_reals, 2);
            }
            _ => unreachable!(),
        }
        let (removed_id, drained_id, new_id) = {
            let a = &s1.services[&vs("198.18.100.1:80")].reals;
            let b = &s2.services[&vs("198.18.100.1:80")].reals;
            (
                a[&("198.18.2.11".parse().unwrap(), 8080)].id,
                a[&("198.18.2.10".parse().unwrap(), 8080)].id,
                b[&("198.18.2.12".parse().unwrap(), 8080)].id,
            )
        };
        let put = |id: u32| pos(&ops, |o| matches!(o, Op::PutReal(i, _) if *i == id));
        assert!(put(new_id) < svc, "a new real server exists before the set naming it goes live");
        assert!(put(removed_id) > svc, "a removed one disappears only after the switch");
        assert!(put(drained_id) > svc, "a drained one is quiesced only after the switch");
        match &ops[put(drained_id)] {
            Op::PutReal(_, r) => assert_eq!(r.flags, LB_REAL_F_AVAILABLE | LB_REAL_F_QUIESCED),
            _ => unreachable!(),
        }
        match &ops[put(removed_id)] {
            Op::PutReal(_, r) => assert_eq!(r.flags, 0),
            _ => unreachable!(),
        }
        assert_ne!(new_id, removed_id, "ids are not reused within one apply");
        // rr skips the drained server.
        let ring = pos(&ops, |o| matches!(o, Op::WriteRing { .. }));
        match &ops[ring] {
            Op::WriteRing { entries, .. } => assert_eq!(entries, &vec![new_id]),
            _ => unreachable!(),
        }
        // Next change flips back to slot 0, and the old ring region was released.
        let (_, ops3, _) = plan(&s2, &desired(LbAlgo::Rr, &[rs("198.18.2.12", 1)])).unwrap();
        assert!(ops3.iter().any(|o| matches!(o, Op::PutService(_, v) if v.active_slot == 0)));
    }

    #[test]
    fn removing_a_service_deletes_it_first_and_frees_everything() {
        let (s1, _, _) =
            plan(&State::default(), &desired(LbAlgo::Mh, &[rs("198.18.2.10", 1)])).unwrap();
        let free_before = State::default().ring.free_chunks();
        assert!(s1.ring.free_chunks() < free_before);
        let (s2, ops, rep) = plan(&s1, &DesiredState::default()).unwrap();
        assert!(matches!(ops[0], Op::DeleteService(_)));
        assert_eq!(rep.services_removed.len(), 1);
        assert_eq!(s2.ring.free_chunks(), free_before);
        assert_eq!(s2.real_ids.free.len(), LB_REALS_MAX as usize);
        // A re-added real server id gets a new generation.
        let (s3, _, _) = plan(&s2, &desired(LbAlgo::Mh, &[rs("198.18.2.10", 1)])).unwrap();
        let r = s3.services.values().next().unwrap().reals.values().next().unwrap();
        assert_eq!(r.gen, 2);
    }

    /// A real server that leaves a live service stays in it as far as closes of its flows go;
    /// once the service is deleted (its id free for another), in none: neither it nor one that
    /// left earlier names the service id any more.
    #[test]
    fn real_servers_of_a_deleted_service_are_in_no_service() {
        let two = desired(LbAlgo::Rr, &[rs("198.18.2.10", 1), rs("198.18.2.11", 1)]);
        let (s1, _, _) = plan(&State::default(), &two).unwrap();
        let sid = s1.services.values().next().unwrap().id;
        let (s2, ops, _) = plan(&s1, &desired(LbAlgo::Rr, &[rs("198.18.2.10", 1)])).unwrap();
        let left = ops.iter().find_map(|o| match o {
            Op::PutReal(id, r) if r.flags == 0 => Some((*id, r.service_id)),
            _ => None,
        });
        let (left_id, in_service) = left.expect("the leaving real server is marked gone");
        assert_eq!(in_service, sid, "closes of its flows still count on the live service");
        let (_, ops, _) = plan(&s2, &DesiredState::default()).unwrap();
        let gone: BTreeMap<u32, u32> = ops
            .iter()
            .filter_map(|o| match o {
                Op::PutReal(id, r) => Some((*id, r.service_id)),
                _ => None,
            })
            .collect();
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert_eq!(gone[&left_id], LB_REAL_NO_SERVICE, "the one that left earlier too");
        assert!(gone.values().all(|&s| s == LB_REAL_NO_SERVICE));
    }

    /// Found by review: a live entry rewritten in place (a new TUN outer source) could be read
    /// by a packet half old and half new — an array update is a plain copy — and an IPv6
    /// source is 16 bytes. A changed source now goes in the other slot first; no write changes
    /// a byte the data path reads but the one-byte slot index.
    #[test]
    fn a_new_tun_source_never_shows_half_written() {
        let base = real_entry("fd48:4c42:2::10".parse().unwrap(), 80, LB_REAL_F_AVAILABLE, 3, 1);
        let (old, new) = ([1, 2, 3, 4], [5, 6, 7, 8]);
        let (first, slot) = tun_writes(base, (new, 0), new);
        assert_eq!((first.len(), slot, *first[0].tun_src()), (1, 0, new), "a new entry");
        for live in [0, 1] {
            let (w, slot) = tun_writes(base, (old, live), new);
            assert_eq!((w.len(), slot), (2, live ^ 1));
            // First the other slot: the live one (what a reader uses) keeps its bytes.
            assert_eq!((w[0].tun_slot, *w[0].tun_src()), (live, old));
            assert_eq!(w[0].tun_srcs[(live ^ 1) as usize], new);
            // Then only the index moves.
            assert_eq!(w[1], LbReal { tun_slot: live ^ 1, ..w[0] });
            assert_eq!(*w[1].tun_src(), new);
        }
        // An unchanged source: one write, the same slot.
        let (w, slot) = tun_writes(base, (old, 1), old);
        assert_eq!((w.len(), slot, *w[0].tun_src()), (1, 1, old));
    }

    /// `desired` for mh over `reals`, of `configured` real servers in the configuration.
    fn mh(reals: &[RealServerSpec], configured: usize) -> DesiredState {
        let mut d = desired(LbAlgo::Mh, reals);
        d.services.values_mut().for_each(|s| s.configured_real_servers = configured);
        d
    }

    /// The ring entries of the only service of `s`'s last plan, as real server addresses.
    fn ring_addrs(s: &State, ops: &[Op]) -> Vec<IpAddr> {
        let by_id: HashMap<u32, IpAddr> = s
            .services
            .values()
            .flat_map(|a| a.reals.iter().map(|(&(addr, _), r)| (r.id, addr)))
            .collect();
        let entries = ops
            .iter()
            .find_map(|o| match o {
                Op::WriteRing { entries, .. } => Some(entries),
                _ => None,
            })
            .expect("a ring written");
        entries.iter().map(|id| by_id[id]).collect()
    }

    #[test]
    fn maglev_keeps_its_table_size_when_servers_leave() {
        let many: Vec<_> = (10..20).map(|i| rs(&format!("198.18.2.{i}"), 1)).collect();
        let (s1, ops1, _) = plan(&State::default(), &mh(&many, 10)).unwrap();
        let (s2, ops2, _) = plan(&s1, &mh(&many[..4], 10)).unwrap();
        assert_eq!(ring_addrs(&s1, &ops1).len(), 1021);
        assert_eq!(ring_addrs(&s2, &ops2).len(), 1021);
    }

    /// Found by review: the Maglev table kept the size it had been given before, so a
    /// director that once had 11 servers up kept 2039 slots after 8 went down, while one
    /// started with the 3 up used 509: two directors with the same configuration mapped two
    /// thirds of the clients differently. The size now comes from the configuration alone.
    #[test]
    fn maglev_tables_are_the_same_on_directors_with_the_same_configuration() {
        let all: Vec<_> = (10..21).map(|i| rs(&format!("198.18.2.{i}"), 1)).collect();
        let (s1, _, _) = plan(&State::default(), &mh(&all, 11)).unwrap();
        let (old, ops_old, _) = plan(&s1, &mh(&all[..3], 11)).unwrap();
        let (fresh, ops_fresh, _) = plan(&State::default(), &mh(&all[..3], 11)).unwrap();
        let (a, b) = (ring_addrs(&old, &ops_old), ring_addrs(&fresh, &ops_fresh));
        assert_eq!(a.len(), 2039, "sized for the 11 configured");
        assert_eq!(a, b, "the same table on both directors");
        // A configuration that lists 3 sizes it for 3, on either.
        let (_, ops, _) = plan(&old, &mh(&all[..3], 3)).unwrap();
        assert_eq!(ring_addrs(&old, &ops).len(), 509);
    }

    /// The user-space mask of an imported template's client is the data path's
    /// (`set_persist_key`: prefix 0 keeps the whole address).
    #[test]
    fn mask_prefix_keeps_the_network() {
        let m = |a: &str, p| mask_prefix(a.parse().unwrap(), p).to_string();
        assert_eq!(m("198.51.100.77", 0), "198.51.100.77");
        assert_eq!(m("198.51.100.77", 24), "198.51.100.0");
        assert_eq!(m("198.51.100.77", 17), "198.51.0.0");
        assert_eq!(m("198.51.100.77", 32), "198.51.100.77");
        assert_eq!(m("198.51.100.77", 1), "128.0.0.0");
        assert_eq!(m("2001:db8:aa:bb::7", 64), "2001:db8:aa:bb::");
        assert_eq!(m("2001:db8:aa:bb::7", 48), "2001:db8:aa::");
        assert_eq!(m("2001:db8:aa:bb::7", 128), "2001:db8:aa:bb::7");
        assert_eq!(m("2001:db8:aa:bb::7", 0), "2001:db8:aa:bb::7");
    }

    #[test]
    fn ring_allocator_coalesces() {
        let mut a = RingAlloc::new(100);
        let x = a.alloc(10).unwrap();
        let y = a.alloc(20).unwrap();
        let z = a.alloc(30).unwrap();
        assert_eq!((x, y, z), (0, 10, 30));
        a.release(y, 20);
        assert_eq!(a.alloc(25), Some(60), "first fit skips the 20-chunk hole");
        a.release(x, 10);
        a.release(z, 30);
        assert_eq!(a.alloc(60), Some(0), "holes merged");
        assert!(a.alloc(100).is_none());
    }
}
