//! The kernel's counters, polled: copied into the agent state for `status` and the metrics, and the
//! records the kernel could not write into the events buffer published to every subscriber as a loss
//! (for the perf event array, those whose lost-record notice has not come first); and losses held back
//! by full subscriber queues flushed once there is room.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use flowgate_common::Counter;
use flowgate_proto::message::LossSource;
use log::warn;

use crate::{controller::Controller, state::AgentState};

/// Every 100 ms: kernel counters into the state, new kernel-side losses to every subscriber, and losses
/// held back by full subscriber queues to those that have room again.
pub async fn poll(controller: Arc<Mutex<Controller>>, state: Arc<AgentState>) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    // Pinned counters survive restarts: only losses from now on are news.
    let initial = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner).counters().ok();
    let mut last_lost = initial.as_ref().map_or(0, |c| c.get(Counter::RecordsLost));
    let perf_full_before = initial.as_ref().map_or(0, |c| c.get(Counter::PerfBufferFull));
    let mut last_invalid = None;
    loop {
        interval.tick().await;
        let counters = {
            let c = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let counters = match c.counters() {
                Ok(counters) => counters,
                Err(e) => {
                    warn!("reading kernel counters: {e}");
                    continue;
                }
            };
            // The per-endpoint counts (a map lookup per endpoint) are read only when the node-wide count
            // moved: on a quiet node, never.
            let invalid = counters.get(Counter::InvalidSource);
            if last_invalid != Some(invalid) {
                let ids = state.endpoints().iter().map(|e| e.id).collect::<Vec<_>>();
                match c.invalid_source_drops(ids) {
                    Ok(drops) => {
                        state.set_invalid_source_drops(drops);
                        last_invalid = Some(invalid);
                    }
                    Err(e) => warn!("reading the per-endpoint invalid-source drops: {e}"),
                }
            }
            counters
        };
        let lost = counters.get(Counter::RecordsLost);
        state.counters.kernel_lost.store(lost, Ordering::Relaxed);
        *state.counters.kernel.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Counter::ALL.iter().map(|c| (c.name().to_owned(), counters.get(*c))).collect();
        state.counters.packets.store(
            counters.get(Counter::PacketsFromEndpoint) + counters.get(Counter::PacketsToEndpoint),
            Ordering::Relaxed,
        );
        if lost > last_lost {
            state.hub().publish_loss(LossSource::KernelBuffer, lost - last_lost);
            last_lost = lost;
        }
        // Records a full perf buffer refused: told here when their lost-record notice has not come (it
        // comes only in front of the next record written on that CPU).
        let perf_full = counters.get(Counter::PerfBufferFull).saturating_sub(perf_full_before);
        let news = state.counters.perf_loss_known(perf_full);
        if news > 0 {
            state.hub().publish_loss(LossSource::KernelBuffer, news);
        }
        // Losses a full subscriber queue held back go out once it has room, even with no flow to carry
        // them (the events reader sleeps while no records come).
        state.hub().flush_losses();
    }
}
