//! QEMU guests without KVM (TCG), for measurements that need a kernel the host does not run
//! *and* a BPF JIT: kernel IPVS side by side with ha-lb's XDP programs on Debian 12's 6.1
//! kernel (a stock `linux-image-6.1.*-amd64`). UML ([`crate::uml`]) boots the same release but
//! has no BPF JIT, so XDP programs would run interpreted there; under TCG the guest kernel
//! JIT-compiles BPF to x86 code like on hardware, and QEMU translates that code like every other
//! guest instruction, IPVS's included.
//!
//! [`Qemu::run`] boots a guest whose root is the host's `/` through 9p, **read-only**, runs one
//! program as the guest's only job and powers off. Hermetic by construction, like the UML
//! guests:
//! - the only writable host path is a fresh directory made for the run (a second 9p share,
//!   mounted at the same path in the guest), where the program's output and exit code land;
//! - the guest has no network device at all (`-nodefaults -nic none`; its only devices are the
//!   two 9p shares and the serial console, which goes to a file): nothing it does can reach
//!   the host's or any other network — it builds its own namespace labs on veths;
//! - the whole run is bounded by a timeout; a guest that overruns is killed (QEMU runs in its
//!   own process group).
//!
//! Boot: a small initramfs made here (the host's static busybox, the virtio/9p modules of the
//! guest kernel) loads the 9p stack, mounts the shares, tmpfs on `/run` and `/tmp`, and
//! switches root to the host's `/`. Then the program runs as the guest's root with
//! [`GUEST_ENV`] set to the shared directory and `TMPDIR` pointing there too; [`modprobe`]
//! loads modules of the guest kernel.

use std::{
    fs,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub use crate::guest::{module_order, GuestRun};
use crate::guest::{program_lines, sh_quote, supervise, Scratch};

/// Set in the guest program's environment: the shared directory.
pub const GUEST_ENV: &str = "HLB_QEMU_GUEST";
/// Set in the guest program's environment: the guest kernel's module tree
/// (`<base>/lib/modules/<release>`, a host path).
pub const MODULES_ENV: &str = "HLB_QEMU_MODULES";
/// The modules the initramfs loads to mount 9p shares (with their dependencies).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";
/// 9p message size: large reads of binaries over the share.
const MSIZE: u32 = 512 * 1024;

/// A guest kernel and how to boot it.
#[derive(Clone, Debug)]
pub struct Qemu {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// The guest kernel image (`vmlinuz-<release>`).
    pub kernel: PathBuf,
    /// Its module tree, `…/lib/modules/<release>`, with a `modules.dep`.
    pub modules: PathBuf,
    /// A statically linked busybox for the initramfs.
    pub busybox: PathBuf,
    pub cpus: usize,
    pub mem_mb: u32,
    /// Bound on the whole run, QEMU start to power-off.
    pub timeout: Duration,
    /// Copy the program's output to stdout while it runs.
    pub echo: bool,
}

impl Qemu {
    /// A guest of `kernel` (with the module tree `modules`): the installed
    /// `qemu-system-x86_64`, 2 vCPUs, 2 GiB, 10 minutes.
    pub fn new(kernel: &Path, modules: &Path) -> Result<Qemu> {
        let qemu = PathBuf::from("/usr/bin/qemu-system-x86_64");
        if !qemu.exists() {
            bail!("{} not found: install Debian's qemu-system-x86", qemu.display());
        }
        if !Path::new(BUSYBOX).exists() {
            bail!("{BUSYBOX} not found: install Debian's busybox-static");
        }
        if !modules.join("modules.dep").exists() {
            bail!("{}: no modules.dep (run depmod)", modules.display());
        }
        Ok(Qemu {
            qemu,
            kernel: kernel.to_path_buf(),
            modules: modules.to_path_buf(),
            busybox: BUSYBOX.into(),
            cpus: 2,
            mem_mb: 2048,
            timeout: Duration::from_secs(600),
            echo: false,
        })
    }

    /// The kernel release (the module tree's directory name).
    pub fn release(&self) -> String {
        self.modules.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Boots a guest that runs `program args…` (a host path, seen read-only), waits for it to
    /// power off (or kills it at the timeout) and returns what it left.
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<GuestRun> {
        let scratch = Scratch::new("qemu")?;
        let dir = scratch.path();
        let initrd = dir.join("initrd.cpio");
        fs::write(&initrd, self.initramfs(dir)?)?;
        scratch.write_init(&stage2_script(dir, &self.modules, program, args))?;
        let out_path = dir.join("guest.out");
        fs::write(&out_path, "")?;

        let mut cmd = self.command(dir, &initrd);
        let mut echoed = 0u64;
        let echo = self.echo;
        supervise(&mut cmd, &self.qemu, dir, self.timeout, Duration::from_millis(200), || {
            if echo {
                echoed = echo_new(&out_path, echoed);
            }
        })
    }

    fn command(&self, dir: &Path, initrd: &Path) -> Command {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(["-nodefaults", "-no-user-config", "-machine", "q35"])
            // Multi-threaded TCG: one host thread per vCPU.
            .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-smp", &self.cpus.to_string(), "-m", &self.mem_mb.to_string()])
            // No display, no monitor, no network device: the serial console goes to a file.
            .args(["-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(initrd)
            // TSC: TCG's vCPUs read one host clock; without this the kernel finds them
            // "unsynchronized" and falls back to HPET, whose every read is an emulated MMIO.
            .args(["-append", "console=ttyS0 panic=-1 loglevel=4 tsc=reliable"])
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hlbroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=hlbscratch,security_model=none,multidevs=remap",
                dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::File::create(dir.join("qemu.err")).map(Stdio::from).unwrap_or(Stdio::null()),
            )
            .current_dir(dir)
            .process_group(0);
        cmd
    }

    /// The initramfs (newc cpio, uncompressed): busybox, the 9p stack's modules in load
    /// order, and the stage-1 init.
    fn initramfs(&self, dir: &Path) -> Result<Vec<u8>> {
        let mut c = Cpio::default();
        for d in ["bin", "dev", "proc", "sys", "newroot", "mods"] {
            c.dir(d);
        }
        c.file("bin/busybox", 0o755, &fs::read(&self.busybox)?);
        let mods = module_order(&self.modules, BOOT_MODULES)?;
        for (i, m) in mods.iter().enumerate() {
            let name = m.rsplit('/').next().unwrap_or(m);
            let data = fs::read(self.modules.join(m)).with_context(|| format!("module {m}"))?;
            c.file(&format!("mods/{i:02}-{name}"), 0o644, &data);
        }
        c.file("init", 0o755, stage1_script(dir).as_bytes());
        Ok(c.finish())
    }
}

/// Appends what `path` gained past `from` to stdout; returns the new offset.
fn echo_new(path: &Path, from: u64) -> u64 {
    let Ok(mut f) = fs::File::open(path) else { return from };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return from;
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    // Only whole lines, so output from two writers does not interleave mid-line.
    let upto = buf.iter().rposition(|&b| b == b'\n').map(|p| p + 1).unwrap_or(0);
    if upto > 0 {
        let mut so = std::io::stdout().lock();
        let _ = so.write_all(&buf[..upto]);
        let _ = so.flush();
    }
    from + upto as u64
}

/// Stage 1 (busybox, in the initramfs): the 9p stack, the shares, pseudo file systems, then `switch_root` to the host's `/` and stage 2. Powers off on any
/// failure, so a broken boot ends at once instead of at the timeout.
fn stage1_script(dir: &Path) -> String {
    let d = sh_quote(&dir.to_string_lossy());
    format!(
        r#"#!/bin/busybox sh
# ha-lb QEMU guest, stage 1 (generated by ha-lb-lab's qemu module).
B=/bin/busybox
fail() {{ echo "hlb-qemu stage 1: $*"; $B sync; $B poweroff -f; }}
$B mount -t devtmpfs dev /dev
for m in /mods/*.ko; do $B insmod "$m" || fail "insmod $m"; done
R=/newroot
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize={MSIZE} hlbroot $R || fail "9p root"
$B mount -t proc proc $R/proc || fail proc
$B mount -t sysfs sysfs $R/sys || fail sysfs
$B mount -t devtmpfs dev $R/dev || fail dev
$B mount -t tmpfs -o mode=0755 run $R/run || fail run
$B mount -t tmpfs -o mode=1777 tmp $R/tmp || fail tmp
$B mkdir -p $R{d} 2>/dev/null
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize={MSIZE} hlbscratch $R{d} || fail "9p scratch"
exec $B switch_root $R /bin/sh {d}/init.sh
fail "switch_root"
"#
    )
}

/// Stage 2 (the host's `/bin/sh`): `lo` up, the program, its exit code, power off.
fn stage2_script(dir: &Path, modules: &Path, program: &Path, args: &[&str]) -> String {
    let d = dir.to_string_lossy();
    let env = [
        (GUEST_ENV, &*d),
        (MODULES_ENV, &modules.to_string_lossy()),
        ("TMPDIR", &d),
        ("HOME", &d),
        ("RUST_BACKTRACE", "1"),
    ];
    format!(
        r#"#!/bin/sh
# ha-lb QEMU guest, stage 2 (generated by ha-lb-lab's qemu module).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
{run}
poweroff -f || /bin/busybox poweroff -f
"#,
        run = program_lines(dir, &env, program, args),
    )
}

/// Inside a guest started by [`Qemu::run`]: the shared directory. `None` on the host.
pub fn in_guest() -> Option<PathBuf> {
    std::env::var_os(GUEST_ENV).map(PathBuf::from)
}

/// Loads kernel modules (with their dependencies) in the guest from the guest kernel's module
/// tree, with `modprobe -d` (the host's `/lib/modules` has no tree for the guest's release and
/// is read-only here, so the kernel's own module requests find nothing: load what is needed
/// up front). Guest only: refuses to run where [`in_guest`] is `None`.
pub fn modprobe(names: &[&str]) -> Result<()> {
    if in_guest().is_none() {
        bail!("qemu::modprobe is for QEMU guests only");
    }
    let tree = std::env::var_os(MODULES_ENV).map(PathBuf::from).context(MODULES_ENV)?;
    // modprobe -d BASE looks in BASE/lib/modules/<running release>.
    let base = tree
        .ancestors()
        .nth(3)
        .with_context(|| format!("{}: not <base>/lib/modules/<release>", tree.display()))?;
    for n in names {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(base)
            .arg(n)
            .output()
            .context("running modprobe")?;
        if !out.status.success() {
            bail!("modprobe {n}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(())
}

/// A newc cpio archive (what the kernel unpacks as an initramfs).
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_is_newc_and_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let b = c.finish();
        assert!(b.starts_with(b"070701"));
        assert_eq!(b.len() % 4, 0);
        assert!(b.windows(10).any(|w| w == b"TRAILER!!!"));
        // The second header follows the 110-byte header and "bin\0", padded to 4.
        let second = 116;
        assert_eq!(&b[second..second + 6], b"070701");
    }

    #[test]
    fn scripts_have_no_network_and_power_off() {
        let s1 = stage1_script(Path::new("/tmp/hlb q"));
        assert!(s1.contains("hlbscratch $R'/tmp/hlb q'"), "{s1}");
        let s2 = stage2_script(
            Path::new("/tmp/d"),
            Path::new("/k/lib/modules/6.1"),
            Path::new("/x/it's"),
            &["a b"],
        );
        assert!(s2.contains("HLB_QEMU_MODULES='/k/lib/modules/6.1'"), "{s2}");
        assert!(s2.contains(r"'/x/it'\''s' 'a b'"));
        assert!(s2.trim_end().ends_with("poweroff -f"));
        assert!(!s2.contains("eth"), "no network in the guest");
    }
}
