//! The connections the monitor has seen, one entry per connection (protocol and both address:port pairs,
//! oriented from the side that opened it), built from the same events as the flow view: the verdict taken on
//! it in each direction, the policy and match type that decided, packets and bytes seen, first and last seen,
//! its state (new, established, closed, denied, revoked) and its last events. Bounded: the least recently
//! active connection gives way. No drawing here (see `view::connections`).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use flowgate_common::drop_reason::CONNECTION_REVOKED;
use flowgate_proto::{
    Flow,
    flow::{CtState, EventType, MatchType, Peer, PolicyAttribution, Protocol, TcpFlags, TrafficDirection, Verdict},
};

/// Connections kept at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections dropped at once when the table is full (the least recently active).
pub const EVICTED_AT_ONCE: usize = MAX_CONNECTIONS / 8;
/// Events kept per connection (its detail pane).
pub const EVENTS_PER_CONNECTION: usize = 64;

/// A connection's identity: the 5-tuple, from the side that opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    pub protocol: Protocol,
    pub source_ip: IpAddr,
    pub source_port: u16,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

impl ConnectionKey {
    /// The key of `flow` as it travels (source to destination).
    pub fn of(flow: &Flow) -> Self {
        Self {
            protocol: flow.protocol,
            source_ip: flow.source_ip,
            source_port: flow.source_port,
            destination_ip: flow.destination_ip,
            destination_port: flow.destination_port,
        }
    }

    pub fn reversed(self) -> Self {
        Self {
            protocol: self.protocol,
            source_ip: self.destination_ip,
            source_port: self.destination_port,
            destination_ip: self.source_ip,
            destination_port: self.source_port,
        }
    }
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Allowed, no reply seen yet.
    New,
    /// Allowed and answered.
    Established,
    /// FIN or RST seen.
    Closed,
    /// A policy denied it.
    Denied,
    /// It was allowed, and a policy change made the datapath drop it (`CONNECTION_REVOKED`).
    Revoked,
}

impl ConnectionState {
    pub fn text(self) -> &'static str {
        match self {
            ConnectionState::New => "new",
            ConnectionState::Established => "established",
            ConnectionState::Closed => "closed",
            ConnectionState::Denied => "denied",
            ConnectionState::Revoked => "revoked",
        }
    }

    /// Denied and revoked connections are the ones to look at.
    pub fn is_refused(self) -> bool {
        matches!(self, ConnectionState::Denied | ConnectionState::Revoked)
    }
}

/// One direction's decision (a policy verdict, or a policy drop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub policy: Option<PolicyAttribution>,
    pub match_type: Option<MatchType>,
    /// The endpoint that decided (where the event was observed).
    pub endpoint_id: u16,
}

#[derive(Clone, Debug)]
pub struct Connection {
    pub key: ConnectionKey,
    /// The side that opened the connection, and the other one.
    pub source: Arc<Peer>,
    pub destination: Arc<Peer>,
    /// The decision of the opener's egress, and of the destination's ingress.
    pub egress: Option<Decision>,
    pub ingress: Option<Decision>,
    /// Direction of the first event seen (relative to the endpoint that observed it).
    pub direction: TrafficDirection,
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub replied: bool,
    pub closed: bool,
    pub revoked: bool,
    /// Order of the last event among every event seen (sorts by last activity).
    pub last_seq: u64,
    pub events: VecDeque<Arc<Flow>>,
}

impl Connection {
    fn new(key: ConnectionKey, flow: &Flow, reversed: bool) -> Self {
        let (source, destination) = if reversed {
            (flow.destination.clone(), flow.source.clone())
        } else {
            (flow.source.clone(), flow.destination.clone())
        };
        Self {
            key,
            source,
            destination,
            egress: None,
            ingress: None,
            direction: flow.traffic_direction,
            packets: 0,
            bytes: 0,
            first_ns: flow.time_ns,
            last_ns: flow.time_ns,
            replied: false,
            closed: false,
            revoked: false,
            last_seq: 0,
            events: VecDeque::new(),
        }
    }

    /// The decision that sums the connection up: a deny (either direction) first, then the destination's
    /// ingress, then the opener's egress.
    pub fn decision(&self) -> Option<&Decision> {
        let denied = |d: &&Decision| d.verdict == Verdict::Dropped;
        self.ingress
            .as_ref()
            .filter(denied)
            .or_else(|| self.egress.as_ref().filter(denied))
            .or_else(|| {
                let with_policy =
                    |d: &&Decision| matches!(&d.policy, Some(PolicyAttribution::AllowedBy(n)) if !n.is_empty());
                self.ingress.as_ref().filter(with_policy).or_else(|| self.egress.as_ref().filter(with_policy))
            })
            .or(self.ingress.as_ref())
            .or(self.egress.as_ref())
    }

    /// The direction of the deciding verdict (ingress at the destination, egress at the opener), else that of
    /// the first event seen.
    pub fn decision_direction(&self) -> TrafficDirection {
        match self.decision() {
            Some(d) if self.ingress.as_ref() == Some(d) => TrafficDirection::Ingress,
            Some(_) => TrafficDirection::Egress,
            None => self.direction,
        }
    }

    /// The verdict: denied (or dropped, when revoked) if either direction denied, audit if either direction
    /// only audited, allowed otherwise; FORWARDED when only forwarded packets were seen.
    pub fn verdict(&self) -> Verdict {
        let audited = [&self.ingress, &self.egress].into_iter().flatten().any(|d| d.verdict == Verdict::Audit);
        match self.decision() {
            _ if self.revoked => Verdict::Dropped,
            Some(d) if d.verdict == Verdict::Dropped => Verdict::Dropped,
            _ if audited => Verdict::Audit,
            Some(d) => d.verdict,
            None => Verdict::Forwarded,
        }
    }

    /// What a search looks through: both sides (namespace/pod, address:port, labels), the protocol, the
    /// state and every policy named.
    pub fn summary(&self) -> String {
        let side = |peer: &Peer, ip: IpAddr, port: u16| {
            format!(
                "{}/{} {} {}",
                peer.namespace,
                peer.pod_name,
                std::net::SocketAddr::new(ip, port),
                peer.labels.join(" ")
            )
        };
        let policies = [&self.egress, &self.ingress]
            .into_iter()
            .flatten()
            .map(|d| flowgate_proto::format::policy_text(d.policy.as_ref()))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{} -> {} {} {} {policies}",
            side(&self.source, self.key.source_ip, self.key.source_port),
            side(&self.destination, self.key.destination_ip, self.key.destination_port),
            self.key.protocol.name(),
            self.state().text()
        )
    }

    /// Whether a policy verdict or a policy drop was seen (not only forwarded packets).
    pub fn is_decided(&self) -> bool {
        self.egress.is_some() || self.ingress.is_some() || self.revoked
    }

    pub fn state(&self) -> ConnectionState {
        if self.revoked {
            ConnectionState::Revoked
        } else if self.decision().is_some_and(|d| d.verdict == Verdict::Dropped) {
            ConnectionState::Denied
        } else if self.closed {
            ConnectionState::Closed
        } else if self.replied {
            ConnectionState::Established
        } else {
            ConnectionState::New
        }
    }

    fn take(&mut self, flow: &Arc<Flow>, reply: bool, seq: u64) {
        let decision = || Decision {
            verdict: flow.verdict,
            policy: flow.policy.clone(),
            match_type: flow.match_type,
            endpoint_id: flow.endpoint_id,
        };
        let opening = flow.event_type == EventType::PolicyVerdict && !reply;
        if opening && self.state() == ConnectionState::Closed {
            // The same 5-tuple opened again: a new connection.
            let key = self.key;
            *self = Connection::new(key, flow, false);
        }
        match (flow.event_type, flow.verdict) {
            (EventType::PolicyVerdict, _) if !reply => {
                let slot = if flow.traffic_direction == TrafficDirection::Egress {
                    &mut self.egress
                } else {
                    &mut self.ingress
                };
                *slot = Some(decision());
                if flow.verdict != Verdict::Dropped {
                    self.revoked = false;
                }
            }
            (EventType::Drop, Verdict::Dropped) if flow.drop_reason == CONNECTION_REVOKED => self.revoked = true,
            (EventType::Drop, Verdict::Dropped) if flow.policy.is_some() && !reply => {
                let slot = if flow.traffic_direction == TrafficDirection::Egress {
                    &mut self.egress
                } else {
                    &mut self.ingress
                };
                if slot.as_ref().is_none_or(|d| d.verdict != Verdict::Dropped) {
                    *slot = Some(decision());
                }
            }
            _ => {}
        }
        if reply || matches!(flow.ct_state, Some(CtState::Reply | CtState::Established)) {
            self.replied = true;
        }
        if flow.protocol == Protocol::Tcp && flow.tcp_flags.0 & (TcpFlags::FIN | TcpFlags::RST) != 0 {
            self.closed = true;
        }
        self.packets += 1;
        self.bytes += u64::from(flow.packet_len);
        self.first_ns = self.first_ns.min(flow.time_ns);
        self.last_ns = self.last_ns.max(flow.time_ns);
        self.last_seq = seq;
        if self.events.len() == EVENTS_PER_CONNECTION {
            self.events.pop_front();
        }
        self.events.push_back(flow.clone());
    }
}

/// Every connection seen, by key.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    pub by_key: HashMap<ConnectionKey, Connection>,
    seq: u64,
}

impl Connections {
    /// Counts `flow` to its connection (opening one when it is the first event of it).
    pub fn take(&mut self, flow: &Arc<Flow>) {
        if matches!(flow.event_type, EventType::Agent | EventType::Capture) {
            return;
        }
        self.seq += 1;
        let forward = ConnectionKey::of(flow);
        let reverse = forward.reversed();
        // A reply travels from the destination back: it counts to the connection its destination opened.
        let reply = match flow.is_reply {
            Some(reply) => reply,
            None => !self.by_key.contains_key(&forward) && self.by_key.contains_key(&reverse),
        };
        let key = if reply { reverse } else { forward };
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_CONNECTIONS {
            self.evict();
        }
        let connection = self.by_key.entry(key).or_insert_with(|| Connection::new(key, flow, reply));
        connection.take(flow, reply, self.seq);
    }

    /// Makes room: the least recently active eighth goes at once, so that a stream of new connections costs a
    /// scan every [`EVICTED_AT_ONCE`] of them rather than one each.
    fn evict(&mut self) {
        let mut order: Vec<(u64, ConnectionKey)> = self.by_key.values().map(|c| (c.last_seq, c.key)).collect();
        let cut = EVICTED_AT_ONCE.min(order.len());
        if cut == 0 {
            return;
        }
        order.select_nth_unstable_by_key(cut - 1, |(seq, _)| *seq);
        for (_, key) in &order[..cut] {
            self.by_key.remove(key);
        }
    }

    /// The connections, most recently active first.
    pub fn by_activity(&self) -> Vec<&Connection> {
        let mut all: Vec<&Connection> = self.by_key.values().collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.last_seq));
        all
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use flowgate_proto::{flow::fixtures::flow_between, hubble::fixtures};

    use super::*;

    fn with(f: Flow, change: impl FnOnce(&mut Flow)) -> Arc<Flow> {
        let mut f = f;
        change(&mut f);
        Arc::new(f)
    }

    fn reply_of(f: &Flow) -> Flow {
        Flow {
            source_ip: f.destination_ip,
            destination_ip: f.source_ip,
            source_port: f.destination_port,
            destination_port: f.source_port,
            source: f.destination.clone(),
            destination: f.source.clone(),
            is_reply: Some(true),
            event_type: EventType::Trace,
            verdict: Verdict::Forwarded,
            policy: None,
            match_type: None,
            tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK),
            ..f.clone()
        }
    }

    #[test]
    fn an_allowed_connection_is_new_then_established_then_closed() {
        let mut c = Connections::default();
        let syn = fixtures::verdict_allowed();
        c.take(&Arc::new(syn.clone()));
        let key = ConnectionKey::of(&syn);
        assert_eq!(c.by_key[&key].state(), ConnectionState::New);
        assert_eq!(c.by_key[&key].verdict(), Verdict::Forwarded);
        c.take(&Arc::new(reply_of(&syn)));
        assert_eq!(c.len(), 1, "the reply counts to the connection it answers");
        assert_eq!(c.by_key[&key].state(), ConnectionState::Established);
        c.take(&with(syn.clone(), |f| {
            f.event_type = EventType::Trace;
            f.tcp_flags = TcpFlags(TcpFlags::FIN | TcpFlags::ACK);
            f.packet_len = 40;
        }));
        let conn = &c.by_key[&key];
        assert_eq!(conn.state(), ConnectionState::Closed);
        assert_eq!(conn.packets, 3);
        assert_eq!(conn.events.len(), 3);
        assert_eq!(conn.source.pod_name, "backend", "oriented from the opener");
        let policy = conn.decision().and_then(|d| d.policy.clone());
        assert!(
            matches!(policy, Some(PolicyAttribution::AllowedBy(ref n)) if n[0].name == "network-policy-walkthrough-db")
        );
    }

    #[test]
    fn a_deny_in_either_direction_makes_it_denied_and_revocation_is_its_own_state() {
        let mut c = Connections::default();
        let allowed_egress = with(fixtures::verdict_allowed(), |f| f.traffic_direction = TrafficDirection::Egress);
        c.take(&allowed_egress);
        c.take(&Arc::new(fixtures::verdict_denied()));
        let key = ConnectionKey::of(&fixtures::verdict_denied());
        let conn = &c.by_key[&key];
        assert_eq!((conn.state(), conn.verdict()), (ConnectionState::Denied, Verdict::Dropped));
        assert!(matches!(conn.decision().unwrap().policy, Some(PolicyAttribution::DefaultDeny { .. })));
        // The egress allow of a retransmitted SYN does not hide the ingress deny.
        c.take(&allowed_egress);
        assert_eq!(c.by_key[&key].state(), ConnectionState::Denied);

        let mut c = Connections::default();
        c.take(&Arc::new(fixtures::verdict_allowed()));
        c.take(&Arc::new(fixtures::drop_revoked()));
        let key = ConnectionKey::of(&fixtures::verdict_allowed());
        assert_eq!(c.by_key[&key].state(), ConnectionState::Revoked);
        assert!(c.by_key[&key].state().is_refused());

        let mut c = Connections::default();
        c.take(&Arc::new(fixtures::verdict_audit()));
        let conn = &c.by_key[&key];
        assert_eq!((conn.state(), conn.verdict()), (ConnectionState::New, Verdict::Audit), "audit lets it through");
        assert!(conn.summary().contains("default/backend 10.0.0.5:43210"), "{}", conn.summary());
        assert!(conn.summary().contains("default deny (isolated by default/default-deny-ingress-policy)"));
    }

    #[test]
    fn ipv6_connections_are_keyed_and_named_like_ipv4_ones() {
        let mut c = Connections::default();
        let v6 = |f: Flow| Flow {
            source_ip: "fd00:10:200::11".parse().unwrap(),
            destination_ip: "fd00:10:200::10".parse().unwrap(),
            ..f
        };
        let syn = v6(fixtures::verdict_allowed());
        c.take(&Arc::new(syn.clone()));
        c.take(&Arc::new(reply_of(&syn)));
        assert_eq!(c.len(), 1);
        let conn = c.by_activity()[0];
        assert_eq!(conn.state(), ConnectionState::Established);
        let summary = conn.summary();
        assert!(summary.contains("[fd00:10:200::11]:43210") && summary.contains("[fd00:10:200::10]:5432"), "{summary}");
    }

    #[test]
    fn most_recent_first_and_bounded() {
        let mut c = Connections::default();
        for port in 0..(MAX_CONNECTIONS as u16 + 10) {
            c.take(&Arc::new(flow_between(1, 2, 1000 + port)));
        }
        assert!(c.len() <= MAX_CONNECTIONS && c.len() > MAX_CONNECTIONS - EVICTED_AT_ONCE, "{}", c.len());
        let newest_evicted = 1000 + EVICTED_AT_ONCE as u16 - 1;
        assert!(
            !c.by_key.values().any(|conn| conn.key.source_port <= newest_evicted),
            "the least recently active went"
        );
        c.take(&Arc::new(flow_between(1, 2, 1000 + MAX_CONNECTIONS as u16 - 1)));
        let order = c.by_activity();
        assert_eq!(order[0].key.source_port, 1000 + MAX_CONNECTIONS as u16 - 1, "taken again: the most recent");
        assert_eq!(order[1].key.source_port, 1000 + MAX_CONNECTIONS as u16 + 9);
    }
}
