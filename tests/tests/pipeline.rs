//! The event pipeline end to end, on a real agent with a real lab and real traffic: subscribers with
//! different filters each get exactly their events (compared with an unfiltered subscriber), and a
//! stalled subscriber is told what it lost while another misses nothing.

use std::{collections::BTreeSet, path::Path, sync::Arc, time::Duration};

use flowgate_proto::{
    Flow,
    client::{Client, EventStream},
    filter::{self, FlowFilter},
    flow::{Protocol, Verdict},
    message::{Event, LossSource, Request, Response, Status, Subscription},
};
use flowgate_tests::{
    LabGuard,
    agent::{self, AgentGuard, SocketDir, runtime, wait_subscribed},
    example, lab_traffic, require_root,
};

async fn status(socket: &Path) -> Status {
    agent::request_status(socket).await.expect("the agent's status")
}

async fn subscribe(socket: &Path, allow: Vec<FlowFilter>) -> EventStream {
    let c = Client::connect(socket, "pipeline-test").await.expect("connect");
    c.subscribe(Subscription { allow, ..Subscription::default() }).await.expect("subscribe")
}

/// Reads until no batch arrives for `quiet`; returns flows and losses.
async fn collect(stream: &mut EventStream, quiet: Duration) -> (Vec<Arc<Flow>>, Vec<(LossSource, u64)>) {
    let (mut flows, mut lost) = (Vec::new(), Vec::new());
    while let Ok(Some(batch)) = tokio::time::timeout(quiet, stream.next_batch()).await {
        for event in batch.expect("a batch") {
            match event {
                Event::Flow(f) => flows.push(f),
                Event::Lost(l) => lost.push((l.source, l.count)),
            }
        }
    }
    (flows, lost)
}

/// What identifies one event.
fn key(f: &Flow) -> (u64, u32, u16, String) {
    (f.ktime_ns, f.cpu, f.endpoint_id, format!("{:?}", f.event_type))
}

#[test]
fn two_subscribers_with_different_filters_each_receive_exactly_their_events() {
    require_root();
    let lab = LabGuard::up("pipe2", &example("lab-netpol.yaml"));
    let dir = SocketDir::new("pipe2");
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent.sock"), &[]);
    let rt = runtime();
    let socket = agent.socket.clone();

    let eps = rt.block_on(async {
        let mut c = Client::connect(&socket, "t").await.unwrap();
        match c.request(Request::EndpointList).await.unwrap() {
            Response::Endpoints(e) => e,
            other => panic!("{other:?}"),
        }
    });
    let id = |pod: &str| eps.iter().find(|e| e.pod_ref() == pod).unwrap().id;
    let (xa, yb) = (id("x/a"), id("y/b"));
    let only_xa = vec![FlowFilter { related_to: vec![xa], ..Default::default() }];
    let udp_from_yb =
        vec![FlowFilter { from_endpoint: vec![yb], protocols: vec![Protocol::Udp], ..Default::default() }];

    let (a, b, all) = rt.block_on(async {
        let mut a = subscribe(&socket, only_xa.clone()).await;
        let mut b = subscribe(&socket, udp_from_yb.clone()).await;
        let mut all = subscribe(&socket, Vec::new()).await;
        wait_subscribed(&socket, 3).await;
        // Traffic: x/a -> x/b over TCP, y/b -> z/c over UDP, z/a -> z/b over TCP (neither filter).
        let name = lab.name.clone();
        tokio::task::spawn_blocking(move || {
            let traffic = |from: &str, to: &str, port: &str, proto: &str, count: &str| {
                lab_traffic(&name, from, to, port, proto, count, &[])
            };
            traffic("x/a", "x/b", "80", "TCP", "5");
            traffic("y/b", "z/c", "81", "UDP", "20");
            traffic("z/a", "z/b", "80", "TCP", "5");
        })
        .await
        .unwrap();
        let quiet = Duration::from_millis(500);
        (collect(&mut a, quiet).await, collect(&mut b, quiet).await, collect(&mut all, quiet).await)
    });
    let ((a, a_lost), (b, b_lost), (all, all_lost)) = (a, b, all);
    assert!(a_lost.is_empty() && b_lost.is_empty() && all_lost.is_empty(), "no loss at this rate");
    assert!(all.len() > a.len() + b.len(), "the unfiltered subscriber sees the unrelated z traffic too");

    let expect = |allow: &[FlowFilter]| -> BTreeSet<_> {
        all.iter().filter(|f| filter::passes(allow, &[], f)).map(|f| key(f)).collect()
    };
    let got = |flows: &[Arc<Flow>]| -> BTreeSet<_> { flows.iter().map(|f| key(f)).collect() };
    assert!(!a.is_empty() && !b.is_empty());
    assert_eq!(got(&a), expect(&only_xa), "subscriber A gets exactly the x/a events");
    assert_eq!(got(&b), expect(&udp_from_yb), "subscriber B gets exactly y/b's UDP events");
    assert!(a.iter().all(|f| f.involves_endpoint(xa)));
    assert!(b.iter().all(|f| f.source.endpoint_id == yb && f.protocol == Protocol::Udp));
    assert!(
        a.iter().any(|f| f.destination.pod_name == "b" && f.destination_port == 80 && f.verdict == Verdict::Forwarded)
    );
}

#[test]
fn a_stalled_subscriber_is_told_its_loss_while_another_misses_nothing() {
    require_root();
    let lab = LabGuard::up("stall", &example("lab-netpol.yaml"));
    let dir = SocketDir::new("stall");
    // Small per-client queues so the stalled client overflows quickly.
    let agent = AgentGuard::start(
        &lab.name,
        &dir.socket("agent.sock"),
        &["--client-queue-events", "4096", "--monitor-aggregation", "none"],
    );
    let rt = runtime();
    let socket = agent.socket.clone();

    let (reader, stalled_result, before, after) = rt.block_on(async {
        let mut stalled = subscribe(&socket, Vec::new()).await;
        let mut reader = subscribe(&socket, Vec::new()).await;
        wait_subscribed(&socket, 2).await;
        let before = status(&socket).await;
        // The reader reads all along; the stalled client reads nothing until the traffic is over.
        let reading = tokio::spawn(async move { collect(&mut reader, Duration::from_secs(2)).await });
        let name = lab.name.clone();
        tokio::task::spawn_blocking(move || {
            lab_traffic(&name, "x/a", "y/b", "80", "UDP", "10000", &["--interval", "0.1ms"])
        })
        .await
        .unwrap();
        let reader = reading.await.unwrap();
        let after = status(&socket).await;
        let stalled_result = collect(&mut stalled, Duration::from_secs(1)).await;
        (reader, stalled_result, before, after)
    });
    let (reader_flows, reader_lost) = reader;
    let (stalled_flows, stalled_lost) = stalled_result;
    let read_by_agent = after.counters.records_read - before.counters.records_read;
    assert_eq!(after.counters.records_lost_kernel, 0, "no kernel loss at this rate");
    println!(
        "agent read {read_by_agent}; reader got {}; stalled got {} and was told of {:?}",
        reader_flows.len(),
        stalled_flows.len(),
        stalled_lost
    );
    assert!(reader_lost.is_empty(), "the reading client lost nothing: {reader_lost:?}");
    assert_eq!(reader_flows.len() as u64, read_by_agent, "the reading client got every event");
    let told: u64 = stalled_lost.iter().filter(|(s, _)| *s == LossSource::ClientQueue).map(|(_, n)| n).sum();
    assert!(told > 0, "the stalled client was told it lost events");
    assert_eq!(
        stalled_flows.len() as u64 + told,
        read_by_agent,
        "what it got plus what it was told it lost is everything"
    );
    let me = after.clients.iter().map(|c| c.events_lost).max().unwrap();
    assert_eq!(me, told, "status reports the same per-client loss");
}

/// The reproduction of a hostile local client set: 60 subscribers whose filters each name 1,000 pods
/// (none of them in the lab) while real traffic floods the agent. Once this made the kernel buffer lose
/// records for everyone and `status` hang for over 10 s. Now their filters are compiled and run outside
/// the hub's lock: an unfiltered subscriber gets every record the agent read (plus any loss, told), and
/// `status` answers during the flood.
#[test]
fn sixty_subscribers_with_large_filters_cost_the_others_nothing() {
    require_root();
    let lab = LabGuard::up("pipebig", &example("lab-small.yaml"));
    let dir = SocketDir::new("pipebig");
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent.sock"), &["--monitor-aggregation", "none"]);
    let socket = agent.socket.clone();
    let rt = runtime();
    rt.block_on(async {
        let pods: Vec<filter::PodSelector> = (0..1000).map(|i| format!("other/pod-{i}").parse().unwrap()).collect();
        let mut hostile = Vec::new();
        for _ in 0..60 {
            hostile.push(subscribe(&socket, vec![FlowFilter { pods: pods.clone(), ..FlowFilter::default() }]).await);
        }
        let mut everything = subscribe(&socket, Vec::new()).await;
        wait_subscribed(&socket, 61).await;
        let before = status(&socket).await.counters.records_read;
        let name = lab.name.clone();
        let flood = tokio::task::spawn_blocking(move || {
            lab_traffic(&name, "default/client", "default/web", "53", "UDP", "5000", &[]);
        });
        // `status` answers while the flood runs.
        let during = tokio::time::timeout(Duration::from_secs(5), status(&socket)).await;
        assert!(during.is_ok(), "status answers during the flood");
        flood.await.unwrap();
        let (flows, lost) = collect(&mut everything, Duration::from_secs(2)).await;
        let s = status(&socket).await;
        let told: u64 = lost.iter().map(|(_, n)| n).sum();
        println!(
            "read {}, got {}, told lost {told}, kernel lost {}",
            s.counters.records_read - before,
            flows.len(),
            s.counters.records_lost_kernel
        );
        assert!(flows.len() as u64 >= 5000, "the unfiltered subscriber got the flood's records: {}", flows.len());
        assert_eq!(flows.len() as u64, s.counters.records_read - before, "every record read reached it");
        assert!(lost.iter().all(|(source, _)| *source != LossSource::ClientQueue), "its queue kept up: {lost:?}");
        for mut h in hostile {
            assert!(collect(&mut h, Duration::from_millis(50)).await.0.is_empty(), "their filters match nothing");
        }
    });
}
