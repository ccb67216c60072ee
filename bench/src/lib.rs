//! flowgate's benchmark suite. Each section (datapath, traffic, events, latency, propagation,
//! footprint) is a binary that measures, prints its own rows and writes them with [`report::Section`]
//! to `bench/results.d/<section>.json`; `flowgate-bench-report` joins the sections into
//! `bench/results.json` and prints one table. Benchmarks measure and print: they never assert a time,
//! and a missed target is reported next to its figure (`docs/benchmarks.md` says why and what would
//! close it).

pub mod events;
pub mod events_agent;
pub mod events_clients;
pub mod footprint;
pub mod latency;
pub mod propagation;
pub mod report;

/// The median of `values` (the upper one of an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
