//! `flowgate`: the command a person uses. It never touches the datapath directly: it speaks the agent's
//! socket protocol, or manages the lab (network namespaces that stand in for a node's pods).

use clap::{CommandFactory as _, Parser, Subcommand};
use flowgate_cli::{
    client, completion, conntrack, demo, endpoint, identity, lab, manual, monitor, policy, status, verdicts,
};

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
    /// Shell completion: `source <(flowgate completion bash)`, or see `make install`.
    Completion(completion::CompletionArgs),
    /// Manual pages of every subcommand, in roff (`make install` runs it).
    #[command(hide = true)]
    Man(manual::ManArgs),
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
        Command::Completion(args) => completion::run(&args, Cli::command()),
        Command::Man(args) => manual::run(&args, Cli::command()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every visible subcommand at any depth, as its page is named: `flowgate-lab-up`.
    fn page_names(command: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
        let name =
            if prefix.is_empty() { command.get_name().to_owned() } else { format!("{prefix}-{}", command.get_name()) };
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            page_names(sub, &name, out);
        }
        out.insert(name);
    }

    #[test]
    fn every_subcommand_has_a_roff_page_with_its_flags() {
        let dir = std::env::temp_dir().join(format!("flowgate-man-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pages = manual::write_pages(Cli::command(), &dir).unwrap();
        let written: BTreeSet<String> =
            pages.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
        let mut expected = BTreeSet::new();
        page_names(&Cli::command(), "", &mut expected);
        assert_eq!(written, expected, "one page per subcommand");
        for name in ["flowgate", "flowgate-monitor", "flowgate-lab-up", "flowgate-completion", "flowgate-endpoint-get"]
        {
            assert!(written.contains(name), "{name}: {written:?}");
        }
        for page in &pages {
            let roff = std::fs::read_to_string(page).unwrap();
            let name = page.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(roff.contains(&format!(".TH {name} 1")), "{name}: title line");
            assert!(roff.contains(".SH NAME") && roff.contains(".SH SYNOPSIS"), "{name}: sections");
        }
        let monitor = std::fs::read_to_string(dir.join("flowgate-monitor.1")).unwrap();
        assert!(monitor.contains("related\\-to") && monitor.contains("NAMESPACE/POD"), "flags documented:\n{monitor}");
        assert!(!written.contains("flowgate-man"), "the hidden generator has no page");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        for (shell, marker) in [
            (completion::Shell::Bash, "complete -F _flowgate"),
            (completion::Shell::Zsh, "#compdef flowgate"),
            (completion::Shell::Fish, "complete -c flowgate"),
        ] {
            let mut out = Vec::new();
            completion::write(shell, Cli::command(), &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains(marker), "{shell:?}: {marker}");
            for sub in ["monitor", "endpoint", "demo", "completion"] {
                assert!(script.contains(sub), "{shell:?} completes {sub}");
            }
        }
    }
}
