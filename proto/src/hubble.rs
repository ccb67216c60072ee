//! Hubble-shaped JSON of flows and lost events: one `GetFlowsResponse` object per line, as
//! `hubble observe -o json` prints it (protobuf's JSON mapping of `flow.proto` / `observer.proto` with
//! the proto field names, default values left out). Pure functions, shared by `flowgate monitor -o json`
//! and the agent's verdict log so both write exactly the same JSON. Every field is described in
//! `docs/flow-json.md`.

use flowgate_common::drop_reason;
use serde_json::{Map, Value, json};

use crate::{
    civil,
    flow::{
        CtState, EventType, Flow, MatchType, Peer, PolicyAttribution, PolicyName, Protocol,
        TrafficDirection, Verdict,
    },
    message::{LossSource, LostEvents},
};

/// Cilium's monitor message types (`pkg/monitor/api`), as Hubble puts them in `event_type.type`.
pub mod message_type {
    pub const DROP: i32 = 1;
    pub const DEBUG_CAPTURE: i32 = 3;
    pub const TRACE: i32 = 4;
    pub const POLICY_VERDICT: i32 = 5;
    pub const AGENT: i32 = 130;
}

/// Cilium's trace observation points, as Hubble puts them in `event_type.sub_type` of a trace.
pub mod observation_point {
    /// `TRACE_TO_LXC`: delivered to the endpoint (Hubble's `TO_ENDPOINT`).
    pub const TO_ENDPOINT: i32 = 0;
    /// `TRACE_FROM_LXC`: left the endpoint (Hubble's `FROM_ENDPOINT`).
    pub const FROM_ENDPOINT: i32 = 5;
}

/// `kind` of every policy in `*_allowed_by` / `*_denied_by`.
pub const POLICY_KIND: &str = "NetworkPolicy";

/// A Unix time in nanoseconds as protobuf's JSON mapping writes a `Timestamp`: RFC 3339 in UTC, with 0,
/// 3, 6 or 9 fractional digits (as few as represent the value exactly), e.g.
/// `2021-11-10T10:41:26.095357Z`.
pub fn timestamp(time_ns: u64) -> String {
    let secs = time_ns / 1_000_000_000;
    let nanos = (time_ns % 1_000_000_000) as u32;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil::from_days(days);
    let (h, m, s) = (rem / 3600, (rem / 60) % 60, rem % 60);
    let frac = if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{frac}Z")
}


/// Hubble's `Verdict` name.
pub fn verdict_name(verdict: Verdict) -> &'static str {
    verdict.hubble_name()
}

/// Hubble's `DropReason` name of a Cilium drop reason code (`flowgate_common::drop_reason`'s table).
pub fn drop_reason_name(code: u8) -> &'static str {
    drop_reason::hubble_name(code)
}

/// Cilium's numbering of policy match types (`policy_match_type`), see [`MatchType::hubble_number`].
pub fn match_type_number(m: Option<MatchType>) -> u32 {
    m.unwrap_or(MatchType::None).hubble_number()
}

/// `event_type` {type, sub_type}: drop → (1, drop reason), trace → (4, observation point), policy
/// verdict → (5, 0), capture → (3, 0), agent → (130, 0).
pub fn event_type(flow: &Flow) -> (i32, i32) {
    match flow.event_type {
        EventType::Drop => (message_type::DROP, i32::from(flow.drop_reason)),
        EventType::Trace => (
            message_type::TRACE,
            match flow.traffic_direction {
                TrafficDirection::Egress => observation_point::FROM_ENDPOINT,
                _ => observation_point::TO_ENDPOINT,
            },
        ),
        EventType::PolicyVerdict => (message_type::POLICY_VERDICT, 0),
        EventType::Capture => (message_type::DEBUG_CAPTURE, 0),
        EventType::Agent => (message_type::AGENT, 0),
    }
}

/// A label as Cilium writes it, with its source: `app=web` → `k8s:app=web`; labels that already carry
/// a source (`reserved:world`, `cidr:10.0.0.0/8`) are kept.
pub fn cilium_label(label: &str) -> String {
    let key = label.split_once('=').map_or(label, |(k, _)| k);
    if key.contains(':') {
        label.to_owned()
    } else {
        format!("k8s:{label}")
    }
}

/// `TCP Flags: SYN`, `UDP`, `ICMPv4 EchoRequest`, as Hubble's summary.
pub fn summary(flow: &Flow) -> String {
    let name = flow.protocol.hubble_name().unwrap_or_default();
    match flow.protocol {
        Protocol::Tcp => format!("{name} Flags: {}", flow.tcp_flags.names().join(", ")),
        Protocol::Udp | Protocol::Sctp => name.into(),
        Protocol::Icmp => format!("{name} {}", icmp_type_name(flow.icmp_type, flow.icmp_code)),
        Protocol::Other(n) => format!("IP protocol {n}"),
    }
}

fn icmp_type_name(t: u8, code: u8) -> String {
    match t {
        0 => "EchoReply".into(),
        3 => format!("DestinationUnreachable({code})"),
        5 => "Redirect".into(),
        8 => "EchoRequest".into(),
        11 => "TimeExceeded".into(),
        _ => format!("Type{t}Code{code}"),
    }
}

/// Inserts `key: value` unless the value is protobuf's default (0, false, "", empty list or object):
/// protobuf's JSON mapping leaves defaults out.
fn put(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let default = match &value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_u64() == Some(0) || n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    if !default {
        obj.insert(key.to_owned(), value);
    }
}

/// `flow.Endpoint`: `ID` (local endpoints only), `identity`, `namespace`, `labels`, `pod_name`.
fn endpoint_json(peer: &Peer) -> Value {
    let mut o = Map::new();
    put(&mut o, "ID", json!(peer.endpoint_id));
    put(&mut o, "identity", json!(peer.identity));
    put(&mut o, "namespace", json!(peer.namespace));
    let mut labels: Vec<String> = peer.labels.iter().map(|l| cilium_label(l)).collect();
    if !peer.namespace.is_empty() && !peer.pod_name.is_empty() {
        let ns = format!("k8s:io.kubernetes.pod.namespace={}", peer.namespace);
        if !labels.contains(&ns) {
            labels.push(ns);
            labels.sort();
        }
    }
    put(&mut o, "labels", json!(labels));
    put(&mut o, "pod_name", json!(peer.pod_name));
    Value::Object(o)
}

fn l4_json(flow: &Flow) -> Value {
    let Some(name) = flow.protocol.hubble_name() else {
        return Value::Null;
    };
    let mut body = Map::new();
    if flow.protocol == Protocol::Icmp {
        put(&mut body, "type", json!(flow.icmp_type));
        put(&mut body, "code", json!(flow.icmp_code));
    } else {
        put(&mut body, "source_port", json!(flow.source_port));
        put(&mut body, "destination_port", json!(flow.destination_port));
    }
    if flow.protocol == Protocol::Tcp {
        let flags: Map<String, Value> =
            flow.tcp_flags.names().into_iter().map(|f| (f.to_owned(), Value::Bool(true))).collect();
        put(&mut body, "flags", Value::Object(flags));
    }
    json!({ name: Value::Object(body) })
}

fn policies_json(names: &[PolicyName]) -> Value {
    names
        .iter()
        .map(|p| {
            let mut o = Map::new();
            put(&mut o, "name", json!(p.name));
            put(&mut o, "namespace", json!(p.namespace));
            o.insert("kind".into(), json!(POLICY_KIND));
            Value::Object(o)
        })
        .collect()
}

/// The `flow.Flow` object alone (what goes under `"flow"`).
pub fn flow_object(flow: &Flow, node_name: &str) -> Value {
    let time = timestamp(flow.time_ns);
    let mut o = Map::new();
    o.insert("time".into(), json!(time));
    o.insert("verdict".into(), json!(verdict_name(flow.verdict)));
    o.insert(
        "IP".into(),
        json!({ "source": flow.source_ip.to_string(), "destination": flow.destination_ip.to_string(), "ipVersion": "IPv4" }),
    );
    put(&mut o, "l4", l4_json(flow));
    o.insert("source".into(), endpoint_json(&flow.source));
    o.insert("destination".into(), endpoint_json(&flow.destination));
    o.insert("Type".into(), json!("L3_L4"));
    put(&mut o, "node_name", json!(node_name));
    if flow.is_reply == Some(true) {
        // The deprecated `reply` Hubble still writes next to `is_reply`.
        o.insert("reply".into(), json!(true));
    }
    let (ty, sub_type) = event_type(flow);
    let mut et = Map::new();
    put(&mut et, "type", json!(ty));
    put(&mut et, "sub_type", json!(sub_type));
    o.insert("event_type".into(), Value::Object(et));
    match flow.traffic_direction {
        TrafficDirection::Ingress => o.insert("traffic_direction".into(), json!("INGRESS")),
        TrafficDirection::Egress => o.insert("traffic_direction".into(), json!("EGRESS")),
        TrafficDirection::Unknown => None,
    };
    if flow.event_type == EventType::PolicyVerdict {
        put(
            &mut o,
            "policy_match_type",
            json!(match_type_number(flow.match_type)),
        );
    }
    if flow.event_type == EventType::Trace {
        let point = match flow.traffic_direction {
            TrafficDirection::Egress => "FROM_ENDPOINT",
            _ => "TO_ENDPOINT",
        };
        o.insert("trace_observation_point".into(), json!(point));
        let reason = match flow.ct_state {
            Some(CtState::New) => "NEW",
            Some(CtState::Established) => "ESTABLISHED",
            Some(CtState::Reply) => "REPLY",
            None => "",
        };
        put(&mut o, "trace_reason", json!(reason));
    }
    if flow.verdict == Verdict::Dropped {
        let code = if flow.drop_reason == 0 && flow.policy.is_some() {
            drop_reason::POLICY_DENIED
        } else {
            flow.drop_reason
        };
        o.insert("drop_reason_desc".into(), json!(drop_reason_name(code)));
    }
    if let Some(reply) = flow.is_reply {
        o.insert("is_reply".into(), json!(reply));
    }
    if flow.ifindex != 0 {
        o.insert("interface".into(), json!({ "index": flow.ifindex }));
    }
    o.insert("Summary".into(), json!(summary(flow)));
    let (allowed, denied, names) = match &flow.policy {
        Some(PolicyAttribution::AllowedBy(names)) => (true, false, names.as_slice()),
        Some(PolicyAttribution::DefaultDeny { isolated_by }) => {
            (false, true, isolated_by.as_slice())
        }
        None => (false, false, &[][..]),
    };
    let prefix = match flow.traffic_direction {
        TrafficDirection::Ingress => "ingress",
        _ => "egress",
    };
    if allowed {
        put(
            &mut o,
            &format!("{prefix}_allowed_by"),
            policies_json(names),
        );
    }
    if denied {
        put(&mut o, &format!("{prefix}_denied_by"), policies_json(names));
    }
    Value::Object(o)
}

/// One `GetFlowsResponse` with a flow: `{"flow":{...},"node_name":"...","time":"..."}`.
pub fn flow_json(flow: &Flow, node_name: &str) -> Value {
    let mut o = Map::new();
    o.insert("flow".into(), flow_object(flow, node_name));
    put(&mut o, "node_name", json!(node_name));
    o.insert("time".into(), json!(timestamp(flow.time_ns)));
    Value::Object(o)
}

/// Hubble's `LostEventSource` name: the kernel buffer is `PERF_EVENT_RING_BUFFER`, this client's queue
/// in the agent is `OBSERVER_EVENTS_QUEUE`; decode errors have no Hubble counterpart.
pub fn lost_source_name(source: LossSource) -> &'static str {
    match source {
        LossSource::KernelBuffer => "PERF_EVENT_RING_BUFFER",
        LossSource::ClientQueue => "OBSERVER_EVENTS_QUEUE",
        LossSource::DecodeError => "UNKNOWN_LOST_EVENT_SOURCE",
    }
}

/// One `GetFlowsResponse` with lost events, stamped `time_ns` (when the client learnt of the loss):
/// `{"lost_events":{"source":"PERF_EVENT_RING_BUFFER","num_events_lost":312},"node_name":..,"time":..}`.
pub fn lost_json(lost: &LostEvents, node_name: &str, time_ns: u64) -> Value {
    let mut o = Map::new();
    o.insert(
        "lost_events".into(),
        json!({ "source": lost_source_name(lost.source), "num_events_lost": lost.count }),
    );
    put(&mut o, "node_name", json!(node_name));
    o.insert("time".into(), json!(timestamp(time_ns)));
    Value::Object(o)
}

/// Fixture flows of every kind, for golden tests and the schema check.
pub mod fixtures {
    use std::{net::Ipv4Addr, sync::Arc};

    use crate::flow::{
        CtState, EventType, Flow, MatchType, Peer, PolicyAttribution, PolicyName, Protocol,
        TcpFlags, TrafficDirection, Verdict,
    };

    /// 2023-08-21T12:12:18.510175415Z.
    pub const TIME_NS: u64 = 1_692_619_938_510_175_415;

    pub fn backend() -> Arc<Peer> {
        Arc::new(Peer {
            endpoint_id: 12,
            identity: 4711,
            namespace: "default".into(),
            pod_name: "backend".into(),
            labels: vec!["component=backend".into()],
        })
    }

    pub fn database() -> Arc<Peer> {
        Arc::new(Peer {
            endpoint_id: 7,
            identity: 5123,
            namespace: "default".into(),
            pod_name: "database".into(),
            labels: vec!["component=database".into()],
        })
    }

    fn policy(name: &str) -> PolicyName {
        PolicyName {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn base() -> Flow {
        Flow {
            time_ns: TIME_NS,
            ktime_ns: 1_000,
            event_type: EventType::PolicyVerdict,
            verdict: Verdict::Forwarded,
            drop_reason: 0,
            source_ip: Ipv4Addr::new(10, 0, 0, 5),
            destination_ip: Ipv4Addr::new(10, 0, 0, 7),
            protocol: Protocol::Tcp,
            source_port: 43210,
            destination_port: 5432,
            tcp_flags: TcpFlags(TcpFlags::SYN),
            icmp_type: 0,
            icmp_code: 0,
            source: backend(),
            destination: database(),
            endpoint_id: 7,
            traffic_direction: TrafficDirection::Ingress,
            ifindex: 9,
            packet_len: 74,
            is_reply: Some(false),
            match_type: None,
            policy: None,
            ct_state: None,
            cpu: 3,
        }
    }

    /// Ingress to the database, allowed by `default/network-policy-walkthrough-db` (L3-L4).
    pub fn verdict_allowed() -> Flow {
        Flow {
            match_type: Some(MatchType::L3L4),
            policy: Some(PolicyAttribution::AllowedBy(vec![policy(
                "network-policy-walkthrough-db",
            )])),
            ..base()
        }
    }

    /// Ingress to the database, denied by default (isolated by `default/default-deny-ingress-policy`).
    pub fn verdict_denied() -> Flow {
        Flow {
            verdict: Verdict::Dropped,
            drop_reason: 133,
            match_type: Some(MatchType::None),
            policy: Some(PolicyAttribution::DefaultDeny {
                isolated_by: vec![policy("default-deny-ingress-policy")],
            }),
            ..base()
        }
    }

    /// As [`verdict_denied`], in audit mode.
    pub fn verdict_audit() -> Flow {
        Flow {
            verdict: Verdict::Audit,
            drop_reason: 0,
            ..verdict_denied()
        }
    }

    /// The drop record of the denied SYN.
    pub fn drop() -> Flow {
        Flow {
            event_type: EventType::Drop,
            ..verdict_denied()
        }
    }

    /// The backend's SYN leaving it (egress trace, new connection).
    pub fn trace_egress() -> Flow {
        Flow {
            event_type: EventType::Trace,
            endpoint_id: 12,
            traffic_direction: TrafficDirection::Egress,
            ifindex: 8,
            ct_state: Some(CtState::New),
            ..base()
        }
    }

    /// The database's SYN-ACK reaching the backend (ingress trace, reply).
    pub fn trace_reply() -> Flow {
        Flow {
            event_type: EventType::Trace,
            source_ip: Ipv4Addr::new(10, 0, 0, 7),
            destination_ip: Ipv4Addr::new(10, 0, 0, 5),
            source_port: 5432,
            destination_port: 43210,
            tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK),
            source: database(),
            destination: backend(),
            endpoint_id: 12,
            traffic_direction: TrafficDirection::Ingress,
            ifindex: 8,
            is_reply: Some(true),
            ct_state: Some(CtState::Reply),
            ..base()
        }
    }

    /// A UDP DNS query from the backend to a world address, allowed on egress by `default/allow-dns`.
    pub fn udp_to_world() -> Flow {
        Flow {
            protocol: Protocol::Udp,
            tcp_flags: TcpFlags(0),
            destination_ip: Ipv4Addr::new(192, 0, 2, 53),
            source_port: 53001,
            destination_port: 53,
            destination: Arc::new(Peer {
                identity: 2,
                labels: vec!["reserved:world".into()],
                ..Peer::default()
            }),
            endpoint_id: 12,
            traffic_direction: TrafficDirection::Egress,
            match_type: Some(MatchType::L4Only),
            policy: Some(PolicyAttribution::AllowedBy(vec![policy("allow-dns")])),
            ..base()
        }
    }

    /// An ICMP echo request trace into the database.
    pub fn icmp_trace() -> Flow {
        Flow {
            event_type: EventType::Trace,
            protocol: Protocol::Icmp,
            tcp_flags: TcpFlags(0),
            source_port: 0,
            destination_port: 0,
            icmp_type: 8,
            ct_state: Some(CtState::New),
            ..base()
        }
    }

    /// An SCTP flow allowed by any policy (match `all`), at the epoch plus one second.
    pub fn sctp_allowed() -> Flow {
        Flow {
            time_ns: 1_000_000_000,
            protocol: Protocol::Sctp,
            tcp_flags: TcpFlags(0),
            destination_port: 9999,
            match_type: Some(MatchType::All),
            is_reply: None,
            policy: Some(PolicyAttribution::AllowedBy(vec![policy("allow-all")])),
            ..base()
        }
    }

    /// Every fixture, by name.
    pub fn all() -> Vec<(&'static str, Flow)> {
        vec![
            ("verdict_allowed", verdict_allowed()),
            ("verdict_denied", verdict_denied()),
            ("verdict_audit", verdict_audit()),
            ("drop", drop()),
            ("trace_egress", trace_egress()),
            ("trace_reply", trace_reply()),
            ("udp_to_world", udp_to_world()),
            ("icmp_trace", icmp_trace()),
            ("sctp_allowed", sctp_allowed()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_use_as_few_fraction_digits_as_protobuf() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_000_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(
            timestamp(fixtures::TIME_NS),
            "2023-08-21T12:12:18.510175415Z"
        );
        assert_eq!(
            timestamp(1_636_540_886_095_357_000),
            "2021-11-10T10:41:26.095357Z"
        );
        assert_eq!(
            timestamp(1_636_540_886_095_000_000),
            "2021-11-10T10:41:26.095Z"
        );
        assert_eq!(timestamp(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn denied_verdict_is_hubble_shaped() {
        let v = flow_json(&fixtures::verdict_denied(), "node-1");
        assert_eq!(
            v,
            json!({
                "flow": {
                    "time": "2023-08-21T12:12:18.510175415Z",
                    "verdict": "DROPPED",
                    "IP": {"source": "10.0.0.5", "destination": "10.0.0.7", "ipVersion": "IPv4"},
                    "l4": {"TCP": {"source_port": 43210, "destination_port": 5432, "flags": {"SYN": true}}},
                    "source": {"ID": 12, "identity": 4711, "namespace": "default",
                        "labels": ["k8s:component=backend", "k8s:io.kubernetes.pod.namespace=default"],
                        "pod_name": "backend"},
                    "destination": {"ID": 7, "identity": 5123, "namespace": "default",
                        "labels": ["k8s:component=database", "k8s:io.kubernetes.pod.namespace=default"],
                        "pod_name": "database"},
                    "Type": "L3_L4",
                    "node_name": "node-1",
                    "event_type": {"type": 5},
                    "traffic_direction": "INGRESS",
                    "drop_reason_desc": "POLICY_DENIED",
                    "is_reply": false,
                    "interface": {"index": 9},
                    "Summary": "TCP Flags: SYN",
                    "ingress_denied_by": [{"name": "default-deny-ingress-policy", "namespace": "default", "kind": "NetworkPolicy"}]
                },
                "node_name": "node-1",
                "time": "2023-08-21T12:12:18.510175415Z"
            })
        );
    }

    #[test]
    fn drops_traces_and_match_types() {
        let d = flow_json(&fixtures::drop(), "n");
        assert_eq!(d["flow"]["event_type"], json!({"type": 1, "sub_type": 133}));
        let t = flow_json(&fixtures::trace_egress(), "n");
        assert_eq!(t["flow"]["event_type"], json!({"type": 4, "sub_type": 5}));
        assert_eq!(t["flow"]["trace_observation_point"], "FROM_ENDPOINT");
        assert_eq!(t["flow"]["verdict"], "FORWARDED");
        assert!(t["flow"].get("drop_reason_desc").is_none());
        let r = flow_json(&fixtures::trace_reply(), "n");
        assert_eq!(r["flow"]["event_type"], json!({"type": 4}));
        assert_eq!(r["flow"]["trace_observation_point"], "TO_ENDPOINT");
        assert_eq!(r["flow"]["reply"], true);
        assert_eq!(r["flow"]["Summary"], "TCP Flags: SYN, ACK");
        let a = flow_json(&fixtures::verdict_allowed(), "n");
        assert_eq!(a["flow"]["policy_match_type"], 2);
        assert_eq!(
            a["flow"]["ingress_allowed_by"][0]["name"],
            "network-policy-walkthrough-db"
        );
        let u = flow_json(&fixtures::udp_to_world(), "n");
        assert_eq!(
            u["flow"]["destination"],
            json!({"identity": 2, "labels": ["reserved:world"]})
        );
        assert_eq!(u["flow"]["egress_allowed_by"][0]["name"], "allow-dns");
        assert_eq!(u["flow"]["policy_match_type"], 3);
        let i = flow_json(&fixtures::icmp_trace(), "n");
        assert_eq!(i["flow"]["l4"], json!({"ICMPv4": {"type": 8}}));
        assert_eq!(i["flow"]["Summary"], "ICMPv4 EchoRequest");
        assert_eq!(
            flow_json(&fixtures::verdict_audit(), "n")["flow"]["verdict"],
            "AUDIT"
        );
        assert_eq!(
            flow_json(&fixtures::sctp_allowed(), "n")["flow"]["policy_match_type"],
            4
        );
    }

    #[test]
    fn lost_events() {
        let lost = LostEvents {
            source: LossSource::KernelBuffer,
            count: 312,
        };
        assert_eq!(
            lost_json(&lost, "node-1", 4_000_000_000),
            json!({"lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": 312},
                   "node_name": "node-1", "time": "1970-01-01T00:00:04Z"})
        );
        let queue = LostEvents {
            source: LossSource::ClientQueue,
            count: 5,
        };
        assert_eq!(
            lost_json(&queue, "n", 0)["lost_events"]["source"],
            "OBSERVER_EVENTS_QUEUE"
        );
    }
}
