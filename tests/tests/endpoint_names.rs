//! Endpoints by name against a real agent on a real lab (`lab-netpol.yaml`: pods a, b, c in each of the
//! namespaces x, y, z): `namespace/pod` and a pod name only one namespace has are resolved over the agent's
//! socket by `endpoint get/config`, `policy get --endpoint` and the monitor's `--from/--to/--related-to`; an
//! ambiguous or unknown name fails with one line listing the candidates. Run as root (`make test`).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flowgate_tests::{
    LabGuard, TempDir,
    agent::{AgentGuard, SocketDir},
    example, flowgate, flowgate_bin, flowgate_ok, require_root,
};
use serde_json::Value;

/// Isolates x/a for ingress, so that `endpoint config x/a audit=on` shows (enforcement becomes audit).
const ISOLATE_XA: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: isolate-a
  namespace: x
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Ingress]
";

struct Setup {
    lab: LabGuard,
    _sockets: SocketDir,
    _policies: TempDir,
    agent: AgentGuard,
}

impl Setup {
    fn new(tag: &str) -> Self {
        require_root();
        let lab = LabGuard::up(tag, &example("lab-netpol.yaml"));
        let sockets = SocketDir::new(tag);
        let policies = TempDir::new(&format!("{tag}-policies"));
        std::fs::write(policies.path().join("isolate-a.yaml"), ISOLATE_XA).unwrap();
        let agent =
            AgentGuard::start(&lab.name, &sockets.socket("agent"), &["--policies", policies.path().to_str().unwrap()]);
        Self { lab, _sockets: sockets, _policies: policies, agent }
    }

    fn socket(&self) -> &str {
        self.agent.socket.to_str().expect("utf-8 path")
    }

    /// `flowgate ARGS --socket S`, which must succeed.
    fn ok(&self, args: &[&str]) -> String {
        flowgate_ok(&[args, &["--socket", self.socket()]].concat())
    }

    /// `flowgate ARGS --socket S`, which must fail: its one line of error.
    fn fails(&self, args: &[&str]) -> String {
        let out = flowgate(&[args, &["--socket", self.socket()]].concat());
        assert!(!out.status.success(), "flowgate {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        stderr
    }

    /// The id `endpoint list` gives `namespace/pod`.
    fn id(&self, pod: &str) -> u64 {
        let list: Value = serde_json::from_str(&self.ok(&["endpoint", "list", "-o", "json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| format!("{}/{}", e["namespace"].as_str().unwrap(), e["pod_name"].as_str().unwrap()) == pod)
            .unwrap_or_else(|| panic!("no {pod} in {list}"))["id"]
            .as_u64()
            .unwrap()
    }
}

#[test]
fn endpoint_and_policy_commands_take_names_and_list_candidates_when_a_name_fails() {
    let setup = Setup::new("names");
    let (xa, yb) = (setup.id("x/a"), setup.id("y/b"));

    let got: Value = serde_json::from_str(&setup.ok(&["endpoint", "get", "x/a"])).unwrap();
    assert_eq!((got["id"].as_u64(), &got["namespace"], &got["pod_name"]), (Some(xa), &"x".into(), &"a".into()));
    let by_id: Value = serde_json::from_str(&setup.ok(&["endpoint", "get", &xa.to_string()])).unwrap();
    assert_eq!(got, by_id, "by name and by id: the same endpoint");

    let ambiguous = setup.fails(&["endpoint", "get", "a"]);
    assert!(ambiguous.starts_with("flowgate: endpoint name \"a\" is ambiguous: "), "{ambiguous}");
    for pod in ["x/a", "y/a", "z/a"] {
        assert!(ambiguous.contains(&format!("{} ({pod})", setup.id(pod))), "{pod} is a candidate: {ambiguous}");
    }
    assert!(ambiguous.ends_with("give it as NAMESPACE/POD or by id"), "{ambiguous}");
    let unknown = setup.fails(&["endpoint", "get", "x/d"]);
    assert!(unknown.starts_with("flowgate: no endpoint named \"x/d\" on this agent; known endpoints: "), "{unknown}");
    assert!(unknown.contains(&format!("{yb} (y/b)")), "{unknown}");
    let unknown_id = setup.fails(&["endpoint", "get", "999"]);
    assert!(unknown_id.starts_with("flowgate: no endpoint 999 on this agent; known endpoints: "), "{unknown_id}");

    let policy: Value = serde_json::from_str(&setup.ok(&["policy", "get", "--endpoint", "y/b", "-o", "json"])).unwrap();
    let ids: Vec<u64> = policy.as_array().unwrap().iter().map(|p| p["endpoint_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![yb], "policy get --endpoint y/b is that endpoint only: {policy}");
    let ambiguous = setup.fails(&["policy", "get", "--endpoint", "b"]);
    assert!(ambiguous.contains("is ambiguous"), "{ambiguous}");
    let conntrack: Value =
        serde_json::from_str(&setup.ok(&["conntrack", "list", "--endpoint", "y/b", "-o", "json"])).unwrap();
    assert!(conntrack.is_array(), "conntrack list --endpoint y/b: {conntrack}");
    let unknown = setup.fails(&["conntrack", "list", "--endpoint", "y/z"]);
    assert!(unknown.contains("no endpoint named \"y/z\""), "{unknown}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while serde_json::from_str::<Value>(&setup.ok(&["endpoint", "get", "x/a"])).unwrap()["ingress_enforcement"]
        != "enabled"
    {
        assert!(Instant::now() < deadline, "x/a not isolated within 30s:\n{}", setup.agent.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    let configured = setup.ok(&["endpoint", "config", "x/a", "audit=on"]);
    assert!(configured.starts_with(&format!("endpoint {xa} (x/a): policy enforcement")), "{configured}");
    let got: Value = serde_json::from_str(&setup.ok(&["endpoint", "get", &xa.to_string()])).unwrap();
    assert_eq!(got["ingress_enforcement"], "audit", "the named endpoint was configured: {got}");
    let ambiguous = setup.fails(&["endpoint", "config", "c", "audit=off"]);
    assert!(ambiguous.contains("is ambiguous"), "{ambiguous}");

    // The verdict log is read without the agent, but a name is resolved by it.
    let export = setup.fails(&["verdicts", "export", "--log", "/nonexistent/verdicts.jsonl", "--from", "x/d"]);
    assert!(export.contains("no endpoint named \"x/d\" on this agent; known endpoints: "), "{export}");
}

#[test]
fn monitor_from_and_to_names_show_only_that_pair() {
    let setup = Setup::new("namesmon");
    let (xa, yb) = (setup.id("x/a"), setup.id("y/b"));
    let failed = setup.fails(&["monitor", "-o", "json", "--related-to", "b"]);
    assert!(failed.contains("endpoint name \"b\" is ambiguous"), "{failed}");

    let mut child = Command::new(flowgate_bin())
        .args(["monitor", "-o", "json", "--from", "x/a", "--to", "y/b", "--socket", setup.socket()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start flowgate monitor");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = |from: &str, to: &str| {
        setup.lab.probe(&["--from", from, "--to", to, "--port", "80", "--protocol", "TCP", "--timeout", "500ms"]);
    };
    let seen = loop {
        probe("x/a", "y/b");
        probe("x/c", "y/b");
        probe("x/a", "y/c");
        std::thread::sleep(Duration::from_millis(300));
        let seen = lines.lock().unwrap().clone();
        if seen.len() >= 2 {
            break seen;
        }
        assert!(Instant::now() < deadline, "no flow x/a -> y/b within 30s: {seen:?}\n{}", setup.agent.output());
    };
    let _ = child.kill();
    let _ = child.wait();
    for line in &seen {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v.get("lost_events").is_some() {
            continue;
        }
        let f = &v["flow"];
        assert_eq!((f["source"]["ID"].as_u64(), f["destination"]["ID"].as_u64()), (Some(xa), Some(yb)), "{line}");
    }
}
