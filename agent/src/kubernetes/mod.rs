//! Kubernetes mode: pods, namespaces and NetworkPolicies come from the API server instead of files.
//! [`source`] keeps one reflector per kind (kube-rs watchers: list, then watch; a `410 Gone` or a broken watch
//! lists again and swaps the new list in whole), [`cluster`] turns what the reflectors hold into the plain
//! [`cluster::ClusterState`] the controller compiles against, and [`client`] finds the credentials.

pub mod client;
pub mod cluster;
pub mod source;

pub use cluster::{ClusterState, PodRecord};
pub use source::{KubeSource, SourceStats};
