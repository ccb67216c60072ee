//! The endpoint picker: the agent's endpoints; Enter follows the chosen one (`--related-to`).

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    widgets::{Block, Clear, Paragraph, Row, Table, TableState},
};

use crate::monitor::tui::state::{Mode, State};

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let Mode::Picker { selected } = state.mode else {
        return;
    };
    frame.render_widget(Clear, area);
    let block = Block::bordered().title(" follow an endpoint: ↑↓ choose, Enter follow, Esc close ");
    if state.endpoints.is_empty() {
        let text = state.endpoints_error.clone().unwrap_or_else(|| "fetching the agent's endpoints…".into());
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let rows = state.endpoints.iter().map(|ep| {
        Row::new(vec![
            ep.id.to_string(),
            ep.pod_ref(),
            ep.identity.to_string(),
            ep.ipv4.to_string(),
            ep.label_list().join(" "),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Fill(2),
            Constraint::Length(9),
            Constraint::Length(15),
            Constraint::Fill(3),
        ],
    )
    .header(
        Row::new(["ID", "NAMESPACE/POD", "IDENTITY", "IPv4", "LABELS"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::new().bg(Color::Blue).fg(Color::White))
    .highlight_symbol("> ")
    .block(block);
    let mut table_state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(table, area, &mut table_state);
}
