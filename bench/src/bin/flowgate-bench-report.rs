//! `flowgate-bench-report`: joins the sections in `bench/results.d/` into `bench/results.json` and
//! prints the one table of the run.

use anyhow::Context as _;
use flowgate_benchmarks::report;

fn main() -> anyhow::Result<()> {
    let dir = report::results_dir();
    let results = report::join(&dir)?;
    let path = dir.join("results.json");
    let json = serde_json::to_string_pretty(&results).context("encoding the results")?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    print!("{}", report::table(&results));
    println!("\nwritten: {}", path.display());
    Ok(())
}
