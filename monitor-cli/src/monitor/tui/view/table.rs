//! The flow table: time, source, destination, port/protocol, direction, verdict (in color), match type
//! and the policy that decided; the newest at the bottom, the selected row highlighted.

use flowgate_proto::{
    Flow,
    flow::{Peer, PolicyAttribution, Protocol, TrafficDirection},
    format,
};
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Row, Table},
};

use super::{thousands, verdict_style, verdict_word};
use crate::monitor::tui::state::State;

/// `12:12:18.510` (UTC).
pub fn time_text(time_ns: u64) -> String {
    let secs = time_ns / 1_000_000_000;
    let ms = (time_ns / 1_000_000) % 1000;
    format!("{:02}:{:02}:{:02}.{ms:03}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

/// `default/backend [12]` for an endpoint, `10.0.0.9 reserved:world` for other peers.
pub fn peer_text(peer: &Peer, ip: std::net::IpAddr) -> String {
    if !peer.pod_name.is_empty() {
        if peer.endpoint_id != 0 {
            format!("{}/{} [{}]", peer.namespace, peer.pod_name, peer.endpoint_id)
        } else {
            format!("{}/{}", peer.namespace, peer.pod_name)
        }
    } else {
        match peer.labels.first() {
            Some(label) => format!("{ip} {label}"),
            None => ip.to_string(),
        }
    }
}

/// `5432/TCP`, `icmp 8/0`.
pub fn port_text(flow: &Flow) -> String {
    match flow.protocol {
        Protocol::Icmp => format!("icmp {}/{}", flow.icmp_type, flow.icmp_code),
        Protocol::Other(n) => format!("proto {n}"),
        p => format!("{}/{}", flow.destination_port, p.name().to_uppercase()),
    }
}

pub fn direction_text(d: TrafficDirection) -> &'static str {
    match d {
        TrafficDirection::Ingress => "ingress",
        TrafficDirection::Egress => "egress",
        TrafficDirection::Unknown => "-",
    }
}

/// The policy column: who allowed, or `default deny (ns/isolating-policy)`.
pub fn policy_cell(p: Option<&PolicyAttribution>) -> String {
    match p {
        Some(PolicyAttribution::DefaultDeny { isolated_by }) if !isolated_by.is_empty() => {
            format!("default deny ({})", isolated_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
        }
        other => format::policy_text(other),
    }
}

/// First row index and the selected index (in `visible`) for a table of `height` rows.
pub fn window(len: usize, scroll: usize, height: usize) -> (usize, Option<usize>) {
    let Some(last) = len.checked_sub(1) else {
        return (0, None);
    };
    let selected = last.saturating_sub(scroll);
    let end = len.min(selected + 1 + scroll.min(height.saturating_sub(1)));
    (end.saturating_sub(height), Some(selected))
}

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let visible = state.visible();
    let height = usize::from(area.height.saturating_sub(3));
    let (start, selected) = window(visible.len(), state.scroll, height);
    let rows = visible.iter().enumerate().skip(start).take(height).map(|(i, row)| {
        let f = &row.flow;
        let mut r = Row::new(vec![
            Cell::from(time_text(f.time_ns)),
            Cell::from(peer_text(&f.source, f.source_ip)),
            Cell::from(peer_text(&f.destination, f.destination_ip)),
            Cell::from(port_text(f)),
            Cell::from(direction_text(f.traffic_direction)),
            Cell::from(verdict_word(f)).style(verdict_style(f.verdict).add_modifier(Modifier::BOLD)),
            Cell::from(f.match_type.map_or("-", |m| format::match_text(Some(m)))),
            Cell::from(policy_cell(f.policy.as_ref())),
        ]);
        if Some(i) == selected && !state.following {
            r = r.style(Style::new().bg(Color::DarkGray).add_modifier(Modifier::BOLD));
        }
        r
    });
    let header = Row::new(["TIME (UTC)", "SOURCE", "DESTINATION", "PORT", "DIR", "VERDICT", "MATCH", "POLICY"])
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let title = format!(
        " flows: {} shown of {} kept{} ",
        thousands(visible.len() as u64),
        thousands(state.history.len() as u64),
        if state.following { ", following" } else { ", paused" }
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(22),
            Constraint::Length(22),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .block(Block::bordered().title(Line::from(title)));
    frame.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_the_selection_in_view() {
        assert_eq!(window(0, 0, 10), (0, None));
        assert_eq!(window(5, 0, 10), (0, Some(4)));
        assert_eq!(window(100, 0, 10), (90, Some(99)));
        assert_eq!(window(100, 5, 10), (90, Some(94)));
        assert_eq!(window(100, 9, 10), (90, Some(90)));
        assert_eq!(window(100, 10, 10), (89, Some(89)), "scrolling past the top moves the window");
        assert_eq!(window(100, 99, 10), (0, Some(0)));
    }

    #[test]
    fn texts() {
        assert_eq!(time_text(flowgate_proto::hubble::fixtures::TIME_NS), "12:12:18.510");
        let f = flowgate_proto::hubble::fixtures::udp_to_world();
        assert_eq!(peer_text(&f.destination, f.destination_ip), "192.0.2.53 reserved:world");
        assert_eq!(peer_text(&f.source, f.source_ip), "default/backend [12]");
        assert_eq!(port_text(&f), "53/UDP");
    }
}
