//! `flowgate policy describe FILE|DIR|NS/NAME... [--topology FILE]`: each NetworkPolicy as `kubectl describe
//! networkpolicy` prints it, then the pods it selects, and warnings for the common mistakes
//! (`flowgate_policy::describe`). Offline on files, before anything is applied (with a lab topology: the pods
//! it would select there); by NAMESPACE/NAME, the policy the agent enforces, with the pods it selects now
//! (in Kubernetes mode the agent's policies and pods are the API server's). A file with an invalid manifest
//! is refused with its file, document and field path, as the agent would.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::Args;
use flowgate_common::identity::FIRST_ALLOCATED;
use flowgate_lab::{LabState, Topology, plan};
use flowgate_policy::{
    ClusterView, ContainerPort, LoadedPolicy, NamespaceInfo, PodInfo, PolicyRef, Protocol as PolicyProtocol,
    describe::{Description, describe},
    source::parse_str,
};

use crate::{
    client::{Output, SocketArg, render_structured},
    policy_test::{agent_cluster, agent_policies, fetch},
};

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Policy files (YAML, several documents allowed), directories of them, or NAMESPACE/NAME of a policy
    /// the agent enforces (described with the endpoints it selects now).
    #[arg(required = true, value_name = "FILE|DIR|NS/NAME")]
    paths: Vec<PathBuf>,
    /// A lab topology file: show which pods each policy of a file selects there, and check named ports and
    /// ipBlocks against its pods.
    #[arg(long)]
    topology: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub fn run(args: &DescribeArgs) -> anyhow::Result<()> {
    let topology = args.topology.as_deref().map(cluster_of).transpose()?;
    // The agent's policies and the cluster it compiled them for, asked once if a policy is named.
    let mut agent: Option<(Vec<LoadedPolicy>, ClusterView)> = None;
    let mut descriptions: Vec<Description> = Vec::new();
    for path in &args.paths {
        if path.exists() {
            descriptions.extend(load(path)?.iter().map(|p| describe(p, topology.as_ref())));
            continue;
        }
        let Some(name) = path.to_str().and_then(|text| text.parse::<PolicyRef>().ok()) else {
            bail!("{} does not exist", path.display());
        };
        if agent.is_none() {
            let maps = fetch(&args.socket).with_context(|| {
                format!("{} is not a file or directory; asking the agent for policy {name}", path.display())
            })?;
            agent = Some((agent_policies(&maps, &args.socket)?, agent_cluster(&maps)));
        }
        let (policies, cluster) = agent.as_ref().expect("fetched above");
        let Some(policy) = policies.iter().find(|p| p.policy_ref() == name) else {
            let known: Vec<String> = policies.iter().map(|p| p.policy_ref().to_string()).collect();
            bail!(
                "the agent at {} enforces no policy {name} (it enforces: {})",
                args.socket.socket.display(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            );
        };
        let mut description = describe(policy, Some(cluster));
        description.source = format!("the agent at {}", args.socket.socket.display());
        description.created.get_or_insert_with(|| format!("<in effect in {}>", description.source));
        descriptions.push(description);
    }
    match args.output.structured() {
        Some(format) => print!("{}", render_structured(&descriptions, format)?),
        None => print!("{}", descriptions.iter().map(Description::text).collect::<Vec<_>>().join("\n\n\n")),
    }
    Ok(())
}

/// Every policy of a file or of a directory's YAML files; any invalid manifest refuses the lot.
pub(crate) fn load(path: &Path) -> anyhow::Result<Vec<LoadedPolicy>> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    if path.is_dir() {
        return flowgate_policy::load_dir(path).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{} has invalid policies:\n  {}", path.display(), lines.join("\n  "))
        });
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (policies, errors) = parse_str(path, &text);
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("{} has invalid policies:\n  {}", path.display(), lines.join("\n  "));
    }
    Ok(policies)
}

/// The lab a topology file describes, with the addresses the lab would give its hosts (nothing is created).
pub(crate) fn planned_lab(topology: &Path) -> anyhow::Result<LabState> {
    let parsed = Topology::load(topology)?;
    let name = parsed.name.clone().unwrap_or_else(|| "describe".to_owned());
    plan::plan(&parsed, &name).with_context(|| format!("planning {}", topology.display()))
}

/// The cluster a lab topology describes.
fn cluster_of(topology: &Path) -> anyhow::Result<ClusterView> {
    Ok(cluster_of_lab(&planned_lab(topology)?))
}

/// A lab protocol as the policy crate names it.
pub(crate) fn policy_protocol(p: flowgate_lab::Protocol) -> PolicyProtocol {
    match p {
        flowgate_lab::Protocol::Tcp => PolicyProtocol::Tcp,
        flowgate_lab::Protocol::Udp => PolicyProtocol::Udp,
        flowgate_lab::Protocol::Sctp => PolicyProtocol::Sctp,
    }
}

/// The cluster of a lab's pods: endpoint ids in file order from 1, as the agent numbers a fresh lab, and
/// identities from `FIRST_ALLOCATED` on, shared by pods of one namespace with the same labels (the agent's
/// security labels are the namespace and its labels and the pod's labels; a lab namespace has one set).
pub(crate) fn cluster_of_lab(state: &LabState) -> ClusterView {
    let mut identities: BTreeMap<(&str, &BTreeMap<String, String>), u32> = BTreeMap::new();
    let mut pods = Vec::new();
    for (i, p) in state.pods.iter().enumerate() {
        let next = FIRST_ALLOCATED + u32::try_from(identities.len()).unwrap_or(u32::MAX - FIRST_ALLOCATED);
        let identity = *identities.entry((p.namespace.as_str(), &p.labels)).or_insert(next);
        pods.push(PodInfo {
            endpoint_id: u16::try_from(i + 1).unwrap_or(u16::MAX),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            labels: p.labels.clone(),
            ip: p.ip,
            ipv6: p.ipv6,
            identity,
            ports: p
                .ports
                .iter()
                .map(|c| ContainerPort { name: c.name.clone(), port: c.port, protocol: policy_protocol(c.protocol) })
                .collect(),
        });
    }
    ClusterView {
        namespaces: state
            .namespaces
            .iter()
            .map(|n| NamespaceInfo { name: n.name.clone(), labels: n.labels.clone() })
            .collect(),
        pods,
    }
}
