//! The forwarding program's maps (layout documented in `ha_lb_common::lb`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use ha_lb_common::lb::{
    LbBackendSet, LbConfig, LbFlow, LbFlowKey, LbPersist, LbPersistKey, LbReal, LbReason,
    LbRingChunk, LbService, LbServiceKey, LbTraffic, LB_CONNS_MAX, LB_PERSIST_MAX, LB_REALS_MAX,
    LB_RING_CHUNKS, LB_SERVICES_MAX,
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

#[map(name = "LB_CHAIN")]
pub static LB_CHAIN: ProgramArray = ProgramArray::with_max_entries(1, 0);
