//! Reading a [`FlowFilter`]: the same keys and value spellings from the wire (MessagePack) and from
//! files written by people (the verdict log's YAML), so a filter means the same wherever it comes
//! from. They differ in one thing only: the wire ignores keys it does not know (a newer client's
//! additions, as the protocol's minor versions promise), a file refuses them, as a typo would
//! otherwise silently widen the filter ([`StrictFilter`]). Keys have aliases: the singular of every
//! list (`verdict`, `pod`, ...), `type` for `event_types`, and `from`/`to` as on the command line.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, Visitor},
};

use super::FlowFilter;

/// The keys, in the order of the fields; aliases are in [`field_index`].
const FIELDS: &[&str] = &[
    "related_to",
    "from_endpoint",
    "to_endpoint",
    "event_types",
    "verdicts",
    "namespaces",
    "pods",
    "labels",
    "ports",
    "protocols",
    "policies",
];

fn field_index(key: &str) -> Option<usize> {
    let canonical = match key {
        "from" => "from_endpoint",
        "to" => "to_endpoint",
        "type" | "types" | "event_type" => "event_types",
        "verdict" => "verdicts",
        "namespace" => "namespaces",
        "pod" => "pods",
        "label" => "labels",
        "port" => "ports",
        "protocol" => "protocols",
        "policy" => "policies",
        other => other,
    };
    FIELDS.iter().position(|f| *f == canonical)
}

struct FilterVisitor {
    /// Refuse unknown keys.
    strict: bool,
}

/// Reads the value of field `index` into `slot`, once.
fn take<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    seen: &mut u32,
    index: usize,
    slot: &mut T,
) -> Result<(), A::Error> {
    if *seen & (1 << index) != 0 {
        return Err(de::Error::duplicate_field(FIELDS[index]));
    }
    *seen |= 1 << index;
    *slot = map.next_value()?;
    Ok(())
}

impl<'de> Visitor<'de> for FilterVisitor {
    type Value = FlowFilter;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a flow filter (a map of criteria such as `verdicts: [denied]`)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FlowFilter, A::Error> {
        let mut f = FlowFilter::default();
        let mut seen = 0u32;
        while let Some(key) = map.next_key::<String>()? {
            let Some(index) = field_index(&key) else {
                if self.strict {
                    return Err(de::Error::unknown_field(&key, FIELDS));
                }
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let seen = &mut seen;
            match index {
                0 => take(&mut map, seen, index, &mut f.related_to)?,
                1 => take(&mut map, seen, index, &mut f.from_endpoint)?,
                2 => take(&mut map, seen, index, &mut f.to_endpoint)?,
                3 => take(&mut map, seen, index, &mut f.event_types)?,
                4 => take(&mut map, seen, index, &mut f.verdicts)?,
                5 => take(&mut map, seen, index, &mut f.namespaces)?,
                6 => take(&mut map, seen, index, &mut f.pods)?,
                7 => take(&mut map, seen, index, &mut f.labels)?,
                8 => take(&mut map, seen, index, &mut f.ports)?,
                9 => take(&mut map, seen, index, &mut f.protocols)?,
                10 => take(&mut map, seen, index, &mut f.policies)?,
                _ => unreachable!("FIELDS has {} entries", FIELDS.len()),
            }
        }
        Ok(f)
    }
}

/// From the wire: unknown keys are ignored.
impl<'de> Deserialize<'de> for FlowFilter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("FlowFilter", FIELDS, FilterVisitor { strict: false })
    }
}

/// A [`FlowFilter`] written by a person (a configuration file): the same keys and values, but an
/// unknown key is an error that names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StrictFilter(pub FlowFilter);

impl<'de> Deserialize<'de> for StrictFilter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("FlowFilter", FIELDS, FilterVisitor { strict: true }).map(StrictFilter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{EventType, Protocol, Verdict};

    #[test]
    fn every_field_has_a_key_and_the_model_round_trips() {
        let f: FlowFilter = serde_json::from_str(
            r#"{"related_to": [1], "from": [2], "to_endpoint": [3], "type": ["drop"], "verdict": ["DROPPED"],
                "namespace": ["x"], "pod": ["x/a"], "label": ["app=db"], "port": [80], "protocol": ["udp"],
                "policy": ["x/deny-all"]}"#,
        )
        .unwrap();
        assert_eq!(
            (f.related_to.as_slice(), f.from_endpoint.as_slice(), f.to_endpoint.as_slice()),
            (&[1][..], &[2][..], &[3][..])
        );
        assert_eq!(
            (f.event_types.as_slice(), f.verdicts.as_slice()),
            (&[EventType::Drop][..], &[Verdict::Dropped][..])
        );
        assert_eq!((f.ports.as_slice(), f.protocols.as_slice()), (&[80][..], &[Protocol::Udp][..]));
        assert_eq!(f.pods[0].to_string(), "x/a");
        assert_eq!(f.labels[0].to_string(), "app=db");
        assert_eq!(f.policies[0].to_string(), "x/deny-all");
        assert!(FIELDS.iter().all(|k| field_index(k).is_some()));
        let wire = rmp_serde::to_vec_named(&f).unwrap();
        assert_eq!(rmp_serde::from_slice::<FlowFilter>(&wire).unwrap(), f);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<FlowFilter>(&json).unwrap(), f);
    }

    #[test]
    fn the_wire_ignores_unknown_keys_a_file_refuses_them() {
        let text = r#"{"verdicts": ["denied"], "source_fqdn": ["example.com"]}"#;
        let f: FlowFilter = serde_json::from_str(text).unwrap();
        assert_eq!(f.verdicts, [Verdict::Dropped]);
        let e = serde_json::from_str::<StrictFilter>(text).unwrap_err();
        assert!(e.to_string().starts_with("unknown field `source_fqdn`, expected one of `related_to`"), "{e}");
    }

    #[test]
    fn a_key_and_its_alias_together_are_a_duplicate() {
        let e = serde_json::from_str::<FlowFilter>(r#"{"pod": ["a"], "pods": ["b"]}"#).unwrap_err();
        assert!(e.to_string().starts_with("duplicate field `pods`"), "{e}");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let e = serde_json::from_str::<FlowFilter>(r#"{"verdicts": ["maybe"]}"#).unwrap_err();
        assert!(e.to_string().starts_with("unknown verdict \"maybe\""), "{e}");
        let e = serde_json::from_str::<FlowFilter>(r#"{"ports": [70000]}"#).unwrap_err();
        assert!(e.to_string().contains("70000"), "{e}");
    }
}
