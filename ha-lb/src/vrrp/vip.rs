//! Virtual IP addresses and links, over rtnetlink.
//!
//! - [`VirtualIpAddress`]: one keepalived `virtual_ipaddress` line, parsed
//!   (`10.0.0.100/24 dev eth0 label eth0:1 scope global`).
//! - [`VipManager`]: add / remove / list addresses, idempotently; `remove_stale` at start-up.
//! - [`LinkMonitor`]: interface lookup by name or index, link state, and a stream of link
//!   changes (`RTNLGRP_LINK`) for `track_interface`.
//! - [`Rtnl`]: the real implementation of both, on the `rtnetlink` crate.
//!
//! Netlink sockets belong to the network namespace of the thread that creates them, so an
//! [`Rtnl`] made inside a thread that called `setns` manages that namespace.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{AddressMessageBuilder, Handle, MulticastGroup};

use super::socket::{is_unicast_link_local, Interface};

/// Longest interface name / address label (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

// ---------------------------------------------------------------------------------------------
// virtual_ipaddress

/// Address scope, as `ip addr ... scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    #[default]
    Global,
    Site,
    Link,
    Host,
    Nowhere,
    Other(u8),
}

impl Scope {
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
            "global" | "universe" => Scope::Global,
            "site" => Scope::Site,
            "link" => Scope::Link,
            "host" => Scope::Host,
            "nowhere" => Scope::Nowhere,
            n => Scope::from_raw(
                n.parse::<u8>().map_err(|_| VipParseError::BadScope(s.to_string()))?,
            ),
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

/// One `virtual_ipaddress` entry.
///
/// Syntax (keepalived's subset that ha-lb supports):
/// `<ADDR>[/<PREFIX>] [brd|broadcast <IPv4>] [dev <IFNAME>] [scope <SCOPE>] [label <LABEL>]
///  [noprefixroute] [home] [no_track]`.
/// The prefix defaults to /32 (IPv4) or /128 (IPv6). `dev` defaults to the instance interface
/// (resolved by the caller). `label`, `scope` and `brd` are IPv4 only, as in keepalived.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VirtualIpAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub broadcast: Option<Ipv4Addr>,
    pub dev: Option<String>,
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

/// Why a `virtual_ipaddress` line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipParseError {
    #[error("empty virtual_ipaddress entry")]
    Empty,
    #[error("invalid IP address {0:?}")]
    BadAddress(String),
    #[error("invalid prefix length {0:?}")]
    BadPrefix(String),
    #[error("keyword {0:?} needs a value")]
    MissingValue(String),
    #[error("{0:?} given twice")]
    Duplicate(String),
    #[error("unknown keyword {0:?}")]
    UnknownKeyword(String),
    #[error("keyword {0:?} is not supported by ha-lb")]
    Unsupported(String),
    #[error("invalid scope {0:?}")]
    BadScope(String),
    #[error("invalid broadcast address {0:?}")]
    BadBroadcast(String),
    #[error("{0} is IPv4 only")]
    Ipv4Only(&'static str),
    #[error("invalid interface name {0:?}")]
    BadDev(String),
    #[error("label {0:?} is longer than 15 characters")]
    LabelTooLong(String),
    #[error("label {label:?} must begin with the interface name {dev:?}")]
    LabelPrefix { label: String, dev: String },
}

impl FromStr for VirtualIpAddress {
    type Err = VipParseError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let mut words = line.split_whitespace();
        let first = words.next().ok_or(VipParseError::Empty)?;
        let (addr_s, prefix_s) = match first.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (first, None),
        };
        let addr: IpAddr =
            addr_s.parse().map_err(|_| VipParseError::BadAddress(addr_s.to_string()))?;
        let mut vip = VirtualIpAddress::new(addr);
        if let Some(p) = prefix_s {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            vip.prefix_len = match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(VipParseError::BadPrefix(p.to_string())),
            };
        }
        let mut scope_seen = false;
        let seen_flag = |kw: &str, flag: &mut bool| {
            if std::mem::replace(flag, true) {
                Err(VipParseError::Duplicate(kw.to_string()))
            } else {
                Ok(())
            }
        };
        while let Some(kw) = words.next() {
            let mut value =
                || words.next().ok_or_else(|| VipParseError::MissingValue(kw.to_string()));
            match kw {
                "dev" => {
                    let v = value()?;
                    if vip.dev.is_some() {
                        return Err(VipParseError::Duplicate(kw.into()));
                    }
                    if v.len() > IFNAME_MAX || v.contains('/') {
                        return Err(VipParseError::BadDev(v.into()));
                    }
                    vip.dev = Some(v.into());
                }
                "label" => {
                    let v = value()?;
                    if vip.label.is_some() {
                        return Err(VipParseError::Duplicate(kw.into()));
                    }
                    if v.len() > IFNAME_MAX {
                        return Err(VipParseError::LabelTooLong(v.into()));
                    }
                    vip.label = Some(v.into());
                }
                "scope" => {
                    let v = value()?;
                    seen_flag(kw, &mut scope_seen)?;
                    vip.scope = v.parse()?;
                }
                "brd" | "broadcast" => {
                    let v = value()?;
                    if vip.broadcast.is_some() {
                        return Err(VipParseError::Duplicate(kw.into()));
                    }
                    let b: Ipv4Addr =
                        v.parse().map_err(|_| VipParseError::BadBroadcast(v.into()))?;
                    vip.broadcast = Some(b);
                }
                "noprefixroute" => seen_flag(kw, &mut vip.no_prefix_route)?,
                "home" => seen_flag(kw, &mut vip.home)?,
                "no_track" => seen_flag(kw, &mut vip.no_track)?,
                "peer" | "autojoin" | "track_group" | "-nodad" | "nodad" | "preferred_lft" => {
                    return Err(VipParseError::Unsupported(kw.into()))
                }
                other => return Err(VipParseError::UnknownKeyword(other.into())),
            }
        }
        if addr.is_ipv6() {
            if vip.label.is_some() {
                return Err(VipParseError::Ipv4Only("label"));
            }
            if vip.broadcast.is_some() {
                return Err(VipParseError::Ipv4Only("brd"));
            }
            if scope_seen {
                return Err(VipParseError::Ipv4Only("scope"));
            }
        }
        if let (Some(label), Some(dev)) = (&vip.label, &vip.dev) {
            check_label(label, dev)?;
        }
        Ok(vip)
    }
}

/// Linux convention (enforced by iproute2): an IPv4 label starts with the device name.
pub fn check_label(label: &str, dev: &str) -> Result<(), VipParseError> {
    if label.starts_with(dev) {
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
    /// that were removed.
    fn remove_stale(
        &self,
        vips: &[(VirtualIpAddress, Interface)],
    ) -> impl Future<Output = Result<Vec<VirtualIpAddress>, VipError>> + Send {
        async move {
            let present = self.list(None).await?;
            let mut removed = Vec::new();
            for (vip, iface) in vips {
                let here = present.iter().any(|a| a.ifindex == iface.index && a.addr == vip.addr);
                if here {
                    self.remove(vip, iface).await?;
                    removed.push(vip.clone());
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
// rtnetlink implementation

/// rtnetlink connection for addresses and links, in the creating thread's network namespace.
#[derive(Clone)]
pub struct Rtnl {
    handle: Handle,
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
        Ok(Self { handle })
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
            Err(source) => Err(VipError::Netlink {
                op: "add address",
                what: format!("{vip} on {}", iface.name),
                source,
            }),
        }
    }

    async fn remove(&self, vip: &VirtualIpAddress, iface: &Interface) -> Result<(), VipError> {
        let msg = Self::address_message(vip, iface);
        match self.handle.address().del(msg).execute().await.map_err(nl_io) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(source) => Err(VipError::Netlink {
                op: "remove address",
                what: format!("{vip} on {}", iface.name),
                source,
            }),
        }
    }

    async fn list(&self, ifindex: Option<u32>) -> Result<Vec<InterfaceAddress>, VipError> {
        let mut req = self.handle.address().get();
        if let Some(i) = ifindex {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> =
            req.execute().try_collect().await.map_err(|e| VipError::Netlink {
                op: "list addresses",
                what: ifindex.map_or("of all links".into(), |i| format!("of link {i}")),
                source: nl_io(e),
            })?;
        Ok(msgs.iter().filter_map(parse_address).collect())
    }
}

impl Rtnl {
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
        assert_eq!(parse("10.1.1.1 scope 42").unwrap().scope, Scope::Other(42));
        assert_eq!(parse("10.1.1.1 scope host").unwrap().scope, Scope::Host);
        assert_eq!(
            parse("10.1.1.1 broadcast 10.1.1.255").unwrap().broadcast,
            Some(Ipv4Addr::new(10, 1, 1, 255))
        );
        // Label without dev: checked against the real interface name when added.
        assert_eq!(parse("10.1.1.1 label foo").unwrap().label.as_deref(), Some("foo"));
    }

    #[test]
    fn rejects_bad_lines() {
        use VipParseError::*;
        let cases: &[(&str, VipParseError)] = &[
            ("", Empty),
            ("   ", Empty),
            ("10.0.0.300", BadAddress("10.0.0.300".into())),
            ("eth0", BadAddress("eth0".into())),
            ("10.0.0.1/33", BadPrefix("33".into())),
            ("10.0.0.1/", BadPrefix("".into())),
            ("10.0.0.1/+8", BadPrefix("+8".into())),
            ("2001:db8::1/129", BadPrefix("129".into())),
            ("10.0.0.1/24 dev", MissingValue("dev".into())),
            ("10.0.0.1 label", MissingValue("label".into())),
            ("10.0.0.1 dev eth0 dev eth1", Duplicate("dev".into())),
            ("10.0.0.1 scope link scope host", Duplicate("scope".into())),
            ("10.0.0.1 home home", Duplicate("home".into())),
            ("10.0.0.1 frobnicate", UnknownKeyword("frobnicate".into())),
            ("10.0.0.1 peer 10.0.0.2", Unsupported("peer".into())),
            ("10.0.0.1 scope galaxy", BadScope("galaxy".into())),
            ("10.0.0.1 scope 256", BadScope("256".into())),
            ("10.0.0.1 brd ::1", BadBroadcast("::1".into())),
            ("2001:db8::1 label eth0:1", Ipv4Only("label")),
            ("2001:db8::1 brd 10.0.0.255", Ipv4Only("brd")),
            ("2001:db8::1 scope link", Ipv4Only("scope")),
            ("10.0.0.1 dev averyveryverylongname", BadDev("averyveryverylongname".into())),
            ("10.0.0.1 label eth0:0123456789abc", LabelTooLong("eth0:0123456789abc".into())),
            (
                "10.0.0.1 dev eth0 label eth1:1",
                LabelPrefix { label: "eth1:1".into(), dev: "eth0".into() },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line).as_ref(), Err(want), "line {line:?}");
        }
    }

    #[test]
    fn scope_round_trip() {
        for s in ["global", "site", "link", "host", "nowhere", "7"] {
            let sc: Scope = s.parse().unwrap();
            assert_eq!(sc.to_string(), s);
            assert_eq!(Scope::from_raw(sc.to_raw()), sc);
        }
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
