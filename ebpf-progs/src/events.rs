//! Writing records into the events buffer chosen at agent start: the BPF ring buffer (default), with
//! batched wake-ups (a record wakes the reader when the last wake-up is older than an interval, so a lone
//! record is read at once and a stream wakes the reader about once per interval; without an interval, when
//! enough unread data has piled up; the reader's periodic drain is only the backstop), or the perf event
//! array.
//! A record that cannot be written is counted as lost, never silently dropped.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_CPU, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_perf_event_output},
    macros::map,
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use flowgate_common::{
    Counter, RecordHeader,
    counters::{Config, events_kind},
    record::version_of,
};

use crate::{
    maps::{self, FG_EVENTS, FG_EVENTS_PERF},
    plain::zero_in_place,
};

/// Bytes of the per-CPU record being built: the largest record fits.
const SCRATCH_WORDS: usize = 16;

/// Where records for the perf event array are built before they are written (the ring buffer's are built
/// in their reserved slot): the BPF stack (512 bytes for a whole call chain) has no room for 80-byte
/// records on top of the parsers' and the policy lookup's frames. One per CPU; a program runs to its end
/// on one CPU, and a record is written before the next one is built.
#[map]
static FG_SCRATCH: PerCpuArray<[u64; SCRATCH_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's record scratch space as a `T` (a record type, at most 128 bytes, 8-byte aligned), to fill
/// field by field and then write out. `None` only if the map lookup fails, which it cannot for index 0.
#[inline(always)]
fn scratch<T>() -> Option<&'static mut T> {
    const { assert!(size_of::<T>() <= SCRATCH_WORDS * 8 && align_of::<T>() <= 8) };
    let slot = FG_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: `slot` is this CPU's preallocated, 8-byte aligned array element of 128 bytes, valid for the
    // program's run; `T` is a plain-old-data record that fits in it (checked above), for which any bytes
    // are a valid value. Nothing else on this CPU uses the slot while the program runs (TC programs do not
    // nest on a CPU), and each use fills the fields it emits.
    Some(unsafe { &mut *slot.cast::<T>() })
}

/// Header for a record of `record_type` and `len` bytes, stamped `ktime_ns` (CLOCK_MONOTONIC).
#[inline(always)]
pub fn header_at(record_type: u8, len: u16, ktime_ns: u64) -> RecordHeader {
    RecordHeader {
        record_type,
        version: version_of(record_type),
        len,
        // SAFETY: a helper without arguments that touches no memory; the program cannot migrate to
        // another CPU while it runs, so the id is the CPU that writes the record.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ktime_ns,
    }
}

/// When a record last woke the reader (`bpf_ktime_get_ns`), for all CPUs together: the reader is one.
/// Written without a lock: two CPUs racing both wake the reader, which costs one spare wake-up.
#[map]
static FG_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Wake-up flag for a ring-buffer record stamped `ktime_ns`: wake the reader when the last wake-up is
/// `WakeupIntervalNs` old or older (a setting of 0 turns this off, and then once `WakeupBytes` are waiting),
/// or always when the agent left `WakeupBytes` at 0.
#[inline(always)]
fn wakeup_flag(ktime_ns: u64) -> u64 {
    let threshold = maps::config(Config::WakeupBytes);
    let interval = maps::config(Config::WakeupIntervalNs);
    let last = FG_WAKEUP.get_ptr_mut(0);
    // SAFETY: index 0 of a one-element array map: valid, aligned memory for the program's run. Another
    // CPU may write it at the same time; a torn read cannot happen for an aligned u64, and a stale one
    // only moves one wake-up.
    let due = interval != 0 && last.is_some_and(|last| ktime_ns.saturating_sub(unsafe { *last }) >= interval);
    // With an interval the reader is woken at least that often (250 µs by default), while filling even the
    // smallest ring's threshold takes milliseconds at the fastest the programs write: the unread bytes are
    // asked for (a helper call on every record) only without one.
    let piled_up = interval == 0 && FG_EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold;
    if due || threshold == 0 || piled_up {
        if let Some(last) = last {
            // SAFETY: as above.
            unsafe { *last = ktime_ns };
        }
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// `-ENOSPC`: the perf buffer was full. The kernel then also sends a lost-records notice that the
/// agent counts, so this case is counted apart to keep the total exact.
const ENOSPC: i64 = -28;

/// Writes one record (a `#[repr(C)]` record struct starting with a [`RecordHeader`], 8-byte aligned,
/// whole words), built by `fill` where it goes: with the ring buffer, in the reserved slot itself (no
/// copy); with the perf event array, in this CPU's scratch space, then copied out. `fill` gets a zeroed
/// record and sets its fields. The record stands for `events` events (see
/// `PolicyVerdictRecord::packet_event`): the counters of events written and lost count them all, so what
/// the kernel offered is what the agent delivers plus what it reports lost.
#[inline(always)]
pub fn emit_with<T: Copy + 'static>(ctx: &TcContext, events: u64, fill: impl FnOnce(&mut T)) {
    const { assert!(size_of::<T>() >= size_of::<RecordHeader>()) };
    let outcome = if maps::config(Config::EventsKind) == events_kind::PERF {
        let Some(record) = scratch::<T>() else { return };
        // SAFETY: this CPU's scratch slot holds a whole, aligned `T` (see `scratch`).
        unsafe { zero_in_place(core::ptr::from_mut(record)) };
        fill(record);
        perf_output(ctx, record)
    } else {
        match FG_EVENTS.reserve::<T>(0) {
            Some(mut slot) => {
                // SAFETY: the kernel reserved `size_of::<T>()` bytes, 8-byte aligned, for this program
                // alone until it submits; zeroed, they are a valid `T` (plain data).
                let record = unsafe {
                    zero_in_place(slot.as_mut_ptr());
                    slot.assume_init_mut()
                };
                fill(record);
                // SAFETY: every record starts with its header (`#[repr(C)]`, checked to be large enough above).
                let ktime_ns = unsafe { &*core::ptr::from_ref(record).cast::<RecordHeader>() }.ktime_ns;
                slot.submit(wakeup_flag(ktime_ns));
                Counter::RecordsWritten
            }
            None => Counter::RecordsLost,
        }
    };
    maps::count_by(outcome, events);
}

/// Writes `record` to the perf event array; what to count.
#[inline(always)]
fn perf_output<T>(ctx: &TcContext, record: &T) -> Counter {
    // Called directly: aya-ebpf's PerfEventArray::output discards the helper's return code,
    // and a failed write must be counted.
    // SAFETY: `ctx` is this program's own skb context; the map argument is the address of the perf
    // event array's definition, which the loader relocates to the map (as PerfEventArray::output
    // passes it); `record` is a live `&T` of exactly `size_of::<T>()` bytes that the helper only
    // reads (the `*mut` is the binding's signature, nothing writes through it). The verifier checks
    // the size against the pointed-to stack or map memory as well.
    let ret = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            core::ptr::from_ref(&FG_EVENTS_PERF).cast_mut().cast(),
            BPF_F_CURRENT_CPU,
            core::ptr::from_ref(record).cast_mut().cast(),
            size_of::<T>() as u64,
        )
    };
    match ret {
        0 => Counter::RecordsWritten,
        ENOSPC => Counter::PerfBufferFull,
        _ => Counter::RecordsLost,
    }
}
