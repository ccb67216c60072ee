//! flowgate's node agent as a library: the binary in `main.rs` wires these modules together, tests and
//! benchmarks use them directly.
//!
//! The agent owns everything that needs the kernel: [`datapath`] loads, attaches and pins the programs
//! and maps, [`controller`] keeps endpoints and policy generations in step with them, [`reader`] drains
//! the events buffer into the event path (crate `flowgate_events`: decode -> enrich -> hub). The
//! consumers of that path live here too: [`server`] (the unix socket), [`verdict_log`] and [`metrics`].
//! [`conntrack`] collects expired connection-tracking entries and shows the rest; [`tc_filter`] attaches the
//! programs as tc filters (the default; TCX links otherwise); [`rcu`] expedites the kernel's grace periods
//! around a bulk attach of TCX links when asked to (`--expedited-attach`); [`tick`] measures the kernel's
//! tick, which conntrack's clock is read from.
//! [`state`] holds endpoints (their ids handed out by [`endpoints`]), identities and counters; [`api`] answers
//! the socket's requests from it.

pub mod api;
pub mod conntrack;
pub mod controller;
pub mod craft;
pub mod datapath;
pub mod endpoints;
pub mod identity;
pub mod instruments;
pub mod kernel_counters;
pub mod kubernetes;
pub mod map_batch;
pub mod metrics;
pub mod perf_buffer;
pub mod pod_routes;
pub mod policy;
pub mod rcu;
pub mod reader;
pub mod server;
pub mod state;
pub mod tc_filter;
pub mod tick;
pub mod verdict_log;
pub mod watch;
