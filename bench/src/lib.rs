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
pub mod machine;
pub mod propagation;
pub mod propagation_api;
pub mod propagation_knp;
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
#[derive(Clone, Debug, clap::Parser)]
#[command(about = "A section of flowgate's benchmarks (`make bench` runs them all; see docs/benchmarks.md)")]
pub struct RunOptions {
    /// A short run for the smoke tests: the figures are not meaningful
    #[arg(long)]
    pub quick: bool,
    /// Where `results.d/<section>.json` is written
    #[arg(long, default_value_os_t = report::results_dir())]
    pub out: std::path::PathBuf,
}

impl RunOptions {
    /// The options of this process's command line; `--help` prints them and exits, a wrong argument
    /// exits with clap's message.
    pub fn from_args() -> anyhow::Result<Self> {
        Ok(<Self as clap::Parser>::parse())
    }
}

/// The arguments that start `flowgate-agent` with the outputs it has by default, each in a place of the run's
/// own rather than the machine's: its verdict log written under `dir`, its metrics served on a free loopback
/// port. (The tests' `AgentGuard` turns both off unless they are given.)
pub fn agent_default_outputs(dir: &std::path::Path) -> Vec<String> {
    vec![
        "--verdict-log".to_owned(),
        dir.join("verdicts.jsonl").display().to_string(),
        "--metrics-addr".to_owned(),
        format!("127.0.0.1:{}", flowgate_tests::free_port()),
    ]
}
