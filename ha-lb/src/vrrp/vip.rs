//! Virtual IP addresses and links, over rtnetlink.
//!
//! - [`VirtualIpAddress`]: one keepalived `virtual_ipaddress` line, parsed
//!   (`10.0.0.100/24 dev eth0 label eth0:1 scope global`). The only parser of that syntax:
//!   the configuration model holds these too (`config::VrrpInstance::virtual_ipaddress`).
//! - [`VipManager`]: add / remove / list addresses, idempotently; `remove_stale` at start-up.
//! - [`LinkMonitor`]: interface lookup by name or index, link state, and a stream of link
//!   changes (`RTNLGRP_LINK`) for `track_interface`.
//! - [`Rtnl`]: the real implementation of both, on the `rtnetlink` crate.
//!
//! Netlink sockets belong to the network namespace of the thread that creates them, so an
//! [`Rtnl`] made inside a thread that called `setns` manages that namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{AddressMessageBuilder, Handle, MulticastGroup};

use super::socket::{is_unicast_link_local, Interface};
use crate::config::model::AddrFamily;

/// Longest interface name / address label (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

// ---------------------------------------------------------------------------------------------
// virtual_ipaddress

/// Linux interface name rules: 1 to [`IFNAME_MAX`] bytes, no '/', ':' or whitespace, not
/// "." or "..".
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Address scope, as `ip addr ... scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    #[default]
    Global,
    Site,
    Link,
    Host,
    Nowhere,
    /// A scope the kernel reported that has no name; never parsed from configuration.
    Other(u8),
}

impl Scope {
    /// The names [`Scope::from_str`] accepts (iproute2's default `rt_scopes`).
    pub const NAMES: &'static [&'static str] = &["global", "site", "link", "host", "nowhere"];

    /// The rtnetlink `RT_SCOPE_*` value.
    pub fn to_raw(self) -> u8 {
        match self {
            Scope::Global => 0,
            Scope::Site => 200,
            Scope::Link => 253,
            Scope::Host => 254,
            Scope::Nowhere => 255,
            Scope::Other(n) => n,
        }
    }

    pub fn from_raw(n: u8) -> Self {
        match n {
            0 => Scope::Global,
            200 => Scope::Site,
            253 => Scope::Link,
            254 => Scope::Host,
            255 => Scope::Nowhere,
            n => Scope::Other(n),
        }
    }
}

impl FromStr for Scope {
    type Err = VipParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "global" => Scope::Global,
            "site" => Scope::Site,
            "link" => Scope::Link,
            "host" => Scope::Host,
            "nowhere" => Scope::Nowhere,
            _ => return Err(VipParseError::BadScope(s.to_string())),
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Site => f.write_str("site"),
            Scope::Link => f.write_str("link"),
            Scope::Host => f.write_str("host"),
            Scope::Nowhere => f.write_str("nowhere"),
            Scope::Other(n) => write!(f, "{n}"),
        }
    }
}

/// One `virtual_ipaddress` (or `virtual_ipaddress_excluded`) entry: the one type for the
/// concept in configuration, the VRRP core, logs and status output.
///
/// Syntax (keepalived's subset that ha-lb supports):
/// `<ADDR>[/<PREFIX>] [brd|broadcast <IPv4>] [dev <IFNAME>] [scope <SCOPE>] [label <LABEL>]
///  [noprefixroute] [home] [no_track]`.
/// The prefix defaults to /32 (IPv4) or /128 (IPv6). `dev` defaults to the instance interface
/// (see [`VirtualIpAddress::device`]). `label`, `scope` and `brd` are IPv4 only, as in
/// keepalived. Unspecified, loopback and multicast addresses are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VirtualIpAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub broadcast: Option<Ipv4Addr>,
    /// `None`: the instance's interface.
    pub dev: Option<String>,
    /// IPv4 only; at most 15 bytes; must be the device name or start with `<dev>:`
    /// ([`check_label`]).
    pub label: Option<String>,
    pub scope: Scope,
    /// `noprefixroute`: the kernel adds no prefix route for the address.
    pub no_prefix_route: bool,
    /// `home`: IFA_F_HOMEADDRESS (IPv6 mobility); passed through.
    pub home: bool,
    /// `no_track`: the instance does not go to FAULT if this address is removed behind its back.
    pub no_track: bool,
}

impl VirtualIpAddress {
    /// A bare address with the default prefix and no options.
    pub fn new(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
            broadcast: None,
            dev: None,
            label: None,
            scope: Scope::Global,
            no_prefix_route: false,
            home: false,
            no_track: false,
        }
    }

    pub fn family(&self) -> AddrFamily {
        AddrFamily::of(&self.addr)
    }

    /// The device the address goes on, given the instance's interface.
    pub fn device<'a>(&'a self, instance_interface: &'a str) -> &'a str {
        self.dev.as_deref().unwrap_or(instance_interface)
    }
}

impl fmt::Display for VirtualIpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)?;
        if let Some(b) = self.broadcast {
            write!(f, " brd {b}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if self.scope != Scope::Global {
            write!(f, " scope {}", self.scope)?;
        }
        if let Some(l) = &self.label {
            write!(f, " label {l}")?;
        }
        if self.no_prefix_route {
            f.write_str(" noprefixroute")?;
        }
        if self.home {
            f.write_str(" home")?;
        }
        if self.no_track {
            f.write_str(" no_track")?;
        }
        Ok(())
    }
}

/// The options [`VirtualIpAddress`] accepts, for error messages.
const SUPPORTED_OPTIONS: &str = "dev, label, scope, brd, noprefixroute, home, no_track";

/// Why a `virtual_ipaddress` entry was rejected. The messages read after the entry itself,
/// as in `virtual_ipaddress "10.0.0.1/33": prefix length 33 is out of range 0..=32`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipParseError {
    #[error("the entry is empty")]
    Empty,
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    #[error("{addr} cannot be a virtual address: it is {what}")]
    NotAssignable { addr: IpAddr, what: &'static str },
    #[error("prefix length {0:?} is not a number")]
    BadPrefix(String),
    #[error("prefix length {prefix} is out of range 0..={max}")]
    PrefixOutOfRange { prefix: String, max: u8 },
    #[error("option {option} needs {what}")]
    MissingValue { option: String, what: &'static str },
    #[error("option {0} is given twice")]
    Duplicate(String),
    #[error("option {0:?} is unknown (supported: {SUPPORTED_OPTIONS})")]
    UnknownKeyword(String),
    #[error("option {0:?} is not supported by ha-lb (supported: {SUPPORTED_OPTIONS})")]
    Unsupported(String),
    #[error("scope {0:?} is not one of global, site, link, host, nowhere")]
    BadScope(String),
    #[error("{option} {value:?} is not an IPv4 address")]
    BadBroadcast { option: String, value: String },
    #[error("{0} is only valid for IPv4 addresses")]
    Ipv4Only(String),
    #[error("dev {0:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces){hint}", hint = alias_hint(.0))]
    BadDev(String),
    #[error("label {0:?} is longer than 15 bytes")]
    LabelTooLong(String),
    #[error("label {label:?} must be {dev:?} or start with \"{dev}:\"")]
    LabelPrefix { label: String, dev: String },
}

/// `eth0:1`, an ifconfig alias: written in iproute2 terms.
fn alias_hint(dev: &str) -> String {
    match dev.split_once(':') {
        Some((d, _)) if !d.is_empty() => format!("; an alias is written dev {d} label {dev}"),
        _ => String::new(),
    }
}

impl FromStr for VirtualIpAddress {
    type Err = VipParseError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        use VipParseError as E;
        let mut words = line.split_whitespace();
        let first = words.next().ok_or(E::Empty)?;
        let (addr_s, prefix_s) = match first.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (first, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| E::BadAddress(addr_s.to_string()))?;
        let what = if addr.is_unspecified() {
            Some("unspecified")
        } else if addr.is_loopback() {
            Some("loopback")
        } else if addr.is_multicast() {
            Some("multicast")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(E::NotAssignable { addr, what });
        }
        let ipv4 = addr.is_ipv4();
        let mut vip = VirtualIpAddress::new(addr);
        if let Some(p) = prefix_s {
            let max = vip.prefix_len;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(E::BadPrefix(p.to_string()));
            }
            vip.prefix_len = match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(E::PrefixOutOfRange { prefix: p.to_string(), max }),
            };
        }
        let mut scope_seen = false;
        let flag = |opt: &str, flag: &mut bool| {
            if std::mem::replace(flag, true) {
                Err(E::Duplicate(opt.to_string()))
            } else {
                Ok(())
            }
        };
        let once = |opt: &str, given: bool| {
            if given {
                Err(E::Duplicate(opt.to_string()))
            } else {
                Ok(())
            }
        };
        let ipv4_only = |opt: &str| {
            if ipv4 {
                Ok(())
            } else {
                Err(E::Ipv4Only(opt.to_string()))
            }
        };
        while let Some(opt) = words.next() {
            let mut value = |what: &'static str| {
                words.next().ok_or_else(|| E::MissingValue { option: opt.to_string(), what })
            };
            match opt {
                "dev" => {
                    once(opt, vip.dev.is_some())?;
                    let v = value("an interface name")?;
                    if !valid_ifname(v) {
                        return Err(E::BadDev(v.into()));
                    }
                    vip.dev = Some(v.into());
                }
                "label" => {
                    once(opt, vip.label.is_some())?;
                    let v = value("a label")?;
                    ipv4_only(opt)?;
                    if v.len() > IFNAME_MAX {
                        return Err(E::LabelTooLong(v.into()));
                    }
                    vip.label = Some(v.into());
                }
                "scope" => {
                    flag(opt, &mut scope_seen)?;
                    let v = value("a scope")?;
                    ipv4_only(opt)?;
                    vip.scope = v.parse()?;
                }
                "brd" | "broadcast" => {
                    once(opt, vip.broadcast.is_some())?;
                    let v = value("an IPv4 address")?;
                    ipv4_only(opt)?;
                    let b: Ipv4Addr = v.parse().map_err(|_| E::BadBroadcast {
                        option: opt.to_string(),
                        value: v.to_string(),
                    })?;
                    vip.broadcast = Some(b);
                }
                "noprefixroute" => flag(opt, &mut vip.no_prefix_route)?,
                "home" => flag(opt, &mut vip.home)?,
                "no_track" => flag(opt, &mut vip.no_track)?,
                "peer" | "autojoin" | "track_group" | "-nodad" | "nodad" | "preferred_lft" => {
                    return Err(E::Unsupported(opt.into()))
                }
                other => return Err(E::UnknownKeyword(other.into())),
            }
        }
        if let (Some(label), Some(dev)) = (&vip.label, &vip.dev) {
            check_label(label, dev)?;
        }
        Ok(vip)
    }
}

/// Linux convention: an IPv4 label is the device name or starts with `<dev>:` (iproute2
/// only checks the prefix; ha-lb also requires the colon so `eth1…` never labels `eth10`).
pub fn check_label(label: &str, dev: &str) -> Result<(), VipParseError> {
    if label == dev || label.strip_prefix(dev).is_some_and(|rest| rest.starts_with(':')) {
        Ok(())
    } else {
        Err(VipParseError::LabelPrefix { label: label.into(), dev: dev.into() })
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses and links as the kernel reports them

/// An address configured on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub label: Option<String>,
    pub scope: Scope,
    /// Raw IFA_F_* flags (the 32-bit IFA_FLAGS value when present).
    pub flags: u32,
}

impl InterfaceAddress {
    pub fn is_secondary(&self) -> bool {
        self.flags & libc::IFA_F_SECONDARY != 0
    }
    pub fn is_tentative(&self) -> bool {
        self.flags & (libc::IFA_F_TENTATIVE | libc::IFA_F_DADFAILED) != 0
    }
}

/// Operational state (RFC 2863, `IF_OPER_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
    Other(u8),
}

impl From<&State> for OperState {
    fn from(s: &State) -> Self {
        match s {
            State::Unknown => OperState::Unknown,
            State::NotPresent => OperState::NotPresent,
            State::Down => OperState::Down,
            State::LowerLayerDown => OperState::LowerLayerDown,
            State::Testing => OperState::Testing,
            State::Dormant => OperState::Dormant,
            State::Up => OperState::Up,
            State::Other(n) => OperState::Other(*n),
            _ => OperState::Unknown,
        }
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// IFF_UP: administratively up.
    pub admin_up: bool,
    /// IFF_RUNNING: operationally up (carrier and not dormant).
    pub running: bool,
    /// IFF_LOWER_UP: carrier.
    pub lower_up: bool,
    pub oper_state: OperState,
    /// Hardware address, when it is an Ethernet-sized one.
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

impl LinkInfo {
    /// What keepalived calls "interface up": IFF_UP and IFF_RUNNING. `track_interface` puts an
    /// instance in FAULT when this is false.
    pub fn is_up(&self) -> bool {
        self.admin_up && self.running
    }

    pub fn interface(&self) -> Interface {
        Interface { index: self.index, name: self.name.clone() }
    }

    fn from_message(msg: &LinkMessage) -> Self {
        let flags = msg.header.flags;
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            admin_up: flags.contains(LinkFlags::Up),
            running: flags.contains(LinkFlags::Running),
            lower_up: flags.contains(LinkFlags::LowerUp),
            oper_state: OperState::Unknown,
            mac: None,
            mtu: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::OperState(s) => info.oper_state = s.into(),
                LinkAttribute::Address(a) => info.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::Mtu(m) => info.mtu = Some(*m),
                _ => {}
            }
        }
        info
    }
}

/// A change seen on `RTNLGRP_LINK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// New link or changed state (RTM_NEWLINK).
    Changed(LinkInfo),
    /// Link removed (RTM_DELLINK).
    Removed { index: u32, name: String },
}

impl LinkEvent {
    pub fn index(&self) -> u32 {
        match self {
            LinkEvent::Changed(l) => l.index,
            LinkEvent::Removed { index, .. } => *index,
        }
    }
}

/// Errors of address and link operations.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("{op} {what}: {source}")]
    Netlink {
        op: &'static str,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Label(#[from] VipParseError),
}

impl VipError {
    /// The errno behind a netlink failure, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            VipError::Netlink { source, .. } => source.raw_os_error(),
            VipError::Label(_) => None,
        }
    }
}

/// Collects a netlink dump made by `request`. One dump at a time per netlink socket, which
/// the instances share (clones of one [`Rtnl`]): while another's is in progress the kernel
/// answers EBUSY, and the dump is asked again a few times, briefly.
async fn dump<T, S>(request: impl Fn() -> S) -> io::Result<Vec<T>>
where
    S: futures_util::Stream<Item = Result<T, rtnetlink::Error>>,
{
    let mut tries = 0;
    loop {
        match request().try_collect::<Vec<T>>().await.map_err(nl_io) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 20 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            r => return r,
        }
    }
}

fn nl_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Traits

/// Adds and removes VIPs. Both are idempotent: adding a present address and removing an
/// absent one succeed.
pub trait VipManager: Send + Sync {
    fn add(
        &self,
        vip: &VirtualIpAddress,
        iface: &Interface,
    ) -> impl Future<Output = Result<(), VipError>> + Send;
    fn remove(
        &self,
        vip: &VirtualIpAddress,
        iface: &Interface,
    ) -> impl Future<Output = Result<(), VipError>> + Send;
    /// Addresses on one interface (`None`: on all).
    fn list(
        &self,
        ifindex: Option<u32>,
    ) -> impl Future<Output = Result<Vec<InterfaceAddress>, VipError>> + Send;

    /// Start-up clean-up: remove every listed VIP that is present (left over from a crash or
    /// a previous run) so the instance starts in BACKUP/INIT owning nothing. Returns those
    /// that were removed, with the prefix they had.
    ///
    /// Only the VIP as configured (address, prefix, device) is removed. The same address
    /// under another prefix is left and warned about: it may be the host's own address (an
    /// address owner's, or a VIP that is also configured statically), which must not go;
    /// one that an earlier run of ha-lb added is removed before the instances start, by the
    /// [`VipLedger`]. The list is read again afterwards: what is still there is logged as an
    /// error and not reported as removed.
    fn remove_stale(
        &self,
        vips: &[(VirtualIpAddress, Interface)],
    ) -> impl Future<Output = Result<Vec<VirtualIpAddress>, VipError>> + Send {
        async move {
            let present = self.list(None).await?;
            let mut tried = Vec::new();
            for (vip, iface) in vips {
                for a in present.iter().filter(|a| a.ifindex == iface.index && a.addr == vip.addr) {
                    if a.prefix_len == vip.prefix_len {
                        self.remove(vip, iface).await?;
                        tried.push((vip.clone(), iface));
                    } else {
                        tracing::warn!(
                            vip = %vip,
                            interface = %iface.name,
                            present = %format!("{}/{}", a.addr, a.prefix_len),
                            "the VIP's address is on its device with another prefix, which is not the VIP as configured: left as it is (an earlier run's is removed by the VIP ledger at start); while it is there this host answers for the address in every state"
                        );
                    }
                }
            }
            if tried.is_empty() {
                return Ok(Vec::new());
            }
            let after = self.list(None).await?;
            let mut removed = Vec::new();
            for (vip, iface) in tried {
                let left = after.iter().any(|a| {
                    a.ifindex == iface.index && a.addr == vip.addr && a.prefix_len == vip.prefix_len
                });
                if left {
                    tracing::error!(vip = %vip, interface = %iface.name, "a stale virtual address could not be removed at start-up: it is still there");
                } else {
                    removed.push(vip);
                }
            }
            Ok(removed)
        }
    }
}

/// Link lookups and link-state changes.
pub trait LinkMonitor: Send + Sync {
    type Watcher: LinkWatch;
    fn link_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LinkInfo>, VipError>> + Send;
    fn link_by_index(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Option<LinkInfo>, VipError>> + Send;
    /// Subscribe to link changes. Subscribe first, then query current state, so no change
    /// falls between the two.
    fn watch(&self) -> Result<Self::Watcher, VipError>;
}

/// A stream of link changes.
pub trait LinkWatch: Send {
    /// Next change; `None` when the subscription ended.
    fn next(&mut self) -> impl Future<Output = Option<LinkEvent>> + Send;
}

// ---------------------------------------------------------------------------------------------
// VIP ledger

/// Where the daemon whose control socket is `control_socket` keeps its [`VipLedger`]: beside
/// the socket (`/run/ha-lb/ha-lb.sock` → `/run/ha-lb/ha-lb.vips`, the run directory the IPVS
/// ledger uses too). The socket is what makes a daemon the only one of its kind (a second
/// one on the same socket is refused before it touches anything), so two daemons — in two
/// network namespaces of one host — never share a ledger.
pub fn vip_ledger_path(control_socket: &Path) -> PathBuf {
    let p = control_socket.with_extension("vips");
    if p == control_socket {
        control_socket.with_extension("vips.ledger")
    } else {
        p
    }
}

/// One VIP this daemon put on the host: address, prefix and device name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LedgerEntry {
    addr: IpAddr,
    prefix_len: u8,
    dev: String,
}

impl LedgerEntry {
    fn of(vip: &VirtualIpAddress, dev: &str) -> Self {
        LedgerEntry { addr: vip.addr, prefix_len: vip.prefix_len, dev: dev.to_string() }
    }

    /// `198.51.100.10/32 dev eth0`
    fn parse(line: &str) -> Option<Self> {
        let mut w = line.split_whitespace();
        let (a, p) = w.next()?.split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        let prefix_len: u8 = p.parse().ok()?;
        if prefix_len > if addr.is_ipv4() { 32 } else { 128 } {
            return None;
        }
        if w.next()? != "dev" {
            return None;
        }
        let dev = w.next().filter(|d| valid_ifname(d))?.to_string();
        w.next().is_none().then_some(LedgerEntry { addr, prefix_len, dev })
    }
}

impl fmt::Display for LedgerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} dev {}", self.addr, self.prefix_len, self.dev)
    }
}

/// The VIPs this daemon has added and not yet removed, in a file, so that a run after a
/// crash removes those the new configuration no longer names (the instances' start-up
/// clean-up, [`VipManager::remove_stale`], only knows the configured ones). The IPVS data
/// plane keeps the same kind of ledger for its services.
///
/// An entry is written before its address is added and dropped once it is removed; the file
/// is rewritten whole (write, then rename) on every change. At start
/// ([`Rtnl::with_vip_ledger`]) an entry is removed from the host only if that address, with
/// that prefix, is still on the device of that name: an address the ledger does not name is
/// never touched.
#[derive(Debug)]
pub struct VipLedger {
    path: PathBuf,
    entries: std::sync::Mutex<BTreeSet<LedgerEntry>>,
}

impl VipLedger {
    /// Reads the ledger at `path` (absent: empty; unreadable lines are skipped with a warning).
    fn open(path: PathBuf) -> Self {
        let mut entries = BTreeSet::new();
        match crate::files::read_private_file(&path) {
            Ok(None) => {}
            Ok(Some(text)) => {
                for line in text.lines().map(str::trim) {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    match LedgerEntry::parse(line) {
                        Some(e) => {
                            entries.insert(e);
                        }
                        None => {
                            tracing::warn!(path = %path.display(), line, "VIP ledger: unreadable line skipped")
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "VIP ledger: reading it failed; VIPs a crashed run left are not removed")
            }
        }
        VipLedger { path, entries: std::sync::Mutex::new(entries) }
    }

    fn record(&self, vip: &VirtualIpAddress, dev: &str) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.insert(LedgerEntry::of(vip, dev)) {
            self.write(&e);
        }
    }

    fn forget(&self, vip: &VirtualIpAddress, dev: &str) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.remove(&LedgerEntry::of(vip, dev)) {
            self.write(&e);
        }
    }

    fn write(&self, entries: &BTreeSet<LedgerEntry>) {
        if let Err(e) = write_vip_ledger(&self.path, entries) {
            tracing::warn!(path = %self.path.display(), error = %e, "VIP ledger: writing it failed");
        }
    }

    /// Removes the recorded addresses still on the host (on the device of the recorded name,
    /// with the recorded prefix), drops the others from the ledger, and returns what it
    /// removed.
    /// `names`: the interface names by index.
    async fn remove_leftovers<M: VipManager>(
        &self,
        m: &M,
        names: &BTreeMap<u32, String>,
    ) -> Vec<VirtualIpAddress> {
        let recorded: Vec<LedgerEntry> =
            self.entries.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        if recorded.is_empty() {
            return Vec::new();
        }
        let present = match m.list(None).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "VIP ledger: listing addresses failed; VIPs a crashed run left are not removed");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for entry in recorded {
            let here = present.iter().find(|a| {
                a.addr == entry.addr
                    && a.prefix_len == entry.prefix_len
                    && names.get(&a.ifindex) == Some(&entry.dev)
            });
            let mut vip = VirtualIpAddress::new(entry.addr);
            vip.prefix_len = entry.prefix_len;
            match here {
                Some(a) => {
                    let iface = Interface { index: a.ifindex, name: entry.dev.clone() };
                    match m.remove(&vip, &iface).await {
                        Ok(()) => {
                            vip.dev = Some(entry.dev.clone());
                            removed.push(vip);
                        }
                        Err(e) => {
                            tracing::warn!(vip = %entry, error = %e, "VIP ledger: removing an address an earlier run left failed")
                        }
                    }
                }
                // Gone already (or on another device now): not ours to remove.
                None => self.forget(&vip, &entry.dev),
            }
        }
        // `remove` forgets through the manager when it is the ledger's own Rtnl; a manager
        // without this ledger (tests) leaves them to forget here.
        for v in &removed {
            self.forget(v, v.dev.as_deref().unwrap_or_default());
        }
        removed
    }
}

/// `ha-lb cleanup`: removes the VIPs recorded in the ledger at `path` that are still on the
/// host, as a daemon's start does after a crash ([`Rtnl::with_vip_ledger`]); returns them.
/// Call it only when no daemon runs with that ledger.
pub async fn remove_ledgered_vips(path: &Path) -> Result<Vec<VirtualIpAddress>, VipError> {
    let mut rtnl = Rtnl::new().map_err(|e| VipError::Netlink {
        op: "open",
        what: "rtnetlink".into(),
        source: e,
    })?;
    let names = rtnl.link_names().await?;
    Ok(rtnl.take_ledger(path.to_path_buf(), &names).await)
}

fn write_vip_ledger(path: &Path, entries: &BTreeSet<LedgerEntry>) -> io::Result<()> {
    let mut text = String::from("# virtual addresses ha-lb added (address/prefix dev device)\n");
    for e in entries {
        text.push_str(&format!("{e}\n"));
    }
    crate::files::write_private_file(path, &text)
}

// ---------------------------------------------------------------------------------------------
// rtnetlink implementation

/// rtnetlink connection for addresses and links, in the creating thread's network namespace.
#[derive(Clone)]
pub struct Rtnl {
    handle: Handle,
    /// Records the VIPs added through this connection (and its clones), when set
    /// ([`Rtnl::with_vip_ledger`]).
    ledger: Option<Arc<VipLedger>>,
}

impl fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rtnl")
    }
}

impl Rtnl {
    /// Open a route netlink socket and spawn its connection task on the current tokio runtime.
    pub fn new() -> io::Result<Self> {
        let (conn, handle, _unsolicited) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle, ledger: None })
    }

    /// Records every VIP this connection (and its clones) adds in the ledger at `path`
    /// ([`VipLedger`]), after removing what an earlier run recorded there and left on the
    /// host (a crash, or a kill -9): addresses the new configuration may no longer name,
    /// which no instance's start-up clean-up would find. Call it once at start, before any
    /// instance starts, with the path only this daemon uses ([`vip_ledger_path`]). Failures
    /// are logged: a ledger that cannot be read or written costs only that clean-up.
    pub async fn with_vip_ledger(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let names = match self.link_names().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "VIP ledger: listing links failed");
                BTreeMap::new()
            }
        };
        let removed = self.take_ledger(path.clone(), &names).await;
        if !removed.is_empty() {
            let list: Vec<String> = removed.iter().map(ToString::to_string).collect();
            tracing::warn!(vips = ?list, ledger = %path.display(), "removed virtual addresses an earlier run added and left behind");
        }
        self
    }

    /// Records this connection's VIPs in the ledger at `path` from now on, after removing
    /// what it records that is still on the host (`names`: the links by index); returns those.
    async fn take_ledger(
        &mut self,
        path: PathBuf,
        names: &BTreeMap<u32, String>,
    ) -> Vec<VirtualIpAddress> {
        let ledger = Arc::new(VipLedger::open(path));
        self.ledger = Some(ledger.clone());
        ledger.remove_leftovers(self, names).await
    }

    /// The source address for VRRP adverts on `iface`: for IPv4 its primary address (the
    /// first non-secondary, non-host-scope address, skipping `exclude`, i.e. the VIPs);
    /// for IPv6 its usable link-local address. `None` if the interface has none.
    pub async fn vrrp_source_address(
        &self,
        iface: &Interface,
        ipv6: bool,
        exclude: &[IpAddr],
    ) -> Result<Option<IpAddr>, VipError> {
        let addrs = self.list(Some(iface.index)).await?;
        Ok(pick_source_address(&addrs, ipv6, exclude))
    }

    fn address_message(vip: &VirtualIpAddress, iface: &Interface) -> AddressMessage {
        let mut msg = match vip.addr {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(iface.index)
                .address(a, vip.prefix_len)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(iface.index)
                .address(a, vip.prefix_len)
                .build(),
        };
        // The builder derives a broadcast address; like keepalived, send one only if given.
        msg.attributes.retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        msg
    }
}

fn pick_source_address(
    addrs: &[InterfaceAddress],
    ipv6: bool,
    exclude: &[IpAddr],
) -> Option<IpAddr> {
    addrs
        .iter()
        .filter(|a| !exclude.contains(&a.addr) && !a.is_tentative())
        .find(|a| match a.addr {
            IpAddr::V4(_) => !ipv6 && !a.is_secondary() && a.scope != Scope::Host,
            IpAddr::V6(v6) => ipv6 && is_unicast_link_local(&v6),
        })
        .map(|a| a.addr)
}

fn parse_address(msg: &AddressMessage) -> Option<InterfaceAddress> {
    let mut local = None;
    let mut address = None;
    let mut label = None;
    let mut flags = u32::from(msg.header.flags.bits());
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Label(l) => label = Some(l.clone()),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    // IPv4 reports the local address in IFA_LOCAL (IFA_ADDRESS is the peer on p2p links);
    // IPv6 only has IFA_ADDRESS.
    let addr = local.or(address)?;
    Some(InterfaceAddress {
        ifindex: msg.header.index,
        addr,
        prefix_len: msg.header.prefix_len,
        label,
        scope: Scope::from_raw(u8::from(msg.header.scope)),
        flags,
    })
}

impl VipManager for Rtnl {
    async fn add(&self, vip: &VirtualIpAddress, iface: &Interface) -> Result<(), VipError> {
        if let Some(label) = &vip.label {
            check_label(label, &iface.name)?;
        }
        // Recorded before it is added: a crash right after must not leave it unrecorded.
        if let Some(l) = &self.ledger {
            l.record(vip, &iface.name);
        }
        let mut req = self.handle.address().add(iface.index, vip.addr, vip.prefix_len);
        let msg = req.message_mut();
        msg.attributes.retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        let mut flags = AddressFlags::empty();
        match vip.addr {
            IpAddr::V4(_) => {
                msg.header.scope = AddressScope::from(vip.scope.to_raw());
                if let Some(b) = vip.broadcast {
                    msg.attributes.push(AddressAttribute::Broadcast(b));
                }
                if let Some(l) = &vip.label {
                    msg.attributes.push(AddressAttribute::Label(l.clone()));
                }
            }
            IpAddr::V6(_) => {
                // As keepalived: no DAD for VIPs (VRRP is the duplicate detection, and a
                // transient split brain must not leave the VIP "dadfailed" forever) ...
                flags |= AddressFlags::Nodad;
                // ... and a /128 VIP is deprecated (preferred_lft 0) so it is not picked as a
                // source address, e.g. by health checks.
                if vip.prefix_len == 128 {
                    msg.attributes.push(AddressAttribute::CacheInfo({
                        let mut ci = CacheInfo::default();
                        ci.ifa_preferred = 0;
                        ci.ifa_valid = u32::MAX;
                        ci
                    }));
                }
            }
        }
        if vip.no_prefix_route {
            flags |= AddressFlags::Noprefixroute;
        }
        if vip.home {
            flags |= AddressFlags::Homeaddress;
        }
        if !flags.is_empty() {
            msg.header.flags = AddressHeaderFlags::from_bits_truncate(flags.bits() as u8);
            msg.attributes.push(AddressAttribute::Flags(flags));
        }
        match req.execute().await.map_err(nl_io) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err({
                // Not added: not ours to remove at the next start.
                self.forget(vip, iface);
                VipError::Netlink {
                    op: "add address",
                    what: format!("{vip} on {}", iface.name),
                    source,
                }
            }),
        }
    }

    async fn remove(&self, vip: &VirtualIpAddress, iface: &Interface) -> Result<(), VipError> {
        let msg = Self::address_message(vip, iface);
        match self.handle.address().del(msg).execute().await.map_err(nl_io) {
            Ok(()) => {
                self.forget(vip, iface);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                self.forget(vip, iface);
                Ok(())
            }
            // The device was deleted, and its addresses with it: nothing left to remove, an
            // expected event (the link watcher reports the deletion), not an error.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                tracing::debug!(vip = %vip, interface = %iface.name, "virtual address gone with its deleted device");
                self.forget(vip, iface);
                Ok(())
            }
            Err(source) => Err(VipError::Netlink {
                op: "remove address",
                what: format!("{vip} on {}", iface.name),
                source,
            }),
        }
    }

    async fn list(&self, ifindex: Option<u32>) -> Result<Vec<InterfaceAddress>, VipError> {
        let msgs: Vec<AddressMessage> = dump(|| {
            let mut req = self.handle.address().get();
            if let Some(i) = ifindex {
                req = req.set_link_index_filter(i);
            }
            req.execute()
        })
        .await
        .map_err(|source| VipError::Netlink {
            op: "list addresses",
            what: ifindex.map_or("of all links".into(), |i| format!("of link {i}")),
            source,
        })?;
        Ok(msgs.iter().filter_map(parse_address).collect())
    }
}

impl Rtnl {
    /// Every link's name, by index.
    async fn link_names(&self) -> Result<BTreeMap<u32, String>, VipError> {
        let links: Vec<LinkMessage> = dump(|| self.handle.link().get().execute())
            .await
            .map_err(|source| VipError::Netlink { op: "list links", what: "all".into(), source })?;
        Ok(links.iter().map(LinkInfo::from_message).map(|l| (l.index, l.name)).collect())
    }

    fn forget(&self, vip: &VirtualIpAddress, iface: &Interface) {
        if let Some(l) = &self.ledger {
            l.forget(vip, &iface.name);
        }
    }

    async fn get_link(
        &self,
        req: rtnetlink::LinkGetRequest,
        what: String,
    ) -> Result<Option<LinkInfo>, VipError> {
        let mut stream = req.execute();
        match stream.try_next().await.map_err(nl_io) {
            Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(VipError::Netlink { op: "get link", what, source }),
        }
    }
}

impl LinkMonitor for Rtnl {
    type Watcher = RtnlLinkWatcher;

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, VipError> {
        let req = self.handle.link().get().match_name(name.to_string());
        self.get_link(req, name.to_string()).await
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, VipError> {
        let req = self.handle.link().get().match_index(index);
        self.get_link(req, format!("index {index}")).await
    }

    fn watch(&self) -> Result<RtnlLinkWatcher, VipError> {
        RtnlLinkWatcher::new()
    }
}

/// Unsolicited messages of a multicast netlink connection.
type Unsolicited = futures_util::stream::BoxStream<
    'static,
    (NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr),
>;

/// Link changes from a netlink socket subscribed to `RTNLGRP_LINK`.
pub struct RtnlLinkWatcher {
    messages: Unsolicited,
}

impl fmt::Debug for RtnlLinkWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RtnlLinkWatcher")
    }
}

impl RtnlLinkWatcher {
    /// Subscribe (in the current thread's namespace); spawns the connection task.
    pub fn new() -> Result<Self, VipError> {
        let (conn, _handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(|source| {
                VipError::Netlink { op: "subscribe", what: "RTNLGRP_LINK".into(), source }
            })?;
        tokio::spawn(conn);
        Ok(Self { messages: messages.boxed() })
    }
}

impl LinkWatch for RtnlLinkWatcher {
    async fn next(&mut self) -> Option<LinkEvent> {
        while let Some((msg, _)) = self.messages.next().await {
            if let Some(ev) = link_event(msg) {
                return Some(ev);
            }
        }
        None
    }
}

fn link_event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
            Some(LinkEvent::Changed(LinkInfo::from_message(&l)))
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
            let info = LinkInfo::from_message(&l);
            Some(LinkEvent::Removed { index: info.index, name: info.name })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VirtualIpAddress, VipParseError> {
        s.parse()
    }

    #[test]
    fn parses_full_ipv4_line() {
        let v = parse("10.0.0.100/24 dev eth0 label eth0:1 scope global").unwrap();
        assert_eq!(v.addr, "10.0.0.100".parse::<IpAddr>().unwrap());
        assert_eq!(v.prefix_len, 24);
        assert_eq!(v.dev.as_deref(), Some("eth0"));
        assert_eq!(v.label.as_deref(), Some("eth0:1"));
        assert_eq!(v.scope, Scope::Global);
        assert_eq!(v.to_string(), "10.0.0.100/24 dev eth0 label eth0:1");
        assert_eq!(parse(&v.to_string()).unwrap(), v);
    }

    #[test]
    fn defaults_and_options() {
        let v = parse("192.0.2.10").unwrap();
        assert_eq!(v.prefix_len, 32);
        assert_eq!(v, VirtualIpAddress::new(v.addr));
        let v = parse("2001:db8::10").unwrap();
        assert_eq!(v.prefix_len, 128);
        let v = parse("2001:db8::10/64 dev eth1 noprefixroute no_track").unwrap();
        assert_eq!(v.prefix_len, 64);
        assert!(v.no_prefix_route && v.no_track && !v.home);
        let v = parse("  10.1.1.1/16   brd 10.1.255.255 scope link  ").unwrap();
        assert_eq!(v.broadcast, Some(Ipv4Addr::new(10, 1, 255, 255)));
        assert_eq!(v.scope, Scope::Link);
        assert_eq!(parse("10.1.1.1 scope host").unwrap().scope, Scope::Host);
        assert_eq!(parse("10.1.1.1/024").unwrap().prefix_len, 24);
        assert_eq!(parse("10.1.1.1 label eth0 dev eth0").unwrap().label.as_deref(), Some("eth0"));
        assert_eq!(
            parse("10.1.1.1 broadcast 10.1.1.255").unwrap().broadcast,
            Some(Ipv4Addr::new(10, 1, 1, 255))
        );
        // Label without dev: checked against the real interface name when added.
        assert_eq!(parse("10.1.1.1 label foo").unwrap().label.as_deref(), Some("foo"));
    }

    /// Found by trying real-world files: `dev eth0:1`, ifconfig's alias habit.
    #[test]
    fn an_alias_as_device_says_how_to_write_it() {
        let e = VipParseError::BadDev("eth0:1".into()).to_string();
        assert!(e.ends_with("; an alias is written dev eth0 label eth0:1"), "{e}");
        assert!(!VipParseError::BadDev("..".into()).to_string().contains("alias"));
    }

    #[test]
    fn rejects_bad_lines() {
        use VipParseError::*;
        let cases: &[(&str, VipParseError)] = &[
            ("", Empty),
            ("   ", Empty),
            ("10.0.0.300", BadAddress("10.0.0.300".into())),
            ("eth0", BadAddress("eth0".into())),
            ("0.0.0.0", NotAssignable { addr: [0, 0, 0, 0].into(), what: "unspecified" }),
            ("127.0.0.2/8", NotAssignable { addr: [127, 0, 0, 2].into(), what: "loopback" }),
            ("::1", NotAssignable { addr: "::1".parse().unwrap(), what: "loopback" }),
            ("224.0.0.18", NotAssignable { addr: [224, 0, 0, 18].into(), what: "multicast" }),
            ("10.0.0.1/33", PrefixOutOfRange { prefix: "33".into(), max: 32 }),
            ("10.0.0.1/99999", PrefixOutOfRange { prefix: "99999".into(), max: 32 }),
            ("10.0.0.1/", BadPrefix("".into())),
            ("10.0.0.1/+8", BadPrefix("+8".into())),
            ("10.0.0.1/x", BadPrefix("x".into())),
            ("2001:db8::1/129", PrefixOutOfRange { prefix: "129".into(), max: 128 }),
            ("10.0.0.1/24 dev", MissingValue { option: "dev".into(), what: "an interface name" }),
            ("10.0.0.1 label", MissingValue { option: "label".into(), what: "a label" }),
            ("10.0.0.1 dev eth0 dev eth1", Duplicate("dev".into())),
            ("10.0.0.1 scope link scope host", Duplicate("scope".into())),
            ("10.0.0.1 brd 10.0.0.255 broadcast 10.0.0.255", Duplicate("broadcast".into())),
            ("10.0.0.1 home home", Duplicate("home".into())),
            ("10.0.0.1 no_track no_track", Duplicate("no_track".into())),
            ("10.0.0.1 frobnicate", UnknownKeyword("frobnicate".into())),
            ("10.0.0.1 peer 10.0.0.2", Unsupported("peer".into())),
            ("10.0.0.1 scope galaxy", BadScope("galaxy".into())),
            ("10.0.0.1 scope 42", BadScope("42".into())),
            ("10.0.0.1 scope universe", BadScope("universe".into())),
            (
                "10.0.0.1 broadcast ::1",
                BadBroadcast { option: "broadcast".into(), value: "::1".into() },
            ),
            ("2001:db8::1 label eth0:1", Ipv4Only("label".into())),
            ("2001:db8::1 brd 10.0.0.255", Ipv4Only("brd".into())),
            ("2001:db8::1 scope link", Ipv4Only("scope".into())),
            ("10.0.0.1 dev averyveryverylongname", BadDev("averyveryverylongname".into())),
            ("10.0.0.1 dev eth0:1", BadDev("eth0:1".into())),
            ("10.0.0.1 dev ..", BadDev("..".into())),
            ("10.0.0.1 label eth0:0123456789abc", LabelTooLong("eth0:0123456789abc".into())),
            (
                "10.0.0.1 dev eth0 label eth1:1",
                LabelPrefix { label: "eth1:1".into(), dev: "eth0".into() },
            ),
            (
                "10.0.0.1 dev eth1 label eth10:1",
                LabelPrefix { label: "eth10:1".into(), dev: "eth1".into() },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line).as_ref(), Err(want), "line {line:?}");
        }
    }

    #[test]
    fn error_messages_read_after_the_entry() {
        let msg = |line: &str| parse(line).unwrap_err().to_string();
        assert_eq!(msg("10.0.0.1/33"), "prefix length 33 is out of range 0..=32");
        assert_eq!(msg("10.0.0.1 dev"), "option dev needs an interface name");
        assert_eq!(
            msg("10.0.0.1 scope galaxy"),
            "scope \"galaxy\" is not one of global, site, link, host, nowhere"
        );
        assert_eq!(msg("10.0.0.1 brd x"), "brd \"x\" is not an IPv4 address");
        assert_eq!(
            msg("10.0.0.1 dev eth0 label eth1:1"),
            "label \"eth1:1\" must be \"eth0\" or start with \"eth0:\""
        );
        assert_eq!(
            msg("10.0.0.1 peer 10.0.0.2"),
            "option \"peer\" is not supported by ha-lb \
             (supported: dev, label, scope, brd, noprefixroute, home, no_track)"
        );
    }

    #[test]
    fn family_and_device() {
        let v = parse("192.0.2.1 label eth0:1").unwrap();
        assert_eq!(v.family(), AddrFamily::Ipv4);
        assert_eq!(v.device("eth0"), "eth0");
        assert_eq!(parse("2001:db8::1 dev eth1").unwrap().device("eth0"), "eth1");
        assert_eq!(parse("2001:db8::1").unwrap().family(), AddrFamily::Ipv6);
    }

    #[test]
    fn scope_round_trip() {
        for s in Scope::NAMES {
            let sc: Scope = s.parse().unwrap();
            assert_eq!(sc.to_string(), *s);
            assert_eq!(Scope::from_raw(sc.to_raw()), sc);
        }
        // Unnamed kernel scopes display as numbers.
        assert_eq!(Scope::from_raw(7).to_string(), "7");
    }

    fn ia(addr: &str, flags: u32, scope: Scope) -> InterfaceAddress {
        InterfaceAddress {
            ifindex: 2,
            addr: addr.parse().unwrap(),
            prefix_len: 24,
            label: None,
            scope,
            flags,
        }
    }

    /// Addresses as the kernel keeps them: `remove` takes address, prefix and interface
    /// (IPv4 and IPv6 removals match the prefix too) and, like [`Rtnl`], "not there" is
    /// success.
    #[derive(Default)]
    struct FakeKernel {
        addrs: std::sync::Mutex<Vec<InterfaceAddress>>,
    }

    impl FakeKernel {
        fn with(addrs: &[(&str, u8)]) -> Self {
            let addrs = addrs
                .iter()
                .map(|(a, p)| InterfaceAddress { prefix_len: *p, ..ia(a, 0, Scope::Global) })
                .collect();
            FakeKernel { addrs: std::sync::Mutex::new(addrs) }
        }
        fn now(&self) -> Vec<(String, u8)> {
            let a = self.addrs.lock().unwrap();
            a.iter().map(|a| (a.addr.to_string(), a.prefix_len)).collect()
        }
    }

    impl VipManager for FakeKernel {
        async fn add(&self, vip: &VirtualIpAddress, iface: &Interface) -> Result<(), VipError> {
            let mut a = self.addrs.lock().unwrap();
            if !a.iter().any(|x| x.addr == vip.addr && x.prefix_len == vip.prefix_len) {
                let mut new = ia(&vip.addr.to_string(), 0, Scope::Global);
                new.ifindex = iface.index;
                new.prefix_len = vip.prefix_len;
                a.push(new);
            }
            Ok(())
        }
        async fn remove(&self, vip: &VirtualIpAddress, iface: &Interface) -> Result<(), VipError> {
            self.addrs.lock().unwrap().retain(|x| {
                !(x.ifindex == iface.index && x.addr == vip.addr && x.prefix_len == vip.prefix_len)
            });
            Ok(())
        }
        async fn list(&self, _: Option<u32>) -> Result<Vec<InterfaceAddress>, VipError> {
            Ok(self.addrs.lock().unwrap().clone())
        }
    }

    #[tokio::test]
    async fn remove_stale_removes_the_vip_as_configured_and_never_another_prefix() {
        // The host's own 198.51.100.10/24 (an address owner's interface address, say) and the
        // VIP 198.51.100.10/32 left by a crash: only the /32 goes (found by review: matching
        // by address alone deleted the host's /24, its connected route and the advert source).
        let k =
            FakeKernel::with(&[("192.0.2.1", 24), ("198.51.100.10", 24), ("198.51.100.10", 32)]);
        let eth0 = Interface { index: 2, name: "eth0".into() };
        let vip = parse("198.51.100.10/32").unwrap();
        let removed = k.remove_stale(&[(vip.clone(), eth0.clone())]).await.unwrap();
        assert_eq!(
            k.now(),
            [("192.0.2.1".to_string(), 24), ("198.51.100.10".to_string(), 24)],
            "the /24 stays"
        );
        assert_eq!(removed, std::slice::from_ref(&vip));

        // Another interface's copy stays; a v6 VIP as configured goes.
        let k = FakeKernel::with(&[("198.51.100.10", 32), ("2001:db8::a", 64)]);
        k.addrs.lock().unwrap()[0].ifindex = 3;
        let v6 = parse("2001:db8::a/64").unwrap();
        let removed = k.remove_stale(&[(vip, eth0.clone()), (v6, eth0)]).await.unwrap();
        assert_eq!(k.now(), [("198.51.100.10".to_string(), 32)]);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].prefix_len, 64);
    }

    #[tokio::test]
    async fn remove_stale_does_not_report_what_is_still_there() {
        // A kernel that ignores removals: nothing is reported removed.
        struct Stuck(FakeKernel);
        impl VipManager for Stuck {
            async fn add(&self, v: &VirtualIpAddress, i: &Interface) -> Result<(), VipError> {
                self.0.add(v, i).await
            }
            async fn remove(&self, _: &VirtualIpAddress, _: &Interface) -> Result<(), VipError> {
                Ok(())
            }
            async fn list(&self, i: Option<u32>) -> Result<Vec<InterfaceAddress>, VipError> {
                self.0.list(i).await
            }
        }
        let k = Stuck(FakeKernel::with(&[("198.51.100.10", 32)]));
        let eth0 = Interface { index: 2, name: "eth0".into() };
        let vip = parse("198.51.100.10").unwrap();
        assert!(k.remove_stale(&[(vip, eth0)]).await.unwrap().is_empty());
    }

    #[test]
    fn vip_ledger_lines_and_path() {
        let e = LedgerEntry::parse("198.51.100.10/32 dev eth0").unwrap();
        assert_eq!(e.to_string(), "198.51.100.10/32 dev eth0");
        assert_eq!(LedgerEntry::parse("2001:db8::a/64 dev veth-x").unwrap().prefix_len, 64);
        for bad in [
            "198.51.100.10 dev eth0",
            "198.51.100.10/33 dev eth0",
            "198.51.100.10/32 eth0",
            "198.51.100.10/32 dev",
            "198.51.100.10/32 dev eth0 extra",
            "198.51.100.10/32 dev a/b",
        ] {
            assert_eq!(LedgerEntry::parse(bad), None, "{bad}");
        }
        assert_eq!(
            vip_ledger_path(Path::new("/run/ha-lb/ha-lb.sock")),
            Path::new("/run/ha-lb/ha-lb.vips")
        );
        assert_eq!(vip_ledger_path(Path::new("/tmp/x/d1")), Path::new("/tmp/x/d1.vips"));
        assert_eq!(vip_ledger_path(Path::new("/tmp/a.vips")), Path::new("/tmp/a.vips.ledger"));
    }

    #[tokio::test]
    async fn vip_ledger_removes_only_what_it_names_and_is_still_there() {
        let dir = std::env::temp_dir().join(format!("hlb-vip-ledger-{}", std::process::id()));
        let path = dir.join("run").join("d1.vips");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "# comment\n\
             198.51.100.10/32 dev eth0\n\
             198.51.100.11/32 dev eth0\n\
             198.51.100.12/32 dev eth1\n\
             198.51.100.13/32 dev eth0\n\
             junk\n",
        )
        .unwrap();
        // .10 left by the crashed run; .11 gone already; .12 is on eth0 now, not eth1; .13
        // is there as a /24 (someone else's); .14 was never recorded.
        let k = FakeKernel::with(&[
            ("192.0.2.1", 24),
            ("198.51.100.10", 32),
            ("198.51.100.12", 32),
            ("198.51.100.13", 24),
            ("198.51.100.14", 32),
        ]);
        let names: BTreeMap<u32, String> = [(2, "eth0".into()), (3, "eth1".into())].into();
        let ledger = VipLedger::open(path.clone());
        let removed = ledger.remove_leftovers(&k, &names).await;
        assert_eq!(
            removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["198.51.100.10/32 dev eth0"]
        );
        let left: Vec<String> = k.now().into_iter().map(|(a, p)| format!("{a}/{p}")).collect();
        assert_eq!(
            left,
            ["192.0.2.1/24", "198.51.100.12/32", "198.51.100.13/24", "198.51.100.14/32"]
        );
        // Nothing is recorded any more.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");

        // Recorded before adding, dropped after removing.
        let eth0 = Interface { index: 2, name: "eth0".into() };
        let vip = parse("198.51.100.20/32").unwrap();
        ledger.record(&vip, &eth0.name);
        assert!(VipLedger::open(path.clone())
            .entries
            .lock()
            .unwrap()
            .contains(&LedgerEntry::of(&vip, "eth0")));
        ledger.forget(&vip, &eth0.name);
        assert!(VipLedger::open(path.clone()).entries.lock().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn picks_vrrp_source_address() {
        let addrs = vec![
            ia("127.0.0.1", 0, Scope::Host),
            ia("192.0.2.100", 0, Scope::Global), // a VIP, excluded
            ia("192.0.2.1", 0, Scope::Global),
            ia("192.0.2.2", libc::IFA_F_SECONDARY, Scope::Global),
            ia("2001:db8::1", 0, Scope::Global),
            ia("fe80::1", libc::IFA_F_TENTATIVE, Scope::Link),
            ia("fe80::2", 0, Scope::Link),
        ];
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        assert_eq!(pick_source_address(&addrs, false, &[vip]), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(pick_source_address(&addrs, true, &[]), Some("fe80::2".parse().unwrap()));
        assert_eq!(pick_source_address(&addrs[..2], false, &[vip]), None);
    }
}
