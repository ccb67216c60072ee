//! The lab's topology file: namespaces with labels, pods with labels and container ports, and external hosts.
//! Parsing and validation only (pure, no IO besides reading the file in [`Topology::load`]); addresses and
//! interface names are assigned by [`crate::plan`].

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use flowgate_common::ip;
use serde::{Deserialize, Serialize};

/// The label Kubernetes adds to every namespace; the lab adds it too.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Errors reading or validating a topology file.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}{location}: invalid topology: {message}")]
    Parse {
        path: String,
        /// ":line:column" when serde_yaml knows it, else empty.
        location: String,
        message: String,
    },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: Problem },
}

/// One thing wrong with an otherwise well-formed topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(
        "{what} {name:?} is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
    )]
    NotDnsLabel { what: &'static str, name: String },
    #[error(
        "lab name {name:?} is not valid: use at most {max} lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
    )]
    BadLabName { name: String, max: usize },
    #[error("cidr {cidr:?} is not an IPv4 prefix like 10.200.0.0/24 (prefix length 8 to 29, no host bits set)")]
    BadCidr { cidr: String },
    #[error(
        "ipv6_cidr {cidr:?} is not an IPv6 prefix like fd00:10:200::/64 (prefix length 64 to 120, no host bits set)"
    )]
    BadIpv6Cidr { cidr: String },
    #[error("the lab range {cidr} has more hosts than the IPv6 range {ipv6_cidr}")]
    Ipv6RangeTooSmall { cidr: Cidr, ipv6_cidr: Ipv6Cidr },
    #[error("namespace {name:?} is declared twice")]
    DuplicateNamespace { name: String },
    #[error("pod {pod} uses namespace {namespace:?}, which is not declared under `namespaces:`")]
    UnknownNamespace { pod: String, namespace: String },
    #[error("pod {pod} is declared twice")]
    DuplicatePod { pod: String },
    #[error("external {name:?} is declared twice")]
    DuplicateExternal { name: String },
    #[error("{owner}: port {port} is not a valid port (1-65535)")]
    BadPort { owner: String, port: u32 },
    #[error("{owner}: protocol {protocol:?} is not one of TCP, UDP, SCTP")]
    BadProtocol { owner: String, protocol: String },
    #[error("{owner}: port {port}/{protocol} is declared twice")]
    DuplicatePort { owner: String, port: u16, protocol: Protocol },
    #[error("{owner}: port name {name:?} is declared twice")]
    DuplicatePortName { owner: String, name: String },
    #[error(
        "{owner}: port name {name:?} is not an IANA service name (at most 15 lowercase letters, digits and '-', with at least one letter)"
    )]
    BadPortName { owner: String, name: String },
    #[error("{owner}: address {ip} is outside the lab range {cidr}")]
    IpOutsideCidr { owner: String, ip: Ipv4Addr, cidr: Cidr },
    #[error("{owner}: address {ip} is reserved in {cidr} (network, broadcast or the node's gateway)")]
    IpReserved { owner: String, ip: Ipv4Addr, cidr: Cidr },
    #[error("{owner}: address {ip} is already used by {other}")]
    DuplicateIp { owner: String, ip: Ipv4Addr, other: String },
    #[error("the lab range {cidr} has no free address left for {owner}")]
    RangeExhausted { owner: String, cidr: Cidr },
    #[error("node {name:?} is declared twice")]
    DuplicateNode { name: String },
    #[error("pod {pod} is on node {node:?}, which is not declared under `nodes:`")]
    UnknownNode { pod: String, node: String },
    #[error("the node network {node_cidr} overlaps the lab range {cidr}; pick another `node_cidr`")]
    NodeCidrOverlaps { node_cidr: Cidr, cidr: Cidr },
    #[error("{owner} and {other} would get the same {what} {name:?}; rename one of them")]
    NameClash { owner: String, other: String, what: &'static str, name: String },
}

/// A topology file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Default lab name; `flowgate lab up --name` overrides it.
    #[serde(default)]
    pub name: Option<String>,
    /// The lab's address range; `.1` is the node's gateway.
    #[serde(default = "default_cidr")]
    pub cidr: Cidr,
    /// The lab's IPv6 range (the lab is dual-stack): every host gets the address as many hosts into it as
    /// its IPv4 address is into `cidr` (`10.200.0.10` -> `fd00:10:200::a`); `::1` is the node's gateway.
    #[serde(default = "default_ipv6_cidr")]
    pub ipv6_cidr: Ipv6Cidr,
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub externals: Vec<ExternalSpec>,
    /// Several nodes on one machine: each a network namespace of its own (its own agent, in Kubernetes mode),
    /// routed to the others through a fabric namespace. Empty: the lab is one node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSpec>,
    /// The nodes' own addresses on the fabric (`.1` is the first node), apart from the pods' range.
    #[serde(default = "default_node_cidr")]
    pub node_cidr: Cidr,
    /// The nodes' IPv6 addresses on the fabric: the counterparts of their IPv4 addresses.
    #[serde(default = "default_node_ipv6_cidr")]
    pub node_ipv6_cidr: Ipv6Cidr,
}

/// A node of a lab with several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's name: `spec.nodeName` of its pods, `--node-name` of its agent.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// A fixed address; otherwise one is assigned in file order.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The node it runs on, one of `nodes:` (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A host that is not a pod (no labels, not an endpoint), e.g. a client "outside" the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    pub name: String,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// A container port, shaped like Kubernetes' `containerPort` (`port` stands for `containerPort`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kept wide here so that an out-of-range number is a validation error with context, not a parse error.
    pub port: u32,
    #[serde(default)]
    pub protocol: ProtocolName,
}

/// The protocol as written in the file (validated later, so the error can say which pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProtocolName(pub String);

impl Default for ProtocolName {
    fn default() -> Self {
        Self("TCP".to_owned())
    }
}

/// Transport protocols of NetworkPolicy ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Self::Tcp, Self::Udp, Self::Sctp];

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => ip::protocol::TCP,
            Self::Udp => ip::protocol::UDP,
            Self::Sctp => ip::protocol::SCTP,
        }
    }

    /// The spelling of Kubernetes' `protocol` fields: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        ip::protocol_name(self.number()).unwrap_or_default()
    }

    /// Exactly the Kubernetes spelling (the API server only accepts upper case).
    pub fn from_api(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// Case-insensitive, as people type it; the file itself is validated the same way.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("protocol {s:?} is not one of TCP, UDP, SCTP"))
    }
}

/// A validated container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// An IPv4 prefix such as `10.200.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

fn default_cidr() -> Cidr {
    Cidr { network: Ipv4Addr::new(10, 200, 0, 0), prefix_len: 24 }
}

impl Cidr {
    fn mask(self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The node's address, `.1` of the range: every pod's default gateway.
    pub fn gateway(self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The address `n` hosts into the range (may be outside it; check with [`Cidr::contains`]).
    pub fn nth(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(n))
    }

    /// Network, broadcast and gateway addresses cannot be given to pods.
    pub fn is_reserved(self, ip: Ipv4Addr) -> bool {
        ip == self.network || ip == self.broadcast() || ip == self.gateway()
    }
}

/// An IPv6 prefix such as `fd00:10:200::/64`: the lab's IPv6 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Cidr {
    pub network: Ipv6Addr,
    pub prefix_len: u8,
}

fn default_ipv6_cidr() -> Ipv6Cidr {
    Ipv6Cidr { network: Ipv6Addr::new(0xfd00, 0x10, 0x200, 0, 0, 0, 0, 0), prefix_len: 64 }
}

fn default_node_cidr() -> Cidr {
    Cidr { network: Ipv4Addr::new(10, 199, 0, 0), prefix_len: 24 }
}

fn default_node_ipv6_cidr() -> Ipv6Cidr {
    Ipv6Cidr { network: Ipv6Addr::new(0xfd00, 0x10, 0x199, 0, 0, 0, 0, 0), prefix_len: 64 }
}

impl Ipv6Cidr {
    fn host_bits(self) -> u32 {
        128 - u32::from(self.prefix_len)
    }

    /// The address `n` hosts into the range.
    pub fn nth(self, n: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) + u128::from(n))
    }

    /// The node's address, `::1` of the range: every pod's IPv6 gateway.
    pub fn gateway(self) -> Ipv6Addr {
        self.nth(1)
    }

    /// The IPv6 address of the host at `ip` in `cidr`: as many hosts into this range.
    pub fn counterpart(self, cidr: Cidr, ip: Ipv4Addr) -> Ipv6Addr {
        self.nth(u32::from(ip).wrapping_sub(u32::from(cidr.network)))
    }

    /// Whether every host of `cidr` has a counterpart here.
    pub fn holds(self, cidr: Cidr) -> bool {
        self.host_bits() >= 32 - u32::from(cidr.prefix_len)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv6Cidr {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Problem::BadIpv6Cidr { cidr: s.to_owned() };
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let network: Ipv6Addr = ip.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if !(64..=120).contains(&prefix_len) || ip::is_v4_mapped(&network.octets()) {
            return Err(bad());
        }
        let cidr = Self { network, prefix_len };
        if u128::from(network) & (u128::MAX >> cidr.prefix_len) != 0 {
            return Err(bad());
        }
        Ok(cidr)
    }
}

impl Serialize for Ipv6Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv6Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Problem::BadCidr { cidr: s.to_owned() };
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix_len) {
            return Err(bad());
        }
        let cidr = Self { network, prefix_len };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(bad());
        }
        Ok(cidr)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Longest lab name: it ends up in namespace names and the lab directory.
pub const MAX_LAB_NAME_LEN: usize = 20;

/// Lab names are short DNS labels that start with a letter.
pub fn validate_lab_name(name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LAB_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && is_dns_label(name);
    if ok { Ok(()) } else { Err(Problem::BadLabName { name: name.to_owned(), max: MAX_LAB_NAME_LEN }) }
}

/// RFC 1123 label, as Kubernetes checks namespace and pod names here.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// IANA service name, as Kubernetes checks container port names.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

impl Topology {
    /// Reads, parses and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TopologyError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates topology text; `origin` names it in errors (usually the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Self, TopologyError> {
        let topology: Self = serde_yaml::from_str(text).map_err(|e| TopologyError::Parse {
            path: origin.to_owned(),
            location: e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default(),
            message: e.to_string(),
        })?;
        topology.validate().map_err(|problem| TopologyError::Invalid { path: origin.to_owned(), problem })?;
        Ok(topology)
    }

    /// Checks names, namespaces, ports and fixed addresses. Address assignment is checked by the plan.
    pub fn validate(&self) -> Result<(), Problem> {
        if let Some(name) = &self.name {
            validate_lab_name(name)?;
        }
        if !self.ipv6_cidr.holds(self.cidr) {
            return Err(Problem::Ipv6RangeTooSmall { cidr: self.cidr, ipv6_cidr: self.ipv6_cidr });
        }
        let mut namespaces = HashSet::new();
        for ns in &self.namespaces {
            check_dns("namespace", &ns.name)?;
            if !namespaces.insert(ns.name.as_str()) {
                return Err(Problem::DuplicateNamespace { name: ns.name.clone() });
            }
        }
        let mut nodes = HashSet::new();
        for node in &self.nodes {
            check_dns("node name", &node.name)?;
            if !nodes.insert(node.name.as_str()) {
                return Err(Problem::DuplicateNode { name: node.name.clone() });
            }
        }
        if !self.nodes.is_empty()
            && (self.node_cidr.contains(self.cidr.network) || self.cidr.contains(self.node_cidr.network))
        {
            return Err(Problem::NodeCidrOverlaps { node_cidr: self.node_cidr, cidr: self.cidr });
        }
        let mut pods = HashSet::new();
        for pod in &self.pods {
            let id = format!("{}/{}", pod.namespace, pod.name);
            check_dns("pod name", &pod.name)?;
            if !namespaces.contains(pod.namespace.as_str()) {
                return Err(Problem::UnknownNamespace { pod: id, namespace: pod.namespace.clone() });
            }
            if let Some(node) = pod.node.as_deref().filter(|n| !nodes.contains(n)) {
                return Err(Problem::UnknownNode { pod: id, node: node.to_owned() });
            }
            if !pods.insert((pod.namespace.as_str(), pod.name.as_str())) {
                return Err(Problem::DuplicatePod { pod: id });
            }
            container_ports(&format!("pod {id}"), &pod.ports)?;
        }
        let mut externals = HashSet::new();
        for ext in &self.externals {
            check_dns("external name", &ext.name)?;
            if !externals.insert(ext.name.as_str()) {
                return Err(Problem::DuplicateExternal { name: ext.name.clone() });
            }
            container_ports(&format!("external {}", ext.name), &ext.ports)?;
        }
        Ok(())
    }

    /// Labels of a namespace including the automatic `kubernetes.io/metadata.name`.
    pub fn namespace_labels(ns: &NamespaceSpec) -> BTreeMap<String, String> {
        let mut labels = ns.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), ns.name.clone());
        labels
    }
}

fn check_dns(what: &'static str, name: &str) -> Result<(), Problem> {
    if is_dns_label(name) { Ok(()) } else { Err(Problem::NotDnsLabel { what, name: name.to_owned() }) }
}

/// Validates the ports of one pod or external and returns them typed.
pub fn container_ports(owner: &str, ports: &[PortSpec]) -> Result<Vec<ContainerPort>, Problem> {
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| Problem::BadPort { owner: owner.to_owned(), port: p.port })?;
        // Kubernetes only accepts upper case here.
        let protocol = Protocol::from_api(&p.protocol.0)
            .ok_or_else(|| Problem::BadProtocol { owner: owner.to_owned(), protocol: p.protocol.0.clone() })?;
        if !seen.insert((port, protocol)) {
            return Err(Problem::DuplicatePort { owner: owner.to_owned(), port, protocol });
        }
        if let Some(name) = &p.name {
            if !is_port_name(name) {
                return Err(Problem::BadPortName { owner: owner.to_owned(), name: name.clone() });
            }
            if !names.insert(name.as_str()) {
                return Err(Problem::DuplicatePortName { owner: owner.to_owned(), name: name.clone() });
            }
        }
        out.push(ContainerPort { name: p.name.clone(), port, protocol });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETPOL: &str = include_str!("../../examples/lab-netpol.yaml");

    fn problem(text: &str) -> Problem {
        match Topology::parse(text, "t.yaml") {
            Err(TopologyError::Invalid { problem, .. }) => problem,
            other => panic!("expected a validation problem, got {other:?}"),
        }
    }

    const BASE: &str = "namespaces:\n  - name: x\n    labels: {ns: x}\n";

    #[test]
    fn netpol_example_parses_with_nine_pods_and_four_ports_each() {
        let t = Topology::parse(NETPOL, "lab-netpol.yaml").unwrap();
        assert_eq!(t.name.as_deref(), Some("netpol"));
        assert_eq!(t.cidr.to_string(), "10.200.0.0/24");
        assert_eq!(t.namespaces.len(), 3);
        assert_eq!(t.pods.len(), 9);
        for pod in &t.pods {
            let ports = container_ports("p", &pod.ports).unwrap();
            let names: Vec<_> = ports.iter().map(|p| p.name.clone().unwrap()).collect();
            assert_eq!(names, ["serve-80-tcp", "serve-80-udp", "serve-81-tcp", "serve-81-udp"]);
            assert_eq!(pod.labels["pod"], pod.name);
        }
    }

    #[test]
    fn namespace_labels_include_the_automatic_metadata_name() {
        let t = Topology::parse(BASE, "t").unwrap();
        let labels = Topology::namespace_labels(&t.namespaces[0]);
        assert_eq!(labels[NAMESPACE_NAME_LABEL], "x");
        assert_eq!(labels["ns"], "x");
    }

    #[test]
    fn protocol_defaults_to_tcp_and_cidr_defaults() {
        let t = Topology::parse(&format!("{BASE}pods:\n  - {{namespace: x, name: a, ports: [{{port: 80}}]}}\n"), "t")
            .unwrap();
        let ports = container_ports("p", &t.pods[0].ports).unwrap();
        assert_eq!(ports[0].protocol, Protocol::Tcp);
        assert_eq!(t.cidr.to_string(), "10.200.0.0/24");
    }

    #[test]
    fn pod_in_unknown_namespace_is_rejected() {
        let p = problem(&format!("{BASE}pods:\n  - {{namespace: nope, name: a}}\n"));
        assert_eq!(p, Problem::UnknownNamespace { pod: "nope/a".into(), namespace: "nope".into() });
        assert!(p.to_string().contains("not declared under `namespaces:`"));
    }

    #[test]
    fn duplicate_pod_is_rejected() {
        let p = problem(&format!("{BASE}pods:\n  - {{namespace: x, name: a}}\n  - {{namespace: x, name: a}}\n"));
        assert_eq!(p, Problem::DuplicatePod { pod: "x/a".into() });
    }

    #[test]
    fn duplicate_namespace_is_rejected() {
        let p = problem(&format!("{BASE}  - name: x\n"));
        assert_eq!(p, Problem::DuplicateNamespace { name: "x".into() });
    }

    #[test]
    fn bad_port_and_protocol_are_rejected_with_the_pod() {
        let p = problem(&format!("{BASE}pods:\n  - {{namespace: x, name: a, ports: [{{port: 70000}}]}}\n"));
        assert_eq!(p, Problem::BadPort { owner: "pod x/a".into(), port: 70000 });
        let p = problem(&format!("{BASE}pods:\n  - {{namespace: x, name: a, ports: [{{port: 0}}]}}\n"));
        assert_eq!(p, Problem::BadPort { owner: "pod x/a".into(), port: 0 });
        let p =
            problem(&format!("{BASE}pods:\n  - {{namespace: x, name: a, ports: [{{port: 80, protocol: ICMP}}]}}\n"));
        assert_eq!(p, Problem::BadProtocol { owner: "pod x/a".into(), protocol: "ICMP".into() });
        let p = problem(&format!(
            "{BASE}pods:\n  - {{namespace: x, name: a, ports: [{{port: 80}}, {{port: 80, protocol: TCP}}]}}\n"
        ));
        assert_eq!(p, Problem::DuplicatePort { owner: "pod x/a".into(), port: 80, protocol: Protocol::Tcp });
    }

    #[test]
    fn sctp_is_accepted_in_the_file() {
        let t = Topology::parse(
            &format!("{BASE}pods:\n  - {{namespace: x, name: a, ports: [{{port: 80, protocol: SCTP}}]}}\n"),
            "t",
        )
        .unwrap();
        assert_eq!(container_ports("p", &t.pods[0].ports).unwrap()[0].protocol, Protocol::Sctp);
    }

    #[test]
    fn bad_port_names_are_rejected() {
        let p = problem(&format!("{BASE}pods:\n  - {{namespace: x, name: a, ports: [{{name: Serve, port: 80}}]}}\n"));
        assert_eq!(p, Problem::BadPortName { owner: "pod x/a".into(), name: "Serve".into() });
        let p = problem(&format!(
            "{BASE}pods:\n  - {{namespace: x, name: a, ports: [{{name: web, port: 80}}, {{name: web, port: 81}}]}}\n"
        ));
        assert_eq!(p, Problem::DuplicatePortName { owner: "pod x/a".into(), name: "web".into() });
    }

    #[test]
    fn names_that_are_not_dns_labels_are_rejected() {
        let p = problem("namespaces:\n  - name: X_y\n");
        assert_eq!(p, Problem::NotDnsLabel { what: "namespace", name: "X_y".into() });
        let p = problem(&format!("{BASE}pods:\n  - {{namespace: x, name: -a}}\n"));
        assert_eq!(p, Problem::NotDnsLabel { what: "pod name", name: "-a".into() });
    }

    #[test]
    fn lab_names_are_short_dns_labels_starting_with_a_letter() {
        assert!(validate_lab_name("netpol").is_ok());
        assert!(validate_lab_name("t-123").is_ok());
        assert!(validate_lab_name("1abc").is_err());
        assert!(validate_lab_name("abc-").is_err());
        assert!(validate_lab_name("Abc").is_err());
        assert!(validate_lab_name("").is_err());
        assert!(validate_lab_name(&"a".repeat(21)).is_err());
        assert!(validate_lab_name(&"a".repeat(20)).is_ok());
    }

    #[test]
    fn cidr_parsing_checks_host_bits_and_length() {
        assert_eq!("10.200.0.0/24".parse::<Cidr>().unwrap().gateway(), Ipv4Addr::new(10, 200, 0, 1));
        assert!("10.200.0.1/24".parse::<Cidr>().is_err());
        assert!("10.200.0.0/30".parse::<Cidr>().is_err());
        assert!("10.200.0.0".parse::<Cidr>().is_err());
        assert!("fd00::/64".parse::<Cidr>().is_err());
        let p = Topology::parse("cidr: 10.0.0.1/8\n", "t.yaml").unwrap_err();
        assert!(p.to_string().contains("t.yaml:1:"), "{p}");
    }

    #[test]
    fn parse_errors_carry_file_line_and_column() {
        let err = Topology::parse("namespaces:\n  - name: x\n    lables: {}\n", "topo.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("topo.yaml:3:"), "{text}");
        assert!(text.contains("lables"), "{text}");
    }

    #[test]
    fn nodes_are_declared_once_and_pods_name_declared_ones() {
        let two = "nodes:\n  - {name: node-1}\n  - {name: node-2}\n";
        let t =
            Topology::parse(&format!("{BASE}{two}pods:\n  - {{namespace: x, name: a, node: node-2}}\n"), "t").unwrap();
        assert_eq!(t.pods[0].node.as_deref(), Some("node-2"));
        assert_eq!(t.node_cidr.to_string(), "10.199.0.0/24");
        let p = problem(&format!("{BASE}{two}pods:\n  - {{namespace: x, name: a, node: node-3}}\n"));
        assert_eq!(p, Problem::UnknownNode { pod: "x/a".into(), node: "node-3".into() });
        let p = problem(&format!("{BASE}pods:\n  - {{namespace: x, name: a, node: node-1}}\n"));
        assert!(matches!(p, Problem::UnknownNode { .. }), "a node without `nodes:`: {p}");
        let p = problem("nodes:\n  - {name: n}\n  - {name: n}\n");
        assert_eq!(p, Problem::DuplicateNode { name: "n".into() });
        let p = problem("cidr: 10.0.0.0/8\nnodes:\n  - {name: n}\n");
        assert!(matches!(p, Problem::NodeCidrOverlaps { .. }), "{p}");
    }

    #[test]
    fn protocol_from_str_is_case_insensitive() {
        assert_eq!("udp".parse::<Protocol>().unwrap(), Protocol::Udp);
        assert!("icmp".parse::<Protocol>().is_err());
    }
}
