//! CIDR prefixes as NetworkPolicy `ipBlock`s use them, and the allocator of stable CIDR identities.
//!
//! Parsing is as lenient as the API server's for this legacy field (`netutils.ParseCIDRSloppy`): host bits
//! may be set (`10.1.2.3/4` means `0.0.0.0/4`) and IPv4 octets may carry leading zeros (read as decimal).

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
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

/// A canonical prefix of either family, kept as the datapath keys it (`flowgate_common::ip::Addr`): 128 bits,
/// an IPv4 prefix of length `n` as the IPv4-mapped prefix of length `96 + n`. The host bits are zero.
///
/// One space for both families makes IPv4 and IPv6 blocks, excepts and the ipcache one structure. The
/// families stay apart where Kubernetes keeps them apart: an IPv6 block never selects IPv4 addresses (see
/// [`IpPrefix::contains`]), as Go's `IPNet.Contains` (which the API's semantics follow) never matches an
/// IPv4 address against an IPv6 network. A block written IPv4-mapped (`::ffff:10.0.0.0/104`) is IPv4, as
/// it is for Go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    bits: u128,
    /// Length in the 128-bit space.
    len: u8,
}

/// IPv4 prefixes first (so `0.0.0.0/0` keeps the first CIDR identity it always had), then by address and
/// length.
impl Ord for IpPrefix {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (!self.is_v4(), self.bits, self.len).cmp(&(!other.is_v4(), other.bits, other.len))
    }
}

impl PartialOrd for IpPrefix {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `::ffff:0:0/96` as a number.
const V4_MAPPED: u128 = 0xffff_u128 << 32;

impl IpPrefix {
    /// `0.0.0.0/0`: every IPv4 address ("world" for IPv4).
    pub const ANY_V4: Self = Self { bits: V4_MAPPED, len: 96 };
    /// `::/0`: every IPv6 address ("world" for IPv6; IPv4 addresses always find [`IpPrefix::ANY_V4`] first).
    pub const ANY_V6: Self = Self { bits: 0, len: 0 };

    /// The prefix of length `len` (in the address's own family: at most 32 for IPv4, 128 for IPv6, larger
    /// is clamped) containing `addr`; host bits are cleared.
    #[must_use]
    pub fn new(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(v4) => Self::from_bits(V4_MAPPED | u128::from(u32::from(v4)), 96 + len.min(32)),
            IpAddr::V6(v6) => Self::from_bits(u128::from(v6), len.min(128)),
        }
    }

    fn from_bits(bits: u128, len: u8) -> Self {
        Self { bits: bits & mask(len), len }
    }

    /// The single address `addr` (`/32`, `/128`).
    #[must_use]
    pub fn host(addr: IpAddr) -> Self {
        Self::new(addr, 128)
    }

    /// Whether this is an IPv4 prefix (inside the IPv4-mapped range).
    #[must_use]
    pub fn is_v4(&self) -> bool {
        self.len >= 96 && self.bits & mask(96) == V4_MAPPED
    }

    /// The network address (host bits zero), in its own family.
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        if self.is_v4() { IpAddr::V4(Ipv4Addr::from(self.bits as u32)) } else { IpAddr::V6(Ipv6Addr::from(self.bits)) }
    }

    /// The prefix length in its own family: 0 to 32 for IPv4, 0 to 128 for IPv6.
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        if self.is_v4() { self.len - 96 } else { self.len }
    }

    /// The prefix as an LPM key of the datapath: its 16 address bytes and its length in the 128-bit space.
    #[must_use]
    pub fn key(&self) -> ([u8; 16], u32) {
        (self.bits.to_be_bytes(), u32::from(self.len))
    }

    /// The prefix of a datapath LPM key (the inverse of [`IpPrefix::key`]); a length above 128 is clamped.
    #[must_use]
    pub fn from_key(bytes: [u8; 16], len: u32) -> Self {
        Self::from_bits(u128::from_be_bytes(bytes), u8::try_from(len.min(128)).unwrap_or(128))
    }

    /// Whether `ip` lies inside this prefix (never for an IPv4 address and an IPv6 prefix).
    #[must_use]
    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        self.contains(&Self::host(ip))
    }

    /// Whether `other` is a subset of (or equal to) this prefix, in the same family.
    #[must_use]
    pub fn contains(&self, other: &IpPrefix) -> bool {
        other.len >= self.len && other.bits & mask(self.len) == self.bits && self.is_v4() == other.is_v4()
    }

    /// Whether `inner` is a strict subset of `self` (same family, longer prefix, inside): the API server's
    /// rule for `ipBlock.except`.
    #[must_use]
    pub fn strictly_contains(&self, inner: &IpPrefix) -> bool {
        self.len < inner.len && self.contains(inner)
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix_len())
    }
}

impl FromStr for IpPrefix {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_cidr(s)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `a.b.c.d/n` or `x:y::z/n` the way the API server accepts `ipBlock.cidr` (see the module docs).
pub fn parse_cidr(value: &str) -> Result<IpPrefix, CidrError> {
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
        return Ok(IpPrefix::new(IpAddr::V4(addr), parse_length(32)?));
    }
    if address.contains(':')
        && let Ok(addr) = address.parse::<Ipv6Addr>()
    {
        return Ok(IpPrefix::new(IpAddr::V6(addr), parse_length(128)?));
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
    identities: BTreeMap<IpPrefix, u32>,
    /// Identities shared by several prefixes that the same `ipBlock` peers select, by their prefixes. Not
    /// serialized (JSON keys are strings); `next` is, so an allocator read back never reuses an identity.
    #[serde(skip)]
    shared: BTreeMap<Vec<IpPrefix>, u32>,
}

impl CidrIdentities {
    /// The first CIDR identity (`flowgate_common::identity::FIRST_CIDR`); pod identities stay below it.
    pub const FIRST: u32 = flowgate_common::identity::FIRST_CIDR;

    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The identity of `prefix`, allocating the next free one the first time the prefix is seen.
    pub fn identity_for(&mut self, prefix: IpPrefix) -> u32 {
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
    pub fn shared_identity_for(&mut self, prefixes: &[IpPrefix]) -> u32 {
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
    pub fn get(&self, prefix: &IpPrefix) -> Option<u32> {
        self.identities.get(prefix).copied()
    }

    /// Every allocated prefix and its identity, ordered by prefix.
    pub fn iter(&self) -> impl Iterator<Item = (IpPrefix, u32)> + '_ {
        self.identities.iter().map(|(prefix, id)| (*prefix, *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> IpPrefix {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parse_canonical_ipv4_cidr() {
        assert_eq!(v4("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(v4("0.0.0.0/0"), IpPrefix::ANY_V4);
        assert_eq!(v4("::/0"), IpPrefix::ANY_V6);
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
    fn parse_ipv6_canonically() {
        assert_eq!(parse_cidr("2001:db8::1/64").unwrap().to_string(), "2001:db8::/64");
        assert_eq!(parse_cidr("2001:db8::1/64").unwrap().prefix_len(), 64);
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
        assert!(IpPrefix::ANY_V4.contains_addr(ip("1.2.3.4")));
        assert!(v4("10.200.0.250/32").contains_addr(ip("10.200.0.250")));
        assert!(!v4("10.200.0.250/32").contains_addr(ip("10.200.0.251")));
        assert!(v4("fd00:10:200::/64").contains_addr(ip("fd00:10:200::a")));
        assert!(!v4("fd00:10:200::/64").contains_addr(ip("fd00:10:201::a")));
    }

    #[test]
    fn families_stay_apart_as_in_go() {
        // `::/0` covers the IPv4-mapped range in 128 bits, but an IPv6 block never selects IPv4.
        assert!(!IpPrefix::ANY_V6.contains_addr(ip("10.0.0.1")));
        assert!(!IpPrefix::ANY_V6.contains(&IpPrefix::ANY_V4));
        assert!(!IpPrefix::ANY_V4.contains_addr(ip("fd00::1")));
        assert!(IpPrefix::ANY_V6.contains_addr(ip("fd00::1")));
        // A block written IPv4-mapped is IPv4 (Go's `To4`).
        let mapped = v4("::ffff:10.0.0.0/104");
        assert!(mapped.is_v4());
        assert_eq!(mapped, v4("10.0.0.0/8"));
        assert!(mapped.contains_addr(ip("10.1.2.3")));
        assert!(!v4("::/0").strictly_contains(&v4("10.0.0.0/8")));
        assert_eq!(v4("10.1.2.3/32").key(), (crate::cidr::tests::mapped([10, 1, 2, 3]), 128));
        assert_eq!(v4("fd00::/8").key().1, 8);
    }

    fn mapped(o: [u8; 4]) -> [u8; 16] {
        flowgate_common::ip::v4_mapped(o)
    }

    #[test]
    fn cidr_identities_are_stable_and_start_at_1_shl_24() {
        let mut ids = CidrIdentities::new();
        let any = ids.identity_for(IpPrefix::ANY_V4);
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
