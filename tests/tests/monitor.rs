//! `flowgate monitor` against a real agent on a real lab with a deny policy in place: the JSON lines name
//! the denied connection and only flows of the endpoint asked for; the TUI, run in tmux, shows the
//! denied verdict, nothing unrelated, and gives the terminal back on `q`; an unknown endpoint id is one
//! line listing the known ones.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flowgate_tests::{
    LabGuard,
    agent::{AgentGuard, SocketDir},
    example, flowgate, flowgate_bin, flowgate_ok, probe_results, require_root,
};
use serde_json::Value;

/// Isolates x/b for ingress, allowing nothing: every new connection to it is denied.
const DENY_B: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress-to-b
  namespace: x
spec:
  podSelector:
    matchLabels: {pod: b}
  policyTypes: [Ingress]
";

/// A lab, a policy directory with [`DENY_B`], and an agent enforcing it (policy revision 1 in effect).
struct Setup {
    lab: LabGuard,
    _sockets: SocketDir,
    _policies: PolicyDir,
    agent: AgentGuard,
    /// Endpoint id by `namespace/pod`.
    endpoints: Vec<(String, u16)>,
}

struct PolicyDir(PathBuf);

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Setup {
    fn new(tag: &str) -> Self {
        require_root();
        let lab = LabGuard::up(tag, &example("lab-netpol.yaml"));
        let policies =
            PolicyDir(std::env::temp_dir().join(format!("flowgate-test-policies-{tag}-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&policies.0);
        std::fs::create_dir_all(&policies.0).unwrap();
        std::fs::write(policies.0.join("deny-b.yaml"), DENY_B).unwrap();
        let sockets = SocketDir::new(tag);
        let socket = sockets.socket("agent");
        let agent = AgentGuard::start(&lab.name, &socket, &["--policies", policies.0.to_str().unwrap()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status: Value =
                serde_json::from_str(&flowgate_ok(&["status", "--socket", socket.to_str().unwrap(), "-o", "json"]))
                    .unwrap();
            if status["policy"]["revision"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
            assert!(Instant::now() < deadline, "policy not in effect within 30s: {status}\n{}", agent.output());
            std::thread::sleep(Duration::from_millis(100));
        }
        let list: Value = serde_json::from_str(&flowgate_ok(&[
            "endpoint",
            "list",
            "--socket",
            socket.to_str().unwrap(),
            "-o",
            "json",
        ]))
        .unwrap();
        let endpoints = list
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    format!("{}/{}", e["namespace"].as_str().unwrap(), e["pod_name"].as_str().unwrap()),
                    e["id"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        Self { lab, _sockets: sockets, _policies: policies, agent, endpoints }
    }

    fn socket(&self) -> &Path {
        &self.agent.socket
    }

    fn id(&self, pod: &str) -> u16 {
        self.endpoints
            .iter()
            .find(|(p, _)| p == pod)
            .unwrap_or_else(|| panic!("no endpoint {pod}: {:?}", self.endpoints))
            .1
    }

    /// One TCP connection attempt `from` -> `to`:80; whether it connected.
    fn probe(&self, from: &str, to: &str) -> bool {
        let (report, _) =
            self.lab.probe(&["--from", from, "--to", to, "--port", "80", "--protocol", "TCP", "--timeout", "500ms"]);
        probe_results(&report).iter().all(|r| r.2)
    }
}

/// A child process killed and reaped on drop.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn json(socket: &Path, related_to: u16) -> Self {
        let mut child = Command::new(flowgate_bin())
            .args(["monitor", "-o", "json", "--related-to", &related_to.to_string(), "--socket"])
            .arg(socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flowgate monitor");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a flow JSON line names endpoint `id` on either side.
fn involves(line: &Value, id: u16) -> bool {
    let flow = &line["flow"];
    flow["source"]["ID"].as_u64() == Some(u64::from(id)) || flow["destination"]["ID"].as_u64() == Some(u64::from(id))
}

#[test]
fn json_lines_show_the_denied_connection_and_only_the_related_endpoint() {
    let setup = Setup::new("monjson");
    let (a, b) = (setup.id("x/a"), setup.id("x/b"));
    let monitor = Monitor::json(setup.socket(), b);
    let deadline = Instant::now() + Duration::from_secs(30);
    let denied = loop {
        // Unrelated traffic (a -> c is allowed and does not involve b) and the denied connection a -> b.
        assert!(setup.probe("x/a", "x/c"), "x/a reaches x/c (no policy selects it)");
        assert!(!setup.probe("x/a", "x/b"), "x/a must not reach x/b under {DENY_B}");
        std::thread::sleep(Duration::from_millis(300));
        let found = monitor.lines().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| {
            let f = &v["flow"];
            f["verdict"] == "DROPPED" && f["event_type"]["type"] == 5 && f["destination"]["ID"] == b
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no DROPPED policy verdict for x/b within 30s; got:\n{}",
            monitor.lines().join("\n")
        );
    };
    let f = &denied["flow"];
    assert_eq!(f["source"]["ID"], a, "{denied}");
    assert_eq!(f["destination"]["pod_name"], "b");
    assert_eq!(f["destination"]["namespace"], "x");
    assert_eq!(f["traffic_direction"], "INGRESS");
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(f["l4"]["TCP"]["destination_port"], 80);
    assert_eq!(f["l4"]["TCP"]["flags"]["SYN"], true);
    assert_eq!(
        f["ingress_denied_by"],
        serde_json::json!([{"name": "deny-ingress-to-b", "namespace": "x", "kind": "NetworkPolicy"}])
    );
    assert!(denied["node_name"].as_str().is_some_and(|n| !n.is_empty()));
    // Nothing unrelated: every line is a flow involving b (or a lost-events record).
    let lines = monitor.lines();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("lost_events").is_some() || involves(&v, b), "a line not involving endpoint {b}:\n{line}");
    }
}

/// `tmux` on a private server socket, killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().expect("run tmux (apt-get install tmux)")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "mon"]).stdout).into_owned()
    }

    fn display(&self, format: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["display-message", "-p", "-t", "mon", format]).stdout).trim().to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The table rows of a captured screen: lines with a `HH:MM:SS.mmm` time.
fn table_rows(screen: &str) -> Vec<&str> {
    screen
        .lines()
        .filter(|l| {
            let t: Vec<char> = l.trim_start_matches('│').chars().take(12).collect();
            t.len() == 12
                && t[2] == ':'
                && t[5] == ':'
                && t[8] == '.'
                && t.iter().filter(|c| c.is_ascii_digit()).count() == 9
        })
        .collect()
}

#[test]
fn tui_in_tmux_shows_the_denied_verdict_only_for_the_endpoint_and_quits_cleanly() {
    let setup = Setup::new("montui");
    let b = setup.id("x/b");
    let tmux = Tmux { socket: std::env::temp_dir().join(format!("flowgate-test-tmux-{}", std::process::id())) };
    let shell_ok = tmux.cmd(&["new-session", "-d", "-s", "mon", "-x", "200", "-y", "50", "bash --norc --noprofile"]);
    assert!(shell_ok.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&shell_ok.stderr));
    let command = format!(
        "{} monitor --socket {} --related-to {b}; echo MONITOR-EXIT=$?; stty -a | grep -o -- '-\\?icanon'",
        flowgate_bin().display(),
        setup.socket().display()
    );
    tmux.cmd(&["send-keys", "-t", "mon", &command, "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        assert!(setup.probe("x/a", "x/c"));
        assert!(!setup.probe("x/a", "x/b"));
        std::thread::sleep(Duration::from_millis(300));
        let screen = tmux.capture();
        if table_rows(&screen).iter().any(|r| r.contains("DENIED")) {
            break screen;
        }
        assert!(Instant::now() < deadline, "no DENIED row within 30s:\n{screen}");
    };
    eprintln!("{screen}");
    assert!(screen.contains(&format!("following {b} (x/b)")), "header names the endpoint followed:\n{screen}");
    assert!(screen.contains("connected"), "{screen}");
    let rows = table_rows(&screen);
    let target = format!("x/b [{b}]");
    for row in &rows {
        assert!(row.contains(&target), "a row not involving {target}:\n{row}\n\n{screen}");
    }
    let denied = rows.iter().find(|r| r.contains("DENIED")).unwrap();
    assert!(
        denied.contains("80/TCP")
            && denied.contains("ingress")
            && denied.contains("default deny (x/deny-ingress-to-b)"),
        "{denied}"
    );
    assert_eq!(tmux.display("#{alternate_on}"), "1", "the TUI uses the alternate screen");

    tmux.cmd(&["send-keys", "-t", "mon", "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let screen = tmux.capture();
        // Output lines, not the echoed command line (which contains both words too).
        let exit = screen.lines().find(|l| l.starts_with("MONITOR-EXIT=")).map(str::to_owned);
        let mode = screen.lines().find(|l| l.trim() == "icanon" || l.trim() == "-icanon").map(|l| l.trim().to_owned());
        if let (Some(exit), Some(mode)) = (exit, mode) {
            break (exit, mode, screen);
        }
        assert!(Instant::now() < deadline, "the monitor did not quit on q:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (exit, mode, screen) = after;
    assert_eq!(exit, "MONITOR-EXIT=0", "{screen}");
    assert_eq!(mode, "icanon", "the terminal is left in raw mode:\n{screen}");
    assert_eq!(tmux.display("#{alternate_on}"), "0", "the alternate screen is left");
}

#[test]
fn tui_shows_the_agent_going_away_and_reconnects_when_it_is_back() {
    let setup = Setup::new("monrec");
    let b = setup.id("x/b");
    let tmux = Tmux { socket: std::env::temp_dir().join(format!("flowgate-test-tmux-rec-{}", std::process::id())) };
    let started = tmux.cmd(&["new-session", "-d", "-s", "mon", "-x", "200", "-y", "50", "bash --norc --noprofile"]);
    assert!(started.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&started.stderr));
    let command =
        format!("{} monitor --socket {} --related-to {b}", flowgate_bin().display(), setup.socket().display());
    tmux.cmd(&["send-keys", "-t", "mon", &command, "Enter"]);
    let Setup { lab, _sockets, _policies, agent, endpoints: _ } = setup;
    let probe = || {
        let (report, _) =
            lab.probe(&["--from", "x/a", "--to", "x/b", "--port", "80", "--protocol", "TCP", "--timeout", "300ms"]);
        report
    };
    let wait_for = |what: &str, check: &dyn Fn(&str) -> bool, with_traffic: bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if with_traffic {
                probe();
            }
            std::thread::sleep(Duration::from_millis(300));
            let screen = tmux.capture();
            if check(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} within 30s:\n{screen}");
        }
    };
    wait_for("DENIED row", &|s| table_rows(s).iter().any(|r| r.contains("DENIED")), true);

    // The agent goes away: the monitor says so and keeps what it showed.
    let socket = agent.socket.clone();
    agent.kill_hard();
    let screen = wait_for("disconnected banner", &|s| s.contains("disconnected"), false);
    assert!(table_rows(&screen).iter().any(|r| r.contains("DENIED")), "rows from before stay:\n{screen}");

    // A new agent on the same socket: the monitor reconnects by itself and shows new verdicts.
    let agent = AgentGuard::start(&lab.name, &socket, &["--policies", _policies.0.to_str().unwrap()]);
    let denied_before = table_rows(&screen).iter().filter(|r| r.contains("DENIED")).count();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        probe();
        std::thread::sleep(Duration::from_millis(300));
        let screen = tmux.capture();
        let denied = table_rows(&screen).iter().filter(|r| r.contains("DENIED")).count();
        if !screen.contains("disconnected") && denied > denied_before {
            break;
        }
        assert!(Instant::now() < deadline, "the monitor did not reconnect and show new verdicts:\n{screen}");
    }
    tmux.cmd(&["send-keys", "-t", "mon", "q"]);
    drop(agent);
}

#[test]
fn unknown_endpoint_is_one_line_listing_the_known_ones() {
    let setup = Setup::new("monunk");
    let socket = setup.socket().to_str().unwrap().to_owned();
    let out = flowgate(&["monitor", "--socket", &socket, "--related-to", "999", "-o", "text"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    assert!(stderr.starts_with("flowgate: no endpoint 999 on this agent; known endpoints: "), "{stderr}");
    for (pod, id) in &setup.endpoints {
        assert!(stderr.contains(&format!("{id} ({pod})")), "{pod} missing:\n{stderr}");
    }
    assert!(out.stdout.is_empty());
    // --to is checked too.
    let out = flowgate(&["monitor", "--socket", &socket, "--to", "998", "-o", "json"]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("flowgate: no endpoint 998 on this agent"));
    // No agent: one line saying so.
    let gone = setup._sockets.socket("nobody");
    let out = flowgate(&["monitor", "--socket", gone.to_str().unwrap(), "-o", "text"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("flowgate: no agent is listening on "), "{stderr}");
}
