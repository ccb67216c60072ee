//! `flowgate-bench-propagation [--quick] [--out DIR]`: from a policy file written to the first packet it decides,
//! on a small node and at 1,000 policies over 500 endpoints. Prints its rows and writes
//! `bench/results.d/propagation.json`. Run as root (it loads the kernel programs).

use flowgate_benchmarks::propagation;

fn main() -> anyhow::Result<()> {
    let options = flowgate_benchmarks::RunOptions::from_args()?;
    let quick = options.quick;
    println!("policy propagation{}", if quick { " (quick)" } else { "" });
    let mut section = propagation::measure(quick)?;
    section.push(flowgate_benchmarks::load_figure());
    let path = section.write(&options.out)?;
    println!("written: {}", path.display());
    Ok(())
}
