//! ha-lb: a highly available L4 load balancer. VRRP election in user space, forwarding in XDP,
//! kernel IPVS as fallback. See `docs/architecture.md` (repository root) for the data flow.
//!
//! Pure cores (codecs, the VRRP state machine, schedulers, config) are plain types and
//! functions; sockets, netlink and BPF sit behind small traits at the edges.

pub mod bpf;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod files;
pub mod health;
pub mod privileges;
pub mod reconcile;
pub mod script;
pub mod status;
pub mod sync;
pub mod vrrp;
