//! A filter decides the same on a flow and on its Hubble JSON line read back: what the monitor shows
//! live, the verdict log keeps and `flowgate verdicts export` selects from the log agree, criterion by
//! criterion. Every flow goes through the writer (`hubble::flow_json`), text, and the reader
//! (`hubble::read_flow_json`); every filter is written as text, as in a configuration file.

use std::sync::Arc;

use flowgate_proto::{
    Flow,
    filter::{FilterSet, FlowFilter, StrictFilter},
    flow::{Peer, PolicyAttribution, PolicyName, fixtures::flow_between},
    hubble::{self, fixtures},
};

fn flows() -> Vec<(String, Flow)> {
    let mut flows: Vec<(String, Flow)> = fixtures::all().into_iter().map(|(n, f)| (n.to_owned(), f)).collect();
    flows.push(("between pods 3 and 4".into(), flow_between(3, 4, 41000)));
    let kube = Arc::new(Peer {
        endpoint_id: 21,
        identity: 9000,
        namespace: "kube-system".into(),
        pod_name: "coredns-5d78c9869d-abcde".into(),
        labels: vec!["k8s-app=kube-dns".into()],
    });
    let mut dns = fixtures::udp_to_world();
    dns.destination = kube;
    dns.policy = Some(PolicyAttribution::DefaultDeny {
        isolated_by: vec![PolicyName { namespace: "default".into(), name: "deny-egress".into() }],
    });
    flows.push(("to coredns, isolated".into(), dns));
    let x = |id: u16, pod: &str| {
        Arc::new(Peer {
            endpoint_id: id,
            identity: 7000 + u32::from(id),
            namespace: "x".into(),
            pod_name: pod.into(),
            labels: vec![format!("pod={pod}")],
        })
    };
    let mut in_x = flow_between(30, 31, 50000);
    (in_x.source, in_x.destination) = (x(30, "a"), x(31, "b"));
    flows.push(("x/a to x/b".into(), in_x));
    flows
}

/// Filters on every criterion, each as a configuration file would write it.
const FILTERS: &[&str] = &[
    r#"{}"#,
    r#"{"related_to": [7]}"#,
    r#"{"related_to": [21, 3]}"#,
    r#"{"from": [12]}"#,
    r#"{"to": [7, 4]}"#,
    r#"{"type": ["policy-verdict"]}"#,
    r#"{"type": ["drop", "trace"]}"#,
    r#"{"verdict": ["denied"]}"#,
    r#"{"verdict": ["FORWARDED", "AUDIT"]}"#,
    r#"{"namespace": ["kube-system"]}"#,
    r#"{"namespace": ["default"]}"#,
    r#"{"pod": ["database"]}"#,
    r#"{"pod": ["default/back"]}"#,
    r#"{"pod": ["kube-system/"]}"#,
    r#"{"pod": ["coredns-", "pod-3"]}"#,
    r#"{"pod": ["x/database", "x/b"]}"#,
    r#"{"label": ["component=database"]}"#,
    r#"{"label": ["k8s:component in (backend, web)"]}"#,
    r#"{"label": ["reserved:world"]}"#,
    r#"{"label": ["io.kubernetes.pod.namespace=default"]}"#,
    r#"{"label": ["!component"]}"#,
    r#"{"port": [5432]}"#,
    r#"{"port": [53, 41000]}"#,
    r#"{"protocol": ["UDP"]}"#,
    r#"{"protocol": ["icmp", "sctp"]}"#,
    r#"{"policy": ["default/network-policy-walkthrough-db"]}"#,
    r#"{"policy": ["default-deny-ingress-policy", "deny-egress"]}"#,
    r#"{"policy": ["allow-dns"]}"#,
    r#"{"verdict": ["denied"], "type": ["drop"], "pod": ["default/data"], "port": [5432]}"#,
];

fn filter(text: &str) -> FlowFilter {
    serde_json::from_str::<StrictFilter>(text).unwrap_or_else(|e| panic!("{text}: {e}")).0
}

#[test]
fn every_filter_decides_the_same_on_a_flow_and_on_its_json_line() {
    let flows = flows();
    let read_back: Vec<Flow> = flows
        .iter()
        .map(|(name, flow)| {
            let text = hubble::flow_json(flow, "node-1").to_string();
            let line = serde_json::from_str(&text).unwrap();
            hubble::read_flow_json(&line).unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
        })
        .collect();
    for text in FILTERS {
        let f = filter(text);
        let compiled = FilterSet::compile(std::slice::from_ref(&f), &[]);
        let mut matched = 0;
        for ((name, flow), json) in flows.iter().zip(&read_back) {
            let live = f.matches(flow);
            assert_eq!(live, f.matches(json), "{text} on {name}: flow and JSON line disagree");
            assert_eq!(live, compiled.matches(json), "{text} on {name}: compiled on the JSON line");
            matched += usize::from(live);
        }
        if *text != "{}" {
            assert!(matched > 0 && matched < flows.len(), "{text} matches {matched} of {} flows", flows.len());
        }
    }
}

#[test]
fn deny_lists_decide_the_same_too() {
    let flows = flows();
    let allow = [filter(r#"{"namespace": ["default"]}"#)];
    let deny = [filter(r#"{"type": ["trace"]}"#), filter(r#"{"pod": ["kube-system/"]}"#)];
    let set = FilterSet::compile(&allow, &deny);
    for (name, flow) in &flows {
        let line = hubble::flow_json(flow, "n");
        let json = hubble::read_flow_json(&line).unwrap();
        assert_eq!(set.matches(flow), set.matches(&json), "{name}");
        assert_eq!(set.matches(flow), flowgate_proto::filter::passes(&allow, &deny, flow), "{name}");
    }
}
