//! flowgate's TC programs. `from_endpoint` runs on the ingress hook of an endpoint's node-side veth
//! (packets leaving the pod: the endpoint's egress), `to_endpoint` on its egress hook (packets entering
//! the pod: its ingress). Each packet is matched against connection tracking; a packet that opens a
//! connection in a direction where policy is enforced gets a policy decision, a policy-verdict record,
//! and either passes (`TC_ACT_UNSPEC`, so later TCX programs still run) or is dropped with a drop record.
//! Forwarded packets get trace records according to the aggregation level.
#![no_std]
#![no_main]

mod conntrack;
mod events;
mod fragments;
mod maps;
mod packet;
mod policy;
mod revocation;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use flowgate_common::{
    Counter, DropRecord, EndpointInfo, FlowTuple, PolicyVerdictRecord, TraceRecord,
    conntrack::ct_flag,
    counters::{Config, aggregation},
    drop_reason,
    ip::Addr,
    policy::{direction, enforcement, match_type, verdict},
    record::{
        ct_state,
        observation_point::{FROM_ENDPOINT, TO_ENDPOINT},
        record_type,
    },
};
use packet::{Meta, fragment, kind};

#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    try_endpoint(&ctx, FROM_ENDPOINT).unwrap_or(TC_ACT_UNSPEC)
}

#[classifier]
pub fn to_endpoint(ctx: TcContext) -> i32 {
    try_endpoint(&ctx, TO_ENDPOINT).unwrap_or(TC_ACT_UNSPEC)
}

/// What the programs know about the packet at hand.
struct Packet {
    flow: FlowTuple,
    endpoint_id: u16,
    point: u8,
    dir: u8,
    ifindex: u32,
    len: u32,
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
    let mut pkt =
        Packet { flow: FlowTuple::default(), endpoint_id: endpoint.endpoint_id, point, dir, ifindex, len: ctx.len() };
    let mut meta = Meta::default();
    packet::parse(ctx, &mut pkt.flow, &mut meta);
    match meta.kind {
        kind::IP => {}
        // Neighbour resolution must keep working.
        kind::ARP => return Ok(TC_ACT_UNSPEC),
        kind::TRUNCATED => {
            if point == FROM_ENDPOINT && !is_unspecified(&pkt.flow.saddr) && !own_address(endpoint, &pkt.flow.saddr) {
                return Ok(invalid_source(ctx, &pkt));
            }
            maps::count(Counter::TruncatedHeader);
            return Ok(drop_packet(ctx, &pkt, drop_reason::CT_TRUNCATED_OR_INVALID_HEADER, 0));
        }
        kind::INVALID => return Ok(drop_packet(ctx, &pkt, drop_reason::INVALID_PACKET, 0)),
        _ if point == FROM_ENDPOINT => {
            return Ok(drop_packet(ctx, &pkt, drop_reason::UNSUPPORTED_L3_PROTOCOL, 0));
        }
        _ => return Ok(TC_ACT_UNSPEC),
    }
    // Neighbour discovery and multicast listener messages keep the link working; they come from the
    // pod's link-local address (or none, during duplicate address detection), and never leave the link.
    if meta.link_control
        && (point == TO_ENDPOINT
            || is_link_local(&pkt.flow.saddr)
            || is_unspecified(&pkt.flow.saddr)
            || own_address(endpoint, &pkt.flow.saddr))
    {
        maps::count(Counter::LinkControl);
        return Ok(TC_ACT_UNSPEC);
    }
    // An endpoint speaks with its own address only: anything else would borrow another pod's identity.
    if point == FROM_ENDPOINT && !own_address(endpoint, &pkt.flow.saddr) {
        return Ok(invalid_source(ctx, &pkt));
    }
    let level = maps::config(Config::Aggregation);
    if meta.fragment == fragment::LATER {
        return Ok(later_fragment(ctx, &mut pkt, meta.fragment_id, level));
    }
    if meta.quoted_version != 0 && related(ctx, &meta, &pkt) {
        // An ICMP error about a tracked connection (unreachable, fragmentation needed / packet too big, time
        // exceeded): it belongs to that connection, so path-MTU discovery and error reporting keep working.
        maps::count(Counter::IcmpRelated);
        trace(ctx, &pkt, ct_state::RELATED, 0);
        return Ok(TC_ACT_UNSPEC);
    }
    let action = connection(ctx, &pkt, level);
    if meta.fragment == fragment::FIRST {
        let reason = if action == TC_ACT_SHOT as i32 { drop_reason::POLICY_DENIED } else { 0 };
        fragments::remember_first(&pkt.flow, meta.fragment_id, pkt.endpoint_id, dir, reason);
    }
    Ok(action)
}

/// Whether the ICMP error in the packet quotes a connection tracked at this endpoint.
#[inline(never)]
fn related(ctx: &TcContext, meta: &Meta, pkt: &Packet) -> bool {
    let mut quoted = FlowTuple::default();
    packet::quoted(ctx, meta, &mut quoted) && conntrack::related(&quoted, pkt.endpoint_id, pkt.dir)
}

/// The two halves of an address, for comparisons without a call to `memcmp` (which BPF has not).
#[inline(always)]
fn halves(addr: &Addr) -> (u64, u64) {
    // SAFETY: `addr` is 16 readable bytes; unaligned reads of two u64s cover exactly them.
    unsafe {
        let p = addr.as_ptr().cast::<u64>();
        (core::ptr::read_unaligned(p), core::ptr::read_unaligned(p.add(1)))
    }
}

#[inline(always)]
fn same_address(a: &Addr, b: &Addr) -> bool {
    halves(a) == halves(b)
}

#[inline(always)]
fn is_unspecified(addr: &Addr) -> bool {
    halves(addr) == (0, 0)
}

/// `fe80::/10`.
#[inline(always)]
fn is_link_local(addr: &Addr) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// Whether `addr` is one of the endpoint's own addresses (an endpoint without an address in a family has
/// none there: its unspecified address matches nothing).
#[inline(always)]
fn own_address(endpoint: &EndpointInfo, addr: &Addr) -> bool {
    !is_unspecified(addr) && (same_address(addr, &endpoint.ipv4) || same_address(addr, &endpoint.ipv6))
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
    if let Some(drop) = events::scratch::<DropRecord>() {
        drop.header = events::header(record_type::DROP, DropRecord::LEN);
        drop.flow = pkt.flow;
        drop.endpoint_id = pkt.endpoint_id;
        drop.direction = pkt.dir;
        drop.reason = reason;
        drop.remote_identity = remote_identity;
        drop.ifindex = pkt.ifindex;
        drop.pkt_len = pkt.len;
        drop.revision = revision as u32;
        drop._pad = [0; 4];
        events::emit(ctx, drop);
    }
    TC_ACT_SHOT as i32
}

/// The connection a packet belongs to, or the verdict on the new one it opens: the action to take. Its own
/// function: the BPF stack is 512 bytes for a whole call chain, and the parsers' frames must not add up
/// with this one's.
#[inline(never)]
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
        conntrack::create(&pkt.flow, endpoint_id, dir, pkt.len, 0, 0, revision);
        trace(ctx, pkt, ct_state::NEW, 0);
        return TC_ACT_UNSPEC;
    }

    let remote_addr = if dir == direction::EGRESS { &pkt.flow.daddr } else { &pkt.flow.saddr };
    let remote = policy::remote(generation, remote_addr);
    match policy::decide(generation, endpoint_id, dir, remote, pkt.flow.protocol, pkt.flow.dport) {
        Some(allowed) => {
            maps::count(Counter::PolicyAllowed);
            allowed.account(pkt.len);
            let decision = Decision {
                verdict: verdict::ALLOWED,
                match_type: allowed.match_type,
                remote_identity: remote.identity,
                rule_id: allowed.rule_id,
            };
            verdict_record(ctx, pkt, &decision);
            conntrack::create(&pkt.flow, endpoint_id, dir, pkt.len, allowed.rule_id, ct_flag::ENFORCED, revision);
            trace(ctx, pkt, ct_state::NEW, remote.identity);
            TC_ACT_UNSPEC
        }
        None if audit => {
            maps::count(Counter::PolicyAudit);
            verdict_record(ctx, pkt, &Decision::unmatched(verdict::AUDIT, remote.identity));
            let flags = ct_flag::ENFORCED | ct_flag::AUDIT;
            conntrack::create(&pkt.flow, endpoint_id, dir, pkt.len, 0, flags, revision);
            trace(ctx, pkt, ct_state::NEW, remote.identity);
            TC_ACT_UNSPEC
        }
        None => {
            maps::count(Counter::PolicyDenied);
            verdict_record(ctx, pkt, &Decision::unmatched(verdict::DENIED, remote.identity));
            drop_at_revision(ctx, pkt, drop_reason::POLICY_DENIED, remote.identity, revision)
        }
    }
}

#[inline(never)]
fn trace(ctx: &TcContext, pkt: &Packet, ct_state: u8, remote_identity: u32) {
    let Some(record) = events::scratch::<TraceRecord>() else { return };
    record.header = events::header(record_type::TRACE, TraceRecord::LEN);
    record.flow = pkt.flow;
    record.endpoint_id = pkt.endpoint_id;
    record.observation_point = pkt.point;
    record.ct_state = ct_state;
    record.ifindex = pkt.ifindex;
    record.pkt_len = pkt.len;
    record.remote_identity = remote_identity;
    events::emit(ctx, record);
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

#[inline(never)]
fn verdict_record(ctx: &TcContext, pkt: &Packet, decision: &Decision) {
    let Some(record) = events::scratch::<PolicyVerdictRecord>() else { return };
    record.header = events::header(record_type::POLICY_VERDICT, PolicyVerdictRecord::LEN);
    record.flow = pkt.flow;
    record.endpoint_id = pkt.endpoint_id;
    record.direction = pkt.dir;
    record.verdict = decision.verdict;
    record.match_type = decision.match_type;
    record._pad = [0; 3];
    record.remote_identity = decision.remote_identity;
    record.rule_id = decision.rule_id;
    record.ifindex = pkt.ifindex;
    record.pkt_len = pkt.len;
    events::emit(ctx, record);
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
