//! Configuration: the one model, its two front-ends, validation with file:line errors.
//!
//! - [`model`]: the typed, resolved [`Config`] every front-end produces.
//! - [`toml`]: the native format — [`toml::load`] / [`parse_str`].
//! - [`keepalived`]: keepalived.conf's own syntax, lowered onto the TOML reader so both
//!   give the same model and the same errors.
//! - [`to_toml`]: the model written back as native TOML (`ha-lb convert`).
//! - [`error`]: [`ConfigErrors`], every problem as `file:line:col: message`.
//!
//! Loading is all-or-nothing: a whole validated `Config`, or all the errors found. The
//! daemon keeps running its current config when a reload fails.

use std::path::Path;

pub mod error;
pub mod keepalived;
pub mod model;
pub mod to_toml;
pub mod toml;
mod validate;

pub use self::toml::parse_str;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

/// Read and validate a configuration file: native TOML when its name ends in `.toml`,
/// keepalived.conf syntax otherwise (e.g. `/etc/keepalived/keepalived.conf`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    if is_toml(path) {
        self::toml::load(path)
    } else {
        keepalived::load(path)
    }
}

/// Whether [`load`] reads `path` as TOML.
pub fn is_toml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}
