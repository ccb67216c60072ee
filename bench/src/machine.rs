//! What the machine's neighbours take while a section runs: the load average, and the CPU time the
//! hypervisor gives to other guests instead of this one (steal). This machine is a shared virtual machine:
//! a figure taken while the host stole a tenth of the CPU says more about the neighbours than about
//! flowgate, so every section reports both beside its figures.

use std::time::Instant;

use crate::report::{Figure, Section};

/// Ends a section with what the neighbours took while it ran: the load average at its end and the steal
/// since `steal` started (at the start of the section).
pub fn push_neighbours(section: &mut Section, steal: &StealMeter) {
    section.push(load_figure());
    section.push(steal.figure());
}

/// The 1-minute load average (`/proc/loadavg`): the machine is shared, and a figure taken with 20
/// runnable tasks on 2 cores says more about the neighbours than about flowgate.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// A figure with the load average at the end of a section, to read its other figures by.
pub fn load_figure() -> Figure {
    Figure::new("machine load average (1 min) when the section finished", load_average(), "tasks")
        .note("runnable tasks on this machine's cores; above the core count, every figure here is slowed by neighbours")
}

/// The machine's CPU time so far, all cores together, in clock ticks (`USER_HZ`): the first line of
/// `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every field of the line (user, nice, system, idle, iowait, irq, softirq, steal), guest time
    /// apart: the kernel counts it inside user and nice already.
    pub total: u64,
    /// Time the hypervisor ran something else while this guest's virtual CPUs wanted to run.
    pub steal: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat`; `None` where it cannot be read or has no steal field (not a Linux guest).
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The aggregate `cpu` line of `/proc/stat` text.
    pub fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
        let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let steal = *fields.get(7)?;
        Some(Self { total: fields.iter().take(8).sum(), steal })
    }

    /// The share of the CPU time from `self` to `later` that was stolen, in percent; `None` when no time
    /// passed between the two readings.
    pub fn steal_percent_until(self, later: Self) -> Option<f64> {
        let total = later.total.checked_sub(self.total).filter(|t| *t > 0)?;
        Some(later.steal.saturating_sub(self.steal) as f64 * 100.0 / total as f64)
    }
}

/// Steal measured from its creation on: [`StealMeter::percent`] is the share of the machine's CPU time
/// stolen since.
#[derive(Clone, Copy, Debug)]
pub struct StealMeter {
    start: Option<CpuTimes>,
    started: Instant,
}

impl StealMeter {
    pub fn start() -> Self {
        Self { start: CpuTimes::now(), started: Instant::now() }
    }

    /// Percent of the CPU time since [`StealMeter::start`] that the host stole; `None` where `/proc/stat`
    /// has no steal field or too little time passed (a tick is 10 ms).
    pub fn percent(&self) -> Option<f64> {
        self.start?.steal_percent_until(CpuTimes::now()?)
    }

    /// A figure with the steal since the start: what the neighbours took from this section's figures.
    pub fn figure(&self) -> Figure {
        Figure::new("host steal time while the section ran", self.percent().unwrap_or(0.0), "% of CPU time").note(
            format!(
                "CPU time the hypervisor gave to other guests while this one wanted to run, over {:.0} s, all \
                 cores (/proc/stat); every rate here is measured on what was left",
                self.started.elapsed().as_secs_f64()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  246373 0 62910 160027 2231 0 36480 5604 0 0\n\
                        cpu0 121511 0 32590 75477 437 0 27795 3010 0 0\n\
                        cpu1 124861 0 30320 84549 1794 0 8684 2594 0 0\n\
                        intr 123\n";

    #[test]
    fn the_aggregate_line_gives_total_and_steal() {
        let t = CpuTimes::parse(STAT).expect("parsed");
        assert_eq!(t.steal, 5604);
        assert_eq!(t.total, 246373 + 62910 + 160027 + 2231 + 36480 + 5604);
    }

    #[test]
    fn steal_is_a_share_of_the_time_between_two_readings() {
        let before = CpuTimes { total: 1000, steal: 10 };
        let after = CpuTimes { total: 1400, steal: 110 };
        assert_eq!(before.steal_percent_until(after), Some(25.0));
        assert_eq!(before.steal_percent_until(before), None, "no time passed");
    }

    #[test]
    fn a_line_without_steal_is_not_read_as_zero() {
        assert_eq!(CpuTimes::parse("cpu  1 2 3 4\n"), None);
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8\n"), None, "a per-core line is not the aggregate");
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }
}
