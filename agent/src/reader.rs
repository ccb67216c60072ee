//! Drains the kernel's events ring buffer. The kernel only wakes us once enough data is waiting
//! (batched wake-ups, see `ebpf-progs/src/events.rs`); a periodic tick drains whatever arrived below
//! that threshold, so latency stays bounded by the tick when traffic is light.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

/// Reads records until the task is cancelled, handing each to `on_record` and then calling
/// `on_batch_end` once per drained batch.
pub async fn run(
    ring: RingBuf<MapData>,
    tick: Duration,
    mut on_record: impl FnMut(&[u8]),
    mut on_batch_end: impl FnMut(),
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut on_record);
                guard.clear_ready();
            }
            _ = interval.tick() => {
                drain(fd.get_mut(), &mut on_record);
            }
        }
        on_batch_end();
    }
}

fn drain(ring: &mut RingBuf<MapData>, on_record: &mut impl FnMut(&[u8])) {
    while let Some(item) = ring.next() {
        on_record(&item);
    }
}
