//! The IPVS generic-netlink wire format, encoded and decoded by hand (pure: no sockets here).
//!
//! One request is `nlmsghdr` (16 bytes) + `genlmsghdr` (4 bytes) + attributes; an attribute is
//! `nlattr` (length u16 counting its 4-byte header but not the padding, type u16) followed by
//! its payload padded to 4 bytes. Integers are host order except ports, which IPVS keeps in
//! network order (`__be16`). Layouts follow `linux/ip_vs.h`, `linux/netlink.h` and
//! `linux/genetlink.h`.
//!
//! Nested attributes are sent without `NLA_F_NESTED`, as ipvsadm (libnl) does; received types
//! are masked with `NLA_TYPE_MASK`, so either form decodes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::super::{Protocol, VirtualServerKey};

// linux/netlink.h
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
/// In an NLMSG_ERROR: the original request's payload was left out.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an NLMSG_ERROR: extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;
pub const NLA_HDRLEN: usize = 4;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

// linux/genetlink.h
pub const GENL_HDRLEN: usize = 4;
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// The controller version libnl and the kernel's own tools send.
pub const CTRL_VERSION: u8 = 1;

// linux/ip_vs.h
pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 1;

pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
pub const IPVS_CMD_SET_SERVICE: u8 = 2;
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
pub const IPVS_CMD_GET_SERVICE: u8 = 4;
pub const IPVS_CMD_NEW_DEST: u8 = 5;
pub const IPVS_CMD_SET_DEST: u8 = 6;
pub const IPVS_CMD_DEL_DEST: u8 = 7;
pub const IPVS_CMD_GET_DEST: u8 = 8;
pub const IPVS_CMD_NEW_DAEMON: u8 = 9;
pub const IPVS_CMD_DEL_DAEMON: u8 = 10;

pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
pub const IPVS_CMD_ATTR_DEST: u16 = 2;
pub const IPVS_CMD_ATTR_DAEMON: u16 = 3;

pub const IPVS_DAEMON_ATTR_STATE: u16 = 1;
pub const IPVS_DAEMON_ATTR_MCAST_IFN: u16 = 2;
pub const IPVS_DAEMON_ATTR_SYNC_ID: u16 = 3;
/// Sync daemon states (`IP_VS_STATE_MASTER` / `IP_VS_STATE_BACKUP`).
pub const IP_VS_STATE_MASTER: u32 = 1;
pub const IP_VS_STATE_BACKUP: u32 = 2;

pub const IPVS_SVC_ATTR_AF: u16 = 1;
pub const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
pub const IPVS_SVC_ATTR_ADDR: u16 = 3;
pub const IPVS_SVC_ATTR_PORT: u16 = 4;
pub const IPVS_SVC_ATTR_FWMARK: u16 = 5;
pub const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
pub const IPVS_SVC_ATTR_FLAGS: u16 = 7;
pub const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
pub const IPVS_SVC_ATTR_NETMASK: u16 = 9;
pub const IPVS_SVC_ATTR_STATS: u16 = 10;
pub const IPVS_SVC_ATTR_PE_NAME: u16 = 11;
pub const IPVS_SVC_ATTR_STATS64: u16 = 12;

pub const IPVS_DEST_ATTR_ADDR: u16 = 1;
pub const IPVS_DEST_ATTR_PORT: u16 = 2;
pub const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
pub const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
pub const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
pub const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
pub const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
pub const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
pub const IPVS_DEST_ATTR_PERSIST_CONNS: u16 = 9;
pub const IPVS_DEST_ATTR_STATS: u16 = 10;
pub const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
pub const IPVS_DEST_ATTR_STATS64: u16 = 12;

pub const IPVS_STATS_ATTR_CONNS: u16 = 1;
pub const IPVS_STATS_ATTR_INPKTS: u16 = 2;
pub const IPVS_STATS_ATTR_OUTPKTS: u16 = 3;
pub const IPVS_STATS_ATTR_INBYTES: u16 = 4;
pub const IPVS_STATS_ATTR_OUTBYTES: u16 = 5;

pub const IP_VS_SVC_F_PERSISTENT: u32 = 0x0001;
/// Set by the kernel on every service it holds; never ours to send or compare.
pub const IP_VS_SVC_F_HASHED: u32 = 0x0002;
pub const IP_VS_SVC_F_SCHED1: u32 = 0x0008;
pub const IP_VS_SVC_F_SCHED2: u32 = 0x0010;
/// `sh-port` / `mh-port`: hash the client port too.
pub const IP_VS_SVC_F_SCHED_HASH_PORT: u32 = IP_VS_SVC_F_SCHED2;

pub const IP_VS_CONN_F_FWD_MASK: u32 = 0x0007;
pub const IP_VS_CONN_F_MASQ: u32 = 0x0000;
/// What the kernel makes of any destination whose address is local to this host.
pub const IP_VS_CONN_F_LOCALNODE: u32 = 0x0001;
pub const IP_VS_CONN_F_TUNNEL: u32 = 0x0002;
pub const IP_VS_CONN_F_DROUTE: u32 = 0x0003;

pub const AF_INET: u16 = libc::AF_INET as u16;
pub const AF_INET6: u16 = libc::AF_INET6 as u16;
pub const IPPROTO_TCP: u16 = libc::IPPROTO_TCP as u16;
pub const IPPROTO_UDP: u16 = libc::IPPROTO_UDP as u16;

/// What a virtual service looks like to IPVS, beyond its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvcParams {
    /// Scheduler name (`rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`, or anything a dump shows).
    pub sched: String,
    /// `IP_VS_SVC_F_*` without `IP_VS_SVC_F_HASHED`.
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with `IP_VS_SVC_F_PERSISTENT`).
    pub timeout: u32,
    /// Persistence granularity: an IPv4 netmask in network order, or an IPv6 prefix length.
    pub netmask: u32,
}

/// What a destination (real server) looks like to IPVS, beyond its address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestParams {
    /// `IP_VS_CONN_F_MASQ` / `_TUNNEL` / `_DROUTE`.
    pub fwd: u32,
    /// 0 = quiescent: no new connections, existing ones continue.
    pub weight: u32,
    pub u_thresh: u32,
    pub l_thresh: u32,
}

/// One virtual service's or destination's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
}

/// A service as a GET_SERVICE dump shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedService {
    pub key: VirtualServerKey,
    pub params: SvcParams,
    pub stats: Counters,
}

/// A destination as a GET_DEST dump shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedDest {
    pub addr: IpAddr,
    pub port: u16,
    pub params: DestParams,
    pub active_conns: u32,
    pub inact_conns: u32,
    pub persist_conns: u32,
    pub stats: Counters,
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink request under construction.
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// `nlmsghdr` (length filled in by [`Msg::finish`], pid 0: the kernel's) + `genlmsghdr`.
    pub fn new(ty: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Msg { buf, nests: Vec::new() }
    }

    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Msg {
        let len = NLA_HDRLEN + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn u16(&mut self, ty: u16, v: u16) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string (NLA_NUL_STRING / NLA_STRING).
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut p = Vec::with_capacity(s.len() + 1);
        p.extend_from_slice(s.as_bytes());
        p.push(0);
        self.attr(ty, &p)
    }

    pub fn nest_start(&mut self, ty: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self
    }

    pub fn nest_end(&mut self) -> &mut Msg {
        let start = self.nests.pop().expect("nest_end without nest_start");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.nests.is_empty(), "unclosed nest");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// CTRL_CMD_GETFAMILY for "IPVS" (answered with the family's id).
pub fn get_family(seq: u32) -> Vec<u8> {
    let mut m = Msg::new(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, CTRL_CMD_GETFAMILY, 1);
    m.str(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME);
    m.finish()
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in the first four.
fn inet_addr(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

pub fn af_of(a: IpAddr) -> u16 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn proto_of(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// The attributes that name a service (what `ipvsadm -t addr:port` says).
fn service_id(m: &mut Msg, vs: &VirtualServerKey) {
    m.u16(IPVS_SVC_ATTR_AF, af_of(vs.address))
        .u16(IPVS_SVC_ATTR_PROTOCOL, proto_of(vs.protocol))
        .attr(IPVS_SVC_ATTR_ADDR, &inet_addr(vs.address))
        .attr(IPVS_SVC_ATTR_PORT, &vs.port.to_be_bytes());
}

fn service_nest(m: &mut Msg, vs: &VirtualServerKey, params: Option<&SvcParams>) {
    m.nest_start(IPVS_CMD_ATTR_SERVICE);
    service_id(m, vs);
    if let Some(p) = params {
        let mut flags = [0u8; 8];
        flags[..4].copy_from_slice(&p.flags.to_ne_bytes());
        // Mask: every bit, so the kernel takes our flags as the whole set.
        flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
        m.str(IPVS_SVC_ATTR_SCHED_NAME, &p.sched)
            .attr(IPVS_SVC_ATTR_FLAGS, &flags)
            .u32(IPVS_SVC_ATTR_TIMEOUT, p.timeout)
            .u32(IPVS_SVC_ATTR_NETMASK, p.netmask);
    }
    m.nest_end();
}

fn ipvs_msg(family: u16, flags: u16, seq: u32, cmd: u8) -> Msg {
    Msg::new(family, flags, seq, cmd, IPVS_GENL_VERSION)
}

/// NEW_SERVICE / SET_SERVICE: a full service entry.
pub fn service(family: u16, seq: u32, cmd: u8, vs: &VirtualServerKey, p: &SvcParams) -> Vec<u8> {
    let mut m = ipvs_msg(family, NLM_F_REQUEST | NLM_F_ACK, seq, cmd);
    service_nest(&mut m, vs, Some(p));
    m.finish()
}

pub fn del_service(family: u16, seq: u32, vs: &VirtualServerKey) -> Vec<u8> {
    let mut m = ipvs_msg(family, NLM_F_REQUEST | NLM_F_ACK, seq, IPVS_CMD_DEL_SERVICE);
    service_nest(&mut m, vs, None);
    m.finish()
}

/// NEW_DAEMON: start the kernel's connection sync thread in `state` (master or backup) on
/// `ifname` with `sync_id` — what `ipvsadm --start-daemon` and keepalived's
/// `lvs_sync_daemon` send.
pub fn new_daemon(family: u16, seq: u32, state: u32, ifname: &str, sync_id: u32) -> Vec<u8> {
    let mut m = ipvs_msg(family, NLM_F_REQUEST | NLM_F_ACK, seq, IPVS_CMD_NEW_DAEMON);
    m.nest_start(IPVS_CMD_ATTR_DAEMON)
        .u32(IPVS_DAEMON_ATTR_STATE, state)
        .str(IPVS_DAEMON_ATTR_MCAST_IFN, ifname)
        .u32(IPVS_DAEMON_ATTR_SYNC_ID, sync_id)
        .nest_end();
    m.finish()
}

/// DEL_DAEMON: stop the sync thread in `state`.
pub fn del_daemon(family: u16, seq: u32, state: u32) -> Vec<u8> {
    let mut m = ipvs_msg(family, NLM_F_REQUEST | NLM_F_ACK, seq, IPVS_CMD_DEL_DAEMON);
    m.nest_start(IPVS_CMD_ATTR_DAEMON).u32(IPVS_DAEMON_ATTR_STATE, state).nest_end();
    m.finish()
}

/// NEW_DEST / SET_DEST (`p` given: a full entry) or DEL_DEST (`p` = None).
///
/// Every one carries the destination's address family: without it the kernel takes the
/// service's (`ip_vs_genl_set_cmd`: `udest.af = svc->af`), and since `ip_vs_lookup_dest`
/// compares families, a DEL_DEST of an IPv6 tunnel destination under an IPv4 service (which
/// keepalived can leave) would never find it. Kernels older than the attribute (3.18) skip
/// it as unknown, as they do on NEW_DEST.
pub fn dest(
    family: u16,
    seq: u32,
    cmd: u8,
    vs: &VirtualServerKey,
    addr: IpAddr,
    port: u16,
    p: Option<&DestParams>,
) -> Vec<u8> {
    let mut m = ipvs_msg(family, NLM_F_REQUEST | NLM_F_ACK, seq, cmd);
    service_nest(&mut m, vs, None);
    m.nest_start(IPVS_CMD_ATTR_DEST);
    m.attr(IPVS_DEST_ATTR_ADDR, &inet_addr(addr)).attr(IPVS_DEST_ATTR_PORT, &port.to_be_bytes());
    if let Some(p) = p {
        m.u32(IPVS_DEST_ATTR_FWD_METHOD, p.fwd)
            .u32(IPVS_DEST_ATTR_WEIGHT, p.weight)
            .u32(IPVS_DEST_ATTR_U_THRESH, p.u_thresh)
            .u32(IPVS_DEST_ATTR_L_THRESH, p.l_thresh);
    }
    m.u16(IPVS_DEST_ATTR_ADDR_FAMILY, af_of(addr));
    m.nest_end();
    m.finish()
}

/// GET_SERVICE dump of every service.
pub fn dump_services(family: u16, seq: u32) -> Vec<u8> {
    ipvs_msg(family, NLM_F_REQUEST | NLM_F_DUMP, seq, IPVS_CMD_GET_SERVICE).finish()
}

/// GET_DEST dump of one service's destinations.
pub fn dump_dests(family: u16, seq: u32, vs: &VirtualServerKey) -> Vec<u8> {
    let mut m = ipvs_msg(family, NLM_F_REQUEST | NLM_F_DUMP, seq, IPVS_CMD_GET_DEST);
    service_nest(&mut m, vs, None);
    m.finish()
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// One netlink message of a received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// After the 16-byte header.
    pub payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into messages; stops at the first malformed header.
pub fn messages(buf: &[u8]) -> Vec<NlMsg<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        out.push(NlMsg {
            ty: u16_at(buf, at + 4).unwrap_or(0),
            flags: u16_at(buf, at + 6).unwrap_or(0),
            seq: u32_at(buf, at + 8).unwrap_or(0),
            payload: &buf[at + NLMSG_HDRLEN..at + len],
        });
        at += align4(len);
    }
    out
}

/// Attributes of a buffer: (type without flags, payload). Stops at the first malformed one.
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let ty = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > b.len() {
            return None;
        }
        let payload = &b[NLA_HDRLEN..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, payload))
    })
}

/// The attributes after a generic-netlink header, with the header's command.
pub fn genl(payload: &[u8]) -> Option<(u8, &[u8])> {
    (payload.len() >= GENL_HDRLEN).then(|| (payload[0], &payload[GENL_HDRLEN..]))
}

/// An NLMSG_ERROR: the errno (0 = an acknowledgement) and the extended-ack message, if any.
pub fn error(m: &NlMsg<'_>) -> Option<(i32, Option<String>)> {
    let errno = -(u32_at(m.payload, 0)? as i32);
    let mut msg = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // The original request's header, and its payload unless capped.
        let orig_len = u32_at(m.payload, 4).unwrap_or(0) as usize;
        let skip = 4 + if m.flags & NLM_F_CAPPED != 0 { NLMSG_HDRLEN } else { align4(orig_len) };
        if let Some(tlvs) = m.payload.get(skip..) {
            msg = attrs(tlvs).find(|(t, _)| *t == NLMSGERR_ATTR_MSG).map(|(_, p)| cstr(p));
        }
    }
    Some((errno, msg))
}

fn cstr(p: &[u8]) -> String {
    let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

fn get_u16(p: &[u8]) -> Option<u16> {
    u16_at(p, 0)
}

fn get_u32(p: &[u8]) -> Option<u32> {
    u32_at(p, 0)
}

fn get_u64(p: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(p.get(..8)?.try_into().ok()?))
}

/// A counter attribute: u64 in STATS64, u32 or u64 (by size) in the older STATS.
fn get_counter(p: &[u8]) -> Option<u64> {
    match p.len() {
        4 => get_u32(p).map(u64::from),
        _ => get_u64(p),
    }
}

fn port_of(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

fn addr_of(af: u16, p: &[u8]) -> Option<IpAddr> {
    match af {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(p.get(..4)?).ok()?))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(p.get(..16)?).ok()?))),
        _ => None,
    }
}

/// CTRL_ATTR_FAMILY_ID of a GETFAMILY reply.
pub fn family_id(genl_payload: &[u8]) -> Option<u16> {
    let (_, a) = genl(genl_payload)?;
    attrs(a).find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID).and_then(|(_, p)| get_u16(p))
}

fn counters(nested: &[u8]) -> Counters {
    let mut c = Counters::default();
    for (t, p) in attrs(nested) {
        let v = get_counter(p);
        match t {
            IPVS_STATS_ATTR_CONNS => c.conns = v.unwrap_or(0),
            IPVS_STATS_ATTR_INPKTS => c.inpkts = v.unwrap_or(0),
            IPVS_STATS_ATTR_OUTPKTS => c.outpkts = v.unwrap_or(0),
            IPVS_STATS_ATTR_INBYTES => c.inbytes = v.unwrap_or(0),
            IPVS_STATS_ATTR_OUTBYTES => c.outbytes = v.unwrap_or(0),
            _ => {}
        }
    }
    c
}

fn nested(genl_payload: &[u8], ty: u16) -> Option<&[u8]> {
    let (_, a) = genl(genl_payload)?;
    attrs(a).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

/// One message of a GET_SERVICE dump. `None` for what ha-lb cannot express (firewall-mark
/// services, protocols other than TCP/UDP, other families) — never ours, so never touched.
pub fn parse_service(genl_payload: &[u8]) -> Option<DumpedService> {
    let svc = nested(genl_payload, IPVS_CMD_ATTR_SERVICE)?;
    let (mut af, mut proto, mut addr, mut port) = (None, None, None, None);
    let (mut fwmark, mut sched, mut flags, mut timeout, mut netmask) = (0, None, 0, 0, 0);
    let (mut stats32, mut stats64) = (None, None);
    for (t, p) in attrs(svc) {
        match t {
            IPVS_SVC_ATTR_AF => af = get_u16(p),
            IPVS_SVC_ATTR_PROTOCOL => proto = get_u16(p),
            IPVS_SVC_ATTR_ADDR => addr = Some(p),
            IPVS_SVC_ATTR_PORT => port = port_of(p),
            IPVS_SVC_ATTR_FWMARK => fwmark = get_u32(p).unwrap_or(0),
            IPVS_SVC_ATTR_SCHED_NAME => sched = Some(cstr(p)),
            IPVS_SVC_ATTR_FLAGS => flags = get_u32(p).unwrap_or(0),
            IPVS_SVC_ATTR_TIMEOUT => timeout = get_u32(p).unwrap_or(0),
            IPVS_SVC_ATTR_NETMASK => netmask = get_u32(p).unwrap_or(0),
            IPVS_SVC_ATTR_STATS => stats32 = Some(counters(p)),
            IPVS_SVC_ATTR_STATS64 => stats64 = Some(counters(p)),
            _ => {}
        }
    }
    if fwmark != 0 {
        return None;
    }
    let protocol = match proto? {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    let key = VirtualServerKey { address: addr_of(af?, addr?)?, port: port?, protocol };
    Some(DumpedService {
        key,
        params: SvcParams {
            sched: sched.unwrap_or_default(),
            flags: flags & !IP_VS_SVC_F_HASHED,
            timeout,
            netmask,
        },
        stats: stats64.or(stats32).unwrap_or_default(),
    })
}

/// One message of a GET_DEST dump; `svc_af` is the service's family (older kernels send no
/// IPVS_DEST_ATTR_ADDR_FAMILY).
pub fn parse_dest(genl_payload: &[u8], svc_af: u16) -> Option<DumpedDest> {
    let d = nested(genl_payload, IPVS_CMD_ATTR_DEST)?;
    let (mut addr, mut port, mut af) = (None, None, svc_af);
    let mut params = DestParams { fwd: 0, weight: 0, u_thresh: 0, l_thresh: 0 };
    let (mut active, mut inact, mut persist) = (0, 0, 0);
    let (mut stats32, mut stats64) = (None, None);
    for (t, p) in attrs(d) {
        match t {
            IPVS_DEST_ATTR_ADDR => addr = Some(p),
            IPVS_DEST_ATTR_PORT => port = port_of(p),
            IPVS_DEST_ATTR_FWD_METHOD => {
                params.fwd = get_u32(p).unwrap_or(0) & IP_VS_CONN_F_FWD_MASK
            }
            IPVS_DEST_ATTR_WEIGHT => params.weight = get_u32(p).unwrap_or(0),
            IPVS_DEST_ATTR_U_THRESH => params.u_thresh = get_u32(p).unwrap_or(0),
            IPVS_DEST_ATTR_L_THRESH => params.l_thresh = get_u32(p).unwrap_or(0),
            IPVS_DEST_ATTR_ACTIVE_CONNS => active = get_u32(p).unwrap_or(0),
            IPVS_DEST_ATTR_INACT_CONNS => inact = get_u32(p).unwrap_or(0),
            IPVS_DEST_ATTR_PERSIST_CONNS => persist = get_u32(p).unwrap_or(0),
            IPVS_DEST_ATTR_STATS => stats32 = Some(counters(p)),
            IPVS_DEST_ATTR_STATS64 => stats64 = Some(counters(p)),
            IPVS_DEST_ATTR_ADDR_FAMILY => af = get_u16(p).unwrap_or(svc_af),
            _ => {}
        }
    }
    Some(DumpedDest {
        addr: addr_of(af, addr?)?,
        port: port?,
        params,
        active_conns: active,
        inact_conns: inact,
        persist_conns: persist,
        stats: stats64.or(stats32).unwrap_or_default(),
    })
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    fn vs(s: &str, protocol: Protocol) -> VirtualServerKey {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        VirtualServerKey { address: sa.ip(), port: sa.port(), protocol }
    }

    /// nlmsghdr + genlmsghdr, little-endian.
    fn head(len: u32, ty: u16, flags: u16, seq: u32, cmd: u8, ver: u8) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&seq.to_le_bytes());
        v.extend_from_slice(&[0, 0, 0, 0, cmd, ver, 0, 0]);
        v
    }

    #[test]
    fn get_family_request_is_byte_exact() {
        // 16 + 4 + nlattr(4 + "IPVS\0" = 9, padded to 12) = 32.
        let mut want = head(32, 0x10, 0x5, 7, 3, 1);
        want.extend_from_slice(&[9, 0, 2, 0, b'I', b'P', b'V', b'S', 0, 0, 0, 0]);
        assert_eq!(get_family(7), want);
    }

    #[test]
    fn sync_daemon_requests_are_byte_exact() {
        // Nest 4 + STATE 8 + MCAST_IFN 12 ("eth1\0" = 9 -> 12) + SYNC_ID 8 = 32; 20 + 32.
        let mut want = head(52, 0x1d, 0x5, 9, 9, 1);
        #[rustfmt::skip]
        want.extend_from_slice(&[
            32, 0, 3, 0,                                   // IPVS_CMD_ATTR_DAEMON
            8, 0, 1, 0, 1, 0, 0, 0,                        // STATE = master
            9, 0, 2, 0, b'e', b't', b'h', b'1', 0, 0, 0, 0, // MCAST_IFN "eth1\0"
            8, 0, 3, 0, 51, 0, 0, 0,                       // SYNC_ID 51
        ]);
        assert_eq!(new_daemon(0x1d, 9, IP_VS_STATE_MASTER, "eth1", 51), want);
        let mut want = head(32, 0x1d, 0x5, 10, 10, 1);
        want.extend_from_slice(&[12, 0, 3, 0, 8, 0, 1, 0, 2, 0, 0, 0]);
        assert_eq!(del_daemon(0x1d, 10, IP_VS_STATE_BACKUP), want);
    }

    #[test]
    fn new_service_v4_persistent_sh_port_is_byte_exact() {
        let key = vs("198.18.0.1:80", Protocol::Tcp);
        let p = SvcParams {
            sched: "sh".into(),
            flags: IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_SCHED_HASH_PORT,
            timeout: 300,
            netmask: 0xffff_ffff,
        };
        let got = service(0x1d, 42, IPVS_CMD_NEW_SERVICE, &key, &p);
        // Nest: 4 + AF 8 + PROTOCOL 8 + ADDR 20 + PORT 8 + SCHED 8 ("sh\0" = 7 -> 8)
        //       + FLAGS 12 + TIMEOUT 8 + NETMASK 8 = 84. Message: 20 + 84 = 104.
        let mut want = head(104, 0x1d, 0x5, 42, 1, 1);
        #[rustfmt::skip]
        want.extend_from_slice(&[
            84, 0, 1, 0,                       // IPVS_CMD_ATTR_SERVICE, no NLA_F_NESTED
            6, 0, 1, 0, 2, 0, 0, 0,            // AF = AF_INET (u16, padded)
            6, 0, 2, 0, 6, 0, 0, 0,            // PROTOCOL = TCP
            20, 0, 3, 0, 198, 18, 0, 1,        // ADDR: union nf_inet_addr, 16 bytes
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            6, 0, 4, 0, 0, 80, 0, 0,           // PORT 80, network order
            7, 0, 6, 0, b's', b'h', 0, 0,      // SCHED_NAME "sh\0"
            12, 0, 7, 0, 0x11, 0, 0, 0,        // FLAGS: persistent | sched2 ...
            0xff, 0xff, 0xff, 0xff,            // ... mask: all
            8, 0, 8, 0, 0x2c, 0x01, 0, 0,      // TIMEOUT 300
            8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff // NETMASK 255.255.255.255
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn del_service_v6_udp_names_it_only() {
        let key = vs("[fd48:4c42::1]:53", Protocol::Udp);
        let got = del_service(0x1d, 1, &key);
        let mut want = head(20 + 48, 0x1d, 0x5, 1, 3, 1);
        #[rustfmt::skip]
        want.extend_from_slice(&[
            48, 0, 1, 0,
            6, 0, 1, 0, 10, 0, 0, 0,           // AF_INET6
            6, 0, 2, 0, 17, 0, 0, 0,           // UDP
            20, 0, 3, 0, 0xfd, 0x48, 0x4c, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            6, 0, 4, 0, 0, 53, 0, 0,
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn new_dest_dr_is_byte_exact_and_del_dest_has_no_params() {
        let key = vs("198.18.0.1:443", Protocol::Tcp);
        let p = DestParams { fwd: IP_VS_CONN_F_DROUTE, weight: 5, u_thresh: 0, l_thresh: 0 };
        let got =
            dest(0x1d, 9, IPVS_CMD_NEW_DEST, &key, "198.18.2.10".parse().unwrap(), 443, Some(&p));
        // Service nest 48; dest nest 4 + ADDR 20 + PORT 8 + 4×u32 32 + AF 8 = 72.
        let mut want = head(20 + 48 + 72, 0x1d, 0x5, 9, 5, 1);
        #[rustfmt::skip]
        want.extend_from_slice(&[
            48, 0, 1, 0,
            6, 0, 1, 0, 2, 0, 0, 0,
            6, 0, 2, 0, 6, 0, 0, 0,
            20, 0, 3, 0, 198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            6, 0, 4, 0, 0x01, 0xbb, 0, 0,      // 443
            72, 0, 2, 0,                       // IPVS_CMD_ATTR_DEST
            20, 0, 1, 0, 198, 18, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            6, 0, 2, 0, 0x01, 0xbb, 0, 0,
            8, 0, 3, 0, 3, 0, 0, 0,            // FWD_METHOD = DROUTE
            8, 0, 4, 0, 5, 0, 0, 0,            // WEIGHT
            8, 0, 5, 0, 0, 0, 0, 0,            // U_THRESH
            8, 0, 6, 0, 0, 0, 0, 0,            // L_THRESH
            6, 0, 11, 0, 2, 0, 0, 0,           // ADDR_FAMILY
        ]);
        assert_eq!(got, want);
        let del =
            dest(0x1d, 10, IPVS_CMD_DEL_DEST, &key, "198.18.2.10".parse().unwrap(), 443, None);
        assert_eq!(del.len(), 20 + 48 + 4 + 20 + 8 + 8);
        assert_eq!(del[16], IPVS_CMD_DEL_DEST);
        assert_eq!(&del[del.len() - 8..], &[6, 0, 11, 0, 2, 0, 0, 0], "ADDR_FAMILY = AF_INET");
    }

    #[test]
    fn del_dest_of_an_ipv6_tunnel_server_under_an_ipv4_service_names_its_family() {
        // keepalived can leave such a destination; without the family the kernel looks it
        // up as IPv4 and the delete fails with ENOENT for ever.
        let key = vs("198.18.0.1:443", Protocol::Tcp);
        let del =
            dest(0x1d, 11, IPVS_CMD_DEL_DEST, &key, "fd48:4c42::10".parse().unwrap(), 443, None);
        // Service nest 48; dest nest 4 + ADDR 20 + PORT 8 + AF 8, no parameters.
        assert_eq!(del.len(), 20 + 48 + 4 + 20 + 8 + 8);
        assert_eq!(&del[del.len() - 8..], &[6, 0, 11, 0, 10, 0, 0, 0], "ADDR_FAMILY = AF_INET6");
    }

    #[test]
    fn dumps_carry_the_dump_flags() {
        let d = dump_services(0x1d, 3);
        assert_eq!(d, head(20, 0x1d, 0x301, 3, 4, 1));
        let key = vs("198.18.0.1:80", Protocol::Tcp);
        let d = dump_dests(0x1d, 4, &key);
        assert_eq!(&d[..20], &head(68, 0x1d, 0x301, 4, 8, 1)[..]);
    }

    /// A GET_SERVICE dump message as the kernel writes it (nla_put_u64_64bit puts a PAD
    /// attribute before each 64-bit counter where needed; HASHED is set).
    fn kernel_service_msg() -> Vec<u8> {
        let mut m = Msg::new(0x1d, NLM_F_MULTI, 5, IPVS_CMD_NEW_SERVICE, 1);
        m.nest_start(IPVS_CMD_ATTR_SERVICE | 0x8000); // NLA_F_NESTED, as newer kernels may
        m.u16(IPVS_SVC_ATTR_AF, AF_INET6)
            .u16(IPVS_SVC_ATTR_PROTOCOL, IPPROTO_UDP)
            .attr(IPVS_SVC_ATTR_ADDR, &"fd48:4c42::1".parse::<Ipv6Addr>().unwrap().octets())
            .attr(IPVS_SVC_ATTR_PORT, &53u16.to_be_bytes())
            .str(IPVS_SVC_ATTR_SCHED_NAME, "mh")
            .attr(IPVS_SVC_ATTR_FLAGS, &[0x12, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
            .u32(IPVS_SVC_ATTR_TIMEOUT, 0)
            .u32(IPVS_SVC_ATTR_NETMASK, 128);
        m.nest_start(IPVS_SVC_ATTR_STATS);
        m.u32(IPVS_STATS_ATTR_CONNS, 1).attr(IPVS_STATS_ATTR_INBYTES, &7u64.to_ne_bytes());
        m.nest_end();
        m.nest_start(IPVS_SVC_ATTR_STATS64);
        m.attr(11, &[]) // IPVS_STATS_ATTR_PAD
            .attr(IPVS_STATS_ATTR_CONNS, &3u64.to_ne_bytes())
            .attr(IPVS_STATS_ATTR_INPKTS, &10u64.to_ne_bytes())
            .attr(IPVS_STATS_ATTR_OUTPKTS, &9u64.to_ne_bytes())
            .attr(IPVS_STATS_ATTR_INBYTES, &(1u64 << 40).to_ne_bytes())
            .attr(IPVS_STATS_ATTR_OUTBYTES, &500u64.to_ne_bytes());
        m.nest_end();
        m.nest_end();
        m.finish()
    }

    #[test]
    fn parses_a_dumped_service() {
        let buf = kernel_service_msg();
        let ms = messages(&buf);
        assert_eq!(ms.len(), 1);
        assert_eq!((ms[0].seq, ms[0].flags), (5, NLM_F_MULTI));
        let s = parse_service(ms[0].payload).expect("parses");
        assert_eq!(s.key, vs("[fd48:4c42::1]:53", Protocol::Udp));
        assert_eq!(
            s.params,
            SvcParams { sched: "mh".into(), flags: IP_VS_SVC_F_SCHED2, timeout: 0, netmask: 128 }
        );
        assert_eq!(
            s.stats,
            Counters { conns: 3, inpkts: 10, outpkts: 9, inbytes: 1 << 40, outbytes: 500 },
            "STATS64 wins over STATS"
        );
    }

    #[test]
    fn skips_fwmark_and_sctp_services() {
        let mut m = Msg::new(0x1d, NLM_F_MULTI, 5, IPVS_CMD_NEW_SERVICE, 1);
        m.nest_start(IPVS_CMD_ATTR_SERVICE)
            .u16(IPVS_SVC_ATTR_AF, AF_INET)
            .u32(IPVS_SVC_ATTR_FWMARK, 7)
            .str(IPVS_SVC_ATTR_SCHED_NAME, "rr")
            .nest_end();
        let buf = m.finish();
        assert_eq!(parse_service(messages(&buf)[0].payload), None);
        let mut m = Msg::new(0x1d, NLM_F_MULTI, 5, IPVS_CMD_NEW_SERVICE, 1);
        m.nest_start(IPVS_CMD_ATTR_SERVICE)
            .u16(IPVS_SVC_ATTR_AF, AF_INET)
            .u16(IPVS_SVC_ATTR_PROTOCOL, 132)
            .attr(IPVS_SVC_ATTR_ADDR, &[198, 18, 0, 1])
            .attr(IPVS_SVC_ATTR_PORT, &80u16.to_be_bytes())
            .nest_end();
        let buf = m.finish();
        assert_eq!(parse_service(messages(&buf)[0].payload), None);
    }

    #[test]
    fn parses_a_dumped_dest_with_32_bit_stats_only() {
        let mut m = Msg::new(0x1d, NLM_F_MULTI, 6, IPVS_CMD_NEW_DEST, 1);
        m.nest_start(IPVS_CMD_ATTR_DEST)
            .attr(IPVS_DEST_ATTR_ADDR, &inet_addr("198.18.2.10".parse().unwrap()))
            .attr(IPVS_DEST_ATTR_PORT, &8080u16.to_be_bytes())
            // The kernel reports conn_flags & FWD_MASK; extra bits must not leak through.
            .u32(IPVS_DEST_ATTR_FWD_METHOD, 0x100 | IP_VS_CONN_F_MASQ)
            .u32(IPVS_DEST_ATTR_WEIGHT, 3)
            .u32(IPVS_DEST_ATTR_U_THRESH, 0)
            .u32(IPVS_DEST_ATTR_L_THRESH, 0)
            .u32(IPVS_DEST_ATTR_ACTIVE_CONNS, 4)
            .u32(IPVS_DEST_ATTR_INACT_CONNS, 5)
            .u32(IPVS_DEST_ATTR_PERSIST_CONNS, 6);
        m.nest_start(IPVS_DEST_ATTR_STATS)
            .u32(IPVS_STATS_ATTR_CONNS, 11)
            .u32(IPVS_STATS_ATTR_INPKTS, 12)
            .u32(IPVS_STATS_ATTR_OUTPKTS, 13)
            .attr(IPVS_STATS_ATTR_INBYTES, &14u64.to_ne_bytes())
            .attr(IPVS_STATS_ATTR_OUTBYTES, &15u64.to_ne_bytes())
            .nest_end();
        m.nest_end();
        let buf = m.finish();
        let d = parse_dest(messages(&buf)[0].payload, AF_INET).unwrap();
        assert_eq!(d.addr, "198.18.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(d.port, 8080);
        assert_eq!(d.params, DestParams { fwd: 0, weight: 3, u_thresh: 0, l_thresh: 0 });
        assert_eq!((d.active_conns, d.inact_conns, d.persist_conns), (4, 5, 6));
        assert_eq!(
            d.stats,
            Counters { conns: 11, inpkts: 12, outpkts: 13, inbytes: 14, outbytes: 15 }
        );
    }

    #[test]
    fn splits_datagrams_and_reads_errors_and_ext_ack() {
        // An ack (error 0) for seq 9, capped, followed by an error with an ext-ack message.
        let mut buf = Vec::new();
        let mut ack = head(36, NLMSG_ERROR, NLM_F_CAPPED, 9, 0, 0);
        ack.truncate(16);
        ack.extend_from_slice(&0i32.to_le_bytes());
        ack.extend_from_slice(&head(20, 0x1d, 5, 9, 1, 1)[..16]);
        buf.extend_from_slice(&ack);
        let mut err = head(0, NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 10, 0, 0);
        err.truncate(16);
        err.extend_from_slice(&(-17i32).to_le_bytes());
        err.extend_from_slice(&head(20, 0x1d, 5, 10, 1, 1)[..16]);
        err.extend_from_slice(&[8, 0, 1, 0, b'n', b'o', b'!', 0]);
        let n = err.len() as u32;
        err[..4].copy_from_slice(&n.to_le_bytes());
        buf.extend_from_slice(&err);
        let ms = messages(&buf);
        assert_eq!(ms.len(), 2);
        assert_eq!(error(&ms[0]), Some((0, None)));
        assert_eq!(ms[1].seq, 10);
        assert_eq!(error(&ms[1]), Some((17, Some("no!".into()))));
        // Truncated input yields what is whole.
        assert_eq!(messages(&buf[..buf.len() - 1]).len(), 1);
    }

    #[test]
    fn family_id_from_a_getfamily_reply() {
        let mut m = Msg::new(GENL_ID_CTRL, 0, 1, 1, 2);
        m.u16(CTRL_ATTR_FAMILY_ID, 0x23).str(CTRL_ATTR_FAMILY_NAME, "IPVS");
        let buf = m.finish();
        assert_eq!(family_id(messages(&buf)[0].payload), Some(0x23));
    }
}
