//! `flowgate policy describe`: a NetworkPolicy as `kubectl describe networkpolicy` prints it (its layout,
//! from kubectl's `describeNetworkPolicy`), then what kubectl cannot say: the pods it selects in a given
//! cluster view, and warnings for the mistakes people make with NetworkPolicy. Pure: the caller loads the
//! policy and, optionally, the cluster.

use std::{collections::BTreeMap, fmt::Write as _};

use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use serde::Serialize;

use crate::{
    ClusterView, LoadedPolicy, PodInfo, Protocol,
    compile::{peer_pods, policy_types, selected_pods},
};

/// A described policy: what `-o json|yaml` prints, and what [`Description::text`] lays out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Description {
    pub name: String,
    pub namespace: String,
    /// `file:document` the policy was read from.
    pub source: String,
    /// When the API server created it (`metadata.creationTimestamp`), or where it is in effect; `None` for a
    /// file not applied anywhere.
    pub created: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// As kubectl formats a selector (`component=database`), `<none>` when empty.
    pub pod_selector: String,
    /// `None`: the policy does not affect this direction. `Some([])`: selected pods are isolated.
    pub ingress: Option<Vec<RuleDescription>>,
    pub egress: Option<Vec<RuleDescription>>,
    /// The effective policy types (`Ingress`, `Egress`), defaulted as the API server does.
    pub policy_types: Vec<String>,
    /// `namespace/pod` of the pods it selects, when a cluster view was given.
    pub selects: Option<Vec<String>>,
    pub warnings: Vec<String>,
}

/// One rule: its ports (`None`: every port) and peers (`None`: every peer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleDescription {
    /// `5432/TCP`, `http/TCP`, `8000-9000/TCP`.
    pub ports: Option<Vec<String>>,
    pub peers: Option<Vec<PeerDescription>>,
}

/// One peer, each selector as kubectl formats it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerDescription {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlockDescription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpBlockDescription {
    pub cidr: String,
    pub except: Vec<String>,
}

/// A label selector as `metav1.FormatLabelSelector` writes it: requirements sorted by key, joined by `,`
/// (`app=web`, `tier in (a,b)`, `!legacy`), `<none>` when it has none.
pub fn format_label_selector(selector: &LabelSelector) -> String {
    let mut requirements: Vec<(String, String)> = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        requirements.push((key.clone(), format!("{key}={value}")));
    }
    for expression in selector.match_expressions.iter().flatten() {
        let key = &expression.key;
        let mut values = expression.values.clone().unwrap_or_default();
        values.sort();
        let text = match expression.operator.as_str() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({})", values.join(",")),
        };
        requirements.push((key.clone(), text));
    }
    requirements.sort_by(|a, b| a.0.cmp(&b.0));
    if requirements.is_empty() {
        "<none>".to_owned()
    } else {
        requirements.into_iter().map(|(_, text)| text).collect::<Vec<_>>().join(",")
    }
}

fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && selector.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

fn port_text(port: &NetworkPolicyPort) -> String {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let number = match &port.port {
        Some(IntOrString::Int(n)) => n.to_string(),
        Some(IntOrString::String(name)) => name.clone(),
        None => "<any>".to_owned(),
    };
    match port.end_port {
        Some(end) => format!("{number}-{end}/{protocol}"),
        None => format!("{number}/{protocol}"),
    }
}

fn peer(p: &NetworkPolicyPeer) -> PeerDescription {
    PeerDescription {
        namespace_selector: p.namespace_selector.as_ref().map(format_label_selector),
        pod_selector: p.pod_selector.as_ref().map(format_label_selector),
        ip_block: p
            .ip_block
            .as_ref()
            .map(|b| IpBlockDescription { cidr: b.cidr.clone(), except: b.except.clone().unwrap_or_default() }),
    }
}

fn rule(ports: Option<&[NetworkPolicyPort]>, peers: Option<&[NetworkPolicyPeer]>) -> RuleDescription {
    RuleDescription {
        ports: ports.filter(|p| !p.is_empty()).map(|p| p.iter().map(port_text).collect()),
        peers: peers.filter(|p| !p.is_empty()).map(|p| p.iter().map(peer).collect()),
    }
}

/// Describes `loaded`, with the pods it selects and the warnings that need them when `cluster` is given.
pub fn describe(loaded: &LoadedPolicy, cluster: Option<&ClusterView>) -> Description {
    let policy = &loaded.policy;
    let default_spec = NetworkPolicySpec::default();
    let spec = policy.spec.as_ref().unwrap_or(&default_spec);
    let (ingress_on, egress_on) = policy_types(spec);
    let pod_selector = spec.pod_selector.clone().unwrap_or_default();
    let ingress = ingress_on.then(|| {
        spec.ingress.iter().flatten().map(|r| rule(r.ports.as_deref(), r.from.as_deref())).collect::<Vec<_>>()
    });
    let egress = egress_on
        .then(|| spec.egress.iter().flatten().map(|r| rule(r.ports.as_deref(), r.to.as_deref())).collect::<Vec<_>>());
    let mut policy_types = Vec::new();
    if ingress_on {
        policy_types.push("Ingress".to_owned());
    }
    if egress_on {
        policy_types.push("Egress".to_owned());
    }
    let mut annotations = policy.metadata.annotations.clone().unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    let mut description = Description {
        name: loaded.name().to_owned(),
        namespace: loaded.namespace().to_owned(),
        source: format!("{}:{}", loaded.file.display(), loaded.document),
        created: policy.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        labels: policy.metadata.labels.clone().unwrap_or_default(),
        annotations,
        pod_selector: if selector_is_empty(&pod_selector) {
            "<none> (Allowing the specific traffic to all pods in this namespace)".to_owned()
        } else {
            format_label_selector(&pod_selector)
        },
        ingress,
        egress,
        policy_types,
        selects: None,
        warnings: Vec::new(),
    };
    description.warnings = warnings(loaded, spec, &pod_selector, cluster, &mut description.selects);
    description
}

fn declares(pod: &PodInfo, name: &str, protocol: &str) -> bool {
    pod.ports.iter().any(|p| p.name.as_deref() == Some(name) && protocol_name(p.protocol) == protocol)
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn warnings(
    loaded: &LoadedPolicy,
    spec: &NetworkPolicySpec,
    pod_selector: &LabelSelector,
    cluster: Option<&ClusterView>,
    selects: &mut Option<Vec<String>>,
) -> Vec<String> {
    let namespace = loaded.namespace();
    let mut out = Vec::new();
    if selector_is_empty(pod_selector) {
        out.push(format!("podSelector is empty: this policy selects every pod in namespace {namespace}"));
    }
    let rules = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| ("ingress", "from", i, r.from.as_deref().unwrap_or_default(), r.ports.as_deref()))
        .chain(
            spec.egress
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| ("egress", "to", i, r.to.as_deref().unwrap_or_default(), r.ports.as_deref())),
        );
    let rules: Vec<_> = rules.collect();
    for (direction, field, i, peers, _) in &rules {
        let namespace_only = peers.iter().position(|p| p.namespace_selector.is_some() && p.pod_selector.is_none());
        let pods_only = peers.iter().position(|p| p.pod_selector.is_some() && p.namespace_selector.is_none());
        if let (Some(a), Some(b)) = (namespace_only, pods_only) {
            let (a, b) = (a.min(b) + 1, a.max(b) + 1);
            out.push(format!(
                "{direction} rule {}: `{field}` peers {a} and {b} are a namespaceSelector and a podSelector as two \
                 peers, which allow either (OR); if pods matching both were meant, write them as one peer",
                i + 1
            ));
        }
    }
    let Some(cluster) = cluster else {
        return out;
    };
    let selected = selected_pods(loaded, cluster);
    *selects = Some(selected.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect());
    if selected.is_empty() {
        out.push(format!("selects no pod: no pod in namespace {namespace} matches the podSelector"));
    }
    for (direction, _, i, peers, ports) in &rules {
        let rule_no = i + 1;
        // Named ports resolve on the destination: the selected pods for ingress, the peers for egress.
        let destinations: Vec<&PodInfo> =
            if *direction == "ingress" { selected.clone() } else { peer_pods(peers, namespace, cluster) };
        for port in ports.iter().copied().flatten() {
            let Some(IntOrString::String(name)) = &port.port else { continue };
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            if !destinations.iter().any(|pod| declares(pod, name, protocol)) {
                out.push(format!(
                    "{direction} rule {rule_no}: named port {name}/{protocol} is declared by no {} pod, so it \
                     matches nothing",
                    if *direction == "ingress" { "selected" } else { "destination" }
                ));
            }
            if *direction == "egress" {
                for (peer, block) in peers.iter().filter_map(|p| Some((p, p.ip_block.as_ref()?))) {
                    let holds_a_declaring_pod = peer_pods(std::slice::from_ref(peer), namespace, cluster)
                        .iter()
                        .any(|pod| declares(pod, name, protocol));
                    if !holds_a_declaring_pod {
                        out.push(format!(
                            "egress rule {rule_no}: named port {name}/{protocol} never matches through ipBlock {}: \
                             no pod in it declares it (addresses outside the cluster have no named ports)",
                            block.cidr
                        ));
                    }
                }
            }
        }
        for (peer, block) in peers.iter().filter_map(|p| Some((p, p.ip_block.as_ref()?))) {
            let covered: Vec<String> = peer_pods(std::slice::from_ref(peer), namespace, cluster)
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            if !covered.is_empty() {
                out.push(format!(
                    "{direction} rule {rule_no}: ipBlock {} covers the addresses of pods ({}); ipBlock is meant for \
                     addresses outside the cluster, pods are better selected by labels",
                    block.cidr,
                    covered.join(", ")
                ));
            }
        }
    }
    out
}

/// Whether a port as [`port_text`] writes it is a range (`8000-9000/TCP`), not a named port that happens
/// to contain a hyphen (`serve-80-udp/UDP`, `80-http/TCP`).
fn is_range(port: &str) -> bool {
    let number = port.split('/').next().unwrap_or_default();
    number
        .split_once('-')
        .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()))
}

impl Description {
    /// The kubectl layout, then the selection and the warnings.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let field = |out: &mut String, title: &str, value: &str| {
            let _ = writeln!(out, "{:<14}{value}", format!("{title}:"));
        };
        field(&mut out, "Name", &self.name);
        field(&mut out, "Namespace", &self.namespace);
        let not_created = || format!("<not created: from {}>", self.source);
        field(&mut out, "Created on", &self.created.clone().unwrap_or_else(not_created));
        for (title, map) in [("Labels", &self.labels), ("Annotations", &self.annotations)] {
            let mut lines = map.iter().map(|(k, v)| format!("{k}={v}"));
            field(&mut out, title, &lines.next().unwrap_or_else(|| "<none>".to_owned()));
            for line in lines {
                let _ = writeln!(out, "{:<14}{line}", "");
            }
        }
        out.push_str("Spec:\n");
        let _ = writeln!(out, "  PodSelector:     {}", self.pod_selector);
        for (direction, rules, field) in [("ingress", &self.ingress, "From"), ("egress", &self.egress, "To")] {
            let Some(rules) = rules else {
                let _ = writeln!(out, "  Not affecting {direction} traffic");
                continue;
            };
            let _ = writeln!(out, "  Allowing {direction} traffic:");
            if rules.is_empty() {
                let _ = writeln!(out, "    <none> (Selected pods are isolated for {direction} connectivity)");
            }
            for (i, rule) in rules.iter().enumerate() {
                match &rule.ports {
                    None => out.push_str("    To Port: <any> (traffic allowed to all ports)\n"),
                    Some(ports) => {
                        for port in ports {
                            let title = if is_range(port) { "To Port Range" } else { "To Port" };
                            let _ = writeln!(out, "    {title}: {port}");
                        }
                    }
                }
                match &rule.peers {
                    None if field == "From" => out.push_str("    From: <any> (traffic not restricted by source)\n"),
                    None => out.push_str("    To: <any> (traffic not restricted by destination)\n"),
                    Some(peers) => {
                        for peer in peers {
                            let _ = writeln!(out, "    {field}:");
                            if let Some(ns) = &peer.namespace_selector {
                                let _ = writeln!(out, "      NamespaceSelector: {ns}");
                            }
                            if let Some(pods) = &peer.pod_selector {
                                let _ = writeln!(out, "      PodSelector: {pods}");
                            }
                            if let Some(block) = &peer.ip_block {
                                let _ = writeln!(out, "      IPBlock:");
                                let _ = writeln!(out, "        CIDR: {}", block.cidr);
                                let _ = writeln!(out, "        Except: {}", block.except.join(", "));
                            }
                        }
                    }
                }
                if i + 1 != rules.len() {
                    out.push_str("    ----------\n");
                }
            }
        }
        let _ = writeln!(out, "  Policy Types: {}", self.policy_types.join(", "));
        if let Some(selects) = &self.selects {
            let list = if selects.is_empty() { "<none>".to_owned() } else { selects.join(", ") };
            let _ = writeln!(out, "Selects:      {list}");
        }
        if !self.warnings.is_empty() {
            out.push_str("Warnings:\n");
            for w in &self.warnings {
                let _ = writeln!(out, "  - {w}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
