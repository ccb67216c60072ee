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
//! the SYN got through) is a pass, no answer a drop. kube-network-policies decides in user space, and how long
//! it takes grows with what it holds (here 0.3 ms for an admitted connection on the small lab, 3-15 ms at
//! scale), so the probes are paced by that time, measured before the changes and reported as a row of its own
//! ([`Pace`]): a probe every twice its median (at least 3 ms), so the probes do not queue behind each other.
//! Waiting for a pass, probes overlap, each waiting up to 900 ms for its answer (under the SYN's first
//! retransmission), and the first answer seen stops the clock: a verdict decided slower than the probes come
//! still counts, when it is decided. Waiting for a drop, a probe unanswered for one interval is confirmed by the
//! next, which must stay unanswered for ten times the median decision (at least 50 ms: a slow pass must not count
//! as a drop): the clock stops when the confirming probe was sent.

use std::{
    io::{self, ErrorKind},
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

/// The shortest time between probes while the verdict is expected to change.
const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(3);
/// The shortest time a probe's SYN must go unanswered to count as dropped for certain.
const DROP_CONFIRMED_MIN: Duration = Duration::from_millis(50);
/// How long a probe waits for a pass: under the SYN's first retransmission (1 s), so each probe is one packet.
const PASS_PATIENCE: Duration = Duration::from_millis(900);
/// Admitted connections timed to pace the probes.
const DECISIONS_TIMED: usize = 30;
/// How long a connection that must pass may take: past the SYN's third retransmission (1 + 2 + 4 s), so a
/// SYN kube-network-policies lost (it does, a few in a hundred at scale here) is not taken for a drop.
const SLOW_ANSWER: Duration = Duration::from_millis(7_500);
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

/// How the probes are paced, from kube-network-policies' time to answer an admitted new connection.
struct Pace {
    /// The answer times measured, in ms (a connect from the client to the admitted port, one after another).
    decision_ms: Vec<f64>,
    /// Between two probes: twice the median answer, at least [`PROBE_INTERVAL_MIN`].
    interval: Duration,
    /// How long a probe must go unanswered to count as a drop: ten times the median answer, at least
    /// [`DROP_CONFIRMED_MIN`], at most [`PASS_PATIENCE`].
    drop_confirmed_after: Duration,
}

impl Pace {
    /// Times [`DECISIONS_TIMED`] admitted connections from `netns_name` to `server:port`.
    fn measure(netns_name: &str, server: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let mut decision_ms = Vec::with_capacity(DECISIONS_TIMED);
        for _ in 0..DECISIONS_TIMED {
            let at = Instant::now();
            // A connection whose SYN it lost is answered after the SYN's retransmissions (1 s, 3 s, 7 s):
            // slow, and counted as such; one not answered even then is left out.
            if answered(netns_name, server, port, SLOW_ANSWER)? {
                decision_ms.push(at.elapsed().as_secs_f64() * 1e3);
            }
        }
        if decision_ms.len() < DECISIONS_TIMED / 2 {
            bail!(
                "only {} of {DECISIONS_TIMED} admitted connections from {netns_name} to {server}:{port} were \
                 answered within {SLOW_ANSWER:?}",
                decision_ms.len()
            );
        }
        Ok(Self::from_decisions(decision_ms))
    }

    fn from_decisions(decision_ms: Vec<f64>) -> Self {
        let median = Duration::from_secs_f64(quantile(&decision_ms, 0.5) / 1e3);
        Self {
            interval: (median * 2).max(PROBE_INTERVAL_MIN),
            drop_confirmed_after: (median * 10).clamp(DROP_CONFIRMED_MIN, PASS_PATIENCE),
            decision_ms,
        }
    }
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
fn wait_for(
    netns_name: &str,
    server: Ipv4Addr,
    port: u16,
    want: bool,
    pace: &Pace,
    since: Instant,
) -> anyhow::Result<Option<f64>> {
    if want {
        return wait_for_pass(netns_name, SocketAddr::from((server, port)), pace, since);
    }
    loop {
        if !answered(netns_name, server, port, pace.interval)? {
            let sent = since.elapsed().as_secs_f64() * 1e3;
            if !answered(netns_name, server, port, pace.drop_confirmed_after)? {
                return Ok(Some(sent));
            }
        }
        if since.elapsed() > CHANGE_TIMEOUT {
            return Ok(None);
        }
    }
}

/// [`wait_for`] a pass: a probe every `pace.interval`, overlapping, each waiting up to [`PASS_PATIENCE`]; the
/// first answer seen stops the clock.
fn wait_for_pass(netns_name: &str, addr: SocketAddr, pace: &Pace, since: Instant) -> anyhow::Result<Option<f64>> {
    // Sockets are created in the namespace of the thread that opens them: the prober runs on one inside it.
    netns::in_netns(netns_name, || -> anyhow::Result<Option<f64>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("a runtime")?;
        runtime.block_on(async {
            let mut probes = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(pace.interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if since.elapsed() > CHANGE_TIMEOUT {
                            return Ok(None);
                        }
                        probes.spawn(probe(addr));
                    }
                    Some(done) = probes.join_next() => {
                        let answer = done.context("a probe's task")?.with_context(|| format!("probing {addr}"))?;
                        if let Some(at) = answer {
                            return Ok(Some(at.duration_since(since).as_secs_f64() * 1e3));
                        }
                    }
                }
            }
        })
    })
    .with_context(|| format!("entering {netns_name}"))?
}

/// One new connection to `addr`: when it was answered (connected or refused), or `None` when it was not within
/// [`PASS_PATIENCE`].
async fn probe(addr: SocketAddr) -> io::Result<Option<Instant>> {
    match tokio::time::timeout(PASS_PATIENCE, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(Some(Instant::now())),
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => Ok(Some(Instant::now())),
        Ok(Err(e)) => Err(e),
        Err(_elapsed) => Ok(None),
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
fn run(endpoints: usize, policies: usize, changes: usize) -> anyhow::Result<(Pace, Samples, Samples)> {
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
        if answered(&client.netns, server.ip, rules::PORT, DROP_CONFIRMED_MIN)?
            && !answered(&client.netns, server.ip, CREATED_PORTS, DROP_CONFIRMED_MIN)?
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("kube-network-policies not enforcing within 60 s; its log:\n{}", knp.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pace = Pace::measure(&client.netns, server.ip, rules::PORT)?;

    let api: Api<NetworkPolicy> = Api::namespaced(admin.clone(), NAMESPACE);
    let mut created = Samples::default();
    for k in 0..changes {
        let port = CREATED_PORTS + u16::try_from(k).context("too many changes")?;
        if answered(&client.netns, server.ip, port, pace.drop_confirmed_after)? {
            bail!("port {port} passes before its policy was created: the probe would prove nothing");
        }
        let object = policy(&format!("knp-probe-{k}"), serde_json::json!({rules::ROLE_LABEL: "client"}), port, None);
        let at = Instant::now();
        runtime
            .block_on(api.create(&PostParams::default(), &object))
            .with_context(|| format!("creating knp-probe-{k}"))?;
        let call_ms = at.elapsed().as_secs_f64() * 1e3;
        // A policy late past the timeout is counted at it; its port is its own, so later changes are unaffected.
        created.push(wait_for(&client.netns, server.ip, port, true, &pace, at)?, call_ms);
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
        // Before adding the label the port must be dropped; before removing it, it must pass (given time for
        // a lost SYN: a pass that came late is still a pass).
        let patience = if add { pace.drop_confirmed_after } else { SLOW_ANSWER };
        if answered(&intruder.netns, server.ip, port, patience)? == add {
            bail!("port {port} already gives the verdict the label change should bring");
        }
        let labels = serde_json::json!({"metadata": {"labels": {TRUSTED_LABEL: if add { Some("yes") } else { None }}}});
        let at = Instant::now();
        runtime
            .block_on(pods.patch(&intruder.name, &PatchParams::default(), &Patch::Merge(&labels)))
            .with_context(|| format!("patching the labels of {}", intruder.name))?;
        let call_ms = at.elapsed().as_secs_f64() * 1e3;
        let outcome = wait_for(&intruder.netns, server.ip, port, add, &pace, at)?;
        if outcome.is_none() && wait_for(&intruder.netns, server.ip, port, add, &pace, Instant::now())?.is_none() {
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
    Ok((pace, created, labelled))
}

/// kube-network-policies' rows, beside the flowgate rows through the API server (no target: an anchor), on the
/// small lab and at the flowgate rows' scale (1,000 more policies over 497 more pods).
pub fn measure(quick: bool, section: &mut Section) -> anyhow::Result<()> {
    let changes = if quick { 10 } else { 60 };
    for (endpoints, policies, lab) in
        [(0, 0, "small lab: 3 pods"), (497, 1_000, "at scale: 1000 policies, 500 endpoints")]
    {
        let (pace, created, labelled) = match run(endpoints, policies, changes) {
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
        let decided = format!("kube-network-policies: an admitted new connection answered, {lab}");
        let note = format!(
            "{} connects from the client pod to the admitted port, one after another, each timed from the call to \
             connected (the SYN decided in kube-network-policies' user space, the SYN-ACK back); the probes below \
             are paced by its median: one every {:.1} ms, a drop confirmed by {:.0} ms without an answer",
            pace.decision_ms.len(),
            pace.interval.as_secs_f64() * 1e3,
            pace.drop_confirmed_after.as_secs_f64() * 1e3,
        );
        section.push(Figure::new(format!("{decided}: p50"), quantile(&pace.decision_ms, 0.5), "ms").note(note.clone()));
        section.push(Figure::new(format!("{decided}: max"), quantile(&pace.decision_ms, 1.0), "ms").note(note));
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
                 clock started before the call; observed by new TCP connections from the pod paced by the row \
                 above (a pass: the first answered, probes overlapping, each waiting up to {} ms; a drop: confirmed \
                 by one unanswered for {:.0} ms, the clock stopped when it was sent); the call itself: p50 {:.1} ms, \
                 max {:.1} ms; from its answer to the first packet decided: p50 {:.1} ms, p99 {:.1} ms; {} of the \
                 changes not in effect after {} s, \
                 counted at that time; anchor: 310-333 ms in its own scalability reports",
                crate::traffic::knp::KNP_VERSION,
                PASS_PATIENCE.as_millis(),
                pace.drop_confirmed_after.as_secs_f64() * 1e3,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_paced_by_the_median_decision_within_their_bounds() {
        // The small lab: decisions well under the floor.
        let fast = Pace::from_decisions(vec![0.3, 0.4, 0.35]);
        assert_eq!(fast.interval, PROBE_INTERVAL_MIN);
        assert_eq!(fast.drop_confirmed_after, DROP_CONFIRMED_MIN);
        // At scale: a 1 s outlier (a retransmitted SYN) moves nothing.
        let slow = Pace::from_decisions(vec![4.0, 4.5, 1008.0, 5.0, 4.4]);
        assert_eq!(slow.interval, Duration::from_millis(9));
        assert_eq!(slow.drop_confirmed_after, Duration::from_millis(50));
        let slower = Pace::from_decisions(vec![12.0]);
        assert_eq!(slower.drop_confirmed_after, Duration::from_millis(120));
        // Never past a pass's patience: a confirmed drop must be one a pass would not still answer.
        assert_eq!(Pace::from_decisions(vec![500.0]).drop_confirmed_after, PASS_PATIENCE);
    }
}
