//! Connection tracking in the datapath: finds the connection a packet belongs to (forward or reply),
//! records new connections, and decides which packets are worth a trace record under the configured
//! aggregation level. An entry idle for longer than its lifetime (`LifetimeClass`) is not resumed: the
//! packet is a new connection and gets a verdict (the agent deletes what is left). So is a SYN on a closed
//! TCP connection, and a SYN without an ACK in a connection's reply direction. An entry of an older policy
//! revision is re-checked by `revocation`.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use flowgate_common::{
    FlowTuple,
    conntrack::{CtEntry, CtKey, LifetimeClass, ct_flag, expired, tick_time_ns},
    counters::{Config, aggregation},
    ip::protocol,
    policy::direction,
    record::{ct_state, tcp_flags},
};

use crate::maps::{self, FG_CONNTRACK};

/// TCP flags whose first appearance in a direction is reported under aggregation (see `track`).
const REPORTED_TCP_FLAGS: u8 = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST;

#[inline(always)]
fn opposite(dir: u8) -> u8 {
    if dir == direction::INGRESS { direction::EGRESS } else { direction::INGRESS }
}

#[inline(always)]
fn forward_key(flow: &FlowTuple, endpoint_id: u16, dir: u8) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        protocol: flow.protocol,
        direction: dir,
        endpoint_id,
    }
}

/// A packet of a tracked connection.
pub struct Tracked {
    /// `ct_state::ESTABLISHED` or `ct_state::REPLY`.
    pub state: u8,
    /// Whether the packet deserves a trace record under the aggregation level.
    pub trace: bool,
    /// The connection's key: its opening tuple, direction and endpoint.
    pub key: CtKey,
    /// The connection's entry, valid until the program returns.
    pub entry: *mut CtEntry,
    /// `CtEntry::revision` when the packet arrived.
    pub revision: u32,
}

/// CLOCK_MONOTONIC to the kernel's tick: conntrack's clock (`CtEntry::last_seen_ns`), enough for idle
/// lifetimes of seconds. Read from jiffies with the tick and offset the agent measured
/// (`Config::TickNs`): a load the verifier inlines, where `bpf_ktime_get_coarse_ns` is a helper call, about
/// 17 ns on every packet here (the established path's clock). Until the agent has measured them, the helper.
#[inline(always)]
fn coarse_now() -> u64 {
    let tick_ns = maps::config(Config::TickNs);
    if tick_ns == 0 {
        // SAFETY: a helper without arguments that only reads a clock; callable from any program type.
        return unsafe { bpf_ktime_get_coarse_ns() };
    }
    // SAFETY: as above (the verifier replaces the call with a load of `jiffies_64`).
    let jiffies = unsafe { bpf_jiffies64() };
    tick_time_ns(jiffies, tick_ns, maps::config(Config::TickOffsetNs))
}

/// Looks the packet up as part of an existing connection and updates that connection.
#[inline(always)]
pub fn track(flow: &FlowTuple, endpoint_id: u16, dir: u8, pkt_len: u32, level: u64) -> Option<Tracked> {
    let forward = forward_key(flow, endpoint_id, dir);
    let syn_only =
        flow.protocol == protocol::TCP && flow.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let (ptr, state, key) = match FG_CONNTRACK.get_ptr_mut(&forward) {
        Some(e) => (e, ct_state::ESTABLISHED, forward),
        // A SYN without an ACK opens a connection and answers none: never looked up as a reply (a lookup fewer
        // for every new TCP connection). On a connection's ports the other way it is a new connection of its
        // own, which policy decides in its direction (where a TCP simultaneous open would have passed).
        None if syn_only => return None,
        None => {
            let reverse = CtKey {
                saddr: flow.daddr,
                daddr: flow.saddr,
                sport: flow.dport,
                dport: flow.sport,
                protocol: flow.protocol,
                direction: opposite(dir),
                endpoint_id,
            };
            (FG_CONNTRACK.get_ptr_mut(&reverse)?, ct_state::REPLY, reverse)
        }
    };
    // SAFETY: `entry` is the non-null, aligned address of the map value the lookup just returned; the
    // kernel keeps the element alive until this program returns (an LRU eviction frees it only after an
    // RCU grace period). The same connection's packets on another CPU may update it concurrently and
    // lose an increment of these statistics, which is acceptable for counters.
    let entry = unsafe { &mut *ptr };
    let now = coarse_now();
    if expired(entry.last_seen_ns, now, maps::config(LifetimeClass::of(key.protocol, entry.flags).config())) {
        return None;
    }
    if syn_only && entry.flags & (ct_flag::CLOSED | ct_flag::REVOKED) != 0 {
        // A new connection on the tuple of a closed one: it needs its own verdict.
        return None;
    }
    entry.last_seen_ns = now;
    entry.packets += 1;
    entry.bytes += u64::from(pkt_len);
    let seen = if state == ct_state::ESTABLISHED { &mut entry.flags_seen_orig } else { &mut entry.flags_seen_reply };
    // A state change worth a record: the first SYN, FIN or RST in a direction (Cilium's default
    // `--monitor-aggregation-flags`). A first ACK or PSH is not: they only say data is moving, which
    // cost a record or two per connection on both of its endpoints.
    let new_flags = flow.protocol == protocol::TCP && (flow.tcp_flags & REPORTED_TCP_FLAGS & !*seen) != 0;
    *seen |= flow.tcp_flags;
    // The first reply is a state change worth reporting for every protocol.
    let first_reply = state == ct_state::REPLY && entry.flags & ct_flag::REPLY_SEEN == 0;
    if first_reply {
        entry.flags |= ct_flag::REPLY_SEEN;
    }
    if flow.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
        entry.flags |= ct_flag::CLOSING;
        let fin_both_ways = entry.flags_seen_orig & entry.flags_seen_reply & tcp_flags::FIN != 0;
        if flow.tcp_flags & tcp_flags::RST != 0 || fin_both_ways {
            entry.flags |= ct_flag::CLOSED;
        }
    }
    let trace = match level {
        aggregation::NONE => true,
        aggregation::LOW => dir == direction::EGRESS || new_flags || first_reply,
        _ => new_flags || first_reply,
    };
    Some(Tracked { state, trace, key, entry: ptr, revision: entry.revision })
}

/// Records a new connection opened by this packet at `now` (CLOCK_MONOTONIC ns).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn create(
    flow: &FlowTuple,
    endpoint_id: u16,
    dir: u8,
    pkt_len: u32,
    rule_id: u32,
    flags: u8,
    revision: u64,
    now: u64,
) {
    let coarse = coarse_now();
    // A TCP connection whose opening packet resets it is over at once: its entry lives the close lifetime,
    // and a SYN on its tuple is a new connection with its own verdict.
    let reset = flow.protocol == protocol::TCP && flow.tcp_flags & tcp_flags::RST != 0;
    let flags = if reset { flags | ct_flag::CLOSING | ct_flag::CLOSED } else { flags };
    let entry = CtEntry {
        created_ns: now,
        last_seen_ns: coarse,
        rule_id,
        flags_seen_orig: flow.tcp_flags,
        flags_seen_reply: 0,
        flags,
        _pad: 0,
        packets: 1,
        bytes: u64::from(pkt_len),
        revision: revision as u32,
        _pad2: 0,
    };
    // A full LRU map evicts its oldest entry; an error here only costs a later re-evaluation.
    let _ = FG_CONNTRACK.insert(&forward_key(flow, endpoint_id, dir), &entry, 0);
}

/// Whether an ICMP error quoting `quoted` is about a connection tracked at this endpoint (Linux
/// conntrack's RELATED). The quoted packet went the other way through this endpoint: in the
/// connection's opening direction (the connection was opened in the opposite direction), or as one of
/// its replies (opened in this direction, reversed tuple).
#[inline(always)]
pub fn related(quoted: &FlowTuple, endpoint_id: u16, dir: u8) -> bool {
    if FG_CONNTRACK.get_ptr(&forward_key(quoted, endpoint_id, opposite(dir))).is_some() {
        return true;
    }
    let reversed = CtKey {
        saddr: quoted.daddr,
        daddr: quoted.saddr,
        sport: quoted.dport,
        dport: quoted.sport,
        protocol: quoted.protocol,
        direction: dir,
        endpoint_id,
    };
    FG_CONNTRACK.get_ptr(&reversed).is_some()
}
