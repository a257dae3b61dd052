//! The health-check service: one tokio task per checked real server, all probes and
//! scripts behind two semaphores, state changes out on a channel.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{
    CheckKind, CheckOwner, Config, RealServer, Script, ScriptUser, VirtualServerKey,
};
use crate::script::{self, RunOptions};

use super::probe::{self, ProbeResult, ScriptCredentials};
use super::state::{initial_up, warmup_delay, Change, ChangeKind, Tracker};

/// Identity of one check: the virtual server and the real server's address:port.
pub type CheckKey = (VirtualServerKey, SocketAddr);

/// A real server to check, with what the checker needs from its virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTarget {
    pub vs: VirtualServerKey,
    /// Whose checks these are across a reload (`Config::check_owner`): a group's survive a
    /// change of its first member, whose key is `vs`.
    pub owner: CheckOwner,
    /// The virtual server's `alpha`: start down until the checks pass.
    pub alpha: bool,
    /// Must have `check: Some(_)`; targets without one are ignored (always up).
    pub rs: RealServer,
}

impl CheckTarget {
    /// The real server `rs` of the virtual server `vs` (not a group's) to check.
    pub fn new(vs: VirtualServerKey, alpha: bool, rs: RealServer) -> CheckTarget {
        CheckTarget { vs, owner: CheckOwner::Service(vs), alpha, rs }
    }

    /// Whether `new` (of the configuration a reload brings) is these same checks under
    /// another key: a group's, whose first member changed.
    fn continued_by(&self, new: &CheckTarget) -> bool {
        matches!(self.owner, CheckOwner::Group(..))
            && new.owner == self.owner
            && new.rs.key() == self.rs.key()
    }

    pub fn key(&self) -> CheckKey {
        (self.vs, self.rs.key())
    }

    /// Every real server of `cfg`: the checked ones are checked; the others only tell a
    /// reload which servers are still configured (see [`HealthChecker::reload`]). A group's
    /// real servers are checked once, as its first member's (`Config::check_lead`).
    pub fn from_config(cfg: &Config) -> Vec<CheckTarget> {
        let leads = cfg.check_leads();
        cfg.virtual_servers
            .iter()
            .filter(|vs| leads.contains(&vs.key()))
            .flat_map(|vs| {
                vs.real_servers.iter().map(move |rs| CheckTarget {
                    vs: vs.key(),
                    owner: cfg.check_owner(&vs.key()),
                    alpha: vs.alpha,
                    rs: rs.clone(),
                })
            })
            .collect()
    }
}

/// A real server changed state (or, while up, its `misc_dynamic` weight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub vs: VirtualServerKey,
    pub rs: SocketAddr,
    pub up: bool,
    /// MISC_CHECK `misc_dynamic` weight in force; `None`: the configured weight.
    pub weight: Option<u32>,
    /// The check result that caused it.
    pub reason: String,
}

/// Knobs of the service.
#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// Network probes in flight at once.
    pub max_probes: usize,
    /// MISC_CHECK scripts running at once (keepalived runs them all at once, each bounded
    /// by its `misc_timeout`: hung ones must not hold up the others' checks).
    pub max_scripts: usize,
    /// `notify_up` / `notify_down` hooks running at once (their own slots: hung check
    /// scripts must not hold them up).
    pub max_notify: usize,
    /// Capacity of the event channel; checkers wait when it is full.
    pub event_capacity: usize,
    /// `global.script_user` at start: for scripts without their own user. `None`:
    /// keepalived's default (`keepalived_script` if it exists, else the daemon's user).
    /// [`HealthChecker::reload`] replaces it.
    pub script_user: Option<ScriptUser>,
    /// Limit for `notify_up` / `notify_down` (keepalived has none; a hung hook must not
    /// hold a script slot for ever).
    pub notify_timeout: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            max_probes: 256,
            max_scripts: 256,
            max_notify: 16,
            event_capacity: 1024,
            script_user: None,
            notify_timeout: Duration::from_secs(30),
        }
    }
}

/// Current health of one checked real server, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsHealth {
    pub vs: VirtualServerKey,
    pub rs: SocketAddr,
    /// Checker block name (`TCP_CHECK`, `HTTP_GET`, …).
    pub check: &'static str,
    pub up: bool,
    pub weight: Option<u32>,
    /// When `up` last changed (or the check started).
    pub since: SystemTime,
    /// Attempts made so far.
    pub attempts: u64,
    /// Result of the last attempt (`None`: none yet).
    pub last_ok: Option<bool>,
    pub last_detail: String,
}

/// Probe concurrency counters.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// In-flight counts since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthStats {
    pub checks: usize,
    pub probes_in_flight: usize,
    pub probes_peak: usize,
    pub scripts_in_flight: usize,
    pub scripts_peak: usize,
}

struct Shared {
    opts: HealthOptions,
    rt: Handle,
    probes: Semaphore,
    scripts: Semaphore,
    notify_hooks: Arc<Semaphore>,
    probe_gauge: Gauge,
    script_gauge: Arc<Gauge>,
    /// Lock order: `states`, then `hooks`.
    states: Mutex<HashMap<CheckKey, RsHealth>>,
    /// The last notify hook started for each real server: the next one waits for it.
    hooks: Mutex<HashMap<CheckKey, JoinHandle<()>>>,
    events: mpsc::Sender<HealthEvent>,
    seeds: std::collections::hash_map::RandomState,
}

/// A target with the users its scripts run as, resolved when the configuration was
/// (re)loaded: a check attempt or a hook never looks a user up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Armed {
    target: CheckTarget,
    /// MISC_CHECK: its `user`, else `global.script_user` (other checks: unused, `Ok(None)`).
    misc_user: ScriptCredentials,
    /// `notify_up` / `notify_down`: `global.script_user`.
    notify_user: ScriptCredentials,
}

struct Running {
    armed: Arc<Armed>,
    update: watch::Sender<Arc<Armed>>,
    stopped: Arc<AtomicBool>,
    join: JoinHandle<()>,
}

impl Running {
    fn stop(self) -> JoinHandle<()> {
        self.stopped.store(true, Ordering::SeqCst);
        drop(self.update);
        self.join
    }
}

/// Runs every configured check. Create it inside a tokio runtime.
pub struct HealthChecker {
    shared: Arc<Shared>,
    running: HashMap<CheckKey, Running>,
    /// The configured real servers without a check, with the user their hooks run as.
    unchecked: HashMap<CheckKey, (CheckTarget, ScriptCredentials)>,
    /// `global.script_user` of the configuration in force.
    script_user: Option<ScriptUser>,
}

impl HealthChecker {
    /// Start checking `targets`; state changes arrive on the returned receiver. The start
    /// states (up, or down with `alpha`) are not sent as events: read [`Self::states`].
    pub fn start(
        targets: Vec<CheckTarget>,
        opts: HealthOptions,
    ) -> (HealthChecker, mpsc::Receiver<HealthEvent>) {
        let (tx, rx) = mpsc::channel(opts.event_capacity.max(1));
        let script_user = opts.script_user.clone();
        let shared = Arc::new(Shared {
            rt: Handle::current(),
            probes: Semaphore::new(opts.max_probes.max(1)),
            scripts: Semaphore::new(opts.max_scripts.max(1)),
            notify_hooks: Arc::new(Semaphore::new(opts.max_notify.max(1))),
            opts,
            probe_gauge: Gauge::default(),
            script_gauge: Arc::new(Gauge::default()),
            states: Mutex::new(HashMap::new()),
            hooks: Mutex::new(HashMap::new()),
            events: tx,
            seeds: Default::default(),
        });
        let mut hc = HealthChecker {
            shared,
            running: HashMap::new(),
            unchecked: HashMap::new(),
            script_user: None,
        };
        hc.reload(targets, script_user);
        (hc, rx)
    }

    /// [`Self::reload`] with the script user in force.
    pub fn reconfigure(&mut self, targets: Vec<CheckTarget>) {
        let user = self.script_user.clone();
        self.reload(targets, user);
    }

    /// Apply a new configuration (a reload): its checks and its `global.script_user`.
    ///
    /// The users scripts run as are resolved here, once (blocking, as the configuration's
    /// own checks at load are; keepalived resolves them when it reads the configuration):
    /// a MISC_CHECK attempt or a notify hook never looks a user up.
    ///
    /// A check whose `(virtual server, real server)`, check block and script user are
    /// unchanged keeps its state and timers (its notify hooks, their user and other
    /// real-server settings are updated in place); one whose check block changed, or a
    /// MISC_CHECK whose script now runs as someone else, is restarted but keeps its
    /// current up/down state and weight, so a reload never flaps a server; new ones start
    /// in keepalived's start state; removed ones stop.
    ///
    /// Real servers the reload removes get their `notify_down` if they were up, as
    /// keepalived's reload does (`clear_diff_rs`: `clear_service_rs` with `stopping`
    /// false); so do unchecked ones (always up), which `targets` must then list (without a
    /// check) while they are configured — [`CheckTarget::from_config`] does. A server that
    /// stays but loses its check is back in the pool (as any unchecked one): if it was
    /// down it gets its `notify_up`, as keepalived brings it up. Stopping the service
    /// ([`Self::shutdown`], drop) runs none of this: keepalived does not either at
    /// shutdown (`stopping` true, without `omega`, which ha-lb does not have).
    pub fn reload(&mut self, targets: Vec<CheckTarget>, script_user: Option<ScriptUser>) {
        let default_user = probe::script_credentials(script_user.as_ref());
        if let Err(e) = &default_user {
            tracing::warn!(
                "global.script_user: {e}: health-check scripts without their own user are not run"
            );
        }
        let mut users: HashMap<ScriptUser, ScriptCredentials> = HashMap::new();
        let mut wanted: HashMap<CheckKey, Armed> = HashMap::new();
        let mut unchecked = HashMap::new();
        for t in targets {
            if t.rs.check.is_none() {
                unchecked.insert(t.key(), (t, default_user.clone()));
                continue;
            }
            let misc_user = match t.rs.check.as_ref().map(|c| &c.kind) {
                Some(CheckKind::Misc(m)) => match &m.user {
                    Some(u) => users
                        .entry(u.clone())
                        .or_insert_with(|| probe::script_credentials(Some(u)))
                        .clone(),
                    None => default_user.clone(),
                },
                _ => Ok(None),
            };
            let armed = Armed { target: t, misc_user, notify_user: default_user.clone() };
            wanted.insert(armed.target.key(), armed);
        }
        self.script_user = script_user;
        // A group whose first member changed: its checks go on under the new key with their
        // state (restarted like a changed check), not removed and started anew (which would
        // run notify_down for every server up).
        let mut moved: HashMap<CheckKey, (bool, Option<u32>, SystemTime)> = HashMap::new();
        let renamed: Vec<(CheckKey, CheckKey)> = (self.running.iter())
            .filter(|(k, _)| !wanted.contains_key(k))
            .filter_map(|(k, r)| {
                let (new, _) = wanted.iter().find(|(nk, a)| {
                    r.armed.target.continued_by(&a.target) && !self.running.contains_key(nk)
                })?;
                Some((*k, *new))
            })
            .collect();
        for (old, new) in renamed {
            let Some(r) = self.running.remove(&old) else { continue };
            drop(r.stop());
            if let Some(st) = self.shared.states.lock().unwrap().remove(&old) {
                moved.insert(new, (st.up, st.weight, st.since));
            }
        }
        let removed: Vec<CheckKey> =
            self.running.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        for key in removed {
            let Some(r) = self.running.remove(&key) else { continue };
            let old = r.armed.clone();
            drop(r.stop());
            // Under the lock, so that the stopped task's last change (and its hook) is
            // either in the state read here or not made at all.
            let mut states = self.shared.states.lock().unwrap();
            let Some(st) = states.remove(&key) else { continue };
            let hook = match unchecked.get(&key) {
                // Still configured, without its check: in the pool again.
                Some((t, user)) if !st.up => {
                    t.rs.notify_up.clone().map(|h| (t, true, h, user.clone(), "check removed"))
                }
                Some(_) => None,
                None if st.up => old
                    .target
                    .rs
                    .notify_down
                    .clone()
                    .map(|h| (&old.target, false, h, old.notify_user.clone(), "removed")),
                None => None,
            };
            if let Some((target, up, hook, user, why)) = hook {
                tracing::info!(virtual_server = %target.vs, real_server = %target.rs.key(), "real server {} {why} by reload", target.rs.key());
                self.shared.chain_notify(key, target, up, hook, user);
            }
        }
        // Unchecked servers removed (they were up).
        let states = self.shared.states.lock().unwrap();
        for (key, (t, user)) in &self.unchecked {
            if unchecked.contains_key(key) || wanted.contains_key(key) {
                continue;
            }
            // Still configured, under a group's new first member.
            let moved =
                (unchecked.values().map(|(n, _)| n).chain(wanted.values().map(|a| &a.target)))
                    .any(|n| t.continued_by(n));
            if moved {
                continue;
            }
            if let Some(hook) = t.rs.notify_down.clone() {
                tracing::info!(virtual_server = %t.vs, real_server = %t.rs.key(), "real server {} removed by reload", t.rs.key());
                self.shared.chain_notify(*key, t, false, hook, user.clone());
            }
        }
        drop(states);
        self.unchecked = unchecked;
        for (key, armed) in wanted {
            let carried = match self.running.remove(&key) {
                Some(r)
                    if r.armed.target.rs.check == armed.target.rs.check
                        && r.armed.misc_user == armed.misc_user =>
                {
                    if *r.armed != armed {
                        let a = Arc::new(armed);
                        let _ = r.update.send(a.clone());
                        self.running.insert(key, Running { armed: a, ..r });
                    } else {
                        self.running.insert(key, r);
                    }
                    continue;
                }
                Some(r) => {
                    drop(r.stop());
                    self.shared.states.lock().unwrap().get(&key).map(|s| (s.up, s.weight, s.since))
                }
                None => moved.remove(&key),
            };
            self.spawn(key, armed, carried);
        }
    }

    fn spawn(
        &mut self,
        key: CheckKey,
        armed: Armed,
        carried: Option<(bool, Option<u32>, SystemTime)>,
    ) {
        let target = &armed.target;
        let check = target.rs.check.as_ref().expect("filtered");
        let timing = check.timing;
        let fresh = carried.is_none();
        let (up, weight, since) =
            carried.unwrap_or((initial_up(target.alpha), None, SystemTime::now()));
        // A weight only a misc_dynamic check gives: a replaced check does not keep it.
        let weight = weight.filter(|_| check.is_dynamic());
        let first = warmup_delay(timing.warmup, self.shared.seeds.hash_one((key, Instant::now())));
        let mut tracker = Tracker::new(timing, up, Instant::now(), first).with_weight(weight);
        if matches!(check.kind, CheckKind::Misc(_)) {
            tracker = tracker.from_start();
        }
        if fresh && up {
            tracker = tracker.fresh();
        }
        if !fresh {
            tracker = tracker.resumed();
        }
        self.shared.states.lock().unwrap().insert(
            key,
            RsHealth {
                vs: key.0,
                rs: key.1,
                check: check.name(),
                up,
                weight,
                since,
                attempts: 0,
                last_ok: None,
                last_detail: String::new(),
            },
        );
        let armed = Arc::new(armed);
        let (update, rx) = watch::channel(armed.clone());
        let stopped = Arc::new(AtomicBool::new(false));
        let join =
            self.shared.rt.spawn(run_check(self.shared.clone(), key, rx, tracker, stopped.clone()));
        self.running.insert(key, Running { armed, update, stopped, join });
    }

    /// Current health of every checked real server, sorted.
    pub fn states(&self) -> Vec<RsHealth> {
        let mut v: Vec<RsHealth> = self.shared.states.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|s| (s.vs, s.rs));
        v
    }

    /// Health of one real server.
    pub fn state(&self, vs: VirtualServerKey, rs: SocketAddr) -> Option<RsHealth> {
        self.shared.states.lock().unwrap().get(&(vs, rs)).cloned()
    }

    pub fn stats(&self) -> HealthStats {
        HealthStats {
            checks: self.running.len(),
            probes_in_flight: self.shared.probe_gauge.now.load(Ordering::SeqCst),
            probes_peak: self.shared.probe_gauge.peak.load(Ordering::SeqCst),
            scripts_in_flight: self.shared.script_gauge.now.load(Ordering::SeqCst),
            scripts_peak: self.shared.script_gauge.peak.load(Ordering::SeqCst),
        }
    }

    /// Stop every check and wait for attempts in flight to end (each is bounded by its
    /// own timeout).
    pub async fn shutdown(mut self) {
        let joins: Vec<JoinHandle<()>> = self.running.drain().map(|(_, r)| r.stop()).collect();
        for j in joins {
            let _ = j.await;
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for (_, r) in self.running.drain() {
            drop(r.stop());
        }
    }
}

async fn run_check(
    shared: Arc<Shared>,
    key: CheckKey,
    mut rx: watch::Receiver<Arc<Armed>>,
    mut tracker: Tracker,
    stopped: Arc<AtomicBool>,
) {
    loop {
        let due = tokio::time::Instant::from_std(tracker.next_due());
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        let armed = rx.borrow_and_update().clone();
        let target = &armed.target;
        let Some(check) = target.rs.check.as_ref() else {
            return;
        };
        let (started, result) = attempt(&shared, &check.kind, &armed.misc_user).await;
        let now = Instant::now();
        let change = {
            let mut states = shared.states.lock().unwrap();
            // Stopped while probing: a successor (or nobody) owns the state now.
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let change = tracker.record_attempt(started, now, result.ok, result.weight);
            if let Some(s) = states.get_mut(&key) {
                s.attempts = tracker.attempts();
                s.last_ok = Some(result.ok);
                s.last_detail.clone_from(&result.detail);
                s.up = tracker.is_up();
                s.weight = tracker.weight();
                if change.as_ref().is_some_and(|c| c.state_changed()) {
                    s.since = SystemTime::now();
                }
            }
            if let Some(c) = change.as_ref().filter(|c| c.kind != ChangeKind::Weight) {
                let hook = if c.up { &target.rs.notify_up } else { &target.rs.notify_down };
                if let Some(hook) = hook.clone() {
                    shared.chain_notify(key, target, c.up, hook, armed.notify_user.clone());
                }
            }
            change
        };
        let Some(change) = change else {
            continue;
        };
        report(target, &change, &result);
        if change.kind == ChangeKind::FirstDown {
            // It started down and stays down: nothing for the reconciler.
            continue;
        }
        let ev = HealthEvent {
            vs: key.0,
            rs: key.1,
            up: change.up,
            weight: change.weight,
            reason: result.detail,
        };
        // A full channel holds this checker back (and only this one); a closed one means
        // nobody listens any more, which is no reason to stop checking.
        let _ = shared.events.send(ev).await;
    }
}

fn report(target: &CheckTarget, change: &Change, result: &ProbeResult) {
    let check = target.rs.check.as_ref().map(|c| c.name()).unwrap_or("?");
    if change.kind == ChangeKind::FirstDown {
        tracing::info!(
            virtual_server = %target.vs,
            real_server = %target.rs.key(),
            check,
            "real server {} DOWN (first check, alpha): {}",
            target.rs.key(),
            result.detail
        );
    } else if change.state_changed() {
        tracing::info!(
            virtual_server = %target.vs,
            real_server = %target.rs.key(),
            check,
            up = change.up,
            "real server {} {}: {}",
            target.rs.key(),
            if change.up { "UP" } else { "DOWN" },
            result.detail
        );
    } else {
        tracing::info!(virtual_server = %target.vs, real_server = %target.rs.key(), weight = ?change.weight, "real server weight changed: {}", result.detail);
    }
}

/// One attempt, once a slot is free: when it started (had its slot) and its result.
async fn attempt(
    shared: &Shared,
    kind: &CheckKind,
    misc_user: &ScriptCredentials,
) -> (Instant, ProbeResult) {
    let (sem, gauge): (&Semaphore, &Gauge) = match kind {
        CheckKind::Misc(_) => (&shared.scripts, &shared.script_gauge),
        _ => (&shared.probes, &shared.probe_gauge),
    };
    let Ok(_permit) = sem.acquire().await else {
        return (Instant::now(), ProbeResult::down("checker shutting down"));
    };
    let started = Instant::now();
    gauge.enter();
    let r = probe::probe(kind, misc_user).await;
    gauge.leave();
    (started, r)
}

impl Shared {
    /// Start a notify hook of `key`'s real server once its earlier ones have ended. Called
    /// with the `states` lock held, so that a reload's hook for a removed server and the
    /// server's own last ones are in the order of the changes.
    fn chain_notify(
        &self,
        key: CheckKey,
        target: &CheckTarget,
        up: bool,
        hook: Script,
        user: ScriptCredentials,
    ) {
        let mut hooks = self.hooks.lock().unwrap();
        hooks.retain(|_, h| !h.is_finished());
        let prev = hooks.remove(&key);
        hooks.insert(key, spawn_notify(self, target, up, hook, user, prev));
    }
}

/// Run a notify hook as `user` without holding up the checker, after `prev`.
fn spawn_notify(
    shared: &Shared,
    target: &CheckTarget,
    up: bool,
    hook: Script,
    user: ScriptCredentials,
    prev: Option<JoinHandle<()>>,
) -> JoinHandle<()> {
    let slots = shared.notify_hooks.clone();
    let gauge = shared.script_gauge.clone();
    let timeout = shared.opts.notify_timeout;
    let what = format!(
        "{} for {} in {}",
        if up { "notify_up" } else { "notify_down" },
        target.rs.key(),
        target.vs
    );
    shared.rt.spawn(async move {
        if let Some(p) = prev {
            let _ = p.await;
        }
        let Ok(_permit) = slots.acquire_owned().await else {
            return;
        };
        let creds = match user {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{what} [{hook}] not run: {e}");
                return;
            }
        };
        let mut opts = RunOptions::with_timeout(timeout);
        opts.credentials = creds;
        gauge.enter();
        tracing::info!("executing [{hook}] ({what})");
        let outcome = script::run(&hook.argv, &opts).await;
        gauge.leave();
        if !outcome.success() {
            tracing::warn!("{what} [{hook}]: {}", outcome.describe());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_the_reference_config() {
        let text = include_str!("../../../conf/ha-lb.toml");
        let cfg = crate::config::parse_str(text, std::path::Path::new("conf/ha-lb.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let targets = CheckTarget::from_config(&cfg);
        // A group's members share their first member's checks (the "web-alt" group's four).
        let all: usize = (cfg.virtual_servers.iter())
            .filter(|vs| cfg.check_leads().contains(&vs.key()))
            .map(|vs| vs.real_servers.len())
            .sum();
        assert!(targets.iter().filter(|t| t.rs.check.is_some()).count() > 0);
        assert_eq!(targets.len(), all, "every real server, checked or not, once per group");
        assert_eq!(
            all + 3,
            cfg.virtual_servers.iter().map(|vs| vs.real_servers.len()).sum::<usize>()
        );
        for t in &targets {
            let vs = cfg.virtual_server(&t.vs).unwrap();
            assert_eq!(t.alpha, vs.alpha);
            assert_eq!(vs.real_server(t.rs.key()), Some(&t.rs));
        }
    }

    /// Found by review: a reload that replaced a misc_dynamic MISC_CHECK by a TCP_CHECK
    /// carried the script's weight into the new checker for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_check_does_not_keep_a_misc_dynamic_weight() {
        use crate::config::{Connect, HealthCheck, MiscCheck, Protocol, Timing};
        let lis = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = lis.local_addr().unwrap();
        let vs = VirtualServerKey {
            address: "192.0.2.1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let timing = Timing {
            delay_loop: Duration::from_millis(200),
            retry: 0,
            delay_before_retry: Duration::ZERO,
            warmup: Duration::ZERO,
            rise: 1,
            fall: 1,
        };
        let mk = |kind: CheckKind| {
            CheckTarget::new(
                vs,
                false,
                RealServer {
                    address: addr.ip(),
                    port: addr.port(),
                    weight: 3,
                    inhibit_on_failure: false,
                    notify_up: None,
                    notify_down: None,
                    check: Some(HealthCheck { kind, timing }),
                },
            )
        };
        let exit_12 = Script { argv: vec!["/bin/sh".into(), "-c".into(), "exit 12".into()] };
        let misc = mk(CheckKind::Misc(MiscCheck {
            misc_path: exit_12,
            misc_timeout: Duration::from_secs(5),
            misc_dynamic: true,
            user: None,
        }));
        let (mut hc, mut rx) = HealthChecker::start(vec![misc], HealthOptions::default());
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(ev.weight, Some(10), "exit 12: weight 10");
        let tcp = mk(CheckKind::Tcp(Connect {
            target: addr,
            bindto: None,
            connect_timeout: Duration::from_secs(1),
        }));
        hc.reconfigure(vec![tcp]);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let st = hc.state(vs, addr).unwrap();
        assert!(st.attempts > 0 && st.last_ok == Some(true), "{st:?}");
        assert_eq!(st.weight, None, "{st:?}");
    }

    /// A reload that removes a group's first member moves its checks to the next one: no
    /// `notify_down` for servers that are up, and their state goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_groups_checks_survive_a_new_first_member() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mark = std::env::temp_dir().join(format!("hlb-group-down-{}", std::process::id()));
        let _ = std::fs::remove_file(&mark);
        let cfg = |members: &str| {
            let text = format!(
                "[global]\ndataplane = \"ipvs\"\n[[virtual_server_group]]\nname = \"g\"\nmembers = [{members}]\n\
                 [[virtual_server]]\ngroup = \"g\"\n[[virtual_server.real_server]]\naddress = \"127.0.0.1\"\n\
                 port = {port}\nnotify_down = [\"/usr/bin/touch\", \"{}\"]\n[virtual_server.real_server.TCP_CHECK]\n\
                 delay_loop = 0.1\nconnect_timeout = 1\nwarmup = 0\n\
                 [[virtual_server.real_server]]\naddress = \"127.0.0.2\"\nport = {port}\n\
                 notify_down = [\"/usr/bin/touch\", \"{}\"]\n",
                mark.display(),
                mark.display()
            );
            crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap()
        };
        let before = cfg("\"192.0.2.1 80\", \"192.0.2.2 80\"");
        let after = cfg("\"192.0.2.2 80\"");
        let rs: SocketAddr = ([127, 0, 0, 1], port).into();
        let (mut hc, _rx) =
            HealthChecker::start(CheckTarget::from_config(&before), HealthOptions::default());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old = hc.state(before.virtual_servers[0].key(), rs).unwrap();
        assert!(old.up && old.attempts > 0, "{old:?}");
        hc.reload(CheckTarget::from_config(&after), None);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!mark.exists(), "notify_down ran for a server that is up");
        assert!(hc.state(before.virtual_servers[0].key(), rs).is_none());
        let new = hc.state(after.virtual_servers[0].key(), rs).unwrap();
        assert!(new.up && new.attempts > 0, "{new:?}");
        assert_eq!(new.since, old.since, "the same checks, carried on");
        drop(listener);
    }
}
