//! The kernel IPVS data plane (`dataplane = "ipvs"`): [`IpvsDataplane`] programs the same
//! desired state as the XDP one into the kernel's IP Virtual Server over the generic-netlink
//! family "IPVS" — the fallback where XDP cannot be used or is not wanted.
//!
//! - [`wire`]: the messages, encoded and decoded by hand (pure, byte-exact tests);
//! - [`plan`]: desired state → what IPVS should hold → ordered commands (pure, tested without
//!   a kernel; the order keeps every live service populated, see there);
//! - [`socket`]: a blocking NETLINK_GENERIC socket (`netlink-sys`), one request at a time.
//!
//! # Which services are ha-lb's
//! IPVS has no notion of an owner, and other tools (an administrator's `ipvsadm`, kube-proxy,
//! Docker swarm) may keep services of their own. ha-lb never flushes: it touches only services
//! it *owns*, which are
//! - every service of a desired state it applied (a desired service that already exists in the
//!   kernel — left by a previous run, or by keepalived during a migration — is **adopted**:
//!   edited in place, its destinations diffed, so its connections survive);
//! - with a ledger ([`IpvsDataplane::open_with_ledger`]; the daemon's is beside its control
//!   socket, [`ledger_path`]: `/run/ha-lb/ha-lb.ipvs`): the services a previous run owned,
//!   so that a restart after a crash still removes the ones the new configuration dropped.
//!   Without a ledger, those are left alone.
//!
//! Services ha-lb stops wanting are deleted; services it never wanted are never touched.
//! Dropping the data plane removes the services it owns, as keepalived does at exit, unless
//! [`IpvsDataplane::keep_on_drop`] says otherwise (keepalived's `--dont-release-ipvs`).
//!
//! # Failures and drift
//! Each virtual server is applied on its own, and within one a refused command stops only
//! what depends on it (a service not created gets no destinations; a refused scheduler or
//! destination does not hold up the service's other destination changes, such as a health
//! check's removal), without ever emptying a service for a replacement that is missing or
//! deleting a service while another failed to be created (see `IpvsDataplane::converge`).
//! If a command fails (someone deleted a service behind our back, a scheduler module
//! is missing), `apply` logs what did go through and returns the error, and the next `apply`
//! first re-reads the kernel's view
//! of the owned services, then plans from that: nothing needs rebuilding. `maintain()` does the
//! same re-read every time and puts back anything that drifted from the last desired state
//! (`ipvsadm -C` by hand is undone within one maintenance interval).
//!
//! # Versus the XDP data plane
//! IPVS does its own connection tracking, timeouts and ICMP handling; `stats()` reads its
//! counters (`reasons` is empty: IPVS keeps no per-reason frame counters), which the kernel
//! folds from per-CPU counters every 2 s (its rate estimator): they lag by up to that. Scheduler names are
//! IPVS's (`ip_vs_rr` … `ip_vs_mh`, which the kernel loads on demand); `hash_port` sets
//! `sh-port`/`mh-port`; persistence groups clients by `persistence_granularity` (IPVS's
//! netmask: /32 or /128 by default).
//! A new service exists for a few system calls before its destinations are added (IPVS cannot
//! create both at once); it has no connections then, so nothing is lost.

pub mod plan;
pub mod socket;
pub mod sync_thread;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use self::{
    plan::{KernelService, Op, View},
    socket::{Genl, GenlError},
    wire::{DumpedDest, DumpedService},
};
use super::{
    ApplyReport, Dataplane, DataplaneError, DataplaneStats, DesiredState, LbKind, Protocol,
    RealServerStats, ServiceStats, VirtualServerKey,
};

fn backend(what: impl std::fmt::Display, e: GenlError) -> DataplaneError {
    DataplaneError::Backend(format!("IPVS: {what}: {e}").into())
}

/// The kernel's IPVS, driven over generic netlink.
pub struct IpvsDataplane {
    genl: Genl,
    /// Services ha-lb owns (see the module docs).
    owned: BTreeSet<VirtualServerKey>,
    /// What IPVS holds for the owned services, as last applied or read back.
    state: View,
    /// The latest valid desired state asked for (applied, unless an apply failed).
    desired: DesiredState,
    /// `state` may not be what the kernel holds (an apply failed half-way, or at start with a
    /// ledger): re-read before planning.
    stale: bool,
    /// A desired state has been accepted: until then maintain() has nothing to restore (and
    /// must not apply the empty default over services a restart found in the ledger).
    accepted: bool,
    ledger: Option<PathBuf>,
    /// What the ledger file holds (written again whenever `owned` differs, so a failed
    /// write, or a set that shrank on a re-read, is recorded at the next apply).
    recorded: BTreeSet<VirtualServerKey>,
    keep_on_drop: bool,
    /// The kernel sync thread ha-lb runs (see [`IpvsDataplane::set_sync`]).
    sync: Option<SyncDaemon>,
    /// Switches it, on a thread of its own (started at the first [`IpvsDataplane::set_sync`]).
    switcher: Option<sync_thread::Switcher>,
    /// With a ledger: the file that says a kernel sync thread of ours may be running
    /// (`<ledger>.sync`, see [`IpvsDataplane::stop_leftover_sync`]).
    sync_marker: Option<PathBuf>,
    /// What that file said at start: a run that did not stop its sync thread (a crash).
    leftover_sync: Option<String>,
    /// The services the last apply did not finish (refused or held back): their changes at
    /// the next maintain() are a retry, not drift.
    failing: BTreeSet<VirtualServerKey>,
}

/// Which of the kernel's connection sync threads runs, where: keepalived's
/// `lvs_sync_daemon` with kernel IPVS. A MASTER director sends its connections, a BACKUP
/// one receives them (multicast 224.0.0.81:8848 on `interface`, `sync_id` to tell
/// directors pairs apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncDaemon {
    pub master: bool,
    pub interface: String,
    pub sync_id: u8,
}

impl SyncDaemon {
    fn state(&self) -> u32 {
        if self.master {
            wire::IP_VS_STATE_MASTER
        } else {
            wire::IP_VS_STATE_BACKUP
        }
    }
}

impl IpvsDataplane {
    /// Connects to the kernel's IPVS. Fails with a clear message if the kernel has none
    /// (`modprobe ip_vs`) or the process lacks CAP_NET_ADMIN.
    pub fn open() -> Result<IpvsDataplane, DataplaneError> {
        // Kernels before 5.16 do not load ip_vs for its generic netlink family by themselves;
        // keepalived runs modprobe too.
        let genl = Genl::open(socket::REPLY_TIMEOUT).or_else(|e| {
            if e.errno() != Some(libc::ENOENT) {
                return Err(e);
            }
            let loaded = std::process::Command::new("modprobe")
                .arg("ip_vs")
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if loaded {
                tracing::info!("loaded the ip_vs kernel module");
                Genl::open(socket::REPLY_TIMEOUT)
            } else {
                Err(e)
            }
        });
        let genl = genl.map_err(|e| match e.errno() {
            Some(libc::ENOENT) => DataplaneError::Unsupported {
                dataplane: "ipvs",
                what: "this kernel has no IPVS (the generic netlink family \"IPVS\" is \
                       missing): load it with `modprobe ip_vs`"
                    .into(),
            },
            _ => backend("resolving the generic netlink family \"IPVS\"", e),
        })?;
        let dp = IpvsDataplane {
            genl,
            owned: BTreeSet::new(),
            state: View::new(),
            desired: DesiredState::default(),
            accepted: false,
            recorded: BTreeSet::new(),
            sync: None,
            switcher: None,
            stale: false,
            ledger: None,
            keep_on_drop: false,
            sync_marker: None,
            leftover_sync: None,
            failing: BTreeSet::new(),
        };
        // Reading needs CAP_NET_ADMIN too: find out now rather than at the first apply.
        dp.dump_services().map_err(|e| match e.errno() {
            Some(libc::EPERM) | Some(libc::EACCES) => DataplaneError::Backend(
                "IPVS: permission denied (the ipvs data plane needs CAP_NET_ADMIN)".into(),
            ),
            _ => backend("listing services", e),
        })?;
        Ok(dp)
    }

    /// Like [`IpvsDataplane::open`], and records the owned services in `path` (one per line,
    /// rewritten atomically whenever the set changes). Services listed there by an earlier
    /// run are owned from the start: the first `apply` removes those it does not want.
    pub fn open_with_ledger(path: impl Into<PathBuf>) -> Result<IpvsDataplane, DataplaneError> {
        let path = path.into();
        let mut dp = IpvsDataplane::open()?;
        dp.owned = read_ledger(&path)
            .map_err(|e| DataplaneError::Backend(format!("{}: {e}", path.display()).into()))?;
        dp.stale = !dp.owned.is_empty();
        dp.recorded = dp.owned.clone();
        let marker = sync_marker_path(&path);
        dp.leftover_sync = read_sync_marker(&marker);
        dp.sync_marker = Some(marker);
        dp.ledger = Some(path);
        Ok(dp)
    }

    /// Stops the kernel's sync threads (master and backup) when an earlier run started one and
    /// did not stop it — it was killed — and this run has no `lvs_sync_daemon` to take them
    /// over (with one, [`IpvsDataplane::set_sync`] replaces them). keepalived stops them at
    /// start only when it manages the sync daemon; ha-lb also stops those it left itself, and
    /// only those: without the ledger's marker (`<ledger>.sync`, written before a thread is
    /// started, removed once it is stopped at exit) a sync thread is someone else's (an
    /// administrator's `ipvsadm --start-daemon`) and is left alone. Returns whether it
    /// stopped them. Blocking: the kernel answers once its threads have stopped.
    pub fn stop_leftover_sync(&mut self) -> Result<bool, DataplaneError> {
        let Some(what) = self.leftover_sync.take() else { return Ok(false) };
        if self.switcher.is_some() {
            return Ok(false);
        }
        // On the caller's thread (at start): the data plane's bound, not the switcher's.
        let mut k = GenlSync::open(socket::REPLY_TIMEOUT)?;
        sync_thread::SyncKernel::stop_all(&mut k).map_err(|e| DataplaneError::Backend(e.into()))?;
        tracing::warn!(left = %what, "IPVS: stopped the kernel sync thread an earlier run left (lvs_sync_daemon is not configured now)");
        if let Some(m) = &self.sync_marker {
            remove_sync_marker(m);
        }
        Ok(true)
    }

    /// `true`: leave the owned services in the kernel when this value is dropped.
    pub fn keep_on_drop(&mut self, keep: bool) {
        self.keep_on_drop = keep;
    }

    /// The services ha-lb owns.
    pub fn owned(&self) -> impl Iterator<Item = &VirtualServerKey> {
        self.owned.iter()
    }

    /// Every TCP/UDP service in the kernel (owned or not) with its destinations.
    pub fn kernel_services(&self) -> Result<Vec<(DumpedService, Vec<DumpedDest>)>, DataplaneError> {
        self.dump_with_dests(|_| true)
    }

    /// The services in the kernel that `pick` picks, each with its destinations: one dump of
    /// the services, then one of each picked one's destinations.
    fn dump_with_dests(
        &self,
        pick: impl Fn(&VirtualServerKey) -> bool,
    ) -> Result<Vec<(DumpedService, Vec<DumpedDest>)>, DataplaneError> {
        let services = self.dump_services().map_err(|e| backend("listing services", e))?;
        services
            .into_iter()
            .filter(|s| pick(&s.key))
            .map(|s| {
                let d = self
                    .dump_dests(&s.key)
                    .map_err(|e| backend(format!("listing real servers of {}", s.key), e))?;
                Ok((s, d))
            })
            .collect()
    }

    fn dump_services(&self) -> Result<Vec<DumpedService>, GenlError> {
        let f = self.genl.family();
        let msgs = self.genl.transact(|seq| wire::dump_services(f, seq))?;
        Ok(msgs.iter().filter_map(|p| wire::parse_service(p)).collect())
    }

    fn dump_dests(&self, vs: &VirtualServerKey) -> Result<Vec<DumpedDest>, GenlError> {
        let f = self.genl.family();
        let msgs = self.genl.transact(|seq| wire::dump_dests(f, seq, vs))?;
        let af = wire::af_of(vs.address);
        Ok(msgs.iter().filter_map(|p| wire::parse_dest(p, af)).collect())
    }

    /// The kernel's view of the services in `keys` that exist.
    fn read_view(&self, keys: &BTreeSet<VirtualServerKey>) -> Result<View, DataplaneError> {
        if keys.is_empty() {
            return Ok(View::new());
        }
        let found = self.dump_with_dests(|k| keys.contains(k))?;
        Ok(found
            .into_iter()
            .map(|(s, dests)| {
                let dests = dests.into_iter().map(|d| ((d.addr, d.port), d.params)).collect();
                (s.key, KernelService { params: s.params, dests })
            })
            .collect())
    }

    fn write_ledger(&self) -> Result<(), DataplaneError> {
        let Some(path) = &self.ledger else { return Ok(()) };
        write_ledger(path, &self.owned)
            .map_err(|e| DataplaneError::Backend(format!("{}: {e}", path.display()).into()))
    }

    /// Runs the kernel's sync thread as `want` says (`None`: none), as keepalived switches
    /// it when the synced instance changes state: the thread of the other state stops first.
    /// A thread already there in the wanted state (left by a previous run, or ipvsadm's) is
    /// replaced by one with the wanted interface and id.
    ///
    /// Returns at once: the kernel answers only once its thread has started or stopped,
    /// which can take seconds, so the switch is made on a thread of its own and a failed
    /// one is tried again there ([`sync_thread`], which also says what other IPVS requests
    /// meanwhile wait for); [`IpvsDataplane::sync_settle`] waits for it.
    pub fn set_sync(&mut self, want: Option<SyncDaemon>) -> Result<(), DataplaneError> {
        if self.sync == want {
            return Ok(());
        }
        if self.switcher.is_none() {
            let k = GenlSync::open(socket::SYNC_REPLY_TIMEOUT)?;
            let s = sync_thread::Switcher::spawn(k).map_err(|e| {
                DataplaneError::Backend(
                    format!("IPVS: starting the sync switch thread: {e}").into(),
                )
            })?;
            self.switcher = Some(s);
        }
        // Marked before it starts: a crash right after leaves the mark for the next run.
        if let (Some(w), Some(m)) = (&want, &self.sync_marker) {
            if let Err(e) = write_sync_marker(m, w) {
                tracing::warn!(path = %m.display(), error = %e, "IPVS: recording the sync thread failed");
            }
        }
        if let Some(s) = &mut self.switcher {
            s.want(want.clone());
        }
        self.sync = want;
        Ok(())
    }

    /// The sync-thread switcher's counters (`None`: no `set_sync` yet).
    pub fn sync_counters(&self) -> Option<sync_thread::SwitchCounters> {
        self.switcher.as_ref().map(|s| s.counters())
    }

    /// Waits up to `timeout` for the last [`IpvsDataplane::set_sync`] to be carried out.
    pub fn sync_settle(&self, timeout: std::time::Duration) -> Result<(), DataplaneError> {
        match &self.switcher {
            None => Ok(()),
            Some(s) => s.settle(timeout).map_err(|e| DataplaneError::Backend(e.into())),
        }
    }

    /// Writes the ledger; unwritable (a read-only /run?), it warns and programs anyway — only
    /// a crash before the next successful write could orphan a service — and tries again at
    /// the next apply.
    fn record_owned(&mut self) {
        if self.owned == self.recorded {
            return;
        }
        match self.write_ledger() {
            Ok(()) => self.recorded = self.owned.clone(),
            Err(e) => tracing::warn!(error = %e, "IPVS: recording the services ha-lb owns failed"),
        }
    }

    /// Takes the owned services to `desired`, each virtual server on its own, as keepalived
    /// does: one the kernel refuses (a scheduler module it lacks, an address it rejects)
    /// does not hold up the others.
    ///
    /// Within a service, a refused command stops only what depends on it: a service that
    /// could not be created gets none of its destinations, but a refused `SET_SERVICE` (a
    /// scheduler) or destination still lets the service's other destination changes through
    /// — above all a health check's removal. Two guards keep what the plan's order promises
    /// when part of it failed:
    /// - a destination is not deleted if that would leave the service without a serving one
    ///   (weight above 0) while the target has one (its replacement was refused): a service
    ///   is never emptied for a replacement that is not there;
    /// - no service is deleted while one failed to be created: a virtual server that moves
    ///   stays at the old address until it is up at the new one.
    ///
    /// What was held back is planned again at the next apply (the view is re-read first).
    fn converge(&mut self, desired: &DesiredState) -> Result<Converged, DataplaneError> {
        let target = plan::target(desired)?;
        // What maintain() restores or retries: the latest valid desired state.
        self.desired = desired.clone();
        self.accepted = true;
        // Desired services we do not hold yet may exist already: they are adopted as they
        // are. Stale, the owned ones are read again too — in the same dump.
        let mut read: BTreeSet<VirtualServerKey> =
            target.keys().filter(|k| self.stale || !self.state.contains_key(k)).copied().collect();
        if self.stale {
            read.extend(self.owned.iter().copied());
        }
        let mut found = self.read_view(&read)?;
        if self.stale {
            let (held, adopted): (View, View) =
                found.into_iter().partition(|(k, _)| self.owned.contains(k));
            (self.state, found) = (held, adopted);
            self.owned = self.state.keys().copied().collect();
            self.stale = false;
        }
        for (vs, s) in found {
            tracing::info!(virtual_server = %vs, scheduler = %s.params.sched, real_servers = s.dests.len(), "IPVS: adopting an existing service");
            self.owned.insert(vs);
            self.state.insert(vs, s);
        }
        let (ops, _) = plan::plan(&self.state, &target);
        // Own what we are about to create before creating it, so a crash cannot orphan it.
        self.owned.extend(target.keys().copied());
        self.record_owned();
        let before = self.state.clone();
        let (done, failed, held) = run_ops(&ops, &before, &target, |op| self.execute(op));
        self.failing = failed.keys().chain(held.keys()).copied().collect();
        if self.failing.is_empty() {
            self.state = target;
            self.owned = self.state.keys().copied().collect();
            self.record_owned();
            return Ok(Converged { before, done, error: None });
        }
        // Re-read before the next plan: the others are applied, the failed ones in part. What
        // was held back is in the error, which the daemon logs at every retry.
        self.stale = true;
        let msg: Vec<String> = (failed.values().flatten().map(|e| e.to_string()))
            .chain(held.iter().map(|(vs, why)| format!("virtual_server {vs}: {why}")))
            .collect();
        let error = Some(DataplaneError::Backend(msg.join("; ").into()));
        Ok(Converged { before, done, error })
    }

    fn execute(&self, op: &Op) -> Result<(), DataplaneError> {
        let f = self.genl.family();
        self.genl.request(|seq| op.encode(f, seq)).map_err(|e| {
            let hint = match (op, e.errno()) {
                (Op::NewService(_, p) | Op::SetService(_, p), Some(libc::ENOENT)) => {
                    format!(" (is the scheduler module ip_vs_{} available?)", p.sched)
                }
                _ => String::new(),
            };
            backend(format!("{op}{hint}"), e)
        })
    }
}

impl Dataplane for IpvsDataplane {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError> {
        let c = self.converge(desired)?;
        let report = plan::report(&c.before, &c.done);
        match c.error {
            None => Ok(report),
            Some(e) => {
                // What did go through (other services, a failed service's other changes) is
                // in the kernel: say so, the error alone does not.
                if !report.is_empty() {
                    tracing::info!(?report, "IPVS: applied in part");
                }
                Err(e)
            }
        }
    }

    /// What every data plane checks, what IPVS needs beyond that ([`plan::target`]), and that
    /// the kernel has each scheduler the services use: a reload to an `lb_algo` whose module
    /// is missing is refused up front rather than applied in part.
    fn check(&self, desired: &DesiredState) -> Result<(), DataplaneError> {
        let current = plan::target(&self.desired).unwrap_or_default();
        check_schedulers(&added_schedulers(plan::target(desired)?, &current), scheduler_available)
    }

    fn stats(&self) -> Result<DataplaneStats, DataplaneError> {
        let mut out = DataplaneStats::default();
        for (s, dests) in self.dump_with_dests(|k| self.owned.contains(k))? {
            let spec = self.desired.services.get(&s.key);
            let mut ss = ServiceStats {
                packets: s.stats.inpkts + s.stats.outpkts,
                bytes: s.stats.inbytes + s.stats.outbytes,
                new_conns: s.stats.conns,
                ..ServiceStats::default()
            };
            for d in dests {
                // DR destinations carry the virtual port in IPVS: report them under the
                // real_server's configured port.
                let port = spec
                    .filter(|sp| sp.lb_kind == LbKind::Dr)
                    .and_then(|sp| sp.real_servers.iter().find(|r| r.addr == d.addr))
                    .map_or(d.port, |r| r.port);
                ss.active_conns += u64::from(d.active_conns);
                ss.real_servers.insert(
                    (d.addr, port),
                    RealServerStats {
                        weight: d.params.weight,
                        in_packets: d.stats.inpkts,
                        in_bytes: d.stats.inbytes,
                        out_packets: d.stats.outpkts,
                        out_bytes: d.stats.outbytes,
                        new_conns: d.stats.conns,
                        active_conns: u64::from(d.active_conns),
                        inactive_conns: Some(u64::from(d.inact_conns)),
                    },
                );
            }
            out.services.insert(s.key, ss);
        }
        Ok(out)
    }

    /// Re-reads the owned services and restores whatever drifted from the last desired state.
    /// IPVS expires its own connections: always `Ok(0)`.
    fn maintain(&mut self) -> Result<usize, DataplaneError> {
        if !self.accepted {
            return Ok(0);
        }
        // After a failed apply the daemon retries it itself: the changes to the services
        // that failed are its own; those to any other service are drift.
        let retried = std::mem::take(&mut self.failing);
        self.stale = true;
        let desired = self.desired.clone();
        let c = self.converge(&desired)?;
        let drift: Vec<Op> =
            c.done.into_iter().filter(|op| !retried.contains(op.service())).collect();
        let report = plan::report(&c.before, &drift);
        if !report.is_empty() {
            tracing::warn!(?report, "IPVS: services changed behind ha-lb's back; restored");
        }
        c.error.map_or(Ok(0), Err)
    }
}

impl Drop for IpvsDataplane {
    fn drop(&mut self) {
        if self.keep_on_drop {
            return;
        }
        if let Some(mut s) = self.switcher.take() {
            if self.sync.take().is_some() {
                s.want(None);
            }
            match s.finish(std::time::Duration::from_secs(10)) {
                Ok(()) => {
                    if let Some(m) = &self.sync_marker {
                        remove_sync_marker(m);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "IPVS: stopping the sync daemon at exit failed")
                }
            }
        }
        if self.owned.is_empty() {
            return;
        }
        if let Err(e) = self.apply(&DesiredState::default()) {
            tracing::warn!(error = %e, "IPVS: removing ha-lb's services at exit failed");
        }
    }
}

/// The services of `target` whose scheduler `current` does not already have for them: a
/// reload is refused for a scheduler it brings, not for one the running configuration has
/// (which, if the kernel lacks it, would otherwise refuse every later reload — a priority
/// change, a failed real server's removal).
fn added_schedulers(target: View, current: &View) -> View {
    (target.into_iter())
        .filter(|(k, s)| current.get(k).is_none_or(|c| c.params.sched != s.params.sched))
        .collect()
}

/// Refuses `target` if a scheduler its services use is not `available`.
fn check_schedulers(target: &View, available: impl Fn(&str) -> bool) -> Result<(), DataplaneError> {
    let mut by_sched: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (vs, s) in target {
        by_sched.entry(s.params.sched.as_str()).or_default().push(vs.to_string());
    }
    let missing: Vec<String> = by_sched
        .into_iter()
        .filter(|(sched, _)| !available(sched))
        .map(|(sched, vs)| {
            format!(
                "lb_algo {sched} (virtual_server {}): this kernel has no scheduler module \
                 ip_vs_{sched}",
                vs.join(", ")
            )
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DataplaneError::Unsupported { dataplane: "ipvs", what: missing.join("; ") })
}

/// Whether the kernel has IPVS's scheduler `name` (module `ip_vs_<name>`): loaded (in
/// /sys/module), else built in or installed (the kernel's modules.builtin / modules.dep),
/// else what `modprobe -n` says. When none of that can tell (no module tree, no modprobe):
/// yes — the apply will say.
fn scheduler_available(name: &str) -> bool {
    let module = format!("ip_vs_{name}");
    if Path::new("/sys/module").join(&module).exists() {
        return true;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if let Some(known) = module_listed(&Path::new("/lib/modules").join(release.trim()), &module) {
        return known;
    }
    std::process::Command::new("modprobe")
        .args(["-n", "-q", &module])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_or(true, |s| s.success())
}

/// Whether the module tree `dir` (`/lib/modules/<release>`) has `module`, built in or as a
/// file; `None` when it has neither list.
fn module_listed(dir: &Path, module: &str) -> Option<bool> {
    let mut read_one = false;
    for list in ["modules.builtin", "modules.dep"] {
        let Ok(text) = std::fs::read_to_string(dir.join(list)) else { continue };
        read_one = true;
        // `kernel/net/netfilter/ipvs/ip_vs_mh.ko[.xz]` (modules.dep: before its colon).
        let names = text.lines().filter_map(|l| l.split(':').next()?.rsplit('/').next());
        if names.map(|f| f.split(".ko").next().unwrap_or(f)).any(|m| m == module) {
            return Some(true);
        }
    }
    read_one.then_some(false)
}

/// What [`IpvsDataplane::converge`] did.
struct Converged {
    /// The view the commands started from.
    before: View,
    /// The commands carried out.
    done: Vec<Op>,
    /// The kernel's refusals, if any (`done` then is part of the plan).
    error: Option<DataplaneError>,
}

/// What [`run_ops`] did: the commands carried out, the errors by service, and the services
/// whose commands were held back (with why).
type RunOutcome<E> =
    (Vec<Op>, BTreeMap<VirtualServerKey, Vec<E>>, BTreeMap<VirtualServerKey, String>);

/// Runs `ops` (planned from `current` to `target`) through `execute`, with the guards
/// [`IpvsDataplane::converge`] describes.
fn run_ops<E>(
    ops: &[Op],
    current: &View,
    target: &View,
    mut execute: impl FnMut(&Op) -> Result<(), E>,
) -> RunOutcome<E> {
    // The weights each service holds as the commands go through.
    let mut live: BTreeMap<VirtualServerKey, BTreeMap<(IpAddr, u16), u32>> = current
        .iter()
        .map(|(vs, s)| (*vs, s.dests.iter().map(|(k, d)| (*k, d.weight)).collect()))
        .collect();
    let mut done = Vec::new();
    let mut failed: BTreeMap<VirtualServerKey, Vec<E>> = BTreeMap::new();
    let mut held: BTreeMap<VirtualServerKey, String> = BTreeMap::new();
    let mut not_created: Vec<VirtualServerKey> = Vec::new();
    for op in ops {
        let vs = *op.service();
        if not_created.contains(&vs) {
            continue;
        }
        match op {
            Op::DelService(_) if !not_created.is_empty() => {
                held.insert(vs, format!("kept until {} is created", not_created[0]));
                continue;
            }
            Op::DelDest(_, a, port) => {
                let l = live.entry(vs).or_default();
                let serving = |l: &BTreeMap<(IpAddr, u16), u32>| {
                    l.iter().any(|(k, w)| *k != (*a, *port) && *w > 0)
                };
                let wanted =
                    target.get(&vs).is_some_and(|t| t.dests.values().any(|d| d.weight > 0));
                if wanted && !serving(l) && l.get(&(*a, *port)).is_some_and(|w| *w > 0) {
                    held.insert(
                        vs,
                        format!(
                            "kept real_server {} (its replacement is missing)",
                            SocketAddr::new(*a, *port)
                        ),
                    );
                    continue;
                }
            }
            _ => {}
        }
        match execute(op) {
            Ok(()) => {
                match op {
                    Op::NewService(..) => {
                        live.insert(vs, BTreeMap::new());
                    }
                    Op::DelService(_) => {
                        live.remove(&vs);
                    }
                    Op::NewDest(_, a, port, p) | Op::SetDest(_, a, port, p) => {
                        live.entry(vs).or_default().insert((*a, *port), p.weight);
                    }
                    Op::DelDest(_, a, port) => {
                        live.entry(vs).or_default().remove(&(*a, *port));
                    }
                    Op::SetService(..) => {}
                }
                done.push(op.clone());
            }
            Err(e) => {
                if matches!(op, Op::NewService(..)) {
                    not_created.push(vs);
                }
                failed.entry(vs).or_default().push(e);
            }
        }
    }
    (done, failed, held)
}

/// The kernel side of [`sync_thread`]: its own socket, so services are programmed while a
/// switch waits for the kernel.
struct GenlSync(Genl);

impl GenlSync {
    /// A socket of its own, waiting up to `timeout` for the kernel's answers.
    fn open(timeout: std::time::Duration) -> Result<GenlSync, DataplaneError> {
        Genl::open(timeout)
            .map(GenlSync)
            .map_err(|e| backend("opening a socket for the sync daemon", e))
    }

    fn stop(&self, state: u32) -> Result<(), String> {
        let f = self.0.family();
        match self.0.request(|seq| wire::del_daemon(f, seq, state)) {
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(|e| format!("IPVS: stopping the sync daemon: {e}")),
        }
    }
}

impl sync_thread::SyncKernel for GenlSync {
    fn stop_all(&mut self) -> Result<(), String> {
        self.stop(wire::IP_VS_STATE_MASTER)?;
        self.stop(wire::IP_VS_STATE_BACKUP)
    }

    fn start(&mut self, w: &SyncDaemon) -> Result<(), String> {
        let f = self.0.family();
        self.0
            .request(|seq| wire::new_daemon(f, seq, w.state(), &w.interface, u32::from(w.sync_id)))
            .map_err(|e| {
                format!(
                    "IPVS: starting the sync daemon ({} on {}, id {}): {e}",
                    if w.master { "master" } else { "backup" },
                    w.interface,
                    w.sync_id
                )
            })
    }
}

/// Where earlier versions kept the daemon's ledger: one per host, which two daemons in two network
/// namespaces (or `ip netns exec` deployments) over one /run overwrote in turn — leaking
/// services, and deleting services the other one created. Taken over once, see
/// [`migrate_ledger`].
pub const LEGACY_LEDGER: &str = "/run/ha-lb/ipvs-services";

/// Where the daemon whose control socket is `control_socket` keeps its IPVS ledger: beside
/// the socket (`/run/ha-lb/ha-lb.sock` → `/run/ha-lb/ha-lb.ipvs`, its sync-thread marker
/// `ha-lb.ipvs.sync`), as its VIP ledger. The socket is what makes a daemon the only one of
/// its kind, so two daemons — in two network namespaces of one host — never share a ledger.
pub fn ledger_path(control_socket: &Path) -> PathBuf {
    let p = control_socket.with_extension("ipvs");
    if p == control_socket {
        control_socket.with_extension("ipvs.ledger")
    } else {
        p
    }
}

/// Moves a ledger at `legacy` (and its sync-thread marker) to `ledger`, unless `ledger` exists
/// already: an upgraded daemon takes over what the earlier version recorded. A rename, so of
/// several daemons starting at once only one takes it. Returns whether it moved one.
pub fn migrate_ledger(legacy: &Path, ledger: &Path) -> bool {
    if legacy == ledger || ledger.exists() || !legacy.exists() {
        return false;
    }
    let moved = ledger
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::rename(legacy, ledger));
    if let Err(e) = moved {
        tracing::warn!(from = %legacy.display(), to = %ledger.display(), error = %e, "IPVS: moving the ledger failed");
        return false;
    }
    let (old_marker, marker) = (sync_marker_path(legacy), sync_marker_path(ledger));
    if old_marker.exists() {
        if let Err(e) = std::fs::rename(&old_marker, &marker) {
            tracing::warn!(from = %old_marker.display(), error = %e, "IPVS: moving the sync thread's marker failed");
        }
    }
    tracing::info!(from = %legacy.display(), to = %ledger.display(), "IPVS: ledger moved beside the control socket");
    true
}

fn parse_ledger_line(line: &str) -> Option<VirtualServerKey> {
    let mut w = line.split_whitespace();
    let sa: SocketAddr = w.next()?.parse().ok()?;
    let protocol = match w.next()? {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        _ => return None,
    };
    Some(VirtualServerKey { address: sa.ip(), port: sa.port(), protocol })
}

fn read_ledger(path: &Path) -> std::io::Result<BTreeSet<VirtualServerKey>> {
    let Some(text) = crate::files::read_private_file(path)? else { return Ok(BTreeSet::new()) };
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match parse_ledger_line(line) {
            Some(k) => {
                out.insert(k);
            }
            None => {
                tracing::warn!(path = %path.display(), line, "IPVS ledger: unreadable line skipped")
            }
        }
    }
    Ok(out)
}

fn write_ledger(path: &Path, owned: &BTreeSet<VirtualServerKey>) -> std::io::Result<()> {
    let mut text = String::from("# IPVS services owned by ha-lb (address:port protocol)\n");
    for k in owned {
        text.push_str(&format!("{k}\n"));
    }
    write_file(path, &text)
}

/// Writes `text` to `path` whole or not at all (a temporary file renamed into place),
/// creating its directory if need be.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    crate::files::write_private_file(path, text)
}

/// The sync-thread marker beside the ledger at `ledger`.
fn sync_marker_path(ledger: &Path) -> PathBuf {
    let mut p = ledger.as_os_str().to_owned();
    p.push(".sync");
    PathBuf::from(p)
}

/// The marker's text (`master on eth1, id 51`), when there is one.
fn read_sync_marker(path: &Path) -> Option<String> {
    crate::files::read_private_file(path).ok().flatten().map(|t| t.trim().to_string())
}

fn write_sync_marker(path: &Path, w: &SyncDaemon) -> std::io::Result<()> {
    let role = if w.master { "master" } else { "backup" };
    write_file(path, &format!("{role} on {}, id {}\n", w.interface, w.sync_id))
}

fn remove_sync_marker(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "IPVS: removing the sync thread's marker failed");
        }
    }
}

/// What `ipvsadm -Ln` would show for one service, in a stable order: for tests and logs.
pub fn describe(s: &DumpedService, dests: &[DumpedDest]) -> String {
    let mut out = format!(
        "{} {} flags={:#x} timeout={}",
        s.key, s.params.sched, s.params.flags, s.params.timeout
    );
    let mut d: BTreeMap<(IpAddr, u16), &DumpedDest> = BTreeMap::new();
    for x in dests {
        d.insert((x.addr, x.port), x);
    }
    for ((a, p), x) in d {
        out.push_str(&format!(
            " -> {} fwd={} w={}",
            SocketAddr::new(a, p),
            x.params.fwd,
            x.params.weight
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn can_live_in_the_daemon() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<IpvsDataplane>();
    }

    fn key(s: &str) -> VirtualServerKey {
        let sa: SocketAddr = s.parse().unwrap();
        VirtualServerKey { address: sa.ip(), port: sa.port(), protocol: Protocol::Tcp }
    }

    /// (virtual server, scheduler, [(real server, weight)]).
    type Svc<'a> = (&'a str, &'a str, &'a [(&'a str, u32)]);

    /// A view of NAT services.
    fn view(services: &[Svc<'_>]) -> View {
        services
            .iter()
            .map(|(vs, sched, dests)| {
                let params = wire::SvcParams {
                    sched: sched.to_string(),
                    flags: 0,
                    timeout: 0,
                    netmask: u32::MAX,
                };
                let dests = dests
                    .iter()
                    .map(|(a, w)| {
                        let sa: SocketAddr = a.parse().unwrap();
                        let p = wire::DestParams { fwd: 0, weight: *w, u_thresh: 0, l_thresh: 0 };
                        ((sa.ip(), sa.port()), p)
                    })
                    .collect();
                (key(vs), KernelService { params, dests })
            })
            .collect()
    }

    /// Plans `current` → `target` and runs it with the commands `refuse` picks failing.
    fn run(current: &View, target: &View, refuse: impl Fn(&Op) -> bool) -> RunOutcome<String> {
        let (ops, _) = plan::plan(current, target);
        run_ops(
            &ops,
            current,
            target,
            |op| if refuse(op) { Err("refused".to_string()) } else { Ok(()) },
        )
    }

    #[test]
    fn a_refused_scheduler_does_not_hold_up_a_health_check_removal() {
        // A reload switches the service to mh, which the kernel lacks, while .11 fails its
        // check: the removal must still go through (it used to be skipped at every retry).
        let cur = view(&[("198.18.0.1:80", "rr", &[("198.18.2.10:80", 1), ("198.18.2.11:80", 1)])]);
        let want = view(&[("198.18.0.1:80", "mh", &[("198.18.2.10:80", 1)])]);
        let (done, failed, held) = run(&cur, &want, |op| matches!(op, Op::SetService(..)));
        assert_eq!(
            done,
            vec![Op::DelDest(key("198.18.0.1:80"), "198.18.2.11".parse().unwrap(), 80)]
        );
        assert_eq!(failed.keys().collect::<Vec<_>>(), [&key("198.18.0.1:80")]);
        assert!(held.is_empty(), "{held:?}");
        // Every server failing its check: the service is emptied all the same.
        let want = view(&[("198.18.0.1:80", "mh", &[])]);
        let (done, _, held) = run(&cur, &want, |op| matches!(op, Op::SetService(..)));
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(held.is_empty(), "{held:?}");
    }

    #[test]
    fn a_refused_destination_lets_the_others_through_but_never_empties_the_service() {
        let cur = view(&[("198.18.0.1:80", "rr", &[("198.18.2.10:80", 1), ("198.18.2.11:80", 1)])]);
        // .12 refused, .13 added, .10 reweighted: the removal of .11 still goes through
        // (.13 serves).
        let want = view(&[(
            "198.18.0.1:80",
            "rr",
            &[("198.18.2.10:80", 2), ("198.18.2.12:80", 1), ("198.18.2.13:80", 1)],
        )]);
        let (done, failed, held) = run(
            &cur,
            &want,
            |op| matches!(op, Op::NewDest(_, a, ..) if a.to_string() == "198.18.2.12"),
        );
        assert_eq!(done.len(), 3, "{done:?}");
        assert!(done.iter().any(|o| matches!(o, Op::DelDest(..))));
        assert_eq!(failed.len(), 1);
        assert!(held.is_empty());
        // Every server replaced and the replacement refused: the old one stays.
        let want = view(&[("198.18.0.1:80", "rr", &[("198.18.2.12:80", 1)])]);
        let (done, failed, held) = run(&cur, &want, |op| matches!(op, Op::NewDest(..)));
        assert_eq!(
            done,
            vec![Op::DelDest(key("198.18.0.1:80"), "198.18.2.10".parse().unwrap(), 80)]
        );
        assert_eq!(failed.len(), 1);
        assert!(held[&key("198.18.0.1:80")].contains("198.18.2.11:80"), "{held:?}");
        // A drained (weight 0) server is removed whatever: it serves no new connection.
        let cur = view(&[("198.18.0.1:80", "rr", &[("198.18.2.10:80", 0)])]);
        let (done, _, held) = run(&cur, &want, |op| matches!(op, Op::NewDest(..)));
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(held.is_empty());
    }

    #[test]
    fn a_virtual_server_that_cannot_be_created_keeps_the_old_one_and_gets_no_destinations() {
        let cur = view(&[("198.18.0.1:80", "rr", &[("198.18.2.10:80", 1)])]);
        let want = view(&[
            ("198.18.0.9:80", "mh", &[("198.18.2.10:80", 1)]),
            ("198.18.0.5:80", "rr", &[("198.18.2.10:80", 1)]),
        ]);
        let (done, failed, held) =
            run(&cur, &want, |op| matches!(op, Op::NewService(_, p) if p.sched == "mh"));
        // The other new service goes through, whole.
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(done.iter().all(|o| *o.service() == key("198.18.0.5:80")));
        assert_eq!(failed.keys().collect::<Vec<_>>(), [&key("198.18.0.9:80")]);
        assert!(held[&key("198.18.0.1:80")].contains("198.18.0.9:80"), "{held:?}");
        // Once it is created, the old one goes.
        let (done, failed, held) = run(&cur, &want, |_| false);
        assert!(matches!(done.last(), Some(Op::DelService(v)) if *v == key("198.18.0.1:80")));
        assert!(failed.is_empty() && held.is_empty());
    }

    #[test]
    fn the_report_of_a_partial_apply_says_what_went_through() {
        let cur = view(&[
            ("198.18.0.1:80", "rr", &[("198.18.2.10:80", 1), ("198.18.2.11:80", 1)]),
            ("198.18.0.2:80", "rr", &[("198.18.2.10:80", 1)]),
        ]);
        let want = view(&[
            ("198.18.0.1:80", "mh", &[("198.18.2.10:80", 1)]),
            ("198.18.0.2:80", "rr", &[("198.18.2.10:80", 3)]),
            ("198.18.0.3:80", "rr", &[("198.18.2.10:80", 1)]),
        ]);
        let (done, _, _) = run(&cur, &want, |op| matches!(op, Op::SetService(..)));
        let r = plan::report(&cur, &done);
        assert_eq!(r.services_added, [key("198.18.0.3:80")]);
        assert_eq!(r.services_changed, [key("198.18.0.1:80"), key("198.18.0.2:80")]);
        assert_eq!(
            (r.real_servers_added, r.real_servers_removed, r.real_servers_reweighted),
            (1, 1, 1)
        );
        // The whole plan's report is the report of all its commands.
        let (ops, whole) = plan::plan(&cur, &want);
        assert_eq!(whole, plan::report(&cur, &ops));
    }

    #[test]
    fn a_scheduler_the_kernel_lacks_is_refused_up_front() {
        let want = view(&[
            ("198.18.0.1:80", "mh", &[("198.18.2.10:80", 1)]),
            ("198.18.0.2:80", "mh", &[]),
            ("198.18.0.3:80", "rr", &[]),
        ]);
        assert!(check_schedulers(&want, |_| true).is_ok());
        let e = check_schedulers(&want, |s| s != "mh").unwrap_err().to_string();
        assert!(
            e.contains("lb_algo mh (virtual_server 198.18.0.1:80 TCP, 198.18.0.2:80 TCP)")
                && e.contains("ip_vs_mh")
                && !e.contains("rr"),
            "{e}"
        );
        // Found by review: one the running configuration has already is not the reload's
        // (its apply failed at start; every later reload was refused for it).
        let running = view(&[("198.18.0.1:80", "mh", &[]), ("198.18.0.2:80", "rr", &[])]);
        let added = added_schedulers(want, &running);
        let keys: Vec<String> = added.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["198.18.0.2:80 TCP", "198.18.0.3:80 TCP"]);
        let e = check_schedulers(&added, |s| s != "mh").unwrap_err().to_string();
        assert!(e.contains("(virtual_server 198.18.0.2:80 TCP)"), "{e}");
    }

    #[test]
    fn schedulers_are_found_in_the_module_tree() {
        let dir = std::env::temp_dir().join(format!("hlb-ipvs-modules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(module_listed(&dir, "ip_vs_mh"), None, "no lists: cannot tell");
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/lib/libcrc32c.ko.xz\n\
             kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n\
             kernel/net/netfilter/ipvs/ip_vs_wrr.ko.zst: kernel/net/netfilter/ipvs/ip_vs.ko.zst\n",
        )
        .unwrap();
        assert_eq!(module_listed(&dir, "ip_vs_rr"), Some(true));
        assert_eq!(module_listed(&dir, "ip_vs_wrr"), Some(true));
        assert_eq!(module_listed(&dir, "ip_vs_mh"), Some(false));
        assert_eq!(module_listed(&dir, "ip_vs_r"), Some(false));
        std::fs::write(dir.join("modules.builtin"), "kernel/net/netfilter/ipvs/ip_vs_mh.ko\n")
            .unwrap();
        assert_eq!(module_listed(&dir, "ip_vs_mh"), Some(true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ledger_round_trips_and_skips_junk() {
        let dir = std::env::temp_dir().join(format!("hlb-ipvs-ledger-{}", std::process::id()));
        let path = dir.join("sub").join("ipvs-services");
        let keys: BTreeSet<VirtualServerKey> = [
            VirtualServerKey {
                address: "198.18.0.1".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            VirtualServerKey {
                address: "fd48:4c42::1".parse().unwrap(),
                port: 53,
                protocol: Protocol::Udp,
            },
        ]
        .into();
        write_ledger(&path, &keys).unwrap();
        assert_eq!(read_ledger(&path).unwrap(), keys);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("garbage line\n\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(read_ledger(&path).unwrap(), keys);
        assert!(read_ledger(&dir.join("absent")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_control_socket_has_its_own_ledger_and_the_host_one_is_taken_over_once() {
        let a = ledger_path(Path::new("/run/ha-lb/ha-lb.sock"));
        assert_eq!(a, Path::new("/run/ha-lb/ha-lb.ipvs"));
        let b = ledger_path(Path::new("/run/ha-lb/blue.sock"));
        assert_ne!(a, b, "two daemons, two ledgers");
        assert_eq!(ledger_path(Path::new("/x/s.ipvs")), Path::new("/x/s.ipvs.ledger"));

        let dir = std::env::temp_dir().join(format!("hlb-ipvs-migrate-{}", std::process::id()));
        let legacy = dir.join("ipvs-services");
        let keys: BTreeSet<VirtualServerKey> = [key("198.18.0.1:80")].into();
        write_ledger(&legacy, &keys).unwrap();
        write_sync_marker(
            &sync_marker_path(&legacy),
            &SyncDaemon { master: true, interface: "eth1".into(), sync_id: 7 },
        )
        .unwrap();
        let mine = dir.join("d1").join("ha-lb.ipvs");
        assert!(migrate_ledger(&legacy, &mine));
        assert_eq!(read_ledger(&mine).unwrap(), keys);
        assert_eq!(
            read_sync_marker(&sync_marker_path(&mine)).as_deref(),
            Some("master on eth1, id 7")
        );
        assert!(!legacy.exists() && !sync_marker_path(&legacy).exists());
        // Once only: a second daemon finds nothing to take, and an existing ledger wins.
        assert!(!migrate_ledger(&legacy, &dir.join("d2").join("ha-lb.ipvs")));
        write_ledger(&legacy, &BTreeSet::new()).unwrap();
        assert!(!migrate_ledger(&legacy, &mine));
        assert_eq!(read_ledger(&mine).unwrap(), keys);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sync_marker_beside_the_ledger() {
        let dir = std::env::temp_dir().join(format!("hlb-ipvs-sync-{}", std::process::id()));
        let m = sync_marker_path(&dir.join("run").join("ipvs-services"));
        assert_eq!(m, dir.join("run").join("ipvs-services.sync"));
        assert_eq!(read_sync_marker(&m), None);
        let w = SyncDaemon { master: true, interface: "eth1".into(), sync_id: 52 };
        write_sync_marker(&m, &w).unwrap();
        assert_eq!(read_sync_marker(&m).as_deref(), Some("master on eth1, id 52"));
        remove_sync_marker(&m);
        remove_sync_marker(&m);
        assert_eq!(read_sync_marker(&m), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
