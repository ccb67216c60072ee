//! Text rendering of decoded records, one line per event.

use std::net::Ipv4Addr;

use flowgate_common::{
    FlowTuple, TraceRecord,
    record::{observation_point, tcp_flags},
};

/// Protocol name as Cilium prints it.
pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "ip",
    }
}

/// TCP flags in Cilium's order, e.g. `SYN, ACK`.
pub fn tcp_flags_text(flags: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (tcp_flags::SYN, "SYN"),
        (tcp_flags::FIN, "FIN"),
        (tcp_flags::RST, "RST"),
        (tcp_flags::PSH, "PSH"),
        (tcp_flags::ACK, "ACK"),
        (tcp_flags::URG, "URG"),
        (tcp_flags::ECE, "ECE"),
        (tcp_flags::CWR, "CWR"),
    ];
    NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// `10.0.0.1:40000 -> 10.0.0.2:80 tcp SYN`.
pub fn flow_text(flow: &FlowTuple) -> String {
    let src = Ipv4Addr::from(flow.saddr.to_ne_bytes());
    let dst = Ipv4Addr::from(flow.daddr.to_ne_bytes());
    let proto = protocol_name(flow.protocol);
    match flow.protocol {
        6 => format!("{src}:{} -> {dst}:{} {proto} {}", flow.sport, flow.dport, tcp_flags_text(flow.tcp_flags)),
        17 | 132 => format!("{src}:{} -> {dst}:{} {proto}", flow.sport, flow.dport),
        1 => format!("{src} -> {dst} {proto} type {} code {}", flow.sport, flow.dport),
        _ => format!("{src} -> {dst} {proto} {}", flow.protocol),
    }
}

/// One line for a trace record; `endpoint` is `namespace/pod` when known.
pub fn trace_line(record: &TraceRecord, endpoint: Option<&str>) -> String {
    let arrow = match record.observation_point {
        observation_point::FROM_ENDPOINT => "<- endpoint",
        observation_point::TO_ENDPOINT => "-> endpoint",
        _ => "-- endpoint",
    };
    let who = endpoint.map(|e| format!(" ({e})")).unwrap_or_default();
    format!(
        "{arrow} {}{who} ifindex {} len {}: {}",
        record.endpoint_id,
        record.ifindex,
        record.pkt_len,
        flow_text(&record.flow)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_line_reads_like_cilium() {
        let record = TraceRecord {
            flow: FlowTuple {
                saddr: u32::from_ne_bytes([10, 0, 0, 5]),
                daddr: u32::from_ne_bytes([10, 0, 0, 7]),
                sport: 43210,
                dport: 5432,
                protocol: 6,
                tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
                _pad: [0; 2],
            },
            endpoint_id: 12,
            observation_point: observation_point::FROM_ENDPOINT,
            ifindex: 4,
            pkt_len: 74,
            ..TraceRecord::default()
        };
        assert_eq!(
            trace_line(&record, Some("default/backend")),
            "<- endpoint 12 (default/backend) ifindex 4 len 74: 10.0.0.5:43210 -> 10.0.0.7:5432 tcp SYN, ACK"
        );
    }
}
