//! `flowgate-bench-propagation [--quick]`: from a policy file written to the first packet it decides,
//! on a small node and at 1,000 policies over 500 endpoints. Prints its rows and writes
//! `bench/results.d/propagation.json`. Run as root (it loads the kernel programs).

use flowgate_benchmarks::{propagation, report};

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("policy propagation{}", if quick { " (quick)" } else { "" });
    let section = propagation::measure(quick)?;
    let path = section.write(&report::results_dir())?;
    println!("written: {}", path.display());
    Ok(())
}
