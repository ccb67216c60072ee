//! `flowgate conntrack list [--endpoint ENDPOINT]`: the connections the datapath tracks, as
//! `cilium bpf ct list global` shows them: protocol, the opening packet's source and destination, the
//! direction at the endpoint, when the entry expires, its flags, the policy revision it was last allowed
//! under (`revoked` once a newer one no longer allows it), the allowing policy, and its counters.

use clap::{Args, Subcommand};
use flowgate_proto::message::{ConntrackEntry, Request, Response};

use crate::{
    client::{Output, SocketArg, render_structured, request},
    endpoint::not_found,
    endpoint_ref::{EndpointRef, id_over_socket},
    table::Table,
};

#[derive(Args, Debug)]
pub struct ConntrackArgs {
    #[command(subcommand)]
    command: ConntrackCommand,
}

#[derive(Subcommand, Debug)]
enum ConntrackCommand {
    /// The tracked connections of every endpoint, or of one.
    List {
        /// Only this endpoint's connections: its id, NAMESPACE/POD, or a pod name only one namespace has.
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<EndpointRef>,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Leave out the header line.
        #[arg(long)]
        no_headers: bool,
    },
}

pub fn run(args: &ConntrackArgs) -> anyhow::Result<()> {
    match &args.command {
        ConntrackCommand::List { endpoint, socket, output, no_headers } => {
            let endpoint = endpoint.as_ref().map(|e| id_over_socket(e, socket)).transpose()?;
            let entries = match request(socket, Request::ConntrackList { endpoint })? {
                Response::Conntrack(entries) => entries,
                Response::NotFound { what, known } => anyhow::bail!("{}", not_found(&what, &known)),
                other => anyhow::bail!("the agent answered `conntrack list` with something else: {other:?}"),
            };
            match output.structured() {
                None => print!("{}", render_list(&entries, !no_headers)),
                Some(format) => print!("{}", render_structured(&entries, format)?),
            }
        }
    }
    Ok(())
}

/// `59s`, `5h59m`, `expired` (awaiting collection).
fn expires(seconds: f64) -> String {
    if seconds < 0.0 {
        return "expired".into();
    }
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// The table of entries.
pub fn render_list(entries: &[ConntrackEntry], headers: bool) -> String {
    let mut table = Table::new(&[
        &["ENDPOINT"],
        &["PROTO"],
        &["SOURCE -> DESTINATION"],
        &["DIRECTION"],
        &["EXPIRES"],
        &["FLAGS"],
        &["REVISION"],
        &["POLICY"],
        &["PACKETS"],
        &["BYTES"],
    ]);
    for e in entries {
        let endpoint =
            if e.pod.is_empty() { e.endpoint_id.to_string() } else { format!("{} ({})", e.endpoint_id, e.pod) };
        let policies: Vec<String> = e.policies.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
        table.row([
            endpoint,
            e.protocol.name().to_ascii_uppercase(),
            format!("{}:{} -> {}:{}", e.source, e.source_port, e.destination, e.destination_port),
            e.direction.clone(),
            expires(e.expires_in_seconds),
            if e.flags.is_empty() { "-".to_owned() } else { e.flags.join(",") },
            e.revision.map_or_else(|| "revoked".to_owned(), |r| r.to_string()),
            if policies.is_empty() { "-".to_owned() } else { policies.join(",") },
            e.packets.to_string(),
            e.bytes.to_string(),
        ]);
    }
    table.render(headers)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use flowgate_proto::flow::{PolicyName, Protocol};

    use super::*;

    fn entry(revision: Option<u64>, flags: &[&str], expires_in_seconds: f64) -> ConntrackEntry {
        ConntrackEntry {
            protocol: Protocol::Udp,
            source: Ipv4Addr::new(10, 200, 0, 11).into(),
            source_port: 40000,
            destination: Ipv4Addr::new(10, 200, 0, 10).into(),
            destination_port: 81,
            direction: "ingress".into(),
            endpoint_id: 1,
            pod: "x/a".into(),
            expires_in_seconds,
            age_seconds: 3.0,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            revision,
            policies: vec![PolicyName { namespace: "x".into(), name: "allow-udp".into() }],
            packets: 4,
            bytes: 400,
        }
    }

    #[test]
    fn entries_read_like_cilium_ct_list() {
        let entries = [
            entry(Some(3), &["enforced", "reply-seen"], 59.4),
            ConntrackEntry { policies: Vec::new(), ..entry(None, &["enforced", "revoked"], -1.0) },
        ];
        assert_eq!(
            render_list(&entries, true),
            "\
ENDPOINT   PROTO   SOURCE -> DESTINATION                 DIRECTION   EXPIRES   FLAGS                 REVISION   POLICY        PACKETS   BYTES
1 (x/a)    UDP     10.200.0.11:40000 -> 10.200.0.10:81   ingress     59s       enforced,reply-seen   3          x/allow-udp   4         400
1 (x/a)    UDP     10.200.0.11:40000 -> 10.200.0.10:81   ingress     expired   enforced,revoked      revoked    -             4         400
"
        );
        assert_eq!(expires(7300.0), "2h01m");
        assert_eq!(expires(61.0), "1m01s");
    }
}
