//! `flowgate demo` end to end, without a terminal: it brings up the walkthrough lab and the agent, the
//! traffic generator makes allowed and denied connections, the monitor on the database prints verdicts
//! naming the walkthrough's policies, and when it ends nothing of the lab is left.

use std::path::Path;

use flowgate_tests::{assert_nothing_left, flowgate, require_root};

#[test]
fn demo_shows_allowed_and_denied_verdicts_for_the_database_and_cleans_up() {
    require_root();
    let name = format!("demo-{}", std::process::id());
    let machine_log = Path::new("/var/log/flowgate/verdicts.jsonl");
    let machine_log_before = std::fs::metadata(machine_log).ok().map(|m| (m.len(), m.modified().ok()));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out = flowgate(&[
        "demo",
        "--name",
        &name,
        "--topology",
        examples.join("demo-lab.yaml").to_str().unwrap(),
        "--policies",
        examples.join("policies").to_str().unwrap(),
        "--duration",
        "5",
        "-o",
        "text",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let verdicts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("Policy verdict:")).collect();
    let allowed_backend = verdicts.iter().any(|l| {
        l.contains("(default/database)")
            && l.contains("component=backend")
            && l.contains("action allow")
            && l.contains("policy default/network-policy-walkthrough-db")
    });
    let denied_frontend = verdicts.iter().any(|l| {
        l.contains("component=frontend") && l.contains("action deny") && l.contains("default deny (isolated by")
    });
    let allowed_outside = verdicts.iter().any(|l| l.contains("cidr:10.200.0.250/32") && l.contains("action allow"));
    assert!(allowed_backend, "backend -> database allowed by the walkthrough policy:\n{stdout}");
    assert!(denied_frontend, "frontend -> database denied by the default deny:\n{stdout}");
    assert!(allowed_outside, "the outside host is allowed by its ipBlock:\n{stdout}");
    assert!(
        stdout.lines().all(|l| l.contains("default/database") || l.contains("10.200.0.10") || l.starts_with("Lost")),
        "the monitor shows only the database's events:\n{stdout}"
    );
    // The demo's agent kept its files in the lab's directory and its metrics off the default port.
    let lab_dir = format!("/{name}/");
    let said = |what: &str| stderr.lines().any(|l| l.contains(&format!("{what} /")) && l.contains(&lab_dir));
    assert!(said("verdict log") && said("socket"), "the demo says where its files are, in its lab:\n{stderr}");
    assert!(!stderr.contains(":9965/"), "the demo's metrics take a free port, not the default:\n{stderr}");
    let machine_log_after = std::fs::metadata(machine_log).ok().map(|m| (m.len(), m.modified().ok()));
    assert_eq!(machine_log_before, machine_log_after, "the machine's verdict log is untouched");
    assert_nothing_left(&name, None);
}
