//! Packet parsing: Ethernet -> IPv4 -> TCP/UDP/ICMP/SCTP into a [`FlowTuple`]. Loads go through
//! `bpf_skb_load_bytes`, which the verifier accepts without pointer arithmetic checks.

use aya_ebpf::programs::TcContext;
use flowgate_common::FlowTuple;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// The IPv4 flow of this packet, or `None` when it is not IPv4.
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Option<FlowTuple> {
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
    // Non-first fragments carry no L4 header.
    if frag & 0x1fff != 0 {
        return Some(flow);
    }
    let l4 = ETH_HLEN + ihl;
    match protocol {
        IPPROTO_TCP => {
            flow.sport = u16::from_be(ctx.load(l4).ok()?);
            flow.dport = u16::from_be(ctx.load(l4 + 2).ok()?);
            flow.tcp_flags = ctx.load(l4 + 13).ok()?;
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            flow.sport = u16::from_be(ctx.load(l4).ok()?);
            flow.dport = u16::from_be(ctx.load(l4 + 2).ok()?);
        }
        IPPROTO_ICMP => {
            let icmp_type: u8 = ctx.load(l4).ok()?;
            let icmp_code: u8 = ctx.load(l4 + 1).ok()?;
            flow.sport = u16::from(icmp_type);
            flow.dport = u16::from(icmp_code);
        }
        _ => {}
    }
    Some(flow)
}
