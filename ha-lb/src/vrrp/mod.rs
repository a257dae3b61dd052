//! VRRP (RFC 5798 v3, RFC 3768 v2): codec, state machine, and their I/O edges.
//!
//! Pure cores:
//! - [`packet`]: the advertisement codec.
//! - [`machine`]: the per-instance state machine (clock injected, no sockets).
//! - [`sync_group`]: keepalived's `vrrp_sync_group` rules across one host's machines.
//!
//! I/O edges, each behind a small trait:
//! - [`socket`]: raw protocol-112 sockets (`VrrpTransport`).
//! - [`vip`]: virtual addresses and link state over rtnetlink (`VipManager`, `LinkMonitor`).
//! - [`garp`]: gratuitous ARP / unsolicited NA frames and keepalived's GARP schedule.
//!
//! Glue: [`instance`] runs one machine with those edges; [`track`] turns tracked
//! interfaces, scripts and files into FAULT / priority adjustments.

pub mod garp;
pub mod instance;
pub mod machine;
pub mod packet;
#[cfg(test)]
mod sim;
pub mod socket;
pub mod sync_group;
pub mod track;
pub mod vip;
