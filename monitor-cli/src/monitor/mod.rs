//! `flowgate monitor`: the agent's events, live, as `cilium monitor` shows them: a TUI on a terminal,
//! Cilium-style text lines or Hubble-shaped JSON lines otherwise. The command-line filters
//! ([`FilterArgs`], shared with `verdicts export`) become one [`FlowFilter`] of the subscription, so
//! the agent does the filtering.

pub mod lines;
pub mod session;
pub mod tui;

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use flowgate_proto::{
    ProtocolVersion,
    client::Client,
    endpoint::Endpoint,
    filter::FlowFilter,
    message::{Request, Response, Subscription},
};

use crate::{
    client::{SocketArg, describe, software},
    endpoint::not_found,
    endpoint_ref::ResolveError,
    filter_args::FilterArgs,
};

#[derive(Args, Debug, Clone)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Start with up to N past events from the agent's history.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub last: u32,
    /// Output: the TUI (default on a terminal), text lines (default otherwise) or Hubble-shaped JSON lines.
    #[arg(short, long, value_enum)]
    pub output: Option<MonitorOutput>,
    /// Text lines: prefix each with its time and CPU.
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MonitorOutput {
    Tui,
    Text,
    Json,
}

impl MonitorArgs {
    /// The one filter the agent applies (every criterion given must hold), endpoint names resolved against
    /// the agent's `endpoints`.
    pub fn filter(&self, endpoints: &[Endpoint]) -> Result<FlowFilter, ResolveError> {
        self.filter.resolve(endpoints)
    }

    /// The subscription for `filter`, starting with `last` past events.
    pub fn subscription(filter: &FlowFilter, last: u32) -> Subscription {
        Subscription {
            allow: if filter.is_empty() { Vec::new() } else { vec![filter.clone()] },
            deny: Vec::new(),
            last,
            follow: true,
        }
    }
}

/// `1 (default/client), 2 (default/web)` style names of endpoints.
pub fn endpoint_names(endpoints: &[Endpoint]) -> Vec<String> {
    endpoints.iter().map(|e| format!("{} ({})", e.id, e.pod_ref())).collect()
}

/// The first endpoint id of `filter` the agent does not know, as a one-line error listing the known ones.
pub fn unknown_endpoint(filter: &FlowFilter, endpoints: &[Endpoint]) -> Option<String> {
    let ids = filter.related_to.iter().chain(&filter.from_endpoint).chain(&filter.to_endpoint);
    ids.copied()
        .find(|id| !endpoints.iter().any(|e| e.id == *id))
        .map(|id| not_found(&format!("endpoint {id}"), &endpoint_names(endpoints)))
}

/// Asks the agent for its endpoints on a connection of its own.
pub async fn fetch_endpoints(socket: &std::path::Path) -> anyhow::Result<Vec<Endpoint>> {
    agent_endpoints(socket).await.map(|(_, endpoints)| endpoints)
}

/// The agent's protocol version and its endpoints.
async fn agent_endpoints(socket: &std::path::Path) -> anyhow::Result<(ProtocolVersion, Vec<Endpoint>)> {
    let mut client = Client::connect(socket, &software()).await.map_err(|e| anyhow::anyhow!(describe(&e)))?;
    match client.request(Request::EndpointList).await.map_err(|e| anyhow::anyhow!(describe(&e)))? {
        Response::Endpoints(endpoints) => Ok((client.agent.protocol, endpoints)),
        other => anyhow::bail!("the agent answered `endpoint list` with something else: {other:?}"),
    }
}

/// An agent speaking protocol 1.0 would ignore `--policy` and read `--pod` as an exact
/// `namespace/name`: say so rather than show it other flows than asked for.
pub fn older_agent(filter: &FlowFilter, agent: ProtocolVersion) -> Option<String> {
    (agent.minor == 0 && filter.needs_protocol_1_1()).then(|| {
        format!(
            "the agent speaks protocol {agent}, which knows neither --policy nor --pod without a \
             namespace or as a name prefix; upgrade the agent, or give --pod as NAMESPACE/NAME"
        )
    })
}

/// The node name in JSON lines: this machine's hostname.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn run(args: &MonitorArgs) -> anyhow::Result<()> {
    let output =
        args.output.unwrap_or(if std::io::stdout().is_terminal() { MonitorOutput::Tui } else { MonitorOutput::Text });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        // Also checks that the agent is there and speaks our protocol before anything else happens.
        let (agent, endpoints) = agent_endpoints(&args.socket.socket).await?;
        let filter = args.filter(&endpoints)?;
        if let Some(message) = unknown_endpoint(&filter, &endpoints) {
            anyhow::bail!("{message}");
        }
        if let Some(message) = older_agent(&filter, agent) {
            anyhow::bail!("{message}");
        }
        match output {
            MonitorOutput::Tui => tui::run(args, filter, endpoints).await,
            MonitorOutput::Text | MonitorOutput::Json => lines::run(args, &filter, output == MonitorOutput::Json).await,
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use clap::Parser;
    use flowgate_proto::{
        endpoint::{EndpointState, Enforcement},
        flow::{EventType, Protocol, Verdict},
    };

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MonitorArgs,
    }

    fn parse(args: &[&str]) -> MonitorArgs {
        Cli::try_parse_from(std::iter::once("monitor").chain(args.iter().copied())).unwrap().args
    }

    pub fn endpoint(id: u16, pod: &str) -> Endpoint {
        Endpoint {
            id,
            namespace: "default".into(),
            pod_name: pod.into(),
            labels: BTreeMap::from([("app".to_owned(), pod.to_owned())]),
            identity: 1000 + u32::from(id),
            ipv4: Ipv4Addr::new(10, 200, 0, id as u8),
            ipv6: None,
            interface: format!("lxc{id}"),
            ifindex: 10 + u32::from(id),
            ingress_enforcement: Enforcement::Enabled,
            egress_enforcement: Enforcement::Disabled,
            state: EndpointState::Ready,
            invalid_source_drops: 0,
        }
    }

    #[test]
    fn flags_become_one_filter() {
        let args = parse(&[
            "--related-to",
            "7",
            "--related-to",
            "9",
            "--from",
            "1",
            "--to",
            "2",
            "-t",
            "drop",
            "--type",
            "policy-verdict",
            "--verdict",
            "denied",
            "-n",
            "default",
            "--pod",
            "default/web",
            "--port",
            "80",
            "--protocol",
            "tcp",
            "--last",
            "5",
            "-o",
            "json",
            "--socket",
            "/tmp/x.sock",
        ]);
        let f = args.filter(&[]).unwrap();
        assert_eq!(f.related_to, vec![7, 9]);
        assert_eq!((f.from_endpoint.clone(), f.to_endpoint.clone()), (vec![1], vec![2]));
        assert_eq!(f.event_types, vec![EventType::Drop, EventType::PolicyVerdict]);
        assert_eq!(f.verdicts, vec![Verdict::Dropped]);
        assert_eq!(
            (f.namespaces.clone(), f.pods.clone()),
            (vec!["default".to_owned()], vec!["default/web".parse().unwrap()])
        );
        assert_eq!((f.ports.clone(), f.protocols.clone()), (vec![80], vec![Protocol::Tcp]));
        let sub = MonitorArgs::subscription(&f, args.last);
        assert_eq!((sub.allow, sub.last, sub.follow), (vec![f], 5, true));
        assert_eq!(args.output, Some(MonitorOutput::Json));
        assert!(MonitorArgs::subscription(&FlowFilter::default(), 0).allow.is_empty(), "no filter: everything");
    }

    #[test]
    fn bad_values_are_rejected_by_the_parser() {
        let bad = |a: &[&str]| Cli::try_parse_from(std::iter::once("monitor").chain(a.iter().copied())).is_err();
        assert!(bad(&["--pod", "a/b/c"]));
        assert!(!bad(&["--pod", "web"]), "a name prefix in any namespace, as Hubble's --pod");
        assert!(bad(&["--verdict", "maybe"]));
        assert!(bad(&["-t", "packet"]));
        assert!(bad(&["--protocol", "gre"]));
        assert!(bad(&["--related-to", "x/"]));
        assert!(!bad(&["--related-to", "default/database"]), "an endpoint by name");
    }

    #[test]
    fn filters_an_older_agent_would_misread_are_refused() {
        let v1_0 = ProtocolVersion { major: 1, minor: 0 };
        let pod = |p: &str| FlowFilter { pods: vec![p.parse().unwrap()], ..FlowFilter::default() };
        assert_eq!(older_agent(&pod("default/web"), v1_0), None);
        assert!(older_agent(&pod("web"), v1_0).unwrap().contains("protocol 1.0"));
        assert_eq!(older_agent(&pod("web"), flowgate_proto::PROTOCOL_VERSION), None);
    }

    #[test]
    fn unknown_endpoint_lists_the_known_ones() {
        let eps = [endpoint(1, "client"), endpoint(2, "web")];
        let f = FlowFilter { related_to: vec![2], to_endpoint: vec![99], ..Default::default() };
        assert_eq!(
            unknown_endpoint(&f, &eps).unwrap(),
            "no endpoint 99 on this agent; known endpoints: 1 (default/client), 2 (default/web)"
        );
        assert_eq!(unknown_endpoint(&FlowFilter { from_endpoint: vec![1], ..Default::default() }, &eps), None);
    }
}
