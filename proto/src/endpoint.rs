//! Endpoints and identities as the agent reports them: every pod the agent enforces for, under a small
//! stable integer id (as Cilium's endpoint ids), and the security identities derived from labels. Only
//! what crosses the socket (and [`NewEndpoint`], what the agent learns of a pod) is here; the registry
//! that hands out the ids is the agent's state (`flowgate_agent::endpoints`).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

/// Policy enforcement of one direction of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// No policy selects the endpoint for this direction: everything passes.
    #[default]
    Disabled,
    /// Policy selects the endpoint: only what it allows passes.
    Enabled,
    /// Policy selects the endpoint but would-be drops pass and are reported as AUDIT.
    Audit,
}

/// Lifecycle of an endpoint, as `cilium endpoint list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    #[default]
    WaitingForIdentity,
    Regenerating,
    Ready,
    Disconnecting,
    /// A pod of this node whose node-side interface cannot be found (Kubernetes mode: no host route to its
    /// address in the node's namespace); looked for again until it is. Since protocol 1.4.
    WaitingForInterface,
}

/// One endpoint (a pod on this node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u16,
    pub namespace: String,
    pub pod_name: String,
    pub labels: BTreeMap<String, String>,
    pub identity: u32,
    pub ipv4: Ipv4Addr,
    /// The endpoint's IPv6 address on a dual-stack node.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Node-side interface name and index.
    pub interface: String,
    pub ifindex: u32,
    pub ingress_enforcement: Enforcement,
    pub egress_enforcement: Enforcement,
    pub state: EndpointState,
    /// Packets the endpoint sent with a source address that is not its own, dropped by the datapath.
    #[serde(default)]
    pub invalid_source_drops: u64,
}

impl Endpoint {
    /// `namespace/pod`.
    pub fn pod_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.pod_name)
    }

    /// Labels as `key=value`, sorted.
    pub fn label_list(&self) -> Vec<String> {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// A security identity: one per distinct set of security-relevant labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    pub labels: Vec<String>,
    /// Endpoints that have this identity.
    pub endpoints: Vec<u16>,
}

/// What is known about a pod before it gets an id.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub namespace: String,
    pub pod_name: String,
    pub labels: BTreeMap<String, String>,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub interface: String,
    pub ifindex: u32,
}
