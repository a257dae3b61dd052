//! Network-namespace labs.
//!
//! A [`Lab`] owns a set of namespaces named `hlb-<pid>-<seq>-<node>`; dropping it (also while
//! unwinding from a panic) kills every process inside them and deletes them, which removes
//! their veths and bridges too. [`sweep`] removes namespaces of processes that no longer
//! exist (a crashed or killed run), and only those with the `hlb-` prefix.
//!
//! Safety rules the API enforces by construction: veth pairs are created directly inside lab
//! namespaces (`ip -n A link add … peer … netns B`), so the root namespace never holds a lab
//! interface, and nothing here ever adds a default route or an address outside a lab node.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace a lab creates.
pub const PREFIX: &str = "hlb-";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces torn down together.
pub struct Lab {
    tag: String,
    nodes: Vec<Node>,
    children: Vec<Child>,
}

/// One network namespace of a lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The short name the test uses ("client", "d1", …).
    pub name: String,
    /// The namespace's real name (`hlb-<pid>-<seq>-<name>`).
    pub ns: String,
}

impl Lab {
    /// A new, empty lab. Removes leftovers of crashed runs first.
    pub fn new() -> Result<Lab> {
        let _ = sweep();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        Ok(Lab {
            tag: format!("{PREFIX}{}-{seq}", std::process::id()),
            nodes: Vec::new(),
            children: Vec::new(),
        })
    }

    /// Creates a namespace for `name`, with `lo` up.
    pub fn node(&mut self, name: &str) -> Result<Node> {
        let node = Node { name: name.to_string(), ns: format!("{}-{name}", self.tag) };
        ip(&["netns", "add", &node.ns])?;
        // Record before anything else can fail, so Drop removes it.
        self.nodes.push(node.clone());
        node.ip(&["link", "set", "lo", "up"])?;
        Ok(node)
    }

    /// The node called `name`.
    pub fn get(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no lab node {name}"))
    }

    /// A veth pair `a:a_if` <-> `b:b_if`, both ends up. Created inside the namespaces.
    pub fn veth(&self, a: &Node, a_if: &str, b: &Node, b_if: &str) -> Result<()> {
        a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.ns])?;
        a.ip(&["link", "set", a_if, "up"])?;
        b.ip(&["link", "set", b_if, "up"])?;
        Ok(())
    }

    /// A bridge `br` in `node` with `ports` (interfaces already in `node`) enslaved.
    pub fn bridge(&self, node: &Node, br: &str, ports: &[&str]) -> Result<()> {
        node.ip(&["link", "add", br, "type", "bridge"])?;
        // No STP delays: ports forward at once.
        node.ip(&["link", "set", br, "type", "bridge", "forward_delay", "0", "stp_state", "0"])?;
        node.ip(&["link", "set", br, "up"])?;
        for p in ports {
            node.ip(&["link", "set", p, "master", br])?;
            node.ip(&["link", "set", p, "up"])?;
        }
        Ok(())
    }

    /// Spawns `cmd` inside `node`; it is killed when the lab is dropped (or earlier with
    /// [`Lab::kill`]). Returns its pid.
    pub fn spawn(&mut self, node: &Node, cmd: &mut Command) -> Result<u32> {
        let child = node.spawn(cmd)?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Like [`Lab::spawn`], with stdout and stderr appended to `log` (so a failing test can
    /// show what a daemon said).
    pub fn spawn_logged(&mut self, node: &Node, cmd: &mut Command, log: &Path) -> Result<u32> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = node.spawn_stdio(cmd, Stdio::from(f.try_clone()?), Stdio::from(f))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Sends SIGKILL to a process started with [`Lab::spawn`] and reaps it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` to a spawned process without reaping it.
    pub fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        // SAFETY: plain kill(2).
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for a spawned process to exit; returns its status.
    pub fn wait(&mut self, pid: u32, timeout: Duration) -> Result<std::process::ExitStatus> {
        let i = self.children.iter().position(|c| c.id() == pid).context("unknown pid")?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.children[i].try_wait()?.is_some() {
                // Already reaped by try_wait; wait() returns the saved status at once.
                return Ok(self.children.remove(i).wait()?);
            }
            if Instant::now() > deadline {
                bail!("process {pid} still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in self.nodes.iter().rev() {
            remove_namespace(&n.ns);
        }
    }
}

impl Node {
    /// Runs `ip` inside this namespace (`ip -n NS …`).
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", &self.ns];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds `cidr` (e.g. `198.18.0.1/24`) to `dev`. IPv6 addresses skip DAD so they are
    /// usable at once.
    pub fn addr(&self, dev: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])
        }
    }

    /// Adds a route (`ip route add ARGS`). Lab code never routes outside the lab.
    pub fn route(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["route", "add"];
        full.extend_from_slice(args);
        self.ip(&full)
    }

    /// Sets a sysctl inside this namespace, e.g. `net.ipv4.ip_forward=1`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.run(move || {
            std::fs::write(&path, &value).with_context(|| format!("sysctl {path}={value}"))
        })?
    }

    /// A `Command` that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Runs `program args…` in the namespace and returns its output; fails on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.ns))?;
        if !out.status.success() {
            bail!(
                "{program} {} in {} failed: {}{}",
                args.join(" "),
                self.ns,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// `exec`, returning stdout as a string.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.exec("sh", &["-c", script])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Spawns a process in this namespace. Prefer [`Lab::spawn`], which also kills it.
    /// `cmd` must not already name a namespace; its program and args are wrapped in
    /// `ip netns exec`.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        self.spawn_stdio(cmd, Stdio::inherit(), Stdio::inherit())
    }

    /// [`Node::spawn`] with the given stdout and stderr.
    pub fn spawn_stdio(&self, cmd: &mut Command, stdout: Stdio, stderr: Stdio) -> Result<Child> {
        let mut wrapped = Command::new("ip");
        wrapped.args(["netns", "exec", &self.ns]).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            wrapped.current_dir(d);
        }
        wrapped.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        wrapped.spawn().with_context(|| format!("spawning {:?} in {}", cmd.get_program(), self.ns))
    }

    /// Runs `f` on a thread whose network namespace is this node's, and returns its result.
    /// Sockets created inside stay in this namespace for their whole life, so a test can
    /// create them here and use them from anywhere.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                enter(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("closure panicked in namespace {}", self.ns))?
        })
    }

    /// The interface index of `dev` inside this namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let path = format!("/sys/class/net/{dev}/ifindex");
        // /sys shows the namespace of the process that mounted it, so ask inside.
        let s =
            self.sh(&format!("cat {path} 2>/dev/null || ip -o link show {dev} | cut -d: -f1"))?;
        s.trim().parse().with_context(|| format!("ifindex of {dev} in {}: {s:?}", self.ns))
    }

    /// The MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> Result<[u8; 6]> {
        let s = self.sh(&format!("ip -o link show {dev}"))?;
        let mac = s
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .with_context(|| format!("no MAC on {dev}: {s}"))?;
        parse_mac(mac)
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {s}");
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16)?;
    }
    Ok(out)
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd affects only this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn remove_namespace(ns: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) of a process inside our own lab namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    // A namespace with a process still exiting can refuse deletion briefly: retry, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
        && Path::new(&format!("/run/netns/{ns}")).exists()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes `hlb-<pid>-…` namespaces whose creating process is gone. Returns how many.
pub fn sweep() -> Result<usize> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return Ok(0) };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_namespace(&name);
        n += 1;
    }
    Ok(n)
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}
