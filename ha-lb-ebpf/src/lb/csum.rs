//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! Every value is used exactly as loaded from the packet (wire order in memory); one's
//! complement sums do not depend on byte order (RFC 1071 §2(B)), so nothing is swapped.

#[inline(always)]
fn fold(s: u32) -> u16 {
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[inline(always)]
fn add32(s: u32, v: u32) -> u32 {
    s + (v & 0xffff) + (v >> 16)
}

/// The checksum after a 32-bit field changed from `from` to `to`.
#[inline(always)]
pub fn replace4(check: u16, from: u32, to: u32) -> u16 {
    !fold(add32(add32((!check) as u32, !from), to))
}

/// The TCP/UDP checksum (whose pseudo-header holds the addresses) after an IPv4 address and
/// a port changed.
#[inline(always)]
pub fn replace_addr4_port(check: u16, from: u32, to: u32, from_port: u16, to_port: u16) -> u16 {
    let s = add32(add32((!check) as u32, !from), to);
    !fold(s + (!from_port) as u32 + to_port as u32)
}

/// The TCP/UDP checksum after an IPv6 address (4 words) and a port changed.
#[inline(always)]
pub fn replace_addr6_port(
    check: u16,
    from: &[u32; 4],
    to: &[u32; 4],
    from_port: u16,
    to_port: u16,
) -> u16 {
    let mut s = (!check) as u32;
    s = add32(s, !from[0]);
    s = add32(s, !from[1]);
    s = add32(s, !from[2]);
    s = add32(s, !from[3]);
    s = add32(s, to[0]);
    s = add32(s, to[1]);
    s = add32(s, to[2]);
    s = add32(s, to[3]);
    s += (!from_port) as u32 + to_port as u32;
    !fold(s)
}

/// The checksum after a 16-bit field changed from `from` to `to`.
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    !fold((!check) as u32 + (!from) as u32 + to as u32)
}

/// The checksum after an IPv6 address (4 words) changed.
#[inline(always)]
pub fn replace16(check: u16, from: &[u32; 4], to: &[u32; 4]) -> u16 {
    replace_addr6_port(check, from, to, 0, 0)
}

/// The header checksum of IPv4 header `h` (whose `check` is 0), computed in full.
#[inline(always)]
pub fn ipv4_header(h: &crate::parse::Ipv4Hdr) -> u16 {
    // SAFETY: `Ipv4Hdr` is repr(C), 20 bytes, 4-byte aligned: ten 16-bit words.
    let w: [u16; 10] = unsafe { core::mem::transmute(*h) };
    let mut s = 0u32;
    let mut i = 0;
    while i < 10 {
        s += w[i] as u32;
        i += 1;
    }
    finish(s)
}

/// The checksum of data whose 16-bit words (as loaded) sum to `sum`.
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The value `v` for a checksum field inside data whose other words sum to `sum` such that
/// `sum + 2v ≡ 0` (one's complement): finishing a checksum over that data in place (a
/// CHECKSUM_PARTIAL completion writes `~(sum + v)` there) leaves `v` as it is, and the data
/// sums to `-v` either way. `v = -sum / 2`; halving is a one-bit rotation right
/// (2 · 2^15 ≡ 1 mod 0xffff), in either byte order.
#[inline(always)]
pub fn self_completing(sum: u32) -> u16 {
    finish(sum).rotate_right(1)
}

/// One's complement 32-bit add (end-around carry), as the kernel's `csum_add`.
#[inline(always)]
fn wadd(s: u32, v: u32) -> u32 {
    let (r, c) = s.overflowing_add(v);
    r.wrapping_add(c as u32)
}

/// The checksum difference (a 32-bit partial sum, the kernel's `__wsum`) made by an address of
/// `words` words changing from `from` to `to`: for `bpf_l4_csum_replace` with size 0.
#[inline(always)]
pub fn diff(from: &[u32; 4], to: &[u32; 4], words: usize) -> u32 {
    let mut s = wadd(!from[0], to[0]);
    if words == 4 {
        s = wadd(s, !from[1]);
        s = wadd(s, to[1]);
        s = wadd(s, !from[2]);
        s = wadd(s, to[2]);
        s = wadd(s, !from[3]);
        s = wadd(s, to[3]);
    }
    s
}
