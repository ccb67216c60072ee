//! `flowgate-bench-latency [--quick] [--out DIR]`: kernel timestamp to client receipt, p50/p99/max at a paced 10k
//! and 100k events/s, over the ring buffer and the perf event array. Prints its rows and writes
//! `bench/results.d/latency.json`. Run as root (it loads the kernel programs).

use flowgate_benchmarks::latency;

fn main() -> anyhow::Result<()> {
    let steal = flowgate_benchmarks::machine::StealMeter::start();
    let options = flowgate_benchmarks::RunOptions::from_args()?;
    let quick = options.quick;
    println!("latency{}", if quick { " (quick)" } else { "" });
    let mut section = latency::measure(quick)?;
    flowgate_benchmarks::machine::push_neighbours(&mut section, &steal);
    let path = section.write(&options.out)?;
    println!("written: {}", path.display());
    Ok(())
}
