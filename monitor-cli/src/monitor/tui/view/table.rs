//! The flow table: time, source, destination, port/protocol, direction, verdict (in color), match type
//! and the policy that decided; the newest at the bottom, the selected row highlighted. Its columns follow
//! the terminal's width ([`fit`]); the texts here come in the shapes `fit` asks for, and the connections view
//! shares them.

use std::fmt::Display;

use flowgate_proto::{
    Flow,
    flow::{Peer, PolicyAttribution, Protocol, TrafficDirection},
    format,
};
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Row, Table},
};

use super::{
    fit::{self, Column, Shape, Step, ellipsize, text_width},
    thousands, verdict_style, verdict_word,
};
use crate::monitor::tui::state::State;

/// `12:12:18.510` (UTC), `12:12:18` in the short shape.
pub fn time_text(time_ns: u64, shape: &Shape) -> String {
    let secs = time_ns / 1_000_000_000;
    let ms = (time_ns / 1_000_000) % 1000;
    let hms = format!("{:02}:{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    if shape.short_time { hms } else { format!("{hms}.{ms:03}") }
}

/// The value of a label (`world` of `reserved:world`, `backend` of `component=backend`); none for a CIDR
/// label, which only repeats the address.
pub fn label_value(label: &str) -> Option<&str> {
    if label.starts_with("cidr:") {
        return None;
    }
    Some(label.rsplit_once(['=', ':']).map_or(label, |(_, value)| value))
}

/// `default/backend [12]` for an endpoint, `10.0.0.9 reserved:world` for other peers; shorter as `shape`
/// asks (`backend`, `10.0.0.9 world`). Squeezed to a width, what identifies the peer goes last: a pod keeps
/// its name and gives up its id, then its namespace's end (`dba-t…/dba-console`); an address gives up its
/// label.
pub fn peer_text(peer: &Peer, ip: impl Display, shape: &Shape) -> String {
    if !peer.pod_name.is_empty() {
        let namespace = (shape.home_namespace.as_deref() != Some(peer.namespace.as_str())).then_some(&*peer.namespace);
        let id = (peer.endpoint_id != 0 && !shape.no_ids).then_some(peer.endpoint_id);
        return pod_text(namespace, &peer.pod_name, id, shape.peer_width.unwrap_or(usize::MAX));
    }
    let label = peer.labels.first().and_then(|l| if shape.label_values { label_value(l) } else { Some(l.as_str()) });
    let text = match label {
        Some(label) => format!("{ip} {label}"),
        None => ip.to_string(),
    };
    match shape.peer_width {
        Some(width) if text_width(&text) > width && text_width(&ip.to_string()) <= width => ip.to_string(),
        Some(width) => ellipsize(&text, width),
        None => text,
    }
}

/// `ns/pod [id]` in at most `width` columns: without the id, then with the namespace ellipsized, then the
/// whole ellipsized.
fn pod_text(namespace: Option<&str>, pod: &str, id: Option<u16>, width: usize) -> String {
    let name = namespace.map_or_else(|| pod.to_owned(), |ns| format!("{ns}/{pod}"));
    let full = id.map_or_else(|| name.clone(), |id| format!("{name} [{id}]"));
    if text_width(&full) <= width {
        return full;
    }
    if text_width(&name) <= width {
        return name;
    }
    if let Some(ns) = namespace {
        let room = width.saturating_sub(text_width(pod) + 1);
        if room >= 2 {
            return format!("{}/{pod}", ellipsize(ns, room));
        }
    }
    ellipsize(&name, width)
}

/// The namespace the table may leave out: the one every pod among `peers` shares, else the one most of them
/// are in (the first such in name order on a tie); none without pods.
pub fn home_namespace<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Option<String> {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for peer in peers.into_iter().filter(|p| !p.pod_name.is_empty()) {
        *counts.entry(peer.namespace.as_str()).or_default() += 1;
    }
    let most = counts.values().copied().max()?;
    counts.into_iter().find(|(_, n)| *n == most).map(|(ns, _)| ns.to_owned())
}

/// `pods of default by name` for a table title when the shape leaves that namespace out.
pub fn home_title(shape: &Shape) -> String {
    shape.home_namespace.as_ref().map(|ns| format!("pods of {ns} by name")).unwrap_or_default()
}

/// `5432/TCP`, `icmp 8/0`.
pub fn port_text(flow: &Flow) -> String {
    match flow.protocol {
        Protocol::Icmp => format!("icmp {}/{}", flow.icmp_type, flow.icmp_code),
        Protocol::Other(n) => format!("proto {n}"),
        p => format!("{}/{}", flow.destination_port, p.name().to_uppercase()),
    }
}

pub fn direction_text(d: TrafficDirection) -> &'static str {
    match d {
        TrafficDirection::Ingress => "ingress",
        TrafficDirection::Egress => "egress",
        TrafficDirection::Unknown => "-",
    }
}

/// The policy column: who allowed, or `default deny (ns/isolating-policy)`; in the short shape names
/// without namespaces and default deny alone.
pub fn policy_cell(p: Option<&PolicyAttribution>, shape: &Shape) -> String {
    match p {
        Some(PolicyAttribution::DefaultDeny { .. }) if shape.short_policy => "default deny".into(),
        Some(PolicyAttribution::AllowedBy(names)) if shape.short_policy && !names.is_empty() => {
            names.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(",")
        }
        Some(PolicyAttribution::DefaultDeny { isolated_by }) if !isolated_by.is_empty() => {
            format!("default deny ({})", isolated_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
        }
        other => format::policy_text(other),
    }
}

/// First row index and the selected index (in `visible`) for a table of `height` rows.
pub fn window(len: usize, scroll: usize, height: usize) -> (usize, Option<usize>) {
    let Some(last) = len.checked_sub(1) else {
        return (0, None);
    };
    let selected = last.saturating_sub(scroll);
    let end = len.min(selected + 1 + scroll.min(height.saturating_sub(1)));
    (end.saturating_sub(height), Some(selected))
}

/// How the flow table gives way, first to last.
pub const STEPS: &[Step] = &[
    Step::NoNamespace,
    Step::LabelValues,
    Step::ShortPolicy,
    Step::Drop("MATCH"),
    Step::Drop("DIR"),
    Step::NoIds,
    Step::ShortTime,
    Step::SqueezePeers(18),
    Step::SqueezePeers(16),
    Step::SqueezePeers(14),
    Step::Drop("TIME"),
];
/// The policy column gets at least this much before other columns give way.
pub const POLICY_MIN: usize = 29;

/// What the policy column gets before other columns give way: [`POLICY_MIN`] (the walkthrough's
/// `network-policy-walkthrough-db` whole from 100 columns on), less on narrow terminals, where names matter
/// as much.
pub fn policy_min(width: usize) -> usize {
    POLICY_MIN.min(width * 3 / 10)
}

/// The flow table's columns for `flows` in `shape`.
pub fn columns(flows: &[&Flow], shape: &Shape) -> Vec<Column> {
    let column = |header: &'static str, cell: &dyn Fn(&Flow) -> String| Column {
        header,
        cells: flows.iter().map(|f| cell(f)).collect(),
    };
    let mut out = Vec::new();
    if shape.shows("TIME") {
        out.push(column("TIME (UTC)", &|f| time_text(f.time_ns, shape)));
    }
    out.push(column("SOURCE", &|f| peer_text(&f.source, f.source_ip, shape)));
    out.push(column("DESTINATION", &|f| peer_text(&f.destination, f.destination_ip, shape)));
    out.push(column("PORT", &port_text));
    if shape.shows("DIR") {
        out.push(column("DIR", &|f| direction_text(f.traffic_direction).to_owned()));
    }
    out.push(column("VERDICT", &|f| verdict_word(f).to_owned()));
    if shape.shows("MATCH") {
        out.push(column("MATCH", &|f| f.match_type.map_or("-", |m| format::match_text(Some(m))).to_owned()));
    }
    out.push(column("POLICY", &|f| policy_cell(f.policy.as_ref(), shape)));
    out
}

/// Rows and widths fitted to `width`; the style of each cell is the caller's.
pub fn fitted(flows: &[&Flow], width: usize) -> (Shape, Vec<Column>, Vec<usize>) {
    let home = home_namespace(flows.iter().flat_map(|f| [&*f.source, &*f.destination]));
    fit::fit(width, policy_min(width), STEPS, home.as_deref(), |shape| columns(flows, shape))
}

pub fn render(frame: &mut Frame, area: Rect, state: &State) {
    let visible = state.visible();
    let height = usize::from(area.height.saturating_sub(3));
    let (start, selected) = window(visible.len(), state.scroll, height);
    let shown: Vec<&Flow> = visible.iter().skip(start).take(height).map(|row| &*row.flow).collect();
    let (shape, columns, widths) = fitted(&shown, usize::from(area.width.saturating_sub(2)));
    let rows = shown.iter().enumerate().map(|(n, f)| {
        let cells = columns.iter().map(|c| {
            let cell = Cell::from(c.cells[n].clone());
            if c.header == "VERDICT" { cell.style(verdict_style(f.verdict).add_modifier(Modifier::BOLD)) } else { cell }
        });
        let mut r = Row::new(cells);
        if Some(start + n) == selected && !state.following {
            r = r.style(Style::new().bg(Color::DarkGray).add_modifier(Modifier::BOLD));
        }
        r
    });
    let header = Row::new(columns.iter().map(|c| c.header))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let namespace = home_title(&shape);
    let head = format!(
        "flows{}: {} shown of {} kept",
        if state.verdicts_only { " (verdicts and drops)" } else { "" },
        thousands(visible.len() as u64),
        thousands(state.history.len() as u64),
    );
    let following = if state.following { "following" } else { "paused" };
    let title = fit::title(&head, &[following.to_owned(), namespace], usize::from(area.width));
    let constraints = widths.iter().map(|w| Constraint::Length(u16::try_from(*w).unwrap_or(u16::MAX)));
    let table = Table::new(rows, constraints)
        .column_spacing(u16::try_from(fit::SPACING).unwrap_or(1))
        .header(header)
        .block(Block::bordered().title(Line::from(title)));
    frame.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_the_selection_in_view() {
        assert_eq!(window(0, 0, 10), (0, None));
        assert_eq!(window(5, 0, 10), (0, Some(4)));
        assert_eq!(window(100, 0, 10), (90, Some(99)));
        assert_eq!(window(100, 5, 10), (90, Some(94)));
        assert_eq!(window(100, 9, 10), (90, Some(90)));
        assert_eq!(window(100, 10, 10), (89, Some(89)), "scrolling past the top moves the window");
        assert_eq!(window(100, 99, 10), (0, Some(0)));
    }

    #[test]
    fn texts_in_every_shape() {
        let full = Shape::default();
        assert_eq!(time_text(flowgate_proto::hubble::fixtures::TIME_NS, &full), "12:12:18.510");
        let f = flowgate_proto::hubble::fixtures::udp_to_world();
        assert_eq!(peer_text(&f.destination, f.destination_ip, &full), "192.0.2.53 reserved:world");
        assert_eq!(peer_text(&f.source, f.source_ip, &full), "default/backend [12]");
        assert_eq!(port_text(&f), "53/UDP");
        let short = Shape {
            home_namespace: Some("default".into()),
            label_values: true,
            no_ids: true,
            short_time: true,
            ..full.clone()
        };
        assert_eq!(peer_text(&f.destination, f.destination_ip, &short), "192.0.2.53 world");
        assert_eq!(peer_text(&f.source, f.source_ip, &short), "backend");
        assert_eq!(time_text(flowgate_proto::hubble::fixtures::TIME_NS, &short), "12:12:18");
        let squeezed = Shape { peer_width: Some(14), label_values: true, ..Shape::default() };
        assert_eq!(peer_text(&f.destination, f.destination_ip, &squeezed), "192.0.2.53", "the address whole");
        let console =
            Peer { endpoint_id: 5, namespace: "dba-tools".into(), pod_name: "dba-console".into(), ..Peer::default() };
        assert_eq!(peer_text(&console, "10.200.0.14", &squeezed), "d…/dba-console", "the pod's name whole");
        let narrow = Shape { peer_width: Some(8), ..Shape::default() };
        assert_eq!(peer_text(&console, "10.200.0.14", &narrow), "dba-too…");
        let wide = Shape { peer_width: Some(25), ..Shape::default() };
        assert_eq!(peer_text(&console, "10.200.0.14", &wide), "dba-tools/dba-console [5]");
        assert_eq!(label_value("cidr:10.0.0.0/8"), None);
        assert_eq!(label_value("component=backend"), Some("backend"));
        let denied = flowgate_proto::hubble::fixtures::verdict_denied();
        assert_eq!(policy_cell(denied.policy.as_ref(), &full), "default deny (default/default-deny-ingress-policy)");
        let short_policy = Shape { short_policy: true, ..full };
        assert_eq!(policy_cell(denied.policy.as_ref(), &short_policy), "default deny");
    }
}
