//! The server against the real client over a real socket in a temporary directory: hello, requests,
//! subscriptions, limits, bad input, and claiming the socket path.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::BytesMut;
use flowgate_proto::{
    ProtocolVersion,
    client::{Client, ClientError},
    codec,
    endpoint::{EndpointState, NewEndpoint},
    filter::FlowFilter,
    flow::fixtures::flow_between,
    message::{Event, Hello, Refusal, Request, Response, ServerMessage, Subscription},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
    sync::oneshot,
};
use tokio_util::codec::Decoder as _;

use super::*;
use flowgate_events::hub::{Hub, HubConfig};

use crate::state::{AgentInfo, AgentState};

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fg-server-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("agent.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server on a temporary socket, stopped on drop.
struct TestServer {
    dir: TempDir,
    state: Arc<AgentState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    async fn start(tag: &str, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = TempDir::new(tag);
        let mut config = ServerConfig { path: dir.sock(), ..ServerConfig::default() };
        tweak(&mut config);
        let listener = bind(&config).expect("bind");
        let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig { history: 64, queue_events: 2048 }));
        let ns = BTreeMap::new();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let ep = state
                .upsert_endpoint(
                    NewEndpoint {
                        namespace: "x".into(),
                        pod_name: name.into(),
                        labels: [("pod".to_owned(), name.to_owned())].into(),
                        ipv4: Ipv4Addr::new(10, 0, 0, i as u8 + 1),
                        ipv6: None,
                        interface: format!("lxc{i}"),
                        ifindex: i as u32 + 2,
                    },
                    &ns,
                )
                .expect("an endpoint id");
            state.set_endpoint_state(ep.id, EndpointState::Ready);
        }
        let (stop, stopped) = oneshot::channel();
        let api = crate::api::Api::new(Arc::clone(&state), None, None);
        let task = tokio::spawn(serve(listener, api, async move {
            let _ = stopped.await;
        }));
        Self { dir, state, stop: Some(stop), task: Some(task) }
    }

    fn sock(&self) -> PathBuf {
        self.dir.sock()
    }

    async fn client(&self) -> Client {
        Client::connect(self.sock(), "test").await.expect("connect")
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Writes raw bytes and reads the frames the server sends until it closes the connection.
async fn raw_exchange(path: &Path, bytes: &[u8]) -> Vec<ServerMessage> {
    let mut stream = UnixStream::connect(path).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let mut buf = BytesMut::from(&buf[..]);
    let mut framing = codec::framing();
    let mut out = Vec::new();
    while let Some(frame) = framing.decode(&mut buf).unwrap() {
        out.push(codec::decode("server", &frame).unwrap());
    }
    out
}

fn framed(message: &flowgate_proto::ClientMessage) -> Vec<u8> {
    let body = codec::encode("client", message).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

async fn status_works(server: &TestServer) {
    let mut client = server.client().await;
    let Response::Status(status) = client.request(Request::Status).await.unwrap() else { panic!() };
    assert_eq!(status.endpoints, 2);
}

#[tokio::test]
async fn hello_then_requests_answered_from_the_state() {
    let server = TestServer::start("req", |_| {}).await;
    let mut client = server.client().await;
    assert!(client.agent.software.starts_with("flowgate-agent "), "{}", client.agent.software);
    let Response::Endpoints(eps) = client.request(Request::EndpointList).await.unwrap() else { panic!() };
    assert_eq!(eps.iter().map(|e| e.pod_ref()).collect::<Vec<_>>(), ["x/a", "x/b"]);
    assert!(eps.iter().all(|e| e.state == EndpointState::Ready));
    let Response::NotFound { known, .. } = client.request(Request::EndpointGet { id: 77 }).await.unwrap() else {
        panic!()
    };
    assert_eq!(known, ["1 (x/a)", "2 (x/b)"]);
    let Response::Status(status) = client.request(Request::Status).await.unwrap() else { panic!() };
    assert_eq!(status.clients.len(), 1, "this client is listed");
    assert_eq!(status.clients[0].software, "test");
    assert_eq!(status.clients[0].pid, std::process::id() as i32);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn socket_gets_its_mode_and_is_removed_on_shutdown() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = TestServer::start("mode", |c| c.mode = 0o600).await;
    let path = server.sock();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    server.stop().await;
    assert!(!path.exists(), "the socket is removed on shutdown");
}

#[tokio::test]
async fn garbage_gets_an_error_frame_and_others_are_still_served() {
    let server = TestServer::start("garbage", |_| {}).await;
    let replies = raw_exchange(&server.sock(), b"\x00\x00\x00\x05hello, agent").await;
    let [ServerMessage::Error { message }] = &replies[..] else { panic!("{replies:?}") };
    assert!(
        message.starts_with("the first frame is not a hello: decoding a client hello message (5 bytes)"),
        "{message}"
    );
    status_works(&server).await;
    server.stop().await;
}

/// A hello nested 700 levels deep (about 0.7 KB) once overflowed a worker thread's stack: now it is a
/// decode error for that client, in a debug build too, and the agent goes on serving.
#[tokio::test]
async fn a_deeply_nested_frame_gets_an_error_and_others_are_still_served() {
    let server = TestServer::start("deep", |_| {}).await;
    for depth in [700usize, 100_000] {
        let mut body = vec![0x81, 0xa5]; // {"Hello": ...
        body.extend_from_slice(b"Hello");
        body.extend_from_slice(&[0x81, 0xa1, b'x']); // ... {"x": an unknown field, skipped by recursing
        body.extend(std::iter::repeat_n(0x91, depth)); // into arrays in arrays ...
        body.push(0xc0);
        let mut bytes = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let replies = raw_exchange(&server.sock(), &bytes).await;
        let [ServerMessage::Error { message }] = &replies[..] else { panic!("{replies:?}") };
        assert!(message.contains("depth limit exceeded"), "{message}");
    }
    status_works(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_length_prefix_gets_an_error_frame() {
    let server = TestServer::start("big", |_| {}).await;
    let replies = raw_exchange(&server.sock(), &u32::MAX.to_be_bytes()).await;
    let [ServerMessage::Error { message }] = &replies[..] else { panic!("{replies:?}") };
    assert_eq!(message, "frame of 4294967295 bytes is over the limit of 4194304 bytes (while waiting for the hello)");
    // Also after the hello.
    let hello = framed(&flowgate_proto::ClientMessage::Hello(Hello {
        protocol: flowgate_proto::PROTOCOL_VERSION,
        software: "raw".into(),
    }));
    let mut bytes = hello.clone();
    bytes.extend_from_slice(&(8u32 << 20).to_be_bytes());
    let replies = raw_exchange(&server.sock(), &bytes).await;
    assert!(matches!(replies[0], ServerMessage::Hello(_)), "{replies:?}");
    let ServerMessage::Error { message } = &replies[1] else { panic!("{replies:?}") };
    assert!(message.contains("8388608 bytes is over the limit"), "{message}");
    status_works(&server).await;
    server.stop().await;
}

/// A client whose frames reach the agent in pieces: byte by byte, and in chunks of pseudo-random sizes,
/// with a pause between writes so every piece arrives as its own read. Requests larger than the
/// agent's read buffer are in the stream too (a subscription naming many pods).
#[tokio::test]
async fn frames_written_in_pieces_are_read_whole() {
    let server = TestServer::start("pieces", |_| {}).await;
    let hello = framed(&flowgate_proto::ClientMessage::Hello(Hello {
        protocol: flowgate_proto::version::PROTOCOL_VERSION,
        software: "pieces".into(),
    }));
    let status = framed(&flowgate_proto::ClientMessage::Request(Request::Status));
    let big = framed(&flowgate_proto::ClientMessage::Request(Request::EndpointGet { id: 2 }));
    let mut stream = hello.clone();
    for _ in 0..3 {
        stream.extend_from_slice(&status);
    }
    stream.extend_from_slice(&big);
    for chunking in ["bytes", "random"] {
        let mut sock = UnixStream::connect(server.sock()).await.unwrap();
        let mut seed = 0x9e37_79b9_u32;
        let mut at = 0;
        while at < stream.len() {
            let n = if chunking == "bytes" {
                1
            } else {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                1 + (seed as usize % 37)
            };
            let end = (at + n).min(stream.len());
            sock.write_all(&stream[at..end]).await.unwrap();
            sock.flush().await.unwrap();
            tokio::time::sleep(Duration::from_micros(200)).await;
            at = end;
        }
        sock.shutdown().await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await.expect("replies").unwrap();
        let mut buf = BytesMut::from(&buf[..]);
        let mut framing = codec::framing();
        let mut replies = Vec::new();
        while let Some(frame) = framing.decode(&mut buf).unwrap() {
            replies.push(codec::decode::<ServerMessage>("server", &frame).unwrap());
        }
        assert_eq!(replies.len(), 5, "{chunking}: hello + 3 status + endpoint: {replies:?}");
        assert!(matches!(replies[0], ServerMessage::Hello(_)), "{chunking}: {:?}", replies[0]);
        for r in &replies[1..4] {
            assert!(matches!(r, ServerMessage::Response(Response::Status(_))), "{chunking}: {r:?}");
        }
        assert!(
            matches!(&replies[4], ServerMessage::Response(Response::Endpoint(ep)) if ep.pod_name == "b"),
            "{chunking}: {:?}",
            replies[4]
        );
    }
    server.stop().await;
}

/// A subscription naming more filter values than the cap is refused with a clear error; a big but
/// allowed one (1,000 pods) is served.
#[tokio::test]
async fn oversized_subscription_filters_are_refused_with_a_clear_error() {
    let server = TestServer::start("bigfilter", |_| {}).await;
    let pods = |n: usize| -> Vec<flowgate_proto::filter::PodSelector> {
        (0..n).map(|i| format!("x/pod-{i}").parse().unwrap()).collect()
    };
    let subscribe = |n| Subscription {
        allow: vec![flowgate_proto::filter::FlowFilter { pods: pods(n), ..Default::default() }],
        follow: false,
        ..Subscription::default()
    };
    let client = server.client().await;
    let mut stream = client.subscribe(subscribe(flowgate_proto::filter::MAX_FILTER_VALUES + 1)).await.unwrap();
    let err = match stream.next_batch().await {
        Some(Err(e)) => e.to_string(),
        other => panic!("refused, got {other:?}"),
    };
    assert!(err.contains("more than the 16384 a subscription may"), "{err}");
    let client = server.client().await;
    let mut stream = client.subscribe(subscribe(1000)).await.unwrap();
    while let Some(batch) = stream.next_batch().await {
        batch.expect("1,000 pods are served");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_request_before_the_hello_is_an_error() {
    let server = TestServer::start("nohello", |_| {}).await;
    let replies = raw_exchange(&server.sock(), &framed(&flowgate_proto::ClientMessage::Request(Request::Status))).await;
    assert_eq!(replies, [ServerMessage::Error { message: "the first frame must be a hello, got a request".into() }]);
    server.stop().await;
}

#[tokio::test]
async fn other_major_is_refused_with_both_versions() {
    let server = TestServer::start("major", |_| {}).await;
    let hello = Hello { protocol: ProtocolVersion { major: 2, minor: 0 }, software: "future".into() };
    let err = Client::connect_as(server.sock(), hello).await.err().expect("refused");
    let ClientError::Refused { reason, message, .. } = &err else { panic!("{err:?}") };
    assert_eq!(*reason, Refusal::VersionMismatch);
    assert_eq!(
        *message,
        format!("protocol version mismatch: agent speaks {}, client speaks 2.0", flowgate_proto::PROTOCOL_VERSION)
    );
    // A newer minor is fine.
    let hello = Hello { protocol: ProtocolVersion { major: 1, minor: 9 }, software: "newer".into() };
    Client::connect_as(server.sock(), hello).await.expect("same major");
    status_works(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn silent_client_times_out_in_the_handshake() {
    let server = TestServer::start("silent", |c| c.handshake_timeout = Duration::from_millis(200)).await;
    let replies = raw_exchange(&server.sock(), b"").await;
    assert_eq!(replies, [ServerMessage::Error { message: "no hello within 0.2s".into() }]);
    server.stop().await;
}

/// Clients that say hello and then nothing cannot hold the slots: once slots run short, a client idle
/// for the idle timeout is closed (and told why) and a newcomer gets in. With slots to spare, idle
/// clients stay.
#[tokio::test]
async fn idle_clients_give_their_slots_up_when_slots_run_short() {
    let server = TestServer::start("idle", |c| {
        c.max_clients = 8;
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // Two idle clients of eight slots: plenty left, they stay.
    let mut idle: Vec<Client> = Vec::new();
    for _ in 0..2 {
        idle.push(server.client().await);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for c in &mut idle {
        assert!(c.request(Request::Status).await.is_ok(), "an idle client stays while slots are free");
    }
    // Six more: every slot taken; the next client is refused ...
    for _ in 0..6 {
        idle.push(server.client().await);
    }
    let err = Client::connect(server.sock(), "late").await.err().expect("refused while full");
    assert!(matches!(err, ClientError::Refused { reason: Refusal::TooManyClients, .. }), "{err:?}");
    // ... until the idle ones are closed at their timeout.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut late = Client::connect(server.sock(), "late").await.expect("a slot freed by an idle client");
    assert!(late.request(Request::Status).await.is_ok());
    // The idle clients were told why and closed (the client sees the error frame, or the closed pipe
    // when its next request is written after the close).
    assert!(idle[0].request(Request::Status).await.is_err(), "the idle client was closed");
    server.stop().await;
}

#[tokio::test]
async fn clients_over_the_limit_are_refused_until_a_slot_frees() {
    let server = TestServer::start("limit", |c| c.max_clients = 1).await;
    let first = server.client().await;
    let err = Client::connect(server.sock(), "second").await.err().expect("refused");
    let ClientError::Refused { reason: Refusal::TooManyClients, message, .. } = &err else { panic!("{err:?}") };
    assert!(message.starts_with("too many clients: the agent already serves 1"), "{message}");
    drop(first);
    // The slot is freed when the first session ends, which it notices shortly.
    let mut tries = 0;
    loop {
        match Client::connect(server.sock(), "third").await {
            Ok(_) => break,
            Err(e) if tries < 50 => {
                assert!(matches!(e, ClientError::Refused { reason: Refusal::TooManyClients, .. }), "{e:?}");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the slot never came back: {e}"),
        }
    }
    server.stop().await;
}

/// A symlink planted where the socket's lock file goes is not followed: the agent refuses to start and
/// the file the link names is left as it was.
#[tokio::test]
async fn a_symlink_at_the_lock_path_is_not_followed() {
    let dir = TempDir::new("locklink");
    let victim = dir.0.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let mut lock = dir.sock().into_os_string();
    lock.push(".lock");
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let err = bind(&ServerConfig { path: dir.sock(), ..ServerConfig::default() }).err().expect("refused");
    assert!(matches!(&err, ServerError::Lock { source, .. } if source.raw_os_error() == Some(libc::ELOOP)), "{err:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[tokio::test]
async fn a_second_server_on_the_same_path_is_refused_and_a_stale_socket_replaced() {
    let server = TestServer::start("twice", |_| {}).await;
    let err = bind(&ServerConfig { path: server.sock(), ..ServerConfig::default() }).err().expect("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "another flowgate-agent (pid {}) is already serving {}: stop it first, or give this one another --socket",
            std::process::id(),
            server.sock().display()
        )
    );
    status_works(&server).await;
    let dir = TempDir::new("stale");
    let path = dir.sock();
    // A socket file nobody listens on, as a killed agent leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = bind(&ServerConfig { path: path.clone(), ..ServerConfig::default() }).expect("stale replaced");
    std::os::unix::net::UnixStream::connect(&path).expect("the new socket accepts");
    drop(listener);
    // A regular file is not ours to remove.
    std::fs::write(&path, "precious").unwrap();
    let err = bind(&ServerConfig { path: path.clone(), ..ServerConfig::default() }).err().expect("refused");
    assert!(matches!(err, ServerError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    server.stop().await;
}

#[tokio::test]
async fn unknown_explicit_group_is_an_error() {
    let dir = TempDir::new("group");
    let config = ServerConfig { path: dir.sock(), group: Some("no-such-group-fg".into()), ..ServerConfig::default() };
    let err = bind(&config).err().expect("error");
    assert_eq!(
        err.to_string(),
        "socket group `no-such-group-fg` does not exist: create it (groupadd no-such-group-fg) or pass another \
         --socket-group"
    );
}

#[tokio::test]
async fn subscription_gets_history_then_live_batches_and_is_dropped_on_disconnect() {
    let server = TestServer::start("sub", |_| {}).await;
    let hub = Arc::clone(server.state.hub());
    hub.publish(&(0..5).map(|i| Arc::new(flow_between(1, 2, i))).collect::<Vec<_>>());
    let client = server.client().await;
    let only_1 = FlowFilter { related_to: vec![1], ..FlowFilter::default() };
    let mut stream =
        client.subscribe(Subscription { allow: vec![only_1], last: 3, ..Default::default() }).await.unwrap();
    let history = stream.next_batch().await.unwrap().unwrap();
    let ports: Vec<u16> = history
        .iter()
        .map(|e| match e {
            Event::Flow(f) => f.source_port,
            Event::Lost(_) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(ports, [2, 3, 4]);
    wait_for(|| hub.subscribers() == 1).await;
    let status = server.state.status();
    assert!(status.clients.iter().any(|c| c.subscribed), "{status:?}");
    hub.publish(&[Arc::new(flow_between(3, 4, 100)), Arc::new(flow_between(1, 2, 101))]);
    let live = stream.next_batch().await.unwrap().unwrap();
    assert_eq!(live.len(), 1, "filtered in the agent");
    let Event::Flow(f) = &live[0] else { panic!() };
    assert_eq!(f.source_port, 101);
    drop(stream);
    wait_for(|| hub.subscribers() == 0).await;
    assert!(server.state.status().clients.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn subscription_without_follow_ends_after_the_history() {
    let server = TestServer::start("nofollow", |_| {}).await;
    server.state.hub().publish(&(0..3000).map(|i| Arc::new(flow_between(1, 2, i))).collect::<Vec<_>>());
    let client = server.client().await;
    let mut stream = client.subscribe(Subscription { last: 50, follow: false, ..Default::default() }).await.unwrap();
    let batch = stream.next_batch().await.unwrap().unwrap();
    assert_eq!(batch.len(), 50, "history size is 64, asked for 50");
    assert!(stream.next_batch().await.is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_loses_events_and_is_told_while_others_get_everything() {
    let server = TestServer::start("slow", |_| {}).await;
    let hub = Arc::clone(server.state.hub());
    let mut slow = server.client().await.subscribe(Subscription::default()).await.unwrap();
    let mut fast = server.client().await.subscribe(Subscription::default()).await.unwrap();
    wait_for(|| hub.subscribers() == 2).await;
    // Big flows, many batches: the slow client's socket buffer and its queue of 4 batches fill up.
    let mut big = flow_between(1, 2, 0);
    Arc::make_mut(&mut big.source).labels = (0..50).map(|i| format!("k{i}=v{i}")).collect();
    let batch: Vec<_> = (0..200).map(|_| Arc::new(big.clone())).collect();
    let mut fast_got = 0;
    for round in 1..=100 {
        hub.publish(&batch);
        // The fast client keeps up: it reads each batch before the next is published.
        while fast_got < 200 * round {
            let events = tokio::time::timeout(Duration::from_secs(5), fast.next_batch()).await;
            fast_got += events.expect("the fast client is served").unwrap().unwrap().len();
        }
    }
    assert_eq!(fast_got, 20_000, "the fast client got every flow");
    // Now the slow one reads: what it missed is reported, in order, once the hub can queue again.
    let mut flows = 0u64;
    let mut lost = 0u64;
    while let Ok(Some(events)) = tokio::time::timeout(Duration::from_millis(300), slow.next_batch()).await {
        for e in events.unwrap() {
            match e {
                Event::Flow(_) => flows += 1,
                Event::Lost(l) => lost += l.count,
            }
        }
    }
    hub.publish(&batch[..1]);
    while let Ok(Some(events)) = tokio::time::timeout(Duration::from_millis(300), slow.next_batch()).await {
        for e in events.unwrap() {
            match e {
                Event::Flow(_) => flows += 1,
                Event::Lost(l) => lost += l.count,
            }
        }
    }
    assert!(lost > 0, "the slow client lost events (got {flows})");
    assert_eq!(flows + lost, 20_001, "every flow is either delivered or counted as lost");
    server.stop().await;
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 2s");
}

/// Subscribes with a hello claiming `protocol`, over a raw socket, and returns the frames of the history
/// (`last: 64`, no follow: the server closes after it).
async fn history_frames_as(path: &Path, protocol: ProtocolVersion) -> Vec<ServerMessage> {
    use flowgate_proto::ClientMessage;
    let mut bytes = framed(&ClientMessage::Hello(Hello { protocol, software: "old or new".into() }));
    bytes.extend(framed(&ClientMessage::Subscribe(Subscription { last: 64, follow: false, ..Default::default() })));
    raw_exchange(path, &bytes).await
}

#[tokio::test]
async fn a_1_4_client_gets_events_frames_and_a_1_5_client_compact_batches_of_the_same_events() {
    let server = TestServer::start("compat", |_| {}).await;
    let flows: Vec<_> = (0..40).map(|i| Arc::new(flow_between(1 + i % 2, 2, i))).collect();
    server.state.hub().publish(&flows);
    let expected: Vec<Event> = flows.iter().map(|f| Event::Flow(Arc::clone(f))).collect();

    let old = history_frames_as(&server.sock(), ProtocolVersion { major: 1, minor: 4 }).await;
    assert!(matches!(old[0], ServerMessage::Hello(_)));
    let ServerMessage::Events(events) = &old[1] else { panic!("a 1.4 client gets Events: {:?}", old[1]) };
    assert_eq!(events, &expected);

    let new = history_frames_as(&server.sock(), ProtocolVersion { major: 1, minor: 5 }).await;
    let ServerMessage::FlowBatch(batch) = &new[1] else { panic!("a 1.5 client gets a FlowBatch: {:?}", new[1]) };
    assert_eq!(batch.peers.len(), 2, "each peer once: pods 1 and 2");
    let events = flowgate_proto::flow_batch::PeerTable::default().expand(batch.clone()).unwrap();
    assert_eq!(events, expected);

    // And the client library (1.5) hands them out as events, as before.
    let subscription = Subscription { last: 64, follow: false, ..Default::default() };
    let mut stream = server.client().await.subscribe(subscription).await.unwrap();
    let batch = stream.next_batch().await.unwrap().unwrap();
    assert_eq!(batch, expected);
    server.stop().await;
}
