//! `flowgate status`: the agent's version, uptime, events buffer, endpoint and identity counts, the
//! pipeline's counters, connection tracking's fill and the connected clients, as `cilium status` shows its agent.

use std::fmt::Write as _;

use clap::{Args, ValueEnum};
use flowgate_proto::message::{ConntrackStatus, Request, Response, Status};

use crate::{
    client::{SocketArg, Structured, render_structured, request},
    table::Table,
};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[arg(short, long, value_enum, default_value_t = StatusOutput::Table)]
    output: StatusOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StatusOutput {
    Table,
    Json,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let status = match request(&args.socket, Request::Status)? {
        Response::Status(status) => status,
        other => anyhow::bail!("the agent answered `status` with something else: {other:?}"),
    };
    match args.output {
        StatusOutput::Table => print!("{}", render(&status)),
        StatusOutput::Json => print!("{}", render_structured(&status, Structured::Json)?),
    }
    Ok(())
}

/// `1h02m03s`, `2m05s`, `7s`.
pub fn uptime(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// Bytes as KiB/MiB when they divide evenly enough to read.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / f64::from(1 << 10)),
        b => format!("{b} B"),
    }
}

/// `12/262144 entries (0.0%), 3 expired deleted, revision 4, re-checked on change`.
fn conntrack(ct: &ConntrackStatus) -> String {
    if ct.capacity == 0 {
        return "unknown (agent older than protocol 1.2)".into();
    }
    let fill = ct.entries as f64 * 100.0 / ct.capacity as f64;
    let on_change = if ct.keep_established { "kept on change" } else { "re-checked on change" };
    format!(
        "{}/{} entries ({fill:.1}%), {} expired deleted, revision {}, {on_change}",
        ct.entries, ct.capacity, ct.gc_deleted, ct.revision
    )
}

/// `tc (cls_bpf filters on clsact)`, `tcx (TCX links)`.
fn attach_mode(mode: &str) -> String {
    match mode {
        "" => "unknown (agent older than protocol 1.5)".into(),
        "tc" => "tc (cls_bpf filters on a clsact qdisc)".into(),
        "tcx" => "tcx (TCX links)".into(),
        other => other.into(),
    }
}

/// The status as `Key:   value` lines, then a table of clients.
pub fn render(status: &Status) -> String {
    let c = &status.counters;
    let protocol = status.protocol.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    let buffer = if status.events_buffer.kind.is_empty() {
        "unknown".to_owned()
    } else {
        format!("{}, {}", status.events_buffer.kind, size(status.events_buffer.size_bytes))
    };
    let mut lines = vec![
        ("Agent", format!("flowgate-agent {}", status.agent_version)),
        ("Protocol", protocol),
        ("Uptime", uptime(status.uptime_seconds)),
        ("Kernel", status.kernel.clone()),
        ("Events buffer", buffer),
        ("Attach mode", attach_mode(&status.attach_mode)),
        ("Endpoints", status.endpoints.to_string()),
        ("Identities", status.identities.to_string()),
        ("Policy revision", status.policy.revision.to_string()),
        ("Packets", c.packets.to_string()),
        (
            "Records",
            format!(
                "{} read, {} lost in the kernel, {} undecodable",
                c.records_read, c.records_lost_kernel, c.decode_errors
            ),
        ),
        ("Client queues", format!("{} events lost", c.client_queue_losses)),
        ("Verdict log", format!("{} written, {} lost", c.verdict_log_written, c.verdict_log_lost)),
        ("Policies", format!("{} loaded, {} errors", status.policy.loaded.len(), status.policy.errors.len())),
        ("Conntrack", conntrack(&status.conntrack)),
        ("Clients", status.clients.len().to_string()),
    ];
    let maps: Vec<String> = status
        .policy
        .maps
        .iter()
        .map(|m| {
            let percent = if m.capacity == 0 { 0.0 } else { m.entries as f64 * 100.0 / m.capacity as f64 };
            format!("{} {}/{} ({percent:.0}%)", m.map, m.entries, m.capacity)
        })
        .collect();
    if !maps.is_empty() {
        lines.insert(lines.len() - 1, ("Policy maps", maps.join(", ")));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in lines {
        let _ = writeln!(out, "{:<width$}   {value}", format!("{key}:"));
    }
    for error in &status.policy.errors {
        let _ = writeln!(out, "  policy error: {error}");
    }
    if !status.clients.is_empty() {
        let mut clients = Table::new(&[
            &["ID"],
            &["UID"],
            &["PID"],
            &["SOFTWARE"],
            &["SUBSCRIBED"],
            &["EVENTS SENT"],
            &["EVENTS LOST"],
        ]);
        for client in &status.clients {
            clients.row([
                client.id.to_string(),
                client.uid.to_string(),
                client.pid.to_string(),
                client.software.clone(),
                if client.subscribed { "yes" } else { "no" }.to_owned(),
                client.events_sent.to_string(),
                client.events_lost.to_string(),
            ]);
        }
        for line in clients.render(true).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use flowgate_proto::{
        ProtocolVersion,
        message::{ClientInfo, Counters, EventsBufferInfo, MapFill},
    };

    use super::*;

    #[test]
    fn uptime_and_sizes_read_like_a_person_writes_them() {
        assert_eq!(uptime(7.9), "7s");
        assert_eq!(uptime(125.0), "2m05s");
        assert_eq!(uptime(3723.0), "1h02m03s");
        assert_eq!(size(8 << 20), "8.0 MiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(12), "12 B");
    }

    #[test]
    fn status_lists_the_agent_then_its_clients() {
        let status = Status {
            agent_version: "0.1.0".into(),
            protocol: Some(ProtocolVersion { major: 1, minor: 0 }),
            uptime_seconds: 65.0,
            kernel: "6.8.0-1".into(),
            events_buffer: EventsBufferInfo { kind: "ringbuf".into(), size_bytes: 8 << 20 },
            attach_mode: "tc".into(),
            endpoints: 9,
            identities: 6,
            policy: flowgate_proto::message::PolicyStatus {
                revision: 3,
                loaded: vec!["x/wide".into()],
                errors: vec![
                    "policy set needs 288,000 policy entries, capacity 65,536; the last good set stays in \
                              effect"
                        .into(),
                ],
                maps: vec![
                    MapFill { map: "policy".into(), entries: 18_000, capacity: 65_536 },
                    MapFill { map: "ipcache".into(), entries: 2010, capacity: 16_384 },
                ],
                ..Default::default()
            },
            counters: Counters {
                records_read: 10,
                records_lost_kernel: 1,
                decode_errors: 0,
                client_queue_losses: 2,
                packets: 40,
                ..Counters::default()
            },
            clients: vec![ClientInfo {
                id: 4,
                uid: 0,
                pid: 99,
                software: "flowgate 0.1.0".into(),
                subscribed: true,
                events_sent: 8,
                events_lost: 2,
            }],
            conntrack: ConntrackStatus {
                entries: 12,
                capacity: 262_144,
                gc_deleted: 3,
                revision: 4,
                ..ConntrackStatus::default()
            },
        };
        assert_eq!(
            render(&status),
            "\
Agent:             flowgate-agent 0.1.0
Protocol:          1.0
Uptime:            1m05s
Kernel:            6.8.0-1
Events buffer:     ringbuf, 8.0 MiB
Attach mode:       tc (cls_bpf filters on a clsact qdisc)
Endpoints:         9
Identities:        6
Policy revision:   3
Packets:           40
Records:           10 read, 1 lost in the kernel, 0 undecodable
Client queues:     2 events lost
Verdict log:       0 written, 0 lost
Policies:          1 loaded, 1 errors
Conntrack:         12/262144 entries (0.0%), 3 expired deleted, revision 4, re-checked on change
Policy maps:       policy 18000/65536 (27%), ipcache 2010/16384 (12%)
Clients:           1
  policy error: policy set needs 288,000 policy entries, capacity 65,536; the last good set stays in effect
  ID   UID   PID   SOFTWARE         SUBSCRIBED   EVENTS SENT   EVENTS LOST
  4    0     99    flowgate 0.1.0   yes          8             2
"
        );
    }
}
