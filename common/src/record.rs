//! Event records written by the kernel programs into the events buffer. Every record starts with a
//! [`RecordHeader`] carrying its type and layout version; user space rejects versions it does not know
//! instead of reading a zeroed or misaligned struct.

/// Layout version written into every record this build produces.
pub const RECORD_VERSION: u8 = 1;

/// Record types (`RecordHeader::record_type`).
pub mod record_type {
    /// A forwarded packet seen at an observation point.
    pub const TRACE: u8 = 1;
    /// A packet the datapath dropped.
    pub const DROP: u8 = 2;
    /// A policy decision on a new connection.
    pub const POLICY_VERDICT: u8 = 3;
}

/// Where a packet was observed (`TraceRecord::observation_point`).
pub mod observation_point {
    /// Ingress hook of the endpoint's node-side veth: the packet leaves the pod.
    pub const FROM_ENDPOINT: u8 = 1;
    /// Egress hook of the endpoint's node-side veth: the packet enters the pod.
    pub const TO_ENDPOINT: u8 = 2;
}

/// TCP flag bits as they appear in byte 13 of the TCP header (`FlowTuple::tcp_flags`).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Common header of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RecordHeader {
    /// One of [`record_type`].
    pub record_type: u8,
    /// Layout version of this record type, [`RECORD_VERSION`] for this build.
    pub version: u8,
    /// Total length of the record in bytes, header included.
    pub len: u16,
    /// CPU that wrote the record.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the record was written.
    pub ktime_ns: u64,
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 16);

/// An IPv4 flow as seen on the wire: addresses in network byte order, ports in host byte order.
/// For ICMP, `sport` holds the type and `dport` the code.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowTuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 132 SCTP).
    pub protocol: u8,
    /// TCP flags of this packet (see [`tcp_flags`]), 0 for other protocols.
    pub tcp_flags: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<FlowTuple>() == 16);

/// A packet forwarded at an observation point (record type [`record_type::TRACE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceRecord {
    pub header: RecordHeader,
    pub flow: FlowTuple,
    /// Endpoint whose veth the packet crossed (0 when the interface is not a known endpoint).
    pub endpoint_id: u16,
    /// One of [`observation_point`].
    pub observation_point: u8,
    pub _pad0: u8,
    /// ifindex of the node-side interface.
    pub ifindex: u32,
    /// Length of the packet in bytes.
    pub pkt_len: u32,
    pub _pad1: u32,
}

const _: () = assert!(core::mem::size_of::<TraceRecord>() == 48);

impl TraceRecord {
    pub const LEN: u16 = core::mem::size_of::<TraceRecord>() as u16;
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for TraceRecord {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RecordHeader {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowTuple {}
