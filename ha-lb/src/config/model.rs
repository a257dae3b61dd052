//! The one configuration model. Every front-end (native TOML today, a keepalived.conf
//! importer later) produces a [`Config`]; nothing downstream looks at text.
//!
//! The model is *resolved*: defaults, inherited values (virtual server → real server →
//! checker, global → instance) and references with weights are filled in by the
//! front-end, so consumers never re-derive them. A value here is the value the daemon runs.
//! All types are `PartialEq`/`Eq` so a reload can diff old against new, and every list
//! item has a stable key (see [`VrrpInstance::key`], [`VirtualServer::key`],
//! [`RealServer::key`]).
//!
//! Names follow keepalived.conf(5) so operators recognise them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// `virtual_ipaddress` entries: one type and one parser, shared with the VRRP core.
pub use crate::vrrp::vip::{Scope, VirtualIpAddress};

/// Default path of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/ha-lb/ha-lb.sock";

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub global: Global,
    pub vrrp_scripts: Vec<VrrpScript>,
    pub track_files: Vec<TrackFile>,
    pub vrrp_instances: Vec<VrrpInstance>,
    pub vrrp_sync_groups: Vec<VrrpSyncGroup>,
    pub virtual_server_groups: Vec<VirtualServerGroup>,
    /// One per service: a `virtual_server` of a `group` is here once per member, in the
    /// group's order (see [`VirtualServer::group`]).
    pub virtual_servers: Vec<VirtualServer>,
}

impl Config {
    pub fn vrrp_instance(&self, name: &str) -> Option<&VrrpInstance> {
        self.vrrp_instances.iter().find(|i| i.name == name)
    }

    pub fn vrrp_script(&self, name: &str) -> Option<&VrrpScript> {
        self.vrrp_scripts.iter().find(|s| s.name == name)
    }

    pub fn track_file(&self, name: &str) -> Option<&TrackFile> {
        self.track_files.iter().find(|t| t.name == name)
    }

    pub fn virtual_server(&self, key: &VirtualServerKey) -> Option<&VirtualServer> {
        self.virtual_servers.iter().find(|v| &v.key() == key)
    }

    /// The service whose health checks `key`'s real servers share: the first member of its
    /// `virtual_server` when that names a group (keepalived checks a group's real servers
    /// once), else `key` itself.
    pub fn check_lead(&self, key: &VirtualServerKey) -> VirtualServerKey {
        let Some(g) = self.virtual_server(key).and_then(|v| v.group.as_deref()) else {
            return *key;
        };
        (self.virtual_servers.iter())
            .find(|v| v.group.as_deref() == Some(g) && v.protocol == key.protocol)
            .map_or(*key, |v| v.key())
    }

    /// The services whose real servers are checked (each one not in a group, and each
    /// group's first member for each protocol): [`Self::check_lead`] for all at once.
    pub fn check_leads(&self) -> std::collections::BTreeSet<VirtualServerKey> {
        let mut seen = std::collections::BTreeSet::new();
        (self.virtual_servers.iter())
            .filter(|v| v.group.as_ref().is_none_or(|g| seen.insert((g, v.protocol))))
            .map(|v| v.key())
            .collect()
    }

    /// Whose checks `key`'s real servers have, as a reload sees it: a group's (by its name
    /// and protocol: its first member, whose key stands for it, may change), or its own.
    pub fn check_owner(&self, key: &VirtualServerKey) -> CheckOwner {
        match self.virtual_server(key).and_then(|v| v.group.clone()) {
            Some(g) => CheckOwner::Group(g, key.protocol),
            None => CheckOwner::Service(*key),
        }
    }

    /// Every service that shares `key`'s health checks (the members of its group's
    /// `virtual_server`, `key` first when it is the lead), or `key` alone.
    pub fn check_sharers(&self, key: &VirtualServerKey) -> Vec<VirtualServerKey> {
        let Some(g) = self.virtual_server(key).and_then(|v| v.group.as_deref()) else {
            return vec![*key];
        };
        (self.virtual_servers.iter())
            .filter(|v| v.group.as_deref() == Some(g) && v.protocol == key.protocol)
            .map(|v| v.key())
            .collect()
    }

    /// The sync group an instance belongs to, if any.
    pub fn sync_group_of(&self, instance: &str) -> Option<&VrrpSyncGroup> {
        self.vrrp_sync_groups.iter().find(|g| g.group.iter().any(|m| m == instance))
    }
}

// ---------------------------------------------------------------------------------------
// global
// ---------------------------------------------------------------------------------------

/// `[global]` — keepalived's `global_defs`, plus ha-lb's own knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Identifies this node in logs and notifications. `None`: the host name (keepalived
    /// default), resolved at run time.
    pub router_id: Option<String>,
    /// Which forwarding plane programs the virtual servers.
    pub dataplane: Dataplane,
    /// Unix socket of the control API.
    pub control_socket: PathBuf,
    /// Default user (and group) for every script. `None`: keepalived's rule — the
    /// `keepalived_script` user if it exists, else the daemon's own user (root).
    pub script_user: Option<ScriptUser>,
    /// Refuse to run scripts as root when any part of their path is writable by
    /// non-root (keepalived `enable_script_security`).
    pub enable_script_security: bool,
    /// Default VRRP version for IPv4 instances (keepalived `vrrp_version`, default 2).
    /// IPv6 instances always run version 3.
    pub vrrp_version: VrrpVersion,
    /// Default notify scripts: each instance inherits every hook it does not set itself.
    pub notify: Notify,
    /// Connection sync to the other directors (keepalived `lvs_sync_daemon`).
    pub lvs_sync_daemon: Option<LvsSyncDaemon>,
    /// Minimum spacing of gratuitous ARPs sent on one interface (keepalived
    /// `vrrp_garp_interval`); zero, the default: none. Copied into every instance's
    /// [`Garp::interval`].
    pub vrrp_garp_interval: Duration,
    /// The same for unsolicited neighbour advertisements (keepalived `vrrp_gna_interval`).
    pub vrrp_gna_interval: Duration,
}

/// keepalived's `lvs_sync_daemon INTERFACE VRRP_INSTANCE [id N]`: while `vrrp_instance` is
/// MASTER this director sends its new connections on `interface` (UDP multicast
/// 224.0.0.81:8848); the others import them, so established connections survive a failover
/// (see docs/conntrack-sync.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvsSyncDaemon {
    pub interface: String,
    pub vrrp_instance: String,
    /// Sync id carried in every datagram; `None`: the instance's `virtual_router_id`.
    pub id: Option<u8>,
    /// The format an XDP/TC director sends in (it imports both). keepalived.conf has no such
    /// option: the default, ha-lb's own.
    pub protocol: SyncProtocol,
}

/// Connection sync's wire format (`lvs_sync_daemon`'s `protocol`, docs/conntrack-sync.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SyncProtocol {
    /// ha-lb's own datagrams ("HLBS": closes, table requests, templates with their prefix).
    #[default]
    HaLb,
    /// The kernel's IPVS sync messages (protocol version 1), so a kernel IPVS backup (a
    /// keepalived + IPVS director not yet migrated) imports this director's connections.
    Ipvs,
}

impl SyncProtocol {
    pub const NAMES: &'static [&'static str] = &["ha-lb", "ipvs"];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncProtocol::HaLb => "ha-lb",
            SyncProtocol::Ipvs => "ipvs",
        }
    }
}

impl FromStr for SyncProtocol {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "ha-lb" => Ok(SyncProtocol::HaLb),
            "ipvs" => Ok(SyncProtocol::Ipvs),
            _ => Err(()),
        }
    }
}

impl Default for Global {
    fn default() -> Self {
        Global {
            router_id: None,
            dataplane: Dataplane::Xdp,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            script_user: None,
            enable_script_security: false,
            vrrp_version: VrrpVersion::V2,
            lvs_sync_daemon: None,
            notify: Notify::default(),
            vrrp_garp_interval: Duration::ZERO,
            vrrp_gna_interval: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dataplane {
    /// XDP programs forward; the ha-lb default.
    #[default]
    Xdp,
    /// The same eBPF data path at the TC ingress hook: for veth-only deployments (containers,
    /// namespaces), where XDP first copies every socket's packet.
    Tc,
    /// Kernel IPVS over generic netlink (the keepalived way).
    Ipvs,
    /// VRRP only: no virtual servers are programmed.
    None,
}

impl Dataplane {
    /// Whether ha-lb's own eBPF data path forwards (at the XDP or the TC hook).
    pub fn is_ebpf(self) -> bool {
        matches!(self, Dataplane::Xdp | Dataplane::Tc)
    }

    pub const NAMES: &'static [&'static str] = &["xdp", "tc", "ipvs", "none"];

    pub fn as_str(self) -> &'static str {
        match self {
            Dataplane::Xdp => "xdp",
            Dataplane::Tc => "tc",
            Dataplane::Ipvs => "ipvs",
            Dataplane::None => "none",
        }
    }
}

impl FromStr for Dataplane {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "xdp" => Ok(Dataplane::Xdp),
            "tc" => Ok(Dataplane::Tc),
            "ipvs" => Ok(Dataplane::Ipvs),
            "none" => Ok(Dataplane::None),
            _ => Err(()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// scripts
// ---------------------------------------------------------------------------------------

/// A command to execute directly (no shell), as an argument vector. The TOML front-end
/// accepts a string split like keepalived splits it (whitespace, with '…' or "…" quoting)
/// or an explicit array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Script {
    /// `argv[0]` is the program; never empty.
    pub argv: Vec<String>,
}

impl Script {
    /// Split a keepalived-style command line. `None` when it is empty or a quote is not
    /// closed.
    pub fn parse(line: &str) -> Option<Script> {
        let mut argv = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => cur.push(c),
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                None if c.is_whitespace() => {
                    if in_word {
                        argv.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                None => {
                    cur.push(c);
                    in_word = true;
                }
            }
        }
        if quote.is_some() {
            return None;
        }
        if in_word {
            argv.push(cur);
        }
        if argv.is_empty() {
            None
        } else {
            Some(Script { argv })
        }
    }

    pub fn program(&self) -> &str {
        &self.argv[0]
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.argv.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c == '"') {
                write!(f, "'{a}'")?;
            } else {
                f.write_str(a)?;
            }
        }
        Ok(())
    }
}

/// `user[:group]` a script runs as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScriptUser {
    pub user: String,
    /// `None`: the user's primary group.
    pub group: Option<String>,
}

impl FromStr for ScriptUser {
    type Err = ();
    /// `"user"`, `"user:group"` or keepalived's `"user group"`.
    fn from_str(s: &str) -> Result<Self, ()> {
        let s = s.trim();
        let (user, group) = match s.split_once([':', ' ']) {
            Some((u, g)) => (u.trim(), Some(g.trim())),
            None => (s, None),
        };
        let valid = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        };
        if !valid(user) || group.is_some_and(|g| !valid(g)) {
            return Err(());
        }
        Ok(ScriptUser { user: user.to_string(), group: group.map(str::to_string) })
    }
}

/// Notify hooks of an instance, a sync group, or the global defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notify {
    pub notify_master: Option<Script>,
    pub notify_backup: Option<Script>,
    pub notify_fault: Option<Script>,
    pub notify_stop: Option<Script>,
    /// Run on every transition, after the specific hook, with keepalived's four extra
    /// arguments: `INSTANCE|GROUP name MASTER|BACKUP|FAULT|STOP priority`.
    pub notify: Option<Script>,
}

impl Notify {
    /// Each hook unset here takes the one from `defaults`.
    pub fn inherit(&mut self, defaults: &Notify) {
        let pairs = [
            (&mut self.notify_master, &defaults.notify_master),
            (&mut self.notify_backup, &defaults.notify_backup),
            (&mut self.notify_fault, &defaults.notify_fault),
            (&mut self.notify_stop, &defaults.notify_stop),
            (&mut self.notify, &defaults.notify),
        ];
        for (mine, theirs) in pairs {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
    }
}

/// `[[vrrp_script]]`: a periodic check whose result moves tracking instances' priority
/// (weight ≠ 0) or puts them in FAULT (weight 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpScript {
    pub name: String,
    pub script: Script,
    /// Default 1 s.
    pub interval: Duration,
    /// Default: `interval` (keepalived).
    pub timeout: Duration,
    /// -253..=253, default 0 (failure ⇒ FAULT).
    pub weight: i32,
    /// Consecutive successes to become OK. Default 1.
    pub rise: u32,
    /// Consecutive failures to become KO. Default 1.
    pub fall: u32,
    /// `None`: `global.script_user`.
    pub user: Option<ScriptUser>,
}

/// `[[track_file]]`: a file holding an integer; value × weight is added to the priority of
/// tracking instances (weight 0: non-zero value ⇒ FAULT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackFile {
    pub name: String,
    pub file: PathBuf,
    /// Default 1 (keepalived).
    pub weight: i32,
}

// ---------------------------------------------------------------------------------------
// VRRP
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VrrpVersion {
    /// RFC 3768: IPv4 only, whole-second adverts, optional PASS authentication.
    V2,
    /// RFC 5798: IPv4 and IPv6, centisecond adverts, no authentication.
    V3,
}

impl VrrpVersion {
    pub fn number(self) -> u8 {
        match self {
            VrrpVersion::V2 => 2,
            VrrpVersion::V3 => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum InitialState {
    Master,
    /// keepalived's default.
    #[default]
    Backup,
}

impl InitialState {
    pub fn as_str(self) -> &'static str {
        match self {
            InitialState::Master => "MASTER",
            InitialState::Backup => "BACKUP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrFamily {
    Ipv4,
    Ipv6,
}

impl AddrFamily {
    pub fn of(addr: &IpAddr) -> AddrFamily {
        match addr {
            IpAddr::V4(_) => AddrFamily::Ipv4,
            IpAddr::V6(_) => AddrFamily::Ipv6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AddrFamily::Ipv4 => "IPv4",
            AddrFamily::Ipv6 => "IPv6",
        }
    }
}

/// VRRPv2 authentication (RFC 2338, removed by RFC 3768; carried for interop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Simple password, 1..=8 bytes.
    Pass(String),
}

/// `[[vrrp_instance]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpInstance {
    /// Stable key.
    pub name: String,
    pub interface: String,
    /// Initial state; default BACKUP.
    pub state: InitialState,
    /// 1..=255.
    pub virtual_router_id: u8,
    /// 1..=255 (255 = address owner); default 100.
    pub priority: u8,
    /// Default 1 s. v2: whole seconds 1..=255; v3: centiseconds 0.01..=40.95.
    pub advert_int: Duration,
    /// Resolved: explicit `version`, else IPv6 ⇒ 3, else `global.vrrp_version`.
    pub version: VrrpVersion,
    pub authentication: Option<Authentication>,
    pub unicast_src_ip: Option<IpAddr>,
    /// Empty: multicast (224.0.0.18 / ff02::12).
    pub unicast_peer: Vec<IpAddr>,
    /// All of one family; that family is the instance's.
    pub virtual_ipaddress: Vec<VirtualIpAddress>,
    /// Managed with the instance but not carried in adverts; any family.
    pub virtual_ipaddress_excluded: Vec<VirtualIpAddress>,
    pub nopreempt: bool,
    /// The instance's own interface going down does not put it in FAULT (keepalived's
    /// `dont_track_primary`, for cross-connected pairs); `track_interface` still counts.
    pub dont_track_primary: bool,
    /// 0..=1000 s, default 0.
    pub preempt_delay: Duration,
    pub garp: Garp,
    pub track_interface: Vec<TrackInterface>,
    pub track_script: Vec<TrackScript>,
    pub track_file: Vec<TrackFileRef>,
    /// Resolved with `global.notify` as defaults.
    pub notify: Notify,
}

impl VrrpInstance {
    pub fn key(&self) -> &str {
        &self.name
    }

    /// Family of the advertised addresses (validation guarantees at least one VIP and a
    /// single family).
    pub fn family(&self) -> AddrFamily {
        self.virtual_ipaddress
            .first()
            .map(|v| AddrFamily::of(&v.addr))
            .or(self.unicast_src_ip.as_ref().map(AddrFamily::of))
            .unwrap_or(AddrFamily::Ipv4)
    }

    pub fn is_unicast(&self) -> bool {
        !self.unicast_peer.is_empty()
    }

    /// Every address the instance adds while MASTER and removes when it leaves MASTER: the
    /// advertised `virtual_ipaddress` list, then `virtual_ipaddress_excluded` (configured the
    /// same way, only left out of adverts).
    pub fn all_vips(&self) -> impl Iterator<Item = &VirtualIpAddress> {
        self.virtual_ipaddress.iter().chain(&self.virtual_ipaddress_excluded)
    }
}

/// Gratuitous ARP / unsolicited NA behaviour after becoming MASTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garp {
    /// Delay before the second burst; 0 = no second burst. Default 5 s.
    pub master_delay: Duration,
    /// Messages per burst. Default 5.
    pub master_repeat: u32,
    /// Periodic refresh while MASTER; `None` (0 in the file) = off, the default.
    pub master_refresh: Option<Duration>,
    /// Messages per refresh. Default 1.
    pub master_refresh_repeat: u32,
    /// Minimum spacing of gratuitous ARPs: `global.vrrp_garp_interval`. Default 0 (none).
    pub interval: Duration,
    /// Minimum spacing of unsolicited NAs: `global.vrrp_gna_interval`. Default 0 (none).
    pub gna_interval: Duration,
}

impl Default for Garp {
    fn default() -> Self {
        Garp {
            master_delay: Duration::from_secs(5),
            master_repeat: 5,
            master_refresh: None,
            master_refresh_repeat: 1,
            interval: Duration::ZERO,
            gna_interval: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInterface {
    pub interface: String,
    /// -253..=253; 0 (default) = interface down ⇒ FAULT.
    pub weight: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackScript {
    /// Name of a `vrrp_script`.
    pub script: String,
    /// Resolved: the override, else the script's own weight. -253..=253.
    pub weight: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackFileRef {
    /// Name of a `track_file`.
    pub track_file: String,
    /// Resolved: the override (-254..=254), else the track_file's own weight.
    pub weight: i32,
}

/// `[[vrrp_sync_group]]`: instances that change state together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpSyncGroup {
    pub name: String,
    /// Member instance names (keepalived's `group { … }`).
    pub group: Vec<String>,
    /// keepalived's `sync_group_tracking_weight`: members may track with a weight (it moves
    /// their priority as usual). Without it keepalived ignores such weights, so ha-lb's TOML
    /// refuses them (keepalived.conf is read as keepalived runs it, with warnings).
    pub sync_group_tracking_weight: bool,
    pub notify: Notify,
}

// ---------------------------------------------------------------------------------------
// virtual servers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub const NAMES: &'static [&'static str] = &["TCP", "UDP"];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// Scheduler (keepalived `lb_algo` / `lvs_sched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LbAlgo {
    /// Round robin.
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connections.
    Lc,
    /// Weighted least connections (keepalived's and IPVS's default).
    #[default]
    Wlc,
    /// Source hashing.
    Sh,
    /// Maglev hashing.
    Mh,
}

impl LbAlgo {
    pub const NAMES: &'static [&'static str] = &["rr", "wrr", "lc", "wlc", "sh", "mh"];
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
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "rr" => LbAlgo::Rr,
            "wrr" => LbAlgo::Wrr,
            "lc" => LbAlgo::Lc,
            "wlc" => LbAlgo::Wlc,
            "sh" => LbAlgo::Sh,
            "mh" => LbAlgo::Mh,
            _ => return Err(()),
        })
    }
}

/// Forwarding method (keepalived `lb_kind` / `lvs_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LbKind {
    /// Destination NAT; replies must route back through the director. keepalived default.
    #[default]
    Nat,
    /// Direct routing: rewrite the MAC only; real servers hold the VIP on a non-ARPing
    /// interface and answer clients directly. Ports cannot be remapped.
    Dr,
    /// IP tunnelling (IPIP, IPv4 only): the packet is encapsulated to the real server, which
    /// decapsulates it (the VIP on its `tunl0`) and answers clients directly. Ports cannot be
    /// remapped.
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

/// Stable identity of a virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualServerKey {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for VirtualServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", SocketAddr::new(self.address, self.port), self.protocol.as_str())
    }
}

/// See [`Config::check_owner`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckOwner {
    Service(VirtualServerKey),
    Group(String, Protocol),
}

/// `[[virtual_server_group]]` (keepalived `virtual_server_group NAME { }`): addresses and
/// ports that one `virtual_server` serves alike, with its real servers checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServerGroup {
    pub name: String,
    /// The members as written (`convert` writes them back so), whitespace normalised.
    pub entries: Vec<String>,
    /// Each address and port, ranges expanded (`192.0.2.10-12 80` is three), in order.
    pub members: Vec<SocketAddr>,
}

/// `[[virtual_server]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    /// The `virtual_server_group` this service is a member of: the configuration's
    /// `virtual_server` with `group = NAME` is one `VirtualServer` per member, alike but for
    /// `address` and `port`; the first member's health checks stand for all.
    pub group: Option<String>,
    pub address: IpAddr,
    /// 1..=65535 (keepalived's port-0 "all ports" services are not supported).
    pub port: u16,
    /// Default TCP.
    pub protocol: Protocol,
    /// Default wlc.
    pub lb_algo: LbAlgo,
    /// Default NAT.
    pub lb_kind: LbKind,
    /// `None`: not persistent.
    pub persistence_timeout: Option<Duration>,
    /// keepalived's `persistence_granularity` as a prefix length: clients in the same
    /// network of this size share a persistence template (IPVS `-M`). `None`: per address.
    pub persistence_granularity: Option<u8>,
    /// keepalived's `sh-port` / `mh-port`: the `sh` / `mh` scheduler hashes the client's port
    /// too, not only its address (IPVS `IP_VS_SVC_F_SCHED_SH_PORT`).
    pub hash_port: bool,
    /// Minimum total weight of live real servers for the service to be up. Default 1.
    pub quorum: u32,
    /// Flap damper around `quorum`; always < quorum. Default 0.
    pub hysteresis: u32,
    pub quorum_up: Option<Script>,
    pub quorum_down: Option<Script>,
    /// Replaces all real servers while the quorum is lost. Port defaults to `port`.
    pub sorry_server: Option<SocketAddr>,
    /// Checker interval default for the service. Default 60 s.
    pub delay_loop: Duration,
    /// Start every real server as down until its first successful check.
    pub alpha: bool,
    pub real_servers: Vec<RealServer>,
}

impl VirtualServer {
    pub fn key(&self) -> VirtualServerKey {
        VirtualServerKey { address: self.address, port: self.port, protocol: self.protocol }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    pub fn family(&self) -> AddrFamily {
        AddrFamily::of(&self.address)
    }

    pub fn real_server(&self, key: SocketAddr) -> Option<&RealServer> {
        self.real_servers.iter().find(|r| r.key() == key)
    }
}

/// `[[virtual_server.real_server]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServer {
    pub address: IpAddr,
    /// Defaults to the virtual server's port; must equal it with DR.
    pub port: u16,
    /// 0..=65535, default 1. 0 = quiesced (no new connections).
    pub weight: u32,
    /// On failure set weight 0 instead of removing the server (keeps existing flows).
    pub inhibit_on_failure: bool,
    pub notify_up: Option<Script>,
    pub notify_down: Option<Script>,
    /// `None`: always considered up.
    pub check: Option<HealthCheck>,
}

impl RealServer {
    pub fn key(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// One health check with its resolved timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub timing: Timing,
}

/// When a check runs and how many rounds change a server's state: the timing keys of a
/// check table (flat on it in the TOML, the first four inherited from the real and
/// virtual server), resolved with their defaults. The health tracker
/// ([`crate::health::Tracker`]) schedules on it as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Interval between checks. Default: the virtual server's `delay_loop`.
    pub delay_loop: Duration,
    /// Extra attempts after a failure before the round counts as failed. Default 1
    /// (0 for MISC_CHECK), as keepalived.
    pub retry: u32,
    /// Pause between those attempts. Default 3 s for HTTP_GET/SSL_GET, 1 s otherwise.
    pub delay_before_retry: Duration,
    /// Random delay in 0..=warmup before the first check. Default: `delay_loop`.
    pub warmup: Duration,
    /// ha-lb extension: consecutive successful rounds to mark a down server up. Default 1
    /// (keepalived behaviour); 1..=1000 in the TOML, and 0 would act as 1.
    pub rise: u32,
    /// ha-lb extension: consecutive failed rounds (each already `1 + retry` attempts) to
    /// mark an up server down. Default 1 (keepalived behaviour); 1..=1000 in the TOML,
    /// and 0 would act as 1.
    pub fall: u32,
}

impl HealthCheck {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// A MISC_CHECK with `misc_dynamic`: its exit status gives the server's weight.
    pub fn is_dynamic(&self) -> bool {
        matches!(&self.kind, CheckKind::Misc(m) if m.misc_dynamic)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Tcp(Connect),
    Http(HttpCheck),
    /// HTTP_GET over TLS.
    Ssl(HttpCheck),
    Misc(MiscCheck),
    Udp(UdpCheck),
}

impl CheckKind {
    /// The keepalived block name.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Tcp(_) => "TCP_CHECK",
            CheckKind::Http(_) => "HTTP_GET",
            CheckKind::Ssl(_) => "SSL_GET",
            CheckKind::Misc(_) => "MISC_CHECK",
            CheckKind::Udp(_) => "UDP_CHECK",
        }
    }

    pub fn connect(&self) -> Option<&Connect> {
        match self {
            CheckKind::Tcp(c) => Some(c),
            CheckKind::Http(h) | CheckKind::Ssl(h) => Some(&h.connect),
            CheckKind::Udp(u) => Some(&u.connect),
            CheckKind::Misc(_) => None,
        }
    }
}

/// keepalived's default `retry` for a checker block.
pub fn default_retry(check_block: &str) -> u32 {
    if check_block == "MISC_CHECK" {
        0
    } else {
        1
    }
}

/// keepalived's default `delay_before_retry` for a checker block.
pub fn default_delay_before_retry(check_block: &str) -> Duration {
    match check_block {
        "HTTP_GET" | "SSL_GET" => Duration::from_secs(3),
        _ => Duration::from_secs(1),
    }
}

/// A network check's `connect_timeout` when no level sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how a network check connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Resolved `connect_ip`:`connect_port`, defaulting to the real server's address/port.
    pub target: SocketAddr,
    /// Source address (`bindto`).
    pub bindto: Option<IpAddr>,
    /// Default 5 s.
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub connect: Connect,
    /// At least one.
    pub url: Vec<UrlCheck>,
    /// Host header (and SNI for SSL_GET). `None`: the target address.
    pub virtualhost: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlCheck {
    /// Absolute path, starts with '/'.
    pub path: String,
    /// Accepted statuses; default `[200..=299]`.
    pub status_code: Vec<RangeInclusive<u16>>,
    /// MD5 of the body (keepalived `genhash`).
    pub digest: Option<[u8; 16]>,
}

impl UrlCheck {
    pub fn accepts(&self, status: u16) -> bool {
        self.status_code.iter().any(|r| r.contains(&status))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiscCheck {
    pub misc_path: Script,
    /// Default: the virtual server's `delay_loop` (as keepalived).
    pub misc_timeout: Duration,
    /// Exit 0 = up, 1 = down, 2..=255 = up with weight `status - 2`.
    pub misc_dynamic: bool,
    /// `None`: `global.script_user`.
    pub user: Option<ScriptUser>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpCheck {
    pub connect: Connect,
    /// Datagram to send; `None`: a random payload (keepalived).
    pub payload: Option<Vec<u8>>,
    pub require_reply: ReplyCheck,
}

/// What a UDP check expects back. Without a reply requirement, only an ICMP error counts
/// as failure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReplyCheck {
    #[default]
    None,
    /// Any datagram.
    Any,
    /// A datagram whose first bytes equal these.
    Prefix(Vec<u8>),
}
