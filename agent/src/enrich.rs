//! Enrichment: a decoded kernel record becomes a [`Flow`] with both sides resolved to endpoints (id,
//! namespace, pod, labels, identity) or to the world. Lookups go through the [`PeerLookup`] trait so this
//! stage stays pure and tests use a fake.

use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

use flowgate_common::{TraceRecord, record::observation_point};
use flowgate_proto::flow::{EventType, Flow, Peer, Protocol, TcpFlags, TrafficDirection, Verdict};

use crate::{decode::Record, identity::IDENTITY_WORLD, time::KtimeClock};

/// Resolves endpoints and addresses to peers.
pub trait PeerLookup {
    /// The local endpoint with this id.
    fn endpoint(&self, id: u16) -> Option<Arc<Peer>>;
    /// Whatever is known about an address: a local endpoint, or nothing (the world).
    fn by_ip(&self, ip: Ipv4Addr) -> Option<Arc<Peer>>;
}

/// An immutable view of the endpoints, swapped whole when they change.
#[derive(Debug, Default)]
pub struct PeerSnapshot {
    pub by_id: HashMap<u16, Arc<Peer>>,
    pub by_ip: HashMap<Ipv4Addr, Arc<Peer>>,
}

impl PeerLookup for PeerSnapshot {
    fn endpoint(&self, id: u16) -> Option<Arc<Peer>> {
        self.by_id.get(&id).cloned()
    }

    fn by_ip(&self, ip: Ipv4Addr) -> Option<Arc<Peer>> {
        self.by_ip.get(&ip).cloned()
    }
}

/// Enriches records; holds the shared peer for addresses outside the node.
pub struct Enricher {
    clock: KtimeClock,
    world: Arc<Peer>,
}

impl Enricher {
    pub fn new(clock: KtimeClock) -> Self {
        let world = Arc::new(Peer {
            identity: IDENTITY_WORLD,
            labels: vec!["reserved:world".into()],
            ..Peer::default()
        });
        Self { clock, world }
    }

    fn peer(&self, lookup: &impl PeerLookup, ip: Ipv4Addr) -> Arc<Peer> {
        lookup.by_ip(ip).unwrap_or_else(|| Arc::clone(&self.world))
    }

    pub fn enrich(&self, record: &Record, lookup: &impl PeerLookup) -> Flow {
        match record {
            Record::Trace(trace) => self.trace(trace, lookup),
        }
    }

    fn trace(&self, t: &TraceRecord, lookup: &impl PeerLookup) -> Flow {
        let source_ip = Ipv4Addr::from(t.flow.saddr.to_ne_bytes());
        let destination_ip = Ipv4Addr::from(t.flow.daddr.to_ne_bytes());
        let local = lookup.endpoint(t.endpoint_id);
        // The observing endpoint is the source when the packet leaves it, the destination when it enters.
        let (source, destination, direction) = match (t.observation_point, local) {
            (observation_point::FROM_ENDPOINT, Some(ep)) => {
                (ep, self.peer(lookup, destination_ip), TrafficDirection::Egress)
            }
            (observation_point::TO_ENDPOINT, Some(ep)) => {
                (self.peer(lookup, source_ip), ep, TrafficDirection::Ingress)
            }
            _ => (self.peer(lookup, source_ip), self.peer(lookup, destination_ip), TrafficDirection::Unknown),
        };
        let protocol = Protocol::from_number(t.flow.protocol);
        let (ports, icmp) = match protocol {
            Protocol::Icmp => ((0, 0), (t.flow.sport as u8, t.flow.dport as u8)),
            _ => ((t.flow.sport, t.flow.dport), (0, 0)),
        };
        Flow {
            time_ns: self.clock.to_unix_ns(t.header.ktime_ns),
            ktime_ns: t.header.ktime_ns,
            event_type: EventType::Trace,
            verdict: Verdict::Forwarded,
            drop_reason: 0,
            source_ip,
            destination_ip,
            protocol,
            source_port: ports.0,
            destination_port: ports.1,
            tcp_flags: TcpFlags(t.flow.tcp_flags),
            icmp_type: icmp.0,
            icmp_code: icmp.1,
            source,
            destination,
            endpoint_id: t.endpoint_id,
            traffic_direction: direction,
            ifindex: t.ifindex,
            packet_len: t.pkt_len,
            is_reply: None,
            match_type: None,
            policy: None,
            cpu: t.header.cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use flowgate_common::{FlowTuple, RecordHeader};
    use flowgate_proto::flow::fixtures::endpoint_peer;

    use super::*;

    fn lookup() -> PeerSnapshot {
        let mut s = PeerSnapshot::default();
        for id in [1u16, 2] {
            let p = endpoint_peer(id);
            s.by_ip.insert(Ipv4Addr::new(10, 0, 0, id as u8), Arc::clone(&p));
            s.by_id.insert(id, p);
        }
        s
    }

    fn trace(point: u8, endpoint_id: u16, daddr: [u8; 4]) -> Record {
        Record::Trace(TraceRecord {
            header: RecordHeader { ktime_ns: 5, cpu: 1, ..RecordHeader::default() },
            flow: FlowTuple {
                saddr: u32::from_ne_bytes([10, 0, 0, 1]),
                daddr: u32::from_ne_bytes(daddr),
                sport: 40000,
                dport: 80,
                protocol: 6,
                tcp_flags: TcpFlags::SYN,
                _pad: [0; 2],
            },
            endpoint_id,
            observation_point: point,
            ..TraceRecord::default()
        })
    }

    #[test]
    fn egress_from_endpoint_resolves_both_sides() {
        let e = Enricher::new(KtimeClock::new());
        let f = e.enrich(&trace(observation_point::FROM_ENDPOINT, 1, [10, 0, 0, 2]), &lookup());
        assert_eq!(f.traffic_direction, TrafficDirection::Egress);
        assert_eq!(f.source.pod_name, "pod-1");
        assert_eq!(f.destination.pod_name, "pod-2");
        assert_eq!((f.source_port, f.destination_port, f.protocol), (40000, 80, Protocol::Tcp));
    }

    #[test]
    fn ingress_and_unknown_addresses_are_world() {
        let e = Enricher::new(KtimeClock::new());
        let f = e.enrich(&trace(observation_point::TO_ENDPOINT, 2, [10, 0, 0, 2]), &lookup());
        assert_eq!(f.traffic_direction, TrafficDirection::Ingress);
        assert_eq!(f.destination.endpoint_id, 2);
        let f = e.enrich(&trace(observation_point::FROM_ENDPOINT, 1, [192, 0, 2, 9]), &lookup());
        assert_eq!(f.destination.identity, IDENTITY_WORLD);
        assert_eq!(f.destination.labels, vec!["reserved:world".to_string()]);
    }
}
