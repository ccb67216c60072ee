use std::{net::Ipv4Addr, path::Path, sync::Arc};

use super::*;
use crate::{
    plan::{DirectionVerdict, MatchKind},
    source::parse_str,
};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn port(name: &str, number: u16, protocol: Protocol) -> ContainerPort {
    ContainerPort { name: Some(name.to_owned()), port: number, protocol }
}

fn pod(id: u16, namespace: &str, name: &str, pod_labels: &[(&str, &str)], identity: u32) -> PodInfo {
    PodInfo {
        endpoint_id: id,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: labels(pod_labels),
        ip: Ipv4Addr::new(10, 200, 0, u8::try_from(id).unwrap()),
        ipv6: None,
        identity,
        ports: Vec::new(),
    }
}

/// default: web (1, app=web, http=8080), api (2, app=api, http=9090), db (3, app=db), web2 (4, app=web,
/// same identity as web); other: client (5, app=client), namespace labelled team=blue.
fn cluster() -> ClusterView {
    let mut web = pod(1, "default", "web", &[("app", "web")], 100);
    web.ports = vec![port("http", 8080, Protocol::Tcp), port("dns", 53, Protocol::Udp)];
    let mut api = pod(2, "default", "api", &[("app", "api")], 200);
    api.ports = vec![port("http", 9090, Protocol::Tcp)];
    let db = pod(3, "default", "db", &[("app", "db")], 300);
    let mut web2 = pod(4, "default", "web2", &[("app", "web")], 100);
    web2.ports = vec![port("http", 8080, Protocol::Tcp)];
    let client = pod(5, "other", "client", &[("app", "client")], 500);
    ClusterView {
        namespaces: vec![
            NamespaceInfo { name: "default".into(), labels: BTreeMap::new() },
            NamespaceInfo { name: "other".into(), labels: labels(&[("team", "blue")]) },
        ],
        pods: vec![web, api, db, web2, client],
    }
}

fn policies(yaml: &str) -> Vec<LoadedPolicy> {
    let (policies, errors) = parse_str(Path::new("test.yaml"), yaml);
    assert!(errors.is_empty(), "{:?}", errors.iter().map(ToString::to_string).collect::<Vec<_>>());
    policies
}

fn np(namespace: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

/// Compiles `yaml` for [`cluster`], checking first that [`PolicyCompiler`] gives the same plan whatever
/// set and cluster it compiled before (see [`check_incremental`]).
fn compile_yaml(yaml: &str) -> PolicyPlan {
    check_incremental(&policies(yaml), &cluster());
    compile(&policies(yaml), &cluster(), &mut CidrIdentities::new())
}

/// Variants of `cluster`, each a change a kept share could miss: each pod gone, relabelled, with other
/// ports and identity; each namespace relabelled, gone from the list; a pod of a new namespace.
fn cluster_variants(cluster: &ClusterView) -> Vec<(String, ClusterView)> {
    let mut variants = vec![("empty".to_owned(), ClusterView::default())];
    for (i, pod) in cluster.pods.iter().enumerate() {
        let mut gone = cluster.clone();
        gone.pods.remove(i);
        variants.push((format!("without {}", pod.name), gone));
        let mut relabelled = cluster.clone();
        relabelled.pods[i].labels = labels(&[("app", "other"), ("tier", "x")]);
        variants.push((format!("{} relabelled", pod.name), relabelled));
        let mut other = cluster.clone();
        other.pods[i].ports.clear();
        other.pods[i].identity += 7;
        other.pods[i].ipv6 = Some("fd00::9".parse().unwrap());
        variants.push((format!("{} without ports, other identity", pod.name), other));
    }
    for (i, namespace) in cluster.namespaces.iter().enumerate() {
        let mut relabelled = cluster.clone();
        relabelled.namespaces[i].labels = labels(&[("team", "red")]);
        variants.push((format!("namespace {} relabelled", namespace.name), relabelled));
        let mut gone = cluster.clone();
        gone.namespaces.remove(i);
        variants.push((format!("namespace {} unlisted", namespace.name), gone));
    }
    let mut newcomer = cluster.clone();
    newcomer.pods.push(pod(60, "fresh", "newcomer", &[("app", "web")], 600));
    variants.push(("a pod in a new namespace".to_owned(), newcomer));
    variants
}

/// [`PolicyCompiler`] agrees with [`compile`] after every change between `policies` on `cluster` and a
/// variant (a cluster variant, a policy left out), in both directions, with the same CIDR identities.
fn check_incremental(policies: &[LoadedPolicy], cluster: &ClusterView) {
    let policies: Vec<Arc<LoadedPolicy>> = policies.iter().cloned().map(Arc::new).collect();
    let mut variants: Vec<(String, Vec<Arc<LoadedPolicy>>, ClusterView)> =
        cluster_variants(cluster).into_iter().map(|(what, variant)| (what, policies.clone(), variant)).collect();
    for (i, left_out) in policies.iter().enumerate() {
        let mut fewer = policies.clone();
        fewer.remove(i);
        variants.push((format!("without policy {}", left_out.policy_ref()), fewer, cluster.clone()));
    }
    variants.push(("no policies".to_owned(), Vec::new(), cluster.clone()));
    // The same policies again, as the API server sends them: equal, not the same `Arc`s.
    let again: Vec<Arc<LoadedPolicy>> = policies.iter().map(|p| Arc::new((**p).clone())).collect();
    for (what, variant_policies, variant) in variants {
        let mut ids = CidrIdentities::new();
        let mut compiler = PolicyCompiler::default();
        let steps =
            [(&variant_policies, &variant), (&policies, cluster), (&variant_policies, &variant), (&again, cluster)];
        for (step, (set, on)) in steps.into_iter().enumerate() {
            let got = compiler.compile(set, on, &mut ids);
            assert_eq!(got, compile(set, on, &mut ids), "step {step} of: {what}, and back");
        }
    }
}

fn r(namespace: &str, name: &str) -> PolicyRef {
    PolicyRef::new(namespace, name)
}

fn entry(peer: PeerMatch, protocol: Option<Protocol>, ports: Option<(u16, u16)>, by: &[PolicyRef]) -> PolicyEntry {
    PolicyEntry { peer, protocol, ports, allowed_by: by.to_vec() }
}

fn addr(plan: &PolicyPlan, id: u16) -> Addr {
    let e = &plan.endpoints[&id];
    Addr::Endpoint { endpoint_id: id, identity: e.identity, ip: e.ip.into() }
}

fn outside(ip: &str) -> Addr {
    Addr::Outside { ip: ip.parse().unwrap() }
}

fn spec(yaml: &str) -> NetworkPolicySpec {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn policy_types_default_to_ingress_only() {
    assert_eq!(policy_types(&spec("podSelector: {}")), (true, false));
}

#[test]
fn policy_types_default_adds_egress_when_egress_rules_exist() {
    assert_eq!(policy_types(&spec("egress: [{}]")), (true, true));
}

#[test]
fn policy_types_default_ignores_empty_egress_list() {
    assert_eq!(policy_types(&spec("egress: []")), (true, false));
}

#[test]
fn policy_types_empty_list_is_defaulted() {
    assert_eq!(policy_types(&spec("policyTypes: []\negress: [{}]")), (true, true));
}

#[test]
fn policy_types_explicit_egress_only() {
    assert_eq!(policy_types(&spec("policyTypes: [Egress]\ningress: [{}]")), (false, true));
}

#[test]
fn policy_types_explicit_both() {
    assert_eq!(policy_types(&spec("policyTypes: [Ingress, Egress]")), (true, true));
}

#[test]
fn no_policies_every_endpoint_listed_and_not_enforced() {
    let plan = compile_yaml("");
    assert_eq!(plan.endpoints.len(), 5);
    for endpoint in plan.endpoints.values() {
        assert_eq!(endpoint.ingress, DirectionPolicy::default());
        assert_eq!(endpoint.egress, DirectionPolicy::default());
    }
    assert_eq!(plan.endpoints[&5].namespace, "other");
    assert_eq!(plan.endpoints[&5].pod, "client");
}

#[test]
fn default_deny_ingress_selects_all_pods_of_its_namespace_only() {
    let plan = compile_yaml(&np("default", "deny", "podSelector: {}\npolicyTypes: [Ingress]"));
    for id in [1, 2, 3, 4] {
        let ingress = &plan.endpoints[&id].ingress;
        assert!(ingress.enforced);
        assert_eq!(ingress.selected_by, vec![r("default", "deny")]);
        assert!(ingress.entries.is_empty());
        assert!(!plan.endpoints[&id].egress.enforced);
    }
    assert!(!plan.endpoints[&5].ingress.enforced);
}

#[test]
fn spec_absent_isolates_ingress_of_every_pod() {
    let plan = compile_yaml("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bare}\n");
    assert!(plan.endpoints[&1].ingress.enforced);
    assert!(plan.endpoints[&1].ingress.entries.is_empty());
    assert!(!plan.endpoints[&5].ingress.enforced);
}

#[test]
fn missing_namespace_defaults_to_default() {
    let plan = compile_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: nons}\nspec: {podSelector: {}}\n",
    );
    assert_eq!(plan.endpoints[&1].ingress.selected_by, vec![r("default", "nons")]);
    assert!(!plan.endpoints[&5].ingress.enforced);
}

#[test]
fn pod_selector_selects_matching_pods_only() {
    let plan = compile_yaml(&np("default", "web", "podSelector: {matchLabels: {app: web}}"));
    assert!(plan.endpoints[&1].ingress.enforced);
    assert!(plan.endpoints[&4].ingress.enforced);
    assert!(!plan.endpoints[&2].ingress.enforced);
    assert!(!plan.endpoints[&3].ingress.enforced);
}

#[test]
fn policy_in_other_namespace_does_not_select_same_labels_here() {
    let plan = compile_yaml(&np("other", "web", "podSelector: {matchLabels: {app: web}}"));
    assert!(plan.endpoints.values().all(|e| !e.ingress.enforced));
}

#[test]
fn empty_rule_allows_everything() {
    let plan = compile_yaml(&np("default", "all", "podSelector: {matchLabels: {app: db}}\ningress:\n- {}"));
    assert_eq!(plan.endpoints[&3].ingress.entries, vec![entry(PeerMatch::Any, None, None, &[r("default", "all")])]);
}

#[test]
fn empty_from_list_means_any_peer() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: []\n  ports: [{port: 5432}]",
    ));
    assert_eq!(
        plan.endpoints[&3].ingress.entries,
        vec![entry(PeerMatch::Any, Some(Protocol::Tcp), Some((5432, 5432)), &[r("default", "p")])]
    );
}

#[test]
fn empty_ports_list_means_all_ports_and_protocols() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: api}}}]\n  ports: []",
    ));
    assert_eq!(
        plan.endpoints[&3].ingress.entries,
        vec![entry(PeerMatch::Identity(200), None, None, &[r("default", "p")])]
    );
}

#[test]
fn protocol_without_port_means_every_port_of_that_protocol() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- ports: [{protocol: UDP}]",
    ));
    assert_eq!(
        plan.endpoints[&3].ingress.entries,
        vec![entry(PeerMatch::Any, Some(Protocol::Udp), None, &[r("default", "p")])]
    );
}

#[test]
fn empty_port_item_is_every_tcp_port() {
    let plan = compile_yaml(&np("default", "p", "podSelector: {matchLabels: {app: db}}\ningress:\n- ports: [{}]"));
    assert_eq!(
        plan.endpoints[&3].ingress.entries,
        vec![entry(PeerMatch::Any, Some(Protocol::Tcp), None, &[r("default", "p")])]
    );
}

#[test]
fn every_usable_port_is_the_protocol_alone() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- ports: [{port: 1, endPort: 65535, protocol: UDP}, \
         {port: 2, endPort: 65535}]",
    ));
    assert_eq!(
        plan.endpoints[&3].ingress.entries,
        vec![
            entry(PeerMatch::Any, Some(Protocol::Tcp), Some((2, 65535)), &[r("default", "p")]),
            entry(PeerMatch::Any, Some(Protocol::Udp), None, &[r("default", "p")]),
        ]
    );
}

#[test]
fn end_port_gives_an_inclusive_range() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- ports: [{port: 32000, endPort: 32768, protocol: SCTP}]",
    ));
    assert_eq!(
        plan.endpoints[&3].ingress.entries,
        vec![entry(PeerMatch::Any, Some(Protocol::Sctp), Some((32000, 32768)), &[r("default", "p")])]
    );
    let db = addr(&plan, 3);
    let from = outside("192.0.2.1");
    assert!(plan.evaluate(from, db, Protocol::Sctp, 32000).allowed);
    assert!(plan.evaluate(from, db, Protocol::Sctp, 32768).allowed);
    assert!(!plan.evaluate(from, db, Protocol::Sctp, 32769).allowed);
    assert!(!plan.evaluate(from, db, Protocol::Tcp, 32000).allowed);
}

#[test]
fn peers_times_ports_cross_product() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from:\n  - podSelector: {matchLabels: {app: api}}\n  - namespaceSelector: {matchLabels: {team: blue}}\n  ports: [{port: 1}, {port: 2, protocol: UDP}]",
    ));
    let by = [r("default", "p")];
    assert_eq!(
        plan.endpoints[&3].ingress.entries,
        vec![
            entry(PeerMatch::Identity(200), Some(Protocol::Tcp), Some((1, 1)), &by),
            entry(PeerMatch::Identity(200), Some(Protocol::Udp), Some((2, 2)), &by),
            entry(PeerMatch::Identity(500), Some(Protocol::Tcp), Some((1, 1)), &by),
            entry(PeerMatch::Identity(500), Some(Protocol::Udp), Some((2, 2)), &by),
        ]
    );
}

#[test]
fn pods_sharing_an_identity_give_one_entry() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}]",
    ));
    assert_eq!(
        plan.endpoints[&3].ingress.entries,
        vec![entry(PeerMatch::Identity(100), None, None, &[r("default", "p")])]
    );
}

#[test]
fn pod_selector_alone_is_limited_to_the_policy_namespace() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {}}]",
    ));
    let ids: Vec<PeerMatch> = plan.endpoints[&3].ingress.entries.iter().map(|e| e.peer).collect();
    assert_eq!(ids, vec![PeerMatch::Identity(100), PeerMatch::Identity(200), PeerMatch::Identity(300)]);
}

#[test]
fn namespace_selector_alone_selects_every_pod_of_matching_namespaces() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {team: blue}}}]",
    ));
    let ids: Vec<PeerMatch> = plan.endpoints[&3].ingress.entries.iter().map(|e| e.peer).collect();
    assert_eq!(ids, vec![PeerMatch::Identity(500)]);
}

#[test]
fn empty_namespace_selector_selects_pods_of_every_namespace() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{namespaceSelector: {}}]",
    ));
    assert_eq!(plan.endpoints[&3].ingress.entries.len(), 4);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_are_anded() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from:\n  - namespaceSelector: {}\n    podSelector: {matchLabels: {app: client}}",
    ));
    let ids: Vec<PeerMatch> = plan.endpoints[&3].ingress.entries.iter().map(|e| e.peer).collect();
    assert_eq!(ids, vec![PeerMatch::Identity(500)]);
}

#[test]
fn namespace_name_label_is_added_when_missing() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]",
    ));
    let ids: Vec<PeerMatch> = plan.endpoints[&3].ingress.entries.iter().map(|e| e.peer).collect();
    assert_eq!(ids, vec![PeerMatch::Identity(500)]);
}

#[test]
fn unlisted_namespace_of_a_pod_still_has_its_name_label() {
    let mut view = cluster();
    view.namespaces.clear();
    let set = policies(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]",
    ));
    check_incremental(&set, &view);
    let plan = compile(&set, &view, &mut CidrIdentities::new());
    assert_eq!(plan.endpoints[&3].ingress.entries[0].peer, PeerMatch::Identity(500));
}

#[test]
fn selector_matching_nothing_allows_nothing_but_isolates() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{podSelector: {matchLabels: {app: nobody}}}]",
    ));
    assert!(plan.endpoints[&3].ingress.enforced);
    assert!(plan.endpoints[&3].ingress.entries.is_empty());
}

#[test]
fn identical_entries_merge_across_rules_and_policies() {
    let yaml = np(
        "default",
        "b-second",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- ports: [{port: 80}]\n- ports: [{port: 80}]",
    ) + &np("default", "a-first", "podSelector: {}\ningress:\n- ports: [{port: 80, protocol: TCP}]");
    let plan = compile_yaml(&yaml);
    let db = &plan.endpoints[&3].ingress;
    assert_eq!(db.selected_by, vec![r("default", "a-first"), r("default", "b-second")]);
    assert_eq!(
        db.entries,
        vec![entry(
            PeerMatch::Any,
            Some(Protocol::Tcp),
            Some((80, 80)),
            &[r("default", "a-first"), r("default", "b-second")]
        )]
    );
}

#[test]
fn ingress_named_port_resolves_per_selected_endpoint() {
    let plan = compile_yaml(&np("default", "http", "podSelector: {}\ningress:\n- ports: [{port: http}]"));
    let by = [r("default", "http")];
    assert_eq!(
        plan.endpoints[&1].ingress.entries,
        vec![entry(PeerMatch::Any, Some(Protocol::Tcp), Some((8080, 8080)), &by)]
    );
    assert_eq!(
        plan.endpoints[&2].ingress.entries,
        vec![entry(PeerMatch::Any, Some(Protocol::Tcp), Some((9090, 9090)), &by)]
    );
    // db declares no "http": isolated, nothing allowed.
    assert!(plan.endpoints[&3].ingress.enforced);
    assert!(plan.endpoints[&3].ingress.entries.is_empty());
}

#[test]
fn ingress_named_port_requires_the_same_protocol() {
    let plan = compile_yaml(&np("default", "dns", "podSelector: {}\ningress:\n- ports: [{port: dns}]"));
    assert!(plan.endpoints[&1].ingress.entries.is_empty());
    let plan = compile_yaml(&np("default", "dns", "podSelector: {}\ningress:\n- ports: [{port: dns, protocol: UDP}]"));
    assert_eq!(
        plan.endpoints[&1].ingress.entries,
        vec![entry(PeerMatch::Any, Some(Protocol::Udp), Some((53, 53)), &[r("default", "dns")])]
    );
}

#[test]
fn egress_named_port_resolves_against_each_peer_pod() {
    let plan = compile_yaml(&np(
        "default",
        "to-http",
        "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Egress]\negress:\n- to: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [web, api, db]}]}}]\n  ports: [{port: http}]",
    ));
    let by = [r("default", "to-http")];
    assert_eq!(
        plan.endpoints[&3].egress.entries,
        vec![
            entry(PeerMatch::Identity(100), Some(Protocol::Tcp), Some((8080, 8080)), &by),
            entry(PeerMatch::Identity(200), Some(Protocol::Tcp), Some((9090, 9090)), &by),
        ]
    );
    let db = addr(&plan, 3);
    assert!(plan.evaluate(db, addr(&plan, 2), Protocol::Tcp, 9090).allowed);
    assert!(!plan.evaluate(db, addr(&plan, 2), Protocol::Tcp, 8080).allowed);
}

#[test]
fn egress_named_port_with_wildcard_peer_expands_to_every_declaring_pod() {
    let plan = compile_yaml(&np(
        "other",
        "client-http",
        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports: [{port: http}]",
    ));
    let by = [r("other", "client-http")];
    assert_eq!(
        plan.endpoints[&5].egress.entries,
        vec![
            entry(PeerMatch::Identity(100), Some(Protocol::Tcp), Some((8080, 8080)), &by),
            entry(PeerMatch::Identity(200), Some(Protocol::Tcp), Some((9090, 9090)), &by),
        ]
    );
}

#[test]
fn egress_named_port_to_an_ip_block_without_pods_matches_nothing() {
    // No pod's address is in the block: no destination has named ports.
    let plan = compile_yaml(&np(
        "other",
        "cidr-http",
        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{ipBlock: {cidr: 192.0.2.0/24}}]\n  ports: [{port: http}]",
    ));
    assert!(plan.endpoints[&5].egress.enforced);
    assert!(plan.endpoints[&5].egress.entries.is_empty());
}

#[test]
fn cidrs_hold_every_block_and_except_plus_world() {
    let plan = compile_yaml(&np(
        "default",
        "cidr",
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\negress:\n- to: [{ipBlock: {cidr: 192.168.1.7/24}}]",
    ));
    let prefixes: Vec<String> = plan.cidrs.iter().map(|c| c.prefix.to_string()).collect();
    assert_eq!(prefixes, vec!["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24", "::/0"]);
    assert!(plan.cidrs.iter().all(|c| c.identity >= CidrIdentities::FIRST));
}

#[test]
fn cidr_identities_are_stable_across_compilations() {
    let mut ids = CidrIdentities::new();
    let first = compile(
        &policies(&np("default", "a", "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8}}]")),
        &cluster(),
        &mut ids,
    );
    let second = compile(
        &policies(&np(
            "default",
            "b",
            "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 172.16.0.0/12}}, {ipBlock: {cidr: 10.0.0.0/8}}]",
        )),
        &cluster(),
        &mut ids,
    );
    let id_of =
        |plan: &PolicyPlan, text: &str| plan.cidrs.iter().find(|c| c.prefix.to_string() == text).map(|c| c.identity);
    assert_eq!(id_of(&first, "10.0.0.0/8"), id_of(&second, "10.0.0.0/8"));
    assert_eq!(id_of(&first, "0.0.0.0/0"), id_of(&second, "0.0.0.0/0"));
    assert_ne!(id_of(&second, "172.16.0.0/12"), id_of(&second, "10.0.0.0/8"));
}

#[test]
fn prefixes_the_same_rules_select_share_one_policy_identity() {
    // 192.0.2.1-3 are selected by the first rule only; 192.0.2.3 also by the second.
    let yaml = np(
        "default",
        "blocks",
        "podSelector: {matchLabels: {app: db}}\ningress:\n\
         - from: [{ipBlock: {cidr: 192.0.2.1/32}}, {ipBlock: {cidr: 192.0.2.2/32}}, {ipBlock: {cidr: 192.0.2.3/32}}]\n  \
           ports: [{port: 80}]\n\
         - from: [{ipBlock: {cidr: 192.0.2.3/32}}]\n  ports: [{port: 443}]",
    );
    let mut ids = CidrIdentities::new();
    let plan = compile(&policies(&yaml), &cluster(), &mut ids);
    let entry_of = |text: &str| *plan.cidrs.iter().find(|c| c.prefix.to_string() == text).unwrap();
    let (one, two, three) = (entry_of("192.0.2.1/32"), entry_of("192.0.2.2/32"), entry_of("192.0.2.3/32"));
    assert_eq!(one.policy_identity(), two.policy_identity(), "no rule tells .1 and .2 apart");
    assert_ne!(one.policy_identity(), one.identity, "the shared identity is a new one");
    assert_ne!(one.identity, two.identity, "each prefix keeps its own identity for records");
    assert_eq!(three.policy_identity(), three.identity, ".3 is the only prefix the second rule selects");
    let db = addr(&plan, 3);
    let tcp = Protocol::Tcp;
    for (ip, port, allowed) in [
        ("192.0.2.1", 80, true),
        ("192.0.2.2", 80, true),
        ("192.0.2.3", 80, true),
        ("192.0.2.1", 443, false),
        ("192.0.2.2", 443, false),
        ("192.0.2.3", 443, true),
        ("192.0.2.4", 80, false),
    ] {
        assert_eq!(plan.evaluate(outside(ip), db, tcp, port).allowed, allowed, "{ip}:{port}");
    }
    // Two entries on port 80 (the shared identity and .3), one on 443.
    assert_eq!(plan.endpoints[&3].ingress.entries.len(), 3);
    // The shared identity is stable across compilations.
    let again = compile(&policies(&yaml), &cluster(), &mut ids);
    assert_eq!(again.cidrs, plan.cidrs);
}

#[test]
fn cidr_identity_of_uses_longest_prefix() {
    let plan = compile_yaml(&np(
        "default",
        "cidr",
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]",
    ));
    let id = |text: &str| plan.cidrs.iter().find(|c| c.prefix.to_string() == text).unwrap().identity;
    assert_eq!(plan.cidr_identity_of(Ipv4Addr::new(10, 1, 2, 3).into()), id("10.1.0.0/16"));
    assert_eq!(plan.cidr_identity_of(Ipv4Addr::new(10, 2, 2, 3).into()), id("10.0.0.0/8"));
    assert_eq!(plan.cidr_identity_of(Ipv4Addr::new(8, 8, 8, 8).into()), id("0.0.0.0/0"));
}

#[test]
fn ip_block_allows_prefixes_inside_cidr_and_outside_excepts() {
    // Another policy adds 10.1.2.0/24 (inside the except) and 10.2.0.0/16 (outside it).
    let yaml = np(
        "default",
        "block",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]",
    ) + &np(
        "other",
        "more-prefixes",
        "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.1.2.0/24}}, {ipBlock: {cidr: 10.2.0.0/16}}]",
    );
    let plan = compile_yaml(&yaml);
    let id = |text: &str| plan.cidrs.iter().find(|c| c.prefix.to_string() == text).unwrap().identity;
    let allowed: Vec<PeerMatch> = plan.endpoints[&3].ingress.entries.iter().map(|e| e.peer).collect();
    assert_eq!(allowed, vec![PeerMatch::Identity(id("10.0.0.0/8")), PeerMatch::Identity(id("10.2.0.0/16"))]);
    let db = addr(&plan, 3);
    for (ip, expected) in
        [("10.0.0.1", true), ("10.2.3.4", true), ("10.1.0.1", false), ("10.1.2.3", false), ("11.0.0.1", false)]
    {
        assert_eq!(plan.evaluate(outside(ip), db, Protocol::Tcp, 80).allowed, expected, "{ip}");
    }
}

#[test]
fn ip_block_world_with_except() {
    let plan = compile_yaml(&np(
        "default",
        "world",
        "podSelector: {matchLabels: {app: db}}\npolicyTypes: [Egress]\negress:\n- to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]",
    ));
    let db = addr(&plan, 3);
    assert!(plan.evaluate(db, outside("8.8.8.8"), Protocol::Udp, 53).allowed);
    assert!(!plan.evaluate(db, outside("169.254.169.254"), Protocol::Tcp, 80).allowed);
    // Pod IPs fall in 0.0.0.0/0 too (their CIDR identity is tried as well).
    assert!(plan.evaluate(db, addr(&plan, 1), Protocol::Tcp, 80).allowed);
}

#[test]
fn ip_block_with_host_bits_is_masked() {
    let plan = compile_yaml(&np(
        "default",
        "sloppy",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{ipBlock: {cidr: 10.200.0.1/4, except: [10.200.0.1/32]}}]",
    ));
    let db = addr(&plan, 3);
    assert!(plan.evaluate(addr(&plan, 2), db, Protocol::Tcp, 80).allowed);
    assert!(!plan.evaluate(addr(&plan, 1), db, Protocol::Tcp, 80).allowed);
    assert!(plan.cidrs.iter().any(|c| c.prefix.to_string() == "0.0.0.0/4"));
}

#[test]
fn ipv6_ip_block_selects_ipv6_addresses_only() {
    let plan = compile_yaml(&np(
        "default",
        "v6",
        "podSelector: {matchLabels: {app: db}}\ningress:\n- from: [{ipBlock: {cidr: 'fd00::/8', except: ['fd00:1::/32']}}]",
    ));
    assert!(plan.endpoints[&3].ingress.enforced);
    let db = addr(&plan, 3);
    let from = |ip: &str| plan.evaluate(Addr::Outside { ip: ip.parse().unwrap() }, db, Protocol::Tcp, 80).allowed;
    assert!(from("fd00:2::7"));
    assert!(!from("fd00:1::7"), "inside the except");
    assert!(!from("fe80::1"), "outside the block");
    assert!(!from("10.200.0.250"), "an IPv6 block never selects IPv4");
    let prefixes: Vec<String> = plan.cidrs.iter().map(|c| c.prefix.to_string()).collect();
    assert_eq!(prefixes, ["0.0.0.0/0", "::/0", "fd00::/8", "fd00:1::/32"]);
}

#[test]
fn ipv4_world_block_does_not_admit_ipv6_nor_the_ipv6_world_ipv4() {
    for (cidr, v4_allowed, v6_allowed) in [("0.0.0.0/0", true, false), ("'::/0'", false, true)] {
        let plan = compile_yaml(&np(
            "default",
            "world",
            &format!("podSelector: {{matchLabels: {{app: db}}}}\ningress:\n- from: [{{ipBlock: {{cidr: {cidr}}}}}]"),
        ));
        let db = addr(&plan, 3);
        let from = |ip: &str| plan.evaluate(Addr::Outside { ip: ip.parse().unwrap() }, db, Protocol::Tcp, 80).allowed;
        assert_eq!((from("192.0.2.1"), from("2001:db8::1")), (v4_allowed, v6_allowed), "{cidr}");
    }
}

#[test]
fn evaluate_reports_default_deny_with_the_isolating_policies() {
    let plan = compile_yaml(&np("default", "deny", "podSelector: {}\npolicyTypes: [Ingress]"));
    let verdict = plan.evaluate(addr(&plan, 5), addr(&plan, 3), Protocol::Tcp, 5432);
    assert!(!verdict.allowed);
    assert_eq!(verdict.egress, DirectionVerdict::NotEnforced);
    assert_eq!(verdict.ingress, DirectionVerdict::DefaultDeny { selected_by: vec![r("default", "deny")] });
}

#[test]
fn evaluate_from_outside_skips_egress() {
    let plan = compile_yaml(&np("default", "any", "podSelector: {}\ningress: [{}]"));
    let verdict = plan.evaluate(outside("192.0.2.9"), addr(&plan, 1), Protocol::Udp, 9);
    assert!(verdict.allowed);
    assert_eq!(verdict.egress, DirectionVerdict::NotEnforced);
}

#[test]
fn evaluate_needs_both_egress_and_ingress() {
    let yaml = np("other", "client-out", "podSelector: {}\npolicyTypes: [Egress]\negress: [{ports: [{port: 5432}]}]")
        + &np(
            "default",
            "db-in",
            "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]",
        );
    let plan = compile_yaml(&yaml);
    let (client, api, db) = (addr(&plan, 5), addr(&plan, 2), addr(&plan, 3));
    let verdict = plan.evaluate(client, db, Protocol::Tcp, 5432);
    assert!(verdict.egress.allows());
    assert!(!verdict.ingress.allows());
    assert!(!verdict.allowed);
    assert!(plan.evaluate(api, db, Protocol::Tcp, 5432).allowed);
    assert!(!plan.evaluate(client, api, Protocol::Tcp, 80).allowed);
}

#[test]
fn match_kind_precedence_l3l4_over_l4_over_l3_over_all() {
    let api = "{podSelector: {matchLabels: {app: api}}}";
    let l3l4 = np(
        "default",
        "l3l4",
        &format!("podSelector: {{matchLabels: {{app: db}}}}\ningress: [{{from: [{api}], ports: [{{port: 80}}]}}]"),
    );
    let l4 = np("default", "l4", "podSelector: {matchLabels: {app: db}}\ningress: [{ports: [{port: 80}]}]");
    let l3 = np("default", "l3", &format!("podSelector: {{matchLabels: {{app: db}}}}\ningress: [{{from: [{api}]}}]"));
    let all = np("default", "all", "podSelector: {matchLabels: {app: db}}\ningress: [{}]");
    let kind = |yaml: String| {
        let plan = compile_yaml(&yaml);
        plan.evaluate(addr(&plan, 2), addr(&plan, 3), Protocol::Tcp, 80).ingress
    };
    let allowed = |kind: MatchKind, name: &str| DirectionVerdict::Allowed {
        match_kind: kind,
        allowed_by: vec![r("default", name)],
    };
    assert_eq!(kind(l3l4.clone() + &l4 + &l3 + &all), allowed(MatchKind::L3L4, "l3l4"));
    assert_eq!(kind(l4.clone() + &l3 + &all), allowed(MatchKind::L4Only, "l4"));
    assert_eq!(kind(l3.clone() + &all), allowed(MatchKind::L3Only, "l3"));
    assert_eq!(kind(all), allowed(MatchKind::All, "all"));
}

#[test]
fn allowed_by_unites_policies_of_the_winning_kind() {
    let yaml =
        np("default", "range", "podSelector: {matchLabels: {app: db}}\ningress: [{ports: [{port: 1, endPort: 100}]}]")
            + &np("default", "exact", "podSelector: {matchLabels: {app: db}}\ningress: [{ports: [{port: 80}]}]");
    let plan = compile_yaml(&yaml);
    assert_eq!(
        plan.evaluate(addr(&plan, 1), addr(&plan, 3), Protocol::Tcp, 80).ingress,
        DirectionVerdict::Allowed {
            match_kind: MatchKind::L4Only,
            allowed_by: vec![r("default", "exact"), r("default", "range")]
        }
    );
}

#[test]
fn self_traffic_is_judged_by_policy() {
    let plan = compile_yaml(&np("default", "deny", "podSelector: {}"));
    assert!(!plan.evaluate(addr(&plan, 3), addr(&plan, 3), Protocol::Tcp, 80).allowed);
}

#[test]
fn entry_match_kind_classification() {
    let e = |peer, protocol| entry(peer, protocol, None, &[]).match_kind();
    assert_eq!(e(PeerMatch::Identity(1), Some(Protocol::Tcp)), MatchKind::L3L4);
    assert_eq!(e(PeerMatch::Any, Some(Protocol::Tcp)), MatchKind::L4Only);
    assert_eq!(e(PeerMatch::Identity(1), None), MatchKind::L3Only);
    assert_eq!(e(PeerMatch::Any, None), MatchKind::All);
}

#[test]
fn plan_serializes_to_json() {
    let plan = compile_yaml(&np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]",
    ));
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["cidrs"][0]["prefix"], "0.0.0.0/0");
    assert_eq!(json["cidrs"][0]["identity"], 1 << 24);
    let ingress = &json["endpoints"]["3"]["ingress"];
    assert_eq!(ingress["enforced"], true);
    assert_eq!(ingress["selected_by"][0]["name"], "p");
    assert_eq!(ingress["entries"][0]["peer"]["identity"], 200);
    assert_eq!(ingress["entries"][0]["protocol"], "TCP");
    assert_eq!(ingress["entries"][0]["ports"], serde_json::json!([5432, 5432]));
    let verdict = plan.evaluate(addr(&plan, 2), addr(&plan, 3), Protocol::Tcp, 5432);
    let json = serde_json::to_value(&verdict).unwrap();
    assert_eq!(json["ingress"]["verdict"], "allowed");
    assert_eq!(json["ingress"]["match_kind"], "L3-L4");
    let back: PolicyPlan = serde_json::from_value(serde_json::to_value(&plan).unwrap()).unwrap();
    assert_eq!(back, plan);
}

#[test]
fn protocol_names_and_numbers() {
    assert_eq!(Protocol::from_api("TCP"), Some(Protocol::Tcp));
    assert_eq!(Protocol::from_api("tcp"), None);
    assert_eq!(Protocol::Udp.ip_protocol(), 17);
    assert_eq!(Protocol::Sctp.to_string(), "SCTP");
    assert_eq!(r("ns", "name").to_string(), "ns/name");
}

/// The gap a randomized comparison with the API's rules found: an egress `ipBlock` peer on a named port.
/// Kubernetes resolves the name on the destination pod: a pod inside the block that declares it is reached
/// on that port; a pod inside the block that does not, a pod outside it, and an outside address are not.
#[test]
fn an_egress_ip_block_on_a_named_port_reaches_the_pods_in_the_block_that_declare_it() {
    // client egress to web's and db's /32s and to 192.0.2.0/24 on "http" (web: 8080; db: none).
    let plan = compile_yaml(&np(
        "other",
        "to-web-by-address",
        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{ipBlock: {cidr: 10.200.0.1/32}}, {ipBlock: {cidr: 10.200.0.3/32}}, {ipBlock: {cidr: 192.0.2.0/24}}]\n  ports: [{port: http}]",
    ));
    let client = addr(&plan, 5);
    let allowed = |to: Addr, port| plan.evaluate(client, to, Protocol::Tcp, port).egress.allows();
    assert!(allowed(addr(&plan, 1), 8080), "web is in the block and declares http=8080");
    assert!(!allowed(addr(&plan, 1), 9090), "web's http is 8080, not 9090");
    assert!(!allowed(addr(&plan, 3), 8080), "db is in the block but declares no http");
    assert!(!allowed(addr(&plan, 4), 8080), "web2 declares http=8080 but is outside the block");
    assert!(!allowed(outside("192.0.2.9"), 8080), "an address outside the cluster has no named ports");
    // web's address has a host prefix of its own, whose identity nothing else shares.
    let host = plan.cidrs.iter().find(|c| c.prefix.to_string() == "10.200.0.1/32").expect("web's host prefix");
    assert!(plan.cidrs.iter().filter(|c| c.policy_identity() == host.policy_identity()).count() == 1);
}

#[test]
fn pods_of_other_nodes_are_peers_never_subjects() {
    let mut cluster = cluster();
    let mut remote = pod(NOT_AN_ENDPOINT, "default", "remote-db", &[("app", "db")], 700);
    remote.ip = Ipv4Addr::new(10, 201, 0, 7);
    remote.ports = vec![port("pg", 5432, Protocol::Tcp)];
    cluster.pods.push(remote);
    let yaml = np(
        "default",
        "p",
        "podSelector: {matchLabels: {app: db}}\ningress:\n  - from:\n      - podSelector: {}",
    ) + &np(
        "default",
        "out",
        "podSelector: {matchLabels: {app: web}}\npolicyTypes: [Egress]\negress:\n  - to:\n      - podSelector: {matchLabels: {app: db}}\n    ports:\n      - port: pg",
    );
    check_incremental(&policies(&yaml), &cluster);
    let plan = compile(&policies(&yaml), &cluster, &mut CidrIdentities::new());
    assert!(!plan.endpoints.contains_key(&NOT_AN_ENDPOINT), "the remote pod is not an endpoint here");
    assert!(plan.endpoints[&3].ingress.entries.contains(&entry(
        PeerMatch::Identity(700),
        None,
        None,
        &[r("default", "p")]
    )));
    // Its named port resolves for the egress of this node's endpoints.
    assert!(plan.endpoints[&1].egress.entries.contains(&entry(
        PeerMatch::Identity(700),
        Some(Protocol::Tcp),
        Some((5432, 5432)),
        &[r("default", "out")]
    )));
}

/// A change costs what it changes: one new policy among many compiles that policy alone; a pod's new label
/// compiles the policies that select it, as a subject or a peer, and no other.
#[test]
fn the_compiler_compiles_again_only_what_a_change_concerns() {
    let mut yaml = String::new();
    for i in 0..50 {
        yaml += &np(
            "default",
            &format!("db-{i}"),
            &format!(
                "podSelector: {{matchLabels: {{app: db}}}}\ningress:\n- from: [{{podSelector: {{matchLabels: {{app: api}}}}}}]\n  ports: [{{port: {}}}]",
                1000 + i
            ),
        );
    }
    yaml += &np(
        "other",
        "from-blue",
        "podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchLabels: {team: blue}}}]",
    );
    let set: Vec<Arc<LoadedPolicy>> = policies(&yaml).into_iter().map(Arc::new).collect();
    let mut ids = CidrIdentities::new();
    let mut compiler = PolicyCompiler::default();
    let mut view = cluster();
    compiler.compile(&set, &view, &mut ids);
    assert_eq!(compiler.last_compiled(), set.len());
    compiler.compile(&set, &view, &mut ids);
    assert_eq!(compiler.last_compiled(), 0, "nothing changed");
    let equal: Vec<Arc<LoadedPolicy>> = set.iter().map(|p| Arc::new((**p).clone())).collect();
    compiler.compile(&equal, &view, &mut ids);
    assert_eq!(compiler.last_compiled(), 0, "equal policies are the same policies");

    let mut more = set.clone();
    more.extend(
        policies(&np("default", "web", "podSelector: {matchLabels: {app: web}}\ningress: [{}]"))
            .into_iter()
            .map(Arc::new),
    );
    let plan = compiler.compile(&more, &view, &mut ids);
    assert_eq!(compiler.last_compiled(), 1, "one new policy");
    assert_eq!(plan, compile(&more, &view, &mut ids));

    // web2 is selected by `web` only; api is every db-* policy's peer; client's namespace is team=blue.
    view.pods[3].labels.insert("release".into(), "canary".into());
    compiler.compile(&more, &view, &mut ids);
    assert_eq!(compiler.last_compiled(), 1, "web2's label concerns the policy selecting web pods");
    view.pods[1].labels.insert("release".into(), "canary".into());
    compiler.compile(&more, &view, &mut ids);
    assert_eq!(compiler.last_compiled(), 50, "api's label concerns the policies admitting api");
    view.namespaces[1].labels.insert("team".into(), "red".into());
    let plan = compiler.compile(&more, &view, &mut ids);
    assert_eq!(compiler.last_compiled(), 1, "the namespace's label concerns the policy selecting team=blue");
    assert_eq!(plan, compile(&more, &view, &mut ids));
}
