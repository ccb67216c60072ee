//! `flowgate`: the command a person uses. It never touches the datapath directly: it speaks the agent's
//! socket protocol, or manages the lab (network namespaces that stand in for a node's pods).

use clap::{Parser, Subcommand};
use flowgate_cli::{client, conntrack, demo, endpoint, identity, lab, monitor, policy, status, verdicts};

#[derive(Parser)]
#[command(name = "flowgate", version, about = "eBPF NetworkPolicy enforcer and flow monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, inspect and tear down a lab node of namespace pods.
    Lab(lab::LabArgs),
    /// The main job on a lab: the NetworkPolicy walkthrough, its policies, live traffic and the monitor.
    Demo(demo::DemoArgs),
    /// The agent's state: version, uptime, events buffer, counters, clients.
    Status(status::StatusArgs),
    /// The endpoints (pods) the agent enforces for.
    Endpoint(endpoint::EndpointArgs),
    /// The security identities the agent derived from labels.
    Identity(identity::IdentityArgs),
    /// The policy realized in the datapath, per endpoint.
    Policy(policy::PolicyArgs),
    /// The connections the datapath tracks (`conntrack list`).
    Conntrack(conntrack::ConntrackArgs),
    /// Verdicts, drops and traces, live: a TUI on a terminal, text or Hubble-shaped JSON lines otherwise.
    Monitor(monitor::MonitorArgs),
    /// The agent's verdict log: `verdicts export` reads it without the agent.
    Verdicts(verdicts::VerdictsArgs),
}

fn main() -> anyhow::Result<()> {
    // The lab's pod servers run as a child of whichever binary brought the lab up.
    flowgate_lab::server::run_if_requested();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Lab(args) => lab::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Status(args) => client::exit_on_error(status::run(&args)),
        Command::Endpoint(args) => client::exit_on_error(endpoint::run(&args)),
        Command::Identity(args) => client::exit_on_error(identity::run(&args)),
        Command::Policy(args) => client::exit_on_error(policy::run(&args)),
        Command::Conntrack(args) => client::exit_on_error(conntrack::run(&args)),
        Command::Verdicts(args) => verdicts::run(args),
        Command::Monitor(args) => client::exit_on_error(monitor::run(&args)),
    }
}
