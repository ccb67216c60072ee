//! `flowgate demo` end to end, without a terminal: it brings up the walkthrough lab and the agent, the
//! traffic generator makes allowed and denied connections, the monitor on the database prints verdicts
//! naming the walkthrough's policies, and when it ends nothing of the lab is left.

use std::path::Path;

use flowgate_tests::{assert_nothing_left, flowgate, require_root};

#[test]
fn demo_shows_allowed_and_denied_verdicts_for_the_database_and_cleans_up() {
    require_root();
    let name = format!("demo-{}", std::process::id());
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
    assert_nothing_left(&name, None);
}
