//! `cargo xtask bench …`: side-by-side measurements against a peer, in one run, printed as
//! figures and ratios. Never pass/fail on absolute numbers.

mod common;
pub mod dataplane;
mod dataplane_peers;
mod dataplane_sys;
pub mod failover;
pub mod ipvs;
