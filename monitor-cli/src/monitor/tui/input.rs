//! Keys to actions. What a key means depends on the mode: in a text prompt letters are text; elsewhere
//! they are commands (see the help pane, [`HELP`]).

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::{Action, Mode};

/// The keys, as the help pane lists them.
pub const HELP: &[(&str, &str)] = &[
    ("space", "pause / resume"),
    ("↑ ↓ PgUp PgDn", "scroll (pauses)"),
    ("End  f", "follow the newest events again"),
    ("Tab", "switch view: flows / connections (each keeps its place)"),
    ("d", "verdicts and drops only (connections: decided ones only)"),
    ("Enter", "detail of the selected event or connection (its events)"),
    ("/", "search the rows (Esc clears)"),
    ("e", "edit the endpoints followed (ids or namespace/pod, comma-separated)"),
    ("p", "pick an endpoint to follow from the agent's list"),
    ("v", "cycle the verdict filter: all, allowed, denied, audit"),
    ("t", "cycle the type filter: all, policy-verdict, drop, trace, capture, agent"),
    ("?", "this help"),
    ("q  Esc", "quit (Esc closes the detail pane first)"),
];

/// The action of a key press in `mode`, if any.
pub fn action(key: KeyEvent, mode: &Mode) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::ForceQuit);
    }
    let text_prompt = matches!(mode, Mode::Search { .. } | Mode::EndpointEdit { .. });
    if text_prompt {
        return match key.code {
            KeyCode::Enter => Some(Action::Submit),
            KeyCode::Esc => Some(Action::Cancel),
            KeyCode::Backspace => Some(Action::Backspace),
            KeyCode::Char(c) => Some(Action::Input(c)),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Esc => Action::Cancel,
        KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Up | KeyCode::Char('k') => Action::Up(1),
        KeyCode::Down | KeyCode::Char('j') => Action::Down(1),
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::End | KeyCode::Char('f') => Action::Follow,
        KeyCode::Char('/') => Action::Search,
        KeyCode::Char('e') => Action::EditEndpoints,
        KeyCode::Char('v') => Action::CycleVerdict,
        KeyCode::Char('t') => Action::CycleType,
        KeyCode::Enter => Action::Submit,
        KeyCode::Char('p') => Action::Picker,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Tab | KeyCode::BackTab => Action::SwitchView,
        KeyCode::Char('d') => Action::ToggleVerdictsOnly,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn command_keys_in_normal_mode() {
        let m = Mode::Normal;
        assert_eq!(action(key(KeyCode::Char(' ')), &m), Some(Action::TogglePause));
        assert_eq!(action(key(KeyCode::Char('q')), &m), Some(Action::Quit));
        assert_eq!(action(key(KeyCode::Esc), &m), Some(Action::Cancel));
        assert_eq!(action(key(KeyCode::Up), &m), Some(Action::Up(1)));
        assert_eq!(action(key(KeyCode::PageDown), &m), Some(Action::PageDown));
        assert_eq!(action(key(KeyCode::End), &m), Some(Action::Follow));
        assert_eq!(action(key(KeyCode::Char('f')), &m), Some(Action::Follow));
        assert_eq!(action(key(KeyCode::Char('/')), &m), Some(Action::Search));
        assert_eq!(action(key(KeyCode::Char('e')), &m), Some(Action::EditEndpoints));
        assert_eq!(action(key(KeyCode::Char('v')), &m), Some(Action::CycleVerdict));
        assert_eq!(action(key(KeyCode::Char('t')), &m), Some(Action::CycleType));
        assert_eq!(action(key(KeyCode::Enter), &m), Some(Action::Submit));
        assert_eq!(action(key(KeyCode::Char('p')), &m), Some(Action::Picker));
        assert_eq!(action(key(KeyCode::Char('?')), &m), Some(Action::Help));
        assert_eq!(action(key(KeyCode::Tab), &m), Some(Action::SwitchView));
        assert_eq!(action(key(KeyCode::Char('d')), &m), Some(Action::ToggleVerdictsOnly));
        assert_eq!(action(key(KeyCode::Char('x')), &m), None);
    }

    #[test]
    fn prompts_take_letters_as_text() {
        let m = Mode::Search { input: String::new() };
        assert_eq!(action(key(KeyCode::Char('q')), &m), Some(Action::Input('q')));
        assert_eq!(action(key(KeyCode::Enter), &m), Some(Action::Submit));
        assert_eq!(action(key(KeyCode::Esc), &m), Some(Action::Cancel));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(action(ctrl_c, &m), Some(Action::ForceQuit));
    }
}
