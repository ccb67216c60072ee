//! `flowgate-bench-datapath [--quick] [--out DIR]`: the datapath per packet (see
//! `flowgate_benchmarks::datapath`), printed and written to `bench/results.d/datapath.json` (or under
//! `DIR`). `--quick`: a smoke run (few repeats, the smallest scales) whose figures mean nothing.

use flowgate_benchmarks::{
    RunOptions,
    datapath::{self, Effort, Scale},
    report::Section,
};

fn main() -> anyhow::Result<()> {
    let steal = flowgate_benchmarks::machine::StealMeter::start();
    let options = RunOptions::from_args()?;
    let (effort, scales) = if options.quick {
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
    flowgate_benchmarks::machine::push_neighbours(&mut section, &steal);
    let path = section.write(&options.out)?;
    println!("written: {}", path.display());
    Ok(())
}
