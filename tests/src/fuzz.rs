//! The fuzz targets' bodies: each takes arbitrary bytes and drives one of flowgate's parsers of untrusted
//! input the way the product does, and must return without panicking, overflowing the stack or
//! allocating without bound, whatever the bytes. `fuzz/` (cargo-fuzz, libFuzzer; `make fuzz`) calls them
//! with generated inputs; `tests/fuzz_corpus.rs` replays every kept input (`fuzz/corpus/<target>/`, and
//! `fuzz/regressions/<target>/` for inputs that once crashed) through them in `make test`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, LazyLock},
};

use bytes::BytesMut;
use flowgate_agent::{
    api::Api,
    server::frames::take_frame,
    state::{AgentInfo, AgentState},
};
use flowgate_events::{
    clock::KtimeClock,
    decode::{decode, expand},
    enrich::{Enricher, NoPolicy, PeerSnapshot},
    hub::{Hub, HubConfig},
};
use flowgate_policy::{CidrIdentities, ClusterView, ContainerPort, NamespaceInfo, PodInfo, Protocol};
use flowgate_proto::{
    codec,
    endpoint::NewEndpoint,
    filter::{FilterSet, FlowFilter},
    format, hubble,
    message::ClientMessage,
};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every fuzz target, by the name its `fuzz/fuzz_targets/<name>.rs`, corpus and regressions use.
pub const TARGETS: [(&str, Target); 5] = [
    ("socket_frames", socket_frames),
    ("kernel_record", kernel_record),
    ("policy_yaml", policy_yaml),
    ("topology", topology),
    ("verdict_line", verdict_line),
];

/// An agent state with two endpoints and the request handler over it (no datapath), built once.
static API: LazyLock<Arc<Api>> = LazyLock::new(|| {
    let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig { history: 16, queue_events: 64 }));
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        state
            .upsert_endpoint(
                NewEndpoint {
                    namespace: "x".into(),
                    pod_name: name.into(),
                    labels: [("pod".to_owned(), name.to_owned())].into(),
                    ipv4: Ipv4Addr::new(10, 0, 0, 10 + i as u8),
                    ipv6: None,
                    interface: format!("lxc{i}"),
                    ifindex: 10 + i as u32,
                },
                &BTreeMap::new(),
            )
            .expect("an endpoint id");
    }
    Api::new(state, None, None)
});

/// Bytes a client sends on the socket: cut into frames as the agent's reader does, each decoded as a
/// client message, requests answered by the agent's handler, subscriptions' filters compiled.
pub fn socket_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = take_frame(&mut buf) {
        match codec::decode::<ClientMessage>("client", &frame) {
            Ok(ClientMessage::Request(request)) => {
                let _ = API.handle(&request);
                let _ = request.changes_agent();
            }
            Ok(ClientMessage::Subscribe(subscription)) => {
                let filters = FilterSet::compile(&subscription.allow, &subscription.deny);
                let _ = filters.matches(&flowgate_proto::flow::fixtures::flow_between(1, 2, 80));
            }
            Ok(ClientMessage::Hello(_)) | Err(_) => {}
        }
    }
}

/// Bytes from the kernel's events buffer: decoded (a malformed record is an error, never a zeroed
/// struct), expanded into the records it stands for, each enriched with no endpoints known and rendered
/// as a text line and as Hubble JSON.
pub fn kernel_record(data: &[u8]) {
    let Ok(record) = decode(data) else { return };
    let enricher = Enricher::new(KtimeClock::new());
    for record in expand(record) {
        let flow = enricher.enrich(&record, &PeerSnapshot::default(), &NoPolicy);
        let _ = format::flow_line(&flow);
        let _ = hubble::flow_json(&flow, "fuzz");
    }
}

/// A NetworkPolicy manifest: parsed and validated as the agent reads a policy file, then compiled
/// against a small cluster.
pub fn policy_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (policies, _errors) = flowgate_policy::source::parse_str(Path::new("fuzz.yaml"), &text);
    if policies.is_empty() {
        return;
    }
    let ns = |name: &str| NamespaceInfo {
        name: name.into(),
        labels: [("kubernetes.io/metadata.name".to_owned(), name.to_owned())].into(),
    };
    let pod = |id: u16, namespace: &str, name: &str| PodInfo {
        endpoint_id: id,
        namespace: namespace.into(),
        name: name.into(),
        labels: [("pod".to_owned(), name.to_owned())].into(),
        ip: Ipv4Addr::new(10, 0, 0, 10 + id as u8),
        ipv6: None,
        identity: 256 + u32::from(id),
        ports: vec![ContainerPort { name: Some("http".into()), port: 80, protocol: Protocol::Tcp }],
    };
    let cluster = ClusterView { namespaces: vec![ns("x"), ns("y")], pods: vec![pod(1, "x", "a"), pod(2, "y", "b")] };
    let _ = flowgate_policy::compile(&policies, &cluster, &mut CidrIdentities::new());
}

/// A lab topology file.
pub fn topology(data: &[u8]) {
    let _ = flowgate_lab::topology::Topology::parse(&String::from_utf8_lossy(data), "fuzz.yaml");
}

/// A line of the verdict log as `flowgate verdicts export` reads it: JSON, read back into a flow,
/// decided by a filter, written again.
pub fn verdict_line(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(flow) = hubble::read_flow(&value) else { return };
    let filter = FlowFilter { ports: vec![80], ..FlowFilter::default() };
    let _ = FilterSet::compile(std::slice::from_ref(&filter), &[]).matches(&flow);
    let _ = hubble::flow_json(&flow, "fuzz");
}
