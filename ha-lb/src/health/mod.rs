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
//! Scripts (MISC_CHECK, `notify_up`/`notify_down`) go through [`crate::script`], as the
//! users resolved when the configuration was loaded or reloaded ([`HealthChecker::reload`]).
//!
//! Where ha-lb differs from keepalived, on purpose:
//! - HTTP_GET/SSL_GET check every `url` in each attempt (keepalived's `fast_recovery`
//!   behaviour); keepalived without it spaces URLs `delay_loop` apart while recovering.
//! - UDP_CHECK `require_reply` with bytes needs the reply to *start with* them (the
//!   model's rule); keepalived compares only up to the shorter of the two lengths.
//! - `notify_up`/`notify_down` are bounded by [`HealthOptions::notify_timeout`]
//!   (keepalived's are fire-and-forget without a limit). They get no extra arguments, as
//!   in keepalived.
//! - SSL_GET accepts any certificate (keepalived does too without an `SSL { ca }` block);
//!   see the notes in `health/tls.rs`.
//!
//! The start state of a checked real server is up, or down when its virtual server has
//! `alpha` ([`initial_up`]); no event is sent for it: read [`HealthChecker::states`]. With
//! `alpha`, a first check that fails runs the server's `notify_down` (as keepalived does),
//! still without an event: nothing changed.

pub mod checker;
pub mod http;
pub mod probe;
pub mod state;
mod tls;

/// The tracker's input, defined with the configuration it comes from.
pub use crate::config::Timing;
pub use checker::{
    CheckKey, CheckTarget, HealthChecker, HealthEvent, HealthOptions, HealthStats, RsHealth,
};
pub use probe::ProbeResult;
pub use state::{initial_up, Tracker};
