//! What the crafted-packet tests (BPF_PROG_TEST_RUN) share: a server pod that is the endpoint behind
//! loopback, where test runs happen, and a client pod that exists in the cluster (for selectors and the
//! ipcache) but on no interface the tests use.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use flowgate_agent::{
    controller,
    craft::{Transport, ipv4_packet, ipv6_packet},
    datapath::{self, Datapath, DatapathOptions},
    policy::PolicyEngine,
    state::{AgentInfo, AgentState},
};
use flowgate_common::counters::aggregation;
use flowgate_events::decode::{Record, decode, expand};
use flowgate_events::hub::{Hub, HubConfig};
use flowgate_policy::{ClusterView, ContainerPort, NamespaceInfo, Protocol as PolicyProtocol};
use flowgate_proto::endpoint::{Endpoint, NewEndpoint};

use crate::{TempDir, require_root};

/// skb->ifindex under BPF_PROG_TEST_RUN: the loopback device of the caller's namespace.
pub const TEST_RUN_IFINDEX: u32 = 1;
/// A program's return values: pass on to the next TCX program, or drop.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x200, 0, 0, 0, 0, 0x0a);
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x200, 0, 0, 0, 0, 0x0b);

/// The agent state and cluster of the two dual-stack pods `default/client` and `default/server` (labelled
/// `app=<name>`, declaring `ports`), with the server registered in `datapath` behind loopback.
pub fn two_pods(datapath: &mut Datapath, ports: &[ContainerPort]) -> (Arc<AgentState>, ClusterView) {
    let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
    let ns: BTreeMap<String, String> = [("kubernetes.io/metadata.name".to_string(), "default".to_string())].into();
    let pod = |name: &str, ip: Ipv4Addr, ipv6: Ipv6Addr, ifindex: u32| {
        let new = NewEndpoint {
            namespace: "default".into(),
            pod_name: name.into(),
            labels: [("app".to_string(), name.to_string())].into(),
            ipv4: ip,
            ipv6: Some(ipv6),
            interface: format!("lxc-{name}"),
            ifindex,
        };
        state.upsert_endpoint(new, &ns).expect("an endpoint id")
    };
    let client = pod("client", CLIENT, CLIENT6, 1000);
    let server = pod("server", SERVER, SERVER6, TEST_RUN_IFINDEX);
    datapath.set_endpoint(TEST_RUN_IFINDEX, datapath::endpoint_info(&server)).expect("register the server");
    let info = |ep: &Endpoint| controller::endpoint_pod_info(ep, ports.to_vec());
    let cluster = ClusterView {
        namespaces: vec![NamespaceInfo { name: "default".into(), labels: ns }],
        pods: vec![info(&client), info(&server)],
    };
    (state, cluster)
}

/// A loaded datapath with the two pods and a policy, and its events ring to read records from.
pub struct Fixture {
    pub datapath: Datapath,
    pub ring: RingBuf<MapData>,
    _dir: TempDir,
}

/// The server pod is the endpoint behind loopback (where test runs happen); the client pod exists in
/// the cluster view (for selectors and the ipcache) but not on this interface.
pub fn fixture(policy_yaml: &str, tag: &str) -> Fixture {
    fixture_with(policy_yaml, tag, |_| {})
}

pub fn fixture_with(policy_yaml: &str, tag: &str, tweak: impl FnOnce(&mut PolicyEngine)) -> Fixture {
    fixture_full(policy_yaml, tag, aggregation::NONE, tweak)
}

pub fn fixture_full(policy_yaml: &str, tag: &str, level: u64, tweak: impl FnOnce(&mut PolicyEngine)) -> Fixture {
    fixture_options(policy_yaml, tag, DatapathOptions { aggregation: level, ..DatapathOptions::default() }, tweak)
}

/// The fixture, its programs loaded with `options`.
pub fn fixture_options(
    policy_yaml: &str,
    tag: &str,
    options: DatapathOptions,
    tweak: impl FnOnce(&mut PolicyEngine),
) -> Fixture {
    require_root();
    let dir = TempDir::new(&format!("datapath-{tag}"));
    std::fs::write(dir.path().join("policy.yaml"), policy_yaml).unwrap();

    let mut datapath = Datapath::load(options).expect("load the datapath (root, BPF)");
    let ports = [
        ContainerPort { name: Some("sctp-80".into()), port: 80, protocol: PolicyProtocol::Sctp },
        ContainerPort { name: Some("tcp-80".into()), port: 80, protocol: PolicyProtocol::Tcp },
    ];
    let (state, cluster) = two_pods(&mut datapath, &ports);
    let mut engine = PolicyEngine::new(Some(dir.path().to_owned()), false);
    assert!(engine.reload(), "policy loads: {:?}", engine.status().errors);
    tweak(&mut engine);
    let (contents, snapshot) = engine.prepare(cluster.clone()).expect("the test policies fit the maps");
    state.set_policy(Arc::new(snapshot), engine.cidr_labels());
    datapath.apply_policy(&contents).expect("write the policy maps");
    let ring = datapath.take_events().unwrap();
    Fixture { datapath, ring, _dir: dir }
}

impl Fixture {
    /// Runs a program once on a packet; returns its verdict and the records it wrote.
    pub fn run(
        &mut self,
        program: &'static str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        transport: Transport,
    ) -> (u32, Vec<Record>) {
        self.run_frame(program, &ipv4_packet(src, dst, transport))
    }

    /// Runs a program once on an IPv6 packet; returns its verdict and the records it wrote.
    pub fn run6(
        &mut self,
        program: &'static str,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        transport: Transport,
    ) -> (u32, Vec<Record>) {
        self.run_frame(program, &ipv6_packet(src, dst, transport))
    }

    /// Runs a program once on a frame; returns its verdict and the records it wrote.
    pub fn run_frame(&mut self, program: &'static str, packet: &[u8]) -> (u32, Vec<Record>) {
        while self.ring.next().is_some() {}
        let result = self.datapath.test_run(program, packet, 1).expect("BPF_PROG_TEST_RUN");
        std::thread::sleep(Duration::from_millis(1));
        let mut records = Vec::new();
        while let Some(item) = self.ring.next() {
            records.extend(expand(decode(&item).expect("a record the agent can decode")));
        }
        (result.return_value, records)
    }
}

pub fn verdicts(records: &[Record]) -> Vec<(u8, u8, u16)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::PolicyVerdict(v) => Some((v.verdict, v.match_type, v.flow.dport)),
            _ => None,
        })
        .collect()
}

pub fn drops(records: &[Record]) -> usize {
    records.iter().filter(|r| matches!(r, Record::Drop(_))).count()
}

/// Drop reasons of the drop records among `records`.
pub fn drop_reasons(records: &[Record]) -> Vec<u8> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Drop(d) => Some(d.reason),
            _ => None,
        })
        .collect()
}

/// Connection-tracking states (`record::ct_state`) of the trace records among `records`.
pub fn trace_states(records: &[Record]) -> Vec<u8> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Trace(t) => Some(t.ct_state),
            _ => None,
        })
        .collect()
}
