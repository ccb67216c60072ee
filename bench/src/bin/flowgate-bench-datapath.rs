//! `flowgate-bench-datapath [--quick]`: the datapath per packet (see `flowgate_benchmarks::datapath`),
//! printed and written to `bench/results.d/datapath.json`. `--quick`: a smoke run (few repeats, the
//! smallest scales) whose figures mean nothing.

use flowgate_benchmarks::{
    datapath::{self, Effort, Scale},
    report::{self, Section},
};

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (effort, scales) = if quick {
        (
            Effort::QUICK,
            vec![Scale { clients: 1, ports: 1, endpoints: 10 }, Scale { clients: 10, ports: 10, endpoints: 10 }],
        )
    } else {
        (Effort::FULL, Scale::matrix())
    };
    println!("datapath per packet (BPF_PROG_TEST_RUN, kernel-timed ns per packet)");
    let mut section = Section::new("datapath");
    datapath::run(&mut section, effort, &scales)?;
    let path = section.write(&report::results_dir())?;
    println!("written: {}", path.display());
    Ok(())
}
