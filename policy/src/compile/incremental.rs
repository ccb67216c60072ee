//! Compilation that costs what a change changes: [`PolicyCompiler`] keeps each policy's share of the plan
//! (the endpoints it selects and the entries it allows them) with what that share was resolved from, and
//! compiles a policy again only when the policy itself changed or a change of the cluster concerns it: a
//! pod (before or after the change) that its podSelector or one of its peers selects, a namespace whose
//! labels one of its namespaceSelectors matches (before or after), or the CIDR prefixes' identities for a
//! policy with `ipBlock` peers. One new policy among a thousand compiles one policy; a pod's new label
//! compiles the policies that select it (or it them). The plan is then merged from the shares, which reads
//! no selector. It is the plan [`compile`](super::compile()) gives (the compile tests check every case
//! both ways).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{ClusterView, PodInfo, PolicyShare, View, collect_cidrs, plan_endpoints};
use crate::{
    cidr::CidrIdentities,
    plan::{CidrEntry, PolicyPlan},
    selector::Selector,
    source::LoadedPolicy,
};

type Labels = BTreeMap<String, String>;

/// Compiles policy sets like [`compile`](super::compile()), keeping each policy's compiled share for the
/// next set while nothing it was resolved from changed (see the module documentation).
#[derive(Debug, Default)]
pub struct PolicyCompiler {
    /// The shares of the last set, in its order.
    compiled: Vec<Compiled>,
    /// What the shares were resolved against.
    cluster: Arc<ClusterView>,
    namespace_labels: BTreeMap<String, Labels>,
    cidrs: Vec<CidrEntry>,
    /// How many policies the last call compiled (the others' shares were kept).
    last_compiled: usize,
}

/// One policy with its share and what the share depends on.
#[derive(Debug)]
struct Compiled {
    policy: Arc<LoadedPolicy>,
    share: PolicyShare,
    dependencies: Dependencies,
}

impl PolicyCompiler {
    /// The plan of `policies` for `cluster`, as [`compile`](super::compile()) gives it.
    pub fn compile(
        &mut self,
        policies: &[Arc<LoadedPolicy>],
        cluster: &ClusterView,
        cidr_identities: &mut CidrIdentities,
    ) -> PolicyPlan {
        self.compile_shared(policies, &Arc::new(cluster.clone()), cidr_identities)
    }

    /// [`Self::compile`] for a view the caller shares: kept for the next call without a copy.
    pub fn compile_shared(
        &mut self,
        policies: &[Arc<LoadedPolicy>],
        cluster: &Arc<ClusterView>,
        cidr_identities: &mut CidrIdentities,
    ) -> PolicyPlan {
        let cidrs = collect_cidrs(policies, &cluster.pods, cidr_identities);
        let view = View::new(cluster, &cidrs);
        let changes = Changes::between(
            (&self.cluster.pods, &self.namespace_labels),
            (&cluster.pods, &view.namespace_labels),
            self.cidrs != cidrs,
        );
        // The share of the same policy: the same `Arc` (an unchanged file, a policy the API server sent
        // again), else one of the same namespace, name and spec.
        let old = std::mem::take(&mut self.compiled);
        let by_address: HashMap<*const LoadedPolicy, usize> =
            old.iter().enumerate().map(|(i, c)| (Arc::as_ptr(&c.policy), i)).collect();
        let mut by_name: Option<HashMap<(&str, &str), Vec<usize>>> = None;
        let mut taken = vec![false; old.len()];
        let mut found = Vec::with_capacity(policies.len());
        for policy in policies {
            let same = by_address.get(&Arc::as_ptr(policy)).copied().filter(|&i| !taken[i]).or_else(|| {
                let by_name = by_name.get_or_insert_with(|| {
                    let mut by_name: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
                    for (i, c) in old.iter().enumerate() {
                        by_name.entry((c.policy.namespace(), c.policy.name())).or_default().push(i);
                    }
                    by_name
                });
                by_name
                    .get(&(policy.namespace(), policy.name()))?
                    .iter()
                    .copied()
                    .find(|&i| !taken[i] && old[i].policy.policy.spec == policy.policy.spec)
            });
            if let Some(i) = same {
                taken[i] = true;
            }
            found.push(same);
        }
        let mut old: Vec<Option<Compiled>> = old.into_iter().map(Some).collect();
        self.last_compiled = 0;
        let mut compiled = Vec::with_capacity(policies.len());
        for (policy, same) in policies.iter().zip(found) {
            match same.and_then(|i| old[i].take()).filter(|c| !changes.concern(&c.dependencies)) {
                Some(c) => compiled.push(Compiled { policy: Arc::clone(policy), ..c }),
                None => {
                    self.last_compiled += 1;
                    compiled.push(Compiled {
                        policy: Arc::clone(policy),
                        share: PolicyShare::compile(policy, &view),
                        dependencies: Dependencies::of(policy),
                    });
                }
            }
        }
        let endpoints = plan_endpoints(&cluster.pods, compiled.iter().map(|c| &c.share));
        self.namespace_labels =
            view.namespace_labels.iter().map(|(name, labels)| ((*name).to_owned(), labels.clone())).collect();
        self.compiled = compiled;
        self.cluster = Arc::clone(cluster);
        self.cidrs.clone_from(&cidrs);
        PolicyPlan { cidrs, endpoints }
    }

    /// How many policies the last [`Self::compile`] compiled; the others' shares were kept.
    #[must_use]
    pub fn last_compiled(&self) -> usize {
        self.last_compiled
    }
}

/// What a policy's share was resolved from, besides the policy.
#[derive(Debug)]
struct Dependencies {
    namespace: String,
    /// The podSelector of its subjects; `None` when it does not parse (it selects nothing).
    subjects: Option<Selector>,
    /// Each peer that selects pods: its namespaceSelector (`None`: the policy's namespace) and podSelector.
    peers: Vec<(Option<Selector>, Selector)>,
    /// A named egress port towards every peer or an `ipBlock`: resolved against every pod's ports.
    every_pod: bool,
    /// An `ipBlock` peer: the identities of the CIDR prefixes.
    cidrs: bool,
}

impl Dependencies {
    fn of(loaded: &LoadedPolicy) -> Self {
        let spec = loaded.policy.spec.as_ref();
        let everything = LabelSelector::default();
        let subjects = spec.and_then(|s| s.pod_selector.as_ref()).unwrap_or(&everything);
        let mut dependencies = Self {
            namespace: loaded.namespace().to_owned(),
            subjects: Selector::from_label_selector(subjects).ok(),
            peers: Vec::new(),
            every_pod: false,
            cidrs: false,
        };
        let ingress = spec.into_iter().flat_map(|s| s.ingress.iter().flatten()).map(|r| (r.from.as_deref(), None));
        let egress =
            spec.into_iter().flat_map(|s| s.egress.iter().flatten()).map(|r| (r.to.as_deref(), r.ports.as_deref()));
        for (peers, egress_ports) in ingress.chain(egress) {
            dependencies.add_rule(peers, egress_ports);
        }
        dependencies
    }

    /// A rule's peers; `egress_ports` are the ports of an egress rule (named ones resolve against peers).
    fn add_rule(&mut self, peers: Option<&[NetworkPolicyPeer]>, egress_ports: Option<&[NetworkPolicyPort]>) {
        let named = egress_ports.into_iter().flatten().any(|port| matches!(port.port, Some(IntOrString::String(_))));
        let Some(peers) = peers.filter(|peers| !peers.is_empty()) else {
            self.every_pod |= named;
            return;
        };
        let parse = |selector: &LabelSelector| Selector::from_label_selector(selector).ok();
        for peer in peers {
            if peer.ip_block.is_some() {
                self.cidrs = true;
                self.every_pod |= named;
                continue;
            }
            // A selector that does not parse selects nothing, whatever the cluster holds.
            let pods = match &peer.pod_selector {
                Some(selector) => match parse(selector) {
                    Some(selector) => Some(selector),
                    None => continue,
                },
                None => None,
            };
            match (&peer.namespace_selector, pods) {
                (None, Some(pods)) => self.peers.push((None, pods)),
                (None, None) => {}
                (Some(namespaces), pods) => {
                    if let Some(namespaces) = parse(namespaces) {
                        self.peers.push((Some(namespaces), pods.unwrap_or_default()));
                    }
                }
            }
        }
    }

    /// Whether the policy selects `pod` (with `namespace_labels`, its namespace's) as a subject or a peer.
    fn on_pod(&self, pod: &PodInfo, namespace_labels: Option<&Labels>) -> bool {
        let own_namespace = pod.namespace == self.namespace;
        self.every_pod
            || (own_namespace && self.subjects.as_ref().is_some_and(|s| s.matches(&pod.labels)))
            || self.peers.iter().any(|(namespaces, pods)| {
                pods.matches(&pod.labels)
                    && match namespaces {
                        None => own_namespace,
                        Some(namespaces) => namespace_labels.is_some_and(|labels| namespaces.matches(labels)),
                    }
            })
    }

    /// Whether one of the policy's namespaceSelectors matches `labels`.
    fn on_namespace(&self, labels: &Labels) -> bool {
        self.peers.iter().any(|(namespaces, _)| namespaces.as_ref().is_some_and(|n| n.matches(labels)))
    }
}

/// What changed in the cluster between two compilations.
struct Changes<'a> {
    /// The pods' lists could not be compared pod by pod (a name twice): every share is compiled again.
    everything: bool,
    /// Pods added, removed or changed (both versions of a changed one), with their namespace's labels.
    pods: Vec<(&'a PodInfo, Option<&'a Labels>)>,
    /// The labels before and after of namespaces whose labels changed (appeared, went).
    namespaces: Vec<&'a Labels>,
    cidrs: bool,
}

impl<'a> Changes<'a> {
    fn between(
        before: (&'a [PodInfo], &'a BTreeMap<String, Labels>),
        after: (&'a [PodInfo], &'a BTreeMap<&'a str, Labels>),
        cidrs: bool,
    ) -> Self {
        let by_name = |pods: &'a [PodInfo]| -> BTreeMap<(&'a str, &'a str), &'a PodInfo> {
            pods.iter().map(|pod| ((pod.namespace.as_str(), pod.name.as_str()), pod)).collect()
        };
        let (old, new) = (by_name(before.0), by_name(after.0));
        let everything = old.len() != before.0.len() || new.len() != after.0.len();
        let labels_before = |namespace: &str| before.1.get(namespace);
        let labels_after = |namespace: &str| after.1.get(namespace);
        let mut pods = Vec::new();
        for (key, pod) in &old {
            if new.get(key) != Some(pod) {
                pods.push((*pod, labels_before(&pod.namespace)));
            }
        }
        for (key, pod) in &new {
            if old.get(key) != Some(pod) {
                pods.push((*pod, labels_after(&pod.namespace)));
            }
        }
        let mut namespaces = Vec::new();
        for (name, labels) in before.1 {
            if labels_after(name) != Some(labels) {
                namespaces.push(labels);
            }
        }
        for (name, labels) in after.1 {
            if before.1.get(*name) != Some(labels) {
                namespaces.push(labels);
            }
        }
        Self { everything, pods, namespaces, cidrs }
    }

    /// Whether a share resolved with `dependencies` may differ after these changes.
    fn concern(&self, dependencies: &Dependencies) -> bool {
        self.everything
            || (self.cidrs && dependencies.cidrs)
            || self.pods.iter().any(|(pod, labels)| dependencies.on_pod(pod, *labels))
            || self.namespaces.iter().any(|labels| dependencies.on_namespace(labels))
    }
}
