//! The IPVS planner (pure): what the kernel should hold for a [`DesiredState`], and the ordered
//! commands that take it there from what it holds now.
//!
//! Order, so that no live service is ever left without a destination it should have:
//! 1. new services, each followed at once by all of its destinations;
//! 2. changed services: scheduler/flags/persistence (`SET_SERVICE`, which keeps the service's
//!    destinations and connections), then new destinations, then changed ones (weight,
//!    forwarding method), and only then removed ones;
//! 3. removed services, last (a virtual server that moves to a new address is up at the new
//!    one before it leaves the old: the data plane deletes no service in an apply where one
//!    failed to be created).
//!
//! Weight 0 is quiescent in IPVS as in the desired state: existing connections continue, no
//! new ones. A *deleted* destination's connections do not continue: the kernel keeps their
//! entries, but drops their packets (`ip_vs_in`: the destination is no longer
//! `IP_VS_DEST_F_AVAILABLE` → `NF_DROP`) until they time out, as with keepalived.
//! `net.ipv4.vs.expire_nodest_conn` only decides whether such an entry is expired at its first
//! packet, so that the client's next attempt is scheduled afresh.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use super::wire::{
    self, DestParams, SvcParams, IPVS_CMD_NEW_DEST, IPVS_CMD_NEW_SERVICE, IPVS_CMD_SET_DEST,
    IPVS_CMD_SET_SERVICE, IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_LOCALNODE, IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_TUNNEL, IP_VS_SVC_F_PERSISTENT, IP_VS_SVC_F_SCHED_HASH_PORT,
};
use crate::dataplane::{
    ApplyReport, DataplaneError, DesiredState, LbAlgo, LbKind, ServiceSpec, VirtualServerKey,
};

/// One service as IPVS holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelService {
    pub params: SvcParams,
    /// By (address, port) as IPVS keys them: for DR the port is the virtual port.
    pub dests: BTreeMap<(IpAddr, u16), DestParams>,
}

/// Services by identity, as IPVS holds them (or should).
pub type View = BTreeMap<VirtualServerKey, KernelService>;

/// One IPVS command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    NewService(VirtualServerKey, SvcParams),
    SetService(VirtualServerKey, SvcParams),
    DelService(VirtualServerKey),
    NewDest(VirtualServerKey, IpAddr, u16, DestParams),
    SetDest(VirtualServerKey, IpAddr, u16, DestParams),
    DelDest(VirtualServerKey, IpAddr, u16),
}

impl Op {
    /// The request for generic-netlink family `family`.
    pub fn encode(&self, family: u16, seq: u32) -> Vec<u8> {
        match self {
            Op::NewService(vs, p) => wire::service(family, seq, IPVS_CMD_NEW_SERVICE, vs, p),
            Op::SetService(vs, p) => wire::service(family, seq, IPVS_CMD_SET_SERVICE, vs, p),
            Op::DelService(vs) => wire::del_service(family, seq, vs),
            Op::NewDest(vs, a, port, p) => {
                wire::dest(family, seq, IPVS_CMD_NEW_DEST, vs, *a, *port, Some(p))
            }
            Op::SetDest(vs, a, port, p) => {
                wire::dest(family, seq, IPVS_CMD_SET_DEST, vs, *a, *port, Some(p))
            }
            Op::DelDest(vs, a, port) => {
                wire::dest(family, seq, wire::IPVS_CMD_DEL_DEST, vs, *a, *port, None)
            }
        }
    }

    pub fn service(&self) -> &VirtualServerKey {
        match self {
            Op::NewService(vs, _)
            | Op::SetService(vs, _)
            | Op::DelService(vs)
            | Op::NewDest(vs, ..)
            | Op::SetDest(vs, ..)
            | Op::DelDest(vs, ..) => vs,
        }
    }
}

fn rs(a: &IpAddr, port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(*a, port)
}

impl fmt::Display for Op {
    /// In ipvsadm's words, for error messages and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::NewService(vs, p) => write!(f, "add virtual_server {vs} (scheduler {})", p.sched),
            Op::SetService(vs, p) => write!(f, "edit virtual_server {vs} (scheduler {})", p.sched),
            Op::DelService(vs) => write!(f, "delete virtual_server {vs}"),
            Op::NewDest(vs, a, port, p) => {
                write!(f, "add real_server {} weight {} to {vs}", rs(a, *port), p.weight)
            }
            Op::SetDest(vs, a, port, p) => {
                write!(f, "edit real_server {} weight {} of {vs}", rs(a, *port), p.weight)
            }
            Op::DelDest(vs, a, port) => write!(f, "delete real_server {} from {vs}", rs(a, *port)),
        }
    }
}

/// IPVS's scheduler module for `lb_algo` (`ip_vs_<name>`).
pub fn sched_name(a: LbAlgo) -> &'static str {
    // The config's names are IPVS's own.
    a.as_str()
}

pub fn fwd_method(k: LbKind) -> u32 {
    match k {
        LbKind::Nat => IP_VS_CONN_F_MASQ,
        LbKind::Dr => IP_VS_CONN_F_DROUTE,
        LbKind::Tun => IP_VS_CONN_F_TUNNEL,
    }
}

/// The service parameters for one spec.
pub fn service_params(vs: &VirtualServerKey, spec: &ServiceSpec) -> SvcParams {
    let mut flags = 0;
    if spec.persistence_timeout > 0 {
        flags |= IP_VS_SVC_F_PERSISTENT;
    }
    if spec.hash_port && matches!(spec.lb_algo, LbAlgo::Sh | LbAlgo::Mh) {
        flags |= IP_VS_SVC_F_SCHED_HASH_PORT;
    }
    SvcParams {
        sched: sched_name(spec.lb_algo).to_string(),
        flags,
        timeout: spec.persistence_timeout,
        // Persistence per client address (ipvsadm's default granularity).
        netmask: match (vs.address.is_ipv4(), spec.persistence_granularity) {
            (true, 0) => u32::MAX,
            // IPv4: the netmask in network order, as ipvsadm -M sends it.
            (true, p) => (u32::MAX << (32 - p.min(32) as u32)).to_be(),
            (false, 0) => 128,
            (false, p) => p.min(128) as u32,
        },
    }
}

/// What IPVS should hold for `desired`. Checks what IPVS needs beyond
/// [`DesiredState::validate`]: weights fit IPVS's `int`, and DR real servers (which IPVS keys
/// by address and the *virtual* port) differ by address.
pub fn target(desired: &DesiredState) -> Result<View, DataplaneError> {
    desired.validate()?;
    let mut view = View::new();
    for (vs, spec) in &desired.services {
        let fwd = fwd_method(spec.lb_kind);
        let mut dests = BTreeMap::new();
        for r in &spec.real_servers {
            if r.weight > i32::MAX as u32 {
                return Err(DataplaneError::Invalid(format!(
                    "virtual_server {vs}: real_server {} weight {} (IPVS takes at most {})",
                    r.addr,
                    r.weight,
                    i32::MAX
                )));
            }
            // DR (like TUN) keeps the virtual port: IPVS stores the virtual port, as ipvsadm
            // does for -g.
            let port = match spec.lb_kind {
                LbKind::Nat => r.port,
                LbKind::Dr | LbKind::Tun => vs.port,
            };
            let p = DestParams { fwd, weight: r.weight, u_thresh: 0, l_thresh: 0 };
            if dests.insert((r.addr, port), p).is_some() {
                return Err(DataplaneError::Invalid(format!(
                    "virtual_server {vs}: real_server {} listed twice (with lb_kind DR the port \
                     is the virtual server's)",
                    r.addr
                )));
            }
        }
        view.insert(*vs, KernelService { params: service_params(vs, spec), dests });
    }
    Ok(view)
}

/// Whether a destination as IPVS holds it (`cur`) is what we want. Older kernels turn the
/// forwarding method of a destination whose address is local into "local node" whatever they
/// were asked (6.1 keeps what it was given): that is not a difference to correct.
pub fn dest_matches(cur: &DestParams, want: &DestParams) -> bool {
    (cur.fwd == want.fwd || cur.fwd == IP_VS_CONN_F_LOCALNODE)
        && (cur.weight, cur.u_thresh, cur.l_thresh) == (want.weight, want.u_thresh, want.l_thresh)
}

fn service_matches(cur: &KernelService, want: &KernelService) -> bool {
    cur.params == want.params
        && cur.dests.len() == want.dests.len()
        && want.dests.iter().all(|(k, w)| cur.dests.get(k).is_some_and(|c| dest_matches(c, w)))
}

/// The commands that take IPVS from `current` to `target`, in a safe order (see the module
/// docs), and what they change.
pub fn plan(current: &View, target: &View) -> (Vec<Op>, ApplyReport) {
    let mut ops = Vec::new();

    // 1. New services, fully populated at once.
    for (vs, t) in target.iter().filter(|(vs, _)| !current.contains_key(vs)) {
        ops.push(Op::NewService(*vs, t.params.clone()));
        for (&(a, port), p) in &t.dests {
            ops.push(Op::NewDest(*vs, a, port, *p));
        }
    }

    // 2. Changed services: additions and edits before removals.
    for (vs, t) in target {
        let Some(c) = current.get(vs) else { continue };
        if service_matches(c, t) {
            continue;
        }
        if c.params != t.params {
            ops.push(Op::SetService(*vs, t.params.clone()));
        }
        for (&(a, port), p) in &t.dests {
            if !c.dests.contains_key(&(a, port)) {
                ops.push(Op::NewDest(*vs, a, port, *p));
            }
        }
        for (&(a, port), p) in &t.dests {
            match c.dests.get(&(a, port)) {
                Some(old) if !dest_matches(old, p) => ops.push(Op::SetDest(*vs, a, port, *p)),
                _ => {}
            }
        }
        for &(a, port) in c.dests.keys() {
            if !t.dests.contains_key(&(a, port)) {
                ops.push(Op::DelDest(*vs, a, port));
            }
        }
    }

    // 3. Removed services.
    for vs in current.keys().filter(|vs| !target.contains_key(vs)) {
        ops.push(Op::DelService(*vs));
    }
    let report = report(current, &ops);
    (ops, report)
}

/// What `ops`, carried out on `current`, change: the report of a whole plan, or of the part
/// of one that went through.
pub fn report(current: &View, ops: &[Op]) -> ApplyReport {
    let mut r = ApplyReport::default();
    let note = |list: &mut Vec<VirtualServerKey>, vs: &VirtualServerKey| {
        if !list.contains(vs) {
            list.push(*vs);
        }
    };
    for op in ops {
        let vs = op.service();
        // A destination change on a service created by the same ops is part of its creation.
        let created = r.services_added.contains(vs);
        match op {
            Op::NewService(..) => note(&mut r.services_added, vs),
            Op::DelService(_) => {
                note(&mut r.services_removed, vs);
                r.real_servers_removed += current.get(vs).map_or(0, |c| c.dests.len());
            }
            Op::SetService(..) => note(&mut r.services_changed, vs),
            Op::NewDest(..) => r.real_servers_added += 1,
            Op::SetDest(_, a, port, p) => {
                let old = current.get(vs).and_then(|c| c.dests.get(&(*a, *port)));
                if old.is_some_and(|o| o.weight != p.weight) {
                    r.real_servers_reweighted += 1;
                }
            }
            Op::DelDest(..) => r.real_servers_removed += 1,
        }
        if matches!(op, Op::NewDest(..) | Op::SetDest(..) | Op::DelDest(..)) && !created {
            note(&mut r.services_changed, vs);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Protocol, RealServerSpec};

    fn vs(s: &str) -> VirtualServerKey {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        VirtualServerKey { address: sa.ip(), port: sa.port(), protocol: Protocol::Tcp }
    }

    fn rs(a: &str, port: u16, weight: u32) -> RealServerSpec {
        RealServerSpec { addr: a.parse().unwrap(), port, weight }
    }

    fn spec(algo: LbAlgo, kind: LbKind, reals: &[RealServerSpec]) -> ServiceSpec {
        let mut s = ServiceSpec::new(algo, kind);
        s.real_servers = reals.to_vec();
        s
    }

    fn state(entries: &[(&str, ServiceSpec)]) -> DesiredState {
        DesiredState { services: entries.iter().map(|(k, s)| (vs(k), s.clone())).collect() }
    }

    fn pos(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).expect("op present")
    }

    #[test]
    fn persistence_granularity_is_the_netmask_ipvsadm_sends() {
        let mut s = spec(LbAlgo::Rr, LbKind::Tun, &[rs("198.18.2.10", 443, 1)]);
        s.persistence_timeout = 60;
        s.persistence_granularity = 24;
        let p = service_params(&vs("198.18.0.1:443"), &s);
        // IPv4: the netmask in network order (bytes ff ff ff 00 on the wire).
        assert_eq!(p.netmask.to_ne_bytes(), [0xff, 0xff, 0xff, 0x00]);
        let mut s6 = spec(LbAlgo::Rr, LbKind::Nat, &[rs("fd48:4c42::10", 80, 1)]);
        s6.persistence_timeout = 60;
        s6.persistence_granularity = 64;
        assert_eq!(service_params(&vs("[fd48:4c42::1]:80"), &s6).netmask, 64);
        let d = target(&state(&[("198.18.0.1:443", s)])).unwrap();
        let dest = d[&vs("198.18.0.1:443")].dests[&("198.18.2.10".parse().unwrap(), 443)];
        assert_eq!(dest.fwd, IP_VS_CONN_F_TUNNEL, "TUN maps to IPVS tunnelling");
    }

    #[test]
    fn maps_algo_kind_persistence_and_hash_port() {
        let mut s = spec(LbAlgo::Mh, LbKind::Dr, &[rs("198.18.2.10", 8080, 2)]);
        s.persistence_timeout = 300;
        s.hash_port = true;
        let t = target(&state(&[("198.18.0.1:443", s.clone())])).unwrap();
        let k = &t[&vs("198.18.0.1:443")];
        assert_eq!(
            k.params,
            SvcParams {
                sched: "mh".into(),
                flags: IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_SCHED_HASH_PORT,
                timeout: 300,
                netmask: u32::MAX
            }
        );
        // DR keeps the virtual port.
        let d = k.dests[&("198.18.2.10".parse().unwrap(), 443)];
        assert_eq!(d, DestParams { fwd: IP_VS_CONN_F_DROUTE, weight: 2, u_thresh: 0, l_thresh: 0 });
        // hash_port means nothing to rr; IPv6 persistence granularity is a prefix length.
        let mut s6 = spec(LbAlgo::Rr, LbKind::Nat, &[rs("fd48:4c42::10", 80, 1)]);
        s6.hash_port = true;
        let t = target(&state(&[("[fd48:4c42::1]:80", s6)])).unwrap();
        let k = &t[&vs("[fd48:4c42::1]:80")];
        assert_eq!((k.params.flags, k.params.netmask, k.params.sched.as_str()), (0, 128, "rr"));
        assert_eq!(k.dests[&("fd48:4c42::10".parse().unwrap(), 80)].fwd, IP_VS_CONN_F_MASQ);
        for a in LbAlgo::ALL {
            assert_eq!(sched_name(a), ["rr", "wrr", "lc", "wlc", "sh", "mh"][a as usize]);
        }
    }

    #[test]
    fn rejects_what_ipvs_cannot_hold() {
        let s =
            spec(LbAlgo::Rr, LbKind::Dr, &[rs("198.18.2.10", 8080, 1), rs("198.18.2.10", 8081, 1)]);
        let e = target(&state(&[("198.18.0.1:80", s)])).unwrap_err().to_string();
        assert!(e.contains("DR"), "{e}");
        let s = spec(LbAlgo::Rr, LbKind::Nat, &[rs("198.18.2.10", 8080, u32::MAX)]);
        assert!(target(&state(&[("198.18.0.1:80", s)])).is_err());
    }

    #[test]
    fn a_new_service_is_populated_right_after_it_is_created() {
        let d = state(&[
            ("198.18.0.1:80", spec(LbAlgo::Wrr, LbKind::Nat, &[rs("198.18.2.10", 8080, 1)])),
            (
                "198.18.0.2:80",
                spec(
                    LbAlgo::Rr,
                    LbKind::Nat,
                    &[rs("198.18.2.11", 8080, 1), rs("198.18.2.12", 8080, 0)],
                ),
            ),
        ]);
        let (ops, rep) = plan(&View::new(), &target(&d).unwrap());
        assert_eq!(rep.services_added.len(), 2);
        assert_eq!(rep.real_servers_added, 3);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|o| match o {
                Op::NewService(..) => "S",
                Op::NewDest(..) => "D",
                _ => "?",
            })
            .collect();
        assert_eq!(kinds, ["S", "D", "S", "D", "D"]);
        // Weight 0 is created as such: quiescent from the start.
        assert!(ops.iter().any(|o| matches!(o, Op::NewDest(_, _, _, p) if p.weight == 0)));
        // Applying the same state again changes nothing.
        let t = target(&d).unwrap();
        let (ops, rep) = plan(&t, &t);
        assert!(ops.is_empty() && rep.is_empty());
    }

    #[test]
    fn changes_add_and_edit_before_they_remove() {
        let k = "198.18.0.1:80";
        let before = target(&state(&[(
            k,
            spec(
                LbAlgo::Rr,
                LbKind::Nat,
                &[rs("198.18.2.10", 8080, 1), rs("198.18.2.11", 8080, 1)],
            ),
        )]))
        .unwrap();
        // Every server replaced: the service must never be empty in between.
        let mut s = spec(LbAlgo::Wlc, LbKind::Nat, &[rs("198.18.2.12", 8080, 3)]);
        s.persistence_timeout = 60;
        let after = target(&state(&[(k, s)])).unwrap();
        let (ops, rep) = plan(&before, &after);
        assert_eq!(rep.services_changed, vec![vs(k)]);
        assert_eq!((rep.real_servers_added, rep.real_servers_removed), (1, 2));
        let set =
            pos(&ops, |o| matches!(o, Op::SetService(_, p) if p.sched == "wlc" && p.timeout == 60));
        let add = pos(&ops, |o| matches!(o, Op::NewDest(..)));
        let first_del = pos(&ops, |o| matches!(o, Op::DelDest(..)));
        assert!(set < add && add < first_del, "{ops:?}");
        assert_eq!(ops.len(), 4);

        // Weight changes (drain and undrain) are edits, before removals; nothing else moves.
        let before = after;
        let after = target(&state(&[(k, {
            let mut s = spec(
                LbAlgo::Wlc,
                LbKind::Nat,
                &[rs("198.18.2.12", 8080, 0), rs("198.18.2.13", 8080, 1)],
            );
            s.persistence_timeout = 60;
            s
        })]))
        .unwrap();
        let (ops, rep) = plan(&before, &after);
        assert_eq!(rep.real_servers_reweighted, 1);
        assert_eq!(
            ops,
            vec![
                Op::NewDest(
                    vs(k),
                    "198.18.2.13".parse().unwrap(),
                    8080,
                    DestParams { fwd: 0, weight: 1, u_thresh: 0, l_thresh: 0 }
                ),
                Op::SetDest(
                    vs(k),
                    "198.18.2.12".parse().unwrap(),
                    8080,
                    DestParams { fwd: 0, weight: 0, u_thresh: 0, l_thresh: 0 }
                ),
            ]
        );
    }

    #[test]
    fn nat_to_dr_with_the_same_port_edits_the_forwarding_method_in_place() {
        let k = "198.18.0.1:80";
        let before =
            target(&state(&[(k, spec(LbAlgo::Rr, LbKind::Nat, &[rs("198.18.2.10", 80, 1)]))]))
                .unwrap();
        let after =
            target(&state(&[(k, spec(LbAlgo::Rr, LbKind::Dr, &[rs("198.18.2.10", 80, 1)]))]))
                .unwrap();
        let (ops, rep) = plan(&before, &after);
        assert!(matches!(&ops[..], [Op::SetDest(_, _, 80, p)] if p.fwd == IP_VS_CONN_F_DROUTE));
        assert_eq!(rep.real_servers_reweighted, 0);
        // With a remapped port, the destination's identity changes: add, then delete.
        let before =
            target(&state(&[(k, spec(LbAlgo::Rr, LbKind::Nat, &[rs("198.18.2.10", 8080, 1)]))]))
                .unwrap();
        let (ops, _) = plan(&before, &after);
        assert!(matches!(&ops[..], [Op::NewDest(_, _, 80, _), Op::DelDest(_, _, 8080)]), "{ops:?}");
    }

    #[test]
    fn a_local_node_destination_is_not_a_difference() {
        let k = "198.18.0.1:80";
        let want = target(&state(&[(k, spec(LbAlgo::Rr, LbKind::Nat, &[rs("127.0.0.1", 80, 1)]))]))
            .unwrap();
        let mut held = want.clone();
        let d = held.get_mut(&vs(k)).unwrap().dests.values_mut().next().unwrap();
        d.fwd = IP_VS_CONN_F_LOCALNODE;
        let (ops, rep) = plan(&held, &want);
        assert!(ops.is_empty() && rep.is_empty(), "{ops:?}");
        // A weight difference still is.
        held.get_mut(&vs(k)).unwrap().dests.values_mut().next().unwrap().weight = 2;
        assert_eq!(plan(&held, &want).0.len(), 1);
    }

    #[test]
    fn removed_services_go_last() {
        let old = target(&state(&[(
            "198.18.0.1:80",
            spec(LbAlgo::Rr, LbKind::Nat, &[rs("198.18.2.10", 8080, 1)]),
        )]))
        .unwrap();
        let new = target(&state(&[(
            "198.18.0.9:80",
            spec(LbAlgo::Rr, LbKind::Nat, &[rs("198.18.2.10", 8080, 1)]),
        )]))
        .unwrap();
        let (ops, rep) = plan(&old, &new);
        assert!(matches!(ops.last(), Some(Op::DelService(v)) if *v == vs("198.18.0.1:80")));
        assert!(matches!(ops[0], Op::NewService(..)));
        assert_eq!((rep.services_added.len(), rep.services_removed.len()), (1, 1));
        assert_eq!((rep.real_servers_added, rep.real_servers_removed), (1, 1));
    }

    #[test]
    fn ops_describe_themselves_in_config_words() {
        let o = Op::NewDest(
            vs("198.18.0.1:80"),
            "198.18.2.10".parse().unwrap(),
            8080,
            DestParams { fwd: 0, weight: 2, u_thresh: 0, l_thresh: 0 },
        );
        assert_eq!(o.to_string(), "add real_server 198.18.2.10:8080 weight 2 to 198.18.0.1:80 TCP");
        assert_eq!(o.encode(0x1d, 1)[16], IPVS_CMD_NEW_DEST);
    }
}
