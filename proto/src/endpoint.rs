//! Endpoints and identities as the agent reports them: every pod the agent enforces for, under a small
//! stable integer id (as Cilium's endpoint ids), and the security identities derived from labels. The
//! registry that hands out ids is here too; it is pure bookkeeping, no IO.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Policy enforcement of one direction of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// No policy selects the endpoint for this direction: everything passes.
    #[default]
    Disabled,
    /// Policy selects the endpoint: only what it allows passes.
    Enabled,
    /// Policy selects the endpoint but would-be drops pass and are reported as AUDIT.
    Audit,
}

/// Lifecycle of an endpoint, as `cilium endpoint list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    #[default]
    WaitingForIdentity,
    Regenerating,
    Ready,
    Disconnecting,
}

/// One endpoint (a pod on this node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u16,
    pub namespace: String,
    pub pod_name: String,
    pub labels: BTreeMap<String, String>,
    pub identity: u32,
    pub ipv4: Ipv4Addr,
    /// Node-side interface name and index.
    pub interface: String,
    pub ifindex: u32,
    pub ingress_enforcement: Enforcement,
    pub egress_enforcement: Enforcement,
    pub state: EndpointState,
}

impl Endpoint {
    /// `namespace/pod`.
    pub fn pod_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.pod_name)
    }

    /// Labels as `key=value`, sorted.
    pub fn label_list(&self) -> Vec<String> {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// A security identity: one per distinct set of security-relevant labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    pub labels: Vec<String>,
    /// Endpoints that have this identity.
    pub endpoints: Vec<u16>,
}

/// What is known about a pod before it gets an id.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub namespace: String,
    pub pod_name: String,
    pub labels: BTreeMap<String, String>,
    pub ipv4: Ipv4Addr,
    pub interface: String,
    pub ifindex: u32,
}

/// All endpoints of this node, by id.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    by_id: BTreeMap<u16, Endpoint>,
    /// Ids already handed out, by `namespace/pod`, so a pod that comes back gets its old id.
    ids: BTreeMap<String, u16>,
    next_id: u16,
}

impl EndpointRegistry {
    pub fn new() -> Self {
        Self { next_id: 1, ..Self::default() }
    }

    /// Registers a pod (or refreshes it, keeping its id) and returns its endpoint.
    pub fn upsert(&mut self, new: NewEndpoint) -> &Endpoint {
        let key = format!("{}/{}", new.namespace, new.pod_name);
        let id = *self.ids.entry(key).or_insert_with(|| {
            let id = self.next_id;
            self.next_id += 1;
            id
        });
        let endpoint = Endpoint {
            id,
            namespace: new.namespace,
            pod_name: new.pod_name,
            labels: new.labels,
            identity: 0,
            ipv4: new.ipv4,
            interface: new.interface,
            ifindex: new.ifindex,
            ingress_enforcement: Enforcement::Disabled,
            egress_enforcement: Enforcement::Disabled,
            state: EndpointState::WaitingForIdentity,
        };
        self.by_id.insert(id, endpoint);
        &self.by_id[&id]
    }

    pub fn get(&self, id: u16) -> Option<&Endpoint> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut Endpoint> {
        self.by_id.get_mut(&id)
    }

    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Endpoint> {
        self.by_id.values().find(|e| e.ipv4 == ip)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: [u8; 4]) -> NewEndpoint {
        NewEndpoint {
            namespace: ns.into(),
            pod_name: name.into(),
            labels: BTreeMap::new(),
            ipv4: Ipv4Addr::from(ip),
            interface: format!("lxc{name}"),
            ifindex: 10,
        }
    }

    #[test]
    fn ids_are_small_and_stable_for_a_pod() {
        let mut reg = EndpointRegistry::new();
        assert_eq!(reg.upsert(pod("x", "a", [10, 0, 0, 1])).id, 1);
        assert_eq!(reg.upsert(pod("x", "b", [10, 0, 0, 2])).id, 2);
        assert_eq!(reg.upsert(pod("x", "a", [10, 0, 0, 3])).id, 1, "same pod keeps its id");
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.by_ip(Ipv4Addr::new(10, 0, 0, 3)).unwrap().pod_ref(), "x/a");
    }
}
