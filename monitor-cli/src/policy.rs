//! `flowgate policy get [--endpoint ENDPOINT]`: the realized policy entries of each endpoint, as `cilium bpf
//! policy get` shows them: direction, peer (identity and labels, or CIDR), port/protocol, action, the
//! policies behind the entry, and its packet and byte counters. `flowgate policy describe` is in
//! [`crate::describe`], `flowgate policy test` in [`crate::policy_test`].

use clap::Args;
use flowgate_proto::message::{EndpointPolicy, Request, Response};

use crate::{
    client::{Output, SocketArg, render_structured, request},
    endpoint::{enforcement, not_found},
    endpoint_ref::{EndpointRef, id_over_socket},
    table::Table,
};

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(clap::Subcommand, Debug)]
enum PolicyCommand {
    /// Realized entries per endpoint.
    Get {
        /// Only this endpoint: its id, NAMESPACE/POD, or a pod name only one namespace has.
        #[arg(long, value_name = "ENDPOINT")]
        endpoint: Option<EndpointRef>,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Each policy of files or directories as `kubectl describe networkpolicy` prints it, the pods it
    /// selects (with --topology) and warnings for common mistakes.
    Describe(crate::describe::DescribeArgs),
    /// Would a connection be allowed, and by which policy? Answered from the policy maps in the kernel's
    /// lookup order, without sending a packet: offline for a policy directory on a lab topology, or live from
    /// the agent. --all predicts `lab probe --all`'s truth table; --with/--without lists what a change flips.
    Test(crate::policy_test::TestArgs),
}

pub fn run(args: &PolicyArgs) -> anyhow::Result<()> {
    let (endpoint, socket, output) = match &args.command {
        PolicyCommand::Get { endpoint, socket, output } => (endpoint, socket, output),
        PolicyCommand::Describe(describe) => return crate::describe::run(describe),
        PolicyCommand::Test(test) => return crate::policy_test::run(test),
    };
    let endpoint = endpoint.as_ref().map(|e| id_over_socket(e, socket)).transpose()?;
    let policies = match request(socket, Request::PolicyGet { endpoint })? {
        Response::Policy(p) => p,
        Response::NotFound { what, known } => anyhow::bail!("{}", not_found(&what, &known)),
        other => anyhow::bail!("the agent answered `policy get` with something else: {other:?}"),
    };
    match output.structured() {
        Some(format) => print!("{}", render_structured(&policies, format)?),
        None => print!("{}", render(&policies)),
    }
    Ok(())
}

fn port_text(protocol: Option<flowgate_proto::flow::Protocol>, ports: Option<(u16, u16)>) -> String {
    match (protocol, ports) {
        (None, _) => "ANY".into(),
        (Some(p), None) => format!("ANY/{}", p.name().to_uppercase()),
        (Some(p), Some((a, b))) if a == b => format!("{a}/{}", p.name().to_uppercase()),
        (Some(p), Some((a, b))) => format!("{a}-{b}/{}", p.name().to_uppercase()),
    }
}

/// One block per endpoint: a heading, then its entries.
pub fn render(policies: &[EndpointPolicy]) -> String {
    let mut out = String::new();
    for ep in policies {
        let names = |v: &[flowgate_proto::flow::PolicyName]| {
            if v.is_empty() { "-".to_owned() } else { v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ") }
        };
        out.push_str(&format!(
            "Endpoint {} ({}): ingress {} (selected by {}), egress {} (selected by {})\n",
            ep.endpoint_id,
            ep.pod,
            enforcement(ep.ingress),
            names(&ep.ingress_selected_by),
            enforcement(ep.egress),
            names(&ep.egress_selected_by)
        ));
        if ep.entries.is_empty() {
            out.push_str("  (no allow entries: everything not enforced passes, everything enforced is denied)\n\n");
            continue;
        }
        let mut table = Table::new(&[
            &["DIRECTION"],
            &["PEER"],
            &["IDENTITY"],
            &["PORT/PROTO"],
            &["ACTION"],
            &["POLICY"],
            &["PACKETS"],
            &["BYTES"],
        ]);
        for e in &ep.entries {
            table.multiline_row(vec![
                vec![e.direction.clone()],
                if e.labels.is_empty() { vec!["-".into()] } else { e.labels.clone() },
                vec![if e.identity == 0 { "ANY".into() } else { e.identity.to_string() }],
                vec![port_text(e.protocol, e.ports)],
                vec!["Allow".into()],
                e.policies.iter().map(ToString::to_string).collect(),
                vec![e.packets.to_string()],
                vec![e.bytes.to_string()],
            ]);
        }
        for line in table.render(true).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use flowgate_proto::{
        endpoint::Enforcement,
        flow::{PolicyName, Protocol},
        message::PolicyEntryView,
    };

    use super::*;

    #[test]
    fn renders_entries_like_cilium_bpf_policy_get() {
        let ep = EndpointPolicy {
            endpoint_id: 3,
            pod: "default/database".into(),
            ingress: Enforcement::Enabled,
            egress: Enforcement::Disabled,
            ingress_selected_by: vec![PolicyName { namespace: "default".into(), name: "db".into() }],
            egress_selected_by: vec![],
            entries: vec![PolicyEntryView {
                direction: "ingress".into(),
                identity: 257,
                labels: vec!["k8s:component=backend".into()],
                protocol: Some(Protocol::Tcp),
                ports: Some((5432, 5432)),
                policies: vec![PolicyName { namespace: "default".into(), name: "db".into() }],
                packets: 4,
                bytes: 296,
            }],
        };
        let text = render(&[ep]);
        assert!(text.starts_with("Endpoint 3 (default/database): ingress Enabled (selected by default/db), egress Disabled (selected by -)\n"), "{text}");
        assert!(text.contains("ingress"), "{text}");
        assert!(text.contains("5432/TCP"), "{text}");
        assert!(text.contains("k8s:component=backend"), "{text}");
        assert!(text.contains("default/db"), "{text}");
        assert_eq!(port_text(Some(Protocol::Udp), Some((80, 81))), "80-81/UDP");
        assert_eq!(port_text(None, None), "ANY");
    }
}
