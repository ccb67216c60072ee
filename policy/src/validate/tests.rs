use super::*;

/// Validates a policy given as YAML (apiVersion/kind and metadata added unless `meta` says otherwise).
fn errors_of(meta: &str, spec: &str) -> Vec<String> {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let yaml = format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {meta}\nspec:\n{spec}");
    let policy: NetworkPolicy = serde_yaml::from_str(&yaml).unwrap();
    validate(&policy).iter().map(ToString::to_string).collect()
}

fn spec_errors(spec: &str) -> Vec<String> {
    errors_of("{name: p, namespace: default}", spec)
}

#[test]
fn valid_policy_has_no_errors() {
    let errors = spec_errors(
        "podSelector: {matchLabels: {app.kubernetes.io/name: db}}\npolicyTypes: [Ingress, Egress]\ningress:\n- from:\n  - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n  - namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}\n    podSelector: {matchLabels: {role: client}}\n  ports:\n  - {port: 5432}\n  - {port: 30000, endPort: 32767, protocol: UDP}\n  - {port: serve-80-tcp, protocol: SCTP}\negress:\n- {}",
    );
    assert_eq!(errors, Vec::<String>::new());
}

#[test]
fn missing_name() {
    assert_eq!(errors_of("{namespace: default}", "podSelector: {}"), vec!["metadata.name: required value"]);
}

#[test]
fn name_not_a_dns_subdomain() {
    assert_eq!(
        errors_of("{name: Bad_Name}", "podSelector: {}"),
        vec![format!("metadata.name: \"Bad_Name\" {DNS1123_SUBDOMAIN_MSG}")]
    );
}

#[test]
fn name_may_contain_dots() {
    assert!(errors_of("{name: allow.db-5}", "podSelector: {}").is_empty());
}

#[test]
fn namespace_not_a_dns_label() {
    assert_eq!(
        errors_of("{name: p, namespace: team.a}", "podSelector: {}"),
        vec![format!("metadata.namespace: \"team.a\" {DNS1123_LABEL_MSG}")]
    );
}

#[test]
fn invalid_match_labels_key() {
    let errors = spec_errors("podSelector: {matchLabels: {'-app': db}}");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("spec.podSelector.matchLabels: invalid label key \"-app\": name part must consist of"),
        "{errors:?}"
    );
}

#[test]
fn invalid_match_labels_key_prefix() {
    let errors = spec_errors("podSelector: {matchLabels: {'Example.com/app': db}}");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("spec.podSelector.matchLabels: invalid label key \"Example.com/app\": prefix part must be a lowercase RFC 1123 subdomain"),
        "{errors:?}"
    );
}

#[test]
fn label_key_with_two_slashes() {
    let errors = spec_errors("podSelector: {matchLabels: {'a/b/c': db}}");
    assert!(errors[0].contains("a qualified name must consist of"), "{errors:?}");
}

#[test]
fn label_key_name_too_long() {
    let key = "k".repeat(64);
    let errors = spec_errors(&format!("podSelector: {{matchLabels: {{{key}: v}}}}"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("be at most 63 characters"));
}

#[test]
fn invalid_match_labels_value() {
    assert_eq!(
        spec_errors("podSelector: {matchLabels: {app: 'db!'}}"),
        vec![
            "spec.podSelector.matchLabels: invalid label value \"db!\": must be empty or at most 63 alphanumeric \
             characters, '-', '_' or '.', starting and ending with an alphanumeric character"
        ]
    );
}

#[test]
fn empty_label_value_is_valid() {
    assert!(spec_errors("podSelector: {matchLabels: {app: ''}}").is_empty());
}

#[test]
fn label_value_too_long() {
    let value = "v".repeat(64);
    assert_eq!(spec_errors(&format!("podSelector: {{matchLabels: {{app: {value}}}}}")).len(), 1);
}

#[test]
fn invalid_selector_operator() {
    assert_eq!(
        spec_errors("podSelector: {matchExpressions: [{key: app, operator: Equals, values: [db]}]}"),
        vec![
            "spec.podSelector.matchExpressions[0].operator: \"Equals\" is not a valid selector operator (supported: In, NotIn, Exists, DoesNotExist)"
        ]
    );
}

#[test]
fn operator_is_case_sensitive() {
    assert_eq!(spec_errors("podSelector: {matchExpressions: [{key: app, operator: in, values: [db]}]}").len(), 1);
}

#[test]
fn in_operator_without_values() {
    assert_eq!(
        spec_errors("podSelector: {matchExpressions: [{key: app, operator: In}]}"),
        vec!["spec.podSelector.matchExpressions[0].values: must be specified when operator is In or NotIn"]
    );
}

#[test]
fn not_in_operator_with_empty_values() {
    assert_eq!(
        spec_errors("podSelector: {matchExpressions: [{key: app, operator: NotIn, values: []}]}"),
        vec!["spec.podSelector.matchExpressions[0].values: must be specified when operator is In or NotIn"]
    );
}

#[test]
fn exists_operator_with_values() {
    assert_eq!(
        spec_errors("podSelector: {matchExpressions: [{key: app, operator: Exists, values: [db]}]}"),
        vec![
            "spec.podSelector.matchExpressions[0].values: may not be specified when operator is Exists or DoesNotExist"
        ]
    );
}

#[test]
fn does_not_exist_operator_with_values() {
    assert_eq!(
        spec_errors("podSelector: {matchExpressions: [{key: app, operator: DoesNotExist, values: [db]}]}").len(),
        1
    );
}

#[test]
fn invalid_expression_key_and_value() {
    let errors = spec_errors(
        "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchExpressions: [{key: 'bad key', operator: In, values: [ok, 'bad value']}]}",
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with(
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].key: invalid label key \"bad key\""
    ));
    assert!(errors[1].starts_with(
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values[1]: invalid label value \"bad value\""
    ));
}

#[test]
fn port_zero() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: 0}]"),
        vec!["spec.ingress[0].ports[0].port: 0 must be between 1 and 65535, inclusive"]
    );
}

#[test]
fn port_above_65535() {
    assert_eq!(
        spec_errors("podSelector: {}\negress:\n- ports: [{port: 80}, {port: 65536}]"),
        vec!["spec.egress[0].ports[1].port: 65536 must be between 1 and 65535, inclusive"]
    );
}

#[test]
fn end_port_below_port() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: 80}, {port: 90, endPort: 80}]"),
        vec!["spec.ingress[0].ports[1].endPort: must be >= port"]
    );
}

#[test]
fn end_port_equal_to_port_is_valid() {
    assert!(spec_errors("podSelector: {}\ningress:\n- ports: [{port: 90, endPort: 90}]").is_empty());
}

#[test]
fn end_port_above_65535() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: 90, endPort: 70000}]"),
        vec!["spec.ingress[0].ports[0].endPort: 70000 must be between 1 and 65535, inclusive"]
    );
}

#[test]
fn end_port_with_named_port() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: http, endPort: 90}]"),
        vec!["spec.ingress[0].ports[0].endPort: may not be specified when port is non-numeric"]
    );
}

#[test]
fn end_port_without_port() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{endPort: 90}]"),
        vec!["spec.ingress[0].ports[0].endPort: may not be specified when port is not specified"]
    );
}

#[test]
fn unsupported_protocol() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{protocol: ICMP}]"),
        vec![
            "spec.ingress[0].ports[0].protocol: unsupported value \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\""
        ]
    );
}

#[test]
fn protocol_is_case_sensitive() {
    assert_eq!(spec_errors("podSelector: {}\ningress:\n- ports: [{protocol: tcp}]").len(), 1);
}

#[test]
fn port_name_too_long() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: abcdefghijklmnop}]"),
        vec![
            "spec.ingress[0].ports[0].port: invalid port name \"abcdefghijklmnop\": must be no more than 15 characters"
        ]
    );
}

#[test]
fn port_name_with_uppercase() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: Http}]"),
        vec![
            "spec.ingress[0].ports[0].port: invalid port name \"Http\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
        ]
    );
}

#[test]
fn port_name_without_letters() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: '80-80'}]"),
        vec!["spec.ingress[0].ports[0].port: invalid port name \"80-80\": must contain at least one letter (a-z)"]
    );
}

#[test]
fn port_name_with_consecutive_hyphens() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: my--port}]"),
        vec!["spec.ingress[0].ports[0].port: invalid port name \"my--port\": must not contain consecutive hyphens"]
    );
}

#[test]
fn port_name_with_leading_hyphen() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- ports: [{port: '-http'}]"),
        vec!["spec.ingress[0].ports[0].port: invalid port name \"-http\": must not begin or end with a hyphen"]
    );
}

#[test]
fn port_name_empty() {
    assert_eq!(spec_errors("podSelector: {}\ningress:\n- ports: [{port: ''}]").len(), 1);
}

#[test]
fn ip_block_missing_cidr() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: ''}}]"),
        vec!["spec.ingress[0].from[0].ipBlock.cidr: required value"]
    );
}

#[test]
fn ip_block_invalid_cidr() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/33}}]"),
        vec![
            "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR: prefix length \"33\" must be a number from 0 to 32"
        ]
    );
}

#[test]
fn ip_block_cidr_without_length() {
    assert_eq!(
        spec_errors("podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.1}}]"),
        vec![
            "spec.egress[0].to[0].ipBlock.cidr: \"10.0.0.1\" is not a CIDR: missing '/<prefix length>' (e.g. 10.9.8.0/24 or 2001:db8::/64)"
        ]
    );
}

#[test]
fn ip_block_invalid_except() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 'x/8']}}]"),
        vec!["spec.ingress[0].from[0].ipBlock.except[1]: \"x/8\" is not a CIDR: \"x\" is not an IPv4 or IPv6 address"]
    );
}

#[test]
fn ip_block_except_outside_cidr() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]"),
        vec![
            "spec.ingress[0].from[0].ipBlock.except[0]: \"11.0.0.0/16\" must be a strict subset of cidr \"10.0.0.0/8\""
        ]
    );
}

#[test]
fn ip_block_except_equal_to_cidr() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]"),
        vec![
            "spec.ingress[0].from[0].ipBlock.except[0]: \"10.0.0.0/8\" must be a strict subset of cidr \"10.0.0.0/8\""
        ]
    );
}

#[test]
fn ip_block_non_canonical_cidr_is_accepted() {
    assert!(
        spec_errors("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.1.2.3/4, except: [10.1.2.3/32]}}]")
            .is_empty()
    );
}

#[test]
fn ip_block_ipv6_is_accepted() {
    assert!(
        spec_errors("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 'fd00::/8', except: ['fd00::/16']}}]")
            .is_empty()
    );
}

#[test]
fn ip_block_with_pod_selector() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]"),
        vec!["spec.ingress[0].from[0]: may not specify both ipBlock and another peer"]
    );
}

#[test]
fn ip_block_with_namespace_selector() {
    assert_eq!(
        spec_errors("podSelector: {}\negress:\n- to: [{}, {ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]"),
        vec![
            "spec.egress[0].to[0]: must specify a peer (podSelector, namespaceSelector or ipBlock)",
            "spec.egress[0].to[1]: may not specify both ipBlock and another peer"
        ]
    );
}

#[test]
fn empty_peer() {
    assert_eq!(
        spec_errors("podSelector: {}\ningress:\n- from: [{}]"),
        vec!["spec.ingress[0].from[0]: must specify a peer (podSelector, namespaceSelector or ipBlock)"]
    );
}

#[test]
fn unsupported_policy_type() {
    assert_eq!(
        spec_errors("podSelector: {}\npolicyTypes: [Ingress, ingress]"),
        vec!["spec.policyTypes[1]: unsupported value \"ingress\": supported values: \"Ingress\", \"Egress\""]
    );
}

#[test]
fn duplicate_policy_type() {
    assert_eq!(
        spec_errors("podSelector: {}\npolicyTypes: [Egress, Egress]"),
        vec!["spec.policyTypes[1]: duplicate value \"Egress\""]
    );
}

#[test]
fn too_many_policy_types() {
    assert_eq!(
        spec_errors("podSelector: {}\npolicyTypes: [Ingress, Egress, Ingress]"),
        vec!["spec.policyTypes: may not specify more than two policyTypes (got 3)"]
    );
}

#[test]
fn invalid_metadata_labels() {
    let errors = errors_of("{name: p, labels: {'bad key': v}}", "podSelector: {}");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("metadata.labels: invalid label key \"bad key\""));
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let errors = errors_of(
        "{name: BAD}",
        "podSelector: {matchExpressions: [{key: a, operator: Nope}]}\ningress:\n- ports: [{port: 0, protocol: ICMP}]\n  from: [{}]\negress:\n- to: [{ipBlock: {cidr: 300.0.0.0/8}}]\npolicyTypes: [Sideways]",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        paths,
        vec![
            "metadata.name",
            "spec.podSelector.matchExpressions[0].operator",
            "spec.ingress[0].ports[0].protocol",
            "spec.ingress[0].ports[0].port",
            "spec.ingress[0].from[0]",
            "spec.egress[0].to[0].ipBlock.cidr",
            "spec.policyTypes[0]",
        ]
    );
}

#[test]
fn field_error_path_accessor() {
    let policy: NetworkPolicy =
        serde_yaml::from_str("metadata: {name: p}\nspec: {ingress: [{ports: [{port: 90, endPort: 80}]}]}").unwrap();
    let errors = validate(&policy);
    assert_eq!(errors[0].path(), "spec.ingress[0].ports[0].endPort");
    assert!(matches!(errors[0], FieldError::EndPortBelowPort { port: 90, end_port: 80, .. }));
}

#[test]
fn dns_helpers() {
    assert!(is_dns1123_label("a-1"));
    assert!(!is_dns1123_label("a.b"));
    assert!(!is_dns1123_label(&"a".repeat(64)));
    assert!(is_dns1123_subdomain("a.b-c.d"));
    assert!(!is_dns1123_subdomain("a..b"));
    assert!(!is_dns1123_subdomain(".a"));
    assert!(!is_dns1123_subdomain(&"a".repeat(254)));
}
