//! The help pane: the keys.

use ratatui::{
    Frame,
    layout::Rect,
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph},
};

use crate::monitor::tui::{input::HELP, state::State};

pub fn render(frame: &mut Frame, area: Rect, _state: &State) {
    frame.render_widget(Clear, area);
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!("  {key:<16}"), Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from("  Times are UTC. Filters (endpoints, verdict, type) are applied by the agent."));
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(" keys (? or Esc to close) ")), area);
}
