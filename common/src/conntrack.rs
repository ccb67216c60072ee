//! Connection tracking: one entry per connection per observing endpoint and direction, keyed by the
//! tuple of the packet that opened it. Replies find the entry by the reversed tuple and the opposite
//! direction, so replies of allowed connections pass without a policy lookup.

/// Conntrack key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct CtKey {
    /// Addresses in network byte order, ports in host byte order, as in the opening packet.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// `policy::direction` at the observing endpoint when the connection opened.
    pub direction: u8,
    pub endpoint_id: u16,
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

/// Conntrack entry flags.
pub mod ct_flag {
    /// Allowed only because of audit mode.
    pub const AUDIT: u8 = 1;
    /// Opened while the direction was enforced (a policy decided).
    pub const ENFORCED: u8 = 2;
    /// A FIN or RST was seen.
    pub const CLOSING: u8 = 4;
    /// A packet in the reply direction was seen (the connection's first state change).
    pub const REPLY_SEEN: u8 = 8;
}

/// Conntrack value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Rule that allowed the connection (0: no policy enforced, or audit).
    pub rule_id: u32,
    /// TCP flags seen so far in the opening direction and in the reply direction (trace aggregation).
    pub flags_seen_orig: u8,
    pub flags_seen_reply: u8,
    /// `ct_flag::*`.
    pub flags: u8,
    pub _pad: u8,
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 40);

#[cfg(feature = "user")]
unsafe impl aya::Pod for CtKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CtEntry {}
