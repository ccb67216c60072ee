//! Cluster-wide identities through the API server (`deploy/identity-crd.yaml`, as Cilium's CiliumIdentity):
//! one `FlowgateIdentity` object per number, named by the number, holding the security labels. An agent
//! that needs the identity of a label set takes the lowest number whose object holds those labels; when
//! there is none it creates the object under the lowest free number (the server refuses a second object of
//! that name, so a number never stands for two label sets; on that conflict the next number is tried). Two
//! agents that create objects for the same new labels at the same moment both succeed under different
//! numbers; both then see both objects and take the lower one, so every node converges on one number.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use flowgate_common::identity::FIRST_ALLOCATED;
use futures::StreamExt as _;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt as _, reflector, reflector::Store, watcher},
};
use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use super::source::KindStats;

/// The highest number allocated through the API server (as Cilium's cluster-local range ends at 65535).
pub const LAST_CLUSTER_IDENTITY: u32 = 65_535;

/// One cluster-wide identity: `metadata.name` is the number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowgateIdentity {
    #[serde(default = "FlowgateIdentity::api_version_value")]
    pub api_version: String,
    #[serde(default = "FlowgateIdentity::kind_value")]
    pub kind: String,
    pub metadata: ObjectMeta,
    /// Sorted security labels (`k8s:app=web`, `k8s:io.kubernetes.pod.namespace=default`, ...).
    pub security_labels: Vec<String>,
}

impl FlowgateIdentity {
    fn api_version_value() -> String {
        "flowgate.io/v1alpha1".to_owned()
    }

    fn kind_value() -> String {
        "FlowgateIdentity".to_owned()
    }

    pub fn new(number: u32, security_labels: Vec<String>) -> Self {
        Self {
            api_version: Self::api_version_value(),
            kind: Self::kind_value(),
            metadata: ObjectMeta { name: Some(number.to_string()), ..ObjectMeta::default() },
            security_labels,
        }
    }

    /// The number, when the name is one in the allocated range.
    pub fn number(&self) -> Option<u32> {
        let number: u32 = self.metadata.name.as_deref()?.parse().ok()?;
        (FIRST_ALLOCATED..=LAST_CLUSTER_IDENTITY).contains(&number).then_some(number)
    }
}

impl kube::Resource for FlowgateIdentity {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("FlowgateIdentity")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("flowgate.io")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1alpha1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("flowgateidentities")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A problem allocating identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("creating FlowgateIdentity {number} for {labels:?}: {source}")]
    Create {
        number: u32,
        labels: Vec<String>,
        #[source]
        source: kube::Error,
    },
    #[error("reading FlowgateIdentity {number}: {source}")]
    Get {
        number: u32,
        #[source]
        source: kube::Error,
    },
    #[error("no free identity number left between {FIRST_ALLOCATED} and {LAST_CLUSTER_IDENTITY}")]
    Exhausted,
    #[error("the FlowgateIdentity objects are not listed yet")]
    NotSynced,
}

/// Label set -> the lowest number of the objects holding it, from `objects`.
pub fn lowest_by_labels<'a>(objects: impl IntoIterator<Item = &'a FlowgateIdentity>) -> BTreeMap<Vec<String>, u32> {
    let mut out: BTreeMap<Vec<String>, u32> = BTreeMap::new();
    for object in objects {
        let Some(number) = object.number() else { continue };
        out.entry(object.security_labels.clone()).and_modify(|n| *n = (*n).min(number)).or_insert(number);
    }
    out
}

/// The cluster's identities, watched, and the allocation of new ones.
pub struct ClusterIdentities {
    api: Api<FlowgateIdentity>,
    store: Store<FlowgateIdentity>,
    stats: Arc<KindStats>,
    changes: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl ClusterIdentities {
    /// Starts watching the FlowgateIdentity objects on the current tokio runtime.
    pub fn start(client: &Client) -> Self {
        let api = Api::<FlowgateIdentity>::all(client.clone());
        let (store, writer) = reflector::store();
        let (tx, changes) = watch::channel(0u64);
        let stats = Arc::new(KindStats::default());
        let task = tokio::spawn(reflect(api.clone(), writer, Arc::clone(&stats), tx));
        Self { api, store, stats, changes, task }
    }

    pub fn stats(&self) -> &Arc<KindStats> {
        &self.stats
    }

    /// Ticks when an identity object appears or goes (and when a list completes).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Label set -> number, as the objects listed so far say (lowest number per label set).
    pub fn known(&self) -> BTreeMap<Vec<String>, u32> {
        lowest_by_labels(self.store.state().iter().map(AsRef::as_ref))
    }

    /// Waits until the objects have been listed in full, or `timeout`; returns whether they were.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut changes = self.changes();
        tokio::time::timeout(timeout, async {
            while !self.stats.is_synced() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && self.stats.is_synced()
    }

    /// The number of every label set in `wanted`, creating objects for the new ones. Needs a full list
    /// first: before it, a label set that has a number would get a second one.
    pub async fn resolve(&self, wanted: &BTreeSet<Vec<String>>) -> Result<BTreeMap<Vec<String>, u32>, IdentityError> {
        if !self.stats.is_synced() {
            return Err(IdentityError::NotSynced);
        }
        let objects = self.store.state();
        let mut known = lowest_by_labels(objects.iter().map(AsRef::as_ref));
        let mut taken: BTreeSet<u32> = objects.iter().filter_map(|o| o.number()).collect();
        let mut candidates = FIRST_ALLOCATED..=LAST_CLUSTER_IDENTITY;
        for labels in wanted {
            if known.contains_key(labels) {
                continue;
            }
            let number = loop {
                let Some(number) = candidates.by_ref().find(|n| !taken.contains(n)) else {
                    return Err(IdentityError::Exhausted);
                };
                taken.insert(number);
                let object = FlowgateIdentity::new(number, labels.clone());
                match self.api.create(&PostParams::default(), &object).await {
                    Ok(_) => {
                        info!("identity {number} allocated for {}", labels.join(","));
                        break number;
                    }
                    // Another agent took this number first: for these labels (use it) or others (next one).
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        let existing = self
                            .api
                            .get(&number.to_string())
                            .await
                            .map_err(|source| IdentityError::Get { number, source })?;
                        if existing.security_labels == *labels {
                            break number;
                        }
                    }
                    Err(source) => return Err(IdentityError::Create { number, labels: labels.clone(), source }),
                }
            };
            known.insert(labels.clone(), number);
        }
        Ok(wanted.iter().filter_map(|l| Some((l.clone(), *known.get(l)?))).collect())
    }
}

impl Drop for ClusterIdentities {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn reflect(
    api: Api<FlowgateIdentity>,
    writer: reflector::store::Writer<FlowgateIdentity>,
    stats: Arc<KindStats>,
    changes: watch::Sender<u64>,
) {
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(watcher::Event::InitDone) => {
                stats.mark_synced();
                changes.send_modify(|n| *n += 1);
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                stats.count_change();
                changes.send_modify(|n| *n += 1);
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) => {
                stats.count_error();
                warn!("kubernetes: watching flowgateidentities: {e}; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_number_wins_and_foreign_names_are_ignored() {
        let labels = vec!["k8s:app=web".to_owned()];
        let objects = [
            FlowgateIdentity::new(300, labels.clone()),
            FlowgateIdentity::new(257, labels.clone()),
            FlowgateIdentity::new(258, vec!["k8s:app=db".to_owned()]),
            FlowgateIdentity {
                metadata: ObjectMeta { name: Some("web".into()), ..Default::default() },
                ..Default::default()
            },
            FlowgateIdentity::new(7, vec!["k8s:app=reserved".to_owned()]),
        ];
        let lowest = lowest_by_labels(&objects);
        assert_eq!(lowest[&labels], 257);
        assert_eq!(lowest[&vec!["k8s:app=db".to_owned()]], 258);
        assert_eq!(lowest.len(), 2, "{lowest:?}");
    }

    #[test]
    fn serializes_as_the_crd_expects() {
        let json = serde_json::to_value(FlowgateIdentity::new(256, vec!["k8s:a=b".into()])).unwrap();
        assert_eq!(json["apiVersion"], "flowgate.io/v1alpha1");
        assert_eq!(json["kind"], "FlowgateIdentity");
        assert_eq!(json["metadata"]["name"], "256");
        assert_eq!(json["securityLabels"][0], "k8s:a=b");
    }
}
