//! Several nodes on one machine, on one real API server: a lab of two nodes (`examples/lab-multinode.yaml`:
//! each node a network namespace with its own agent, routed to the other through the lab's fabric namespace,
//! never the machine's own), registered as Node objects. The test plays the kubelet (Pod objects bound to
//! their node, addresses through the status subresource). A connection from a pod of node-1 to a pod of
//! node-2 is enforced by each side on its own — an egress policy by node-1's agent, an ingress policy by
//! node-2's — over IPv4 and IPv6, and both agents show the flow with the same (cluster-wide) identity numbers.
//!
//! node-1's agent runs as on a real node, given only the node's namespace (`--node-netns`); node-2's is
//! given the lab and finds its node's namespace by its node name (`--lab`, pins of its own under the lab's).
//!
//! Conformance across nodes, a representative subset: the x/y/z × a/b/c model of the upstream e2e suite
//! (`examples/lab-netpol.yaml`) spread over three nodes (every `a` on node-1, `b` on node-2, `c` on node-3, so
//! every namespace spans every node), one agent each, and cases of `conformance.rs` whose full 9×9 truth
//! table over IPv4 and IPv6 depends on verdicts of other nodes' agents: ingress isolation, an ingress peer
//! of namespace AND pod selectors (and the peer relabelled on another node), egress to a namespace on one
//! port, by number and by name. (`conformance_api.rs` runs every case through the API server on one node.)

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowgate_lab::{Reachability, Topology, topology::NodeSpec};
use flowgate_proto::{
    Flow,
    client::Client,
    flow::{EventType, PolicyAttribution, TrafficDirection, Verdict},
    message::{Event, Subscription},
};
use flowgate_tests::{
    LabGuard, TempDir,
    agent::{AgentGuard, SocketDir, runtime},
    control_plane::ControlPlane,
    example, flowgate_ok, kubelet, probe_results,
};

/// Egress of default/client only to the database of namespace shop: its connections to shop/server are
/// node-1's to deny (node-2 has no policy against them).
const CLIENT_EGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-egress
  namespace: default
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
    - to:
        - namespaceSelector: {matchLabels: {team: shop}}
          podSelector: {matchLabels: {app: db}}
      ports:
        - {protocol: TCP, port: 5432}
";

/// Ingress of shop/server only from default/other on TCP 80: default/client's connections are node-2's to
/// deny (node-1 lets them out).
const SERVER_INGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: server-ingress
  namespace: shop
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}
          podSelector: {matchLabels: {app: other}}
      ports:
        - {protocol: TCP, port: 80}
";

/// One node of the lab with its agent.
struct Node {
    name: &'static str,
    agent: AgentGuard,
    socket: String,
}

impl Node {
    /// `flowgate ARGS... --socket <this node's agent> -o json`, parsed.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--socket", &self.socket, "-o", "json"]);
        serde_json::from_str(&flowgate_ok(&all)).expect("JSON output")
    }

    /// The endpoints by `namespace/pod`: (id, identity, state).
    fn endpoints(&self) -> BTreeMap<String, (u64, u64, String)> {
        self.json(&["endpoint", "list"])
            .as_array()
            .expect("a list")
            .iter()
            .map(|e| {
                (
                    format!("{}/{}", e["namespace"].as_str().unwrap(), e["pod_name"].as_str().unwrap()),
                    (
                        e["id"].as_u64().unwrap(),
                        e["identity"].as_u64().unwrap(),
                        e["state"].as_str().unwrap_or_default().to_owned(),
                    ),
                )
            })
            .collect()
    }

    /// The identity numbers of pods, by their `k8s:` label sets.
    fn pod_identities(&self) -> BTreeMap<Vec<String>, u64> {
        let pod_namespace = "k8s:io.kubernetes.pod.namespace=";
        self.json(&["identity", "list"])
            .as_array()
            .expect("a list")
            .iter()
            .map(|i| {
                let labels: Vec<String> =
                    i["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
                (labels, i["id"].as_u64().unwrap())
            })
            .filter(|(labels, _)| labels.iter().any(|l| l.starts_with(pod_namespace)))
            .collect()
    }

    /// The flows of the agent's history recorded at or after `since_ns` (wall clock).
    fn flows_since(&self, since_ns: u64) -> Vec<Arc<Flow>> {
        runtime().block_on(async {
            let client = Client::connect(Path::new(&self.socket), "multinode-test").await.expect("connect");
            let subscription = Subscription { last: 65_536, follow: false, ..Subscription::default() };
            let mut stream = client.subscribe(subscription).await.expect("subscribe");
            let mut flows = Vec::new();
            while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(500), stream.next_batch()).await {
                for event in batch.expect("a batch") {
                    if let Event::Flow(flow) = event {
                        flows.push(flow);
                    }
                }
            }
            flows.retain(|f| f.time_ns >= since_ns);
            flows
        })
    }
}

fn now_ns() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos()).expect("fits")
}

/// Probes `(from, to, port, protocol)` over IPv4 and IPv6 until each connects or not as expected; panics
/// after a minute with both agents' logs.
fn wait_for_reachability(lab: &LabGuard, nodes: &[Node], what: &str, expected: &[(&str, &str, &str, &str, bool)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut wrong = Vec::new();
        for &(from, to, port, protocol, connected) in expected {
            for family in [&[][..], &["--ipv6"][..]] {
                let mut args = vec!["--from", from, "--to", to, "--port", port, "--protocol", protocol];
                args.extend_from_slice(family);
                let (report, _) = lab.probe(&args);
                let got = probe_results(&report).iter().any(|(_, _, ok)| *ok);
                if got != connected {
                    wrong.push(format!("{from} -> {to} {port}/{protocol} {family:?}: connected {got}"));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still wrong {wrong:?}\n{}",
            nodes.iter().map(|n| format!("{} agent log:\n{}", n.name, n.agent.output())).collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Flows of `from` to `to` on `port` (either IP version).
fn between<'a>(flows: &'a [Arc<Flow>], from: &[IpAddr], to: &[IpAddr], port: u16) -> Vec<&'a Arc<Flow>> {
    flows
        .iter()
        .filter(|f| from.contains(&f.source_ip) && to.contains(&f.destination_ip) && f.destination_port == port)
        .collect()
}

#[test]
fn cross_node_connections_are_enforced_and_seen_on_both_nodes_with_the_same_identities() {
    flowgate_tests::require_root();
    let plane = ControlPlane::start("multinode");
    let lab = LabGuard::up("mnode", &example("lab-multinode.yaml"));
    assert_eq!(lab.state.nodes.len(), 2, "two nodes: {:?}", lab.state.nodes);
    kubelet::register_lab(&plane, &lab.state, "node-1");
    let nodes_on_server = plane.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[*].status.addresses[0].address}"]);
    assert_eq!(nodes_on_server, "10.199.0.1 10.199.0.2", "both nodes registered with their addresses");

    // A hostNetwork pod of node-1 (a node agent, as a CNI's or flowgate's own): it has the node's address,
    // so it is neither an endpoint nor an identity of its own.
    let host_network = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "node-agent", "namespace": "default", "labels": {"app": "node-agent"}},
        "spec": {
            "nodeName": "node-1",
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": "flowgate.invalid/none"}],
        },
    });
    plane.apply(&host_network.to_string());
    let node1 = lab.state.node("node-1").unwrap();
    kubelet::set_pod_ip(&plane, plane.admin_kubeconfig(), "default", "node-agent", node1.ip, Some(node1.ipv6));

    let dir = SocketDir::new("mnode");
    let kubeconfig = plane.agent_kubeconfig().to_str().unwrap().to_owned();
    let start = |name: &'static str, extra: &[&str]| {
        let socket = dir.socket(name);
        let mut args = vec!["--kubernetes", "--kubeconfig", &kubeconfig, "--node-name", name];
        args.extend_from_slice(extra);
        let agent = AgentGuard::start_with(&socket, &args);
        Node { name, agent, socket: socket.to_str().unwrap().to_owned() }
    };
    let node1_netns = flowgate_lab::netns::netns_path(&lab.state.node("node-1").unwrap().netns);
    let nodes = [
        start("node-1", &["--node-netns", node1_netns.to_str().unwrap(), "--no-pin"]),
        start("node-2", &["--lab", &lab.name]),
    ];

    // Each agent has exactly its node's pods as endpoints (not the hostNetwork pod), on their veths in its
    // node's namespace.
    let deadline = Instant::now() + Duration::from_secs(60);
    let endpoints: Vec<BTreeMap<String, (u64, u64, String)>> = loop {
        let all: Vec<_> = nodes.iter().map(Node::endpoints).collect();
        let ready = nodes.iter().zip(&all).all(|(node, eps)| {
            let want: BTreeSet<String> = lab
                .state
                .pods
                .iter()
                .filter(|p| p.node.as_deref() == Some(node.name))
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            eps.keys().cloned().collect::<BTreeSet<_>>() == want
                && eps.values().all(|(_, identity, state)| *identity != 0 && state == "ready")
        });
        if ready {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "endpoints per node: {all:?}\nnode-1:\n{}\nnode-2:\n{}",
            nodes[0].agent.output(),
            nodes[1].agent.output()
        );
        std::thread::sleep(Duration::from_millis(300));
    };

    // The same labels have the same number on both nodes, and it is the number of each pod's endpoint on
    // its own node.
    let identities: Vec<BTreeMap<Vec<String>, u64>> = nodes.iter().map(Node::pod_identities).collect();
    assert_eq!(
        identities[0].len(),
        lab.state.pods.len(),
        "every lab pod has an identity on node-1, the hostNetwork pod none: {:?}",
        identities[0]
    );
    assert_eq!(identities[0], identities[1], "both nodes number the pods' labels alike");
    let identity_of = |pod: &str| -> u64 {
        endpoints.iter().find_map(|eps| eps.get(pod)).map(|(_, identity, _)| *identity).expect("an endpoint")
    };
    for pod in ["default/client", "default/other", "shop/server", "shop/db"] {
        assert!(identities[0].values().any(|n| *n == identity_of(pod)), "{pod}'s endpoint identity is the cluster's");
    }
    let addresses = |pod: &str| -> Vec<IpAddr> {
        let (ns, name) = pod.split_once('/').unwrap();
        let p = lab.state.pod(ns, name).unwrap();
        vec![IpAddr::V4(p.ip), IpAddr::V6(p.ipv6.expect("dual-stack"))]
    };
    let (client, server, db) = (addresses("default/client"), addresses("shop/server"), addresses("shop/db"));

    // No policy: across the nodes, over both IP versions.
    wait_for_reachability(
        &lab,
        &nodes,
        "no policy",
        &[
            ("default/client", "shop/server", "80", "TCP", true),
            ("default/client", "shop/server", "53", "UDP", true),
            ("default/other", "shop/server", "80", "TCP", true),
        ],
    );

    // An egress policy: node-1 denies client -> server alone (node-2 has no policy against it) and lets
    // client -> db out.
    plane.apply(CLIENT_EGRESS);
    let egress_expected = [
        ("default/client", "shop/server", "80", "TCP", false),
        ("default/client", "shop/server", "53", "UDP", false),
        ("default/client", "shop/db", "5432", "TCP", true),
        ("default/other", "shop/server", "80", "TCP", true),
    ];
    wait_for_reachability(&lab, &nodes, "client-egress", &egress_expected);
    let since = now_ns();
    wait_for_reachability(&lab, &nodes, "client-egress, probed again", &egress_expected);
    std::thread::sleep(Duration::from_millis(500));
    let flows: Vec<Vec<Arc<Flow>>> = nodes.iter().map(|n| n.flows_since(since)).collect();
    let denied = between(&flows[0], &client, &server, 80);
    let verdict = denied
        .iter()
        .find(|f| f.event_type == EventType::PolicyVerdict && f.verdict == Verdict::Dropped)
        .unwrap_or_else(|| panic!("node-1 took the denying verdict: {denied:#?}"));
    assert_eq!(verdict.traffic_direction, TrafficDirection::Egress);
    assert_eq!(u64::from(verdict.source.identity), identity_of("default/client"));
    assert_eq!(u64::from(verdict.destination.identity), identity_of("shop/server"), "node-2's pod by its number");
    assert!(
        matches!(&verdict.policy, Some(PolicyAttribution::DefaultDeny { isolated_by })
            if isolated_by.iter().any(|p| p.namespace == "default" && p.name == "client-egress")),
        "{verdict:?}"
    );
    assert!(
        between(&flows[1], &client, &server, 80).is_empty(),
        "nothing of the denied connections reached node-2: {:#?}",
        between(&flows[1], &client, &server, 80)
    );
    // The allowed connection to the database is seen on both nodes, each naming both pods by the same numbers.
    for (node, flows) in nodes.iter().zip(&flows) {
        let seen = between(flows, &client, &db, 5432);
        let flow = seen
            .iter()
            .find(|f| f.verdict == Verdict::Forwarded)
            .unwrap_or_else(|| panic!("{} shows client -> db: {seen:#?}", node.name));
        assert_eq!(
            (u64::from(flow.source.identity), u64::from(flow.destination.identity)),
            (identity_of("default/client"), identity_of("shop/db")),
            "{}: {flow:?}",
            node.name
        );
    }

    // An ingress policy instead: node-2 denies client -> server alone (node-1 lets it out).
    plane.kubectl_ok(&["delete", "networkpolicy", "-n", "default", "client-egress"]);
    plane.apply(SERVER_INGRESS);
    let ingress_expected = [
        ("default/client", "shop/server", "80", "TCP", false),
        ("default/other", "shop/server", "80", "TCP", true),
        ("default/other", "shop/server", "53", "UDP", false),
        ("default/client", "shop/db", "5432", "TCP", true),
    ];
    wait_for_reachability(&lab, &nodes, "server-ingress", &ingress_expected);
    let since = now_ns();
    wait_for_reachability(&lab, &nodes, "server-ingress, probed again", &ingress_expected);
    std::thread::sleep(Duration::from_millis(500));
    let flows: Vec<Vec<Arc<Flow>>> = nodes.iter().map(|n| n.flows_since(since)).collect();
    let left = between(&flows[0], &client, &server, 80);
    assert!(
        left.iter().any(|f| f.verdict == Verdict::Forwarded && f.traffic_direction == TrafficDirection::Egress),
        "node-1 let client -> server out: {left:#?}"
    );
    assert!(!left.iter().any(|f| f.verdict == Verdict::Dropped), "node-1 denied nothing of it: {left:#?}");
    let denied = between(&flows[1], &client, &server, 80);
    let verdict = denied
        .iter()
        .find(|f| f.event_type == EventType::PolicyVerdict && f.verdict == Verdict::Dropped)
        .unwrap_or_else(|| panic!("node-2 took the denying verdict: {denied:#?}"));
    assert_eq!(verdict.traffic_direction, TrafficDirection::Ingress);
    assert_eq!(u64::from(verdict.source.identity), identity_of("default/client"), "node-1's pod by its number");
    assert_eq!(u64::from(verdict.destination.identity), identity_of("shop/server"));
    assert!(
        matches!(&verdict.policy, Some(PolicyAttribution::DefaultDeny { isolated_by })
            if isolated_by.iter().any(|p| p.namespace == "shop" && p.name == "server-ingress")),
        "{verdict:?}"
    );
    let other = addresses("default/other");
    let admitted = between(&flows[1], &other, &server, 80);
    let allowed = admitted
        .iter()
        .find(|f| f.event_type == EventType::PolicyVerdict && f.verdict == Verdict::Forwarded)
        .unwrap_or_else(|| panic!("node-2 admitted other -> server by policy: {admitted:#?}"));
    assert_eq!(u64::from(allowed.source.identity), identity_of("default/other"));
    assert!(
        matches!(&allowed.policy, Some(PolicyAttribution::AllowedBy(names)) if names.iter().any(|p| p.name == "server-ingress")),
        "{allowed:?}"
    );
}

/// The pods of the netpol model, in the lab's order.
const MODEL_PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

/// The netpol model with its pods spread over three nodes by name (`a` on node-1, `b` on node-2, `c` on
/// node-3), written to `dir`.
fn netpol_over_three_nodes(dir: &Path) -> std::path::PathBuf {
    let mut topology = Topology::load(&example("lab-netpol.yaml")).expect("the netpol topology loads");
    topology.nodes = PLACEMENT.map(|(node, _)| NodeSpec { name: node.to_owned() }).to_vec();
    for pod in &mut topology.pods {
        let (node, _) = PLACEMENT.iter().find(|(_, name)| *name == pod.name).expect("pods are named a, b, c");
        pod.node = Some((*node).to_owned());
    }
    // JSON is YAML, and leaves no doubt that `y` is a name.
    let path = dir.join("netpol-3-nodes.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&topology).expect("the topology serializes")).expect("write it");
    path
}

/// Which node runs the pods of each name.
const PLACEMENT: [(&str, &str); 3] = [("node-1", "a"), ("node-2", "b"), ("node-3", "c")];

/// Probes the 9×9 matrix on TCP `port` over IPv4 and IPv6 until it is `expected` off the diagonal (a pod
/// probing itself never crosses the datapath); panics after a minute with both tables and the agents' logs.
fn wait_for_matrix(lab: &LabGuard, nodes: &[Node], what: &str, port: &str, expected: &Reachability) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut wrong = Vec::new();
        let mut observed = Vec::new();
        for family in [&[][..], &["--ipv6"][..]] {
            let mut args = vec!["--all", "--port", port];
            args.extend_from_slice(family);
            let (report, _) = lab.probe(&args);
            let names: Vec<String> = MODEL_PODS.iter().map(|p| (*p).to_owned()).collect();
            let mut table = Reachability::unknown(names.clone(), names);
            for (from, to, connected) in probe_results(&report) {
                table.set(&from, &to, connected);
                if from != to && expected.get(&from, &to) != Some(connected) {
                    wrong.push(format!("{from} -> {to} {family:?}: connected {connected}"));
                }
            }
            observed.push(table.truth_table());
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: wrong {wrong:?}\nexpected:\n{}\nobserved (IPv4, IPv6):\n{}\n{}",
            expected.truth_table(),
            observed.join("\n"),
            nodes.iter().map(|n| format!("{} agent log:\n{}", n.name, n.agent.output())).collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A NetworkPolicy as JSON (kubectl reads it as is: no YAML 1.1 surprises with a namespace named `y`).
fn policy(namespace: &str, name: &str, spec: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
    .to_string()
}

#[test]
fn netpol_cases_hold_with_the_pods_spread_over_three_nodes() {
    flowgate_tests::require_root();
    let dir = TempDir::new("mnode3");
    let plane = ControlPlane::start("multinode3");
    let lab = LabGuard::up("mnode3", &netpol_over_three_nodes(dir.path()));
    assert_eq!(lab.state.nodes.len(), 3);
    kubelet::register_lab(&plane, &lab.state, "node-1");
    let sockets = SocketDir::new("mnode3");
    let kubeconfig = plane.agent_kubeconfig().to_str().unwrap().to_owned();
    let nodes: Vec<Node> = PLACEMENT
        .into_iter()
        .map(|(name, _)| {
            let socket = sockets.socket(name);
            let args = ["--lab", &lab.name, "--kubernetes", "--kubeconfig", &kubeconfig, "--node-name", name];
            let agent = AgentGuard::start_with(&socket, &args);
            Node { name, agent, socket: socket.to_str().unwrap().to_owned() }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (node, (_, pod_name)) in nodes.iter().zip(PLACEMENT) {
        loop {
            let endpoints = node.endpoints();
            let suffix = format!("/{pod_name}");
            if endpoints.len() == 3
                && endpoints.iter().all(|(pod, (_, _, state))| pod.ends_with(&suffix) && state == "ready")
            {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {endpoints:?}\n{}", node.name, node.agent.output());
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let identities: Vec<BTreeMap<Vec<String>, u64>> = nodes.iter().map(Node::pod_identities).collect();
    assert_eq!(identities[0].len(), MODEL_PODS.len(), "{:?}", identities[0]);
    assert!(identities.iter().all(|i| *i == identities[0]), "the three nodes number the pods alike: {identities:?}");

    let all = || Reachability::uniform(&MODEL_PODS, true);
    wait_for_matrix(&lab, &nodes, "no policy", "80", &all());

    // Deny all ingress into x: every x pod is isolated by its own node's agent.
    plane.apply(&policy("x", "deny-ingress", serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"]})));
    wait_for_matrix(&lab, &nodes, "deny all ingress into x", "80", &all().expect_peer("*", "x/*", false));
    plane.kubectl_ok(&["delete", "networkpolicy", "-n", "x", "deny-ingress"]);

    // x/a accepts only pods b of namespace y (namespace AND pod selector in one peer): y/b runs on node-2,
    // x/a on node-1.
    plane.apply(&policy(
        "x",
        "allow-y-b",
        serde_json::json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{
                "namespaceSelector": {"matchLabels": {"ns": "y"}},
                "podSelector": {"matchLabels": {"pod": "b"}},
            }]}],
        }),
    ));
    let only_y_b = all().expect_all_ingress("x/a", false).expect("y/b", "x/a", true);
    wait_for_matrix(&lab, &nodes, "x/a only from y/b", "80", &only_y_b);
    // y/b relabelled on the API server: node-1's agent takes the new labels of node-2's pod (a new identity,
    // the same on every node) and x/a no longer admits it; labelled back, it does again.
    plane.kubectl_ok(&["label", "pod", "-n", "y", "b", "pod=renamed", "--overwrite"]);
    wait_for_matrix(&lab, &nodes, "y/b relabelled", "80", &all().expect_all_ingress("x/a", false));
    let identities: Vec<BTreeMap<Vec<String>, u64>> = nodes.iter().map(Node::pod_identities).collect();
    assert!(
        identities.iter().all(|i| *i == identities[0] && i.keys().any(|l| l.contains(&"k8s:pod=renamed".to_owned()))),
        "every node numbers the new labels alike: {identities:?}"
    );
    plane.kubectl_ok(&["label", "pod", "-n", "y", "b", "pod=b", "--overwrite"]);
    wait_for_matrix(&lab, &nodes, "y/b labelled back", "80", &only_y_b);
    plane.kubectl_ok(&["delete", "networkpolicy", "-n", "x", "allow-y-b"]);

    // Egress of namespace y only to namespace z on TCP 80: decided on the node of each y pod.
    plane.apply(&policy(
        "y",
        "egress-to-z",
        serde_json::json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                "ports": [{"protocol": "TCP", "port": 80}],
            }],
        }),
    ));
    let out_of_y_to_z = all().expect_peer("y/*", "*", false).expect_peer("y/*", "z/*", true);
    wait_for_matrix(&lab, &nodes, "y only out to z on 80", "80", &out_of_y_to_z);
    plane.kubectl_ok(&["delete", "networkpolicy", "-n", "y", "egress-to-z"]);

    // The same by a named port: resolved on the destination pods, which for every y pod include pods of the
    // other two nodes.
    plane.apply(&policy(
        "y",
        "egress-to-z-named",
        serde_json::json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                "ports": [{"protocol": "TCP", "port": "serve-81-tcp"}],
            }],
        }),
    ));
    wait_for_matrix(&lab, &nodes, "y out to z by port name, on 81", "81", &out_of_y_to_z);
    wait_for_matrix(&lab, &nodes, "y out to z by port name, on 80", "80", &all().expect_peer("y/*", "*", false));
}

/// The lab of several nodes itself: the nodes and the fabric are namespaces of the lab (never the machine's
/// own), a node routes to the other node's pods through it, pods reach each other across it over both IP
/// versions, and `lab down` leaves nothing. An agent not told which node it is refuses such a lab.
#[test]
fn a_lab_of_several_nodes_is_routed_through_its_fabric_and_goes_down_whole() {
    flowgate_tests::require_root();
    let lab = LabGuard::up("mnlab", &example("lab-multinode.yaml"));
    let state = &lab.state;
    let netns = flowgate_tests::lab_netns(&lab.name);
    for ns in [&state.nodes[0].netns, &state.nodes[1].netns, state.fabric_netns.as_ref().expect("a fabric")] {
        assert!(netns.contains(ns), "{ns} in {netns:?}");
    }
    let server = state.pod("shop", "server").expect("shop/server");
    let routes = std::process::Command::new("ip")
        .args(["-n", &state.nodes[0].netns, "route", "show", &format!("{}/32", server.ip)])
        .output()
        .expect("run ip route");
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains(&format!("via {} dev fabric0", state.nodes[1].ip)),
        "node-1 routes to node-2's pod: {routes}"
    );
    for family in [&[][..], &["--ipv6"][..]] {
        let mut args = vec!["--from", "default/client", "--to", "shop/server", "--port", "80"];
        args.extend_from_slice(family);
        let (report, _) = lab.probe(&args);
        assert!(probe_results(&report).iter().all(|(_, _, ok)| *ok), "across the nodes {family:?}: {report}");
    }

    let dir = SocketDir::new("mnlab");
    let socket = dir.socket("agent");
    let log = dir.path().join("agent.log");
    let status = flowgate_tests::agent::spawn_agent(&lab.name, &socket, &[], &log).wait().expect("the agent exits");
    assert!(!status.success());
    let said = flowgate_tests::agent::read_log(&log);
    assert!(
        said.contains("has 2 nodes: run one agent per node in Kubernetes mode (--kubernetes --node-name NODE)"),
        "{said}"
    );

    let name = lab.name.clone();
    let server_pid = lab.state.server_pid;
    drop(lab);
    flowgate_tests::assert_nothing_left(&name, server_pid);
}
