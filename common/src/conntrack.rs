//! Connection tracking: one entry per connection per observing endpoint and direction, keyed by the
//! tuple of the packet that opened it. Replies find the entry by the reversed tuple and the opposite
//! direction, so replies of allowed connections pass without a policy lookup.

/// Conntrack key.
/// 8-byte aligned (see `ip::Addr`): its addresses are copied and compared as two 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct CtKey {
    /// Addresses as `ip::Addr` (IPv4 mapped), ports in host byte order, as in the opening packet.
    pub saddr: crate::ip::Addr,
    pub daddr: crate::ip::Addr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// `policy::direction` at the observing endpoint when the connection opened.
    pub direction: u8,
    pub endpoint_id: u16,
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 40 && core::mem::offset_of!(CtKey, daddr) == 16);

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
    /// The TCP connection is over: an RST, or a FIN each way. It lives for the close lifetime, and a SYN
    /// on its tuple opens a new connection (a new verdict) instead of resuming it.
    pub const CLOSED: u8 = 16;
    /// A policy revision no longer allows the connection: its packets are dropped as revoked (each one
    /// re-checked, so a later revision that allows it again resumes it) until it expires after the close
    /// lifetime or a SYN opens it anew.
    pub const REVOKED: u8 = 32;
}

/// `CtEntry::revision` of a revoked entry: never a current revision, so every packet is re-checked.
pub const REVISION_REVOKED: u32 = u32::MAX;

/// Default lifetimes in seconds (`Config::CtLifetime*`, agent flags), after Cilium's: an established TCP
/// connection idles for hours, anything else (UDP, ICMP, a TCP handshake not answered yet) for a minute, a
/// closed TCP connection for seconds.
pub mod lifetime {
    pub const TCP_SECS: u64 = 21600;
    pub const OTHER_SECS: u64 = 60;
    pub const CLOSE_SECS: u64 = 10;
}

/// Which lifetime applies to a connection: its idle time is compared against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeClass {
    /// An answered TCP connection.
    Tcp,
    /// UDP, ICMP, other protocols, and TCP before the first reply.
    Other,
    /// Closed (RST, FIN both ways) or revoked.
    Close,
}

impl LifetimeClass {
    /// The class of a connection of `protocol` (`ip::protocol`) with `ct_flag` bits `flags`.
    #[inline(always)]
    pub fn of(protocol: u8, flags: u8) -> Self {
        if flags & (ct_flag::CLOSED | ct_flag::REVOKED) != 0 {
            LifetimeClass::Close
        } else if protocol == crate::ip::protocol::TCP && flags & ct_flag::REPLY_SEEN != 0 {
            LifetimeClass::Tcp
        } else {
            LifetimeClass::Other
        }
    }

    /// The config slot holding this class's lifetime in nanoseconds.
    #[inline(always)]
    pub fn config(self) -> crate::counters::Config {
        match self {
            LifetimeClass::Tcp => crate::counters::Config::CtLifetimeTcp,
            LifetimeClass::Other => crate::counters::Config::CtLifetimeOther,
            LifetimeClass::Close => crate::counters::Config::CtLifetimeClose,
        }
    }
}

/// Conntrack's time of `jiffies` (CLOCK_MONOTONIC to the kernel's tick), with the tick and offset the agent
/// measured (`counters::Config::TickNs`, `TickOffsetNs`): how the programs read their clock from jiffies.
#[inline(always)]
pub fn tick_time_ns(jiffies: u64, tick_ns: u64, offset_ns: u64) -> u64 {
    jiffies.wrapping_mul(tick_ns).wrapping_add(offset_ns)
}

/// Whether an entry last seen at `last_seen_ns` has outlived `lifetime_ns` at `now_ns` (a lifetime of 0:
/// never, e.g. a datapath whose agent did not set lifetimes).
#[inline(always)]
pub fn expired(last_seen_ns: u64, now_ns: u64, lifetime_ns: u64) -> bool {
    lifetime_ns != 0 && now_ns.saturating_sub(last_seen_ns) > lifetime_ns
}

/// Conntrack value. `last_seen_ns` is CLOCK_MONOTONIC (the coarse clock), as the agent's garbage collector
/// and `flowgate conntrack list` read it.
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
    /// `Config::PolicyRevision` the connection was last allowed under ([`REVISION_REVOKED`] once revoked);
    /// a packet under another revision is re-checked against the current policy.
    pub revision: u32,
    pub _pad2: u32,
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 48);

#[cfg(feature = "user")]
unsafe impl aya::Pod for CtKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CtEntry {}
