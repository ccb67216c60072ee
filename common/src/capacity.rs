//! Default capacities of the datapath's maps (`max_entries`). The eBPF map definitions are sized from
//! these; the agent's flags (`--policy-map-entries`, `--ipcache-entries`, `--conntrack-entries`) default
//! to them and resize the maps at load time, and the agent counts every plan against the sizes the kernel
//! holds, so a set that does not fit is refused instead of failing
//! half-way through an update. The counters and config arrays are sized by `Counter::COUNT` and
//! `Config::COUNT`, next to their indices.

/// Endpoints array: node-side interfaces with a smaller ifindex can be endpoints.
pub const MAX_IFINDEX: u32 = 16384;
/// Endpoint ids (0 is none) and the slots of the per-endpoint arrays indexed by them: the enforcement
/// maps (per generation) and the invalid-source counts. Not resized.
pub const MAX_ENDPOINTS: u32 = 4096;
/// Policy tries (per generation): policy entries over all endpoints.
pub const MAX_POLICY_ENTRIES: u32 = 65536;
/// ipcache tries (per generation): pod addresses and CIDR prefixes.
pub const MAX_IPCACHE_ENTRIES: u32 = 16384;
/// Conntrack (LRU): connections tracked at once; the least recently used go first.
pub const MAX_CONNECTIONS: u32 = 262144;
/// Fragment tracking (LRU): datagrams whose later fragments are still expected.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 8192;
/// Size in bytes of the events ring buffer in the object file; the agent sets its own at load time.
pub const EVENTS_RINGBUF_BYTES: u32 = 4 << 20;
