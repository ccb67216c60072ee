//! The example manifests under `examples/`: the walkthrough policies load, validate and enforce the
//! walkthrough's story; the invalid example reports its error exactly.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use flowgate_policy::{
    Addr, CidrIdentities, ClusterView, ContainerPort, DirectionVerdict, MatchKind, NamespaceInfo, PodInfo, PolicyRef,
    Protocol::Tcp, compile, load_dir,
};

fn examples(dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(dir)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn pod(id: u16, namespace: &str, name: &str, pod_labels: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        endpoint_id: id,
        namespace: namespace.into(),
        name: name.into(),
        labels: labels(pod_labels),
        ip: Ipv4Addr::new(10, 200, 0, u8::try_from(id).unwrap() + 10),
        ipv6: None,
        identity: 100 + u32::from(id),
        ports: Vec::new(),
    }
}

/// The walkthrough: default (database, backend, frontend, app), dba-tools (team=dba, psql),
/// monitoring (space=monitoring, debug), and the outside host 10.200.0.250.
fn walkthrough() -> ClusterView {
    let mut database = pod(1, "default", "database", &[("component", "database")]);
    database.ports = vec![ContainerPort { name: Some("postgres".into()), port: 5432, protocol: Tcp }];
    ClusterView {
        namespaces: vec![
            NamespaceInfo { name: "default".into(), labels: BTreeMap::new() },
            NamespaceInfo { name: "dba-tools".into(), labels: labels(&[("team", "dba")]) },
            NamespaceInfo { name: "monitoring".into(), labels: labels(&[("space", "monitoring")]) },
        ],
        pods: vec![
            database,
            pod(2, "default", "backend", &[("component", "backend")]),
            pod(3, "default", "frontend", &[("component", "frontend")]),
            pod(4, "default", "app", &[("component", "app")]),
            pod(5, "dba-tools", "psql", &[("component", "psql")]),
            pod(6, "monitoring", "debug", &[("component", "debug")]),
            pod(7, "monitoring", "metrics", &[("component", "metrics")]),
        ],
    }
}

#[test]
fn walkthrough_policies_load_and_validate() {
    let policies = load_dir(&examples("policies"))
        .unwrap_or_else(|errors| panic!("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")));
    let names: Vec<String> = policies.iter().map(|p| p.policy_ref().to_string()).collect();
    assert_eq!(
        names,
        vec!["default/allow-debug", "default/default-deny-ingress-policy", "default/network-policy-walkthrough-db"]
    );
}

#[test]
fn walkthrough_story() {
    let cluster = walkthrough();
    let plan = compile(&load_dir(&examples("policies")).unwrap(), &cluster, &mut CidrIdentities::new());
    let at = |id: u16| Addr::endpoint(&cluster.pods[usize::from(id) - 1]);
    let outside = Addr::Outside { ip: Ipv4Addr::new(10, 200, 0, 250).into() };
    let stranger = Addr::Outside { ip: Ipv4Addr::new(10, 200, 0, 251).into() };
    let (database, backend, frontend, app, psql, debug, metrics) = (at(1), at(2), at(3), at(4), at(5), at(6), at(7));

    for from in [backend, psql, outside] {
        assert!(plan.evaluate(from, database, Tcp, 5432).allowed, "{from:?}");
        assert!(!plan.evaluate(from, database, Tcp, 5433).allowed, "{from:?}");
    }
    for from in [frontend, app, debug, metrics, stranger] {
        assert!(!plan.evaluate(from, database, Tcp, 5432).allowed, "{from:?}");
    }
    assert!(plan.evaluate(debug, app, Tcp, 8080).allowed);
    assert!(!plan.evaluate(metrics, app, Tcp, 8080).allowed);
    assert!(!plan.evaluate(backend, app, Tcp, 8080).allowed);
    assert!(!plan.evaluate(app, frontend, Tcp, 80).allowed);
    // Egress is not isolated anywhere; monitoring is not selected at all.
    assert!(plan.evaluate(database, metrics, Tcp, 9090).allowed);

    let verdict = plan.evaluate(backend, database, Tcp, 5432);
    assert_eq!(
        verdict.ingress,
        DirectionVerdict::Allowed {
            match_kind: MatchKind::L3L4,
            allowed_by: vec![PolicyRef::new("default", "network-policy-walkthrough-db")]
        }
    );
    let denied = plan.evaluate(frontend, database, Tcp, 5432);
    assert_eq!(
        denied.ingress,
        DirectionVerdict::DefaultDeny {
            selected_by: vec![
                PolicyRef::new("default", "default-deny-ingress-policy"),
                PolicyRef::new("default", "network-policy-walkthrough-db"),
            ]
        }
    );
    let prefixes: Vec<String> = plan.cidrs.iter().map(|c| c.prefix.to_string()).collect();
    assert_eq!(prefixes, vec!["0.0.0.0/0", "10.200.0.250/32", "::/0"]);
}

#[test]
fn invalid_example_reports_the_end_port_error() {
    let dir = examples("policies-invalid");
    let errors: Vec<String> = load_dir(&dir).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        vec![format!(
            "{}: document 2: spec.ingress[0].ports[1].endPort: must be >= port",
            dir.join("bad-endport.yaml").display()
        )]
    );
}
