//! Harness for flowgate's end-to-end tests: finds the built `flowgate` binary, runs it, and brings labs up
//! under a [`LabGuard`] that brings them down again when dropped, also when the test panics. The tests need
//! root and fail (never skip) without it.
//!
//! Labs made by tests live in their own lab directory ([`LAB_DIR`] under the temp dir), so `flowgate lab list`
//! on the machine does not show them; their network namespaces are the usual `fg-<lab>-*`.

pub mod agent;
pub mod attached;
pub mod control_plane;
pub mod fuzz;
pub mod kubelet;
pub mod test_run;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

pub use flowgate_lab::{LabState, naming, state::LAB_DIR_ENV};

/// Overrides where the `flowgate` binary is looked for.
pub const BIN_DIR_ENV: &str = "FLOWGATE_BIN_DIR";
/// Lab directory of the tests, under the temp dir.
pub const LAB_DIR: &str = "flowgate-tests-labs";

/// Fails the test when not root: these tests must not pass without having run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "flowgate's end-to-end tests create network namespaces: run them as root (make test)");
}

/// The directory holding the `flowgate` binary: `$FLOWGATE_BIN_DIR`, else the target directory this test
/// executable was built in (the parent of its `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let dir = exe.parent().expect("test executable has a directory");
    if dir.ends_with("deps") { dir.parent().expect("deps/ has a parent").to_owned() } else { dir.to_owned() }
}

/// The `flowgate` binary; panics with what to do when it has not been built.
pub fn flowgate_bin() -> PathBuf {
    let bin = bin_dir().join("flowgate");
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build -p flowgate-cli`; `make test` does) or set {BIN_DIR_ENV}",
        bin.display()
    );
    bin
}

/// The tests' lab directory.
pub fn lab_dir() -> PathBuf {
    std::env::temp_dir().join(LAB_DIR)
}

/// Traffic between two pods of `lab` (`flowgate lab traffic`): `count` packets or connections of
/// `protocol` from pod `from` to pod `to` (`namespace/name`) on `port`, with `extra` flags (`--interval`,
/// `--time-limit`, ...). It must succeed; returns its report.
pub fn lab_traffic(lab: &str, from: &str, to: &str, port: &str, protocol: &str, count: &str, extra: &[&str]) -> String {
    let mut args =
        vec!["lab", "traffic", "--lab", lab, "--from", from, "--to", to, "--port", port, "--protocol", protocol];
    args.extend(["--count", count]);
    args.extend_from_slice(extra);
    flowgate_ok(&args)
}

/// A file under the repository's `examples/`.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples").join(name)
}

/// `flowgate ARGS...` with the tests' lab directory.
pub fn flowgate(args: &[&str]) -> Output {
    Command::new(flowgate_bin())
        .args(args)
        .env(LAB_DIR_ENV, lab_dir())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run flowgate")
}

/// `flowgate ARGS...`, which must succeed; returns its stdout.
pub fn flowgate_ok(args: &[&str]) -> String {
    let out = flowgate(args);
    assert!(
        out.status.success(),
        "flowgate {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A lab that is brought down when this is dropped (also while unwinding from a panic).
pub struct LabGuard {
    pub name: String,
    pub state: LabState,
}

impl LabGuard {
    /// Brings up `topology` as lab `<tag>-<pid>`: unique per test (tag) and per test process (pid).
    pub fn up(tag: &str, topology: &Path) -> Self {
        let name = format!("{tag}-{}", std::process::id());
        assert!(name.len() <= flowgate_lab::topology::MAX_LAB_NAME_LEN, "lab tag {tag:?} is too long");
        let topology = topology.to_str().expect("utf-8 path");
        let json = flowgate_ok(&["lab", "up", "-f", topology, "--name", &name, "-o", "json"]);
        let state: LabState = serde_json::from_str(&json).expect("`lab up -o json` prints the lab state");
        assert_eq!(state.name, name);
        Self { name, state }
    }

    /// The state as saved in the lab directory now.
    pub fn saved_state(&self) -> LabState {
        let path = lab_dir().join(&self.name).join("state.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).expect("state.json parses")
    }

    /// `flowgate lab probe --lab NAME ARGS... -o json`: the parsed report and how long it took.
    pub fn probe(&self, args: &[&str]) -> (serde_json::Value, Duration) {
        let mut all = vec!["lab", "probe", "--lab", &self.name, "-o", "json"];
        all.extend_from_slice(args);
        let started = Instant::now();
        let out = flowgate_ok(&all);
        let took = started.elapsed();
        (serde_json::from_str(&out).expect("probe -o json prints JSON"), took)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let out = flowgate(&["lab", "down", &self.name]);
        if !out.status.success() {
            // Not a panic: this may run while unwinding, and a second panic would abort the test binary.
            eprintln!("flowgate lab down {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Network namespaces of `lab` that exist now.
pub fn lab_netns(lab: &str) -> Vec<String> {
    let prefix = naming::lab_netns_prefix(lab);
    flowgate_lab::netns::list().into_iter().filter(|ns| ns.starts_with(&prefix)).collect()
}

/// Whether process `pid` is gone (a zombie waiting to be reaped counts as gone: it serves nothing).
pub fn process_gone(pid: u32) -> bool {
    !flowgate_lab::lab::is_alive(pid)
}

/// Asserts that nothing of lab `lab` is left: namespaces, server, directory.
pub fn assert_nothing_left(lab: &str, server_pid: Option<u32>) {
    assert_eq!(lab_netns(lab), Vec::<String>::new(), "network namespaces of lab {lab} are left");
    if let Some(pid) = server_pid {
        assert!(process_gone(pid), "server {pid} of lab {lab} is still running");
    }
    let dir = lab_dir().join(lab);
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// Every `(from, to, connected)` of a `probe -o json` report.
pub fn probe_results(report: &serde_json::Value) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for (from, row) in report["results"].as_object().expect("results is an object") {
        for (to, ok) in row.as_object().expect("a row is an object") {
            out.push((from.clone(), to.clone(), ok.as_bool().expect("a result is a bool")));
        }
    }
    out
}

/// A fresh temporary directory (`flowgate-test-<tag>-<pid>`), removed on drop, also on panic.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flowgate-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A policy for the netpol lab: namespace y accepts only x/a, on TCP 80; everything else into y is denied.
pub const DENY_INTO_Y: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: only-x-a-into-y
  namespace: y
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: x}}
          podSelector: {matchLabels: {pod: a}}
      ports:
        - {protocol: TCP, port: 80}
";

/// A TCP port on loopback that is free right now (for a metrics endpoint or a Prometheus).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port").local_addr().expect("its address").port()
}
