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
use flowgate_proto::endpoint::NewEndpoint;

use crate::{
    events_agent::TempDir,
    report::{Figure, Section, Target},
};

/// The kernel's drop verdict (TC_ACT_SHOT); the programs pass with TC_ACT_UNSPEC.
const TC_ACT_SHOT: u32 = 2;
/// skb->ifindex under BPF_PROG_TEST_RUN.
const TEST_RUN_IFINDEX: u32 = 1;
const NAMESPACE: &str = "bench";
/// How long one change may take before the run gives up on it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

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
        })
        .collect();
    LabState {
        version: flowgate_lab::state::STATE_VERSION,
        name: "bench".to_owned(),
        cidr: Cidr { network: Ipv4Addr::new(10, 201, 0, 0), prefix_len: 16 },
        gateway: Ipv4Addr::UNSPECIFIED,
        ipv6_cidr: None,
        gateway6: None,
        node_netns: String::new(),
        namespaces: vec![NamespaceState { name: NAMESPACE.into(), labels: namespace_labels() }],
        pods,
        externals: Vec::new(),
        server_pid: None,
        topology_path: None,
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

/// Runs `changes` policy changes on a node of `endpoints` endpoints that already has `policies`
/// policies (one file each; policy i selects pod i mod endpoints and admits pod i+1 on port 1000+i,
/// so pod 0 is isolated).
pub fn run(endpoints: usize, policies: usize, changes: usize) -> anyhow::Result<Propagation> {
    if endpoints < 2 {
        bail!("the probe needs two endpoints");
    }
    let dir = TempDir::new(&format!("policies-{endpoints}-{policies}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the controller's runtime")?;
    let mut dp = Datapath::load(DatapathOptions::default()).context("loading the kernel programs (run as root)")?;
    let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
    let lab = node(endpoints);
    for pod in &lab.pods {
        let ep = state.upsert_endpoint(
            NewEndpoint {
                namespace: pod.namespace.clone(),
                pod_name: pod.name.clone(),
                labels: pod.labels.clone(),
                ipv4: pod.ip,
                ipv6: pod.ipv6,
                interface: pod.host_ifname.clone(),
                ifindex: pod.host_ifindex,
            },
            &namespace_labels(),
        );
        dp.set_endpoint(pod.host_ifindex, datapath::endpoint_info(&ep))
            .with_context(|| format!("registering endpoint {}", pod.name))?;
    }
    let engine = PolicyEngine::new(Some(dir.0.clone()), false);
    let controller = Arc::new(Mutex::new(Controller::new(dp, engine, Arc::clone(&state), lab, Some(dir.0.clone()))));
    let follower = runtime.spawn(controller::follow_changes(Arc::clone(&controller), Duration::from_secs(3600)));
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
        std::fs::write(dir.0.join(format!("p-{i:05}.yaml")), yaml)?;
    }
    // The initial set is in once every policy is loaded and the probe port of policy 0 (pod 1 -> pod 0
    // on 1000) passes while another port is dropped (pod 0 is isolated).
    loop {
        let loaded = state.status().policy.loaded.len();
        if loaded == policies && passes(&controller, 1000)? && !passes(&controller, 39_999)? {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the initial {policies} policies were not in effect within 60 s ({loaded} loaded)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let initial_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut samples_ms = Vec::with_capacity(changes);
    for k in 0..changes {
        let port = 40_000 + k as u16;
        if passes(&controller, port)? {
            bail!("port {port} passes before its policy was written: the probe would prove nothing");
        }
        let name = format!("probe-{k:04}.yaml");
        let yaml = policy_yaml(&format!("probe-{k}"), &pod_name(0), &pod_name(1), port);
        let written = Instant::now();
        write_into_place(&dir.0, &name, &yaml)?;
        loop {
            if passes(&controller, port)? {
                samples_ms.push(written.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if written.elapsed() > CHANGE_TIMEOUT {
                bail!("{name} was not enforced within {CHANGE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        // One change at a time, as a person or a controller makes them: the next one comes after the
        // datapath's generation grace (50 ms, during which a switched-away generation is not rewritten).
        std::thread::sleep(Duration::from_millis(100));
    }
    follower.abort();
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(Propagation { samples_ms, initial_ms })
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
    Ok(section)
}
