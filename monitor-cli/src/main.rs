//! `flowgate`: the command a person uses. It never touches the datapath directly: it speaks the agent's
//! socket protocol, or manages the lab (network namespaces that stand in for a node's pods).

use clap::{Parser, Subcommand};
use flowgate_cli::{client_cmd, cmd, export, monitor};

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
    /// The main job on a lab: the NetworkPolicy walkthrough, its policies, live traffic and the monitor.
    Demo(cmd::demo::DemoArgs),
    /// The agent's state: version, uptime, events buffer, counters, clients.
    Status(client_cmd::status::StatusArgs),
    /// The endpoints (pods) the agent enforces for.
    Endpoint(client_cmd::endpoint::EndpointArgs),
    /// The security identities the agent derived from labels.
    Identity(client_cmd::identity::IdentityArgs),
    /// The policy realized in the datapath, per endpoint.
    Policy(client_cmd::policy::PolicyArgs),
    /// Verdicts, drops and traces, live: a TUI on a terminal, text or Hubble-shaped JSON lines otherwise.
    Monitor(monitor::MonitorArgs),
    /// The agent's verdict log: `verdicts export` reads it without the agent.
    Verdicts(export::VerdictsArgs),
}

fn main() -> anyhow::Result<()> {
    // The lab's pod servers run as a child of whichever binary brought the lab up.
    flowgate_lab::server::run_if_requested();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Lab(args) => cmd::lab::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Status(args) => client_cmd::exit_on_error(client_cmd::status::run(&args)),
        Command::Endpoint(args) => client_cmd::exit_on_error(client_cmd::endpoint::run(&args)),
        Command::Identity(args) => client_cmd::exit_on_error(client_cmd::identity::run(&args)),
        Command::Policy(args) => client_cmd::exit_on_error(client_cmd::policy::run(&args)),
        Command::Verdicts(args) => export::run(args),
        Command::Monitor(args) => client_cmd::exit_on_error(monitor::run(&args)),
    }
}
