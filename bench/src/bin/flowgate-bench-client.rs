//! `flowgate-bench-client`: a subscriber on the agent's socket built on the client library
//! (`flowgate_proto::client`), for the events and latency benchmarks. It subscribes to everything and
//! prints `count FLOWS LOST` (flows received, events its loss notices said were lost) whenever they
//! changed, every 5 ms at most. With `--latency` it also takes, per flow, the time from the kernel's
//! timestamp (CLOCK_MONOTONIC, `bpf_ktime_get_ns`) to the batch's receipt into a histogram; a `reset`
//! line on stdin clears it (end of warm-up). When stdin closes it prints its last count and, with
//! `--latency`, `latency COUNT P50_NS P99_NS MAX_NS`, and exits. The socket is `$FLOWGATE_SOCKET`.

use std::{io::Write as _, time::Duration};

use anyhow::Context as _;
use flowgate_events::clock::monotonic_ns;
use flowgate_proto::{
    client::{Client, SOCKET_ENV},
    message::{Event, Subscription},
};
use hdrhistogram::Histogram;
use tokio::io::AsyncBufReadExt as _;

fn main() -> anyhow::Result<()> {
    let latency = std::env::args().any(|a| a == "--latency");
    let socket = std::env::var_os(SOCKET_ENV).with_context(|| format!("${SOCKET_ENV} names no socket"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = Client::connect(&socket, "flowgate-bench-client").await?;
        let mut stream = client.subscribe(Subscription::default()).await?;
        let mut histogram = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?;
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = std::io::stdout().lock();
        let (mut flows, mut lost, mut printed) = (0u64, 0u64, (0u64, 0u64));
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                batch = stream.next_batch() => {
                    let Some(batch) = batch else { break };
                    let batch = batch.context("reading events")?;
                    let now = monotonic_ns();
                    for event in &batch {
                        match event {
                            Event::Flow(flow) => {
                                flows += 1;
                                if latency {
                                    let _ = histogram.record(now.saturating_sub(flow.ktime_ns).max(1_000));
                                }
                            }
                            Event::Lost(l) => lost += l.count,
                        }
                    }
                }
                _ = tick.tick() => {
                    if (flows, lost) != printed {
                        writeln!(stdout, "count {flows} {lost}")?;
                        stdout.flush()?;
                        printed = (flows, lost);
                    }
                }
                line = stdin.next_line() => match line {
                    Ok(Some(l)) if l.trim() == "reset" => histogram.reset(),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
            }
        }
        writeln!(stdout, "count {flows} {lost}")?;
        if latency {
            writeln!(
                stdout,
                "latency {} {} {} {}",
                histogram.len(),
                histogram.value_at_quantile(0.50),
                histogram.value_at_quantile(0.99),
                histogram.max()
            )?;
        }
        stdout.flush()?;
        anyhow::Ok(())
    })
}
