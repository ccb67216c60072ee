//! The kernel programs on crafted packets (BPF_PROG_TEST_RUN): the way to exercise SCTP, which this
//! kernel cannot carry on a socket, and to check verdicts, drop records and return codes exactly. Real
//! policies go through the agent's own loading, compiling and map-writing path; only the packets are
//! crafted. Nothing is transmitted: test runs execute the program on a buffer.

use std::net::Ipv4Addr;

use flowgate_agent::{
    craft::{Fragment, Transport, ethernet_frame, ipv4_frame, ipv4_packet, quote},
    datapath::DatapathOptions,
};
use flowgate_common::{
    Counter,
    counters::aggregation,
    drop_reason,
    ip::protocol,
    names::{PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT},
    policy::{match_type, verdict},
    record::{ct_state, record_type},
};
use flowgate_events::decode::{Record, decode, expand};
use flowgate_tests::test_run::{
    CLIENT, Fixture, SERVER, TC_ACT_SHOT, TC_ACT_UNSPEC, drop_reasons, drops, fixture, fixture_full, fixture_options,
    fixture_with, trace_states, verdicts,
};

const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

const SCTP_POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-sctp, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: SCTP, port: 80}]
";

#[test]
fn sctp_is_allowed_only_on_the_allowed_port_from_the_allowed_peer() {
    let mut f = fixture(SCTP_POLICY, "sctp");
    let init = |dport| Transport::SctpInit { sport: 5000, dport };

    let (ret, records) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, init(80));
    assert_eq!(ret, TC_ACT_UNSPEC, "allowed SCTP passes on to the next program");
    assert_eq!(verdicts(&records), vec![(verdict::ALLOWED, match_type::L3_L4, 80)]);
    assert_eq!(drops(&records), 0);

    let (ret, records) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, init(81));
    assert_eq!(ret, TC_ACT_SHOT, "SCTP to another port is dropped");
    assert_eq!(verdicts(&records), vec![(verdict::DENIED, match_type::NONE, 81)]);
    assert_eq!(drops(&records), 1, "a drop record for the dropped packet");

    let (ret, _) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, init(80));
    assert_eq!(ret, TC_ACT_SHOT, "SCTP from a peer the rule does not select is dropped");

    let (ret, records) =
        f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, Transport::Tcp { sport: 5001, dport: 80, flags: 0x02 });
    assert_eq!(ret, TC_ACT_SHOT, "TCP on the SCTP-only port is dropped");
    assert_eq!(verdicts(&records), vec![(verdict::DENIED, match_type::NONE, 80)]);
}

#[test]
fn sctp_replies_of_an_allowed_association_pass_without_a_new_verdict() {
    let mut f = fixture(SCTP_POLICY, "sctpct");
    let (ret, _) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, Transport::SctpInit { sport: 6000, dport: 80 });
    assert_eq!(ret, TC_ACT_UNSPEC);
    // The server's answer leaves through from_endpoint: egress is not enforced, and conntrack knows it.
    let (ret, records) = f.run(PROG_FROM_ENDPOINT, SERVER, CLIENT, Transport::SctpInit { sport: 80, dport: 6000 });
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert!(verdicts(&records).is_empty(), "a reply is not a new connection: {records:?}");
    // The next packet of the association in the opening direction is established.
    let (ret, records) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, Transport::SctpInit { sport: 6000, dport: 80 });
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert!(verdicts(&records).is_empty());
}

#[test]
fn sctp_port_ranges_and_protocol_wildcards() {
    let mut f = fixture(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-ranges, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports: [{protocol: SCTP, port: 7000, endPort: 7010}]
",
        "range",
    );
    for (dport, ok) in [(6999, false), (7000, true), (7005, true), (7010, true), (7011, false)] {
        let (ret, records) =
            f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, Transport::SctpInit { sport: 9000 + dport, dport });
        assert_eq!(ret == TC_ACT_UNSPEC, ok, "port {dport}");
        if ok {
            assert_eq!(
                verdicts(&records),
                vec![(verdict::ALLOWED, match_type::L4_ONLY, dport)],
                "any peer + port: L4-only"
            );
        }
    }
}

/// The programs look for an entry of any peer only where the endpoint's flags do not say it has none in that
/// direction (`enforcement::INGRESS_NO_ANY_PEER`): a flag wrongly set would hide these entries and deny what
/// they allow, in either direction and whichever map holds them (one port: the exact map; a range: the trie).
#[test]
fn entries_for_any_peer_are_found_in_both_directions_and_a_peer_without_one_is_denied() {
    let mut f = fixture(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-any-peer, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 80}]
  - ports: [{protocol: TCP, port: 443}, {protocol: TCP, port: 8000, endPort: 8010}]
  egress:
  - ports: [{protocol: UDP, port: 53}]
",
        "any-peer",
    );
    let syn = |sport, dport| Transport::Tcp { sport, dport, flags: 0x02 };
    let (ret, records) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, syn(5000, 80));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![(verdict::ALLOWED, match_type::L3_L4, 80)]));
    for (sport, dport) in [(5001, 443), (5002, 8005)] {
        let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, syn(sport, dport));
        let expected = vec![(verdict::ALLOWED, match_type::L4_ONLY, dport)];
        assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, expected), "any peer on {dport}");
    }
    let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, syn(5003, 80));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_SHOT, vec![(verdict::DENIED, match_type::NONE, 80)]));
    let dns = Transport::Udp { sport: 5353, dport: 53 };
    let (ret, records) = f.run(PROG_FROM_ENDPOINT, SERVER, OUTSIDE, dns);
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![(verdict::ALLOWED, match_type::L4_ONLY, 53)]));
    let (ret, records) = f.run(PROG_FROM_ENDPOINT, SERVER, OUTSIDE, syn(5004, 53));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_SHOT, vec![(verdict::DENIED, match_type::NONE, 53)]), "egress");

    // Under a policy whose rules all name their peers, the same peer finds nothing on the ports it had.
    let mut f = fixture(SCTP_POLICY, "no-any-peer");
    let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, Transport::SctpInit { sport: 5005, dport: 80 });
    assert_eq!((ret, verdicts(&records)), (TC_ACT_SHOT, vec![(verdict::DENIED, match_type::NONE, 80)]));
}

#[test]
fn audit_mode_lets_would_be_drops_pass_and_reports_them_as_audit() {
    let mut f = fixture_with(SCTP_POLICY, "audit", |engine| engine.audit.all = true);
    let (ret, records) =
        f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, Transport::Tcp { sport: 7001, dport: 80, flags: 0x02 });
    assert_eq!(ret, TC_ACT_UNSPEC, "audit: the would-be drop passes");
    assert_eq!(verdicts(&records), vec![(verdict::AUDIT, match_type::NONE, 80)]);
    assert_eq!(drops(&records), 0, "nothing is dropped in audit mode");
    // What the policy allows is still reported as allowed.
    let (ret, records) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, Transport::SctpInit { sport: 7002, dport: 80 });
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert_eq!(verdicts(&records), vec![(verdict::ALLOWED, match_type::L3_L4, 80)]);
}

#[test]
fn per_endpoint_audit_applies_to_that_endpoint_only() {
    let mut f = fixture_with(SCTP_POLICY, "epaudit", |engine| {
        engine.audit.endpoints.insert(1);
    });
    // Endpoint 1 is the client (registered first); the server behind loopback is not audited.
    let (ret, records) =
        f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, Transport::Tcp { sport: 7003, dport: 80, flags: 0x02 });
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(verdicts(&records), vec![(verdict::DENIED, match_type::NONE, 80)]);
    drop(f);
    let mut f = fixture_with(SCTP_POLICY, "epaudit2", |engine| {
        engine.audit.endpoints.insert(2);
    });
    let (ret, records) =
        f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, Transport::Tcp { sport: 7004, dport: 80, flags: 0x02 });
    assert_eq!(ret, TC_ACT_UNSPEC, "the audited server lets it pass");
    assert_eq!(verdicts(&records), vec![(verdict::AUDIT, match_type::NONE, 80)]);
}

#[test]
fn one_record_per_decision_stands_for_the_packets_trace_or_drop_and_counts_as_both() {
    let mut f = fixture(SCTP_POLICY, "onerecord");
    let allowed = Transport::SctpInit { sport: 7010, dport: 80 };
    let denied = Transport::Tcp { sport: 7011, dport: 80, flags: 0x02 };
    for (src, opening, decided, second) in
        [(CLIENT, allowed, verdict::ALLOWED, record_type::TRACE), (OUTSIDE, denied, verdict::DENIED, record_type::DROP)]
    {
        while f.ring.next().is_some() {}
        let before = f.datapath.counters().unwrap();
        let syn = ipv4_packet(src, SERVER, opening);
        f.datapath.test_run(PROG_TO_ENDPOINT, &syn, 1).expect("BPF_PROG_TEST_RUN");
        let mut raw = Vec::new();
        while let Some(item) = f.ring.next() {
            raw.push(decode(&item).expect("a record the agent can decode"));
        }
        let [Record::PolicyVerdict(v)] = raw.as_slice() else { panic!("one record for the decision: {raw:?}") };
        assert_eq!(v.verdict, decided);
        let expanded: Vec<Record> = expand(raw[0]).collect();
        let types: Vec<u8> = expanded.iter().map(record_type_of).collect();
        assert_eq!(types, vec![record_type::POLICY_VERDICT, second], "{expanded:?}");
        // The kernel counts the events a record stands for: offered = delivered + lost stays exact.
        let after = f.datapath.counters().unwrap();
        let written = after.get(Counter::RecordsWritten) - before.get(Counter::RecordsWritten);
        assert_eq!(written, 2, "a verdict record counts as the two events it stands for");
    }
}

fn record_type_of(record: &Record) -> u8 {
    match record {
        Record::Trace(t) => t.header.record_type,
        Record::PolicyVerdict(v) => v.header.record_type,
        Record::Drop(d) => d.header.record_type,
    }
}

fn traces(records: &[Record]) -> usize {
    records.iter().filter(|r| matches!(r, Record::Trace(_))).count()
}

const ALLOW_ALL: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: default}
spec:
  podSelector: {}
  ingress: [{}]
";

/// (program, src, dst, sport, dport, flags) -> trace records written, for a sequence of packets.
fn trace_counts(level: u64, tag: &str) -> Vec<usize> {
    let mut f = fixture_full(ALLOW_ALL, tag, level, |_| {});
    trace_steps(&mut f)
}

/// The trace records each packet of one TCP connection's life (to the server, whose ingress is enforced)
/// wrote.
fn trace_steps(f: &mut Fixture) -> Vec<usize> {
    let tcp = |sport, dport, flags| Transport::Tcp { sport, dport, flags };
    let steps = [
        (PROG_TO_ENDPOINT, CLIENT, SERVER, tcp(8000, 80, 0x02)), // SYN: new connection
        (PROG_TO_ENDPOINT, CLIENT, SERVER, tcp(8000, 80, 0x02)), // SYN again: nothing new
        (PROG_FROM_ENDPOINT, SERVER, CLIENT, tcp(80, 8000, 0x12)), // SYN-ACK: first reply
        (PROG_TO_ENDPOINT, CLIENT, SERVER, tcp(8000, 80, 0x10)), // first ACK: data moving, not a state change
        (PROG_TO_ENDPOINT, CLIENT, SERVER, tcp(8000, 80, 0x18)), // first PSH: the same
        (PROG_TO_ENDPOINT, CLIENT, SERVER, tcp(8000, 80, 0x11)), // FIN from the client: a state change
        (PROG_FROM_ENDPOINT, SERVER, CLIENT, tcp(80, 8000, 0x11)), // FIN from the server: a state change
        (PROG_FROM_ENDPOINT, SERVER, CLIENT, tcp(80, 8000, 0x10)), // ACK from the server: bulk, leaving the pod
    ];
    steps.iter().map(|(prog, src, dst, t)| traces(&f.run(prog, *src, *dst, *t).1)).collect()
}

#[test]
fn trace_aggregation_levels() {
    assert_eq!(trace_counts(aggregation::NONE, "aggnone"), vec![1, 1, 1, 1, 1, 1, 1, 1], "none: every packet");
    assert_eq!(
        trace_counts(aggregation::MEDIUM, "aggmed"),
        vec![1, 0, 1, 0, 0, 1, 1, 0],
        "medium: new connections, first replies and the first SYN, FIN or RST in a direction only"
    );
    assert_eq!(
        trace_counts(aggregation::LOW, "agglow"),
        vec![1, 0, 1, 0, 0, 1, 1, 1],
        "low: medium plus every packet leaving the pod"
    );
}

/// `--bpf-events-trace-enabled=false`: no trace record at any aggregation level (every packet would be traced
/// at `none`), while every decision keeps its record (which also stands for its packet's trace or drop, as
/// ever) and a drop no decision took keeps its drop record.
#[test]
fn with_traces_off_only_decisions_and_drops_are_recorded() {
    let options = || DatapathOptions { aggregation: aggregation::NONE, traces: false, ..DatapathOptions::default() };
    let mut f = fixture_options(SERVER_DNS_ONLY, "notrace", options(), |_| {});
    let tcp = |sport, dport, flags| Transport::Tcp { sport, dport, flags };
    let dns = Transport::Udp { sport: 5000, dport: 53 };
    let verdict_of = |records: &[Record]| verdicts(records).iter().map(|v| v.0).collect::<Vec<_>>();
    // An admitted flow: its first datagram's verdict record (the verdict and the trace it stands for), then
    // nothing for its reply or later datagrams.
    let (ret, records) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, dns);
    assert_eq!((ret, verdict_of(&records), records.len()), (TC_ACT_UNSPEC, vec![verdict::ALLOWED], 2), "{records:?}");
    for (program, src, dst, transport) in [
        (PROG_FROM_ENDPOINT, SERVER, CLIENT, Transport::Udp { sport: 53, dport: 5000 }),
        (PROG_TO_ENDPOINT, CLIENT, SERVER, dns),
        // The server's own connection out (its egress is open, so no decision is taken): untraced.
        (PROG_FROM_ENDPOINT, SERVER, OUTSIDE, tcp(9000, 443, 0x02)),
    ] {
        let (ret, records) = f.run(program, src, dst, transport);
        assert_eq!(ret, TC_ACT_UNSPEC);
        assert!(records.is_empty(), "no record for a packet no decision took: {records:?}");
    }
    // A denied connection: its verdict record, which stands for the drop, as ever.
    let (ret, records) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, tcp(8000, 80, 0x02));
    assert_eq!((ret, verdict_of(&records), drops(&records)), (TC_ACT_SHOT, vec![verdict::DENIED], 1), "{records:?}");
    // A drop no decision took (a spoofed source) keeps its drop record too.
    let (ret, records) = f.run(PROG_FROM_ENDPOINT, CLIENT, OUTSIDE, dns);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::INVALID_SOURCE_IP]));

    // The connection's life that writes a trace per packet at `none` (and the same with traces on, at the
    // test above) now has only its opening packet's verdict, with the trace that record stands for.
    let mut f = fixture_options(ALLOW_ALL, "notrace2", options(), |_| {});
    assert_eq!(trace_steps(&mut f), vec![1, 0, 0, 0, 0, 0, 0, 0]);
}

/// The server takes UDP 53 from the client and nothing else; its egress is open.
const SERVER_DNS_ONLY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-dns, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: UDP, port: 53}]
";

#[test]
fn a_packet_leaving_an_endpoint_with_another_source_is_dropped_as_invalid_source() {
    let mut f = fixture(SERVER_DNS_ONLY, "spoof");
    let udp = Transport::Udp { sport: 5000, dport: 53 };
    // The server borrowing the client's address (which the server's peers would trust) ...
    let (ret, records) = f.run(PROG_FROM_ENDPOINT, CLIENT, OUTSIDE, udp);
    assert_eq!(ret, TC_ACT_SHOT, "a spoofed source is dropped");
    assert_eq!(drop_reasons(&records), vec![drop_reason::INVALID_SOURCE_IP], "{records:?}");
    assert!(verdicts(&records).is_empty(), "no policy verdict is taken for a spoofed packet");
    // ... or any other address, also on a connection the server really has.
    let (ret, _) = f.run(PROG_FROM_ENDPOINT, SERVER, OUTSIDE, udp);
    assert_eq!(ret, TC_ACT_UNSPEC, "its own address passes (egress is open)");
    let (ret, records) = f.run(PROG_FROM_ENDPOINT, Ipv4Addr::new(10, 200, 0, 99), OUTSIDE, udp);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(drop_reasons(&records), vec![drop_reason::INVALID_SOURCE_IP]);
    // Truncated packets with a spoofed source are still reported as spoofed.
    let short = ipv4_frame(CLIENT, OUTSIDE, protocol::UDP, &[0; 4], None);
    let (ret, records) = f.run_frame(PROG_FROM_ENDPOINT, &short);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::INVALID_SOURCE_IP]));
    assert!(f.datapath.counters().unwrap().get(Counter::InvalidSource) >= 3);
}

#[test]
fn truncated_headers_and_tiny_first_fragments_are_dropped_not_passed() {
    let mut f = fixture(SERVER_DNS_ONLY, "tiny");
    let first = Some(Fragment { id: 1, offset: 0, more: true });
    // A first fragment with 8 bytes of a 20-byte TCP header: ports, but no flags.
    let tiny = ipv4_frame(CLIENT, SERVER, protocol::TCP, &[0x13, 0x88, 0, 80, 0, 0, 0, 1], first);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &tiny);
    assert_eq!(ret, TC_ACT_SHOT, "a tiny first fragment is dropped");
    assert_eq!(drop_reasons(&records), vec![drop_reason::CT_TRUNCATED_OR_INVALID_HEADER]);
    // A whole packet whose UDP header is cut short.
    let cut = ipv4_frame(CLIENT, SERVER, protocol::UDP, &[0, 53, 0], None);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &cut);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::CT_TRUNCATED_OR_INVALID_HEADER]));
    // An IHL below 5.
    let mut bad_ihl = ipv4_packet(CLIENT, SERVER, Transport::Udp { sport: 5000, dport: 53 });
    bad_ihl[14] = 0x44;
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &bad_ihl);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::CT_TRUNCATED_OR_INVALID_HEADER]));
    assert!(f.datapath.counters().unwrap().get(Counter::TruncatedHeader) >= 3);
}

/// A UDP datagram of `len` data bytes from the client to the server's `dport`, cut into a first fragment
/// (UDP header and 16 bytes) and a later one.
fn udp_fragments(id: u16, dport: u16) -> (Vec<u8>, Vec<u8>) {
    let mut first = vec![0u8; 8 + 16];
    first[0..2].copy_from_slice(&5353u16.to_be_bytes());
    first[2..4].copy_from_slice(&dport.to_be_bytes());
    first[4..6].copy_from_slice(&(8u16 + 40).to_be_bytes());
    let first = ipv4_frame(CLIENT, SERVER, protocol::UDP, &first, Some(Fragment { id, offset: 0, more: true }));
    let later = ipv4_frame(CLIENT, SERVER, protocol::UDP, &[7; 24], Some(Fragment { id, offset: 3, more: false }));
    (first, later)
}

#[test]
fn later_fragments_take_the_verdict_of_their_first_fragment() {
    let mut f = fixture(SERVER_DNS_ONLY, "frag");
    // Allowed: UDP 53 from the client. The first fragment gets the verdict, the later one follows it.
    let (first, later) = udp_fragments(11, 53);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &first);
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert_eq!(verdicts(&records), vec![(verdict::ALLOWED, match_type::L3_L4, 53)]);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &later);
    assert_eq!(ret, TC_ACT_UNSPEC, "the later fragment of an allowed datagram passes");
    assert!(drop_reasons(&records).is_empty() && verdicts(&records).is_empty(), "{records:?}");
    // Denied: UDP 54. The later fragment is dropped too, for the same reason.
    let (first, later) = udp_fragments(12, 54);
    let (ret, _) = f.run_frame(PROG_TO_ENDPOINT, &first);
    assert_eq!(ret, TC_ACT_SHOT);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &later);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    let Some(Record::Drop(d)) = records.first() else { panic!("{records:?}") };
    assert_eq!(d.flow.dport, 54, "the later fragment's record carries its datagram's ports");
    // A later fragment whose first fragment never came cannot be attributed: dropped.
    let (_, orphan) = udp_fragments(13, 53);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &orphan);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::FRAGMENT_WITHOUT_FIRST]));
    // The same datagram id in the other direction is another datagram.
    let (_, later) = udp_fragments(11, 53);
    let (ret, _) = f.run_frame(PROG_FROM_ENDPOINT, &later);
    assert_eq!(ret, TC_ACT_SHOT, "fragments are tracked per endpoint and direction");
    assert!(f.datapath.counters().unwrap().get(Counter::FragmentsWithoutFirst) >= 1);
}

#[test]
fn echo_replies_find_their_request_and_other_icmp_follows_policy() {
    let mut f = fixture(SERVER_DNS_ONLY, "icmp");
    let echo = |reply, id| Transport::IcmpEcho { reply, id };
    // The server (isolated for ingress) pings out: its request leaves, the matching reply comes back.
    let (ret, _) = f.run(PROG_FROM_ENDPOINT, SERVER, OUTSIDE, echo(false, 77));
    assert_eq!(ret, TC_ACT_UNSPEC);
    let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, echo(true, 77));
    assert_eq!(ret, TC_ACT_UNSPEC, "the reply of the server's own ping passes");
    assert!(verdicts(&records).is_empty(), "a reply is not a new connection: {records:?}");
    // A reply nobody asked for is a new ICMP message into an isolated pod: denied.
    let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, echo(true, 78));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    // A rule with ports does not admit ICMP, even from the peer it allows.
    let (ret, _) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, echo(false, 79));
    assert_eq!(ret, TC_ACT_SHOT, "UDP 53 from the client does not allow the client's ping");
}

#[test]
fn a_rule_without_ports_admits_icmp() {
    let mut f = fixture(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
",
        "icmpl3",
    );
    let (ret, records) = f.run(PROG_TO_ENDPOINT, CLIENT, SERVER, Transport::IcmpEcho { reply: false, id: 5 });
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert_eq!(verdicts(&records).len(), 1);
    let (ret, _) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, Transport::IcmpEcho { reply: false, id: 6 });
    assert_eq!(ret, TC_ACT_SHOT, "from a peer the rule does not select");
}

#[test]
fn icmp_errors_about_a_tracked_connection_pass_as_related() {
    let mut f = fixture(SERVER_DNS_ONLY, "related");
    let udp = |sport| Transport::Udp { sport, dport: 9000 };
    // The server sends to the outside host (egress open: tracked).
    let (ret, _) = f.run(PROG_FROM_ENDPOINT, SERVER, OUTSIDE, udp(4000));
    assert_eq!(ret, TC_ACT_UNSPEC);
    // A router on the way answers "fragmentation needed", quoting the server's packet.
    let frag_needed =
        |sport| Transport::IcmpError { icmp_type: 3, code: 4, quoted: quote(SERVER, OUTSIDE, udp(sport)) };
    let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, frag_needed(4000));
    assert_eq!(ret, TC_ACT_UNSPEC, "path-MTU discovery works for the server's own connection");
    assert!(verdicts(&records).is_empty() && drop_reasons(&records).is_empty(), "{records:?}");
    let related = trace_states(&records);
    assert_eq!(related, vec![ct_state::RELATED], "traced as related");
    // An error quoting a connection the server never had is ordinary ICMP into an isolated pod.
    let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, frag_needed(4001));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    assert!(f.datapath.counters().unwrap().get(Counter::IcmpRelated) >= 1);
}

#[test]
fn other_ethertypes_leaving_an_endpoint_are_dropped_and_arp_passes() {
    let mut f = fixture(SERVER_DNS_ONLY, "ethertype");
    let lldp = ethernet_frame(0x88cc, &[0; 46]);
    let (ret, records) = f.run_frame(PROG_FROM_ENDPOINT, &lldp);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::UNSUPPORTED_L3_PROTOCOL]));
    let arp = ethernet_frame(0x0806, &[0; 28]);
    let (ret, records) = f.run_frame(PROG_FROM_ENDPOINT, &arp);
    assert_eq!(ret, TC_ACT_UNSPEC, "neighbour resolution keeps working");
    assert!(records.is_empty());
    let (ret, _) = f.run_frame(PROG_TO_ENDPOINT, &lldp);
    assert_eq!(ret, TC_ACT_UNSPEC, "what the node sends into the pod is not the pod's to answer for");
}

/// `frame` (an IPv4 frame from `ipv4_frame`) with `options` (a multiple of 4 bytes) after its header.
fn with_ip_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[34..]);
    let ip = &mut out[14..];
    ip[0] = 0x40 | (5 + options.len() / 4) as u8;
    let total = u16::from_be_bytes([ip[2], ip[3]]) + options.len() as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let header_len = 20 + options.len();
    let c = flowgate_agent::craft::checksum(&ip[..header_len]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    out
}

#[test]
fn headers_are_read_to_their_own_length_and_no_further() {
    let mut f = fixture(SERVER_DNS_ONLY, "short");
    // A UDP datagram that ends with its 8-byte header (no data): decided by its port, like any other.
    let empty = ipv4_frame(CLIENT, SERVER, protocol::UDP, &[0x13, 0x88, 0, 53, 0, 8, 0, 0], None);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &empty);
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert_eq!(verdicts(&records), vec![(verdict::ALLOWED, match_type::L3_L4, 53)]);
    let other_port = ipv4_frame(CLIENT, SERVER, protocol::UDP, &[0x13, 0x88, 0, 54, 0, 8, 0, 0], None);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &other_port);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    // A protocol whose header the flow does not read (GRE), 4 bytes long: not "cut short", but a new
    // connection without ports that policy decides (denied: the server admits DNS only).
    let gre = ipv4_frame(CLIENT, SERVER, 47, &[0, 0, 0x08, 0], None);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &gre);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    assert_eq!(f.datapath.counters().unwrap().get(Counter::TruncatedHeader), 0);
}

#[test]
fn ipv4_options_move_the_l4_header_and_are_read_past() {
    let mut f = fixture(SERVER_DNS_ONLY, "options");
    // Router alert and NOPs: the UDP header starts 8 bytes later than usual.
    let options = [0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x01];
    let allowed = with_ip_options(&ipv4_packet(CLIENT, SERVER, Transport::Udp { sport: 5000, dport: 53 }), &options);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &allowed);
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert_eq!(verdicts(&records), vec![(verdict::ALLOWED, match_type::L3_L4, 53)], "the port behind the options");
    let denied = with_ip_options(&ipv4_packet(CLIENT, SERVER, Transport::Udp { sport: 5000, dport: 54 }), &options);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &denied);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    // Options claiming more header than the packet has.
    let mut lying = allowed.clone();
    lying[14] = 0x4f;
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &lying);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::CT_TRUNCATED_OR_INVALID_HEADER]));
}

#[test]
fn icmp_errors_about_a_tracked_ping_pass_as_related() {
    let mut f = fixture(SERVER_DNS_ONLY, "relping");
    let echo = Transport::IcmpEcho { reply: false, id: 0x77 };
    assert_eq!(f.run(PROG_FROM_ENDPOINT, SERVER, OUTSIDE, echo).0, TC_ACT_UNSPEC);
    // A router's "time exceeded" quoting the server's echo request (a traceroute by ping).
    let exceeded = |id| Transport::IcmpError {
        icmp_type: 11,
        code: 0,
        quoted: quote(SERVER, OUTSIDE, Transport::IcmpEcho { reply: false, id }),
    };
    let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, exceeded(0x77));
    assert_eq!(ret, TC_ACT_UNSPEC, "about the server's own ping");
    assert!(matches!(records.as_slice(), [Record::Trace(t)] if t.ct_state == ct_state::RELATED), "{records:?}");
    let (ret, records) = f.run(PROG_TO_ENDPOINT, OUTSIDE, SERVER, exceeded(0x78));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]), "about no ping");
}

#[test]
fn later_fragments_after_the_fragment_lifetime_find_nothing() {
    let mut f = fixture(SERVER_DNS_ONLY, "fraglife");
    let (first, later) = udp_fragments(21, 53);
    assert_eq!(f.run_frame(PROG_TO_ENDPOINT, &first).0, TC_ACT_UNSPEC);
    // FRAGMENT_LIFETIME_NS (5 s) later, the first fragment's decision is gone: a late fragment cannot be
    // attributed any more (it would otherwise let data in under a decision of long ago).
    let lifetime = std::time::Duration::from_nanos(flowgate_common::fragment::FRAGMENT_LIFETIME_NS);
    std::thread::sleep(lifetime + std::time::Duration::from_millis(300));
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &later);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::FRAGMENT_WITHOUT_FIRST]));
}

/// Creates a hash map (2-byte keys, 4-byte values) and pins it at `path`, as an agent before session 11
/// made its enforcement maps: raw `bpf(2)` calls, since the loader only creates the object's own maps.
fn pin_hash_map(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, 2, 4, 4096]);
    // SAFETY: `attr` is a zeroed `bpf_attr` of 128 bytes with the map-creation fields set; the kernel only
    // reads it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_mut_ptr(), size_of_val(&attr)) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut pin = [0u64; 16];
    pin[0] = c_path.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: `pin` is a zeroed `bpf_attr` with `pathname` (a NUL-terminated path that outlives the call)
    // and `bpf_fd` set; the kernel only reads it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_mut_ptr(), size_of_val(&pin)) };
    assert_eq!(ret, 0, "BPF_OBJ_PIN {}: {}", path.display(), std::io::Error::last_os_error());
    // SAFETY: `fd` is the descriptor the kernel returned above, closed once; the pin keeps the map.
    unsafe { libc::close(fd as libc::c_int) };
}

/// The enforcement maps became arrays in session 11: a pin directory an older agent left holds hash maps
/// under their names, which the loader would adopt as they are. The agent refuses them by name instead of
/// writing array slots into a hash map.
#[test]
fn a_pinned_enforcement_map_of_an_older_agent_is_refused_by_name() {
    flowgate_tests::require_root();
    let pins = PinDir::new("old-pin");
    let dir = pins.0.clone();
    pin_hash_map(&dir.join(flowgate_common::names::MAP_ENFORCEMENT[0]));
    let loaded = flowgate_agent::datapath::Datapath::load(flowgate_agent::datapath::DatapathOptions {
        pin_dir: Some(dir.clone()),
        ..Default::default()
    });
    let error = loaded.err().expect("an old pin is refused").to_string();
    assert!(error.contains("FG_ENFORCE_0") && error.contains("Hash") && error.contains("older flowgate"), "{error}");
}

/// A pin directory on bpffs, removed (with every pin in it) on drop.
struct PinDir(std::path::PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/fg-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a pin directory on bpffs");
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SERVER_FROM_CLIENT_80: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}, {ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.7/32]}}]
    ports: [{protocol: TCP, port: 80}]
";

/// An ipcache generation as pinned: the host map's addresses, the trie's (prefix length, address) entries.
struct PinnedIpcache {
    hosts: Vec<[u8; 16]>,
    trie: Vec<(u32, [u8; 16])>,
}

/// The ipcache of generation `generation` as pinned in `dir`.
fn pinned_ipcache(dir: &std::path::Path, generation: usize) -> PinnedIpcache {
    use aya::maps::{HashMap, LpmTrie, Map, MapData};
    use flowgate_common::{
        names::{MAP_IPCACHE, MAP_IPCACHE_HOST},
        policy::IpcacheValue,
    };
    let open = |name: &str| Map::from_map_data(MapData::from_pin(dir.join(name)).expect("a pinned map")).unwrap();
    let hosts: HashMap<_, [u8; 16], IpcacheValue> = HashMap::try_from(open(MAP_IPCACHE_HOST[generation])).unwrap();
    let trie: LpmTrie<_, [u8; 16], IpcacheValue> = LpmTrie::try_from(open(MAP_IPCACHE[generation])).unwrap();
    let mut host_keys: Vec<_> = hosts.keys().map(Result::unwrap).collect();
    host_keys.sort_unstable();
    let mut trie_keys: Vec<_> = trie.keys().map(|k| k.map(|k| (k.prefix_len(), k.data())).unwrap()).collect();
    trie_keys.sort_unstable();
    PinnedIpcache { hosts: host_keys, trie: trie_keys }
}

/// Moves every single address of both ipcache generations pinned in `dir` from the host map into the trie,
/// where an agent before the host map wrote them.
fn move_hosts_into_the_trie(dir: &std::path::Path) {
    use aya::maps::{HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
    use flowgate_common::{
        names::{MAP_IPCACHE, MAP_IPCACHE_HOST},
        policy::{IPCACHE_HOST_PREFIX, IpcacheValue},
    };
    let open = |name: &str| Map::from_map_data(MapData::from_pin(dir.join(name)).expect("a pinned map")).unwrap();
    for generation in 0..2 {
        let mut hosts: HashMap<_, [u8; 16], IpcacheValue> =
            HashMap::try_from(open(MAP_IPCACHE_HOST[generation])).unwrap();
        let mut trie: LpmTrie<_, [u8; 16], IpcacheValue> = LpmTrie::try_from(open(MAP_IPCACHE[generation])).unwrap();
        let entries: Vec<_> = hosts.iter().map(Result::unwrap).collect();
        for (addr, value) in entries {
            trie.insert(&Key::new(IPCACHE_HOST_PREFIX, addr), value, 0).unwrap();
            hosts.remove(&addr).unwrap();
        }
    }
}

/// Pods' addresses are in a hash map before the ipcache trie since session 12 (a trie lookup grew with the
/// pods in it). An older agent's pins hold them in the trie: the programs still find them there (the hash
/// map has none), and an agent that adopts the pins moves them into the hash map at once, then writes each
/// generation as usual. Probed throughout with the packets the ipcache decides: the client pod admitted; an
/// ipBlock peer admitted; its `except` address and an address nothing selects refused.
#[test]
fn an_older_agents_ipcache_with_pod_addresses_in_the_trie_is_adopted_and_moved() {
    use flowgate_agent::{
        datapath::{Datapath, DatapathOptions},
        policy::PolicyEngine,
    };
    use flowgate_common::policy::IPCACHE_HOST_PREFIX;
    flowgate_tests::require_root();
    let pins = PinDir::new("ipcache-hosts");
    let policy_dir = flowgate_tests::TempDir::new("datapath-ipcache-hosts");
    std::fs::write(policy_dir.path().join("policy.yaml"), SERVER_FROM_CLIENT_80).unwrap();
    let options = || DatapathOptions { pin_dir: Some(pins.0.clone()), ..Default::default() };
    let mut first = Datapath::load(options()).expect("load the datapath (root, BPF)");
    let (_state, cluster) = flowgate_tests::test_run::two_pods(&mut first, &[]);
    let mut engine = PolicyEngine::new(Some(policy_dir.path().to_owned()), false);
    assert!(engine.reload(), "policy loads: {:?}", engine.status().errors);
    let (contents, _) = engine.prepare(cluster.clone()).expect("the policy fits");
    first.apply_policy(&contents).expect("write the policy maps");
    first.apply_policy(&contents).expect("write the other generation too");

    let decides = |datapath: &mut Datapath, what: &str| {
        let run = |src: Ipv4Addr, sport: u16| {
            let packet = ipv4_packet(src, SERVER, Transport::Tcp { sport, dport: 80, flags: 0x02 });
            datapath.test_run(PROG_TO_ENDPOINT, &packet, 1).expect("BPF_PROG_TEST_RUN").return_value
        };
        assert_eq!(run(CLIENT, 41_000), TC_ACT_UNSPEC, "{what}: the client pod is admitted");
        assert_eq!(run(Ipv4Addr::new(192, 0, 2, 8), 41_001), TC_ACT_UNSPEC, "{what}: an ipBlock peer is admitted");
        assert_eq!(run(OUTSIDE, 41_002), TC_ACT_SHOT, "{what}: the ipBlock's except address is refused");
        assert_eq!(
            run(Ipv4Addr::new(198, 51, 100, 1), 41_003),
            TC_ACT_SHOT,
            "{what}: an unselected address is refused"
        );
    };
    decides(&mut first, "as written");
    for generation in 0..2 {
        let PinnedIpcache { hosts, trie } = pinned_ipcache(&pins.0, generation);
        assert!(hosts.len() >= 2, "generation {generation}: the pods' addresses in the host map: {hosts:?}");
        assert!(trie.iter().all(|(len, _)| *len < IPCACHE_HOST_PREFIX), "generation {generation}: {trie:?}");
    }

    move_hosts_into_the_trie(&pins.0);
    decides(&mut first, "the addresses in the trie, as an older agent wrote them");
    drop(first);
    let mut second = Datapath::load(options()).expect("adopt the pins");
    for generation in 0..2 {
        let PinnedIpcache { hosts, trie } = pinned_ipcache(&pins.0, generation);
        assert!(hosts.len() >= 2, "generation {generation}: moved into the host map on adoption: {hosts:?}");
        assert!(trie.iter().all(|(len, _)| *len < IPCACHE_HOST_PREFIX), "generation {generation}: left: {trie:?}");
    }
    decides(&mut second, "adopted, the addresses moved");
    let reported = second.policy_contents().expect("the contents in effect").ipcache;
    let client = flowgate_policy::IpPrefix::host(CLIENT.into());
    assert!(reported.iter().any(|(prefix, _)| *prefix == client), "the client's address is reported: {reported:?}");

    for written in 1..=2 {
        second.apply_policy(&contents).expect("write a generation");
        decides(&mut second, &format!("after writing {written} generation(s)"));
    }
    for generation in 0..2 {
        let PinnedIpcache { hosts, trie } = pinned_ipcache(&pins.0, generation);
        assert!(hosts.len() >= 2, "generation {generation}: the addresses moved into the host map: {hosts:?}");
        assert!(trie.iter().all(|(len, _)| *len < IPCACHE_HOST_PREFIX), "generation {generation}: left: {trie:?}");
    }
}
