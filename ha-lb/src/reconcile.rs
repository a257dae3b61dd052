//! The reconciler: the one owner of desired data-plane state.
//!
//! Inputs: the configuration, health results per real server, and VRRP states. Output: the
//! set of virtual servers with the real servers (and weights) that should take traffic now.
//! Pure: the daemon feeds events in and hands [`Reconciler::desired`] to the data plane,
//! which applies the difference.
//!
//! keepalived semantics, per virtual server:
//! - a real server without a check is always up; with a check it starts up, or down when the
//!   virtual server has `alpha` set, until its checker reports;
//! - a down real server leaves the pool, or stays with weight 0 (`inhibit_on_failure`: its
//!   established connections drain, it gets no new ones);
//! - `misc_dynamic` checks may change a server's weight;
//! - quorum: the service has quorum while the weight of live real servers is ≥ `quorum −
//!   hysteresis`, regains it at ≥ `quorum + hysteresis` (a flap dampener). While quorum is
//!   lost and a `sorry_server` is configured, the real servers leave the pool and the
//!   sorry server takes all traffic — except those with `inhibit_on_failure`, which stay at
//!   weight 0 (keepalived's `perform_quorum_state` removes the alive servers, and removing
//!   an inhibited one sets its weight to 0), so their connections drain; without one, the
//!   remaining servers keep serving.
//!
//! Services are programmed on every director whatever its VRRP state, as keepalived does
//! with IPVS: the VIP only reaches the master, and a director that still receives traffic
//! for a VIP during an ARP transition forwards it rather than dropping it. VRRP states are
//! tracked here for status and so that the order of a takeover is decided in one place.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use crate::{
    config::model::{CheckOwner, Config, LbAlgo, LbKind, Script, VirtualServer, VirtualServerKey},
    dataplane::{DesiredState, RealServerSpec, ServiceSpec},
};

/// A real server's health as the reconciler knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    /// Weight from a `misc_dynamic` check, replacing the configured one.
    pub dynamic_weight: Option<u32>,
    /// True until a checker has reported a change. (Checkers report changes only, so a
    /// server that starts up and passes is never reported: status shows the start state,
    /// `up`, or `down` with `alpha` — `unchecked` is for servers without a check.)
    pub initial: bool,
    /// While down by a checker's verdict: the check result that took it down (the
    /// checker's `HealthEvent::reason`, e.g. `HTTP status 200 on /health not in 204`).
    pub reason: Option<String>,
}

/// One real server in the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRealServer {
    pub addr: SocketAddr,
    /// 0 = drain (inhibited or weight 0): keep established flows, schedule no new ones.
    pub weight: u32,
    pub sorry_server: bool,
}

/// One virtual server in the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub key: VirtualServerKey,
    pub lb_algo: LbAlgo,
    pub lb_kind: LbKind,
    pub persistence_timeout: Option<Duration>,
    pub persistence_granularity: Option<u8>,
    /// `sh-port` / `mh-port`.
    pub hash_port: bool,
    /// Real servers that take traffic (or drain), in configuration order.
    pub real_servers: Vec<DesiredRealServer>,
    /// How many real servers the configuration lists, whatever their health.
    pub configured_real_servers: usize,
    pub quorum_up: bool,
}

impl DesiredService {
    pub fn sorry_active(&self) -> bool {
        self.real_servers.iter().any(|r| r.sorry_server)
    }
}

/// What changed in quorum, for `quorum_up` / `quorum_down` scripts and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumChange {
    pub key: VirtualServerKey,
    pub up: bool,
    pub live_weight: u64,
    /// The virtual server's `quorum_up` or `quorum_down` to run (for one a reload removed,
    /// its last configuration's).
    pub script: Option<Script>,
}

impl QuorumChange {
    fn of(vs: &VirtualServer, up: bool, live_weight: u64) -> QuorumChange {
        let script = if up { vs.quorum_up.clone() } else { vs.quorum_down.clone() };
        QuorumChange { key: vs.key(), up, live_weight, script }
    }
}

#[derive(Debug, Clone)]
pub struct Reconciler {
    config: Arc<Config>,
    health: BTreeMap<(VirtualServerKey, SocketAddr), Health>,
    quorum_up: BTreeMap<VirtualServerKey, bool>,
    /// Quorum notices from the last [`Self::set_config`], reported by the next
    /// [`Self::desired`] before its own transitions.
    pending: Vec<QuorumChange>,
}

fn initial_health(vs: &VirtualServer, has_check: bool) -> Health {
    Health { up: !(has_check && vs.alpha), dynamic_weight: None, initial: has_check, reason: None }
}

impl Reconciler {
    pub fn new(config: Arc<Config>) -> Self {
        let mut r = Reconciler {
            config: Arc::new(Config::default()),
            health: BTreeMap::new(),
            quorum_up: BTreeMap::new(),
            pending: Vec::new(),
        };
        r.set_config(config);
        r
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Replaces the configuration. Health and quorum state of virtual/real servers that
    /// still exist are kept (a reload must not flap them); new ones start as keepalived
    /// starts them; removed ones are forgotten.
    ///
    /// A virtual server that starts (at start-up, or added by a reload) below quorum with a
    /// `sorry_server`, or gets a new sorry server while below quorum, is reported by the
    /// next [`Self::desired`] as a quorum loss: keepalived's `update_quorum_state(vs,
    /// init)` logs "Starting with quorum down" and runs `quorum_down` as it puts the sorry
    /// server in. Without a sorry server it says nothing (neither does keepalived), and a
    /// later `quorum_up` is the first notice.
    ///
    /// A virtual server the reload removes while it has quorum loses it (reported likewise,
    /// with its old `quorum_down`): keepalived's reload clears its real servers and runs
    /// `quorum_down` (`clear_service_vs` → `update_vs_notifies`, not stopping). Nothing of
    /// the kind happens when the daemon stops: keepalived notifies then only with `omega`.
    pub fn set_config(&mut self, config: Arc<Config>) {
        let mut health = BTreeMap::new();
        let mut quorum = BTreeMap::new();
        // A group's virtual_server is one to keepalived: its real servers are checked once,
        // by its first member (the lead), which also reports its quorum; the others mirror
        // it. A reload may change which member leads.
        let (old_leads, new_leads) = (self.config.check_leads(), config.check_leads());
        let new_owners: BTreeSet<CheckOwner> =
            config.virtual_servers.iter().map(|v| config.check_owner(&v.key())).collect();
        // By whose checks (and quorum) they were: for a member a reload adds, or a new lead.
        let mut old_checked: BTreeMap<(CheckOwner, SocketAddr), Health> = BTreeMap::new();
        // Quorum state and sorry server, by owner.
        let mut old_quorum: BTreeMap<CheckOwner, (bool, Option<SocketAddr>)> = BTreeMap::new();
        for vs in self.config.virtual_servers.iter().filter(|v| old_leads.contains(&v.key())) {
            let owner = self.config.check_owner(&vs.key());
            // Only for its script: without one there is nothing to tell (and "quorum lost"
            // in the log for every virtual server a reload removes would be noise). A group
            // that is still there has not lost it, whichever member leads now.
            let change = QuorumChange::of(vs, false, 0);
            if config.virtual_server(&vs.key()).is_none()
                && !new_owners.contains(&owner)
                && self.quorum_up.get(&vs.key()) == Some(&true)
                && change.script.is_some()
            {
                self.pending.push(change);
            }
            let q = self.quorum_up.get(&vs.key()).copied().unwrap_or(true);
            old_quorum.insert(owner.clone(), (q, vs.sorry_server));
            for rs in vs.real_servers.iter().filter(|rs| rs.check.is_some()) {
                if let Some(h) = self.health.get(&(vs.key(), rs.key())) {
                    old_checked.insert((owner.clone(), rs.key()), h.clone());
                }
            }
        }
        for vs in &config.virtual_servers {
            let key = vs.key();
            let lead = config.check_lead(&key);
            let owner = config.check_owner(&key);
            for rs in &vs.real_servers {
                let k = (key, rs.key());
                // Its checker's state, as the checker carries it over: under the same key
                // (whatever the group is called now), else under the group's (its lead
                // changed); for a member a reload adds, the group's.
                let carried = (old_leads.contains(&lead))
                    .then(|| self.health.get(&(lead, rs.key())))
                    .flatten()
                    .filter(|_| {
                        self.config.virtual_server(&lead).is_some_and(|v| {
                            v.real_server(rs.key()).is_some_and(|r| r.check.is_some())
                        })
                    })
                    .or_else(|| old_checked.get(&(owner.clone(), rs.key())));
                let h = match carried {
                    // Checked before and after: the checker carries its state over the
                    // reload (changed or not), and so does this.
                    Some(h) if rs.check.is_some() => Health {
                        // A weight only a misc_dynamic check gives (and keeps giving).
                        dynamic_weight: h
                            .dynamic_weight
                            .filter(|_| rs.check.as_ref().is_some_and(|c| c.is_dynamic())),
                        ..h.clone()
                    },
                    // A check added by the reload starts where its checker starts (with
                    // alpha: down until it passes); a check removed leaves the server up, as
                    // any unchecked one (no checker is left to bring it back).
                    _ => initial_health(vs, rs.check.is_some()),
                };
                health.insert(k, h);
            }
            let live = live_weight(vs, &health);
            let regain = live >= vs.quorum as u64 + vs.hysteresis as u64;
            // A member a reload adds to a group takes the group's quorum state (and sorry
            // server).
            let group_was = (matches!(owner, CheckOwner::Group(..)))
                .then(|| old_quorum.get(&owner).copied())
                .flatten();
            let was = self.quorum_up.get(&key).copied().or(group_was.map(|(q, _)| q));
            let q = was.unwrap_or(regain);
            // The sorry server is in the pool already only if quorum was down before with
            // this same sorry server; a quorum regained right away is desired()'s to tell.
            let old_sorry = match self.config.virtual_server(&key) {
                Some(v) => v.sorry_server,
                None => group_was.and_then(|(_, s)| s),
            };
            let sorry_in_pool = was == Some(false) && old_sorry == vs.sorry_server;
            if !q
                && !regain
                && vs.sorry_server.is_some()
                && !sorry_in_pool
                && new_leads.contains(&key)
            {
                self.pending.push(QuorumChange::of(vs, false, live));
            }
            quorum.insert(key, q);
        }
        self.health = health;
        self.quorum_up = quorum;
        self.config = config;
    }

    /// A checker's verdict, with the check result that caused it (`reason`, kept while the
    /// server is down, for status). Returns false when nothing that decides the desired
    /// state changed (a new reason alone does not), or when the verdict no longer applies:
    /// the server is unknown or has no check (a reload removed it, or its check, while the
    /// result was in flight — no checker would ever correct it). A weight from a check that
    /// is no longer `misc_dynamic` is ignored likewise.
    pub fn on_health(
        &mut self,
        vs: &VirtualServerKey,
        rs: SocketAddr,
        up: bool,
        dynamic_weight: Option<u32>,
        reason: &str,
    ) -> bool {
        let Some(check) = self
            .config
            .virtual_server(vs)
            .and_then(|v| v.real_servers.iter().find(|r| r.key() == rs))
            .and_then(|r| r.check.as_ref())
        else {
            return false;
        };
        let dynamic_weight = dynamic_weight.filter(|_| check.is_dynamic());
        let reason = (!up).then(|| reason.to_string());
        let new = Health { up, dynamic_weight, initial: false, reason };
        // A group's real servers are checked once, for all its members.
        let mut changed = false;
        for key in self.config.check_sharers(vs) {
            if let Some(h) = self.health.get_mut(&(key, rs)) {
                changed |=
                    Health { reason: None, ..h.clone() } != Health { reason: None, ..new.clone() };
                *h = new.clone();
            }
        }
        changed
    }

    pub fn health(&self, vs: &VirtualServerKey, rs: SocketAddr) -> Option<Health> {
        self.health.get(&(*vs, rs)).cloned()
    }

    /// The desired state now, and the quorum transitions that computing it caused.
    pub fn desired(&mut self) -> (Vec<DesiredService>, Vec<QuorumChange>) {
        let config = self.config.clone();
        let leads = config.check_leads();
        let mut out = Vec::new();
        let mut changes = std::mem::take(&mut self.pending);
        for vs in &config.virtual_servers {
            let key = vs.key();
            let live = live_weight(vs, &self.health);
            let was_up = self.quorum_up.get(&key).copied().unwrap_or(true);
            let (q, h) = (vs.quorum as u64, vs.hysteresis as u64);
            let up = if was_up { live >= q.saturating_sub(h) } else { live >= q + h };
            if up != was_up && leads.contains(&key) {
                changes.push(QuorumChange::of(vs, up, live));
            }
            self.quorum_up.insert(key, up);

            let real_servers = match (up, vs.sorry_server) {
                (false, Some(sorry)) => vs
                    .real_servers
                    .iter()
                    // An inhibited server that is the sorry server too is there once, as
                    // the sorry server (a data plane takes an address once per service).
                    .filter(|rs| {
                        rs.inhibit_on_failure
                            && rs.key() != sorry
                            && self.health.contains_key(&(key, rs.key()))
                    })
                    .map(|rs| DesiredRealServer { addr: rs.key(), weight: 0, sorry_server: false })
                    .chain([DesiredRealServer { addr: sorry, weight: 1, sorry_server: true }])
                    .collect(),
                _ => vs
                    .real_servers
                    .iter()
                    .filter_map(|rs| {
                        let h = self.health.get(&(key, rs.key())).cloned()?;
                        let weight = h.dynamic_weight.unwrap_or(rs.weight);
                        match (h.up, rs.inhibit_on_failure) {
                            (true, _) => Some(DesiredRealServer {
                                addr: rs.key(),
                                weight,
                                sorry_server: false,
                            }),
                            (false, true) => Some(DesiredRealServer {
                                addr: rs.key(),
                                weight: 0,
                                sorry_server: false,
                            }),
                            (false, false) => None,
                        }
                    })
                    .collect(),
            };
            out.push(DesiredService {
                key,
                lb_algo: vs.lb_algo,
                lb_kind: vs.lb_kind,
                persistence_timeout: vs.persistence_timeout,
                persistence_granularity: vs.persistence_granularity,
                hash_port: vs.hash_port,
                real_servers,
                configured_real_servers: vs.real_servers.len(),
                quorum_up: up,
            });
        }
        (out, changes)
    }
}

/// The data plane's view of the desired services.
pub fn to_dataplane(desired: &[DesiredService]) -> DesiredState {
    let mut out = DesiredState::default();
    for d in desired {
        let mut spec = ServiceSpec::new(d.lb_algo, d.lb_kind);
        spec.persistence_timeout =
            d.persistence_timeout.map(|t| t.as_secs().min(u32::MAX as u64) as u32).unwrap_or(0);
        spec.persistence_granularity = d.persistence_granularity.unwrap_or(0);
        spec.hash_port = d.hash_port;
        spec.configured_real_servers = d.configured_real_servers;
        spec.real_servers = d
            .real_servers
            .iter()
            .map(|r| RealServerSpec { addr: r.addr.ip(), port: r.addr.port(), weight: r.weight })
            .collect();
        out.services.insert(d.key, spec);
    }
    out
}

fn live_weight(
    vs: &VirtualServer,
    health: &BTreeMap<(VirtualServerKey, SocketAddr), Health>,
) -> u64 {
    let key = vs.key();
    vs.real_servers
        .iter()
        .filter_map(|rs| {
            let h = health.get(&(key, rs.key()))?;
            h.up.then(|| h.dynamic_weight.unwrap_or(rs.weight) as u64)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// The TCP_CHECK of real servers 11 and 12 in [`cfg_text`].
    const CHECK: &str = "[virtual_server.real_server.TCP_CHECK]\nconnect_timeout = 1\n";
    /// A misc_dynamic MISC_CHECK (its exit status gives the weight), to put in its place.
    const DYNAMIC: &str =
        "[virtual_server.real_server.MISC_CHECK]\nmisc_path = \"/bin/true\"\nmisc_dynamic = true\n";

    fn cfg(extra_vs: &str) -> Arc<Config> {
        parse(&cfg_text(extra_vs))
    }

    /// Virtual servers alone: on kernel IPVS (the eBPF planes go on VRRP instances' links).
    fn parse(text: &str) -> Arc<Config> {
        let text = format!("[global]\ndataplane = \"ipvs\"\n{text}");
        Arc::new(
            config::parse_str(&text, std::path::Path::new("test.toml"))
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    fn cfg_text(extra_vs: &str) -> String {
        format!(
            r#"
[[virtual_server]]
address = "198.18.0.100"
port = 80
lb_algo = "wrr"
lb_kind = "NAT"
{extra_vs}

[[virtual_server.real_server]]
address = "198.19.0.11"
port = 80
weight = 3
[virtual_server.real_server.TCP_CHECK]
connect_timeout = 1

[[virtual_server.real_server]]
address = "198.19.0.12"
port = 80
weight = 2
inhibit_on_failure = true
[virtual_server.real_server.TCP_CHECK]
connect_timeout = 1

[[virtual_server.real_server]]
address = "198.19.0.13"
port = 80
weight = 1
"#
        )
    }

    fn rs(n: u8) -> SocketAddr {
        format!("198.19.0.{n}:80").parse().unwrap()
    }

    fn weights(d: &[DesiredService]) -> Vec<(SocketAddr, u32)> {
        d[0].real_servers.iter().map(|r| (r.addr, r.weight)).collect()
    }

    /// The check result that took a server down stays with it (for status) until it is up;
    /// a new reason alone changes nothing in the data plane.
    #[test]
    fn a_down_server_keeps_the_reason_until_up() {
        let c = parse(&cfg_text(""));
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        assert_eq!(r.health(&key, rs(11)).unwrap().reason, None);
        assert!(r.on_health(&key, rs(11), false, None, "connection refused"));
        assert_eq!(r.health(&key, rs(11)).unwrap().reason.as_deref(), Some("connection refused"));
        assert!(!r.on_health(&key, rs(11), false, None, "timed out"), "not a change");
        assert_eq!(r.health(&key, rs(11)).unwrap().reason.as_deref(), Some("timed out"));
        assert!(r.on_health(&key, rs(11), true, None, "HTTP status 200"));
        assert_eq!(r.health(&key, rs(11)).unwrap().reason, None);
    }

    #[test]
    fn down_servers_leave_or_drain() {
        // 12 checked by a misc_dynamic MISC_CHECK (its exit status gives its weight).
        let text = cfg_text("");
        let at = text.match_indices(CHECK).nth(1).unwrap().0;
        let c = parse(&format!("{}{DYNAMIC}{}", &text[..at], &text[at + CHECK.len()..]));
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        assert_eq!(weights(&r.desired().0), vec![(rs(11), 3), (rs(12), 2), (rs(13), 1)]);
        assert!(r.on_health(&key, rs(11), false, None, ""));
        assert!(!r.on_health(&key, rs(11), false, None, ""), "no change, no event");
        r.on_health(&key, rs(12), false, None, "");
        assert_eq!(
            weights(&r.desired().0),
            vec![(rs(12), 0), (rs(13), 1)],
            "12 inhibited: drains at weight 0"
        );
        r.on_health(&key, rs(11), true, None, "");
        r.on_health(&key, rs(12), true, Some(7), "");
        assert_eq!(
            weights(&r.desired().0),
            vec![(rs(11), 3), (rs(12), 7), (rs(13), 1)],
            "misc_dynamic weight"
        );
        // A weight from a check that is not misc_dynamic (a stale event) is not taken.
        r.on_health(&key, rs(11), true, Some(9), "");
        assert_eq!(weights(&r.desired().0)[0], (rs(11), 3));
    }

    /// Found by review: a result still in flight when a reload removed the server's check
    /// took the (now unchecked) server out of the pool, and no checker was left to bring it
    /// back; a misc_dynamic weight outlived its check when the reload replaced it.
    #[test]
    fn stale_results_after_a_reload_are_ignored() {
        let c = cfg("");
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        r.set_config(parse(&cfg_text("").replacen(CHECK, "", 1)));
        assert!(!r.on_health(&key, rs(11), false, None, ""), "11 has no check any more");
        assert_eq!(weights(&r.desired().0)[0], (rs(11), 3));

        let mut r = Reconciler::new(parse(&cfg_text("").replacen(CHECK, DYNAMIC, 1)));
        r.on_health(&key, rs(11), true, Some(0), "");
        assert_eq!(weights(&r.desired().0)[0], (rs(11), 0), "exit 2: weight 0");
        // The operator replaces the MISC_CHECK by a TCP_CHECK: the configured weight again.
        r.set_config(cfg(""));
        assert_eq!(weights(&r.desired().0)[0], (rs(11), 3));
    }

    #[test]
    fn quorum_with_hysteresis_and_sorry_server() {
        let c = cfg(
            "quorum = 4\nhysteresis = 1\nsorry_server = { address = \"198.19.0.99\", port = 80 }",
        );
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        let (d, ch) = r.desired();
        assert!(d[0].quorum_up && ch.is_empty(), "live 6 ≥ 4+1 at start");
        r.on_health(&key, rs(12), false, None, ""); // live 4 ≥ 4−1: still up
        assert!(r.desired().0[0].quorum_up);
        r.on_health(&key, rs(11), false, None, ""); // live 1 < 3: lost
        let (d, ch) = r.desired();
        assert_eq!(ch, vec![QuorumChange { key, up: false, live_weight: 1, script: None }]);
        assert!(d[0].sorry_active());
        assert_eq!(
            weights(&d),
            vec![(rs(12), 0), ("198.19.0.99:80".parse().unwrap(), 1)],
            "12 (inhibit_on_failure) drains at weight 0"
        );
        r.on_health(&key, rs(11), true, None, ""); // live 4 < 4+1: not yet regained
        assert!(!r.desired().0[0].quorum_up);
        r.on_health(&key, rs(12), true, None, ""); // live 6 ≥ 5
        let (d, ch) = r.desired();
        assert!(ch[0].up && !d[0].sorry_active());
        assert_eq!(d[0].real_servers.len(), 3);
    }

    /// Found by review: while the sorry server was active, inhibited (inhibit_on_failure)
    /// real servers left the pool with the others, cutting their draining connections.
    /// keepalived's perform_quorum_state removes the alive servers only, and removing an
    /// inhibited one is a weight of 0: every inhibited server stays at weight 0.
    #[test]
    fn inhibited_servers_stay_at_weight_0_behind_the_sorry_server() {
        let sorry: SocketAddr = "198.19.0.99:80".parse().unwrap();
        let c = cfg("quorum = 5
sorry_server = { address = \"198.19.0.99\", port = 80 }");
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        r.on_health(&key, rs(11), false, None, ""); // live 3 < 5: lost, 12 alive
        let (d, _) = r.desired();
        assert!(d[0].sorry_active());
        assert_eq!(weights(&d), vec![(rs(12), 0), (sorry, 1)], "alive and inhibited: 0");
        r.on_health(&key, rs(12), false, None, "");
        assert_eq!(weights(&r.desired().0), vec![(rs(12), 0), (sorry, 1)], "down and inhibited");
        r.on_health(&key, rs(11), true, None, "");
        r.on_health(&key, rs(12), true, None, ""); // live 6: regained
        assert_eq!(weights(&r.desired().0), vec![(rs(11), 3), (rs(12), 2), (rs(13), 1)]);
    }

    #[test]
    fn without_sorry_server_the_pool_keeps_serving_below_quorum() {
        let c = cfg("quorum = 5");
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        r.on_health(&key, rs(11), false, None, "");
        let (d, ch) = r.desired();
        assert_eq!(ch.len(), 1);
        assert!(!d[0].quorum_up);
        assert_eq!(weights(&d), vec![(rs(12), 2), (rs(13), 1)]);
    }

    #[test]
    fn reload_keeps_health_of_surviving_servers() {
        let c = cfg("");
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        r.on_health(&key, rs(11), false, None, "");
        r.set_config(cfg("persistence_timeout = 60"));
        let (d, _) = r.desired();
        assert_eq!(d[0].persistence_timeout, Some(Duration::from_secs(60)));
        assert_eq!(weights(&d), vec![(rs(12), 2), (rs(13), 1)], "11 stays down across the reload");
    }

    /// A reload that removes a down server's check puts it back in the pool (no checker is
    /// left to do it); one that adds a check to a server of an `alpha` service takes it out
    /// until the new checker passes it (the checker starts it down and reports changes only).
    #[test]
    fn reload_that_adds_or_removes_a_check_starts_the_server_afresh() {
        let c = cfg("");
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        r.on_health(&key, rs(11), false, None, "");
        r.set_config(parse(&cfg_text("").replacen(CHECK, "", 1)));
        assert_eq!(weights(&r.desired().0), vec![(rs(11), 3), (rs(12), 2), (rs(13), 1)]);

        let mut r = Reconciler::new(cfg("alpha = true"));
        assert_eq!(weights(&r.desired().0), vec![(rs(12), 0), (rs(13), 1)], "13: unchecked");
        let with_check =
            cfg_text("alpha = true").replace("weight = 1\n", &format!("weight = 1\n{CHECK}"));
        r.set_config(parse(&with_check));
        assert_eq!(weights(&r.desired().0), vec![(rs(12), 0)], "13 waits for its new check");
    }

    /// Found by review: a virtual server starting below quorum with a sorry server never
    /// ran quorum_down (and its later quorum_up came with no quorum_down before it).
    /// keepalived's update_quorum_state(vs, init) logs "Starting with quorum down" and runs
    /// quorum_down when it puts the sorry server in; without a sorry server it is silent.
    #[test]
    fn starting_below_quorum_with_a_sorry_server_is_a_quorum_loss() {
        let sorry = "sorry_server = { address = \"198.19.0.99\", port = 80 }";
        let c = cfg(&format!("alpha = true\nquorum = 3\n{sorry}"));
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c.clone());
        let (d, ch) = r.desired();
        assert_eq!(
            ch,
            vec![QuorumChange { key, up: false, live_weight: 1, script: None }],
            "13 alone is up"
        );
        assert!(d[0].sorry_active());
        assert!(r.desired().1.is_empty(), "once");
        // A reload that keeps it (and its sorry server): nothing new.
        r.set_config(c.clone());
        assert!(r.desired().1.is_empty());
        // A new sorry server while below quorum goes in the pool: told again, as keepalived.
        r.set_config(cfg(&format!("alpha = true\nquorum = 3\n{sorry}").replace(".99", ".98")));
        assert_eq!(
            r.desired().1,
            vec![QuorumChange { key, up: false, live_weight: 1, script: None }]
        );
        r.on_health(&key, rs(11), true, None, "");
        assert_eq!(
            r.desired().1,
            vec![QuorumChange { key, up: true, live_weight: 4, script: None }]
        );

        // Added by a reload: the same.
        let mut r = Reconciler::new(Arc::new(Config::default()));
        r.set_config(c);
        assert_eq!(
            r.desired().1,
            vec![QuorumChange { key, up: false, live_weight: 1, script: None }]
        );
        // Without a sorry server, silence until quorum is gained.
        let mut r = Reconciler::new(cfg("alpha = true\nquorum = 3"));
        assert!(r.desired().1.is_empty());
        // Above quorum at start: silence too.
        let mut r = Reconciler::new(cfg(&format!("quorum = 3\n{sorry}")));
        assert!(r.desired().1.is_empty());
    }

    /// Found by review: a reload that removed a virtual server ran no quorum_down.
    /// keepalived's reload (clear_service_vs → update_vs_notifies, not stopping) runs it for
    /// a removed virtual server whose quorum was up, with its old script.
    #[test]
    fn a_reload_removing_a_service_with_quorum_runs_its_quorum_down() {
        let down = Script { argv: vec!["/bin/echo".into(), "down".into()] };
        let c = cfg("quorum = 2\nquorum_down = \"/bin/echo down\"");
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c.clone());
        assert!(r.desired().1.is_empty());
        r.set_config(Arc::new(Config::default()));
        let (d, ch) = r.desired();
        assert!(d.is_empty());
        assert_eq!(ch, vec![QuorumChange { key, up: false, live_weight: 0, script: Some(down) }]);
        // One whose quorum was lost already: nothing more.
        let mut r = Reconciler::new(c);
        r.on_health(&key, rs(11), false, None, "");
        r.on_health(&key, rs(12), false, None, "");
        assert!(!r.desired().1[0].up);
        r.set_config(Arc::new(Config::default()));
        assert!(r.desired().1.is_empty());
        // Without a quorum_down there is nothing to tell (no "quorum lost" in the log).
        let mut r = Reconciler::new(cfg("quorum = 2"));
        assert!(r.desired().1.is_empty());
        r.set_config(Arc::new(Config::default()));
        assert!(r.desired().1.is_empty());
    }

    #[test]
    fn alpha_starts_checked_servers_down() {
        let c = cfg("alpha = true");
        let mut r = Reconciler::new(c);
        assert_eq!(weights(&r.desired().0), vec![(rs(12), 0), (rs(13), 1)]);
    }

    /// `cfg_text`'s virtual server as a group's: 198.18.0.100:80, .101:80 and .102:443.
    fn group_text(quorum_down: bool) -> String {
        let q = if quorum_down { "quorum = 6\nquorum_down = \"/bin/true\"\n" } else { "" };
        let vs = cfg_text(q).replace("address = \"198.18.0.100\"\nport = 80\n", "group = \"g\"\n");
        format!("[[virtual_server_group]]\nname = \"g\"\nmembers = [\"198.18.0.100-101 80\", \"198.18.0.102 443\"]\n{vs}")
    }

    #[test]
    fn a_group_shares_its_leads_health_and_reports_quorum_once() {
        let c = parse(&group_text(true));
        let lead = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c.clone());
        let (d, q) = r.desired();
        assert_eq!(d.len(), 3);
        assert!(q.is_empty());
        // The lead's checker speaks for every member: one quorum change, with its script.
        assert!(r.on_health(&lead, rs(11), false, None, ""));
        let (d, q) = r.desired();
        for s in &d {
            assert_eq!(
                s.real_servers.iter().map(|r| (r.addr, r.weight)).collect::<Vec<_>>(),
                [(rs(12), 2), (rs(13), 1)],
                "{}",
                s.key
            );
        }
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!((q[0].key, q[0].up), (lead, false));
        assert!(q[0].script.is_some());
        // A reload that adds a member: it takes the lead's health (its checker carries on),
        // not a fresh start that would put 11 back.
        let grown = group_text(true)
            .replace("\"198.18.0.102 443\"", "\"198.18.0.102 443\", \"198.18.0.103 80\"");
        r.set_config(parse(&grown));
        let (d, _) = r.desired();
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|s| s.real_servers.iter().all(|x| x.addr != rs(11))), "{d:?}");
        // A reload that removes the first member: the next one leads, with the same health
        // (the checker carries its checks over to it).
        let shrunk = grown.replace("198.18.0.100-101 80", "198.18.0.101 80");
        r.set_config(parse(&shrunk));
        let (d, _) = r.desired();
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|s| s.real_servers.iter().all(|x| x.addr != rs(11))), "{d:?}");
        // Only the lead is checked.
        let targets = crate::health::CheckTarget::from_config(&parse(&grown));
        assert!(targets.iter().all(|t| t.vs == lead), "{targets:?}");
        assert_eq!(targets.len(), 3);
    }

    #[test]
    fn a_sorry_server_that_is_an_inhibited_real_server_is_there_once() {
        // 12 is inhibited and the sorry server: with quorum lost it must not be there twice
        // (the data planes refuse a service with an address twice: nothing would apply).
        let c = cfg("quorum = 6\nsorry_server = { address = \"198.19.0.12\", port = 80 }\n");
        let key = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        r.on_health(&key, rs(11), false, None, "");
        let (d, _) = r.desired();
        let got: Vec<(SocketAddr, u32, bool)> =
            d[0].real_servers.iter().map(|r| (r.addr, r.weight, r.sorry_server)).collect();
        assert_eq!(got, [(rs(12), 1, true)]);
        to_dataplane(&d).validate().unwrap();
    }

    /// Found by review: reloads that change a group's members or how the virtual_server is
    /// named must not lose health, run quorum scripts, or split the group's quorum.
    #[test]
    fn group_reloads_keep_health_and_quorum_whole() {
        // The first member removed while the group has quorum: no quorum_down.
        let mut r = Reconciler::new(parse(&group_text(true)));
        assert!(r.desired().1.is_empty());
        r.set_config(parse(&group_text(true).replace("198.18.0.100-101 80", "198.18.0.101 80")));
        let (_, q) = r.desired();
        assert!(q.is_empty(), "{q:?}");

        // address = … becomes group = … (the lead's key unchanged): 11 stays down, as its
        // checker carries on without a word.
        let single = parse(&cfg_text(""));
        let key = single.virtual_servers[0].key();
        let mut r = Reconciler::new(single);
        r.on_health(&key, rs(11), false, None, "");
        for text in [
            group_text(false),
            group_text(false)
                .replace("name = \"g\"", "name = \"h\"")
                .replace("group = \"g\"", "group = \"h\""),
        ] {
            r.set_config(parse(&text));
            let (d, _) = r.desired();
            assert!(d.iter().all(|s| s.real_servers.iter().all(|x| x.addr != rs(11))), "{d:?}");
        }

        // A member added while the group is in its hysteresis band takes its quorum state,
        // and a new first member while quorum is down runs no second quorum_down.
        let band = |members: &str| {
            group_text(true)
                .replace("quorum = 6\n", "quorum = 5\nhysteresis = 1\nsorry_server = { address = \"198.19.0.99\", port = 80 }\n")
                .replace("\"198.18.0.100-101 80\", \"198.18.0.102 443\"", members)
        };
        let c = parse(&band("\"198.18.0.101 80\""));
        let lead = c.virtual_servers[0].key();
        let mut r = Reconciler::new(c);
        let _ = r.desired();
        r.on_health(&lead, rs(12), false, None, ""); // live 4 ≥ 5 - 1: kept
        r.on_health(&lead, rs(11), false, None, ""); // live 1: lost
        let (_, q) = r.desired();
        assert_eq!(q.len(), 1);
        r.on_health(&lead, rs(12), true, None, ""); // live 3 < 5 + 1: still lost
        let (_, q) = r.desired();
        assert!(q.is_empty(), "{q:?}");
        r.set_config(parse(&band("\"198.18.0.100 80\", \"198.18.0.101 80\"")));
        let (d, q) = r.desired();
        assert!(q.is_empty(), "a second quorum_down: {q:?}");
        assert!(d.iter().all(|s| !s.quorum_up && s.sorry_active()), "{d:?}");
    }
}
