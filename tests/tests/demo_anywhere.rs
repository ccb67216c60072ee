//! `flowgate demo` run from a directory with no `examples/` in it: the walkthrough is built into the binary
//! and written to the lab's own directory, the agent enforces it, and an edit there (a policy added while the
//! demo runs) is followed: the frontend, denied at first, is allowed by the new policy.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use flowgate_tests::{LAB_DIR_ENV, TempDir, assert_nothing_left, flowgate_bin, lab_dir, require_root};

const ALLOW_FRONTEND: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-frontend-db
  namespace: default
spec:
  podSelector:
    matchLabels:
      component: database
  ingress:
    - from:
        - podSelector:
            matchLabels:
              component: frontend
";

#[test]
fn demo_runs_from_any_directory_and_follows_edits_of_its_written_out_policies() {
    require_root();
    let name = format!("demo-any-{}", std::process::id());
    let elsewhere = TempDir::new("demo-cwd");
    let child = Command::new(flowgate_bin())
        .args(["demo", "--name", &name, "--duration", "14", "-o", "text"])
        .current_dir(elsewhere.path())
        .env(LAB_DIR_ENV, lab_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flowgate demo");

    // The walkthrough appears in the lab's directory; once the database is denied to the frontend for a few
    // seconds, a policy that allows it is added there.
    let policies = lab_dir().join(&name).join("policies");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !policies.join("network-policy-walkthrough-db.yaml").is_file() {
        assert!(Instant::now() < deadline, "the demo wrote no policies into {}", policies.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab_dir().join(&name).join("demo-lab.yaml").is_file(), "the topology is written out too");
    std::thread::sleep(Duration::from_secs(6));
    std::fs::write(policies.join("allow-frontend-db.yaml"), ALLOW_FRONTEND).expect("add a policy");
    let added_at = Instant::now();

    let out = child.wait_with_output().expect("wait for the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(added_at.elapsed() < Duration::from_secs(30), "the demo ran for its duration only");
    assert!(
        stderr.contains(&format!("policies {}", policies.display())),
        "the demo says where its policies are:\n{stderr}"
    );
    let verdicts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("Policy verdict:")).collect();
    let frontend = |action: &str, policy: &str| {
        verdicts.iter().any(|l| l.contains("component=frontend") && l.contains(action) && l.contains(policy))
    };
    assert!(
        verdicts.iter().any(|l| l.contains("component=backend")
            && l.contains("action allow")
            && l.contains("policy default/network-policy-walkthrough-db")),
        "the built-in walkthrough policy allows the backend:\n{stdout}"
    );
    assert!(frontend("action deny", "default deny (isolated by"), "the frontend is denied at first:\n{stdout}");
    assert!(
        frontend("action allow", "policy default/allow-frontend-db"),
        "the agent followed the policy added to the lab's directory:\n{stdout}"
    );
    assert_nothing_left(&name, None);
    assert!(!lab_dir().join(&name).exists(), "the lab's directory, edits included, is gone");
}
