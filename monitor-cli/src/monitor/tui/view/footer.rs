//! The bottom line: the prompt being typed (search, endpoints) or the main keys, as many as the width
//! holds (`?` lists them all).

use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
};

use crate::monitor::tui::state::{Mode, State, View};

/// The key hints that fit in `width`, most useful first; `? help` and `q quit` always.
pub fn hints(state: &State, width: usize) -> String {
    let view = match state.view {
        View::Flows => "Tab connections",
        View::Connections => "Tab flows",
    };
    let only = if state.verdicts_only { "d all events" } else { "d verdicts only" };
    let optional = [
        view,
        only,
        "Enter detail",
        "space pause",
        "↑↓ scroll",
        "/ search",
        "End follow",
        "e endpoints",
        "p pick",
        "v verdict",
        "t type",
    ];
    let last = "? help  q quit";
    let mut out = String::from(" ");
    for hint in optional {
        if out.chars().count() + hint.chars().count() + 2 + last.chars().count() > width {
            break;
        }
        out.push_str(hint);
        out.push_str("  ");
    }
    out.push_str(last);
    out
}

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let line = match &state.mode {
        Mode::Search { input } => Line::from(vec![
            Span::styled("search: ", bold),
            Span::raw(format!("{input}█")),
            Span::raw("   Enter keep, Esc clear"),
        ]),
        Mode::EndpointEdit { input, error } => {
            let mut spans = vec![
                Span::styled("follow endpoints (ids or ns/pod, empty for all): ", bold),
                Span::raw(format!("{input}█")),
            ];
            if let Some(e) = error {
                spans.push(Span::styled(format!("   {e}"), Style::new().fg(Color::Red)));
            }
            Line::from(spans)
        }
        _ => Line::from(hints(state, usize::from(area.width))).style(Style::new().fg(Color::DarkGray)),
    };
    frame.render_widget(Paragraph::new(line), area);
}
