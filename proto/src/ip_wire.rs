//! How an IP address of either version goes on the wire: exactly as `std`'s `Ipv4Addr` or `Ipv6Addr`
//! would write it (4 or 16 bytes as a tuple in MessagePack, text in human-readable formats). An IPv4
//! address is therefore written as protocol 1.0-1.2 wrote it, so their frames still read and their
//! clients still read IPv4 flows; reading takes either length. Use with `#[serde(with = "ip_wire")]`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{
    Deserializer, Serialize, Serializer,
    de::{self, SeqAccess, Visitor},
};

pub fn serialize<S: Serializer>(ip: &IpAddr, serializer: S) -> Result<S::Ok, S::Error> {
    match ip {
        IpAddr::V4(v4) => v4.serialize(serializer),
        IpAddr::V6(v6) => v6.serialize(serializer),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    deserializer.deserialize_any(IpVisitor)
}

struct IpVisitor;

impl<'de> Visitor<'de> for IpVisitor {
    type Value = IpAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an IP address: text, or 4 or 16 bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<IpAddr, E> {
        v.parse().map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<IpAddr, E> {
        from_octets(v).ok_or_else(|| E::invalid_length(v.len(), &self))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IpAddr, A::Error> {
        let mut octets = [0u8; 16];
        let mut len = 0;
        while let Some(octet) = seq.next_element::<u8>()? {
            if len == octets.len() {
                return Err(de::Error::invalid_length(len + 1, &self));
            }
            octets[len] = octet;
            len += 1;
        }
        from_octets(&octets[..len]).ok_or_else(|| de::Error::invalid_length(len, &self))
    }
}

fn from_octets(octets: &[u8]) -> Option<IpAddr> {
    match octets.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(octets).ok()?))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Holder {
        #[serde(with = "super")]
        ip: IpAddr,
    }

    #[derive(Serialize)]
    struct OldHolder {
        ip: Ipv4Addr,
    }

    #[test]
    fn both_versions_round_trip_and_ipv4_is_written_as_before() {
        for text in ["10.200.0.10", "fd00:10:200::a"] {
            let h = Holder { ip: text.parse().unwrap() };
            let bytes = rmp_serde::to_vec_named(&h).unwrap();
            assert_eq!(rmp_serde::from_slice::<Holder>(&bytes).unwrap(), h);
            let json = serde_json::to_string(&h).unwrap();
            assert_eq!(json, format!("{{\"ip\":\"{text}\"}}"));
            assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), h);
        }
        let old = rmp_serde::to_vec_named(&OldHolder { ip: Ipv4Addr::new(10, 0, 0, 1) }).unwrap();
        let new = rmp_serde::to_vec_named(&Holder { ip: "10.0.0.1".parse().unwrap() }).unwrap();
        assert_eq!(old, new);
    }

    #[test]
    fn other_lengths_are_refused() {
        let bytes = rmp_serde::to_vec_named(&serde_json::json!({"ip": [1, 2, 3]})).unwrap();
        let e = rmp_serde::from_slice::<Holder>(&bytes).unwrap_err();
        assert!(e.to_string().contains("4 or 16 bytes"), "{e}");
    }
}
