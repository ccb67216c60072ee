//! `flowgate-bench-latency [--quick]`: kernel timestamp to client receipt, p50/p99/max at a paced 10k
//! and 100k events/s, over the ring buffer and the perf event array. Prints its rows and writes
//! `bench/results.d/latency.json`. Run as root (it loads the kernel programs).

use flowgate_benchmarks::{latency, report};

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("latency{}", if quick { " (quick)" } else { "" });
    let section = latency::measure(quick)?;
    let path = section.write(&report::results_dir())?;
    println!("written: {}", path.display());
    Ok(())
}
