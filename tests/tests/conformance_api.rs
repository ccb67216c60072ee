//! The NetworkPolicy conformance cases of `conformance.rs`, every one of them through a real API server and
//! with the pods spread over three nodes, one agent per node: the lab's nodes, namespaces and pods are
//! registered on the server, the agents run with `--kubernetes`, policies are created, updated and deleted
//! with `kubectl` and with kube-rs, labels changed the same two ways, and the manifests the cases call
//! invalid must be refused by the API server itself. Same truth tables, same real traffic, now decided by
//! the agents of two nodes for most connections.

/// Read by the conformance framework: policies and labels go through the API server.
const THROUGH_API_SERVER: bool = true;

#[path = "conformance.rs"]
mod cases;
