//! `flowgate-agent`: loads the kernel programs, attaches them to every endpoint of the node (for now the
//! pods of a lab), reads the kernel's events, enriches them and serves them over a unix socket.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use flowgate_agent::{
    api::{Api, PolicyControl},
    conntrack,
    controller::{self, Controller, SharedController},
    datapath::{AttachMode, CtLifetimes, Datapath, DatapathOptions},
    kernel_counters,
    kubernetes::{ClusterIdentities, KubeSource},
    metrics,
    policy::{PolicyEngine, realize::Capacities},
    server::{self, ServerConfig},
    state::{AgentInfo, AgentState},
    verdict_log::{
        self, VerdictLog, VerdictLogOptions,
        config::{LogSettings, Rotation},
    },
};
use flowgate_common::{
    capacity,
    counters::{aggregation, events_kind},
};
use flowgate_events::{
    hub::{Hub, HubConfig},
    pipeline::Pipeline,
};
use flowgate_lab::state::LabState;
use flowgate_proto::{
    format,
    message::{Event, EventsBufferInfo},
};
use log::{info, warn};

#[derive(Parser, Debug)]
#[command(name = "flowgate-agent", version, about = "flowgate's node agent")]
struct Args {
    /// Enforce for the pods of a lab that is already up (`flowgate lab up`).
    #[arg(long, conflicts_with = "lab_topology")]
    lab: Option<String>,
    /// Bring up a lab from this topology file, enforce for its pods, and tear it down on exit.
    #[arg(long, value_name = "FILE")]
    lab_topology: Option<PathBuf>,
    /// Name of the lab brought up with --lab-topology (default: the name in the file).
    #[arg(long, requires = "lab_topology")]
    lab_name: Option<String>,
    /// Size of the kernel's events ring buffer in bytes (power of two, at least the page size).
    #[arg(long, default_value_t = 8 << 20)]
    events_buffer_bytes: u32,
    /// Pages of each per-CPU perf buffer (`--events-buffer perf`; a power of two).
    #[arg(long, default_value_t = flowgate_agent::perf_buffer::PERF_PAGES)]
    perf_pages: usize,
    /// How often the reader drains the events buffer when the kernel has not woken it, in milliseconds:
    /// while records come (an idle reader waits for the kernel's wake-up), or always with the perf event
    /// array or --events-wakeup-interval-us 0. At least the wake-up interval.
    #[arg(long, default_value_t = 5)]
    drain_interval_ms: u64,
    /// Ring buffer: a record wakes the reader when the last wake-up is this old (microseconds), so a
    /// record waits about this long at most while a stream still wakes the reader in batches; 0: only
    /// 256 KiB of unread records wake it (and the drain interval).
    #[arg(long, default_value_t = flowgate_agent::datapath::DEFAULT_WAKEUP_INTERVAL_US)]
    events_wakeup_interval_us: u64,
    /// Ring buffer: while records stream in, hold the programs' wake-ups off and drain every wake-up
    /// interval on the reader's own timer, so no pod's packet carries a wake-up (on a VM, a third to a half of
    /// the programs' time per new connection); records wait up to an interval more often, and the pods'
    /// rate was not measurably higher (docs/benchmarks.md, "Sessions 17 and 18"). Needs a wake-up
    /// interval above 0.
    #[arg(long)]
    events_poll_streams: bool,
    /// Flows kept in memory for subscribers asking for the last N.
    #[arg(long, default_value_t = 4096)]
    history_size: usize,
    /// Events a client's queue holds before the agent drops events for that client (and tells it).
    #[arg(long, default_value_t = 65536)]
    client_queue_events: usize,
    /// Print every event as a text line on stdout.
    #[arg(long)]
    print_events: bool,
    /// The unix socket clients connect to.
    #[arg(long, default_value = server::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Group allowed on the socket besides root (default: `flowgate` when that group exists).
    #[arg(long)]
    socket_group: Option<String>,
    /// Seconds a client may say nothing between requests while client slots run short; then it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = server::DEFAULT_IDLE_TIMEOUT.as_secs())]
    client_idle_timeout: u64,
    /// Group whose members may change the agent (`endpoint config`), besides root; without it only root
    /// may. Every member of the socket group may read (status, lists, monitor).
    #[arg(long)]
    admin_group: Option<String>,
    /// Mode of the socket file, octal.
    #[arg(long, default_value = "0660", value_parser = server::parse_mode)]
    socket_mode: u32,
    /// Clients served at once; more are refused.
    #[arg(long, default_value_t = server::DEFAULT_MAX_CLIENTS)]
    max_clients: usize,
    /// Directory of NetworkPolicy manifests (YAML, several documents per file); followed for changes.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Take pods, namespaces and NetworkPolicies from the Kubernetes API server (watched): this node's pods
    /// (`spec.nodeName` = --node-name) are the endpoints, every pod with an address is in the ipcache. The
    /// lab (--lab) gives the pods' interfaces. Enforcement stays as it was until the first full list.
    #[arg(long, conflicts_with = "policies")]
    kubernetes: bool,
    /// Kubeconfig of the API server (default: the in-cluster ServiceAccount, else $KUBECONFIG).
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// With --kubernetes and no lab: the node's network namespace, where the pods' host routes and
    /// interfaces are (default: the agent's own, as in a hostNetwork DaemonSet pod).
    #[arg(long, value_name = "PATH", requires = "kubernetes", conflicts_with_all = ["lab", "lab_topology"])]
    node_netns: Option<PathBuf>,
    /// Would-be drops pass and are reported as AUDIT, on every endpoint.
    #[arg(long)]
    policy_audit_mode: bool,
    /// Which kernel buffer carries events to the agent.
    #[arg(long, value_enum, default_value_t = EventsBuffer::Ringbuf)]
    events_buffer: EventsBuffer,
    /// Which forwarded packets get trace records: none (every packet), low (every packet leaving a
    /// pod, plus medium), medium (new connections, first replies, the first SYN, FIN or RST each way).
    #[arg(long, value_enum, default_value_t = Aggregation::Medium)]
    monitor_aggregation: Aggregation,
    /// Whether the programs write trace records (as Cilium's flag of that name): `=false` leaves the records
    /// of policy decisions (each also the trace or drop of its packet) and of drops: a new connection writes
    /// one record at each end that enforces, instead of about 8 at the default aggregation.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    bpf_events_trace_enabled: bool,
    /// Where maps and TCX links are pinned so enforcement outlives the agent and a restarted agent
    /// takes over (default: /sys/fs/bpf/flowgate/<lab>; on a lab of several nodes, <lab>/<node>).
    #[arg(long, value_name = "DIR", conflicts_with = "no_pin")]
    bpf_dir: Option<PathBuf>,
    /// Pin nothing: enforcement stops when the agent stops.
    #[arg(long)]
    no_pin: bool,
    /// How often the policy directory and the topology file are polled for changes, in milliseconds, where
    /// change notification (inotify) cannot be set up; with it, changes are taken as they are written.
    #[arg(long, default_value_t = 250)]
    watch_interval_ms: u64,
    /// Append every policy verdict and drop to this JSON-lines file (Hubble-shaped flow JSON, as
    /// `flowgate monitor -o json`); `none` turns the log off.
    #[arg(long, value_name = "PATH|none", default_value = verdict_log::DEFAULT_PATH)]
    verdict_log: String,
    /// Also log trace records (forwarded packets); off by default.
    #[arg(long)]
    verdict_log_traces: bool,
    /// Rotate the verdict log before it grows past this size (e.g. 100MiB, 10MB, 65536).
    #[arg(long, value_name = "SIZE", default_value = "100MiB", value_parser = verdict_log::config::parse_size)]
    verdict_log_max_size: u64,
    /// Rotated verdict logs kept; older ones are removed.
    #[arg(long, value_name = "N", default_value_t = 5)]
    verdict_log_max_backups: usize,
    /// Gzip rotated verdict logs.
    #[arg(long)]
    verdict_log_compress: bool,
    /// YAML with include/exclude filters and rotation settings for the verdict log; re-read on change.
    #[arg(long, value_name = "FILE")]
    verdict_log_config: Option<PathBuf>,
    /// This node's name: `node_name` of the verdict log's records and, with --kubernetes, the `spec.nodeName`
    /// of the pods enforced for (default: $NODE_NAME, as the downward API sets it, else this host's name).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics; `none` turns them off.
    #[arg(long, value_name = "ADDR|none", default_value = metrics::DEFAULT_ADDR)]
    metrics_addr: String,
    /// Entries of each policy map (one per generation): (endpoint, direction, peer identity, protocol,
    /// port prefix). A policy set that needs more is refused and the last good set stays in effect.
    /// Maps adopted from a pin keep the size they were created with.
    #[arg(long, value_name = "N", default_value_t = capacity::MAX_POLICY_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
    policy_map_entries: u32,
    /// Entries of each ipcache map: pod addresses and ipBlock prefixes.
    #[arg(long, value_name = "N", default_value_t = capacity::MAX_IPCACHE_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
    ipcache_entries: u32,
    /// Connections the conntrack map (LRU) tracks at once; the least recently used go first.
    #[arg(long, value_name = "N", default_value_t = capacity::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    conntrack_entries: u32,
    /// Seconds an answered TCP connection may idle before it needs a new verdict.
    #[arg(long, value_name = "SECONDS", default_value_t = flowgate_common::conntrack::lifetime::TCP_SECS)]
    ct_tcp_lifetime: u64,
    /// Seconds a UDP, ICMP or other connection (and a TCP handshake without reply) may idle.
    #[arg(long, value_name = "SECONDS", default_value_t = flowgate_common::conntrack::lifetime::OTHER_SECS)]
    ct_other_lifetime: u64,
    /// Seconds a TCP connection lives on after an RST or a FIN each way (or after it was revoked).
    #[arg(long, value_name = "SECONDS", default_value_t = flowgate_common::conntrack::lifetime::CLOSE_SECS)]
    ct_close_lifetime: u64,
    /// How often expired conntrack entries are deleted, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = conntrack::DEFAULT_GC_INTERVAL.as_secs())]
    ct_gc_interval: u64,
    /// Keep established connections when the policy stops allowing them (as Cilium and iptables do);
    /// by default their next packet is re-checked and dropped as revoked.
    #[arg(long)]
    keep_established: bool,
    /// How the programs are attached to each endpoint's interface: `tc` (a cls_bpf filter on a clsact
    /// qdisc, as `tc filter add ... bpf da`) or `tcx` (a TCX link, pinned). A TCX attach waits for an RCU
    /// grace period under the kernel's RTNL lock: 1,000 endpoints take about 25 s to attach, against well
    /// under a second as filters. A restarted agent takes over what the other mode left.
    #[arg(long, value_enum, default_value_t = AttachMode::Tc)]
    attach_mode: AttachMode,
    /// With `--attach-mode tcx`: expedite the kernel's RCU grace periods (`/sys/kernel/rcu_expedited`,
    /// node-wide) while attaching to many endpoints at once, then put the setting back: 1,000 endpoints
    /// take about 25 s without it and well under a second with it.
    #[arg(long)]
    expedited_attach: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EventsBuffer {
    Ringbuf,
    Perf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Aggregation {
    None,
    Low,
    Medium,
}

/// The kernel's events buffer, opened and waiting for its readers.
enum EventsSource {
    /// The ring buffer, and its wake-ups to hold off while the reader polls a stream (with a wake-up
    /// interval).
    Ring(Box<(aya::maps::RingBuf<aya::maps::MapData>, Option<flowgate_agent::reader::WakeupHold>)>),
    Perf(Vec<flowgate_agent::perf_buffer::PerfBuffer>),
}

/// A lab this agent brought up and must take down again, whatever happens.
struct OwnedLab(String);

impl Drop for OwnedLab {
    fn drop(&mut self) {
        match flowgate_lab::lab::down(&self.0) {
            Ok(_) => info!("lab {} is down", self.0),
            Err(e) => warn!("tearing down lab {}: {e:#}", self.0),
        }
    }
}

/// Set to a directory, the agent writes its manual page there (roff, from its flags) and exits: `make install`.
const MAN_DIR_ENV: &str = "FLOWGATE_AGENT_MAN_DIR";

fn main() -> anyhow::Result<()> {
    flowgate_lab::server::run_if_requested();
    if let Some(dir) = std::env::var_os(MAN_DIR_ENV).map(PathBuf::from) {
        let page = clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).generate_to(&dir);
        println!("{}", page.with_context(|| format!("writing the manual page into {}", dir.display()))?.display());
        return Ok(());
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}

/// This host's name, as `flowgate monitor` puts it in `node_name`.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Handlers first: a signal during start-up must still tear down what was brought up.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    // The socket first: a second agent on the same path stops here, before touching anything.
    let listener = server::bind(&ServerConfig {
        path: args.socket.clone(),
        group: args.socket_group.clone(),
        mode: args.socket_mode,
        max_clients: args.max_clients,
        admin_group: args.admin_group.clone(),
        idle_timeout: Duration::from_secs(args.client_idle_timeout),
        ..Default::default()
    })
    .context("opening the agent's socket")?;

    let (lab, _owned) = match (&args.lab, &args.lab_topology) {
        (Some(name), None) => (flowgate_lab::state::load(name).with_context(|| format!("reading lab {name}"))?, None),
        (None, Some(path)) => {
            let state = bring_up_lab(path, args.lab_name.as_deref())?;
            let owned = OwnedLab(state.name.clone());
            (state, Some(owned))
        }
        (None, None) if args.kubernetes => (kubernetes_node(), None),
        _ => bail!("nothing to enforce for: pass --lab NAME, --lab-topology FILE or --kubernetes"),
    };

    if !args.kubernetes && !lab.nodes.is_empty() {
        bail!(
            "lab {} has {} nodes: run one agent per node in Kubernetes mode (--kubernetes --node-name NODE)",
            lab.name,
            lab.nodes.len()
        );
    }
    let node = args.node_name.clone().unwrap_or_else(node_name);
    let datapath = Datapath::load(DatapathOptions {
        events_buffer_bytes: args.events_buffer_bytes,
        wakeup_interval: Duration::from_micros(args.events_wakeup_interval_us),
        events_kind: match args.events_buffer {
            EventsBuffer::Ringbuf => events_kind::RINGBUF,
            EventsBuffer::Perf => events_kind::PERF,
        },
        aggregation: match args.monitor_aggregation {
            Aggregation::None => aggregation::NONE,
            Aggregation::Low => aggregation::LOW,
            Aggregation::Medium => aggregation::MEDIUM,
        },
        traces: args.bpf_events_trace_enabled,
        pin_dir: (!args.no_pin).then(|| {
            args.bpf_dir.clone().unwrap_or_else(|| {
                // One agent per node of a lab with several: each has maps and links of its own.
                let lab_dir = flowgate_lab::naming::bpf_pin_dir(&lab.name);
                if lab.nodes.is_empty() { lab_dir } else { lab_dir.join(&node) }
            })
        }),
        capacities: Capacities {
            policy: args.policy_map_entries,
            ipcache: args.ipcache_entries,
            ..Capacities::default()
        },
        conntrack_entries: args.conntrack_entries,
        ct_lifetimes: CtLifetimes {
            tcp: Duration::from_secs(args.ct_tcp_lifetime),
            other: Duration::from_secs(args.ct_other_lifetime),
            close: Duration::from_secs(args.ct_close_lifetime),
        },
        keep_established: args.keep_established,
        attach_mode: args.attach_mode,
        expedited_attach: args.expedited_attach,
        ..DatapathOptions::default()
    })
    .context("loading the eBPF datapath")?;

    let hub = Hub::new(HubConfig { history: args.history_size, queue_events: args.client_queue_events });
    let state = AgentState::new(
        AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: kernel_release(),
            events_buffer: EventsBufferInfo {
                kind: match args.events_buffer {
                    EventsBuffer::Ringbuf => "ringbuf".into(),
                    EventsBuffer::Perf => "perf".into(),
                },
                size_bytes: u64::from(args.events_buffer_bytes),
            },
            attach_mode: datapath.options().attach_mode.name().to_owned(),
        },
        Arc::clone(&hub),
    );
    let engine = PolicyEngine::new(args.policies.clone(), args.policy_audit_mode);
    let mut controller = Controller::new(datapath, engine, Arc::clone(&state), lab.clone(), args.policies.clone());
    let kube_source = if args.kubernetes {
        let client = flowgate_agent::kubernetes::client::connect(args.kubeconfig.as_deref())
            .await
            .context("connecting to the Kubernetes API server")?;
        let node_netns = match (&args.node_netns, args.lab.is_some() || args.lab_topology.is_some()) {
            (Some(path), _) => Some(path.clone()),
            (None, false) => Some(PathBuf::from("/proc/self/ns/net")),
            (None, true) if lab.nodes.is_empty() => None,
            // A lab of several nodes: this agent is the node of its name.
            (None, true) => match lab.node(&node) {
                Some(n) => Some(flowgate_lab::netns::netns_path(&n.netns)),
                None => bail!(
                    "lab {} has no node {node} (its nodes: {}); pass --node-name",
                    lab.name,
                    lab.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            },
        };
        controller.use_kubernetes(node.clone(), node_netns);
        info!("kubernetes mode, node {node}: enforcement unchanged until pods, namespaces and policies are listed");
        Some((KubeSource::start(&client), ClusterIdentities::start(&client)))
    } else {
        controller.start().with_context(|| format!("starting on lab {}", lab.name))?;
        info!("attached to {} endpoints of lab {}", lab.pods.len(), lab.name);
        None
    };
    let drain_interval = Duration::from_millis(args.drain_interval_ms);
    // The events buffer is taken now and read once every subscriber that must see every event from
    // the start (verdict log, metrics, --print-events) is in place.
    let source = match args.events_buffer {
        EventsBuffer::Ringbuf => {
            let ring = controller.datapath().take_events().context("opening the events ring buffer")?;
            let interval = Duration::from_micros(args.events_wakeup_interval_us);
            let hold = if interval.is_zero() || !args.events_poll_streams {
                None
            } else {
                let map = controller.datapath().take_wakeup().context("opening the ring buffer's wake-up map")?;
                Some(flowgate_agent::reader::WakeupHold::new(map, interval))
            };
            EventsSource::Ring(Box::new((ring, hold)))
        }
        EventsBuffer::Perf => {
            let array = controller.datapath().take_perf_events().context("opening the perf event array")?;
            EventsSource::Perf(
                flowgate_agent::perf_buffer::open_all(array, args.perf_pages)
                    .context("opening the per-CPU perf buffers")?,
            )
        }
    };
    let controller = Arc::new(Mutex::new(controller));
    // Enforcement does not depend on the observability outputs: when one cannot start, the agent says
    // so and runs without it.
    let verdict_log = match args.verdict_log.as_str() {
        "none" => None,
        path => match VerdictLog::start(
            &hub,
            tokio::runtime::Handle::current(),
            VerdictLogOptions {
                path: PathBuf::from(path),
                settings: LogSettings {
                    include: Vec::new(),
                    exclude: Vec::new(),
                    rotation: Rotation {
                        max_size: args.verdict_log_max_size,
                        max_backups: args.verdict_log_max_backups,
                        compress: args.verdict_log_compress,
                    },
                },
                config_file: args.verdict_log_config.clone(),
                traces: args.verdict_log_traces,
                node_name: node.clone(),
                reload_interval: Duration::from_secs(1),
            },
            flowgate_proto::hubble::write_flow_json,
        ) {
            Ok(log) => Some(log),
            Err(e) => {
                warn!("{:#}; running without a verdict log (--verdict-log none silences this)", anyhow::Error::from(e));
                None
            }
        },
    };
    let _metrics = match args.metrics_addr.as_str() {
        "none" => None,
        addr => {
            let addr = addr
                .parse()
                .with_context(|| format!("--metrics-addr {addr}: expected IP:PORT, e.g. 127.0.0.1:9965"))?;
            match metrics::start(addr, Arc::clone(&state), verdict_log.as_ref().map(VerdictLog::stats)).await {
                Ok(m) => Some(m),
                Err(e) => {
                    warn!("{:#}; running without metrics (--metrics-addr none silences this)", anyhow::Error::from(e));
                    None
                }
            }
        }
    };
    let control: Arc<dyn PolicyControl> = Arc::new(SharedController(Arc::clone(&controller)));
    let api = Api::new(Arc::clone(&state), Some(control), verdict_log.as_ref().map(VerdictLog::stats));

    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server::serve(listener, api, async move {
        let _ = server_stopped.await;
    }));
    info!("serving clients on {}", args.socket.display());

    let print_events = args.print_events;
    let print_sub = print_events.then(|| hub.subscribe(&Default::default()));
    let readers = match source {
        EventsSource::Ring(ring) => {
            let (ring, hold) = *ring;
            vec![
                flowgate_agent::reader::spawn(
                    ring,
                    flowgate_agent::reader::Backstop::for_ring(
                        drain_interval,
                        Duration::from_micros(args.events_wakeup_interval_us),
                    ),
                    hold,
                    Pipeline::new(Arc::clone(&state)),
                )
                .context("starting the events reader")?,
            ]
        }
        EventsSource::Perf(buffers) => buffers
            .into_iter()
            .map(|buffer| {
                flowgate_agent::reader::spawn_perf(buffer, drain_interval, Pipeline::new(Arc::clone(&state)))
                    .context("starting a perf buffer reader")
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let mut readers: Vec<flowgate_agent::reader::Reader> = readers;
    let reader = futures::future::select_all(readers.iter_mut().map(|r| Box::pin(r.ended())));
    let losses = tokio::spawn(kernel_counters::poll(Arc::clone(&controller), Arc::clone(&state)));
    let gc = tokio::spawn(conntrack::collect_garbage(
        Arc::clone(&controller),
        Arc::clone(&state),
        Duration::from_secs(args.ct_gc_interval.max(1)),
    ));
    let cluster = kube_source.map(|(source, identities)| {
        tokio::spawn(controller::follow_cluster(Arc::clone(&controller), source, identities))
    });
    let watcher = tokio::spawn(controller::follow_changes(
        Arc::clone(&controller),
        Duration::from_millis(args.watch_interval_ms),
    ));
    let printer = print_sub.map(|mut sub| {
        tokio::spawn(async move {
            let Some(rx) = sub.rx.as_mut() else { return };
            while let Some(batch) = rx.recv().await {
                for event in batch {
                    match event {
                        Event::Flow(flow) => println!("{}", format::flow_line(&flow)),
                        Event::Lost(lost) => println!("{}", format::lost_line(&lost)),
                    }
                }
            }
        })
    });

    tokio::select! {
        (res, _, _) = reader => res.context("reading the events buffer")?,
        _ = sigint.recv() => info!("interrupted, shutting down"),
        _ = sigterm.recv() => info!("terminated, shutting down"),
    }
    let _ = stop_server.send(());
    server_task.await.context("server task")?.context("serving the socket")?;
    losses.abort();
    gc.abort();
    watcher.abort();
    if let Some(cluster) = cluster {
        cluster.abort();
    }
    if let Some(p) = printer {
        p.abort();
    }
    if let Some(log) = verdict_log {
        // Writes what is queued; blocking, so off the runtime's worker.
        let _ = tokio::task::spawn_blocking(move || log.stop()).await;
    }
    let controller = controller.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Ok(counters) = controller.counters() {
        info!("kernel counters: {counters:?}");
    }
    Ok(())
}

/// The node of `--kubernetes` without a lab: no pods or namespaces of its own (they come from the API
/// server; its network namespace is `--node-netns`), pinned under `/sys/fs/bpf/flowgate/kubernetes` by default.
fn kubernetes_node() -> LabState {
    LabState {
        version: flowgate_lab::state::STATE_VERSION,
        name: "kubernetes".to_owned(),
        cidr: flowgate_lab::topology::Cidr { network: std::net::Ipv4Addr::UNSPECIFIED, prefix_len: 0 },
        gateway: std::net::Ipv4Addr::UNSPECIFIED,
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

fn bring_up_lab(path: &Path, name: Option<&str>) -> anyhow::Result<LabState> {
    let topology = flowgate_lab::topology::Topology::load(path)
        .with_context(|| format!("reading lab topology {}", path.display()))?;
    let Some(name) = name.map(str::to_owned).or_else(|| topology.name.clone()) else {
        bail!("{}: the topology has no `name:`; pass --lab-name", path.display());
    };
    flowgate_lab::lab::up(&topology, &name, Some(path)).with_context(|| format!("bringing up lab {name}"))
}
