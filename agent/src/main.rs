//! `flowgate-agent`: loads the kernel programs, attaches them to every endpoint of the node (for now the
//! pods of a lab), and prints one line per event read from the kernel's events buffer.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use flowgate_agent::{
    datapath::{Datapath, DatapathOptions},
    decode::{self, Record},
    format,
};
use flowgate_proto::endpoint::{EndpointRegistry, EndpointState, NewEndpoint};
use flowgate_lab::state::LabState;
use log::{info, warn};

#[derive(Parser, Debug)]
#[command(name = "flowgate-agent", version, about = "flowgate's node agent")]
struct Args {
    /// Enforce for the pods of a lab that is already up (`flowgate lab up`).
    #[arg(long, conflicts_with = "lab_topology")]
    lab: Option<String>,
    /// Bring up a lab from this topology file, enforce for its pods, and tear it down on exit.
    #[arg(long, value_name = "FILE")]
    lab_topology: Option<PathBuf>,
    /// Name of the lab brought up with --lab-topology (default: the name in the file).
    #[arg(long, requires = "lab_topology")]
    lab_name: Option<String>,
    /// Size of the kernel's events ring buffer in bytes (power of two).
    #[arg(long, default_value_t = 8 << 20)]
    events_buffer_bytes: u32,
    /// How often the reader drains the events buffer when the kernel has not woken it, in milliseconds.
    #[arg(long, default_value_t = 5)]
    drain_interval_ms: u64,
}

/// A lab this agent brought up and must take down again, whatever happens.
struct OwnedLab(String);

impl Drop for OwnedLab {
    fn drop(&mut self) {
        match flowgate_lab::lab::down(&self.0) {
            Ok(_) => info!("lab {} is down", self.0),
            Err(e) => warn!("tearing down lab {}: {e:#}", self.0),
        }
    }
}

fn main() -> anyhow::Result<()> {
    flowgate_lab::server::run_if_requested();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (lab, _owned) = match (&args.lab, &args.lab_topology) {
        (Some(name), None) => {
            (flowgate_lab::state::load(name).with_context(|| format!("reading lab {name}"))?, None)
        }
        (None, Some(path)) => {
            let state = bring_up_lab(path, args.lab_name.as_deref())?;
            let owned = OwnedLab(state.name.clone());
            (state, Some(owned))
        }
        _ => bail!("nothing to enforce for: pass --lab NAME or --lab-topology FILE"),
    };

    let mut datapath = Datapath::load(DatapathOptions {
        events_buffer_bytes: args.events_buffer_bytes,
        ..DatapathOptions::default()
    })
    .context("loading the eBPF datapath")?;
    let registry = attach_lab(&mut datapath, &lab)?;
    info!("attached to {} endpoints of lab {}", registry.len(), lab.name);

    let events = datapath.take_events().context("opening the events buffer")?;
    let names: std::collections::HashMap<u16, String> =
        registry.iter().map(|e| (e.id, e.pod_ref())).collect();
    let mut decode_errors = 0u64;
    let reader = flowgate_agent::reader::run(
        events,
        Duration::from_millis(args.drain_interval_ms),
        move |bytes| match decode::decode(bytes) {
            Ok(Record::Trace(trace)) => {
                let who = names.get(&trace.endpoint_id).map(String::as_str);
                println!("{}", format::trace_line(&trace, who));
            }
            Err(e) => {
                decode_errors += 1;
                warn!("decode error #{decode_errors}: {e}");
            }
        },
        || {},
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        res = reader => res.context("reading the events buffer")?,
        _ = tokio::signal::ctrl_c() => info!("interrupted, shutting down"),
        _ = sigterm.recv() => info!("terminated, shutting down"),
    }
    if let Ok(counters) = datapath.counters() {
        info!("kernel counters: {counters:?}");
    }
    drop(datapath);
    Ok(())
}

fn bring_up_lab(path: &Path, name: Option<&str>) -> anyhow::Result<LabState> {
    let topology = flowgate_lab::topology::Topology::load(path)
        .with_context(|| format!("reading lab topology {}", path.display()))?;
    let Some(name) = name.map(str::to_owned).or_else(|| topology.name.clone()) else {
        bail!("{}: the topology has no `name:`; pass --lab-name", path.display());
    };
    flowgate_lab::lab::up(&topology, &name, Some(path)).with_context(|| format!("bringing up lab {name}"))
}

/// Registers every pod of the lab as an endpoint and attaches the programs to its node-side veth.
fn attach_lab(datapath: &mut Datapath, lab: &LabState) -> anyhow::Result<EndpointRegistry> {
    let node_netns = Path::new("/run/netns").join(&lab.node_netns);
    let mut registry = EndpointRegistry::new();
    for pod in &lab.pods {
        let endpoint = registry.upsert(NewEndpoint {
            namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            labels: pod.labels.clone(),
            ipv4: pod.ip,
            interface: pod.host_ifname.clone(),
            ifindex: pod.host_ifindex,
        });
        let (id, ifindex, info) = (endpoint.id, endpoint.ifindex, flowgate_agent::datapath::endpoint_info(endpoint));
        datapath
            .set_endpoint(ifindex, info)
            .with_context(|| format!("registering endpoint {id} ({}/{})", pod.namespace, pod.name))?;
        datapath
            .attach_endpoint(&node_netns, &pod.host_ifname)
            .with_context(|| format!("attaching to endpoint {id} ({}/{})", pod.namespace, pod.name))?;
        if let Some(ep) = registry.get_mut(id) {
            ep.state = EndpointState::Ready;
        }
    }
    Ok(registry)
}
