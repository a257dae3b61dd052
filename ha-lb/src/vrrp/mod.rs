//! VRRP (RFC 5798 v3, RFC 3768 v2): codec, state machine, and their I/O edges.

pub mod garp;
pub mod socket;
pub mod vip;
