//! The tests play the kubelet's part on the real API server: they register Node objects (addresses through
//! the status subresource), create Pod objects bound to a node (`spec.nodeName`) and write the address
//! through the status subresource, as a kubelet does once the pod's network is up. Namespaces come with their
//! `default` ServiceAccount (no controller manager runs to make it, and the API server's ServiceAccount
//! admission wants it). [`register_lab`] does all of it for a lab, each pod on its lab node.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use flowgate_lab::state::{LabState, NodeState, PodState};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::control_plane::ControlPlane;

/// A namespace with labels and its `default` ServiceAccount, as a manifest (JSON documents: no YAML
/// surprises with names like `y`).
pub fn namespace_manifest(name: &str, labels: &[(&str, &str)]) -> String {
    let (namespace, account) = namespace_objects(name, labels);
    format!("{namespace}\n---\n{account}\n")
}

/// The Namespace object and its `default` ServiceAccount.
fn namespace_objects(name: &str, labels: &[(&str, &str)]) -> (Value, Value) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    let account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": name},
    });
    (namespace, account)
}

/// A pod bound to `node`, with labels and ports `(name or "", port, protocol)`, as a manifest (no address yet).
pub fn pod_manifest(
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, u16, &str)],
) -> String {
    serde_json::to_string(&pod_object(namespace, name, node, labels, ports)).expect("pod as JSON")
}

/// The Pod object of [`pod_manifest`].
fn pod_object(namespace: &str, name: &str, node: &str, labels: &[(&str, &str)], ports: &[(&str, u16, &str)]) -> Value {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, protocol)| match *n {
            "" => json!({"containerPort": p, "protocol": protocol}),
            n => json!({"name": n, "containerPort": p, "protocol": protocol}),
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": "flowgate.invalid/none", "ports": ports}],
        },
    })
}

/// The kubelet's status patch of a running pod: `status.podIP`/`podIPs` (IPv4 first, then IPv6 on a
/// dual-stack lab) and phase Running.
pub fn pod_status(ip: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> Value {
    let mut ips = vec![json!({"ip": ip.to_string()})];
    ips.extend(ipv6.map(|v6| json!({"ip": v6.to_string()})));
    json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": ips}})
}

/// Writes `status.podIP`/`podIPs` (IPv4 first, then IPv6 on a dual-stack lab) and phase Running through the
/// status subresource, as the kubelet does.
pub fn set_pod_ip(
    plane: &ControlPlane,
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
    ip: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
) {
    let patch = pod_status(ip, ipv6);
    plane.kubectl_at(
        kubeconfig,
        &["patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", &patch.to_string()],
        None,
    );
}

/// Creates the pod bound to `node` and gives it `ip`.
pub fn run_pod(plane: &ControlPlane, pod: &PodSpec<'_>) {
    run_pod_at(plane, plane.admin_kubeconfig(), pod);
}

/// [`run_pod`] through the API server `kubeconfig` points at.
pub fn run_pod_at(plane: &ControlPlane, kubeconfig: &Path, pod: &PodSpec<'_>) {
    let manifest = pod_manifest(pod.namespace, pod.name, pod.node, &pod.labels, &pod.ports);
    plane.kubectl_at(kubeconfig, &["apply", "-f", "-"], Some(&manifest));
    set_pod_ip(plane, kubeconfig, pod.namespace, pod.name, pod.ip, pod.ipv6);
}

/// What the tests say about a pod.
#[derive(Clone, Debug)]
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub node: &'a str,
    pub labels: Vec<(&'a str, &'a str)>,
    /// (name, port, protocol).
    pub ports: Vec<(&'a str, u16, &'a str)>,
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

/// The Pod object of a lab pod, bound to `node`, with the lab's labels, ports and address.
pub fn lab_pod<'a>(pod: &'a PodState, node: &'a str) -> PodSpec<'a> {
    PodSpec {
        namespace: &pod.namespace,
        name: &pod.name,
        node,
        labels: pod.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        ports: pod.ports.iter().map(|p| (p.name.as_deref().unwrap_or_default(), p.port, p.protocol.as_str())).collect(),
        ip: pod.ip,
        ipv6: pod.ipv6,
    }
}

/// The Node object of a lab node.
fn node_object(node: &NodeState) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
    })
}

/// The kubelet's status patch of a node: its addresses.
fn node_status(node: &NodeState) -> Value {
    json!({"status": {"addresses": [
        {"type": "InternalIP", "address": node.ip.to_string()},
        {"type": "InternalIP", "address": node.ipv6.to_string()},
        {"type": "Hostname", "address": node.name},
    ]}})
}

/// Registers a whole lab: its nodes (a lab of several), its namespaces with their labels, and every pod on
/// its node with its addresses; the pods of a lab that is one node (they name none) are bound to `default_node`.
/// Each node as its kubelet registers it (the object, then its addresses through the status subresource), the
/// objects of [`namespace_manifest`] and [`run_pod`], through one kube-rs client: a `kubectl` per object cost
/// a case of the conformance suite about 4 s.
pub fn register_lab(plane: &ControlPlane, lab: &LabState, default_node: &str) {
    crate::agent::runtime().block_on(async {
        let client = plane.admin_client().await;
        for node in &lab.nodes {
            let nodes: Api<Node> = Api::all(client.clone());
            apply(&nodes, &node.name, &node_object(node)).await;
            patch_status(&nodes, &node.name, &node_status(node)).await;
        }
        for ns in &lab.namespaces {
            let labels: Vec<(&str, &str)> = ns
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != flowgate_lab::topology::NAMESPACE_NAME_LABEL)
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let (namespace, account) = namespace_objects(&ns.name, &labels);
            apply(&Api::<Namespace>::all(client.clone()), &ns.name, &namespace).await;
            apply(&Api::<ServiceAccount>::namespaced(client.clone(), &ns.name), "default", &account).await;
        }
        for pod in &lab.pods {
            let spec = lab_pod(pod, pod.node.as_deref().unwrap_or(default_node));
            let pods: Api<Pod> = Api::namespaced(client.clone(), spec.namespace);
            let object = pod_object(spec.namespace, spec.name, spec.node, &spec.labels, &spec.ports);
            apply(&pods, spec.name, &object).await;
            patch_status(&pods, spec.name, &pod_status(spec.ip, spec.ipv6)).await;
        }
    });
}

/// Creates or updates `object` by server-side apply, as the tests' field manager; panics saying which.
async fn apply<K>(api: &Api<K>, name: &str, object: &Value)
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply("flowgate-tests").force();
    if let Err(e) = api.patch(name, &params, &Patch::Apply(object)).await {
        panic!("applying {name} ({}): {e}\n{object}", K::kind(&()));
    }
}

/// A merge patch of `name`'s status subresource, as the kubelet writes it; panics saying which.
async fn patch_status<K>(api: &Api<K>, name: &str, status: &Value)
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await {
        panic!("patching the status of {name} ({}): {e}\n{status}", K::kind(&()));
    }
}
