//! `flowgate policy test` as people run it. Offline on the walkthrough policies and the demo lab's
//! topology (golden outputs: the verdict per direction with the deciding policy and match type, or default
//! deny with the isolating policies; `--all` in `lab probe`'s table and JSON; `--with`/`--without` listing only
//! what flips). Live against an agent on a real lab: the prediction equals the offline one and comes true on
//! real traffic, and a `--with` prediction comes true once the policy is applied.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use flowgate_tests::{
    LabGuard, TempDir,
    agent::{AgentGuard, SocketDir},
    example, flowgate, flowgate_ok, probe_results,
};

/// The file `--with` adds: the frontend may reach the database's `postgres` port.
fn allow_frontend() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_test/allow-frontend-to-db.yaml").display().to_string()
}

/// `flowgate policy test ARGS... --policies examples/policies --topology examples/demo-lab.yaml`, with the
/// example paths written as the README does.
fn offline(args: &[&str]) -> String {
    let (policies, topology) = (example("policies"), example("demo-lab.yaml"));
    let (policies, topology) = (policies.to_str().unwrap(), topology.to_str().unwrap());
    let mut all = vec!["policy", "test", "--policies", policies, "--topology", topology];
    all.extend_from_slice(args);
    flowgate_ok(&all)
        .replace(policies, "examples/policies")
        .replace(topology, "examples/demo-lab.yaml")
        .replace(&allow_frontend(), "allow-frontend-to-db.yaml")
}

#[test]
fn offline_answers_name_the_deciding_policy_and_match_type_or_the_isolating_policies() {
    assert_eq!(
        offline(&["--from", "default/backend", "--to", "default/database", "--port", "5432"]),
        "default/backend -> default/database on 5432/TCP over IPv4: ALLOWED
  egress at default/backend (endpoint 2, peer identity 256 and CIDR identity 16777216): allowed: no policy selects it for this direction
  ingress at default/database (endpoint 1, peer identity 257 and CIDR identity 16777216): allowed by default/network-policy-walkthrough-db (match L3-L4)
(predicted from policies examples/policies on topology examples/demo-lab.yaml; no packet sent)
"
    );
    assert_eq!(
        offline(&["--from", "default/frontend", "--to", "default/database", "--port", "postgres"]),
        "default/frontend -> default/database on postgres (5432)/TCP over IPv4: DENIED
  egress at default/frontend (endpoint 3, peer identity 256 and CIDR identity 16777216): allowed: no policy selects it for this direction
  ingress at default/database (endpoint 1, peer identity 258 and CIDR identity 16777216): denied: default deny, isolated by default/default-deny-ingress-policy, default/network-policy-walkthrough-db; no rule allows it
(predicted from policies examples/policies on topology examples/demo-lab.yaml; no packet sent)
"
    );
    // The ipBlock admits the outside host's IPv4 address only; one peer with both selectors, over IPv6.
    let outside = offline(&["--from", "outside", "--to", "default/database", "--port", "5432"]);
    assert!(
        outside.contains("ALLOWED\n  egress at outside: not an endpoint of this node: nothing enforced\n"),
        "{outside}"
    );
    assert!(
        outside.contains(
            "(endpoint 1, peer identity 16777217): allowed by default/network-policy-walkthrough-db (match L3-L4)"
        ),
        "{outside}"
    );
    let outside6 = offline(&["--from", "outside", "--to", "default/database", "--port", "5432", "--ipv6"]);
    assert!(outside6.contains("over IPv6: DENIED"), "{outside6}");
    let debug = offline(&["--from", "monitoring/debug", "--to", "default/app", "--port", "8080", "--ipv6"]);
    assert!(debug.contains("allowed by default/allow-debug (match L3-only)"), "{debug}");
    // A named port the destination does not declare: nothing to connect to, no lookup.
    let unnamed = offline(&["--from", "default/backend", "--to", "default/app", "--port", "postgres"]);
    assert!(unnamed.contains("DENIED\n  default/app declares no container port named postgres/TCP"), "{unnamed}");

    let json: serde_json::Value = serde_json::from_str(&offline(&[
        "--from",
        "10.200.0.250",
        "--to",
        "default/database",
        "--port",
        "5432",
        "--protocol",
        "udp",
        "-o",
        "json",
    ]))
    .expect("JSON");
    assert_eq!(json["from"]["name"], "outside", "an address of a lab host is that host: {json}");
    assert_eq!(json["connected"], false);
    assert_eq!(json["ingress"]["verdict"], "default_deny");
    assert_eq!(json["ingress"]["isolated_by"][1]["name"], "network-policy-walkthrough-db");
}

#[test]
fn all_prints_lab_probes_truth_table_and_json() {
    assert_eq!(
        offline(&["--all", "--port", "5432"]),
        "predicted from policies examples/policies on topology examples/demo-lab.yaml, port 5432/TCP over IPv4: . connected, X blocked (rows: from, columns: to)
\tdefault/database\tdefault/backend\tdefault/frontend\tdefault/app\tdba-tools/dba-console\tmonitoring/debug
default/database\t.\tX\tX\tX\t.\t.
default/backend\t.\t.\tX\tX\t.\t.
default/frontend\tX\tX\t.\tX\t.\t.
default/app\tX\tX\tX\t.\t.\t.
dba-tools/dba-console\t.\tX\tX\tX\t.\t.
monitoring/debug\tX\tX\tX\t.\t.\t.
19/36 connected, 17 blocked (no packet sent)
"
    );
    let json: serde_json::Value = serde_json::from_str(&offline(&["--all", "--port", "5432", "-o", "json"])).unwrap();
    assert_eq!((&json["port"], &json["protocol"], &json["family"]), (&5432.into(), &"TCP".into(), &"ipv4".into()));
    let results = probe_results(&json);
    assert_eq!(results.len(), 36, "lab probe's shape: every source to every destination");
    assert!(results.contains(&("default/backend".into(), "default/database".into(), true)));
    assert!(results.contains(&("default/frontend".into(), "default/database".into(), false)));
}

#[test]
fn with_and_without_list_only_the_connections_that_flip_and_why() {
    let with = allow_frontend();
    assert_eq!(
        offline(&["--all", "--port", "5432", "--with", &with, "--without", "default/allow-debug"]),
        "with allow-frontend-to-db.yaml, without default/allow-debug: 2 of 36 connections change on 5432/TCP over IPv4 (from policies examples/policies on topology examples/demo-lab.yaml; no packet sent)
default/frontend -> default/database: blocked -> connected
  ingress at default/database (endpoint 1, peer identity 258 and CIDR identity 16777216):
    before: denied: default deny, isolated by default/default-deny-ingress-policy, default/network-policy-walkthrough-db; no rule allows it
    after:  allowed by default/allow-frontend-to-db (match L3-L4)
monitoring/debug -> default/app: connected -> blocked
  ingress at default/app (endpoint 4, peer identity 261 and CIDR identity 16777216):
    before: allowed by default/allow-debug (match L3-only)
    after:  denied: default deny, isolated by default/default-deny-ingress-policy; no rule allows it
"
    );
    let none = offline(&["--from", "default/backend", "--to", "default/database", "--port", "5432", "--with", &with]);
    assert!(none.contains(": 0 of 1 connections change on 5432/TCP"), "{none}");
    let (policies, topology) = (example("policies"), example("demo-lab.yaml"));
    let out = flowgate(&[
        "policy",
        "test",
        "--policies",
        policies.to_str().unwrap(),
        "--topology",
        topology.to_str().unwrap(),
        "--all",
        "--port",
        "80",
        "--without",
        "default/no-such-policy",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--without default/no-such-policy: no such policy in policies"), "{err}");
    assert!(err.contains("(policies: default/allow-debug, default/default-deny-ingress-policy, "), "{err}");
}

/// `flowgate policy test --socket SOCKET ARGS...`.
fn live(socket: &Path, args: &[&str]) -> String {
    let mut all = vec!["policy", "test", "--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    flowgate_ok(&all)
}

#[test]
fn live_predictions_equal_the_offline_ones_and_come_true_on_real_traffic() {
    let lab = LabGuard::up("ptlive", &example("demo-lab.yaml"));
    let dir = TempDir::new("policy-test-live");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for file in std::fs::read_dir(example("policies")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, policies.join(file.file_name().unwrap())).unwrap();
    }
    let sockets = SocketDir::new("ptlive");
    let socket = sockets.socket("agent");
    let agent = AgentGuard::start(
        &lab.name,
        &socket,
        &["--policies", policies.to_str().unwrap(), "--watch-interval-ms", "50", "--no-pin"],
    );

    // What the node enforces now is what the files mean offline, cell for cell.
    let predicted: serde_json::Value =
        serde_json::from_str(&live(&socket, &["--all", "--port", "5432", "-o", "json"])).unwrap();
    let offline: serde_json::Value =
        serde_json::from_str(&offline(&["--all", "--port", "5432", "-o", "json"])).unwrap();
    assert_eq!(predicted, offline, "{}", agent.output());

    // And it comes true: every pod to the database (the one that listens on 5432), over real connections.
    let (observed, _) = lab.probe(&["--all", "--port", "5432", "--timeout", "1s"]);
    for (from, to, connected) in probe_results(&observed) {
        if to == "default/database" && from != to {
            assert_eq!(predicted["results"][&from][&to], connected, "{from} -> {to}: predicted vs probed");
        }
    }

    // What if the frontend policy were applied: one connection flips, and once applied it connects.
    let with = allow_frontend();
    let what_if = live(&socket, &["--all", "--port", "5432", "--with", &with]);
    assert!(what_if.contains(": 1 of 36 connections change on 5432/TCP over IPv4 (from the agent at "), "{what_if}");
    assert!(what_if.contains("default/frontend -> default/database: blocked -> connected\n"), "{what_if}");
    let (before, _) = lab.probe(&["--from", "default/frontend", "--to", "default/database", "--port", "5432"]);
    assert_eq!(probe_results(&before), [("default/frontend".into(), "default/database".into(), false)]);

    std::fs::copy(&with, policies.join("allow-frontend-to-db.yaml")).unwrap();
    let pair = ["--from", "default/frontend", "--to", "default/database", "--port", "postgres", "-o", "json"];
    let started = Instant::now();
    let answer = loop {
        let answer: serde_json::Value = serde_json::from_str(&live(&socket, &pair)).unwrap();
        if answer["connected"] == true {
            break answer;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the agent did not apply the policy: {}", agent.output());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(answer["ingress"]["verdict"], "allowed");
    assert_eq!(answer["ingress"]["match_type"], "L3-L4");
    assert_eq!(answer["ingress"]["policies"][0]["name"], "allow-frontend-to-db");
    let (after, _) = lab.probe(&["--from", "default/frontend", "--to", "default/database", "--port", "5432"]);
    assert_eq!(probe_results(&after), [("default/frontend".into(), "default/database".into(), true)]);

    // Removing it again, as predicted live: only that connection flips back.
    let without = live(&socket, &["--all", "--port", "5432", "--without", "default/allow-frontend-to-db"]);
    assert!(without.contains(": 1 of 36 connections change") && without.contains("connected -> blocked"), "{without}");
}
