//! Ring-buffer wake-ups on the real kernel ring: a lone record wakes the agent's reader by itself (the
//! wake-up interval), so it reaches a client long before the reader's drain tick; with the interval
//! turned off the same lone record waits for the tick (below the 256 KiB threshold the kernel does not
//! wake the reader), which shows the first test could fail.

use std::{path::Path, time::Duration};

use flowgate_proto::{
    client::{Client, EventStream},
    message::{Event, Subscription},
};
use flowgate_tests::{
    LabGuard,
    agent::{AgentGuard, SocketDir, runtime, wait_subscribed},
    example, flowgate_ok, require_root,
};

/// The reader's drain tick in these tests: after the tick at start, the next is a minute away.
const DRAIN_TICK_MS: &str = "60000";

async fn subscribed(socket: &Path) -> EventStream {
    let client = Client::connect(socket, "wakeup-test").await.expect("connect");
    let stream = client.subscribe(Subscription::default()).await.expect("subscribe");
    wait_subscribed(socket, 1).await;
    stream
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
        let name = lab.name.clone();
        tokio::task::spawn_blocking(move || {
            flowgate_ok(&[
                "lab",
                "traffic",
                "--lab",
                &name,
                "--from",
                "x/a",
                "--to",
                "y/b",
                "--port",
                "81",
                "--protocol",
                "UDP",
                "--count",
                "1",
            ])
        })
        .await
        .unwrap();
        let mut flows = 0;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, stream.next_batch()).await {
            flows += batch.expect("a batch").iter().filter(|e| matches!(e, Event::Flow(_))).count();
        }
        flows
    })
}

#[test]
fn a_lone_record_wakes_the_reader_without_waiting_for_the_drain_tick() {
    require_root();
    // Well within the minute the tick would take, with room for a loaded machine.
    let flows = flows_from_one_datagram("wake1", &[], Duration::from_secs(10));
    assert!(flows > 0, "the datagram's records reached the client before the drain tick");
}

#[test]
fn without_the_wakeup_interval_a_lone_record_waits_for_the_drain_tick() {
    require_root();
    let flows = flows_from_one_datagram("wake0", &["--events-wakeup-interval-us", "0"], Duration::from_secs(3));
    assert_eq!(flows, 0, "nothing woke the reader: the records wait in the ring for the tick");
}
