//! flowgate's TC programs. `from_endpoint` runs on the ingress hook of an endpoint's node-side veth
//! (packets leaving the pod: the endpoint's egress), `to_endpoint` on its egress hook (packets entering
//! the pod: its ingress). Each packet is matched against connection tracking; a packet that opens a
//! connection in a direction where policy is enforced gets a policy decision and one policy-verdict record
//! (which also stands for the packet's trace or drop), and either passes (`TC_ACT_UNSPEC`, so later TCX
//! programs still run) or is dropped.
//! Forwarded packets get trace records according to the aggregation level.
#![no_std]
#![no_main]

mod addr;
mod conntrack;
mod events;
mod fragments;
mod maps;
mod packet;
mod plain;
mod policy;
mod revocation;

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use core::{cell::Cell, mem::MaybeUninit};
use flowgate_common::{
    Counter, DropRecord, FlowTuple, PolicyVerdictRecord, TraceRecord,
    conntrack::ct_flag,
    counters::{Config, aggregation},
    drop_reason,
    policy::{direction, enforcement, match_type, verdict},
    record::{
        ct_state,
        observation_point::{FROM_ENDPOINT, TO_ENDPOINT},
        record_type,
    },
};

use packet::{Meta, fragment, kind};
use plain::zero_in_place;

#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    try_endpoint(&ctx, FROM_ENDPOINT).unwrap_or(TC_ACT_UNSPEC)
}

#[classifier]
pub fn to_endpoint(ctx: TcContext) -> i32 {
    try_endpoint(&ctx, TO_ENDPOINT).unwrap_or(TC_ACT_UNSPEC)
}

/// Passes every packet on and does nothing else: never attached, the benchmarks' floor (the cost of
/// BPF_PROG_TEST_RUN itself, which every per-packet figure includes).
#[classifier]
pub fn floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Never attached: the agent runs it (BPF_PROG_TEST_RUN) to learn how jiffies map onto CLOCK_MONOTONIC
/// (`Config::TickNs`). Writes jiffies and then CLOCK_MONOTONIC in nanoseconds, native-endian, over the first
/// 16 bytes of the packet it is given.
#[classifier]
pub fn clock(ctx: TcContext) -> i32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 16 <= end {
        // SAFETY: helpers without arguments that only read clocks.
        let (jiffies, now_ns) = unsafe { (bpf_jiffies64(), bpf_ktime_get_ns()) };
        // SAFETY: `start + 16 <= data_end` was checked just above: the 16 bytes are the packet's own linear
        // data, writable by a TC program (the verifier unclones the skb first).
        unsafe {
            (start as *mut [u8; 8]).write_unaligned(jiffies.to_ne_bytes());
            ((start + 8) as *mut [u8; 8]).write_unaligned(now_ns.to_ne_bytes());
        }
    }
    TC_ACT_UNSPEC
}

/// What the programs know about the packet at hand.
struct Packet {
    flow: FlowTuple,
    endpoint_id: u16,
    point: u8,
    dir: u8,
    ifindex: u32,
    len: u32,
    /// CLOCK_MONOTONIC when first asked for (0: not yet): the packet's records and its conntrack entry
    /// share one reading, a clock read fewer per record (each is a TSC read, dear in a VM).
    now_ns: Cell<u64>,
}

impl Packet {
    #[inline(always)]
    fn now(&self) -> u64 {
        let mut now = self.now_ns.get();
        if now == 0 {
            // SAFETY: a helper without arguments that only reads the monotonic clock.
            now = unsafe { bpf_ktime_get_ns() };
            self.now_ns.set(now);
        }
        now
    }
}

#[inline(always)]
fn try_endpoint(ctx: &TcContext, point: u8) -> Result<i32, i32> {
    let (dir, packets) = if point == FROM_ENDPOINT {
        (direction::EGRESS, Counter::PacketsFromEndpoint)
    } else {
        (direction::INGRESS, Counter::PacketsToEndpoint)
    };
    maps::count(packets);
    // SAFETY: `ctx.skb.skb` is the `__sk_buff` the kernel passed to this program, valid for the whole
    // run; `ifindex` is one of its readable fields (the verifier rewrites the access and checks it).
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(endpoint) = maps::endpoint(ifindex) else {
        maps::count(Counter::UnknownEndpoint);
        return Ok(TC_ACT_UNSPEC);
    };
    let mut pkt_storage = MaybeUninit::<Packet>::uninit();
    let mut meta_storage = MaybeUninit::<Meta>::uninit();
    let pkt = pkt_storage.as_mut_ptr();
    // SAFETY: `pkt` points to this frame's own storage for a `Packet`; every field is written here (the flow
    // zeroed in place) before the reference below is made.
    let pkt = unsafe {
        zero_in_place(&raw mut (*pkt).flow);
        (&raw mut (*pkt).endpoint_id).write(endpoint.endpoint_id);
        (&raw mut (*pkt).point).write(point);
        (&raw mut (*pkt).dir).write(dir);
        (&raw mut (*pkt).ifindex).write(ifindex);
        (&raw mut (*pkt).len).write(ctx.len());
        (&raw mut (*pkt).now_ns).write(Cell::new(0));
        &mut *pkt
    };
    // SAFETY: as above; `Meta` is valid as all zeroes.
    let meta = unsafe {
        zero_in_place(meta_storage.as_mut_ptr());
        &mut *meta_storage.as_mut_ptr()
    };
    packet::parse(ctx, &mut pkt.flow, meta);
    match meta.kind {
        kind::IP => {}
        // Neighbour resolution must keep working.
        kind::ARP => return Ok(TC_ACT_UNSPEC),
        kind::TRUNCATED => {
            let source = addr::source(&pkt.flow);
            if point == FROM_ENDPOINT && !addr::is_unspecified(source) && !addr::is_own(endpoint, source) {
                return Ok(invalid_source(ctx, pkt));
            }
            maps::count(Counter::TruncatedHeader);
            return Ok(drop_packet(ctx, pkt, drop_reason::CT_TRUNCATED_OR_INVALID_HEADER, 0));
        }
        kind::INVALID => return Ok(drop_packet(ctx, pkt, drop_reason::INVALID_PACKET, 0)),
        _ if point == FROM_ENDPOINT => {
            return Ok(drop_packet(ctx, pkt, drop_reason::UNSUPPORTED_L3_PROTOCOL, 0));
        }
        _ => return Ok(TC_ACT_UNSPEC),
    }
    // Neighbour discovery and multicast listener messages keep the link working; they come from the
    // pod's link-local address (or none, during duplicate address detection), and never leave the link.
    let source = addr::source(&pkt.flow);
    if meta.link_control
        && (point == TO_ENDPOINT
            || addr::is_link_local(source)
            || addr::is_unspecified(source)
            || addr::is_own(endpoint, source))
    {
        maps::count(Counter::LinkControl);
        return Ok(TC_ACT_UNSPEC);
    }
    // An endpoint speaks with its own address only: anything else would borrow another pod's identity.
    if point == FROM_ENDPOINT && !addr::is_own(endpoint, source) {
        return Ok(invalid_source(ctx, pkt));
    }
    let level = maps::config(Config::Aggregation);
    if meta.fragment == fragment::LATER {
        return Ok(later_fragment(ctx, pkt, meta.fragment_id, level));
    }
    if meta.quoted_version != 0 && related(ctx, meta, pkt) {
        // An ICMP error about a tracked connection (unreachable, fragmentation needed / packet too big, time
        // exceeded): it belongs to that connection, so path-MTU discovery and error reporting keep working.
        maps::count(Counter::IcmpRelated);
        trace(ctx, pkt, ct_state::RELATED, 0);
        return Ok(TC_ACT_UNSPEC);
    }
    let action = connection(ctx, pkt, level);
    if meta.fragment == fragment::FIRST {
        let reason = if action == TC_ACT_SHOT as i32 { drop_reason::POLICY_DENIED } else { 0 };
        fragments::remember_first(&pkt.flow, meta.fragment_id, pkt.endpoint_id, dir, reason);
    }
    Ok(action)
}

/// Whether the ICMP error in the packet quotes a connection tracked at this endpoint.
#[inline(never)]
fn related(ctx: &TcContext, meta: &Meta, pkt: &Packet) -> bool {
    let mut storage = MaybeUninit::<FlowTuple>::uninit();
    // SAFETY: zeroed in place, and a `FlowTuple` is valid as all zeroes.
    let quoted = unsafe {
        zero_in_place(storage.as_mut_ptr());
        &mut *storage.as_mut_ptr()
    };
    packet::quoted(ctx, meta, quoted) && conntrack::related(quoted, pkt.endpoint_id, pkt.dir)
}

/// A packet leaving an endpoint with a source address that is not the endpoint's: dropped, counted
/// for the endpoint.
#[inline(never)]
fn invalid_source(ctx: &TcContext, pkt: &Packet) -> i32 {
    maps::count(Counter::InvalidSource);
    maps::count_invalid_source(pkt.endpoint_id);
    drop_packet(ctx, pkt, drop_reason::INVALID_SOURCE_IP, 0)
}

/// A later fragment takes its datagram's ports and the fate of its first fragment; without a first
/// fragment it cannot be attributed to a connection and is dropped.
#[inline(never)]
fn later_fragment(ctx: &TcContext, pkt: &mut Packet, fragment_id: u32, level: u64) -> i32 {
    let Some(first) = fragments::first_of(&pkt.flow, fragment_id, pkt.endpoint_id, pkt.dir) else {
        maps::count(Counter::FragmentsWithoutFirst);
        return drop_packet(ctx, pkt, drop_reason::FRAGMENT_WITHOUT_FIRST, 0);
    };
    pkt.flow.sport = first.sport;
    pkt.flow.dport = first.dport;
    if first.drop_reason != 0 {
        return drop_packet(ctx, pkt, first.drop_reason, 0);
    }
    if level == aggregation::NONE {
        trace(ctx, pkt, ct_state::ESTABLISHED, 0);
    }
    TC_ACT_UNSPEC
}

/// Drops the packet with a drop record.
#[inline(never)]
fn drop_packet(ctx: &TcContext, pkt: &Packet, reason: u8, remote_identity: u32) -> i32 {
    drop_at_revision(ctx, pkt, reason, remote_identity, 0)
}

/// Drops the packet with a drop record naming the policy revision that decided (0: none did).
#[inline(never)]
fn drop_at_revision(ctx: &TcContext, pkt: &Packet, reason: u8, remote_identity: u32, revision: u64) -> i32 {
    maps::count(Counter::Drops);
    events::emit_with(ctx, 1, |drop: &mut DropRecord| {
        drop.header = events::header_at(record_type::DROP, DropRecord::LEN, pkt.now());
        // SAFETY: the record's `flow` is writable record memory, apart from `pkt`.
        unsafe { plain::copy(&raw mut drop.flow, &pkt.flow) };
        drop.endpoint_id = pkt.endpoint_id;
        drop.direction = pkt.dir;
        drop.reason = reason;
        drop.remote_identity = remote_identity;
        drop.ifindex = pkt.ifindex;
        drop.pkt_len = pkt.len;
        drop.revision = revision as u32;
    });
    TC_ACT_SHOT as i32
}

/// The connection a packet belongs to, or the verdict on the new one it opens: the action to take. Inlined:
/// a BPF-to-BPF call costs the established fast path a few nanoseconds. It fits the 512-byte stack beside
/// the IPv6 parser because records are built in a per-CPU scratch map, the endpoint is read in place and
/// packet state is zeroed in place.
#[inline(always)]
fn connection(ctx: &TcContext, pkt: &Packet, level: u64) -> i32 {
    let (endpoint_id, dir) = (pkt.endpoint_id, pkt.dir);
    // Read before the generation (see `revocation::recheck`).
    let revision = maps::config(Config::PolicyRevision);
    if let Some(tracked) = conntrack::track(&pkt.flow, endpoint_id, dir, pkt.len, level) {
        // Entries keep the revision's low 32 bits (the agent never makes them `REVISION_REVOKED`).
        if tracked.revision != revision as u32
            && let revocation::Recheck::Revoked { remote_identity } = revocation::recheck(&tracked, revision)
        {
            maps::count(Counter::Revoked);
            return drop_at_revision(ctx, pkt, drop_reason::CONNECTION_REVOKED, remote_identity, revision);
        }
        if tracked.trace {
            trace(ctx, pkt, tracked.state, 0);
        }
        return TC_ACT_UNSPEC;
    }

    // A new connection.
    let generation = maps::config(Config::ActiveGeneration);
    let flags = maps::enforcement(generation, endpoint_id);
    let (enforced, audit) = if dir == direction::INGRESS {
        (flags & enforcement::INGRESS != 0, flags & enforcement::INGRESS_AUDIT != 0)
    } else {
        (flags & enforcement::EGRESS != 0, flags & enforcement::EGRESS_AUDIT != 0)
    };
    if !enforced {
        conntrack::create(&pkt.flow, endpoint_id, dir, pkt.len, 0, 0, revision, pkt.now());
        trace(ctx, pkt, ct_state::NEW, 0);
        return TC_ACT_UNSPEC;
    }

    let remote_addr = if dir == direction::EGRESS { &pkt.flow.daddr } else { &pkt.flow.saddr };
    let remote = policy::remote(generation, remote_addr);
    // One record per decision: the verdict record stands for the packet's trace (allowed, audited) or
    // drop (denied) as well, which the agent derives from it (`PolicyVerdictRecord::packet_event`).
    match policy::decide(generation, flags, dir, remote, (endpoint_id, pkt.flow.protocol, pkt.flow.dport)) {
        Some(allowed) => {
            maps::count(Counter::PolicyAllowed);
            allowed.account(pkt.len);
            let decision = Decision {
                verdict: verdict::ALLOWED,
                match_type: allowed.match_type,
                remote_identity: remote.identity,
                rule_id: allowed.rule_id,
            };
            verdict_record(ctx, pkt, &decision, revision);
            conntrack::create(
                &pkt.flow,
                endpoint_id,
                dir,
                pkt.len,
                allowed.rule_id,
                ct_flag::ENFORCED,
                revision,
                pkt.now(),
            );
            TC_ACT_UNSPEC
        }
        None if audit => {
            maps::count(Counter::PolicyAudit);
            verdict_record(ctx, pkt, &Decision::unmatched(verdict::AUDIT, remote.identity), revision);
            let flags = ct_flag::ENFORCED | ct_flag::AUDIT;
            conntrack::create(&pkt.flow, endpoint_id, dir, pkt.len, 0, flags, revision, pkt.now());
            TC_ACT_UNSPEC
        }
        None => {
            maps::count(Counter::PolicyDenied);
            maps::count(Counter::Drops);
            verdict_record(ctx, pkt, &Decision::unmatched(verdict::DENIED, remote.identity), revision);
            TC_ACT_SHOT as i32
        }
    }
}

/// A trace record of a forwarded packet, unless the agent turned traces off (`Config::TracesOff`).
#[inline(never)]
fn trace(ctx: &TcContext, pkt: &Packet, ct_state: u8, remote_identity: u32) {
    if maps::config(Config::TracesOff) != 0 {
        return;
    }
    events::emit_with(ctx, 1, |record: &mut TraceRecord| {
        record.header = events::header_at(record_type::TRACE, TraceRecord::LEN, pkt.now());
        // SAFETY: the record's `flow` is writable record memory, apart from `pkt`.
        unsafe { plain::copy(&raw mut record.flow, &pkt.flow) };
        record.endpoint_id = pkt.endpoint_id;
        record.observation_point = pkt.point;
        record.ct_state = ct_state;
        record.ifindex = pkt.ifindex;
        record.pkt_len = pkt.len;
        record.remote_identity = remote_identity;
    });
}

/// A policy decision as its verdict record tells it.
struct Decision {
    verdict: u8,
    match_type: u8,
    remote_identity: u32,
    rule_id: u32,
}

impl Decision {
    /// A decision no policy entry matched (denied, or audited).
    #[inline(always)]
    fn unmatched(verdict: u8, remote_identity: u32) -> Self {
        Decision { verdict, match_type: match_type::NONE, remote_identity, rule_id: 0 }
    }
}

/// The record of a policy decision taken under `revision`, which also stands for what became of the packet.
#[inline(never)]
fn verdict_record(ctx: &TcContext, pkt: &Packet, decision: &Decision, revision: u64) {
    events::emit_with(ctx, PolicyVerdictRecord::EVENTS, |record: &mut PolicyVerdictRecord| {
        record.header = events::header_at(record_type::POLICY_VERDICT, PolicyVerdictRecord::LEN, pkt.now());
        // SAFETY: the record's `flow` is writable record memory, apart from `pkt`.
        unsafe { plain::copy(&raw mut record.flow, &pkt.flow) };
        record.endpoint_id = pkt.endpoint_id;
        record.direction = pkt.dir;
        record.verdict = decision.verdict;
        record.match_type = decision.match_type;
        record.remote_identity = decision.remote_identity;
        record.rule_id = decision.rule_id;
        record.ifindex = pkt.ifindex;
        record.pkt_len = pkt.len;
        record.revision = revision as u32;
    });
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// SAFETY: `license` is the ELF section the loader reads the program's license from, and no other symbol
// in the object is named `LICENSE`, so neither attribute can clash with another definition.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
