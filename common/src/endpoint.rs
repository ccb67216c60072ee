//! The endpoints map: what the datapath knows about the endpoint behind a node-side interface.

/// Size of the endpoints array: node-side interfaces with a smaller ifindex can be endpoints.
pub const MAX_IFINDEX: u32 = 16384;

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
