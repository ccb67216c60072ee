//! Enrichment: a decoded kernel record becomes a [`Flow`] with both sides resolved to endpoints (id,
//! namespace, pod, labels, identity), CIDR identities or the world, and policy verdicts resolved to the
//! policies that decided. Lookups go through the [`PeerLookup`] and [`PolicyLookup`] traits so this stage
//! stays pure and tests use fakes.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use flowgate_common::{
    FlowTuple, drop_reason, identity, ip,
    policy::{direction, verdict},
    record::{ct_state, observation_point},
};
use flowgate_proto::flow::{
    CtState, EventType, Flow, MatchType, Peer, PolicyAttribution, PolicyName, Protocol, TcpFlags, TrafficDirection,
    Verdict,
};

use crate::{clock::KtimeClock, decode::Record};

/// Resolves endpoints, addresses and identities to peers.
pub trait PeerLookup {
    /// The local endpoint with this id.
    fn endpoint(&self, id: u16) -> Option<Arc<Peer>>;
    /// The local endpoint with this address.
    fn by_ip(&self, ip: IpAddr) -> Option<Arc<Peer>>;
    /// A non-endpoint identity (a CIDR identity), with its labels.
    fn identity(&self, identity: u32) -> Option<Arc<Peer>>;
}

/// Resolves the rule ids of the policy map and the isolation of endpoints to policy names.
pub trait PolicyLookup {
    /// Policies behind a rule id.
    fn rule(&self, rule_id: u32) -> Vec<PolicyName>;
    /// Policies that isolate the endpoint in this direction (`policy::direction`).
    fn isolated_by(&self, endpoint_id: u16, direction: u8) -> Vec<PolicyName>;
}

/// A lookup that knows no policies (before any is loaded).
pub struct NoPolicy;

impl PolicyLookup for NoPolicy {
    fn rule(&self, _: u32) -> Vec<PolicyName> {
        Vec::new()
    }
    fn isolated_by(&self, _: u16, _: u8) -> Vec<PolicyName> {
        Vec::new()
    }
}

/// An immutable view of the endpoints and identities, swapped whole when they change.
#[derive(Debug, Default)]
pub struct PeerSnapshot {
    pub by_id: HashMap<u16, Arc<Peer>>,
    pub by_ip: HashMap<IpAddr, Arc<Peer>>,
    pub identities: HashMap<u32, Arc<Peer>>,
}

impl PeerLookup for PeerSnapshot {
    fn endpoint(&self, id: u16) -> Option<Arc<Peer>> {
        self.by_id.get(&id).cloned()
    }

    fn by_ip(&self, ip: IpAddr) -> Option<Arc<Peer>> {
        self.by_ip.get(&ip).cloned()
    }

    fn identity(&self, identity: u32) -> Option<Arc<Peer>> {
        self.identities.get(&identity).cloned()
    }
}

/// Enriches records; holds the shared peer for addresses outside the node.
pub struct Enricher {
    clock: KtimeClock,
    world: Arc<Peer>,
}

/// The parts every record type shares.
struct Common<'a> {
    ktime_ns: u64,
    cpu: u32,
    flow: &'a FlowTuple,
    endpoint_id: u16,
    /// `policy::direction` at the endpoint.
    dir: u8,
    ifindex: u32,
    pkt_len: u32,
    remote_identity: u32,
}

impl Enricher {
    pub fn new(clock: KtimeClock) -> Self {
        let world =
            Arc::new(Peer { identity: identity::WORLD, labels: vec![identity::WORLD_LABEL.into()], ..Peer::default() });
        Self { clock, world }
    }

    /// The remote side: a local endpoint by address, else the identity the datapath resolved, else the world.
    fn remote(&self, peers: &impl PeerLookup, ip: IpAddr, identity: u32) -> Arc<Peer> {
        peers
            .by_ip(ip)
            .or_else(|| {
                (identity != identity::ANY && identity != identity::WORLD).then(|| peers.identity(identity)).flatten()
            })
            .unwrap_or_else(|| Arc::clone(&self.world))
    }

    fn base(&self, c: &Common<'_>, peers: &impl PeerLookup, event_type: EventType, verdict: Verdict) -> Flow {
        // A frame without an IP layer (an unsupported ethertype's drop) has no addresses: shown as before
        // IPv6, `0.0.0.0`, rather than as IPv6's unspecified address.
        let no_ip = c.flow.saddr == ip::UNSPECIFIED && c.flow.daddr == ip::UNSPECIFIED;
        let (source_ip, destination_ip) = if no_ip {
            (IpAddr::from([0, 0, 0, 0]), IpAddr::from([0, 0, 0, 0]))
        } else {
            (ip::to_ip(&c.flow.saddr), ip::to_ip(&c.flow.daddr))
        };
        let local = peers.endpoint(c.endpoint_id);
        // The endpoint is the source when the packet leaves it, the destination when it enters.
        let (source, destination, traffic_direction) = match (c.dir, local) {
            (direction::EGRESS, Some(ep)) => {
                (ep, self.remote(peers, destination_ip, c.remote_identity), TrafficDirection::Egress)
            }
            (_, Some(ep)) => (self.remote(peers, source_ip, c.remote_identity), ep, TrafficDirection::Ingress),
            (_, None) => {
                (self.remote(peers, source_ip, 0), self.remote(peers, destination_ip, 0), TrafficDirection::Unknown)
            }
        };
        let protocol = Protocol::from_number(c.flow.protocol);
        // For ICMP the tuple's ports are conntrack's (the echo identifier); the flow shows type and code.
        let (ports, icmp) = match protocol {
            Protocol::Icmp | Protocol::Icmpv6 => ((0, 0), (c.flow.icmp_type, c.flow.icmp_code)),
            _ => ((c.flow.sport, c.flow.dport), (0, 0)),
        };
        Flow {
            time_ns: self.clock.to_unix_ns(c.ktime_ns),
            ktime_ns: c.ktime_ns,
            event_type,
            verdict,
            drop_reason: 0,
            source_ip,
            destination_ip,
            protocol,
            source_port: ports.0,
            destination_port: ports.1,
            tcp_flags: TcpFlags(c.flow.tcp_flags),
            icmp_type: icmp.0,
            icmp_code: icmp.1,
            source,
            destination,
            endpoint_id: c.endpoint_id,
            traffic_direction,
            ifindex: c.ifindex,
            packet_len: c.pkt_len,
            is_reply: None,
            match_type: None,
            policy: None,
            ct_state: None,
            cpu: c.cpu,
            policy_revision: None,
        }
    }

    pub fn enrich(&self, record: &Record, peers: &impl PeerLookup, policy: &impl PolicyLookup) -> Flow {
        match record {
            Record::Trace(t) => {
                let dir = if t.observation_point == observation_point::FROM_ENDPOINT {
                    direction::EGRESS
                } else {
                    direction::INGRESS
                };
                let c = Common {
                    ktime_ns: t.header.ktime_ns,
                    cpu: t.header.cpu,
                    flow: &t.flow,
                    endpoint_id: t.endpoint_id,
                    dir,
                    ifindex: t.ifindex,
                    pkt_len: t.pkt_len,
                    remote_identity: t.remote_identity,
                };
                let mut flow = self.base(&c, peers, EventType::Trace, Verdict::Forwarded);
                flow.ct_state = match t.ct_state {
                    ct_state::NEW => Some(CtState::New),
                    ct_state::ESTABLISHED => Some(CtState::Established),
                    ct_state::REPLY => Some(CtState::Reply),
                    ct_state::RELATED => Some(CtState::Related),
                    _ => None,
                };
                flow.is_reply = flow.ct_state.map(|s| s == CtState::Reply);
                flow
            }
            Record::PolicyVerdict(v) => {
                let c = Common {
                    ktime_ns: v.header.ktime_ns,
                    cpu: v.header.cpu,
                    flow: &v.flow,
                    endpoint_id: v.endpoint_id,
                    dir: v.direction,
                    ifindex: v.ifindex,
                    pkt_len: v.pkt_len,
                    remote_identity: v.remote_identity,
                };
                let outcome = match v.verdict {
                    verdict::ALLOWED => Verdict::Forwarded,
                    verdict::AUDIT => Verdict::Audit,
                    _ => Verdict::Dropped,
                };
                let mut flow = self.base(&c, peers, EventType::PolicyVerdict, outcome);
                flow.is_reply = Some(false);
                flow.match_type = Some(MatchType::from_kernel(v.match_type));
                flow.policy = Some(if v.rule_id != 0 {
                    PolicyAttribution::AllowedBy(policy.rule(v.rule_id))
                } else {
                    PolicyAttribution::DefaultDeny { isolated_by: policy.isolated_by(v.endpoint_id, v.direction) }
                });
                if outcome == Verdict::Dropped {
                    flow.drop_reason = drop_reason::POLICY_DENIED;
                }
                flow
            }
            Record::Drop(d) => {
                let c = Common {
                    ktime_ns: d.header.ktime_ns,
                    cpu: d.header.cpu,
                    flow: &d.flow,
                    endpoint_id: d.endpoint_id,
                    dir: d.direction,
                    ifindex: d.ifindex,
                    pkt_len: d.pkt_len,
                    remote_identity: d.remote_identity,
                };
                let mut flow = self.base(&c, peers, EventType::Drop, Verdict::Dropped);
                flow.drop_reason = d.reason;
                flow.policy_revision = (d.revision != 0).then_some(u64::from(d.revision));
                if d.reason == drop_reason::POLICY_DENIED || d.reason == drop_reason::CONNECTION_REVOKED {
                    flow.policy = Some(PolicyAttribution::DefaultDeny {
                        isolated_by: policy.isolated_by(d.endpoint_id, d.direction),
                    });
                }
                flow
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use flowgate_common::{PolicyVerdictRecord, RecordHeader, TraceRecord, policy::match_type};
    use flowgate_proto::flow::fixtures::endpoint_peer;

    use super::*;

    fn lookup() -> PeerSnapshot {
        let mut s = PeerSnapshot::default();
        for id in [1u16, 2] {
            let p = endpoint_peer(id);
            s.by_ip.insert(std::net::Ipv4Addr::new(10, 0, 0, id as u8).into(), Arc::clone(&p));
            s.by_id.insert(id, p);
        }
        s.identities.insert(
            1 << 24,
            Arc::new(Peer { identity: 1 << 24, labels: vec!["cidr:192.0.2.0/24".into()], ..Peer::default() }),
        );
        s
    }

    fn tuple(daddr: [u8; 4]) -> FlowTuple {
        FlowTuple {
            saddr: ip::v4_mapped([10, 0, 0, 1]),
            daddr: ip::v4_mapped(daddr),
            sport: 40000,
            dport: 80,
            protocol: 6,
            tcp_flags: TcpFlags::SYN,
            icmp_type: 0,
            icmp_code: 0,
        }
    }

    fn trace(point: u8, endpoint_id: u16, daddr: [u8; 4]) -> Record {
        Record::Trace(TraceRecord {
            header: RecordHeader { ktime_ns: 5, cpu: 1, ..RecordHeader::default() },
            flow: tuple(daddr),
            endpoint_id,
            observation_point: point,
            ct_state: ct_state::NEW,
            ..TraceRecord::default()
        })
    }

    struct FakePolicy;
    impl PolicyLookup for FakePolicy {
        fn rule(&self, rule_id: u32) -> Vec<PolicyName> {
            vec![PolicyName { namespace: "default".into(), name: format!("rule-{rule_id}") }]
        }
        fn isolated_by(&self, endpoint_id: u16, direction: u8) -> Vec<PolicyName> {
            vec![PolicyName { namespace: "default".into(), name: format!("isolates-{endpoint_id}-{direction}") }]
        }
    }

    #[test]
    fn egress_from_endpoint_resolves_both_sides() {
        let e = Enricher::new(KtimeClock::new());
        let f = e.enrich(&trace(observation_point::FROM_ENDPOINT, 1, [10, 0, 0, 2]), &lookup(), &NoPolicy);
        assert_eq!(f.traffic_direction, TrafficDirection::Egress);
        assert_eq!(f.source.pod_name, "pod-1");
        assert_eq!(f.destination.pod_name, "pod-2");
        assert_eq!((f.source_port, f.destination_port, f.protocol), (40000, 80, Protocol::Tcp));
        assert_eq!((f.ct_state, f.is_reply), (Some(CtState::New), Some(false)));
    }

    #[test]
    fn ingress_and_unknown_addresses_are_world() {
        let e = Enricher::new(KtimeClock::new());
        let f = e.enrich(&trace(observation_point::TO_ENDPOINT, 2, [10, 0, 0, 2]), &lookup(), &NoPolicy);
        assert_eq!(f.traffic_direction, TrafficDirection::Ingress);
        assert_eq!(f.destination.endpoint_id, 2);
        let f = e.enrich(&trace(observation_point::FROM_ENDPOINT, 1, [192, 0, 2, 9]), &lookup(), &NoPolicy);
        assert_eq!(f.destination.identity, identity::WORLD);
        assert_eq!(f.destination.labels, vec!["reserved:world".to_string()]);
    }

    fn verdict_record(v: u8, rule_id: u32, remote_identity: u32, daddr: [u8; 4]) -> Record {
        Record::PolicyVerdict(PolicyVerdictRecord {
            flow: tuple(daddr),
            endpoint_id: 1,
            direction: direction::EGRESS,
            verdict: v,
            match_type: if rule_id != 0 { match_type::L3_L4 } else { match_type::NONE },
            remote_identity,
            rule_id,
            ..PolicyVerdictRecord::default()
        })
    }

    #[test]
    fn allowed_verdict_names_the_policies_of_its_rule() {
        let e = Enricher::new(KtimeClock::new());
        let f = e.enrich(&verdict_record(verdict::ALLOWED, 7, 1 << 24, [192, 0, 2, 9]), &lookup(), &FakePolicy);
        assert_eq!(f.event_type, EventType::PolicyVerdict);
        assert_eq!(f.verdict, Verdict::Forwarded);
        assert_eq!(f.match_type, Some(MatchType::L3L4));
        assert_eq!(f.destination.labels, vec!["cidr:192.0.2.0/24".to_string()], "CIDR identity resolved");
        let Some(PolicyAttribution::AllowedBy(by)) = &f.policy else { panic!("{:?}", f.policy) };
        assert_eq!(by[0].to_string(), "default/rule-7");
    }

    #[test]
    fn denied_verdict_says_default_deny_and_who_isolates() {
        let e = Enricher::new(KtimeClock::new());
        let f = e.enrich(&verdict_record(verdict::DENIED, 0, 1001, [10, 0, 0, 2]), &lookup(), &FakePolicy);
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.drop_reason, 133);
        assert_eq!(
            f.policy,
            Some(PolicyAttribution::DefaultDeny {
                isolated_by: vec![PolicyName { namespace: "default".into(), name: "isolates-1-1".into() }]
            })
        );
        let audit = e.enrich(&verdict_record(verdict::AUDIT, 0, 1001, [10, 0, 0, 2]), &lookup(), &FakePolicy);
        assert_eq!(audit.verdict, Verdict::Audit);
    }

    #[test]
    fn a_revoked_connection_drop_names_its_revision_and_who_isolates() {
        let e = Enricher::new(KtimeClock::new());
        let drop = |reason, revision| {
            Record::Drop(flowgate_common::DropRecord {
                flow: tuple([10, 0, 0, 2]),
                endpoint_id: 1,
                direction: direction::EGRESS,
                reason,
                revision,
                ..flowgate_common::DropRecord::default()
            })
        };
        let f = e.enrich(&drop(drop_reason::CONNECTION_REVOKED, 9), &lookup(), &FakePolicy);
        assert_eq!((f.event_type, f.verdict, f.drop_reason), (EventType::Drop, Verdict::Dropped, 240));
        assert_eq!(f.policy_revision, Some(9));
        assert!(matches!(&f.policy, Some(PolicyAttribution::DefaultDeny { isolated_by }) if isolated_by.len() == 1));
        let v1 = e.enrich(&drop(drop_reason::POLICY_DENIED, 0), &lookup(), &FakePolicy);
        assert_eq!(v1.policy_revision, None, "a version-1 record has no revision");
    }
}
