//! Cases modelled on kubernetes test/e2e/network/netpol/network_policy.go: the same model (x, y, z; a, b, c),
//! the same policies, and the same expected truth tables, checked through the plan's evaluation oracle.

mod common;

use common::{Reachability, assert_reachability, model, plan, pod_ip, reachability};
use flowgate_policy::{
    Addr, CidrIdentities, ClusterView, LoadedPolicy, PolicyPlan, Protocol,
    Protocol::{Sctp, Tcp, Udp},
    compile,
};

/// A NetworkPolicy document; `spec` is YAML at column 0.
fn np(namespace: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
    )
}

fn check(plan: &PolicyPlan, cluster: &ClusterView, protocol: Protocol, port: u16, expected: &Reachability) {
    assert_reachability(plan, cluster, protocol, port, expected);
}

const DNS_EGRESS: &str = "- ports:\n  - {protocol: UDP, port: 53}\n  - {protocol: TCP, port: 53}";

#[test]
fn no_policy_everything_connects() {
    let cluster = model();
    let plan = plan(&cluster, "");
    check(&plan, &cluster, Tcp, 80, &reachability(true));
    check(&plan, &cluster, Udp, 81, &reachability(true));
}

#[test]
fn default_deny_ingress() {
    let cluster = model();
    let plan = plan(&cluster, &np("x", "deny-ingress", "podSelector: {}\ningress: []"));
    let r = reachability(true).expect_peer("*", "x/*", false);
    check(&plan, &cluster, Tcp, 80, &r);
    check(&plan, &cluster, Udp, 81, &r);
}

#[test]
fn default_deny_ingress_without_ingress_field() {
    let cluster = model();
    let plan = plan(&cluster, &np("x", "deny-ingress", "podSelector: {}"));
    let r = reachability(true).expect_peer("*", "x/*", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn default_deny_all() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np("x", "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]\ningress: []\negress: []"),
    );
    let r = reachability(true).expect_peer("*", "x/*", false).expect_peer("x/*", "*", false);
    check(&plan, &cluster, Tcp, 80, &r);
    check(&plan, &cluster, Tcp, 81, &r);
}

#[test]
fn allow_from_pods_within_server_namespace_by_pod_selector() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "x-a-allows-x-b",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}",
        ),
    );
    let r = reachability(true).expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    check(&plan, &cluster, Tcp, 80, &r);
    check(&plan, &cluster, Udp, 81, &r);
}

#[test]
fn allow_ingress_from_pods_in_all_namespaces() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np("x", "allow-all-ns", "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {}"),
    );
    check(&plan, &cluster, Tcp, 80, &reachability(true));
}

#[test]
fn allow_only_from_a_different_namespace_by_namespace_selector() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "allow-ns-y",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}",
        ),
    );
    let r = reachability(true).expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn pod_selector_with_match_expressions() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "expr",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector:\n      matchExpressions:\n      - {key: pod, operator: In, values: [b]}",
        ),
    );
    let r = reachability(true).expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn namespace_selector_with_match_expressions() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "expr",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: ns, operator: In, values: [y]}",
        ),
    );
    let r = reachability(true).expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn pod_selector_or_namespace_selector_two_peers() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "or",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: ns, operator: NotIn, values: [x]}\n  - podSelector: {matchLabels: {pod: b}}",
        ),
    );
    let r = reachability(true).expect("x/a", "x/a", false).expect("x/c", "x/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn pod_selector_and_namespace_selector_one_peer() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "and",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: ns, operator: NotIn, values: [x]}\n    podSelector: {matchLabels: {pod: b}}",
        ),
    );
    let r = reachability(true).expect_all_ingress("x/a", false).expect("y/b", "x/a", true).expect("z/b", "x/a", true);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "multi",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: ns, operator: NotIn, values: [x]}\n    podSelector:\n      matchExpressions:\n      - {key: pod, operator: In, values: [b, c]}",
        ),
    );
    let mut r = reachability(true).expect_all_ingress("x/a", false);
    for from in ["y/b", "y/c", "z/b", "z/c"] {
        r = r.expect(from, "x/a", true);
    }
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn any_of_several_pod_selectors() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "any",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}\n  - podSelector: {matchLabels: {pod: c}}",
        ),
    );
    let r = reachability(true).expect_all_ingress("x/a", false).expect("x/b", "x/a", true).expect("x/c", "x/a", true);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn only_from_a_pod_in_a_different_namespace() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "ya-only",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n    podSelector: {matchLabels: {pod: a}}",
        ),
    );
    let r = reachability(true).expect_all_ingress("x/a", false).expect("y/a", "x/a", true);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn namespace_selector_on_default_name_label() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "by-name",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}",
        ),
    );
    let r = reachability(true).expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn namespace_selector_match_expressions_on_default_name_label() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "not-y",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}",
        ),
    );
    let r = reachability(true).expect_peer("y/*", "x/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn ports_only_81_from_namespace_y() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "port-81",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  ports:\n  - {port: 81, protocol: TCP}",
        ),
    );
    let r80 = reachability(true).expect_all_ingress("x/a", false);
    check(&plan, &cluster, Tcp, 80, &r80);
    let r81 = reachability(true).expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    check(&plan, &cluster, Tcp, 81, &r81);
}

#[test]
fn multiple_stacked_policies_with_overlapping_pod_selectors() {
    let cluster = model();
    let yaml = np(
        "x",
        "allow-81",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  ports:\n  - {port: 81, protocol: TCP}",
    ) + &np(
        "x",
        "allow-80",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  ports:\n  - {port: 80, protocol: TCP}",
    );
    let plan = plan(&cluster, &yaml);
    let r = reachability(true).expect_peer("x/*", "x/a", false).expect_peer("z/*", "x/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
    check(&plan, &cluster, Tcp, 81, &r);
}

#[test]
fn allow_all_ingress_policy() {
    let cluster = model();
    let plan = plan(&cluster, &np("x", "allow-all", "podSelector: {}\ningress:\n- {}"));
    check(&plan, &cluster, Tcp, 80, &reachability(true));
    check(&plan, &cluster, Udp, 81, &reachability(true));
}

#[test]
fn allow_ingress_on_one_named_port() {
    let cluster = model();
    let plan = plan(&cluster, &np("x", "named-81", "podSelector: {}\ningress:\n- ports:\n  - port: serve-81-tcp"));
    check(&plan, &cluster, Tcp, 81, &reachability(true));
    let r80 = reachability(true).expect_peer("*", "x/*", false);
    check(&plan, &cluster, Tcp, 80, &r80);
    // The name is TCP's; UDP 81 is another port (serve-81-udp).
    check(&plan, &cluster, Udp, 81, &r80);
}

#[test]
fn allow_ingress_from_namespace_on_one_named_port() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "ns-y-named-80",
            "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  ports:\n  - {port: serve-80-tcp, protocol: TCP}",
        ),
    );
    let r80 = reachability(true).expect_peer("x/*", "x/*", false).expect_peer("z/*", "x/*", false);
    check(&plan, &cluster, Tcp, 80, &r80);
    let r81 = reachability(true).expect_peer("*", "x/*", false);
    check(&plan, &cluster, Tcp, 81, &r81);
}

#[test]
fn allow_egress_on_one_named_port() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "egress-named-80",
            &format!(
                "podSelector: {{}}\npolicyTypes: [Egress]\negress:\n- ports:\n  - port: serve-80-tcp\n{DNS_EGRESS}"
            ),
        ),
    );
    check(&plan, &cluster, Tcp, 80, &reachability(true));
    let r81 = reachability(true).expect_peer("x/*", "*", false);
    check(&plan, &cluster, Tcp, 81, &r81);
}

#[test]
fn egress_named_port_does_not_reach_outside_addresses() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "egress-named-80",
            "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports:\n  - port: serve-80-tcp",
        ),
    );
    let xa = Addr::endpoint(&cluster.pods[0]);
    let outside = Addr::Outside { ip: "192.0.2.1".parse().unwrap() };
    assert!(!plan.evaluate(xa, outside, Tcp, 80).allowed);
}

#[test]
fn deny_ingress_from_pods_in_other_namespaces() {
    let cluster = model();
    let plan = plan(&cluster, &np("x", "same-ns", "podSelector: {}\ningress:\n- from:\n  - podSelector: {}"));
    let r = reachability(true).expect_peer("y/*", "x/*", false).expect_peer("z/*", "x/*", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn deny_egress_from_pods_by_pod_selector() {
    let cluster = model();
    let plan = plan(&cluster, &np("x", "deny-egress-a", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]"));
    let r = reachability(true).expect_all_egress("x/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn deny_egress_from_all_pods_in_a_namespace() {
    let cluster = model();
    let plan = plan(&cluster, &np("x", "deny-egress", "podSelector: {}\npolicyTypes: [Egress]"));
    let r = reachability(true).expect_peer("x/*", "*", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn ingress_and_egress_specified_together() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "a-in-b-out-80",
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\ningress:\n- from:\n  - podSelector: {{matchLabels: {{pod: b}}}}\negress:\n- ports:\n  - {{port: 80, protocol: TCP}}\n{DNS_EGRESS}"
            ),
        ),
    );
    let r80 = reachability(true).expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    check(&plan, &cluster, Tcp, 80, &r80);
    let r81 =
        reachability(true).expect_all_egress("x/a", false).expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    check(&plan, &cluster, Tcp, 81, &r81);
}

#[test]
fn ingress_rules_with_policy_types_ingress_egress_isolate_egress_too() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np("x", "both-types", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress, Egress]\ningress:\n- {}"),
    );
    let r = reachability(true).expect_all_egress("x/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn egress_only_policy_types_ignore_ingress_rules() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "egress-type",
            "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}\negress:\n- {}",
        ),
    );
    // Ingress is not isolated (not in policyTypes) and egress allows everything.
    check(&plan, &cluster, Tcp, 80, &reachability(true));
}

#[test]
fn denying_egress_on_the_client_even_if_the_server_allows_it() {
    let cluster = model();
    let yaml = np(
        "x",
        "xa-to-ya",
        &format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector: {{matchLabels: {{ns: y}}}}\n    podSelector: {{matchLabels: {{pod: a}}}}\n{DNS_EGRESS}"
        ),
    ) + &np(
        "y",
        "ya-from-xa",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: x}}\n    podSelector: {matchLabels: {pod: a}}",
    ) + &np(
        "y",
        "yb-from-xa",
        "podSelector: {matchLabels: {pod: b}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: x}}\n    podSelector: {matchLabels: {pod: a}}",
    );
    let plan = plan(&cluster, &yaml);
    let r = reachability(true)
        .expect_all_egress("x/a", false)
        .expect_all_ingress("y/a", false)
        .expect_all_ingress("y/b", false)
        .expect("x/a", "y/a", true);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn egress_to_a_server_in_another_namespace_by_pod_and_namespace_selector() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "to-ya",
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector: {{matchLabels: {{ns: y}}}}\n    podSelector: {{matchLabels: {{pod: a}}}}\n{DNS_EGRESS}"
            ),
        ),
    );
    let r = reachability(true).expect_all_egress("x/a", false).expect("x/a", "y/a", true);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn any_port_on_a_specific_protocol() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np("x", "tcp-any-port", "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - protocol: TCP"),
    );
    check(&plan, &cluster, Tcp, 80, &reachability(true));
    check(&plan, &cluster, Tcp, 81, &reachability(true));
    let udp = reachability(true).expect_all_ingress("x/a", false);
    check(&plan, &cluster, Udp, 80, &udp);
}

#[test]
fn port_without_protocol_defaults_to_tcp() {
    let cluster = model();
    let plan = plan(&cluster, &np("x", "port-80", "podSelector: {}\ningress:\n- ports:\n  - port: 80"));
    check(&plan, &cluster, Tcp, 80, &reachability(true));
    let denied = reachability(true).expect_peer("*", "x/*", false);
    check(&plan, &cluster, Udp, 80, &denied);
    check(&plan, &cluster, Tcp, 81, &denied);
}

#[test]
fn multiple_ingress_policies_with_allow_all_taking_precedence() {
    let cluster = model();
    let only_80 =
        np("x", "allow-80", "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 80, protocol: TCP}");
    let first = plan(&cluster, &only_80);
    let r81 = reachability(true).expect_all_ingress("x/a", false);
    check(&first, &cluster, Tcp, 81, &r81);
    let both = only_80 + &np("x", "allow-all", "podSelector: {matchLabels: {pod: a}}\ningress:\n- {}");
    let second = plan(&cluster, &both);
    check(&second, &cluster, Tcp, 80, &reachability(true));
    check(&second, &cluster, Tcp, 81, &reachability(true));
}

#[test]
fn multiple_egress_policies_with_allow_all_taking_precedence() {
    let cluster = model();
    let only_80 = np(
        "x",
        "egress-80",
        &format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- ports:\n  - {{port: 80, protocol: TCP}}\n{DNS_EGRESS}"
        ),
    );
    let first = plan(&cluster, &only_80);
    let r81 = reachability(true).expect_all_egress("x/a", false);
    check(&first, &cluster, Tcp, 81, &r81);
    check(&first, &cluster, Tcp, 80, &reachability(true));
    let both =
        only_80 + &np("x", "egress-all", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- {}");
    let second = plan(&cluster, &both);
    check(&second, &cluster, Tcp, 81, &reachability(true));
}

#[test]
fn policies_stop_applying_once_deleted() {
    let cluster = model();
    let mut ids = CidrIdentities::new();
    let deny = common::policies(&np("x", "deny-ingress", "podSelector: {}\ningress:\n- from:\n  - podSelector: {}"));
    let enforced = compile(&deny, &cluster, &mut ids);
    let r = reachability(true).expect_peer("y/*", "x/*", false).expect_peer("z/*", "x/*", false);
    check(&enforced, &cluster, Tcp, 80, &r);
    let deleted = compile::<LoadedPolicy>(&[], &cluster, &mut ids);
    check(&deleted, &cluster, Tcp, 80, &reachability(true));
}

#[test]
fn allow_ingress_from_updated_namespace() {
    let mut cluster = model();
    let yaml = np(
        "x",
        "from-ns2-updated",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns2: updated}}",
    );
    let before = plan(&cluster, &yaml);
    let r = reachability(true).expect_all_ingress("x/a", false);
    check(&before, &cluster, Tcp, 80, &r);
    cluster.namespaces[1].labels.insert("ns2".into(), "updated".into());
    let after = plan(&cluster, &yaml);
    let r = r.expect_peer("y/*", "x/a", true);
    check(&after, &cluster, Tcp, 80, &r);
}

#[test]
fn deny_ingress_access_to_updated_pod() {
    let mut cluster = model();
    let yaml = np("x", "deny-to-target", "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]");
    check(&plan(&cluster, &yaml), &cluster, Tcp, 80, &reachability(true));
    cluster.pods[0].labels.insert("target".into(), "isolated".into());
    let r = reachability(true).expect_all_ingress("x/a", false);
    check(&plan(&cluster, &yaml), &cluster, Tcp, 80, &r);
}

#[test]
fn egress_to_server_in_cidr_block() {
    let cluster = model();
    let xb = pod_ip("x", "b");
    let plan = plan(
        &cluster,
        &np(
            "x",
            "to-xb-cidr",
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock: {{cidr: {xb}/32}}\n{DNS_EGRESS}"
            ),
        ),
    );
    let r = reachability(true).expect_all_egress("x/a", false).expect("x/a", "x/b", true);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn except_clause_while_egress_to_server_in_cidr_block() {
    let cluster = model();
    let xb = pod_ip("x", "b");
    let plan = plan(
        &cluster,
        &np(
            "x",
            "except-xb",
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock:\n      cidr: {xb}/4\n      except: [{xb}/32]\n{DNS_EGRESS}"
            ),
        ),
    );
    let r = reachability(true).expect("x/a", "x/b", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn ip_overlapping_both_cidr_and_except_is_allowed_by_another_policy() {
    let cluster = model();
    let xb = pod_ip("x", "b");
    let except = np(
        "x",
        "except-xb",
        &format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock:\n      cidr: {xb}/4\n      except: [{xb}/32]\n{DNS_EGRESS}"
        ),
    );
    let r = reachability(true).expect("x/a", "x/b", false);
    check(&plan(&cluster, &except), &cluster, Tcp, 80, &r);
    let both = except
        + &np(
            "x",
            "allow-xb",
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock: {{cidr: {xb}/32}}\n{DNS_EGRESS}"
            ),
        );
    check(&plan(&cluster, &both), &cluster, Tcp, 80, &reachability(true));
}

#[test]
fn ingress_from_cidr_block_matches_pod_ips() {
    let cluster = model();
    let yb = pod_ip("y", "b");
    let plan = plan(
        &cluster,
        &np("x", "from-yb-cidr", &format!("podSelector: {{}}\ningress:\n- from:\n  - ipBlock: {{cidr: {yb}/32}}")),
    );
    let mut r = reachability(true).expect_peer("*", "x/*", false);
    for to in ["x/a", "x/b", "x/c"] {
        r = r.expect("y/b", to, true);
    }
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn ingress_and_egress_controlled_independently_by_pod_selector() {
    let cluster = model();
    let deny_egress = np("x", "deny-egress-xa", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]");
    let r = reachability(true).expect_all_egress("x/a", false);
    check(&plan(&cluster, &deny_egress), &cluster, Tcp, 80, &r);
    let both =
        deny_egress + &np("x", "deny-ingress-xb", "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Ingress]");
    let r = r.expect_all_ingress("x/b", false);
    check(&plan(&cluster, &both), &cluster, Tcp, 80, &r);
}

#[test]
fn udp_only_policy_denies_tcp() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np("x", "udp-81", "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {protocol: UDP, port: 81}"),
    );
    let tcp = reachability(true).expect_all_ingress("x/a", false);
    check(&plan, &cluster, Tcp, 81, &tcp);
    check(&plan, &cluster, Udp, 81, &reachability(true));
    check(&plan, &cluster, Udp, 80, &tcp);
}

#[test]
fn sctp_policy_is_not_treated_as_tcp() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np("x", "sctp-80", "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {protocol: SCTP, port: 80}"),
    );
    let tcp = reachability(true).expect_all_ingress("x/a", false);
    check(&plan, &cluster, Tcp, 80, &tcp);
    check(&plan, &cluster, Sctp, 80, &reachability(true));
}

#[test]
fn ingress_port_range_with_end_port() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "range",
            "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  ports:\n  - {protocol: TCP, port: 80, endPort: 81}",
        ),
    );
    let r = reachability(true).expect_peer("x/*", "x/*", false).expect_peer("z/*", "x/*", false);
    check(&plan, &cluster, Tcp, 80, &r);
    check(&plan, &cluster, Tcp, 81, &r);
    let r82 = reachability(true).expect_peer("*", "x/*", false);
    check(&plan, &cluster, Tcp, 82, &r82);
    check(&plan, &cluster, Tcp, 79, &r82);
}

#[test]
fn egress_port_range_with_end_port() {
    let cluster = model();
    let plan = plan(
        &cluster,
        &np(
            "x",
            "egress-range",
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector: {{matchLabels: {{ns: z}}}}\n  ports:\n  - {{protocol: TCP, port: 81, endPort: 90}}\n{DNS_EGRESS}"
            ),
        ),
    );
    let r80 = reachability(true).expect_all_egress("x/a", false);
    check(&plan, &cluster, Tcp, 80, &r80);
    let r81 = reachability(true).expect_all_egress("x/a", false).expect_peer("x/a", "z/*", true);
    check(&plan, &cluster, Tcp, 81, &r81);
}

#[test]
fn policy_in_one_namespace_does_not_select_pods_in_another() {
    let cluster = model();
    let plan =
        plan(&cluster, &np("y", "deny-a-in-y", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress, Egress]"));
    let r = reachability(true).expect_all_ingress("y/a", false).expect_all_egress("y/a", false);
    check(&plan, &cluster, Tcp, 80, &r);
}

#[test]
fn egress_default_type_when_egress_rules_present() {
    let cluster = model();
    // No policyTypes: Ingress (no rules: deny all) plus Egress (rules present).
    let plan = plan(
        &cluster,
        &np(
            "x",
            "egress-to-y",
            "podSelector: {matchLabels: {pod: c}}\negress:\n- to:\n  - namespaceSelector: {matchLabels: {ns: y}}",
        ),
    );
    let r = reachability(true)
        .expect_all_ingress("x/c", false)
        .expect_all_egress("x/c", false)
        .expect_peer("x/c", "y/*", true);
    check(&plan, &cluster, Tcp, 80, &r);
}
