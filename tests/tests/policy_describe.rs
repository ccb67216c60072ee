//! `flowgate policy describe` as people run it: on the walkthrough policies (kubectl's layout, warnings),
//! with a lab topology (what each policy selects there), as JSON for scripts, and refusing an invalid file
//! with its file, document and field path, offline; and by NAMESPACE/NAME against an agent on a real lab
//! (the endpoints the policy selects now).

use flowgate_tests::{example, flowgate, flowgate_ok};

#[test]
fn describes_every_walkthrough_policy_with_what_it_selects_in_the_demo_lab() {
    let dir = example("policies");
    let topology = example("demo-lab.yaml");
    let out = flowgate_ok(&["policy", "describe", dir.to_str().unwrap(), "--topology", topology.to_str().unwrap()]);
    // The three files, sorted by name, each as kubectl prints it.
    let names: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("Name:         ")).collect();
    assert_eq!(names, ["allow-debug", "default-deny-ingress-policy", "network-policy-walkthrough-db"], "{out}");
    assert!(
        out.contains("  PodSelector:     component=database\n  Allowing ingress traffic:\n    To Port: 5432/TCP\n")
    );
    assert!(out.contains("      IPBlock:\n        CIDR: 10.200.0.250/32\n        Except: \n"), "{out}");
    assert!(out.contains("    <none> (Selected pods are isolated for ingress connectivity)\n"), "{out}");
    assert!(out.contains("      NamespaceSelector: space=monitoring\n      PodSelector: component=debug\n"), "{out}");
    assert!(out.contains("Selects:      default/database\n"), "{out}");
    assert!(out.contains("podSelector is empty: this policy selects every pod in namespace default"), "{out}");
    assert!(out.contains("are a namespaceSelector and a podSelector as two peers"), "{out}");

    let json = flowgate_ok(&["policy", "describe", dir.to_str().unwrap(), "-o", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let db = &parsed[2];
    assert_eq!(db["name"], "network-policy-walkthrough-db");
    assert_eq!(db["ingress"][0]["ports"][0], "5432/TCP");
    assert_eq!(db["ingress"][0]["peers"][0]["ip_block"]["cidr"], "10.200.0.250/32");
    assert_eq!(db["policy_types"], serde_json::json!(["Ingress"]));
    assert!(db["selects"].is_null(), "no topology, no selection");
}

#[test]
fn an_invalid_file_is_refused_with_file_document_and_field() {
    let file = example("policies-invalid/bad-endport.yaml");
    let out = flowgate(&["policy", "describe", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad-endport.yaml: document 2: spec.ingress[0].ports[1].endPort: must be >= port"), "{err}");
}

#[test]
fn describes_a_policy_the_agent_enforces_with_the_endpoints_it_selects_now() {
    use flowgate_tests::{
        LabGuard, TempDir,
        agent::{AgentGuard, SocketDir},
    };

    let lab = LabGuard::up("ptdescribe", &example("demo-lab.yaml"));
    let dir = TempDir::new("policy-describe-live");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for file in std::fs::read_dir(example("policies")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, policies.join(file.file_name().unwrap())).unwrap();
    }
    let sockets = SocketDir::new("ptdescribe");
    let socket = sockets.socket("agent");
    let _agent = AgentGuard::start(&lab.name, &socket, &["--policies", policies.to_str().unwrap(), "--no-pin"]);
    let socket = socket.to_str().unwrap();

    let out = flowgate_ok(&["policy", "describe", "default/default-deny-ingress-policy", "--socket", socket]);
    assert!(out.starts_with("Name:         default-deny-ingress-policy\nNamespace:    default\n"), "{out}");
    assert!(
        out.contains("  PodSelector:     <none> (Allowing the specific traffic to all pods in this namespace)"),
        "{out}"
    );
    // The endpoints it selects now: every pod of `default` in the lab, none of the other namespaces.
    assert!(out.contains("Selects:      default/database, default/backend, default/frontend, default/app\n"), "{out}");

    let json = flowgate_ok(&["policy", "describe", "default/allow-debug", "--socket", socket, "-o", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(parsed[0]["selects"], serde_json::json!(["default/app"]));
    assert_eq!(parsed[0]["ingress"][0]["peers"][0]["namespace_selector"], "space=monitoring");

    let out = flowgate(&["policy", "describe", "default/nope", "--socket", socket]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enforces no policy default/nope (it enforces: default/allow-debug, "), "{err}");
}
