//! What the two kinds of guest — [`crate::uml`] (user-mode Linux) and [`crate::qemu`] (QEMU
//! without KVM) — have in common: both boot Debian's 6.1 kernel with the host's `/` as a
//! read-only root and one fresh, writable shared directory, run one program there and power
//! off. The guest leaves the program's output in `guest.out`, its exit code in `guest.rc` and
//! the kernel's console in `console.log`; [`GuestRun`] is what the host reads back.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// What a guest run left behind.
#[derive(Clone, Debug)]
pub struct GuestRun {
    /// The program's exit status; `None` if it never finished (crash, timeout).
    pub exit_code: Option<i32>,
    /// The program's stdout and stderr.
    pub output: String,
    /// The guest kernel's console.
    pub console: String,
    /// Boot to power-off, as the host saw it.
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl GuestRun {
    /// The output and the console's last lines, for assertion messages.
    pub fn report(&self) -> String {
        let tail: Vec<&str> = self.console.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "guest exit {:?} after {:.1?}{}\n--- guest output ---\n{}\n--- console (last lines) ---\n{}",
            self.exit_code,
            self.elapsed,
            if self.timed_out { " (TIMED OUT, killed)" } else { "" },
            self.output,
            tail.join("\n")
        )
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A run's shared directory, `<tmp>/hlb-<kind>-<pid>-<n>`: made fresh (anything a crashed
/// earlier process of the same pid left there is removed first) and removed when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(kind: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "hlb-{kind}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `script` to `init.sh` in the directory, executable; returns its path.
    pub(crate) fn write_init(&self, script: &str) -> Result<PathBuf> {
        let init = self.0.join("init.sh");
        fs::write(&init, script)?;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
        Ok(init)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The lines of a guest's last init script that run its one program, here so that the
/// guests and [`supervise`] agree on where the results land: in the shared directory `dir`,
/// `lo` up (its messages start `guest.out`), then `program args…` with the `env` assignments
/// (values shell-quoted here), its output appended to `guest.out` and its exit code written to
/// `guest.rc`, then `sync` (no newline after it). The caller's script powers off next.
pub(crate) fn program_lines(
    dir: &Path,
    env: &[(&str, &str)],
    program: &Path,
    args: &[&str],
) -> String {
    let d = sh_quote(&dir.to_string_lossy());
    let mut cmd = String::new();
    for (name, value) in env {
        cmd.push_str(&format!("{name}={} ", sh_quote(value)));
    }
    cmd.push_str(&sh_quote(&program.to_string_lossy()));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&sh_quote(a));
    }
    format!(
        "cd {d}\n\
         ip link set lo up > {d}/guest.out 2>&1\n\
         {cmd} >> {d}/guest.out 2>&1\n\
         echo $? > {d}/guest.rc\n\
         sync"
    )
}

/// Runs a guest's host process `cmd` (started in its own process group) to its end or until
/// `timeout`, when the whole group is killed; calls `tick` every `poll` and once at the end.
/// Then reads what the guest left in `dir`: `guest.rc`, `guest.out`, `console.log`.
pub(crate) fn supervise(
    cmd: &mut Command,
    what: &Path,
    dir: &Path,
    timeout: Duration,
    poll: Duration,
    mut tick: impl FnMut(),
) -> Result<GuestRun> {
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {}", what.display()))?;
    let pgid = child.id() as i32;
    let mut timed_out = false;
    loop {
        tick();
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            // SAFETY: signals the process group the caller created for the guest, nothing else.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            break;
        }
        std::thread::sleep(poll);
    }
    let elapsed = start.elapsed();
    // Helpers the guest's process forked may outlive it briefly on an abnormal exit.
    // SAFETY: as above; ESRCH when the group is already gone.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    tick();
    let read = |n: &str| fs::read_to_string(dir.join(n)).unwrap_or_default();
    Ok(GuestRun {
        exit_code: read("guest.rc").trim().parse().ok(),
        output: read("guest.out"),
        console: read("console.log"),
        elapsed,
        timed_out,
    })
}

/// Module files (relative to the tree) to load for `names`, dependencies first, each once.
pub fn module_order(tree: &Path, names: &[&str]) -> Result<Vec<String>> {
    let dep = fs::read_to_string(tree.join("modules.dep"))
        .with_context(|| format!("{}/modules.dep", tree.display()))?;
    let deps: Vec<(&str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d.split_whitespace().collect()))
        .collect();
    let norm = |s: &str| s.replace('-', "_");
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let (path, d) = deps
            .iter()
            .find(|(m, _)| {
                let base = m.rsplit('/').next().unwrap_or(m);
                base.strip_suffix(".ko").is_some_and(|b| norm(b) == norm(name))
            })
            .with_context(|| format!("module {name} not in {}", tree.display()))?;
        // modules.dep lists a module's dependencies so that the last one loads first.
        for m in d.iter().rev().chain(std::iter::once(path)) {
            if !out.iter().any(|o| o == m) {
                out.push(m.to_string());
            }
        }
    }
    Ok(out)
}

pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_puts_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("hlb-guest-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("modules.dep"),
            "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n\
             kernel/net/9p/9pnet.ko:\nkernel/fs/netfs/netfs.ko:\n\
             kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko\n",
        )
        .unwrap();
        let o = module_order(&dir, &["9p", "9pnet_virtio"]).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            o,
            [
                "kernel/fs/netfs/netfs.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/fs/9p/9p.ko",
                "kernel/net/9p/9pnet_virtio.ko"
            ]
        );
    }
}
