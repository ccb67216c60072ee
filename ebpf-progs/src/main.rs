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
    counters::Config,
    drop_reason,
    policy::{direction, enforcement, match_type, verdict},
    record::{
        ct_state,
        observation_point::{FROM_ENDPOINT, TO_ENDPOINT},
        record_type,
    },
};

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
    let Some(flow) = packet::parse_ipv4(ctx) else {
        // Not IPv4 (ARP, IPv6, ...): not policed, not traced.
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: `ctx.skb.skb` is the `__sk_buff` the kernel passed to this program, valid for the whole
    // run; `ifindex` is one of its readable fields (the verifier rewrites the access and checks it).
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(endpoint) = maps::endpoint(ifindex) else {
        maps::count(Counter::UnknownEndpoint);
        return Ok(TC_ACT_UNSPEC);
    };
    let pkt = Packet { flow, endpoint, point, dir, ifindex, len: ctx.len() };
    let level = maps::config(Config::Aggregation);
    // Read before the generation (see `revocation::recheck`).
    let revision = maps::config(Config::PolicyRevision);

    if let Some(tracked) = conntrack::track(&pkt.flow, endpoint.endpoint_id, dir, pkt.len, level) {
        // Entries keep the revision's low 32 bits (the agent never makes them `REVISION_REVOKED`).
        if tracked.revision != revision as u32
            && let revocation::Recheck::Revoked { remote_identity } = revocation::recheck(&tracked, revision)
        {
            maps::count(Counter::Revoked);
            maps::count(Counter::Drops);
            drop_record(ctx, &pkt, drop_reason::CONNECTION_REVOKED, remote_identity, revision);
            return Ok(TC_ACT_SHOT as i32);
        }
        if tracked.trace {
            trace(ctx, &pkt, tracked.state, 0);
        }
        return Ok(TC_ACT_UNSPEC);
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
        trace(ctx, &pkt, ct_state::NEW, 0);
        return Ok(TC_ACT_UNSPEC);
    }

    let remote_addr = if dir == direction::EGRESS { pkt.flow.daddr } else { pkt.flow.saddr };
    let remote = policy::remote(generation, remote_addr);
    match policy::decide(generation, endpoint.endpoint_id, dir, remote, pkt.flow.protocol, pkt.flow.dport) {
        Some(allowed) => {
            maps::count(Counter::PolicyAllowed);
            allowed.account(pkt.len);
            verdict_record(ctx, &pkt, verdict::ALLOWED, allowed.match_type, remote.identity, allowed.rule_id);
            conntrack::create(
                &pkt.flow,
                endpoint.endpoint_id,
                dir,
                pkt.len,
                allowed.rule_id,
                ct_flag::ENFORCED,
                revision,
            );
            trace(ctx, &pkt, ct_state::NEW, remote.identity);
            Ok(TC_ACT_UNSPEC)
        }
        None if audit => {
            maps::count(Counter::PolicyAudit);
            verdict_record(ctx, &pkt, verdict::AUDIT, match_type::NONE, remote.identity, 0);
            let flags = ct_flag::ENFORCED | ct_flag::AUDIT;
            conntrack::create(&pkt.flow, endpoint.endpoint_id, dir, pkt.len, 0, flags, revision);
            trace(ctx, &pkt, ct_state::NEW, remote.identity);
            Ok(TC_ACT_UNSPEC)
        }
        None => {
            maps::count(Counter::PolicyDenied);
            maps::count(Counter::Drops);
            verdict_record(ctx, &pkt, verdict::DENIED, match_type::NONE, remote.identity, 0);
            drop_record(ctx, &pkt, drop_reason::POLICY_DENIED, remote.identity, revision);
            Ok(TC_ACT_SHOT as i32)
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
fn drop_record(ctx: &TcContext, pkt: &Packet, reason: u8, remote_identity: u32, revision: u64) {
    let record = DropRecord {
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
