//! The tests play the kubelet's part on the real API server: they create Pod objects bound to a node
//! (`spec.nodeName`) and write the address through the status subresource, as a kubelet does once the pod's
//! network is up. Namespaces come with their `default` ServiceAccount (no controller manager runs to make
//! it, and the API server's ServiceAccount admission wants it).

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use crate::control_plane::ControlPlane;

/// A namespace with labels and its `default` ServiceAccount, as a manifest.
pub fn namespace_manifest(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let labels = serde_json::to_string(&labels).expect("labels as JSON");
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {labels}\n---\napiVersion: v1\n\
         kind: ServiceAccount\nmetadata:\n  name: default\n  namespace: {name}\n"
    )
}

/// A pod bound to `node`, with labels and named TCP ports, as a manifest (no address yet).
pub fn pod_manifest(namespace: &str, name: &str, node: &str, labels: &[(&str, &str)], ports: &[(&str, u16)]) -> String {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ports: Vec<serde_json::Value> =
        ports.iter().map(|(n, p)| serde_json::json!({"name": n, "containerPort": p, "protocol": "TCP"})).collect();
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

/// Writes `status.podIP`/`podIPs` and phase Running through the status subresource, as the kubelet does.
pub fn set_pod_ip(plane: &ControlPlane, kubeconfig: &Path, namespace: &str, name: &str, ip: Ipv4Addr) {
    let patch = serde_json::json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
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
    set_pod_ip(plane, kubeconfig, pod.namespace, pod.name, pod.ip);
}

/// What the tests say about a pod.
#[derive(Clone, Debug)]
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub node: &'a str,
    pub labels: Vec<(&'a str, &'a str)>,
    pub ports: Vec<(&'a str, u16)>,
    pub ip: Ipv4Addr,
}
