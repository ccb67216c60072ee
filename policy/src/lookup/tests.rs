use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use flowgate_common::{
    ip::protocol::{TCP, UDP},
    policy::{IpcacheValue, POLICY_PREFIX_PEER, POLICY_PREFIX_PROTOCOL, verdict},
};

use super::*;
use crate::{
    Addr, CidrIdentities, ClusterView, ContainerPort, DirectionVerdict, NamespaceInfo, PodInfo, Protocol, compile,
    realize::{Audit, RuleTable, realize},
    source::parse_str,
};

fn value(rule_id: u32, prefix: u32) -> PolicyValue {
    let flags = if prefix > POLICY_PREFIX_PEER { POLICY_FLAG_L4 } else { 0 };
    PolicyValue { rule_id, flags, packets: 0, bytes: 0 }
}

/// Endpoint 1, ingress enforced: identity 300 on every port (rule 1) and on TCP/80 (rule 2); anyone on
/// UDP/53 (rule 3); CIDR identity 900 on TCP 8000-8001 (rule 4).
fn contents() -> MapContents {
    let key = |identity, protocol, port| PolicyKey::new(1, direction::INGRESS, identity, protocol, port);
    MapContents {
        policy: vec![
            (POLICY_PREFIX_PEER, key(300, 0, 0), value(1, POLICY_PREFIX_PEER)),
            (POLICY_PREFIX_FULL, key(300, TCP, 80), value(2, POLICY_PREFIX_FULL)),
            (POLICY_PREFIX_FULL, key(identity::ANY, UDP, 53), value(3, POLICY_PREFIX_FULL)),
            (POLICY_PREFIX_PROTOCOL + 15, key(900, TCP, 8000), value(4, POLICY_PREFIX_PROTOCOL + 15)),
        ],
        ipcache: vec![
            (IpPrefix::ANY_V4, IpcacheValue { identity: identity::WORLD, cidr_identity: 800 }),
            (crate::cidr::parse_cidr("192.0.2.0/24").unwrap(), IpcacheValue { identity: 901, cidr_identity: 900 }),
            (IpPrefix::host(ip("10.0.0.3")), IpcacheValue { identity: 300, cidr_identity: 800 }),
        ],
        enforcement: vec![(1, enforcement::INGRESS), (2, enforcement::EGRESS | enforcement::EGRESS_AUDIT)],
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn the_longest_entry_of_each_identity_then_the_kernels_precedence() {
    let contents = contents();
    let maps = PolicyMaps::new(&contents);
    let at = |remote: &str, protocol, port| maps.new_connection(1, direction::INGRESS, ip(remote), protocol, port).0;
    // The /88 entry of identity 300 wins over its L3 entry on TCP/80, the L3 entry elsewhere.
    assert_eq!(at("10.0.0.3", TCP, 80), Outcome::Allowed(Allowed { rule_id: 2, match_type: match_type::L3_L4 }));
    assert_eq!(at("10.0.0.3", TCP, 81), Outcome::Allowed(Allowed { rule_id: 1, match_type: match_type::L3_ONLY }));
    // An identity's L3-only entry loses to anyone's L4 entry (L4-only comes before L3-only).
    assert_eq!(at("10.0.0.3", UDP, 53), Outcome::Allowed(Allowed { rule_id: 3, match_type: match_type::L4_ONLY }));
    // The CIDR identity of the longest ipcache prefix, on a port block of the range.
    assert_eq!(at("192.0.2.7", TCP, 8001), Outcome::Allowed(Allowed { rule_id: 4, match_type: match_type::L3_L4 }));
    assert_eq!(at("192.0.2.7", TCP, 8002), Outcome::Denied);
    assert_eq!(at("198.51.100.1", TCP, 8001), Outcome::Denied);
    assert_eq!(maps.remote(ip("198.51.100.1")), Remote { identity: identity::WORLD, cidr_identity: 800 });
    // `::/0` holds IPv4-mapped addresses too, but `0.0.0.0/0` is the longer prefix of them.
    let mut with_v6 = contents.clone();
    with_v6.ipcache.push((IpPrefix::ANY_V6, IpcacheValue { identity: identity::WORLD, cidr_identity: 700 }));
    let v6_maps = PolicyMaps::new(&with_v6);
    assert_eq!(v6_maps.remote(ip("198.51.100.1")).cidr_identity, 800);
    assert_eq!(v6_maps.remote(ip("2001:db8::1")).cidr_identity, 700);
    let (bytes, len) = crate::cidr::parse_cidr("192.0.2.0/24").unwrap().key();
    assert_eq!(IpPrefix::from_key(bytes, len), crate::cidr::parse_cidr("192.0.2.0/24").unwrap());
    // Not enforced in a direction: passes without a record; audited: passes with an audit record.
    assert_eq!(maps.new_connection(1, direction::EGRESS, ip("10.0.0.3"), TCP, 1).0, Outcome::NotEnforced);
    let audited = maps.new_connection(2, direction::EGRESS, ip("10.0.0.3"), TCP, 1).0;
    assert_eq!(audited, Outcome::Audit);
    assert_eq!(audited.verdict_record(), Some((verdict::AUDIT, match_type::NONE, 0)));
    assert!(audited.passes() && !Outcome::Denied.passes());
    assert_eq!(maps.new_connection(3, direction::INGRESS, ip("10.0.0.3"), TCP, 1).0, Outcome::NotEnforced);
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn pod(id: u16, namespace: &str, name: &str, app: &str, identity: u32) -> PodInfo {
    PodInfo {
        endpoint_id: id,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: labels(&[("app", app)]),
        ip: Ipv4Addr::new(10, 200, 0, u8::try_from(id).unwrap()),
        ipv6: Some(format!("fd00::{id}").parse().unwrap()),
        identity,
        ports: vec![ContainerPort { name: Some("http".into()), port: 8080, protocol: Protocol::Tcp }],
    }
}

const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}, {port: http}]
  - from: [{ipBlock: {cidr: 10.200.0.0/24, except: [10.200.0.4/32]}}]
    ports: [{port: 8000, endPort: 8100, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: blue}}}]
  - ports: [{port: 53, protocol: UDP}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: '::/0'}}]
    ports: [{port: 443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: other}
spec:
  podSelector: {}
  ingress: [{}]
";

/// The lookup on the realized maps and the plan's oracle agree on every pair, port and protocol of a
/// cluster with L3, L4, named-port, port-range, ipBlock and allow-all rules, over IPv4 and IPv6.
#[test]
fn agrees_with_the_plan_oracle_on_every_pair() {
    let cluster = ClusterView {
        namespaces: vec![NamespaceInfo { name: "other".into(), labels: labels(&[("team", "blue")]) }],
        pods: vec![
            pod(1, "default", "web", "web", 256),
            pod(2, "default", "db", "db", 257),
            pod(3, "other", "client", "client", 258),
            pod(4, "default", "web2", "web", 256),
        ],
    };
    let (policies, errors) = parse_str(Path::new("lookup.yaml"), POLICIES);
    assert!(errors.is_empty());
    let plan = compile(&policies, &cluster, &mut CidrIdentities::new());
    let pods: Vec<(IpAddr, u32)> = cluster
        .pods
        .iter()
        .flat_map(|p| [(IpAddr::V4(p.ip), p.identity), (IpAddr::V6(p.ipv6.unwrap()), p.identity)])
        .collect();
    let mut rules = RuleTable::default();
    let contents = realize(&plan, &pods, &Audit::default(), &mut rules);
    let maps = PolicyMaps::new(&contents);
    let outside = ["192.0.2.1", "2001:db8::1"];
    let mut compared = 0;
    for from in &cluster.pods {
        for to in &cluster.pods {
            for v6 in [false, true] {
                let addr = |p: &PodInfo| if v6 { IpAddr::V6(p.ipv6.unwrap()) } else { IpAddr::V4(p.ip) };
                for (protocol, port) in [(Protocol::Tcp, 5432), (Protocol::Tcp, 8080), (Protocol::Tcp, 443)]
                    .into_iter()
                    .chain([(Protocol::Udp, 53), (Protocol::Udp, 8050), (Protocol::Udp, 9000)])
                {
                    let oracle = plan.evaluate(
                        Addr::endpoint_at(from, addr(from)),
                        Addr::endpoint_at(to, addr(to)),
                        protocol,
                        port,
                    );
                    let (egress, _) = maps.new_connection(
                        from.endpoint_id,
                        direction::EGRESS,
                        addr(to),
                        protocol.ip_protocol(),
                        port,
                    );
                    let (ingress, _) = maps.new_connection(
                        to.endpoint_id,
                        direction::INGRESS,
                        addr(from),
                        protocol.ip_protocol(),
                        port,
                    );
                    let what = format!("{} -> {} {port}/{protocol} v6={v6}", from.name, to.name);
                    assert_eq!(same(&egress, &oracle.egress), Ok(()), "egress {what}");
                    assert_eq!(same(&ingress, &oracle.ingress), Ok(()), "ingress {what}");
                    compared += 1;
                }
            }
        }
        for ip in outside {
            let (egress, _) = maps.new_connection(from.endpoint_id, direction::EGRESS, ip.parse().unwrap(), TCP, 443);
            let oracle =
                plan.evaluate(Addr::endpoint(from), Addr::Outside { ip: ip.parse().unwrap() }, Protocol::Tcp, 443);
            assert_eq!(same(&egress, &oracle.egress), Ok(()), "{} -> {ip}", from.name);
        }
    }
    assert_eq!(compared, 4 * 4 * 2 * 6);
}

fn same(outcome: &Outcome, oracle: &DirectionVerdict) -> Result<(), String> {
    match (outcome, oracle) {
        (Outcome::NotEnforced, DirectionVerdict::NotEnforced)
        | (Outcome::Denied, DirectionVerdict::DefaultDeny { .. }) => Ok(()),
        (Outcome::Allowed(a), DirectionVerdict::Allowed { match_kind, .. }) if a.match_kind() == *match_kind => Ok(()),
        _ => Err(format!("lookup {outcome:?}, oracle {oracle:?}")),
    }
}
