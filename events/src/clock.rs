//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Converts monotonic kernel timestamps to wall-clock time with an offset taken once.
#[derive(Clone, Copy, Debug)]
pub struct KtimeClock {
    /// Wall-clock nanoseconds since the epoch minus monotonic nanoseconds, at creation.
    offset_ns: i128,
}

impl KtimeClock {
    pub fn new() -> Self {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        Self { offset_ns: wall - i128::from(monotonic_ns()) }
    }

    /// Nanoseconds since the Unix epoch of a kernel timestamp.
    pub fn to_unix_ns(&self, ktime_ns: u64) -> u64 {
        u64::try_from(i128::from(ktime_ns) + self.offset_ns).unwrap_or(0)
    }

    /// Wall-clock time of a kernel timestamp.
    pub fn to_wall(&self, ktime_ns: u64) -> SystemTime {
        let ns = i128::from(ktime_ns) + self.offset_ns;
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
    }
}

impl Default for KtimeClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Current CLOCK_MONOTONIC in nanoseconds, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64
}
