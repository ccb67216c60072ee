//! The header: endpoints followed and the other filters, events per second with a sparkline of the
//! recent rate, totals by verdict, losses (kernel and this client) and the connection.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph, Sparkline},
};

use super::thousands;
use crate::monitor::tui::state::{Connection, State};

/// `verdict=denied type=drop port=80`, the filters besides the endpoints.
fn other_filters(state: &State) -> String {
    let f = &state.filter;
    let mut parts = Vec::new();
    let join = |v: Vec<String>| v.join(",");
    if !f.from_endpoint.is_empty() {
        parts.push(format!("from={}", join(f.from_endpoint.iter().map(ToString::to_string).collect())));
    }
    if !f.to_endpoint.is_empty() {
        parts.push(format!("to={}", join(f.to_endpoint.iter().map(ToString::to_string).collect())));
    }
    if !f.verdicts.is_empty() {
        let names = f.verdicts.iter().map(|v| match v {
            flowgate_proto::flow::Verdict::Forwarded => "allowed".to_owned(),
            flowgate_proto::flow::Verdict::Dropped => "denied".to_owned(),
            flowgate_proto::flow::Verdict::Audit => "audit".to_owned(),
        });
        parts.push(format!("verdict={}", join(names.collect())));
    }
    if !f.event_types.is_empty() {
        parts.push(format!("type={}", join(f.event_types.iter().map(|t| t.as_str().to_owned()).collect())));
    }
    if !f.namespaces.is_empty() {
        parts.push(format!("namespace={}", join(f.namespaces.clone())));
    }
    if !f.pods.is_empty() {
        parts.push(format!("pod={}", join(f.pods.iter().map(ToString::to_string).collect())));
    }
    if !f.labels.is_empty() {
        parts.push(format!(
            "label={}",
            f.labels.iter().map(|l| format!("{:?}", l.to_string())).collect::<Vec<_>>().join(" ")
        ));
    }
    if !f.ports.is_empty() {
        parts.push(format!("port={}", join(f.ports.iter().map(ToString::to_string).collect())));
    }
    if !f.protocols.is_empty() {
        parts.push(format!("protocol={}", join(f.protocols.iter().map(|p| p.name()).collect())));
    }
    if !f.policies.is_empty() {
        parts.push(format!("policy={}", join(f.policies.iter().map(ToString::to_string).collect())));
    }
    if !state.search.is_empty() {
        parts.push(format!("search={:?}", state.search));
    }
    if parts.is_empty() { "none".into() } else { parts.join(" ") }
}

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let (connection, connection_style) = match &state.connection {
        Connection::Connecting => ("connecting", Style::new().fg(Color::Yellow)),
        Connection::Connected => ("connected", Style::new().fg(Color::Green)),
        Connection::Disconnected { .. } => ("disconnected", Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)),
    };
    let block = Block::bordered()
        .title(Line::from(vec![Span::styled(" flowgate monitor ", Style::new().add_modifier(Modifier::BOLD))]))
        .title(
            Line::from(vec![
                Span::raw(" "),
                Span::styled(connection, connection_style),
                Span::raw(format!(" {} ", state.socket)),
            ])
            .right_aligned(),
        );
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [first, second, spark] = Layout::vertical([Constraint::Length(1); 3]).areas(inner);
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let line1 = Line::from(vec![
        Span::styled("following ", bold),
        Span::raw(state.followed()),
        Span::styled("   filters ", bold),
        Span::raw(other_filters(state)),
    ]);
    let (kernel, client) = state.losses();
    let lost_style = |n: u64| {
        if n > 0 { Style::new().fg(Color::Red) } else { Style::new() }
    };
    let mut spans = vec![
        Span::styled(format!("{} events/s", thousands(state.rate.per_second())), bold),
        Span::raw("   allowed "),
        Span::styled(thousands(state.totals.allowed), Style::new().fg(Color::Green)),
        Span::raw("  denied "),
        Span::styled(thousands(state.totals.denied), Style::new().fg(Color::Red)),
        Span::raw("  audit "),
        Span::styled(thousands(state.totals.audit), Style::new().fg(Color::Yellow)),
        Span::raw("   lost: kernel "),
        Span::styled(thousands(kernel), lost_style(kernel)),
        Span::raw(", this client "),
        Span::styled(thousands(client), lost_style(client)),
    ];
    if !state.following {
        spans.push(Span::styled(
            format!("   PAUSED ({} new not shown)", thousands(state.unseen)),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    frame.render_widget(Paragraph::new(line1), first);
    frame.render_widget(Paragraph::new(Line::from(spans)), second);
    // The newest second at the right edge.
    let width = usize::from(spark.width.saturating_sub(12));
    let data: Vec<u64> = state.rate.history.iter().rev().take(width).rev().copied().collect();
    let [label, chart] = Layout::horizontal([Constraint::Length(12), Constraint::Min(1)]).areas(spark);
    frame.render_widget(Paragraph::new(format!("rate ({}s)", data.len())), label);
    frame.render_widget(Sparkline::default().data(&data).style(Style::new().fg(Color::Cyan)), chart);
}
