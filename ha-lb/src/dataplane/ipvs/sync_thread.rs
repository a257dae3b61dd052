//! Switching the kernel's connection sync thread off the caller's thread.
//!
//! Starting or stopping IPVS's sync thread is a request the kernel answers only once the
//! thread has started or stopped; stopping one can take seconds (a thread `ipvsadm` started a
//! moment before held the request 5 s in a 6.1 guest). The daemon's event loop must not wait
//! that long on a VRRP state change, so [`Switcher`] does the switching on a thread of its
//! own, with its own netlink socket: [`Switcher::want`] returns at once, the thread always works towards the latest wish (wishes
//! made while it is busy are merged: only the last counts), and a switch that failed is tried
//! again every [`RETRY`] until it succeeds or the wish changes.
//!
//! What this does not buy: the kernel's IPVS generic-netlink family is not `parallel_ops`,
//! so while a switch is held in the kernel, every other IPVS request (the data plane's
//! applies and counter dumps, `ipvsadm`) waits for the generic-netlink lock too. The event
//! loop is then held at its next IPVS request rather than at the switch itself (for at most
//! [`super::socket::REPLY_TIMEOUT`]; the switcher's own socket waits longer,
//! [`super::socket::SYNC_REPLY_TIMEOUT`], so a held switch is not given up and redone): VRRP,
//! health checks and connection sync of the XDP plane go on, a reconcile or `status` of
//! the IPVS plane waits. A switch that takes longer than [`SLOW`] is logged.
//!
//! The kernel side is behind [`SyncKernel`], so all of this is tested without one.

use std::{
    sync::{mpsc, Arc, Condvar, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::SyncDaemon;

/// How long a failed switch waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// A switch the kernel holds longer than this is logged (other IPVS requests waited).
pub const SLOW: Duration = Duration::from_secs(1);

/// What the switching thread needs from the kernel.
pub trait SyncKernel: Send + 'static {
    /// Stops whatever sync threads run (in either state, ours or anyone's); none is fine.
    fn stop_all(&mut self) -> Result<(), String>;
    /// Starts the thread `want` describes (none runs).
    fn start(&mut self, want: &SyncDaemon) -> Result<(), String>;
}

/// Where the switching thread is, for [`Switcher::settle`] (tests, exit).
#[derive(Default)]
struct Progress {
    /// Wishes made so far.
    asked: u64,
    /// The last wish carried out (equal to `asked`: settled).
    done: u64,
    /// Why the current wish is not carried out yet, if a try failed.
    error: Option<String>,
    /// Switches made, and tries that failed (status).
    switches: u64,
    failures: u64,
}

/// What [`Switcher::counters`] reports (`ha-lb status`, "Connection sync").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Switches of the kernel's thread carried out.
    pub switches: u64,
    /// Tries that failed (each tried again after [`RETRY`]).
    pub failures: u64,
    /// A wish not carried out yet: a switch under way, held by the kernel, or failing.
    pub pending: bool,
}

/// The kernel's sync thread, switched on a thread of its own (see the module docs).
pub struct Switcher {
    tx: Option<mpsc::Sender<(u64, Option<SyncDaemon>)>>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Switcher {
    /// Starts the switching thread. Nothing is switched until the first [`Switcher::want`].
    pub fn spawn(kernel: impl SyncKernel) -> std::io::Result<Switcher> {
        let (tx, rx) = mpsc::channel();
        let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let p = progress.clone();
        let thread = std::thread::Builder::new()
            .name("ipvs-sync-switch".into())
            .spawn(move || run(kernel, rx, &p))?;
        Ok(Switcher { tx: Some(tx), progress, thread: Some(thread) })
    }

    /// Asks for `want` (`None`: no sync thread); returns at once.
    pub fn want(&mut self, want: Option<SyncDaemon>) {
        let (lock, _) = &*self.progress;
        let mut p = lock.lock().unwrap_or_else(PoisonError::into_inner);
        p.asked += 1;
        p.error = None;
        if let Some(tx) = &self.tx {
            let _ = tx.send((p.asked, want));
        }
    }

    /// Switches made, failed tries, and whether one is pending.
    pub fn counters(&self) -> SwitchCounters {
        let (lock, _) = &*self.progress;
        let p = lock.lock().unwrap_or_else(PoisonError::into_inner);
        SwitchCounters { switches: p.switches, failures: p.failures, pending: p.done < p.asked }
    }

    /// Waits up to `timeout` for the last wish to be carried out: `Err` with the last
    /// failure (or a timeout) if it is not.
    pub fn settle(&self, timeout: Duration) -> Result<(), String> {
        let (lock, cv) = &*self.progress;
        let deadline = Instant::now() + timeout;
        let mut p = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while p.done < p.asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(p.error.clone().unwrap_or_else(|| {
                    format!("the sync thread switch took longer than {timeout:?}")
                }));
            }
            p = cv.wait_timeout(p, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        Ok(())
    }

    /// Ends the switching thread after it has carried out the wishes made so far (or given
    /// up on them after `timeout`).
    pub fn finish(&mut self, timeout: Duration) -> Result<(), String> {
        let settled = self.settle(timeout);
        // Disconnected: the thread ends after its current try.
        self.tx = None;
        if settled.is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        settled
    }
}

impl Drop for Switcher {
    fn drop(&mut self) {
        // Nothing more is switched; a try under way finishes on its own (detached).
        self.tx = None;
    }
}

fn run(
    mut kernel: impl SyncKernel,
    rx: mpsc::Receiver<(u64, Option<SyncDaemon>)>,
    progress: &(Mutex<Progress>, Condvar),
) {
    let (lock, cv) = progress;
    // The wish being worked on, and whether the last try at it failed.
    let mut pending: Option<(u64, Option<SyncDaemon>)> = None;
    // What runs now, as far as we know: `Some(None)` none of ours; `None` unknown (at start,
    // or after a failure half-way), so whatever runs is stopped first.
    let mut current: Option<Option<SyncDaemon>> = None;
    loop {
        let next = match &pending {
            // Idle: wait for a wish.
            None => match rx.recv() {
                Ok(w) => Some(w),
                Err(_) => return,
            },
            // A failed try: wait for a newer wish, or try again.
            Some(_) => match rx.recv_timeout(RETRY) {
                Ok(w) => Some(w),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        if let Some(w) = next {
            pending = Some(w);
        }
        // Only the latest wish counts.
        while let Ok(w) = rx.try_recv() {
            pending = Some(w);
        }
        let Some((id, want)) = pending.clone() else { continue };
        let started = Instant::now();
        let result = switch(&mut kernel, &mut current, &want);
        if started.elapsed() > SLOW {
            tracing::warn!(took = ?started.elapsed(), "lvs_sync_daemon: the kernel held the sync thread switch (IPVS requests waited meanwhile)");
        }
        let mut p = lock.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(switched) => {
                pending = None;
                p.switches += u64::from(switched);
                p.done = p.done.max(id);
                if p.done == p.asked {
                    p.error = None;
                }
            }
            Err(e) => {
                p.failures += 1;
                tracing::warn!(error = %e, retry_in = ?RETRY, "lvs_sync_daemon: switching the kernel's sync thread failed");
                if id == p.asked {
                    p.error = Some(e);
                }
            }
        }
        cv.notify_all();
    }
}

/// Carries `want` out: `Ok(false)` if it already was.
fn switch(
    kernel: &mut impl SyncKernel,
    current: &mut Option<Option<SyncDaemon>>,
    want: &Option<SyncDaemon>,
) -> Result<bool, String> {
    if current.as_ref() == Some(want) {
        return Ok(false);
    }
    // Unknown until this try has gone through.
    *current = None;
    // Ours, and whatever else runs in either state (ours from before a crash, or
    // ipvsadm's), goes first: the kernel runs one thread per state.
    kernel.stop_all()?;
    *current = Some(None);
    if let Some(w) = want {
        kernel.start(w)?;
        tracing::info!(master = w.master, interface = %w.interface, sync_id = w.sync_id, "IPVS connection sync daemon started");
        *current = Some(Some(w.clone()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that records calls, takes `delay` for each, and fails the first `fail` ones.
    #[derive(Clone, Default)]
    struct Fake {
        log: Arc<Mutex<Vec<String>>>,
        delay: Duration,
        fail: Arc<Mutex<u32>>,
    }

    impl Fake {
        fn call(&self, what: String) -> Result<(), String> {
            std::thread::sleep(self.delay);
            let mut f = self.fail.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                self.log.lock().unwrap().push(format!("{what} failed"));
                return Err(format!("{what}: EBUSY"));
            }
            self.log.lock().unwrap().push(what);
            Ok(())
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl SyncKernel for Fake {
        fn stop_all(&mut self) -> Result<(), String> {
            self.call("stop".into())
        }
        fn start(&mut self, w: &SyncDaemon) -> Result<(), String> {
            self.call(format!("start {}", if w.master { "master" } else { "backup" }))
        }
    }

    fn sd(master: bool) -> Option<SyncDaemon> {
        Some(SyncDaemon { master, interface: "eth1".into(), sync_id: 7 })
    }

    #[test]
    fn a_slow_kernel_does_not_hold_the_caller_and_only_the_last_wish_counts() {
        let k = Fake { delay: Duration::from_millis(300), ..Default::default() };
        let mut s = Switcher::spawn(k.clone()).unwrap();
        let t = Instant::now();
        s.want(sd(false));
        s.want(sd(true));
        s.want(sd(false));
        s.want(sd(true));
        assert!(t.elapsed() < Duration::from_millis(100), "want() waited {:?}", t.elapsed());
        s.settle(Duration::from_secs(10)).unwrap();
        let log = k.log();
        // The first wish may be under way before the others arrive; the last is carried out
        // last, and nothing in between is started.
        assert_eq!(log.last().map(String::as_str), Some("start master"), "{log:?}");
        assert!(log.len() <= 4, "wishes made while busy are merged: {log:?}");
        // Already there: nothing to do.
        s.want(sd(true));
        s.settle(Duration::from_secs(10)).unwrap();
        assert_eq!(k.log(), log);
        s.want(None);
        s.finish(Duration::from_secs(10)).unwrap();
        assert_eq!(k.log().last().map(String::as_str), Some("stop"));
    }

    #[test]
    fn a_failed_switch_is_tried_again_and_reported_until_then() {
        let k = Fake { fail: Arc::new(Mutex::new(1)), ..Default::default() };
        let mut s = Switcher::spawn(k.clone()).unwrap();
        s.want(sd(false));
        let e = s.settle(Duration::from_millis(500)).unwrap_err();
        assert!(e.contains("EBUSY"), "{e}");
        // RETRY later it goes through: the whole switch again (the thread state is unknown).
        s.settle(RETRY + Duration::from_secs(5)).unwrap();
        assert_eq!(k.log(), ["stop failed", "stop", "start backup"]);
        assert_eq!(s.counters(), SwitchCounters { switches: 1, failures: 1, pending: false });
    }

    #[test]
    fn a_new_wish_does_not_wait_for_the_retry() {
        let k = Fake { fail: Arc::new(Mutex::new(1)), ..Default::default() };
        let mut s = Switcher::spawn(k.clone()).unwrap();
        s.want(sd(false));
        assert!(s.settle(Duration::from_millis(300)).is_err());
        let t = Instant::now();
        s.want(sd(true));
        s.settle(Duration::from_secs(3)).unwrap();
        assert!(t.elapsed() < RETRY, "{:?}", t.elapsed());
        assert_eq!(k.log(), ["stop failed", "stop", "start master"]);
    }
}
