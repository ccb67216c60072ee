//! Flow filters, as Hubble's allowlist/denylist: inside one [`FlowFilter`] every criterion that is set
//! must match (AND), a criterion with several values matches any of them, several filters are OR-ed, and
//! a flow matching any deny filter is excluded. Pure; used by the agent for subscriptions and by the
//! exporter on verdict logs.

use serde::{Deserialize, Serialize};

use crate::flow::{EventType, Flow, Peer, Protocol, Verdict};

/// One filter. An empty list means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// The endpoint is on either side, or is where the flow was observed.
    #[serde(default)]
    pub related_to: Vec<u16>,
    /// The source is this endpoint.
    #[serde(default)]
    pub from_endpoint: Vec<u16>,
    /// The destination is this endpoint.
    #[serde(default)]
    pub to_endpoint: Vec<u16>,
    #[serde(default)]
    pub event_types: Vec<EventType>,
    #[serde(default)]
    pub verdicts: Vec<Verdict>,
    /// Either side is in this namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Either side is this pod, `namespace/name`.
    #[serde(default)]
    pub pods: Vec<String>,
    /// Either side's labels match this selector.
    #[serde(default)]
    pub labels: Vec<LabelSelector>,
    /// Source or destination port.
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocols: Vec<Protocol>,
}

fn any_or<T>(values: &[T], pred: impl Fn(&T) -> bool) -> bool {
    values.is_empty() || values.iter().any(pred)
}

fn sides(flow: &Flow) -> [&Peer; 2] {
    [&flow.source, &flow.destination]
}

impl FlowFilter {
    /// Whether the flow meets every criterion set in this filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        any_or(&self.related_to, |id| flow.involves_endpoint(*id))
            && any_or(&self.from_endpoint, |id| *id != 0 && flow.source.endpoint_id == *id)
            && any_or(&self.to_endpoint, |id| *id != 0 && flow.destination.endpoint_id == *id)
            && any_or(&self.event_types, |t| *t == flow.event_type)
            && any_or(&self.verdicts, |v| *v == flow.verdict)
            && any_or(&self.namespaces, |ns| sides(flow).iter().any(|p| &p.namespace == ns))
            && any_or(&self.pods, |pod| {
                sides(flow).iter().any(|p| {
                    pod.split_once('/').is_some_and(|(ns, name)| p.namespace == ns && p.pod_name == name)
                })
            })
            && any_or(&self.labels, |sel| sides(flow).iter().any(|p| sel.matches(&p.labels)))
            && any_or(&self.ports, |port| flow.source_port == *port || flow.destination_port == *port)
            && any_or(&self.protocols, |proto| *proto == flow.protocol)
    }

    /// Whether no criterion is set.
    pub fn is_empty(&self) -> bool {
        *self == FlowFilter::default()
    }
}

/// Whether a flow passes an allowlist (any filter matches, or the list is empty) and no deny filter.
pub fn passes(allow: &[FlowFilter], deny: &[FlowFilter], flow: &Flow) -> bool {
    (allow.is_empty() || allow.iter().any(|f| f.matches(flow))) && !deny.iter().any(|f| f.matches(flow))
}

/// A Kubernetes-style label selector: requirements separated by commas, all of which must hold:
/// `key=value`, `key==value`, `key!=value`, `key`, `!key`, `key in (a,b)`, `key notin (a,b)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Requirement {
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
    Exists { key: String },
    DoesNotExist { key: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("label selector {selector:?}: {problem}")]
pub struct SelectorError {
    pub selector: String,
    pub problem: String,
}

/// Splits on commas that are not inside parentheses.
fn split_requirements(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(key: &str, rest: &str, err: &dyn Fn(&str) -> SelectorError) -> Result<(String, Vec<String>), SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| err("a set must be written in parentheses, e.g. `tier in (web,db)`"))?;
    let values: Vec<String> =
        inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        return Err(err("a set needs at least one value"));
    }
    Ok((key.to_owned(), values))
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let err = |problem: &str| SelectorError { selector: selector.to_owned(), problem: problem.to_owned() };
        let mut requirements = Vec::new();
        for part in split_requirements(selector) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement"));
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist { key: key.trim().to_owned() }
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotIn { key: key.trim().to_owned(), values: vec![value.trim().to_owned()] }
            } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::In { key: key.trim().to_owned(), values: vec![value.trim().to_owned()] }
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                let (key, values) = parse_set(key.trim(), rest, &err)?;
                Requirement::NotIn { key, values }
            } else if let Some((key, rest)) = part.split_once(" in ") {
                let (key, values) = parse_set(key.trim(), rest, &err)?;
                Requirement::In { key, values }
            } else {
                Requirement::Exists { key: part.to_owned() }
            };
            let key = match &requirement {
                Requirement::In { key, .. }
                | Requirement::NotIn { key, .. }
                | Requirement::Exists { key }
                | Requirement::DoesNotExist { key } => key,
            };
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(err(&format!("invalid key in {part:?}")));
            }
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether labels given as `key=value` strings satisfy every requirement.
    pub fn matches(&self, labels: &[String]) -> bool {
        let value_of = |key: &str| {
            labels.iter().find_map(|l| l.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
        };
        self.requirements.iter().all(|r| match r {
            Requirement::In { key, values } => value_of(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn { key, values } => value_of(key).is_none_or(|v| !values.iter().any(|x| x == v)),
            Requirement::Exists { key } => value_of(key).is_some(),
            Requirement::DoesNotExist { key } => value_of(key).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;
    use crate::flow::{TcpFlags, TrafficDirection};

    fn peer(id: u16, ns: &str, pod: &str, labels: &[&str]) -> Arc<Peer> {
        Arc::new(Peer {
            endpoint_id: id,
            identity: 100 + u32::from(id),
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn flow(src: u16, dst: u16, verdict: Verdict, dport: u16) -> Flow {
        Flow {
            time_ns: 0,
            ktime_ns: 0,
            event_type: EventType::PolicyVerdict,
            verdict,
            drop_reason: 0,
            source_ip: Ipv4Addr::new(10, 0, 0, src as u8),
            destination_ip: Ipv4Addr::new(10, 0, 0, dst as u8),
            protocol: Protocol::Tcp,
            source_port: 40000,
            destination_port: dport,
            tcp_flags: TcpFlags(TcpFlags::SYN),
            icmp_type: 0,
            icmp_code: 0,
            source: peer(src, "default", "backend", &["component=backend"]),
            destination: peer(dst, "default", "database", &["component=database", "tier=db"]),
            endpoint_id: src,
            traffic_direction: TrafficDirection::Egress,
            ifindex: 3,
            packet_len: 60,
            is_reply: Some(false),
            match_type: None,
            policy: None,
            ct_state: None,
            cpu: 0,
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(FlowFilter::default().matches(&flow(1, 2, Verdict::Dropped, 5432)));
    }

    #[test]
    fn fields_are_anded_values_are_ored() {
        let f = FlowFilter { related_to: vec![2, 9], verdicts: vec![Verdict::Dropped], ..Default::default() };
        assert!(f.matches(&flow(1, 2, Verdict::Dropped, 5432)));
        assert!(!f.matches(&flow(1, 2, Verdict::Forwarded, 5432)), "verdict must also match");
        assert!(!f.matches(&flow(1, 3, Verdict::Dropped, 5432)), "endpoint 3 is not related");
    }

    #[test]
    fn from_and_to_are_directional() {
        let from = FlowFilter { from_endpoint: vec![1], ..Default::default() };
        let to = FlowFilter { to_endpoint: vec![1], ..Default::default() };
        assert!(from.matches(&flow(1, 2, Verdict::Forwarded, 80)));
        assert!(!to.matches(&flow(1, 2, Verdict::Forwarded, 80)));
        assert!(to.matches(&flow(2, 1, Verdict::Forwarded, 80)));
    }

    #[test]
    fn filters_are_ored_and_deny_excludes() {
        let allow = [
            FlowFilter { ports: vec![5432], ..Default::default() },
            FlowFilter { ports: vec![80], ..Default::default() },
        ];
        let deny = [FlowFilter { verdicts: vec![Verdict::Forwarded], ..Default::default() }];
        assert!(passes(&allow, &deny, &flow(1, 2, Verdict::Dropped, 80)));
        assert!(passes(&allow, &deny, &flow(1, 2, Verdict::Dropped, 5432)));
        assert!(!passes(&allow, &deny, &flow(1, 2, Verdict::Dropped, 443)));
        assert!(!passes(&allow, &deny, &flow(1, 2, Verdict::Forwarded, 80)), "deny wins");
        assert!(passes(&[], &[], &flow(1, 2, Verdict::Forwarded, 1)));
    }

    #[test]
    fn namespace_pod_protocol() {
        let f = FlowFilter {
            namespaces: vec!["default".into()],
            pods: vec!["default/database".into()],
            protocols: vec![Protocol::Tcp],
            ..Default::default()
        };
        assert!(f.matches(&flow(1, 2, Verdict::Dropped, 5432)));
        let udp = FlowFilter { protocols: vec![Protocol::Udp], ..Default::default() };
        assert!(!udp.matches(&flow(1, 2, Verdict::Dropped, 5432)));
        let other = FlowFilter { pods: vec!["kube-system/database".into()], ..Default::default() };
        assert!(!other.matches(&flow(1, 2, Verdict::Dropped, 5432)));
    }

    #[test]
    fn label_selectors() {
        let labels: Vec<String> = vec!["component=database".into(), "tier=db".into()];
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&labels);
        assert!(m("component=database"));
        assert!(m("component==database,tier"));
        assert!(m("component in (web, database)"));
        assert!(!m("component notin (database)"));
        assert!(m("!missing"));
        assert!(!m("tier!=db"));
        assert!(m("env!=prod"), "!= holds when the key is absent, as in Kubernetes");
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("a=1,,b").is_err());
        let f = FlowFilter { labels: vec![LabelSelector::parse("tier=db").unwrap()], ..Default::default() };
        assert!(f.matches(&flow(1, 2, Verdict::Dropped, 5432)));
    }
}
