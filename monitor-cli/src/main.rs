//! `flowgate`: the command a person uses. It never touches the datapath directly: it speaks the agent's
//! socket protocol, or manages the lab (network namespaces that stand in for a node's pods).

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "flowgate", version, about = "eBPF NetworkPolicy enforcer and flow monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, inspect and tear down a lab node of namespace pods.
    Lab(cmd::lab::LabArgs),
}

fn main() -> anyhow::Result<()> {
    // The lab's pod servers run as a child of whichever binary brought the lab up.
    flowgate_lab::server::run_if_requested();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Lab(args) => cmd::lab::run(args),
    }
}
