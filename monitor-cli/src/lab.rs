//! `flowgate lab`: bring a lab node of namespace pods up and down, list and show labs, probe connectivity
//! between their pods, and run a command inside a pod.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use flowgate_lab::{
    LabState, PodRef, PortArg, Protocol, Topology, lab, netns,
    probe::{self, ProbeMatrix},
    state::{self, Family},
};

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create the lab's namespaces, links, routes and pod servers from a topology file.
    Up {
        /// Topology file (YAML), e.g. examples/lab-netpol.yaml.
        #[arg(short, long)]
        file: PathBuf,
        /// Lab name (default: the file's `name:`).
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove everything a lab created (also when its state is missing). Fine if it does not exist.
    Down {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// The labs that exist.
    List {
        /// Names only, one per line.
        #[arg(long)]
        names: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// A lab's pods (with `-o json`, its full state as the agent reads it).
    Show {
        name: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Try connections between lab hosts from inside the source pod, in parallel.
    Probe(ProbeArgs),
    /// Send bounded traffic from one host to another: a burst of UDP datagrams or a series of TCP
    /// connections, from inside the source's namespace. Stops after --count sends or --time-limit.
    Traffic(TrafficArgs),
    /// Run a command inside a pod's (or external's) network namespace.
    Exec {
        name: String,
        /// NAMESPACE/POD, or an external's name.
        target: PodRef,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Args)]
struct ProbeArgs {
    /// The lab (default: the only lab that exists).
    #[arg(long)]
    lab: Option<String>,
    /// Source: NAMESPACE/POD, or an external's name.
    #[arg(long, requires = "to", conflicts_with = "all")]
    from: Option<PodRef>,
    /// Destination: NAMESPACE/POD, or an external's name.
    #[arg(long, requires = "from", conflicts_with = "all")]
    to: Option<PodRef>,
    /// Every pod to every pod (self included).
    #[arg(long, required_unless_present = "from")]
    all: bool,
    /// Port number, or a container port name resolved on each destination.
    #[arg(long)]
    port: PortArg,
    #[arg(long, default_value = "TCP")]
    protocol: Protocol,
    /// Per-probe timeout, e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Probe over IPv6 (the lab is dual-stack) instead of IPv4.
    #[arg(long)]
    ipv6: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
struct TrafficArgs {
    /// The lab (default: the only lab that exists).
    #[arg(long)]
    lab: Option<String>,
    /// Source: NAMESPACE/POD, or an external's name.
    #[arg(long)]
    from: PodRef,
    /// Destination: NAMESPACE/POD, or an external's name.
    #[arg(long)]
    to: PodRef,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "UDP")]
    protocol: Protocol,
    /// Send over IPv6 instead of IPv4.
    #[arg(long)]
    ipv6: bool,
    /// UDP datagrams, or TCP connections.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Upper bound on the run, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    time_limit: Duration,
    /// Pause between sends, e.g. 1ms (default: none).
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up { file, name, output } => up(&file, name, output),
        LabCommand::Down { names } => {
            for name in names {
                let report = lab::down(&name).with_context(|| format!("bringing lab {name} down"))?;
                if report.existed {
                    println!(
                        "lab {name} is down: {} network namespaces deleted{}",
                        report.netns_deleted.len(),
                        report.server_stopped.map(|pid| format!(", server {pid} stopped")).unwrap_or_default()
                    );
                } else {
                    println!("no lab named {name}: nothing to do");
                }
            }
            Ok(())
        }
        LabCommand::List { names, output } => list(names, output),
        LabCommand::Show { name, output } => {
            let state = state::load(&name)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&state)?),
                Output::Table => print!("{}", hosts_table(&state)),
            }
            Ok(())
        }
        LabCommand::Probe(args) => probe_cmd(args),
        LabCommand::Traffic(args) => traffic_cmd(args),
        LabCommand::Exec { name, target, command } => exec(&name, &target, &command),
    }
}

fn up(file: &std::path::Path, name: Option<String>, output: Output) -> anyhow::Result<()> {
    let topology = Topology::load(file)?;
    let Some(name) = name.or_else(|| topology.name.clone()) else {
        bail!("{}: the topology has no `name:`; give the lab a name with --name", file.display());
    };
    let started = Instant::now();
    let state = lab::up(&topology, &name, Some(file)).with_context(|| format!("bringing lab {name} up"))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&state)?),
        Output::Table => {
            let nodes = if state.nodes.is_empty() {
                format!("node namespace {}", state.node_netns)
            } else {
                let nodes: Vec<String> =
                    state.nodes.iter().map(|n| format!("{} ({}, {})", n.name, n.netns, n.ip)).collect();
                format!("{} nodes {}", nodes.len(), nodes.join(", "))
            };
            println!(
                "lab {} is up in {:.1}s: {} pods, {} externals, {nodes}, gateway {}",
                state.name,
                started.elapsed().as_secs_f64(),
                state.pods.len(),
                state.externals.len(),
                state.gateway
            );
            print!("{}", hosts_table(&state));
        }
    }
    Ok(())
}

fn list(names_only: bool, output: Output) -> anyhow::Result<()> {
    let names = state::list();
    if names_only {
        for name in names {
            println!("{name}");
        }
        return Ok(());
    }
    let labs: Vec<(String, Option<LabState>)> = names.into_iter().map(|n| (n.clone(), state::load(&n).ok())).collect();
    if output == Output::Json {
        let items: Vec<serde_json::Value> = labs
            .iter()
            .map(|(name, s)| {
                serde_json::json!({
                    "name": name,
                    "pods": s.as_ref().map(|s| s.pods.len()),
                    "externals": s.as_ref().map(|s| s.externals.len()),
                    "server_pid": s.as_ref().and_then(|s| s.server_pid),
                    "topology_path": s.as_ref().and_then(|s| s.topology_path.clone()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if labs.is_empty() {
        println!("no labs (`flowgate lab up -f examples/lab-netpol.yaml` creates one)");
        return Ok(());
    }
    let mut rows = vec![vec!["NAME".to_owned(), "PODS".to_owned(), "SERVER".to_owned(), "TOPOLOGY".to_owned()]];
    for (name, s) in labs {
        rows.push(match s {
            Some(s) => vec![
                name,
                s.pods.len().to_string(),
                match s.server_pid {
                    Some(pid) if lab::is_lab_server(pid, &s.name) => pid.to_string(),
                    Some(pid) => format!("{pid} (gone)"),
                    None => "-".to_owned(),
                },
                s.topology_path.map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
            ],
            None => {
                vec![name, "?".to_owned(), "?".to_owned(), "(incomplete: `flowgate lab down` removes it)".to_owned()]
            }
        });
    }
    print!("{}", columns(&rows));
    Ok(())
}

fn hosts_table(state: &LabState) -> String {
    let mut rows = vec![["POD", "IP", "INTERFACE", "IFINDEX", "NETNS", "PORTS"].map(str::to_owned).to_vec()];
    let several_nodes = !state.nodes.is_empty();
    if several_nodes {
        rows[0].push("NODE".to_owned());
    }
    let ports = |ports: &[flowgate_lab::topology::ContainerPort]| {
        let list: Vec<String> = ports
            .iter()
            .map(|p| match &p.name {
                Some(n) => format!("{}/{}({n})", p.port, p.protocol),
                None => format!("{}/{}", p.port, p.protocol),
            })
            .collect();
        if list.is_empty() { "-".to_owned() } else { list.join(",") }
    };
    for p in &state.pods {
        rows.push(vec![
            format!("{}/{}", p.namespace, p.name),
            p.ip.to_string(),
            p.host_ifname.clone(),
            p.host_ifindex.to_string(),
            p.netns.clone(),
            ports(&p.ports),
        ]);
        if several_nodes {
            rows.last_mut().expect("just pushed").push(p.node.clone().unwrap_or_default());
        }
    }
    for e in &state.externals {
        rows.push(vec![
            format!("{} (external)", e.name),
            e.ip.to_string(),
            e.host_ifname.clone(),
            e.host_ifindex.to_string(),
            e.netns.clone(),
            ports(&e.ports),
        ]);
        if let Some(first) = state.nodes.first() {
            rows.last_mut().expect("just pushed").push(first.name.clone());
        }
    }
    columns(&rows)
}

/// Left-aligned columns separated by two spaces.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, String::len)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn pick_lab(lab: Option<String>) -> anyhow::Result<String> {
    if let Some(lab) = lab {
        return Ok(lab);
    }
    let labs = state::list();
    match labs.as_slice() {
        [only] => Ok(only.clone()),
        [] => {
            bail!("no lab exists; bring one up with `flowgate lab up -f examples/lab-netpol.yaml`")
        }
        many => bail!("several labs exist ({}); choose one with --lab", many.join(", ")),
    }
}

fn family(ipv6: bool) -> Family {
    if ipv6 { Family::Ipv6 } else { Family::Ipv4 }
}

fn traffic_cmd(args: TrafficArgs) -> anyhow::Result<()> {
    let lab = pick_lab(args.lab)?;
    let state = state::load(&lab)?;
    let spec = flowgate_lab::traffic::TrafficSpec {
        from: args.from,
        to: args.to,
        port: args.port,
        protocol: args.protocol,
        family: family(args.ipv6),
        count: args.count,
        time_limit: args.time_limit,
        interval: args.interval.unwrap_or_default(),
    };
    let report = flowgate_lab::traffic::run(&state, &spec).with_context(|| format!("traffic in lab {lab}"))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&report)?),
        Output::Table => println!(
            "{} -> {} {}/{}: {} sent, {} answered in {} ms",
            spec.from, spec.to, spec.port, spec.protocol, report.sent, report.answered, report.elapsed_ms
        ),
    }
    Ok(())
}

fn probe_cmd(args: ProbeArgs) -> anyhow::Result<()> {
    let lab = pick_lab(args.lab)?;
    let state = state::load(&lab)?;
    let pairs = match (args.from, args.to) {
        (Some(from), Some(to)) => vec![(from, to)],
        _ => probe::all_pairs(&state.pod_refs()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let started = Instant::now();
    let matrix: ProbeMatrix = runtime
        .block_on(probe::probe(&state, &pairs, &args.port, args.protocol, family(args.ipv6), args.timeout))
        .with_context(|| format!("probing lab {lab}"))?;
    let took = started.elapsed();
    match args.output {
        Output::Json => println!("{}", matrix.to_json()),
        Output::Table => {
            let (connected, total) = matrix.summary();
            println!(
                "lab {lab}, port {}/{} over {}: . connected, X blocked (rows: from, columns: to)",
                args.port, args.protocol, matrix.family
            );
            print!("{}", matrix.truth_table());
            println!("{connected}/{total} connected, {} blocked, in {:.2}s", total - connected, took.as_secs_f64());
        }
    }
    Ok(())
}

fn exec(lab: &str, target: &PodRef, command: &[String]) -> anyhow::Result<()> {
    let state = state::load(lab)?;
    let host = state.host(target).with_context(|| format!("lab {lab} has no pod or external {target}"))?;
    // This thread is the process's only one: after setns the exec'd command runs in the pod's namespace.
    // setns (not `ip netns exec`) keeps /sys and bpffs as they are.
    netns::enter_current_thread(host.netns)?;
    let (program, args) = command.split_first().context("no command given")?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("running {program}"))
}

/// `1s`, `500ms`, `1.5s`, `2m`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration like 1s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(format!("{s:?} must be more than 0 and at most an hour"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let rows = vec![vec!["A".to_owned(), "BB".to_owned()], vec!["ccc".to_owned(), "d".to_owned()]];
        assert_eq!(columns(&rows), "A    BB\nccc  d\n");
    }
}
