//! The control socket: a root-only Unix stream socket speaking one JSON request line and one
//! JSON response line per connection. `ha-lb status` is its client.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
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
    /// The request failed; the daemon keeps running as before.
    Error {
        message: String,
    },
}

/// A request from a client, with the channel its answer goes back on.
pub type Incoming = (Request, oneshot::Sender<Response>);

/// Binds the socket (replacing a stale one; refusing if a live daemon answers there), makes
/// it root-only, and forwards requests to `tx` until the listener fails.
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
        let tx = tx.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r);
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            let resp = match read {
                Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(line.trim()) {
                    Ok(req) => {
                        let (otx, orx) = oneshot::channel();
                        if tx.send((req, otx)).await.is_err() {
                            Response::Error { message: "daemon is stopping".into() }
                        } else {
                            orx.await.unwrap_or(Response::Error {
                                message: "daemon dropped the request".into(),
                            })
                        }
                    }
                    Err(e) => Response::Error { message: format!("bad request: {e}") },
                },
                _ => return,
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            if let Err(e) = w.write_all(&out).await {
                debug!(error = %e, "control client went away");
            }
        });
    }
}

/// Binds the control socket at `path` (root-only), refusing when another daemon answers
/// there: the first thing `run` does, before it touches VIPs or a data plane.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating control socket directory {}", dir.display()))?;
    }
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
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // A second daemon on the same socket is refused while the first answers.
        assert!(bind(&path).unwrap_err().to_string().contains("already running"));
        server.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
}
