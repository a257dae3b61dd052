//! Which connections and persistence templates the master sends (`docs/conntrack-sync.md`,
//! step 1). Pure: snapshots of `LB_CONNS` and `LB_PERSIST` (as `bpf::lb::flows` and
//! `bpf::lb::templates` read them) in, the [`SyncItem`]s not sent yet out.
//!
//! A flow is sent when it first appears, again whenever its real server changes (another
//! `real_id` or `real_gen`: the flow was rescheduled), and again once it has seen traffic
//! [`REFRESH_SECS`] after it was last sent: the backup's copy expires on its own idle timeout,
//! so a long connection that is still active on the master must be refreshed there (IPVS
//! resyncs active connections as their packets flow, every `sync_period` packets), or a
//! failover after the timeout would reschedule it. A key that leaves the table is forgotten,
//! so a flow that comes back later is sent again.
//!
//! A persistence template follows the same rules (one [`Ledger`] logic for both): sent when
//! new, when its real server changed, and when it was used again a refresh period after it
//! was sent — [`REFRESH_SECS`], or half the service's `persistence_timeout` when that is
//! shorter, so the backup's copy (which ages on that timeout) never lapses while the
//! master's is in use. A template that expired here (unused for its service's
//! `persistence_timeout`: the data path no longer follows it, but leaves it in the map) is
//! not sent and is forgotten; one whose service or real server this director no longer has
//! is skipped. Templates are named on the wire by service (VIP, port, protocol), client
//! network and prefix, never by local ids, and remembered by that name.
//!
//! Sending is the caller's: whatever it could not send (its per-tick budget ran out, the
//! socket refused) it hands back with [`Exporter::not_sent`], and those are owed: the next
//! [`diff_all`](Exporter::diff_all) sends them again, after the flows and templates that are
//! new or changed. [`Exporter::resend_all`] makes everything remembered owed (a table
//! request, the periodic full resend that heals lost datagrams).
//!
//! Only forward entries are sent (a NAT reply entry is derived from its forward entry on
//! import). A flow that closes (FIN/RST seen) after it was sent open is sent once more,
//! closed, so the backup's copy stops counting as active and expires on the FIN timeout
//! rather than the established one; a closed flow the backup never heard of is not sent.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, SocketAddr},
};

use ha_lb_common::lb::{
    LbFlow, LbFlowKey, LbPersist, LbPersistKey, FAMILY_V4, FAMILY_V6, LB_FLOW_F_CLOSED,
    LB_FLOW_F_HALF_OPEN, LB_FLOW_F_REPLY,
};

use super::{SyncEntry, SyncItem, SyncTemplate};
use crate::bpf::lb::{addr_words, port_be, words_addr};
use crate::config::{LbKind, Protocol};

const NS_PER_SEC: u64 = 1_000_000_000;

/// A flow active this long after it was last sent is sent again (well inside the shortest
/// idle timeout, UDP's 300 s). Templates: this or half their service's
/// `persistence_timeout`, the shorter.
pub const REFRESH_SECS: u64 = 60;

/// What the master sent of a flow or template: its real server `(real_id, real_gen)` and its
/// `last_seen_ns` then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    real: (u32, u32),
    last_seen_ns: u64,
    /// To be sent again (not sent after all, or a whole-table resend asked for it).
    owed: bool,
    /// Sent closed (flows only).
    closed: bool,
}

/// What has been sent of one table, by key: the decisions the flows and the templates share.
#[derive(Debug, Clone)]
struct Ledger<K> {
    sent: HashMap<K, Sent>,
}

impl<K> Default for Ledger<K> {
    fn default() -> Self {
        Ledger { sent: HashMap::new() }
    }
}

/// Where an entry of a diff goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// New, changed, refreshed: first.
    Now,
    /// Owed: after the others.
    Owed,
}

impl<K: Hash + Eq + Copy> Ledger<K> {
    /// Whether (and where) the entry `key` — served by `real`, last seen at `last_seen_ns`,
    /// `closed` — goes in this diff, given what was sent before; records what the backup will
    /// have been told in `next`, the ledger after this diff. `refresh_ns`: an entry used this
    /// long after it was sent is sent again.
    fn decide(
        &self,
        next: &mut HashMap<K, Sent>,
        key: K,
        real: (u32, u32),
        last_seen_ns: u64,
        closed: bool,
        refresh_ns: u64,
    ) -> Option<Place> {
        // A key twice in one snapshot (the batched reader racing updates) is sent once.
        if next.get(&key).is_some_and(|s: &Sent| s.real == real) {
            return None;
        }
        let now = Sent { real, last_seen_ns, owed: false, closed };
        match self.sent.get(&key) {
            // Closed, and the backup never had it open: nothing to tell.
            None if closed => None,
            Some(s) if s.real == real && s.closed == closed => {
                let active_since = last_seen_ns.saturating_sub(s.last_seen_ns);
                if !closed && active_since >= refresh_ns {
                    next.insert(key, now);
                    Some(Place::Now)
                } else if s.owed {
                    next.insert(key, now);
                    Some(Place::Owed)
                } else {
                    next.insert(key, *s);
                    None
                }
            }
            _ => {
                next.insert(key, now);
                Some(Place::Now)
            }
        }
    }

    fn resend_all(&mut self) {
        for s in self.sent.values_mut() {
            s.owed = true;
        }
    }

    fn owes(&self) -> bool {
        self.sent.values().any(|s| s.owed)
    }

    fn not_sent(&mut self, key: &K) {
        if let Some(s) = self.sent.get_mut(key) {
            s.owed = true;
        }
    }
}

/// A template's name on the wire, and the master's key for what it sent of it: service
/// (protocol, VIP), client network and prefix.
pub type TemplateKey = (Protocol, SocketAddr, IpAddr, u8);

fn template_key(t: &SyncTemplate) -> TemplateKey {
    (t.protocol, t.vip, t.client, t.prefix)
}

/// What a template's local ids name on this director (its service's and real server's
/// bookkeeping), for [`template_entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateNames {
    pub protocol: Protocol,
    pub vip: SocketAddr,
    /// The service's `persistence_granularity` (`persist_prefix`).
    pub prefix: u8,
    /// The service's `persistence_timeout` in seconds (0: no persistence any more).
    pub timeout_secs: u32,
    pub real_server: SocketAddr,
}

/// The [`SyncTemplate`] of an `LB_PERSIST` entry, or `None` when it is not worth sending: it
/// expired (unused for longer than its service's `persistence_timeout`; the data path no
/// longer follows it), its service has no persistence now, or its family is not one the data
/// path uses or not its service's.
pub fn template_entry(
    key: &LbPersistKey,
    t: &LbPersist,
    now_ns: u64,
    names: &TemplateNames,
) -> Option<SyncTemplate> {
    if key.family != FAMILY_V4 && key.family != FAMILY_V6 {
        return None;
    }
    let idle = now_ns.saturating_sub(t.last_seen_ns);
    if names.timeout_secs == 0 || idle > u64::from(names.timeout_secs) * NS_PER_SEC {
        return None;
    }
    let e = SyncTemplate {
        protocol: names.protocol,
        vip: names.vip,
        client: words_addr(&key.client, key.family),
        prefix: names.prefix,
        real_server: names.real_server,
        idle_secs: u32::try_from(idle / NS_PER_SEC).unwrap_or(u32::MAX),
    };
    e.same_family().then_some(e)
}

/// The master's memory of what it has sent: forward-entry keys of flows, wire names of
/// templates.
#[derive(Debug, Default, Clone)]
pub struct Exporter {
    flows: Ledger<LbFlowKey>,
    templates: Ledger<TemplateKey>,
}

/// A diff of one table: what goes first, what is owed.
type Split<T> = (Vec<T>, Vec<T>);

impl Exporter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Flows currently remembered as sent.
    pub fn len(&self) -> usize {
        self.flows.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.sent.is_empty() && self.templates.sent.is_empty()
    }

    /// Templates currently remembered as sent.
    pub fn templates_len(&self) -> usize {
        self.templates.sent.len()
    }

    /// Forgets everything sent, so the next diff sends the whole tables (for a director that
    /// becomes master again).
    pub fn reset(&mut self) {
        self.flows.sent.clear();
        self.templates.sent.clear();
    }

    /// Makes every flow and template remembered as sent owed: the next diffs send them again,
    /// after the new and changed ones (a table request; the periodic full resend).
    pub fn resend_all(&mut self) {
        self.flows.resend_all();
        self.templates.resend_all();
    }

    /// Whether some flows or templates are owed (see [`not_sent`](Self::not_sent)).
    pub fn owes(&self) -> bool {
        self.flows.owes() || self.templates.owes()
    }

    /// `items` (from a diff) did not go out: the next diff sends them again if their flows
    /// and templates are still in the tables.
    pub fn not_sent<T: Copy + Into<SyncItem>>(&mut self, items: &[T]) {
        for &i in items {
            match i.into() {
                SyncItem::Conn(e) => {
                    if let Some(k) = entry_key(&e) {
                        self.flows.not_sent(&k);
                    }
                }
                SyncItem::Template(t) => self.templates.not_sent(&template_key(&t)),
            }
        }
    }

    /// The entries of `flows` to send now, given everything sent by earlier calls; then
    /// remembers `flows` as the table's state. New and changed flows come first, then owed
    /// ones (see [`not_sent`](Self::not_sent)), so a whole-table resend delays no new flow.
    ///
    /// `now_ns` is on the clock of `LbFlow::last_seen_ns` (CLOCK_MONOTONIC). `services` says
    /// whether a forward key's destination is a local service (`Some((vip, kind))`); flows of
    /// unknown services are skipped and not remembered, so they are sent once the service is
    /// known. Only its presence matters: the VIP is the key's destination and the forwarding
    /// method is the flow's own (its `LB_FLOW_F_DR` / `LB_FLOW_F_TUN` flags, fixed when the
    /// flow started, as the data path reads them), not the service's current `lb_kind`.
    pub fn diff(
        &mut self,
        flows: &[(LbFlowKey, LbFlow)],
        now_ns: u64,
        services: &dyn Fn(&LbFlowKey) -> Option<(SocketAddr, LbKind)>,
    ) -> Vec<SyncEntry> {
        let (mut out, owed) = self.diff_flows(flows, now_ns, services);
        out.extend(owed);
        out
    }

    /// The templates of `templates` (a snapshot of `LB_PERSIST`) to send now, as
    /// [`diff`](Self::diff) for flows. `names` gives what a template's local ids name here
    /// (`None`: its service or real server is gone, or it is not this service's any more:
    /// skipped, not remembered); expired templates are skipped and forgotten too.
    pub fn diff_templates(
        &mut self,
        templates: &[(LbPersistKey, LbPersist)],
        now_ns: u64,
        names: &dyn Fn(&LbPersistKey, &LbPersist) -> Option<TemplateNames>,
    ) -> Vec<SyncTemplate> {
        let (mut out, owed) = self.diff_templates_split(templates, now_ns, names);
        out.extend(owed);
        out
    }

    /// Both diffs, in the order they should go out: new and changed templates, new and
    /// changed flows, then owed templates and owed flows. A whole-table resend, paced over
    /// several ticks, so holds up neither a new flow nor a new template; and templates go
    /// first because they are few (one per client, or client network, not per connection)
    /// and each stands for all of a client's future connections: a burst of new connections
    /// larger than a tick's budget must not starve them.
    pub fn diff_all(
        &mut self,
        flows: &[(LbFlowKey, LbFlow)],
        templates: &[(LbPersistKey, LbPersist)],
        now_ns: u64,
        services: &dyn Fn(&LbFlowKey) -> Option<(SocketAddr, LbKind)>,
        names: &dyn Fn(&LbPersistKey, &LbPersist) -> Option<TemplateNames>,
    ) -> Vec<SyncItem> {
        let (f_now, f_owed) = self.diff_flows(flows, now_ns, services);
        let (t_now, t_owed) = self.diff_templates_split(templates, now_ns, names);
        let mut out = Vec::with_capacity(f_now.len() + t_now.len() + f_owed.len() + t_owed.len());
        out.extend(t_now.into_iter().map(SyncItem::Template));
        out.extend(f_now.into_iter().map(SyncItem::Conn));
        out.extend(t_owed.into_iter().map(SyncItem::Template));
        out.extend(f_owed.into_iter().map(SyncItem::Conn));
        out
    }

    fn diff_flows(
        &mut self,
        flows: &[(LbFlowKey, LbFlow)],
        now_ns: u64,
        services: &dyn Fn(&LbFlowKey) -> Option<(SocketAddr, LbKind)>,
    ) -> Split<SyncEntry> {
        let mut next = HashMap::with_capacity(self.flows.sent.len().max(flows.len() / 2));
        let (mut out, mut owed) = (Vec::new(), Vec::new());
        for (key, flow) in flows {
            // Half-open connections are not sent until established (as IPVS syncs no
            // SYN_RECV connection: `ip_vs_sync_conn_needed`).
            if flow.flags & (LB_FLOW_F_REPLY | LB_FLOW_F_HALF_OPEN) != 0 {
                continue;
            }
            let closed = flow.flags & LB_FLOW_F_CLOSED != 0;
            let Some(entry) = forward_entry(key, flow, now_ns) else { continue };
            if services(key).is_none() {
                continue;
            }
            let real = (flow.real_id, flow.real_gen);
            let refresh = REFRESH_SECS * NS_PER_SEC;
            match self.flows.decide(&mut next, *key, real, flow.last_seen_ns, closed, refresh) {
                Some(Place::Now) => out.push(entry),
                Some(Place::Owed) => owed.push(entry),
                None => {}
            }
        }
        self.flows.sent = next;
        (out, owed)
    }

    fn diff_templates_split(
        &mut self,
        templates: &[(LbPersistKey, LbPersist)],
        now_ns: u64,
        names: &dyn Fn(&LbPersistKey, &LbPersist) -> Option<TemplateNames>,
    ) -> Split<SyncTemplate> {
        let mut next = HashMap::with_capacity(self.templates.sent.len());
        let (mut out, mut owed) = (Vec::new(), Vec::new());
        for (key, t) in templates {
            let Some(n) = names(key, t) else { continue };
            let Some(entry) = template_entry(key, t, now_ns, &n) else { continue };
            let real = (t.real_id, t.real_gen);
            let refresh = (REFRESH_SECS * NS_PER_SEC)
                .min(u64::from(n.timeout_secs) * NS_PER_SEC / 2)
                .max(NS_PER_SEC);
            let k = template_key(&entry);
            match self.templates.decide(&mut next, k, real, t.last_seen_ns, false, refresh) {
                Some(Place::Now) => out.push(entry),
                Some(Place::Owed) => owed.push(entry),
                None => {}
            }
        }
        self.templates.sent = next;
        (out, owed)
    }
}

/// The forward key of `e`'s flow (`None`: it mixes address families, which no key does).
fn entry_key(e: &SyncEntry) -> Option<LbFlowKey> {
    if !e.same_family() {
        return None;
    }
    let proto = crate::dataplane::ip_protocol(e.protocol);
    let (c, family) = addr_words(e.client.ip());
    let (v, _) = addr_words(e.vip.ip());
    Some(LbFlowKey::new(family, proto, (c, port_be(e.client.port())), (v, port_be(e.vip.port()))))
}

/// The [`SyncEntry`] of a forward entry, or `None` for a family or protocol the data path does
/// not track (a corrupt or foreign entry).
pub fn forward_entry(key: &LbFlowKey, flow: &LbFlow, now_ns: u64) -> Option<SyncEntry> {
    if key.family != FAMILY_V4 && key.family != FAMILY_V6 {
        return None;
    }
    let protocol = crate::dataplane::protocol_of(key.proto)?;
    let lb_kind = crate::dataplane::xdp::flow_kind(flow.flags);
    let sock = |w: &[u32; 4], port_be: u16| {
        SocketAddr::new(words_addr(w, key.family), u16::from_be(port_be))
    };
    let idle = now_ns.saturating_sub(flow.last_seen_ns) / NS_PER_SEC;
    Some(SyncEntry {
        protocol,
        lb_kind,
        client: sock(&key.src, key.sport),
        vip: sock(&key.dst, key.dport),
        real_server: sock(&flow.addr, flow.port),
        idle_secs: u32::try_from(idle).unwrap_or(u32::MAX),
        closed: flow.flags & LB_FLOW_F_CLOSED != 0,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use ha_lb_common::lb::{
        IPPROTO_TCP, IPPROTO_UDP, LB_FLOW_F_DR, LB_FLOW_F_PERSIST, LB_FLOW_F_TUN,
    };
    use proptest::prelude::*;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const NOW: u64 = 1_000 * NS_PER_SEC;

    fn key(client: &str, vip: &str, proto: u8) -> LbFlowKey {
        let (c, v) = (sa(client), sa(vip));
        let (src, family) = addr_words(c.ip());
        let (dst, _) = addr_words(v.ip());
        LbFlowKey {
            src,
            dst,
            sport: port_be(c.port()),
            dport: port_be(v.port()),
            proto,
            family,
            _pad: 0,
        }
    }

    fn flow(real: &str, real_id: u32, flags: u32) -> LbFlow {
        let r = sa(real);
        LbFlow {
            real_id,
            real_gen: 1,
            service_id: 0,
            flags,
            last_seen_ns: NOW - 2 * NS_PER_SEC,
            addr: addr_words(r.ip()).0,
            port: port_be(r.port()),
            ..LbFlow::default()
        }
    }

    /// Every destination is a service.
    fn any_service(k: &LbFlowKey) -> Option<(SocketAddr, LbKind)> {
        Some((SocketAddr::new(words_addr(&k.dst, k.family), u16::from_be(k.dport)), LbKind::Nat))
    }

    fn fwd() -> (LbFlowKey, LbFlow) {
        (key("198.51.100.7:40000", "192.0.2.10:80", IPPROTO_TCP), flow("10.0.0.2:8080", 3, 0))
    }

    #[test]
    fn forward_entry_converts_v4_and_v6() {
        let (k, f) = fwd();
        let e = forward_entry(&k, &f, NOW).unwrap();
        assert_eq!(
            e,
            SyncEntry {
                protocol: Protocol::Tcp,
                lb_kind: LbKind::Nat,
                client: sa("198.51.100.7:40000"),
                vip: sa("192.0.2.10:80"),
                real_server: sa("10.0.0.2:8080"),
                idle_secs: 2,
                closed: false,
            }
        );
        let k6 = key("[2001:db8::7]:5353", "[2001:db8:1::10]:53", IPPROTO_UDP);
        let f6 = flow("[2001:db8:2::2]:53", 4, LB_FLOW_F_DR);
        let e6 = forward_entry(&k6, &f6, NOW).unwrap();
        assert_eq!(e6.protocol, Protocol::Udp);
        assert_eq!(e6.lb_kind, LbKind::Dr);
        assert_eq!(e6.client, sa("[2001:db8::7]:5353"));
        assert_eq!(e6.vip, sa("[2001:db8:1::10]:53"));
        assert_eq!(e6.real_server, sa("[2001:db8:2::2]:53"));
    }

    #[test]
    fn kind_comes_from_the_flow_flags() {
        let (k, _) = fwd();
        let kind = |flags| forward_entry(&k, &flow("10.0.0.2:80", 1, flags), NOW).unwrap().lb_kind;
        assert_eq!(kind(0), LbKind::Nat);
        assert_eq!(kind(LB_FLOW_F_PERSIST | (24 << 8)), LbKind::Nat);
        assert_eq!(kind(LB_FLOW_F_DR), LbKind::Dr);
        assert_eq!(kind(LB_FLOW_F_TUN), LbKind::Tun);
        // The service's current kind does not override the flow's.
        let mut x = Exporter::new();
        let svc_tun = |_: &LbFlowKey| Some((sa("192.0.2.10:80"), LbKind::Tun));
        assert_eq!(x.diff(&[fwd()], NOW, &svc_tun)[0].lb_kind, LbKind::Nat);
    }

    #[test]
    fn idle_secs_saturates() {
        let (k, mut f) = fwd();
        f.last_seen_ns = NOW + 5 * NS_PER_SEC; // clock skew between reads: not negative
        assert_eq!(forward_entry(&k, &f, NOW).unwrap().idle_secs, 0);
        f.last_seen_ns = NOW - 2_999_999_999;
        assert_eq!(forward_entry(&k, &f, NOW).unwrap().idle_secs, 2);
        f.last_seen_ns = 0;
        assert_eq!(forward_entry(&k, &f, u64::MAX).unwrap().idle_secs, u32::MAX);
    }

    #[test]
    fn unknown_family_or_protocol_is_skipped() {
        let (mut k, f) = fwd();
        k.proto = 1;
        assert_eq!(forward_entry(&k, &f, NOW), None);
        let (mut k, f) = fwd();
        k.family = 0;
        assert_eq!(forward_entry(&k, &f, NOW), None);
        assert!(Exporter::new().diff(&[(k, f)], NOW, &any_service).is_empty());
    }

    #[test]
    fn new_flows_are_sent_once() {
        let mut x = Exporter::new();
        let a = fwd();
        let b = (key("198.51.100.8:1", "192.0.2.10:80", IPPROTO_TCP), flow("10.0.0.3:8080", 4, 0));
        assert_eq!(x.diff(&[a], NOW, &any_service).len(), 1);
        assert!(x.diff(&[a], NOW, &any_service).is_empty());
        let out = x.diff(&[a, b], NOW, &any_service);
        assert_eq!(out, vec![forward_entry(&b.0, &b.1, NOW).unwrap()]);
        // last_seen moving on alone does not resend, for a while.
        let mut a2 = a;
        a2.1.last_seen_ns = NOW;
        assert!(x.diff(&[a2, b], NOW + NS_PER_SEC, &any_service).is_empty());
        assert_eq!(x.len(), 2);
    }

    /// Found by review: a connection still active on the master was never sent again, so the
    /// backup's copy expired after its idle timeout and a later failover rescheduled it. One
    /// active REFRESH_SECS after it was sent is sent again (an idle one is not: the backup's
    /// copy ages as the master's does).
    #[test]
    fn active_flows_are_refreshed() {
        let mut x = Exporter::new();
        let (k, f) = fwd();
        assert_eq!(x.diff(&[(k, f)], NOW, &any_service).len(), 1);
        let at = |secs: u64| {
            let mut g = f;
            g.last_seen_ns = f.last_seen_ns + secs * NS_PER_SEC;
            (k, g)
        };
        let later = NOW + 10 * REFRESH_SECS * NS_PER_SEC;
        assert!(x.diff(&[at(REFRESH_SECS - 1)], later, &any_service).is_empty());
        let out = x.diff(&[at(REFRESH_SECS)], later, &any_service);
        assert_eq!(out.len(), 1, "active a refresh period after it was sent");
        assert!(x.diff(&[at(2 * REFRESH_SECS - 1)], later, &any_service).is_empty());
        assert_eq!(x.diff(&[at(2 * REFRESH_SECS)], later, &any_service).len(), 1);
        // Idle since: nothing more to say.
        assert!(x.diff(&[at(2 * REFRESH_SECS)], later + NS_PER_SEC, &any_service).is_empty());
    }

    #[test]
    fn real_server_change_is_sent_again() {
        let mut x = Exporter::new();
        let a = fwd();
        x.diff(&[a], NOW, &any_service);
        let mut moved = a;
        moved.1 = flow("10.0.0.4:8080", 5, 0);
        let out = x.diff(&[moved], NOW, &any_service);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].real_server, sa("10.0.0.4:8080"));
        // Same id, new generation (the id was given to another real server).
        let mut regen = moved;
        regen.1.real_gen += 1;
        assert_eq!(x.diff(&[regen], NOW, &any_service).len(), 1);
        assert!(x.diff(&[regen], NOW, &any_service).is_empty());
    }

    #[test]
    fn reply_entries_and_closed_flows_never_sent_open_are_ignored() {
        let mut x = Exporter::new();
        let reply = (
            key("10.0.0.2:8080", "198.51.100.7:40000", IPPROTO_TCP),
            flow("192.0.2.10:80", 3, LB_FLOW_F_REPLY),
        );
        let mut closed = fwd();
        closed.1.flags |= LB_FLOW_F_CLOSED;
        assert!(x.diff(&[reply, closed], NOW, &any_service).is_empty());
        assert!(x.is_empty());
    }

    /// A half-open connection (its client's ACK not seen yet) is not sent, as IPVS syncs no
    /// SYN_RECV connection; once established it is sent as a new one.
    #[test]
    fn half_open_flows_are_sent_once_established() {
        let mut x = Exporter::new();
        let mut half = fwd();
        half.1.flags |= LB_FLOW_F_HALF_OPEN;
        assert!(x.diff(&[half], NOW, &any_service).is_empty());
        let open = fwd();
        assert_eq!(x.diff(&[open], NOW, &any_service).len(), 1);
    }

    /// Found by review: a flow the master closed (FIN/RST) was never sent as closed, so the
    /// backup kept it open for the TCP timeout (900 s): after a failover its active counts were
    /// too high and its table full of dead flows. A sent flow that closes is sent once more,
    /// closed; should it open again it is sent again.
    #[test]
    fn a_sent_flow_that_closes_is_sent_closed_once() {
        let mut x = Exporter::new();
        let open = fwd();
        let mut closed = fwd();
        closed.1.flags |= LB_FLOW_F_CLOSED;
        assert_eq!(x.diff(&[open], NOW, &any_service).len(), 1);
        let out = x.diff(&[closed], NOW, &any_service);
        assert_eq!(out, vec![forward_entry(&closed.0, &closed.1, NOW).unwrap()]);
        assert!(out[0].closed);
        assert!(x.diff(&[closed], NOW, &any_service).is_empty());
        // No refresh for a closed flow, however long it is seen.
        let mut later = closed;
        later.1.last_seen_ns += 10 * REFRESH_SECS * NS_PER_SEC;
        assert!(x.diff(&[later], NOW + 10 * REFRESH_SECS * NS_PER_SEC, &any_service).is_empty());
        // A resend (or a lost datagram) sends it closed again.
        x.resend_all();
        assert_eq!(x.diff(&[closed], NOW, &any_service).len(), 1);
        // Reopened (a new SYN on the same tuple).
        let out = x.diff(&[open], NOW, &any_service);
        assert_eq!(out.len(), 1);
        assert!(!out[0].closed);
        // Gone from the table: forgotten.
        assert!(x.diff(&[], NOW, &any_service).is_empty());
        assert!(x.diff(&[closed], NOW, &any_service).is_empty());
    }

    #[test]
    fn removed_keys_are_forgotten() {
        let mut x = Exporter::new();
        let a = fwd();
        x.diff(&[a], NOW, &any_service);
        assert!(x.diff(&[], NOW, &any_service).is_empty());
        assert!(x.is_empty());
        assert_eq!(x.diff(&[a], NOW, &any_service).len(), 1);
        x.reset();
        assert_eq!(x.diff(&[a], NOW, &any_service).len(), 1);
    }

    #[test]
    fn unknown_service_is_skipped_until_known() {
        let mut x = Exporter::new();
        let none = |_: &LbFlowKey| None;
        assert!(x.diff(&[fwd()], NOW, &none).is_empty());
        assert!(x.is_empty());
        assert_eq!(x.diff(&[fwd()], NOW, &any_service).len(), 1);
    }

    fn many(n: u32) -> Vec<(LbFlowKey, LbFlow)> {
        (0..n)
            .map(|i| {
                let client =
                    format!("198.51.{}.{}:{}", 100 + i / 60_000, i / 250 % 240, 1024 + i % 250);
                (key(&client, "192.0.2.10:80", IPPROTO_TCP), flow("10.0.0.2:8080", 3, 0))
            })
            .collect()
    }

    /// Found by review: every entry diff returned counted as sent, also those the daemon
    /// could not send (socket buffer full, budget), so a lost datagram's flows never reached
    /// the backup. What was not sent is owed and goes out with the next diff.
    #[test]
    fn what_was_not_sent_is_sent_again() {
        let mut x = Exporter::new();
        let t = many(10);
        let out = x.diff(&t, NOW, &any_service);
        assert_eq!(out.len(), 10);
        x.not_sent(&out[6..]);
        assert!(x.owes());
        let again = x.diff(&t, NOW, &any_service);
        assert_eq!(again, out[6..].to_vec());
        assert!(!x.owes());
        assert!(x.diff(&t, NOW, &any_service).is_empty());
        // Owed flows that left the table are not sent.
        x.not_sent(&out[..2]);
        assert!(x.diff(&t[2..], NOW, &any_service).is_empty());
    }

    /// New and changed flows go before owed ones, so a whole-table resend sent over several
    /// ticks does not hold up a flow that just started.
    #[test]
    fn owed_flows_go_after_new_ones() {
        let mut x = Exporter::new();
        let t = many(5);
        x.diff(&t, NOW, &any_service);
        x.resend_all();
        let mut t2 = t.clone();
        let b = (key("203.0.113.1:1", "192.0.2.10:80", IPPROTO_TCP), flow("10.0.0.3:8080", 4, 0));
        t2.push(b);
        t2[3].1 = flow("10.0.0.4:8080", 5, 0);
        let out = x.diff(&t2, NOW, &any_service);
        assert_eq!(out.len(), 6);
        let first: HashSet<_> = out[..2].iter().map(|e| e.client).collect();
        assert_eq!(
            first,
            HashSet::from([
                sa("203.0.113.1:1"),
                forward_entry(&t[3].0, &t[3].1, NOW).unwrap().client
            ])
        );
        assert!(x.diff(&t2, NOW, &any_service).is_empty());
    }

    #[test]
    fn resend_all_sends_every_remembered_flow_once_more() {
        let mut x = Exporter::new();
        let t = many(300);
        assert_eq!(x.diff(&t, NOW, &any_service).len(), 300);
        assert!(!x.owes());
        x.resend_all();
        assert!(x.owes());
        assert_eq!(x.diff(&t, NOW, &any_service).len(), 300);
        assert!(x.diff(&t, NOW, &any_service).is_empty());
    }

    #[test]
    fn duplicate_key_in_one_snapshot_is_sent_once() {
        let mut x = Exporter::new();
        assert_eq!(x.diff(&[fwd(), fwd()], NOW, &any_service).len(), 1);
    }

    // ---- persistence templates ----

    fn tkey(service_id: u32, client: &str) -> LbPersistKey {
        let (client, family) = addr_words(client.parse().unwrap());
        LbPersistKey { service_id, family, _pad8: 0, _pad16: 0, client }
    }

    fn tval(real_id: u32, idle_secs: u64) -> LbPersist {
        LbPersist { real_id, real_gen: 1, last_seen_ns: NOW - idle_secs * NS_PER_SEC }
    }

    /// Service 1 is 192.0.2.10:80/TCP, persistent 300 s per /24; real id N is 10.0.0.N:8080.
    /// Anything else is unknown here.
    fn names(k: &LbPersistKey, t: &LbPersist) -> Option<TemplateNames> {
        (k.service_id == 1 && t.real_id < 10).then(|| TemplateNames {
            protocol: Protocol::Tcp,
            vip: sa("192.0.2.10:80"),
            prefix: 24,
            timeout_secs: 300,
            real_server: sa(&format!("10.0.0.{}:8080", t.real_id)),
        })
    }

    fn tpl() -> (LbPersistKey, LbPersist) {
        (tkey(1, "198.51.100.0"), tval(2, 5))
    }

    #[test]
    fn template_entry_names_service_client_network_and_real_server() {
        let (k, t) = tpl();
        let e = template_entry(&k, &t, NOW, &names(&k, &t).unwrap()).unwrap();
        assert_eq!(
            e,
            SyncTemplate {
                protocol: Protocol::Tcp,
                vip: sa("192.0.2.10:80"),
                client: "198.51.100.0".parse().unwrap(),
                prefix: 24,
                real_server: sa("10.0.0.2:8080"),
                idle_secs: 5,
            }
        );
        let n6 = TemplateNames {
            protocol: Protocol::Udp,
            vip: sa("[2001:db8:1::10]:53"),
            prefix: 0,
            timeout_secs: 60,
            real_server: sa("[2001:db8:2::2]:53"),
        };
        let k6 = tkey(4, "2001:db8::7");
        let e6 = template_entry(&k6, &tval(3, 0), NOW, &n6).unwrap();
        assert_eq!(e6.client, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!((e6.protocol, e6.vip, e6.prefix), (Protocol::Udp, n6.vip, 0));
        // A family other than its service's (a corrupt entry), or none the data path uses.
        assert_eq!(template_entry(&k6, &tval(3, 0), NOW, &names(&k, &t).unwrap()), None);
        let mut bad = k;
        bad.family = 0;
        assert_eq!(template_entry(&bad, &t, NOW, &names(&k, &t).unwrap()), None);
    }

    /// The data path leaves expired templates in the map; they are not sent (the backup would
    /// follow one the master no longer does), and a service without persistence now sends
    /// none.
    #[test]
    fn expired_templates_are_not_sent() {
        let (k, _) = tpl();
        let n = names(&k, &tval(2, 0)).unwrap();
        assert!(template_entry(&k, &tval(2, 300), NOW, &n).is_some());
        assert_eq!(template_entry(&k, &tval(2, 301), NOW, &n), None);
        let off = TemplateNames { timeout_secs: 0, ..n };
        assert_eq!(template_entry(&k, &tval(2, 0), NOW, &off), None);
        let mut x = Exporter::new();
        assert!(x.diff_templates(&[(k, tval(2, 301))], NOW, &names).is_empty());
        assert!(x.is_empty());
        // Sent, then expired: forgotten, so its next use is sent again.
        assert_eq!(x.diff_templates(&[tpl()], NOW, &names).len(), 1);
        assert!(x.diff_templates(&[(k, tval(2, 301))], NOW, &names).is_empty());
        assert_eq!(x.templates_len(), 0);
        assert_eq!(x.diff_templates(&[tpl()], NOW, &names).len(), 1);
    }

    #[test]
    fn templates_are_sent_when_new_changed_or_refreshed_and_forgotten_when_gone() {
        let mut x = Exporter::new();
        let (k, t) = tpl();
        assert_eq!(x.diff_templates(&[(k, t)], NOW, &names).len(), 1);
        assert!(x.diff_templates(&[(k, t)], NOW, &names).is_empty());
        // Another real server (the old one left, the client was scheduled anew).
        let moved = tval(3, 0);
        let out = x.diff_templates(&[(k, moved)], NOW, &names);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].real_server, sa("10.0.0.3:8080"));
        // Same id, new generation.
        let regen = LbPersist { real_gen: 2, ..moved };
        assert_eq!(x.diff_templates(&[(k, regen)], NOW, &names).len(), 1);
        // Used again: sent again once a refresh period (here REFRESH_SECS: 300 / 2 is
        // longer) after it was sent.
        let used =
            |secs: u64| LbPersist { last_seen_ns: regen.last_seen_ns + secs * NS_PER_SEC, ..regen };
        let later = NOW + 10 * REFRESH_SECS * NS_PER_SEC;
        let n = |k: &LbPersistKey, t: &LbPersist| {
            names(k, t).map(|n| TemplateNames { timeout_secs: 100_000, ..n })
        };
        assert!(x.diff_templates(&[(k, used(REFRESH_SECS - 1))], later, &n).is_empty());
        assert_eq!(x.diff_templates(&[(k, used(REFRESH_SECS))], later, &n).len(), 1);
        // Gone from the map: forgotten.
        assert!(x.diff_templates(&[], later, &n).is_empty());
        assert_eq!(x.templates_len(), 0);
        // Unknown service or real server: skipped, not remembered.
        assert!(x.diff_templates(&[(tkey(2, "198.51.100.0"), t)], NOW, &names).is_empty());
        assert!(x.diff_templates(&[(k, tval(11, 0))], NOW, &names).is_empty());
        assert_eq!(x.templates_len(), 0);
        // A key twice in one snapshot is sent once.
        assert_eq!(x.diff_templates(&[(k, t), (k, t)], NOW, &names).len(), 1);
    }

    /// The backup's copy ages on the service's persistence_timeout: with a timeout shorter
    /// than two refresh periods, a template in use is refreshed every half timeout, so the
    /// copy never lapses while the master's is in use.
    #[test]
    fn templates_of_short_timeouts_are_refreshed_within_half_the_timeout() {
        let short = |k: &LbPersistKey, t: &LbPersist| {
            names(k, t).map(|n| TemplateNames { timeout_secs: 30, ..n })
        };
        let mut x = Exporter::new();
        let (k, t) = tpl();
        assert_eq!(x.diff_templates(&[(k, t)], NOW, &short).len(), 1);
        let used = |secs: u64| LbPersist { last_seen_ns: t.last_seen_ns + secs * NS_PER_SEC, ..t };
        let at = |secs: u64| t.last_seen_ns + secs * NS_PER_SEC;
        assert!(x.diff_templates(&[(k, used(14))], at(14), &short).is_empty());
        assert_eq!(x.diff_templates(&[(k, used(15))], at(15), &short).len(), 1);
    }

    /// Templates share the flows' owed logic: not sent is owed, a resend owes everything, and
    /// new templates and flows go before owed ones, templates first.
    #[test]
    fn templates_not_sent_are_owed_and_go_after_new_ones() {
        let mut x = Exporter::new();
        let (k, t) = tpl();
        let k2 = tkey(1, "203.0.113.0");
        let out = x.diff_all(&[fwd()], &[(k, t), (k2, t)], NOW, &any_service, &names);
        assert_eq!(out.len(), 3);
        assert!(matches!(out[0], SyncItem::Template(_)));
        assert!(matches!(out[1], SyncItem::Template(_)));
        assert!(matches!(out[2], SyncItem::Conn(_)));
        x.not_sent(&out[1..2]);
        assert!(x.owes());
        assert_eq!(x.diff_all(&[fwd()], &[(k, t), (k2, t)], NOW, &any_service, &names), out[1..2]);
        assert!(!x.owes());
        x.resend_all();
        let b = (key("198.51.100.9:1", "192.0.2.10:80", IPPROTO_TCP), flow("10.0.0.3:8080", 4, 0));
        let k3 = tkey(1, "192.0.2.0");
        let out = x.diff_all(&[fwd(), b], &[(k, t), (k2, t), (k3, t)], NOW, &any_service, &names);
        let kinds: Vec<_> = out
            .iter()
            .map(|i| match i {
                SyncItem::Conn(e) if e.client == sa("198.51.100.9:1") => "new conn",
                SyncItem::Conn(_) => "owed conn",
                SyncItem::Template(t) if t.client == "192.0.2.0".parse::<IpAddr>().unwrap() => {
                    "new template"
                }
                SyncItem::Template(_) => "owed template",
            })
            .collect();
        assert_eq!(
            kinds,
            ["new template", "new conn", "owed template", "owed template", "owed conn"]
        );
        // reset forgets templates too.
        x.reset();
        assert!(x.is_empty());
    }

    fn arb_templates() -> impl Strategy<Value = Vec<(LbPersistKey, LbPersist)>> {
        // Few clients, reals and ages, so that successive tables overlap and some expire.
        proptest::collection::vec((0u8..12, 0u32..12, 0u32..2, 0u64..400), 0..20).prop_map(|rows| {
            let mut seen = HashSet::new();
            rows.into_iter()
                .filter(|r| seen.insert(r.0))
                .map(|(c, real_id, real_gen, idle)| {
                    let k = tkey(1, &format!("198.51.{c}.0"));
                    (k, LbPersist { real_gen, ..tval(real_id, idle) })
                })
                .collect()
        })
    }

    proptest! {
        /// Over any sequence of template tables, each diff sends exactly the live (known, not
        /// expired) templates that were not sent, whose real server differs from what was
        /// last sent, or that were used REFRESH_SECS after they were sent; and remembers
        /// exactly the live ones.
        #[test]
        fn template_diff_matches_model(tables in proptest::collection::vec(arb_templates(), 1..6)) {
            let mut x = Exporter::new();
            // What the backup was told: client -> (real, last_seen then).
            let mut told: HashMap<IpAddr, ((u32, u32), u64)> = HashMap::new();
            for t in &tables {
                let mut now_told = HashMap::new();
                let mut want = HashSet::new();
                for (k, v) in t {
                    let live = v.real_id < 10 && NOW - v.last_seen_ns <= 300 * NS_PER_SEC;
                    if !live {
                        continue;
                    }
                    let client = words_addr(&k.client, k.family);
                    let real = (v.real_id, v.real_gen);
                    match told.get(&client) {
                        Some(&(r, seen))
                            if r == real
                                && v.last_seen_ns.saturating_sub(seen) < REFRESH_SECS * NS_PER_SEC =>
                        {
                            now_told.insert(client, (r, seen));
                        }
                        _ => {
                            want.insert(template_entry(k, v, NOW, &names(k, v).unwrap()).unwrap());
                            now_told.insert(client, (real, v.last_seen_ns));
                        }
                    }
                }
                let got = x.diff_templates(t, NOW, &names);
                prop_assert_eq!(got.len(), want.len());
                prop_assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
                prop_assert_eq!(x.templates_len(), now_told.len());
                told = now_told;
            }
        }
    }

    fn arb_table() -> impl Strategy<Value = Vec<(LbFlowKey, LbFlow)>> {
        // Few clients and reals so that successive tables overlap.
        proptest::collection::vec((0u8..12, 0u32..3, 0u32..2, 0u32..4, any::<bool>()), 0..20)
            .prop_map(|rows| {
                let mut seen = HashSet::new();
                rows.into_iter()
                    .filter(|r| seen.insert(r.0))
                    .map(|(c, real_id, real_gen, fl, v6)| {
                        let (client, vip, real) = if v6 {
                            (
                                format!("[2001:db8::{c}]:1000"),
                                "[2001:db8::ff]:80",
                                format!("[fd00::{real_id}]:80"),
                            )
                        } else {
                            (
                                format!("198.51.100.{c}:1000"),
                                "192.0.2.1:80",
                                format!("10.0.0.{real_id}:80"),
                            )
                        };
                        let flags =
                            [0, LB_FLOW_F_REPLY, LB_FLOW_F_CLOSED, LB_FLOW_F_DR][fl as usize];
                        let mut f = flow(&real, real_id, flags);
                        f.real_gen = real_gen;
                        (key(&client, vip, IPPROTO_TCP), f)
                    })
                    .collect()
            })
    }

    proptest! {
        /// Over any sequence of tables, each diff sends exactly the forward entries whose
        /// state (real server, open or closed) differs from what was last sent, except closed
        /// ones never sent open.
        #[test]
        fn diff_matches_model(tables in proptest::collection::vec(arb_table(), 1..6)) {
            let mut x = Exporter::new();
            // What the backup was told: key -> (real, closed).
            let mut told: HashMap<LbFlowKey, ((u32, u32), bool)> = HashMap::new();
            for t in &tables {
                let mut now_told = HashMap::new();
                let mut want = HashSet::new();
                for (k, f) in t.iter().filter(|(_, f)| f.flags & LB_FLOW_F_REPLY == 0) {
                    let state = ((f.real_id, f.real_gen), f.flags & LB_FLOW_F_CLOSED != 0);
                    match told.get(k) {
                        None if state.1 => continue,
                        Some(s) if *s == state => {}
                        _ => {
                            want.insert(forward_entry(k, f, NOW).unwrap());
                        }
                    }
                    now_told.insert(*k, state);
                }
                let got = x.diff(t, NOW, &any_service);
                prop_assert_eq!(got.len(), want.len());
                prop_assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
                prop_assert_eq!(x.len(), now_told.len());
                told = now_told;
            }
        }
    }
}
