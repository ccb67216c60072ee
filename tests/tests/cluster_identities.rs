//! Cluster-wide identities on the real API server: two agents (two clients as the agent's ServiceAccount)
//! allocating numbers for the same label sets at the same moment end up with the same number for each set,
//! a number never stands for two label sets, and an agent started later takes the numbers already there.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use flowgate_agent::kubernetes::{ClusterIdentities, FlowgateIdentity, client};
use flowgate_tests::control_plane::ControlPlane;
use kube::{Api, api::ListParams};

fn label_sets(n: usize) -> BTreeSet<Vec<String>> {
    (0..n).map(|i| vec![format!("k8s:app=app-{i}"), "k8s:io.kubernetes.pod.namespace=default".to_owned()]).collect()
}

async fn started(plane: &ControlPlane) -> ClusterIdentities {
    let client = client::connect(Some(plane.agent_kubeconfig())).await.expect("client as the agent");
    let identities = ClusterIdentities::start(&client);
    assert!(identities.wait_synced(Duration::from_secs(30)).await, "identities not listed");
    identities
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_racing_for_the_same_labels_agree_on_one_number() {
    flowgate_tests::require_root();
    let plane = ControlPlane::start("identities");
    let (a, b) = (started(&plane).await, started(&plane).await);
    let wanted = label_sets(20);

    let (from_a, from_b) = tokio::join!(a.resolve(&wanted), b.resolve(&wanted));
    let (from_a, from_b) = (from_a.expect("agent a allocates"), from_b.expect("agent b allocates"));
    assert_eq!(from_a.len(), wanted.len());
    assert_eq!(from_b.len(), wanted.len());

    // Once each has seen the other's objects, both give every label set the same (lowest) number.
    let deadline = Instant::now() + Duration::from_secs(20);
    let agreed = loop {
        let (again_a, again_b) = (a.resolve(&wanted).await.unwrap(), b.resolve(&wanted).await.unwrap());
        if again_a == again_b {
            break again_a;
        }
        assert!(Instant::now() < deadline, "no agreement:\n{again_a:?}\n{again_b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // On the server: every number stands for one label set, and each agreed number is the lowest for its set.
    let admin = plane.admin_client().await;
    let objects = Api::<FlowgateIdentity>::all(admin).list(&ListParams::default()).await.expect("list identities");
    let mut by_number = BTreeMap::new();
    for object in &objects.items {
        let number = object.number().expect("a numeric name");
        assert!(by_number.insert(number, object.security_labels.clone()).is_none());
    }
    for (labels, number) in &agreed {
        assert_eq!(&by_number[number], labels, "identity {number}");
        let lowest = by_number.iter().filter(|(_, l)| *l == labels).map(|(n, _)| *n).min();
        assert_eq!(lowest, Some(*number));
    }
    let distinct: BTreeSet<u32> = agreed.values().copied().collect();
    assert_eq!(distinct.len(), wanted.len(), "different labels, different numbers");

    // An agent started later creates nothing for label sets that have numbers.
    let count = objects.items.len();
    let c = started(&plane).await;
    assert_eq!(c.resolve(&wanted).await.unwrap(), agreed);
    let admin = plane.admin_client().await;
    let after = Api::<FlowgateIdentity>::all(admin).list(&ListParams::default()).await.unwrap();
    assert_eq!(after.items.len(), count, "no new objects for known labels");
}
