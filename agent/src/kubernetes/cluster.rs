//! The cluster as the agent needs it, taken from API objects: namespaces with their labels, pods with
//! labels, address, node and named ports, and the NetworkPolicies. Pure (no client, no IO), so the
//! reflectors' contents are turned into the same value whatever order they arrived in.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use flowgate_policy::{ContainerPort, LoadedPolicy, Protocol};
use k8s_openapi::api::{core::v1::Namespace, core::v1::Pod, networking::v1::NetworkPolicy};

/// The label Kubernetes puts on every namespace (the policy compiler relies on it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A pod as policy sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs`' IPv4 address (or `status.podIP`'s); `None` until the pod has one.
    pub ipv4: Option<Ipv4Addr>,
    /// `status.podIPs`' IPv6 address on a dual-stack cluster.
    pub ipv6: Option<Ipv6Addr>,
    /// `spec.nodeName`: where it runs (or is scheduled).
    pub node: Option<String>,
    /// hostNetwork pods share the node's address: never endpoints, never in the ipcache.
    pub host_network: bool,
    /// Container ports, for named ports in policies.
    pub ports: Vec<ContainerPort>,
}

impl PodRecord {
    /// A pod that is done (Succeeded/Failed) no longer holds its address.
    pub(super) fn from_pod(pod: &Pod) -> Option<Self> {
        let namespace = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let status = pod.status.as_ref();
        let finished = status.and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
        let addresses = status
            .into_iter()
            .flat_map(|s| s.pod_ips.iter().flatten().map(|a| a.ip.as_str()).chain(s.pod_ip.as_deref()));
        let addresses: Vec<IpAddr> = addresses.filter_map(|a| a.parse::<IpAddr>().ok()).collect();
        let ipv4 = addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let ipv6 = addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let spec = pod.spec.as_ref();
        let ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(ContainerPort {
                    name: p.name.clone(),
                    port: u16::try_from(p.container_port).ok()?,
                    protocol: Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP"))?,
                })
            })
            .collect();
        Some(Self {
            namespace,
            name,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ipv4: if finished { None } else { ipv4 },
            ipv6: if finished { None } else { ipv6 },
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ports,
        })
    }

    /// `namespace/name`.
    pub fn pod_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Namespace name -> labels (with `kubernetes.io/metadata.name`).
pub type Namespaces = BTreeMap<String, BTreeMap<String, String>>;

/// (namespace, name) -> pod.
pub type Pods = BTreeMap<(String, String), Arc<PodRecord>>;

/// Everything the agent takes from the API server, keyed and sorted so two states compare equal exactly
/// when they hold the same objects.
///
/// Shared from one state to the next ([`KubeSource::snapshot`](super::KubeSource::snapshot)): a kind the
/// server did not change is the same `Arc` in both, and so is each pod and policy it did not change (the
/// agent's policy set holds the policies too), so comparing two states costs what differs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    pub namespaces: Arc<Namespaces>,
    pub pods: Arc<Pods>,
    /// Sorted by namespace and name.
    pub policies: Arc<Vec<Arc<LoadedPolicy>>>,
}

impl ClusterState {
    pub fn from_objects<'a>(
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'a Pod>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    ) -> Self {
        Self::with_taken(
            namespaces,
            pods.into_iter().filter_map(PodRecord::from_pod).map(Arc::new).collect(),
            policies.into_iter().map(|p| Arc::new(Self::policy_of(p))).collect(),
        )
    }

    /// The policy as the agent takes it from the server's object.
    pub fn policy_of(policy: &NetworkPolicy) -> LoadedPolicy {
        let shown = format!(
            "kubernetes:networkpolicy/{}/{}",
            policy.metadata.namespace.as_deref().unwrap_or_default(),
            policy.metadata.name.as_deref().unwrap_or_default()
        );
        LoadedPolicy::new(shown, 1, strip_server_fields(policy))
    }

    /// [`Self::from_objects`] with the pods and policies already taken ([`PodRecord::from_pod`],
    /// [`Self::policy_of`]).
    pub fn with_taken<'a>(
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: Vec<Arc<PodRecord>>,
        policies: Vec<Arc<LoadedPolicy>>,
    ) -> Self {
        Self {
            namespaces: Arc::new(Self::namespaces_of(namespaces)),
            pods: Arc::new(Self::pods_of(pods)),
            policies: Arc::new(Self::sorted(policies)),
        }
    }

    /// The namespaces' labels, each with its name label.
    pub(super) fn namespaces_of<'a>(namespaces: impl IntoIterator<Item = &'a Namespace>) -> Namespaces {
        namespaces
            .into_iter()
            .filter_map(|ns| {
                let name = ns.metadata.name.clone()?;
                let mut labels = ns.metadata.labels.clone().unwrap_or_default();
                labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
                Some((name, labels))
            })
            .collect()
    }

    pub(super) fn pods_of(pods: Vec<Arc<PodRecord>>) -> Pods {
        pods.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect()
    }

    /// Policies by namespace and name.
    pub(super) fn sorted(mut policies: Vec<Arc<LoadedPolicy>>) -> Vec<Arc<LoadedPolicy>> {
        policies.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
        policies
    }

    /// Pods with an IPv4 address that are not on the host's network: the ipcache's pod entries.
    pub fn addressed_pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pods.values().map(AsRef::as_ref).filter(|p| p.ipv4.is_some() && !p.host_network)
    }

    /// The addressed pods scheduled on `node`: this agent's endpoints.
    pub fn local_pods<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodRecord> {
        self.addressed_pods().filter(move |p| p.node.as_deref() == Some(node))
    }

    /// The security labels of every addressed pod: the label sets that need an identity.
    pub fn security_label_sets(&self) -> std::collections::BTreeSet<Vec<String>> {
        self.addressed_pods()
            .map(|p| crate::identity::security_labels(&p.namespace, &self.namespace_labels(&p.namespace), &p.labels))
            .collect()
    }

    /// A namespace's labels; a namespace not (yet) seen has only its name label, as the compiler assumes.
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned())]))
    }
}

/// The policy without what the server changes on every write (resourceVersion, managedFields, ...), so a
/// re-list that brings the same specs compares equal to what is in effect and nothing is recompiled.
fn strip_server_fields(policy: &NetworkPolicy) -> NetworkPolicy {
    let meta = &policy.metadata;
    NetworkPolicy {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            ..Default::default()
        },
        spec: policy.spec.clone(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, ContainerPort as ApiPort, PodIP, PodSpec, PodStatus};

    use super::*;

    fn pod(ns: &str, name: &str, node: &str, ips: &[&str], phase: &str) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([("app".into(), name.into())])),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![
                        ApiPort { name: Some("http".into()), container_port: 8080, ..Default::default() },
                        ApiPort { container_port: 9, ..Default::default() },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ipv4_address_named_ports_and_node_are_taken() {
        let state = ClusterState::from_objects([], [&pod("x", "a", "n1", &["fd00::5", "10.0.0.5"], "Running")], []);
        let a = &state.pods[&("x".to_owned(), "a".to_owned())];
        assert_eq!(a.ipv4, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(a.node.as_deref(), Some("n1"));
        assert_eq!(
            a.ports,
            [
                ContainerPort { name: Some("http".into()), port: 8080, protocol: Protocol::Tcp },
                ContainerPort { name: None, port: 9, protocol: Protocol::Tcp },
            ]
        );
        assert_eq!(state.local_pods("n1").count(), 1);
        assert_eq!(state.local_pods("n2").count(), 0);
    }

    #[test]
    fn finished_and_unaddressed_pods_are_not_in_the_ipcache() {
        let done = pod("x", "done", "n1", &["10.0.0.6"], "Succeeded");
        let pending = pod("x", "pending", "n1", &[], "Pending");
        let state = ClusterState::from_objects([], [&done, &pending], []);
        assert_eq!(state.pods.len(), 2);
        assert_eq!(state.addressed_pods().count(), 0);
    }

    #[test]
    fn host_network_pods_are_neither_endpoints_nor_in_the_ipcache() {
        let mut host = pod("kube-system", "proxy", "n1", &["192.168.0.10"], "Running");
        host.spec.as_mut().unwrap().host_network = Some(true);
        let state = ClusterState::from_objects([], [&host], []);
        assert_eq!(state.addressed_pods().count(), 0);
        assert_eq!(state.local_pods("n1").count(), 0);
        assert!(state.security_label_sets().is_empty());
    }

    #[test]
    fn namespaces_get_their_name_label_and_policies_compare_without_server_fields() {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta { name: Some("shop".into()), ..Default::default() },
            ..Default::default()
        };
        let policy = |rv: &str| NetworkPolicy {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("shop".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(Default::default()),
        };
        let one = ClusterState::from_objects([&ns], [], [&policy("1")]);
        let two = ClusterState::from_objects([&ns], [], [&policy("2")]);
        assert_eq!(one, two);
        assert_eq!(one.namespace_labels("shop")[NAMESPACE_NAME_LABEL], "shop");
        assert_eq!(one.namespace_labels("unseen")[NAMESPACE_NAME_LABEL], "unseen");
        assert_eq!(one.policies[0].file.display().to_string(), "kubernetes:networkpolicy/shop/p");
    }
}
