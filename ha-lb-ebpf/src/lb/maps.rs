//! The forwarding program's maps (layout documented in `ha_lb_common::lb`).

use super::fwd::FibParams;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use ha_lb_common::lb::{
    LbBackendSet, LbConfig, LbFlow, LbFlowKey, LbIfMac, LbPersist, LbPersistKey, LbReal, LbReason,
    LbRingChunk, LbService, LbServiceKey, LbTraffic, LB_CONNS_MAX, LB_IF_MAC_DIRECT, LB_IF_MAC_MAX,
    LB_PERSIST_MAX, LB_REALS_MAX, LB_RING_CHUNKS, LB_SERVICES_MAX, LB_TX_PORTS_MAX,
};

#[map(name = "LB_SERVICES")]
pub static LB_SERVICES: HashMap<LbServiceKey, LbService> =
    HashMap::with_max_entries(LB_SERVICES_MAX, 0);

#[map(name = "LB_SETS")]
pub static LB_SETS: Array<LbBackendSet> = Array::with_max_entries(LB_SERVICES_MAX * 2, 0);

#[map(name = "LB_RING")]
pub static LB_RING: Array<LbRingChunk> = Array::with_max_entries(LB_RING_CHUNKS, 0);

#[map(name = "LB_REALS")]
pub static LB_REALS: Array<LbReal> = Array::with_max_entries(LB_REALS_MAX, 0);

#[map(name = "LB_CONNS")]
pub static LB_CONNS: LruHashMap<LbFlowKey, LbFlow> = LruHashMap::with_max_entries(LB_CONNS_MAX, 0);

#[map(name = "LB_PERSIST")]
pub static LB_PERSIST: LruHashMap<LbPersistKey, LbPersist> =
    LruHashMap::with_max_entries(LB_PERSIST_MAX, 0);

/// Live active-connection estimate per real server, shared by all CPUs (lc/wlc read it).
#[map(name = "LB_REAL_LOAD")]
pub static LB_REAL_LOAD: Array<u64> = Array::with_max_entries(LB_REALS_MAX, 0);

#[map(name = "LB_SERVICE_STATS")]
pub static LB_SERVICE_STATS: PerCpuArray<LbTraffic> =
    PerCpuArray::with_max_entries(LB_SERVICES_MAX, 0);

#[map(name = "LB_REAL_STATS")]
pub static LB_REAL_STATS: PerCpuArray<LbTraffic> = PerCpuArray::with_max_entries(LB_REALS_MAX, 0);

#[map(name = "LB_REASONS")]
pub static LB_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LbReason::COUNT, 0);

#[map(name = "LB_CONFIG")]
pub static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// Per-CPU round-robin cursor per service (rr, wrr).
#[map(name = "LB_RR")]
pub static LB_RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(LB_SERVICES_MAX, 0);

/// Per-packet temporaries that would not fit on the stack: the verifier allows 512 bytes for
/// a whole call chain, counting each frame rounded up to 32 bytes (before Linux 6.8), and the
/// BPF calling convention spills whatever lives across a helper call. Per CPU, and a packet
/// is processed on one CPU from start to end, so there is no sharing.
#[repr(C)]
pub struct Scratch {
    pub fib: FibParams,
    /// Service lookup key.
    pub skey: LbServiceKey,
    /// The packet's own connection-tracking key.
    pub fkey: LbFlowKey,
    /// The other direction's key (NAT reply entry / its forward entry).
    pub rkey: LbFlowKey,
    pub pkey: LbPersistKey,
    /// A flow value being written.
    pub flow: LbFlow,
    /// `LB_CACHE_EPOCH` when this packet's full path began (see `cache::forget`).
    pub cache_epoch: u32,
}

#[map(name = "LB_SCRATCH")]
pub static LB_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    LB_SCRATCH.get_ptr_mut(0)
}

/// The MAC of each interface the program is attached to (filled at attach). Frames unicast to
/// another host's MAC are not ours to forward.
#[map(name = "LB_IF_MAC")]
pub static LB_IF_MAC: Array<LbIfMac> = Array::with_max_entries(LB_IF_MAC_DIRECT, 0);

/// The same, for ifindexes from `LB_IF_MAC_DIRECT` up.
#[map(name = "LB_IF_MAC_HASH")]
pub static LB_IF_MAC_HASH: HashMap<u32, LbIfMac> = HashMap::with_max_entries(LB_IF_MAC_MAX, 0);

/// The interfaces the program is attached to, by ifindex (filled at attach, with
/// `LB_IF_MAC`): the only ones an XDP redirect goes to (`Frame::redirect`).
#[map(name = "LB_TX_PORTS")]
pub static LB_TX_PORTS: DevMapHash = DevMapHash::with_max_entries(LB_TX_PORTS_MAX, 0);

/// Per-CPU token bucket for the ICMP errors the program sends itself (fragmentation needed /
/// packet too big): [tokens, last refill (coarse ns)].
#[map(name = "LB_ICMP_TOKENS")]
pub static LB_ICMP_TOKENS: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counter for the outer IPv4 ID of TUN packets.
#[map(name = "LB_TUN_ID")]
pub static LB_TUN_ID: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
