//! The control socket: a root-only Unix stream socket speaking one JSON request line and one
//! JSON response line per connection. `ha-lb status` is its client.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::status::Status;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Same as SIGHUP: re-read the configuration file.
    Reload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    /// Applied; `disabled`: tracked scripts of the new file that cannot be run, disabled as
    /// keepalived does (one sentence each; `ha-lb reload` prints them and exits 2).
    Reloaded {
        #[serde(default)]
        disabled: Vec<String>,
    },
    /// A reload whose new configuration is in force, but part of it failed (what failed is
    /// retried where it can be); `ha-lb reload` prints `message` and exits 3.
    ReloadedInPart {
        message: String,
        #[serde(default)]
        disabled: Vec<String>,
    },
    /// The request failed; the daemon keeps running as before.
    Error {
        message: String,
    },
}

/// A request from a client, with the channel its answer goes back on.
pub type Incoming = (Request, oneshot::Sender<Response>);

/// The longest request line accepted (requests are a few dozen bytes); a longer one is
/// answered with an error instead of being read on into memory.
pub const MAX_REQUEST: usize = 64 * 1024;

/// How long a client gets to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection waits for the daemon's answer: past the CLI's own wait for a reload
/// (30 s), so the CLI gives up first; a daemon stuck longer answers nobody, and the
/// connection's task ends instead of waiting for ever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);
/// How long writing the answer may take (a client that does not read).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwards requests from `listener` (see [`bind`]) to `tx` until the listener fails. Each
/// connection is served by a task of its own, bounded in what it reads and how long it
/// waits.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Incoming>) -> Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(serve_one(stream, tx.clone(), ANSWER_TIMEOUT));
    }
}

/// One connection: one request line, one answer line.
async fn serve_one(
    stream: tokio::net::UnixStream,
    tx: mpsc::Sender<Incoming>,
    answer_timeout: Duration,
) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    // One byte past the limit tells a line at the limit from a longer one.
    let mut r = tokio::io::BufReader::new(r.take(MAX_REQUEST as u64 + 1));
    let read = tokio::time::timeout(READ_TIMEOUT, r.read_line(&mut line)).await;
    let resp = match read {
        Ok(Ok(_)) if line.len() > MAX_REQUEST => {
            Response::Error { message: format!("request longer than {MAX_REQUEST} bytes: refused") }
        }
        Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => ask(&tx, req, answer_timeout).await,
            Err(e) => Response::Error { message: format!("bad request: {e}") },
        },
        _ => return,
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&out)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "control client went away"),
        Err(_) => debug!("control client does not read its answer: dropped"),
    }
}

/// Hands `req` to the daemon and waits, at most `timeout`, for its answer.
async fn ask(tx: &mpsc::Sender<Incoming>, req: Request, timeout: Duration) -> Response {
    let (otx, orx) = oneshot::channel();
    let asked = async {
        if tx.send((req, otx)).await.is_err() {
            return Response::Error { message: "daemon is stopping".into() };
        }
        orx.await.unwrap_or(Response::Error { message: "daemon dropped the request".into() })
    };
    tokio::time::timeout(timeout, asked).await.unwrap_or_else(|_| Response::Error {
        message: format!("the daemon did not answer within {} s", timeout.as_secs()),
    })
}

/// The name of the abstract Unix socket a daemon holds for its lifetime
/// ([`claim_namespace`]). Abstract names belong to the network namespace.
const NAMESPACE_LOCK: &[u8] = b"ha-lb/daemon";

/// Claims this network namespace for one daemon: binds the abstract Unix socket
/// [`NAMESPACE_LOCK`] (its name lives in the network namespace, and the kernel drops it when
/// the process dies, crash included, so nothing stale can be left). Refused when another
/// ha-lb holds it — whatever its control socket: two daemons in one namespace would run the
/// same VRIDs and take each other's VIPs away (a second one removes the addresses it finds of
/// its instances at start, and all of them at stop). Keep the returned socket open.
pub fn claim_namespace() -> Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(NAMESPACE_LOCK)?;
    match std::os::unix::net::UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "another ha-lb is already running in this network namespace (its control socket \
             may be another file); two would fight over the same VRRP instances and VIPs: \
             stop it first, or run this one in its own network namespace"
        ),
        Err(e) => Err(e).context("claiming the network namespace (abstract socket @ha-lb/daemon)"),
    }
}

/// Binds the control socket at `path` (root-only), replacing a stale one and refusing when
/// another daemon answers there: the first thing `run` does, before it touches VIPs or a
/// data plane.
///
/// The socket is never reachable with a looser mode than 0600: it is bound inside a fresh
/// directory of mode 0700 beside `path`, made 0600 there, and only then renamed into place
/// (no window between bind and chmod, and no process-wide umask change).
pub fn bind(path: &Path) -> Result<UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating control socket directory {}", dir.display()))?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another ha-lb is already running with control socket {} (stop it first)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale control socket {}", path.display()))?;
    }
    let file = path.file_name().context("the control socket path has no file name")?;
    // Short: a Unix socket path has at most 107 bytes, and this one is bound first.
    let private = dir.join(format!(".hlb{}", std::process::id()));
    // Left by an earlier run with this pid (a container restarting as pid 1): ours to remove.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let bound = (|| {
        let tmp = private.join(file);
        let l = UnixListener::bind(&tmp)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("moving the control socket to {}", path.display()))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Sends one request and waits (bounded) for the answer. Blocking; for the CLI.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!("connecting to {} (is `ha-lb run` running, and are you root?)", path.display())
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp).context("reading the daemon's answer")?;
    serde_json::from_str(resp.trim()).context("decoding the daemon's answer")
}

/// The control socket the daemon started with `config` listens on, for `status -c FILE` and
/// `reload -c FILE`: only `control_socket` is read, leniently, so a file being edited (with
/// an error elsewhere in it) still leads to the running daemon. A TOML file's
/// `[global].control_socket` when it is a string (found line by line when the file does not
/// parse as TOML); a keepalived.conf's `control_socket PATH` in `global_defs` (in the file
/// itself, not its includes). A file without it means the default socket. Only a file that
/// cannot be read is an error.
pub fn socket_of_config(config: &Path) -> std::io::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(config)?;
    let found = if crate::config::is_toml(config) {
        toml_control_socket(&text)
    } else {
        keepalived_control_socket(&text)
    };
    Ok(found.map(Into::into).unwrap_or_else(|| crate::config::DEFAULT_CONTROL_SOCKET.into()))
}

/// `[global].control_socket` of a TOML text, if it is a string.
fn toml_control_socket(text: &str) -> Option<String> {
    if let Ok(t) = text.parse::<toml::Table>() {
        return t.get("global")?.get("control_socket")?.as_str().map(str::to_string);
    }
    // Not valid TOML as a whole: the `control_socket = "..."` line of the [global] table.
    let mut in_global = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_global = line.trim_end_matches(|c: char| c != ']') == "[global]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        if !in_global || key.trim() != "control_socket" {
            continue;
        }
        let value = value.trim();
        for q in ['"', '\''] {
            if let Some(rest) = value.strip_prefix(q) {
                if let Some((v, _)) = rest.split_once(q) {
                    if !v.contains('\\') {
                        return Some(v.to_string());
                    }
                }
            }
        }
        return None;
    }
    None
}

/// `control_socket PATH` at the top level of a keepalived.conf's `global_defs { }` block.
fn keepalived_control_socket(text: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut global_depth = None;
    let mut prev_global_defs = false;
    for line in text.lines() {
        let line = line.split(['#', '!']).next().unwrap_or("");
        let spaced = line.replace('{', " { ").replace('}', " } ");
        let mut words = spaced.split_whitespace();
        while let Some(w) = words.next() {
            match w {
                "{" => {
                    depth += 1;
                    if prev_global_defs && global_depth.is_none() {
                        global_depth = Some(depth);
                    }
                }
                "}" => {
                    if global_depth == Some(depth) {
                        global_depth = None;
                    }
                    depth = depth.saturating_sub(1);
                }
                "control_socket" if global_depth == Some(depth) => {
                    let v = words.next()?;
                    return Some(v.trim_matches('"').to_string());
                }
                _ => {}
            }
            prev_global_defs = w == "global_defs" && depth == 0;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_socket_is_read_from_a_file_with_errors_elsewhere() {
        let dir = std::env::temp_dir().join(format!("hlb-ctlsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let default = Path::new(crate::config::DEFAULT_CONTROL_SOCKET);
        // Valid TOML, but not a valid configuration (unknown key, bad value).
        let p = write(
            "a.toml",
            "[global]\ncontrol_socket = \"/run/x/a.sock\"\nbogus = 1\n[[vrrp_instance]]\npriority = \"high\"\n",
        );
        assert_eq!(socket_of_config(&p).unwrap(), Path::new("/run/x/a.sock"));
        // Not even TOML (a half-typed line): found line by line.
        let p = write(
            "b.toml",
            "[global]\ncontrol_socket = '/run/x/b.sock'  # ours\n\n[[vrrp_instance]]\nname = \n",
        );
        assert_eq!(socket_of_config(&p).unwrap(), Path::new("/run/x/b.sock"));
        // Elsewhere than [global]: not it.
        let p = write("c.toml", "[other]\ncontrol_socket = \"/run/x/c.sock\"\nx = \n");
        assert_eq!(socket_of_config(&p).unwrap(), default);
        let p = write("d.toml", "[global]\ncontrol_socket = 5\n");
        assert_eq!(socket_of_config(&p).unwrap(), default);
        // keepalived.conf: in global_defs (ha-lb's own keyword), not elsewhere.
        let p = write("keepalived.conf", "global_defs {\n  router_id x\n");
        assert_eq!(socket_of_config(&p).unwrap(), default);
        let p = write(
            "k2.conf",
            "vrrp_instance V { control_socket /x }\nglobal_defs\n{\n  notification_email {\n a@b\n }\n  control_socket \"/run/x/k.sock\" # here\n}\nvrrp_instance V {\n",
        );
        assert_eq!(socket_of_config(&p).unwrap(), Path::new("/run/x/k.sock"));
        assert!(socket_of_config(&dir.join("missing.toml")).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn status_round_trip_and_socket_is_root_only() {
        let dir = std::env::temp_dir().join(format!("hlb-ctl-{}", std::process::id()));
        let path = dir.join("ha-lb.sock");
        let (tx, mut rx) = mpsc::channel::<Incoming>(4);
        let server = tokio::spawn(serve(bind(&path).unwrap(), tx));
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let resp = match req {
                    Request::Status => {
                        Response::Status(Box::new(Status { pid: 7, ..Default::default() }))
                    }
                    Request::Reload => Response::Reloaded { disabled: Vec::new() },
                };
                let _ = reply.send(resp);
            }
        });
        let p = path.clone();
        let resp = tokio::task::spawn_blocking(move || {
            for _ in 0..100 {
                if p.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            request(&p, &Request::Status, Duration::from_secs(2))
        })
        .await
        .unwrap()
        .unwrap();
        match resp {
            Response::Status(s) => assert_eq!(s.pid, 7),
            other => panic!("{other:?}"),
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Bound in a private directory and moved into place: nothing else is left.
        let names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["ha-lb.sock"]);
        // A second daemon on the same socket is refused while the first answers.
        assert!(bind(&path).unwrap_err().to_string().contains("already running"));
        server.abort();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Sends `bytes` on a fresh connection served by `serve_one` and returns the answer line.
    async fn exchange(bytes: Vec<u8>, tx: mpsc::Sender<Incoming>, timeout: Duration) -> String {
        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        let served = tokio::spawn(serve_one(server, tx, timeout));
        let (r, mut w) = client.into_split();
        w.write_all(&bytes).await.unwrap();
        let mut answer = String::new();
        let mut r = tokio::io::BufReader::new(r);
        let read = r.read_line(&mut answer);
        tokio::time::timeout(Duration::from_secs(2), read).await.unwrap().unwrap();
        drop(w);
        tokio::time::timeout(Duration::from_secs(5), served).await.unwrap().unwrap();
        answer
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_without_reading_it_all() {
        let (tx, _rx) = mpsc::channel::<Incoming>(4);
        // No end of line, and the client keeps sending: the server stops reading at the
        // limit and answers at once (without the limit it would read on until its timeout).
        let big = vec![b' '; MAX_REQUEST + 10];
        let answer = exchange(big, tx.clone(), Duration::from_secs(1)).await;
        let resp: Response = serde_json::from_str(answer.trim()).unwrap();
        assert!(
            matches!(&resp, Response::Error { message } if message.contains("longer than 65536")),
            "{resp:?}"
        );
        // A line just under the limit is read and parsed (and is bad JSON here).
        let mut line = vec![b' '; MAX_REQUEST - 1];
        line.push(b'\n');
        let answer = exchange(line, tx, Duration::from_secs(1)).await;
        assert!(answer.contains("bad request"), "{answer}");
    }

    #[tokio::test]
    async fn a_daemon_that_does_not_answer_does_not_hold_the_connection() {
        // The daemon takes the request and never answers.
        let (tx, mut rx) = mpsc::channel::<Incoming>(4);
        let held = tokio::spawn(async move {
            let kept = rx.recv().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(kept);
        });
        let started = std::time::Instant::now();
        let answer =
            exchange(b"{\"cmd\":\"status\"}\n".to_vec(), tx, Duration::from_millis(200)).await;
        assert!(answer.contains("did not answer"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }
}
