//! Data-plane state: the [`Dataplane`] trait the reconciler's output is applied through, and
//! its implementations (XDP; IPVS later; `none` for VRRP-only directors).
//!
//! An implementation receives the whole desired state every time and applies only the
//! difference to what it applied last, in an order that never leaves a live service with an
//! empty or half-written real-server set.

use std::{collections::BTreeMap, net::SocketAddr};

use crate::{config::VirtualServerKey, reconcile::DesiredService};

/// Live counters of one real server of one virtual server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RealServerCounters {
    pub active_conns: u64,
    pub inactive_conns: u64,
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
}

pub type Counters = BTreeMap<(VirtualServerKey, SocketAddr), RealServerCounters>;

pub trait Dataplane: Send {
    /// `xdp`, `ipvs` or `none`, as in the config's `dataplane` key.
    fn kind(&self) -> &'static str;
    /// Makes the data plane forward according to `desired` (the complete set of services).
    fn apply(&mut self, desired: &[DesiredService]) -> anyhow::Result<()>;
    /// Per real-server counters, for status output.
    fn counters(&self) -> Counters {
        Counters::new()
    }
}

/// No forwarding (VRRP-only director, keepalived `-P`): remembers the desired state so
/// status output can show it.
#[derive(Debug, Default)]
pub struct NoDataplane {
    pub applied: Vec<DesiredService>,
}

impl Dataplane for NoDataplane {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn apply(&mut self, desired: &[DesiredService]) -> anyhow::Result<()> {
        self.applied = desired.to_vec();
        Ok(())
    }
}
