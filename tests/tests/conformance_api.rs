//! The NetworkPolicy conformance cases of `conformance.rs`, every one of them through a real API server:
//! the lab's namespaces and pods are registered on it, the agent runs with `--kubernetes`, policies are
//! created, updated and deleted with `kubectl`, labels changed with `kubectl patch`, and the manifests the
//! cases call invalid must be refused by the API server itself. Same truth tables, same real traffic.

/// Read by the conformance framework: policies and labels go through the API server.
const THROUGH_API_SERVER: bool = true;

#[path = "conformance.rs"]
mod cases;
