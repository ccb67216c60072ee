//! What the crafted-packet tests (BPF_PROG_TEST_RUN) share: a server pod that is the endpoint behind
//! loopback, where test runs happen, and a client pod that exists in the cluster (for selectors and the
//! ipcache) but on no interface the tests use.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use flowgate_agent::{
    datapath::{self, Datapath},
    state::{AgentInfo, AgentState},
};
use flowgate_events::hub::{Hub, HubConfig};
use flowgate_policy::{ClusterView, ContainerPort, NamespaceInfo, PodInfo};
use flowgate_proto::endpoint::{Endpoint, NewEndpoint};

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
        state.upsert_endpoint(new, &ns)
    };
    let client = pod("client", CLIENT, CLIENT6, 1000);
    let server = pod("server", SERVER, SERVER6, TEST_RUN_IFINDEX);
    datapath.set_endpoint(TEST_RUN_IFINDEX, datapath::endpoint_info(&server)).expect("register the server");
    let info = |ep: &Endpoint| PodInfo {
        endpoint_id: ep.id,
        namespace: ep.namespace.clone(),
        name: ep.pod_name.clone(),
        labels: ep.labels.clone(),
        ip: ep.ipv4,
        ipv6: ep.ipv6,
        identity: ep.identity,
        ports: ports.to_vec(),
    };
    let cluster = ClusterView {
        namespaces: vec![NamespaceInfo { name: "default".into(), labels: ns }],
        pods: vec![info(&client), info(&server)],
    };
    (state, cluster)
}
