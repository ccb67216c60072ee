//! Types shared by flowgate's kernel programs and user space: event records written into the events
//! buffer, map keys and values, and the names of maps and programs. Everything is `#[repr(C)]`, `Copy`,
//! with explicit padding and pinned sizes, so both sides agree on every byte. The numbers both sides must
//! agree on live here too, each once: IP protocols ([`ip`]), TCP flags ([`record::tcp_flags`]), drop
//! reasons ([`drop_reason`]), match types ([`policy::match_type`]), reserved identities ([`identity`]) and
//! map capacities ([`capacity`]).
#![no_std]

pub mod capacity;
pub mod conntrack;
pub mod counters;
pub mod drop_reason;
pub mod endpoint;
pub mod fragment;
pub mod identity;
pub mod ip;
pub mod names;
pub mod policy;
pub mod record;

pub use counters::Counter;
pub use endpoint::EndpointInfo;
pub use record::{DropRecord, FlowTuple, PolicyVerdictRecord, RecordHeader, TraceRecord};
