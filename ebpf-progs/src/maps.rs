//! The maps of the datapath and small accessors over them. Map statics are named exactly as the
//! constants in `flowgate_common::names`, which is what user space looks them up by. Every map but the
//! perf event array is pinned by name, so a restarted agent adopts the state (policy, conntrack,
//! counters, unread events) that kept enforcing while it was away. Their sizes are
//! `flowgate_common::capacity`'s, which the agent reads too.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerfEventArray, RingBuf, lpm_trie::Key},
};
use flowgate_common::{
    Counter, EndpointInfo,
    capacity::{
        EVENTS_RINGBUF_BYTES, MAX_CONNECTIONS, MAX_ENDPOINTS, MAX_FRAGMENTED_DATAGRAMS, MAX_IFINDEX,
        MAX_IPCACHE_ENTRIES, MAX_POLICY_ENTRIES,
    },
    conntrack::{CtEntry, CtKey},
    counters::Config,
    fragment::{FragmentKey, FragmentValue},
    ip::Addr,
    policy::{IPCACHE_HOST_PREFIX, IpcacheValue, POLICY_PREFIX_FULL, PolicyKey, PolicyValue},
};

/// Indexed by the ifindex of the endpoint's node-side interface (an array lookup is inlined by the
/// verifier: a few nanoseconds per packet instead of a hash lookup); `endpoint_id == 0` means no endpoint.
#[map]
pub static FG_ENDPOINTS: Array<EndpointInfo> = Array::pinned(MAX_IFINDEX, 0);

#[map]
pub static FG_FRAGMENTS: LruHashMap<FragmentKey, FragmentValue> = LruHashMap::pinned(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Indexed by endpoint id: packets dropped for leaving the endpoint with another source address.
#[map]
pub static FG_INVALID_SOURCE: PerCpuArray<u64> = PerCpuArray::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static FG_EVENTS: RingBuf = RingBuf::pinned(EVENTS_RINGBUF_BYTES, 0);

#[map]
pub static FG_EVENTS_PERF: PerfEventArray<u8> = PerfEventArray::new(0);

#[map]
pub static FG_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[map]
pub static FG_CONFIG: Array<u64> = Array::pinned(Config::COUNT, 0);

#[map]
pub static FG_CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

/// A policy generation's entries for one peer, protocol and port (`names::MAP_POLICY_EXACT`). Not
/// preallocated: the kernel charges only the entries there are.
#[map]
pub static FG_POLICY_EXACT_0: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static FG_POLICY_EXACT_1: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);

/// A policy generation's shorter prefixes (`names::MAP_POLICY`).
#[map]
pub static FG_POLICY_0: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(MAX_POLICY_ENTRIES, 0);
#[map]
pub static FG_POLICY_1: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(MAX_POLICY_ENTRIES, 0);

/// An ipcache generation's single addresses, pods' above all (`names::MAP_IPCACHE_HOST`): a hash lookup costs
/// the same at any size, where the trie's grew from about 30 to 65 ns with 1,000 pods' addresses in it.
#[map]
pub static FG_IPCACHE_HOST_0: HashMap<Addr, IpcacheValue> = HashMap::pinned(MAX_IPCACHE_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static FG_IPCACHE_HOST_1: HashMap<Addr, IpcacheValue> = HashMap::pinned(MAX_IPCACHE_ENTRIES, BPF_F_NO_PREALLOC);

/// An ipcache generation's prefixes shorter than one address: ipBlocks and the world (`names::MAP_IPCACHE`).
#[map]
pub static FG_IPCACHE_0: LpmTrie<Addr, IpcacheValue> = LpmTrie::pinned(MAX_IPCACHE_ENTRIES, 0);
#[map]
pub static FG_IPCACHE_1: LpmTrie<Addr, IpcacheValue> = LpmTrie::pinned(MAX_IPCACHE_ENTRIES, 0);

/// A policy generation's enforcement flags, indexed by endpoint id (0: no policy selects the endpoint; ids
/// stay below `MAX_ENDPOINTS`, see the agent's endpoint registry). An array: the verifier inlines its
/// lookup, where a hash lookup cost every new connection about 50 ns here.
#[map]
pub static FG_ENFORCE_0: Array<u32> = Array::pinned(MAX_ENDPOINTS, 0);
#[map]
pub static FG_ENFORCE_1: Array<u32> = Array::pinned(MAX_ENDPOINTS, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(counter: Counter) {
    count_by(counter, 1);
}

/// Adds `n` to a counter.
#[inline(always)]
pub fn count_by(counter: Counter, n: u64) {
    if let Some(slot) = FG_COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: `slot` is the non-null, aligned address of this CPU's copy of the counter, returned by
        // the lookup; the array is preallocated, so it stays valid. TC programs run with bottom halves
        // disabled, so no other program on this CPU writes this copy in the middle of the increment (the
        // agent only reads it).
        unsafe { *slot += n };
    }
}

/// The endpoint behind a node-side interface, if the agent registered one: the map's own value, not a
/// copy (40 bytes the programs' stack cannot spare).
#[inline(always)]
pub fn endpoint(ifindex: u32) -> Option<&'static EndpointInfo> {
    FG_ENDPOINTS.get(ifindex).filter(|e| e.endpoint_id != 0)
}

/// Adds one to an endpoint's count of packets dropped for an invalid source address.
#[inline(always)]
pub fn count_invalid_source(endpoint_id: u16) {
    if let Some(slot) = FG_INVALID_SOURCE.get_ptr_mut(u32::from(endpoint_id)) {
        // SAFETY: as in `count`: this CPU's copy of a preallocated array slot, returned non-null and aligned
        // by the lookup; no other program on this CPU runs in the middle of the increment.
        unsafe { *slot += 1 };
    }
}

/// A runtime setting written by the agent (0 when unset).
#[inline(always)]
pub fn config(key: Config) -> u64 {
    FG_CONFIG.get(key.index()).copied().unwrap_or(0)
}

/// Enforcement flags of an endpoint in the active policy generation.
#[inline(always)]
pub fn enforcement(generation: u64, endpoint_id: u16) -> u32 {
    // The maps of the active generation are not written: the agent rewrites only the inactive generation,
    // and waits for a grace period after a switch (`rcu::SwitchGrace` in the agent) before rewriting the old one.
    let index = u32::from(endpoint_id);
    if generation == 0 { FG_ENFORCE_0.get(index) } else { FG_ENFORCE_1.get(index) }.copied().unwrap_or(0)
}

/// Identities of an address (IPv4 mapped) in the active generation: its own entry (a single address is the
/// longest prefix there is, so it is what the trie would answer), else the longest prefix in the trie.
#[inline(always)]
pub fn ipcache(generation: u64, addr: &Addr) -> Option<IpcacheValue> {
    // SAFETY: the value is copied out at once; the agent never writes the active generation.
    let host = unsafe { if generation == 0 { FG_IPCACHE_HOST_0.get(addr) } else { FG_IPCACHE_HOST_1.get(addr) } };
    if let Some(value) = host {
        return Some(*value);
    }
    let key = Key::new(IPCACHE_HOST_PREFIX, *addr);
    if generation == 0 { FG_IPCACHE_0.get(&key) } else { FG_IPCACHE_1.get(&key) }.copied()
}

/// The longest policy entry matching the key, as a pointer so its counters can be updated. An entry of
/// the whole key (peer, protocol and port: the longest prefix there is) is in the exact map; only when
/// there is none, and the endpoint has shorter prefixes in this direction (`prefixes`, see
/// `enforcement::INGRESS_PREFIXES`), does the trie of port ranges, whole protocols and whole peers decide.
#[inline(always)]
pub fn policy(generation: u64, key: &PolicyKey, prefixes: bool) -> Option<*mut PolicyValue> {
    let exact = if generation == 0 { FG_POLICY_EXACT_0.get_ptr_mut(key) } else { FG_POLICY_EXACT_1.get_ptr_mut(key) };
    if exact.is_some() || !prefixes {
        return exact;
    }
    let key = Key::new(POLICY_PREFIX_FULL, *key);
    let value = if generation == 0 { FG_POLICY_0.get(&key) } else { FG_POLICY_1.get(&key) };
    value.map(|v| core::ptr::from_ref(v).cast_mut())
}
