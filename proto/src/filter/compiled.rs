//! Filters compiled for use on many flows: every list becomes a set (hash sets of endpoint ids,
//! namespaces, ports, event types, verdicts and protocols; [`PodIndex`] and [`PolicyIndex`] for pods
//! and policies), so the cost per flow does not grow with the number of values named. Label
//! selectors stay a list: each one is evaluated on the labels.
//!
//! The AND of the criteria is spelled out here twice, once over a filter's lists and once over the
//! compiled sets, side by side, so a new criterion is added to both at once; the rules themselves
//! live in the criterion modules and are shared.

use std::collections::HashSet;

use super::{
    FlowFilter, LabelSelector, PodIndex, PolicyIndex, endpoint, event_type, label, namespace, pod, policy, port,
    protocol, verdict,
};
use crate::flow::{EventType, Flow, Protocol, Verdict};

/// Whether `flow` meets every criterion of `filter`, searching its lists as written.
pub(super) fn meets(filter: &FlowFilter, flow: &Flow) -> bool {
    endpoint::related_to(filter.related_to.as_slice(), flow)
        && endpoint::from_endpoint(filter.from_endpoint.as_slice(), flow)
        && endpoint::to_endpoint(filter.to_endpoint.as_slice(), flow)
        && event_type::matches(filter.event_types.as_slice(), flow)
        && verdict::matches(filter.verdicts.as_slice(), flow)
        && namespace::matches(filter.namespaces.as_slice(), flow)
        && pod::matches(filter.pods.as_slice(), flow)
        && label::matches(filter.labels.as_slice(), flow)
        && port::matches(filter.ports.as_slice(), flow)
        && protocol::matches(filter.protocols.as_slice(), flow)
        && policy::matches(filter.policies.as_slice(), flow)
}

/// One [`FlowFilter`] with its lists compiled into sets.
#[derive(Clone, Debug, Default)]
pub struct CompiledFilter {
    related_to: HashSet<u16>,
    from_endpoint: HashSet<u16>,
    to_endpoint: HashSet<u16>,
    event_types: HashSet<EventType>,
    verdicts: HashSet<Verdict>,
    namespaces: HashSet<String>,
    pods: PodIndex,
    labels: Vec<LabelSelector>,
    ports: HashSet<u16>,
    protocols: HashSet<Protocol>,
    policies: PolicyIndex,
}

impl CompiledFilter {
    pub fn compile(filter: &FlowFilter) -> Self {
        Self {
            related_to: filter.related_to.iter().copied().collect(),
            from_endpoint: filter.from_endpoint.iter().copied().collect(),
            to_endpoint: filter.to_endpoint.iter().copied().collect(),
            event_types: filter.event_types.iter().copied().collect(),
            verdicts: filter.verdicts.iter().copied().collect(),
            namespaces: filter.namespaces.iter().cloned().collect(),
            pods: filter.pods.iter().collect(),
            labels: filter.labels.clone(),
            ports: filter.ports.iter().copied().collect(),
            protocols: filter.protocols.iter().copied().collect(),
            policies: filter.policies.iter().collect(),
        }
    }

    /// Whether the flow meets every criterion set; the same answer as [`FlowFilter::matches`].
    pub fn matches(&self, flow: &Flow) -> bool {
        endpoint::related_to(&self.related_to, flow)
            && endpoint::from_endpoint(&self.from_endpoint, flow)
            && endpoint::to_endpoint(&self.to_endpoint, flow)
            && event_type::matches(&self.event_types, flow)
            && verdict::matches(&self.verdicts, flow)
            && namespace::matches(&self.namespaces, flow)
            && pod::matches(&self.pods, flow)
            && label::matches(self.labels.as_slice(), flow)
            && port::matches(&self.ports, flow)
            && protocol::matches(&self.protocols, flow)
            && policy::matches(&self.policies, flow)
    }
}

/// Allow and deny lists, compiled: a flow passes when it matches any allow filter (or there is none)
/// and no deny filter. The compiled form of [`super::passes`].
#[derive(Clone, Debug, Default)]
pub struct FilterSet {
    allow: Vec<CompiledFilter>,
    deny: Vec<CompiledFilter>,
}

impl FilterSet {
    /// Compiles the lists. An empty filter in `allow` lets everything through, as it does uncompiled.
    pub fn compile(allow: &[FlowFilter], deny: &[FlowFilter]) -> Self {
        Self {
            allow: allow.iter().map(CompiledFilter::compile).collect(),
            deny: deny.iter().map(CompiledFilter::compile).collect(),
        }
    }

    /// Whether nothing is filtered out: no allow and no deny filter.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(flow)))
            && !self.deny.iter().any(|f| f.matches(flow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        filter::{
            passes,
            tests::{flow, peer},
        },
        flow::{PolicyAttribution, PolicyName, fixtures::flow_between},
        hubble::fixtures,
    };

    /// Filters touching every criterion, each with a value that matches some flows and not others.
    fn filters() -> Vec<FlowFilter> {
        let f = |text: &str| -> FlowFilter { serde_json::from_str(text).unwrap() };
        vec![
            FlowFilter::default(),
            f(r#"{"related_to": [7, 99]}"#),
            f(r#"{"related_to": [0, 12]}"#),
            f(r#"{"from_endpoint": [12]}"#),
            f(r#"{"to_endpoint": [12, 1]}"#),
            f(r#"{"event_types": ["drop", "trace"]}"#),
            f(r#"{"verdicts": ["denied", "audit"]}"#),
            f(r#"{"namespaces": ["default"]}"#),
            f(r#"{"namespaces": ["kube-system", "x"]}"#),
            f(r#"{"pods": ["default/data", "backend"]}"#),
            f(r#"{"pods": ["pod-", "other/pod-1"]}"#),
            f(r#"{"pods": ["default/"]}"#),
            f(r#"{"labels": ["component in (backend, web)", "tier=db"]}"#),
            f(r#"{"labels": ["reserved:world"]}"#),
            f(r#"{"ports": [80, 53]}"#),
            f(r#"{"protocols": ["UDP", "icmp"]}"#),
            f(r#"{"policies": ["default/allow-dns", "network-policy-walkthrough-db"]}"#),
            f(r#"{"policies": ["x/default-deny-ingress-policy"]}"#),
            f(r#"{"verdicts": ["allowed"], "ports": [5432], "pods": ["default/database"]}"#),
        ]
    }

    fn flows() -> Vec<Flow> {
        let mut flows: Vec<Flow> = fixtures::all().into_iter().map(|(_, f)| f).collect();
        flows.extend([
            flow(1, 2, Verdict::Dropped, 80),
            flow(3, 12, Verdict::Forwarded, 5432),
            flow_between(1, 2, 40000),
        ]);
        let mut isolated = flow(4, 5, Verdict::Audit, 53);
        isolated.policy = Some(PolicyAttribution::DefaultDeny {
            isolated_by: vec![PolicyName { namespace: "x".into(), name: "default-deny-ingress-policy".into() }],
        });
        flows.push(isolated);
        let mut elsewhere = flow(5, 6, Verdict::Forwarded, 8080);
        elsewhere.source = peer(5, "x", "a", &["app=a"]);
        elsewhere.destination = peer(6, "y", "b", &["app=b"]);
        elsewhere.policy = None;
        flows.push(elsewhere);
        flows
    }

    #[test]
    fn compiled_filters_answer_as_the_lists_do() {
        let flows = flows();
        for filter in filters() {
            let compiled = CompiledFilter::compile(&filter);
            let mut matched = 0;
            for flow in &flows {
                assert_eq!(compiled.matches(flow), filter.matches(flow), "{filter:?} on {flow:?}");
                matched += usize::from(filter.matches(flow));
            }
            if !filter.is_empty() {
                assert!(matched > 0 && matched < flows.len(), "{filter:?} should tell flows apart");
            }
        }
    }

    #[test]
    fn compiled_sets_answer_as_passes() {
        let flows = flows();
        let all = filters();
        for (allow, deny) in [(&all[1..3], &all[5..6]), (&all[7..9], &all[14..15]), (&[][..], &all[9..10])] {
            let set = FilterSet::compile(allow, deny);
            for flow in &flows {
                assert_eq!(set.matches(flow), passes(allow, deny, flow));
            }
        }
        assert!(FilterSet::compile(&[], &[]).is_empty());
        assert!(FilterSet::default().matches(&flows[0]));
    }
}
