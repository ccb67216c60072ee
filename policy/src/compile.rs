//! Compiles validated NetworkPolicies against a view of the cluster (namespaces, pods, identities) into a
//! [`PolicyPlan`] (the model is in [`crate::plan`]). The cluster view is defined here because it is the
//! compiler's input and nothing else's: the agent builds one from its endpoints and hands it over.
//!
//! Named ports are resolved against the destination pod's container ports of the same protocol: for
//! ingress the selected pod itself, for egress each peer pod (a wildcard peer expands to every pod that
//! declares the name). For an egress `ipBlock` peer, the destinations with named ports are the pods whose
//! addresses lie in the block (as Kubernetes resolves them); an address outside the cluster has none. Such a
//! pod's address gets a host prefix (`/32`, `/128`) of its own among the CIDR prefixes, with an identity
//! shared with no other prefix, so the entry for its named port admits that address only.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use serde::{Deserialize, Serialize};

use crate::{
    cidr::{CidrIdentities, IpPrefix, parse_cidr},
    plan::{Addr, CidrEntry, DirectionPolicy, EndpointPolicy, PeerMatch, PolicyEntry, PolicyPlan, PolicyRef, Protocol},
    selector::Selector,
    source::LoadedPolicy,
};

/// The label the API server puts on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace and its labels. [`NAMESPACE_NAME_LABEL`] is added when missing, as the API server does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A named or unnamed container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod (endpoint) as the compiler needs it. Pods with identical security labels share an identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// [`NOT_AN_ENDPOINT`] for a pod of another node: it is a peer (selectors, named ports, the ipcache),
    /// never a policy subject.
    pub endpoint_id: u16,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address on a dual-stack cluster.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub identity: u32,
    pub ports: Vec<ContainerPort>,
}

/// The `endpoint_id` of a pod this node does not enforce for (endpoint ids start at 1).
pub const NOT_AN_ENDPOINT: u16 = 0;

/// Everything policy selection depends on. A pod whose namespace is not listed gets a namespace with only
/// the [`NAMESPACE_NAME_LABEL`] label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub namespaces: Vec<NamespaceInfo>,
    pub pods: Vec<PodInfo>,
}

// Beside `PodInfo` rather than in `plan`, so the plan model does not depend on the compiler's input.
impl Addr {
    /// A pod of the cluster view as one side of a connection, for [`PolicyPlan::evaluate`].
    #[must_use]
    pub fn endpoint(pod: &PodInfo) -> Self {
        Self::endpoint_at(pod, IpAddr::V4(pod.ip))
    }

    /// A pod of the cluster view at one of its addresses (IPv4 or IPv6).
    #[must_use]
    pub fn endpoint_at(pod: &PodInfo, ip: IpAddr) -> Self {
        Addr::Endpoint { endpoint_id: pod.endpoint_id, identity: pod.identity, ip }
    }
}

/// Whether a spec isolates ingress and egress: explicit non-empty `policyTypes` are honored; otherwise
/// Ingress always, plus Egress when the spec has egress rules (the API server's defaulting).
#[must_use]
pub fn policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress")),
        _ => (true, spec.egress.as_ref().is_some_and(|rules| !rules.is_empty())),
    }
}

/// Compiles `policies` (already validated; anything invalid left in them allows nothing) against
/// `cluster`. CIDR identities come from `cidr_identities`, which keeps them stable across compilations.
/// The policies may be owned or shared (`Arc<LoadedPolicy>`, as the agent keeps them). [`PolicyCompiler`]
/// gives the same plan, compiling again only the policies a change concerns.
#[must_use]
pub fn compile<P: Borrow<LoadedPolicy>>(
    policies: &[P],
    cluster: &ClusterView,
    cidr_identities: &mut CidrIdentities,
) -> PolicyPlan {
    let cidrs = collect_cidrs(policies, &cluster.pods, cidr_identities);
    let view = View::new(cluster, &cidrs);
    let shares: Vec<PolicyShare> = policies.iter().map(|loaded| PolicyShare::compile(loaded.borrow(), &view)).collect();
    let endpoints = plan_endpoints(&cluster.pods, &shares);
    PolicyPlan { cidrs, endpoints }
}

/// One policy's part of a plan, compiled against a cluster view: the endpoints it selects, whether it
/// isolates their ingress and egress, and the entries it allows them. Egress entries, and ingress entries
/// but those of named ports, are the same for every endpoint it selects: they are kept once.
#[derive(Clone, Debug)]
struct PolicyShare {
    policy_ref: PolicyRef,
    isolates_ingress: bool,
    isolates_egress: bool,
    // Kept as sorted slices, not sets: the per-policy compiler keeps a share for every policy, most of them
    // a handful of entries, and a set's smallest node is several hundred bytes.
    /// The endpoints of the node it selects (its podSelector, in its namespace).
    subjects: Box<[u16]>,
    ingress: Box<[EntryKey]>,
    /// Ingress entries of named ports, resolved against each selected endpoint (only those with some),
    /// by endpoint id.
    ingress_named: Box<[(u16, Box<[EntryKey]>)]>,
    egress: Box<[EntryKey]>,
}

impl PolicyShare {
    fn compile(loaded: &LoadedPolicy, view: &View<'_>) -> Self {
        let namespace = loaded.namespace();
        let default_spec = NetworkPolicySpec::default();
        let spec = loaded.policy.spec.as_ref().unwrap_or(&default_spec);
        let (isolates_ingress, isolates_egress) = policy_types(spec);
        let mut share = Self {
            policy_ref: loaded.policy_ref(),
            isolates_ingress,
            isolates_egress,
            subjects: Box::default(),
            ingress: Box::default(),
            ingress_named: Box::default(),
            egress: Box::default(),
        };
        let selected: Vec<&PodInfo> =
            selected_among(loaded, view.pods).into_iter().filter(|pod| pod.endpoint_id != NOT_AN_ENDPOINT).collect();
        if selected.is_empty() {
            return share;
        }
        share.subjects = selected.iter().map(|pod| pod.endpoint_id).collect::<BTreeSet<u16>>().into_iter().collect();
        let (mut ingress, mut ingress_named, mut egress) = (BTreeSet::new(), BTreeMap::new(), BTreeSet::new());
        if isolates_ingress {
            for rule in spec.ingress.iter().flatten() {
                let rule = Rule::resolve(rule.from.as_deref(), rule.ports.as_deref(), namespace, view);
                rule.add_ingress_entries(&mut ingress);
                for pod in &selected {
                    let mut named = BTreeSet::new();
                    rule.add_ingress_named_entries(pod, &mut named);
                    if !named.is_empty() {
                        ingress_named.entry(pod.endpoint_id).or_insert_with(BTreeSet::new).append(&mut named);
                    }
                }
            }
        }
        if isolates_egress {
            for rule in spec.egress.iter().flatten() {
                Rule::resolve(rule.to.as_deref(), rule.ports.as_deref(), namespace, view)
                    .add_egress_entries(view, &mut egress);
            }
        }
        share.ingress = ingress.into_iter().collect();
        share.ingress_named = ingress_named.into_iter().map(|(id, keys)| (id, keys.into_iter().collect())).collect();
        share.egress = egress.into_iter().collect();
        share
    }

    /// The ingress entries of named ports resolved for endpoint `id`.
    fn ingress_named(&self, id: u16) -> &[EntryKey] {
        self.ingress_named.binary_search_by_key(&id, |(named, _)| *named).map_or(&[], |i| &self.ingress_named[i].1)
    }
}

/// Every endpoint of `pods` with what `shares` select and allow it.
fn plan_endpoints<'s>(
    pods: &[PodInfo],
    shares: impl IntoIterator<Item = &'s PolicyShare>,
) -> BTreeMap<u16, EndpointPolicy> {
    let mut builders: BTreeMap<u16, (&PodInfo, DirectionBuilder, DirectionBuilder)> = pods
        .iter()
        .filter(|pod| pod.endpoint_id != NOT_AN_ENDPOINT)
        .map(|pod| (pod.endpoint_id, (pod, DirectionBuilder::default(), DirectionBuilder::default())))
        .collect();
    for share in shares {
        for id in share.subjects.iter() {
            let Some((_, ingress, egress)) = builders.get_mut(id) else {
                continue;
            };
            if share.isolates_ingress {
                ingress.select(&share.policy_ref);
                for key in share.ingress.iter().chain(share.ingress_named(*id)) {
                    ingress.allow(*key, &share.policy_ref);
                }
            }
            if share.isolates_egress {
                egress.select(&share.policy_ref);
                for key in share.egress.iter() {
                    egress.allow(*key, &share.policy_ref);
                }
            }
        }
    }
    builders
        .into_iter()
        .map(|(id, (pod, ingress, egress))| {
            (
                id,
                EndpointPolicy {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    identity: pod.identity,
                    ip: pod.ip,
                    ipv6: pod.ipv6,
                    ingress: ingress.finish(),
                    egress: egress.finish(),
                },
            )
        })
        .collect()
}

/// The pods `loaded` selects (its podSelector, in its namespace): the subjects compilation gives its rules.
/// A selector that does not parse selects nothing.
#[must_use]
pub fn selected_pods<'a>(loaded: &LoadedPolicy, cluster: &'a ClusterView) -> Vec<&'a PodInfo> {
    selected_among(loaded, &cluster.pods)
}

/// The pods of `pods` that `loaded` selects, as [`selected_pods`].
fn selected_among<'a>(loaded: &LoadedPolicy, pods: &'a [PodInfo]) -> Vec<&'a PodInfo> {
    let namespace = loaded.namespace();
    let everything = LabelSelector::default();
    let selector = loaded.policy.spec.as_ref().and_then(|s| s.pod_selector.as_ref()).unwrap_or(&everything);
    let Ok(pod_selector) = Selector::from_label_selector(selector) else {
        return Vec::new();
    };
    pods.iter().filter(|pod| pod.namespace == namespace && pod_selector.matches(&pod.labels)).collect()
}

/// The pods of `cluster` that a rule's `peers` (of a policy in `namespace`) select, as compilation resolves
/// them: a podSelector and/or namespaceSelector peer its pods, an `ipBlock` peer the pods whose addresses it
/// holds. An empty list means every peer, pods or not, and gives every pod.
#[must_use]
pub fn peer_pods<'a>(peers: &[NetworkPolicyPeer], namespace: &str, cluster: &'a ClusterView) -> Vec<&'a PodInfo> {
    if peers.is_empty() {
        return cluster.pods.iter().collect();
    }
    let view = View::new(cluster, &[]);
    let mut out: Vec<&PodInfo> = Vec::new();
    for peer in peers {
        let pods: Vec<&PodInfo> = match Peer::resolve(peer, namespace, &view) {
            Peer::Any => cluster.pods.iter().collect(),
            Peer::Pods(pods) => pods,
            Peer::Cidrs(_, block) => {
                cluster.pods.iter().filter(|pod| pod_addresses(pod).any(|ip| block.holds(ip))).collect()
            }
        };
        for pod in pods {
            if !out.iter().any(|p| std::ptr::eq(*p, pod)) {
                out.push(pod);
            }
        }
    }
    out
}

/// Whether an `ipBlock` holds `ip` (inside its CIDR, outside every except); an unparsable block holds nothing.
#[must_use]
pub fn block_holds(block: &k8s_openapi::api::networking::v1::IPBlock, ip: IpAddr) -> bool {
    Block::parse(block).is_some_and(|b| b.holds(ip))
}

/// An `ipBlock` of either family: the block and its excepts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Block {
    cidr: IpPrefix,
    excepts: Vec<IpPrefix>,
}

impl Block {
    /// `None` for an unparsable block (it matches nothing; validation reports it).
    fn parse(block: &k8s_openapi::api::networking::v1::IPBlock) -> Option<Self> {
        let cidr = parse_cidr(&block.cidr).ok()?;
        let excepts = block.except.iter().flatten().filter_map(|text| parse_cidr(text).ok()).collect();
        Some(Self { cidr, excepts })
    }

    /// Whether the addresses whose longest prefix is `prefix` are in this block (never across families).
    fn selects(&self, prefix: &IpPrefix) -> bool {
        self.cidr.contains(prefix) && !self.excepts.iter().any(|e| e.contains(prefix))
    }

    /// Whether the block holds the address `ip` (inside it, outside every except).
    fn holds(&self, ip: IpAddr) -> bool {
        self.selects(&IpPrefix::host(ip))
    }
}

/// Every prefix of every `ipBlock` (`cidr` and `except`), plus `0.0.0.0/0` and `::/0`, with identities.
///
/// Prefixes that exactly the same rules select (through any of their `ipBlock` peers) share a policy
/// identity: every rule allows all of them or none, so the policy maps need one entry for all of them
/// (a rule of 2000 /32 blocks is one identity, not 2000). Records still carry each prefix's own identity.
fn collect_cidrs<P: Borrow<LoadedPolicy>>(
    policies: &[P],
    pods: &[PodInfo],
    identities: &mut CidrIdentities,
) -> Vec<CidrEntry> {
    let mut prefixes = BTreeSet::from([IpPrefix::ANY_V4, IpPrefix::ANY_V6]);
    // Host prefixes of pods reached through an egress `ipBlock` on a named port they declare: each keeps an
    // identity of its own, so the named port's entry admits that address only.
    let mut own: BTreeSet<IpPrefix> = BTreeSet::new();
    // The blocks of each rule that has some, once per distinct set.
    let mut rules: BTreeSet<Vec<Block>> = BTreeSet::new();
    for loaded in policies {
        let Some(spec) = &loaded.borrow().policy.spec else {
            continue;
        };
        let peer_lists = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| r.from.as_deref())
            .chain(spec.egress.iter().flatten().map(|r| r.to.as_deref()));
        for peers in peer_lists {
            let mut blocks = BTreeSet::new();
            for block in peers.into_iter().flatten().filter_map(|peer| peer.ip_block.as_ref()) {
                for text in std::iter::once(&block.cidr).chain(block.except.iter().flatten()) {
                    if let Ok(prefix) = parse_cidr(text) {
                        prefixes.insert(prefix);
                    }
                }
                blocks.extend(Block::parse(block));
            }
            if !blocks.is_empty() {
                rules.insert(blocks.into_iter().collect());
            }
        }
        for rule in spec.egress.iter().flatten() {
            let named: Vec<(Protocol, &str)> = rule
                .ports
                .iter()
                .flatten()
                .filter_map(|port| match Port::resolve(port) {
                    Port::Named(protocol, _) => match &port.port {
                        Some(IntOrString::String(name)) => Some((protocol, name.as_str())),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            if named.is_empty() {
                continue;
            }
            let blocks: Vec<Block> =
                rule.to.iter().flatten().filter_map(|peer| peer.ip_block.as_ref()).filter_map(Block::parse).collect();
            if blocks.is_empty() {
                continue;
            }
            for pod in pods {
                let declares =
                    named.iter().any(|(protocol, name)| named_port_numbers(pod, *protocol, name).next().is_some());
                if !declares {
                    continue;
                }
                for ip in pod_addresses(pod).filter(|ip| blocks.iter().any(|b| b.holds(*ip))) {
                    prefixes.insert(IpPrefix::host(ip));
                    own.insert(IpPrefix::host(ip));
                }
            }
        }
    }
    let rules: Vec<Vec<Block>> = rules.into_iter().collect();
    // Prefixes by the rules that select them; a prefix no rule selects matches no peer and keeps its own.
    let mut by_rules: BTreeMap<Vec<usize>, Vec<IpPrefix>> = BTreeMap::new();
    for prefix in &prefixes {
        let selected_by: Vec<usize> =
            (0..rules.len()).filter(|&i| rules[i].iter().any(|block| block.selects(prefix))).collect();
        if !selected_by.is_empty() {
            by_rules.entry(selected_by).or_default().push(*prefix);
        }
    }
    let mut shared: BTreeMap<IpPrefix, u32> = BTreeMap::new();
    for members in by_rules.values_mut() {
        members.retain(|prefix| !own.contains(prefix));
    }
    for members in by_rules.values().filter(|members| members.len() > 1) {
        let identity = identities.shared_identity_for(members);
        shared.extend(members.iter().map(|prefix| (*prefix, identity)));
    }
    prefixes
        .into_iter()
        .map(|prefix| {
            let identity = identities.identity_for(prefix);
            CidrEntry { prefix, identity, policy_identity: shared.get(&prefix).copied().unwrap_or(identity) }
        })
        .collect()
}

/// The cluster indexed for selection.
struct View<'a> {
    pods: &'a [PodInfo],
    namespace_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
    cidrs: &'a [CidrEntry],
}

impl<'a> View<'a> {
    fn new(cluster: &'a ClusterView, cidrs: &'a [CidrEntry]) -> Self {
        let mut namespace_labels: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        for namespace in &cluster.namespaces {
            namespace_labels.insert(namespace.name.as_str(), namespace.labels.clone());
        }
        for pod in &cluster.pods {
            namespace_labels.entry(pod.namespace.as_str()).or_default();
        }
        for (name, labels) in &mut namespace_labels {
            labels.entry(NAMESPACE_NAME_LABEL.to_owned()).or_insert_with(|| (*name).to_owned());
        }
        Self { pods: &cluster.pods, namespace_labels, cidrs }
    }

    /// The policy identity of `ip`'s own host prefix, if the CIDR prefixes have one for it.
    fn host_identity(&self, ip: IpAddr) -> Option<u32> {
        let host = IpPrefix::host(ip);
        self.cidrs.iter().find(|c| c.prefix == host).map(CidrEntry::policy_identity)
    }

    fn namespace_matches(&self, namespace: &str, selector: &Selector) -> bool {
        self.namespace_labels.get(namespace).is_some_and(|labels| selector.matches(labels))
    }
}

/// A peer resolved against the cluster.
enum Peer<'a> {
    /// No `from`/`to`, or an empty list: everyone.
    Any,
    /// Pods selected by podSelector and/or namespaceSelector.
    Pods(Vec<&'a PodInfo>),
    /// An `ipBlock`: the policy identities of the CIDR prefixes that lie inside the block and outside every
    /// except, and the block itself (for the pods whose addresses it holds, when a port is named).
    Cidrs(Vec<u32>, Block),
}

impl<'a> Peer<'a> {
    fn resolve(peer: &NetworkPolicyPeer, policy_namespace: &str, view: &View<'a>) -> Self {
        if let Some(block) = &peer.ip_block {
            let Some(block) = Block::parse(block) else {
                return Peer::Pods(Vec::new());
            };
            let identities: BTreeSet<u32> =
                view.cidrs.iter().filter(|c| block.selects(&c.prefix)).map(CidrEntry::policy_identity).collect();
            return Peer::Cidrs(identities.into_iter().collect(), block);
        }
        let selector = |s: &LabelSelector| Selector::from_label_selector(s).ok();
        let pod_selector = match &peer.pod_selector {
            Some(s) => match selector(s) {
                Some(s) => Some(s),
                None => return Peer::Pods(Vec::new()),
            },
            None => None,
        };
        let pods = match &peer.namespace_selector {
            // podSelector alone: pods of the policy's own namespace.
            None => match pod_selector {
                Some(pod_selector) => view
                    .pods
                    .iter()
                    .filter(|pod| pod.namespace == policy_namespace && pod_selector.matches(&pod.labels))
                    .collect(),
                None => Vec::new(),
            },
            // namespaceSelector (with podSelector AND-ed when present).
            Some(namespace_selector) => {
                let Some(namespace_selector) = selector(namespace_selector) else {
                    return Peer::Pods(Vec::new());
                };
                let pod_selector = pod_selector.unwrap_or_default();
                view.pods
                    .iter()
                    .filter(|pod| {
                        view.namespace_matches(&pod.namespace, &namespace_selector) && pod_selector.matches(&pod.labels)
                    })
                    .collect()
            }
        };
        Peer::Pods(pods)
    }
}

/// A rule's port item.
enum Port {
    /// No `ports`, or an empty list: every protocol and port.
    All,
    /// A protocol with a port range, or every port when `None`.
    Numeric(Protocol, Option<(u16, u16)>),
    /// A named container port, resolved against the destination pod.
    Named(Protocol, String),
    /// Invalid (unvalidated input): matches nothing.
    Nothing,
}

impl Port {
    fn resolve(port: &NetworkPolicyPort) -> Self {
        let Some(protocol) = Protocol::from_api(port.protocol.as_deref().unwrap_or("TCP")) else {
            return Port::Nothing;
        };
        match &port.port {
            None => Port::Numeric(protocol, None),
            Some(IntOrString::Int(number)) => {
                let end = port.end_port.unwrap_or(*number);
                match (u16::try_from(*number), u16::try_from(end)) {
                    // Every usable port: the protocol alone, one map entry instead of 16 port prefixes. Port 0
                    // is the only difference, and no socket listens on port 0.
                    (Ok(1), Ok(u16::MAX)) => Port::Numeric(protocol, None),
                    (Ok(lo), Ok(hi)) if lo >= 1 && hi >= lo => Port::Numeric(protocol, Some((lo, hi))),
                    _ => Port::Nothing,
                }
            }
            Some(IntOrString::String(name)) => Port::Named(protocol, name.clone()),
        }
    }
}

/// The numbers `pod` declares for the port `name` over `protocol`.
fn named_port_numbers<'p>(pod: &'p PodInfo, protocol: Protocol, name: &'p str) -> impl Iterator<Item = u16> + 'p {
    pod.ports.iter().filter(move |p| p.protocol == protocol && p.name.as_deref() == Some(name)).map(|p| p.port)
}

/// A pod's addresses: IPv4, and IPv6 on a dual-stack cluster.
fn pod_addresses(pod: &PodInfo) -> impl Iterator<Item = IpAddr> + '_ {
    std::iter::once(IpAddr::V4(pod.ip)).chain(pod.ipv6.map(IpAddr::V6))
}

/// One rule with its peers and ports resolved (once per policy, shared by every selected pod).
struct Rule<'a> {
    peers: Vec<Peer<'a>>,
    ports: Vec<Port>,
}

/// The L4 part of an entry: protocol (`None` = any) and port range (`None` = any).
type L4 = (Option<Protocol>, Option<(u16, u16)>);

type EntryKey = (PeerMatch, Option<Protocol>, Option<(u16, u16)>);

impl<'a> Rule<'a> {
    fn resolve(
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        policy_namespace: &str,
        view: &View<'a>,
    ) -> Self {
        let peers = match peers {
            None | Some([]) => vec![Peer::Any],
            Some(peers) => peers.iter().map(|p| Peer::resolve(p, policy_namespace, view)).collect(),
        };
        let ports = match ports {
            None | Some([]) => vec![Port::All],
            Some(ports) => ports.iter().map(Port::resolve).collect(),
        };
        Self { peers, ports }
    }

    /// The peers' identities, ignoring named ports.
    fn peer_matches(&self) -> BTreeSet<PeerMatch> {
        let mut matches = BTreeSet::new();
        for peer in &self.peers {
            match peer {
                Peer::Any => {
                    matches.insert(PeerMatch::Any);
                }
                Peer::Pods(pods) => matches.extend(pods.iter().map(|p| PeerMatch::Identity(p.identity))),
                Peer::Cidrs(ids, _) => matches.extend(ids.iter().map(|id| PeerMatch::Identity(*id))),
            }
        }
        matches
    }

    /// Ingress entries but those of named ports: the same for every selected pod.
    fn add_ingress_entries(&self, out: &mut BTreeSet<EntryKey>) {
        let peers = self.peer_matches();
        for port in &self.ports {
            let l4: L4 = match port {
                Port::All => (None, None),
                Port::Numeric(protocol, range) => (Some(*protocol), *range),
                Port::Named(..) | Port::Nothing => continue,
            };
            out.extend(peers.iter().map(|peer| (*peer, l4.0, l4.1)));
        }
    }

    /// Ingress entries of named ports: the destination is the selected pod, so they resolve against it.
    fn add_ingress_named_entries(&self, destination: &PodInfo, out: &mut BTreeSet<EntryKey>) {
        let mut peers = None;
        for port in &self.ports {
            let Port::Named(protocol, name) = port else { continue };
            for number in named_port_numbers(destination, *protocol, name) {
                let peers = peers.get_or_insert_with(|| self.peer_matches());
                out.extend(peers.iter().map(|peer| (*peer, Some(*protocol), Some((number, number)))));
            }
        }
    }

    /// Egress: the destinations are the peers, so named ports resolve against each peer pod.
    fn add_egress_entries(&self, view: &View<'_>, out: &mut BTreeSet<EntryKey>) {
        let peers = self.peer_matches();
        for port in &self.ports {
            match port {
                Port::All => out.extend(peers.iter().map(|peer| (*peer, None, None))),
                Port::Numeric(protocol, range) => out.extend(peers.iter().map(|peer| (*peer, Some(*protocol), *range))),
                Port::Named(protocol, name) => {
                    for peer in &self.peers {
                        let pods: &[&PodInfo] = match peer {
                            Peer::Pods(pods) => pods,
                            // A wildcard peer: every pod that declares the name.
                            Peer::Any => &view.pods.iter().collect::<Vec<_>>(),
                            Peer::Cidrs(_, block) => {
                                // The pods whose addresses the block holds have named ports; each address
                                // is admitted by its own host prefix's identity. Outside addresses have none.
                                for pod in view.pods {
                                    for ip in pod_addresses(pod).filter(|ip| block.holds(*ip)) {
                                        let Some(host) = view.host_identity(ip) else { continue };
                                        for number in named_port_numbers(pod, *protocol, name) {
                                            out.insert((
                                                PeerMatch::Identity(host),
                                                Some(*protocol),
                                                Some((number, number)),
                                            ));
                                        }
                                    }
                                }
                                continue;
                            }
                        };
                        for pod in pods {
                            for number in named_port_numbers(pod, *protocol, name) {
                                out.insert((
                                    PeerMatch::Identity(pod.identity),
                                    Some(*protocol),
                                    Some((number, number)),
                                ));
                            }
                        }
                    }
                }
                Port::Nothing => {}
            }
        }
    }
}

/// Accumulates one direction of one endpoint.
#[derive(Default)]
struct DirectionBuilder {
    enforced: bool,
    selected_by: BTreeSet<PolicyRef>,
    entries: BTreeMap<EntryKey, BTreeSet<PolicyRef>>,
}

impl DirectionBuilder {
    fn select(&mut self, policy: &PolicyRef) {
        self.enforced = true;
        self.selected_by.insert(policy.clone());
    }

    fn allow(&mut self, key: EntryKey, policy: &PolicyRef) {
        self.entries.entry(key).or_default().insert(policy.clone());
    }

    fn finish(self) -> DirectionPolicy {
        DirectionPolicy {
            enforced: self.enforced,
            selected_by: self.selected_by.into_iter().collect(),
            entries: self
                .entries
                .into_iter()
                .map(|((peer, protocol, ports), by)| PolicyEntry {
                    peer,
                    protocol,
                    ports,
                    allowed_by: by.into_iter().collect(),
                })
                .collect(),
        }
    }
}

mod incremental;
#[cfg(test)]
mod tests;

pub use incremental::PolicyCompiler;
