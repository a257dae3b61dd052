//! User-mode Linux guests, for tests that need a kernel feature the host kernel lacks (kernel
//! IPVS for the `ipvs` data plane): Debian's `user-mode-linux` package ships a UML kernel
//! (`/usr/bin/linux.uml`) and its modules (`/usr/lib/uml/modules/<release>/`).
//!
//! [`Uml::run`] boots a guest whose root is the host's `/` through hostfs, **read-only**, runs
//! one program as the guest's only job and powers off. Hermetic by construction:
//! - the only writable host path is a fresh directory made for the run (mounted read-write
//!   over itself in the guest), where the program's output and exit code land;
//! - the guest has no network device at all (no `eth=` argument), only `lo`, which the init
//!   script brings up: nothing it does can reach the host's or any other network;
//! - the whole run is bounded by a timeout; a guest that overruns is killed (its process group:
//!   UML runs as a handful of host processes).
//!
//! The program runs as the guest's root, with `HLB_UML_GUEST` set to the shared directory
//! ([`in_guest`]) and `TMPDIR` pointing there too. [`load_modules`] loads kernel modules in
//! the guest from the UML module tree (no kmod needed). A typical test binary re-runs itself
//! in the guest: `uml.run(&current_exe, &["--exact", "my_test", "--nocapture"])`, and the same
//! test function does the guest's part when [`in_guest`] says so.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub use crate::guest::GuestRun;
use crate::guest::{module_order, program_lines, sh_quote, supervise, Scratch};

/// The UML kernel the Debian package installs.
pub const KERNEL: &str = "/usr/bin/linux.uml";
/// Where that package keeps the UML kernel's modules, one directory per release.
pub const MODULES: &str = "/usr/lib/uml/modules";
/// Set in the guest program's environment: the shared directory.
pub const GUEST_ENV: &str = "HLB_UML_GUEST";
/// Set in the guest program's environment: the guest kernel's module directory.
pub const MODULES_ENV: &str = "HLB_UML_MODULES";

/// A UML kernel and how to boot it.
#[derive(Clone, Debug)]
pub struct Uml {
    pub kernel: PathBuf,
    /// `<MODULES>/<release>` for this kernel.
    pub modules: PathBuf,
    /// Guest memory (`mem=`).
    pub mem: String,
    /// Bound on the whole run, boot to power-off.
    pub timeout: Duration,
}

impl Uml {
    /// The installed UML kernel (Debian `user-mode-linux`), with its module tree.
    pub fn find() -> Result<Uml> {
        let kernel = PathBuf::from(KERNEL);
        if !kernel.exists() {
            bail!(
                "{KERNEL} not found: install Debian's user-mode-linux package \
                 (`sudo -E env \"PATH=$PATH\" cargo xtask setup` does)"
            );
        }
        let mut releases: Vec<PathBuf> = fs::read_dir(MODULES)
            .with_context(|| format!("{MODULES}: the UML kernel's modules"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("modules.dep").exists())
            .collect();
        releases.sort();
        let Some(modules) = releases.pop() else {
            bail!("no UML module tree with a modules.dep under {MODULES}");
        };
        Ok(Uml { kernel, modules, mem: "256M".into(), timeout: Duration::from_secs(60) })
    }

    /// The usual guest half of a test: runs this test binary's test `test_name` in the guest
    /// and checks it ran to the end — no timeout, exit code 0, and a `{prefix}: {step}: ok`
    /// line for every step. Panics with the guest's report otherwise; returns the run.
    pub fn run_test_steps(&self, test_name: &str, prefix: &str, steps: &[&str]) -> GuestRun {
        let exe = std::env::current_exe().expect("the test binary");
        let run = self
            .run(&exe, &["--exact", test_name, "--nocapture", "--test-threads=1"])
            .expect("boot the UML guest");
        println!("{}", run.report());
        assert!(!run.timed_out, "guest timed out\n{}", run.report());
        assert_eq!(run.exit_code, Some(0), "guest failed\n{}", run.report());
        for s in steps {
            assert!(
                run.output.contains(&format!("{prefix}: {s}: ok")),
                "step {s} did not run\n{}",
                run.report()
            );
        }
        run
    }

    /// Boots a guest that runs `program args…` (a host path, seen read-only), waits for it to
    /// power off (or kills it at the timeout) and returns what it left.
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<GuestRun> {
        let scratch = Scratch::new("uml")?;
        let dir = scratch.path();
        fs::create_dir_all(dir.join("uml")).with_context(|| format!("{}", dir.display()))?;
        let init = scratch.write_init(&init_script(dir, &self.modules, program, args))?;
        let console = fs::File::create(dir.join("console.log"))?;

        let mut cmd = Command::new(&self.kernel);
        cmd.arg(format!("mem={}", self.mem))
            .args(["root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro"])
            .arg(format!("init={}", init.display()))
            // Console 0 writes to our log; no other consoles or serial lines.
            .args(["con=null", "con0=null,fd:1", "ssl=null"])
            .arg(format!("uml_dir={}", dir.join("uml").display()))
            .arg(format!("umid=hlb-{}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .current_dir(dir)
            // Its own process group, so a timeout can end every UML process.
            .process_group(0);
        supervise(&mut cmd, &self.kernel, dir, self.timeout, Duration::from_millis(50), || {})
    }
}

/// The guest's PID 1: pseudo file systems, the shared directory writable, `lo` up, the
/// program, its exit code, power off (also if anything before failed).
fn init_script(dir: &Path, modules: &Path, program: &Path, args: &[&str]) -> String {
    let d = dir.to_string_lossy();
    let env = [(GUEST_ENV, &*d), (MODULES_ENV, &modules.to_string_lossy()), ("TMPDIR", &d)];
    format!(
        r#"#!/bin/sh
# ha-lb UML guest init (generated by ha-lb-lab's uml module).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The host's / is read-only here; only the run's own directory is writable.
mount -t hostfs -o {d} hostfs {d}
{run}
poweroff -f
"#,
        d = sh_quote(&d),
        run = program_lines(dir, &env, program, args),
    )
}

/// Reports step `step` of `steps` done, in the line [`Uml::run_test_steps`] looks for
/// (`{prefix}: {step}: ok`); a step not in `steps` is a mistake of the test.
pub fn step_ok(prefix: &str, steps: &[&str], step: &str) {
    assert!(steps.contains(&step), "unknown step {step}");
    println!("{prefix}: {step}: ok");
}

/// Both halves of a stepped guest test: in the guest, runs `guest`; on the host, boots a
/// guest with `mem` that runs this test (`test_name`) within `timeout` and checks that every
/// step of `steps` reported ok under `prefix` ([`Uml::run_test_steps`], [`step_ok`]).
pub fn host_or_guest(
    test_name: &str,
    prefix: &str,
    steps: &[&str],
    mem: &str,
    timeout: Duration,
    guest: impl FnOnce(),
) {
    if in_guest().is_some() {
        guest();
        return;
    }
    let mut uml = Uml::find().expect("a UML kernel");
    uml.mem = mem.into();
    uml.timeout = timeout;
    uml.run_test_steps(test_name, prefix, steps);
}

/// Inside a guest started by [`Uml::run`]: the shared directory. `None` on the host.
pub fn in_guest() -> Option<PathBuf> {
    std::env::var_os(GUEST_ENV).map(PathBuf::from)
}

/// Loads kernel modules (by name, `ip_vs_rr` or `ip_vs-rr`) with their dependencies, in the
/// order `modules.dep` gives, from the guest kernel's module tree. Already loaded modules are
/// fine. Guest only: refuses to run where [`in_guest`] is `None`.
pub fn load_modules(names: &[&str]) -> Result<()> {
    if in_guest().is_none() {
        bail!("load_modules is for UML guests only");
    }
    let dir = std::env::var_os(MODULES_ENV).map(PathBuf::from).context(MODULES_ENV)?;
    // One name at a time: each loads (dependencies first) before the next is looked up.
    for name in names {
        for m in module_order(&dir, &[name])? {
            insmod(&dir.join(m))?;
        }
    }
    Ok(())
}

fn insmod(path: &Path) -> Result<()> {
    let file = fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let params = CString::new("").expect("no NUL");
    use std::os::fd::AsRawFd;
    // SAFETY: finit_module reads the module from a valid open descriptor; `params` is a valid
    // C string that outlives the call.
    let r = unsafe {
        libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0 as libc::c_int)
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            bail!("loading {}: {e}", String::from_utf8_lossy(path.as_os_str().as_bytes()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_quotes_and_powers_off() {
        let s = init_script(
            Path::new("/tmp/hlb uml"),
            Path::new("/usr/lib/uml/modules/6.1"),
            Path::new("/x/it's"),
            &["--exact", "a b"],
        );
        assert!(s.contains("mount -t hostfs -o '/tmp/hlb uml' hostfs '/tmp/hlb uml'"));
        assert!(s.contains(r"'/x/it'\''s' '--exact' 'a b'"));
        assert!(s.trim_end().ends_with("poweroff -f"));
        assert!(!s.contains("eth"), "no network in the guest");
    }
}
