//! Types shared by flowgate's kernel programs and user space: event records written into the events
//! buffer, map keys and values, and the names of maps and programs. Everything is `#[repr(C)]`, `Copy`,
//! with explicit padding and pinned sizes, so both sides agree on every byte.
#![no_std]

pub mod conntrack;
pub mod counters;
pub mod endpoint;
pub mod names;
pub mod policy;
pub mod record;

pub use counters::Counter;
pub use endpoint::EndpointInfo;
pub use record::{DropRecord, FlowTuple, PolicyVerdictRecord, RecordHeader, TraceRecord};
