//! Real-server health checks: keepalived's checkers (TCP_CHECK, HTTP_GET, SSL_GET,
//! MISC_CHECK, UDP_CHECK) with keepalived's scheduling (`delay_loop`, `retry`,
//! `delay_before_retry`, `warmup`, `alpha`) plus ha-lb's `rise`/`fall`.
//!
//! - [`state`]: the pure per-check scheduler and up/down tracker (clock passed in).
//! - [`http`]: the HTTP/1.1 response parser, request building and MD5 digests.
//! - [`probe`]: one attempt of each checker, bounded in time.
//! - [`checker`]: [`HealthChecker`], the service: one tokio task per check, probes and
//!   scripts behind semaphores, [`HealthEvent`]s on a channel, reload without flapping.
//!
//! Scripts (MISC_CHECK, `notify_up`/`notify_down`) go through [`crate::script`].

pub mod checker;
pub mod http;
pub mod probe;
pub mod state;
mod tls;

pub use checker::{
    CheckKey, CheckTarget, HealthChecker, HealthEvent, HealthOptions, HealthStats, RsHealth,
};
pub use probe::ProbeResult;
pub use state::{initial_up, Timing, Tracker};
