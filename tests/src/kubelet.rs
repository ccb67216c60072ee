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

use crate::control_plane::ControlPlane;

/// A namespace with labels and its `default` ServiceAccount, as a manifest (JSON documents: no YAML
/// surprises with names like `y`).
pub fn namespace_manifest(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let namespace =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    let account = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": name},
    });
    format!("{namespace}\n---\n{account}\n")
}

/// A pod bound to `node`, with labels and ports `(name or "", port, protocol)`, as a manifest (no address yet).
pub fn pod_manifest(
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, u16, &str)],
) -> String {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(n, p, protocol)| match *n {
            "" => serde_json::json!({"containerPort": p, "protocol": protocol}),
            n => serde_json::json!({"name": n, "containerPort": p, "protocol": protocol}),
        })
        .collect();
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": "flowgate.invalid/none", "ports": ports}],
        },
    });
    serde_json::to_string(&pod).expect("pod as JSON")
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
    let mut ips = vec![serde_json::json!({"ip": ip.to_string()})];
    ips.extend(ipv6.map(|v6| serde_json::json!({"ip": v6.to_string()})));
    let patch = serde_json::json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": ips}});
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

/// Registers a lab node as a Node object, as its kubelet does: the object, then its addresses (the node's
/// fabric addresses as InternalIPs, its name as Hostname) through the status subresource.
pub fn register_node(plane: &ControlPlane, node: &NodeState) {
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
    });
    plane.apply(&object.to_string());
    let addresses = serde_json::json!({"status": {"addresses": [
        {"type": "InternalIP", "address": node.ip.to_string()},
        {"type": "InternalIP", "address": node.ipv6.to_string()},
        {"type": "Hostname", "address": node.name},
    ]}});
    plane.kubectl_ok(&[
        "patch",
        "node",
        &node.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &addresses.to_string(),
    ]);
}

/// Registers a whole lab: its nodes (a lab of several), its namespaces with their labels, and every pod on
/// its node with its addresses; the pods of a lab that is one node (they name none) are bound to `default_node`.
pub fn register_lab(plane: &ControlPlane, lab: &LabState, default_node: &str) {
    for node in &lab.nodes {
        register_node(plane, node);
    }
    for ns in &lab.namespaces {
        let labels: Vec<(&str, &str)> = ns
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != flowgate_lab::topology::NAMESPACE_NAME_LABEL)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        plane.apply(&namespace_manifest(&ns.name, &labels));
    }
    for pod in &lab.pods {
        run_pod(plane, &lab_pod(pod, pod.node.as_deref().unwrap_or(default_node)));
    }
}
