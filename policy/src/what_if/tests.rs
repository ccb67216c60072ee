use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use super::*;
use crate::{
    CidrIdentities, ClusterView, PodInfo, compile,
    realize::{Audit, realize},
    source::parse_str,
};

fn pod(id: u16, name: &str, app: &str) -> PodInfo {
    PodInfo {
        endpoint_id: id,
        namespace: "default".into(),
        name: name.into(),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        ip: Ipv4Addr::new(10, 200, 0, u8::try_from(id).unwrap()),
        ipv6: None,
        identity: 255 + u32::from(id),
        ports: vec![ContainerPort { name: Some("pg".into()), port: 5432, protocol: Protocol::Tcp }],
    }
}

fn node(yaml: &str, cluster: &ClusterView) -> Node {
    let (policies, errors) = parse_str(Path::new("what-if.yaml"), yaml);
    assert!(errors.is_empty());
    let plan = compile(&policies, cluster, &mut CidrIdentities::new());
    let pods: Vec<(IpAddr, u32)> = cluster.pods.iter().map(|p| (IpAddr::V4(p.ip), p.identity)).collect();
    let mut rules = RuleTable::default();
    let maps = realize(&plan, &pods, &Audit::default(), &mut rules);
    Node::of_plan(&plan, maps, &rules)
}

fn host(p: &PodInfo) -> Host {
    Host {
        name: format!("{}/{}", p.namespace, p.name),
        endpoint_id: p.endpoint_id,
        ip: p.ip.into(),
        ports: p.ports.clone(),
    }
}

const DENY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec: {podSelector: {matchLabels: {app: db}}}
";

const ALLOW: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-db, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: pg}]}]
";

#[test]
fn names_the_deciding_policy_or_the_isolating_ones_and_lists_only_what_flips() {
    let cluster = ClusterView {
        namespaces: Vec::new(),
        pods: vec![pod(1, "web", "web"), pod(2, "db", "db"), pod(3, "cli", "cli")],
    };
    let hosts: Vec<Host> = cluster.pods.iter().map(host).collect();
    let before = node(DENY, &cluster);
    let after = node(&format!("{DENY}{ALLOW}"), &cluster);

    let denied = before.predict(&hosts[0], &hosts[1], Protocol::Tcp, hosts[1].named_port("pg", Protocol::Tcp));
    assert!(!denied.connected);
    assert_eq!(denied.egress, DirectionAnswer::NotEnforced);
    assert_eq!(denied.ingress, DirectionAnswer::DefaultDeny { isolated_by: vec![PolicyRef::new("default", "deny")] });
    assert_eq!(denied.ingress_remote.map(|r| r.identity), Some(256));

    let allowed = after.predict(&hosts[0], &hosts[1], Protocol::Tcp, Some(5432));
    assert!(allowed.connected);
    let DirectionAnswer::Allowed { match_type, policies, .. } = &allowed.ingress else { panic!("{allowed:?}") };
    assert_eq!((*match_type, policies.as_slice()), (MatchKind::L3L4, &[PolicyRef::new("default", "web-to-db")][..]));
    assert_eq!(allowed.ingress.to_string(), "allowed by default/web-to-db (match L3-L4)");

    // A pod to itself never crosses the datapath; a named port the destination lacks connects nothing.
    assert!(before.predict(&hosts[1], &hosts[1], Protocol::Tcp, Some(5432)).connected);
    let unnamed = after.predict(&hosts[0], &hosts[1], Protocol::Udp, hosts[1].named_port("pg", Protocol::Udp));
    assert_eq!((unnamed.connected, unnamed.shortcut), (false, Some(Shortcut::NoSuchNamedPort)));

    let all = |node: &Node| -> Vec<Prediction> {
        hosts.iter().flat_map(|f| hosts.iter().map(move |t| node.predict(f, t, Protocol::Tcp, Some(5432)))).collect()
    };
    let flipped = flips(&all(&before), &all(&after));
    assert_eq!(flipped.len(), 1, "only web -> db flips: {flipped:#?}");
    assert_eq!((flipped[0].after.from.name.as_str(), flipped[0].after.to.name.as_str()), ("default/web", "default/db"));
}

#[test]
fn a_policy_is_named_as_namespace_slash_name() {
    assert_eq!("default/deny".parse::<PolicyRef>(), Ok(PolicyRef::new("default", "deny")));
    for bad in ["deny", "/deny", "default/", "a/b/c"] {
        assert!(bad.parse::<PolicyRef>().is_err(), "{bad}");
    }
}
