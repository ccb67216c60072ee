//! Revocation: a tracked connection stays allowed only while the policy that admitted it does. An entry
//! remembers the policy revision it was last allowed under; a packet of an entry from another revision is
//! re-checked here against the current policy, as its opening packet would be now (same endpoint,
//! direction, peer, protocol and port). Allowed (or audited, or no longer enforced): the entry is
//! re-stamped and the packet goes on. Denied: the entry is marked revoked and the packet is dropped. The
//! established fast path pays one compare while the revision matches.

use flowgate_common::{
    conntrack::{REVISION_REVOKED, ct_flag},
    counters::Config,
    policy::{direction, enforcement},
};

use crate::{conntrack::Tracked, maps, policy};

/// What happens to a packet of a re-checked connection.
pub enum Recheck {
    /// The current policy still allows the connection (the entry is re-stamped).
    Keep,
    /// It does not: drop the packet; `remote_identity` is the peer's identity under the current policy.
    Revoked { remote_identity: u32 },
}

/// Re-checks the connection of `tracked` under policy `revision`.
#[inline(always)]
pub fn recheck(tracked: &Tracked, revision: u64) -> Recheck {
    // SAFETY: `tracked.entry` is the map value `conntrack::track` found in this run, valid until the program
    // returns (see there); a concurrent packet of the same connection may re-check it at once and write the
    // same values.
    let entry = unsafe { &mut *tracked.entry };
    if maps::config(Config::KeepEstablished) != 0 {
        entry.revision = revision as u32;
        return Recheck::Keep;
    }
    let key = &tracked.key;
    // The revision was read before the generation: a switch in between makes the entry's stamp older than
    // the policy it was checked against, never newer, so at worst it is checked once more.
    let generation = maps::config(Config::ActiveGeneration);
    let flags = maps::enforcement(generation, key.endpoint_id);
    let (enforced, audit) = if key.direction == direction::INGRESS {
        (flags & enforcement::INGRESS != 0, flags & enforcement::INGRESS_AUDIT != 0)
    } else {
        (flags & enforcement::EGRESS != 0, flags & enforcement::EGRESS_AUDIT != 0)
    };
    let keep = ct_flag::REPLY_SEEN | ct_flag::CLOSING | ct_flag::CLOSED;
    if !enforced {
        entry.rule_id = 0;
        entry.flags &= keep;
        entry.revision = revision as u32;
        return Recheck::Keep;
    }
    let remote_addr = if key.direction == direction::EGRESS { &key.daddr } else { &key.saddr };
    let remote = policy::remote(generation, remote_addr);
    match policy::decide(generation, flags, key.direction, remote, (key.endpoint_id, key.protocol, key.dport)) {
        Some(allowed) => {
            entry.rule_id = allowed.rule_id;
            entry.flags = (entry.flags & keep) | ct_flag::ENFORCED;
            entry.revision = revision as u32;
            Recheck::Keep
        }
        None if audit => {
            entry.rule_id = 0;
            entry.flags = (entry.flags & keep) | ct_flag::ENFORCED | ct_flag::AUDIT;
            entry.revision = revision as u32;
            Recheck::Keep
        }
        None => {
            // Kept (not deleted) so that packets either way keep being dropped as revoked until it expires
            // after the close lifetime; deleting it would let a reply open the reverse direction anew.
            entry.rule_id = 0;
            entry.flags = (entry.flags & keep) | ct_flag::ENFORCED | ct_flag::REVOKED;
            entry.revision = REVISION_REVOKED;
            Recheck::Revoked { remote_identity: remote.identity }
        }
    }
}
