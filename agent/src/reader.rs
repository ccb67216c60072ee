//! Drains the kernel's events buffer. With the ring buffer (default) the kernel wakes us in batches:
//! when enough data is waiting, or when the last wake-up is older than the wake-up interval (see
//! `ebpf-progs/src/events.rs`), so a lone record is read at once and a stream about once per interval;
//! a periodic tick drains whatever is left anyway (a backstop, e.g. with the interval turned off).
//! With the perf event array there is one buffer per CPU, each drained by its own task, and the
//! kernel's lost-record notices are passed on as losses.

use std::time::Duration;

use aya::maps::{
    MapData, PerfEventArray, RingBuf,
    perf::{PerfEvent, PerfEventArrayBuffer},
};
use flowgate_events::RecordSink;
use tokio::io::{Interest, unix::AsyncFd};

/// Reads records until the task is cancelled, handing each to the sink and ending each drained batch.
pub async fn run(ring: RingBuf<MapData>, tick: Duration, mut sink: impl RecordSink) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(std::io::Error::from)?;
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

/// Pages of each per-CPU perf buffer (a power of two).
pub const PERF_PAGES: usize = 256;

/// Opens the perf buffer of every online CPU.
pub fn open_perf(
    array: &mut PerfEventArray<MapData>,
    pages: usize,
) -> std::io::Result<Vec<PerfEventArrayBuffer<MapData>>> {
    let cpus = aya::util::online_cpus().map_err(|(what, e)| std::io::Error::new(e.kind(), format!("{what}: {e}")))?;
    cpus.into_iter()
        .map(|cpu| {
            array.open(cpu, Some(pages)).map_err(|e| std::io::Error::other(format!("perf buffer of CPU {cpu}: {e}")))
        })
        .collect()
}

/// Drains one CPU's perf buffer until cancelled. Samples may be split at the buffer's end; they are
/// put back together before the sink sees them.
pub async fn run_perf(
    buffer: PerfEventArrayBuffer<MapData>,
    tick: Duration,
    mut sink: impl RecordSink,
) -> std::io::Result<()> {
    // SAFETY: the buffer owns its perf fd and keeps it open for as long as the AsyncFd lives.
    let mut fd =
        unsafe { AsyncFd::register_with_interest(buffer, Interest::READABLE) }.map_err(std::io::Error::from)?;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut joined = Vec::new();
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain_perf(guard.get_inner_mut(), &mut sink, &mut joined);
                guard.clear_ready();
            }
            _ = interval.tick() => drain_perf(fd.get_mut(), &mut sink, &mut joined),
        }
        sink.on_batch_end();
    }
}

fn drain_perf(buffer: &mut PerfEventArrayBuffer<MapData>, sink: &mut impl RecordSink, joined: &mut Vec<u8>) {
    buffer.for_each(|event| match event {
        PerfEvent::Sample { head, tail: [] } => sink.on_record(head),
        PerfEvent::Sample { head, tail } => {
            joined.clear();
            joined.extend_from_slice(head);
            joined.extend_from_slice(tail);
            sink.on_record(joined);
        }
        PerfEvent::Lost { count } => sink.on_lost(count),
    });
}
