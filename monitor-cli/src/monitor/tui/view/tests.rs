//! Full-screen snapshots of the monitor with fixed data and a fixed clock (ratatui's `TestBackend`,
//! insta `.snap` files under `snapshots/`), and checks of the colors the snapshots do not show.

use std::{sync::Arc, time::Duration};

use flowgate_proto::{
    filter::FlowFilter,
    flow::fixtures::flow_between,
    hubble::fixtures,
    message::{Event, LossSource, LostEvents},
};
use ratatui::{Terminal, backend::TestBackend, style::Color};

use super::render;
use crate::monitor::{
    session::NetEvent,
    tests::endpoint,
    tui::state::{Action, State},
};

const WIDTH: u16 = 150;
const HEIGHT: u16 = 32;

/// Connected, following endpoint 7, a mix of events over a few seconds of a fixed clock.
fn state() -> State {
    let filter = FlowFilter { related_to: vec![7], ..FlowFilter::default() };
    let mut eps = vec![endpoint(12, "backend"), endpoint(7, "database"), endpoint(3, "web")];
    eps[1].labels.insert("component".into(), "database".into());
    let mut s = State::new(filter, eps, "/run/flowgate/flowgate.sock".into());
    s.on_net(NetEvent::Connected, 0);
    let mut ms = 0;
    for (i, n) in [3u64, 8, 5, 12, 9, 4].into_iter().enumerate() {
        ms = i as u64 * 1000 + 10;
        let mut batch: Vec<Event> = (0..n)
            .map(|k| {
                let mut f = flow_between(12, 7, 40000 + (i as u16) * 100 + k as u16);
                f.time_ns = fixtures::TIME_NS + (i as u64) * 1_000_000_000 + k * 1_000_000;
                f.destination_port = 5432;
                f.source = fixtures::backend();
                f.destination = fixtures::database();
                Event::Flow(Arc::new(f))
            })
            .collect();
        if i == 5 {
            batch.push(Event::Flow(Arc::new(fixtures::verdict_allowed())));
            batch.push(Event::Flow(Arc::new(fixtures::verdict_denied())));
            batch.push(Event::Flow(Arc::new(fixtures::drop())));
            batch.push(Event::Flow(Arc::new(fixtures::verdict_audit())));
            batch.push(Event::Flow(Arc::new(fixtures::udp_to_world())));
            batch.push(Event::Lost(LostEvents { source: LossSource::KernelBuffer, count: 312 }));
            batch.push(Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 5 }));
        }
        s.push_events(batch, ms);
    }
    s.tick(ms + 1000);
    s
}

fn draw(state: &State) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(WIDTH, HEIGHT)).unwrap();
    terminal.draw(|frame| render(frame, state)).unwrap();
    terminal
}

#[test]
fn main_table() {
    let terminal = draw(&state());
    insta::assert_snapshot!(terminal.backend());
}

#[test]
fn verdicts_are_colored() {
    let terminal = draw(&state());
    let buffer = terminal.backend().buffer();
    let find = |word: &str| {
        (0..HEIGHT)
            .find_map(|y| {
                let line: String = (0..WIDTH).map(|x| buffer[(x, y)].symbol().to_owned()).collect();
                line.find(word).map(|x| buffer[(line[..x].chars().count() as u16, y)].fg)
            })
            .unwrap_or_else(|| panic!("{word} on screen"))
    };
    assert_eq!(find("DENIED"), Color::Red);
    assert_eq!(find("ALLOWED"), Color::Green);
    assert_eq!(find("AUDIT "), Color::Yellow);
}

#[test]
fn detail_pane_of_the_selected_event() {
    let mut s = state();
    s.apply(Action::TogglePause);
    s.apply(Action::Up(3));
    s.apply(Action::Submit);
    insta::assert_snapshot!(draw(&s).backend());
}

#[test]
fn endpoint_picker() {
    let mut s = state();
    s.apply(Action::Picker);
    s.apply(Action::Down(1));
    insta::assert_snapshot!(draw(&s).backend());
}

#[test]
fn help() {
    let mut s = state();
    s.apply(Action::Help);
    insta::assert_snapshot!(draw(&s).backend());
}

#[test]
fn disconnected() {
    let mut s = state();
    s.on_net(
        NetEvent::Disconnected {
            error: "no agent is listening on /run/flowgate/flowgate.sock: start it with `flowgate-agent --lab NAME` (or point --socket / $FLOWGATE_SOCKET at the agent's socket)".into(),
            retry_in: Duration::from_millis(2000),
        },
        6000,
    );
    insta::assert_snapshot!(draw(&s).backend());
}

#[test]
fn search_prompt_and_filters_in_the_header() {
    let mut s = state();
    s.apply(Action::CycleVerdict);
    s.apply(Action::CycleVerdict);
    s.apply(Action::Search);
    for c in "5432".chars() {
        s.apply(Action::Input(c));
    }
    insta::assert_snapshot!(draw(&s).backend());
}
