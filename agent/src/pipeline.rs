//! The event pipeline, run by the reader for every record it drains: decode -> enrich -> history and
//! fan-out. Records are collected into a batch and published once per drained batch, so subscribers get
//! batches and the hub's lock is taken once per batch, not per record.

use std::sync::{Arc, atomic::Ordering};

use flowgate_proto::{Flow, message::LossSource};
use log::debug;

use crate::{
    decode,
    enrich::{Enricher, PeerSnapshot},
    policy::PolicySnapshot,
    reader::RecordSink,
    state::AgentState,
    time::KtimeClock,
};

/// Largest batch handed to the hub at once; a long drain is published in pieces of this size.
const MAX_BATCH: usize = 4096;

pub struct Pipeline {
    state: Arc<AgentState>,
    enricher: Enricher,
    peers: Arc<PeerSnapshot>,
    policy: Arc<PolicySnapshot>,
    batch: Vec<Arc<Flow>>,
    decode_errors: u64,
}

impl Pipeline {
    pub fn new(state: Arc<AgentState>) -> Self {
        let (peers, policy) = (state.peers(), state.policy());
        Self { state, enricher: Enricher::new(KtimeClock::new()), peers, policy, batch: Vec::new(), decode_errors: 0 }
    }

    fn publish(&mut self) {
        if self.batch.is_empty() {
            self.state.hub().flush_losses();
        } else {
            crate::metrics::instruments().latency.decoded(&self.batch);
            self.state.hub().publish(&self.batch);
            self.batch.clear();
        }
    }
}

impl RecordSink for Pipeline {
    fn on_record(&mut self, bytes: &[u8]) {
        self.state.counters.records_read.fetch_add(1, Ordering::Relaxed);
        match decode::decode(bytes) {
            Ok(record) => {
                self.batch.push(Arc::new(self.enricher.enrich(&record, self.peers.as_ref(), self.policy.as_ref())));
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
        self.state.counters.perf_lost.fetch_add(count, Ordering::Relaxed);
        self.state.hub().publish_loss(LossSource::KernelBuffer, count);
    }

    /// End of a drained batch: publish, report decode errors, pick up endpoint changes.
    fn on_batch_end(&mut self) {
        self.publish();
        if self.decode_errors > 0 {
            self.state.counters.decode_errors.fetch_add(self.decode_errors, Ordering::Relaxed);
            self.state.hub().publish_loss(LossSource::DecodeError, self.decode_errors);
            self.decode_errors = 0;
        }
        self.peers = self.state.peers();
        self.policy = self.state.policy();
    }
}
