//! IPv6 in the kernel programs, on crafted packets (BPF_PROG_TEST_RUN): the same policy as IPv4 decides,
//! and each way around it a hostile pod could try over IPv6 fails with a record that says why: a borrowed
//! source, neighbour discovery as a cover, IPv4-mapped addresses, extension header chains, fragments.
//! The same over real traffic between lab pods is in `conformance.rs` (every case over both families)
//! and `hardening.rs`.

use std::net::{IpAddr, Ipv6Addr};

use flowgate_agent::craft::{Transport, fragment_header, ipv6_frame, ipv6_l4, next_header, options_header, quote6};
use flowgate_common::{
    Counter, drop_reason, ip,
    ip::protocol,
    names::{PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT},
    policy::{match_type, verdict},
    record::ct_state,
};
use flowgate_events::decode::Record;
use flowgate_tests::test_run::{
    CLIENT6, SERVER6, TC_ACT_SHOT, TC_ACT_UNSPEC, drop_reasons, fixture, trace_states, verdicts,
};

/// A host outside the cluster, inside the lab's IPv6 range.
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x200, 0, 0, 0, 0, 0x99);
/// A host outside the lab's range.
const FAR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

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

fn udp(dport: u16) -> Transport {
    Transport::Udp { sport: 5353, dport }
}

fn addresses(records: &[Record]) -> Vec<(IpAddr, IpAddr)> {
    records
        .iter()
        .map(|r| {
            let flow = match r {
                Record::Trace(t) => t.flow,
                Record::PolicyVerdict(v) => v.flow,
                Record::Drop(d) => d.flow,
            };
            (ip::to_ip(&flow.saddr), ip::to_ip(&flow.daddr))
        })
        .collect()
}

#[test]
fn ipv6_connections_get_the_verdict_of_the_same_policy_and_records_carry_ipv6() {
    let mut f = fixture(SERVER_DNS_ONLY, "v6-verdict");
    let (ret, records) = f.run6(PROG_TO_ENDPOINT, CLIENT6, SERVER6, udp(53));
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert_eq!(verdicts(&records), vec![(verdict::ALLOWED, match_type::L3_L4, 53)]);
    assert!(addresses(&records).iter().all(|a| *a == (CLIENT6.into(), SERVER6.into())), "{records:?}");
    let (ret, records) = f.run6(PROG_TO_ENDPOINT, CLIENT6, SERVER6, udp(54));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    assert_eq!(verdicts(&records), vec![(verdict::DENIED, match_type::NONE, 54)]);
    // The reply of the allowed connection leaves without a new verdict.
    let (ret, records) = f.run6(PROG_FROM_ENDPOINT, SERVER6, CLIENT6, Transport::Udp { sport: 53, dport: 5353 });
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert!(verdicts(&records).is_empty());
    // The client's IPv4 address is not its IPv6 one: an outside IPv6 host is the world, denied.
    let (ret, _) = f.run6(PROG_TO_ENDPOINT, OUTSIDE6, SERVER6, udp(53));
    assert_eq!(ret, TC_ACT_SHOT);
}

#[test]
fn an_ipv6_packet_with_another_source_is_dropped_as_invalid_source() {
    let mut f = fixture(SERVER_DNS_ONLY, "v6-spoof");
    for spoofed in [CLIENT6, OUTSIDE6, LINK_LOCAL, Ipv6Addr::UNSPECIFIED] {
        let (ret, records) = f.run6(PROG_FROM_ENDPOINT, spoofed, FAR6, udp(53));
        assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::INVALID_SOURCE_IP]), "{spoofed}");
    }
    let (ret, _) = f.run6(PROG_FROM_ENDPOINT, SERVER6, FAR6, udp(53));
    assert_eq!(ret, TC_ACT_UNSPEC, "its own IPv6 address passes (egress is open)");
    assert!(f.datapath.counters().unwrap().get(Counter::InvalidSource) >= 4);
}

/// An ICMPv6 message of `icmp_type` with hop limit `hop_limit`.
fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, hop_limit: u8) -> Vec<u8> {
    ipv6_frame(src, dst, protocol::ICMPV6, &[icmp_type, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], hop_limit)
}

#[test]
fn neighbour_discovery_always_passes_and_cannot_cover_anything_else() {
    // The server is isolated for ingress; ND must work anyway, both ways.
    let mut f = fixture(SERVER_DNS_ONLY, "v6-nd");
    let solicited = "ff02::1:ff00:b".parse().unwrap();
    let cases = [
        // The node resolving the pod, the pod answering, the pod resolving its gateway from its
        // link-local address, duplicate address detection from ::, a router solicitation, an MLD report.
        (PROG_TO_ENDPOINT, icmpv6("fe80::1".parse().unwrap(), solicited, 135, 255)),
        (PROG_FROM_ENDPOINT, icmpv6(SERVER6, "fe80::1".parse().unwrap(), 136, 255)),
        (PROG_FROM_ENDPOINT, icmpv6(LINK_LOCAL, solicited, 135, 255)),
        (PROG_FROM_ENDPOINT, icmpv6(Ipv6Addr::UNSPECIFIED, solicited, 135, 255)),
        (PROG_FROM_ENDPOINT, icmpv6(LINK_LOCAL, "ff02::2".parse().unwrap(), 133, 255)),
        (PROG_FROM_ENDPOINT, icmpv6(LINK_LOCAL, "ff02::16".parse().unwrap(), 143, 1)),
    ];
    for (program, frame) in &cases {
        let (ret, records) = f.run_frame(program, frame);
        assert_eq!(ret, TC_ACT_UNSPEC, "{program}: ICMPv6 type {}", frame[54]);
        assert!(records.is_empty(), "link control is neither traced nor decided: {records:?}");
    }
    assert!(f.datapath.counters().unwrap().get(Counter::LinkControl) >= cases.len() as u64);
    // A neighbour solicitation that was routed (hop limit below 255) is not link control: into the isolated
    // pod it is ordinary ICMPv6 and denied.
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &icmpv6(CLIENT6, SERVER6, 135, 254));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    // ND is no cover for a borrowed global address.
    let (ret, records) = f.run_frame(PROG_FROM_ENDPOINT, &icmpv6(CLIENT6, solicited, 135, 255));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::INVALID_SOURCE_IP]));
}

#[test]
fn ipv4_mapped_ipv6_addresses_are_dropped_as_invalid() {
    let mut f = fixture(SERVER_DNS_ONLY, "v6-mapped");
    // `::ffff:10.200.0.10` would alias the client's IPv4 identity in the ipcache.
    let mapped: Ipv6Addr = "::ffff:10.200.0.10".parse().unwrap();
    let (ret, records) = f.run6(PROG_TO_ENDPOINT, mapped, SERVER6, udp(53));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::INVALID_PACKET]));
    assert!(verdicts(&records).is_empty());
    let (ret, records) = f.run6(PROG_FROM_ENDPOINT, SERVER6, mapped, udp(53));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::INVALID_PACKET]));
}

#[test]
fn extension_headers_are_followed_and_a_chain_too_long_is_dropped() {
    let mut f = fixture(SERVER_DNS_ONLY, "v6-ext");
    let (l4_protocol, l4) = ipv6_l4(udp(53));
    // Hop-by-hop, destination options, routing: the UDP header behind them decides.
    let mut payload = options_header(next_header::DEST_OPTS);
    payload.extend(options_header(next_header::ROUTING));
    payload.extend(options_header(l4_protocol));
    payload.extend(&l4);
    let frame = ipv6_frame(CLIENT6, SERVER6, next_header::HOP_BY_HOP, &payload, 64);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &frame);
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert_eq!(verdicts(&records), vec![(verdict::ALLOWED, match_type::L3_L4, 53)]);
    // Behind them, a denied port is still seen.
    let (_, l4_denied) = ipv6_l4(udp(54));
    let mut payload = options_header(l4_protocol);
    payload.extend(&l4_denied);
    let frame = ipv6_frame(CLIENT6, SERVER6, next_header::DEST_OPTS, &payload, 64);
    assert_eq!(f.run_frame(PROG_TO_ENDPOINT, &frame).0, TC_ACT_SHOT);
    // Seven extension headers: more than the parser follows. Dropped, never passed unread.
    let mut payload = Vec::new();
    for _ in 0..7 {
        payload.extend(options_header(next_header::DEST_OPTS));
    }
    let last = payload.len() - 8;
    payload[last] = l4_protocol;
    payload.extend(&l4);
    let frame = ipv6_frame(CLIENT6, SERVER6, next_header::DEST_OPTS, &payload, 64);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &frame);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::CT_TRUNCATED_OR_INVALID_HEADER]));
    // An extension header that runs past the packet.
    let frame = ipv6_frame(CLIENT6, SERVER6, next_header::DEST_OPTS, &[17, 200, 0, 0], 64);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &frame);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::CT_TRUNCATED_OR_INVALID_HEADER]));
}

/// A UDP datagram to `dport` over IPv6 in two fragments: the UDP header with 16 bytes, then 24 more.
fn udp_fragments6(id: u32, dport: u16) -> (Vec<u8>, Vec<u8>) {
    let mut first = fragment_header(protocol::UDP, 0, true, id);
    let mut udp = vec![0u8; 8 + 16];
    udp[0..2].copy_from_slice(&5353u16.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(8u16 + 40).to_be_bytes());
    first.extend(udp);
    let mut later = fragment_header(protocol::UDP, 3, false, id);
    later.extend([7u8; 24]);
    (
        ipv6_frame(CLIENT6, SERVER6, next_header::FRAGMENT, &first, 64),
        ipv6_frame(CLIENT6, SERVER6, next_header::FRAGMENT, &later, 64),
    )
}

#[test]
fn ipv6_fragments_take_the_verdict_of_their_first_fragment() {
    let mut f = fixture(SERVER_DNS_ONLY, "v6-frag");
    let (first, later) = udp_fragments6(0x1000_0001, 53);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &first);
    assert_eq!(ret, TC_ACT_UNSPEC);
    assert_eq!(verdicts(&records), vec![(verdict::ALLOWED, match_type::L3_L4, 53)]);
    assert_eq!(f.run_frame(PROG_TO_ENDPOINT, &later).0, TC_ACT_UNSPEC, "the rest of an allowed datagram");
    let (first, later) = udp_fragments6(0x1000_0002, 54);
    assert_eq!(f.run_frame(PROG_TO_ENDPOINT, &first).0, TC_ACT_SHOT);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &later);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    let Some(Record::Drop(d)) = records.first() else { panic!("{records:?}") };
    assert_eq!(d.flow.dport, 54, "the later fragment's record carries its datagram's ports");
    // The identification is 32 bits: an id differing only above bit 16 is another datagram.
    let (_, orphan) = udp_fragments6(0x2000_0001, 53);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &orphan);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::FRAGMENT_WITHOUT_FIRST]));
    // A first fragment too short for its UDP header.
    let mut tiny = fragment_header(protocol::UDP, 0, true, 0x1000_0003);
    tiny.extend([0x14, 0xe9, 0, 53]);
    let frame = ipv6_frame(CLIENT6, SERVER6, next_header::FRAGMENT, &tiny, 64);
    let (ret, records) = f.run_frame(PROG_TO_ENDPOINT, &frame);
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::CT_TRUNCATED_OR_INVALID_HEADER]));
}

#[test]
fn icmpv6_echo_is_tracked_and_packet_too_big_passes_as_related() {
    let mut f = fixture(SERVER_DNS_ONLY, "v6-icmp");
    let echo = |reply, id| Transport::IcmpEcho { reply, id };
    // The isolated server pings out; the reply comes back, an unasked reply does not.
    assert_eq!(f.run6(PROG_FROM_ENDPOINT, SERVER6, FAR6, echo(false, 7)).0, TC_ACT_UNSPEC);
    let (ret, records) = f.run6(PROG_TO_ENDPOINT, FAR6, SERVER6, echo(true, 7));
    assert_eq!(ret, TC_ACT_UNSPEC, "the reply of the server's own ping");
    assert!(verdicts(&records).is_empty());
    let (ret, records) = f.run6(PROG_TO_ENDPOINT, FAR6, SERVER6, echo(true, 8));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
    // Path-MTU discovery: "packet too big" about the server's own UDP flow is related.
    assert_eq!(f.run6(PROG_FROM_ENDPOINT, SERVER6, FAR6, udp(9000)).0, TC_ACT_UNSPEC);
    let too_big = |dport| Transport::Icmpv6Error {
        icmp_type: 2,
        code: 0,
        quoted: quote6(SERVER6, FAR6, Transport::Udp { sport: 5353, dport }),
    };
    let (ret, records) = f.run6(PROG_TO_ENDPOINT, FAR6, SERVER6, too_big(9000));
    assert_eq!(ret, TC_ACT_UNSPEC);
    let states = trace_states(&records);
    assert_eq!(states, vec![ct_state::RELATED]);
    // About a flow the server never had: ordinary ICMPv6 into an isolated pod.
    let (ret, records) = f.run6(PROG_TO_ENDPOINT, FAR6, SERVER6, too_big(9001));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]));
}

#[test]
fn ipv6_ip_blocks_with_except_match_ipv6_peers_only() {
    let mut f = fixture(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-range, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{ipBlock: {cidr: 'fd00:10:200::/64', except: ['fd00:10:200::a/128']}}]
",
        "v6-block",
    );
    assert_eq!(f.run6(PROG_TO_ENDPOINT, OUTSIDE6, SERVER6, udp(53)).0, TC_ACT_UNSPEC, "inside the block");
    let (ret, records) = f.run6(PROG_TO_ENDPOINT, CLIENT6, SERVER6, udp(53));
    assert_eq!((ret, drop_reasons(&records)), (TC_ACT_SHOT, vec![drop_reason::POLICY_DENIED]), "the except");
    assert_eq!(f.run6(PROG_TO_ENDPOINT, FAR6, SERVER6, udp(53)).0, TC_ACT_SHOT, "outside the block");
    let (ret, _) = f.run(PROG_TO_ENDPOINT, "192.0.2.7".parse().unwrap(), flowgate_tests::test_run::SERVER, udp(53));
    assert_eq!(ret, TC_ACT_SHOT, "an IPv6 block admits no IPv4 peer");
}
