//! Drains the kernel's events buffer, on a thread of its own. With the ring buffer (default) the kernel
//! wakes us in batches: when enough data is waiting, or when the last wake-up is older than the wake-up
//! interval (see `ebpf-progs/src/events.rs`), so a lone record is read at once and a stream about once
//! per interval. What no wake-up announced (records written within an interval of the last wake-up) is
//! picked up by a backstop drain ([`Backstop`]): after records, until a drain finds none an interval
//! later; an idle node's reader then sleeps until the kernel wakes it. A reader that ticked while idle
//! (every 5 ms) cost the pods' UDP traffic 12-15% on this 2-core machine (docs/benchmarks.md). With the
//! wake-up interval turned off, and with the perf event array (one buffer per CPU, each drained by its
//! own thread, the kernel's lost-record notices passed on as losses; the kernel wakes it only once a page
//! of records is waiting, [`crate::perf_buffer`]), the backstop ticks always.
//!
//! With `--events-poll-streams`, while a stream lasts the ring buffer's reader does not wait for the
//! kernel at all ([`WakeupHold`]): it tells the programs not to wake it and drains every wake-up interval
//! on its own timer (sleeping the whole interval, records or not), until a drain finds nothing; then it
//! lets them wake it again. A wake-up from a program is an interrupt the CPU sends itself from inside the
//! packet's processing (on a KVM guest, an exit to the hypervisor each), paid by the pod whose packet it
//! was; the reader's timer fires on the reader's own CPU. Not the default: it takes a third to a half of the
//! programs' time per new connection off here, but the pods' rate did not move with it, in any run
//! (docs/benchmarks.md, "Sessions 17 and 18").
//!
//! A thread rather than a task of the async runtime: a wake-up then costs one thread switch. As a task,
//! the kernel's wake-up woke the runtime's worker parked on its event loop, which woke another worker to
//! look for more work; under a stream (thousands of wake-ups a second) that was a quarter of the agent's
//! CPU, taken from the pods on the same cores.
//!
//! A reader the kernel wakes (the perf event array's; the ring buffer's without a wake-up interval) runs
//! under `SCHED_BATCH`: its wake-ups do not preempt the task running on the CPU (a pod's, say); it runs
//! when that task blocks or its time slice ends, and otherwise with the same share of CPU as any other
//! thread. Under a stream of new connections this halved the agent's CPU per connection when every
//! stream was announced by the kernel's wake-ups (docs/benchmarks.md, "On real traffic"). A ring reader
//! that polls streams ([`WakeupHold`]) stays under the default policy: woken by its own timer under
//! `SCHED_BATCH`, it waited for whatever held a busy CPU.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, RingBuf};
use flowgate_events::RecordSink;
use tokio::sync::oneshot;

use crate::perf_buffer::{PerfBuffer, PerfRecord};

/// When the reader drains its buffer without being woken by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backstop {
    /// Every so often, records or not: for perf buffers, and for a ring buffer whose programs wake the
    /// reader only once enough data is waiting (wake-up interval 0).
    Periodic(Duration),
    /// This long after a drain that found records, and again until a drain at least this long after the
    /// last records finds none; then only when woken. Right for a ring buffer whose programs wake the
    /// reader for any record written at least the wake-up interval after the last wake-up, provided this
    /// is at least that interval: every record a wake-up did not announce was written within an interval
    /// of one, so a drain an interval later finds it, and every record after that wakes the reader.
    AfterRecords(Duration),
}

impl Backstop {
    /// The backstop for a ring buffer whose programs wake the reader `wakeup_interval` apart (zero: only
    /// when enough data is waiting), draining at least every `tick` while records come.
    pub fn for_ring(tick: Duration, wakeup_interval: Duration) -> Self {
        if wakeup_interval.is_zero() { Self::Periodic(tick) } else { Self::AfterRecords(tick.max(wakeup_interval)) }
    }
}

/// What the reader writes as the programs' last wake-up while it polls: no clock reading is an interval
/// after it, so no record wakes the reader (`ebpf-progs/src/events.rs`, `wakeup_flag`).
const HELD: u64 = u64::MAX;

/// The ring buffer's wake-ups held off while the reader polls a stream. After a drain that found records
/// the reader writes [`HELD`] as the programs' last wake-up and drains again every `poll` (the wake-up
/// interval) on its own; after a drain that found none it writes 0 (so the next record wakes it), drains
/// once more for what came meanwhile, and goes back to waiting. A record whose program read [`HELD`] just
/// before the release and was written just after that last drain wakes nobody: the backstop drain after
/// records takes it (at most the backstop's tick later). Only for a wake-up interval above zero.
pub struct WakeupHold {
    last_wakeup: Array<MapData, u64>,
    poll: Duration,
    /// What the map holds as far as the reader knows (`None` until it first wrote it).
    held: Option<bool>,
}

impl WakeupHold {
    pub fn new(last_wakeup: Array<MapData, u64>, poll: Duration) -> Self {
        Self { last_wakeup, poll, held: None }
    }

    /// Holds the wake-ups off or lets them through; a failed write changes nothing (it is logged), so the
    /// reader keeps polling while the map may still say held.
    fn set(&mut self, held: bool) {
        if self.held == Some(held) {
            return;
        }
        match self.last_wakeup.set(0, if held { HELD } else { 0 }, 0) {
            Ok(()) => self.held = Some(held),
            Err(e) => log::warn!(
                "the events reader could not {} the ring buffer's wake-ups: {e}",
                if held { "hold off" } else { "let through" }
            ),
        }
    }

    /// Whether the programs may be holding their wake-ups (the reader must poll).
    fn holding(&self) -> bool {
        self.held != Some(false)
    }
}

/// What a reader with a [`WakeupHold`] does after a drain that found `records`, the wake-ups `held` or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldStep {
    /// As it was: waiting for wake-ups, or polling a stream that goes on.
    Keep,
    /// A stream began: hold the wake-ups off and poll.
    Hold,
    /// The stream ended: let the wake-ups through, then drain once more.
    Release,
}

fn hold_step(held: bool, records: usize) -> HoldStep {
    match (held, records > 0) {
        (false, true) => HoldStep::Hold,
        (true, false) => HoldStep::Release,
        _ => HoldStep::Keep,
    }
}

/// The reader's next wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wait {
    /// Whether records in the buffer end it (the buffer's descriptor is readable as soon as one waits).
    buffer: bool,
    /// How long it may last at most (`None`: until woken).
    timeout: Option<Duration>,
}

/// The next wait under `backstop`, given the poll interval while a [`WakeupHold`] holds the wake-ups off
/// (`polling`), when a drain last found records (`None`: not since the reader went idle) and now. A
/// polling reader sleeps the whole interval, records or not: were it woken by the first record, it would
/// drain a stream record by record.
fn next_wait(backstop: Backstop, polling: Option<Duration>, last_records: Option<Instant>, now: Instant) -> Wait {
    if let Some(poll) = polling {
        return Wait { buffer: false, timeout: Some(poll) };
    }
    let timeout = match backstop {
        Backstop::Periodic(tick) => Some(tick),
        Backstop::AfterRecords(tick) => last_records.map(|at| tick.saturating_sub(now.saturating_duration_since(at))),
    };
    Wait { buffer: true, timeout }
}

/// After a drain at `now` that found `records`: when a drain last found records, or `None` once the
/// reader may sleep until woken (a drain at least one backstop after the last records found none).
fn after_drain(backstop: Backstop, last_records: Option<Instant>, records: usize, now: Instant) -> Option<Instant> {
    let Backstop::AfterRecords(tick) = backstop else { return Some(now) };
    if records > 0 { Some(now) } else { last_records.filter(|at| now.saturating_duration_since(*at) < tick) }
}

/// A reader thread. It stops at once when the handle is dropped.
pub struct Reader {
    stop: Arc<AtomicBool>,
    /// Written on drop, to wake a reader waiting without a time limit.
    wake: OwnedFd,
    ended: Option<oneshot::Receiver<io::Result<()>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Waits until the thread ends, which it does only on an error of its buffer (or if it panicked).
    pub async fn ended(&mut self) -> io::Result<()> {
        let Some(ended) = self.ended.as_mut() else { return Ok(()) };
        let result = ended.await.unwrap_or_else(|_| Err(io::Error::other("the reader thread panicked")));
        self.ended = None;
        result
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our own eventfd; a failure (it cannot fail short of
        // a counter overflow) would leave the thread to notice `stop` at its next wake-up.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts reading `ring` on a thread of its own: each record to the sink, each drained batch ended; with
/// `hold`, polling streams without the programs' wake-ups ([`WakeupHold`]).
pub fn spawn(
    ring: RingBuf<MapData>,
    backstop: Backstop,
    hold: Option<WakeupHold>,
    sink: impl RecordSink + Send + 'static,
) -> io::Result<Reader> {
    let mut sink = sink;
    spawn_thread("fg-events-ring", ring, backstop, hold, move |ring| {
        let mut records = 0;
        while let Some(item) = ring.next() {
            sink.on_record(&item);
            records += 1;
        }
        sink.on_batch_end();
        records
    })
}

/// Starts reading one CPU's perf buffer on a thread of its own. Samples may be split at the buffer's end;
/// they are put back together before the sink sees them.
pub fn spawn_perf(buffer: PerfBuffer, tick: Duration, sink: impl RecordSink + Send + 'static) -> io::Result<Reader> {
    let mut sink = sink;
    let mut joined = Vec::new();
    spawn_thread("fg-events-perf", buffer, Backstop::Periodic(tick), None, move |buffer| {
        let records = buffer.drain(|record| match record {
            PerfRecord::Sample { head, tail: [] } => sink.on_record(head),
            PerfRecord::Sample { head, tail } => {
                joined.clear();
                joined.extend_from_slice(head);
                joined.extend_from_slice(tail);
                sink.on_record(&joined);
            }
            PerfRecord::Lost { count } => sink.on_lost(count),
        });
        sink.on_batch_end();
        records
    })
}

/// Runs `drain` (which returns how many records it read) on `buffer` on a new thread whenever its fd is
/// readable, and as `backstop` says (and `hold`, while it holds the wake-ups off), until the returned
/// handle is dropped.
fn spawn_thread<B: AsRawFd + Send + 'static>(
    name: &str,
    mut buffer: B,
    backstop: Backstop,
    mut hold: Option<WakeupHold>,
    mut drain: impl FnMut(&mut B) -> usize + Send + 'static,
) -> io::Result<Reader> {
    // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor that we own.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("creating the {name} thread's wake-up eventfd: {e}")));
    }
    // SAFETY: `raw` is a valid descriptor nothing else owns.
    let wake = unsafe { OwnedFd::from_raw_fd(raw) };
    let woken = wake.as_raw_fd();
    let stop = Arc::new(AtomicBool::new(false));
    let (report, ended) = oneshot::channel();
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
        // A reader the kernel wakes yields to the task on its CPU; one that polls streams on its own timer
        // does not: under SCHED_BATCH its timer's wake-ups waited for whatever ran on a busy CPU (p99 at
        // 100k events/s 5.4 ms against 0.65 ms).
        if hold.is_none() {
            yield_on_wakeup();
        }
        // Records may be waiting from before the reader started, announced to nobody: the first wait is
        // bounded as after records.
        let mut last_records = Some(Instant::now());
        // A map an earlier reader left held would keep every wake-up off: start from "let through".
        if let Some(hold) = hold.as_mut() {
            hold.set(false);
        }
        let result = loop {
            if stopped.load(Ordering::Relaxed) {
                break Ok(());
            }
            let polling = hold.as_ref().filter(|hold| hold.holding()).map(|hold| hold.poll);
            let wait = next_wait(backstop, polling, last_records, Instant::now());
            let fd = wait.buffer.then(|| buffer.as_raw_fd());
            if let Err(e) = wait_readable(fd, woken, wait.timeout) {
                break Err(e);
            }
            if stopped.load(Ordering::Relaxed) {
                break Ok(());
            }
            let mut records = drain(&mut buffer);
            if let Some(hold) = hold.as_mut() {
                match hold_step(hold.holding(), records) {
                    HoldStep::Keep => {}
                    HoldStep::Hold => hold.set(true),
                    HoldStep::Release => {
                        hold.set(false);
                        records = drain(&mut buffer);
                        if records > 0 {
                            hold.set(true);
                        }
                    }
                }
            }
            last_records = after_drain(backstop, last_records, records, Instant::now());
        };
        let _ = report.send(result);
    })?;
    Ok(Reader { stop, wake, ended: Some(ended), thread: Some(thread) })
}

/// Puts the calling thread under `SCHED_BATCH` (see the module docs); a refusal is logged and changes
/// nothing else.
fn yield_on_wakeup() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid sched_param for a non-real-time policy, read during the call; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        log::warn!("the events reader stays under the default scheduling policy: {}", io::Error::last_os_error());
    }
}

/// Waits until `fd` (if any) or `wake` is readable, or `timeout` (if any) has passed.
fn wait_readable(fd: Option<RawFd>, wake: RawFd, timeout: Option<Duration>) -> io::Result<()> {
    // poll(2) skips an entry whose descriptor is negative.
    let mut poll_fds = [fd.unwrap_or(-1), wake].map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    let timeout = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: two valid pollfds and a valid timespec (or null: no limit), alive across the call; no
    // signal mask.
    let ret = unsafe { libc::ppoll(poll_fds.as_mut_ptr(), 2, timeout_ptr, std::ptr::null()) };
    if ret >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(5);

    /// A wait that records in the buffer end.
    fn waiting(timeout: Option<Duration>) -> Wait {
        Wait { buffer: true, timeout }
    }

    #[test]
    fn a_ring_with_wakeups_backs_them_up_for_at_least_an_interval() {
        assert_eq!(Backstop::for_ring(TICK, Duration::from_micros(250)), Backstop::AfterRecords(TICK));
        assert_eq!(
            Backstop::for_ring(TICK, Duration::from_millis(20)),
            Backstop::AfterRecords(Duration::from_millis(20))
        );
        assert_eq!(Backstop::for_ring(TICK, Duration::ZERO), Backstop::Periodic(TICK));
    }

    #[test]
    fn after_records_the_reader_drains_again_until_a_quiet_backstop_then_sleeps() {
        let backstop = Backstop::AfterRecords(TICK);
        let t0 = Instant::now();
        // Records found: the next wait ends a backstop later.
        let last = after_drain(backstop, None, 3, t0);
        assert_eq!(last, Some(t0));
        assert_eq!(next_wait(backstop, None, last, t0), waiting(Some(TICK)));
        // Woken early (a wake-up for records already drained): no records, yet the backstop stands.
        let early = t0 + Duration::from_millis(1);
        let last = after_drain(backstop, last, 0, early);
        assert_eq!(last, Some(t0));
        assert_eq!(next_wait(backstop, None, last, early), waiting(Some(Duration::from_millis(4))));
        // A drain a whole backstop after the last records finds none: sleep until woken.
        let quiet = t0 + TICK;
        let last = after_drain(backstop, last, 0, quiet);
        assert_eq!(last, None);
        assert_eq!(next_wait(backstop, None, last, quiet), waiting(None));
        // Woken again: records, and the backstop starts over from this drain.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(after_drain(backstop, last, 1, later), Some(later));
    }

    #[test]
    fn a_stream_holds_the_wakeups_off_until_a_drain_finds_nothing() {
        assert_eq!(hold_step(false, 0), HoldStep::Keep, "idle: wait for a wake-up");
        assert_eq!(hold_step(false, 12), HoldStep::Hold, "records: a stream begins, poll it");
        assert_eq!(hold_step(true, 40), HoldStep::Keep, "the stream goes on");
        assert_eq!(hold_step(true, 0), HoldStep::Release, "it ended: be woken again");
    }

    #[test]
    fn a_polling_reader_sleeps_the_whole_interval_records_or_not() {
        let poll = Duration::from_micros(250);
        let now = Instant::now();
        for backstop in [Backstop::AfterRecords(TICK), Backstop::Periodic(TICK)] {
            for last in [None, Some(now)] {
                assert_eq!(next_wait(backstop, Some(poll), last, now), Wait { buffer: false, timeout: Some(poll) });
            }
        }
        // Once the wake-ups are let through again, records end the wait.
        let after = Backstop::AfterRecords(TICK);
        assert_eq!(next_wait(after, None, None, now), waiting(None));
    }

    #[test]
    fn a_periodic_backstop_ticks_busy_or_idle() {
        let backstop = Backstop::Periodic(TICK);
        let now = Instant::now();
        assert_eq!(next_wait(backstop, None, None, now), waiting(Some(TICK)));
        assert_eq!(next_wait(backstop, None, after_drain(backstop, None, 0, now), now), waiting(Some(TICK)));
    }
}
