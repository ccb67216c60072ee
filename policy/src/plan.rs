//! The plan model: what [`compile`](crate::compile()) produces and the agent realizes into the eBPF maps. Per
//! endpoint and direction, whether the direction is isolated and which (peer identity, protocol, port
//! range) entries are allowed, by which policies; plus the CIDR prefixes (with stable identities) that
//! `ipBlock` peers need in the ipcache.
//!
//! Kept apart from the compiler so the agent, which only reads plans, and [`source`](crate::source), which
//! names policies by [`PolicyRef`], depend on this vocabulary and not on the compiler. [`PolicyPlan::evaluate`]
//! is a test oracle that applies a plan the way the datapath does; enforcement never calls it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use crate::cidr::IpPrefix;

/// An L4 protocol a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API spelling (`TCP`, `UDP`, `SCTP`), exactly; anything else is `None`.
    #[must_use]
    pub fn from_api(name: &str) -> Option<Self> {
        match name {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The IP protocol number (6, 17, 132).
    #[must_use]
    pub fn ip_protocol(self) -> u8 {
        match self {
            Protocol::Tcp => flowgate_common::ip::protocol::TCP,
            Protocol::Udp => flowgate_common::ip::protocol::UDP,
            Protocol::Sctp => flowgate_common::ip::protocol::SCTP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy by namespace and name; displays as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    #[must_use]
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::str::FromStr for PolicyRef {
    type Err = String;

    /// `namespace/name`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(namespace, name))
            }
            _ => Err(format!("{s:?} is not a policy as NAMESPACE/NAME")),
        }
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which peers an entry allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerMatch {
    /// A pod identity, or a CIDR identity (from [`CidrIdentities`](crate::cidr::CidrIdentities)).
    Identity(u32),
    /// Every peer, inside the cluster or outside (a rule with no or empty `from`/`to`).
    Any,
}

/// How an allowing entry matched, in datapath precedence order (first wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MatchKind {
    /// Peer identity and protocol/port.
    #[serde(rename = "L3-L4")]
    L3L4,
    /// Any peer, protocol/port.
    #[serde(rename = "L4-only")]
    L4Only,
    /// Peer identity, any protocol and port.
    #[serde(rename = "L3-only")]
    L3Only,
    /// Any peer, any protocol and port.
    #[serde(rename = "all")]
    All,
}

impl fmt::Display for MatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchKind::L3L4 => "L3-L4",
            MatchKind::L4Only => "L4-only",
            MatchKind::L3Only => "L3-only",
            MatchKind::All => "all",
        })
    }
}

/// One allow entry of an endpoint's direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub peer: PeerMatch,
    /// `None`: any protocol (a rule without ports).
    pub protocol: Option<Protocol>,
    /// Inclusive port range; `None`: any port (of `protocol`, when set).
    pub ports: Option<(u16, u16)>,
    /// Sorted, deduplicated.
    pub allowed_by: Vec<PolicyRef>,
}

impl PolicyEntry {
    /// L3 when the peer is an identity, L4 when a protocol is constrained.
    #[must_use]
    pub fn match_kind(&self) -> MatchKind {
        match (self.peer, self.protocol.is_some()) {
            (PeerMatch::Identity(_), true) => MatchKind::L3L4,
            (PeerMatch::Any, true) => MatchKind::L4Only,
            (PeerMatch::Identity(_), false) => MatchKind::L3Only,
            (PeerMatch::Any, false) => MatchKind::All,
        }
    }

    /// Whether a connection to/from a peer carrying any of `peer_identities` matches this entry.
    #[must_use]
    pub fn matches(&self, peer_identities: &[u32], protocol: Protocol, port: u16) -> bool {
        let peer = match self.peer {
            PeerMatch::Any => true,
            PeerMatch::Identity(id) => peer_identities.contains(&id),
        };
        peer && self.protocol.is_none_or(|p| p == protocol)
            && self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
    }
}

/// One direction of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionPolicy {
    /// Some policy in the pod's namespace selects the pod for this direction: what no entry allows is denied.
    pub enforced: bool,
    /// The policies that select the pod for this direction, sorted.
    pub selected_by: Vec<PolicyRef>,
    /// Allow entries, sorted by (peer, protocol, ports), merged across rules and policies.
    pub entries: Vec<PolicyEntry>,
}

/// A direction's decision for one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum DirectionVerdict {
    /// No policy selects the endpoint for this direction (or the address is not an endpoint).
    NotEnforced,
    /// Allowed by the entries of the best `match_kind`; `allowed_by` unites their policies.
    Allowed { match_kind: MatchKind, allowed_by: Vec<PolicyRef> },
    /// Isolated and nothing allows it; `selected_by` are the isolating policies.
    DefaultDeny { selected_by: Vec<PolicyRef> },
}

impl DirectionVerdict {
    #[must_use]
    pub fn allows(&self) -> bool {
        !matches!(self, DirectionVerdict::DefaultDeny { .. })
    }
}

impl DirectionPolicy {
    /// Decides one connection whose peer carries `peer_identities` (its pod identity and/or CIDR identity).
    #[must_use]
    pub fn decide(&self, peer_identities: &[u32], protocol: Protocol, port: u16) -> DirectionVerdict {
        if !self.enforced {
            return DirectionVerdict::NotEnforced;
        }
        let matching: Vec<&PolicyEntry> =
            self.entries.iter().filter(|e| e.matches(peer_identities, protocol, port)).collect();
        let Some(best) = matching.iter().map(|e| e.match_kind()).min() else {
            return DirectionVerdict::DefaultDeny { selected_by: self.selected_by.clone() };
        };
        let allowed_by: BTreeSet<PolicyRef> =
            matching.iter().filter(|e| e.match_kind() == best).flat_map(|e| e.allowed_by.iter().cloned()).collect();
        DirectionVerdict::Allowed { match_kind: best, allowed_by: allowed_by.into_iter().collect() }
    }
}

/// The compiled policy of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub namespace: String,
    pub pod: String,
    pub identity: u32,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

/// A CIDR prefix used by some `ipBlock` (or `0.0.0.0/0`) and its identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrEntry {
    pub prefix: IpPrefix,
    /// The prefix's own identity: what records carry for an address it is the longest match of.
    pub identity: u32,
    /// The identity policy entries name for it: its own, or one shared by every prefix that exactly the
    /// same `ipBlock` peers select (2000 /32 blocks of one rule are one identity, so one entry per
    /// protocol and port block instead of 2000). Absent in plans written before it existed: the own one.
    #[serde(default)]
    pub policy_identity: u32,
}

impl CidrEntry {
    /// [`CidrEntry::policy_identity`], or the own identity when unset.
    #[must_use]
    pub fn policy_identity(&self) -> u32 {
        if self.policy_identity == 0 { self.identity } else { self.policy_identity }
    }
}

/// The compiled form of all policies: what the agent writes into the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPlan {
    /// Every prefix used by an `ipBlock` `cidr` or `except`, plus `0.0.0.0/0`, sorted by prefix.
    pub cidrs: Vec<CidrEntry>,
    /// Every pod of the cluster view, by endpoint id (unselected pods have nothing enforced).
    pub endpoints: BTreeMap<u16, EndpointPolicy>,
}

/// One side of a connection, for [`PolicyPlan::evaluate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Addr {
    /// A pod of the node.
    Endpoint { endpoint_id: u16, identity: u32, ip: IpAddr },
    /// Any other address (another node's pod, a host outside the cluster).
    Outside { ip: IpAddr },
}

/// The oracle's decision on one new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Both directions allow it.
    pub allowed: bool,
    /// The source endpoint's egress.
    pub egress: DirectionVerdict,
    /// The destination endpoint's ingress.
    pub ingress: DirectionVerdict,
}

impl PolicyPlan {
    /// The policy identity ([`CidrEntry::policy_identity`]) of the longest prefix in [`PolicyPlan::cidrs`]
    /// containing `ip` (the ipcache's LPM answer, `cidr_identity`); 0 only for a plan without prefixes (a
    /// default plan; compiled plans always hold `0.0.0.0/0`).
    #[must_use]
    pub fn cidr_identity_of(&self, ip: IpAddr) -> u32 {
        self.cidrs
            .iter()
            .filter(|c| c.prefix.contains_addr(ip))
            .max_by_key(|c| c.prefix.prefix_len())
            .map_or(0, CidrEntry::policy_identity)
    }

    /// The identities a peer is known by: a pod's own identity and the CIDR identity of its IP (so `ipBlock`
    /// rules match pod IPs too), or an outside address's CIDR identity.
    #[must_use]
    pub fn peer_identities(&self, addr: Addr) -> Vec<u32> {
        match addr {
            Addr::Endpoint { identity, ip, .. } => vec![identity, self.cidr_identity_of(ip)],
            Addr::Outside { ip } => vec![self.cidr_identity_of(ip)],
        }
    }

    /// Test oracle: applies the plan to a new connection the way the datapath does. Allowed when the
    /// source's egress allows it (if the source is an endpoint with egress enforced) and the destination's
    /// ingress allows it (if enforced). A pod talking to itself is judged like any other pair.
    #[must_use]
    pub fn evaluate(&self, from: Addr, to: Addr, protocol: Protocol, port: u16) -> Verdict {
        let direction = |addr: Addr, pick: fn(&EndpointPolicy) -> &DirectionPolicy, peer: Addr| match addr {
            Addr::Endpoint { endpoint_id, .. } => {
                self.endpoints.get(&endpoint_id).map_or(DirectionVerdict::NotEnforced, |endpoint| {
                    pick(endpoint).decide(&self.peer_identities(peer), protocol, port)
                })
            }
            Addr::Outside { .. } => DirectionVerdict::NotEnforced,
        };
        let egress = direction(from, |e| &e.egress, to);
        let ingress = direction(to, |e| &e.ingress, from);
        Verdict { allowed: egress.allows() && ingress.allows(), egress, ingress }
    }
}
