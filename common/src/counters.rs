//! Indices into the per-CPU counters map and the runtime settings map.

/// Kernel-side counters, one `u64` per CPU each; the agent sums across CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets seen by `from_endpoint`.
    PacketsFromEndpoint = 0,
    /// Packets seen by `to_endpoint`.
    PacketsToEndpoint = 1,
    /// Records written into the events buffer.
    RecordsWritten = 2,
    /// Records that could not be written (buffer full): the kernel-side loss.
    RecordsLost = 3,
    /// Packets on an interface that is not a registered endpoint.
    UnknownEndpoint = 4,
    /// New connections a policy allowed.
    PolicyAllowed = 5,
    /// New connections no policy allowed (dropped).
    PolicyDenied = 6,
    /// New connections no policy allowed that passed because of audit mode.
    PolicyAudit = 7,
    /// Packets dropped.
    Drops = 8,
    /// Perf-buffer writes refused because the buffer was full; the kernel reports these to the
    /// agent as lost-record notices, so they are not part of `RecordsLost`.
    PerfBufferFull = 9,
    /// Packets leaving an endpoint with a source address that is not the endpoint's (dropped).
    InvalidSource = 10,
    /// IP packets whose headers cannot be read whole (a tiny first fragment, a bad IHL; dropped).
    TruncatedHeader = 11,
    /// Later fragments whose first fragment was not seen (dropped).
    FragmentsWithoutFirst = 12,
    /// ICMP errors that passed because they quote a tracked connection.
    IcmpRelated = 13,
    /// Packets of tracked connections dropped because a newer policy revision no longer allows them.
    Revoked = 14,
    /// ICMPv6 neighbour discovery and multicast listener messages that passed as link control.
    LinkControl = 15,
}

impl Counter {
    /// Number of counter slots; the map's `max_entries`.
    pub const COUNT: u32 = 16;

    pub const ALL: [Counter; 16] = [
        Counter::PacketsFromEndpoint,
        Counter::PacketsToEndpoint,
        Counter::RecordsWritten,
        Counter::RecordsLost,
        Counter::UnknownEndpoint,
        Counter::PolicyAllowed,
        Counter::PolicyDenied,
        Counter::PolicyAudit,
        Counter::Drops,
        Counter::PerfBufferFull,
        Counter::InvalidSource,
        Counter::TruncatedHeader,
        Counter::FragmentsWithoutFirst,
        Counter::IcmpRelated,
        Counter::Revoked,
        Counter::LinkControl,
    ];

    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Counter::PacketsFromEndpoint => "packets_from_endpoint",
            Counter::PacketsToEndpoint => "packets_to_endpoint",
            Counter::RecordsWritten => "records_written",
            Counter::RecordsLost => "records_lost",
            Counter::UnknownEndpoint => "unknown_endpoint",
            Counter::PolicyAllowed => "policy_allowed",
            Counter::PolicyDenied => "policy_denied",
            Counter::PolicyAudit => "policy_audit",
            Counter::Drops => "drops",
            Counter::PerfBufferFull => "perf_buffer_full",
            Counter::InvalidSource => "invalid_source",
            Counter::TruncatedHeader => "truncated_header",
            Counter::FragmentsWithoutFirst => "fragments_without_first",
            Counter::IcmpRelated => "icmp_related",
            Counter::Revoked => "revoked",
            Counter::LinkControl => "link_control",
        }
    }
}

/// Runtime settings the agent writes into the config array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Without a wake-up interval (`WakeupIntervalNs` 0): bytes of unread data in the ring buffer above which
    /// a record wakes the reader; below it, records are submitted without a wake-up and the reader's periodic
    /// drain picks them up (batching). 0: every record wakes the reader.
    WakeupBytes = 0,
    /// Which policy generation (0 or 1) the programs read.
    ActiveGeneration = 1,
    /// Trace aggregation level, see [`aggregation`].
    Aggregation = 2,
    /// Which events buffer the programs write to, see [`events_kind`].
    EventsKind = 3,
    /// Revision of the policy in effect, bumped by the agent after every generation switch; conntrack
    /// entries stamped with another revision are re-checked.
    PolicyRevision = 4,
    /// Non-zero: connections stay allowed when the policy changes (`--keep-established`); entries of an
    /// older revision are re-stamped without a re-check.
    KeepEstablished = 5,
    /// Conntrack idle lifetimes in nanoseconds, see `conntrack::LifetimeClass` (0: never expires).
    CtLifetimeTcp = 6,
    CtLifetimeOther = 7,
    CtLifetimeClose = 8,
    /// Nanoseconds after a ring-buffer wake-up when the next record wakes the reader again, however
    /// little is waiting: bounds how long a record waits for the reader (0: only `WakeupBytes` wakes it).
    WakeupIntervalNs = 9,
    /// The kernel's tick in nanoseconds (1e9 / CONFIG_HZ), as the agent measured it (0: not measured), and
    /// `TickOffsetNs`, CLOCK_MONOTONIC minus jiffies times the tick (two's complement). With both, the
    /// programs tell conntrack's time (`CtEntry::last_seen_ns`) from jiffies, a load the verifier inlines,
    /// instead of calling `bpf_ktime_get_coarse_ns` on every packet; without, they call it.
    TickNs = 10,
    TickOffsetNs = 11,
    /// Non-zero: the programs write no trace records (`--bpf-events-trace-enabled=false`, as Cilium's flag of
    /// that name). Records of decisions (policy verdicts, which also stand for their packet's trace or drop)
    /// and drops are written as ever. 0, the default and what an older agent left: traces as the
    /// aggregation level says.
    TracesOff = 12,
}

/// Trace aggregation levels (`Config::Aggregation`), as Cilium's monitor aggregation.
pub mod aggregation {
    /// A trace record for every packet.
    pub const NONE: u64 = 0;
    /// Every packet leaving an endpoint; entering packets as with `MEDIUM`.
    pub const LOW: u64 = 1;
    /// New connections, and packets whose TCP flags were not yet seen in their direction.
    pub const MEDIUM: u64 = 2;
}

/// Events buffers (`Config::EventsKind`).
pub mod events_kind {
    pub const RINGBUF: u64 = 0;
    pub const PERF: u64 = 1;
}

impl Config {
    pub const COUNT: u32 = 16;

    pub const fn index(self) -> u32 {
        self as u32
    }
}
