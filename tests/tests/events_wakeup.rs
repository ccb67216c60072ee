//! Ring-buffer wake-ups on the real kernel ring: a lone record wakes the agent's reader by itself (the
//! wake-up interval), so it reaches a client long before the reader's drain tick; with the interval
//! turned off the same lone record waits for the tick (below the 256 KiB threshold the kernel does not
//! wake the reader), which shows the first test could fail. Records a wake-up did not announce (written
//! within an interval of the last one) are drained by the backstop after records; after records a reader
//! that polls streams (`--events-poll-streams`) lets the wake-ups it held off through again; and an idle
//! reader does not wake at all.

use std::{path::Path, time::Duration};

use flowgate_proto::{
    client::{Client, EventStream},
    message::{Event, Subscription},
};
use flowgate_tests::{
    LabGuard,
    agent::{AgentGuard, SocketDir, runtime, wait_subscribed},
    example, lab_traffic, require_root,
};

/// The reader's drain tick in these tests: after the tick at start, the next is a minute away.
const DRAIN_TICK_MS: &str = "60000";

async fn subscribed(socket: &Path) -> EventStream {
    let client = Client::connect(socket, "wakeup-test").await.expect("connect");
    let stream = client.subscribe(Subscription::default()).await.expect("subscribe");
    wait_subscribed(socket, 1).await;
    stream
}

/// Sends one UDP datagram from x/a to y/b on `lab` (a new flow each time: a new source port).
async fn one_datagram(lab: &str) {
    let name = lab.to_owned();
    tokio::task::spawn_blocking(move || lab_traffic(&name, "x/a", "y/b", "81", "UDP", "1", &[])).await.unwrap();
}

/// Flows `stream` gets within `wait`.
async fn flows_within(stream: &mut EventStream, wait: Duration) -> usize {
    let mut flows = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, stream.next_batch()).await {
        flows += batch.expect("a batch").iter().filter(|e| matches!(e, Event::Flow(_))).count();
    }
    flows
}

/// Starts an agent with `extra` flags, sends one UDP datagram between two pods, and returns how many
/// flows a subscriber got within `wait`.
fn flows_from_one_datagram(tag: &str, extra: &[&str], wait: Duration) -> usize {
    let lab = LabGuard::up(tag, &example("lab-netpol.yaml"));
    let dir = SocketDir::new(tag);
    let mut args = vec!["--drain-interval-ms", DRAIN_TICK_MS];
    args.extend_from_slice(extra);
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent.sock"), &args);
    let rt = runtime();
    rt.block_on(async {
        let mut stream = subscribed(&agent.socket).await;
        one_datagram(&lab.name).await;
        flows_within(&mut stream, wait).await
    })
}

/// Voluntary context switches of the agent's events reader thread so far.
fn reader_wakeups(agent_pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{agent_pid}/task")).expect("the agent's threads");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "fg-events-ring" {
            let status = std::fs::read_to_string(task.path().join("status")).expect("the reader's status");
            let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).expect("a switch count");
            return line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number");
        }
    }
    panic!("the agent {agent_pid} has no fg-events-ring thread");
}

#[test]
fn a_lone_record_wakes_the_reader_without_waiting_for_the_drain_tick() {
    require_root();
    // Well within the minute the tick would take, with room for a loaded machine.
    let flows = flows_from_one_datagram("wake1", &[], Duration::from_secs(10));
    assert!(flows > 0, "the datagram's records reached the client before the drain tick");
}

/// With `--events-poll-streams` the reader holds the programs' wake-ups off while it polls what a drain
/// found, and lets them through once a drain finds nothing (`agent/src/reader.rs`, `WakeupHold`). A reader that left them held would
/// leave a later lone record for the drain tick, a minute away.
#[test]
fn after_records_the_reader_lets_the_wakeups_through_again() {
    require_root();
    let lab = LabGuard::up("wake4", &example("lab-netpol.yaml"));
    let dir = SocketDir::new("wake4");
    let args = ["--drain-interval-ms", DRAIN_TICK_MS, "--events-poll-streams"];
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent.sock"), &args);
    runtime().block_on(async {
        let mut stream = subscribed(&agent.socket).await;
        for round in 0..3 {
            one_datagram(&lab.name).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut woke = false;
            while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, stream.next_batch()).await {
                if batch.expect("a batch").iter().any(|e| matches!(e, Event::Flow(_))) {
                    woke = true;
                    break;
                }
            }
            assert!(woke, "datagram {round}: its records woke the reader, long before the drain tick");
            // The rest of this datagram's records, and the reader's empty poll that releases the hold.
            flows_within(&mut stream, Duration::from_millis(500)).await;
        }
    });
}

#[test]
fn without_the_wakeup_interval_a_lone_record_waits_for_the_drain_tick() {
    require_root();
    let flows = flows_from_one_datagram("wake0", &["--events-wakeup-interval-us", "0"], Duration::from_secs(3));
    assert_eq!(flows, 0, "nothing woke the reader: the records wait in the ring for the tick");
}

#[test]
fn records_no_wakeup_announced_are_drained_by_the_backstop_after_records() {
    require_root();
    let lab = LabGuard::up("wake2", &example("lab-netpol.yaml"));
    let dir = SocketDir::new("wake2");
    // Wake-ups at least 3 s apart; the backstop is then 3 s after records (its tick is the larger of
    // the drain interval and the wake-up interval).
    let args = ["--drain-interval-ms", "100", "--events-wakeup-interval-us", "3000000"];
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent.sock"), &args);
    let by_source_port = runtime().block_on(async {
        let mut stream = subscribed(&agent.socket).await;
        // Past the reader's first backstop (it starts as after records).
        tokio::time::sleep(Duration::from_millis(3500)).await;
        // The first datagram's first record wakes the reader; the second datagram (a new flow from a
        // new source port) comes well within 3 s of that wake-up, so its records wake nobody, and
        // nothing follows them: only drains after records read them (a reader that slept after its
        // first batch would leave them in the ring for good).
        one_datagram(&lab.name).await;
        one_datagram(&lab.name).await;
        let mut by_source_port = std::collections::BTreeMap::<u16, usize>::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, stream.next_batch()).await {
            for event in batch.expect("a batch") {
                if let Event::Flow(flow) = event
                    && flow.destination_port == 81
                {
                    *by_source_port.entry(flow.source_port).or_default() += 1;
                }
            }
        }
        by_source_port
    });
    assert_eq!(
        by_source_port.len(),
        2,
        "flows of both datagrams (by source port) reached the client: {by_source_port:?}"
    );
    let counts: Vec<usize> = by_source_port.values().copied().collect();
    assert_eq!(counts[0], counts[1], "as many flows of each datagram: {by_source_port:?}");
}

#[test]
fn an_idle_reader_sleeps_until_the_kernel_wakes_it() {
    require_root();
    let lab = LabGuard::up("wake3", &example("lab-netpol.yaml"));
    let dir = SocketDir::new("wake3");
    // The default drain interval (5 ms): a reader ticking while idle would wake about 200 times a second.
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent.sock"), &[]);
    runtime().block_on(async {
        let mut stream = subscribed(&agent.socket).await;
        one_datagram(&lab.name).await;
        assert!(flows_within(&mut stream, Duration::from_secs(1)).await > 0, "records reached the client");
    });
    // Past the drain after those records, the reader waits for the kernel: no records, no wake-ups.
    let before = reader_wakeups(agent.pid());
    std::thread::sleep(Duration::from_secs(2));
    let woke = reader_wakeups(agent.pid()) - before;
    // A few for stray packets of the pods (neighbour discovery) are records too.
    assert!(woke <= 10, "the idle reader woke {woke} times in 2 s (a 5 ms tick would be about 400)");
}
