//! The TUI's connection to the agent: subscribes with the current filter, hands event batches to the UI
//! through a bounded channel (a full channel drops the batch and counts it as this client's loss, so the
//! socket is always drained), re-subscribes when the filter changes, and when the agent goes away reports
//! it and reconnects with backoff (same filter, no history replayed).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use flowgate_proto::{
    client::Client,
    endpoint::Endpoint,
    filter::FlowFilter,
    message::{Event, LossSource},
};
use tokio::sync::mpsc;

use super::{MonitorArgs, fetch_endpoints};
use crate::client::{describe, software};

/// Batches waiting for the UI before new ones are dropped.
pub const CHANNEL_BATCHES: usize = 4096;
/// First and longest wait before reconnecting.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// From the connection to the UI.
#[derive(Debug)]
pub enum NetEvent {
    /// Subscribed (again).
    Connected,
    Events(Vec<Event>),
    /// The connection failed or ended; the next attempt is in `retry_in`.
    Disconnected {
        error: String,
        retry_in: Duration,
    },
    /// Answer to [`Command::FetchEndpoints`].
    Endpoints(Result<Vec<Endpoint>, String>),
}

/// From the UI to the connection.
#[derive(Debug)]
pub enum Command {
    /// Subscribe again with this filter (no history). Boxed: a filter takes a few hundred bytes, and the
    /// other command carries nothing.
    Subscribe(Box<FlowFilter>),
    FetchEndpoints,
}

/// What the UI lost because it could not keep up with its own channel (never blocks the socket).
#[derive(Debug, Default)]
pub struct LocalLoss {
    /// Flows dropped from full batches.
    pub flows: AtomicU64,
    /// Kernel-buffer losses reported in dropped batches (still counted as kernel losses).
    pub kernel: AtomicU64,
}

fn spawn_fetch(socket: PathBuf, tx: mpsc::Sender<NetEvent>) {
    tokio::spawn(async move {
        let result = fetch_endpoints(&socket).await.map_err(|e| format!("{e:#}"));
        let _ = tx.send(NetEvent::Endpoints(result)).await;
    });
}

fn hand_over(tx: &mpsc::Sender<NetEvent>, batch: Vec<Event>, loss: &LocalLoss) -> bool {
    match tx.try_send(NetEvent::Events(batch)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(NetEvent::Events(batch))) => {
            for event in &batch {
                match event {
                    Event::Flow(_) => loss.flows.fetch_add(1, Ordering::Relaxed),
                    Event::Lost(l) if l.source == LossSource::KernelBuffer => {
                        loss.kernel.fetch_add(l.count, Ordering::Relaxed)
                    }
                    Event::Lost(l) => loss.flows.fetch_add(l.count, Ordering::Relaxed),
                };
            }
            true
        }
        Err(_) => false,
    }
}

/// Runs until the UI goes away (its channels close).
pub async fn run(
    socket: PathBuf,
    mut filter: FlowFilter,
    mut last: u32,
    tx: mpsc::Sender<NetEvent>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    loss: Arc<LocalLoss>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let connected = async {
            let client = Client::connect(&socket, &software()).await?;
            client.subscribe(MonitorArgs::subscription(&filter, last)).await
        }
        .await;
        let error = match connected {
            Err(e) => describe(&e),
            Ok(mut stream) => {
                backoff = BACKOFF_FIRST;
                last = 0;
                if tx.send(NetEvent::Connected).await.is_err() {
                    return;
                }
                let ended = loop {
                    tokio::select! {
                        batch = stream.next_batch() => match batch {
                            Some(Ok(batch)) => if !hand_over(&tx, batch, &loss) { return },
                            Some(Err(e)) => break Some(describe(&e)),
                            None => break Some("the agent ended the subscription".to_owned()),
                        },
                        command = commands.recv() => match command {
                            None => return,
                            Some(Command::Subscribe(f)) => { filter = *f; break None },
                            Some(Command::FetchEndpoints) => spawn_fetch(socket.clone(), tx.clone()),
                        },
                    }
                };
                match ended {
                    // Re-subscribe now with the new filter.
                    None => continue,
                    Some(error) => error,
                }
            }
        };
        if tx.send(NetEvent::Disconnected { error, retry_in: backoff }).await.is_err() {
            return;
        }
        let wake = tokio::time::sleep(backoff);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = &mut wake => break,
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Subscribe(f)) => filter = *f,
                    Some(Command::FetchEndpoints) => spawn_fetch(socket.clone(), tx.clone()),
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
