//! One running `vrrp_instance`: drives the pure [`Machine`] with the real edges — the VRRP
//! transport, the VIP manager and the GARP/NA scheduler — and reports state changes.
//!
//! The task owns the machine; everything else talks to it through [`InstanceHandle`]:
//! commands in (shutdown, fault, priority adjustment from tracking), state changes out (to the
//! daemon, which runs notify scripts and feeds the reconciler), and a `watch` snapshot for
//! status output.

use std::{net::IpAddr, time::Instant};

use futures_util::FutureExt as _;

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, error, info, warn};

use super::{
    garp::{GarpCommand, GarpConfig},
    machine::{Action, Counters, Machine, Reason, State},
    packet::{self, RxOptions, V3Checksum},
    socket::{Interface, ReceivedPacket, VrrpTransport},
    sync_group::GroupOrder,
    vip::{VipManager, VirtualIpAddress},
};

/// What an instance tells the daemon.
#[derive(Debug, Clone)]
pub enum InstanceEvent {
    Changed(StateChange),
    /// A sync group member (in BACKUP) would become MASTER, or no longer would.
    SyncGroupReady {
        instance: String,
        ready: bool,
    },
}

/// A state change, as the daemon sees it.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub instance: String,
    pub from: State,
    pub to: State,
    pub reason: Reason,
    pub effective_priority: u8,
}

/// What the instance task accepts.
#[derive(Debug)]
pub enum InstanceCommand {
    /// Graceful stop (make-before-break as MASTER). A second one forces the VIPs off at once.
    Shutdown,
    /// Tracking says the instance cannot serve (keepalived FAULT), or can again.
    SetFault(bool),
    /// Tracking weights: effective priority = base + adjust (clamped).
    SetPriorityAdjust(i32),
    /// The sync group's decision ([`super::sync_group`]).
    SyncGroup(GroupOrder),
    /// A reload took the instance out of its sync group.
    LeaveSyncGroup,
    /// A reload changed what changes in place ([`InPlace`]): the state stays.
    Reconfigure(Box<InPlace>),
    /// Housekeeping: put back the VIPs someone else removed while they are held
    /// ([`restore_vips`]).
    RestoreVips,
    /// Connection sync: the master's whole table is arriving, or no longer is
    /// ([`Machine::extend_start_hold`]).
    ExtendStartHold(bool),
}

/// What a reload changes in a running instance without re-running its election (as
/// keepalived's `clear_diff_vrrp`): the rest needs a restart.
#[derive(Debug)]
pub struct InPlace {
    pub priority: u8,
    pub nopreempt: bool,
    pub preempt_delay: std::time::Duration,
    /// New addresses or GARP settings, when they changed.
    pub vips: Option<VipUpdate>,
}

/// The addresses of a reloaded instance, and a GARP/NA driver for them (the old one ends
/// when its channel is dropped).
#[derive(Debug)]
pub struct VipUpdate {
    /// `virtual_ipaddress` (what adverts carry).
    pub advertised: Vec<IpAddr>,
    /// Every VIP, excluded ones included, on its device.
    pub vips: Vec<PlacedVip>,
    pub garp: mpsc::Sender<GarpCommand>,
    pub garp_config: GarpConfig,
}

/// A point-in-time view for `ha-lb status`.
#[derive(Debug, Clone)]
pub struct InstanceSnapshot {
    pub state: State,
    pub effective_priority: u8,
    pub master: Option<IpAddr>,
    pub counters: Counters,
}

/// Handle to a running instance task.
pub struct InstanceHandle {
    pub name: String,
    pub commands: mpsc::Sender<InstanceCommand>,
    pub snapshot: watch::Receiver<InstanceSnapshot>,
    pub task: JoinHandle<()>,
}

/// A VIP and the interface it lives on.
pub type PlacedVip = (VirtualIpAddress, Interface);

/// Everything the task needs, already resolved (interfaces looked up, source chosen).
pub struct InstanceParts<T, V> {
    pub name: String,
    pub machine: Machine,
    pub transport: T,
    pub vip_manager: V,
    /// Every VIP the instance adds as MASTER: `virtual_ipaddress` and
    /// `virtual_ipaddress_excluded` (the machine's config holds the advertised ones).
    pub vips: Vec<PlacedVip>,
    pub rx_options: RxOptions,
    /// Sends commands to this instance's GARP/NA driver.
    pub garp: mpsc::Sender<GarpCommand>,
    pub garp_config: GarpConfig,
}

/// Starts the task. Stale VIPs (left by a crash) are removed first, as keepalived does, so
/// the instance starts owning nothing.
pub fn spawn<T, V>(
    parts: InstanceParts<T, V>,
    events: mpsc::Sender<InstanceEvent>,
) -> InstanceHandle
where
    T: VrrpTransport + 'static,
    V: VipManager + 'static,
{
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let snap = snapshot(&parts.machine);
    let (snap_tx, snap_rx) = watch::channel(snap);
    let name = parts.name.clone();
    let task = tokio::spawn(run(parts, cmd_rx, events, snap_tx));
    InstanceHandle { name, commands: cmd_tx, snapshot: snap_rx, task }
}

fn snapshot(m: &Machine) -> InstanceSnapshot {
    InstanceSnapshot {
        state: m.state(),
        effective_priority: m.effective_priority(),
        master: m.current_master(),
        counters: m.counters().clone(),
    }
}

async fn run<T: VrrpTransport, V: VipManager>(
    mut p: InstanceParts<T, V>,
    mut commands: mpsc::Receiver<InstanceCommand>,
    events: mpsc::Sender<InstanceEvent>,
    snap: watch::Sender<InstanceSnapshot>,
) {
    match p.vip_manager.remove_stale(&p.vips).await {
        Ok(removed) if !removed.is_empty() => {
            let list: Vec<String> = removed.iter().map(|v| v.to_string()).collect();
            warn!(vrrp_instance = %p.name, vips = ?list, "removed stale virtual addresses at start-up");
        }
        Ok(_) => {}
        Err(e) => {
            error!(vrrp_instance = %p.name, error = %e, "listing addresses at start-up failed")
        }
    }
    let mut stopping = false;
    p.machine.start(Instant::now());
    loop {
        execute(&mut p, &events).await;
        let _ = snap.send(snapshot(&p.machine));
        if stopping && p.machine.state() == State::Initialize {
            break;
        }
        let deadline = p.machine.poll_timeout();
        tokio::select! {
            rx = p.transport.recv() => match rx {
                Ok(pkt) => receive(&p.name, &mut p.machine, &p.rx_options, &pkt),
                Err(e) => {
                    warn!(vrrp_instance = %p.name, error = %e, "VRRP receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = sleep_until(deadline) => {
                on_timeout(&p.name, &p.transport, &mut p.machine, &p.rx_options)
            }
            cmd = commands.recv() => match cmd {
                Some(InstanceCommand::Shutdown) | None => {
                    stopping = true;
                    p.machine.shutdown(Instant::now());
                }
                Some(InstanceCommand::SetFault(f)) => p.machine.set_fault(Instant::now(), f),
                Some(InstanceCommand::SetPriorityAdjust(a)) => {
                    p.machine.set_priority_adjust(Instant::now(), a)
                }
                Some(InstanceCommand::SyncGroup(GroupOrder::Master)) => {
                    p.machine.sync_group_master(Instant::now())
                }
                Some(InstanceCommand::SyncGroup(GroupOrder::Backup)) => {
                    p.machine.sync_group_backup(Instant::now())
                }
                Some(InstanceCommand::LeaveSyncGroup) => p.machine.leave_sync_group(Instant::now()),
                Some(InstanceCommand::Reconfigure(c)) => reconfigure(&mut p, *c).await,
                Some(InstanceCommand::ExtendStartHold(e)) => p.machine.extend_start_hold(e),
                Some(InstanceCommand::RestoreVips) => restore_vips(&mut p).await,
            },
        }
    }
    let _ = p.garp.send(GarpCommand::LeaveMaster).await;
    info!(vrrp_instance = %p.name, "stopped");
}

/// Most packets [`on_timeout`] reads before acting on a timeout, so a flood of packets cannot
/// hold the timers back.
const DRAIN_MAX: usize = 64;

/// Decodes one received packet and hands it to the machine.
fn receive(name: &str, machine: &mut Machine, opts: &RxOptions, pkt: &ReceivedPacket) {
    match packet::decode(pkt.src, pkt.dst, pkt.ttl, &pkt.payload, opts) {
        Ok(r) => machine.handle_received(Instant::now(), &r),
        Err(e) => {
            debug!(vrrp_instance = %name, src = %pkt.src, error = %e, "advert rejected");
            machine.handle_rx_error(&e);
        }
    }
}

/// A timer is due. After a stall longer than Master_Down_Interval (the task not run: a VM
/// paused, an overloaded host) the master's adverts may be queued behind the expired down
/// timer, and `select!` picks among ready branches at random: a backup went MASTER (VIPs,
/// GARP) and then yielded. So the packets already waiting (at most [`DRAIN_MAX`]) are
/// handled first, without waiting for more.
fn on_timeout<T: VrrpTransport>(name: &str, t: &T, machine: &mut Machine, opts: &RxOptions) {
    for _ in 0..DRAIN_MAX {
        match t.recv().now_or_never() {
            Some(Ok(pkt)) => receive(name, machine, opts, &pkt),
            // An error is reported by the receive branch of the loop.
            Some(Err(_)) | None => break,
        }
    }
    machine.handle_timeout(Instant::now());
}

/// While the VIPs are held, puts back those something else removed from the host
/// (NetworkManager or systemd-networkd reconfiguring the interface, an `ip addr del`): the
/// instance would go on advertising itself as master of addresses no longer there, and
/// `ha-lb status` would show them held. keepalived does not notice (its issue #534). Each
/// one is logged and, once back, announced again. Called from the daemon's housekeeping.
async fn restore_vips<T: VrrpTransport, V: VipManager>(p: &mut InstanceParts<T, V>) {
    if !p.machine.holds_vips() {
        return;
    }
    let present = match p.vip_manager.list(None).await {
        Ok(a) => a,
        Err(e) => {
            debug!(vrrp_instance = %p.name, error = %e, "listing addresses to check the VIPs failed");
            return;
        }
    };
    let mut restored = false;
    for (vip, iface) in &p.vips {
        let here = present.iter().any(|a| {
            a.ifindex == iface.index && a.addr == vip.addr && a.prefix_len == vip.prefix_len
        });
        if here {
            continue;
        }
        warn!(vrrp_instance = %p.name, vip = %vip, interface = %iface.name, "a held virtual address was removed from the host by something else: added again");
        match p.vip_manager.add(vip, iface).await {
            Ok(()) => restored = true,
            Err(e) => {
                error!(vrrp_instance = %p.name, vip = %vip, interface = %iface.name, error = %e, "adding virtual address failed")
            }
        }
    }
    if restored && p.machine.state() == State::Master {
        let vips = p.vips.iter().map(|(v, on)| (v.addr, on.index)).collect();
        let _ = p.garp.send(GarpCommand::BecomeMaster(vips)).await;
    }
}

/// A reload's in-place change: while the VIPs are held, those no longer configured go and
/// new ones are added (and announced); the machine takes the rest.
async fn reconfigure<T: VrrpTransport, V: VipManager>(p: &mut InstanceParts<T, V>, c: InPlace) {
    let mut advertised = p.machine.config().virtual_ipaddresses.clone();
    if let Some(u) = c.vips {
        let same = |a: &PlacedVip, b: &PlacedVip| a.0 == b.0 && a.1.index == b.1.index;
        if p.machine.holds_vips() {
            for old in p.vips.iter().filter(|o| !u.vips.iter().any(|n| same(o, n))) {
                info!(vrrp_instance = %p.name, vip = %old.0, "virtual address removed by reload");
                if let Err(e) = p.vip_manager.remove(&old.0, &old.1).await {
                    error!(vrrp_instance = %p.name, vip = %old.0, interface = %old.1.name, error = %e, "removing virtual address failed");
                }
            }
            for new in u.vips.iter().filter(|n| !p.vips.iter().any(|o| same(o, n))) {
                info!(vrrp_instance = %p.name, vip = %new.0, "virtual address added by reload");
                if let Err(e) = p.vip_manager.add(&new.0, &new.1).await {
                    error!(vrrp_instance = %p.name, vip = %new.0, interface = %new.1.name, error = %e, "adding virtual address failed");
                }
            }
        }
        p.vips = u.vips;
        p.garp = u.garp;
        p.garp_config = u.garp_config;
        if p.machine.state() == State::Master {
            // The new driver announces every VIP (the new ones above all) on its schedule.
            let vips = p.vips.iter().map(|(v, on)| (v.addr, on.index)).collect();
            let _ = p.garp.send(GarpCommand::BecomeMaster(vips)).await;
        }
        advertised = u.advertised;
    }
    p.machine.reconfigure(Instant::now(), c.priority, advertised, c.nopreempt, c.preempt_delay);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Carries out the machine's queued actions, in order.
async fn execute<T: VrrpTransport, V: VipManager>(
    p: &mut InstanceParts<T, V>,
    events: &mpsc::Sender<InstanceEvent>,
) {
    // The GARP schedule sends the master burst itself on BecomeMaster; the machine's
    // SendGratuitous in the same batch is that same burst.
    let mut became_master = false;
    while let Some(action) = p.machine.poll_action() {
        match action {
            Action::SendAdvert(adv) => {
                let src = p.transport.source();
                for dst in p.transport.destinations().to_vec() {
                    match adv.encode(src, dst, V3Checksum::PseudoHeader) {
                        Ok(bytes) => {
                            if let Err(e) = p.transport.send(dst, &bytes).await {
                                warn!(vrrp_instance = %p.name, %dst, error = %e, "sending advert failed");
                            }
                        }
                        Err(e) => {
                            error!(vrrp_instance = %p.name, error = %e, "encoding advert failed")
                        }
                    }
                }
            }
            Action::AddVips => {
                for (vip, iface) in &p.vips {
                    if let Err(e) = p.vip_manager.add(vip, iface).await {
                        error!(vrrp_instance = %p.name, vip = %vip, interface = %iface.name, error = %e, "adding virtual address failed");
                    }
                }
            }
            Action::RemoveVips => {
                for (vip, iface) in &p.vips {
                    if let Err(e) = p.vip_manager.remove(vip, iface).await {
                        error!(vrrp_instance = %p.name, vip = %vip, interface = %iface.name, error = %e, "removing virtual address failed");
                    }
                }
            }
            Action::SendGratuitous => {
                if !became_master {
                    let _ = p.garp.send(GarpCommand::ExtraSet(p.garp_config.master_repeat)).await;
                }
            }
            Action::StateChanged { from, to, reason } => {
                info!(
                    vrrp_instance = %p.name,
                    from = from.as_str(),
                    to = to.as_str(),
                    %reason,
                    priority = p.machine.effective_priority(),
                    "VRRP state change"
                );
                if to == State::Master {
                    became_master = true;
                    let vips = p.vips.iter().map(|(v, on)| (v.addr, on.index)).collect();
                    let _ = p.garp.send(GarpCommand::BecomeMaster(vips)).await;
                } else if from == State::Master || from == State::Stopping {
                    let _ = p.garp.send(GarpCommand::LeaveMaster).await;
                }
                let _ = events
                    .send(InstanceEvent::Changed(StateChange {
                        instance: p.name.clone(),
                        from,
                        to,
                        reason,
                        effective_priority: p.machine.effective_priority(),
                    }))
                    .await;
            }
            Action::SyncGroupReady(ready) => {
                debug!(vrrp_instance = %p.name, ready, "sync group member readiness");
                let _ = events
                    .send(InstanceEvent::SyncGroupReady { instance: p.name.clone(), ready })
                    .await;
            }
        }
    }
}

/// What the codec checks on receive. TTL / hop limit 255 proves a multicast advert came from
/// the link; unicast peers may be a router away, and keepalived checks it only for instances
/// without unicast peers.
fn rx_options(inst: &crate::config::VrrpInstance) -> RxOptions {
    RxOptions { require_hop_limit_255: !inst.is_unicast() }
}

/// Resolves a configured `vrrp_instance` against the host (interfaces, source address) and
/// starts it: raw socket, VIP manager, GARP/NA driver and the instance task. A member of a
/// sync group (`in_sync_group`) becomes MASTER only with its group ([`super::sync_group`]).
/// `start_hold`: the minimum and the bound of its start hold, see
/// [`super::machine::Config::start_hold`] and [`super::machine::Config::start_hold_max`].
pub async fn start(
    inst: &crate::config::VrrpInstance,
    in_sync_group: bool,
    start_hold: (std::time::Duration, std::time::Duration),
    rtnl: &super::vip::Rtnl,
    events: mpsc::Sender<InstanceEvent>,
) -> anyhow::Result<InstanceHandle> {
    use anyhow::Context as _;

    use super::{
        garp::{run_garp, PacketGarpSender},
        machine,
        packet::{Auth, Version},
        socket::{RawVrrpSocket, TransportConfig, VrrpMode},
        vip::LinkMonitor,
    };
    use crate::config::{AddrFamily, Authentication, VrrpVersion};

    let link = rtnl.link_by_name(&inst.interface).await?.with_context(|| {
        format!("vrrp_instance {}: interface {} not found", inst.name, inst.interface)
    })?;
    let iface = link.interface();
    let ipv6 = inst.family() == AddrFamily::Ipv6;
    // Only `virtual_ipaddress` goes in adverts; no VIP, excluded or not, is a source address.
    let vip_addrs: Vec<IpAddr> = inst.virtual_ipaddress.iter().map(|v| v.addr).collect();
    let all_vip_addrs: Vec<IpAddr> = inst.all_vips().map(|v| v.addr).collect();
    let source = match inst.unicast_src_ip {
        Some(a) => a,
        None => {
            rtnl.vrrp_source_address(&iface, ipv6, &all_vip_addrs).await?.with_context(|| {
                format!(
                    "vrrp_instance {}: interface {} has no {} address to send adverts from",
                    inst.name,
                    inst.interface,
                    if ipv6 { "link-local IPv6" } else { "IPv4" }
                )
            })?
        }
    };
    let mode = if inst.unicast_peer.is_empty() {
        VrrpMode::multicast_for(source)
    } else {
        VrrpMode::Unicast { peers: inst.unicast_peer.clone() }
    };
    let transport = RawVrrpSocket::open(TransportConfig { interface: iface.clone(), source, mode })
        .with_context(|| format!("vrrp_instance {}: opening the VRRP socket", inst.name))?;

    let mut mc = machine::Config::new(inst.virtual_router_id, source, vip_addrs);
    mc.version = match inst.version {
        VrrpVersion::V2 => Version::V2,
        VrrpVersion::V3 => Version::V3,
    };
    mc.priority = inst.priority;
    mc.advert_int_cs = (inst.advert_int.as_millis() / 10).clamp(1, u16::MAX as u128) as u16;
    mc.nopreempt = inst.nopreempt;
    mc.preempt_delay = inst.preempt_delay;
    (mc.start_hold, mc.start_hold_max) = start_hold;
    mc.unicast_peers = inst.unicast_peer.clone();
    mc.auth = match &inst.authentication {
        Some(Authentication::Pass(p)) => Auth::password(p),
        None => Auth::None,
    };
    // The GARP schedule below sends keepalived's master bursts, second one included.
    mc.garp_master_delay = None;
    mc.sync_group = in_sync_group;
    let machine = Machine::new(mc).with_context(|| format!("vrrp_instance {}", inst.name))?;

    let (vips, garp_devices) = place_vips(inst, rtnl, &link).await?;
    let garp_config = garp_config(inst);
    let sender = PacketGarpSender::new(garp_devices)
        .with_context(|| format!("vrrp_instance {}: opening the GARP socket", inst.name))?;
    let (garp_tx, garp_rx) = mpsc::channel(16);
    tokio::spawn(run_garp(garp_config.clone(), sender, garp_rx));

    Ok(spawn(
        InstanceParts {
            name: inst.name.clone(),
            machine,
            transport,
            vip_manager: rtnl.clone(),
            vips,
            rx_options: rx_options(inst),
            garp: garp_tx,
            garp_config,
        },
        events,
    ))
}

/// The in-place part of a reload of `inst` ([`InPlace`]); with `vips`, its addresses are
/// placed again and a new GARP/NA driver started for them.
pub async fn in_place(
    inst: &crate::config::VrrpInstance,
    vips: bool,
    rtnl: &super::vip::Rtnl,
) -> anyhow::Result<InPlace> {
    use anyhow::Context as _;

    use super::{
        garp::{run_garp, PacketGarpSender},
        vip::LinkMonitor,
    };
    let vips = if vips {
        let link = rtnl.link_by_name(&inst.interface).await?.with_context(|| {
            format!("vrrp_instance {}: interface {} not found", inst.name, inst.interface)
        })?;
        let (placed, devices) = place_vips(inst, rtnl, &link).await?;
        let garp_config = garp_config(inst);
        let sender = PacketGarpSender::new(devices)
            .with_context(|| format!("vrrp_instance {}: opening the GARP socket", inst.name))?;
        let (garp, garp_rx) = mpsc::channel(16);
        tokio::spawn(run_garp(garp_config.clone(), sender, garp_rx));
        Some(VipUpdate {
            advertised: inst.virtual_ipaddress.iter().map(|v| v.addr).collect(),
            vips: placed,
            garp,
            garp_config,
        })
    } else {
        None
    };
    Ok(InPlace {
        priority: inst.priority,
        nopreempt: inst.nopreempt,
        preempt_delay: inst.preempt_delay,
        vips,
    })
}

fn garp_config(inst: &crate::config::VrrpInstance) -> GarpConfig {
    GarpConfig {
        master_delay: inst.garp.master_delay,
        master_repeat: inst.garp.master_repeat,
        master_refresh: inst.garp.master_refresh.unwrap_or_default(),
        master_refresh_repeat: inst.garp.master_refresh_repeat,
        garp_interval: inst.garp.interval,
        gna_interval: inst.garp.gna_interval,
    }
}

/// Every VIP of `inst` (excluded ones too: added, removed, announced and cleaned up at start
/// like the others) on its device, and the devices to announce them on. Each VIP is
/// announced on its own device, from that device's MAC (the one receivers must learn for
/// it), with the NA router flag from that device's IPv6 forwarding, as keepalived does.
async fn place_vips(
    inst: &crate::config::VrrpInstance,
    rtnl: &super::vip::Rtnl,
    link: &super::vip::LinkInfo,
) -> anyhow::Result<(Vec<PlacedVip>, Vec<super::garp::GarpDevice>)> {
    use anyhow::Context as _;

    use super::{
        garp::{ipv6_forwarding, GarpDevice},
        vip::LinkMonitor,
    };
    let iface = link.interface();
    let mut vips = Vec::new();
    let mut garp_devices: Vec<GarpDevice> = Vec::new();
    for v in inst.all_vips() {
        let dev = v.device(&inst.interface);
        let on = if dev == iface.name {
            link.clone()
        } else {
            rtnl.link_by_name(dev).await?.with_context(|| {
                format!("vrrp_instance {}: VIP {v}: interface {dev} not found", inst.name)
            })?
        };
        if !garp_devices.iter().any(|d| d.ifindex == on.index) {
            match on.mac {
                Some(mac) => {
                    let router = ipv6_forwarding(&on.name).unwrap_or(false);
                    garp_devices.push(GarpDevice::new(&on.interface(), mac, router));
                }
                // The instance's own interface carries Ethernet adverts: it must have one.
                None if on.index == link.index => anyhow::bail!(
                    "vrrp_instance {}: interface {} has no MAC address",
                    inst.name,
                    on.name
                ),
                // A VIP on a device without link-layer addresses (tun, WireGuard): nobody
                // there caches a MAC, so there is nothing to announce (as keepalived).
                None => {
                    info!(vrrp_instance = %inst.name, interface = %on.name, "no MAC address: VIPs there are not announced")
                }
            }
        }
        vips.push((v.clone(), on.interface()));
    }
    Ok((vips, garp_devices))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::vrrp::packet::{Advert, Auth, DecodeError, Version, VRRP_MCAST_V4};

    fn instance(extra: &str) -> crate::config::VrrpInstance {
        let text = format!(
            "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\n\
             virtual_router_id = 51\nvirtual_ipaddress = [\"192.0.2.100\"]\n{extra}"
        );
        let mut c = crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap();
        c.vrrp_instances.remove(0)
    }

    /// A unicast peer's advert that crossed a router (TTL 64) is accepted; on a multicast
    /// instance the same advert is rejected for its TTL.
    #[test]
    fn hop_limit_255_is_required_only_without_unicast_peers() {
        let (peer, me) = (Ipv4Addr::new(198, 51, 100, 2), Ipv4Addr::new(192, 0, 2, 1));
        let advert = Advert {
            version: Version::V3,
            vrid: 51,
            priority: 100,
            adver_int_cs: 100,
            addrs: vec![IpAddr::from([192, 0, 2, 100])],
            auth: Auth::None,
        };
        let bytes = advert.encode(peer.into(), me.into(), V3Checksum::PseudoHeader).unwrap();
        let decode = |opts: &RxOptions| packet::decode(peer.into(), me.into(), 64, &bytes, opts);

        let unicast = rx_options(&instance(
            "unicast_src_ip = \"192.0.2.1\"\nunicast_peer = [\"198.51.100.2\"]",
        ));
        assert!(!unicast.require_hop_limit_255);
        assert_eq!(decode(&unicast).unwrap().advert, advert);

        let multicast = rx_options(&instance(""));
        assert_eq!(multicast, RxOptions::default());
        assert_eq!(decode(&multicast), Err(DecodeError::BadHopLimit(64)));
    }

    /// A transport whose packets were queued before it is read.
    struct Queued(std::sync::Mutex<std::collections::VecDeque<ReceivedPacket>>);

    impl VrrpTransport for Queued {
        fn source(&self) -> IpAddr {
            IpAddr::from([192, 0, 2, 1])
        }
        fn destinations(&self) -> &[IpAddr] {
            &[]
        }
        async fn send(&self, _: IpAddr, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        async fn recv(&self) -> std::io::Result<ReceivedPacket> {
            let next = self.0.lock().unwrap().pop_front();
            match next {
                Some(p) => Ok(p),
                None => std::future::pending().await,
            }
        }
    }

    /// After a stall longer than Master_Down_Interval, the master's advert waiting on the
    /// socket is read before the expired down timer is acted on: the backup stays BACKUP
    /// instead of going MASTER (and yielding a moment later).
    #[test]
    fn adverts_queued_behind_an_expired_timer_are_read_first() {
        let (master, me) = (Ipv4Addr::new(192, 0, 2, 9), Ipv4Addr::new(192, 0, 2, 1));
        let vip = IpAddr::from([192, 0, 2, 100]);
        let mut c = crate::vrrp::machine::Config::new(51, me.into(), vec![vip]);
        c.version = Version::V3;
        c.unicast_peers = vec![master.into()];
        let mut m = Machine::new(c).unwrap();
        // Started (its down timer armed) 10 s ago, and not run since.
        m.start(Instant::now().checked_sub(std::time::Duration::from_secs(10)).unwrap());
        while m.poll_action().is_some() {}
        assert!(m.poll_timeout().unwrap() <= Instant::now(), "the down timer expired");
        let advert = Advert {
            version: Version::V3,
            vrid: 51,
            priority: 200,
            adver_int_cs: 100,
            addrs: vec![vip],
            auth: Auth::None,
        };
        let group = IpAddr::V4(VRRP_MCAST_V4);
        let payload = advert.encode(master.into(), group, V3Checksum::PseudoHeader).unwrap();
        let pkt = ReceivedPacket { src: master.into(), dst: group, ttl: 255, ifindex: 2, payload };
        let t = Queued(std::sync::Mutex::new([pkt].into()));
        on_timeout("VI_1", &t, &mut m, &RxOptions::default());
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.counters().became_master, 0);
        assert_eq!(m.current_master(), Some(master.into()));
        assert!(t.0.lock().unwrap().is_empty());
    }

    // ---- a reload's in-place change, with a fake transport and VIP manager ----

    use std::sync::{Arc, Mutex};

    use crate::vrrp::{
        machine::{self, Machine},
        socket::{Interface, ReceivedPacket},
        vip::{InterfaceAddress, VipError, VipManager},
    };

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);
    impl Log {
        fn push(&self, s: String) {
            self.0.lock().unwrap().push(s);
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    struct FakeTransport {
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        dst: Vec<IpAddr>,
    }
    impl VrrpTransport for FakeTransport {
        fn source(&self) -> IpAddr {
            [10, 0, 0, 2].into()
        }
        fn destinations(&self) -> &[IpAddr] {
            &self.dst
        }
        async fn send(&self, _dst: IpAddr, payload: &[u8]) -> std::io::Result<()> {
            self.sent.lock().unwrap().push(payload.to_vec());
            Ok(())
        }
        async fn recv(&self) -> std::io::Result<ReceivedPacket> {
            std::future::pending().await
        }
    }

    struct FakeVips(Log);
    impl VipManager for FakeVips {
        async fn add(&self, vip: &VirtualIpAddress, _: &Interface) -> Result<(), VipError> {
            self.0.push(format!("add {}", vip.addr));
            Ok(())
        }
        async fn remove(&self, vip: &VirtualIpAddress, _: &Interface) -> Result<(), VipError> {
            self.0.push(format!("remove {}", vip.addr));
            Ok(())
        }
        async fn list(&self, _: Option<u32>) -> Result<Vec<InterfaceAddress>, VipError> {
            Ok(Vec::new())
        }
    }

    fn placed(addrs: &[&str]) -> Vec<PlacedVip> {
        let eth0 = Interface { index: 2, name: "eth0".into() };
        addrs.iter().map(|a| (a.parse().unwrap(), eth0.clone())).collect()
    }

    /// A MASTER reloaded with one VIP dropped and one added: the dropped one goes, the new
    /// one is added and announced, the advert carries the new list; no state change.
    #[tokio::test]
    async fn reconfigure_changes_the_vips_of_a_master_in_place() {
        let old = ["192.0.2.100", "192.0.2.101"];
        let new = ["192.0.2.100", "192.0.2.102"];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut mc = machine::Config::new(51, ip("10.0.0.2"), old.iter().map(|a| ip(a)).collect());
        mc.priority = machine::PRIORITY_OWNER;
        let sent = Arc::new(Mutex::new(Vec::new()));
        let vip_log = Log::default();
        let (garp, _old_garp_rx) = mpsc::channel(16);
        let (events_tx, mut events) = mpsc::channel(16);
        let h = spawn(
            InstanceParts {
                name: "VI_1".into(),
                machine: Machine::new(mc).unwrap(),
                transport: FakeTransport { sent: sent.clone(), dst: vec![ip("224.0.0.18")] },
                vip_manager: FakeVips(vip_log.clone()),
                vips: placed(&old),
                rx_options: RxOptions::default(),
                garp,
                garp_config: GarpConfig::default(),
            },
            events_tx,
        );
        let mut snap = h.snapshot.clone();
        snap.wait_for(|s| s.state == State::Master).await.unwrap();
        assert_eq!(vip_log.take(), ["add 192.0.2.100", "add 192.0.2.101"]);
        while events.try_recv().is_ok() {}
        sent.lock().unwrap().clear();

        let (garp, mut garp_rx) = mpsc::channel(16);
        let update = VipUpdate {
            advertised: new.iter().map(|a| ip(a)).collect(),
            vips: placed(&new),
            garp,
            garp_config: GarpConfig::default(),
        };
        let c = InPlace {
            priority: machine::PRIORITY_OWNER,
            nopreempt: false,
            preempt_delay: std::time::Duration::ZERO,
            vips: Some(update),
        };
        h.commands.send(InstanceCommand::Reconfigure(Box::new(c))).await.unwrap();
        let announced = garp_rx.recv().await;
        assert!(
            matches!(&announced, Some(GarpCommand::BecomeMaster(v)) if v.len() == 2
                && v.iter().any(|(a, _)| *a == ip("192.0.2.102"))),
            "{announced:?}"
        );
        assert_eq!(vip_log.take(), ["remove 192.0.2.101", "add 192.0.2.102"]);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let adverts = sent.lock().unwrap().clone();
        let first = adverts.first().expect("an advert with the new list at once");
        let a = packet::decode(ip("10.0.0.2"), ip("224.0.0.18"), 255, first, &RxOptions::default())
            .unwrap()
            .advert;
        assert_eq!(a.addrs, [ip("192.0.2.100"), ip("192.0.2.102")]);
        assert!(events.try_recv().is_err(), "no state change");
        assert_eq!(h.snapshot.borrow().state, State::Master);
        h.task.abort();
    }
}
