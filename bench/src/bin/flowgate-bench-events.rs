//! `flowgate-bench-events [--quick]`: events end to end (kernel programs -> reader -> hub -> unix socket
//! -> client processes) over the ring buffer and the perf event array, and the verdict log alone. Prints
//! its rows and writes `bench/results.d/events.json`. Run as root (it loads the kernel programs).

use flowgate_benchmarks::{events, report};

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("events end to end{}", if quick { " (quick)" } else { "" });
    let section = events::measure(quick)?;
    let path = section.write(&report::results_dir())?;
    println!("written: {}", path.display());
    Ok(())
}
