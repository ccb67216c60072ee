//! CIDR prefixes as NetworkPolicy `ipBlock`s use them, and the allocator of stable CIDR identities.
//!
//! Parsing is as lenient as the API server's for this legacy field (`netutils.ParseCIDRSloppy`): host bits
//! may be set (`10.1.2.3/4` means `0.0.0.0/4`) and IPv4 octets may carry leading zeros (read as decimal).

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("\"{value}\" is not a CIDR: missing '/<prefix length>' (e.g. 10.9.8.0/24 or 2001:db8::/64)")]
    MissingPrefixLength { value: String },
    #[error("\"{value}\" is not a CIDR: \"{address}\" is not an IPv4 or IPv6 address")]
    InvalidAddress { value: String, address: String },
    #[error("\"{value}\" is not a CIDR: prefix length \"{length}\" must be a number from 0 to {max}")]
    InvalidPrefixLength { value: String, length: String, max: u8 },
}

/// A canonical IPv4 prefix: the host bits of `addr` are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    /// `0.0.0.0/0`: every IPv4 address ("world").
    pub const ANY: Self = Self { addr: Ipv4Addr::UNSPECIFIED, len: 0 };

    /// The prefix of length `len` (at most 32, larger is clamped) containing `addr`; host bits are cleared.
    #[must_use]
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        let len = len.min(32);
        Self { addr: Ipv4Addr::from(u32::from(addr) & mask_v4(len)), len }
    }

    /// The network address (host bits zero).
    #[must_use]
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length, 0 to 32.
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` lies inside this prefix.
    #[must_use]
    pub fn contains_addr(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_v4(self.len) == u32::from(self.addr)
    }

    /// Whether `other` is a subset of (or equal to) this prefix.
    #[must_use]
    pub fn contains(&self, other: &Ipv4Prefix) -> bool {
        other.len >= self.len && self.contains_addr(other.addr)
    }
}

fn mask_v4(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) }
}

fn mask_v6(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match parse_cidr(s)? {
            Cidr::V4(prefix) => Ok(prefix),
            Cidr::V6 { .. } => Err(CidrError::InvalidAddress {
                value: s.to_owned(),
                address: s.split('/').next().unwrap_or_default().to_owned(),
            }),
        }
    }
}

impl Serialize for Ipv4Prefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Prefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A parsed CIDR of either family. IPv6 is accepted by validation but not enforced (the lab is IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4(Ipv4Prefix),
    /// Canonical IPv6 prefix (host bits cleared).
    V6 {
        addr: Ipv6Addr,
        len: u8,
    },
}

impl Cidr {
    /// Whether `inner` is a strict subset of `self` (same family, longer prefix, inside): the API server's
    /// rule for `ipBlock.except`.
    #[must_use]
    pub fn strictly_contains(&self, inner: &Cidr) -> bool {
        match (self, inner) {
            (Cidr::V4(outer), Cidr::V4(inner)) => outer.len < inner.len && outer.contains_addr(inner.addr),
            (Cidr::V6 { addr, len }, Cidr::V6 { addr: inner_addr, len: inner_len }) => {
                len < inner_len && u128::from(*inner_addr) & mask_v6(*len) == u128::from(*addr)
            }
            _ => false,
        }
    }
}

/// Parses `a.b.c.d/n` or `x:y::z/n` the way the API server accepts `ipBlock.cidr` (see the module docs).
pub fn parse_cidr(value: &str) -> Result<Cidr, CidrError> {
    let Some((address, length)) = value.split_once('/') else {
        return Err(CidrError::MissingPrefixLength { value: value.to_owned() });
    };
    let invalid_length =
        |max: u8| CidrError::InvalidPrefixLength { value: value.to_owned(), length: length.to_owned(), max };
    let parse_length = |max: u8| -> Result<u8, CidrError> {
        if length.is_empty() || length.len() > 3 || !length.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid_length(max));
        }
        length.parse::<u8>().ok().filter(|len| *len <= max).ok_or_else(|| invalid_length(max))
    };
    if let Some(addr) = parse_ipv4_sloppy(address) {
        return Ok(Cidr::V4(Ipv4Prefix::new(addr, parse_length(32)?)));
    }
    if address.contains(':')
        && let Ok(addr) = address.parse::<Ipv6Addr>()
    {
        let len = parse_length(128)?;
        return Ok(Cidr::V6 { addr: Ipv6Addr::from(u128::from(addr) & mask_v6(len)), len });
    }
    Err(CidrError::InvalidAddress { value: value.to_owned(), address: address.to_owned() })
}

/// Four decimal octets; leading zeros allowed and read as decimal (Go's `ParseIPSloppy`).
fn parse_ipv4_sloppy(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// Allocates CIDR identities: each distinct prefix gets one, from [`CidrIdentities::FIRST`] upward, and keeps
/// it for the life of the allocator (across compilations), so map entries stay valid when policies change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrIdentities {
    next: u32,
    identities: BTreeMap<Ipv4Prefix, u32>,
    /// Identities shared by several prefixes that the same `ipBlock` peers select, by their prefixes. Not
    /// serialized (JSON keys are strings); `next` is, so an allocator read back never reuses an identity.
    #[serde(skip)]
    shared: BTreeMap<Vec<Ipv4Prefix>, u32>,
}

impl CidrIdentities {
    /// The first CIDR identity (`flowgate_common::identity::FIRST_CIDR`); pod identities stay below it.
    pub const FIRST: u32 = flowgate_common::identity::FIRST_CIDR;

    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The identity of `prefix`, allocating the next free one the first time the prefix is seen.
    pub fn identity_for(&mut self, prefix: Ipv4Prefix) -> u32 {
        if let Some(identity) = self.identities.get(&prefix) {
            return *identity;
        }
        let identity = Self::FIRST.max(self.next);
        self.next = identity + 1;
        self.identities.insert(prefix, identity);
        identity
    }

    /// The identity shared by `prefixes` (sorted, at least two), allocating the next free one the first
    /// time this set is seen.
    pub fn shared_identity_for(&mut self, prefixes: &[Ipv4Prefix]) -> u32 {
        if let Some(identity) = self.shared.get(prefixes) {
            return *identity;
        }
        let identity = Self::FIRST.max(self.next);
        self.next = identity + 1;
        self.shared.insert(prefixes.to_vec(), identity);
        identity
    }

    /// The identity already allocated to `prefix`, if any.
    #[must_use]
    pub fn get(&self, prefix: &Ipv4Prefix) -> Option<u32> {
        self.identities.get(prefix).copied()
    }

    /// Every allocated prefix and its identity, ordered by prefix.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Prefix, u32)> + '_ {
        self.identities.iter().map(|(prefix, id)| (*prefix, *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> Ipv4Prefix {
        text.parse().unwrap()
    }

    #[test]
    fn parse_canonical_ipv4_cidr() {
        assert_eq!(v4("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(v4("0.0.0.0/0"), Ipv4Prefix::ANY);
        assert_eq!(v4("10.1.2.3/32").to_string(), "10.1.2.3/32");
    }

    #[test]
    fn parse_masks_host_bits_like_parse_cidr_sloppy() {
        assert_eq!(v4("10.1.2.3/4").to_string(), "0.0.0.0/4");
        assert_eq!(v4("192.168.7.9/24").to_string(), "192.168.7.0/24");
    }

    #[test]
    fn parse_accepts_leading_zero_octets_as_decimal() {
        assert_eq!(v4("010.001.0.0/16").to_string(), "10.1.0.0/16");
    }

    #[test]
    fn parse_rejects_missing_prefix_length() {
        assert_eq!(
            parse_cidr("10.0.0.1").unwrap_err().to_string(),
            "\"10.0.0.1\" is not a CIDR: missing '/<prefix length>' (e.g. 10.9.8.0/24 or 2001:db8::/64)"
        );
    }

    #[test]
    fn parse_rejects_prefix_length_over_32() {
        assert!(matches!(parse_cidr("10.0.0.0/33"), Err(CidrError::InvalidPrefixLength { max: 32, .. })));
        assert!(matches!(parse_cidr("10.0.0.0/-1"), Err(CidrError::InvalidPrefixLength { .. })));
        assert!(matches!(parse_cidr("10.0.0.0/"), Err(CidrError::InvalidPrefixLength { .. })));
    }

    #[test]
    fn parse_rejects_bad_addresses() {
        for bad in ["10.0.0/8", "10.0.0.256/8", "a.b.c.d/8", "10.0.0.0.0/8", "/8", "10..0.0/8"] {
            assert!(matches!(parse_cidr(bad), Err(CidrError::InvalidAddress { .. })), "{bad}");
        }
    }

    #[test]
    fn parse_accepts_ipv6_syntactically() {
        assert_eq!(parse_cidr("2001:db8::1/64").unwrap(), Cidr::V6 { addr: "2001:db8::".parse().unwrap(), len: 64 });
        assert!(matches!(parse_cidr("2001:db8::/129"), Err(CidrError::InvalidPrefixLength { max: 128, .. })));
    }

    #[test]
    fn strictly_contains_requires_longer_prefix_inside() {
        let outer = parse_cidr("10.0.0.0/8").unwrap();
        assert!(outer.strictly_contains(&parse_cidr("10.1.0.0/16").unwrap()));
        assert!(!outer.strictly_contains(&parse_cidr("10.0.0.0/8").unwrap()));
        assert!(!outer.strictly_contains(&parse_cidr("11.0.0.0/16").unwrap()));
        assert!(!outer.strictly_contains(&parse_cidr("0.0.0.0/0").unwrap()));
        assert!(!outer.strictly_contains(&parse_cidr("::/64").unwrap()));
    }

    #[test]
    fn prefix_containment() {
        assert!(v4("10.0.0.0/8").contains(&v4("10.3.0.0/16")));
        assert!(v4("10.0.0.0/8").contains(&v4("10.0.0.0/8")));
        assert!(!v4("10.3.0.0/16").contains(&v4("10.0.0.0/8")));
        assert!(Ipv4Prefix::ANY.contains_addr(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(v4("10.200.0.250/32").contains_addr(Ipv4Addr::new(10, 200, 0, 250)));
        assert!(!v4("10.200.0.250/32").contains_addr(Ipv4Addr::new(10, 200, 0, 251)));
    }

    #[test]
    fn cidr_identities_are_stable_and_start_at_1_shl_24() {
        let mut ids = CidrIdentities::new();
        let any = ids.identity_for(Ipv4Prefix::ANY);
        let net = ids.identity_for(v4("10.0.0.0/8"));
        assert_eq!(any, 1 << 24);
        assert_eq!(net, (1 << 24) + 1);
        assert_eq!(ids.identity_for(v4("10.0.0.0/8")), net);
        assert_eq!(ids.get(&v4("10.0.0.0/8")), Some(net));
        assert_eq!(ids.get(&v4("11.0.0.0/8")), None);
    }

    #[test]
    fn cidr_identities_round_trip_through_json() {
        let mut ids = CidrIdentities::new();
        ids.identity_for(v4("10.0.0.0/8"));
        let json = serde_json::to_string(&ids).unwrap();
        let mut back: CidrIdentities = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ids);
        assert_eq!(back.identity_for(v4("11.0.0.0/8")), (1 << 24) + 1);
    }
}
