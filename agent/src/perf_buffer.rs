//! The per-CPU buffers of the perf event array (`--events-buffer perf`), opened and read here rather than
//! by aya, so that the kernel wakes the reader once a buffer holds a page of records ([`wakeup_bytes`], a
//! watermark) instead of for every record. aya 0.14 opens its perf buffers with `wakeup_events = 1`: every
//! record the programs write then queues a wake-up, an inter-processor interrupt the CPU sends itself, in
//! the program's run on the pod's packet; on a KVM guest that is an exit to the hypervisor, and the events
//! benchmark spent 29% of all its CPU time there (docs/benchmarks.md, "Events end to end"). What the
//! watermark holds back, the reader's periodic drain (`--drain-interval-ms`, 5 ms by default) picks up, so
//! a record waits at most about that long.
//!
//! A buffer is a perf event of the `BPF_OUTPUT` software kind on one CPU, its pages mapped into the agent,
//! and its descriptor put into the perf event array at that CPU's index, where `bpf_perf_event_output`
//! finds it. The kernel writes records after `data_head`; the reader takes them up to it and gives the
//! space back by moving `data_tail` (`include/uapi/linux/perf_event.h`, `perf_event_mmap_page`).
//!
//! The kernel drops a perf array's entries when the map descriptor they were added through is closed,
//! so every buffer keeps that descriptor (the shared [`MapData`]) open for as long as it is read.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{Ordering, fence},
    },
};

use aya::maps::MapData;

/// Pages of each per-CPU perf buffer (a power of two): 1 MiB with 4 KiB pages.
pub const PERF_PAGES: usize = 256;

/// The watermark of a buffer of `size` bytes with `page_size` pages: a page (about 40 records), at most
/// half the buffer. A stream then wakes the reader about once per 40 records on a CPU instead of for each
/// one (at 1.2M records/s offered, 1.13M/s delivered instead of 134k/s; at 100k/s, p99 0.65-1.9 ms from the
/// kernel to the client instead of 4.6-30), while a slow trickle waits for the periodic drain (p50 2.5 ms at
/// 10k/s, where a wake-up per record gave 0.03-1 ms): docs/benchmarks.md, "Events end to end".
pub fn wakeup_bytes(page_size: usize, size: usize) -> u32 {
    u32::try_from(page_size.min(size / 2)).unwrap_or(u32::MAX).max(1)
}

/// `perf_event_attr` up to its first published size (`PERF_ATTR_SIZE_VER0`, 64 bytes), all this needs.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The attribute bits (`disabled`, `inherit`, ..., `watermark` at bit 14).
    flags: u64,
    /// `wakeup_watermark` when the `watermark` bit is set (`wakeup_events` otherwise).
    wakeup_watermark: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_BPF_OUTPUT: u64 = 10;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
const PERF_ATTR_FLAG_WATERMARK: u64 = 1 << 14;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
/// Where `data_head` and `data_tail` sit in the first (metadata) page: after its 1 KiB header.
const DATA_HEAD_OFFSET: usize = 1024;
const DATA_TAIL_OFFSET: usize = 1032;
/// `struct perf_event_header`: type (u32), misc (u16), size (u16).
const HEADER_BYTES: usize = 8;

/// One record of a perf buffer, as [`PerfBuffer::drain`] hands it over.
#[derive(Debug, PartialEq, Eq)]
pub enum PerfRecord<'a> {
    /// A record the programs wrote: `head`, then `tail` when it wrapped around the buffer's end.
    Sample { head: &'a [u8], tail: &'a [u8] },
    /// The kernel could not write `count` records: the buffer was full.
    Lost { count: u64 },
}

/// One CPU's perf buffer (see the module docs).
pub struct PerfBuffer {
    cpu: u32,
    event: OwnedFd,
    /// The mapping: one metadata page, then `size` bytes of data.
    base: NonNull<u8>,
    page_size: usize,
    size: usize,
    /// Keeps the array's entry for this CPU (see the module docs); `None` only for the tests' buffers over
    /// plain memory.
    _map: Option<Arc<MapData>>,
}

// SAFETY: the mapping belongs to this value alone (nothing else reads or moves its tail), and the kernel's
// side of it is safe to use from any thread.
unsafe impl Send for PerfBuffer {}

impl PerfBuffer {
    /// Opens `cpu`'s buffer of `pages` pages (a power of two), waking its reader at [`wakeup_bytes`], and
    /// puts it into the perf event array `map`.
    pub fn open(map: &Arc<MapData>, cpu: u32, pages: usize) -> io::Result<Self> {
        let context =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("perf buffer of CPU {cpu}: {what}: {e}"));
        if !pages.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("perf buffer of CPU {cpu}: {pages} pages is not a power of two"),
            ));
        }
        // SAFETY: sysconf has no memory effects.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let size = page_size * pages;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            size: size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_BPF_OUTPUT,
            sample_period: 1,
            sample_type: PERF_SAMPLE_RAW,
            flags: PERF_ATTR_FLAG_WATERMARK,
            wakeup_watermark: wakeup_bytes(page_size, size),
            ..Default::default()
        };
        // SAFETY: perf_event_open reads `attr` (valid for its declared size) and returns a new descriptor.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &raw const attr,
                -1 as libc::pid_t,
                cpu as libc::c_int,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(context("perf_event_open", io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        // SAFETY: maps the event's buffer (metadata page + data) shared, as perf_event_open(2) describes; the
        // mapping is unmapped in Drop, and nothing else refers to it.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size + size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                event.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(context("mapping its pages", io::Error::last_os_error()));
        }
        let base = NonNull::new(mapped.cast::<u8>()).expect("mmap succeeded");
        let buffer = Self { cpu, event, base, page_size, size, _map: Some(Arc::clone(map)) };
        // SAFETY: an ioctl without an argument on our own perf event.
        if unsafe { libc::ioctl(buffer.event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } < 0 {
            return Err(context("enabling it", io::Error::last_os_error()));
        }
        buffer.insert_into(map)?;
        Ok(buffer)
    }

    /// Puts this buffer's descriptor into the perf event array at its CPU's index.
    fn insert_into(&self, map: &MapData) -> io::Result<()> {
        crate::map_batch::set(map, &self.cpu, &(self.event.as_raw_fd() as u32)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("perf buffer of CPU {}: putting it into the perf event array: {e}", self.cpu),
            )
        })
    }

    fn data_head(&self) -> u64 {
        // SAFETY: `data_head` is an aligned u64 of the mapped metadata page; the kernel writes it
        // concurrently, hence the volatile read, and the acquire fence orders the data reads after it
        // (pairs with the kernel's write barrier before it publishes a new head).
        let head = unsafe { self.base.add(DATA_HEAD_OFFSET).cast::<u64>().read_volatile() };
        fence(Ordering::Acquire);
        head
    }

    fn data_tail(&self) -> u64 {
        // SAFETY: as `data_head`; only this reader writes the tail.
        unsafe { self.base.add(DATA_TAIL_OFFSET).cast::<u64>().read_volatile() }
    }

    fn set_data_tail(&mut self, tail: u64) {
        // The records read must be done with before the kernel may write over them.
        fence(Ordering::SeqCst);
        // SAFETY: as `data_tail`.
        unsafe { self.base.add(DATA_TAIL_OFFSET).cast::<u64>().write_volatile(tail) };
    }

    /// Reads an aligned `T` at `offset` of the data area (which the kernel keeps 8-byte aligned records
    /// in, so a field of up to 8 bytes at an 8-aligned place never wraps).
    fn read_at<T: Copy>(&self, offset: usize) -> T {
        debug_assert!(offset + size_of::<T>() <= self.size);
        // SAFETY: within the data area (above), aligned (records and their fixed fields are).
        unsafe { self.base.add(self.page_size + offset).cast::<T>().read() }
    }

    /// `len` bytes of the data area from `offset`, in one or two pieces (the second when they wrap).
    fn bytes(&self, offset: usize, len: usize) -> (&[u8], &[u8]) {
        let data = self.base.as_ptr().wrapping_add(self.page_size);
        let first = len.min(self.size - offset);
        // SAFETY: both ranges lie in the data area; the kernel does not write them until the tail moves
        // past them, which `drain` does only after its callback is done with them.
        unsafe { (std::slice::from_raw_parts(data.add(offset), first), std::slice::from_raw_parts(data, len - first)) }
    }

    /// Hands every record written since the last drain to `each`, then gives their space back; returns
    /// how many samples there were.
    pub fn drain(&mut self, mut each: impl FnMut(PerfRecord<'_>)) -> usize {
        let head = self.data_head();
        let mut tail = self.data_tail();
        let mut samples = 0;
        while tail < head {
            let start = (tail % self.size as u64) as usize;
            let kind: u32 = self.read_at(start);
            let len = usize::from(self.read_at::<u16>(start + 6));
            if len < HEADER_BYTES {
                // Never written by the kernel; stop rather than loop (the rest is given back).
                tail = head;
                break;
            }
            let body = (start + HEADER_BYTES) % self.size;
            match kind {
                PERF_RECORD_SAMPLE => {
                    let raw_len = self.read_at::<u32>(body) as usize;
                    let (head_part, tail_part) =
                        self.bytes((body + 4) % self.size, raw_len.min(len - HEADER_BYTES - 4));
                    each(PerfRecord::Sample { head: head_part, tail: tail_part });
                    samples += 1;
                }
                PERF_RECORD_LOST => {
                    // `{ header, u64 id, u64 lost }`.
                    let count: u64 = self.read_at((body + 8) % self.size);
                    each(PerfRecord::Lost { count });
                }
                _ => {}
            }
            tail += len as u64;
        }
        self.set_data_tail(tail);
        samples
    }
}

impl AsRawFd for PerfBuffer {
    /// The perf event's descriptor: readable when the watermark was crossed.
    fn as_raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

impl Drop for PerfBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, of this length, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.page_size + self.size) };
    }
}

/// Opens the perf buffer of every online CPU into the perf event array `map`.
pub fn open_all(map: MapData, pages: usize) -> io::Result<Vec<PerfBuffer>> {
    let cpus = aya::util::online_cpus().map_err(|(what, e)| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    let map = Arc::new(map);
    cpus.into_iter().map(|cpu| PerfBuffer::open(&map, cpu, pages)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// A buffer of one data page over anonymous memory, which the test writes as the kernel would.
    fn plain_buffer() -> PerfBuffer {
        // SAFETY: a private anonymous mapping of two pages, unmapped by the buffer's Drop.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mapped, libc::MAP_FAILED);
        // SAFETY: eventfd takes no pointers; the descriptor is new and ours.
        let event = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
        PerfBuffer {
            cpu: 0,
            event,
            base: NonNull::new(mapped.cast()).expect("mapped"),
            page_size: PAGE,
            size: PAGE,
            _map: None,
        }
    }

    /// Writes a record of `kind` with `body` at the kernel's head, wrapping as it does, and publishes it.
    fn write(buffer: &PerfBuffer, kind: u32, body: &[u8]) {
        let head = buffer.data_head();
        let len = HEADER_BYTES + body.len().next_multiple_of(8);
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&0u16.to_ne_bytes());
        bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        bytes.extend_from_slice(body);
        bytes.resize(len, 0);
        for (i, byte) in bytes.iter().enumerate() {
            let at = (head as usize + i) % buffer.size;
            // SAFETY: within the data area of the test's mapping.
            unsafe { buffer.base.add(buffer.page_size + at).write(*byte) };
        }
        // SAFETY: the metadata page's data_head, in the test's mapping.
        unsafe { buffer.base.add(DATA_HEAD_OFFSET).cast::<u64>().write_volatile(head + len as u64) };
    }

    fn sample(data: &[u8]) -> Vec<u8> {
        let mut body = (data.len() as u32).to_ne_bytes().to_vec();
        body.extend_from_slice(data);
        body
    }

    fn drained(buffer: &mut PerfBuffer) -> (usize, Vec<Result<Vec<u8>, u64>>) {
        let mut seen = Vec::new();
        let samples = buffer.drain(|record| match record {
            PerfRecord::Sample { head, tail } => seen.push(Ok([head, tail].concat())),
            PerfRecord::Lost { count } => seen.push(Err(count)),
        });
        (samples, seen)
    }

    #[test]
    fn samples_split_at_the_end_are_joined_and_losses_counted_and_the_space_given_back() {
        let mut buffer = plain_buffer();
        // Fill to 40 bytes short of the end, so the next sample's data wraps.
        let filler = vec![7u8; PAGE - 40 - HEADER_BYTES - 4];
        write(&buffer, PERF_RECORD_SAMPLE, &sample(&filler));
        assert_eq!(drained(&mut buffer), (1, vec![Ok(filler)]));
        assert_eq!(buffer.data_tail(), (PAGE - 40) as u64, "the space is given back");

        let wrapping: Vec<u8> = (0..100).collect();
        write(&buffer, PERF_RECORD_SAMPLE, &sample(&wrapping));
        let mut lost = 0u64.to_ne_bytes().to_vec();
        lost.extend_from_slice(&17u64.to_ne_bytes());
        write(&buffer, PERF_RECORD_LOST, &lost);
        let (samples, seen) = drained(&mut buffer);
        assert_eq!(samples, 1);
        assert_eq!(seen, vec![Ok(wrapping), Err(17)]);
        assert_eq!(buffer.data_tail(), buffer.data_head());
        assert_eq!(drained(&mut buffer), (0, vec![]), "nothing twice");
    }

    #[test]
    fn the_watermark_is_a_page_and_at_most_half_the_buffer() {
        assert_eq!(wakeup_bytes(PAGE, PERF_PAGES * PAGE), 4096);
        assert_eq!(wakeup_bytes(PAGE, PAGE), 2048);
        assert_eq!(wakeup_bytes(PAGE, 0), 1);
    }
}
