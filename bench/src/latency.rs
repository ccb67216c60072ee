//! Section "latency": from the kernel's timestamp of a record (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to
//! its receipt by a client process on the agent's socket (the client library's
//! `flowgate-bench-client --latency`, which reads the same clock), at a paced 10k and 100k records per
//! second, with the agent's default buffer settings (batched wake-ups, 5 ms drain tick), with the ring
//! buffer's reader polling streams (`--events-poll-streams`), and with the perf event array. Percentiles
//! come from an HDR histogram in the client, after a warm-up that is not counted.

use std::time::Duration;

use crate::{
    events_agent::{AgentOptions, BenchAgent, EventsBuffer},
    events_clients::{ClientKind, ClientProcess, LatencyReport, wait_accounted, wait_subscribed},
    report::{Figure, Section, Target},
};

/// p99 at 100k events/s, the bar.
pub const TARGET_P99_MS: f64 = 1.0;

/// One paced run: the client's percentiles, and what it got versus what was offered.
pub fn run(
    buffer: EventsBuffer,
    poll_streams: bool,
    rate: u64,
    secs: f64,
) -> anyhow::Result<(LatencyReport, u64, u64, u64)> {
    let agent = BenchAgent::start(buffer, &AgentOptions { poll_streams, ..AgentOptions::default() })?;
    let base = agent.state().hub().subscribers();
    let client = ClientProcess::start(ClientKind::Library, agent.socket(), true)?;
    wait_subscribed(agent.state().hub(), base + 1)?;
    // A packet every 100 us, `rate / 10,000` records each.
    let per_tick = u32::try_from((rate / 10_000).max(1))?;
    agent.produce_paced(rate, Duration::from_millis(500), per_tick)?;
    let clients = [client];
    wait_accounted(&clients, || Ok(agent.offered()?.total()), Duration::from_secs(10))?;
    let [mut client] = clients;
    client.reset_latency()?;
    std::thread::sleep(Duration::from_millis(20));
    agent.produce_paced(rate, Duration::from_secs_f64(secs), per_tick)?;
    let clients = [client];
    wait_accounted(&clients, || Ok(agent.offered()?.total()), Duration::from_secs(10))?;
    let [client] = clients;
    let offered = agent.offered()?.total();
    let (flows, lost) = (client.flows(), client.lost());
    let report = client.finish()?.unwrap_or_default();
    Ok((report, offered, flows, lost))
}

pub fn measure(quick: bool) -> anyhow::Result<Section> {
    let mut section = Section::new("latency");
    let secs = if quick { 1.0 } else { 5.0 };
    // The agent's default reader, the ring buffer's reader polling streams (`--events-poll-streams`), and
    // the perf event array.
    let readers = [
        (EventsBuffer::RingBuffer, false, ""),
        (EventsBuffer::RingBuffer, true, " polled (--events-poll-streams)"),
        (EventsBuffer::PerfEventArray, false, ""),
    ];
    for (buffer, poll_streams, how) in readers {
        for rate in [10_000u64, 100_000] {
            let (r, offered, flows, lost) = run(buffer, poll_streams, rate, secs)?;
            let name = format!("{}{how}, {}k events/s paced, kernel timestamp to client", buffer.name(), rate / 1000);
            let note = format!(
                "{} samples over {secs} s after a 0.5 s warm-up; offered {offered}, client got {flows} + {lost} lost",
                r.count
            );
            let ms = |ns: u64| ns as f64 / 1e6;
            section.push(Figure::new(format!("{name}: p50"), ms(r.p50_ns), "ms").note(note.clone()));
            let mut p99 = Figure::new(format!("{name}: p99"), ms(r.p99_ns), "ms").note(note.clone());
            if rate == 100_000 {
                p99 = p99.target(Target::at_most(TARGET_P99_MS));
            }
            section.push(p99);
            section.push(Figure::new(format!("{name}: max"), ms(r.max_ns), "ms").note(note));
        }
    }
    Ok(section)
}
