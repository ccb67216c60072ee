//! The agent's policy engine: reads NetworkPolicy sources (a watched directory), keeps the last good set
//! when a change is invalid (and says why in `status`), compiles the set against the node's endpoints
//! ([`flowgate_policy`]), realizes it into map contents ([`realize`]) and answers what the monitor needs
//! to attribute verdicts ([`PolicySnapshot`]).

pub mod realize;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use flowgate_common::policy::direction;
use flowgate_policy::{CidrEntry, CidrIdentities, ClusterView, LoadedPolicy, PolicyCompiler, PolicyRef, SourceCache};
use flowgate_proto::{
    flow::PolicyName,
    message::{MapFill, PolicyStatus},
};

use flowgate_events::enrich::PolicyLookup;
use realize::{Audit, Capacities, CapacityError, Fill, MapContents, RuleTable};

fn name(p: &PolicyRef) -> PolicyName {
    PolicyName { namespace: p.namespace.clone(), name: p.name.clone() }
}

/// What enrichment needs to name the policies behind a verdict; swapped whole on every change. It is also
/// where the agent finds who isolates an endpoint (`policy get`, the policy maps): the plan's lists are
/// moved here, not copied.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    /// The rule ids of the generation, with their policies as the engine's rule table holds them (shared).
    rules: HashMap<u32, Arc<[PolicyRef]>>,
    /// (endpoint id, `policy::direction`) -> policies selecting the endpoint for that direction (enforced
    /// directions only).
    isolation: HashMap<(u16, u8), Box<[PolicyRef]>>,
}

impl PolicySnapshot {
    /// Every isolated (endpoint id, `policy::direction`) with the policies that isolate it, in that order.
    pub fn isolation(&self) -> Vec<(u16, u8, Vec<PolicyName>)> {
        let mut isolation: Vec<_> =
            self.isolation.iter().map(|(&(id, dir), names)| (id, dir, names.iter().map(name).collect())).collect();
        isolation.sort_by_key(|&(id, dir, _)| (id, dir));
        isolation
    }
}

impl PolicyLookup for PolicySnapshot {
    fn rule(&self, rule_id: u32) -> Vec<PolicyName> {
        self.rules.get(&rule_id).map(|names| names.iter().map(name).collect()).unwrap_or_default()
    }

    fn isolated_by(&self, endpoint_id: u16, direction: u8) -> Vec<PolicyName> {
        self.isolation.get(&(endpoint_id, direction)).map(|names| names.iter().map(name).collect()).unwrap_or_default()
    }
}

/// What the agent reads of a plan once it is realized: which directions of each endpoint are enforced, and
/// the CIDR prefixes with their identities. The entries are in the map contents by then (their names in the
/// rule table) and who isolates an endpoint in the [`PolicySnapshot`]: keeping the whole plan held every
/// `allowed_by` and `selected_by` list again (about 3 MB at 10,000 policies on 1,000 endpoints).
#[derive(Debug, Default)]
struct RealizedPlan {
    cidrs: Vec<CidrEntry>,
    /// Endpoint id -> (ingress enforced, egress enforced).
    enforced: BTreeMap<u16, (bool, bool)>,
}

/// What a generation is compiled for besides the policies.
#[derive(Clone, Debug, PartialEq)]
struct Inputs {
    cluster: Arc<ClusterView>,
    audit_all: bool,
    audited: std::collections::BTreeSet<u16>,
}

/// A policy set. The policies are shared between the source cache, the good set and the set in effect,
/// so a policy is held once however many of them name it.
pub type PolicySet = Vec<Arc<LoadedPolicy>>;

/// Whether two sets hold the same policies, in the same order (shared ones compare by address first).
fn same_set(a: &[Arc<LoadedPolicy>], b: &[Arc<LoadedPolicy>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

/// Policies in effect and what to do with the next change.
pub struct PolicyEngine {
    dir: Option<PathBuf>,
    /// The parsed files of `dir`: a change re-reads only the files that changed.
    sources: SourceCache,
    /// The last set that loaded and validated without error: the one to apply next.
    good: PolicySet,
    /// The set in the datapath: `good`, or an older set when `good` did not fit the maps.
    in_effect: PolicySet,
    /// What the generation in effect was compiled for: endpoints with their labels, and audit settings.
    in_effect_for: Option<Inputs>,
    /// Prepared and not yet applied: the set, its inputs, and the refusal of `good` if it is an older set.
    pending: Option<(PolicySet, Inputs, Option<String>)>,
    /// Errors of the latest read of the sources.
    load_errors: Vec<String>,
    /// Why the latest compiled set was not applied (it did not fit the maps); cleared when a set is applied.
    refusal: Option<String>,
    capacities: Capacities,
    /// Entries of the generation in effect.
    fill: Fill,
    cidr_identities: CidrIdentities,
    /// Keeps each policy's compiled share: a change compiles the policies it concerns.
    compiler: PolicyCompiler,
    rules: RuleTable,
    pub audit: Audit,
    plan: Option<RealizedPlan>,
    /// Revision and audit mode of the generation in effect; its `loaded` stays empty: [`Self::status`] names
    /// the set in effect when asked, so the 10,000 names of a large set are not held here besides the copy in
    /// the agent's state that clients read.
    status: PolicyStatus,
}

impl PolicyEngine {
    pub fn new(dir: Option<PathBuf>, audit_all: bool) -> Self {
        Self {
            dir,
            sources: SourceCache::default(),
            good: Vec::new(),
            in_effect: Vec::new(),
            in_effect_for: None,
            pending: None,
            load_errors: Vec::new(),
            refusal: None,
            capacities: Capacities::default(),
            fill: Fill::default(),
            cidr_identities: CidrIdentities::new(),
            compiler: PolicyCompiler::default(),
            rules: RuleTable::default(),
            audit: Audit { all: audit_all, ..Audit::default() },
            plan: None,
            status: PolicyStatus { audit_mode: audit_all, ..PolicyStatus::default() },
        }
    }

    /// Re-reads the policy directory. A set with any error is not taken: the last good set stays and
    /// the errors are reported in `status`. Returns whether the good set changed.
    pub fn reload(&mut self) -> bool {
        let Some(dir) = &self.dir else { return false };
        match self.sources.load_dir(dir) {
            Ok(policies) => {
                self.load_errors.clear();
                let changed = !same_set(&policies, &self.good);
                self.good = policies;
                changed
            }
            Err(errors) => {
                self.load_errors = errors.iter().map(ToString::to_string).collect();
                false
            }
        }
    }

    /// Takes the policies the API server holds (Kubernetes mode): the server validated them already; one
    /// that this agent's validation still refuses is left out alone (the others are not held back, since
    /// the cluster has no atomic policy set) and reported in `status`. Returns whether the set changed.
    /// A policy that is (or equals) one of the good set is taken as it is, not validated again.
    pub fn set_policies(&mut self, policies: Vec<Arc<LoadedPolicy>>) -> bool {
        // The good set itself (a sync where only pods changed): every policy was accepted, nothing to check.
        if policies.len() == self.good.len() && policies.iter().zip(&self.good).all(|(p, good)| Arc::ptr_eq(p, good)) {
            self.load_errors.clear();
            return false;
        }
        let mut errors = Vec::new();
        let good: HashMap<(&str, &str), &Arc<LoadedPolicy>> =
            self.good.iter().map(|p| ((p.namespace(), p.name()), p)).collect();
        let accepted: PolicySet = policies
            .into_iter()
            .filter_map(|p| {
                if let Some(same) =
                    good.get(&(p.namespace(), p.name())).filter(|same| Arc::ptr_eq(same, &p) || ***same == p)
                {
                    return Some(Arc::clone(same));
                }
                let problems = flowgate_policy::validate(&p.policy);
                for problem in &problems {
                    errors.push(format!("{}/{}: not realized: {problem}", p.namespace(), p.name()));
                }
                problems.is_empty().then_some(p)
            })
            .collect();
        self.load_errors = errors;
        let changed = !same_set(&accepted, &self.good);
        self.good = accepted;
        changed
    }

    /// The capacities of the maps the datapath created (or adopted); plans are counted against them.
    pub fn set_capacities(&mut self, capacities: Capacities) {
        self.capacities = capacities;
    }

    /// Compiles the good set for `cluster` and returns the map contents of the new generation, with
    /// the snapshot enrichment uses. The caller writes the contents and then calls [`Self::applied`].
    ///
    /// The plan is counted against the map capacities first: a set that does not fit is refused (like an
    /// invalid manifest: `status` says so with both numbers) before anything is built or written. The set
    /// in effect stays; when the endpoints (or audit settings) changed since it was applied, it is what
    /// this prepares, compiled for them, with the refusal still reported. `Err` means nothing to write.
    pub fn prepare(&mut self, cluster: ClusterView) -> Result<(MapContents, PolicySnapshot), CapacityError> {
        let cluster = Arc::new(cluster);
        let inputs =
            Inputs { cluster: Arc::clone(&cluster), audit_all: self.audit.all, audited: self.audit.endpoints.clone() };
        let good = self.good.clone();
        let refusal = match self.build(&good, &cluster) {
            Ok(prepared) => {
                self.pending = Some((good, inputs, None));
                return Ok(prepared);
            }
            Err(refusal) => refusal,
        };
        self.refusal = Some(refusal.to_string());
        if same_set(&self.in_effect, &good) || self.in_effect_for.as_ref() == Some(&inputs) {
            return Err(refusal);
        }
        // The endpoints changed under the set in effect: compile it again for them.
        let in_effect = self.in_effect.clone();
        match self.build(&in_effect, &cluster) {
            Ok(prepared) => {
                self.pending = Some((in_effect, inputs, Some(refusal.to_string())));
                Ok(prepared)
            }
            Err(also) => {
                self.refusal = Some(format!("{refusal}; and the set in effect no longer fits either: {also}"));
                Err(refusal)
            }
        }
    }

    /// Compiles `policies` for `cluster`, counts the result against the capacities, and realizes it if it fits.
    fn build(
        &mut self,
        policies: &[Arc<LoadedPolicy>],
        cluster: &Arc<ClusterView>,
    ) -> Result<(MapContents, PolicySnapshot), CapacityError> {
        let started = std::time::Instant::now();
        let plan = self.compiler.compile_shared(policies, cluster, &mut self.cidr_identities);
        let compiled = started.elapsed();
        let pods: Vec<(IpAddr, u32)> = cluster
            .pods
            .iter()
            .flat_map(|p| {
                std::iter::once((IpAddr::V4(p.ip), p.identity)).chain(p.ipv6.map(|v6| (IpAddr::V6(v6), p.identity)))
            })
            .collect();
        let fill = realize::count(&plan, &pods);
        fill.check(&self.capacities)?;
        let contents = realize::realize(&plan, &pods, &self.audit, &mut self.rules);
        let mut snapshot = PolicySnapshot::default();
        for (_, _, value) in &contents.policy {
            if let Some(names) = self.rules.shared(value.rule_id) {
                snapshot.rules.insert(value.rule_id, Arc::clone(names));
            }
        }
        let mut realized = RealizedPlan { cidrs: plan.cidrs, enforced: BTreeMap::new() };
        for (id, ep) in plan.endpoints {
            realized.enforced.insert(id, (ep.ingress.enforced, ep.egress.enforced));
            for (dir, policy) in [(direction::INGRESS, ep.ingress), (direction::EGRESS, ep.egress)] {
                if policy.enforced {
                    snapshot.isolation.insert((id, dir), policy.selected_by.into_boxed_slice());
                }
            }
        }
        log::debug!(
            "{} of {} policies compiled again in {compiled:?}; plan counted, realized and named in {:?}",
            self.compiler.last_compiled(),
            policies.len(),
            started.elapsed() - compiled
        );
        self.plan = Some(realized);
        self.fill = fill;
        Ok((contents, snapshot))
    }

    /// Records that the prepared generation is in effect.
    pub fn applied(&mut self) {
        if let Some((set, inputs, refusal)) = self.pending.take() {
            self.in_effect = set;
            self.in_effect_for = Some(inputs);
            self.refusal = refusal;
        }
        self.status.revision += 1;
        self.status.audit_mode = self.audit.all;
    }

    /// The set in effect, the errors of the latest change, and how full the maps of the generation in
    /// effect are.
    pub fn status(&self) -> PolicyStatus {
        let mut status = self.status.clone();
        let mut loaded: Vec<String> =
            self.in_effect.iter().map(|p| format!("{}/{}", p.namespace(), p.name())).collect();
        loaded.sort();
        loaded.dedup();
        status.loaded = loaded;
        status.errors = self.load_errors.iter().chain(&self.refusal).cloned().collect();
        let fill = |map: &str, entries: usize, capacity: u32| MapFill {
            map: map.to_owned(),
            entries: entries as u64,
            capacity: u64::from(capacity),
        };
        status.maps = vec![
            fill("policy", self.fill.policy, self.capacities.policy),
            fill("ipcache", self.fill.ipcache, self.capacities.ipcache),
            fill("endpoint", self.fill.enforcement, self.capacities.enforcement),
        ];
        status
    }

    /// The set in effect and the cluster view it was compiled for (`None` before the first generation).
    pub fn in_effect(&self) -> (&[Arc<LoadedPolicy>], Option<&ClusterView>) {
        (&self.in_effect, self.in_effect_for.as_ref().map(|inputs| &*inputs.cluster))
    }

    /// Endpoint id -> (ingress enforced, egress enforced) in the plan in effect (nothing before the first).
    pub fn enforced(&self) -> impl Iterator<Item = (u16, bool, bool)> + '_ {
        self.plan.iter().flat_map(|p| p.enforced.iter().map(|(&id, &(ingress, egress))| (id, ingress, egress)))
    }

    /// Labels of the CIDR identities in the plan, for enrichment (`cidr:10.0.0.0/8`); an identity shared by
    /// several prefixes is labelled with the first and how many more (`cidr:172.16.0.1/32 (+1999)`).
    pub fn cidr_labels(&self) -> BTreeMap<u32, String> {
        let cidrs = || self.plan.iter().flat_map(|p| p.cidrs.iter());
        let label = |c: &flowgate_policy::CidrEntry| format!("cidr:{}/{}", c.prefix.addr(), c.prefix.prefix_len());
        let mut labels: BTreeMap<u32, String> = cidrs().map(|c| (c.identity, label(c))).collect();
        let mut shared: BTreeMap<u32, Vec<&flowgate_policy::CidrEntry>> = BTreeMap::new();
        for c in cidrs().filter(|c| c.policy_identity() != c.identity) {
            shared.entry(c.policy_identity()).or_default().push(c);
        }
        for (identity, members) in shared {
            labels.insert(identity, format!("{} (+{})", label(members[0]), members.len() - 1));
        }
        labels
    }

    /// Names of a rule id.
    pub fn rule_names(&self, rule_id: u32) -> Vec<PolicyName> {
        self.rules.names(rule_id).map(|names| names.iter().map(name).collect()).unwrap_or_default()
    }
}

/// Shared form of the snapshot.
pub type SharedPolicy = Arc<PolicySnapshot>;

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, fmt::Write as _};

    use flowgate_policy::{NamespaceInfo, PodInfo};

    use super::*;

    /// A policy directory of the test's own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!("flowgate-capacity-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn write(&self, yaml: &str) {
            std::fs::write(self.0.join("policies.yaml"), yaml).unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `pods` pods labelled app=db in namespace default, endpoint ids and addresses from 1.
    fn cluster_of(pods: u8) -> ClusterView {
        ClusterView {
            namespaces: vec![NamespaceInfo { name: "default".into(), labels: BTreeMap::new() }],
            pods: (1..=pods)
                .map(|i| PodInfo {
                    endpoint_id: u16::from(i),
                    namespace: "default".into(),
                    name: format!("db-{i}"),
                    labels: BTreeMap::from([("app".to_owned(), "db".to_owned())]),
                    ip: std::net::Ipv4Addr::new(10, 200, 0, i),
                    ipv6: None,
                    identity: 256,
                    ports: Vec::new(),
                })
                .collect(),
        }
    }

    /// The issue's set: ingress of every app=db pod from `blocks` /32 ipBlocks, over TCP, UDP and SCTP,
    /// ports `first`-65535; all blocks in one rule, or each in a rule of its own (nothing to share then).
    fn cidr_policy(name: &str, blocks: u32, first: u16, rule_per_block: bool) -> String {
        let mut yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n"
        );
        let ports: String = ["TCP", "UDP", "SCTP"]
            .iter()
            .map(|protocol| format!("    - {{protocol: {protocol}, port: {first}, endPort: 65535}}\n"))
            .collect();
        if !rule_per_block {
            yaml.push_str("  - from:\n");
        }
        for i in 0..blocks {
            if rule_per_block {
                yaml.push_str("  - from:\n");
            }
            let _ = writeln!(yaml, "    - ipBlock: {{cidr: 172.16.{}.{}/32}}", i / 250, i % 250 + 1);
            if rule_per_block {
                let _ = write!(yaml, "    ports:\n{ports}");
            }
        }
        if !rule_per_block {
            let _ = write!(yaml, "    ports:\n{ports}");
        }
        yaml
    }

    const ALLOW_ONE: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: small, \
                             namespace: default}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: \
                             {cidr: 172.16.0.1/32}\n    ports: [{port: 5432}]\n";

    #[test]
    fn the_issue_set_of_2000_blocks_and_every_port_fits_the_default_capacity() {
        let dir = Dir::new("issue");
        dir.write(&cidr_policy("wide", 2000, 1, false));
        let mut engine = PolicyEngine::new(Some(dir.0.clone()), false);
        assert!(engine.reload(), "{:?}", engine.status().errors);
        let (contents, _) = engine.prepare(cluster_of(3)).expect("fits 65,536 policy entries");
        // 3 endpoints x 3 protocols: the 2000 prefixes share one policy identity (the same block selects
        // each) and every usable port is the protocol alone. It was 2000 identities x 16 port prefixes of
        // 1-65535: 288,000 entries.
        assert_eq!(contents.policy.len(), 9);
        // The 2000 prefixes, the two worlds (0.0.0.0/0, ::/0), the three pods.
        assert_eq!(contents.ipcache.len(), 2000 + 2 + 3);
        engine.applied();
        let status = engine.status();
        assert!(status.errors.is_empty(), "{:?}", status.errors);
        assert_eq!(status.maps[0], MapFill { map: "policy".into(), entries: 9, capacity: 65_536 });
        assert_eq!(status.maps[1], MapFill { map: "ipcache".into(), entries: 2005, capacity: 16_384 });
        let labels = engine.cidr_labels();
        assert!(labels.values().any(|l| l == "cidr:172.16.0.1/32 (+1999)"), "the shared identity is labelled");
        assert!(labels.values().any(|l| l == "cidr:172.16.7.250/32"), "each prefix keeps its own label");

        // Each block in a rule of its own: nothing to share, but still one entry per protocol.
        dir.write(&cidr_policy("wide", 2000, 1, true));
        assert!(engine.reload());
        let (contents, _) = engine.prepare(cluster_of(3)).expect("fits 65,536 policy entries");
        assert_eq!(contents.policy.len(), 18_000);
    }

    #[test]
    fn a_set_over_capacity_is_refused_with_both_numbers_and_the_good_set_stays() {
        let dir = Dir::new("refuse");
        dir.write(ALLOW_ONE);
        let mut engine = PolicyEngine::new(Some(dir.0.clone()), false);
        assert!(engine.reload());
        let cluster = cluster_of(3);
        let (good, _) = engine.prepare(cluster.clone()).expect("one entry per endpoint fits");
        engine.applied();
        assert_eq!(good.policy.len(), 3);

        // A rule per block (no identity to share) and ports 2-65535 (15 aligned blocks): 3 endpoints x 2000
        // identities x 3 protocols x 15 = 270,000 entries.
        dir.write(&cidr_policy("wide", 2000, 2, true));
        assert!(engine.reload());
        let refusal = engine.prepare(cluster.clone()).map(|_| ()).expect_err("270,000 entries do not fit 65,536");
        assert_eq!((refusal.needs, refusal.capacity), (270_000, 65_536));
        let status = engine.status();
        assert_eq!(
            status.errors,
            vec![
                "policy set needs 270,000 policy entries, capacity 65,536; the last good set stays in effect (raise \
                 --policy-map-entries or simplify the policies)"
                    .to_owned()
            ]
        );
        assert_eq!(status.loaded, vec!["default/small".to_owned()], "the good set is still the one in effect");
        assert_eq!(status.revision, 1);
        assert_eq!(status.maps[0].entries, 3, "the fill of the generation in effect");

        // Nothing changed: refused again, nothing to write.
        assert!(engine.prepare(cluster.clone()).is_err());
        // A new endpoint: the set in effect is compiled for it, and the refusal is still reported.
        let (grown, _) = engine.prepare(cluster_of(4)).expect("the set in effect, for four endpoints");
        assert_eq!(grown.policy.len(), 4);
        engine.applied();
        let status = engine.status();
        assert_eq!(status.loaded, vec!["default/small".to_owned()]);
        assert_eq!(status.errors.len(), 1, "{:?}", status.errors);
        assert_eq!(status.maps[0].entries, 4);

        // Writing the good set back applies it and clears the refusal.
        dir.write(ALLOW_ONE);
        assert!(engine.reload());
        assert!(engine.prepare(cluster.clone()).is_ok());
        engine.applied();
        assert!(engine.status().errors.is_empty());
    }

    #[test]
    fn a_small_capacity_is_counted_too() {
        let dir = Dir::new("small");
        dir.write(&cidr_policy("wide", 10, 1, true));
        let mut engine = PolicyEngine::new(Some(dir.0.clone()), false);
        engine.set_capacities(Capacities { policy: 64, ..Capacities::default() });
        assert!(engine.reload());
        // At start nothing is in effect yet: the empty set is, and the refusal is reported.
        let (empty, _) = engine.prepare(cluster_of(3)).expect("the (empty) set in effect");
        assert!(empty.policy.is_empty() && empty.enforcement.is_empty());
        engine.applied();
        let status = engine.status();
        assert!(status.loaded.is_empty());
        assert!(
            status.errors[0].starts_with("policy set needs 90 policy entries, capacity 64;"),
            "{:?}",
            status.errors
        );
        engine.set_capacities(Capacities { ipcache: 10, ..Capacities::default() });
        let refusal = engine.prepare(cluster_of(3)).map(|_| ()).expect_err("15 ipcache entries do not fit 10");
        assert_eq!((refusal.what, refusal.needs, refusal.capacity), ("ipcache", 15, 10));
    }
}
