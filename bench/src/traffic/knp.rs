//! kube-network-policies (`sigs.k8s.io/kube-network-policies`, built by `scripts/build-kube-network-policies.sh`)
//! enforcing on the lab's node, as it runs on a Kubernetes node: against a real API server (etcd and
//! kube-apiserver from `flowgate_tests::control_plane`), with the lab's pods written as Pod objects bound to
//! the node (`flowgate_tests::kubelet`), inside the lab's node namespace. Two things stand between it and a
//! stock node, both without touching the machine: it reads its in-cluster credentials from the fixed path
//! `/var/run/secrets/kubernetes.io/serviceaccount`, so it starts in a private mount namespace with a tmpfs
//! on `/run` holding them; and the API server listens on the machine's loopback, which the node namespace
//! cannot reach, so a small forwarder accepts on the node namespace's loopback and connects to it.
//!
//! The binary is built with `tools/knp/xt-queue.patch`: its nftables rules hand each new connection to user
//! space through the xtables NFQUEUE target (nft_compat) instead of nftables' `queue` statement, which this
//! machine's kernel lacks (no `CONFIG_NFT_QUEUE`). Same rules, same nfnetlink_queue, same queue number and
//! bypass flag; see `scripts/build-kube-network-policies.sh`.

use std::{
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::Context as _;
use flowgate_lab::{LabState, netns};
use flowgate_tests::{control_plane::ControlPlane, kubelet};

use super::{enforcer::NodeRules, rules::RuleSet};

/// Overrides where the binary is looked for (as in `scripts/build-kube-network-policies.sh`).
pub const KNP_BIN_ENV: &str = "FLOWGATE_KNP_BIN";
/// The release built by the set-up (tools/knp/go.mod).
pub const KNP_VERSION: &str = "v0.8.0";
/// The Node name the lab's pods are bound to and kube-network-policies enforces for.
pub const NODE: &str = "bench-node";
const SERVICE_ACCOUNT: &str = "kube-network-policies";

/// The binary, or what builds it.
pub fn knp_bin() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os(KNP_BIN_ENV)
        .map_or_else(|| PathBuf::from(format!("/var/cache/flowgate/knp-{KNP_VERSION}/bin")), PathBuf::from);
    let bin = dir.join("kube-network-policies");
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: build it with `bash scripts/setup.sh` (it runs scripts/build-kube-network-policies.sh) or set \
         {KNP_BIN_ENV}",
        bin.display()
    );
    Ok(bin)
}

/// The API server with the lab's pods, and what kube-network-policies needs to reach it from the node.
pub struct KnpCluster {
    // Field order: the forwarder stops before the control plane.
    proxy: ApiForwarder,
    plane: ControlPlane,
    credentials: PathBuf,
    bin: PathBuf,
}

impl KnpCluster {
    /// Starts the control plane, writes the lab's namespaces and pods (bound to [`NODE`], with their
    /// addresses), a ServiceAccount for kube-network-policies and its credentials, and the forwarder.
    pub fn start(lab: &LabState) -> anyhow::Result<Self> {
        let bin = knp_bin()?;
        let plane = ControlPlane::start("bench-knp");
        kubelet::register_lab(&plane, lab, NODE);
        plane.kubectl_ok(&["create", "serviceaccount", SERVICE_ACCOUNT, "-n", "kube-system"]);
        // What its install.yaml grants: read pods, namespaces, nodes and network policies.
        plane.kubectl_ok(&[
            "create",
            "clusterrole",
            "kube-network-policies-extra",
            "--verb=get,list,watch",
            "--resource=nodes,networkpolicies.networking.k8s.io,pods,namespaces",
        ]);
        plane.kubectl_ok(&[
            "create",
            "clusterrolebinding",
            "kube-network-policies-extra",
            "--clusterrole=kube-network-policies-extra",
            &format!("--serviceaccount=kube-system:{SERVICE_ACCOUNT}"),
        ]);
        let token = plane.kubectl_ok(&["create", "token", SERVICE_ACCOUNT, "-n", "kube-system", "--duration=2h"]);
        let credentials = plane.dir().join("knp-serviceaccount");
        std::fs::create_dir_all(&credentials).with_context(|| format!("creating {}", credentials.display()))?;
        std::fs::write(credentials.join("token"), token.trim()).context("writing the token")?;
        std::fs::copy(plane.dir().join("pki").join("ca.crt"), credentials.join("ca.crt")).context("copying the CA")?;
        std::fs::write(credentials.join("namespace"), "kube-system").context("writing the namespace")?;
        let api_port: u16 =
            plane.server_url().rsplit(':').next().and_then(|p| p.parse().ok()).context("the API server's port")?;
        let proxy = ApiForwarder::start(&lab.node_netns, api_port)?;
        Ok(Self { proxy, plane, credentials, bin })
    }

    /// The control plane kube-network-policies follows.
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// Puts `rules`' NetworkPolicy in place of the previous one (server-side apply: the policy at 10,000
    /// peers is larger than the last-applied annotation may be).
    pub fn apply_rules(&mut self, rules: &RuleSet) {
        let out = self.plane.kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=flowgate-bench", "-f", "-"],
            &rules.network_policy(),
        );
        assert!(
            out.status.success(),
            "applying the benchmark's NetworkPolicy at {} peers: {}",
            rules.size,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts kube-network-policies in the lab's node namespace; stopped (and its rules flushed) on drop.
    pub fn start_enforcer(&self, lab: &LabState) -> anyhow::Result<KubeNetworkPolicies> {
        let log = self.plane.dir().join("kube-network-policies.log");
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let script = "mount -t tmpfs -o size=1m tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount \
                      && cp \"$0\"/token \"$0\"/ca.crt \"$0\"/namespace /run/secrets/kubernetes.io/serviceaccount/ \
                      && exec \"$@\"";
        let (credentials, bin, port) = (self.credentials.clone(), self.bin.clone(), self.proxy.port);
        let child = netns::in_netns(&lab.node_netns, move || {
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "sh", "-c", script])
                .arg(&credentials)
                .arg(&bin)
                .args([
                    &format!("--hostname-override={NODE}"),
                    "--disable-nri",
                    "--metrics-bind-address=127.0.0.1:0",
                    "--v=2",
                ])
                .env("KUBERNETES_SERVICE_HOST", Ipv4Addr::LOCALHOST.to_string())
                .env("KUBERNETES_SERVICE_PORT", port.to_string())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
        })
        .with_context(|| format!("entering {}", lab.node_netns))?
        .context("starting kube-network-policies (unshare, sh, the binary)")?;
        Ok(KubeNetworkPolicies { child, log, _rules: NodeRules::new(&lab.node_netns) })
    }
}

/// A running kube-network-policies; killed, reaped and its nftables table flushed on drop.
pub struct KubeNetworkPolicies {
    child: Child,
    log: PathBuf,
    // Dropped after the process is gone (fields drop after `drop`).
    _rules: NodeRules,
}

impl KubeNetworkPolicies {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Why it will not enforce, once that is certain: it exited, or its controller dropped the sync after its
    /// retries (`"Dropping out of the queue"`); with the distinct error lines of its log.
    pub fn gave_up(&mut self) -> Option<String> {
        let log = self.log();
        let why = match self.child.try_wait() {
            Ok(Some(status)) => format!("kube-network-policies exited ({status})"),
            _ if log.contains("Dropping out of the queue") => {
                "kube-network-policies gave up syncing its nftables rules".to_owned()
            }
            _ => return None,
        };
        let mut errors: Vec<&str> = Vec::new();
        // Without klog's time and pid prefix, so repeats of one message count once.
        for line in log.lines().map(|l| l.split_once("] ").map_or(l, |(_, m)| m).trim()) {
            let interesting = line.contains("error") || line.contains("netlink") || line.contains("panic");
            if interesting && !errors.contains(&line) && errors.len() < 6 {
                errors.push(line);
            }
        }
        Some(format!("{why}; its log: {}", errors.join(" | ")))
    }
}

impl Drop for KubeNetworkPolicies {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts on the node namespace's loopback and forwards each connection to the API server on the machine's
/// loopback. Stopped on drop (the listener and every connection are shut down).
struct ApiForwarder {
    port: u16,
    stop: Arc<AtomicBool>,
    listener_fd: i32,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiForwarder {
    fn start(node_netns: &str, api_port: u16) -> anyhow::Result<Self> {
        let listener = netns::in_netns(node_netns, || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?
            .with_context(|| format!("binding the API forwarder on the loopback of {node_netns}"))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let listener_fd = listener.as_raw_fd();
        let (stop2, conns) = (stop.clone(), connections.clone());
        let thread = std::thread::Builder::new().name("bench-api-forwarder".into()).spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((inbound, _)) = listener.accept() else { continue };
                let Ok(outbound) = TcpStream::connect((Ipv4Addr::LOCALHOST, api_port)) else { continue };
                let mut list = conns.lock().expect("forwarder connections");
                for s in [&inbound, &outbound] {
                    if let Ok(clone) = s.try_clone() {
                        list.push(clone);
                    }
                }
                for (mut from, mut to) in
                    [(inbound.try_clone(), outbound.try_clone()), (outbound.try_clone(), inbound.try_clone())]
                        .into_iter()
                        .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        })?;
        Ok(Self { port, stop, listener_fd, connections, thread: Some(thread) })
    }
}

impl Drop for ApiForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: the listener is owned by the accept thread, which is joined below.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.connections.lock().expect("forwarder connections").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
