//! `flowgate-agent --kubernetes` on the real API server, enforcing on real traffic in a lab: the lab is the
//! node (its pods' interfaces), the tests play the kubelet (Pod objects bound to `node-1` with the lab's
//! addresses; the agent finds their interfaces by the node's host routes), policies and labels change through
//! the API server only. A local pod without a route is listed as waiting for its interface; a deleted pod's
//! programs are detached from its interface (asked of the kernel). A pod of another node gets an
//! identity and an ipcache entry; every pod's identity number is the cluster's (a FlowgateIdentity object). After changes made while the agent's API server was down, with etcd
//! compacted (`410 Gone`), the agent lists again and enforces exactly the new state.

use std::time::{Duration, Instant};

use flowgate_tests::{
    LabGuard,
    agent::{AgentGuard, SocketDir},
    attached::{Attached, attached},
    control_plane::ControlPlane,
    example, flowgate_ok,
    kubelet::{self, PodSpec},
    probe_results,
};

const NODE: &str = "node-1";

/// `flowgate_tests::DENY_INTO_Y` as kubectl reads it: its YAML 1.1 parser takes a bare `y` for `true`.
const DENY_INTO_Y: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: only-x-a-into-y
  namespace: \"y\"
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: x}}
          podSelector: {matchLabels: {pod: a}}
      ports:
        - {protocol: TCP, port: 80}
";

/// Ingress into namespace x only from namespace y.
const ONLY_Y_INTO_X: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: only-y-into-x
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: \"y\"}}
";

/// Whether `from` reaches `to` on TCP 80, per a full probe of the lab.
fn reach(lab: &LabGuard) -> impl Fn(&str, &str) -> bool {
    let (report, _) = lab.probe(&["--all", "--port", "80"]);
    let results = probe_results(&report);
    move |from, to| {
        results.iter().find(|(f, t, _)| f == from && t == to).unwrap_or_else(|| panic!("{from} -> {to} is probed")).2
    }
}

/// Probes until every `(from, to, connected)` holds, or panics after `timeout` with the agent's log.
fn wait_for_reachability(lab: &LabGuard, agent: &AgentGuard, what: &str, expected: &[(&str, &str, bool)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reach = reach(lab);
        let wrong: Vec<_> = expected.iter().filter(|(f, t, ok)| reach(f, t) != *ok).collect();
        if wrong.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still wrong {wrong:?}\nagent log:\n{}", agent.output());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Polls `endpoint list` until `check` holds; returns the list.
fn wait_for_endpoints(
    agent: &AgentGuard,
    socket: &str,
    what: &str,
    check: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&flowgate_ok(&["endpoint", "list", "--socket", socket, "-o", "json"])).unwrap();
        let list = list.as_array().expect("a list").clone();
        if check(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: not seen in {list:?}\n{}", agent.output());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn enforces_what_the_api_server_says_and_resyncs_after_gone() {
    flowgate_tests::require_root();
    let mut plane = ControlPlane::start("agent");
    let lab = LabGuard::up("k8s", &example("lab-netpol.yaml"));
    for ns in ["x", "y", "z"] {
        plane.apply(&kubelet::namespace_manifest(ns, &[("ns", ns)]));
    }
    for pod in &lab.state.pods {
        kubelet::run_pod(&plane, &kubelet::lab_pod(pod, NODE));
    }
    // A pod of another node: a peer with an identity, not an endpoint here.
    kubelet::run_pod(
        &plane,
        &PodSpec {
            namespace: "z",
            name: "elsewhere",
            node: "node-2",
            labels: vec![("pod", "elsewhere")],
            ports: vec![],
            ip: "10.200.1.9".parse().unwrap(),
            ipv6: None,
        },
    );

    // A pod of this node that the node has no route to: no interface, not an endpoint, said in the log.
    kubelet::run_pod(
        &plane,
        &PodSpec {
            namespace: "z",
            name: "unrouted",
            node: NODE,
            labels: vec![("pod", "unrouted")],
            ports: vec![],
            ip: "10.200.9.9".parse().unwrap(),
            ipv6: None,
        },
    );

    let dir = SocketDir::new("k8s");
    let socket = dir.socket("agent.sock");
    let kubeconfig = plane.agent_kubeconfig().to_str().unwrap().to_owned();
    // Pinned (the lab's pin directory, removed with the lab): enforcement outlives the agent.
    let args = ["--kubernetes", "--kubeconfig", &kubeconfig, "--node-name", NODE];
    let agent = AgentGuard::start(&lab.name, &socket, &args);
    let socket_arg = socket.to_str().unwrap();
    let ready = |list: &[serde_json::Value]| list.iter().filter(|e| e["state"] == "ready").count();
    let endpoints = wait_for_endpoints(&agent, socket_arg, "every lab pod ready, z/unrouted listed", |list| {
        ready(list) == lab.state.pods.len() && list.len() == lab.state.pods.len() + 1
    });
    assert!(endpoints.iter().all(|e| e["namespace"] != "z" || e["pod_name"] != "elsewhere"));
    // The local pod without an interface is listed with the state that says so, and has none.
    let unrouted = endpoints.iter().find(|e| e["pod_name"] == "unrouted").expect("z/unrouted is listed");
    assert_eq!(
        (&unrouted["state"], &unrouted["interface"], &unrouted["ifindex"]),
        (&serde_json::json!("waiting-for-interface"), &serde_json::json!(""), &serde_json::json!(0)),
        "{unrouted}"
    );
    assert!(
        agent.output().contains("pod z/unrouted on node node-1: no host route to 10.200.9.9"),
        "{}",
        agent.output()
    );
    let identities = flowgate_ok(&["identity", "list", "--socket", socket_arg, "-o", "json"]);
    assert!(identities.contains("k8s:pod=elsewhere"), "the other node's pod has an identity: {identities}");
    // Every identity of a pod is the cluster's: a FlowgateIdentity named by its number holds its labels.
    let objects: serde_json::Value =
        serde_json::from_str(&plane.kubectl_ok(&["get", "flowgateidentities", "-o", "json"])).unwrap();
    let cluster_numbers: std::collections::BTreeMap<String, serde_json::Value> = objects["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["metadata"]["name"].as_str().unwrap().to_owned(), o["securityLabels"].clone()))
        .collect();
    let identities: serde_json::Value = serde_json::from_str(&identities).unwrap();
    let pod_identities: Vec<&serde_json::Value> = identities
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["labels"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().starts_with("k8s:pod=")))
        .collect();
    assert_eq!(pod_identities.len(), lab.state.pods.len() + 2, "the lab's pods, elsewhere, unrouted: {identities}");
    for identity in pod_identities {
        let number = identity["id"].to_string();
        assert_eq!(cluster_numbers.get(&number), Some(&identity["labels"]), "identity {number}: {cluster_numbers:?}");
    }

    // No policy on the API server: everything connects.
    wait_for_reachability(&lab, &agent, "no policy", &[("z/a", "y/a", true), ("x/b", "y/b", true)]);

    // A policy created through the API server is enforced.
    plane.apply(DENY_INTO_Y);
    let deny_into_y = [("x/a", "y/b", true), ("x/b", "y/b", false), ("z/a", "y/a", false), ("z/a", "x/b", true)];
    wait_for_reachability(&lab, &agent, "only x/a into y", &deny_into_y);

    // Labels come from the API server: x/b relabelled pod=a is let in.
    plane.kubectl_ok(&["label", "pod", "-n", "x", "b", "pod=a", "--overwrite"]);
    wait_for_reachability(&lab, &agent, "x/b relabelled", &[("x/b", "y/b", true), ("x/c", "y/b", false)]);

    // A pod deleted from the API server is no longer an endpoint; back, it has its old endpoint id.
    let id_of = |list: &[serde_json::Value], ns: &str, name: &str| {
        list.iter().find(|e| e["namespace"] == ns && e["pod_name"] == name).map(|e| e["id"].clone())
    };
    // Its programs are detached from its interface (which the lab keeps: a CNI may too), and attached again
    // when it is back.
    let zc = id_of(&endpoints, "z", "c").expect("z/c is an endpoint");
    let c = lab.state.pods.iter().find(|p| p.namespace == "z" && p.name == "c").unwrap();
    assert_eq!(attached(&lab.state.node_netns, &c.host_ifname), Attached::TC, "z/c's interface before");
    plane.kubectl_ok(&["delete", "pod", "-n", "z", "c", "--grace-period=0", "--force"]);
    wait_for_endpoints(&agent, socket_arg, "z/c removed", |list| {
        ready(list) == lab.state.pods.len() - 1 && id_of(list, "z", "c").is_none()
    });
    assert_eq!(attached(&lab.state.node_netns, &c.host_ifname), Attached::NONE, "z/c's interface once it is gone");
    kubelet::run_pod(&plane, &kubelet::lab_pod(c, NODE));
    wait_for_endpoints(&agent, socket_arg, "z/c back", |list| {
        list.iter().any(|e| e["id"] == zc && e["state"] == "ready")
    });
    assert_eq!(attached(&lab.state.node_netns, &c.host_ifname), Attached::TC, "z/c's interface once it is back");

    // Changes while the agent's API server is down, history compacted: the agent lists again.
    plane.with_apiserver_elsewhere(|plane, elsewhere| {
        plane.kubectl_at(elsewhere, &["delete", "networkpolicy", "-n", "y", "only-x-a-into-y"], None);
        plane.kubectl_at(elsewhere, &["apply", "-f", "-"], Some(ONLY_Y_INTO_X));
        plane.kubectl_at(elsewhere, &["label", "pod", "-n", "x", "b", "pod=b", "--overwrite"], None);
        plane.compact_etcd();
    });
    plane.start_apiserver_again();
    wait_for_reachability(
        &lab,
        &agent,
        "after the re-list",
        &[("z/a", "y/a", true), ("x/b", "y/b", true), ("z/a", "x/b", false), ("y/c", "x/b", true)],
    );
    let log = agent.output();
    assert!(log.contains("listed again"), "the agent listed again after 410 Gone:\n{log}");
    assert!(log.contains("its history is gone"), "the agent saw 410 Gone:\n{log}");

    // A new agent that cannot reach the API server leaves the pinned enforcement as it was ...
    agent.kill_hard();
    plane.stop_apiserver();
    let second = AgentGuard::start(&lab.name, &socket, &args);
    assert!(second.output().contains("adopted the pinned maps"), "{}", second.output());
    let reach_now = reach(&lab);
    for (from, to, ok) in [("z/a", "x/b", false), ("y/c", "x/b", true), ("z/a", "y/a", true)] {
        assert_eq!(reach_now(from, to), ok, "{from} -> {to} while the API server is down\n{}", second.output());
    }
    // ... and takes over once it has listed everything.
    plane.start_apiserver_again();
    plane.kubectl_ok(&["delete", "networkpolicy", "-n", "x", "only-y-into-x"]);
    wait_for_reachability(&lab, &second, "policy deleted", &[("z/a", "x/b", true), ("x/a", "x/c", true)]);
    assert!(second.output().contains("kubernetes: listed"), "{}", second.output());
}

/// Without a lab, as on a real node: the agent only knows the node's network namespace (`--node-netns`;
/// in a DaemonSet pod its own) and finds every pod's interface there by its host route.
#[test]
fn enforces_without_a_lab_given_the_node_namespace() {
    flowgate_tests::require_root();
    let plane = ControlPlane::start("nolab");
    let lab = LabGuard::up("k8s-nolab", &example("lab-netpol.yaml"));
    for ns in ["x", "y", "z"] {
        plane.apply(&kubelet::namespace_manifest(ns, &[("ns", ns)]));
    }
    for pod in &lab.state.pods {
        kubelet::run_pod(&plane, &kubelet::lab_pod(pod, NODE));
    }
    let dir = SocketDir::new("k8s-nolab");
    let socket = dir.socket("agent.sock");
    let kubeconfig = plane.agent_kubeconfig().to_str().unwrap().to_owned();
    let node_netns = format!("/run/netns/{}", lab.state.node_netns);
    let agent = AgentGuard::start_with(
        &socket,
        &["--kubernetes", "--kubeconfig", &kubeconfig, "--node-name", NODE, "--node-netns", &node_netns, "--no-pin"],
    );
    let socket_arg = socket.to_str().unwrap();
    let endpoints = wait_for_endpoints(&agent, socket_arg, "every pod found by its route", |list| {
        list.len() == lab.state.pods.len() && list.iter().all(|e| e["state"] == "ready")
    });
    for pod in &lab.state.pods {
        let ep = endpoints
            .iter()
            .find(|e| e["namespace"] == pod.namespace.as_str() && e["pod_name"] == pod.name.as_str())
            .unwrap_or_else(|| panic!("{}/{} is an endpoint", pod.namespace, pod.name));
        assert_eq!(ep["interface"], pod.host_ifname.as_str(), "the interface of the host route");
    }
    plane.apply(DENY_INTO_Y);
    wait_for_reachability(&lab, &agent, "only x/a into y", &[("x/a", "y/b", true), ("z/a", "y/a", false)]);
    // Every pod had its interface: the policy was applied without the node's pods being synced again.
    let log = agent.output();
    assert!(log.contains("kubernetes: only policies changed"), "a policies-only sync:\n{log}");
    // A label change after it is a whole sync again, and enforced.
    plane.kubectl_ok(&["label", "pod", "-n", "x", "b", "pod=a", "--overwrite"]);
    wait_for_reachability(&lab, &agent, "x/b relabelled", &[("x/b", "y/b", true), ("x/c", "y/b", false)]);
}
