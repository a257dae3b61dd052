//! One attempt of each checker: TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK, UDP_CHECK.
//!
//! Every attempt is bounded in time: network checks by `connect_timeout` per I/O step, as
//! keepalived (connect, TLS handshake, sending the request, and each read of the response:
//! a slow body that keeps arriving is fine), HTTP_GET/SSL_GET URLs also in total by
//! [`http_url_limit`] so that nothing hangs for ever; MISC_CHECK by `misc_timeout` plus the
//! kill grace.

use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::config::{CheckKind, Connect, HttpCheck, MiscCheck, ReplyCheck, ScriptUser, UdpCheck};
use crate::script::{self, Credentials, RunOptions, ScriptOutcome};

use super::{http, tls};

/// The floor of [`http_url_limit`].
pub const HTTP_URL_LIMIT: Duration = Duration::from_secs(300);

/// The whole exchange of one HTTP_GET/SSL_GET URL is cut off after this: 5 minutes, or 4 ×
/// `connect_timeout` when that is longer (connect, handshake, request and the first read
/// each get `connect_timeout`). Generous on purpose: keepalived has no total limit, only
/// `connect_timeout` for each step and between reads, so a large or slow body that keeps
/// coming passes; this only stops a server that trickles for ever.
pub fn http_url_limit(connect_timeout: Duration) -> Duration {
    HTTP_URL_LIMIT.max(connect_timeout.saturating_mul(4))
}
/// Size of the random UDP_CHECK payload when none is configured.
pub const UDP_RANDOM_PAYLOAD: usize = 16;

/// Result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    /// MISC_CHECK with `misc_dynamic`: the weight the exit status asks for.
    pub weight: Option<u32>,
    /// What happened, for events, logs and status.
    pub detail: String,
}

impl ProbeResult {
    pub fn up(detail: impl Into<String>) -> ProbeResult {
        ProbeResult { ok: true, weight: None, detail: detail.into() }
    }

    pub fn down(detail: impl Into<String>) -> ProbeResult {
        ProbeResult { ok: false, weight: None, detail: detail.into() }
    }
}

/// Who a script runs as, resolved when the configuration is loaded (see
/// [`script_credentials`]): `Ok(None)` the daemon's own user, `Err` why the configured user
/// could not be resolved (the script is then not run at all, rather than run as root).
pub type ScriptCredentials = Result<Option<Credentials>, String>;

/// Resolve the user scripts configured with `user` run as (`None`: keepalived's default,
/// `keepalived_script` if it exists, else the daemon's user). Blocking (NSS): done once
/// per configuration, as keepalived does at load, never per attempt.
pub fn script_credentials(user: Option<&ScriptUser>) -> ScriptCredentials {
    script::script_credentials(user.map(|u| (u.user.as_str(), u.group.as_deref())))
        .map_err(|e| format!("script user: {e}"))
}

/// Run one attempt of `kind`. `misc_user`: who a MISC_CHECK script runs as.
pub async fn probe(kind: &CheckKind, misc_user: &ScriptCredentials) -> ProbeResult {
    match kind {
        CheckKind::Tcp(c) => tcp_check(c).await,
        CheckKind::Http(h) => http_check(h, false).await,
        CheckKind::Ssl(h) => http_check(h, true).await,
        CheckKind::Misc(m) => misc_check(m, misc_user).await,
        CheckKind::Udp(u) => udp_check(u).await,
    }
}

fn unspecified_like(addr: &SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Connect to `c.target` from `c.bindto` (if set) within `c.connect_timeout`.
pub async fn tcp_connect(c: &Connect) -> io::Result<TcpStream> {
    let sock = match c.target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(src) = c.bindto {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    match tokio::time::timeout(c.connect_timeout, sock.connect(c.target)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// TCP_CHECK: a connection is established within `connect_timeout`, then closed.
pub async fn tcp_check(c: &Connect) -> ProbeResult {
    match tcp_connect(c).await {
        Ok(s) => {
            drop(s);
            ProbeResult::up(format!("TCP connect to {} ok", c.target))
        }
        Err(e) => ProbeResult::down(format!("TCP connect to {}: {}", c.target, describe_io(&e))),
    }
}

/// HTTP_GET / SSL_GET: every `url` must answer with an accepted status and, where set,
/// the right MD5 digest. One connection per URL (`Connection: close`), as keepalived.
pub async fn http_check(h: &HttpCheck, use_tls: bool) -> ProbeResult {
    let scheme = if use_tls { "SSL_GET" } else { "HTTP_GET" };
    let per_url = http_url_limit(h.connect.connect_timeout);
    let mut notes = Vec::new();
    for url in &h.url {
        let r =
            tokio::time::timeout(per_url, fetch(h, &url.path, url.digest.is_some(), use_tls)).await;
        let resp = match r {
            Err(_) => {
                return ProbeResult::down(format!(
                    "{scheme} {}{}: not done after {per_url:?}",
                    h.connect.target, url.path
                ))
            }
            Ok(Err(e)) => {
                return ProbeResult::down(format!("{scheme} {}{}: {e}", h.connect.target, url.path))
            }
            Ok(Ok(resp)) => resp,
        };
        if let Err(e) = http::check_response(&resp, url) {
            return ProbeResult::down(format!("{scheme} {}: {e}", h.connect.target));
        }
        if let Some(short) = resp.body_short {
            // keepalived logs the mismatch and judges what arrived; so do we, and say so.
            notes.push(format!("{}: {short}", url.path));
        }
    }
    let n = h.url.len();
    let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
    ProbeResult::up(format!(
        "{scheme} {}: {n} URL{} ok{notes}",
        h.connect.target,
        if n == 1 { "" } else { "s" }
    ))
}

async fn fetch(
    h: &HttpCheck,
    path: &str,
    keep_body: bool,
    use_tls: bool,
) -> Result<http::Response, String> {
    let t = h.connect.connect_timeout;
    let mut tcp =
        tcp_connect(&h.connect).await.map_err(|e| format!("connect: {}", describe_io(&e)))?;
    let _ = tcp.set_nodelay(true);
    let host = http::host_header(h, use_tls);
    if use_tls {
        let name = tls::server_name(h.virtualhost.as_deref(), h.connect.target.ip());
        let mut stream = tokio::time::timeout(t, tls::connector().connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| tls::handshake_failed(&e))?;
        http::exchange(&mut stream, path, &host, keep_body, t).await
    } else {
        http::exchange(&mut tcp, path, &host, keep_body, t).await
    }
}

fn random_payload() -> Vec<u8> {
    let s = std::collections::hash_map::RandomState::new();
    let mut out = Vec::with_capacity(UDP_RANDOM_PAYLOAD);
    let mut i = 0u64;
    while out.len() < UDP_RANDOM_PAYLOAD {
        out.extend_from_slice(&s.hash_one(i).to_le_bytes());
        i += 1;
    }
    out.truncate(UDP_RANDOM_PAYLOAD);
    out
}

/// UDP_CHECK: send the payload on a connected socket. Without `require_reply` only an
/// ICMP error (reported as `ECONNREFUSED` & co. on the connected socket) within
/// `connect_timeout` fails the check; with it, a reply (starting with the given bytes,
/// for `Prefix`) must arrive within `connect_timeout`.
pub async fn udp_check(u: &UdpCheck) -> ProbeResult {
    let target = u.connect.target;
    let r: io::Result<ProbeResult> = async {
        let src = SocketAddr::new(u.connect.bindto.unwrap_or_else(|| unspecified_like(&target)), 0);
        let sock = UdpSocket::bind(src).await?;
        sock.connect(target).await?;
        let payload = match &u.payload {
            Some(p) => p.clone(),
            None => random_payload(),
        };
        sock.send(&payload).await?;
        let mut buf = vec![0u8; 65536];
        let res = tokio::time::timeout(u.connect.connect_timeout, sock.recv(&mut buf)).await;
        Ok(match (res, &u.require_reply) {
            (Err(_), ReplyCheck::None) => ProbeResult::up(format!("UDP {target}: no ICMP error")),
            (Err(_), _) => ProbeResult::down(format!(
                "UDP {target}: no reply within {:?}",
                u.connect.connect_timeout
            )),
            (Ok(Err(e)), _) => ProbeResult::down(format!("UDP {target}: {}", describe_io(&e))),
            (Ok(Ok(n)), ReplyCheck::Prefix(p)) if !buf[..n].starts_with(p) => {
                ProbeResult::down(format!(
                    "UDP {target}: reply ({n} bytes) does not start with the expected {} bytes",
                    p.len()
                ))
            }
            (Ok(Ok(n)), _) => ProbeResult::up(format!("UDP {target}: reply of {n} bytes")),
        })
    }
    .await;
    r.unwrap_or_else(|e| ProbeResult::down(format!("UDP {target}: {}", describe_io(&e))))
}

/// MISC_CHECK exit status → health, as keepalived: 0 up; 1 down; with `misc_dynamic`,
/// 2..=255 up with weight `status − 2`, without it down. A timeout, a signal or a script
/// that cannot start is a failure.
pub fn misc_result(outcome: &ScriptOutcome, dynamic: bool) -> ProbeResult {
    match outcome {
        ScriptOutcome::Exited { code: Some(0), .. } => ProbeResult::up("MISC_CHECK exit status 0"),
        ScriptOutcome::Exited { code: Some(c), .. } if dynamic && (2..=255).contains(c) => {
            ProbeResult {
                ok: true,
                weight: Some((*c - 2) as u32),
                detail: format!("MISC_CHECK exit status {c}: weight {}", c - 2),
            }
        }
        other => ProbeResult::down(format!("MISC_CHECK {}", other.describe())),
    }
}

/// MISC_CHECK: run `misc_path` with `misc_timeout`, as `user` (its `user`, or
/// `global.script_user`, resolved beforehand: [`script_credentials`]).
pub async fn misc_check(m: &MiscCheck, user: &ScriptCredentials) -> ProbeResult {
    let creds = match user {
        Ok(c) => *c,
        Err(e) => return ProbeResult::down(format!("MISC_CHECK {e}")),
    };
    let mut opts = RunOptions::with_timeout(m.misc_timeout);
    opts.credentials = creds;
    let outcome = script::run(&m.misc_path.argv, &opts).await;
    misc_result(&outcome, m.misc_dynamic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Output;

    fn exited(code: i32) -> ScriptOutcome {
        ScriptOutcome::Exited { code: Some(code), signal: None, output: Output::default() }
    }

    #[test]
    fn misc_dynamic_mapping() {
        assert!(misc_result(&exited(0), false).ok);
        assert!(misc_result(&exited(0), true).ok);
        assert_eq!(misc_result(&exited(0), true).weight, None, "0: weight unchanged");
        assert!(!misc_result(&exited(1), false).ok);
        assert!(!misc_result(&exited(1), true).ok);
        assert!(!misc_result(&exited(2), false).ok, "2..=255 without misc_dynamic is a failure");
        let r = misc_result(&exited(2), true);
        assert!(r.ok && r.weight == Some(0));
        let r = misc_result(&exited(12), true);
        assert!(r.ok && r.weight == Some(10));
        let r = misc_result(&exited(255), true);
        assert!(r.ok && r.weight == Some(253));
        let killed =
            ScriptOutcome::Exited { code: None, signal: Some(9), output: Output::default() };
        assert!(!misc_result(&killed, true).ok);
        assert!(!misc_result(&ScriptOutcome::TimedOut { output: Output::default() }, true).ok);
        assert!(!misc_result(&ScriptOutcome::SpawnFailed("x".into()), true).ok);
    }

    #[test]
    fn http_urls_are_limited_generously() {
        let s = Duration::from_secs;
        assert_eq!(http_url_limit(s(5)), s(300));
        assert_eq!(http_url_limit(s(100)), s(400));
        assert_eq!(http_url_limit(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn random_payloads_differ() {
        let a = random_payload();
        assert_eq!(a.len(), UDP_RANDOM_PAYLOAD);
        assert_ne!(a, random_payload());
    }
}
