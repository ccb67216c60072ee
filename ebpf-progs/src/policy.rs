//! The policy decision for a new connection at an endpoint: resolve the peer's identities through the
//! ipcache, look the (endpoint, direction, identity, protocol, port) up in the policy maps for the peer's
//! identity, its CIDR identity and the wildcard identity, and pick the match in Cilium's precedence:
//! L3-L4, then L4-only, then L3-only, then allow-all. Every lookup is a hash or LPM lookup, so the cost
//! does not grow with the number of policies (an entry for one port is found by hash; a trie holds only
//! the shorter prefixes, and stays shallow).

use flowgate_common::{
    identity,
    ip::Addr,
    policy::{POLICY_FLAG_L4, PolicyKey, PolicyValue, enforcement, match_type},
};

use crate::maps;

/// Identities of the remote side of a connection.
#[derive(Clone, Copy)]
pub struct Remote {
    pub identity: u32,
    pub cidr_identity: u32,
}

/// Resolves a remote address to its identities; unknown addresses are the world.
#[inline(always)]
pub fn remote(generation: u64, addr: &Addr) -> Remote {
    match maps::ipcache(generation, addr) {
        Some(v) => Remote { identity: v.identity, cidr_identity: v.cidr_identity },
        None => Remote { identity: identity::WORLD, cidr_identity: 0 },
    }
}

/// An allowing policy entry and how it matched.
pub struct Allowed {
    pub rule_id: u32,
    pub match_type: u8,
    entry: *mut PolicyValue,
}

impl Allowed {
    /// Counts the connection's first packet on the entry that allowed it.
    #[inline(always)]
    pub fn account(&self, pkt_len: u32) {
        // SAFETY: `entry` is the non-null, aligned address of the policy value a lookup returned in this
        // run (see `maps::policy`); elements of the trie and of the (not preallocated) hash map are freed
        // only after an RCU grace period, so it stays valid until the program returns. Another CPU may count the same entry at once and
        // lose an increment, which counters tolerate; the agent only reads these fields in the active
        // generation (it carries them over by writing the inactive one).
        unsafe {
            (*self.entry).packets += 1;
            (*self.entry).bytes += u64::from(pkt_len);
        }
    }
}

#[inline(always)]
fn is_l4(entry: *mut PolicyValue) -> bool {
    // SAFETY: `entry` comes from `maps::policy` in this run: a valid, aligned policy value (see
    // `Allowed::account`); `flags` is written only by the agent, and only in the inactive generation.
    unsafe { (*entry).flags & POLICY_FLAG_L4 != 0 }
}

#[inline(always)]
fn allowed(entry: *mut PolicyValue, match_type: u8) -> Allowed {
    // SAFETY: as in `is_l4`: a valid policy value from this run's lookup, whose `rule_id` only the agent
    // writes, and only in the inactive generation.
    Allowed { rule_id: unsafe { (*entry).rule_id }, match_type, entry }
}

/// Decides a new connection at the endpoint with these enforcement flags, to `key` (endpoint id, protocol,
/// port); `None` means no entry allows it. Each lookup is made only when the ones
/// before it left the decision open: a connection allowed by an entry for its peer's own identity and
/// port (the common case) costs one lookup; the one for any peer only when the endpoint has such entries in
/// this direction (`enforcement::INGRESS_NO_ANY_PEER` unset).
#[inline(always)]
pub fn decide(generation: u64, endpoint_flags: u32, dir: u8, remote: Remote, key: (u16, u8, u16)) -> Option<Allowed> {
    let (endpoint_id, protocol, port) = key;
    let prefixes = endpoint_flags & enforcement::prefixes(dir) != 0;
    let no_any_peer = endpoint_flags & enforcement::no_any_peer(dir) != 0;
    let by_identity =
        maps::policy(generation, &PolicyKey::new(endpoint_id, dir, remote.identity, protocol, port), prefixes);
    if let Some(e) = by_identity.filter(|e| is_l4(*e)) {
        return Some(allowed(e, match_type::L3_L4));
    }
    let by_cidr = if remote.cidr_identity != 0 && remote.cidr_identity != remote.identity {
        maps::policy(generation, &PolicyKey::new(endpoint_id, dir, remote.cidr_identity, protocol, port), prefixes)
    } else {
        None
    };
    if let Some(e) = by_cidr.filter(|e| is_l4(*e)) {
        return Some(allowed(e, match_type::L3_L4));
    }
    // An early return, not a skipped lookup as a `None`: written that way, LLVM spilled a register never set
    // on that path, which the verifier refuses (`R5 !read_ok`).
    if no_any_peer {
        return by_identity.or(by_cidr).map(|e| allowed(e, match_type::L3_ONLY));
    }
    let by_any = maps::policy(generation, &PolicyKey::new(endpoint_id, dir, identity::ANY, protocol, port), prefixes);
    if let Some(e) = by_any.filter(|e| is_l4(*e)) {
        return Some(allowed(e, match_type::L4_ONLY));
    }
    if let Some(e) = by_identity.or(by_cidr) {
        return Some(allowed(e, match_type::L3_ONLY));
    }
    by_any.map(|e| allowed(e, match_type::ALL))
}
