//! The policy criterion: a NetworkPolicy that decided the flow, `[namespace/]name`. It matches the
//! flow's policy attribution whichever way it went: the policies that allowed the flow, and for a
//! default deny (or its audit) the policies that isolate the endpoint (Hubble's `*_denied_by`).
//! Without a namespace, a policy of that name in any namespace.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ValueError, Values};
use crate::flow::{Flow, PolicyAttribution, PolicyName};

/// `[namespace/]name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicySelector {
    /// `None`: any namespace.
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicySelector {
    pub fn selects(&self, policy: &PolicyName) -> bool {
        self.name == policy.name && self.namespace.as_ref().is_none_or(|ns| *ns == policy.namespace)
    }
}

impl FromStr for PolicySelector {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = |problem| ValueError::Policy { value: s.to_owned(), problem };
        let (namespace, name) = match s.split_once('/') {
            Some(("", name)) => (None, name),
            Some((ns, name)) => (Some(ns), name),
            None => (None, s),
        };
        if s.contains(char::is_whitespace) {
            return Err(bad("no spaces allowed"));
        }
        if name.contains('/') {
            return Err(bad("more than one `/`"));
        }
        if name.is_empty() {
            return Err(bad("no name"));
        }
        Ok(Self { namespace: namespace.map(str::to_owned), name: name.to_owned() })
    }
}

impl fmt::Display for PolicySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Serialize for PolicySelector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PolicySelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::text::deserialize(deserializer, "a policy: [namespace/]name")
    }
}

impl Values<PolicyName> for [PolicySelector] {
    fn is_empty(&self) -> bool {
        <[PolicySelector]>::is_empty(self)
    }

    fn contains(&self, policy: &PolicyName) -> bool {
        self.iter().any(|s| s.selects(policy))
    }
}

/// Compiled policy selectors: names by namespace, and names in any namespace.
#[derive(Clone, Debug, Default)]
pub struct PolicyIndex {
    by_namespace: HashMap<String, HashSet<String>>,
    any_namespace: HashSet<String>,
    len: usize,
}

impl<'a> FromIterator<&'a PolicySelector> for PolicyIndex {
    fn from_iter<I: IntoIterator<Item = &'a PolicySelector>>(selectors: I) -> Self {
        let mut index = PolicyIndex::default();
        for s in selectors {
            let names = match &s.namespace {
                Some(ns) => index.by_namespace.entry(ns.clone()).or_default(),
                None => &mut index.any_namespace,
            };
            names.insert(s.name.clone());
            index.len += 1;
        }
        index
    }
}

impl Values<PolicyName> for PolicyIndex {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn contains(&self, policy: &PolicyName) -> bool {
        self.any_namespace.contains(&policy.name)
            || self.by_namespace.get(&policy.namespace).is_some_and(|names| names.contains(&policy.name))
    }
}

/// The policies that decided the flow: allowed it, or isolate the endpoint it was denied at.
fn deciding(flow: &Flow) -> &[PolicyName] {
    match &flow.policy {
        Some(PolicyAttribution::AllowedBy(names)) => names,
        Some(PolicyAttribution::DefaultDeny { isolated_by }) => isolated_by,
        None => &[],
    }
}

pub(super) fn matches(policies: &(impl Values<PolicyName> + ?Sized), flow: &Flow) -> bool {
    policies.is_empty() || deciding(flow).iter().any(|p| policies.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hubble::fixtures;

    fn selectors(texts: &[&str]) -> Vec<PolicySelector> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn written_as_namespace_and_name() {
        let p = |t: &str| t.parse::<PolicySelector>();
        assert_eq!(p("x/deny-all"), Ok(PolicySelector { namespace: Some("x".into()), name: "deny-all".into() }));
        assert_eq!(p("deny-all"), Ok(PolicySelector { namespace: None, name: "deny-all".into() }));
        assert_eq!(p("/deny-all"), p("deny-all"));
        for bad in ["", "x/", "/", "a/b/c", "a b"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert!(p("x/").unwrap_err().to_string().starts_with("policy \"x/\": no name; write [namespace/]name"));
        assert_eq!(p("x/deny-all").unwrap().to_string(), "x/deny-all");
    }

    #[test]
    fn allowing_and_isolating_policies_both_match() {
        let cases = [
            (fixtures::verdict_allowed(), &["default/network-policy-walkthrough-db"][..], true),
            (fixtures::verdict_allowed(), &["network-policy-walkthrough-db"][..], true),
            (fixtures::verdict_allowed(), &["other/network-policy-walkthrough-db"][..], false),
            (fixtures::verdict_denied(), &["default/default-deny-ingress-policy"][..], true),
            (fixtures::verdict_audit(), &["default-deny-ingress-policy"][..], true),
            (fixtures::verdict_denied(), &["default/network-policy-walkthrough-db"][..], false),
            (fixtures::trace_egress(), &["default/network-policy-walkthrough-db"][..], false),
        ];
        for (flow, texts, want) in cases {
            let list = selectors(texts);
            let index: PolicyIndex = list.iter().collect();
            assert_eq!(matches(list.as_slice(), &flow), want, "{texts:?} on {:?}", flow.policy);
            assert_eq!(matches(&index, &flow), want, "{texts:?} compiled");
        }
        assert!(matches(&PolicyIndex::default(), &fixtures::trace_egress()), "no policy named: any flow");
    }
}
