//! The verdict log: every policy verdict and drop (traces on request) appended to a JSON-lines file in
//! the Hubble-shaped flow JSON of `flowgate monitor -o json`, rotated by size. It is a hub subscriber on
//! its own thread: the hub's bounded queue for it is the only thing between the event pipeline and the
//! disk, so a slow disk costs the log records (counted, and marked in the log with a `lost_events`
//! line as Hubble's exporter does), never the pipeline's time. [`writer`] is that thread, [`file`] what
//! reaches the disk and how, [`config`] the include/exclude filters and rotation settings, [`reload`]
//! follows the configuration file.

pub mod config;
pub mod file;
mod reload;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use flowgate_proto::{
    Flow,
    filter::{FilterSet, FlowFilter},
    flow::EventType,
    hubble,
    message::{Event, LossSource, LostEvents, Subscription},
};
use log::info;

use self::{
    config::{ConfigError, LogSettings},
    file::LogFile,
    reload::ConfigFollower,
    writer::Writer,
};
use flowgate_events::hub::Hub;

/// Default path of the log.
pub use flowgate_proto::verdict_log_files::DEFAULT_PATH;
/// Largest single write: a long batch goes to disk in writes of about this size.
const MAX_WRITE_BYTES: usize = 1 << 20;
/// The loss records the log itself could not take (queue full, write failed) are marked as: Hubble's
/// `OBSERVER_EVENTS_QUEUE`.
pub const LOST_SOURCE_LOG: LossSource = LossSource::ClientQueue;

/// Writes a flow's Hubble-shaped JSON line (`{"flow":{..},"node_name":..,"time":..}`, no newline) into
/// the buffer; the agent passes `flowgate_proto::hubble::write_flow_json`, which `flowgate monitor -o json`
/// prints too.
pub type FlowEncoder = fn(&mut Vec<u8>, &Flow, &str);

#[derive(Clone, Debug)]
pub struct VerdictLogOptions {
    pub path: PathBuf,
    /// Settings from the command line; the configuration file overrides what it sets.
    pub settings: LogSettings,
    /// Re-read when it changes.
    pub config_file: Option<PathBuf>,
    /// Also log trace records (forwarded packets), not only verdicts and drops.
    pub traces: bool,
    /// `node_name` of every line.
    pub node_name: String,
    /// How often the configuration file is checked for changes.
    pub reload_interval: Duration,
}

/// What the log did, since start. Read by `status` and the metrics.
#[derive(Debug, Default)]
pub struct VerdictLogStats {
    /// Flow records written whole to the file.
    pub records_written: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Flow records meant for the log that are not in it: its queue was full, or the write failed.
    pub records_lost: AtomicU64,
    /// The part of `records_lost` that the hub dropped because the log's queue was full.
    pub queue_lost: AtomicU64,
    /// Writes that failed (disk full, I/O error); their records are in `records_lost`.
    pub write_failures: AtomicU64,
    pub rotations: AtomicU64,
    /// `lost_events` lines written.
    pub lost_markers: AtomicU64,
    /// Successful reloads of the configuration file.
    pub config_reloads: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerdictLogError {
    #[error("opening the verdict log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("starting the verdict log's thread")]
    Thread(#[source] std::io::Error),
}

/// The running log; [`VerdictLog::stop`] writes what is queued and closes it.
pub struct VerdictLog {
    stats: Arc<VerdictLogStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The event types a log with or without traces subscribes to.
pub fn event_types(traces: bool) -> Vec<EventType> {
    let mut types = vec![EventType::PolicyVerdict, EventType::Drop];
    if traces {
        types.push(EventType::Trace);
    }
    types
}

impl VerdictLog {
    /// Opens the log, subscribes to the hub and starts the writer thread. The thread waits for batches
    /// with `runtime`'s timers.
    pub fn start(
        hub: &Arc<Hub>,
        runtime: tokio::runtime::Handle,
        options: VerdictLogOptions,
        encoder: FlowEncoder,
    ) -> Result<Self, VerdictLogError> {
        let follower = options
            .config_file
            .clone()
            .map(|path| ConfigFollower::new(path, options.settings.clone(), options.reload_interval));
        let settings = match &follower {
            Some(f) => f.load()?,
            None => options.settings.clone(),
        };
        let file = LogFile::open(&options.path, settings.rotation)
            .map_err(|source| VerdictLogError::Open { path: options.path.clone(), source })?;
        // Event types are chosen in the hub, so records the log does not want never fill its queue;
        // include/exclude are applied here, so a reload needs no new subscription (no gap, no repeat).
        let mut subscriber = hub.subscribe(&Subscription {
            allow: vec![FlowFilter { event_types: event_types(options.traces), ..Default::default() }],
            ..Subscription::default()
        });
        let rx = subscriber.rx.take().expect("a following subscription has a queue");
        let stats = Arc::new(VerdictLogStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        info!(
            "writing verdicts{} to {} (rotated at {} bytes, {} backups{})",
            if options.traces { " and traces" } else { "" },
            options.path.display(),
            settings.rotation.max_size,
            settings.rotation.max_backups,
            if settings.rotation.compress { ", compressed" } else { "" }
        );
        let writer = Writer {
            file,
            filters: FilterSet::compile(&settings.include, &settings.exclude),
            settings,
            follower,
            tick: options.reload_interval.min(Duration::from_millis(200)),
            node: options.node_name,
            encoder,
            stats: Arc::clone(&stats),
            buf: Vec::new(),
            buf_records: 0,
            buf_markers: Vec::new(),
            line: Vec::new(),
            unmarked: Vec::new(),
            failing: false,
        };
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("verdict-log".into())
            .spawn(move || writer.run(subscriber, rx, &runtime, &thread_stop))
            .map_err(VerdictLogError::Thread)?;
        Ok(Self { stats, stop, thread: Some(thread) })
    }

    pub fn stats(&self) -> Arc<VerdictLogStats> {
        Arc::clone(&self.stats)
    }

    /// Writes what is already queued, unsubscribes and waits for the thread (and the compressor).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VerdictLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// `{"lost_events":{...},"node_name":..,"time":..}` as Hubble's exporter writes it (the same JSON as
/// `flowgate monitor -o json` writes for a loss).
pub fn lost_line(source: LossSource, count: u64, node_name: &str) -> serde_json::Value {
    let now = u64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(0);
    hubble::lost_json(&LostEvents { source, count }, node_name, now)
}

/// Writes `flows` to a log at `path` the way the agent does (no hub), for tests and tools.
pub fn write_all(
    path: &Path,
    settings: LogSettings,
    node: &str,
    encoder: FlowEncoder,
    flows: &[Arc<Flow>],
) -> std::io::Result<Arc<VerdictLogStats>> {
    let file = LogFile::open(path, settings.rotation)?;
    let stats = Arc::new(VerdictLogStats::default());
    let mut writer = Writer {
        file,
        filters: FilterSet::compile(&settings.include, &settings.exclude),
        settings,
        follower: None,
        tick: Duration::from_millis(200),
        node: node.to_owned(),
        encoder,
        stats: Arc::clone(&stats),
        buf: Vec::new(),
        buf_records: 0,
        buf_markers: Vec::new(),
        line: Vec::new(),
        unmarked: Vec::new(),
        failing: false,
    };
    writer.take(flows.iter().map(|f| Event::Flow(Arc::clone(f))).collect());
    writer.flush();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead as _, time::Instant};

    use serde_json::json;

    use flowgate_proto::{
        flow::{Verdict, fixtures::flow_between},
        message::LostEvents,
    };

    use super::{config::Rotation, *};
    use flowgate_events::hub::HubConfig;

    fn encode(out: &mut Vec<u8>, flow: &Flow, node: &str) {
        let value = json!({"flow": {"source_port": flow.source_port, "verdict": flow.verdict.hubble_name()}, "node_name": node});
        serde_json::to_writer(out, &value).unwrap();
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fg-vlog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn verdict(port: u16, v: Verdict) -> Arc<Flow> {
        let mut f = flow_between(1, 2, port);
        f.event_type = EventType::PolicyVerdict;
        f.verdict = v;
        Arc::new(f)
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::io::BufReader::new(std::fs::File::open(path).unwrap())
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).expect("every line is JSON"))
            .collect()
    }

    fn options(path: &Path, config: Option<PathBuf>) -> VerdictLogOptions {
        VerdictLogOptions {
            path: path.to_owned(),
            settings: LogSettings { include: Vec::new(), exclude: Vec::new(), rotation: Rotation::default() },
            config_file: config,
            traces: false,
            node_name: "node-1".into(),
            reload_interval: Duration::from_millis(50),
        }
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn verdicts_and_drops_are_logged_traces_are_not_and_losses_are_marked() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let hub = Hub::new(HubConfig::default());
        let d = dir("basic");
        let path = d.join("v.jsonl");
        let log = VerdictLog::start(&hub, rt.handle().clone(), options(&path, None), encode).unwrap();
        let stats = log.stats();
        hub.publish(&[verdict(1, Verdict::Forwarded), Arc::new(flow_between(1, 2, 2)), verdict(3, Verdict::Dropped)]);
        hub.publish_loss(LossSource::KernelBuffer, 7);
        hub.publish(&[verdict(4, Verdict::Dropped)]);
        wait_for("three records", || stats.records_written.load(Ordering::Relaxed) == 3);
        log.stop();
        let got = lines(&path);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0]["flow"]["source_port"], 1);
        assert_eq!(got[1]["flow"]["source_port"], 3, "the trace is not logged");
        assert_eq!(got[2]["lost_events"]["source"], "PERF_EVENT_RING_BUFFER");
        assert_eq!(got[2]["lost_events"]["num_events_lost"], 7);
        assert_eq!(got[3]["flow"]["source_port"], 4);
        assert_eq!(hub.subscribers(), 0, "stopping unsubscribes");
    }

    #[test]
    fn a_full_queue_is_counted_and_marked() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let hub = Hub::new(HubConfig { history: 16, queue_events: 2 });
        let d = dir("queue");
        let path = d.join("v.jsonl");
        // Fill the queue before the writer thread can drain it: publish from inside the hub's lock order.
        let log = VerdictLog::start(&hub, rt.handle().clone(), options(&path, None), encode).unwrap();
        let stats = log.stats();
        let flows: Vec<_> = (0..50).map(|i| verdict(i, Verdict::Dropped)).collect();
        for chunk in flows.chunks(5) {
            hub.publish(chunk);
        }
        hub.flush_losses();
        wait_for("every record written or lost", || {
            hub.flush_losses();
            stats.records_written.load(Ordering::Relaxed) + stats.records_lost.load(Ordering::Relaxed) == 50
                && stats.lost_markers.load(Ordering::Relaxed) > 0
        });
        log.stop();
        let got = lines(&path);
        let written = got.iter().filter(|l| l.get("flow").is_some()).count() as u64;
        let marked: u64 = got.iter().filter_map(|l| l["lost_events"]["num_events_lost"].as_u64()).sum();
        assert_eq!(written, stats.records_written.load(Ordering::Relaxed));
        assert_eq!(marked, stats.records_lost.load(Ordering::Relaxed));
        assert_eq!(written + marked, 50, "every record is written or marked lost");
        assert!(marked > 0);
        let _ = LostEvents { source: LossSource::ClientQueue, count: 0 };
    }

    #[test]
    fn include_exclude_and_rotation_reload_without_restart() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let hub = Hub::new(HubConfig::default());
        let d = dir("reload");
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("v.jsonl");
        let cfg = d.join("log.yaml");
        std::fs::write(&cfg, "include:\n  - verdicts: [denied]\n").unwrap();
        let log = VerdictLog::start(&hub, rt.handle().clone(), options(&path, Some(cfg.clone())), encode).unwrap();
        let stats = log.stats();
        hub.publish(&[verdict(1, Verdict::Forwarded), verdict(2, Verdict::Dropped)]);
        wait_for("one record", || stats.records_written.load(Ordering::Relaxed) == 1);
        // A broken file keeps the last good configuration.
        std::fs::write(&cfg, "include: [[[\n").unwrap();
        std::thread::sleep(Duration::from_millis(150));
        hub.publish(&[verdict(3, Verdict::Forwarded), verdict(4, Verdict::Dropped)]);
        wait_for("two records", || stats.records_written.load(Ordering::Relaxed) == 2);
        std::fs::write(&cfg, "exclude:\n  - ports: [6]\nmax_size: 100\nmax_backups: 2\n").unwrap();
        wait_for("the reload", || stats.config_reloads.load(Ordering::Relaxed) == 1);
        for port in 5..12 {
            hub.publish(&[verdict(port, Verdict::Forwarded)]);
        }
        wait_for("eight records", || stats.records_written.load(Ordering::Relaxed) == 8);
        log.stop();
        assert!(stats.rotations.load(Ordering::Relaxed) >= 2);
        let naming = file::Naming::new(&path);
        let backups = naming.backups();
        assert_eq!(backups.len(), 2, "two backups kept: {backups:?}");
        let mut ports: Vec<u64> = backups
            .iter()
            .map(|b| b.path.clone())
            .chain([path.clone()])
            .flat_map(|p| lines(&p))
            .map(|l| l["flow"]["source_port"].as_u64().unwrap())
            .collect();
        ports.sort_unstable();
        assert!(ports.ends_with(&[10, 11]), "{ports:?}");
        assert!(!ports.contains(&6), "port 6 excluded: {ports:?}");
    }
}
