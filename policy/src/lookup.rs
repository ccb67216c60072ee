//! The kernel's policy decision, taken in user space on the realized map contents ([`MapContents`]): the
//! ipcache's longest prefix gives the remote address its identities, then the policy trie is looked up for
//! the peer's identity, its CIDR identity and the wildcard identity, and the match is picked in the
//! kernel's precedence (L3-L4, L4-only, L3-only, allow-all), exactly as `ebpf-progs/src/policy.rs` does;
//! the enforcement flags decide whether the direction is enforced and whether a miss is audited, as the
//! programs' `connection` does. This is the only user-space copy of that order: `flowgate policy test`
//! answers from it, and the tests hold it to the kernel's own verdicts (BPF_PROG_TEST_RUN, real traffic).

use std::net::IpAddr;

use flowgate_common::{
    identity,
    policy::{POLICY_FLAG_L4, POLICY_PREFIX_FULL, PolicyKey, PolicyValue, direction, enforcement, match_type},
};
use serde::Serialize;

use crate::{IpPrefix, MatchKind, realize::MapContents};

/// The identities the ipcache gives a remote address (the kernel's `policy::Remote`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Remote {
    /// The longest prefix's identity: a pod's own for its address, `reserved:world` when nothing matches.
    pub identity: u32,
    /// The policy identity of the longest CIDR prefix holding the address (0: none).
    pub cidr_identity: u32,
}

/// An entry that allows a new connection, and how it matched (the kernel's `policy::Allowed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Allowed {
    pub rule_id: u32,
    /// `flowgate_common::policy::match_type`, as the kernel writes it into verdict records.
    pub match_type: u8,
}

impl Allowed {
    /// The match type by name.
    #[must_use]
    pub fn match_kind(&self) -> MatchKind {
        match self.match_type {
            match_type::L3_L4 => MatchKind::L3L4,
            match_type::L4_ONLY => MatchKind::L4Only,
            match_type::L3_ONLY => MatchKind::L3Only,
            _ => MatchKind::All,
        }
    }
}

/// What the programs do with a new connection in one direction at one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// No policy isolates the endpoint in this direction: the connection passes, no verdict record.
    NotEnforced,
    /// An entry allows it.
    Allowed(Allowed),
    /// No entry allows it, and the endpoint is in audit mode: it passes with an audit verdict.
    Audit,
    /// No entry allows it: dropped (`POLICY_DENIED`).
    Denied,
}

impl Outcome {
    /// Whether the packet passes this direction's check.
    #[must_use]
    pub fn passes(&self) -> bool {
        !matches!(self, Outcome::Denied)
    }

    /// The kernel's verdict record for it: (`policy::verdict`, `match_type`, rule id); `None` when the
    /// direction is not enforced (no record).
    #[must_use]
    pub fn verdict_record(&self) -> Option<(u8, u8, u32)> {
        use flowgate_common::policy::verdict;
        match self {
            Outcome::NotEnforced => None,
            Outcome::Allowed(a) => Some((verdict::ALLOWED, a.match_type, a.rule_id)),
            Outcome::Audit => Some((verdict::AUDIT, match_type::NONE, 0)),
            Outcome::Denied => Some((verdict::DENIED, match_type::NONE, 0)),
        }
    }
}

/// The policy maps of one generation, looked up as the kernel looks them up.
#[derive(Clone, Copy, Debug)]
pub struct PolicyMaps<'a> {
    contents: &'a MapContents,
}

/// Whether the first `bits` bits of `a` and `b` are equal (an LPM trie's match of a `bits`-long prefix).
fn prefix_matches(a: &[u8], b: &[u8], bits: u32) -> bool {
    let bits = bits.min(8 * a.len().min(b.len()) as u32);
    let whole = (bits / 8) as usize;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

impl<'a> PolicyMaps<'a> {
    #[must_use]
    pub fn new(contents: &'a MapContents) -> Self {
        Self { contents }
    }

    /// The ipcache's longest prefix holding `addr` (`maps::ipcache`); unknown addresses are the world
    /// (`policy::remote`).
    #[must_use]
    pub fn remote(&self, addr: IpAddr) -> Remote {
        // Bit for bit in the 128-bit key space, as the trie compares: an IPv4 address is IPv4-mapped, so
        // `0.0.0.0/0` (96 bits there) is longer than `::/0`.
        let (key, _) = IpPrefix::host(addr).key();
        self.contents
            .ipcache
            .iter()
            .map(|(prefix, value)| (prefix.key(), value))
            .filter(|((bytes, len), _)| prefix_matches(bytes, &key, *len))
            .max_by_key(|((_, len), _)| *len)
            .map_or(Remote { identity: identity::WORLD, cidr_identity: 0 }, |(_, v)| Remote {
                identity: v.identity,
                cidr_identity: v.cidr_identity,
            })
    }

    /// The endpoint's enforcement flags (`maps::enforcement`; 0 when it has none).
    #[must_use]
    pub fn enforcement(&self, endpoint_id: u16) -> u32 {
        self.contents.enforcement.iter().find(|(id, _)| *id == endpoint_id).map_or(0, |(_, flags)| *flags)
    }

    /// The longest policy entry matching a full key (`maps::policy`).
    fn policy(&self, key: &PolicyKey) -> Option<&'a PolicyValue> {
        self.contents
            .policy
            .iter()
            .filter(|(prefix, entry, _)| {
                *prefix <= POLICY_PREFIX_FULL && prefix_matches(&entry.bytes, &key.bytes, *prefix)
            })
            .max_by_key(|(prefix, _, _)| *prefix)
            .map(|(_, _, value)| value)
    }

    /// Decides a new connection's direction at an enforced endpoint (`policy::decide`): `None` means no
    /// entry allows it.
    #[must_use]
    pub fn decide(&self, endpoint_id: u16, dir: u8, remote: Remote, protocol: u8, port: u16) -> Option<Allowed> {
        let by_identity = self.policy(&PolicyKey::new(endpoint_id, dir, remote.identity, protocol, port));
        let by_cidr = if remote.cidr_identity != 0 && remote.cidr_identity != remote.identity {
            self.policy(&PolicyKey::new(endpoint_id, dir, remote.cidr_identity, protocol, port))
        } else {
            None
        };
        let by_any = self.policy(&PolicyKey::new(endpoint_id, dir, identity::ANY, protocol, port));
        let is_l4 = |e: &&PolicyValue| e.flags & POLICY_FLAG_L4 != 0;
        let allowed = |e: &PolicyValue, match_type| Allowed { rule_id: e.rule_id, match_type };

        if let Some(e) = by_identity.filter(is_l4) {
            return Some(allowed(e, match_type::L3_L4));
        }
        if let Some(e) = by_cidr.filter(is_l4) {
            return Some(allowed(e, match_type::L3_L4));
        }
        if let Some(e) = by_any.filter(is_l4) {
            return Some(allowed(e, match_type::L4_ONLY));
        }
        if let Some(e) = by_identity.or(by_cidr) {
            return Some(allowed(e, match_type::L3_ONLY));
        }
        by_any.map(|e| allowed(e, match_type::ALL))
    }

    /// What the programs do with the first packet of a new connection at `endpoint_id` in direction `dir`
    /// (`policy::direction`) whose remote side is `remote_addr` (the destination on egress, the source on
    /// ingress), as `connection` in the programs does. Also the remote's identities, as records carry them.
    #[must_use]
    pub fn new_connection(
        &self,
        endpoint_id: u16,
        dir: u8,
        remote_addr: IpAddr,
        protocol: u8,
        port: u16,
    ) -> (Outcome, Remote) {
        let remote = self.remote(remote_addr);
        let flags = self.enforcement(endpoint_id);
        let (enforced, audit) = if dir == direction::INGRESS {
            (flags & enforcement::INGRESS != 0, flags & enforcement::INGRESS_AUDIT != 0)
        } else {
            (flags & enforcement::EGRESS != 0, flags & enforcement::EGRESS_AUDIT != 0)
        };
        if !enforced {
            return (Outcome::NotEnforced, remote);
        }
        let outcome = match self.decide(endpoint_id, dir, remote, protocol, port) {
            Some(allowed) => Outcome::Allowed(allowed),
            None if audit => Outcome::Audit,
            None => Outcome::Denied,
        };
        (outcome, remote)
    }
}

#[cfg(test)]
mod tests;
