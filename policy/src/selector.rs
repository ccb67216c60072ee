//! Label selectors (`metav1.LabelSelector`) as Kubernetes evaluates them: `matchLabels` AND every
//! `matchExpressions` requirement; the empty selector `{}` selects everything.
//!
//! What a *missing* selector means depends on where it sits (a missing `namespaceSelector` in a peer means
//! "the policy's namespace"); that is decided in `compile`, not here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a `LabelSelector` cannot be evaluated (validation reports the same problems with field paths).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions key {key:?}: \"{operator}\" is not a valid selector operator")]
    UnknownOperator { key: String, operator: String },
    #[error("matchExpressions key {key:?}: operator {operator} needs at least one value")]
    ValuesRequired { key: String, operator: String },
    #[error("matchExpressions key {key:?}: operator {operator} takes no values")]
    ValuesForbidden { key: String, operator: String },
}

/// Values of an `In` or `NotIn` requirement: sorted, each once. A slice, not a set: most hold one value,
/// and an agent keeps a selector for every policy it compiles (a set's smallest node is about 300 bytes).
type Values = Box<[String]>;

/// One `matchExpressions` requirement (or one `matchLabels` pair, as `In` with a single value).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In { key: String, values: Values },
    NotIn { key: String, values: Values },
    Exists { key: String },
    DoesNotExist { key: String },
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.binary_search(v).is_ok()),
            // NotIn also matches objects that lack the key (labels.Selector semantics).
            Requirement::NotIn { key, values } => labels.get(key).is_none_or(|v| values.binary_search(v).is_err()),
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// A label selector ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that selects everything (`{}`).
    #[must_use]
    pub fn everything() -> Self {
        Self::default()
    }

    /// Converts an API selector; an operator other than In/NotIn/Exists/DoesNotExist, or values that do not
    /// fit the operator, are errors.
    pub fn from_label_selector(selector: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In { key: key.clone(), values: Box::new([value.clone()]) });
        }
        for expression in selector.match_expressions.iter().flatten() {
            let key = expression.key.clone();
            let values: Values =
                expression.values.iter().flatten().cloned().collect::<BTreeSet<String>>().into_iter().collect();
            let operator = expression.operator.as_str();
            let needs_values = matches!(operator, "In" | "NotIn");
            if needs_values && values.is_empty() {
                return Err(SelectorError::ValuesRequired { key, operator: operator.to_owned() });
            }
            if matches!(operator, "Exists" | "DoesNotExist") && !values.is_empty() {
                return Err(SelectorError::ValuesForbidden { key, operator: operator.to_owned() });
            }
            requirements.push(match operator {
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" => Requirement::Exists { key },
                "DoesNotExist" => Requirement::DoesNotExist { key },
                _ => {
                    return Err(SelectorError::UnknownOperator { key, operator: operator.to_owned() });
                }
            });
        }
        Ok(Self { requirements })
    }

    /// Whether this selector selects everything.
    #[must_use]
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with `labels` is selected: every requirement holds.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// Evaluates an API selector directly; an invalid selector selects nothing.
#[must_use]
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::from_label_selector(selector).is_ok_and(|s| s.matches(labels))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn selector(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        let s = LabelSelector::default();
        assert!(matches(&s, &labels(&[])));
        assert!(matches(&s, &labels(&[("pod", "a")])));
        assert!(Selector::from_label_selector(&s).unwrap().is_everything());
    }

    #[test]
    fn empty_match_lists_select_everything() {
        let s = LabelSelector { match_labels: Some(BTreeMap::new()), match_expressions: Some(Vec::new()) };
        assert!(matches(&s, &labels(&[("x", "y")])));
    }

    #[test]
    fn match_labels_requires_every_pair() {
        let s = selector(&[("pod", "a"), ("tier", "web")], vec![]);
        assert!(matches(&s, &labels(&[("pod", "a"), ("tier", "web"), ("extra", "1")])));
        assert!(!matches(&s, &labels(&[("pod", "a")])));
        assert!(!matches(&s, &labels(&[("pod", "b"), ("tier", "web")])));
    }

    #[test]
    fn in_operator() {
        let s = selector(&[], vec![expr("pod", "In", &["a", "b"])]);
        assert!(matches(&s, &labels(&[("pod", "a")])));
        assert!(matches(&s, &labels(&[("pod", "b")])));
        assert!(!matches(&s, &labels(&[("pod", "c")])));
        assert!(!matches(&s, &labels(&[])));
    }

    #[test]
    fn not_in_operator_matches_missing_key() {
        let s = selector(&[], vec![expr("ns", "NotIn", &["x"])]);
        assert!(!matches(&s, &labels(&[("ns", "x")])));
        assert!(matches(&s, &labels(&[("ns", "y")])));
        assert!(matches(&s, &labels(&[])));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let exists = selector(&[], vec![expr("pod", "Exists", &[])]);
        let absent = selector(&[], vec![expr("pod", "DoesNotExist", &[])]);
        assert!(matches(&exists, &labels(&[("pod", "")])));
        assert!(!matches(&exists, &labels(&[])));
        assert!(matches(&absent, &labels(&[("other", "1")])));
        assert!(!matches(&absent, &labels(&[("pod", "a")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = selector(&[("pod", "a")], vec![expr("ns", "In", &["x"])]);
        assert!(matches(&s, &labels(&[("pod", "a"), ("ns", "x")])));
        assert!(!matches(&s, &labels(&[("pod", "a"), ("ns", "y")])));
        assert!(!matches(&s, &labels(&[("pod", "b"), ("ns", "x")])));
    }

    #[test]
    fn unknown_operator_is_an_error_and_selects_nothing() {
        let s = selector(&[], vec![expr("pod", "Equals", &["a"])]);
        assert_eq!(
            Selector::from_label_selector(&s).unwrap_err(),
            SelectorError::UnknownOperator { key: "pod".into(), operator: "Equals".into() }
        );
        assert!(!matches(&s, &labels(&[("pod", "a")])));
    }

    #[test]
    fn in_without_values_is_an_error() {
        let s = selector(&[], vec![expr("pod", "In", &[])]);
        assert!(matches!(Selector::from_label_selector(&s), Err(SelectorError::ValuesRequired { .. })));
    }

    #[test]
    fn exists_with_values_is_an_error() {
        let s = selector(&[], vec![expr("pod", "Exists", &["a"])]);
        assert!(matches!(Selector::from_label_selector(&s), Err(SelectorError::ValuesForbidden { .. })));
    }
}
