//! The agent's Prometheus metrics, in the text exposition format on `--metrics-addr`. Names follow
//! Hubble's metrics under a `flowgate_` prefix. Flow counts come from a hub subscriber ([`flows`]);
//! counters the agent keeps anyway (records read, kernel losses, queue losses, the verdict log's) are
//! read at scrape time; pipeline latency and policy apply times are recorded through the process-wide
//! [`crate::instruments`] by the pipeline, the sessions and the controller, and rendered here.

pub mod flows;
pub mod http;
pub mod text;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use flowgate_proto::message::{Event, Subscription};
use log::info;

use self::{
    flows::{Caps, FlowCounts},
    text::Exposition,
};
use crate::{
    instruments::{Instruments, instruments, latency::Stage},
    state::AgentState,
    verdict_log::VerdictLogStats,
};

/// Default listen address: loopback only, the port Hubble's metrics use.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9965";

/// Everything a scrape reads.
pub struct Metrics {
    state: Arc<AgentState>,
    verdict_log: Option<Arc<VerdictLogStats>>,
    counts: Mutex<FlowCounts>,
    instruments: &'static Instruments,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("listening for metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The running metrics: the counting subscriber and the HTTP server; both stop when this is dropped.
pub struct MetricsHandle {
    pub metrics: Arc<Metrics>,
    pub local_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for MetricsHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Metrics {
    pub fn new(state: Arc<AgentState>, verdict_log: Option<Arc<VerdictLogStats>>, caps: Caps) -> Arc<Self> {
        Arc::new(Self { state, verdict_log, counts: Mutex::new(FlowCounts::new(caps)), instruments: instruments() })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, FlowCounts> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts every flow the hub publishes, until the hub drops the subscription. Paced: under a stream
    /// it takes a batch once per `hub::COALESCE`, and with it what piled up, rather than wake for each.
    pub async fn count_flows(self: Arc<Self>) {
        let mut sub = self.state.hub().subscribe(&Subscription::default());
        let Some(rx) = sub.rx.as_mut() else { return };
        while let Some(batch) = rx.recv_paced().await {
            let mut counts = self.counts();
            for batch in std::iter::once(batch).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                for event in &batch {
                    if let Event::Flow(flow) = event {
                        counts.count(flow);
                    }
                }
            }
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let status = self.state.status();
        let mut out = Exposition::default();
        let c = &status.counters;
        let log = self.verdict_log.as_deref();
        let log_get = |f: fn(&VerdictLogStats) -> &AtomicU64| log.map_or(0, |l| f(l).load(Ordering::Relaxed));
        let log_queue_lost = log_get(|l| &l.queue_lost);

        {
            let counts = self.counts();
            out.family("flowgate_flows_processed_total", "counter", "Flows processed, by event type and verdict.");
            for ((t, v), n) in &counts.processed {
                out.sample("flowgate_flows_processed_total", &[("type", t), ("verdict", v)], *n as f64);
            }
            out.family("flowgate_flows_by_ip_version_total", "counter", "Flows processed, by IP version and verdict.");
            for ((ip_version, v), n) in &counts.by_ip_version {
                out.sample(
                    "flowgate_flows_by_ip_version_total",
                    &[("ip_version", ip_version), ("verdict", v)],
                    *n as f64,
                );
            }
            out.family(
                "flowgate_policy_verdicts_total",
                "counter",
                "Policy verdicts on new connections, by direction, match type and action.",
            );
            for ((d, m, a), n) in &counts.policy_verdicts {
                out.sample(
                    "flowgate_policy_verdicts_total",
                    &[("direction", d), ("match", m), ("action", a)],
                    *n as f64,
                );
            }
            out.family("flowgate_drop_total", "counter", "Dropped packets, by drop reason and protocol.");
            for ((r, p), n) in &counts.drops {
                out.sample("flowgate_drop_total", &[("reason", r), ("protocol", p)], *n as f64);
            }
            out.family(
                "flowgate_endpoint_verdicts_total",
                "counter",
                "Policy verdicts per local endpoint (the first 256 endpoints; the rest as endpoint=\"other\").",
            );
            for ((e, ns, pod, d, a), n) in &counts.endpoint_verdicts {
                out.sample(
                    "flowgate_endpoint_verdicts_total",
                    &[("endpoint", e), ("namespace", ns), ("pod", pod), ("direction", d), ("action", a)],
                    *n as f64,
                );
            }
            out.family("flowgate_policy_verdicts_by_policy_total", "counter", "Policy verdicts per deciding policy: the allowing policies, or for a default deny the policies isolating the endpoint (bounded; the rest as policy=\"other\").");
            for ((p, d, a), n) in &counts.policy_decisions {
                out.sample(
                    "flowgate_policy_verdicts_by_policy_total",
                    &[("policy", p), ("direction", d), ("action", a)],
                    *n as f64,
                );
            }
            out.family("flowgate_denied_flows_total", "counter", "Denied connections by source and destination (namespace/pod, or identity label, or address; bounded, the rest as other).");
            for ((s, d), n) in &counts.denied_pairs {
                out.sample("flowgate_denied_flows_total", &[("source", s), ("destination", d)], *n as f64);
            }
        }

        out.family(
            "flowgate_lost_events_total",
            "counter",
            "Events lost, by where: the kernel's events buffer, client queues, the verdict log, undecodable records.",
        );
        let lost = [
            ("kernel_buffer", c.records_lost_kernel),
            ("client_queue", c.client_queue_losses.saturating_sub(log_queue_lost)),
            ("verdict_log", log_get(|l| &l.records_lost)),
            ("decode_error", c.decode_errors),
        ];
        for (source, n) in lost {
            out.sample("flowgate_lost_events_total", &[("source", source)], n as f64);
        }
        out.simple(
            "flowgate_records_read_total",
            "counter",
            "Records read from the kernel's events buffer.",
            c.records_read as f64,
        );
        out.simple("flowgate_packets_total", "counter", "Packets seen by the kernel programs.", c.packets as f64);
        out.simple("flowgate_endpoints", "gauge", "Endpoints the agent enforces for.", status.endpoints as f64);
        out.simple(
            "flowgate_identities",
            "gauge",
            "Security identities derived from labels.",
            status.identities as f64,
        );
        out.simple("flowgate_policies", "gauge", "NetworkPolicies in effect.", status.policy.loaded.len() as f64);
        out.simple(
            "flowgate_policy_revision",
            "gauge",
            "Revision of the policy set in effect.",
            status.policy.revision as f64,
        );
        out.simple(
            "flowgate_policy_errors",
            "gauge",
            "Errors of the latest policy change (the last good set stays in effect).",
            status.policy.errors.len() as f64,
        );
        out.family(
            "flowgate_map_entries",
            "gauge",
            "Entries of a datapath map in the policy generation in effect (policy, ipcache, endpoint).",
        );
        for fill in &status.policy.maps {
            out.sample("flowgate_map_entries", &[("map", &fill.map)], fill.entries as f64);
        }
        out.family(
            "flowgate_map_capacity",
            "gauge",
            "Entries a datapath map holds (max_entries); a policy set that needs more is refused.",
        );
        for fill in &status.policy.maps {
            out.sample("flowgate_map_capacity", &[("map", &fill.map)], fill.capacity as f64);
        }
        let ct = &status.conntrack;
        out.simple("flowgate_conntrack_entries", "gauge", "Connection-tracking entries.", ct.entries as f64);
        out.simple(
            "flowgate_conntrack_capacity",
            "gauge",
            "Capacity of the connection-tracking map (LRU).",
            ct.capacity as f64,
        );
        out.simple(
            "flowgate_conntrack_gc_deleted_total",
            "counter",
            "Expired connection-tracking entries the agent deleted.",
            ct.gc_deleted as f64,
        );
        out.simple(
            "flowgate_datapath_revision",
            "gauge",
            "Policy revision of the datapath (bumped on every change applied to the maps; revoked connections name it).",
            ct.revision as f64,
        );
        out.simple("flowgate_clients", "gauge", "Clients connected to the socket.", status.clients.len() as f64);
        out.simple("flowgate_uptime_seconds", "gauge", "Seconds since the agent started.", status.uptime_seconds);

        if let Some(l) = log {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
            out.simple(
                "flowgate_verdict_log_records_total",
                "counter",
                "Flow records written whole to the verdict log.",
                get(&l.records_written),
            );
            out.simple(
                "flowgate_verdict_log_bytes_total",
                "counter",
                "Bytes written to the verdict log.",
                get(&l.bytes_written),
            );
            out.simple(
                "flowgate_verdict_log_write_failures_total",
                "counter",
                "Writes to the verdict log that failed (their records count as lost).",
                get(&l.write_failures),
            );
            out.simple(
                "flowgate_verdict_log_rotations_total",
                "counter",
                "Rotations of the verdict log.",
                get(&l.rotations),
            );
            out.simple(
                "flowgate_verdict_log_config_reloads_total",
                "counter",
                "Reloads of the verdict log's configuration file.",
                get(&l.config_reloads),
            );
        }

        let (buckets, count, sum) = self.instruments.policy_apply.snapshot();
        out.family(
            "flowgate_policy_apply_duration_seconds",
            "histogram",
            "Time to compile a policy set and write it to the datapath.",
        );
        for (le, n) in buckets {
            out.sample("flowgate_policy_apply_duration_seconds_bucket", &[("le", &text::float(le))], n as f64);
        }
        out.sample("flowgate_policy_apply_duration_seconds_bucket", &[("le", "+Inf")], count as f64);
        out.sample("flowgate_policy_apply_duration_seconds_sum", &[], sum);
        out.sample("flowgate_policy_apply_duration_seconds_count", &[], count as f64);

        out.family("flowgate_pipeline_latency_seconds", "summary", "Event pipeline latency: kernel timestamp to decode, decode to a client's send; quantiles over the last 1-2 minutes.");
        let summaries: Vec<_> = Stage::ALL.iter().map(|s| (s.label(), self.instruments.latency.summary(*s))).collect();
        for (stage, s) in &summaries {
            for (q, v) in &s.quantiles {
                out.sample(
                    "flowgate_pipeline_latency_seconds",
                    &[("stage", stage), ("quantile", &text::float(*q))],
                    *v,
                );
            }
            out.sample("flowgate_pipeline_latency_seconds_sum", &[("stage", stage)], s.sum_seconds);
            out.sample("flowgate_pipeline_latency_seconds_count", &[("stage", stage)], s.count as f64);
        }
        out.family(
            "flowgate_pipeline_latency_seconds_max",
            "gauge",
            "Largest pipeline latency over the last 1-2 minutes.",
        );
        for (stage, s) in &summaries {
            out.sample("flowgate_pipeline_latency_seconds_max", &[("stage", stage)], s.max_seconds);
        }
        out.finish()
    }
}

/// Binds `addr`, then counts flows and serves `/metrics` until the handle is dropped.
pub async fn start(
    addr: SocketAddr,
    state: Arc<AgentState>,
    verdict_log: Option<Arc<VerdictLogStats>>,
) -> Result<MetricsHandle, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener.local_addr().map_err(|source| MetricsError::Bind { addr, source })?;
    let metrics = Metrics::new(state, verdict_log, Caps::default());
    let counting = tokio::spawn(Arc::clone(&metrics).count_flows());
    let serving = tokio::spawn(http::serve(listener, Arc::clone(&metrics)));
    info!("serving metrics on http://{local_addr}/metrics");
    Ok(MetricsHandle { metrics, local_addr, tasks: vec![counting, serving] })
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use flowgate_proto::flow::{EventType, Verdict, fixtures::flow_between};

    use super::*;
    use flowgate_events::hub::{Hub, HubConfig};

    use crate::state::AgentInfo;

    #[tokio::test]
    async fn scrape_shows_counts_losses_and_latency() {
        let hub = Hub::new(HubConfig::default());
        let state = AgentState::new(AgentInfo::default(), Arc::clone(&hub));
        let handle = start("127.0.0.1:0".parse().unwrap(), Arc::clone(&state), None).await.unwrap();
        while hub.subscribers() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut f = flow_between(1, 2, 5);
        f.event_type = EventType::PolicyVerdict;
        f.verdict = Verdict::Dropped;
        let flows = vec![Arc::new(f)];
        instruments().latency.decoded(&flows);
        hub.publish(&flows);
        instruments().policy_apply.observe(Duration::from_millis(3));
        state.set_policy_status(flowgate_proto::message::PolicyStatus {
            maps: vec![flowgate_proto::message::MapFill { map: "policy".into(), entries: 18_000, capacity: 65_536 }],
            ..Default::default()
        });
        let body = loop {
            let body = http::get(handle.local_addr, "/metrics").await.unwrap();
            if body.contains("flowgate_flows_processed_total{type=\"policy-verdict\",verdict=\"DROPPED\"} 1") {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(body.contains("flowgate_lost_events_total{source=\"kernel_buffer\"} 0"), "{body}");
        assert!(
            body.contains("flowgate_denied_flows_total{source=\"default/pod-1\",destination=\"default/pod-2\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("flowgate_pipeline_latency_seconds{stage=\"kernel_to_decode\",quantile=\"0.99\"}"),
            "{body}"
        );
        assert!(body.contains("flowgate_policy_apply_duration_seconds_bucket{le=\"0.005\"}"), "{body}");
        assert!(body.contains("# TYPE flowgate_pipeline_latency_seconds summary"), "{body}");
        assert!(body.contains("flowgate_map_entries{map=\"policy\"} 18000"), "{body}");
        assert!(body.contains("flowgate_map_capacity{map=\"policy\"} 65536"), "{body}");
        let missing = http::get(handle.local_addr, "/nothing").await.unwrap_err();
        assert!(missing.to_string().contains("404"), "{missing}");
    }
}
