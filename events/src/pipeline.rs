//! The event pipeline, run by the reader for every record it drains: decode -> enrich -> history and
//! fan-out. Records are collected into a batch and published once per drained batch, so subscribers get
//! batches and the hub's lock is taken once per batch, not per record.
//!
//! What the pipeline needs from its owner (the agent's state, or a test) is the [`PipelineContext`]:
//! the hub, the counters, and the current peer and policy snapshots, re-read at the first record of each
//! batch.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use flowgate_proto::{Flow, message::LossSource};
use log::debug;

use crate::{
    clock::KtimeClock,
    decode,
    enrich::{Enricher, PeerSnapshot, PolicyLookup},
    hub::Hub,
    sink::RecordSink,
};

/// Largest batch handed to the hub at once; a long drain is published in pieces of this size.
const MAX_BATCH: usize = 4096;

/// Counters of the event pipeline, updated lock-free by the reader.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    pub records_read: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Last value read from the kernel's lost-records counter.
    pub kernel_lost: AtomicU64,
    /// Records the perf buffers reported lost (perf event array only).
    pub perf_lost: AtomicU64,
    /// Records the kernel could not write into a perf buffer that subscribers have been told of, since
    /// this agent started: from the buffers' lost-record notices or from the kernel's `PerfBufferFull`
    /// counter, whichever told first (see [`PipelineCounters::perf_loss_known`]).
    pub perf_lost_published: AtomicU64,
    /// The kernel's counters by name, as last read.
    pub kernel: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Last value read from the kernel's packet counters.
    pub packets: AtomicU64,
}

impl PipelineCounters {
    /// Records lost to full perf buffers are known from two places: the buffer's lost-record notice, which
    /// comes in order with the flows but only once the next record is written on that CPU (after the last
    /// burst, never), and the kernel's counter, which the agent polls. Either source says how many are
    /// lost in all, since this agent started; this returns how many of those subscribers have not been
    /// told of yet (and counts them as told), so each is published once, by whichever comes first.
    pub fn perf_loss_known(&self, total: u64) -> u64 {
        let told = self.perf_lost_published.fetch_max(total, Ordering::Relaxed);
        total.saturating_sub(told)
    }
}

/// What the pipeline reads from its owner.
pub trait PipelineContext: Send + Sync {
    /// Resolves rule ids and isolation to policy names.
    type Policy: PolicyLookup;
    fn hub(&self) -> &Arc<Hub>;
    fn counters(&self) -> &PipelineCounters;
    /// The endpoints and identities in effect now.
    fn peers(&self) -> Arc<PeerSnapshot>;
    /// The policies in effect now.
    fn policy(&self) -> Arc<Self::Policy>;
    /// A batch was decoded and is about to be published (latency instruments hook in here).
    fn decoded(&self, _batch: &[Arc<Flow>]) {}
}

pub struct Pipeline<C: PipelineContext> {
    context: Arc<C>,
    enricher: Enricher,
    peers: Arc<PeerSnapshot>,
    policy: Arc<C::Policy>,
    /// Whether `peers` and `policy` were read in this batch (the reader may have slept since the last).
    fresh: bool,
    batch: Vec<Arc<Flow>>,
    decode_errors: u64,
}

impl<C: PipelineContext> Pipeline<C> {
    pub fn new(context: Arc<C>) -> Self {
        let (peers, policy) = (context.peers(), context.policy());
        Self {
            context,
            enricher: Enricher::new(KtimeClock::new()),
            peers,
            policy,
            fresh: true,
            batch: Vec::new(),
            decode_errors: 0,
        }
    }

    fn publish(&mut self) {
        if self.batch.is_empty() {
            self.context.hub().flush_losses();
        } else {
            self.context.decoded(&self.batch);
            self.context.hub().publish(&self.batch);
            self.batch.clear();
        }
    }
}

impl<C: PipelineContext> RecordSink for Pipeline<C> {
    fn on_record(&mut self, bytes: &[u8]) {
        if !self.fresh {
            self.peers = self.context.peers();
            self.policy = self.context.policy();
            self.fresh = true;
        }
        self.context.counters().records_read.fetch_add(1, Ordering::Relaxed);
        match decode::decode(bytes) {
            Ok(record) => {
                for record in decode::expand(record) {
                    self.batch.push(Arc::new(self.enricher.enrich(&record, self.peers.as_ref(), self.policy.as_ref())));
                }
                if self.batch.len() >= MAX_BATCH {
                    self.publish();
                }
            }
            Err(e) => {
                debug!("undecodable record: {e}");
                self.decode_errors += 1;
            }
        }
    }

    fn on_lost(&mut self, count: u64) {
        // Flows decoded before the loss go out first, so the loss lands where the gap is.
        self.publish();
        let counters = self.context.counters();
        let noticed = counters.perf_lost.fetch_add(count, Ordering::Relaxed) + count;
        let news = counters.perf_loss_known(noticed);
        if news > 0 {
            self.context.hub().publish_loss(LossSource::KernelBuffer, news);
        }
    }

    /// End of a drained batch: publish, report decode errors; the next batch reads endpoints and policy anew.
    fn on_batch_end(&mut self) {
        self.publish();
        if self.decode_errors > 0 {
            self.context.counters().decode_errors.fetch_add(self.decode_errors, Ordering::Relaxed);
            self.context.hub().publish_loss(LossSource::DecodeError, self.decode_errors);
            self.decode_errors = 0;
        }
        self.fresh = false;
    }
}
