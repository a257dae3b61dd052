//! Test infrastructure shared by ha-lb's integration tests, `cargo xtask demo` and
//! `cargo xtask bench`:
//! - [`netns`]: declarative network-namespace labs with guaranteed teardown and a sweeper;
//! - [`frame`]: crafted frames with correct checksums, and an independent checksum checker;
//! - [`uml`]: user-mode-linux guests for kernel features the host lacks (kernel IPVS);
//! - [`qemu`]: QEMU (TCG) guests of Debian's 6.1 kernel, for IPVS next to JIT-compiled XDP;
//! - [`guest`]: what those two kinds of guest share (the run's directory, the program's
//!   output and exit code, the timeout).
//!
//! Lab addressing uses 198.18.0.0/15 (RFC 2544 benchmarking) and fd48:4c42::/32 (a ULA
//! prefix), never addresses that exist outside the lab.

pub mod benchtopo;
pub mod daemon;
pub mod frame;
pub mod guest;
pub mod netns;
pub mod packet;
pub mod probe;
pub mod qemu;
pub mod topology;
pub mod uml;

pub use netns::{sweep, wait_for, Lab, Node};
