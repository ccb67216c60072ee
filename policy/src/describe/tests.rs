use std::{net::Ipv4Addr, path::Path};

use super::*;
use crate::{ContainerPort, NamespaceInfo, source::parse_str};

fn load(text: &str) -> LoadedPolicy {
    let (mut policies, errors) = parse_str(Path::new("test.yaml"), text);
    assert!(errors.is_empty(), "{:?}", errors.iter().map(ToString::to_string).collect::<Vec<_>>());
    policies.remove(0)
}

fn example(name: &str) -> LoadedPolicy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies").join(name);
    let (mut policies, errors) = parse_str(Path::new(name), &std::fs::read_to_string(&path).unwrap());
    assert!(errors.is_empty());
    policies.remove(0)
}

#[test]
fn the_walkthrough_database_policy_reads_as_kubectl_prints_it() {
    assert_eq!(
        describe(&example("network-policy-walkthrough-db.yaml"), None).text(),
        "\
Name:         network-policy-walkthrough-db
Namespace:    default
Created on:   <not created: from network-policy-walkthrough-db.yaml:1>
Labels:       <none>
Annotations:  <none>
Spec:
  PodSelector:     component=database
  Allowing ingress traffic:
    To Port: 5432/TCP
    From:
      IPBlock:
        CIDR: 10.200.0.250/32
        Except: 
    From:
      NamespaceSelector: team=dba
    From:
      PodSelector: component=backend
  Not affecting egress traffic
  Policy Types: Ingress
Warnings:
  - ingress rule 1: `from` peers 2 and 3 are a namespaceSelector and a podSelector as two peers, which allow \
either (OR); if pods matching both were meant, write them as one peer
"
    );
}

#[test]
fn default_deny_and_a_peer_with_both_selectors() {
    assert_eq!(
        describe(&example("default-deny-ingress-policy.yaml"), None).text(),
        "\
Name:         default-deny-ingress-policy
Namespace:    default
Created on:   <not created: from default-deny-ingress-policy.yaml:1>
Labels:       <none>
Annotations:  <none>
Spec:
  PodSelector:     <none> (Allowing the specific traffic to all pods in this namespace)
  Allowing ingress traffic:
    <none> (Selected pods are isolated for ingress connectivity)
  Not affecting egress traffic
  Policy Types: Ingress
Warnings:
  - podSelector is empty: this policy selects every pod in namespace default
"
    );
    let debug = describe(&example("allow-debug.yaml"), None);
    assert!(
        debug.text().contains(
            "    To Port: <any> (traffic allowed to all ports)\n    From:\n      NamespaceSelector: space=monitoring\n      \
             PodSelector: component=debug\n"
        ),
        "{}",
        debug.text()
    );
    assert!(debug.warnings.is_empty(), "one peer with both selectors is not a mistake: {:?}", debug.warnings);
}

#[test]
fn selectors_ranges_egress_and_types_as_kubectl_formats_them() {
    let d = describe(
        &load(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x, labels: {team: a}}\n\
             spec:\n  podSelector: {matchLabels: {b: '2', a: '1'}, matchExpressions: [{key: tier, operator: In, values: \
             [web, api]}, {key: legacy, operator: DoesNotExist}]}\n  egress:\n  - ports: [{port: 8000, endPort: 9000}, \
             {port: dns, protocol: UDP}]\n  - {}\n",
        ),
        None,
    );
    assert_eq!(d.pod_selector, "a=1,b=2,!legacy,tier in (api,web)");
    assert_eq!(d.policy_types, ["Ingress", "Egress"]);
    let text = d.text();
    assert!(text.contains("Labels:       team=a\n"), "{text}");
    assert!(
        text.contains(
            "  Allowing ingress traffic:\n    <none> (Selected pods are isolated for ingress connectivity)\n  Allowing \
             egress traffic:\n    To Port Range: 8000-9000/TCP\n    To Port: dns/UDP\n    To: <any> (traffic not \
             restricted by destination)\n    ----------\n    To Port: <any> (traffic allowed to all ports)\n    To: <any> \
             (traffic not restricted by destination)\n  Policy Types: Ingress, Egress\n"
        ),
        "{text}"
    );
}

fn cluster() -> ClusterView {
    let pod = |namespace: &str, name: &str, ip: u8, labels: &[(&str, &str)], ports: Vec<ContainerPort>| PodInfo {
        endpoint_id: u16::from(ip),
        namespace: namespace.into(),
        name: name.into(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ip: Ipv4Addr::new(10, 200, 0, ip),
        ipv6: None,
        identity: 256 + u32::from(ip),
        ports,
    };
    let http = |port| vec![ContainerPort { name: Some("http".into()), port, protocol: Protocol::Tcp }];
    ClusterView {
        namespaces: vec![NamespaceInfo { name: "default".into(), labels: BTreeMap::new() }],
        pods: vec![
            pod("default", "database", 10, &[("component", "database")], Vec::new()),
            pod("default", "backend", 11, &[("component", "backend")], http(8080)),
            pod("default", "frontend", 12, &[("component", "frontend")], Vec::new()),
        ],
    }
}

#[test]
fn with_a_cluster_it_says_what_it_selects_and_what_looks_wrong() {
    let c = cluster();
    let db = describe(&example("network-policy-walkthrough-db.yaml"), Some(&c));
    assert_eq!(db.selects.as_deref(), Some(&["default/database".to_owned()][..]));
    assert!(db.text().contains("Selects:      default/database\n"));

    let nothing = describe(
        &load(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  \
             podSelector: {matchLabels: {component: cache}}\n  ingress:\n  - ports: [{port: http}]\n",
        ),
        Some(&c),
    );
    assert_eq!(nothing.selects.as_deref(), Some(&[][..]));
    assert!(nothing.warnings.iter().any(|w| w.starts_with("selects no pod")), "{:?}", nothing.warnings);
    assert!(
        nothing.warnings.iter().any(|w| w.contains("named port http/TCP is declared by no selected pod")),
        "{:?}",
        nothing.warnings
    );

    let blocks = describe(
        &load(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  \
             podSelector: {matchLabels: {component: frontend}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: \
             {cidr: 10.200.0.0/24, except: [10.200.0.11/32]}}, {ipBlock: {cidr: 192.0.2.0/24}}]\n    ports: [{port: \
             http}]\n",
        ),
        Some(&c),
    );
    let w = &blocks.warnings;
    assert!(
        w.iter()
            .any(|w| w
                .contains("ipBlock 10.200.0.0/24 covers the addresses of pods (default/database, default/frontend)")),
        "{w:?}"
    );
    // The only pod declaring http (backend) is in the except: the name matches nothing through either block.
    assert!(w.iter().any(|w| w.contains("never matches through ipBlock 10.200.0.0/24")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("never matches through ipBlock 192.0.2.0/24")), "{w:?}");
}

#[test]
fn a_named_port_with_a_hyphen_is_a_port_not_a_range() {
    let d = describe(
        &load(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  \
             podSelector: {}\n  ingress:\n  - ports: [{port: serve-80-udp, protocol: UDP}, {port: 80-http}, {port: \
             8000, endPort: 9000}]\n",
        ),
        None,
    );
    let text = d.text();
    assert!(
        text.contains("    To Port: serve-80-udp/UDP\n    To Port: 80-http/TCP\n    To Port Range: 8000-9000/TCP\n"),
        "{text}"
    );
}
