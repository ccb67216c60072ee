//! The monitor as the demo shows it (the walkthrough's pods in three namespaces, the outside host, allowed
//! and denied connections and their forwarded packets) at the sizes people work in: 80x24, 120x40 and
//! 200x50, in both views, with the detail panes, and the checks the snapshots cannot make (verdict and
//! policy visible at 80x24, no word cut without an ellipsis, denied connections in red).

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use flowgate_proto::{
    Flow,
    endpoint::Endpoint,
    filter::FlowFilter,
    flow::{
        CtState, EventType, MatchType, Peer, PolicyAttribution, PolicyName, Protocol, TcpFlags, TrafficDirection,
        Verdict,
    },
    message::Event,
};
use ratatui::{Terminal, backend::TestBackend, style::Color};

use super::render;
use crate::monitor::{
    session::NetEvent,
    tests::endpoint,
    tui::state::{Action, State},
};

const T0: u64 = 1_764_877_938_510_000_000;

fn pod(id: u16, namespace: &str, name: &str, label: &str) -> (Endpoint, Arc<Peer>) {
    let mut ep = endpoint(id, name);
    ep.namespace = namespace.into();
    let (k, v) = label.split_once('=').unwrap();
    ep.labels = BTreeMap::from([(k.to_owned(), v.to_owned())]);
    ep.ipv4 = Ipv4Addr::new(10, 200, 0, 9 + id as u8);
    let peer = Peer {
        endpoint_id: id,
        identity: 256 + u32::from(id),
        namespace: namespace.into(),
        pod_name: name.into(),
        labels: vec![label.into()],
    };
    (ep, Arc::new(peer))
}

fn policy(name: &str) -> PolicyName {
    PolicyName { namespace: "default".into(), name: name.into() }
}

struct Demo {
    endpoints: Vec<Endpoint>,
    database: Arc<Peer>,
    peers: Vec<(Arc<Peer>, Ipv4Addr, bool)>,
}

fn demo() -> Demo {
    let (db, database) = pod(1, "default", "database", "component=database");
    let (be, backend) = pod(2, "default", "backend", "component=backend");
    let (fe, frontend) = pod(3, "default", "frontend", "component=frontend");
    let (dba, console) = pod(5, "dba-tools", "dba-console", "app=dba-console");
    let outside =
        Arc::new(Peer { identity: 16_777_217, labels: vec!["cidr:10.200.0.250/32".into()], ..Peer::default() });
    let world = Arc::new(Peer { identity: 2, labels: vec!["reserved:world".into()], ..Peer::default() });
    Demo {
        endpoints: vec![db, be, fe, dba],
        database,
        peers: vec![
            (backend, Ipv4Addr::new(10, 200, 0, 11), true),
            (frontend, Ipv4Addr::new(10, 200, 0, 12), false),
            (console, Ipv4Addr::new(10, 200, 0, 14), true),
            (outside, Ipv4Addr::new(10, 200, 0, 250), true),
            (world, Ipv4Addr::new(10, 200, 0, 251), false),
        ],
    }
}

/// One connection attempt to the database: the ingress verdict, then the handshake's packets if allowed,
/// the drop if denied.
fn attempt(d: &Demo, from: &(Arc<Peer>, Ipv4Addr, bool), port: u16, at: u64) -> Vec<Flow> {
    let (peer, ip, allowed) = from;
    let base = Flow {
        time_ns: at,
        ktime_ns: at,
        event_type: EventType::PolicyVerdict,
        verdict: if *allowed { Verdict::Forwarded } else { Verdict::Dropped },
        drop_reason: if *allowed { 0 } else { 133 },
        source_ip: (*ip).into(),
        destination_ip: Ipv4Addr::new(10, 200, 0, 10).into(),
        protocol: Protocol::Tcp,
        source_port: port,
        destination_port: 5432,
        tcp_flags: TcpFlags(TcpFlags::SYN),
        icmp_type: 0,
        icmp_code: 0,
        source: peer.clone(),
        destination: d.database.clone(),
        endpoint_id: 1,
        traffic_direction: TrafficDirection::Ingress,
        ifindex: 2,
        packet_len: 74,
        is_reply: Some(false),
        match_type: Some(if *allowed { MatchType::L3L4 } else { MatchType::None }),
        policy: Some(if *allowed {
            PolicyAttribution::AllowedBy(vec![policy("network-policy-walkthrough-db")])
        } else {
            PolicyAttribution::DefaultDeny {
                isolated_by: vec![policy("default-deny-ingress-policy"), policy("network-policy-walkthrough-db")],
            }
        }),
        ct_state: None,
        cpu: 0,
        policy_revision: None,
    };
    if !*allowed {
        return vec![base.clone(), Flow { event_type: EventType::Drop, time_ns: at + 1000, ..base }];
    }
    let trace = |dt: u64, reply: bool, flags: u8| {
        let mut f = Flow {
            time_ns: at + dt,
            event_type: EventType::Trace,
            tcp_flags: TcpFlags(flags),
            match_type: None,
            policy: None,
            is_reply: Some(reply),
            ct_state: Some(if reply { CtState::Reply } else { CtState::Established }),
            ..base.clone()
        };
        if reply {
            (f.source_ip, f.destination_ip) = (f.destination_ip, f.source_ip);
            (f.source_port, f.destination_port) = (f.destination_port, f.source_port);
            (f.source, f.destination) = (f.destination.clone(), f.source.clone());
            f.traffic_direction = TrafficDirection::Egress;
        }
        f
    };
    vec![
        base.clone(),
        trace(100_000, true, TcpFlags::SYN | TcpFlags::ACK),
        trace(200_000, false, TcpFlags::ACK),
        trace(300_000, false, TcpFlags::FIN | TcpFlags::ACK),
        trace(400_000, true, TcpFlags::FIN | TcpFlags::ACK),
    ]
}

/// Following the database, after three seconds of the demo's traffic.
fn state() -> State {
    let d = demo();
    let filter = FlowFilter { related_to: vec![1], ..FlowFilter::default() };
    let mut s = State::new(filter, d.endpoints.clone(), "/run/flowgate/labs/demo/agent.sock".into());
    s.on_net(NetEvent::Connected, 0);
    for second in 0..3u64 {
        let mut events = Vec::new();
        for (n, from) in d.peers.iter().enumerate() {
            let port = 40_000 + (second as u16) * 100 + n as u16;
            let at = T0 + second * 1_000_000_000 + n as u64 * 7_000_000;
            events.extend(attempt(&d, from, port, at).into_iter().map(|f| Event::Flow(Arc::new(f))));
        }
        s.push_events(events, second * 1000 + 10);
    }
    s.tick(4000);
    s
}

fn draw(state: &State, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| render(frame, state)).unwrap();
    terminal
}

fn screen(terminal: &Terminal<TestBackend>) -> Vec<String> {
    let buffer = terminal.backend().buffer();
    (0..buffer.area.height)
        .map(|y| (0..buffer.area.width).map(|x| buffer[(x, y)].symbol().to_owned()).collect())
        .collect()
}

fn connections_view() -> State {
    let mut s = state();
    s.apply(Action::SwitchView);
    s
}

#[test]
fn flows_80x24() {
    insta::assert_snapshot!(draw(&state(), 80, 24).backend());
}

#[test]
fn flows_120x40() {
    insta::assert_snapshot!(draw(&state(), 120, 40).backend());
}

#[test]
fn flows_200x50() {
    insta::assert_snapshot!(draw(&state(), 200, 50).backend());
}

#[test]
fn flows_verdicts_only_80x24() {
    let mut s = state();
    s.apply(Action::ToggleVerdictsOnly);
    insta::assert_snapshot!(draw(&s, 80, 24).backend());
}

#[test]
fn connections_80x24() {
    insta::assert_snapshot!(draw(&connections_view(), 80, 24).backend());
}

#[test]
fn connections_120x40() {
    insta::assert_snapshot!(draw(&connections_view(), 120, 40).backend());
}

#[test]
fn connections_200x50() {
    insta::assert_snapshot!(draw(&connections_view(), 200, 50).backend());
}

#[test]
fn connection_detail_with_its_events_120x40() {
    let mut s = connections_view();
    s.apply(Action::Down(1));
    s.apply(Action::Submit);
    insta::assert_snapshot!(draw(&s, 120, 40).backend());
}

#[test]
fn at_80x24_verdict_and_policy_are_visible_in_both_views() {
    for s in [state(), connections_view()] {
        let lines = screen(&draw(&s, 80, 24));
        let header = lines.iter().find(|l| l.contains("VERDICT")).expect("a header row");
        assert!(header.contains("POLICY"), "{header}");
        assert!(lines.iter().any(|l| l.contains("DENIED") && l.contains("default deny")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("network-policy-walk")), "{lines:#?}");
        assert!(!lines.iter().any(|l| l.contains("reserved:")), "labels shorten to their value: {lines:#?}");
        let wider = screen(&draw(&s, 120, 40));
        assert!(wider.iter().any(|l| l.contains("10.200.0.251 world ")), "{wider:#?}");
    }
}

#[test]
fn no_cell_is_cut_without_an_ellipsis_at_any_width() {
    let names = ["database", "backend", "frontend", "dba-console", "world", "network-policy-walkthrough-db"];
    for s in [state(), connections_view()] {
        for width in [80u16, 96, 120, 160, 200] {
            for line in screen(&draw(&s, width, 30)) {
                for word in line.split([' ', '│', '/', '[', ']', ',', '(', ')']).filter(|w| !w.is_empty()) {
                    let cut = names.iter().any(|n| n.starts_with(word) && n.len() > word.len() && word.len() > 2);
                    let ok = word.ends_with('…') || !cut || line.contains(&format!("{word}…"));
                    assert!(ok, "{width} columns: {word:?} cut without an ellipsis in {line:?}");
                }
            }
        }
    }
}

#[test]
fn denied_connections_stand_out_and_the_flow_view_keeps_its_place() {
    let mut s = connections_view();
    let lines = screen(&draw(&s, 120, 40));
    let terminal = draw(&s, 120, 40);
    let buffer = terminal.backend().buffer();
    let y = lines.iter().position(|l| l.contains("denied ") && l.contains("frontend")).expect("a denied row") as u16;
    let x = lines[y as usize].find("frontend").unwrap() as u16;
    let x = lines[y as usize][..x as usize].chars().count() as u16;
    assert_eq!(buffer[(x, y)].fg, Color::Red, "the whole denied row is red, names too");
    // The flow view, paused and scrolled back, is where it was after a look at the connections.
    s.apply(Action::SwitchView);
    s.apply(Action::TogglePause);
    s.apply(Action::Up(4));
    let before = s.selected().unwrap();
    s.apply(Action::SwitchView);
    s.apply(Action::Down(2));
    s.apply(Action::SwitchView);
    assert!(Arc::ptr_eq(&before, &s.selected().unwrap()), "the flow view keeps its selection");
}
