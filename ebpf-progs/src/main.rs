//! flowgate's TC programs. `from_endpoint` runs on the ingress hook of an endpoint's node-side veth
//! (packets leaving the pod), `to_endpoint` on its egress hook (packets entering the pod). Both parse the
//! packet, look up the endpoint, emit a record into the events buffer and let the packet continue with
//! `TC_ACT_UNSPEC`, so later TCX programs on the same device still run.
#![no_std]
#![no_main]

mod events;
mod maps;
mod packet;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use flowgate_common::{
    Counter,
    record::observation_point::{FROM_ENDPOINT, TO_ENDPOINT},
};

#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    try_observe(&ctx, FROM_ENDPOINT, Counter::PacketsFromEndpoint).unwrap_or(TC_ACT_UNSPEC)
}

#[classifier]
pub fn to_endpoint(ctx: TcContext) -> i32 {
    try_observe(&ctx, TO_ENDPOINT, Counter::PacketsToEndpoint).unwrap_or(TC_ACT_UNSPEC)
}

/// Shared body of both programs: count, parse, trace, pass.
#[inline(always)]
fn try_observe(ctx: &TcContext, point: u8, packets: Counter) -> Result<i32, i32> {
    maps::count(packets);
    let Some(flow) = packet::parse_ipv4(ctx) else {
        // Not IPv4 (ARP, IPv6, ...): nothing to trace yet.
        return Ok(TC_ACT_UNSPEC);
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let endpoint_id = match maps::endpoint(ifindex) {
        Some(ep) => ep.endpoint_id,
        None => {
            maps::count(Counter::UnknownEndpoint);
            0
        }
    };
    events::trace(&flow, endpoint_id, point, ifindex, ctx.len());
    Ok(TC_ACT_UNSPEC)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
