//! The endpoint registry: every pod the agent enforces for, under its small endpoint id. Ids are handed out
//! here and kept per `namespace/pod`, so a pod that goes away and comes back gets its old id. This is the
//! agent's state keeping, not wire format, so it lives in the agent; the [`Endpoint`]s it holds are what
//! the socket protocol reports (`flowgate_proto::endpoint`). Pure bookkeeping, no IO.
//!
//! Ids run from 1 to [`MAX_ENDPOINT_ID`] (0 is "no endpoint" to the datapath). Once every id has been handed
//! out, a new pod takes the id of the pod that went away longest ago (that pod, should it come back, gets
//! another; the controller makes the kernel forget what it kept under the id, see [`Self::take_reused`]);
//! when every id belongs to a pod that is still here, the new pod is refused. Ids never wrap: a wrapped id
//! would be 0 (the pod's packets taken for no endpoint's, unenforced) or another live pod's.

use std::{
    collections::{BTreeMap, VecDeque},
    net::Ipv4Addr,
};

use flowgate_common::capacity::MAX_ENDPOINTS;
use flowgate_proto::endpoint::{Endpoint, EndpointState, Enforcement, NewEndpoint};

/// The highest endpoint id: the datapath's per-endpoint arrays (the enforcement flags of each policy
/// generation, `FG_INVALID_SOURCE`) hold `MAX_ENDPOINTS` slots, indexed by id (0 means none). Far more than
/// the pods a node runs at once.
pub const MAX_ENDPOINT_ID: u16 = (MAX_ENDPOINTS - 1) as u16;

/// Every endpoint id belongs to a pod that is still registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no endpoint id left for pod {pod}: all {live} ids belong to registered pods")]
pub struct NoEndpointIdLeft {
    pub pod: String,
    pub live: usize,
}

/// All endpoints of this node, by id.
#[derive(Debug)]
pub struct EndpointRegistry {
    by_id: BTreeMap<u16, Endpoint>,
    /// Ids already handed out, by `namespace/pod`, so a pod that comes back gets its old id.
    ids: BTreeMap<String, u16>,
    /// Pods that went away, the longest gone first, with the id each still holds: taken back from the
    /// front once no id is left.
    gone: VecDeque<(u16, String)>,
    /// The next id never handed out (`u32`: it passes [`MAX_ENDPOINT_ID`] when all are).
    next_id: u32,
    max_id: u16,
    /// Ids taken back from pods gone since [`Self::take_reused`] was last called.
    reused: Vec<u16>,
}

impl Default for EndpointRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl EndpointRegistry {
    pub fn new() -> Self {
        Self::with_max_id(MAX_ENDPOINT_ID)
    }

    /// A registry that hands out ids 1 to `max_id` only (tests).
    pub fn with_max_id(max_id: u16) -> Self {
        Self {
            by_id: BTreeMap::new(),
            ids: BTreeMap::new(),
            gone: VecDeque::new(),
            next_id: 1,
            max_id,
            reused: Vec::new(),
        }
    }

    /// Registers a pod (or refreshes it, keeping its id) and returns its endpoint.
    pub fn upsert(&mut self, new: NewEndpoint) -> Result<&Endpoint, NoEndpointIdLeft> {
        let key = format!("{}/{}", new.namespace, new.pod_name);
        let id = match self.ids.get(&key) {
            Some(&id) => {
                if !self.by_id.contains_key(&id) {
                    // Back before its id was taken: it is no longer gone.
                    self.gone.retain(|(gone, _)| *gone != id);
                }
                id
            }
            None => {
                let id = self.free_id().ok_or_else(|| NoEndpointIdLeft { pod: key.clone(), live: self.by_id.len() })?;
                self.ids.insert(key, id);
                id
            }
        };
        let endpoint = Endpoint {
            id,
            namespace: new.namespace,
            pod_name: new.pod_name,
            labels: new.labels,
            identity: 0,
            ipv4: new.ipv4,
            ipv6: new.ipv6,
            interface: new.interface,
            ifindex: new.ifindex,
            ingress_enforcement: Enforcement::Disabled,
            egress_enforcement: Enforcement::Disabled,
            state: EndpointState::WaitingForIdentity,
            invalid_source_drops: 0,
        };
        self.by_id.insert(id, endpoint);
        Ok(&self.by_id[&id])
    }

    /// An id never handed out, else the id of the pod gone longest ago (taken from it).
    fn free_id(&mut self) -> Option<u16> {
        if self.next_id <= u32::from(self.max_id) {
            let id = self.next_id as u16;
            self.next_id += 1;
            return Some(id);
        }
        let (id, pod) = self.gone.pop_front()?;
        self.ids.remove(&pod);
        self.reused.push(id);
        Some(id)
    }

    /// The ids that went from a pod gone to a new one since the last call: what the kernel keeps under
    /// them (conntrack entries, the invalid-source count) is the old pod's and must go before the new
    /// pod's packets are taken for it.
    pub fn take_reused(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.reused)
    }

    /// Gives back ids [`Self::take_reused`] returned whose kernel state could not be cleared, for the next
    /// call.
    pub fn return_reused(&mut self, ids: impl IntoIterator<Item = u16>) {
        self.reused.extend(ids);
    }

    /// Forgets a pod that is gone; its id stays reserved for it, should it come back, until every other id
    /// has been handed out.
    pub fn remove(&mut self, id: u16) -> Option<Endpoint> {
        let removed = self.by_id.remove(&id)?;
        self.gone.push_back((id, removed.pod_ref()));
        Some(removed)
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
            ipv6: None,
            interface: format!("lxc{name}"),
            ifindex: 10,
        }
    }

    #[test]
    fn ids_are_small_and_stable_for_a_pod() {
        let mut reg = EndpointRegistry::new();
        assert_eq!(reg.upsert(pod("x", "a", [10, 0, 0, 1])).unwrap().id, 1);
        assert_eq!(reg.upsert(pod("x", "b", [10, 0, 0, 2])).unwrap().id, 2);
        assert_eq!(reg.upsert(pod("x", "a", [10, 0, 0, 3])).unwrap().id, 1, "same pod keeps its id");
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.by_ip(Ipv4Addr::new(10, 0, 0, 3)).unwrap().pod_ref(), "x/a");
        reg.remove(1);
        assert_eq!(reg.upsert(pod("x", "a", [10, 0, 0, 4])).unwrap().id, 1, "a pod that comes back too");
    }

    /// A node whose pods come and go (a CronJob's, each with a new name) runs through the ids: they never
    /// wrap to 0 (no endpoint: unenforced) or onto a pod still here; the longest gone give theirs back.
    #[test]
    fn ids_run_out_by_taking_back_the_longest_gone_never_by_wrapping() {
        let mut reg = EndpointRegistry::with_max_id(3);
        for name in ["a", "b", "c"] {
            reg.upsert(pod("x", name, [10, 0, 0, 1])).unwrap();
        }
        assert_eq!(
            reg.upsert(pod("x", "d", [10, 0, 0, 4])),
            Err(NoEndpointIdLeft { pod: "x/d".into(), live: 3 }),
            "every id is a live pod's"
        );
        assert_eq!(reg.len(), 3, "and the refusal changed nothing");
        reg.remove(2);
        reg.remove(1);
        assert!(reg.take_reused().is_empty());
        assert_eq!(reg.upsert(pod("x", "d", [10, 0, 0, 4])).unwrap().id, 2, "b went first");
        assert_eq!(reg.take_reused(), [2]);
        assert!(reg.take_reused().is_empty(), "taken once");
        assert_eq!(reg.upsert(pod("x", "a", [10, 0, 0, 5])).unwrap().id, 1, "a is back before its id went");
        assert_eq!(
            reg.upsert(pod("x", "b", [10, 0, 0, 6])).map(|e| e.id),
            Err(NoEndpointIdLeft { pod: "x/b".into(), live: 3 })
        );
        let ids: Vec<u16> = reg.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(reg.get(2).unwrap().pod_ref(), "x/d");

        // The whole range, as the agent has it: the last id is MAX_ENDPOINT_ID, and the next is taken back.
        let mut reg = EndpointRegistry::new();
        for i in 0..u32::from(MAX_ENDPOINT_ID) {
            let id = reg.upsert(pod("churn", &format!("job-{i}"), [10, 0, 0, 1])).unwrap().id;
            assert_eq!(u32::from(id), i + 1);
            reg.remove(id);
        }
        assert_eq!(reg.upsert(pod("churn", "one-more", [10, 0, 0, 1])).unwrap().id, 1);
    }
}
