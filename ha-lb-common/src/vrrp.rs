//! The VRRP fast-path filter's maps.
//!
//! The filter runs in XDP on a VRRP instance's interface. IP protocol 112 frames whose
//! TTL/hop limit is not 255 (unless the VRID's instance has unicast peers), whose version or
//! type is wrong, or whose VRID is not configured on that interface are dropped and counted
//! per reason; everything else passes untouched.

use bytemuck::{Pod, Zeroable};

/// Map name: `HashMap<VrrpVridKey, VrrpVridValue>`, filled by the control plane.
pub const VRRP_VRIDS: &str = "VRRP_VRIDS";
/// Map name: `PerCpuArray<u64>` indexed by [`VrrpCounter`].
pub const VRRP_STATS: &str = "VRRP_STATS";
/// Capacity of [`VRRP_VRIDS`].
pub const VRRP_VRIDS_MAX: u32 = 1024;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;

/// Address family tags used in keys.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Bit set in [`VrrpVridValue::versions`] when VRRP version `v` is accepted.
pub const fn version_bit(v: u8) -> u32 {
    1 << v
}

/// A configured VRID on an interface, for one address family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct VrrpVridKey {
    pub ifindex: u32,
    pub vrid: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 2],
}

impl VrrpVridKey {
    pub const fn new(ifindex: u32, vrid: u8, family: u8) -> Self {
        Self { ifindex, vrid, family, _pad: [0; 2] }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VrrpVridValue {
    /// Accepted VRRP versions as a bit set of [`version_bit`].
    pub versions: u32,
    /// Non-zero: the VRID's instance has unicast peers. Their adverts may cross routers, so
    /// any TTL / hop limit passes (keepalived checks TTL 255 only without unicast peers).
    pub unicast: u8,
    pub _pad: [u8; 3],
}

/// Why the filter passed or dropped a VRRP frame. Indexes [`VRRP_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VrrpCounter {
    /// A well-formed advert for a configured VRID: passed to the kernel.
    Passed = 0,
    /// TTL (IPv4) or hop limit (IPv6) was not 255 for a multicast VRID: dropped
    /// (RFC 5798 §7.1).
    BadTtl = 1,
    /// Version not 2/3, or not the version configured for the VRID: dropped.
    BadVersion = 2,
    /// Type was not 1 (ADVERTISEMENT): dropped.
    BadType = 3,
    /// VRID not configured on this interface for this family: dropped.
    UnknownVrid = 4,
    /// Shorter than an IP header plus the 8-byte VRRP header: dropped.
    Truncated = 5,
}

impl VrrpCounter {
    pub const COUNT: u32 = 6;
    pub const ALL: [VrrpCounter; 6] = [
        VrrpCounter::Passed,
        VrrpCounter::BadTtl,
        VrrpCounter::BadVersion,
        VrrpCounter::BadType,
        VrrpCounter::UnknownVrid,
        VrrpCounter::Truncated,
    ];
    /// The name used in logs, status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            VrrpCounter::Passed => "passed",
            VrrpCounter::BadTtl => "bad_ttl",
            VrrpCounter::BadVersion => "bad_version",
            VrrpCounter::BadType => "bad_type",
            VrrpCounter::UnknownVrid => "unknown_vrid",
            VrrpCounter::Truncated => "truncated",
        }
    }
}

crate::impl_user_pod!(VrrpVridKey, VrrpVridValue);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<VrrpVridKey>(), 8);
        assert_eq!(core::mem::size_of::<VrrpVridValue>(), 8);
    }
}
