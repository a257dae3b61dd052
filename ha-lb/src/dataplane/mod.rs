//! Data-plane state: the `Dataplane` trait, the desired-state types the reconciler hands it,
//! and its implementations (`xdp::XdpDataplane`: XDP or TC; `ipvs::IpvsDataplane`: kernel
//! IPVS).
//!
//! The types here use keepalived's vocabulary (`virtual_server`, `real_server`, `lb_algo`,
//! `lb_kind`, `weight`, `persistence_timeout`) — the config model's own enums and keys — and
//! know nothing about BPF:
//! the reconciler builds a [`DesiredState`] from the configuration, VRRP states and health
//! checks, and calls [`Dataplane::apply`] with the whole of it every time something changes.
//! Each implementation diffs against what it last applied.

pub mod ipvs;
pub mod maglev;
pub mod sched;
pub mod xdp;

use std::{collections::BTreeMap, net::IpAddr};

// One name per concept: the data plane speaks the configuration's words for a virtual
// server's identity, scheduler and forwarding method.
pub use crate::config::{LbAlgo, LbKind, Protocol, VirtualServerKey};

/// `p`'s IP protocol number: the data path's keys, connection sync's wire formats.
pub const fn ip_protocol(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => ha_lb_common::lb::IPPROTO_TCP,
        Protocol::Udp => ha_lb_common::lb::IPPROTO_UDP,
    }
}

/// The protocol of IP protocol number `n` (`None`: one the data path does not balance).
pub const fn protocol_of(n: u8) -> Option<Protocol> {
    match n {
        ha_lb_common::lb::IPPROTO_TCP => Some(Protocol::Tcp),
        ha_lb_common::lb::IPPROTO_UDP => Some(Protocol::Udp),
        _ => None,
    }
}

/// One `real_server` of a virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServerSpec {
    pub addr: IpAddr,
    /// Ignored for DR (and TUN): the packet keeps the virtual port.
    pub port: u16,
    /// 0 = drained: existing connections stay, no new ones.
    pub weight: u32,
}

/// What one virtual server should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub lb_algo: LbAlgo,
    pub lb_kind: LbKind,
    /// Client affinity in seconds (0 = off): new connections from a client IP that had one
    /// within this time go to the same real server (keepalived/IPVS semantics).
    pub persistence_timeout: u32,
    /// Persistence per network of this prefix length (keepalived `persistence_granularity`,
    /// IPVS `-M`); 0: per client address.
    pub persistence_granularity: u8,
    /// `sh`/`mh` hash the client port too (IPVS `sh-port`/`mh-port`).
    pub hash_port: bool,
    /// The real servers that should receive traffic (health-checked ones only; the
    /// reconciler removes failed ones or sets their weight to 0 for `inhibit_on_failure`).
    pub real_servers: Vec<RealServerSpec>,
    /// How many real servers the configuration lists for the service, whatever their health
    /// (0: as many as `real_servers`). The eBPF data plane sizes an `mh` service's Maglev
    /// table by it: from the configuration alone, so that every director with the same
    /// configuration builds the same table, and it stays while servers come and go.
    pub configured_real_servers: usize,
}

impl ServiceSpec {
    pub fn new(lb_algo: LbAlgo, lb_kind: LbKind) -> ServiceSpec {
        ServiceSpec {
            lb_algo,
            lb_kind,
            persistence_timeout: 0,
            persistence_granularity: 0,
            hash_port: false,
            real_servers: Vec::new(),
            configured_real_servers: 0,
        }
    }
}

/// Every virtual server the data plane should serve, and nothing else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<VirtualServerKey, ServiceSpec>,
}

/// Most real servers one virtual server can have in the eBPF data plane's maps (kernel
/// IPVS has no such limit).
pub const REAL_SERVERS_PER_SERVICE_MAX: usize = 256;

impl DesiredState {
    /// Checks what every data plane needs: real servers of the VIP's address family, no
    /// duplicates. (Capacities are each data plane's own.)
    pub fn validate(&self) -> Result<(), DataplaneError> {
        for (vs, spec) in &self.services {
            let mut seen = std::collections::BTreeSet::new();
            for rs in &spec.real_servers {
                if rs.addr.is_ipv4() != vs.address.is_ipv4() {
                    return Err(DataplaneError::Invalid(format!(
                        "virtual_server {vs}: real_server {} is of another address family",
                        rs.addr
                    )));
                }
                if !seen.insert((rs.addr, rs.port)) {
                    return Err(DataplaneError::Invalid(format!(
                        "virtual_server {vs}: real_server {} port {} listed twice",
                        rs.addr, rs.port
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What an [`Dataplane::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub services_added: Vec<VirtualServerKey>,
    /// Services whose algorithm, kind, persistence or real-server set changed.
    pub services_changed: Vec<VirtualServerKey>,
    pub services_removed: Vec<VirtualServerKey>,
    pub real_servers_added: usize,
    pub real_servers_removed: usize,
    /// Real servers whose weight changed.
    pub real_servers_reweighted: usize,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        *self == ApplyReport::default()
    }

    /// Adds what a later step of the same apply changed (a service changed by several steps
    /// is listed once).
    pub fn merge(&mut self, o: ApplyReport) {
        for (mine, theirs) in [
            (&mut self.services_added, o.services_added),
            (&mut self.services_changed, o.services_changed),
            (&mut self.services_removed, o.services_removed),
        ] {
            for k in theirs {
                if !mine.contains(&k) {
                    mine.push(k);
                }
            }
        }
        self.real_servers_added += o.real_servers_added;
        self.real_servers_removed += o.real_servers_removed;
        self.real_servers_reweighted += o.real_servers_reweighted;
    }
}

/// Counters of one real server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealServerStats {
    pub weight: u32,
    /// Client -> real server.
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Real server -> client (NAT only).
    pub out_packets: u64,
    pub out_bytes: u64,
    pub new_conns: u64,
    pub active_conns: u64,
    /// IPVS's InActConn (connections not established: closing, or in TIME_WAIT); `None`
    /// where the data plane does not count them apart (XDP's `active_conns` are the
    /// established connections it has not seen close: half-open and closing ones are in
    /// neither).
    pub inactive_conns: Option<u64>,
}

/// Counters of one virtual server (both directions summed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_conns: u64,
    pub active_conns: u64,
    pub real_servers: BTreeMap<(IpAddr, u16), RealServerStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneStats {
    pub services: BTreeMap<VirtualServerKey, ServiceStats>,
    /// Per-reason frame counters (forwarded, passed and dropped, by why), in a stable order.
    pub reasons: Vec<(&'static str, u64)>,
    /// The XDP flow cache: (`hits`, `fills`) — packets sent from it without a
    /// connection-tracking lookup, and slots the full path (re)filled after a send. `None` for IPVS.
    pub flow_cache: Option<(u64, u64)>,
}

impl DataplaneStats {
    pub fn reason(&self, name: &str) -> u64 {
        self.reasons.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("invalid desired state: {0}")]
    Invalid(String),
    #[error("not supported by the {dataplane} data plane: {what}")]
    Unsupported { dataplane: &'static str, what: String },
    #[error("data plane capacity exhausted: {0}")]
    Capacity(String),
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// How often the daemon calls [`Dataplane::maintain`].
pub const MAINTAIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How long [`Dataplane::maintain`] keeps the persistence template of a client with open
/// connections alive (XDP: `XdpDataplane::hold_templates`): beyond the next call, with room
/// for one late or slow one.
pub const TEMPLATE_HOLD: std::time::Duration = std::time::Duration::from_secs(12);

/// A forwarding data plane the reconciler drives.
pub trait Dataplane {
    /// A short name for logs and status ("xdp", "ipvs").
    fn name(&self) -> &'static str;
    /// Makes the data plane serve exactly `desired`, changing only what differs from the last
    /// successful apply. A live service never sees an empty or half-written real-server set.
    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError>;
    /// Whether `desired` could be applied, changing nothing: a reload asks before it swaps
    /// its configuration, and is rejected whole if not. What every data plane needs is
    /// checked by default; one with limits of its own (map capacities, scheduler modules)
    /// checks them too. An apply may still fail later (a kernel error).
    fn check(&self, desired: &DesiredState) -> Result<(), DataplaneError> {
        desired.validate()
    }
    /// Counters per virtual server and real server, and per-reason frame counters.
    fn stats(&self) -> Result<DataplaneStats, DataplaneError>;
    /// Periodic housekeeping (expiring idle connections, resynchronising counters); the
    /// daemon calls it every [`MAINTAIN_INTERVAL`]. Returns how many connections it expired.
    fn maintain(&mut self) -> Result<usize, DataplaneError> {
        Ok(0)
    }
}

/// No forwarding (VRRP-only director, like keepalived `-P`): accepts any desired state and
/// reports nothing.
#[derive(Debug, Default)]
pub struct NoDataplane {
    applied: DesiredState,
}

impl Dataplane for NoDataplane {
    fn name(&self) -> &'static str {
        "none"
    }
    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError> {
        self.applied = desired.clone();
        Ok(ApplyReport::default())
    }
    fn stats(&self) -> Result<DataplaneStats, DataplaneError> {
        Ok(DataplaneStats::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(s: &str) -> VirtualServerKey {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        VirtualServerKey { address: sa.ip(), port: sa.port(), protocol: Protocol::Tcp }
    }

    #[test]
    fn validate_rejects_mixed_families_and_duplicates() {
        let mut d = DesiredState::default();
        let mut spec = ServiceSpec::new(LbAlgo::Rr, LbKind::Nat);
        spec.real_servers.push(RealServerSpec {
            addr: "198.18.2.1".parse().unwrap(),
            port: 80,
            weight: 1,
        });
        d.services.insert(vs("198.18.0.1:80"), spec.clone());
        assert!(d.validate().is_ok());
        spec.real_servers.push(spec.real_servers[0]);
        d.services.insert(vs("198.18.0.1:80"), spec.clone());
        assert!(d.validate().unwrap_err().to_string().contains("twice"));
        spec.real_servers.pop();
        spec.real_servers.push(RealServerSpec {
            addr: "fd48:4c42::2".parse().unwrap(),
            port: 80,
            weight: 1,
        });
        d.services.insert(vs("198.18.0.1:80"), spec);
        assert!(d.validate().unwrap_err().to_string().contains("family"));
    }
}
