//! `flowgate-bench-footprint [--quick] [--out DIR]`: the agent's start-up, memory (process and kernel maps) and CPU
//! on a real lab, its event path's CPU at 100k events/s, and the TUI's CPU when fed 100k events/s.
//! Prints its rows and writes `bench/results.d/footprint.json`. Run as root (labs, kernel programs).

use flowgate_benchmarks::footprint;

fn main() -> anyhow::Result<()> {
    let steal = flowgate_benchmarks::machine::StealMeter::start();
    // The lab's port server is this binary started again (flowgate_lab::lab::up spawns it).
    flowgate_lab::server::run_if_requested();
    let options = flowgate_benchmarks::RunOptions::from_args()?;
    let quick = options.quick;
    println!("footprint{}", if quick { " (quick)" } else { "" });
    let mut section = footprint::measure(quick)?;
    flowgate_benchmarks::machine::push_neighbours(&mut section, &steal);
    let path = section.write(&options.out)?;
    println!("written: {}", path.display());
    Ok(())
}
