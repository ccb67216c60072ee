//! The agent's event path assembled in the benchmark's process from the agent's own parts: the real
//! kernel programs (loaded, not attached; records are produced with BPF_PROG_TEST_RUN on a crafted SYN
//! from an endpoint registered on the caller's loopback), the reader, decoder, enricher, hub, the
//! kernel-loss poller and the real unix socket server. Only the lab and the attach are left out, so
//! that the kernel can be driven at full speed or at a set pace without any traffic generator.
//!
//! The agent's runtime threads are named [`AGENT_THREAD`], so that the agent's CPU can be told apart
//! from the producer's (which runs the programs in its own system time).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use flowgate_agent::{
    api::Api,
    controller::Controller,
    craft::{Transport, ipv4_packet},
    datapath::{self, Datapath, DatapathOptions},
    kernel_counters, perf_buffer,
    policy::PolicyEngine,
    reader,
    server::{self, ServerConfig},
    state::{AgentInfo, AgentState},
    verdict_log::{
        VerdictLog, VerdictLogOptions, VerdictLogStats,
        config::{LogSettings, Rotation},
    },
};
use flowgate_common::{
    Counter,
    counters::{aggregation, events_kind},
    names::PROG_FROM_ENDPOINT,
};
use flowgate_events::{
    hub::{Hub, HubConfig},
    pipeline::Pipeline,
};
use flowgate_lab::{state::LabState, topology::Cidr};
use flowgate_proto::endpoint::NewEndpoint;
use flowgate_tests::TempDir;

/// skb->ifindex under BPF_PROG_TEST_RUN: the loopback device of the caller's namespace.
const TEST_RUN_IFINDEX: u32 = 1;

/// Name of the in-process agent's runtime threads (and the prefix of their `comm`).
pub const AGENT_THREAD: &str = "fg-agent";

/// The reader's backstop tick: the agent's default (`--drain-interval-ms 5`).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(5);

/// Which kernel buffer carries the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsBuffer {
    RingBuffer,
    PerfEventArray,
}

impl EventsBuffer {
    pub fn name(self) -> &'static str {
        match self {
            EventsBuffer::RingBuffer => "ring buffer",
            EventsBuffer::PerfEventArray => "perf event array",
        }
    }
}

/// What the in-process agent serves besides the socket.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Write the verdict log (traces included, so every record is a line) to this file.
    pub verdict_log: Option<PathBuf>,
    /// Read the ring buffer as `--events-poll-streams` does: streams polled with the programs' wake-ups
    /// held off.
    pub poll_streams: bool,
}

/// Kernel records offered so far: everything the programs tried to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offered {
    /// Written into the buffer.
    pub written: u64,
    /// Not written (buffer full); reported to every client as a kernel-buffer loss.
    pub lost: u64,
}

impl Offered {
    pub fn total(self) -> u64 {
        self.written + self.lost
    }
}

/// The in-process agent. Dropping it stops the socket server and every task.
pub struct BenchAgent {
    runtime: Option<tokio::runtime::Runtime>,
    controller: Arc<Mutex<Controller>>,
    state: Arc<AgentState>,
    buffer: EventsBuffer,
    socket: PathBuf,
    verdict_log: Option<VerdictLog>,
    stop_server: Option<tokio::sync::oneshot::Sender<()>>,
    /// The events readers (threads); dropped first, so they stop before the runtime and the buffer go.
    readers: Vec<reader::Reader>,
    baseline: Offered,
    _dir: TempDir,
}

/// An empty node: nothing to attach to; the one endpoint is registered by hand on loopback.
pub fn bare_node() -> LabState {
    LabState {
        version: flowgate_lab::state::STATE_VERSION,
        name: "bench".to_owned(),
        cidr: Cidr { network: Ipv4Addr::UNSPECIFIED, prefix_len: 0 },
        gateway: Ipv4Addr::UNSPECIFIED,
        ipv6_cidr: None,
        gateway6: None,
        node_netns: String::new(),
        nodes: Vec::new(),
        fabric_netns: None,
        namespaces: Vec::new(),
        pods: Vec::new(),
        externals: Vec::new(),
        server_pid: None,
        topology_path: None,
    }
}

/// The SYN the producer sends from the endpoint: with aggregation off, one trace record per packet.
pub fn syn() -> Vec<u8> {
    ipv4_packet(
        Ipv4Addr::new(10, 200, 0, 10),
        Ipv4Addr::new(10, 200, 0, 11),
        Transport::Tcp { sport: 40000, dport: 80, flags: 0x02 },
    )
}

impl BenchAgent {
    /// Loads the programs with every packet traced (aggregation off), registers the endpoint, and starts
    /// the reader(s), the kernel-loss poller and the socket server (in a temporary directory).
    pub fn start(buffer: EventsBuffer, options: &AgentOptions) -> anyhow::Result<Self> {
        let dir = TempDir::new("agent");
        let socket = dir.0.join("flowgate.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(AGENT_THREAD)
            .enable_all()
            .build()
            .context("starting the agent's runtime")?;
        let datapath_options = DatapathOptions {
            aggregation: aggregation::NONE,
            events_kind: match buffer {
                EventsBuffer::RingBuffer => events_kind::RINGBUF,
                EventsBuffer::PerfEventArray => events_kind::PERF,
            },
            ..DatapathOptions::default()
        };
        // The programs' wake-up interval, which the ring buffer's reader backs up and polls at.
        let wakeup_interval = datapath_options.wakeup_interval;
        let mut datapath = Datapath::load(datapath_options).context("loading the kernel programs (run as root)")?;
        let hub = Hub::new(HubConfig::default());
        let state = AgentState::new(AgentInfo::default(), Arc::clone(&hub));
        let endpoint = state.upsert_endpoint(
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
        )?;
        datapath
            .set_endpoint(TEST_RUN_IFINDEX, datapath::endpoint_info(&endpoint))
            .context("registering the endpoint")?;
        let ring = match buffer {
            EventsBuffer::RingBuffer => Some(datapath.take_events().context("opening the events ring buffer")?),
            EventsBuffer::PerfEventArray => None,
        };
        let hold = match buffer {
            EventsBuffer::RingBuffer if options.poll_streams => Some(reader::WakeupHold::new(
                datapath.take_wakeup().context("opening the ring buffer's wake-up map")?,
                wakeup_interval,
            )),
            _ => None,
        };
        let perf = match buffer {
            EventsBuffer::PerfEventArray => {
                let array = datapath.take_perf_events().context("opening the perf event array")?;
                Some(
                    perf_buffer::open_all(array, perf_buffer::PERF_PAGES)
                        .context("opening the per-CPU perf buffers")?,
                )
            }
            EventsBuffer::RingBuffer => None,
        };
        let controller =
            Controller::new(datapath, PolicyEngine::new(None, false), Arc::clone(&state), bare_node(), None);
        let controller = Arc::new(Mutex::new(controller));
        let _guard = runtime.enter();
        let verdict_log = match &options.verdict_log {
            Some(path) => Some(
                VerdictLog::start(
                    &hub,
                    runtime.handle().clone(),
                    VerdictLogOptions {
                        path: path.clone(),
                        settings: LogSettings {
                            include: Vec::new(),
                            exclude: Vec::new(),
                            rotation: Rotation { max_size: 1 << 40, max_backups: 1, compress: false },
                        },
                        config_file: None,
                        traces: true,
                        node_name: "bench".into(),
                        reload_interval: Duration::from_secs(1),
                    },
                    flowgate_proto::hubble::write_flow_json,
                )
                .with_context(|| format!("starting the verdict log {}", path.display()))?,
            ),
            None => None,
        };
        let listener = server::bind(&ServerConfig { path: socket.clone(), ..ServerConfig::default() })
            .with_context(|| format!("binding {}", socket.display()))?;
        let api = Api::new(Arc::clone(&state), None, verdict_log.as_ref().map(VerdictLog::stats));
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(server::serve(listener, api, async move {
            let _ = stopped.await;
        }));
        let mut readers = Vec::new();
        if let Some(ring) = ring {
            let backstop = reader::Backstop::for_ring(DRAIN_INTERVAL, wakeup_interval);
            readers.push(reader::spawn(ring, backstop, hold, Pipeline::new(Arc::clone(&state)))?);
        }
        for buffer in perf.into_iter().flatten() {
            readers.push(reader::spawn_perf(buffer, DRAIN_INTERVAL, Pipeline::new(Arc::clone(&state)))?);
        }
        runtime.spawn(kernel_counters::poll(Arc::clone(&controller), Arc::clone(&state)));
        drop(_guard);
        let mut agent = Self {
            runtime: Some(runtime),
            controller,
            state,
            buffer,
            socket,
            verdict_log,
            stop_server: Some(stop_server),
            readers,
            baseline: Offered::default(),
            _dir: dir,
        };
        agent.baseline = agent.offered_since_load()?;
        Ok(agent)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn buffer(&self) -> EventsBuffer {
        self.buffer
    }

    pub fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    pub fn verdict_log_stats(&self) -> Option<Arc<VerdictLogStats>> {
        self.verdict_log.as_ref().map(VerdictLog::stats)
    }

    fn offered_since_load(&self) -> anyhow::Result<Offered> {
        let c = self.controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner).counters()?;
        Ok(Offered {
            written: c.get(Counter::RecordsWritten),
            // A full perf buffer is counted apart from other failures; both are offered and lost.
            lost: c.get(Counter::RecordsLost) + c.get(Counter::PerfBufferFull),
        })
    }

    /// Records the programs offered since [`Self::start`] (or [`Self::reset_offered`]).
    pub fn offered(&self) -> anyhow::Result<Offered> {
        let now = self.offered_since_load()?;
        Ok(Offered { written: now.written - self.baseline.written, lost: now.lost - self.baseline.lost })
    }

    /// Counts from now on.
    pub fn reset_offered(&mut self) -> anyhow::Result<()> {
        self.baseline = self.offered_since_load()?;
        Ok(())
    }

    /// Runs the endpoint's egress program on `packet` `repeat` times (kernel-timed).
    pub fn run_program(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        let mut c = self.controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(c.datapath().test_run(PROG_FROM_ENDPOINT, packet, repeat).context("BPF_PROG_TEST_RUN")?.duration)
    }

    /// Produces `total` records as fast as the kernel runs the program, in runs of `chunk` packets.
    pub fn produce_full_speed(&self, total: u64, chunk: u32) -> anyhow::Result<Duration> {
        let packet = syn();
        let started = Instant::now();
        let mut left = total;
        while left > 0 {
            let n = left.min(u64::from(chunk)) as u32;
            self.run_program(&packet, n)?;
            left -= u64::from(n);
        }
        Ok(started.elapsed())
    }

    /// Produces `rate` records per second for `duration`, `per_tick` packets at a time ([`pace`]).
    pub fn produce_paced(&self, rate: u64, duration: Duration, per_tick: u32) -> anyhow::Result<u64> {
        let packet = syn();
        pace(rate, duration, per_tick, |n| self.run_program(&packet, n).map(drop))
    }
}

/// Calls `run(per_tick)` `rate / per_tick` times a second for `duration`, on a schedule (no catch-up bursts
/// beyond it): `run` produces `per_tick` records. Returns the records produced.
pub fn pace(
    rate: u64,
    duration: Duration,
    per_tick: u32,
    mut run: impl FnMut(u32) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let interval = Duration::from_secs_f64(f64::from(per_tick) / rate as f64);
    let ticks = (duration.as_secs_f64() / interval.as_secs_f64()) as u64;
    let started = Instant::now();
    for n in 0..ticks {
        let due = started + interval.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            if wait > Duration::from_micros(200) {
                std::thread::sleep(wait - Duration::from_micros(100));
            }
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        }
        run(per_tick)?;
    }
    Ok(ticks * u64::from(per_tick))
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        self.readers.clear();
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(log) = self.verdict_log.take() {
            log.stop();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
