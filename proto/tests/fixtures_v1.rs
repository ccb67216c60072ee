//! Compatibility with protocol version 1: every committed frame in `tests/fixtures/v1/` (one complete
//! frame each, length prefix included) must still decode with the current code and mean the same thing.
//! Later versions add fields and variants; they must never break these.
//!
//! The files were written by `write_v1_fixtures` below (`cargo test -p flowgate-proto --test fixtures_v1
//! -- --ignored`). Do not regenerate them after a release: add a `v2/` directory instead.

use std::{net::Ipv4Addr, path::PathBuf, sync::Arc};

use bytes::BytesMut;
use flowgate_proto::{
    ClientMessage, ProtocolVersion, ServerMessage,
    codec::{self, MAX_FRAME_BYTES},
    endpoint::{Endpoint, EndpointState, Enforcement, Identity},
    filter::{FlowFilter, LabelSelector},
    flow::{EventType, PolicyAttribution, PolicyName, Protocol, Verdict, fixtures::flow_between},
    message::{ClientInfo, Event, Hello, LossSource, LostEvents, Refusal, Request, Response, Status, Subscription},
};
use tokio_util::codec::{Decoder as _, Encoder as _};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// Reads one fixture: exactly one frame, nothing after it.
fn frame(name: &str) -> BytesMut {
    let path = dir().join(format!("{name}.bin"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = codec::framing().decode(&mut buf).expect("valid framing").expect("one whole frame");
    assert!(buf.is_empty(), "{name}: bytes after the frame");
    assert!(frame.len() < MAX_FRAME_BYTES);
    frame
}

fn client(name: &str) -> ClientMessage {
    codec::decode("client", &frame(name)).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn server(name: &str) -> ServerMessage {
    codec::decode("server", &frame(name)).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn response(name: &str) -> Response {
    match server(name) {
        ServerMessage::Response(r) => r,
        other => panic!("{name}: {other:?}"),
    }
}

const V1_0: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

#[test]
fn v1_client_frames_decode() {
    assert_eq!(
        client("client-hello"),
        ClientMessage::Hello(Hello { protocol: V1_0, software: "flowgate 0.1.0".into() })
    );
    assert_eq!(client("request-status"), ClientMessage::Request(Request::Status));
    assert_eq!(client("request-endpoint-list"), ClientMessage::Request(Request::EndpointList));
    assert_eq!(client("request-endpoint-get"), ClientMessage::Request(Request::EndpointGet { id: 12 }));
    assert_eq!(client("request-identity-list"), ClientMessage::Request(Request::IdentityList));
    let ClientMessage::Subscribe(sub) = client("subscribe") else { panic!() };
    assert_eq!(sub.last, 100);
    assert!(sub.follow);
    assert_eq!(sub.allow.len(), 1);
    assert_eq!(sub.allow[0].related_to, [12]);
    assert_eq!(sub.allow[0].verdicts, [Verdict::Dropped]);
    assert_eq!(sub.allow[0].event_types, [EventType::PolicyVerdict, EventType::Drop]);
    assert_eq!(sub.allow[0].protocols, [Protocol::Tcp]);
    assert_eq!(sub.allow[0].ports, [5432]);
    assert_eq!(sub.allow[0].labels, [LabelSelector::parse("app=db").unwrap()]);
    assert_eq!(sub.deny[0].namespaces, ["kube-system"]);
}

#[test]
fn v1_server_frames_decode() {
    assert_eq!(
        server("server-hello"),
        ServerMessage::Hello(Hello { protocol: V1_0, software: "flowgate-agent 0.1.0".into() })
    );
    let ServerMessage::Refused { reason, message } = server("refused-version-mismatch") else { panic!() };
    assert_eq!(reason, Refusal::VersionMismatch);
    assert_eq!(message, "protocol version mismatch: agent speaks 1.0, client speaks 2.0");
    let ServerMessage::Refused { reason, .. } = server("refused-permission-denied") else { panic!() };
    assert_eq!(reason, Refusal::PermissionDenied);
    let ServerMessage::Refused { reason, .. } = server("refused-too-many-clients") else { panic!() };
    assert_eq!(reason, Refusal::TooManyClients);
    let ServerMessage::Error { message } = server("error") else { panic!() };
    assert_eq!(message, "the first frame must be a hello, got a request");
}

#[test]
fn v1_responses_decode() {
    let Response::Status(status) = response("response-status") else { panic!() };
    assert_eq!(status.agent_version, "0.1.0");
    assert_eq!(status.protocol, Some(V1_0));
    assert_eq!(status.endpoints, 9);
    assert_eq!(status.events_buffer.kind, "ringbuf");
    assert_eq!(status.counters.records_read, 123_456);
    assert_eq!(status.clients[0].software, "flowgate 0.1.0");
    assert!(status.clients[0].subscribed);

    let Response::Endpoints(eps) = response("response-endpoints") else { panic!() };
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0].id, 12);
    assert_eq!(eps[0].pod_ref(), "x/a");
    assert_eq!(eps[0].ipv4, Ipv4Addr::new(10, 244, 0, 12));
    assert_eq!(eps[0].identity, 1001);
    assert_eq!(eps[0].ingress_enforcement, Enforcement::Enabled);
    assert_eq!(eps[0].egress_enforcement, Enforcement::Disabled);
    assert_eq!(eps[0].state, EndpointState::Ready);
    assert_eq!(eps[0].label_list(), ["app=a"]);
    assert_eq!(eps[1].ingress_enforcement, Enforcement::Audit);
    assert_eq!(eps[1].state, EndpointState::Regenerating);

    let Response::Endpoint(ep) = response("response-endpoint") else { panic!() };
    assert_eq!((ep.id, ep.interface.as_str(), ep.ifindex), (12, "lxc1a2b3c4d", 7));

    let Response::Identities(ids) = response("response-identities") else { panic!() };
    assert_eq!(ids[0].id, 1001);
    assert_eq!(ids[0].labels, ["k8s:app=a", "k8s:io.kubernetes.pod.namespace=x"]);
    assert_eq!(ids[0].endpoints, [12]);

    let Response::NotFound { what, known } = response("response-not-found") else { panic!() };
    assert_eq!(what, "endpoint 99");
    assert_eq!(known, ["12 (x/a)", "13 (x/b)"]);
}

#[test]
fn v1_events_decode() {
    let ServerMessage::Events(events) = server("events") else { panic!() };
    assert_eq!(events.len(), 2);
    let Event::Flow(flow) = &events[0] else { panic!() };
    assert_eq!(flow.event_type, EventType::PolicyVerdict);
    assert_eq!(flow.verdict, Verdict::Dropped);
    assert_eq!(
        (flow.source_ip, flow.destination_ip),
        (Ipv4Addr::new(10, 0, 0, 1).into(), Ipv4Addr::new(10, 0, 0, 2).into())
    );
    assert_eq!((flow.source_port, flow.destination_port), (40000, 80));
    assert_eq!(flow.protocol, Protocol::Tcp);
    assert_eq!(flow.source.pod_name, "pod-1");
    assert_eq!(flow.destination.identity, 1002);
    assert_eq!(
        flow.policy,
        Some(PolicyAttribution::DefaultDeny {
            isolated_by: vec![PolicyName { namespace: "default".into(), name: "deny-all".into() }]
        })
    );
    assert_eq!(events[1], Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 42 }));
}

// ---- the generator ----

fn write(name: &str, body: bytes::Bytes) {
    let mut out = BytesMut::new();
    codec::framing().encode(body, &mut out).unwrap();
    std::fs::write(dir().join(format!("{name}.bin")), &out).unwrap();
}

fn endpoint(id: u16, pod: &str, identity: u32) -> Endpoint {
    Endpoint {
        id,
        namespace: "x".into(),
        pod_name: pod.into(),
        labels: [("app".to_owned(), pod.to_owned())].into(),
        identity,
        ipv4: Ipv4Addr::new(10, 244, 0, id as u8),
        ipv6: None,
        interface: "lxc1a2b3c4d".into(),
        ifindex: 7,
        ingress_enforcement: Enforcement::Enabled,
        egress_enforcement: Enforcement::Disabled,
        state: EndpointState::Ready,
        invalid_source_drops: 0,
    }
}

/// Writes the version-1 fixtures. Run only to create them (see the module docs).
#[test]
#[ignore = "writes the committed fixtures; run once per protocol version"]
fn write_v1_fixtures() {
    assert_eq!(flowgate_proto::PROTOCOL_VERSION, V1_0, "these are the 1.0 fixtures");
    std::fs::create_dir_all(dir()).unwrap();
    let c = |name: &str, m: ClientMessage| write(name, codec::encode("client", &m).unwrap());
    let s = |name: &str, m: ServerMessage| write(name, codec::encode("server", &m).unwrap());

    c("client-hello", ClientMessage::Hello(Hello { protocol: V1_0, software: "flowgate 0.1.0".into() }));
    c("request-status", ClientMessage::Request(Request::Status));
    c("request-endpoint-list", ClientMessage::Request(Request::EndpointList));
    c("request-endpoint-get", ClientMessage::Request(Request::EndpointGet { id: 12 }));
    c("request-identity-list", ClientMessage::Request(Request::IdentityList));
    c(
        "subscribe",
        ClientMessage::Subscribe(Subscription {
            allow: vec![FlowFilter {
                related_to: vec![12],
                verdicts: vec![Verdict::Dropped],
                event_types: vec![EventType::PolicyVerdict, EventType::Drop],
                protocols: vec![Protocol::Tcp],
                ports: vec![5432],
                labels: vec![LabelSelector::parse("app=db").unwrap()],
                ..FlowFilter::default()
            }],
            deny: vec![FlowFilter { namespaces: vec!["kube-system".into()], ..FlowFilter::default() }],
            last: 100,
            follow: true,
        }),
    );

    s("server-hello", ServerMessage::Hello(Hello { protocol: V1_0, software: "flowgate-agent 0.1.0".into() }));
    s(
        "refused-version-mismatch",
        ServerMessage::Refused {
            reason: Refusal::VersionMismatch,
            message: "protocol version mismatch: agent speaks 1.0, client speaks 2.0".into(),
        },
    );
    s(
        "refused-permission-denied",
        ServerMessage::Refused {
            reason: Refusal::PermissionDenied,
            message: "permission denied: uid 65534 (nobody) is neither root nor in group `flowgate`".into(),
        },
    );
    s(
        "refused-too-many-clients",
        ServerMessage::Refused { reason: Refusal::TooManyClients, message: "too many clients".into() },
    );
    s("error", ServerMessage::Error { message: "the first frame must be a hello, got a request".into() });

    let mut status = Status {
        agent_version: "0.1.0".into(),
        protocol: Some(V1_0),
        uptime_seconds: 12.5,
        kernel: "6.8.0".into(),
        endpoints: 9,
        identities: 6,
        ..Status::default()
    };
    status.events_buffer.kind = "ringbuf".into();
    status.events_buffer.size_bytes = 8 << 20;
    status.counters.records_read = 123_456;
    status.clients.push(ClientInfo {
        id: 3,
        uid: 0,
        pid: 4242,
        software: "flowgate 0.1.0".into(),
        subscribed: true,
        events_sent: 100,
        events_lost: 1,
    });
    s("response-status", ServerMessage::Response(Response::Status(Box::new(status))));
    let mut b = endpoint(13, "b", 1002);
    b.ingress_enforcement = Enforcement::Audit;
    b.state = EndpointState::Regenerating;
    s("response-endpoints", ServerMessage::Response(Response::Endpoints(vec![endpoint(12, "a", 1001), b])));
    s("response-endpoint", ServerMessage::Response(Response::Endpoint(endpoint(12, "a", 1001))));
    s(
        "response-identities",
        ServerMessage::Response(Response::Identities(vec![Identity {
            id: 1001,
            labels: vec!["k8s:app=a".into(), "k8s:io.kubernetes.pod.namespace=x".into()],
            endpoints: vec![12],
        }])),
    );
    s(
        "response-not-found",
        ServerMessage::Response(Response::NotFound {
            what: "endpoint 99".into(),
            known: vec!["12 (x/a)".into(), "13 (x/b)".into()],
        }),
    );

    let mut flow = flow_between(1, 2, 40000);
    flow.event_type = EventType::PolicyVerdict;
    flow.verdict = Verdict::Dropped;
    flow.policy = Some(PolicyAttribution::DefaultDeny {
        isolated_by: vec![PolicyName { namespace: "default".into(), name: "deny-all".into() }],
    });
    s(
        "events",
        ServerMessage::Events(vec![
            Event::Flow(Arc::new(flow)),
            Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 42 }),
        ]),
    );
}
