//! The detail pane: every field of the selected event, the policy that decided, and both sides'
//! endpoints with their labels.

use flowgate_proto::{
    Flow,
    flow::{CtState, Peer},
    format, hubble,
};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph, Wrap},
};

use super::{table::direction_text, verdict_style, verdict_word};
use crate::monitor::tui::state::State;

fn field(name: &str, value: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{name:<13}"), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(value.into()),
    ])
}

fn peer_lines(name: &str, peer: &Peer, ip: std::net::IpAddr, state: &State) -> Vec<Line<'static>> {
    let who = if peer.endpoint_id != 0 {
        format!("endpoint {} ({}/{})", peer.endpoint_id, peer.namespace, peer.pod_name)
    } else if !peer.pod_name.is_empty() {
        format!("{}/{}", peer.namespace, peer.pod_name)
    } else {
        "not an endpoint of this node".to_owned()
    };
    let mut labels = peer.labels.clone();
    if labels.is_empty()
        && let Some(ep) = state.endpoint(peer.endpoint_id)
    {
        labels = ep.label_list();
    }
    vec![
        field(name, format!("{ip}  {who}  identity {}", peer.identity)),
        field("", format!("labels: {}", if labels.is_empty() { "-".into() } else { labels.join(" ") })),
    ]
}

/// The event's own fields (left column).
pub fn event_lines(flow: &Flow, state: &State) -> Vec<Line<'static>> {
    let (ty, sub_type) = hubble::event_type(flow);
    let out = vec![
        field("event", format!("{} (Cilium type {ty}, sub-type {sub_type})", flow.event_type.as_str())),
        field("time", format!("{}  cpu {}", hubble::timestamp(flow.time_ns), flow.cpu)),
        Line::from(vec![
            Span::styled(format!("{:<13}", "verdict"), Style::new().add_modifier(Modifier::BOLD)),
            Span::styled(verdict_word(flow), verdict_style(flow.verdict).add_modifier(Modifier::BOLD)),
            Span::raw(if flow.drop_reason != 0 {
                format!(
                    "  drop reason {} ({})",
                    format::drop_reason_text(flow.drop_reason),
                    hubble::drop_reason_name(flow.drop_reason)
                )
            } else {
                String::new()
            }),
        ]),
        field("policy", format::policy_text(flow.policy.as_ref())),
        field("match", format::match_text(flow.match_type)),
        field("flow", format::tuple_text(flow)),
        field(
            "observed",
            format!(
                "{} at endpoint {}, ifindex {}, {} bytes",
                direction_text(flow.traffic_direction),
                state.endpoint_name(flow.endpoint_id),
                flow.ifindex,
                flow.packet_len
            ),
        ),
        field(
            "connection",
            format!(
                "reply {}, state {}",
                flow.is_reply.map_or("unknown", |r| if r { "yes" } else { "no" }),
                match flow.ct_state {
                    Some(CtState::New) => "new",
                    Some(CtState::Established) => "established",
                    Some(CtState::Reply) => "reply",
                    Some(CtState::Related) => "related",
                    None => "-",
                }
            ),
        ),
    ];
    out
}

/// Both sides with their labels, and the event as a text line (right column).
pub fn peer_and_line(flow: &Flow, state: &State) -> Vec<Line<'static>> {
    let mut out = peer_lines("source", &flow.source, flow.source_ip, state);
    out.extend(peer_lines("destination", &flow.destination, flow.destination_ip, state));
    out.push(Line::from(""));
    out.push(Line::from(format::flow_line(flow)));
    out
}

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let block = Block::bordered().title(" detail (Enter or Esc to close) ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(flow) = state.selected() else {
        frame.render_widget(Paragraph::new("no event selected"), inner);
        return;
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).spacing(2).areas(inner);
    frame.render_widget(Paragraph::new(event_lines(&flow, state)).wrap(Wrap { trim: false }), left);
    frame.render_widget(Paragraph::new(peer_and_line(&flow, state)).wrap(Wrap { trim: false }), right);
}
