//! Configuration: the one model, its TOML front-end, validation with file:line errors.
//!
//! - [`model`]: the typed, resolved [`Config`] every front-end produces.
//! - [`toml`]: the native format — [`load`] / [`parse_str`].
//! - [`error`]: [`ConfigErrors`], every problem as `file:line:col: message`.
//!
//! Loading is all-or-nothing: a whole validated `Config`, or all the errors found. The
//! daemon keeps running its current config when a reload fails.

pub mod error;
pub mod model;
pub mod toml;
mod validate;

pub use self::toml::{load, parse_str};
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
