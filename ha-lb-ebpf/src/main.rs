//! ha-lb's XDP programs.
//!
//! - `ha_lb_vrrp`: the VRRP fast-path filter (see `vrrp_filter`).
//! - forwarding programs live in `lb` (services, schedulers, NAT/DR, conntrack).
//!
//! Every packet access goes through `parse::ptr_at`, which bounds-checks once against
//! `data_end` so the verifier can follow it.
#![no_std]
#![no_main]
// For `atomic_xadd` (the flow cache's epoch): the target has atomic adds but no CAS, so
// `core::sync::atomic` offers no `fetch_add` on it. The build already needs a nightly-capable
// compiler (`-Z build-std`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod bench;
mod lb;
mod parse;
mod vrrp_filter;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic; the verifier rejects unreachable loops, so this is never reached.
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
