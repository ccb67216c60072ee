//! NetworkPolicy validation as the Kubernetes API server does it (`pkg/apis/networking/validation`
//! `ValidateNetworkPolicy` plus the apimachinery name, label and selector rules), reporting every error
//! with its JSON field path (`spec.ingress[0].from[1].ipBlock.except[0]`).
//!
//! One rule is stricter than upstream: a `policyTypes` value listed twice is an error.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};

use crate::cidr::{CidrError, parse_cidr};

const DNS1123_SUBDOMAIN_MSG: &str = "must be a lowercase RFC 1123 subdomain: lower case alphanumeric characters, '-' or \
     '.', starting and ending with an alphanumeric character, at most 253 characters (e.g. 'example.com')";
const DNS1123_LABEL_MSG: &str = "must be a lowercase RFC 1123 label: lower case alphanumeric characters or '-', \
     starting and ending with an alphanumeric character, at most 63 characters (e.g. 'my-name')";

/// One validation error, with the JSON path of the offending field. Displays as `<path>: <what is wrong>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{path}: required value")]
    Required { path: String },
    #[error("{path}: \"{value}\" {DNS1123_SUBDOMAIN_MSG}")]
    NotDnsSubdomain { path: String, value: String },
    #[error("{path}: \"{value}\" {DNS1123_LABEL_MSG}")]
    NotDnsLabel { path: String, value: String },
    #[error("{path}: invalid label key \"{key}\": {reason}")]
    InvalidLabelKey { path: String, key: String, reason: String },
    #[error("{path}: invalid label value \"{value}\": {reason}")]
    InvalidLabelValue { path: String, value: String, reason: String },
    #[error("{path}: \"{operator}\" is not a valid selector operator (supported: In, NotIn, Exists, DoesNotExist)")]
    InvalidOperator { path: String, operator: String },
    #[error("{path}: must be specified when operator is In or NotIn")]
    ValuesRequired { path: String },
    #[error("{path}: may not be specified when operator is Exists or DoesNotExist")]
    ValuesForbidden { path: String },
    #[error("{path}: {port} must be between 1 and 65535, inclusive")]
    PortOutOfRange { path: String, port: i32 },
    #[error("{path}: invalid port name \"{name}\": {reason}")]
    InvalidPortName { path: String, name: String, reason: String },
    #[error("{path}: must be >= port")]
    EndPortBelowPort { path: String, port: i32, end_port: i32 },
    #[error("{path}: may not be specified when port is non-numeric")]
    EndPortWithNamedPort { path: String },
    #[error("{path}: may not be specified when port is not specified")]
    EndPortWithoutPort { path: String },
    #[error("{path}: unsupported value \"{protocol}\": supported values: \"TCP\", \"UDP\", \"SCTP\"")]
    UnsupportedProtocol { path: String, protocol: String },
    #[error("{path}: {source}")]
    InvalidCidr {
        path: String,
        #[source]
        source: CidrError,
    },
    #[error("{path}: \"{except}\" must be a strict subset of cidr \"{cidr}\"")]
    ExceptNotInsideCidr { path: String, except: String, cidr: String },
    #[error("{path}: must specify a peer (podSelector, namespaceSelector or ipBlock)")]
    EmptyPeer { path: String },
    #[error("{path}: may not specify both ipBlock and another peer")]
    IpBlockWithSelector { path: String },
    #[error("{path}: unsupported value \"{value}\": supported values: \"Ingress\", \"Egress\"")]
    UnsupportedPolicyType { path: String, value: String },
    #[error("{path}: duplicate value \"{value}\"")]
    DuplicatePolicyType { path: String, value: String },
    #[error("{path}: may not specify more than two policyTypes (got {count})")]
    TooManyPolicyTypes { path: String, count: usize },
}

impl FieldError {
    /// The JSON path of the offending field.
    #[must_use]
    pub fn path(&self) -> &str {
        match self {
            FieldError::Required { path }
            | FieldError::NotDnsSubdomain { path, .. }
            | FieldError::NotDnsLabel { path, .. }
            | FieldError::InvalidLabelKey { path, .. }
            | FieldError::InvalidLabelValue { path, .. }
            | FieldError::InvalidOperator { path, .. }
            | FieldError::ValuesRequired { path }
            | FieldError::ValuesForbidden { path }
            | FieldError::PortOutOfRange { path, .. }
            | FieldError::InvalidPortName { path, .. }
            | FieldError::EndPortBelowPort { path, .. }
            | FieldError::EndPortWithNamedPort { path }
            | FieldError::EndPortWithoutPort { path }
            | FieldError::UnsupportedProtocol { path, .. }
            | FieldError::InvalidCidr { path, .. }
            | FieldError::ExceptNotInsideCidr { path, .. }
            | FieldError::EmptyPeer { path }
            | FieldError::IpBlockWithSelector { path }
            | FieldError::UnsupportedPolicyType { path, .. }
            | FieldError::DuplicatePolicyType { path, .. }
            | FieldError::TooManyPolicyTypes { path, .. } => path,
        }
    }
}

/// Every error the API server would report for `policy` (empty when valid). A missing `metadata.namespace`
/// is not an error here: sources default it to `default` before validating.
#[must_use]
pub fn validate(policy: &NetworkPolicy) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let meta = &policy.metadata;
    match meta.name.as_deref() {
        None | Some("") => errors.push(FieldError::Required { path: "metadata.name".into() }),
        Some(name) if !is_dns1123_subdomain(name) => {
            errors.push(FieldError::NotDnsSubdomain { path: "metadata.name".into(), value: name.into() })
        }
        Some(_) => {}
    }
    if let Some(namespace) = meta.namespace.as_deref()
        && !namespace.is_empty()
        && !is_dns1123_label(namespace)
    {
        errors.push(FieldError::NotDnsLabel { path: "metadata.namespace".into(), value: namespace.into() });
    }
    if let Some(labels) = &meta.labels {
        validate_labels(labels, "metadata.labels", &mut errors);
    }

    let Some(spec) = &policy.spec else {
        return errors;
    };
    if let Some(selector) = &spec.pod_selector {
        validate_selector(selector, "spec.podSelector", &mut errors);
    }
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let rule_path = format!("spec.ingress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            validate_port(port, &format!("{rule_path}.ports[{j}]"), &mut errors);
        }
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            validate_peer(peer, &format!("{rule_path}.from[{j}]"), &mut errors);
        }
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let rule_path = format!("spec.egress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            validate_port(port, &format!("{rule_path}.ports[{j}]"), &mut errors);
        }
        for (j, peer) in rule.to.iter().flatten().enumerate() {
            validate_peer(peer, &format!("{rule_path}.to[{j}]"), &mut errors);
        }
    }
    if let Some(types) = &spec.policy_types {
        validate_policy_types(types, &mut errors);
    }
    errors
}

fn validate_policy_types(types: &[String], errors: &mut Vec<FieldError>) {
    if types.len() > 2 {
        errors.push(FieldError::TooManyPolicyTypes { path: "spec.policyTypes".into(), count: types.len() });
        return;
    }
    for (i, value) in types.iter().enumerate() {
        let path = format!("spec.policyTypes[{i}]");
        if value != "Ingress" && value != "Egress" {
            errors.push(FieldError::UnsupportedPolicyType { path, value: value.clone() });
        } else if types[..i].contains(value) {
            errors.push(FieldError::DuplicatePolicyType { path, value: value.clone() });
        }
    }
}

fn validate_port(port: &NetworkPolicyPort, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(protocol) = &port.protocol
        && !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP")
    {
        errors.push(FieldError::UnsupportedProtocol { path: format!("{path}.protocol"), protocol: protocol.clone() });
    }
    match (&port.port, port.end_port) {
        (Some(IntOrString::Int(number)), end_port) => {
            if !(1..=65535).contains(number) {
                errors.push(FieldError::PortOutOfRange { path: format!("{path}.port"), port: *number });
            }
            if let Some(end_port) = end_port {
                if end_port < *number {
                    errors.push(FieldError::EndPortBelowPort {
                        path: format!("{path}.endPort"),
                        port: *number,
                        end_port,
                    });
                }
                if !(1..=65535).contains(&end_port) {
                    errors.push(FieldError::PortOutOfRange { path: format!("{path}.endPort"), port: end_port });
                }
            }
        }
        (Some(IntOrString::String(name)), end_port) => {
            if end_port.is_some() {
                errors.push(FieldError::EndPortWithNamedPort { path: format!("{path}.endPort") });
            }
            for reason in port_name_errors(name) {
                errors.push(FieldError::InvalidPortName {
                    path: format!("{path}.port"),
                    name: name.clone(),
                    reason: reason.into(),
                });
            }
        }
        (None, Some(_)) => errors.push(FieldError::EndPortWithoutPort { path: format!("{path}.endPort") }),
        (None, None) => {}
    }
}

fn validate_peer(peer: &NetworkPolicyPeer, path: &str, errors: &mut Vec<FieldError>) {
    let mut kinds = 0;
    if let Some(selector) = &peer.pod_selector {
        kinds += 1;
        validate_selector(selector, &format!("{path}.podSelector"), errors);
    }
    if let Some(selector) = &peer.namespace_selector {
        kinds += 1;
        validate_selector(selector, &format!("{path}.namespaceSelector"), errors);
    }
    if let Some(block) = &peer.ip_block {
        kinds += 1;
        validate_ip_block(block, &format!("{path}.ipBlock"), errors);
    }
    if kinds == 0 {
        errors.push(FieldError::EmptyPeer { path: path.into() });
    } else if kinds > 1 && peer.ip_block.is_some() {
        errors.push(FieldError::IpBlockWithSelector { path: path.into() });
    }
}

fn validate_ip_block(block: &IPBlock, path: &str, errors: &mut Vec<FieldError>) {
    if block.cidr.is_empty() {
        errors.push(FieldError::Required { path: format!("{path}.cidr") });
        return;
    }
    let cidr = match parse_cidr(&block.cidr) {
        Ok(cidr) => cidr,
        Err(source) => {
            errors.push(FieldError::InvalidCidr { path: format!("{path}.cidr"), source });
            return;
        }
    };
    for (i, except) in block.except.iter().flatten().enumerate() {
        let except_path = format!("{path}.except[{i}]");
        match parse_cidr(except) {
            Err(source) => errors.push(FieldError::InvalidCidr { path: except_path, source }),
            Ok(inner) if !cidr.strictly_contains(&inner) => errors.push(FieldError::ExceptNotInsideCidr {
                path: except_path,
                except: except.clone(),
                cidr: block.cidr.clone(),
            }),
            Ok(_) => {}
        }
    }
}

fn validate_selector(selector: &LabelSelector, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(labels) = &selector.match_labels {
        validate_labels(labels, &format!("{path}.matchLabels"), errors);
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        validate_requirement(requirement, &format!("{path}.matchExpressions[{i}]"), errors);
    }
}

fn validate_requirement(requirement: &LabelSelectorRequirement, path: &str, errors: &mut Vec<FieldError>) {
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => {
            errors.push(FieldError::ValuesRequired { path: format!("{path}.values") })
        }
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            errors.push(FieldError::ValuesForbidden { path: format!("{path}.values") })
        }
        "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
        other => errors.push(FieldError::InvalidOperator { path: format!("{path}.operator"), operator: other.into() }),
    }
    for reason in qualified_name_errors(&requirement.key) {
        errors.push(FieldError::InvalidLabelKey { path: format!("{path}.key"), key: requirement.key.clone(), reason });
    }
    for (i, value) in values.iter().enumerate() {
        if let Some(reason) = label_value_error(value) {
            errors.push(FieldError::InvalidLabelValue {
                path: format!("{path}.values[{i}]"),
                value: value.clone(),
                reason: reason.into(),
            });
        }
    }
}

/// `ValidateLabels`: every key a qualified name, every value a label value; the path is the map's own
/// (as upstream), the key is named in the message.
fn validate_labels(labels: &BTreeMap<String, String>, path: &str, errors: &mut Vec<FieldError>) {
    for (key, value) in labels {
        for reason in qualified_name_errors(key) {
            errors.push(FieldError::InvalidLabelKey { path: path.into(), key: key.clone(), reason });
        }
        if let Some(reason) = label_value_error(value) {
            errors.push(FieldError::InvalidLabelValue {
                path: path.into(),
                value: value.clone(),
                reason: reason.into(),
            });
        }
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
#[must_use]
pub fn is_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
#[must_use]
pub fn is_dns1123_subdomain(value: &str) -> bool {
    value.len() <= 253
        && value.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the name part of a qualified name and a non-empty label value.
fn is_qualified_name_part(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// `IsQualifiedName`: `[prefix/]name`, the prefix a DNS-1123 subdomain, the name at most 63 characters of
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn qualified_name_errors(value: &str) -> Vec<String> {
    const NAME_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', start and end with an \
                             alphanumeric character, and be at most 63 characters";
    let mut reasons = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                reasons.push("prefix part must be non-empty".to_owned());
            } else if !is_dns1123_subdomain(prefix) {
                reasons.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
            }
            *name
        }
        _ => {
            reasons.push(format!(
                "a qualified name {NAME_RULE}, with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return reasons;
        }
    };
    if name.is_empty() {
        reasons.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 || !is_qualified_name_part(name) {
        reasons.push(format!("name part {NAME_RULE}"));
    }
    reasons
}

/// `IsValidLabelValue`: empty, or at most 63 characters shaped like a qualified name's name part.
fn label_value_error(value: &str) -> Option<&'static str> {
    (!value.is_empty() && (value.len() > 63 || !is_qualified_name_part(value))).then_some(
        "must be empty or at most 63 alphanumeric characters, '-', '_' or '.', starting and ending with an \
         alphanumeric character",
    )
}

/// `IsValidPortName` (IANA_SVC_NAME): at most 15 characters of `a-z`, `0-9`, `-`, at least one letter, no
/// `--`, no leading or trailing `-`.
fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if name.len() > 15 {
        reasons.push("must be no more than 15 characters");
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        reasons.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    } else if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        reasons.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        reasons.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        reasons.push("must not begin or end with a hyphen");
    }
    reasons
}

#[cfg(test)]
mod tests;
