//! The maps of the datapath and small accessors over them. Map statics are named exactly as the
//! constants in `flowgate_common::names`, which is what user space looks them up by.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use flowgate_common::{Counter, EndpointInfo, counters::Config};

/// Default size of the events ring buffer; the agent overrides it at load time.
const EVENTS_BYTES: u32 = 4 << 20;
const MAX_ENDPOINTS: u32 = 4096;

#[map]
pub static FG_ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
pub static FG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static FG_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
pub static FG_CONFIG: Array<u64> = Array::with_max_entries(Config::COUNT, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = FG_COUNTERS.get_ptr_mut(counter.index()) {
        // Per-CPU slot: no other writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// The endpoint behind a node-side interface, if the agent registered one.
#[inline(always)]
pub fn endpoint(ifindex: u32) -> Option<EndpointInfo> {
    unsafe { FG_ENDPOINTS.get(&ifindex) }.copied()
}

/// A runtime setting written by the agent (0 when unset).
#[inline(always)]
pub fn config(key: Config) -> u64 {
    FG_CONFIG.get(key.index()).copied().unwrap_or(0)
}
