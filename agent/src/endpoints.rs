//! The endpoint registry: every pod the agent enforces for, under its small endpoint id. Ids are handed out
//! here and kept per `namespace/pod`, so a pod that goes away and comes back gets its old id. This is the
//! agent's state keeping, not wire format, so it lives in the agent; the [`Endpoint`]s it holds are what
//! the socket protocol reports (`flowgate_proto::endpoint`). Pure bookkeeping, no IO.

use std::{collections::BTreeMap, net::Ipv4Addr};

use flowgate_proto::endpoint::{Endpoint, EndpointState, Enforcement, NewEndpoint};

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
            ipv6: new.ipv6,
            interface: new.interface,
            ifindex: new.ifindex,
            ingress_enforcement: Enforcement::Disabled,
            egress_enforcement: Enforcement::Disabled,
            state: EndpointState::WaitingForIdentity,
            invalid_source_drops: 0,
        };
        self.by_id.insert(id, endpoint);
        &self.by_id[&id]
    }

    /// Forgets a pod that is gone; its id stays reserved for it, should it come back.
    pub fn remove(&mut self, id: u16) -> Option<Endpoint> {
        self.by_id.remove(&id)
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
        assert_eq!(reg.upsert(pod("x", "a", [10, 0, 0, 1])).id, 1);
        assert_eq!(reg.upsert(pod("x", "b", [10, 0, 0, 2])).id, 2);
        assert_eq!(reg.upsert(pod("x", "a", [10, 0, 0, 3])).id, 1, "same pod keeps its id");
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.by_ip(Ipv4Addr::new(10, 0, 0, 3)).unwrap().pod_ref(), "x/a");
    }
}
