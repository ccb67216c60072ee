//! `flowgate-bench`: the hub's fan-out, publishing 100k flows/s to a verdict-log-like subscriber and a
//! plain client, alone and beside 64 subscribers whose filters each name 1,000 pods (none of them
//! matching): the cost of a publish per flow, and what the two consumers lost (nothing, if filters
//! cannot hurt others). The rest of the benchmarks are the suite in `bench/` (`make bench`).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flowgate_events::hub::{Hub, HubConfig};
use flowgate_proto::message::{Event, Subscription};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
