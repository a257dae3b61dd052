//! The kernel's IPVS sync protocol, version 1 (Linux `net/netfilter/ipvs/ip_vs_sync.c`): what a
//! keepalived + IPVS director (or ha-lb with `dataplane = "ipvs"`) multicasts on
//! 224.0.0.81:8848. Pure: bytes in, [`IpvsMessage`] out, and back; every malformed message is a
//! typed [`IpvsDecodeError`], never a panic. [`IpvsConn::to_item`] maps an entry to the
//! director-independent [`SyncEntry`] / [`SyncTemplate`] ha-lb's import takes (the rules are in
//! `docs/conntrack-sync.md`, "Kernel IPVS sync").
//!
//! All integers are big-endian; the layout is the kernel's structs:
//!
//! ```text
//! header, struct ip_vs_sync_mesg (8 bytes)
//!   0      reserved   0 (a version-0 message has its connection count here)
//!   1      sync id
//!   2..4   size       the whole message, header included: must equal the datagram's length
//!   4      nr_conns   entries that follow
//!   5      version    1
//!   6..8   spare      0
//! entry, struct ip_vs_sync_v4 (36 bytes) / ip_vs_sync_v6 (72 bytes), then options
//!   0      type       bit 0: IPv6; 0 for IPv4 (any other value: the message is dropped)
//!   1      protocol   6 TCP, 17 UDP (132 SCTP: skipped here)
//!   2..4   ver_size   version (top 4 bits, 0) | the entry's size with its options (12 bits)
//!   4..8   flags      IP_VS_CONN_F_*: forwarding method (bits 0-2), INACTIVE, TEMPLATE, …
//!   8..10  state      TCP: IP_VS_TCP_S_*; UDP: 0; templates: IP_VS_CTPL_S_*
//!   10..12 cport      the client's port (templates: 0)
//!   12..14 vport      the virtual service's port
//!   14..16 dport      the real server's port
//!   16..20 fwmark
//!   20..24 timeout    seconds: the entry lives this long on the backup from receipt (the
//!                     connection's timeout in its state; a template's: the persistence
//!                     timeout); 0: the backup's own timeout for the state
//!   24..   caddr, vaddr, daddr (4 or 16 bytes each): client (templates: its network), VIP,
//!          real server
//!   then   options up to `size`: {type u8, length u8 (not 0), data}; type 1 sequence
//!          adjustment (24 bytes), 2 persistence-engine data, 3 persistence-engine name; an
//!          unknown type with bit 6 (0x40) set is optional, without it the entry is skipped
//! the next entry starts at the next multiple of 4 after `size` (the padding is in the
//! message's size)
//! ```
//!
//! Like the kernel's receiver, the decoder ignores bytes after the `nr_conns` entries, and
//! drops the whole message on a structural error (a size that does not add up, an entry that
//! overruns the message, an unknown entry version or type, a malformed option) — the kernel
//! keeps the entries before the bad one, this decoder keeps none. Per-entry conditions the kernel skips an entry for (an unknown mandatory option)
//! and those ha-lb cannot import (firewall marks, SCTP, local-node and bypass forwarding,
//! persistence engines) are left to [`IpvsConn::to_item`].

use std::net::SocketAddr;

use super::{
    wire::{ip_at, put_ip},
    SyncEntry, SyncItem, SyncTemplate,
};
use crate::config::{LbKind, Protocol};
use crate::dataplane::{
    ip_protocol, protocol_of,
    xdp::{mask_prefix, Timeouts},
};

/// `struct ip_vs_sync_mesg`.
pub const HEADER_LEN: usize = 8;
/// `struct ip_vs_sync_mesg_v0`: what a message needs to be told apart at all.
pub const HEADER_LEN_V0: usize = 4;
/// `SYNC_PROTO_VER`.
pub const VERSION: u8 = 1;
/// `sizeof(struct ip_vs_sync_v4)`.
pub const CONN_LEN_V4: usize = 36;
/// `sizeof(struct ip_vs_sync_v6)`.
pub const CONN_LEN_V6: usize = 72;
/// Largest message [`encode`] makes (the kernel's own is bounded by the link MTU; this fits
/// a 1500-byte one under IPv4 + UDP with room for tunnels, as ha-lb's own format does).
pub const MAX_MESSAGE: usize = 1400;

/// `STYPE_F_INET6`.
pub const TYPE_F_INET6: u8 = 1;
/// `SVER_SHIFT`, `SVER_MASK`.
const SVER_SHIFT: u16 = 12;
const SVER_MASK: u16 = 0x0fff;

/// `IP_VS_CONN_F_FWD_MASK` and the forwarding methods.
pub const F_FWD_MASK: u32 = 0x0007;
pub const F_MASQ: u32 = 0x0000;
pub const F_LOCALNODE: u32 = 0x0001;
pub const F_TUNNEL: u32 = 0x0002;
pub const F_DROUTE: u32 = 0x0003;
pub const F_BYPASS: u32 = 0x0004;
/// `IP_VS_CONN_F_INACTIVE`: not established (the kernel counts it as an inactive connection).
pub const F_INACTIVE: u32 = 0x0100;
/// `IP_VS_CONN_F_TEMPLATE`: a persistence template, not a connection.
pub const F_TEMPLATE: u32 = 0x1000;
/// `IP_VS_CONN_F_NO_CPORT`: the client port is not known yet (FTP data connections).
pub const F_NO_CPORT: u32 = 0x0800;

/// `IPVS_OPT_SEQ_DATA`, `IPVS_OPT_PE_DATA`, `IPVS_OPT_PE_NAME`, `IPVS_OPT_F_PARAM`.
pub const OPT_SEQ_DATA: u8 = 1;
pub const OPT_PE_DATA: u8 = 2;
pub const OPT_PE_NAME: u8 = 3;
pub const OPT_F_PARAM: u8 = 0x40;
/// `sizeof(struct ip_vs_sync_conn_options)`: two `struct ip_vs_seq`.
pub const SEQ_OPT_LEN: usize = 24;
/// `IP_VS_PEDATA_MAXLEN`, `IP_VS_PENAME_MAXLEN`.
const PE_DATA_MAX: usize = 255;
const PE_NAME_MAX: usize = 16;

/// `IP_VS_TCP_S_*` (the kernel's TCP states, as synced).
pub const TCP_S_NONE: u16 = 0;
pub const TCP_S_ESTABLISHED: u16 = 1;
pub const TCP_S_SYN_SENT: u16 = 2;
pub const TCP_S_SYN_RECV: u16 = 3;
pub const TCP_S_FIN_WAIT: u16 = 4;
pub const TCP_S_TIME_WAIT: u16 = 5;
pub const TCP_S_CLOSE: u16 = 6;
pub const TCP_S_CLOSE_WAIT: u16 = 7;
pub const TCP_S_LAST_ACK: u16 = 8;
pub const TCP_S_LISTEN: u16 = 9;
pub const TCP_S_SYNACK: u16 = 10;
/// `IP_VS_TCP_S_LAST`: states at or above it are invalid (the kernel skips the entry).
pub const TCP_S_LAST: u16 = 11;
/// `IP_VS_UDP_S_NORMAL`, `IP_VS_UDP_S_LAST`.
pub const UDP_S_NORMAL: u16 = 0;
pub const UDP_S_LAST: u16 = 1;
/// `IP_VS_CTPL_S_NONE`: a template's state.
pub const CTPL_S_NONE: u16 = 0;

use ha_lb_common::lb::IPPROTO_TCP;

/// Why a received IPVS message was dropped. `index` is the 0-based entry the error is in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpvsDecodeError {
    #[error("truncated: {len} bytes, the header needs {HEADER_LEN}")]
    Truncated { len: usize },
    #[error("size field {size} but {len} bytes")]
    SizeMismatch { size: u16, len: usize },
    #[error(
        "an IPVS sync message of protocol version 0 (the kernel's sync_version=0): not supported"
    )]
    Version0,
    #[error("entry {index}: the message ends inside it")]
    EntryTruncated { index: u8 },
    #[error("entry {index}: unknown entry version {version}")]
    EntryVersion { index: u8, version: u8 },
    #[error("entry {index}: unknown type {kind:#x}")]
    BadType { index: u8, kind: u8 },
    #[error("entry {index}: size {size} shorter than its addresses")]
    EntryTooShort { index: u8, size: u16 },
    #[error("entry {index}: malformed option")]
    BadOption { index: u8 },
}

impl IpvsDecodeError {
    /// Short stable name for logs.
    pub const fn name(&self) -> &'static str {
        match self {
            IpvsDecodeError::Truncated { .. } => "truncated",
            IpvsDecodeError::SizeMismatch { .. } => "size_mismatch",
            IpvsDecodeError::Version0 => "version_0",
            IpvsDecodeError::EntryTruncated { .. } => "entry_truncated",
            IpvsDecodeError::EntryVersion { .. } => "entry_version",
            IpvsDecodeError::BadType { .. } => "bad_type",
            IpvsDecodeError::EntryTooShort { .. } => "entry_too_short",
            IpvsDecodeError::BadOption { .. } => "bad_option",
        }
    }
}

/// One entry of an IPVS sync message, as the kernel sent it (`struct ip_vs_sync_v4/v6` and
/// what its options said).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpvsConn {
    pub protocol: u8,
    pub flags: u32,
    pub state: u16,
    /// `caddr:cport` (a template: the client's network, port 0).
    pub client: SocketAddr,
    /// `vaddr:vport`.
    pub vip: SocketAddr,
    /// `daddr:dport`.
    pub real_server: SocketAddr,
    pub fwmark: u32,
    /// Seconds (see the module's layout).
    pub timeout: u32,
    /// It carried persistence-engine data or a name (the SIP engine's call id): not an
    /// address-based template, so not one ha-lb can import.
    pub pe: bool,
    /// It carried an option the kernel does not know and that is not marked optional: the
    /// kernel skips the entry (not the message), and so does [`IpvsConn::to_item`].
    pub unknown_mandatory: bool,
}

/// A decoded IPVS sync message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsMessage {
    pub sync_id: u8,
    pub conns: Vec<IpvsConn>,
}

/// Why [`IpvsConn::to_item`] does not map an entry (ha-lb cannot import it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmappable {
    /// A firewall-mark service (ha-lb has none).
    Fwmark,
    /// Not TCP or UDP (SCTP).
    Protocol,
    /// A state beyond the protocol's (the kernel skips the entry too).
    State,
    /// Local-node or bypass forwarding (ha-lb forwards NAT, DR or TUN only).
    Forwarding,
    /// A persistence engine's template or connection.
    PersistenceEngine,
    /// An unknown mandatory option (the kernel skips the entry too).
    UnknownOption,
    /// Addresses of different families (the kernel's entries cannot carry that; ours can't
    /// import it).
    MixedFamily,
    /// A template of a finer granularity than the local service's.
    Granularity,
    /// A connection without a client port (`IP_VS_CONN_F_NO_CPORT`, FTP data pending).
    NoClientPort,
}

impl IpvsConn {
    /// A persistence template (`IP_VS_CONN_F_TEMPLATE`).
    pub fn is_template(&self) -> bool {
        self.flags & F_TEMPLATE != 0
    }

    /// The TCP states after a FIN or RST: FIN_WAIT, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK.
    pub fn is_closed(&self) -> bool {
        self.protocol == IPPROTO_TCP
            && matches!(
                self.state,
                TCP_S_FIN_WAIT | TCP_S_TIME_WAIT | TCP_S_CLOSE | TCP_S_CLOSE_WAIT | TCP_S_LAST_ACK
            )
    }

    /// The entry in ha-lb's director-independent terms (docs/conntrack-sync.md):
    ///
    /// - a connection: protocol, forwarding method (`flags & IP_VS_CONN_F_FWD_MASK`: MASQ →
    ///   NAT, DROUTE → DR, TUNNEL → TUN), client, VIP, real server; closed when its TCP state
    ///   is one after a FIN or RST; idle 0 (the kernel syncs a connection as it sees a packet
    ///   of it, and its `timeout` is a lifetime from receipt, so the importer's own idle
    ///   timeouts apply from now);
    /// - a template: the service (VIP, vport, protocol), the client network `caddr` (already
    ///   masked by the master's netmask), the real server; `prefix` is `granularity` of the
    ///   local service (IPVS messages carry no prefix: the importer takes the template only
    ///   for a service whose `persistence_granularity` is this same one, so the local one is
    ///   the only one that can be right); idle 0.
    pub fn to_item(
        &self,
        granularity: &dyn Fn(Protocol, SocketAddr) -> u8,
    ) -> Result<SyncItem, Unmappable> {
        if self.unknown_mandatory {
            return Err(Unmappable::UnknownOption);
        }
        if self.pe {
            return Err(Unmappable::PersistenceEngine);
        }
        if self.fwmark != 0 {
            return Err(Unmappable::Fwmark);
        }
        let protocol = protocol_of(self.protocol).ok_or(Unmappable::Protocol)?;
        let v4 = self.vip.is_ipv4();
        if self.client.is_ipv4() != v4 || self.real_server.is_ipv4() != v4 {
            return Err(Unmappable::MixedFamily);
        }
        if self.is_template() {
            let vip = self.vip;
            let prefix = granularity(protocol, vip);
            // A finer template than the local granularity (the master keeps one per host,
            // we one per network): masked, it would send one client's network to that
            // client's real server.
            let client = self.client.ip();
            if prefix != 0 && mask_prefix(client, prefix) != client {
                return Err(Unmappable::Granularity);
            }
            return Ok(SyncItem::Template(SyncTemplate {
                protocol,
                vip,
                client,
                prefix,
                real_server: self.real_server,
                idle_secs: 0,
            }));
        }
        // A connection without a client port (the kernel's pending FTP data connection).
        if self.flags & F_NO_CPORT != 0 || self.client.port() == 0 {
            return Err(Unmappable::NoClientPort);
        }
        let last = if protocol == Protocol::Tcp { TCP_S_LAST } else { UDP_S_LAST };
        if self.state >= last {
            return Err(Unmappable::State);
        }
        let lb_kind = match self.flags & F_FWD_MASK {
            F_MASQ => LbKind::Nat,
            F_DROUTE => LbKind::Dr,
            F_TUNNEL => LbKind::Tun,
            _ => return Err(Unmappable::Forwarding),
        };
        Ok(SyncItem::Conn(SyncEntry {
            protocol,
            lb_kind,
            client: self.client,
            vip: self.vip,
            real_server: self.real_server,
            idle_secs: 0,
            closed: self.is_closed(),
        }))
    }

    /// The entry a kernel master would send for `e` (for a kernel IPVS backup): state
    /// ESTABLISHED (open TCP), TIME_WAIT and INACTIVE (closed TCP: a new SYN from the same
    /// client port may replace it, as on the master) or NORMAL and INACTIVE (UDP, as the
    /// kernel keeps its UDP connections: they weigh as inactive in lc/wlc). The timeout is what
    /// is left of ours for that state (`timeouts`) after the entry's idle time, at least 1 s
    /// (0 would mean the backup's full timeout from receipt, renewed by every resend, so its
    /// copies would never age); `None` when nothing is left (not sent).
    pub fn from_entry(e: &SyncEntry, timeouts: &Timeouts) -> Option<IpvsConn> {
        let (state, inactive) = match (e.protocol, e.closed) {
            (Protocol::Tcp, false) => (TCP_S_ESTABLISHED, 0),
            (Protocol::Tcp, true) => (TCP_S_TIME_WAIT, F_INACTIVE),
            (Protocol::Udp, _) => (UDP_S_NORMAL, F_INACTIVE),
        };
        let protocol = ip_protocol(e.protocol);
        let full = timeouts.for_flow(protocol, e.closed).as_secs();
        let full = u32::try_from(full).unwrap_or(u32::MAX);
        if e.idle_secs >= full {
            return None;
        }
        let fwd = match e.lb_kind {
            LbKind::Nat => F_MASQ,
            LbKind::Dr => F_DROUTE,
            LbKind::Tun => F_TUNNEL,
        };
        Some(IpvsConn {
            protocol,
            flags: fwd | inactive,
            state,
            client: e.client,
            vip: e.vip,
            real_server: e.real_server,
            fwmark: 0,
            timeout: full - e.idle_secs,
            pe: false,
            unknown_mandatory: false,
        })
    }

    /// The template a kernel master would send for `t`, whose service has `persistence_timeout`
    /// seconds: the client network masked to `t.prefix`, port 0, and as timeout what is left of
    /// it (at least 1 s: 0 would mean the backup's 3-minute default), so the backup's copy
    /// expires when ours would.
    pub fn from_template(t: &SyncTemplate, persistence_timeout: u32) -> IpvsConn {
        let client = SocketAddr::new(mask_prefix(t.client, t.prefix), 0);
        IpvsConn {
            protocol: ip_protocol(t.protocol),
            flags: F_TEMPLATE,
            state: CTPL_S_NONE,
            client,
            vip: t.vip,
            real_server: t.real_server,
            fwmark: 0,
            timeout: persistence_timeout.saturating_sub(t.idle_secs).max(1),
            pe: false,
            unknown_mandatory: false,
        }
    }
}

/// `a` masked to its first `prefix` bits (0 or the whole length: unchanged).
/// Whether `buf` is to be read as an IPVS sync message: its size field (bytes 2..4, in both
/// protocol versions) is its length. ha-lb's own datagrams start with `HLBS`, which read as a
/// size of 16979 bytes: never the length of one.
pub fn looks_ipvs(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN_V0 && usize::from(u16::from_be_bytes([buf[2], buf[3]])) == buf.len()
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Decodes one message, as `ip_vs_process_message` reads it (see the module's notes).
pub fn decode(buf: &[u8]) -> Result<IpvsMessage, IpvsDecodeError> {
    if buf.len() < HEADER_LEN_V0 {
        return Err(IpvsDecodeError::Truncated { len: buf.len() });
    }
    let size = be16(buf, 2);
    if usize::from(size) != buf.len() {
        return Err(IpvsDecodeError::SizeMismatch { size, len: buf.len() });
    }
    // The kernel's test: anything else of the right size is a version-0 message.
    if buf.len() < HEADER_LEN || buf[0] != 0 || buf[5] != VERSION || be16(buf, 6) != 0 {
        return Err(IpvsDecodeError::Version0);
    }
    let sync_id = buf[1];
    let count = buf[4];
    let mut m = IpvsMessage { sync_id, conns: Vec::with_capacity(usize::from(count)) };
    let mut at = HEADER_LEN;
    for index in 0..count {
        if at + CONN_LEN_V4 > buf.len() {
            return Err(IpvsDecodeError::EntryTruncated { index });
        }
        let ver_size = be16(buf, at + 2);
        let size = ver_size & SVER_MASK;
        let end = at + usize::from(size);
        if end > buf.len() {
            return Err(IpvsDecodeError::EntryTruncated { index });
        }
        if ver_size >> SVER_SHIFT != 0 {
            return Err(IpvsDecodeError::EntryVersion { index, version: (ver_size >> 12) as u8 });
        }
        let kind = buf[at];
        let v6 = kind & TYPE_F_INET6 != 0;
        if !v6 && kind != 0 {
            return Err(IpvsDecodeError::BadType { index, kind });
        }
        let fixed = if v6 { CONN_LEN_V6 } else { CONN_LEN_V4 };
        if usize::from(size) < fixed {
            return Err(IpvsDecodeError::EntryTooShort { index, size });
        }
        let e = &buf[at..end];
        let a = if v6 { 16 } else { 4 };
        let mut c = IpvsConn {
            protocol: e[1],
            flags: be32(e, 4),
            state: be16(e, 8),
            client: SocketAddr::new(ip_at(e, 24, v6), be16(e, 10)),
            vip: SocketAddr::new(ip_at(e, 24 + a, v6), be16(e, 12)),
            real_server: SocketAddr::new(ip_at(e, 24 + 2 * a, v6), be16(e, 14)),
            fwmark: be32(e, 16),
            timeout: be32(e, 20),
            pe: false,
            unknown_mandatory: false,
        };
        options(&e[fixed..], &mut c).map_err(|()| IpvsDecodeError::BadOption { index })?;
        m.conns.push(c);
        // The next entry is 32-bit aligned (the padding is in the message's size).
        at += (usize::from(size) + 3) & !3;
    }
    // What follows the last entry is ignored, as the kernel does (its own sender never
    // leaves anything there).
    Ok(m)
}

/// Reads an entry's options (`ip_vs_proc_sync_conn`): each `{type, length ≠ 0, data}` within
/// the entry; a sequence option of exactly 24 bytes, persistence-engine data (≤ 255) and name
/// (≤ 16), each at most once; an unknown type is skipped, and marks the entry when it is not
/// optional.
fn options(mut o: &[u8], c: &mut IpvsConn) -> Result<(), ()> {
    let (mut seq, mut pe_data, mut pe_name) = (false, false, false);
    while !o.is_empty() {
        if o.len() < 2 {
            return Err(());
        }
        let (ptype, plen) = (o[0], usize::from(o[1]));
        if plen == 0 || 2 + plen > o.len() {
            return Err(());
        }
        let seen = |flag: &mut bool| -> Result<(), ()> {
            if std::mem::replace(flag, true) {
                Err(())
            } else {
                Ok(())
            }
        };
        match ptype & !OPT_F_PARAM {
            OPT_SEQ_DATA if plen == SEQ_OPT_LEN => seen(&mut seq)?,
            OPT_SEQ_DATA => return Err(()),
            OPT_PE_DATA if plen <= PE_DATA_MAX => {
                seen(&mut pe_data)?;
                c.pe = true;
            }
            OPT_PE_NAME if plen <= PE_NAME_MAX => {
                seen(&mut pe_name)?;
                c.pe = true;
            }
            OPT_PE_DATA | OPT_PE_NAME => return Err(()),
            _ if ptype & OPT_F_PARAM == 0 => c.unknown_mandatory = true,
            _ => {}
        }
        o = &o[2 + plen..];
    }
    Ok(())
}

/// The encoded length of `c` (no options), or `None` if its addresses mix families.
pub fn encoded_len(c: &IpvsConn) -> Option<usize> {
    let v4 = c.vip.is_ipv4();
    (c.client.is_ipv4() == v4 && c.real_server.is_ipv4() == v4).then_some(if v4 {
        CONN_LEN_V4
    } else {
        CONN_LEN_V6
    })
}

/// Encodes `conns` as the kernel's sender lays them out (`ip_vs_sync_conn`): messages of at
/// most [`MAX_MESSAGE`] bytes and 255 entries, each entry 32-bit aligned, in order; no options
/// (ha-lb has no sequence adjustment or persistence engines). Entries mixing address families
/// are skipped. No entries, no messages.
pub fn encode(sync_id: u8, conns: &[IpvsConn]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    for c in conns {
        let Some(len) = encoded_len(c) else { continue };
        // Entries are 36 or 72 bytes: always aligned, no padding.
        if cur.as_ref().is_some_and(|m| m.len() + len > MAX_MESSAGE || m[4] == u8::MAX) {
            out.extend(cur.take().map(finish));
        }
        let m = cur.get_or_insert_with(|| {
            let mut m = Vec::with_capacity(MAX_MESSAGE);
            m.extend_from_slice(&[0, sync_id, 0, 0, 0, VERSION, 0, 0]);
            m
        });
        m[4] += 1;
        m.push(if c.vip.is_ipv4() { 0 } else { TYPE_F_INET6 });
        m.push(c.protocol);
        m.extend_from_slice(&(len as u16 & SVER_MASK).to_be_bytes());
        m.extend_from_slice(&c.flags.to_be_bytes());
        m.extend_from_slice(&c.state.to_be_bytes());
        m.extend_from_slice(&c.client.port().to_be_bytes());
        m.extend_from_slice(&c.vip.port().to_be_bytes());
        m.extend_from_slice(&c.real_server.port().to_be_bytes());
        m.extend_from_slice(&c.fwmark.to_be_bytes());
        m.extend_from_slice(&c.timeout.to_be_bytes());
        put_ip(m, c.client.ip());
        put_ip(m, c.vip.ip());
        put_ip(m, c.real_server.ip());
    }
    out.extend(cur.map(finish));
    out
}

/// One of our own datagrams (made by [`super::encode`]) as the kernel's messages, for a
/// director that sends `protocol = "ipvs"`: its connections ([`IpvsConn::from_entry`]) or
/// templates ([`IpvsConn::from_template`], `persistence_timeout` giving each one's service's
/// timeout in seconds). Our datagram stays the unit of pacing and of what is owed; a table
/// request (no entries) or anything not ours gives nothing.
pub fn transcode(
    datagram: &[u8],
    timeouts: &Timeouts,
    persistence_timeout: &dyn Fn(Protocol, SocketAddr) -> u32,
) -> Vec<Vec<u8>> {
    let Ok(d) = super::decode(datagram) else { return Vec::new() };
    let conns: Vec<IpvsConn> = d
        .entries
        .iter()
        .filter_map(|e| IpvsConn::from_entry(e, timeouts))
        .chain(
            d.templates
                .iter()
                .map(|t| IpvsConn::from_template(t, persistence_timeout(t.protocol, t.vip))),
        )
        .collect();
    encode(d.sync_id, &conns)
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let size = m.len() as u16;
    m[2..4].copy_from_slice(&size.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A message built by hand, field by field as the kernel's structs lay it out: sync id 52,
    /// one IPv4 NAT TCP connection (ESTABLISHED, 900 s) 198.18.0.2:40000 → 198.18.0.100:80 →
    /// 198.19.1.11:80, and one IPv4 template (client network 198.18.0.0, port 0, 300 s) with
    /// a sequence option after it, padded, then one IPv6 DR UDP connection.
    fn kernel_message() -> Vec<u8> {
        let mut m = vec![
            0, 52, 0, 0, // reserved, syncid, size (filled below)
            3, 1, 0, 0, // nr_conns, version 1, spare
        ];
        // struct ip_vs_sync_v4: NAT TCP connection.
        m.extend_from_slice(&[0, 6, 0, 36]); // type v4, TCP, ver 0 | size 36
        m.extend_from_slice(&0x0000_0000u32.to_be_bytes()); // flags: MASQ
        m.extend_from_slice(&1u16.to_be_bytes()); // state ESTABLISHED
        m.extend_from_slice(&40000u16.to_be_bytes()); // cport
        m.extend_from_slice(&80u16.to_be_bytes()); // vport
        m.extend_from_slice(&80u16.to_be_bytes()); // dport
        m.extend_from_slice(&0u32.to_be_bytes()); // fwmark
        m.extend_from_slice(&900u32.to_be_bytes()); // timeout
        m.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 100, 198, 19, 1, 11]);
        // A template (flags TEMPLATE | INACTIVE | MASQ) with a 24-byte sequence option:
        // 36 + 2 + 24 = 62 bytes, then 2 bytes of padding.
        m.extend_from_slice(&[0, 6, 0, 62]);
        m.extend_from_slice(&0x0000_1100u32.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes()); // CTPL_S_NONE
        m.extend_from_slice(&0u16.to_be_bytes()); // cport 0
        m.extend_from_slice(&80u16.to_be_bytes());
        m.extend_from_slice(&80u16.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&300u32.to_be_bytes());
        m.extend_from_slice(&[198, 18, 0, 0, 198, 18, 0, 100, 198, 19, 1, 12]);
        m.extend_from_slice(&[OPT_SEQ_DATA, 24]);
        m.extend_from_slice(&[0xaa; 24]);
        m.extend_from_slice(&[0, 0]); // padding to 32 bits
                                      // struct ip_vs_sync_v6: DR UDP connection.
        m.extend_from_slice(&[1, 17, 0, 72]);
        m.extend_from_slice(&0x0000_0003u32.to_be_bytes()); // DROUTE
        m.extend_from_slice(&0u16.to_be_bytes()); // UDP NORMAL
        m.extend_from_slice(&5353u16.to_be_bytes());
        m.extend_from_slice(&53u16.to_be_bytes());
        m.extend_from_slice(&53u16.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&300u32.to_be_bytes());
        for a in ["2001:db8::2", "2001:db8::100", "2001:db8:1::11"] {
            m.extend_from_slice(&a.parse::<Ipv6Addr>().unwrap().octets());
        }
        let size = m.len() as u16;
        m[2..4].copy_from_slice(&size.to_be_bytes());
        m
    }

    fn tcp_conn() -> IpvsConn {
        IpvsConn {
            protocol: 6,
            flags: 0,
            state: TCP_S_ESTABLISHED,
            client: sa("198.18.0.2:40000"),
            vip: sa("198.18.0.100:80"),
            real_server: sa("198.19.1.11:80"),
            fwmark: 0,
            timeout: 900,
            pe: false,
            unknown_mandatory: false,
        }
    }

    fn expected() -> Vec<IpvsConn> {
        vec![
            tcp_conn(),
            IpvsConn {
                flags: F_TEMPLATE | F_INACTIVE,
                state: CTPL_S_NONE,
                client: sa("198.18.0.0:0"),
                real_server: sa("198.19.1.12:80"),
                timeout: 300,
                ..tcp_conn()
            },
            IpvsConn {
                protocol: 17,
                flags: F_DROUTE,
                state: UDP_S_NORMAL,
                client: sa("[2001:db8::2]:5353"),
                vip: sa("[2001:db8::100]:53"),
                real_server: sa("[2001:db8:1::11]:53"),
                timeout: 300,
                ..tcp_conn()
            },
        ]
    }

    /// A template finer than the local granularity (a per-host template where we keep one
    /// per /24) is not taken: masked it would pin the network to one client's real server.
    /// A connection without a client port (FTP data pending) is not either.
    #[test]
    fn finer_templates_and_portless_connections_are_unknown() {
        let tpl = |client: &str| IpvsConn {
            flags: F_TEMPLATE,
            state: CTPL_S_NONE,
            client: sa(client),
            ..tcp_conn()
        };
        let g24 = |_: Protocol, _: SocketAddr| 24;
        assert_eq!(tpl("198.18.0.41:0").to_item(&g24), Err(Unmappable::Granularity));
        assert!(tpl("198.18.0.0:0").to_item(&g24).is_ok());
        let whole = |_: Protocol, _: SocketAddr| 0;
        assert!(tpl("198.18.0.41:0").to_item(&whole).is_ok());
        let g = |_: Protocol, _: SocketAddr| 0;
        let no_cport = IpvsConn { flags: F_NO_CPORT, ..tcp_conn() };
        assert_eq!(no_cport.to_item(&g), Err(Unmappable::NoClientPort));
        let port0 = IpvsConn { client: sa("198.18.0.2:0"), ..tcp_conn() };
        assert_eq!(port0.to_item(&g), Err(Unmappable::NoClientPort));
    }

    #[test]
    fn decodes_a_hand_built_kernel_message() {
        let m = kernel_message();
        assert_eq!(m.len(), 8 + 36 + 64 + 72);
        assert!(looks_ipvs(&m));
        let d = decode(&m).unwrap();
        assert_eq!(d.sync_id, 52);
        assert_eq!(d.conns, expected());
    }

    #[test]
    fn encodes_byte_for_byte_as_the_kernel() {
        // Without the option (ours never carries one) the kernel's layout is ours exactly.
        let mut want = kernel_message();
        // Drop the template's option and padding: 26 + 2 bytes at 8 + 36 + 36.
        let at = 8 + 36 + 36;
        want.drain(at..at + 28);
        want[8 + 36 + 3] = 36;
        let size = want.len() as u16;
        want[2..4].copy_from_slice(&size.to_be_bytes());
        assert_eq!(encode(52, &expected()), vec![want]);
    }

    #[test]
    fn maps_to_sync_entries_and_templates() {
        let gran = |_: Protocol, vip: SocketAddr| if vip.port() == 80 { 24 } else { 0 };
        let items: Vec<SyncItem> = decode(&kernel_message())
            .unwrap()
            .conns
            .iter()
            .map(|c| c.to_item(&gran).unwrap())
            .collect();
        assert_eq!(
            items,
            vec![
                SyncItem::Conn(SyncEntry {
                    protocol: Protocol::Tcp,
                    lb_kind: LbKind::Nat,
                    client: sa("198.18.0.2:40000"),
                    vip: sa("198.18.0.100:80"),
                    real_server: sa("198.19.1.11:80"),
                    idle_secs: 0,
                    closed: false,
                }),
                SyncItem::Template(SyncTemplate {
                    protocol: Protocol::Tcp,
                    vip: sa("198.18.0.100:80"),
                    client: "198.18.0.0".parse().unwrap(),
                    prefix: 24,
                    real_server: sa("198.19.1.12:80"),
                    idle_secs: 0,
                }),
                SyncItem::Conn(SyncEntry {
                    protocol: Protocol::Udp,
                    lb_kind: LbKind::Dr,
                    client: sa("[2001:db8::2]:5353"),
                    vip: sa("[2001:db8::100]:53"),
                    real_server: sa("[2001:db8:1::11]:53"),
                    idle_secs: 0,
                    closed: false,
                }),
            ]
        );
    }

    #[test]
    fn tcp_states_forwarding_and_what_is_not_mapped() {
        let g = |_: Protocol, _: SocketAddr| 0;
        let conn = |c: IpvsConn| match c.to_item(&g) {
            Ok(SyncItem::Conn(e)) => Ok(e),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        for s in [
            TCP_S_NONE,
            TCP_S_ESTABLISHED,
            TCP_S_SYN_SENT,
            TCP_S_SYN_RECV,
            TCP_S_LISTEN,
            TCP_S_SYNACK,
        ] {
            assert!(!conn(IpvsConn { state: s, ..tcp_conn() }).unwrap().closed, "state {s}");
        }
        for s in [TCP_S_FIN_WAIT, TCP_S_TIME_WAIT, TCP_S_CLOSE, TCP_S_CLOSE_WAIT, TCP_S_LAST_ACK] {
            assert!(conn(IpvsConn { state: s, ..tcp_conn() }).unwrap().closed, "state {s}");
        }
        assert_eq!(conn(IpvsConn { state: TCP_S_LAST, ..tcp_conn() }), Err(Unmappable::State));
        let udp = IpvsConn { protocol: 17, state: UDP_S_NORMAL, ..tcp_conn() };
        assert!(!conn(udp).unwrap().closed);
        assert_eq!(conn(IpvsConn { state: 1, ..udp }), Err(Unmappable::State));
        for (f, k) in [(F_MASQ, LbKind::Nat), (F_DROUTE, LbKind::Dr), (F_TUNNEL, LbKind::Tun)] {
            // Other flag bits (INACTIVE, HASHED, SYNC) do not change the method.
            assert_eq!(conn(IpvsConn { flags: f | 0x160, ..tcp_conn() }).unwrap().lb_kind, k);
        }
        for f in [F_LOCALNODE, F_BYPASS, 5, 7] {
            assert_eq!(conn(IpvsConn { flags: f, ..tcp_conn() }), Err(Unmappable::Forwarding));
        }
        assert_eq!(conn(IpvsConn { fwmark: 3, ..tcp_conn() }), Err(Unmappable::Fwmark));
        assert_eq!(conn(IpvsConn { protocol: 132, ..tcp_conn() }), Err(Unmappable::Protocol));
        assert_eq!(conn(IpvsConn { pe: true, ..tcp_conn() }), Err(Unmappable::PersistenceEngine));
        assert_eq!(
            conn(IpvsConn { unknown_mandatory: true, ..tcp_conn() }),
            Err(Unmappable::UnknownOption)
        );
        assert_eq!(
            conn(IpvsConn { real_server: sa("[2001:db8::1]:80"), ..tcp_conn() }),
            Err(Unmappable::MixedFamily)
        );
    }

    #[test]
    fn ours_to_the_kernel_and_back() {
        let e = SyncEntry {
            protocol: Protocol::Tcp,
            lb_kind: LbKind::Tun,
            client: sa("198.18.0.2:40000"),
            vip: sa("198.18.0.100:80"),
            real_server: sa("198.19.1.11:80"),
            idle_secs: 17,
            closed: true,
        };
        let s = Duration::from_secs;
        let to = Timeouts { tcp: s(900), tcp_fin: s(120), udp: s(300) };
        let c = IpvsConn::from_entry(&e, &to).unwrap();
        // Closed: TIME_WAIT (a new SYN may replace it), inactive, what is left of ours.
        assert_eq!((c.flags, c.state, c.timeout), (F_TUNNEL | F_INACTIVE, TCP_S_TIME_WAIT, 103));
        let g = |_: Protocol, _: SocketAddr| 0;
        assert_eq!(c.to_item(&g), Ok(SyncItem::Conn(SyncEntry { idle_secs: 0, ..e })));
        // Open TCP: active, ESTABLISHED; UDP: inactive, as the kernel keeps UDP.
        let open = IpvsConn::from_entry(&SyncEntry { closed: false, ..e }, &to).unwrap();
        assert_eq!((open.flags, open.state, open.timeout), (F_TUNNEL, TCP_S_ESTABLISHED, 883));
        let udp = SyncEntry { protocol: Protocol::Udp, closed: false, ..e };
        let u = IpvsConn::from_entry(&udp, &to).unwrap();
        assert_eq!((u.flags, u.state, u.timeout), (F_TUNNEL | F_INACTIVE, UDP_S_NORMAL, 283));
        // Nothing left: not sent (a resend must not revive it on the backup).
        assert_eq!(IpvsConn::from_entry(&SyncEntry { idle_secs: 120, ..e }, &to), None);
        assert_eq!(
            IpvsConn::from_entry(&SyncEntry { idle_secs: 119, ..e }, &to).unwrap().timeout,
            1
        );
        let t = SyncTemplate {
            protocol: Protocol::Udp,
            vip: sa("198.18.0.100:53"),
            client: "198.18.7.9".parse().unwrap(),
            prefix: 24,
            real_server: sa("198.19.1.11:53"),
            idle_secs: 100,
        };
        let c = IpvsConn::from_template(&t, 300);
        assert_eq!((c.client, c.timeout, c.flags), (sa("198.18.7.0:0"), 200, F_TEMPLATE));
        assert_eq!(IpvsConn::from_template(&t, 60).timeout, 1, "never 0 (the kernel's 180 s)");
        let g = |_: Protocol, _: SocketAddr| 24;
        assert_eq!(
            c.to_item(&g),
            Ok(SyncItem::Template(SyncTemplate {
                client: "198.18.7.0".parse().unwrap(),
                idle_secs: 0,
                ..t
            }))
        );
    }

    /// Our datagrams, sent as the kernel's messages: every entry, in order, the sync id kept,
    /// the templates with what is left of their service's timeout.
    #[test]
    fn our_datagrams_transcoded() {
        let entries: Vec<SyncEntry> = (0..60u16)
            .map(|i| SyncEntry {
                protocol: Protocol::Tcp,
                lb_kind: LbKind::Nat,
                client: SocketAddr::new("198.18.0.2".parse().unwrap(), 30000 + i),
                vip: sa("198.18.0.100:80"),
                real_server: sa("198.19.1.11:80"),
                idle_secs: 3,
                closed: i % 7 == 0,
            })
            .collect();
        let t = SyncTemplate {
            protocol: Protocol::Tcp,
            vip: sa("198.18.0.100:80"),
            client: "198.18.0.0".parse().unwrap(),
            prefix: 24,
            real_server: sa("198.19.1.12:80"),
            idle_secs: 10,
        };
        let ours = super::super::encode(52, &entries);
        let tpl = super::super::encode(52, &[t]);
        let timeout = |_: Protocol, _: SocketAddr| 300;
        let to = Timeouts::default();
        let back: Vec<IpvsConn> = ours
            .iter()
            .flat_map(|d| transcode(d, &to, &timeout))
            .map(|m| decode(&m).unwrap())
            .inspect(|m| assert_eq!(m.sync_id, 52))
            .flat_map(|m| m.conns)
            .collect();
        let mut want: Vec<IpvsConn> =
            entries.iter().map(|e| IpvsConn::from_entry(e, &to).unwrap()).collect();
        // Open ones go in version-1 datagrams, closed ones in version-2 ones.
        want.sort_by_key(|c| c.state);
        let mut got = back.clone();
        got.sort_by_key(|c| c.state);
        assert_eq!(got.len(), 60);
        assert_eq!(got, want);
        let m = transcode(&tpl[0], &to, &timeout);
        assert_eq!(decode(&m[0]).unwrap().conns, vec![IpvsConn::from_template(&t, 300)]);
        assert_eq!(decode(&m[0]).unwrap().conns[0].timeout, 290);
        assert!(transcode(&super::super::request(52), &to, &timeout).is_empty());
    }

    #[test]
    fn version_0_and_header_errors() {
        // struct ip_vs_sync_mesg_v0: nr_conns 1, syncid 52, size, then one 24-byte v0 entry.
        let mut v0 = vec![1, 52, 0, 28];
        v0.extend_from_slice(&[0u8; 24]);
        assert!(looks_ipvs(&v0));
        assert_eq!(decode(&v0), Err(IpvsDecodeError::Version0));
        let good = kernel_message();
        for (i, b) in [(0, 1u8), (5, 0), (5, 2), (6, 1), (7, 1)] {
            let mut m = good.clone();
            m[i] = b;
            assert_eq!(decode(&m), Err(IpvsDecodeError::Version0), "byte {i} = {b}");
        }
        assert_eq!(decode(&good[..3]), Err(IpvsDecodeError::Truncated { len: 3 }));
        let mut long = good.clone();
        long.push(0);
        assert!(!looks_ipvs(&long));
        assert_eq!(
            decode(&long),
            Err(IpvsDecodeError::SizeMismatch { size: good.len() as u16, len: good.len() + 1 })
        );
        assert!(!looks_ipvs(b"HLBS\x01\x07\x00\x00"));
    }

    #[test]
    fn entry_errors() {
        let good = kernel_message();
        let with = |at: usize, b: u8| {
            let mut m = good.clone();
            m[at] = b;
            decode(&m)
        };
        assert_eq!(with(8, 2), Err(IpvsDecodeError::BadType { index: 0, kind: 2 }));
        assert_eq!(with(8 + 2, 0x10), Err(IpvsDecodeError::EntryVersion { index: 0, version: 1 }));
        assert_eq!(with(8 + 3, 35), Err(IpvsDecodeError::EntryTooShort { index: 0, size: 35 }));
        // The IPv6 entry said to be IPv4-sized.
        assert_eq!(with(108 + 3, 36), Err(IpvsDecodeError::EntryTooShort { index: 2, size: 36 }));
        assert_eq!(with(8 + 3, 255), Err(IpvsDecodeError::EntryTruncated { index: 0 }));
        assert_eq!(with(4, 4), Err(IpvsDecodeError::EntryTruncated { index: 3 }));
        // Fewer entries than the message holds: the rest is ignored, as the kernel does.
        assert_eq!(with(4, 2).unwrap().conns, expected()[..2]);
        // The template's option: a wrong sequence length, a zero length.
        let opt = 8 + 36 + 36;
        assert_eq!(with(opt + 1, 23), Err(IpvsDecodeError::BadOption { index: 1 }));
        assert_eq!(with(opt + 1, 0), Err(IpvsDecodeError::BadOption { index: 1 }));
        // An unknown mandatory option marks the entry (the kernel skips it, not the message);
        // an optional one (0x40) is skipped.
        let d = decode(&{
            let mut m = good.clone();
            m[opt] = 9;
            m
        })
        .unwrap();
        assert!(d.conns[1].unknown_mandatory && !d.conns[0].unknown_mandatory);
        let d = decode(&{
            let mut m = good.clone();
            m[opt] = 9 | OPT_F_PARAM;
            m
        })
        .unwrap();
        assert_eq!(d.conns, expected());
        // Persistence-engine data: decoded, marked, not mapped.
        let d = decode(&{
            let mut m = good.clone();
            m[opt] = OPT_PE_DATA;
            m
        })
        .unwrap();
        assert!(d.conns[1].pe);
        // Two of them: dropped, as the kernel does.
        let mut m = good.clone();
        m[8 + 36 + 3] = 36 + 2 + 10 + 2 + 10;
        m[opt..opt + 2].copy_from_slice(&[OPT_PE_DATA, 10]);
        m[opt + 12..opt + 14].copy_from_slice(&[OPT_PE_DATA, 10]);
        assert_eq!(decode(&m), Err(IpvsDecodeError::BadOption { index: 1 }));
    }

    #[test]
    fn many_entries_span_messages() {
        let conns: Vec<IpvsConn> =
            (0..1000u32).map(|i| IpvsConn { timeout: i, ..tcp_conn() }).collect();
        let ms = encode(7, &conns);
        let per = (MAX_MESSAGE - HEADER_LEN) / CONN_LEN_V4;
        assert_eq!(ms.len(), 1000usize.div_ceil(per));
        let back: Vec<IpvsConn> = ms.iter().flat_map(|m| decode(m).unwrap().conns).collect();
        assert_eq!(back, conns);
        assert!(encode(7, &[]).is_empty());
    }

    fn arb_conn() -> impl Strategy<Value = IpvsConn> {
        let ips = prop_oneof![
            any::<[u32; 3]>().prop_map(|a| a.map(|x| IpAddr::V4(Ipv4Addr::from(x)))),
            any::<[u128; 3]>().prop_map(|a| a.map(|x| IpAddr::V6(Ipv6Addr::from(x)))),
        ];
        (ips, any::<[u16; 3]>(), any::<u8>(), any::<u32>(), any::<u16>(), any::<[u32; 2]>())
            .prop_map(|(ip, port, protocol, flags, state, [fwmark, timeout])| IpvsConn {
                protocol,
                flags,
                state,
                client: SocketAddr::new(ip[0], port[0]),
                vip: SocketAddr::new(ip[1], port[1]),
                real_server: SocketAddr::new(ip[2], port[2]),
                fwmark,
                timeout,
                pe: false,
                unknown_mandatory: false,
            })
    }

    proptest! {
        /// Whatever we encode decodes to the same entries, in messages of at most MAX_MESSAGE
        /// bytes.
        #[test]
        fn round_trip(id in any::<u8>(), conns in proptest::collection::vec(arb_conn(), 0..120)) {
            let ms = encode(id, &conns);
            let mut back = Vec::new();
            for m in &ms {
                prop_assert!(m.len() <= MAX_MESSAGE);
                prop_assert!(looks_ipvs(m));
                let d = decode(m).unwrap();
                prop_assert_eq!(d.sync_id, id);
                back.extend(d.conns);
            }
            prop_assert_eq!(back, conns);
        }

        /// Every truncation of a valid message, with its size field made to match (else it is
        /// not even taken for one), is an error, never a panic; so is any byte changed, or it
        /// decodes.
        #[test]
        fn truncated_or_corrupted_never_panics(
            conns in proptest::collection::vec(arb_conn(), 1..20),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        ) {
            let ms = encode(1, &conns);
            let m = &ms[0];
            for cut in HEADER_LEN_V0..m.len() {
                let mut t = m[..cut].to_vec();
                t[2..4].copy_from_slice(&(cut as u16).to_be_bytes());
                prop_assert!(decode(&t).is_err(), "cut at {}", cut);
            }
            let mut f = kernel_message();
            for (i, b) in flips {
                let i = i % f.len();
                f[i] = b;
            }
            let _ = decode(&f);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600), fix in any::<bool>()) {
            let mut b = b;
            if fix && b.len() >= 4 {
                let n = b.len() as u16;
                b[2..4].copy_from_slice(&n.to_be_bytes());
                if b.len() >= 8 { b[0] = 0; b[5] = 1; b[6] = 0; b[7] = 0; }
            }
            let _ = decode(&b);
        }
    }
}
