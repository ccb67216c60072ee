//! Addresses as the programs handle them: two 64-bit words. `ip::Addr` is 16 bytes with alignment 1, and a
//! BPF program moves and compares memory in units of what it knows the alignment to be; byte by byte, the
//! addresses of one packet cost the established fast path about 80 ns. The structs that hold addresses are
//! 8-byte aligned with their addresses at multiples of 8 (asserted in `flowgate_common`), so these accessors
//! take the struct, never a bare address, and read or write the address as words.

use flowgate_common::{EndpointInfo, FlowTuple, ip};

/// An address as two words in memory order.
pub type Words = [u64; 2];

/// The words of the `FlowTuple` address at `field` (its `saddr` or `daddr`).
macro_rules! words_of {
    ($place:expr) => {
        // SAFETY: the place is an address field of an 8-byte aligned struct at an offset that is a multiple
        // of 8 (const-asserted in `flowgate_common`), so it is a valid, aligned `[u64; 2]`; any bytes are a
        // valid `u64`.
        unsafe { *(&raw const $place).cast::<Words>() }
    };
}

#[inline(always)]
pub fn source(flow: &FlowTuple) -> Words {
    words_of!(flow.saddr)
}

#[inline(always)]
pub fn destination(flow: &FlowTuple) -> Words {
    words_of!(flow.daddr)
}

#[inline(always)]
pub fn endpoint_v4(endpoint: &EndpointInfo) -> Words {
    words_of!(endpoint.ipv4)
}

#[inline(always)]
pub fn endpoint_v6(endpoint: &EndpointInfo) -> Words {
    words_of!(endpoint.ipv6)
}

/// Sets a flow's source and destination to these IPv4 addresses (IPv4-mapped).
#[inline(always)]
pub fn set_v4(flow: &mut FlowTuple, source: [u8; 4], destination: [u8; 4]) {
    // SAFETY: as in `words_of`: both fields are aligned `[u64; 2]` places of an 8-byte aligned struct.
    unsafe {
        (&raw mut flow.saddr).cast::<Words>().write(ip::v4_mapped_words(source));
        (&raw mut flow.daddr).cast::<Words>().write(ip::v4_mapped_words(destination));
    }
}

/// `::`, no address.
#[inline(always)]
pub fn is_unspecified(words: Words) -> bool {
    words[0] == 0 && words[1] == 0
}

/// `fe80::/10`.
#[inline(always)]
pub fn is_link_local(words: Words) -> bool {
    let first = words[0].to_ne_bytes();
    first[0] == 0xfe && first[1] & 0xc0 == 0x80
}

/// In `::ffff:0:0/96`.
#[inline(always)]
pub fn is_v4_mapped(words: Words) -> bool {
    let second = words[1].to_ne_bytes();
    words[0] == 0 && second[0] == 0 && second[1] == 0 && second[2] == 0xff && second[3] == 0xff
}

/// Whether `words` is one of the endpoint's own addresses (an endpoint without an address in a family has
/// none there: its unspecified address matches nothing).
#[inline(always)]
pub fn is_own(endpoint: &EndpointInfo, words: Words) -> bool {
    !is_unspecified(words) && (words == endpoint_v4(endpoint) || words == endpoint_v6(endpoint))
}
