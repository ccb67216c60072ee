//! `flowgate monitor -o text|json`: one line per event on stdout, Cilium-style text
//! ([`flowgate_proto::format`]) or Hubble-shaped JSON ([`flowgate_proto::hubble`]). A closed stdout (a
//! pipe into `head`) ends the command quietly; the agent going away is an error.

use std::{
    io::{self, Write as _},
    time::{SystemTime, UNIX_EPOCH},
};

use flowgate_proto::{
    client::Client,
    filter::FlowFilter,
    format, hubble,
    message::{Event, LostEvents},
};

use super::{MonitorArgs, node_name};
use crate::client::{describe, software};

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// How one event becomes a line.
#[derive(Clone, Debug)]
pub enum LineFormat {
    /// Cilium-style text; `verbose` prefixes the time and CPU.
    Text { verbose: bool },
    /// Hubble's `GetFlowsResponse` JSON.
    Json { node_name: String },
}

impl LineFormat {
    /// The line for `event` (without newline); `now_ns` stamps lost-events records.
    pub fn line(&self, event: &Event, now_ns: u64) -> String {
        match (self, event) {
            (LineFormat::Text { verbose: false }, Event::Flow(flow)) => format::flow_line(flow),
            (LineFormat::Text { verbose: true }, Event::Flow(flow)) => {
                format!("{} CPU {:02}: {}", hubble::timestamp(flow.time_ns), flow.cpu, format::flow_line(flow))
            }
            (LineFormat::Text { verbose: false }, Event::Lost(lost)) => format::lost_line(lost),
            (LineFormat::Text { verbose: true }, Event::Lost(lost)) => {
                format!("{}: {}", hubble::timestamp(now_ns), format::lost_line(lost))
            }
            (LineFormat::Json { node_name }, Event::Flow(flow)) => hubble::flow_line(flow, node_name),
            (LineFormat::Json { node_name }, Event::Lost(lost)) => lost_line_json(lost, node_name, now_ns),
        }
    }
}

fn lost_line_json(lost: &LostEvents, node_name: &str, now_ns: u64) -> String {
    hubble::lost_json(lost, node_name, now_ns).to_string()
}

pub async fn run(args: &MonitorArgs, filter: &FlowFilter, json: bool) -> anyhow::Result<()> {
    let format =
        if json { LineFormat::Json { node_name: node_name() } } else { LineFormat::Text { verbose: args.verbose } };
    let client = Client::connect(&args.socket.socket, &software()).await.map_err(|e| anyhow::anyhow!(describe(&e)))?;
    let mut stream = client
        .subscribe(MonitorArgs::subscription(filter, args.last))
        .await
        .map_err(|e| anyhow::anyhow!(describe(&e)))?;
    let stdout = io::stdout();
    while let Some(batch) = stream.next_batch().await {
        let batch = batch.map_err(|e| anyhow::anyhow!(describe(&e)))?;
        let now = now_ns();
        let mut out = stdout.lock();
        let written =
            batch.iter().try_for_each(|event| writeln!(out, "{}", format.line(event, now))).and_then(|()| out.flush());
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the agent on {} ended the subscription", args.socket.socket.display())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flowgate_proto::{
        hubble::fixtures,
        message::{LossSource, LostEvents},
    };

    use super::*;

    fn flow(f: flowgate_proto::Flow) -> Event {
        Event::Flow(Arc::new(f))
    }

    #[test]
    fn golden_text_lines() {
        let text = LineFormat::Text { verbose: false };
        let id = |f: &flowgate_proto::Flow| format!("{:#010x}", format::flow_id(f));
        let denied = fixtures::verdict_denied();
        assert_eq!(
            text.line(&flow(denied.clone()), 0),
            format!(
                "Policy verdict: flow {} local EP ID 7 (default/database), remote ID 12 (identity 4711 component=backend), \
                 ingress, action deny, match none, policy default deny (isolated by default/default-deny-ingress-policy), \
                 10.0.0.5:43210 -> 10.0.0.7:5432 tcp SYN",
                id(&denied)
            )
        );
        let drop = fixtures::drop();
        assert_eq!(
            text.line(&flow(drop.clone()), 0),
            format!(
                "xx drop (Policy denied) flow {} to endpoint 7 (default/database), ifindex 9, identity 4711->5123, \
                 policy default deny (isolated by default/default-deny-ingress-policy): 10.0.0.5:43210 -> 10.0.0.7:5432 tcp SYN",
                id(&drop)
            )
        );
        let trace = fixtures::trace_egress();
        assert_eq!(
            text.line(&flow(trace.clone()), 0),
            format!(
                "<- endpoint 12 (default/backend) flow {}, remote 7 (default/database), identity 4711->5123 state new \
                 ifindex 8 len 74: 10.0.0.5:43210 -> 10.0.0.7:5432 tcp SYN",
                id(&trace)
            )
        );
        let lost = Event::Lost(LostEvents { source: LossSource::KernelBuffer, count: 312 });
        assert_eq!(text.line(&lost, 0), "Lost 312 events (kernel buffer)");
        let verbose = LineFormat::Text { verbose: true };
        assert!(
            verbose.line(&flow(trace), 0).starts_with("2023-08-21T12:12:18.510175415Z CPU 03: <- endpoint 12 "),
            "verbose adds time and CPU"
        );
        assert_eq!(
            verbose.line(&Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 5 }), 1_000_000_000),
            "1970-01-01T00:00:01Z: Lost 5 events (this client's queue)"
        );
    }

    #[test]
    fn golden_json_lines() {
        let json = LineFormat::Json { node_name: "lab-node".into() };
        assert_eq!(
            json.line(&flow(fixtures::verdict_allowed()), 0),
            r#"{"flow":{"IP":{"destination":"10.0.0.7","ipVersion":"IPv4","source":"10.0.0.5"},"Summary":"TCP Flags: SYN","Type":"L3_L4","destination":{"ID":7,"identity":5123,"labels":["k8s:component=database","k8s:io.kubernetes.pod.namespace=default"],"namespace":"default","pod_name":"database"},"event_type":{"type":5},"ingress_allowed_by":[{"kind":"NetworkPolicy","name":"network-policy-walkthrough-db","namespace":"default"}],"interface":{"index":9},"is_reply":false,"l4":{"TCP":{"destination_port":5432,"flags":{"SYN":true},"source_port":43210}},"node_name":"lab-node","policy_match_type":2,"source":{"ID":12,"identity":4711,"labels":["k8s:component=backend","k8s:io.kubernetes.pod.namespace=default"],"namespace":"default","pod_name":"backend"},"time":"2023-08-21T12:12:18.510175415Z","traffic_direction":"INGRESS","verdict":"FORWARDED"},"node_name":"lab-node","time":"2023-08-21T12:12:18.510175415Z"}"#
        );
        assert_eq!(
            json.line(&Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 9 }), 4_000_000_000),
            r#"{"lost_events":{"num_events_lost":9,"source":"OBSERVER_EVENTS_QUEUE"},"node_name":"lab-node","time":"1970-01-01T00:00:04Z"}"#
        );
    }
}
