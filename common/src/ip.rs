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

#[cfg(test)]
mod tests {
    use super::*;

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
