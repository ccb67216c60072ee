//! One kube-rs reflector per kind (Namespaces, Pods, NetworkPolicies): list, then watch from the list's
//! resourceVersion. A broken watch resumes from the last version seen; a `410 Gone` (history compacted) or
//! any other failure lists again, and the reflector's store swaps the new list in whole at its end, so the
//! state is never half old, half new, and an object deleted meanwhile is gone. Until every kind has had a
//! full list, [`KubeSource::snapshot`] has nothing: the agent keeps enforcing what it enforced before.

use std::{
    fmt::Debug,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use flowgate_policy::LoadedPolicy;
use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Namespace, core::v1::Pod, networking::v1::NetworkPolicy};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, reflector::Store, watcher},
};
use log::{info, warn};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    cluster::{ClusterState, Namespaces, PodRecord, Pods},
    taken::Taken,
};

/// What one kind's reflector has been through.
#[derive(Debug, Default)]
pub struct KindStats {
    /// Full lists started (1 at start; one more after each `410 Gone` or failed watch).
    pub lists: AtomicU64,
    /// Full lists completed (the store was swapped).
    pub synced_lists: AtomicU64,
    /// Changes seen on the watch (added, modified, deleted).
    pub changes: AtomicU64,
    /// Errors of the list or the watch (each followed by a retry with backoff).
    pub errors: AtomicU64,
    /// Of those, `410 Gone`: the resourceVersion was compacted away and the kind was listed again.
    pub gone: AtomicU64,
    synced: AtomicBool,
}

impl KindStats {
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// A full list completed and the store holds it (`Release`: see [`Self::version`]); returns how many
    /// lists have completed.
    pub(crate) fn mark_synced(&self) -> u64 {
        let lists = self.synced_lists.fetch_add(1, Ordering::Release) + 1;
        self.synced.store(true, Ordering::Release);
        lists
    }

    pub(crate) fn count_change(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Changes and completed lists so far: a kind whose version is the same holds what it held (see
    /// [`KubeSource::snapshot`]). Counted after the store took each (`Release`; kube-runtime's `reflector`
    /// applies an event to the store before it yields it to `reflect`), read with `Acquire`: a version read
    /// before the store was read is never newer than what the store gave.
    fn version(&self) -> u64 {
        self.changes.load(Ordering::Acquire) + self.synced_lists.load(Ordering::Acquire)
    }

    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The three reflectors' statistics.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub namespaces: KindStats,
    pub pods: KindStats,
    pub policies: KindStats,
}

impl SourceStats {
    fn kinds(&self) -> [(&'static str, &KindStats); 3] {
        [("namespaces", &self.namespaces), ("pods", &self.pods), ("networkpolicies", &self.policies)]
    }

    /// Whether every kind has completed a full list.
    pub fn is_synced(&self) -> bool {
        self.kinds().iter().all(|(_, k)| k.is_synced())
    }

    /// `namespaces: 2 lists, 1 gone, ...`, for logs and test failures.
    pub fn summary(&self) -> String {
        self.kinds()
            .iter()
            .map(|(name, k)| {
                format!(
                    "{name}: {} lists ({} completed), {} changes, {} errors ({} gone)",
                    k.lists.load(Ordering::Relaxed),
                    k.synced_lists.load(Ordering::Relaxed),
                    k.changes.load(Ordering::Relaxed),
                    k.errors.load(Ordering::Relaxed),
                    k.gone.load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The reflectors, running until this is dropped.
pub struct KubeSource {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    policies: Store<NetworkPolicy>,
    changes: watch::Receiver<u64>,
    stats: Arc<SourceStats>,
    tasks: Vec<JoinHandle<()>>,
    /// The last snapshot's parts, so the next one takes again only what changed.
    taken: Mutex<TakenObjects>,
}

/// Each kind's part of the last snapshot with the kind's version it was taken at, and the pods and
/// policies in the agent's form (each object taken once, [`Taken`]).
#[derive(Default)]
struct TakenObjects {
    namespaces: Part<Namespaces>,
    pods: Part<Pods>,
    policies: Part<Vec<Arc<LoadedPolicy>>>,
    pod_forms: Taken<Pod, PodRecord>,
    policy_forms: Taken<NetworkPolicy, LoadedPolicy>,
}

/// One kind's part of a snapshot, and the kind's version ([`KindStats::version`]) read before it was taken.
#[derive(Default)]
struct Part<T> {
    version: Option<u64>,
    part: Arc<T>,
}

impl<T> Part<T> {
    /// The part kept, if the kind is still at `version`; else `take`'s, kept for the next call.
    fn at(&mut self, version: u64, take: impl FnOnce() -> T) -> Arc<T> {
        if self.version != Some(version) {
            self.part = Arc::new(take());
            self.version = Some(version);
        }
        Arc::clone(&self.part)
    }
}

impl KubeSource {
    /// Starts the reflectors on the current tokio runtime.
    pub fn start(client: &Client) -> Self {
        let (tx, changes) = watch::channel(0u64);
        let stats = Arc::new(SourceStats::default());
        let (namespaces, ns_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (policies, policy_writer) = reflector::store();
        let tasks = vec![
            tokio::spawn(reflect(
                "namespaces",
                Api::<Namespace>::all(client.clone()),
                ns_writer,
                Arc::clone(&stats),
                |s| &s.namespaces,
                tx.clone(),
            )),
            tokio::spawn(reflect(
                "pods",
                Api::<Pod>::all(client.clone()),
                pod_writer,
                Arc::clone(&stats),
                |s| &s.pods,
                tx.clone(),
            )),
            tokio::spawn(reflect(
                "networkpolicies",
                Api::<NetworkPolicy>::all(client.clone()),
                policy_writer,
                Arc::clone(&stats),
                |s| &s.policies,
                tx,
            )),
        ];
        Self { namespaces, pods, policies, changes, stats, tasks, taken: Mutex::default() }
    }

    pub fn stats(&self) -> &Arc<SourceStats> {
        &self.stats
    }

    /// Ticks on every change of any kind (and when a list completes).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The cluster as the reflectors hold it, once every kind has been listed in full; `None` before.
    ///
    /// A kind that did not change since the last snapshot (the same version: no change and no list came
    /// since) is the last snapshot's part, not read again; in a kind that did, only the objects the store
    /// replaced are taken again. A change the store took after its kind's version was read is not lost:
    /// its count comes after, and with it a tick of [`Self::changes`].
    pub fn snapshot(&self) -> Option<ClusterState> {
        if !self.stats.is_synced() {
            return None;
        }
        let mut taken = self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let TakenObjects { namespaces, pods, policies, pod_forms, policy_forms } = &mut *taken;
        let namespaces = namespaces.at(self.stats.namespaces.version(), || {
            ClusterState::namespaces_of(self.namespaces.state().iter().map(AsRef::as_ref))
        });
        let pods = pods.at(self.stats.pods.version(), || {
            ClusterState::pods_of(pod_forms.take(&self.pods.state(), PodRecord::from_pod))
        });
        let policies = policies.at(self.stats.policies.version(), || {
            ClusterState::sorted(
                policy_forms.take(&self.policies.state(), |object| Some(ClusterState::policy_of(object))),
            )
        });
        Some(ClusterState { namespaces, pods, policies })
    }

    /// Waits until every kind has been listed in full, or `timeout`; returns whether it was.
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
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Runs one kind's reflector forever, counting what happens and ticking `changes`.
async fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    stats: Arc<SourceStats>,
    select: fn(&SourceStats) -> &KindStats,
    changes: watch::Sender<u64>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let tick = || changes.send_modify(|n| *n += 1);
    while let Some(item) = stream.next().await {
        let counts = select(&stats);
        match item {
            Ok(watcher::Event::Init) => {
                counts.lists.fetch_add(1, Ordering::Relaxed);
            }
            Ok(watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                let lists = counts.mark_synced();
                if lists > 1 {
                    info!("kubernetes: {kind} listed again (list {lists}); state replaced by the new list");
                }
                tick();
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                counts.count_change();
                tick();
            }
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                let gone = match &e {
                    watcher::Error::WatchError(status) => status.code == 410,
                    watcher::Error::WatchStartFailed(kube::Error::Api(status))
                    | watcher::Error::InitialListFailed(kube::Error::Api(status))
                    | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
                    _ => false,
                };
                if gone {
                    counts.gone.fetch_add(1, Ordering::Relaxed);
                    warn!("kubernetes: watching {kind}: {e}; its history is gone, listing again");
                } else {
                    warn!("kubernetes: watching {kind}: {e}; retrying");
                }
            }
        }
    }
}
