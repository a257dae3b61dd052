//! The VRRP state machine for one `vrrp_instance`: pure, sans-IO, clock injected.
//!
//! Nothing here reads a clock, opens a socket or touches an address. The driver
//! feeds events in and executes the [`Action`]s that come out:
//!
//! ```text
//! m.start(now);
//! loop {
//!     while let Some(a) = m.poll_action() { execute(a) }   // send, add/remove VIPs, GARP, notify
//!     select! {
//!         rx = socket.recv() => match packet::decode(..) {
//!             Ok(r)  => m.handle_advert(Instant::now(), r.src, &r.advert),
//!             Err(e) => m.handle_rx_error(&e),
//!         },
//!         _ = sleep_until(m.poll_timeout()) => m.handle_timeout(Instant::now()),
//!         ev = control.recv() => /* m.set_fault / set_priority_adjust / shutdown */,
//!     }
//! }
//! ```
//!
//! Protocol: RFC 5798 / RFC 9568 (v3) and RFC 3768 (v2), with keepalived's
//! vocabulary and start-up semantics (always start as BACKUP, whatever `state`
//! says; only the address owner, priority 255, goes MASTER at once).
//!
//! Timers (all exact, in nanoseconds; intervals are centiseconds on the wire):
//! - v3: `Skew_Time = (256 − Priority) × Master_Adver_Interval / 256`; v2 (RFC 3768):
//!   `Skew_Time = (256 − Priority) / 256` seconds. Both use the effective priority.
//! - `Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time`.
//! - v3 learns `Master_Adver_Interval` from the master's adverts; v2 requires
//!   the advert's interval to equal ours (RFC 3768 §7.1, keepalived: drop).
//!
//! Where ha-lb deliberately differs from keepalived (each has tests below):
//!
//! 1. **Make-before-break stop.** [`Machine::shutdown`] as MASTER sends a
//!    priority-0 advert and enters STOPPING: VIPs stay (we keep serving) and a
//!    priority-0 advert is repeated every `advert_int`, until an advert with
//!    priority > 0 from an allowed peer shows someone took over, or
//!    [`Machine::stop_timeout`] passes: the Master_Down_Interval of the
//!    slowest possible backup (priority 1) plus half an interval for transit,
//!    `3 × I + Skew_Time(1) + I/2` (≈ 4.5 s at 1 s). Any backup takes over
//!    `Skew_Time` (< 1 interval) after our priority-0 advert; even if every
//!    priority-0 advert is lost, its own down timer (armed by our last normal
//!    advert, sent ≤ now) fires within `3 × I + Skew_Time(p)`. So by the
//!    deadline either someone holds the VIPs or nobody will. A second
//!    `shutdown` call removes the VIPs at once.
//!    The takeover advert comes *before* the new master has its VIPs (RFC
//!    order; keepalived sends it first on purpose, and adding addresses takes
//!    a netlink round trip), so STOPPING keeps the VIPs for
//!    [`Machine::handover_linger`] (one `advert_int`, at least 50 ms, never
//!    past the stop timeout) after it, advertising nothing, and only then
//!    removes them. Removing at once left the VIP on nobody for up to ~25 ms
//!    in the lab (lost client packets) with either peer. While STOPPING, a
//!    takeover advert from a source not on the learned allow-list counts too
//!    (the backup of a pair never advertised before): a forged one can only
//!    end the linger early, and by then our priority-0 advert has let the real
//!    backup take over (Skew_Time < linger).
//! 2. **Peer allow-list.** With `unicast_peers` configured, only those sources
//!    count. Otherwise the sources seen during `peer_settle` (default
//!    10 × `advert_int` from start) are locked in and logged — also when
//!    there are none, as for the master of a multicast pair, which hears
//!    nobody (an open list there let the first forged source in for good,
//!    obeyed in every state from then on). While learning,
//!    a new source is accepted at once, on its first advert: no probation, so
//!    in a start-up race the lower router obeys the higher one's first advert
//!    (before its own, longer, down timer fires). Later unknown
//!    sources are ignored and counted — except
//!    that, since VRRP backups never advertise, a group member we could not
//!    learn (it was backup all along) is admitted once it has sent
//!    `admit_unknown_after` (default 3) consecutive, on-schedule adverts. One
//!    forged packet is never enough. `None` makes the list strict.
//!    While such a source is on probation, a BACKUP whose down timer runs
//!    treats its adverts that would beat us as "someone may be master": the
//!    down timer is postponed to 2 × that source's interval after each one, so
//!    the member is admitted before we would jump in beside it. (Without this,
//!    when the master of three dies, the lowest backup — which never heard the
//!    middle one, a silent backup until then — went MASTER too for ~100 ms
//!    and both held the VIPs.) A forged advert can so delay a takeover by at
//!    most 2 × its interval (≤ 20 × `advert_int`, rule 3) unless it keeps
//!    coming on schedule, and then it would be admitted anyway.
//!    A MASTER whose effective priority tracking has lowered (until it is back
//!    up) likewise takes an advert from a source on probation that beats it as
//!    it would an allowed peer's (rule 4): it starts a yield, and that source's
//!    next advert on schedule confirms it. That is the normal handover of a
//!    multicast pair: our priority drops (a track script's weight) and the
//!    backup, silent while we learned, preempts; waiting for its admission kept
//!    both routers holding the VIPs for `admit_unknown_after` of its intervals
//!    (1.4–2.4 s at `advert_int 1`); now it is one interval at most, as for a
//!    known peer (keepalived steps down on the first advert). Only then: with
//!    its priority intact, nobody we never heard has reason to preempt us, and
//!    forged adverts from a new source must pass probation before a yield (the
//!    `vrrp_hostile` lab sends two on schedule; the VIP does not move). While
//!    lowered, one forged advert still costs only a yield and a GARP; two on
//!    schedule from one new source make us step down once, as two forged with
//!    an allowed peer's address would at any time: we take over again after
//!    our Master_Down_Interval unless it goes on, and it gains no place on the
//!    list.
//! 3. **Interval bound.** A v3 advert whose Max Adver Int lies outside
//!    `[advert_int / f, advert_int × f]` (f = `advert_int_factor`, default 10)
//!    is ignored and counted: a forged 4095 cs advert can neither stretch a
//!    backup's down timer to ~2 minutes nor shrink it to nothing.
//! 4. **No black hole from one forged advert.** keepalived's master steps down
//!    (removing VIPs) on one higher-priority advert; if that advert was forged
//!    nobody is master until a down timer fires (~3 × interval). ha-lb's master
//!    ignores unknown sources (rule 2: while its priority is lowered, those on
//!    probation excepted) and, for an allowed one, *yields* instead: it keeps
//!    VIPs and keeps
//!    advertising while it waits for a second
//!    advert from the same source that still beats it, within 2 × that
//!    source's interval. Confirmed → BACKUP (RFC step-down, VIPs removed).
//!    Not confirmed → stays MASTER, sends GARP again, counts `yields_aborted`.
//!    Cost: a genuine preemption keeps both routers holding the VIPs for one
//!    interval (the new master's GARP already moved traffic), never zero.
//! 5. **No amplification.** RFC 5798 §6.4.3 says a master discards a
//!    lower-priority advert; keepalived answers each with an advert plus a
//!    burst of GARPs. A lower-priority advert from an allowed peer means a
//!    second master (e.g. after a partition heals, or a start-up race), so
//!    ha-lb answers with at most one early advert per `advert_int` (and resets
//!    its advert timer) plus at most one gratuitous burst
//!    ([`Action::SendGratuitous`]) per [`Machine::dual_master_garp_interval`]
//!    (10 × `advert_int`), each limit counted on its own. The GARP is needed:
//!    the loser announced itself with GARPs, and neighbours whose caches point
//!    at it keep sending there after it steps down (or dies) until their ARP
//!    entries expire. The loser steps down within 2 × its interval (rule 4),
//!    so one burst per 10 intervals covers every dual master while a flood of
//!    lower-priority adverts, at any rate, costs at most one advert per
//!    interval and one burst per 10 intervals. The RFC's "priority 0 received
//!    → advert now" shares the advert limit (no GARP).
//!
//! Preemption: as in RFC 5798 a backup with higher priority ignores a
//! lower-priority master, but rather than waiting a full down interval it
//! arms its down timer to `Skew_Time` (like a priority-0 advert), so the
//! highest-priority backup goes first. keepalived goes MASTER immediately
//! ("forcing a new MASTER election"), which makes every higher backup jump at
//! once. `preempt_delay` (keepalived: seconds after start-up or after first
//! seeing a lower-priority master) is armed at start, on leaving FAULT and on
//! first seeing a lower-priority master; until it passes, lower-priority
//! adverts are accepted as a normal master's. `nopreempt` accepts them always.
//! ha-lb's `start_hold` ([`Config::start_hold`]) holds preemption the same way
//! but only after start and on leaving FAULT (from then, or from the first
//! advert seen since if that is a lower master's, whichever ends later), never
//! on merely seeing a lower master later: a master whose priority drops (its
//! tracking failed) is preempted at once. Connection sync extends a start hold that is
//! still running while the master's whole table is arriving
//! ([`Machine::extend_start_hold`]), until it is released, and at most
//! [`Config::start_hold_max`] after the hold began.
//! Equal priority never preempts a running master (RFC); the tie-break by
//! primary address applies between masters.
//!
//! Effective priority = base + tracking adjustment clamped to 1..=254; a base
//! of 255 (address owner) stays 255. An address owner processes received
//! adverts normally (RFC 9568 says drop them; processing lets two owners on
//! one VRID converge by address instead of both staying MASTER).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::packet::{
    Advert, Auth, ChecksumForm, DecodeError, Received, RxErrorCounters, Version,
    V2_MAX_ADVER_INT_CS, V3_MAX_ADVER_INT_CS,
};

/// Priority of the address owner.
pub const PRIORITY_OWNER: u8 = 255;
/// Priority a stopping master advertises.
pub const PRIORITY_STOP: u8 = 0;
/// keepalived's default `priority`.
pub const DEFAULT_PRIORITY: u8 = 100;
/// Most unknown sources tracked at once while on probation (rule 2).
const MAX_PROBATION: usize = 16;
/// Most sources remembered for a once-per-peer log line ([`LoggedOnce`]).
const MAX_LOGGED_PEERS: usize = 64;

/// Configuration of one instance, in keepalived's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub virtual_router_id: u8,
    pub version: Version,
    /// Base priority, 1..=255 (255 = address owner).
    pub priority: u8,
    /// `advert_int` in centiseconds (v2: a whole number of seconds).
    pub advert_int_cs: u16,
    /// Our source address for adverts (`unicast_src_ip` / interface primary);
    /// also the tie-breaker.
    pub primary_address: IpAddr,
    pub virtual_ipaddresses: Vec<IpAddr>,
    pub nopreempt: bool,
    pub preempt_delay: Duration,
    /// ha-lb: after start and on leaving FAULT, preemption of a lower-priority master is
    /// held at least this long (from then, or from the first advert seen since if it is a
    /// lower master's), like `preempt_delay` but never armed again by a master whose
    /// priority drops later. Connection sync uses it, so that a restarted director has the
    /// master's connections before it takes the VIPs back. No effect with `nopreempt`.
    pub start_hold: Duration,
    /// ha-lb: the bound of [`Machine::extend_start_hold`]: an extended start hold holds
    /// preemption at most this long after it began (counted as `start_hold` is). Zero: it
    /// is never extended.
    pub start_hold_max: Duration,
    /// `unicast_peer`; when non-empty it is also the strict allow-list.
    pub unicast_peers: Vec<IpAddr>,
    /// v2 only.
    pub auth: Auth,
    /// ha-lb: learning window for the allow-list when no peers are configured
    /// (`None`: 10 × `advert_int`).
    pub peer_settle: Option<Duration>,
    /// ha-lb: admit an unknown source after this many consecutive adverts
    /// (learned allow-list only; `None`: never).
    pub admit_unknown_after: Option<u32>,
    /// ha-lb: accepted v3 Max Adver Int range is `[advert_int / f, advert_int × f]`.
    pub advert_int_factor: u16,
    /// keepalived `garp_master_delay`: second GARP this long after becoming
    /// MASTER (`None`: no second round).
    pub garp_master_delay: Option<Duration>,
    /// A member of a `vrrp_sync_group`: when it would become MASTER (its down timer
    /// expired, or it preempts) it only says it is ready ([`Action::SyncGroupReady`]) and
    /// becomes MASTER when its group agrees ([`Machine::sync_group_master`]), as keepalived's
    /// members do: the group goes MASTER only when every member would.
    pub sync_group: bool,
}

impl Config {
    /// keepalived defaults: priority 100, `advert_int 1`, preempt, version 2
    /// for IPv4 and 3 for IPv6, no authentication, `garp_master_delay 5`.
    pub fn new(
        virtual_router_id: u8,
        primary_address: IpAddr,
        virtual_ipaddresses: Vec<IpAddr>,
    ) -> Config {
        Config {
            virtual_router_id,
            version: if primary_address.is_ipv4() { Version::V2 } else { Version::V3 },
            priority: DEFAULT_PRIORITY,
            advert_int_cs: 100,
            primary_address,
            virtual_ipaddresses,
            nopreempt: false,
            preempt_delay: Duration::ZERO,
            start_hold: Duration::ZERO,
            start_hold_max: Duration::ZERO,
            unicast_peers: Vec::new(),
            auth: Auth::None,
            peer_settle: None,
            admit_unknown_after: Some(3),
            advert_int_factor: 10,
            garp_master_delay: Some(Duration::from_secs(5)),
            sync_group: false,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.virtual_router_id == 0 {
            return Err(ConfigError::VirtualRouterId);
        }
        if self.priority == 0 {
            return Err(ConfigError::Priority);
        }
        let v4 = self.primary_address.is_ipv4();
        match self.version {
            Version::V2 => {
                if !v4 {
                    return Err(ConfigError::V2OverIpv6);
                }
                let cs = self.advert_int_cs;
                if cs == 0 || !cs.is_multiple_of(100) || cs > V2_MAX_ADVER_INT_CS {
                    return Err(ConfigError::AdvertInt(cs));
                }
            }
            Version::V3 => {
                if self.advert_int_cs == 0 || self.advert_int_cs > V3_MAX_ADVER_INT_CS {
                    return Err(ConfigError::AdvertInt(self.advert_int_cs));
                }
                if self.auth != Auth::None {
                    return Err(ConfigError::AuthOnV3);
                }
            }
        }
        if self.virtual_ipaddresses.len() > 255 {
            return Err(ConfigError::TooManyAddresses(self.virtual_ipaddresses.len()));
        }
        if self.virtual_ipaddresses.iter().chain(&self.unicast_peers).any(|a| a.is_ipv4() != v4) {
            return Err(ConfigError::FamilyMismatch);
        }
        if self.unicast_peers.contains(&self.primary_address) {
            return Err(ConfigError::PeerIsSelf);
        }
        if self.advert_int_factor == 0 || self.admit_unknown_after == Some(0) {
            return Err(ConfigError::Hardening);
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("virtual_router_id must be 1..=255")]
    VirtualRouterId,
    #[error("priority must be 1..=255")]
    Priority,
    #[error("VRRP version 2 is IPv4 only")]
    V2OverIpv6,
    #[error("advert_int {0} cs is invalid for this version (v2: whole seconds 1..=255, v3: 1..=4095 cs)")]
    AdvertInt(u16),
    #[error("authentication is VRRPv2 only")]
    AuthOnV3,
    #[error("{0} virtual addresses; at most 255")]
    TooManyAddresses(usize),
    #[error("virtual_ipaddress and unicast_peer must be of the primary address's family")]
    FamilyMismatch,
    #[error("unicast_peer lists our own address")]
    PeerIsSelf,
    #[error("advert_int_factor and admit_unknown_after must be at least 1")]
    Hardening,
}

/// Instance state, with keepalived's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started, or stopped.
    Initialize,
    Backup,
    Master,
    /// Tracking failed (keepalived FAULT): no VIPs, no adverts.
    Fault,
    /// Graceful stop in progress: priority-0 sent, VIPs still held.
    Stopping,
}

impl State {
    /// The name used in logs and status output.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
            State::Stopping => "STOPPING",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `start`: INIT → BACKUP.
    Startup,
    /// `start` or fault recovery with priority 255: → MASTER at once.
    AddressOwner,
    /// Master_Down_Timer expired: no advert from a master for Master_Down_Interval.
    MasterDown,
    /// The master sent priority 0 and our Skew_Time passed.
    MasterStopped {
        from: IpAddr,
    },
    /// We preempted a lower-priority master after our Skew_Time.
    Preempt {
        from: IpAddr,
        priority: u8,
    },
    /// A confirmed higher-priority (or equal priority, higher address) master.
    HigherPriority {
        from: IpAddr,
        priority: u8,
    },
    FaultSet,
    FaultCleared,
    /// `shutdown` was called.
    Shutdown,
    /// While STOPPING, a peer's advert showed it took over.
    PeerTookOver {
        from: IpAddr,
    },
    /// While STOPPING, nobody took over within the stop timeout.
    StopTimeout,
    /// `shutdown` called again while STOPPING.
    ShutdownForced,
    /// A sync group: another member left MASTER (or follows a master), so this one leaves
    /// MASTER too. (A member the group orders MASTER reports the reason it was ready for.)
    SyncGroup,
}

/// For logs and operators: what happened, in words (`Debug` is Rust's syntax).
impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Startup => f.write_str("startup"),
            Reason::AddressOwner => f.write_str("address owner (priority 255)"),
            Reason::MasterDown => f.write_str("no advert from a master for Master_Down_Interval"),
            Reason::MasterStopped { from } => write!(f, "master {from} stopped (priority 0)"),
            Reason::Preempt { from, priority } => {
                write!(f, "preempted master {from} (priority {priority})")
            }
            Reason::HigherPriority { from, priority } => {
                write!(f, "higher-priority master {from} (priority {priority})")
            }
            Reason::FaultSet => f.write_str("fault (tracking)"),
            Reason::FaultCleared => f.write_str("fault cleared"),
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::PeerTookOver { from } => write!(f, "{from} took over"),
            Reason::StopTimeout => f.write_str("nobody took over within the stop timeout"),
            Reason::ShutdownForced => f.write_str("shutdown forced"),
            Reason::SyncGroup => f.write_str("sync group: another member is not MASTER"),
        }
    }
}

/// What the driver must do. Execute in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Encode (`Advert::encode`) from `primary_address` to the multicast group
    /// or to each `unicast_peer`, TTL/hop limit 255.
    SendAdvert(Advert),
    /// Add the instance's `virtual_ipaddress`es.
    AddVips,
    /// Remove them.
    RemoveVips,
    /// Send gratuitous ARP (IPv4) / unsolicited NA (IPv6) for every VIP
    /// (keepalived `garp_master_repeat` packets each).
    SendGratuitous,
    /// For logs, notify scripts, the reconciler and status.
    StateChanged { from: State, to: State, reason: Reason },
    /// A sync group member ([`Config::sync_group`]) would become MASTER now (`true`), or no
    /// longer would (`false`: it hears a master it follows). Tell the group; it answers
    /// with [`Machine::sync_group_master`] once every member is ready.
    SyncGroupReady(bool),
}

/// Everything counted, for status output. Every ignored advert lands in
/// exactly one `ignored_*` field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Adverts passed to `handle_advert`.
    pub adverts_received: u64,
    /// Adverts that passed every check and were processed.
    pub adverts_accepted: u64,
    pub adverts_sent: u64,
    pub priority_zero_received: u64,
    pub priority_zero_sent: u64,
    pub became_master: u64,
    pub became_backup: u64,
    pub became_fault: u64,
    /// Received while INIT or FAULT.
    pub ignored_inactive: u64,
    pub ignored_vrid: u64,
    pub ignored_version: u64,
    pub ignored_family: u64,
    /// Our own advert looped back.
    pub ignored_own: u64,
    /// v2 auth type or password differs.
    pub ignored_auth: u64,
    /// v2 Adver Int differs from ours.
    pub ignored_interval_mismatch: u64,
    /// v3 Max Adver Int outside the accepted range (rule 3).
    pub ignored_interval_out_of_range: u64,
    /// Source not on the allow-list (rule 2); also when a lowered MASTER yields to it.
    pub ignored_not_allowed: u64,
    /// v2 advert with a different VIP list from a non-owner (RFC 3768: drop).
    pub ignored_addr_list: u64,
    /// VIP list differs from ours (logged once per peer; v3 still processes it, RFC 5798
    /// §7.1, while keepalived would drop it).
    pub addr_list_mismatch: u64,
    /// As MASTER: lower-priority advert received (rule 5).
    pub lower_priority_received: u64,
    /// As BACKUP: lower-priority master seen, down timer cut to Skew_Time.
    pub preempt_lower_priority: u64,
    /// Extra adverts sent outside the schedule (rule 5), and those rate-limited away.
    pub early_adverts_sent: u64,
    pub early_adverts_suppressed: u64,
    /// Rule 5: gratuitous bursts sent because a second master showed up, and
    /// those rate-limited away.
    pub dual_master_garps_sent: u64,
    pub dual_master_garps_suppressed: u64,
    /// Rule 4: yields started, confirmed (stepped down) and aborted (kept MASTER).
    pub yields_started: u64,
    pub yields_confirmed: u64,
    pub yields_aborted: u64,
    /// Rule 2: unknown sources admitted after probation.
    pub peers_admitted: u64,
    /// VRRPv3/IPv4 adverts accepted with a checksum of another form than RFC 5798's
    /// (see `packet`): the multicast group in the pseudo-header (old keepalived unicast),
    /// and no pseudo-header (RFC 9568, keepalived `v3_checksum_as_v2`).
    pub checksum_multicast_group: u64,
    pub checksum_message_only: u64,
    /// Decode failures reported through `handle_rx_error`.
    pub rx_errors: RxErrorCounters,
}

impl Counters {
    /// Sum of the `ignored_*` counters.
    pub fn ignored_total(&self) -> u64 {
        self.ignored_inactive
            + self.ignored_vrid
            + self.ignored_version
            + self.ignored_family
            + self.ignored_own
            + self.ignored_auth
            + self.ignored_interval_mismatch
            + self.ignored_interval_out_of_range
            + self.ignored_not_allowed
            + self.ignored_addr_list
    }
}

/// How the allow-list is currently formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMode {
    /// From `unicast_peers`; strict.
    Configured,
    /// Learning; locks in at `until` (or a settle window after the first advert).
    Learning { until: Option<Instant> },
    /// Learned and locked in.
    Locked,
}

#[derive(Clone, Debug)]
struct Probation {
    count: u32,
    last: Instant,
}

/// Keys (a peer, with what was logged about it) already logged once: a log line per peer,
/// not per advert. Bounded, so forged sources cannot grow it; past the bound nothing new is
/// logged (the counters still count).
#[derive(Clone, Debug)]
struct LoggedOnce<K>(BTreeSet<K>);

impl<K: Ord> LoggedOnce<K> {
    fn new() -> Self {
        LoggedOnce(BTreeSet::new())
    }
    /// True the first time `key` is seen (while there is room).
    fn first(&mut self, key: K) -> bool {
        self.0.len() < MAX_LOGGED_PEERS && self.0.insert(key)
    }
}

#[derive(Clone, Debug)]
struct Yield {
    from: IpAddr,
    deadline: Instant,
}

/// One VRRP instance's state machine.
#[derive(Debug)]
pub struct Machine {
    cfg: Config,
    state: State,
    fault: bool,
    priority_adjust: i32,
    effective_priority: u8,
    /// Our effective priority before tracking lowered it, until it is back up there: a
    /// backup may now preempt us, so a MASTER yields to a source on probation (rule 2).
    lowered_from: Option<u8>,
    /// Master_Adver_Interval, centiseconds.
    master_adver_int_cs: u16,
    current_master: Option<IpAddr>,
    // Timers (only those meaningful in the current state are set).
    adver_timer: Option<Instant>,
    master_down_timer: Option<Instant>,
    /// What we'll report when the down timer fires.
    down_reason: Reason,
    /// Sync group member, BACKUP: ready to become MASTER, for this reason, and waiting for
    /// the group ([`Config::sync_group`]).
    ready: Option<Reason>,
    preempt_until: Option<Instant>,
    /// Started or left FAULT, and no advert seen since: a first lower-priority master's
    /// advert arms [`Config::start_hold`].
    start_hold_pending: bool,
    /// A start hold is running: until then it may be extended ([`Config::start_hold_max`]
    /// after it began). `None` once a master that is not lower was heard, and outside BACKUP.
    start_hold_bound: Option<Instant>,
    /// [`Machine::extend_start_hold`]: the running start hold waits until released (or
    /// `start_hold_bound`).
    start_hold_extended: bool,
    garp_timer: Option<Instant>,
    stop_deadline: Option<Instant>,
    /// STOPPING: the peer whose advert showed it took over (VIPs linger, rule 1).
    handed_over_to: Option<IpAddr>,
    yielding: Option<Yield>,
    last_early_advert: Option<Instant>,
    /// Rule 5: when we last sent a gratuitous burst for a second master.
    last_dual_master_garp: Option<Instant>,
    // Allow-list.
    peers: BTreeSet<IpAddr>,
    peer_mode: PeerMode,
    probation: BTreeMap<IpAddr, Probation>,
    /// Peers whose checksum form was logged.
    checksum_logged: LoggedOnce<(IpAddr, ChecksumForm)>,
    /// Peers whose differing address list was logged.
    addr_list_logged: LoggedOnce<IpAddr>,
    actions: VecDeque<Action>,
    counters: Counters,
}

fn cs(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

/// Effective priority: base + adjustment clamped to 1..=254; the owner stays 255.
pub fn effective_priority(base: u8, adjust: i32) -> u8 {
    if base == PRIORITY_OWNER {
        PRIORITY_OWNER
    } else {
        (i64::from(base) + i64::from(adjust)).clamp(1, 254) as u8
    }
}

/// RFC 5798 §6.1 (v3) / RFC 3768 §6.1 (v2) Skew_Time, exact.
pub fn skew_time(version: Version, priority: u8, master_adver_int_cs: u16) -> Duration {
    let weight = 256 - u64::from(priority);
    match version {
        // (256 − p) × MAI / 256, with MAI in ns = cs × 10^7.
        Version::V3 => {
            Duration::from_nanos(weight * u64::from(master_adver_int_cs) * 10_000_000 / 256)
        }
        // (256 − p) / 256 seconds.
        Version::V2 => Duration::from_nanos(weight * 1_000_000_000 / 256),
    }
}

/// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
pub fn master_down_interval(version: Version, priority: u8, master_adver_int_cs: u16) -> Duration {
    cs(master_adver_int_cs) * 3 + skew_time(version, priority, master_adver_int_cs)
}

impl Machine {
    pub fn new(cfg: Config) -> Result<Machine, ConfigError> {
        cfg.validate()?;
        let peers: BTreeSet<IpAddr> = cfg.unicast_peers.iter().copied().collect();
        let peer_mode = if peers.is_empty() {
            PeerMode::Learning { until: None }
        } else {
            PeerMode::Configured
        };
        Ok(Machine {
            effective_priority: cfg.priority,
            master_adver_int_cs: cfg.advert_int_cs,
            state: State::Initialize,
            fault: false,
            priority_adjust: 0,
            lowered_from: None,
            current_master: None,
            adver_timer: None,
            master_down_timer: None,
            down_reason: Reason::MasterDown,
            ready: None,
            preempt_until: None,
            start_hold_pending: false,
            start_hold_bound: None,
            start_hold_extended: false,
            garp_timer: None,
            stop_deadline: None,
            handed_over_to: None,
            yielding: None,
            last_early_advert: None,
            last_dual_master_garp: None,
            peers,
            peer_mode,
            probation: BTreeMap::new(),
            checksum_logged: LoggedOnce::new(),
            addr_list_logged: LoggedOnce::new(),
            actions: VecDeque::new(),
            counters: Counters::default(),
            cfg,
        })
    }

    // ----- observation -------------------------------------------------------

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn state(&self) -> State {
        self.state
    }
    pub fn effective_priority(&self) -> u8 {
        self.effective_priority
    }
    /// Master_Adver_Interval in centiseconds (learned in v3 BACKUP).
    pub fn master_adver_int_cs(&self) -> u16 {
        self.master_adver_int_cs
    }
    pub fn skew_time(&self) -> Duration {
        skew_time(self.cfg.version, self.effective_priority, self.master_adver_int_cs)
    }
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.cfg.version, self.effective_priority, self.master_adver_int_cs)
    }
    /// Rule 1 bound: how long STOPPING may keep the VIPs.
    pub fn stop_timeout(&self) -> Duration {
        let i = self.cfg.advert_int_cs;
        master_down_interval(self.cfg.version, 1, i) + cs(i) / 2
    }
    /// Rule 1: how long STOPPING keeps the VIPs after a peer's advert showed it
    /// took over, so the new master has added them (it advertises first).
    pub fn handover_linger(&self) -> Duration {
        cs(self.cfg.advert_int_cs).max(Duration::from_millis(50))
    }
    /// Rule 5: at most one gratuitous burst per this interval in answer to
    /// lower-priority adverts (a second master), whatever their rate.
    pub fn dual_master_garp_interval(&self) -> Duration {
        cs(self.cfg.advert_int_cs) * 10
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// The router we believe is master (ourselves when MASTER).
    pub fn current_master(&self) -> Option<IpAddr> {
        self.current_master
    }
    /// The allow-list and how it was formed.
    pub fn peers(&self) -> (&BTreeSet<IpAddr>, &PeerMode) {
        (&self.peers, &self.peer_mode)
    }
    /// True while MASTER is waiting to confirm a higher-priority advert (rule 4).
    pub fn is_yielding(&self) -> bool {
        self.yielding.is_some()
    }
    /// A sync group member in BACKUP that would be MASTER and waits for its group.
    pub fn is_ready_for_master(&self) -> bool {
        self.ready.is_some()
    }
    /// Whether the VIPs are (supposed to be) configured: MASTER or STOPPING.
    pub fn holds_vips(&self) -> bool {
        matches!(self.state, State::Master | State::Stopping)
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Machine::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.adver_timer,
            self.master_down_timer,
            self.garp_timer,
            self.stop_deadline,
            self.yielding.as_ref().map(|y| y.deadline),
            match self.peer_mode {
                PeerMode::Learning { until } => until,
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- control -----------------------------------------------------------

    /// Start the instance: BACKUP with a full down timer (keepalived ignores
    /// `state MASTER` here too), or MASTER at once for the address owner.
    pub fn start(&mut self, now: Instant) {
        if self.state != State::Initialize {
            debug!(
                virtual_router_id = self.cfg.virtual_router_id,
                "start ignored: already running"
            );
            return;
        }
        let settle = self.peer_settle();
        if let PeerMode::Learning { until } = &mut self.peer_mode {
            *until = Some(now + settle);
        }
        if self.fault {
            self.enter_fault(Reason::FaultSet);
        } else {
            self.enter_running(now, Reason::Startup);
        }
    }

    /// Stop. As MASTER: make-before-break (rule 1). Elsewhere: INIT at once.
    /// Calling it again while STOPPING removes the VIPs immediately.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Initialize => {}
            State::Master => {
                self.send_advert(PRIORITY_STOP);
                self.clear_timers();
                self.adver_timer = Some(now + cs(self.cfg.advert_int_cs));
                self.stop_deadline = Some(now + self.stop_timeout());
                self.transition(State::Stopping, Reason::Shutdown);
            }
            State::Stopping => self.finish_stop(Reason::ShutdownForced),
            State::Backup | State::Fault => {
                self.clear_timers();
                self.current_master = None;
                self.transition(State::Initialize, Reason::Shutdown);
            }
        }
    }

    /// keepalived FAULT: tracking (interface, script, …) failed or recovered.
    pub fn set_fault(&mut self, now: Instant, fault: bool) {
        if fault == self.fault {
            return;
        }
        self.fault = fault;
        match (fault, self.state) {
            (_, State::Initialize) => {}
            (true, State::Master | State::Stopping) => {
                // Can't serve: hand over now.
                self.hand_over_now();
                self.enter_fault(Reason::FaultSet);
            }
            (true, _) => self.enter_fault(Reason::FaultSet),
            (false, State::Fault) => self.enter_running(now, Reason::FaultCleared),
            (false, _) => {}
        }
    }

    /// Tracking weights changed: effective priority = base + `adjust`, clamped.
    pub fn set_priority_adjust(&mut self, now: Instant, adjust: i32) {
        self.priority_adjust = adjust;
        let new = effective_priority(self.cfg.priority, adjust);
        if new == self.effective_priority {
            return;
        }
        info!(
            virtual_router_id = self.cfg.virtual_router_id,
            from = self.effective_priority,
            to = new,
            "effective priority changed"
        );
        self.set_effective_priority(new);
        if self.state == State::Master {
            // Let backups see the new priority now rather than next interval.
            self.early_advert(now);
        }
    }

    /// The effective priority is now `new` (tracking or a reload): remembers the priority
    /// it was lowered from until it is back up there, for rule 4's yield to a source on
    /// probation ([`Self::yield_for_probation`]).
    fn set_effective_priority(&mut self, new: u8) {
        let old = self.effective_priority;
        self.effective_priority = new;
        self.lowered_from = match self.lowered_from {
            Some(from) if new >= from => None,
            Some(from) => Some(from),
            None if new < old => Some(old),
            None => None,
        };
    }

    /// A reload changed what can change without re-running the election (keepalived's
    /// `clear_diff_vrrp`): the base priority (not to or from 255: owning the addresses is
    /// decided at start), the advertised addresses and the preemption settings. The state
    /// stays; a MASTER advertises the new priority and address list at once (rule 5's
    /// limit), and the usual rules follow: a backup whose priority is now above ours
    /// preempts, a higher priority here preempts a lower master at its next advert. The
    /// driver adds and removes the addresses themselves.
    pub fn reconfigure(
        &mut self,
        now: Instant,
        priority: u8,
        virtual_ipaddresses: Vec<IpAddr>,
        nopreempt: bool,
        preempt_delay: Duration,
    ) {
        let addrs_changed = virtual_ipaddresses != self.cfg.virtual_ipaddresses;
        self.cfg.virtual_ipaddresses = virtual_ipaddresses;
        self.cfg.nopreempt = nopreempt;
        self.cfg.preempt_delay = preempt_delay;
        if nopreempt {
            self.preempt_until = None;
            self.start_hold_bound = None;
        }
        self.cfg.priority = priority;
        let new = effective_priority(priority, self.priority_adjust);
        let priority_changed = new != self.effective_priority;
        if priority_changed {
            info!(
                virtual_router_id = self.cfg.virtual_router_id,
                from = self.effective_priority,
                to = new,
                "priority changed by reload"
            );
            self.set_effective_priority(new);
        }
        if self.state == State::Master && (priority_changed || addrs_changed) {
            self.early_advert(now);
        }
    }

    /// A reload took the instance out of its sync group: if it was ready, it becomes MASTER
    /// now, for the reason it was ready. (Joining one takes a restart with the group.)
    pub fn leave_sync_group(&mut self, now: Instant) {
        self.cfg.sync_group = false;
        // Its own group now, which agrees.
        self.sync_group_master(now);
    }

    /// The sync group agrees: every member is ready (or MASTER). Becomes MASTER if still
    /// ready; otherwise (it heard a master meanwhile, or left BACKUP) does nothing.
    pub fn sync_group_master(&mut self, now: Instant) {
        if self.state != State::Backup {
            return;
        }
        if let Some(reason) = self.ready.take() {
            self.become_master(now, reason);
        }
    }

    /// Another member of the sync group left MASTER, or follows a master: leave MASTER too
    /// (keepalived's "syncing instances to BACKUP"), so one node never holds some of the
    /// group's VIPs and its peer the others. Priority 0 first, so the peer's instance takes
    /// over after its Skew_Time rather than its Master_Down_Interval. Nothing outside MASTER.
    pub fn sync_group_backup(&mut self, now: Instant) {
        if self.state != State::Master {
            return;
        }
        self.hand_over_now();
        self.current_master = None;
        self.enter_backup(now, Reason::SyncGroup);
    }

    /// A master that cannot go on (FAULT, its sync group left MASTER) hands over at once:
    /// priority 0, so a backup takes over after its Skew_Time rather than its
    /// Master_Down_Interval, and its VIPs go (unlike a graceful stop, which keeps them
    /// until the new master is heard).
    fn hand_over_now(&mut self) {
        self.send_advert(PRIORITY_STOP);
        self.actions.push_back(Action::RemoveVips);
    }

    /// ha-lb, connection sync: the master's whole connection table is arriving (`extend`),
    /// or no longer is (it has arrived, or stopped arriving). While extended, a start hold
    /// that is still running ([`Config::start_hold`]: after start or leaving FAULT, until a
    /// master that is not lower is heard) holds preemption of a lower-priority master beyond
    /// `start_hold`, until released, and at most [`Config::start_hold_max`] after it began.
    /// `start_hold` stays the minimum. Entering BACKUP from INIT or FAULT starts a new hold,
    /// not extended.
    pub fn extend_start_hold(&mut self, extend: bool) {
        self.start_hold_extended = extend;
    }

    /// Operator override: add a source to the allow-list.
    pub fn allow_peer(&mut self, peer: IpAddr) {
        if peer != self.cfg.primary_address && self.peers.insert(peer) {
            info!(virtual_router_id = self.cfg.virtual_router_id, %peer, "peer allowed by operator");
        }
    }

    /// Count a packet the codec rejected.
    pub fn handle_rx_error(&mut self, err: &DecodeError) {
        self.counters.rx_errors.record(err);
    }

    // ----- events ------------------------------------------------------------

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let PeerMode::Learning { until: Some(t) } = self.peer_mode {
            if now >= t {
                self.settle_peers();
            }
        }
        match self.state {
            State::Initialize | State::Fault => {}
            State::Backup => {
                if self.master_down_timer.is_some_and(|t| now >= t) {
                    let reason = std::mem::replace(&mut self.down_reason, Reason::MasterDown);
                    if self.cfg.sync_group {
                        // Ask the group; look again after a Master_Down_Interval (the
                        // answer normally comes long before).
                        self.master_down_timer = Some(now + self.master_down_interval());
                        if self.ready.is_none() {
                            self.actions.push_back(Action::SyncGroupReady(true));
                        }
                        self.ready = Some(reason);
                    } else {
                        self.become_master(now, reason);
                    }
                }
            }
            State::Master => {
                if self.yielding.as_ref().is_some_and(|y| now >= y.deadline) {
                    let y = self.yielding.take().expect("checked");
                    warn!(
                        virtual_router_id = self.cfg.virtual_router_id,
                        from = %y.from,
                        "higher-priority advert not confirmed; staying MASTER"
                    );
                    self.counters.yields_aborted += 1;
                    self.resume_master(now);
                }
                if self.adver_timer.is_some_and(|t| now >= t) {
                    self.send_advert(self.effective_priority);
                    self.adver_timer = Some(now + cs(self.cfg.advert_int_cs));
                }
                if self.garp_timer.is_some_and(|t| now >= t) {
                    self.garp_timer = None;
                    self.actions.push_back(Action::SendGratuitous);
                }
            }
            State::Stopping => {
                if self.stop_deadline.is_some_and(|t| now >= t) {
                    let reason = match self.handed_over_to {
                        Some(from) => Reason::PeerTookOver { from },
                        None => Reason::StopTimeout,
                    };
                    self.finish_stop(reason);
                } else if self.adver_timer.is_some_and(|t| now >= t) {
                    self.send_advert(PRIORITY_STOP);
                    self.adver_timer = Some(now + cs(self.cfg.advert_int_cs));
                }
            }
        }
    }

    /// A packet [`packet::decode`](super::packet::decode) accepted: notes its checksum form
    /// (counted, and logged once per peer when it is not RFC 5798's), then
    /// [`Machine::handle_advert`].
    pub fn handle_received(&mut self, now: Instant, rx: &Received) {
        let counter = match rx.checksum {
            ChecksumForm::PseudoHeader => None,
            ChecksumForm::MulticastGroup => Some(&mut self.counters.checksum_multicast_group),
            ChecksumForm::MessageOnly => Some(&mut self.counters.checksum_message_only),
        };
        if let Some(c) = counter {
            *c += 1;
            if self.checksum_logged.first((rx.src, rx.checksum)) {
                info!(
                    virtual_router_id = self.cfg.virtual_router_id,
                    peer = %rx.src,
                    checksum = rx.checksum.describe(),
                    "peer's VRRPv3 checksum is of another form than ours; accepted (ha-lb sends the RFC 5798 form)"
                );
            }
        }
        self.handle_advert(now, rx.src, &rx.advert);
    }

    /// A decoded advert from `src` (the IP source address).
    pub fn handle_advert(&mut self, now: Instant, src: IpAddr, adv: &Advert) {
        self.counters.adverts_received += 1;
        if !self.admissible(now, src, adv) {
            return;
        }
        self.counters.adverts_accepted += 1;
        if adv.priority == PRIORITY_STOP {
            self.counters.priority_zero_received += 1;
        }
        match self.state {
            State::Backup => self.advert_in_backup(now, src, adv),
            State::Master => self.advert_in_master(now, src, adv),
            State::Stopping => {
                if adv.priority != PRIORITY_STOP && self.handed_over_to.is_none() {
                    // Rule 1: stop advertising, keep the VIPs a little longer.
                    self.handed_over_to = Some(src);
                    self.adver_timer = None;
                    let linger = now + self.handover_linger();
                    self.stop_deadline = Some(self.stop_deadline.map_or(linger, |d| d.min(linger)));
                    info!(
                        virtual_router_id = self.cfg.virtual_router_id,
                        peer = %src,
                        linger_ms = self.handover_linger().as_millis() as u64,
                        "peer took over; keeping the VIPs until it has them"
                    );
                }
            }
            State::Initialize | State::Fault => unreachable!("filtered by admissible"),
        }
    }

    // ----- internals ---------------------------------------------------------

    fn peer_settle(&self) -> Duration {
        self.cfg.peer_settle.unwrap_or(cs(self.cfg.advert_int_cs) * 10)
    }

    /// All RFC and ha-lb checks; counts and logs the reason for a rejection.
    fn admissible(&mut self, now: Instant, src: IpAddr, adv: &Advert) -> bool {
        let vrid = self.cfg.virtual_router_id;
        let (lo, hi) = self.interval_bounds();
        let c = &mut self.counters;
        let reject = |counter: &mut u64, why: &str| {
            *counter += 1;
            debug!(virtual_router_id = vrid, %src, why, "advert ignored");
            false
        };
        if matches!(self.state, State::Initialize | State::Fault) {
            return reject(&mut c.ignored_inactive, "instance not running");
        }
        if adv.vrid != self.cfg.virtual_router_id {
            return reject(&mut c.ignored_vrid, "virtual_router_id mismatch");
        }
        if adv.version != self.cfg.version {
            return reject(&mut c.ignored_version, "version mismatch");
        }
        if src.is_ipv4() != self.cfg.primary_address.is_ipv4()
            || adv.addrs.iter().any(|a| a.is_ipv4() != src.is_ipv4())
        {
            return reject(&mut c.ignored_family, "address family mismatch");
        }
        if src == self.cfg.primary_address {
            return reject(&mut c.ignored_own, "own advert");
        }
        match self.cfg.version {
            Version::V2 => {
                if adv.auth != self.cfg.auth {
                    return reject(&mut c.ignored_auth, "authentication mismatch");
                }
                if adv.adver_int_cs != self.cfg.advert_int_cs {
                    return reject(
                        &mut c.ignored_interval_mismatch,
                        "advert_int mismatch (v2 requires equal)",
                    );
                }
            }
            Version::V3 => {
                if !(lo..=hi).contains(&adv.adver_int_cs) {
                    return reject(
                        &mut c.ignored_interval_out_of_range,
                        "max advert interval out of bounds",
                    );
                }
            }
        }
        if !self.peer_allowed(now, src, adv) {
            if self.state == State::Stopping
                && adv.priority != PRIORITY_STOP
                && self.peer_mode != PeerMode::Configured
            {
                // Rule 1: we asked to be replaced (priority 0), and our backup may never
                // have advertised before. Taking its word costs nothing: the VIPs linger
                // one interval, by which time a real backup has taken over anyway.
                debug!(virtual_router_id = vrid, %src, "unknown source took over while stopping");
                return true;
            }
            self.counters.ignored_not_allowed += 1;
            debug!(virtual_router_id = vrid, %src, "advert ignored: source not on the allow-list");
            self.postpone_for_probation(now, src, adv);
            self.yield_for_probation(now, src, adv);
            return false;
        }
        let ours: BTreeSet<&IpAddr> = self.cfg.virtual_ipaddresses.iter().collect();
        let theirs: BTreeSet<&IpAddr> = adv.addrs.iter().collect();
        if ours != theirs || adv.addrs.len() != self.cfg.virtual_ipaddresses.len() {
            self.counters.addr_list_mismatch += 1;
            // v2 drops it (RFC 3768 §7.1) unless from the owner; v3 processes it (RFC 5798
            // §7.1: MAY verify, SHOULD log).
            let dropped = self.cfg.version == Version::V2 && adv.priority != PRIORITY_OWNER;
            // Once per peer: a misconfigured pair sends one every interval, for ever.
            if self.addr_list_logged.first(src) {
                let list = |a: &[IpAddr]| a.iter().map(|a| a.to_string()).collect::<Vec<_>>();
                warn!(
                    virtual_router_id = vrid,
                    %src,
                    theirs = ?list(&adv.addrs),
                    ours = ?list(&self.cfg.virtual_ipaddresses),
                    advert = if dropped { "ignored (RFC 3768)" } else { "processed (RFC 5798)" },
                    "advert's virtual_ipaddress list differs from ours (logged once per peer). \
                     keepalived peers ignore adverts whose address count or addresses differ \
                     from their own, so such a peer ignores ours too and both may become \
                     MASTER: configure the same virtual_ipaddress list on every router"
                );
            }
            if dropped {
                self.counters.ignored_addr_list += 1;
                return false;
            }
        }
        true
    }

    /// Rule 3: the accepted v3 Max Adver Int range.
    fn interval_bounds(&self) -> (u16, u16) {
        let own = self.cfg.advert_int_cs;
        let f = self.cfg.advert_int_factor;
        ((own / f).max(1), own.saturating_mul(f).min(V3_MAX_ADVER_INT_CS))
    }

    /// Rule 2.
    fn peer_allowed(&mut self, now: Instant, src: IpAddr, adv: &Advert) -> bool {
        if self.peers.contains(&src) {
            return true;
        }
        let settle = self.peer_settle();
        match self.peer_mode {
            PeerMode::Configured => false,
            PeerMode::Learning { until } => {
                self.peers.insert(src);
                info!(virtual_router_id = self.cfg.virtual_router_id, peer = %src, "VRRP peer learned");
                if until.is_none() {
                    self.peer_mode = PeerMode::Learning { until: Some(now + settle) };
                }
                true
            }
            PeerMode::Locked => {
                let Some(need) = self.cfg.admit_unknown_after else {
                    return false;
                };
                // "On schedule": within 2 × its advertised interval of the previous one.
                let window = cs(adv.adver_int_cs.max(1)) * 2;
                let count = match self.probation.get(&src) {
                    Some(p) if now.saturating_duration_since(p.last) <= window => p.count + 1,
                    _ => 1,
                };
                if count >= need {
                    self.probation.remove(&src);
                    self.peers.insert(src);
                    self.counters.peers_admitted += 1;
                    warn!(
                        virtual_router_id = self.cfg.virtual_router_id,
                        peer = %src,
                        adverts = count,
                        "unknown VRRP peer admitted after consecutive adverts"
                    );
                    return true;
                }
                if !self.probation.contains_key(&src) && self.probation.len() >= MAX_PROBATION {
                    let oldest = self.probation.iter().min_by_key(|(_, p)| p.last).map(|(a, _)| *a);
                    if let Some(a) = oldest {
                        self.probation.remove(&a);
                    }
                }
                self.probation.insert(src, Probation { count, last: now });
                false
            }
        }
    }

    /// Rule 2: a BACKUP does not take over while an unknown source that would
    /// beat it is on probation and on schedule.
    fn postpone_for_probation(&mut self, now: Instant, src: IpAddr, adv: &Advert) {
        let eff = self.effective_priority;
        let beats_us =
            adv.priority > eff || (adv.priority == eff && src > self.cfg.primary_address);
        if self.state != State::Backup
            || adv.priority == PRIORITY_STOP
            || !beats_us
            || !self.probation.contains_key(&src)
        {
            return;
        }
        let hold = now + cs(adv.adver_int_cs.max(1)) * 2;
        if let Some(t) = self.master_down_timer.filter(|t| *t < hold) {
            debug!(
                virtual_router_id = self.cfg.virtual_router_id,
                %src,
                postponed_ms = (hold - t).as_millis() as u64,
                "down timer postponed: a higher-priority source is on probation"
            );
            self.master_down_timer = Some(hold);
            self.down_reason = Reason::MasterDown;
        }
    }

    /// Rule 2: a MASTER whose priority tracking lowered yields to a source on probation that
    /// beats it as to an allowed peer (rule 4: two adverts on schedule confirm), rather than
    /// only once it is admitted: the backup of a multicast pair was never heard while we
    /// learned, and when it preempts us, waiting for its admission kept both holding the VIPs
    /// for `admit_unknown_after` intervals.
    fn yield_for_probation(&mut self, now: Instant, src: IpAddr, adv: &Advert) {
        let eff = self.effective_priority;
        let beats_us =
            adv.priority > eff || (adv.priority == eff && src > self.cfg.primary_address);
        if self.state == State::Master
            && self.lowered_from.is_some()
            && adv.priority != PRIORITY_STOP
            && beats_us
            && self.probation.contains_key(&src)
        {
            self.higher_priority_in_master(now, src, adv);
        }
    }

    fn settle_peers(&mut self) {
        self.peer_mode = PeerMode::Locked;
        if self.peers.is_empty() {
            info!(
                virtual_router_id = self.cfg.virtual_router_id,
                "no VRRP peer heard while settling; unknown sources must now pass probation"
            );
            return;
        }
        let list: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
        info!(
            virtual_router_id = self.cfg.virtual_router_id,
            peers = %list.join(","),
            "VRRP peer allow-list locked in; adverts from other sources will be ignored"
        );
    }

    fn advert_in_backup(&mut self, now: Instant, src: IpAddr, adv: &Advert) {
        let eff = self.effective_priority;
        if adv.priority == PRIORITY_STOP {
            // RFC: Master_Down_Timer = Skew_Time.
            self.master_down_timer = Some(now + self.skew_time());
            self.down_reason = Reason::MasterStopped { from: src };
            return;
        }
        let lower = adv.priority < eff;
        if !lower {
            self.preempt_until = None;
            self.start_hold_bound = None;
        } else if !self.cfg.nopreempt
            && !self.cfg.preempt_delay.is_zero()
            && self.preempt_until.is_none()
        {
            self.preempt_until = Some(now + self.cfg.preempt_delay);
        }
        if std::mem::take(&mut self.start_hold_pending) && lower && !self.cfg.nopreempt {
            // The first master seen since start (or FAULT) is lower: hold from now.
            let until = now + self.cfg.start_hold;
            self.preempt_until = Some(self.preempt_until.map_or(until, |t| t.max(until)));
            let bound = now + self.cfg.start_hold_max;
            self.start_hold_bound = Some(self.start_hold_bound.map_or(bound, |t| t.max(bound)));
        }
        let extended = self.start_hold_extended && self.start_hold_bound.is_some_and(|t| now < t);
        let preempt_held = self.preempt_until.is_some_and(|t| now < t) || extended;
        if self.cfg.nopreempt || !lower || preempt_held {
            if self.cfg.version == Version::V3 && self.master_adver_int_cs != adv.adver_int_cs {
                info!(
                    virtual_router_id = self.cfg.virtual_router_id,
                    from_cs = self.master_adver_int_cs,
                    to_cs = adv.adver_int_cs,
                    "learned master advert interval"
                );
                self.master_adver_int_cs = adv.adver_int_cs;
            }
            self.master_down_timer = Some(now + self.master_down_interval());
            self.down_reason = Reason::MasterDown;
            self.current_master = Some(src);
            if self.ready.take().is_some() {
                self.actions.push_back(Action::SyncGroupReady(false));
            }
        } else {
            // Preempt: take over after our Skew_Time unless something sooner is due.
            self.counters.preempt_lower_priority += 1;
            let t = now + self.skew_time();
            if self.master_down_timer.is_none_or(|d| t < d) {
                self.master_down_timer = Some(t);
                self.down_reason = Reason::Preempt { from: src, priority: adv.priority };
            }
        }
    }

    fn advert_in_master(&mut self, now: Instant, src: IpAddr, adv: &Advert) {
        let eff = self.effective_priority;
        if adv.priority == PRIORITY_STOP {
            if self.yielding.as_ref().is_some_and(|y| y.from == src) {
                // The router we were yielding to is stopping: stay.
                self.yielding = None;
                self.counters.yields_aborted += 1;
                self.resume_master(now);
            } else {
                // RFC 5798 §6.4.3: send an advert now (rate-limited, rule 5).
                self.early_advert(now);
            }
            return;
        }
        let beats_us =
            adv.priority > eff || (adv.priority == eff && src > self.cfg.primary_address);
        if !beats_us {
            // A lower-priority advert from an allowed peer: a second master (rule 5).
            self.counters.lower_priority_received += 1;
            if self.yielding.is_none() {
                self.early_advert(now);
                self.dual_master_garp(now, src);
            }
            return;
        }
        self.higher_priority_in_master(now, src, adv);
    }

    /// Rule 4: an advert from `src` beats us: start yielding to it, or, if we already are,
    /// step down.
    fn higher_priority_in_master(&mut self, now: Instant, src: IpAddr, adv: &Advert) {
        let eff = self.effective_priority;
        let interval = match self.cfg.version {
            Version::V3 => adv.adver_int_cs,
            Version::V2 => self.cfg.advert_int_cs,
        };
        match &self.yielding {
            Some(y) if y.from == src => {
                self.yielding = None;
                self.counters.yields_confirmed += 1;
                if self.cfg.version == Version::V3 {
                    self.master_adver_int_cs = adv.adver_int_cs;
                }
                self.actions.push_back(Action::RemoveVips);
                self.current_master = Some(src);
                self.enter_backup(
                    now,
                    Reason::HigherPriority { from: src, priority: adv.priority },
                );
            }
            _ => {
                self.counters.yields_started += 1;
                info!(
                    virtual_router_id = self.cfg.virtual_router_id,
                    from = %src,
                    priority = adv.priority,
                    ours = eff,
                    "higher-priority advert; keeping VIPs until a second advert confirms it"
                );
                self.yielding = Some(Yield { from: src, deadline: now + cs(interval) * 2 });
            }
        }
    }

    /// Rule 5: at most one advert outside the schedule per `advert_int`.
    fn early_advert(&mut self, now: Instant) {
        let i = cs(self.cfg.advert_int_cs);
        if self.last_early_advert.is_some_and(|t| now < t + i) {
            self.counters.early_adverts_suppressed += 1;
            return;
        }
        self.last_early_advert = Some(now);
        self.counters.early_adverts_sent += 1;
        self.send_advert(self.effective_priority);
        self.adver_timer = Some(now + i);
    }

    /// Rule 5: move the neighbours' caches back from a second master, at most
    /// one burst per [`Machine::dual_master_garp_interval`].
    fn dual_master_garp(&mut self, now: Instant, from: IpAddr) {
        let window = self.dual_master_garp_interval();
        if self.last_dual_master_garp.is_some_and(|t| now < t + window) {
            self.counters.dual_master_garps_suppressed += 1;
            return;
        }
        self.last_dual_master_garp = Some(now);
        self.counters.dual_master_garps_sent += 1;
        info!(
            virtual_router_id = self.cfg.virtual_router_id,
            peer = %from,
            "lower-priority master seen; sending gratuitous ARP/NA to take the traffic back"
        );
        self.actions.push_back(Action::SendGratuitous);
    }

    fn resume_master(&mut self, now: Instant) {
        self.send_advert(self.effective_priority);
        self.actions.push_back(Action::SendGratuitous);
        self.adver_timer = Some(now + cs(self.cfg.advert_int_cs));
        self.current_master = Some(self.cfg.primary_address);
    }

    fn send_advert(&mut self, priority: u8) {
        self.counters.adverts_sent += 1;
        if priority == PRIORITY_STOP {
            self.counters.priority_zero_sent += 1;
        }
        self.actions.push_back(Action::SendAdvert(Advert {
            version: self.cfg.version,
            vrid: self.cfg.virtual_router_id,
            priority,
            adver_int_cs: self.cfg.advert_int_cs,
            addrs: self.cfg.virtual_ipaddresses.clone(),
            auth: self.cfg.auth,
        }));
    }

    fn clear_timers(&mut self) {
        self.adver_timer = None;
        self.master_down_timer = None;
        self.garp_timer = None;
        self.stop_deadline = None;
        self.handed_over_to = None;
        self.preempt_until = None;
        self.start_hold_bound = None;
        self.yielding = None;
        self.down_reason = Reason::MasterDown;
    }

    fn transition(&mut self, to: State, reason: Reason) {
        let from = self.state;
        self.state = to;
        // Readiness is a BACKUP's: any state change ends it (the group learns of the change).
        self.ready = None;
        match to {
            State::Master => self.counters.became_master += 1,
            State::Backup => self.counters.became_backup += 1,
            State::Fault => self.counters.became_fault += 1,
            _ => {}
        }
        // The driver logs it for operators, with the instance's name.
        debug!(
            virtual_router_id = self.cfg.virtual_router_id,
            from = from.as_str(),
            to = to.as_str(),
            %reason,
            "VRRP state change"
        );
        self.actions.push_back(Action::StateChanged { from, to, reason });
    }

    /// From INIT (start) or FAULT (recovered).
    fn enter_running(&mut self, now: Instant, reason: Reason) {
        if self.effective_priority == PRIORITY_OWNER {
            self.become_master(now, Reason::AddressOwner);
            return;
        }
        self.master_adver_int_cs = self.cfg.advert_int_cs;
        self.enter_backup(now, reason);
        let hold = self.cfg.preempt_delay.max(self.cfg.start_hold);
        if !self.cfg.nopreempt && !hold.is_zero() {
            self.preempt_until = Some(now + hold);
        }
        self.start_hold_pending = !self.cfg.start_hold.is_zero();
        self.start_hold_extended = false;
        if !self.cfg.nopreempt && !self.cfg.start_hold.is_zero() {
            self.start_hold_bound = Some(now + self.cfg.start_hold_max);
        }
    }

    fn enter_backup(&mut self, now: Instant, reason: Reason) {
        self.clear_timers();
        self.master_down_timer = Some(now + self.master_down_interval());
        self.transition(State::Backup, reason);
    }

    fn become_master(&mut self, now: Instant, reason: Reason) {
        self.clear_timers();
        self.master_adver_int_cs = self.cfg.advert_int_cs;
        self.current_master = Some(self.cfg.primary_address);
        self.last_early_advert = None;
        // The become-master burst below does not count against the dual-master limit.
        self.last_dual_master_garp = None;
        self.transition(State::Master, reason);
        self.send_advert(self.effective_priority);
        self.actions.push_back(Action::AddVips);
        self.actions.push_back(Action::SendGratuitous);
        self.adver_timer = Some(now + cs(self.cfg.advert_int_cs));
        self.garp_timer = self.cfg.garp_master_delay.map(|d| now + d);
    }

    fn enter_fault(&mut self, reason: Reason) {
        self.clear_timers();
        self.current_master = None;
        self.transition(State::Fault, reason);
    }

    fn finish_stop(&mut self, reason: Reason) {
        self.actions.push_back(Action::RemoveVips);
        self.clear_timers();
        self.current_master = None;
        self.transition(State::Initialize, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    const ME: &str = "10.0.0.2";
    const PEER: &str = "10.0.0.1";
    const HIGH: &str = "10.0.0.9";

    /// Peers are configured so the allow-list's learning timer stays out of the
    /// way; the learning tests clear them.
    fn cfg(priority: u8) -> Config {
        let mut c = Config::new(51, ip(ME), vec![ip("192.168.1.100")]);
        c.priority = priority;
        c.unicast_peers = vec![ip(PEER), ip(HIGH)];
        c
    }
    fn v3(mut c: Config) -> Config {
        c.version = Version::V3;
        c
    }
    fn drain(m: &mut Machine) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }
    fn advert(m: &Machine, priority: u8) -> Advert {
        Advert {
            version: m.cfg.version,
            vrid: m.cfg.virtual_router_id,
            priority,
            adver_int_cs: m.cfg.advert_int_cs,
            addrs: m.cfg.virtual_ipaddresses.clone(),
            auth: m.cfg.auth,
        }
    }
    fn sent_priorities(actions: &[Action]) -> Vec<u8> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendAdvert(a) => Some(a.priority),
                _ => None,
            })
            .collect()
    }
    fn started(c: Config, t0: Instant) -> Machine {
        let mut m = Machine::new(c).unwrap();
        m.start(t0);
        drain(&mut m);
        m
    }
    /// Drive timers until `until`, returning every action.
    fn run(m: &mut Machine, until: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(t) = m.poll_timeout().filter(|t| *t <= until) {
            m.handle_timeout(t);
            out.extend(drain(m));
        }
        out
    }
    /// A machine that became MASTER exactly at `t0`.
    fn master(c: Config, t0: Instant) -> Machine {
        let mut m = Machine::new(c).unwrap();
        let mdi = m.master_down_interval();
        m.start(t0 - mdi);
        assert_eq!(m.poll_timeout(), Some(t0));
        m.handle_timeout(t0);
        assert_eq!(m.state(), State::Master);
        drain(&mut m);
        m
    }
    /// A backup started at `t0` with no configured peers that heard PEER (priority 200)
    /// once a second through its learning window, the last time at `t0` + 10 s: its
    /// allow-list is locked on PEER.
    fn locked_on_peer(c: Config, t0: Instant) -> Machine {
        let mut m = started(Config { unicast_peers: vec![], ..c }, t0);
        for i in 0..11 {
            let t = t0 + Duration::from_secs(i);
            m.handle_advert(t, ip(PEER), &advert(&m, 200));
            m.handle_timeout(t);
        }
        assert_eq!(*m.peers().1, PeerMode::Locked);
        m
    }
    /// Lower-priority adverts (100) from PEER once a second, `secs` after `t0`: each is
    /// followed (the down timer rearmed) while the preempt delay holds; the next one, at
    /// `secs.end`, arms preemption after the skew time. Returns when that one came.
    fn preempt_held_for(m: &mut Machine, t0: Instant, secs: std::ops::Range<u64>) -> Instant {
        for i in secs.clone() {
            let t = t0 + Duration::from_secs(i);
            m.handle_advert(t, ip(PEER), &advert(m, 100));
            assert_eq!(m.poll_timeout(), Some(t + m.master_down_interval()));
        }
        let t = t0 + Duration::from_secs(secs.end);
        m.handle_advert(t, ip(PEER), &advert(m, 100));
        assert_eq!(m.poll_timeout(), Some(t + m.skew_time()));
        t
    }
    /// A backup becoming master for `reason`.
    fn took_over(reason: Reason) -> Action {
        Action::StateChanged { from: State::Backup, to: State::Master, reason }
    }
    /// The last actions of a STOPPING master: VIPs removed, then INITIALIZE.
    fn stop_actions(reason: Reason) -> Vec<Action> {
        vec![
            Action::RemoveVips,
            Action::StateChanged { from: State::Stopping, to: State::Initialize, reason },
        ]
    }

    #[test]
    fn rfc_timer_formulas() {
        // Priority 100, 1 s: skew 156/256 s = 0.609375 s exactly.
        assert_eq!(skew_time(Version::V3, 100, 100), Duration::from_nanos(609_375_000));
        assert_eq!(
            master_down_interval(Version::V3, 100, 100),
            Duration::from_nanos(3_609_375_000)
        );
        // v2 skew does not scale with the interval (RFC 3768 §6.1).
        assert_eq!(skew_time(Version::V2, 100, 300), Duration::from_nanos(609_375_000));
        assert_eq!(
            master_down_interval(Version::V2, 100, 300),
            Duration::from_nanos(9_609_375_000)
        );
        // v3 skew scales: 50 cs, priority 200 → 56 × 0.5 / 256 s.
        assert_eq!(skew_time(Version::V3, 200, 50), Duration::from_nanos(109_375_000));
        assert_eq!(skew_time(Version::V3, 255, 100), Duration::from_nanos(3_906_250));
    }

    #[test]
    fn backup_takes_over_exactly_at_master_down_interval_after_last_advert() {
        let t0 = Instant::now();
        let mut m = started(cfg(100), t0);
        assert_eq!(m.state(), State::Backup);
        let last = t0 + Duration::from_millis(2500);
        m.handle_advert(last, ip(PEER), &advert(&m, 150));
        let due = last + Duration::from_secs(3) + Duration::from_nanos(609_375_000);
        assert_eq!(m.poll_timeout(), Some(due));
        m.handle_timeout(due - Duration::from_nanos(1));
        assert_eq!(m.state(), State::Backup);
        m.handle_timeout(due);
        assert_eq!(m.state(), State::Master);
        let a = drain(&mut m);
        assert_eq!(a[0], took_over(Reason::MasterDown));
        assert_eq!(sent_priorities(&a), vec![100]);
        assert!(a.contains(&Action::AddVips) && a.contains(&Action::SendGratuitous));
        // Then adverts every advert_int, and a second GARP after garp_master_delay.
        let more = run(&mut m, due + Duration::from_millis(5500));
        assert_eq!(sent_priorities(&more).len(), 5);
        assert_eq!(more.iter().filter(|a| **a == Action::SendGratuitous).count(), 1);
    }

    #[test]
    fn starts_backup_and_goes_master_after_own_down_timer() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(254)).unwrap();
        m.start(t0);
        assert_eq!(
            drain(&mut m),
            vec![Action::StateChanged {
                from: State::Initialize,
                to: State::Backup,
                reason: Reason::Startup
            }]
        );
        assert_eq!(m.poll_timeout(), Some(t0 + master_down_interval(Version::V2, 254, 100)));
    }

    #[test]
    fn address_owner_goes_master_immediately() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(255)).unwrap();
        m.start(t0);
        let a = drain(&mut m);
        assert_eq!(
            a[0],
            Action::StateChanged {
                from: State::Initialize,
                to: State::Master,
                reason: Reason::AddressOwner
            }
        );
        assert_eq!(sent_priorities(&a), vec![255]);
        // Weights never move the owner.
        m.set_priority_adjust(t0, -50);
        assert_eq!(m.effective_priority(), 255);
    }

    #[test]
    fn effective_priority_clamps() {
        assert_eq!(effective_priority(100, 200), 254);
        assert_eq!(effective_priority(100, -500), 1);
        assert_eq!(effective_priority(100, -20), 80);
        assert_eq!(effective_priority(255, -254), 255);
        assert_eq!(effective_priority(254, 1), 254);
        assert_eq!(effective_priority(1, i32::MIN), 1);
    }

    #[test]
    fn v3_learns_master_adver_interval() {
        let t0 = Instant::now();
        let mut m = started(v3(cfg(100)), t0);
        let mut a = advert(&m, 200);
        a.adver_int_cs = 50;
        m.handle_advert(t0, ip(PEER), &a);
        assert_eq!(m.master_adver_int_cs(), 50);
        // 3 × 0.5 s + 156 × 0.5 / 256 s
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_nanos(1_500_000_000 + 304_687_500)));
        // When it becomes master it advertises its own interval again.
        m.handle_timeout(m.poll_timeout().unwrap());
        assert_eq!(m.master_adver_int_cs(), 100);
    }

    #[test]
    fn v2_interval_mismatch_is_ignored() {
        let t0 = Instant::now();
        let mut m = started(cfg(100), t0);
        let before = m.poll_timeout();
        let mut a = advert(&m, 200);
        a.adver_int_cs = 200;
        m.handle_advert(t0 + Duration::from_secs(1), ip(PEER), &a);
        assert_eq!(m.counters().ignored_interval_mismatch, 1);
        assert_eq!(m.poll_timeout(), before);
    }

    #[test]
    fn priority_zero_backup_takes_over_after_skew() {
        let t0 = Instant::now();
        let mut m = started(cfg(100), t0);
        m.handle_advert(t0, ip(PEER), &advert(&m, 200));
        let t1 = t0 + Duration::from_millis(700);
        m.handle_advert(t1, ip(PEER), &advert(&m, 0));
        assert_eq!(m.counters().priority_zero_received, 1);
        assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_nanos(609_375_000)));
        m.handle_timeout(t1 + Duration::from_nanos(609_375_000));
        let a = drain(&mut m);
        assert_eq!(a[0], took_over(Reason::MasterStopped { from: ip(PEER) }));
    }

    #[test]
    fn preempt_takes_over_after_skew_when_master_is_lower() {
        let t0 = Instant::now();
        let mut m = started(cfg(150), t0);
        m.handle_advert(t0, ip(PEER), &advert(&m, 100));
        assert_eq!(m.counters().preempt_lower_priority, 1);
        let skew = skew_time(Version::V2, 150, 100);
        assert_eq!(m.poll_timeout(), Some(t0 + skew));
        // Another lower advert does not push the timer out.
        m.handle_advert(t0 + skew / 2, ip(PEER), &advert(&m, 100));
        assert_eq!(m.poll_timeout(), Some(t0 + skew));
        m.handle_timeout(t0 + skew);
        assert_eq!(m.state(), State::Master);
        assert_eq!(drain(&mut m)[0], took_over(Reason::Preempt { from: ip(PEER), priority: 100 }));
    }

    fn grouped(priority: u8) -> Config {
        Config { sync_group: true, ..cfg(priority) }
    }

    #[test]
    fn sync_group_member_waits_for_its_group_before_master() {
        let t0 = Instant::now();
        let mut m = started(grouped(100), t0);
        let mdi = m.master_down_interval();
        // Its down timer expires: it says it is ready, stays BACKUP, holds nothing.
        m.handle_timeout(t0 + mdi);
        assert_eq!(drain(&mut m), vec![Action::SyncGroupReady(true)]);
        assert_eq!(m.state(), State::Backup);
        assert!(m.is_ready_for_master());
        // The timer comes round again without repeating itself.
        assert_eq!(m.poll_timeout(), Some(t0 + mdi * 2));
        m.handle_timeout(t0 + mdi * 2);
        assert!(drain(&mut m).is_empty());
        // The group agrees: MASTER, for the reason it was ready.
        m.sync_group_master(t0 + mdi * 2);
        assert_eq!(m.state(), State::Master);
        let a = drain(&mut m);
        assert_eq!(a[0], took_over(Reason::MasterDown));
        assert!(a.contains(&Action::AddVips));
        assert!(!m.is_ready_for_master());
        // A second order changes nothing.
        m.sync_group_master(t0 + mdi * 2);
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn sync_group_member_that_hears_a_master_is_no_longer_ready() {
        let t0 = Instant::now();
        let mut m = started(grouped(150), t0);
        // A lower master: ready to preempt after the skew time.
        m.handle_advert(t0, ip(PEER), &advert(&m, 100));
        let skew = m.skew_time();
        m.handle_timeout(t0 + skew);
        assert_eq!(drain(&mut m), vec![Action::SyncGroupReady(true)]);
        // Lower adverts keep it ready; a higher one ends it.
        m.handle_advert(t0 + skew * 2, ip(PEER), &advert(&m, 100));
        assert!(drain(&mut m).is_empty());
        m.handle_advert(t0 + skew * 3, ip(HIGH), &advert(&m, 200));
        assert_eq!(drain(&mut m), vec![Action::SyncGroupReady(false)]);
        // An order that crossed it is ignored.
        m.sync_group_master(t0 + skew * 3);
        assert_eq!(m.state(), State::Backup);
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn a_ready_member_taken_out_of_its_group_becomes_master() {
        let t0 = Instant::now();
        let mut m = started(grouped(100), t0);
        let mdi = m.master_down_interval();
        m.handle_timeout(t0 + mdi);
        assert_eq!(drain(&mut m), vec![Action::SyncGroupReady(true)]);
        m.leave_sync_group(t0 + mdi);
        assert_eq!(m.state(), State::Master);
        assert_eq!(drain(&mut m)[0], took_over(Reason::MasterDown));
    }

    #[test]
    fn sync_group_member_leaves_master_when_told() {
        let t0 = Instant::now();
        let mut m = master(cfg(150), t0);
        // Only a MASTER obeys.
        let mut b = started(grouped(150), t0);
        b.sync_group_backup(t0);
        assert!(drain(&mut b).is_empty());
        m.sync_group_backup(t0);
        let a = drain(&mut m);
        assert_eq!(sent_priorities(&a), vec![PRIORITY_STOP], "the peer takes over after its skew");
        assert!(a.contains(&Action::RemoveVips));
        assert!(a.contains(&Action::StateChanged {
            from: State::Master,
            to: State::Backup,
            reason: Reason::SyncGroup
        }));
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.poll_timeout(), Some(t0 + m.master_down_interval()));
    }

    #[test]
    fn nopreempt_follows_lower_master() {
        let t0 = Instant::now();
        let mut c = cfg(150);
        c.nopreempt = true;
        let mut m = started(c, t0);
        for i in 0..20 {
            let t = t0 + Duration::from_secs(i);
            m.handle_advert(t, ip(PEER), &advert(&m, 100));
            m.handle_timeout(t);
            assert_eq!(m.state(), State::Backup);
        }
        assert_eq!(m.current_master(), Some(ip(PEER)));
    }

    #[test]
    fn preempt_delay_holds_preemption() {
        let t0 = Instant::now();
        let mut c = cfg(150);
        c.preempt_delay = Duration::from_secs(10);
        let mut m = started(c, t0);
        // Lower master adverts are accepted as normal until start + 10 s.
        let t = preempt_held_for(&mut m, t0, 0..10);
        run(&mut m, t + Duration::from_secs(1));
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn preempt_delay_rearms_on_first_sight_of_lower_master() {
        let t0 = Instant::now();
        let mut c = cfg(150);
        c.preempt_delay = Duration::from_secs(5);
        let mut m = started(c, t0);
        // A higher master for a while: start-up delay is cleared.
        for i in 0..8 {
            m.handle_advert(t0 + Duration::from_secs(i), ip(PEER), &advert(&m, 200));
        }
        // Its priority drops below ours at t0+8: delay runs from here.
        preempt_held_for(&mut m, t0, 8..13);
    }

    /// Found by review: connection sync's hold (then: `preempt_delay` raised to 5 s) held
    /// every preemption, also of a master whose priority dropped because its tracking
    /// failed — an impaired master kept the VIPs 5 s longer. `start_hold` holds only after
    /// start and after FAULT.
    #[test]
    fn start_hold_holds_preemption_after_start_only() {
        let t0 = Instant::now();
        let mut c = cfg(150);
        c.start_hold = Duration::from_secs(5);
        let mut m = started(c.clone(), t0);
        // A lower master at start: followed until start + 5 s.
        let t = preempt_held_for(&mut m, t0, 0..5);
        run(&mut m, t + Duration::from_secs(1));
        assert_eq!(m.state(), State::Master);

        // A higher master, which later drops below us (its tracking failed): preempted at
        // once, where preempt_delay would re-arm (preempt_delay_rearms_on_first_sight...).
        let mut m = started(c.clone(), t0);
        for i in 0..8 {
            m.handle_advert(t0 + Duration::from_secs(i), ip(PEER), &advert(&m, 200));
        }
        preempt_held_for(&mut m, t0, 8..8);

        // No master heard until well after start (a link slow to come up): held from the
        // first lower master's advert.
        let mut m = started(c.clone(), t0);
        preempt_held_for(&mut m, t0, 20..25);

        // Leaving FAULT holds again.
        let mut m = started(c.clone(), t0);
        for i in 0..8 {
            m.handle_advert(t0 + Duration::from_secs(i), ip(PEER), &advert(&m, 200));
        }
        let t1 = t0 + Duration::from_secs(10);
        m.set_fault(t1, true);
        m.set_fault(t1, false);
        drain(&mut m);
        preempt_held_for(&mut m, t1, 0..5);

        // nopreempt wins; preempt_delay stays as configured.
        let mut n = c.clone();
        n.nopreempt = true;
        let mut m = started(n, t0);
        for i in 0..20 {
            let t = t0 + Duration::from_secs(i);
            m.handle_advert(t, ip(PEER), &advert(&m, 100));
            m.handle_timeout(t);
        }
        assert_eq!(m.state(), State::Backup);
        let mut d = c;
        d.preempt_delay = Duration::from_secs(8);
        let mut m = started(d, t0);
        preempt_held_for(&mut m, t0, 0..8);
    }

    /// Lower-priority adverts (100) from PEER once a second, `secs` after `t0`, each one
    /// followed (the down timer rearmed): preemption is held.
    fn held_for(m: &mut Machine, t0: Instant, secs: std::ops::Range<u64>) {
        for i in secs {
            let t = t0 + Duration::from_secs(i);
            m.handle_advert(t, ip(PEER), &advert(m, 100));
            assert_eq!(m.poll_timeout(), Some(t + m.master_down_interval()), "at {i} s");
        }
    }

    /// Connection sync's hold was a fixed 5 s after start: a restarted director preempted
    /// while the master's table (more than ~40,000 connections) was still arriving. Extended,
    /// the start hold lasts until released (the table is in), `start_hold` still the minimum,
    /// and never past `start_hold_max` after it began.
    #[test]
    fn an_extended_start_hold_lasts_until_released_or_its_bound() {
        let t0 = Instant::now();
        let mut c = cfg(150);
        c.start_hold = Duration::from_secs(5);
        c.start_hold_max = Duration::from_secs(60);

        // Extended: held past the 5 s until released at 20 s, then preempted.
        let mut m = started(c.clone(), t0);
        m.extend_start_hold(true);
        held_for(&mut m, t0, 0..20);
        m.extend_start_hold(false);
        let t = preempt_held_for(&mut m, t0, 20..20);
        run(&mut m, t + Duration::from_secs(1));
        assert_eq!(m.state(), State::Master);

        // Released before the 5 s: the 5 s still hold.
        let mut m = started(c.clone(), t0);
        m.extend_start_hold(true);
        held_for(&mut m, t0, 0..2);
        m.extend_start_hold(false);
        preempt_held_for(&mut m, t0, 2..5);

        // Never released: preempted at the bound.
        let mut m = started(c.clone(), t0);
        m.extend_start_hold(true);
        let t = preempt_held_for(&mut m, t0, 0..60);
        run(&mut m, t + Duration::from_secs(1));
        assert_eq!(m.state(), State::Master);

        // Not extended: 5 s, as before.
        let mut m = started(c.clone(), t0);
        preempt_held_for(&mut m, t0, 0..5);

        // The bound counts from the first lower master's advert when that came later (no
        // master heard at first), as the 5 s do.
        let mut m = started(c.clone(), t0);
        m.extend_start_hold(true);
        held_for(&mut m, t0, 20..79);
        preempt_held_for(&mut m, t0, 79..80);

        // Only a running start hold is extended: a higher master heard first ends it, and
        // when its priority drops below ours (its tracking failed) it is preempted at once.
        let mut m = started(c.clone(), t0);
        for i in 0..8 {
            m.handle_advert(t0 + Duration::from_secs(i), ip(PEER), &advert(&m, 200));
        }
        m.extend_start_hold(true);
        preempt_held_for(&mut m, t0, 8..8);

        // Leaving FAULT starts a new hold, not extended.
        let mut m = started(c.clone(), t0);
        m.extend_start_hold(true);
        held_for(&mut m, t0, 0..10);
        let t1 = t0 + Duration::from_secs(10);
        m.set_fault(t1, true);
        m.set_fault(t1, false);
        drain(&mut m);
        preempt_held_for(&mut m, t1, 0..5);

        // nopreempt: nothing to hold.
        let mut n = c;
        n.nopreempt = true;
        let mut m = started(n, t0);
        m.extend_start_hold(true);
        for i in 0..70 {
            let t = t0 + Duration::from_secs(i);
            m.handle_advert(t, ip(PEER), &advert(&m, 100));
            m.handle_timeout(t);
        }
        assert_eq!(m.state(), State::Backup);
    }

    #[test]
    fn tie_break_equal_priority_higher_address_wins() {
        let t0 = Instant::now();
        // We are 10.0.0.2. Equal priority from 10.0.0.1 (lower): we stay master.
        let mut m = master(cfg(100), t0);
        m.handle_advert(t0, ip(PEER), &advert(&m, 100));
        assert_eq!(m.state(), State::Master);
        assert!(!m.is_yielding());
        assert_eq!(m.counters().lower_priority_received, 1);
        // Equal priority from 10.0.0.9 (higher): we yield, then step down on confirmation.
        m.handle_advert(t0, ip(HIGH), &advert(&m, 100));
        assert!(m.is_yielding());
        m.handle_advert(t0 + Duration::from_secs(1), ip(HIGH), &advert(&m, 100));
        assert_eq!(m.state(), State::Backup);
        let a = drain(&mut m);
        assert!(a.contains(&Action::RemoveVips));
        assert!(a.contains(&Action::StateChanged {
            from: State::Master,
            to: State::Backup,
            reason: Reason::HigherPriority { from: ip(HIGH), priority: 100 }
        }));
        // As backup, equal priority never preempts a running master (RFC).
        m.handle_advert(t0 + Duration::from_secs(2), ip(PEER), &advert(&m, 100));
        assert_eq!(m.counters().preempt_lower_priority, 0);
    }

    #[test]
    fn fault_hands_over_and_recovers_as_backup() {
        let t0 = Instant::now();
        let mut c = cfg(200);
        c.preempt_delay = Duration::from_secs(30);
        let mut m = master(c, t0);
        m.set_fault(t0, true);
        let a = drain(&mut m);
        assert_eq!(sent_priorities(&a), vec![0]);
        assert!(a.contains(&Action::RemoveVips));
        assert_eq!(m.state(), State::Fault);
        assert_eq!(m.poll_timeout(), None);
        // Adverts are ignored while in fault.
        m.handle_advert(t0, ip(PEER), &advert(&m, 100));
        assert_eq!(m.counters().ignored_inactive, 1);
        let t1 = t0 + Duration::from_secs(5);
        m.set_fault(t1, false);
        assert_eq!(m.state(), State::Backup);
        assert_eq!(
            drain(&mut m),
            vec![Action::StateChanged {
                from: State::Fault,
                to: State::Backup,
                reason: Reason::FaultCleared
            }]
        );
        // preempt_delay re-armed: a lower master is followed for now.
        m.handle_advert(t1 + Duration::from_secs(1), ip(PEER), &advert(&m, 100));
        assert_eq!(m.counters().preempt_lower_priority, 0);
    }

    #[test]
    fn fault_before_start_starts_in_fault() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(100)).unwrap();
        m.set_fault(t0, true);
        m.start(t0);
        assert_eq!(m.state(), State::Fault);
    }

    #[test]
    fn master_priority_drop_sends_one_early_advert() {
        let t0 = Instant::now();
        let mut m = master(cfg(200), t0);
        let t = t0 + Duration::from_millis(300);
        m.set_priority_adjust(t, -150);
        assert_eq!(m.effective_priority(), 50);
        assert_eq!(sent_priorities(&drain(&mut m)), vec![50]);
        assert_eq!(m.poll_timeout(), Some(t + Duration::from_secs(1)));
    }

    /// A reload's new priority and addresses: no state change; a MASTER advertises both at
    /// once; a BACKUP now above the master preempts it by the usual rule.
    #[test]
    fn reconfigure_keeps_the_state_and_advertises_the_change() {
        let t0 = Instant::now();
        let mut m = master(cfg(150), t0);
        let t = t0 + Duration::from_millis(300);
        let addrs = vec![ip("192.168.1.100"), ip("192.168.1.101")];
        m.reconfigure(t, 140, addrs.clone(), false, Duration::ZERO);
        let a = drain(&mut m);
        assert_eq!(m.state(), State::Master);
        assert!(!a.iter().any(|a| matches!(a, Action::StateChanged { .. })), "{a:?}");
        match &a[..] {
            [Action::SendAdvert(adv)] => {
                assert_eq!((adv.priority, &adv.addrs), (140, &addrs));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.effective_priority(), 140);

        let mut b = started(cfg(100), t0);
        b.reconfigure(t0, 210, vec![ip("192.168.1.100")], false, Duration::ZERO);
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.state(), State::Backup);
        b.handle_advert(t, ip(PEER), &advert(&b, 200));
        assert_eq!(b.counters().preempt_lower_priority, 1, "210 now preempts a 200 master");
    }

    // ----- rule 1: make-before-break stop ------------------------------------

    #[test]
    fn shutdown_keeps_vips_until_peer_takes_over() {
        let t0 = Instant::now();
        let mut m = master(cfg(200), t0);
        m.shutdown(t0);
        let a = drain(&mut m);
        assert_eq!(sent_priorities(&a), vec![0]);
        assert!(!a.contains(&Action::RemoveVips));
        assert_eq!(m.state(), State::Stopping);
        assert!(m.holds_vips());
        // A backup (priority 100) takes over after its skew and advertises. Its
        // VIPs are not configured yet (it advertises first): we keep ours, and stop
        // advertising, for one more interval.
        let t1 = t0 + Duration::from_millis(610);
        m.handle_advert(t1, ip(PEER), &advert(&m, 100));
        assert_eq!(drain(&mut m), vec![]);
        assert!(m.holds_vips());
        assert_eq!(m.handover_linger(), Duration::from_secs(1));
        assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(1)));
        // Its next adverts change nothing.
        m.handle_advert(t1 + Duration::from_millis(900), ip(PEER), &advert(&m, 100));
        assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(1)));
        m.handle_timeout(t1 + Duration::from_millis(999));
        assert_eq!(drain(&mut m), vec![]);
        m.handle_timeout(t1 + Duration::from_secs(1));
        assert_eq!(drain(&mut m), stop_actions(Reason::PeerTookOver { from: ip(PEER) }));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn handover_linger_never_passes_the_stop_timeout() {
        let t0 = Instant::now();
        let mut m = master(v3(cfg(200)), t0);
        m.shutdown(t0);
        drain(&mut m);
        let end = t0 + m.stop_timeout();
        let late = end - Duration::from_millis(100);
        run(&mut m, late);
        m.handle_advert(late, ip(PEER), &advert(&m, 100));
        assert_eq!(m.poll_timeout(), Some(end), "linger cut at the stop deadline");
        m.handle_timeout(end);
        assert_eq!(drain(&mut m), stop_actions(Reason::PeerTookOver { from: ip(PEER) }));
        // Short intervals linger at least 50 ms.
        let mut c = v3(cfg(200));
        c.advert_int_cs = 2;
        assert_eq!(Machine::new(c).unwrap().handover_linger(), Duration::from_millis(50));
    }

    /// The backup of a pair never advertised while we were master: its
    /// takeover advert still ends the stop (no probation while STOPPING).
    #[test]
    fn stopping_accepts_a_takeover_from_a_never_heard_backup() {
        let t0 = Instant::now();
        let mut m = master(Config { unicast_peers: vec![], ..cfg(200) }, t0);
        run(&mut m, t0 + Duration::from_secs(20));
        assert_eq!((m.peers().0.len(), m.peers().1), (0, &PeerMode::Locked));
        let t = t0 + Duration::from_secs(20);
        m.shutdown(t);
        drain(&mut m);
        let t1 = t + Duration::from_millis(610);
        m.handle_advert(t1, ip(PEER), &advert(&m, 100));
        assert_eq!(m.counters().ignored_not_allowed, 0);
        assert_eq!(m.poll_timeout(), Some(t1 + m.handover_linger()));
        // Configured (unicast) peers stay strict.
        let mut m = master(cfg(200), t0);
        m.shutdown(t0);
        m.handle_advert(t0, ip("10.0.0.77"), &advert(&m, 100));
        assert_eq!(m.counters().ignored_not_allowed, 1);
        assert_eq!(
            m.poll_timeout(),
            Some(t0 + Duration::from_secs(1)),
            "still repeating priority 0"
        );
    }

    #[test]
    fn shutdown_gives_up_after_stop_timeout_and_repeats_priority_zero() {
        let t0 = Instant::now();
        let mut m = master(cfg(200), t0);
        m.shutdown(t0);
        drain(&mut m);
        // 3 s + 255/256 s + 0.5 s
        assert_eq!(m.stop_timeout(), Duration::from_nanos(4_496_093_750));
        let a = run(&mut m, t0 + Duration::from_millis(4_496));
        assert_eq!(sent_priorities(&a), vec![0, 0, 0, 0]);
        assert_eq!(m.state(), State::Stopping);
        let a = run(&mut m, t0 + Duration::from_secs(10));
        assert_eq!(a, stop_actions(Reason::StopTimeout));
        // Another router's priority-0 does not count as a takeover.
        let mut m = master(cfg(200), t0);
        m.shutdown(t0);
        m.handle_advert(t0, ip(PEER), &advert(&m, 0));
        assert_eq!(m.state(), State::Stopping);
    }

    #[test]
    fn second_shutdown_forces_and_backup_stops_at_once() {
        let t0 = Instant::now();
        let mut m = master(cfg(200), t0);
        m.shutdown(t0);
        drain(&mut m);
        m.shutdown(t0);
        assert_eq!(drain(&mut m), stop_actions(Reason::ShutdownForced));
        let mut b = started(cfg(100), t0);
        b.shutdown(t0);
        assert_eq!(
            drain(&mut b),
            vec![Action::StateChanged {
                from: State::Backup,
                to: State::Initialize,
                reason: Reason::Shutdown
            }]
        );
        // Restartable.
        b.start(t0);
        assert_eq!(b.state(), State::Backup);
    }

    // ----- rule 2: allow-list ------------------------------------------------

    #[test]
    fn configured_peers_are_strict() {
        let t0 = Instant::now();
        let mut c = cfg(100);
        c.unicast_peers = vec![ip(PEER)];
        let mut m = started(c, t0);
        let before = m.poll_timeout();
        for i in 0..10 {
            m.handle_advert(t0 + Duration::from_secs(i), ip("10.0.0.66"), &advert(&m, 200));
        }
        assert_eq!(m.counters().ignored_not_allowed, 10);
        assert_eq!(m.poll_timeout(), before);
        m.handle_advert(t0, ip(PEER), &advert(&m, 200));
        assert_eq!(m.counters().adverts_accepted, 1);
        assert_eq!(*m.peers().1, PeerMode::Configured);
    }

    #[test]
    fn learned_peers_lock_in_after_settle() {
        let t0 = Instant::now();
        let mut c = cfg(100);
        c.unicast_peers.clear();
        c.admit_unknown_after = None;
        let mut m = started(c, t0);
        assert_eq!(*m.peers().1, PeerMode::Learning { until: Some(t0 + Duration::from_secs(10)) });
        for i in 0..12 {
            let t = t0 + Duration::from_secs(i);
            m.handle_advert(t, ip(PEER), &advert(&m, 200));
            m.handle_timeout(t);
        }
        assert_eq!(*m.peers().1, PeerMode::Locked);
        assert_eq!(m.peers().0.iter().copied().collect::<Vec<_>>(), vec![ip(PEER)]);
        let t = t0 + Duration::from_secs(12);
        for k in 0..5 {
            m.handle_advert(t + Duration::from_millis(k), ip(HIGH), &advert(&m, 250));
        }
        assert_eq!(m.counters().ignored_not_allowed, 5);
        m.allow_peer(ip(HIGH));
        m.handle_advert(t, ip(HIGH), &advert(&m, 250));
        assert_eq!(m.current_master(), Some(ip(HIGH)));
    }

    /// A lone master hears nobody while settling: its list locks empty, so a
    /// forged burst from a new source is ignored instead of learned (and then
    /// obeyed: yield + confirm = two adverts).
    #[test]
    fn nothing_heard_while_settling_locks_an_empty_list() {
        let t0 = Instant::now();
        let mut m = started(Config { unicast_peers: vec![], ..cfg(200) }, t0);
        run(&mut m, t0 + Duration::from_secs(30));
        assert_eq!(m.state(), State::Master);
        assert_eq!(*m.peers().1, PeerMode::Locked);
        assert!(m.peers().0.is_empty());
        let t = t0 + Duration::from_secs(30);
        m.handle_advert(t, ip(HIGH), &advert(&m, 254));
        m.handle_advert(t + Duration::from_millis(100), ip(HIGH), &advert(&m, 254));
        assert_eq!(m.counters().ignored_not_allowed, 2);
        assert!(!m.is_yielding());
        assert_eq!(m.state(), State::Master);
        // A real router that keeps advertising is admitted on its third advert.
        m.handle_advert(t + Duration::from_millis(1100), ip(HIGH), &advert(&m, 254));
        assert_eq!(m.counters().peers_admitted, 1);
        assert!(m.is_yielding());
    }

    /// Once tracking has lowered its priority, a master takes a source on probation that beats
    /// it as an allowed peer (rule 2): the backup of a multicast pair, never heard while the
    /// list was learned, preempts it. One advert starts a yield and no more (rule 4: VIPs
    /// kept, aborted unless confirmed); a second one on schedule confirms it. The source
    /// stays on probation; back at its priority, the master ignores such sources again.
    #[test]
    fn a_lowered_master_yields_to_a_source_on_probation() {
        let t0 = Instant::now();
        let mut m = started(Config { unicast_peers: vec![], ..cfg(200) }, t0);
        run(&mut m, t0 + Duration::from_secs(30));
        assert_eq!((m.state(), m.peers().0.len()), (State::Master, 0));
        let t = t0 + Duration::from_secs(30);
        m.set_priority_adjust(t, -150);
        m.set_priority_adjust(t, -120);
        assert_eq!(m.effective_priority(), 80);
        // One forged advert: a yield, aborted.
        m.handle_advert(t, ip(HIGH), &advert(&m, 100));
        assert!(m.is_yielding());
        let actions = run(&mut m, t + Duration::from_secs(3));
        assert!(!actions.contains(&Action::RemoveVips), "{actions:?}");
        assert_eq!(m.state(), State::Master);
        assert_eq!(m.counters().yields_aborted, 1);
        // A router that advertises on schedule: yield, confirmed by its next advert.
        let t = t + Duration::from_secs(10);
        m.handle_advert(t, ip(HIGH), &advert(&m, 100));
        assert!(m.is_yielding());
        m.handle_advert(t + Duration::from_millis(100), ip(HIGH), &advert(&m, 100));
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.counters().yields_confirmed, 1);
        assert!(drain(&mut m).contains(&Action::RemoveVips));
        assert_eq!(m.counters().ignored_not_allowed, 3);
        assert!(m.peers().0.is_empty(), "not admitted: still on probation");
        // Admitted on its third consecutive advert; the down timer waited for it.
        let t3 = t + Duration::from_millis(1100);
        run(&mut m, t3);
        m.handle_advert(t3, ip(HIGH), &advert(&m, 100));
        assert_eq!(m.counters().peers_admitted, 1);
        assert_eq!(m.current_master(), Some(ip(HIGH)));
        assert_eq!(m.state(), State::Backup);
        // Back up to (or above) where it was: no longer lowered.
        m.set_priority_adjust(t3, -10);
        assert!(m.lowered_from.is_some());
        m.set_priority_adjust(t3, 0);
        assert_eq!(m.lowered_from, None);
    }

    /// The same when a reload lowers the priority in place (found by review: `reconfigure`
    /// did not mark the MASTER lowered, so it ignored its preempting backup, still on
    /// probation, for two more intervals while both held the VIPs).
    #[test]
    fn a_master_lowered_by_a_reload_yields_to_a_source_on_probation() {
        let t0 = Instant::now();
        let mut m = started(Config { unicast_peers: vec![], ..cfg(150) }, t0);
        run(&mut m, t0 + Duration::from_secs(30));
        assert_eq!((m.state(), m.peers().0.len()), (State::Master, 0));
        let t = t0 + Duration::from_secs(30);
        let vips = m.cfg.virtual_ipaddresses.clone();
        m.reconfigure(t, 80, vips.clone(), false, Duration::ZERO);
        assert_eq!((m.effective_priority(), m.lowered_from), (80, Some(150)));
        let t = t + Duration::from_secs(1);
        m.handle_advert(t, ip(HIGH), &advert(&m, 100));
        assert!(m.is_yielding(), "the first advert of the preempting backup starts the yield");
        m.handle_advert(t + Duration::from_millis(100), ip(HIGH), &advert(&m, 100));
        assert_eq!(m.state(), State::Backup);
        // A reload back up to where it was: no longer lowered.
        m.reconfigure(t, 150, vips, false, Duration::ZERO);
        assert_eq!(m.lowered_from, None);
    }

    #[test]
    fn unknown_source_admitted_only_after_consecutive_adverts() {
        let t0 = Instant::now();
        let mut m = locked_on_peer(cfg(100), t0);
        let t = t0 + Duration::from_secs(20);
        // Isolated forged packets (more than 2 intervals apart) never get in.
        for k in 0..5 {
            m.handle_advert(t + Duration::from_secs(3 * k), ip(HIGH), &advert(&m, 250));
        }
        assert_eq!(m.counters().ignored_not_allowed, 5);
        assert_eq!(m.counters().peers_admitted, 0);
        // A live router advertising on schedule is admitted on its third advert.
        let t = t0 + Duration::from_secs(40);
        for k in 0..3 {
            m.handle_advert(t + Duration::from_secs(k), ip(HIGH), &advert(&m, 250));
        }
        assert_eq!(m.counters().peers_admitted, 1);
        assert_eq!(m.counters().ignored_not_allowed, 7);
        assert!(m.peers().0.contains(&ip(HIGH)));
    }

    /// Three nodes: the master (PEER) dies and the middle backup (HIGH), never
    /// heard before, takes over. We must not go MASTER beside it while it is on
    /// probation; a lone forged advert delays our takeover by 2 intervals at most.
    #[test]
    fn backup_waits_for_an_unknown_higher_master_on_probation() {
        let t0 = Instant::now();
        let last = t0 + Duration::from_secs(10);
        let mut m = locked_on_peer(v3(cfg(100)), t0);
        let due = last + m.master_down_interval();
        assert_eq!(m.poll_timeout(), Some(due));
        // HIGH (150) went MASTER after its shorter down interval.
        let h1 = last + master_down_interval(Version::V3, 150, 100);
        m.handle_advert(h1, ip(HIGH), &advert(&m, 150));
        assert_eq!(m.poll_timeout(), Some(h1 + Duration::from_secs(2)));
        m.handle_timeout(due);
        assert_eq!(m.state(), State::Backup);
        m.handle_advert(h1 + Duration::from_secs(1), ip(HIGH), &advert(&m, 150));
        m.handle_advert(h1 + Duration::from_secs(2), ip(HIGH), &advert(&m, 150));
        assert_eq!(m.counters().peers_admitted, 1);
        assert_eq!(m.current_master(), Some(ip(HIGH)));
        run(&mut m, h1 + Duration::from_millis(2500));
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.counters().became_master, 0);

        // A lone forged advert: MASTER 2 intervals after it, not never.
        let mut m = locked_on_peer(v3(cfg(100)), t0);
        m.handle_advert(h1, ip(HIGH), &advert(&m, 150));
        run(&mut m, h1 + Duration::from_secs(2) - Duration::from_nanos(1));
        assert_eq!(m.state(), State::Backup);
        run(&mut m, h1 + Duration::from_secs(2));
        assert_eq!(m.state(), State::Master);
        // Lower-priority unknown sources postpone nothing.
        let mut m = locked_on_peer(v3(cfg(100)), t0);
        m.handle_advert(h1, ip(HIGH), &advert(&m, 50));
        assert_eq!(m.poll_timeout(), Some(due));
    }

    // ----- rule 3: bounded learned interval ----------------------------------

    #[test]
    fn forged_huge_interval_is_ignored() {
        let t0 = Instant::now();
        let mut m = started(v3(cfg(100)), t0);
        m.handle_advert(t0, ip(PEER), &advert(&m, 200));
        let due = m.poll_timeout();
        let mut forged = advert(&m, 200);
        forged.adver_int_cs = 4095;
        m.handle_advert(t0 + Duration::from_millis(500), ip(PEER), &forged);
        assert_eq!(m.counters().ignored_interval_out_of_range, 1);
        assert_eq!(m.master_adver_int_cs(), 100);
        assert_eq!(m.poll_timeout(), due);
        // Too small is refused as well; 10× is still fine.
        forged.adver_int_cs = 9;
        m.handle_advert(t0, ip(PEER), &forged);
        assert_eq!(m.counters().ignored_interval_out_of_range, 2);
        forged.adver_int_cs = 1000;
        m.handle_advert(t0, ip(PEER), &forged);
        assert_eq!(m.master_adver_int_cs(), 1000);
    }

    // ----- rule 4: one forged higher advert ----------------------------------

    #[test]
    fn single_forged_higher_advert_does_not_drop_vips() {
        let t0 = Instant::now();
        let mut c = v3(cfg(100));
        c.unicast_peers = vec![ip(PEER)];
        let mut m = master(c, t0);
        // From an unknown source: ignored outright.
        m.handle_advert(t0, ip("10.6.6.6"), &advert(&m, 254));
        assert!(!m.is_yielding());
        assert_eq!(m.counters().ignored_not_allowed, 1);
        // Spoofing the allowed peer: yield, keep VIPs and keep advertising.
        let t1 = t0 + Duration::from_millis(100);
        m.handle_advert(t1, ip(PEER), &advert(&m, 254));
        assert!(m.is_yielding());
        assert_eq!(m.state(), State::Master);
        let a = run(&mut m, t1 + Duration::from_millis(1999));
        assert!(!a.contains(&Action::RemoveVips));
        assert_eq!(sent_priorities(&a), vec![100, 100]);
        // No confirmation within 2 × 1 s: stay master, GARP again.
        let a = run(&mut m, t1 + Duration::from_secs(2));
        assert!(!m.is_yielding());
        assert_eq!(m.state(), State::Master);
        assert!(a.contains(&Action::SendGratuitous));
        assert!(!a.iter().any(|x| matches!(x, Action::RemoveVips | Action::StateChanged { .. })));
        assert_eq!(m.counters().yields_aborted, 1);
    }

    #[test]
    fn genuine_preemption_confirms_with_second_advert() {
        let t0 = Instant::now();
        let mut m = master(v3(cfg(100)), t0);
        m.handle_advert(t0, ip(PEER), &advert(&m, 200));
        // A third router's advert does not confirm PEER's.
        m.handle_advert(t0 + Duration::from_millis(500), ip(HIGH), &advert(&m, 50));
        assert!(m.is_yielding());
        let mut a2 = advert(&m, 200);
        a2.adver_int_cs = 50;
        m.handle_advert(t0 + Duration::from_secs(1), ip(PEER), &a2);
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.master_adver_int_cs(), 50);
        assert_eq!(m.counters().yields_confirmed, 1);
        assert!(drain(&mut m).contains(&Action::RemoveVips));
    }

    #[test]
    fn yield_target_stopping_resumes_at_once() {
        let t0 = Instant::now();
        let mut m = master(cfg(100), t0);
        m.handle_advert(t0, ip(PEER), &advert(&m, 200));
        drain(&mut m);
        m.handle_advert(t0 + Duration::from_millis(10), ip(PEER), &advert(&m, 0));
        assert!(!m.is_yielding());
        let a = drain(&mut m);
        assert_eq!(sent_priorities(&a), vec![100]);
        assert!(a.contains(&Action::SendGratuitous));
    }

    // ----- rule 5: no amplification -----------------------------------------

    #[test]
    fn lower_priority_flood_gets_at_most_one_early_advert_per_interval() {
        let t0 = Instant::now();
        let mut m = master(cfg(200), t0);
        let mut sent = Vec::new();
        // 100 lower-priority adverts within one second, then the normal schedule.
        for k in 0..100 {
            let t = t0 + Duration::from_millis(10 * k);
            m.handle_advert(t, ip(PEER), &advert(&m, 100));
            m.handle_timeout(t);
            sent.extend(drain(&mut m));
        }
        assert_eq!(sent_priorities(&sent), vec![200]);
        assert_eq!(sent.iter().filter(|a| **a == Action::SendGratuitous).count(), 1);
        assert_eq!(m.counters().lower_priority_received, 100);
        assert_eq!(m.counters().early_adverts_sent, 1);
        assert_eq!(m.counters().early_adverts_suppressed, 99);
        // Priority-0 from others shares the limit.
        m.handle_advert(t0 + Duration::from_millis(995), ip(PEER), &advert(&m, 0));
        assert_eq!(m.counters().early_adverts_suppressed, 100);
    }

    /// A second master (lower priority, allowed source): one early advert and
    /// one gratuitous burst, then no more bursts within 10 × advert_int however
    /// many such adverts arrive; after the window, again.
    #[test]
    fn second_master_gets_one_garp_burst_per_window() {
        let t0 = Instant::now();
        let mut m = master(v3(Config { advert_int_cs: 20, ..cfg(150) }), t0);
        let window = m.dual_master_garp_interval();
        assert_eq!(window, Duration::from_secs(2));
        let garps = |a: &[Action]| a.iter().filter(|x| **x == Action::SendGratuitous).count();

        let t1 = t0 + Duration::from_millis(50);
        m.handle_advert(t1, ip(PEER), &advert(&m, 100));
        let a = drain(&mut m);
        assert_eq!(sent_priorities(&a), vec![150]);
        assert_eq!(garps(&a), 1);
        assert_eq!(m.state(), State::Master);

        // A flood (every ms) for the rest of the window: adverts on schedule and
        // one early advert per interval at most, but no further burst.
        let mut a = Vec::new();
        let mut t = t1;
        while t + Duration::from_millis(1) < t1 + window {
            t += Duration::from_millis(1);
            m.handle_advert(t, ip(PEER), &advert(&m, 100));
            m.handle_timeout(t);
            a.extend(drain(&mut m));
        }
        assert_eq!(garps(&a), 0);
        assert!(sent_priorities(&a).len() <= 10, "{} adverts", sent_priorities(&a).len());
        assert_eq!(m.counters().dual_master_garps_sent, 1);
        assert!(m.counters().dual_master_garps_suppressed >= 1900);

        // After the window: the next one gets a burst again.
        let t2 = t1 + window;
        m.handle_advert(t2, ip(PEER), &advert(&m, 100));
        assert_eq!(garps(&drain(&mut m)), 1);
        assert_eq!(m.counters().dual_master_garps_sent, 2);

        // Priority 0 from others is no second master: no burst.
        let t3 = t2 + window * 2;
        m.handle_advert(t3, ip(PEER), &advert(&m, 0));
        assert_eq!(garps(&drain(&mut m)), 0);
        // Nor is a lower advert while yielding to a higher one.
        m.handle_advert(t3, ip(HIGH), &advert(&m, 200));
        m.handle_advert(t3, ip(PEER), &advert(&m, 100));
        assert_eq!(garps(&drain(&mut m)), 0);
    }

    // ----- input checks -------------------------------------------------------

    #[test]
    fn mismatched_adverts_are_ignored_and_counted() {
        let t0 = Instant::now();
        let mut c = cfg(100);
        c.auth = Auth::password("secret");
        let mut m = started(c, t0);
        let due = m.poll_timeout();
        let good = advert(&m, 200);
        let mut a = good.clone();
        a.vrid = 52;
        m.handle_advert(t0, ip(PEER), &a);
        let mut a = good.clone();
        a.version = Version::V3;
        m.handle_advert(t0, ip(PEER), &a);
        let mut a = good.clone();
        a.auth = Auth::password("wrong");
        m.handle_advert(t0, ip(PEER), &a);
        let mut a = good.clone();
        a.auth = Auth::None;
        m.handle_advert(t0, ip(PEER), &a);
        m.handle_advert(t0, ip(ME), &good);
        m.handle_advert(t0, ip("fe80::1"), &good);
        let mut a = good.clone();
        a.addrs = vec![ip("192.168.1.101")];
        m.handle_advert(t0, ip(PEER), &a);
        let c = m.counters();
        assert_eq!(
            (
                c.ignored_vrid,
                c.ignored_version,
                c.ignored_auth,
                c.ignored_own,
                c.ignored_family,
                c.ignored_addr_list
            ),
            (1, 1, 2, 1, 1, 1)
        );
        assert_eq!(c.ignored_total(), 7);
        assert_eq!(c.adverts_accepted, 0);
        assert_eq!(m.poll_timeout(), due);
        // From the owner, a v2 address-list mismatch is processed (RFC 3768 §7.1).
        m.handle_advert(t0, ip(PEER), &Advert { priority: 255, ..a });
        assert_eq!(m.counters().adverts_accepted, 1);
    }

    /// Runs `f` with a subscriber that records every event at INFO and above, and returns
    /// the formatted lines.
    fn logged_lines<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let r = tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (r, text.lines().map(String::from).collect())
    }

    /// RFC 5798 §7.1: a v3 advert with another address list is processed (MAY verify, SHOULD
    /// log). Logged once per peer, not per advert (a misconfigured pair sends one every
    /// interval), saying that keepalived would ignore it.
    #[test]
    fn v3_addr_list_mismatch_is_logged_once_per_peer_but_processed() {
        let t0 = Instant::now();
        let mut m = started(v3(cfg(100)), t0);
        let mut a = advert(&m, 200);
        a.addrs.push(ip("192.168.1.200"));
        let ((), lines) = logged_lines(|| {
            for k in 0..5 {
                m.handle_advert(t0 + Duration::from_millis(100 * k), ip(PEER), &a);
            }
            m.handle_advert(t0 + Duration::from_millis(600), ip(HIGH), &a);
        });
        assert_eq!(m.counters().addr_list_mismatch, 6);
        assert_eq!(m.counters().adverts_accepted, 6);
        assert_eq!(m.current_master(), Some(ip(HIGH)));
        let warned: Vec<&String> =
            lines.iter().filter(|l| l.contains("virtual_ipaddress list differs")).collect();
        assert_eq!(warned.len(), 2, "one per peer: {lines:#?}");
        assert!(warned[0].contains("WARN") && warned[0].contains(PEER), "{}", warned[0]);
        assert!(warned[1].contains(HIGH), "{}", warned[1]);
        assert!(warned[0].contains("keepalived peers ignore adverts"), "{}", warned[0]);
    }

    #[test]
    fn rx_errors_are_counted() {
        let mut m = Machine::new(cfg(100)).unwrap();
        m.handle_rx_error(&DecodeError::BadChecksum { found: 1, computed: 2 });
        m.handle_rx_error(&DecodeError::BadHopLimit(1));
        assert_eq!(m.counters().rx_errors.bad_checksum, 1);
        assert_eq!(m.counters().rx_errors.total(), 2);
    }

    #[test]
    fn config_validation() {
        let ok = cfg(100);
        assert!(ok.validate().is_ok());
        assert_eq!(
            Config { virtual_router_id: 0, ..ok.clone() }.validate(),
            Err(ConfigError::VirtualRouterId)
        );
        assert_eq!(Config { priority: 0, ..ok.clone() }.validate(), Err(ConfigError::Priority));
        assert_eq!(
            Config { advert_int_cs: 150, ..ok.clone() }.validate(),
            Err(ConfigError::AdvertInt(150))
        );
        assert!(Config { advert_int_cs: 150, ..v3(ok.clone()) }.validate().is_ok());
        assert_eq!(
            Config { advert_int_cs: 4096, ..v3(ok.clone()) }.validate(),
            Err(ConfigError::AdvertInt(4096))
        );
        assert_eq!(
            Config { auth: Auth::password("x"), ..v3(ok.clone()) }.validate(),
            Err(ConfigError::AuthOnV3)
        );
        assert_eq!(
            Config { unicast_peers: vec![ip(ME)], ..ok.clone() }.validate(),
            Err(ConfigError::PeerIsSelf)
        );
        assert_eq!(
            Config { unicast_peers: vec![ip("fe80::1")], ..ok.clone() }.validate(),
            Err(ConfigError::FamilyMismatch)
        );
        let six = Config::new(1, ip("fe80::2"), vec![ip("2001:db8::1")]);
        assert_eq!(six.version, Version::V3);
        assert!(six.validate().is_ok());
        assert_eq!(Config { version: Version::V2, ..six }.validate(), Err(ConfigError::V2OverIpv6));
    }

    /// An instance that spends its whole learning window in FAULT (e.g. its interface was
    /// down at start) must still learn the group when FAULT clears: otherwise the list locks
    /// empty and the real master is held in probation while our down timer runs out.
    #[test]
    fn learning_restarts_when_fault_clears_so_the_master_is_not_held_in_probation() {
        let mut c = v3(cfg(100));
        c.unicast_peers.clear();
        c.advert_int_cs = 10;
        let t0 = Instant::now();
        let mut m = Machine::new(c).unwrap();
        m.set_fault(t0, true);
        m.start(t0);
        drain(&mut m);
        assert_eq!(m.state(), State::Fault);
        // The learning window (10 x 100 ms) passes while in FAULT.
        let t1 = t0 + Duration::from_secs(3);
        run(&mut m, t1);
        m.set_fault(t1, false);
        drain(&mut m);
        assert_eq!(m.state(), State::Backup);
        // The master (priority 150, never heard) advertises on schedule from now on.
        let adv = advert(&m, 150);
        let mut t = t1 + Duration::from_millis(20);
        let mut actions = Vec::new();
        while t < t1 + Duration::from_secs(2) {
            actions.extend(run(&mut m, t));
            m.handle_advert(t, ip(HIGH), &adv);
            actions.extend(drain(&mut m));
            t += Duration::from_millis(100);
        }
        assert!(
            !actions.iter().any(|a| matches!(a, Action::StateChanged { to: State::Master, .. })),
            "went MASTER beside the real master: {actions:?}"
        );
        assert_eq!(m.current_master(), Some(ip(HIGH)));
        assert!(m.peers().0.contains(&ip(HIGH)), "the master was learned");
    }

    /// Adverts whose VRRPv3 checksum is of another accepted form (see `packet`) are processed
    /// like any other, counted per form, and logged once per peer and form.
    #[test]
    fn other_checksum_forms_are_processed_counted_and_logged_once() {
        use ChecksumForm::{MessageOnly, MulticastGroup, PseudoHeader};
        let t0 = Instant::now();
        let mut m = started(v3(cfg(100)), t0);
        let rx = |src: &str, checksum| Received {
            src: ip(src),
            dst: ip("224.0.0.18"),
            hop_limit: 255,
            advert: advert(&m, 200),
            checksum,
        };
        let seen = [
            rx(HIGH, PseudoHeader),
            rx(HIGH, MessageOnly),
            rx(HIGH, MessageOnly),
            rx(PEER, MessageOnly),
            rx(HIGH, MulticastGroup),
        ];
        let ((), lines) = logged_lines(|| {
            for (k, r) in seen.iter().enumerate() {
                m.handle_received(t0 + Duration::from_millis(10 * k as u64), r);
            }
        });
        let noted: Vec<&String> = lines.iter().filter(|l| l.contains("checksum")).collect();
        assert_eq!(noted.len(), 3, "{lines:#?}");
        assert!(noted[0].contains("RFC 9568") && noted[0].contains(HIGH), "{}", noted[0]);
        let c = m.counters();
        assert_eq!((c.checksum_message_only, c.checksum_multicast_group), (3, 1));
        assert_eq!(c.adverts_accepted, 5);
        assert_eq!(m.current_master(), Some(ip(HIGH)));
        // Again: nothing new to log.
        let ((), lines) = logged_lines(|| {
            for r in &seen {
                m.handle_received(t0 + Duration::from_secs(1), r);
            }
        });
        assert!(!lines.iter().any(|l| l.contains("checksum")), "{lines:#?}");
    }

    #[test]
    fn logged_once_is_bounded() {
        let mut l = LoggedOnce::new();
        assert!(l.first(1));
        assert!(!l.first(1));
        for k in 2..=MAX_LOGGED_PEERS {
            assert!(l.first(k));
        }
        assert!(!l.first(0), "full: nothing new is logged");
    }
}
