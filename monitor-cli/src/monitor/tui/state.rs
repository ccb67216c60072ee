//! Everything the monitor screen shows, without any drawing: a bounded history of flows, following or
//! paused, scroll and selection, the filters being edited, counters (totals by verdict, events per second
//! over a sliding window, losses in the kernel and for this client) and the connection state; the
//! connections seen ([`Connections`]) for the connections view, with a selection of its own, so each view
//! keeps its place. Time comes in as milliseconds from the caller, so tests run on a fixed clock.

use std::{collections::VecDeque, sync::Arc};

use flowgate_proto::{
    Flow,
    endpoint::Endpoint,
    filter::FlowFilter,
    flow::{EventType, Verdict},
    format,
    message::{Event, LossSource},
};

use super::connections::{Connection as TrackedConnection, ConnectionKey, Connections};
use crate::{
    endpoint_ref::EndpointRef,
    monitor::{session::NetEvent, unknown_endpoint},
};

/// What a key asks the state to do (keys are mapped in `input`, the state applies the action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `q`: quit (or close the pane on top).
    Quit,
    /// Ctrl-C: quit from anywhere.
    ForceQuit,
    TogglePause,
    Up(usize),
    Down(usize),
    PageUp,
    PageDown,
    /// End / `f`: back to following the newest events.
    Follow,
    Search,
    EditEndpoints,
    CycleVerdict,
    CycleType,
    Picker,
    Help,
    /// Tab: flows <-> connections.
    SwitchView,
    /// `d`: only policy verdicts and drops (flows), only decided connections (connections).
    ToggleVerdictsOnly,
    Input(char),
    Backspace,
    Submit,
    /// Esc.
    Cancel,
}

/// Flows kept for scrolling back.
pub const HISTORY: usize = 10_000;
/// Seconds of event rate the sparkline shows.
pub const RATE_WINDOW: usize = 60;

/// One flow of the history.
#[derive(Clone, Debug)]
pub struct Row {
    pub flow: Arc<Flow>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Connected,
    Disconnected { error: String, retry_in_ms: u64 },
}

/// Which table the screen shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// Every event, newest at the bottom.
    #[default]
    Flows,
    /// One row per connection, most recently active first.
    Connections,
}

/// What the keyboard is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a free-text search (applied as typed).
    Search {
        input: String,
    },
    /// Typing endpoint ids to follow.
    EndpointEdit {
        input: String,
        error: Option<String>,
    },
    /// Choosing an endpoint from the agent's list.
    Picker {
        selected: usize,
    },
    Help,
}

/// What the caller must do after an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Quit,
    /// Subscribe again with this filter. Boxed, as in the session's `Command` it is passed on in: a filter
    /// takes a few hundred bytes, and the other effects carry nothing.
    Subscribe(Box<FlowFilter>),
    FetchEndpoints,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub allowed: u64,
    pub denied: u64,
    pub audit: u64,
}

/// Events per second, per whole second, over the last [`RATE_WINDOW`] seconds.
#[derive(Clone, Debug, Default)]
pub struct Rate {
    second: u64,
    count: u64,
    /// Completed seconds, oldest first.
    pub history: VecDeque<u64>,
}

impl Rate {
    fn roll(&mut self, now_ms: u64) {
        let now = now_ms / 1000;
        if now <= self.second {
            return;
        }
        let gap = (now - self.second).min(RATE_WINDOW as u64 + 1);
        for i in 0..gap {
            self.history.push_back(if i == 0 { self.count } else { 0 });
            if self.history.len() > RATE_WINDOW {
                self.history.pop_front();
            }
        }
        self.second = now;
        self.count = 0;
    }

    fn add(&mut self, n: u64, now_ms: u64) {
        self.roll(now_ms);
        self.count += n;
    }

    /// The last complete second.
    pub fn per_second(&self) -> u64 {
        self.history.back().copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct State {
    pub history: VecDeque<Row>,
    /// New flows are appended and shown; when false the view is frozen (paused or scrolled back).
    pub following: bool,
    /// Rows from the newest visible row up to the selected one.
    pub scroll: usize,
    /// Flows that arrived while not following (counted, not kept).
    pub unseen: u64,
    /// The detail pane of the selected flow is open.
    pub detail: bool,
    pub mode: Mode,
    /// Free-text search over the rows (case-insensitive), empty for none.
    pub search: String,
    /// What the agent filters on (the command line's filter, edited with e / v / t / p).
    pub filter: FlowFilter,
    /// The agent's endpoints, for names and the picker.
    pub endpoints: Vec<Endpoint>,
    pub endpoints_error: Option<String>,
    pub totals: Totals,
    /// Events lost before the agent saw them (kernel buffer).
    pub lost_kernel: u64,
    /// Events lost for this client (its queue in the agent, or the screen not keeping up).
    pub lost_client: u64,
    /// Losses of this process's own channel, added to the above (set by the caller).
    pub local_loss: (u64, u64),
    pub rate: Rate,
    pub connection: Connection,
    /// The agent's socket, as shown.
    pub socket: String,
    /// Rows the flow table shows at once (set after each draw).
    pub page: usize,
    pub view: View,
    /// Only policy verdicts and drops (a local filter: the agent still sends traces, which the connections
    /// count).
    pub verdicts_only: bool,
    pub connections: Connections,
    /// The connection selected in the connections view; none: the most recently active one, following.
    pub connection_selected: Option<ConnectionKey>,
}

impl State {
    pub fn new(filter: FlowFilter, endpoints: Vec<Endpoint>, socket: String) -> Self {
        Self {
            history: VecDeque::with_capacity(1024),
            following: true,
            scroll: 0,
            unseen: 0,
            detail: false,
            mode: Mode::Normal,
            search: String::new(),
            filter,
            endpoints,
            endpoints_error: None,
            totals: Totals::default(),
            lost_kernel: 0,
            lost_client: 0,
            local_loss: (0, 0),
            rate: Rate::default(),
            connection: Connection::Connecting,
            socket,
            page: 20,
            view: View::Flows,
            verdicts_only: false,
            connections: Connections::default(),
            connection_selected: None,
        }
    }

    /// Takes what the connection reports.
    pub fn on_net(&mut self, event: NetEvent, now_ms: u64) {
        match event {
            NetEvent::Connected => self.connection = Connection::Connected,
            NetEvent::Events(events) => self.push_events(events, now_ms),
            NetEvent::Disconnected { error, retry_in } => {
                self.connection = Connection::Disconnected { error, retry_in_ms: retry_in.as_millis() as u64 };
            }
            NetEvent::Endpoints(Ok(endpoints)) => {
                self.endpoints = endpoints;
                self.endpoints_error = None;
                if let Mode::Picker { selected } = &mut self.mode {
                    *selected = (*selected).min(self.endpoints.len().saturating_sub(1));
                }
            }
            NetEvent::Endpoints(Err(e)) => self.endpoints_error = Some(e),
        }
    }

    pub fn push_events(&mut self, events: Vec<Event>, now_ms: u64) {
        let mut flows = 0;
        for event in events {
            match event {
                Event::Flow(flow) => {
                    flows += 1;
                    self.connections.take(&flow);
                    match (flow.event_type, flow.verdict) {
                        (EventType::Trace, _) => {}
                        (_, Verdict::Forwarded) => self.totals.allowed += 1,
                        (_, Verdict::Dropped) => self.totals.denied += 1,
                        (_, Verdict::Audit) => self.totals.audit += 1,
                    }
                    if self.following {
                        if self.history.len() == HISTORY {
                            self.history.pop_front();
                        }
                        self.history.push_back(Row { flow });
                    } else {
                        self.unseen += 1;
                    }
                }
                Event::Lost(lost) => match lost.source {
                    LossSource::KernelBuffer => self.lost_kernel += lost.count,
                    LossSource::ClientQueue | LossSource::DecodeError => self.lost_client += lost.count,
                },
            }
        }
        self.rate.add(flows, now_ms);
    }

    /// Advances the clock (the rate window rolls even without events).
    pub fn tick(&mut self, now_ms: u64) {
        self.rate.roll(now_ms);
    }

    /// Kernel and this-client losses, including the local channel's.
    pub fn losses(&self) -> (u64, u64) {
        (self.lost_kernel + self.local_loss.1, self.lost_client + self.local_loss.0)
    }

    /// The rows shown: the history under the current filter and search, oldest first.
    pub fn visible(&self) -> Vec<&Row> {
        let needle = self.search.to_lowercase();
        self.history
            .iter()
            .filter(|row| {
                self.filter.matches(&row.flow)
                    && (!self.verdicts_only
                        || matches!(row.flow.event_type, EventType::PolicyVerdict | EventType::Drop))
                    && (needle.is_empty()
                        || format::flow_line(&row.flow).to_lowercase().contains(&needle)
                        || format::policy_text(row.flow.policy.as_ref()).to_lowercase().contains(&needle))
            })
            .collect()
    }

    /// The connections shown, most recently active first: those whose last event passes the filter (which may
    /// have changed since), under the search, and only decided ones (a policy verdict or drop seen) with the
    /// verdicts-only toggle.
    pub fn visible_connections(&self) -> Vec<&TrackedConnection> {
        let needle = self.search.to_lowercase();
        self.connections
            .by_activity()
            .into_iter()
            .filter(|c| {
                c.events.back().is_some_and(|last| self.filter.matches(last))
                    && (!self.verdicts_only || c.is_decided())
                    && (needle.is_empty() || c.summary().to_lowercase().contains(&needle))
            })
            .collect()
    }

    /// Index of the selected connection in `visible` (the first when none is selected or it is gone).
    pub fn selected_connection_index(&self, visible: &[&TrackedConnection]) -> Option<usize> {
        if visible.is_empty() {
            return None;
        }
        Some(self.connection_selected.and_then(|key| visible.iter().position(|c| c.key == key)).unwrap_or(0))
    }

    /// The selected connection, for the detail pane.
    pub fn selected_connection(&self) -> Option<&TrackedConnection> {
        let visible = self.visible_connections();
        self.selected_connection_index(&visible).map(|i| visible[i])
    }

    fn move_connection(&mut self, down: bool, n: usize) {
        let visible = self.visible_connections();
        let Some(at) = self.selected_connection_index(&visible) else { return };
        let to = if down { (at + n).min(visible.len() - 1) } else { at.saturating_sub(n) };
        self.connection_selected = Some(visible[to].key);
    }

    /// Index of the selected row in `visible` (the newest when following).
    pub fn selected_index(&self, visible_len: usize) -> Option<usize> {
        visible_len.checked_sub(1).map(|last| last.saturating_sub(self.scroll))
    }

    /// The selected flow, for the detail pane.
    pub fn selected(&self) -> Option<Arc<Flow>> {
        let visible = self.visible();
        self.selected_index(visible.len()).map(|i| visible[i].flow.clone())
    }

    /// The endpoint with this id, when the agent listed it.
    pub fn endpoint(&self, id: u16) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// `12 (default/backend)` or `12`.
    pub fn endpoint_name(&self, id: u16) -> String {
        self.endpoint(id).map_or_else(|| id.to_string(), |e| format!("{id} ({})", e.pod_ref()))
    }

    fn follow(&mut self) {
        self.following = true;
        self.scroll = 0;
        self.unseen = 0;
    }

    fn scroll_up(&mut self, n: usize) {
        let len = self.visible().len();
        self.following = false;
        self.scroll = (self.scroll + n).min(len.saturating_sub(1));
    }

    fn filter_changed(&mut self) -> Option<Effect> {
        self.follow();
        Some(Effect::Subscribe(Box::new(self.filter.clone())))
    }

    /// Applies a key's action; returns what the caller must do.
    pub fn apply(&mut self, action: Action) -> Option<Effect> {
        if action == Action::ForceQuit {
            return Some(Effect::Quit);
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.apply_normal(action),
            Mode::Help => match action {
                Action::Quit | Action::Cancel | Action::Help | Action::Submit => None,
                _ => {
                    self.mode = Mode::Help;
                    None
                }
            },
            Mode::Search { mut input } => {
                match action {
                    Action::Input(c) => input.push(c),
                    Action::Backspace => {
                        input.pop();
                    }
                    Action::Submit => {
                        self.search = input;
                        return None;
                    }
                    Action::Cancel => {
                        self.search.clear();
                        return None;
                    }
                    _ => {}
                }
                self.search.clone_from(&input);
                self.scroll = 0;
                self.mode = Mode::Search { input };
                None
            }
            Mode::EndpointEdit { mut input, error } => match action {
                Action::Input(c) => {
                    input.push(c);
                    self.mode = Mode::EndpointEdit { input, error: None };
                    None
                }
                Action::Backspace => {
                    input.pop();
                    self.mode = Mode::EndpointEdit { input, error: None };
                    None
                }
                Action::Cancel => None,
                Action::Submit => match self.parse_endpoints(&input) {
                    Ok(ids) => {
                        self.filter.related_to = ids;
                        self.filter_changed()
                    }
                    Err(e) => {
                        self.mode = Mode::EndpointEdit { input, error: Some(e) };
                        None
                    }
                },
                _ => {
                    self.mode = Mode::EndpointEdit { input, error };
                    None
                }
            },
            Mode::Picker { selected } => match action {
                Action::Up(n) => {
                    self.mode = Mode::Picker { selected: selected.saturating_sub(n) };
                    None
                }
                Action::Down(n) => {
                    let last = self.endpoints.len().saturating_sub(1);
                    self.mode = Mode::Picker { selected: (selected + n).min(last) };
                    None
                }
                Action::Submit => match self.endpoints.get(selected) {
                    Some(ep) => {
                        self.filter.related_to = vec![ep.id];
                        self.filter_changed()
                    }
                    None => None,
                },
                Action::Quit | Action::Cancel | Action::Picker => None,
                _ => {
                    self.mode = Mode::Picker { selected };
                    None
                }
            },
        }
    }

    fn apply_normal(&mut self, action: Action) -> Option<Effect> {
        if self.view == View::Connections {
            let page = self.page.max(1);
            match action {
                Action::Up(n) => self.move_connection(false, n),
                Action::Down(n) => self.move_connection(true, n),
                Action::PageUp => self.move_connection(false, page),
                Action::PageDown => self.move_connection(true, page),
                Action::Follow => self.connection_selected = None,
                _ => return self.apply_both(action),
            }
            return None;
        }
        self.apply_both(action)
    }

    /// Actions that mean the same in both views, and the flow view's scrolling.
    fn apply_both(&mut self, action: Action) -> Option<Effect> {
        match action {
            Action::SwitchView => {
                self.view = match self.view {
                    View::Flows => View::Connections,
                    View::Connections => View::Flows,
                };
            }
            Action::ToggleVerdictsOnly => {
                self.verdicts_only = !self.verdicts_only;
                self.scroll = 0;
            }
            Action::Quit | Action::ForceQuit => return Some(Effect::Quit),
            Action::Cancel if self.detail => self.detail = false,
            Action::Cancel => return Some(Effect::Quit),
            Action::TogglePause => {
                if self.following {
                    self.following = false;
                } else {
                    self.follow();
                }
            }
            Action::Up(n) => self.scroll_up(n),
            Action::Down(n) => self.scroll = self.scroll.saturating_sub(n),
            Action::PageUp => self.scroll_up(self.page.max(1)),
            Action::PageDown => self.scroll = self.scroll.saturating_sub(self.page.max(1)),
            Action::Follow => self.follow(),
            Action::Search => self.mode = Mode::Search { input: self.search.clone() },
            Action::EditEndpoints => {
                let input = self.filter.related_to.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
                self.mode = Mode::EndpointEdit { input, error: None };
            }
            Action::CycleVerdict => {
                self.filter.verdicts = match self.filter.verdicts.as_slice() {
                    [] => vec![Verdict::Forwarded],
                    [Verdict::Forwarded] => vec![Verdict::Dropped],
                    [Verdict::Dropped] => vec![Verdict::Audit],
                    _ => Vec::new(),
                };
                return self.filter_changed();
            }
            Action::CycleType => {
                let order =
                    [EventType::PolicyVerdict, EventType::Drop, EventType::Trace, EventType::Capture, EventType::Agent];
                self.filter.event_types = match self.filter.event_types.as_slice() {
                    [] => vec![order[0]],
                    [t] => order
                        .iter()
                        .position(|o| o == t)
                        .and_then(|i| order.get(i + 1))
                        .map(|t| vec![*t])
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                return self.filter_changed();
            }
            Action::Submit => self.detail = !self.detail,
            Action::Picker => {
                self.mode = Mode::Picker { selected: 0 };
                return Some(Effect::FetchEndpoints);
            }
            Action::Help => self.mode = Mode::Help,
            Action::Input(_) | Action::Backspace => {}
        }
        None
    }

    /// `12, default/database, web` → ids the agent knows; empty → none (all endpoints).
    fn parse_endpoints(&self, input: &str) -> Result<Vec<u16>, String> {
        let refs = input
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::parse::<EndpointRef>)
            .collect::<Result<Vec<_>, String>>()?;
        let ids = refs
            .iter()
            .map(|r| match r {
                EndpointRef::Id(id) => Ok(*id),
                name => name.resolve(&self.endpoints).map_err(|e| e.to_string()),
            })
            .collect::<Result<Vec<u16>, String>>()?;
        if !self.endpoints.is_empty() {
            let f = FlowFilter { related_to: ids.clone(), ..FlowFilter::default() };
            if let Some(e) = unknown_endpoint(&f, &self.endpoints) {
                return Err(e);
            }
        }
        Ok(ids)
    }

    /// `12 (default/backend), 7 (default/database)`, or `all endpoints`.
    pub fn followed(&self) -> String {
        if self.filter.related_to.is_empty() {
            "all endpoints".into()
        } else {
            self.filter.related_to.iter().map(|id| self.endpoint_name(*id)).collect::<Vec<_>>().join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flowgate_proto::{flow::fixtures::flow_between, hubble::fixtures, message::LostEvents};

    use super::*;
    use crate::monitor::tests::endpoint;

    fn state() -> State {
        State::new(
            FlowFilter::default(),
            vec![endpoint(1, "client"), endpoint(2, "web"), endpoint(7, "database")],
            "/s".into(),
        )
    }

    fn flows(n: usize) -> Vec<Event> {
        (0..n).map(|i| Event::Flow(Arc::new(flow_between(1, 2, 1000 + i as u16)))).collect()
    }

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let mut s = state();
        s.push_events(flows(HISTORY + 5), 0);
        assert_eq!(s.history.len(), HISTORY);
        assert_eq!(s.history.front().unwrap().flow.source_port, 1005);
        assert_eq!(s.history.back().unwrap().flow.source_port, 1000 + (HISTORY + 4) as u16);
    }

    #[test]
    fn counters_by_verdict_losses_and_rate() {
        let mut s = state();
        let events = vec![
            Event::Flow(Arc::new(fixtures::verdict_allowed())),
            Event::Flow(Arc::new(fixtures::verdict_denied())),
            Event::Flow(Arc::new(fixtures::drop())),
            Event::Flow(Arc::new(fixtures::verdict_audit())),
            Event::Flow(Arc::new(fixtures::trace_egress())),
            Event::Lost(LostEvents { source: LossSource::KernelBuffer, count: 10 }),
            Event::Lost(LostEvents { source: LossSource::ClientQueue, count: 3 }),
        ];
        s.push_events(events, 500);
        assert_eq!(s.totals, Totals { allowed: 1, denied: 2, audit: 1 });
        s.local_loss = (4, 1);
        assert_eq!(s.losses(), (11, 7));
        assert_eq!(s.rate.per_second(), 0, "the first second is not complete");
        s.push_events(flows(7), 1500);
        assert_eq!(s.rate.per_second(), 5);
        s.tick(4200);
        assert_eq!(s.rate.history.iter().copied().collect::<Vec<_>>(), vec![5, 7, 0, 0]);
        s.tick(1_000_000);
        assert_eq!(s.rate.history.len(), RATE_WINDOW);
    }

    #[test]
    fn pause_freezes_scroll_selects_and_follow_resumes() {
        let mut s = state();
        s.page = 10;
        s.push_events(flows(50), 0);
        assert_eq!(s.selected().unwrap().source_port, 1049, "following selects the newest");
        assert_eq!(s.apply(Action::TogglePause), None);
        assert!(!s.following);
        s.push_events(flows(3), 0);
        assert_eq!((s.history.len(), s.unseen), (50, 3), "paused: counted, not shown");
        s.apply(Action::Up(2));
        assert_eq!(s.selected().unwrap().source_port, 1047);
        s.apply(Action::PageUp);
        assert_eq!(s.selected().unwrap().source_port, 1037);
        s.apply(Action::Up(1000));
        assert_eq!(s.selected().unwrap().source_port, 1000, "clamped at the oldest");
        s.apply(Action::PageDown);
        assert_eq!(s.selected().unwrap().source_port, 1010);
        s.apply(Action::Follow);
        assert!(s.following);
        assert_eq!((s.scroll, s.unseen), (0, 0));
        s.apply(Action::Up(1));
        assert!(!s.following, "scrolling back pauses");
        s.apply(Action::TogglePause);
        assert!(s.following);
    }

    #[test]
    fn search_filters_rows_as_typed_and_escape_clears_it() {
        let mut s = state();
        s.push_events(
            vec![Event::Flow(Arc::new(fixtures::verdict_denied())), Event::Flow(Arc::new(flow_between(1, 2, 1)))],
            0,
        );
        s.apply(Action::Search);
        for c in "DATABASE".chars() {
            s.apply(Action::Input(c));
        }
        assert_eq!(s.visible().len(), 1);
        s.apply(Action::Submit);
        assert_eq!((s.mode.clone(), s.search.as_str()), (Mode::Normal, "DATABASE"));
        s.apply(Action::Search);
        s.apply(Action::Cancel);
        assert_eq!((s.visible().len(), s.search.as_str()), (2, ""));
    }

    #[test]
    fn verdict_and_type_filters_cycle_and_resubscribe() {
        let mut s = state();
        let Some(Effect::Subscribe(f)) = s.apply(Action::CycleVerdict) else { panic!() };
        assert_eq!(f.verdicts, vec![Verdict::Forwarded]);
        s.apply(Action::CycleVerdict);
        s.apply(Action::CycleVerdict);
        assert_eq!(s.filter.verdicts, vec![Verdict::Audit]);
        s.apply(Action::CycleVerdict);
        assert!(s.filter.verdicts.is_empty());
        let seen: Vec<Vec<EventType>> = (0..6)
            .map(|_| {
                s.apply(Action::CycleType);
                s.filter.event_types.clone()
            })
            .collect();
        assert_eq!(seen[0], vec![EventType::PolicyVerdict]);
        assert_eq!(seen[1], vec![EventType::Drop]);
        assert_eq!(seen[5], Vec::<EventType>::new());
        s.push_events(vec![Event::Flow(Arc::new(fixtures::verdict_denied()))], 0);
        s.filter.verdicts = vec![Verdict::Forwarded];
        assert!(s.visible().is_empty(), "the filter applies to the history shown too");
    }

    #[test]
    fn endpoint_edit_checks_ids_against_the_agent() {
        let mut s = state();
        s.apply(Action::EditEndpoints);
        for c in "7, 99".chars() {
            s.apply(Action::Input(c));
        }
        assert_eq!(s.apply(Action::Submit), None);
        let Mode::EndpointEdit { error: Some(e), .. } = &s.mode else { panic!("{:?}", s.mode) };
        assert!(e.starts_with("no endpoint 99 on this agent; known endpoints: 1 (default/client)"), "{e}");
        s.apply(Action::Backspace);
        s.apply(Action::Backspace);
        let Some(Effect::Subscribe(f)) = s.apply(Action::Submit) else { panic!() };
        assert_eq!(f.related_to, vec![7]);
        assert_eq!(s.followed(), "7 (default/database)");
        s.apply(Action::EditEndpoints);
        for _ in 0..3 {
            s.apply(Action::Backspace);
        }
        for c in "default/web, client".chars() {
            s.apply(Action::Input(c));
        }
        let Some(Effect::Subscribe(f)) = s.apply(Action::Submit) else { panic!("{:?}", s.mode) };
        assert_eq!(f.related_to, vec![2, 1], "endpoints by name");
    }

    #[test]
    fn picker_fetches_then_subscribes_to_the_chosen_endpoint() {
        let mut s = state();
        assert_eq!(s.apply(Action::Picker), Some(Effect::FetchEndpoints));
        s.on_net(NetEvent::Endpoints(Ok(vec![endpoint(3, "a"), endpoint(4, "b")])), 0);
        s.apply(Action::Down(5));
        let Some(Effect::Subscribe(f)) = s.apply(Action::Submit) else { panic!() };
        assert_eq!(f.related_to, vec![4]);
        assert_eq!(s.mode, Mode::Normal);
    }

    #[test]
    fn quit_keys_and_escape_closes_panes_first() {
        let mut s = state();
        s.apply(Action::Submit);
        assert_eq!(s.apply(Action::Cancel), None);
        assert!(!s.detail);
        assert_eq!(s.apply(Action::Cancel), Some(Effect::Quit));
        s.apply(Action::Help);
        assert_eq!(s.apply(Action::Quit), None, "q closes help");
        assert_eq!(s.apply(Action::Quit), Some(Effect::Quit));
        s.apply(Action::Search);
        assert_eq!(s.apply(Action::ForceQuit), Some(Effect::Quit));
    }

    #[test]
    fn the_connections_view_holds_its_selection_by_connection_and_searches() {
        let mut s = state();
        s.push_events(flows(5), 0);
        s.apply(Action::SwitchView);
        assert_eq!(s.view, View::Connections);
        assert_eq!(s.selected_connection().unwrap().key.source_port, 1004, "the most recently active first");
        s.apply(Action::Down(2));
        assert_eq!(s.selected_connection().unwrap().key.source_port, 1002);
        s.push_events(flows(1), 0);
        assert_eq!(s.selected_connection().unwrap().key.source_port, 1002, "held while rows move");
        s.apply(Action::PageDown);
        assert_eq!(s.selected_connection().unwrap().key.source_port, 1001, "clamped at the last");
        s.apply(Action::Follow);
        assert_eq!(s.selected_connection().unwrap().key.source_port, 1000, "End: the most recent again");
        s.apply(Action::Search);
        for c in ":1003".chars() {
            s.apply(Action::Input(c));
        }
        s.apply(Action::Submit);
        assert_eq!(s.visible_connections().len(), 1);
        s.apply(Action::ToggleVerdictsOnly);
        assert!(s.visible_connections().is_empty(), "traces only: no decided connection");
        s.apply(Action::SwitchView);
        assert!(s.visible().is_empty(), "and no verdicts among the flows");
        s.apply(Action::ToggleVerdictsOnly);
        s.search.clear();
        s.filter.related_to = vec![7];
        assert!(s.visible_connections().is_empty(), "connections of endpoints no longer followed are not shown");
    }

    #[test]
    fn connection_state_follows_the_session() {
        let mut s = state();
        assert_eq!(s.connection, Connection::Connecting);
        s.on_net(NetEvent::Connected, 0);
        assert_eq!(s.connection, Connection::Connected);
        s.on_net(NetEvent::Disconnected { error: "gone".into(), retry_in: Duration::from_millis(500) }, 0);
        assert_eq!(s.connection, Connection::Disconnected { error: "gone".into(), retry_in_ms: 500 });
    }
}
