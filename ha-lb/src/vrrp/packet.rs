//! VRRP advertisement codec: version 2 (RFC 3768, IPv4 only) and version 3
//! (RFC 5798 / RFC 9568, IPv4 and IPv6). Pure: bytes in, typed values out.
//!
//! Wire format (both versions share the first 8 bytes):
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    | Count IP Addrs|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! v2: |   Auth Type   |   Adver Int   |          Checksum         |
//! v3: |(rsvd) |     Max Adver Int     |          Checksum         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 IPvX Address(es) (count × 4 or 16)            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! v2 only: Authentication Data (8 bytes)
//! ```
//!
//! Checksums: v2 covers the VRRP message only. v3 over IPv6 prepends the RFC 8200 §8.1
//! pseudo-header (RFC 5798 and RFC 9568 §5.2.8 agree). v3 over IPv4 is where peers differ,
//! and three forms are in use:
//! - RFC 5798 §5.2.8 prepends a pseudo-header for IPv4 too, as for UDP (src, dst, zero,
//!   protocol 112, VRRP length). keepalived does so by default, and so does ha-lb when it
//!   sends ([`ChecksumForm::PseudoHeader`]).
//! - RFC 9568 §5.2.8 (which obsoletes RFC 5798) says the opposite: "For the IPv4 address
//!   family, the checksum calculation only includes the VRRP message" — no pseudo-header.
//!   Peers that follow it, keepalived with `v3_checksum_as_v2` and some routers send that
//!   ([`ChecksumForm::MessageOnly`]).
//! - keepalived up to 1.3.5 put the multicast group 224.0.0.18 in the pseudo-header even
//!   for unicast adverts (keepalived issue #642; newer keepalived retries with the group on
//!   receive and calls it `unicast_chksum_compat`): [`ChecksumForm::MulticastGroup`].
//!
//! [`decode`] accepts all three and says which one it saw ([`Received::checksum`]);
//! rejecting either of the other two made every advert of such a peer `bad_checksum` and
//! both routers MASTER. [`Advert::decode`] checks one [`V3Checksum`] mode only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ha_lb_common::vrrp::IPPROTO_VRRP;

/// TTL / hop limit every VRRP packet is sent with and must arrive with (RFC 5798 §5.1.1.3).
pub const VRRP_TTL: u8 = 255;
/// IPv4 multicast group for VRRP (RFC 5798 §5.1.1.2).
pub const VRRP_MCAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group for VRRP (RFC 5798 §5.1.2.2).
pub const VRRP_MCAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The only VRRP message type (RFC 5798 §5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Fixed header length shared by v2 and v3.
pub const HEADER_LEN: usize = 8;
/// Length of the v2 authentication data.
pub const AUTH_DATA_LEN: usize = 8;
/// Largest v3 Max Adver Int (12 bits), in centiseconds.
pub const V3_MAX_ADVER_INT_CS: u16 = 0x0fff;
/// Largest v2 Adver Int (8 bits of seconds), in centiseconds.
pub const V2_MAX_ADVER_INT_CS: u16 = 255 * 100;

/// VRRP protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// RFC 3768, IPv4 only, interval in whole seconds, optional simple password.
    V2,
    /// RFC 5798 / RFC 9568, IPv4 and IPv6, interval in centiseconds.
    V3,
}

impl Version {
    pub const fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// VRRPv2 authentication (RFC 3768 §5.3.6). Always [`Auth::None`] for v3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    /// Auth Type 0.
    #[default]
    None,
    /// Auth Type 1: up to 8 bytes of clear text, zero padded (keepalived `auth_type PASS`).
    SimplePassword([u8; AUTH_DATA_LEN]),
}

impl Auth {
    /// A simple-text password; keepalived keeps the first 8 bytes, so do we.
    pub fn password(text: &str) -> Auth {
        let mut data = [0u8; AUTH_DATA_LEN];
        let bytes = text.as_bytes();
        let n = bytes.len().min(AUTH_DATA_LEN);
        data[..n].copy_from_slice(&bytes[..n]);
        Auth::SimplePassword(data)
    }

    /// The wire Auth Type value.
    pub const fn type_code(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::SimplePassword(_) => 1,
        }
    }
}

/// How the v3 checksum is computed over IPv4. IPv6 always uses the pseudo-header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum V3Checksum {
    /// RFC 5798 and keepalived's default: include the IPv4 pseudo-header.
    #[default]
    PseudoHeader,
    /// RFC 9568 §5.2.8, keepalived `v3_checksum_as_v2`: VRRP message only.
    AsV2,
}

/// Which checksum a received advert carried (see the module documentation). Anything but
/// VRRPv3 over IPv4 has only [`ChecksumForm::PseudoHeader`] (v2: no pseudo-header at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChecksumForm {
    /// The RFC 5798 form with the packet's own destination: what ha-lb and keepalived send.
    PseudoHeader,
    /// A pseudo-header naming the multicast group although the packet was unicast
    /// (keepalived ≤ 1.3.5 with `unicast_peer`).
    MulticastGroup,
    /// No pseudo-header (RFC 9568 §5.2.8, keepalived `v3_checksum_as_v2`).
    MessageOnly,
}

impl ChecksumForm {
    /// For logs: who sends it.
    pub const fn describe(self) -> &'static str {
        match self {
            ChecksumForm::PseudoHeader => "RFC 5798 pseudo-header",
            ChecksumForm::MulticastGroup => {
                "pseudo-header with the multicast group as destination (keepalived <= 1.3.5 unicast)"
            }
            ChecksumForm::MessageOnly => {
                "no IPv4 pseudo-header (RFC 9568, keepalived v3_checksum_as_v2)"
            }
        }
    }
}

/// Receive-side options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxOptions {
    /// RFC: TTL/hop limit MUST be 255. keepalived skips the check for unicast
    /// peers (which may be routed); set false only for routed unicast setups.
    pub require_hop_limit_255: bool,
}

impl Default for RxOptions {
    fn default() -> Self {
        RxOptions { require_hop_limit_255: true }
    }
}

/// One VRRP ADVERTISEMENT, decoded and validated.
///
/// The checksum is not stored: [`Advert::decode`] verifies it and
/// [`Advert::encode`] computes it. `count_ip` is `addrs.len()`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Advert {
    pub version: Version,
    /// `virtual_router_id`, 1..=255.
    pub vrid: u8,
    /// Sender priority: 0 = master stopping, 255 = address owner.
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2: seconds × 100; v3: 12-bit Max Adver Int).
    pub adver_int_cs: u16,
    /// Virtual addresses; all of the family of the packet (the caller's `src`).
    pub addrs: Vec<IpAddr>,
    /// v2 authentication; always `Auth::None` for v3.
    pub auth: Auth,
}

/// Why a received packet was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: {len} bytes, need at least {need}")]
    Truncated { len: usize, need: usize },
    #[error("bad VRRP version {0} (want 2 or 3)")]
    BadVersion(u8),
    #[error("bad VRRP type {0} (want 1, ADVERTISEMENT)")]
    BadType(u8),
    #[error("bad virtual_router_id 0")]
    BadVrid,
    #[error("VRRPv2 is IPv4 only (RFC 3768)")]
    V2OverIpv6,
    #[error("source and destination address families differ")]
    FamilyMismatch,
    #[error("length {actual} does not match count {count} (expected {expected} bytes)")]
    LengthMismatch { count: u8, expected: usize, actual: usize },
    #[error("bad checksum: packet has {found:#06x}, computed {computed:#06x}")]
    BadChecksum { found: u16, computed: u16 },
    #[error("VRRPv2 IPsec AH authentication (type 2) is not supported")]
    AuthAhUnsupported,
    #[error("unknown VRRPv2 auth type {0}")]
    BadAuthType(u8),
    #[error("TTL/hop limit {0}, must be 255")]
    BadHopLimit(u8),
    #[error("malformed IPv4 header")]
    BadIpHeader,
    #[error("IP protocol {0} is not VRRP (112)")]
    NotVrrp(u8),
    #[error("fragmented IPv4 packet")]
    Fragmented,
}

impl DecodeError {
    /// Short stable name for counters/logs.
    pub const fn name(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::BadType(_) => "bad_type",
            DecodeError::BadVrid => "bad_vrid",
            DecodeError::V2OverIpv6 => "v2_over_ipv6",
            DecodeError::FamilyMismatch => "family_mismatch",
            DecodeError::LengthMismatch { .. } => "length_mismatch",
            DecodeError::BadChecksum { .. } => "bad_checksum",
            DecodeError::AuthAhUnsupported => "auth_ah_unsupported",
            DecodeError::BadAuthType(_) => "bad_auth_type",
            DecodeError::BadHopLimit(_) => "bad_hop_limit",
            DecodeError::BadIpHeader => "bad_ip_header",
            DecodeError::NotVrrp(_) => "not_vrrp",
            DecodeError::Fragmented => "fragmented",
        }
    }
}

/// Per-reason counts of rejected packets, for status output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RxErrorCounters {
    pub truncated: u64,
    pub bad_version: u64,
    pub bad_type: u64,
    pub bad_vrid: u64,
    pub v2_over_ipv6: u64,
    pub family_mismatch: u64,
    pub length_mismatch: u64,
    pub bad_checksum: u64,
    pub auth_ah_unsupported: u64,
    pub bad_auth_type: u64,
    pub bad_hop_limit: u64,
    pub bad_ip_header: u64,
    pub not_vrrp: u64,
    pub fragmented: u64,
}

impl RxErrorCounters {
    pub fn record(&mut self, err: &DecodeError) {
        let c = match err {
            DecodeError::Truncated { .. } => &mut self.truncated,
            DecodeError::BadVersion(_) => &mut self.bad_version,
            DecodeError::BadType(_) => &mut self.bad_type,
            DecodeError::BadVrid => &mut self.bad_vrid,
            DecodeError::V2OverIpv6 => &mut self.v2_over_ipv6,
            DecodeError::FamilyMismatch => &mut self.family_mismatch,
            DecodeError::LengthMismatch { .. } => &mut self.length_mismatch,
            DecodeError::BadChecksum { .. } => &mut self.bad_checksum,
            DecodeError::AuthAhUnsupported => &mut self.auth_ah_unsupported,
            DecodeError::BadAuthType(_) => &mut self.bad_auth_type,
            DecodeError::BadHopLimit(_) => &mut self.bad_hop_limit,
            DecodeError::BadIpHeader => &mut self.bad_ip_header,
            DecodeError::NotVrrp(_) => &mut self.not_vrrp,
            DecodeError::Fragmented => &mut self.fragmented,
        };
        *c += 1;
    }

    /// Sum of all reasons.
    pub fn total(&self) -> u64 {
        self.truncated
            + self.bad_version
            + self.bad_type
            + self.bad_vrid
            + self.v2_over_ipv6
            + self.family_mismatch
            + self.length_mismatch
            + self.bad_checksum
            + self.auth_ah_unsupported
            + self.bad_auth_type
            + self.bad_hop_limit
            + self.bad_ip_header
            + self.not_vrrp
            + self.fragmented
    }
}

/// Why an [`Advert`] cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("VRRPv2 is IPv4 only (RFC 3768)")]
    V2OverIpv6,
    #[error("source, destination and virtual addresses must share one family")]
    FamilyMismatch,
    #[error("{0} virtual addresses; at most 255 fit")]
    TooManyAddrs(usize),
    #[error("advert interval {0} cs is not encodable for this version")]
    BadInterval(u16),
    #[error("VRRPv3 has no authentication")]
    AuthOnV3,
    #[error("bad virtual_router_id 0")]
    BadVrid,
}

/// A received advert with the IP fields the state machine and logs need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit (from the header or the IPV6_HOPLIMIT cmsg).
    pub hop_limit: u8,
    pub advert: Advert,
    /// The checksum form that verified.
    pub checksum: ChecksumForm,
}

fn addr_len(a: &IpAddr) -> usize {
    match a {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

/// Length of the VRRP message for `count` addresses of `addr_len` bytes.
pub const fn message_len(version: Version, addr_len: usize, count: usize) -> usize {
    HEADER_LEN
        + addr_len * count
        + match version {
            Version::V2 => AUTH_DATA_LEN,
            Version::V3 => 0,
        }
}

/// One's-complement 16-bit sum (RFC 1071) of `data` added to `acc`, unfolded.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Partial sum of the pseudo-header, or 0 when the version/mode has none.
fn pseudo_header_sum(
    version: Version,
    mode: V3Checksum,
    src: IpAddr,
    dst: IpAddr,
    len: usize,
) -> u32 {
    if version == Version::V2 {
        return 0;
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            if mode == V3Checksum::AsV2 {
                return 0;
            }
            // src(4) dst(4) zero(1) proto(1) length(2)
            let acc = sum16(0, &s.octets());
            let acc = sum16(acc, &d.octets());
            let acc = sum16(acc, &[0, IPPROTO_VRRP]);
            sum16(acc, &(len as u16).to_be_bytes())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // src(16) dst(16) upper-layer length(4) zero(3) next header(1)
            let acc = sum16(0, &s.octets());
            let acc = sum16(acc, &d.octets());
            let acc = sum16(acc, &(len as u32).to_be_bytes());
            sum16(acc, &[0, 0, 0, IPPROTO_VRRP])
        }
        // Mixed families are rejected before we get here.
        _ => 0,
    }
}

/// Whether `msg`'s checksum (in place) verifies for this mode and address pair.
fn checksum_ok(version: Version, mode: V3Checksum, src: IpAddr, dst: IpAddr, msg: &[u8]) -> bool {
    fold(sum16(pseudo_header_sum(version, mode, src, dst, msg.len()), msg)) == 0xffff
}

/// The [`DecodeError::BadChecksum`] for `msg`, reporting what `mode` would have computed.
fn bad_checksum(
    version: Version,
    mode: V3Checksum,
    src: IpAddr,
    dst: IpAddr,
    msg: &[u8],
) -> DecodeError {
    let mut zeroed = msg.to_vec();
    zeroed[6] = 0;
    zeroed[7] = 0;
    DecodeError::BadChecksum {
        found: u16::from_be_bytes([msg[6], msg[7]]),
        computed: compute_checksum(version, mode, src, dst, &zeroed),
    }
}

/// The checksum field value for `msg` (whose checksum bytes 6..8 must be zero).
pub fn compute_checksum(
    version: Version,
    mode: V3Checksum,
    src: IpAddr,
    dst: IpAddr,
    msg: &[u8],
) -> u16 {
    let acc = pseudo_header_sum(version, mode, src, dst, msg.len());
    !fold(sum16(acc, msg))
}

impl Advert {
    /// Decode the VRRP message `msg` (the bytes after the IP header) sent from
    /// `src` to `dst`. The address family of the virtual addresses is the
    /// family of `src`. Validation is strict: exact length, checksum (of `mode`
    /// only; [`decode`] accepts every form in use), version, type, auth type
    /// (the v3 reserved bits are ignored, as the RFCs say).
    pub fn decode(
        src: IpAddr,
        dst: IpAddr,
        msg: &[u8],
        mode: V3Checksum,
    ) -> Result<Advert, DecodeError> {
        Advert::parse(src, dst, msg, |version, msg| {
            if checksum_ok(version, mode, src, dst, msg) {
                Ok(())
            } else {
                Err(bad_checksum(version, mode, src, dst, msg))
            }
        })
    }

    /// As [`Advert::decode`], accepting every checksum form in use and saying which one
    /// verified (see the module documentation). Tried in order: the RFC 5798 form (what
    /// ha-lb sends), the multicast group in the pseudo-header (unicast only), none.
    pub fn decode_any_checksum(
        src: IpAddr,
        dst: IpAddr,
        msg: &[u8],
    ) -> Result<(Advert, ChecksumForm), DecodeError> {
        let mut form = ChecksumForm::PseudoHeader;
        let advert = Advert::parse(src, dst, msg, |version, msg| {
            let standard = V3Checksum::PseudoHeader;
            if checksum_ok(version, standard, src, dst, msg) {
                return Ok(());
            }
            if version == Version::V3 && src.is_ipv4() {
                let group = IpAddr::V4(VRRP_MCAST_V4);
                if dst != group && checksum_ok(version, standard, src, group, msg) {
                    form = ChecksumForm::MulticastGroup;
                    return Ok(());
                }
                if checksum_ok(version, V3Checksum::AsV2, src, dst, msg) {
                    form = ChecksumForm::MessageOnly;
                    return Ok(());
                }
            }
            Err(bad_checksum(version, standard, src, dst, msg))
        })?;
        Ok((advert, form))
    }

    /// The checks and field parsing shared by both decoders; `checksum` verifies the
    /// checksum (after the length check, before any field past the header is trusted).
    fn parse(
        src: IpAddr,
        dst: IpAddr,
        msg: &[u8],
        checksum: impl FnOnce(Version, &[u8]) -> Result<(), DecodeError>,
    ) -> Result<Advert, DecodeError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(DecodeError::FamilyMismatch);
        }
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::Truncated { len: msg.len(), need: HEADER_LEN });
        }
        let version = match msg[0] >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            v => return Err(DecodeError::BadVersion(v)),
        };
        let ty = msg[0] & 0x0f;
        if ty != TYPE_ADVERTISEMENT {
            return Err(DecodeError::BadType(ty));
        }
        if version == Version::V2 && src.is_ipv6() {
            return Err(DecodeError::V2OverIpv6);
        }
        let vrid = msg[1];
        if vrid == 0 {
            return Err(DecodeError::BadVrid);
        }
        let priority = msg[2];
        let count = msg[3];
        let alen = addr_len(&src);
        let expected = message_len(version, alen, usize::from(count));
        if msg.len() != expected {
            return Err(DecodeError::LengthMismatch { count, expected, actual: msg.len() });
        }
        checksum(version, msg)?;
        let (adver_int_cs, auth_type) = match version {
            Version::V2 => (u16::from(msg[5]) * 100, Some(msg[4])),
            // RFC 5798 / RFC 9568 §5.2.5: the reserved bits MUST be zero on transmit and
            // are ignored on receive (keepalived masks the interval with 0x0fff too).
            Version::V3 => (u16::from_be_bytes([msg[4] & 0x0f, msg[5]]), None),
        };
        let body = &msg[HEADER_LEN..HEADER_LEN + alen * usize::from(count)];
        let addrs = body
            .chunks_exact(alen)
            .map(|c| match alen {
                4 => IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])),
                _ => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(c);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
            })
            .collect();
        let auth = match auth_type {
            None | Some(0) => Auth::None,
            Some(1) => {
                let mut data = [0u8; AUTH_DATA_LEN];
                data.copy_from_slice(&msg[msg.len() - AUTH_DATA_LEN..]);
                Auth::SimplePassword(data)
            }
            Some(2) => return Err(DecodeError::AuthAhUnsupported),
            Some(t) => return Err(DecodeError::BadAuthType(t)),
        };
        Ok(Advert { version, vrid, priority, adver_int_cs, addrs, auth })
    }

    /// Length of the encoded message.
    pub fn encoded_len(&self) -> usize {
        let alen = self.addrs.first().map_or(4, addr_len);
        message_len(self.version, alen, self.addrs.len())
    }

    /// Encode for sending from `src` to `dst` (multicast group or unicast peer);
    /// the checksum is computed for that pair.
    pub fn encode(
        &self,
        src: IpAddr,
        dst: IpAddr,
        mode: V3Checksum,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_into(src, dst, mode, &mut buf)?;
        Ok(buf)
    }

    /// As [`Advert::encode`], appending to `buf`.
    pub fn encode_into(
        &self,
        src: IpAddr,
        dst: IpAddr,
        mode: V3Checksum,
        buf: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if self.vrid == 0 {
            return Err(EncodeError::BadVrid);
        }
        let v4 = src.is_ipv4();
        if dst.is_ipv4() != v4 || self.addrs.iter().any(|a| a.is_ipv4() != v4) {
            return Err(EncodeError::FamilyMismatch);
        }
        let count = u8::try_from(self.addrs.len())
            .map_err(|_| EncodeError::TooManyAddrs(self.addrs.len()))?;
        let (b4, b5) = match self.version {
            Version::V2 => {
                if !v4 {
                    return Err(EncodeError::V2OverIpv6);
                }
                let cs = self.adver_int_cs;
                if cs == 0 || !cs.is_multiple_of(100) || cs > V2_MAX_ADVER_INT_CS {
                    return Err(EncodeError::BadInterval(cs));
                }
                (self.auth.type_code(), (cs / 100) as u8)
            }
            Version::V3 => {
                if self.auth != Auth::None {
                    return Err(EncodeError::AuthOnV3);
                }
                let cs = self.adver_int_cs;
                if cs > V3_MAX_ADVER_INT_CS {
                    return Err(EncodeError::BadInterval(cs));
                }
                let [hi, lo] = cs.to_be_bytes();
                (hi, lo)
            }
        };
        let start = buf.len();
        buf.extend_from_slice(&[
            (self.version.number() << 4) | TYPE_ADVERTISEMENT,
            self.vrid,
            self.priority,
            count,
            b4,
            b5,
            0,
            0,
        ]);
        for a in &self.addrs {
            match a {
                IpAddr::V4(a) => buf.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => buf.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            match self.auth {
                Auth::None => buf.extend_from_slice(&[0u8; AUTH_DATA_LEN]),
                Auth::SimplePassword(d) => buf.extend_from_slice(&d),
            }
        }
        let csum = compute_checksum(self.version, mode, src, dst, &buf[start..]);
        buf[start + 6..start + 8].copy_from_slice(&csum.to_be_bytes());
        Ok(())
    }
}

/// Decode what the raw socket delivers: the VRRP message plus the IP fields
/// (IPv4 TTL from the header, IPv6 hop limit from the IPV6_HOPLIMIT cmsg). Any checksum
/// form in use is accepted ([`Advert::decode_any_checksum`]).
pub fn decode(
    src: IpAddr,
    dst: IpAddr,
    hop_limit: u8,
    msg: &[u8],
    opts: &RxOptions,
) -> Result<Received, DecodeError> {
    if opts.require_hop_limit_255 && hop_limit != VRRP_TTL {
        return Err(DecodeError::BadHopLimit(hop_limit));
    }
    let (advert, checksum) = Advert::decode_any_checksum(src, dst, msg)?;
    Ok(Received { src, dst, hop_limit, advert, checksum })
}

/// Decode a whole IPv4 packet as an `AF_INET, SOCK_RAW, IPPROTO_VRRP` socket
/// returns it (header included). The kernel has already verified the header
/// checksum; we check version, lengths, protocol and fragmentation.
pub fn decode_ipv4_packet(pkt: &[u8], opts: &RxOptions) -> Result<Received, DecodeError> {
    if pkt.len() < 20 {
        return Err(DecodeError::Truncated { len: pkt.len(), need: 20 });
    }
    if pkt[0] >> 4 != 4 {
        return Err(DecodeError::BadIpHeader);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || total < ihl || total > pkt.len() {
        return Err(DecodeError::BadIpHeader);
    }
    // More-fragments flag or a non-zero fragment offset.
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return Err(DecodeError::Fragmented);
    }
    if pkt[9] != IPPROTO_VRRP {
        return Err(DecodeError::NotVrrp(pkt[9]));
    }
    let src = IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]));
    decode(src, dst, pkt[8], &pkt[ihl..total], opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sample_v2() -> Advert {
        Advert {
            version: Version::V2,
            vrid: 51,
            priority: 100,
            adver_int_cs: 100,
            addrs: vec![v4("192.168.1.100")],
            auth: Auth::None,
        }
    }

    /// Hand-computed v2 vector (RFC 1071 arithmetic, checksum field zero):
    /// ```text
    /// 21 33 | 64 01 | 00 01 | 00 00 | c0 a8 | 01 64 | 00 00 ×4 (auth)
    /// 0x2133 + 0x6401 = 0x8534; + 0x0001 = 0x8535; + 0xc0a8 = 0x145dd;
    /// + 0x0164 = 0x14741; fold: 0x4741 + 0x1 = 0x4742; !0x4742 = 0xb8bd.
    /// ```
    #[test]
    fn v2_hand_checked_checksum() {
        let a = sample_v2();
        let bytes =
            a.encode(v4("10.0.0.1"), IpAddr::V4(VRRP_MCAST_V4), V3Checksum::PseudoHeader).unwrap();
        assert_eq!(
            bytes,
            [
                0x21, 0x33, 0x64, 0x01, 0x00, 0x01, 0xb8, 0xbd, 192, 168, 1, 100, 0, 0, 0, 0, 0, 0,
                0, 0
            ]
        );
        // v2 ignores addresses: any src/dst decodes it.
        let back = Advert::decode(v4("10.9.9.9"), v4("10.0.0.2"), &bytes, V3Checksum::PseudoHeader)
            .unwrap();
        assert_eq!(back, a);
    }

    /// Hand-computed v3/IPv4 vector with the pseudo-header:
    /// ```text
    /// message: 31 33 | 64 01 | 00 64 | 00 00 | c0 a8 | 01 64      (len 12)
    /// pseudo:  0a 00 | 00 01 | e0 00 | 00 12 | 00 70 | 00 0c
    /// message sum: 0x3133+0x6401 = 0x9534; +0x0064 = 0x9598; +0xc0a8 = 0x15640;
    ///              +0x0164 = 0x157a4
    /// pseudo sum:  0x0a00+0x0001+0xe000+0x0012+0x0070+0x000c = 0xea8f
    /// total 0x157a4+0xea8f = 0x24233; fold 0x4233+0x2 = 0x4235; !0x4235 = 0xbdca
    /// as-v2 (no pseudo-header): fold 0x57a4+0x1 = 0x57a5; !0x57a5 = 0xa85a
    /// ```
    #[test]
    fn v3_ipv4_hand_checked_checksum() {
        let a = Advert { version: Version::V3, adver_int_cs: 100, ..sample_v2() };
        let src = v4("10.0.0.1");
        let dst = IpAddr::V4(VRRP_MCAST_V4);
        let bytes = a.encode(src, dst, V3Checksum::PseudoHeader).unwrap();
        assert_eq!(bytes, [0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0xbd, 0xca, 192, 168, 1, 100]);
        let compat = a.encode(src, dst, V3Checksum::AsV2).unwrap();
        assert_eq!(&compat[6..8], &[0xa8, 0x5a]);
        // Each mode rejects the other's checksum, and a different dst changes it.
        assert!(matches!(
            Advert::decode(src, dst, &compat, V3Checksum::PseudoHeader),
            Err(DecodeError::BadChecksum { found: 0xa85a, computed: 0xbdca })
        ));
        assert!(Advert::decode(src, dst, &bytes, V3Checksum::AsV2).is_err());
        assert!(Advert::decode(src, v4("10.0.0.2"), &bytes, V3Checksum::PseudoHeader).is_err());
        assert_eq!(Advert::decode(src, dst, &compat, V3Checksum::AsV2).unwrap(), a);
    }

    /// The three VRRPv3/IPv4 checksum forms in use all decode with the default receive
    /// options, each reported as what it is; a checksum of none of them is still rejected.
    #[test]
    fn every_v3_ipv4_checksum_form_in_use_is_accepted() {
        let a = Advert { version: Version::V3, ..sample_v2() };
        let (src, peer) = (v4("10.0.0.1"), v4("10.0.0.2"));
        let group = IpAddr::V4(VRRP_MCAST_V4);
        let rx = |dst: IpAddr, bytes: &[u8]| decode(src, dst, 255, bytes, &RxOptions::default());
        // Multicast: the RFC 5798 form (ha-lb, keepalived) and the RFC 9568 one.
        for (mode, form) in [
            (V3Checksum::PseudoHeader, ChecksumForm::PseudoHeader),
            (V3Checksum::AsV2, ChecksumForm::MessageOnly),
        ] {
            let r = rx(group, &a.encode(src, group, mode).unwrap()).unwrap();
            assert_eq!((r.advert, r.checksum), (a.clone(), form));
        }
        // Unicast: the pseudo-header with the real destination, with the group (keepalived
        // <= 1.3.5), and none.
        let cases = [
            (a.encode(src, peer, V3Checksum::PseudoHeader).unwrap(), ChecksumForm::PseudoHeader),
            (a.encode(src, group, V3Checksum::PseudoHeader).unwrap(), ChecksumForm::MulticastGroup),
            (a.encode(src, peer, V3Checksum::AsV2).unwrap(), ChecksumForm::MessageOnly),
        ];
        for (bytes, form) in &cases {
            let r = rx(peer, bytes).unwrap();
            assert_eq!((&r.advert, r.checksum), (&a, *form));
        }
        // The hand-checked sums above: 0xbdca (pseudo-header to the group), 0xa85a (none).
        assert_eq!(cases[1].0[6..8], [0xbd, 0xca]);
        assert_eq!(cases[2].0[6..8], [0xa8, 0x5a]);
        // Anything else is still a bad checksum, reported against the RFC 5798 form.
        let mut b = cases[0].0.clone();
        b[2] ^= 1;
        assert!(matches!(rx(peer, &b), Err(DecodeError::BadChecksum { .. })));
        // Only VRRPv3 over IPv4 has other forms: v2 and IPv6 keep one.
        let v2 = sample_v2().encode(src, peer, V3Checksum::PseudoHeader).unwrap();
        assert_eq!(rx(peer, &v2).unwrap().checksum, ChecksumForm::PseudoHeader);
        let (s6, d6): (IpAddr, IpAddr) = ("fe80::1".parse().unwrap(), "fe80::2".parse().unwrap());
        let a6 = Advert { addrs: vec!["2001:db8::1".parse().unwrap()], ..a.clone() };
        let to_group = a6.encode(s6, IpAddr::V6(VRRP_MCAST_V6), V3Checksum::PseudoHeader).unwrap();
        assert!(matches!(
            decode(s6, d6, 255, &to_group, &RxOptions::default()),
            Err(DecodeError::BadChecksum { .. })
        ));
    }

    /// Cross-check the pseudo-header checksums against etherparse's independent
    /// one's-complement implementation (it sums native-endian words, hence the
    /// `.to_be()` its own `Ipv4Header::calc_header_checksum` applies too).
    #[test]
    fn v3_checksums_match_etherparse() {
        use etherparse::checksum::Sum16BitWords;
        let a4 = Advert {
            version: Version::V3,
            vrid: 7,
            priority: 200,
            adver_int_cs: 4095,
            addrs: vec![v4("10.1.2.3"), v4("10.1.2.4"), v4("172.16.0.1")],
            auth: Auth::None,
        };
        let (s, d) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        let mut msg = a4.encode(s.into(), d.into(), V3Checksum::PseudoHeader).unwrap();
        let got = u16::from_be_bytes([msg[6], msg[7]]);
        msg[6..8].copy_from_slice(&[0, 0]);
        let want = Sum16BitWords::new()
            .add_4bytes(s.octets())
            .add_4bytes(d.octets())
            .add_2bytes([0, IPPROTO_VRRP])
            .add_2bytes((msg.len() as u16).to_be_bytes())
            .add_slice(&msg)
            .ones_complement()
            .to_be();
        assert_eq!(got, want);

        let a6 = Advert {
            addrs: vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()],
            ..a4.clone()
        };
        let s6: Ipv6Addr = "fe80::a".parse().unwrap();
        let mut msg = a6.encode(s6.into(), VRRP_MCAST_V6.into(), V3Checksum::PseudoHeader).unwrap();
        let got = u16::from_be_bytes([msg[6], msg[7]]);
        msg[6..8].copy_from_slice(&[0, 0]);
        let want = Sum16BitWords::new()
            .add_16bytes(s6.octets())
            .add_16bytes(VRRP_MCAST_V6.octets())
            .add_4bytes((msg.len() as u32).to_be_bytes())
            .add_4bytes([0, 0, 0, IPPROTO_VRRP])
            .add_slice(&msg)
            .ones_complement()
            .to_be();
        assert_eq!(got, want);
        // AsV2 is an IPv4-only knob: IPv6 always uses the pseudo-header.
        let msg2 = a6.encode(s6.into(), VRRP_MCAST_V6.into(), V3Checksum::AsV2).unwrap();
        assert_eq!(u16::from_be_bytes([msg2[6], msg2[7]]), want);
    }

    /// A full IPv4 packet built by etherparse decodes through `decode_ipv4_packet`.
    #[test]
    fn decode_full_ipv4_packet_built_by_etherparse() {
        use etherparse::{IpNumber, PacketBuilder};
        let a = Advert { auth: Auth::password("secret"), ..sample_v2() };
        let (s, d) = ([10, 0, 0, 1], [224, 0, 0, 18]);
        let msg = a.encode(s.into(), d.into(), V3Checksum::PseudoHeader).unwrap();
        let mut pkt = Vec::new();
        PacketBuilder::ipv4(s, d, 255).write(&mut pkt, IpNumber(IPPROTO_VRRP), &msg).unwrap();
        let rx = decode_ipv4_packet(&pkt, &RxOptions::default()).unwrap();
        assert_eq!(rx.src, IpAddr::from(s));
        assert_eq!(rx.dst, IpAddr::from(d));
        assert_eq!(rx.hop_limit, 255);
        assert_eq!(rx.advert, a);

        let mut ttl_pkt = Vec::new();
        PacketBuilder::ipv4(s, d, 254).write(&mut ttl_pkt, IpNumber(IPPROTO_VRRP), &msg).unwrap();
        assert_eq!(
            decode_ipv4_packet(&ttl_pkt, &RxOptions::default()),
            Err(DecodeError::BadHopLimit(254))
        );
        let lax = RxOptions { require_hop_limit_255: false };
        assert!(decode_ipv4_packet(&ttl_pkt, &lax).is_ok());

        let mut udp = Vec::new();
        PacketBuilder::ipv4(s, d, 255).write(&mut udp, IpNumber(17), &msg).unwrap();
        assert_eq!(decode_ipv4_packet(&udp, &RxOptions::default()), Err(DecodeError::NotVrrp(17)));

        let mut frag = pkt.clone();
        frag[6] |= 0x20; // MF
        assert_eq!(decode_ipv4_packet(&frag, &RxOptions::default()), Err(DecodeError::Fragmented));
        assert_eq!(
            decode_ipv4_packet(&pkt[..19], &RxOptions::default()),
            Err(DecodeError::Truncated { len: 19, need: 20 })
        );
        let mut short_total = pkt.clone();
        short_total[3] -= 1; // total length one less than VRRP message needs
        assert!(matches!(
            decode_ipv4_packet(&short_total, &RxOptions::default()),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let mut v6hdr = pkt.clone();
        v6hdr[0] = 0x65;
        assert_eq!(
            decode_ipv4_packet(&v6hdr, &RxOptions::default()),
            Err(DecodeError::BadIpHeader)
        );
    }

    #[test]
    fn v2_simple_password_round_trip_and_padding() {
        let a = Advert { auth: Auth::password("pw"), ..sample_v2() };
        assert_eq!(a.auth, Auth::SimplePassword(*b"pw\0\0\0\0\0\0"));
        assert_eq!(Auth::password("longer-than-8"), Auth::SimplePassword(*b"longer-t"));
        let (s, d) = (v4("10.0.0.1"), IpAddr::V4(VRRP_MCAST_V4));
        let bytes = a.encode(s, d, V3Checksum::PseudoHeader).unwrap();
        assert_eq!(bytes[4], 1);
        assert_eq!(&bytes[bytes.len() - 8..], b"pw\0\0\0\0\0\0");
        assert_eq!(Advert::decode(s, d, &bytes, V3Checksum::PseudoHeader).unwrap(), a);
    }

    /// Re-checksum a tampered v2 message so only the intended check fails.
    fn fix_v2(mut m: Vec<u8>) -> Vec<u8> {
        m[6] = 0;
        m[7] = 0;
        let c = compute_checksum(
            Version::V2,
            V3Checksum::PseudoHeader,
            v4("0.0.0.0"),
            v4("0.0.0.0"),
            &m,
        );
        m[6..8].copy_from_slice(&c.to_be_bytes());
        m
    }

    #[test]
    fn rejections() {
        let (s, d) = (v4("10.0.0.1"), IpAddr::V4(VRRP_MCAST_V4));
        let m = V3Checksum::PseudoHeader;
        let good = sample_v2().encode(s, d, m).unwrap();
        let dec = |b: &[u8]| Advert::decode(s, d, b, m);
        assert_eq!(dec(&good[..7]), Err(DecodeError::Truncated { len: 7, need: 8 }));
        let mut b = good.clone();
        b[0] = 0x41;
        assert_eq!(dec(&fix_v2(b)), Err(DecodeError::BadVersion(4)));
        let mut b = good.clone();
        b[0] = 0x22;
        assert_eq!(dec(&fix_v2(b)), Err(DecodeError::BadType(2)));
        let mut b = good.clone();
        b[1] = 0;
        assert_eq!(dec(&fix_v2(b)), Err(DecodeError::BadVrid));
        let mut b = good.clone();
        b[3] = 2; // count says 2 addresses, payload holds 1
        assert_eq!(
            dec(&fix_v2(b)),
            Err(DecodeError::LengthMismatch { count: 2, expected: 24, actual: 20 })
        );
        let mut b = good.clone();
        b.push(0); // trailing byte
        assert!(matches!(
            dec(&b),
            Err(DecodeError::LengthMismatch { count: 1, expected: 20, actual: 21 })
        ));
        let mut b = good.clone();
        b[2] = 101; // priority changed, checksum not updated
        assert!(matches!(dec(&b), Err(DecodeError::BadChecksum { found: 0xb8bd, .. })));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(dec(&fix_v2(b)), Err(DecodeError::AuthAhUnsupported));
        let mut b = good.clone();
        b[4] = 3;
        assert_eq!(dec(&fix_v2(b)), Err(DecodeError::BadAuthType(3)));
        // v2 over IPv6: a well-formed v2 message received on an IPv6 socket.
        let s6: IpAddr = "fe80::1".parse().unwrap();
        let d6 = IpAddr::V6(VRRP_MCAST_V6);
        assert_eq!(Advert::decode(s6, d6, &good, m), Err(DecodeError::V2OverIpv6));
        assert_eq!(Advert::decode(s, d6, &good, m), Err(DecodeError::FamilyMismatch));

        // v3 reserved bits: RFC 5798 / RFC 9568 §5.2.5 "ignored on reception" (keepalived
        // masks them off too): every value decodes to the same advert, interval intact.
        let a3 = Advert { version: Version::V3, ..sample_v2() };
        for rsvd in 1..=0x0f_u8 {
            let mut b = a3.encode(s, d, V3Checksum::PseudoHeader).unwrap();
            b[4] |= rsvd << 4;
            b[6] = 0;
            b[7] = 0;
            let c = compute_checksum(Version::V3, V3Checksum::PseudoHeader, s, d, &b);
            b[6..8].copy_from_slice(&c.to_be_bytes());
            assert_eq!(Advert::decode(s, d, &b, V3Checksum::PseudoHeader).as_ref(), Ok(&a3));
        }
        // hop limit
        assert_eq!(
            decode(s, d, 64, &good, &RxOptions::default()),
            Err(DecodeError::BadHopLimit(64))
        );
    }

    #[test]
    fn encode_rejections() {
        let (s, d) = (v4("10.0.0.1"), IpAddr::V4(VRRP_MCAST_V4));
        let m = V3Checksum::PseudoHeader;
        let s6: IpAddr = "fe80::1".parse().unwrap();
        let d6 = IpAddr::V6(VRRP_MCAST_V6);
        let a = sample_v2();
        assert_eq!(
            Advert { addrs: vec![], ..a.clone() }.encode(s6, d6, m),
            Err(EncodeError::V2OverIpv6)
        );
        assert_eq!(a.encode(s6, d6, m), Err(EncodeError::FamilyMismatch));
        assert_eq!(a.encode(s, d6, m), Err(EncodeError::FamilyMismatch));
        assert_eq!(
            Advert { adver_int_cs: 150, ..a.clone() }.encode(s, d, m),
            Err(EncodeError::BadInterval(150))
        );
        assert_eq!(
            Advert { adver_int_cs: 0, ..a.clone() }.encode(s, d, m),
            Err(EncodeError::BadInterval(0))
        );
        assert_eq!(Advert { vrid: 0, ..a.clone() }.encode(s, d, m), Err(EncodeError::BadVrid));
        let many = Advert {
            addrs: (0..256u32).map(|i| IpAddr::V4(Ipv4Addr::from(i))).collect(),
            ..a.clone()
        };
        assert_eq!(many.encode(s, d, m), Err(EncodeError::TooManyAddrs(256)));
        let a3 = Advert { version: Version::V3, ..a.clone() };
        assert_eq!(
            Advert { adver_int_cs: 4096, ..a3.clone() }.encode(s, d, m),
            Err(EncodeError::BadInterval(4096))
        );
        assert_eq!(
            Advert { auth: Auth::password("x"), ..a3 }.encode(s, d, m),
            Err(EncodeError::AuthOnV3)
        );
    }

    fn arb_v4() -> impl Strategy<Value = IpAddr> {
        any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x)))
    }
    fn arb_v6() -> impl Strategy<Value = IpAddr> {
        any::<u128>().prop_map(|x| IpAddr::V6(Ipv6Addr::from(x)))
    }

    /// A VRRPv3 advert with fewer than `max_addrs` addresses, and its source and
    /// destination, all drawn from `addr`.
    fn arb_v3<S: Strategy<Value = IpAddr>>(
        addr: fn() -> S,
        max_addrs: usize,
    ) -> impl Strategy<Value = (Advert, IpAddr, IpAddr)> {
        (
            1u8..=255,
            any::<u8>(),
            0u16..=4095,
            proptest::collection::vec(addr(), 0..max_addrs),
            addr(),
            addr(),
        )
            .prop_map(|(vrid, priority, cs, addrs, s, d)| {
                (
                    Advert {
                        version: Version::V3,
                        vrid,
                        priority,
                        adver_int_cs: cs,
                        addrs,
                        auth: Auth::None,
                    },
                    s,
                    d,
                )
            })
    }

    fn arb_case() -> impl Strategy<Value = (Advert, IpAddr, IpAddr)> {
        let v2 = (
            1u8..=255,
            any::<u8>(),
            1u16..=255,
            proptest::collection::vec(arb_v4(), 0..20),
            prop_oneof![Just(Auth::None), any::<[u8; 8]>().prop_map(Auth::SimplePassword)],
            arb_v4(),
            arb_v4(),
        )
            .prop_map(|(vrid, priority, secs, addrs, auth, s, d)| {
                (
                    Advert {
                        version: Version::V2,
                        vrid,
                        priority,
                        adver_int_cs: secs * 100,
                        addrs,
                        auth,
                    },
                    s,
                    d,
                )
            });
        prop_oneof![v2, arb_v3(arb_v4, 20), arb_v3(arb_v6, 10)]
    }

    proptest! {
        #[test]
        fn round_trip((a, s, d) in arb_case(), compat in any::<bool>()) {
            let mode = if compat { V3Checksum::AsV2 } else { V3Checksum::PseudoHeader };
            let bytes = a.encode(s, d, mode).unwrap();
            prop_assert_eq!(bytes.len(), a.encoded_len());
            prop_assert_eq!(Advert::decode(s, d, &bytes, mode), Ok(a.clone()));
            // Receive accepts either mode and names the form that verified: the first in
            // order whose sum matches (sums of different forms may coincide).
            let rx = decode(s, d, 255, &bytes, &RxOptions::default()).unwrap();
            let sum = |d: IpAddr, m: V3Checksum| a.encode(s, d, m).unwrap()[6..8].to_vec();
            let group = IpAddr::V4(VRRP_MCAST_V4);
            let want = if bytes[6..8] == sum(d, V3Checksum::PseudoHeader)[..] {
                ChecksumForm::PseudoHeader
            } else if d != group && bytes[6..8] == sum(group, V3Checksum::PseudoHeader)[..] {
                ChecksumForm::MulticastGroup
            } else {
                ChecksumForm::MessageOnly
            };
            prop_assert_eq!(rx.checksum, want);
            prop_assert_eq!(rx.advert, a);
        }

        /// Flipping any single bit of a valid message is always caught (the checksum
        /// detects every single-bit error), and decoding never panics.
        #[test]
        fn single_bit_flips_rejected((a, s, d) in arb_case(), bit in any::<prop::sample::Index>()) {
            let mut bytes = a.encode(s, d, V3Checksum::PseudoHeader).unwrap();
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(Advert::decode(s, d, &bytes, V3Checksum::PseudoHeader).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), six in any::<bool>()) {
            let (s, d) = if six {
                (IpAddr::V6(Ipv6Addr::LOCALHOST), IpAddr::V6(VRRP_MCAST_V6))
            } else {
                (v4("10.0.0.1"), IpAddr::V4(VRRP_MCAST_V4))
            };
            let _ = Advert::decode(s, d, &bytes, V3Checksum::PseudoHeader);
            let _ = decode_ipv4_packet(&bytes, &RxOptions::default());
        }
    }
}
