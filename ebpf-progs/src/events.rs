//! Writing records into the events buffer, with batched wake-ups: a record wakes the reader only when
//! enough unread data has piled up; otherwise the reader's periodic drain collects it. A record that
//! cannot be written is counted as lost, never silently dropped.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
};
use flowgate_common::{
    Counter, FlowTuple, RecordHeader, TraceRecord, counters::Config,
    record::{RECORD_VERSION, record_type},
};

use crate::maps::{self, FG_EVENTS};

/// Header for a record of `record_type` and `len` bytes, stamped now.
#[inline(always)]
fn header(record_type: u8, len: u16) -> RecordHeader {
    RecordHeader {
        record_type,
        version: RECORD_VERSION,
        len,
        cpu: unsafe { bpf_get_smp_processor_id() },
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Wake-up flag for the next record: wake the reader once `WakeupBytes` are waiting (or always, when
/// the agent left the setting at 0).
#[inline(always)]
fn wakeup_flag() -> u64 {
    let threshold = maps::config(Config::WakeupBytes);
    if threshold == 0 || FG_EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// Emits a trace record for a forwarded packet.
#[inline(always)]
pub fn trace(flow: &FlowTuple, endpoint_id: u16, observation_point: u8, ifindex: u32, pkt_len: u32) {
    let flags = wakeup_flag();
    match FG_EVENTS.reserve::<TraceRecord>(0) {
        Some(mut entry) => {
            entry.write(TraceRecord {
                header: header(record_type::TRACE, TraceRecord::LEN),
                flow: *flow,
                endpoint_id,
                observation_point,
                _pad0: 0,
                ifindex,
                pkt_len,
                _pad1: 0,
            });
            entry.submit(flags);
            maps::count(Counter::RecordsWritten);
        }
        None => maps::count(Counter::RecordsLost),
    }
}
