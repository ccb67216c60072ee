//! Decoding of raw event records from the events buffer into typed records. Pure: no IO. A record with
//! an unknown type or version, or shorter than its type requires, is rejected with a typed error; the
//! decoder never continues with a zeroed or partial struct.

use flowgate_common::{
    DropRecord, PolicyVerdictRecord, RecordHeader, TraceRecord,
    record::{PacketEvent, record_type, version_of},
};

/// A record decoded from the events buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Trace(TraceRecord),
    PolicyVerdict(PolicyVerdictRecord),
    Drop(DropRecord),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte {what}")]
    Truncated { what: &'static str, len: usize, need: usize },
    #[error("record type {record_type} has version {version}; this agent reads version {supported}")]
    UnknownVersion { record_type: u8, version: u8, supported: u8 },
    #[error("unknown record type {record_type}")]
    UnknownType { record_type: u8 },
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Truncated { what, len: bytes.len(), need });
    }
    // SAFETY: length checked above; T is a plain-old-data record type (repr(C), no invalid bit
    // patterns), read unaligned because the buffer gives no alignment guarantee.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: RecordHeader = read(bytes, "record header")?;
    let known = matches!(header.record_type, record_type::TRACE | record_type::POLICY_VERDICT | record_type::DROP);
    if !known {
        return Err(DecodeError::UnknownType { record_type: header.record_type });
    }
    let supported = version_of(header.record_type);
    if header.version != supported {
        return Err(DecodeError::UnknownVersion {
            record_type: header.record_type,
            version: header.version,
            supported,
        });
    }
    Ok(match header.record_type {
        record_type::TRACE => Record::Trace(read(bytes, "trace record")?),
        record_type::POLICY_VERDICT => Record::PolicyVerdict(read(bytes, "policy-verdict record")?),
        _ => Record::Drop(read(bytes, "drop record")?),
    })
}

/// The records a kernel record stands for, in order: itself, and after a policy-verdict record what
/// became of its packet (its trace or its drop, see `PolicyVerdictRecord::packet_event`).
pub fn expand(record: Record) -> impl Iterator<Item = Record> {
    let packet = match &record {
        Record::PolicyVerdict(verdict) => Some(match verdict.packet_event() {
            PacketEvent::Trace(trace) => Record::Trace(trace),
            PacketEvent::Drop(drop) => Record::Drop(drop),
        }),
        _ => None,
    };
    std::iter::once(record).chain(packet)
}

#[cfg(test)]
mod tests {
    use flowgate_common::{
        FlowTuple, ip,
        record::{DROP_RECORD_VERSION, POLICY_VERDICT_RECORD_VERSION, RECORD_VERSION, observation_point},
    };

    use super::*;

    fn trace_bytes(version: u8) -> Vec<u8> {
        let record = TraceRecord {
            header: RecordHeader {
                record_type: record_type::TRACE,
                version,
                len: TraceRecord::LEN,
                cpu: 1,
                ktime_ns: 42,
            },
            flow: FlowTuple {
                saddr: ip::v4_mapped([10, 0, 0, 1]),
                daddr: ip::v4_mapped([10, 0, 0, 2]),
                sport: 40000,
                dport: 80,
                protocol: 6,
                tcp_flags: 0x02,
                icmp_type: 0,
                icmp_code: 0,
            },
            endpoint_id: 3,
            observation_point: observation_point::FROM_ENDPOINT,
            ifindex: 7,
            pkt_len: 74,
            ..TraceRecord::default()
        };
        // SAFETY: TraceRecord is repr(C) plain data.
        unsafe { std::slice::from_raw_parts((&raw const record).cast::<u8>(), size_of::<TraceRecord>()) }.to_vec()
    }

    #[test]
    fn decodes_a_trace_record() {
        let Ok(Record::Trace(t)) = decode(&trace_bytes(RECORD_VERSION)) else { panic!("not a trace") };
        assert_eq!(t.endpoint_id, 3);
        assert_eq!(t.flow.dport, 80);
        assert_eq!(t.header.ktime_ns, 42);
    }

    #[test]
    fn rejects_unknown_version() {
        assert_eq!(
            decode(&trace_bytes(RECORD_VERSION + 1)),
            Err(DecodeError::UnknownVersion {
                record_type: record_type::TRACE,
                version: RECORD_VERSION + 1,
                supported: RECORD_VERSION
            })
        );
    }

    #[test]
    fn rejects_truncated_record() {
        let bytes = trace_bytes(RECORD_VERSION);
        assert!(matches!(
            decode(&bytes[..20]),
            Err(DecodeError::Truncated { what: "trace record", len: 20, need: 72 })
        ));
        assert!(matches!(decode(&bytes[..3]), Err(DecodeError::Truncated { what: "record header", .. })));
    }

    #[test]
    fn decodes_policy_verdict_and_drop_records() {
        let mut bytes = trace_bytes(RECORD_VERSION);
        bytes[0] = record_type::POLICY_VERDICT;
        bytes[1] = POLICY_VERDICT_RECORD_VERSION;
        assert!(matches!(decode(&bytes), Err(DecodeError::Truncated { what: "policy-verdict record", .. })));
        bytes.resize(size_of::<PolicyVerdictRecord>(), 0);
        assert!(matches!(decode(&bytes), Ok(Record::PolicyVerdict(v)) if v.endpoint_id == 3));
        // Version 3 stood for the decision alone, and the programs wrote the packet's trace or drop apart.
        bytes[1] = 3;
        assert!(matches!(decode(&bytes), Err(DecodeError::UnknownVersion { version: 3, supported: 4, .. })));
        bytes[0] = record_type::DROP;
        bytes[1] = DROP_RECORD_VERSION;
        assert!(matches!(decode(&bytes[..75]), Err(DecodeError::Truncated { what: "drop record", .. })));
        bytes.resize(size_of::<DropRecord>(), 0);
        bytes[std::mem::offset_of!(DropRecord, revision)] = 7;
        assert!(matches!(decode(&bytes), Ok(Record::Drop(d)) if d.endpoint_id == 3 && d.revision == 7));
    }

    #[test]
    fn refuses_records_of_the_32_bit_address_layouts() {
        // Version 2 (trace, verdict) and 3 (drop) carried 32-bit addresses: read as today's layout they
        // would put ports into addresses.
        assert!(matches!(decode(&trace_bytes(2)), Err(DecodeError::UnknownVersion { version: 2, supported: 3, .. })));
        let mut bytes = trace_bytes(3);
        bytes[0] = record_type::DROP;
        bytes.resize(size_of::<DropRecord>(), 0);
        assert!(matches!(decode(&bytes), Err(DecodeError::UnknownVersion { version: 3, supported: 4, .. })));
    }

    #[test]
    fn rejects_unknown_drop_version() {
        let mut bytes = trace_bytes(DROP_RECORD_VERSION + 1);
        bytes[0] = record_type::DROP;
        assert!(matches!(decode(&bytes), Err(DecodeError::UnknownVersion { supported: DROP_RECORD_VERSION, .. })));
    }

    fn verdict(verdict: u8, direction: u8) -> PolicyVerdictRecord {
        let Ok(Record::Trace(t)) = decode(&trace_bytes(RECORD_VERSION)) else { panic!("not a trace") };
        PolicyVerdictRecord {
            header: RecordHeader {
                record_type: record_type::POLICY_VERDICT,
                version: POLICY_VERDICT_RECORD_VERSION,
                len: PolicyVerdictRecord::LEN,
                ..t.header
            },
            flow: t.flow,
            endpoint_id: 3,
            direction,
            verdict,
            remote_identity: 1234,
            rule_id: 9,
            ifindex: 5,
            pkt_len: 60,
            revision: 17,
            ..PolicyVerdictRecord::default()
        }
    }

    #[test]
    fn a_verdict_stands_for_its_packets_trace_or_drop_as_well() {
        use flowgate_common::{
            drop_reason,
            policy::{direction, verdict::*},
            record::ct_state,
        };
        for (decided, dir, point) in [
            (ALLOWED, direction::INGRESS, observation_point::TO_ENDPOINT),
            (AUDIT, direction::EGRESS, observation_point::FROM_ENDPOINT),
        ] {
            let v = verdict(decided, dir);
            let records: Vec<Record> = expand(Record::PolicyVerdict(v)).collect();
            let [Record::PolicyVerdict(first), Record::Trace(t)] = records.as_slice() else { panic!("{records:?}") };
            assert_eq!(*first, v);
            assert_eq!(
                (t.header.record_type, t.header.version, t.header.len),
                (record_type::TRACE, RECORD_VERSION, 72)
            );
            assert_eq!((t.header.ktime_ns, t.header.cpu, t.flow), (v.header.ktime_ns, v.header.cpu, v.flow));
            assert_eq!((t.endpoint_id, t.observation_point, t.ct_state), (3, point, ct_state::NEW));
            assert_eq!((t.ifindex, t.pkt_len, t.remote_identity), (5, 60, 1234));
        }
        let v = verdict(DENIED, direction::INGRESS);
        let records: Vec<Record> = expand(Record::PolicyVerdict(v)).collect();
        let [Record::PolicyVerdict(_), Record::Drop(d)] = records.as_slice() else { panic!("{records:?}") };
        assert_eq!(
            (d.header.record_type, d.header.version, d.header.len),
            (record_type::DROP, DROP_RECORD_VERSION, 80)
        );
        assert_eq!(
            (d.header.ktime_ns, d.flow, d.endpoint_id, d.direction),
            (v.header.ktime_ns, v.flow, 3, direction::INGRESS)
        );
        assert_eq!((d.reason, d.remote_identity, d.revision), (drop_reason::POLICY_DENIED, 1234, 17));
        assert_eq!((d.ifindex, d.pkt_len), (5, 60));
        // Every other record stands for itself.
        let trace = decode(&trace_bytes(RECORD_VERSION)).unwrap();
        assert_eq!(expand(trace).collect::<Vec<_>>(), vec![trace]);
    }

    #[test]
    fn rejects_unknown_type() {
        let mut bytes = trace_bytes(RECORD_VERSION);
        bytes[0] = 200;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownType { record_type: 200 }));
    }
}
