//! The protocol criterion, and how protocols are written: `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` in any
//! case, and Hubble's `ICMPv4` (its `l4` key). On the wire a protocol is its name, or `{"OTHER": number}`
//! for another IP protocol.

use std::{fmt, str::FromStr};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

use super::{ValueError, Values};
use crate::flow::{Flow, Protocol};

impl FromStr for Protocol {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        // Compared in place: this also reads every flow off the wire, where a copy per flow showed.
        [
            ("tcp", Protocol::Tcp),
            ("udp", Protocol::Udp),
            ("sctp", Protocol::Sctp),
            ("icmp", Protocol::Icmp),
            ("icmpv4", Protocol::Icmp),
            ("icmpv6", Protocol::Icmpv6),
        ]
        .into_iter()
        .find_map(|(name, protocol)| name.eq_ignore_ascii_case(s).then_some(protocol))
        .ok_or_else(|| ValueError::Protocol { value: s.to_owned() })
    }
}

/// A name, or the wire's `{"OTHER": number}`.
struct ProtocolVisitor;

impl<'de> Visitor<'de> for ProtocolVisitor {
    type Value = Protocol;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a protocol: TCP, UDP, SCTP, ICMP or ICMPv6")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Protocol, A::Error> {
        match map.next_entry::<String, u8>()? {
            Some((key, n)) if key == "OTHER" && map.next_key::<de::IgnoredAny>()?.is_none() => Ok(Protocol::Other(n)),
            _ => Err(de::Error::invalid_value(de::Unexpected::Map, &self)),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ProtocolVisitor)
    }
}

pub(super) fn matches(protocols: &(impl Values<Protocol> + ?Sized), flow: &Flow) -> bool {
    protocols.is_empty() || protocols.contains(&flow.protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{filter::tests::flow, flow::Verdict};

    #[test]
    fn spellings() {
        for (text, p) in [
            ("TCP", Protocol::Tcp),
            ("tcp", Protocol::Tcp),
            ("udp", Protocol::Udp),
            ("SCTP", Protocol::Sctp),
            ("ICMP", Protocol::Icmp),
            ("ICMPv4", Protocol::Icmp),
            ("ICMPv6", Protocol::Icmpv6),
            ("icmpv6", Protocol::Icmpv6),
        ] {
            assert_eq!(text.parse::<Protocol>(), Ok(p), "{text}");
        }
        let e = "gre".parse::<Protocol>().unwrap_err();
        assert_eq!(e.to_string(), "unknown protocol \"gre\" (expected TCP, UDP, SCTP, ICMP or ICMPv6)");
    }

    #[test]
    fn wire_form_reads_back() {
        for p in [Protocol::Tcp, Protocol::Icmp, Protocol::Icmpv6, Protocol::Other(47)] {
            let bytes = rmp_serde::to_vec_named(&p).unwrap();
            assert_eq!(rmp_serde::from_slice::<Protocol>(&bytes).unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Protocol>(&json).unwrap(), p, "{json}");
        }
    }

    #[test]
    fn any_of_the_protocols() {
        let f = flow(1, 2, Verdict::Forwarded, 80);
        assert!(matches(&[Protocol::Udp, Protocol::Tcp][..], &f));
        assert!(!matches(&[Protocol::Udp][..], &f));
    }
}
