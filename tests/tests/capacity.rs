//! Capacity is a checked limit: an agent with a small policy map (`--policy-map-entries 64`) enforces a
//! set that fits, refuses one that does not (named in `status` with both numbers, before anything is
//! written), and the last good set goes on deciding real connections between lab pods. A set that fits
//! again is applied, and a restarted agent keeps the size the pinned maps were created with.

use std::time::{Duration, Instant};

use flowgate_tests::{
    LabGuard, TempDir, agent::AgentGuard, agent::SocketDir, example, flowgate_ok, probe_results, require_root,
};
use serde_json::Value;

/// x/a takes TCP 80 from namespace y only.
const GOOD: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-from-y-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80, protocol: TCP}]
";

/// x/a takes TCP from every pod, and from `blocks` /32 ipBlocks with a rule each (so their identities
/// cannot be shared), on `ports`. Applied, it would let z/a in.
fn open_to_all(blocks: u32, ports: &str) -> String {
    let mut rules = format!("  - from: [{{namespaceSelector: {{}}}}]\n    ports: [{ports}]\n");
    for i in 0..blocks {
        rules.push_str(&format!("  - from: [{{ipBlock: {{cidr: 172.16.0.{}/32}}}}]\n    ports: [{ports}]\n", i + 1));
    }
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: x-a-open, namespace: x}}\nspec:\n  \
         podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n{rules}"
    )
}

fn status(agent: &AgentGuard) -> Value {
    let socket = agent.socket.to_str().expect("utf-8 path");
    serde_json::from_str(&flowgate_ok(&["status", "--socket", socket, "-o", "json"])).expect("status -o json")
}

/// Polls `status` until `done` holds (at most 10 s).
fn wait_status(agent: &AgentGuard, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let now = status(agent);
        if done(&now) {
            return now;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: status is still {:#}", now["policy"]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn loaded(status: &Value) -> Vec<&str> {
    status["policy"]["loaded"].as_array().expect("loaded").iter().filter_map(Value::as_str).collect()
}

fn errors(status: &Value) -> Vec<&str> {
    status["policy"]["errors"].as_array().expect("errors").iter().filter_map(Value::as_str).collect()
}

/// (entries, capacity) of one map in `status`.
fn fill(status: &Value, map: &str) -> (u64, u64) {
    let maps = status["policy"]["maps"].as_array().expect("policy.maps");
    let m = maps.iter().find(|m| m["map"] == map).unwrap_or_else(|| panic!("no {map} in {maps:?}"));
    (m["entries"].as_u64().unwrap(), m["capacity"].as_u64().unwrap())
}

/// Whether TCP 80 of x/a answers `from`, on real traffic.
fn reaches_x_a(lab: &LabGuard, from: &str) -> bool {
    let (report, _) = lab.probe(&["--from", from, "--to", "x/a", "--port", "80"]);
    let results = probe_results(&report);
    assert_eq!(results.len(), 1, "{report}");
    results[0].2
}

#[test]
fn over_capacity_is_refused_and_the_last_good_set_stays_enforced() {
    require_root();
    let lab = LabGuard::up("capacity", &example("lab-netpol.yaml"));
    let policy_dir = TempDir::new("capacity-policies");
    let file = policy_dir.path().join("policy.yaml");
    std::fs::write(&file, GOOD).unwrap();
    let dir = SocketDir::new("capacity");
    let socket = dir.socket("agent.sock");
    let agent = AgentGuard::start(
        &lab.name,
        &socket,
        &["--policies", policy_dir.path().to_str().unwrap(), "--policy-map-entries", "64"],
    );

    let good = wait_status(&agent, "the good set in effect", |s| loaded(s) == ["x/x-a-from-y-only"]);
    assert!(errors(&good).is_empty(), "{good:#}");
    let (good_entries, capacity) = fill(&good, "policy");
    assert_eq!(capacity, 64, "the flag sized the maps");
    assert!(good_entries > 0 && good_entries <= 64, "{good_entries}");
    assert!(!reaches_x_a(&lab, "z/a"), "z/a -> x/a is denied by the good set");
    assert!(reaches_x_a(&lab, "y/a"), "y/a -> x/a is allowed by the good set");

    // Every pod identity and 30 CIDR identities, each with the 15 aligned blocks of ports 2-65535.
    std::fs::write(&file, open_to_all(30, "{port: 2, endPort: 65535, protocol: TCP}")).unwrap();
    let refused = wait_status(&agent, "the refusal", |s| !errors(s).is_empty());
    let error = errors(&refused)[0].to_owned();
    let needs: u64 = error
        .strip_prefix("policy set needs ")
        .and_then(|rest| rest.split_once(" policy entries, capacity 64;"))
        .map(|(n, _)| n.replace(',', "").parse().expect("a number"))
        .unwrap_or_else(|| panic!("the refusal names both numbers: {error}"));
    assert!(needs >= 30 * 15, "{error}");
    assert!(error.contains("the last good set stays in effect"), "{error}");
    assert_eq!(loaded(&refused), ["x/x-a-from-y-only"], "the good set is still the one in effect");
    assert_eq!(refused["policy"]["revision"], good["policy"]["revision"], "nothing was applied");
    assert_eq!(fill(&refused, "policy"), (good_entries, 64));
    // Real traffic: the refused set would let z/a in; the good set still keeps it out.
    assert!(!reaches_x_a(&lab, "z/a"), "z/a -> x/a is still denied after the refusal");
    assert!(reaches_x_a(&lab, "y/a"), "y/a -> x/a is still allowed after the refusal");
    assert!(agent.output().contains("policy not applied: policy set needs"), "{}", agent.output());

    // A set that fits is applied, and the refusal is gone.
    std::fs::write(&file, open_to_all(0, "{port: 80, protocol: TCP}")).unwrap();
    let applied = wait_status(&agent, "the fitting set in effect", |s| loaded(s) == ["x/x-a-open"]);
    assert!(errors(&applied).is_empty(), "{applied:#}");
    assert!(reaches_x_a(&lab, "z/a"), "z/a -> x/a is allowed by the new set");

    // A restarted agent adopts the pinned maps at the size they were created with, whatever its flag says.
    agent.kill_hard();
    let args = ["--policies", policy_dir.path().to_str().unwrap(), "--policy-map-entries", "128"];
    let restarted = AgentGuard::start(&lab.name, &socket, &args);
    let adopted = wait_status(&restarted, "the set in effect after the restart", |s| loaded(s) == ["x/x-a-open"]);
    assert_eq!(fill(&adopted, "policy").1, 64, "the adopted maps keep their size");
    assert!(
        restarted.output().contains("hold 64 entries, not the 128 of --policy-map-entries"),
        "{}",
        restarted.output()
    );
    drop(restarted);
}
