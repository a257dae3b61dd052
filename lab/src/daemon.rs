//! Running `ha-lb` (and keepalived, as a peer) inside lab nodes, with a config file, a log
//! file and a control socket per daemon in one scratch directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{topology::bin_path, Lab, Node};

/// A scratch directory removed on drop unless the test failed (then it is kept and named,
/// so the daemons' logs can be read) or `HLB_KEEP_LOGS` is set.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hlb-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("daemon logs kept in {}", self.dir.display());
            for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                if e.path().extension().map(|x| x == "log").unwrap_or(false) {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("--- {} (last {} lines)", e.path().display(), tail.len());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        } else if std::env::var_os("HLB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One `ha-lb run` in a lab node.
#[derive(Clone, Debug)]
pub struct HaLb {
    pub node: Node,
    pub pid: u32,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl HaLb {
    /// Writes `toml` (with `control_socket` set to a per-daemon path: put `{socket}` in
    /// `[global]`) and starts `ha-lb run` in `node`.
    pub fn start(
        lab: &mut Lab,
        node: &Node,
        scratch: &Scratch,
        name: &str,
        toml: &str,
    ) -> Result<HaLb> {
        let socket = scratch.dir.join(format!("{name}.sock"));
        let config = scratch.dir.join(format!("{name}.toml"));
        let log = scratch.dir.join(format!("{name}.log"));
        std::fs::write(&config, toml.replace("{socket}", &socket.display().to_string()))?;
        let mut cmd = Command::new(bin_path("ha-lb")?);
        cmd.args(["run", "--log", "info,ha_lb=debug", "-c"]).arg(&config).env("NO_COLOR", "1");
        let pid = lab.spawn_logged(node, &mut cmd, &log)?;
        Ok(HaLb { node: node.clone(), pid, config, socket, log })
    }

    /// `ha-lb status --json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = Command::new(bin_path("ha-lb")?)
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()?;
        if !out.status.success() {
            bail!("ha-lb status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// State of vrrp_instance `name` ("MASTER", "BACKUP", …), if the daemon answers.
    pub fn state(&self, instance: &str) -> Option<String> {
        let s = self.status().ok()?;
        s["vrrp_instances"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == instance)
            .and_then(|i| i["state"].as_str().map(String::from))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// True when `node` has `addr` on `dev`.
pub fn holds(node: &Node, dev: &str, addr: &str) -> bool {
    node.sh(&format!("ip -o addr show dev {dev}"))
        .map(|s| s.split_whitespace().any(|w| w.split('/').next() == Some(addr)))
        .unwrap_or(false)
}

/// keepalived as a lab peer: writes `conf` and runs `keepalived -n -l -D -P`.
pub fn start_keepalived(
    lab: &mut Lab,
    node: &Node,
    scratch: &Scratch,
    name: &str,
    conf: &str,
) -> Result<u32> {
    let path = scratch.dir.join(format!("{name}.keepalived.conf"));
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("keepalived");
    cmd.args(["-n", "-l", "-D", "-P", "-f"]).arg(&path);
    cmd.arg("-p").arg(scratch.dir.join(format!("{name}.pid")));
    cmd.arg("-r").arg(scratch.dir.join(format!("{name}.vrrp.pid")));
    lab.spawn_logged(node, &mut cmd, &scratch.dir.join(format!("{name}.log")))
        .context("starting keepalived (apt-get install keepalived)")
}

/// Waits up to `timeout` for `f`; fails with `what` otherwise.
pub fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    crate::wait_for(timeout, Duration::from_millis(20), || f().then_some(()))
        .with_context(|| format!("timed out after {timeout:?} waiting for: {what}"))
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
