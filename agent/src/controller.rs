//! The controller owns the datapath and keeps it in line with the node: it registers the lab's pods as
//! endpoints and attaches the programs to them, follows the topology file (label changes re-derive
//! identities) and the policy directory (changes are compiled and applied as a new generation), and
//! answers the requests that need the datapath (`policy get`, `endpoint config`, `conntrack list`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use flowgate_common::{
    identity,
    policy::{POLICY_PREFIX_PEER, POLICY_PREFIX_PROTOCOL, direction},
};
use flowgate_lab::{state::LabState, topology::Topology};
use flowgate_policy::{ClusterView, ContainerPort, NamespaceInfo, PodInfo, Protocol as PolicyProtocol};
use flowgate_proto::{
    endpoint::{EndpointState, Enforcement, NewEndpoint},
    flow::Protocol,
    message::{ConntrackEntry, EndpointPolicy, PolicyEntryView, PolicyStatus, Response},
};
use log::{info, warn};

use crate::{
    api::PolicyControl,
    datapath::{self, Datapath, DatapathError, KernelCounters},
    policy::PolicyEngine,
    state::AgentState,
    watch::Watched,
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
        Self { datapath, engine, state, lab, node_netns, topology, policies }
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
    fn register_endpoints(&mut self) -> anyhow::Result<()> {
        for pod in self.lab.pods.clone() {
            let endpoint = self.state.upsert_endpoint(
                NewEndpoint {
                    namespace: pod.namespace.clone(),
                    pod_name: pod.name.clone(),
                    labels: pod.labels.clone(),
                    ipv4: pod.ip,
                    ipv6: pod.ipv6,
                    interface: pod.host_ifname.clone(),
                    ifindex: pod.host_ifindex,
                },
                &self.namespace_labels(&pod.namespace),
            );
            self.datapath
                .set_endpoint(endpoint.ifindex, datapath::endpoint_info(&endpoint))
                .with_context(|| format!("registering endpoint {} ({})", endpoint.id, endpoint.pod_ref()))?;
        }
        Ok(())
    }

    /// Registers the lab's pods, applies policy, then attaches the programs to every endpoint.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.register_endpoints()?;
        self.engine.reload();
        self.apply_policy().context("applying the initial policy")?;
        for pod in self.lab.pods.clone() {
            self.datapath
                .attach_endpoint(&self.node_netns, &pod.host_ifname)
                .with_context(|| format!("attaching to {}/{} ({})", pod.namespace, pod.name, pod.host_ifname))?;
        }
        for ep in self.state.endpoints() {
            self.state.set_endpoint_state(ep.id, EndpointState::Ready);
        }
        Ok(())
    }

    /// The cluster as the policy compiler sees it.
    pub fn cluster_view(&self) -> ClusterView {
        let endpoints = self.state.endpoints();
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
                    let ep = endpoints.iter().find(|e| e.namespace == pod.namespace && e.pod_name == pod.name)?;
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
        let started = std::time::Instant::now();
        let cluster = self.cluster_view();
        let (contents, snapshot) = match self.engine.prepare(&cluster) {
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
        let plan = self.engine.plan().expect("prepared above");
        for (id, ep) in &plan.endpoints {
            let audited = self.engine.audit.all || self.engine.audit.endpoints.contains(id);
            let mode = |enforced: bool| match (enforced, audited) {
                (false, _) => Enforcement::Disabled,
                (true, false) => Enforcement::Enabled,
                (true, true) => Enforcement::Audit,
            };
            self.state.set_enforcement(*id, mode(ep.ingress.enforced), mode(ep.egress.enforced));
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

    /// Puts the datapath's revision, conntrack settings and fill into `status`.
    fn publish_conntrack_settings(&self) {
        let revision = self.datapath.revision();
        let lifetimes = self.datapath.ct_lifetimes();
        let keep = self.datapath.options().keep_established;
        let fill = self.datapath.conntrack_fill().ok();
        self.state.update_conntrack(|s| {
            s.revision = revision;
            s.keep_established = keep;
            s.lifetime_tcp_seconds = lifetimes.tcp.as_secs();
            s.lifetime_other_seconds = lifetimes.other.as_secs();
            s.lifetime_close_seconds = lifetimes.close.as_secs();
            if let Some(fill) = fill {
                s.entries = fill.entries;
                s.capacity = fill.capacity;
            }
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

    /// Checks the followed files and applies what changed. Errors are logged and reported in
    /// `status`; the last good state stays in effect.
    pub fn tick(&mut self) {
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
        if reapply && let Err(e) = self.apply_policy() {
            warn!("{e:#}");
        }
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
        let plan = self.engine.plan();
        let mut views = Vec::new();
        for ep in self.state.endpoints() {
            if endpoint.is_some_and(|id| id != ep.id) {
                continue;
            }
            let planned = plan.and_then(|p| p.endpoints.get(&ep.id));
            let names = |f: fn(&flowgate_policy::EndpointPolicy) -> &flowgate_policy::DirectionPolicy| {
                planned
                    .map(|p| {
                        f(p).selected_by
                            .iter()
                            .map(|r| flowgate_proto::flow::PolicyName {
                                namespace: r.namespace.clone(),
                                name: r.name.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
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
                ingress_selected_by: names(|p| &p.ingress),
                egress_selected_by: names(|p| &p.egress),
                entries,
            });
        }
        Response::Policy(views)
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
}

/// Follows the policy directory and the topology file.
pub async fn follow_changes(controller: Arc<Mutex<Controller>>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let controller = Arc::clone(&controller);
        let _ = tokio::task::spawn_blocking(move || {
            controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner).tick();
        })
        .await;
    }
}
