//! `flowgate-bench-events [--quick] [--out DIR]`: events end to end (kernel programs -> reader -> hub -> unix socket
//! -> client processes) over the ring buffer and the perf event array, and the verdict log alone. Prints
//! its rows and writes `bench/results.d/events.json`. Run as root (it loads the kernel programs).

use flowgate_benchmarks::events;

fn main() -> anyhow::Result<()> {
    let steal = flowgate_benchmarks::machine::StealMeter::start();
    let options = flowgate_benchmarks::RunOptions::from_args()?;
    let quick = options.quick;
    println!("events end to end{}", if quick { " (quick)" } else { "" });
    let mut section = events::measure(quick)?;
    flowgate_benchmarks::machine::push_neighbours(&mut section, &steal);
    let path = section.write(&options.out)?;
    println!("written: {}", path.display());
    Ok(())
}
