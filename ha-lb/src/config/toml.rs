//! The native TOML front-end.
//!
//! The file is read into a span-carrying document (`toml_edit`), then walked by hand so
//! that every problem is reported — unknown keys, wrong types, out-of-range values — rather
//! than stopping at the first one as serde would. Defaults and inherited values are
//! resolved here; cross-item rules live in `config::validate`. The result is a whole
//! [`Config`] or every error: nothing is ever half-applied.
//!
//! Layout (see `conf/ha-lb.toml` for every key):
//! ```toml
//! [global]
//! [[vrrp_script]]          # name, script, interval, …
//! [[track_file]]           # name, file, weight
//! [[vrrp_instance]]        # name, interface, virtual_router_id, …
//! [[vrrp_sync_group]]      # name, group = [..]
//! [[virtual_server]]       # address, port, protocol, lb_algo, lb_kind, …
//! [[virtual_server.real_server]]
//! [virtual_server.real_server.TCP_CHECK]   # or HTTP_GET / SSL_GET / MISC_CHECK / UDP_CHECK
//! ```

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml_edit as te;
use toml_edit::TableLike;

use super::error::{ConfigError, ConfigErrors, Item, Pos, SourceMap};
use super::model::*;
use super::validate;
use super::{Host, Loaded};
use crate::vrrp::vip::valid_ifname;

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, None).map(|l| l.config)
}

pub(crate) fn load_with(path: &Path, host: Option<&Host>) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(path, format!("cannot read the file: {e}")))?;
    let config = parse_labelled(&text, path, Vec::new(), host)?;
    Ok(Loaded { config, warnings: Vec::new() })
}

/// Parse and validate configuration text; `origin` names the file in error messages.
pub fn parse_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    parse_labelled(text, origin, Vec::new(), None)
}

/// [`parse_str`] for text another front-end generated: `line_labels[N - 1]` is how
/// messages that cite line N ("already defined at line …") name it in the original.
pub(crate) fn parse_labelled(
    text: &str,
    origin: &Path,
    line_labels: Vec<String>,
    host: Option<&Host>,
) -> Result<Config, ConfigErrors> {
    let mut r = Reader::new(text, origin);
    r.map.set_line_labels(line_labels);
    let doc = match te::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let pos = r.pos_of(e.span());
            let msg = format!("syntax error: {}", e.message().trim().replace('\n', "; "));
            return Err(ConfigErrors { errors: vec![r.map.error(pos, msg)] });
        }
    };
    let config = r.config(doc.as_table());
    let mut errors = r.errors;
    errors.extend(validate::validate(&config, &r.map, host));
    // With other errors the file is refused anyway, and they are often why nothing is left
    // (a broken vrrp_instance): only those.
    if errors.iter().any(|e| !validate::reported_alone(&e.message)) {
        errors.retain(|e| !validate::reported_alone(&e.message));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| (e.line, e.col));
        // A group's virtual_server is checked once per member: the same error at the same
        // place, once.
        let mut seen = std::collections::HashSet::new();
        let errors: Vec<ConfigError> = errors
            .into_iter()
            .filter(|e| seen.insert((e.line, e.col, e.message.clone())))
            .collect();
        Err(ConfigErrors { errors })
    }
}

// ---------------------------------------------------------------------------------------
// allowed keys, per table
// ---------------------------------------------------------------------------------------

pub(crate) const TOP_KEYS: &[&str] = &[
    "global",
    "vrrp_script",
    "track_file",
    "vrrp_instance",
    "vrrp_sync_group",
    "virtual_server_group",
    "virtual_server",
];

pub(crate) const VIRTUAL_SERVER_GROUP_KEYS: &[&str] = &["name", "members"];

pub(crate) const GLOBAL_KEYS: &[&str] = &[
    "router_id",
    "dataplane",
    "control_socket",
    "script_user",
    "enable_script_security",
    "vrrp_version",
    "lvs_sync_daemon",
    "vrrp_garp_interval",
    "vrrp_gna_interval",
    "notify_master",
    "notify_backup",
    "notify_fault",
    "notify_stop",
    "notify",
];

pub(crate) const VRRP_SCRIPT_KEYS: &[&str] =
    &["name", "script", "interval", "timeout", "weight", "rise", "fall", "user"];

pub(crate) const TRACK_FILE_KEYS: &[&str] = &["name", "file", "weight"];

pub(crate) const VRRP_INSTANCE_KEYS: &[&str] = &[
    "name",
    "interface",
    "state",
    "virtual_router_id",
    "priority",
    "advert_int",
    "version",
    "authentication",
    "unicast_src_ip",
    "unicast_peer",
    "virtual_ipaddress",
    "virtual_ipaddress_excluded",
    "nopreempt",
    "dont_track_primary",
    "preempt_delay",
    "garp_master_delay",
    "garp_master_repeat",
    "garp_master_refresh",
    "garp_master_refresh_repeat",
    "track_interface",
    "track_script",
    "track_file",
    "notify_master",
    "notify_backup",
    "notify_fault",
    "notify_stop",
    "notify",
];

const AUTH_KEYS: &[&str] = &["auth_type", "auth_pass"];
const TRACK_ENTRY_KEYS: &[&str] = &["name", "weight"];

pub(crate) const SYNC_GROUP_KEYS: &[&str] = &[
    "name",
    "group",
    "sync_group_tracking_weight",
    "notify_master",
    "notify_backup",
    "notify_fault",
    "notify_stop",
    "notify",
];

pub(crate) const VIRTUAL_SERVER_KEYS: &[&str] = &[
    "group",
    "address",
    "port",
    "protocol",
    "lb_algo",
    "lb_kind",
    "persistence_timeout",
    "persistence_granularity",
    "sh-port",
    "mh-port",
    "quorum",
    "hysteresis",
    "quorum_up",
    "quorum_down",
    "sorry_server",
    "alpha",
    "inhibit_on_failure",
    "delay_loop",
    "connect_timeout",
    "retry",
    "delay_before_retry",
    "warmup",
    "real_server",
];

const SORRY_SERVER_KEYS: &[&str] = &["address", "port"];

pub(crate) const CHECK_BLOCKS: &[&str] =
    &["TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "UDP_CHECK"];

pub(crate) const REAL_SERVER_KEYS: &[&str] = &[
    "address",
    "port",
    "weight",
    "inhibit_on_failure",
    "notify_up",
    "notify_down",
    "delay_loop",
    "connect_timeout",
    "retry",
    "delay_before_retry",
    "warmup",
    "TCP_CHECK",
    "HTTP_GET",
    "SSL_GET",
    "MISC_CHECK",
    "UDP_CHECK",
];

const TIMING_KEYS: &[&str] =
    &["delay_loop", "retry", "delay_before_retry", "warmup", "rise", "fall"];
const CONNECT_KEYS: &[&str] = &["connect_ip", "connect_port", "bindto", "connect_timeout"];
const URL_KEYS: &[&str] = &["path", "status_code", "digest"];

/// Keys a check block accepts.
pub(crate) fn check_keys(block: &str) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = TIMING_KEYS.to_vec();
    match block {
        "TCP_CHECK" => keys.extend(CONNECT_KEYS),
        "HTTP_GET" | "SSL_GET" => {
            keys.extend(CONNECT_KEYS);
            keys.extend(["url", "virtualhost"]);
        }
        "MISC_CHECK" => keys.extend(["misc_path", "misc_timeout", "misc_dynamic", "user"]),
        "UDP_CHECK" => {
            keys.extend(CONNECT_KEYS);
            keys.extend(["payload", "require_reply"]);
        }
        _ => {}
    }
    keys
}

/// keepalived spellings that ha-lb names differently, for "did you mean" hints.
pub(crate) const ALIASES: &[(&str, &str)] = &[
    ("lvs_sched", "lb_algo"),
    ("lvs_method", "lb_kind"),
    ("nb_get_retry", "retry"),
    ("global_defs", "global"),
    ("priority_weight", "weight"),
    ("mcast_src_ip", "unicast_src_ip"),
    ("no_preempt", "nopreempt"),
];

// ---------------------------------------------------------------------------------------
// the reader
// ---------------------------------------------------------------------------------------

struct Reader<'s> {
    src: &'s str,
    line_starts: Vec<usize>,
    map: SourceMap,
    errors: Vec<ConfigError>,
    /// Items being read; an error taints all of them.
    stack: Vec<Item>,
}

/// A table being read.
#[derive(Clone, Copy)]
struct Tbl<'d> {
    t: &'d dyn TableLike,
    /// Name used in messages ("vrrp_instance", "HTTP_GET", …).
    what: &'static str,
    pos: Pos,
    item: Item,
    /// Record key positions under `item` (false for small sub-tables whose keys would
    /// shadow the item's own).
    record: bool,
}

/// A scalar or inline value and where it is.
#[derive(Clone, Copy)]
struct Val<'d> {
    v: &'d te::Value,
    pos: Pos,
    span: Option<(usize, usize)>,
}

fn article_type(v: &te::Value) -> &'static str {
    match v {
        te::Value::String(_) => "a string",
        te::Value::Integer(_) => "an integer",
        te::Value::Float(_) => "a float",
        te::Value::Boolean(_) => "a boolean",
        te::Value::Datetime(_) => "a date-time",
        te::Value::Array(_) => "an array",
        te::Value::InlineTable(_) => "a table",
    }
}

fn article_item(i: &te::Item) -> &'static str {
    match i {
        te::Item::Value(v) => article_type(v),
        te::Item::Table(_) => "a table",
        te::Item::ArrayOfTables(_) => "an array of tables",
        te::Item::None => "nothing",
    }
}

/// Microseconds in a number of seconds (keepalived timers have µs resolution).
pub(crate) fn micros(secs: f64) -> u64 {
    (secs * 1e6).round() as u64
}

pub(crate) fn fmt_secs(us: u64) -> String {
    let s = us as f64 / 1e6;
    let mut t = format!("{s}");
    if t.ends_with(".0") {
        t.truncate(t.len() - 2);
    }
    t
}

impl<'s> Reader<'s> {
    fn new(src: &'s str, file: &Path) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Reader {
            src,
            line_starts,
            map: SourceMap::new(file),
            errors: Vec::new(),
            stack: Vec::new(),
        }
    }

    fn pos_at(&self, byte: usize) -> Pos {
        let byte = byte.min(self.src.len());
        let line = self.line_starts.partition_point(|&s| s <= byte);
        let start = self.line_starts[line - 1];
        let col = self.src.get(start..byte).map_or(1, |s| s.chars().count() + 1);
        Pos { line, col }
    }

    fn pos_of(&self, span: Option<Range<usize>>) -> Pos {
        span.map_or(Pos { line: 1, col: 1 }, |s| self.pos_at(s.start))
    }

    fn raw(&self, v: &Val<'_>) -> String {
        match v.span {
            Some((a, b)) => self.src.get(a..b).unwrap_or("").trim().to_string(),
            None => v.v.to_string().trim().to_string(),
        }
    }

    fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.errors.push(self.map.error(pos, msg));
        let n = self.stack.len();
        for (i, &it) in self.stack.iter().enumerate() {
            self.map.taint_at(it, pos, i + 1 == n);
        }
    }

    // ---- tables ------------------------------------------------------------------------

    /// Start reading the table of a model item: record where it is, report unknown keys.
    fn open_item<'d>(
        &mut self,
        t: &'d dyn TableLike,
        what: &'static str,
        pos: Pos,
        item: Item,
        allowed: &[&'static str],
    ) -> Tbl<'d> {
        self.map.set_item(item, pos);
        self.open(t, what, pos, item, allowed, true)
    }

    /// Start reading a table: report keys it does not allow.
    fn open<'d>(
        &mut self,
        t: &'d dyn TableLike,
        what: &'static str,
        pos: Pos,
        item: Item,
        allowed: &[&'static str],
        record: bool,
    ) -> Tbl<'d> {
        for (k, _) in t.iter() {
            if !allowed.contains(&k) {
                let kpos =
                    t.key(k).and_then(|key| key.span()).map_or(pos, |s| self.pos_at(s.start));
                // An unknown key leaves the model values intact: no taint, so the
                // semantic checks still run on this item.
                let e = self.map.error(kpos, unknown_key(k, what, allowed));
                self.errors.push(e);
            }
        }
        Tbl { t, what, pos, item, record }
    }

    fn rec(&mut self, tb: &Tbl<'_>, key: &'static str, pos: Pos) {
        if tb.record {
            self.map.set_key(tb.item, key, pos);
        }
    }

    fn item_pos(&self, tb: &Tbl<'_>, key: &str, i: &te::Item) -> Pos {
        let span = match i {
            te::Item::Value(v) => v.span(),
            te::Item::Table(t) => t.span(),
            te::Item::ArrayOfTables(a) => a.span(),
            te::Item::None => None,
        };
        span.or_else(|| tb.t.key(key).and_then(|k| k.span()))
            .map_or(tb.pos, |s| self.pos_at(s.start))
    }

    fn val<'d>(&self, v: &'d te::Value, fallback: Pos) -> Val<'d> {
        let span = v.span();
        Val {
            v,
            pos: span.clone().map_or(fallback, |s| self.pos_at(s.start)),
            span: span.map(|s| (s.start, s.end)),
        }
    }

    /// The value of `key`, if present; a table there is a type error.
    fn get<'d>(&mut self, tb: &Tbl<'d>, key: &'static str, expected: &str) -> Option<Val<'d>> {
        let i = tb.t.get(key)?;
        let pos = self.item_pos(tb, key, i);
        self.rec(tb, key, pos);
        match i {
            te::Item::Value(v) => Some(self.val(v, pos)),
            other => {
                self.err(pos, format!("{key} must be {expected}, not {}", article_item(other)));
                None
            }
        }
    }

    /// Whether the table sets the required `key`; reports it missing where not.
    fn required(&mut self, tb: &Tbl<'_>, key: &str) -> bool {
        let present = tb.t.get(key).is_some();
        if !present {
            self.err(tb.pos, format!("{} is missing required key {key}", tb.what));
        }
        present
    }

    /// `[[key]]` entries (or an array of inline tables, or a single table).
    fn tables<'d>(&mut self, parent: &Tbl<'d>, key: &'static str) -> Vec<(&'d dyn TableLike, Pos)> {
        let Some(i) = parent.t.get(key) else {
            return Vec::new();
        };
        let pos = self.item_pos(parent, key, i);
        self.rec(parent, key, pos);
        match i {
            te::Item::ArrayOfTables(a) => a
                .iter()
                .map(|t| {
                    let p = t.span().map_or(pos, |s| self.pos_at(s.start));
                    (t as &dyn TableLike, p)
                })
                .collect(),
            te::Item::Table(t) => vec![(t as &dyn TableLike, pos)],
            te::Item::Value(te::Value::InlineTable(t)) => vec![(t as &dyn TableLike, pos)],
            te::Item::Value(te::Value::Array(a)) => {
                let mut out = Vec::new();
                for v in a.iter() {
                    let vv = self.val(v, pos);
                    match v {
                        te::Value::InlineTable(t) => out.push((t as &dyn TableLike, vv.pos)),
                        other => self.err(
                            vv.pos,
                            format!(
                                "each {key} entry must be a table, not {}",
                                article_type(other)
                            ),
                        ),
                    }
                }
                out
            }
            other => {
                self.err(
                    pos,
                    format!(
                        "{key} must be an array of tables ([[{key}]]), not {}",
                        article_item(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    /// A single sub-table.
    fn table<'d>(
        &mut self,
        parent: &Tbl<'d>,
        key: &'static str,
    ) -> Option<(&'d dyn TableLike, Pos)> {
        let i = parent.t.get(key)?;
        let pos = self.item_pos(parent, key, i);
        self.rec(parent, key, pos);
        match i {
            te::Item::Table(t) => Some((t as &dyn TableLike, pos)),
            te::Item::Value(te::Value::InlineTable(t)) => Some((t as &dyn TableLike, pos)),
            other => {
                self.err(pos, format!("{key} must be a table, not {}", article_item(other)));
                None
            }
        }
    }

    // ---- scalars -----------------------------------------------------------------------

    fn string(&mut self, tb: &Tbl<'_>, key: &'static str) -> Option<(String, Pos)> {
        let v = self.get(tb, key, "a string")?;
        self.as_string(&v, key)
    }

    fn as_string(&mut self, v: &Val<'_>, what: &str) -> Option<(String, Pos)> {
        match v.v {
            te::Value::String(s) => Some((s.value().clone(), v.pos)),
            other => {
                self.err(v.pos, format!("{what} must be a string, not {}", article_type(other)));
                None
            }
        }
    }

    fn req_string(&mut self, tb: &Tbl<'_>, key: &'static str) -> Option<(String, Pos)> {
        if !self.required(tb, key) {
            return None;
        }
        self.string(tb, key)
    }

    /// A name: non-empty, no whitespace.
    fn name(&mut self, tb: &Tbl<'_>) -> Option<String> {
        let (s, pos) = self.req_string(tb, "name")?;
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.err(
                pos,
                format!("{} name {s:?} must be non-empty and contain no whitespace", tb.what),
            );
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, tb: &Tbl<'_>, key: &'static str) -> Option<bool> {
        let v = self.get(tb, key, "a boolean (true or false)")?;
        match v.v {
            te::Value::Boolean(b) => Some(*b.value()),
            other => {
                self.err(
                    v.pos,
                    format!("{key} must be a boolean (true or false), not {}", article_type(other)),
                );
                None
            }
        }
    }

    fn int(&mut self, tb: &Tbl<'_>, key: &'static str, lo: i64, hi: i64) -> Option<i64> {
        let v = self.get(tb, key, "an integer")?;
        self.as_int(&v, key, lo, hi)
    }

    fn as_int(&mut self, v: &Val<'_>, what: &str, lo: i64, hi: i64) -> Option<i64> {
        match v.v {
            te::Value::Integer(n) => {
                let n = *n.value();
                if n < lo || n > hi {
                    let raw = self.raw(v);
                    self.err(v.pos, format!("{what} {raw} is out of range {lo}..={hi}"));
                    return None;
                }
                Some(n)
            }
            other => {
                self.err(v.pos, format!("{what} must be an integer, not {}", article_type(other)));
                None
            }
        }
    }

    fn req_int(&mut self, tb: &Tbl<'_>, key: &'static str, lo: i64, hi: i64) -> Option<i64> {
        if !self.required(tb, key) {
            return None;
        }
        self.int(tb, key, lo, hi)
    }

    /// A time in seconds (integer or float), bounds in microseconds.
    fn secs(
        &mut self,
        tb: &Tbl<'_>,
        key: &'static str,
        lo_us: u64,
        hi_us: u64,
    ) -> Option<Duration> {
        let v = self.get(tb, key, "a number of seconds")?;
        let f = match v.v {
            te::Value::Integer(n) => *n.value() as f64,
            te::Value::Float(f) => *f.value(),
            other => {
                self.err(
                    v.pos,
                    format!("{key} must be a number of seconds, not {}", article_type(other)),
                );
                return None;
            }
        };
        let raw = self.raw(&v);
        if !f.is_finite() || f < 0.0 || micros(f) < lo_us || micros(f) > hi_us {
            self.err(
                v.pos,
                format!(
                    "{key} {raw} is out of range {}..={} (seconds)",
                    fmt_secs(lo_us),
                    fmt_secs(hi_us)
                ),
            );
            return None;
        }
        Some(Duration::from_micros(micros(f)))
    }

    /// A string parsed with `parse`, whose error completes "KEY RAW …".
    fn parsed<T>(
        &mut self,
        tb: &Tbl<'_>,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let v = self.get(tb, key, "a string")?;
        self.as_parsed(&v, key, parse)
    }

    fn as_parsed<T>(
        &mut self,
        v: &Val<'_>,
        what: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (s, pos) = self.as_string(v, what)?;
        match parse(&s) {
            Ok(t) => Some(t),
            Err(m) => {
                let sep = if m.starts_with(':') { "" } else { " " };
                self.err(pos, format!("{what} {s:?}{sep}{m}"));
                None
            }
        }
    }

    fn ip(&mut self, tb: &Tbl<'_>, key: &'static str) -> Option<IpAddr> {
        self.parsed(tb, key, parse_ip)
    }

    fn req_ip(&mut self, tb: &Tbl<'_>, key: &'static str) -> Option<IpAddr> {
        if !self.required(tb, key) {
            return None;
        }
        self.ip(tb, key)
    }

    fn choice<T: FromStr>(&mut self, tb: &Tbl<'_>, key: &'static str, names: &[&str]) -> Option<T> {
        self.parsed(tb, key, |s| {
            T::from_str(s).map_err(|_| format!("is not one of {}", names.join(", ")))
        })
    }

    fn script(&mut self, tb: &Tbl<'_>, key: &'static str) -> Option<Script> {
        let v = self.get(tb, key, "a command (string or array of strings)")?;
        match v.v {
            te::Value::String(s) => match Script::parse(s.value()) {
                Some(sc) => Some(sc),
                None => {
                    self.err(
                        v.pos,
                        format!("{key} {:?} is empty or has an unclosed quote", s.value()),
                    );
                    None
                }
            },
            te::Value::Array(a) => {
                let mut argv = Vec::new();
                for e in a.iter() {
                    let ev = self.val(e, v.pos);
                    argv.push(self.as_string(&ev, &format!("each {key} argument"))?.0);
                }
                if argv.first().is_none_or(|p| p.is_empty()) {
                    self.err(v.pos, format!("{key} needs a program as its first element"));
                    return None;
                }
                Some(Script { argv })
            }
            other => {
                self.err(
                    v.pos,
                    format!(
                        "{key} must be a command (string or array of strings), not {}",
                        article_type(other)
                    ),
                );
                None
            }
        }
    }

    fn notify(&mut self, tb: &Tbl<'_>) -> Notify {
        Notify {
            notify_master: self.script(tb, "notify_master"),
            notify_backup: self.script(tb, "notify_backup"),
            notify_fault: self.script(tb, "notify_fault"),
            notify_stop: self.script(tb, "notify_stop"),
            notify: self.script(tb, "notify"),
        }
    }

    fn script_user(&mut self, tb: &Tbl<'_>, key: &'static str) -> Option<ScriptUser> {
        self.parsed(tb, key, |s| {
            ScriptUser::from_str(s)
                .map_err(|_| "is not a user name, \"user:group\" or \"user group\"".to_string())
        })
    }

    /// The elements of an array value, recorded as list elements of `key`.
    fn list<'d>(&mut self, tb: &Tbl<'d>, key: &'static str) -> Vec<Val<'d>> {
        let Some(v) = self.get(tb, key, "an array") else {
            return Vec::new();
        };
        match v.v {
            te::Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let ev = self.val(e, v.pos);
                    if tb.record {
                        self.map.set_elem(tb.item, key, i, ev.pos);
                    }
                    ev
                })
                .collect(),
            other => {
                self.err(v.pos, format!("{key} must be an array, not {}", article_type(other)));
                Vec::new()
            }
        }
    }

    // ---- sections ----------------------------------------------------------------------

    fn config(&mut self, root: &te::Table) -> Config {
        let top = self.open(
            root,
            "the top level",
            Pos { line: 1, col: 1 },
            Item::Global,
            TOP_KEYS,
            false,
        );
        let global = self.global(&top);

        let mut vrrp_scripts = Vec::new();
        for (i, (t, pos)) in self.tables(&top, "vrrp_script").into_iter().enumerate() {
            vrrp_scripts.push(self.vrrp_script(t, pos, i));
        }
        let mut track_files = Vec::new();
        for (i, (t, pos)) in self.tables(&top, "track_file").into_iter().enumerate() {
            track_files.push(self.track_file(t, pos, i));
        }
        let mut vrrp_instances = Vec::new();
        for (i, (t, pos)) in self.tables(&top, "vrrp_instance").into_iter().enumerate() {
            let inst = self.vrrp_instance(t, pos, i, &global, &vrrp_scripts, &track_files);
            vrrp_instances.push(inst);
        }
        let mut vrrp_sync_groups = Vec::new();
        for (i, (t, pos)) in self.tables(&top, "vrrp_sync_group").into_iter().enumerate() {
            vrrp_sync_groups.push(self.sync_group(t, pos, i));
        }
        let mut virtual_server_groups = Vec::new();
        for (i, (t, pos)) in self.tables(&top, "virtual_server_group").into_iter().enumerate() {
            virtual_server_groups.push(self.virtual_server_group(t, pos, i));
        }
        let mut read = Vec::new();
        for (i, (t, pos)) in self.tables(&top, "virtual_server").into_iter().enumerate() {
            read.push(self.virtual_server(t, pos, i, &virtual_server_groups));
        }
        let virtual_servers = self.expand_groups(read, &virtual_server_groups);
        Config {
            global,
            vrrp_scripts,
            track_files,
            vrrp_instances,
            vrrp_sync_groups,
            virtual_server_groups: virtual_server_groups.into_iter().map(|(g, _)| g).collect(),
            virtual_servers,
        }
    }

    fn virtual_server_group(
        &mut self,
        t: &dyn TableLike,
        pos: Pos,
        idx: usize,
    ) -> (VirtualServerGroup, Vec<Pos>) {
        let item = Item::VirtualServerGroup(idx);
        self.stack.push(item);
        let tb = self.open_item(t, "virtual_server_group", pos, item, VIRTUAL_SERVER_GROUP_KEYS);
        let name = self.name(&tb).unwrap_or_default();
        self.required(&tb, "members");
        let (mut members, mut at, mut entries) = (Vec::new(), Vec::new(), Vec::new());
        for v in self.list(&tb, "members") {
            let Some((s, p)) = self.as_string(&v, "each member") else { continue };
            entries.push(s.split_whitespace().collect::<Vec<_>>().join(" "));
            match parse_group_member(&s) {
                Ok(m) if members.len() + m.len() > GROUP_MEMBERS_MAX => {
                    self.err(p, format!("virtual_server_group {name:?} has more than {GROUP_MEMBERS_MAX} members"));
                    break;
                }
                Ok(m) => {
                    at.extend(std::iter::repeat_n(p, m.len()));
                    members.extend(m);
                }
                Err(e) => self.err(p, format!("member {s:?} {e}")),
            }
        }
        if members.is_empty() && tb.t.get("members").is_some() && !self.map.is_tainted(item) {
            self.err(self.map.key(item, "members"), "virtual_server_group has no members");
        }
        // keepalived: "Cannot mix IPv4 and IPv6 in virtual server group"; no forwarding
        // method could serve both with the same real servers.
        if let Some(i) = members.iter().position(|m| m.is_ipv4() != members[0].is_ipv4()) {
            self.err(at[i], format!("virtual_server_group {name:?} mixes IPv4 and IPv6 members (keepalived refuses it too: the same real servers cannot serve both); use a group per family"));
        }
        self.stack.pop();
        (VirtualServerGroup { name, entries, members }, at)
    }

    /// The virtual servers as read, each with `group` once per member of its group: the
    /// model's list, and the source map to match.
    fn expand_groups(
        &mut self,
        read: Vec<VirtualServer>,
        groups: &[(VirtualServerGroup, Vec<Pos>)],
    ) -> Vec<VirtualServer> {
        let (mut out, mut origins) = (Vec::new(), Vec::new());
        let mut member_at = Vec::new();
        for (i, vs) in read.into_iter().enumerate() {
            let found = vs.group.as_ref().and_then(|g| groups.iter().find(|(x, _)| &x.name == g));
            match found {
                Some((g, at)) => {
                    for (m, p) in g.members.iter().zip(at) {
                        member_at.push((out.len(), *p));
                        origins.push(i);
                        out.push(VirtualServer { address: m.ip(), port: m.port(), ..vs.clone() });
                    }
                }
                // Unknown groups are an error already; a placeholder keeps the indices.
                None => {
                    origins.push(i);
                    out.push(vs);
                }
            }
        }
        self.map.expand_virtual_servers(&origins);
        for (j, p) in member_at {
            self.map.set_key(Item::VirtualServer(j), "address", p);
            self.map.set_key(Item::VirtualServer(j), "port", p);
        }
        out
    }

    fn global(&mut self, top: &Tbl<'_>) -> Global {
        let mut g = Global::default();
        let Some((t, pos)) = self.table(top, "global") else {
            return g;
        };
        self.stack.push(Item::Global);
        let tb = self.open_item(t, "global", pos, Item::Global, GLOBAL_KEYS);
        if let Some((s, p)) = self.string(&tb, "router_id") {
            if s.trim().is_empty() {
                self.err(p, "router_id must not be empty");
            } else {
                g.router_id = Some(s);
            }
        }
        if let Some(d) = self.choice(&tb, "dataplane", Dataplane::NAMES) {
            g.dataplane = d;
        }
        if let Some(p) = self.parsed(&tb, "control_socket", |s| {
            if Path::new(s).is_absolute() {
                Ok(PathBuf::from(s))
            } else {
                Err("must be an absolute path".to_string())
            }
        }) {
            g.control_socket = p;
        }
        g.script_user = self.script_user(&tb, "script_user");
        if let Some(b) = self.boolean(&tb, "enable_script_security") {
            g.enable_script_security = b;
        }
        if let Some(v) = self.int(&tb, "vrrp_version", 2, 3) {
            g.vrrp_version = if v == 2 { VrrpVersion::V2 } else { VrrpVersion::V3 };
        }
        // keepalived's range: up to UINT_MAX microseconds.
        for (key, to) in [
            ("vrrp_garp_interval", &mut g.vrrp_garp_interval),
            ("vrrp_gna_interval", &mut g.vrrp_gna_interval),
        ] {
            if let Some(d) = self.secs(&tb, key, 0, u32::MAX as u64) {
                *to = d;
            }
        }
        g.notify = self.notify(&tb);
        if let Some((st, spos)) = self.table(&tb, "lvs_sync_daemon") {
            let sb = self.open(
                st,
                "lvs_sync_daemon",
                spos,
                Item::Global,
                &["interface", "vrrp_instance", "id", "protocol"],
                false,
            );
            let interface = self.string(&sb, "interface").map(|(s, _)| s);
            let vrrp_instance = self.string(&sb, "vrrp_instance").map(|(s, _)| s);
            // 0 as keepalived and the kernel allow: a backup with sync id 0 takes the kernel's
            // messages of any id.
            let id = self.int(&sb, "id", 0, 255).map(|v| v as u8);
            let protocol = self.choice(&sb, "protocol", SyncProtocol::NAMES).unwrap_or_default();
            for k in ["interface", "vrrp_instance"] {
                self.required(&sb, k);
            }
            if let (Some(interface), Some(vrrp_instance)) = (interface, vrrp_instance) {
                g.lvs_sync_daemon = Some(LvsSyncDaemon { interface, vrrp_instance, id, protocol });
            }
        }
        self.stack.pop();
        g
    }

    fn vrrp_script(&mut self, t: &dyn TableLike, pos: Pos, idx: usize) -> VrrpScript {
        let item = Item::VrrpScript(idx);
        self.stack.push(item);
        let tb = self.open_item(t, "vrrp_script", pos, item, VRRP_SCRIPT_KEYS);
        let name = self.name(&tb).unwrap_or_default();
        let script = if self.required(&tb, "script") { self.script(&tb, "script") } else { None };
        let interval =
            self.secs(&tb, "interval", 1_000, 86_400_000_000).unwrap_or(Duration::from_secs(1));
        let timeout = self.secs(&tb, "timeout", 1_000, 86_400_000_000).unwrap_or(interval);
        let s = VrrpScript {
            name,
            script: script.unwrap_or_else(|| Script { argv: vec![String::new()] }),
            interval,
            timeout,
            weight: self.int(&tb, "weight", -253, 253).unwrap_or(0) as i32,
            rise: self.int(&tb, "rise", 1, 1000).unwrap_or(1) as u32,
            fall: self.int(&tb, "fall", 1, 1000).unwrap_or(1) as u32,
            user: self.script_user(&tb, "user"),
        };
        self.stack.pop();
        s
    }

    fn track_file(&mut self, t: &dyn TableLike, pos: Pos, idx: usize) -> TrackFile {
        let item = Item::TrackFile(idx);
        self.stack.push(item);
        let tb = self.open_item(t, "track_file", pos, item, TRACK_FILE_KEYS);
        let name = self.name(&tb).unwrap_or_default();
        let file = self
            .req_string(&tb, "file")
            .and_then(|(s, p)| {
                if Path::new(&s).is_absolute() {
                    Some(PathBuf::from(s))
                } else {
                    self.err(p, format!("file {s:?} must be an absolute path"));
                    None
                }
            })
            .unwrap_or_default();
        let weight = self.int(&tb, "weight", -2_147_483_647, 2_147_483_647).unwrap_or(1) as i32;
        self.stack.pop();
        TrackFile { name, file, weight }
    }

    fn vrrp_instance(
        &mut self,
        t: &dyn TableLike,
        pos: Pos,
        idx: usize,
        global: &Global,
        scripts: &[VrrpScript],
        track_files: &[TrackFile],
    ) -> VrrpInstance {
        let item = Item::VrrpInstance(idx);
        self.stack.push(item);
        let tb = self.open_item(t, "vrrp_instance", pos, item, VRRP_INSTANCE_KEYS);
        let name = self.name(&tb).unwrap_or_default();
        let interface = self.ifname_req(&tb, "interface").unwrap_or_default();
        let state = self
            .parsed(&tb, "state", |s| match s {
                "MASTER" => Ok(InitialState::Master),
                "BACKUP" => Ok(InitialState::Backup),
                _ => Err("is not one of MASTER, BACKUP".to_string()),
            })
            .unwrap_or_default();
        let virtual_router_id = self.req_int(&tb, "virtual_router_id", 1, 255).unwrap_or(0) as u8;
        let priority = self.int(&tb, "priority", 1, 255).unwrap_or(100) as u8;
        // Version-specific limits are checked in validate.
        let advert_int =
            self.secs(&tb, "advert_int", 10_000, 255_000_000).unwrap_or(Duration::from_secs(1));
        let version = self.int(&tb, "version", 2, 3);

        let authentication = self.authentication(&tb);
        let unicast_src_ip = self.ip(&tb, "unicast_src_ip");
        let mut unicast_peer = Vec::new();
        for v in self.list(&tb, "unicast_peer") {
            if let Some(a) = self.as_parsed(&v, "unicast_peer", parse_ip) {
                unicast_peer.push(a);
            }
        }
        let virtual_ipaddress = self.vips(&tb, "virtual_ipaddress");
        let virtual_ipaddress_excluded = self.vips(&tb, "virtual_ipaddress_excluded");

        let family =
            virtual_ipaddress.first().map(VirtualIpAddress::family).unwrap_or(AddrFamily::Ipv4);
        let version = match version {
            Some(2) => VrrpVersion::V2,
            Some(_) => VrrpVersion::V3,
            None if family == AddrFamily::Ipv6 => VrrpVersion::V3,
            None => global.vrrp_version,
        };

        let garp_default = Garp::default();
        let garp = Garp {
            master_delay: self
                .secs(&tb, "garp_master_delay", 0, 3_600_000_000)
                .unwrap_or(garp_default.master_delay),
            master_repeat: self
                .int(&tb, "garp_master_repeat", 1, 255)
                .map_or(garp_default.master_repeat, |n| n as u32),
            master_refresh: self
                .secs(&tb, "garp_master_refresh", 0, 86_400_000_000)
                .filter(|d| !d.is_zero()),
            master_refresh_repeat: self
                .int(&tb, "garp_master_refresh_repeat", 1, 255)
                .map_or(garp_default.master_refresh_repeat, |n| n as u32),
            interval: global.vrrp_garp_interval,
            gna_interval: global.vrrp_gna_interval,
        };

        let track_interface = self
            .track_entries(&tb, "track_interface", -253, 253)
            .into_iter()
            .filter_map(|(n, w, p)| {
                if valid_ifname(&n) {
                    Some(TrackInterface { interface: n, weight: w.unwrap_or(0) })
                } else {
                    self.err(p, format!("track_interface {n:?} is not a valid interface name"));
                    None
                }
            })
            .collect();
        let track_script = self
            .track_entries(&tb, "track_script", -253, 253)
            .into_iter()
            .map(|(n, w, _)| TrackScript {
                weight: w.unwrap_or_else(|| {
                    scripts.iter().find(|s| s.name == n).map_or(0, |s| s.weight)
                }),
                script: n,
            })
            .collect();
        let track_file = self
            .track_entries(&tb, "track_file", -254, 254)
            .into_iter()
            .map(|(n, w, _)| TrackFileRef {
                weight: w.unwrap_or_else(|| {
                    track_files.iter().find(|t| t.name == n).map_or(1, |t| t.weight)
                }),
                track_file: n,
            })
            .collect();

        let mut notify = self.notify(&tb);
        notify.inherit(&global.notify);

        let inst = VrrpInstance {
            name,
            interface,
            state,
            virtual_router_id,
            priority,
            advert_int,
            version,
            authentication,
            unicast_src_ip,
            unicast_peer,
            virtual_ipaddress,
            virtual_ipaddress_excluded,
            nopreempt: self.boolean(&tb, "nopreempt").unwrap_or(false),
            dont_track_primary: self.boolean(&tb, "dont_track_primary").unwrap_or(false),
            preempt_delay: self
                .secs(&tb, "preempt_delay", 0, 1_000_000_000)
                .unwrap_or(Duration::ZERO),
            garp,
            track_interface,
            track_script,
            track_file,
            notify,
        };
        self.stack.pop();
        inst
    }

    fn ifname_req(&mut self, tb: &Tbl<'_>, key: &'static str) -> Option<String> {
        let (s, p) = self.req_string(tb, key)?;
        if !valid_ifname(&s) {
            self.err(
                p,
                format!("{key} {s:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"),
            );
            return None;
        }
        Some(s)
    }

    fn authentication(&mut self, tb: &Tbl<'_>) -> Option<Authentication> {
        let (t, pos) = self.table(tb, "authentication")?;
        let at = self.open(t, "authentication", pos, tb.item, AUTH_KEYS, false);
        // Positions inside the table are recorded under the instance.
        let auth_type = self.req_string(&at, "auth_type");
        let pass = self.req_string(&at, "auth_pass");
        let (ty, tpos) = auth_type?;
        match ty.as_str() {
            "PASS" => {}
            "AH" => {
                self.err(tpos, "auth_type AH is not supported (only PASS)");
                return None;
            }
            _ => {
                self.err(tpos, format!("auth_type {ty:?} is not one of PASS"));
                return None;
            }
        }
        let (p, ppos) = pass?;
        if p.is_empty() || p.len() > 8 {
            self.err(
                ppos,
                format!("auth_pass must be 1 to 8 bytes long (VRRPv2 carries 8), not {}", p.len()),
            );
            return None;
        }
        Some(Authentication::Pass(p))
    }

    fn vips(&mut self, tb: &Tbl<'_>, key: &'static str) -> Vec<VirtualIpAddress> {
        let mut out = Vec::new();
        for v in self.list(tb, key) {
            if let Some(vip) = self
                .as_parsed(&v, key, |s| VirtualIpAddress::from_str(s).map_err(|e| format!(": {e}")))
            {
                out.push(vip);
            }
        }
        out
    }

    /// `["name", { name = "x", weight = -10 }, …]` → (name, explicit weight, position).
    fn track_entries(
        &mut self,
        tb: &Tbl<'_>,
        key: &'static str,
        lo: i64,
        hi: i64,
    ) -> Vec<(String, Option<i32>, Pos)> {
        let mut out = Vec::new();
        for v in self.list(tb, key) {
            match v.v {
                te::Value::String(s) => out.push((s.value().clone(), None, v.pos)),
                te::Value::InlineTable(t) => {
                    let et = self.open(t, key, v.pos, tb.item, TRACK_ENTRY_KEYS, false);
                    let name = self.req_string(&et, "name");
                    let w = self.int(&et, "weight", lo, hi).map(|w| w as i32);
                    if let Some((n, _)) = name {
                        out.push((n, w, v.pos));
                    }
                }
                other => self.err(
                    v.pos,
                    format!(
                        "each {key} entry must be a name or {{ name = \"…\", weight = N }}, not {}",
                        article_type(other)
                    ),
                ),
            }
        }
        out
    }

    fn sync_group(&mut self, t: &dyn TableLike, pos: Pos, idx: usize) -> VrrpSyncGroup {
        let item = Item::VrrpSyncGroup(idx);
        self.stack.push(item);
        let tb = self.open_item(t, "vrrp_sync_group", pos, item, SYNC_GROUP_KEYS);
        let name = self.name(&tb).unwrap_or_default();
        self.required(&tb, "group");
        let mut group = Vec::new();
        for v in self.list(&tb, "group") {
            if let Some((s, _)) = self.as_string(&v, "each group member") {
                group.push(s);
            }
        }
        let sync_group_tracking_weight =
            self.boolean(&tb, "sync_group_tracking_weight").unwrap_or(false);
        let notify = self.notify(&tb);
        self.stack.pop();
        VrrpSyncGroup { name, group, sync_group_tracking_weight, notify }
    }

    fn virtual_server(
        &mut self,
        t: &dyn TableLike,
        pos: Pos,
        idx: usize,
        groups: &[(VirtualServerGroup, Vec<Pos>)],
    ) -> VirtualServer {
        let item = Item::VirtualServer(idx);
        self.stack.push(item);
        let tb = self.open_item(t, "virtual_server", pos, item, VIRTUAL_SERVER_KEYS);
        let group = self.string(&tb, "group").map(|(g, gpos)| {
            if !groups.iter().any(|(x, _)| x.name == g) {
                let known: Vec<&str> = groups.iter().map(|(x, _)| x.name.as_str()).collect();
                self.err(gpos, unknown_name("virtual_server_group", &g, "the file", &known));
            }
            for key in ["address", "port"] {
                if let Some(i) = tb.t.get(key) {
                    let p = self.item_pos(&tb, key, i);
                    self.err(p, format!("{key} is set by the group's members: a virtual_server has either group or address and port"));
                }
            }
            g
        });
        let members = group
            .as_ref()
            .and_then(|g| groups.iter().find(|(x, _)| &x.name == g))
            .map(|(x, _)| x.members.as_slice());
        let (address, port, common_port) = match members {
            Some(ms) => {
                let first = ms.first().copied().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                let common = ms.iter().all(|m| m.port() == first.port()).then_some(first.port());
                (first.ip(), first.port(), common)
            }
            None if group.is_some() => (IpAddr::from([0, 0, 0, 0]), 0, None),
            None => {
                let address = self.req_ip(&tb, "address").unwrap_or(IpAddr::from([0, 0, 0, 0]));
                let port = self.req_int(&tb, "port", 1, 65535).unwrap_or(0) as u16;
                (address, port, Some(port))
            }
        };
        let protocol = self
            .parsed(&tb, "protocol", |s| match s {
                "TCP" => Ok(Protocol::Tcp),
                "UDP" => Ok(Protocol::Udp),
                _ => Err("is not one of TCP, UDP".to_string()),
            })
            .unwrap_or_default();
        let lb_algo = self.choice(&tb, "lb_algo", LbAlgo::NAMES).unwrap_or_default();
        let lb_kind = self
            .parsed(&tb, "lb_kind", |s| match s {
                "NAT" => Ok(LbKind::Nat),
                "DR" => Ok(LbKind::Dr),
                "TUN" => Ok(LbKind::Tun),
                _ => Err("is not one of NAT, DR, TUN".to_string()),
            })
            .unwrap_or_default();
        let persistence_timeout = self
            .int(&tb, "persistence_timeout", 1, 2_678_400)
            .map(|s| Duration::from_secs(s as u64));
        let max_prefix = if address.is_ipv4() { 32 } else { 128 };
        let persistence_granularity =
            self.parsed(&tb, "persistence_granularity", |s| granularity_prefix(s, max_prefix));
        if persistence_granularity.is_some() && persistence_timeout.is_none() {
            if let Some(i) = tb.t.get("persistence_granularity") {
                let pos = self.item_pos(&tb, "persistence_granularity", i);
                self.err(pos, "persistence_granularity needs persistence_timeout");
            }
        }
        let quorum = self.int(&tb, "quorum", 1, 1_000_000_000).unwrap_or(1) as u32;
        let hysteresis = self.int(&tb, "hysteresis", 0, 1_000_000_000).unwrap_or(0) as u32;
        let quorum_up = self.script(&tb, "quorum_up");
        let quorum_down = self.script(&tb, "quorum_down");
        let sorry_server = self.table(&tb, "sorry_server").and_then(|(st, spos)| {
            let sb = self.open(st, "sorry_server", spos, item, SORRY_SERVER_KEYS, false);
            let a = self.req_ip(&sb, "address");
            let p = self.int(&sb, "port", 1, 65535).map(|p| p as u16);
            let p = p.or(common_port).or_else(|| {
                self.err(spos, different_ports("sorry_server", group.as_deref()));
                None
            });
            a.zip(p).map(|(a, p)| SocketAddr::new(a, p))
        });
        let defaults = self.timing_defaults(&tb, true);
        let delay_loop = defaults.delay_loop.unwrap_or(Duration::from_secs(60));
        let alpha = self.boolean(&tb, "alpha").unwrap_or(false);
        let inhibit = self.boolean(&tb, "inhibit_on_failure").unwrap_or(false);
        // keepalived's spelling; each only with its scheduler.
        let mut hash_port = false;
        for (key, algo) in [("sh-port", LbAlgo::Sh), ("mh-port", LbAlgo::Mh)] {
            if self.boolean(&tb, key).unwrap_or(false) {
                if lb_algo == algo {
                    hash_port = true;
                } else if let Some(i) = tb.t.get(key) {
                    let pos = self.item_pos(&tb, key, i);
                    self.err(pos, format!("{key} needs lb_algo \"{}\"", algo.as_str()));
                }
            }
        }

        let mut real_servers = Vec::new();
        let vs_ctx =
            VsCtx { idx, port: common_port, group: group.clone(), delay_loop, inhibit, defaults };
        for (r, (rt, rpos)) in self.tables(&tb, "real_server").into_iter().enumerate() {
            real_servers.push(self.real_server(rt, rpos, &vs_ctx, r));
        }
        self.stack.pop();
        VirtualServer {
            group,
            address,
            port,
            protocol,
            lb_algo,
            lb_kind,
            persistence_timeout,
            persistence_granularity,
            hash_port,
            quorum,
            hysteresis,
            quorum_up,
            quorum_down,
            sorry_server,
            delay_loop,
            alpha,
            real_servers,
        }
    }

    /// The delay_loop, retry, delay_before_retry, warmup and, with `connect`,
    /// connect_timeout set on one level (virtual server, real server or check).
    fn timing_defaults(&mut self, tb: &Tbl<'_>, connect: bool) -> TimingDefaults {
        TimingDefaults {
            delay_loop: self.secs(tb, "delay_loop", 1_000, 86_400_000_000),
            connect_timeout: if connect {
                self.secs(tb, "connect_timeout", 1_000, 3_600_000_000)
            } else {
                None
            },
            retry: self.int(tb, "retry", 0, 1000).map(|n| n as u32),
            delay_before_retry: self.secs(tb, "delay_before_retry", 0, 3_600_000_000),
            warmup: self.secs(tb, "warmup", 0, 86_400_000_000),
        }
    }

    fn real_server(&mut self, t: &dyn TableLike, pos: Pos, vs: &VsCtx, r: usize) -> RealServer {
        let item = Item::RealServer(vs.idx, r);
        self.stack.push(item);
        let tb = self.open_item(t, "real_server", pos, item, REAL_SERVER_KEYS);
        let address = self.req_ip(&tb, "address").unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let port = match self.int(&tb, "port", 1, 65535) {
            Some(p) => p as u16,
            None if tb.t.get("port").is_some() => vs.port.unwrap_or(0),
            None => vs.port.unwrap_or_else(|| {
                self.err(tb.pos, different_ports("real_server", vs.group.as_deref()));
                0
            }),
        };
        let weight = self.int(&tb, "weight", 0, 65535).unwrap_or(1) as u32;
        let inhibit_on_failure = self.boolean(&tb, "inhibit_on_failure").unwrap_or(vs.inhibit);
        let notify_up = self.script(&tb, "notify_up");
        let notify_down = self.script(&tb, "notify_down");
        let defaults = self.timing_defaults(&tb, true).or(&vs.defaults);

        let present: Vec<&'static str> =
            CHECK_BLOCKS.iter().copied().filter(|b| tb.t.get(b).is_some()).collect();
        let mut check = None;
        if present.len() > 1 {
            let second = present[1];
            let p = tb.t.get(second).map_or(pos, |i| self.item_pos(&tb, second, i));
            self.err(
                p,
                format!(
                    "real_server has both {} and {second}; ha-lb allows one check per real server",
                    present[0]
                ),
            );
        } else if let Some(&block) = present.first() {
            let target = SocketAddr::new(address, port);
            check = self.check(&tb, block, target, vs, &defaults, r);
        }
        self.stack.pop();
        RealServer { address, port, weight, inhibit_on_failure, notify_up, notify_down, check }
    }

    fn check(
        &mut self,
        rs: &Tbl<'_>,
        block: &'static str,
        target: SocketAddr,
        vs: &VsCtx,
        inherited: &TimingDefaults,
        r: usize,
    ) -> Option<HealthCheck> {
        let (t, pos) = self.table(rs, block)?;
        let item = Item::Check(vs.idx, r);
        self.stack.push(item);
        let keys = check_keys(block);
        let tb = self.open_item(t, block, pos, item, &keys);
        // MISC_CHECK has no connect_timeout (an unknown key there, reported once).
        let set = self.timing_defaults(&tb, block != "MISC_CHECK").or(inherited);
        let delay_loop = set.delay_loop.unwrap_or(vs.delay_loop);
        let connect_timeout = set.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let timing = Timing {
            delay_loop,
            retry: set.retry.unwrap_or_else(|| default_retry(block)),
            delay_before_retry: set
                .delay_before_retry
                .unwrap_or_else(|| default_delay_before_retry(block)),
            warmup: set.warmup.unwrap_or(delay_loop),
            rise: self.int(&tb, "rise", 1, 1000).unwrap_or(1) as u32,
            fall: self.int(&tb, "fall", 1, 1000).unwrap_or(1) as u32,
        };

        let kind = match block {
            "TCP_CHECK" => Some(CheckKind::Tcp(self.connect(&tb, target, connect_timeout))),
            "HTTP_GET" | "SSL_GET" => {
                let connect = self.connect(&tb, target, connect_timeout);
                let virtualhost = self.string(&tb, "virtualhost").and_then(|(h, p)| {
                    if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        self.err(p, format!("virtualhost {h:?} is not a host name"));
                        None
                    } else {
                        Some(h)
                    }
                });
                let mut url = Vec::new();
                let tables = self.tables(&tb, "url");
                let none = tables.is_empty();
                for (ut, upos) in tables {
                    if let Some(u) = self.url(ut, upos, item) {
                        url.push(u);
                    }
                }
                if none {
                    self.err(
                        tb.pos,
                        format!("{block} needs at least one url (for example url = [{{ path = \"/\" }}])"),
                    );
                }
                let h = HttpCheck { connect, url, virtualhost };
                Some(if block == "HTTP_GET" { CheckKind::Http(h) } else { CheckKind::Ssl(h) })
            }
            "MISC_CHECK" => {
                let misc_path = if self.required(&tb, "misc_path") {
                    self.script(&tb, "misc_path")
                } else {
                    None
                };
                let misc_timeout =
                    self.secs(&tb, "misc_timeout", 1_000, 86_400_000_000).unwrap_or(vs.delay_loop);
                let misc_dynamic = self.boolean(&tb, "misc_dynamic").unwrap_or(false);
                let user = self.script_user(&tb, "user");
                misc_path.map(|misc_path| {
                    CheckKind::Misc(MiscCheck { misc_path, misc_timeout, misc_dynamic, user })
                })
            }
            "UDP_CHECK" => {
                let connect = self.connect(&tb, target, connect_timeout);
                let payload = self.parsed(&tb, "payload", |s| {
                    parse_hex(s).map_err(|m| format!("is not hex: {m}"))
                });
                let require_reply = match tb.t.get("require_reply") {
                    None => ReplyCheck::None,
                    Some(_) => {
                        let v = self.get(&tb, "require_reply", "a boolean or hex string");
                        match v.map(|v| (v, v.v)) {
                            Some((_, te::Value::Boolean(b))) => {
                                if *b.value() {
                                    ReplyCheck::Any
                                } else {
                                    ReplyCheck::None
                                }
                            }
                            Some((v, te::Value::String(s))) => match parse_hex(s.value()) {
                                Ok(bytes) if !bytes.is_empty() => ReplyCheck::Prefix(bytes),
                                Ok(_) => ReplyCheck::Any,
                                Err(m) => {
                                    self.err(
                                        v.pos,
                                        format!("require_reply {:?} is not hex: {m}", s.value()),
                                    );
                                    ReplyCheck::None
                                }
                            },
                            Some((v, other)) => {
                                self.err(
                                    v.pos,
                                    format!(
                                        "require_reply must be a boolean or a hex string, not {}",
                                        article_type(other)
                                    ),
                                );
                                ReplyCheck::None
                            }
                            None => ReplyCheck::None,
                        }
                    }
                };
                Some(CheckKind::Udp(UdpCheck { connect, payload, require_reply }))
            }
            _ => None,
        };
        self.stack.pop();
        Some(HealthCheck { kind: kind?, timing })
    }

    fn connect(&mut self, tb: &Tbl<'_>, target: SocketAddr, connect_timeout: Duration) -> Connect {
        let ip = self.ip(tb, "connect_ip").unwrap_or(target.ip());
        let port = self.int(tb, "connect_port", 1, 65535).map_or(target.port(), |p| p as u16);
        Connect {
            target: SocketAddr::new(ip, port),
            bindto: self.ip(tb, "bindto"),
            connect_timeout,
        }
    }

    fn url(&mut self, t: &dyn TableLike, pos: Pos, item: Item) -> Option<UrlCheck> {
        let tb = self.open(t, "url", pos, item, URL_KEYS, false);
        let (path, ppos) = self.req_string(&tb, "path")?;
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.err(ppos, format!("path {path:?} must start with '/' and contain no spaces"));
            return None;
        }
        let status_code = self.status_codes(&tb)?;
        let digest = match tb.t.get("digest") {
            None => None,
            Some(_) => Some(self.parsed(&tb, "digest", |s| {
                let b = parse_hex(s).map_err(|m| format!("is not an MD5 hex digest: {m}"))?;
                <[u8; 16]>::try_from(b.as_slice()).map_err(|_| {
                    format!("is not an MD5 hex digest (32 hex digits, found {})", s.len())
                })
            })?),
        };
        Some(UrlCheck { path, status_code, digest })
    }

    /// `status_code = 200`, `"200-299"` or an array of those. Default 200..=299.
    fn status_codes(&mut self, tb: &Tbl<'_>) -> Option<Vec<std::ops::RangeInclusive<u16>>> {
        let Some(v) = self.get(tb, "status_code", "a status code, range or array") else {
            return Some(vec![200..=299]);
        };
        let elems: Vec<Val<'_>> = match v.v {
            te::Value::Array(a) => a.iter().map(|e| self.val(e, v.pos)).collect(),
            _ => vec![v],
        };
        if elems.is_empty() {
            self.err(v.pos, "status_code must not be an empty array");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for e in elems {
            let r = match e.v {
                te::Value::Integer(_) => {
                    self.as_int(&e, "status_code", 100, 599).map(|n| n as u16..=n as u16)
                }
                te::Value::String(s) => {
                    let s = s.value();
                    let parsed = s.split_once('-').and_then(|(a, b)| {
                        Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                    });
                    match parsed {
                        Some((a, b))
                            if (100..=599).contains(&a) && (100..=599).contains(&b) && a <= b =>
                        {
                            Some(a..=b)
                        }
                        _ => {
                            self.err(
                                e.pos,
                                format!("status_code {s:?} is not a range like \"200-299\" within 100..=599"),
                            );
                            None
                        }
                    }
                }
                other => {
                    self.err(
                        e.pos,
                        format!(
                            "status_code must be an integer, a \"low-high\" string or an array of those, not {}",
                            article_type(other)
                        ),
                    );
                    None
                }
            };
            match r {
                Some(r) => out.push(r),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

struct VsCtx {
    idx: usize,
    /// The default port of its real servers: the virtual server's, or its group members'
    /// when they all have the same; `None`: they differ, a real server must set its own.
    port: Option<u16>,
    group: Option<String>,
    delay_loop: Duration,
    inhibit: bool,
    defaults: TimingDefaults,
}

/// The check settings a level sets, each `None` where it leaves it to the level above
/// or to the default: the inheritable part of a check's [`Timing`], plus connect_timeout.
#[derive(Debug, Clone, Copy, Default)]
struct TimingDefaults {
    delay_loop: Option<Duration>,
    connect_timeout: Option<Duration>,
    retry: Option<u32>,
    delay_before_retry: Option<Duration>,
    warmup: Option<Duration>,
}

impl TimingDefaults {
    /// These settings, with `parent`'s where this level has none.
    fn or(self, parent: &TimingDefaults) -> TimingDefaults {
        TimingDefaults {
            delay_loop: self.delay_loop.or(parent.delay_loop),
            connect_timeout: self.connect_timeout.or(parent.connect_timeout),
            retry: self.retry.or(parent.retry),
            delay_before_retry: self.delay_before_retry.or(parent.delay_before_retry),
            warmup: self.warmup.or(parent.warmup),
        }
    }
}

/// At most this many services in one `virtual_server_group` (ranges expanded): far above
/// what a data plane holds (the eBPF planes: 256 services), low enough that a typo in a
/// range costs nothing.
const GROUP_MEMBERS_MAX: usize = 4096;

/// A `virtual_server_group` member as keepalived writes it: `ADDR PORT`, or a range of
/// addresses with one port — `ADDR-LAST` (LAST replaces the last byte of an IPv4 address,
/// decimal, or the last group of an IPv6 one, hex), `ADDR-ADDR` or `ADDR/PREFIX` — both ends
/// included.
pub(crate) fn parse_group_member(s: &str) -> Result<Vec<SocketAddr>, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let (addr, port) = match words.as_slice() {
        [a, p] => (*a, *p),
        [_] => return Err("has no port: ha-lb needs one (services on all ports, keepalived's port 0, are not supported)".to_string()),
        _ => return Err("is not ADDR PORT (or a range of addresses, then the port)".to_string()),
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("has port {port:?}, not one of 1..=65535")),
    };
    let ip = |t: &str| parse_ip(t).map_err(|e| format!("{t:?} {e}"));
    let int = |a: IpAddr| match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    };
    let (first, last) = if let Some((a, bits)) = addr.split_once('/') {
        let first = ip(a)?;
        let width = if first.is_ipv4() { 32 } else { 128 };
        let host = match bits.parse::<u32>() {
            Ok(b) if (1..=width).contains(&b) => width - b,
            _ => return Err(format!("has prefix {bits:?}, not one of 1..={width}")),
        };
        let mask = if host == 128 { u128::MAX } else { (1u128 << host) - 1 };
        if int(first) & mask != 0 {
            return Err(format!("{addr:?} has bits set after its prefix"));
        }
        (first, int(first) | mask)
    } else if let Some((a, end)) = addr.split_once('-') {
        let first = ip(a)?;
        let last = if end.contains(['.', ':']) {
            let e = ip(end)?;
            if e.is_ipv4() != first.is_ipv4() {
                return Err(format!("range {addr:?} mixes address families"));
            }
            int(e)
        } else {
            let (radix, bits) = if first.is_ipv4() { (10, 8) } else { (16, 16) };
            let e = u128::from_str_radix(end, radix).ok().filter(|e| *e < 1 << bits).ok_or_else(
                || {
                    format!(
                        "has range end {end:?}, not a last {} of the address",
                        if first.is_ipv4() { "byte 0..=255" } else { "group 0..=ffff (hex)" }
                    )
                },
            )?;
            let e = int(first) & !((1u128 << bits) - 1) | e;
            // keepalived: "range end is not greater than address range start".
            if e == int(first) {
                return Err(format!(
                    "range {addr:?} ends where it starts: write the address alone"
                ));
            }
            e
        };
        (first, last)
    } else {
        let a = ip(addr)?;
        (a, int(a))
    };
    let start = int(first);
    if last < start {
        return Err(format!("range {addr:?} ends below its start"));
    }
    if last - start >= GROUP_MEMBERS_MAX as u128 {
        return Err(format!("range {addr:?} has more than {GROUP_MEMBERS_MAX} addresses"));
    }
    (start..=last)
        .map(|n| {
            let a = match first {
                IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(n as u32)),
                IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(n)),
            };
            parse_ip(&a.to_string())
                .map(|a| SocketAddr::new(a, port))
                .map_err(|_| format!("range {addr:?} includes {a}, which is not a unicast address"))
        })
        .collect()
}

/// A real server or sorry server without a port whose group's members differ in theirs.
fn different_ports(what: &str, group: Option<&str>) -> String {
    format!(
        "{what} needs a port: the members of virtual_server_group {:?} do not all have the same",
        group.unwrap_or_default()
    )
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>().map_err(|_| "is not an IP address".to_string()).and_then(|a| {
        if a.is_unspecified() || a.is_multicast() {
            Err("is not a unicast address".to_string())
        } else {
            Ok(a)
        }
    })
}

/// Hex digits, whitespace ignored, even count.
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
        return Err(format!("{:?} is not a hex digit", *bad as char));
    }
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".to_string());
    }
    Ok(digits
        .chunks(2)
        .map(|p| {
            let h = (p[0] as char).to_digit(16).unwrap_or(0);
            let l = (p[1] as char).to_digit(16).unwrap_or(0);
            (h * 16 + l) as u8
        })
        .collect())
}

fn unknown_key(key: &str, what: &str, allowed: &[&str]) -> String {
    unknown_name("key", key, what, allowed)
}

/// "unknown NOUN "x" in WHAT (did you mean "y"?); allowed NOUNs: …" — shared by the
/// front-ends ("key" in TOML, "keyword" in keepalived.conf).
pub(crate) fn unknown_name(noun: &str, key: &str, what: &str, allowed: &[&str]) -> String {
    let hint = suggest(key, allowed).map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default();
    format!("unknown {noun} {key:?} in {what}{hint}; allowed {noun}s: {}", allowed.join(", "))
}

pub(crate) fn suggest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == key) {
        if let Some(a) = allowed.iter().find(|a| *a == to) {
            return Some(a);
        }
    }
    let lower = key.to_ascii_lowercase();
    if let Some(a) = allowed.iter().find(|a| a.to_ascii_lowercase() == lower) {
        return Some(a);
    }
    allowed
        .iter()
        .map(|a| (levenshtein(&lower, &a.to_ascii_lowercase()), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
        .or_else(|| {
            // A prefix such as "prio" for "priority".
            (lower.len() >= 4)
                .then(|| allowed.iter().find(|a| a.starts_with(lower.as_str())).copied())
                .flatten()
        })
        .or_else(|| {
            // The same words with some left out, such as "garp_delay" for
            // "garp_master_delay": the shortest key containing them in order.
            let words: Vec<&str> = lower.split('_').filter(|w| !w.is_empty()).collect();
            if words.len() < 2 {
                return None;
            }
            allowed
                .iter()
                .filter(|a| {
                    let lower_a = a.to_ascii_lowercase();
                    let mut parts = lower_a.split('_');
                    words.iter().all(|w| parts.any(|p| p == *w))
                })
                .min_by_key(|a| a.len())
                .copied()
        })
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// keepalived's `persistence_granularity`: an IPv4 netmask (`255.255.255.0`) or a prefix length
/// (`24`, `/64`), as a prefix length no longer than `max`.
fn granularity_prefix(s: &str, max: u8) -> Result<u8, String> {
    let t = s.trim().trim_start_matches('/');
    let p = if let Ok(n) = t.parse::<u8>() {
        n
    } else if let Ok(m) = t.parse::<std::net::Ipv4Addr>() {
        let m = u32::from(m);
        if m.leading_ones() + m.trailing_zeros() != 32 {
            return Err("is not a contiguous netmask".to_string());
        }
        m.leading_ones() as u8
    } else {
        return Err("is neither a netmask (255.255.255.0) nor a prefix length (24)".to_string());
    };
    if p == 0 || p > max {
        return Err(format!("is out of range 1..={max} for this address family"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, Path::new("t.toml"))
    }

    const MIN_INSTANCE: &str = r#"
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.10/24"]
"#;

    #[test]
    fn a_file_with_nothing_to_do_is_an_error() {
        // An empty file, or one with only definitions, runs nothing: never what was meant.
        for text in ["", "[global]\nrouter_id = \"a\"\n"] {
            assert_eq!(
                parse(text).unwrap_err().to_string(),
                "t.toml:1:1: nothing to do: the configuration has no vrrp_instance and no virtual_server"
            );
        }
    }

    #[test]
    fn global_defaults() {
        let c = parse(MIN_INSTANCE).unwrap();
        assert_eq!(c.global, Global::default());
        assert_eq!(c.global.dataplane, Dataplane::Xdp);
        assert_eq!(c.global.control_socket, Path::new("/run/ha-lb/ha-lb.sock"));
        assert_eq!(c.global.vrrp_version, VrrpVersion::V2);
        assert!(!c.global.enable_script_security);
    }

    /// `lvs_sync_daemon`'s `protocol`: ha-lb's own by default (keepalived.conf has no such
    /// option), the kernel's IPVS messages when asked; written back only when not the default.
    #[test]
    fn lvs_sync_daemon_protocol() {
        let with = |extra: &str| {
            parse(&format!(
                "[global]\nlvs_sync_daemon = {{ interface = \"eth1\", vrrp_instance = \"VI_1\"{extra} }}\n{MIN_INSTANCE}"
            ))
        };
        let c = with("").unwrap();
        assert_eq!(c.global.lvs_sync_daemon.as_ref().unwrap().protocol, SyncProtocol::HaLb);
        assert!(!crate::config::to_toml::to_toml(&c).contains("protocol"));
        let c = with(", protocol = \"ipvs\"").unwrap();
        assert_eq!(c.global.lvs_sync_daemon.as_ref().unwrap().protocol, SyncProtocol::Ipvs);
        let text = crate::config::to_toml::to_toml(&c);
        assert!(text.contains("protocol = \"ipvs\""), "{text}");
        assert_eq!(parse_str(&text, Path::new("t.toml")).unwrap(), c);
        assert!(with(", protocol = \"hlbs\"").is_err());
        // keepalived's range is 0..=255 (a kernel backup with 0 takes any id).
        assert_eq!(with(", id = 0").unwrap().global.lvs_sync_daemon.unwrap().id, Some(0));
        assert!(with(", id = 256").is_err());
    }

    #[test]
    fn vrrp_instance_defaults_follow_keepalived() {
        let c = parse(MIN_INSTANCE).unwrap();
        let i = &c.vrrp_instances[0];
        assert_eq!(i.state, InitialState::Backup);
        assert_eq!(i.priority, 100);
        assert_eq!(i.advert_int, Duration::from_secs(1));
        assert_eq!(i.version, VrrpVersion::V2);
        assert!(!i.nopreempt);
        assert_eq!(i.preempt_delay, Duration::ZERO);
        assert_eq!(i.garp.master_delay, Duration::from_secs(5));
        assert_eq!(i.garp.master_repeat, 5);
        assert_eq!(i.garp.master_refresh, None);
        assert_eq!(i.garp.master_refresh_repeat, 1);
        assert!(i.unicast_peer.is_empty());
        assert_eq!(i.virtual_ipaddress[0].prefix_len, 24);
        assert_eq!(i.family(), AddrFamily::Ipv4);
    }

    #[test]
    fn ipv6_instances_default_to_version_3() {
        let c = parse(
            r#"
[[vrrp_instance]]
name = "VI_6"
interface = "eth0"
virtual_router_id = 1
virtual_ipaddress = ["fe80::10", "2001:db8::10"]
"#,
        )
        .unwrap();
        assert_eq!(c.vrrp_instances[0].version, VrrpVersion::V3);
        assert_eq!(c.vrrp_instances[0].virtual_ipaddress[0].prefix_len, 128);
    }

    #[test]
    fn global_vrrp_version_applies_to_ipv4_instances() {
        let c = parse(&format!("[global]\nvrrp_version = 3\n{MIN_INSTANCE}")).unwrap();
        assert_eq!(c.vrrp_instances[0].version, VrrpVersion::V3);
    }

    #[test]
    fn global_garp_and_gna_intervals_reach_every_instance() {
        let i = &parse(MIN_INSTANCE).unwrap().vrrp_instances[0];
        assert_eq!((i.garp.interval, i.garp.gna_interval), (Duration::ZERO, Duration::ZERO));
        let c = parse(&format!(
            "[global]\nvrrp_garp_interval = 0.5\nvrrp_gna_interval = 1\n{MIN_INSTANCE}"
        ))
        .unwrap();
        assert_eq!(c.global.vrrp_garp_interval, Duration::from_millis(500));
        let i = &c.vrrp_instances[0];
        assert_eq!(i.garp.interval, Duration::from_millis(500));
        assert_eq!(i.garp.gna_interval, Duration::from_secs(1));
        let e = parse(&format!("[global]\nvrrp_gna_interval = -1\n{MIN_INSTANCE}")).unwrap_err();
        assert!(e.errors[0].message.starts_with("vrrp_gna_interval"), "{e}");
    }

    #[test]
    fn vrrp_script_defaults_follow_keepalived() {
        let c = parse(&format!(
            r#"
[[vrrp_script]]
name = "chk"
script = "/usr/bin/pgrep -x haproxy"
interval = 2
{MIN_INSTANCE}"#,
        ))
        .unwrap();
        let s = &c.vrrp_scripts[0];
        assert_eq!(s.script.argv, ["/usr/bin/pgrep", "-x", "haproxy"]);
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.timeout, Duration::from_secs(2), "timeout defaults to interval");
        assert_eq!((s.weight, s.rise, s.fall), (0, 1, 1));
    }

    #[test]
    fn track_weights_resolve_from_definitions() {
        let c = parse(&format!(
            r#"
[[vrrp_script]]
name = "chk"
script = "/bin/true"
weight = -20
[[vrrp_script]]
name = "chk2"
script = "/bin/true"
weight = -20
[[track_file]]
name = "tf"
file = "/run/prio"
{MIN_INSTANCE}
track_script = ["chk", {{ name = "chk2", weight = 5 }}]
track_file = ["tf"]
track_interface = ["eth1", {{ name = "eth2", weight = -10 }}]
"#
        ))
        .unwrap();
        let i = &c.vrrp_instances[0];
        assert_eq!(i.track_script[0].weight, -20);
        assert_eq!(i.track_script[1].weight, 5);
        assert_eq!(i.track_file[0].weight, 1, "track_file weight defaults to 1");
        assert_eq!(i.track_interface[0].weight, 0);
        assert_eq!(i.track_interface[1].weight, -10);
    }

    #[test]
    fn global_notify_is_inherited() {
        let c = parse(&format!(
            "[global]\nnotify = \"/etc/ha-lb/notify.sh\"\nnotify_master = \"/bin/m\"\n{MIN_INSTANCE}notify_master = [\"/bin/own\", \"a b\"]\n"
        ))
        .unwrap();
        let n = &c.vrrp_instances[0].notify;
        assert_eq!(n.notify.as_ref().unwrap().argv, ["/etc/ha-lb/notify.sh"]);
        assert_eq!(n.notify_master.as_ref().unwrap().argv, ["/bin/own", "a b"]);
        assert_eq!(n.notify_backup, None);
    }

    /// Virtual servers alone: on kernel IPVS (the eBPF planes go on VRRP instances' links).
    const MIN_VS: &str = r#"
[global]
dataplane = "ipvs"
[[virtual_server]]
address = "192.0.2.10"
port = 80
[[virtual_server.real_server]]
address = "10.0.0.11"
"#;

    #[test]
    fn virtual_server_defaults_follow_keepalived() {
        let c = parse(MIN_VS).unwrap();
        let v = &c.virtual_servers[0];
        assert_eq!(v.protocol, Protocol::Tcp);
        assert_eq!(v.lb_algo, LbAlgo::Wlc);
        assert_eq!(v.lb_kind, LbKind::Nat);
        assert_eq!(v.persistence_timeout, None);
        assert_eq!((v.quorum, v.hysteresis), (1, 0));
        assert_eq!(v.delay_loop, Duration::from_secs(60));
        assert!(!v.alpha);
        let r = &v.real_servers[0];
        assert_eq!(r.port, 80, "real server port defaults to the service port");
        assert_eq!(r.weight, 1);
        assert!(!r.inhibit_on_failure);
        assert_eq!(r.check, None);
    }

    #[test]
    fn check_defaults_follow_keepalived() {
        let c = parse(&format!(
            "{MIN_VS}[virtual_server.real_server.TCP_CHECK]\n[[virtual_server.real_server]]\naddress = \"10.0.0.12\"\n[virtual_server.real_server.HTTP_GET]\nurl = [{{ path = \"/\" }}]\n[[virtual_server.real_server]]\naddress = \"10.0.0.13\"\n[virtual_server.real_server.MISC_CHECK]\nmisc_path = \"/bin/true\"\n"
        ))
        .unwrap();
        let v = &c.virtual_servers[0];
        let tcp = v.real_servers[0].check.as_ref().unwrap();
        assert_eq!(tcp.timing.delay_loop, Duration::from_secs(60));
        assert_eq!(tcp.timing.retry, 1);
        assert_eq!(tcp.timing.delay_before_retry, Duration::from_secs(1));
        assert_eq!(tcp.timing.warmup, Duration::from_secs(60), "warmup defaults to delay_loop");
        assert_eq!((tcp.timing.rise, tcp.timing.fall), (1, 1));
        let CheckKind::Tcp(conn) = &tcp.kind else { panic!() };
        assert_eq!(conn.connect_timeout, Duration::from_secs(5));
        assert_eq!(conn.target, "10.0.0.11:80".parse().unwrap());

        let http = v.real_servers[1].check.as_ref().unwrap();
        assert_eq!(http.timing.delay_before_retry, Duration::from_secs(3));
        let CheckKind::Http(h) = &http.kind else { panic!() };
        assert_eq!(h.url[0].status_code, vec![200..=299]);
        assert!(h.url[0].accepts(204) && !h.url[0].accepts(301));

        let misc = v.real_servers[2].check.as_ref().unwrap();
        assert_eq!(misc.timing.retry, 0, "MISC_CHECK retry defaults to 0");
        let CheckKind::Misc(m) = &misc.kind else { panic!() };
        assert_eq!(m.misc_timeout, Duration::from_secs(60));
        assert!(!m.misc_dynamic);
    }

    #[test]
    fn checker_options_inherit_virtual_then_real_server() {
        let c = parse(
            r#"
[global]
dataplane = "ipvs"
[[virtual_server]]
address = "192.0.2.10"
port = 443
delay_loop = 10
connect_timeout = 2
retry = 3
inhibit_on_failure = true
[[virtual_server.real_server]]
address = "10.0.0.11"
port = 8443
delay_before_retry = 0.5
[virtual_server.real_server.SSL_GET]
warmup = 0
rise = 2
fall = 3
connect_port = 9000
url = [{ path = "/healthz", status_code = [200, "300-302"], digest = "9b3a0c85a887a256d6939da88aabd8cd" }]
"#,
        )
        .unwrap();
        let r = &c.virtual_servers[0].real_servers[0];
        assert!(r.inhibit_on_failure);
        let chk = r.check.as_ref().unwrap();
        assert_eq!(chk.timing.delay_loop, Duration::from_secs(10));
        assert_eq!(chk.timing.retry, 3);
        assert_eq!(chk.timing.delay_before_retry, Duration::from_millis(500));
        assert_eq!(chk.timing.warmup, Duration::ZERO);
        assert_eq!((chk.timing.rise, chk.timing.fall), (2, 3), "rise/fall: the check's own");
        let CheckKind::Ssl(h) = &chk.kind else { panic!() };
        assert_eq!(h.connect.connect_timeout, Duration::from_secs(2));
        assert_eq!(h.connect.target, "10.0.0.11:9000".parse().unwrap());
        assert_eq!(h.url[0].status_code, vec![200..=200, 300..=302]);
        assert_eq!(h.url[0].digest.unwrap()[0], 0x9b);
    }

    #[test]
    fn script_lines_split_like_keepalived() {
        let s = Script::parse("/bin/notify.sh 'a b' \"c\"d e").unwrap();
        assert_eq!(s.argv, ["/bin/notify.sh", "a b", "cd", "e"]);
        assert!(Script::parse("  ").is_none());
        assert!(Script::parse("/bin/x 'open").is_none());
    }

    #[test]
    fn vips_use_the_shared_type_and_report_parse_errors_in_place() {
        let c = parse(&MIN_INSTANCE.replace(
            r#"["192.0.2.10/24"]"#,
            r#"["192.0.2.10/24 dev eth1 label eth1:vip scope global brd 192.0.2.255 no_track"]"#,
        ))
        .unwrap();
        let v = &c.vrrp_instances[0].virtual_ipaddress[0];
        assert_eq!(v, &v.to_string().parse::<VirtualIpAddress>().unwrap());
        assert_eq!((v.dev.as_deref(), v.scope), (Some("eth1"), Scope::Global));
        assert_eq!(v.device("eth0"), "eth1");

        let e = parse(
            &MIN_INSTANCE
                .replace(r#"["192.0.2.10/24"]"#, r#"["192.0.2.10/24", "fe80::1 scope link"]"#),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml:6:39: virtual_ipaddress \"fe80::1 scope link\": scope is only valid for IPv4 addresses"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("prio", VRRP_INSTANCE_KEYS), Some("priority"));
        assert_eq!(suggest("virtual_router", VRRP_INSTANCE_KEYS), Some("virtual_router_id"));
        assert_eq!(suggest("lvs_sched", VIRTUAL_SERVER_KEYS), Some("lb_algo"));
        assert_eq!(suggest("tcp_check", REAL_SERVER_KEYS), Some("TCP_CHECK"));
        assert_eq!(suggest("garp_delay", VRRP_INSTANCE_KEYS), Some("garp_master_delay"));
        assert_eq!(suggest("zzzzzz", VRRP_INSTANCE_KEYS), None);
    }

    #[test]
    fn positions_count_characters() {
        let e = parse(&format!("[global]\n# é\nrouter_id = 1\n{MIN_INSTANCE}")).unwrap_err();
        assert_eq!((e.errors[0].line, e.errors[0].col), (3, 13));
    }

    const GROUP: &str = r#"
[global]
dataplane = "ipvs"
[[virtual_server_group]]
name = "web"
members = ["192.0.2.10 80", "192.0.2.20-21 443", "2001:db8::a-b 80"]
[[virtual_server]]
group = "web"
lb_kind = "NAT"
[[virtual_server.real_server]]
address = "10.0.0.11"
port = 8080
[virtual_server.real_server.TCP_CHECK]
"#;

    #[test]
    fn a_group_is_one_virtual_server_per_member_checked_once() {
        let c = parse(&GROUP.replace("\"2001:db8::a-b 80\"", "")).unwrap();
        let keys: Vec<String> = c.virtual_servers.iter().map(|v| v.key().to_string()).collect();
        assert_eq!(keys, ["192.0.2.10:80 TCP", "192.0.2.20:443 TCP", "192.0.2.21:443 TCP"]);
        assert!(c.virtual_servers.iter().all(|v| v.group.as_deref() == Some("web")));
        assert!(c
            .virtual_servers
            .iter()
            .all(|v| v.real_servers == c.virtual_servers[0].real_servers));
        let lead = c.virtual_servers[0].key();
        for v in &c.virtual_servers {
            assert_eq!(c.check_lead(&v.key()), lead);
        }
        assert_eq!(c.check_sharers(&c.virtual_servers[2].key()).len(), 3);
        assert_eq!(c.virtual_server_groups[0].members.len(), 3);
    }

    #[test]
    fn group_members_parse_as_keepalived_writes_them() {
        let m = |s: &str| {
            parse_group_member(s).map(|v| v.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(m("192.0.2.1 80").unwrap(), ["192.0.2.1:80"]);
        assert_eq!(m("192.0.2.1-3 80").unwrap(), ["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80"]);
        assert_eq!(m("192.0.2.254-192.0.3.1 80").unwrap().len(), 4);
        assert_eq!(m("192.0.2.4/31 80").unwrap(), ["192.0.2.4:80", "192.0.2.5:80"]);
        assert_eq!(
            m("2001:db8::9-b 53").unwrap(),
            ["[2001:db8::9]:53", "[2001:db8::a]:53", "[2001:db8::b]:53"]
        );
        assert!(m("192.0.2.1 0").unwrap_err().contains("not one of 1..=65535"));
        assert!(m("192.0.2.1").unwrap_err().contains("port 0"));
        assert!(m("192.0.2.9-3 80").unwrap_err().contains("ends below its start"));
        assert!(m("192.0.2.1-256 80").unwrap_err().contains("byte 0..=255"));
        assert!(m("192.0.2.5/30 80").unwrap_err().contains("bits set after its prefix"));
        assert!(m("10.0.0.0/8 80").unwrap_err().contains("more than 4096"));
        assert!(m("192.0.2.1-2001:db8::1 80").unwrap_err().contains("mixes address families"));
        assert!(m("223.255.255.255-224.0.0.0 80").unwrap_err().contains("not a unicast address"));
        assert!(m("192.0.2.5-5 80").unwrap_err().contains("ends where it starts"));
    }

    #[test]
    fn group_errors_point_at_the_member_or_the_key() {
        let errs = |t: &str| parse(t).unwrap_err().to_string();
        // Members with different ports: a real server without its own port has none.
        let e = errs(&GROUP.replace("port = 8080\n", ""));
        assert!(e.contains("t.toml:10:1: real_server needs a port: the members of virtual_server_group \"web\" do not all have the same"), "{e}");
        let e = errs(&GROUP.replace("group = \"web\"", "group = \"wbe\""));
        assert!(e.contains("t.toml:8:9: unknown virtual_server_group \"wbe\""), "{e}");
        let e = errs(&GROUP.replace("group = \"web\"", "group = \"web\"\naddress = \"192.0.2.1\""));
        assert!(e.contains("t.toml:9:11: address is set by the group's members"), "{e}");
        // One family per group, as keepalived.
        let e = errs(GROUP);
        assert!(
            e.starts_with("t.toml:6:50: virtual_server_group \"web\" mixes IPv4 and IPv6 members"),
            "{e}"
        );
        // Checked per member, reported once, naming the member.
        let dr = GROUP
            .replace("\"2001:db8::a-b 80\"", "")
            .replace("lb_kind = \"NAT\"", "lb_kind = \"DR\"")
            .replace("port = 8080", "port = 80");
        let e = errs(&dr);
        assert_eq!(e, "t.toml:12:8: real_server port 80 differs from port 443 of members of virtual_server_group \"web\"; DR forwards without rewriting ports (use NAT, or a virtual_server per port)");
        let e = errs(&GROUP.replace("\"2001:db8::a-b 80\"", "\"192.0.2.10 80\""));
        assert!(e.contains("virtual_server 192.0.2.10:80 TCP is already defined"), "{e}");
    }

    #[test]
    fn a_group_converts_back_to_a_group() {
        let c = parse(&GROUP.replace("\"2001:db8::a-b 80\"", "")).unwrap();
        let text = crate::config::to_toml::to_toml(&c);
        assert_eq!(text.matches("[[virtual_server]]").count(), 1, "{text}");
        assert!(text.contains("members = [\"192.0.2.10 80\", \"192.0.2.20-21 443\"]"), "{text}");
        assert!(text.contains("group = \"web\""), "{text}");
        assert_eq!(parse(&text).unwrap(), c);
    }
}
