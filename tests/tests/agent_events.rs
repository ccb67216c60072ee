//! The kernel programs on a real lab: a real TCP connect and a real UDP exchange between two pods
//! produce trace records in the kernel, which the agent decodes and prints with the right addresses,
//! ports, protocol and direction; and an agent that brought a lab up takes it down on SIGTERM/SIGINT.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use flowgate_tests::{
    LAB_DIR_ENV, LabGuard, agent::SocketDir, assert_nothing_left, bin_dir, example, lab_dir, probe_results,
    require_root,
};

/// A running `flowgate-agent`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Agent {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    _sockets: SocketDir,
}

impl Agent {
    fn start(tag: &str, args: &[&str]) -> Self {
        let sockets = SocketDir::new(tag);
        let mut child = Command::new(bin_dir().join("flowgate-agent"))
            .args(args)
            .arg("--socket")
            .arg(sockets.socket("agent.sock"))
            .args(["--verdict-log", "none", "--metrics-addr", "none"])
            .env(LAB_DIR_ENV, lab_dir())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flowgate-agent (built by `cargo build`)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                let _ = tx.send(line);
            }
        });
        let agent = Self { child, stderr_lines: rx, _sockets: sockets };
        agent.wait_for_log("attached to", Duration::from_secs(30));
        agent
    }

    fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("the agent did not log {needle:?} within {timeout:?}");
    }

    /// Sends `signal`, waits for the exit, and returns everything it printed on stdout.
    fn stop(mut self, signal: libc::c_int) -> String {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lines_with<'a>(out: &'a str, parts: &[&str]) -> Vec<&'a str> {
    out.lines().filter(|l| parts.iter().all(|p| l.contains(p))).collect()
}

#[test]
fn real_tcp_and_udp_produce_kernel_trace_events_with_addresses_ports_and_direction() {
    require_root();
    let lab = LabGuard::up("evt", &example("lab-small.yaml"));
    let client = lab.state.pods.iter().find(|p| p.name == "client").unwrap().ip.to_string();
    let web = lab.state.pods.iter().find(|p| p.name == "web").unwrap().ip.to_string();
    let agent = Agent::start("evt", &["--lab", &lab.name, "--print-events"]);

    let (tcp, _) = lab.probe(&["--from", "default/client", "--to", "default/web", "--port", "80", "--protocol", "TCP"]);
    let (udp, _) = lab.probe(&["--from", "default/client", "--to", "default/web", "--port", "53", "--protocol", "UDP"]);
    assert!(probe_results(&tcp).iter().all(|r| r.2), "TCP probe connects: {tcp}");
    assert!(probe_results(&udp).iter().all(|r| r.2), "UDP probe gets its echo: {udp}");
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.stop(libc::SIGTERM);

    // TCP: the SYN leaves the client (from_endpoint on its veth) and enters web (to_endpoint on web's).
    let syn = format!(" -> {web}:80 tcp SYN");
    let leaving = lines_with(&out, &["<- endpoint ", "(default/client)", &format!(": {client}:"), &syn]);
    let entering = lines_with(&out, &["-> endpoint ", "(default/web)", &format!(": {client}:"), &syn]);
    assert!(leaving.iter().any(|l| l.ends_with("tcp SYN")), "SYN leaving client:\n{out}");
    assert!(entering.iter().any(|l| l.ends_with("tcp SYN")), "SYN entering web:\n{out}");
    // The reply goes the other way.
    let synack =
        lines_with(&out, &["<- endpoint ", "(default/web)", &format!(": {web}:80 -> {client}:"), "tcp SYN, ACK"]);
    assert!(!synack.is_empty(), "SYN-ACK leaving web:\n{out}");

    // UDP: request out of the client and into web, echo back into the client.
    let request = format!(" -> {web}:53 udp");
    assert!(
        !lines_with(&out, &["<- endpoint ", "(default/client)", &request]).is_empty(),
        "UDP leaving client:\n{out}"
    );
    assert!(!lines_with(&out, &["-> endpoint ", "(default/web)", &request]).is_empty(), "UDP entering web:\n{out}");
    let echo = format!(": {web}:53 -> {client}:");
    assert!(
        !lines_with(&out, &["-> endpoint ", "(default/client)", &echo, " udp"]).is_empty(),
        "UDP echo entering client:\n{out}"
    );
}

fn agent_takes_down_its_lab_on(signal: libc::c_int, tag: &str) {
    require_root();
    let name = format!("{tag}-{}", std::process::id());
    let agent =
        Agent::start(tag, &["--lab-topology", example("lab-small.yaml").to_str().unwrap(), "--lab-name", &name]);
    let path = lab_dir().join(&name).join("state.json");
    let state: flowgate_tests::LabState =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the agent brought the lab up")).unwrap();
    assert!(!flowgate_tests::lab_netns(&name).is_empty());
    agent.stop(signal);
    assert_nothing_left(&name, state.server_pid);
}

#[test]
fn agent_shutdown_on_sigterm_removes_the_lab_it_brought_up() {
    agent_takes_down_its_lab_on(libc::SIGTERM, "agterm");
}

#[test]
fn agent_shutdown_on_ctrl_c_removes_the_lab_it_brought_up() {
    agent_takes_down_its_lab_on(libc::SIGINT, "agint");
}
