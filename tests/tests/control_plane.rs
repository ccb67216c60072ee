//! The tests' control plane is the real thing: etcd and kube-apiserver with RBAC, the agent's identity may
//! read what it needs and nothing more, the API server's own validation refuses a bad NetworkPolicy, and a
//! compacted etcd plus an API server restart make an old resourceVersion `410 Gone`.

use flowgate_tests::control_plane::ControlPlane;
use k8s_openapi::api::{core::v1::Namespace, networking::v1::NetworkPolicy};
use kube::{
    Api,
    api::{ListParams, PostParams, WatchEvent, WatchParams},
};

const NAMESPACE_AND_POLICY: &str = r"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: shop}
---
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
        - port: 5432
";

/// `endPort` below `port`: the API server refuses it.
const BAD_POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: backwards-range
  namespace: shop
spec:
  podSelector: {}
  ingress:
    - ports:
        - port: 9000
          endPort: 8000
";

fn is_forbidden(result: &Result<impl std::fmt::Debug, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_reads_and_may_not_write_and_the_server_validates() {
    flowgate_tests::require_root();
    let plane = ControlPlane::start("rbac");
    plane.apply(NAMESPACE_AND_POLICY);

    // The agent's ServiceAccount reads what the admin wrote.
    let agent = plane.agent_client().await;
    let namespaces: Api<Namespace> = Api::all(agent.clone());
    let shop = namespaces.get("shop").await.expect("the agent gets namespace shop");
    assert_eq!(shop.metadata.labels.as_ref().and_then(|l| l.get("team")).map(String::as_str), Some("shop"));
    let policies: Api<NetworkPolicy> = Api::all(agent.clone());
    let listed = policies.list(&ListParams::default()).await.expect("the agent lists NetworkPolicies");
    let names: Vec<_> = listed.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names, ["db-from-backend"]);

    // ... and may not write anything.
    let in_shop: Api<NetworkPolicy> = Api::namespaced(agent.clone(), "shop");
    let mut copy = listed.items[0].clone();
    copy.metadata = kube::api::ObjectMeta { name: Some("copy".into()), ..Default::default() };
    let created = in_shop.create(&PostParams::default(), &copy).await;
    assert!(is_forbidden(&created), "the agent must not create a NetworkPolicy: {created:?}");
    let deleted = in_shop.delete("db-from-backend", &Default::default()).await;
    assert!(is_forbidden(&deleted), "the agent must not delete a NetworkPolicy: {deleted:?}");
    let labelled = namespaces
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": "x"}}})),
        )
        .await;
    assert!(is_forbidden(&labelled), "the agent must not label a namespace: {labelled:?}");
    let secrets = plane.kubectl_as_agent(&["get", "secrets", "-A"]);
    assert!(!secrets.status.success(), "the agent must not read secrets");
    assert!(String::from_utf8_lossy(&secrets.stderr).contains("Forbidden"), "{secrets:?}");

    // Cluster identities: the agent may create one, not change or delete it; the server checks the schema.
    let identity = r#"{"apiVersion": "flowgate.io/v1alpha1", "kind": "FlowgateIdentity",
        "metadata": {"name": "300"}, "securityLabels": ["k8s:app=web"]}"#;
    let created = plane.kubectl_with_stdin_as_agent(&["create", "-f", "-"], identity);
    assert!(created.status.success(), "the agent creates an identity: {created:?}");
    let relabel = plane.kubectl_as_agent(&[
        "patch",
        "flowgateidentity",
        "300",
        "--type=merge",
        "-p",
        r#"{"securityLabels": ["k8s:app=db"]}"#,
    ]);
    assert!(String::from_utf8_lossy(&relabel.stderr).contains("Forbidden"), "{relabel:?}");
    let delete = plane.kubectl_as_agent(&["delete", "flowgateidentity", "300"]);
    assert!(String::from_utf8_lossy(&delete.stderr).contains("Forbidden"), "{delete:?}");
    let relabel = plane.kubectl(&[
        "patch",
        "flowgateidentity",
        "300",
        "--type=merge",
        "-p",
        r#"{"securityLabels": ["k8s:app=db"]}"#,
    ]);
    assert!(String::from_utf8_lossy(&relabel.stderr).contains("an identity's labels never change"), "{relabel:?}");
    let misnamed = plane.kubectl_stdin(&["create", "-f", "-"], &identity.replace("\"300\"", "\"web\""));
    assert!(String::from_utf8_lossy(&misnamed.stderr).contains("the name is the identity number"), "{misnamed:?}");
    let reserved = plane.kubectl_stdin(&["create", "-f", "-"], &identity.replace("\"300\"", "\"2\""));
    assert!(!reserved.status.success(), "a reserved number is refused: {reserved:?}");

    // The API server's own validation refuses a bad policy, and says where.
    let bad = plane.kubectl_stdin(&["apply", "-f", "-"], BAD_POLICY);
    assert!(!bad.status.success(), "a NetworkPolicy with endPort < port must be refused");
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(message.contains("spec.ingress[0].ports[0].endPort"), "{message}");
    assert!(plane.kubectl(&["get", "networkpolicy", "-n", "shop", "backwards-range"]).status.code() != Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn compacted_history_is_gone_after_an_api_server_restart() {
    flowgate_tests::require_root();
    let mut plane = ControlPlane::start("compact");
    plane.apply(NAMESPACE_AND_POLICY);
    let admin = plane.admin_client().await;
    let policies: Api<NetworkPolicy> = Api::namespaced(admin, "shop");
    let old = policies.list(&ListParams::default()).await.expect("list policies");
    let old_version = old.metadata.resource_version.expect("a list has a resourceVersion");
    for team in ["a", "b", "c"] {
        plane.kubectl_ok(&["label", "namespace", "shop", &format!("team={team}"), "--overwrite"]);
    }
    let compacted = plane.compact_etcd();
    assert!(compacted > old_version.parse::<i64>().expect("numeric resourceVersion"));
    plane.restart_apiserver();

    let admin = plane.admin_client().await;
    let policies: Api<NetworkPolicy> = Api::namespaced(admin, "shop");
    let gone = match policies.watch(&WatchParams::default(), &old_version).await {
        Err(kube::Error::Api(status)) => status.code == 410,
        Ok(stream) => {
            use futures::StreamExt as _;
            let mut stream = Box::pin(stream);
            matches!(stream.next().await, Some(Ok(WatchEvent::Error(e))) if e.code == 410)
        }
        Err(other) => panic!("watching from {old_version}: {other}"),
    };
    assert!(gone, "a watch from resourceVersion {old_version} (compacted at {compacted}) must be 410 Gone");
}
