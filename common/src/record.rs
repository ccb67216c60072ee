//! Event records written by the kernel programs into the events buffer. Every record starts with a
//! [`RecordHeader`] carrying its type and layout version; user space rejects versions it does not know
//! instead of reading a zeroed or misaligned struct.

/// Layout version written into every record this build produces, except drop records
/// ([`DROP_RECORD_VERSION`]). Version 2 gave ICMP its own type and code fields in [`FlowTuple`] (its ports
/// became conntrack's echo identifier); version 3 made its addresses 128 bits (IPv6, IPv4 mapped). Older
/// versions are refused.
pub const RECORD_VERSION: u8 = 3;
/// Layout version of drop records this build produces: 3 added `DropRecord::revision`, 4 the 128-bit
/// addresses of record version 3. Older versions are refused.
pub const DROP_RECORD_VERSION: u8 = 4;
/// Layout version of policy-verdict records this build produces: 4 made one record stand for its
/// packet's trace or drop as well ([`PolicyVerdictRecord::packet_event`]) and added its revision. Older
/// versions are refused.
pub const POLICY_VERDICT_RECORD_VERSION: u8 = 4;

/// The layout version this build writes for a record type.
pub const fn version_of(record_type: u8) -> u8 {
    match record_type {
        record_type::DROP => DROP_RECORD_VERSION,
        record_type::POLICY_VERDICT => POLICY_VERDICT_RECORD_VERSION,
        _ => RECORD_VERSION,
    }
}

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

/// Connection-tracking state of a traced packet (`TraceRecord::ct_state`).
pub mod ct_state {
    /// The packet opened a connection.
    pub const NEW: u8 = 1;
    /// A packet of a tracked connection, in its opening direction.
    pub const ESTABLISHED: u8 = 2;
    /// A packet of a tracked connection, in the reply direction.
    pub const REPLY: u8 = 3;
    /// An ICMP error about a tracked connection (Linux conntrack's RELATED, Hubble's trace reason 4).
    pub const RELATED: u8 = 4;
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

    /// Every flag with its name, in the order Cilium and Hubble print them (`SYN, ACK`).
    pub const NAMES: [(u8, &str); 8] = [
        (SYN, "SYN"),
        (FIN, "FIN"),
        (RST, "RST"),
        (PSH, "PSH"),
        (ACK, "ACK"),
        (URG, "URG"),
        (ECE, "ECE"),
        (CWR, "CWR"),
    ];
}

/// Common header of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RecordHeader {
    /// One of [`record_type`].
    pub record_type: u8,
    /// Layout version of this record type ([`version_of`] it for this build).
    pub version: u8,
    /// Total length of the record in bytes, header included.
    pub len: u16,
    /// CPU that wrote the record.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the record was written.
    pub ktime_ns: u64,
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 16);

/// An IPv4 or IPv6 flow as seen on the wire: addresses as `ip::Addr` (IPv4 mapped, so the family is
/// `ip::version_of(&saddr)`; both zero for a packet without an IP layer), ports in host byte order.
/// 8-byte aligned (see `ip::Addr`): its addresses are copied and compared as two 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowTuple {
    pub saddr: crate::ip::Addr,
    pub daddr: crate::ip::Addr,
    /// Ports for TCP, UDP and SCTP. For ICMP and ICMPv6, what connection tracking keys the packet by: an
    /// echo request has its identifier as `sport` (and 0 as `dport`), an echo reply the other way round, so a
    /// reply finds its request's entry reversed; other ICMP messages have 0 and 0.
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number, one of [`crate::ip::protocol`] (for IPv6, the upper-layer protocol after the
    /// extension headers).
    pub protocol: u8,
    /// TCP flags of this packet (see [`tcp_flags`]), 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP or ICMPv6 type and code (0 for other protocols).
    pub icmp_type: u8,
    pub icmp_code: u8,
}

const _: () = assert!(core::mem::size_of::<FlowTuple>() == 40);
const _: () = assert!(core::mem::offset_of!(FlowTuple, daddr) == 16);

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
    /// One of [`ct_state`].
    pub ct_state: u8,
    /// ifindex of the node-side interface.
    pub ifindex: u32,
    /// Length of the packet in bytes.
    pub pkt_len: u32,
    /// Identity of the other side as the ipcache resolves it (0 when no lookup was needed).
    pub remote_identity: u32,
}

const _: () = assert!(core::mem::size_of::<TraceRecord>() == 72);

impl TraceRecord {
    pub const LEN: u16 = core::mem::size_of::<TraceRecord>() as u16;
}

/// A policy decision on a new connection at an endpoint (record type [`record_type::POLICY_VERDICT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyVerdictRecord {
    pub header: RecordHeader,
    pub flow: FlowTuple,
    pub endpoint_id: u16,
    /// `policy::direction`.
    pub direction: u8,
    /// `policy::verdict`.
    pub verdict: u8,
    /// `policy::match_type`.
    pub match_type: u8,
    pub _pad: u8,
    pub _pad2: u16,
    /// Identity the decision was taken for (pod, CIDR or world identity).
    pub remote_identity: u32,
    /// Rule that allowed it (0: none matched; the endpoint's default deny applied).
    pub rule_id: u32,
    pub ifindex: u32,
    pub pkt_len: u32,
    /// The policy revision (`Config::PolicyRevision`) the decision was taken under.
    pub revision: u32,
    pub _pad3: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyVerdictRecord>() == 88);

impl PolicyVerdictRecord {
    pub const LEN: u16 = core::mem::size_of::<PolicyVerdictRecord>() as u16;
    /// Events one record stands for (the decision and [`Self::packet_event`]), as the kernel counts
    /// what it wrote or lost.
    pub const EVENTS: u64 = 2;

    /// What became of the decided packet, which this record stands for as well (the programs write one
    /// record per decision, not two): for `ALLOWED` and `AUDIT`, its trace as a new connection at the
    /// endpoint; for `DENIED`, its drop by policy. Both as the programs wrote them before version 4.
    pub fn packet_event(&self) -> PacketEvent {
        if self.verdict == crate::policy::verdict::DENIED {
            PacketEvent::Drop(DropRecord {
                header: RecordHeader {
                    record_type: record_type::DROP,
                    version: DROP_RECORD_VERSION,
                    len: DropRecord::LEN,
                    ..self.header
                },
                flow: self.flow,
                endpoint_id: self.endpoint_id,
                direction: self.direction,
                reason: crate::drop_reason::POLICY_DENIED,
                remote_identity: self.remote_identity,
                ifindex: self.ifindex,
                pkt_len: self.pkt_len,
                revision: self.revision,
                _pad: 0,
            })
        } else {
            let observation_point = if self.direction == crate::policy::direction::EGRESS {
                observation_point::FROM_ENDPOINT
            } else {
                observation_point::TO_ENDPOINT
            };
            PacketEvent::Trace(TraceRecord {
                header: RecordHeader {
                    record_type: record_type::TRACE,
                    version: RECORD_VERSION,
                    len: TraceRecord::LEN,
                    ..self.header
                },
                flow: self.flow,
                endpoint_id: self.endpoint_id,
                observation_point,
                ct_state: ct_state::NEW,
                ifindex: self.ifindex,
                pkt_len: self.pkt_len,
                remote_identity: self.remote_identity,
            })
        }
    }
}

/// The second event a policy-verdict record stands for ([`PolicyVerdictRecord::packet_event`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketEvent {
    Trace(TraceRecord),
    Drop(DropRecord),
}

/// A dropped packet (record type [`record_type::DROP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropRecord {
    pub header: RecordHeader,
    pub flow: FlowTuple,
    pub endpoint_id: u16,
    /// `policy::direction`.
    pub direction: u8,
    /// One of [`crate::drop_reason`].
    pub reason: u8,
    pub remote_identity: u32,
    pub ifindex: u32,
    pub pkt_len: u32,
    /// The policy revision (`Config::PolicyRevision`) a drop was decided under; for
    /// [`crate::drop_reason::CONNECTION_REVOKED`], the revision that revoked the connection.
    pub revision: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<DropRecord>() == 80);

impl DropRecord {
    pub const LEN: u16 = core::mem::size_of::<DropRecord>() as u16;
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for TraceRecord {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyVerdictRecord {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for DropRecord {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RecordHeader {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowTuple {}
