//! Packet parsing: Ethernet -> IPv4 -> TCP/UDP/SCTP/ICMP into a [`FlowTuple`], with what the
//! checks around it need: the fragment a packet is, whether its L4 header is all there, and, for an
//! ICMP error, the connection it quotes.
//!
//! Nothing that fails to parse is mistaken for "not IPv4" and let through: an IPv4 packet whose header
//! is malformed or whose L4 header is cut short (a tiny first fragment) is reported as such and dropped
//! by the caller. Headers are read with direct packet access when they sit in the linear part of the
//! skb (the common case, a few nanoseconds); otherwise through `bpf_skb_load_bytes`.

use aya_ebpf::programs::TcContext;
use flowgate_common::{FlowTuple, ip::protocol};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_HLEN: usize = 20;
/// Bytes of L4 header the flow needs: ports (4) and, for TCP, up to the flags byte (14).
const L4_BYTES: usize = 14;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Which fragment of a datagram a packet is.
pub mod fragment {
    /// Not fragmented.
    pub const NONE: u8 = 0;
    /// The first fragment (offset 0, more fragments): it carries the L4 header.
    pub const FIRST: u8 = 1;
    /// A later fragment: no L4 header, its ports are those of its datagram's first fragment.
    pub const LATER: u8 = 2;
}

/// An IPv4 packet as the checks and the policy see it.
pub struct Ipv4Packet {
    pub flow: FlowTuple,
    /// One of [`fragment`].
    pub fragment: u8,
    /// The IP identification, which ties fragments to their datagram.
    pub ip_id: u16,
    /// For an ICMP error (destination unreachable, time exceeded, parameter problem): the tuple of the
    /// packet it quotes, in conntrack terms.
    pub quoted: Option<FlowTuple>,
}

/// What the frame carries.
pub enum L3 {
    Ipv4(Ipv4Packet),
    /// An IPv4 packet whose headers cannot be read whole: an IHL below 20, a total length shorter than
    /// its headers, or an L4 header cut short (a first fragment too small for it). Never passed.
    Ipv4Truncated(FlowTuple),
    Arp,
    Ipv6,
    /// Another ethertype.
    Other,
}

/// Reads `N` bytes at `offset`: directly when they are in the linear part, else with a load.
#[inline(always)]
fn read<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u8; N]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Keep the offset visibly bounded for the verifier (headers end well before 256 bytes).
    if offset < 256 && start + offset + N <= end {
        // SAFETY: `start + offset + N <= data_end` was checked just above, so the N bytes are inside the
        // packet's linear data, which stays valid and unmodified for the duration of this program.
        return Some(unsafe { *((start + offset) as *const [u8; N]) });
    }
    ctx.load::<[u8; N]>(offset).ok()
}

/// The smallest L4 header of a protocol: what a packet (or first fragment) must carry whole.
#[inline(always)]
fn min_l4_len(proto: u8) -> usize {
    match proto {
        protocol::TCP => 20,
        protocol::UDP | protocol::ICMP => 8,
        protocol::SCTP => 12,
        _ => 0,
    }
}

/// Parses the frame.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> L3 {
    let Some(eth_type) = read::<2>(ctx, 12) else { return L3::Other };
    match u16::from_be_bytes(eth_type) {
        ETH_P_IP => parse_ipv4(ctx),
        ETH_P_ARP => L3::Arp,
        ETH_P_IPV6 => L3::Ipv6,
        _ => L3::Other,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext) -> L3 {
    let Some(ip) = read::<IPV4_HLEN>(ctx, ETH_HLEN) else { return L3::Ipv4Truncated(FlowTuple::default()) };
    let mut flow = FlowTuple {
        saddr: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        protocol: ip[9],
        ..FlowTuple::default()
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN || total_len < ihl {
        return L3::Ipv4Truncated(flow);
    }
    let ip_id = u16::from_be_bytes([ip[4], ip[5]]);
    let frag_field = u16::from_be_bytes([ip[6], ip[7]]);
    let (offset, more) = (frag_field & 0x1fff, frag_field & 0x2000 != 0);
    if offset != 0 {
        return L3::Ipv4(Ipv4Packet { flow, fragment: fragment::LATER, ip_id, quoted: None });
    }
    let fragment = if more { fragment::FIRST } else { fragment::NONE };
    // The L4 header must be whole, as the IP header says and as the packet really is.
    let l4 = ETH_HLEN + ihl;
    if total_len - ihl < min_l4_len(flow.protocol) || l4 + min_l4_len(flow.protocol) > ctx.len() as usize {
        return L3::Ipv4Truncated(flow);
    }
    let mut quoted = None;
    match flow.protocol {
        protocol::TCP => {
            let Some(h) = read::<L4_BYTES>(ctx, l4) else { return L3::Ipv4Truncated(flow) };
            flow.sport = u16::from_be_bytes([h[0], h[1]]);
            flow.dport = u16::from_be_bytes([h[2], h[3]]);
            flow.tcp_flags = h[13];
        }
        protocol::UDP | protocol::SCTP => {
            let Some(h) = read::<4>(ctx, l4) else { return L3::Ipv4Truncated(flow) };
            flow.sport = u16::from_be_bytes([h[0], h[1]]);
            flow.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        protocol::ICMP => {
            let Some(h) = read::<8>(ctx, l4) else { return L3::Ipv4Truncated(flow) };
            (flow.icmp_type, flow.icmp_code) = (h[0], h[1]);
            let id = u16::from_be_bytes([h[4], h[5]]);
            match h[0] {
                ICMP_ECHO_REQUEST => flow.sport = id,
                ICMP_ECHO_REPLY => flow.dport = id,
                ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    quoted = parse_quoted(ctx, l4 + 8);
                }
                _ => {}
            }
        }
        _ => {}
    }
    L3::Ipv4(Ipv4Packet { flow, fragment, ip_id, quoted })
}

/// The tuple of the packet an ICMP error quotes (its IPv4 header and the first 8 bytes after it), in
/// the terms connection tracking keys that packet by. `None` when the quote is cut short.
#[inline(never)]
fn parse_quoted(ctx: &TcContext, at: usize) -> Option<FlowTuple> {
    let ip: [u8; IPV4_HLEN] = ctx.load(at).ok()?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN {
        return None;
    }
    let mut flow = FlowTuple {
        saddr: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        protocol: ip[9],
        ..FlowTuple::default()
    };
    let l4: [u8; 8] = ctx.load(at + (ihl & 0x3c)).ok()?;
    match flow.protocol {
        protocol::TCP | protocol::UDP | protocol::SCTP => {
            flow.sport = u16::from_be_bytes([l4[0], l4[1]]);
            flow.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        protocol::ICMP => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            match l4[0] {
                ICMP_ECHO_REQUEST => flow.sport = id,
                ICMP_ECHO_REPLY => flow.dport = id,
                _ => return None,
            }
        }
        _ => {}
    }
    Some(flow)
}
