//! A restarted agent keeps enforcement: maps are pinned and the programs stay attached (tc filters stay on
//! their interfaces, TCX links are pinned), so while the agent is gone (killed with SIGKILL) the programs go
//! on enforcing, and the next agent adopts the maps and swaps its programs into the filters or links
//! atomically, also when it attaches in the other mode (it attaches its own, then removes the others).
//! Throughout, a denied connection stays denied and an allowed one (an established TCP connection, and new
//! connections on the allowed path) keeps working; afterwards every interface has the new agent's programs
//! once, in its mode, and nothing of the other.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flowgate_tests::{
    LabGuard, TempDir,
    agent::{AgentGuard, SocketDir},
    attached::{Attached, attached},
    example, flowgate_ok, require_root,
};

const POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-from-y-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80, protocol: TCP}]
";

/// Connects from inside a pod's namespace.
fn connect_from(netns: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    flowgate_lab::netns::in_netns(netns, move || TcpStream::connect_timeout(&to, timeout))
        .map_err(std::io::Error::other)?
}

#[derive(Debug, Default)]
struct Tally {
    attempts: u64,
    successes: u64,
    /// Attempts made while no agent was running.
    while_down: u64,
}

/// An attach mode: the agent's arguments for it, and what it attaches to an interface.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Tc,
    Tcx,
}

impl Mode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Tc => &[],
            Self::Tcx => &["--attach-mode", "tcx"],
        }
    }

    fn attached(self) -> Attached {
        match self {
            Self::Tc => Attached::TC,
            Self::Tcx => Attached::TCX,
        }
    }

    /// What `flowgate status` calls it.
    fn name(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Tcx => "tcx",
        }
    }
}

/// The attach mode the agent behind `socket` reports (`flowgate status -o json`).
fn reported_mode(socket: &std::path::Path) -> String {
    let status: serde_json::Value =
        serde_json::from_str(&flowgate_ok(&["status", "--socket", socket.to_str().unwrap(), "-o", "json"]))
            .expect("status -o json");
    status["attach_mode"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn enforcement_holds_through_a_kill_9_restart() {
    holds_through_a_kill_9_restart("restart", Mode::Tc, Mode::Tc);
}

#[test]
fn enforcement_holds_through_a_kill_9_restart_with_tcx_links() {
    holds_through_a_kill_9_restart("restart-tcx", Mode::Tcx, Mode::Tcx);
}

#[test]
fn enforcement_holds_when_the_restarted_agent_moves_from_tcx_links_to_tc_filters() {
    holds_through_a_kill_9_restart("restart-to-tc", Mode::Tcx, Mode::Tc);
}

#[test]
fn enforcement_holds_when_the_restarted_agent_moves_from_tc_filters_to_tcx_links() {
    holds_through_a_kill_9_restart("restart-to-tcx", Mode::Tc, Mode::Tcx);
}

fn holds_through_a_kill_9_restart(lab_name: &str, first_mode: Mode, second_mode: Mode) {
    require_root();
    let lab = LabGuard::up(lab_name, &example("lab-netpol.yaml"));
    let pod =
        |name: &str| lab.state.pods.iter().find(|p| format!("{}/{}", p.namespace, p.name) == name).unwrap().clone();
    let (xa, ya, yb, za) = (pod("x/a"), pod("y/a"), pod("y/b"), pod("z/a"));
    let target = SocketAddr::from((xa.ip, 80));

    let policy_dir = TempDir::new(&format!("{lab_name}-policies"));
    let policies = policy_dir.path();
    std::fs::write(policies.join("policy.yaml"), POLICY).unwrap();
    let dir = SocketDir::new(lab_name);
    let socket = dir.socket("agent.sock");
    let args = |mode: Mode| [&["--policies", policies.to_str().unwrap()], mode.args()].concat();
    let first = AgentGuard::start(&lab.name, &socket, &args(first_mode));
    for pod in &lab.state.pods {
        assert_eq!(attached(&lab.state.node_netns, &pod.host_ifname), first_mode.attached(), "{}", pod.name);
    }
    assert_eq!(reported_mode(&socket), first_mode.name(), "the first agent's status");

    // Sanity: the policy is in effect before the restart.
    assert!(connect_from(&za.netns, target, Duration::from_millis(500)).is_err(), "z/a -> x/a is denied");
    let mut established = connect_from(&ya.netns, target, Duration::from_secs(1)).expect("y/a -> x/a is allowed");
    established.set_read_timeout(Some(Duration::from_secs(1))).unwrap();

    let agent_down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let probe = |netns: String, timeout: Duration| {
        let (agent_down, stop) = (Arc::clone(&agent_down), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut tally = Tally::default();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let down = agent_down.load(Ordering::Relaxed);
                tally.attempts += 1;
                tally.while_down += u64::from(down);
                if connect_from(&netns, target, timeout).is_ok() {
                    tally.successes += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tally
        })
    };
    let denied = probe(za.netns.clone(), Duration::from_millis(200));
    let allowed = probe(yb.netns.clone(), Duration::from_secs(1));

    // The established connection echoes throughout.
    let echo = |stream: &mut TcpStream, round: u32| {
        let msg = format!("round-{round:04}");
        stream.write_all(msg.as_bytes()).expect("write on the established connection");
        let mut buf = vec![0u8; msg.len()];
        stream.read_exact(&mut buf).expect("echo on the established connection");
        assert_eq!(buf, msg.as_bytes());
    };
    let mut round = 0;
    let mut run_for = |stream: &mut TcpStream, how_long: Duration| {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            echo(stream, round);
            round += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    run_for(&mut established, Duration::from_millis(500));

    first.kill_hard();
    agent_down.store(true, Ordering::Relaxed);
    run_for(&mut established, Duration::from_secs(1));
    let second = AgentGuard::start(&lab.name, &socket, &args(second_mode));
    agent_down.store(false, Ordering::Relaxed);
    assert!(
        second.output().contains("adopted the pinned maps"),
        "the new agent adopted the maps:\n{}",
        second.output()
    );
    run_for(&mut established, Duration::from_millis(700));

    stop.store(true, Ordering::Relaxed);
    let denied = denied.join().unwrap();
    let allowed = allowed.join().unwrap();
    println!("denied path: {denied:?}; allowed path: {allowed:?}; echo rounds: {round}");
    assert_eq!(denied.successes, 0, "z/a never reached x/a: {denied:?}");
    assert!(denied.while_down > 0, "denied attempts were made while no agent ran: {denied:?}");
    assert_eq!(allowed.successes, allowed.attempts, "every new allowed connection worked: {allowed:?}");
    assert!(allowed.while_down > 0, "allowed attempts were made while no agent ran: {allowed:?}");
    for pod in &lab.state.pods {
        let what = format!("{}/{} after the restart", pod.namespace, pod.name);
        assert_eq!(attached(&lab.state.node_netns, &pod.host_ifname), second_mode.attached(), "{what}");
    }
    assert_eq!(reported_mode(&socket), second_mode.name(), "the second agent's status");
    drop(second);
}
