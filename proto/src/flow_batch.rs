//! Compact event batches (protocol 1.5), sent to clients that said 1.5 or later in their hello. A flow
//! names its two peers by number instead of carrying them: each peer (namespace, pod, labels) goes over
//! the connection once, in the batch that first uses it, and the receiver keeps them in a table. The
//! batch is also encoded with structs as arrays ([`crate::codec::encode_compact`]), so no field names
//! travel with every flow. Both cut what a flow costs to encode, send and decode by several times;
//! older clients keep getting [`crate::ServerMessage::Events`].
//!
//! Compatibility: [`CompactFlow`]'s fields are positional, so a field is only ever added at the end,
//! with `#[serde(default)]`, under a minor version bump.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::IpAddr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    flow::{
        CtState, EventType, Flow, MatchType, Peer, PolicyAttribution, Protocol, TcpFlags, TrafficDirection, Verdict,
    },
    message::{Event, LostEvents},
};

/// Peers a sender keeps numbered before it starts its table over (at the start of a batch, with
/// [`FlowBatch::reset`]); also about how many the receiver holds. A node has a few hundred endpoints and
/// identities, so a reset is rare; it bounds memory when endpoints churn.
pub const MAX_PEERS: usize = 16_384;

/// One frame's worth of events for a 1.5 client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowBatch {
    /// The receiver forgets the peers defined before this batch; numbering starts again at 0.
    pub reset: bool,
    /// Peers new to this connection, numbered on from the last one defined, in order.
    pub peers: Vec<Peer>,
    pub events: Vec<CompactEvent>,
}

/// One event of a [`FlowBatch`], in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CompactEvent {
    Flow(CompactFlow),
    Lost(LostEvents),
}

/// A [`Flow`] with its peers as numbers in the connection's peer table. Field meanings are [`Flow`]'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompactFlow {
    pub time_ns: u64,
    pub ktime_ns: u64,
    pub event_type: EventType,
    pub verdict: Verdict,
    pub drop_reason: u8,
    #[serde(with = "crate::ip_wire")]
    pub source_ip: IpAddr,
    #[serde(with = "crate::ip_wire")]
    pub destination_ip: IpAddr,
    pub protocol: Protocol,
    pub source_port: u16,
    pub destination_port: u16,
    pub tcp_flags: TcpFlags,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Number of the source peer in the peer table.
    pub source: u32,
    /// Number of the destination peer in the peer table.
    pub destination: u32,
    pub endpoint_id: u16,
    pub traffic_direction: TrafficDirection,
    pub ifindex: u32,
    pub packet_len: u32,
    pub is_reply: Option<bool>,
    pub match_type: Option<MatchType>,
    pub policy: Option<PolicyAttribution>,
    pub ct_state: Option<CtState>,
    pub cpu: u32,
    pub policy_revision: Option<u64>,
}

impl CompactFlow {
    fn new(flow: &Flow, source: u32, destination: u32) -> Self {
        Self {
            time_ns: flow.time_ns,
            ktime_ns: flow.ktime_ns,
            event_type: flow.event_type,
            verdict: flow.verdict,
            drop_reason: flow.drop_reason,
            source_ip: flow.source_ip,
            destination_ip: flow.destination_ip,
            protocol: flow.protocol,
            source_port: flow.source_port,
            destination_port: flow.destination_port,
            tcp_flags: flow.tcp_flags,
            icmp_type: flow.icmp_type,
            icmp_code: flow.icmp_code,
            source,
            destination,
            endpoint_id: flow.endpoint_id,
            traffic_direction: flow.traffic_direction,
            ifindex: flow.ifindex,
            packet_len: flow.packet_len,
            is_reply: flow.is_reply,
            match_type: flow.match_type,
            policy: flow.policy.clone(),
            ct_state: flow.ct_state,
            cpu: flow.cpu,
            policy_revision: flow.policy_revision,
        }
    }

    fn into_flow(self, source: Arc<Peer>, destination: Arc<Peer>) -> Flow {
        Flow {
            time_ns: self.time_ns,
            ktime_ns: self.ktime_ns,
            event_type: self.event_type,
            verdict: self.verdict,
            drop_reason: self.drop_reason,
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            protocol: self.protocol,
            source_port: self.source_port,
            destination_port: self.destination_port,
            tcp_flags: self.tcp_flags,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            source,
            destination,
            endpoint_id: self.endpoint_id,
            traffic_direction: self.traffic_direction,
            ifindex: self.ifindex,
            packet_len: self.packet_len,
            is_reply: self.is_reply,
            match_type: self.match_type,
            policy: self.policy,
            ct_state: self.ct_state,
            cpu: self.cpu,
            policy_revision: self.policy_revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlowBatchError {
    #[error("a flow names peer {number}, but only {known} peers are defined on this connection")]
    UnknownPeer { number: u32, known: usize },
}

/// The sender's side: numbers the peers of one connection. A peer is found by the address of its
/// `Arc` first (the enricher shares one per endpoint and identity, so this is the usual case and costs
/// no hashing of strings), then by value (a new snapshot of the same peer keeps its number).
#[derive(Default)]
pub struct PeerNumbers {
    by_address: HashMap<usize, u32, BuildHasherDefault<AddressHasher>>,
    by_value: HashMap<Arc<Peer>, u32>,
    /// Every `Arc` whose address is in `by_address`, kept alive so that no address is reused by
    /// another peer while it is a key.
    held: Vec<Arc<Peer>>,
    /// Defined since the last batch was taken.
    new: Vec<Peer>,
    reset: bool,
}

/// Hashes the address of a peer's `Arc` by one multiplication. Addresses are the process's own (no peer
/// chooses them), so SipHash's defence against chosen keys buys nothing here, and its cost showed in the
/// sending thread's profile: two lookups per flow.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.write_u64(u64::from(*b) ^ self.0.rotate_left(8)));
    }

    fn write_u64(&mut self, n: u64) {
        // Allocations are 16-aligned: the low bits say nothing.
        self.0 = (n >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

impl PeerNumbers {
    /// Encodes `events` as one batch, defining the peers it is the first to use. The table starts over
    /// (and the batch says so) when it has grown past [`MAX_PEERS`].
    pub fn batch(&mut self, events: &[Event]) -> FlowBatch {
        if self.by_value.len() >= MAX_PEERS || self.held.len() >= 2 * MAX_PEERS {
            *self = Self { reset: true, ..Self::default() };
        }
        let events = events
            .iter()
            .map(|event| match event {
                Event::Flow(flow) => {
                    let (source, destination) = (self.number(&flow.source), self.number(&flow.destination));
                    CompactEvent::Flow(CompactFlow::new(flow, source, destination))
                }
                Event::Lost(lost) => CompactEvent::Lost(*lost),
            })
            .collect();
        FlowBatch { reset: std::mem::take(&mut self.reset), peers: std::mem::take(&mut self.new), events }
    }

    fn number(&mut self, peer: &Arc<Peer>) -> u32 {
        let address = Arc::as_ptr(peer) as usize;
        if let Some(&number) = self.by_address.get(&address) {
            return number;
        }
        let number = match self.by_value.get(peer) {
            Some(&number) => number,
            None => {
                let number = u32::try_from(self.by_value.len()).expect("the table is bounded by MAX_PEERS");
                self.by_value.insert(Arc::clone(peer), number);
                self.new.push(Peer::clone(peer));
                number
            }
        };
        self.by_address.insert(address, number);
        self.held.push(Arc::clone(peer));
        number
    }
}

/// The receiver's side: the peers defined on one connection, and batches turned back into events.
#[derive(Default)]
pub struct PeerTable {
    peers: Vec<Arc<Peer>>,
}

impl PeerTable {
    /// The batch's events, with each flow's peers filled in from this table (after adding the batch's
    /// new peers).
    pub fn expand(&mut self, batch: FlowBatch) -> Result<Vec<Event>, FlowBatchError> {
        if batch.reset {
            self.peers.clear();
        }
        self.peers.extend(batch.peers.into_iter().map(Arc::new));
        let peer = |number: u32| {
            self.peers
                .get(number as usize)
                .cloned()
                .ok_or(FlowBatchError::UnknownPeer { number, known: self.peers.len() })
        };
        batch
            .events
            .into_iter()
            .map(|event| {
                Ok(match event {
                    CompactEvent::Flow(flow) => {
                        let (source, destination) = (peer(flow.source)?, peer(flow.destination)?);
                        Event::Flow(Arc::new(flow.into_flow(source, destination)))
                    }
                    CompactEvent::Lost(lost) => Event::Lost(lost),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        codec,
        flow::fixtures::{endpoint_peer, flow_between},
        message::{LossSource, ServerMessage},
    };

    fn flows(n: u16) -> Vec<Event> {
        (0..n).map(|i| Event::Flow(Arc::new(flow_between(1 + i % 3, 7, i)))).collect()
    }

    /// Through the wire: encoded compactly, decoded as any server message.
    fn wire(batch: FlowBatch) -> FlowBatch {
        let body = codec::encode_compact("server", &ServerMessage::FlowBatch(batch)).unwrap();
        match codec::decode("server", &body).unwrap() {
            ServerMessage::FlowBatch(batch) => batch,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batches_carry_each_peer_once_and_expand_to_the_same_events() {
        let (mut numbers, mut table) = (PeerNumbers::default(), PeerTable::default());
        let mut events = flows(10);
        events.insert(4, Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 5 }));
        let first = numbers.batch(&events);
        assert_eq!(first.peers.len(), 4, "pods 1, 2, 3 and 7, once each");
        assert_eq!(table.expand(wire(first)).unwrap(), events);
        // Equal peers in new `Arc`s (a new snapshot) keep their numbers: nothing new is sent.
        let again: Vec<Event> = (0..5u16)
            .map(|i| {
                let mut f = flow_between(2, 7, i);
                (f.source, f.destination) = (endpoint_peer(2), endpoint_peer(7));
                Event::Flow(Arc::new(f))
            })
            .collect();
        let second = numbers.batch(&again);
        assert!(second.peers.is_empty() && !second.reset);
        assert_eq!(table.expand(wire(second)).unwrap(), again);
    }

    #[test]
    fn a_full_table_starts_over_and_says_so() {
        let (mut numbers, mut table) = (PeerNumbers::default(), PeerTable::default());
        let many: Vec<Event> = (0..u16::try_from(MAX_PEERS / 2).unwrap())
            .map(|i| Event::Flow(Arc::new(flow_between(i, i.wrapping_add(20_000), i))))
            .collect();
        let first = numbers.batch(&many);
        assert_eq!(first.peers.len(), MAX_PEERS);
        assert_eq!(table.expand(wire(first)).unwrap(), many);
        let next = numbers.batch(&flows(2));
        assert!(next.reset, "the table was full");
        assert_eq!(next.peers.len(), 3);
        assert_eq!(table.expand(wire(next)).unwrap(), flows(2));
    }

    #[test]
    fn a_flow_naming_an_undefined_peer_is_an_error() {
        let mut batch = PeerNumbers::default().batch(&flows(1));
        batch.peers.clear();
        let err = PeerTable::default().expand(batch).unwrap_err();
        assert_eq!(err.to_string(), "a flow names peer 0, but only 0 peers are defined on this connection");
    }

    #[test]
    fn compact_frames_are_several_times_smaller() {
        let events = flows(1024);
        let named = codec::encode("server", &ServerMessage::Events(events.clone())).unwrap().len();
        let compact = codec::encode_compact("server", &ServerMessage::FlowBatch(PeerNumbers::default().batch(&events)))
            .unwrap()
            .len();
        assert!(compact * 3 < named, "{compact} bytes compact, {named} named");
    }
}
