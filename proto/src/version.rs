//! Protocol versioning. The major version changes only when a message can no longer be read by the
//! other side; everything else is additive (new optional fields, new message variants) under a minor
//! bump. Peers with different majors refuse each other with an error that names both versions.

use serde::{Deserialize, Serialize};

/// A protocol version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

/// The version this build speaks. 1.1: flow filters gained `policies`, and `pods` became Hubble's
/// `[namespace/]pod-name-prefix` (1.0 read them as an exact `namespace/name`). 1.2: `ConntrackList`, and
/// `Status::conntrack`. 1.3: addresses in flows and conntrack entries are IPv4 or IPv6 (an IPv4 address
/// is written as before, so a 1.2 client still reads IPv4 flows; an IPv6 one needs 1.3), endpoints gained
/// `ipv6`, protocols `ICMPV6`. 1.4: `PolicyMaps` (the policy maps in effect and what they were compiled
/// from, for `flowgate policy test` and `policy describe NS/NAME`), and the endpoint state
/// `waiting-for-interface`. 1.5: subscribers that say 1.5 or later get their events as
/// `ServerMessage::FlowBatch` (peers sent once per connection, flows as arrays; see `flow_batch`), others
/// as `ServerMessage::Events`.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 5 };

/// The first version that reads `ServerMessage::FlowBatch`.
pub const FLOW_BATCH_SINCE: ProtocolVersion = ProtocolVersion { major: 1, minor: 5 };

impl ProtocolVersion {
    /// Whether a peer speaking `other` can talk to us.
    pub fn compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }

    /// Whether a peer speaking this version reads compact event batches (`ServerMessage::FlowBatch`).
    pub fn reads_flow_batches(self) -> bool {
        self.major == FLOW_BATCH_SINCE.major && self.minor >= FLOW_BATCH_SINCE.minor
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}
