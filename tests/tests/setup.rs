//! The set-up script is idempotent: on a machine it has already set up, a second run changes nothing,
//! installs nothing, and takes seconds.

use std::{path::Path, process::Command, time::Instant};

use flowgate_tests::require_root;

#[test]
fn setup_script_second_run_skips_every_step() {
    require_root();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh");
    let run = || {
        let started = Instant::now();
        let out = Command::new("bash").arg(&script).output().expect("run scripts/setup.sh");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "setup.sh failed:\n{text}");
        (text, started.elapsed())
    };
    let _first = run();
    let (second, took) = run();
    for step in ["apt-get install", "cargo install", "rustup component add", "rustup toolchain install", "mount -t bpf"]
    {
        assert!(!second.contains(step), "second run did `{step}` again:\n{second}");
    }
    assert!(second.contains("bpf-linker 0.13.0 present"), "{second}");
    println!("second run of setup.sh took {took:?}");
    assert!(took.as_secs() < 30, "second run took {took:?}");
}
