//! The upstream NetworkPolicy e2e model (kubernetes test/e2e/network/netpol): namespaces x, y, z labelled
//! `ns=<name>`, pods a, b, c labelled `pod=<name>`, each serving 80 and 81 over TCP and UDP on ports named
//! `serve-<port>-<proto>`; and the reachability truth table of the e2e suite (`flowgate_lab::Reachability`).

#![allow(dead_code, reason = "each test binary uses a different part of the model")]

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use flowgate_policy::{
    Addr, CidrIdentities, ClusterView, ContainerPort, LoadedPolicy, NamespaceInfo, PodInfo, PolicyPlan, Protocol,
    compile, source,
};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The 3x3 model. x/a is endpoint 1, 10.200.0.11, identity 1001; z/c is endpoint 9, 10.200.0.33.
#[must_use]
pub fn model() -> ClusterView {
    let mut cluster = ClusterView::default();
    for (n, namespace) in NAMESPACES.iter().enumerate() {
        cluster.namespaces.push(NamespaceInfo {
            name: (*namespace).to_owned(),
            labels: labels(&[("ns", namespace), ("kubernetes.io/metadata.name", namespace)]),
        });
        for (p, pod) in PODS.iter().enumerate() {
            let index = u8::try_from(n * 3 + p + 1).unwrap();
            let mut ports = Vec::new();
            for port in [80u16, 81] {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    ports.push(ContainerPort {
                        name: Some(format!("serve-{port}-{}", protocol.as_str().to_lowercase())),
                        port,
                        protocol,
                    });
                }
            }
            cluster.pods.push(PodInfo {
                endpoint_id: u16::from(index),
                namespace: (*namespace).to_owned(),
                name: (*pod).to_owned(),
                labels: labels(&[("pod", pod)]),
                ip: pod_ip(namespace, pod),
                ipv6: None,
                identity: 1000 + u32::from(index),
                ports,
            });
        }
    }
    cluster
}

/// `x/a` -> 10.200.0.11, `y/b` -> 10.200.0.22.
#[must_use]
pub fn pod_ip(namespace: &str, pod: &str) -> Ipv4Addr {
    let n = NAMESPACES.iter().position(|x| *x == namespace).unwrap();
    let p = PODS.iter().position(|x| *x == pod).unwrap();
    Ipv4Addr::new(10, 200, 0, u8::try_from((n + 1) * 10 + p + 1).unwrap())
}

/// Parses policies from YAML (several documents), panicking with every error.
#[must_use]
pub fn policies(yaml: &str) -> Vec<LoadedPolicy> {
    let (policies, errors) = source::parse_str(Path::new("test.yaml"), yaml);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(messages.is_empty(), "policy errors:\n{}", messages.join("\n"));
    policies
}

#[must_use]
pub fn plan(cluster: &ClusterView, yaml: &str) -> PolicyPlan {
    compile(&policies(yaml), cluster, &mut CidrIdentities::new())
}

/// The e2e suite's truth table (the lab's, the one `flowgate lab probe` prints), `x/a`-style names.
pub use flowgate_lab::Reachability;

/// Every pod of the model, `x/a`-style, in model order.
#[must_use]
pub fn pod_names() -> Vec<String> {
    NAMESPACES.iter().flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}"))).collect()
}

/// Every pod to every pod, all connected or all blocked (upstream's `NewReachability`).
#[must_use]
pub fn reachability(connected: bool) -> Reachability {
    Reachability::uniform(&pod_names(), connected)
}

/// The oracle's truth table for `protocol`/`port` between every pair of model pods.
pub fn observed(
    plan: &PolicyPlan,
    cluster: &ClusterView,
    protocol: Protocol,
    port: u16,
) -> impl Fn(&str, &str) -> bool {
    let addr = |name: &str| -> Addr {
        let (namespace, pod) = name.split_once('/').unwrap();
        Addr::endpoint(cluster.pods.iter().find(|p| p.namespace == namespace && p.name == pod).unwrap())
    };
    let plan = plan.clone();
    move |from, to| plan.evaluate(addr(from), addr(to), protocol, port).allowed
}

/// Asserts the full 9x9 matrix, printing both tables (`.` connected, `X` denied) on a mismatch.
#[track_caller]
pub fn assert_reachability(
    plan: &PolicyPlan,
    cluster: &ClusterView,
    protocol: Protocol,
    port: u16,
    expected: &Reachability,
) {
    let allowed = observed(plan, cluster, protocol, port);
    let mut got = Reachability::unknown(pod_names(), pod_names());
    for from in pod_names() {
        for to in pod_names() {
            got.set(&from, &to, allowed(&from, &to));
        }
    }
    let (want, got) = (expected.truth_table(), got.truth_table());
    assert!(want == got, "reachability mismatch on {protocol}/{port}\nexpected:\n{want}\nobserved:\n{got}");
}
