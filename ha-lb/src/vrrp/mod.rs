//! VRRP (RFC 5798 v3, RFC 3768 v2): codec, state machine, and their I/O edges.
//!
//! - [`packet`]: the advertisement codec (pure).
//! - [`machine`]: the per-instance state machine (pure, clock injected).

pub mod machine;
pub mod packet;
#[cfg(test)]
mod sim;
