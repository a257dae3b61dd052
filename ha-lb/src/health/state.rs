//! The per-check scheduling and up/down logic, with no I/O and the clock passed in.
//!
//! It runs on a check's configured [`Timing`] as it is. keepalived's rules
//! (keepalived.conf(5), `check_*.c`), plus ha-lb's `rise`/`fall`:
//! - the first attempt runs after a random delay in `0..=warmup`;
//! - a *round* is one attempt plus, while the server is considered up, up to `retry`
//!   further attempts after failures, each `delay_before_retry` after the previous one
//!   ("retry count to make additional checks if check of an alive server fails"); a down
//!   server gets one attempt per round;
//! - the next round starts `delay_loop` after the attempt that ended the previous one: after
//!   its end for the network checks (keepalived arms their timer when the check completes),
//!   after its start for MISC_CHECK (`check_misc.c` schedules the next run at the script's
//!   start + `delay_loop`, or + `delay_before_retry` for a retry; a script that ran longer
//!   than that is run again as soon as it ends) — see [`Tracker::from_start`];
//! - an up server goes down after `fall` consecutive failed rounds, a down server comes up
//!   after `rise` consecutive successful rounds (both default to 1, which is keepalived;
//!   0 acts as 1);
//! - start state: up, unless the virtual server has `alpha`, which starts every real
//!   server down until its checks pass ([`initial_up`]).

use std::time::{Duration, Instant};

use crate::config::Timing;

/// keepalived's start state for a checked real server: `alpha` ("on daemon startup assume
/// that all RSs are down and healthchecks failed", keepalived.conf(5); `queue_checker` in
/// check_api.c marks each checker failed in alpha mode) starts it down; otherwise it is
/// put in service at once and taken out by the first failed round.
pub fn initial_up(alpha: bool) -> bool {
    !alpha
}

/// A point in `0..=warmup` chosen by `seed` (any well-mixed 64-bit value).
pub fn warmup_delay(warmup: Duration, seed: u64) -> Duration {
    let nanos = warmup.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(((seed as u128 * (nanos as u128 + 1)) >> 64) as u64)
}

/// What a recorded attempt changed, if anything worth telling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub up: bool,
    /// The dynamic weight (MISC_CHECK `misc_dynamic`) in force; `None`: the configured one.
    pub weight: Option<u32>,
    pub kind: ChangeKind,
}

impl Change {
    /// The server went up or down.
    pub fn state_changed(&self) -> bool {
        self.kind == ChangeKind::State
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The server went up or down.
    State,
    /// The server stayed up and only its dynamic weight changed.
    Weight,
    /// The first round of a check that started down (`alpha`) failed: nothing changed, but
    /// keepalived runs the server's `notify_down` all the same
    /// (`update_svr_checker_state`: a checker's first result that confirms its state
    /// notifies in alpha mode).
    FirstDown,
}

/// State and timers of one check.
#[derive(Debug, Clone)]
pub struct Tracker {
    timing: Timing,
    up: bool,
    weight: Option<u32>,
    /// Consecutive rounds against the current state (failures while up, successes while
    /// down).
    streak: u32,
    /// Retries used in the current round.
    retries_used: u32,
    next_due: Instant,
    attempts: u64,
    /// Periods are counted from the start of an attempt, not its end (MISC_CHECK).
    from_start: bool,
    /// A round has ended since the check started (keepalived's `has_run`).
    has_run: bool,
}

impl Tracker {
    /// `first_delay` is where in `0..=warmup` the first attempt goes (see
    /// [`warmup_delay`]).
    pub fn new(timing: Timing, up: bool, now: Instant, first_delay: Duration) -> Tracker {
        Tracker {
            timing,
            up,
            weight: None,
            streak: 0,
            retries_used: 0,
            next_due: now + first_delay.min(timing.warmup),
            attempts: 0,
            from_start: false,
            has_run: false,
        }
    }

    /// A check restarted with the state of the one it replaces (a reload): its first
    /// round is not a first verdict ([`ChangeKind::FirstDown`]).
    pub fn resumed(mut self) -> Tracker {
        self.has_run = true;
        self
    }

    /// Count `delay_loop` and `delay_before_retry` from the start of each attempt (see
    /// [`Self::record_attempt`]), as keepalived schedules MISC_CHECK: a 20 s script with
    /// `delay_loop` 30 starts every 30 s, not every 50 s.
    pub fn from_start(mut self) -> Tracker {
        self.from_start = true;
        self
    }

    /// A check just started with its server up (not `alpha`): until its first success, a
    /// failure takes the server down without retries — keepalived's "one failure is enough
    /// initially" (`check_data.c`), so a real server dead at start-up does not get traffic
    /// for `retry × delay_before_retry` more.
    pub fn fresh(mut self) -> Tracker {
        self.retries_used = self.timing.retry;
        self
    }

    /// Start with a dynamic weight already in force (carried over a reload).
    pub fn with_weight(mut self, weight: Option<u32>) -> Tracker {
        self.weight = weight;
        self
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn weight(&self) -> Option<u32> {
        self.weight
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// When the next attempt is due.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Attempts recorded so far.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// Consecutive rounds against the current state so far.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Record an attempt that finished at `now` (and, for the schedule, started then too:
    /// see [`Self::record_attempt`]). `weight` is the dynamic weight a successful
    /// MISC_CHECK with `misc_dynamic` reported (`None`: unchanged).
    pub fn record(&mut self, now: Instant, ok: bool, weight: Option<u32>) -> Option<Change> {
        self.record_attempt(now, now, ok, weight)
    }

    /// Record an attempt that ran from `started` to `ended`. The next one is due a period
    /// after `ended`, or with [`Self::from_start`] a period after `started` (and at once if
    /// that is already past).
    pub fn record_attempt(
        &mut self,
        started: Instant,
        ended: Instant,
        ok: bool,
        weight: Option<u32>,
    ) -> Option<Change> {
        let anchor = if self.from_start { started.min(ended) } else { ended };
        let after = |period: Duration| (anchor + period).max(ended);
        self.attempts += 1;
        let t = self.timing;
        if ok {
            self.has_run = true;
            self.retries_used = 0;
            self.next_due = after(t.delay_loop);
            let weight_changed = weight.is_some() && weight != self.weight;
            if weight.is_some() {
                self.weight = weight;
            }
            if self.up {
                self.streak = 0;
                return weight_changed.then_some(Change {
                    up: true,
                    weight: self.weight,
                    kind: ChangeKind::Weight,
                });
            }
            self.streak += 1;
            if self.streak >= t.rise {
                self.up = true;
                self.streak = 0;
                return Some(Change { up: true, weight: self.weight, kind: ChangeKind::State });
            }
            return None;
        }
        if self.up && self.retries_used < t.retry {
            self.retries_used += 1;
            self.next_due = after(t.delay_before_retry);
            return None;
        }
        // The round failed.
        let first = !std::mem::replace(&mut self.has_run, true);
        self.retries_used = 0;
        self.next_due = after(t.delay_loop);
        if !self.up {
            self.streak = 0;
            return first.then_some(Change {
                up: false,
                weight: self.weight,
                kind: ChangeKind::FirstDown,
            });
        }
        self.streak += 1;
        if self.streak >= t.fall {
            self.up = false;
            self.streak = 0;
            return Some(Change { up: false, weight: self.weight, kind: ChangeKind::State });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timing(retry: u32, rise: u32, fall: u32) -> Timing {
        Timing { delay_loop: 10 * S, retry, delay_before_retry: 2 * S, warmup: 5 * S, rise, fall }
    }

    /// Found by review: keepalived takes a freshly checked (non-alpha) server down on its
    /// first failure; retries apply once the check has passed.
    #[test]
    fn a_fresh_check_fails_its_server_without_retries_until_it_first_passes() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(3, 1, 1), true, t0, Duration::ZERO).fresh();
        let c = tr.record(t0, false, None).expect("down at once");
        assert!(!c.up);
        // Once it has passed, failures are retried as usual.
        let mut tr = Tracker::new(timing(3, 1, 1), true, t0, Duration::ZERO).fresh();
        assert!(tr.record(t0, true, None).is_none());
        for _ in 0..3 {
            assert!(tr.record(t0, false, None).is_none(), "retried");
        }
        assert!(!tr.record(t0, false, None).unwrap().up);
    }

    /// Drive the tracker with a fake clock: each attempt happens exactly when due, and
    /// finishes `took` later. Returns (time of each change relative to t0, change).
    fn drive(
        tr: &mut Tracker,
        t0: Instant,
        took: Duration,
        results: &[bool],
    ) -> Vec<(Duration, Change)> {
        let mut out = Vec::new();
        for &ok in results {
            let now = tr.next_due() + took;
            if let Some(c) = tr.record(now, ok, None) {
                out.push((now - t0, c));
            }
        }
        out
    }

    #[test]
    fn start_state_follows_alpha() {
        assert!(initial_up(false));
        assert!(!initial_up(true));
    }

    #[test]
    fn warmup_delay_stays_in_range() {
        let w = 5 * S;
        assert_eq!(warmup_delay(w, 0), Duration::ZERO);
        assert!(warmup_delay(w, u64::MAX) <= w);
        assert!(warmup_delay(w, u64::MAX) > 4 * S);
        let mid = warmup_delay(w, u64::MAX / 2);
        assert!(mid > 2 * S && mid < 3 * S, "{mid:?}");
        assert_eq!(warmup_delay(Duration::ZERO, 12345), Duration::ZERO);
    }

    #[test]
    fn first_attempt_after_warmup_delay() {
        let t0 = Instant::now();
        let tr = Tracker::new(timing(1, 1, 1), true, t0, 3 * S);
        assert_eq!(tr.next_due() - t0, 3 * S);
        // Never later than warmup, whatever the caller passes.
        let tr = Tracker::new(timing(1, 1, 1), true, t0, 60 * S);
        assert_eq!(tr.next_due() - t0, 5 * S);
    }

    #[test]
    fn keepalived_defaults_one_failed_round_takes_it_down() {
        // retry 1: a failure is retried once after delay_before_retry before the round
        // counts as failed.
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(1, 1, 1), true, t0, Duration::ZERO);
        assert!(tr.record(t0, false, None).is_none());
        assert_eq!(tr.next_due() - t0, 2 * S, "retry after delay_before_retry");
        let c = tr.record(t0 + 2 * S, false, None).unwrap();
        assert!(!c.up && c.state_changed());
        assert!(!tr.is_up());
        assert_eq!(tr.next_due() - t0, 12 * S, "next round after delay_loop");
        // Down: one success (rise 1) brings it back.
        let c = tr.record(t0 + 12 * S, true, None).unwrap();
        assert!(c.up && c.state_changed());
        assert_eq!(tr.next_due() - t0, 22 * S);
    }

    #[test]
    fn a_retry_that_succeeds_saves_the_round() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(2, 1, 1), true, t0, Duration::ZERO);
        assert!(tr.record(t0, false, None).is_none());
        assert!(tr.record(t0 + 2 * S, false, None).is_none());
        assert!(tr.record(t0 + 4 * S, true, None).is_none());
        assert!(tr.is_up());
        assert_eq!(tr.next_due() - t0, 14 * S);
        // Retries are per round: the next round has all of them again.
        assert!(tr.record(t0 + 14 * S, false, None).is_none());
        assert!(tr.record(t0 + 16 * S, false, None).is_none());
        assert!(tr.record(t0 + 18 * S, false, None).is_some());
    }

    /// Found by review: with `alpha` a server whose first check failed got no notify_down
    /// (nothing changed: it started down). keepalived's update_svr_checker_state runs it
    /// for the first result of an alpha checker that confirms its state.
    #[test]
    fn an_alpha_server_whose_first_round_fails_is_told_down_once() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(3, 2, 1), false, t0, Duration::ZERO);
        let c = tr.record(t0, false, None).expect("first verdict");
        assert_eq!(c, Change { up: false, weight: None, kind: ChangeKind::FirstDown });
        assert!(!tr.is_up());
        assert!(tr.record(t0 + 10 * S, false, None).is_none(), "once");
        // A first round that passes (not yet up with rise 2) is a verdict too.
        let mut tr = Tracker::new(timing(3, 2, 1), false, t0, Duration::ZERO);
        assert!(tr.record(t0, true, None).is_none());
        assert!(tr.record(t0 + 10 * S, false, None).is_none());
        // A check restarted by a reload carries on: no first verdict.
        let mut tr = Tracker::new(timing(3, 2, 1), false, t0, Duration::ZERO).resumed();
        assert!(tr.record(t0, false, None).is_none());
    }

    #[test]
    fn down_servers_are_not_retried() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(3, 1, 1), false, t0, Duration::ZERO);
        assert!(tr.record(t0, false, None).is_some_and(|c| !c.state_changed()));
        assert_eq!(tr.next_due() - t0, 10 * S);
        assert!(tr.record(t0 + 10 * S, false, None).is_none());
        assert_eq!(tr.next_due() - t0, 20 * S);
    }

    #[test]
    fn fall_counts_failed_rounds_with_their_retries() {
        // fall 3, retry 1: down after the 3rd failed round; each round = 2 attempts.
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(1, 1, 3), true, t0, Duration::ZERO);
        let changes = drive(&mut tr, t0, Duration::ZERO, &[false; 6]);
        assert_eq!(changes.len(), 1);
        let (at, c) = &changes[0];
        assert!(!c.up);
        // Attempts at 0, 2 | 12, 14 | 24, 26.
        assert_eq!(*at, 26 * S);
        // Worst-case bound used by the integration tests: delay_loop×(fall−1) +
        // (retry×delay_before_retry)×fall.
        assert!(*at <= 10 * S * 2 + 2 * S * 3);
    }

    #[test]
    fn a_success_resets_the_fall_streak() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(0, 1, 2), true, t0, Duration::ZERO);
        let changes = drive(&mut tr, t0, Duration::ZERO, &[false, true, false, true, false]);
        assert!(changes.is_empty());
        assert!(tr.is_up());
        let changes = drive(&mut tr, t0, Duration::ZERO, &[false]);
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn rise_needs_consecutive_successful_rounds() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(1, 3, 1), false, t0, Duration::ZERO);
        let changes = drive(&mut tr, t0, Duration::ZERO, &[true, true, false, true, true]);
        assert!(changes.is_empty(), "a failure in between restarts the count");
        let changes = drive(&mut tr, t0, Duration::ZERO, &[true]);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].1.up);
        // Rounds at 0,10,20(fail),30,40,50 → up at 50 s.
        assert_eq!(changes[0].0, 50 * S);
    }

    #[test]
    fn rise_and_fall_of_zero_act_as_one() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(0, 0, 0), true, t0, Duration::ZERO);
        let changes = drive(&mut tr, t0, Duration::ZERO, &[true, false, true, false]);
        let ups: Vec<bool> = changes.iter().map(|(_, c)| c.up).collect();
        assert_eq!(ups, [false, true, false], "every round flips the state, as with 1");
    }

    #[test]
    fn attempt_duration_shifts_the_schedule() {
        // The next attempt is counted from the end of the previous one, as keepalived
        // arms its timer when a check completes.
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(0, 1, 1), true, t0, Duration::ZERO);
        tr.record(t0 + 3 * S, true, None);
        assert_eq!(tr.next_due() - t0, 13 * S);
    }

    /// Found by review: a MISC_CHECK's period ran from the end of the script, so a 20 s
    /// script with delay_loop 30 ran every 50 s; keepalived (`check_misc.c`) starts it
    /// every 30 s, and one that outruns its period again as soon as it ends.
    #[test]
    fn misc_check_periods_count_from_the_start_of_the_script() {
        let t0 = Instant::now();
        let mut t = timing(1, 1, 1);
        t.delay_loop = 30 * S;
        let mut tr = Tracker::new(t, true, t0, Duration::ZERO).from_start();
        tr.record_attempt(t0, t0 + 20 * S, true, None);
        assert_eq!(tr.next_due() - t0, 30 * S);
        // A retry too is counted from the failed attempt's start.
        tr.record_attempt(t0 + 30 * S, t0 + 31 * S, false, None);
        assert_eq!(tr.next_due() - t0, 32 * S, "delay_before_retry after the start");
        // A script that outran its period: the next one starts as soon as it ends.
        tr.record_attempt(t0 + 32 * S, t0 + 70 * S, true, None);
        assert_eq!(tr.next_due() - t0, 70 * S);
        // The network checks keep counting from the end.
        let mut tr = Tracker::new(t, true, t0, Duration::ZERO);
        tr.record_attempt(t0, t0 + 20 * S, true, None);
        assert_eq!(tr.next_due() - t0, 50 * S);
    }

    #[test]
    fn dynamic_weight_changes_are_reported() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(0, 1, 1), true, t0, Duration::ZERO);
        let c = tr.record(t0, true, Some(10)).unwrap();
        assert_eq!(c, Change { up: true, weight: Some(10), kind: ChangeKind::Weight });
        assert!(tr.record(t0 + 10 * S, true, Some(10)).is_none(), "same weight: quiet");
        assert!(tr.record(t0 + 20 * S, true, None).is_none(), "exit 0: weight unchanged");
        assert_eq!(tr.weight(), Some(10));
        let c = tr.record(t0 + 30 * S, false, None).unwrap();
        assert_eq!(c, Change { up: false, weight: Some(10), kind: ChangeKind::State });
        let c = tr.record(t0 + 40 * S, true, Some(20)).unwrap();
        assert_eq!(c, Change { up: true, weight: Some(20), kind: ChangeKind::State });
    }

    #[test]
    fn with_weight_keeps_a_carried_weight() {
        let t0 = Instant::now();
        let mut tr = Tracker::new(timing(0, 1, 1), true, t0, Duration::ZERO).with_weight(Some(7));
        assert_eq!(tr.weight(), Some(7));
        assert!(tr.record(t0, true, None).is_none());
        assert_eq!(tr.weight(), Some(7));
    }
}
