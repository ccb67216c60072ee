//! Realization: a compiled [`PolicyPlan`] becomes the exact contents of the datapath's policy maps
//! (policy trie entries, ipcache prefixes, enforcement flags), and the rule table that resolves the rule
//! ids written into the maps back to policy names. Pure: the datapath writes what this returns.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use flowgate_common::{
    identity,
    policy::{
        IpcacheValue, POLICY_FLAG_L4, POLICY_PREFIX_PEER, POLICY_PREFIX_PROTOCOL, PolicyKey, PolicyValue, direction,
        enforcement,
    },
};
use flowgate_policy::{DirectionPolicy, PeerMatch, PolicyPlan, PolicyRef};
use flowgate_proto::flow::PolicyName;

/// Interns sets of policy names as small rule ids (never 0, never reused), so a record's rule id can be
/// resolved after the policy changed again.
#[derive(Debug, Default)]
pub struct RuleTable {
    ids: HashMap<Vec<PolicyName>, u32>,
    names: HashMap<u32, Vec<PolicyName>>,
}

impl RuleTable {
    pub fn intern(&mut self, policies: &[PolicyRef]) -> u32 {
        let names: Vec<PolicyName> =
            policies.iter().map(|p| PolicyName { namespace: p.namespace.clone(), name: p.name.clone() }).collect();
        if let Some(id) = self.ids.get(&names) {
            return *id;
        }
        let id = self.ids.len() as u32 + 1;
        self.ids.insert(names.clone(), id);
        self.names.insert(id, names);
        id
    }

    pub fn names(&self, rule_id: u32) -> Option<&[PolicyName]> {
        self.names.get(&rule_id).map(Vec::as_slice)
    }
}

/// Everything one policy generation of the datapath holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// (prefix length, key, value) of the policy trie.
    pub policy: Vec<(u32, PolicyKey, PolicyValue)>,
    /// (prefix length, address, value) of the ipcache.
    pub ipcache: Vec<(u32, Ipv4Addr, IpcacheValue)>,
    /// Endpoint id -> `enforcement` flags.
    pub enforcement: Vec<(u16, u32)>,
}

/// Splits an inclusive port range into aligned power-of-two blocks, as (first port, prefix bits of the
/// 16-bit port). `(80, 80)` is one block of 16 bits; `(0, 65535)` one block of 0 bits.
pub fn port_prefixes(start: u16, end: u16) -> Vec<(u16, u32)> {
    let (mut lo, hi) = (u32::from(start), u32::from(end));
    let mut out = Vec::new();
    while lo <= hi {
        // Largest block that starts at `lo` (alignment) and does not pass `hi`.
        let mut size = if lo == 0 { 1u32 << 16 } else { 1u32 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// Audit settings that turn would-be drops into audit verdicts.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    /// Agent-wide `--policy-audit-mode`.
    pub all: bool,
    /// Endpoints put in audit mode one by one.
    pub endpoints: BTreeSet<u16>,
}

fn direction_entries(
    endpoint_id: u16,
    dir: u8,
    policy: &DirectionPolicy,
    out: &mut BTreeMap<(u32, PolicyKey), BTreeSet<PolicyRef>>,
) {
    for entry in &policy.entries {
        let identity = match entry.peer {
            PeerMatch::Identity(id) => id,
            PeerMatch::Any => identity::ANY,
        };
        let mut add = |prefix: u32, protocol: u8, port: u16| {
            out.entry((prefix, PolicyKey::new(endpoint_id, dir, identity, protocol, port)))
                .or_default()
                .extend(entry.allowed_by.iter().cloned());
        };
        match (entry.protocol, entry.ports) {
            (None, _) => add(POLICY_PREFIX_PEER, 0, 0),
            (Some(proto), None) => add(POLICY_PREFIX_PROTOCOL, proto.ip_protocol(), 0),
            (Some(proto), Some((start, end))) => {
                for (port, bits) in port_prefixes(start, end) {
                    add(POLICY_PREFIX_PROTOCOL + bits, proto.ip_protocol(), port);
                }
            }
        }
    }
}

/// The map contents for a plan. `pods` are (address, pod identity) of every endpoint.
pub fn realize(plan: &PolicyPlan, pods: &[(Ipv4Addr, u32)], audit: &Audit, rules: &mut RuleTable) -> MapContents {
    let mut entries: BTreeMap<(u32, PolicyKey), BTreeSet<PolicyRef>> = BTreeMap::new();
    let mut contents = MapContents::default();
    for (&endpoint_id, ep) in &plan.endpoints {
        direction_entries(endpoint_id, direction::INGRESS, &ep.ingress, &mut entries);
        direction_entries(endpoint_id, direction::EGRESS, &ep.egress, &mut entries);
        let audited = audit.all || audit.endpoints.contains(&endpoint_id);
        let mut flags = 0;
        if ep.ingress.enforced {
            flags |= enforcement::INGRESS | if audited { enforcement::INGRESS_AUDIT } else { 0 };
        }
        if ep.egress.enforced {
            flags |= enforcement::EGRESS | if audited { enforcement::EGRESS_AUDIT } else { 0 };
        }
        if flags != 0 {
            contents.enforcement.push((endpoint_id, flags));
        }
    }
    for ((prefix, key), by) in entries {
        let by: Vec<PolicyRef> = by.into_iter().collect();
        let flags = if prefix > POLICY_PREFIX_PEER { POLICY_FLAG_L4 } else { 0 };
        let value = PolicyValue { rule_id: rules.intern(&by), flags, packets: 0, bytes: 0 };
        contents.policy.push((prefix, key, value));
    }

    // ipcache: CIDR prefixes (0.0.0.0/0 maps to the world identity), then every pod's /32.
    for cidr in &plan.cidrs {
        let identity = if cidr.prefix.prefix_len() == 0 { identity::WORLD } else { cidr.identity };
        contents.ipcache.push((
            u32::from(cidr.prefix.prefix_len()),
            cidr.prefix.addr(),
            IpcacheValue { identity, cidr_identity: cidr.identity },
        ));
    }
    for &(ip, identity) in pods {
        contents.ipcache.push((32, ip, IpcacheValue { identity, cidr_identity: plan.cidr_identity_of(ip) }));
    }
    contents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_become_aligned_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(port_prefixes(81, 82), vec![(81, 16), (82, 16)]);
        assert_eq!(port_prefixes(1, 3), vec![(1, 16), (2, 15)]);
        // Every port of a range is covered exactly once, and nothing outside it.
        for (start, end) in [(1u16, 1000u16), (1024, 65535), (5000, 5001), (65535, 65535), (0, 7)] {
            let blocks = port_prefixes(start, end);
            let mut covered = 0u32;
            for (port, bits) in &blocks {
                let size = 1u32 << (16 - bits);
                assert_eq!(u32::from(*port) % size, 0, "block {port}/{bits} is aligned");
                covered += size;
                assert!(u32::from(*port) >= u32::from(start) && u32::from(*port) + size - 1 <= u32::from(end));
            }
            assert_eq!(covered, u32::from(end) - u32::from(start) + 1);
        }
    }

    #[test]
    fn rule_ids_are_interned_and_stable() {
        let mut rules = RuleTable::default();
        let a = rules.intern(&[PolicyRef::new("default", "a")]);
        let ab = rules.intern(&[PolicyRef::new("default", "a"), PolicyRef::new("default", "b")]);
        assert_eq!(rules.intern(&[PolicyRef::new("default", "a")]), a);
        assert_ne!(a, ab);
        assert!(a != 0 && ab != 0);
        assert_eq!(rules.names(ab).unwrap()[1].name, "b");
    }
}
