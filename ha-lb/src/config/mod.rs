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
pub use validate::{script_sites, unrunnable_message, ScriptKind, ScriptSite};

pub use self::toml::parse_str;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

/// Read and validate a configuration file: native TOML when [`is_toml`] says so,
/// keepalived.conf syntax otherwise (e.g. `/etc/keepalived/keepalived.conf`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, None).map(|l| l.config)
}

/// A configuration as loaded, with its warnings: what was accepted but may not do what it
/// seems to (an `include` that matched no file, an `auth_pass` of which only 8 bytes are
/// used, …), each as `file:line:col: message` like an error. keepalived logs the same
/// things; `check` and `convert` print them, `run` and a reload log them.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

/// What the host a configuration is to run on has, for [`load_for_host`].
pub struct Host<'a> {
    /// Whether a network interface of this name exists.
    pub has_interface: &'a dyn Fn(&str) -> bool,
    /// Whether an address is one of this host's own (a real server that is the director).
    pub is_own_address: &'a dyn Fn(std::net::IpAddr) -> bool,
    /// Whether a script's program can be started as the script's user (`None`: the default
    /// script user): `Err` says why not (missing, not executable, no such user).
    pub can_run: &'a CanRun<'a>,
    /// On a reload: the running daemon's `[global]`. A change of what only a restart can
    /// change (`dataplane`, `control_socket`, `lvs_sync_daemon`) is then an error at that
    /// key.
    pub running: Option<&'a model::Global>,
}

/// [`Host::can_run`]: `(program, user)` → why it cannot be started, if it cannot.
pub type CanRun<'a> = dyn Fn(&str, Option<&model::ScriptUser>) -> Result<(), String> + 'a;

/// [`load`], also checking the configuration against this host (every interface it names
/// exists), with the same `file:line:col` errors: what `run` and a reload use, so that an
/// instance, a VIP or a tracker on a missing interface is refused before anything is
/// applied.
pub fn load_for_host(path: &Path, host: &Host) -> Result<Config, ConfigErrors> {
    load_with(path, Some(host)).map(|l| l.config)
}

/// [`load`] (with `host`: [`load_for_host`]), keeping the warnings.
pub fn load_with(path: &Path, host: Option<&Host>) -> Result<Loaded, ConfigErrors> {
    if is_toml(path) {
        self::toml::load_with(path, host)
    } else {
        keepalived::load_with(path, host)
    }
}

/// Whether [`load`] reads `path` as TOML: its name ends in `.toml`, or its text
/// [`looks_like_toml`] (a TOML file under another name: `ha-lb.toml.new`, an editor's or a
/// configuration manager's temporary file). A file that cannot be read is keepalived.conf
/// (whose reader then reports why).
pub fn is_toml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
        || std::fs::read_to_string(path).is_ok_and(|t| looks_like_toml(&t))
}

/// Whether a configuration text is TOML by its first significant line (blank lines and
/// `#` or `!` comments skipped, a byte-order mark ignored): a table header, `[global]`,
/// `[[vrrp_instance]]`, … starts with `[`, and no keepalived.conf line does (a keyword, `}`,
/// `@`/`$` conditionals and definitions).
pub fn looks_like_toml(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .is_some_and(|l| l.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_table_header_means_toml() {
        assert!(looks_like_toml("[global]\nrouter_id = \"lb1\"\n"));
        assert!(looks_like_toml("\u{feff}# ha-lb\n\n  ! old comment\n[[vrrp_instance]]\n"));
        assert!(!looks_like_toml("global_defs {\n  router_id lb1\n}\n"));
        assert!(!looks_like_toml("# [global] in a comment\nvrrp_instance VI_1 {\n}\n"));
        assert!(!looks_like_toml("@lb1 global_defs {\n}\n[global]\n"));
        assert!(!looks_like_toml(""));
        assert!(!looks_like_toml("# only comments\n"));
    }

    #[test]
    fn is_toml_by_name_or_first_line() {
        let dir = std::env::temp_dir().join(format!("ha-lb-is-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let new = dir.join("ha-lb.toml.new");
        std::fs::write(&new, "# edited\n[global]\nrouter_id = \"lb1\"\n").unwrap();
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, "global_defs {\n  router_id lb1\n}\n").unwrap();
        assert!(is_toml(&new));
        assert!(!is_toml(&conf));
        // The name decides without reading: a missing .toml file is still TOML.
        assert!(is_toml(&dir.join("missing.toml")));
        assert!(!is_toml(&dir.join("missing.conf")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
