//! The sync daemon's decisions (`docs/conntrack-sync.md`), without I/O: the daemon tells a
//! [`Session`] the time and the synced instance's state, and does what it answers (read the
//! connection table, send the datagrams it gets, report those that did not go out).
//!
//! Sending is paced: at most [`MAX_DATAGRAMS_PER_TICK`] datagrams a tick, the rest owed to
//! the next ticks (see [`Exporter::not_sent`]), so a whole table (after becoming master, a
//! table request, the periodic resend) goes out over several seconds rather than as one
//! burst that the receiver's socket buffer drops most of. Every [`FULL_RESEND`] the master
//! sends its whole table again, paced the same way, so any loss heals — and flows a backup
//! skipped because it did not know their real server yet are imported once it does.

use std::time::{Duration, Instant};

use ha_lb_common::lb::{LbFlow, LbFlowKey};

use super::{decode, encode, Exporter};
use crate::config::LbKind;

/// Most datagrams sent per one-second tick: about 13,000 IPv4 connections a second, a burst
/// of some 600 KiB of receive buffer (see the daemon's sync socket).
pub const MAX_DATAGRAMS_PER_TICK: usize = 256;

/// The master sends its whole table again this often.
pub const FULL_RESEND: Duration = Duration::from_secs(300);

/// What to do at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// Read the connection table and send what [`Session::export`] returns.
    pub export: bool,
}

/// The state of connection sync on one director.
#[derive(Debug, Default)]
pub struct Session {
    exporter: Exporter,
    /// The synced instance was MASTER at the last tick.
    master: bool,
    /// When the master sends its whole table again.
    next_resend: Option<Instant>,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Once a tick (a second), with whether the synced instance holds the VIPs.
    pub fn tick(&mut self, now: Instant, master: bool) -> Tick {
        if !master {
            self.master = false;
            return Tick::default();
        }
        if !self.master {
            // Becoming master: the others may lack anything; send everything.
            self.master = true;
            self.exporter.reset();
            self.next_resend = Some(now + FULL_RESEND);
        }
        if self.next_resend.is_some_and(|t| now >= t) {
            self.exporter.resend_all();
            self.next_resend = Some(now + FULL_RESEND);
        }
        Tick { export: true }
    }

    /// The datagrams to send now (at most [`MAX_DATAGRAMS_PER_TICK`]) from a snapshot of the
    /// table (see [`Exporter::diff`]); what does not fit is owed to the next ticks. The
    /// caller reports those it could not send with [`Session::not_sent`].
    pub fn export(
        &mut self,
        sync_id: u8,
        flows: &[(LbFlowKey, LbFlow)],
        now_ns: u64,
        services: &dyn Fn(&LbFlowKey) -> Option<(std::net::SocketAddr, LbKind)>,
    ) -> Vec<Vec<u8>> {
        let entries = self.exporter.diff(flows, now_ns, services);
        let mut datagrams = encode(sync_id, &entries);
        if datagrams.len() > MAX_DATAGRAMS_PER_TICK {
            let later = datagrams.split_off(MAX_DATAGRAMS_PER_TICK);
            self.not_sent(&later);
        }
        datagrams
    }

    /// Datagrams from [`Session::export`] that did not go out: their flows are owed.
    pub fn not_sent(&mut self, datagrams: &[Vec<u8>]) {
        for d in datagrams {
            if let Ok((_, entries)) = decode(d) {
                self.exporter.not_sent(&entries);
            }
        }
    }

    /// A table request: everything remembered is sent again (paced).
    pub fn resend_all(&mut self) {
        self.exporter.resend_all();
    }

    /// Connections remembered as sent (status, tests).
    pub fn remembered(&self) -> usize {
        self.exporter.len()
    }
}

#[cfg(test)]
mod tests {
    use ha_lb_common::lb::IPPROTO_TCP;

    use super::*;
    use crate::bpf::lb::{addr_words, port_be, words_addr};

    const NS: u64 = 1_000_000_000;
    const NOW_NS: u64 = 1_000 * NS;

    /// `n` open NAT flows to 192.0.2.10:80, all on one real server.
    pub(super) fn table(n: u32) -> Vec<(LbFlowKey, LbFlow)> {
        (0..n)
            .map(|i| {
                let (src, family) = addr_words(std::net::Ipv4Addr::from(0xc633_0000 + i).into());
                let (dst, _) = addr_words("192.0.2.10".parse().unwrap());
                let key =
                    LbFlowKey::new(family, IPPROTO_TCP, (src, port_be(40000)), (dst, port_be(80)));
                let flow = LbFlow {
                    real_id: 1,
                    real_gen: 1,
                    last_seen_ns: NOW_NS - NS,
                    addr: addr_words("10.0.0.2".parse().unwrap()).0,
                    port: port_be(8080),
                    ..LbFlow::default()
                };
                (key, flow)
            })
            .collect()
    }

    pub(super) fn any_service(k: &LbFlowKey) -> Option<(std::net::SocketAddr, LbKind)> {
        let vip = std::net::SocketAddr::new(words_addr(&k.dst, k.family), u16::from_be(k.dport));
        Some((vip, LbKind::Nat))
    }

    fn entries(ds: &[Vec<u8>]) -> usize {
        ds.iter().map(|d| decode(d).unwrap().1.len()).sum()
    }

    /// Found by review: a whole table went out in one tick, thousands of datagrams in one
    /// burst, most of which the receiver dropped. At most MAX_DATAGRAMS_PER_TICK a tick; the
    /// rest follows at the next ticks, nothing lost, nothing twice.
    #[test]
    fn a_whole_table_is_paced_over_ticks() {
        let mut s = Session::new();
        let t0 = Instant::now();
        let t = table(40_000);
        let mut sent = 0;
        let mut ticks = 0;
        loop {
            let now = t0 + Duration::from_secs(ticks);
            assert!(s.tick(now, true).export);
            let ds = s.export(7, &t, NOW_NS, &any_service);
            assert!(ds.len() <= MAX_DATAGRAMS_PER_TICK);
            if ds.is_empty() {
                break;
            }
            sent += entries(&ds);
            ticks += 1;
        }
        assert_eq!(sent, 40_000);
        assert!(ticks > 1, "paced over {ticks} ticks");
    }

    /// Found by review: a datagram the socket refused was only counted; its flows were never
    /// sent again.
    #[test]
    fn datagrams_not_sent_are_sent_at_the_next_tick() {
        let mut s = Session::new();
        let t0 = Instant::now();
        let t = table(200);
        s.tick(t0, true);
        let ds = s.export(7, &t, NOW_NS, &any_service);
        assert!(ds.len() >= 3);
        // The first went out, the socket refused the rest.
        s.not_sent(&ds[1..]);
        s.tick(t0 + Duration::from_secs(1), true);
        let again = s.export(7, &t, NOW_NS, &any_service);
        assert_eq!(entries(&again), 200 - entries(&ds[..1]));
        s.tick(t0 + Duration::from_secs(2), true);
        assert!(s.export(7, &t, NOW_NS, &any_service).is_empty());
    }

    /// Found by review: a datagram lost on the way (or flows a backup skipped because it did
    /// not know their real server yet) was never sent again. The master resends its whole
    /// table every FULL_RESEND.
    #[test]
    fn the_master_resends_its_whole_table_periodically() {
        let mut s = Session::new();
        let t0 = Instant::now();
        let t = table(100);
        s.tick(t0, true);
        assert_eq!(entries(&s.export(7, &t, NOW_NS, &any_service)), 100);
        for secs in 1..FULL_RESEND.as_secs() {
            s.tick(t0 + Duration::from_secs(secs), true);
            assert!(s.export(7, &t, NOW_NS, &any_service).is_empty(), "at {secs} s");
        }
        s.tick(t0 + FULL_RESEND, true);
        assert_eq!(entries(&s.export(7, &t, NOW_NS, &any_service)), 100);
        assert_eq!(s.remembered(), 100);
    }

    #[test]
    fn a_backup_exports_nothing_and_a_new_master_everything() {
        let mut s = Session::new();
        let t0 = Instant::now();
        let t = table(10);
        assert!(!s.tick(t0, false).export);
        s.tick(t0, true);
        assert_eq!(entries(&s.export(7, &t, NOW_NS, &any_service)), 10);
        assert!(!s.tick(t0 + Duration::from_secs(1), false).export);
        s.tick(t0 + Duration::from_secs(2), true);
        assert_eq!(entries(&s.export(7, &t, NOW_NS, &any_service)), 10);
    }
}
