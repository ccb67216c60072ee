//! Connection tracking's lifetimes and revocation: the kernel programs on crafted packets
//! (BPF_PROG_TEST_RUN) through the agent's own policy path, with policy changes applied as the agent
//! applies them (a new generation, a new revision), and on real traffic from inside lab pods with a
//! running agent whose policy file changes under it.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use flowgate_agent::{
    craft::{Transport, ipv4_packet},
    datapath::{self, CtLifetimes, Datapath, DatapathOptions},
    policy::PolicyEngine,
    state::{AgentInfo, AgentState},
};
use flowgate_common::{
    Counter,
    counters::aggregation,
    drop_reason,
    names::{PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT},
    policy::verdict,
    record::tcp_flags::{ACK, FIN, RST, SYN},
};
use flowgate_events::{
    decode::{Record, decode},
    hub::{Hub, HubConfig},
};
use flowgate_policy::{ClusterView, NamespaceInfo, PodInfo};
use flowgate_proto::endpoint::NewEndpoint;
use flowgate_tests::{TempDir, require_root};

/// skb->ifindex under BPF_PROG_TEST_RUN: the loopback device of the caller's namespace.
const TEST_RUN_IFINDEX: u32 = 1;
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);

/// The server's ingress allows UDP and TCP port 80 from the client.
const ALLOW: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: UDP, port: 80}, {protocol: TCP, port: 80}]
";

/// The server's ingress allows nothing.
const DENY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
";

struct Fixture {
    datapath: Datapath,
    ring: RingBuf<MapData>,
    engine: PolicyEngine,
    cluster: ClusterView,
    state: Arc<AgentState>,
    dir: TempDir,
}

fn fixture(tag: &str, options: DatapathOptions) -> Fixture {
    require_root();
    let dir = TempDir::new(&format!("conntrack-{tag}"));
    std::fs::write(dir.path().join("policy.yaml"), ALLOW).unwrap();
    let mut datapath =
        Datapath::load(DatapathOptions { aggregation: aggregation::MEDIUM, ..options }).expect("load the datapath");
    let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
    let ns: BTreeMap<String, String> = [("kubernetes.io/metadata.name".to_string(), "default".to_string())].into();
    let pod = |name: &str, ip: Ipv4Addr, ifindex: u32| {
        state.upsert_endpoint(
            NewEndpoint {
                namespace: "default".into(),
                pod_name: name.into(),
                labels: [("app".to_string(), name.to_string())].into(),
                ipv4: ip,
                interface: format!("lxc-{name}"),
                ifindex,
            },
            &ns,
        )
    };
    let client = pod("client", CLIENT, 1000);
    let server = pod("server", SERVER, TEST_RUN_IFINDEX);
    datapath.set_endpoint(TEST_RUN_IFINDEX, datapath::endpoint_info(&server)).unwrap();
    let info = |ep: &flowgate_proto::endpoint::Endpoint| PodInfo {
        endpoint_id: ep.id,
        namespace: ep.namespace.clone(),
        name: ep.pod_name.clone(),
        labels: ep.labels.clone(),
        ip: ep.ipv4,
        identity: ep.identity,
        ports: Vec::new(),
    };
    let cluster = ClusterView {
        namespaces: vec![NamespaceInfo { name: "default".into(), labels: ns.clone() }],
        pods: vec![info(&client), info(&server)],
    };
    let engine = PolicyEngine::new(Some(dir.path().to_owned()), false);
    let ring = datapath.take_events().unwrap();
    let mut f = Fixture { datapath, ring, engine, cluster, state, dir };
    f.apply(ALLOW);
    f
}

impl Fixture {
    /// Replaces the policy and applies it as the agent does: a new generation and a new revision.
    fn apply(&mut self, yaml: &str) {
        std::fs::write(self.dir.path().join("policy.yaml"), yaml).unwrap();
        assert!(self.engine.reload(), "policy loads: {:?}", self.engine.status().errors);
        let (contents, snapshot) = self.engine.prepare(&self.cluster);
        self.state.set_policy(Arc::new(snapshot), self.engine.cidr_labels());
        self.datapath.apply_policy(&contents).expect("write the policy maps");
    }

    fn run(&mut self, program: &'static str, src: Ipv4Addr, dst: Ipv4Addr, transport: Transport) -> (u32, Vec<Record>) {
        while self.ring.next().is_some() {}
        let packet = ipv4_packet(src, dst, transport);
        let result = self.datapath.test_run(program, &packet, 1).expect("BPF_PROG_TEST_RUN");
        std::thread::sleep(Duration::from_millis(1));
        let mut records = Vec::new();
        while let Some(item) = self.ring.next() {
            records.push(decode(&item).expect("a record the agent can decode"));
        }
        (result.return_value, records)
    }

    /// A packet from the client to the server (the server's ingress).
    fn to_server(&mut self, transport: Transport) -> (u32, Vec<Record>) {
        self.run(PROG_TO_ENDPOINT, CLIENT, SERVER, transport)
    }

    /// A packet from the server to the client (the server's egress: replies).
    fn from_server(&mut self, transport: Transport) -> (u32, Vec<Record>) {
        self.run(PROG_FROM_ENDPOINT, SERVER, CLIENT, transport)
    }
}

fn verdicts(records: &[Record]) -> Vec<u8> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::PolicyVerdict(v) => Some(v.verdict),
            _ => None,
        })
        .collect()
}

/// (reason, revision) of each drop record.
fn drops(records: &[Record]) -> Vec<(u8, u32)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Drop(d) => Some((d.reason, d.revision)),
            _ => None,
        })
        .collect()
}

const NONE: Vec<u8> = Vec::new();
const NO_DROPS: Vec<(u8, u32)> = Vec::new();

const UDP: Transport = Transport::Udp { sport: 40000, dport: 80 };
const UDP_REPLY: Transport = Transport::Udp { sport: 80, dport: 40000 };

fn tcp(flags: u8) -> Transport {
    Transport::Tcp { sport: 41000, dport: 80, flags }
}

fn tcp_reply(flags: u8) -> Transport {
    Transport::Tcp { sport: 80, dport: 41000, flags }
}

#[test]
fn a_connection_the_new_policy_denies_is_revoked_and_one_it_allows_goes_on() {
    let mut f = fixture("revoke", DatapathOptions::default());
    let (ret, records) = f.to_server(UDP);
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![verdict::ALLOWED]));
    let (ret, records) = f.from_server(UDP_REPLY);
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, NONE), "a reply passes through conntrack");

    // A change that still allows the flow: the entry is re-stamped, no verdict, no drop.
    f.apply(&format!("{ALLOW}---{}", DENY.replace("deny-all", "also-selects-server")));
    let (ret, records) = f.to_server(UDP);
    assert_eq!((ret, verdicts(&records), drops(&records)), (TC_ACT_UNSPEC, NONE, NO_DROPS));

    // The policy stops allowing it: the next packet either way is dropped as revoked, naming the revision.
    let before = f.datapath.counters().unwrap().get(Counter::Revoked);
    f.apply(DENY);
    let revision = f.datapath.revision() as u32;
    let (ret, records) = f.to_server(UDP);
    assert_eq!(ret, TC_ACT_SHOT, "revoked: {records:?}");
    assert_eq!(drops(&records), vec![(drop_reason::CONNECTION_REVOKED, revision)]);
    assert!(verdicts(&records).is_empty(), "a revocation is a drop of a tracked connection, not a new verdict");
    let (ret, records) = f.from_server(UDP_REPLY);
    assert_eq!(ret, TC_ACT_SHOT, "the server's replies do not reopen the revoked connection");
    assert_eq!(drops(&records), vec![(drop_reason::CONNECTION_REVOKED, revision)]);
    assert_eq!(f.datapath.counters().unwrap().get(Counter::Revoked), before + 2);

    // Allowed again: the revoked entry is re-checked and resumed.
    f.apply(ALLOW);
    let (ret, records) = f.to_server(UDP);
    assert_eq!((ret, verdicts(&records), drops(&records)), (TC_ACT_UNSPEC, NONE, NO_DROPS));
}

#[test]
fn keep_established_keeps_connections_the_new_policy_denies() {
    let mut f = fixture("keep", DatapathOptions { keep_established: true, ..DatapathOptions::default() });
    let (ret, _) = f.to_server(UDP);
    assert_eq!(ret, TC_ACT_UNSPEC);
    f.apply(DENY);
    let (ret, records) = f.to_server(UDP);
    assert_eq!((ret, drops(&records)), (TC_ACT_UNSPEC, NO_DROPS), "--keep-established: the usual behaviour");
    // A new connection still gets the new policy's verdict.
    let (ret, records) = f.to_server(Transport::Udp { sport: 40001, dport: 80 });
    assert_eq!((ret, verdicts(&records)), (TC_ACT_SHOT, vec![verdict::DENIED]));
}

#[test]
fn a_syn_after_an_rst_or_a_fin_each_way_gets_a_new_verdict() {
    let mut f = fixture("close", DatapathOptions::default());
    assert_eq!(verdicts(&f.to_server(tcp(SYN)).1), vec![verdict::ALLOWED]);
    f.from_server(tcp_reply(SYN | ACK));
    assert_eq!(verdicts(&f.to_server(tcp(ACK)).1), NONE, "established");
    assert_eq!(f.from_server(tcp_reply(RST)).0, TC_ACT_UNSPEC);
    // Stragglers of the closed connection still pass (within the close lifetime) without a verdict...
    assert_eq!(verdicts(&f.to_server(tcp(ACK)).1), NONE);
    // ...but a SYN on the same ports is a new connection with a verdict of its own.
    let (ret, records) = f.to_server(tcp(SYN));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![verdict::ALLOWED]));

    // The same after a FIN each way; a FIN one way only is not a close.
    f.from_server(tcp_reply(SYN | ACK));
    f.to_server(tcp(FIN | ACK));
    assert_eq!(verdicts(&f.to_server(tcp(SYN)).1), NONE, "half-closed: a SYN is part of the connection");
    f.from_server(tcp_reply(FIN | ACK));
    assert_eq!(verdicts(&f.to_server(tcp(SYN)).1), vec![verdict::ALLOWED]);

    // Under a policy that denies it, the new connection on the old ports is denied.
    f.from_server(tcp_reply(RST));
    let mut keep = f;
    keep.apply(DENY);
    let (ret, records) = keep.to_server(tcp(SYN));
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(verdicts(&records), vec![verdict::DENIED], "a new verdict, not a resumed connection");
}

#[test]
fn expired_entries_need_a_new_verdict_and_are_collected() {
    let lifetimes = CtLifetimes {
        tcp: Duration::from_secs(3600),
        other: Duration::from_millis(300),
        close: Duration::from_millis(300),
    };
    let mut f = fixture("expire", DatapathOptions { ct_lifetimes: lifetimes, ..DatapathOptions::default() });
    assert_eq!(verdicts(&f.to_server(UDP).1), vec![verdict::ALLOWED]);
    assert_eq!(verdicts(&f.to_server(UDP).1), NONE, "tracked");
    assert_eq!(verdicts(&f.to_server(tcp(SYN)).1), vec![verdict::ALLOWED]);
    f.from_server(tcp_reply(SYN | ACK));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(verdicts(&f.to_server(UDP).1), vec![verdict::ALLOWED], "idle past its lifetime: a new verdict");
    assert_eq!(verdicts(&f.to_server(tcp(ACK)).1), NONE, "an answered TCP connection lives longer");

    // The garbage collector deletes what expired and keeps what lives.
    std::thread::sleep(Duration::from_millis(700));
    f.to_server(tcp(ACK));
    let entries = f.datapath.conntrack_entries().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (deleted, left) = f.datapath.conntrack_gc(datapath::monotonic_now_ns()).unwrap();
    assert_eq!((deleted, left), (1, 1));
    assert_eq!(f.datapath.conntrack_entries().unwrap()[0].0.protocol, flowgate_common::ip::protocol::TCP);
}
