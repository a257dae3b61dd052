//! Project tasks: `cargo xtask setup | build-ebpf | test | demo | bench | sweep`.
//! (`bench-ipvs-guest` is hidden: the guest half of `bench ipvs`.)

mod bench;
mod demo;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ha-lb project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need and is missing (apt packages, bpf-linker).
    /// Idempotent and quick when everything is present.
    Setup {
        /// Only report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build the eBPF object that `ha-lb` embeds (target/ebpf/ha-lb-ebpf.o).
    BuildEbpf {
        /// Accepted for symmetry with cargo; the eBPF object is always optimised
        /// (the verifier needs it).
        #[arg(long)]
        release: bool,
    },
    /// The test command: setup, eBPF object, build, clippy, fmt check, then every unit,
    /// packet (BPF_PROG_TEST_RUN) and privileged namespace-lab test.
    Test {
        /// Skip `cargo clippy` and `cargo fmt --check`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Side-by-side measurements against peers (see README).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// The demo (README command one): sets up what is missing, builds, and runs two ha-lb
    /// directors, three real servers and a client in a namespace lab, narrated.
    Demo {
        /// The directors' data plane: xdp (as in conf/two-node-*.toml) or tc (the same
        /// forwarding code at the TC ingress hook).
        #[arg(long, default_value = "xdp", value_parser = ["xdp", "tc"])]
        dataplane: String,
        /// Keep the lab running at the end (with both directors) to try it by hand; Enter
        /// tears it down.
        #[arg(long)]
        keep: bool,
    },
    /// Remove network namespaces left behind by crashed ha-lb labs (only `hlb-*` ones whose
    /// creating process is gone).
    Sweep,
    /// The guest half of `bench ipvs` (run by the QEMU guest that command boots).
    #[command(name = "bench-ipvs-guest", hide = true)]
    BenchIpvsGuest {
        #[arg(long)]
        rounds: usize,
        #[arg(long)]
        udp_secs: u64,
        #[arg(long)]
        tcp_secs: u64,
        #[arg(long, value_delimiter = ',')]
        variants: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        #[arg(long)]
        object: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// VIP outage when the master dies: keepalived pair vs ha-lb pair, same lab and timers.
    Failover {
        /// Runs per peer and setting (interleaved).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only these peers (keepalived, ha-lb).
        #[arg(long, value_delimiter = ',', default_value = "keepalived,ha-lb")]
        peers: Vec<String>,
    },
    /// Director CPU per packet and per request: ha-lb (NAT, DR; XDP and TC hooks) vs
    /// nftables, HAProxy, the routed path, no director, and empty XDP/TC programs; small UDP
    /// (xdp_frames and skbs), HTTP keep-alive / new connections (wrk), iperf3. Needs root and
    /// 2+ CPUs.
    Dataplane {
        /// 3 rounds and shorter runs instead of 5.
        #[arg(long)]
        quick: bool,
        /// Rounds (default 5, or 3 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only these variants (ha-lb-nat, ha-lb-dr, ha-lb-nat-tc, ha-lb-dr-tc, direct, routed,
        /// nftables, haproxy, xdp-drop, xdp-redirect, xdp-rewrite, tc-redirect).
        #[arg(long, value_delimiter = ',')]
        variants: Option<Vec<String>>,
        /// Only these measurements (udp-frames, udp-skbs, tcp-keepalive, tcp-newconn, iperf).
        #[arg(long, value_delimiter = ',')]
        metrics: Option<Vec<String>>,
        /// Real servers behind the UDP service (default: all 2; 1 sends every frame out of
        /// one device, like the empty redirect program).
        #[arg(long, default_value_t = 2)]
        udp_real_servers: usize,
        /// NIC-like receive coalescing on the director's veths, microseconds (veth has none:
        /// without it a lightly loaded director pays a NAPI wake-up per packet). Every variant
        /// runs with it alike. Default 0: none.
        #[arg(long, default_value_t = 0)]
        coalesce_us: u32,
        /// How the director's CPU idles: `default` (as the machine is set up) or `poll` (its
        /// halting idle states disabled for the bench, as on a latency-tuned director; in a
        /// VM each wake-up from halt is a trip through the hypervisor). Every variant alike.
        #[arg(long, default_value = "default")]
        director_idle: String,
    },
    /// ha-lb NAT (XDP and TC hooks) vs kernel IPVS NAT vs the routed path, side by side, on Debian 12's 6.1
    /// kernel in a QEMU guest without KVM (TCG: absolute figures are distorted, read the
    /// ratios): director CPU per small UDP packet (socket skbs) and per HTTP keep-alive
    /// request. Needs root; installs qemu-system-x86 and fetches the kernel package if missing.
    Ipvs {
        /// Interleaved rounds (at least 3).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds of one UDP run.
        #[arg(long, default_value_t = 3)]
        udp_secs: u64,
        /// Seconds of one HTTP run's measured window.
        #[arg(long, default_value_t = 5)]
        tcp_secs: u64,
        /// Only these variants (ha-lb-nat, ha-lb-nat-tc, ipvs-nat, routed).
        #[arg(long, value_delimiter = ',')]
        variants: Option<Vec<String>>,
        /// Only these measurements (udp-skbs, tcp-keepalive).
        #[arg(long, value_delimiter = ',')]
        metrics: Option<Vec<String>>,
        /// Kill the guest after this many seconds (default: from the rounds and run lengths).
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
}

/// How to run a privileged xtask command as a rustup user: `sudo` alone resets PATH (Debian's
/// secure_path drops ~/.cargo/bin, even with -E) and, without -E, HOME. As root, drop the
/// `sudo -E env "PATH=$PATH"`.
pub const SUDO_XTASK: &str = r#"sudo -E env "PATH=$PATH" cargo xtask"#;

/// Fails at once, before any build, when `what` cannot run for want of root.
fn require_root(what: &str, sub: &str) -> Result<()> {
    if !is_root() {
        bail!("{what}: root is needed; run `{SUDO_XTASK} {sub}`");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup { check } => toolchain::setup(&root, check),
        Cmd::BuildEbpf { release: _ } => build_ebpf(&root).map(|_| ()),
        Cmd::Test { no_lint, args } => test(&root, no_lint, &args),
        Cmd::Bench { what: BenchCmd::Failover { runs, peers } } => {
            require_root("the failover bench (namespace labs)", "bench failover")?;
            if runs == 0 {
                bail!("--runs: at least 1");
            }
            let peers = peers
                .iter()
                .map(|p| match p.as_str() {
                    "keepalived" => Ok(bench::failover::Peer::Keepalived),
                    "ha-lb" => Ok(bench::failover::Peer::HaLb),
                    other => bail!("unknown peer {other} (keepalived, ha-lb)"),
                })
                .collect::<Result<Vec<_>>>()?;
            if peers.contains(&bench::failover::Peer::HaLb) {
                build_ebpf(&root)?;
                build_release_ha_lb(&root)?;
            }
            let settings = [
                bench::failover::Setting { version: 3, advert_cs: 100 },
                bench::failover::Setting { version: 3, advert_cs: 10 },
            ];
            bench::failover::run(runs, &peers, &settings)
        }
        Cmd::Bench {
            what:
                BenchCmd::Dataplane {
                    quick,
                    rounds,
                    variants,
                    metrics,
                    udp_real_servers,
                    coalesce_us,
                    director_idle,
                },
        } => {
            use bench::dataplane::{DirectorIdle, Metric, Options, Variant};
            // Arguments and root first: not after minutes of building.
            let variants = parse_or_all(variants, Variant::parse, &Variant::ALL)?;
            let metrics = parse_or_all(metrics, Metric::parse, &Metric::ALL)?;
            if !(1..=ha_lb_lab::benchtopo::REAL_SERVERS).contains(&udp_real_servers) {
                bail!(
                    "--udp-real-servers: 1 to {} (the bench topology's real servers)",
                    ha_lb_lab::benchtopo::REAL_SERVERS
                );
            }
            let director_idle = DirectorIdle::parse(&director_idle)?;
            if coalesce_us > 10_000 {
                bail!("--coalesce-us: at most 10000 (10 ms)");
            }
            if rounds == Some(0) {
                bail!("--rounds: at least 1");
            }
            require_root("the data-plane bench (namespace labs, XDP)", "bench dataplane")?;
            let object = build_ebpf(&root)?;
            sweep()?;
            bench::dataplane::run(Options {
                quick,
                rounds,
                variants,
                metrics,
                object,
                udp_real_servers,
                coalesce_us,
                director_idle,
            })
        }
        Cmd::Bench {
            what: BenchCmd::Ipvs { rounds, udp_secs, tcp_secs, variants, metrics, timeout_secs },
        } => {
            if rounds < 3 {
                bail!("--rounds: at least 3 (min/median/max need them)");
            }
            // Arguments and root first: not after minutes of building.
            ipvs_options(rounds, udp_secs, tcp_secs, variants.clone(), metrics.clone(), "".into())?;
            require_root("the IPVS bench (QEMU guest, namespace labs)", "bench ipvs")?;
            let object = build_ebpf(&root)?;
            let opts = ipvs_options(rounds, udp_secs, tcp_secs, variants, metrics, object)?;
            sweep()?;
            let target = release_dir(&root).parent().unwrap().to_path_buf();
            bench::ipvs::run(&target, opts, timeout_secs.map(std::time::Duration::from_secs))
        }
        Cmd::BenchIpvsGuest { rounds, udp_secs, tcp_secs, variants, metrics, object } => {
            let opts =
                ipvs_options(rounds, udp_secs, tcp_secs, Some(variants), Some(metrics), object)?;
            bench::ipvs::guest(opts)
        }
        Cmd::Demo { dataplane, keep } => {
            require_root("the demo (a namespace lab, eBPF programs)", "demo")?;
            toolchain::setup(&root, false)?;
            build_ebpf(&root)?;
            build_release_ha_lb(&root)?;
            std::env::set_var("HLB_BIN_HLB_REALSERVER", release_dir(&root).join("hlb-realserver"));
            sweep()?;
            demo::run(&root, &dataplane, keep)
        }
        Cmd::Sweep => {
            let n = sweep()?;
            println!("sweep: removed {n} leftover namespace(s)");
            Ok(())
        }
    }
}

fn ipvs_options(
    rounds: usize,
    udp_secs: u64,
    tcp_secs: u64,
    variants: Option<Vec<String>>,
    metrics: Option<Vec<String>>,
    object: PathBuf,
) -> Result<bench::ipvs::Options> {
    use bench::ipvs::{Metric, Options, Variant};
    let variants = parse_or_all(variants, Variant::parse, &Variant::ALL)?;
    let metrics = parse_or_all(metrics, Metric::parse, &Metric::ALL)?;
    Ok(Options {
        rounds,
        udp: std::time::Duration::from_secs(udp_secs.max(1)),
        tcp: std::time::Duration::from_secs(tcp_secs.max(1)),
        variants,
        metrics,
        object,
    })
}

/// What `names` (from the command line) parse to with `parse`, or all of `all` without them.
fn parse_or_all<T: Copy>(
    names: Option<Vec<String>>,
    parse: fn(&str) -> Result<T>,
    all: &[T],
) -> Result<Vec<T>> {
    match names {
        Some(v) => v.iter().map(|s| parse(s)).collect(),
        None => Ok(all.to_vec()),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Where `cargo build --release` puts binaries (honours CARGO_TARGET_DIR).
fn release_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_relative() { root.join(d) } else { d })
        .unwrap_or_else(|| root.join("target"))
        .join("release")
}

/// Builds ha-lb and the lab's binaries in release mode, and has the lab run that ha-lb.
fn build_release_ha_lb(root: &Path) -> Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "-p", "ha-lb", "-p", "ha-lb-lab"]))?;
    std::env::set_var("HLB_BIN_HA_LB", release_dir(root).join("ha-lb"));
    Ok(())
}

/// Where `ha-lb`'s build script looks for the object.
pub fn ebpf_object_path(root: &Path) -> PathBuf {
    root.join("target/ebpf/ha-lb-ebpf.o")
}

fn build_ebpf(root: &Path) -> Result<PathBuf> {
    let tc = toolchain::ebpf_toolchain()?;
    let build_dir = root.join("target/ebpf-build");
    let mut cmd = tc.cargo_command();
    cmd.current_dir(root.join("ha-lb-ebpf"))
        .args(["build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&build_dir)
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback");
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    println!("build-ebpf: {} ({})", tc.describe(), display_cmd(&cmd));
    run(&mut cmd).context("building the eBPF programs")?;
    let built = build_dir.join("bpfel-unknown-none/release/ha-lb-ebpf");
    let dest = ebpf_object_path(root);
    std::fs::create_dir_all(dest.parent().unwrap())?;
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Copy only when changed, so ha-lb is not rebuilt for nothing.
    if std::fs::read(&dest).ok().as_deref() != Some(&new[..]) {
        std::fs::write(&dest, &new)?;
    }
    println!("build-ebpf: {} ({} bytes)", dest.display(), new.len());
    Ok(dest)
}

fn test(root: &Path, no_lint: bool, extra: &[String]) -> Result<()> {
    // Before setup and the eBPF build, which take minutes.
    require_root(
        "the privileged tests (XDP attach, raw VRRP sockets, network namespaces)",
        "test",
    )?;
    toolchain::setup(root, false)?;
    build_ebpf(root)?;
    let n = sweep()?;
    if n > 0 {
        println!("test: removed {n} namespace(s) left behind by an earlier, interrupted run");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(root).args(["build", "--workspace", "--all-targets"]))?;
    if !no_lint {
        run(Command::new(&cargo).current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        run(Command::new(&cargo).current_dir(root).args(["fmt", "--all", "--", "--check"]))
            .context("`cargo fmt --all` would change files")?;
    }
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root).args(["test", "--workspace", "--no-fail-fast"]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    run(&mut cmd)?;
    let n = sweep()?;
    if n > 0 {
        bail!("tests left {n} network namespace(s) behind (removed now): a lab guard is missing");
    }
    Ok(())
}

/// Removes `hlb-<pid>-…` namespaces whose creating process no longer exists: the lab's own
/// sweeper (with its bounded retry for a namespace whose last process is still exiting).
fn sweep() -> Result<usize> {
    ha_lb_lab::netns::sweep()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn display_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {}", display_cmd(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display_cmd(cmd));
    }
    Ok(())
}
