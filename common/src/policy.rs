//! Keys and values of the datapath's policy maps: the ipcache (LPM trie: IPv4 prefix -> identities),
//! the per-endpoint policy (LPM trie: endpoint, direction, peer identity, protocol, port prefix -> the
//! rule that allows it) and per-endpoint enforcement flags. Policy maps come in two generations; the
//! agent fills the inactive one and then flips `Config::ActiveGeneration`, so a packet sees either the
//! old policy or the new one, never a half-written mix.

/// Traffic direction relative to the endpoint (`PolicyKey`, conntrack, records).
pub mod direction {
    /// Into the endpoint (checked by `to_endpoint`).
    pub const INGRESS: u8 = 0;
    /// Out of the endpoint (checked by `from_endpoint`).
    pub const EGRESS: u8 = 1;
}

/// Bits of a `PolicyKey` that are always part of the prefix: endpoint id, direction, padding, identity.
pub const POLICY_PREFIX_PEER: u32 = 64;
/// Prefix that also covers the protocol.
pub const POLICY_PREFIX_PROTOCOL: u32 = 72;
/// Prefix that covers protocol and the whole port.
pub const POLICY_PREFIX_FULL: u32 = 88;

/// Data of a policy LPM key, in big-endian bit order so prefixes work: `endpoint_id` (2 bytes),
/// `direction` (1), zero (1), peer identity (4), protocol (1), port (2), zero (1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct PolicyKey {
    pub bytes: [u8; 12],
}

const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

impl PolicyKey {
    pub const fn new(endpoint_id: u16, direction: u8, identity: u32, protocol: u8, port: u16) -> Self {
        let e = endpoint_id.to_be_bytes();
        let i = identity.to_be_bytes();
        let p = port.to_be_bytes();
        Self { bytes: [e[0], e[1], direction, 0, i[0], i[1], i[2], i[3], protocol, p[0], p[1], 0] }
    }

    pub const fn endpoint_id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    pub const fn direction(&self) -> u8 {
        self.bytes[2]
    }

    pub const fn identity(&self) -> u32 {
        u32::from_be_bytes([self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]])
    }

    pub const fn protocol(&self) -> u8 {
        self.bytes[8]
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[9], self.bytes[10]])
    }
}

/// `PolicyValue::flags`: the entry names a protocol (and maybe ports), i.e. it is an L4 entry.
pub const POLICY_FLAG_L4: u32 = 1;

/// Value of a policy entry: the rule (set of policies) that allows it, and its counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyValue {
    /// Agent-assigned id of the policies behind this entry (never 0).
    pub rule_id: u32,
    /// `POLICY_FLAG_*`.
    pub flags: u32,
    /// Packets and bytes of new connections this entry allowed.
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PolicyValue>() == 24);

/// The prefix length of a single address in the ipcache's key space (IPv4 mapped into IPv6: a /32 is a
/// /128). Entries of this length are in the host hash map (`names::MAP_IPCACHE_HOST`), the rest in the trie.
pub const IPCACHE_HOST_PREFIX: u32 = 128;

/// Value of the ipcache: the identity of the longest matching prefix (a pod's own identity for its /32)
/// and the identity of the longest matching CIDR prefix of any ipBlock (so ipBlock rules also apply
/// to pod addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheValue {
    pub identity: u32,
    pub cidr_identity: u32,
}

const _: () = assert!(core::mem::size_of::<IpcacheValue>() == 8);

/// Per-endpoint enforcement flags (value of the enforcement map, keyed by endpoint id).
pub mod enforcement {
    pub const INGRESS: u32 = 1;
    pub const EGRESS: u32 = 2;
    /// Would-be drops on ingress pass and are reported as audit.
    pub const INGRESS_AUDIT: u32 = 4;
    pub const EGRESS_AUDIT: u32 = 8;
    /// The endpoint has policy entries shorter than one peer, protocol and port in this direction (port
    /// ranges, whole protocols, whole peers), which are in the policy trie: without the flag the programs
    /// look only in the exact map, a miss costing no trie walk.
    pub const INGRESS_PREFIXES: u32 = 16;
    pub const EGRESS_PREFIXES: u32 = 32;
    /// The endpoint has no policy entry for any peer (`identity::ANY`) in this direction: the programs skip
    /// that lookup, a miss saved for every connection no entry of its peer allows (denied ones above all).
    /// Set when there is none, so flags written before it existed (an adopted map) mean "look".
    pub const INGRESS_NO_ANY_PEER: u32 = 64;
    pub const EGRESS_NO_ANY_PEER: u32 = 128;

    /// The `*_PREFIXES` flag of a direction (`direction::INGRESS` or `direction::EGRESS`).
    pub const fn prefixes(dir: u8) -> u32 {
        if dir == super::direction::INGRESS { INGRESS_PREFIXES } else { EGRESS_PREFIXES }
    }

    /// The `*_NO_ANY_PEER` flag of a direction.
    pub const fn no_any_peer(dir: u8) -> u32 {
        if dir == super::direction::INGRESS { INGRESS_NO_ANY_PEER } else { EGRESS_NO_ANY_PEER }
    }
}

/// Policy-verdict match types (`PolicyVerdictRecord::match_type`): flowgate's own numbering, which the
/// kernel writes. It is **not** Cilium's (Hubble's `policy_match_type` has L3-only 1, L3-L4 2); the one
/// conversion to Hubble's numbers and names is `flowgate_proto::flow::MatchType`'s table.
pub mod match_type {
    pub const NONE: u8 = 0;
    pub const L3_L4: u8 = 1;
    pub const L3_ONLY: u8 = 2;
    pub const L4_ONLY: u8 = 3;
    pub const ALL: u8 = 4;
}

/// Policy-verdict outcomes (`PolicyVerdictRecord::verdict`).
pub mod verdict {
    pub const ALLOWED: u8 = 1;
    pub const DENIED: u8 = 2;
    pub const AUDIT: u8 = 3;
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for IpcacheValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_fields_round_trip_in_prefix_order() {
        let k = PolicyKey::new(0x0102, direction::EGRESS, 0x0a0b_0c0d, crate::ip::protocol::TCP, 8080);
        assert_eq!(k.bytes[..8], [1, 2, 1, 0, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(
            (k.endpoint_id(), k.direction(), k.identity(), k.protocol(), k.port()),
            (0x0102, 1, 0x0a0b_0c0d, 6, 8080)
        );
    }
}
