//! flowgate's node agent as a library: the binary in `main.rs` wires these modules together, tests and
//! benchmarks use them directly.
//!
//! Event path: [`reader`] drains the kernel's events buffer -> [`pipeline`]: [`decode`] turns bytes into
//! typed records, [`enrich`] resolves endpoints and identities into a flow, [`hub`] keeps [`history`] and
//! fans flows out to subscribers. [`state`] holds endpoints, identities and counters and answers
//! requests. The datapath itself (loading, attaching, maps) is in [`datapath`].

pub mod controller;
pub mod craft;
pub mod datapath;
pub mod decode;
pub mod enrich;
pub mod history;
pub mod hub;
pub mod identity;
pub mod metrics;
pub mod netns;
pub mod pipeline;
pub mod policy;
pub mod reader;
pub mod server;
pub mod state;
pub mod time;
pub mod verdict_log;
