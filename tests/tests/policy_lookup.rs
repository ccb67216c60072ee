//! `flowgate policy test`'s answer held to the kernel's: the same crafted packets are run through the
//! programs (BPF_PROG_TEST_RUN, the `test_run` fixture: the agent's own load, compile and map-writing path)
//! and given to `flowgate_policy::lookup`, on the maps read back from the kernel (the live answer) and on
//! the maps compiled offline from the same policy file and pods (the what-if answer): same verdict, match
//! type, rule and remote identity, for L3-L4, L4-only, L3-only, CIDR, except, named-port, port-range, SCTP
//! and IPv6 cases, each direction, and the packets that would get around each rule are denied by both (or,
//! in audit mode, audited by both).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowgate_agent::craft::{Transport, ipv4_packet, ipv6_packet};
use flowgate_common::{
    names::{PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT},
    policy::{PolicyValue, direction, match_type},
};
use flowgate_events::decode::Record;
use flowgate_policy::{
    CidrIdentities, ContainerPort, PolicyRef, Protocol,
    lookup::{Outcome, PolicyMaps},
    realize::{Audit, MapContents, RuleTable, realize},
    source::parse_str,
    what_if::Node,
};
use flowgate_tests::test_run::{
    CLIENT, CLIENT6, Fixture, SERVER, SERVER6, TC_ACT_SHOT, TC_ACT_UNSPEC, fixture, fixture_with, two_pods,
};

const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
  - ports: [{port: 53, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in-named, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: tcp-80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-out, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: sctp-80, protocol: SCTP}]
  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]
    ports: [{port: 443, endPort: 444}]
  - to: [{ipBlock: {cidr: 'fd00:db8::/64'}}]
";

/// The container ports `test_run::fixture` gives both pods.
fn fixture_ports() -> [ContainerPort; 2] {
    [
        ContainerPort { name: Some("sctp-80".into()), port: 80, protocol: Protocol::Sctp },
        ContainerPort { name: Some("tcp-80".into()), port: 80, protocol: Protocol::Tcp },
    ]
}

/// Map contents with counters zeroed and every list sorted, to compare two generations.
fn comparable(mut contents: MapContents) -> MapContents {
    for (_, _, value) in &mut contents.policy {
        *value = PolicyValue { packets: 0, bytes: 0, ..*value };
    }
    contents.policy.sort_by_key(|(prefix, key, _)| (*key, *prefix));
    contents.ipcache.sort_by_key(|(prefix, _)| prefix.key());
    contents.enforcement.sort_unstable();
    contents
}

/// A case's answer: what, (verdict, match type) of its verdict record, and the policies named.
type Answer<'a> = (&'a str, Option<(u8, u8)>, Vec<&'a str>);

/// One crafted packet: at the server's `direction`, with the remote side `remote`.
struct Case {
    what: &'static str,
    dir: u8,
    remote: IpAddr,
    transport: Transport,
    protocol: Protocol,
    port: u16,
}

fn tcp(sport: u16, dport: u16) -> Transport {
    Transport::Tcp { sport, dport, flags: 0x02 }
}

fn cases() -> Vec<Case> {
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
    let (client, client6) = (IpAddr::V4(CLIENT), IpAddr::V6(CLIENT6));
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    let (t, u, s) = (Protocol::Tcp, Protocol::Udp, Protocol::Sctp);
    let udp = |sport, dport| Transport::Udp { sport, dport };
    let sctp = |sport, dport| Transport::SctpInit { sport, dport };
    vec![
        Case {
            what: "client on TCP 80 (two policies)",
            dir: i,
            remote: client,
            transport: tcp(40001, 80),
            protocol: t,
            port: 80,
        },
        Case { what: "client on TCP 81", dir: i, remote: client, transport: tcp(40002, 81), protocol: t, port: 81 },
        Case { what: "client on SCTP 80", dir: i, remote: client, transport: sctp(40003, 80), protocol: s, port: 80 },
        Case {
            what: "client on UDP 53 (anyone)",
            dir: i,
            remote: client,
            transport: udp(40004, 53),
            protocol: u,
            port: 53,
        },
        Case {
            what: "world on UDP 53",
            dir: i,
            remote: v4(203, 0, 113, 1),
            transport: udp(40005, 53),
            protocol: u,
            port: 53,
        },
        Case {
            what: "world on UDP 54",
            dir: i,
            remote: v4(203, 0, 113, 1),
            transport: udp(40006, 54),
            protocol: u,
            port: 54,
        },
        Case {
            what: "ipBlock, any port",
            dir: i,
            remote: v4(192, 0, 2, 7),
            transport: tcp(40007, 9999),
            protocol: t,
            port: 9999,
        },
        Case {
            what: "ipBlock's except",
            dir: i,
            remote: v4(192, 0, 2, 200),
            transport: tcp(40008, 9999),
            protocol: t,
            port: 9999,
        },
        Case {
            what: "client over IPv6 on TCP 80",
            dir: i,
            remote: client6,
            transport: tcp(40009, 80),
            protocol: t,
            port: 80,
        },
        Case {
            what: "IPv6 world on UDP 53",
            dir: i,
            remote: v6("2001:db8::1"),
            transport: udp(40010, 53),
            protocol: u,
            port: 53,
        },
        Case {
            what: "IPv6 world on TCP 80",
            dir: i,
            remote: v6("2001:db8::1"),
            transport: tcp(40011, 80),
            protocol: t,
            port: 80,
        },
        Case {
            what: "to client on its SCTP port sctp-80",
            dir: e,
            remote: client,
            transport: sctp(40012, 80),
            protocol: s,
            port: 80,
        },
        Case { what: "to client on TCP 80", dir: e, remote: client, transport: tcp(40013, 80), protocol: t, port: 80 },
        Case {
            what: "to the block on TCP 444 (range)",
            dir: e,
            remote: v4(198, 51, 100, 9),
            transport: tcp(40014, 444),
            protocol: t,
            port: 444,
        },
        Case {
            what: "to the block on TCP 445",
            dir: e,
            remote: v4(198, 51, 100, 9),
            transport: tcp(40015, 445),
            protocol: t,
            port: 445,
        },
        Case {
            what: "to the block on UDP 443",
            dir: e,
            remote: v4(198, 51, 100, 9),
            transport: udp(40016, 443),
            protocol: u,
            port: 443,
        },
        Case {
            what: "to the IPv6 block, any port",
            dir: e,
            remote: v6("fd00:db8::5"),
            transport: udp(40017, 1),
            protocol: u,
            port: 1,
        },
        Case {
            what: "next to the IPv6 block",
            dir: e,
            remote: v6("fd00:db9::5"),
            transport: udp(40018, 1),
            protocol: u,
            port: 1,
        },
        Case {
            what: "to client over IPv6 on SCTP 80",
            dir: e,
            remote: client6,
            transport: sctp(40019, 80),
            protocol: s,
            port: 80,
        },
    ]
}

#[test]
fn crafted_packets_get_the_kernels_verdict_match_type_and_policy_from_the_lookup() {
    let mut f = fixture(POLICIES, "lookup");
    let kernel = comparable(f.datapath.policy_contents().expect("read the policy maps back"));

    // Offline, as `flowgate policy test --policies --topology` does: the same file and pods, compiled and
    // realized apart from the agent, give exactly the maps the kernel holds.
    let (_, cluster) = two_pods(&mut f.datapath, &fixture_ports());
    let (policies, errors) = parse_str(std::path::Path::new("policy.yaml"), POLICIES);
    assert!(errors.is_empty(), "{:?}", errors.iter().map(ToString::to_string).collect::<Vec<_>>());
    let plan = flowgate_policy::compile(&policies, &cluster, &mut CidrIdentities::new());
    let pods: Vec<(IpAddr, u32)> = cluster
        .pods
        .iter()
        .flat_map(|p| [(IpAddr::V4(p.ip), p.identity), (IpAddr::V6(p.ipv6.expect("dual-stack")), p.identity)])
        .collect();
    let mut rules = RuleTable::default();
    let offline = Node::of_plan(&plan, realize(&plan, &pods, &Audit::default(), &mut rules), &rules);
    assert_eq!(comparable(offline.maps.clone()), kernel, "offline compilation = the kernel's maps");
    let server = cluster.pods.iter().find(|p| p.name == "server").expect("the server pod").endpoint_id;

    let mut outcomes = Vec::new();
    for case in cases() {
        let (ret, records) = run(&mut f, &case);
        for (source, contents) in [("live", &kernel), ("offline", &offline.maps)] {
            let (outcome, remote) = PolicyMaps::new(contents).new_connection(
                server,
                case.dir,
                case.remote,
                case.protocol.ip_protocol(),
                case.port,
            );
            let (verdict, match_type, rule_id) = outcome.verdict_record().expect("the server is enforced both ways");
            assert_eq!(
                records,
                vec![(verdict, match_type, rule_id, remote.identity)],
                "{}: the kernel's verdict record vs the {source} lookup's {outcome:?}",
                case.what
            );
            let expected_ret = if outcome == Outcome::Denied { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
            assert_eq!(ret, expected_ret, "{}: the kernel's action vs the {source} lookup's", case.what);
        }
        let (outcome, _) = PolicyMaps::new(&offline.maps).new_connection(
            server,
            case.dir,
            case.remote,
            case.protocol.ip_protocol(),
            case.port,
        );
        let policies: Vec<String> = match outcome {
            Outcome::Allowed(a) => offline.rules[&a.rule_id].iter().map(PolicyRef::to_string).collect(),
            _ => Vec::new(),
        };
        outcomes.push((case.what, outcome.verdict_record().map(|(v, m, _)| (v, m)), policies));
    }

    // And the answers are the ones the policies mean (so the comparison above is not vacuous).
    let allowed = |m| Some((flowgate_common::policy::verdict::ALLOWED, m));
    let denied = Some((flowgate_common::policy::verdict::DENIED, match_type::NONE));
    let expected: Vec<Answer> = vec![
        (
            "client on TCP 80 (two policies)",
            allowed(match_type::L3_L4),
            vec!["default/server-in", "default/server-in-named"],
        ),
        ("client on TCP 81", denied, vec![]),
        ("client on SCTP 80", denied, vec![]),
        ("client on UDP 53 (anyone)", allowed(match_type::L4_ONLY), vec!["default/server-in"]),
        ("world on UDP 53", allowed(match_type::L4_ONLY), vec!["default/server-in"]),
        ("world on UDP 54", denied, vec![]),
        ("ipBlock, any port", allowed(match_type::L3_ONLY), vec!["default/server-in"]),
        ("ipBlock's except", denied, vec![]),
        (
            "client over IPv6 on TCP 80",
            allowed(match_type::L3_L4),
            vec!["default/server-in", "default/server-in-named"],
        ),
        ("IPv6 world on UDP 53", allowed(match_type::L4_ONLY), vec!["default/server-in"]),
        ("IPv6 world on TCP 80", denied, vec![]),
        ("to client on its SCTP port sctp-80", allowed(match_type::L3_L4), vec!["default/server-out"]),
        ("to client on TCP 80", denied, vec![]),
        ("to the block on TCP 444 (range)", allowed(match_type::L3_L4), vec!["default/server-out"]),
        ("to the block on TCP 445", denied, vec![]),
        ("to the block on UDP 443", denied, vec![]),
        ("to the IPv6 block, any port", allowed(match_type::L3_ONLY), vec!["default/server-out"]),
        ("next to the IPv6 block", denied, vec![]),
        ("to client over IPv6 on SCTP 80", allowed(match_type::L3_L4), vec!["default/server-out"]),
    ];
    let outcomes: Vec<Answer> =
        outcomes.iter().map(|(w, o, p)| (*w, *o, p.iter().map(String::as_str).collect())).collect();
    assert_eq!(outcomes, expected);
}

/// Runs `case`'s packet through the server's program for its direction: the action and the policy-verdict
/// records as (verdict, match type, rule id, remote identity).
fn run(f: &mut Fixture, case: &Case) -> (u32, Vec<(u8, u8, u32, u32)>) {
    let server_ip = if case.remote.is_ipv6() { IpAddr::V6(SERVER6) } else { IpAddr::V4(SERVER) };
    let (src, dst) = if case.dir == direction::INGRESS { (case.remote, server_ip) } else { (server_ip, case.remote) };
    let packet = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_packet(s, d, case.transport),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_packet(s, d, case.transport),
        _ => unreachable!("one family per case"),
    };
    let program = if case.dir == direction::INGRESS { PROG_TO_ENDPOINT } else { PROG_FROM_ENDPOINT };
    let (ret, records) = f.run_frame(program, &packet);
    let records = records
        .iter()
        .filter_map(|r| match r {
            Record::PolicyVerdict(v) => Some((v.verdict, v.match_type, v.rule_id, v.remote_identity)),
            _ => None,
        })
        .collect();
    (ret, records)
}

#[test]
fn in_audit_mode_the_lookup_audits_what_the_kernel_audits() {
    let mut f = fixture_with(POLICIES, "lookup-audit", |engine| engine.audit.all = true);
    let kernel = f.datapath.policy_contents().expect("read the policy maps back");
    let (_, cluster) = two_pods(&mut f.datapath, &fixture_ports());
    let server = cluster.pods.iter().find(|p| p.name == "server").expect("the server pod").endpoint_id;
    let mut audited = Vec::new();
    for case in cases() {
        let (ret, records) = run(&mut f, &case);
        let (outcome, remote) = PolicyMaps::new(&kernel).new_connection(
            server,
            case.dir,
            case.remote,
            case.protocol.ip_protocol(),
            case.port,
        );
        let (verdict, match_type, rule_id) = outcome.verdict_record().expect("enforced both ways");
        assert_eq!(records, vec![(verdict, match_type, rule_id, remote.identity)], "{}: {outcome:?}", case.what);
        assert_eq!(ret, TC_ACT_UNSPEC, "{}: audit mode passes everything", case.what);
        if outcome == Outcome::Audit {
            audited.push(case.what);
        }
    }
    assert_eq!(audited.len(), 9, "exactly the cases denied without audit mode: {audited:?}");
}
