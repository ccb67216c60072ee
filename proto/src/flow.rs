//! The enriched flow: one event as the agent hands it to clients. Field names follow Hubble's flow
//! (`flow.proto`) where there is an equivalent, so the Hubble-shaped JSON is a direct mapping.

use std::{net::IpAddr, sync::Arc};

use flowgate_common::{ip, policy::match_type, record::tcp_flags};
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
    /// ICMPv6 (Hubble's `ICMPv6`).
    Icmpv6,
    /// Another IP protocol, by number.
    Other(u8),
}

impl Protocol {
    pub fn from_number(n: u8) -> Self {
        match n {
            ip::protocol::TCP => Protocol::Tcp,
            ip::protocol::UDP => Protocol::Udp,
            ip::protocol::SCTP => Protocol::Sctp,
            ip::protocol::ICMP => Protocol::Icmp,
            ip::protocol::ICMPV6 => Protocol::Icmpv6,
            n => Protocol::Other(n),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => ip::protocol::TCP,
            Protocol::Udp => ip::protocol::UDP,
            Protocol::Sctp => ip::protocol::SCTP,
            Protocol::Icmp => ip::protocol::ICMP,
            Protocol::Icmpv6 => ip::protocol::ICMPV6,
            Protocol::Other(n) => n,
        }
    }

    /// Whether this is ICMP of either IP version (its tuple has a type and code instead of ports).
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }

    /// Lowercase name as Cilium's monitor prints it.
    pub fn name(self) -> String {
        match self {
            Protocol::Other(n) => format!("proto-{n}"),
            known => ip::protocol_name(known.number()).unwrap_or_default().to_ascii_lowercase(),
        }
    }

    /// The name of the protocol's `l4` object in Hubble's flow (`TCP`, `UDP`, `SCTP`, `ICMPv4`, `ICMPv6`); `None` for
    /// a protocol Hubble has no `l4` for.
    pub fn hubble_name(self) -> Option<&'static str> {
        match self {
            Protocol::Icmp => Some("ICMPv4"),
            Protocol::Other(_) => None,
            known => ip::protocol_name(known.number()),
        }
    }
}

/// TCP flag bits as in the TCP header (FIN 0x01 ... CWR 0x80), as `flowgate_common::record::tcp_flags` defines them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = tcp_flags::FIN;
    pub const SYN: u8 = tcp_flags::SYN;
    pub const RST: u8 = tcp_flags::RST;
    pub const PSH: u8 = tcp_flags::PSH;
    pub const ACK: u8 = tcp_flags::ACK;
    pub const URG: u8 = tcp_flags::URG;
    pub const ECE: u8 = tcp_flags::ECE;
    pub const CWR: u8 = tcp_flags::CWR;

    /// Names in Cilium's order (`SYN, ACK`).
    pub fn names(self) -> Vec<&'static str> {
        tcp_flags::NAMES.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, n)| *n).collect()
    }
}

/// One side of a flow: a local endpoint, or a remote peer known only by address and identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// An ICMP error about a tracked connection (Linux conntrack's RELATED).
    Related,
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

/// The one conversion between the kernel's match-type numbers and what flowgate shows.
///
/// The kernel writes `flowgate_common::policy::match_type` (L3-L4 1, L3-only 2, L4-only 3, all 4), its own
/// numbering. Hubble's JSON carries Cilium's (`policy_match_type`: L3-only 1, L3-L4 2, L4-only 3, all 4;
/// none is 0 and left out), so the numbers differ for L3-L4 and L3-only and must go through this table,
/// never be copied across. Columns: the type, the kernel's number, Hubble's `policy_match_type`, the text
/// Cilium's monitor prints (`match L3-L4`) and the metrics label.
const MATCH_TYPES: [(MatchType, u8, u32, &str, &str); 5] = [
    (MatchType::None, match_type::NONE, 0, "none", "none"),
    (MatchType::L3L4, match_type::L3_L4, 2, "L3-L4", "l3-l4"),
    (MatchType::L3Only, match_type::L3_ONLY, 1, "L3-Only", "l3-only"),
    (MatchType::L4Only, match_type::L4_ONLY, 3, "L4-Only", "l4-only"),
    (MatchType::All, match_type::ALL, 4, "all", "all"),
];

impl MatchType {
    fn row(self) -> &'static (MatchType, u8, u32, &'static str, &'static str) {
        MATCH_TYPES.iter().find(|row| row.0 == self).expect("every match type has a row")
    }

    /// The type of a kernel match-type number; an unknown number is `None` (no match).
    pub fn from_kernel(number: u8) -> Self {
        MATCH_TYPES.iter().find(|row| row.1 == number).map_or(MatchType::None, |row| row.0)
    }

    /// Hubble's `policy_match_type` (Cilium's numbering).
    pub fn hubble_number(self) -> u32 {
        self.row().2
    }

    /// As Cilium's monitor prints it: `L3-L4`, `L3-Only`, `L4-Only`, `all`, `none`.
    pub fn text(self) -> &'static str {
        self.row().3
    }

    /// The `match` label of the policy-verdict metrics: `l3-l4`, `l3-only`, `l4-only`, `all`, `none`.
    pub fn metrics_label(self) -> &'static str {
        self.row().4
    }
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
    /// Drop reason code (0 when not dropped), one of `flowgate_common::drop_reason`.
    #[serde(default)]
    pub drop_reason: u8,
    #[serde(with = "crate::ip_wire")]
    pub source_ip: IpAddr,
    #[serde(with = "crate::ip_wire")]
    pub destination_ip: IpAddr,
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
    /// For drops: the datapath's policy revision the drop was decided under (`status`'s conntrack
    /// revision); for a revoked connection (`drop_reason::CONNECTION_REVOKED`) the revision that revoked it.
    /// Since protocol 1.2; `None` from older agents and kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_types_from_the_kernel_to_hubble_and_text() {
        // (kernel number, type, Hubble's policy_match_type, Cilium's text, metrics label)
        let table = [
            (0, MatchType::None, 0, "none", "none"),
            (1, MatchType::L3L4, 2, "L3-L4", "l3-l4"),
            (2, MatchType::L3Only, 1, "L3-Only", "l3-only"),
            (3, MatchType::L4Only, 3, "L4-Only", "l4-only"),
            (4, MatchType::All, 4, "all", "all"),
        ];
        for (kernel, m, hubble, text, label) in table {
            assert_eq!(MatchType::from_kernel(kernel), m, "kernel {kernel}");
            assert_eq!((m.hubble_number(), m.text(), m.metrics_label()), (hubble, text, label), "{m:?}");
        }
        assert_eq!(MatchType::from_kernel(9), MatchType::None);
    }

    #[test]
    fn protocol_numbers_and_names() {
        let table = [
            (6, Protocol::Tcp, "tcp", Some("TCP")),
            (17, Protocol::Udp, "udp", Some("UDP")),
            (132, Protocol::Sctp, "sctp", Some("SCTP")),
            (1, Protocol::Icmp, "icmp", Some("ICMPv4")),
            (58, Protocol::Icmpv6, "icmpv6", Some("ICMPv6")),
            (47, Protocol::Other(47), "proto-47", None),
        ];
        for (number, p, name, hubble) in table {
            assert_eq!(Protocol::from_number(number), p);
            assert_eq!((p.number(), p.name(), p.hubble_name()), (number, name.to_owned(), hubble));
        }
        assert_eq!("Udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!("ICMPv6".parse::<Protocol>(), Ok(Protocol::Icmpv6));
        assert!("gre".parse::<Protocol>().is_err());
    }

    #[test]
    fn tcp_flag_names_in_cilium_order() {
        assert_eq!(TcpFlags(TcpFlags::ACK | TcpFlags::SYN | TcpFlags::FIN).names(), ["SYN", "FIN", "ACK"]);
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
            source_ip: Ipv4Addr::new(10, 0, 0, src as u8).into(),
            destination_ip: Ipv4Addr::new(10, 0, 0, dst as u8).into(),
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
            policy_revision: None,
        }
    }
}
