//! Section "events": records produced by the real kernel programs at full speed (BPF_PROG_TEST_RUN
//! loops) go through the agent's reader, decoder, enricher, hub and unix socket to 1 and to 4 client
//! processes, over the ring buffer and over the perf event array. A run stops the producer, then waits
//! until every client has received or been told it lost every record the kernel was offered
//! (`offered = delivered + reported lost`, checked exactly per client). Also the verdict log alone:
//! records per second written as whole JSON lines.

use std::{
    io::BufRead as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use flowgate_tests::TempDir;

use crate::{
    events_agent::{AgentOptions, BenchAgent, EventsBuffer},
    events_clients::{ClientKind, ClientProcess, wait_accounted, wait_subscribed},
    median,
    report::{Figure, Section, Target},
};

/// Delivered to one client, per second, with no loss: the bar.
pub const TARGET_EVENTS_PER_SECOND: f64 = 1_000_000.0;

/// Packets per BPF_PROG_TEST_RUN call at full speed. Small enough that the producer holds the agent's
/// controller (which the kernel-loss poll also takes, every 100 ms) for well under a millisecond at a
/// time; large enough that the syscall is a small part of each call.
const FULL_SPEED_CHUNK: u32 = 2_000;

/// How long a run waits for the clients after the producer stopped.
const ACCOUNT_TIMEOUT: Duration = Duration::from_secs(15);

/// How a run drives the kernel.
#[derive(Clone, Copy, Debug)]
pub enum Production {
    /// `records` as fast as the programs run, [`FULL_SPEED_CHUNK`] packets per run.
    FullSpeed { records: u64 },
    /// `rate` records per second for `secs`, 1,000 packets per tick.
    Paced { rate: u64, secs: u64 },
}

/// What one client got in one run.
#[derive(Clone, Debug)]
pub struct ClientOutcome {
    pub kind: ClientKind,
    pub delivered: u64,
    pub lost: u64,
}

/// One run: what was offered, what each client got, and when the last one had it all.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub offered: u64,
    pub kernel_lost: u64,
    pub clients: Vec<ClientOutcome>,
    /// From the first record produced to the last client accounted for.
    pub elapsed: Duration,
    pub produce_time: Duration,
    /// Whether some client had neither everything nor its loss notice when the wait gave up.
    pub timed_out: bool,
}

impl RunOutcome {
    /// Records of the worst client that are neither delivered nor reported lost (or counted twice).
    pub fn unaccounted(&self) -> u64 {
        self.clients.iter().map(|c| (c.delivered + c.lost).abs_diff(self.offered)).max().unwrap_or(0)
    }

    pub fn min_delivered_rate(&self) -> f64 {
        self.clients.iter().map(|c| c.delivered).min().unwrap_or(0) as f64 / self.elapsed.as_secs_f64()
    }

    pub fn max_lost(&self) -> u64 {
        self.clients.iter().map(|c| c.lost).max().unwrap_or(0)
    }
}

/// Runs the agent with `kinds` as clients and `production`, and accounts for every record.
pub fn run(buffer: EventsBuffer, kinds: &[ClientKind], production: Production) -> anyhow::Result<RunOutcome> {
    let agent = BenchAgent::start(buffer, &AgentOptions::default())?;
    let base = agent.state().hub().subscribers();
    let mut clients =
        kinds.iter().map(|k| ClientProcess::start(*k, agent.socket(), false)).collect::<anyhow::Result<Vec<_>>>()?;
    wait_subscribed(agent.state().hub(), base + clients.len())?;
    let started = Instant::now();
    match production {
        Production::FullSpeed { records } => {
            agent.produce_full_speed(records, FULL_SPEED_CHUNK)?;
        }
        Production::Paced { rate, secs } => {
            agent.produce_paced(rate, Duration::from_secs(secs), 1_000)?;
        }
    }
    let produce_time = started.elapsed();
    let done = wait_accounted(&clients, || Ok(agent.offered()?.total()), ACCOUNT_TIMEOUT)?;
    let offered = agent.offered()?;
    let timed_out = clients.iter().any(|c| c.flows() + c.lost() < offered.total());
    // A late loss notice or a duplicate would show here: give the counts a moment to settle.
    std::thread::sleep(Duration::from_millis(150));
    let outcome = RunOutcome {
        offered: offered.total(),
        kernel_lost: offered.lost,
        clients: clients.iter().map(|c| ClientOutcome { kind: c.kind, delivered: c.flows(), lost: c.lost() }).collect(),
        elapsed: done - started,
        produce_time,
        timed_out,
    };
    for c in clients.drain(..) {
        c.finish()?;
    }
    Ok(outcome)
}

/// The verdict log alone (no socket client): records per second written, and whether every line is
/// a whole JSON object. Returns (records/s, lines that are not whole JSON, records written).
pub fn verdict_log_run(records: u64) -> anyhow::Result<(f64, u64, u64)> {
    let dir = TempDir::new("verdict-log");
    let path = dir.0.join("verdicts.jsonl");
    let agent = BenchAgent::start(
        EventsBuffer::RingBuffer,
        &AgentOptions { verdict_log: Some(path.clone()), ..AgentOptions::default() },
    )?;
    let stats = agent.verdict_log_stats().context("the verdict log did not start")?;
    let started = Instant::now();
    agent.produce_full_speed(records, FULL_SPEED_CHUNK)?;
    let deadline = Instant::now() + ACCOUNT_TIMEOUT;
    let mut finished = Instant::now();
    loop {
        let offered = agent.offered()?;
        let written = stats.records_written.load(std::sync::atomic::Ordering::Relaxed);
        let lost = stats.records_lost.load(std::sync::atomic::Ordering::Relaxed);
        if written + lost + offered.lost >= offered.total() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
        finished = Instant::now();
    }
    let written = stats.records_written.load(std::sync::atomic::Ordering::Relaxed);
    drop(agent);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut broken = 0u64;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if serde_json::from_str::<serde_json::Value>(&line).map_or(true, |v| !v.is_object()) {
            broken += 1;
        }
    }
    Ok((written as f64 / (finished - started).as_secs_f64(), broken, written))
}

fn client_label(kinds: &[ClientKind]) -> String {
    match kinds {
        [one] => format!("1 client ({})", one.name()),
        many => {
            let monitors = many.iter().filter(|k| **k == ClientKind::MonitorJson).count();
            format!("{} clients ({monitors} monitor -o json, {} library)", many.len(), many.len() - monitors)
        }
    }
}

/// Measures the section: `repeats` runs of each case, medians.
pub fn measure(quick: bool) -> anyhow::Result<Section> {
    let mut section = Section::new("events");
    let repeats = if quick { 1 } else { 3 };
    // Quick runs (the smoke test, on debug builds) stay small so that even a debug client keeps up.
    let records = if quick { 20_000 } else { 500_000 };
    // Offered above the bar: delivered over the window from the first record to the last delivery can
    // never reach the offered rate (the window includes the last record's way through), so 1M/s offered
    // cannot show 1M/s delivered even when nothing is lost.
    let (paced_rate, paced_secs) = if quick { (20_000, 1) } else { (1_200_000, 2) };
    let four = [ClientKind::MonitorJson, ClientKind::MonitorJson, ClientKind::Library, ClientKind::Library];
    let cases: Vec<(&[ClientKind], Production)> = vec![
        (&[ClientKind::Library], Production::FullSpeed { records }),
        (&[ClientKind::MonitorJson], Production::FullSpeed { records }),
        (&[ClientKind::Library], Production::Paced { rate: paced_rate, secs: paced_secs }),
        (&four, Production::FullSpeed { records }),
    ];
    for buffer in [EventsBuffer::RingBuffer, EventsBuffer::PerfEventArray] {
        for (kinds, production) in &cases {
            let mut outcomes = Vec::new();
            for _ in 0..repeats {
                outcomes.push(
                    run(buffer, kinds, *production)
                        .with_context(|| format!("{} to {} ({production:?})", buffer.name(), client_label(kinds)))?,
                );
            }
            let how = match production {
                Production::FullSpeed { records } => format!("{records} records at full speed"),
                Production::Paced { rate, secs } => format!("{rate}/s offered for {secs} s"),
            };
            let name = format!("{}, {}, {}", buffer.name(), client_label(kinds), how);
            let rate = median(outcomes.iter().map(RunOutcome::min_delivered_rate).collect());
            let lost = median(outcomes.iter().map(|o| o.max_lost() as f64).collect());
            let unaccounted = outcomes.iter().map(RunOutcome::unaccounted).max().unwrap_or(0);
            let produced = median(outcomes.iter().map(|o| o.offered as f64 / o.produce_time.as_secs_f64()).collect());
            let spread: Vec<String> = outcomes
                .iter()
                .map(|o| {
                    format!(
                        "offered {} (kernel lost {}), per client delivered+lost {}{}",
                        o.offered,
                        o.kernel_lost,
                        o.clients.iter().map(|c| format!("{}+{}", c.delivered, c.lost)).collect::<Vec<_>>().join(", "),
                        if o.timed_out { format!(" (still short after {ACCOUNT_TIMEOUT:?})") } else { String::new() }
                    )
                })
                .collect();
            let note = format!(
                "median of {repeats}; kernel produced {produced:.0} records/s; slowest client counted; runs: {}",
                spread.join("; ")
            );
            let mut delivered = Figure::new(format!("{name}: delivered"), rate, "events/s").note(note);
            if kinds.len() == 1 && *kinds == [ClientKind::Library] {
                delivered = delivered.target(Target::at_least(TARGET_EVENTS_PER_SECOND));
            }
            section.push(delivered);
            let mut lost_figure = Figure::new(format!("{name}: reported lost"), lost, "events");
            if matches!(production, Production::Paced { .. }) {
                lost_figure = lost_figure.target(Target::at_most(0.0));
            }
            section.push(lost_figure);
            section.push(
                Figure::new(format!("{name}: offered - delivered - lost"), unaccounted as f64, "events")
                    .target(Target::at_most(0.0))
                    .note("worst client of every run; must be exactly 0"),
            );
        }
    }
    let mut rates = Vec::new();
    let mut broken = 0;
    let mut written = 0;
    for _ in 0..repeats {
        let (rate, b, w) = verdict_log_run(records)?;
        rates.push(rate);
        broken += b;
        written = w;
    }
    section.push(Figure::new("verdict log alone, every record a line: written", median(rates), "records/s").note(
        format!("median of {repeats}; {records} records offered at full speed, {written} written in the last run"),
    ));
    section.push(
        Figure::new("verdict log alone: lines that are not whole JSON objects", broken as f64, "lines")
            .target(Target::at_most(0.0)),
    );
    Ok(section)
}
