//! Drawing the monitor screen from a [`State`]: one module per pane, each `fn render(frame, area,
//! &State)`. Nothing here changes the state; [`layout`] is shared with the caller to learn the page size.

pub mod banner;
pub mod connections;
pub mod detail;
pub mod fit;
pub mod footer;
pub mod header;
pub mod help;
pub mod picker;
pub mod table;

use ratatui::{
    Frame,
    layout::{Constraint, Flex, Layout, Rect},
    style::{Color, Style},
};

use super::{
    input::HELP,
    state::{Connection, Mode, State, View},
};

/// Where each pane goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Areas {
    pub header: Rect,
    pub banner: Option<Rect>,
    pub table: Rect,
    pub detail: Option<Rect>,
    pub footer: Rect,
}

/// Header rows (with its border).
const HEADER_HEIGHT: u16 = 5;

pub fn layout(area: Rect, state: &State) -> Areas {
    let disconnected = matches!(state.connection, Connection::Disconnected { .. });
    let [header, banner, body, footer] = Layout::vertical([
        Constraint::Length(HEADER_HEIGHT),
        Constraint::Length(u16::from(disconnected)),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    let (table, detail) = if state.detail {
        let detail_height = (body.height / 2).clamp(3, 24);
        let [table, detail] = Layout::vertical([Constraint::Min(3), Constraint::Length(detail_height)]).areas(body);
        (table, Some(detail))
    } else {
        (body, None)
    };
    Areas { header, banner: disconnected.then_some(banner), table, detail, footer }
}

/// Rows of flows the table shows at once in `area`.
pub fn table_rows(area: Rect, state: &State) -> usize {
    // Border top and bottom, column header.
    usize::from(layout(area, state).table.height.saturating_sub(3))
}

pub fn render(frame: &mut Frame, state: &State) {
    let areas = layout(frame.area(), state);
    header::render(frame, areas.header, state);
    if let Some(area) = areas.banner {
        banner::render(frame, area, state);
    }
    match state.view {
        View::Flows => table::render(frame, areas.table, state),
        View::Connections => connections::render(frame, areas.table, state),
    }
    if let Some(area) = areas.detail {
        match state.view {
            View::Flows => detail::render(frame, area, state),
            View::Connections => connections::detail(frame, area, state),
        }
    }
    footer::render(frame, areas.footer, state);
    match state.mode {
        Mode::Picker { .. } => picker::render(frame, popup(frame.area(), 90, 20), state),
        Mode::Help => {
            help::render(frame, popup(frame.area(), 100, u16::try_from(HELP.len() + 4).unwrap_or(u16::MAX)), state)
        }
        _ => {}
    }
}

/// A centered rectangle of at most `width` x `height`.
pub fn popup(area: Rect, width: u16, height: u16) -> Rect {
    let [row] = Layout::vertical([Constraint::Length(height.min(area.height))]).flex(Flex::Center).areas(area);
    let [cell] = Layout::horizontal([Constraint::Length(width.min(area.width))]).flex(Flex::Center).areas(row);
    cell
}

/// The color of a verdict word.
pub fn verdict_style(verdict: flowgate_proto::flow::Verdict) -> Style {
    use flowgate_proto::flow::Verdict;
    match verdict {
        Verdict::Forwarded => Style::new().fg(Color::Green),
        Verdict::Dropped => Style::new().fg(Color::Red),
        Verdict::Audit => Style::new().fg(Color::Yellow),
    }
}

/// `ALLOWED` / `DENIED` / `AUDIT` for policy decisions, `FORWARDED` / `DROPPED` for other events.
pub fn verdict_word(flow: &flowgate_proto::Flow) -> &'static str {
    use flowgate_proto::flow::{EventType, Verdict};
    match (flow.event_type, flow.verdict) {
        (_, Verdict::Audit) => "AUDIT",
        (EventType::PolicyVerdict, Verdict::Forwarded) => "ALLOWED",
        (EventType::PolicyVerdict, Verdict::Dropped) => "DENIED",
        (_, Verdict::Forwarded) => "FORWARDED",
        (_, Verdict::Dropped) => "DROPPED",
    }
}

/// `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod sizes;
#[cfg(test)]
mod tests;
