//! The one flow filter model, as Hubble's `FlowFilter`: allow and deny lists of filters; inside one
//! [`FlowFilter`] every criterion that is set must match (AND), a criterion with several values matches
//! any of them, the filters of a list are OR-ed, and a flow matching any deny filter is excluded.
//!
//! The monitor's subscriptions (on the wire), the verdict log's `include`/`exclude` (YAML) and
//! `flowgate verdicts export` (records read back from Hubble JSON with [`crate::hubble::read_flow`]) all
//! use this model, so `--pod`, `--verdict` or `--policy` mean the same everywhere. Values are parsed
//! once, into typed values ([`FromStr`](std::str::FromStr) and serde from the same strings); each
//! criterion's rule is written once (one file per criterion, as Hubble's filters package), over
//! [`Values`], which a filter's lists implement as written and [`CompiledFilter`] as sets.

mod compiled;
mod de;
mod endpoint;
mod event_type;
mod label;
mod namespace;
mod pod;
mod policy;
mod port;
mod protocol;
mod verdict;

use serde::Serialize;

pub use self::{
    compiled::{CompiledFilter, FilterSet},
    de::StrictFilter,
    label::{LabelSelector, Requirement, SelectorError},
    pod::{PodIndex, PodSelector},
    policy::{PolicyIndex, PolicySelector},
};
use crate::flow::{EventType, Flow, Peer, Protocol, Verdict};

/// One filter. An empty list means "any". Serialized on the wire inside subscriptions (maps with
/// these field names; fields are only ever added, with defaults); deserialized from the wire and
/// from configuration files with the same value spellings (see [`StrictFilter`] for files).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowFilter {
    /// The endpoint is on either side, or is where the flow was observed.
    pub related_to: Vec<u16>,
    /// The source is this endpoint.
    pub from_endpoint: Vec<u16>,
    /// The destination is this endpoint.
    pub to_endpoint: Vec<u16>,
    pub event_types: Vec<EventType>,
    pub verdicts: Vec<Verdict>,
    /// Either side is in this namespace.
    pub namespaces: Vec<String>,
    /// Either side is a pod whose name starts with the prefix, in the namespace when one is given
    /// (`[namespace/]pod-name-prefix`, as Hubble).
    pub pods: Vec<PodSelector>,
    /// Either side's labels match this selector.
    pub labels: Vec<LabelSelector>,
    /// Source or destination port.
    pub ports: Vec<u16>,
    pub protocols: Vec<Protocol>,
    /// A policy that decided the flow (allowed it, or isolated the endpoint for a default deny),
    /// `[namespace/]name`. Added in protocol 1.1; an agent speaking 1.0 ignores it.
    pub policies: Vec<PolicySelector>,
}

/// The values of one criterion, as a filter's list (as written, searched in order) or compiled into
/// a set ([`CompiledFilter`]): whether a part of a flow is among them. Each criterion's rule is
/// written once, over this trait, so both forms give the same answers.
pub trait Values<Q: ?Sized> {
    /// No value: the criterion is not set, and every flow meets it.
    fn is_empty(&self) -> bool;
    fn contains(&self, value: &Q) -> bool;
}

impl<T, Q> Values<Q> for [T]
where
    T: std::borrow::Borrow<Q>,
    Q: PartialEq + ?Sized,
{
    fn is_empty(&self) -> bool {
        <[T]>::is_empty(self)
    }

    fn contains(&self, value: &Q) -> bool {
        self.iter().any(|v| v.borrow() == value)
    }
}

impl<T, Q> Values<Q> for std::collections::HashSet<T>
where
    T: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    fn is_empty(&self) -> bool {
        std::collections::HashSet::is_empty(self)
    }

    fn contains(&self, value: &Q) -> bool {
        std::collections::HashSet::contains(self, value)
    }
}

/// Both sides of a flow, for criteria that hold when either side meets them.
fn sides(flow: &Flow) -> [&Peer; 2] {
    [&flow.source, &flow.destination]
}

impl FlowFilter {
    /// Whether the flow meets every criterion set in this filter. Searches the lists as written: for
    /// a filter used on many flows, [`CompiledFilter`] answers the same in constant time per value.
    pub fn matches(&self, flow: &Flow) -> bool {
        compiled::meets(self, flow)
    }

    /// Whether no criterion is set.
    pub fn is_empty(&self) -> bool {
        *self == FlowFilter::default()
    }

    /// How many values the filter names, over all its criteria: what a subscription's filter size is
    /// capped by ([`MAX_FILTER_VALUES`]).
    pub fn value_count(&self) -> usize {
        self.related_to.len()
            + self.from_endpoint.len()
            + self.to_endpoint.len()
            + self.event_types.len()
            + self.verdicts.len()
            + self.namespaces.len()
            + self.pods.len()
            + self.labels.len()
            + self.ports.len()
            + self.protocols.len()
            + self.policies.len()
    }

    /// Whether an agent speaking protocol 1.0 would read this filter differently: it ignores
    /// `policies` and knows pods only as an exact `namespace/name`.
    pub fn needs_protocol_1_1(&self) -> bool {
        !self.policies.is_empty() || self.pods.iter().any(|p| p.namespace.is_none())
    }
}

/// Most values the allow and deny filters of one subscription may name together. Compiled filters cost
/// the same per event whatever their size, but compiling and holding them is not free: 1,000 pods fit
/// many times over.
pub const MAX_FILTER_VALUES: usize = 16_384;

/// Whether a flow passes an allowlist (any filter matches, or the list is empty) and no deny filter.
/// Searches the lists as written; [`FilterSet`] is the compiled equivalent.
pub fn passes(allow: &[FlowFilter], deny: &[FlowFilter], flow: &Flow) -> bool {
    (allow.is_empty() || allow.iter().any(|f| f.matches(flow))) && !deny.iter().any(|f| f.matches(flow))
}

/// Why a value of a filter could not be read; the caller (a command-line flag, a configuration key)
/// says which field it was for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("unknown event type {value:?} (expected policy-verdict, drop, trace, capture or agent)")]
    EventType { value: String },
    #[error(
        "unknown verdict {value:?} (expected allowed, denied or audit; Hubble's FORWARDED, DROPPED and AUDIT work too)"
    )]
    Verdict { value: String },
    #[error("unknown protocol {value:?} (expected TCP, UDP, SCTP, ICMP or ICMPv6)")]
    Protocol { value: String },
    #[error("pod {value:?}: {problem}; write [namespace/]pod-name-prefix, e.g. default/web- or web")]
    Pod { value: String, problem: &'static str },
    #[error("policy {value:?}: {problem}; write [namespace/]name, e.g. default/allow-db")]
    Policy { value: String, problem: &'static str },
}

/// Serde support shared by the criteria whose values are written as strings: deserialize through
/// [`FromStr`](std::str::FromStr), so a configuration file, a command-line flag and the wire accept
/// the same spellings and give the same errors.
mod text {
    use std::{fmt, marker::PhantomData, str::FromStr};

    use serde::de::{self, Deserializer, Visitor};

    pub(super) struct FromText<T>(PhantomData<T>, &'static str);

    impl<T> FromText<T> {
        pub(super) fn new(expecting: &'static str) -> Self {
            Self(PhantomData, expecting)
        }
    }

    impl<T: FromStr<Err: fmt::Display>> Visitor<'_> for FromText<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.1)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.parse().map_err(E::custom)
        }
    }

    /// Deserializes a `T` from its text.
    pub(super) fn deserialize<'de, T, D>(deserializer: D, expecting: &'static str) -> Result<T, D::Error>
    where
        T: FromStr<Err: fmt::Display>,
        D: Deserializer<'de>,
    {
        deserializer.deserialize_str(FromText::new(expecting))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;
    use crate::flow::{PolicyAttribution, PolicyName, TcpFlags, TrafficDirection};

    pub(crate) fn peer(id: u16, ns: &str, pod: &str, labels: &[&str]) -> Arc<Peer> {
        Arc::new(Peer {
            endpoint_id: id,
            identity: 100 + u32::from(id),
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// A policy verdict from endpoint `src` (default/backend) to `dst` (default/database) port `dport`.
    pub(crate) fn flow(src: u16, dst: u16, verdict: Verdict, dport: u16) -> Flow {
        Flow {
            time_ns: 0,
            ktime_ns: 0,
            event_type: EventType::PolicyVerdict,
            verdict,
            drop_reason: 0,
            source_ip: Ipv4Addr::new(10, 0, 0, src as u8).into(),
            destination_ip: Ipv4Addr::new(10, 0, 0, dst as u8).into(),
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
            policy: Some(PolicyAttribution::AllowedBy(vec![PolicyName {
                namespace: "default".into(),
                name: "allow-db".into(),
            }])),
            ct_state: None,
            cpu: 0,
            policy_revision: None,
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(FlowFilter::default().matches(&flow(1, 2, Verdict::Dropped, 5432)));
        assert!(FlowFilter::default().is_empty());
    }

    #[test]
    fn fields_are_anded_values_are_ored() {
        let f = FlowFilter { related_to: vec![2, 9], verdicts: vec![Verdict::Dropped], ..Default::default() };
        assert!(f.matches(&flow(1, 2, Verdict::Dropped, 5432)));
        assert!(!f.matches(&flow(1, 2, Verdict::Forwarded, 5432)), "verdict must also match");
        assert!(!f.matches(&flow(1, 3, Verdict::Dropped, 5432)), "endpoint 3 is not related");
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
            pods: vec!["default/database".parse().unwrap()],
            protocols: vec![Protocol::Tcp],
            ..Default::default()
        };
        assert!(f.matches(&flow(1, 2, Verdict::Dropped, 5432)));
        let udp = FlowFilter { protocols: vec![Protocol::Udp], ..Default::default() };
        assert!(!udp.matches(&flow(1, 2, Verdict::Dropped, 5432)));
        let other = FlowFilter { pods: vec!["kube-system/database".parse().unwrap()], ..Default::default() };
        assert!(!other.matches(&flow(1, 2, Verdict::Dropped, 5432)));
    }

    #[test]
    fn filters_new_to_protocol_1_1_are_recognised() {
        let pod = |p: &str| FlowFilter { pods: vec![p.parse().unwrap()], ..Default::default() };
        assert!(!pod("default/web").needs_protocol_1_1());
        assert!(pod("web").needs_protocol_1_1());
        let policy = FlowFilter { policies: vec!["x/deny-all".parse().unwrap()], ..Default::default() };
        assert!(policy.needs_protocol_1_1());
    }
}
