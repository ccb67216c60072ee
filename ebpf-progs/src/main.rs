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
    policy::{direction, enforcement, match_type, verdict},
    record::{
        ct_state,
        observation_point::{FROM_ENDPOINT, TO_ENDPOINT},
        record_type,
    },
};
use packet::{L3, fragment};

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
    endpoint: EndpointInfo,
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
    let at = |flow| Packet { flow, endpoint, point, dir, ifindex, len: ctx.len() };
    let parsed = match packet::parse(ctx) {
        L3::Ipv4(parsed) => parsed,
        // Neighbour resolution must keep working. IPv6 is not policed yet (see docs/threat-model.md).
        L3::Arp | L3::Ipv6 => return Ok(TC_ACT_UNSPEC),
        L3::Other if point == FROM_ENDPOINT => {
            return Ok(drop_packet(ctx, &at(FlowTuple::default()), drop_reason::UNSUPPORTED_L3_PROTOCOL, 0));
        }
        L3::Other => return Ok(TC_ACT_UNSPEC),
        L3::Ipv4Truncated(flow) => {
            let pkt = at(flow);
            if point == FROM_ENDPOINT && flow.saddr != 0 && flow.saddr != endpoint.ipv4 {
                return Ok(invalid_source(ctx, &pkt));
            }
            maps::count(Counter::TruncatedHeader);
            return Ok(drop_packet(ctx, &pkt, drop_reason::CT_TRUNCATED_OR_INVALID_HEADER, 0));
        }
    };
    let mut pkt = at(parsed.flow);
    // An endpoint speaks with its own address only: anything else would borrow another pod's identity.
    if point == FROM_ENDPOINT && pkt.flow.saddr != endpoint.ipv4 {
        return Ok(invalid_source(ctx, &pkt));
    }
    let level = maps::config(Config::Aggregation);
    if parsed.fragment == fragment::LATER {
        return Ok(later_fragment(ctx, &mut pkt, parsed.ip_id, level));
    }
    if let Some(quoted) = parsed.quoted
        && conntrack::related(&quoted, endpoint.endpoint_id, dir)
    {
        // An ICMP error about a tracked connection (unreachable, fragmentation needed, time exceeded):
        // it belongs to that connection, so path-MTU discovery and error reporting keep working.
        maps::count(Counter::IcmpRelated);
        trace(ctx, &pkt, ct_state::RELATED, 0);
        return Ok(TC_ACT_UNSPEC);
    }
    let action = connection(ctx, &pkt, level);
    if parsed.fragment == fragment::FIRST {
        let reason = if action == TC_ACT_SHOT as i32 { drop_reason::POLICY_DENIED } else { 0 };
        fragments::remember_first(&pkt.flow, parsed.ip_id, endpoint.endpoint_id, dir, reason);
    }
    Ok(action)
}

/// A packet leaving an endpoint with a source address that is not the endpoint's: dropped, counted
/// for the endpoint.
#[inline(never)]
fn invalid_source(ctx: &TcContext, pkt: &Packet) -> i32 {
    maps::count(Counter::InvalidSource);
    maps::count_invalid_source(pkt.endpoint.endpoint_id);
    drop_packet(ctx, pkt, drop_reason::INVALID_SOURCE_IP, 0)
}

/// A later fragment takes its datagram's ports and the fate of its first fragment; without a first
/// fragment it cannot be attributed to a connection and is dropped.
#[inline(never)]
fn later_fragment(ctx: &TcContext, pkt: &mut Packet, ip_id: u16, level: u64) -> i32 {
    let Some(first) = fragments::first_of(&pkt.flow, ip_id, pkt.endpoint.endpoint_id, pkt.dir) else {
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
    let drop = DropRecord {
        header: events::header(record_type::DROP, DropRecord::LEN),
        flow: pkt.flow,
        endpoint_id: pkt.endpoint.endpoint_id,
        direction: pkt.dir,
        reason,
        remote_identity,
        ifindex: pkt.ifindex,
        pkt_len: pkt.len,
        revision: revision as u32,
        _pad: [0; 4],
    };
    events::emit(ctx, &drop);
    TC_ACT_SHOT as i32
}

/// The connection a packet belongs to, or the verdict on the new one it opens: the action to take.
#[inline(always)]
fn connection(ctx: &TcContext, pkt: &Packet, level: u64) -> i32 {
    let (endpoint, dir) = (pkt.endpoint, pkt.dir);
    // Read before the generation (see `revocation::recheck`).
    let revision = maps::config(Config::PolicyRevision);
    if let Some(tracked) = conntrack::track(&pkt.flow, endpoint.endpoint_id, dir, pkt.len, level) {
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
    let flags = maps::enforcement(generation, endpoint.endpoint_id);
    let (enforced, audit) = if dir == direction::INGRESS {
        (flags & enforcement::INGRESS != 0, flags & enforcement::INGRESS_AUDIT != 0)
    } else {
        (flags & enforcement::EGRESS != 0, flags & enforcement::EGRESS_AUDIT != 0)
    };
    if !enforced {
        conntrack::create(&pkt.flow, endpoint.endpoint_id, dir, pkt.len, 0, 0, revision);
        trace(ctx, pkt, ct_state::NEW, 0);
        return TC_ACT_UNSPEC;
    }

    let remote_addr = if dir == direction::EGRESS { pkt.flow.daddr } else { pkt.flow.saddr };
    let remote = policy::remote(generation, remote_addr);
    match policy::decide(generation, endpoint.endpoint_id, dir, remote, pkt.flow.protocol, pkt.flow.dport) {
        Some(allowed) => {
            maps::count(Counter::PolicyAllowed);
            allowed.account(pkt.len);
            verdict_record(ctx, pkt, verdict::ALLOWED, allowed.match_type, remote.identity, allowed.rule_id);
            conntrack::create(
                &pkt.flow,
                endpoint.endpoint_id,
                dir,
                pkt.len,
                allowed.rule_id,
                ct_flag::ENFORCED,
                revision,
            );
            trace(ctx, pkt, ct_state::NEW, remote.identity);
            TC_ACT_UNSPEC
        }
        None if audit => {
            maps::count(Counter::PolicyAudit);
            verdict_record(ctx, pkt, verdict::AUDIT, match_type::NONE, remote.identity, 0);
            let flags = ct_flag::ENFORCED | ct_flag::AUDIT;
            conntrack::create(&pkt.flow, endpoint.endpoint_id, dir, pkt.len, 0, flags, revision);
            trace(ctx, pkt, ct_state::NEW, remote.identity);
            TC_ACT_UNSPEC
        }
        None => {
            maps::count(Counter::PolicyDenied);
            verdict_record(ctx, pkt, verdict::DENIED, match_type::NONE, remote.identity, 0);
            drop_at_revision(ctx, pkt, drop_reason::POLICY_DENIED, remote.identity, revision)
        }
    }
}

#[inline(always)]
fn trace(ctx: &TcContext, pkt: &Packet, ct_state: u8, remote_identity: u32) {
    let record = TraceRecord {
        header: events::header(record_type::TRACE, TraceRecord::LEN),
        flow: pkt.flow,
        endpoint_id: pkt.endpoint.endpoint_id,
        observation_point: pkt.point,
        ct_state,
        ifindex: pkt.ifindex,
        pkt_len: pkt.len,
        remote_identity,
    };
    events::emit(ctx, &record);
}

#[inline(always)]
fn verdict_record(ctx: &TcContext, pkt: &Packet, verdict: u8, match_type: u8, remote_identity: u32, rule_id: u32) {
    let record = PolicyVerdictRecord {
        header: events::header(record_type::POLICY_VERDICT, PolicyVerdictRecord::LEN),
        flow: pkt.flow,
        endpoint_id: pkt.endpoint.endpoint_id,
        direction: pkt.dir,
        verdict,
        match_type,
        _pad: [0; 3],
        remote_identity,
        rule_id,
        ifindex: pkt.ifindex,
        pkt_len: pkt.len,
    };
    events::emit(ctx, &record);
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
