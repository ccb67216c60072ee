//! `flowgate endpoint list` and `flowgate endpoint get ENDPOINT`: the pods the agent enforces for, with
//! Cilium's columns (`cilium endpoint list`) plus the pod's namespace/name. An endpoint is given by id,
//! `namespace/pod` or pod name ([`crate::endpoint_ref`]).

use clap::{Args, Subcommand, ValueEnum};
use flowgate_proto::{
    endpoint::{Endpoint, EndpointState, Enforcement},
    message::{Request, Response},
};

use crate::{
    client::{Output, SocketArg, Structured, render_structured, request},
    endpoint_ref::{EndpointRef, id_over_socket},
    table::Table,
};

#[derive(Args, Debug)]
pub struct EndpointArgs {
    #[command(subcommand)]
    command: EndpointCommand,
}

#[derive(Subcommand, Debug)]
enum EndpointCommand {
    /// Every endpoint of the node.
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Leave out the header lines.
        #[arg(long)]
        no_headers: bool,
    },
    /// One endpoint, in full.
    Get {
        /// The endpoint: its id (as `endpoint list` shows it), NAMESPACE/POD, or a pod name only one namespace
        /// has.
        #[arg(value_name = "ENDPOINT")]
        endpoint: EndpointRef,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(short, long, value_enum, default_value_t = GetOutput::Json)]
        output: GetOutput,
    },
    /// Change an endpoint's configuration, e.g. `flowgate endpoint config default/database audit=on`.
    Config {
        /// The endpoint: its id, NAMESPACE/POD, or a pod name only one namespace has.
        #[arg(value_name = "ENDPOINT")]
        endpoint: EndpointRef,
        /// Settings: `audit=on|off`.
        #[arg(required = true)]
        settings: Vec<Setting>,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// A `KEY=VALUE` setting of `endpoint config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `audit=on|off`: would-be drops pass and are reported as AUDIT.
    Audit(bool),
}

impl std::str::FromStr for Setting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected KEY=VALUE, e.g. audit=on"))?;
        let on = match value {
            "on" | "true" | "enabled" => true,
            "off" | "false" | "disabled" => false,
            _ => return Err(format!("{s:?}: {key} takes on or off")),
        };
        match key {
            "audit" | "PolicyAuditMode" => Ok(Setting::Audit(on)),
            _ => Err(format!("{s:?}: unknown setting {key:?} (known: audit)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GetOutput {
    Json,
    Yaml,
}

pub fn run(args: &EndpointArgs) -> anyhow::Result<()> {
    match &args.command {
        EndpointCommand::List { socket, output, no_headers } => {
            let endpoints = match request(socket, Request::EndpointList)? {
                Response::Endpoints(eps) => eps,
                other => anyhow::bail!("the agent answered `endpoint list` with something else: {other:?}"),
            };
            match output.structured() {
                None => print!("{}", render_list(&endpoints, !no_headers)),
                Some(format) => print!("{}", render_structured(&endpoints, format)?),
            }
        }
        EndpointCommand::Get { endpoint, socket, output } => {
            let id = id_over_socket(endpoint, socket)?;
            let endpoint = match request(socket, Request::EndpointGet { id })? {
                Response::Endpoint(ep) => ep,
                Response::NotFound { what, known } => anyhow::bail!("{}", not_found(&what, &known)),
                other => anyhow::bail!("the agent answered `endpoint get` with something else: {other:?}"),
            };
            let format = match output {
                GetOutput::Json => Structured::Json,
                GetOutput::Yaml => Structured::Yaml,
            };
            print!("{}", render_structured(&endpoint, format)?);
        }
        EndpointCommand::Config { endpoint, settings, socket } => {
            let audit = settings.iter().map(|Setting::Audit(on)| *on).next_back();
            let id = id_over_socket(endpoint, socket)?;
            match request(socket, Request::EndpointConfig { id, audit })? {
                Response::EndpointConfigured(ep) => println!(
                    "endpoint {} ({}): policy enforcement ingress {}, egress {}",
                    ep.id,
                    ep.pod_ref(),
                    enforcement(ep.ingress_enforcement),
                    enforcement(ep.egress_enforcement)
                ),
                Response::NotFound { what, known } => anyhow::bail!("{}", not_found(&what, &known)),
                other => anyhow::bail!("the agent answered `endpoint config` with something else: {other:?}"),
            }
        }
    }
    Ok(())
}

/// `no endpoint 99 on this agent; known endpoints: 1 (x/a), 2 (x/b)`.
pub fn not_found(what: &str, known: &[String]) -> String {
    if known.is_empty() {
        format!("no {what} on this agent; it has no endpoints")
    } else {
        format!("no {what} on this agent; known endpoints: {}", known.join(", "))
    }
}

/// As `cilium endpoint list` spells it.
pub fn enforcement(e: Enforcement) -> &'static str {
    match e {
        Enforcement::Disabled => "Disabled",
        Enforcement::Enabled => "Enabled",
        Enforcement::Audit => "Audit",
    }
}

pub fn state(s: EndpointState) -> &'static str {
    match s {
        EndpointState::WaitingForIdentity => "waiting-for-identity",
        EndpointState::Regenerating => "regenerating",
        EndpointState::Ready => "ready",
        EndpointState::Disconnecting => "disconnecting",
        EndpointState::WaitingForInterface => "waiting-for-interface",
    }
}

/// The endpoint table: one label per line, as Cilium prints it.
pub fn render_list(endpoints: &[Endpoint], headers: bool) -> String {
    let mut table = Table::new(&[
        &["ENDPOINT"],
        &["POLICY (ingress)", "ENFORCEMENT"],
        &["POLICY (egress)", "ENFORCEMENT"],
        &["IDENTITY"],
        &["NAMESPACE/POD"],
        &["LABELS"],
        &["IPv6"],
        &["IPv4"],
        &["STATUS"],
    ]);
    for ep in endpoints {
        table.multiline_row(vec![
            vec![ep.id.to_string()],
            vec![enforcement(ep.ingress_enforcement).to_owned()],
            vec![enforcement(ep.egress_enforcement).to_owned()],
            vec![ep.identity.to_string()],
            vec![ep.pod_ref()],
            ep.label_list(),
            vec![ep.ipv6.map(|v6| v6.to_string()).unwrap_or_default()],
            vec![ep.ipv4.to_string()],
            vec![state(ep.state).to_owned()],
        ]);
    }
    table.render(headers)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ep(id: u16, pod: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            id,
            namespace: "x".into(),
            pod_name: pod.into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            identity: 1000 + u32::from(id),
            ipv4: Ipv4Addr::new(10, 244, 0, id as u8),
            ipv6: None,
            interface: "lxc0".into(),
            ifindex: 3,
            ingress_enforcement: Enforcement::Enabled,
            egress_enforcement: Enforcement::Disabled,
            state: EndpointState::Ready,
            invalid_source_drops: 0,
        }
    }

    #[test]
    fn list_has_ciliums_columns_and_one_label_per_line() {
        let mut b = ep(12, "b", &[("app", "b")]);
        b.ingress_enforcement = Enforcement::Audit;
        b.state = EndpointState::Regenerating;
        b.ipv6 = Some("fd00:10:244::c".parse().unwrap());
        let eps = [ep(1, "a", &[("app", "a"), ("tier", "web")]), b];
        assert_eq!(
            render_list(&eps, true),
            "\
ENDPOINT   POLICY (ingress)   POLICY (egress)   IDENTITY   NAMESPACE/POD   LABELS     IPv6             IPv4          STATUS
           ENFORCEMENT        ENFORCEMENT
1          Enabled            Disabled          1001       x/a             app=a                       10.244.0.1    ready
                                                                           tier=web
12         Audit              Disabled          1012       x/b             app=b      fd00:10:244::c   10.244.0.12   regenerating
"
        );
        assert!(render_list(&eps, false).starts_with("1    Enabled"));
    }

    #[test]
    fn unknown_id_lists_the_known_ones() {
        assert_eq!(
            not_found("endpoint 99", &["1 (x/a)".into(), "2 (x/b)".into()]),
            "no endpoint 99 on this agent; known endpoints: 1 (x/a), 2 (x/b)"
        );
        assert_eq!(not_found("endpoint 1", &[]), "no endpoint 1 on this agent; it has no endpoints");
    }
}
