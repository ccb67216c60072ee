//! flowgate's benchmark suite. Each section (datapath, traffic, events, latency, propagation,
//! footprint) is a binary that measures, prints its own rows and writes them with [`report::Section`]
//! to `bench/results.d/<section>.json`; `flowgate-bench-report` joins the sections into
//! `bench/results.json` and prints one table. Benchmarks measure and print: they never assert a time,
//! and a missed target is reported next to its figure (`docs/benchmarks.md` says why and what would
//! close it).

pub mod datapath;
pub mod events;
pub mod events_agent;
pub mod events_clients;
pub mod footprint;
pub mod latency;
pub mod propagation;
pub mod propagation_api;
pub mod report;
pub mod traffic;

/// The median of `values` (the upper one of an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The command line every section binary takes: `--quick` (a short run, for the smoke test: the
/// figures are not meaningful) and `--out DIR` (where `results.d/` is written; default `bench/`).
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub quick: bool,
    pub out: std::path::PathBuf,
}

impl RunOptions {
    pub fn from_args() -> anyhow::Result<Self> {
        let mut options = Self { quick: false, out: report::results_dir() };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--out" => options.out = args.next().ok_or_else(|| anyhow::anyhow!("--out needs a directory"))?.into(),
                other => anyhow::bail!("unknown argument {other:?}; expected --quick or --out DIR"),
            }
        }
        Ok(options)
    }
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
pub fn load_figure() -> report::Figure {
    report::Figure::new("machine load average (1 min) when the section finished", load_average(), "tasks")
        .note("runnable tasks on this machine's cores; above the core count, every figure here is slowed by neighbours")
}
