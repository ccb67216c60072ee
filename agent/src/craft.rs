//! Crafted Ethernet/IPv4 and Ethernet/IPv6 packets for running the kernel programs with
//! BPF_PROG_TEST_RUN: the way to exercise protocols this kernel cannot carry on a socket (SCTP), packets a
//! well-behaved stack never sends (tiny first fragments, fragments without their first, ICMP errors quoting
//! any connection, long IPv6 extension header chains, IPv4-mapped IPv6 addresses, other ethertypes), and to
//! time the datapath per packet. The programs do not verify checksums; IPv4 header and ICMP checksums are
//! right anyway, upper-layer checksums over IPv6 are left zero.

use std::net::{Ipv4Addr, Ipv6Addr};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// IPv6 next-header numbers of the extension headers [`ipv6_frame`] callers chain.
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DEST_OPTS: u8 = 60;
}

/// Transport header to put after the IPv4 header.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// An SCTP common header followed by an INIT chunk.
    SctpInit {
        sport: u16,
        dport: u16,
    },
    /// An echo request (type 8) or reply (type 0) with this identifier.
    IcmpEcho {
        reply: bool,
        id: u16,
    },
    /// An ICMP error (e.g. type 3 code 4, fragmentation needed) quoting the IPv4 header and first 8 bytes
    /// of the packet it is about.
    IcmpError {
        icmp_type: u8,
        code: u8,
        quoted: [u8; 28],
    },
    /// An ICMPv6 error (e.g. type 2, packet too big) quoting the IPv6 header and first 8 bytes of the
    /// packet it is about (over IPv6 only).
    Icmpv6Error {
        icmp_type: u8,
        code: u8,
        quoted: [u8; 48],
    },
    /// Raw L4 bytes after the IP header, with this protocol number (fragments, truncated headers).
    Raw {
        protocol: u8,
        payload: &'static [u8],
    },
}

/// Fragmentation fields of the IPv4 header.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fragment {
    pub id: u16,
    /// Offset of this fragment's data in the datagram, in 8-byte units.
    pub offset: u16,
    pub more: bool,
}

/// The Internet checksum (RFC 1071) of `bytes`: for IPv4 and ICMP headers.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying one IPv4 packet from `src` to `dst`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, transport: Transport) -> Vec<u8> {
    let (protocol, l4): (u8, Vec<u8>) = match transport {
        Transport::Tcp { sport, dport, flags } => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..8].copy_from_slice(&1u32.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = flags;
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (6, h)
        }
        Transport::Udp { sport, dport } => {
            let mut h = vec![0u8; 8 + 4];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&12u16.to_be_bytes());
            h[8..12].copy_from_slice(b"ping");
            (17, h)
        }
        Transport::SctpInit { sport, dport } => {
            let mut h = vec![0u8; 12 + 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            // INIT chunk: type 1, flags 0, length 20, initiate tag, a_rwnd, streams, initial TSN.
            h[12] = 1;
            h[14..16].copy_from_slice(&20u16.to_be_bytes());
            h[16..20].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            h[20..24].copy_from_slice(&65535u32.to_be_bytes());
            h[24..26].copy_from_slice(&1u16.to_be_bytes());
            h[26..28].copy_from_slice(&1u16.to_be_bytes());
            h[28..32].copy_from_slice(&1u32.to_be_bytes());
            (132, h)
        }
        Transport::IcmpEcho { reply, id } => {
            let mut h = vec![if reply { 0 } else { 8 }, 0, 0, 0, 0, 0, 0, 1];
            h[4..6].copy_from_slice(&id.to_be_bytes());
            let c = checksum(&h);
            h[2..4].copy_from_slice(&c.to_be_bytes());
            (1, h)
        }
        Transport::IcmpError { icmp_type, code, quoted } => {
            let mut h = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0xdc];
            h.extend_from_slice(&quoted);
            let c = checksum(&h);
            h[2..4].copy_from_slice(&c.to_be_bytes());
            (1, h)
        }
        Transport::Raw { protocol, payload } => (protocol, payload.to_vec()),
        Transport::Icmpv6Error { .. } => panic!("an ICMPv6 error goes over IPv6: use ipv6_packet"),
    };
    ipv4_frame(src, dst, protocol, &l4, None)
}

/// The L4 header and bytes of `transport` over IPv6 (ICMP becomes ICMPv6: echo request 128, reply 129; an
/// error keeps its type and code and quotes its 48 bytes), with its protocol number.
fn ipv6_transport(transport: Transport) -> (u8, Vec<u8>) {
    match transport {
        Transport::IcmpEcho { reply, id } => {
            let mut h = vec![if reply { 129 } else { 128 }, 0, 0, 0, 0, 0, 0, 1];
            h[4..6].copy_from_slice(&id.to_be_bytes());
            (58, h)
        }
        Transport::Icmpv6Error { icmp_type, code, quoted } => {
            let mut h = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0x00];
            h.extend_from_slice(&quoted);
            (58, h)
        }
        other => {
            // TCP, UDP, SCTP and raw bytes are the same over either version.
            let frame = ipv4_packet(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, other);
            (frame[14 + 9], frame[14 + 20..].to_vec())
        }
    }
}

/// An Ethernet frame carrying one IPv6 packet from `src` to `dst` (hop limit 64).
pub fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, transport: Transport) -> Vec<u8> {
    let (protocol, l4) = ipv6_transport(transport);
    ipv6_frame(src, dst, protocol, &l4, 64)
}

/// The first 48 bytes of `ipv6_packet(src, dst, transport)`'s IP packet: what an ICMPv6 error quotes here.
pub fn quote6(src: Ipv6Addr, dst: Ipv6Addr, transport: Transport) -> [u8; 48] {
    let frame = ipv6_packet(src, dst, transport);
    frame[14..62].try_into().expect("an IPv6 header and 8 bytes")
}

/// An Ethernet frame carrying an IPv6 packet whose payload (extension headers included) is `payload`,
/// the first header of which is `next_header`.
pub fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8], hop_limit: u8) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    ip[6] = next_header;
    ip[7] = hop_limit;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    ip.extend_from_slice(payload);
    ethernet_frame(ETH_P_IPV6, &ip)
}

/// An IPv6 fragment header: `next` is the fragmented packet's upper-layer protocol, `offset` in 8-byte
/// units.
pub fn fragment_header(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
    h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h[4..8].copy_from_slice(&id.to_be_bytes());
    h
}

/// An empty (8-byte) hop-by-hop, routing or destination options header before `next`.
pub fn options_header(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// The upper-layer header and bytes of `transport` over IPv6, as [`ipv6_frame`] payloads are built.
pub fn ipv6_l4(transport: Transport) -> (u8, Vec<u8>) {
    ipv6_transport(transport)
}

/// The first 28 bytes of `ipv4_packet(src, dst, transport)`'s IP packet: what an ICMP error quotes.
pub fn quote(src: Ipv4Addr, dst: Ipv4Addr, transport: Transport) -> [u8; 28] {
    let frame = ipv4_packet(src, dst, transport);
    frame[14..42].try_into().expect("an IPv4 header and 8 bytes")
}

/// An Ethernet frame carrying an IPv4 packet with `l4` after its header; `fragment` sets the
/// fragmentation fields (else the packet is whole and says don't fragment).
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8], fragment: Option<Fragment>) -> Vec<u8> {
    let total_len = 20 + l4.len();
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    match fragment {
        None => ip[6] = 0x40, // don't fragment
        Some(f) => {
            ip[4..6].copy_from_slice(&f.id.to_be_bytes());
            let field = (f.offset & 0x1fff) | if f.more { 0x2000 } else { 0 };
            ip[6..8].copy_from_slice(&field.to_be_bytes());
        }
    }
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut packet = ip;
    packet.extend_from_slice(l4);
    ethernet_frame(ETH_P_IP, &packet)
}

/// An Ethernet frame of any ethertype.
pub fn ethernet_frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            Transport::Tcp { sport: 1, dport: 80, flags: 0x02 },
        );
        assert_eq!(p.len(), 14 + 20 + 20);
        assert_eq!(checksum(&p[14..34]), 0, "a correct header sums to zero");
        assert_eq!(p[14 + 9], 6);
        let s = ipv4_packet(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, Transport::SctpInit { sport: 5, dport: 80 });
        assert_eq!(s[14 + 9], 132);
        assert_eq!(u16::from_be_bytes([s[36], s[37]]), 80);
    }
}
