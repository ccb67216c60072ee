//! The agent's unix socket against a real agent on a real lab: bad input gets an error or refusal frame
//! and the agent keeps serving; peers outside the socket's group are refused (by the agent, and by the
//! file mode); a second agent on the same path refuses to start while a stale socket is replaced; and
//! `status`, `endpoint` and `identity` show the lab's pods. Run as root (`make test`).

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use flowgate_proto::{
    ClientMessage, PROTOCOL_VERSION, ProtocolVersion, ServerMessage,
    client::{Client, ClientError},
    codec,
    message::{Hello, Refusal, Request},
};
use flowgate_tests::{
    LabGuard,
    agent::{AgentGuard, SocketDir, hello, read_log, runtime, spawn_agent},
    example, flowgate, flowgate_bin, flowgate_ok, require_root,
};
use tokio_util::codec::Decoder as _;

/// Sends raw bytes and returns every frame the agent sends until it closes the connection.
fn raw_exchange(socket: &Path, bytes: &[u8]) -> Vec<ServerMessage> {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent may close before reading everything we send; what it answered is still readable.
    let _ = stream.write_all(bytes);
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("the agent closes the connection");
    let mut buf = BytesMut::from(&got[..]);
    let mut framing = codec::framing();
    let mut frames = Vec::new();
    while let Some(frame) = framing.decode(&mut buf).expect("valid frames") {
        frames.push(codec::decode("server", &frame).expect("a server message"));
    }
    assert!(buf.is_empty(), "a partial frame after {frames:?}");
    frames
}

fn framed(message: &ClientMessage) -> Vec<u8> {
    let body = codec::encode("client", message).unwrap();
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn sock_arg(socket: &Path) -> String {
    socket.to_str().expect("utf-8 path").to_owned()
}

fn status_json(socket: &Path) -> serde_json::Value {
    let out = flowgate_ok(&["status", "--socket", &sock_arg(socket), "-o", "json"]);
    serde_json::from_str(&out).expect("status -o json prints JSON")
}

fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim_end().to_owned()
}

#[test]
fn bad_input_gets_an_error_frame_and_the_agent_keeps_serving() {
    require_root();
    let lab = LabGuard::up("sockbad", &example("lab-small.yaml"));
    let dir = SocketDir::new("bad");
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent"), &[]);

    let replies = raw_exchange(&agent.socket, b"\x00\x00\x00\x0cnot a hello!");
    let [ServerMessage::Error { message }] = &replies[..] else { panic!("garbage: {replies:?}") };
    assert!(
        message.starts_with("the first frame is not a hello: decoding a client hello message (12 bytes)"),
        "{message}"
    );

    let replies = raw_exchange(&agent.socket, &0xffff_fff0_u32.to_be_bytes());
    assert_eq!(
        replies,
        [ServerMessage::Error {
            message: "frame of 4294967280 bytes is over the limit of 4194304 bytes (while waiting for the hello)"
                .into()
        }]
    );

    // Garbage after a good hello: the hello is answered, then the error.
    let mut bytes = framed(&ClientMessage::Hello(Hello { protocol: PROTOCOL_VERSION, software: "raw".into() }));
    bytes.extend_from_slice(b"\x00\x00\x00\x03\xc1\xc1\xc1");
    let replies = raw_exchange(&agent.socket, &bytes);
    assert!(matches!(&replies[0], ServerMessage::Hello(h) if h.protocol == PROTOCOL_VERSION), "{replies:?}");
    let ServerMessage::Error { message } = &replies[1] else { panic!("{replies:?}") };
    assert!(message.starts_with("could not decode a request"), "{message}");

    let future =
        Hello { protocol: ProtocolVersion { major: PROTOCOL_VERSION.major + 1, minor: 0 }, software: "future".into() };
    let err = runtime().block_on(Client::connect_as(&agent.socket, future)).err().expect("refused");
    let ClientError::Refused { reason: Refusal::VersionMismatch, message, .. } = &err else { panic!("{err:?}") };
    assert_eq!(
        *message,
        format!(
            "protocol version mismatch: agent speaks {PROTOCOL_VERSION}, client speaks {}.0",
            PROTOCOL_VERSION.major + 1
        )
    );

    // Still up, and still serving.
    let status = status_json(&agent.socket);
    assert_eq!(status["endpoints"], 2, "{status}");
    assert!(agent.output().contains("the first frame is not a hello"), "the agent logs refusals");
}

#[test]
fn peers_outside_the_socket_group_are_refused() {
    require_root();
    let lab = LabGuard::up("sockperm", &example("lab-small.yaml"));
    let dir = SocketDir::new("perm");
    let nobody = |socket: &Path| -> Output {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(flowgate_bin())
            .args(["status", "--socket", &sock_arg(socket)])
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run setpriv (util-linux)")
    };

    // Socket open to everyone: the agent itself checks SO_PEERCRED and refuses.
    let open = AgentGuard::start(&lab.name, &dir.socket("open"), &["--socket-mode", "0666"]);
    let out = nobody(&open.socket);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr_line(&out);
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(
        err.starts_with(&format!(
            "flowgate: the agent on {} refused this client: permission denied: uid 65534",
            open.socket.display()
        )),
        "{err}"
    );
    assert!(err.contains("is neither root nor in group") || err.contains("has no socket group"), "{err}");
    assert!(status_json(&open.socket)["clients"].as_array().unwrap().len() == 1, "the refused peer is gone");
    drop(open);

    // Default mode 0660: the kernel refuses, and the command says what to do.
    let closed = AgentGuard::start(&lab.name, &dir.socket("closed"), &[]);
    let out = nobody(&closed.socket);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        stderr_line(&out),
        format!(
            "flowgate: permission denied on {}: run as root or join group `flowgate` (usermod -aG flowgate $USER, then \
             log in again)",
            closed.socket.display()
        )
    );
    // Root still gets in.
    status_json(&closed.socket);
}

/// A group made for one test, removed when it ends (also when it fails).
struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    fn new(name: &str) -> Self {
        let _ = Command::new("groupdel").arg(name).output();
        let out = Command::new("groupadd").args(["--system", name]).output().expect("run groupadd");
        assert!(out.status.success(), "groupadd {name}: {out:?}");
        let gid = nix::unistd::Group::from_name(name).unwrap().expect("the group just made").gid.as_raw();
        Self { name: name.to_owned(), gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// Reading is for the socket group; changing the agent (endpoint config) is for root or `--admin-group`.
/// Real processes under other users and groups (setpriv), a real agent.
#[test]
fn members_of_the_socket_group_read_and_only_admins_change() {
    require_root();
    let lab = LabGuard::up("sockadm", &example("lab-small.yaml"));
    let dir = SocketDir::new("adm");
    let readers = TestGroup::new("fgtest-readers");
    let admins = TestGroup::new("fgtest-admins");
    // uid 65534 with the given supplementary groups, running `flowgate ARGS`.
    let as_user = |groups: &[u32], args: &[&str]| -> Output {
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", &format!("--groups={}", groups.join(","))])
            .arg("--")
            .arg(flowgate_bin())
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run setpriv (util-linux)")
    };
    let agent = AgentGuard::start(
        &lab.name,
        &dir.socket("agent"),
        &["--socket-group", &readers.name, "--admin-group", &admins.name],
    );
    let socket = sock_arg(&agent.socket);
    let config = |on: &'static str| vec!["endpoint", "config", "1", on, "--socket", socket.as_str()];

    // A reader reads ...
    let out = as_user(&[readers.gid], &["status", "--socket", &socket, "-o", "json"]);
    assert!(out.status.success(), "a member of the socket group reads: {out:?}");
    let out = as_user(&[readers.gid], &["endpoint", "list", "--socket", &socket]);
    assert!(out.status.success(), "{out:?}");
    // ... but cannot switch enforcement off.
    let out = as_user(&[readers.gid], &config("audit=on"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr_line(&out);
    assert!(
        err.contains("permission denied: changing the agent needs root or group `fgtest-admins`")
            && err.contains("uid 65534"),
        "{err}"
    );
    let status = status_json(&agent.socket);
    assert_eq!(status["counters"]["requests_refused"], 1, "the refusal is counted: {status}");
    // An admin (also in the socket group) may.
    let out = as_user(&[readers.gid, admins.gid], &config("audit=on"));
    assert!(out.status.success(), "a member of the admin group changes the agent: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("endpoint 1"), "{out:?}");
    let out = as_user(&[readers.gid, admins.gid], &config("audit=off"));
    assert!(out.status.success(), "{out:?}");
    // Root always may.
    flowgate_ok(&config("audit=on"));
    flowgate_ok(&config("audit=off"));
    assert_eq!(status_json(&agent.socket)["counters"]["requests_refused"], 1);
    drop(agent);

    // Without --admin-group, only root changes the agent.
    let agent = AgentGuard::start(&lab.name, &dir.socket("rootonly"), &["--socket-group", &readers.name]);
    let socket = sock_arg(&agent.socket);
    let out = as_user(&[readers.gid, admins.gid], &["endpoint", "config", "1", "audit=on", "--socket", &socket]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr_line(&out).contains("changing the agent needs root (the agent has no --admin-group)"), "{out:?}");
}

#[test]
fn a_second_agent_on_the_same_socket_refuses_and_a_stale_socket_is_replaced() {
    require_root();
    let lab = LabGuard::up("socktwo", &example("lab-small.yaml"));
    let dir = SocketDir::new("two");
    let socket = dir.socket("agent");
    let first = AgentGuard::start(&lab.name, &socket, &[]);

    let second_log = dir.path().join("second.log");
    let mut second = spawn_agent(&lab.name, &socket, &[], &second_log);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second agent kept running:\n{}", read_log(&second_log));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = read_log(&second_log);
    assert!(
        log.contains(&format!(
            "another flowgate-agent (pid {}) is already serving {}: stop it first, or give this one another --socket",
            first.pid(),
            socket.display()
        )),
        "{log}"
    );
    // The first agent was not disturbed.
    assert_eq!(status_json(&socket)["endpoints"], 2);

    // SIGKILL leaves the socket file behind; the next agent replaces it.
    first.kill_hard();
    assert!(socket.exists(), "a killed agent leaves its socket");
    let err = hello(&socket).expect_err("nobody listens");
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    let out = flowgate(&["status", "--socket", &sock_arg(&socket)]);
    assert_eq!(
        stderr_line(&out),
        format!(
            "flowgate: no agent is listening on {}: start it with `flowgate-agent --lab NAME` (or point --socket / \
             $FLOWGATE_SOCKET at the agent's socket)",
            socket.display()
        )
    );
    let third = AgentGuard::start(&lab.name, &socket, &[]);
    assert!(third.output().contains("replaced the stale socket"), "{}", third.output());
    assert_eq!(status_json(&third.socket)["endpoints"], 2);
    drop(third);
    assert!(!socket.exists(), "a stopped agent removes its socket");
}

#[test]
fn status_endpoints_and_identities_show_the_labs_pods() {
    require_root();
    let lab = LabGuard::up("sockreq", &example("lab-netpol.yaml"));
    let dir = SocketDir::new("req");
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent"), &[]);
    let socket = sock_arg(&agent.socket);

    let status = status_json(&agent.socket);
    assert_eq!(status["endpoints"], lab.state.pods.len(), "{status}");
    assert_eq!(status["protocol"]["major"], PROTOCOL_VERSION.major);
    assert!(status["identities"].as_u64().unwrap() >= 3, "{status}");
    let clients = status["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "the status client itself: {status}");
    assert!(clients[0]["software"].as_str().unwrap().starts_with("flowgate "));

    let list: serde_json::Value =
        serde_json::from_str(&flowgate_ok(&["endpoint", "list", "--socket", &socket, "-o", "json"])).unwrap();
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), lab.state.pods.len());
    let mut ids = Vec::new();
    for pod in &lab.state.pods {
        let ep = list
            .iter()
            .find(|e| e["namespace"] == pod.namespace.as_str() && e["pod_name"] == pod.name.as_str())
            .unwrap_or_else(|| panic!("{}/{} is listed", pod.namespace, pod.name));
        assert_eq!(ep["ipv4"], pod.ip.to_string());
        assert_eq!(ep["interface"], pod.host_ifname.as_str());
        assert_eq!(ep["state"], "ready", "{ep}");
        assert_ne!(ep["identity"], 0);
        ids.push(ep["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), lab.state.pods.len(), "distinct endpoint ids");

    let table = flowgate_ok(&["endpoint", "list", "--socket", &socket]);
    assert!(table.starts_with("ENDPOINT   POLICY (ingress)   POLICY (egress)   IDENTITY"), "{table}");
    for pod in &lab.state.pods {
        assert!(table.contains(&format!("{}/{}", pod.namespace, pod.name)), "{table}");
        assert!(table.contains(&pod.ip.to_string()), "{table}");
    }
    assert_eq!(table.matches("ready").count(), lab.state.pods.len(), "{table}");

    let one = ids[0].to_string();
    let got: serde_json::Value =
        serde_json::from_str(&flowgate_ok(&["endpoint", "get", &one, "--socket", &socket])).unwrap();
    assert_eq!(got["id"], ids[0]);
    let yaml = flowgate_ok(&["endpoint", "get", &one, "--socket", &socket, "-o", "yaml"]);
    assert!(yaml.contains(&format!("id: {one}\n")), "{yaml}");
    let out = flowgate(&["endpoint", "get", "999", "--socket", &socket]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_line(&out);
    assert!(err.starts_with("flowgate: no endpoint 999 on this agent; known endpoints: "), "{err}");
    assert!(err.contains("(x/a)"), "{err}");

    let identities: serde_json::Value =
        serde_json::from_str(&flowgate_ok(&["identity", "list", "--socket", &socket, "-o", "json"])).unwrap();
    let identities = identities.as_array().unwrap();
    let mut covered: Vec<u64> = identities
        .iter()
        .flat_map(|i| i["endpoints"].as_array().unwrap().iter().map(|e| e.as_u64().unwrap()))
        .collect();
    covered.sort_unstable();
    assert_eq!(covered, ids, "every endpoint has exactly one identity");
    for ep in list {
        let identity = identities.iter().find(|i| i["id"] == ep["identity"]).expect("its identity is listed");
        assert!(identity["endpoints"].as_array().unwrap().contains(&ep["id"]));
    }
    let table = flowgate_ok(&["identity", "list", "--socket", &socket]);
    assert!(table.starts_with("ID "), "{table}");

    // A request over the library client, too, and the client is gone from `status` afterwards.
    let rt = runtime();
    let mut client = rt.block_on(Client::connect(&agent.socket, "socket-test")).unwrap();
    let response = rt.block_on(client.request(Request::EndpointList)).unwrap();
    assert!(matches!(response, flowgate_proto::message::Response::Endpoints(eps) if eps.len() == lab.state.pods.len()));
}
