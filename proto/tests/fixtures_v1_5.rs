//! Compatibility with the compact event batches of protocol 1.5: the committed frame
//! `tests/fixtures/v1/flow-batch-1.5.bin` (a batch defining two peers, two flows and a loss, encoded with
//! structs as arrays) must still decode and expand to the same events. Written by the `#[ignore]`d
//! `write_flow_batch_fixture` below; do not regenerate it after a release.

use std::{path::PathBuf, sync::Arc};

use bytes::BytesMut;
use flowgate_proto::{
    ServerMessage, codec,
    flow::{EventType, Verdict, fixtures::flow_between},
    flow_batch::{PeerNumbers, PeerTable},
    message::{Event, LossSource, LostEvents},
};
use tokio_util::codec::{Decoder as _, Encoder as _};

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/flow-batch-1.5.bin")
}

fn events() -> Vec<Event> {
    let mut verdict = flow_between(1, 2, 40000);
    (verdict.event_type, verdict.verdict) = (EventType::PolicyVerdict, Verdict::Dropped);
    vec![
        Event::Flow(Arc::new(verdict)),
        Event::Lost(LostEvents { source: LossSource::KernelBuffer, count: 3 }),
        Event::Flow(Arc::new(flow_between(2, 1, 80))),
    ]
}

#[test]
fn v1_5_flow_batch_decodes_and_expands() {
    let bytes = std::fs::read(path()).expect("reading the fixture");
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = codec::framing().decode(&mut buf).expect("valid framing").expect("one whole frame");
    assert!(buf.is_empty(), "bytes after the frame");
    let ServerMessage::FlowBatch(batch) = codec::decode("server", &frame).expect("decodes") else { panic!() };
    assert_eq!(batch.peers.len(), 2);
    assert_eq!(PeerTable::default().expand(batch).expect("expands"), events());
}

#[test]
#[ignore = "writes the committed fixture; run once, by hand, when the format is new"]
fn write_flow_batch_fixture() {
    let body = codec::encode_compact("server", &ServerMessage::FlowBatch(PeerNumbers::default().batch(&events())))
        .expect("encodes");
    let mut out = BytesMut::new();
    codec::framing().encode(body, &mut out).expect("frames");
    std::fs::write(path(), &out).expect("writing the fixture");
}
