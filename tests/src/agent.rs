//! A `flowgate-agent` process for end-to-end tests: started on a lab with its socket in a fresh
//! temporary directory, ready once its socket answers a hello, and stopped (SIGTERM, then SIGKILL) and
//! reaped when the [`AgentGuard`] is dropped, also while a test panics.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowgate_proto::{
    client::{Client, ClientError},
    message::{Request, Response, Status},
};

use crate::{LAB_DIR_ENV, bin_dir, lab_dir};

/// How long an agent may take to load its programs and open its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `flowgate-agent` binary; panics with what to do when it has not been built.
pub fn agent_bin() -> PathBuf {
    let bin = bin_dir().join("flowgate-agent");
    assert!(bin.is_file(), "{} not found: build it first (`cargo build`; `make test` does)", bin.display());
    bin
}

/// A fresh directory for sockets, readable by everyone (tests connect as other users), removed on drop.
pub struct SocketDir(PathBuf);

impl SocketDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flowgate-test-sock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod the socket dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `<dir>/<name>.sock`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.sock"))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `flowgate-agent --lab LAB --socket SOCKET EXTRA...`, its output going to `log`.
pub fn spawn_agent(lab: &str, socket: &Path, extra: &[&str], log: &Path) -> Child {
    let mut args = vec!["--lab", lab];
    args.extend_from_slice(extra);
    spawn_agent_with(socket, &args, log)
}

/// `flowgate-agent --socket SOCKET ARGS...` (no lab unless `args` name one), its output going to `log`.
pub fn spawn_agent_with(socket: &Path, extra: &[&str], log: &Path) -> Child {
    spawn_binary(&agent_bin(), socket, extra, log)
}

/// `BINARY --socket SOCKET ARGS...`, where `binary` is a `flowgate-agent`, this build's or another's.
fn spawn_binary(binary: &Path, socket: &Path, extra: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone the log file");
    // Tests run agents side by side: none writes the machine's verdict log or takes the metrics port
    // unless the test asks for it.
    let mut defaults = Vec::new();
    for (flag, off) in [("--verdict-log", "none"), ("--metrics-addr", "none")] {
        if !extra.contains(&flag) {
            defaults.extend([flag, off]);
        }
    }
    Command::new(binary)
        .arg("--socket")
        .arg(socket)
        .args(defaults)
        .args(extra)
        .env(LAB_DIR_ENV, lab_dir())
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()))
}

/// Where an [`AgentGuard`] on `socket` writes its output.
pub fn log_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// An agent's output so far.
pub fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Whether a client can connect and exchange hellos (the connection is closed again).
pub fn hello(socket: &Path) -> Result<(), ClientError> {
    runtime().block_on(Client::connect(socket, "flowgate-tests")).map(drop)
}

/// The agent's answer to a status request (its counters among it), over its socket.
pub async fn request_status(socket: &Path) -> Result<Status, ClientError> {
    let mut client = Client::connect(socket, "flowgate-tests").await?;
    match client.request(Request::Status).await? {
        Response::Status(status) => Ok(*status),
        other => Err(ClientError::Unexpected { expected: "a status", got: format!("{other:?}") }),
    }
}

/// [`request_status`] from outside a runtime.
pub fn status(socket: &Path) -> Result<Status, ClientError> {
    runtime().block_on(request_status(socket))
}

/// A single-threaded runtime for one client call.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// A running agent, stopped when dropped.
pub struct AgentGuard {
    child: Option<Child>,
    pub socket: PathBuf,
    /// The agent's stdout and stderr.
    pub log: PathBuf,
}

impl AgentGuard {
    /// Starts an agent on `lab` with its socket at `socket` and waits until it answers a hello.
    pub fn start(lab: &str, socket: &Path, extra: &[&str]) -> Self {
        Self::start_binary(&agent_bin(), lab, socket, extra)
    }

    /// As [`Self::start`], with another build's agent binary (the benchmarks' A/B of two builds).
    pub fn start_binary(binary: &Path, lab: &str, socket: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--lab", lab];
        args.extend_from_slice(extra);
        let mut guard = Self::spawn_binary(binary, socket, &args);
        guard.wait_ready();
        guard
    }

    /// Starts `flowgate-agent --socket SOCKET ARGS...` (no lab unless `args` name one) and waits until it
    /// answers a hello.
    pub fn start_with(socket: &Path, args: &[&str]) -> Self {
        let mut guard = Self::spawn_binary(&agent_bin(), socket, args);
        guard.wait_ready();
        guard
    }

    /// Starts agents side by side, each `flowgate-agent --socket SOCKET ARGS...`, and waits until every one
    /// answers a hello: several agents load their programs at once rather than one after another.
    pub fn start_all<'a>(agents: impl IntoIterator<Item = (&'a Path, Vec<&'a str>)>) -> Vec<Self> {
        let mut guards: Vec<Self> =
            agents.into_iter().map(|(socket, args)| Self::spawn_binary(&agent_bin(), socket, &args)).collect();
        for guard in &mut guards {
            guard.wait_ready();
        }
        guards
    }

    /// The process started, not yet waited for.
    fn spawn_binary(binary: &Path, socket: &Path, args: &[&str]) -> Self {
        let log = log_path(socket);
        let child = spawn_binary(binary, socket, args, &log);
        Self { child: Some(child), socket: socket.to_owned(), log }
    }

    /// The agent's output so far.
    pub fn output(&self) -> String {
        read_log(&self.log)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            match hello(&self.socket) {
                Ok(_) => return,
                Err(e) => {
                    if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                        self.child = None;
                        panic!("flowgate-agent exited ({status}) before serving:\n{}", read_log(&self.log));
                    }
                    assert!(
                        started.elapsed() < READY_TIMEOUT,
                        "flowgate-agent did not answer on {} within {READY_TIMEOUT:?} ({e}):\n{}",
                        self.socket.display(),
                        read_log(&self.log)
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// SIGKILLs the agent and reaps it, leaving whatever it left behind (its socket file).
    pub fn kill_hard(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the process.
    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid; it has not been reaped, so the pid is still ours.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Waits until the agent at `socket` lists `n` subscribed clients (`status`), so no traffic is sent before
/// they listen: a client's subscribe returns once its request is sent, before the agent has registered it.
pub async fn wait_subscribed(socket: &Path, n: usize) {
    use flowgate_proto::message::{Request, Response};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Client::connect(socket, "flowgate-tests").await.expect("connect for status");
        let Response::Status(status) = c.request(Request::Status).await.expect("status") else {
            panic!("the agent answered status with something else")
        };
        if status.clients.iter().filter(|c| c.subscribed).count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} subscriptions did not register within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
