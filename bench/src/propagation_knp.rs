//! Section "propagation", kube-network-policies' rows: the anchor the issue names (its own scalability
//! reports give 310-333 ms from a NetworkPolicy created to enforcement), measured here the way the flowgate
//! rows through the API server are, on real traffic instead of BPF_PROG_TEST_RUN: kube-network-policies
//! decides in user space, on the packet, so there is no program to probe.
//!
//! The traffic benchmark's lab (client, server, intruder: [`crate::traffic::TOPOLOGY`]) with its pods written
//! to a real API server and kube-network-policies enforcing in the node namespace
//! ([`crate::traffic::knp::KnpCluster`], built with `tools/knp/xt-queue.patch`), and the traffic benchmark's
//! policy at 10 peers in place (the server isolated). Then, one at a time:
//! - a NetworkPolicy created through the API server (kube-rs `create`, the clock started before the call)
//!   admitting the client to the server on a port of its own, 40,000 + k;
//! - the intruder's labels patched (kube-rs merge patch), adding and removing `trusted: "yes"`, which a policy
//!   admits on ports 39,000-39,999; each change probed on a port of its own.
//!
//! A probe is a TCP connect from the pod's namespace, a new connection (new source port, so a new conntrack
//! entry that goes to user space) each time: connected or refused by the server (no one listens: the RST shows
//! the SYN got through) is a pass, no answer a drop. Waiting for a pass, probes wait 3 ms for their answer and
//! the first answered stops the clock (a pass answered later than that only makes a sample one probe later).
//! Waiting for a drop, a probe unanswered for 3 ms is confirmed by the next, which must stay unanswered for
//! 50 ms (kube-network-policies decides in user space, at scale sometimes more than 3 ms after the SYN, and
//! a slow pass must not count as a drop): the clock stops when the confirming probe was sent.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use flowgate_lab::netns;
use flowgate_tests::{LabGuard, TempDir};
use k8s_openapi::api::{core::v1::Pod, networking::v1::NetworkPolicy};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::{
    propagation::{CHANGE_TIMEOUT, quantile},
    propagation_api,
    report::{Figure, Section},
    traffic::{
        TOPOLOGY,
        knp::KnpCluster,
        rules::{self, NAMESPACE, RuleSet},
    },
};

/// How long a probe waits for its answer while the verdict is expected to change.
const PROBE_TIMEOUT: Duration = Duration::from_millis(3);
/// How long a probe's SYN must go unanswered to count as dropped for certain.
const DROP_CONFIRMED_AFTER: Duration = Duration::from_millis(50);
/// The first port of the policy-creation changes, one port each.
const CREATED_PORTS: u16 = 40_000;
/// The ports the `trusted` policy admits; the label changes use one each.
const TRUSTED_PORTS: u16 = 39_000;
const TRUSTED_LABEL: &str = "trusted";

/// One kind of change's samples: from the API call started to the first probe with the new verdict, and the API
/// call alone.
#[derive(Default)]
struct Samples {
    total_ms: Vec<f64>,
    call_ms: Vec<f64>,
    /// Changes not in effect after [`CHANGE_TIMEOUT`]: counted in `total_ms` at that time, a lower bound.
    timed_out: usize,
}

impl Samples {
    /// Adds a change's outcome ([`wait_for`]'s answer) and its call's time.
    fn push(&mut self, outcome: Option<f64>, call_ms: f64) {
        self.call_ms.push(call_ms);
        self.total_ms.push(outcome.unwrap_or_else(|| {
            self.timed_out += 1;
            CHANGE_TIMEOUT.as_secs_f64() * 1e3
        }));
    }
}

/// Whether a new TCP connection from `netns_name` to `server:port` gets through, for certain (answered
/// within [`DROP_CONFIRMED_AFTER`]).
fn passes(netns_name: &str, server: Ipv4Addr, port: u16) -> anyhow::Result<bool> {
    answered(netns_name, server, port, DROP_CONFIRMED_AFTER)
}

/// Whether a new TCP connection from `netns_name` to `server:port` is answered within `timeout` (connected,
/// or refused by the server).
fn answered(netns_name: &str, server: Ipv4Addr, port: u16, timeout: Duration) -> anyhow::Result<bool> {
    let addr = SocketAddr::from((server, port));
    netns::in_netns(netns_name, || match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("probing {addr} from {netns_name}"))),
    })
    .with_context(|| format!("entering {netns_name}"))?
}

/// Probes until `server:port` from `netns_name` gives `want`; returns the time since `since` in ms (see the
/// module's doc for when the clock stops), or `None` when it still does not after [`CHANGE_TIMEOUT`].
fn wait_for(netns_name: &str, server: Ipv4Addr, port: u16, want: bool, since: Instant) -> anyhow::Result<Option<f64>> {
    loop {
        let answer = answered(netns_name, server, port, PROBE_TIMEOUT)?;
        if want && answer {
            return Ok(Some(since.elapsed().as_secs_f64() * 1e3));
        }
        if !want && !answer {
            let sent = since.elapsed().as_secs_f64() * 1e3;
            if !answered(netns_name, server, port, DROP_CONFIRMED_AFTER)? {
                return Ok(Some(sent));
            }
        }
        if since.elapsed() > CHANGE_TIMEOUT {
            return Ok(None);
        }
    }
}

/// A policy isolating the server and admitting `from` on TCP `port` (`end_port`: a range).
fn policy(name: &str, from: serde_json::Value, port: u16, end_port: Option<u16>) -> NetworkPolicy {
    let mut ports = serde_json::json!({"protocol": "TCP", "port": port});
    if let Some(end) = end_port {
        ports["endPort"] = end.into();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {rules::ROLE_LABEL: "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": from}}], "ports": [ports]}],
        },
    }))
    .expect("a NetworkPolicy")
}

/// Runs `changes` policy creations and `changes` label changes against kube-network-policies, with `endpoints`
/// more pods bound to the node and `policies` more policies over them on the server (the flowgate rows' at-scale
/// set: [`propagation_api::register`]).
fn run(endpoints: usize, policies: usize, changes: usize) -> anyhow::Result<(Samples, Samples)> {
    let topology = TempDir::new("bench-propagation-knp");
    let file = topology.path().join("lab.yaml");
    std::fs::write(&file, TOPOLOGY).with_context(|| format!("writing {}", file.display()))?;
    let lab = LabGuard::up("bpk", &file);
    let pod = |name: &str| {
        lab.state.pod(NAMESPACE, name).with_context(|| format!("lab {} has no pod {NAMESPACE}/{name}", lab.name))
    };
    let (client, server, intruder) = (pod("client")?, pod("server")?, pod("intruder")?);
    let mut cluster = KnpCluster::start(&lab.state)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("a runtime")?;
    let admin = runtime.block_on(cluster.plane().admin_client());
    if endpoints > 0 {
        runtime.block_on(propagation_api::register(&admin, endpoints, policies))?;
    }
    cluster.apply_rules(&RuleSet::new(10, client.ip, server.ip));
    let knp = cluster.start_enforcer(&lab.state)?;
    let started = Instant::now();
    // In effect: the admitted port passes from the client, a port no policy admits is dropped.
    loop {
        if passes(&client.netns, server.ip, rules::PORT)? && !passes(&client.netns, server.ip, CREATED_PORTS)? {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("kube-network-policies not enforcing within 60 s; its log:\n{}", knp.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let api: Api<NetworkPolicy> = Api::namespaced(admin.clone(), NAMESPACE);
    let mut created = Samples::default();
    for k in 0..changes {
        let port = CREATED_PORTS + u16::try_from(k).context("too many changes")?;
        if passes(&client.netns, server.ip, port)? {
            bail!("port {port} passes before its policy was created: the probe would prove nothing");
        }
        let object = policy(&format!("knp-probe-{k}"), serde_json::json!({rules::ROLE_LABEL: "client"}), port, None);
        let at = Instant::now();
        runtime
            .block_on(api.create(&PostParams::default(), &object))
            .with_context(|| format!("creating knp-probe-{k}"))?;
        let call_ms = at.elapsed().as_secs_f64() * 1e3;
        // A policy late past the timeout is counted at it; its port is its own, so later changes are unaffected.
        created.push(wait_for(&client.netns, server.ip, port, true, at)?, call_ms);
        // One change at a time, as the flowgate rows.
        std::thread::sleep(Duration::from_millis(100));
    }

    let trusted =
        policy("knp-trusted", serde_json::json!({TRUSTED_LABEL: "yes"}), TRUSTED_PORTS, Some(TRUSTED_PORTS + 999));
    runtime.block_on(api.create(&PostParams::default(), &trusted)).context("creating knp-trusted")?;
    std::thread::sleep(Duration::from_millis(200));
    let pods: Api<Pod> = Api::namespaced(admin, NAMESPACE);
    let mut labelled = Samples::default();
    for k in 0..changes {
        let port = TRUSTED_PORTS + u16::try_from(k).context("too many changes")?;
        let add = k % 2 == 0;
        if passes(&intruder.netns, server.ip, port)? == add {
            bail!("port {port} already gives the verdict the label change should bring");
        }
        let labels = serde_json::json!({"metadata": {"labels": {TRUSTED_LABEL: if add { Some("yes") } else { None }}}});
        let at = Instant::now();
        runtime
            .block_on(pods.patch(&intruder.name, &PatchParams::default(), &Patch::Merge(&labels)))
            .with_context(|| format!("patching the labels of {}", intruder.name))?;
        let call_ms = at.elapsed().as_secs_f64() * 1e3;
        let outcome = wait_for(&intruder.netns, server.ip, port, add, at)?;
        if outcome.is_none() && wait_for(&intruder.netns, server.ip, port, add, Instant::now())?.is_none() {
            // The next change starts from this one's verdict: without it, it would measure nothing.
            let what = if add { "adding" } else { "removing" };
            bail!(
                "{what} {TRUSTED_LABEL} on {}: port {port} without the new verdict after {CHANGE_TIMEOUT:?} twice",
                intruder.name
            );
        }
        labelled.push(outcome, call_ms);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(knp);
    drop(cluster);
    drop(lab);
    Ok((created, labelled))
}

/// kube-network-policies' rows, beside the flowgate rows through the API server (no target: an anchor), on the
/// small lab and at the flowgate rows' scale (1,000 more policies over 497 more pods).
pub fn measure(quick: bool, section: &mut Section) -> anyhow::Result<()> {
    let changes = if quick { 10 } else { 60 };
    for (endpoints, policies, lab) in
        [(0, 0, "small lab: 3 pods"), (497, 1_000, "at scale: 1000 policies, 500 endpoints")]
    {
        let (created, labelled) = match run(endpoints, policies, changes) {
            Ok(samples) => samples,
            Err(e) => {
                // An anchor that could not be taken is reported, and the section's other figures stand.
                eprintln!("propagation: kube-network-policies, {lab}: {e:#}");
                section.push(
                    Figure::new(format!("kube-network-policies: {lab}: measured"), 0.0, "1 = measured")
                        .note(format!("not measured: {e:#}")),
                );
                continue;
            }
        };
        for (what, samples, how) in [
            (
                "NetworkPolicy created through the API server to first packet decided",
                &created,
                "each a kube-rs create of a new policy admitting the client on a port of its own",
            ),
            (
                "pod label change through the API server to first packet decided",
                &labelled,
                "each a kube-rs merge patch of the intruder pod's labels (adding and removing a label a policy \
                 admits, in turn)",
            ),
        ] {
            let after: Vec<f64> = samples.total_ms.iter().zip(&samples.call_ms).map(|(t, c)| t - c).collect();
            let note = format!(
                "kube-network-policies {} on a real kube-apiserver and etcd, enforcing for the traffic lab's 3 pods \
                 ({endpoints} more pods and {policies} more policies on the server); {changes} changes, {how}, the \
                 clock started before the call; observed by new TCP connections from the pod (a pass: the first \
                 answered within {} ms; a drop: confirmed by one unanswered for {} ms, the clock stopped when it \
                 was sent); the call itself: p50 {:.1} ms, max {:.1} ms; from its answer to \
                 the first packet decided: p50 {:.1} ms, p99 {:.1} ms; {} of the changes not in effect after {} s, \
                 counted at that time; anchor: 310-333 ms in its own scalability reports",
                crate::traffic::knp::KNP_VERSION,
                PROBE_TIMEOUT.as_millis(),
                DROP_CONFIRMED_AFTER.as_millis(),
                quantile(&samples.call_ms, 0.5),
                quantile(&samples.call_ms, 1.0),
                quantile(&after, 0.5),
                quantile(&after, 0.99),
                samples.timed_out,
                CHANGE_TIMEOUT.as_secs(),
            );
            let name = format!("kube-network-policies: {what}, {lab}");
            section
                .push(Figure::new(format!("{name}: p50"), quantile(&samples.total_ms, 0.5), "ms").note(note.clone()));
            section.push(Figure::new(format!("{name}: p99"), quantile(&samples.total_ms, 0.99), "ms").note(note));
        }
    }
    Ok(())
}
