//! Fragment tracking, IPv4 and IPv6: later fragments carry no L4 header, so the first fragment's ports and
//! what became of it are kept, per observing endpoint and direction, for the later fragments of the same
//! datagram (source, destination, protocol, identification), as Cilium's fragment maps do.

/// Key of the fragment map.
/// 8-byte aligned (see `ip::Addr`): its addresses are copied and compared as two 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct FragmentKey {
    /// Addresses as `ip::Addr` (IPv4 mapped).
    pub saddr: crate::ip::Addr,
    pub daddr: crate::ip::Addr,
    /// The IPv4 identification (16 bits) or the IPv6 fragment header's identification (32 bits).
    pub id: u32,
    pub protocol: u8,
    /// `policy::direction` at the observing endpoint.
    pub direction: u8,
    pub endpoint_id: u16,
}

const _: () = assert!(core::mem::size_of::<FragmentKey>() == 40 && core::mem::offset_of!(FragmentKey, daddr) == 16);

/// Value of the fragment map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentValue {
    /// When the first fragment passed (`bpf_ktime_get_ns`): later fragments older than
    /// [`FRAGMENT_LIFETIME_NS`] find nothing.
    pub seen_ns: u64,
    /// The first fragment's ports (host byte order).
    pub sport: u16,
    pub dport: u16,
    /// 0: the first fragment passed; otherwise the drop reason it was dropped with.
    pub drop_reason: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

const _: () = assert!(core::mem::size_of::<FragmentValue>() == 16);

/// How long after its first fragment a datagram's later fragments are recognised.
pub const FRAGMENT_LIFETIME_NS: u64 = 5_000_000_000;

#[cfg(feature = "user")]
unsafe impl aya::Pod for FragmentKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FragmentValue {}
