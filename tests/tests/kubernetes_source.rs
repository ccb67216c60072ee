//! The agent's Kubernetes source on the real API server, as the agent's own ServiceAccount: it lists pods,
//! namespaces and NetworkPolicies, follows changes, and after changes it could not see (made through another
//! API server while its own was down), a compacted etcd (`410 Gone`) and an API server restart, it lists
//! again and holds exactly the cluster's state: nothing lost, nothing twice, nothing stale.

use std::{
    net::Ipv4Addr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use flowgate_agent::kubernetes::{ClusterState, KubeSource, client};
use flowgate_tests::{
    control_plane::ControlPlane,
    kubelet::{self, PodSpec},
};

const POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-backend
  namespace: shop
spec:
  podSelector:
    matchLabels: {component: database}
  ingress:
    - from:
        - podSelector:
            matchLabels: {component: backend}
      ports:
        - port: db
";

fn pod<'a>(name: &'a str, node: &'a str, component: &'a str, ip: [u8; 4]) -> PodSpec<'a> {
    PodSpec {
        namespace: "shop",
        name,
        node,
        labels: vec![("component", component)],
        ports: vec![("db", 5432, "TCP")],
        ip: Ipv4Addr::from(ip),
        ipv6: None,
    }
}

/// Waits until the source's snapshot satisfies `check`; panics with the last snapshot and the stats.
async fn wait_for(source: &KubeSource, what: &str, timeout: Duration, check: impl Fn(&ClusterState) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let snapshot = source.snapshot();
        if snapshot.as_ref().is_some_and(&check) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen after {timeout:?}\nsnapshot: {snapshot:#?}\nsource: {}",
            source.stats().summary()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn shop(name: &str) -> (String, String) {
    ("shop".to_owned(), name.to_owned())
}

fn pod_names(state: &ClusterState) -> Vec<String> {
    state.pods.values().map(|p| p.pod_ref()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_follows_and_resyncs_after_gone_and_an_api_server_restart() {
    flowgate_tests::require_root();
    let mut plane = ControlPlane::start("source");
    plane.apply(&kubelet::namespace_manifest("shop", &[("team", "shop")]));
    kubelet::run_pod(&plane, &pod("database", "node-1", "database", [10, 1, 0, 10]));
    kubelet::run_pod(&plane, &pod("backend", "node-2", "backend", [10, 1, 1, 11]));
    plane.apply(POLICY);

    let agent = client::connect(Some(plane.agent_kubeconfig())).await.expect("client as the agent");
    let source = KubeSource::start(&agent);
    assert!(source.wait_synced(Duration::from_secs(30)).await, "not synced: {}", source.stats().summary());
    let state = source.snapshot().expect("synced");
    assert_eq!(pod_names(&state), ["shop/backend", "shop/database"]);
    assert_eq!(state.namespace_labels("shop").get("team").map(String::as_str), Some("shop"));
    assert_eq!(state.policies.len(), 1);
    let local: Vec<_> = state.local_pods("node-1").map(|p| (p.pod_ref(), p.ipv4)).collect();
    assert_eq!(local, [("shop/database".to_owned(), Some(Ipv4Addr::new(10, 1, 0, 10)))]);
    assert_eq!(state.addressed_pods().count(), 2);

    // Live changes arrive on the watch.
    plane.kubectl_ok(&["label", "namespace", "shop", "team=shop-2", "--overwrite"]);
    kubelet::run_pod(&plane, &pod("frontend", "node-1", "frontend", [10, 1, 0, 12]));
    wait_for(&source, "live changes", Duration::from_secs(20), |s| {
        s.namespace_labels("shop").get("team").map(String::as_str) == Some("shop-2")
            && s.pods.get(&shop("frontend")).is_some_and(|p| p.ipv4.is_some())
    })
    .await;

    // A snapshot shares what did not change with the one before it: a kind unchanged is the same part, a
    // pod unchanged the same record. A relabelled pod is taken again, and only it.
    let before = source.snapshot().expect("synced");
    let again = source.snapshot().expect("synced");
    assert!(
        Arc::ptr_eq(&before.namespaces, &again.namespaces)
            && Arc::ptr_eq(&before.pods, &again.pods)
            && Arc::ptr_eq(&before.policies, &again.policies),
        "nothing changed between two snapshots: {}",
        source.stats().summary()
    );
    plane.kubectl_ok(&["label", "pod", "-n", "shop", "frontend", "tier=web"]);
    wait_for(&source, "a pod relabelled", Duration::from_secs(20), |s| {
        s.pods[&shop("frontend")].labels.get("tier").map(String::as_str) == Some("web")
    })
    .await;
    let after = source.snapshot().expect("synced");
    assert!(Arc::ptr_eq(&before.namespaces, &after.namespaces) && Arc::ptr_eq(&before.policies, &after.policies));
    assert!(Arc::ptr_eq(&before.pods[&shop("database")], &after.pods[&shop("database")]), "database not changed");
    assert_eq!(before.pods[&shop("database")], after.pods[&shop("database")]);
    assert!(!Arc::ptr_eq(&before.pods[&shop("frontend")], &after.pods[&shop("frontend")]));
    let lists_before = source.stats().pods.lists.load(Ordering::Relaxed);

    // Changes the source cannot see: its API server is down, another one (same etcd) takes them.
    let compacted_at = plane.with_apiserver_elsewhere(|plane, elsewhere| {
        kubelet::run_pod_at(plane, elsewhere, &pod("cache", "node-2", "cache", [10, 1, 1, 13]));
        plane.kubectl_at(elsewhere, &["label", "pod", "-n", "shop", "database", "tier=data"], None);
        plane.kubectl_at(elsewhere, &["delete", "networkpolicy", "-n", "shop", "db-from-backend"], None);
        plane.kubectl_at(elsewhere, &["label", "namespace", "shop", "team=shop-3", "--overwrite"], None);
        // No kubelet confirms a graceful deletion: remove the pod for good.
        plane.kubectl_at(elsewhere, &["delete", "pod", "-n", "shop", "backend", "--grace-period=0", "--force"], None);
        plane.compact_etcd()
    });
    plane.start_apiserver_again();

    wait_for(&source, "the changes made while away", Duration::from_secs(90), |s| {
        pod_names(s) == ["shop/cache", "shop/database", "shop/frontend"]
            && s.policies.is_empty()
            && s.namespace_labels("shop").get("team").map(String::as_str) == Some("shop-3")
            && s.pods[&("shop".to_owned(), "database".to_owned())].labels.get("tier").map(String::as_str)
                == Some("data")
    })
    .await;
    let stats = source.stats();
    assert!(
        stats.pods.gone.load(Ordering::Relaxed) >= 1 && stats.pods.lists.load(Ordering::Relaxed) > lists_before,
        "pods must have been listed again after 410 Gone (etcd compacted at {compacted_at}): {}",
        stats.summary()
    );

    // And the source keeps following the watch after the re-list.
    plane.kubectl_ok(&["delete", "pod", "-n", "shop", "frontend", "--grace-period=0", "--force"]);
    wait_for(&source, "a deletion after the re-list", Duration::from_secs(20), |s| {
        pod_names(s) == ["shop/cache", "shop/database"]
    })
    .await;
    // Exactly the server's state, compared with what the admin lists now.
    let listed = plane.kubectl_ok(&["get", "pods", "-A", "-o", "jsonpath={.items[*].metadata.name}"]);
    let mut listed: Vec<&str> = listed.split_whitespace().collect();
    listed.sort_unstable();
    assert_eq!(listed, ["cache", "database"]);
}
