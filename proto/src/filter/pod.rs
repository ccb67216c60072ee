//! The pod criterion, as Hubble's: `[namespace/]pod-name-prefix`. Either side is a pod whose name
//! starts with the prefix, in that namespace when one is given (`kube-system/` is every pod of
//! `kube-system`), in any namespace when none is (`web` or `/web`).
//!
//! Compiled, prefixes are kept per namespace in a sorted vector from which every prefix that another
//! one already covers is removed: the only candidate for a name is then the greatest prefix not after
//! it, found by binary search, so a lookup costs a hash and O(log n) comparisons for n prefixes. (A
//! trie would give O(name length), but pod name filters are few and short; the vector is simpler.)

use std::{collections::HashMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ValueError, Values, sides};
use crate::flow::{Flow, Peer};

/// `[namespace/]pod-name-prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodSelector {
    /// `None`: any namespace.
    pub namespace: Option<String>,
    /// Empty only with a namespace: every pod of it.
    pub name_prefix: String,
}

impl PodSelector {
    /// Whether the pod `namespace/name` is selected. A side that is not a pod (empty name) never is.
    pub fn selects(&self, namespace: &str, name: &str) -> bool {
        !name.is_empty()
            && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && name.starts_with(&self.name_prefix)
    }
}

impl FromStr for PodSelector {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = |problem| ValueError::Pod { value: s.to_owned(), problem };
        let (namespace, name_prefix) = match s.split_once('/') {
            Some(("", prefix)) => (None, prefix),
            Some((ns, prefix)) => (Some(ns), prefix),
            None => (None, s),
        };
        if s.contains(char::is_whitespace) {
            return Err(bad("no spaces allowed"));
        }
        if name_prefix.contains('/') {
            return Err(bad("more than one `/`"));
        }
        if namespace.is_none() && name_prefix.is_empty() {
            return Err(bad("neither a namespace nor a name"));
        }
        Ok(Self { namespace: namespace.map(str::to_owned), name_prefix: name_prefix.to_owned() })
    }
}

impl fmt::Display for PodSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name_prefix),
            None => f.write_str(&self.name_prefix),
        }
    }
}

/// On the wire and in files: the text, `default/web` (protocol 1.0 sent exact `namespace/name`s,
/// which read back as prefixes).
impl Serialize for PodSelector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PodSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::text::deserialize(deserializer, "a pod: [namespace/]pod-name-prefix")
    }
}

impl Values<Peer> for [PodSelector] {
    fn is_empty(&self) -> bool {
        <[PodSelector]>::is_empty(self)
    }

    fn contains(&self, peer: &Peer) -> bool {
        self.iter().any(|s| s.selects(&peer.namespace, &peer.pod_name))
    }
}

/// Name prefixes, sorted, none a prefix of another.
#[derive(Clone, Debug, Default)]
struct Prefixes(Vec<String>);

impl Prefixes {
    fn insert(&mut self, prefix: &str) {
        if let Err(at) = self.0.binary_search_by(|p| p.as_str().cmp(prefix)) {
            self.0.insert(at, prefix.to_owned());
        }
    }

    /// Drops every prefix that starts with an earlier one: after sorting, what a prefix covers
    /// follows it directly.
    fn minimize(&mut self) {
        let mut kept: Vec<String> = Vec::with_capacity(self.0.len());
        for p in std::mem::take(&mut self.0) {
            if !kept.last().is_some_and(|k| p.starts_with(k.as_str())) {
                kept.push(p);
            }
        }
        self.0 = kept;
    }

    /// Whether some prefix starts `name`: only the greatest prefix not after `name` can.
    fn covers(&self, name: &str) -> bool {
        let after = self.0.partition_point(|p| p.as_str() <= name);
        after > 0 && name.starts_with(self.0[after - 1].as_str())
    }
}

/// Compiled pod selectors: prefixes by namespace, and prefixes for any namespace.
#[derive(Clone, Debug, Default)]
pub struct PodIndex {
    by_namespace: HashMap<String, Prefixes>,
    any_namespace: Prefixes,
    len: usize,
}

impl<'a> FromIterator<&'a PodSelector> for PodIndex {
    fn from_iter<I: IntoIterator<Item = &'a PodSelector>>(selectors: I) -> Self {
        let mut index = PodIndex::default();
        for s in selectors {
            let prefixes = match &s.namespace {
                Some(ns) => index.by_namespace.entry(ns.clone()).or_default(),
                None => &mut index.any_namespace,
            };
            prefixes.insert(&s.name_prefix);
            index.len += 1;
        }
        index.any_namespace.minimize();
        index.by_namespace.values_mut().for_each(Prefixes::minimize);
        index
    }
}

impl Values<Peer> for PodIndex {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn contains(&self, peer: &Peer) -> bool {
        let name = peer.pod_name.as_str();
        !name.is_empty()
            && (self.any_namespace.covers(name)
                || self.by_namespace.get(&peer.namespace).is_some_and(|p| p.covers(name)))
    }
}

pub(super) fn matches(pods: &(impl Values<Peer> + ?Sized), flow: &Flow) -> bool {
    pods.is_empty() || sides(flow).iter().any(|p| pods.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::tests::peer;

    fn selectors(texts: &[&str]) -> Vec<PodSelector> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn written_as_hubble_does() {
        let p = |t: &str| t.parse::<PodSelector>();
        assert_eq!(
            p("default/web-"),
            Ok(PodSelector { namespace: Some("default".into()), name_prefix: "web-".into() })
        );
        assert_eq!(p("web"), Ok(PodSelector { namespace: None, name_prefix: "web".into() }));
        assert_eq!(p("/web"), p("web"));
        assert_eq!(
            p("kube-system/"),
            Ok(PodSelector { namespace: Some("kube-system".into()), name_prefix: String::new() })
        );
        for bad in ["", "/", "a/b/c", "a b"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            p("a/b/c").unwrap_err().to_string(),
            "pod \"a/b/c\": more than one `/`; write [namespace/]pod-name-prefix, e.g. default/web- or web"
        );
        for text in ["default/web-", "web", "kube-system/"] {
            assert_eq!(p(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn prefixes_in_a_namespace_or_any() {
        let cases = [
            (&["default/web"][..], "default", "web-7d9f", true),
            (&["default/web"][..], "other", "web", false),
            (&["web"][..], "other", "web", true),
            (&["web"][..], "other", "api", false),
            (&["default/"][..], "default", "anything", true),
            (&["default/"][..], "default", "", false),
            (&["x/a", "y/"][..], "y", "b", true),
            (&["x/a", "y/"][..], "x", "b", false),
        ];
        for (texts, ns, name, want) in cases {
            let list = selectors(texts);
            let index: PodIndex = list.iter().collect();
            let side = peer(1, ns, name, &[]);
            assert_eq!(Values::contains(list.as_slice(), &*side), want, "{texts:?} {ns}/{name}");
            assert_eq!(index.contains(&side), want, "{texts:?} {ns}/{name} compiled");
        }
    }

    #[test]
    fn compiled_prefixes_answer_as_the_list_for_many_names() {
        let list = selectors(&["a", "ab", "abc-", "b-1", "b-10", "c", "ns/x", "ns/xy", "ns/", "zz"]);
        let index: PodIndex = list.iter().collect();
        assert_eq!(index.any_namespace.0, ["a", "b-1", "c", "zz"], "covered prefixes removed");
        for ns in ["ns", "other"] {
            for name in
                ["", "a", "ab", "abd", "b", "b-", "b-1", "b-2", "b-100", "ba", "c", "cz", "x", "xyz", "z", "zz9"]
            {
                let side = peer(1, ns, name, &[]);
                assert_eq!(index.contains(&side), Values::contains(list.as_slice(), &*side), "{ns}/{name}");
            }
        }
    }
}
