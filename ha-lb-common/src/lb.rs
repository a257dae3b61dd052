//! Load-balancing maps: services, real servers, backend sets, lookup rings, connection
//! tracking, persistence templates and counters.
//!
//! Layout (all sizes fixed at compile time; see the `*_MAX` constants):
//!
//! ```text
//! LB_SERVICES   Hash    LbServiceKey{addr,port,proto,family}   -> LbService{id, active_slot, lb_algo, lb_kind, ...}
//! LB_SETS       Array   id*2 + slot                             -> LbBackendSet{ring_chunk, ring_len, n_reals, reals[], weights[]}
//! LB_RING       Array   chunk index                             -> LbRingChunk{reals[64]}   (rr/wrr/sh/mh lookup tables)
//! LB_REALS      Array   real id                                 -> LbReal{addr, port, family, flags, service_id, gen}
//! LB_CONNS      LRU     LbFlowKey (5-tuple as seen on the wire) -> LbFlow (forward entry, or NAT reply entry)
//! LB_FLOW_CACHE Array   cpu * 8192 + hash of the IPv4 5-tuple   -> recently sent flows (eBPF side only; see below)
//! LB_CACHE_EPOCH Array  0                                       -> u32, bumped to invalidate every LB_FLOW_CACHE slot
//! LB_CACHE_STATS PerCpuArray 0/1                                -> u64 flow-cache hits / fills
//! LB_PERSIST    LRU     LbPersistKey{service_id, client addr}   -> LbPersist{real_id, real_gen, last_seen}
//! LB_REAL_LOAD  Array   real id                                 -> u64 live active-connection estimate (lc/wlc)
//! LB_RR         PerCpuArray service id                          -> u32 round-robin cursor
//! LB_SERVICE_STATS PerCpuArray service id                       -> LbTraffic (exact, per CPU)
//! LB_REAL_STATS PerCpuArray real id                             -> LbTraffic (exact, per CPU)
//! LB_REASONS    PerCpuArray LbReason                            -> u64
//! LB_CONFIG     Array   0                                       -> LbConfig (flow timeouts, flags)
//! LB_SCRATCH    PerCpuArray 0                                   -> per-packet temporaries (eBPF side only)
//! ```
//!
//! A service switches its whole backend set in one `LB_SERVICES` update: user space writes the
//! new set (and its ring) into the inactive slot `id*2 + (1 - active_slot)`, then replaces the
//! service value with `active_slot` flipped. Hash-map updates replace the element as a whole,
//! so a packet sees either the old or the new set, never a half-written one.
//!
//! `LB_FLOW_CACHE` is a per-CPU exact-match cache in front of `LB_CONNS` (the data path's
//! `cache` module): user space never reads it, but must bump `LB_CACHE_EPOCH` whenever it
//! changes `LB_CONNS` (`bpf::lb` does, in every function that writes or deletes flows).
//!
//! Addresses are stored as four 32-bit words exactly as they appear on the wire (network byte
//! order in memory); IPv4 uses word 0 and leaves the others zero. Ports are stored in network
//! byte order too, so the data path compares and copies without swapping.

use bytemuck::{Pod, Zeroable};

pub use crate::vrrp::{FAMILY_V4, FAMILY_V6};

pub const LB_SERVICES: &str = "LB_SERVICES";
pub const LB_SETS: &str = "LB_SETS";
pub const LB_RING: &str = "LB_RING";
pub const LB_REALS: &str = "LB_REALS";
pub const LB_CONNS: &str = "LB_CONNS";
pub const LB_PERSIST: &str = "LB_PERSIST";
pub const LB_CACHE_EPOCH: &str = "LB_CACHE_EPOCH";
/// The flow cache: `LB_FLOW_CACHE_SLOTS` 64-byte slots per possible CPU.
pub const LB_FLOW_CACHE: &str = "LB_FLOW_CACHE";
pub const LB_FLOW_CACHE_SLOTS: u32 = 8192;
/// Per-CPU `u64` counters of the flow cache: [`LB_CACHE_HITS`], [`LB_CACHE_FILLS`].
pub const LB_CACHE_STATS: &str = "LB_CACHE_STATS";
/// Packets sent from a flow-cache slot (no connection-tracking lookup).
pub const LB_CACHE_HITS: u32 = 0;
/// Slots filled by the full path after a send (a miss, a SYN/FIN/RST, or an expired slot).
pub const LB_CACHE_FILLS: u32 = 1;
pub const LB_REAL_LOAD: &str = "LB_REAL_LOAD";
pub const LB_RR: &str = "LB_RR";
pub const LB_SERVICE_STATS: &str = "LB_SERVICE_STATS";
pub const LB_REAL_STATS: &str = "LB_REAL_STATS";
pub const LB_REASONS: &str = "LB_REASONS";
pub const LB_CONFIG: &str = "LB_CONFIG";
/// The MAC of each interface the program is attached to, by ifindex: `Array<LbIfMac>` for
/// ifindexes below [`LB_IF_MAC_DIRECT`] (a lookup the verifier inlines, per packet), else
/// `HashMap<u32, LbIfMac>` [`LB_IF_MAC_HASH`] (ifindexes grow with interface churn).
pub const LB_IF_MAC: &str = "LB_IF_MAC";
pub const LB_IF_MAC_HASH: &str = "LB_IF_MAC_HASH";
pub const LB_IF_MAC_DIRECT: u32 = 4096;
/// Entries of [`LB_IF_MAC_HASH`].
pub const LB_IF_MAC_MAX: u32 = 64;
/// The interfaces the program is attached to (a `DevMapHash`, key and target both the
/// ifindex): where an XDP redirect may go. Filled and emptied with [`LB_IF_MAC`].
pub const LB_TX_PORTS: &str = "LB_TX_PORTS";
pub const LB_TX_PORTS_MAX: u32 = 256;

/// Services (virtual servers) at once; service ids are `0..LB_SERVICES_MAX`.
pub const LB_SERVICES_MAX: u32 = 256;
/// Real servers at once over all services; real ids are `0..LB_REALS_MAX`.
pub const LB_REALS_MAX: u32 = 4096;
/// Real servers per service (the `lc`/`wlc` scan is bounded by this).
pub const LB_REALS_PER_SERVICE: usize = 256;
/// Entries per [`LbRingChunk`].
pub const LB_RING_CHUNK: usize = 64;
/// Chunks in [`LB_RING`]: 16384 * 64 = 1 Mi ring entries shared by all backend sets.
pub const LB_RING_CHUNKS: u32 = 16384;
/// Longest lookup table one backend set may use (a Maglev table for 256 real servers needs
/// a prime >= 25600).
pub const LB_RING_MAX: u32 = 65536;
/// Connection-tracking entries (a NAT flow uses two: forward and reply).
pub const LB_CONNS_MAX: u32 = 262144;
/// Persistence templates.
pub const LB_PERSIST_MAX: u32 = 65536;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Schedulers, keepalived's `lb_algo` names.
pub const LB_ALGO_RR: u8 = 0;
pub const LB_ALGO_WRR: u8 = 1;
pub const LB_ALGO_LC: u8 = 2;
pub const LB_ALGO_WLC: u8 = 3;
pub const LB_ALGO_SH: u8 = 4;
pub const LB_ALGO_MH: u8 = 5;

/// Forwarding methods, keepalived's `lb_kind` names. TUN: IPv4-in-IPv4 (IPIP) to IPv4 real
/// servers.
pub const LB_KIND_NAT: u8 = 0;
pub const LB_KIND_DR: u8 = 1;
pub const LB_KIND_TUN: u8 = 2;

/// [`LbService::flags`]: `sh`/`mh` hash the source port too (IPVS `sh-port`/`mh-port`).
pub const LB_SVC_F_HASH_PORT: u8 = 1;

/// [`LbReal::flags`]: the real server is in its service (cleared when it is removed).
pub const LB_REAL_F_AVAILABLE: u8 = 1;
/// [`LbReal::flags`]: weight 0 — keeps its flows, gets no new ones (not even by persistence).
pub const LB_REAL_F_QUIESCED: u8 = 2;

/// [`LbReal::service_id`] of a real server that left its service or whose service was
/// deleted (the service's id may be given to another service meanwhile).
pub const LB_REAL_NO_SERVICE: u32 = u32::MAX;

/// [`LbFlow::flags`]: this is a NAT reply entry (real server -> client), not a forward one.
pub const LB_FLOW_F_REPLY: u32 = 1;
/// [`LbFlow::flags`]: FIN or RST seen; the connection no longer counts as active.
pub const LB_FLOW_F_CLOSED: u32 = 2;
/// [`LbFlow::flags`]: the service had persistence when the flow started.
pub const LB_FLOW_F_PERSIST: u32 = 4;
/// [`LbFlow::flags`]: forward entry of a DR flow (else NAT). Fixed when the flow starts, as
/// IPVS fixes a connection's forwarding method: a service switched to another `lb_kind` keeps
/// its established flows as they were.
pub const LB_FLOW_F_DR: u32 = 8;
/// [`LbFlow::flags`]: forward entry of a TUN flow (fixed when the flow starts, like DR).
pub const LB_FLOW_F_TUN: u32 = 16;
/// [`LbFlow::flags`]: TCP forward entry of a connection whose client has sent its SYN but not
/// yet acknowledged the real server's answer (IPVS's SYN_RECV): not counted as active (nor in
/// `LbTraffic::established`) until the client's ACK, and expired after
/// [`TCP_SYN_RECV_TIMEOUT_NS`] idle rather than the established timeout.
pub const LB_FLOW_F_HALF_OPEN: u32 = 32;
/// [`LbFlow::flags`] bits 8..16: the service's `persist_prefix` when the flow started (its
/// persistence template's key).
pub const LB_FLOW_PERSIST_PREFIX_SHIFT: u32 = 8;

/// [`LbConfig::flags`]: run the VRRP filter (`ha_lb_vrrp`'s checks) on the frames `ha_lb_xdp`
/// does not forward, for interfaces that carry both VRRP and services.
pub const LB_CFG_F_VRRP_FILTER: u64 = 1;

/// A virtual server: (VIP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct LbServiceKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LbService {
    /// Index into the per-service arrays (`LB_SETS` / 2, `LB_SERVICE_STATS`).
    pub id: u32,
    /// Which of the service's two `LB_SETS` slots is live (0 or 1).
    pub active_slot: u32,
    /// `persistence_timeout` in seconds; 0 = no persistence.
    pub persistence_timeout: u32,
    pub lb_algo: u8,
    pub lb_kind: u8,
    pub flags: u8,
    /// Persistence per network of this prefix length (keepalived `persistence_granularity`);
    /// 0: per client address.
    pub persist_prefix: u8,
}

impl LbService {
    pub const fn set_index(&self) -> u32 {
        self.id * 2 + (self.active_slot & 1)
    }
}

/// One slot of a service's backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LbBackendSet {
    /// First `LB_RING` chunk of this set's lookup table (rr, wrr, sh, mh).
    pub ring_chunk: u32,
    /// Entries in the lookup table (0: no table; `lc`/`wlc` scan `reals` instead).
    pub ring_len: u32,
    /// Valid entries in `reals`/`weights`.
    pub n_reals: u32,
    pub _pad: u32,
    /// Real ids (indexes into `LB_REALS`).
    pub reals: [u32; LB_REALS_PER_SERVICE],
    /// Weights, parallel to `reals` (0 = drained).
    pub weights: [u32; LB_REALS_PER_SERVICE],
}

impl Default for LbBackendSet {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LbRingChunk {
    /// Real ids.
    pub reals: [u32; LB_RING_CHUNK],
}

impl Default for LbRingChunk {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LbReal {
    pub addr: [u32; 4],
    /// Network byte order (NAT rewrites to it; DR and TUN keep the virtual port).
    pub port: u16,
    pub family: u8,
    /// `LB_REAL_F_*`.
    pub flags: u8,
    /// The service this real server belongs to ([`LB_REAL_NO_SERVICE`]: none any more).
    pub service_id: u32,
    /// Incremented whenever the id is given to a new real server; flows and templates that
    /// carry another generation are stale.
    pub gen: u32,
    /// TUN: which of `tun_srcs` is live (0 or 1; see [`LbReal::tun_src`]).
    pub tun_slot: u32,
    /// TUN: the outer source address (this director's address toward the real server, of
    /// the real server's family; IPv4 in word 0), wire order, in slot `tun_slot`; all zero
    /// otherwise.
    pub tun_srcs: [[u32; 4]; 2],
}

impl LbReal {
    /// TUN: the live outer source address.
    ///
    /// User space rewrites a live entry in place (a weight change, a new TUN source), and an
    /// array map update copies the value without a lock: a packet reading the entry meanwhile
    /// can see some bytes old and some new. Every field keeps its bytes in such a rewrite
    /// (address, port, service and generation are those of the same real server), but the
    /// flags byte (one byte: old or new) and the TUN source, 16 bytes for IPv6 that a reader
    /// could see half old and half new: a bogus outer source. Hence two slots: a new source
    /// is written to the other slot first (the live one rewritten with its own bytes), then
    /// `tun_slot` moves to it (one byte changes).
    #[inline(always)]
    pub fn tun_src(&self) -> &[u32; 4] {
        &self.tun_srcs[(self.tun_slot & 1) as usize]
    }
}

/// A connection-tracking key: the 5-tuple as it appears on the wire for the entry's direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct LbFlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

impl LbFlowKey {
    /// The key of the flow direction `src:sport -> dst:dport` (addresses and ports as on the
    /// wire).
    pub fn new(
        family: u8,
        proto: u8,
        (src, sport): ([u32; 4], u16),
        (dst, dport): ([u32; 4], u16),
    ) -> LbFlowKey {
        LbFlowKey { src, dst, sport, dport, proto, family, _pad: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LbFlow {
    pub real_id: u32,
    pub real_gen: u32,
    pub service_id: u32,
    /// `LB_FLOW_F_*`.
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at tick resolution) of the last packet,
    /// refreshed at most once a second.
    pub last_seen_ns: u64,
    /// Forward entry: the real server's address/port. Reply entry: the VIP/port to restore.
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    /// Next-hop cache: the largest IP packet length the cached route was checked for (MTU);
    /// 0 = nothing cached. Written by the data path only.
    pub nh_len: u16,
    /// Next-hop cache: the egress interface.
    pub nh_ifindex: u32,
    /// Next-hop cache: destination and source MAC, as the Ethernet header's first 12 bytes.
    pub nh_macs: [u16; 6],
    pub _pad32: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct LbPersistKey {
    pub service_id: u32,
    pub family: u8,
    pub _pad8: u8,
    pub _pad16: u16,
    pub client: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LbPersist {
    pub real_id: u32,
    pub real_gen: u32,
    pub last_seen_ns: u64,
}

/// Per-CPU counters of a service or real server: `in_*` is client -> real server, `out_*`
/// real server -> client (NAT only; DR replies bypass the director). Connections in the table
/// are `sum(new_conns) - sum(closed_conns) - expired` (expired: counted by the user-space
/// sweeper; this is the load lc/wlc schedule by); of those, the active (established) ones
/// are `sum(established) - (sum(closed_conns) - sum(aborted)) - expired`, the others
/// half-open (`LB_FLOW_F_HALF_OPEN`, IPVS's inactive SYN_RECV connections).
///
/// Exact, because each CPU writes only its own copy. The eBPF target offers no atomic
/// read-modify-write to Rust without a crate-level unstable feature, so the one shared counter
/// (`LB_REAL_LOAD`, read by lc/wlc) is a plain increment that can lose an update when two CPUs
/// race; user space resynchronises it from these exact counters (`sync_load`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LbTraffic {
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    pub new_conns: u64,
    /// Connections closed (FIN/RST, rescheduled), each once, half-open ones too.
    pub closed_conns: u64,
    /// Connections that became established: a TCP flow at its client's first ACK, a UDP flow
    /// when it is created.
    pub established: u64,
    /// Half-open connections closed before their client's ACK (in `closed_conns` too).
    pub aborted: u64,
}

/// How long a half-open TCP flow ([`LB_FLOW_F_HALF_OPEN`]) may stay idle: IPVS's SYN_RECV
/// timeout (`tcp_timeouts[IP_VS_TCP_S_SYN_RECV]`, 60 s; ipvsadm does not set it either).
pub const TCP_SYN_RECV_TIMEOUT_NS: u64 = 60_000_000_000;

/// Flow timeouts (IPVS defaults: TCP 900 s, TCP after FIN/RST 120 s, UDP 300 s).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LbConfig {
    pub tcp_timeout_ns: u64,
    pub tcp_fin_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// `LB_CFG_F_*`.
    pub flags: u64,
}

impl LbConfig {
    pub const DEFAULT: LbConfig = LbConfig {
        tcp_timeout_ns: 900_000_000_000,
        tcp_fin_timeout_ns: 120_000_000_000,
        udp_timeout_ns: 300_000_000_000,
        flags: 0,
    };
}

impl Default for LbConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Value of [`LB_IF_MAC`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LbIfMac {
    pub mac: [u8; 6],
    /// 1: the program is attached to this interface (an `LB_IF_MAC` array slot of 0 is free).
    pub attached: u8,
    pub _pad: u8,
}

/// Why the forwarding program forwarded, passed or dropped a frame. Indexes `LB_REASONS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbReason {
    /// Client -> VIP, rewritten to a real server (NAT) and sent.
    NatIn = 0,
    /// Real server -> client, rewritten back to the VIP and sent.
    NatOut = 1,
    /// Client -> VIP, Ethernet header rewritten to a real server (DR) and sent.
    Dr = 2,
    /// TCP/UDP not for a service and not a NAT reply (nor the reply of a real server that has
    /// left its service since: no longer translated): passed untouched.
    NotService = 3,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    NotIp = 4,
    /// 802.1Q/802.1ad tagged: passed untouched (VLANs are not parsed).
    Vlan = 5,
    /// Shorter than its headers claim: passed untouched (the stack drops it).
    Truncated = 6,
    /// IP version/IHL/length fields inconsistent: passed untouched (the stack drops it).
    BadIpHeader = 7,
    /// IPv4 with options: passed untouched.
    IpOptions = 8,
    /// IPv4 fragment: passed untouched.
    Fragment = 9,
    /// IPv6 with extension headers: passed untouched.
    Ipv6Ext = 10,
    /// Neither TCP nor UDP (nor an ICMP error about a known flow): passed untouched.
    NotTcpUdp = 11,
    /// TCP data offset < 5: passed untouched.
    BadL4Header = 12,
    /// A service with no real server able to take a new flow: dropped.
    NoRealServer = 13,
    /// No neighbour entry for the next hop: NAT passes the rewritten packet so the kernel
    /// resolves it and forwards; DR drops (passing would deliver it to the local VIP).
    NoNeigh = 14,
    /// The route to the destination is unreachable/blackhole/prohibit: dropped.
    FibUnreachable = 15,
    /// Egress MTU too small and not answered (`too_big_answered`): an IPv4 packet without DF;
    /// NAT passes it translated (the kernel fragments it), DR and TUN drop it.
    FragNeeded = 16,
    /// Any other FIB result (forwarding disabled on the ingress interface, local
    /// destination, ...): NAT passes the rewritten packet, DR drops.
    FibOther = 17,
    /// A flow whose real server was removed (or whose state expired, or a SYN reusing the
    /// ports of a closed one) was scheduled again. Counted besides how it was sent.
    Rescheduled = 18,
    /// The connection-tracking insert failed: forwarded anyway, but the flow is not sticky.
    ConntrackFull = 19,
    /// Unicast to another host's MAC (a switch flooding an unknown destination): passed to
    /// the kernel, which drops it, so two directors never both forward a flooded frame.
    /// (Multicast and broadcast frames are everyone's and not counted here.)
    OtherHost = 20,
    /// An ICMP error about a flow's packet to the client (sent to the VIP) forwarded to the
    /// flow's real server (NAT: translated back to the real server's addresses).
    IcmpIn = 21,
    /// An ICMP error about a NAT flow's packet to a real server, translated back to the VIP
    /// and forwarded to the client.
    IcmpOut = 22,
    /// Client -> VIP, encapsulated in IPIP to a real server (TUN) and sent.
    Tun = 23,
    /// A packet of a flow too long for the path (IPv4 with DF, IPv6), answered to its sender
    /// with ICMP "fragmentation needed" / ICMPv6 "packet too big", as IPVS does.
    TooBigAnswered = 24,
    /// A TCP segment other than a SYN (an ACK, a SYN+ACK, a RST, ...) to a service, with no
    /// flow: not scheduled (IPVS schedules TCP on a SYN only) but passed to the kernel, which
    /// answers a local VIP with a RST. sh/mh services adopt such a segment instead (but a
    /// RST or a SYN+ACK): [`LbReason::Adopted`].
    TcpNoFlow = 25,
    /// sh/mh: a TCP segment other than a SYN with no flow (its entry evicted, or lost with a
    /// restarted or failed-over director without connection sync) sent to the real server
    /// the hash picks — the one it was on, while the set is unchanged — and its flow
    /// recorded half-open (established at the client's next ACK), without counting a new
    /// connection. Counted besides how it was sent.
    Adopted = 26,
    /// XDP: the route leaves by an interface ha-lb's XDP program is not attached to (a
    /// bridge, a VLAN or macvlan device, a NIC without it), where an XDP redirect would be
    /// dropped after the program returned. NAT packets and ICMP errors pass translated, for
    /// the kernel to forward; DR and TUN drop (the kernel would deliver a DR packet to the
    /// local VIP, and refuse a TUN packet's local outer source).
    EgressNoXdp = 27,
}

impl LbReason {
    pub const COUNT: u32 = 28;
    pub const ALL: [LbReason; 28] = [
        LbReason::NatIn,
        LbReason::NatOut,
        LbReason::Dr,
        LbReason::NotService,
        LbReason::NotIp,
        LbReason::Vlan,
        LbReason::Truncated,
        LbReason::BadIpHeader,
        LbReason::IpOptions,
        LbReason::Fragment,
        LbReason::Ipv6Ext,
        LbReason::NotTcpUdp,
        LbReason::BadL4Header,
        LbReason::NoRealServer,
        LbReason::NoNeigh,
        LbReason::FibUnreachable,
        LbReason::FragNeeded,
        LbReason::FibOther,
        LbReason::Rescheduled,
        LbReason::ConntrackFull,
        LbReason::OtherHost,
        LbReason::IcmpIn,
        LbReason::IcmpOut,
        LbReason::Tun,
        LbReason::TooBigAnswered,
        LbReason::TcpNoFlow,
        LbReason::Adopted,
        LbReason::EgressNoXdp,
    ];
    /// The name used in logs, status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            LbReason::NatIn => "nat_in",
            LbReason::NatOut => "nat_out",
            LbReason::Dr => "dr",
            LbReason::NotService => "not_service",
            LbReason::NotIp => "not_ip",
            LbReason::Vlan => "vlan",
            LbReason::Truncated => "truncated",
            LbReason::BadIpHeader => "bad_ip_header",
            LbReason::IpOptions => "ip_options",
            LbReason::Fragment => "fragment",
            LbReason::Ipv6Ext => "ipv6_ext",
            LbReason::NotTcpUdp => "not_tcp_udp",
            LbReason::BadL4Header => "bad_l4_header",
            LbReason::NoRealServer => "no_real_server",
            LbReason::NoNeigh => "no_neigh",
            LbReason::FibUnreachable => "fib_unreachable",
            LbReason::FragNeeded => "frag_needed",
            LbReason::FibOther => "fib_other",
            LbReason::Rescheduled => "rescheduled",
            LbReason::ConntrackFull => "conntrack_full",
            LbReason::OtherHost => "other_host",
            LbReason::IcmpIn => "icmp_in",
            LbReason::IcmpOut => "icmp_out",
            LbReason::Tun => "tun",
            LbReason::TooBigAnswered => "too_big_answered",
            LbReason::TcpNoFlow => "tcp_no_flow",
            LbReason::Adopted => "adopted",
            LbReason::EgressNoXdp => "egress_no_xdp",
        }
    }
}

crate::impl_user_pod!(
    LbServiceKey,
    LbService,
    LbBackendSet,
    LbRingChunk,
    LbReal,
    LbFlowKey,
    LbFlow,
    LbPersistKey,
    LbPersist,
    LbTraffic,
    LbConfig,
    LbIfMac,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<LbServiceKey>(), 20);
        assert_eq!(core::mem::size_of::<LbService>(), 16);
        assert_eq!(core::mem::size_of::<LbFlowKey>(), 40);
        assert_eq!(core::mem::size_of::<LbFlow>(), 64);
        assert_eq!(core::mem::size_of::<LbReal>(), 64);
        assert_eq!(core::mem::size_of::<LbPersistKey>(), 24);
        assert_eq!(core::mem::size_of::<LbBackendSet>(), 16 + 8 * LB_REALS_PER_SERVICE);
        assert_eq!(LbReason::ALL.len() as u32, LbReason::COUNT);
        for (i, r) in LbReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
