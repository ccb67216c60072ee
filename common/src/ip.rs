//! IP protocol numbers and their names, defined once for the kernel programs (which parse headers by
//! number), the event path (which turns numbers into flow protocols) and user space (which prints and
//! parses names). A second copy of `6` or `"TCP"` elsewhere is a divergence waiting to happen.

/// IANA protocol numbers of the protocols flowgate parses or names.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// Each protocol number with its name as Kubernetes (`ports[].protocol`) and Hubble (`l4`) spell it.
pub const PROTOCOL_NAMES: [(u8, &str); 5] = [
    (protocol::TCP, "TCP"),
    (protocol::UDP, "UDP"),
    (protocol::SCTP, "SCTP"),
    (protocol::ICMP, "ICMP"),
    (protocol::ICMPV6, "ICMPv6"),
];

/// The name of a protocol number (`6` -> `TCP`), `None` for a number without one here.
pub const fn protocol_name(number: u8) -> Option<&'static str> {
    let mut i = 0;
    while i < PROTOCOL_NAMES.len() {
        if PROTOCOL_NAMES[i].0 == number {
            return Some(PROTOCOL_NAMES[i].1);
        }
        i += 1;
    }
    None
}

/// The number of a protocol name, in any letter case (`tcp`, `TCP`), `None` for an unknown name.
pub fn protocol_number(name: &str) -> Option<u8> {
    PROTOCOL_NAMES.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)).map(|(number, _)| *number)
}

/// An IP address as the datapath keys it: 16 bytes in network order. IPv6 addresses are themselves; an IPv4
/// address is IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2), so one key shape, one ipcache and one
/// connection table serve both families. The datapath drops IPv6 packets that carry an IPv4-mapped address
/// (they never appear on the wire), so the mapped range means IPv4 and nothing else.
///
/// The structs that hold addresses (`FlowTuple`, `CtKey`, `FragmentKey`, `EndpointInfo`) are 8-byte aligned
/// with their addresses at multiples of 8: a BPF program can only move and compare memory in units of its
/// known alignment, and byte by byte, 16-byte addresses cost the established fast path about 80 ns.
pub type Addr = [u8; 16];

/// The two 64-bit words of the IPv4-mapped [`Addr`] of `octets` (in memory order), to store without
/// going byte by byte.
#[inline(always)]
pub const fn v4_mapped_words(octets: [u8; 4]) -> [u64; 2] {
    [0, u64::from_ne_bytes([0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]])]
}

/// Prefix length of the IPv4-mapped range: an IPv4 prefix of length `n` is an [`Addr`] prefix of `96 + n`.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// The all-zero address: no address (an endpoint without one in a family, a record without an IP layer).
pub const UNSPECIFIED: Addr = [0; 16];

/// IP versions as records and Hubble name them (`ipVersion`).
pub mod version {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// The IPv4-mapped [`Addr`] of an IPv4 address given as its four octets.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> Addr {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

/// Whether `addr` is in the IPv4-mapped range (`::ffff:0:0/96`).
#[inline(always)]
pub const fn is_v4_mapped(addr: &Addr) -> bool {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    addr[10] == 0xff && addr[11] == 0xff
}

/// The IP version of an address ([`version::V4`] for the mapped range, else [`version::V6`]).
#[inline(always)]
pub const fn version_of(addr: &Addr) -> u8 {
    if is_v4_mapped(addr) { version::V4 } else { version::V6 }
}

/// The address as a `core::net::IpAddr`: IPv4 for the mapped range, IPv6 otherwise.
pub fn to_ip(addr: &Addr) -> core::net::IpAddr {
    if is_v4_mapped(addr) {
        core::net::IpAddr::V4(core::net::Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]))
    } else {
        core::net::IpAddr::V6(core::net::Ipv6Addr::from(*addr))
    }
}

/// The [`Addr`] of an address: an IPv4 address mapped, an IPv6 address as it is.
pub fn from_ip(ip: core::net::IpAddr) -> Addr {
    match ip {
        core::net::IpAddr::V4(v4) => v4_mapped(v4.octets()),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_both_families_into_one_shape() {
        let v4: core::net::IpAddr = "10.200.0.10".parse().unwrap();
        let v6: core::net::IpAddr = "fd00:10:200::a".parse().unwrap();
        assert_eq!(from_ip(v4), v4_mapped([10, 200, 0, 10]));
        assert_eq!(to_ip(&from_ip(v4)), v4);
        assert_eq!(to_ip(&from_ip(v6)), v6);
        assert_eq!(version_of(&from_ip(v4)), version::V4);
        assert_eq!(version_of(&from_ip(v6)), version::V6);
        // `::ffff:0:1` is mapped; `::1` and `::` are not.
        assert!(is_v4_mapped(&from_ip("::ffff:0:1".parse().unwrap())));
        assert!(!is_v4_mapped(&from_ip("::1".parse().unwrap())));
        assert!(!is_v4_mapped(&UNSPECIFIED));
        let words = v4_mapped_words([10, 200, 0, 10]);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&words[0].to_ne_bytes());
        bytes[8..].copy_from_slice(&words[1].to_ne_bytes());
        assert_eq!(bytes, v4_mapped([10, 200, 0, 10]));
    }

    #[test]
    fn names_and_numbers_round_trip() {
        for (number, name) in PROTOCOL_NAMES {
            assert_eq!(protocol_name(number), Some(name));
            assert_eq!(protocol_number(name), Some(number));
        }
        assert_eq!(protocol_number("udp"), Some(17));
        assert_eq!(protocol_number("icmpv6"), Some(58));
        assert_eq!(protocol_name(47), None);
        assert_eq!(protocol_number("GRE"), None);
    }
}
