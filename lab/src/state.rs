//! What a lab that is up looks like, saved as `<lab dir>/<name>/state.json` (lab dir `/run/flowgate/labs`, or
//! `$FLOWGATE_LAB_DIR`). The agent reads it to register endpoints and attach its programs to each pod's
//! `host_ifname` inside `node_netns`; the CLI reads it to probe and show.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::topology::{Cidr, ContainerPort, Ipv6Cidr};

/// Environment variable that overrides the lab directory (tests use it).
pub const LAB_DIR_ENV: &str = "FLOWGATE_LAB_DIR";
/// Default lab directory.
pub const DEFAULT_LAB_DIR: &str = "/run/flowgate/labs";
/// Version of the state file format; additive changes keep it.
pub const STATE_VERSION: u32 = 1;

const STATE_FILE: &str = "state.json";

/// Errors reading or writing a lab's state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no lab named {name:?} (no {path}); `flowgate lab list` shows the labs that exist")]
    NotFound { name: String, path: PathBuf },
    #[error("cannot read lab state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab state {path} is corrupt; `flowgate lab down` removes the lab anyway")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write lab state {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A lab that is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub version: u32,
    pub name: String,
    pub cidr: Cidr,
    /// The node namespace's address on every pod-facing veth; the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// The lab's IPv6 range and the node's IPv6 gateway (absent in the state of a lab brought up before
    /// labs were dual-stack).
    #[serde(default)]
    pub ipv6_cidr: Option<Ipv6Cidr>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// The node namespace (of a lab with several nodes: the first node's, where externals are).
    pub node_netns: String,
    /// The nodes of a lab with several (`nodes:` in the topology); empty for a lab that is one node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeState>,
    /// The namespace whose bridge links the nodes, when there are several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_netns: Option<String>,
    pub namespaces: Vec<NamespaceState>,
    pub pods: Vec<PodState>,
    #[serde(default)]
    pub externals: Vec<ExternalState>,
    /// The process serving every pod's ports.
    pub server_pid: Option<u32>,
    /// The topology file the lab was brought up from, if any.
    pub topology_path: Option<PathBuf>,
}

/// One node of a lab with several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    /// Its network namespace: its pods' veths, its agent's attachments.
    pub netns: String,
    /// Its addresses on the fabric, through which the other nodes route to its pods.
    pub ip: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceState {
    pub name: String,
    /// Includes `kubernetes.io/metadata.name`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// The pod's network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// The node-side veth, inside its node's namespace.
    pub host_ifname: String,
    /// Its ifindex inside its node's namespace.
    pub host_ifindex: u32,
    /// Its node in a lab with several (`None`: the lab's one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalState {
    pub name: String,
    pub ports: Vec<ContainerPort>,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub netns: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
}

/// A host of the lab as people name it: `namespace/pod` for pods, a bare name for externals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PodRef {
    Pod { namespace: String, name: String },
    External { name: String },
}

impl PodRef {
    pub fn pod(namespace: &str, name: &str) -> Self {
        Self::Pod { namespace: namespace.to_owned(), name: name.to_owned() }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::External { name } => f.write_str(name),
        }
    }
}

impl FromStr for PodRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => Ok(Self::pod(ns, pod)),
            None if !s.is_empty() => Ok(Self::External { name: s.to_owned() }),
            _ => Err(format!("{s:?} is not NAMESPACE/POD (or the name of an external host)")),
        }
    }
}

/// What a probe needs to know about a host.
#[derive(Debug, Clone, Copy)]
pub struct HostView<'a> {
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub netns: &'a str,
    pub ports: &'a [ContainerPort],
}

impl HostView<'_> {
    /// The host's address in `family`; `None` for IPv6 in a lab that is not dual-stack.
    pub fn addr(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => Some(IpAddr::V4(self.ip)),
            Family::Ipv6 => self.ipv6.map(IpAddr::V6),
        }
    }
}

/// An IP version, as probes and traffic pick it (`--ipv6`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

impl LabState {
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.namespace == namespace && p.name == name)
    }

    pub fn external(&self, name: &str) -> Option<&ExternalState> {
        self.externals.iter().find(|e| e.name == name)
    }

    /// Looks up a pod or external.
    pub fn host(&self, r: &PodRef) -> Option<HostView<'_>> {
        match r {
            PodRef::Pod { namespace, name } => {
                self.pod(namespace, name).map(|p| HostView { ip: p.ip, ipv6: p.ipv6, netns: &p.netns, ports: &p.ports })
            }
            PodRef::External { name } => {
                self.external(name).map(|e| HostView { ip: e.ip, ipv6: e.ipv6, netns: &e.netns, ports: &e.ports })
            }
        }
    }

    /// Every pod, in topology order.
    pub fn pod_refs(&self) -> Vec<PodRef> {
        self.pods.iter().map(|p| PodRef::pod(&p.namespace, &p.name)).collect()
    }

    /// A node of a lab with several, by name.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The namespace of the node `pod` runs on: where its veth is.
    pub fn pod_node_netns(&self, pod: &PodState) -> &str {
        pod.node.as_deref().and_then(|n| self.node(n)).map_or(self.node_netns.as_str(), |n| n.netns.as_str())
    }

    /// Every network namespace of the lab: nodes (and the fabric) first, then pods, then externals.
    pub fn netns_names(&self) -> Vec<String> {
        let nodes: Vec<String> = if self.nodes.is_empty() {
            vec![self.node_netns.clone()]
        } else {
            self.nodes.iter().map(|n| n.netns.clone()).chain(self.fabric_netns.clone()).collect()
        };
        nodes
            .into_iter()
            .chain(self.pods.iter().map(|p| p.netns.clone()))
            .chain(self.externals.iter().map(|e| e.netns.clone()))
            .collect()
    }
}

/// The directory holding every lab's directory.
pub fn labs_dir() -> PathBuf {
    std::env::var_os(LAB_DIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_LAB_DIR), PathBuf::from)
}

/// One lab's directory: state, server log, server ready and pid files.
pub fn lab_dir(name: &str) -> PathBuf {
    labs_dir().join(name)
}

pub fn state_path(name: &str) -> PathBuf {
    lab_dir(name).join(STATE_FILE)
}

/// Reads a lab's state.
pub fn load(name: &str) -> Result<LabState, StateError> {
    load_from(&state_path(name), name)
}

fn load_from(path: &Path, name: &str) -> Result<LabState, StateError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            StateError::NotFound { name: name.to_owned(), path: path.to_owned() }
        } else {
            StateError::Read { path: path.to_owned(), source }
        }
    })?;
    serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path: path.to_owned(), source })
}

/// Writes a lab's state atomically (write then rename), so readers never see half a file.
pub fn save(state: &LabState) -> Result<(), StateError> {
    let path = state_path(&state.name);
    let tmp = path.with_extension("json.tmp");
    let write = |p: &Path| -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(p, text)
    };
    write(&tmp)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| StateError::Write { path: path.clone(), source })
}

/// Names of the labs that have a directory (complete or not), sorted.
pub fn list() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(labs_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_refs_parse_pods_and_externals() {
        assert_eq!("x/a".parse::<PodRef>().unwrap(), PodRef::pod("x", "a"));
        assert_eq!("outside".parse::<PodRef>().unwrap(), PodRef::External { name: "outside".into() });
        assert!("x/".parse::<PodRef>().is_err());
        assert!("/a".parse::<PodRef>().is_err());
        assert!("x/a/b".parse::<PodRef>().is_err());
        assert_eq!(PodRef::pod("x", "a").to_string(), "x/a");
    }
}
