//! The monitor's TUI: the connection ([`crate::monitor::session`]) feeds batches into a bounded
//! [`state::State`]; keys become [`state::Action`]s (in [`input`]); the screen is drawn from the state at a fixed frame
//! rate, so drawing costs the same at 10 or 100k events per second.

pub mod connections;
pub mod input;
pub mod state;
pub mod term;
pub mod view;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use flowgate_proto::{endpoint::Endpoint, filter::FlowFilter};
use ratatui::crossterm::event::{self, Event as TermEvent};
use tokio::sync::mpsc;

use super::{
    MonitorArgs,
    session::{self, Command, LocalLoss},
};
use state::{Effect, State};

/// Frames per second.
pub const FPS: u64 = 20;
/// Most batches taken from the connection between two looks at the keyboard and the clock.
const BATCHES_PER_TURN: usize = 256;

/// Reads terminal events on a thread of its own until `stop` is set or the receiver is gone.
fn spawn_input(stop: Arc<AtomicBool>) -> mpsc::UnboundedReceiver<TermEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

pub async fn run(args: &MonitorArgs, filter: FlowFilter, endpoints: Vec<Endpoint>) -> anyhow::Result<()> {
    let (net_tx, mut net_rx) = mpsc::channel(session::CHANNEL_BATCHES);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let loss = Arc::new(LocalLoss::default());
    let socket = args.socket.socket.clone();
    tokio::spawn(session::run(socket.clone(), filter.clone(), args.last, net_tx, cmd_rx, loss.clone()));

    let mut state = State::new(filter, endpoints, socket.display().to_string());
    let mut guard = term::TerminalGuard::enter().context("setting up the terminal")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut keys = spawn_input(stop.clone());
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut frames = tokio::time::interval(Duration::from_millis(1000 / FPS));
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = frames.tick() => {
                state.local_loss = (loss.flows.load(Ordering::Relaxed), loss.kernel.load(Ordering::Relaxed));
                state.tick(now_ms());
                if let Err(e) = guard.terminal.draw(|frame| view::render(frame, &state)) {
                    break Err(e).context("drawing the screen");
                }
                if let Ok(size) = guard.terminal.size() {
                    state.page = view::table_rows(ratatui::layout::Rect::new(0, 0, size.width, size.height), &state);
                }
            }
            Some(net) = net_rx.recv() => {
                state.on_net(net, now_ms());
                for _ in 0..BATCHES_PER_TURN {
                    match net_rx.try_recv() {
                        Ok(net) => state.on_net(net, now_ms()),
                        Err(_) => break,
                    }
                }
            }
            key = keys.recv() => {
                let Some(key) = key else { break Err(anyhow::anyhow!("reading the keyboard failed")) };
                match key {
                    TermEvent::Key(key) => {
                        let Some(action) = input::action(key, &state.mode) else { continue };
                        match state.apply(action) {
                            Some(Effect::Quit) => break Ok(()),
                            Some(Effect::Subscribe(filter)) => { let _ = cmd_tx.send(Command::Subscribe(filter)); }
                            Some(Effect::FetchEndpoints) => { let _ = cmd_tx.send(Command::FetchEndpoints); }
                            None => {}
                        }
                        // Answer keys at once rather than at the next frame.
                        let _ = guard.terminal.draw(|frame| view::render(frame, &state));
                    }
                    TermEvent::Resize(..) => {
                        let _ = guard.terminal.autoresize();
                        let _ = guard.terminal.draw(|frame| view::render(frame, &state));
                    }
                    _ => {}
                }
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(guard);
    result
}
