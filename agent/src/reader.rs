//! Drains the kernel's events buffer, on a thread of its own. With the ring buffer (default) the kernel
//! wakes us in batches: when enough data is waiting, or when the last wake-up is older than the wake-up
//! interval (see `ebpf-progs/src/events.rs`), so a lone record is read at once and a stream about once
//! per interval; a periodic tick drains whatever is left anyway (a backstop, e.g. with the interval
//! turned off). With the perf event array there is one buffer per CPU, each drained by its own thread,
//! and the kernel's lost-record notices are passed on as losses.
//!
//! A thread rather than a task of the async runtime: a wake-up then costs one thread switch. As a task,
//! the kernel's wake-up woke the runtime's worker parked on its event loop, which woke another worker to
//! look for more work; under a stream (thousands of wake-ups a second) that was a quarter of the agent's
//! CPU, taken from the pods on the same cores.
//!
//! The thread runs under `SCHED_BATCH`: its wake-ups do not preempt the task running on the CPU (a pod's,
//! say); it runs when that task blocks or its time slice ends, and otherwise with the same share of CPU
//! as any other thread. Under a stream of new connections this halved the agent's CPU per connection
//! and gave the pods' traffic back most of it (docs/benchmarks.md, "On real traffic").

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{
    MapData, PerfEventArray, RingBuf,
    perf::{PerfEvent, PerfEventArrayBuffer},
};
use flowgate_events::RecordSink;
use tokio::sync::oneshot;

/// A reader thread. It stops within one drain tick once the handle is dropped.
pub struct Reader {
    stop: Arc<AtomicBool>,
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
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts reading `ring` on a thread of its own: each record to the sink, each drained batch ended.
pub fn spawn(ring: RingBuf<MapData>, tick: Duration, sink: impl RecordSink + Send + 'static) -> io::Result<Reader> {
    let mut sink = sink;
    spawn_thread("fg-events-ring", ring, tick, move |ring| {
        while let Some(item) = ring.next() {
            sink.on_record(&item);
        }
        sink.on_batch_end();
    })
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

/// Starts reading one CPU's perf buffer on a thread of its own. Samples may be split at the buffer's end;
/// they are put back together before the sink sees them.
pub fn spawn_perf(
    buffer: PerfEventArrayBuffer<MapData>,
    tick: Duration,
    sink: impl RecordSink + Send + 'static,
) -> io::Result<Reader> {
    let mut sink = sink;
    let mut joined = Vec::new();
    spawn_thread("fg-events-perf", buffer, tick, move |buffer| {
        buffer.for_each(|event| match event {
            PerfEvent::Sample { head, tail: [] } => sink.on_record(head),
            PerfEvent::Sample { head, tail } => {
                joined.clear();
                joined.extend_from_slice(head);
                joined.extend_from_slice(tail);
                sink.on_record(&joined);
            }
            PerfEvent::Lost { count } => sink.on_lost(count),
        });
        sink.on_batch_end();
    })
}

/// Runs `drain` on `buffer` on a new thread whenever its fd is readable, and at least every `tick`, until
/// the returned handle is dropped.
fn spawn_thread<B: AsRawFd + Send + 'static>(
    name: &str,
    mut buffer: B,
    tick: Duration,
    mut drain: impl FnMut(&mut B) + Send + 'static,
) -> io::Result<Reader> {
    let stop = Arc::new(AtomicBool::new(false));
    let (report, ended) = oneshot::channel();
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
        yield_on_wakeup();
        let result = loop {
            if stopped.load(Ordering::Relaxed) {
                break Ok(());
            }
            if let Err(e) = wait_readable(buffer.as_raw_fd(), tick) {
                break Err(e);
            }
            drain(&mut buffer);
        };
        let _ = report.send(result);
    })?;
    Ok(Reader { stop, ended: Some(ended), thread: Some(thread) })
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

/// Waits until `fd` is readable or `timeout` has passed.
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut poll_fd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let timeout = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec, both alive across the call; no signal mask.
    let ret = unsafe { libc::ppoll(&mut poll_fd, 1, &timeout, std::ptr::null()) };
    if ret >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) }
}
