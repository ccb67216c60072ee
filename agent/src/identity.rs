//! Security identities: pods whose security-relevant labels (their own labels, their namespace's name
//! and labels) are the same share one numeric identity, as in Cilium. The reserved ids and the first
//! allocated one are `flowgate_common::identity`'s; allocated ids are never reused for other labels while
//! the agent runs.

use std::collections::{BTreeMap, BTreeSet};

use flowgate_common::identity::FIRST_ALLOCATED;

/// The security-relevant labels of a pod, rendered as Cilium renders them:
/// `k8s:<key>=<value>` for pod labels, `k8s:io.kubernetes.pod.namespace=<ns>` and
/// `k8s:io.cilium.k8s.namespace.labels.<key>=<value>` for the namespace's labels.
pub fn security_labels(
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut labels = BTreeSet::new();
    labels.insert(format!("k8s:io.kubernetes.pod.namespace={namespace}"));
    for (k, v) in namespace_labels {
        labels.insert(format!("k8s:io.cilium.k8s.namespace.labels.{k}={v}"));
    }
    for (k, v) in pod_labels {
        labels.insert(format!("k8s:{k}={v}"));
    }
    labels.into_iter().collect()
}

/// Hands out identities for label sets.
#[derive(Debug, Default)]
pub struct IdentityAllocator {
    by_labels: BTreeMap<Vec<String>, u32>,
    next: u32,
}

impl IdentityAllocator {
    pub fn new() -> Self {
        Self { by_labels: BTreeMap::new(), next: FIRST_ALLOCATED }
    }

    /// The identity of a (sorted) label set, allocating one the first time it is seen.
    pub fn identity_for(&mut self, labels: &[String]) -> u32 {
        if let Some(id) = self.by_labels.get(labels) {
            return *id;
        }
        let id = self.next;
        self.next += 1;
        self.by_labels.insert(labels.to_vec(), id);
        id
    }

    /// Takes numbers decided elsewhere (the cluster's identities): these label sets have these numbers from
    /// now on. Numbers handed out here before are not reused by [`Self::identity_for`].
    pub fn assign(&mut self, assigned: &BTreeMap<Vec<String>, u32>) {
        for (labels, id) in assigned {
            // Most are known already (every sync brings the node's whole set): no copy for those.
            if self.by_labels.get(labels) != Some(id) {
                self.by_labels.insert(labels.clone(), *id);
            }
            self.next = self.next.max(id + 1);
        }
    }

    /// Labels of an identity.
    pub fn labels_of(&self, identity: u32) -> Option<&[String]> {
        self.by_labels.iter().find(|(_, id)| **id == identity).map(|(l, _)| l.as_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &[String])> {
        self.by_labels.iter().map(|(l, id)| (*id, l.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn same_labels_share_an_identity_namespace_matters() {
        let ns = map(&[("kubernetes.io/metadata.name", "x")]);
        let mut ids = IdentityAllocator::new();
        let a = ids.identity_for(&security_labels("x", &ns, &map(&[("pod", "a")])));
        let a2 = ids.identity_for(&security_labels("x", &ns, &map(&[("pod", "a")])));
        let b = ids.identity_for(&security_labels("x", &ns, &map(&[("pod", "b")])));
        let other_ns = map(&[("kubernetes.io/metadata.name", "y")]);
        let ya = ids.identity_for(&security_labels("y", &other_ns, &map(&[("pod", "a")])));
        assert_eq!(a, a2);
        assert_eq!(a, FIRST_ALLOCATED);
        assert_ne!(a, b);
        assert_ne!(a, ya);
        assert!(ids.labels_of(b).unwrap().contains(&"k8s:pod=b".to_string()));
    }
}
