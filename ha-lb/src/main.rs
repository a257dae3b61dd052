use clap::Parser;

/// ha-lb: highly available L4 load balancer (VRRP + XDP, with a kernel IPVS fallback).
#[derive(Parser, Debug)]
#[command(name = "ha-lb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = "/etc/ha-lb/ha-lb.toml")]
        config: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config } => anyhow::bail!("not implemented yet: run -c {}", config.display()),
    }
}
