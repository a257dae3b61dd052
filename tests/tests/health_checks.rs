//! Health checkers against real servers on 127.0.0.1 that each test starts itself, and the
//! HealthChecker service end to end (timings, notify hooks, reload).
//!
//! Network safety: every socket here is bound to or connects to 127.0.0.1, to ports the
//! test's own servers (or a just-closed listener) hold. Every wait is bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_lb::config::{
    CheckKind, Connect, HealthCheck, HttpCheck, MiscCheck, Protocol, RealServer, ReplyCheck,
    Script, Timing, UdpCheck, UrlCheck, VirtualServerKey,
};
use ha_lb::health::http::md5_hex;
use ha_lb::health::probe::{
    http_check, misc_check, probe, script_credentials, tcp_check, udp_check,
};
use ha_lb::health::{CheckTarget, HealthChecker, HealthEvent, HealthOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------
// model helpers
// ---------------------------------------------------------------------------------------

fn connect(target: SocketAddr, timeout: Duration) -> Connect {
    Connect { target, bindto: Some(LO), connect_timeout: timeout }
}

fn url(path: &str, digest: Option<&[u8]>) -> UrlCheck {
    UrlCheck {
        path: path.into(),
        status_code: vec![200..=299],
        digest: digest.map(|b| {
            let hex = md5_hex(b);
            let mut d = [0u8; 16];
            for (i, x) in d.iter_mut().enumerate() {
                *x = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            d
        }),
    }
}

fn http(target: SocketAddr, urls: Vec<UrlCheck>, timeout: Duration) -> HttpCheck {
    HttpCheck { connect: connect(target, timeout), url: urls, virtualhost: None }
}

fn sh(script: &str) -> Script {
    Script { argv: vec!["/bin/sh".into(), "-c".into(), script.into()] }
}

fn misc(script: &str, timeout: Duration, dynamic: bool) -> MiscCheck {
    MiscCheck { misc_path: sh(script), misc_timeout: timeout, misc_dynamic: dynamic, user: None }
}

fn check(kind: CheckKind, delay_loop: Duration, retry: u32, dbr: Duration) -> HealthCheck {
    HealthCheck {
        kind,
        timing: Timing {
            delay_loop,
            retry,
            delay_before_retry: dbr,
            warmup: Duration::ZERO,
            rise: 1,
            fall: 1,
        },
    }
}

fn vs() -> VirtualServerKey {
    VirtualServerKey { address: "198.18.0.100".parse().unwrap(), port: 80, protocol: Protocol::Tcp }
}

fn target(rs: SocketAddr, check: HealthCheck, alpha: bool) -> CheckTarget {
    CheckTarget::new(
        vs(),
        alpha,
        RealServer {
            address: rs.ip(),
            port: rs.port(),
            weight: 1,
            inhibit_on_failure: false,
            notify_up: None,
            notify_down: None,
            check: Some(check),
        },
    )
}

async fn next_event(rx: &mut mpsc::Receiver<HealthEvent>, within: Duration) -> HealthEvent {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no health event within {within:?}"))
        .expect("event channel closed")
}

async fn no_event(rx: &mut mpsc::Receiver<HealthEvent>, within: Duration) {
    if let Ok(Some(ev)) = tokio::time::timeout(within, rx.recv()).await {
        panic!("unexpected event {ev:?}");
    }
}

/// A port on 127.0.0.1 with nothing listening (bound, then closed).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ha-lb-health-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------
// a tiny HTTP server
// ---------------------------------------------------------------------------------------

/// Serves: `/ok` 200 "hello" (Content-Length), `/chunked` 200 "hello world" (chunked),
/// `/close` 200 "until close" (no length), `/503` 503, `/short` 200 "short" with a
/// Content-Length of 10, `/slow` 200 "slowbody" one byte every 200 ms, `/hang` never
/// answers. While
/// `healthy` is false every path hangs.
#[derive(Clone)]
struct HttpServer {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
}

async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, healthy: bool) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&req);
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let resp: Vec<u8> = match (healthy, path.as_str()) {
        (true, "/ok") => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec(),
        (true, "/chunked") => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
        (true, "/close") => b"HTTP/1.0 200 OK\r\n\r\nuntil close".to_vec(),
        (true, "/503") => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
        (true, "/short") => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
        (true, "/slow") => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n").await;
            for b in b"slowbody" {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = s.write_all(&[*b]).await;
            }
            Vec::new()
        }
        _ => {
            // Hang, bounded: hold the connection open a while, then go.
            tokio::time::sleep(Duration::from_secs(10)).await;
            return;
        }
    };
    let _ = s.write_all(&resp).await;
    let _ = s.shutdown().await;
}

async fn http_server() -> HttpServer {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let srv =
        HttpServer { addr: l.local_addr().unwrap(), healthy: Arc::new(AtomicBool::new(true)) };
    let healthy = srv.healthy.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let h = healthy.load(Ordering::SeqCst);
            tokio::spawn(serve_http(s, h));
        }
    });
    srv
}

async fn tls_server() -> SocketAddr {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(s)).await
                {
                    serve_http(tls, true).await;
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------
// single attempts
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tcp_check_up_and_down() {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let up = l.local_addr().unwrap();
    let r = tcp_check(&connect(up, Duration::from_secs(2))).await;
    assert!(r.ok, "{r:?}");
    let down = closed_port().await;
    let t0 = Instant::now();
    let r = tcp_check(&connect(down, Duration::from_secs(2))).await;
    assert!(!r.ok);
    assert!(r.detail.contains("refused"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));
    drop(l);
}

#[tokio::test]
async fn http_get_status_and_digest() {
    let srv = http_server().await;
    let t = Duration::from_secs(2);
    let ok = http_check(&http(srv.addr, vec![url("/ok", Some(b"hello"))], t), false).await;
    assert!(ok.ok, "{ok:?}");
    let ok = http_check(
        &http(
            srv.addr,
            vec![url("/chunked", Some(b"hello world")), url("/close", Some(b"until close"))],
            t,
        ),
        false,
    )
    .await;
    assert!(ok.ok, "{ok:?}");
    // Status outside the accepted ranges.
    let r = http_check(&http(srv.addr, vec![url("/503", None)], t), false).await;
    assert!(!r.ok && r.detail.contains("HTTP status 503"), "{r:?}");
    // 503 accepted when listed.
    let mut u = url("/503", None);
    u.status_code = vec![200..=200, 500..=503];
    assert!(http_check(&http(srv.addr, vec![u], t), false).await.ok);
    // Digest mismatch.
    let r = http_check(&http(srv.addr, vec![url("/ok", Some(b"other body"))], t), false).await;
    assert!(!r.ok && r.detail.contains("MD5 digest mismatch"), "{r:?}");
    // Every URL must pass.
    let r = http_check(&http(srv.addr, vec![url("/ok", None), url("/503", None)], t), false).await;
    assert!(!r.ok);
    // A server that never answers fails within the I/O timeout.
    let t0 = Instant::now();
    let r = http_check(&http(srv.addr, vec![url("/hang", None)], 300 * MS), false).await;
    assert!(!r.ok && r.detail.contains("timed out"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Nobody listening.
    let r = http_check(&http(closed_port().await, vec![url("/ok", None)], t), false).await;
    assert!(!r.ok && r.detail.contains("refused"), "{r:?}");
}

/// Found by review: a body shorter than its Content-Length failed the check. keepalived
/// logs the mismatch and judges what arrived: the status, and the digest of the bytes
/// received.
#[tokio::test]
async fn http_get_judges_a_short_body_on_what_arrived() {
    let srv = http_server().await;
    let t = Duration::from_secs(2);
    let r = http_check(&http(srv.addr, vec![url("/short", None)], t), false).await;
    assert!(r.ok, "{r:?}");
    assert!(r.detail.contains("/short: Content-Length (10) does not match received bytes (5)"));
    let r = http_check(&http(srv.addr, vec![url("/short", Some(b"short"))], t), false).await;
    assert!(r.ok, "the digest of what arrived: {r:?}");
    let r =
        http_check(&http(srv.addr, vec![url("/short", Some(b"short\0\0\0\0\0"))], t), false).await;
    assert!(!r.ok && r.detail.contains("MD5 digest mismatch"), "{r:?}");
}

/// Found by review: each URL had 4 × connect_timeout in all, so a body that kept
/// arriving but took longer failed. keepalived bounds each read by connect_timeout; so do
/// we (with a generous total, `http_url_limit`).
#[tokio::test]
async fn http_get_bounds_each_read_not_the_whole_body() {
    let srv = http_server().await;
    let t = 400 * MS;
    let t0 = Instant::now();
    let r = http_check(&http(srv.addr, vec![url("/slow", Some(b"slowbody"))], t), false).await;
    assert!(r.ok, "{r:?}");
    assert!(t0.elapsed() > 4 * t, "the body took longer than 4 × connect_timeout");
    // Silence between reads still fails within connect_timeout.
    let t0 = Instant::now();
    let r = http_check(&http(srv.addr, vec![url("/hang", None)], t), false).await;
    assert!(!r.ok && r.detail.contains("timed out"), "{r:?}");
    assert!(t0.elapsed() < 3 * t, "{:?}", t0.elapsed());
}

#[tokio::test]
async fn ssl_get_with_a_self_signed_certificate() {
    let addr = tls_server().await;
    let t = Duration::from_secs(3);
    let r = http_check(&http(addr, vec![url("/ok", Some(b"hello"))], t), true).await;
    assert!(r.ok, "self-signed certificates are accepted, as keepalived: {r:?}");
    let mut h = http(addr, vec![url("/chunked", Some(b"hello world"))], t);
    h.virtualhost = Some("localhost".into());
    assert!(http_check(&h, true).await.ok, "with SNI");
    let r = http_check(&http(addr, vec![url("/ok", Some(b"nope"))], t), true).await;
    assert!(!r.ok && r.detail.contains("MD5"), "{r:?}");
    let r = http_check(&http(addr, vec![url("/503", None)], t), true).await;
    assert!(!r.ok && r.detail.contains("503"), "{r:?}");
    // Plain HTTP against the TLS port fails (no valid HTTP response).
    assert!(!http_check(&http(addr, vec![url("/ok", None)], 500 * MS), false).await.ok);
    // TLS against a plain HTTP server fails.
    let srv = http_server().await;
    assert!(!http_check(&http(srv.addr, vec![url("/ok", None)], 500 * MS), true).await.ok);
}

/// Found by review: a TLS 1.2 server offering only suites rustls does not speak (CBC, no
/// ECDHE) fails SSL_GET with a handshake-failure alert, where keepalived (OpenSSL)
/// connects; the check's detail now says what SSL_GET needs. The server here answers the
/// ClientHello with that fatal alert, as such a server does.
#[tokio::test]
async fn ssl_get_says_what_it_needs_when_the_server_refuses_its_suites() {
    for (alert, name) in [(40u8, "HandshakeFailure"), (70, "ProtocolVersion")] {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut hello = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut hello)).await;
            // TLS record: alert, TLS 1.2, length 2, fatal, description.
            let _ = s.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, alert]).await;
            let _ = s.shutdown().await;
        });
        let r = http_check(&http(addr, vec![url("/", None)], Duration::from_secs(2)), true).await;
        assert!(!r.ok, "{r:?}");
        assert!(
            r.detail.contains(&format!("TLS handshake failed: received fatal alert: {name}"))
                && r.detail.contains(
                    "(SSL_GET needs TLS 1.3, or TLS 1.2 with an ECDHE AES-GCM / ChaCha20 suite)"
                ),
            "{r:?}"
        );
        server.await.unwrap();
    }
}

#[tokio::test]
async fn misc_check_exit_codes_and_timeout() {
    let t = Duration::from_secs(5);
    assert!(misc_check(&misc("exit 0", t, false), &Ok(None)).await.ok);
    assert!(!misc_check(&misc("exit 1", t, false), &Ok(None)).await.ok);
    assert!(!misc_check(&misc("exit 12", t, false), &Ok(None)).await.ok);
    let r = misc_check(&misc("exit 12", t, true), &Ok(None)).await;
    assert!(r.ok && r.weight == Some(10), "{r:?}");
    let r = misc_check(&misc("exit 0", t, true), &Ok(None)).await;
    assert!(r.ok && r.weight.is_none(), "{r:?}");
    assert!(!misc_check(&misc("exit 1", t, true), &Ok(None)).await.ok);
    // Timeout: fails, and the script is gone well before its own 30 s.
    let t0 = Instant::now();
    let r = misc_check(&misc("sleep 30", 200 * MS, false), &Ok(None)).await;
    assert!(!r.ok && r.detail.contains("timed out"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // A program that does not exist.
    let m = MiscCheck {
        misc_path: Script { argv: vec!["/nonexistent/ha-lb-check".into()] },
        misc_timeout: t,
        misc_dynamic: false,
        user: None,
    };
    assert!(!probe(&CheckKind::Misc(m), &Ok(None)).await.ok);
    // A user that could not be resolved at load: not run at all (never as root).
    let r =
        misc_check(&misc("exit 0", t, false), &Err("script user: no such user \"x\"".into())).await;
    assert_eq!(r.detail, "MISC_CHECK script user: no such user \"x\"");
    assert!(!r.ok);
}

#[tokio::test]
async fn udp_check_with_and_without_reply() {
    // An echo server that prefixes replies with "PONG".
    let echo = UdpSocket::bind((LO, 0)).await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut out = b"PONG".to_vec();
            out.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&out, from).await;
        }
    });
    // A server that reads and never answers.
    let silent = UdpSocket::bind((LO, 0)).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // A port with nothing bound: ICMP port unreachable.
    let closed = {
        let s = UdpSocket::bind((LO, 0)).await.unwrap();
        s.local_addr().unwrap()
    };
    let t = 400 * MS;
    let udp = |addr, payload: Option<&[u8]>, reply| UdpCheck {
        connect: connect(addr, t),
        payload: payload.map(|p| p.to_vec()),
        require_reply: reply,
    };
    assert!(udp_check(&udp(echo_addr, Some(b"ping"), ReplyCheck::Any)).await.ok);
    assert!(udp_check(&udp(echo_addr, None, ReplyCheck::Prefix(b"PONG".to_vec()))).await.ok);
    let r = udp_check(&udp(echo_addr, Some(b"x"), ReplyCheck::Prefix(b"NOPE".to_vec()))).await;
    assert!(!r.ok, "{r:?}");
    assert!(udp_check(&udp(echo_addr, Some(b"x"), ReplyCheck::None)).await.ok);
    // Silence is fine without require_reply, a failure with it.
    assert!(udp_check(&udp(silent_addr, Some(b"x"), ReplyCheck::None)).await.ok);
    let r = udp_check(&udp(silent_addr, Some(b"x"), ReplyCheck::Any)).await;
    assert!(!r.ok && r.detail.contains("no reply"), "{r:?}");
    // ICMP port unreachable fails either way.
    let r = udp_check(&udp(closed, Some(b"x"), ReplyCheck::None)).await;
    assert!(!r.ok && r.detail.contains("refused"), "{r:?}");
    assert!(!udp_check(&udp(closed, Some(b"x"), ReplyCheck::Any)).await.ok);
    drop(silent);
}

// ---------------------------------------------------------------------------------------
// the service
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_stops_answering_goes_down_in_time_and_comes_back_after_rise() {
    let srv = http_server().await;
    let delay_loop = 300 * MS;
    let dbr = 100 * MS;
    let timeout = 200 * MS;
    let (retry, fall, rise) = (1u32, 2u32, 2u32);
    let mut hc = check(
        CheckKind::Http(http(srv.addr, vec![url("/ok", Some(b"hello"))], timeout)),
        delay_loop,
        retry,
        dbr,
    );
    hc.timing.fall = fall;
    hc.timing.rise = rise;
    let (checker, mut rx) =
        HealthChecker::start(vec![target(srv.addr, hc, false)], HealthOptions::default());
    let rs = srv.addr;
    // Starts up (no alpha) and stays up while healthy.
    assert!(checker.state(vs(), rs).unwrap().up);
    no_event(&mut rx, 4 * delay_loop).await;
    assert!(checker.state(vs(), rs).unwrap().attempts >= 2);

    srv.healthy.store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    let ev = next_event(&mut rx, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert!(!ev.up && ev.rs == rs && ev.vs == vs(), "{ev:?}");
    assert!(ev.reason.contains("timed out"), "{ev:?}");
    // Worst case: every failed round waits delay_loop, then 1 + retry attempts of at
    // most connect_timeout each, retry × delay_before_retry apart.
    let round = delay_loop + timeout * (retry + 1) + dbr * retry;
    let bound = round * fall + Duration::from_millis(700);
    assert!(took <= bound, "down after {took:?}, bound {bound:?}");
    // And not before `fall` rounds of failures could have happened.
    assert!(took >= (timeout * (retry + 1) + dbr * retry) * fall, "{took:?}");
    assert!(!checker.state(vs(), rs).unwrap().up);

    srv.healthy.store(true, Ordering::SeqCst);
    let t1 = Instant::now();
    let ev = next_event(&mut rx, Duration::from_secs(10)).await;
    let took = t1.elapsed();
    assert!(ev.up, "{ev:?}");
    // `rise` successful rounds, delay_loop apart: at least rise−1 intervals.
    assert!(took >= delay_loop * (rise - 1), "up after {took:?}: too early for rise {rise}");
    assert!(took <= delay_loop * (rise + 1) + timeout + Duration::from_millis(700), "{took:?}");
    checker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpha_starts_down_and_notify_hooks_run() {
    let dir = tmpdir("notify");
    let log = dir.join("log");
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut t =
        target(addr, check(CheckKind::Tcp(connect(addr, 500 * MS)), 200 * MS, 0, 100 * MS), true);
    t.rs.notify_up = Some(sh(&format!("echo up >> {}", log.display())));
    t.rs.notify_down = Some(sh(&format!("echo down >> {}", log.display())));
    let (checker, mut rx) = HealthChecker::start(vec![t], HealthOptions::default());
    assert!(!checker.state(vs(), addr).unwrap().up, "alpha: down until checked");
    let ev = next_event(&mut rx, Duration::from_secs(5)).await;
    assert!(ev.up && ev.weight.is_none(), "{ev:?}");
    drop(l);
    let ev = next_event(&mut rx, Duration::from_secs(5)).await;
    assert!(!ev.up && ev.reason.contains("refused"), "{ev:?}");
    // Hooks run in order, without extra arguments (keepalived runs them as configured).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = std::fs::read_to_string(&log).unwrap_or_default();
        if got == "up\ndown\n" {
            break;
        }
        assert!(Instant::now() < deadline, "notify log is {got:?}");
        tokio::time::sleep(20 * MS).await;
    }
    checker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misc_dynamic_weight_changes_are_events() {
    let dir = tmpdir("dynamic");
    let code = dir.join("code");
    std::fs::write(&code, "12").unwrap();
    let m = misc(&format!("exit $(cat {})", code.display()), Duration::from_secs(5), true);
    let rs: SocketAddr = "127.0.0.1:9".parse().unwrap(); // never contacted: MISC_CHECK only
    let t = target(rs, check(CheckKind::Misc(m), 150 * MS, 0, 100 * MS), false);
    let (checker, mut rx) = HealthChecker::start(vec![t], HealthOptions::default());
    let ev = next_event(&mut rx, Duration::from_secs(5)).await;
    assert_eq!((ev.up, ev.weight), (true, Some(10)), "{ev:?}");
    std::fs::write(&code, "22").unwrap();
    let ev = next_event(&mut rx, Duration::from_secs(5)).await;
    assert_eq!((ev.up, ev.weight), (true, Some(20)), "{ev:?}");
    std::fs::write(&code, "1").unwrap();
    let ev = next_event(&mut rx, Duration::from_secs(5)).await;
    assert!(!ev.up, "{ev:?}");
    checker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_keeps_unchanged_states() {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let up_addr = l.local_addr().unwrap();
    let down_addr = closed_port().await;
    let dl = 200 * MS;
    let tcp = |a| check(CheckKind::Tcp(connect(a, 300 * MS)), dl, 0, 100 * MS);
    let a = target(up_addr, tcp(up_addr), false);
    let b = target(down_addr, tcp(down_addr), false);
    let (mut checker, mut rx) =
        HealthChecker::start(vec![a.clone(), b.clone()], HealthOptions::default());
    let ev = next_event(&mut rx, Duration::from_secs(5)).await;
    assert!(!ev.up && ev.rs == down_addr, "{ev:?}");
    no_event(&mut rx, 3 * dl).await;
    let attempts_before = checker.state(vs(), up_addr).unwrap().attempts;
    let since_b = checker.state(vs(), down_addr).unwrap().since;

    // Reload: `a` identical, `b` with a new notify hook (same check), `c` new with alpha.
    let c_listener = TcpListener::bind((LO, 0)).await.unwrap();
    let c_addr = c_listener.local_addr().unwrap();
    let mut b2 = b.clone();
    b2.rs.notify_up = Some(sh("true"));
    let c = target(c_addr, tcp(c_addr), true);
    checker.reconfigure(vec![a.clone(), b2, c]);
    assert!(checker.state(vs(), up_addr).unwrap().up);
    assert!(!checker.state(vs(), down_addr).unwrap().up, "b stays down");
    assert_eq!(checker.state(vs(), down_addr).unwrap().since, since_b);
    assert!(checker.state(vs(), up_addr).unwrap().attempts >= attempts_before, "timers kept");
    assert!(!checker.state(vs(), c_addr).unwrap().up, "new with alpha starts down");
    // The only event is the new server coming up.
    let ev = next_event(&mut rx, Duration::from_secs(5)).await;
    assert!(ev.up && ev.rs == c_addr, "{ev:?}");
    no_event(&mut rx, 3 * dl).await;
    assert!(checker.state(vs(), up_addr).unwrap().attempts > attempts_before, "a kept checking");

    // Reload with a changed check block for `a` (other timeout): restarted, state kept.
    let a_changed =
        target(up_addr, check(CheckKind::Tcp(connect(up_addr, 400 * MS)), dl, 1, 100 * MS), true);
    let b_changed = target(
        down_addr,
        check(CheckKind::Tcp(connect(down_addr, 400 * MS)), dl, 0, 100 * MS),
        false,
    );
    checker.reconfigure(vec![a_changed, b_changed]);
    assert!(
        checker.state(vs(), up_addr).unwrap().up,
        "changed check keeps up (alpha is for start only)"
    );
    assert!(!checker.state(vs(), down_addr).unwrap().up, "changed check keeps down");
    assert!(checker.state(vs(), c_addr).is_none(), "removed");
    assert_eq!(checker.states().len(), 2);
    no_event(&mut rx, 4 * dl).await;
    assert!(checker.state(vs(), up_addr).unwrap().attempts >= 1);
    checker.shutdown().await;
    drop((l, c_listener));
}

/// Found by review: the service counted a MISC_CHECK's `delay_loop` from the end of the
/// script. keepalived starts it every `delay_loop` (`check_misc.c`: last start +
/// `delay_loop`): a 400 ms script with `delay_loop` 600 ms starts every 600 ms, not 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misc_check_starts_every_delay_loop_however_long_the_script_runs() {
    let dir = tmpdir("misc-period");
    let starts = dir.join("starts");
    let m = misc(
        &format!("date +%s%N >> {}; sleep 0.4", starts.display()),
        Duration::from_secs(5),
        false,
    );
    let rs: SocketAddr = "127.0.0.1:9".parse().unwrap(); // never contacted: MISC_CHECK only
    let t = target(rs, check(CheckKind::Misc(m), 600 * MS, 0, 100 * MS), false);
    let (checker, mut rx) = HealthChecker::start(vec![t], HealthOptions::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    let stamps = loop {
        let text = std::fs::read_to_string(&starts).unwrap_or_default();
        let stamps: Vec<u128> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if stamps.len() >= 5 {
            break stamps;
        }
        assert!(Instant::now() < deadline, "only {} runs: {text:?}", stamps.len());
        tokio::time::sleep(50 * MS).await;
    };
    checker.shutdown().await;
    no_event(&mut rx, Duration::ZERO).await;
    // 4 periods: 2.4 s from start to start (4 s counted from the ends).
    let span = Duration::from_nanos((stamps[4] - stamps[0]) as u64);
    assert!(span >= 4 * 600 * MS - 50 * MS, "{span:?}");
    assert!(span < 4 * 800 * MS, "periods counted from the script's end: {span:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by review: with `alpha`, a server whose first check failed got no notify_down
/// (it started down: no change). keepalived runs notify_down for it
/// (update_svr_checker_state: a first result that confirms an alpha checker's state).
/// No event: nothing changed for the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpha_server_failing_its_first_check_gets_notify_down() {
    let dir = tmpdir("alpha-down");
    let log = dir.join("log");
    let addr = closed_port().await;
    let mut t =
        target(addr, check(CheckKind::Tcp(connect(addr, 500 * MS)), 200 * MS, 0, 100 * MS), true);
    t.rs.notify_up = Some(sh(&format!("echo up >> {}", log.display())));
    t.rs.notify_down = Some(sh(&format!("echo down >> {}", log.display())));
    let (checker, mut rx) = HealthChecker::start(vec![t], HealthOptions::default());
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
        assert!(Instant::now() < deadline, "no notify_down");
        tokio::time::sleep(20 * MS).await;
    }
    // Later failed rounds run nothing more, and no event is sent.
    no_event(&mut rx, Duration::from_millis(800)).await;
    assert!(checker.state(vs(), addr).unwrap().attempts >= 3);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "down\n");
    checker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by review: a reload never applied a changed `global.script_user` to MISC_CHECK
/// or notify_up/notify_down (the user was fixed at start-up); keepalived resolves the
/// default script user again on reload. Now the reload resolves it once, restarts the
/// MISC_CHECK whose script runs as someone else (keeping its state: no event) and gives
/// the hooks the new user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_a_new_script_user_to_checks_and_hooks() {
    use std::os::unix::fs::PermissionsExt;
    let nobody = ha_lb::config::ScriptUser { user: "nobody".into(), group: None };
    let Ok(Some(creds)) = script_credentials(Some(&nobody)) else {
        eprintln!("no user nobody here: skipped");
        return;
    };
    let root = ha_lb::config::ScriptUser { user: "root".into(), group: None };
    let dir = tmpdir("script-user");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let code = dir.join("code");
    std::fs::write(&code, "0").unwrap();
    let d = dir.display();
    let m = misc(&format!("id -u > {d}/misc-$(id -u); exit $(cat {d}/code)"), 5 * 1000 * MS, false);
    let rs: SocketAddr = "127.0.0.1:9".parse().unwrap(); // never contacted: MISC_CHECK only
    let mut t = target(rs, check(CheckKind::Misc(m), 150 * MS, 0, 100 * MS), false);
    t.rs.notify_down = Some(sh(&format!("id -u > {d}/down-$(id -u)")));
    let opts = HealthOptions { script_user: Some(root), ..HealthOptions::default() };
    let (mut checker, mut rx) = HealthChecker::start(vec![t.clone()], opts);
    let wait_for = |name: String| {
        let p = dir.join(name);
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !p.exists() {
                assert!(Instant::now() < deadline, "{} never written", p.display());
                tokio::time::sleep(20 * MS).await;
            }
        }
    };
    wait_for("misc-0".into()).await;
    checker.reload(vec![t], Some(nobody));
    wait_for(format!("misc-{}", creds.uid)).await;
    assert!(checker.state(vs(), rs).unwrap().up, "restarted with its state");
    no_event(&mut rx, Duration::ZERO).await;
    std::fs::write(&code, "1").unwrap();
    let ev = next_event(&mut rx, Duration::from_secs(5)).await;
    assert!(!ev.up, "{ev:?}");
    wait_for(format!("down-{}", creds.uid)).await;
    assert!(!dir.join("down-0").exists());
    checker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by review: a reload that removed a real server only stopped its check. keepalived
/// (clear_diff_rs → clear_service_rs, not stopping) runs notify_down for a removed server
/// that was up — checked or not — and brings up (notify_up) a down server that only lost
/// its check. At shutdown it runs none (stopping, without omega), nor do we.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_tells_removed_servers_down() {
    let dir = tmpdir("removed");
    let hooks = |t: &mut CheckTarget, name: &str| {
        let f = dir.join(name);
        t.rs.notify_up = Some(sh(&format!("echo up >> {}", f.display())));
        t.rs.notify_down = Some(sh(&format!("echo down >> {}", f.display())));
    };
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let up_addr = l.local_addr().unwrap();
    let tcp = |a| check(CheckKind::Tcp(connect(a, 300 * MS)), 200 * MS, 0, 100 * MS);
    let mut a = target(up_addr, tcp(up_addr), false);
    hooks(&mut a, "a");
    let b_addr = closed_port().await;
    let mut b = target(b_addr, tcp(b_addr), false);
    hooks(&mut b, "b");
    let c_addr: SocketAddr = "127.0.0.1:7".parse().unwrap(); // unchecked: never contacted
    let mut c = target(c_addr, tcp(c_addr), false);
    c.rs.check = None;
    hooks(&mut c, "c");
    let d_addr = closed_port().await;
    let mut d = target(d_addr, tcp(d_addr), false);
    hooks(&mut d, "d");
    let (mut checker, mut rx) = HealthChecker::start(
        vec![a.clone(), b.clone(), c.clone(), d.clone()],
        HealthOptions::default(),
    );
    for _ in 0..2 {
        let ev = next_event(&mut rx, Duration::from_secs(5)).await;
        assert!(!ev.up && (ev.rs == b_addr || ev.rs == d_addr), "{ev:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while read("b") != "down\n" || read("d") != "down\n" {
        assert!(Instant::now() < deadline, "b: {:?}, d: {:?}", read("b"), read("d"));
        tokio::time::sleep(20 * MS).await;
    }
    assert!(checker.state(vs(), up_addr).unwrap().up);

    // The reload keeps only d, without its check.
    let mut d_unchecked = d.clone();
    d_unchecked.rs.check = None;
    checker.reconfigure(vec![d_unchecked]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while read("a") != "down\n" || read("c") != "down\n" || read("d") != "down\nup\n" {
        assert!(
            Instant::now() < deadline,
            "a: {:?}, c: {:?}, d: {:?}",
            read("a"),
            read("c"),
            read("d")
        );
        tokio::time::sleep(20 * MS).await;
    }
    assert_eq!(read("b"), "down\n", "b was down already");
    assert!(checker.states().is_empty());

    // Stopping the service runs no hook.
    let mut e = target(up_addr, tcp(up_addr), false);
    hooks(&mut e, "e");
    checker.reconfigure(vec![e]);
    tokio::time::sleep(500 * MS).await;
    assert!(checker.state(vs(), up_addr).unwrap().attempts > 0);
    checker.shutdown().await;
    tokio::time::sleep(300 * MS).await;
    assert_eq!(read("e"), "");
    no_event(&mut rx, Duration::ZERO).await;
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
}
