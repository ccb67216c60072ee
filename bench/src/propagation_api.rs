//! Section "propagation", through the API server: from a NetworkPolicy created on a real kube-apiserver
//! (kube-rs `create`, the clock started before the call) to the first packet it decides in the kernel, and
//! from a pod's labels patched on the server (kube-rs `patch`: a label a policy selects, added and removed
//! in turn) to the first packet decided the new way. The
//! agent's own Kubernetes source follows the server (`controller::follow_cluster`: kube-rs watchers, the
//! cluster's identities; a change after a quiet 100 ms compiled at once, one soon after a sync after a 2 ms
//! settle, at most 3 compiles per 100 ms window) over
//! `endpoints` Pod objects bound to this node and `policies` NetworkPolicies; a probe runs the endpoint's
//! ingress program (BPF_PROG_TEST_RUN) on a SYN the new policy allows, every 50 us, until the verdict
//! flips from drop to pass. Each change is a new policy allowing a new port, so every round starts denied.
//!
//! The node is a network namespace of the run's own: the probed pod's host route ends on its loopback
//! (BPF_PROG_TEST_RUN's packet interface), every other pod's on a veth of its own (its peer left in the
//! namespace), so the agent finds each local pod's interface as on a real node and attaches to it. No
//! traffic is sent.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use flowgate_agent::{
    controller::{self, Controller},
    craft::{Transport, ipv4_packet},
    datapath::{Datapath, DatapathOptions},
    kubernetes::{ClusterIdentities, KubeSource},
    policy::PolicyEngine,
    state::{AgentInfo, AgentState},
};
use flowgate_common::names::PROG_TO_ENDPOINT;
use flowgate_events::hub::{Hub, HubConfig};
use flowgate_tests::{control_plane::ControlPlane, kubelet};
use k8s_openapi::api::{core::v1::Pod, networking::v1::NetworkPolicy};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::{
    events_agent,
    propagation::{CHANGE_TIMEOUT, TARGET_LARGE_P99_MS, TARGET_SMALL_P99_MS, quantile, wait_verdict},
    report::{Figure, Section, Target},
};

/// The kernel's drop verdict (TC_ACT_SHOT); the programs pass with TC_ACT_UNSPEC.
const TC_ACT_SHOT: u32 = 2;
const NAMESPACE: &str = "bench";
const NODE: &str = "bench-node";
/// Requests in flight while registering pods and policies.
const IN_FLIGHT: usize = 32;

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0aca_0000u32 + 1 + u32::try_from(i).expect("a small index"))
}

fn pod_name(i: usize) -> String {
    format!("pod-{i}")
}

/// A policy selecting `app: <target>` and allowing ingress from `app: <peer>` on `port`.
fn policy(name: &str, target: &str, peer: &str, port: u16) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": target}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}], "ports": [{"port": port}]}],
        },
    }))
    .expect("a NetworkPolicy")
}

/// The node's network namespace, deleted (with its interfaces) on drop.
struct NodeNetns(String);

impl NodeNetns {
    /// Namespace `fg-propapi-<pid>` with the host routes of `endpoints` pods: pod 0 on `lo`, pod i on `podi`
    /// (a veth whose peer stays in the namespace: this kernel has no dummy interfaces).
    fn create(endpoints: usize) -> anyhow::Result<Self> {
        let name = format!("fg-propapi-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let status = Command::new("ip").args(["netns", "add", &name]).status().context("running ip netns add")?;
        if !status.success() {
            bail!("ip netns add {name} failed (run as root)");
        }
        let netns = Self(name);
        let mut batch = format!("link set lo up\nroute add {}/32 dev lo\n", pod_ip(0));
        for i in 1..endpoints {
            batch.push_str(&format!(
                "link add pod{i} type veth peer name peer{i}\nlink set peer{i} up\nlink set pod{i} up\n\
                 route add {}/32 dev pod{i}\n",
                pod_ip(i)
            ));
        }
        let mut child = Command::new("ip")
            .args(["-n", &netns.0, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running ip -batch")?;
        std::io::Write::write_all(child.stdin.as_mut().expect("piped stdin"), batch.as_bytes())?;
        drop(child.stdin.take());
        if !child.wait()?.success() {
            bail!("setting up the interfaces and routes of {} failed", netns.0);
        }
        Ok(netns)
    }

    fn path(&self) -> PathBuf {
        flowgate_lab::netns::netns_path(&self.0)
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// What one configuration measured.
pub struct ApiPropagation {
    /// Milliseconds from before the create call to the first packet decided by the new policy.
    pub samples_ms: Vec<f64>,
    /// Milliseconds the create calls themselves took (the server's answer).
    pub create_ms: Vec<f64>,
    /// Milliseconds from the agent's start to the initial set deciding packets (list, identities, compile).
    pub initial_ms: f64,
    /// Milliseconds from before a label patch of pod 1 to the first packet decided the new way.
    pub label_ms: Vec<f64>,
    /// Milliseconds the label patches themselves took.
    pub patch_ms: Vec<f64>,
}

/// A policy admitting pods labelled `role: trusted` into pod 0 on ports 39000-39999 (each label change
/// probes a port of its own, so no conntrack entry answers for the policy).
fn trusted_policy() -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "trusted", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": pod_name(0)}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "trusted"}}}],
                "ports": [{"port": 39_000, "endPort": 39_999}],
            }],
        },
    }))
    .expect("a NetworkPolicy")
}

/// The probe: a SYN from pod 1 to pod 0 (loopback) on `port`; whether the kernel passes it.
fn passes(controller: &Mutex<Controller>, port: u16) -> anyhow::Result<bool> {
    let packet = ipv4_packet(pod_ip(1), pod_ip(0), Transport::Tcp { sport: 40000, dport: port, flags: 0x02 });
    let mut c = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(c.datapath().test_run(PROG_TO_ENDPOINT, &packet, 1).context("BPF_PROG_TEST_RUN")?.return_value != TC_ACT_SHOT)
}

/// Registers the pods (bound to [`NODE`], addressed through the status subresource as the kubelet does)
/// and the policies (policy i selects pod i mod endpoints and admits pod i+1 on port 1000+i, so pod 0 is
/// isolated) on the server, `IN_FLIGHT` requests at a time.
pub(crate) async fn register(client: &kube::Client, endpoints: usize, policies: usize) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..endpoints {
        let pods = pods.clone();
        let name = pod_name(i);
        let manifest = kubelet::pod_manifest(NAMESPACE, &name, NODE, &[("app", &name)], &[]);
        tasks.spawn(async move {
            let pod: Pod = serde_json::from_str(&manifest).context("a Pod")?;
            pods.create(&PostParams::default(), &pod).await.with_context(|| format!("creating pod {name}"))?;
            let status = kubelet::pod_status(pod_ip(i), None);
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .with_context(|| format!("addressing pod {name}"))?;
            anyhow::Ok(())
        });
        if tasks.len() >= IN_FLIGHT {
            tasks.join_next().await.expect("a task")??;
        }
    }
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), NAMESPACE);
    for i in 0..policies {
        let api = api.clone();
        let port = 1000 + u16::try_from(i % 20_000).expect("fits");
        let object = policy(&format!("p-{i}"), &pod_name(i % endpoints), &pod_name((i + 1) % endpoints), port);
        tasks.spawn(async move {
            api.create(&PostParams::default(), &object).await.with_context(|| format!("creating policy p-{i}"))?;
            anyhow::Ok(())
        });
        if tasks.len() >= IN_FLIGHT {
            tasks.join_next().await.expect("a task")??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Runs `changes` policy creations on a node of `endpoints` pods that already has `policies` policies,
/// all through a real API server.
pub fn run(endpoints: usize, policies: usize, changes: usize) -> anyhow::Result<ApiPropagation> {
    if endpoints < 2 {
        bail!("the probe needs two endpoints");
    }
    let plane = ControlPlane::start("propapi");
    plane.apply(&kubelet::namespace_manifest(NAMESPACE, &[]));
    let netns = NodeNetns::create(endpoints)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    let admin = runtime.block_on(plane.admin_client());
    runtime.block_on(register(&admin, endpoints, policies))?;

    // The agent's part, as `flowgate-agent --kubernetes --node-netns` wires it, with its own ServiceAccount.
    let started = Instant::now();
    let agent_client = runtime.block_on(plane.agent_client());
    let dp = Datapath::load(DatapathOptions::default()).context("loading the kernel programs (run as root)")?;
    let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
    let engine = PolicyEngine::new(None, false);
    let mut c = Controller::new(dp, engine, Arc::clone(&state), events_agent::bare_node(), None);
    c.use_kubernetes(NODE.to_owned(), Some(netns.path()));
    let controller = Arc::new(Mutex::new(c));
    let (source, identities) = {
        let _entered = runtime.enter();
        (KubeSource::start(&agent_client), ClusterIdentities::start(&agent_client))
    };
    runtime.spawn(controller::follow_cluster(Arc::clone(&controller), source, identities));
    loop {
        let loaded = state.status().policy.loaded.len();
        if loaded == policies
            && state.endpoints().len() == endpoints
            && passes(&controller, 1000)?
            && !passes(&controller, 38_999)?
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!(
                "the initial {policies} policies over {endpoints} endpoints were not in effect within 180 s ({loaded} \
                 loaded, {} endpoints)",
                state.endpoints().len()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let initial_ms = started.elapsed().as_secs_f64() * 1e3;
    // Past the generation grace of the initial set's switch, as between changes (see the file rows).
    std::thread::sleep(Duration::from_millis(100));

    let api: Api<NetworkPolicy> = Api::namespaced(admin.clone(), NAMESPACE);
    let mut samples_ms = Vec::with_capacity(changes);
    let mut create_ms = Vec::with_capacity(changes);
    for k in 0..changes {
        let port = 40_000 + u16::try_from(k).context("too many changes")?;
        if passes(&controller, port)? {
            bail!("port {port} passes before its policy was created: the probe would prove nothing");
        }
        let object = policy(&format!("probe-{k}"), &pod_name(0), &pod_name(1), port);
        let created = Instant::now();
        runtime
            .block_on(api.create(&PostParams::default(), &object))
            .with_context(|| format!("creating policy probe-{k}"))?;
        create_ms.push(created.elapsed().as_secs_f64() * 1e3);
        samples_ms.push(wait_verdict(|| passes(&controller, port), true, created, &format!("policy probe-{k}"))?);
        // One change at a time, as a person or a controller makes them (and past the datapath's 50 ms
        // generation grace, as the file rows).
        std::thread::sleep(Duration::from_millis(100));
    }

    // Label changes: pod 1 gets `role: trusted` and loses it in turn, each change probed on a fresh port.
    runtime.block_on(api.create(&PostParams::default(), &trusted_policy())).context("creating policy trusted")?;
    let in_effect = Instant::now();
    while state.status().policy.loaded.len() < policies + changes + 1 {
        if in_effect.elapsed() > CHANGE_TIMEOUT {
            bail!("policy trusted was not loaded within {CHANGE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(100));
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    let mut label_ms = Vec::with_capacity(changes);
    let mut patch_ms = Vec::with_capacity(changes);
    for k in 0..changes {
        let port = 39_000 + u16::try_from(k).context("too many changes")?;
        let add = k % 2 == 0;
        if passes(&controller, port)? == add {
            bail!("port {port} already gives the verdict the label change should bring");
        }
        let labels = serde_json::json!({"metadata": {"labels": {"role": if add { Some("trusted") } else { None }}}});
        let patched = Instant::now();
        runtime
            .block_on(pods.patch(&pod_name(1), &PatchParams::default(), &Patch::Merge(&labels)))
            .with_context(|| format!("patching the labels of {}", pod_name(1)))?;
        patch_ms.push(patched.elapsed().as_secs_f64() * 1e3);
        let what = format!("{} role: trusted on {}", if add { "adding" } else { "removing" }, pod_name(1));
        label_ms.push(wait_verdict(|| passes(&controller, port), add, patched, &what)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(controller);
    drop(netns);
    drop(plane);
    Ok(ApiPropagation { samples_ms, create_ms, initial_ms, label_ms, patch_ms })
}

/// Where the time of changes went: the API calls themselves (the server writing to etcd before it answers)
/// and the rest, from the answer to the first packet decided (`samples_ms` less `calls_ms`, change by change).
fn call_split(calls_ms: &[f64], samples_ms: &[f64]) -> String {
    let after: Vec<f64> = samples_ms.iter().zip(calls_ms).map(|(total, call)| total - call).collect();
    format!(
        "the call itself: p50 {:.1} ms, max {:.1} ms; from its answer to the first packet decided: p50 {:.1} ms, \
         p99 {:.1} ms",
        quantile(calls_ms, 0.5),
        quantile(calls_ms, 1.0),
        quantile(&after, 0.5),
        quantile(&after, 0.99)
    )
}

/// The rows through the API server, in the shape and with the targets of the file rows.
pub fn measure(quick: bool, section: &mut Section) -> anyhow::Result<()> {
    let changes = if quick { 10 } else { 60 };
    let cases = [(9usize, 10usize, TARGET_SMALL_P99_MS, "small lab"), (500, 1_000, TARGET_LARGE_P99_MS, "at scale")];
    for (endpoints, policies, target, what) in cases {
        let p = run(endpoints, policies, changes)?;
        let name = format!(
            "NetworkPolicy created through the API server to first packet decided, {what}: {policies} policies, \
             {endpoints} endpoints"
        );
        let note = format!(
            "{changes} changes, each a kube-rs create of a new policy on a real kube-apiserver and etcd, the clock \
             started before the call ({}); the agent's Kubernetes source compiles a change at once after a quiet \
             100 ms, at most 3 times per 100 ms window; observed by BPF_PROG_TEST_RUN probes of the ingress \
             program every 50 us; initial list, identities and set applied in {:.0} ms",
            call_split(&p.create_ms, &p.samples_ms),
            p.initial_ms
        );
        section.push(Figure::new(format!("{name}: p50"), quantile(&p.samples_ms, 0.5), "ms").note(note.clone()));
        section.push(
            Figure::new(format!("{name}: p99"), quantile(&p.samples_ms, 0.99), "ms")
                .target(Target::at_most(target))
                .note(note),
        );
        let name = format!(
            "pod label change through the API server to first packet decided, {what}: {policies} policies, \
             {endpoints} endpoints"
        );
        let note = format!(
            "{changes} changes, each a kube-rs merge patch of pod 1's labels on the real kube-apiserver (adding and \
             removing a label a policy selects, in turn), the clock started before the call ({}); the agent \
             allocates the pod's new identity through the API server, then compiles; observed as above",
            call_split(&p.patch_ms, &p.label_ms)
        );
        section.push(Figure::new(format!("{name}: p50"), quantile(&p.label_ms, 0.5), "ms").note(note.clone()));
        section.push(
            Figure::new(format!("{name}: p99"), quantile(&p.label_ms, 0.99), "ms")
                .target(Target::at_most(target))
                .note(note),
        );
    }
    Ok(())
}
