//! The kernel's tick, measured: how jiffies map onto CLOCK_MONOTONIC. Conntrack keeps time to the tick
//! (`CtEntry::last_seen_ns`, idle lifetimes of seconds); with the tick and its offset in the configuration
//! (`Config::TickNs`, `Config::TickOffsetNs`) the programs read that time from jiffies, which the verifier
//! inlines as a load, instead of calling `bpf_ktime_get_coarse_ns` on every packet.
//!
//! CONFIG_HZ is not exported to user space, so it is measured the way jiffies move: the `clock` program
//! (run with BPF_PROG_TEST_RUN) reads jiffies and CLOCK_MONOTONIC together, and is run back to back until
//! jiffies has moved on twice; the time between the first sample after one tick and the first after a
//! later one, divided by the ticks between, is the tick. Busy sampling keeps this CPU's tick running
//! (an idle CPU's would stop), so jiffies moves one by one. The result is kept only when it is within 5%
//! of one of the values CONFIG_HZ takes (100, 250, 300, 1000 Hz); otherwise the programs keep the helper.

use std::time::{Duration, Instant};

use flowgate_common::conntrack::tick_time_ns;

/// The values of CONFIG_HZ a kernel is built with.
const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];
/// Ticks between the two samples the tick is measured over.
const TICKS_MEASURED: u64 = 2;
/// Longest the sampling goes on (two ticks at 100 Hz are 20 ms, and the wait for the first one).
const SAMPLING_LIMIT: Duration = Duration::from_millis(200);

/// One reading of the `clock` program: jiffies and CLOCK_MONOTONIC in nanoseconds, read together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSample {
    pub jiffies: u64,
    pub monotonic_ns: u64,
}

/// How jiffies map onto CLOCK_MONOTONIC: `jiffies * tick_ns + offset_ns` (wrapping) is the time of the
/// tick, within a tick of CLOCK_MONOTONIC's coarse reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    /// CONFIG_HZ.
    pub hz: u64,
    /// Nanoseconds per jiffy, as the kernel rounds it (`TICK_NSEC`).
    pub tick_ns: u64,
    /// CLOCK_MONOTONIC minus `jiffies * tick_ns`, in two's complement.
    pub offset_ns: u64,
}

impl Tick {
    /// The time of `jiffies` on CLOCK_MONOTONIC, as the programs compute it.
    pub fn monotonic_ns(&self, jiffies: u64) -> u64 {
        tick_time_ns(jiffies, self.tick_ns, self.offset_ns)
    }
}

/// Why the tick was not measured.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error("running the clock program: {0}")]
    Sample(String),
    #[error("jiffies did not move on {TICKS_MEASURED} times within {SAMPLING_LIMIT:?}")]
    Stalled,
    #[error("a tick of {tick_ns} ns ({hz:.1} Hz) is not within 5% of a CONFIG_HZ of 100, 250, 300 or 1000")]
    Unknown { tick_ns: u64, hz: f64 },
}

/// Measures the tick with `sample` (one run of the `clock` program each).
pub fn measure(mut sample: impl FnMut() -> Result<ClockSample, String>) -> Result<Tick, TickError> {
    let deadline = Instant::now() + SAMPLING_LIMIT;
    let mut next_edge = |after: u64| -> Result<ClockSample, TickError> {
        loop {
            let s = sample().map_err(TickError::Sample)?;
            if s.jiffies >= after {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(TickError::Stalled);
            }
        }
    };
    let start = next_edge(0)?;
    let first = next_edge(start.jiffies + 1)?;
    let last = next_edge(first.jiffies + TICKS_MEASURED)?;
    from_samples(first, last)
}

/// The tick from two samples, each the first after jiffies moved on.
pub fn from_samples(first: ClockSample, last: ClockSample) -> Result<Tick, TickError> {
    let ticks = last.jiffies.saturating_sub(first.jiffies).max(1);
    let tick_ns = last.monotonic_ns.saturating_sub(first.monotonic_ns) / ticks;
    let hz = 1e9 / tick_ns.max(1) as f64;
    let Some(known) = KNOWN_HZ.into_iter().find(|&k| (hz / k as f64 - 1.0).abs() <= 0.05) else {
        return Err(TickError::Unknown { tick_ns, hz });
    };
    // The kernel's TICK_NSEC: (NSEC_PER_SEC + HZ / 2) / HZ.
    let tick_ns = (1_000_000_000 + known / 2) / known;
    let offset_ns = last.monotonic_ns.wrapping_sub(last.jiffies.wrapping_mul(tick_ns));
    Ok(Tick { hz: known, tick_ns, offset_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples of a kernel at `hz` whose jiffies started at `initial` (as the kernel's INITIAL_JIFFIES, 300 s
    /// before wrapping 32 bits), read every `step_ns` from `start_ns`.
    fn kernel(hz: u64, step_ns: u64, start_ns: u64) -> impl FnMut() -> Result<ClockSample, String> {
        let tick = (1_000_000_000 + hz / 2) / hz;
        let initial = (1u64 << 32) - 300 * hz;
        let mut now = start_ns;
        move || {
            now += step_ns;
            Ok(ClockSample { jiffies: initial + now / tick, monotonic_ns: now })
        }
    }

    #[test]
    fn each_config_hz_is_recognised_and_maps_jiffies_onto_the_monotonic_clock() {
        for hz in KNOWN_HZ {
            let tick = measure(kernel(hz, 1_700, 12_345_678_901)).unwrap();
            assert_eq!((tick.hz, tick.tick_ns), (hz, (1_000_000_000 + hz / 2) / hz));
            // A jiffy maps to the start of its tick: within one tick (and a sample's step) of the clock.
            let now = 98_765_432_109u64;
            let jiffies = (1u64 << 32) - 300 * hz + now / tick.tick_ns;
            let mapped = tick.monotonic_ns(jiffies);
            assert!(mapped <= now + 2_000 && now - mapped <= tick.tick_ns + 2_000, "{hz} Hz: {mapped} for {now}");
        }
    }

    #[test]
    fn a_tick_no_kernel_uses_is_refused_and_a_stalled_clock_gives_up() {
        // 64 Hz (some architectures): not one of the values the programs are given.
        let err = measure(kernel(64, 1_700, 0)).unwrap_err();
        assert!(matches!(err, TickError::Unknown { .. }), "{err}");
        let stalled = measure(|| Ok(ClockSample { jiffies: 7, monotonic_ns: 0 })).unwrap_err();
        assert!(matches!(stalled, TickError::Stalled), "{stalled}");
        let failing = measure(|| Err("EPERM".into())).unwrap_err();
        assert_eq!(failing.to_string(), "running the clock program: EPERM");
    }
}
