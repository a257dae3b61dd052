//! A blocking generic-netlink socket bound to the "IPVS" family: one request at a time (a
//! mutex keeps concurrent callers from reading each other's replies), each answered by an
//! acknowledgement or a dump, within the timeout it was opened with ([`REPLY_TIMEOUT`] for
//! the data plane's requests, [`SYNC_REPLY_TIMEOUT`] for the sync-thread switcher's).

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::wire::{self, NlMsg, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP};

#[derive(Debug, thiserror::Error)]
pub enum GenlError {
    /// The kernel refused the request (`errno`, and its extended-ack message if it gave one).
    #[error("{}{}", std::io::Error::from_raw_os_error(*errno), ext.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel { errno: i32, ext: Option<String> },
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

impl GenlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            GenlError::Kernel { errno, .. } => Some(*errno),
            GenlError::Io(e) => e.raw_os_error(),
            GenlError::Malformed(_) => None,
        }
    }
}

/// The longest the kernel has been seen to hold a request: stopping a sync thread `ipvsadm`
/// had just started held it 5 s in a 6.1 guest, and every other IPVS request waits for the
/// generic-netlink lock meanwhile (see [`super::sync_thread`]).
pub const KERNEL_HOLD_SEEN: Duration = Duration::from_secs(5);

/// How long the data plane's requests wait for their reply. The kernel answers at once
/// unless a sync-thread switch holds it; a request given up (EAGAIN) is still carried out
/// by the kernel later, so the wait has ample headroom over [`KERNEL_HOLD_SEEN`] — an op
/// is not reported failed that was applied. It stays bounded: the daemon's event loop
/// makes these requests, and a stuck kernel must not hold it for ever.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the sync-thread switcher's requests wait: those are the ones the kernel holds
/// until its thread has started or stopped, and they run on a thread of their own, so the
/// wait is much longer — a switch given up early is carried out anyway and then tried again,
/// which turns a held master/backup switch after a failover into two.
pub const SYNC_REPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Genl {
    sock: Socket,
    /// The "IPVS" family's id (assigned by the kernel when ip_vs loads).
    family: u16,
    /// The last sequence number used; held for a whole request and its replies.
    seq: Mutex<u32>,
}

impl Genl {
    /// Opens a NETLINK_GENERIC socket whose replies are waited for up to `timeout` and
    /// resolves the "IPVS" family through nlctrl.
    /// `Kernel { errno: ENOENT }` means the kernel has no IPVS (module not loaded).
    pub fn open(timeout: Duration) -> Result<Genl, GenlError> {
        let sock = new_socket(timeout)?;
        let mut g = Genl { sock, family: wire::GENL_ID_CTRL, seq: Mutex::new(0) };
        let replies = g.transact(wire::get_family)?;
        g.family = replies
            .iter()
            .find_map(|p| wire::family_id(p))
            .ok_or(GenlError::Malformed("GETFAMILY reply without a family id"))?;
        Ok(g)
    }

    pub fn family(&self) -> u16 {
        self.family
    }

    /// Sends the request `build(seq)` makes and collects the generic-netlink payloads of the
    /// replies, until the acknowledgement (requests with NLM_F_ACK) or NLMSG_DONE (dumps).
    pub fn transact(&self, build: impl FnOnce(u32) -> Vec<u8>) -> Result<Vec<Vec<u8>>, GenlError> {
        let mut last = self.seq.lock().unwrap_or_else(PoisonError::into_inner);
        *last = last.wrapping_add(1);
        let seq = *last;
        let req = build(seq);
        self.sock.send(&req, 0)?;
        let mut out = Vec::new();
        loop {
            let (buf, _) = self.sock.recv_from_full()?;
            if buf.is_empty() {
                return Err(GenlError::Malformed("empty datagram"));
            }
            for m in wire::messages(&buf) {
                // Replies to an earlier request that failed half-way are not ours.
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => {
                        let (errno, ext) = wire::error(&m).ok_or(GenlError::Malformed("error"))?;
                        if errno != 0 {
                            return Err(GenlError::Kernel { errno, ext });
                        }
                        return Ok(out);
                    }
                    NLMSG_DONE => return done(&m).map(|()| out),
                    _ => out.push(m.payload.to_vec()),
                }
            }
        }
    }

    /// A request answered by an acknowledgement only.
    pub fn request(&self, build: impl FnOnce(u32) -> Vec<u8>) -> Result<(), GenlError> {
        self.transact(build).map(|_| ())
    }
}

fn new_socket(timeout: Duration) -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_GENERIC)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // Error messages with the kernel's explanation, without an echo of our request. Both
    // are optional (Linux >= 4.2 / 4.12): without them errors are plain errnos.
    let _ = sock.set_cap_ack(true);
    let _ = sock.set_ext_ack(true);
    socket2::SockRef::from(&sock).set_read_timeout(Some(timeout))?;
    Ok(sock)
}

/// NLMSG_DONE carries the dump's error, if it ended in one.
fn done(m: &NlMsg<'_>) -> Result<(), GenlError> {
    match m.payload.get(..4) {
        Some(b) => {
            let e = i32::from_ne_bytes(b.try_into().expect("4 bytes"));
            if e < 0 {
                Err(GenlError::Kernel { errno: -e, ext: None })
            } else {
                Ok(())
            }
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_awaited_well_past_what_the_kernel_holds_and_no_longer() {
        // A request given up while the kernel holds it is carried out all the same: the wait
        // must outlast the hold seen, with room, and the switcher's (whose requests are the
        // held ones) much more; bounded all the same.
        assert!(REPLY_TIMEOUT >= 5 * KERNEL_HOLD_SEEN, "{REPLY_TIMEOUT:?}");
        assert!(SYNC_REPLY_TIMEOUT >= 4 * REPLY_TIMEOUT, "{SYNC_REPLY_TIMEOUT:?}");
        assert!(REPLY_TIMEOUT <= Duration::from_secs(60));
        // The socket takes the timeout it is opened with (no IPVS needed for this).
        let s = new_socket(SYNC_REPLY_TIMEOUT).unwrap();
        assert_eq!(socket2::SockRef::from(&s).read_timeout().unwrap(), Some(SYNC_REPLY_TIMEOUT));
    }
}
