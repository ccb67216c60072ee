//! A real Kubernetes control plane for the tests: etcd and kube-apiserver (built by `scripts/setup.sh` from
//! their Go modules) on loopback ports, with a CA and certificates made for the run, RBAC on, an admin
//! identity (client certificate in `system:masters`) and the agent's identity (a token of the `flowgate`
//! ServiceAccount, bound by `deploy/rbac.yaml`), with the identity CRD (`deploy/identity-crd.yaml`) installed. Both processes are stopped and the directory removed when
//! the [`ControlPlane`] is dropped, also while a test panics. Nothing here stands in for the API server.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Overrides where etcd, kube-apiserver and kubectl are looked for (as in `scripts/build-control-plane.sh`).
pub const K8S_BIN_ENV: &str = "FLOWGATE_K8S_BIN";
/// The Kubernetes release the binaries are built from (tools/k8s/go.mod).
pub const K8S_VERSION: &str = "v1.37.2";
/// How long etcd and the API server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The agent's ServiceAccount (`deploy/rbac.yaml`).
pub const AGENT_NAMESPACE: &str = "flowgate";
pub const AGENT_SERVICE_ACCOUNT: &str = "flowgate";

/// The directory holding the control plane's binaries.
pub fn k8s_bin_dir() -> PathBuf {
    std::env::var_os(K8S_BIN_ENV)
        .map_or_else(|| PathBuf::from(format!("/var/cache/flowgate/k8s-{K8S_VERSION}/bin")), PathBuf::from)
}

/// One of the control plane's binaries; panics naming the missing path and what builds it.
pub fn k8s_bin(name: &str) -> PathBuf {
    let bin = k8s_bin_dir().join(name);
    assert!(
        bin.is_file(),
        "{} not found: build the control plane with `bash scripts/setup.sh` (`make test` does; it runs \
         scripts/build-control-plane.sh) or set {K8S_BIN_ENV}",
        bin.display()
    );
    bin
}

/// A file under the repository's `deploy/`.
pub fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join(name)
}

/// Ports handed out for the control planes' listeners: below the kernel's ephemeral range (32768-60999 by
/// default). A port the kernel picks for port 0 comes from that range, and so does the source port of every
/// outgoing connection: in the moment between asking and binding, a test's client (an agent's watch, a
/// kubectl) could take it, and the API server then failed with "address already in use".
const LISTEN_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on 127.0.0.1 in [`LISTEN_PORTS`] (free when asked; the processes bind it right after).
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(LISTEN_PORTS.end - LISTEN_PORTS.start);
    // Processes start at different offsets (tests of several binaries run one after another, and their
    // control planes may linger a moment), then walk the range.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let port = LISTEN_PORTS.start + ((start + NEXT.fetch_add(7, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LISTEN_PORTS:?}");
}

/// Runs a set-up command that must succeed, panicking with its output.
fn run_ok(command: &mut Command, what: &str) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The end of a log file, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped on drop.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, bin: &Path, args: &[String], log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log file");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", bin.display()));
        Self { name, child, log }
    }

    /// Panics with the log's tail when the process has exited.
    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}); end of {}:\n{}", self.name, self.log.display(), log_tail(&self.log));
        }
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// etcd and kube-apiserver on loopback, stopped and cleaned up on drop.
pub struct ControlPlane {
    dir: PathBuf,
    // Field order: the API server stops before etcd.
    apiserver: Option<Daemon>,
    etcd: Option<Daemon>,
    etcd_port: u16,
    apiserver_port: u16,
    apiserver_args: Vec<String>,
    admin_kubeconfig: PathBuf,
    agent_kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts etcd and the API server for one test (`tag` names the directory), waits for `/readyz`, and
    /// sets up the agent's identity from `deploy/rbac.yaml`.
    pub fn start(tag: &str) -> Self {
        // All three first, so a missing one is named before anything starts.
        let etcd_bin = k8s_bin("etcd");
        k8s_bin("kube-apiserver");
        k8s_bin("kubectl");
        let dir = std::env::temp_dir().join(format!("flowgate-cp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut plane = Self {
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            agent_kubeconfig: dir.join("agent.kubeconfig"),
            dir,
            apiserver: None,
            etcd: None,
            etcd_port: free_port(),
            apiserver_port: free_port(),
            apiserver_args: Vec::new(),
        };
        plane.make_certificates();
        let peer_port = free_port();
        let etcd_url = format!("http://127.0.0.1:{}", plane.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = vec![
            "--name=default".to_owned(),
            format!("--data-dir={}", plane.dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--log-level=warn".to_owned(),
        ];
        plane.etcd = Some(Daemon::spawn("etcd", &etcd_bin, &etcd_args, plane.dir.join("etcd.log")));
        plane.wait_for("etcd", |p| p.etcd_revision().is_ok());

        let pki = |f: &str| plane.dir.join("pki").join(f).display().to_string();
        plane.apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", plane.apiserver_port),
            format!("--tls-cert-file={}", pki("apiserver.crt")),
            format!("--tls-private-key-file={}", pki("apiserver.key")),
            format!("--client-ca-file={}", pki("ca.crt")),
            format!("--service-account-key-file={}", pki("sa.pub")),
            format!("--service-account-signing-key-file={}", pki("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            "--authorization-mode=Node,RBAC".to_owned(),
            // As kubeadm and every distribution set it: the agent's DaemonSet is privileged.
            "--allow-privileged=true".to_owned(),
            "--service-cluster-ip-range=10.96.0.0/24".to_owned(),
            // Loopback may not be an Endpoints address: no reconciler for the `kubernetes` Service.
            "--endpoint-reconciler-type=none".to_owned(),
            format!("--cert-dir={}", plane.dir.join("apiserver-certs").display()),
            "--v=1".to_owned(),
        ];
        plane.start_apiserver();
        plane.write_admin_kubeconfig();
        plane.wait_ready();
        plane.set_up_agent_identity();
        plane
    }

    /// The run's directory (certificates, kubeconfigs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// etcd's client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    pub fn agent_kubeconfig(&self) -> &Path {
        &self.agent_kubeconfig
    }

    fn openssl(&self, args: &[&str], what: &str) {
        run_ok(Command::new("openssl").args(args).current_dir(self.dir.join("pki")), what);
    }

    /// A CA, the API server's serving certificate (127.0.0.1), the admin's client certificate and the
    /// service-account signing key pair, with the `openssl` command.
    fn make_certificates(&self) {
        std::fs::create_dir_all(self.dir.join("pki")).expect("create pki/");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=flowgate-test-ca", "-keyout", "ca.key"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&["-out", "ca.crt"]);
        self.openssl(&ca, "making the test CA");
        let leaf = |name: &str, subject: &str, extensions: &str| {
            std::fs::write(self.dir.join("pki").join(format!("{name}.ext")), extensions).expect("write extensions");
            let (key, csr, crt, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            let mut req = vec!["req", "-new", "-subj", subject, "-keyout", &key, "-out", &csr];
            req.extend_from_slice(&ec);
            self.openssl(&req, &format!("making the {name} key"));
            let sign = [
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ];
            self.openssl(&sign, &format!("signing the {name} certificate"));
        };
        leaf(
            "apiserver",
            "/CN=kube-apiserver",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n",
        );
        leaf(
            "admin",
            "/O=system:masters/CN=flowgate-test-admin",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        );
        self.openssl(&["genrsa", "-out", "sa.key", "2048"], "making the service-account signing key");
        self.openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], "writing the service-account key");
    }

    fn write_admin_kubeconfig(&self) {
        let pki = self.dir.join("pki");
        let user = format!(
            "client-certificate: {}\n    client-key: {}",
            pki.join("admin.crt").display(),
            pki.join("admin.key").display()
        );
        self.write_kubeconfig(&self.admin_kubeconfig, "admin", &user);
    }

    fn write_kubeconfig(&self, path: &Path, user: &str, credentials: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    {credentials}\ncontexts:\n\
             - name: {user}\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: {user}\n",
            server = self.server_url(),
            ca = self.dir.join("pki").join("ca.crt").display(),
        );
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Applies `deploy/identity-crd.yaml` (waiting until the server serves it) and `deploy/rbac.yaml`, and
    /// writes a kubeconfig holding a token of the agent's ServiceAccount.
    fn set_up_agent_identity(&self) {
        let crd = deploy_file("identity-crd.yaml");
        self.kubectl_ok(&["apply", "-f", crd.to_str().expect("utf-8 path")]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/flowgateidentities.flowgate.io",
            "--timeout=60s",
        ]);
        let rbac = deploy_file("rbac.yaml");
        self.kubectl_ok(&["apply", "-f", rbac.to_str().expect("utf-8 path")]);
        let token =
            self.kubectl_ok(&["create", "token", AGENT_SERVICE_ACCOUNT, "-n", AGENT_NAMESPACE, "--duration=24h"]);
        self.write_kubeconfig(&self.agent_kubeconfig, "flowgate-agent", &format!("token: {}", token.trim()));
    }

    fn start_apiserver(&mut self) {
        let log = self.dir.join("apiserver.log");
        self.apiserver = Some(Daemon::spawn("kube-apiserver", &k8s_bin("kube-apiserver"), &self.apiserver_args, log));
    }

    /// Stops the API server, starts another one on a different port (same etcd), runs `changes` with an
    /// admin kubeconfig for it, and stops it: clients of the usual address miss those changes while they
    /// happen, as they would across a partition. Start the usual one with [`Self::start_apiserver_again`].
    pub fn with_apiserver_elsewhere<R>(&mut self, changes: impl FnOnce(&Self, &Path) -> R) -> R {
        self.stop_apiserver();
        let port = free_port();
        let args: Vec<String> = self
            .apiserver_args
            .iter()
            .map(|a| if a.starts_with("--secure-port=") { format!("--secure-port={port}") } else { a.clone() })
            .collect();
        let log = self.dir.join("apiserver-elsewhere.log");
        let mut elsewhere = Daemon::spawn("kube-apiserver (elsewhere)", &k8s_bin("kube-apiserver"), &args, log);
        let kubeconfig = self.dir.join("admin-elsewhere.kubeconfig");
        let text = std::fs::read_to_string(&self.admin_kubeconfig).expect("read the admin kubeconfig");
        std::fs::write(&kubeconfig, text.replace(&self.server_url(), &format!("https://127.0.0.1:{port}")))
            .expect("write the kubeconfig of the API server elsewhere");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.kubectl_with(&kubeconfig, &["get", "--raw", "/readyz"], None).status.success() {
            elsewhere.check_running();
            assert!(Instant::now() < deadline, "the API server elsewhere is not ready after {READY_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let result = changes(self, &kubeconfig);
        elsewhere.stop();
        result
    }

    /// `kubectl --kubeconfig KUBECONFIG ARGS...`, which must succeed; returns its stdout.
    pub fn kubectl_at(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(kubeconfig, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn wait_for(&mut self, what: &str, ready: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ready(self) {
            for daemon in [&mut self.etcd, &mut self.apiserver].into_iter().flatten() {
                daemon.check_running();
            }
            assert!(
                Instant::now() < deadline,
                "{what} not ready after {READY_TIMEOUT:?} (logs in {})",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the API server answers `/readyz` (storage, RBAC bootstrap roles, every post-start hook).
    fn wait_ready(&mut self) {
        self.wait_for("kube-apiserver", |p| p.kubectl(&["get", "--raw", "/readyz"]).status.success());
    }

    /// Stops the API server and starts it again on the same port and etcd; returns once it is ready.
    pub fn restart_apiserver(&mut self) {
        if let Some(mut old) = self.apiserver.take() {
            old.stop();
        }
        self.start_apiserver();
        self.wait_ready();
    }

    /// Stops the API server (clients see their connections fail) until [`Self::start_apiserver_again`].
    pub fn stop_apiserver(&mut self) {
        if let Some(mut old) = self.apiserver.take() {
            old.stop();
        }
    }

    /// Starts the API server stopped by [`Self::stop_apiserver`] and waits until it is ready.
    pub fn start_apiserver_again(&mut self) {
        assert!(self.apiserver.is_none(), "the API server is running");
        self.start_apiserver();
        self.wait_ready();
    }

    /// `kubectl --kubeconfig <admin> ARGS...`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.admin_kubeconfig, args, None)
    }

    /// `kubectl ARGS...` as the agent's ServiceAccount.
    pub fn kubectl_as_agent(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.agent_kubeconfig, args, None)
    }

    /// `kubectl ARGS...` as the agent's ServiceAccount, with `stdin` as its input.
    pub fn kubectl_with_stdin_as_agent(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(&self.agent_kubeconfig, args, Some(stdin))
    }

    /// `kubectl ARGS...` with `stdin` as its input (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(&self.admin_kubeconfig, args, Some(stdin))
    }

    fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(k8s_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write kubectl's stdin");
        }
        child.wait_with_output().expect("wait for kubectl")
    }

    /// `kubectl ARGS...` as admin, which must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `kubectl apply -f -` of `manifest` as admin, which must succeed.
    pub fn apply(&self, manifest: &str) -> String {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "kubectl apply failed ({}):\n{}{}\nmanifest:\n{manifest}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// A kube-rs client as admin.
    pub async fn admin_client(&self) -> kube::Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// A kube-rs client as the agent's ServiceAccount.
    pub async fn agent_client(&self) -> kube::Client {
        client_from(&self.agent_kubeconfig).await
    }

    /// One call to etcd's JSON gateway (`POST /v3/...`), over plain HTTP/1.1 on loopback.
    fn etcd_call(&self, path: &str, body: &str) -> std::io::Result<serde_json::Value> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.etcd_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, payload) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        if !head.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(format!("etcd {path}: {head} {payload}")));
        }
        serde_json::from_str(payload.trim()).map_err(|e| std::io::Error::other(format!("etcd {path}: {e}: {payload}")))
    }

    /// etcd's current revision.
    pub fn etcd_revision(&self) -> std::io::Result<i64> {
        let reply = self.etcd_call("/v3/kv/range", r#"{"key":"AA=="}"#)?;
        reply["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("etcd range: no revision in {reply}")))
    }

    /// Compacts etcd's history up to its current revision (physically), as `etcdctl compact --physical`
    /// does: watches and lists from an older resourceVersion then fail with `410 Gone`. Returns the revision.
    pub fn compact_etcd(&self) -> i64 {
        let revision = self.etcd_revision().expect("read etcd's revision");
        self.etcd_call("/v3/kv/compaction", &format!(r#"{{"revision":"{revision}","physical":true}}"#))
            .unwrap_or_else(|e| panic!("compacting etcd at revision {revision}: {e}"));
        revision
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop();
        }
        if let Some(mut etcd) = self.etcd.take() {
            etcd.stop();
        }
        if std::thread::panicking() {
            eprintln!(
                "control plane logs:\n--- etcd ---\n{}\n--- kube-apiserver ---\n{}",
                log_tail(&self.dir.join("etcd.log")),
                log_tail(&self.dir.join("apiserver.log"))
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A kube-rs client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kube config from {}: {e}", kubeconfig.display()));
    kube::Client::try_from(config).unwrap_or_else(|e| panic!("kube client from {}: {e}", kubeconfig.display()))
}
