//! The process-wide instruments the event path and the controller record into: pipeline latency (kernel
//! timestamp to decode, to a client's socket) in HDR histograms ([`latency`]) and policy apply times in
//! fixed buckets. They are written from wherever the event happens and read by the metrics at scrape
//! time; keeping them apart from [`crate::metrics`] lets the state and the pipeline record without
//! depending on the metrics server.

pub mod latency;

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use self::latency::PipelineLatency;

/// Buckets of `flowgate_policy_apply_duration_seconds`.
const APPLY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A histogram with fixed buckets, lock-free.
#[derive(Debug)]
pub struct BucketHistogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl BucketHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative `(le, count)` pairs, then the total count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut acc = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                acc += c.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        (buckets, self.count.load(Ordering::Relaxed), self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// What the event path and the controller record into, process-wide.
pub struct Instruments {
    pub latency: PipelineLatency,
    pub policy_apply: BucketHistogram,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| Instruments {
    latency: PipelineLatency::default(),
    policy_apply: BucketHistogram::new(&APPLY_BUCKETS),
});

/// The process's instruments: `instruments().latency.decoded(&batch)` in the pipeline,
/// `instruments().latency.sent(&events)` in a session, `instruments().policy_apply.observe(d)` in
/// the controller.
pub fn instruments() -> &'static Instruments {
    &INSTRUMENTS
}
