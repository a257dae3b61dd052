//! Connection-sync datagram codec (`docs/conntrack-sync.md`, step 2). Pure: entries in, bytes
//! out, and back; every malformed datagram is a typed [`SyncDecodeError`], never a panic.
//!
//! One UDP payload of at most [`MAX_DATAGRAM`] bytes. All integers are big-endian.
//!
//! ```text
//! header (8 bytes)
//!   0..4   magic      "HLBS"
//!   4      version    1 (connections), 2 (connections with flags: closed ones),
//!                     3 (persistence templates) or 4 (the end of a whole-table send,
//!                     no entries: count 0, nothing after the header)
//!   5      sync id    keepalived's lvs_sync_daemon `id` (default: the instance's VRID)
//!   6..8   count      number of entries that follow
//! connection entry, versions 1 and 2 (26 bytes for IPv4, 62 for IPv6), `count` times,
//! nothing after the last
//!   0      family     4 (IPv4) or 6 (IPv6): the family of all three addresses
//!   1      protocol   6 (TCP) or 17 (UDP)
//!   2      lb_kind    0 NAT, 1 DR, 2 TUN
//!   3      flags      bit 0 closed (FIN/RST seen), version 2 only (ignored in version 1);
//!                     bits 1 and 2, first entry only: the datagram's table marks (below);
//!                     other bits sent as 0 and ignored
//!   4..    client     address (4 or 16 bytes), port (2)
//!          VIP        address (4 or 16 bytes), port (2)
//!          real       address (4 or 16 bytes), port (2)
//!          idle secs  u32: seconds since the flow's last packet on the sender
//! template entry, version 3 (24 bytes for IPv4, 60 for IPv6), `count` times
//!   0      family     4 or 6: the family of all three addresses
//!   1      protocol   6 (TCP) or 17 (UDP): the service's
//!   2      prefix     the client network's prefix length (the service's
//!                     persistence_granularity; 0: the whole address), at most 32 / 128
//!   3      flags      bits 1 and 2, first entry only: the datagram's table marks
//!                     (below); other bits sent as 0 and ignored
//!   4..    VIP        address (4 or 16 bytes), port (2): the service
//!          client     address (4 or 16 bytes): the client's network
//!          real       address (4 or 16 bytes), port (2)
//!          idle secs  u32: seconds since the template was last used on the sender
//! ```
//!
//! An entry's addresses share its one family byte, so a decoded [`SyncEntry`] or
//! [`SyncTemplate`] never mixes families; [`encode`] skips entries that do (the wire cannot
//! carry them). Nothing local to a director (service or real-server ids) is on the wire:
//! services are named by (VIP, port, protocol), real servers by address and port.
//!
//! The receiver does not require the datagram to be ≤ [`MAX_DATAGRAM`] bytes; it requires
//! `count` entries exactly filling it.
//!
//! Closed entries go in version-2 datagrams only, open ones in version-1 datagrams: an ha-lb
//! that knows only version 1 rejects the closed ones (a counted `bad_version`) and still
//! imports every open one, rather than reading a close as one more open. Templates go in
//! version-3 datagrams of their own, for the same reason: an ha-lb that knows versions 1 and
//! 2 only rejects them (`bad_version`) and imports every connection it is sent, rather than
//! reading a template as a connection.
//!
//! Table marks. The datagrams of a whole-table send (after becoming MASTER, the answer to a
//! table request, the periodic resend) are marked in their first entry's flags byte:
//! [`FLAG_TABLE`] (bit 1) on every datagram sent while it is under way, [`FLAG_TABLE_END`]
//! (bit 2, with bit 1) on its last one, so a starting director knows when it has the whole
//! table (it holds its preemption until then: `docs/conntrack-sync.md`). A send whose end
//! has no entries to carry the mark (an empty table; its last owed entries left the table)
//! ends with a version-4 datagram: no entries, and not a table request. Older ha-lb
//! directors ignore the marks: the flags byte was reserved and ignored in versions 1 and 3,
//! and version 2 reads bit 0 only (a unit test runs marked datagrams through a frozen copy
//! of that decoder); they reject the version-4 datagram (a counted `bad_version`, nothing
//! else: a datagram of versions 1 to 3 without entries would be a table request to them).
//! The kernel's IPVS format (`super::ipvs_wire`) has no room for the marks: they are not
//! sent there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ha_lb_common::lb::{LB_KIND_DR, LB_KIND_NAT, LB_KIND_TUN};

use super::{SyncEntry, SyncItem, SyncTemplate};
use crate::config::LbKind;
use crate::dataplane::{ip_protocol, protocol_of};

/// `"HLBS"`: ha-lb sync.
pub const MAGIC: [u8; 4] = *b"HLBS";
/// The version of datagrams of open entries (and of table requests).
pub const VERSION: u8 = 1;
/// The version of datagrams whose entries have flags (closed ones).
pub const VERSION_FLAGS: u8 = 2;
/// The version of datagrams of persistence templates.
pub const VERSION_TEMPLATES: u8 = 3;
/// The version of a datagram that ends a whole-table send and has no entries (see
/// [`table_end`]).
pub const VERSION_TABLE_END: u8 = 4;
/// Entry flag (version 2): the flow is closed.
pub const FLAG_CLOSED: u8 = 1;
/// Datagram mark, in its first entry's flags byte (any version): sent while a whole-table
/// send is under way ([`mark_table`]).
pub const FLAG_TABLE: u8 = 2;
/// Datagram mark, with [`FLAG_TABLE`]: the last datagram of a whole-table send.
pub const FLAG_TABLE_END: u8 = 4;
/// Largest datagram [`encode`] produces (fits a 1500-byte MTU under IPv6 + UDP headers, and
/// leaves room for tunnels).
pub const MAX_DATAGRAM: usize = 1400;
/// Header length: magic, version, sync id, count.
pub const HEADER_LEN: usize = 8;
/// Wire `family` byte of an IPv4 entry.
pub const FAMILY_V4: u8 = 4;
/// Wire `family` byte of an IPv6 entry.
pub const FAMILY_V6: u8 = 6;
/// Encoded length of an IPv4 entry.
pub const ENTRY_LEN_V4: usize = entry_len(4);
/// Encoded length of an IPv6 entry.
pub const ENTRY_LEN_V6: usize = entry_len(16);
/// Encoded length of an IPv4 template entry.
pub const TEMPLATE_LEN_V4: usize = template_len(4);
/// Encoded length of an IPv6 template entry.
pub const TEMPLATE_LEN_V6: usize = template_len(16);

const fn entry_len(addr_len: usize) -> usize {
    4 + 3 * (addr_len + 2) + 4
}

/// A template has no client port.
const fn template_len(addr_len: usize) -> usize {
    entry_len(addr_len) - 2
}

/// Why a received datagram was rejected. `index` is the 0-based entry the error is in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncDecodeError {
    #[error("truncated: {len} bytes, the header needs {HEADER_LEN}")]
    Truncated { len: usize },
    #[error("bad magic {0:02x?} (want \"HLBS\")")]
    BadMagic([u8; 4]),
    #[error("a kernel IPVS sync message, not ha-lb's (see sync::ipvs_wire)")]
    IpvsSync,
    #[error("unknown sync version {0} (want 1 to 4)")]
    BadVersion(u8),
    #[error("an end-of-table datagram (version 4) with count {0} (want 0)")]
    TableEndWithEntries(u16),
    #[error("count {count} but the datagram ends inside entry {index}")]
    CountMismatch { count: u16, index: u16 },
    #[error("{extra} bytes after the {count} entries")]
    TrailingBytes { count: u16, extra: usize },
    #[error("entry {index}: bad address family {family} (want 4 or 6)")]
    BadFamily { index: u16, family: u8 },
    #[error("entry {index}: bad protocol {protocol} (want 6 or 17)")]
    BadProtocol { index: u16, protocol: u8 },
    #[error("entry {index}: bad lb_kind {kind} (want 0 NAT, 1 DR or 2 TUN)")]
    BadLbKind { index: u16, kind: u8 },
    #[error("entry {index}: bad prefix length {prefix} (at most 32 for IPv4, 128 for IPv6)")]
    BadPrefix { index: u16, prefix: u8 },
}

impl SyncDecodeError {
    /// Short stable name for counters and logs.
    pub const fn name(&self) -> &'static str {
        match self {
            SyncDecodeError::Truncated { .. } => "truncated",
            SyncDecodeError::BadMagic(_) => "bad_magic",
            SyncDecodeError::IpvsSync => "ipvs_sync",
            SyncDecodeError::BadVersion(_) => "bad_version",
            SyncDecodeError::TableEndWithEntries(_) => "table_end_with_entries",
            SyncDecodeError::CountMismatch { .. } => "count_mismatch",
            SyncDecodeError::TrailingBytes { .. } => "trailing_bytes",
            SyncDecodeError::BadFamily { .. } => "bad_family",
            SyncDecodeError::BadProtocol { .. } => "bad_protocol",
            SyncDecodeError::BadLbKind { .. } => "bad_lb_kind",
            SyncDecodeError::BadPrefix { .. } => "bad_prefix",
        }
    }
}

/// The encoded length of `e`, or `None` if it mixes address families.
pub fn encoded_len(e: &SyncEntry) -> Option<usize> {
    if !e.same_family() {
        return None;
    }
    Some(if e.client.is_ipv4() { ENTRY_LEN_V4 } else { ENTRY_LEN_V6 })
}

/// The encoded length of `t`, or `None` if it mixes address families or its prefix is longer
/// than its addresses.
pub fn template_encoded_len(t: &SyncTemplate) -> Option<usize> {
    let (len, bits) = if t.vip.is_ipv4() { (TEMPLATE_LEN_V4, 32) } else { (TEMPLATE_LEN_V6, 128) };
    (t.same_family() && t.prefix <= bits).then_some(len)
}

/// The encoded length of `i` (see [`encoded_len`], [`template_encoded_len`]).
pub fn item_len(i: &SyncItem) -> Option<usize> {
    match i {
        SyncItem::Conn(e) => encoded_len(e),
        SyncItem::Template(t) => template_encoded_len(t),
    }
}

const fn kind_code(k: LbKind) -> u8 {
    match k {
        LbKind::Nat => LB_KIND_NAT,
        LbKind::Dr => LB_KIND_DR,
        LbKind::Tun => LB_KIND_TUN,
    }
}

/// `a`'s address bytes (4 or 16).
pub(super) fn put_ip(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    put_ip(out, a.ip());
    out.extend_from_slice(&a.port().to_be_bytes());
}

const fn family_code(v4: bool) -> u8 {
    if v4 {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

fn header(version: u8, sync_id: u8) -> Vec<u8> {
    let mut d = Vec::with_capacity(MAX_DATAGRAM);
    d.extend_from_slice(&MAGIC);
    d.push(version);
    d.push(sync_id);
    d.extend_from_slice(&[0, 0]);
    d
}

fn finish(mut d: Vec<u8>, count: u16, out: &mut Vec<Vec<u8>>) {
    d[6..8].copy_from_slice(&count.to_be_bytes());
    out.push(d);
}

/// A request for the whole table: a datagram with no entries (which [`encode`] never
/// sends). A director that starts sends it, so the master sends everything it has at its next
/// tick rather than only what is new — before the starting director (with the higher
/// priority, say) takes the VIPs back. Directors that do not know it import nothing from it.
pub fn request(sync_id: u8) -> Vec<u8> {
    header(VERSION, sync_id)
}

/// Marks `d` (a datagram [`encode`] made) as sent while a whole-table send is under way, and
/// as its last datagram if `end`: in its first entry's flags byte (see the module's header).
/// A datagram without entries is left as it is (see [`table_end`]).
pub fn mark_table(d: &mut [u8], end: bool) {
    if entry_count(d) > 0 && d.len() > HEADER_LEN + 3 {
        d[HEADER_LEN + 3] |= FLAG_TABLE | if end { FLAG_TABLE_END } else { 0 };
    }
}

/// The end of a whole-table send that has no datagram of entries left to carry the mark (an
/// empty table; the last entries owed left the table): a version-4 datagram, no entries.
/// Directors that do not know it reject it (`bad_version`); a datagram of versions 1 to 3
/// without entries would be a table request.
pub fn table_end(sync_id: u8) -> Vec<u8> {
    header(VERSION_TABLE_END, sync_id)
}

/// Whether `d` (a datagram [`encode`] made, or [`table_end`]) ends a whole-table send.
pub fn is_table_end(d: &[u8]) -> bool {
    d.len() >= HEADER_LEN
        && d[..4] == MAGIC
        && (d[4] == VERSION_TABLE_END
            || (entry_count(d) > 0
                && d.get(HEADER_LEN + 3).is_some_and(|f| f & FLAG_TABLE_END != 0)))
}

/// Encodes `items` into as few datagrams of at most [`MAX_DATAGRAM`] bytes as their order
/// allows: open connections in version-1 datagrams, closed ones in version-2 datagrams,
/// templates in version-3 datagrams, each kind in order, each datagram filled before the next
/// of its kind is started (a datagram is output when it is full, the partly filled ones
/// last). No entries, no datagrams. Entries the wire cannot carry (mixed address families, a
/// template prefix longer than its addresses) are skipped.
pub fn encode<T: Copy + Into<SyncItem>>(sync_id: u8, items: &[T]) -> Vec<Vec<u8>> {
    encode_at_most(sync_id, items, usize::MAX).0
}

/// [`encode`], stopping before the first item that would need a datagram beyond `max`
/// (pacing: the caller owes the rest rather than encoding a whole table every tick and
/// throwing most of it away). Returns the datagrams and how many items of `items` they hold
/// or skipped: `items[used..]` were not looked at.
pub fn encode_at_most<T: Copy + Into<SyncItem>>(
    sync_id: u8,
    items: &[T],
    max: usize,
) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    // The datagram being filled: [open, closed, templates].
    let mut cur: [Option<(Vec<u8>, u16)>; 3] = [None, None, None];
    let mut used = items.len();
    for (i, &item) in items.iter().enumerate() {
        let item: SyncItem = item.into();
        let Some(len) = item_len(&item) else { continue };
        let (kind, version) = match item {
            SyncItem::Conn(e) if e.closed => (1, VERSION_FLAGS),
            SyncItem::Conn(_) => (0, VERSION),
            SyncItem::Template(_) => (2, VERSION_TEMPLATES),
        };
        let fits = cur[kind].as_ref().is_some_and(|(d, _)| d.len() + len <= MAX_DATAGRAM);
        // A full datagram is finished (still counted), and a new one started: either way
        // one datagram more than now.
        let datagrams = out.len() + cur.iter().flatten().count();
        if !fits && datagrams + 1 > max {
            used = i;
            break;
        }
        let slot = &mut cur[kind];
        if let Some((d, n)) = slot.take() {
            if d.len() + len <= MAX_DATAGRAM {
                *slot = Some((d, n));
            } else {
                finish(d, n, &mut out);
            }
        }
        let (d, n) = slot.get_or_insert_with(|| (header(version, sync_id), 0));
        match item {
            SyncItem::Conn(e) => {
                d.push(family_code(e.client.is_ipv4()));
                d.push(ip_protocol(e.protocol));
                d.push(kind_code(e.lb_kind));
                d.push(if e.closed { FLAG_CLOSED } else { 0 });
                put_addr(d, e.client);
                put_addr(d, e.vip);
                put_addr(d, e.real_server);
                d.extend_from_slice(&e.idle_secs.to_be_bytes());
            }
            SyncItem::Template(t) => {
                d.push(family_code(t.vip.is_ipv4()));
                d.push(ip_protocol(t.protocol));
                d.push(t.prefix);
                d.push(0);
                put_addr(d, t.vip);
                put_ip(d, t.client);
                put_addr(d, t.real_server);
                d.extend_from_slice(&t.idle_secs.to_be_bytes());
            }
        }
        *n += 1;
    }
    for (d, n) in cur.into_iter().flatten() {
        finish(d, n, &mut out);
    }
    (out, used)
}

/// The entry count in the header of a datagram [`encode`] made (0 for anything shorter than
/// a header): connections, or templates (see [`carries_templates`]).
pub fn entry_count(d: &[u8]) -> usize {
    if d.len() < HEADER_LEN {
        return 0;
    }
    u16::from_be_bytes([d[6], d[7]]) as usize
}

/// Whether a datagram [`encode`] made carries templates (else connections).
pub fn carries_templates(d: &[u8]) -> bool {
    d.len() >= HEADER_LEN && d[4] == VERSION_TEMPLATES
}

/// Whether `buf` is a kernel IPVS sync message (Linux `struct ip_vs_sync_mesg`, of either
/// protocol version: its size field is its length), for [`super::ipvs_wire`] to read:
/// keepalived + IPVS directors on the same group and port.
pub fn is_ipvs_sync(buf: &[u8]) -> bool {
    buf.get(..4) != Some(&MAGIC[..]) && super::ipvs_wire::looks_ipvs(buf)
}

/// The IPv6 (`v6`) or IPv4 address at `b[i..]` (which must hold it).
pub(super) fn ip_at(b: &[u8], i: usize, v6: bool) -> IpAddr {
    if v6 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[i..i + 16]);
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]))
    }
}

fn get_addr(b: &[u8], v6: bool) -> SocketAddr {
    let rest = &b[if v6 { 16 } else { 4 }..];
    SocketAddr::new(ip_at(b, 0, v6), u16::from_be_bytes([rest[0], rest[1]]))
}

/// A decoded datagram: its sync id and what it carries (a table request carries nothing; a
/// datagram carries connections or templates, not both), and its table marks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Datagram {
    pub sync_id: u8,
    pub entries: Vec<SyncEntry>,
    pub templates: Vec<SyncTemplate>,
    /// Sent while a whole-table send was under way ([`FLAG_TABLE`]).
    pub table: bool,
    /// The last datagram of a whole-table send ([`FLAG_TABLE_END`], or version 4).
    pub table_end: bool,
}

impl Datagram {
    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.templates.is_empty()
    }

    /// No entries and not the end of a whole-table send: a table request.
    pub fn is_request(&self) -> bool {
        self.is_empty() && !self.table_end
    }

    /// Connections and templates.
    pub fn len(&self) -> usize {
        self.entries.len() + self.templates.len()
    }

    /// Everything it carries, connections first.
    pub fn items(&self) -> impl Iterator<Item = SyncItem> + '_ {
        let entries = self.entries.iter().map(|&e| SyncItem::Conn(e));
        entries.chain(self.templates.iter().map(|&t| SyncItem::Template(t)))
    }
}

/// Decodes one datagram.
pub fn decode(buf: &[u8]) -> Result<Datagram, SyncDecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(SyncDecodeError::Truncated { len: buf.len() });
    }
    let magic = [buf[0], buf[1], buf[2], buf[3]];
    if magic != MAGIC {
        if is_ipvs_sync(buf) {
            return Err(SyncDecodeError::IpvsSync);
        }
        return Err(SyncDecodeError::BadMagic(magic));
    }
    let version = buf[4];
    if !matches!(version, VERSION | VERSION_FLAGS | VERSION_TEMPLATES | VERSION_TABLE_END) {
        return Err(SyncDecodeError::BadVersion(version));
    }
    let templates = version == VERSION_TEMPLATES;
    let flags = version == VERSION_FLAGS;
    let sync_id = buf[5];
    let count = u16::from_be_bytes([buf[6], buf[7]]);
    let mut rest = &buf[HEADER_LEN..];
    if version == VERSION_TABLE_END {
        if count != 0 {
            return Err(SyncDecodeError::TableEndWithEntries(count));
        }
        if !rest.is_empty() {
            return Err(SyncDecodeError::TrailingBytes { count, extra: rest.len() });
        }
        return Ok(Datagram { sync_id, table: true, table_end: true, ..Datagram::default() });
    }
    // Each entry takes at least TEMPLATE_LEN_V4 bytes: never reserve more than the buffer
    // holds.
    let cap = (count as usize).min(rest.len() / TEMPLATE_LEN_V4);
    let mut d = Datagram { sync_id, ..Datagram::default() };
    if templates {
        d.templates.reserve(cap);
    } else {
        d.entries.reserve(cap);
    }
    for index in 0..count {
        let Some(&family) = rest.first() else {
            return Err(SyncDecodeError::CountMismatch { count, index });
        };
        let (v6, len) = match (family, templates) {
            (FAMILY_V4, false) => (false, ENTRY_LEN_V4),
            (FAMILY_V6, false) => (true, ENTRY_LEN_V6),
            (FAMILY_V4, true) => (false, TEMPLATE_LEN_V4),
            (FAMILY_V6, true) => (true, TEMPLATE_LEN_V6),
            _ => return Err(SyncDecodeError::BadFamily { index, family }),
        };
        if rest.len() < len {
            return Err(SyncDecodeError::CountMismatch { count, index });
        }
        let (e, tail) = rest.split_at(len);
        rest = tail;
        if index == 0 {
            // The datagram's table marks, in any version.
            d.table = e[3] & (FLAG_TABLE | FLAG_TABLE_END) != 0;
            d.table_end = e[3] & FLAG_TABLE_END != 0;
        }
        let Some(protocol) = protocol_of(e[1]) else {
            return Err(SyncDecodeError::BadProtocol { index, protocol: e[1] });
        };
        let ip = if v6 { 16 } else { 4 };
        let a = ip + 2;
        let idle = |i: usize| u32::from_be_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        if templates {
            let prefix = e[2];
            if usize::from(prefix) > 8 * ip {
                return Err(SyncDecodeError::BadPrefix { index, prefix });
            }
            d.templates.push(SyncTemplate {
                protocol,
                vip: get_addr(&e[4..], v6),
                client: ip_at(e, 4 + a, v6),
                prefix,
                real_server: get_addr(&e[4 + a + ip..], v6),
                idle_secs: idle(4 + 2 * a + ip),
            });
            continue;
        }
        let lb_kind = match e[2] {
            LB_KIND_NAT => LbKind::Nat,
            LB_KIND_DR => LbKind::Dr,
            LB_KIND_TUN => LbKind::Tun,
            kind => return Err(SyncDecodeError::BadLbKind { index, kind }),
        };
        let client = get_addr(&e[4..], v6);
        let vip = get_addr(&e[4 + a..], v6);
        let real_server = get_addr(&e[4 + 2 * a..], v6);
        let idle_secs = idle(4 + 3 * a);
        let closed = flags && e[3] & FLAG_CLOSED != 0;
        d.entries.push(SyncEntry {
            protocol,
            lb_kind,
            client,
            vip,
            real_server,
            idle_secs,
            closed,
        });
    }
    if !rest.is_empty() {
        return Err(SyncDecodeError::TrailingBytes { count, extra: rest.len() });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v4_entry() -> SyncEntry {
        SyncEntry {
            protocol: Protocol::Tcp,
            lb_kind: LbKind::Nat,
            client: sa("198.51.100.7:40000"),
            vip: sa("192.0.2.10:80"),
            real_server: sa("10.0.0.2:8080"),
            idle_secs: 3,
            closed: false,
        }
    }

    fn v6_entry() -> SyncEntry {
        SyncEntry {
            protocol: Protocol::Udp,
            lb_kind: LbKind::Dr,
            client: sa("[2001:db8::7]:5353"),
            vip: sa("[2001:db8:1::10]:53"),
            real_server: sa("[2001:db8:2::2]:53"),
            idle_secs: 70_000,
            closed: false,
        }
    }

    /// A datagram of one IPv4 and one IPv6 entry (sync id 51).
    fn sample() -> Vec<u8> {
        let d = encode(51, &[v4_entry(), v6_entry()]);
        assert_eq!(d.len(), 1);
        d.into_iter().next().unwrap()
    }

    #[test]
    fn hand_checked_v4_vector() {
        let d = encode(51, &[v4_entry()]);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            b'H', b'L', b'B', b'S', 1, 51, 0, 1,
            4, 6, 0, 0,
            198, 51, 100, 7, 0x9c, 0x40,
            192, 0, 2, 10, 0, 80,
            10, 0, 0, 2, 0x1f, 0x90,
            0, 0, 0, 3,
        ];
        assert_eq!(d, vec![want]);
        assert_eq!(ENTRY_LEN_V4, 26);
        assert_eq!(ENTRY_LEN_V6, 62);
    }

    /// Found by review: a flow the master closed stayed open on the backup for the TCP
    /// timeout. A closed entry travels with its flag, in a version-2 datagram, so an ha-lb
    /// that knows only version 1 rejects it rather than reading it as open.
    #[test]
    fn closed_entries_go_in_version_2_datagrams() {
        let closed = SyncEntry { closed: true, ..v4_entry() };
        let d = encode(51, &[closed]);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            b'H', b'L', b'B', b'S', 2, 51, 0, 1,
            4, 6, 0, 1,
            198, 51, 100, 7, 0x9c, 0x40,
            192, 0, 2, 10, 0, 80,
            10, 0, 0, 2, 0x1f, 0x90,
            0, 0, 0, 3,
        ];
        assert_eq!(d, vec![want]);
        assert_eq!(decode(&d[0]).unwrap().entries, vec![closed]);
        // Mixed: one datagram of each version, open ones in version 1.
        let ds = encode(51, &[v4_entry(), closed, v6_entry()]);
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[0][4], VERSION);
        assert_eq!(decode(&ds[0]).unwrap().entries, vec![v4_entry(), v6_entry()]);
        assert_eq!(ds[1][4], VERSION_FLAGS);
        assert_eq!(decode(&ds[1]).unwrap().entries, vec![closed]);
        // Unknown flag bits are ignored; in version 1 the byte says nothing.
        let mut d = d[0].clone();
        d[HEADER_LEN + 3] = 0xfe;
        assert_eq!(decode(&d).unwrap().entries, vec![v4_entry()]);
        d[4] = VERSION;
        d[HEADER_LEN + 3] = FLAG_CLOSED;
        assert_eq!(decode(&d).unwrap().entries, vec![v4_entry()]);
    }

    #[test]
    fn round_trip_v4_and_v6() {
        let Datagram { sync_id: id, entries, templates, .. } = decode(&sample()).unwrap();
        assert!(templates.is_empty());
        assert_eq!(id, 51);
        assert_eq!(entries, vec![v4_entry(), v6_entry()]);
    }

    #[test]
    fn empty_input_no_datagram_but_empty_datagram_decodes() {
        assert!(encode(1, &[] as &[SyncItem]).is_empty());
        assert_eq!(
            decode(b"HLBS\x01\x07\x00\x00"),
            Ok(Datagram { sync_id: 7, ..Datagram::default() })
        );
    }

    #[test]
    fn many_entries_span_datagrams() {
        let per_v4 = (MAX_DATAGRAM - HEADER_LEN) / ENTRY_LEN_V4;
        let per_v6 = (MAX_DATAGRAM - HEADER_LEN) / ENTRY_LEN_V6;
        for (e, per) in [(v4_entry(), per_v4), (v6_entry(), per_v6)] {
            let entries: Vec<SyncEntry> =
                (0..500u32).map(|i| SyncEntry { idle_secs: i, ..e }).collect();
            let ds = encode(9, &entries);
            assert_eq!(ds.len(), 500usize.div_ceil(per));
            let mut back = Vec::new();
            for d in &ds {
                assert!(d.len() <= MAX_DATAGRAM);
                let Datagram { sync_id: id, entries: es, .. } = decode(d).unwrap();
                assert_eq!(id, 9);
                back.extend(es);
            }
            assert_eq!(back, entries);
        }
    }

    /// Found by review: an item that needed a datagram of a kind not open yet stopped the
    /// encoding one datagram short of the bound (one open connection, bound 1: nothing).
    #[test]
    fn encode_at_most_fills_the_bound() {
        let closed = SyncEntry { closed: true, ..v4_entry() };
        assert_eq!(encode_at_most(1, &[v4_entry()], 1), (encode(1, &[v4_entry()]), 1));
        assert_eq!(encode_at_most(1, &[v4_entry()], 0), (vec![], 0));
        let (ds, used) = encode_at_most(1, &[v4_entry(), closed, v6_entry()], 2);
        assert_eq!((ds.len(), used), (2, 3));
        let (ds, used) = encode_at_most(1, &[v4_entry(), closed, v6_entry()], 1);
        assert_eq!((ds.len(), used), (1, 1));
    }

    #[test]
    fn mixed_family_entries_are_skipped() {
        let mixed = SyncEntry { real_server: sa("[2001:db8::2]:80"), ..v4_entry() };
        assert!(!mixed.same_family());
        assert!(encode(1, &[mixed]).is_empty());
        let ds = encode(1, &[mixed, v4_entry(), mixed]);
        assert_eq!(ds.len(), 1);
        assert_eq!(decode(&ds[0]).unwrap().entries, vec![v4_entry()]);
    }

    #[test]
    fn a_request_is_a_datagram_without_entries() {
        let r = request(7);
        assert_eq!(r.len(), HEADER_LEN);
        let d = decode(&r).unwrap();
        assert_eq!((d.sync_id, d.is_empty()), (7, true));
        assert!(encode(7, &[] as &[SyncItem]).is_empty(), "encode never sends one");
    }

    /// Kernel IPVS directors (keepalived's own lvs_sync_daemon) use the same group and port:
    /// their messages are told apart (by the size field), for `sync::ipvs_wire` to read.
    #[test]
    fn kernel_ipvs_sync_datagrams_are_recognised() {
        // Header (reserved 0, sync id 51, size 32, 1 connection, version 1, spare) and one
        // 24-byte IPv4 connection.
        let mut d = vec![0, 51, 0, 32, 1, 1, 0, 0];
        d.extend_from_slice(&[0u8; 24]);
        assert_eq!(decode(&d), Err(SyncDecodeError::IpvsSync));
        let mut wrong_size = d.clone();
        wrong_size.push(0);
        assert!(matches!(decode(&wrong_size), Err(SyncDecodeError::BadMagic(_))));
        // Version 0 too (told apart by sync::ipvs_wire).
        let mut v0 = d.clone();
        v0[5] = 0;
        assert_eq!(decode(&v0), Err(SyncDecodeError::IpvsSync));
        assert!(!is_ipvs_sync(&sample()));
        assert!(!is_ipvs_sync(&request(1)));
    }

    #[test]
    fn header_field_errors() {
        let good = sample();
        for i in 0..4 {
            let mut d = good.clone();
            d[i] ^= 0x20;
            let mut m = MAGIC;
            m[i] ^= 0x20;
            assert_eq!(decode(&d), Err(SyncDecodeError::BadMagic(m)), "magic byte {i}");
        }
        for v in [0u8, 5, 255] {
            let mut d = good.clone();
            d[4] = v;
            assert_eq!(decode(&d), Err(SyncDecodeError::BadVersion(v)));
        }
        let mut d = good.clone();
        d[4] = VERSION_TABLE_END;
        assert_eq!(decode(&d), Err(SyncDecodeError::TableEndWithEntries(2)));
        // The sync id is opaque to the codec.
        let mut d = good.clone();
        d[5] = 200;
        assert_eq!(decode(&d).unwrap().sync_id, 200);
        // Count too high: the datagram ends where entry 2 would start.
        let mut d = good.clone();
        d[7] = 3;
        assert_eq!(decode(&d), Err(SyncDecodeError::CountMismatch { count: 3, index: 2 }));
        let mut d = good.clone();
        d[6] = 1;
        assert_eq!(decode(&d), Err(SyncDecodeError::CountMismatch { count: 258, index: 2 }));
        // Count too low: the second entry is left over.
        let mut d = good.clone();
        d[7] = 1;
        assert_eq!(
            decode(&d),
            Err(SyncDecodeError::TrailingBytes { count: 1, extra: ENTRY_LEN_V6 })
        );
        let mut d = good.clone();
        d.push(0);
        assert_eq!(decode(&d), Err(SyncDecodeError::TrailingBytes { count: 2, extra: 1 }));
    }

    #[test]
    fn entry_field_errors() {
        let good = sample();
        let second = HEADER_LEN + ENTRY_LEN_V4;
        for (at, index) in [(HEADER_LEN, 0u16), (second, 1)] {
            for family in [0u8, 5, 41, 255] {
                let mut d = good.clone();
                d[at] = family;
                assert_eq!(decode(&d), Err(SyncDecodeError::BadFamily { index, family }));
            }
            for protocol in [0u8, 1, 58, 132] {
                let mut d = good.clone();
                d[at + 1] = protocol;
                assert_eq!(decode(&d), Err(SyncDecodeError::BadProtocol { index, protocol }));
            }
            for kind in [3u8, 4, 255] {
                let mut d = good.clone();
                d[at + 2] = kind;
                assert_eq!(decode(&d), Err(SyncDecodeError::BadLbKind { index, kind }));
            }
            // The flags byte of version 1 says nothing about the entries (the first entry's
            // bits 1 and 2 are the datagram's table marks).
            let mut d = good.clone();
            d[at + 3] = 0xff;
            let (got, want) = (decode(&d).unwrap(), decode(&good).unwrap());
            assert_eq!(got.entries, want.entries);
            assert_eq!((got.table, got.table_end), (index == 0, index == 0));
        }
        // An IPv4 entry relabelled IPv6 claims more bytes than are there.
        let mut d = encode(1, &[v4_entry()]).remove(0);
        d[HEADER_LEN] = FAMILY_V6;
        assert_eq!(decode(&d), Err(SyncDecodeError::CountMismatch { count: 1, index: 0 }));
        // An IPv6 entry relabelled IPv4 leaves bytes over.
        let mut d = encode(1, &[v6_entry()]).remove(0);
        d[HEADER_LEN] = FAMILY_V4;
        assert_eq!(
            decode(&d),
            Err(SyncDecodeError::TrailingBytes { count: 1, extra: ENTRY_LEN_V6 - ENTRY_LEN_V4 })
        );
    }

    #[test]
    fn error_names_are_distinct() {
        let all = [
            SyncDecodeError::Truncated { len: 0 },
            SyncDecodeError::BadMagic([0; 4]),
            SyncDecodeError::IpvsSync,
            SyncDecodeError::BadVersion(0),
            SyncDecodeError::TableEndWithEntries(1),
            SyncDecodeError::CountMismatch { count: 0, index: 0 },
            SyncDecodeError::TrailingBytes { count: 0, extra: 0 },
            SyncDecodeError::BadFamily { index: 0, family: 0 },
            SyncDecodeError::BadProtocol { index: 0, protocol: 0 },
            SyncDecodeError::BadLbKind { index: 0, kind: 0 },
            SyncDecodeError::BadPrefix { index: 0, prefix: 0 },
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|e| e.name()).collect();
        assert_eq!(names.len(), all.len());
    }

    fn v4_template() -> SyncTemplate {
        SyncTemplate {
            protocol: Protocol::Tcp,
            vip: sa("192.0.2.10:80"),
            client: "198.51.100.0".parse().unwrap(),
            prefix: 24,
            real_server: sa("10.0.0.2:8080"),
            idle_secs: 7,
        }
    }

    fn v6_template() -> SyncTemplate {
        SyncTemplate {
            protocol: Protocol::Udp,
            vip: sa("[2001:db8:1::10]:53"),
            client: "2001:db8::7".parse().unwrap(),
            prefix: 0,
            real_server: sa("[2001:db8:2::2]:53"),
            idle_secs: 70_000,
        }
    }

    #[test]
    fn hand_checked_template_vector() {
        let d = encode(51, &[v4_template()]);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            b'H', b'L', b'B', b'S', 3, 51, 0, 1,
            4, 6, 24, 0,
            192, 0, 2, 10, 0, 80,
            198, 51, 100, 0,
            10, 0, 0, 2, 0x1f, 0x90,
            0, 0, 0, 7,
        ];
        assert_eq!(d, vec![want]);
        assert_eq!(TEMPLATE_LEN_V4, 24);
        assert_eq!(TEMPLATE_LEN_V6, 60);
        assert!(carries_templates(&d[0]));
        let back = decode(&d[0]).unwrap();
        assert_eq!(back.templates, vec![v4_template()]);
        assert!(back.entries.is_empty());
        // The reserved flags byte is ignored.
        let mut d = d[0].clone();
        d[HEADER_LEN + 3] = 0xff;
        assert_eq!(decode(&d).unwrap().templates, vec![v4_template()]);
    }

    /// Templates never share a datagram with connections: one datagram per kind, in order.
    #[test]
    fn templates_go_in_version_3_datagrams_of_their_own() {
        let closed = SyncEntry { closed: true, ..v4_entry() };
        let items: Vec<SyncItem> = vec![
            v4_entry().into(),
            v4_template().into(),
            closed.into(),
            v6_template().into(),
            v6_entry().into(),
        ];
        let ds = encode(9, &items);
        assert_eq!(ds.len(), 3);
        let by_version = |v: u8| ds.iter().find(|d| d[4] == v).map(|d| decode(d).unwrap());
        let v1 = by_version(VERSION).unwrap();
        assert_eq!(v1.entries, vec![v4_entry(), v6_entry()]);
        assert!(v1.templates.is_empty());
        assert_eq!(by_version(VERSION_FLAGS).unwrap().entries, vec![closed]);
        let v3 = by_version(VERSION_TEMPLATES).unwrap();
        assert_eq!(v3.templates, vec![v4_template(), v6_template()]);
        assert!(v3.entries.is_empty());
        assert_eq!(v3.items().collect::<Vec<_>>(), vec![items[1], items[3]]);
        assert!(ds.iter().filter(|d| carries_templates(d)).count() == 1);
    }

    #[test]
    fn templates_the_wire_cannot_carry_are_skipped() {
        let mixed = SyncTemplate { real_server: sa("[2001:db8::2]:80"), ..v4_template() };
        let long = SyncTemplate { prefix: 33, ..v4_template() };
        let long6 = SyncTemplate { prefix: 129, ..v6_template() };
        assert!(encode(1, &[mixed, long, long6]).is_empty());
        let full6 = SyncTemplate { prefix: 128, ..v6_template() };
        assert_eq!(decode(&encode(1, &[full6])[0]).unwrap().templates, vec![full6]);
    }

    #[test]
    fn template_field_errors() {
        let good = encode(1, &[v4_template(), v6_template()]).remove(0);
        let second = HEADER_LEN + TEMPLATE_LEN_V4;
        for (at, index, bits) in [(HEADER_LEN, 0u16, 32u8), (second, 1, 128)] {
            for family in [0u8, 5, 255] {
                let mut d = good.clone();
                d[at] = family;
                assert_eq!(decode(&d), Err(SyncDecodeError::BadFamily { index, family }));
            }
            for protocol in [0u8, 1, 58] {
                let mut d = good.clone();
                d[at + 1] = protocol;
                assert_eq!(decode(&d), Err(SyncDecodeError::BadProtocol { index, protocol }));
            }
            let mut d = good.clone();
            d[at + 2] = bits;
            assert!(decode(&d).is_ok());
            for prefix in [bits + 1, 255] {
                d[at + 2] = prefix;
                assert_eq!(decode(&d), Err(SyncDecodeError::BadPrefix { index, prefix }));
            }
        }
        // A template datagram relabelled as connections (and back) does not parse as one.
        let mut d = good.clone();
        d[4] = VERSION;
        assert!(decode(&d).is_err());
        let mut d = encode(1, &[v4_entry()]).remove(0);
        d[4] = VERSION_TEMPLATES;
        assert_eq!(
            decode(&d),
            Err(SyncDecodeError::TrailingBytes { count: 1, extra: ENTRY_LEN_V4 - TEMPLATE_LEN_V4 })
        );
    }

    /// The decoder of ha-lb before templates (versions 1 and 2), frozen here as it was
    /// released, to show what an older director on the sync link does with our datagrams.
    fn decode_before_templates(buf: &[u8]) -> Result<(u8, Vec<SyncEntry>), SyncDecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(SyncDecodeError::Truncated { len: buf.len() });
        }
        let magic = [buf[0], buf[1], buf[2], buf[3]];
        if magic != MAGIC {
            return Err(SyncDecodeError::BadMagic(magic));
        }
        let flags = match buf[4] {
            1 => false,
            2 => true,
            v => return Err(SyncDecodeError::BadVersion(v)),
        };
        let count = u16::from_be_bytes([buf[6], buf[7]]);
        let mut rest = &buf[HEADER_LEN..];
        let mut entries = Vec::new();
        for index in 0..count {
            let Some(&family) = rest.first() else {
                return Err(SyncDecodeError::CountMismatch { count, index });
            };
            let (v6, len) = match family {
                4 => (false, 26),
                6 => (true, 62),
                _ => return Err(SyncDecodeError::BadFamily { index, family }),
            };
            if rest.len() < len {
                return Err(SyncDecodeError::CountMismatch { count, index });
            }
            let (e, tail) = rest.split_at(len);
            rest = tail;
            let protocol = match e[1] {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                protocol => return Err(SyncDecodeError::BadProtocol { index, protocol }),
            };
            let lb_kind = match e[2] {
                0 => LbKind::Nat,
                1 => LbKind::Dr,
                2 => LbKind::Tun,
                kind => return Err(SyncDecodeError::BadLbKind { index, kind }),
            };
            let a = if v6 { 18 } else { 6 };
            let i = 4 + 3 * a;
            entries.push(SyncEntry {
                protocol,
                lb_kind,
                client: get_addr(&e[4..], v6),
                vip: get_addr(&e[4 + a..], v6),
                real_server: get_addr(&e[4 + 2 * a..], v6),
                idle_secs: u32::from_be_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]),
                closed: flags && e[3] & FLAG_CLOSED != 0,
            });
        }
        if !rest.is_empty() {
            return Err(SyncDecodeError::TrailingBytes { count, extra: rest.len() });
        }
        Ok((buf[5], entries))
    }

    /// An ha-lb that knows only versions 1 and 2 rejects every template datagram (a counted
    /// `bad_version`, nothing imported) and still takes every connection of the same export,
    /// exactly as this one does.
    #[test]
    fn a_director_without_templates_rejects_them_and_keeps_the_connections() {
        let closed = SyncEntry { closed: true, ..v6_entry() };
        let mut items: Vec<SyncItem> = Vec::new();
        for i in 0..120u32 {
            items.push(SyncEntry { idle_secs: i, ..v4_entry() }.into());
            items.push(SyncTemplate { idle_secs: i, ..v4_template() }.into());
            items.push(SyncTemplate { idle_secs: i, ..v6_template() }.into());
        }
        items.push(closed.into());
        let ds = encode(3, &items);
        let mut old_entries = Vec::new();
        let mut new_entries = Vec::new();
        let mut rejected = 0;
        for d in &ds {
            match decode_before_templates(d) {
                Ok((id, es)) => {
                    assert_eq!(id, 3);
                    old_entries.extend(es);
                }
                Err(e) => {
                    assert_eq!(e, SyncDecodeError::BadVersion(VERSION_TEMPLATES));
                    assert!(carries_templates(d));
                    rejected += 1;
                }
            }
            new_entries.extend(decode(d).unwrap().entries);
        }
        assert!(rejected >= 2, "{rejected} template datagrams");
        assert_eq!(old_entries.len(), 121);
        assert_eq!(old_entries, new_entries);
        // And our own connection datagrams are byte for byte what it reads.
        assert_eq!(
            decode_before_templates(&sample()).unwrap().1,
            decode(&sample()).unwrap().entries
        );
    }

    /// The last datagram of a whole-table send is marked (a starting backup holds its
    /// preemption until it has it); the marks change no entry, for this decoder and for an
    /// older one, which ignores them.
    #[test]
    fn table_marks_are_read_and_older_decoders_ignore_them() {
        let closed = SyncEntry { closed: true, ..v4_entry() };
        let plain = encode(51, &[v4_entry()]).remove(0);
        let mut d = plain.clone();
        mark_table(&mut d, false);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            b'H', b'L', b'B', b'S', 1, 51, 0, 1,
            4, 6, 0, FLAG_TABLE,
            198, 51, 100, 7, 0x9c, 0x40,
            192, 0, 2, 10, 0, 80,
            10, 0, 0, 2, 0x1f, 0x90,
            0, 0, 0, 3,
        ];
        assert_eq!(d, want);
        let got = decode(&d).unwrap();
        assert_eq!((got.table, got.table_end), (true, false));
        assert!(!is_table_end(&d));
        mark_table(&mut d, true);
        assert_eq!(d[HEADER_LEN + 3], FLAG_TABLE | FLAG_TABLE_END);
        assert!(is_table_end(&d));
        let got = decode(&d).unwrap();
        assert_eq!((got.table, got.table_end), (true, true));
        assert_eq!(got.entries, vec![v4_entry()]);
        assert!(!got.is_request());
        let unmarked = decode(&plain).unwrap();
        assert_eq!((unmarked.table, unmarked.table_end), (false, false));
        assert!(!is_table_end(&plain));

        // Every kind of datagram, each entry in it the same marked or not; the marks are the
        // first entry's (another entry's bits say nothing).
        let mut items: Vec<SyncItem> = Vec::new();
        for i in 0..60u32 {
            items.push(SyncEntry { idle_secs: i, ..v4_entry() }.into());
            items.push(SyncEntry { idle_secs: i, ..closed }.into());
            items.push(SyncTemplate { idle_secs: i, ..v6_template() }.into());
        }
        let ds = encode(3, &items);
        assert!(ds.len() >= 4);
        for d in &ds {
            for end in [false, true] {
                let mut m = d.clone();
                mark_table(&mut m, end);
                let (a, b) = (decode(d).unwrap(), decode(&m).unwrap());
                assert_eq!(b.items().collect::<Vec<_>>(), a.items().collect::<Vec<_>>());
                assert_eq!((b.table, b.table_end), (true, end));
                if !carries_templates(d) {
                    assert_eq!(decode_before_templates(&m), decode_before_templates(d));
                }
            }
            assert!(entry_count(d) > 1);
            let mut second = d.clone();
            let at = HEADER_LEN + item_len(&decode(d).unwrap().items().next().unwrap()).unwrap();
            second[at + 3] |= FLAG_TABLE | FLAG_TABLE_END;
            let b = decode(&second).unwrap();
            assert_eq!((b.table, b.table_end), (false, false));
            assert_eq!(
                b.items().collect::<Vec<_>>(),
                decode(d).unwrap().items().collect::<Vec<_>>()
            );
        }
        // A closed entry stays closed under the marks, for the older decoder too.
        let mut c = encode(3, &[closed]).remove(0);
        mark_table(&mut c, true);
        assert_eq!(decode_before_templates(&c).unwrap().1, vec![closed]);
    }

    /// A whole-table send with no entries to carry its end (an empty table) ends with a
    /// version-4 datagram: no entries, and no table request (as an empty datagram of versions
    /// 1 to 3 is, to this director and older ones); an older director rejects it.
    #[test]
    fn an_end_without_entries_is_no_table_request() {
        let d = table_end(7);
        assert_eq!(d, b"HLBS\x04\x07\x00\x00");
        let got = decode(&d).unwrap();
        assert_eq!(
            got,
            Datagram { sync_id: 7, table: true, table_end: true, ..Datagram::default() }
        );
        assert!(got.is_empty() && !got.is_request());
        assert!(is_table_end(&d));
        assert_eq!(decode_before_templates(&d), Err(SyncDecodeError::BadVersion(4)));
        let req = decode(&request(7)).unwrap();
        assert!(req.is_request() && !req.table && !req.table_end);
        assert!(!is_table_end(&request(7)));
        // Marking an empty datagram changes nothing.
        let mut r = request(7);
        mark_table(&mut r, true);
        assert_eq!(r, request(7));
        // Malformed: entries, or bytes after the header.
        let mut bad = d.clone();
        bad[7] = 1;
        assert_eq!(decode(&bad), Err(SyncDecodeError::TableEndWithEntries(1)));
        bad.extend_from_slice(&encode(7, &[v4_entry()])[0][HEADER_LEN..]);
        assert_eq!(decode(&bad), Err(SyncDecodeError::TableEndWithEntries(1)));
        let mut bad = d.clone();
        bad.push(0);
        assert_eq!(decode(&bad), Err(SyncDecodeError::TrailingBytes { count: 0, extra: 1 }));
        for len in 0..d.len() {
            assert_eq!(decode(&d[..len]), Err(SyncDecodeError::Truncated { len }));
        }
    }

    fn arb_entry() -> impl Strategy<Value = SyncEntry> {
        let ips = prop_oneof![
            any::<[u32; 3]>().prop_map(|a| a.map(|x| IpAddr::V4(Ipv4Addr::from(x)))),
            any::<[u128; 3]>().prop_map(|a| a.map(|x| IpAddr::V6(Ipv6Addr::from(x)))),
        ];
        (
            ips,
            any::<[u16; 3]>(),
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
            prop_oneof![Just(LbKind::Nat), Just(LbKind::Dr), Just(LbKind::Tun)],
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(|(ip, port, protocol, lb_kind, idle_secs, closed)| SyncEntry {
                protocol,
                lb_kind,
                client: SocketAddr::new(ip[0], port[0]),
                vip: SocketAddr::new(ip[1], port[1]),
                real_server: SocketAddr::new(ip[2], port[2]),
                idle_secs,
                closed,
            })
    }

    fn arb_template() -> impl Strategy<Value = SyncTemplate> {
        let ips = prop_oneof![
            (any::<[u32; 3]>(), 0u8..=32)
                .prop_map(|(a, p)| (a.map(|x| IpAddr::V4(Ipv4Addr::from(x))), p)),
            (any::<[u128; 3]>(), 0u8..=128)
                .prop_map(|(a, p)| (a.map(|x| IpAddr::V6(Ipv6Addr::from(x))), p)),
        ];
        (
            ips,
            any::<[u16; 2]>(),
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
            any::<u32>(),
        )
            .prop_map(|((ip, prefix), port, protocol, idle_secs)| SyncTemplate {
                protocol,
                vip: SocketAddr::new(ip[0], port[0]),
                client: ip[1],
                prefix,
                real_server: SocketAddr::new(ip[2], port[1]),
                idle_secs,
            })
    }

    fn arb_item() -> impl Strategy<Value = SyncItem> {
        prop_oneof![
            arb_entry().prop_map(SyncItem::Conn),
            arb_template().prop_map(SyncItem::Template)
        ]
    }

    /// The datagram kind of an item: 0 open, 1 closed, 2 template.
    fn kind_of(i: &SyncItem) -> u8 {
        match i {
            SyncItem::Conn(e) => u8::from(e.closed),
            SyncItem::Template(_) => 2,
        }
    }

    proptest! {
        /// Any mix of connections and templates comes back, each kind in order in datagrams
        /// of its own version (1 open, 2 closed, 3 templates), at most MAX_DATAGRAM bytes,
        /// each filled until the next entry of its kind would not fit.
        #[test]
        fn round_trip_with_templates(id in any::<u8>(), items in proptest::collection::vec(arb_item(), 0..150)) {
            let ds = encode(id, &items);
            for (kind, version) in [(0u8, VERSION), (1, VERSION_FLAGS), (2, VERSION_TEMPLATES)] {
                let mine: Vec<&Vec<u8>> = ds.iter().filter(|d| d[4] == version).collect();
                let mut back = Vec::new();
                for (i, d) in mine.iter().enumerate() {
                    prop_assert!(d.len() <= MAX_DATAGRAM);
                    let got = decode(d).unwrap();
                    prop_assert_eq!(got.sync_id, id);
                    prop_assert_eq!(got.len(), entry_count(d));
                    prop_assert!(!got.is_empty());
                    prop_assert_eq!(carries_templates(d), kind == 2);
                    if let Some(next) = mine.get(i + 1) {
                        let first_next = decode(next).unwrap().items().next().unwrap();
                        prop_assert!(d.len() + item_len(&first_next).unwrap() > MAX_DATAGRAM);
                    }
                    back.extend(got.items());
                }
                let want: Vec<SyncItem> = items.iter().filter(|i| kind_of(i) == kind).copied().collect();
                prop_assert_eq!(back, want);
            }
        }

        /// Bounded encoding holds exactly the items before `used`, as the unbounded one would
        /// encode them, in at most `max` datagrams; it stops only where the next item would
        /// need one more.
        #[test]
        fn encode_at_most_stops_at_the_bound(id in any::<u8>(), items in proptest::collection::vec(arb_item(), 0..150), max in 0usize..6) {
            let (ds, used) = encode_at_most(id, &items, max);
            prop_assert!(ds.len() <= max, "{} > {max}", ds.len());
            let mut sorted = ds.clone();
            sorted.sort();
            let mut want = encode(id, &items[..used]);
            want.sort();
            prop_assert_eq!(sorted, want);
            if used < items.len() {
                let more = encode(id, &items[..=used]);
                prop_assert!(more.len() > max, "stopped early: {} of {} in {} datagrams", used, items.len(), ds.len());
            }
        }

        /// Any mix of IPv4 and IPv6, open and closed entries comes back, open ones in order
        /// in version-1 datagrams and closed ones in order in version-2 datagrams, split into
        /// datagrams of at most MAX_DATAGRAM bytes, each filled until the next entry of its
        /// kind would not fit.
        #[test]
        fn round_trip(id in any::<u8>(), entries in proptest::collection::vec(arb_entry(), 0..150)) {
            let ds = encode(id, &entries);
            for closed in [false, true] {
                let mine: Vec<&Vec<u8>> = ds.iter().filter(|d| (d[4] == VERSION_FLAGS) == closed).collect();
                let mut back = Vec::new();
                for (i, d) in mine.iter().enumerate() {
                    prop_assert!(d.len() <= MAX_DATAGRAM);
                    let Datagram { sync_id: got_id, entries: es, .. } = decode(d).unwrap();
                    prop_assert_eq!(got_id, id);
                    prop_assert!(!es.is_empty());
                    if let Some(next) = mine.get(i + 1) {
                        let first_next = decode(next).unwrap().entries[0];
                        prop_assert!(d.len() + encoded_len(&first_next).unwrap() > MAX_DATAGRAM);
                    }
                    back.extend(es);
                }
                let want: Vec<SyncEntry> = entries.iter().filter(|e| e.closed == closed).copied().collect();
                prop_assert_eq!(back, want);
            }
        }

        /// Every strict prefix of a valid datagram is rejected: a short header as `Truncated`,
        /// anything longer as `CountMismatch` (count entries do not fit).
        #[test]
        fn every_truncation_is_an_error(id in any::<u8>(), entries in proptest::collection::vec(arb_item(), 0..30)) {
            let ds = encode(id, &entries);
            let ds = if ds.is_empty() { vec![header(VERSION, id)] } else { ds };
            for d in &ds {
                for len in 0..d.len() {
                    match decode(&d[..len]) {
                        Err(SyncDecodeError::Truncated { len: l }) => prop_assert!(len < HEADER_LEN && l == len),
                        Err(SyncDecodeError::CountMismatch { .. }) => prop_assert!(len >= HEADER_LEN),
                        other => prop_assert!(false, "prefix {} of {}: {:?}", len, d.len(), other),
                    }
                }
            }
        }

        /// The table marks change no entry of any datagram, for this decoder or the older
        /// one, and are read back.
        #[test]
        fn table_marks_change_no_entry(id in any::<u8>(), items in proptest::collection::vec(arb_item(), 0..150), end in any::<bool>()) {
            for d in encode(id, &items) {
                let mut m = d.clone();
                mark_table(&mut m, end);
                let (a, b) = (decode(&d).unwrap(), decode(&m).unwrap());
                prop_assert_eq!(b.items().collect::<Vec<_>>(), a.items().collect::<Vec<_>>());
                prop_assert_eq!((a.table, a.table_end), (false, false));
                prop_assert_eq!((b.table, b.table_end), (true, end));
                prop_assert_eq!(is_table_end(&m), end);
                if !carries_templates(&d) {
                    prop_assert_eq!(decode_before_templates(&m), decode_before_templates(&d));
                }
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        /// Random bodies behind a valid header reach the entry parser.
        #[test]
        fn decode_never_panics_after_valid_header(
            version in prop_oneof![Just(VERSION_FLAGS), Just(VERSION_TEMPLATES), Just(VERSION_TABLE_END)],
            count in any::<u16>(),
            body in proptest::collection::vec(
                prop_oneof![Just(4u8), Just(6), Just(17), Just(0), Just(1), Just(2), any::<u8>()],
                0..400,
            ),
        ) {
            let mut d = header(version, 1);
            d[6..8].copy_from_slice(&count.to_be_bytes());
            d.extend(body);
            if let Ok(got) = decode(&d) {
                prop_assert_eq!(got.len(), count as usize);
                prop_assert!(got.entries.iter().all(SyncEntry::same_family));
                prop_assert!(got.templates.iter().all(|t| template_encoded_len(t).is_some()));
                prop_assert!(got.entries.is_empty() || version != VERSION_TEMPLATES);
                prop_assert!(got.templates.is_empty() || version == VERSION_TEMPLATES);
            }
        }
    }
}
