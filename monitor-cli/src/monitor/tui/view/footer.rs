//! The bottom line: the prompt being typed (search, endpoints) or the main keys.

use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
};

use crate::monitor::tui::state::{Mode, State};

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let line = match &state.mode {
        Mode::Search { input } => Line::from(vec![Span::styled("search: ", bold), Span::raw(format!("{input}█")), Span::raw("   Enter keep, Esc clear")]),
        Mode::EndpointEdit { input, error } => {
            let mut spans = vec![Span::styled("follow endpoints (ids or ns/pod, empty for all): ", bold), Span::raw(format!("{input}█"))];
            if let Some(e) = error {
                spans.push(Span::styled(format!("   {e}"), Style::new().fg(Color::Red)));
            }
            Line::from(spans)
        }
        _ => Line::from(
            " space pause  ↑↓ scroll  End follow  Enter detail  / search  e endpoints  p pick  v verdict  t type  ? help  q quit",
        )
        .style(Style::new().fg(Color::DarkGray)),
    };
    frame.render_widget(Paragraph::new(line), area);
}
