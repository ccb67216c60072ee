//! The contract between the agent and its clients (the `flowgate` command, exporters): length-delimited
//! frames of MessagePack-encoded messages, a hello with the protocol version first, then requests or a
//! subscription. The enriched [`flow::Flow`] and the [`filter`]s over it live here too, so the agent,
//! the monitor and the verdict-log exporter agree on them, and so are the verdict log's file names
//! ([`verdict_log_files`]). See `docs/protocol.md`.

mod civil;
pub mod client;
pub mod codec;
pub mod filter;
pub mod flow;
pub mod flow_batch;
pub mod flow_batch_wire;
pub mod format;
pub mod hubble;
pub mod ip_wire;
pub mod message;
pub mod verdict_log_files;
pub mod version;

pub use flow::Flow;
pub use message::{ClientMessage, ServerMessage};
pub use version::{PROTOCOL_VERSION, ProtocolVersion};
pub mod endpoint;
