//! Section "propagation": from a policy written into the watched policy directory to the first packet
//! it decides. The agent's own controller follows the directory (`controller::follow_changes`: change
//! notification, then compile and apply a new generation) over `endpoints` registered endpoints and
//! `policies` policy files; a probe runs the endpoint's ingress program (BPF_PROG_TEST_RUN) on a SYN the
//! new policy allows, every 50 us, until the kernel's verdict flips from drop to pass. Each change is a
//! new file renamed into place (as editors and `kubectl cp` do), allowing a new port, so every round
//! starts denied.
//!
//! The endpoints are registered without a lab (no veths: their maps are written, nothing is attached);
//! the probe endpoint sits on the caller's loopback, which BPF_PROG_TEST_RUN uses as the packet's
//! interface.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use flowgate_agent::{
    controller::{self, Controller},
    craft::{Transport, ipv4_packet},
    datapath::{self, Datapath, DatapathOptions},
    policy::PolicyEngine,
    state::{AgentInfo, AgentState},
};
use flowgate_common::names::PROG_TO_ENDPOINT;
use flowgate_events::hub::{Hub, HubConfig};
use flowgate_lab::{
    state::{LabState, NamespaceState, PodState},
    topology::Cidr,
};
use flowgate_tests::TempDir;

use crate::{
    events_agent,
    report::{Figure, Section, Target},
};

/// The kernel's drop verdict (TC_ACT_SHOT); the programs pass with TC_ACT_UNSPEC.
const TC_ACT_SHOT: u32 = 2;
/// skb->ifindex under BPF_PROG_TEST_RUN.
const TEST_RUN_IFINDEX: u32 = 1;
const NAMESPACE: &str = "bench";
/// How long one change may take before the run gives up on it.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// p99 bars of the issue: at 1,000 policies over 500 endpoints, and for one change on a small lab.
pub const TARGET_LARGE_P99_MS: f64 = 50.0;
pub const TARGET_SMALL_P99_MS: f64 = 10.0;

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0ac9_0000u32 + 1 + i as u32)
}

fn pod_name(i: usize) -> String {
    format!("pod-{i}")
}

fn namespace_labels() -> BTreeMap<String, String> {
    [("kubernetes.io/metadata.name".to_string(), NAMESPACE.to_string())].into()
}

/// A node of `endpoints` pods in one namespace; pod 0 (the probed one) on loopback, the others on
/// interfaces that do not exist (never attached).
fn node(endpoints: usize) -> LabState {
    let pods = (0..endpoints)
        .map(|i| PodState {
            namespace: NAMESPACE.into(),
            name: pod_name(i),
            labels: [("app".to_string(), pod_name(i))].into(),
            ports: Vec::new(),
            ip: pod_ip(i),
            ipv6: None,
            netns: String::new(),
            host_ifname: if i == 0 { "lo".into() } else { format!("bench{i}") },
            host_ifindex: if i == 0 { TEST_RUN_IFINDEX } else { 4_000 + i as u32 },
            node: None,
        })
        .collect();
    LabState {
        cidr: Cidr { network: Ipv4Addr::new(10, 201, 0, 0), prefix_len: 16 },
        namespaces: vec![NamespaceState { name: NAMESPACE.into(), labels: namespace_labels() }],
        pods,
        ..events_agent::bare_node()
    }
}

/// A policy selecting `app: <target>` and allowing ingress from `app: <peer>` on `port`.
fn policy_yaml(name: &str, target: &str, peer: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: {target}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: {peer}}}}}}}]\n    ports: [{{port: {port}}}]\n"
    )
}

/// Writes `text` to `dir/name` the way editors and ConfigMap updates do: a temporary file, then a
/// rename into place.
fn write_into_place(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {} into place", tmp.display()))
}

/// What one configuration measured.
pub struct Propagation {
    /// Milliseconds from the rename to the first packet decided by the new policy, one per change.
    pub samples_ms: Vec<f64>,
    /// Milliseconds the controller took to apply the initial set.
    pub initial_ms: f64,
}

/// The probe: a SYN from pod 1 to pod 0 (loopback) on `port`; whether the kernel passes it.
fn passes(controller: &Mutex<Controller>, port: u16) -> anyhow::Result<bool> {
    let packet = ipv4_packet(pod_ip(1), pod_ip(0), Transport::Tcp { sport: 40000, dport: port, flags: 0x02 });
    let mut c = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(c.datapath().test_run(PROG_TO_ENDPOINT, &packet, 1).context("BPF_PROG_TEST_RUN")?.return_value != TC_ACT_SHOT)
}

/// A node under the agent's controller, following its policy directory (and, with `labels`, its
/// topology file), with the initial policy set in effect.
struct Node {
    runtime: tokio::runtime::Runtime,
    controller: Arc<Mutex<Controller>>,
    dir: TempDir,
    initial_ms: f64,
}

/// The topology file of [`node`] with pod 1 carrying `extra` labels besides its own.
fn topology_yaml(endpoints: usize, extra: &str) -> String {
    let mut t = format!("name: bench\ncidr: 10.201.0.0/16\nnamespaces:\n  - name: {NAMESPACE}\npods:\n");
    for i in 0..endpoints {
        let more = if i == 1 { extra } else { "" };
        t.push_str(&format!(
            "  - {{namespace: {NAMESPACE}, name: {}, labels: {{app: {}{more}}}}}\n",
            pod_name(i),
            pod_name(i)
        ));
    }
    t
}

/// Loads the programs, registers `endpoints` endpoints, starts the controller's follower and writes
/// `policies` policies (one file each; policy i selects pod i mod endpoints and admits pod i+1 on port
/// 1000+i, so pod 0 is isolated); returns once they decide packets. With `labels`, the node follows a
/// topology file too, and `extra_policy` is written with the others.
fn start_node(endpoints: usize, policies: usize, labels: bool, extra_policy: Option<&str>) -> anyhow::Result<Node> {
    if endpoints < 2 {
        bail!("the probe needs two endpoints");
    }
    let dir = TempDir::new(&format!("policies-{endpoints}-{policies}-{labels}"));
    let policy_dir = dir.0.join("policies");
    std::fs::create_dir_all(&policy_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the controller's runtime")?;
    let mut dp = Datapath::load(DatapathOptions::default()).context("loading the kernel programs (run as root)")?;
    let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
    let mut lab = node(endpoints);
    if labels {
        let path = dir.0.join("topology.yaml");
        std::fs::write(&path, topology_yaml(endpoints, ""))?;
        lab.topology_path = Some(path);
    }
    for pod in &lab.pods {
        let ep = state.upsert_endpoint(controller::lab_pod_endpoint(pod), &namespace_labels())?;
        dp.set_endpoint(pod.host_ifindex, datapath::endpoint_info(&ep))
            .with_context(|| format!("registering endpoint {}", pod.name))?;
    }
    let engine = PolicyEngine::new(Some(policy_dir.clone()), false);
    let controller =
        Arc::new(Mutex::new(Controller::new(dp, engine, Arc::clone(&state), lab, Some(policy_dir.clone()))));
    runtime.spawn(controller::follow_changes(Arc::clone(&controller), Duration::from_secs(3600)));
    // Let the notifier be set up before the first write.
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for i in 0..policies {
        let yaml = policy_yaml(
            &format!("p-{i}"),
            &pod_name(i % endpoints),
            &pod_name((i + 1) % endpoints),
            1000 + (i % 20_000) as u16,
        );
        std::fs::write(policy_dir.join(format!("p-{i:05}.yaml")), yaml)?;
    }
    let expected = policies + usize::from(extra_policy.is_some());
    if let Some(extra) = extra_policy {
        std::fs::write(policy_dir.join("extra.yaml"), extra)?;
    }
    // The initial set is in once every policy is loaded and the probe port of policy 0 (pod 1 -> pod 0
    // on 1000) passes while another port is dropped (pod 0 is isolated).
    loop {
        let loaded = state.status().policy.loaded.len();
        if loaded == expected && passes(&controller, 1000)? && !passes(&controller, 38_999)? {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the initial {expected} policies were not in effect within 60 s ({loaded} loaded)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let initial_ms = started.elapsed().as_secs_f64() * 1e3;
    // The first change, like every other, comes past the datapath's generation grace (50 ms after the
    // initial set's switch): it would otherwise wait out the rest of it, and be the slowest sample.
    std::thread::sleep(Duration::from_millis(100));
    Ok(Node { runtime, controller, dir, initial_ms })
}

/// Waits until the probe on `port` gives `pass`; returns the milliseconds since `since`.
pub fn wait_verdict(
    mut passes: impl FnMut() -> anyhow::Result<bool>,
    pass: bool,
    since: Instant,
    what: &str,
) -> anyhow::Result<f64> {
    loop {
        if passes()? == pass {
            return Ok(since.elapsed().as_secs_f64() * 1e3);
        }
        if since.elapsed() > CHANGE_TIMEOUT {
            bail!("{what} was not enforced within {CHANGE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Runs `changes` policy changes on a node of `endpoints` endpoints that already has `policies`
/// policies.
pub fn run(endpoints: usize, policies: usize, changes: usize) -> anyhow::Result<Propagation> {
    let node = start_node(endpoints, policies, false, None)?;
    let policy_dir = node.dir.0.join("policies");
    let mut samples_ms = Vec::with_capacity(changes);
    for k in 0..changes {
        let port = 40_000 + k as u16;
        if passes(&node.controller, port)? {
            bail!("port {port} passes before its policy was written: the probe would prove nothing");
        }
        let name = format!("probe-{k:04}.yaml");
        let yaml = policy_yaml(&format!("probe-{k}"), &pod_name(0), &pod_name(1), port);
        let written = Instant::now();
        write_into_place(&policy_dir, &name, &yaml)?;
        samples_ms.push(wait_verdict(|| passes(&node.controller, port), true, written, &name)?);
        // One change at a time, as a person or a controller makes them: the next one comes after the
        // datapath's generation grace (50 ms, during which a switched-away generation is not rewritten).
        std::thread::sleep(Duration::from_millis(100));
    }
    node.runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(Propagation { samples_ms, initial_ms: node.initial_ms })
}

/// Runs `changes` label changes of pod 1 on the node's topology file: a policy admits pods labelled
/// `role: trusted` into pod 0 on ports 39000-39999; the label is added and removed in turn, and each
/// round probes a fresh port (no conntrack entry), which must flip to pass when the label comes and to
/// drop when it goes.
pub fn run_label_changes(endpoints: usize, policies: usize, changes: usize) -> anyhow::Result<Propagation> {
    let trusted = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: trusted, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: {}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{role: trusted}}}}}}]\n    ports: [{{port: 39000, endPort: 39999}}]\n",
        pod_name(0)
    );
    let node = start_node(endpoints, policies, true, Some(&trusted))?;
    let mut samples_ms = Vec::with_capacity(changes);
    for k in 0..changes {
        let port = 39_000 + k as u16;
        let add = k % 2 == 0;
        if passes(&node.controller, port)? == add {
            bail!("port {port} already gives the verdict the label change should bring");
        }
        let text = topology_yaml(endpoints, if add { ", role: trusted" } else { "" });
        let written = Instant::now();
        write_into_place(&node.dir.0, "topology.yaml", &text)?;
        let what = format!("{} role: trusted on pod 1", if add { "adding" } else { "removing" });
        samples_ms.push(wait_verdict(|| passes(&node.controller, port), add, written, &what)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    node.runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(Propagation { samples_ms, initial_ms: node.initial_ms })
}

/// The `q` quantile (0..1) of `samples`, nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn measure(quick: bool) -> anyhow::Result<Section> {
    let mut section = Section::new("propagation");
    let changes = if quick { 10 } else { 100 };
    let cases = [(9usize, 10usize, TARGET_SMALL_P99_MS, "small lab"), (500, 1_000, TARGET_LARGE_P99_MS, "at scale")];
    for (endpoints, policies, target, what) in cases {
        let p = run(endpoints, policies, changes)?;
        let name =
            format!("policy file written to first packet decided, {what}: {policies} policies, {endpoints} endpoints");
        let note = format!(
            "{changes} changes, each a new file renamed into place; observed by BPF_PROG_TEST_RUN probes of the \
             ingress program every 50 us; initial set applied in {:.0} ms",
            p.initial_ms
        );
        section.push(Figure::new(format!("{name}: p50"), quantile(&p.samples_ms, 0.5), "ms").note(note.clone()));
        section.push(
            Figure::new(format!("{name}: p99"), quantile(&p.samples_ms, 0.99), "ms")
                .target(Target::at_most(target))
                .note(note),
        );
    }
    // A label change is one change too: the same targets.
    for (endpoints, policies, target, what) in cases {
        let p = run_label_changes(endpoints, policies, changes)?;
        let name =
            format!("pod label change to first packet decided, {what}: {policies} policies, {endpoints} endpoints");
        let note = format!(
            "{changes} changes of the topology file (renamed into place), adding and removing a label a policy \
             selects; observed as above"
        );
        section.push(Figure::new(format!("{name}: p50"), quantile(&p.samples_ms, 0.5), "ms").note(note.clone()));
        section.push(
            Figure::new(format!("{name}: p99"), quantile(&p.samples_ms, 0.99), "ms")
                .target(Target::at_most(target))
                .note(note),
        );
    }
    Ok(section)
}
