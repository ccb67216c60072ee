//! Verdicts from the kernel on a real lab, through a real agent: every policy verdict names the policy
//! that allowed it, or says that the default deny of an isolated endpoint applied (and which policies
//! isolate it); drops carry Cilium's reason; audit mode per endpoint turns would-be drops into AUDIT
//! verdicts that pass; `policy get` shows the realized entries with their counters.

use std::{path::Path, sync::Arc, time::Duration};

use flowgate_proto::{
    Flow,
    client::Client,
    filter::FlowFilter,
    flow::{EventType, MatchType, PolicyAttribution, PolicyName, TrafficDirection, Verdict},
    message::{Event, Request, Response, Subscription},
};
use flowgate_tests::{
    LabGuard, TempDir,
    agent::{AgentGuard, SocketDir, runtime},
    example, flowgate_ok, probe_results, require_root,
};

const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80, protocol: TCP}]
";

fn name(ns: &str, n: &str) -> PolicyName {
    PolicyName { namespace: ns.into(), name: n.into() }
}

async fn verdict_stream(socket: &Path) -> flowgate_proto::client::EventStream {
    let client = Client::connect(socket, "verdicts-test").await.unwrap();
    let filter = FlowFilter { event_types: vec![EventType::PolicyVerdict, EventType::Drop], ..Default::default() };
    client.subscribe(Subscription { allow: vec![filter], ..Subscription::default() }).await.unwrap()
}

async fn collect(stream: &mut flowgate_proto::client::EventStream) -> Vec<Arc<Flow>> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(batch))) = tokio::time::timeout(Duration::from_millis(700), stream.next_batch()).await {
        out.extend(batch.into_iter().filter_map(|e| match e {
            Event::Flow(f) => Some(f),
            Event::Lost(_) => None,
        }));
    }
    out
}

#[test]
fn every_verdict_names_its_policy_or_the_default_deny() {
    require_root();
    let lab = LabGuard::up("verdicts", &example("lab-netpol.yaml"));
    let policy_dir = TempDir::new("verdicts-policies");
    let policies = policy_dir.path();
    std::fs::write(policies.join("x.yaml"), POLICIES).unwrap();
    let dir = SocketDir::new("verdicts");
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent.sock"), &["--policies", policies.to_str().unwrap()]);
    let socket = agent.socket.clone();
    let rt = runtime();
    let sock = socket.to_str().unwrap().to_owned();

    let probe = |from: &str, to: &str| {
        let (report, _) =
            lab.probe(&["--from", from, "--to", to, "--port", "80", "--protocol", "TCP", "--timeout", "500ms"]);
        probe_results(&report)[0].2
    };
    let flows = rt.block_on(async {
        let mut stream = verdict_stream(&socket).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Probes block this thread; the agent queues the events for this subscriber meanwhile.
        let results = (probe("y/a", "x/a"), probe("z/a", "x/a"), probe("y/a", "x/b"));
        assert_eq!(results, (true, false, false), "y/a->x/a allowed, z/a->x/a and y/a->x/b denied");
        collect(&mut stream).await
    });
    let ingress_at = |pod: &str, verdict: Verdict, from: &str| -> Vec<Arc<Flow>> {
        flows
            .iter()
            .filter(|f| f.event_type == EventType::PolicyVerdict && f.traffic_direction == TrafficDirection::Ingress)
            .filter(|f| format!("{}/{}", f.destination.namespace, f.destination.pod_name) == pod)
            .filter(|f| format!("{}/{}", f.source.namespace, f.source.pod_name) == from)
            .filter(|f| f.verdict == verdict)
            .cloned()
            .collect()
    };

    let allowed = ingress_at("x/a", Verdict::Forwarded, "y/a");
    assert_eq!(allowed.len(), 1, "one verdict for the one allowed connection: {flows:#?}");
    assert_eq!(allowed[0].policy, Some(PolicyAttribution::AllowedBy(vec![name("x", "x-a-from-y")])));
    assert_eq!(allowed[0].match_type, Some(MatchType::L3L4));
    assert_eq!(allowed[0].destination_port, 80);

    let denied = ingress_at("x/a", Verdict::Dropped, "z/a");
    assert!(!denied.is_empty(), "a denied verdict for z/a -> x/a");
    assert_eq!(
        denied[0].policy,
        Some(PolicyAttribution::DefaultDeny { isolated_by: vec![name("x", "deny-all"), name("x", "x-a-from-y")] })
    );
    let denied_b = ingress_at("x/b", Verdict::Dropped, "y/a");
    assert_eq!(denied_b[0].policy, Some(PolicyAttribution::DefaultDeny { isolated_by: vec![name("x", "deny-all")] }));

    let drops: Vec<_> = flows.iter().filter(|f| f.event_type == EventType::Drop).collect();
    assert!(drops.len() >= denied.len() + denied_b.len(), "a drop record per dropped packet");
    assert!(drops.iter().all(|d| d.drop_reason == 133 && d.verdict == Verdict::Dropped));
    // Egress is not enforced anywhere: no egress verdicts.
    assert!(flows.iter().all(|f| f.traffic_direction == TrafficDirection::Ingress), "{flows:#?}");

    // Per-endpoint audit: x/a lets z/a in and reports AUDIT; switching it off denies again.
    let xa_id = rt.block_on(async {
        let mut c = Client::connect(&socket, "t").await.unwrap();
        let Response::Endpoints(eps) = c.request(Request::EndpointList).await.unwrap() else { panic!() };
        eps.iter().find(|e| e.pod_ref() == "x/a").unwrap().id
    });
    let out = flowgate_ok(&["endpoint", "config", &xa_id.to_string(), "audit=on", "--socket", &sock]);
    assert!(out.contains("ingress Audit"), "{out}");
    let audited = rt.block_on(async {
        let mut stream = verdict_stream(&socket).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ok = probe("z/a", "x/a");
        assert!(ok, "in audit mode the would-be drop passes");
        collect(&mut stream).await
    });
    assert!(audited.iter().any(|f| f.verdict == Verdict::Audit && f.destination.pod_name == "a"), "{audited:#?}");
    assert!(audited.iter().all(|f| f.event_type != EventType::Drop), "nothing dropped in audit mode");
    flowgate_ok(&["endpoint", "config", &xa_id.to_string(), "audit=off", "--socket", &sock]);
    assert!(!probe("z/a", "x/a"), "audit off: denied again");

    // The realized entries, with the policy that put them there and their counters.
    let table = flowgate_ok(&["policy", "get", "--endpoint", &xa_id.to_string(), "--socket", &sock]);
    assert!(table.contains("selected by x/deny-all, x/x-a-from-y"), "{table}");
    assert!(table.contains("80/TCP") && table.contains("x/x-a-from-y"), "{table}");
    let json = flowgate_ok(&["policy", "get", "--endpoint", &xa_id.to_string(), "--socket", &sock, "-o", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let entries = parsed[0]["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(
        entries.iter().all(|e| e["labels"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("ns=y"))),
        "{json}"
    );
    assert!(
        entries.iter().map(|e| e["packets"].as_u64().unwrap()).sum::<u64>() >= 1,
        "the allowed connection was counted: {json}"
    );
}

#[test]
fn agent_wide_audit_mode_lets_would_be_drops_pass_and_says_so_everywhere() {
    require_root();
    let lab = LabGuard::up("auditall", &example("lab-netpol.yaml"));
    let policy_dir = TempDir::new("auditall-policies");
    std::fs::write(policy_dir.path().join("x.yaml"), POLICIES).unwrap();
    let dir = SocketDir::new("auditall");
    let agent = AgentGuard::start(
        &lab.name,
        &dir.socket("agent.sock"),
        &["--policies", policy_dir.path().to_str().unwrap(), "--policy-audit-mode"],
    );
    let sock = agent.socket.to_str().unwrap().to_owned();
    let rt = runtime();
    let flows = rt.block_on(async {
        let mut stream = verdict_stream(&agent.socket).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (report, _) =
            lab.probe(&["--from", "z/a", "--to", "x/a", "--port", "80", "--protocol", "TCP", "--timeout", "500ms"]);
        assert!(probe_results(&report)[0].2, "audit mode: the connection the policy denies goes through");
        collect(&mut stream).await
    });
    let audit: Vec<_> = flows.iter().filter(|f| f.verdict == Verdict::Audit).collect();
    assert!(!audit.is_empty(), "reported as AUDIT: {flows:#?}");
    assert!(
        matches!(&audit[0].policy, Some(PolicyAttribution::DefaultDeny { isolated_by }) if !isolated_by.is_empty()),
        "the audit verdict says which default deny it stood in for: {:?}",
        audit[0].policy
    );
    assert!(flows.iter().all(|f| f.event_type != EventType::Drop), "nothing dropped");
    let status: serde_json::Value =
        serde_json::from_str(&flowgate_ok(&["status", "--socket", &sock, "-o", "json"])).unwrap();
    assert_eq!(status["policy"]["audit_mode"], true);
    let list = flowgate_ok(&["endpoint", "list", "--socket", &sock]);
    assert!(list.lines().any(|l| l.contains("x/a") && l.contains("Audit")), "{list}");
}
