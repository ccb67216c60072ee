//! flowgate's event path, free of aya and of the embedded eBPF object, so it builds and tests on stable
//! without bpf-linker. The agent's reader drains the kernel's events buffer into a [`RecordSink`]; from
//! there every record takes the same road:
//!
//! ```text
//! kernel record -> decode -> enrich -> hub (history, fan-out) -> socket clients / verdict log / metrics
//! ```
//!
//! [`decode`] turns bytes into typed records, [`enrich`] resolves endpoints, identities and policies into
//! a [`flowgate_proto::Flow`], [`hub`] keeps the [`history`] and hands batches to subscribers, and
//! [`pipeline`] runs the three for each drained batch. The consumers (socket server, verdict log, metrics)
//! and the datapath live in `flowgate-agent`.

pub mod clock;
pub mod decode;
pub mod enrich;
pub mod history;
pub mod hub;
pub mod pipeline;
pub mod sink;

pub use sink::RecordSink;
