//! Text rendering of events, one line each, in the style of Cilium's monitor, with what Cilium's lines
//! lack (pod names, the policy that decided). Pure; used by `flowgate monitor -o text`, the agent's
//! `--print-events` and `flowgate verdicts export -o text`.

use flowgate_common::drop_reason;

use crate::{
    flow::{EventType, Flow, MatchType, Peer, PolicyAttribution, Protocol, TrafficDirection, Verdict},
    message::LostEvents,
};

/// A stable id of the flow's 5-tuple (both directions give different ids, as in Cilium).
pub fn flow_id(flow: &Flow) -> u32 {
    // FNV-1a over the tuple.
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    // Each address in its own family's bytes, so an IPv4 flow keeps the id it always had.
    for ip in [flow.source_ip, flow.destination_ip] {
        match ip {
            std::net::IpAddr::V4(v4) => eat(&v4.octets()),
            std::net::IpAddr::V6(v6) => eat(&v6.octets()),
        }
    }
    eat(&flow.source_port.to_be_bytes());
    eat(&flow.destination_port.to_be_bytes());
    eat(&[flow.protocol.number()]);
    h
}

/// `10.0.0.1:40000 -> 10.0.0.2:80 tcp SYN`, `[fd00::a]:40000 -> [fd00::b]:80 tcp SYN`.
pub fn tuple_text(flow: &Flow) -> String {
    let (src, dst) = (host(flow.source_ip), host(flow.destination_ip));
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
        Protocol::Icmp | Protocol::Icmpv6 => format!(
            "{} -> {} {proto} type {} code {}",
            flow.source_ip, flow.destination_ip, flow.icmp_type, flow.icmp_code
        ),
        Protocol::Other(_) => format!("{} -> {} {proto}", flow.source_ip, flow.destination_ip),
    }
}

/// An address as it goes before `:port`: IPv6 in brackets (RFC 3986), as Hubble and Cilium print it.
pub fn host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `12 (default/backend)` for an endpoint, else nothing useful.
fn endpoint_text(peer: &Peer) -> String {
    if peer.pod_name.is_empty() {
        peer.endpoint_id.to_string()
    } else {
        format!("{} ({}/{})", peer.endpoint_id, peer.namespace, peer.pod_name)
    }
}

/// `identity 5123 component=database`: the identity and its most telling labels.
fn identity_text(peer: &Peer) -> String {
    let labels: Vec<&str> = peer
        .labels
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("io.kubernetes") && !l.starts_with("kubernetes.io/"))
        .collect();
    if labels.is_empty() {
        format!("identity {}", peer.identity)
    } else {
        format!("identity {} {}", peer.identity, labels.join(","))
    }
}

fn local_remote(flow: &Flow) -> (&Peer, &Peer) {
    match flow.traffic_direction {
        TrafficDirection::Ingress => (&flow.destination, &flow.source),
        _ => (&flow.source, &flow.destination),
    }
}

fn direction_text(flow: &Flow) -> &'static str {
    match flow.traffic_direction {
        TrafficDirection::Ingress => "ingress",
        TrafficDirection::Egress => "egress",
        TrafficDirection::Unknown => "unknown",
    }
}

/// `L3-L4`, `L3-Only`, `L4-Only`, `all`, `none`, as Cilium prints match types ([`MatchType::text`]).
pub fn match_text(m: Option<MatchType>) -> &'static str {
    m.unwrap_or(MatchType::None).text()
}

/// The policy that decided, e.g. `default/allow-db` or `default deny (isolated by default/deny-all)`.
pub fn policy_text(p: Option<&PolicyAttribution>) -> String {
    match p {
        Some(PolicyAttribution::AllowedBy(names)) if !names.is_empty() => {
            names.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        }
        Some(PolicyAttribution::AllowedBy(_)) => "unknown".into(),
        Some(PolicyAttribution::DefaultDeny { isolated_by }) if !isolated_by.is_empty() => format!(
            "default deny (isolated by {})",
            isolated_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        ),
        Some(PolicyAttribution::DefaultDeny { .. }) => "default deny".into(),
        None => "-".into(),
    }
}

/// The drop reason's text; a revoked connection also names the revision that revoked it.
fn drop_text(flow: &Flow) -> String {
    let text = drop_reason_text(flow.drop_reason);
    match flow.policy_revision {
        Some(revision) if flow.drop_reason == drop_reason::CONNECTION_REVOKED => format!("{text}, revision {revision}"),
        _ => text,
    }
}

/// Drop reason text as Cilium names it (`flowgate_common::drop_reason`'s table), `reason N` for a code
/// without a name.
pub fn drop_reason_text(code: u8) -> String {
    match drop_reason::lookup(code) {
        Some(reason) => reason.text.into(),
        None if code == 0 => "none".into(),
        None => format!("reason {code}"),
    }
}

/// One line for a flow.
pub fn flow_line(flow: &Flow) -> String {
    let (local, remote) = local_remote(flow);
    let id = flow_id(flow);
    match flow.event_type {
        EventType::PolicyVerdict => {
            let action = match flow.verdict {
                Verdict::Forwarded => "allow",
                Verdict::Dropped => "deny",
                Verdict::Audit => "audit",
            };
            format!(
                "Policy verdict: flow {id:#010x} local EP ID {}, remote ID {} ({}), {}, action {action}, match {}, policy {}, {}",
                endpoint_text(local),
                if remote.endpoint_id != 0 { remote.endpoint_id.to_string() } else { "-".into() },
                identity_text(remote),
                direction_text(flow),
                match_text(flow.match_type),
                policy_text(flow.policy.as_ref()),
                tuple_text(flow)
            )
        }
        EventType::Drop => format!(
            "xx drop ({}) flow {id:#010x} {} endpoint {}, ifindex {}, identity {}->{}, policy {}: {}",
            drop_text(flow),
            if flow.traffic_direction == TrafficDirection::Ingress { "to" } else { "from" },
            endpoint_text(local),
            flow.ifindex,
            flow.source.identity,
            flow.destination.identity,
            policy_text(flow.policy.as_ref()),
            tuple_text(flow)
        ),
        _ => {
            let arrow = match flow.traffic_direction {
                TrafficDirection::Ingress => "-> endpoint",
                TrafficDirection::Egress => "<- endpoint",
                TrafficDirection::Unknown => "-- endpoint",
            };
            let state = match flow.ct_state {
                Some(crate::flow::CtState::New) => "new",
                Some(crate::flow::CtState::Established) => "established",
                Some(crate::flow::CtState::Reply) => "reply",
                Some(crate::flow::CtState::Related) => "related",
                None => "unknown",
            };
            format!(
                "{arrow} {} flow {id:#010x}, remote {}, identity {}->{} state {state} ifindex {} len {}: {}",
                endpoint_text(local),
                if remote.endpoint_id != 0 { endpoint_text(remote) } else { identity_text(remote) },
                flow.source.identity,
                flow.destination.identity,
                flow.ifindex,
                flow.packet_len,
                tuple_text(flow)
            )
        }
    }
}

/// `Lost 312 events (kernel buffer)`.
pub fn lost_line(lost: &LostEvents) -> String {
    format!("Lost {} events ({})", lost.count, lost.source.describe())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        flow::{PolicyName, TcpFlags, fixtures::flow_between},
        message::LossSource,
    };

    fn verdict_flow() -> Flow {
        let mut f = flow_between(12, 7, 43210);
        f.event_type = EventType::PolicyVerdict;
        f.verdict = Verdict::Dropped;
        f.destination_port = 5432;
        f.match_type = Some(MatchType::None);
        f.destination = Arc::new(Peer {
            endpoint_id: 7,
            identity: 5123,
            namespace: "default".into(),
            pod_name: "database".into(),
            labels: vec!["component=database".into()],
        });
        f.policy = Some(PolicyAttribution::DefaultDeny {
            isolated_by: vec![PolicyName { namespace: "default".into(), name: "default-deny-ingress-policy".into() }],
        });
        f
    }

    #[test]
    fn ipv6_tuples_put_addresses_in_brackets() {
        let mut flow = crate::flow::fixtures::flow_between(1, 2, 40000);
        (flow.source_ip, flow.destination_ip) = ("fd00::a".parse().unwrap(), "fd00::b".parse().unwrap());
        assert_eq!(tuple_text(&flow), "[fd00::a]:40000 -> [fd00::b]:80 tcp SYN");
        flow.protocol = crate::flow::Protocol::Icmpv6;
        flow.icmp_type = 128;
        assert_eq!(tuple_text(&flow), "fd00::a -> fd00::b icmpv6 type 128 code 0");
        // IPv4 flow ids are what they were before addresses became 128-bit; IPv6 ones differ by address.
        let v4 = crate::flow::fixtures::flow_between(1, 2, 40000);
        let mut other = flow.clone();
        other.source_ip = "fd00::c".parse().unwrap();
        assert_ne!(flow_id(&flow), flow_id(&other));
        assert_ne!(flow_id(&v4), flow_id(&flow));
    }

    #[test]
    fn policy_verdict_line() {
        let f = verdict_flow();
        let line = flow_line(&f);
        assert_eq!(
            line,
            format!(
                "Policy verdict: flow {:#010x} local EP ID 12 (default/pod-12), remote ID 7 (identity 5123 component=database), egress, action deny, match none, policy default deny (isolated by default/default-deny-ingress-policy), 10.0.0.12:43210 -> 10.0.0.7:5432 tcp SYN",
                flow_id(&f)
            )
        );
    }

    #[test]
    fn allowed_verdict_names_its_policy() {
        let mut f = verdict_flow();
        f.verdict = Verdict::Forwarded;
        f.match_type = Some(MatchType::L3L4);
        f.policy = Some(PolicyAttribution::AllowedBy(vec![PolicyName {
            namespace: "default".into(),
            name: "network-policy-walkthrough-db".into(),
        }]));
        let line = flow_line(&f);
        assert!(line.contains("action allow, match L3-L4, policy default/network-policy-walkthrough-db,"), "{line}");
    }

    #[test]
    fn drop_and_trace_and_lost_lines() {
        let mut f = verdict_flow();
        f.event_type = EventType::Drop;
        f.drop_reason = drop_reason::POLICY_DENIED;
        let line = flow_line(&f);
        assert!(line.starts_with("xx drop (Policy denied) flow 0x"), "{line}");
        assert!(line.ends_with(": 10.0.0.12:43210 -> 10.0.0.7:5432 tcp SYN"), "{line}");
        f.policy_revision = Some(5);
        assert!(flow_line(&f).starts_with("xx drop (Policy denied) flow"), "only a revocation names its revision");
        f.drop_reason = drop_reason::CONNECTION_REVOKED;
        let line = flow_line(&f);
        assert!(line.starts_with("xx drop (Policy denied (connection revoked), revision 5) flow 0x"), "{line}");
        let mut t = flow_between(3, 4, 1000);
        t.tcp_flags = TcpFlags(TcpFlags::SYN | TcpFlags::ACK);
        t.ct_state = Some(crate::flow::CtState::Reply);
        let line = flow_line(&t);
        assert!(line.starts_with("<- endpoint 3 (default/pod-3) flow 0x"), "{line}");
        assert!(line.contains("state reply"), "{line}");
        assert_eq!(
            lost_line(&LostEvents { source: LossSource::KernelBuffer, count: 312 }),
            "Lost 312 events (kernel buffer)"
        );
        assert_eq!(
            lost_line(&LostEvents { source: LossSource::ClientQueue, count: 5 }),
            "Lost 5 events (this client's queue)"
        );
    }
}
