//! keepalived's tracking: `track_interface`, `track_script`, `track_file`, and the instance's
//! own interface. The combining rules are pure ([`Tracker`]); small tasks watch links, run
//! scripts and read files, and feed it.
//!
//! Rules (keepalived.conf(5)):
//! - the instance's own interface down → FAULT;
//! - `track_interface` / `track_script` with weight 0: down / failing → FAULT; weight > 0:
//!   priority + weight while up / succeeding; weight < 0: priority + weight while down / failing;
//! - `track_file`: priority + value × weight; with weight 0 a non-zero value is FAULT; a
//!   total ≤ −254 is FAULT too (nothing could elect it).
//! - scripts start as succeeding, go failing after `fall` consecutive failures and back after
//!   `rise` consecutive successes.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::script::{self, RunOptions};

/// One input's contribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Contribution {
    fault: bool,
    adjust: i32,
}

/// Combines an instance's tracked inputs into (fault, priority adjustment).
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    inputs: BTreeMap<String, Contribution>,
}

impl Tracker {
    fn up_down(up: bool, weight: i32) -> Contribution {
        match (weight, up) {
            (0, up) => Contribution { fault: !up, adjust: 0 },
            (w, true) if w > 0 => Contribution { fault: false, adjust: w },
            (w, false) if w < 0 => Contribution { fault: false, adjust: w },
            _ => Contribution::default(),
        }
    }

    /// The instance's own interface.
    pub fn own_interface(&mut self, name: &str, up: bool) {
        self.inputs.insert(format!("interface {name}"), Contribution { fault: !up, adjust: 0 });
    }

    pub fn interface(&mut self, name: &str, up: bool, weight: i32) {
        self.inputs.insert(format!("track_interface {name}"), Self::up_down(up, weight));
    }

    pub fn script(&mut self, name: &str, ok: bool, weight: i32) {
        self.inputs.insert(format!("track_script {name}"), Self::up_down(ok, weight));
    }

    pub fn file(&mut self, name: &str, value: i64, weight: i32) {
        let c = if weight == 0 {
            Contribution { fault: value != 0, adjust: 0 }
        } else {
            let adjust = (value.saturating_mul(weight as i64)).clamp(-254, 253) as i32;
            Contribution { fault: adjust <= -254, adjust }
        };
        self.inputs.insert(format!("track_file {name}"), c);
    }

    /// (FAULT?, priority adjustment) and, when FAULT, which inputs caused it.
    pub fn result(&self) -> (bool, i32, Vec<String>) {
        let faults: Vec<String> =
            self.inputs.iter().filter(|(_, c)| c.fault).map(|(k, _)| k.clone()).collect();
        let adjust = self.inputs.values().map(|c| c.adjust).sum::<i32>().clamp(-254, 254);
        (!faults.is_empty(), adjust, faults)
    }
}

/// Rise/fall hysteresis of a script's result.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    ok: bool,
    streak: u32,
}

impl RiseFall {
    /// Starts succeeding (keepalived's default without `init_fail`).
    pub fn new(rise: u32, fall: u32) -> Self {
        Self::starting(true, rise, fall)
    }

    /// Starting in state `ok` rather than OK.
    pub fn starting(ok: bool, rise: u32, fall: u32) -> Self {
        RiseFall { rise: rise.max(1), fall: fall.max(1), ok, streak: 0 }
    }

    pub fn ok(&self) -> bool {
        self.ok
    }

    /// Records one run; returns `Some(new state)` when the state flips.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success == self.ok {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let need = if self.ok { self.fall } else { self.rise };
        if self.streak >= need {
            self.ok = success;
            self.streak = 0;
            Some(success)
        } else {
            None
        }
    }
}

/// A change a tracking task observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackUpdate {
    Link { name: String, up: bool },
    Script { name: String, ok: bool },
    File { name: String, value: i64 },
}

/// Runs `vrrp_script` `name` every `interval`, reporting flips of its rise/fall state.
/// Runs a track script every `interval` and reports its state when `rise` successes or `fall`
/// failures in a row change it, starting from `ok` (the state a reload or restart carried
/// over; a new script starts OK, as keepalived's without `init_fail`).
pub fn spawn_script(
    name: String,
    argv: Vec<String>,
    interval: Duration,
    opts: RunOptions,
    (rise, fall): (u32, u32),
    ok: bool,
    tx: mpsc::Sender<TrackUpdate>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rf = RiseFall::starting(ok, rise, fall);
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let outcome = script::run(&argv, &opts).await;
            if let Some(ok) = rf.record(outcome.success()) {
                if ok {
                    info!(vrrp_script = %name, "track script succeeding again");
                } else {
                    warn!(vrrp_script = %name, result = %outcome.describe(), "track script failing");
                }
                if tx.send(TrackUpdate::Script { name: name.clone(), ok }).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// Reads `track_file` `name` every second; reports the value when it changes. A missing or
/// unreadable file counts as 0, a non-number as 0 with a warning (keepalived does the same).
pub fn spawn_file(
    name: String,
    path: PathBuf,
    tx: mpsc::Sender<TrackUpdate>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<i64> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let value = match tokio::fs::read_to_string(&path).await {
                Ok(s) => s.split_whitespace().next().unwrap_or("0").parse().unwrap_or_else(|_| {
                    warn!(track_file = %name, path = %path.display(), "track file does not hold a number; using 0");
                    0
                }),
                Err(_) => 0,
            };
            if last != Some(value) {
                last = Some(value);
                if tx.send(TrackUpdate::File { name: name.clone(), value }).await.is_err() {
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_zero_means_fault() {
        let mut t = Tracker::default();
        t.interface("eth1", true, 0);
        t.script("chk", true, 0);
        assert!(!t.result().0);
        t.script("chk", false, 0);
        let (fault, adj, why) = t.result();
        assert!(fault);
        assert_eq!(adj, 0);
        assert_eq!(why, vec!["track_script chk".to_string()]);
        t.script("chk", true, 0);
        t.own_interface("eth0", false);
        assert!(t.result().0);
    }

    #[test]
    fn weights_add_like_keepalived() {
        let mut t = Tracker::default();
        t.script("up_bonus", true, 10); // +10 while succeeding
        t.script("down_penalty", true, -30); // nothing while succeeding
        t.interface("eth2", true, -20);
        assert_eq!(t.result().1, 10);
        t.script("down_penalty", false, -30);
        t.interface("eth2", false, -20);
        t.script("up_bonus", false, 10);
        assert_eq!(t.result(), (false, -50, vec![]));
    }

    #[test]
    fn track_file_value_times_weight() {
        let mut t = Tracker::default();
        t.file("f", 3, -5);
        assert_eq!(t.result().1, -15);
        t.file("f", 0, -5);
        assert_eq!(t.result().1, 0);
        t.file("z", 1, 0);
        assert!(t.result().0, "weight 0 and non-zero value is FAULT");
        t.file("z", 0, 0);
        t.file("f", 100, -5);
        assert!(t.result().0, "-500 is beyond any priority: FAULT");
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut rf = RiseFall::new(2, 3);
        assert!(rf.ok());
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(true), None, "a success resets the streak");
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), Some(false));
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(true));
    }
}
