//! The label criterion: either side's labels satisfy a Kubernetes-style selector (requirements
//! separated by commas, all of which must hold: `key=value`, `key==value`, `key!=value`, `key`,
//! `!key`, `key in (a,b)`, `key notin (a,b)`).
//!
//! Labels carry a source as Cilium writes them (`k8s:app=web`, `reserved:world`, `cidr:10.0.0.0/8`);
//! a label written without one (`app=web`, as the agent keeps pod labels) is a `k8s` label. A selector
//! key with a source (`k8s:app`, `reserved:world`) matches that source only; without one (`app`),
//! any source, as Hubble's `--label`. A pod also has the label with its namespace that Cilium gives
//! it (`k8s:io.kubernetes.pod.namespace=default`). So a selector answers the same on a flow and on its
//! Hubble JSON, which writes labels that way.

use std::{fmt, str::FromStr};

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, MapAccess, Visitor, value::MapAccessDeserializer},
};

use super::{Values, sides};
use crate::flow::{Flow, Peer};

/// A parsed selector. On the wire: `{requirements: [...]}`; in files and on the command line: its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
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

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Requirement::In { key, .. }
            | Requirement::NotIn { key, .. }
            | Requirement::Exists { key }
            | Requirement::DoesNotExist { key } => key,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
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

fn parse_set(
    key: &str,
    rest: &str,
    err: &dyn Fn(&str) -> SelectorError,
) -> Result<(String, Vec<String>), SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| err("a set must be written in parentheses, e.g. `tier in (web,db)`"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        return Err(err("a set needs at least one value"));
    }
    Ok((key.to_owned(), values))
}

/// A label as `(source, key, value)`; `k8s` when it has no source, an empty value when it has none.
fn label_parts(label: &str) -> (&str, &str, &str) {
    let (key, value) = label.split_once('=').unwrap_or((label, ""));
    let (source, key) = key.split_once(':').unwrap_or(("k8s", key));
    (source, key, value)
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
            let key = requirement.key();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(err(&format!("invalid key in {part:?}")));
            }
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether labels given as `[source:]key=value` strings satisfy every requirement.
    pub fn matches(&self, labels: &[String]) -> bool {
        self.matches_parts(labels.iter().map(|l| label_parts(l)))
    }

    /// Whether a side's labels satisfy every requirement: its `labels`, and for a pod the label
    /// with its namespace ([`Peer::NAMESPACE_LABEL`]) that Cilium gives it and the JSON shows.
    pub fn matches_peer(&self, peer: &Peer) -> bool {
        let namespace = peer.is_pod().then_some(("k8s", Peer::NAMESPACE_LABEL, peer.namespace.as_str()));
        self.matches_parts(peer.labels.iter().map(|l| label_parts(l)).chain(namespace))
    }

    fn matches_parts<'a>(&self, labels: impl Iterator<Item = (&'a str, &'a str, &'a str)> + Clone) -> bool {
        self.requirements.iter().all(|r| {
            let wanted = r.key();
            let (source, key) = match wanted.split_once(':') {
                Some((source, key)) => (Some(source), key),
                None => (None, wanted),
            };
            let mut values = labels.clone().filter(|(s, k, _)| *k == key && source.is_none_or(|source| source == *s));
            match r {
                Requirement::In { values: set, .. } => values.any(|(_, _, v)| set.iter().any(|x| x == v)),
                Requirement::NotIn { values: set, .. } => !values.any(|(_, _, v)| set.iter().any(|x| x == v)),
                Requirement::Exists { .. } => values.next().is_some(),
                Requirement::DoesNotExist { .. } => values.next().is_none(),
            }
        })
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, SelectorError> {
        Self::parse(s)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::In { key, values } if values.len() == 1 => write!(f, "{key}={}", values[0])?,
                Requirement::NotIn { key, values } if values.len() == 1 => write!(f, "{key}!={}", values[0])?,
                Requirement::In { key, values } => write!(f, "{key} in ({})", values.join(","))?,
                Requirement::NotIn { key, values } => write!(f, "{key} notin ({})", values.join(","))?,
                Requirement::Exists { key } => f.write_str(key)?,
                Requirement::DoesNotExist { key } => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

/// The wire form (a map), unchanged since protocol 1.0.
impl Serialize for LabelSelector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        LabelSelector::serialize(self, serializer)
    }
}

/// The text (files, flags), or the wire's map.
struct SelectorVisitor;

impl<'de> Visitor<'de> for SelectorVisitor {
    type Value = LabelSelector;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a label selector such as `app=db,tier in (a,b)`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<LabelSelector, E> {
        LabelSelector::parse(v).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LabelSelector, A::Error> {
        LabelSelector::deserialize(MapAccessDeserializer::new(map))
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SelectorVisitor)
    }
}

impl Values<Peer> for [LabelSelector] {
    fn is_empty(&self) -> bool {
        <[LabelSelector]>::is_empty(self)
    }

    fn contains(&self, peer: &Peer) -> bool {
        self.iter().any(|s| s.matches_peer(peer))
    }
}

pub(super) fn matches(selectors: &(impl Values<Peer> + ?Sized), flow: &Flow) -> bool {
    selectors.is_empty() || sides(flow).iter().any(|p| selectors.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        filter::tests::{flow, peer},
        flow::Verdict,
    };

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
        assert_eq!(
            LabelSelector::parse("a in b").unwrap_err().to_string(),
            "label selector \"a in b\": a set must be written in parentheses, e.g. `tier in (web,db)`"
        );
    }

    #[test]
    fn sources_as_cilium_writes_them() {
        let pod: Vec<String> = vec!["app=web".into()];
        let cilium: Vec<String> = vec!["k8s:app=web".into()];
        let world: Vec<String> = vec!["reserved:world".into()];
        for labels in [&pod, &cilium] {
            let m = |s: &str| LabelSelector::parse(s).unwrap().matches(labels);
            assert!(m("app=web") && m("k8s:app=web") && m("k8s:app") && !m("container:app"), "{labels:?}");
        }
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&world);
        assert!(m("reserved:world") && m("world") && !m("k8s:world") && !m("app"));
    }

    #[test]
    fn text_round_trips() {
        for text in ["app=db", "app!=db", "tier in (a,b)", "tier notin (a,b)", "app", "!app", "k8s:app=db,tier"] {
            assert_eq!(text.parse::<LabelSelector>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn read_from_text_or_from_the_wire_map() {
        let s = LabelSelector::parse("app=db,!debug").unwrap();
        let wire = rmp_serde::to_vec_named(&s).unwrap();
        assert_eq!(rmp_serde::from_slice::<LabelSelector>(&wire).unwrap(), s);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"requirements": [{"In": {"key": "app", "values": ["db"]}}, {"DoesNotExist": {"key": "debug"}}]})
        );
        assert_eq!(serde_json::from_value::<LabelSelector>(json).unwrap(), s);
        assert_eq!(serde_json::from_str::<LabelSelector>("\"app=db,!debug\"").unwrap(), s);
        let e = serde_json::from_str::<LabelSelector>("\"a in b\"").unwrap_err();
        assert!(e.to_string().starts_with("label selector \"a in b\""), "{e}");
    }

    #[test]
    fn either_side() {
        let mut f = flow(1, 2, Verdict::Dropped, 5432);
        let tier = [LabelSelector::parse("tier=db").unwrap()];
        assert!(matches(tier.as_slice(), &f), "the destination");
        f.destination = peer(2, "default", "web", &["component=web"]);
        assert!(!matches(tier.as_slice(), &f));
        let namespace = [LabelSelector::parse("k8s:io.kubernetes.pod.namespace=default").unwrap()];
        assert!(matches(namespace.as_slice(), &f), "the namespace label of a pod");
        f.source = peer(0, "", "", &["reserved:world"]);
        f.destination = peer(0, "", "", &["cidr:10.0.0.0/8"]);
        assert!(!matches(namespace.as_slice(), &f), "not a pod");
    }
}
