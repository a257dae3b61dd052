//! Control-plane side of the L4 forwarding program (`ha_lb_xdp`): typed reads and writes of
//! its maps. Policy (ids, slots, ordering of updates) lives in `dataplane::xdp`; this module
//! only moves bytes, one map operation per call.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use ha_lb_common::lb::{
    LbBackendSet, LbConfig, LbFlow, LbFlowKey, LbPersist, LbPersistKey, LbReal, LbReason,
    LbRingChunk, LbService, LbServiceKey, LbTraffic, FAMILY_V4, FAMILY_V6, LB_CACHE_EPOCH,
    LB_CACHE_FILLS, LB_CACHE_HITS, LB_CACHE_STATS, LB_CONFIG, LB_CONNS, LB_PERSIST, LB_REALS,
    LB_REAL_LOAD, LB_REAL_STATS, LB_REASONS, LB_RING, LB_RING_CHUNK, LB_SERVICES, LB_SERVICE_STATS,
    LB_SETS,
};

use super::{Bpf, BpfError};

/// A program that passes every frame. Attach it to the peer of a veth that `ha_lb_xdp`
/// transmits into with XDP_TX (labs only: the kernel wakes such a peer only if it runs XDP).
pub const PROG_PASS: &str = "ha_lb_pass";

fn map_err(name: &'static str) -> impl Fn(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

/// Whether a failed removal only says the key was not there. aya 0.14 reports that from
/// `HashMap::remove` as the delete call's ENOENT, not as `KeyNotFound`.
fn not_there(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// An address as the maps store it: wire-order words, IPv4 in word 0.
pub fn addr_words(a: IpAddr) -> ([u32; 4], u8) {
    match a {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut w = [0u32; 4];
            for (i, c) in o.chunks(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            (w, FAMILY_V6)
        }
    }
}

/// The inverse of [`addr_words`].
pub fn words_addr(w: &[u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(w[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (i, x) in w.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&x.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

/// A port as the maps store it (network byte order).
pub fn port_be(p: u16) -> u16 {
    p.to_be()
}

pub fn set_config(bpf: &mut Bpf, cfg: &LbConfig) -> Result<(), BpfError> {
    let e = map_err(LB_CONFIG);
    let mut m: Array<_, LbConfig> = Array::try_from(bpf.map_mut(LB_CONFIG)?).map_err(&e)?;
    m.set(0, cfg, 0).map_err(e)
}

pub fn put_service(bpf: &mut Bpf, key: &LbServiceKey, svc: &LbService) -> Result<(), BpfError> {
    let e = map_err(LB_SERVICES);
    let mut m: HashMap<_, LbServiceKey, LbService> =
        HashMap::try_from(bpf.map_mut(LB_SERVICES)?).map_err(&e)?;
    m.insert(key, svc, 0).map_err(e)
}

pub fn delete_service(bpf: &mut Bpf, key: &LbServiceKey) -> Result<(), BpfError> {
    let e = map_err(LB_SERVICES);
    let mut m: HashMap<_, LbServiceKey, LbService> =
        HashMap::try_from(bpf.map_mut(LB_SERVICES)?).map_err(&e)?;
    match m.remove(key) {
        Err(x) if !not_there(&x) => Err(e(x)),
        _ => Ok(()),
    }
}

pub fn services(bpf: &Bpf) -> Result<Vec<(LbServiceKey, LbService)>, BpfError> {
    let e = map_err(LB_SERVICES);
    let m: HashMap<_, LbServiceKey, LbService> =
        HashMap::try_from(bpf.map(LB_SERVICES)?).map_err(&e)?;
    m.iter().collect::<Result<Vec<_>, _>>().map_err(e)
}

pub fn set_backend_set(bpf: &mut Bpf, index: u32, set: &LbBackendSet) -> Result<(), BpfError> {
    let e = map_err(LB_SETS);
    let mut m: Array<_, LbBackendSet> = Array::try_from(bpf.map_mut(LB_SETS)?).map_err(&e)?;
    m.set(index, set, 0).map_err(e)
}

pub fn backend_set(bpf: &Bpf, index: u32) -> Result<LbBackendSet, BpfError> {
    let e = map_err(LB_SETS);
    let m: Array<_, LbBackendSet> = Array::try_from(bpf.map(LB_SETS)?).map_err(&e)?;
    m.get(&index, 0).map_err(e)
}

/// Writes `entries` (real ids) into the ring starting at chunk `first_chunk`, one map update
/// per chunk of [`LB_RING_CHUNK`] entries.
pub fn write_ring(bpf: &mut Bpf, first_chunk: u32, entries: &[u32]) -> Result<(), BpfError> {
    let e = map_err(LB_RING);
    let mut m: Array<_, LbRingChunk> = Array::try_from(bpf.map_mut(LB_RING)?).map_err(&e)?;
    for (i, part) in entries.chunks(LB_RING_CHUNK).enumerate() {
        let mut c = LbRingChunk::default();
        c.reals[..part.len()].copy_from_slice(part);
        m.set(first_chunk + i as u32, c, 0).map_err(&e)?;
    }
    Ok(())
}

pub fn put_real(bpf: &mut Bpf, id: u32, real: &LbReal) -> Result<(), BpfError> {
    let e = map_err(LB_REALS);
    let mut m: Array<_, LbReal> = Array::try_from(bpf.map_mut(LB_REALS)?).map_err(&e)?;
    m.set(id, real, 0).map_err(e)
}

pub fn real(bpf: &Bpf, id: u32) -> Result<LbReal, BpfError> {
    let e = map_err(LB_REALS);
    let m: Array<_, LbReal> = Array::try_from(bpf.map(LB_REALS)?).map_err(&e)?;
    m.get(&id, 0).map_err(e)
}

fn zero_per_cpu(bpf: &mut Bpf, name: &'static str, id: u32) -> Result<(), BpfError> {
    let e = map_err(name);
    let mut m: PerCpuArray<_, LbTraffic> = PerCpuArray::try_from(bpf.map_mut(name)?).map_err(&e)?;
    let n = nr_cpus().map_err(|(_, io)| {
        e(MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: io }))
    })?;
    let zeros =
        PerCpuValues::try_from(vec![LbTraffic::default(); n]).map_err(|x| e(MapError::from(x)))?;
    m.set(id, zeros, 0).map_err(e)
}

/// Zeroes a service id's counters (before the id is given to a new service).
pub fn reset_service_counters(bpf: &mut Bpf, id: u32) -> Result<(), BpfError> {
    zero_per_cpu(bpf, LB_SERVICE_STATS, id)
}

/// Zeroes a real-server id's counters and load (before the id is given to a new real server).
pub fn reset_real_counters(bpf: &mut Bpf, id: u32) -> Result<(), BpfError> {
    zero_per_cpu(bpf, LB_REAL_STATS, id)?;
    set_load(bpf, id, 0)
}

fn sum_per_cpu(bpf: &Bpf, name: &'static str, id: u32) -> Result<LbTraffic, BpfError> {
    let e = map_err(name);
    let m: PerCpuArray<_, LbTraffic> = PerCpuArray::try_from(bpf.map(name)?).map_err(&e)?;
    let mut t = LbTraffic::default();
    for v in m.get(&id, 0).map_err(e)?.iter() {
        t.in_packets += v.in_packets;
        t.in_bytes += v.in_bytes;
        t.out_packets += v.out_packets;
        t.out_bytes += v.out_bytes;
        t.new_conns += v.new_conns;
        t.closed_conns += v.closed_conns;
        t.established += v.established;
        t.aborted += v.aborted;
    }
    Ok(t)
}

/// A service's counters summed over CPUs.
pub fn service_traffic(bpf: &Bpf, id: u32) -> Result<LbTraffic, BpfError> {
    sum_per_cpu(bpf, LB_SERVICE_STATS, id)
}

/// A real server's counters summed over CPUs.
pub fn real_traffic(bpf: &Bpf, id: u32) -> Result<LbTraffic, BpfError> {
    sum_per_cpu(bpf, LB_REAL_STATS, id)
}

/// The shared active-connection estimate lc/wlc schedule by.
pub fn load(bpf: &Bpf, id: u32) -> Result<u64, BpfError> {
    let e = map_err(LB_REAL_LOAD);
    let m: Array<_, u64> = Array::try_from(bpf.map(LB_REAL_LOAD)?).map_err(&e)?;
    m.get(&id, 0).map_err(e)
}

pub fn set_load(bpf: &mut Bpf, id: u32, v: u64) -> Result<(), BpfError> {
    let e = map_err(LB_REAL_LOAD);
    let mut m: Array<_, u64> = Array::try_from(bpf.map_mut(LB_REAL_LOAD)?).map_err(&e)?;
    m.set(id, v, 0).map_err(e)
}

/// The per-reason frame counters, summed over CPUs, indexed by [`LbReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbCounters(pub [u64; LbReason::COUNT as usize]);

impl LbCounters {
    pub fn get(&self, r: LbReason) -> u64 {
        self.0[r as usize]
    }
    /// (name, value) pairs in a stable order, for status output.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        LbReason::ALL.iter().map(|r| (r.name(), self.get(*r)))
    }
    /// Per-reason difference `self - before`, only the non-zero ones.
    pub fn since(&self, before: &LbCounters) -> Vec<(&'static str, u64)> {
        LbReason::ALL
            .iter()
            .map(|r| (r.name(), self.get(*r) - before.get(*r)))
            .filter(|(_, d)| *d != 0)
            .collect()
    }
}

/// The flow cache's (hits, fills), summed over CPUs: packets sent from the per-CPU cache
/// without a connection-tracking lookup, and slots the full path (re)filled after a send
/// (once per flow and CPU every 64 jiffies while busy, and after every SYN/FIN/RST).
pub fn cache_stats(bpf: &Bpf) -> Result<(u64, u64), BpfError> {
    let e = map_err(LB_CACHE_STATS);
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(bpf.map(LB_CACHE_STATS)?).map_err(&e)?;
    let sum = |i: u32| -> Result<u64, BpfError> { Ok(m.get(&i, 0).map_err(&e)?.iter().sum()) };
    Ok((sum(LB_CACHE_HITS)?, sum(LB_CACHE_FILLS)?))
}

pub fn counters(bpf: &Bpf) -> Result<LbCounters, BpfError> {
    let e = map_err(LB_REASONS);
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(bpf.map(LB_REASONS)?).map_err(&e)?;
    let mut out = LbCounters::default();
    for r in LbReason::ALL {
        out.0[r as usize] = m.get(&(r as u32), 0).map_err(&e)?.iter().sum();
    }
    Ok(out)
}

fn conns_map(bpf: &Bpf) -> Result<HashMap<&MapData, LbFlowKey, LbFlow>, BpfError> {
    HashMap::try_from(bpf.map(LB_CONNS)?).map_err(map_err(LB_CONNS))
}

/// Every connection-tracking entry (forward and NAT reply).
///
/// Reads the map with `BPF_MAP_LOOKUP_BATCH`, [`BATCH`] entries per system call (the sweeper
/// reads the whole table every few seconds, and per-entry reads cost two calls per entry).
/// On kernels without batch operations (before 5.6) it falls back to per-entry reads, as [`flows_per_entry`] does.
pub fn flows(bpf: &Bpf) -> Result<Vec<(LbFlowKey, LbFlow)>, BpfError> {
    read_all(conns_map(bpf)?, LB_CONNS)
}

/// Every entry of a hash map, batched where the kernel can (see [`flows`]), else per entry
/// (entries that vanish meanwhile, by LRU eviction, are skipped).
fn read_all<K: bytemuck::Pod + aya::Pod, V: bytemuck::Pod + aya::Pod>(
    m: HashMap<&MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, BpfError> {
    if !BATCH_UNSUPPORTED.load(Ordering::Relaxed) {
        match batch::lookup_all(m.map()) {
            Ok(all) => return Ok(all),
            Err(io) if batch::unsupported(&io) => batch_unsupported("lookup", &io),
            Err(io) => return Err(batch_err(name, "bpf_map_lookup_batch", io)),
        }
    }
    Ok(m.iter().filter_map(Result::ok).collect())
}

/// [`flows`] the old way: `get_next_key` + `lookup` per entry. The fallback for kernels
/// without batch operations, and the baseline `flows` is measured against.
pub fn flows_per_entry(bpf: &Bpf) -> Result<Vec<(LbFlowKey, LbFlow)>, BpfError> {
    let m = conns_map(bpf)?;
    // Entries can vanish (LRU eviction) while we iterate: skip those.
    Ok(m.iter().filter_map(Result::ok).collect())
}

pub fn flow(bpf: &Bpf, key: &LbFlowKey) -> Result<Option<LbFlow>, BpfError> {
    match conns_map(bpf)?.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(LB_CONNS)(e)),
    }
}

fn persist_map(bpf: &Bpf) -> Result<HashMap<&MapData, LbPersistKey, LbPersist>, BpfError> {
    HashMap::try_from(bpf.map(LB_PERSIST)?).map_err(map_err(LB_PERSIST))
}

/// Every persistence template (`LB_PERSIST`), expired ones too (the data path leaves them
/// until they are used again or evicted), read as [`flows`] reads connections: batched, or
/// per entry on kernels without batch operations.
pub fn templates(bpf: &Bpf) -> Result<Vec<(LbPersistKey, LbPersist)>, BpfError> {
    read_all(persist_map(bpf)?, LB_PERSIST)
}

pub fn template(bpf: &Bpf, key: &LbPersistKey) -> Result<Option<LbPersist>, BpfError> {
    match persist_map(bpf)?.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(LB_PERSIST)(e)),
    }
}

/// Writes persistence templates (connection sync's import). The flow cache holds flows, not
/// templates (they are read only when a new flow is scheduled): nothing to invalidate.
pub fn put_templates(
    bpf: &mut Bpf,
    templates: &[(LbPersistKey, LbPersist)],
) -> Result<(), BpfError> {
    if templates.is_empty() {
        return Ok(());
    }
    let e = map_err(LB_PERSIST);
    let mut m: HashMap<_, LbPersistKey, LbPersist> =
        HashMap::try_from(bpf.map_mut(LB_PERSIST)?).map_err(&e)?;
    templates.iter().try_for_each(|(k, t)| m.insert(k, t, 0).map_err(&e))
}

/// Makes the data path's per-CPU flow cache forget every flow: called after every change to
/// `LB_CONNS` from user space, which the cache would otherwise outlive for up to its validity
/// (see the data path's `cache` module). Adds one to user space's own word of
/// `LB_CACHE_EPOCH` (word 1; the data path adds atomically to word 0 and never touches it),
/// so this read-modify-write cannot undo a data-path bump. The process that owns the maps is
/// its only writer.
pub fn invalidate_flow_cache(bpf: &mut Bpf) -> Result<(), BpfError> {
    let e = map_err(LB_CACHE_EPOCH);
    let mut m: Array<_, u64> = Array::try_from(bpf.map_mut(LB_CACHE_EPOCH)?).map_err(&e)?;
    let v = m.get(&1, 0).map_err(&e)?;
    m.set(1, v.wrapping_add(1), 0).map_err(e)
}

/// Writes one connection-tracking entry (tests and tools; the data path writes its own), as
/// [`put_flows`] does.
pub fn put_flow(bpf: &mut Bpf, key: &LbFlowKey, flow: &LbFlow) -> Result<(), BpfError> {
    put_flows(bpf, &[(*key, *flow)])
}

/// Writes `flows` (connection sync's import), then invalidates the flow cache once (also when
/// a write failed part-way).
pub fn put_flows(bpf: &mut Bpf, flows: &[(LbFlowKey, LbFlow)]) -> Result<(), BpfError> {
    if flows.is_empty() {
        return Ok(());
    }
    let e = map_err(LB_CONNS);
    let r = HashMap::<_, LbFlowKey, LbFlow>::try_from(bpf.map_mut(LB_CONNS)?)
        .map_err(&e)
        .and_then(|mut m| flows.iter().try_for_each(|(k, f)| m.insert(k, f, 0).map_err(&e)));
    let i = invalidate_flow_cache(bpf);
    r.and(i)
}

/// Removes one entry (gone already: fine), as [`remove_flows`] does.
pub fn remove_flow(bpf: &mut Bpf, key: &LbFlowKey) -> Result<(), BpfError> {
    remove_flows(bpf, std::slice::from_ref(key))
}

/// Removes the entries `keys` (those already gone are skipped), with `BPF_MAP_DELETE_BATCH`
/// ([`BATCH`] keys per system call) where the kernel has it, else one call per key.
///
/// Nothing to remove changes nothing (the sweeper calls this every few seconds). Otherwise the
/// flow cache is invalidated once, also when a delete failed part-way.
pub fn remove_flows(bpf: &mut Bpf, keys: &[LbFlowKey]) -> Result<(), BpfError> {
    if keys.is_empty() {
        return Ok(());
    }
    let r = remove_flows_uncached(bpf, keys);
    let i = invalidate_flow_cache(bpf);
    r.and(i)
}

fn remove_flows_uncached(bpf: &mut Bpf, keys: &[LbFlowKey]) -> Result<(), BpfError> {
    if !BATCH_UNSUPPORTED.load(Ordering::Relaxed) {
        let e = map_err(LB_CONNS);
        let m: HashMap<_, LbFlowKey, LbFlow> =
            HashMap::try_from(bpf.map_mut(LB_CONNS)?).map_err(&e)?;
        match batch::delete_all(m.map(), keys) {
            Ok(()) => return Ok(()),
            Err(io) if batch::unsupported(&io) => batch_unsupported("delete", &io),
            Err(io) => return Err(batch_err(LB_CONNS, "bpf_map_delete_batch", io)),
        }
    }
    let e = map_err(LB_CONNS);
    let mut m: HashMap<_, LbFlowKey, LbFlow> =
        HashMap::try_from(bpf.map_mut(LB_CONNS)?).map_err(&e)?;
    for k in keys {
        match m.remove(k) {
            Err(x) if !not_there(&x) => return Err(e(x)),
            _ => {}
        }
    }
    Ok(())
}

/// Set once the kernel refused a batch operation as unknown or unsupported: from then on the
/// per-entry calls are used without asking again.
static BATCH_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

fn batch_unsupported(op: &str, io: &std::io::Error) {
    BATCH_UNSUPPORTED.store(true, Ordering::Relaxed);
    tracing::debug!(
        op,
        error = %io,
        "kernel refuses BPF map batch operations (needs Linux 5.6+); using per-entry calls"
    );
}

fn batch_err(name: &'static str, call: &'static str, io_error: std::io::Error) -> BpfError {
    map_err(name)(MapError::SyscallError(aya::sys::SyscallError { call, io_error }))
}

/// Entries per batch system call: 4096 keys and values of `LB_CONNS` are 416 KiB of buffer.
pub const BATCH: usize = 4096;

/// `BPF_MAP_LOOKUP_BATCH` / `BPF_MAP_DELETE_BATCH` through bpf(2): aya 0.14 has no wrapper.
mod batch {
    use std::{
        io,
        os::fd::{AsFd, AsRawFd},
    };

    use aya::maps::MapData;
    use bytemuck::{Pod, Zeroable};

    use super::BATCH;

    /// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    /// The kernel-internal ENOTSUPP a map type without batch operations answers with.
    const ENOTSUPP: i32 = 524;

    /// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h, Linux 5.6+). The
    /// kernel reads `size_of::<BatchAttr>()` bytes and treats the rest of the union as zero.
    #[repr(C)]
    #[derive(Clone, Copy, Default, Pod, Zeroable)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

    /// Errors that mean "this kernel or map type has no batch operations", not "it failed".
    pub(super) fn unsupported(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM | libc::EOPNOTSUPP | ENOTSUPP))
    }

    /// The opaque iteration cursor: a bucket index (u32) for hash maps; libbpf sizes it as a
    /// key, and so do we (`LbFlowKey` is 40 bytes).
    type Cursor = [u64; 8];

    /// One batch call. Lookup: `keys`/`values` are filled, up to their (equal) length. Delete:
    /// `keys` are read, `values` must be empty. Returns the elements processed, which the
    /// kernel reports also on error (except EFAULT), with the error.
    fn call<K: Pod, V: Pod>(
        map: &MapData,
        cmd: libc::c_long,
        cursor: Option<(Option<&Cursor>, &mut Cursor)>,
        keys: &mut [K],
        values: &mut [V],
    ) -> (usize, io::Result<()>) {
        let lookup = cmd == BPF_MAP_LOOKUP_BATCH;
        assert!(if lookup { values.len() == keys.len() } else { values.is_empty() });
        let (in_batch, out_batch) = match cursor {
            Some((i, o)) => (i.map_or(0, |c| c.as_ptr() as u64), o.as_mut_ptr() as u64),
            None => (0, 0),
        };
        let mut attr = BatchAttr {
            in_batch,
            out_batch,
            keys: keys.as_mut_ptr() as u64,
            values: if lookup { values.as_mut_ptr() as u64 } else { 0 },
            count: u32::try_from(keys.len()).expect("batch fits u32"),
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::zeroed()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed. Every pointer in it
        // comes from a live borrow that outlives the call: the kernel writes (lookup) or reads
        // (delete) at most `count` = `keys.len()` keys of the map's key size and, for lookup,
        // as many values of its value size — the sizes of `K` and `V`, which aya checked when
        // it typed the map — plus at most a cursor (4 bytes for hash maps) into `out_batch`.
        // `K`, `V` and the cursor are Pod, so any bytes the kernel writes are valid values.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let res = if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
        (attr.count as usize, res)
    }

    /// Every element of a hash (or LRU hash) map, [`BATCH`] per call.
    pub(super) fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        let mut chunk = BATCH;
        let mut keys = vec![K::zeroed(); chunk];
        let mut values = vec![V::zeroed(); chunk];
        let (mut cursor, mut next) = (Cursor::zeroed(), Cursor::zeroed());
        let mut first = true;
        loop {
            let in_batch = if first { None } else { Some(&cursor) };
            let (n, res) = call(
                map,
                BPF_MAP_LOOKUP_BATCH,
                Some((in_batch, &mut next)),
                &mut keys,
                &mut values,
            );
            let n = n.min(chunk);
            match res {
                Ok(()) => {}
                // The end: the elements of this last call are valid.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
                    return Ok(out);
                }
                // One hash bucket holds more elements than the buffer: grow it and ask
                // again from the same point (nothing was returned).
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => {
                    chunk *= 2;
                    keys.resize(chunk, K::zeroed());
                    values.resize(chunk, V::zeroed());
                    continue;
                }
                Err(e) => return Err(e),
            }
            out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
            cursor = next;
            first = false;
        }
    }

    /// Deletes `keys`, [`BATCH`] per call; keys already gone are skipped (the kernel stops
    /// at the first missing key and reports how many it deleted before it).
    pub(super) fn delete_all<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<()> {
        let mut buf: Vec<K> = Vec::with_capacity(BATCH.min(keys.len()));
        let mut rest = keys;
        while !rest.is_empty() {
            let take = rest.len().min(BATCH);
            buf.clear();
            buf.extend_from_slice(&rest[..take]);
            let (n, res) = call::<K, u8>(map, BPF_MAP_DELETE_BATCH, None, &mut buf, &mut []);
            match res {
                Ok(()) => rest = &rest[take..],
                // keys[n] was not there (expired or evicted meanwhile): skip it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    rest = &rest[(n + 1).min(take)..]
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Forgets every connection and persistence template (tests; a full resync).
pub fn flush_flows(bpf: &mut Bpf) -> Result<(), BpfError> {
    let keys: Vec<LbFlowKey> = flows(bpf)?.into_iter().map(|(k, _)| k).collect();
    remove_flows(bpf, &keys)?;
    let e = map_err(LB_PERSIST);
    let mut m: HashMap<_, LbPersistKey, LbPersist> =
        HashMap::try_from(bpf.map_mut(LB_PERSIST)?).map_err(&e)?;
    let keys: Vec<_> = m.keys().filter_map(Result::ok).collect();
    for k in keys {
        match m.remove(&k) {
            Err(x) if !not_there(&x) => return Err(e(x)),
            _ => {}
        }
    }
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_coarse_ns` stamps flows with (at
/// tick resolution).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: exactly the clock `bpf_ktime_get_coarse_ns` reads
/// (the last tick), so a time stamp taken here is never ahead of the data path's next
/// reading. [`monotonic_ns`] can be up to a tick ahead: a `last_seen_ns` written from it looks
/// to the data path as if it were in the future (`now - last_seen` wraps) until the next tick.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The MAC address of `iface` in the calling thread's network namespace (SIOCGIFHWADDR).
pub fn interface_mac(iface: &str) -> std::io::Result<[u8; 6]> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad interface name"));
    }
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_ifru.ifru_hwaddr of a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the hwaddr member is the initialised one.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        // A tun or WireGuard device: frames there carry no Ethernet header to forward by.
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("{iface} is not an Ethernet device"),
        ));
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// The MAC recorded for interface `ifindex` (see [`set_interface_mac`]), if any.
pub fn interface_mac_of(bpf: &Bpf, ifindex: u32) -> Result<Option<[u8; 6]>, BpfError> {
    use ha_lb_common::lb::{LbIfMac, LB_IF_MAC, LB_IF_MAC_DIRECT, LB_IF_MAC_HASH};
    let v = if ifindex < LB_IF_MAC_DIRECT {
        let e = map_err(LB_IF_MAC);
        let m: Array<_, LbIfMac> = Array::try_from(bpf.map(LB_IF_MAC)?).map_err(&e)?;
        Some(m.get(&ifindex, 0).map_err(e)?)
    } else {
        let e = map_err(LB_IF_MAC_HASH);
        let m: HashMap<_, u32, LbIfMac> =
            HashMap::try_from(bpf.map(LB_IF_MAC_HASH)?).map_err(&e)?;
        match m.get(&ifindex, 0) {
            Ok(v) => Some(v),
            Err(x) if not_there(&x) => None,
            Err(x) => return Err(e(x)),
        }
    };
    Ok(v.filter(|v| v.attached != 0).map(|v| v.mac))
}

/// Takes interface `ifindex` out of the XDP redirect targets (`LB_TX_PORTS`) while keeping
/// its MAC: an interface the program runs on in generic mode (a VLAN device, a bridge, a
/// driver without XDP) cannot take a redirected frame (no `ndo_xdp_xmit`: the kernel would
/// drop it after the program counted it forwarded), so NAT toward it is passed translated
/// to the kernel and DR/TUN dropped, counted `egress_no_xdp`.
pub fn forget_tx_port(bpf: &mut Bpf, ifindex: u32) -> Result<(), BpfError> {
    use ha_lb_common::lb::LB_TX_PORTS;
    let e = map_err(LB_TX_PORTS);
    let mut m: aya::maps::DevMapHash<_> =
        aya::maps::DevMapHash::try_from(bpf.map_mut(LB_TX_PORTS)?).map_err(&e)?;
    match m.remove(ifindex) {
        Err(x) if !not_there(&x) => Err(e(x)),
        _ => Ok(()),
    }
}

/// Records (or with `None`, forgets) interface `ifindex` as one the forwarding program is
/// attached to, with its MAC: the program only forwards frames addressed to this host, and at
/// XDP only redirects to such interfaces (`LB_TX_PORTS`). Called in the interface's network
/// namespace (the redirect map takes the device by ifindex there).
pub fn set_interface_mac(
    bpf: &mut Bpf,
    ifindex: u32,
    mac: Option<[u8; 6]>,
) -> Result<(), BpfError> {
    use ha_lb_common::lb::{LbIfMac, LB_IF_MAC, LB_IF_MAC_DIRECT, LB_IF_MAC_HASH, LB_TX_PORTS};
    {
        let e = map_err(LB_TX_PORTS);
        let mut m: aya::maps::DevMapHash<_> =
            aya::maps::DevMapHash::try_from(bpf.map_mut(LB_TX_PORTS)?).map_err(&e)?;
        match mac {
            Some(_) => m.insert(ifindex, ifindex, None, 0).map_err(|x| match x {
                aya::maps::xdp::XdpMapError::MapError(x) => e(x),
                other => e(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: std::io::Error::other(other.to_string()),
                })),
            })?,
            None => match m.remove(ifindex) {
                Err(x) if !not_there(&x) => return Err(e(x)),
                _ => {}
            },
        }
    }
    let value = mac.map(|mac| LbIfMac { mac, attached: 1, _pad: 0 });
    if ifindex < LB_IF_MAC_DIRECT {
        let e = map_err(LB_IF_MAC);
        let mut m: Array<_, LbIfMac> = Array::try_from(bpf.map_mut(LB_IF_MAC)?).map_err(&e)?;
        return m.set(ifindex, value.unwrap_or_default(), 0).map_err(e);
    }
    let e = map_err(LB_IF_MAC_HASH);
    let mut m: HashMap<_, u32, LbIfMac> =
        HashMap::try_from(bpf.map_mut(LB_IF_MAC_HASH)?).map_err(&e)?;
    match value {
        Some(v) => m.insert(ifindex, v, 0).map_err(e),
        None => match m.remove(&ifindex) {
            Err(x) if !not_there(&x) => Err(e(x)),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_wire_order() {
        for a in ["198.18.0.1", "fd48:4c42::1:2"] {
            let ip: IpAddr = a.parse().unwrap();
            let (w, f) = addr_words(ip);
            assert_eq!(words_addr(&w, f), ip);
        }
        let (w, _) = addr_words("198.18.0.1".parse().unwrap());
        // Wire order in memory: the first byte of the word is 198.
        assert_eq!(w[0].to_ne_bytes(), [198, 18, 0, 1]);
        assert_eq!(port_be(80).to_ne_bytes(), [0, 80]);
    }
}
