//! Names of the kernel programs and maps, used by the eBPF crate's `#[map(name = ...)]` attributes and by
//! the agent when it looks them up. No string literals at call sites.

/// TC program on the ingress hook of an endpoint's node-side veth: traffic leaving the pod.
pub const PROG_FROM_ENDPOINT: &str = "from_endpoint";
/// TC program on the egress hook of an endpoint's node-side veth: traffic entering the pod.
pub const PROG_TO_ENDPOINT: &str = "to_endpoint";
/// TC program that only passes the packet on, never attached: the benchmarks' floor (what
/// BPF_PROG_TEST_RUN costs by itself).
pub const PROG_FLOOR: &str = "floor";
/// TC program that writes jiffies and CLOCK_MONOTONIC into the packet, never attached: the agent runs it
/// to measure the kernel's tick (`counters::Config::TickNs`).
pub const PROG_CLOCK: &str = "clock";

/// Hash map: node-side ifindex -> [`crate::EndpointInfo`].
pub const MAP_ENDPOINTS: &str = "FG_ENDPOINTS";
/// BPF ring buffer carrying event records to the agent.
pub const MAP_EVENTS_RINGBUF: &str = "FG_EVENTS";
/// Array of one `u64`: when a record last woke the ring buffer's reader (`bpf_ktime_get_ns`); the reader
/// writes `u64::MAX` there while it polls a stream, so that no record wakes it (`agent/src/reader.rs`).
pub const MAP_WAKEUP: &str = "FG_WAKEUP";
/// Per-CPU array of `u64` counters indexed by [`crate::Counter`].
pub const MAP_COUNTERS: &str = "FG_COUNTERS";
/// Array of `u64` runtime settings indexed by [`crate::counters::Config`].
pub const MAP_CONFIG: &str = "FG_CONFIG";
/// Perf event array carrying event records when the agent runs with `--events-buffer perf`.
pub const MAP_EVENTS_PERF: &str = "FG_EVENTS_PERF";
/// LRU hash: `CtKey` -> `CtEntry`.
pub const MAP_CONNTRACK: &str = "FG_CONNTRACK";
/// LRU hash: `FragmentKey` -> `FragmentValue`, the first fragment's ports and fate for the later ones.
pub const MAP_FRAGMENTS: &str = "FG_FRAGMENTS";
/// Per-CPU array of `u64`, indexed by endpoint id: packets from the endpoint dropped for a source address
/// that is not the endpoint's.
pub const MAP_INVALID_SOURCE: &str = "FG_INVALID_SOURCE";
/// Policy generations: LPM tries `PolicyKey` -> `PolicyValue`, with the entries of a port range, of a
/// whole protocol or of a whole peer (prefixes shorter than `POLICY_PREFIX_FULL`).
pub const MAP_POLICY: [&str; 2] = ["FG_POLICY_0", "FG_POLICY_1"];
/// Policy generations, the entries of one peer, protocol and port (prefix `POLICY_PREFIX_FULL`, most
/// of them): hash maps `PolicyKey` -> `PolicyValue`. A hash lookup costs the same at any size, where a
/// trie lookup grows with the trie's depth; the programs look here first (see `ebpf-progs/src/maps.rs`).
pub const MAP_POLICY_EXACT: [&str; 2] = ["FG_POLICY_EXACT_0", "FG_POLICY_EXACT_1"];
/// ipcache generations, the prefixes shorter than one address (ipBlocks, the world): LPM tries address
/// (IPv4 mapped) -> `IpcacheValue`.
pub const MAP_IPCACHE: [&str; 2] = ["FG_IPCACHE_0", "FG_IPCACHE_1"];
/// ipcache generations, single addresses (`policy::IPCACHE_HOST_PREFIX`; every pod's): hash maps address ->
/// `IpcacheValue`, looked in before the trie (see `ebpf-progs/src/maps.rs`).
pub const MAP_IPCACHE_HOST: [&str; 2] = ["FG_IPCACHE_HOST_0", "FG_IPCACHE_HOST_1"];
/// Enforcement generations: arrays indexed by endpoint id -> `enforcement` flags.
pub const MAP_ENFORCEMENT: [&str; 2] = ["FG_ENFORCE_0", "FG_ENFORCE_1"];
