//! The client side of the socket protocol, for the `flowgate` command, exporters and tests: connects,
//! performs the hello, then sends requests or one subscription. Every failure is a [`ClientError`] that
//! tells a person what went wrong and what to do (start the agent, join its group, upgrade the client).

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::{
    PROTOCOL_VERSION, ProtocolVersion,
    codec::{self, CodecError, MAX_FRAME_BYTES},
    flow_batch::PeerTable,
    flow_batch_wire,
    message::{ClientMessage, Event, Hello, Refusal, Request, Response, ServerMessage, Subscription},
};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/flowgate/flowgate.sock";
/// Environment variable the `flowgate` command reads the socket path from.
pub const SOCKET_ENV: &str = "FLOWGATE_SOCKET";
/// How long the client waits for the agent's hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agent is listening on {}: start it with `flowgate-agent --lab NAME` (or point --socket / \
         ${SOCKET_ENV} at the agent's socket)",
        path.display()
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "permission denied on {}: run as root or join group `flowgate` (usermod -aG flowgate $USER, then log in again)",
        path.display()
    )]
    PermissionDenied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("connecting to the agent on {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent on {} refused this client: {message}", path.display())]
    Refused { path: PathBuf, reason: Refusal, message: String },
    #[error(
        "protocol version mismatch: agent speaks {agent}, client speaks {client}: use a `flowgate` command \
         of the agent's release"
    )]
    VersionMismatch { agent: ProtocolVersion, client: ProtocolVersion },
    /// The agent serves this client but will not let it change anything (`Response::Forbidden`).
    #[error("{message}")]
    Forbidden { message: String },
    #[error("the agent reported an error: {message}")]
    Agent { message: String },
    #[error("the agent on {} closed the connection while {doing}", path.display())]
    Closed { path: PathBuf, doing: &'static str },
    #[error("talking to the agent on {} while {doing}", path.display())]
    Io {
        path: PathBuf,
        doing: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the agent on {} did not answer within {after:?} while {doing}", path.display())]
    Timeout { path: PathBuf, doing: &'static str, after: Duration },
    #[error("protocol error: {0}")]
    Codec(#[from] CodecError),
    #[error("protocol error: {0}")]
    FlowBatch(#[from] crate::flow_batch::FlowBatchError),
    #[error("protocol error: expected {expected} from the agent, got {got}")]
    Unexpected { expected: &'static str, got: String },
}

impl ClientError {
    /// Whether the agent refused this client for lack of permission (a refusal frame or EACCES).
    pub fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            ClientError::PermissionDenied { .. } | ClientError::Refused { reason: Refusal::PermissionDenied, .. }
        )
    }
}

/// A short name of a server message, for errors.
fn kind(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Hello(_) => "a hello".into(),
        ServerMessage::Refused { .. } => "a refusal".into(),
        ServerMessage::Error { .. } => "an error".into(),
        ServerMessage::Response(r) => format!("a response ({})", response_kind(r)),
        ServerMessage::Events(_) | ServerMessage::FlowBatch(_) => "an events batch".into(),
    }
}

fn response_kind(response: &Response) -> &'static str {
    match response {
        Response::Status(_) => "status",
        Response::Endpoints(_) => "endpoints",
        Response::Endpoint(_) => "endpoint",
        Response::Identities(_) => "identities",
        Response::EndpointConfigured(_) => "endpoint configured",
        Response::Policy(_) => "policy",
        Response::Conntrack(_) => "conntrack",
        Response::PolicyMaps(_) => "policy maps",
        Response::NotFound { .. } => "not found",
        Response::Forbidden { .. } => "forbidden",
    }
}

/// One framed connection: a read buffer and the codec.
struct Connection {
    path: PathBuf,
    stream: UnixStream,
    codec: LengthDelimitedCodec,
    buf: BytesMut,
}

impl Connection {
    fn io(&self, doing: &'static str) -> impl FnOnce(io::Error) -> ClientError + '_ {
        move |source| ClientError::Io { path: self.path.clone(), doing, source }
    }

    async fn send(&mut self, message: &ClientMessage, doing: &'static str) -> Result<(), ClientError> {
        let body = codec::encode("client", message)?;
        let mut out = BytesMut::with_capacity(body.len() + 4);
        self.codec.encode(body, &mut out).map_err(self.io(doing))?;
        let result = self.stream.write_all(&out).await;
        result.map_err(self.io(doing))
    }

    /// The next server message; `None` at a clean end of stream.
    async fn recv(&mut self, doing: &'static str) -> Result<Option<ServerMessage>, ClientError> {
        loop {
            let frame = self.codec.decode(&mut self.buf).map_err(|source| ClientError::Io {
                path: self.path.clone(),
                doing,
                source: io::Error::new(source.kind(), format!("{source} (the limit is {MAX_FRAME_BYTES} bytes)")),
            })?;
            if let Some(frame) = frame {
                // Event batches, nearly every frame of a stream, by hand; anything else by serde.
                if let Some(batch) = flow_batch_wire::read(&frame) {
                    return Ok(Some(ServerMessage::FlowBatch(batch)));
                }
                return Ok(Some(codec::decode("server", &frame)?));
            }
            if self.buf.capacity() - self.buf.len() < 8 << 10 {
                self.buf.reserve(64 << 10);
            }
            let n = self.stream.read_buf(&mut self.buf).await;
            if n.map_err(self.io(doing))? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ClientError::Closed { path: self.path.clone(), doing });
            }
        }
    }

    /// The next message, which must exist; refusals and errors become [`ClientError`]s.
    async fn expect(&mut self, doing: &'static str) -> Result<ServerMessage, ClientError> {
        match self.recv(doing).await? {
            None => Err(ClientError::Closed { path: self.path.clone(), doing }),
            Some(ServerMessage::Refused { reason, message }) => {
                Err(ClientError::Refused { path: self.path.clone(), reason, message })
            }
            Some(ServerMessage::Error { message }) => Err(ClientError::Agent { message }),
            Some(other) => Ok(other),
        }
    }
}

/// A connection to the agent after a successful hello.
pub struct Client {
    conn: Connection,
    /// What the agent said in its hello.
    pub agent: Hello,
}

impl Client {
    /// Connects to the agent on `path` and exchanges hellos; `software` names this client
    /// (e.g. `flowgate 0.1.0`) in the agent's `status`.
    pub async fn connect(path: impl AsRef<Path>, software: &str) -> Result<Client, ClientError> {
        Self::connect_as(path, Hello { protocol: PROTOCOL_VERSION, software: software.to_owned() }).await
    }

    /// As [`Client::connect`], with the hello to send (tests use it to claim another version).
    pub async fn connect_as(path: impl AsRef<Path>, hello: Hello) -> Result<Client, ClientError> {
        let path = path.as_ref().to_owned();
        let stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            Err(source) => {
                return Err(match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning { path, source }
                    }
                    io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path, source },
                    _ => ClientError::Connect { path, source },
                });
            }
        };
        let mut conn = Connection { path, stream, codec: codec::framing(), buf: BytesMut::with_capacity(64 << 10) };
        let ours = hello.protocol;
        let handshake = async {
            // The agent may refuse before reading our hello (permission, too many clients) and close: the
            // refusal is still readable, so a failed write is not the end of it.
            let sent = conn.send(&ClientMessage::Hello(hello), "sending the hello").await;
            let answer = conn.expect("waiting for the agent's hello").await;
            match (answer, sent) {
                (Err(e @ (ClientError::Refused { .. } | ClientError::Agent { .. })), _) | (Err(e), Ok(())) => Err(e),
                (_, Err(e)) => Err(e),
                (Ok(ServerMessage::Hello(agent)), Ok(())) => Ok(agent),
                (Ok(other), Ok(())) => Err(ClientError::Unexpected { expected: "a hello", got: kind(&other) }),
            }
        };
        let agent = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    path: conn.path.clone(),
                    doing: "waiting for the agent's hello",
                    after: HANDSHAKE_TIMEOUT,
                });
            }
        };
        if !ours.compatible_with(agent.protocol) {
            return Err(ClientError::VersionMismatch { agent: agent.protocol, client: ours });
        }
        Ok(Client { conn, agent })
    }

    /// Sends one request and waits for its response.
    pub async fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        self.conn.send(&ClientMessage::Request(request), "sending a request").await?;
        match self.conn.expect("waiting for a response").await? {
            ServerMessage::Response(Response::Forbidden { message }) => Err(ClientError::Forbidden { message }),
            ServerMessage::Response(response) => Ok(response),
            other => Err(ClientError::Unexpected { expected: "a response", got: kind(&other) }),
        }
    }

    /// Subscribes to events; the connection then only carries event batches.
    pub async fn subscribe(mut self, subscription: Subscription) -> Result<EventStream, ClientError> {
        self.conn.send(&ClientMessage::Subscribe(subscription), "subscribing").await?;
        Ok(EventStream { conn: self.conn, peers: PeerTable::default(), done: false })
    }
}

/// The batches of a subscription, in order.
pub struct EventStream {
    conn: Connection,
    /// The peers the agent defined on this connection (1.5 batches).
    peers: PeerTable,
    done: bool,
}

impl EventStream {
    /// The next batch; `None` when the agent ended the subscription (without `follow`, after the
    /// history) or after an error was returned.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<Event>, ClientError>> {
        if self.done {
            return None;
        }
        let result = match self.conn.recv("reading events").await {
            Ok(None) => {
                self.done = true;
                return None;
            }
            Ok(Some(ServerMessage::Events(events))) => Ok(events),
            Ok(Some(ServerMessage::FlowBatch(batch))) => self.peers.expand(batch).map_err(ClientError::from),
            Ok(Some(ServerMessage::Error { message })) => Err(ClientError::Agent { message }),
            Ok(Some(ServerMessage::Refused { reason, message })) => {
                Err(ClientError::Refused { path: self.conn.path.clone(), reason, message })
            }
            Ok(Some(other)) => Err(ClientError::Unexpected { expected: "an events batch", got: kind(&other) }),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;
    use crate::message::Status;

    fn frame(message: &ServerMessage) -> Vec<u8> {
        let mut out = BytesMut::new();
        codec::framing().encode(codec::encode("server", message).unwrap(), &mut out).unwrap();
        out.to_vec()
    }

    /// Serves one connection: reads the client's frames into a channel, writes `replies` in order.
    async fn fake_agent(replies: Vec<ServerMessage>) -> (tempdir::Dir, tokio::task::JoinHandle<Vec<u8>>) {
        let dir = tempdir::Dir::new();
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            for reply in &replies {
                stream.write_all(&frame(reply)).await.unwrap();
            }
            stream.shutdown().await.unwrap();
            let mut seen = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.read_to_end(&mut seen)).await;
            seen
        });
        (dir, task)
    }

    /// A temporary directory removed on drop (no tempfile dependency).
    mod tempdir {
        use std::path::PathBuf;

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dir = std::env::temp_dir().join(format!("fg-client-test-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                Self(dir)
            }
            pub fn sock(&self) -> PathBuf {
                self.0.join("s.sock")
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn agent_hello(major: u16) -> ServerMessage {
        ServerMessage::Hello(Hello { protocol: ProtocolVersion { major, minor: 3 }, software: "fake".into() })
    }

    #[tokio::test]
    async fn missing_socket_says_no_agent_is_listening() {
        let dir = tempdir::Dir::new();
        let err = Client::connect(dir.sock(), "t").await.err().unwrap();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
        assert!(err.to_string().starts_with("no agent is listening on "), "{err}");
    }

    #[tokio::test]
    async fn hello_then_request_and_response() {
        let status = Status { agent_version: "9.9".into(), ..Status::default() };
        let (dir, task) =
            fake_agent(vec![agent_hello(1), ServerMessage::Response(Response::Status(Box::new(status.clone())))]).await;
        let mut client = Client::connect(dir.sock(), "test 1").await.unwrap();
        assert_eq!(client.agent.software, "fake");
        let Response::Status(got) = client.request(Request::Status).await.unwrap() else { panic!() };
        assert_eq!(*got, status);
        drop(client);
        let mut seen = BytesMut::from(&task.await.unwrap()[..]);
        let mut framing = codec::framing();
        let first: ClientMessage = codec::decode("client", &framing.decode(&mut seen).unwrap().unwrap()).unwrap();
        assert_eq!(first, ClientMessage::Hello(Hello { protocol: PROTOCOL_VERSION, software: "test 1".into() }));
        let second: ClientMessage = codec::decode("client", &framing.decode(&mut seen).unwrap().unwrap()).unwrap();
        assert_eq!(second, ClientMessage::Request(Request::Status));
    }

    #[tokio::test]
    async fn other_major_in_the_agents_hello_is_a_version_mismatch() {
        let (dir, _task) = fake_agent(vec![agent_hello(7)]).await;
        let err = Client::connect(dir.sock(), "t").await.err().unwrap();
        assert_eq!(err.to_string().split(':').next().unwrap(), "protocol version mismatch", "{err}");
        assert!(err.to_string().contains(&format!("agent speaks 7.3, client speaks {PROTOCOL_VERSION}")), "{err}");
    }

    #[tokio::test]
    async fn refusal_reaches_the_caller_with_the_agents_message() {
        let refusal =
            ServerMessage::Refused { reason: Refusal::PermissionDenied, message: "uid 1000 is not in group x".into() };
        let (dir, _task) = fake_agent(vec![refusal]).await;
        let err = Client::connect(dir.sock(), "t").await.err().unwrap();
        assert!(err.is_permission_denied(), "{err:?}");
        assert!(err.to_string().ends_with("refused this client: uid 1000 is not in group x"), "{err}");
    }

    #[tokio::test]
    async fn events_then_end_of_stream() {
        use crate::{
            flow::fixtures::flow_between,
            message::{LossSource, LostEvents},
        };
        let lost = Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 3 });
        let flow = Event::Flow(std::sync::Arc::new(flow_between(1, 2, 1234)));
        let (dir, _task) = fake_agent(vec![
            agent_hello(1),
            ServerMessage::Events(vec![flow.clone()]),
            ServerMessage::Events(vec![lost.clone()]),
        ])
        .await;
        let client = Client::connect(dir.sock(), "t").await.unwrap();
        let mut stream = client.subscribe(Subscription::default()).await.unwrap();
        assert_eq!(stream.next_batch().await.unwrap().unwrap(), vec![flow]);
        assert_eq!(stream.next_batch().await.unwrap().unwrap(), vec![lost]);
        assert!(stream.next_batch().await.is_none());
    }

    #[tokio::test]
    async fn agent_error_frame_becomes_an_agent_error() {
        let (dir, _task) = fake_agent(vec![ServerMessage::Error { message: "bad hello".into() }]).await;
        let err = Client::connect(dir.sock(), "t").await.err().unwrap();
        assert_eq!(err.to_string(), "the agent reported an error: bad hello");
    }
}
