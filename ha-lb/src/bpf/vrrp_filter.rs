//! Control-plane side of the VRRP fast-path filter: which VRIDs are configured where, and the
//! per-reason counters.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapError, PerCpuArray};
use ha_lb_common::vrrp::{VrrpCounter, VrrpVridKey, VrrpVridValue, VRRP_STATS, VRRP_VRIDS};

use super::{Bpf, BpfError};

/// Makes the filter's VRID map equal to `wanted`: inserts/updates what is wanted first, then
/// removes what is no longer wanted, so a VRID that stays configured never disappears.
pub fn set_vrids(
    bpf: &mut Bpf,
    wanted: &BTreeMap<VrrpVridKey, VrrpVridValue>,
) -> Result<(), BpfError> {
    let err = |source| BpfError::Map { name: VRRP_VRIDS, source };
    let mut map: HashMap<_, VrrpVridKey, VrrpVridValue> =
        HashMap::try_from(bpf.map_mut(VRRP_VRIDS)?).map_err(err)?;
    for (k, v) in wanted {
        map.insert(k, v, 0).map_err(err)?;
    }
    let stale: Vec<VrrpVridKey> =
        map.keys().filter_map(Result::ok).filter(|k| !wanted.contains_key(k)).collect();
    for k in stale {
        match map.remove(&k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// The filter's counters, summed over CPUs, indexed by [`VrrpCounter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VrrpFilterCounters(pub [u64; VrrpCounter::COUNT as usize]);

impl VrrpFilterCounters {
    pub fn get(&self, c: VrrpCounter) -> u64 {
        self.0[c as usize]
    }
    /// (name, value) pairs in a stable order, for status output.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        VrrpCounter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }
}

pub fn counters(bpf: &Bpf) -> Result<VrrpFilterCounters, BpfError> {
    let err = |source| BpfError::Map { name: VRRP_STATS, source };
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(bpf.map(VRRP_STATS)?).map_err(err)?;
    let mut out = VrrpFilterCounters::default();
    for c in VrrpCounter::ALL {
        let per_cpu = map.get(&(c as u32), 0).map_err(err)?;
        out.0[c as usize] = per_cpu.iter().sum();
    }
    Ok(out)
}
