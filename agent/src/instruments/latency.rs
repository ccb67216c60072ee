//! Pipeline latency in HDR histograms: kernel timestamp to decode (the pipeline handing a batch to the
//! hub) and decode to send (a client's session taking the flow for its socket). Each stage keeps a
//! sliding window of one to two minutes for its quantiles and max, plus a running sum and count.
//!
//! Cost on the event path: one uncontended lock and one histogram increment per flow at decode, and
//! two relaxed stores per flow into a small table keyed by the flow's address, from which the send
//! side finds each flow's decode time. A flow whose slot was taken by a later one is not sampled.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use flowgate_proto::{Flow, message::Event};
use hdrhistogram::Histogram;

use flowgate_events::clock::monotonic_ns;

/// Longest latency kept exactly; longer ones are recorded as this.
const MAX_NS: u64 = 60_000_000_000;
/// Quantiles and max cover the last one to two of these.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Slots of the decode-time table (a power of two).
const STAMP_SLOTS: usize = 1 << 14;

/// The two stages, as the metric's `stage` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    KernelToDecode,
    DecodeToSend,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::KernelToDecode, Stage::DecodeToSend];

    pub fn label(self) -> &'static str {
        match self {
            Stage::KernelToDecode => "kernel_to_decode",
            Stage::DecodeToSend => "decode_to_send",
        }
    }
}

struct Window {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    started: Instant,
    sum_ns: u128,
    count: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

impl Window {
    fn new() -> Self {
        Self { current: histogram(), previous: histogram(), started: Instant::now(), sum_ns: 0, count: 0 }
    }

    fn turn(&mut self) {
        if self.started.elapsed() >= WINDOW {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            self.started = Instant::now();
        }
    }

    fn record(&mut self, ns: u64) {
        self.current.saturating_record(ns.clamp(1, MAX_NS));
        self.sum_ns += u128::from(ns);
        self.count += 1;
    }
}

/// What a scrape shows for one stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageSummary {
    /// `(quantile, seconds)` for 0.5, 0.9, 0.99; empty when the window has no sample.
    pub quantiles: Vec<(f64, f64)>,
    /// Largest latency in the window, seconds (0 when empty).
    pub max_seconds: f64,
    pub sum_seconds: f64,
    pub count: u64,
}

struct Stamp {
    key: AtomicUsize,
    decoded_ns: AtomicU64,
}

pub struct PipelineLatency {
    kernel_to_decode: Mutex<Window>,
    decode_to_send: Mutex<Window>,
    stamps: Box<[Stamp]>,
}

impl Default for PipelineLatency {
    fn default() -> Self {
        Self {
            kernel_to_decode: Mutex::new(Window::new()),
            decode_to_send: Mutex::new(Window::new()),
            stamps: (0..STAMP_SLOTS)
                .map(|_| Stamp { key: AtomicUsize::new(0), decoded_ns: AtomicU64::new(0) })
                .collect(),
        }
    }
}

fn slot_of(key: usize) -> usize {
    // Arc allocations are 8-aligned; mix the address so neighbours spread.
    (key >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> (usize::BITS - STAMP_SLOTS.trailing_zeros())
}

fn lock(m: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PipelineLatency {
    /// The pipeline is handing `flows` to the hub now: records kernel-to-decode for each and notes the
    /// decode time for the send side.
    pub fn decoded(&self, flows: &[Arc<Flow>]) {
        self.decoded_at(flows, monotonic_ns());
    }

    fn decoded_at(&self, flows: &[Arc<Flow>], now: u64) {
        if flows.is_empty() {
            return;
        }
        let mut window = lock(&self.kernel_to_decode);
        window.turn();
        for flow in flows {
            window.record(now.saturating_sub(flow.ktime_ns));
            let key = Arc::as_ptr(flow) as usize;
            let stamp = &self.stamps[slot_of(key)];
            stamp.decoded_ns.store(now, Ordering::Relaxed);
            stamp.key.store(key, Ordering::Release);
        }
    }

    /// A session is about to write `events` to its client: records decode-to-send for each flow whose
    /// decode time is still known.
    pub fn sent(&self, events: &[Event]) {
        self.sent_at(events, monotonic_ns());
    }

    fn sent_at(&self, events: &[Event], now: u64) {
        let mut samples = [0u64; 64];
        let mut n = 0;
        let mut window: Option<std::sync::MutexGuard<'_, Window>> = None;
        for event in events {
            let Event::Flow(flow) = event else { continue };
            let key = Arc::as_ptr(flow) as usize;
            let stamp = &self.stamps[slot_of(key)];
            if stamp.key.load(Ordering::Acquire) != key {
                continue;
            }
            let decoded = stamp.decoded_ns.load(Ordering::Relaxed);
            if stamp.key.load(Ordering::Acquire) != key || decoded > now {
                continue;
            }
            samples[n] = now - decoded;
            n += 1;
            if n == samples.len() {
                let w = window.get_or_insert_with(|| lock(&self.decode_to_send));
                samples.iter().for_each(|s| w.record(*s));
                n = 0;
            }
        }
        if n > 0 || window.is_some() {
            let w = window.get_or_insert_with(|| lock(&self.decode_to_send));
            w.turn();
            samples[..n].iter().for_each(|s| w.record(*s));
        }
    }

    /// Quantiles over the window, and the running sum and count.
    pub fn summary(&self, stage: Stage) -> StageSummary {
        let mut window = lock(match stage {
            Stage::KernelToDecode => &self.kernel_to_decode,
            Stage::DecodeToSend => &self.decode_to_send,
        });
        window.turn();
        let mut merged = window.previous.clone();
        merged.add(&window.current).expect("same bounds");
        let seconds = |ns: u64| ns as f64 / 1e9;
        StageSummary {
            quantiles: if merged.is_empty() {
                Vec::new()
            } else {
                [0.5, 0.9, 0.99].into_iter().map(|q| (q, seconds(merged.value_at_quantile(q)))).collect()
            },
            max_seconds: if merged.is_empty() { 0.0 } else { seconds(merged.max()) },
            sum_seconds: window.sum_ns as f64 / 1e9,
            count: window.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use flowgate_proto::flow::fixtures::flow_between;

    use super::*;

    #[test]
    fn both_stages_are_measured_per_flow() {
        let l = PipelineLatency::default();
        let flows: Vec<Arc<Flow>> = (0..100u64)
            .map(|i| {
                let mut f = flow_between(1, 2, i as u16);
                f.ktime_ns = 1_000_000_000 - i * 1_000_000; // 0..99 ms before decode
                Arc::new(f)
            })
            .collect();
        l.decoded_at(&flows, 1_000_000_000);
        let k = l.summary(Stage::KernelToDecode);
        assert_eq!(k.count, 100);
        assert!((k.quantiles[0].1 - 0.050).abs() < 0.001, "{k:?}");
        assert!((k.max_seconds - 0.099).abs() < 0.001, "{k:?}");
        let events: Vec<Event> = flows.iter().map(|f| Event::Flow(Arc::clone(f))).collect();
        l.sent_at(&events, 1_002_000_000);
        let s = l.summary(Stage::DecodeToSend);
        assert_eq!(s.count, 100);
        assert!((s.quantiles[2].1 - 0.002).abs() < 0.0001, "{s:?}");
        // A flow never seen at decode is not sampled.
        l.sent_at(&[Event::Flow(Arc::new(flow_between(3, 4, 1)))], 2_000_000_000);
        assert_eq!(l.summary(Stage::DecodeToSend).count, 100);
        assert!(PipelineLatency::default().summary(Stage::DecodeToSend).quantiles.is_empty());
    }
}
