//! One client session: peer check and client limit, the hello (with a timeout), then requests answered
//! from the agent state, or one subscription streamed as event batches until either side ends it. A
//! client that sends something unusable gets an error frame and is disconnected; nothing it does
//! reaches other sessions.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use flowgate_proto::{
    PROTOCOL_VERSION,
    codec::{self, MAX_FRAME_BYTES},
    filter::{FlowFilter, MAX_FILTER_VALUES},
    flow_batch::{FlowBatch, PeerNumbers},
    message::{ClientMessage, Event, Hello, Refusal, ServerMessage, Subscription},
};
use log::{debug, info, warn};
use tokio::{net::UnixStream, sync::OwnedSemaphorePermit};

use super::{
    Shared,
    frames::{FrameError, FrameReader, FrameWriter},
    peer::{self, PeerCred},
};
use flowgate_events::hub::Subscriber;

use crate::state::ClientGuard;

/// Events per frame at most; batches from the hub are cut to this and small ones are joined up to it.
pub const EVENTS_PER_FRAME: usize = 1024;
/// Encoded size a frame of events aims to stay under (a quarter of the cap).
pub const FRAME_BUDGET_BYTES: usize = MAX_FRAME_BYTES / 4;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("reading the peer credentials")]
    PeerCred {
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Why a session ended, for the log.
enum End {
    /// The client closed the connection, or the subscription without `follow` is complete.
    Done,
    /// We refused or rejected the client, after telling it why.
    Rejected(String),
}

/// Serves one connection; `slot` is `None` when the agent already serves its maximum of clients.
pub(super) async fn run(stream: UnixStream, shared: Arc<Shared>, slot: Option<OwnedSemaphorePermit>) {
    let cred = stream.peer_cred().map(|c| PeerCred { uid: c.uid(), gid: c.gid(), pid: c.pid().unwrap_or(0) });
    let (read, write) = stream.into_split();
    let mut session = Session { shared, reader: FrameReader::new(read), writer: FrameWriter::new(write), peers: None };
    let who = cred.as_ref().map_or_else(|_| "client".to_owned(), |c| format!("client uid {} pid {}", c.uid, c.pid));
    match session.serve(cred.map_err(|source| SessionError::PeerCred { source }), slot).await {
        Ok(End::Done) => debug!("{who}: session ended"),
        Ok(End::Rejected(why)) => info!("{who}: {why}"),
        Err(e) => debug!("{who}: {}", error_chain(&e)),
    }
    session.writer.close().await;
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct Session {
    shared: Arc<Shared>,
    reader: FrameReader,
    writer: FrameWriter,
    /// The numbers of the peers sent to this client, when it reads compact batches (1.5 or later).
    peers: Option<PeerNumbers>,
}

impl Session {
    async fn serve(
        &mut self,
        cred: Result<PeerCred, SessionError>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<End, SessionError> {
        let cred = cred?;
        let group = self.shared.group.as_ref();
        if !peer::check(&cred, self.shared.own_uid, group) {
            let message = peer::refusal_message(&cred, group, &self.shared.path);
            return self.refuse(Refusal::PermissionDenied, message).await;
        }
        let Some(_slot) = slot else {
            let message = format!(
                "too many clients: the agent already serves {} (its --max-clients); try again later",
                self.shared.max_clients
            );
            return self.refuse(Refusal::TooManyClients, message).await;
        };
        let guard = self.shared.api.state().register_client(cred.uid, cred.pid);

        let timeout = self.shared.handshake_timeout;
        let hello = match tokio::time::timeout(timeout, self.reader.next()).await {
            Err(_) => {
                return self.reject(format!("no hello within {}", seconds(timeout))).await;
            }
            Ok(Ok(None)) => return Ok(End::Done),
            Ok(Err(e)) => return self.reject_frame(e, "the hello").await,
            Ok(Ok(Some(frame))) => match codec::decode::<ClientMessage>("client hello", &frame) {
                Ok(ClientMessage::Hello(hello)) => hello,
                Ok(other) => {
                    return self.reject(format!("the first frame must be a hello, got {}", kind(&other))).await;
                }
                Err(e) => {
                    return self.reject(format!("the first frame is not a hello: {}", error_chain(&e))).await;
                }
            },
        };
        if !PROTOCOL_VERSION.compatible_with(hello.protocol) {
            let message =
                format!("protocol version mismatch: agent speaks {PROTOCOL_VERSION}, client speaks {}", hello.protocol);
            return self.refuse(Refusal::VersionMismatch, message).await;
        }
        guard.set_software(&hello.software);
        self.peers = hello.protocol.reads_flow_batches().then(PeerNumbers::default);
        let ours = Hello { protocol: PROTOCOL_VERSION, software: self.shared.software.clone() };
        self.writer.send(&ServerMessage::Hello(ours)).await?;

        loop {
            let frame = match self.next_request().await {
                Some(Ok(Some(frame))) => frame,
                Some(Ok(None)) => return Ok(End::Done),
                Some(Err(e)) => return self.reject_frame(e, "a request").await,
                None => {
                    let idle = seconds(self.shared.idle_timeout);
                    return self
                        .reject(format!("idle for {idle} while the agent is short of client slots; closed"))
                        .await;
                }
            };
            match codec::decode::<ClientMessage>("client", &frame) {
                Ok(ClientMessage::Request(request)) => {
                    let response = if request.changes_agent() && !self.may_change(&cred) {
                        let message = peer::forbidden_message(&cred, self.shared.admin_group.as_ref());
                        warn!("refused {request:?} from pid {} uid {}: {message}", cred.pid, cred.uid);
                        self.shared.api.forbid(message)
                    } else {
                        self.shared.api.handle(&request)
                    };
                    self.writer.send(&ServerMessage::Response(response)).await?;
                }
                Ok(ClientMessage::Subscribe(subscription)) => {
                    return self.stream(&subscription, &guard).await;
                }
                Ok(ClientMessage::Hello(_)) => {
                    return self.reject("a second hello; hellos are exchanged once".into()).await;
                }
                Err(e) => {
                    return self.reject(format!("could not decode a request: {}", error_chain(&e))).await;
                }
            }
        }
    }

    /// Whether this peer may change the agent: root, the agent's own user, or the admin group.
    fn may_change(&self, cred: &PeerCred) -> bool {
        match &self.shared.admin_group {
            Some(group) => peer::check(cred, self.shared.own_uid, Some(group)),
            None => cred.uid == 0 || cred.uid == self.shared.own_uid,
        }
    }

    /// The next frame between requests, or `None` when the client has been idle for the idle timeout
    /// while the agent is short of client slots (a quarter or fewer free): idle clients cannot hold the
    /// slots others need. With slots to spare an idle client may stay. (`FrameReader::next` keeps what it
    /// read in its buffer, so giving up on it at the timeout loses nothing.)
    async fn next_request(&mut self) -> Option<Result<Option<bytes::BytesMut>, FrameError>> {
        loop {
            match tokio::time::timeout(self.shared.idle_timeout, self.reader.next()).await {
                Ok(frame) => return Some(frame),
                Err(_) if self.shared.slots.available_permits() <= self.shared.max_clients / 4 => return None,
                Err(_) => {}
            }
        }
    }

    async fn refuse(&mut self, reason: Refusal, message: String) -> Result<End, SessionError> {
        self.writer.send(&ServerMessage::Refused { reason, message: message.clone() }).await?;
        Ok(End::Rejected(message))
    }

    async fn reject(&mut self, message: String) -> Result<End, SessionError> {
        self.writer.send(&ServerMessage::Error { message: message.clone() }).await?;
        Ok(End::Rejected(message))
    }

    /// Turns a failure to read a frame into an error frame where the client can still hear it.
    async fn reject_frame(&mut self, error: FrameError, waiting_for: &str) -> Result<End, SessionError> {
        match error {
            FrameError::TooLarge { .. } | FrameError::Truncated | FrameError::Codec(_) => {
                self.reject(format!("{} (while waiting for {waiting_for})", error_chain(&error))).await
            }
            FrameError::Read { .. } | FrameError::Write { .. } => Err(error.into()),
        }
    }

    /// Sends the subscription's history, then (with `follow`) live batches until the client goes away.
    async fn stream(&mut self, subscription: &Subscription, guard: &ClientGuard) -> Result<End, SessionError> {
        let values: usize = subscription.allow.iter().chain(&subscription.deny).map(FlowFilter::value_count).sum();
        if values > MAX_FILTER_VALUES {
            return self
                .reject(format!(
                    "the subscription's filters name {values} values, more than the {MAX_FILTER_VALUES} a \
                     subscription may: narrow them, or split them over several subscriptions"
                ))
                .await;
        }
        let mut subscriber: Subscriber = self.shared.api.state().hub().subscribe(subscription);
        guard.set_subscription(Arc::clone(&subscriber.stats));
        let initial = std::mem::take(&mut subscriber.initial);
        self.send_events(initial).await?;
        let Some(mut rx) = subscriber.rx.take() else {
            return Ok(End::Done);
        };
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(mut batch) = batch else { return Ok(End::Done) };
                    // Join what else is queued, so a busy subscriber costs fewer frames and syscalls.
                    while batch.len() < EVENTS_PER_FRAME {
                        match rx.try_recv() {
                            Ok(more) => batch.extend(more),
                            Err(_) => break,
                        }
                    }
                    crate::instruments::instruments().latency.sent(&batch);
                    self.send_events(batch).await?;
                }
                () = self.reader.closed() => return Ok(End::Done),
            }
        }
    }

    /// Sends events in frames of at most [`EVENTS_PER_FRAME`] events and about [`FRAME_BUDGET_BYTES`]:
    /// compact batches to a client that reads them, `Events` to an older one.
    async fn send_events(&mut self, events: Vec<Event>) -> Result<(), SessionError> {
        let bodies = match &mut self.peers {
            Some(numbers) => flow_batch_frames(numbers, &events)?,
            None => event_frames(events)?,
        };
        for body in bodies {
            self.writer.send_body(body).await?;
        }
        Ok(())
    }
}

/// Encodes `events` into frame bodies for a client before 1.5: cut by count, then halved until each fits
/// the byte budget.
fn event_frames(events: Vec<Event>) -> Result<Vec<Bytes>, FrameError> {
    let mut bodies = Vec::new();
    let mut events = events;
    while !events.is_empty() {
        let rest = events.split_off(events.len().min(EVENTS_PER_FRAME));
        cut_to_budget(events, &mut bodies, |chunk| {
            let message = ServerMessage::Events(chunk);
            let body = FrameWriter::encode(&message)?;
            let ServerMessage::Events(chunk) = message else { unreachable!("built above as events") };
            Ok((body, chunk))
        })?;
        events = rest;
    }
    Ok(bodies)
}

/// Encodes `events` into compact batches (1.5), numbering their peers in `numbers`: cut by count; a batch
/// over the byte budget (many new peers with long label lists, long policy lists) goes as its new peers
/// first, then its events, each halved until it fits. Definitions always precede their use.
fn flow_batch_frames(numbers: &mut PeerNumbers, events: &[Event]) -> Result<Vec<Bytes>, FrameError> {
    let mut bodies = Vec::new();
    for chunk in events.chunks(EVENTS_PER_FRAME) {
        let batch = numbers.batch(chunk);
        let body = FrameWriter::encode_batch(&batch)?;
        if body.len() <= FRAME_BUDGET_BYTES {
            bodies.push(body);
            continue;
        }
        let FlowBatch { reset, peers, events } = batch;
        if reset {
            bodies.push(FrameWriter::encode_batch(&FlowBatch { reset: true, peers: Vec::new(), events: Vec::new() })?);
        }
        cut_to_budget(peers, &mut bodies, |peers| {
            let part = FlowBatch { reset: false, peers, events: Vec::new() };
            Ok((FrameWriter::encode_batch(&part)?, part.peers))
        })?;
        cut_to_budget(events, &mut bodies, |events| {
            let part = FlowBatch { reset: false, peers: Vec::new(), events };
            Ok((FrameWriter::encode_batch(&part)?, part.events))
        })?;
    }
    Ok(bodies)
}

/// Appends `items` to `bodies` as frames encoded by `encode` (which hands the items back), halving a
/// part until it fits [`FRAME_BUDGET_BYTES`], in order. An item that alone exceeds the frame cap cannot
/// be sent and is left out (it cannot happen with flows or peers).
fn cut_to_budget<T>(
    items: Vec<T>,
    bodies: &mut Vec<Bytes>,
    mut encode: impl FnMut(Vec<T>) -> Result<(Bytes, Vec<T>), FrameError>,
) -> Result<(), FrameError> {
    let mut pending = vec![items];
    while let Some(part) = pending.pop() {
        if part.is_empty() {
            continue;
        }
        let (body, mut part) = encode(part)?;
        if body.len() <= FRAME_BUDGET_BYTES {
            bodies.push(body);
        } else if part.len() == 1 {
            if body.len() <= MAX_FRAME_BYTES {
                bodies.push(body);
            } else {
                log::warn!("dropping an item of {} bytes from a frame: over the frame cap", body.len());
            }
        } else {
            let second = part.split_off(part.len() / 2);
            pending.push(second);
            pending.push(part);
        }
    }
    Ok(())
}

fn kind(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Hello(_) => "a hello",
        ClientMessage::Request(_) => "a request",
        ClientMessage::Subscribe(_) => "a subscription",
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use flowgate_proto::{
        flow::{Peer, fixtures::flow_between},
        flow_batch::PeerTable,
        message::{LossSource, LostEvents},
    };

    use super::*;

    fn flows(n: u16) -> Vec<Event> {
        (0..n).map(|i| Event::Flow(Arc::new(flow_between(1, 2, i)))).collect()
    }

    fn decode_all(bodies: &[bytes::Bytes]) -> Vec<Vec<Event>> {
        bodies
            .iter()
            .map(|b| match codec::decode("server", &bytes::BytesMut::from(b.as_ref())).unwrap() {
                ServerMessage::Events(e) => e,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn events_are_cut_by_count_in_order() {
        let events = flows(2500);
        let frames = decode_all(&event_frames(events.clone()).unwrap());
        assert_eq!(frames.iter().map(Vec::len).collect::<Vec<_>>(), vec![1024, 1024, 452]);
        assert_eq!(frames.concat(), events);
    }

    #[test]
    fn events_over_the_byte_budget_are_halved_in_order() {
        // A flow with a long label list is big: 1024 of them are over the budget.
        let mut big = flow_between(1, 2, 0);
        Arc::make_mut(&mut big.source).labels = (0..100).map(|i| format!("label-{i}=some-value-{i}")).collect();
        let mut events: Vec<Event> = (0..1024u16)
            .map(|i| {
                let mut f = big.clone();
                f.source_port = i;
                Event::Flow(Arc::new(f))
            })
            .collect();
        events.insert(10, Event::Lost(LostEvents { source: LossSource::KernelBuffer, count: 9 }));
        let bodies = event_frames(events.clone()).unwrap();
        assert!(bodies.len() > 1, "cut into several frames");
        assert!(bodies.iter().all(|b| b.len() <= FRAME_BUDGET_BYTES));
        assert_eq!(decode_all(&bodies).concat(), events);
    }

    #[test]
    fn compact_batches_over_the_byte_budget_send_peers_first_then_events_in_order() {
        // 1024 flows from 1024 pods with 100 labels each: the new peers alone are over the budget.
        let events: Vec<Event> = (0..1024u16)
            .map(|i| {
                let mut f = flow_between(i, 2, i);
                let mut source = Peer::clone(&f.source);
                source.labels = (0..100).map(|l| format!("label-{l}=some-value-{i}")).collect();
                f.source = Arc::new(source);
                Event::Flow(Arc::new(f))
            })
            .collect();
        let mut numbers = PeerNumbers::default();
        let bodies = flow_batch_frames(&mut numbers, &events).unwrap();
        assert!(bodies.len() > 2, "cut into several frames");
        assert!(bodies.iter().all(|b| b.len() <= FRAME_BUDGET_BYTES));
        let mut table = PeerTable::default();
        let got: Vec<Event> = bodies
            .iter()
            .flat_map(|b| match codec::decode("server", b).unwrap() {
                ServerMessage::FlowBatch(batch) => table.expand(batch).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, events);
    }

    #[test]
    fn nothing_to_send_is_no_frame() {
        assert!(event_frames(Vec::new()).unwrap().is_empty());
        assert!(flow_batch_frames(&mut PeerNumbers::default(), &[]).unwrap().is_empty());
    }
}
