//! Connection tracking's lifetimes and revocation: the kernel programs on crafted packets
//! (BPF_PROG_TEST_RUN) through the agent's own policy path, with policy changes applied as the agent
//! applies them (a new generation, a new revision), and on real traffic from inside lab pods with a
//! running agent whose policy file changes under it.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use flowgate_agent::{
    craft::{Transport, ipv4_packet},
    datapath::{self, CtLifetimes, Datapath, DatapathOptions},
    map_batch,
    policy::PolicyEngine,
    state::AgentState,
};
use flowgate_common::{
    Counter,
    counters::aggregation,
    drop_reason,
    names::{PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT},
    policy::verdict,
    record::tcp_flags::{ACK, FIN, RST, SYN},
};
use flowgate_events::decode::{Record, decode, expand};
use flowgate_policy::ClusterView;
use flowgate_proto::{
    client::Client,
    filter::FlowFilter,
    flow::{EventType, Flow},
    message::{ConntrackStatus, Event, Request, Response, Subscription},
};
use flowgate_tests::{
    LabGuard, TempDir,
    agent::{AgentGuard, SocketDir, runtime, wait_subscribed},
    example, flowgate_ok, require_root,
    test_run::{CLIENT, SERVER, TC_ACT_SHOT, TC_ACT_UNSPEC, TEST_RUN_IFINDEX, two_pods},
};

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

/// The server's ingress allows the client on TCP port 80; its egress allows nothing.
const ALLOW_IN_DENY_OUT: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-only-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 80}]
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
    let (state, cluster) = two_pods(&mut datapath, &[]);
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
        let (contents, snapshot) = self.engine.prepare(self.cluster.clone()).expect("the policy fits the maps");
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
            records.extend(expand(decode(&item).expect("a record the agent can decode")));
        }
        (result.return_value, records)
    }

    /// A packet from the client to the server (the server's ingress).
    fn client_sends(&mut self, transport: Transport) -> (u32, Vec<Record>) {
        self.run(PROG_TO_ENDPOINT, CLIENT, SERVER, transport)
    }

    /// A packet from the server to the client (the server's egress: replies).
    fn server_sends(&mut self, transport: Transport) -> (u32, Vec<Record>) {
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

const UDP: Transport = Transport::Udp { sport: UDP_PORT, dport: 80 };
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
    let (ret, records) = f.client_sends(UDP);
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![verdict::ALLOWED]));
    let (ret, records) = f.server_sends(UDP_REPLY);
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, NONE), "a reply passes through conntrack");

    // A change that still allows the flow: the entry is re-stamped, no verdict, no drop.
    f.apply(&format!("{ALLOW}---{}", DENY.replace("deny-all", "also-selects-server")));
    let (ret, records) = f.client_sends(UDP);
    assert_eq!((ret, verdicts(&records), drops(&records)), (TC_ACT_UNSPEC, NONE, NO_DROPS));

    // The policy stops allowing it: the next packet either way is dropped as revoked, naming the revision.
    let before = f.datapath.counters().unwrap().get(Counter::Revoked);
    f.apply(DENY);
    let revision = f.datapath.revision() as u32;
    let (ret, records) = f.client_sends(UDP);
    assert_eq!(ret, TC_ACT_SHOT, "revoked: {records:?}");
    assert_eq!(drops(&records), vec![(drop_reason::CONNECTION_REVOKED, revision)]);
    assert!(verdicts(&records).is_empty(), "a revocation is a drop of a tracked connection, not a new verdict");
    let (ret, records) = f.server_sends(UDP_REPLY);
    assert_eq!(ret, TC_ACT_SHOT, "the server's replies do not reopen the revoked connection");
    assert_eq!(drops(&records), vec![(drop_reason::CONNECTION_REVOKED, revision)]);
    assert_eq!(f.datapath.counters().unwrap().get(Counter::Revoked), before + 2);

    // Allowed again: the revoked entry is re-checked and resumed.
    f.apply(ALLOW);
    let (ret, records) = f.client_sends(UDP);
    assert_eq!((ret, verdicts(&records), drops(&records)), (TC_ACT_UNSPEC, NONE, NO_DROPS));
}

#[test]
fn keep_established_keeps_connections_the_new_policy_denies() {
    let mut f = fixture("keep", DatapathOptions { keep_established: true, ..DatapathOptions::default() });
    let (ret, _) = f.client_sends(UDP);
    assert_eq!(ret, TC_ACT_UNSPEC);
    f.apply(DENY);
    let (ret, records) = f.client_sends(UDP);
    assert_eq!((ret, drops(&records)), (TC_ACT_UNSPEC, NO_DROPS), "--keep-established: the usual behaviour");
    // A new connection still gets the new policy's verdict.
    let (ret, records) = f.client_sends(Transport::Udp { sport: 40001, dport: 80 });
    assert_eq!((ret, verdicts(&records)), (TC_ACT_SHOT, vec![verdict::DENIED]));
}

#[test]
fn a_connection_reset_by_its_opening_packet_is_closed_at_once() {
    let mut f = fixture("reset-open", DatapathOptions::default());
    // SYN and RST together: allowed and tracked, but over; the next SYN is a new connection, every time.
    for _ in 0..3 {
        let (ret, records) = f.client_sends(tcp(SYN | RST));
        assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![verdict::ALLOWED]), "a verdict each time");
    }
    let (ret, records) = f.client_sends(tcp(SYN));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![verdict::ALLOWED]));
    assert_eq!(verdicts(&f.client_sends(tcp(SYN)).1), NONE, "a plain SYN opens a connection that stays");
}

/// An endpoint id goes to a new pod once the node has handed out every id (`EndpointRegistry`): what the
/// kernel kept under it for the old pod goes first, or the new pod's packets would pass as the old pod's
/// established connections, without a verdict.
#[test]
fn an_endpoint_id_given_to_a_new_pod_keeps_nothing_of_the_old_one() {
    let mut f = fixture("forget", DatapathOptions::default());
    let id_of = |f: &Fixture, pod: &str| f.state.endpoints().iter().find(|e| e.pod_name == pod).unwrap().clone();
    let (server, client) = (id_of(&f, "server"), id_of(&f, "client"));
    assert_eq!(verdicts(&f.client_sends(tcp(SYN)).1), vec![verdict::ALLOWED]);
    assert_eq!(verdicts(&f.client_sends(tcp(ACK)).1), NONE, "established");
    // Leaving with the client's address: an invalid source, counted for the server's id.
    assert_eq!(f.run(PROG_FROM_ENDPOINT, CLIENT, SERVER, tcp(SYN)).0, TC_ACT_SHOT);
    assert_eq!(f.datapath.invalid_source_drops([server.id]).unwrap().get(&server.id), Some(&1));
    // A connection of another endpoint (the client's egress, on the same interface for the test).
    f.datapath.set_endpoint(TEST_RUN_IFINDEX, datapath::endpoint_info(&client)).unwrap();
    f.run(PROG_FROM_ENDPOINT, CLIENT, SERVER, Transport::Udp { sport: 5000, dport: 80 });
    f.datapath.set_endpoint(TEST_RUN_IFINDEX, datapath::endpoint_info(&server)).unwrap();
    let of = |f: &Fixture, id: u16| {
        f.datapath.conntrack_entries().unwrap().iter().filter(|(k, _)| k.endpoint_id == id).count()
    };
    assert_eq!((of(&f, server.id), of(&f, client.id)), (1, 1));

    assert_eq!(f.datapath.forget_endpoint(server.id).unwrap(), 1);
    assert_eq!((of(&f, server.id), of(&f, client.id)), (0, 1), "only the id's connections go");
    assert!(f.datapath.invalid_source_drops([server.id]).unwrap().is_empty(), "and its count");
    let (ret, records) = f.client_sends(tcp(ACK));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![verdict::ALLOWED]), "a new connection, decided");
}

#[test]
fn a_syn_after_an_rst_or_a_fin_each_way_gets_a_new_verdict() {
    let mut f = fixture("close", DatapathOptions::default());
    assert_eq!(verdicts(&f.client_sends(tcp(SYN)).1), vec![verdict::ALLOWED]);
    f.server_sends(tcp_reply(SYN | ACK));
    assert_eq!(verdicts(&f.client_sends(tcp(ACK)).1), NONE, "established");
    assert_eq!(f.server_sends(tcp_reply(RST)).0, TC_ACT_UNSPEC);
    // Stragglers of the closed connection still pass (within the close lifetime) without a verdict...
    assert_eq!(verdicts(&f.client_sends(tcp(ACK)).1), NONE);
    // ...but a SYN on the same ports is a new connection with a verdict of its own.
    let (ret, records) = f.client_sends(tcp(SYN));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![verdict::ALLOWED]));

    // The same after a FIN each way; a FIN one way only is not a close.
    f.server_sends(tcp_reply(SYN | ACK));
    f.client_sends(tcp(FIN | ACK));
    assert_eq!(verdicts(&f.client_sends(tcp(SYN)).1), NONE, "half-closed: a SYN is part of the connection");
    f.server_sends(tcp_reply(FIN | ACK));
    assert_eq!(verdicts(&f.client_sends(tcp(SYN)).1), vec![verdict::ALLOWED]);

    // Under a policy that denies it, the new connection on the old ports is denied.
    f.server_sends(tcp_reply(RST));
    let mut keep = f;
    keep.apply(DENY);
    let (ret, records) = keep.client_sends(tcp(SYN));
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(verdicts(&records), vec![verdict::DENIED], "a new verdict, not a resumed connection");
}

#[test]
fn a_syn_in_a_connections_reply_direction_is_a_new_connection_that_policy_decides() {
    let mut f = fixture("reply-syn", DatapathOptions::default());
    f.apply(ALLOW_IN_DENY_OUT);
    assert_eq!(verdicts(&f.client_sends(tcp(SYN)).1), vec![verdict::ALLOWED], "the client connects in");
    // The server sends a SYN on the connection's ports the other way: not a reply (a reply to a SYN carries an
    // ACK) but a connection out of the server, which its egress denies. Looked up as a reply, it passed.
    let (ret, records) = f.server_sends(tcp_reply(SYN));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_SHOT, vec![verdict::DENIED]));
    // The connection's own replies pass as before, without a verdict.
    let (ret, records) = f.server_sends(tcp_reply(SYN | ACK));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, NONE), "the SYN-ACK is a reply");
    assert_eq!(verdicts(&f.client_sends(tcp(ACK)).1), NONE, "established");
    let (ret, records) = f.server_sends(tcp_reply(ACK));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, NONE));
}

#[test]
fn expired_entries_need_a_new_verdict_and_are_collected() {
    let lifetimes = CtLifetimes {
        tcp: Duration::from_secs(3600),
        other: Duration::from_millis(300),
        close: Duration::from_millis(300),
    };
    let mut f = fixture("expire", DatapathOptions { ct_lifetimes: lifetimes, ..DatapathOptions::default() });
    assert_eq!(verdicts(&f.client_sends(UDP).1), vec![verdict::ALLOWED]);
    assert_eq!(verdicts(&f.client_sends(UDP).1), NONE, "tracked");
    assert_eq!(verdicts(&f.client_sends(tcp(SYN)).1), vec![verdict::ALLOWED]);
    f.server_sends(tcp_reply(SYN | ACK));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(verdicts(&f.client_sends(UDP).1), vec![verdict::ALLOWED], "idle past its lifetime: a new verdict");
    assert_eq!(verdicts(&f.client_sends(tcp(ACK)).1), NONE, "an answered TCP connection lives longer");

    // The garbage collector deletes what expired and keeps what lives.
    std::thread::sleep(Duration::from_millis(700));
    f.client_sends(tcp(ACK));
    let entries = f.datapath.conntrack_entries().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (deleted, left) = f.datapath.conntrack_gc(datapath::monotonic_now_ns()).unwrap();
    assert_eq!((deleted, left), (1, 1));
    assert_eq!(f.datapath.conntrack_entries().unwrap()[0].0.protocol, flowgate_common::ip::protocol::TCP);
}

/// `last_seen_ns` of the entry of the client's UDP connection to the server.
fn udp_last_seen(f: &Fixture) -> u64 {
    let entries = f.datapath.conntrack_entries().unwrap();
    let udp = entries.iter().find(|(key, _)| key.sport == UDP_PORT).expect("the UDP connection's entry");
    udp.1.last_seen_ns
}

const UDP_PORT: u16 = 40000;

#[test]
fn conntrack_time_read_from_jiffies_is_the_monotonic_clock_to_the_tick() {
    let mut f = fixture("tick", DatapathOptions::default());
    let tick = f.datapath.tick().expect("the kernel's tick measured at load");
    assert!([100, 250, 300, 1000].contains(&tick.hz), "{tick:?}");
    // The programs' time for a packet is CLOCK_MONOTONIC to the tick: between the start of the tick before
    // the packet (as the coarse clock) and the packet, with a little slack for the measurement's jitter.
    let slack = tick.tick_ns + 1_000_000;
    for pause in [0, 30, 120] {
        std::thread::sleep(Duration::from_millis(pause));
        let before = datapath::monotonic_now_ns();
        f.client_sends(UDP);
        let after = datapath::monotonic_now_ns();
        let seen = udp_last_seen(&f);
        assert!(
            seen + slack >= before && seen <= after + 1_000_000,
            "last seen {seen} for a packet between {before} and {after} ({tick:?})"
        );
    }
    // Without a tick the programs fall back to the coarse clock, on the same time line. The coarse clock moves
    // when the timekeeping tick runs, which a vCPU the hypervisor did not schedule (steal time) delays by some
    // ticks: it once lagged beyond one tick + 1 ms with seven test binaries on these two cores. Any other time
    // line (boot time after a suspend, jiffies counted from boot, real time) is seconds or more away.
    f.datapath.use_tick(None).unwrap();
    let coarse_slack = 4 * tick.tick_ns + 10_000_000;
    std::thread::sleep(Duration::from_millis(30));
    let before = datapath::monotonic_now_ns();
    f.client_sends(UDP);
    let seen = udp_last_seen(&f);
    assert!(
        seen + coarse_slack >= before && seen <= datapath::monotonic_now_ns(),
        "coarse clock: {seen} vs {before} (lag {} ns)",
        before.saturating_sub(seen)
    );
}

#[test]
fn the_collector_reads_every_entry_in_batches_and_keeps_one_a_packet_renewed() {
    let lifetimes = CtLifetimes {
        tcp: Duration::from_secs(3600),
        other: Duration::from_millis(300),
        close: Duration::from_millis(300),
    };
    let mut f = fixture("batches", DatapathOptions { ct_lifetimes: lifetimes, ..DatapathOptions::default() });
    // More connections than three batch calls read, so the walk resumes where each call ended.
    let flows = 3 * map_batch::CHUNK + 7;
    let first_port = 10_000u16;
    for i in 0..flows {
        let sport = first_port + u16::try_from(i).unwrap();
        let packet = ipv4_packet(CLIENT, SERVER, Transport::Udp { sport, dport: 80 });
        f.datapath.test_run(PROG_TO_ENDPOINT, &packet, 1).expect("BPF_PROG_TEST_RUN");
        if i % 1000 == 0 {
            while f.ring.next().is_some() {}
        }
    }
    let entries = f.datapath.conntrack_entries().unwrap();
    let ports: std::collections::BTreeSet<u16> = entries.iter().map(|(key, _)| key.sport).collect();
    assert_eq!((entries.len(), ports.len()), (flows, flows), "every connection read once");
    assert_eq!(f.datapath.conntrack_fill().unwrap().entries, flows as u64);

    std::thread::sleep(Duration::from_millis(700));
    let now = datapath::monotonic_now_ns();
    let (walked, expired) = f.datapath.conntrack_expired(now).unwrap();
    assert_eq!((walked, expired.len()), (flows as u64, flows));
    // After the walk, a packet on one of the expired tuples opens a new connection with its own verdict:
    // its new entry must survive the deletion of what the walk found.
    let renewed = Transport::Udp { sport: first_port, dport: 80 };
    assert_eq!(verdicts(&f.client_sends(renewed).1), vec![verdict::ALLOWED], "expired: a new verdict");
    let deleted = f.datapath.conntrack_delete_expired(&expired, now).unwrap();
    assert_eq!(deleted, flows as u64 - 1);
    let left = f.datapath.conntrack_entries().unwrap();
    assert_eq!(left.iter().map(|(key, _)| key.sport).collect::<Vec<_>>(), vec![first_port]);
    assert_eq!(verdicts(&f.client_sends(renewed).1), NONE, "the renewed connection is still tracked");
}

/// The web pod's ingress allows DNS (UDP 53) from the client: the flow of the real-traffic tests.
const LAB_ALLOW: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: UDP, port: 53}]
";

const LAB_DENY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
";

fn conntrack_status(socket: &Path) -> ConntrackStatus {
    runtime().block_on(async {
        let mut client = Client::connect(socket, "conntrack-test").await.unwrap();
        match client.request(Request::Status).await.unwrap() {
            Response::Status(s) => s.conntrack,
            other => panic!("status: {other:?}"),
        }
    })
}

/// Sends a UDP datagram every 20 ms from inside `netns` to `to` (at most `count`, for at most
/// `limit`), and returns when each echo came back, relative to `start`.
fn udp_flow(netns: &str, to: (Ipv4Addr, u16), count: usize, limit: Duration, start: Instant) -> Vec<Duration> {
    flowgate_lab::netns::in_netns(netns, || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind in the pod");
        socket.connect(to).expect("connect in the pod");
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut echoes = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..count {
            if start.elapsed() > limit {
                break;
            }
            let _ = socket.send(format!("ping {i}").as_bytes());
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_millis(20) {
                if socket.recv(&mut buf).is_ok() {
                    echoes.push(start.elapsed());
                }
            }
        }
        echoes
    })
    .expect("enter the client pod")
}

/// A UDP flow the policy allowed, then the policy changes to deny it: with revocation, the flow stops
/// within a second of the new revision and the drop says it was revoked and by which revision; with
/// `--keep-established`, it goes on.
fn udp_flow_across_a_policy_change(tag: &str, keep_established: bool) {
    require_root();
    let lab = LabGuard::up(tag, &example("lab-small.yaml"));
    let policies = TempDir::new(&format!("{tag}-policies"));
    std::fs::write(policies.path().join("policy.yaml"), LAB_ALLOW).unwrap();
    let sockets = SocketDir::new(tag);
    let socket = sockets.socket("agent");
    let policy_dir = policies.path().to_str().unwrap().to_owned();
    // The collector counts the entries `status` shows: every second here.
    let mut extra =
        vec!["--policies", policy_dir.as_str(), "--no-pin", "--watch-interval-ms", "100", "--ct-gc-interval", "1"];
    if keep_established {
        extra.push("--keep-established");
    }
    let agent = AgentGuard::start(&lab.name, &socket, &extra);
    let client = lab.state.pods.iter().find(|p| p.name == "client").unwrap().clone();
    let web = lab.state.pods.iter().find(|p| p.name == "web").unwrap().clone();

    let rt = runtime();
    let mut events = rt.block_on(async {
        let client = Client::connect(&socket, "conntrack-test").await.unwrap();
        let filter = FlowFilter { event_types: vec![EventType::Drop], ..Default::default() };
        let events = client.subscribe(Subscription { allow: vec![filter], ..Subscription::default() }).await.unwrap();
        wait_subscribed(&socket, 1).await;
        events
    });
    let revision_before = conntrack_status(&socket).revision;

    let start = Instant::now();
    let (echoes, changed_at) = std::thread::scope(|scope| {
        let flow = scope.spawn(|| udp_flow(&client.netns, (web.ip, 53), 250, Duration::from_secs(5), start));
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::write(policies.path().join("policy.yaml"), LAB_DENY).unwrap();
        // The new revision is in the kernel before `status` shows it.
        let mut changed_at = None;
        while start.elapsed() < Duration::from_secs(4) {
            if conntrack_status(&socket).revision > revision_before {
                changed_at = Some(start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (flow.join().unwrap(), changed_at.expect("the agent applied the new policy"))
    });
    let before = echoes.iter().filter(|t| **t < Duration::from_millis(1500)).count();
    assert!(before > 20, "the allowed flow got through before the change: {echoes:?}");
    let late = echoes.iter().filter(|t| **t > changed_at + Duration::from_secs(1)).count();
    let drops: Vec<Arc<Flow>> = rt.block_on(async {
        let mut out = Vec::new();
        while let Ok(Some(Ok(batch))) = tokio::time::timeout(Duration::from_millis(700), events.next_batch()).await {
            out.extend(batch.into_iter().filter_map(|e| match e {
                Event::Flow(f) => Some(f),
                Event::Lost(_) => None,
            }));
        }
        out
    });
    let status = conntrack_status(&socket);
    let web_id = agent_endpoint_id(&socket, "web");
    let list =
        flowgate_ok(&["conntrack", "list", "--endpoint", &web_id.to_string(), "--socket", socket.to_str().unwrap()]);

    if keep_established {
        assert!(late > 20, "--keep-established: the flow goes on after the change ({late} late echoes)");
        assert!(drops.is_empty(), "nothing dropped: {drops:#?}");
        assert!(status.keep_established);
        assert!(list.contains("10.200.0.") && list.contains(":53") && !list.contains("revoked"), "{list}");
        return;
    }
    assert_eq!(late, 0, "no echo later than 1 s after the new revision ({changed_at:?}): {echoes:?}");
    let revoked: Vec<&Arc<Flow>> = drops.iter().filter(|f| f.drop_reason == drop_reason::CONNECTION_REVOKED).collect();
    assert!(!revoked.is_empty(), "a drop record says the connection was revoked: {drops:#?}");
    // A request is dropped on its way in; a reply already on its way back when the revision changed is
    // dropped on its way out of the server (port 53 its source then).
    assert!(
        revoked
            .iter()
            .all(|f| f.policy_revision == Some(status.revision) && (f.destination_port == 53 || f.source_port == 53)),
        "the drop names the revision that revoked it ({}): {revoked:#?}",
        status.revision
    );
    let line = flowgate_proto::format::flow_line(revoked[0]);
    assert!(line.contains(&format!("connection revoked), revision {}", status.revision)), "{line}");
    // The revoked entry is listed as such until it expires.
    assert!(list.lines().any(|l| l.contains(":53") && l.contains("revoked")), "{list}");
    let json: serde_json::Value = serde_json::from_str(&flowgate_ok(&[
        "conntrack",
        "list",
        "--endpoint",
        &web_id.to_string(),
        "--socket",
        socket.to_str().unwrap(),
        "-o",
        "json",
    ]))
    .unwrap();
    let entry = json.as_array().unwrap().iter().find(|e| e["destination_port"] == 53).expect("the flow's entry");
    assert_eq!(entry["revision"], serde_json::Value::Null, "{entry}");
    assert!(entry["flags"].as_array().unwrap().iter().any(|f| f == "revoked"), "{entry}");
    assert!(status.capacity > 0 && status.entries > 0, "{status:?}");
    drop(agent);
}

fn agent_endpoint_id(socket: &Path, pod: &str) -> u16 {
    runtime().block_on(async {
        let mut client = Client::connect(socket, "conntrack-test").await.unwrap();
        match client.request(Request::EndpointList).await.unwrap() {
            Response::Endpoints(eps) => eps.iter().find(|e| e.pod_name == pod).map(|e| e.id).unwrap(),
            other => panic!("endpoint list: {other:?}"),
        }
    })
}

#[test]
fn a_revoked_udp_flow_stops_within_a_second_on_real_traffic() {
    udp_flow_across_a_policy_change("ctrevoke", false);
}

#[test]
fn keep_established_keeps_a_real_udp_flow_across_a_policy_change() {
    udp_flow_across_a_policy_change("ctkeep", true);
}

/// A TCP connection from `sport` inside the current namespace to `to`: one echoed message, then closed
/// with an RST (SO_LINGER 0).
fn tcp_exchange_then_rst(to: (Ipv4Addr, u16), sport: u16) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(0, 0, 0, 0, sport)).expect("bind the source port");
    let [a, b, c, d] = to.0.octets();
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(a, b, c, d, to.1)).expect("connect");
    setsockopt(&fd.as_fd(), sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 }).unwrap();
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    stream.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).expect("the echo");
    // Dropped with SO_LINGER 0: the kernel sends an RST instead of a FIN.
}

#[test]
fn after_a_real_rst_the_same_ports_get_a_new_verdict() {
    require_root();
    let lab = LabGuard::up("ctrst", &example("lab-small.yaml"));
    let policies = TempDir::new("ctrst-policies");
    std::fs::write(
        policies.path().join("policy.yaml"),
        LAB_ALLOW.replace("{protocol: UDP, port: 53}", "{protocol: TCP, port: 80}"),
    )
    .unwrap();
    let sockets = SocketDir::new("ctrst");
    let socket = sockets.socket("agent");
    let policy_dir = policies.path().to_str().unwrap().to_owned();
    let _agent = AgentGuard::start(&lab.name, &socket, &["--policies", policy_dir.as_str(), "--no-pin"]);
    let client = lab.state.pods.iter().find(|p| p.name == "client").unwrap().clone();
    let web = lab.state.pods.iter().find(|p| p.name == "web").unwrap().clone();
    let rt = runtime();
    let mut events = rt.block_on(async {
        let client = Client::connect(&socket, "conntrack-test").await.unwrap();
        let filter = FlowFilter { event_types: vec![EventType::PolicyVerdict], ..Default::default() };
        let events = client.subscribe(Subscription { allow: vec![filter], ..Subscription::default() }).await.unwrap();
        wait_subscribed(&socket, 1).await;
        events
    });
    let sport = 43_210;
    flowgate_lab::netns::in_netns(&client.netns, || {
        // On one CPU: a thread that moves between the RST and the next SYN can have them queued on two
        // CPUs' backlogs (softirqs deferred to ksoftirqd under load), and the SYN then overtakes the RST.
        // SAFETY: a zeroed cpu_set_t is the empty set; CPU 0 exists; this changes the calling thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        tcp_exchange_then_rst((web.ip, 80), sport);
        tcp_exchange_then_rst((web.ip, 80), sport);
    })
    .expect("enter the client pod");
    // Collected until both verdicts are in (on a loaded machine the first batch can take a while), then
    // a little longer, so that a third (a duplicate) would be seen too.
    let ours_of =
        |flows: &[Arc<Flow>]| flows.iter().filter(|f| f.source_port == sport && f.destination_port == 80).count();
    let verdicts: Vec<Arc<Flow>> = rt.block_on(async {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut settle = None;
        loop {
            let until = settle.unwrap_or(deadline).min(deadline);
            let Ok(Some(Ok(batch))) = tokio::time::timeout_at(until, events.next_batch()).await else { break };
            out.extend(batch.into_iter().filter_map(|e| match e {
                Event::Flow(f) => Some(f),
                Event::Lost(_) => None,
            }));
            if settle.is_none() && ours_of(&out) >= 2 {
                settle = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
        }
        out
    });
    let ours: Vec<&Arc<Flow>> =
        verdicts.iter().filter(|f| f.source_port == sport && f.destination_port == 80).collect();
    assert_eq!(ours.len(), 2, "one verdict per connection on the same 5-tuple, the second after an RST: {verdicts:#?}");
}

/// The controller's registration path end to end (`controller::register`, which every sync goes through): a
/// node whose 4,095 endpoint ids are all handed out, and the server pod replaced by a new pod with its address
/// and labels (a Deployment's pod replaced, its address handed out again), which takes the old pod's id. The kernel must forget the
/// old pod's connections before the new pod's entry is written: the client's next packet on the old
/// connection is a new connection with a verdict of its own, not the old pod's connection resumed.
#[test]
fn a_pod_registered_under_a_reused_id_starts_without_the_old_pods_connections() {
    use std::collections::BTreeMap;

    use flowgate_agent::{controller, endpoints::MAX_ENDPOINT_ID, state::AgentInfo};
    use flowgate_events::hub::{Hub, HubConfig};
    use flowgate_policy::NamespaceInfo;
    use flowgate_proto::endpoint::{Endpoint, NewEndpoint};

    require_root();
    let dir = TempDir::new("conntrack-reused-id");
    std::fs::write(dir.path().join("policy.yaml"), ALLOW).unwrap();
    let mut datapath = Datapath::load(DatapathOptions { aggregation: aggregation::MEDIUM, ..Default::default() })
        .expect("load the datapath");
    let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
    let ns: BTreeMap<String, String> = [("kubernetes.io/metadata.name".to_string(), "default".to_string())].into();
    let pod = |name: &str, app: &str, ip: Ipv4Addr, ifindex: u32| {
        let new = NewEndpoint {
            namespace: "default".into(),
            pod_name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ipv4: ip,
            ipv6: None,
            interface: format!("lxc{ifindex}"),
            ifindex,
        };
        (new, ns.clone())
    };
    let mut pods = vec![pod("client", "client", CLIENT, 1000), pod("server", "server", SERVER, TEST_RUN_IFINDEX)];
    for i in 0..u32::from(MAX_ENDPOINT_ID) - 2 {
        pods.push(pod(&format!("filler-{i}"), "filler", Ipv4Addr::from(0x0a64_0000 + i), 2000 + i));
    }
    let registered = controller::register(&state, &mut datapath, pods).expect("every endpoint id handed out");
    assert_eq!(registered.len(), usize::from(MAX_ENDPOINT_ID));
    let view = |endpoints: &[&Endpoint]| ClusterView {
        namespaces: vec![NamespaceInfo { name: "default".into(), labels: ns.clone() }],
        pods: endpoints.iter().map(|ep| controller::endpoint_pod_info(ep, Vec::new())).collect(),
    };
    let (client, old) = (registered[0].clone(), registered[1].clone());
    let ring = datapath.take_events().unwrap();
    let engine = PolicyEngine::new(Some(dir.path().to_owned()), false);
    let cluster = view(&[&client, &old]);
    let mut f = Fixture { datapath, ring, engine, cluster, state, dir };
    f.apply(ALLOW);
    assert_eq!(verdicts(&f.client_sends(tcp(SYN)).1), vec![verdict::ALLOWED]);
    assert_eq!(verdicts(&f.client_sends(tcp(ACK)).1), NONE, "established with the old pod");
    let of = |f: &Fixture, id: u16| {
        f.datapath.conntrack_entries().unwrap().iter().filter(|(k, _)| k.endpoint_id == id).count()
    };
    assert_eq!(of(&f, old.id), 1);

    f.state.remove_endpoint(old.id).expect("the old pod was registered");
    // A new pod (another name: a pod of the same name coming back is the same endpoint and keeps its id and
    // connections, re-checked at the next policy revision) with the old pod's address and labels.
    let replacement = pod("server-7f9c", "server", SERVER, TEST_RUN_IFINDEX);
    let new = controller::register(&f.state, &mut f.datapath, vec![replacement])
        .expect("the new pod takes the id the old one left");
    assert_eq!(new[0].id, old.id, "the only id left is the old pod's");
    assert_eq!(of(&f, old.id), 0, "the old pod's connections are forgotten when its id is handed out again");
    // The sync compiles the same policy for the new cluster view.
    f.cluster = view(&[&client, &new[0]]);
    let (contents, snapshot) = f.engine.prepare(f.cluster.clone()).expect("the policy fits the maps");
    f.state.set_policy(Arc::new(snapshot), f.engine.cidr_labels());
    f.datapath.apply_policy(&contents).expect("write the policy maps");
    let (ret, records) = f.client_sends(tcp(ACK));
    assert_eq!((ret, verdicts(&records)), (TC_ACT_UNSPEC, vec![verdict::ALLOWED]), "a new connection, decided");
}
