//! The connections view: one row per connection, most recently active first: last seen, both sides, source
//! port, destination port/protocol, direction, verdict, state, match type, packets and bytes seen, first
//! seen and the policy. Denied and revoked connections are drawn in red. Columns follow the terminal's width
//! as the flow table's do ([`fit`]); [`detail`] shows one connection in full with its events.

use std::net::SocketAddr;

use flowgate_proto::{
    Flow,
    flow::{Protocol, Verdict},
    format,
};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, Wrap},
};

use super::{
    fit::{self, Column, Shape, Step},
    table::{direction_text, home_namespace, home_title, peer_text, policy_cell, time_text},
    thousands, verdict_style, verdict_word,
};
use crate::monitor::tui::{
    connections::{Connection, ConnectionState},
    state::State,
};

/// How the connections table gives way, first to last.
pub const STEPS: &[Step] = &[
    Step::NoNamespace,
    Step::LabelValues,
    Step::ShortPolicy,
    Step::Drop("FIRST"),
    Step::Drop("SPORT"),
    Step::Drop("MATCH"),
    Step::Drop("BYTES"),
    Step::Drop("DIR"),
    Step::NoIds,
    Step::ShortTime,
    Step::Drop("PKTS"),
    Step::SqueezePeers(18),
    Step::SqueezePeers(16),
    Step::SqueezePeers(14),
    Step::Drop("LAST"),
    Step::SqueezePeers(12),
];
/// The policy column gets at least this much before other columns give way.
pub const POLICY_MIN: usize = 29;

/// What the policy column gets before other columns give way: [`POLICY_MIN`] (the walkthrough's
/// `network-policy-walkthrough-db` whole from 100 columns on), less on narrow terminals, where names matter
/// as much.
pub fn policy_min(width: usize) -> usize {
    POLICY_MIN.min(width * 3 / 10)
}

/// `ALLOWED`, `DENIED`, `AUDIT` for a decided connection; `FORWARDED` when only forwarded packets were seen;
/// `DROPPED` when revoked.
pub fn verdict_text(c: &Connection) -> &'static str {
    match (c.state(), c.verdict(), c.is_decided()) {
        (ConnectionState::Revoked, _, _) => "DROPPED",
        (_, Verdict::Audit, _) => "AUDIT",
        (_, Verdict::Dropped, _) => "DENIED",
        (_, Verdict::Forwarded, true) => "ALLOWED",
        (_, Verdict::Forwarded, false) => "FORWARDED",
    }
}

/// `5432/TCP`, `ICMP`.
pub fn port_text(c: &Connection) -> String {
    match c.key.protocol {
        Protocol::Icmp => "ICMP".into(),
        Protocol::Other(n) => format!("proto {n}"),
        p => format!("{}/{}", c.key.destination_port, p.name().to_uppercase()),
    }
}

/// The columns for `connections` in `shape`.
pub fn columns(connections: &[&Connection], shape: &Shape) -> Vec<Column> {
    let column = |header: &'static str, cell: &dyn Fn(&Connection) -> String| Column {
        header,
        cells: connections.iter().map(|c| cell(c)).collect(),
    };
    let show = |header: &str| shape.shows(header);
    let mut out = Vec::new();
    if show("LAST") {
        out.push(column("LAST", &|c| time_text(c.last_ns, shape)));
    }
    out.push(column("SOURCE", &|c| peer_text(&c.source, c.key.source_ip, shape)));
    if show("SPORT") {
        out.push(column("SPORT", &|c| c.key.source_port.to_string()));
    }
    out.push(column("DESTINATION", &|c| peer_text(&c.destination, c.key.destination_ip, shape)));
    out.push(column("PORT", &port_text));
    if show("DIR") {
        out.push(column("DIR", &|c| direction_text(c.decision_direction()).to_owned()));
    }
    out.push(column("VERDICT", &|c| verdict_text(c).to_owned()));
    out.push(column("STATE", &|c| c.state().text().to_owned()));
    if show("MATCH") {
        out.push(column("MATCH", &|c| {
            c.decision().and_then(|d| d.match_type).map_or("-", |m| format::match_text(Some(m))).to_owned()
        }));
    }
    if show("PKTS") {
        out.push(column("PKTS", &|c| thousands(c.packets)));
    }
    if show("BYTES") {
        out.push(column("BYTES", &|c| thousands(c.bytes)));
    }
    if show("FIRST") {
        out.push(column("FIRST", &|c| time_text(c.first_ns, shape)));
    }
    out.push(column("POLICY", &|c| policy_cell(c.decision().and_then(|d| d.policy.as_ref()), shape)));
    out
}

/// Columns fitted to `width`.
pub fn fitted(connections: &[&Connection], width: usize) -> (Shape, Vec<Column>, Vec<usize>) {
    let home = home_namespace(connections.iter().flat_map(|c| [&*c.source, &*c.destination]));
    fit::fit(width, policy_min(width), STEPS, home.as_deref(), |shape| columns(connections, shape))
}

/// Refused connections stand out.
fn row_style(c: &Connection) -> Style {
    match c.state() {
        ConnectionState::Denied | ConnectionState::Revoked => Style::new().fg(Color::Red),
        _ => Style::new(),
    }
}

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let visible = state.visible_connections();
    let height = usize::from(area.height.saturating_sub(3));
    let selected = state.selected_connection_index(&visible);
    let start = selected.map_or(0, |s| (s + 1).saturating_sub(height));
    let shown: Vec<&Connection> = visible.iter().skip(start).take(height).copied().collect();
    let (shape, columns, widths) = fitted(&shown, usize::from(area.width.saturating_sub(2)));
    let rows = shown.iter().enumerate().map(|(n, c)| {
        let cells = columns.iter().map(|col| {
            let cell = Cell::from(col.cells[n].clone());
            match col.header {
                "VERDICT" => cell.style(verdict_style(c.verdict()).add_modifier(Modifier::BOLD)),
                "STATE" if c.state().is_refused() => cell.style(Style::new().add_modifier(Modifier::BOLD)),
                _ => cell,
            }
        });
        let mut row = Row::new(cells).style(row_style(c));
        if Some(start + n) == selected && state.connection_selected.is_some() {
            row = row.style(row_style(c).bg(Color::DarkGray).add_modifier(Modifier::BOLD));
        }
        row
    });
    let header = Row::new(columns.iter().map(|c| c.header))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let namespace = home_title(&shape);
    let denied = visible.iter().filter(|c| c.state().is_refused()).count();
    let head = format!(
        "connections{}: {} shown, {} denied",
        if state.verdicts_only { " (decided)" } else { "" },
        thousands(visible.len() as u64),
        thousands(denied as u64),
    );
    let held = if state.connection_selected.is_some() { "selection held (End follows)" } else { "" };
    let extras = [held.to_owned(), "most recent first".to_owned(), namespace];
    let title = fit::title(&head, &extras, usize::from(area.width));
    let constraints = widths.iter().map(|w| Constraint::Length(u16::try_from(*w).unwrap_or(u16::MAX)));
    let table = Table::new(rows, constraints)
        .column_spacing(u16::try_from(fit::SPACING).unwrap_or(1))
        .header(header)
        .block(Block::bordered().title(Line::from(title)));
    frame.render_widget(table, area);
}

fn field(name: &str, value: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{name:<13}"), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(value.into()),
    ])
}

/// One event of a connection: `12:12:18.510 policy-verdict ingress ALLOWED SYN`, a drop with its reason.
pub fn event_text(flow: &Flow) -> String {
    let flags = flow.tcp_flags.names().join(",");
    let reason = if flow.drop_reason != 0 {
        format!(" ({})", format::drop_reason_text(flow.drop_reason))
    } else {
        String::new()
    };
    format!(
        "{} {} {} {}{}{reason}",
        time_text(flow.time_ns, &Shape::default()),
        flow.event_type.as_str(),
        direction_text(flow.traffic_direction),
        verdict_word(flow),
        if flags.is_empty() { String::new() } else { format!(" {flags}") },
    )
}

/// The connection in full (left) and its latest events (right).
pub fn detail(frame: &mut Frame, area: Rect, state: &State) {
    let block = Block::bordered().title(" connection (Enter or Esc to close) ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(c) = state.selected_connection() else {
        frame.render_widget(Paragraph::new("no connection selected"), inner);
        return;
    };
    let full = Shape::default();
    // One line for the verdict, one for the policy; policy names separated by spaces so that a long list
    // wraps between names.
    let decision = |name: &str, d: &Option<crate::monitor::tui::connections::Decision>| match d {
        Some(d) => vec![
            field(
                name,
                format!(
                    "{} at {}, match {}",
                    match d.verdict {
                        Verdict::Forwarded => "allowed",
                        Verdict::Dropped => "denied",
                        Verdict::Audit => "audit",
                    },
                    state.endpoint_name(d.endpoint_id),
                    format::match_text(d.match_type),
                ),
            ),
            field("", format!("policy {}", format::policy_text(d.policy.as_ref()).replace(',', ", "))),
        ],
        None => vec![field(name, "not seen")],
    };
    let labels = |peer: &flowgate_proto::flow::Peer| {
        if peer.labels.is_empty() { "-".to_owned() } else { peer.labels.join(" ") }
    };
    let left = vec![
        field(
            "connection",
            format!(
                "{} -> {} {}",
                SocketAddr::new(c.key.source_ip, c.key.source_port),
                SocketAddr::new(c.key.destination_ip, c.key.destination_port),
                c.key.protocol.name()
            ),
        ),
        field("source", format!("{}  identity {}", peer_text(&c.source, c.key.source_ip, &full), c.source.identity)),
        field("", format!("labels: {}", labels(&c.source))),
        field(
            "destination",
            format!("{}  identity {}", peer_text(&c.destination, c.key.destination_ip, &full), c.destination.identity),
        ),
        field("", format!("labels: {}", labels(&c.destination))),
        Line::from(vec![
            Span::styled(format!("{:<13}", "verdict"), Style::new().add_modifier(Modifier::BOLD)),
            Span::styled(verdict_text(c), verdict_style(c.verdict()).add_modifier(Modifier::BOLD)),
            Span::raw(format!("  state {}", c.state().text())),
        ]),
    ];
    let mut left = left;
    left.extend(decision("egress", &c.egress));
    left.extend(decision("ingress", &c.ingress));
    left.push(field("seen", format!("{} packets, {} bytes", thousands(c.packets), thousands(c.bytes))));
    left.push(field("", format!("first {}, last {}", time_text(c.first_ns, &full), time_text(c.last_ns, &full))));
    let [left_area, right_area] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).spacing(2).areas(inner);
    frame.render_widget(Paragraph::new(left).wrap(Wrap { trim: false }), left_area);
    let room = usize::from(right_area.height.saturating_sub(1));
    let mut right = vec![Line::from(Span::styled(
        format!("events ({} kept, newest last)", c.events.len()),
        Style::new().add_modifier(Modifier::BOLD),
    ))];
    let skip = c.events.len().saturating_sub(room);
    right.extend(c.events.iter().skip(skip).map(|f| {
        Line::from(fit::ellipsize(&event_text(f), usize::from(right_area.width)))
            .style(if f.verdict == Verdict::Dropped { Style::new().fg(Color::Red) } else { Style::new() })
    }));
    frame.render_widget(Paragraph::new(right), right_area);
}
