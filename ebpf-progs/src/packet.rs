//! Packet parsing: Ethernet -> IPv4 -> TCP/UDP/ICMP/SCTP into a [`FlowTuple`]. Headers are read with
//! direct packet access when they sit in the linear part of the skb (the common case, a few
//! nanoseconds); otherwise through `bpf_skb_load_bytes`, so a packet with non-linear headers is never
//! mistaken for a non-IPv4 packet and let through unpoliced.

use aya_ebpf::programs::TcContext;
use flowgate_common::{
    FlowTuple,
    ip::protocol::{ICMP, SCTP, TCP, UDP},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Bytes of L4 header we read: ports (4) and, for TCP, up to the flags byte (14).
const L4_BYTES: usize = 14;

/// The IPv4 flow of this packet, or `None` when it is not IPv4.
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Option<FlowTuple> {
    match parse_direct(ctx) {
        Parsed::Flow(flow) => Some(flow),
        Parsed::NotIpv4 => None,
        Parsed::NotLinear => parse_loads(ctx),
    }
}

enum Parsed {
    Flow(FlowTuple),
    NotIpv4,
    NotLinear,
}

#[inline(always)]
fn l4_fields(flow: &mut FlowTuple, l4: &[u8]) {
    match flow.protocol {
        TCP => {
            flow.sport = u16::from_be_bytes([l4[0], l4[1]]);
            flow.dport = u16::from_be_bytes([l4[2], l4[3]]);
            flow.tcp_flags = l4[13];
        }
        UDP | SCTP => {
            flow.sport = u16::from_be_bytes([l4[0], l4[1]]);
            flow.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        ICMP => {
            flow.sport = u16::from(l4[0]);
            flow.dport = u16::from(l4[1]);
        }
        _ => {}
    }
}

/// Direct packet access with the bounds checks the verifier wants.
#[inline(always)]
fn parse_direct(ctx: &TcContext) -> Parsed {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_HLEN + 20 > end {
        return Parsed::NotLinear;
    }
    // SAFETY: `start + ETH_HLEN + 20 <= end` was checked above, so the bytes lie in the linear packet
    // data; the slice is read only and dropped before any helper that could move the data is called.
    let eth = unsafe { core::slice::from_raw_parts(start as *const u8, ETH_HLEN + 20) };
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP || eth[ETH_HLEN] >> 4 != 4 {
        return Parsed::NotIpv4;
    }
    let ip = &eth[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return Parsed::NotIpv4;
    }
    let mut flow = FlowTuple {
        saddr: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        protocol: ip[9],
        ..FlowTuple::default()
    };
    // Non-first fragments carry no L4 header.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return Parsed::Flow(flow);
    }
    let l4_start = start + ETH_HLEN + ihl;
    if l4_start + L4_BYTES > end {
        // Short packets (e.g. ICMP or UDP without 14 bytes of L4) take the slow path.
        return Parsed::NotLinear;
    }
    // SAFETY: `l4_start + L4_BYTES <= end` was checked above; read only, and no helper runs in between.
    let l4 = unsafe { core::slice::from_raw_parts(l4_start as *const u8, L4_BYTES) };
    l4_fields(&mut flow, l4);
    Parsed::Flow(flow)
}

/// The slow path: every field through `bpf_skb_load_bytes`.
#[inline(never)]
fn parse_loads(ctx: &TcContext) -> Option<FlowTuple> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    if ethertype != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    if version_ihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let frag: u16 = u16::from_be(ctx.load(ETH_HLEN + 6).ok()?);
    let protocol: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    let mut flow = FlowTuple {
        saddr: ctx.load(ETH_HLEN + 12).ok()?,
        daddr: ctx.load(ETH_HLEN + 16).ok()?,
        protocol,
        ..FlowTuple::default()
    };
    if frag & 0x1fff != 0 {
        return Some(flow);
    }
    let l4 = ETH_HLEN + ihl;
    let mut bytes = [0u8; L4_BYTES];
    // TCP needs all 14 bytes; the others need the first 4 (ports) or 2 (ICMP type and code).
    // Fixed-size loads: the verifier rejects a read whose length may be zero.
    match protocol {
        TCP => bytes = ctx.load::<[u8; L4_BYTES]>(l4).ok()?,
        UDP | SCTP => bytes[..4].copy_from_slice(&ctx.load::<[u8; 4]>(l4).ok()?),
        ICMP => bytes[..2].copy_from_slice(&ctx.load::<[u8; 2]>(l4).ok()?),
        _ => {}
    }
    l4_fields(&mut flow, &bytes);
    Some(flow)
}
