//! `flowgate-bench-traffic`: section "traffic" of `make bench`. Brings up a lab of three pods (client, server,
//! intruder), and measures new TCP connections, TCP request/response and UDP packets per second between client
//! and server with no policy and under each enforcer at each size, interleaved; prints every measurement and
//! the figures, and writes `bench/results.d/traffic.json`. Runs as root (namespaces, eBPF, netfilter).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use flowgate_benchmarks::{
    report,
    traffic::{
        TOPOLOGY,
        enforcer::{self, Enforcer},
        knp::KnpCluster,
        load::Servers,
        rules,
        run::{self, Plan, Pods},
    },
};
use flowgate_tests::{LabGuard, TempDir};

#[derive(Parser, Debug)]
#[command(about = "flowgate side by side with iptables, ipset and kube-network-policies, on real traffic")]
struct Args {
    /// A smoke run: 10 rules, one round of 0.3 s per load (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Rule set sizes (peers the policy admits, the client included).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000, 10_000])]
    sizes: Vec<usize>,
    /// Interleaved rounds per size.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per load, enforcer and round.
    #[arg(long, default_value_t = 1.2)]
    seconds: f64,
    /// Which enforcers (the baseline is always measured): hook-floor, flowgate, flowgate-tcx, iptables,
    /// iptables-conntrack, ipset, kube-network-policies. flowgate-tcx (the same programs as TCX links) is
    /// not in the default set: it read as flowgate within the rounds' noise in every run from session 9 to
    /// 17, and its turns took about a minute and a half of `make bench`. Variants of flowgate that locate its
    /// cost, never in the default set: flowgate-polled (its polling reader), flowgate-quiet (no verdict log
    /// or metrics), flowgate-no-traces (`--bpf-events-trace-enabled=false`: decision records only),
    /// flowgate-stopped (the agent stopped, its ring full: records refused in the kernel), flowgate-bare-reader
    /// (the agent stopped, its ring drained by a reader that does nothing with the records), flowgate-custom
    /// (the agent with `--custom-agent-args` added, or another build's agent, `--custom-agent-bin`).
    #[arg(long, value_delimiter = ',', default_values_t = ["hook-floor".to_owned(), "flowgate".to_owned(),
        "iptables".to_owned(), "iptables-conntrack".to_owned(), "ipset".to_owned(),
        "kube-network-policies".to_owned()])]
    enforcers: Vec<String>,
    /// Arguments the flowgate-custom enforcer adds to the agent's (split at whitespace), e.g.
    /// "--events-wakeup-interval-us 10000"; its note in the results names them.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    custom_agent_args: String,
    /// The agent binary flowgate-custom runs in place of this build's: another build of flowgate (its
    /// kernel programs are built into it) measured beside this one in the same interleaved rounds.
    #[arg(long)]
    custom_agent_bin: Option<PathBuf>,
    /// Where `results.d/traffic.json` goes (default: bench/), as every section's `--out`.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    enforcer::set_custom_args(&args.custom_agent_args);
    if let Some(binary) = &args.custom_agent_bin {
        anyhow::ensure!(binary.is_file(), "--custom-agent-bin {}: no such file", binary.display());
        enforcer::set_custom_binary(binary.clone());
    }
    if args.enforcers.iter().any(|e| e == Enforcer::FlowgateCustom.key()) {
        println!(
            "traffic: {} is {} with {:?} added",
            Enforcer::FlowgateCustom.name(),
            args.custom_agent_bin.as_deref().map_or("flowgate-agent".into(), |b| b.display().to_string()),
            args.custom_agent_args
        );
    }
    let steal = flowgate_benchmarks::machine::StealMeter::start();
    flowgate_tests::require_root();
    let mut enforcers = vec![Enforcer::Baseline];
    for key in &args.enforcers {
        let e = Enforcer::from_key(key).with_context(|| format!("unknown enforcer {key:?}"))?;
        if !enforcers.contains(&e) {
            enforcers.push(e);
        }
    }
    let plan = if args.quick {
        Plan { sizes: vec![10], rounds: 1, duration: Duration::from_millis(300), enforcers }
    } else {
        Plan {
            sizes: args.sizes.clone(),
            rounds: args.rounds,
            duration: Duration::from_secs_f64(args.seconds),
            enforcers,
        }
    };
    println!(
        "traffic: sizes {:?}, {} round(s), {:?} per load; enforcers: {}",
        plan.sizes,
        plan.rounds,
        plan.duration,
        plan.enforcers.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
    );

    let topology = TempDir::new("bench-traffic");
    let file = topology.path().join("lab.yaml");
    std::fs::write(&file, TOPOLOGY).with_context(|| format!("writing {}", file.display()))?;
    let lab = LabGuard::up("bt", &file);
    let pod = |name: &str| {
        lab.state
            .pod(rules::NAMESPACE, name)
            .with_context(|| format!("lab {} has no pod {}/{name}", lab.name, rules::NAMESPACE))
    };
    let (client, server, intruder) = (pod("client")?, pod("server")?, pod("intruder")?);
    let pods = Pods {
        lab: &lab.state,
        client_netns: client.netns.clone(),
        intruder_netns: intruder.netns.clone(),
        client: client.ip,
        server: server.ip,
    };
    let servers = Servers::start(&server.netns, client.ip)?;
    let mut knp = plan.enforcers.contains(&Enforcer::KubeNetworkPolicies).then(|| start_knp(&lab.state));
    let mut section = run::run(&plan, &pods, &servers, knp.as_mut())?;
    flowgate_benchmarks::machine::push_neighbours(&mut section, &steal);
    drop(knp);
    drop(servers);
    let dir = args.out.unwrap_or_else(report::results_dir);
    let path = section.write(&dir)?;
    println!("written: {}", path.display());
    Ok(())
}

/// kube-network-policies' control plane and pods, or why they could not be set up (the control plane's helper
/// panics with its logs on failure; that message is kept).
fn start_knp(lab: &flowgate_lab::LabState) -> run::KnpState {
    let started = std::time::Instant::now();
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| KnpCluster::start(lab))) {
        Ok(Ok(cluster)) => Ok(cluster),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "setting up its control plane panicked".to_owned())),
    };
    match &result {
        Ok(_) => println!("traffic: kube-network-policies' API server and pods ready in {:?}", started.elapsed()),
        Err(e) => eprintln!("traffic: kube-network-policies cannot run: {e}"),
    }
    result
}
