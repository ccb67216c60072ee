//! Realization: a compiled [`PolicyPlan`] becomes the exact contents of the datapath's policy maps
//! (policy trie entries, ipcache prefixes, enforcement flags), and the rule table that resolves the rule
//! ids written into the maps back to policy names. Pure: the agent's datapath writes what this returns, and
//! [`crate::lookup`] answers "what would the kernel decide" from the same contents, so here (not in the
//! agent) where both the agent and the `flowgate` command reach it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use crate::{DirectionPolicy, IpPrefix, PeerMatch, PolicyEntry, PolicyPlan, PolicyRef};
use flowgate_common::{
    capacity::{MAX_ENDPOINTS, MAX_IPCACHE_ENTRIES, MAX_POLICY_ENTRIES},
    identity,
    policy::{
        IpcacheValue, POLICY_FLAG_L4, POLICY_PREFIX_FULL, POLICY_PREFIX_PEER, POLICY_PREFIX_PROTOCOL, PolicyKey,
        PolicyValue, direction, enforcement,
    },
};

/// Interns sets of policy names as small rule ids (never 0, never reused), so a record's rule id can be
/// resolved after the policy changed again. Each set is held once, shared by its id, its lookup and
/// whoever keeps it for enrichment ([`RuleTable::shared`]): at 10,000 policies a copy of every set costs
/// megabytes.
#[derive(Debug, Default)]
pub struct RuleTable {
    ids: HashMap<Arc<[PolicyRef]>, u32>,
    /// The set of rule id `n` at index `n - 1`.
    names: Vec<Arc<[PolicyRef]>>,
}

impl RuleTable {
    pub fn intern(&mut self, policies: &[PolicyRef]) -> u32 {
        if let Some(id) = self.ids.get(policies) {
            return *id;
        }
        let names: Arc<[PolicyRef]> = policies.into();
        self.names.push(Arc::clone(&names));
        let id = self.names.len() as u32;
        self.ids.insert(names, id);
        id
    }

    pub fn names(&self, rule_id: u32) -> Option<&[PolicyRef]> {
        self.shared(rule_id).map(|names| &**names)
    }

    /// The set of a rule id, shared with the table.
    pub fn shared(&self, rule_id: u32) -> Option<&Arc<[PolicyRef]>> {
        self.names.get(usize::try_from(rule_id).ok()?.checked_sub(1)?)
    }
}

/// Everything one policy generation of the datapath holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// (prefix length, key, value) of the policy trie.
    pub policy: Vec<(u32, PolicyKey, PolicyValue)>,
    /// Prefixes of the ipcache (pods' addresses as host prefixes) and their identities.
    pub ipcache: Vec<(IpPrefix, IpcacheValue)>,
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

/// How many entries each policy-generation map holds (`max_entries`), as the kernel created them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub policy: u32,
    pub ipcache: u32,
    /// The enforcement maps: arrays with a slot per endpoint id (`MAX_ENDPOINTS`), never resized; every
    /// endpoint fits (the agent's ids stay below it).
    pub enforcement: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self { policy: MAX_POLICY_ENTRIES, ipcache: MAX_IPCACHE_ENTRIES, enforcement: MAX_ENDPOINTS }
    }
}

/// How many entries a plan's realization writes into each map of a generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    pub policy: usize,
    pub ipcache: usize,
    pub enforcement: usize,
}

/// A plan that does not fit the maps: refused before anything is written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "policy set needs {} {what} entries, capacity {}; the last good set stays in effect (raise \
     --{flag} or simplify the policies)",
    thousands(*needs as u64),
    thousands(u64::from(*capacity))
)]
pub struct CapacityError {
    /// `policy`, `ipcache` or `endpoint`.
    pub what: &'static str,
    /// The agent flag that sets this capacity.
    pub flag: &'static str,
    pub needs: usize,
    pub capacity: u32,
}

/// `288000` as `288,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Fill {
    /// The first map this fill does not fit, if any.
    pub fn check(&self, capacities: &Capacities) -> Result<(), CapacityError> {
        let checks = [
            ("policy", "policy-map-entries", self.policy, capacities.policy),
            ("ipcache", "ipcache-entries", self.ipcache, capacities.ipcache),
        ];
        for (what, flag, needs, capacity) in checks {
            if needs > capacity as usize {
                return Err(CapacityError { what, flag, needs, capacity });
            }
        }
        Ok(())
    }
}

/// The port prefixes of one (peer, protocol) group of a direction's entries: one prefix-less key for
/// "any port", else the aligned blocks of every range, each once.
fn group_keys(entries: &[PolicyEntry]) -> usize {
    let mut blocks: BTreeSet<(u16, u32)> = BTreeSet::new();
    let mut any = false;
    for entry in entries {
        match (entry.protocol, entry.ports) {
            (None, _) | (Some(_), None) => any = true,
            (Some(_), Some((start, end))) => {
                // A block of every port (bits 0) is the protocol-only key.
                for (port, bits) in port_prefixes(start, end) {
                    if bits == 0 {
                        any = true;
                    } else {
                        blocks.insert((port, bits));
                    }
                }
            }
        }
    }
    blocks.len() + usize::from(any)
}

/// Counts what [`realize`] would write, without building it: memory stays bounded by one (peer,
/// protocol) group, so a set too big for the maps is refused without first allocating it.
pub fn count(plan: &PolicyPlan, pods: &[(IpAddr, u32)]) -> Fill {
    let mut fill = Fill::default();
    for ep in plan.endpoints.values() {
        for policy in [&ep.ingress, &ep.egress] {
            // `entries` are sorted by (peer, protocol, ports): a group is a run of equal (peer, protocol).
            for group in policy.entries.chunk_by(|a, b| (a.peer, a.protocol) == (b.peer, b.protocol)) {
                fill.policy += group_keys(group);
            }
        }
        if ep.ingress.enforced || ep.egress.enforced {
            fill.enforcement += 1;
        }
    }
    let mut ipcache: HashSet<IpPrefix> = plan.cidrs.iter().map(|c| c.prefix).collect();
    ipcache.extend(pods.iter().map(|(ip, _)| IpPrefix::host(*ip)));
    fill.ipcache = ipcache.len();
    fill
}

/// Audit settings that turn would-be drops into audit verdicts.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    /// Agent-wide `--policy-audit-mode`.
    pub all: bool,
    /// Endpoints put in audit mode one by one.
    pub endpoints: BTreeSet<u16>,
}

fn direction_entries<'a>(
    endpoint_id: u16,
    dir: u8,
    policy: &'a DirectionPolicy,
    out: &mut BTreeMap<(u32, PolicyKey), BTreeSet<&'a PolicyRef>>,
) {
    for entry in &policy.entries {
        let identity = match entry.peer {
            PeerMatch::Identity(id) => id,
            PeerMatch::Any => identity::ANY,
        };
        let mut add = |prefix: u32, protocol: u8, port: u16| {
            out.entry((prefix, PolicyKey::new(endpoint_id, dir, identity, protocol, port)))
                .or_default()
                .extend(entry.allowed_by.iter());
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

/// The map contents for a plan. `pods` are (address, pod identity) of every endpoint address (IPv4 and IPv6).
pub fn realize(plan: &PolicyPlan, pods: &[(IpAddr, u32)], audit: &Audit, rules: &mut RuleTable) -> MapContents {
    // The names are borrowed from the plan while the entries are gathered: owned copies (two strings an
    // entry) were freed just as the rule table made its own, which glibc then placed in their slots, all
    // over the pages of this transient map, so those pages stayed resident (1.8 MiB more after `malloc_trim`
    // at 10,000 policies, for the same bytes in use).
    let mut entries: BTreeMap<(u32, PolicyKey), BTreeSet<&PolicyRef>> = BTreeMap::new();
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
    // Which endpoints and directions have entries in the trie (see `enforcement::INGRESS_PREFIXES`), and which
    // have an entry a lookup for any peer can find (see `enforcement::INGRESS_NO_ANY_PEER`): one for
    // `identity::ANY`, or a prefix that stops before the identity (none is written; it would match too).
    let (mut with_prefixes, mut with_any_peer) = (BTreeSet::new(), BTreeSet::new());
    for (prefix, key) in entries.keys() {
        let at = (key.endpoint_id(), key.direction());
        if *prefix != POLICY_PREFIX_FULL {
            with_prefixes.insert(at);
        }
        if key.identity() == identity::ANY || *prefix < POLICY_PREFIX_PEER {
            with_any_peer.insert(at);
        }
    }
    for (endpoint_id, flags) in &mut contents.enforcement {
        for dir in [direction::INGRESS, direction::EGRESS] {
            if with_prefixes.contains(&(*endpoint_id, dir)) {
                *flags |= enforcement::prefixes(dir);
            }
            if !with_any_peer.contains(&(*endpoint_id, dir)) {
                *flags |= enforcement::no_any_peer(dir);
            }
        }
    }
    for ((prefix, key), by) in entries {
        let by: Vec<PolicyRef> = by.into_iter().cloned().collect();
        let flags = if prefix > POLICY_PREFIX_PEER { POLICY_FLAG_L4 } else { 0 };
        let value = PolicyValue { rule_id: rules.intern(&by), flags, packets: 0, bytes: 0 };
        contents.policy.push((prefix, key, value));
    }

    // ipcache: CIDR prefixes (0.0.0.0/0 and ::/0 map to the world identity), then every pod address.
    for cidr in &plan.cidrs {
        let identity = if cidr.prefix.prefix_len() == 0 { identity::WORLD } else { cidr.identity };
        contents.ipcache.push((cidr.prefix, IpcacheValue { identity, cidr_identity: cidr.policy_identity() }));
    }
    for &(ip, identity) in pods {
        let value = IpcacheValue { identity, cidr_identity: plan.cidr_identity_of(ip) };
        contents.ipcache.push((IpPrefix::host(ip), value));
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

    fn plan_with(entries: Vec<PolicyEntry>) -> PolicyPlan {
        let ep = crate::EndpointPolicy {
            namespace: "default".into(),
            pod: "db".into(),
            identity: 256,
            ip: std::net::Ipv4Addr::new(10, 200, 0, 1),
            ipv6: None,
            ingress: DirectionPolicy { enforced: true, selected_by: Vec::new(), entries },
            egress: DirectionPolicy::default(),
        };
        PolicyPlan { cidrs: Vec::new(), endpoints: BTreeMap::from([(1, ep)]) }
    }

    /// The enforcement flags of the one endpoint of `plan_with(entries)`, its egress flags apart.
    fn ingress_flags(entries: Vec<PolicyEntry>) -> u32 {
        let pods = [(std::net::Ipv4Addr::new(10, 200, 0, 1).into(), 256)];
        let contents = realize(&plan_with(entries), &pods, &Audit::default(), &mut RuleTable::default());
        assert_eq!(contents.enforcement.len(), 1);
        contents.enforcement[0].1 & !enforcement::EGRESS_NO_ANY_PEER
    }

    /// The programs look for an entry of any peer only when the endpoint's flags do not say there is none in
    /// that direction; an entry the flag hid would be unreachable, so every entry for any peer, of every
    /// length, clears it.
    #[test]
    fn an_endpoint_is_flagged_without_entries_for_any_peer_exactly_when_it_has_none() {
        use crate::Protocol::{Tcp, Udp};
        let entry = |peer, protocol, ports| PolicyEntry {
            peer,
            protocol,
            ports,
            allowed_by: vec![PolicyRef::new("default", "p")],
        };
        let none = enforcement::INGRESS_NO_ANY_PEER;
        let by_peer = [
            entry(PeerMatch::Identity(300), Some(Tcp), Some((80, 80))),
            entry(PeerMatch::Identity(300), Some(Udp), Some((1000, 2000))),
            entry(PeerMatch::Identity(301), None, None),
        ];
        assert_eq!(ingress_flags(Vec::new()) & none, none, "isolated, nothing allowed");
        assert_eq!(ingress_flags(by_peer.to_vec()) & none, none, "entries of peers' own identities only");
        for any in [
            entry(PeerMatch::Any, Some(Tcp), Some((80, 80))),
            entry(PeerMatch::Any, Some(Tcp), Some((80, 81))),
            entry(PeerMatch::Any, Some(Udp), None),
            entry(PeerMatch::Any, None, None),
        ] {
            let what = format!("{any:?}");
            let mut entries = by_peer.to_vec();
            entries.push(any);
            assert_eq!(ingress_flags(entries) & none, 0, "{what}");
        }
    }

    /// The programs walk an endpoint's trie only when its flags say there are shorter prefixes in that
    /// direction; an entry a flag forgot would be unreachable, so every kind of shorter entry sets it.
    #[test]
    fn an_endpoint_is_flagged_for_the_trie_exactly_when_it_has_shorter_prefixes() {
        use crate::Protocol::Tcp;
        let flags_of = |entries| ingress_flags(entries) & !enforcement::INGRESS_NO_ANY_PEER;
        let entry = |peer, protocol, ports| PolicyEntry {
            peer,
            protocol,
            ports,
            allowed_by: vec![PolicyRef::new("default", "p")],
        };
        let one_port = entry(PeerMatch::Identity(300), Some(Tcp), Some((80, 80)));
        assert_eq!(flags_of(vec![one_port.clone()]), enforcement::INGRESS, "one port: the exact map alone");
        assert_eq!(flags_of(Vec::new()), enforcement::INGRESS, "isolated, nothing allowed");
        for shorter in [
            entry(PeerMatch::Identity(300), Some(Tcp), Some((80, 81))),
            entry(PeerMatch::Identity(300), Some(Tcp), None),
            entry(PeerMatch::Identity(300), None, None),
            entry(PeerMatch::Any, None, None),
        ] {
            let what = format!("{shorter:?}");
            assert_eq!(
                flags_of(vec![one_port.clone(), shorter]),
                enforcement::INGRESS | enforcement::INGRESS_PREFIXES,
                "{what}"
            );
        }
    }

    #[test]
    fn counting_agrees_with_realizing_where_entries_overlap() {
        use crate::Protocol::{Tcp, Udp};
        let by = |name: &str| vec![PolicyRef::new("default", name)];
        let entry = |peer, protocol, ports, name: &str| PolicyEntry { peer, protocol, ports, allowed_by: by(name) };
        let mut entries = vec![
            // 1-3 and 2-3 share the block 2/15; 0-65535 is the protocol-only key, as is "any port".
            entry(PeerMatch::Identity(300), Some(Tcp), Some((1, 3)), "a"),
            entry(PeerMatch::Identity(300), Some(Tcp), Some((2, 3)), "b"),
            entry(PeerMatch::Identity(300), Some(Tcp), Some((0, 65535)), "c"),
            entry(PeerMatch::Identity(300), Some(Tcp), None, "d"),
            entry(PeerMatch::Identity(300), Some(Udp), Some((1024, 65535)), "e"),
            entry(PeerMatch::Identity(300), None, None, "f"),
            entry(PeerMatch::Any, Some(Tcp), Some((80, 80)), "g"),
            entry(PeerMatch::Any, None, None, "h"),
        ];
        entries.sort_by_key(|e| (e.peer, e.protocol, e.ports));
        let plan = plan_with(entries);
        let pods = [(std::net::Ipv4Addr::new(10, 200, 0, 1).into(), 256)];
        let contents = realize(&plan, &pods, &Audit::default(), &mut RuleTable::default());
        let fill = count(&plan, &pods);
        assert_eq!(fill.policy, contents.policy.len());
        assert_eq!(fill.policy, 2 + 1 + 6 + 1 + 1 + 1);
        assert_eq!(fill.ipcache, contents.ipcache.len());
        assert_eq!(fill.enforcement, contents.enforcement.len());
    }

    #[test]
    fn refusal_names_both_numbers_with_thousands_separators() {
        let fill = Fill { policy: 288_000, ipcache: 10, enforcement: 1 };
        let e = fill.check(&Capacities::default()).unwrap_err();
        assert!(e.to_string().starts_with("policy set needs 288,000 policy entries, capacity 65,536;"), "{e}");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert!(Fill { policy: 65_536, ipcache: 16_384, enforcement: 4096 }.check(&Capacities::default()).is_ok());
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
        assert!(rules.names(0).is_none() && rules.names(ab + 1).is_none());
    }
}
