//! Losses are counted exactly, for both kinds of events buffer: with a buffer far too small for a burst
//! of real traffic, every record the kernel wrote is read, every record it could not write is counted
//! (failed ring-buffer reservations and perf-output failures in the kernel, perf lost-record notices in
//! the agent), and a subscriber receives every read record plus lost-events records adding up to every
//! loss.

use std::{path::Path, time::Duration};

use flowgate_proto::{
    client::{Client, EventStream},
    message::{Event, LossSource, Status, Subscription},
};
use flowgate_tests::{
    LabGuard,
    agent::{self, AgentGuard, SocketDir, runtime},
    example, lab_traffic, require_root,
};

async fn status(socket: &Path) -> Status {
    agent::request_status(socket).await.expect("the agent's status")
}

/// Reads until quiet; returns (flows, kernel-buffer losses told, other losses told).
async fn drain(stream: &mut EventStream) -> (u64, u64, u64) {
    let (mut flows, mut kernel, mut other) = (0, 0, 0);
    while let Ok(Some(Ok(batch))) = tokio::time::timeout(Duration::from_secs(2), stream.next_batch()).await {
        for e in batch {
            match e {
                Event::Flow(_) => flows += 1,
                Event::Lost(l) if l.source == LossSource::KernelBuffer => kernel += l.count,
                Event::Lost(l) => other += l.count,
            }
        }
    }
    (flows, kernel, other)
}

/// Five UDP packets from default/client to default/web:53 sent by a thread pinned to each CPU in turn,
/// so the kernel programs write a record on every CPU (their hooks run on the sending CPU).
fn trailing_records_on_every_cpu(state: &flowgate_tests::LabState) {
    let pod = |name: &str| state.pods.iter().find(|p| p.name == name).expect("a lab pod").clone();
    let (client, web) = (pod("client"), pod("web"));
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    for cpu in 0..cpus {
        let (netns, to) = (client.netns.clone(), std::net::SocketAddrV4::new(web.ip, 53));
        std::thread::spawn(move || {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).expect("a CPU index below the set's size");
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin the thread");
            // Entered on this (pinned) thread, so the packets leave from this CPU.
            flowgate_lab::netns::enter_current_thread(&netns).expect("enter the client's namespace");
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
            for _ in 0..5 {
                let _ = socket.send_to(b"trailing", to);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .expect("the trailing sender");
    }
}

fn burst(lab: &str) {
    lab_traffic(lab, "default/client", "default/web", "53", "UDP", "20000", &[]);
}

fn kernel(s: &Status, name: &str) -> u64 {
    *s.counters.kernel.get(name).unwrap_or_else(|| panic!("kernel counter {name} in {:?}", s.counters.kernel))
}

/// Runs a burst that overflows the events buffer under an agent started with `agent_args`; with
/// `trailing`, a few more records follow on every CPU. Returns the agent's status and what a subscriber
/// was told (flows, kernel-buffer losses, other losses).
fn run(tag: &str, agent_args: &[&str], trailing: bool) -> (Status, (u64, u64, u64)) {
    require_root();
    let lab = LabGuard::up(tag, &example("lab-small.yaml"));
    let dir = SocketDir::new(tag);
    let mut args = vec!["--monitor-aggregation", "none"];
    args.extend_from_slice(agent_args);
    let agent = AgentGuard::start(&lab.name, &dir.socket("agent.sock"), &args);
    let socket = agent.socket.clone();
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect(&socket, "losses-test").await.unwrap();
        let mut stream = client.subscribe(Subscription::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let name = lab.name.clone();
        let state = lab.saved_state();
        let reading = tokio::spawn(async move { drain(&mut stream).await });
        tokio::task::spawn_blocking(move || {
            burst(&name);
            // A few more records after the burst, on every CPU: a perf buffer (one per CPU) reports a loss
            // in front of the next record it can write, so each CPU's buffer gets a notice.
            if trailing {
                trailing_records_on_every_cpu(&state);
            }
        })
        .await
        .unwrap();
        // The kernel counters are polled every 100 ms.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let told = reading.await.unwrap();
        (status(&socket).await, told)
    })
}

#[test]
fn ring_buffer_losses_are_counted_exactly() {
    let (s, (flows, kernel_told, other)) = run("lossrb", &["--events-buffer-bytes", "4096"], false);
    let (written, lost) = (kernel(&s, "records_written"), kernel(&s, "records_lost"));
    println!(
        "ringbuf: written {written}, lost {lost}, read {}, told flows {flows} kernel-lost {kernel_told}",
        s.counters.records_read
    );
    assert!(lost > 0, "the 4 KiB ring buffer overflowed");
    assert_eq!(s.counters.records_read, written, "every record written was read");
    assert_eq!(s.counters.records_lost_kernel, lost);
    assert_eq!(other, 0, "the subscriber kept up");
    assert_eq!(flows, s.counters.records_read, "the subscriber got every record read");
    assert_eq!(kernel_told, lost, "and was told of every record lost");
}

#[test]
fn perf_buffer_losses_are_counted_exactly() {
    let (s, (flows, kernel_told, other)) = run("lossperf", &["--events-buffer", "perf", "--perf-pages", "1"], true);
    let (written, failed, full) =
        (kernel(&s, "records_written"), kernel(&s, "records_lost"), kernel(&s, "perf_buffer_full"));
    println!(
        "perf: written {written}, full {full}, other failures {failed}, read {}, notices {}, told flows {flows} kernel-lost {kernel_told}",
        s.counters.records_read, s.counters.perf_lost
    );
    assert!(full > 0, "the one-page perf buffers overflowed");
    assert_eq!(s.counters.records_read, written, "every record written was read");
    assert_eq!(s.counters.perf_lost, full, "every full-buffer refusal came back as a lost-records notice");
    assert_eq!(s.counters.records_lost_kernel, failed + full, "status counts each loss once");
    assert_eq!(other, 0, "the subscriber kept up");
    assert_eq!(flows, s.counters.records_read, "the subscriber got every record read");
    assert_eq!(kernel_told, failed + full, "and was told of every record lost, once");
}

/// A burst that ends the traffic: the perf buffers' lost-record notices never come (nothing is written
/// after the loss), and the subscriber is still told of every record lost, from the kernel's counter.
#[test]
fn perf_buffer_losses_at_the_end_of_a_burst_are_reported_without_their_notice() {
    let (s, (flows, kernel_told, other)) = run("lossperfend", &["--events-buffer", "perf", "--perf-pages", "1"], false);
    let (written, failed, full) =
        (kernel(&s, "records_written"), kernel(&s, "records_lost"), kernel(&s, "perf_buffer_full"));
    println!(
        "perf, no trailing records: written {written}, full {full}, other failures {failed}, notices {}, told flows {flows} kernel-lost {kernel_told}",
        s.counters.perf_lost
    );
    assert!(full > 0, "the one-page perf buffers overflowed");
    assert!(s.counters.perf_lost <= full, "notices never exceed what the kernel refused");
    assert_eq!(s.counters.records_lost_kernel, failed + full, "status counts each loss once");
    assert_eq!(other, 0, "the subscriber kept up");
    assert_eq!(flows, s.counters.records_read, "the subscriber got every record read");
    assert_eq!(kernel_told, failed + full, "and was told of every record lost, once, notice or not");
}
