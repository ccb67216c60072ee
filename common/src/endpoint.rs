//! The endpoints map: what the datapath knows about the endpoint behind a node-side interface (sized by
//! [`crate::capacity::MAX_IFINDEX`]).

/// Value of the endpoints map, indexed by the ifindex of the endpoint's node-side veth.
/// 8-byte aligned (see `ip::Addr`): its addresses are copied and compared as two 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Small stable endpoint id (as Cilium's).
    pub endpoint_id: u16,
    /// Bit flags, see the `FLAG_*` constants.
    pub flags: u16,
    /// Security identity of the endpoint.
    pub identity: u32,
    /// The endpoint's IPv4 address, IPv4-mapped (`ip::v4_mapped`); `ip::UNSPECIFIED` when it has none.
    pub ipv4: crate::ip::Addr,
    /// The endpoint's IPv6 address; `ip::UNSPECIFIED` when it has none.
    pub ipv6: crate::ip::Addr,
}

const _: () = assert!(
    core::mem::size_of::<EndpointInfo>() == 40
        && core::mem::offset_of!(EndpointInfo, ipv4) == 8
        && core::mem::offset_of!(EndpointInfo, ipv6) == 24
);

#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointInfo {}
