//! `flowgate-bench-propagation [--quick] [--out DIR]`: from a policy file written, and from a NetworkPolicy
//! created through the API server, to the first packet it decides, on a small node and at 1,000 policies over
//! 500 endpoints; and kube-network-policies' anchor on real traffic. Prints its rows and writes
//! `bench/results.d/propagation.json`. Run as root (it loads the kernel programs).

use flowgate_benchmarks::{propagation, propagation_api, propagation_knp};

fn main() -> anyhow::Result<()> {
    let steal = flowgate_benchmarks::machine::StealMeter::start();
    let options = flowgate_benchmarks::RunOptions::from_args()?;
    let quick = options.quick;
    println!("policy propagation{}", if quick { " (quick)" } else { "" });
    let mut section = propagation::measure(quick)?;
    propagation_api::measure(quick, &mut section)?;
    propagation_knp::measure(quick, &mut section)?;
    flowgate_benchmarks::machine::push_neighbours(&mut section, &steal);
    let path = section.write(&options.out)?;
    println!("written: {}", path.display());
    Ok(())
}
