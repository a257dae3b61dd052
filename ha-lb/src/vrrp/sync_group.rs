//! keepalived's `vrrp_sync_group` rules for the instances of one host, as a pure
//! coordinator: it sees each member's state changes and readiness
//! ([`Action::SyncGroupReady`](super::machine::Action::SyncGroupReady)) and answers with
//! orders for members. The daemon delivers them ([`Machine::sync_group_master`] /
//! [`Machine::sync_group_backup`]).
//!
//! The rules (FAULT is shared by the daemon's tracking, with [`group_fault`]):
//! - **MASTER together**: a member that would become MASTER waits until every other member
//!   is MASTER or would be too, then they all go. keepalived: "only sync to master if
//!   everyone wants to, i.e. prefer backup state to avoid thrashing". A node that still
//!   hears the peer's master on one link does not take the other link's VIPs.
//! - **BACKUP together**: a member that leaves MASTER for BACKUP (it lost an election) takes
//!   the other members out of MASTER; so does one that, in BACKUP, starts following a master
//!   while another member is MASTER, and a member that became MASTER while another follows
//!   a master (an order that crossed a change in flight) goes back.
//!
//! [`Machine::sync_group_master`]: super::machine::Machine::sync_group_master
//! [`Machine::sync_group_backup`]: super::machine::Machine::sync_group_backup

use std::collections::BTreeMap;

use super::machine::{Reason, State};

/// What a member is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupOrder {
    /// Every member is ready: become MASTER (if still ready).
    Master,
    /// Leave MASTER (if MASTER).
    Backup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    state: State,
    ready: bool,
    /// Ordered MASTER, not yet reported MASTER (no second order).
    ordered: bool,
}

impl Member {
    const NEW: Member = Member { state: State::Initialize, ready: false, ordered: false };

    fn in_state(state: State) -> Member {
        Member { state, ..Member::NEW }
    }

    /// BACKUP and not ready: it hears a master it follows (or its timer still runs).
    fn follows(self) -> bool {
        self.state == State::Backup && !self.ready
    }

    /// MASTER, or would be.
    fn agrees(self) -> bool {
        self.state == State::Master || (self.state == State::Backup && self.ready)
    }
}

/// The sync groups of one host and what their members last reported.
#[derive(Debug, Default)]
pub struct SyncGroups {
    /// Group name → member instance names.
    groups: BTreeMap<String, Vec<String>>,
    members: BTreeMap<String, Member>,
}

impl SyncGroups {
    /// `groups`: (name, members). Members start in INIT, not ready.
    pub fn new<'a>(groups: impl IntoIterator<Item = (&'a str, &'a [String])>) -> SyncGroups {
        let mut g = SyncGroups::default();
        g.reconfigure(groups);
        g
    }

    /// A reload: new groups; members that stay keep what they last reported. Returns the
    /// orders for groups that agree now (a member that held its group back left it).
    pub fn reconfigure<'a>(
        &mut self,
        groups: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Vec<(String, GroupOrder)> {
        self.groups = groups.into_iter().map(|(n, m)| (n.to_string(), m.to_vec())).collect();
        let old = std::mem::take(&mut self.members);
        for m in self.groups.values().flatten() {
            self.members.insert(m.clone(), old.get(m).copied().unwrap_or(Member::NEW));
        }
        let names: Vec<Vec<String>> = self.groups.values().cloned().collect();
        names.iter().flat_map(|g| self.release(g)).collect()
    }

    /// When every member of `group` is MASTER or ready: orders the ready ones MASTER (once).
    fn release(&mut self, group: &[String]) -> Vec<(String, GroupOrder)> {
        if !group.iter().all(|m| self.member(m).agrees()) {
            return Vec::new();
        }
        let mut v = Vec::new();
        for m in group {
            let mut me = self.member(m);
            if me.state == State::Backup && me.ready && !me.ordered {
                me.ordered = true;
                self.members.insert(m.clone(), me);
                v.push((m.clone(), GroupOrder::Master));
            }
        }
        v
    }

    /// The group `instance` is in: its name and its members, `instance` included.
    fn group_of(&self, instance: &str) -> Option<(String, Vec<String>)> {
        let (g, m) = self.groups.iter().find(|(_, m)| m.iter().any(|m| m == instance))?;
        Some((g.clone(), m.clone()))
    }

    fn member(&self, name: &str) -> Member {
        self.members.get(name).copied().unwrap_or(Member::NEW)
    }

    /// Orders `order` to each of `names` in `state`.
    fn orders(
        &self,
        names: &[String],
        state: State,
        order: GroupOrder,
    ) -> Vec<(String, GroupOrder)> {
        names.iter().filter(|n| self.member(n).state == state).map(|n| (n.clone(), order)).collect()
    }

    /// A member changed state. Any change ends its readiness.
    pub fn on_state(
        &mut self,
        instance: &str,
        from: State,
        to: State,
        reason: &Reason,
    ) -> Vec<(String, GroupOrder)> {
        let Some((_, group)) = self.group_of(instance) else {
            return Vec::new();
        };
        let others = without(&group, instance);
        self.members.insert(instance.to_string(), Member::in_state(to));
        // (A member ordered out, reason SyncGroup, was ordered with all the others.)
        if from == State::Master && to == State::Backup && *reason != Reason::SyncGroup {
            return self.orders(&others, State::Master, GroupOrder::Backup);
        }
        if to != State::Master {
            return Vec::new();
        }
        // The address owner is MASTER from the start, by definition; anything else went
        // through the group, unless an order crossed a member's change.
        if *reason != Reason::AddressOwner && others.iter().any(|o| self.member(o).follows()) {
            return vec![(instance.to_string(), GroupOrder::Backup)];
        }
        // Ready members may have been waiting for this one (an address owner that started
        // late).
        self.release(&group)
    }

    /// A member (in BACKUP) became ready to be MASTER, or no longer is.
    pub fn on_ready(&mut self, instance: &str, ready: bool) -> Vec<(String, GroupOrder)> {
        let Some((_, group)) = self.group_of(instance) else {
            // In no group (any more): its own group, always agreed.
            return if ready {
                vec![(instance.to_string(), GroupOrder::Master)]
            } else {
                Vec::new()
            };
        };
        let state = self.member(instance).state;
        self.members.insert(instance.to_string(), Member { ready, ..Member::in_state(state) });
        if !ready {
            // It follows a master now: nobody in the group may stay MASTER.
            return self.orders(&without(&group, instance), State::Master, GroupOrder::Backup);
        }
        self.release(&group)
    }

    /// For status and logs: the group of a ready `instance` and the members it waits for
    /// (neither MASTER nor ready). `None` when it is not ready or not in a group.
    pub fn waiting_for(&self, instance: &str) -> Option<(String, Vec<String>)> {
        if !self.member(instance).ready {
            return None;
        }
        let (name, group) = self.group_of(instance)?;
        let mut others = without(&group, instance);
        others.retain(|o| !self.member(o).agrees());
        Some((name, others))
    }
}

/// keepalived's FAULT for a sync group: the group is in FAULT while any member is, and a
/// member that cannot run (its start failed: interface missing, no address to send from,
/// socket not opened; the daemon retries it) counts as in FAULT, as keepalived starts such an
/// instance in FAULT. Otherwise the other members would wait for it for ever, BACKUP and
/// ready, and hold no VIP even when the peer node dies, with nothing in FAULT to say why.
/// Returns why the group is in FAULT (naming those members), or `None`.
pub fn group_fault(
    group: &[String],
    in_fault: impl Fn(&str) -> bool,
    cannot_start: impl Fn(&str) -> bool,
) -> Option<String> {
    let names = |f: &dyn Fn(&str) -> bool| -> Vec<&str> {
        group.iter().map(String::as_str).filter(|m| f(m)).collect()
    };
    let (failed, faulty) = (names(&cannot_start), names(&in_fault));
    let mut why = Vec::new();
    if !failed.is_empty() {
        why.push(format!("{} cannot start", failed.join(",")));
    }
    if !faulty.is_empty() {
        why.push(format!("{} in FAULT", faulty.join(",")));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// `group`'s members other than `instance`.
fn without(group: &[String], instance: &str) -> Vec<String> {
    group.iter().filter(|m| *m != instance).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use GroupOrder::{Backup as B, Master as M};
    use State::{Backup, Fault, Initialize, Master};

    fn two() -> SyncGroups {
        let members = ["pub".to_string(), "gw".to_string()];
        let mut g = SyncGroups::new([("director", &members[..])]);
        for m in ["pub", "gw"] {
            assert!(g.on_state(m, Initialize, Backup, &Reason::Startup).is_empty());
        }
        g
    }

    fn o(v: &[(&str, GroupOrder)]) -> Vec<(String, GroupOrder)> {
        v.iter().map(|(n, o)| (n.to_string(), *o)).collect()
    }

    #[test]
    fn master_only_when_every_member_is_ready() {
        let mut g = two();
        assert!(g.on_ready("gw", true).is_empty(), "pub still follows a master");
        assert_eq!(g.waiting_for("gw"), Some(("director".into(), vec!["pub".into()])));
        assert_eq!(g.waiting_for("pub"), None);
        assert_eq!(g.on_ready("pub", true), o(&[("pub", M), ("gw", M)]));
        // They go MASTER one after the other: no member follows a master meanwhile.
        assert!(g.on_state("gw", Backup, Master, &Reason::MasterDown).is_empty());
        assert!(g.on_state("pub", Backup, Master, &Reason::MasterDown).is_empty());
    }

    #[test]
    fn a_member_that_stops_being_ready_holds_the_group() {
        let mut g = two();
        assert!(g.on_ready("gw", true).is_empty());
        assert!(g.on_ready("gw", false).is_empty(), "nobody is MASTER: nothing to undo");
        assert!(g.on_ready("pub", true).is_empty(), "gw follows a master again");
    }

    #[test]
    fn a_member_that_loses_an_election_takes_the_others_to_backup() {
        let mut g = two();
        g.on_ready("gw", true);
        g.on_ready("pub", true);
        g.on_state("gw", Backup, Master, &Reason::MasterDown);
        g.on_state("pub", Backup, Master, &Reason::MasterDown);
        let higher = Reason::HigherPriority { from: "198.18.0.2".parse().unwrap(), priority: 200 };
        assert_eq!(g.on_state("pub", Master, Backup, &higher), o(&[("gw", B)]));
        // gw obeys; nobody is left to order.
        assert!(g.on_state("gw", Master, Backup, &Reason::SyncGroup).is_empty());
        // gw, now without a master on its link, is ready; pub follows the peer: held.
        assert!(g.on_ready("gw", true).is_empty());
    }

    #[test]
    fn an_order_that_crossed_a_change_is_undone() {
        let mut g = two();
        g.on_ready("gw", true);
        assert_eq!(g.on_ready("pub", true), o(&[("pub", M), ("gw", M)]));
        // pub heard a master before its order arrived (it ignores the order) ...
        assert!(g.on_ready("pub", false).is_empty());
        // ... while gw obeyed: it goes back.
        assert_eq!(g.on_state("gw", Backup, Master, &Reason::MasterDown), o(&[("gw", B)]));
        // Same race the other way round: gw MASTER first, then pub says it follows.
        let mut g = two();
        g.on_ready("gw", true);
        g.on_ready("pub", true);
        g.on_state("gw", Backup, Master, &Reason::MasterDown);
        assert_eq!(g.on_ready("pub", false), o(&[("gw", B)]));
    }

    #[test]
    fn the_address_owner_is_master_from_the_start() {
        let mut g = two();
        assert!(g.on_state("pub", Backup, Master, &Reason::AddressOwner).is_empty());
        // gw, ready, finds pub MASTER: the group agrees at once.
        assert_eq!(g.on_ready("gw", true), o(&[("gw", M)]));
        // The other way round: gw ready first, waiting for an owner that starts late.
        let mut g = two();
        g.on_state("pub", Backup, Initialize, &Reason::Shutdown);
        assert!(g.on_ready("gw", true).is_empty());
        assert_eq!(g.on_state("pub", Initialize, Master, &Reason::AddressOwner), o(&[("gw", M)]));
    }

    #[test]
    fn three_members_obey_one_order_each() {
        let members = ["a".to_string(), "b".to_string(), "c".to_string()];
        let mut g = SyncGroups::new([("g", &members[..])]);
        for m in ["a", "b", "c"] {
            g.on_state(m, Initialize, Backup, &Reason::Startup);
        }
        g.on_ready("a", true);
        g.on_ready("b", true);
        assert_eq!(g.on_ready("c", true), o(&[("a", M), ("b", M), ("c", M)]));
        for m in ["a", "b", "c"] {
            assert!(g.on_state(m, Backup, Master, &Reason::MasterDown).is_empty(), "{m}");
        }
        let higher = Reason::HigherPriority { from: "198.18.0.2".parse().unwrap(), priority: 200 };
        assert_eq!(g.on_state("a", Master, Backup, &higher), o(&[("b", B), ("c", B)]));
        assert!(g.on_state("b", Master, Backup, &Reason::SyncGroup).is_empty());
        assert!(g.on_state("c", Master, Backup, &Reason::SyncGroup).is_empty());
    }

    #[test]
    fn members_not_running_hold_the_group() {
        let members = ["a".to_string(), "b".to_string(), "c".to_string()];
        let mut g = SyncGroups::new([("g", &members[..])]);
        g.on_state("a", Initialize, Backup, &Reason::Startup);
        g.on_state("b", Initialize, Backup, &Reason::Startup);
        g.on_ready("a", true);
        assert!(g.on_ready("b", true).is_empty(), "c has not started");
        g.on_state("c", Initialize, Fault, &Reason::FaultSet);
        assert!(g.on_ready("b", true).is_empty(), "c is in FAULT");
        assert_eq!(g.waiting_for("a"), Some(("g".into(), vec!["c".into()])));
    }

    /// A member that cannot start (interface missing, socket not opened) never reports: it
    /// holds its group (no MASTER without it), and puts the group in FAULT, named, as
    /// keepalived does, rather than leaving the others BACKUP waiting for it silently.
    #[test]
    fn a_member_that_cannot_start_faults_its_group() {
        let members = ["a".to_string(), "b".to_string()];
        let mut g = SyncGroups::new([("g", &members[..])]);
        assert!(g.on_state("a", Initialize, Backup, &Reason::Startup).is_empty());
        assert!(g.on_ready("a", true).is_empty(), "b never started");
        assert_eq!(g.waiting_for("a"), Some(("g".into(), vec!["b".into()])));
        let none = |_: &str| false;
        assert_eq!(group_fault(&members, none, |m| m == "b"), Some("b cannot start".into()));
        assert_eq!(group_fault(&members, |m| m == "a", none), Some("a in FAULT".into()));
        assert_eq!(
            group_fault(&members, |m| m == "a", |m| m == "b"),
            Some("b cannot start; a in FAULT".into())
        );
        assert_eq!(group_fault(&members, none, none), None);
    }

    #[test]
    fn instances_outside_groups_are_their_own_group_and_reloads_keep_states() {
        let mut g = two();
        assert_eq!(g.on_ready("other", true), o(&[("other", M)]));
        assert!(g.on_ready("other", false).is_empty());
        assert!(g.on_state("other", Master, Backup, &Reason::SyncGroup).is_empty());
        g.on_ready("gw", true);
        let members = ["pub".to_string(), "gw".to_string(), "new".to_string()];
        assert!(g.reconfigure([("director", &members[..])]).is_empty());
        assert_eq!(
            g.waiting_for("gw"),
            Some(("director".into(), vec!["pub".into(), "new".into()]))
        );
        // The members gw waited for leave its group: it goes.
        let members = ["gw".to_string()];
        assert_eq!(g.reconfigure([("alone", &members[..])]), o(&[("gw", M)]));
    }
}
