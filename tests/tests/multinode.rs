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
//! Conformance across nodes is `conformance_api.rs`: every case of `conformance.rs` with the x/y/z × a/b/c
//! model spread over three nodes, one agent each, through the API server.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowgate_proto::{
    Flow,
    client::Client,
    flow::{EventType, PolicyAttribution, TrafficDirection, Verdict},
    message::{Event, Subscription},
};
use flowgate_tests::{
    LabGuard,
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
