//! Replays every input the fuzzers kept — the seed and grown corpus in `fuzz/corpus/<target>/` and the
//! inputs that once crashed a target in `fuzz/regressions/<target>/` — through the same target bodies
//! (`flowgate_tests::fuzz`), on stable, in `make test`. A crash fixed once stays fixed.
//!
//! `write_seed_corpus` (ignored; run it by name) writes the seeds: real inputs of each kind, made with the
//! product's own encoders and the repository's examples.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
};

use flowgate_common::{
    DropRecord, FlowTuple, PolicyVerdictRecord, RecordHeader, TraceRecord,
    ip::protocol,
    record::{record_type, version_of},
};
use flowgate_proto::{
    codec,
    filter::FlowFilter,
    flow::fixtures::flow_between,
    hubble,
    message::{ClientMessage, Hello, Request, Subscription},
};
use flowgate_tests::fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_kept_input_runs_through_its_target() {
    for (target, run) in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ has no seeds (run write_seed_corpus)");
        for file in corpus.iter().chain(&inputs("regressions", target)) {
            let data = std::fs::read(file).unwrap();
            // A panic names the input: `cargo fuzz run <target> <file>` reproduces it.
            eprintln!("{target}: {}", file.display());
            run(&data);
        }
    }
}

fn frame(message: &ClientMessage) -> Vec<u8> {
    let body = codec::encode("client", message).unwrap();
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The bytes of a `#[repr(C)]` record, as the kernel writes it.
fn bytes_of<T: Copy>(record: &T) -> Vec<u8> {
    // SAFETY: T is a plain-old-data record (repr(C), explicit padding); reading its bytes is sound.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn header(kind: u8, len: usize) -> RecordHeader {
    RecordHeader { record_type: kind, version: version_of(kind), len: len as u16, cpu: 0, ktime_ns: 1_000_000 }
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus; run by name when the inputs' formats change"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    // Socket: a hello, requests, a subscription with filters, one after the other.
    let hello = ClientMessage::Hello(Hello { protocol: flowgate_proto::PROTOCOL_VERSION, software: "seed".into() });
    let mut session = frame(&hello);
    for request in [Request::Status, Request::EndpointList, Request::EndpointGet { id: 1 }, Request::IdentityList] {
        session.extend(frame(&ClientMessage::Request(request)));
    }
    session.extend(frame(&ClientMessage::Request(Request::EndpointConfig { id: 2, audit: Some(true) })));
    write("socket_frames", "requests", &session);
    let filter = FlowFilter {
        pods: vec!["x/a".parse().unwrap(), "web".parse().unwrap()],
        ports: vec![80, 443],
        namespaces: vec!["x".into()],
        labels: vec!["app=db,tier in (a,b)".parse().unwrap()],
        policies: vec!["x/deny".parse().unwrap()],
        ..FlowFilter::default()
    };
    let subscribe = ClientMessage::Subscribe(Subscription {
        allow: vec![filter.clone()],
        deny: vec![filter],
        ..Default::default()
    });
    write("socket_frames", "subscribe", &[frame(&hello), frame(&subscribe)].concat());

    // Kernel records of each type.
    let flow = FlowTuple {
        saddr: flowgate_common::ip::v4_mapped([10, 0, 0, 10]),
        daddr: flowgate_common::ip::v4_mapped([10, 0, 0, 11]),
        sport: 40000,
        dport: 80,
        protocol: protocol::TCP,
        tcp_flags: 0x02,
        icmp_type: 0,
        icmp_code: 0,
    };
    let trace = TraceRecord {
        header: header(record_type::TRACE, size_of::<TraceRecord>()),
        flow,
        endpoint_id: 1,
        observation_point: 1,
        ct_state: 1,
        ifindex: 10,
        pkt_len: 74,
        remote_identity: 2,
    };
    write("kernel_record", "trace", &bytes_of(&trace));
    let verdict = PolicyVerdictRecord {
        header: header(record_type::POLICY_VERDICT, size_of::<PolicyVerdictRecord>()),
        flow,
        endpoint_id: 1,
        direction: 0,
        verdict: 1,
        match_type: 1,
        _pad: 0,
        _pad2: 0,
        remote_identity: 257,
        rule_id: 3,
        ifindex: 10,
        pkt_len: 74,
        revision: 3,
        _pad3: 0,
    };
    write("kernel_record", "policy_verdict", &bytes_of(&verdict));
    let drop = DropRecord {
        header: header(record_type::DROP, size_of::<DropRecord>()),
        flow,
        endpoint_id: 1,
        direction: 1,
        reason: 132,
        remote_identity: 0,
        ifindex: 10,
        pkt_len: 74,
        revision: 3,
        _pad: 0,
    };
    write("kernel_record", "drop", &bytes_of(&drop));

    // Policies and topologies from the examples.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for entry in std::fs::read_dir(examples.join("policies")).unwrap().filter_map(Result::ok) {
        write("policy_yaml", &entry.file_name().to_string_lossy(), &std::fs::read(entry.path()).unwrap());
    }
    for entry in std::fs::read_dir(&examples).unwrap().filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "yaml") {
            write("topology", &entry.file_name().to_string_lossy(), &std::fs::read(entry.path()).unwrap());
        }
    }

    // Verdict-log lines as the agent writes them.
    let mut flow = flow_between(1, 2, 80);
    flow.source_ip = Ipv4Addr::new(10, 0, 0, 10).into();
    let line = serde_json::to_vec(&hubble::flow_json(&Arc::new(flow), "node")).unwrap();
    write("verdict_line", "flow", &line);
}
