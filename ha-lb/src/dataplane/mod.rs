//! Data-plane state: the `Dataplane` trait, the desired-state types the reconciler hands it,
//! and its implementations (`xdp::XdpDataplane` now; an IPVS one later).
//!
//! The types here use keepalived's vocabulary (`virtual_server`, `real_server`, `lb_algo`,
//! `lb_kind`, `weight`, `persistence_timeout`) and know nothing about BPF or the config crate:
//! the reconciler builds a [`DesiredState`] from the configuration, VRRP states and health
//! checks, and calls [`Dataplane::apply`] with the whole of it every time something changes.
//! Each implementation diffs against what it last applied.

pub mod maglev;
pub mod sched;
pub mod xdp;

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

/// Transport protocol of a virtual server (keepalived `protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// A virtual server's identity: VIP, port and protocol (keepalived `virtual_server IP PORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualServer {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for VirtualServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V4(a) => write!(f, "{}:{}/{}", a, self.port, self.protocol.as_str()),
            IpAddr::V6(a) => write!(f, "[{}]:{}/{}", a, self.port, self.protocol.as_str()),
        }
    }
}

/// Scheduler (keepalived `lb_algo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbAlgo {
    /// Round robin (weights only matter as 0 = drained).
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least (active) connections.
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Source hashing.
    Sh,
    /// Maglev hashing.
    Mh,
}

impl LbAlgo {
    pub const ALL: [LbAlgo; 6] =
        [LbAlgo::Rr, LbAlgo::Wrr, LbAlgo::Lc, LbAlgo::Wlc, LbAlgo::Sh, LbAlgo::Mh];
    pub fn as_str(self) -> &'static str {
        match self {
            LbAlgo::Rr => "rr",
            LbAlgo::Wrr => "wrr",
            LbAlgo::Lc => "lc",
            LbAlgo::Wlc => "wlc",
            LbAlgo::Sh => "sh",
            LbAlgo::Mh => "mh",
        }
    }
}

impl FromStr for LbAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        LbAlgo::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown lb_algo `{s}` (rr, wrr, lc, wlc, sh, mh)"))
    }
}

/// Forwarding method (keepalived `lb_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbKind {
    /// LVS-NAT: destination rewritten to the real server; replies come back through the
    /// director and get the VIP back as source.
    Nat,
    /// LVS-DR (direct routing): only the Ethernet header changes; real servers hold the VIP on
    /// `lo` and answer clients directly.
    Dr,
    /// LVS-TUN (IP-in-IP). Not implemented by the XDP data plane yet.
    Tun,
}

impl LbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LbKind::Nat => "NAT",
            LbKind::Dr => "DR",
            LbKind::Tun => "TUN",
        }
    }
}

impl FromStr for LbKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "NAT" => Ok(LbKind::Nat),
            "DR" => Ok(LbKind::Dr),
            "TUN" => Ok(LbKind::Tun),
            _ => Err(format!("unknown lb_kind `{s}` (NAT, DR, TUN)")),
        }
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
    /// `sh`/`mh` hash the client port too (IPVS `sh-port`/`mh-port`).
    pub hash_port: bool,
    /// The real servers that should receive traffic (health-checked ones only; the
    /// reconciler removes failed ones or sets their weight to 0 for `inhibit_on_failure`).
    pub real_servers: Vec<RealServerSpec>,
}

impl ServiceSpec {
    pub fn new(lb_algo: LbAlgo, lb_kind: LbKind) -> ServiceSpec {
        ServiceSpec {
            lb_algo,
            lb_kind,
            persistence_timeout: 0,
            hash_port: false,
            real_servers: Vec::new(),
        }
    }
}

/// Every virtual server the data plane should serve, and nothing else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<VirtualServer, ServiceSpec>,
}

/// Most real servers one virtual server can have.
pub const REAL_SERVERS_PER_SERVICE_MAX: usize = 256;

impl DesiredState {
    /// Checks what every data plane needs: real servers of the VIP's address family, no
    /// duplicates, at most [`REAL_SERVERS_PER_SERVICE_MAX`].
    pub fn validate(&self) -> Result<(), DataplaneError> {
        for (vs, spec) in &self.services {
            if spec.real_servers.len() > REAL_SERVERS_PER_SERVICE_MAX {
                return Err(DataplaneError::Invalid(format!(
                    "virtual_server {vs}: {} real_servers (at most {REAL_SERVERS_PER_SERVICE_MAX})",
                    spec.real_servers.len()
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            for rs in &spec.real_servers {
                if rs.addr.is_ipv4() != vs.vip.is_ipv4() {
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
    pub services_added: Vec<VirtualServer>,
    /// Services whose algorithm, kind, persistence or real-server set changed.
    pub services_changed: Vec<VirtualServer>,
    pub services_removed: Vec<VirtualServer>,
    pub real_servers_added: usize,
    pub real_servers_removed: usize,
    /// Real servers whose weight changed.
    pub real_servers_reweighted: usize,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        *self == ApplyReport::default()
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
    pub services: BTreeMap<VirtualServer, ServiceStats>,
    /// Per-reason frame counters (forwarded, passed and dropped, by why), in a stable order.
    pub reasons: Vec<(&'static str, u64)>,
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

/// A forwarding data plane the reconciler drives.
pub trait Dataplane {
    /// A short name for logs and status ("xdp", "ipvs").
    fn name(&self) -> &'static str;
    /// Makes the data plane serve exactly `desired`, changing only what differs from the last
    /// successful apply. A live service never sees an empty or half-written real-server set.
    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError>;
    /// Counters per virtual server and real server, and per-reason frame counters.
    fn stats(&self) -> Result<DataplaneStats, DataplaneError>;
    /// Periodic housekeeping (expiring idle connections, resynchronising counters); the
    /// daemon calls it every few seconds. Returns how many connections it expired.
    fn maintain(&mut self) -> Result<usize, DataplaneError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(s: &str) -> VirtualServer {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        VirtualServer { vip: sa.ip(), port: sa.port(), protocol: Protocol::Tcp }
    }

    #[test]
    fn names_round_trip_keepalived_vocabulary() {
        for a in LbAlgo::ALL {
            assert_eq!(a.as_str().parse::<LbAlgo>().unwrap(), a);
        }
        assert_eq!("dr".parse::<LbKind>().unwrap(), LbKind::Dr);
        assert!("foo".parse::<LbAlgo>().is_err());
        assert_eq!(vs("[fd48:4c42::1]:80").to_string(), "[fd48:4c42::1]:80/TCP");
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
