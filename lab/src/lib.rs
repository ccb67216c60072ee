//! A lab node on one machine: pods as Linux network namespaces with labels, wired to a dedicated node namespace
//! that routes between them, each running small echo servers on its declared ports. It stands in for a
//! Kubernetes node so flowgate can enforce and observe NetworkPolicy on real traffic. Nothing touches the
//! machine's own network namespace.
//!
//! - [`topology`]: the YAML file (namespaces, pods, ports, externals) and its validation;
//! - [`plan`] and [`naming`]: addresses and names (pure);
//! - [`lab`]: `up` and `down`; [`state`]: `state.json`, what the agent reads;
//! - [`netns`]: namespaces, `ip`, and [`netns::in_netns`]; [`server`]: the pods' servers;
//! - [`probe`]: connectivity probes; [`reachability`]: the truth table of who reaches whom, observed or
//!   expected.

pub mod lab;
pub mod naming;
pub mod netns;
pub mod plan;
pub mod probe;
pub mod reachability;
pub mod server;
pub mod state;
pub mod topology;
pub mod traffic;

pub use lab::{DownReport, LabError, down, up};
pub use netns::in_netns;
pub use probe::{PortArg, ProbeMatrix, probe};
pub use reachability::Reachability;
pub use state::{LabState, PodRef, PodState, list, load};
pub use topology::{Protocol, Topology};
