//! Every manifest of `deploy/` is created on the real API server (its schema checks, the CRD's rules), and
//! the agent's ServiceAccount may do exactly what the agent needs, as the server's RBAC answers it.

use flowgate_tests::control_plane::{AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, ControlPlane, deploy_file};

#[test]
fn every_manifest_is_created_and_rbac_allows_only_what_the_agent_needs() {
    flowgate_tests::require_root();
    let plane = ControlPlane::start("deploy");
    let dir = deploy_file("");
    let applied = plane.kubectl_ok(&["apply", "-f", dir.to_str().unwrap()]);
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/flowgateidentities.flowgate.io",
        "clusterrole.rbac.authorization.k8s.io/flowgate-agent",
        "daemonset.apps/flowgate",
    ] {
        assert!(applied.contains(object), "{object} in:\n{applied}");
    }
    let env = plane.kubectl_ok(&[
        "get",
        "daemonset",
        "-n",
        AGENT_NAMESPACE,
        "flowgate",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath}",
    ]);
    assert_eq!(env, "spec.nodeName", "the node name comes from the downward API");

    let who = format!("system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}");
    let can = |verb: &str, resource: &str| {
        let out = plane.kubectl(&["auth", "can-i", verb, resource, "--all-namespaces", "--as", &who]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for resource in
        ["pods", "namespaces", "nodes", "networkpolicies.networking.k8s.io", "flowgateidentities.flowgate.io"]
    {
        for verb in ["get", "list", "watch"] {
            assert!(can(verb, resource), "the agent may {verb} {resource}");
        }
    }
    assert!(can("create", "flowgateidentities.flowgate.io"));
    for (verb, resource) in [
        ("update", "flowgateidentities.flowgate.io"),
        ("delete", "flowgateidentities.flowgate.io"),
        ("create", "pods"),
        ("patch", "pods"),
        ("update", "networkpolicies.networking.k8s.io"),
        ("patch", "namespaces"),
        ("get", "secrets"),
        ("get", "configmaps"),
    ] {
        assert!(!can(verb, resource), "the agent may not {verb} {resource}");
    }
}
