//! Finding (and on Debian, installing) what the eBPF build and the tests need.
//!
//! Two ways to build `bpfel-unknown-none` with `-Z build-std=core` are accepted:
//! - Debian's own compiler and library source (`rustc-web` + `rust-web-src`, rustc 1.96 with
//!   source under /usr/lib/rustlib/src), driven with `RUSTC_BOOTSTRAP=1`: the verified recipe
//!   on Debian 12, where the rustup stable toolchain has no rust-src and cannot fetch one;
//! - the usual upstream setup: a rustup nightly toolchain with the `rust-src` component.
//!
//! Either way `bpf-linker` must be on PATH (or in ~/.cargo/bin).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{display_cmd, is_root, run};

/// Debian packages of the compiler that builds the eBPF crate (compiler + library source):
/// not needed with an upstream nightly.
const APT_RUST: &[&str] = &["rustc-web", "rust-web-src"];
/// Debian packages bpf-linker is built against (LLVM 22): needed to install it, whichever
/// compiler builds the eBPF crate.
const APT_LLVM: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
/// Where Debian's llvm-22 packages put LLVM, and bpf-linker's feature for it.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// Debian packages the tests and the demo use inside namespace labs, and (user-mode-linux,
/// ipvsadm) in the UML guest that tests the IPVS data plane against a real kernel IPVS.
const APT_RUNTIME: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "nftables",
    "keepalived",
    "tcpdump",
    "curl",
    "user-mode-linux",
    "ipvsadm",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CORE_SRC: &str = "/usr/lib/rustlib/src/rust/library/core/Cargo.toml";

pub enum EbpfToolchain {
    /// Debian's rustc with RUSTC_BOOTSTRAP=1.
    Debian { rustc: PathBuf },
    /// `cargo +nightly`.
    Nightly,
}

impl EbpfToolchain {
    pub fn describe(&self) -> String {
        match self {
            EbpfToolchain::Debian { rustc } => {
                format!(
                    "Debian rustc {} with RUSTC_BOOTSTRAP=1",
                    version(rustc).unwrap_or_default()
                )
            }
            EbpfToolchain::Nightly => "rustup nightly with rust-src".into(),
        }
    }

    pub fn cargo_command(&self) -> Command {
        let mut cmd = Command::new("cargo");
        match self {
            EbpfToolchain::Debian { rustc } => {
                cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1").env_remove("RUSTUP_TOOLCHAIN");
            }
            EbpfToolchain::Nightly => {
                cmd.env_remove("RUSTC").env("RUSTUP_TOOLCHAIN", "nightly");
            }
        }
        cmd.env("PATH", path_with_cargo_bin());
        cmd
    }
}

fn version(rustc: &Path) -> Option<String> {
    let out = Command::new(rustc).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cargo_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"))
}

fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(b) = cargo_bin() {
        if !paths.contains(&b) {
            paths.push(b);
        }
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn find_in_path(exe: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_with_cargo_bin()).map(|d| d.join(exe)).find(|p| p.is_file())
}

fn debian_rustc() -> Option<PathBuf> {
    (Path::new(DEBIAN_RUSTC).is_file() && Path::new(DEBIAN_CORE_SRC).is_file())
        .then(|| PathBuf::from(DEBIAN_RUSTC))
}

fn nightly_with_src() -> bool {
    let Ok(out) =
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file()
}

/// The toolchain to build the eBPF crate with, or an error naming what to install.
pub fn ebpf_toolchain() -> Result<EbpfToolchain> {
    let tc = if let Some(rustc) = debian_rustc() {
        EbpfToolchain::Debian { rustc }
    } else if nightly_with_src() {
        EbpfToolchain::Nightly
    } else {
        bail!(
            "no Rust toolchain that can build core for bpfel-unknown-none was found.\n\
             Install one of:\n  \
             - on Debian 12: `sudo apt-get install rustc-web rust-web-src` (or run `{} setup`)\n  \
             - elsewhere: `rustup toolchain install nightly --component rust-src`",
            crate::SUDO_XTASK
        );
    };
    if find_in_path("bpf-linker").is_none() {
        bail!(
            "bpf-linker is not installed. On Debian 12 run `{} setup`; elsewhere install LLVM 22 \
             (development files) and run `cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features {BPF_LINKER_LLVM_FEATURE}` with \
             LLVM_SYS_221_PREFIX set to its prefix.",
            crate::SUDO_XTASK
        );
    }
    Ok(tc)
}

pub fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs those of `pkgs` that are missing with apt (root only), saying so as `who`.
pub fn apt_install(who: &str, pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("{who}: installing apt packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The LLVM bpf-linker is built against: `LLVM_SYS_221_PREFIX` when set, else Debian's
/// llvm-22 (after its packages are installed).
fn llvm_prefix() -> PathBuf {
    std::env::var_os("LLVM_SYS_221_PREFIX").map(PathBuf::from).unwrap_or_else(|| LLVM_PREFIX.into())
}

/// The apt packages `setup` wants: the Debian compiler unless an upstream nightly builds the
/// eBPF crate, LLVM 22 whenever bpf-linker must be built, and what the tests run.
fn wanted_packages(upstream: bool, linker_missing: bool) -> Vec<&'static str> {
    let mut want = Vec::new();
    if !upstream {
        want.extend(APT_RUST);
    }
    if linker_missing {
        want.extend(APT_LLVM);
    }
    want.extend(APT_RUNTIME);
    want
}

pub fn setup(_root: &Path, check_only: bool) -> Result<()> {
    let have_apt = Path::new("/usr/bin/apt-get").is_file();
    let upstream = debian_rustc().is_none() && nightly_with_src();
    let linker_missing = find_in_path("bpf-linker").is_none();
    let want = if have_apt { wanted_packages(upstream, linker_missing) } else { Vec::new() };
    let missing: Vec<&str> = want.iter().copied().filter(|p| !dpkg_installed(p)).collect();

    if !have_apt && debian_rustc().is_none() && !upstream {
        // Not Debian and no upstream setup: say exactly what is needed.
        ebpf_toolchain()?;
    }
    if missing.is_empty() && !linker_missing {
        println!("setup: everything needed is installed");
        return Ok(());
    }
    let mut msg = String::from("setup: missing:");
    if !missing.is_empty() {
        msg.push_str(&format!("\n  apt packages: {}", missing.join(" ")));
    }
    if linker_missing {
        msg.push_str(&format!(
            "\n  bpf-linker {BPF_LINKER_VERSION} (cargo install, built against LLVM 22{})",
            if have_apt {
                ""
            } else {
                ": install LLVM 22 with its development files and set LLVM_SYS_221_PREFIX"
            }
        ));
    }
    if check_only {
        // A check that finds something missing fails, so scripts and CI can rely on it.
        bail!("{msg}\nRun `{} setup` to install them.", crate::SUDO_XTASK);
    }
    if have_apt && !is_root() {
        bail!("{msg}\nRun `{} setup` to install them.", crate::SUDO_XTASK);
    }
    apt_install("setup", &missing)?;
    if linker_missing {
        let llvm = llvm_prefix();
        if !llvm.join("bin/llvm-config").is_file() {
            bail!(
                "bpf-linker {BPF_LINKER_VERSION} is built against LLVM 22, which is not at {} \
                 (no llvm-config there): install LLVM 22 with its development files \
                 (Debian/Ubuntu: llvm-22-dev libpolly-22-dev from apt.llvm.org) and set \
                 LLVM_SYS_221_PREFIX to its prefix",
                llvm.display()
            );
        }
        let path =
            format!("{}:{}", llvm.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let mut cmd = Command::new("cargo");
        // Always the LLVM 22 feature: the default one (a newer LLVM) is not packaged on
        // Debian 12, and llvm-sys then fails with an obscure error.
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", BPF_LINKER_LLVM_FEATURE])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", &llvm);
        println!("setup: installing bpf-linker ({})", display_cmd(&cmd));
        run(&mut cmd).context("installing bpf-linker")?;
    }
    println!("setup: done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLVM 22 is wanted whenever bpf-linker has to be built, also with an upstream nightly
    /// (it was dropped then, and bpf-linker's default LLVM feature failed to build).
    #[test]
    fn llvm_is_wanted_whenever_bpf_linker_is_missing() {
        let w = wanted_packages(true, true);
        assert!(w.contains(&"llvm-22-dev") && w.contains(&"libpolly-22-dev"), "{w:?}");
        assert!(!w.contains(&"rustc-web"), "{w:?}");
        let w = wanted_packages(false, false);
        assert!(w.contains(&"rustc-web") && !w.contains(&"llvm-22-dev"), "{w:?}");
        assert!(w.contains(&"keepalived"));
    }
}
