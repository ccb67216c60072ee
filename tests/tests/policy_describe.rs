//! `flowgate policy describe` as people run it: on the walkthrough policies (kubectl's layout, warnings),
//! with a lab topology (what each policy selects there), as JSON for scripts, and refusing an invalid file
//! with its file, document and field path. Offline: no agent, no lab.

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
