//! The monitor's TUI on the demo, in tmux, as a person uses it: the flow view, Tab to the connections view
//! (one row per connection, denied ones among them with their policy), the terminal resized to 80x24 (verdict
//! and policy still there, nothing wider than the screen) and to 120x40, Enter for a connection's events,
//! back to the flow view, `d` for verdicts and drops only, and `q` tears the demo down. Run as root.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use flowgate_tests::{LAB_DIR_ENV, assert_nothing_left, flowgate, flowgate_bin, lab_dir, require_root};

/// Brings the demo's lab down on drop (after tmux, and the demo in it, are gone), also when the test fails
/// half-way: `q` is then never pressed and the demo never tears its lab down. `lab down` of a lab that is
/// already gone does nothing.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let out = flowgate(&["lab", "down", &self.0]);
        if !out.status.success() {
            eprintln!("flowgate lab down {} failed: {}", self.0, String::from_utf8_lossy(&out.stderr));
        }
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
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "demo"]).stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        self.cmd(&["send-keys", "-t", "demo", keys]);
    }

    fn resize(&self, width: u16, height: u16) {
        let out = self.cmd(&["resize-window", "-t", "demo", "-x", &width.to_string(), "-y", &height.to_string()]);
        assert!(out.status.success(), "tmux resize-window: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The screen once `ready` holds for it, within `seconds`.
    fn wait_for(&self, what: &str, seconds: u64, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let screen = self.capture();
            if ready(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what} within {seconds}s; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn header_row(screen: &str) -> Option<&str> {
    screen.lines().find(|l| l.contains("VERDICT") && l.contains("POLICY"))
}

fn widest(screen: &str) -> usize {
    screen.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[test]
fn connections_view_on_the_demo_follows_resizes_and_shows_a_connections_events() {
    require_root();
    let name = format!("tuidemo-{}", std::process::id());
    // Declared before tmux: dropped after it.
    let _lab = DownOnDrop(name.clone());
    let tmux = Tmux { socket: std::env::temp_dir().join(format!("flowgate-test-tmux-demo-{}", std::process::id())) };
    let started = tmux.cmd(&["new-session", "-d", "-s", "demo", "-x", "200", "-y", "50", "bash --norc --noprofile"]);
    assert!(started.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&started.stderr));
    let command = format!(
        "cd /; {LAB_DIR_ENV}={} {} demo --name {name}; echo DEMO-EXIT=$?",
        lab_dir().display(),
        flowgate_bin().display()
    );
    tmux.keys(&command);
    tmux.keys("Enter");

    let flows = tmux.wait_for("a DENIED flow on the database", 90, |s| {
        s.contains("flows:") && s.lines().any(|l| l.contains("DENIED") && l.contains("frontend"))
    });
    assert!(flows.contains("following 1 (default/database)") || flows.contains("(default/database)"), "{flows}");

    tmux.keys("Tab");
    let columns = ["LAST", "SOURCE", "DESTINATION", "PORT", "VERDICT", "STATE", "PKTS", "POLICY"];
    tmux.wait_for("the connections view with every column and a denied frontend connection", 20, |s| {
        s.contains("connections:")
            && header_row(s).is_some_and(|h| columns.iter().all(|c| h.contains(c)))
            && s.lines().any(|l| {
                l.contains("frontend") && l.contains("DENIED") && l.contains("denied") && l.contains("default deny")
            })
            && s.lines().any(|l| l.contains("backend") && l.contains("ALLOWED"))
    });

    tmux.resize(80, 24);
    // Captures may catch a frame half drawn: each check waits for the screen to settle on what it expects.
    let small = tmux.wait_for("the connections view at 80x24 with verdict and policy", 10, |s| {
        widest(s) <= 80
            && s.lines().count() <= 24
            && header_row(s).is_some()
            && s.contains("connections:")
            && s.lines().any(|l| l.contains("frontend") && l.contains("DENIED") && l.contains("default deny"))
    });
    assert!(!small.contains("reserved:"), "labels shorten to their value:\n{small}");

    tmux.resize(120, 40);
    tmux.wait_for("the connections view at 120x40, policy names whole", 10, |s| {
        widest(s) <= 120
            && widest(s) > 80
            && header_row(s).is_some_and(|h| h.contains("LAST"))
            && s.lines().any(|l| l.contains("network-policy-walkthrough-db"))
    });

    tmux.keys("Enter");
    tmux.wait_for("the connection's detail with its events", 10, |s| {
        s.contains("connection (Enter or Esc to close)") && s.contains("events (") && s.contains("policy-verdict")
    });
    tmux.keys("Escape");
    tmux.keys("Tab");
    tmux.wait_for("the flow view again", 10, |s| s.contains("flows:") && !s.contains("connection (Enter"));
    tmux.keys("d");
    // A capture may catch a frame half drawn: the screen must settle on verdict and drop rows only.
    tmux.wait_for("verdicts and drops only, no forwarded traces", 10, |s| {
        let rows: Vec<&str> = s.lines().filter(|l| l.contains("/TCP")).collect();
        s.contains("flows (verdicts and drops)")
            && rows.iter().any(|r| r.contains("DENIED"))
            && rows.iter().all(|r| !r.contains("FORWARDED"))
    });

    tmux.keys("q");
    let after = tmux.wait_for("the demo to end", 30, |s| s.lines().any(|l| l.starts_with("DEMO-EXIT=")));
    assert!(after.lines().any(|l| l == "DEMO-EXIT=0"), "{after}");
    assert_nothing_left(&name, None);
}
