//! The enriched flow: one event as the agent hands it to clients. Field names follow Hubble's flow
//! (`flow.proto`) where there is an equivalent, so the Hubble-shaped JSON is a direct mapping.

use std::{net::Ipv4Addr, sync::Arc};

use serde::{Deserialize, Serialize};

/// What kind of record the kernel (or the agent) produced. Read from its name (`FromStr`,
/// `Deserialize`) in [`crate::filter`], with every spelling a filter accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    Trace,
    Drop,
    PolicyVerdict,
    Capture,
    Agent,
}

impl EventType {
    pub const ALL: [EventType; 5] =
        [EventType::Trace, EventType::Drop, EventType::PolicyVerdict, EventType::Capture, EventType::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Trace => "trace",
            EventType::Drop => "drop",
            EventType::PolicyVerdict => "policy-verdict",
            EventType::Capture => "capture",
            EventType::Agent => "agent",
        }
    }
}

/// The outcome for the flow, as Hubble names it (FORWARDED / DROPPED / AUDIT); on the command line
/// `allowed`, `denied` and `audit` (read in [`crate::filter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Allowed / forwarded.
    Forwarded,
    /// Denied / dropped.
    Dropped,
    /// Would have been dropped; passed because of audit mode.
    Audit,
}

impl Verdict {
    /// Hubble's spelling.
    pub fn hubble_name(self) -> &'static str {
        match self {
            Verdict::Forwarded => "FORWARDED",
            Verdict::Dropped => "DROPPED",
            Verdict::Audit => "AUDIT",
        }
    }
}

/// Direction of the traffic relative to the local endpoint where it was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficDirection {
    /// Entering the local endpoint.
    Ingress,
    /// Leaving the local endpoint.
    Egress,
    Unknown,
}

/// Transport protocol (read from its name in [`crate::filter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    /// Another IP protocol, by number.
    Other(u8),
}

impl Protocol {
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            1 => Protocol::Icmp,
            n => Protocol::Other(n),
        }
    }

    /// Lowercase name as Cilium's monitor prints it.
    pub fn name(self) -> String {
        match self {
            Protocol::Tcp => "tcp".into(),
            Protocol::Udp => "udp".into(),
            Protocol::Sctp => "sctp".into(),
            Protocol::Icmp => "icmp".into(),
            Protocol::Other(n) => format!("proto-{n}"),
        }
    }
}

/// TCP flag bits as in the TCP header (FIN 0x01 ... CWR 0x80).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    /// Names in Cilium's order (`SYN, ACK`).
    pub fn names(self) -> Vec<&'static str> {
        const ORDER: [(u8, &str); 8] = [
            (TcpFlags::SYN, "SYN"),
            (TcpFlags::FIN, "FIN"),
            (TcpFlags::RST, "RST"),
            (TcpFlags::PSH, "PSH"),
            (TcpFlags::ACK, "ACK"),
            (TcpFlags::URG, "URG"),
            (TcpFlags::ECE, "ECE"),
            (TcpFlags::CWR, "CWR"),
        ];
        ORDER.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, n)| *n).collect()
    }
}

/// One side of a flow: a local endpoint, or a remote peer known only by address and identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Local endpoint id; 0 when the address is not an endpoint of this node.
    #[serde(default)]
    pub endpoint_id: u16,
    /// Security identity; 0 when unknown.
    #[serde(default)]
    pub identity: u32,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod_name: String,
    /// Labels as `key=value`, sorted.
    #[serde(default)]
    pub labels: Vec<String>,
}

impl Peer {
    /// The key of the label Cilium gives every pod, with its namespace as the value
    /// (`k8s:io.kubernetes.pod.namespace=default`). The agent leaves it out of `labels`; the Hubble JSON
    /// writes it, and label filters see it, for every pod.
    pub const NAMESPACE_LABEL: &'static str = "io.kubernetes.pod.namespace";

    /// Whether this side is a pod (a namespace and a name), not an address outside the node's pods.
    pub fn is_pod(&self) -> bool {
        !self.namespace.is_empty() && !self.pod_name.is_empty()
    }
}

/// A NetworkPolicy, `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What decided a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyAttribution {
    /// These policies allow the flow (every policy whose rules produced the matching entry).
    AllowedBy(Vec<PolicyName>),
    /// The endpoint is isolated for this direction by these policies and none of them allows the
    /// flow: the default deny applied.
    DefaultDeny { isolated_by: Vec<PolicyName> },
}

/// Where a traced packet stands in its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CtState {
    New,
    Established,
    Reply,
}

/// How the policy entry that decided matched (Cilium's match types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchType {
    L3L4,
    L3Only,
    L4Only,
    All,
    None,
}

/// One enriched event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Wall-clock time of the kernel record, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The kernel's monotonic timestamp of the record.
    pub ktime_ns: u64,
    pub event_type: EventType,
    pub verdict: Verdict,
    /// Drop reason code (0 when not dropped), Cilium's numbering (133: policy denied).
    #[serde(default)]
    pub drop_reason: u8,
    pub source_ip: Ipv4Addr,
    pub destination_ip: Ipv4Addr,
    pub protocol: Protocol,
    #[serde(default)]
    pub source_port: u16,
    #[serde(default)]
    pub destination_port: u16,
    #[serde(default)]
    pub tcp_flags: TcpFlags,
    /// ICMP type and code when `protocol` is ICMP.
    #[serde(default)]
    pub icmp_type: u8,
    #[serde(default)]
    pub icmp_code: u8,
    pub source: Arc<Peer>,
    pub destination: Arc<Peer>,
    /// The local endpoint at whose veth the record was taken.
    pub endpoint_id: u16,
    pub traffic_direction: TrafficDirection,
    /// Node-side interface of that endpoint.
    #[serde(default)]
    pub ifindex: u32,
    #[serde(default)]
    pub packet_len: u32,
    #[serde(default)]
    pub is_reply: Option<bool>,
    #[serde(default)]
    pub match_type: Option<MatchType>,
    /// For policy verdicts and policy drops: what decided.
    #[serde(default)]
    pub policy: Option<PolicyAttribution>,
    /// Connection-tracking state of a traced packet: new, established or reply.
    #[serde(default)]
    pub ct_state: Option<CtState>,
    /// CPU that wrote the record.
    #[serde(default)]
    pub cpu: u32,
}

impl Flow {
    /// Whether `endpoint_id` is on either side of the flow or is where it was observed.
    pub fn involves_endpoint(&self, endpoint_id: u16) -> bool {
        endpoint_id != 0
            && (self.endpoint_id == endpoint_id
                || self.source.endpoint_id == endpoint_id
                || self.destination.endpoint_id == endpoint_id)
    }
}

/// Flows for tests and examples, with fixed, recognisable values.
pub mod fixtures {
    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;

    /// An endpoint peer `default/pod-<id>` with labels `app=pod-<id>`.
    pub fn endpoint_peer(id: u16) -> Arc<Peer> {
        Arc::new(Peer {
            endpoint_id: id,
            identity: 1000 + u32::from(id),
            namespace: "default".into(),
            pod_name: format!("pod-{id}"),
            labels: vec![format!("app=pod-{id}")],
        })
    }

    /// A forwarded TCP SYN trace from endpoint `src` to endpoint `dst` port 80, from `source_port`.
    pub fn flow_between(src: u16, dst: u16, source_port: u16) -> Flow {
        Flow {
            time_ns: 1_700_000_000_000_000_000,
            ktime_ns: 1_000,
            event_type: EventType::Trace,
            verdict: Verdict::Forwarded,
            drop_reason: 0,
            source_ip: Ipv4Addr::new(10, 0, 0, src as u8),
            destination_ip: Ipv4Addr::new(10, 0, 0, dst as u8),
            protocol: Protocol::Tcp,
            source_port,
            destination_port: 80,
            tcp_flags: TcpFlags(TcpFlags::SYN),
            icmp_type: 0,
            icmp_code: 0,
            source: endpoint_peer(src),
            destination: endpoint_peer(dst),
            endpoint_id: src,
            traffic_direction: TrafficDirection::Egress,
            ifindex: 2,
            packet_len: 74,
            is_reply: Some(false),
            match_type: None,
            policy: None,
            ct_state: None,
            cpu: 0,
        }
    }
}
