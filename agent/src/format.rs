//! Text rendering of flows, one line per event, in the style of Cilium's monitor.

use flowgate_proto::flow::{Flow, Peer, Protocol, TrafficDirection};

/// `10.0.0.1:40000 -> 10.0.0.2:80 tcp SYN`.
pub fn flow_text(flow: &Flow) -> String {
    let (src, dst) = (flow.source_ip, flow.destination_ip);
    let proto = flow.protocol.name();
    match flow.protocol {
        Protocol::Tcp => format!(
            "{src}:{} -> {dst}:{} {proto} {}",
            flow.source_port,
            flow.destination_port,
            flow.tcp_flags.names().join(", ")
        ),
        Protocol::Udp | Protocol::Sctp => {
            format!("{src}:{} -> {dst}:{} {proto}", flow.source_port, flow.destination_port)
        }
        Protocol::Icmp => format!("{src} -> {dst} {proto} type {} code {}", flow.icmp_type, flow.icmp_code),
        Protocol::Other(_) => format!("{src} -> {dst} {proto}"),
    }
}

fn peer_text(peer: &Peer) -> String {
    if peer.endpoint_id != 0 {
        format!("{} ({}/{})", peer.endpoint_id, peer.namespace, peer.pod_name)
    } else {
        format!("identity {}", peer.identity)
    }
}

/// One line for a trace: `-> endpoint 12 (default/web) ...` when entering the endpoint, `<- endpoint`
/// when leaving it, as Cilium's monitor prints.
pub fn trace_line(flow: &Flow) -> String {
    let (arrow, local) = match flow.traffic_direction {
        TrafficDirection::Ingress => ("-> endpoint", &flow.destination),
        TrafficDirection::Egress => ("<- endpoint", &flow.source),
        TrafficDirection::Unknown => ("-- endpoint", &flow.source),
    };
    let remote = match flow.traffic_direction {
        TrafficDirection::Ingress => &flow.source,
        _ => &flow.destination,
    };
    format!(
        "{arrow} {}, remote {}, identity {}->{} ifindex {} len {}: {}",
        peer_text(local),
        peer_text(remote),
        flow.source.identity,
        flow.destination.identity,
        flow.ifindex,
        flow.packet_len,
        flow_text(flow)
    )
}

#[cfg(test)]
mod tests {
    use flowgate_proto::flow::{TcpFlags, fixtures::flow_between};

    use super::*;

    #[test]
    fn trace_line_reads_like_cilium() {
        let mut flow = flow_between(12, 7, 43210);
        flow.tcp_flags = TcpFlags(TcpFlags::SYN | TcpFlags::ACK);
        assert_eq!(
            trace_line(&flow),
            "<- endpoint 12 (default/pod-12), remote 7 (default/pod-7), identity 1012->1007 ifindex 2 len 74: \
             10.0.0.12:43210 -> 10.0.0.7:80 tcp SYN, ACK"
        );
    }
}
