//! Drains the kernel's events ring buffer. The kernel only wakes us once enough data is waiting
//! (batched wake-ups, see `ebpf-progs/src/events.rs`); a periodic tick drains whatever arrived below
//! that threshold, so latency stays bounded by the tick when traffic is light.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

/// Where drained records go.
pub trait RecordSink {
    /// One raw record.
    fn on_record(&mut self, bytes: &[u8]);
    /// The buffer is empty for now: the end of a batch.
    fn on_batch_end(&mut self);
}

/// Reads records until the task is cancelled, handing each to the sink and ending each drained batch.
pub async fn run(ring: RingBuf<MapData>, tick: Duration, mut sink: impl RecordSink) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut sink);
                guard.clear_ready();
            }
            _ = interval.tick() => {
                drain(fd.get_mut(), &mut sink);
            }
        }
        sink.on_batch_end();
    }
}

fn drain(ring: &mut RingBuf<MapData>, sink: &mut impl RecordSink) {
    while let Some(item) = ring.next() {
        sink.on_record(&item);
    }
}
