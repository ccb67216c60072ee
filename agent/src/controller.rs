//! The controller owns the datapath and keeps it in line with the node: it registers the lab's pods as
//! endpoints and attaches the programs to them, follows the topology file (label changes re-derive
//! identities) and the policy directory (changes are compiled and applied as a new generation), and
//! answers the requests that need the datapath (`policy get`, `endpoint config`, `conntrack list`).
//!
//! In Kubernetes mode ([`Controller::use_kubernetes`]) labels, pods and policies come from the API server
//! instead ([`Controller::sync_cluster`], fed by [`follow_cluster`]); a pod's interface is the one its host
//! route uses in the node's namespace (the lab's node namespace for now).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use flowgate_common::{
    identity,
    policy::{POLICY_PREFIX_PEER, POLICY_PREFIX_PROTOCOL, direction},
};
use flowgate_events::enrich::PolicyLookup as _;
use flowgate_lab::{state::LabState, topology::Topology};
use flowgate_policy::{
    ClusterView, ContainerPort, NOT_AN_ENDPOINT, NamespaceInfo, PodInfo, Protocol as PolicyProtocol,
};
use flowgate_proto::{
    endpoint::{Endpoint, EndpointState, Enforcement, NewEndpoint},
    flow::Protocol,
    message::{ConntrackEntry, EndpointPolicy, PolicyEntryView, PolicyStatus, Response},
};
use log::{info, warn};

use crate::{
    api::PolicyControl,
    datapath::{self, Datapath, DatapathError, KernelCounters},
    kubernetes::{ClusterIdentities, ClusterState, KubeSource, PodRecord, Pods, identities::IdentityError},
    policy::PolicyEngine,
    state::{AgentState, RemotePod},
    watch::{ChangeNotifier, Watched},
};

/// Mutable core of the agent, shared behind a mutex.
pub struct Controller {
    datapath: Datapath,
    engine: PolicyEngine,
    state: Arc<AgentState>,
    lab: LabState,
    node_netns: PathBuf,
    topology: Option<Watched>,
    policies: Option<Watched>,
    /// Kubernetes mode: what the API server said last.
    cluster: Option<ClusterMode>,
}

/// What the controller knows in Kubernetes mode.
struct ClusterMode {
    /// This node's name (`spec.nodeName` of the pods it enforces for).
    node: String,
    /// The cluster as last synced; `None` until the first full list.
    state: Option<ClusterState>,
    /// This node's pods registered as endpoints: (namespace, name) -> endpoint id.
    endpoints: BTreeMap<(String, String), u16>,
    /// Other pods with an address, with their identities.
    remote: Vec<(RemotePod, u32)>,
    /// Host interfaces the programs are attached to.
    attached: BTreeSet<String>,
    /// This node's pods without a host route (so no interface) at the last sync; reported once each.
    unmatched: BTreeSet<(String, String)>,
    /// Their endpoint ids: listed as `waiting-for-interface`, nothing in the datapath.
    waiting: BTreeSet<u16>,
    /// The identity numbers of the last sync.
    identities: BTreeMap<Vec<String>, u32>,
    /// The node's host routes as the last sync read them: pod address -> interface.
    routes: BTreeMap<std::net::Ipv4Addr, crate::pod_routes::PodInterface>,
    /// Whether the last sync went through to the end (every pod registered, every interface attached,
    /// none waiting for one): then a sync that changes nothing but policies need not do it again.
    whole: bool,
}

fn policy_protocol(p: flowgate_lab::topology::Protocol) -> PolicyProtocol {
    match p {
        flowgate_lab::topology::Protocol::Tcp => PolicyProtocol::Tcp,
        flowgate_lab::topology::Protocol::Udp => PolicyProtocol::Udp,
        flowgate_lab::topology::Protocol::Sctp => PolicyProtocol::Sctp,
    }
}

impl Controller {
    pub fn new(
        datapath: Datapath,
        mut engine: PolicyEngine,
        state: Arc<AgentState>,
        lab: LabState,
        policy_dir: Option<PathBuf>,
    ) -> Self {
        let node_netns = Path::new("/run/netns").join(&lab.node_netns);
        let topology = lab.topology_path.clone().map(Watched::new);
        let policies = policy_dir.map(Watched::new);
        engine.set_capacities(datapath.capacities());
        Self { datapath, engine, state, lab, node_netns, topology, policies, cluster: None }
    }

    /// Whether some of this node's pods had no interface at the last sync (worth syncing again later: the
    /// route may come after the address).
    pub fn waiting_for_interfaces(&self) -> bool {
        self.cluster.as_ref().is_some_and(|mode| !mode.unmatched.is_empty())
    }

    /// Switches to Kubernetes mode for `node`: the topology file and the policy directory are no longer
    /// followed, and nothing is registered, attached or applied until [`Self::sync_cluster`] brings the
    /// first full list (so a restarted agent keeps the pinned enforcement until then).
    /// `node_netns` replaces the lab's node namespace (the node without a lab: the agent's own).
    pub fn use_kubernetes(&mut self, node: String, node_netns: Option<PathBuf>) {
        if let Some(path) = node_netns {
            self.node_netns = path;
        }
        self.topology = None;
        self.policies = None;
        self.cluster = Some(ClusterMode {
            node,
            state: None,
            endpoints: BTreeMap::new(),
            remote: Vec::new(),
            attached: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            waiting: BTreeSet::new(),
            identities: BTreeMap::new(),
            whole: false,
            routes: BTreeMap::new(),
        });
    }

    /// Takes the cluster as the API server has it: this node's pods become endpoints on the interface of
    /// their host route in the node's namespace ([`crate::pod_routes`]), with their labels from the server;
    /// every other pod with an address becomes a peer in the ipcache; the policies are the server's. Then
    /// the policy is applied and new endpoints are attached. Call only in Kubernetes mode.
    ///
    /// `identities` are the cluster's numbers for the pods' label sets ([`ClusterIdentities`]).
    pub fn sync_cluster(
        &mut self,
        cluster: ClusterState,
        identities: &BTreeMap<Vec<String>, u32>,
    ) -> anyhow::Result<()> {
        let Some(mode) = self.cluster.as_mut() else {
            anyhow::bail!("sync_cluster outside Kubernetes mode");
        };
        // Only policies changed since a whole sync: the pods, their interfaces, identities and the ipcache
        // stay as they are; the policy is compiled and applied (a policy change through the API server
        // does not wait for the node's routes and pods to be read again).
        let policies_only = mode.whole
            && mode.identities == *identities
            && mode.state.as_ref().is_some_and(|s| s.pods == cluster.pods && s.namespaces == cluster.namespaces);
        if policies_only {
            info!(
                "kubernetes: only policies changed ({} in the cluster); the node's pods stay as synced",
                cluster.policies.len()
            );
            self.engine.set_policies(cluster.policies.to_vec());
            mode.state = Some(cluster);
            return self.apply_policy().context("applying the policy of the cluster");
        }
        // Pods where they were at a sync that went through (only labels, ports or policies changed): their
        // interfaces are the routes read then. A route the node's network changes under a pod whose object
        // does not change is not seen by any sync (no event comes), so reading again here would only catch
        // one by chance; at 500 pods the read is about 2 ms of each label change.
        let routes_hold = mode.whole && mode.state.as_ref().is_some_and(|s| same_places(&s.pods, &cluster.pods));
        // And with the namespaces' labels as they were and no label set renumbered, a pod the server did
        // not change (the same record: `KubeSource::snapshot` keeps it) is registered as it was, with the
        // same identity on the same interface: only the pods that changed are registered again.
        let previous = mode.state.take();
        let keep_unchanged = routes_hold
            && previous.as_ref().is_some_and(|s| s.namespaces == cluster.namespaces)
            && !renumbered(&mode.identities, identities);
        let unchanged = |pod: &PodRecord, key: &(String, String)| {
            keep_unchanged
                && previous.as_ref().and_then(|s| s.pods.get(key)).is_some_and(|before| std::ptr::eq(&**before, pod))
        };
        mode.whole = false;
        if mode.identities != *identities {
            mode.identities = identities.clone();
        }
        let node = mode.node.clone();
        self.state.assign_identities(identities);
        self.engine.set_policies(cluster.policies.to_vec());
        if !routes_hold {
            mode.routes = crate::pod_routes::host_routes(&self.node_netns)?;
        }
        let routes = &mode.routes;
        let mut endpoints = BTreeMap::new();
        let mut attach = Vec::new();
        let mut local = Vec::new();
        let mut unmatched = BTreeSet::new();
        let mut waiting = Vec::new();
        for pod in cluster.local_pods(&node) {
            let key = (pod.namespace.clone(), pod.name.clone());
            if let Some(&id) = mode.endpoints.get(&key).filter(|_| unchanged(pod, &key)) {
                endpoints.insert(key, id);
                continue;
            }
            let Some((ip, interface)) = pod.ipv4.and_then(|ip| Some((ip, routes.get(&ip)?))) else {
                if !mode.unmatched.contains(&key) {
                    warn!(
                        "kubernetes: pod {} on node {node}: no host route to {} in the node's namespace {}, so no \
                         interface to enforce on; not an endpoint until there is one",
                        pod.pod_ref(),
                        pod.ipv4.map_or_else(|| "its address".to_owned(), |ip| ip.to_string()),
                        self.node_netns.display()
                    );
                }
                unmatched.insert(key);
                waiting.push(NewEndpoint {
                    namespace: pod.namespace.clone(),
                    pod_name: pod.name.clone(),
                    labels: pod.labels.clone(),
                    ipv4: pod.ipv4.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                    ipv6: pod.ipv6,
                    interface: String::new(),
                    ifindex: 0,
                });
                continue;
            };
            local.push((
                NewEndpoint {
                    namespace: pod.namespace.clone(),
                    pod_name: pod.name.clone(),
                    labels: pod.labels.clone(),
                    ipv4: ip,
                    ipv6: pod.ipv6,
                    interface: interface.name.clone(),
                    ifindex: interface.ifindex,
                },
                cluster.namespace_labels(&pod.namespace),
            ));
            if !mode.attached.contains(&interface.name) {
                attach.push((interface.name.clone(), pod.pod_ref()));
            }
        }
        for endpoint in register(&self.state, &mut self.datapath, local)? {
            endpoints.insert((endpoint.namespace.clone(), endpoint.pod_name.clone()), endpoint.id);
        }
        mode.unmatched = unmatched;
        let remote: Vec<RemotePod> = cluster
            .addressed_pods()
            .filter(|p| !endpoints.contains_key(&(p.namespace.clone(), p.name.clone())))
            .filter_map(|p| {
                Some(RemotePod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    namespace_labels: cluster.namespace_labels(&p.namespace),
                    ipv4: p.ipv4?,
                    ipv6: p.ipv6,
                })
            })
            .collect();
        let identities = self.state.set_remote_pods(&remote);
        mode.remote = remote.into_iter().zip(identities).collect();
        let gone: Vec<u16> =
            mode.endpoints.iter().filter(|(k, _)| !endpoints.contains_key(*k)).map(|(_, id)| *id).collect();
        mode.endpoints = endpoints;
        mode.state = Some(cluster);
        self.apply_policy().context("applying the policy of the cluster")?;
        // Pods gone from this node: no longer endpoints. The programs are detached from their interface
        // (which usually goes with the pod, but need not) and its entry is cleared, so whatever still passes
        // there is not taken for theirs.
        for id in gone {
            if let Some(endpoint) = self.state.remove_endpoint(id) {
                // A pod of this sync may already use the same interface: its programs and entry stay.
                if self.state.endpoints().iter().any(|e| e.ifindex == endpoint.ifindex && e.ifindex != 0) {
                    info!("kubernetes: pod {} is gone from node {node}; endpoint {id} removed", endpoint.pod_ref());
                    continue;
                }
                let detached = self
                    .datapath
                    .detach_endpoint(&endpoint.interface)
                    .with_context(|| format!("detaching from {} ({})", endpoint.interface, endpoint.pod_ref()))?;
                if let Some(mode) = self.cluster.as_mut() {
                    mode.attached.remove(&endpoint.interface);
                }
                self.datapath
                    .set_endpoint(endpoint.ifindex, flowgate_common::endpoint::EndpointInfo::default())
                    .with_context(|| format!("clearing endpoint {id} ({})", endpoint.pod_ref()))?;
                info!(
                    "kubernetes: pod {} is gone from node {node}; endpoint {id} removed{}",
                    endpoint.pod_ref(),
                    if detached { format!(", programs detached from {}", endpoint.interface) } else { String::new() }
                );
            }
        }
        let interfaces: Vec<&str> = attach.iter().map(|(interface, _)| interface.as_str()).collect();
        let attached = self.datapath.attach_endpoints(&self.node_netns, &interfaces);
        // Those attached before a failure stay attached (and are not attached twice on the retry).
        if let Some(mode) = self.cluster.as_mut() {
            mode.attached.extend(interfaces.iter().filter(|i| self.datapath.is_attached(i)).map(|i| (*i).to_owned()));
        }
        attached.with_context(|| {
            let pods: Vec<String> = attach.iter().map(|(interface, pod)| format!("{pod} ({interface})")).collect();
            format!("attaching to {}", pods.join(", "))
        })?;
        // Every endpoint of this sync is registered, under the policy just applied and attached (now or
        // before): ready. (Registering put each back to regenerating.)
        let ready: Vec<u16> =
            self.cluster.as_ref().map(|m| m.endpoints.values().copied().collect()).unwrap_or_default();
        for id in ready {
            self.state.set_endpoint_state(id, EndpointState::Ready);
        }
        // This node's pods without an interface are listed, waiting for one; to policy they are peers (in
        // the ipcache, as other nodes' pods), and nothing of theirs is in the datapath.
        let waiting: Vec<_> = waiting
            .into_iter()
            .map(|new| {
                let namespace_labels = cluster_namespace_labels(self.cluster.as_ref(), &new.namespace);
                (new, namespace_labels)
            })
            .collect();
        let mut waiting_ids = BTreeSet::new();
        let registered = if waiting.is_empty() { Vec::new() } else { self.state.upsert_endpoints(waiting)? };
        for endpoint in registered {
            self.state.set_endpoint_state(endpoint.id, EndpointState::WaitingForInterface);
            waiting_ids.insert(endpoint.id);
        }
        forget_reused_ids(&self.state, &mut self.datapath)?;
        if let Some(mode) = self.cluster.as_mut() {
            let local: BTreeSet<u16> = mode.endpoints.values().copied().collect();
            for id in mode.waiting.difference(&waiting_ids).filter(|id| !local.contains(id)) {
                self.state.remove_endpoint(*id);
            }
            mode.whole = waiting_ids.is_empty();
            mode.waiting = waiting_ids;
        }
        Ok(())
    }

    /// The cluster view of Kubernetes mode: the server's namespaces, this node's endpoints, the other pods.
    fn kubernetes_view(&self, mode: &ClusterMode) -> ClusterView {
        let Some(cluster) = &mode.state else { return ClusterView::default() };
        let ports = |key: &(String, String)| cluster.pods.get(key).map(|p| p.ports.clone()).unwrap_or_default();
        let keys: BTreeMap<u16, &(String, String)> = mode.endpoints.iter().map(|(key, id)| (*id, key)).collect();
        let mut registered: BTreeMap<u16, PodInfo> = self
            .state
            .map_endpoints(|ep| Some((ep.id, endpoint_pod_info(ep, ports(keys.get(&ep.id)?)))))
            .into_iter()
            .flatten()
            .collect();
        // In the pods' order, as the cluster lists them.
        let local = mode.endpoints.values().filter_map(|id| registered.remove(id));
        let remote = mode.remote.iter().map(|(pod, identity)| PodInfo {
            endpoint_id: NOT_AN_ENDPOINT,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            labels: pod.labels.clone(),
            ip: pod.ipv4,
            ipv6: pod.ipv6,
            identity: *identity,
            ports: ports(&(pod.namespace.clone(), pod.name.clone())),
        });
        ClusterView {
            namespaces: cluster
                .namespaces
                .iter()
                .map(|(name, labels)| NamespaceInfo { name: name.clone(), labels: labels.clone() })
                .collect(),
            pods: local.chain(remote).collect(),
        }
    }

    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    pub fn counters(&self) -> Result<KernelCounters, DatapathError> {
        self.datapath.counters()
    }

    /// Packets dropped for an invalid source address, by endpoint id.
    pub fn invalid_source_drops(&self, ids: Vec<u16>) -> Result<BTreeMap<u16, u64>, DatapathError> {
        self.datapath.invalid_source_drops(ids)
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.lab.namespaces.iter().find(|n| n.name == namespace).map(|n| n.labels.clone()).unwrap_or_default()
    }

    /// Registers every pod (identity from its labels) and writes its endpoints-map entry.
    /// Entries that hold already (a re-registration after a label change that left an identity as it
    /// was) are not written again.
    fn register_endpoints(&mut self) -> anyhow::Result<()> {
        let pods: Vec<_> =
            self.lab.pods.iter().map(|pod| (lab_pod_endpoint(pod), self.namespace_labels(&pod.namespace))).collect();
        register(&self.state, &mut self.datapath, pods)?;
        Ok(())
    }

    /// Registers the lab's pods, applies policy, then attaches the programs to every endpoint.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.register_endpoints()?;
        self.engine.reload();
        self.apply_policy().context("applying the initial policy")?;
        let interfaces: Vec<&str> = self.lab.pods.iter().map(|pod| pod.host_ifname.as_str()).collect();
        self.datapath.attach_endpoints(&self.node_netns, &interfaces).with_context(|| {
            format!("attaching to the lab's {} pods in {}", interfaces.len(), self.node_netns.display())
        })?;
        for ep in self.state.endpoints() {
            self.state.set_endpoint_state(ep.id, EndpointState::Ready);
        }
        Ok(())
    }

    /// The cluster as the policy compiler sees it.
    pub fn cluster_view(&self) -> ClusterView {
        if let Some(mode) = &self.cluster {
            return self.kubernetes_view(mode);
        }
        let registered = self.state.endpoints();
        let endpoints: BTreeMap<(&str, &str), &Endpoint> =
            registered.iter().map(|ep| ((ep.namespace.as_str(), ep.pod_name.as_str()), ep)).collect();
        ClusterView {
            namespaces: self
                .lab
                .namespaces
                .iter()
                .map(|n| NamespaceInfo { name: n.name.clone(), labels: n.labels.clone() })
                .collect(),
            pods: self
                .lab
                .pods
                .iter()
                .filter_map(|pod| {
                    let ep = endpoints.get(&(pod.namespace.as_str(), pod.name.as_str()))?;
                    Some(PodInfo {
                        endpoint_id: ep.id,
                        namespace: pod.namespace.clone(),
                        name: pod.name.clone(),
                        labels: pod.labels.clone(),
                        ip: pod.ip,
                        ipv6: pod.ipv6,
                        identity: ep.identity,
                        ports: pod
                            .ports
                            .iter()
                            .map(|p| ContainerPort {
                                name: p.name.clone(),
                                port: p.port,
                                protocol: policy_protocol(p.protocol),
                            })
                            .collect(),
                    })
                })
                .collect(),
        }
    }

    /// Compiles the current policy set for the current endpoints and switches the datapath to it. A set
    /// that does not fit the maps is refused before anything is written: the generation in effect stays,
    /// `status` names the refusal, and this returns `Ok` (the agent is fine; the set is not).
    pub fn apply_policy(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let cluster = self.cluster_view();
        let (contents, snapshot) = match self.engine.prepare(cluster) {
            Ok(prepared) => prepared,
            Err(refusal) => {
                warn!("policy not applied: {refusal}");
                self.state.set_policy_status(self.engine.status());
                return Ok(());
            }
        };
        // Names must resolve before the datapath can emit the new rule ids.
        self.state.set_policy(Arc::new(snapshot), self.engine.cidr_labels());
        self.datapath.apply_policy(&contents).context("writing the policy maps")?;
        self.engine.applied();
        crate::instruments::instruments().policy_apply.observe(started.elapsed());
        for (id, ingress, egress) in self.engine.enforced() {
            let audited = self.engine.audit.all || self.engine.audit.endpoints.contains(&id);
            let mode = |enforced: bool| match (enforced, audited) {
                (false, _) => Enforcement::Disabled,
                (true, false) => Enforcement::Enabled,
                (true, true) => Enforcement::Audit,
            };
            self.state.set_enforcement(id, mode(ingress), mode(egress));
        }
        let status = self.engine.status();
        self.state.set_policy_status(status.clone());
        let revision = self.datapath.revision();
        self.publish_conntrack_settings();
        info!(
            "policy revision {} in effect (datapath revision {revision}): {} policies, {} map entries, applied in {:?}",
            status.revision,
            status.loaded.len(),
            contents.policy.len(),
            started.elapsed()
        );
        Ok(())
    }

    /// Puts the datapath's revision and conntrack settings into `status`. The number of entries is the
    /// garbage collector's to count (`conntrack::collect_garbage`, at each collection): counting here would
    /// walk the whole map at every policy change, tens of milliseconds on a busy node, with the
    /// controller's lock held.
    fn publish_conntrack_settings(&self) {
        let revision = self.datapath.revision();
        let lifetimes = self.datapath.ct_lifetimes();
        let keep = self.datapath.options().keep_established;
        let capacity = u64::from(self.datapath.options().conntrack_entries);
        self.state.update_conntrack(|s| {
            s.revision = revision;
            s.keep_established = keep;
            s.lifetime_tcp_seconds = lifetimes.tcp.as_secs();
            s.lifetime_other_seconds = lifetimes.other.as_secs();
            s.lifetime_close_seconds = lifetimes.close.as_secs();
            s.capacity = capacity;
        });
    }

    fn conntrack_list(&self, endpoint: Option<u16>) -> Response {
        if let Some(id) = endpoint.filter(|id| self.state.endpoint(*id).is_none()) {
            return self.state.not_found_endpoint(id);
        }
        let entries = match self.datapath.conntrack_entries() {
            Ok(e) => e,
            Err(e) => return Response::NotFound { what: format!("the conntrack map ({e})"), known: Vec::new() },
        };
        let now = datapath::monotonic_now_ns();
        let lifetimes = self.datapath.ct_lifetimes();
        let mut views: Vec<ConntrackEntry> = entries
            .iter()
            .filter(|(key, _)| endpoint.is_none_or(|id| id == key.endpoint_id))
            .map(|(key, entry)| {
                let pod = self.state.endpoint(key.endpoint_id).map(|ep| ep.pod_ref()).unwrap_or_default();
                let policies = if entry.rule_id == 0 { Vec::new() } else { self.engine.rule_names(entry.rule_id) };
                crate::conntrack::entry_view(key, entry, now, &lifetimes, pod, policies)
            })
            .collect();
        views.sort_by(|a, b| {
            (a.endpoint_id, &a.direction, a.source, a.source_port, a.destination, a.destination_port).cmp(&(
                b.endpoint_id,
                &b.direction,
                b.source,
                b.source_port,
                b.destination,
                b.destination_port,
            ))
        });
        Response::Conntrack(views)
    }

    /// Re-reads the topology's labels; returns whether any pod or namespace label changed.
    fn relabel(&mut self, path: &Path) -> anyhow::Result<bool> {
        let topology = Topology::load(path).with_context(|| format!("reading {}", path.display()))?;
        let mut changed = false;
        for ns in &mut self.lab.namespaces {
            if let Some(spec) = topology.namespaces.iter().find(|s| s.name == ns.name) {
                let labels = Topology::namespace_labels(spec);
                changed |= labels != ns.labels;
                ns.labels = labels;
            }
        }
        for pod in &mut self.lab.pods {
            match topology.pods.iter().find(|s| s.namespace == pod.namespace && s.name == pod.name) {
                Some(spec) => {
                    changed |= spec.labels != pod.labels;
                    pod.labels = spec.labels.clone();
                }
                None => warn!(
                    "{}: pod {}/{} is gone from the topology; bring the lab down and up to remove pods",
                    path.display(),
                    pod.namespace,
                    pod.name
                ),
            }
        }
        Ok(changed)
    }

    /// The files and directories [`Self::tick`] follows (none in Kubernetes mode).
    pub fn followed_paths(&self) -> Vec<PathBuf> {
        self.topology.iter().chain(&self.policies).map(|w| w.path().to_owned()).collect()
    }

    /// Checks the followed files and applies what changed. Errors are logged and reported in
    /// `status`; the last good state stays in effect. Returns whether a new generation was applied.
    pub fn tick(&mut self) -> bool {
        let mut reapply = false;
        let topology_changed = self.topology.as_mut().is_some_and(Watched::changed);
        if let Some(path) = self.topology.as_ref().filter(|_| topology_changed).map(|w| w.path().to_owned()) {
            match self.relabel(&path) {
                Ok(true) => {
                    info!("labels changed in {}: re-deriving identities", path.display());
                    if let Err(e) = self.register_endpoints() {
                        warn!("{e:#}");
                    }
                    reapply = true;
                }
                Ok(false) => {}
                Err(e) => warn!("{e:#}; keeping the current labels"),
            }
        }
        if self.policies.as_mut().is_some_and(Watched::changed) {
            if self.engine.reload() {
                reapply = true;
            } else {
                let status = self.engine.status();
                for e in &status.errors {
                    warn!("policy not applied: {e}");
                }
                self.state.set_policy_status(status);
            }
        }
        if !reapply {
            return false;
        }
        if let Err(e) = self.apply_policy() {
            warn!("{e:#}");
            return false;
        }
        true
    }

    fn endpoint_config(&mut self, id: u16, audit: Option<bool>) -> Response {
        if self.state.endpoint(id).is_none() {
            return self.state.not_found_endpoint(id);
        }
        if let Some(on) = audit {
            if on {
                self.engine.audit.endpoints.insert(id);
            } else {
                self.engine.audit.endpoints.remove(&id);
            }
            if let Err(e) = self.apply_policy() {
                return Response::NotFound { what: format!("a working datapath ({e:#})"), known: Vec::new() };
            }
        }
        match self.state.endpoint(id) {
            Some(ep) => Response::EndpointConfigured(ep),
            None => self.state.not_found_endpoint(id),
        }
    }

    fn policy_get(&self, endpoint: Option<u16>) -> Response {
        if let Some(id) = endpoint.filter(|id| self.state.endpoint(*id).is_none()) {
            return self.state.not_found_endpoint(id);
        }
        let values = match self.datapath.policy_values(self.datapath.generation()) {
            Ok(v) => v,
            Err(e) => return Response::NotFound { what: format!("the policy map ({e})"), known: Vec::new() },
        };
        let identity_labels = self.state.identity_labels();
        let snapshot = self.state.policy();
        let mut views = Vec::new();
        for ep in self.state.endpoints() {
            if endpoint.is_some_and(|id| id != ep.id) {
                continue;
            }
            let mut entries: Vec<PolicyEntryView> = values
                .iter()
                .filter(|((_, key), _)| key.endpoint_id() == ep.id)
                .map(|((prefix, key), value)| {
                    let identity = key.identity();
                    let labels = if identity == identity::ANY {
                        vec![identity::ANY_LABEL.to_string()]
                    } else {
                        identity_labels.get(&identity).cloned().unwrap_or_default()
                    };
                    let protocol = (*prefix > POLICY_PREFIX_PEER).then(|| Protocol::from_number(key.protocol()));
                    let ports = (*prefix > POLICY_PREFIX_PROTOCOL).then(|| {
                        let bits = prefix - POLICY_PREFIX_PROTOCOL;
                        let size = 1u32 << (16 - bits);
                        (key.port(), (u32::from(key.port()) + size - 1) as u16)
                    });
                    PolicyEntryView {
                        direction: if key.direction() == direction::INGRESS { "ingress" } else { "egress" }.into(),
                        identity,
                        labels,
                        protocol,
                        ports,
                        policies: self.engine.rule_names(value.rule_id),
                        packets: value.packets,
                        bytes: value.bytes,
                    }
                })
                .collect();
            entries.sort_by(|a, b| {
                (&a.direction, a.identity, a.ports.map(|p| p.0)).cmp(&(&b.direction, b.identity, b.ports.map(|p| p.0)))
            });
            views.push(EndpointPolicy {
                endpoint_id: ep.id,
                pod: ep.pod_ref(),
                ingress: ep.ingress_enforcement,
                egress: ep.egress_enforcement,
                ingress_selected_by: snapshot.isolated_by(ep.id, direction::INGRESS),
                egress_selected_by: snapshot.isolated_by(ep.id, direction::EGRESS),
                entries,
            });
        }
        Response::Policy(views)
    }
}

impl Controller {
    /// The policy maps in effect as the kernel holds them, with the names behind their rule ids and the
    /// policies, pods and audit settings they were compiled from.
    fn policy_maps(&self) -> Response {
        let contents = match self.datapath.policy_contents() {
            Ok(contents) => contents,
            Err(e) => return Response::NotFound { what: format!("the policy maps ({e})"), known: Vec::new() },
        };
        let mut maps = flowgate_proto::message::PolicyMaps {
            revision: self.datapath.revision(),
            audit_all: self.engine.audit.all,
            audited: self.engine.audit.endpoints.iter().copied().collect(),
            enforcement: contents.enforcement,
            ..Default::default()
        };
        let mut rule_ids = BTreeSet::new();
        for (prefix_len, key, value) in &contents.policy {
            rule_ids.insert(value.rule_id);
            maps.policy.push(flowgate_proto::message::PolicyMapEntry {
                prefix_len: *prefix_len,
                endpoint_id: key.endpoint_id(),
                direction: key.direction(),
                identity: key.identity(),
                protocol: key.protocol(),
                port: key.port(),
                rule_id: value.rule_id,
                flags: value.flags,
            });
        }
        maps.rules = rule_ids.into_iter().map(|id| (id, self.engine.rule_names(id))).collect();
        for (prefix, value) in &contents.ipcache {
            let (addr, prefix_len) = prefix.key();
            maps.ipcache.push(flowgate_proto::message::IpcacheMapEntry {
                addr,
                prefix_len,
                identity: value.identity,
                cidr_identity: value.cidr_identity,
            });
        }
        maps.isolation = self.state.policy().isolation();
        let (policies, cluster) = self.engine.in_effect();
        maps.policies = policies.iter().filter_map(|p| serde_yaml::to_string(&p.policy).ok()).collect();
        if let Some(cluster) = cluster {
            maps.namespaces = cluster.namespaces.iter().map(|n| (n.name.clone(), n.labels.clone())).collect();
            maps.pods = cluster
                .pods
                .iter()
                .map(|p| flowgate_proto::message::PolicyPod {
                    endpoint_id: p.endpoint_id,
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    identity: p.identity,
                    ipv4: p.ip,
                    ipv6: p.ipv6,
                    ports: p
                        .ports
                        .iter()
                        .map(|c| (c.name.clone(), c.port, Protocol::from_number(c.protocol.ip_protocol())))
                        .collect(),
                })
                .collect();
        }
        Response::PolicyMaps(Box::new(maps))
    }
}

/// The controller as the request handler sees it.
pub struct SharedController(pub Arc<Mutex<Controller>>);

impl SharedController {
    fn lock(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PolicyControl for SharedController {
    fn policy_get(&self, endpoint: Option<u16>) -> Response {
        self.lock().policy_get(endpoint)
    }

    fn endpoint_config(&self, id: u16, audit: Option<bool>) -> Response {
        self.lock().endpoint_config(id, audit)
    }

    fn policy_status(&self) -> PolicyStatus {
        self.lock().engine.status()
    }

    fn conntrack_list(&self, endpoint: Option<u16>) -> Response {
        self.lock().conntrack_list(endpoint)
    }

    fn policy_maps(&self) -> Response {
        self.lock().policy_maps()
    }
}

/// How often the followed files are compared anyway while change notification is up: a safety net for
/// file systems whose changes inotify does not report (NFS, FUSE). Cheap at this rate even for thousands
/// of policy files.
pub const RECHECK_WITH_NOTIFICATION: Duration = Duration::from_secs(30);

/// Follows the policy directory and the topology file: a change is taken as soon as inotify reports it
/// ([`ChangeNotifier`]), with a comparison every [`RECHECK_WITH_NOTIFICATION`] besides. Where inotify
/// cannot be set up (limits exhausted), the files are polled every `poll_interval` instead, and the
/// agent says so.
pub async fn follow_changes(controller: Arc<Mutex<Controller>>, poll_interval: Duration) {
    let paths = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner).followed_paths();
    if paths.is_empty() {
        return;
    }
    let mut notifier = match ChangeNotifier::new(paths.iter().map(PathBuf::as_path)) {
        Ok(notifier) => {
            info!(
                "following {} by change notification (inotify on {}), re-checked every {}s",
                paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                notifier.dirs().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                RECHECK_WITH_NOTIFICATION.as_secs()
            );
            Some(notifier)
        }
        Err(e) => {
            warn!(
                "{}; polling the policy directory and the topology file every {} ms instead",
                anyhow::Error::from(e).chain().map(ToString::to_string).collect::<Vec<_>>().join(": "),
                poll_interval.as_millis()
            );
            None
        }
    };
    let mut ticker = tokio::time::interval(if notifier.is_some() { RECHECK_WITH_NOTIFICATION } else { poll_interval });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match notifier.as_mut() {
            Some(n) => tokio::select! {
                changed = n.changed() => if let Err(e) = changed {
                    warn!("{e}; polling every {} ms instead", poll_interval.as_millis());
                    notifier = None;
                    ticker = tokio::time::interval(poll_interval);
                },
                _ = ticker.tick() => {}
            },
            None => {
                ticker.tick().await;
            }
        }
        let controller = Arc::clone(&controller);
        let _ = tokio::task::spawn_blocking(move || {
            let applied = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner).tick();
            if applied {
                release_freed_memory();
            }
        })
        .await;
    }
}

/// Gives the memory freed by a policy change back to the system. Compiling a set of thousands of
/// policies frees far more than it keeps (the parse trees of changed files, the previous plan and map
/// contents); glibc keeps freed memory in its arenas (one per thread that allocated, and the blocking
/// pool's threads come and go) until told otherwise, so without this the agent's resident memory stays
/// at its high-water mark. Runs after the controller's lock is released: enforcement and requests do
/// not wait for it.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no Rust object is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A namespace's labels as the last synced cluster has them.
fn cluster_namespace_labels(mode: Option<&ClusterMode>, namespace: &str) -> BTreeMap<String, String> {
    mode.and_then(|m| m.state.as_ref()).map(|c| c.namespace_labels(namespace)).unwrap_or_default()
}

/// How often a sync is repeated while some of this node's pods have no interface yet.
const INTERFACE_RECHECK: Duration = Duration::from_secs(2);

/// A stream of cluster changes is compiled at most `CLUSTER_SYNCS_PER_WINDOW` times per window (see
/// `follow_cluster`).
const CLUSTER_BATCH_WINDOW: Duration = Duration::from_millis(100);
const CLUSTER_SYNCS_PER_WINDOW: usize = 3;
/// How long a change that follows a recent sync waits for the rest of its burst before it is compiled (a
/// change after a quiet window is compiled at once).
const LONE_CHANGE_SETTLE: Duration = Duration::from_millis(2);

/// Kubernetes mode: applies the cluster as the source holds it whenever it or the cluster's identities
/// change (changes arriving together are taken at once), from the first full list on. Identity numbers
/// for new label sets are allocated through the API server first.
pub async fn follow_cluster(controller: Arc<Mutex<Controller>>, source: KubeSource, identities: ClusterIdentities) {
    let mut changes = source.changes();
    let mut identity_changes = identities.changes();
    let mut last: Option<(ClusterState, BTreeMap<Vec<String>, u32>)> = None;
    let mut retry = false;
    let mut recent_syncs = std::collections::VecDeque::with_capacity(CLUSTER_SYNCS_PER_WINDOW);
    let mut recheck = tokio::time::interval(INTERFACE_RECHECK);
    loop {
        let mut force = false;
        if retry {
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                changed = identity_changes.changed() => if changed.is_err() { return },
                _ = recheck.tick() => {
                    let controller = Arc::clone(&controller);
                    let waiting = tokio::task::spawn_blocking(move || {
                        controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner).waiting_for_interfaces()
                    });
                    if !waiting.await.unwrap_or(false) {
                        continue;
                    }
                    force = true;
                }
            }
        }
        // A change after a quiet window is compiled at once. One soon after a sync waits a short settle
        // that lets the rest of its burst land (the other objects of a `kubectl apply`, which then make one
        // compile more, not one per object); a stream of changes (a re-list, a controller rewriting many
        // objects) is compiled at most `CLUSTER_SYNCS_PER_WINDOW` times per window, each time with
        // everything that arrived meanwhile. (A few per window, not one: a change is often followed by an
        // echo of its own, such as an identity the agent just allocated, and the next real change should
        // not wait for it.)
        let quiet = recent_syncs.back().is_none_or(|t: &Instant| t.elapsed() >= CLUSTER_BATCH_WINDOW);
        let settle = match recent_syncs.front().map(|t: &Instant| t.elapsed()) {
            Some(since) if recent_syncs.len() == CLUSTER_SYNCS_PER_WINDOW && since < CLUSTER_BATCH_WINDOW => {
                CLUSTER_BATCH_WINDOW - since
            }
            _ if quiet => Duration::ZERO,
            _ => LONE_CHANGE_SETTLE,
        };
        // No sleep at all after a quiet window: even a zero one waits for tokio's next millisecond tick, which
        // was most of the agent's share of a lone change (a policy created on the small lab: from the API
        // server's answer to the first packet decided, 1.7 -> 0.6 ms p50).
        if !settle.is_zero() {
            tokio::time::sleep(settle).await;
        }
        if recent_syncs.len() == CLUSTER_SYNCS_PER_WINDOW {
            recent_syncs.pop_front();
        }
        recent_syncs.push_back(Instant::now());
        changes.mark_unchanged();
        identity_changes.mark_unchanged();
        retry = false;
        let Some(cluster) = source.snapshot() else { continue };
        let numbers = match identities.resolve(&cluster.security_label_sets()).await {
            Ok(numbers) => numbers,
            Err(IdentityError::NotSynced) => continue,
            Err(e) => {
                warn!("kubernetes: {e}; retrying");
                retry = true;
                continue;
            }
        };
        if !force && last.as_ref().is_some_and(|(c, n)| *c == cluster && *n == numbers) {
            continue;
        }
        if last.is_none() {
            info!(
                "kubernetes: listed {} namespaces, {} pods, {} policies; enforcing from the API server",
                cluster.namespaces.len(),
                cluster.pods.len(),
                cluster.policies.len()
            );
        }
        let controller = Arc::clone(&controller);
        let (taken, taken_numbers) = (cluster.clone(), numbers.clone());
        let synced = tokio::task::spawn_blocking(move || {
            let mut controller = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            controller.sync_cluster(taken, &taken_numbers).map_err(|e| warn!("kubernetes: {e:#}; retrying")).is_ok()
        })
        .await
        .unwrap_or(false);
        if synced {
            last = Some((cluster, numbers));
        } else {
            retry = true;
        }
    }
}

/// Whether a label set in both `before` and `now` has another number in `now` (one walk of the two sorted
/// maps side by side).
fn renumbered(before: &BTreeMap<Vec<String>, u32>, now: &BTreeMap<Vec<String>, u32>) -> bool {
    let mut now = now.iter().peekable();
    before.iter().any(|(labels, number)| {
        while now.next_if(|(later, _)| *later < labels).is_some() {}
        now.peek().is_some_and(|(same, other)| *same == labels && *other != number)
    })
}

/// Whether two syncs' pods are the same pods at the same places: the same names, each with the same IPv4
/// address, node and host networking (labels, ports and the IPv6 address may differ: no route depends on
/// them).
fn same_places(before: &Pods, now: &Pods) -> bool {
    before.len() == now.len()
        && before.iter().zip(now).all(|((key, was), (now_key, is))| {
            key == now_key && (was.ipv4, &was.node, was.host_network) == (is.ipv4, &is.node, is.host_network)
        })
}

/// A registered endpoint as the policy engine sees it: a pod of the cluster view with its endpoint id,
/// identity, labels and addresses as registered, and `ports` (its declared container ports).
pub fn endpoint_pod_info(ep: &Endpoint, ports: Vec<ContainerPort>) -> PodInfo {
    PodInfo {
        endpoint_id: ep.id,
        namespace: ep.namespace.clone(),
        name: ep.pod_name.clone(),
        labels: ep.labels.clone(),
        ip: ep.ipv4,
        ipv6: ep.ipv6,
        identity: ep.identity,
        ports,
    }
}

/// Registers pods as endpoints in one batch (the pipeline's peer snapshot is rebuilt once, not once per pod)
/// and writes each one's endpoints-map entry, unless it holds already (a re-registration that left the
/// identity and interface as they were); an id taken back from a pod gone is cleared in the kernel first
/// (`forget_reused_ids`). Returns the endpoints, in the pods' order. Lab and cluster syncs register the
/// pods with an interface through here.
pub fn register(
    state: &AgentState,
    datapath: &mut Datapath,
    pods: Vec<(NewEndpoint, BTreeMap<String, String>)>,
) -> anyhow::Result<Vec<flowgate_proto::endpoint::Endpoint>> {
    let before: BTreeMap<u16, (u32, flowgate_common::EndpointInfo)> =
        state.map_endpoints(|ep| (ep.id, (ep.ifindex, datapath::endpoint_info(ep)))).into_iter().collect();
    let endpoints = state.upsert_endpoints(pods)?;
    forget_reused_ids(state, datapath)?;
    for endpoint in &endpoints {
        let info = datapath::endpoint_info(endpoint);
        if before.get(&endpoint.id) != Some(&(endpoint.ifindex, info)) {
            datapath
                .set_endpoint(endpoint.ifindex, info)
                .with_context(|| format!("registering endpoint {} ({})", endpoint.id, endpoint.pod_ref()))?;
        }
    }
    Ok(endpoints)
}

/// Makes the kernel forget what it kept under endpoint ids that went from a pod gone to a new pod
/// (`EndpointRegistry::take_reused`), before the new pod's endpoint entry is written. Ids it could not clear
/// are kept for the next registration.
fn forget_reused_ids(state: &AgentState, datapath: &mut Datapath) -> anyhow::Result<()> {
    let mut ids = state.take_reused_endpoint_ids().into_iter();
    while let Some(id) = ids.next() {
        match datapath.forget_endpoint(id) {
            Ok(deleted) => {
                info!("endpoint id {id} went to a new pod: {deleted} connections of its old pod forgotten");
            }
            Err(e) => {
                state.return_reused_endpoint_ids(std::iter::once(id).chain(ids));
                return Err(e).with_context(|| format!("clearing endpoint id {id} for its new pod"));
            }
        }
    }
    Ok(())
}

/// The endpoint of a lab pod: its labels, addresses and node-side interface.
pub fn lab_pod_endpoint(pod: &flowgate_lab::state::PodState) -> NewEndpoint {
    NewEndpoint {
        namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        labels: pod.labels.clone(),
        ipv4: pod.ip,
        ipv6: pod.ipv6,
        interface: pod.host_ifname.clone(),
        ifindex: pod.host_ifindex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(records: &[(&str, [u8; 4], &str, bool)]) -> Pods {
        records
            .iter()
            .map(|&(name, ip, node, host_network)| {
                let pod = PodRecord {
                    namespace: "default".into(),
                    name: name.into(),
                    ipv4: Some(ip.into()),
                    node: Some(node.into()),
                    host_network,
                    ..PodRecord::default()
                };
                (("default".to_owned(), name.to_owned()), Arc::new(pod))
            })
            .collect()
    }

    #[test]
    fn pods_stay_in_place_through_label_and_port_changes_only() {
        let before = pods(&[("a", [10, 0, 0, 1], "n1", false), ("b", [10, 0, 0, 2], "n1", false)]);
        let mut relabelled = before.clone();
        for pod in relabelled.values_mut().map(Arc::make_mut) {
            pod.labels.insert("role".into(), "trusted".into());
            pod.ipv6 = Some("fd00::1".parse().unwrap());
            pod.ports.push(flowgate_policy::ContainerPort {
                name: Some("http".into()),
                port: 80,
                protocol: flowgate_policy::Protocol::Tcp,
            });
        }
        assert!(same_places(&before, &relabelled));
        // A new address, node, host networking, a pod more, fewer or renamed: the routes are read again.
        for moved in [
            pods(&[("a", [10, 0, 0, 1], "n1", false), ("b", [10, 0, 0, 3], "n1", false)]),
            pods(&[("a", [10, 0, 0, 1], "n1", false), ("b", [10, 0, 0, 2], "n2", false)]),
            pods(&[("a", [10, 0, 0, 1], "n1", false), ("b", [10, 0, 0, 2], "n1", true)]),
            pods(&[
                ("a", [10, 0, 0, 1], "n1", false),
                ("b", [10, 0, 0, 2], "n1", false),
                ("c", [10, 0, 0, 3], "n1", false),
            ]),
            pods(&[("a", [10, 0, 0, 1], "n1", false)]),
            pods(&[("a", [10, 0, 0, 1], "n1", false), ("c", [10, 0, 0, 2], "n1", false)]),
        ] {
            assert!(!same_places(&before, &moved), "{moved:?}");
        }
        let mut unaddressed = before.clone();
        unaddressed.values_mut().map(Arc::make_mut).for_each(|pod| pod.ipv4 = None);
        assert!(!same_places(&before, &unaddressed));
    }

    #[test]
    fn a_label_set_is_renumbered_only_when_both_have_it_with_other_numbers() {
        let set = |pairs: &[(&str, u32)]| -> BTreeMap<Vec<String>, u32> {
            pairs.iter().map(|(labels, n)| (labels.split(',').map(str::to_owned).collect(), *n)).collect()
        };
        let before = set(&[("a", 256), ("b", 257), ("c,d", 258)]);
        assert!(!renumbered(&before, &before));
        assert!(!renumbered(&before, &set(&[])));
        // Sets come and go: none renumbered.
        assert!(!renumbered(&before, &set(&[("a", 256), ("aa", 300), ("c,d", 258), ("z", 301)])));
        assert!(!renumbered(&set(&[]), &before));
        for now in [
            set(&[("a", 259), ("b", 257), ("c,d", 258)]),
            set(&[("b", 257), ("c,d", 260)]),
            set(&[("a", 256), ("ab", 1), ("b", 999)]),
        ] {
            assert!(renumbered(&before, &now), "{now:?}");
        }
    }
}
