//! VRRP transport: raw IP sockets for IP protocol 112, IPv4 and IPv6, multicast or unicast.
//!
//! The transport moves the bytes of a VRRP message (the IP payload); the codec in
//! `packet.rs` encodes and decodes them. Because the VRRPv3 checksum covers a pseudo-header
//! with the source and destination addresses, the transport tells the caller which source it
//! sends from ([`VrrpTransport::source`]) and where adverts go ([`VrrpTransport::destinations`]).
//!
//! RFC 5798 §5.1.1.3 / §5.1.2.3: TTL / hop limit 255 on send; the receiver (the state machine)
//! discards anything that arrives with less, so [`ReceivedPacket::ttl`] is passed through.
//! §5.1.2.1: an IPv6 advert's source is the interface's link-local address.
//!
//! One socket per instance carries both directions. Sends set the source address and the
//! outgoing interface per packet (`IP_PKTINFO` / `IPV6_PKTINFO` ancillary data) instead of
//! `bind()`, because binding a raw socket to a local address would also filter what it
//! receives by destination (and multicast adverts would be lost).

use std::future::Future;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

/// IANA protocol number of VRRP.
pub const IPPROTO_VRRP: i32 = 112;
/// IPv4 multicast group of VRRP (RFC 5798 §5.1.1.2).
pub const VRRP_MCAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group of VRRP (RFC 5798 §5.1.2.2).
pub const VRRP_MCAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL / hop limit of every VRRP packet sent (RFC 5798 §5.1.1.3, §5.1.2.3).
pub const VRRP_TTL: u8 = 255;
/// IPv4 TOS / IPv6 traffic class of every advert: precedence 6, "internetwork control"
/// (DSCP CS6), as keepalived sends them (`IPTOS_PREC_INTERNETCONTROL`), so that QoS on the
/// path queues adverts ahead of data traffic and a loaded link does not fake a dead master.
pub const VRRP_TOS: u8 = 0xc0;
/// `SO_PRIORITY` of the socket: `TC_PRIO_INTERACTIVE`, the value keepalived used, so the
/// host's own queueing disciplines send adverts before bulk traffic too.
pub const VRRP_SO_PRIORITY: i32 = 6;

/// Receive buffer: a VRRP message is at most 8 + 255 * 16 bytes plus the IP header, but a
/// jumbo-sized buffer lets us see (and drop) anything oversized instead of truncating silently.
const RECV_BUF: usize = 9216;

/// A network interface, by index and name (`SO_BINDTODEVICE` wants the name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interface {
    pub index: u32,
    pub name: String,
}

/// Where adverts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VrrpMode {
    /// Multicast to `group` (normally [`VRRP_MCAST_V4`] / [`VRRP_MCAST_V6`]) on the interface.
    Multicast { group: IpAddr },
    /// keepalived `unicast_peer`: one copy to each peer. Packets from other sources are
    /// delivered too: the state machine, whose allow-list is exactly these peers, ignores
    /// them and counts them (`ignored_not_allowed`), so a stranger's adverts show in
    /// `ha-lb status` instead of vanishing here.
    Unicast { peers: Vec<IpAddr> },
}

impl VrrpMode {
    /// Multicast to the standard VRRP group of `family_of`'s family.
    pub fn multicast_for(family_of: IpAddr) -> Self {
        let group = match family_of {
            IpAddr::V4(_) => IpAddr::V4(VRRP_MCAST_V4),
            IpAddr::V6(_) => IpAddr::V6(VRRP_MCAST_V6),
        };
        VrrpMode::Multicast { group }
    }
}

/// Everything needed to open a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// The instance's interface (`interface` in keepalived).
    pub interface: Interface,
    /// Source address of every advert: the interface's primary IPv4 address, its IPv6
    /// link-local address, or `unicast_src_ip`. See `vip::Rtnl::vrrp_source_address`.
    pub source: IpAddr,
    pub mode: VrrpMode,
}

/// A VRRP packet as received: the IP payload plus the header facts the state machine and
/// codec need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit as received.
    pub ttl: u8,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// The VRRP message (IP payload, IP header stripped).
    pub payload: Vec<u8>,
}

/// Errors from opening a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("address family mismatch: source {source_addr} vs {what} {addr}")]
    FamilyMismatch { source_addr: IpAddr, what: &'static str, addr: IpAddr },
    #[error("{0} is not a multicast address")]
    NotMulticast(IpAddr),
    #[error("unicast mode needs at least one peer")]
    NoPeers,
    #[error(
        "IPv6 multicast VRRP must be sent from a link-local address (RFC 5798 §5.1.2.1), not {0}"
    )]
    NotLinkLocal(Ipv6Addr),
    #[error("{op} on {ifname}: {source}")]
    Io {
        op: &'static str,
        ifname: String,
        #[source]
        source: io::Error,
    },
}

/// The VRRP transport as the instance task sees it. Futures are `Send` so instance tasks can
/// run on a multi-threaded runtime.
pub trait VrrpTransport: Send + Sync {
    /// Source address every advert is sent from (for the VRRPv3 checksum pseudo-header).
    fn source(&self) -> IpAddr;
    /// Where an advert goes: the multicast group, or every unicast peer.
    fn destinations(&self) -> &[IpAddr];
    /// Send one VRRP message (IP payload) to `dst` with TTL / hop limit 255.
    fn send(&self, dst: IpAddr, payload: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Receive the next VRRP packet on the instance interface.
    fn recv(&self) -> impl Future<Output = io::Result<ReceivedPacket>> + Send;
}

/// The real transport: one raw socket (`SOCK_RAW`, protocol 112) bound to the interface.
#[derive(Debug)]
pub struct RawVrrpSocket {
    fd: AsyncFd<Socket>,
    config: TransportConfig,
    destinations: Vec<IpAddr>,
}

impl RawVrrpSocket {
    /// Open, configure and (in multicast mode) join the group. Needs `CAP_NET_RAW`; must be
    /// called inside a tokio runtime. The socket lives in the caller thread's network namespace.
    pub fn open(config: TransportConfig) -> Result<Self, TransportError> {
        let destinations = validate(&config)?;
        let ifname = config.interface.name.clone();
        let io_err = |op: &'static str| {
            let ifname = ifname.clone();
            move |source: io::Error| TransportError::Io { op, ifname, source }
        };
        let v6 = config.source.is_ipv6();
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_VRRP)))
            .map_err(io_err("socket(SOCK_RAW, 112)"))?;
        sock.bind_device(Some(config.interface.name.as_bytes()))
            .map_err(io_err("SO_BINDTODEVICE"))?;
        let ifindex = config.interface.index;
        // TOS / traffic class before SO_PRIORITY: setting IP_TOS also sets the socket's
        // priority on some kernels.
        let (tos_level, tos_name, tos_op) = if v6 {
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS")
        } else {
            (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS")
        };
        setsockopt_int(&sock, tos_level, tos_name, i32::from(VRRP_TOS)).map_err(io_err(tos_op))?;
        setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_PRIORITY, VRRP_SO_PRIORITY)
            .map_err(io_err("SO_PRIORITY"))?;
        if v6 {
            sock.set_multicast_hops_v6(u32::from(VRRP_TTL))
                .map_err(io_err("IPV6_MULTICAST_HOPS"))?;
            sock.set_unicast_hops_v6(u32::from(VRRP_TTL)).map_err(io_err("IPV6_UNICAST_HOPS"))?;
            sock.set_multicast_loop_v6(false).map_err(io_err("IPV6_MULTICAST_LOOP"))?;
            sock.set_multicast_if_v6(ifindex).map_err(io_err("IPV6_MULTICAST_IF"))?;
            // Only groups this socket joined, not every group any socket joined (Linux >= 4.20).
            if let Err(e) = sock.set_multicast_all_v6(false) {
                tracing::debug!(error = %e, "IPV6_MULTICAST_ALL not supported; continuing");
            }
            sock.set_recv_hoplimit_v6(true).map_err(io_err("IPV6_RECVHOPLIMIT"))?;
            setsockopt_int(&sock, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
                .map_err(io_err("IPV6_RECVPKTINFO"))?;
        } else {
            sock.set_header_included_v4(false).map_err(io_err("IP_HDRINCL"))?;
            sock.set_ttl(u32::from(VRRP_TTL)).map_err(io_err("IP_TTL"))?;
            sock.set_multicast_ttl_v4(u32::from(VRRP_TTL)).map_err(io_err("IP_MULTICAST_TTL"))?;
            sock.set_multicast_loop_v4(false).map_err(io_err("IP_MULTICAST_LOOP"))?;
            set_multicast_if_v4_index(&sock, ifindex).map_err(io_err("IP_MULTICAST_IF"))?;
            sock.set_multicast_all_v4(false).map_err(io_err("IP_MULTICAST_ALL"))?;
            setsockopt_int(&sock, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
                .map_err(io_err("IP_PKTINFO"))?;
        }
        if let VrrpMode::Multicast { group } = config.mode {
            match group {
                IpAddr::V4(g) => {
                    sock.join_multicast_v4_n(&g, &socket2::InterfaceIndexOrAddress::Index(ifindex))
                }
                IpAddr::V6(g) => sock.join_multicast_v6(&g, ifindex),
            }
            .map_err(io_err("multicast join"))?;
        }
        sock.set_nonblocking(true).map_err(io_err("O_NONBLOCK"))?;
        // SAFETY: `Socket` owns its fd, and nothing replaces or closes it while the `AsyncFd`
        // owns the socket.
        let fd = unsafe { AsyncFd::register(sock) }
            .map_err(|e| e.into_parts().1)
            .map_err(io_err("register with tokio"))?;
        Ok(Self { fd, config, destinations })
    }

    pub fn config(&self) -> &TransportConfig {
        &self.config
    }
}

fn validate(config: &TransportConfig) -> Result<Vec<IpAddr>, TransportError> {
    let src = config.source;
    let check = |what: &'static str, addr: IpAddr| {
        if addr.is_ipv4() != src.is_ipv4() {
            Err(TransportError::FamilyMismatch { source_addr: src, what, addr })
        } else {
            Ok(())
        }
    };
    match &config.mode {
        VrrpMode::Multicast { group } => {
            check("group", *group)?;
            if !group.is_multicast() {
                return Err(TransportError::NotMulticast(*group));
            }
            if let IpAddr::V6(s) = src {
                if !is_unicast_link_local(&s) {
                    return Err(TransportError::NotLinkLocal(s));
                }
            }
            Ok(vec![*group])
        }
        VrrpMode::Unicast { peers } => {
            if peers.is_empty() {
                return Err(TransportError::NoPeers);
            }
            for p in peers {
                check("peer", *p)?;
            }
            Ok(peers.clone())
        }
    }
}

/// fe80::/10.
pub fn is_unicast_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

impl VrrpTransport for RawVrrpSocket {
    fn source(&self) -> IpAddr {
        self.config.source
    }

    fn destinations(&self) -> &[IpAddr] {
        &self.destinations
    }

    async fn send(&self, dst: IpAddr, payload: &[u8]) -> io::Result<()> {
        if dst.is_ipv4() != self.config.source.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("destination {dst} is not of the transport's family"),
            ));
        }
        let (src, ifindex) = (self.config.source, self.config.interface.index);
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| send_with_pktinfo(s.as_raw_fd(), src, dst, ifindex, payload)) {
                Ok(res) => {
                    let n = res?;
                    if n != payload.len() {
                        return Err(io::Error::other(format!(
                            "short send: {n} of {} bytes",
                            payload.len()
                        )));
                    }
                    return Ok(());
                }
                Err(_would_block) => continue,
            }
        }
    }

    async fn recv(&self) -> io::Result<ReceivedPacket> {
        let v6 = self.config.source.is_ipv6();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|s| {
                if v6 {
                    recv_v6(s.as_raw_fd(), &mut buf)
                } else {
                    recv_v4(s.as_raw_fd(), &mut buf)
                }
            });
            match res {
                Ok(Ok(Some(pkt))) => return Ok(pkt),
                Ok(Ok(None)) => continue, // malformed or truncated: dropped, logged in recv_v*
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// syscalls

fn setsockopt_int(sock: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: valid fd, pointer to a live c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `IP_MULTICAST_IF` by interface index (`struct ip_mreqn`), so interfaces without an IPv4
/// address can be named too.
fn set_multicast_if_v4_index(sock: &Socket, ifindex: u32) -> io::Result<()> {
    let mreqn = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: ifindex as i32,
    };
    // SAFETY: valid fd, pointer to a live ip_mreqn of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&mreqn as *const libc::ip_mreqn).cast(),
            size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) }
}

fn in6_addr(a: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: a.octets() }
}

/// Scope id for a destination that needs one: link-local unicast or link/interface-local
/// multicast.
fn needs_scope(a: &Ipv6Addr) -> bool {
    is_unicast_link_local(a) || (a.is_multicast() && matches!(a.segments()[0] & 0x000f, 1 | 2))
}

fn send_with_pktinfo(
    fd: RawFd,
    src: IpAddr,
    dst: IpAddr,
    ifindex: u32,
    payload: &[u8],
) -> io::Result<usize> {
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: plain-old-data structs, zero is a valid value for all of them.
    let mut sin: libc::sockaddr_in = unsafe { zeroed() };
    let mut sin6: libc::sockaddr_in6 = unsafe { zeroed() };
    let mut iov =
        libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();

    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr = in_addr(d);
            msg.msg_name = (&mut sin as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let info = libc::in_pktinfo {
                ipi_ifindex: ifindex as i32,
                ipi_spec_dst: in_addr(s),
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            // SAFETY: the buffer is aligned and large enough for one cmsg of this size.
            unsafe { put_cmsg(&mut msg, libc::IPPROTO_IP, libc::IP_PKTINFO, &info) };
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr = in6_addr(d);
            if needs_scope(&d) {
                sin6.sin6_scope_id = ifindex;
            }
            msg.msg_name = (&mut sin6 as *mut libc::sockaddr_in6).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            let info = libc::in6_pktinfo { ipi6_addr: in6_addr(s), ipi6_ifindex: ifindex };
            // SAFETY: as above.
            unsafe { put_cmsg(&mut msg, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info) };
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and destination families differ",
            ))
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Put exactly one control message into `msg`'s (empty, aligned) control buffer.
///
/// # Safety
/// `msg.msg_control` must point at an aligned buffer of at least `CMSG_SPACE(size_of::<T>())`.
unsafe fn put_cmsg<T: Copy>(msg: &mut libc::msghdr, level: i32, ty: i32, value: &T) {
    let space = libc::CMSG_SPACE(size_of::<T>() as u32) as usize;
    msg.msg_controllen = space;
    let cmsg = libc::CMSG_FIRSTHDR(msg);
    (*cmsg).cmsg_level = level;
    (*cmsg).cmsg_type = ty;
    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<T>() as u32) as usize;
    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<T>(), *value);
}

/// Ancillary facts collected from a received message.
#[derive(Default)]
struct Ancillary {
    ifindex: Option<u32>,
    dst6: Option<Ipv6Addr>,
    hoplimit: Option<u8>,
}

/// `recvmsg` into `buf`; returns (bytes, truncated, source sockaddr storage, ancillary facts).
fn recvmsg_raw(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, bool, libc::sockaddr_storage, Ancillary)> {
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: zero is a valid sockaddr_storage / msghdr.
    let mut from: libc::sockaddr_storage = unsafe { zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len();
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
    let mut anc = Ancillary::default();
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* walk stays inside it,
    // and data is read unaligned with the size the kernel documents for each type.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            let data = libc::CMSG_DATA(c);
            if level == libc::IPPROTO_IP && ty == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(data.cast());
                anc.ifindex = Some(info.ipi_ifindex as u32);
            } else if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(data.cast());
                anc.ifindex = Some(info.ipi6_ifindex);
                anc.dst6 = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
            } else if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_HOPLIMIT {
                let hl: i32 = std::ptr::read_unaligned(data.cast());
                anc.hoplimit = u8::try_from(hl).ok();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, truncated, from, anc))
}

fn recv_v4(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<ReceivedPacket>> {
    let (n, truncated, _from, anc) = recvmsg_raw(fd, buf)?;
    if truncated {
        tracing::debug!("oversized VRRP/IPv4 packet dropped");
        return Ok(None);
    }
    let Some(h) = parse_ipv4_header(&buf[..n]) else {
        tracing::debug!(len = n, "malformed IPv4 header on VRRP socket; dropped");
        return Ok(None);
    };
    Ok(Some(ReceivedPacket {
        src: IpAddr::V4(h.src),
        dst: IpAddr::V4(h.dst),
        ttl: h.ttl,
        ifindex: anc.ifindex.unwrap_or(0),
        payload: buf[h.header_len..h.total_len].to_vec(),
    }))
}

fn recv_v6(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<ReceivedPacket>> {
    let (n, truncated, from, anc) = recvmsg_raw(fd, buf)?;
    if truncated {
        tracing::debug!("oversized VRRP/IPv6 packet dropped");
        return Ok(None);
    }
    if i32::from(from.ss_family) != libc::AF_INET6 {
        return Ok(None);
    }
    // SAFETY: ss_family says the storage holds a sockaddr_in6.
    let sin6: libc::sockaddr_in6 =
        unsafe { std::ptr::read((&from as *const libc::sockaddr_storage).cast()) };
    let (Some(dst), Some(ttl), Some(ifindex)) = (anc.dst6, anc.hoplimit, anc.ifindex) else {
        tracing::debug!("IPv6 VRRP packet without pktinfo/hoplimit; dropped");
        return Ok(None);
    };
    Ok(Some(ReceivedPacket {
        src: IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
        dst: IpAddr::V6(dst),
        ttl,
        ifindex,
        payload: buf[..n].to_vec(),
    }))
}

/// The fields of an IPv4 header a raw socket hands us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4HeaderInfo {
    pub header_len: usize,
    /// Total length, clamped to the bytes actually received.
    pub total_len: usize,
    pub ttl: u8,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Parse the IPv4 header at the start of `pkt` (what a Linux raw socket delivers: the header
/// as on the wire, `tot_len` in network order). `None` if it is not a sane IPv4 header.
pub fn parse_ipv4_header(pkt: &[u8]) -> Option<Ipv4HeaderInfo> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if header_len < 20 || header_len > pkt.len() || total < header_len {
        return None;
    }
    Some(Ipv4HeaderInfo {
        header_len,
        total_len: total.min(pkt.len()),
        ttl: pkt[8],
        protocol: pkt[9],
        src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> Interface {
        Interface { index: 2, name: "eth0".into() }
    }

    #[test]
    fn parses_ipv4_header_with_options() {
        let mut pkt =
            vec![0x46, 0xc0, 0, 28, 0, 0, 0, 0, 255, 112, 0, 0, 192, 0, 2, 1, 224, 0, 0, 18];
        pkt.extend_from_slice(&[0x94, 0x04, 0, 0]); // router alert option
        pkt.extend_from_slice(&[0x31, 0x2a, 0x64, 0x01]);
        let h = parse_ipv4_header(&pkt).unwrap();
        assert_eq!(h.header_len, 24);
        assert_eq!(h.total_len, 28);
        assert_eq!(h.ttl, 255);
        assert_eq!(h.protocol, 112);
        assert_eq!(h.src, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(h.dst, VRRP_MCAST_V4);
        assert_eq!(&pkt[h.header_len..h.total_len], &[0x31, 0x2a, 0x64, 0x01]);
    }

    #[test]
    fn rejects_bad_ipv4_headers() {
        assert!(parse_ipv4_header(&[0x45; 10]).is_none());
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        assert!(parse_ipv4_header(&v6).is_none());
        let mut short_ihl = [0u8; 20];
        short_ihl[0] = 0x44;
        assert!(parse_ipv4_header(&short_ihl).is_none());
        let mut long_ihl = [0u8; 20];
        long_ihl[0] = 0x4f;
        assert!(parse_ipv4_header(&long_ihl).is_none());
    }

    #[test]
    fn validates_config() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let ll: IpAddr = "fe80::1".parse().unwrap();
        let glob6: IpAddr = "2001:db8::1".parse().unwrap();
        let cfg = |source, mode| TransportConfig { interface: iface(), source, mode };
        assert_eq!(
            validate(&cfg(v4, VrrpMode::multicast_for(v4))).unwrap(),
            vec![IpAddr::V4(VRRP_MCAST_V4)]
        );
        assert!(validate(&cfg(ll, VrrpMode::multicast_for(ll))).is_ok());
        assert!(matches!(
            validate(&cfg(glob6, VrrpMode::multicast_for(glob6))),
            Err(TransportError::NotLinkLocal(_))
        ));
        assert!(matches!(
            validate(&cfg(v4, VrrpMode::multicast_for(ll))),
            Err(TransportError::FamilyMismatch { .. })
        ));
        assert!(matches!(
            validate(&cfg(v4, VrrpMode::Multicast { group: v4 })),
            Err(TransportError::NotMulticast(_))
        ));
        assert!(matches!(
            validate(&cfg(v4, VrrpMode::Unicast { peers: vec![] })),
            Err(TransportError::NoPeers)
        ));
        assert!(matches!(
            validate(&cfg(v4, VrrpMode::Unicast { peers: vec![glob6] })),
            Err(TransportError::FamilyMismatch { .. })
        ));
        // Unicast IPv6 may use a global unicast_src_ip (keepalived allows it).
        assert_eq!(
            validate(&cfg(
                glob6,
                VrrpMode::Unicast { peers: vec!["2001:db8::2".parse().unwrap()] }
            ))
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn scope_needed_for_link_scoped_destinations() {
        assert!(needs_scope(&VRRP_MCAST_V6));
        assert!(needs_scope(&"fe80::2".parse().unwrap()));
        assert!(!needs_scope(&"2001:db8::2".parse().unwrap()));
        assert!(!needs_scope(&"ff05::12".parse().unwrap()));
    }
}
