//! The model written as native TOML (`ha-lb convert`): what [`super::toml`] reads back
//! to an equal [`Config`].
//!
//! Resolved values are written out (notify hooks taken from `[global]`, the VRRP version,
//! the defaults of instances and virtual servers), so the file reads without knowing the
//! defaults — except where writing a value would cut a link the operator may rely on when
//! editing the file later: a check's keys are written only where they differ from what the
//! check would take anyway (its real server's address and port, its virtual server's
//! `delay_loop`, `warmup` = its `delay_loop`, the check kind's default `retry`, …), so
//! changing a real server's address or a virtual server's `delay_loop` still moves its
//! checks; and tracker weights equal to their definition's are left implicit (a
//! definition's weight may lie outside the range an override allows).

use std::fmt::Write as _;
use std::time::Duration;

use super::model::*;
use super::toml::fmt_secs;

/// The configuration as TOML text.
pub fn to_toml(c: &Config) -> String {
    let mut w = W::default();
    global(&mut w, &c.global);
    for s in &c.vrrp_scripts {
        w.head("[[vrrp_script]]");
        w.kv("name", &toml_str(&s.name));
        w.kv("script", &script(&s.script));
        w.kv("interval", &secs(s.interval));
        w.kv("timeout", &secs(s.timeout));
        w.kv("weight", &s.weight.to_string());
        w.kv("rise", &s.rise.to_string());
        w.kv("fall", &s.fall.to_string());
        if let Some(u) = &s.user {
            w.kv("user", &user(u));
        }
    }
    for t in &c.track_files {
        w.head("[[track_file]]");
        w.kv("name", &toml_str(&t.name));
        w.kv("file", &toml_str(&t.file.to_string_lossy()));
        w.kv("weight", &t.weight.to_string());
    }
    for i in &c.vrrp_instances {
        instance(&mut w, c, i);
    }
    for g in &c.vrrp_sync_groups {
        w.head("[[vrrp_sync_group]]");
        w.kv("name", &toml_str(&g.name));
        w.kv("group", &array(g.group.iter().map(|m| toml_str(m))));
        if g.sync_group_tracking_weight {
            w.kv("sync_group_tracking_weight", "true");
        }
        notify(&mut w, &g.notify);
    }
    for g in &c.virtual_server_groups {
        w.head("[[virtual_server_group]]");
        w.kv("name", &toml_str(&g.name));
        w.kv("members", &array(g.entries.iter().map(|m| toml_str(m))));
    }
    // A group's virtual_server is in the model once per member: written once.
    let mut written = std::collections::HashSet::new();
    for v in &c.virtual_servers {
        if v.group.as_ref().is_none_or(|g| written.insert((g, v.protocol))) {
            virtual_server(&mut w, v);
        }
    }
    w.0
}

#[derive(Default)]
struct W(String);

impl W {
    fn head(&mut self, h: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(h);
        self.0.push('\n');
    }

    fn kv(&mut self, k: &str, v: &str) {
        let _ = writeln!(self.0, "{k} = {v}");
    }
}

/// A TOML basic string.
pub(crate) fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn array(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

fn secs(d: Duration) -> String {
    fmt_secs(d.as_micros() as u64)
}

/// The exact argument vector, so no re-splitting can change it.
fn script(s: &Script) -> String {
    array(s.argv.iter().map(|a| toml_str(a)))
}

fn user(u: &ScriptUser) -> String {
    match &u.group {
        Some(g) => toml_str(&format!("{}:{g}", u.user)),
        None => toml_str(&u.user),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn notify(w: &mut W, n: &Notify) {
    for (k, v) in [
        ("notify_master", &n.notify_master),
        ("notify_backup", &n.notify_backup),
        ("notify_fault", &n.notify_fault),
        ("notify_stop", &n.notify_stop),
        ("notify", &n.notify),
    ] {
        if let Some(s) = v {
            w.kv(k, &script(s));
        }
    }
}

fn global(w: &mut W, g: &Global) {
    w.head("[global]");
    if let Some(r) = &g.router_id {
        w.kv("router_id", &toml_str(r));
    }
    w.kv("dataplane", &toml_str(g.dataplane.as_str()));
    w.kv("control_socket", &toml_str(&g.control_socket.to_string_lossy()));
    if let Some(u) = &g.script_user {
        w.kv("script_user", &user(u));
    }
    w.kv("enable_script_security", &g.enable_script_security.to_string());
    w.kv("vrrp_version", &g.vrrp_version.number().to_string());
    w.kv("vrrp_garp_interval", &secs(g.vrrp_garp_interval));
    w.kv("vrrp_gna_interval", &secs(g.vrrp_gna_interval));
    if let Some(s) = &g.lvs_sync_daemon {
        let id = s.id.map(|i| format!(", id = {i}")).unwrap_or_default();
        let protocol = match s.protocol {
            SyncProtocol::HaLb => String::new(),
            p => format!(", protocol = {}", toml_str(p.as_str())),
        };
        w.kv(
            "lvs_sync_daemon",
            &format!(
                "{{ interface = {}, vrrp_instance = {}{id}{protocol} }}",
                toml_str(&s.interface),
                toml_str(&s.vrrp_instance)
            ),
        );
    }
    notify(w, &g.notify);
}

fn tracker(name: &str, weight: i32, implicit: bool) -> String {
    if implicit {
        toml_str(name)
    } else {
        format!("{{ name = {}, weight = {weight} }}", toml_str(name))
    }
}

fn instance(w: &mut W, c: &Config, i: &VrrpInstance) {
    w.head("[[vrrp_instance]]");
    w.kv("name", &toml_str(&i.name));
    w.kv("interface", &toml_str(&i.interface));
    w.kv("state", &toml_str(i.state.as_str()));
    w.kv("virtual_router_id", &i.virtual_router_id.to_string());
    w.kv("priority", &i.priority.to_string());
    w.kv("advert_int", &secs(i.advert_int));
    w.kv("version", &i.version.number().to_string());
    if let Some(Authentication::Pass(p)) = &i.authentication {
        w.kv("authentication", &format!("{{ auth_type = \"PASS\", auth_pass = {} }}", toml_str(p)));
    }
    if let Some(a) = &i.unicast_src_ip {
        w.kv("unicast_src_ip", &toml_str(&a.to_string()));
    }
    w.kv("unicast_peer", &array(i.unicast_peer.iter().map(|a| toml_str(&a.to_string()))));
    w.kv("virtual_ipaddress", &array(i.virtual_ipaddress.iter().map(|v| toml_str(&v.to_string()))));
    w.kv(
        "virtual_ipaddress_excluded",
        &array(i.virtual_ipaddress_excluded.iter().map(|v| toml_str(&v.to_string()))),
    );
    w.kv("nopreempt", &i.nopreempt.to_string());
    if i.dont_track_primary {
        w.kv("dont_track_primary", "true");
    }
    w.kv("preempt_delay", &secs(i.preempt_delay));
    w.kv("garp_master_delay", &secs(i.garp.master_delay));
    w.kv("garp_master_repeat", &i.garp.master_repeat.to_string());
    w.kv("garp_master_refresh", &secs(i.garp.master_refresh.unwrap_or(Duration::ZERO)));
    w.kv("garp_master_refresh_repeat", &i.garp.master_refresh_repeat.to_string());
    w.kv(
        "track_interface",
        &array(i.track_interface.iter().map(|t| tracker(&t.interface, t.weight, t.weight == 0))),
    );
    w.kv(
        "track_script",
        &array(i.track_script.iter().map(|t| {
            let own = c.vrrp_script(&t.script).map(|s| s.weight);
            tracker(&t.script, t.weight, own == Some(t.weight))
        })),
    );
    w.kv(
        "track_file",
        &array(i.track_file.iter().map(|t| {
            let own = c.track_file(&t.track_file).map(|f| f.weight);
            tracker(&t.track_file, t.weight, own == Some(t.weight))
        })),
    );
    notify(w, &i.notify);
}

fn virtual_server(w: &mut W, v: &VirtualServer) {
    w.head("[[virtual_server]]");
    if let Some(g) = &v.group {
        w.kv("group", &toml_str(g));
    } else {
        w.kv("address", &toml_str(&v.address.to_string()));
        w.kv("port", &v.port.to_string());
    }
    w.kv("protocol", &toml_str(v.protocol.as_str()));
    w.kv("lb_algo", &toml_str(v.lb_algo.as_str()));
    w.kv("lb_kind", &toml_str(v.lb_kind.as_str()));
    if let Some(p) = v.persistence_timeout {
        w.kv("persistence_timeout", &p.as_secs().to_string());
    }
    if let Some(p) = v.persistence_granularity {
        w.kv("persistence_granularity", &toml_str(&p.to_string()));
    }
    if v.hash_port {
        w.kv(if v.lb_algo == LbAlgo::Mh { "mh-port" } else { "sh-port" }, "true");
    }
    w.kv("quorum", &v.quorum.to_string());
    w.kv("hysteresis", &v.hysteresis.to_string());
    if let Some(s) = &v.quorum_up {
        w.kv("quorum_up", &script(s));
    }
    if let Some(s) = &v.quorum_down {
        w.kv("quorum_down", &script(s));
    }
    if let Some(s) = &v.sorry_server {
        w.kv(
            "sorry_server",
            &format!("{{ address = {}, port = {} }}", toml_str(&s.ip().to_string()), s.port()),
        );
    }
    w.kv("alpha", &v.alpha.to_string());
    w.kv("delay_loop", &secs(v.delay_loop));
    for r in &v.real_servers {
        w.head("[[virtual_server.real_server]]");
        w.kv("address", &toml_str(&r.address.to_string()));
        w.kv("port", &r.port.to_string());
        w.kv("weight", &r.weight.to_string());
        w.kv("inhibit_on_failure", &r.inhibit_on_failure.to_string());
        if let Some(s) = &r.notify_up {
            w.kv("notify_up", &script(s));
        }
        if let Some(s) = &r.notify_down {
            w.kv("notify_down", &script(s));
        }
        if let Some(chk) = &r.check {
            check(w, chk, v, r);
        }
    }
}

/// A check's keys, each only where it differs from what the check inherits or defaults to
/// (see the module doc).
fn check(w: &mut W, c: &HealthCheck, vs: &VirtualServer, rs: &RealServer) {
    w.head(&format!("[virtual_server.real_server.{}]", c.name()));
    let t = &c.timing;
    let name = c.name();
    if t.delay_loop != vs.delay_loop {
        w.kv("delay_loop", &secs(t.delay_loop));
    }
    if t.retry != default_retry(name) {
        w.kv("retry", &t.retry.to_string());
    }
    if t.delay_before_retry != default_delay_before_retry(name) {
        w.kv("delay_before_retry", &secs(t.delay_before_retry));
    }
    if t.warmup != t.delay_loop {
        w.kv("warmup", &secs(t.warmup));
    }
    w.kv("rise", &t.rise.to_string());
    w.kv("fall", &t.fall.to_string());
    if let Some(conn) = c.kind.connect() {
        if conn.target.ip() != rs.address {
            w.kv("connect_ip", &toml_str(&conn.target.ip().to_string()));
        }
        if conn.target.port() != rs.port {
            w.kv("connect_port", &conn.target.port().to_string());
        }
        if let Some(b) = &conn.bindto {
            w.kv("bindto", &toml_str(&b.to_string()));
        }
        if conn.connect_timeout != DEFAULT_CONNECT_TIMEOUT {
            w.kv("connect_timeout", &secs(conn.connect_timeout));
        }
    }
    match &c.kind {
        CheckKind::Tcp(_) => {}
        CheckKind::Http(h) | CheckKind::Ssl(h) => {
            let urls = h.url.iter().map(|u| {
                let codes = array(u.status_code.iter().map(|r| {
                    if r.start() == r.end() {
                        r.start().to_string()
                    } else {
                        format!("\"{}-{}\"", r.start(), r.end())
                    }
                }));
                let mut s = format!("{{ path = {}, status_code = {codes}", toml_str(&u.path));
                if let Some(d) = &u.digest {
                    let _ = write!(s, ", digest = \"{}\"", hex(d));
                }
                s.push_str(" }");
                s
            });
            w.kv("url", &array(urls));
            if let Some(v) = &h.virtualhost {
                w.kv("virtualhost", &toml_str(v));
            }
        }
        CheckKind::Misc(m) => {
            w.kv("misc_path", &script(&m.misc_path));
            if m.misc_timeout != vs.delay_loop {
                w.kv("misc_timeout", &secs(m.misc_timeout));
            }
            w.kv("misc_dynamic", &m.misc_dynamic.to_string());
            if let Some(u) = &m.user {
                w.kv("user", &user(u));
            }
        }
        CheckKind::Udp(u) => {
            if let Some(p) = &u.payload {
                w.kv("payload", &format!("\"{}\"", hex(p)));
            }
            match &u.require_reply {
                ReplyCheck::None => w.kv("require_reply", "false"),
                ReplyCheck::Any => w.kv("require_reply", "true"),
                ReplyCheck::Prefix(b) => w.kv("require_reply", &format!("\"{}\"", hex(b))),
            }
        }
    }
}
