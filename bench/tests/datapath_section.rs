//! The datapath section runs end to end on the real kernel programs (a `--quick` run: figures that mean
//! nothing, rows that must all be there) and writes its section file.

use flowgate_benchmarks::report::Section;

#[test]
fn a_quick_datapath_run_writes_every_row_of_its_section() {
    // SAFETY: getuid has no preconditions and cannot fail.
    assert!(unsafe { libc::getuid() } == 0, "the datapath benchmark loads eBPF programs: run the tests as root");
    let dir = std::env::temp_dir().join(format!("flowgate-bench-datapath-{}", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate-bench-datapath"))
        .arg("--quick")
        .arg("--out")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run flowgate-bench-datapath");
    assert!(status.success(), "flowgate-bench-datapath --quick failed: {status}");
    let text = std::fs::read_to_string(dir.join("results.d/datapath.json")).expect("the section file");
    let section: Section = serde_json::from_str(&text).expect("a section");
    let names: Vec<&str> = section.figures.iter().map(|f| f.name.as_str()).collect();
    for row in [
        "floor: a program that only returns",
        "established, IPv4, 2 entries, 10 endpoints",
        "established, IPv6, 2 entries, 10 endpoints",
        "new allowed + verdict record, IPv4, 2 entries, 10 endpoints",
        "new denied + verdict record, IPv6, 101 entries, 10 endpoints",
        "new allowed from a CIDR peer, IPv4, 101 entries, 10 endpoints",
        "later fragment, IPv4, 101 entries, 10 endpoints",
        "established, 101 / 2 entries, 10 endpoints",
        "agent: conntrack walk of 10000 entries (status, the collector's read)",
        "agent: conntrack collection of 10000 expired entries",
    ] {
        assert!(names.contains(&row), "no row {row:?} in {names:#?}");
    }
    // What the neighbours took (the load average, the host's steal) may be nothing; every figure of the
    // section's own is a cost or a ratio above zero.
    let neighbours =
        ["machine load average (1 min) when the section finished", "host steal time while the section ran"];
    for name in neighbours {
        assert!(names.contains(&name), "no row {name:?} in {names:#?}");
    }
    for f in &section.figures {
        let least = if neighbours.contains(&f.name.as_str()) { 0.0 } else { f64::MIN_POSITIVE };
        assert!(f.value.is_finite() && f.value >= least, "{}: {}", f.name, f.value);
        assert_eq!(f.met.is_some(), f.target.is_some(), "{}: a target and whether it was met go together", f.name);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
