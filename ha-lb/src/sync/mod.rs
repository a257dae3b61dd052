//! Connection synchronisation between directors (`docs/conntrack-sync.md`), keepalived's
//! `lvs_sync_daemon` for the XDP data plane.
//!
//! The pure parts are here: [`export`] (which forward entries of `LB_CONNS` and which
//! persistence templates of `LB_PERSIST` the master sends: new, changed, refreshed, closed,
//! owed), [`wire`] (the datagram codec) and [`session`] (the
//! decisions: pacing, table requests and answers, who imports, the last diff on leaving
//! MASTER), and [`ipvs_wire`] (the kernel's IPVS sync messages, version 1: imported as
//! ours are, and sent instead of ours with `protocol = "ipvs"`). The transport (the multicast socket) is the daemon's (`daemon.rs`: `sync_send`,
//! `sync_receive`); the import into the table is [`XdpDataplane::import_flows`].
//!
//! A [`SyncEntry`] carries what a director needs to recreate a flow whose ids it does not
//! share: the import maps `(VIP, port, protocol)` to its own service and `(real addr, port)`
//! to its own real id and generation.
//!
//! [`XdpDataplane::import_flows`]: crate::dataplane::xdp::XdpDataplane::import_flows

pub mod export;
pub mod ipvs_wire;
pub mod session;
pub mod wire;

use std::net::{IpAddr, SocketAddr};

use crate::config::{LbKind, Protocol};

pub use export::Exporter;
pub use session::Session;
pub use wire::{decode, encode, request, Datagram, SyncDecodeError, MAX_DATAGRAM};

/// One synchronised connection (a forward entry of `LB_CONNS`, in director-independent terms).
///
/// `client`, `vip` and `real_server` are of one address family: [`wire::decode`] cannot produce
/// anything else (the family is one byte per entry), and [`wire::encode`] skips entries that
/// mix families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyncEntry {
    pub protocol: Protocol,
    /// The flow's forwarding method, fixed when it started (`LB_FLOW_F_DR` / `LB_FLOW_F_TUN`).
    pub lb_kind: LbKind,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub real_server: SocketAddr,
    /// Seconds since the flow's last packet on the sending director (the importer sets
    /// `last_seen` = now − idle, so the flow expires on the backup when it would have here).
    pub idle_secs: u32,
    /// The flow is closed (FIN/RST seen, `LB_FLOW_F_CLOSED`): the importer marks its copy
    /// closed, so it stops counting as active and expires on the short FIN timeout.
    pub closed: bool,
}

impl SyncEntry {
    /// Whether client, VIP and real server are all IPv4 or all IPv6.
    pub fn same_family(&self) -> bool {
        self.client.is_ipv4() == self.vip.is_ipv4()
            && self.vip.is_ipv4() == self.real_server.is_ipv4()
    }
}

/// One synchronised persistence template (an entry of `LB_PERSIST`, in director-independent
/// terms): clients of the network `client`/`prefix` of the service `(vip, protocol)` go to
/// `real_server` for their new connections while the template lives (the service's
/// `persistence_timeout` after its last use).
///
/// `vip`, `client` and `real_server` are of one address family, as in [`SyncEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyncTemplate {
    pub protocol: Protocol,
    pub vip: SocketAddr,
    /// The client's address masked to `prefix`, as the template's key holds it.
    pub client: IpAddr,
    /// The service's `persistence_granularity` the key was masked with (0: the whole
    /// address). The importer takes the template only for a service with the same one: its
    /// data path would look the client up under another key.
    pub prefix: u8,
    pub real_server: SocketAddr,
    /// Seconds since the template was last used on the sending director (the importer sets
    /// `last_seen` = now − idle, so the template expires on the backup when it would have
    /// here, after the backup's own `persistence_timeout`).
    pub idle_secs: u32,
}

impl SyncTemplate {
    /// Whether VIP, client network and real server are all IPv4 or all IPv6.
    pub fn same_family(&self) -> bool {
        self.vip.is_ipv4() == self.client.is_ipv4()
            && self.client.is_ipv4() == self.real_server.is_ipv4()
    }
}

/// What a sync datagram carries: connections or persistence templates (never both in one
/// datagram, see [`wire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncItem {
    Conn(SyncEntry),
    Template(SyncTemplate),
}

impl From<SyncEntry> for SyncItem {
    fn from(e: SyncEntry) -> Self {
        SyncItem::Conn(e)
    }
}

impl From<SyncTemplate> for SyncItem {
    fn from(t: SyncTemplate) -> Self {
        SyncItem::Template(t)
    }
}
