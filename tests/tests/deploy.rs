//! Every manifest of `deploy/` is created on the real API server (its schema checks, the CRD's rules, the
//! DaemonSet's readiness probe), the agent's ServiceAccount may do exactly what the agent needs, as the server's
//! RBAC answers it, and the image build (`Dockerfile`) holds the binaries the DaemonSet runs.

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
    let readiness = plane.kubectl_ok(&[
        "get",
        "daemonset",
        "-n",
        AGENT_NAMESPACE,
        "flowgate",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].readinessProbe.exec.command}",
    ]);
    assert_eq!(
        readiness, r#"["flowgate","status","--socket","/run/flowgate/flowgate.sock"]"#,
        "ready once the agent answers `flowgate status` on its socket"
    );

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

/// The `[[bin]]` names of a crate's manifest.
fn binaries(manifest: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_file(manifest)).unwrap_or_else(|e| panic!("read {manifest}: {e}"));
    text.split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            let line = section.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect()
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The image is built by `make image` (scripts/build-image.sh: buildah, base images made locally, since no
/// registry is reachable here), which takes about a quarter of an hour of compiling and is not part of
/// `make test`; here the Dockerfile's shape is checked against what it must agree with: a build stage that
/// builds the agent and the CLI binaries by
/// their Cargo names with the eBPF toolchain `agent/build.rs` pins, and a runtime stage holding exactly those
/// binaries, which are the ones the DaemonSet runs (the agent, and the CLI of its readiness probe).
#[test]
fn the_image_holds_the_binaries_the_build_produces_and_the_daemonset_runs() {
    let dockerfile = std::fs::read_to_string(repo_file("Dockerfile")).expect("read Dockerfile");
    let stages: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    assert!(stages[0].ends_with(" AS build") && stages[1].ends_with(" AS runtime"), "{stages:?}");
    assert!(
        dockerfile.contains("ARG RUNTIME_IMAGE=debian:bookworm-slim") && stages[1].contains("${RUNTIME_IMAGE}"),
        "the runtime stage is Debian 12 slim unless `make image` passes its own build of it: {stages:?}"
    );
    let (build, runtime) = dockerfile.split_once(stages[1]).expect("the runtime stage follows the build stage");

    let build_rs = std::fs::read_to_string(repo_file("agent/build.rs")).expect("read agent/build.rs");
    let pinned = build_rs
        .lines()
        .find_map(|l| l.strip_prefix("const EBPF_TOOLCHAIN: &str = \""))
        .and_then(|rest| rest.split('"').next())
        .expect("agent/build.rs pins the eBPF toolchain");
    assert!(build.contains(&format!("ARG EBPF_TOOLCHAIN={pinned}")), "the build stage installs {pinned}");
    assert!(build.contains("rust-src") && build.contains("bpf-linker") && build.contains("llvm-22"));

    let agent = binaries("agent/Cargo.toml");
    let cli = binaries("monitor-cli/Cargo.toml");
    assert!(agent.contains(&"flowgate-agent".to_owned()) && cli.contains(&"flowgate".to_owned()), "{agent:?} {cli:?}");
    let build_line = build.lines().find(|l| l.contains("cargo build --release")).expect("the build stage builds");
    let copy = runtime.lines().find(|l| l.starts_with("COPY --from=build")).expect("the runtime stage copies");
    for binary in ["flowgate-agent", "flowgate"] {
        assert!(build_line.contains(&format!("--bin {binary} ")) || build_line.ends_with(&format!("--bin {binary}")));
        assert!(
            build.contains(&format!("target/release/{binary} "))
                || build.contains(&format!("target/release/{binary}\n"))
        );
        assert!(copy.contains(&format!("/out/{binary} ")), "{copy}");
    }

    let daemonset = std::fs::read_to_string(deploy_file("daemonset.yaml")).expect("read daemonset.yaml");
    assert!(daemonset.contains("command: [flowgate-agent]"), "the DaemonSet runs the image's agent");
    assert!(
        daemonset.contains("command: [flowgate, status, --socket, /run/flowgate/flowgate.sock]"),
        "readiness asks the agent through the image's CLI"
    );
}
