//! The verdict criterion, and how verdicts are written: `allowed`/`allow`, `denied`/`deny`, `audit`,
//! or Hubble's `FORWARDED`, `DROPPED`, `AUDIT`; in any case.

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::{ValueError, Values};
use crate::flow::{Flow, Verdict};

impl FromStr for Verdict {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        // Compared in place: this also reads every flow off the wire, where a copy per flow showed.
        let is = |names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(s));
        if is(&["forwarded", "allowed", "allow"]) {
            Ok(Verdict::Forwarded)
        } else if is(&["dropped", "denied", "deny"]) {
            Ok(Verdict::Dropped)
        } else if is(&["audit"]) {
            Ok(Verdict::Audit)
        } else {
            Err(ValueError::Verdict { value: s.to_owned() })
        }
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::text::deserialize(deserializer, "a verdict: allowed, denied or audit")
    }
}

pub(super) fn matches(verdicts: &(impl Values<Verdict> + ?Sized), flow: &Flow) -> bool {
    verdicts.is_empty() || verdicts.contains(&flow.verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::tests::flow;

    #[test]
    fn spellings() {
        for (text, v) in [
            ("allowed", Verdict::Forwarded),
            ("allow", Verdict::Forwarded),
            ("FORWARDED", Verdict::Forwarded),
            ("forwarded", Verdict::Forwarded),
            ("denied", Verdict::Dropped),
            ("Deny", Verdict::Dropped),
            ("DROPPED", Verdict::Dropped),
            ("audit", Verdict::Audit),
            ("AUDIT", Verdict::Audit),
        ] {
            assert_eq!(text.parse::<Verdict>(), Ok(v), "{text}");
            assert_eq!(v.hubble_name().parse::<Verdict>(), Ok(v));
        }
        let e = "maybe".parse::<Verdict>().unwrap_err();
        assert!(e.to_string().starts_with("unknown verdict \"maybe\" (expected allowed, denied or audit"), "{e}");
    }

    #[test]
    fn any_of_the_verdicts() {
        let f = flow(1, 2, Verdict::Audit, 80);
        assert!(matches(&[Verdict::Dropped, Verdict::Audit][..], &f));
        assert!(!matches(&[Verdict::Forwarded][..], &f));
    }
}
