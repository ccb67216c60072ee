//! The agent's policy engine: reads NetworkPolicy sources (a watched directory), keeps the last good set
//! when a change is invalid (and says why in `status`), compiles the set against the node's endpoints
//! ([`flowgate_policy`]), realizes it into map contents ([`realize`]) and answers what the monitor needs
//! to attribute verdicts ([`PolicySnapshot`]).

pub mod realize;

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
};

use flowgate_common::policy::direction;
use flowgate_policy::{CidrIdentities, ClusterView, LoadedPolicy, PolicyPlan, PolicyRef, compile};
use flowgate_proto::{flow::PolicyName, message::PolicyStatus};

use flowgate_events::enrich::PolicyLookup;
use realize::{Audit, MapContents, RuleTable};

fn name(p: &PolicyRef) -> PolicyName {
    PolicyName { namespace: p.namespace.clone(), name: p.name.clone() }
}

/// What enrichment needs to name the policies behind a verdict; swapped whole on every change.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    rules: HashMap<u32, Vec<PolicyName>>,
    /// (endpoint id, `policy::direction`) -> policies selecting the endpoint for that direction.
    isolation: HashMap<(u16, u8), Vec<PolicyName>>,
}

impl PolicyLookup for PolicySnapshot {
    fn rule(&self, rule_id: u32) -> Vec<PolicyName> {
        self.rules.get(&rule_id).cloned().unwrap_or_default()
    }

    fn isolated_by(&self, endpoint_id: u16, direction: u8) -> Vec<PolicyName> {
        self.isolation.get(&(endpoint_id, direction)).cloned().unwrap_or_default()
    }
}

/// Policies in effect and what to do with the next change.
pub struct PolicyEngine {
    dir: Option<PathBuf>,
    /// The last set that loaded and validated without error.
    good: Vec<LoadedPolicy>,
    cidr_identities: CidrIdentities,
    rules: RuleTable,
    pub audit: Audit,
    plan: Option<PolicyPlan>,
    status: PolicyStatus,
}

impl PolicyEngine {
    pub fn new(dir: Option<PathBuf>, audit_all: bool) -> Self {
        Self {
            dir,
            good: Vec::new(),
            cidr_identities: CidrIdentities::new(),
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
        match flowgate_policy::load_dir(dir) {
            Ok(policies) => {
                self.status.errors.clear();
                let changed = policies != self.good;
                self.good = policies;
                changed
            }
            Err(errors) => {
                self.status.errors = errors.iter().map(ToString::to_string).collect();
                false
            }
        }
    }

    /// Compiles the good set for `cluster` and returns the map contents of the new generation, with
    /// the snapshot enrichment uses. The caller writes the contents and then calls [`Self::applied`].
    pub fn prepare(&mut self, cluster: &ClusterView) -> (MapContents, PolicySnapshot) {
        let plan = compile(&self.good, cluster, &mut self.cidr_identities);
        let pods: Vec<(Ipv4Addr, u32)> = cluster.pods.iter().map(|p| (p.ip, p.identity)).collect();
        let contents = realize::realize(&plan, &pods, &self.audit, &mut self.rules);
        let mut snapshot = PolicySnapshot::default();
        for (_, _, value) in &contents.policy {
            if let Some(names) = self.rules.names(value.rule_id) {
                snapshot.rules.insert(value.rule_id, names.to_vec());
            }
        }
        for (&id, ep) in &plan.endpoints {
            for (dir, policy) in [(direction::INGRESS, &ep.ingress), (direction::EGRESS, &ep.egress)] {
                if policy.enforced {
                    snapshot.isolation.insert((id, dir), policy.selected_by.iter().map(name).collect());
                }
            }
        }
        self.plan = Some(plan);
        (contents, snapshot)
    }

    /// Records that the prepared generation is in effect.
    pub fn applied(&mut self) {
        self.status.revision += 1;
        let mut loaded: Vec<String> = self.good.iter().map(|p| format!("{}/{}", p.namespace(), p.name())).collect();
        loaded.sort();
        loaded.dedup();
        self.status.loaded = loaded;
        self.status.audit_mode = self.audit.all;
    }

    pub fn status(&self) -> PolicyStatus {
        self.status.clone()
    }

    /// The plan in effect.
    pub fn plan(&self) -> Option<&PolicyPlan> {
        self.plan.as_ref()
    }

    /// Labels of the CIDR identities in the plan, for enrichment (`cidr:10.0.0.0/8`).
    pub fn cidr_labels(&self) -> BTreeMap<u32, String> {
        self.plan
            .iter()
            .flat_map(|p| p.cidrs.iter())
            .map(|c| (c.identity, format!("cidr:{}/{}", c.prefix.addr(), c.prefix.prefix_len())))
            .collect()
    }

    /// Names of a rule id.
    pub fn rule_names(&self, rule_id: u32) -> Vec<PolicyName> {
        self.rules.names(rule_id).map(<[PolicyName]>::to_vec).unwrap_or_default()
    }
}

/// Shared form of the snapshot.
pub type SharedPolicy = Arc<PolicySnapshot>;
