//! `flowgate demo`: the whole product in one command. Brings up the NetworkPolicy walkthrough as a lab
//! node, starts the agent on it with the walkthrough's policies, drives allowed and denied connections every
//! second from inside the pods, and opens the monitor on the database endpoint. Quitting (or the end of
//! `--duration`) tears it all down.
//!
//! The walkthrough (examples/demo-lab.yaml and examples/policies/) is built into the binary, so the demo works
//! from any directory after `make install`: it is written out to the lab's own directory when the demo
//! starts, where people edit it and the agent follows the edits. `--topology` and `--policies` use other files.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use flowgate_lab::{LabState, PodRef, Protocol, Topology, lab, traffic};
use flowgate_proto::{client::Client, message::Request};

use crate::{
    client::{SocketArg, software},
    endpoint_ref::EndpointRef,
    filter_args::FilterArgs,
    monitor::{self, MonitorArgs, MonitorOutput},
};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The lab topology [default: the walkthrough, written to the lab's directory].
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// The NetworkPolicy directory the agent follows (edit it while the demo runs) [default: the
    /// walkthrough's policies, written to the lab's directory].
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Lab name.
    #[arg(long, default_value = "demo")]
    name: String,
    /// Monitor output: the TUI on a terminal, text lines otherwise.
    #[arg(short, long, value_enum)]
    output: Option<MonitorOutput>,
    /// Without a terminal: how long to run, in seconds, before tearing down.
    #[arg(long, default_value_t = 15)]
    duration: u64,
}

/// The walkthrough's topology, built in.
pub const DEMO_TOPOLOGY: &str = include_str!("../../examples/demo-lab.yaml");

/// The walkthrough's policies, built in: (file name, manifest).
pub const DEMO_POLICIES: &[(&str, &str)] = &[
    ("network-policy-walkthrough-db.yaml", include_str!("../../examples/policies/network-policy-walkthrough-db.yaml")),
    ("default-deny-ingress-policy.yaml", include_str!("../../examples/policies/default-deny-ingress-policy.yaml")),
    ("allow-debug.yaml", include_str!("../../examples/policies/allow-debug.yaml")),
];

/// Where the built-in topology is written out: `<lab dir>/demo-lab.yaml`.
pub fn written_topology(lab_dir: &Path) -> PathBuf {
    lab_dir.join("demo-lab.yaml")
}

/// Where the built-in policies are written out: `<lab dir>/policies/`.
pub fn written_policies(lab_dir: &Path) -> PathBuf {
    lab_dir.join("policies")
}

/// Writes the built-in walkthrough into `lab_dir` (which exists): the topology and the policy directory.
fn write_walkthrough(lab_dir: &Path) -> anyhow::Result<()> {
    let topology = written_topology(lab_dir);
    std::fs::write(&topology, DEMO_TOPOLOGY).with_context(|| format!("writing {}", topology.display()))?;
    let policies = written_policies(lab_dir);
    std::fs::create_dir_all(&policies).with_context(|| format!("creating {}", policies.display()))?;
    for (name, manifest) in DEMO_POLICIES {
        let path = policies.join(name);
        std::fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Connections the traffic generator makes every second: (from, to, port, expected by the policies).
const TRAFFIC: &[(&str, &str, u16, &str)] = &[
    ("default/backend", "default/database", 5432, "allowed: component=backend"),
    ("dba-tools/dba-console", "default/database", 5432, "allowed: namespace team=dba"),
    ("outside", "default/database", 5432, "allowed: ipBlock 10.200.0.250/32"),
    ("default/frontend", "default/database", 5432, "denied: default deny"),
    ("monitoring/debug", "default/app", 8080, "allowed: allow-debug"),
    ("default/frontend", "default/app", 8080, "denied: default deny"),
];

/// Everything the demo started, stopped in reverse order on drop (also on error or panic).
struct Running {
    lab: String,
    agent: Option<Child>,
    stop: Arc<AtomicBool>,
    traffic: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.traffic.take() {
            let _ = t.join();
        }
        if let Some(mut agent) = self.agent.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(agent.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        match lab::down(&self.lab) {
            Ok(_) => eprintln!("demo: lab {} is down", self.lab),
            Err(e) => eprintln!("demo: tearing down lab {}: {e:#}", self.lab),
        }
    }
}

/// `binary` next to this one (a build directory, or where `make install` put both), else on `$PATH`.
fn sibling(binary: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the flowgate binary")?;
    let path = exe.with_file_name(binary);
    if path.is_file() {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file());
    on_path.with_context(|| {
        format!(
            "{binary} is neither next to {} nor on $PATH: build it with `cargo build`, or `make install`",
            exe.display()
        )
    })
}

/// A loopback port nothing listens on now (the kernel's pick for port 0).
fn free_loopback_port() -> anyhow::Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(probe.local_addr().context("reading the free port")?.port())
}

fn wait_for_agent(socket: &Path, agent: &mut Child) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut client) = runtime.block_on(Client::connect(socket, &software()))
            && runtime.block_on(client.request(Request::Status)).is_ok()
        {
            return Ok(());
        }
        if let Some(status) = agent.try_wait()? {
            bail!("flowgate-agent exited ({status}) before serving; see its log");
        }
        if Instant::now() > deadline {
            bail!("flowgate-agent did not answer on {} within a minute", socket.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn drive_traffic(state: LabState, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        std::thread::scope(|s| {
            for (from, to, port, _) in TRAFFIC {
                let state = &state;
                s.spawn(move || {
                    let spec = traffic::TrafficSpec {
                        from: from.parse::<PodRef>().expect("demo host"),
                        to: to.parse::<PodRef>().expect("demo host"),
                        port: *port,
                        protocol: Protocol::Tcp,
                        family: Default::default(),
                        count: 1,
                        time_limit: Duration::from_millis(800),
                        interval: Duration::ZERO,
                    };
                    let _ = traffic::run(state, &spec);
                });
            }
        });
        let pause = Duration::from_secs(1).saturating_sub(started.elapsed());
        std::thread::sleep(pause);
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    // The built-in walkthrough goes to the lab's directory, which `lab::up` creates: the lab records the
    // path the file will have, and the file is written before the agent (which follows it) starts.
    let lab_dir = flowgate_lab::state::lab_dir(&args.name);
    let topology_path = args.topology.clone().unwrap_or_else(|| written_topology(&lab_dir));
    let topology = match &args.topology {
        Some(path) => Topology::load(path).with_context(|| format!("reading {}", path.display()))?,
        None => Topology::parse(DEMO_TOPOLOGY, "the built-in demo-lab.yaml")
            .context("reading the built-in walkthrough topology")?,
    };
    let _ = lab::down(&args.name);
    let state = lab::up(&topology, &args.name, Some(&topology_path))
        .with_context(|| format!("bringing lab {} up", args.name))?;
    let mut running =
        Running { lab: args.name.clone(), agent: None, stop: Arc::new(AtomicBool::new(false)), traffic: None };
    eprintln!("demo: lab {} is up: {} pods and an outside host", state.name, state.pods.len());
    if args.topology.is_none() || args.policies.is_none() {
        write_walkthrough(&lab_dir)?;
    }
    let policies = args.policies.clone().unwrap_or_else(|| written_policies(&lab_dir));
    eprintln!(
        "demo: topology {}, policies {} (edit them: the agent follows)",
        topology_path.display(),
        policies.display()
    );

    // Everything the demo's agent writes stays in the lab's own directory, and its metrics take a free
    // loopback port: a demo never touches the machine's verdict log or the default metrics port.
    let socket = lab_dir.join("agent.sock");
    let log = lab_dir.join("agent.log");
    let verdicts = lab_dir.join("verdicts.jsonl");
    let metrics = free_loopback_port().map(|port| format!("127.0.0.1:{port}"))?;
    let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut agent = Command::new(sibling("flowgate-agent")?)
        .args(["--lab", &args.name, "--socket"])
        .arg(&socket)
        .arg("--policies")
        .arg(&policies)
        .arg("--verdict-log")
        .arg(&verdicts)
        .args(["--metrics-addr", &metrics])
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .context("starting flowgate-agent")?;
    let ready = wait_for_agent(&socket, &mut agent);
    running.agent = Some(agent);
    ready?;
    eprintln!("demo: agent is up (log: {}); policies from {}", log.display(), policies.display());
    eprintln!(
        "demo: socket {}, verdict log {}, metrics http://{metrics}/metrics",
        socket.display(),
        verdicts.display()
    );
    for (from, to, port, expect) in TRAFFIC {
        eprintln!("demo: every second {from} -> {to}:{port} ({expect})");
    }
    let stop = Arc::clone(&running.stop);
    running.traffic = Some(std::thread::spawn(move || drive_traffic(state, stop)));

    let socket_arg = SocketArg { socket: socket.clone() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let endpoints = runtime.block_on(monitor::fetch_endpoints(&socket))?;
    let database = endpoints
        .iter()
        .find(|e| e.pod_ref() == "default/database")
        .context("the demo topology has no default/database pod")?
        .id;
    let output =
        args.output.unwrap_or(if std::io::stdout().is_terminal() { MonitorOutput::Tui } else { MonitorOutput::Text });
    eprintln!("demo: monitoring endpoint {database} (default/database)");
    if output == MonitorOutput::Tui {
        let monitor_args = MonitorArgs {
            filter: FilterArgs { related_to: vec![EndpointRef::Id(database)], ..FilterArgs::default() },
            last: 0,
            output: Some(MonitorOutput::Tui),
            verbose: false,
            socket: socket_arg,
        };
        monitor::run(&monitor_args)?;
    } else {
        // Without a terminal: the text monitor for a while, as a child process, then tear down.
        let mut child = Command::new(std::env::current_exe()?)
            .args(["monitor", "--related-to", &database.to_string(), "-o"])
            .arg(if output == MonitorOutput::Json { "json" } else { "text" })
            .arg("--socket")
            .arg(&socket)
            .spawn()
            .context("starting flowgate monitor")?;
        std::thread::sleep(Duration::from_secs(args.duration));
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(running);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_built_in_walkthrough_is_every_example_policy_and_parses() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
        let on_disk: BTreeSet<String> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let built_in: BTreeSet<String> = DEMO_POLICIES.iter().map(|(name, _)| (*name).to_owned()).collect();
        assert_eq!(built_in, on_disk, "every file of examples/policies is built into the demo");
        let topology = Topology::parse(DEMO_TOPOLOGY, "built-in").unwrap();
        assert!(topology.pods.iter().any(|p| p.namespace == "default" && p.name == "database"));
        for pod in TRAFFIC.iter().flat_map(|(from, to, _, _)| [from, to]) {
            let known =
                *pod == "outside" || topology.pods.iter().any(|p| format!("{}/{}", p.namespace, p.name) == *pod);
            assert!(known, "{pod} of the traffic is in the topology");
        }
    }

    #[test]
    fn the_walkthrough_is_written_where_the_agent_follows_it() {
        let dir = std::env::temp_dir().join(format!("flowgate-demo-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_walkthrough(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(written_topology(&dir)).unwrap(), DEMO_TOPOLOGY);
        for (name, manifest) in DEMO_POLICIES {
            assert_eq!(std::fs::read_to_string(written_policies(&dir).join(name)).unwrap(), *manifest);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
