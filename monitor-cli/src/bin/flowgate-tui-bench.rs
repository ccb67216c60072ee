//! `flowgate-tui-bench`: what the monitor costs at 100k events per second, measured on this machine.
//! Three stages of the monitor's path, each alone, medians of several runs:
//! - decoding event batches from the socket's frames (protocol 1.5's compact batches, MessagePack);
//! - taking them into the TUI's bounded state (history ring, counters, rate window);
//! - drawing a full 200x50 frame from the state with a full history (the TUI draws 20 frames a second).
//!
//! The budget line says how much of one core each stage needs at 100k events per second.

use std::time::Instant;

use flowgate_cli::monitor::tui::{state::State, view};
use flowgate_proto::{
    codec,
    filter::FlowFilter,
    flow::fixtures::flow_between,
    flow_batch::{PeerNumbers, PeerTable},
    message::{Event, ServerMessage},
};
use ratatui::{Terminal, backend::TestBackend};

const RATE: f64 = 100_000.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn batch(n: usize, offset: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let k = offset + i;
            Event::Flow(std::sync::Arc::new(flow_between((k % 7 + 1) as u16, (k % 5 + 1) as u16, (k % 60000) as u16)))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let runs = 5;
    let batch_size = 1000;
    println!("flowgate-tui-bench (medians of {runs} runs; {batch_size} events per batch)\n");
    println!("{:<46} {:>16} {:>22}", "stage", "events/s", "core share at 100k/s");

    // Decode: one frame of 1000 flows as protocol 1.5 sends it (a compact batch whose peers were defined
    // by an earlier frame of the connection), decoded and expanded into events again and again.
    let mut numbers = PeerNumbers::default();
    let first = numbers.batch(&batch(batch_size, 0));
    let frame =
        codec::encode_compact("events", &ServerMessage::FlowBatch(numbers.batch(&batch(batch_size, batch_size))))?;
    let frame = bytes::BytesMut::from(&frame[..]);
    let mut peers = PeerTable::default();
    peers.expand(first)?;
    let mut rates = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let rounds = 100;
        for _ in 0..rounds {
            let ServerMessage::FlowBatch(compact) = codec::decode("events", &frame)? else {
                anyhow::bail!("the frame is not a flow batch")
            };
            std::hint::black_box(peers.expand(compact)?);
        }
        rates.push((rounds * batch_size) as f64 / started.elapsed().as_secs_f64());
    }
    let decode = median(rates);
    println!("{:<46} {:>16.0} {:>21.1}%", "decode frames (compact batches, 1.5)", decode, RATE / decode * 100.0);

    // Ingest: a simulated second at 100k events/s, 100 batches 10 ms apart, into the bounded state.
    let mut rates = Vec::new();
    let mut state = State::new(FlowFilter::default(), Vec::new(), "bench".into());
    for run in 0..runs {
        let batches: Vec<Vec<Event>> = (0..100).map(|b| batch(batch_size, (run * 100 + b) * batch_size)).collect();
        let started = Instant::now();
        for (b, events) in batches.into_iter().enumerate() {
            state.push_events(events, (run as u64 * 1000) + b as u64 * 10);
        }
        rates.push(100.0 * batch_size as f64 / started.elapsed().as_secs_f64());
    }
    let ingest = median(rates);
    println!(
        "{:<46} {:>16.0} {:>21.1}%",
        "take into the TUI state (history, connections)",
        ingest,
        RATE / ingest * 100.0
    );

    // Draw: full frames from a full history.
    let mut terminal = Terminal::new(TestBackend::new(200, 50))?;
    let mut frame_ms = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let frames = 20;
        for _ in 0..frames {
            terminal.draw(|f| view::render(f, &state))?;
        }
        frame_ms.push(started.elapsed().as_secs_f64() * 1000.0 / f64::from(frames));
    }
    let ms = median(frame_ms);
    println!(
        "{:<46} {:>16} {:>21.1}%",
        format!("draw a 200x50 frame ({ms:.2} ms), 20 frames/s"),
        "-",
        ms * 20.0 / 10.0
    );
    println!("\nThe TUI keeps up when the three shares add up to well under 100% of a core.");
    Ok(())
}
