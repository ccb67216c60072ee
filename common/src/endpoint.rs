//! The endpoints map: what the datapath knows about the endpoint behind a node-side interface (sized by
//! [`crate::capacity::MAX_IFINDEX`]).

/// Value of the endpoints map, indexed by the ifindex of the endpoint's node-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Small stable endpoint id (as Cilium's).
    pub endpoint_id: u16,
    /// Bit flags, see the `FLAG_*` constants.
    pub flags: u16,
    /// Security identity of the endpoint.
    pub identity: u32,
    /// IPv4 address, network byte order.
    pub ipv4: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);

#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointInfo {}
