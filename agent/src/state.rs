//! The agent's shared state: endpoints and identities, pipeline counters, connected clients. Requests
//! from the socket are answered from here ([`AgentState::handle`]); the event pipeline reads the peer
//! snapshot from here once per batch.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use flowgate_proto::{
    endpoint::{Endpoint, EndpointState, Enforcement, Identity, NewEndpoint},
    flow::Peer,
    message::{ClientInfo, ConntrackStatus, Counters, EventsBufferInfo, PolicyStatus, Response, Status},
    version::PROTOCOL_VERSION,
};

use flowgate_events::{
    enrich::PeerSnapshot,
    hub::{Hub, SubscriberStats},
    pipeline::{PipelineContext, PipelineCounters},
};

use crate::{
    endpoints::{EndpointRegistry, NoEndpointIdLeft},
    identity::{IdentityAllocator, security_labels},
    policy::PolicySnapshot,
};

/// Facts about the agent fixed at start.
#[derive(Clone, Debug, Default)]
pub struct AgentInfo {
    pub version: String,
    pub kernel: String,
    pub events_buffer: EventsBufferInfo,
    /// `--attach-mode`: `tc` or `tcx`.
    pub attach_mode: String,
}

#[derive(Default)]
struct Endpoints {
    registry: EndpointRegistry,
    identities: IdentityAllocator,
    /// Labels of the CIDR identities of the policy in effect (`cidr:10.0.0.0/8`).
    cidr_labels: BTreeMap<u32, String>,
    /// Pods this node does not enforce for (other nodes' pods, in Kubernetes mode), by address.
    remote: BTreeMap<std::net::IpAddr, Arc<Peer>>,
    /// What the pipeline resolves peers with.
    snapshot: Arc<PeerSnapshot>,
}

/// A pod of the cluster this node does not enforce for: a peer known by address and identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub namespace_labels: BTreeMap<String, String>,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<std::net::Ipv6Addr>,
}

struct ClientEntry {
    info: ClientInfo,
    stats: Option<Arc<SubscriberStats>>,
}

pub struct AgentState {
    started: Instant,
    info: AgentInfo,
    pub counters: PipelineCounters,
    endpoints: RwLock<Endpoints>,
    hub: Arc<Hub>,
    clients: Mutex<BTreeMap<u64, ClientEntry>>,
    next_client: AtomicU64,
    policy: RwLock<Arc<PolicySnapshot>>,
    policy_status: RwLock<PolicyStatus>,
    /// Packets each endpoint sent with another source address (dropped), as last read from the kernel.
    invalid_source: Mutex<BTreeMap<u16, u64>>,
    conntrack: RwLock<ConntrackStatus>,
}

/// Keeps a client listed in `status` until dropped.
pub struct ClientGuard {
    state: Arc<AgentState>,
    pub id: u64,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.state.clients_lock().remove(&self.id);
    }
}

impl ClientGuard {
    /// Records what the client said in its hello.
    pub fn set_software(&self, software: &str) {
        if let Some(c) = self.state.clients_lock().get_mut(&self.id) {
            c.info.software = software.to_owned();
        }
    }

    /// Marks the client as a subscriber whose queue counters `status` reports.
    pub fn set_subscription(&self, stats: Arc<SubscriberStats>) {
        if let Some(c) = self.state.clients_lock().get_mut(&self.id) {
            c.info.subscribed = true;
            c.stats = Some(stats);
        }
    }
}

impl AgentState {
    pub fn new(info: AgentInfo, hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            info,
            counters: PipelineCounters::default(),
            endpoints: RwLock::new(Endpoints {
                registry: EndpointRegistry::new(),
                identities: IdentityAllocator::new(),
                cidr_labels: BTreeMap::new(),
                remote: BTreeMap::new(),
                snapshot: Arc::default(),
            }),
            hub,
            clients: Mutex::new(BTreeMap::new()),
            next_client: AtomicU64::new(1),
            policy: RwLock::new(Arc::default()),
            policy_status: RwLock::new(PolicyStatus::default()),
            invalid_source: Mutex::new(BTreeMap::new()),
            conntrack: RwLock::new(ConntrackStatus::default()),
        })
    }

    /// Updates the connection-tracking part of `status` (controller and garbage collector).
    pub fn update_conntrack(&self, update: impl FnOnce(&mut ConntrackStatus)) {
        update(&mut self.conntrack.write().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    pub fn conntrack_status(&self) -> ConntrackStatus {
        self.conntrack.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Installs what enrichment needs for a new policy generation.
    pub fn set_policy(&self, snapshot: Arc<PolicySnapshot>, cidr_labels: BTreeMap<u32, String>) {
        *self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
        let mut eps = self.endpoints_write();
        if eps.cidr_labels != cidr_labels {
            eps.cidr_labels = cidr_labels;
            Self::rebuild_snapshot(&mut eps);
        }
    }

    /// The policy names behind rule ids, for the pipeline.
    pub fn policy(&self) -> Arc<PolicySnapshot> {
        Arc::clone(&self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn set_policy_status(&self, status: PolicyStatus) {
        *self.policy_status.write().unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    pub fn set_enforcement(&self, id: u16, ingress: Enforcement, egress: Enforcement) {
        if let Some(ep) = self.endpoints_write().registry.get_mut(id) {
            ep.ingress_enforcement = ingress;
            ep.egress_enforcement = egress;
        }
    }

    pub fn endpoint(&self, id: u16) -> Option<Endpoint> {
        let mut endpoint = self.endpoints_read().registry.get(id).cloned()?;
        endpoint.invalid_source_drops = self.invalid_source_drops().get(&id).copied().unwrap_or(0);
        Some(endpoint)
    }

    /// Per-endpoint counts of packets dropped for an invalid source address, as last read from the kernel.
    pub fn set_invalid_source_drops(&self, drops: BTreeMap<u16, u64>) {
        *self.invalid_source.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = drops;
    }

    fn invalid_source_drops(&self) -> BTreeMap<u16, u64> {
        self.invalid_source.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The answer for an unknown endpoint id: what exists instead.
    pub fn not_found_endpoint(&self, id: u16) -> Response {
        Response::NotFound {
            what: format!("endpoint {id}"),
            known: self.endpoints().iter().map(|e| format!("{} ({})", e.id, e.pod_ref())).collect(),
        }
    }

    /// Labels of every identity: pods' security labels and CIDR identities.
    pub fn identity_labels(&self) -> BTreeMap<u32, Vec<String>> {
        let eps = self.endpoints_read();
        let mut out: BTreeMap<u32, Vec<String>> =
            eps.identities.iter().map(|(id, labels)| (id, labels.to_vec())).collect();
        for (id, label) in &eps.cidr_labels {
            out.insert(*id, vec![label.clone()]);
        }
        out
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn clients_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientEntry>> {
        self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn endpoints_read(&self) -> std::sync::RwLockReadGuard<'_, Endpoints> {
        self.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn endpoints_write(&self) -> std::sync::RwLockWriteGuard<'_, Endpoints> {
        self.endpoints.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lists a connected client (peer credentials) for `status`.
    pub fn register_client(self: &Arc<Self>, uid: u32, pid: i32) -> ClientGuard {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let info = ClientInfo { id, uid, pid, ..ClientInfo::default() };
        self.clients_lock().insert(id, ClientEntry { info, stats: None });
        ClientGuard { state: Arc::clone(self), id }
    }

    /// Registers (or refreshes) a pod as an endpoint, with its identity from its security labels.
    pub fn upsert_endpoint(
        &self,
        new: NewEndpoint,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<Endpoint, NoEndpointIdLeft> {
        Ok(self.upsert_endpoints([(new, namespace_labels.clone())])?.pop().expect("one endpoint in, one out"))
    }

    /// [`Self::upsert_endpoint`] for many pods at once: the pipeline's snapshot is rebuilt once, not once per
    /// pod (a node of 500 pods re-registered on a label change rebuilt it 500 times). A pod for which no id
    /// is left stops the batch there (the ones before it stay registered).
    pub fn upsert_endpoints(
        &self,
        pods: impl IntoIterator<Item = (NewEndpoint, BTreeMap<String, String>)>,
    ) -> Result<Vec<Endpoint>, NoEndpointIdLeft> {
        let mut eps = self.endpoints_write();
        let endpoints = pods
            .into_iter()
            .map(|(new, namespace_labels)| {
                let labels = security_labels(&new.namespace, &namespace_labels, &new.labels);
                let identity = eps.identities.identity_for(&labels);
                let id = eps.registry.upsert(new)?.id;
                let endpoint = eps.registry.get_mut(id).expect("just inserted");
                endpoint.identity = identity;
                endpoint.state = EndpointState::Regenerating;
                Ok(endpoint.clone())
            })
            .collect();
        Self::rebuild_snapshot(&mut eps);
        endpoints
    }

    /// Replaces the pods known by address only (they get identities from their security labels, as
    /// endpoints do, so the same labels share one); returns each one's identity, in order.
    pub fn set_remote_pods(&self, pods: &[RemotePod]) -> Vec<u32> {
        let mut eps = self.endpoints_write();
        let mut remote = BTreeMap::new();
        let identities = pods
            .iter()
            .map(|pod| {
                let labels = security_labels(&pod.namespace, &pod.namespace_labels, &pod.labels);
                let identity = eps.identities.identity_for(&labels);
                let peer = Peer {
                    endpoint_id: 0,
                    identity,
                    namespace: pod.namespace.clone(),
                    pod_name: pod.name.clone(),
                    labels: pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                };
                let peer = Arc::new(peer);
                remote.insert(pod.ipv4.into(), Arc::clone(&peer));
                if let Some(ipv6) = pod.ipv6 {
                    remote.insert(ipv6.into(), peer);
                }
                identity
            })
            .collect();
        eps.remote = remote;
        Self::rebuild_snapshot(&mut eps);
        identities
    }

    /// Endpoint ids taken back from pods gone and given to new ones since the last call (see
    /// [`EndpointRegistry::take_reused`]).
    pub fn take_reused_endpoint_ids(&self) -> Vec<u16> {
        self.endpoints_write().registry.take_reused()
    }

    /// Gives back reused ids whose kernel state could not be cleared (see [`EndpointRegistry::return_reused`]).
    pub fn return_reused_endpoint_ids(&self, ids: impl IntoIterator<Item = u16>) {
        self.endpoints_write().registry.return_reused(ids);
    }

    /// Removes an endpoint whose pod is gone (its id stays reserved for the same pod); returns it.
    pub fn remove_endpoint(&self, id: u16) -> Option<Endpoint> {
        let mut eps = self.endpoints_write();
        let removed = eps.registry.remove(id);
        Self::rebuild_snapshot(&mut eps);
        removed
    }

    /// Takes identity numbers decided by the cluster (label set -> number); see [`IdentityAllocator::assign`].
    pub fn assign_identities(&self, assigned: &BTreeMap<Vec<String>, u32>) {
        self.endpoints_write().identities.assign(assigned);
    }

    pub fn set_endpoint_state(&self, id: u16, state: EndpointState) {
        if let Some(ep) = self.endpoints_write().registry.get_mut(id) {
            ep.state = state;
        }
    }

    /// The pipeline's peers from the endpoints, the remote pods and the CIDR identities. An endpoint's
    /// peer that the last snapshot has as it is now is kept (its `Arc`), not made again: a sync re-registers
    /// every pod of the node, and most are as they were.
    fn rebuild_snapshot(eps: &mut Endpoints) {
        let mut snapshot = PeerSnapshot::default();
        for ep in eps.registry.iter() {
            let kept = eps.snapshot.by_id.get(&ep.id).filter(|peer| {
                (peer.identity, &peer.namespace, &peer.pod_name) == (ep.identity, &ep.namespace, &ep.pod_name)
                    && is_label_list(&peer.labels, &ep.labels)
            });
            let peer = kept.map_or_else(
                || {
                    Arc::new(Peer {
                        endpoint_id: ep.id,
                        identity: ep.identity,
                        namespace: ep.namespace.clone(),
                        pod_name: ep.pod_name.clone(),
                        labels: ep.label_list(),
                    })
                },
                Arc::clone,
            );
            snapshot.by_ip.insert(ep.ipv4.into(), Arc::clone(&peer));
            if let Some(ipv6) = ep.ipv6 {
                snapshot.by_ip.insert(ipv6.into(), Arc::clone(&peer));
            }
            snapshot.by_id.insert(ep.id, peer);
        }
        for (ip, peer) in &eps.remote {
            snapshot.by_ip.entry(*ip).or_insert_with(|| Arc::clone(peer));
        }
        for (id, label) in &eps.cidr_labels {
            snapshot
                .identities
                .insert(*id, Arc::new(Peer { identity: *id, labels: vec![label.clone()], ..Peer::default() }));
        }
        eps.snapshot = Arc::new(snapshot);
    }

    /// The current endpoints as the pipeline sees them.
    pub fn peers(&self) -> Arc<PeerSnapshot> {
        Arc::clone(&self.endpoints_read().snapshot)
    }

    /// `f` of every endpoint, in id order, without copying the endpoints (their invalid-source counts are
    /// not filled in: see [`Self::endpoints`]).
    pub fn map_endpoints<T>(&self, f: impl FnMut(&Endpoint) -> T) -> Vec<T> {
        self.endpoints_read().registry.iter().map(f).collect()
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        let drops = self.invalid_source_drops();
        let mut endpoints: Vec<Endpoint> = self.endpoints_read().registry.iter().cloned().collect();
        for ep in &mut endpoints {
            ep.invalid_source_drops = drops.get(&ep.id).copied().unwrap_or(0);
        }
        endpoints
    }

    pub fn identities(&self) -> Vec<Identity> {
        let eps = self.endpoints_read();
        eps.identities
            .iter()
            .map(|(id, labels)| Identity {
                id,
                labels: labels.to_vec(),
                endpoints: eps.registry.iter().filter(|e| e.identity == id).map(|e| e.id).collect(),
            })
            .collect()
    }

    pub fn status(&self) -> Status {
        let eps = self.endpoints_read();
        let clients: Vec<ClientInfo> = self
            .clients_lock()
            .values()
            .map(|c| {
                let mut info = c.info.clone();
                if let Some(stats) = &c.stats {
                    info.events_sent = stats.events_queued.load(Ordering::Relaxed);
                    info.events_lost = stats.events_lost.load(Ordering::Relaxed);
                }
                info
            })
            .collect();
        Status {
            agent_version: self.info.version.clone(),
            protocol: Some(PROTOCOL_VERSION),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            kernel: self.info.kernel.clone(),
            events_buffer: self.info.events_buffer.clone(),
            attach_mode: self.info.attach_mode.clone(),
            endpoints: eps.registry.len(),
            identities: eps.identities.iter().count(),
            policy: self.policy_status.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            counters: Counters {
                records_read: self.counters.records_read.load(Ordering::Relaxed),
                records_lost_kernel: self.counters.kernel_lost.load(Ordering::Relaxed)
                    + self.counters.perf_lost_published.load(Ordering::Relaxed),
                decode_errors: self.counters.decode_errors.load(Ordering::Relaxed),
                client_queue_losses: self.hub.queue_losses(),
                packets: self.counters.packets.load(Ordering::Relaxed),
                kernel: self.counters.kernel.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
                perf_lost: self.counters.perf_lost.load(Ordering::Relaxed),
                verdict_log_written: 0,
                verdict_log_lost: 0,
                requests_refused: 0,
            },
            clients,
            conntrack: self.conntrack_status(),
        }
    }
}

/// The event pipeline reads the hub, its counters and the snapshots from here.
impl PipelineContext for AgentState {
    type Policy = PolicySnapshot;

    fn hub(&self) -> &Arc<Hub> {
        AgentState::hub(self)
    }

    fn counters(&self) -> &PipelineCounters {
        &self.counters
    }

    fn peers(&self) -> Arc<PeerSnapshot> {
        AgentState::peers(self)
    }

    fn policy(&self) -> Arc<PolicySnapshot> {
        AgentState::policy(self)
    }

    fn decoded(&self, batch: &[Arc<flowgate_proto::Flow>]) {
        crate::instruments::instruments().latency.decoded(batch);
    }
}

/// Whether `list` is `labels` as [`Endpoint::label_list`] writes them (`key=value`, in order), without
/// writing them.
fn is_label_list(list: &[String], labels: &BTreeMap<String, String>) -> bool {
    list.len() == labels.len()
        && list.iter().zip(labels).all(|(written, (key, value))| {
            written.len() == key.len() + 1 + value.len()
                && written.starts_with(key.as_str())
                && written[key.len()..].starts_with('=')
                && written.ends_with(value.as_str())
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use flowgate_events::hub::HubConfig;

    fn state() -> Arc<AgentState> {
        AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()))
    }

    /// A pod `ns/name` labelled `app=<app>` at 10.0.0.<ip>, for tests here and in [`crate::api`].
    pub(crate) fn pod(ns: &str, name: &str, app: &str, ip: u8) -> NewEndpoint {
        NewEndpoint {
            namespace: ns.into(),
            pod_name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ipv4: Ipv4Addr::new(10, 0, 0, ip),
            ipv6: None,
            interface: format!("lxc{ip}"),
            ifindex: u32::from(ip),
        }
    }

    #[test]
    fn endpoints_get_identities_and_requests_answer() {
        let s = state();
        let ns = BTreeMap::new();
        let a = s.upsert_endpoint(pod("x", "a1", "a", 1), &ns).unwrap();
        let a2 = s.upsert_endpoint(pod("x", "a2", "a", 2), &ns).unwrap();
        let b = s.upsert_endpoint(pod("x", "b", "b", 3), &ns).unwrap();
        assert_eq!(a.identity, a2.identity, "same labels, same identity");
        assert_ne!(a.identity, b.identity);
        assert_eq!(s.peers().by_ip[&Ipv4Addr::new(10, 0, 0, 3).into()].pod_name, "b");
        assert_eq!(s.identities().len(), 2);
        assert_eq!(s.status().endpoints, 3);
        let guard = s.register_client(0, 1);
        assert_eq!(s.status().clients.len(), 1);
        drop(guard);
        assert!(s.status().clients.is_empty());
    }

    #[test]
    fn the_peer_snapshot_follows_relabels_and_keeps_the_peers_that_did_not_change() {
        let s = state();
        let ns = BTreeMap::new();
        s.upsert_endpoint(pod("x", "a", "a", 1), &ns).unwrap();
        s.upsert_endpoint(pod("x", "b", "b", 2), &ns).unwrap();
        let peer = |ip: u8| Arc::clone(&s.peers().by_ip[&Ipv4Addr::new(10, 0, 0, ip).into()]);
        let (a, b) = (peer(1), peer(2));
        let mut relabelled = pod("x", "b", "b", 2);
        relabelled.labels.insert("role".into(), "trusted".into());
        let b2 = s.upsert_endpoint(relabelled, &ns).unwrap();
        assert!(Arc::ptr_eq(&peer(1), &a), "a unchanged: its peer kept");
        assert_eq!(peer(2).labels, ["app=b", "role=trusted"]);
        assert_eq!(peer(2).identity, b2.identity);
        assert_ne!(b2.identity, b.identity, "new labels, new identity");
        // Back to the old labels: the old identity and labels again, in a peer made anew.
        let back = s.upsert_endpoint(pod("x", "b", "b", 2), &ns).unwrap();
        assert_eq!((peer(2).identity, peer(2).labels.clone()), (b.identity, b.labels.clone()));
        assert_eq!(back.identity, b.identity);
        // Written labels are compared as written: `key=value` in order, nothing more or less.
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let list = |items: &[&str]| -> Vec<String> { items.iter().map(|i| (*i).to_owned()).collect() };
        assert!(is_label_list(&list(&["a=1", "b=2"]), &labels(&[("a", "1"), ("b", "2")])));
        assert!(is_label_list(&[], &labels(&[])));
        for (written, pairs) in [
            (list(&["a=1"]), labels(&[("a", "1"), ("b", "2")])),
            (list(&["a=1", "b=2"]), labels(&[("a", "1")])),
            (list(&["a=12"]), labels(&[("a", "1")])),
            (list(&["a:1"]), labels(&[("a", "1")])),
            (list(&["ab=1"]), labels(&[("a", "b1")])),
            (list(&["a=1"]), labels(&[("a", "2")])),
        ] {
            assert!(!is_label_list(&written, &pairs), "{written:?} against {pairs:?}");
        }
    }
}
