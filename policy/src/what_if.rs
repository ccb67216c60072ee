//! What a node would do with a connection, without sending a packet: `flowgate policy test`'s answer. A
//! [`Node`] is one policy generation as the kernel holds it (the realized [`MapContents`]) plus the names
//! behind its rule ids and the policies isolating each endpoint; [`Node::predict`] asks [`PolicyMaps`] (the
//! kernel's lookup order) for the source endpoint's egress and the destination endpoint's ingress, and
//! [`flips`] compares two nodes' answers (a policy added or removed). Pure: the caller builds the node from
//! files (compile + realize) or from the agent's maps.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use flowgate_common::policy::direction;
use serde::Serialize;

use crate::{
    ContainerPort, MatchKind, PolicyPlan, PolicyRef, Protocol,
    lookup::{Outcome, PolicyMaps, Remote},
    realize::{MapContents, RuleTable},
};

/// One policy generation of a node: its map contents and what names them.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub maps: MapContents,
    /// Rule id (as written into the policy map) -> the policies behind it.
    pub rules: BTreeMap<u32, Vec<PolicyRef>>,
    /// (endpoint id, `policy::direction`) -> the policies that isolate the endpoint in that direction.
    pub isolation: BTreeMap<(u16, u8), Vec<PolicyRef>>,
}

impl Node {
    /// The node of a compiled plan whose realization is `maps` (rule ids resolved through `rules`).
    #[must_use]
    pub fn of_plan(plan: &PolicyPlan, maps: MapContents, rules: &RuleTable) -> Self {
        let names = maps.policy.iter().filter_map(|(_, _, v)| Some((v.rule_id, rules.names(v.rule_id)?.to_vec())));
        let rules = names.collect();
        let mut isolation = BTreeMap::new();
        for (&id, ep) in &plan.endpoints {
            for (dir, policy) in [(direction::INGRESS, &ep.ingress), (direction::EGRESS, &ep.egress)] {
                if policy.enforced {
                    isolation.insert((id, dir), policy.selected_by.clone());
                }
            }
        }
        Self { maps, rules, isolation }
    }
}

/// One side of a connection: a pod of the node (an endpoint), a pod elsewhere, or any address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Host {
    /// `namespace/pod`, an external's name, or the address.
    pub name: String,
    /// The endpoint id on this node; `crate::NOT_AN_ENDPOINT` (0) for anything else.
    pub endpoint_id: u16,
    /// The address the connection uses (the IP version asked for).
    pub ip: IpAddr,
    /// Its container ports, for named ports (none for an address outside the cluster).
    #[serde(skip)]
    pub ports: Vec<ContainerPort>,
}

impl Host {
    /// The port `name`/`protocol` resolves to on this host, as Kubernetes resolves a named port on the
    /// destination pod.
    #[must_use]
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports.iter().find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol).map(|p| p.port)
    }
}

/// The answer for one direction of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum DirectionAnswer {
    /// The host is not an endpoint of this node: nothing is enforced for it here.
    NotAnEndpoint,
    /// No policy isolates the endpoint in this direction.
    NotEnforced,
    /// Allowed by the entry the kernel would match: its rule and policies, and the match type.
    Allowed { match_type: MatchKind, rule_id: u32, policies: Vec<PolicyRef> },
    /// Nothing allows it, and the endpoint is in audit mode: it passes, reported as AUDIT.
    Audit { isolated_by: Vec<PolicyRef> },
    /// Nothing allows it: default deny, because of the isolating policies.
    DefaultDeny { isolated_by: Vec<PolicyRef> },
}

impl DirectionAnswer {
    #[must_use]
    pub fn passes(&self) -> bool {
        !matches!(self, DirectionAnswer::DefaultDeny { .. })
    }
}

fn names(policies: &[PolicyRef]) -> String {
    if policies.is_empty() {
        return "(none)".to_owned();
    }
    policies.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for DirectionAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectionAnswer::NotAnEndpoint => f.write_str("not an endpoint of this node: nothing enforced"),
            DirectionAnswer::NotEnforced => f.write_str("allowed: no policy selects it for this direction"),
            DirectionAnswer::Allowed { match_type, policies, .. } => {
                write!(f, "allowed by {} (match {match_type})", names(policies))
            }
            DirectionAnswer::Audit { isolated_by } => {
                write!(
                    f,
                    "AUDIT: nothing allows it, default deny by {} would drop it; audit mode lets it pass",
                    names(isolated_by)
                )
            }
            DirectionAnswer::DefaultDeny { isolated_by } => {
                write!(f, "denied: default deny, isolated by {}; no rule allows it", names(isolated_by))
            }
        }
    }
}

/// Why a connection is decided without a policy lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortcut {
    /// A pod reaching itself goes over its loopback and never crosses the datapath.
    Loopback,
    /// The named port is declared by no container port of the destination: nothing to connect to.
    NoSuchNamedPort,
}

/// The predicted fate of a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Prediction {
    pub from: Host,
    pub to: Host,
    pub protocol: Protocol,
    /// The numeric port; `None` when a named port does not resolve on the destination.
    pub port: Option<u16>,
    /// Both directions pass.
    pub connected: bool,
    /// Set when the datapath is not asked at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<Shortcut>,
    /// The source endpoint's egress; its remote is the destination (identity as the ipcache gives it).
    pub egress: DirectionAnswer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_remote: Option<Remote>,
    /// The destination endpoint's ingress; its remote is the source.
    pub ingress: DirectionAnswer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_remote: Option<Remote>,
}

impl Node {
    fn answer(
        &self,
        endpoint_id: u16,
        dir: u8,
        remote: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> (DirectionAnswer, Option<Remote>) {
        if endpoint_id == crate::NOT_AN_ENDPOINT {
            return (DirectionAnswer::NotAnEndpoint, None);
        }
        let maps = PolicyMaps::new(&self.maps);
        let (outcome, remote) = maps.new_connection(endpoint_id, dir, remote, protocol.ip_protocol(), port);
        let isolated_by = || self.isolation.get(&(endpoint_id, dir)).cloned().unwrap_or_default();
        let answer = match outcome {
            Outcome::NotEnforced => DirectionAnswer::NotEnforced,
            Outcome::Allowed(allowed) => DirectionAnswer::Allowed {
                match_type: allowed.match_kind(),
                rule_id: allowed.rule_id,
                policies: self.rules.get(&allowed.rule_id).cloned().unwrap_or_default(),
            },
            Outcome::Audit => DirectionAnswer::Audit { isolated_by: isolated_by() },
            Outcome::Denied => DirectionAnswer::DefaultDeny { isolated_by: isolated_by() },
        };
        (answer, Some(remote))
    }

    /// What the node does with a new connection from `from` to `to` on `port` (`None`: a named port the
    /// destination does not declare) over `protocol`.
    #[must_use]
    pub fn predict(&self, from: &Host, to: &Host, protocol: Protocol, port: Option<u16>) -> Prediction {
        let shortcut = if port.is_none() {
            Some(Shortcut::NoSuchNamedPort)
        } else if from.name == to.name {
            Some(Shortcut::Loopback)
        } else {
            None
        };
        let mut prediction = Prediction {
            from: from.clone(),
            to: to.clone(),
            protocol,
            port,
            connected: shortcut == Some(Shortcut::Loopback),
            shortcut,
            egress: DirectionAnswer::NotEnforced,
            egress_remote: None,
            ingress: DirectionAnswer::NotEnforced,
            ingress_remote: None,
        };
        let (Some(port), None) = (port, shortcut) else {
            return prediction;
        };
        (prediction.egress, prediction.egress_remote) =
            self.answer(from.endpoint_id, direction::EGRESS, to.ip, protocol, port);
        (prediction.ingress, prediction.ingress_remote) =
            self.answer(to.endpoint_id, direction::INGRESS, from.ip, protocol, port);
        prediction.connected = prediction.egress.passes() && prediction.ingress.passes();
        prediction
    }
}

/// A connection whose fate differs between two nodes (before and after a change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flip {
    pub before: Prediction,
    pub after: Prediction,
}

/// The predictions of `after` that differ from the one for the same pair in `before` in whether they
/// connect, in `after`'s order.
#[must_use]
pub fn flips(before: &[Prediction], after: &[Prediction]) -> Vec<Flip> {
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.from.name == a.from.name && b.to.name == a.to.name)?;
            (b.connected != a.connected).then(|| Flip { before: b.clone(), after: a.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests;
