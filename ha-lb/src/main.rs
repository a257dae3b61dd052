use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use ha_lb::{
    config,
    control::{self, Request, Response},
    status,
};

const DEFAULT_CONFIG: &str = "/etc/ha-lb/ha-lb.toml";

/// ha-lb: a highly available L4 load balancer — VRRP election (keepalived-compatible) and
/// XDP forwarding to real servers, with kernel IPVS as the fallback.
#[derive(Parser, Debug)]
#[command(name = "ha-lb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground, logging to stderr.
    ///
    /// SIGHUP reloads the file: a valid one is applied as a difference (no VIP flap, no
    /// connection loss); an invalid one is rejected with its errors and the running
    /// configuration stays. SIGTERM/SIGINT stop gracefully: masters hand their VIPs over
    /// (priority-0 advert, VIPs kept until a backup has taken over), then XDP programs are
    /// detached. A second signal removes the VIPs at once. SIGUSR1 / SIGUSR2 (keepalived's
    /// data and stats dumps) write the status, as `status` / `status --json` print it, to
    /// `ha-lb.data` / `ha-lb.stats` beside the control socket (/run/ha-lb/). Needs root, or
    /// CAP_NET_ADMIN, CAP_NET_RAW (and CAP_BPF for dataplane xdp/tc). Does not fork; no pid
    /// file.
    Run {
        /// Configuration file: ha-lb TOML (`*.toml`, or starting with a `[table]`) or
        /// keepalived.conf.
        /// `-f`/`--use-file` as keepalived spells it.
        #[arg(short, long, visible_short_alias = 'f', visible_alias = "use-file", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log filter (tracing's env-filter syntax), e.g. `info` or `ha_lb=debug`.
        /// RUST_LOG overrides it.
        #[arg(long, default_value = "info")]
        log: String,
    },
    /// Check a configuration file, like `keepalived -t`: prints every error as
    /// `file:line:col: message`; exit status 0 when valid, 1 when not. A file whose name
    /// does not end in `.toml` is read as keepalived.conf unless its first line (blank lines
    /// and comments aside) is a `[table]` header (as by `run` and `reload`).
    Check {
        /// The configuration file (TOML when named `*.toml` or starting with a `[table]`).
        /// `-f`/`--use-file` as keepalived spells it.
        #[arg(short, long, visible_short_alias = 'f', visible_alias = "use-file", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Files to check instead of `--config` (e.g. `ha-lb check conf/*.toml`); the exit
        /// status is 1 if any is invalid. Not together with `--config`.
        #[arg(conflicts_with = "config")]
        files: Vec<PathBuf>,
        /// Also check it against this host, as `run` and `reload` do: every interface it
        /// names (instances, VIP devices, track_interface, lvs_sync_daemon) must exist and no
        /// real server of an eBPF data plane may be this host. Also, unlike `run` and a
        /// reload (which disable a tracked script that cannot be run, as keepalived does, and
        /// list it in `ha-lb status`), every script (track scripts, notify hooks, MISC_CHECK)
        /// must be runnable by its user, who must exist.
        #[arg(long)]
        host: bool,
    },
    /// Print the equivalent ha-lb TOML of a keepalived.conf (or any configuration file
    /// `ha-lb check` accepts) to stdout, every resolved value written out. The file is
    /// validated first: with errors, they are printed as by `check` and nothing else.
    Convert {
        /// keepalived.conf or ha-lb TOML (named `*.toml` or starting with a `[table]`).
        file: PathBuf,
        /// keepalived.conf: leave out keywords for features ha-lb lacks that do not decide
        /// VIPs, health or forwarding (e-mail alerts, SNMP/D-Bus, notify FIFOs, vrrp_strict,
        /// vrrp_skip_check_adv_addr), listing each on stderr with what is lost, instead of
        /// refusing them. keepalived's stock sample has several.
        #[arg(long)]
        drop_unsupported: bool,
    },
    /// Show VRRP instances, virtual servers and real servers of the running daemon (over its
    /// root-only control socket), like `ipvsadm -Ln --stats`.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        daemon: DaemonSocket,
    },
    /// Remove what a daemon that died without stopping (kill -9, a crash, the OOM killer)
    /// left behind that would hurt: with `dataplane = "xdp"` and virtual servers, its VIPs
    /// (from the ledger beside its control socket) — its forwarding program went with it, so
    /// they would draw traffic only for the kernel to reset while a backup takes over. With
    /// `tc` or `ipvs` the forwarding outlives the process (as keepalived's IPVS does) and with
    /// `none` the VIPs serve local services: they stay until the daemon is back (`--all`
    /// removes them anyway). `ha-lb run` does the same at its start. For the systemd unit's
    /// `ExecStopPost=` (`conf/ha-lb.service`); refused while a daemon runs in this network
    /// namespace. Exit status 0 when nothing is left to remove.
    Cleanup {
        /// The configuration file the daemon ran with (its data plane and control socket).
        #[arg(short, long, visible_short_alias = 'f', visible_alias = "use-file", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Remove the VIPs whatever the data plane (also when the file cannot be read: its
        /// `control_socket` alone is used then).
        #[arg(long)]
        all: bool,
    },
    /// Ask the running daemon to reload its configuration (same as SIGHUP), and report
    /// whether it was applied or rejected. Exit status 0: applied; 1: rejected (the running
    /// configuration stays) or the daemon could not be asked; 2: applied, but tracked scripts
    /// that cannot be run were disabled, as keepalived does (listed on stderr; `check --host`
    /// refuses such a file); 3: applied in part: the new configuration is in force, but part
    /// of it failed (said on stderr; what failed is retried where it can be).
    Reload {
        #[command(flatten)]
        daemon: DaemonSocket,
    },
}

/// Where the running daemon answers: `--socket`, else the `control_socket` of `--config`
/// (read on its own, so a file with errors elsewhere still leads to the daemon), else the
/// default socket.
#[derive(clap::Args, Debug)]
struct DaemonSocket {
    /// Control socket of the daemon.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The daemon's configuration file: its `control_socket` is used (the file is not
    /// otherwise checked; without the key, the default socket).
    #[arg(short, long, conflicts_with = "socket")]
    config: Option<PathBuf>,
}

impl DaemonSocket {
    fn path(&self) -> Result<PathBuf, ExitCode> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        match &self.config {
            None => Ok(PathBuf::from(config::DEFAULT_CONTROL_SOCKET)),
            Some(f) => control::socket_of_config(f).map_err(|e| {
                eprintln!("ha-lb: reading {}: {e}", f.display());
                ExitCode::FAILURE
            }),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config, log } => {
            // Before anything else: otherwise the first error is an unrelated one.
            if let Some(e) = ha_lb::privileges::check_run(false) {
                eprintln!("ha-lb: {e}");
                return ExitCode::FAILURE;
            }
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log));
            // Colour only on a terminal: not in a file or the journal.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .init();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ha-lb: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(ha_lb::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ha-lb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Cleanup { config, all } => cleanup(&config, all),
        Cmd::Check { config, files, host } => {
            let files = if files.is_empty() { vec![config] } else { files };
            let mut status = ExitCode::SUCCESS;
            for config in files {
                let loaded = if host {
                    ha_lb::daemon::load_here(&config)
                } else {
                    config::load_with(&config, None)
                };
                match loaded {
                    Ok(config::Loaded { config: c, warnings }) => {
                        for w in &warnings {
                            eprintln!("{w} (warning)");
                        }
                        println!(
                            "{}: valid ({} vrrp_instance, {}{})",
                            config.display(),
                            c.vrrp_instances.len(),
                            services_count(&c),
                            match warnings.len() {
                                0 => String::new(),
                                n => format!(", {n} warning(s)"),
                            }
                        )
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        status = ExitCode::FAILURE;
                    }
                }
            }
            status
        }
        Cmd::Convert { file, drop_unsupported } => match convert_load(&file, drop_unsupported) {
            Ok(c) => {
                println!(
                    "# ha-lb configuration converted from {} by `ha-lb convert`.",
                    file.display()
                );
                println!(
                    "# Values a check inherits (from its real or virtual server) are left to inheritance;\n\
                     # see conf/README.md for each key and its default.\n"
                );
                print!("{}", config::to_toml::to_toml(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Status { json, daemon } => {
            let socket = match daemon.path() {
                Ok(p) => p,
                Err(code) => return code,
            };
            match control::request(&socket, &Request::Status, Duration::from_secs(5)) {
                Ok(Response::Status(s)) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                    } else {
                        print!("{}", status::render(&s));
                    }
                    ExitCode::SUCCESS
                }
                Ok(Response::Error { message }) => {
                    eprintln!("ha-lb: {message}");
                    ExitCode::FAILURE
                }
                other => request_failed(other),
            }
        }
        Cmd::Reload { daemon } => {
            let socket = match daemon.path() {
                Ok(p) => p,
                Err(code) => return code,
            };
            match control::request(&socket, &Request::Reload, Duration::from_secs(30)) {
                Ok(Response::Reloaded { disabled }) if disabled.is_empty() => {
                    println!("reloaded");
                    ExitCode::SUCCESS
                }
                // Applied, but not all of it runs: say so, and not with success.
                Ok(Response::Reloaded { disabled }) => {
                    print_disabled(&disabled);
                    ExitCode::from(2)
                }
                // In force, but not whole: neither success nor "rejected".
                Ok(Response::ReloadedInPart { message, disabled }) => {
                    eprintln!("ha-lb: {message}");
                    print_disabled(&disabled);
                    ExitCode::from(3)
                }
                Ok(Response::Error { message }) => {
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
                other => request_failed(other),
            }
        }
    }
}

/// Lists on stderr the tracked scripts a reload disabled, under one heading.
/// `ha-lb cleanup`.
fn cleanup(file: &std::path::Path, all: bool) -> ExitCode {
    // Proves that no daemon runs here (held until we are done).
    let _namespace = match control::claim_namespace() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ha-lb cleanup: {e:#}; nothing removed");
            return ExitCode::FAILURE;
        }
    };
    let (socket, remove) = match config::load(file) {
        Ok(c) => {
            let forwards = c.global.dataplane == config::Dataplane::Xdp
                && !c.virtual_servers.is_empty()
                && !c.vrrp_instances.is_empty();
            if !forwards && !all {
                println!(
                    "ha-lb cleanup: dataplane {:?}{}: VIPs left in place (they serve until the daemon is back; --all removes them)",
                    c.global.dataplane.as_str(),
                    if c.global.dataplane == config::Dataplane::Xdp { " without virtual servers" } else { "" },
                );
            }
            (c.global.control_socket.clone(), forwards || all)
        }
        Err(e) if all => {
            eprintln!("{e}");
            match control::socket_of_config(file) {
                Ok(s) => (s, true),
                Err(e) => {
                    eprintln!("ha-lb cleanup: reading {}: {e}; nothing removed", file.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "ha-lb cleanup: {} has errors: its data plane is unknown; nothing removed (--all removes the VIPs anyway)",
                file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    // A socket file nobody answers on is the dead daemon's.
    if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_err() {
        let _ = std::fs::remove_file(&socket);
    }
    if !remove {
        return ExitCode::SUCCESS;
    }
    let ledger = ha_lb::vrrp::vip::vip_ledger_path(&socket);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ha-lb cleanup: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(ha_lb::vrrp::vip::remove_ledgered_vips(&ledger)) {
        Ok(removed) if removed.is_empty() => {
            println!("ha-lb cleanup: no VIP left behind ({})", ledger.display());
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            for v in &removed {
                println!("ha-lb cleanup: removed VIP {v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ha-lb cleanup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_disabled(disabled: &[String]) {
    if disabled.is_empty() {
        return;
    }
    eprintln!("reloaded, with scripts that cannot be run disabled:");
    for m in disabled {
        eprintln!("{m}");
    }
}

/// Reports a control request that failed, or an answer its command does not expect.
fn request_failed(r: anyhow::Result<Response>) -> ExitCode {
    match r {
        Ok(other) => eprintln!("ha-lb: unexpected answer: {other:?}"),
        Err(e) => eprintln!("ha-lb: {e:#}"),
    }
    ExitCode::FAILURE
}

/// The configuration `convert` writes out; with `drop_unsupported` (keepalived.conf only),
/// what was left out goes to stderr.
fn convert_load(file: &std::path::Path, drop_unsupported: bool) -> Result<config::Config, String> {
    let warn = |l: config::Loaded| {
        for w in &l.warnings {
            eprintln!("{w} (warning)");
        }
        l.config
    };
    if !drop_unsupported {
        return config::load_with(file, None).map(warn).map_err(|e| e.to_string());
    }
    if config::is_toml(file) {
        return Err(format!(
            "{}: --drop-unsupported is for keepalived.conf files; a TOML file has nothing to drop",
            file.display()
        ));
    }
    let (loaded, dropped) =
        config::keepalived::load_dropping_unsupported(file).map_err(|e| e.to_string())?;
    let c = warn(loaded);
    for d in &dropped {
        eprintln!("{d}");
    }
    if !dropped.is_empty() {
        eprintln!(
            "{} keepalived keyword(s) left out; the output has everything else",
            dropped.len()
        );
    }
    Ok(c)
}

/// The virtual servers as written, and the services they make when groups expand them:
/// `2 virtual_server`, or `2 virtual_server (5 services)`.
fn services_count(c: &config::Config) -> String {
    let leads = c.check_leads();
    let written = c.virtual_servers.iter().filter(|v| leads.contains(&v.key())).count();
    match c.virtual_servers.len() {
        n if n == written => format!("{n} virtual_server"),
        n => format!("{written} virtual_server ({n} services)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_both_config_and_files() {
        assert!(Cli::try_parse_from(["ha-lb", "check", "-c", "a.toml", "b.toml"]).is_err());
        assert!(Cli::try_parse_from(["ha-lb", "check", "a.toml", "b.toml"]).is_ok());
        assert!(Cli::try_parse_from(["ha-lb", "check", "-c", "a.toml"]).is_ok());
    }

    #[test]
    fn keepalived_spellings_of_the_config_file() {
        for args in [["ha-lb", "run", "-f", "k.conf"], ["ha-lb", "run", "--use-file", "k.conf"]] {
            match Cli::try_parse_from(args).unwrap().cmd {
                Cmd::Run { config, .. } => assert_eq!(config, PathBuf::from("k.conf")),
                other => panic!("{other:?}"),
            }
        }
        match Cli::try_parse_from(["ha-lb", "check", "-f", "k.conf"]).unwrap().cmd {
            Cmd::Check { config, .. } => assert_eq!(config, PathBuf::from("k.conf")),
            other => panic!("{other:?}"),
        }
    }
}
