//! IPv4 and IPv6 fragments: a later fragment carries no L4 header, so it takes the ports and the fate of its
//! datagram's first fragment, kept in `FG_FRAGMENTS` per observing endpoint and direction. A later
//! fragment whose first fragment was not seen (or is too old) cannot be attributed and is dropped.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use flowgate_common::{
    FlowTuple,
    fragment::{FRAGMENT_LIFETIME_NS, FragmentKey, FragmentValue},
};

use crate::maps::FG_FRAGMENTS;

#[inline(always)]
fn key(flow: &FlowTuple, id: u32, endpoint_id: u16, dir: u8) -> FragmentKey {
    FragmentKey { saddr: flow.saddr, daddr: flow.daddr, id, protocol: flow.protocol, direction: dir, endpoint_id }
}

/// Remembers what became of a first fragment: `drop_reason` 0 if it passed.
#[inline(always)]
pub fn remember_first(flow: &FlowTuple, id: u32, endpoint_id: u16, dir: u8, drop_reason: u8) {
    let value = FragmentValue {
        // SAFETY: a helper without arguments that only reads the monotonic clock.
        seen_ns: unsafe { bpf_ktime_get_ns() },
        sport: flow.sport,
        dport: flow.dport,
        drop_reason,
        _pad: 0,
        _pad2: 0,
    };
    // A full LRU map evicts its oldest datagram; its later fragments are then dropped as unattributable.
    let _ = FG_FRAGMENTS.insert(&key(flow, id, endpoint_id, dir), &value, 0);
}

/// The first fragment of this later fragment's datagram, if it was seen recently enough.
#[inline(always)]
pub fn first_of(flow: &FlowTuple, id: u32, endpoint_id: u16, dir: u8) -> Option<FragmentValue> {
    // SAFETY: the value is copied out at once; an LRU element replaced concurrently can only give a stale
    // copy, which the lifetime check or the policy of the first fragment already accounts for.
    let first = unsafe { FG_FRAGMENTS.get(&key(flow, id, endpoint_id, dir)) }.copied()?;
    // SAFETY: a helper without arguments that only reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    (now.saturating_sub(first.seen_ns) <= FRAGMENT_LIFETIME_NS).then_some(first)
}
