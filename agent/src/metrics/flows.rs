//! Flow counts for the metrics, kept by a hub subscriber (never by the reader): flows by type and
//! verdict, policy verdicts by direction, match and action, drops by reason and protocol, and the
//! label-bounded families (per endpoint, per policy, per denied pair), each capped at a number of
//! distinct label sets beyond which counts go to `other`.

use std::collections::{BTreeMap, HashMap, HashSet};

use flowgate_proto::{
    Flow,
    flow::{EventType, MatchType, Peer, PolicyAttribution, Protocol, TrafficDirection, Verdict},
    hubble,
};

/// Label value that collects what is over a cap.
pub const OTHER: &str = "other";

/// Caps on the families whose labels come from the data.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub endpoints: usize,
    pub policies: usize,
    pub denied_pairs: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self { endpoints: 256, policies: 256, denied_pairs: 256 }
    }
}

pub fn verdict_label(v: Verdict) -> &'static str {
    v.hubble_name()
}

/// Hubble's `action` label: `forwarded`, `dropped`, `audit`.
pub fn action_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Forwarded => "forwarded",
        Verdict::Dropped => "dropped",
        Verdict::Audit => "audit",
    }
}

pub fn direction_label(d: TrafficDirection) -> &'static str {
    match d {
        TrafficDirection::Ingress => "ingress",
        TrafficDirection::Egress => "egress",
        TrafficDirection::Unknown => "unknown",
    }
}

pub fn match_label(m: Option<MatchType>) -> &'static str {
    m.unwrap_or(MatchType::None).metrics_label()
}

/// Hubble's name of the protocol (`TCP`, `ICMPv4`), `PROTO-N` for one without.
pub fn protocol_label(p: Protocol) -> String {
    p.hubble_name().map_or_else(|| p.name().to_ascii_uppercase(), str::to_owned)
}

/// `namespace/pod` for an endpoint, else its first label (`cidr:...`, `reserved:world`), else its IP.
fn peer_label(peer: &Peer, ip: std::net::IpAddr) -> String {
    if !peer.pod_name.is_empty() {
        format!("{}/{}", peer.namespace, peer.pod_name)
    } else if let Some(l) = peer.labels.first() {
        l.clone()
    } else {
        ip.to_string()
    }
}

#[derive(Debug, Default)]
pub struct FlowCounts {
    /// `[event type][verdict]`.
    pub processed: BTreeMap<(&'static str, &'static str), u64>,
    /// `[IP version][verdict]`: `IPv4`, `IPv6` as Hubble's `ipVersion`.
    pub by_ip_version: BTreeMap<(&'static str, &'static str), u64>,
    /// `(direction, match, action)`.
    pub policy_verdicts: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// `(reason, protocol)`.
    pub drops: BTreeMap<(&'static str, String), u64>,
    /// `(endpoint, namespace, pod, direction, action)`.
    pub endpoint_verdicts: BTreeMap<(String, String, String, &'static str, &'static str), u64>,
    endpoint_seen: HashMap<u16, (String, String, String)>,
    /// `(policy, direction, action)`.
    pub policy_decisions: BTreeMap<(String, &'static str, &'static str), u64>,
    /// The policies with labels of their own in `policy_decisions` (at most `caps.policies`).
    policies_seen: HashSet<String>,
    /// `(source, destination)` of denied connections.
    pub denied_pairs: BTreeMap<(String, String), u64>,
    caps: Caps,
}

impl FlowCounts {
    pub fn new(caps: Caps) -> Self {
        Self { caps, ..Self::default() }
    }

    pub fn count(&mut self, flow: &Flow) {
        *self.processed.entry((flow.event_type.as_str(), verdict_label(flow.verdict))).or_default() += 1;
        let ip_version = if flow.source_ip.is_ipv6() { "IPv6" } else { "IPv4" };
        *self.by_ip_version.entry((ip_version, verdict_label(flow.verdict))).or_default() += 1;
        match flow.event_type {
            EventType::PolicyVerdict => self.policy_verdict(flow),
            EventType::Drop => {
                let reason = hubble::drop_reason_name(flow.drop_reason);
                *self.drops.entry((reason, protocol_label(flow.protocol))).or_default() += 1;
            }
            _ => {}
        }
    }

    fn policy_verdict(&mut self, flow: &Flow) {
        let direction = direction_label(flow.traffic_direction);
        let action = action_label(flow.verdict);
        *self.policy_verdicts.entry((direction, match_label(flow.match_type), action)).or_default() += 1;

        // Per local endpoint, the first `caps.endpoints` endpoints by id.
        let local = if flow.traffic_direction == TrafficDirection::Ingress { &flow.destination } else { &flow.source };
        let endpoint_cap = self.caps.endpoints;
        let seen = self.endpoint_seen.len();
        // An id that went to another pod (`EndpointRegistry::take_reused`) is a new label set.
        let same_pod = |l: &(String, String, String)| l.1 == local.namespace && l.2 == local.pod_name;
        let labels = match self.endpoint_seen.get(&flow.endpoint_id) {
            // A flow enriched without its pod (the endpoint went between the record and its enrichment)
            // counts where its id does.
            Some(l) if same_pod(l) || local.pod_name.is_empty() => l.clone(),
            // A reused id takes its old pod's slot, and the old pod's series go (as Hubble drops a deleted
            // pod's): the cap bounds the series, however many pods come and go.
            known if known.is_some() || seen < endpoint_cap => {
                let l = (flow.endpoint_id.to_string(), local.namespace.clone(), local.pod_name.clone());
                if let Some(old) = self.endpoint_seen.insert(flow.endpoint_id, l.clone()) {
                    self.endpoint_verdicts.retain(|(id, ns, pod, _, _), _| (id, ns, pod) != (&old.0, &old.1, &old.2));
                }
                l
            }
            _ => (OTHER.to_owned(), String::new(), String::new()),
        };
        *self.endpoint_verdicts.entry((labels.0, labels.1, labels.2, direction, action)).or_default() += 1;

        // Per policy that decided: the allowing policies, or the isolating ones of a default deny.
        let names: Vec<String> = match &flow.policy {
            Some(PolicyAttribution::AllowedBy(names)) => names.iter().map(ToString::to_string).collect(),
            Some(PolicyAttribution::DefaultDeny { isolated_by }) => {
                isolated_by.iter().map(ToString::to_string).collect()
            }
            None => Vec::new(),
        };
        let names = if names.is_empty() {
            vec![if flow.verdict == Verdict::Forwarded { "none" } else { "default-deny" }.to_owned()]
        } else {
            names
        };
        for name in names {
            // A set lookup, not a walk of the family: a node with hundreds of policies counts thousands of
            // verdicts a second.
            let policy = if self.policies_seen.contains(&name) {
                name
            } else if self.policies_seen.len() < self.caps.policies {
                self.policies_seen.insert(name.clone());
                name
            } else {
                OTHER.to_owned()
            };
            *self.policy_decisions.entry((policy, direction, action)).or_default() += 1;
        }

        if flow.verdict == Verdict::Dropped {
            let pair = (peer_label(&flow.source, flow.source_ip), peer_label(&flow.destination, flow.destination_ip));
            let key = if self.denied_pairs.contains_key(&pair) || self.denied_pairs.len() < self.caps.denied_pairs {
                pair
            } else {
                (OTHER.to_owned(), OTHER.to_owned())
            };
            *self.denied_pairs.entry(key).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flowgate_proto::flow::{PolicyName, fixtures::flow_between};

    use super::*;

    fn verdict(src: u16, dst: u16, v: Verdict) -> Flow {
        let mut f = flow_between(src, dst, 1000);
        f.event_type = EventType::PolicyVerdict;
        f.verdict = v;
        f.traffic_direction = TrafficDirection::Ingress;
        f.endpoint_id = dst;
        f.match_type = Some(MatchType::None);
        f.policy = Some(PolicyAttribution::DefaultDeny {
            isolated_by: vec![PolicyName { namespace: "default".into(), name: "deny".into() }],
        });
        f
    }

    #[test]
    fn counts_by_labels() {
        let mut c = FlowCounts::new(Caps::default());
        c.count(&verdict(1, 2, Verdict::Dropped));
        c.count(&verdict(1, 2, Verdict::Dropped));
        let mut drop = verdict(1, 2, Verdict::Dropped);
        drop.event_type = EventType::Drop;
        drop.drop_reason = 133;
        c.count(&drop);
        c.count(&flow_between(1, 2, 5));
        assert_eq!(c.processed[&("policy-verdict", "DROPPED")], 2);
        assert_eq!(c.processed[&("trace", "FORWARDED")], 1);
        assert_eq!(c.by_ip_version[&("IPv4", "DROPPED")], 3);
        let mut v6 = flow_between(1, 2, 6);
        (v6.source_ip, v6.destination_ip) = ("fd00::a".parse().unwrap(), "fd00::b".parse().unwrap());
        c.count(&v6);
        assert_eq!(c.by_ip_version[&("IPv6", "FORWARDED")], 1);
        assert_eq!(c.policy_verdicts[&("ingress", "none", "dropped")], 2);
        assert_eq!(c.drops[&("POLICY_DENIED", "TCP".to_owned())], 1);
        assert_eq!(c.endpoint_verdicts[&("2".into(), "default".into(), "pod-2".into(), "ingress", "dropped")], 2);
        assert_eq!(c.policy_decisions[&("default/deny".into(), "ingress", "dropped")], 2);
        assert_eq!(c.denied_pairs[&("default/pod-1".into(), "default/pod-2".into())], 2);
    }

    #[test]
    fn cardinality_is_capped() {
        let mut c = FlowCounts::new(Caps { endpoints: 3, policies: 2, denied_pairs: 4 });
        for dst in 1..=10 {
            c.count(&verdict(100, dst, Verdict::Dropped));
        }
        let endpoints: std::collections::BTreeSet<_> = c.endpoint_verdicts.keys().map(|k| k.0.clone()).collect();
        assert_eq!(endpoints.len(), 4, "three endpoints and other: {endpoints:?}");
        assert_eq!(c.endpoint_verdicts[&(OTHER.into(), String::new(), String::new(), "ingress", "dropped")], 7);
        assert_eq!(c.denied_pairs.len(), 5);
        assert_eq!(c.denied_pairs[&(OTHER.into(), OTHER.into())], 6);

        // An endpoint id that went to another pod counts under the new pod's name, in place of the old one.
        let mut c = FlowCounts::new(Caps::default());
        c.count(&verdict(1, 2, Verdict::Dropped));
        let mut reused = verdict(1, 2, Verdict::Dropped);
        Arc::make_mut(&mut reused.destination).pod_name = "cron-28871".into();
        c.count(&reused);
        let pods: Vec<_> =
            c.endpoint_verdicts.iter().map(|((id, _, pod, _, _), n)| (id.as_str(), pod.as_str(), *n)).collect();
        assert_eq!(pods, [("2", "cron-28871", 1)], "the old pod's series went with its id");

        // Policies: the first two keep their names, in every direction and action; the rest are `other`.
        let mut c = FlowCounts::new(Caps { endpoints: 3, policies: 2, denied_pairs: 4 });
        for (i, name) in ["a", "b", "c", "a", "d", "b"].into_iter().enumerate() {
            let mut f = verdict(100, 1, if i % 2 == 0 { Verdict::Dropped } else { Verdict::Forwarded });
            f.policy =
                Some(PolicyAttribution::AllowedBy(vec![PolicyName { namespace: "ns".into(), name: name.into() }]));
            c.count(&f);
        }
        let policies: std::collections::BTreeSet<_> = c.policy_decisions.keys().map(|k| k.0.clone()).collect();
        assert_eq!(policies, ["ns/a", "ns/b", OTHER].into_iter().map(String::from).collect());
        assert_eq!(c.policy_decisions[&("ns/a".into(), "ingress", "dropped")], 1);
        assert_eq!(c.policy_decisions[&("ns/a".into(), "ingress", "forwarded")], 1);
        assert_eq!(c.policy_decisions[&("ns/b".into(), "ingress", "forwarded")], 2);
        assert_eq!(c.policy_decisions[&(OTHER.into(), "ingress", "dropped")], 2, "c and d");
        assert_eq!(c.policy_decisions.len(), 4);
    }
}
