//! The sync daemon's decisions (`docs/conntrack-sync.md`), without I/O: the daemon tells a
//! [`Session`] the time, the synced instance's state changes and the datagrams it receives,
//! and does what it answers (read the connection table, send the datagrams it gets, report
//! those that did not go out, import entries).
//!
//! Only a director whose synced instance is not MASTER imports (IPVS: only the backup
//! daemon does): a master's table is the one the others copy, and a datagram forged on the
//! link must not rewrite it — except for [`IMPORT_AFTER_MASTER`] after becoming MASTER, to
//! take the last diff of the director that left MASTER. A table request is answered at most
//! once per [`ANSWER_INTERVAL`]: answering sends the whole table, and anyone on the link
//! can ask.
//!
//! A director that leaves MASTER sends its last diff at the next tick (the connections of
//! its last second as master), and for [`LEAVE_GRACE`] it still answers table requests and
//! finishes sending what it owes: a director that starts during a failover may ask just
//! after the master left.
//!
//! A director whose synced instance enters BACKUP from INIT (start) or FAULT (its link came
//! back, tracking recovered) may have missed anything: it asks the master for its whole table
//! (a [`request`](super::request)) at every tick until it has imported something (written a
//! connection or template: a datagram whose entries it skipped, its real servers still down,
//! say, does not count), at most [`MAX_REQUESTS`] times. It asks again the same way when
//! something becomes importable here (a service or real server added: health up, reload;
//! [`Session::want_table`]), at most once per [`REASK_INTERVAL`].
//!
//! A whole-table send (after becoming MASTER, an answered request, the periodic resend) marks
//! its datagrams, and its last one as its end ([`wire::mark_table`](super::wire::mark_table);
//! [`wire::table_end`](super::wire::table_end) when no datagram of entries is left to carry
//! it): the mark goes with whatever datagram ends up last, at whichever tick that is (one not
//! sent is owed, with the mark). A director whose synced instance entered BACKUP from INIT
//! or FAULT follows the whole-table send it sees arriving ([`Session::start_hold`]): its
//! instances hold their preemption (the start hold) until the end mark comes, nothing of it
//! has come for [`TABLE_SILENCE`], or [`TABLE_WAIT_MAX`] after entering BACKUP. An older
//! master marks nothing, a kernel IPVS master cannot: the hold is not extended.
//!
//! Connections and persistence templates go through the same decisions: one diff
//! ([`Exporter::diff_all`]), one pacing budget, one owed list, one import gate.
//!
//! Sending is paced: at most [`MAX_DATAGRAMS_PER_TICK`] datagrams a tick, the rest owed to
//! the next ticks (see [`Exporter::not_sent`]), so a whole table (after becoming master, a
//! table request, the periodic resend) goes out over several seconds rather than as one
//! burst that the receiver's socket buffer drops most of. Every [`FULL_RESEND`] the master
//! sends its whole table again, paced the same way, so any loss heals — and flows a backup
//! skipped because it did not know their real server yet are imported once it does.

use std::time::{Duration, Instant};

use ha_lb_common::lb::{LbFlow, LbFlowKey, LbPersist, LbPersistKey};

use super::{
    decode,
    export::TemplateNames,
    ipvs_wire::{self, IpvsDecodeError, IpvsMessage},
    wire::{encode_at_most, item_len, mark_table, table_end},
    Datagram, Exporter, SyncDecodeError, SyncItem,
};
use crate::config::LbKind;
use crate::vrrp::machine::State;

/// Most datagrams sent per one-second tick: about 13,000 IPv4 connections a second, a burst
/// of some 600 KiB of receive buffer (see the daemon's sync socket).
pub const MAX_DATAGRAMS_PER_TICK: usize = 256;

/// The master sends its whole table again this often.
pub const FULL_RESEND: Duration = Duration::from_secs(300);

/// A table request is answered at most once per this.
pub const ANSWER_INTERVAL: Duration = Duration::from_secs(5);

/// Table requests sent, one a tick, after entering BACKUP, unless a datagram is imported
/// first.
pub const MAX_REQUESTS: u8 = 10;

/// After leaving MASTER, a director answers table requests and sends what it owes this long.
pub const LEAVE_GRACE: Duration = Duration::from_secs(10);

/// After becoming MASTER, a director imports this long: the last diff of the one that left,
/// and what that one still owes (it sends it for [`LEAVE_GRACE`] after it left MASTER, which
/// is a little after this one became it: a second more).
pub const IMPORT_AFTER_MASTER: Duration = Duration::from_secs(LEAVE_GRACE.as_secs() + 1);

/// A director asks for the table again ([`Session::want_table`]) at most this often.
pub const REASK_INTERVAL: Duration = Duration::from_secs(30);

/// The start hold waits for a whole-table send at most this long after the synced instance
/// entered BACKUP from INIT or FAULT (`vrrp::machine::Config::start_hold_max`): at 256
/// datagrams a tick, some 780,000 IPv4 or 330,000 IPv6 connections.
pub const TABLE_WAIT_MAX: Duration = Duration::from_secs(60);

/// A whole-table send nothing of which has arrived for this long has stopped (its master
/// died, or left MASTER and its grace): the start hold no longer waits for it. The master
/// sends a part of it at every one-second tick.
pub const TABLE_SILENCE: Duration = Duration::from_secs(2);

/// A change of what the start hold should do ([`Session::start_hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartHold {
    /// A whole-table send is arriving: hold preemption until it is complete.
    Extend,
    /// No longer (why).
    Release(HoldRelease),
}

/// Why the start hold no longer waits for the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRelease {
    /// Its end mark arrived.
    Complete,
    /// Nothing of it arrived for [`TABLE_SILENCE`].
    Silence,
    /// [`TABLE_WAIT_MAX`] after entering BACKUP.
    Bound,
    /// The synced instance left BACKUP.
    LeftBackup,
}

impl HoldRelease {
    /// Short stable name for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            HoldRelease::Complete => "complete",
            HoldRelease::Silence => "silence",
            HoldRelease::Bound => "bound",
            HoldRelease::LeftBackup => "left_backup",
        }
    }
}

impl std::fmt::Display for HoldRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HoldRelease::Complete => f.write_str("the master's whole table has arrived"),
            HoldRelease::Silence => write!(
                f,
                "nothing more of the master's table for {} s (its master stopped sending)",
                TABLE_SILENCE.as_secs()
            ),
            HoldRelease::Bound => write!(
                f,
                "the table still arriving {} s after entering BACKUP",
                TABLE_WAIT_MAX.as_secs()
            ),
            HoldRelease::LeftBackup => f.write_str("the synced instance left BACKUP"),
        }
    }
}

/// A director whose synced instance entered BACKUP from INIT or FAULT, and the whole-table
/// send it may see arriving.
#[derive(Debug, Clone, Copy)]
struct TableWait {
    /// When the synced instance entered BACKUP.
    since: Instant,
    /// A whole-table send is arriving: when the last datagram of it came.
    last: Option<Instant>,
    /// Over: why (the start hold is not extended, or no longer).
    over: Option<HoldRelease>,
}

/// What to do at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// Send a table request.
    pub request: bool,
    /// Read the connection table and send what [`Session::export`] returns.
    pub export: bool,
}

/// What a received datagram is, and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Not a valid sync datagram.
    Rejected(SyncDecodeError),
    /// A kernel IPVS sync message (`sync::ipvs_wire`) that cannot be read: version 0, or
    /// malformed. `first`: the first IPVS message this session saw (say so once).
    IpvsRejected { error: IpvsDecodeError, first: bool },
    /// Kernel IPVS sync entries to import (the caller maps them, with its own services'
    /// persistence granularity, see [`IpvsConn::to_item`](super::ipvs_wire::IpvsConn::to_item)).
    /// `first`: the first IPVS message this session saw.
    ImportIpvs { message: IpvsMessage, first: bool },
    /// Another sync id's.
    OtherId,
    /// A table request: `answered` when the whole table goes out from the next tick (this
    /// director is MASTER and has not answered one for [`ANSWER_INTERVAL`]).
    Request { answered: bool },
    /// Connections or templates to import.
    Import(Datagram),
    /// Connections and templates not imported: this director is MASTER.
    NotImported { connections: usize, templates: usize },
}

/// The state of connection sync on one director.
#[derive(Debug, Default)]
pub struct Session {
    exporter: Exporter,
    /// The synced instance holds the VIPs (MASTER, or STOPPING: still serving).
    master: bool,
    /// When the master sends its whole table again.
    next_resend: Option<Instant>,
    /// When a table request was last answered.
    last_answer: Option<Instant>,
    /// Table requests still to send, one a tick.
    requests_left: u8,
    /// The synced instance is BACKUP.
    backup: bool,
    /// Something became importable here: ask for the table again (see
    /// [`Session::want_table`]) once [`REASK_INTERVAL`] after the last time.
    reask: bool,
    last_reask: Option<Instant>,
    /// When the synced instance last became MASTER / left it.
    became_master: Option<Instant>,
    left_master: Option<Instant>,
    /// The last diff after leaving MASTER is still to send.
    final_diff: bool,
    /// A kernel IPVS sync message was seen.
    ipvs_seen: bool,
    /// A whole-table send is under way (its datagrams are marked): its end mark is still to
    /// go out.
    table_send: bool,
    /// Since the synced instance entered BACKUP from INIT or FAULT: the whole table it may
    /// be sent, for the start hold.
    table_wait: Option<TableWait>,
    /// The start hold was told to wait for the table ([`StartHold::Extend`]), and not
    /// released since.
    hold_extended: bool,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// The synced instance changed state.
    pub fn on_state(&mut self, now: Instant, from: State, to: State) {
        let master = matches!(to, State::Master | State::Stopping);
        self.requests_left = match (from, to) {
            (State::Initialize | State::Fault, State::Backup) => MAX_REQUESTS,
            (_, State::Backup) => self.requests_left,
            _ => 0,
        };
        self.backup = to == State::Backup;
        if !self.backup {
            self.reask = false;
        }
        match (from, to) {
            (State::Initialize | State::Fault, State::Backup) => {
                self.table_wait = Some(TableWait { since: now, last: None, over: None });
            }
            (_, State::Backup) => {}
            _ => {
                if let Some(w) = self.table_wait.as_mut().filter(|w| w.over.is_none()) {
                    w.over = Some(HoldRelease::LeftBackup);
                }
            }
        }
        if master && !self.master {
            // Becoming master: the others may lack anything; send everything.
            self.exporter.reset();
            self.next_resend = Some(now + FULL_RESEND);
            self.became_master = Some(now);
            self.final_diff = false;
            self.table_send = true;
        }
        if !master && self.master {
            self.left_master = Some(now);
            self.final_diff = true;
        }
        self.master = master;
    }

    /// Within [`LEAVE_GRACE`] of leaving MASTER.
    fn in_leave_grace(&self, now: Instant) -> bool {
        !self.master && self.left_master.is_some_and(|t| now.duration_since(t) < LEAVE_GRACE)
    }

    /// Once a tick (a second).
    pub fn tick(&mut self, now: Instant) -> Tick {
        if !self.master {
            if self.reask && self.last_reask.is_none_or(|t| now.duration_since(t) >= REASK_INTERVAL)
            {
                self.reask = false;
                self.last_reask = Some(now);
                self.requests_left = MAX_REQUESTS;
            }
            let request = self.requests_left > 0;
            self.requests_left = self.requests_left.saturating_sub(1);
            // The last diff, and what it or an answered request left owed (and the end mark
            // of a whole-table send, if nothing is).
            let export = self.in_leave_grace(now)
                && (self.final_diff || self.table_send || self.exporter.owes());
            self.final_diff = false;
            return Tick { request, export };
        }
        if self.next_resend.is_some_and(|t| now >= t) {
            self.exporter.resend_all();
            self.table_send = true;
            self.next_resend = Some(now + FULL_RESEND);
        }
        Tick { request: false, export: true }
    }

    /// The datagrams to send now (at most [`MAX_DATAGRAMS_PER_TICK`]) from snapshots of the
    /// connection table and the persistence templates (see [`Exporter::diff_all`]); what does
    /// not fit is owed to the next ticks. The caller reports those it could not send with
    /// [`Session::not_sent`]. During a whole-table send every datagram is marked, and the last
    /// one of the tick that owes nothing more as its end (a version-4 datagram of its own when
    /// there is none).
    pub fn export(
        &mut self,
        sync_id: u8,
        flows: &[(LbFlowKey, LbFlow)],
        templates: &[(LbPersistKey, LbPersist)],
        now_ns: u64,
        services: &dyn Fn(&LbFlowKey) -> Option<(std::net::SocketAddr, LbKind)>,
        names: &dyn Fn(&LbPersistKey, &LbPersist) -> Option<TemplateNames>,
    ) -> Vec<Vec<u8>> {
        let items = self.exporter.diff_all(flows, templates, now_ns, services, names);
        let (datagrams, used) = encode_at_most(sync_id, &items, MAX_DATAGRAMS_PER_TICK);
        // Owed (those the wire cannot carry are dropped here as encode drops them).
        let later: Vec<SyncItem> =
            items[used..].iter().copied().filter(|i| item_len(i).is_some()).collect();
        self.exporter.not_sent(&later);
        let mut datagrams = datagrams;
        if self.table_send {
            // Nothing owed after these: the whole table has gone out with them.
            let end = later.is_empty();
            if end {
                self.table_send = false;
                if datagrams.is_empty() {
                    datagrams.push(table_end(sync_id));
                }
            }
            let n = datagrams.len();
            for (i, d) in datagrams.iter_mut().enumerate() {
                mark_table(d, end && i + 1 == n);
            }
        }
        datagrams
    }

    /// Datagrams from [`Session::export`] that did not go out: their flows and templates are
    /// owed, and the end mark of a whole-table send if one of them had it (the last one
    /// sent at a later tick carries it).
    pub fn not_sent(&mut self, datagrams: &[Vec<u8>]) {
        for d in datagrams {
            if let Ok(d) = decode(d) {
                self.table_send |= d.table_end;
                self.exporter.not_sent(&d.items().collect::<Vec<_>>());
            }
        }
    }

    /// A datagram received on the sync socket, for sync id `sync_id`.
    pub fn receive(&mut self, now: Instant, sync_id: u8, buf: &[u8]) -> Received {
        let d = match decode(buf) {
            Ok(d) => d,
            Err(SyncDecodeError::IpvsSync) => return self.receive_ipvs(now, sync_id, buf),
            Err(e) => return Received::Rejected(e),
        };
        if d.sync_id != sync_id {
            return Received::OtherId;
        }
        if d.is_request() {
            let answered = (self.master || self.in_leave_grace(now))
                && self.last_answer.is_none_or(|t| now.duration_since(t) >= ANSWER_INTERVAL);
            if answered {
                // Everything remembered goes out again (paced) from the next tick.
                self.exporter.resend_all();
                self.table_send = true;
                self.last_answer = Some(now);
            }
            return Received::Request { answered };
        }
        if d.table {
            self.table_arrives(now, d.table_end);
        }
        if !self.imports(now) {
            let (connections, templates) = (d.entries.len(), d.templates.len());
            return Received::NotImported { connections, templates };
        }
        Received::Import(d)
    }

    /// What a datagram [`Session::receive`] gave to import wrote here: `written` connections
    /// and templates (not counting those skipped as unknown here). Once something was, the
    /// master has answered (or was sending anyway: a kernel master, which takes no requests):
    /// enough asking. A datagram of entries all unknown here — the master's answer while this
    /// director's real servers are still down — is no answer: it keeps asking.
    pub fn imported(&mut self, written: usize) {
        if written > 0 {
            self.requests_left = 0;
        }
    }

    /// Something became importable here (a service or real server added to the data plane:
    /// its health checks passed, a reload): what the master sent before may have been skipped
    /// as unknown. A BACKUP asks for the table again ([`MAX_REQUESTS`] times at most, until
    /// something is imported) from its next tick, at most once per [`REASK_INTERVAL`] (later
    /// calls are kept for then, so a real server that comes up just after the last time is not
    /// missed).
    pub fn want_table(&mut self) {
        if self.backup {
            self.reask = true;
        }
    }

    /// A datagram of a whole-table send arrived (`end`: its last one): the start hold waits
    /// for the rest, if the synced instance entered BACKUP from INIT or FAULT and the wait is
    /// not over.
    fn table_arrives(&mut self, now: Instant, end: bool) {
        let Some(w) = self.table_wait.as_mut().filter(|w| w.over.is_none()) else { return };
        if end {
            w.over = Some(HoldRelease::Complete);
        } else {
            w.last = Some(now);
        }
    }

    /// What the start hold of the synced group's instances should do now, when it changes:
    /// wait for the whole table ([`StartHold::Extend`]) once a datagram of a whole-table
    /// send has arrived after the synced instance entered BACKUP from INIT or FAULT, without
    /// its end mark; stop waiting ([`StartHold::Release`]) when the end mark arrives, nothing
    /// of it has for [`TABLE_SILENCE`], [`TABLE_WAIT_MAX`] after entering BACKUP, or when the
    /// instance leaves BACKUP. Each change is returned once; call it after every datagram
    /// received, every state change of the synced instance, and at every tick (the silence
    /// and the bound).
    pub fn start_hold(&mut self, now: Instant) -> Option<StartHold> {
        let w = self.table_wait.as_mut()?;
        if w.over.is_none() {
            if now.duration_since(w.since) >= TABLE_WAIT_MAX {
                w.over = Some(HoldRelease::Bound);
            } else if w.last.is_some_and(|t| now.duration_since(t) >= TABLE_SILENCE) {
                w.over = Some(HoldRelease::Silence);
            }
        }
        let extend = w.over.is_none() && w.last.is_some();
        if extend == self.hold_extended {
            return None;
        }
        self.hold_extended = extend;
        Some(if extend {
            StartHold::Extend
        } else {
            StartHold::Release(w.over.unwrap_or(HoldRelease::LeftBackup))
        })
    }

    /// The start hold was told to wait for the table and not released since (an instance
    /// started meanwhile is told too).
    pub fn start_hold_extended(&self) -> bool {
        self.hold_extended
    }

    /// Whether a datagram received now is imported: not while MASTER, except just after
    /// becoming it (see [`IMPORT_AFTER_MASTER`]).
    fn imports(&self, now: Instant) -> bool {
        let just_master =
            self.became_master.is_some_and(|t| now.duration_since(t) < IMPORT_AFTER_MASTER);
        !self.master || just_master
    }

    /// A kernel IPVS sync message (version 1): through the same gate as ours (its sync id,
    /// not while MASTER). It is never a table request (IPVS has none; its master never sends
    /// an empty message).
    fn receive_ipvs(&mut self, now: Instant, sync_id: u8, buf: &[u8]) -> Received {
        // The sync id first: byte 1 in both versions' headers (another pair's master, of any
        // version or state, is none of our business). Id 0 takes any, as a kernel backup's.
        if sync_id != 0 && buf.get(1).is_some_and(|&id| id != sync_id) {
            return Received::OtherId;
        }
        let first = !std::mem::replace(&mut self.ipvs_seen, true);
        let message = match ipvs_wire::decode(buf) {
            Ok(m) => m,
            Err(error) => return Received::IpvsRejected { error, first },
        };
        if !self.imports(now) {
            let templates = message.conns.iter().filter(|c| c.is_template()).count();
            let connections = message.conns.len() - templates;
            return Received::NotImported { connections, templates };
        }
        Received::ImportIpvs { message, first }
    }

    /// Connections remembered as sent (status, tests).
    pub fn remembered(&self) -> usize {
        self.exporter.len()
    }

    /// Templates remembered as sent (tests).
    pub fn remembered_templates(&self) -> usize {
        self.exporter.templates_len()
    }
}

/// Sends `datagrams` (from [`Session::export`]) in order, each as the wire messages `wire`
/// makes of it (one, or with the kernel's format one or two), until the next would take the
/// tick past `budget` packets or `send` fails. Returns how many went out whole: the caller
/// reports the rest with [`Session::not_sent`] (one that went out in part is sent again
/// whole; a receiver takes a repeat as an update).
pub fn send_paced<M: AsRef<[u8]>>(
    datagrams: &[Vec<u8>],
    budget: usize,
    mut wire: impl FnMut(&[u8]) -> Vec<M>,
    mut send: impl FnMut(&[u8]) -> bool,
) -> usize {
    let mut packets = 0;
    for (sent, d) in datagrams.iter().enumerate() {
        let messages = wire(d);
        if packets + messages.len() > budget {
            return sent;
        }
        packets += messages.len();
        if !messages.iter().all(|m| send(m.as_ref())) {
            return sent;
        }
    }
    datagrams.len()
}

#[cfg(test)]
mod tests {
    use ha_lb_common::lb::IPPROTO_TCP;

    use super::*;
    use crate::bpf::lb::{addr_words, port_be, words_addr};
    use crate::sync::encode;
    use crate::sync::SyncEntry;

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

    pub(super) fn no_names(_: &LbPersistKey, _: &LbPersist) -> Option<TemplateNames> {
        None
    }

    fn import(e: SyncEntry) -> Received {
        Received::Import(Datagram { sync_id: 7, entries: vec![e], ..Datagram::default() })
    }

    pub(super) fn any_service(k: &LbFlowKey) -> Option<(std::net::SocketAddr, LbKind)> {
        let vip = std::net::SocketAddr::new(words_addr(&k.dst, k.family), u16::from_be(k.dport));
        Some((vip, LbKind::Nat))
    }

    fn entries(ds: &[Vec<u8>]) -> usize {
        ds.iter().map(|d| decode(d).unwrap().len()).sum()
    }

    /// A session whose synced instance became MASTER at `t0`.
    fn master(t0: Instant) -> Session {
        let mut s = Session::new();
        s.on_state(t0, State::Initialize, State::Backup);
        s.on_state(t0, State::Backup, State::Master);
        s
    }

    fn sample() -> SyncEntry {
        SyncEntry {
            protocol: crate::config::Protocol::Tcp,
            lb_kind: LbKind::Nat,
            client: "198.51.100.7:40000".parse().unwrap(),
            vip: "192.0.2.10:80".parse().unwrap(),
            real_server: "10.0.0.2:8080".parse().unwrap(),
            idle_secs: 3,
            closed: false,
        }
    }

    /// Found by review: a whole table went out in one tick, thousands of datagrams in one
    /// burst, most of which the receiver dropped. At most MAX_DATAGRAMS_PER_TICK a tick; the
    /// rest follows at the next ticks, nothing lost, nothing twice.
    #[test]
    fn a_whole_table_is_paced_over_ticks() {
        let t0 = Instant::now();
        let mut s = master(t0);
        let t = table(40_000);
        let mut sent = 0;
        let mut ticks = 0;
        loop {
            let now = t0 + Duration::from_secs(ticks);
            assert!(s.tick(now).export);
            let ds = s.export(7, &t, &[], NOW_NS, &any_service, &no_names);
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

    /// `n` live templates of service 1 (clients 198.51.x.y/32), all on real id 1.
    fn templates(n: u32) -> Vec<(LbPersistKey, LbPersist)> {
        (0..n)
            .map(|i| {
                let (client, family) = addr_words(std::net::Ipv4Addr::from(0xc633_0000 + i).into());
                let key = LbPersistKey { service_id: 1, family, _pad8: 0, _pad16: 0, client };
                (key, LbPersist { real_id: 1, real_gen: 1, last_seen_ns: NOW_NS - NS })
            })
            .collect()
    }

    fn names(_: &LbPersistKey, _: &LbPersist) -> Option<TemplateNames> {
        Some(TemplateNames {
            protocol: crate::config::Protocol::Tcp,
            vip: "192.0.2.10:80".parse().unwrap(),
            prefix: 0,
            timeout_secs: 300,
            real_server: "10.0.0.2:8080".parse().unwrap(),
        })
    }

    /// Templates take the flows' path: one budget a tick, what does not fit or is not sent
    /// goes at the next ticks, nothing lost, nothing twice; a table request sends them again.
    #[test]
    fn templates_are_paced_and_owed_with_the_flows() {
        let t0 = Instant::now();
        let mut s = master(t0);
        let (f, tp) = (table(20_000), templates(20_000));
        let (mut conns, mut tpls, mut ticks) = (0, 0, 0);
        loop {
            let now = t0 + Duration::from_secs(ticks);
            s.tick(now);
            let ds = s.export(7, &f, &tp, NOW_NS, &any_service, &names);
            assert!(ds.len() <= MAX_DATAGRAMS_PER_TICK);
            if ds.is_empty() {
                break;
            }
            // The socket refuses the last datagram of each of the first ticks.
            let cut = if ticks < 3 { ds.len() - 1 } else { ds.len() };
            let (sent, refused) = ds.split_at(cut);
            s.not_sent(refused);
            for d in sent {
                let d = decode(d).unwrap();
                conns += d.entries.len();
                tpls += d.templates.len();
            }
            ticks += 1;
        }
        assert_eq!((conns, tpls), (20_000, 20_000));
        assert!(ticks > 2, "paced over {ticks} ticks");
        assert_eq!(s.remembered_templates(), 20_000);
        let later = t0 + Duration::from_secs(ticks + 10);
        let req = crate::sync::request(7);
        assert_eq!(s.receive(later, 7, &req), Received::Request { answered: true });
        s.tick(later);
        let again = s.export(7, &f, &tp, NOW_NS, &any_service, &names);
        assert_eq!(again.len(), MAX_DATAGRAMS_PER_TICK, "the whole tables again, paced");
    }

    /// Templates pass the same import gate as connections.
    #[test]
    fn templates_are_imported_only_when_not_master() {
        let t0 = Instant::now();
        let mut tx = master(t0);
        tx.tick(t0);
        let ds = tx.export(7, &[], &templates(3), NOW_NS, &any_service, &names);
        assert_eq!(ds.len(), 1);
        let mut rx = Session::new();
        rx.on_state(t0, State::Initialize, State::Backup);
        match rx.receive(t0, 7, &ds[0]) {
            Received::Import(d) => assert_eq!((d.entries.len(), d.templates.len()), (0, 3)),
            other => panic!("{other:?}"),
        }
        rx.on_state(t0, State::Backup, State::Master);
        let t1 = t0 + IMPORT_AFTER_MASTER;
        assert_eq!(
            rx.receive(t1, 7, &ds[0]),
            Received::NotImported { connections: 0, templates: 3 }
        );
    }

    /// Found by review: a datagram the socket refused was only counted; its flows were never
    /// sent again.
    #[test]
    fn datagrams_not_sent_are_sent_at_the_next_tick() {
        let t0 = Instant::now();
        let mut s = master(t0);
        let t = table(200);
        s.tick(t0);
        let ds = s.export(7, &t, &[], NOW_NS, &any_service, &no_names);
        assert!(ds.len() >= 3);
        // The first went out, the socket refused the rest.
        s.not_sent(&ds[1..]);
        s.tick(t0 + Duration::from_secs(1));
        let again = s.export(7, &t, &[], NOW_NS, &any_service, &no_names);
        assert_eq!(entries(&again), 200 - entries(&ds[..1]));
        s.tick(t0 + Duration::from_secs(2));
        assert!(s.export(7, &t, &[], NOW_NS, &any_service, &no_names).is_empty());
    }

    /// Found by review: a datagram lost on the way (or flows a backup skipped because it did
    /// not know their real server yet) was never sent again. The master resends its whole
    /// table every FULL_RESEND.
    #[test]
    fn the_master_resends_its_whole_table_periodically() {
        let t0 = Instant::now();
        let mut s = master(t0);
        let t = table(100);
        s.tick(t0);
        assert_eq!(entries(&s.export(7, &t, &[], NOW_NS, &any_service, &no_names)), 100);
        for secs in 1..FULL_RESEND.as_secs() {
            s.tick(t0 + Duration::from_secs(secs));
            assert!(
                s.export(7, &t, &[], NOW_NS, &any_service, &no_names).is_empty(),
                "at {secs} s"
            );
        }
        s.tick(t0 + FULL_RESEND);
        assert_eq!(entries(&s.export(7, &t, &[], NOW_NS, &any_service, &no_names)), 100);
        assert_eq!(s.remembered(), 100);
    }

    #[test]
    fn a_backup_exports_nothing_and_a_new_master_everything() {
        let mut s = Session::new();
        let t0 = Instant::now();
        let t = table(10);
        s.on_state(t0, State::Initialize, State::Backup);
        assert!(!s.tick(t0).export);
        s.on_state(t0, State::Backup, State::Master);
        assert!(s.tick(t0).export);
        assert_eq!(entries(&s.export(7, &t, &[], NOW_NS, &any_service, &no_names)), 10);
        s.on_state(t0, State::Master, State::Backup);
        s.on_state(t0 + Duration::from_secs(30), State::Backup, State::Master);
        s.tick(t0 + Duration::from_secs(30));
        assert_eq!(entries(&s.export(7, &t, &[], NOW_NS, &any_service, &no_names)), 10);
        // STOPPING still serves: still exporting.
        s.on_state(t0 + Duration::from_secs(31), State::Master, State::Stopping);
        assert!(s.tick(t0 + Duration::from_secs(31)).export);
    }

    /// Found by review: a master that left MASTER never sent the connections of its last
    /// second, and no longer answered table requests. It sends a last diff at the next tick,
    /// and answers requests (and sends what it owes) for LEAVE_GRACE.
    #[test]
    fn a_master_that_leaves_sends_its_last_diff_and_answers_for_a_while() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = master(t0);
        s.tick(t0);
        assert_eq!(entries(&s.export(7, &table(10), &[], NOW_NS, &any_service, &no_names)), 10);
        // Two new connections, then the instance leaves MASTER before the next tick.
        s.on_state(at(500), State::Master, State::Backup);
        assert!(s.tick(at(1000)).export, "the last diff");
        assert_eq!(entries(&s.export(7, &table(12), &[], NOW_NS, &any_service, &no_names)), 2);
        assert!(!s.tick(at(2000)).export, "and no more");
        // A table request during the grace: answered, the whole table goes out.
        let req = crate::sync::request(7);
        assert_eq!(s.receive(at(3000), 7, &req), Received::Request { answered: true });
        assert!(s.tick(at(4000)).export);
        assert_eq!(entries(&s.export(7, &table(12), &[], NOW_NS, &any_service, &no_names)), 12);
        assert!(!s.tick(at(5000)).export);
        // After it: no.
        let late = at(500) + LEAVE_GRACE;
        assert_eq!(s.receive(late, 7, &req), Received::Request { answered: false });
        assert!(!s.tick(late).export);
        // From FAULT or a stop too; a director that never was MASTER sends nothing.
        let mut f = master(t0);
        f.on_state(at(100), State::Master, State::Fault);
        assert!(f.tick(at(1000)).export);
        let mut b = Session::new();
        b.on_state(t0, State::Initialize, State::Backup);
        b.on_state(t0, State::Backup, State::Fault);
        assert!(!b.tick(at(1000)).export);
    }

    /// The last diff of the director that left MASTER reaches the one that took over just
    /// after it became MASTER: it imports for IMPORT_AFTER_MASTER.
    #[test]
    fn a_new_master_imports_for_a_moment() {
        let t0 = Instant::now();
        let d = encode(7, &[sample()]).remove(0);
        let mut s = Session::new();
        s.on_state(t0, State::Initialize, State::Backup);
        s.on_state(t0, State::Backup, State::Master);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.receive(t1, 7, &d), import(sample()));
        assert_eq!(
            s.receive(t0 + IMPORT_AFTER_MASTER, 7, &d),
            Received::NotImported { connections: 1, templates: 0 }
        );
    }

    /// Requests sent at the ticks from `t0` on, as seconds after `t0`.
    fn requests(s: &mut Session, t0: Instant, secs: std::ops::Range<u64>) -> Vec<u64> {
        secs.filter(|&i| s.tick(t0 + Duration::from_secs(i)).request).collect()
    }

    /// Found by review: a starting director asked for the master's table only at start and
    /// at the next two ticks (the first at once: ~0 s, 0 s, 1 s, often before its link was
    /// up), and never after FAULT (a link that came back). It asks at every tick after
    /// entering BACKUP from INIT or FAULT, until it imports a datagram, at most
    /// MAX_REQUESTS times.
    #[test]
    fn requests_follow_entering_backup_until_something_is_imported() {
        let t0 = Instant::now();
        let mut s = Session::new();
        assert!(requests(&mut s, t0, 0..3).is_empty(), "INIT: nothing");
        s.on_state(t0, State::Initialize, State::Backup);
        let all = requests(&mut s, t0, 1..30);
        assert_eq!(all, (1..=u64::from(MAX_REQUESTS)).collect::<Vec<_>>(), "bounded");

        // FAULT (the link went down), BACKUP again: asks again, until the master's answer.
        s.on_state(t0, State::Backup, State::Fault);
        assert!(requests(&mut s, t0, 30..33).is_empty(), "not in FAULT");
        s.on_state(t0, State::Fault, State::Backup);
        assert_eq!(requests(&mut s, t0, 33..36), vec![33, 34, 35]);
        let d = encode(7, &[sample()]).remove(0);
        assert!(matches!(s.receive(t0, 7, &d), Received::Import(_)));
        s.imported(1);
        assert!(requests(&mut s, t0, 36..50).is_empty(), "imported: done");

        // Leaving MASTER for BACKUP: it had the table; no request.
        s.on_state(t0, State::Backup, State::Master);
        s.on_state(t0, State::Master, State::Backup);
        assert!(requests(&mut s, t0, 50..60).is_empty());
        // Becoming MASTER stops asking.
        s.on_state(t0, State::Backup, State::Fault);
        s.on_state(t0, State::Fault, State::Backup);
        assert_eq!(requests(&mut s, t0, 60..61), vec![60]);
        s.on_state(t0, State::Backup, State::Master);
        assert!(requests(&mut s, t0, 61..70).is_empty());
    }

    /// Found by review: the first datagram through the gate stopped the requests, whether or
    /// not anything was written: with `alpha` (real servers down at start) the master's answer
    /// was skipped whole as unknown, and the backup never asked again. It asks until something
    /// is written, and again when something becomes importable (health up, reload), at most
    /// once per REASK_INTERVAL.
    #[test]
    fn requests_go_on_until_something_is_written_and_again_when_needed() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut s = Session::new();
        s.on_state(t0, State::Initialize, State::Backup);
        assert_eq!(requests(&mut s, t0, 1..3), vec![1, 2]);
        // The answer: every entry unknown here.
        let d = encode(7, &[sample()]).remove(0);
        assert!(matches!(s.receive(at(2), 7, &d), Received::Import(_)));
        s.imported(0);
        assert_eq!(requests(&mut s, t0, 3..5), vec![3, 4], "nothing written: asks on");
        // A real server came up: asked again as soon as the tick comes (the first time).
        s.imported(1);
        assert!(requests(&mut s, t0, 5..7).is_empty());
        s.want_table();
        assert_eq!(requests(&mut s, t0, 7..9), vec![7, 8]);
        s.imported(3);
        assert!(requests(&mut s, t0, 9..10).is_empty());
        // Another one soon after: kept for REASK_INTERVAL after the last time.
        s.want_table();
        let again = 7 + REASK_INTERVAL.as_secs();
        assert!(requests(&mut s, t0, 10..again).is_empty(), "at most once per REASK_INTERVAL");
        assert_eq!(requests(&mut s, t0, again..again + 1), vec![again]);
        s.imported(1);
        // Not while MASTER (nor kept for later).
        s.on_state(at(100), State::Backup, State::Master);
        s.want_table();
        s.on_state(at(101), State::Master, State::Backup);
        assert!(requests(&mut s, t0, 200..240).is_empty());
    }

    /// Found by review: a master leaving after a failover sends what it owes for LEAVE_GRACE,
    /// but the new master imported only for 5 s: what came in seconds 5 to 10 was thrown away.
    #[test]
    fn a_new_master_imports_for_as_long_as_the_old_one_sends() {
        assert!(IMPORT_AFTER_MASTER > LEAVE_GRACE);
        let t0 = Instant::now();
        let d = encode(7, &[sample()]).remove(0);
        let mut s = master(t0);
        // The old master left a moment after this one became MASTER.
        let end_of_its_grace = t0 + Duration::from_millis(500) + LEAVE_GRACE;
        assert_eq!(s.receive(end_of_its_grace, 7, &d), import(sample()));
    }

    /// Found by review: any datagram with the right sync id was imported, also by the
    /// master, whose table the others copy (anyone on the link could rewrite it). Only a
    /// director that is not MASTER imports.
    #[test]
    fn only_a_director_that_is_not_master_imports() {
        let t0 = Instant::now();
        let d = encode(7, &[sample()]).remove(0);
        let mut s = Session::new();
        assert_eq!(s.receive(t0, 7, &d), import(sample()), "INIT");
        s.on_state(t0, State::Initialize, State::Backup);
        assert_eq!(s.receive(t0, 7, &d), import(sample()), "BACKUP");
        s.on_state(t0, State::Backup, State::Master);
        let t1 = t0 + IMPORT_AFTER_MASTER;
        assert_eq!(
            s.receive(t1, 7, &d),
            Received::NotImported { connections: 1, templates: 0 },
            "MASTER"
        );
        s.on_state(t1, State::Master, State::Stopping);
        assert_eq!(
            s.receive(t1, 7, &d),
            Received::NotImported { connections: 1, templates: 0 },
            "STOPPING"
        );
        s.on_state(t1, State::Stopping, State::Initialize);
        assert_eq!(s.receive(t1, 7, &d), import(sample()));
        assert_eq!(s.receive(t0, 8, &d), Received::OtherId);
        assert!(matches!(s.receive(t0, 7, &d[..5]), Received::Rejected(_)));
    }

    /// A kernel IPVS director's messages go through the same gate: the sync id must match,
    /// and only a director that is not MASTER imports them; a version-0 one is refused.
    #[test]
    fn kernel_ipvs_messages_take_the_same_gate() {
        use crate::sync::ipvs_wire::{self, IpvsConn, IpvsDecodeError, F_TEMPLATE};
        let t0 = Instant::now();
        let c = IpvsConn::from_entry(&sample(), &Default::default()).unwrap();
        let tpl = IpvsConn { flags: F_TEMPLATE, ..c };
        let m = ipvs_wire::encode(7, &[c, tpl]).remove(0);
        let message = ipvs_wire::decode(&m).unwrap();
        let mut s = Session::new();
        s.on_state(t0, State::Initialize, State::Backup);
        assert!(s.tick(t0).request);
        assert_eq!(
            s.receive(t0, 7, &m),
            Received::ImportIpvs { message: message.clone(), first: true }
        );
        s.imported(2);
        assert!(!s.tick(t0).request, "a master is sending: no more table requests");
        assert_eq!(s.receive(t0, 7, &m), Received::ImportIpvs { message, first: false });
        assert_eq!(s.receive(t0, 8, &m), Received::OtherId);
        let mut v0 = vec![1, 7, 0, 28];
        v0.extend_from_slice(&[0; 24]);
        assert_eq!(
            s.receive(t0, 7, &v0),
            Received::IpvsRejected { error: IpvsDecodeError::Version0, first: false }
        );
        // Another pair's (of any version): its sync id is checked first, as the kernel does.
        v0[1] = 99;
        assert_eq!(s.receive(t0, 7, &v0), Received::OtherId);
        // Sync id 0 takes any, as a kernel backup with syncid 0 does.
        assert!(matches!(s.receive(t0, 0, &m), Received::ImportIpvs { .. }));
        s.on_state(t0, State::Backup, State::Master);
        let t1 = t0 + IMPORT_AFTER_MASTER;
        assert_eq!(s.receive(t1, 7, &m), Received::NotImported { connections: 1, templates: 1 });
        // An empty one (the kernel never sends it) is no table request.
        let empty = [0, 7, 0, 8, 0, 1, 0, 0];
        assert!(matches!(s.receive(t1, 7, &empty), Received::NotImported { .. }));
    }

    /// Found by review: every table request made the master send its whole table; anyone
    /// on the link could keep it sending. One answer per ANSWER_INTERVAL, and only from the
    /// master.
    #[test]
    fn table_requests_are_answered_by_the_master_at_most_once_per_interval() {
        let t0 = Instant::now();
        let req = crate::sync::request(7);
        let t = table(10);
        let mut b = Session::new();
        b.on_state(t0, State::Initialize, State::Backup);
        assert_eq!(b.receive(t0, 7, &req), Received::Request { answered: false }, "BACKUP");
        let mut s = master(t0);
        s.tick(t0);
        assert_eq!(entries(&s.export(7, &t, &[], NOW_NS, &any_service, &no_names)), 10);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(s.receive(at(1), 7, &req), Received::Request { answered: true });
        s.tick(at(1));
        assert_eq!(
            entries(&s.export(7, &t, &[], NOW_NS, &any_service, &no_names)),
            10,
            "the whole table"
        );
        for secs in 2..ANSWER_INTERVAL.as_secs() + 1 {
            assert_eq!(s.receive(at(secs), 7, &req), Received::Request { answered: false });
            s.tick(at(secs));
            assert!(s.export(7, &t, &[], NOW_NS, &any_service, &no_names).is_empty());
        }
        let later = at(1) + ANSWER_INTERVAL;
        assert_eq!(s.receive(later, 7, &req), Received::Request { answered: true });
        s.tick(later);
        assert_eq!(entries(&s.export(7, &t, &[], NOW_NS, &any_service, &no_names)), 10);
    }

    /// A new template during a whole-table resend of a big connection table goes out at
    /// once: partly filled datagrams count against the budget and are sent, not left at the
    /// end of the encoded table (found by a review: it went out at the resend's last tick).
    #[test]
    fn a_new_template_is_not_held_up_by_a_resend() {
        let t0 = Instant::now();
        let mut s = master(t0);
        let f = table(40_000);
        let mut ticks = 0;
        loop {
            s.tick(t0 + Duration::from_secs(ticks));
            if s.export(7, &f, &[], NOW_NS, &any_service, &names).is_empty() {
                break;
            }
            ticks += 1;
        }
        let at = t0 + Duration::from_secs(ticks + 10);
        let req = crate::sync::request(7);
        assert_eq!(s.receive(at, 7, &req), Received::Request { answered: true });
        s.tick(at);
        let ds = s.export(7, &f, &templates(1), NOW_NS, &any_service, &names);
        assert_eq!(ds.len(), MAX_DATAGRAMS_PER_TICK, "the resend is paced");
        assert!(ds.iter().any(|d| crate::sync::wire::carries_templates(d)), "the template waits");
    }

    /// More new connections a tick than the budget holds do not starve templates (found by
    /// a review: none went out in 10 ticks of 15,000 new connections each).
    #[test]
    fn busy_connections_do_not_starve_templates() {
        let t0 = Instant::now();
        let mut s = master(t0);
        let tp = templates(10);
        for i in 0..3u32 {
            s.tick(t0 + Duration::from_secs(u64::from(i)));
            let f: Vec<_> = table(15_000 * (i + 1)).into_iter().skip(15_000 * i as usize).collect();
            let ds = s.export(7, &f, &tp, NOW_NS, &any_service, &names);
            assert_eq!(ds.len(), MAX_DATAGRAMS_PER_TICK);
            let tpl = ds.iter().filter(|d| crate::sync::wire::carries_templates(d)).count();
            assert_eq!(tpl, usize::from(i == 0), "tick {i}: the templates once, at once");
        }
    }

    /// The table marks of each datagram: (whole-table send, its end).
    fn marks(ds: &[Vec<u8>]) -> Vec<(bool, bool)> {
        ds.iter()
            .map(|d| {
                let d = decode(d).unwrap();
                (d.table, d.table_end)
            })
            .collect()
    }

    /// Exports at the ticks from `at` on until a tick sends nothing; the socket refuses the
    /// last datagram of the ticks in `refuse`. Returns what went out, tick by tick.
    fn send_all(
        s: &mut Session,
        at: Instant,
        t: &[(LbFlowKey, LbFlow)],
        refuse: &[u64],
    ) -> Vec<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for i in 0.. {
            s.tick(at + Duration::from_secs(i));
            let mut ds = s.export(7, t, &[], NOW_NS, &any_service, &no_names);
            if ds.is_empty() {
                break;
            }
            if refuse.contains(&i) {
                let last = ds.pop().unwrap();
                s.not_sent(&[last]);
            }
            out.push(ds);
        }
        out
    }

    /// A starting director held its preemption a fixed 5 s, whatever the size of the table
    /// still arriving. The datagrams of a whole-table send (becoming MASTER, an answered
    /// request) are marked, and the last one as its end: paced over ticks, the mark is on
    /// the last datagram of the last tick, nothing lost.
    #[test]
    fn a_whole_table_send_is_marked_and_its_last_datagram_ends_it() {
        let t0 = Instant::now();
        let mut s = master(t0);
        let t = table(40_000);
        let ticks = send_all(&mut s, t0, &t, &[]);
        assert!(ticks.len() > 2, "paced over {} ticks", ticks.len());
        let all: Vec<Vec<u8>> = ticks.concat();
        assert_eq!(entries(&all), 40_000);
        let m = marks(&all);
        assert!(m[..m.len() - 1].iter().all(|&x| x == (true, false)), "every one marked");
        assert_eq!(m[m.len() - 1], (true, true), "the last one ends it");

        // Quiet now: diffs are not marked.
        let at = t0 + Duration::from_secs(100);
        let more = table(40_010);
        let ds = send_all(&mut s, at, &more, &[]).concat();
        assert_eq!(entries(&ds), 10);
        assert_eq!(marks(&ds), vec![(false, false)]);

        // A table request: the whole table again, marked, and ended once.
        let at = t0 + Duration::from_secs(200);
        let req = crate::sync::request(7);
        assert_eq!(s.receive(at, 7, &req), Received::Request { answered: true });
        let all = send_all(&mut s, at, &more, &[]).concat();
        assert_eq!(entries(&all), 40_010);
        let ends: Vec<usize> =
            marks(&all).iter().enumerate().filter(|m| m.1 .1).map(|m| m.0).collect();
        assert_eq!(ends, vec![all.len() - 1]);
        assert!(marks(&all).iter().all(|m| m.0));

        // The periodic resend too.
        let ds = send_all(&mut s, t0 + FULL_RESEND, &more, &[]).concat();
        assert_eq!(entries(&ds), 40_010);
        assert_eq!(marks(&ds).last(), Some(&(true, true)));
    }

    /// The end mark is never lost to pacing: a last datagram the socket refused goes at the
    /// next tick with the mark; one that fills the last tick's budget exactly carries it;
    /// one entry more goes alone at the next tick, marked.
    #[test]
    fn the_end_mark_goes_with_the_last_datagram_whichever_tick_that_is() {
        let t0 = Instant::now();
        let per = (crate::sync::MAX_DATAGRAM - crate::sync::wire::HEADER_LEN)
            / crate::sync::wire::ENTRY_LEN_V4;
        let exact = u32::try_from(per * MAX_DATAGRAMS_PER_TICK).unwrap();

        let mut s = master(t0);
        let ticks = send_all(&mut s, t0, &table(exact), &[]);
        assert_eq!(ticks.len(), 1);
        assert_eq!(ticks[0].len(), MAX_DATAGRAMS_PER_TICK);
        assert_eq!(marks(&ticks[0]).last(), Some(&(true, true)));

        let mut s = master(t0);
        let ticks = send_all(&mut s, t0, &table(exact + 1), &[]);
        assert_eq!(ticks.len(), 2);
        assert!(marks(&ticks[0]).iter().all(|&m| m == (true, false)));
        assert_eq!(marks(&ticks[1]), vec![(true, true)]);
        assert_eq!(entries(&ticks[1]), 1);

        // The socket refuses the marked last datagram (and then the one after it): the end
        // goes at the next tick, with the entries it carried.
        let mut s = master(t0);
        let t = table(1_000);
        let ticks = send_all(&mut s, t0, &t, &[0, 1]);
        assert_eq!(ticks.len(), 3);
        let all: Vec<Vec<u8>> = ticks.concat();
        assert_eq!(entries(&all), 1_000, "nothing lost, nothing twice");
        let m = marks(&all);
        assert_eq!(m.iter().filter(|m| m.1).count(), 1);
        assert_eq!(m.last(), Some(&(true, true)));
        assert_eq!(ticks[2].len(), 1);
    }

    /// A whole-table send with nothing to send still ends, with a datagram of no entries
    /// that is no table request; and a send whose last owed entries left the table.
    #[test]
    fn an_empty_whole_table_send_still_ends() {
        let t0 = Instant::now();
        let mut s = master(t0);
        s.tick(t0);
        let ds = s.export(7, &[], &[], NOW_NS, &any_service, &no_names);
        assert_eq!(ds, vec![crate::sync::wire::table_end(7)]);
        let mut rx = Session::new();
        rx.on_state(t0, State::Initialize, State::Backup);
        assert!(!matches!(rx.receive(t0, 7, &ds[0]), Received::Request { .. }));
        s.tick(t0 + Duration::from_secs(1));
        assert!(s.export(7, &[], &[], NOW_NS, &any_service, &no_names).is_empty());
        // Refused: sent again.
        let at = t0 + Duration::from_secs(10);
        assert_eq!(
            s.receive(at, 7, &crate::sync::request(7)),
            Received::Request { answered: true }
        );
        s.tick(at);
        let ds = s.export(7, &[], &[], NOW_NS, &any_service, &no_names);
        s.not_sent(&ds);
        s.tick(at + Duration::from_secs(1));
        let ds = s.export(7, &[], &[], NOW_NS, &any_service, &no_names);
        assert_eq!(ds, vec![crate::sync::wire::table_end(7)]);

        // The table emptied while the answer was owed.
        let mut s = master(t0);
        let t = table(20_000);
        s.tick(t0);
        let first = s.export(7, &t, &[], NOW_NS, &any_service, &no_names);
        assert_eq!(first.len(), MAX_DATAGRAMS_PER_TICK);
        s.tick(t0 + Duration::from_secs(1));
        let ds = s.export(7, &[], &[], NOW_NS, &any_service, &no_names);
        assert_eq!(ds, vec![crate::sync::wire::table_end(7)]);

        // A director that left MASTER still ends the answer it owes, with nothing left.
        let mut s = master(t0);
        s.tick(t0);
        s.export(7, &[], &[], NOW_NS, &any_service, &no_names);
        s.on_state(t0, State::Master, State::Backup);
        let at = t0 + Duration::from_secs(3);
        assert_eq!(
            s.receive(at, 7, &crate::sync::request(7)),
            Received::Request { answered: true }
        );
        assert!(s.tick(at).export);
        let ds = s.export(7, &[], &[], NOW_NS, &any_service, &no_names);
        assert_eq!(ds, vec![crate::sync::wire::table_end(7)]);
    }

    /// A starting director's view of the whole table for its start hold: extended once the
    /// first datagram of a whole-table send arrives, released once its end mark does (not
    /// before), end to end from a master's paced answer.
    #[test]
    fn a_starting_backup_holds_until_the_whole_table_has_arrived() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let t = table(40_000);
        let mut tx = master(t0);
        send_all(&mut tx, t0, &t, &[]);

        let mut rx = Session::new();
        rx.on_state(at(100_000), State::Initialize, State::Backup);
        assert_eq!(rx.start_hold(at(100_000)), None);
        assert!(rx.tick(at(101_000)).request);
        assert_eq!(rx.start_hold(at(101_000)), None, "no answer yet: not extended");
        let req = crate::sync::request(7);
        assert_eq!(tx.receive(at(101_000), 7, &req), Received::Request { answered: true });
        let ticks = send_all(&mut tx, at(101_500), &t, &[]);
        assert!(ticks.len() > 2);
        let mut changes = Vec::new();
        let mut imported = 0;
        for (i, ds) in ticks.iter().enumerate() {
            let now = at(101_600 + 1_000 * i as u64);
            for d in ds {
                match rx.receive(now, 7, d) {
                    Received::Import(d) => imported += d.len(),
                    other => panic!("{other:?}"),
                }
                changes.extend(rx.start_hold(now).map(|c| (i, c)));
            }
            changes.extend(rx.start_hold(now + Duration::from_millis(900)).map(|c| (i, c)));
        }
        assert_eq!(imported, 40_000);
        let last = ticks.len() - 1;
        assert_eq!(
            changes,
            vec![(0, StartHold::Extend), (last, StartHold::Release(HoldRelease::Complete))]
        );
        assert!(!rx.start_hold_extended());
        // Over: a later whole-table send (the periodic resend) extends nothing.
        let later = t0 + FULL_RESEND;
        let ds = send_all(&mut tx, later, &t, &[]).remove(0);
        rx.receive(later, 7, &ds[0]);
        assert_eq!(rx.start_hold(later), None);
    }

    /// The start hold stops waiting for a whole-table send nothing of which has arrived for
    /// TABLE_SILENCE (its master died mid-send), and TABLE_WAIT_MAX after entering BACKUP
    /// whatever arrives; it is not extended by datagrams without the marks (an older
    /// master's, a kernel IPVS master's), by a table that comes whole in one datagram, nor
    /// after entering BACKUP other than from INIT or FAULT.
    #[test]
    fn the_start_hold_is_released_by_silence_the_bound_or_leaving_backup() {
        let t0 = Instant::now();
        let s_at = |s: u64| t0 + Duration::from_secs(s);
        let mut one = encode(7, &[sample()]).remove(0);
        crate::sync::wire::mark_table(&mut one, false);
        let backup = || {
            let mut rx = Session::new();
            rx.on_state(t0, State::Initialize, State::Backup);
            rx
        };

        // Silence.
        let mut rx = backup();
        rx.receive(s_at(2), 7, &one);
        assert_eq!(rx.start_hold(s_at(2)), Some(StartHold::Extend));
        rx.receive(s_at(3), 7, &one);
        assert_eq!(rx.start_hold(s_at(3)), None);
        assert_eq!(rx.start_hold(s_at(5) - Duration::from_millis(1)), None);
        assert_eq!(rx.start_hold(s_at(5)), Some(StartHold::Release(HoldRelease::Silence)));
        rx.receive(s_at(6), 7, &one);
        assert_eq!(rx.start_hold(s_at(6)), None, "over");

        // The bound.
        let mut rx = backup();
        let mut changes = Vec::new();
        for i in 1..=TABLE_WAIT_MAX.as_secs() + 5 {
            rx.receive(s_at(i), 7, &one);
            changes.extend(rx.start_hold(s_at(i)).map(|c| (i, c)));
        }
        let bound = TABLE_WAIT_MAX.as_secs();
        assert_eq!(
            changes,
            vec![(1, StartHold::Extend), (bound, StartHold::Release(HoldRelease::Bound))]
        );

        // Leaving BACKUP (it became MASTER: the master died) releases; FAULT and BACKUP again
        // wait afresh.
        let mut rx = backup();
        rx.receive(s_at(2), 7, &one);
        assert_eq!(rx.start_hold(s_at(2)), Some(StartHold::Extend));
        rx.on_state(s_at(3), State::Backup, State::Fault);
        assert_eq!(rx.start_hold(s_at(3)), Some(StartHold::Release(HoldRelease::LeftBackup)));
        rx.on_state(s_at(4), State::Fault, State::Backup);
        assert_eq!(rx.start_hold(s_at(4)), None);
        rx.receive(s_at(5), 7, &one);
        assert_eq!(rx.start_hold(s_at(5)), Some(StartHold::Extend));
        rx.on_state(s_at(6), State::Backup, State::Fault);
        rx.on_state(s_at(6), State::Fault, State::Backup);
        assert_eq!(rx.start_hold(s_at(6)), Some(StartHold::Release(HoldRelease::LeftBackup)));

        // Not extended: unmarked datagrams (an older master), a table whole in one datagram,
        // kernel IPVS messages, a backup that was MASTER, a datagram of another sync id.
        let plain = encode(7, &[sample()]).remove(0);
        let mut whole = plain.clone();
        crate::sync::wire::mark_table(&mut whole, true);
        let c = crate::sync::ipvs_wire::IpvsConn::from_entry(&sample(), &Default::default());
        let ipvs = crate::sync::ipvs_wire::encode(7, &[c.unwrap()]).remove(0);
        for d in [&plain, &whole, &ipvs] {
            let mut rx = backup();
            for i in 1..10 {
                rx.receive(s_at(i), 7, d);
                assert_eq!(rx.start_hold(s_at(i)), None);
            }
        }
        let mut rx = backup();
        rx.receive(s_at(1), 8, &one);
        assert_eq!(rx.start_hold(s_at(1)), None);
        let mut rx = master(t0);
        rx.on_state(s_at(1), State::Master, State::Backup);
        rx.receive(s_at(2), 7, &one);
        assert_eq!(rx.start_hold(s_at(2)), None);
    }

    /// The budget is in packets on the wire: with the kernel's format (one or two messages a
    /// datagram) fewer datagrams go out a tick, never a datagram cut at the budget's edge.
    #[test]
    fn send_paced_counts_wire_messages_against_the_budget() {
        let datagrams: Vec<Vec<u8>> = (0..300u16).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut wire_sent = 0;
        let one = send_paced(
            &datagrams,
            256,
            |d| vec![d.to_vec()],
            |_| {
                wire_sent += 1;
                true
            },
        );
        assert_eq!((one, wire_sent), (256, 256));

        let mut wire_sent = 0;
        let two = send_paced(
            &datagrams,
            256,
            |d| vec![d.to_vec(), d.to_vec()],
            |_| {
                wire_sent += 1;
                true
            },
        );
        assert_eq!((two, wire_sent), (128, 256));

        // 255 single-message datagrams, then one of two messages: it waits for the next tick.
        let mut wire_sent = 0;
        let edge = send_paced(
            &datagrams,
            256,
            |d| if d == [0, 255] { vec![d.to_vec(), d.to_vec()] } else { vec![d.to_vec()] },
            |_| {
                wire_sent += 1;
                true
            },
        );
        assert_eq!((edge, wire_sent), (255, 255));

        assert_eq!(send_paced(&datagrams[..3], 256, |d| vec![d.to_vec()], |_| true), 3);
    }

    /// A send that fails (socket buffer full) stops the tick; a datagram that went out only
    /// in part is not counted as sent, so it is owed whole.
    #[test]
    fn send_paced_stops_at_a_failed_send_and_owes_a_partly_sent_datagram() {
        let datagrams: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
        let mut calls = 0;
        let sent = send_paced(
            &datagrams,
            256,
            |d| vec![d.to_vec(), vec![d[0], 1]],
            |m| {
                calls += 1;
                m != [5, 1]
            },
        );
        assert_eq!(sent, 5, "datagram 5's second message failed: 0..5 sent, 5.. owed");
        assert_eq!(calls, 12, "nothing is tried after the failure");
    }
}
