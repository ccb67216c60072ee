//! Packet parsing: Ethernet -> IPv4 or IPv6 (through its extension headers) -> TCP/UDP/SCTP/ICMP/ICMPv6
//! into a [`FlowTuple`], with what the checks around it need: the fragment a packet is, whether its L4
//! header is all there, for an ICMP error the connection it quotes, and whether it is ICMPv6 link control
//! (neighbour discovery, multicast listener messages) that never left the link.
//!
//! Nothing that fails to parse is mistaken for "not IP" and let through: a packet whose IP header is
//! malformed, whose L4 header is cut short (a tiny first fragment), or whose IPv6 extension headers run
//! longer than the parser follows is reported as such and dropped by the caller. Headers are read with
//! direct packet access when they sit in the linear part of the skb (the common case, a few
//! nanoseconds); otherwise through `bpf_skb_load_bytes`.

use aya_ebpf::programs::TcContext;
use flowgate_common::{
    FlowTuple,
    ip::{self, protocol},
};

use crate::addr;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// Bytes of a TCP header the flow needs: the ports, and up to the flags byte. Of the other headers it needs
/// the first 8 (ports, or ICMP type, code and echo identifier).
const TCP_BYTES: usize = 14;
/// Headers are read at offsets below this (a bound the verifier can see).
const MAX_HEADER_OFFSET: usize = 512;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Multicast listener query, report and done (MLDv1), and the MLDv2 report: sent with hop limit 1.
const MLD_TYPES: [u8; 4] = [130, 131, 132, 143];
/// Router solicitation and advertisement, neighbour solicitation and advertisement, redirect: sent with
/// hop limit 255, which receivers require (RFC 4861), so a routed copy is never taken for one.
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;

/// IPv6 extension headers the parser follows to the upper-layer header.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// How many extension headers are followed; a packet with more is dropped rather than passed unread.
const MAX_EXTENSION_HEADERS: usize = 6;

/// Which fragment of a datagram a packet is.
pub mod fragment {
    /// Not fragmented.
    pub const NONE: u8 = 0;
    /// The first fragment (offset 0, more fragments): it carries the L4 header.
    pub const FIRST: u8 = 1;
    /// A later fragment: no L4 header, its ports are those of its datagram's first fragment.
    pub const LATER: u8 = 2;
}

/// What the frame carries (`Meta::kind`).
pub mod kind {
    /// An IPv4 or IPv6 packet whose headers were read: the flow and the rest of [`super::Meta`] hold.
    pub const IP: u8 = 0;
    /// An IP packet whose headers cannot be read whole: an IPv4 IHL below 20 or a total length shorter
    /// than its headers, an L4 header cut short (a first fragment too small for it), IPv6 extension
    /// headers beyond the packet or beyond what is followed. Never passed.
    pub const TRUNCATED: u8 = 1;
    /// An IPv6 packet with an IPv4-mapped source or destination (`::ffff:0:0/96`), which never appears on
    /// the wire (RFC 4291) and would alias an IPv4 peer in the ipcache. Never passed.
    pub const INVALID: u8 = 2;
    pub const ARP: u8 = 3;
    /// Another ethertype.
    pub const OTHER: u8 = 4;
}

/// What the checks need to know about a packet besides its flow. Kept small and filled in place: the
/// programs' stack is 512 bytes. 8-byte aligned, two words, so it is zeroed with two stores.
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
pub struct Meta {
    /// One of [`kind`].
    pub kind: u8,
    /// One of [`fragment`].
    pub fragment: u8,
    /// ICMPv6 neighbour discovery or multicast listener message with the hop limit that keeps it on the
    /// link (255, 1): address resolution and router discovery, which must always work.
    pub link_control: bool,
    /// For an ICMP or ICMPv6 error (destination unreachable, packet too big, time exceeded, parameter
    /// problem): the IP version of the packet it quotes (0: not an error) ...
    pub quoted_version: u8,
    /// ... and the offset of the quoted IP header in the frame (see [`quoted`]).
    pub quoted_at: u16,
    /// The identification that ties fragments to their datagram (IPv4's 16 bits, IPv6's 32).
    pub fragment_id: u32,
}

/// Reads `N` bytes at `offset`: directly when they are in the linear part, else with a load.
#[inline(always)]
fn read<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u8; N]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Keep the offset visibly bounded for the verifier.
    if offset < MAX_HEADER_OFFSET && start + offset + N <= end {
        // SAFETY: `start + offset + N <= data_end` was checked just above, so the N bytes are inside the
        // packet's linear data, which stays valid and unmodified for the duration of this program.
        return Some(unsafe { *((start + offset) as *const [u8; N]) });
    }
    if offset >= MAX_HEADER_OFFSET {
        return None;
    }
    ctx.load::<[u8; N]>(offset).ok()
}

/// The smallest L4 header of a protocol: what a packet (or first fragment) must carry whole.
#[inline(always)]
fn min_l4_len(proto: u8) -> usize {
    match proto {
        protocol::TCP => 20,
        protocol::UDP | protocol::ICMP | protocol::ICMPV6 => 8,
        protocol::SCTP => 12,
        _ => 0,
    }
}

/// Parses the frame into `flow` and `meta`.
#[inline(always)]
pub fn parse(ctx: &TcContext, flow: &mut FlowTuple, meta: &mut Meta) {
    let Some(eth_type) = read::<2>(ctx, 12) else {
        meta.kind = kind::OTHER;
        return;
    };
    meta.kind = match u16::from_be_bytes(eth_type) {
        ETH_P_IP => parse_ipv4(ctx, flow, meta),
        ETH_P_IPV6 => parse_ipv6(ctx, flow, meta),
        ETH_P_ARP => kind::ARP,
        _ => kind::OTHER,
    };
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, flow: &mut FlowTuple, meta: &mut Meta) -> u8 {
    let Some(ip) = read::<IPV4_HLEN>(ctx, ETH_HLEN) else { return kind::TRUNCATED };
    addr::set_v4(flow, [ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
    flow.protocol = ip[9];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN || total_len < ihl {
        return kind::TRUNCATED;
    }
    meta.fragment_id = u32::from(u16::from_be_bytes([ip[4], ip[5]]));
    let frag_field = u16::from_be_bytes([ip[6], ip[7]]);
    let (offset, more) = (frag_field & 0x1fff, frag_field & 0x2000 != 0);
    if offset != 0 {
        meta.fragment = fragment::LATER;
        return kind::IP;
    }
    meta.fragment = if more { fragment::FIRST } else { fragment::NONE };
    if parse_l4(ctx, flow, meta, ETH_HLEN + ihl, total_len - ihl) { kind::IP } else { kind::TRUNCATED }
}

#[inline(never)]
fn parse_ipv6(ctx: &TcContext, flow: &mut FlowTuple, meta: &mut Meta) -> u8 {
    let Some(head) = read::<8>(ctx, ETH_HLEN) else { return kind::TRUNCATED };
    let Some(saddr) = read::<16>(ctx, ETH_HLEN + 8) else { return kind::TRUNCATED };
    let Some(daddr) = read::<16>(ctx, ETH_HLEN + 24) else { return kind::TRUNCATED };
    (flow.saddr, flow.daddr) = (saddr, daddr);
    if head[0] >> 4 != 6 {
        return kind::TRUNCATED;
    }
    if addr::is_v4_mapped(addr::source(flow)) || addr::is_v4_mapped(addr::destination(flow)) {
        return kind::INVALID;
    }
    let payload_len = usize::from(u16::from_be_bytes([head[4], head[5]]));
    let hop_limit = head[7];
    let mut next = head[6];
    let mut at = ETH_HLEN + IPV6_HLEN;
    let mut followed = 0;
    while followed < MAX_EXTENSION_HEADERS {
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let Some(h) = read::<2>(ctx, at) else { return kind::TRUNCATED };
                next = h[0];
                (usize::from(h[1]) + 1) * 8
            }
            IPV6_AUTH => {
                let Some(h) = read::<2>(ctx, at) else { return kind::TRUNCATED };
                next = h[0];
                (usize::from(h[1]) + 2) * 4
            }
            IPV6_FRAGMENT => {
                let Some(h) = read::<8>(ctx, at) else { return kind::TRUNCATED };
                next = h[0];
                let field = u16::from_be_bytes([h[2], h[3]]);
                meta.fragment_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if field >> 3 != 0 {
                    flow.protocol = next;
                    meta.fragment = fragment::LATER;
                    return kind::IP;
                }
                // Offset 0 without "more fragments" is an atomic fragment (RFC 6946): the whole datagram.
                if field & 1 != 0 {
                    meta.fragment = fragment::FIRST;
                }
                8
            }
            _ => break,
        };
        at += len;
        followed += 1;
    }
    flow.protocol = next;
    let ext_len = at - (ETH_HLEN + IPV6_HLEN);
    if is_extension_header(next) || payload_len < ext_len || !parse_l4(ctx, flow, meta, at, payload_len - ext_len) {
        return kind::TRUNCATED;
    }
    meta.link_control = flow.protocol == protocol::ICMPV6
        && meta.fragment == fragment::NONE
        && ((flow.icmp_type >= ND_FIRST && flow.icmp_type <= ND_LAST && hop_limit == 255)
            || (is_mld(flow.icmp_type) && hop_limit == 1));
    kind::IP
}

#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTS)
}

#[inline(always)]
fn is_mld(icmp_type: u8) -> bool {
    icmp_type == MLD_TYPES[0] || icmp_type == MLD_TYPES[1] || icmp_type == MLD_TYPES[2] || icmp_type == MLD_TYPES[3]
}

/// Reads the L4 header at `l4`, of which the IP header says `l4_len` bytes follow, into `flow` (and, for
/// an ICMP error, where its quote starts into `meta`). False: the header is cut short.
#[inline(always)]
fn parse_l4(ctx: &TcContext, flow: &mut FlowTuple, meta: &mut Meta, l4: usize, l4_len: usize) -> bool {
    // The L4 header must be whole, as the IP header says and as the packet really is.
    let need = min_l4_len(flow.protocol);
    if l4_len < need || l4 + need > ctx.len() as usize {
        return false;
    }
    if flow.protocol == protocol::TCP {
        let Some(h) = read::<TCP_BYTES>(ctx, l4) else { return false };
        flow.sport = u16::from_be_bytes([h[0], h[1]]);
        flow.dport = u16::from_be_bytes([h[2], h[3]]);
        flow.tcp_flags = h[13];
        return true;
    }
    if need == 0 {
        // A protocol whose header the flow does not use: nothing to read.
        return true;
    }
    // Only the 8 bytes every other header has: a short datagram ends right after them, and asking for
    // more would send each such packet through `bpf_skb_load_bytes` first, to fail.
    let Some(h) = read::<8>(ctx, l4) else { return false };
    match flow.protocol {
        protocol::UDP | protocol::SCTP => {
            flow.sport = u16::from_be_bytes([h[0], h[1]]);
            flow.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        protocol::ICMP => {
            (flow.icmp_type, flow.icmp_code) = (h[0], h[1]);
            let id = u16::from_be_bytes([h[4], h[5]]);
            match h[0] {
                ICMP_ECHO_REQUEST => flow.sport = id,
                ICMP_ECHO_REPLY => flow.dport = id,
                ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    (meta.quoted_version, meta.quoted_at) = (ip::version::V4, (l4 + 8) as u16);
                }
                _ => {}
            }
        }
        protocol::ICMPV6 => {
            (flow.icmp_type, flow.icmp_code) = (h[0], h[1]);
            let id = u16::from_be_bytes([h[4], h[5]]);
            match h[0] {
                ICMPV6_ECHO_REQUEST => flow.sport = id,
                ICMPV6_ECHO_REPLY => flow.dport = id,
                ICMPV6_DEST_UNREACHABLE | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED | ICMPV6_PARAMETER_PROBLEM => {
                    (meta.quoted_version, meta.quoted_at) = (ip::version::V6, (l4 + 8) as u16);
                }
                _ => {}
            }
        }
        _ => {}
    }
    true
}

/// The tuple of the packet an ICMP error quotes (`meta.quoted_*`), in the terms connection tracking keys
/// that packet by, into `flow`. False when there is no quote or it is cut short.
#[inline(always)]
pub fn quoted(ctx: &TcContext, meta: &Meta, flow: &mut FlowTuple) -> bool {
    let at = usize::from(meta.quoted_at);
    match meta.quoted_version {
        ip::version::V4 => quoted_ipv4(ctx, at, flow).is_some(),
        ip::version::V6 => quoted_ipv6(ctx, at, flow).is_some(),
        _ => false,
    }
}

/// The tuple of the IPv4 packet an ICMP error quotes (its header and the first 8 bytes after it), in the
/// terms connection tracking keys that packet by. `None` when the quote is cut short.
#[inline(always)]
fn quoted_ipv4(ctx: &TcContext, at: usize, flow: &mut FlowTuple) -> Option<()> {
    let ip: [u8; IPV4_HLEN] = ctx.load(at).ok()?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN {
        return None;
    }
    addr::set_v4(flow, [ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
    flow.protocol = ip[9];
    let l4: [u8; 8] = ctx.load(at + (ihl & 0x3c)).ok()?;
    quoted_l4(flow, &l4, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
}

/// The tuple of the IPv6 packet an ICMPv6 error quotes (its fixed header and the 8 bytes after it; a
/// quote with extension headers is not followed and relates to nothing).
#[inline(always)]
fn quoted_ipv6(ctx: &TcContext, at: usize, flow: &mut FlowTuple) -> Option<()> {
    let head: [u8; 8] = ctx.load(at).ok()?;
    if head[0] >> 4 != 6 {
        return None;
    }
    flow.saddr = ctx.load(at + 8).ok()?;
    flow.daddr = ctx.load(at + 24).ok()?;
    flow.protocol = head[6];
    let l4: [u8; 8] = ctx.load(at + IPV6_HLEN).ok()?;
    quoted_l4(flow, &l4, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
}

/// The ports (or echo identifier) of a quoted packet's first 8 L4 bytes; `None` for quoted ICMP other
/// than echo (errors about errors relate to nothing).
#[inline(always)]
fn quoted_l4(flow: &mut FlowTuple, l4: &[u8; 8], echo_request: u8, echo_reply: u8) -> Option<()> {
    match flow.protocol {
        protocol::TCP | protocol::UDP | protocol::SCTP => {
            flow.sport = u16::from_be_bytes([l4[0], l4[1]]);
            flow.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        protocol::ICMP | protocol::ICMPV6 => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            if l4[0] == echo_request {
                flow.sport = id;
            } else if l4[0] == echo_reply {
                flow.dport = id;
            } else {
                return None;
            }
        }
        _ => {}
    }
    Some(())
}
