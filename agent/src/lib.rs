//! flowgate's node agent as a library: the binary in `main.rs` wires these modules together, tests and
//! benchmarks use them directly.
//!
//! Event path: [`reader`] drains the kernel's events buffer -> [`decode`] turns bytes into typed records
//! -> [`format`] renders them. The datapath itself (loading, attaching, maps) is in [`datapath`].

pub mod datapath;
pub mod decode;
pub mod enrich;
pub mod format;
pub mod history;
pub mod hub;
pub mod identity;
pub mod netns;
pub mod reader;
pub mod state;
pub mod time;
