//! Maps of the benchmark programs (`cargo xtask bench dataplane`): a live-frames UDP
//! generator, an XDP_DROP sink with a counter, an XDP_PASS stub and an XDP_REDIRECT ceiling.
//! None of them is part of the load balancer; they live in the same object so the bench
//! needs nothing but ha-lb's own build.

use bytemuck::{Pod, Zeroable};

/// Program: rewrites the whole Ethernet/IPv4/UDP header from [`BENCH_GEN_CONFIG`] and
/// returns XDP_TX. Run with `BPF_PROG_RUN` + `BPF_F_TEST_XDP_LIVE_FRAMES`.
pub const PROG_BENCH_GEN: &str = "hlb_bench_gen";
/// Program: counts the frame in [`BENCH_SINK_STATS`] and returns XDP_DROP.
pub const PROG_BENCH_SINK: &str = "hlb_bench_sink";
/// Program: XDP_PASS and nothing else (gives a veth NAPI without changing anything).
pub const PROG_BENCH_PASS: &str = "hlb_bench_pass";
/// Program: XDP_DROP and nothing else (the floor of a director).
pub const PROG_BENCH_DROP: &str = "hlb_bench_drop";
/// Program: redirects every frame to the ifindex in [`BENCH_REDIRECT`] (the ceiling of a
/// forwarding director).
pub const PROG_BENCH_REDIRECT: &str = "hlb_bench_redirect";
pub const PROG_BENCH_REWRITE: &str = "hlb_bench_rewrite";
pub const PROG_BENCH_TC_REDIRECT: &str = "hlb_bench_tc_redirect";

/// Map name: `Array<BenchGenConfig>` with one entry.
pub const BENCH_GEN_CONFIG: &str = "BENCH_GEN_CONFIG";
/// Map name: `PerCpuArray<u64>` with one entry: frames the generator produced.
pub const BENCH_GEN_SEQ: &str = "BENCH_GEN_SEQ";
/// Map name: `PerCpuArray<u64>` indexed by [`BenchSinkCounter`].
pub const BENCH_SINK_STATS: &str = "BENCH_SINK_STATS";
/// Map name: `Array<u32>` with one entry: the ifindex the redirect program sends to.
pub const BENCH_REDIRECT: &str = "BENCH_REDIRECT";

/// Indexes of [`BENCH_SINK_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchSinkCounter {
    Frames = 0,
    Bytes = 1,
}

impl BenchSinkCounter {
    pub const COUNT: u32 = 2;
}

/// What the generator writes into every frame. Addresses and ports in network byte order
/// as they appear on the wire (MACs as bytes); the UDP payload (zeros) fills the rest of the
/// frame `data_in` gave. Checksums (IPv4 header and UDP) are computed by the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchGenConfig {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// IPv4 source, network byte order.
    pub saddr: u32,
    /// IPv4 destination, network byte order.
    pub daddr: u32,
    /// First UDP source port (host order); frame `n` uses `sport_base + n % sport_count`.
    pub sport_base: u16,
    /// Number of source ports (flows); 0 is treated as 1.
    pub sport_count: u16,
    /// UDP destination port (host order).
    pub dport: u16,
    pub ttl: u8,
    pub _pad: u8,
}

crate::impl_user_pod!(BenchGenConfig);
