//! A small NetworkPolicy conformance framework shaped like the upstream Kubernetes e2e suite
//! (`test/e2e/network/netpol`): a [`Reachability`] truth table (the lab's) of what should connect, built from
//! "all connected" or "all blocked" plus exceptions; a [`Conformance`] case that owns one lab (the
//! x/y/z × a/b/c model of `examples/lab-netpol.yaml`) and one agent following a policy directory and
//! the lab's topology file (through the API server: one agent per node); and [`Conformance::validate`],
//! which probes the full 9×9 matrix with real traffic through the real datapath and, on any difference,
//! fails with both truth tables, the differences, and every manifest in effect. Every probe is also
//! predicted by `flowgate policy test --all`, offline (from the policy maps the agent would realize for the
//! files and topology, no traffic) and live (from the maps the agent's datapath holds, read back over its
//! socket), and every cell of both predictions, the diagonal included, must equal the probe's.
//!
//! Policies are written atomically (staged outside the watched directory, then renamed in) and every
//! change waits until the agent reports a new policy revision with exactly the expected policy names
//! loaded and no errors, so a probe never races a half-applied set. No sleeps.
//!
//! The diagonal (a pod probing itself) is **not checked**: such a probe goes over the pod's loopback
//! and never crosses the datapath, so it always connects in the lab. Upstream ignores loopback too
//! (`ignoreLoopback`); the tables print it as `-` (expected) and as observed.
//!
//! The same cases run through a real API server (`conformance_api.rs`, where the crate's
//! `THROUGH_API_SERVER` is true) with the pods spread over three nodes ([`NODES`]: every `a` on node-1, `b`
//! on node-2, `c` on node-3, so every namespace spans every node), one agent per node: each case then also
//! owns an etcd and kube-apiserver, the lab's nodes, namespaces and pods are registered on it (each pod bound
//! to its node with the lab's addresses), the agents run with `--kubernetes`, and policies are created,
//! updated and deleted one object at a time, every other change through kube-rs (create, replace, delete)
//! and the rest through `kubectl` (`apply`, `replace`, `delete`); pod labels are changed with `kubectl
//! patch`, namespace labels through kube-rs, and "invalid" means what the API server itself refuses. Every
//! change is waited for on every agent (a new revision with the expected policies; for a label change, first
//! the new labels in each agent's view), the agents must number the pods alike, and the live prediction
//! is each agent's for the pods it hosts: a connection is predicted to connect when the agent of the
//! source's node lets it out and the agent of the destination's node lets it in.
//!
//! Each matrix is probed first with a short timeout (250 ms: a blocked pair waits it out, an admitted one
//! answers within a millisecond in the lab); only when that pass disagrees with the expectation or either
//! prediction is it probed again with the full timeout, and the second pass is what the case is judged by.
//!
//! Set `FLOWGATE_CONFORMANCE_KEEP_GOING=1` to record mismatches and go on probing the remaining steps
//! of a case (the test still fails at its end, with every mismatch), and
//! `FLOWGATE_CONFORMANCE_PROBE_TIMEOUT` (default `1s`) to change the full per-probe timeout.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use flowgate_lab::state::Family;
use flowgate_lab::topology::{NodeSpec, Topology};
use flowgate_proto::{
    client::Client,
    message::{PolicyMaps, Request, Response},
};
use flowgate_tests::{
    LabGuard,
    agent::{AgentGuard, SocketDir, runtime},
    control_plane::ControlPlane,
    example, flowgate, flowgate_ok, kubelet, probe_results, require_root,
};
use k8s_openapi::api::{core::v1::Namespace, networking::v1::NetworkPolicy};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

/// The pods of the model, in the lab's file order.
pub const PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

/// How long the agent may take to put a changed policy set or changed labels in effect.
pub const POLICY_WAIT: Duration = Duration::from_secs(10);
/// The timeout of [`Conformance::validate`]'s first pass of probes (see there); the second pass, only when the
/// first disagrees, takes `FLOWGATE_CONFORMANCE_PROBE_TIMEOUT` (1 s by default).
const QUICK_PROBE_TIMEOUT: &str = "250ms";
/// How often the agent checks its policy directory and topology file (its default is 250 ms).
const WATCH_INTERVAL_MS: &str = "50";

pub use flowgate_lab::topology::Protocol::{self, Tcp, Udp};

/// Every case is probed over both IP versions of the dual-stack lab.
pub const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// The truth table of the model: [`flowgate_lab::Reachability`], the one the lab's probes print.
pub use flowgate_lab::Reachability;

/// Every pod of the model to every pod, all connected or all blocked (upstream's `NewReachability`).
pub fn reachability(connected: bool) -> Reachability {
    Reachability::uniform(&PODS, connected)
}

/// A NetworkPolicy (networking.k8s.io/v1) as written into the agent's policy directory.
#[derive(Clone, Debug)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub spec: Value,
}

/// `NetworkPolicy` `namespace/name` with `spec` (JSON built with `json!`, written as YAML).
pub fn policy(namespace: &str, name: &str, spec: Value) -> Policy {
    assert!(spec.is_object(), "a spec is an object");
    Policy { namespace: namespace.to_owned(), name: name.to_owned(), spec }
}

impl Policy {
    pub fn manifest(&self) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.spec,
        })
    }

    pub fn yaml(&self) -> String {
        to_yaml(&self.manifest())
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Block-style YAML of a JSON value: strings double-quoted (valid YAML, never re-typed), keys plain
/// when that cannot be misread, empty maps and lists as `{}` and `[]`, lists of scalars in flow style.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(value, 0, &mut out);
    out
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => a.iter().any(is_block),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(a) => format!("[{}]", a.iter().map(scalar).collect::<Vec<_>>().join(", ")),
        Value::String(s) => serde_json::to_string(s).expect("a string serializes"),
        other => other.to_string(),
    }
}

fn yaml_key(k: &str) -> String {
    let plain = k.len() > 1
        && k.starts_with(|c: char| c.is_ascii_alphabetic())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && !["true", "false", "yes", "no", "on", "off", "null"].contains(&k.to_ascii_lowercase().as_str());
    if plain { k.to_owned() } else { serde_json::to_string(k).expect("a string serializes") }
}

fn write_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, val) in map {
                let _ = write!(out, "{pad}{}:", yaml_key(k));
                if is_block(val) {
                    out.push('\n');
                    write_yaml(val, indent + 2, out);
                } else {
                    let _ = writeln!(out, " {}", scalar(val));
                }
            }
        }
        Value::Array(items) if is_block(v) => {
            for item in items {
                if is_block(item) {
                    let mut inner = String::new();
                    write_yaml(item, indent + 2, &mut inner);
                    let _ = write!(out, "{pad}- {}", &inner[indent + 2..]);
                } else {
                    let _ = writeln!(out, "{pad}- {}", scalar(item));
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

/// The `policy` part of `flowgate status -o json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyStatus {
    pub revision: u64,
    pub loaded: Vec<String>,
    pub errors: Vec<String>,
}

/// A directory of the test's own (policies, the topology copy, staging), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flowgate-conformance-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the case directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path` atomically: staged in `staging` (same filesystem, not watched), renamed.
fn write_atomically(staging: &Path, path: &Path, text: &str) {
    let name = path.file_name().expect("a file name");
    let staged = staging.join(name);
    std::fs::write(&staged, text).unwrap_or_else(|e| panic!("write {}: {e}", staged.display()));
    std::fs::rename(&staged, path).unwrap_or_else(|e| panic!("rename {} to {}: {e}", staged.display(), path.display()));
}

/// One conformance case: a lab of the x/y/z model and an agent enforcing the policies the case writes.
/// Dropping it stops the agent and brings the lab down (also when the test panics).
pub struct Conformance {
    // Field order is drop order: the agents stop before their lab goes down.
    /// One agent (file source), or one per node (through the API server).
    agents: Vec<NodeAgent>,
    lab: LabGuard,
    /// kube-rs on the API server, for the changes that do not go through `kubectl`.
    kube: Option<KubeClient>,
    /// The API server the policies and labels go through (`THROUGH_API_SERVER`); stops after the agents.
    plane: Option<ControlPlane>,
    /// Object changes made on the API server so far: every other one goes through kube-rs.
    server_changes: usize,
    /// What the API server holds: policy `namespace/name` -> spec.
    on_server: BTreeMap<String, Value>,
    /// Namespaces created on the API server for policies, beyond the lab's.
    extra_namespaces: std::collections::BTreeSet<String>,
    _sockets: SocketDir,
    dir: TempDir,
    policies_dir: PathBuf,
    staging: PathBuf,
    topology_path: PathBuf,
    topology: Topology,
    /// Policy files in the directory and what they hold.
    files: BTreeMap<String, Vec<Policy>>,
    /// Files holding invalid manifests, as written.
    invalid: BTreeMap<String, String>,
    /// Label changes made so far, for failure reports.
    relabels: Vec<String>,
    /// What the case did so far, for failure reports.
    steps: Vec<String>,
    /// Mismatches recorded in keep-going mode.
    failures: Vec<String>,
    keep_going: bool,
    probe_timeout: String,
}

impl Conformance {
    /// Brings up lab `<tag>-<pid>` from a private copy of `examples/lab-netpol.yaml` and starts an agent on
    /// it with an empty policy directory. `tag` must be unique among the tests (at most 12 characters).
    pub fn start(tag: &str) -> Self {
        require_root();
        let dir = TempDir::new(tag);
        let policies_dir = dir.0.join("policies");
        let staging = dir.0.join("staging");
        for d in [&policies_dir, &staging] {
            std::fs::create_dir_all(d).expect("create a case directory");
        }
        let mut topology = Topology::load(&example("lab-netpol.yaml")).expect("the netpol topology loads");
        if crate::THROUGH_API_SERVER {
            spread_over_nodes(&mut topology);
        }
        // JSON is YAML (the lab and the agent read it with the same loader), and leaves no doubt that `y` is a name.
        let topology_path = dir.0.join("topology.json");
        let text = serde_json::to_string_pretty(&topology).expect("the topology serializes");
        std::fs::write(&topology_path, text).expect("write the case's topology");
        let lab = LabGuard::up(tag, &topology_path);
        let pods: Vec<String> = lab.state.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
        assert_eq!(pods, PODS, "the lab has the pods of the model, in order");
        let sockets = SocketDir::new(tag);
        let (plane, kube, agents) = if crate::THROUGH_API_SERVER {
            let plane = ControlPlane::start(tag);
            kubelet::register_lab(&plane, &lab.state, NODES[0].0);
            let rt = runtime();
            let client = rt.block_on(plane.admin_client());
            let kubeconfig = plane.agent_kubeconfig().to_str().expect("utf-8 path").to_owned();
            let node_sockets: Vec<PathBuf> = NODES.iter().map(|&(node, _)| sockets.socket(node)).collect();
            let started = AgentGuard::start_all(NODES.iter().zip(&node_sockets).map(|(&(node, _), socket)| {
                let args =
                    vec!["--lab", lab.name.as_str(), "--kubernetes", "--kubeconfig", &kubeconfig, "--node-name", node];
                (socket.as_path(), args)
            }));
            let agents = NODES
                .iter()
                .zip(started)
                .map(|(&(node, pod_name), agent)| {
                    let pods = PODS.iter().filter(|p| p.ends_with(&format!("/{pod_name}"))).map(|p| (*p).to_owned());
                    NodeAgent::new(Some(node), agent, pods.collect())
                })
                .collect();
            (Some(plane), Some(KubeClient { client, rt }), agents)
        } else {
            let socket = sockets.socket("agent");
            let policies = policies_dir.to_str().expect("utf-8 path");
            let agent = AgentGuard::start(
                &lab.name,
                &socket,
                &["--policies", policies, "--watch-interval-ms", WATCH_INTERVAL_MS],
            );
            (None, None, vec![NodeAgent::new(None, agent, PODS.iter().map(|p| (*p).to_owned()).collect())])
        };
        let mut case = Self {
            agents,
            lab,
            kube,
            plane,
            server_changes: 0,
            on_server: BTreeMap::new(),
            extra_namespaces: std::collections::BTreeSet::new(),
            _sockets: sockets,
            dir,
            policies_dir,
            staging,
            topology_path,
            topology,
            files: BTreeMap::new(),
            invalid: BTreeMap::new(),
            relabels: Vec::new(),
            steps: Vec::new(),
            failures: Vec::new(),
            keep_going: std::env::var_os("FLOWGATE_CONFORMANCE_KEEP_GOING").is_some_and(|v| v != "0"),
            probe_timeout: std::env::var("FLOWGATE_CONFORMANCE_PROBE_TIMEOUT").unwrap_or_else(|_| "1s".to_owned()),
        };
        if case.plane.is_some() {
            case.wait_for_endpoints();
        }
        for agent in &mut case.agents {
            let status = agent.policy_status();
            assert!(
                status.loaded.is_empty() && status.errors.is_empty() && status.revision >= 1,
                "a fresh agent with no policy ({}): {status:?}",
                agent.name()
            );
            agent.revision = status.revision;
        }
        case
    }

    /// Through the API server: waits until every agent has listed the cluster and has exactly the pods of
    /// its node as ready endpoints, and checks that all of them number the pods' label sets alike.
    fn wait_for_endpoints(&self) {
        let started = Instant::now();
        for agent in &self.agents {
            loop {
                let list = agent.endpoints();
                let mut ready: Vec<String> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["state"] == "ready")
                    .map(|e| {
                        format!("{}/{}", e["namespace"].as_str().unwrap_or(""), e["pod_name"].as_str().unwrap_or(""))
                    })
                    .collect();
                ready.sort();
                if ready == agent.pods && agent.policy_status().revision >= 1 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{} did not take its pods {:?} from the API server: {list}\n{}",
                    agent.name(),
                    agent.pods,
                    tail(&agent.agent.output(), 30)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let identities: Vec<BTreeMap<String, u32>> = self
            .agents
            .iter()
            .map(|a| a.policy_maps().pods.iter().map(|p| (format!("{}/{}", p.namespace, p.name), p.identity)).collect())
            .collect();
        assert_eq!(identities[0].len(), PODS.len(), "every agent knows every pod: {identities:?}");
        assert!(identities.iter().all(|i| *i == identities[0]), "the nodes number the pods alike: {identities:?}");
    }

    fn plane(&self) -> &ControlPlane {
        self.plane.as_ref().expect("running through the API server")
    }

    /// `kubectl ARGS...` as admin; `Ok(stdout)` or `Err(stderr)`.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let out = match stdin {
            Some(input) => self.plane().kubectl_stdin(args, input),
            None => self.plane().kubectl(args),
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// `kubectl` that must succeed.
    fn kubectl_ok(&mut self, args: &[&str], stdin: Option<&str>) {
        if let Err(e) = self.kubectl(args, stdin) {
            panic!("kubectl {} failed: {e}\n{}", args.join(" "), self.context());
        }
    }

    /// Whether the next object change goes through kube-rs (every other one does; the rest through kubectl).
    fn next_through_kube_rs(&mut self) -> bool {
        self.server_changes += 1;
        self.server_changes.is_multiple_of(2)
    }

    fn kube(&self) -> &KubeClient {
        self.kube.as_ref().expect("running through the API server")
    }

    /// Creates `policy` (POST) or replaces the whole object (GET for its resourceVersion, then PUT) with kube-rs.
    fn kube_rs_put(&self, policy: &Policy, exists: bool) -> Result<&'static str, String> {
        let KubeClient { client, rt } = self.kube();
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &policy.namespace);
        let object: NetworkPolicy = serde_json::from_value(policy.manifest())
            .map_err(|e| format!("{} as a NetworkPolicy: {e}", policy.key()))?;
        rt.block_on(async {
            if exists {
                let mut current = api.get(&policy.name).await.map_err(|e| format!("kube-rs get: {e}"))?;
                current.spec = object.spec;
                api.replace(&policy.name, &PostParams::default(), &current)
                    .await
                    .map(|_| "kube-rs replace")
                    .map_err(|e| format!("kube-rs replace: {e}"))
            } else {
                api.create(&PostParams::default(), &object)
                    .await
                    .map(|_| "kube-rs create")
                    .map_err(|e| format!("kube-rs create: {e}"))
            }
        })
    }

    fn kube_rs_delete(&self, ns: &str, name: &str) -> Result<(), String> {
        let KubeClient { client, rt } = self.kube();
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
        rt.block_on(api.delete(name, &DeleteParams::default())).map(|_| ()).map_err(|e| format!("kube-rs delete: {e}"))
    }

    /// Through the API server: makes the server hold `wanted` (policy key -> policy) for the keys in `touched`,
    /// one object at a time, waiting after each change until the agent has it in effect.
    fn sync_server(&mut self, wanted: &BTreeMap<String, Policy>, touched: &[String], what: &str) {
        for key in touched {
            match wanted.get(key) {
                Some(policy) if self.on_server.get(key) != Some(&policy.spec) => {
                    let manifest = policy.manifest().to_string();
                    let exists = self.on_server.contains_key(key);
                    if !exists {
                        self.ensure_namespace(&policy.namespace);
                    }
                    // A changed file holds the whole new object: an update replaces it (PUT), as `kubectl
                    // apply` would keep the `policyTypes` the server defaulted at creation when the new spec
                    // has none.
                    let how = match (self.next_through_kube_rs(), exists) {
                        (true, _) => self.kube_rs_put(policy, exists),
                        (false, false) => self.kubectl(&["apply", "-f", "-"], Some(&manifest)).map(|_| "kubectl apply"),
                        (false, true) => {
                            self.kubectl(&["replace", "-f", "-"], Some(&manifest)).map(|_| "kubectl replace")
                        }
                    };
                    let how =
                        how.unwrap_or_else(|e| panic!("writing {key} on the API server: {e}\n{}", self.context()));
                    self.steps.push(format!("{key} {} through {how}", if exists { "updated" } else { "created" }));
                    self.on_server.insert(key.clone(), policy.spec.clone());
                }
                Some(_) => continue,
                None if self.on_server.contains_key(key) => {
                    let (ns, name) = key.split_once('/').expect("namespace/name");
                    let how = if self.next_through_kube_rs() {
                        self.kube_rs_delete(ns, name).map(|()| "kube-rs")
                    } else {
                        self.kubectl(&["delete", "networkpolicy", "-n", ns, name], None).map(|_| "kubectl delete")
                    };
                    let how =
                        how.unwrap_or_else(|e| panic!("deleting {key} on the API server: {e}\n{}", self.context()));
                    self.steps.push(format!("{key} deleted through {how}"));
                    self.on_server.remove(key);
                }
                None => continue,
            }
            let expected: Vec<String> = self.on_server.keys().cloned().collect();
            self.wait_for_revision(expected, &format!("{what}: {key} on the API server"));
        }
    }

    /// Creates namespace `ns` when the lab has none of that name (a policy may sit in a namespace without
    /// pods; the API server wants the namespace first) and waits until the agent has seen it.
    fn ensure_namespace(&mut self, ns: &str) {
        if self.topology.namespaces.iter().any(|n| n.name == ns) || self.extra_namespaces.contains(ns) {
            return;
        }
        self.kubectl_ok(&["create", "namespace", ns], None);
        self.extra_namespaces.insert(ns.to_owned());
        let expected: Vec<String> = self.on_server.keys().cloned().collect();
        self.wait_for_revision(expected, &format!("namespace {ns} created"));
    }

    /// Every policy of every file, by key (the last file wins, as for the directory's names).
    fn wanted_policies(&self) -> BTreeMap<String, Policy> {
        self.files.values().flatten().map(|p| (p.key(), p.clone())).collect()
    }

    /// `text` (YAML as the policy directory would hold it) as JSON, so kubectl's YAML 1.1 reader (a bare
    /// `y` is `true` there) sees what the agent's reader sees; unparsable text is passed as it is.
    fn as_json(text: &str) -> String {
        serde_yaml::from_str::<Value>(text).map_or_else(|_| text.to_owned(), |v| v.to_string())
    }

    /// The address of `pod` ("ns/name") in `family` (the lab is dual-stack).
    pub fn ip(&self, pod: &str, family: Family) -> IpAddr {
        let p = self
            .lab
            .state
            .pods
            .iter()
            .find(|p| format!("{}/{}", p.namespace, p.name) == pod)
            .unwrap_or_else(|| panic!("no pod {pod}"));
        match family {
            Family::Ipv4 => IpAddr::V4(p.ip),
            Family::Ipv6 => IpAddr::V6(p.ipv6.expect("a dual-stack lab gives every pod an IPv6 address")),
        }
    }

    /// `pod`'s address as a host prefix: `ip/32`, `ip/128`.
    pub fn host_cidr(&self, pod: &str, family: Family) -> String {
        match self.ip(pod, family) {
            ip @ IpAddr::V4(_) => format!("{ip}/32"),
            ip @ IpAddr::V6(_) => format!("{ip}/128"),
        }
    }

    /// The lab's pod range in `family`, e.g. `10.200.0.0/24`, `fd00:10:200::/64`.
    pub fn lab_cidr(&self, family: Family) -> String {
        match family {
            Family::Ipv4 => self.lab.state.cidr.to_string(),
            Family::Ipv6 => self.lab.state.ipv6_cidr.expect("a dual-stack lab").to_string(),
        }
    }

    /// The policy status of the file source's agent now.
    pub fn policy_status(&self) -> PolicyStatus {
        assert_eq!(self.agents.len(), 1, "the file source runs one agent");
        self.agents[0].policy_status()
    }

    /// Takes every agent's revision in effect now as the one to count from.
    fn mark_revisions(&mut self) {
        for agent in &mut self.agents {
            agent.revision = agent.policy_status().revision;
        }
    }

    fn expected_loaded(&self) -> Vec<String> {
        let mut names: Vec<String> = self.files.values().flatten().map(Policy::key).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Through the API server: waits until every agent's view of the cluster (the pods and namespaces its
    /// policy maps were compiled from) satisfies `seen`: the change has reached each of them, so that the
    /// revision waited for next is the one that follows it.
    fn wait_for_view(&self, what: &str, seen: impl Fn(&PolicyMaps) -> bool) {
        let started = Instant::now();
        for agent in &self.agents {
            while !seen(&agent.policy_maps()) {
                assert!(
                    started.elapsed() < POLICY_WAIT,
                    "{what}: {} never saw the change\n{}\nagent log (tail):\n{}",
                    agent.name(),
                    self.context(),
                    tail(&agent.agent.output(), 30)
                );
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    fn wait_for_new_revision(&mut self, what: &str) {
        let expected = self.expected_loaded();
        self.wait_for_revision(expected, what);
    }

    /// Waits until every agent reports a revision above its last one, no errors, and `expected` loaded.
    fn wait_for_revision(&mut self, expected: Vec<String>, what: &str) {
        let started = Instant::now();
        let mut revisions = Vec::new();
        for i in 0..self.agents.len() {
            let agent = &self.agents[i];
            let mut last;
            loop {
                last = agent.policy_status();
                if last.revision > agent.revision && last.errors.is_empty() && last.loaded == expected {
                    break;
                }
                if started.elapsed() > POLICY_WAIT {
                    panic!(
                        "{what}: {} did not put it in effect within {POLICY_WAIT:?}: wanted a revision above {} \
                         with loaded {expected:?} and no errors, last status {last:#?}\n{}\nagent log (tail):\n{}",
                        agent.name(),
                        agent.revision,
                        self.context(),
                        tail(&agent.agent.output(), 30)
                    );
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            revisions.push(format!("{} {}", agent.name(), last.revision));
            self.agents[i].revision = last.revision;
        }
        self.steps.push(format!("{what} (revision {})", revisions.join(", ")));
    }

    /// Asserts that no agent's policy changed: the same revision and `expected_loaded` everywhere.
    fn assert_unchanged(&self, what: &str) {
        let expected = self.expected_loaded();
        for agent in &self.agents {
            let status = agent.policy_status();
            assert_eq!(
                (status.revision, &status.loaded),
                (agent.revision, &expected),
                "{what} changed the policy in effect at {}: {status:#?}\n{}",
                agent.name(),
                self.context()
            );
        }
    }

    /// The one agent of the file source.
    fn file_agent(&mut self) -> &mut NodeAgent {
        assert_eq!(self.agents.len(), 1, "the file source runs one agent");
        &mut self.agents[0]
    }

    /// Creates or replaces policy file `file` (several documents separated by `---`) and waits until
    /// the agent has the resulting set in effect. The resulting set must differ from the current one.
    pub fn apply(&mut self, file: &str, policies: &[Policy]) {
        let text = policies.iter().map(Policy::yaml).collect::<Vec<_>>().join("---\n");
        if self.plane.is_some() {
            let mut touched: Vec<String> = self.files.get(file).into_iter().flatten().map(Policy::key).collect();
            touched.extend(policies.iter().map(Policy::key));
            touched.dedup();
            self.files.insert(file.to_owned(), policies.to_vec());
            let wanted = self.wanted_policies();
            self.sync_server(&wanted, &touched, &format!("applied {file}"));
            return;
        }
        self.files.insert(file.to_owned(), policies.to_vec());
        write_atomically(&self.staging, &self.policies_dir.join(file), &text);
        let names: Vec<String> = policies.iter().map(Policy::key).collect();
        self.wait_for_new_revision(&format!("applied {file} [{}]", names.join(", ")));
    }

    /// Removes policy file `file` and waits until the agent has the resulting set in effect.
    pub fn delete(&mut self, file: &str) {
        if self.plane.is_some() {
            let removed = self.files.remove(file).unwrap_or_else(|| panic!("no policy file {file}"));
            let touched: Vec<String> = removed.iter().map(Policy::key).collect();
            let wanted = self.wanted_policies();
            self.sync_server(&wanted, &touched, &format!("deleted {file}"));
            return;
        }
        assert!(self.files.remove(file).is_some(), "no policy file {file}");
        std::fs::remove_file(self.policies_dir.join(file)).expect("remove a policy file");
        self.wait_for_new_revision(&format!("deleted {file}"));
    }

    /// Writes an invalid manifest as `file` and waits until the agent reports errors; the policy in
    /// effect must not change (same revision, same names). Returns the errors.
    pub fn apply_invalid(&mut self, file: &str, text: &str) -> Vec<String> {
        self.invalid.insert(file.to_owned(), text.to_owned());
        if self.plane.is_some() {
            // The API server refuses it; the agent never sees it.
            let Err(refusal) = self.kubectl(&["apply", "-f", "-"], Some(&Self::as_json(text))) else {
                panic!("the API server took the invalid manifest {file}:\n{text}");
            };
            self.assert_unchanged(&format!("the refused manifest {file}"));
            self.steps.push(format!("API server refused invalid {file}: {refusal}"));
            return vec![refusal];
        }
        write_atomically(&self.staging, &self.policies_dir.join(file), text);
        let expected = self.expected_loaded();
        let revision = self.file_agent().revision;
        let started = Instant::now();
        loop {
            let status = self.policy_status();
            assert_eq!(
                (status.revision, &status.loaded),
                (revision, &expected),
                "an invalid manifest ({file}) changed the policy in effect: {status:#?}\n{}",
                self.context()
            );
            if !status.errors.is_empty() {
                self.steps.push(format!("wrote invalid {file}: errors {:?}", status.errors));
                return status.errors;
            }
            assert!(
                started.elapsed() < POLICY_WAIT,
                "the agent did not report an error for the invalid manifest {file} within {POLICY_WAIT:?}:\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Writes `text` (a manifest the API server rejects) as `file`, sees what the agent does, and removes
    /// the file again (waiting until the agent is back to the set before). `Ok(errors)`: rejected, with
    /// the policy in effect unchanged. `Err(what happened)`: taken, or neither within [`POLICY_WAIT`].
    pub fn try_invalid(&mut self, file: &str, text: &str) -> Result<Vec<String>, String> {
        if self.plane.is_some() {
            let json = Self::as_json(text);
            let outcome = match self.kubectl(&["apply", "-f", "-"], Some(&json)) {
                Err(refusal) => Ok(vec![refusal]),
                Ok(_) => {
                    // Taken: remove it again and wait until the agent is back to the set before.
                    let _ = self.kubectl(&["delete", "-f", "-"], Some(&json));
                    let expected = self.expected_loaded();
                    self.wait_for_revision(expected, &format!("{file} removed from the API server"));
                    Err("taken by the API server".to_owned())
                }
            };
            self.steps.push(format!("tried invalid {file} on the API server: {outcome:?}"));
            return outcome;
        }
        let path = self.policies_dir.join(file);
        write_atomically(&self.staging, &path, text);
        let expected = self.expected_loaded();
        let revision = self.file_agent().revision;
        let started = Instant::now();
        let outcome = loop {
            let status = self.policy_status();
            if status.revision != revision || status.loaded != expected {
                break Err(format!("taken: {status:?}"));
            }
            if !status.errors.is_empty() {
                break Ok(status.errors);
            }
            if started.elapsed() > POLICY_WAIT {
                break Err(format!("neither rejected nor applied within {POLICY_WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        std::fs::remove_file(&path).expect("remove a policy file");
        let taken = outcome.is_err();
        let started = Instant::now();
        loop {
            let status = self.policy_status();
            let back = status.errors.is_empty() && status.loaded == expected && (status.revision == revision || taken);
            if back {
                self.file_agent().revision = status.revision;
                break;
            }
            assert!(
                started.elapsed() < POLICY_WAIT,
                "the agent did not return to the previous policy set after {file} was removed: {status:#?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        self.steps.push(format!("tried invalid {file}: {outcome:?}"));
        outcome
    }

    /// Removes the invalid `file` and waits until the errors are gone (the good set was in effect all
    /// along, so the revision stays).
    pub fn delete_invalid(&mut self, file: &str) {
        assert!(self.invalid.remove(file).is_some(), "no invalid file {file}");
        if self.plane.is_some() {
            // Never on the server: nothing to remove, nothing may have changed.
            self.assert_unchanged(&format!("removing the refused manifest {file}"));
            return;
        }
        std::fs::remove_file(self.policies_dir.join(file)).expect("remove a policy file");
        let started = Instant::now();
        loop {
            let status = self.policy_status();
            if status.errors.is_empty() {
                assert_eq!(
                    (status.revision, &status.loaded),
                    (self.agents[0].revision, &self.expected_loaded()),
                    "removing an invalid manifest changed the policy in effect"
                );
                self.steps.push(format!("deleted invalid {file}"));
                return;
            }
            assert!(
                started.elapsed() < POLICY_WAIT,
                "errors still reported {POLICY_WAIT:?} after removing {file}: {status:#?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn write_topology(&mut self, what: String) {
        let text = serde_json::to_string_pretty(&self.topology).expect("the topology serializes");
        // JSON is YAML: the agent reads it with the same loader.
        Topology::parse(&text, "edited topology").expect("the edited topology is valid");
        write_atomically(&self.staging, &self.topology_path, &text);
        self.relabels.push(what.clone());
        self.wait_for_new_revision(&what);
    }

    /// Replaces the labels of `pod` ("ns/name") in the lab's topology file and waits until the agent has
    /// re-derived identities and policy (a new revision).
    pub fn set_pod_labels(&mut self, pod: &str, labels: &[(&str, &str)]) {
        let (ns, name) = pod.split_once('/').expect("ns/name");
        let spec = self
            .topology
            .pods
            .iter_mut()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap_or_else(|| panic!("no pod {pod} in the topology"));
        spec.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let what = format!("labels of pod {pod} set to {:?}", spec.labels);
        if self.plane.is_some() {
            let labels = spec.labels.clone();
            let patch = json!([{"op": "replace", "path": "/metadata/labels", "value": labels}]).to_string();
            // A revision an agent made after the last wait (a late event of an earlier step) is not this
            // change's: count from the revisions in effect now, once every agent has seen the new labels.
            self.mark_revisions();
            self.kubectl_ok(&["patch", "pod", "-n", ns, name, "--type=json", "-p", &patch], None);
            self.steps.push(format!("labels of pod {pod} patched through kubectl"));
            self.relabels.push(what.clone());
            self.wait_for_view(&what, |maps| {
                maps.pods.iter().any(|p| p.namespace == ns && p.name == name && p.labels == labels)
            });
            return self.wait_for_new_revision(&what);
        }
        self.write_topology(what);
    }

    /// Replaces the labels of namespace `ns` (`kubernetes.io/metadata.name` stays, it is automatic) and
    /// waits until the agent has re-derived identities and policy.
    pub fn set_namespace_labels(&mut self, ns: &str, labels: &[(&str, &str)]) {
        let spec = self
            .topology
            .namespaces
            .iter_mut()
            .find(|n| n.name == ns)
            .unwrap_or_else(|| panic!("no namespace {ns} in the topology"));
        spec.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let what = format!("labels of namespace {ns} set to {:?}", spec.labels);
        if self.plane.is_some() {
            let labels = Topology::namespace_labels(spec);
            // As for pods: count from the revisions in effect now. Namespaces are relabelled through kube-rs
            // (the whole object replaced, as `kubectl replace` would).
            self.mark_revisions();
            let KubeClient { client, rt } = self.kube();
            let api: Api<Namespace> = Api::all(client.clone());
            let replaced = rt.block_on(async {
                let mut object = api.get(ns).await?;
                object.metadata.labels = Some(labels.clone());
                api.replace(ns, &PostParams::default(), &object).await
            });
            if let Err(e) = replaced {
                panic!("kube-rs: relabelling namespace {ns}: {e}\n{}", self.context());
            }
            self.steps.push(format!("labels of namespace {ns} replaced through kube-rs"));
            self.relabels.push(what.clone());
            self.wait_for_view(&what, |maps| maps.namespaces.iter().any(|(n, l)| n == ns && *l == labels));
            return self.wait_for_new_revision(&what);
        }
        self.write_topology(what);
    }

    /// Probes every pod to every pod on `port` (a number or a container port name, resolved on each
    /// destination) over `protocol` and IP `family` with real traffic, each probe within `timeout` (as
    /// `flowgate-lab probe --timeout` reads it).
    fn observe(&self, port: &str, protocol: Protocol, family: Family, timeout: &str) -> Reachability {
        let mut args = vec!["--all", "--port", port, "--protocol", protocol.as_str(), "--timeout", timeout];
        if family == Family::Ipv6 {
            args.push("--ipv6");
        }
        let (report, _) = self.lab.probe(&args);
        let pods: Vec<String> = PODS.iter().map(|p| (*p).to_owned()).collect();
        let mut observed = Reachability::unknown(pods.clone(), pods);
        let results = probe_results(&report);
        for (from, to, ok) in &results {
            assert!(observed.set(from, to, *ok), "{from} -> {to} is not a pair of the model: {report}");
        }
        assert_eq!(results.len(), 81, "the probe reports the full 9x9 matrix: {report}");
        observed
    }

    /// What `flowgate policy test --all` predicts on `port`/`protocol` over `family` for the policies and the
    /// topology in effect, without traffic: the policy files and the (possibly relabelled) topology are
    /// written to a directory of their own and tested offline (the same in both modes: through the API
    /// server the policies are not files the agent reads). Pure and quick: no lab, no agent.
    pub fn predict(&self, port: &str, protocol: Protocol, family: Family) -> Reachability {
        let dir = self.dir.0.join("predicted");
        let _ = std::fs::remove_dir_all(&dir);
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).expect("create the prediction's directory");
        for (file, in_file) in &self.files {
            let text = in_file.iter().map(Policy::yaml).collect::<Vec<_>>().join("---\n");
            std::fs::write(policies.join(file), text).expect("write a policy file for the prediction");
        }
        let topology = dir.join("topology.json");
        // The cluster as a whole: where a pod runs does not change what policy says about it.
        let mut whole = self.topology.clone();
        whole.nodes.clear();
        for pod in &mut whole.pods {
            pod.node = None;
        }
        let text = serde_json::to_string_pretty(&whole).expect("the topology serializes");
        std::fs::write(&topology, text).expect("write the prediction's topology");
        let (policies, topology) = (policies.to_str().expect("utf-8 path"), topology.to_str().expect("utf-8 path"));
        Self::policy_test_all(&["--policies", policies, "--topology", topology], port, protocol, family)
    }

    /// What `flowgate policy test --all` predicts live, from the policy maps each agent's datapath holds now
    /// (read back from the kernel over its socket). Each agent decides only for the pods it hosts: a
    /// connection is predicted to connect when the agent of the source's node lets it out and the agent of
    /// the destination's node lets it in (one agent when both are on its node).
    pub fn predict_live(&self, port: &str, protocol: Protocol, family: Family) -> Reachability {
        let tables: Vec<Reachability> = self
            .agents
            .iter()
            .map(|a| Self::policy_test_all(&["--socket", &a.socket], port, protocol, family))
            .collect();
        let pods: Vec<String> = PODS.iter().map(|p| (*p).to_owned()).collect();
        let mut predicted = Reachability::unknown(pods.clone(), pods);
        for from in PODS {
            for to in PODS {
                let mut deciding = self.agents.iter().zip(&tables).filter(|(a, _)| a.hosts(from) || a.hosts(to));
                let connected = deciding.all(|(_, t)| t.get(from, to).expect("a pair of the model"));
                predicted.set(from, to, connected);
            }
        }
        predicted
    }

    /// `flowgate policy test --all SOURCE... --port PORT --protocol PROTOCOL [--ipv6] -o json` as a table.
    fn policy_test_all(source: &[&str], port: &str, protocol: Protocol, family: Family) -> Reachability {
        let mut args = vec!["policy", "test", "--all", "--port", port, "--protocol", protocol.as_str(), "-o", "json"];
        args.extend_from_slice(source);
        if family == Family::Ipv6 {
            args.push("--ipv6");
        }
        let report: Value = serde_json::from_str(&flowgate_ok(&args)).expect("policy test prints JSON");
        let pods: Vec<String> = PODS.iter().map(|p| (*p).to_owned()).collect();
        let mut predicted = Reachability::unknown(pods.clone(), pods);
        let results = probe_results(&report);
        for (from, to, ok) in &results {
            assert!(predicted.set(from, to, *ok), "{from} -> {to} is not a pair of the model: {report}");
        }
        assert_eq!(results.len(), 81, "the prediction covers the full 9x9 matrix: {report}");
        predicted
    }

    /// Probes `port`/`protocol` over IPv4 and over IPv6 and compares each with `expected`: policies
    /// without `ipBlock`s mean the same for both families.
    pub fn validate(&mut self, step: &str, port: impl std::fmt::Display, protocol: Protocol, expected: &Reachability) {
        let port = port.to_string();
        for family in FAMILIES {
            self.validate_over(family, step, &port, protocol, expected);
        }
    }

    /// Probes `port`/`protocol` over `family` and compares with `expected` (the diagonal is not checked).
    /// On a difference: fails (or records, in keep-going mode) with both truth tables, the differences,
    /// the manifests in effect and the label changes made.
    pub fn validate_over(
        &mut self,
        family: Family,
        step: &str,
        port: impl std::fmt::Display,
        protocol: Protocol,
        expected: &Reachability,
    ) {
        let port = port.to_string();
        let predicted = self.predict(&port, protocol, family);
        let predicted_live = self.predict_live(&port, protocol, family);
        // A first pass with a short timeout: every blocked pair costs a probe its whole timeout, and in the lab
        // an admitted connection answers within a millisecond. Only a pass that disagrees with the expectation
        // or a prediction is probed again, with the full timeout, and that second pass is what counts.
        let quick = self.observe(&port, protocol, family, QUICK_PROBE_TIMEOUT);
        let mut wrong = Self::mismatches(expected, &quick, &predicted, &predicted_live);
        let observed = if wrong.is_empty() {
            quick
        } else {
            let observed = self.observe(&port, protocol, family, &self.probe_timeout);
            wrong = Self::mismatches(expected, &observed, &predicted, &predicted_live);
            observed
        };
        let probe = format!("{}/{port} over {family}", protocol.as_str());
        self.steps.push(format!("probed {probe} ({step}): {} mismatches", wrong.len()));
        if wrong.is_empty() {
            return;
        }
        let mut msg =
            format!("NetworkPolicy conformance: {step}: probing {probe} gave {} unexpected results\n\n", wrong.len());
        msg.push_str("expected (. connected, X blocked, - not checked):\n");
        msg.push_str(&expected.table_with(|f, t| if f == t { '-' } else { expected.mark(f, t) }));
        msg.push_str("\nobserved:\n");
        msg.push_str(&observed.truth_table());
        msg.push_str("\npredicted by `flowgate policy test --all` (from the policy maps, no traffic):\n");
        msg.push_str(&predicted.truth_table());
        msg.push_str("\npredicted live from the agent's policy maps:\n");
        msg.push_str(&predicted_live.truth_table());
        msg.push_str("\ncomparison (. as expected, X differs):\n");
        msg.push_str(&expected.table_with(|f, t| match (f == t, expected.get(f, t) == observed.get(f, t)) {
            (true, _) => '-',
            (false, true) => '.',
            (false, false) => 'X',
        }));
        msg.push('\n');
        for w in &wrong {
            let _ = writeln!(msg, "  {w}");
        }
        msg.push('\n');
        msg.push_str(&self.context());
        if self.keep_going {
            eprintln!("{msg}");
            self.failures.push(msg);
        } else {
            panic!("{msg}");
        }
    }

    /// Where `observed` differs from `expected` (the diagonal not checked) and from either prediction (every
    /// cell), one line each.
    fn mismatches(
        expected: &Reachability,
        observed: &Reachability,
        predicted: &Reachability,
        predicted_live: &Reachability,
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        for ((from, to, e), (_, _, o)) in expected.pairs().zip(observed.pairs()) {
            if from != to && e != o {
                let word = |c: Option<bool>| match c {
                    Some(true) => "connected",
                    Some(false) => "blocked",
                    None => "not probed",
                };
                wrong.push(format!("{from} -> {to}: expected {}, observed {}", word(e), word(o)));
            }
        }
        let word = |c: Option<bool>| if c == Some(true) { "connected" } else { "blocked" };
        for (how, prediction) in [("offline", predicted), ("live", predicted_live)] {
            for ((from, to, p), (_, _, o)) in prediction.pairs().zip(observed.pairs()) {
                if p != o {
                    wrong.push(format!(
                        "{from} -> {to}: `flowgate policy test` ({how}) predicted {}, observed {}",
                        word(p),
                        word(o)
                    ));
                }
            }
        }
        wrong
    }

    /// The manifests in effect, the label changes, and the steps so far.
    pub fn context(&self) -> String {
        let mut out = String::from("policies in effect:\n");
        if self.files.values().all(Vec::is_empty) {
            out.push_str("  (none)\n");
        }
        for (file, policies) in &self.files {
            let _ = writeln!(out, "# {file}");
            out.push_str(&policies.iter().map(Policy::yaml).collect::<Vec<_>>().join("---\n"));
        }
        for (file, text) in &self.invalid {
            let _ = writeln!(out, "# {file} (invalid, not applied)\n{text}");
        }
        if !self.relabels.is_empty() {
            out.push_str("label changes:\n");
            for r in &self.relabels {
                let _ = writeln!(out, "  {r}");
            }
        }
        out.push_str("steps:\n");
        for s in &self.steps {
            let _ = writeln!(out, "  {s}");
        }
        let _ = writeln!(out, "(lab {}, case directory {})", self.lab.name, self.dir.0.display());
        for agent in &self.agents {
            let _ = writeln!(out, "({}: pods {}, revision {})", agent.name(), agent.pods.join(" "), agent.revision);
        }
        out
    }
}

impl Drop for Conformance {
    fn drop(&mut self) {
        if !self.failures.is_empty() && !std::thread::panicking() {
            panic!(
                "{} conformance mismatch(es) recorded (keep-going mode):\n\n{}",
                self.failures.len(),
                self.failures.join("\n====\n\n")
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The nodes through the API server and the pods each runs, by name: every `a` on node-1, `b` on node-2,
/// `c` on node-3, so every namespace spans every node and most connections cross two agents.
const NODES: [(&str, &str); 3] = [("node-1", "a"), ("node-2", "b"), ("node-3", "c")];

/// Spreads the model's pods over [`NODES`].
fn spread_over_nodes(topology: &mut Topology) {
    topology.nodes = NODES.map(|(node, _)| NodeSpec { name: node.to_owned() }).to_vec();
    for pod in &mut topology.pods {
        let (node, _) = NODES.iter().find(|(_, name)| *name == pod.name).expect("pods are named a, b, c");
        pod.node = Some((*node).to_owned());
    }
}

/// One agent of a case and what it enforces for.
struct NodeAgent {
    /// The node it runs for (through the API server); `None` for the file source's one node.
    node: Option<&'static str>,
    agent: AgentGuard,
    socket: String,
    /// The pods it hosts, `ns/name`, sorted.
    pods: Vec<String>,
    /// The policy revision it has in effect, as last waited for.
    revision: u64,
}

impl NodeAgent {
    fn new(node: Option<&'static str>, agent: AgentGuard, mut pods: Vec<String>) -> Self {
        pods.sort();
        let socket = agent.socket.to_str().expect("utf-8 path").to_owned();
        Self { node, agent, socket, pods, revision: 0 }
    }

    fn name(&self) -> String {
        self.node.map_or_else(|| "the agent".to_owned(), |n| format!("the agent of {n}"))
    }

    fn hosts(&self, pod: &str) -> bool {
        self.pods.iter().any(|p| p == pod)
    }

    /// `flowgate endpoint list -o json` of this agent.
    fn endpoints(&self) -> Value {
        let out = flowgate(&["endpoint", "list", "--socket", &self.socket, "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Its policy status now.
    fn policy_status(&self) -> PolicyStatus {
        let out = flowgate(&["status", "--socket", &self.socket, "-o", "json"]);
        assert!(out.status.success(), "flowgate status failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("status -o json prints JSON");
        let p = &v["policy"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap_or_else(|| panic!("status policy: a list expected, got {v}"))
                .iter()
                .map(|s| s.as_str().expect("a string").to_owned())
                .collect()
        };
        PolicyStatus {
            revision: p["revision"].as_u64().expect("status has policy.revision"),
            loaded: strings(&p["loaded"]),
            errors: strings(&p["errors"]),
        }
    }

    /// What its policy maps were compiled from (pods, namespaces, policies), over its socket.
    fn policy_maps(&self) -> Box<PolicyMaps> {
        runtime().block_on(async {
            let mut client = Client::connect(&self.socket, "conformance").await.expect("connect to the agent");
            match client.request(Request::PolicyMaps).await.expect("a PolicyMaps request") {
                Response::PolicyMaps(maps) => maps,
                other => panic!("{}: PolicyMaps answered with {other:?}", self.name()),
            }
        })
    }
}

/// kube-rs on the case's API server, with the runtime it runs on.
struct KubeClient {
    client: kube::Client,
    rt: tokio::runtime::Runtime,
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn reachability_builders_follow_upstream_semantics() {
        let r = reachability(true)
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true)
            .expect_peer("z/*", "*/b", false);
        assert_eq!(r.get("y/a", "x/a"), Some(false));
        assert_eq!(r.get("x/b", "x/a"), Some(true));
        assert_eq!(r.get("x/a", "y/a"), Some(true));
        assert_eq!(r.get("z/c", "y/b"), Some(false));
        assert_eq!(r.get("z/c", "y/c"), Some(true));
        let e = reachability(true).expect_all_egress("x/a", false);
        assert_eq!((e.get("x/a", "z/c"), e.get("z/c", "x/a")), (Some(false), Some(true)));
    }

    #[test]
    fn yaml_is_what_the_json_says() {
        let p = policy(
            "x",
            "p",
            json!({
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b", "y": "n"}}}],
                             "ports": [{"port": "serve-80-tcp"}, {"port": 81, "endPort": 82}]}],
                "egress": [{}],
            }),
        );
        let text = p.yaml();
        let expected = "\
apiVersion: \"networking.k8s.io/v1\"
kind: \"NetworkPolicy\"
metadata:
  name: \"p\"
  namespace: \"x\"
spec:
  egress: [{}]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              pod: \"b\"
              \"y\": \"n\"
      ports:
        - port: \"serve-80-tcp\"
        - endPort: 82
          port: 81
  podSelector: {}
  policyTypes: [\"Ingress\", \"Egress\"]
";
        assert_eq!(text, expected);
    }
}
