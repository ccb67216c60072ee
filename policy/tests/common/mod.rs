//! The upstream NetworkPolicy e2e model (kubernetes test/e2e/network/netpol): namespaces x, y, z labelled
//! `ns=<name>`, pods a, b, c labelled `pod=<name>`, each serving 80 and 81 over TCP and UDP on ports named
//! `serve-<port>-<proto>`; and a reachability truth table rendered like the e2e suite's.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the model"
)]

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, path::Path};

use flowgate_policy::{
    Addr, CidrIdentities, ClusterView, ContainerPort, LoadedPolicy, NamespaceInfo, PodInfo,
    PolicyPlan, Protocol, compile, source,
};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The 3x3 model. x/a is endpoint 1, 10.200.0.11, identity 1001; z/c is endpoint 9, 10.200.0.33.
#[must_use]
pub fn model() -> ClusterView {
    let mut cluster = ClusterView::default();
    for (n, namespace) in NAMESPACES.iter().enumerate() {
        cluster.namespaces.push(NamespaceInfo {
            name: (*namespace).to_owned(),
            labels: labels(&[
                ("ns", namespace),
                ("kubernetes.io/metadata.name", namespace),
            ]),
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
    assert!(
        messages.is_empty(),
        "policy errors:\n{}",
        messages.join("\n")
    );
    policies
}

#[must_use]
pub fn plan(cluster: &ClusterView, yaml: &str) -> PolicyPlan {
    compile(&policies(yaml), cluster, &mut CidrIdentities::new())
}

/// The e2e suite's `Reachability`: an expected truth table over all pods, `x/a`-style names.
pub struct Reachability {
    pods: Vec<String>,
    expected: BTreeMap<(String, String), bool>,
}

impl Reachability {
    #[must_use]
    pub fn new(default: bool) -> Self {
        let pods: Vec<String> = NAMESPACES
            .iter()
            .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}")))
            .collect();
        let expected = pods
            .iter()
            .flat_map(|f| pods.iter().map(move |t| ((f.clone(), t.clone()), default)))
            .collect();
        Self { pods, expected }
    }

    pub fn expect(&mut self, from: &str, to: &str, connected: bool) -> &mut Self {
        self.expected
            .insert((from.to_owned(), to.to_owned()), connected);
        self
    }

    pub fn expect_all_ingress(&mut self, to: &str, connected: bool) -> &mut Self {
        for from in self.pods.clone() {
            self.expect(&from, to, connected);
        }
        self
    }

    pub fn expect_all_egress(&mut self, from: &str, connected: bool) -> &mut Self {
        for to in self.pods.clone() {
            self.expect(from, &to, connected);
        }
        self
    }

    /// `ExpectPeer`: a peer is `""` (every pod), `"x"` (every pod of x) or `"x/a"`.
    pub fn expect_peer(&mut self, from: &str, to: &str, connected: bool) -> &mut Self {
        let matches = |peer: &str, pod: &str| {
            peer.is_empty() || pod == peer || pod.split('/').next() == Some(peer)
        };
        for f in self.pods.clone() {
            for t in self.pods.clone() {
                if matches(from, &f) && matches(to, &t) {
                    self.expect(&f, &t, connected);
                }
            }
        }
        self
    }

    #[must_use]
    pub fn render(&self, cell: impl Fn(&str, &str) -> bool) -> String {
        let mut out = String::from("-");
        for to in &self.pods {
            write!(out, "\t{to}").unwrap();
        }
        for from in &self.pods {
            write!(out, "\n{from}").unwrap();
            for to in &self.pods {
                out.push('\t');
                out.push(if cell(from, to) { '.' } else { 'X' });
            }
        }
        out
    }
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
        Addr::endpoint(
            cluster
                .pods
                .iter()
                .find(|p| p.namespace == namespace && p.name == pod)
                .unwrap(),
        )
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
    let want = expected.render(|f, t| expected.expected[&(f.to_owned(), t.to_owned())]);
    let got = expected.render(observed(plan, cluster, protocol, port));
    assert!(
        want == got,
        "reachability mismatch on {protocol}/{port}\nexpected:\n{want}\n\nobserved:\n{got}\n"
    );
}
