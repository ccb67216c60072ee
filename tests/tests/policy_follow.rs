//! The agent follows its policy directory by change notification: with the poll fallback set to an
//! hour (`--watch-interval-ms 3600000`), a policy renamed into place and a ConfigMap-style `..data`
//! symlink swap are in effect within seconds, which only inotify can explain, and the new policy
//! decides real connections between lab pods.

use std::{
    os::unix::fs::symlink,
    path::Path,
    time::{Duration, Instant},
};

use flowgate_tests::{
    LabGuard, TempDir,
    agent::{AgentGuard, SocketDir},
    example, flowgate_ok, probe_results, require_root,
};

/// Far longer than any wait below: a change seen in time was not found by polling.
const POLL_FALLBACK_MS: &str = "3600000";
/// How long a change may take to be in effect here (a loaded, shared machine; typically milliseconds).
const NOTICED_WITHIN: Duration = Duration::from_secs(5);

fn policy(name: &str, from_ns: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  \
         podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{ns: {from_ns}}}}}}}]\n    \
         ports: [{{port: 80, protocol: TCP}}]\n"
    )
}

/// The names of the policies `status` says are loaded.
fn loaded(agent: &AgentGuard) -> Vec<String> {
    let socket = agent.socket.to_str().expect("utf-8 path");
    let status: serde_json::Value =
        serde_json::from_str(&flowgate_ok(&["status", "--socket", socket, "-o", "json"])).expect("status -o json");
    status["policy"]["loaded"]
        .as_array()
        .expect("loaded")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Waits until exactly `names` are loaded; panics after [`NOTICED_WITHIN`].
fn wait_loaded(agent: &AgentGuard, names: &[&str], what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let now = loaded(agent);
        if now == names {
            return started.elapsed();
        }
        assert!(started.elapsed() < NOTICED_WITHIN, "{what}: not in effect after {NOTICED_WITHIN:?}; loaded {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether TCP 80 of x/a answers `from`, on real traffic.
fn reaches_x_a(lab: &LabGuard, from: &str) -> bool {
    let (report, _) = lab.probe(&["--from", from, "--to", "x/a", "--port", "80"]);
    let results = probe_results(&report);
    assert_eq!(results.len(), 1, "{report}");
    results[0].2
}

fn start_agent(lab: &LabGuard, dir: &Path, sockets: &SocketDir) -> AgentGuard {
    let socket = sockets.socket("agent.sock");
    let args = ["--policies", dir.to_str().expect("utf-8 path"), "--watch-interval-ms", POLL_FALLBACK_MS];
    AgentGuard::start(&lab.name, &socket, &args)
}

#[test]
fn a_policy_renamed_into_place_is_enforced_without_a_poll() {
    require_root();
    let lab = LabGuard::up("follow-rename", &example("lab-netpol.yaml"));
    let policies = TempDir::new("follow-rename-policies");
    let sockets = SocketDir::new("follow-rename");
    let agent = start_agent(&lab, policies.path(), &sockets);
    assert!(reaches_x_a(&lab, "z/a"), "no policy yet: z/a reaches x/a");
    // Written beside, renamed over: nothing half-written is ever in the directory.
    let tmp = policies.path().join(".x-a.yaml.tmp");
    std::fs::write(&tmp, policy("x-a-from-y", "y")).unwrap();
    std::fs::rename(&tmp, policies.path().join("x-a.yaml")).unwrap();
    wait_loaded(&agent, &["x/x-a-from-y"], "the renamed policy");
    assert!(!reaches_x_a(&lab, "z/a"), "the new policy denies z/a -> x/a");
    assert!(reaches_x_a(&lab, "y/a"), "the new policy allows y/a -> x/a");
}

/// A ConfigMap volume as the kubelet writes it: `x-a.yaml -> ..data/x-a.yaml`, `..data -> ..<timestamp>`;
/// an update writes a new timestamped directory and renames a new `..data` link over the old one.
#[test]
fn a_configmap_symlink_swap_is_enforced_without_a_poll() {
    require_root();
    let lab = LabGuard::up("follow-cm", &example("lab-netpol.yaml"));
    let policies = TempDir::new("follow-cm-policies");
    let d = policies.path();
    std::fs::create_dir(d.join("..2026_12_05_00_00_00.1")).unwrap();
    std::fs::write(d.join("..2026_12_05_00_00_00.1/x-a.yaml"), policy("x-a-from-y", "y")).unwrap();
    symlink("..2026_12_05_00_00_00.1", d.join("..data")).unwrap();
    symlink("..data/x-a.yaml", d.join("x-a.yaml")).unwrap();
    let sockets = SocketDir::new("follow-cm");
    let agent = start_agent(&lab, d, &sockets);
    wait_loaded(&agent, &["x/x-a-from-y"], "the first ConfigMap version");
    assert!(!reaches_x_a(&lab, "z/a"), "version 1 denies z/a -> x/a");
    std::fs::create_dir(d.join("..2026_12_05_00_01_00.2")).unwrap();
    std::fs::write(d.join("..2026_12_05_00_01_00.2/x-a.yaml"), policy("x-a-from-z", "z")).unwrap();
    symlink("..2026_12_05_00_01_00.2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    wait_loaded(&agent, &["x/x-a-from-z"], "the swapped ConfigMap version");
    assert!(reaches_x_a(&lab, "z/a"), "version 2 allows z/a -> x/a");
    assert!(!reaches_x_a(&lab, "y/a"), "version 2 denies y/a -> x/a");
}
