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
}

impl Counter {
    /// Number of counter slots; the map's `max_entries`.
    pub const COUNT: u32 = 8;

    pub const ALL: [Counter; 5] = [
        Counter::PacketsFromEndpoint,
        Counter::PacketsToEndpoint,
        Counter::RecordsWritten,
        Counter::RecordsLost,
        Counter::UnknownEndpoint,
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
        }
    }
}

/// Runtime settings the agent writes into the config array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Bytes of unread data in the ring buffer above which a record wakes the reader; below it, records
    /// are submitted without a wake-up and the reader's periodic drain picks them up (batching).
    WakeupBytes = 0,
}

impl Config {
    pub const COUNT: u32 = 8;

    pub const fn index(self) -> u32 {
        self as u32
    }
}
