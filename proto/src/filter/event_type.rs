//! The event type criterion, and how event types are written: flowgate's names (`policy-verdict`,
//! `drop`, `trace`, `capture`, `agent`), in any case, with `-`, `_` or nothing between words
//! (`PolicyVerdict`, `policy_verdict`), or Cilium's monitor message type numbers as Hubble's
//! `event_type.type` carries them (`5`, `1`, `4`, `3`, `130`).

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::{ValueError, Values};
use crate::{
    flow::{EventType, Flow},
    hubble::message_type,
};

impl FromStr for EventType {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        // Compared in place, without the separators: this also reads every flow off the wire, where
        // the copies per flow showed.
        let by_name = EventType::ALL.into_iter().find(|t| same_word(t.as_str(), s));
        let by_number = || match s.parse::<i32>().ok()? {
            message_type::DROP => Some(EventType::Drop),
            message_type::DEBUG_CAPTURE => Some(EventType::Capture),
            message_type::TRACE => Some(EventType::Trace),
            message_type::POLICY_VERDICT => Some(EventType::PolicyVerdict),
            message_type::AGENT => Some(EventType::Agent),
            _ => None,
        };
        by_name
            .or_else(by_number)
            .or_else(|| same_word("debug-capture", s).then_some(EventType::Capture))
            .ok_or_else(|| ValueError::EventType { value: s.to_owned() })
    }
}

/// Whether `a` and `b` spell the same word: letters compared in any case, `-` and `_` skipped.
fn same_word(a: &str, b: &str) -> bool {
    fn letters(s: &str) -> impl Iterator<Item = u8> + '_ {
        s.bytes().filter(|c| !matches!(c, b'-' | b'_')).map(|c| c.to_ascii_lowercase())
    }
    letters(a).eq(letters(b))
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::text::deserialize(deserializer, "an event type such as policy-verdict, drop or trace")
    }
}

pub(super) fn matches(types: &(impl Values<EventType> + ?Sized), flow: &Flow) -> bool {
    types.is_empty() || types.contains(&flow.event_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{filter::tests::flow, flow::Verdict};

    #[test]
    fn spellings() {
        for (text, t) in [
            ("policy-verdict", EventType::PolicyVerdict),
            ("PolicyVerdict", EventType::PolicyVerdict),
            ("policy_verdict", EventType::PolicyVerdict),
            ("5", EventType::PolicyVerdict),
            ("drop", EventType::Drop),
            ("DROP", EventType::Drop),
            ("1", EventType::Drop),
            ("trace", EventType::Trace),
            ("4", EventType::Trace),
            ("capture", EventType::Capture),
            ("debug-capture", EventType::Capture),
            ("agent", EventType::Agent),
            ("130", EventType::Agent),
        ] {
            assert_eq!(text.parse::<EventType>(), Ok(t), "{text}");
        }
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        }
        let e = "packet".parse::<EventType>().unwrap_err();
        assert!(e.to_string().starts_with("unknown event type \"packet\" (expected"), "{e}");
        assert!("2".parse::<EventType>().is_err());
    }

    #[test]
    fn any_of_the_types() {
        let f = flow(1, 2, Verdict::Forwarded, 80);
        assert!(matches(&[EventType::Drop, EventType::PolicyVerdict][..], &f));
        assert!(!matches(&[EventType::Trace][..], &f));
    }
}
