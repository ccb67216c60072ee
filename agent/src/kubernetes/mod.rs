//! Kubernetes mode: pods, namespaces and NetworkPolicies come from the API server instead of files.
//! [`source`] keeps one reflector per kind (kube-rs watchers: list, then watch; a `410 Gone` or a broken watch
//! lists again and swaps the new list in whole), [`cluster`] turns what the reflectors hold into the plain
//! [`cluster::ClusterState`] the controller compiles against, [`identities`] allocates identity numbers
//! through the API server so every node gives the same labels the same number, and [`client`] finds the
//! credentials.

pub mod client;
pub mod cluster;
pub mod identities;
pub mod source;
mod taken;

pub use cluster::{ClusterState, Namespaces, PodRecord, Pods};
pub use identities::{ClusterIdentities, FlowgateIdentity};
pub use source::{KubeSource, SourceStats};
