//! The red line shown while the agent is unreachable: why, and when the next attempt is.

use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    widgets::Paragraph,
};

use crate::monitor::tui::state::{Connection, State};

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let Connection::Disconnected { error, retry_in_ms } = &state.connection else {
        return;
    };
    let text = format!(
        " disconnected — retrying in {:.1}s (events shown are from before): {error}",
        *retry_in_ms as f64 / 1000.0
    );
    let style = Style::new().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD);
    frame.render_widget(Paragraph::new(text).style(style), area);
}
