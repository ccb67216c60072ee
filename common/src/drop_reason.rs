//! Drop reasons (`DropRecord::reason`, a flow's `drop_reason`), numbered as Cilium's, with one table of
//! their names: Hubble's `DropReason` enum name (JSON `drop_reason_desc`, metrics) and the text Cilium's
//! monitor prints (`xx drop (Policy denied) ...`). The kernel writes the code; everything that names it
//! looks it up here.

/// An invalid source address.
pub const INVALID_SOURCE_IP: u8 = 132;
/// No policy allowed the packet (the only reason flowgate's datapath drops today).
pub const POLICY_DENIED: u8 = 133;
pub const INVALID_PACKET: u8 = 134;
pub const CT_TRUNCATED_OR_INVALID_HEADER: u8 = 135;
pub const CT_MISSING_TCP_ACK_FLAG: u8 = 136;
pub const CT_UNKNOWN_L4_PROTOCOL: u8 = 137;
pub const UNSUPPORTED_L3_PROTOCOL: u8 = 139;
pub const UNKNOWN_L4_PROTOCOL: u8 = 142;
pub const CT_MAP_INSERTION_FAILED: u8 = 155;
/// A non-first IPv4 fragment whose first fragment was not seen (so its ports, and its verdict, are unknown).
pub const FRAGMENT_WITHOUT_FIRST: u8 = 175;
/// A deny policy matched.
pub const POLICY_DENY: u8 = 181;
/// flowgate's own: a packet of a tracked connection that a newer policy revision no longer allows (the
/// drop record's `revision` says which). Cilium keeps such connections and has no code for this; 240 is
/// outside the range Cilium numbers (130-2xx used sparsely, none at 240). Hubble has no name for it either,
/// so its JSON name is Hubble's `POLICY_DENIED` (what a Hubble consumer should count it as) and the numeric
/// `drop_reason` field and the text line tell the two apart.
pub const CONNECTION_REVOKED: u8 = 240;

/// One drop reason and its names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropReason {
    pub code: u8,
    /// Hubble's `DropReason` name, e.g. `POLICY_DENIED`.
    pub hubble_name: &'static str,
    /// Cilium's monitor text, e.g. `Policy denied`.
    pub text: &'static str,
}

const fn reason(code: u8, hubble_name: &'static str, text: &'static str) -> DropReason {
    DropReason { code, hubble_name, text }
}

/// Every drop reason flowgate names.
pub const DROP_REASONS: [DropReason; 12] = [
    reason(INVALID_SOURCE_IP, "INVALID_SOURCE_IP", "Invalid source ip"),
    reason(POLICY_DENIED, "POLICY_DENIED", "Policy denied"),
    reason(INVALID_PACKET, "INVALID_PACKET_DROPPED", "Invalid packet"),
    reason(CT_TRUNCATED_OR_INVALID_HEADER, "CT_TRUNCATED_OR_INVALID_HEADER", "CT: Truncated or invalid header"),
    reason(CT_MISSING_TCP_ACK_FLAG, "CT_MISSING_TCP_ACK_FLAG", "CT: Missing TCP ACK flag"),
    reason(CT_UNKNOWN_L4_PROTOCOL, "CT_UNKNOWN_L4_PROTOCOL", "CT: Unknown L4 protocol"),
    reason(UNSUPPORTED_L3_PROTOCOL, "UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
    reason(UNKNOWN_L4_PROTOCOL, "UNKNOWN_L4_PROTOCOL", "Unknown L4 protocol"),
    reason(CT_MAP_INSERTION_FAILED, "CT_MAP_INSERTION_FAILED", "CT: Map insertion failed"),
    reason(
        FRAGMENT_WITHOUT_FIRST,
        "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
        "First logical datagram fragment not found",
    ),
    reason(POLICY_DENY, "POLICY_DENY", "Policy denied by denylist"),
    reason(CONNECTION_REVOKED, "POLICY_DENIED", "Policy denied (connection revoked)"),
];

/// Hubble's name for codes missing from [`DROP_REASONS`].
pub const UNKNOWN_HUBBLE_NAME: &str = "DROP_REASON_UNKNOWN";

/// The table row of `code`, `None` for a code flowgate does not name.
pub fn lookup(code: u8) -> Option<&'static DropReason> {
    DROP_REASONS.iter().find(|r| r.code == code)
}

/// Hubble's `DropReason` name of `code` ([`UNKNOWN_HUBBLE_NAME`] for one not in the table).
pub fn hubble_name(code: u8) -> &'static str {
    lookup(code).map_or(UNKNOWN_HUBBLE_NAME, |r| r.hubble_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named_as_cilium_and_hubble_name_them() {
        for (i, r) in DROP_REASONS.iter().enumerate() {
            assert!(DROP_REASONS[..i].iter().all(|o| o.code != r.code), "code {} twice", r.code);
            // Hubble names are read back into codes: the first row with a name is its code.
            if r.code == CONNECTION_REVOKED {
                assert_eq!(
                    DROP_REASONS[..i].iter().find(|o| o.hubble_name == r.hubble_name).map(|o| o.code),
                    Some(POLICY_DENIED)
                );
            }
        }
        assert_eq!(lookup(POLICY_DENIED).map(|r| (r.hubble_name, r.text)), Some(("POLICY_DENIED", "Policy denied")));
        assert_eq!(hubble_name(POLICY_DENY), "POLICY_DENY");
        assert_eq!(hubble_name(1), UNKNOWN_HUBBLE_NAME);
    }
}
