//! Many endpoints attached in one go (`Datapath::attach_endpoints`, one entry into the node's namespace for
//! all of them) all enforce, in both directions: every member pod's ingress program (`to_endpoint`) and
//! egress program (`from_endpoint`) is checked on its own by a connection that only that program can deny.
//! The first agent attaches TCX links under expedited RCU grace periods (`--attach-mode tcx
//! --expedited-attach`); a second one, in the default mode, puts tc filters in their place (and drops the
//! links), then a third adopts those filters; all of them still enforce, each interface with one program
//! per direction.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use flowgate_lab::state::PodState;
use flowgate_tests::{
    LabGuard, TempDir,
    agent::{AgentGuard, SocketDir},
    attached::{Attached, attached},
    require_root,
};

/// Pods besides the prober.
const MEMBERS: usize = 24;

/// The prober (`role: prober`, isolated in neither direction) and the members (`role: member`), each
/// serving TCP 80 and 81.
fn topology() -> String {
    let mut t = String::from("name: many\ncidr: 10.203.0.0/24\nnamespaces:\n  - name: many\npods:\n");
    for i in 0..=MEMBERS {
        let role = if i == 0 { "prober" } else { "member" };
        let _ = writeln!(
            t,
            "  - {{namespace: many, name: pod-{i}, labels: {{role: {role}}}, ports: [{{name: a, port: 80, protocol: \
             TCP}}, {{name: b, port: 81, protocol: TCP}}]}}"
        );
    }
    t
}

/// Members take TCP 80 from the prober only and send to the prober's TCP 80 only: port 81 either way is
/// denied by the member's own program alone (the prober is isolated in no direction).
const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: members-in, namespace: many}
spec:
  podSelector: {matchLabels: {role: member}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: prober}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: members-out, namespace: many}
spec:
  podSelector: {matchLabels: {role: member}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {role: prober}}}]
    ports: [{port: 80}]
";

fn connects(from: &PodState, to: &PodState, port: u16) -> bool {
    let target = SocketAddr::from((to.ip, port));
    let timeout = Duration::from_millis(if port == 80 { 2_000 } else { 300 });
    flowgate_lab::netns::in_netns(&from.netns, move || TcpStream::connect_timeout(&target, timeout).is_ok())
        .expect("entering the pod's namespace")
}

/// Every member: the prober reaches its port 80 and not 81 (its ingress program), it reaches the
/// prober's port 80 and not 81 (its egress program). Returns the members that did not enforce.
fn failures(lab: &LabGuard) -> Vec<String> {
    let prober = &lab.state.pods[0];
    let mut failed = Vec::new();
    for member in &lab.state.pods[1..] {
        let checks = [
            (connects(prober, member, 80), true, "prober -> member:80"),
            (connects(prober, member, 81), false, "prober -> member:81"),
            (connects(member, prober, 80), true, "member -> prober:80"),
            (connects(member, prober, 81), false, "member -> prober:81"),
        ];
        for (got, want, what) in checks {
            if got != want {
                failed.push(format!("{}: {what} {}", member.name, if got { "passed" } else { "was dropped" }));
            }
        }
    }
    failed
}

#[test]
fn every_endpoint_of_a_bulk_attach_enforces_and_is_adopted_after_a_restart() {
    require_root();
    let dir = TempDir::new("attach-many");
    let topology_path = dir.path().join("topology.yaml");
    std::fs::write(&topology_path, topology()).unwrap();
    let lab = LabGuard::up("many", &topology_path);
    assert_eq!(lab.state.pods.len(), MEMBERS + 1);
    assert_eq!(lab.state.pods[0].name, "pod-0", "the prober comes first");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("policies.yaml"), POLICIES).unwrap();
    let sockets = SocketDir::new("attach-many");
    let socket = sockets.socket("agent.sock");
    let args = ["--policies", policies.to_str().unwrap()];

    let first =
        AgentGuard::start(&lab.name, &socket, &[args[0], args[1], "--attach-mode", "tcx", "--expedited-attach"]);
    assert!(
        first.output().contains(&format!("attached the programs to {} interfaces", MEMBERS + 1)),
        "the lab's interfaces were attached in one go:\n{}",
        first.output()
    );
    let failed = failures(&lab);
    assert!(failed.is_empty(), "after a bulk attach: {failed:#?}\n{}", first.output());
    assert_attached(&lab, Attached::TCX, "TCX links");
    drop(first);

    let second = AgentGuard::start(&lab.name, &socket, &args);
    assert!(second.output().contains("adopted the pinned maps"), "{}", second.output());
    assert!(
        second.output().contains(&format!("attached the programs to {} interfaces", MEMBERS + 1)),
        "{}",
        second.output()
    );
    let failed = failures(&lab);
    assert!(failed.is_empty(), "after tc filters took the links' place: {failed:#?}\n{}", second.output());
    assert_attached(&lab, Attached::TC, "tc filters in place of the links");
    drop(second);

    let third = AgentGuard::start(&lab.name, &socket, &args);
    let failed = failures(&lab);
    assert!(failed.is_empty(), "after adopting the tc filters: {failed:#?}\n{}", third.output());
    assert_attached(&lab, Attached::TC, "adopted tc filters");
}

/// Every pod's interface has `expected` attached.
fn assert_attached(lab: &LabGuard, expected: Attached, what: &str) {
    for pod in &lab.state.pods {
        assert_eq!(attached(&lab.state.node_netns, &pod.host_ifname), expected, "{what}: {}", pod.name);
    }
}
