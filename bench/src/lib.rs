//! flowgate's benchmark suite. Each section (datapath, traffic, events, latency, propagation,
//! footprint) is a binary that measures, prints its own rows and writes them with [`report::Section`]
//! to `bench/results.d/<section>.json`; `flowgate-bench-report` joins the sections into
//! `bench/results.json` and prints one table. Benchmarks measure and print: they never assert a time,
//! and a missed target is reported next to its figure (`docs/benchmarks.md` says why and what would
//! close it).

pub mod datapath;
pub mod report;
pub mod traffic;
