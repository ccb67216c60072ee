//! The filter flags, in one place: `flowgate monitor` and `flowgate verdicts export` flatten the same
//! struct, and it builds `flowgate_proto::filter`'s model, whose values parse the same text as the
//! verdict log's configuration file. So `--pod web` or `--verdict denied` means the same live, in the
//! log's `include:` and in an export. Every criterion given must hold; a repeated flag matches any of
//! its values. Endpoints are given by id, `namespace/pod` or pod name ([`EndpointRef`]); names become ids
//! against the agent's endpoint list ([`FilterArgs::resolve`]).

use clap::Args;
use flowgate_proto::{
    endpoint::Endpoint,
    filter::{FlowFilter, LabelSelector, PodSelector, PolicySelector},
    flow::{EventType, Protocol, Verdict},
};

use crate::endpoint_ref::{EndpointRef, ResolveError};

#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterArgs {
    /// Only flows involving this endpoint (either side, or where observed): its id, NAMESPACE/POD, or a pod
    /// name only one namespace has; repeatable.
    #[arg(long, value_name = "ENDPOINT")]
    pub related_to: Vec<EndpointRef>,
    /// Only flows whose source is this endpoint (id, NAMESPACE/POD or POD); repeatable.
    #[arg(long, value_name = "ENDPOINT")]
    pub from: Vec<EndpointRef>,
    /// Only flows whose destination is this endpoint (id, NAMESPACE/POD or POD); repeatable.
    #[arg(long, value_name = "ENDPOINT")]
    pub to: Vec<EndpointRef>,
    /// Only events of this type: policy-verdict, drop, trace, capture, agent; repeatable.
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub types: Vec<EventType>,
    /// Only flows with this verdict: allowed, denied, audit (or FORWARDED, DROPPED, AUDIT); repeatable.
    #[arg(long, value_name = "VERDICT")]
    pub verdict: Vec<Verdict>,
    /// Only flows with a side in this namespace; repeatable.
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Vec<String>,
    /// Only flows with a pod on a side whose name starts with POD, in namespace NS if given (any
    /// otherwise; `NS/` is every pod of NS), as Hubble's --pod; repeatable.
    #[arg(long, value_name = "[NS/]POD")]
    pub pod: Vec<PodSelector>,
    /// Only flows with a side whose labels match this selector (`app=db,tier in (a,b)`, `k8s:app`,
    /// `reserved:world`); repeatable.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub label: Vec<LabelSelector>,
    /// Only flows with this source or destination port; repeatable.
    #[arg(long)]
    pub port: Vec<u16>,
    /// Only flows of this protocol: TCP, UDP, SCTP, ICMP; repeatable.
    #[arg(long)]
    pub protocol: Vec<Protocol>,
    /// Only flows this policy decided: allowed them, or isolated the endpoint that denied them
    /// (`[NS/]NAME`, any namespace without one); repeatable.
    #[arg(long, value_name = "[NS/]NAME")]
    pub policy: Vec<PolicySelector>,
}

impl FilterArgs {
    /// Whether an endpoint is given by name, so the agent's endpoint list is needed to build the filter.
    pub fn names_endpoints(&self) -> bool {
        self.related_to.iter().chain(&self.from).chain(&self.to).any(EndpointRef::is_name)
    }

    /// The one filter the flags make (every criterion given must hold), endpoint names resolved against
    /// `endpoints`; ids are taken as they are.
    pub fn resolve(&self, endpoints: &[Endpoint]) -> Result<FlowFilter, ResolveError> {
        let ids = |refs: &[EndpointRef]| -> Result<Vec<u16>, ResolveError> {
            refs.iter()
                .map(|r| match r {
                    EndpointRef::Id(id) => Ok(*id),
                    name => name.resolve(endpoints),
                })
                .collect()
        };
        Ok(FlowFilter {
            related_to: ids(&self.related_to)?,
            from_endpoint: ids(&self.from)?,
            to_endpoint: ids(&self.to)?,
            event_types: self.types.clone(),
            verdicts: self.verdict.clone(),
            namespaces: self.namespace.clone(),
            pods: self.pod.clone(),
            labels: self.label.clone(),
            ports: self.port.clone(),
            protocols: self.protocol.clone(),
            policies: self.policy.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        filter: FilterArgs,
    }

    fn parse(args: &[&str]) -> Result<FlowFilter, String> {
        Cli::try_parse_from(std::iter::once("flowgate").chain(args.iter().copied()))
            .map(|cli| cli.filter.resolve(&[]).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_flag_fills_its_criterion() {
        let f = parse(&[
            "--related-to",
            "7",
            "--from",
            "1",
            "--to",
            "2",
            "-t",
            "drop",
            "--type",
            "PolicyVerdict",
            "--verdict",
            "denied",
            "--verdict",
            "FORWARDED",
            "-n",
            "x",
            "--namespace",
            "y",
            "--pod",
            "web",
            "--pod",
            "x/db-",
            "-l",
            "app=db",
            "--label",
            "tier in (a,b)",
            "--port",
            "80",
            "--protocol",
            "udp",
            "--policy",
            "x/deny-all",
        ])
        .unwrap();
        let expected: FlowFilter = serde_json::from_str(
            r#"{"related_to": [7], "from": [1], "to": [2], "type": ["drop", "policy-verdict"],
                "verdict": ["denied", "allowed"], "namespace": ["x", "y"], "pod": ["web", "x/db-"],
                "label": ["app=db", "tier in (a,b)"], "port": [80], "protocol": ["UDP"],
                "policy": ["x/deny-all"]}"#,
        )
        .unwrap();
        assert_eq!(f, expected, "the flags and the configuration file's keys build the same filter");
        assert_eq!(parse(&[]).unwrap(), FlowFilter::default());
    }

    #[test]
    fn endpoint_names_become_ids_of_the_agents_endpoints() {
        use crate::monitor::tests::endpoint;
        let cli = Cli::try_parse_from(["flowgate", "--related-to", "default/database", "--from", "web", "--to", "3"])
            .unwrap();
        assert!(cli.filter.names_endpoints());
        let eps = [endpoint(7, "database"), endpoint(3, "web")];
        let f = cli.filter.resolve(&eps).unwrap();
        assert_eq!((f.related_to, f.from_endpoint, f.to_endpoint), (vec![7], vec![3], vec![3]));
        let e = cli.filter.resolve(&[endpoint(1, "other")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no endpoint named \"default/database\" on this agent; known endpoints: 1 (default/other)"
        );
        let ids = Cli::try_parse_from(["flowgate", "--related-to", "7"]).unwrap();
        assert!(!ids.filter.names_endpoints());
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        for (args, message) in [
            (&["--verdict", "maybe"][..], "invalid value 'maybe' for '--verdict <VERDICT>': unknown verdict"),
            (&["-t", "packet"][..], "invalid value 'packet' for '--type <TYPE>': unknown event type"),
            (&["--protocol", "gre"][..], "invalid value 'gre' for '--protocol <PROTOCOL>': unknown protocol"),
            (&["--pod", "a/b/c"][..], "invalid value 'a/b/c' for '--pod <[NS/]POD>': pod \"a/b/c\""),
            (&["--policy", "x/"][..], "invalid value 'x/' for '--policy <[NS/]NAME>': policy \"x/\": no name"),
            (&["--label", "a in b"][..], "invalid value 'a in b' for '--label <SELECTOR>': label selector"),
            (&["--related-to", "x/"][..], "invalid value 'x/' for '--related-to <ENDPOINT>': \"x/\": no pod name"),
            (&["--from", "99999"][..], "invalid value '99999' for '--from <ENDPOINT>'"),
            (&["--port", "70000"][..], "invalid value '70000' for '--port <PORT>'"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.starts_with(&format!("error: {message}")), "{args:?}: {e}");
        }
    }
}
