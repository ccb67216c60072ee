//! Kubernetes NetworkPolicy conformance of flowgate, modelled on the upstream e2e suite
//! (kubernetes `test/e2e/network/netpol/network_policy.go`): namespaces x, y, z with pods a, b, c,
//! each serving 80 and 81 over TCP and UDP; policies written into the agent's policy directory; the
//! full 9×9 matrix probed with real traffic through the real datapath and compared with a truth table.
//!
//! Every test owns one lab and one agent (tests run in parallel). Upstream cases keep their names
//! (as snake case) and their policies; the matrices cover all nine pods. SCTP is never probed (this
//! kernel cannot); the upstream SCTP cases that probe TCP are here. The diagonal (a pod to itself, over
//! loopback) is not checked, as upstream. Run as root; see `conformance/framework.rs` for the knobs.

#[path = "conformance/framework.rs"]
mod framework;

/// The cases write policy files and the topology here; `conformance_api.rs` runs them through the API server.
#[allow(dead_code, reason = "read by the framework as `crate::`: unused where these cases are a module")]
const THROUGH_API_SERVER: bool = false;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use framework::{Conformance, FAMILIES, Family, Reachability, Tcp, Udp, policy, reachability};
use serde_json::json;

/// All connected.
fn all() -> Reachability {
    reachability(true)
}

// ---------------------------------------------------------------------------------------------
// Default deny, allow all
// ---------------------------------------------------------------------------------------------

/// Upstream "should support a 'default-deny-ingress' policy", over TCP and (the UDP context) UDP.
#[test]
fn should_support_a_default_deny_ingress_policy() {
    let mut c = Conformance::start("deny-in");
    c.apply("deny.yaml", &[policy("x", "deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))]);
    // Into x: blocked from everywhere. Out of x (replies included): unaffected.
    let r = all().expect_peer("*", "x/*", false);
    c.validate("default deny ingress in x", 80, Tcp, &r);
    c.validate("default deny ingress in x", 80, Udp, &r);
}

/// Upstream "should support a 'default-deny-all' policy".
#[test]
fn should_support_a_default_deny_all_policy() {
    let mut c = Conformance::start("deny-all");
    c.apply("deny.yaml", &[policy("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))]);
    let r = all().expect_peer("*", "x/*", false).expect_peer("x/*", "*", false);
    c.validate("default deny all in x", 80, Tcp, &r);
}

/// Upstream "should support allow-all policy": `ingress: [{}]` on every pod of x.
#[test]
fn should_support_allow_all_policy() {
    let mut c = Conformance::start("allow-all");
    c.apply("allow.yaml", &[policy("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))]);
    c.validate("allow-all ingress in x", 80, Tcp, &all());
    c.validate("allow-all ingress in x", 81, Tcp, &all());
    c.validate("allow-all ingress in x (any protocol)", 80, Udp, &all());
}

/// Upstream "should enforce policy to allow ingress traffic for a target": default deny in x plus an
/// allow-all (`podSelector: {}` AND `namespaceSelector: {}`) for x/a.
#[test]
fn should_enforce_policy_to_allow_ingress_traffic_for_a_target() {
    let mut c = Conformance::start("target");
    c.apply("deny.yaml", &[policy("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))]);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-all-to-a",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}}]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/b", false).expect_all_ingress("x/c", false);
    c.validate("x/a open, rest of x denied", 80, Tcp, &r);
}

// ---------------------------------------------------------------------------------------------
// Egress deny / allow
// ---------------------------------------------------------------------------------------------

/// Upstream "should deny egress from pods based on PodSelector": explicit `policyTypes: [Egress]`, no
/// rules.
#[test]
fn should_deny_egress_from_pods_based_on_pod_selector() {
    let mut c = Conformance::start("deny-eg-pod");
    c.apply(
        "deny.yaml",
        &[policy(
            "x",
            "deny-egress-pod-a",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
        )],
    );
    // Out of x/a: blocked. Into x/a: allowed (its replies are part of allowed connections).
    let r = all().expect_all_egress("x/a", false);
    c.validate("x/a egress denied", 80, Tcp, &r);
}

/// Upstream "should deny egress from all pods in a namespace", over TCP and UDP.
#[test]
fn should_deny_egress_from_all_pods_in_a_namespace() {
    let mut c = Conformance::start("deny-eg-ns");
    c.apply("deny.yaml", &[policy("x", "deny-egress-ns-x", json!({"podSelector": {}, "policyTypes": ["Egress"]}))]);
    let r = all().expect_peer("x/*", "*", false);
    c.validate("egress of x denied", 80, Tcp, &r);
    c.validate("egress of x denied", 80, Udp, &r);
}

/// Egress of x/a allowed to namespace y only (custom namespace label).
#[test]
fn should_allow_egress_to_a_namespace() {
    let mut c = Conformance::start("eg-ns");
    c.apply(
        "egress.yaml",
        &[policy(
            "x",
            "allow-egress-to-y",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
            }),
        )],
    );
    let r = all().expect_all_egress("x/a", false).expect_peer("x/a", "y/*", true);
    c.validate("x/a egress to y only", 80, Tcp, &r);
    c.validate("x/a egress to y only (any protocol)", 81, Udp, &r);
}

/// Upstream "should enforce egress policy allowing traffic to a server in a different namespace based
/// on PodSelector and NamespaceSelector".
#[test]
fn should_enforce_egress_policy_to_a_server_in_a_different_namespace() {
    let mut c = Conformance::start("eg-ns-pod");
    c.apply(
        "egress.yaml",
        &[policy(
            "x",
            "allow-to-ns-y-pod-a",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                    "podSelector": {"matchLabels": {"pod": "a"}},
                }]}],
            }),
        )],
    );
    let r = all().expect_all_egress("x/a", false).expect("x/a", "y/a", true);
    c.validate("x/a egress to y/a only", 80, Tcp, &r);
}

/// Upstream "should enforce policy based on NamespaceSelector with MatchExpressions using default ns
/// label": egress of x/a to namespaces NotIn [y].
#[test]
fn should_enforce_egress_namespace_selector_match_expressions_default_label() {
    let mut c = Conformance::start("eg-notin");
    c.apply(
        "egress.yaml",
        &[policy(
            "x",
            "allow-ns-y-match-selector-for-immutable-ns-label",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["y"]},
                ]}}]}],
            }),
        )],
    );
    let r = all().expect_peer("x/a", "y/*", false);
    c.validate("x/a egress to every namespace but y", 80, Tcp, &r);
}

// ---------------------------------------------------------------------------------------------
// Pod and namespace selectors
// ---------------------------------------------------------------------------------------------

/// Upstream "should enforce policy to allow traffic from pods within server namespace based on
/// PodSelector": a podSelector-only peer means pods of the policy's namespace (y/b, z/b stay out).
#[test]
fn should_allow_traffic_from_pods_within_server_namespace_by_pod_selector() {
    let mut c = Conformance::start("pod-sel");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "x-a-allows-x-b",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    c.validate("x/a from x/b only", 80, Tcp, &r);
}

/// Upstream "should enforce policy to allow ingress traffic from pods in all namespaces":
/// `namespaceSelector: {}`.
#[test]
fn should_allow_ingress_traffic_from_pods_in_all_namespaces() {
    let mut c = Conformance::start("all-ns");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-from-another-ns",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {}}]}],
            }),
        )],
    );
    c.validate("x/a from every namespace", 80, Tcp, &all());
    // Only pods match a namespaceSelector: ports stay unrestricted, so UDP is open too.
    c.validate("x/a from every namespace (any protocol)", 80, Udp, &all());
}

/// Upstream "should enforce policy to allow traffic only from a different namespace, based on
/// NamespaceSelector" (with the custom `ns` label here; the default-label variant is below).
#[test]
fn should_allow_traffic_only_from_a_different_namespace_by_namespace_selector() {
    let mut c = Conformance::start("ns-sel");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-client-a-via-ns-selector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
            }),
        )],
    );
    let r = all().expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    c.validate("x/a from namespace y only", 80, Tcp, &r);
}

/// Upstream "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using
/// default ns label".
#[test]
fn should_allow_traffic_by_namespace_selector_match_labels_default_label() {
    let mut c = Conformance::start("ns-default");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-client-a-via-ns-selector-for-immutable-ns-label",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}],
            }),
        )],
    );
    let r = all().expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    c.validate("x/a from namespace y only", 80, Tcp, &r);
}

/// Upstream "should enforce policy based on PodSelector with MatchExpressions".
#[test]
fn should_enforce_policy_based_on_pod_selector_with_match_expressions() {
    let mut c = Conformance::start("pod-expr");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "x-a-allows-x-b",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                    {"key": "pod", "operator": "In", "values": ["b"]},
                ]}}]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    c.validate("x/a from pod In [b] of x", 80, Tcp, &r);
}

/// Upstream "should enforce policy based on NamespaceSelector with MatchExpressions".
#[test]
fn should_enforce_policy_based_on_namespace_selector_with_match_expressions() {
    let mut c = Conformance::start("ns-expr");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-ns-y-match-selector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"]},
                ]}}]}],
            }),
        )],
    );
    let r = all().expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    c.validate("x/a from namespaces In [y]", 80, Tcp, &r);
}

/// Every selector operator on pods and namespaces, in target and peer selectors: `In` (target),
/// `Exists` and `DoesNotExist` (namespaces), `NotIn` on a key the namespaces do not have (matches:
/// a missing label is "not in"), `NotIn` on pods, matchLabels AND matchExpressions, and an empty
/// label value (which a missing label does not have).
#[test]
fn should_enforce_every_match_expression_operator() {
    let mut c = Conformance::start("exprs");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "operators",
            json!({
                // x/a and x/b are selected.
                "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                "ingress": [{"from": [
                    // pod c of every namespace that has `ns` and lacks `env`.
                    {
                        "namespaceSelector": {"matchExpressions": [
                            {"key": "ns", "operator": "Exists"},
                            {"key": "env", "operator": "DoesNotExist"},
                        ]},
                        "podSelector": {
                            "matchLabels": {"pod": "c"},
                            "matchExpressions": [{"key": "pod", "operator": "Exists"}],
                        },
                    },
                    // pods but c of namespace z (z has no `env` label: NotIn matches).
                    {
                        "namespaceSelector": {"matchExpressions": [
                            {"key": "ns", "operator": "In", "values": ["z"]},
                            {"key": "env", "operator": "NotIn", "values": ["prod"]},
                        ]},
                        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]},
                    },
                    // Matches nothing: every pod has `pod`.
                    {"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}},
                    // Matches nothing: no pod has `pod2`, and a missing label is not an empty value.
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod2": ""}}},
                ]}],
            }),
        )],
    );
    let r = all()
        .expect_all_ingress("x/a", false)
        .expect_all_ingress("x/b", false)
        .expect_peer("*/c", "x/a", true)
        .expect_peer("*/c", "x/b", true)
        .expect_peer("z/*", "x/a", true)
        .expect_peer("z/*", "x/b", true);
    c.validate("x/a, x/b from */c and z/*", 80, Tcp, &r);
}

/// Upstream "should enforce policy based on PodSelector or NamespaceSelector": two peers, OR-ed.
#[test]
fn should_enforce_policy_based_on_pod_selector_or_namespace_selector() {
    let mut c = Conformance::start("or");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-ns-y-match-selector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [
                    {"namespaceSelector": {"matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]},
                    ]}},
                    {"podSelector": {"matchLabels": {"pod": "b"}}},
                ]}],
            }),
        )],
    );
    let r = all().expect("x/c", "x/a", false);
    c.validate("x/a from other namespaces or x/b", 80, Tcp, &r);
}

/// Upstream "should enforce policy based on PodSelector and NamespaceSelector": one peer, AND-ed.
#[test]
fn should_enforce_policy_based_on_pod_selector_and_namespace_selector() {
    let mut c = Conformance::start("and");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-ns-y-podselector-and-nsselector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{
                    "namespaceSelector": {"matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]},
                    ]},
                    "podSelector": {"matchLabels": {"pod": "b"}},
                }]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false).expect("y/b", "x/a", true).expect("z/b", "x/a", true);
    c.validate("x/a from pod b of other namespaces", 80, Tcp, &r);
}

/// The same two selectors as one peer (AND) and then as two peers (OR).
#[test]
fn should_and_selectors_in_one_peer_and_or_separate_peers() {
    let mut c = Conformance::start("and-vs-or");
    let ns_y = json!({"matchLabels": {"ns": "y"}});
    let pod_b = json!({"matchLabels": {"pod": "b"}});
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "selectors",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": ns_y, "podSelector": pod_b}]}],
            }),
        )],
    );
    let and = all().expect_all_ingress("x/a", false).expect("y/b", "x/a", true);
    c.validate("one peer: y/b only", 80, Tcp, &and);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "selectors",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": ns_y}, {"podSelector": pod_b}]}],
            }),
        )],
    );
    let or = all().expect_all_ingress("x/a", false).expect_peer("y/*", "x/a", true).expect("x/b", "x/a", true);
    c.validate("two peers: namespace y or x/b", 80, Tcp, &or);
}

/// Upstream "should enforce policy based on Multiple PodSelectors and NamespaceSelectors".
#[test]
fn should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors() {
    let mut c = Conformance::start("multi-sel");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-ns-y-z-pod-b-c",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{
                    "namespaceSelector": {"matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]},
                    ]},
                    "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]},
                }]}],
            }),
        )],
    );
    let r = all().expect_peer("x/*", "x/a", false).expect("y/a", "x/a", false).expect("z/a", "x/a", false);
    c.validate("x/a from pods b, c of other namespaces", 80, Tcp, &r);
}

/// Upstream "should enforce policy based on any PodSelectors".
#[test]
fn should_enforce_policy_based_on_any_pod_selectors() {
    let mut c = Conformance::start("any-pod");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-ns-x-pod-b-c",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"pod": "b"}}},
                    {"podSelector": {"matchLabels": {"pod": "c"}}},
                ]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true).expect("x/c", "x/a", true);
    c.validate("x/a from x/b or x/c", 80, Tcp, &r);
}

/// Upstream "should enforce policy to allow traffic only from a pod in a different namespace based on
/// PodSelector and NamespaceSelector", in its TCP and UDP contexts.
#[test]
fn should_allow_traffic_only_from_a_pod_in_a_different_namespace() {
    let mut c = Conformance::start("pod-in-ns");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-ns-y-pod-a-via-namespace-pod-selector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                    "podSelector": {"matchLabels": {"pod": "a"}},
                }]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false).expect("y/a", "x/a", true);
    c.validate("x/a from y/a only", 80, Tcp, &r);
    c.validate("x/a from y/a only", 80, Udp, &r);
}

/// Upstream "should deny ingress from pods on other namespaces": `from: [{podSelector: {}}]` is the
/// policy's own namespace.
#[test]
fn should_deny_ingress_from_pods_on_other_namespaces() {
    let mut c = Conformance::start("other-ns");
    c.apply(
        "deny.yaml",
        &[policy("x", "deny-empty-policy", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))],
    );
    let r = all().expect_peer("y/*", "x/*", false).expect_peer("z/*", "x/*", false);
    c.validate("x open to x only", 80, Tcp, &r);
}

/// A policy selects pods of its own namespace only, and its podSelector-only peers too: a policy in y for
/// `pod: a` isolates y/a (not x/a, z/a) and its `pod: b` peer is y/b (not x/b, z/b); a deny-all in a
/// namespace without pods changes nothing.
#[test]
fn should_not_select_pods_in_other_namespaces() {
    let mut c = Conformance::start("ns-scope");
    c.apply(
        "allow.yaml",
        &[
            policy(
                "y",
                "y-a-from-b",
                json!({
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
                }),
            ),
            // A namespace without pods: selects nothing.
            policy("w", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
        ],
    );
    let r = all().expect_all_ingress("y/a", false).expect("y/b", "y/a", true);
    c.validate("only y/a isolated, from y/b", 80, Tcp, &r);
}

// ---------------------------------------------------------------------------------------------
// Ports, protocols, named ports, port ranges
// ---------------------------------------------------------------------------------------------

/// Upstream "should enforce policy based on Ports" (TCP) and its UDP context: port 81 from y only.
#[test]
fn should_enforce_policy_based_on_ports() {
    let mut c = Conformance::start("ports");
    let from_y_on = |protocol: &str| {
        policy(
            "x",
            "allow-client-a-via-ns-selector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
                    "ports": [{"port": 81, "protocol": protocol}],
                }],
            }),
        )
    };
    let r = all().expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    c.apply("allow.yaml", &[from_y_on("TCP")]);
    c.validate("TCP 81 from y", 81, Tcp, &r);
    c.apply("allow.yaml", &[from_y_on("UDP")]);
    c.validate("UDP 81 from y", 81, Udp, &r);
}

/// One port open over TCP (protocol defaulted), then over UDP: the other port and the other protocol
/// on the same port stay blocked.
#[test]
fn should_allow_ingress_on_one_port_only_over_tcp_and_over_udp() {
    let mut c = Conformance::start("one-port");
    let closed = all().expect_all_ingress("x/a", false);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "port-80",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80}]}]}),
        )],
    );
    c.validate("TCP 80 allowed (protocol defaults to TCP)", 80, Tcp, &all());
    c.validate("TCP 81 not allowed", 81, Tcp, &closed);
    c.validate("UDP 80 not allowed (protocol defaults to TCP)", 80, Udp, &closed);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "port-80",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 80, "protocol": "UDP"}]}],
            }),
        )],
    );
    c.validate("UDP 80 allowed", 80, Udp, &all());
    c.validate("UDP 81 not allowed", 81, Udp, &closed);
    c.validate("TCP 80 not allowed (UDP only)", 80, Tcp, &closed);
}

/// Upstream "should not allow access by TCP when a policy specifies only UDP".
#[test]
fn should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp() {
    let mut c = Conformance::start("udp-only");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-only-udp-ingress-on-port-81",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false);
    c.validate("TCP 81 blocked", 81, Tcp, &r);
}

/// Upstream "should enforce ingress policy allowing any port traffic to a server on a specific
/// protocol": `ports: [{protocol: TCP}]`.
#[test]
fn should_allow_any_port_on_a_specific_protocol() {
    let mut c = Conformance::start("proto-only");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-ingress-by-proto",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"protocol": "TCP"}]}],
            }),
        )],
    );
    c.validate("TCP 80 allowed", 80, Tcp, &all());
    c.validate("TCP 81 allowed", 81, Tcp, &all());
    c.validate("UDP 80 blocked", 80, Udp, &all().expect_all_ingress("x/a", false));
}

/// Upstream "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin
/// doesn't support SCTP".
#[test]
fn should_not_treat_sctp_as_tcp() {
    let mut c = Conformance::start("sctp-tcp");
    c.apply("deny.yaml", &[policy("x", "deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))]);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-only-sctp-ingress-on-port-81",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 81, "protocol": "SCTP"}]}],
            }),
        )],
    );
    let r = all().expect_peer("*", "x/*", false);
    c.validate("TCP 81 blocked into x", 81, Tcp, &r);
}

/// Upstream "should properly isolate pods that are selected by a policy allowing SCTP, even if the
/// plugin doesn't support SCTP".
#[test]
fn should_isolate_pods_selected_by_a_policy_allowing_sctp() {
    let mut c = Conformance::start("sctp-iso");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-only-sctp-ingress-on-port-80",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false);
    c.validate("TCP 81 blocked into x/a", 81, Tcp, &r);
    c.validate("TCP 80 blocked into x/a", 80, Tcp, &r);
}

/// Upstream "should allow ingress access on one named port", plus the same over UDP, plus a named
/// port whose protocol is not the rule's (it names no UDP port, so it opens nothing).
#[test]
fn should_allow_ingress_access_on_one_named_port() {
    let mut c = Conformance::start("named-in");
    c.apply(
        "allow.yaml",
        &[policy("x", "allow-all", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}))],
    );
    let x_closed = all().expect_peer("*", "x/*", false);
    c.validate("TCP 81 (serve-81-tcp) allowed", 81, Tcp, &all());
    c.validate("TCP 80 blocked into x", 80, Tcp, &x_closed);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-all",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
        )],
    );
    c.validate("UDP 81 (serve-81-udp) allowed, probed by name", "serve-81-udp", Udp, &all());
    c.validate("UDP 80 blocked into x", 80, Udp, &x_closed);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-all",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-tcp", "protocol": "UDP"}]}]}),
        )],
    );
    c.validate("serve-80-tcp over UDP names no port: UDP 80 blocked", 80, Udp, &x_closed);
    c.validate("serve-80-tcp over UDP names no port: TCP 80 blocked", 80, Tcp, &x_closed);
}

/// Upstream "should allow ingress access from namespace on one named port".
#[test]
fn should_allow_ingress_access_from_namespace_on_one_named_port() {
    let mut c = Conformance::start("named-ns");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-client-a-via-ns-selector-80",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
                    "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}],
                }],
            }),
        )],
    );
    let r80 = all().expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    c.validate("TCP 80 from y", 80, Tcp, &r80);
    c.validate("TCP 81 from nobody", 81, Tcp, &all().expect_all_ingress("x/a", false));
}

/// Upstream "should allow egress access on one named port" (named port resolved on the destination),
/// plus UDP 80, which serve-80-tcp does not name.
#[test]
fn should_allow_egress_access_on_one_named_port() {
    let mut c = Conformance::start("named-eg");
    c.apply(
        "egress.yaml",
        &[policy(
            "x",
            "allow-egress",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": "serve-80-tcp"}]}],
            }),
        )],
    );
    let x_out_closed = all().expect_peer("x/*", "*", false);
    c.validate("TCP 80 out of x", 80, Tcp, &all());
    c.validate("TCP 81 out of x blocked", 81, Tcp, &x_out_closed);
    c.validate("UDP 80 out of x blocked", 80, Udp, &x_out_closed);
}

/// `endPort`: 80-81 opens both, 81-82 opens 81 only; a UDP range on egress.
#[test]
fn should_enforce_end_port_ranges() {
    let mut c = Conformance::start("end-port");
    let from_y = |port: u16, end: u16| {
        policy(
            "x",
            "range",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                    "ports": [{"port": port, "endPort": end, "protocol": "TCP"}],
                }],
            }),
        )
    };
    let y_only = all().expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    let nobody = all().expect_all_ingress("x/a", false);
    c.apply("allow.yaml", &[from_y(80, 81)]);
    c.validate("80-81: TCP 80 from y", 80, Tcp, &y_only);
    c.validate("80-81: TCP 81 from y", 81, Tcp, &y_only);
    c.apply("allow.yaml", &[from_y(81, 82)]);
    c.validate("81-82: TCP 80 from nobody", 80, Tcp, &nobody);
    c.validate("81-82: TCP 81 from y", 81, Tcp, &y_only);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "range",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 81, "endPort": 90, "protocol": "UDP"}]}],
            }),
        )],
    );
    c.validate("egress UDP 81-90: UDP 81 out of x/a", 81, Udp, &all());
    c.validate("egress UDP 81-90: UDP 80 out of x/a blocked", 80, Udp, &all().expect_all_egress("x/a", false));
}

// ---------------------------------------------------------------------------------------------
// ipBlock
// ---------------------------------------------------------------------------------------------

/// Ingress from a pod's host prefix, then from the lab range except one pod: over IPv4 with IPv4 blocks,
/// then over IPv6 with IPv6 blocks (a block of one family never matches the other).
#[test]
fn should_allow_ingress_from_ip_blocks_with_except() {
    let mut c = Conformance::start("ip-in");
    for family in FAMILIES {
        let y_b = c.host_cidr("y/b", family);
        c.apply(
            "allow.yaml",
            &[policy(
                "x",
                "from-cidr",
                json!({
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": y_b}}]}],
                }),
            )],
        );
        let r = all().expect_all_ingress("x/a", false).expect("y/b", "x/a", true);
        c.validate_over(family, "x/a from y/b's host prefix", 80, Tcp, &r);
        let (range, x_b) = (c.lab_cidr(family), c.host_cidr("x/b", family));
        c.apply(
            "allow.yaml",
            &[policy(
                "x",
                "from-cidr",
                json!({
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": range, "except": [x_b]}}]}],
                }),
            )],
        );
        let r = all().expect("x/b", "x/a", false);
        c.validate_over(family, "x/a from the lab range except x/b", 80, Tcp, &r);
    }
}

/// The gap a randomized comparison with the API's rules found (903 of 904 probes agreed): an egress
/// `ipBlock` peer on a named port. The name is the destination pod's: y/b's address is in the block and y/b
/// declares `serve-80-udp`, so z reaches y/b on 80/UDP; nothing else is allowed out of z.
#[test]
fn should_resolve_a_named_port_on_the_pod_an_egress_ip_block_holds() {
    let mut c = Conformance::start("ip-named");
    for family in FAMILIES {
        let y_b = c.host_cidr("y/b", family);
        c.apply(
            "egress.yaml",
            &[policy(
                "z",
                "to-y-b-by-address",
                json!({
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": y_b}}], "ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}],
                }),
            )],
        );
        let r = all().expect_peer("z/*", "*", false).expect_peer("z/*", "y/b", true);
        c.validate_over(family, "z to y/b's address on its named port", 80, Udp, &r);
        let r = all().expect_peer("z/*", "*", false);
        c.validate_over(family, "the name is 80/UDP only", 81, Udp, &r);
    }
}

/// A block of one family admits nothing of the other: x/a allows ingress from the IPv4 lab range only, so
/// over IPv6 it is isolated.
#[test]
fn an_ip_block_of_one_family_never_matches_the_other() {
    let mut c = Conformance::start("ip-family");
    let range = c.lab_cidr(Family::Ipv4);
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "from-v4-range",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"ipBlock": {"cidr": range}}]}]}),
        )],
    );
    c.validate_over(Family::Ipv4, "IPv4 block, IPv4 traffic", 80, Tcp, &all());
    c.validate_over(Family::Ipv6, "IPv4 block, IPv6 traffic", 80, Tcp, &all().expect_all_ingress("x/a", false));
}

/// Upstream "should allow egress access to server in CIDR block".
#[test]
fn should_allow_egress_access_to_server_in_cidr_block() {
    let mut c = Conformance::start("ip-eg");
    for family in FAMILIES {
        let y_b = c.host_cidr("y/b", family);
        c.apply(
            "egress.yaml",
            &[policy(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                json!({
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": y_b}}]}],
                }),
            )],
        );
        let r = all().expect_all_egress("x/a", false).expect("x/a", "y/b", true);
        c.validate_over(family, "x/a to y/b's host prefix only", 80, Tcp, &r);
    }
}

/// A large block around `pod`'s address, like upstream's makeLargeCIDRForIP: a /4 for IPv4, a /64 (the
/// lab's whole IPv6 range) for IPv6.
fn large_cidr(c: &Conformance, pod: &str, family: Family) -> String {
    match c.ip(pod, family) {
        IpAddr::V4(ip) => format!("{}/4", Ipv4Addr::from(u32::from(ip) & (u32::MAX << 28))),
        IpAddr::V6(ip) => format!("{}/64", Ipv6Addr::from(u128::from(ip) & (u128::MAX << 64))),
    }
}

/// Upstream "should enforce except clause while egress access to server in CIDR block".
#[test]
fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block() {
    let mut c = Conformance::start("ip-except");
    for family in FAMILIES {
        let (cidr, x_b) = (large_cidr(&c, "x/b", family), c.host_cidr("x/b", family));
        c.apply(
            "egress.yaml",
            &[policy(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                json!({
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": cidr, "except": [x_b]}}]}],
                }),
            )],
        );
        let r = all().expect("x/a", "x/b", false);
        c.validate_over(family, "x/a everywhere but x/b", 80, Tcp, &r);
    }
}

/// Upstream "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed": the
/// policy is then updated (same name) to allow x/b's host prefix only.
#[test]
fn should_ensure_an_ip_overlapping_cidr_and_except_is_allowed() {
    let mut c = Conformance::start("ip-overlap");
    let egress_to = |block: serde_json::Value| {
        policy(
            "x",
            "allow-client-a-via-cidr-egress-rule",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": block}]}],
            }),
        )
    };
    for family in FAMILIES {
        let (cidr, x_b) = (large_cidr(&c, "x/b", family), c.host_cidr("x/b", family));
        c.apply("egress.yaml", &[egress_to(json!({"cidr": cidr, "except": [x_b]}))]);
        c.validate_over(family, "x/a everywhere but x/b", 80, Tcp, &all().expect("x/a", "x/b", false));
        c.apply("egress.yaml", &[egress_to(json!({"cidr": x_b}))]);
        let r = all().expect_all_egress("x/a", false).expect("x/a", "x/b", true);
        c.validate_over(family, "updated: x/a to x/b only", 80, Tcp, &r);
    }
}

// ---------------------------------------------------------------------------------------------
// Ingress and egress together, several policies
// ---------------------------------------------------------------------------------------------

/// Upstream "should work with Ingress, Egress specified together".
#[test]
fn should_work_with_ingress_egress_specified_together() {
    let mut c = Conformance::start("in-and-eg");
    c.apply(
        "policy.yaml",
        &[policy(
            "x",
            "allow-client-a-via-pod-selector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress", "Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
                "egress": [{"ports": [{"port": 80}]}],
            }),
        )],
    );
    let r80 = all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    c.validate("port 80: x/a from x/b; x/a out on 80", 80, Tcp, &r80);
    let r81 = all().expect_all_ingress("x/a", false).expect_all_egress("x/a", false).expect("x/b", "x/a", true);
    c.validate("port 81: x/a from x/b; x/a out blocked", 81, Tcp, &r81);
}

/// Upstream "should support denying of egress traffic on the client side (even if the server explicitly
/// allows this traffic)": a connection needs the source's egress AND the destination's ingress.
#[test]
fn should_support_denying_egress_on_the_client_side_even_if_the_server_allows() {
    let mut c = Conformance::start("both-sides");
    let from_x_a = json!({"from": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}},
        "podSelector": {"matchLabels": {"pod": "a"}},
    }]});
    c.apply(
        "x.yaml",
        &[policy(
            "x",
            "allow-to-ns-y-pod-a",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                    "podSelector": {"matchLabels": {"pod": "a"}},
                }]}],
            }),
        )],
    );
    c.apply(
        "y.yaml",
        &[
            policy(
                "y",
                "allow-from-xa-on-ya-match-selector",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [from_x_a]}),
            ),
            policy(
                "y",
                "allow-from-xa-on-yb-match-selector",
                json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [from_x_a]}),
            ),
        ],
    );
    let r = all()
        .expect_peer("x/a", "*", false)
        .expect_peer("*", "y/a", false)
        .expect("x/a", "y/a", true)
        .expect_peer("*", "y/b", false);
    c.validate("x/a to y/a only; y/a, y/b from x/a only", 80, Tcp, &r);
}

/// Upstream "should enforce policies to check ingress and egress policies can be controlled
/// independently based on PodSelector".
#[test]
fn should_control_ingress_and_egress_independently() {
    let mut c = Conformance::start("independ");
    c.apply(
        "egress.yaml",
        &[policy(
            "x",
            "allow-egress-for-target",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{}]}),
        )],
    );
    c.validate("x/a egress allow-all", 80, Tcp, &all());
    c.apply(
        "ingress.yaml",
        &[policy(
            "x",
            "deny-ingress-via-label-selector",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}),
        )],
    );
    c.validate("x/a ingress denied, egress open", 80, Tcp, &all().expect_all_ingress("x/a", false));
}

/// Upstream "should enforce multiple, stacked policies with overlapping podSelectors".
#[test]
fn should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors() {
    let mut c = Conformance::start("stacked");
    let from_y_on = |name: &str, port: u16| {
        policy(
            "x",
            name,
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
                    "ports": [{"port": port, "protocol": "TCP"}],
                }],
            }),
        )
    };
    c.apply("allow-81.yaml", &[from_y_on("allow-client-a-via-ns-selector", 81)]);
    let allow = all().expect_peer("x/*", "x/a", false).expect_peer("y/*", "x/a", true).expect_peer("z/*", "x/a", false);
    c.validate("81 from y", 81, Tcp, &allow);
    c.validate("80 from nobody", 80, Tcp, &all().expect_all_ingress("x/a", false));
    c.apply("allow-80.yaml", &[from_y_on("allow-client-a-via-ns-selector-80", 80)]);
    c.validate("80 from y once a second policy allows it", 80, Tcp, &allow);
}

/// Two allow policies on the same pod add up (one file, two documents).
#[test]
fn should_add_up_multiple_allow_policies_on_the_same_pod() {
    let mut c = Conformance::start("add-up");
    c.apply(
        "allow.yaml",
        &[
            policy(
                "x",
                "from-x-b",
                json!({
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
                }),
            ),
            policy(
                "x",
                "from-z",
                json!({
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}],
                }),
            ),
        ],
    );
    let r = all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true).expect_peer("z/*", "x/a", true);
    c.validate("x/a from x/b or z", 80, Tcp, &r);
    // One of them removed: the other still applies.
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "from-z",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false).expect_peer("z/*", "x/a", true);
    c.validate("from-x-b removed: x/a from z only", 80, Tcp, &r);
}

/// Upstream "should enforce multiple ingress policies with ingress allow-all policy taking precedence".
#[test]
fn should_let_an_ingress_allow_all_policy_take_precedence() {
    let mut c = Conformance::start("in-prec");
    c.apply(
        "port-80.yaml",
        &[policy("x", "allow-ingress-port-80", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))],
    );
    c.validate("81 blocked into x", 81, Tcp, &all().expect_peer("*", "x/*", false));
    c.apply("all.yaml", &[policy("x", "allow-ingress", json!({"podSelector": {}, "ingress": [{}]}))]);
    c.validate("81 allowed once allow-all is added", 81, Tcp, &all());
}

/// Upstream "should enforce multiple egress policies with egress allow-all policy taking precedence".
#[test]
fn should_let_an_egress_allow_all_policy_take_precedence() {
    let mut c = Conformance::start("eg-prec");
    c.apply(
        "port-80.yaml",
        &[policy(
            "x",
            "allow-egress-port-80",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 80}]}]}),
        )],
    );
    c.validate("81 blocked out of x", 81, Tcp, &all().expect_peer("x/*", "*", false));
    c.apply(
        "all.yaml",
        &[policy("x", "allow-egress", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}))],
    );
    c.validate("81 allowed once allow-all is added", 81, Tcp, &all());
}

// ---------------------------------------------------------------------------------------------
// policyTypes and empty vs absent lists
// ---------------------------------------------------------------------------------------------

/// No `policyTypes`: Ingress always, Egress when there are egress rules. A policy with only egress
/// rules isolates both directions; `egress: []` is no egress rule (ingress isolation only); a rule with
/// `from: []` matches every source.
#[test]
fn should_default_policy_types_from_the_rules() {
    let mut c = Conformance::start("types");
    c.apply(
        "policy.yaml",
        &[policy(
            "x",
            "defaulted",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false).expect_all_egress("x/a", false).expect_peer("x/a", "y/*", true);
    c.validate("egress rules, no policyTypes: both directions isolated", 80, Tcp, &r);
    c.apply(
        "policy.yaml",
        &[policy("x", "defaulted", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": []}))],
    );
    c.validate("egress: [], no policyTypes: ingress only", 80, Tcp, &all().expect_all_ingress("x/a", false));
    c.apply(
        "policy.yaml",
        &[policy(
            "x",
            "defaulted",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [], "ports": [{"port": 81}]}]}),
        )],
    );
    c.validate("from: [] matches every source on 81", 81, Tcp, &all());
    c.validate("80 not allowed", 80, Tcp, &all().expect_all_ingress("x/a", false));
}

// ---------------------------------------------------------------------------------------------
// Changes while running: policy updates and deletion, label changes, invalid manifests
// ---------------------------------------------------------------------------------------------

/// Upstream "should enforce updated policy": allow-all, then the same policy updated to deny all.
#[test]
fn should_enforce_updated_policy() {
    let mut c = Conformance::start("updated");
    c.apply("policy.yaml", &[policy("x", "allow-all-mutate-to-deny-all", json!({"podSelector": {}, "ingress": [{}]}))]);
    c.validate("allow all", 81, Tcp, &all());
    c.apply("policy.yaml", &[policy("x", "allow-all-mutate-to-deny-all", json!({"podSelector": {}, "ingress": []}))]);
    c.validate("updated to deny all", 81, Tcp, &all().expect_peer("*", "x/*", false));
}

/// Upstream "should stop enforcing policies after they are deleted".
#[test]
fn should_stop_enforcing_policies_after_they_are_deleted() {
    let mut c = Conformance::start("deleted");
    c.apply("deny.yaml", &[policy("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))]);
    let r = all().expect_peer("x/*", "*", false).expect_peer("*", "x/*", false);
    c.validate("deny all in x", 80, Tcp, &r);
    c.delete("deny.yaml");
    c.validate("deleted: all connected again", 80, Tcp, &all());
    c.validate("deleted: all connected again", 80, Udp, &all());
}

/// Upstream "should allow ingress access from updated namespace", and the label removed again.
#[test]
fn should_allow_ingress_access_from_updated_namespace() {
    let mut c = Conformance::start("upd-ns");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-client-a-via-ns-selector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}],
            }),
        )],
    );
    let closed = all().expect_all_ingress("x/a", false);
    c.validate("no namespace labelled ns2=updated", 80, Tcp, &closed);
    c.set_namespace_labels("y", &[("ns", "y"), ("ns2", "updated")]);
    let open_to_y = all().expect_all_ingress("x/a", false).expect_peer("y/*", "x/a", true);
    c.validate("y labelled ns2=updated", 80, Tcp, &open_to_y);
    c.set_namespace_labels("y", &[("ns", "y")]);
    c.validate("label removed from y", 80, Tcp, &closed);
}

/// Upstream "should allow ingress access from updated pod", and the label removed again.
#[test]
fn should_allow_ingress_access_from_updated_pod() {
    let mut c = Conformance::start("upd-pod");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "allow-client-a-via-pod-selector",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}],
            }),
        )],
    );
    let closed = all().expect_all_ingress("x/a", false);
    c.validate("no pod labelled pod2=updated", 80, Tcp, &closed);
    c.set_pod_labels("x/b", &[("pod", "b"), ("pod2", "updated")]);
    c.validate("x/b labelled pod2=updated", 80, Tcp, &closed.clone().expect("x/b", "x/a", true));
    c.set_pod_labels("x/b", &[("pod", "b")]);
    c.validate("label removed from x/b", 80, Tcp, &closed);
}

/// Upstream "should deny ingress access to updated pod": a label change makes a deny policy select
/// x/a; removing it releases x/a again.
#[test]
fn should_deny_ingress_access_to_updated_pod() {
    let mut c = Conformance::start("upd-target");
    c.apply(
        "deny.yaml",
        &[policy(
            "x",
            "deny-ingress-via-label-selector",
            json!({"podSelector": {"matchLabels": {"target": "isolated"}}, "policyTypes": ["Ingress"]}),
        )],
    );
    c.validate("nothing selected yet", 80, Tcp, &all());
    c.set_pod_labels("x/a", &[("pod", "a"), ("target", "isolated")]);
    c.validate("x/a labelled target=isolated", 80, Tcp, &all().expect_all_ingress("x/a", false));
    c.set_pod_labels("x/a", &[("pod", "a")]);
    c.validate("label removed from x/a", 80, Tcp, &all());
}

/// An invalid manifest added later is reported in status and changes nothing: the last good set stays
/// enforced (probed); once it is removed, changes apply again.
#[test]
fn should_keep_the_last_good_policy_when_an_invalid_manifest_is_added() {
    let mut c = Conformance::start("invalid");
    c.apply("deny.yaml", &[policy("x", "deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))]);
    let denied = all().expect_peer("*", "x/*", false);
    c.validate("deny ingress in x", 80, Tcp, &denied);
    let errors = c.apply_invalid(
        "bad.yaml",
        "apiVersion: networking.k8s.io/v1\n\
         kind: NetworkPolicy\n\
         metadata: {name: bad-range, namespace: y}\n\
         spec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 81, endPort: 80}\n",
    );
    eprintln!("errors reported for the invalid manifest: {errors:?}");
    c.validate("invalid manifest present: deny ingress in x still enforced", 80, Tcp, &denied);
    c.delete_invalid("bad.yaml");
    c.delete("deny.yaml");
    c.validate("deny deleted once the set is valid again", 80, Tcp, &all());
}

// ---------------------------------------------------------------------------------------------
// Beyond the upstream cases: rule pairing, policyTypes vs rules, defaults, validation
// ---------------------------------------------------------------------------------------------

/// Peers and ports pair up within a rule, not across rules: (x/b on 80) OR (namespace y on 81) does
/// not open 81 to x/b nor 80 to y.
#[test]
fn should_pair_peers_with_the_ports_of_their_own_rule() {
    let mut c = Conformance::start("pairing");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "two-rules",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 81}]},
                ],
            }),
        )],
    );
    let closed = all().expect_all_ingress("x/a", false);
    c.validate("80: x/b only", 80, Tcp, &closed.clone().expect("x/b", "x/a", true));
    c.validate("81: namespace y only", 81, Tcp, &closed.expect_peer("y/*", "x/a", true));
}

/// Rules of a direction that is not in `policyTypes` are ignored, and that direction is not isolated.
#[test]
fn should_ignore_rules_of_a_direction_not_in_policy_types() {
    let mut c = Conformance::start("types-only");
    let with_types = |types: serde_json::Value| {
        policy(
            "x",
            "both-rules",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": types,
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
            }),
        )
    };
    c.apply("policy.yaml", &[with_types(json!(["Ingress"]))]);
    let ingress_only = all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    c.validate("[Ingress]: egress rules ignored", 80, Tcp, &ingress_only);
    c.apply("policy.yaml", &[with_types(json!(["Egress"]))]);
    let egress_only = all().expect_all_egress("x/a", false).expect_peer("x/a", "y/*", true);
    c.validate("[Egress]: ingress rules ignored", 80, Tcp, &egress_only);
}

/// A port entry with neither port nor protocol is every TCP port (the protocol defaults to TCP), and
/// `policyTypes: []` defaults like an absent list.
#[test]
fn should_default_an_empty_port_entry_and_an_empty_policy_types_list() {
    let mut c = Conformance::start("defaults");
    c.apply(
        "policy.yaml",
        &[policy(
            "x",
            "empty-port",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{}]}]}),
        )],
    );
    c.validate("ports: [{}]: TCP 81 open", 81, Tcp, &all());
    c.validate("ports: [{}]: UDP 80 closed", 80, Udp, &all().expect_all_ingress("x/a", false));
    c.apply(
        "policy.yaml",
        &[policy(
            "x",
            "empty-types",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": [],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}],
            }),
        )],
    );
    let r = all().expect_all_ingress("x/a", false).expect_all_egress("x/a", false).expect_peer("x/a", "z/*", true);
    c.validate("policyTypes: [] with egress rules: both directions", 80, Tcp, &r);
}

/// Manifests the API server rejects are rejected (reported in status, nothing applied), one at a time,
/// while a valid policy stays enforced.
#[test]
fn should_reject_manifests_the_api_server_rejects() {
    let mut c = Conformance::start("reject");
    c.apply("deny.yaml", &[policy("x", "deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))]);
    let spec_with = |ingress_rule: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: y}}\n\
             spec:\n  podSelector: {{}}\n  ingress:\n  - {ingress_rule}\n"
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("endPort below port", spec_with("ports: [{port: 81, endPort: 80}]")),
        ("endPort with a named port", spec_with("ports: [{port: serve-80-tcp, endPort: 81}]")),
        ("endPort without port", spec_with("ports: [{endPort: 81}]")),
        ("unknown protocol", spec_with("ports: [{port: 80, protocol: ICMP}]")),
        ("lower-case protocol", spec_with("ports: [{port: 80, protocol: tcp}]")),
        ("port above 65535", spec_with("ports: [{port: 70000}]")),
        ("port 0", spec_with("ports: [{port: 0}]")),
        ("named port not a valid port name", spec_with("ports: [{port: Serve-80}]")),
        ("named port longer than 15", spec_with("ports: [{port: serve-80-tcp-and-more}]")),
        ("malformed cidr", spec_with("from: [{ipBlock: {cidr: 10.200.0.300/24}}]")),
        ("except outside cidr", spec_with("from: [{ipBlock: {cidr: 10.200.0.0/24, except: [10.201.0.0/24]}}]")),
        ("except equal to cidr", spec_with("from: [{ipBlock: {cidr: 10.200.0.0/24, except: [10.200.0.0/24]}}]")),
        ("ipBlock with a podSelector", spec_with("from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]")),
        ("empty peer", spec_with("from: [{}]")),
        ("unknown selector operator", spec_with("from: [{podSelector: {matchExpressions: [{key: pod, operator: Equals, values: [a]}]}}]")),
        ("In without values", spec_with("from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: []}]}}]")),
        ("Exists with values", spec_with("from: [{podSelector: {matchExpressions: [{key: pod, operator: Exists, values: [a]}]}}]")),
        ("invalid label value", spec_with("from: [{podSelector: {matchLabels: {pod: \"a b\"}}}]")),
        ("invalid label key", spec_with("from: [{namespaceSelector: {matchLabels: {\"bad key\": x}}}]")),
        (
            "unknown policyType",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: y}\n\
             spec: {podSelector: {}, policyTypes: [Ingres]}\n"
                .to_owned(),
        ),
        (
            "three policyTypes",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: y}\n\
             spec: {podSelector: {}, policyTypes: [Ingress, Egress, Ingress]}\n"
                .to_owned(),
        ),
        (
            "invalid name",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name, namespace: y}\n\
             spec: {podSelector: {}}\n"
                .to_owned(),
        ),
        (
            "no name",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: y}\nspec: {podSelector: {}}\n"
                .to_owned(),
        ),
    ];
    let mut taken = Vec::new();
    for (what, text) in &cases {
        match c.try_invalid("bad.yaml", text) {
            Ok(errors) => eprintln!("rejected as expected: {what}: {errors:?}"),
            Err(outcome) => taken.push(format!("{what}: {outcome}\n{text}")),
        }
    }
    assert!(
        taken.is_empty(),
        "{} manifest(s) the API server rejects were not rejected:\n\n{}",
        taken.len(),
        taken.join("\n")
    );
    c.validate("the valid policy stayed enforced", 80, Tcp, &all().expect_peer("*", "x/*", false));
}

/// Each port entry keeps its own protocol: UDP 80 and TCP 81 open neither TCP 80 nor UDP 81.
#[test]
fn should_pair_each_port_with_its_own_protocol() {
    let mut c = Conformance::start("port-proto");
    c.apply(
        "allow.yaml",
        &[policy(
            "x",
            "mixed",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 80, "protocol": "UDP"}, {"port": 81}]}],
            }),
        )],
    );
    let closed = all().expect_all_ingress("x/a", false);
    c.validate("UDP 80 open", 80, Udp, &all());
    c.validate("TCP 81 open", 81, Tcp, &all());
    c.validate("TCP 80 closed", 80, Tcp, &closed);
    c.validate("UDP 81 closed", 81, Udp, &closed);
}

/// Label changes on the destination side of egress rules: a pod and a namespace start matching the
/// `to` peers of x/a's egress policy, and stop again.
#[test]
fn should_follow_label_changes_of_egress_peers() {
    let mut c = Conformance::start("upd-egress");
    c.apply(
        "egress.yaml",
        &[policy(
            "x",
            "to-updated",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [
                    {"podSelector": {"matchLabels": {"pod2": "updated"}}},
                    {"namespaceSelector": {"matchLabels": {"ns2": "updated"}}},
                ]}],
            }),
        )],
    );
    let closed = all().expect_all_egress("x/a", false);
    c.validate("nothing labelled yet", 80, Tcp, &closed);
    c.set_pod_labels("x/c", &[("pod", "c"), ("pod2", "updated")]);
    c.validate("x/c labelled pod2=updated", 80, Tcp, &closed.clone().expect("x/a", "x/c", true));
    c.set_namespace_labels("z", &[("ns", "z"), ("ns2", "updated")]);
    let r = closed.clone().expect("x/a", "x/c", true).expect_peer("x/a", "z/*", true);
    c.validate("z labelled ns2=updated", 80, Tcp, &r);
    c.set_pod_labels("x/c", &[("pod", "c")]);
    c.set_namespace_labels("z", &[("ns", "z")]);
    c.validate("labels removed", 80, Tcp, &closed);
}

/// An ipBlock matches addresses, not identities: when x/c takes x/b's labels (so both share one
/// identity), x/b's host prefix still admits x/b only, and an except of it still admits x/c; over both IP
/// versions.
#[test]
fn should_match_ip_blocks_by_address_when_pods_share_labels() {
    let mut c = Conformance::start("ip-shared");
    // Dual-stack policies: each peer list holds the IPv4 and the IPv6 block, so both families mean the same.
    let x_b: Vec<_> = FAMILIES.iter().map(|f| json!({"ipBlock": {"cidr": c.host_cidr("x/b", *f)}})).collect();
    let all_but_x_b: Vec<_> = FAMILIES
        .iter()
        .map(|f| json!({"ipBlock": {"cidr": c.lab_cidr(*f), "except": [c.host_cidr("x/b", *f)]}}))
        .collect();
    c.apply(
        "allow.yaml",
        &[
            policy(
                "x",
                "a-from-x-b-address",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": x_b}]}),
            ),
            policy(
                "y",
                "a-from-all-but-x-b-address",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": all_but_x_b}]}),
            ),
        ],
    );
    let r = all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true).expect("x/b", "y/a", false);
    c.validate("distinct labels", 80, Tcp, &r);
    c.set_pod_labels("x/c", &[("pod", "b")]);
    c.validate("x/c labelled like x/b", 80, Tcp, &r);
}

/// A pod without any label is still selected by `podSelector: {}` (as target and as peer).
#[test]
fn should_select_a_pod_without_labels_with_an_empty_selector() {
    let mut c = Conformance::start("no-labels");
    c.apply(
        "policy.yaml",
        &[policy("x", "from-own-namespace", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))],
    );
    c.set_pod_labels("x/c", &[]);
    let r = all().expect_peer("y/*", "x/*", false).expect_peer("z/*", "x/*", false);
    c.validate("x/c without labels: still isolated, still a peer", 80, Tcp, &r);
}
