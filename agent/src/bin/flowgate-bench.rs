//! `flowgate-bench`: measures the event pipeline on this machine and prints a table (the datapath per
//! packet is `flowgate-bench-datapath`, in the benchmark suite). Figures are medians of several runs,
//! because the machine is shared and noisy; compare ratios within one run rather than absolute numbers
//! across runs.
//!
//! - drain: records per second that the agent's reader + pipeline (decode, enrich, hub, one subscriber)
//!   takes out of the ring buffer while the kernel programs write as fast as they can, with batched
//!   wake-ups versus a wake-up per record, and the loss the kernel counted;
//! - fan-out: the hub publishing 100k flows/s to a verdict-log-like subscriber and a plain client, alone
//!   and beside 64 subscribers whose filters each name 1,000 pods (none of them matching): the cost of a
//!   publish per flow, and what the two consumers lost (nothing, if filters cannot hurt others).

use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use flowgate_agent::{
    craft::{Transport, ipv4_packet},
    datapath::{self, Datapath, DatapathOptions},
    state::{AgentInfo, AgentState},
};
use flowgate_common::{Counter, counters::aggregation, names::PROG_FROM_ENDPOINT};
use flowgate_events::{
    hub::{Hub, HubConfig},
    pipeline::Pipeline,
};
use flowgate_proto::{
    endpoint::NewEndpoint,
    message::{Event, Subscription},
};

/// skb->ifindex under BPF_PROG_TEST_RUN: the loopback device of the caller's namespace.
const TEST_RUN_IFINDEX: u32 = 1;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn syn() -> Vec<u8> {
    ipv4_packet(
        Ipv4Addr::new(10, 200, 0, 10),
        Ipv4Addr::new(10, 200, 0, 11),
        Transport::Tcp { sport: 40000, dport: 80, flags: 0x02 },
    )
}

fn load(wakeup_bytes: u64) -> anyhow::Result<(Datapath, Arc<AgentState>)> {
    // Every packet produces a record: the drain measurements need a steady stream of them.
    let mut dp = Datapath::load(DatapathOptions {
        events_buffer_bytes: 8 << 20,
        wakeup_bytes,
        aggregation: aggregation::NONE,
        ..DatapathOptions::default()
    })
    .context("loading the datapath (run as root)")?;
    let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
    let ep = state.upsert_endpoint(
        NewEndpoint {
            namespace: "bench".into(),
            pod_name: "client".into(),
            labels: [("app".to_string(), "client".to_string())].into(),
            ipv4: Ipv4Addr::new(10, 200, 0, 10),
            ipv6: None,
            interface: "lo".into(),
            ifindex: TEST_RUN_IFINDEX,
        },
        &Default::default(),
    );
    dp.set_endpoint(TEST_RUN_IFINDEX, datapath::endpoint_info(&ep))?;
    Ok((dp, state))
}

/// Generates records with the programs for `runs` rounds while the pipeline drains. Returns (median ns
/// per packet, stats).
fn drain_run(wakeup_bytes: u64, runs: usize, repeat: u32) -> anyhow::Result<(f64, DrainStats)> {
    let (mut dp, state) = load(wakeup_bytes)?;
    let ring = dp.take_events()?;
    let packet = syn();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut sub = state.hub().subscribe(&Subscription::default());
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let pipeline = Pipeline::new(Arc::clone(&state));
        runtime.spawn(flowgate_agent::reader::run(ring, Duration::from_millis(5), pipeline))
    };
    let consumer = {
        let delivered = Arc::clone(&delivered);
        let mut rx = sub.rx.take().expect("follow subscription");
        runtime.spawn(async move {
            while let Some(batch) = rx.recv().await {
                let flows = batch.iter().filter(|e| matches!(e, Event::Flow(_))).count() as u64;
                delivered.fetch_add(flows, Ordering::Relaxed);
            }
        })
    };
    let dp = Arc::new(Mutex::new(dp));
    let start = Instant::now();
    let mut ns = Vec::new();
    for _ in 0..runs {
        let result = dp.lock().unwrap().test_run(PROG_FROM_ENDPOINT, &packet, repeat)?;
        ns.push(result.duration.as_nanos() as f64);
    }
    let generated_for = start.elapsed();
    // Let the reader catch up with what is already in the buffer.
    let total = u64::from(repeat) * runs as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = dp.lock().unwrap().counters()?;
        let read = state.counters.records_read.load(Ordering::Relaxed);
        if read + c.get(Counter::RecordsLost) >= total || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    reader.abort();
    consumer.abort();
    let counters = dp.lock().unwrap().counters()?;
    let stats = DrainStats {
        generated: total,
        read: state.counters.records_read.load(Ordering::Relaxed),
        lost_kernel: counters.get(Counter::RecordsLost),
        delivered: delivered.load(Ordering::Relaxed),
        generate_secs: generated_for.as_secs_f64(),
        secs: elapsed.as_secs_f64(),
    };
    drop(sub);
    Ok((median(ns), stats))
}

struct DrainStats {
    generated: u64,
    read: u64,
    lost_kernel: u64,
    delivered: u64,
    generate_secs: f64,
    secs: f64,
}

/// What one fan-out run measured.
struct Fanout {
    /// Nanoseconds of `Hub::publish` per flow (median over the run's batches).
    publish_ns_per_flow: f64,
    /// Events the verdict-log-like and the plain subscriber were told they lost.
    lost: [u64; 2],
    delivered: [u64; 2],
}

/// Offers `rate` flows per second for `secs` seconds (batches of 100) to a hub with a verdict-log-like
/// subscriber (policy verdicts and drops), a plain subscriber (everything), and `filtered` subscribers
/// whose filters name 1,000 pods each that no flow involves. Each subscriber drains on its own thread.
fn fanout_run(filtered: usize, rate: u64, secs: u64) -> Fanout {
    use flowgate_proto::{
        filter::FlowFilter,
        flow::{EventType, fixtures::flow_between},
    };
    let hub = Hub::new(HubConfig { history: 4096, queue_events: 65536 });
    let log_like = Subscription {
        allow: vec![FlowFilter { event_types: vec![EventType::PolicyVerdict, EventType::Drop], ..Default::default() }],
        ..Subscription::default()
    };
    let pods: Vec<_> = (0..1000).map(|i| format!("other/pod-{i}").parse().expect("a pod selector")).collect();
    let narrow = Subscription { allow: vec![FlowFilter { pods, ..FlowFilter::default() }], ..Subscription::default() };
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters = Vec::new();
    let mut threads = Vec::new();
    let mut subscribers: Vec<Subscription> = vec![log_like, Subscription::default()];
    subscribers.extend(std::iter::repeat_n(narrow, filtered));
    for sub in subscribers {
        let mut subscriber = hub.subscribe(&sub);
        let mut rx = subscriber.rx.take().expect("a following subscription");
        let counts = Arc::new(Mutex::new((0u64, 0u64)));
        counters.push(Arc::clone(&counts));
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let _keep = subscriber;
            loop {
                match rx.try_recv() {
                    Ok(batch) => {
                        let mut c = counts.lock().unwrap();
                        for e in batch {
                            match e {
                                Event::Flow(_) => c.0 += 1,
                                Event::Lost(l) => c.1 += l.count,
                            }
                        }
                    }
                    Err(_) if stop.load(Ordering::Acquire) => return,
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        }));
    }
    let flows: Vec<Arc<flowgate_proto::Flow>> = (0..100u16)
        .map(|i| {
            let mut f = flow_between(1, 2, 1000 + i);
            f.event_type = if i % 2 == 0 { EventType::PolicyVerdict } else { EventType::Trace };
            Arc::new(f)
        })
        .collect();
    let batches = rate * secs / 100;
    let interval = Duration::from_secs_f64(100.0 / rate as f64);
    let started = Instant::now();
    let mut costs = Vec::with_capacity(batches as usize);
    for n in 0..batches {
        let due = started + interval.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        hub.publish(&flows);
        costs.push(t.elapsed().as_nanos() as f64 / flows.len() as f64);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    for t in threads {
        let _ = t.join();
    }
    let read = |i: usize| *counters[i].lock().unwrap();
    let (log, plain) = (read(0), read(1));
    Fanout { publish_ns_per_flow: median(costs), lost: [log.1, plain.1], delivered: [log.0, plain.0] }
}

fn main() -> anyhow::Result<()> {
    // `flowgate-bench fanout` runs only the fan-out part (no kernel programs needed).
    if std::env::args().nth(1).as_deref() == Some("fanout") {
        return fanout_table();
    }
    let runs = 5;
    println!("flowgate-bench (medians of {runs} runs; kernel: BPF_PROG_TEST_RUN)\n");

    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "drain (reader+pipeline+hub)", "generated", "read", "lost(krn)", "to client", "read/s"
    );
    let mut rates = Vec::new();
    for (label, wakeup) in [("batched wake-ups (256 KiB)", 256u64 << 10), ("wake-up per record", 0)] {
        let (_, s) = drain_run(wakeup, runs, 200_000)?;
        let rate = s.read as f64 / s.secs;
        rates.push(rate);
        println!(
            "{:<34} {:>10} {:>10} {:>10} {:>10} {:>14.0}",
            label, s.generated, s.read, s.lost_kernel, s.delivered, rate
        );
        let _ = s.generate_secs;
    }
    println!("\nbatched / per-record drain rate: {:.2}x", rates[0] / rates[1]);
    println!();
    fanout_table()
}

fn fanout_table() -> anyhow::Result<()> {
    println!(
        "{:<44} {:>12} {:>14} {:>12} {:>14} {:>12}",
        "fan-out at 100k flows/s for 5 s", "publish ns", "log delivered", "log lost", "client deliv.", "client lost"
    );
    let mut costs = Vec::new();
    for filtered in [0, 64] {
        let f = fanout_run(filtered, 100_000, 5);
        costs.push(f.publish_ns_per_flow);
        println!(
            "{:<44} {:>12.0} {:>14} {:>12} {:>14} {:>12}",
            format!("+ {filtered} subscribers with 1,000-pod filters"),
            f.publish_ns_per_flow,
            f.delivered[0],
            f.lost[0],
            f.delivered[1],
            f.lost[1]
        );
    }
    println!(
        "publish cost with 64 filtered subscribers / without: {:.2}x (per flow, on the reader's thread)",
        costs[1] / costs[0]
    );
    Ok(())
}
