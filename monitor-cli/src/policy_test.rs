//! `flowgate policy test`: would a connection be allowed, without sending a packet. The answer comes from
//! policy map contents looked up in the kernel's order (`flowgate_policy::what_if`): offline, the contents
//! the agent would write for a policy directory on a lab topology (`--policies DIR --topology FILE`); live,
//! the maps the agent's node enforces now (over its socket). `--all` predicts the truth table `flowgate lab
//! probe --all` would observe, in its format; `--with FILE` / `--without NS/NAME` lists only the connections
//! whose fate that change flips, with why.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use flowgate_common::policy::{IpcacheValue, PolicyKey, PolicyValue};
use flowgate_lab::{
    PodRef, PortArg, Protocol as LabProtocol,
    probe::{ProbeMatrix, ProbeResult},
    state::Family,
};
use flowgate_policy::{
    CidrIdentities, ClusterView, ContainerPort, IpPrefix, LoadedPolicy, NamespaceInfo, PodInfo, PolicyRef,
    Protocol as PolicyProtocol,
    realize::{self, Audit, MapContents, RuleTable},
    source::parse_str,
    what_if::{DirectionAnswer, Flip, Host, Node, Prediction, Shortcut, flips},
};

use flowgate_proto::{
    flow::PolicyName,
    message::{PolicyMaps, Request, Response},
};

use crate::{
    client::{SocketArg, request},
    describe::{cluster_of_lab, load, planned_lab, policy_protocol},
};

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Source: NAMESPACE/POD, a lab external's name (offline), or an IP address.
    #[arg(long, value_name = "NS/POD|IP", requires = "to", conflicts_with = "all")]
    from: Option<String>,
    /// Destination: NAMESPACE/POD, a lab external's name (offline), or an IP address.
    #[arg(long, value_name = "NS/POD|IP", requires = "from", conflicts_with = "all")]
    to: Option<String>,
    /// Every pod to every pod (self included), as `flowgate lab probe --all` probes them. Live in Kubernetes
    /// mode, pods of other nodes are in the table with only this node's part decided: a connection between
    /// two of them shows as connected here (their nodes decide it).
    #[arg(long, required_unless_present = "from")]
    all: bool,
    /// Port number, or a container port name resolved on each destination.
    #[arg(long)]
    port: PortArg,
    #[arg(long, default_value = "TCP")]
    protocol: LabProtocol,
    /// Over IPv6 instead of IPv4.
    #[arg(long)]
    ipv6: bool,
    /// Offline: the policy directory to test (what the agent would enforce with it).
    #[arg(long, value_name = "DIR", requires = "topology")]
    policies: Option<PathBuf>,
    /// Offline: the lab topology the policies are tested on.
    #[arg(long, value_name = "FILE", requires = "policies")]
    topology: Option<PathBuf>,
    /// What changes if the policies of this file are added (a policy of the same namespace/name is replaced).
    #[arg(long = "with", value_name = "FILE")]
    with: Vec<PathBuf>,
    /// What changes if this policy is removed.
    #[arg(long, value_name = "NS/NAME")]
    without: Vec<PolicyRef>,
    #[command(flatten)]
    socket: SocketArg,
    #[arg(short, long, value_enum, default_value_t = TestOutput::Table)]
    output: TestOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TestOutput {
    Table,
    Json,
}

/// What the predictions are made on: a node's maps, the hosts it knows, and what they were built from (for
/// what-if: the policies and the cluster they are compiled against, and the audit settings).
struct Scenario {
    /// Where the node comes from, for the report's first line.
    origin: String,
    node: Node,
    cluster: ClusterView,
    policies: Vec<LoadedPolicy>,
    audit: Audit,
    /// Lab externals (offline only): name and addresses.
    externals: Vec<Host>,
    externals_v6: Vec<Option<Host>>,
}

/// The node the agent would realize for `policies` on `cluster`: compiled and realized as the agent does.
fn node_of(policies: &[LoadedPolicy], cluster: &ClusterView, audit: &Audit) -> Node {
    let plan = flowgate_policy::compile(policies, cluster, &mut CidrIdentities::new());
    let pods: Vec<(IpAddr, u32)> = cluster
        .pods
        .iter()
        .flat_map(|p| std::iter::once((IpAddr::V4(p.ip), p.identity)).chain(p.ipv6.map(|v6| (v6.into(), p.identity))))
        .collect();
    let mut rules = RuleTable::default();
    let maps = realize::realize(&plan, &pods, audit, &mut rules);
    Node::of_plan(&plan, maps, &rules)
}

fn offline(policies_dir: &Path, topology: &Path) -> anyhow::Result<Scenario> {
    let lab = planned_lab(topology)?;
    let cluster = cluster_of_lab(&lab);
    let policies = load(policies_dir)?;
    let audit = Audit::default();
    let node = node_of(&policies, &cluster, &audit);
    let external = |e: &flowgate_lab::state::ExternalState, ip: IpAddr| Host {
        name: e.name.clone(),
        endpoint_id: flowgate_policy::NOT_AN_ENDPOINT,
        ip,
        ports: e
            .ports
            .iter()
            .map(|c| flowgate_policy::ContainerPort {
                name: c.name.clone(),
                port: c.port,
                protocol: policy_protocol(c.protocol),
            })
            .collect(),
    };
    Ok(Scenario {
        origin: format!("policies {} on topology {}", policies_dir.display(), topology.display()),
        node,
        cluster,
        policies,
        audit,
        externals: lab.externals.iter().map(|e| external(e, e.ip.into())).collect(),
        externals_v6: lab.externals.iter().map(|e| e.ipv6.map(|v6| external(e, v6.into()))).collect(),
    })
}

/// The agent's policy maps and what they were compiled from (`Request::PolicyMaps`).
pub(crate) fn fetch(socket: &SocketArg) -> anyhow::Result<Box<PolicyMaps>> {
    match request(socket, Request::PolicyMaps)? {
        Response::PolicyMaps(maps) => Ok(maps),
        Response::NotFound { what, .. } => bail!("the agent at {} has no {what}", socket.socket.display()),
        other => bail!("the agent answered `PolicyMaps` with something else: {other:?}"),
    }
}

/// The policies in effect in the agent, read back from their manifests.
pub(crate) fn agent_policies(maps: &PolicyMaps, socket: &SocketArg) -> anyhow::Result<Vec<LoadedPolicy>> {
    let mut policies = Vec::new();
    let source = format!("agent at {}", socket.socket.display());
    for (i, text) in maps.policies.iter().enumerate() {
        let (parsed, errors) = parse_str(Path::new(&source), text);
        if let Some(error) = errors.first() {
            bail!("policy {} of the agent's set does not read back: {error}", i + 1);
        }
        policies.extend(parsed.into_iter().map(|p| LoadedPolicy { document: i + 1, ..p }));
    }
    Ok(policies)
}

/// The pods and namespaces the agent compiled its policies against.
pub(crate) fn agent_cluster(maps: &PolicyMaps) -> ClusterView {
    let protocol = |p: flowgate_proto::flow::Protocol| {
        PolicyProtocol::from_api(&p.name().to_uppercase()).unwrap_or(PolicyProtocol::Tcp)
    };
    ClusterView {
        namespaces: maps
            .namespaces
            .iter()
            .map(|(name, labels)| NamespaceInfo { name: name.clone(), labels: labels.clone() })
            .collect(),
        pods: maps
            .pods
            .iter()
            .map(|p| PodInfo {
                endpoint_id: p.endpoint_id,
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                ip: p.ipv4,
                ipv6: p.ipv6,
                identity: p.identity,
                ports: p
                    .ports
                    .iter()
                    .map(|(name, port, p)| ContainerPort { name: name.clone(), port: *port, protocol: protocol(*p) })
                    .collect(),
            })
            .collect(),
    }
}

/// The node the agent enforces now: its policy maps read back from the kernel, over its socket.
fn live(socket: &SocketArg) -> anyhow::Result<Scenario> {
    let maps = fetch(socket)?;
    let policy_ref = |n: &PolicyName| PolicyRef::new(&n.namespace, &n.name);
    let contents = MapContents {
        policy: maps
            .policy
            .iter()
            .map(|e| {
                let key = PolicyKey::new(e.endpoint_id, e.direction, e.identity, e.protocol, e.port);
                (e.prefix_len, key, PolicyValue { rule_id: e.rule_id, flags: e.flags, packets: 0, bytes: 0 })
            })
            .collect(),
        ipcache: maps
            .ipcache
            .iter()
            .map(|e| {
                let value = IpcacheValue { identity: e.identity, cidr_identity: e.cidr_identity };
                (IpPrefix::from_key(e.addr, e.prefix_len), value)
            })
            .collect(),
        enforcement: maps.enforcement.clone(),
    };
    let node = Node {
        maps: contents,
        rules: maps.rules.iter().map(|(id, names)| (*id, names.iter().map(policy_ref).collect())).collect(),
        isolation: maps
            .isolation
            .iter()
            .map(|(id, dir, names)| ((*id, *dir), names.iter().map(policy_ref).collect()))
            .collect(),
    };
    Ok(Scenario {
        origin: format!("the agent at {} (policy revision {})", socket.socket.display(), maps.revision),
        node,
        cluster: agent_cluster(&maps),
        policies: agent_policies(&maps, socket)?,
        audit: Audit { all: maps.audit_all, endpoints: maps.audited.iter().copied().collect() },
        externals: Vec::new(),
        externals_v6: Vec::new(),
    })
}

impl Scenario {
    /// The pods that are endpoints of this node, as hosts over `family`, in the cluster's order.
    fn pods(&self, family: Family) -> anyhow::Result<Vec<Host>> {
        self.hosts(family, false)
    }

    /// The hosts `--all` predicts for: this node's endpoints and, live in Kubernetes mode, the pods of the
    /// other nodes too, whose directions this node does not decide (`not_an_endpoint`: their own node's
    /// agent does), so that the node's part in every connection of the cluster is in the table.
    fn all_pods(&self, family: Family) -> anyhow::Result<Vec<Host>> {
        self.hosts(family, true)
    }

    fn hosts(&self, family: Family, other_nodes: bool) -> anyhow::Result<Vec<Host>> {
        self.cluster
            .pods
            .iter()
            .filter(|p| other_nodes || p.endpoint_id != flowgate_policy::NOT_AN_ENDPOINT)
            .map(|p| {
                let ip = match family {
                    Family::Ipv4 => IpAddr::V4(p.ip),
                    Family::Ipv6 => {
                        IpAddr::V6(p.ipv6.with_context(|| format!("{}/{} has no IPv6 address", p.namespace, p.name))?)
                    }
                };
                Ok(Host {
                    name: format!("{}/{}", p.namespace, p.name),
                    endpoint_id: p.endpoint_id,
                    ip,
                    ports: p.ports.clone(),
                })
            })
            .collect()
    }

    /// A host by `namespace/pod`, external name, or address (an address of a pod or external is that host).
    fn host(&self, text: &str, family: Family) -> anyhow::Result<Host> {
        let pods = self.pods(family)?;
        if let Ok(ip) = text.parse::<IpAddr>() {
            if let Some(pod) =
                self.cluster.pods.iter().find(|p| IpAddr::V4(p.ip) == ip || p.ipv6.map(IpAddr::V6) == Some(ip))
            {
                let name = format!("{}/{}", pod.namespace, pod.name);
                if let Some(host) = pods.into_iter().find(|h| h.name == name) {
                    return Ok(Host { ip, ..host });
                }
            }
            if let Some(external) = self.externals.iter().chain(self.externals_v6.iter().flatten()).find(|h| h.ip == ip)
            {
                return Ok(external.clone());
            }
            return Ok(Host {
                name: ip.to_string(),
                endpoint_id: flowgate_policy::NOT_AN_ENDPOINT,
                ip,
                ports: Vec::new(),
            });
        }
        if let Some(pod) = pods.into_iter().find(|h| h.name == text) {
            return Ok(pod);
        }
        // A pod of another node (Kubernetes mode): a peer, not an endpoint here.
        if let Some(p) = self.cluster.pods.iter().find(|p| format!("{}/{}", p.namespace, p.name) == text) {
            let ip = match family {
                Family::Ipv4 => IpAddr::V4(p.ip),
                Family::Ipv6 => IpAddr::V6(p.ipv6.with_context(|| format!("{text} has no IPv6 address"))?),
            };
            return Ok(Host { name: text.to_owned(), endpoint_id: p.endpoint_id, ip, ports: p.ports.clone() });
        }
        let externals = match family {
            Family::Ipv4 => self.externals.iter().cloned().map(Some).collect::<Vec<_>>(),
            Family::Ipv6 => self.externals_v6.clone(),
        };
        for (i, external) in externals.into_iter().enumerate() {
            if self.externals[i].name == text {
                return external.with_context(|| format!("{text} has no IPv6 address"));
            }
        }
        let known: Vec<String> = self.cluster.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
        bail!("no pod, external or address {text} in {} (pods: {})", self.origin, known.join(", "))
    }

    /// The scenario's policies with `with` added and `without` removed, as the node they would make.
    fn changed(&self, with: &[PathBuf], without: &[PolicyRef]) -> anyhow::Result<Node> {
        let mut policies = self.policies.clone();
        for gone in without {
            let before = policies.len();
            policies.retain(|p| &p.policy_ref() != gone);
            if policies.len() == before {
                let known: Vec<String> = self.policies.iter().map(|p| p.policy_ref().to_string()).collect();
                bail!("--without {gone}: no such policy in {} (policies: {})", self.origin, known.join(", "));
            }
        }
        for file in with {
            for added in load(file)? {
                policies.retain(|p| p.policy_ref() != added.policy_ref());
                policies.push(added);
            }
        }
        Ok(node_of(&policies, &self.cluster, &self.audit))
    }
}

fn family(ipv6: bool) -> Family {
    if ipv6 { Family::Ipv6 } else { Family::Ipv4 }
}

fn port_on(port: &PortArg, to: &Host, protocol: LabProtocol) -> Option<u16> {
    match port {
        PortArg::Number(n) => Some(*n),
        PortArg::Name(name) => to.named_port(name, policy_protocol(protocol)),
    }
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let scenario = match (&args.policies, &args.topology) {
        (Some(dir), Some(topology)) => offline(dir, topology)?,
        _ => live(&args.socket)?,
    };
    let family = family(args.ipv6);
    let protocol = policy_protocol(args.protocol);
    let pairs: Vec<(Host, Host)> = match (&args.from, &args.to) {
        (Some(from), Some(to)) => vec![(scenario.host(from, family)?, scenario.host(to, family)?)],
        _ => {
            let pods = scenario.all_pods(family)?;
            pods.iter().flat_map(|f| pods.iter().map(move |t| (f.clone(), t.clone()))).collect()
        }
    };
    let predict = |node: &Node| -> Vec<Prediction> {
        pairs.iter().map(|(f, t)| node.predict(f, t, protocol, port_on(&args.port, t, args.protocol))).collect()
    };
    let now = predict(&scenario.node);
    if !args.with.is_empty() || !args.without.is_empty() {
        let after = predict(&scenario.changed(&args.with, &args.without)?);
        let flipped = flips(&now, &after);
        match args.output {
            TestOutput::Json => println!("{}", serde_json::to_string_pretty(&flipped).context("rendering JSON")?),
            TestOutput::Table => print!("{}", render_flips(args, &scenario.origin, family, now.len(), &flipped)),
        }
        return Ok(());
    }
    if args.all {
        let matrix = matrix(&now, &args.port, args.protocol, family);
        match args.output {
            TestOutput::Json => println!("{}", matrix.to_json()),
            TestOutput::Table => {
                let (connected, total) = matrix.summary();
                println!(
                    "predicted from {}, port {}/{} over {}: . connected, X blocked (rows: from, columns: to)",
                    scenario.origin, args.port, args.protocol, family
                );
                print!("{}", matrix.truth_table());
                println!("{connected}/{total} connected, {} blocked (no packet sent)", total - connected);
            }
        }
        return Ok(());
    }
    match args.output {
        TestOutput::Json => println!("{}", serde_json::to_string_pretty(&now[0]).context("rendering JSON")?),
        TestOutput::Table => print!("{}", render(&scenario.origin, &now[0], &args.port, family)),
    }
    Ok(())
}

/// The predictions as the probe matrix `flowgate lab probe` would report.
fn matrix(predictions: &[Prediction], port: &PortArg, protocol: LabProtocol, family: Family) -> ProbeMatrix {
    let reference = |name: &str| -> PodRef { name.parse().unwrap_or(PodRef::External { name: name.to_owned() }) };
    let mut from: Vec<PodRef> = Vec::new();
    let mut to: Vec<PodRef> = Vec::new();
    let mut results = Vec::new();
    for p in predictions {
        let (f, t) = (reference(&p.from.name), reference(&p.to.name));
        if !from.contains(&f) {
            from.push(f.clone());
        }
        if !to.contains(&t) {
            to.push(t.clone());
        }
        results.push(ProbeResult { from: f, to: t, port: p.port, connected: p.connected });
    }
    ProbeMatrix { port: port.clone(), protocol, family, from, to, results }
}

fn direction_lines(p: &Prediction) -> [(String, &DirectionAnswer); 2] {
    let at = |host: &Host, remote: Option<flowgate_policy::lookup::Remote>| {
        let mut text = host.name.clone();
        if host.endpoint_id != flowgate_policy::NOT_AN_ENDPOINT {
            let _ = write!(text, " (endpoint {}", host.endpoint_id);
            if let Some(r) = remote {
                let _ = write!(text, ", peer identity {}", r.identity);
                if r.cidr_identity != 0 && r.cidr_identity != r.identity {
                    let _ = write!(text, " and CIDR identity {}", r.cidr_identity);
                }
            }
            text.push(')');
        }
        text
    };
    [
        (format!("egress at {}", at(&p.from, p.egress_remote)), &p.egress),
        (format!("ingress at {}", at(&p.to, p.ingress_remote)), &p.ingress),
    ]
}

fn verdict_word(p: &Prediction) -> &'static str {
    let audited = [&p.egress, &p.ingress].iter().any(|d| matches!(d, DirectionAnswer::Audit { .. }));
    match (p.connected, audited) {
        (false, _) => "DENIED",
        (true, true) => "AUDIT (would be denied; audit mode lets it pass)",
        (true, false) => "ALLOWED",
    }
}

fn port_text(p: &Prediction, port: &PortArg) -> String {
    match (port, p.port) {
        (PortArg::Name(name), Some(n)) => format!("{name} ({n})/{}", p.protocol),
        _ => format!("{port}/{}", p.protocol),
    }
}

/// One connection's answer: the verdict, then each direction with what decides it.
fn render(origin: &str, p: &Prediction, port: &PortArg, family: Family) -> String {
    let mut out =
        format!("{} -> {} on {} over {family}: {}\n", p.from.name, p.to.name, port_text(p, port), verdict_word(p));
    match p.shortcut {
        Some(Shortcut::Loopback) => {
            out.push_str("  a pod reaches itself over its loopback: the datapath never sees it\n")
        }
        Some(Shortcut::NoSuchNamedPort) => {
            let _ = writeln!(
                out,
                "  {} declares no container port named {port}/{}: nothing listens",
                p.to.name, p.protocol
            );
        }
        None => {
            for (what, answer) in direction_lines(p) {
                let _ = writeln!(out, "  {what}: {answer}");
            }
        }
    }
    let _ = writeln!(out, "(predicted from {origin}; no packet sent)");
    out
}

/// The connections a change flips, each with the directions whose answer changed.
fn render_flips(args: &TestArgs, origin: &str, family: Family, total: usize, flipped: &[Flip]) -> String {
    let mut change: Vec<String> = args.with.iter().map(|f| format!("with {}", f.display())).collect();
    change.extend(args.without.iter().map(|p| format!("without {p}")));
    let mut out = format!(
        "{}: {} of {total} connections change on {}/{} over {family} (from {origin}; no packet sent)\n",
        change.join(", "),
        flipped.len(),
        args.port,
        args.protocol
    );
    let word = |connected: bool| if connected { "connected" } else { "blocked" };
    for flip in flipped {
        let _ = writeln!(
            out,
            "{} -> {}: {} -> {}",
            flip.after.from.name,
            flip.after.to.name,
            word(flip.before.connected),
            word(flip.after.connected)
        );
        for ((what, before), (_, after)) in direction_lines(&flip.before).into_iter().zip(direction_lines(&flip.after))
        {
            if before != after {
                let _ = writeln!(out, "  {what}:\n    before: {before}\n    after:  {after}");
            }
        }
    }
    out
}
