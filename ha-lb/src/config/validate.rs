//! Semantic checks across fields and items, on the model. Front-ends run these after
//! reading; positions come from the front-end's [`SourceMap`]. Items the front-end
//! already reported errors for (tainted) are skipped so one mistake is reported once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use super::error::{ConfigError, Item, Pos, SourceMap};
use super::model::*;
use super::Host;
use crate::vrrp::vip::check_label;

/// A configuration without a vrrp_instance or a virtual_server runs nothing: never what was
/// meant (typically an `include` that matched no file).
/// Errors about the file as a whole, reported only when it has no other (which are often
/// their cause, and come first).
pub(crate) fn reported_alone(message: &str) -> bool {
    message == NOTHING_TO_DO || message.contains(NEEDS_AN_INSTANCE)
}

const NEEDS_AN_INSTANCE: &str = "needs a vrrp_instance: the forwarding program goes on";

pub(crate) const NOTHING_TO_DO: &str =
    "nothing to do: the configuration has no vrrp_instance and no virtual_server";

pub(crate) fn validate(c: &Config, map: &SourceMap, host: Option<&Host>) -> Vec<ConfigError> {
    let mut v = V { map, errors: Vec::new() };
    if c.vrrp_instances.is_empty() && c.virtual_servers.is_empty() {
        v.err(Pos { line: 1, col: 1 }, NOTHING_TO_DO);
    }
    v.global(c);
    v.names(c);
    v.instances(c);
    v.sync_groups(c);
    v.virtual_servers(c);
    if c.global.dataplane.is_ebpf() {
        v.ebpf_capacity(c);
    }
    if let Some(h) = host {
        v.host(c, h);
        if let Some(running) = h.running {
            v.restart_keys(c, running);
        }
    }
    v.needs_an_instance(c);
    v.errors
}

struct V<'m> {
    map: &'m SourceMap,
    errors: Vec<ConfigError>,
}

impl V<'_> {
    fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.errors.push(self.map.error(pos, msg));
    }

    fn ok(&self, item: Item) -> bool {
        !self.map.is_tainted(item)
    }

    /// The eBPF planes' program goes on instances' interfaces: virtual servers alone (a
    /// keepalived.conf of checkers only, say) have none. Not a property of the host, so
    /// `check` says so too.
    fn needs_an_instance(&mut self, c: &Config) {
        if c.global.dataplane.is_ebpf()
            && c.vrrp_instances.is_empty()
            && !c.virtual_servers.is_empty()
        {
            self.err(
                self.map.key(Item::Global, "dataplane"),
                format!(
                    "dataplane {:?} {NEEDS_AN_INSTANCE} its interface and its VIPs' devices; for virtual servers without VRRP use dataplane \"ipvs\" (in a keepalived.conf: `dataplane ipvs` in global_defs)",
                    c.global.dataplane.as_str()
                ),
            );
        }
    }

    /// A reload: the keys the running daemon cannot change without a restart, each where
    /// the new file sets it (or the `[global]` table, or the file, when it no longer does).
    fn restart_keys(&mut self, c: &Config, running: &Global) {
        let g = &c.global;
        let mut changed = |key: &'static str, old: String, new: String| {
            if old != new {
                let msg = format!("{key} changed from {old} to {new}: needs a restart");
                self.err(self.map.key(Item::Global, key), msg);
            }
        };
        let dataplane = |d: Dataplane| format!("{:?}", d.as_str());
        changed("dataplane", dataplane(running.dataplane), dataplane(g.dataplane));
        let socket = |p: &std::path::Path| format!("{:?}", p.display().to_string());
        changed("control_socket", socket(&running.control_socket), socket(&g.control_socket));
        let sync = |s: &Option<LvsSyncDaemon>| match s {
            None => "none".to_string(),
            Some(s) => format!(
                "{{ interface = {:?}, vrrp_instance = {:?}{}, protocol = {:?} }}",
                s.interface,
                s.vrrp_instance,
                s.id.map(|i| format!(", id = {i}")).unwrap_or_default(),
                s.protocol.as_str()
            ),
        };
        changed("lvs_sync_daemon", sync(&running.lvs_sync_daemon), sync(&g.lvs_sync_daemon));
    }

    fn global(&mut self, c: &Config) {
        if c.global.dataplane == Dataplane::None && !c.virtual_servers.is_empty() {
            let n = c.virtual_servers.len();
            self.err(
                self.map.key(Item::Global, "dataplane"),
                format!(
                    "dataplane \"none\" programs no virtual servers, but {n} virtual_server {} defined; use \"xdp\" or \"ipvs\", or remove them",
                    if n == 1 { "is" } else { "are" }
                ),
            );
        }
        if let Some(s) = &c.global.lvs_sync_daemon {
            let pos = self.map.key(Item::Global, "lvs_sync_daemon");
            if c.global.dataplane == Dataplane::None {
                self.err(
                    pos,
                    "lvs_sync_daemon synchronises a data plane's connections, but dataplane is \"none\"",
                );
            }
            if c.vrrp_instance(&s.vrrp_instance).is_none() {
                self.err(
                    pos,
                    format!(
                        "lvs_sync_daemon names vrrp_instance {:?}, which is not defined",
                        s.vrrp_instance
                    ),
                );
            }
        }
    }

    /// Duplicate names of scripts, track files, instances, sync groups and virtual server
    /// groups.
    fn names(&mut self, c: &Config) {
        let kinds: [(&str, Vec<(Item, &str)>); 5] = [
            (
                "vrrp_script",
                c.vrrp_scripts
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (Item::VrrpScript(i), s.name.as_str()))
                    .collect(),
            ),
            (
                "track_file",
                c.track_files
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (Item::TrackFile(i), s.name.as_str()))
                    .collect(),
            ),
            (
                "vrrp_instance",
                c.vrrp_instances
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (Item::VrrpInstance(i), s.name.as_str()))
                    .collect(),
            ),
            (
                "vrrp_sync_group",
                c.vrrp_sync_groups
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (Item::VrrpSyncGroup(i), s.name.as_str()))
                    .collect(),
            ),
            (
                "virtual_server_group",
                (c.virtual_server_groups.iter().enumerate())
                    .map(|(i, g)| (Item::VirtualServerGroup(i), g.name.as_str()))
                    .collect(),
            ),
        ];
        for (what, items) in kinds {
            let mut seen: HashMap<&str, Pos> = HashMap::new();
            for (item, name) in items {
                if name.is_empty() {
                    continue;
                }
                let pos = self.map.key(item, "name");
                match seen.get(name) {
                    Some(first) => self.err(
                        pos,
                        format!(
                            "{what} {name:?} is already defined at line {}",
                            self.map.line_label(*first)
                        ),
                    ),
                    None => {
                        seen.insert(name, pos);
                    }
                }
            }
        }
    }

    fn instances(&mut self, c: &Config) {
        // (interface, vrid, family) → first instance
        let mut vrids: HashMap<(&str, u8, AddrFamily), (&str, Pos)> = HashMap::new();
        // VIP address → (instance, position)
        let mut vips: HashMap<IpAddr, (&str, Pos)> = HashMap::new();
        for (idx, inst) in c.vrrp_instances.iter().enumerate() {
            let item = Item::VrrpInstance(idx);
            if self.ok(item) {
                self.instance(c, idx, inst);
            }
            // Across instances, with only what these checks read (an error elsewhere in the
            // instance, say its priority, does not hide a duplicate VRID).
            const ACROSS: &[&str] = &[
                "name",
                "interface",
                "virtual_router_id",
                "virtual_ipaddress",
                "virtual_ipaddress_excluded",
            ];
            if !self.map.keys_clean(item, ACROSS) {
                continue;
            }

            let family = inst.family();
            let vpos = self.map.key(item, "virtual_router_id");
            let key = (inst.interface.as_str(), inst.virtual_router_id, family);
            match vrids.get(&key) {
                Some((other, p)) => self.err(
                    vpos,
                    format!(
                        "virtual_router_id {} on {} ({}) is already used by vrrp_instance {other:?} at line {}",
                        inst.virtual_router_id,
                        inst.interface,
                        family.as_str(),
                        self.map.line_label(*p)
                    ),
                ),
                None => {
                    vrids.insert(key, (inst.name.as_str(), vpos));
                }
            }

            let all = inst
                .virtual_ipaddress
                .iter()
                .enumerate()
                .map(|(i, v)| ("virtual_ipaddress", i, v))
                .chain(
                    inst.virtual_ipaddress_excluded
                        .iter()
                        .enumerate()
                        .map(|(i, v)| ("virtual_ipaddress_excluded", i, v)),
                );
            for (key, i, vip) in all {
                let pos = self.map.elem(item, key, i);
                match vips.get(&vip.addr) {
                    Some((other, p)) if *other == inst.name => self.err(
                        pos,
                        format!(
                            "{} is listed twice in this vrrp_instance (first at line {})",
                            vip.addr,
                            self.map.line_label(*p)
                        ),
                    ),
                    Some((other, p)) => self.err(
                        pos,
                        format!(
                            "{} is already a virtual address of vrrp_instance {other:?} at line {}",
                            vip.addr,
                            self.map.line_label(*p)
                        ),
                    ),
                    None => {
                        vips.insert(vip.addr, (inst.name.as_str(), pos));
                    }
                }
            }
        }
    }

    fn instance(&mut self, c: &Config, idx: usize, inst: &VrrpInstance) {
        let item = Item::VrrpInstance(idx);
        let m = self.map;

        // Addresses and family.
        let Some(first) = inst.virtual_ipaddress.first() else {
            self.err(
                m.item(item),
                format!(
                    "vrrp_instance {:?} has no virtual_ipaddress; VRRP needs at least one",
                    inst.name
                ),
            );
            return;
        };
        let family = first.family();
        for (i, vip) in inst.virtual_ipaddress.iter().enumerate().skip(1) {
            if vip.family() != family {
                self.err(
                    m.elem(item, "virtual_ipaddress", i),
                    format!(
                        "virtual_ipaddress {} is {} but the first one is {}; one instance advertises one family (use virtual_ipaddress_excluded or another instance)",
                        vip.addr,
                        vip.family().as_str(),
                        family.as_str()
                    ),
                );
            }
        }
        for (key, list) in [
            ("virtual_ipaddress", &inst.virtual_ipaddress),
            ("virtual_ipaddress_excluded", &inst.virtual_ipaddress_excluded),
        ] {
            for (i, vip) in list.iter().enumerate() {
                // Entries with a `dev` were checked when parsed; the others take the
                // instance's interface.
                if let Some(label) = &vip.label {
                    if let Err(e) = check_label(label, vip.device(&inst.interface)) {
                        self.err(m.elem(item, key, i), e.to_string());
                    }
                }
            }
        }

        // RFC 5798 5.2.9: over IPv6 the first address is the link-local one; peers that
        // follow the RFC check it. (Unicast setups often have none; keepalived allows it.)
        if family == AddrFamily::Ipv6 && !inst.is_unicast() {
            if let IpAddr::V6(a) = first.addr {
                if !a.is_unicast_link_local() {
                    let later = inst
                        .virtual_ipaddress
                        .iter()
                        .find(|v| matches!(v.addr, IpAddr::V6(l) if l.is_unicast_link_local()));
                    let fix = match later {
                        Some(l) => format!("move {} to the front of the list", l.addr),
                        None => "add a link-local VIP before it, the same on every node of this VRID (e.g. fe80::1/64)".to_string(),
                    };
                    self.err(
                        m.elem(item, "virtual_ipaddress", 0),
                        format!(
                            "the first virtual_ipaddress of an IPv6 instance must be link-local (fe80::/10), not {a} (RFC 5798 section 5.2.9): {fix}"
                        ),
                    );
                }
            }
        }

        // Version rules.
        let vpos = m.key(item, "version");
        if inst.version == VrrpVersion::V2 && family == AddrFamily::Ipv6 {
            self.err(vpos, "VRRP version 2 is IPv4 only; IPv6 instances need version = 3");
        }
        let adv = inst.advert_int;
        let apos = m.key(item, "advert_int");
        let adv_s = fmt_dur(adv);
        match inst.version {
            VrrpVersion::V2 => {
                if adv.subsec_nanos() != 0 {
                    self.err(
                        apos,
                        format!(
                            "advert_int {adv_s} is not a whole number of seconds, which VRRP version 2 requires; use version = 3 for sub-second adverts"
                        ),
                    );
                }
            }
            VrrpVersion::V3 => {
                if adv > Duration::from_millis(40_950) {
                    self.err(
                        apos,
                        format!(
                            "advert_int {adv_s} is out of range 0.01..=40.95 for VRRP version 3"
                        ),
                    );
                } else if !adv.as_micros().is_multiple_of(10_000) {
                    self.err(
                        apos,
                        format!(
                            "advert_int {adv_s} is not a multiple of 0.01 seconds (VRRP version 3 counts centiseconds)"
                        ),
                    );
                }
                if inst.authentication.is_some() {
                    self.err(
                        m.key(item, "authentication"),
                        "authentication is not allowed with VRRP version 3 (RFC 5798 removed it)",
                    );
                }
            }
        }

        // Unicast.
        if let Some(src) = inst.unicast_src_ip {
            if AddrFamily::of(&src) != family {
                self.err(
                    m.key(item, "unicast_src_ip"),
                    format!(
                        "unicast_src_ip {src} is {} but this instance's virtual addresses are {}",
                        AddrFamily::of(&src).as_str(),
                        family.as_str()
                    ),
                );
            }
        }
        let mut peers: HashSet<IpAddr> = HashSet::new();
        for (i, peer) in inst.unicast_peer.iter().enumerate() {
            let pos = m.elem(item, "unicast_peer", i);
            if AddrFamily::of(peer) != family {
                self.err(
                    pos,
                    format!(
                        "unicast_peer {peer} is {} but this instance's virtual addresses are {}",
                        AddrFamily::of(peer).as_str(),
                        family.as_str()
                    ),
                );
            } else if Some(*peer) == inst.unicast_src_ip {
                self.err(pos, format!("unicast_peer {peer} is this node's own unicast_src_ip"));
            } else if !peers.insert(*peer) {
                self.err(pos, format!("unicast_peer {peer} is listed twice"));
            }
        }

        // State and preemption.
        if inst.priority == 255 && inst.state == InitialState::Backup {
            self.err(
                m.key(item, "priority"),
                "priority 255 means address owner and needs state = \"MASTER\"",
            );
        }
        if inst.nopreempt && inst.state == InitialState::Master {
            self.err(
                m.key(item, "nopreempt"),
                "nopreempt needs state = \"BACKUP\" (a node starting as MASTER always takes over)",
            );
        }
        if !inst.preempt_delay.is_zero() {
            let pos = m.key(item, "preempt_delay");
            if inst.nopreempt {
                self.err(pos, "preempt_delay has no effect with nopreempt; remove one of them");
            } else if inst.state == InitialState::Master {
                self.err(pos, "preempt_delay needs state = \"BACKUP\"");
            }
        }

        // Tracking.
        let mut seen: HashSet<&str> = HashSet::new();
        for (i, t) in inst.track_interface.iter().enumerate() {
            if t.interface == inst.interface {
                self.err(
                    m.elem(item, "track_interface", i),
                    format!(
                        "track_interface {:?} is this instance's own interface, which is always tracked",
                        t.interface
                    ),
                );
            } else if !seen.insert(&t.interface) {
                self.err(
                    m.elem(item, "track_interface", i),
                    format!("track_interface {:?} is listed twice", t.interface),
                );
            }
        }
        let scripts: Vec<&str> = c.vrrp_scripts.iter().map(|s| s.name.as_str()).collect();
        let tracked = inst.track_script.iter().map(|t| t.script.as_str());
        self.references(item, "track_script", tracked, "vrrp_script", &scripts);
        let files: Vec<&str> = c.track_files.iter().map(|t| t.name.as_str()).collect();
        let tracked = inst.track_file.iter().map(|t| t.track_file.as_str());
        self.references(item, "track_file", tracked, "track_file", &files);
    }

    /// Each entry of `item`'s array `key` must name one of the defined `what`s, once.
    fn references<'a>(
        &mut self,
        item: Item,
        key: &'static str,
        entries: impl Iterator<Item = &'a str>,
        what: &str,
        defined_names: &[&str],
    ) {
        let mut seen: HashSet<&str> = HashSet::new();
        for (i, name) in entries.enumerate() {
            let pos = self.map.elem(item, key, i);
            if !defined_names.contains(&name) {
                self.err(
                    pos,
                    format!(
                        "{key} {name:?} refers to an undefined {what}{}",
                        defined(defined_names.iter().copied())
                    ),
                );
            } else if !seen.insert(name) {
                self.err(pos, format!("{key} {name:?} is listed twice"));
            }
        }
    }

    fn sync_groups(&mut self, c: &Config) {
        let mut member_of: HashMap<&str, (&str, Pos)> = HashMap::new();
        for (g, group) in c.vrrp_sync_groups.iter().enumerate() {
            let item = Item::VrrpSyncGroup(g);
            if !self.ok(item) {
                continue;
            }
            if group.group.is_empty() {
                self.err(
                    self.map.key(item, "group"),
                    format!("vrrp_sync_group {:?} has no members", group.name),
                );
            }
            let mut seen: HashSet<&str> = HashSet::new();
            for (i, member) in group.group.iter().enumerate() {
                let pos = self.map.elem(item, "group", i);
                let Some(idx) = c.vrrp_instances.iter().position(|x| &x.name == member) else {
                    self.err(
                        pos,
                        format!(
                            "vrrp_sync_group member {member:?} is not a defined vrrp_instance{}",
                            defined(c.vrrp_instances.iter().map(|s| s.name.as_str()))
                        ),
                    );
                    continue;
                };
                if !seen.insert(member) {
                    self.err(pos, format!("{member:?} is listed twice in this group"));
                    continue;
                }
                if let Some((other, p)) = member_of.get(member.as_str()) {
                    self.err(
                        pos,
                        format!(
                            "vrrp_instance {member:?} is already in vrrp_sync_group {other:?} (line {}); an instance can be in one group only",
                            self.map.line_label(*p)
                        ),
                    );
                    continue;
                }
                member_of.insert(member, (group.name.as_str(), pos));
                if !group.sync_group_tracking_weight {
                    self.sync_member_weights(c, idx, &group.name);
                }
            }
        }
    }

    /// keepalived ignores weighted trackers of members of a sync group without
    /// `sync_group_tracking_weight`; TOML says so instead (keepalived.conf is lowered to what
    /// keepalived runs, with warnings).
    fn sync_member_weights(&mut self, c: &Config, idx: usize, group: &str) {
        let item = Item::VrrpInstance(idx);
        if !self.ok(item) {
            return;
        }
        let inst = &c.vrrp_instances[idx];
        let weighted = inst
            .track_interface
            .iter()
            .enumerate()
            .map(|(i, t)| ("track_interface", i, t.interface.as_str(), t.weight))
            .chain(
                inst.track_script
                    .iter()
                    .enumerate()
                    .map(|(i, t)| ("track_script", i, t.script.as_str(), t.weight)),
            )
            .chain(
                inst.track_file
                    .iter()
                    .enumerate()
                    .map(|(i, t)| ("track_file", i, t.track_file.as_str(), t.weight)),
            )
            .filter(|t| t.3 != 0);
        let found: Vec<_> = weighted.collect();
        for (key, i, name, weight) in found {
            self.err(
                self.map.elem(item, key, i),
                format!(
                    "{key} {name:?} has weight {weight}, but vrrp_instance {:?} is in vrrp_sync_group {group:?}, where keepalived ignores weights: set sync_group_tracking_weight = true in the group to apply it, or use weight 0 (FAULT instead of a priority change)",
                    inst.name
                ),
            );
        }
    }

    /// Every interface the configuration names exists on this host (`load_for_host`: run and
    /// reload): an instance cannot run on a missing one, a VIP cannot be added there, and a
    /// tracked one would hold its instance in FAULT — a typo would fail the director over.
    fn host(&mut self, c: &Config, h: &Host) {
        let m = self.map;
        let missing = |name: &str| !(h.has_interface)(name);
        for (idx, inst) in c.vrrp_instances.iter().enumerate() {
            let item = Item::VrrpInstance(idx);
            if !self.ok(item) {
                continue;
            }
            if missing(&inst.interface) {
                let msg = format!("interface {:?} does not exist on this host", inst.interface);
                self.err(m.key(item, "interface"), msg);
            }
            for (i, t) in inst.track_interface.iter().enumerate() {
                if missing(&t.interface) {
                    let msg =
                        format!("track_interface {:?} does not exist on this host", t.interface);
                    self.err(m.elem(item, "track_interface", i), msg);
                }
            }
            for (key, list) in [
                ("virtual_ipaddress", &inst.virtual_ipaddress),
                ("virtual_ipaddress_excluded", &inst.virtual_ipaddress_excluded),
            ] {
                for (i, vip) in list.iter().enumerate() {
                    let dev = vip.device(&inst.interface);
                    if dev != inst.interface && missing(dev) {
                        let msg =
                            format!("{key} {vip}: device {dev:?} does not exist on this host");
                        self.err(m.elem(item, key, i), msg);
                    }
                }
            }
        }
        // A real or sorry server that is this host: as a loopback address (see
        // `loopback_server`), the eBPF planes cannot deliver to it.
        if c.global.dataplane.is_ebpf() {
            for (v, vs) in c.virtual_servers.iter().enumerate() {
                let item = Item::VirtualServer(v);
                // Loopback addresses and this configuration's VIPs are refused above, on every
                // node alike (whether a VIP is held here now must not decide).
                let own =
                    |a: IpAddr| !a.is_loopback() && vip_of(c, a).is_none() && (h.is_own_address)(a);
                if let Some(s) = vs.sorry_server.filter(|s| own(s.ip())) {
                    let msg = own_server("sorry_server", s.ip(), c.global.dataplane);
                    self.err(m.key(item, "sorry_server"), msg);
                }
                for (r, rs) in vs.real_servers.iter().enumerate() {
                    if own(rs.address) {
                        let msg = own_server("real_server", rs.address, c.global.dataplane);
                        self.err(m.key(Item::RealServer(v, r), "address"), msg);
                    }
                }
            }
        }
        if let Some(s) = &c.global.lvs_sync_daemon {
            if missing(&s.interface) {
                let msg = format!(
                    "lvs_sync_daemon interface {:?} does not exist on this host",
                    s.interface
                );
                self.err(m.key(Item::Global, "lvs_sync_daemon"), msg);
            }
        }
        self.scripts_runnable(c, h);
    }

    /// Every script ha-lb would run can be started: its program exists and is executable by
    /// the user it runs as, and that user exists. keepalived checks the same at load and
    /// then disables the script (a tracker that can never fail, a hook that never runs) or
    /// falls back to its default user; ha-lb refuses the configuration instead, so that a
    /// typo or a missing package is found before it matters.
    fn scripts_runnable(&mut self, c: &Config, h: &Host) {
        let m = self.map;
        for site in script_sites(c) {
            if !self.ok(site.item) {
                continue;
            }
            if let Err(why) = (h.can_run)(&site.program, site.user.as_ref()) {
                let msg = unrunnable_message(&site, &why);
                self.err(m.key(site.item, site.key), msg);
            }
        }
    }

    /// The eBPF data plane's maps have fixed sizes: a configuration that does not fit is
    /// refused here (by `check` and by a reload, which then keeps the running one) rather than
    /// failing half-way when applied. The lookup tables must fit twice over: a reload builds
    /// every changed service's new table before it frees the old one.
    fn ebpf_capacity(&mut self, c: &Config) {
        use crate::dataplane::{
            sched::{self, Backend},
            REAL_SERVERS_PER_SERVICE_MAX,
        };
        use ha_lb_common::lb::{LB_REALS_MAX, LB_RING_CHUNK, LB_RING_CHUNKS, LB_SERVICES_MAX};
        let dp = c.global.dataplane.as_str();
        let (mut reals, mut chunks) = (0usize, 0usize);
        for (v, vs) in c.virtual_servers.iter().enumerate() {
            let item = Item::VirtualServer(v);
            let pos = self.map.key(item, "address");
            if v == LB_SERVICES_MAX as usize {
                self.err(
                    pos,
                    format!("more than {LB_SERVICES_MAX} services (each virtual_server, and each member of a virtual_server_group): the {dp} data plane holds at most {LB_SERVICES_MAX}"),
                );
            }
            // The sorry server takes a real server's place when quorum is lost.
            let n = vs.real_servers.len() + vs.sorry_server.is_some() as usize;
            if n > REAL_SERVERS_PER_SERVICE_MAX {
                self.err(
                    pos,
                    format!("virtual_server {}: {n} real servers (with the sorry_server): the {dp} data plane holds at most {REAL_SERVERS_PER_SERVICE_MAX} per virtual_server", vs.key()),
                );
                continue;
            }
            if reals <= LB_REALS_MAX as usize && reals + n > LB_REALS_MAX as usize {
                self.err(
                    pos,
                    format!("virtual_server {}: more than {LB_REALS_MAX} real servers in all virtual_servers: the {dp} data plane holds at most {LB_REALS_MAX}", vs.key()),
                );
            }
            reals += n;
            let backends: Vec<Backend> = vs
                .real_servers
                .iter()
                .enumerate()
                .map(|(i, r)| Backend { key: i.to_be_bytes().to_vec(), weight: r.weight })
                .collect();
            let len = sched::ring(vs.lb_algo, &backends, None).0.len();
            let before = chunks;
            chunks += len.div_ceil(LB_RING_CHUNK);
            let room = LB_RING_CHUNKS as usize / 2;
            if before <= room && chunks > room {
                self.err(
                    pos,
                    format!("virtual_server {}: the lookup tables of the virtual_servers so far need {} entries, more than the {dp} data plane keeps room for ({}: half its {} entries, so that a reload can build new tables beside the old); use fewer real servers or lb_algo lc/wlc, which need no table", vs.key(), chunks * LB_RING_CHUNK, room * LB_RING_CHUNK, LB_RING_CHUNKS as usize * LB_RING_CHUNK),
                );
            }
        }
    }

    fn virtual_servers(&mut self, c: &Config) {
        let mut keys: HashMap<VirtualServerKey, Pos> = HashMap::new();
        for (v, vs) in c.virtual_servers.iter().enumerate() {
            let item = Item::VirtualServer(v);
            let m = self.map;
            if m.keys_clean(item, &["address", "port", "protocol"]) {
                let pos = m.key(item, "address");
                match keys.get(&vs.key()) {
                    Some(p) => self.err(
                        pos,
                        format!(
                            "virtual_server {} is already defined at line {}",
                            vs.key(),
                            self.map.line_label(*p)
                        ),
                    ),
                    None => {
                        keys.insert(vs.key(), pos);
                    }
                }
            }
            if !self.ok(item) {
                continue;
            }

            if vs.hysteresis > 0 && vs.hysteresis >= vs.quorum {
                self.err(
                    m.key(item, "hysteresis"),
                    format!("hysteresis {} must be less than quorum {}", vs.hysteresis, vs.quorum),
                );
            }
            let total: u64 = vs.real_servers.iter().map(|r| r.weight as u64).sum();
            let dynamic =
                vs.real_servers.iter().any(|r| r.check.as_ref().is_some_and(|c| c.is_dynamic()));
            if !vs.real_servers.is_empty() && !dynamic && (vs.quorum as u64) > total {
                self.err(
                    m.key(item, "quorum"),
                    format!(
                        "quorum {} exceeds the total weight {total} of the real servers, so the service could never be up",
                        vs.quorum
                    ),
                );
            }
            if let Some(sorry) = vs.sorry_server {
                let spos = m.key(item, "sorry_server");
                if c.global.dataplane.is_ebpf() && sorry.ip().is_loopback() {
                    self.err(spos, loopback_server("sorry_server", sorry.ip(), c.global.dataplane));
                }
                if let Some(inst) = vip_of(c, sorry.ip()).filter(|_| c.global.dataplane.is_ebpf()) {
                    let msg = vip_server("sorry_server", sorry.ip(), inst, c.global.dataplane);
                    self.err(spos, msg);
                }
                if AddrFamily::of(&sorry.ip()) != vs.family() {
                    self.err(
                        spos,
                        format!(
                            "sorry_server {} is {} but the virtual_server is {}; {} cannot mix address families",
                            sorry.ip(),
                            AddrFamily::of(&sorry.ip()).as_str(),
                            vs.family().as_str(),
                            vs.lb_kind.as_str()
                        ),
                    );
                } else if vs.lb_kind != LbKind::Nat && sorry.port() != vs.port {
                    self.err(
                        spos,
                        format!(
                            "sorry_server port {} differs from the virtual_server port {}; {} cannot remap ports",
                            sorry.port(),
                            vs.port,
                            vs.lb_kind.as_str()
                        ),
                    );
                }
            }

            let mut seen: HashMap<std::net::SocketAddr, Pos> = HashMap::new();
            for (r, rs) in vs.real_servers.iter().enumerate() {
                let ritem = Item::RealServer(v, r);
                if !self.ok(ritem) {
                    continue;
                }
                let apos = m.key(ritem, "address");
                if c.global.dataplane.is_ebpf() && rs.address.is_loopback() {
                    self.err(apos, loopback_server("real_server", rs.address, c.global.dataplane));
                }
                if let Some(inst) = vip_of(c, rs.address).filter(|_| c.global.dataplane.is_ebpf()) {
                    let msg = vip_server("real_server", rs.address, inst, c.global.dataplane);
                    self.err(apos, msg);
                }
                if AddrFamily::of(&rs.address) != vs.family() {
                    self.err(
                        apos,
                        format!(
                            "real_server {} is {} but the virtual_server is {}; {} cannot mix address families",
                            rs.address,
                            AddrFamily::of(&rs.address).as_str(),
                            vs.family().as_str(),
                            vs.lb_kind.as_str()
                        ),
                    );
                }
                match seen.get(&rs.key()) {
                    Some(p) => self.err(
                        apos,
                        format!(
                            "real_server {} is already in this virtual_server (line {})",
                            rs.key(),
                            self.map.line_label(*p)
                        ),
                    ),
                    None => {
                        seen.insert(rs.key(), apos);
                    }
                }
                if vs.lb_kind != LbKind::Nat && rs.port != vs.port {
                    let msg = match &vs.group {
                        Some(g) => format!(
                            "real_server port {} differs from port {} of members of virtual_server_group {g:?}; {} forwards without rewriting ports (use NAT, or a virtual_server per port)",
                            rs.port,
                            vs.port,
                            vs.lb_kind.as_str()
                        ),
                        None => format!(
                            "real_server port {} differs from the virtual_server port {}; {} forwards without rewriting ports (use NAT, or port = {})",
                            rs.port,
                            vs.port,
                            vs.lb_kind.as_str(),
                            vs.port
                        ),
                    };
                    self.err(m.key(ritem, "port"), msg);
                }
                if let Some(chk) = &rs.check {
                    let citem = Item::Check(v, r);
                    if let Some(conn) = chk.kind.connect() {
                        if let Some(b) = conn.bindto {
                            if AddrFamily::of(&b) != AddrFamily::of(&conn.target.ip()) {
                                self.err(
                                    m.key(citem, "bindto"),
                                    format!(
                                        "bindto {b} is {} but the check connects to {} ({})",
                                        AddrFamily::of(&b).as_str(),
                                        conn.target.ip(),
                                        AddrFamily::of(&conn.target.ip()).as_str()
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A real or sorry server on this host, which the eBPF data planes cannot reach: they
/// forward frames out of an interface toward another host (a loopback address goes nowhere).
fn loopback_server(what: &str, addr: IpAddr, dp: Dataplane) -> String {
    format!(
        "{what} {addr} is a loopback address: the {} data plane forwards to other hosts and cannot deliver to this one, so its traffic would be lost; use dataplane = \"ipvs\" (kernel IPVS delivers to a local real server), or run the service on another host",
        dp.as_str()
    )
}

/// The vrrp_instance that has `addr` as a VIP (advertised or excluded), if any.
fn vip_of(c: &Config, addr: IpAddr) -> Option<&str> {
    c.vrrp_instances.iter().find(|i| i.all_vips().any(|v| v.addr == addr)).map(|i| i.name.as_str())
}

fn vip_server(what: &str, addr: IpAddr, inst: &str, dp: Dataplane) -> String {
    format!(
        "{what} {addr} is a VIP of vrrp_instance {inst:?}: its master is this director, and the {} data plane forwards to other hosts only; use dataplane = \"ipvs\" for a service on the director itself",
        dp.as_str()
    )
}

fn own_server(what: &str, addr: IpAddr, dp: Dataplane) -> String {
    format!(
        "{what} {addr} is an address of this host: the {} data plane forwards to other hosts and cannot deliver to this one, so its traffic would be lost; use dataplane = \"ipvs\" (kernel IPVS delivers to a local real server), or run the service on another host",
        dp.as_str()
    )
}

fn defined<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        " (none are defined)".to_string()
    } else {
        format!(" (defined: {})", names.join(", "))
    }
}

fn fmt_dur(d: Duration) -> String {
    let s = format!("{}", d.as_secs_f64());
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Where a configuration runs a script (see [`script_sites`]).
#[derive(Debug, Clone)]
pub struct ScriptSite {
    pub(crate) item: Item,
    pub(crate) key: &'static str,
    /// What it is, for messages: `vrrp_script "chk"`, `notify_master`, `MISC_CHECK`.
    pub what: String,
    pub program: String,
    /// Who runs it (`None`: the default script user).
    pub user: Option<ScriptUser>,
    pub kind: ScriptKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptKind {
    /// A tracked `vrrp_script` of this name.
    Track(String),
    /// The MISC_CHECK of real server `.1` of virtual server `.0`.
    Misc(usize, usize),
    /// A notify or quorum hook.
    Hook,
}

/// Every script the configuration would run: notify hooks where they are written (global,
/// an instance's or a sync group's own: one equal to the global hook is the inherited one),
/// the `vrrp_script`s some instance tracks (keepalived runs no other), quorum and real
/// server hooks, MISC_CHECKs.
pub fn script_sites(c: &Config) -> Vec<ScriptSite> {
    let default_user = c.global.script_user.as_ref();
    let mut out = Vec::new();
    fn hooks(n: &Notify) -> [(&'static str, Option<&Script>); 5] {
        [
            ("notify_master", n.notify_master.as_ref()),
            ("notify_backup", n.notify_backup.as_ref()),
            ("notify_fault", n.notify_fault.as_ref()),
            ("notify_stop", n.notify_stop.as_ref()),
            ("notify", n.notify.as_ref()),
        ]
    }
    let mut push = |item, key, what: String, s: &Script, user: Option<&ScriptUser>, kind| {
        out.push(ScriptSite {
            item,
            key,
            what,
            program: s.argv.first().cloned().unwrap_or_default(),
            user: user.cloned(),
            kind,
        })
    };
    for (key, s) in hooks(&c.global.notify) {
        if let Some(s) = s {
            push(Item::Global, key, key.into(), s, default_user, ScriptKind::Hook);
        }
    }
    let items = (c.vrrp_instances.iter().enumerate())
        .map(|(i, x)| (Item::VrrpInstance(i), &x.notify))
        .chain(
            (c.vrrp_sync_groups.iter().enumerate())
                .map(|(i, g)| (Item::VrrpSyncGroup(i), &g.notify)),
        );
    for (item, notify) in items {
        for ((key, s), (_, global)) in hooks(notify).into_iter().zip(hooks(&c.global.notify)) {
            if let Some(s) = s.filter(|s| Some(*s) != global) {
                push(item, key, key.into(), s, default_user, ScriptKind::Hook);
            }
        }
    }
    let tracked: HashSet<&str> = (c.vrrp_instances.iter())
        .flat_map(|i| i.track_script.iter().map(|t| t.script.as_str()))
        .collect();
    for (i, s) in c.vrrp_scripts.iter().enumerate() {
        if tracked.contains(s.name.as_str()) {
            let user = s.user.as_ref().or(default_user);
            let what = format!("vrrp_script {:?}", s.name);
            let kind = ScriptKind::Track(s.name.clone());
            push(Item::VrrpScript(i), "script", what, &s.script, user, kind);
        }
    }
    for (v, vs) in c.virtual_servers.iter().enumerate() {
        for (key, s) in [("quorum_up", &vs.quorum_up), ("quorum_down", &vs.quorum_down)] {
            if let Some(s) = s {
                push(Item::VirtualServer(v), key, key.into(), s, default_user, ScriptKind::Hook);
            }
        }
        for (r, rs) in vs.real_servers.iter().enumerate() {
            for (key, s) in [("notify_up", &rs.notify_up), ("notify_down", &rs.notify_down)] {
                if let Some(s) = s {
                    let item = Item::RealServer(v, r);
                    push(item, key, key.into(), s, default_user, ScriptKind::Hook);
                }
            }
            if let Some(HealthCheck { kind: CheckKind::Misc(misc), .. }) = &rs.check {
                let user = misc.user.as_ref().or(default_user);
                let kind = ScriptKind::Misc(v, r);
                push(
                    Item::Check(v, r),
                    "misc_path",
                    "MISC_CHECK".into(),
                    &misc.misc_path,
                    user,
                    kind,
                );
            }
        }
    }
    out
}

/// The sentence for a script that cannot be run (`why`), saying what keepalived does.
pub fn unrunnable_message(site: &ScriptSite, why: &str) -> String {
    let instead = match site.kind {
        ScriptKind::Track(_) => {
            "keepalived would disable this tracker and run as if it were not there"
        }
        ScriptKind::Misc(..) => "keepalived would not run it",
        ScriptKind::Hook => "keepalived would not run it",
    };
    let fix = if why.starts_with("script user:") {
        "create the user, or name another with script_user (or the script's user)"
    } else {
        "install the program, give its full path, or remove it"
    };
    format!("{} cannot be run: {why} ({instead}); {fix}", site.what)
}
