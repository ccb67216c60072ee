//! The kernel side as the agent sees it: loads the embedded eBPF object, attaches the TC programs to
//! endpoints' node-side veths (tc filters or TCX links, [`AttachMode`]), writes the endpoints, config and
//! policy maps, reads the kernel counters.
//!
//! With a pin directory (the default for the agent: `/sys/fs/bpf/flowgate/<lab>`), maps and TCX links
//! are pinned there; tc filters stay on their interfaces by themselves. They outlive the agent, so
//! enforcement goes on while it is down, and a restarted agent (also after kill -9) adopts the maps and
//! swaps its programs into the existing filters or links atomically (a filter's program replaced in
//! place, `bpf_link_update`): no packet passes unchecked during a restart. An endpoint's programs are
//! detached ([`Datapath::detach_endpoint`]) by deleting its filters, or closing the links the programs
//! hold and unpinning the pinned ones.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    hash::Hash,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, Map, MapData, MapError, MapType, PerCpuArray, PerCpuValues, PerfEventArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, TestRunResult,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
    },
};
use flowgate_common::{
    Counter, EndpointInfo,
    capacity::{MAX_CONNECTIONS, MAX_ENDPOINTS},
    conntrack::{CtEntry, CtKey, LifetimeClass, expired, lifetime},
    counters::{Config, aggregation, events_kind},
    ip,
    names::{
        MAP_CONFIG, MAP_CONNTRACK, MAP_COUNTERS, MAP_ENDPOINTS, MAP_ENFORCEMENT, MAP_EVENTS_PERF, MAP_EVENTS_RINGBUF,
        MAP_INVALID_SOURCE, MAP_IPCACHE, MAP_IPCACHE_HOST, MAP_POLICY, MAP_POLICY_EXACT, MAP_WAKEUP, PROG_CLOCK,
        PROG_FLOOR, PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT,
    },
    policy::{IPCACHE_HOST_PREFIX, IpcacheValue, POLICY_PREFIX_FULL, PolicyKey, PolicyValue},
};
use log::{debug, info, warn};

use flowgate_lab::netns::{self, NetnsError};
use flowgate_proto::endpoint::Endpoint;

use crate::{
    map_batch,
    policy::realize::{Capacities, MapContents},
    tick,
};

/// How long a generation that was just switched away from stays untouched where the kernel gives no grace
/// period ([`crate::rcu::SwitchGrace`]), so packets that read the old generation number finish with the
/// old maps.
const GENERATION_GRACE: Duration = Duration::from_millis(50);

/// The eBPF object built by build.rs from `ebpf-progs/`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowgate-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("starting the thread that waits for grace periods after policy switches")]
    GraceThread(#[source] std::io::Error),
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error(
        "the pinned map {name} is a {found} map, this agent's is a {wanted} map: it was created by an older \
         flowgate; remove the pin directory's maps (the enforcement they hold goes with them) to start anew"
    )]
    IncompatiblePin { name: &'static str, found: String, wanted: &'static str },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to {interface} (netns {netns})")]
    Attach {
        program: &'static str,
        interface: String,
        netns: String,
        /// Boxed: inline, beside the interface and netns names, it made `DatapathError` (and so every
        /// `Result` of the datapath) at least 144 bytes.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {what} at {}", path.display())]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {name} (batch read or take)")]
    MapBatch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Default of [`DatapathOptions::wakeup_interval`] in microseconds (`--events-wakeup-interval-us`): a
/// quarter of the 1 ms latency bar, about 4,000 wake-ups a second under a steady stream.
pub const DEFAULT_WAKEUP_INTERVAL_US: u64 = 250;

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// Size of the events ring buffer in bytes (a power of two, multiple of the page size).
    pub events_buffer_bytes: u32,
    /// Without a wake-up interval: unread bytes in the ring buffer above which the kernel wakes the reader
    /// (0: every record wakes it).
    pub wakeup_bytes: u64,
    /// Time after a wake-up when the next record wakes the reader anyway (zero: never by time).
    pub wakeup_interval: Duration,
    /// `counters::events_kind`: ring buffer or perf event array.
    pub events_kind: u64,
    /// `counters::aggregation` level of trace records.
    pub aggregation: u64,
    /// Whether the programs write trace records at all (`--bpf-events-trace-enabled`); decision and drop
    /// records are written either way.
    pub traces: bool,
    /// Where maps and links are pinned (on bpffs); `None`: nothing outlives this process.
    pub pin_dir: Option<PathBuf>,
    /// Entries of each policy-generation map to create (maps adopted from a pin keep their own size).
    pub capacities: Capacities,
    /// Connections the conntrack map holds.
    pub conntrack_entries: u32,
    /// Conntrack idle lifetimes.
    pub ct_lifetimes: CtLifetimes,
    /// Connections stay allowed when the policy changes (no re-check of older revisions).
    pub keep_established: bool,
    /// How the programs are attached to an endpoint's interface.
    pub attach_mode: AttachMode,
    /// Expedite the kernel's RCU grace periods (node-wide) while attaching TCX links to many endpoints
    /// at once ([`crate::rcu`]): start-up with 1,000 endpoints in well under a second instead of about 25 s.
    pub expedited_attach: bool,
}

/// How the programs are attached to an endpoint's node-side interface (`--attach-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    // Plain text below: it is also `flowgate-agent --help` (the modules are `tc_filter` and `rcu`).
    /// A cls_bpf filter (direct action) on the interface's clsact qdisc: no RCU grace period per attach,
    /// so 1,000 endpoints attach in well under a second.
    #[default]
    Tc,
    /// A TCX link (BPF_LINK_CREATE), pinned with a pin directory: each attach waits for an RCU grace
    /// period under the kernel's RTNL lock (7-23 ms here).
    Tcx,
}

impl AttachMode {
    /// The name `--attach-mode` takes and status shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Tcx => "tcx",
        }
    }
}

impl Default for DatapathOptions {
    fn default() -> Self {
        Self {
            events_buffer_bytes: 8 << 20,
            wakeup_bytes: 256 << 10,
            wakeup_interval: Duration::from_micros(DEFAULT_WAKEUP_INTERVAL_US),
            events_kind: events_kind::RINGBUF,
            aggregation: aggregation::MEDIUM,
            traces: true,
            pin_dir: None,
            capacities: Capacities::default(),
            conntrack_entries: MAX_CONNECTIONS,
            ct_lifetimes: CtLifetimes::default(),
            keep_established: false,
            attach_mode: AttachMode::default(),
            expedited_attach: false,
        }
    }
}

/// How long a connection may idle before it needs a new verdict, per `LifetimeClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtLifetimes {
    /// An answered TCP connection.
    pub tcp: Duration,
    /// UDP, ICMP, other protocols, and TCP before its first reply.
    pub other: Duration,
    /// A closed (RST, FIN both ways) or revoked connection.
    pub close: Duration,
}

impl Default for CtLifetimes {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(lifetime::TCP_SECS),
            other: Duration::from_secs(lifetime::OTHER_SECS),
            close: Duration::from_secs(lifetime::CLOSE_SECS),
        }
    }
}

impl CtLifetimes {
    /// The lifetime of a connection of this class.
    pub fn of(&self, class: LifetimeClass) -> Duration {
        match class {
            LifetimeClass::Tcp => self.tcp,
            LifetimeClass::Other => self.other,
            LifetimeClass::Close => self.close,
        }
    }

    /// When an entry expires, as CLOCK_MONOTONIC nanoseconds.
    pub fn expires_ns(&self, key: &CtKey, entry: &CtEntry) -> u64 {
        entry.last_seen_ns.saturating_add(duration_ns(self.of(LifetimeClass::of(key.protocol, entry.flags))))
    }

    /// Whether an entry has outlived its lifetime at `now_ns` (CLOCK_MONOTONIC), as the programs judge it.
    pub fn expired(&self, key: &CtKey, entry: &CtEntry, now_ns: u64) -> bool {
        expired(entry.last_seen_ns, now_ns, duration_ns(self.of(LifetimeClass::of(key.protocol, entry.flags))))
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Current CLOCK_MONOTONIC in nanoseconds, the clock conntrack's `last_seen_ns` is read from.
pub fn monotonic_now_ns() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// Conntrack's fill: entries and the map's capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackFill {
    pub entries: u64,
    pub capacity: u64,
}

/// Default root of the agent's pins.
pub const BPF_ROOT: &str = "/sys/fs/bpf/flowgate";

/// A fresh directory on bpffs for a datapath that pins nothing: maps are pinned by name in the object,
/// so they need somewhere to go while loading; the pins are removed right after. (bpffs allows no `.`
/// in names.)
fn ephemeral_pin_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    Path::new(BPF_ROOT).join(format!("_load-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Loaded programs and maps. Dropping it detaches every program it attached, unless the links are
/// pinned.
pub struct Datapath {
    ebpf: Ebpf,
    options: DatapathOptions,
    /// What keeps each interface's programs attached, by interface name.
    links: BTreeMap<String, InterfaceLinks>,
    /// Policy generation the programs read.
    generation: u8,
    last_switch: Option<Instant>,
    /// A grace period after each switch, so the generation switched away from is rewritten only when no
    /// program run still reads it.
    grace: crate::rcu::SwitchGrace,
    /// `max_entries` of the policy-generation maps in the kernel.
    capacities: Capacities,
    /// Policy revision the programs read (`Config::PolicyRevision`): bumped after every switch.
    revision: u64,
    /// What this datapath wrote into each generation's ipcache and enforcement maps (`None`: not known,
    /// read from the kernel when needed), so the next write to a generation is a difference.
    written: [Option<WrittenGeneration>; 2],
    /// The policy entries (with counters) of the inactive generation as last read, when it was switched
    /// away from (`None`: read it from the kernel). Its counters move only during the generation grace.
    held_policy: [Option<StdHashMap<(u32, PolicyKey), PolicyValue>>; 2],
    /// The kernel's tick as measured at load (`None`: not measured; see [`Datapath::use_tick`]).
    tick: Option<tick::Tick>,
}

/// A generation's ipcache ((address, prefix length) -> value) and enforcement flags, as written.
#[derive(Debug, Default)]
struct WrittenGeneration {
    /// Single addresses are in the host hash map, shorter prefixes in the trie (by length, so an entry never
    /// moves).
    ipcache: StdHashMap<(ip::Addr, u32), IpcacheValue>,
    /// Endpoint ids whose flags are not 0.
    enforcement: StdHashMap<u16, u32>,
}

/// Writes `wanted` into a map that holds `held`, for the keys `belongs` picks (a generation's entries are
/// split over a hash map and a trie by key), through `write` (`None`: remove the key): removes the keys that
/// went first, then writes the new and the changed ones. An entry the same in both is not written, so a
/// change to one policy of a thousand writes its own entries.
fn write_difference<K: Eq + Hash, V: PartialEq + Copy>(
    held: &StdHashMap<K, V>,
    wanted: &StdHashMap<K, V>,
    belongs: impl Fn(&K) -> bool,
    mut write: impl FnMut(&K, Option<V>) -> Result<(), MapError>,
) -> Result<(), MapError> {
    for key in held.keys().filter(|k| belongs(k) && !wanted.contains_key(*k)) {
        write(key, None)?;
    }
    for (key, value) in wanted.iter().filter(|(k, _)| belongs(k)) {
        if held.get(key) != Some(value) {
            write(key, Some(*value))?;
        }
    }
    Ok(())
}

/// What keeps one interface's programs attached: TCX links dropped (closed, unpinned) are detached; tc
/// filters stay until deleted ([`Datapath::detach_endpoint`], or the drop of a datapath without pins).
struct InterfaceLinks {
    /// The network namespace of the interface (where its filters are deleted).
    netns: PathBuf,
    /// Pinned links the agent holds open while it runs (with a pin directory).
    pinned: Vec<PinnedLink>,
    /// Links the programs hold (attached without a pin, or adopted from one): program name and link id.
    owned: Vec<(&'static str, SchedClassifierLinkId)>,
    /// The programs attached here, by name.
    programs: Vec<&'static str>,
}

const PROGRAMS: [(&str, TcAttachType); 2] =
    [(PROG_FROM_ENDPOINT, TcAttachType::Ingress), (PROG_TO_ENDPOINT, TcAttachType::Egress)];
/// Loaded too, never attached: see [`PROG_FLOOR`] and [`PROG_CLOCK`].
const TEST_ONLY_PROGRAMS: [&str; 2] = [PROG_FLOOR, PROG_CLOCK];

impl Datapath {
    /// Loads the object into the kernel (programs verified, maps created); nothing is attached yet.
    pub fn load(options: DatapathOptions) -> Result<Self, DatapathError> {
        let pin_dir = options.pin_dir.clone().unwrap_or_else(ephemeral_pin_dir);
        std::fs::create_dir_all(&pin_dir).map_err(|source| DatapathError::Pin {
            what: "the pin directory (is bpffs mounted at /sys/fs/bpf?)".into(),
            path: pin_dir.clone(),
            source,
        })?;
        let adopted = pin_dir.join(MAP_CONFIG).exists();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_EVENTS_RINGBUF, options.events_buffer_bytes);
        loader.map_max_entries(MAP_CONNTRACK, options.conntrack_entries);
        for generation in 0..2 {
            loader.map_max_entries(MAP_POLICY[generation], options.capacities.policy);
            loader.map_max_entries(MAP_POLICY_EXACT[generation], options.capacities.policy);
            loader.map_max_entries(MAP_IPCACHE[generation], options.capacities.ipcache);
            loader.map_max_entries(MAP_IPCACHE_HOST[generation], options.capacities.ipcache);
        }
        let loaded = loader.default_map_pin_directory(&pin_dir).load(EBPF_OBJECT);
        if options.pin_dir.is_none() {
            // Nothing should outlive this process: the open maps keep working without their pins.
            let _ = std::fs::remove_dir_all(&pin_dir);
        }
        let mut ebpf = loaded.map_err(DatapathError::Load)?;
        for name in PROGRAMS.map(|(name, _)| name).into_iter().chain(TEST_ONLY_PROGRAMS) {
            classifier(&mut ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        let mut datapath = Self {
            ebpf,
            options,
            links: BTreeMap::new(),
            generation: 0,
            last_switch: None,
            grace: crate::rcu::SwitchGrace::start().map_err(DatapathError::GraceThread)?,
            capacities: Capacities::default(),
            revision: 0,
            written: [None, None],
            held_policy: [None, None],
            tick: None,
        };
        datapath.capacities = datapath.created_capacities()?;
        if adopted {
            datapath.move_trie_hosts()?;
            // The programs of the previous agent read this generation; write the other one next.
            datapath.generation = (datapath.config(Config::ActiveGeneration)? & 1) as u8;
            // Revisions go on from the previous agent's, so its entries are re-checked against this one's policy.
            datapath.revision = datapath.config(Config::PolicyRevision)?;
            info!(
                "adopted the pinned maps in {} (policy generation {}, revision {})",
                pin_dir.display(),
                datapath.generation,
                datapath.revision
            );
        }
        let options = datapath.options.clone();
        datapath.set_config(Config::WakeupBytes, options.wakeup_bytes)?;
        datapath.set_config(Config::WakeupIntervalNs, duration_ns(options.wakeup_interval))?;
        datapath.set_config(Config::EventsKind, options.events_kind)?;
        datapath.set_config(Config::Aggregation, options.aggregation)?;
        datapath.set_config(Config::TracesOff, u64::from(!options.traces))?;
        datapath.set_config(Config::KeepEstablished, u64::from(options.keep_established))?;
        datapath.set_config(Config::CtLifetimeTcp, duration_ns(options.ct_lifetimes.tcp))?;
        datapath.set_config(Config::CtLifetimeOther, duration_ns(options.ct_lifetimes.other))?;
        datapath.set_config(Config::CtLifetimeClose, duration_ns(options.ct_lifetimes.close))?;
        datapath.set_tick()?;
        Ok(datapath)
    }

    /// Moves the single addresses an agent before the ipcache's host map wrote into the trie (both
    /// generations of adopted pins) into the host map. Safe under traffic, in the active generation too: each
    /// address is in the hash map with the same value before it leaves the trie, and the programs look in the
    /// hash map first.
    fn move_trie_hosts(&mut self) -> Result<(), DatapathError> {
        for generation in 0..2 {
            let name = MAP_IPCACHE[generation];
            let trie: LpmTrie<_, ip::Addr, IpcacheValue> = self.typed(name)?;
            let mut hosts = Vec::new();
            for item in trie.iter() {
                let (key, value) = item.map_err(|source| DatapathError::Map { name, source })?;
                if key.prefix_len() == IPCACHE_HOST_PREFIX {
                    hosts.push((key.data(), value));
                }
            }
            if hosts.is_empty() {
                continue;
            }
            let name = MAP_IPCACHE_HOST[generation];
            let mut map: HashMap<_, ip::Addr, IpcacheValue> = self.typed_mut(name)?;
            for (addr, value) in &hosts {
                map.insert(addr, value, 0).map_err(|source| DatapathError::Map { name, source })?;
            }
            let name = MAP_IPCACHE[generation];
            let mut trie: LpmTrie<_, ip::Addr, IpcacheValue> = self.typed_mut(name)?;
            for (addr, _) in &hosts {
                trie.remove(&Key::new(IPCACHE_HOST_PREFIX, *addr))
                    .map_err(|source| DatapathError::Map { name, source })?;
            }
            info!("moved {} addresses of ipcache generation {generation} from the trie into the host map", hosts.len());
        }
        Ok(())
    }

    /// Measures the kernel's tick and gives it to the programs, or, when it cannot be measured, says why
    /// and leaves them on `bpf_ktime_get_coarse_ns`.
    fn set_tick(&mut self) -> Result<(), DatapathError> {
        let tick = match tick::measure(|| self.clock_sample().map_err(|e| format!("{e:#}"))) {
            Ok(tick) => {
                debug!("kernel tick: {} Hz ({} ns)", tick.hz, tick.tick_ns);
                Some(tick)
            }
            Err(e) => {
                warn!("conntrack keeps reading bpf_ktime_get_coarse_ns on every packet: the kernel's tick: {e}");
                None
            }
        };
        self.use_tick(tick)
    }

    /// The tick conntrack's clock is read from (`Config::TickNs`); `None`: the programs call
    /// `bpf_ktime_get_coarse_ns` instead, a few nanoseconds dearer a packet.
    pub fn use_tick(&mut self, tick: Option<tick::Tick>) -> Result<(), DatapathError> {
        let (tick_ns, offset_ns) = tick.map_or((0, 0), |t| (t.tick_ns, t.offset_ns));
        // The programs read the tick, then the offset: with the tick off while the offset changes, one that
        // reads a tick reads the offset that goes with it.
        self.set_config(Config::TickNs, 0)?;
        self.set_config(Config::TickOffsetNs, offset_ns)?;
        self.set_config(Config::TickNs, tick_ns)?;
        self.tick = tick;
        Ok(())
    }

    /// The tick conntrack's clock is read from, if it was measured.
    pub fn tick(&self) -> Option<tick::Tick> {
        self.tick
    }

    /// A loaded program by name, to run.
    fn loaded(&self, name: &'static str) -> Result<&SchedClassifier, DatapathError> {
        self.ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram { name })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })
    }

    /// A loaded program by name: how a benchmark attaches a test-only one ([`PROG_FLOOR`]) itself.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        classifier(&mut self.ebpf, name)
    }

    /// One run of the `clock` program: jiffies and CLOCK_MONOTONIC, read together in the kernel.
    pub fn clock_sample(&self) -> Result<tick::ClockSample, DatapathError> {
        let name = PROG_CLOCK;
        let program = self.loaded(name)?;
        // The smallest frame BPF_PROG_TEST_RUN takes for a TC program is an Ethernet header.
        let frame = [0u8; 64];
        let mut out = [0u8; 64];
        let mut options = TestRunOptions::new();
        options.data_in = Some(&frame);
        options.data_out = Some(&mut out);
        program.test_run(options).map_err(|source| DatapathError::Program { name, source })?;
        let word = |at: usize| u64::from_ne_bytes(out[at..at + 8].try_into().expect("8 bytes"));
        Ok(tick::ClockSample { jiffies: word(0), monotonic_ns: word(8) })
    }

    pub fn options(&self) -> &DatapathOptions {
        &self.options
    }

    /// The capacities of the policy-generation maps as the kernel holds them: what the options asked
    /// for, or for maps adopted from a pin, the size they were created with.
    pub fn capacities(&self) -> Capacities {
        self.capacities
    }

    /// Reads `max_entries` of the maps in the kernel (the smaller of the two generations), and says so
    /// when an adopted map's size differs from the one asked for.
    fn created_capacities(&self) -> Result<Capacities, DatapathError> {
        let max_entries = |names: [&'static str; 2], asked: u32, flag: &str| -> Result<u32, DatapathError> {
            let mut smallest = u32::MAX;
            for name in names {
                let map = self.ebpf.map(name).and_then(sized_map).ok_or(DatapathError::MissingMap { name })?;
                let info = map.info().map_err(|source| DatapathError::Map { name, source })?;
                smallest = smallest.min(info.max_entries());
            }
            if smallest != asked {
                info!(
                    "the adopted {} maps hold {smallest} entries, not the {asked} of --{flag}: that is the \
                     capacity until their pins are removed (and the maps created anew)",
                    names[0].trim_end_matches("_0")
                );
            }
            Ok(smallest)
        };
        let asked = self.options.capacities;
        let policy = max_entries(MAP_POLICY, asked.policy, "policy-map-entries")?.min(max_entries(
            MAP_POLICY_EXACT,
            asked.policy,
            "policy-map-entries",
        )?);
        let ipcache = max_entries(MAP_IPCACHE, asked.ipcache, "ipcache-entries")?.min(max_entries(
            MAP_IPCACHE_HOST,
            asked.ipcache,
            "ipcache-entries",
        )?);
        // An array with a slot per endpoint id, whatever was asked.
        for name in MAP_ENFORCEMENT {
            let Some(Map::Array(map)) = self.ebpf.map(name) else { return Err(DatapathError::MissingMap { name }) };
            // A map adopted from a pin is whatever an older agent created: a hash map before session 11.
            let kind =
                map.info().and_then(|info| info.map_type()).map_err(|source| DatapathError::Map { name, source })?;
            if kind != MapType::Array {
                return Err(DatapathError::IncompatiblePin { name, found: format!("{kind:?}"), wanted: "Array" });
            }
        }
        let enforcement = MAX_ENDPOINTS;
        let name = MAP_CONNTRACK;
        let conntrack = self.ebpf.map(name).and_then(sized_map).ok_or(DatapathError::MissingMap { name })?;
        let conntrack = conntrack.info().map_err(|source| DatapathError::Map { name, source })?;
        if conntrack.max_entries() != self.options.conntrack_entries {
            info!(
                "the adopted conntrack map holds {} entries, not the {} of --conntrack-entries",
                conntrack.max_entries(),
                self.options.conntrack_entries
            );
        }
        Ok(Capacities { policy, ipcache, enforcement })
    }

    /// Attaches both programs to `interface`, looked up inside the network namespace at `netns_path`.
    /// With a pin directory, a link pinned by a previous agent is taken over atomically (the new program
    /// replaces the old one in place), and new links are pinned.
    pub fn attach_endpoint(&mut self, netns_path: &Path, interface: &str) -> Result<(), DatapathError> {
        self.attach_endpoints(netns_path, &[interface])
    }

    /// [`Self::attach_endpoint`] for many interfaces of one namespace, entered once for all of them. Each
    /// new TCX link waits for an RCU grace period in the kernel, under a lock that keeps attaches from
    /// overlapping; with [`DatapathOptions::expedited_attach`] the grace periods are expedited while this
    /// runs ([`crate::rcu`]). Taking over pinned links waits for none, and tc filters wait for none.
    pub fn attach_endpoints(&mut self, netns_path: &Path, interfaces: &[&str]) -> Result<(), DatapathError> {
        if interfaces.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let expedited =
            (self.options.expedited_attach && self.options.attach_mode == AttachMode::Tcx && interfaces.len() > 1)
                .then(|| crate::rcu::Expedited::begin(&format!("attaching to {} interfaces", interfaces.len())));
        netns::in_netns_at(netns_path, || {
            interfaces.iter().try_for_each(|interface| self.attach_here(netns_path, interface))
        })??;
        drop(expedited);
        if interfaces.len() > 1 {
            info!(
                "attached the programs to {} interfaces in {:.2?} ({})",
                interfaces.len(),
                started.elapsed(),
                self.options.attach_mode.name()
            );
        }
        Ok(())
    }

    /// Whether this datapath holds the programs of `interface` attached.
    pub fn is_attached(&self, interface: &str) -> bool {
        self.links.get(interface).is_some_and(|links| links.programs.len() == PROGRAMS.len())
    }

    /// Attaches both programs to `interface` of the calling thread's network namespace (once: a program
    /// this datapath attached there already is left as it is, also after an attach that failed half-way).
    /// What the other [`AttachMode`] left there (a previous agent's) goes once the programs are in place.
    fn attach_here(&mut self, netns_path: &Path, interface: &str) -> Result<(), DatapathError> {
        let pin_dir = self.options.pin_dir.clone();
        let mode = self.options.attach_mode;
        for (name, attach_type) in PROGRAMS {
            if self.links.get(interface).is_some_and(|links| links.programs.contains(&name)) {
                continue;
            }
            let program = classifier(&mut self.ebpf, name)?;
            let attach_error = |source| DatapathError::Attach {
                program: name,
                interface: interface.to_owned(),
                netns: netns_path.display().to_string(),
                source: Box::new(source),
            };
            let links = self.links.entry(interface.to_owned()).or_insert_with(|| InterfaceLinks {
                netns: netns_path.to_owned(),
                pinned: Vec::new(),
                owned: Vec::new(),
                programs: Vec::new(),
            });
            let link_path = pin_dir.as_ref().map(|dir| dir.join("links").join(format!("{interface}_{name}")));
            if mode == AttachMode::Tc {
                if links.programs.is_empty() {
                    crate::tc_filter::add_clsact(interface).map_err(attach_error)?;
                }
                crate::tc_filter::attach(program, interface, attach_type).map_err(attach_error)?;
                links.programs.push(name);
                if let Some(path) = link_path.filter(|path| path.exists()) {
                    // A TCX link of an agent in the other mode: it ran before the filter; now it goes.
                    info!("{}: replaced by a tc filter", path.display());
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let Some(link_path) = link_path else {
                let id = program.attach(interface, attach_type).map_err(attach_error)?;
                links.owned.push((name, id));
                links.programs.push(name);
                continue;
            };
            if link_path.exists() {
                match adopt(program, &link_path) {
                    Ok((id, pinned)) => {
                        links.owned.push((name, id));
                        links.pinned.push(pinned);
                        links.programs.push(name);
                        continue;
                    }
                    Err(e) => {
                        warn!("{}: cannot take over the pinned link ({e}); attaching anew", link_path.display());
                        let _ = std::fs::remove_file(&link_path);
                    }
                }
            }
            let id = program.attach(interface, attach_type).map_err(attach_error)?;
            let link = program.take_link(id).map_err(|source| DatapathError::Program { name, source })?;
            let fd_link = FdLink::try_from(link).map_err(|e| DatapathError::Pin {
                what: format!("the {name} link of {interface}"),
                path: link_path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            if let Some(parent) = link_path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| DatapathError::Pin {
                    what: "the links directory".into(),
                    path: parent.to_owned(),
                    source,
                })?;
            }
            let pinned = fd_link.pin(&link_path).map_err(|e| DatapathError::Pin {
                what: format!("the {name} link of {interface}"),
                path: link_path.clone(),
                source: std::io::Error::other(error_chain(&e)),
            })?;
            links.pinned.push(pinned);
            links.programs.push(name);
        }
        if mode == AttachMode::Tcx {
            // A tc filter of an agent in the other mode (or of one killed without pins, holding stale maps)
            // ran after the links; now they are in place, it goes.
            for (name, attach_type) in PROGRAMS {
                match crate::tc_filter::detach(interface, attach_type) {
                    Ok(true) => info!("{interface}: the tc filter of {name} gave way to a TCX link"),
                    Ok(false) => {}
                    Err(e) => warn!("{interface}: cannot delete the tc filter of {name}: {}", error_chain(&e)),
                }
            }
        }
        Ok(())
    }

    /// Detaches both programs from `interface` (a pod that is gone): its tc filters are deleted, or the
    /// programs' links are closed and the pinned ones unpinned, so the kernel drops them. Returns whether
    /// this datapath had attached there.
    pub fn detach_endpoint(&mut self, interface: &str) -> Result<bool, DatapathError> {
        let Some(links) = self.links.remove(interface) else {
            return Ok(false);
        };
        if self.options.attach_mode == AttachMode::Tc {
            let (netns, names) = (links.netns, links.programs);
            netns::in_netns_at(&netns, || delete_filters(interface, &names))??;
            return Ok(true);
        }
        for (name, id) in links.owned {
            let program = classifier(&mut self.ebpf, name)?;
            program.detach(id).map_err(|source| DatapathError::Program { name, source })?;
        }
        for pinned in links.pinned {
            pinned.unpin().map_err(|source| DatapathError::Pin {
                what: format!("a link of {interface} (unpinning it to detach)"),
                path: self.options.pin_dir.clone().unwrap_or_default().join("links"),
                source,
            })?;
        }
        Ok(true)
    }

    /// The endpoints-map entry of a node-side interface (`endpoint_id == 0`: no endpoint there).
    pub fn endpoint(&self, ifindex: u32) -> Result<EndpointInfo, DatapathError> {
        let name = MAP_ENDPOINTS;
        let map: Array<_, EndpointInfo> = self.typed(name)?;
        map.get(&ifindex, 0).map_err(|source| DatapathError::Map { name, source })
    }

    /// Writes (or replaces) the endpoints-map entry of a node-side interface.
    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DatapathError> {
        let name = MAP_ENDPOINTS;
        let mut map: Array<_, EndpointInfo> = self.typed_mut(name)?;
        map.set(ifindex, info, 0).map_err(|source| DatapathError::Map { name, source })
    }

    /// Writes a complete policy generation into the inactive maps, then switches the programs to it in
    /// one write, so no packet sees a half-written policy. Counters of entries that stay are carried over.
    ///
    /// Only what differs is written: the inactive generation still holds the generation before the one in
    /// effect, so entries that are the same there (key, rule, flags and carried-over counters) stay, the
    /// others are inserted or removed. A change to one policy of a thousand writes its own entries, not all,
    /// and the inactive generation is not read back (what it holds is known from the last switch).
    pub fn apply_policy(&mut self, contents: &MapContents) -> Result<(), DatapathError> {
        // The generation about to be rewritten was in effect until the last switch: a grace period since
        // then (begun at the switch, usually over by now) ends every program run that read it. Where the
        // kernel gives none, a time bound.
        if let Some(elapsed) = self.last_switch.map(|t| t.elapsed())
            && !self.grace.wait()
            && elapsed < GENERATION_GRACE
        {
            std::thread::sleep(GENERATION_GRACE - elapsed);
        }
        let next = usize::from(1 - self.generation);
        let current = self.policy_values(self.generation)?;
        let held = match self.held_policy[next].take() {
            Some(held) => held,
            None => self.policy_values(next as u8)?,
        };

        let mut wanted = StdHashMap::with_capacity(contents.policy.len());
        for (prefix, key, value) in &contents.policy {
            let mut value = *value;
            if let Some(before) = current.get(&(*prefix, *key)) {
                value.packets = before.packets;
                value.bytes = before.bytes;
            }
            wanted.insert((*prefix, *key), value);
        }
        // One peer, protocol and port: the exact map; shorter prefixes: the trie (see `maps::policy` in
        // the programs, which looks in that order). An entry's prefix decides its map, so it never moves.
        let is_exact = |(prefix, _): &(u32, PolicyKey)| *prefix == POLICY_PREFIX_FULL;
        let name = MAP_POLICY_EXACT[next];
        let mut exact: HashMap<_, PolicyKey, PolicyValue> = self.typed_mut(name)?;
        write_difference(&held, &wanted, is_exact, |(_, key), value| match value {
            Some(value) => exact.insert(key, value, 0),
            None => exact.remove(key),
        })
        .map_err(|source| DatapathError::Map { name, source })?;
        let name = MAP_POLICY[next];
        let mut trie: LpmTrie<_, PolicyKey, PolicyValue> = self.typed_mut(name)?;
        write_difference(
            &held,
            &wanted,
            |k| !is_exact(k),
            |(prefix, key), value| match value {
                Some(value) => trie.insert(&Key::new(*prefix, *key), value, 0),
                None => trie.remove(&Key::new(*prefix, *key)),
            },
        )
        .map_err(|source| DatapathError::Map { name, source })?;

        let held = match self.written[next].take() {
            Some(held) => held,
            None => self.read_generation(next)?,
        };
        let wanted = WrittenGeneration {
            ipcache: contents.ipcache.iter().map(|(prefix, value)| (prefix.key(), *value)).collect(),
            enforcement: contents.enforcement.iter().copied().collect(),
        };
        // Single addresses: the hash map; shorter prefixes: the trie (see `maps::ipcache` in the programs,
        // which looks in that order).
        let is_host = |(_, len): &(ip::Addr, u32)| *len == IPCACHE_HOST_PREFIX;
        let name = MAP_IPCACHE_HOST[next];
        let mut hosts: HashMap<_, ip::Addr, IpcacheValue> = self.typed_mut(name)?;
        write_difference(&held.ipcache, &wanted.ipcache, is_host, |(addr, _), value| match value {
            Some(value) => hosts.insert(addr, value, 0),
            None => hosts.remove(addr),
        })
        .map_err(|source| DatapathError::Map { name, source })?;
        let name = MAP_IPCACHE[next];
        let mut trie: LpmTrie<_, ip::Addr, IpcacheValue> = self.typed_mut(name)?;
        write_difference(
            &held.ipcache,
            &wanted.ipcache,
            |k| !is_host(k),
            |(addr, len), value| match value {
                Some(value) => trie.insert(&Key::new(*len, *addr), value, 0),
                None => trie.remove(&Key::new(*len, *addr)),
            },
        )
        .map_err(|source| DatapathError::Map { name, source })?;

        // An array's slots are never removed: an endpoint id that went is set to 0 (no policy selects it).
        let name = MAP_ENFORCEMENT[next];
        let mut enforce: Array<_, u32> = self.typed_mut(name)?;
        write_difference(
            &held.enforcement,
            &wanted.enforcement,
            |_| true,
            |endpoint_id, flags| enforce.set(u32::from(*endpoint_id), flags.unwrap_or(0), 0),
        )
        .map_err(|source| DatapathError::Map { name, source })?;
        self.written[next] = Some(wanted);
        // The generation in effect until the switch below, as just read: what it holds when it is written
        // next, but for the counts of packets that still read it during the grace (they stay, as counted).
        self.held_policy[usize::from(self.generation)] = Some(current);

        self.set_config(Config::ActiveGeneration, next as u64)?;
        self.generation = next as u8;
        self.last_switch = Some(Instant::now());
        self.grace.switched();
        // After the switch: a packet that reads the new revision reads the new generation too (the programs
        // read the revision first), so no connection is stamped with a revision its policy is older than.
        // `REVISION_REVOKED` (u32::MAX) is never a revision: the kernel compares the low 32 bits.
        self.revision += 1;
        if self.revision as u32 == u32::MAX {
            self.revision += 1;
        }
        self.set_config(Config::PolicyRevision, self.revision)?;
        Ok(())
    }

    /// The ipcache and enforcement flags of a generation as the kernel holds them (for a generation this
    /// datapath has not written yet: adopted from a pin, or at start).
    fn read_generation(&self, generation: usize) -> Result<WrittenGeneration, DatapathError> {
        let mut held = WrittenGeneration::default();
        let name = MAP_IPCACHE_HOST[generation];
        let hosts: HashMap<_, ip::Addr, IpcacheValue> = self.typed(name)?;
        for item in hosts.iter() {
            let (addr, value) = item.map_err(|source| DatapathError::Map { name, source })?;
            held.ipcache.insert((addr, IPCACHE_HOST_PREFIX), value);
        }
        let name = MAP_IPCACHE[generation];
        let trie: LpmTrie<_, ip::Addr, IpcacheValue> = self.typed(name)?;
        for item in trie.iter() {
            let (key, value) = item.map_err(|source| DatapathError::Map { name, source })?;
            held.ipcache.insert((key.data(), key.prefix_len()), value);
        }
        let name = MAP_ENFORCEMENT[generation];
        let enforce: Array<_, u32> = self.typed(name)?;
        for (id, flags) in enforce.iter().enumerate() {
            let flags = flags.map_err(|source| DatapathError::Map { name, source })?;
            if flags != 0 {
                held.enforcement.insert(u16::try_from(id).expect("MAX_ENDPOINTS slots: ids fit u16"), flags);
            }
        }
        Ok(held)
    }

    /// The policy revision in effect: the number of policy switches (it goes on across restarts).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Conntrack idle lifetimes in effect.
    pub fn ct_lifetimes(&self) -> CtLifetimes {
        self.options.ct_lifetimes
    }

    /// Map `name` of the programs' object as the typed map `T`, to read.
    fn typed<'a, T: TryFrom<&'a Map, Error = MapError>>(&'a self, name: &'static str) -> Result<T, DatapathError> {
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap { name })?;
        T::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    /// Map `name` of the programs' object as the typed map `T`, to write.
    fn typed_mut<'a, T: TryFrom<&'a mut Map, Error = MapError>>(
        &'a mut self,
        name: &'static str,
    ) -> Result<T, DatapathError> {
        let map = self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap { name })?;
        T::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    fn conntrack_data(&self) -> Result<&MapData, DatapathError> {
        let name = MAP_CONNTRACK;
        self.ebpf.map(name).and_then(sized_map).ok_or(DatapathError::MissingMap { name })
    }

    /// Calls `each` with every conntrack entry, read in batches (the kernel goes on changing them while
    /// they are read: an entry added or deleted meanwhile may or may not be seen).
    fn for_each_connection(&self, each: impl FnMut(&CtKey, &CtEntry)) -> Result<(), DatapathError> {
        let name = MAP_CONNTRACK;
        map_batch::for_each(self.conntrack_data()?, each).map_err(|e| DatapathError::MapBatch { name, source: e })
    }

    /// Every conntrack entry (a snapshot: the kernel goes on changing them while they are read).
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, DatapathError> {
        let mut entries = Vec::new();
        self.for_each_connection(|key, entry| entries.push((*key, *entry)))?;
        Ok(entries)
    }

    /// Conntrack's entry count and capacity.
    pub fn conntrack_fill(&self) -> Result<ConntrackFill, DatapathError> {
        let mut entries = 0;
        self.for_each_connection(|_, _| entries += 1)?;
        Ok(ConntrackFill { entries, capacity: u64::from(self.options.conntrack_entries) })
    }

    /// Deletes the conntrack entries that outlived their lifetime at `now_ns` (CLOCK_MONOTONIC); returns
    /// how many were deleted and how many are left (as the walk counted them). The programs never resume
    /// an expired entry, so this only frees room.
    pub fn conntrack_gc(&mut self, now_ns: u64) -> Result<(u64, u64), DatapathError> {
        let (walked, expired) = self.conntrack_expired(now_ns)?;
        let deleted = self.conntrack_delete_expired(&expired, now_ns)?;
        Ok((deleted, walked.saturating_sub(deleted)))
    }

    /// The collector's walk: how many entries the map holds, and the keys of those expired at `now_ns`.
    pub fn conntrack_expired(&self, now_ns: u64) -> Result<(u64, Vec<CtKey>), DatapathError> {
        let lifetimes = self.options.ct_lifetimes;
        let mut walked = 0u64;
        let mut keys = Vec::new();
        self.for_each_connection(|key, entry| {
            walked += 1;
            if lifetimes.expired(key, entry, now_ns) {
                keys.push(*key);
            }
        })?;
        Ok((walked, keys))
    }

    /// The collector's deletion of `keys`, read as expired at `now_ns`; returns how many it deleted. Each
    /// is taken out with the value it holds at that moment: if a packet replaced it since the walk (a new
    /// connection on the same tuple, with its own verdict), that value is put back, unless yet another
    /// packet already made one.
    pub fn conntrack_delete_expired(&self, keys: &[CtKey], now_ns: u64) -> Result<u64, DatapathError> {
        let lifetimes = self.options.ct_lifetimes;
        let name = MAP_CONNTRACK;
        let data = self.conntrack_data()?;
        let batch_error = |source| DatapathError::MapBatch { name, source };
        let mut deleted = 0;
        for key in keys {
            match map_batch::take::<CtKey, CtEntry>(data, key).map_err(batch_error)? {
                Some(entry) if lifetimes.expired(key, &entry, now_ns) => deleted += 1,
                Some(renewed) => {
                    map_batch::insert_new(data, key, &renewed).map_err(batch_error)?;
                }
                None => {}
            }
        }
        Ok(deleted)
    }

    /// Makes the kernel forget what it keeps under an endpoint id, before the id goes to another pod
    /// (`EndpointRegistry::take_reused`): the connections tracked for it (which would let the new pod's
    /// packets pass as the old pod's established connections, without a verdict) and its count of
    /// invalid-source drops. Returns the connections deleted. A packet of the id between the walk and the
    /// deletion may lose a fresh entry: its next packet is decided again.
    pub fn forget_endpoint(&mut self, endpoint_id: u16) -> Result<u64, DatapathError> {
        let mut keys = Vec::new();
        self.for_each_connection(|key, _| {
            if key.endpoint_id == endpoint_id {
                keys.push(*key);
            }
        })?;
        let name = MAP_CONNTRACK;
        let data = self.conntrack_data()?;
        let mut deleted = 0;
        for key in &keys {
            let taken = map_batch::take::<CtKey, CtEntry>(data, key)
                .map_err(|source| DatapathError::MapBatch { name, source })?;
            deleted += u64::from(taken.is_some());
        }
        let name = MAP_INVALID_SOURCE;
        let mut map: PerCpuArray<_, u64> = self.typed_mut(name)?;
        let index = u32::from(endpoint_id);
        let cpus = map.get(&index, 0).map_err(|source| DatapathError::Map { name, source })?.len();
        let zeroes = PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(|source| DatapathError::Map { name, source: source.into() })?;
        map.set(index, zeroes, 0).map_err(|source| DatapathError::Map { name, source })?;
        Ok(deleted)
    }

    /// The entries of a policy generation with their counters, by (prefix length, key): its trie's and
    /// its exact map's (whose entries have prefix `POLICY_PREFIX_FULL`).
    pub fn policy_values(&self, generation: u8) -> Result<StdHashMap<(u32, PolicyKey), PolicyValue>, DatapathError> {
        let mut out = StdHashMap::new();
        let name = MAP_POLICY[usize::from(generation)];
        let trie: LpmTrie<_, PolicyKey, PolicyValue> = self.typed(name)?;
        for item in trie.iter() {
            let (key, value) = item.map_err(|source| DatapathError::Map { name, source })?;
            out.insert((key.prefix_len(), key.data()), value);
        }
        // The exact map holds most entries: read in batches (every apply reads the active generation's
        // counters to carry them over).
        let name = MAP_POLICY_EXACT[usize::from(generation)];
        let exact = self.ebpf.map(name).and_then(sized_map).ok_or(DatapathError::MissingMap { name })?;
        map_batch::for_each(exact, |key: &PolicyKey, value: &PolicyValue| {
            out.insert((POLICY_PREFIX_FULL, *key), *value);
        })
        .map_err(|source| DatapathError::MapBatch { name, source })?;
        Ok(out)
    }

    /// The policy generation in effect as the kernel holds it: policy trie, ipcache and enforcement flags
    /// (counters included).
    pub fn policy_contents(&self) -> Result<MapContents, DatapathError> {
        let generation = usize::from(self.generation);
        let mut contents = MapContents::default();
        for ((prefix, key), value) in self.policy_values(self.generation)? {
            contents.policy.push((prefix, key, value));
        }
        contents.policy.sort_by_key(|(prefix, key, _)| (*key, *prefix));

        let held = self.read_generation(generation)?;
        let mut ipcache: Vec<_> = held.ipcache.into_iter().collect();
        ipcache.sort_unstable_by_key(|((addr, len), _)| (*addr, *len));
        contents.ipcache = ipcache
            .into_iter()
            .map(|((addr, len), value)| (flowgate_policy::IpPrefix::from_key(addr, len), value))
            .collect();
        contents.enforcement = held.enforcement.into_iter().collect();
        contents.enforcement.sort_unstable();
        Ok(contents)
    }

    /// The active policy generation.
    pub fn generation(&self) -> u8 {
        self.generation
    }

    fn config(&self, key: Config) -> Result<u64, DatapathError> {
        let name = MAP_CONFIG;
        let map: Array<_, u64> = self.typed(name)?;
        map.get(&key.index(), 0).map_err(|source| DatapathError::Map { name, source })
    }

    fn set_config(&mut self, key: Config, value: u64) -> Result<(), DatapathError> {
        let name = MAP_CONFIG;
        let mut map: Array<_, u64> = self.typed_mut(name)?;
        map.set(key.index(), value, 0).map_err(|source| DatapathError::Map { name, source })
    }

    /// Takes the events ring buffer out of the object, for the reader task.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        let name = MAP_EVENTS_RINGBUF;
        let map = self.ebpf.take_map(name).ok_or(DatapathError::MissingMap { name })?;
        RingBuf::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    /// The ring buffer's last-wake-up map, for its reader to hold the programs' wake-ups off while it
    /// polls a stream ([`crate::reader::WakeupHold`]). Taken out of the datapath, as the ring itself.
    pub fn take_wakeup(&mut self) -> Result<Array<MapData, u64>, DatapathError> {
        let name = MAP_WAKEUP;
        let map = self.ebpf.take_map(name).ok_or(DatapathError::MissingMap { name })?;
        Array::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    /// Runs one of the programs on a crafted packet with BPF_PROG_TEST_RUN, `repeat` times. The
    /// result's `duration` is the kernel's average per run.
    pub fn test_run(&self, name: &'static str, packet: &[u8], repeat: u32) -> Result<TestRunResult, DatapathError> {
        let program = self.loaded(name)?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(packet);
        options.repeat = repeat;
        program.test_run(options).map_err(|source| DatapathError::Program { name, source })
    }

    /// Takes the perf event array out of the object (for `--events-buffer perf`), for
    /// [`crate::perf_buffer::open_all`] to put the per-CPU buffers into.
    pub fn take_perf_events(&mut self) -> Result<MapData, DatapathError> {
        let name = MAP_EVENTS_PERF;
        match self.ebpf.take_map(name).ok_or(DatapathError::MissingMap { name })? {
            Map::PerfEventArray(data) => Ok(data),
            other => Err(DatapathError::Map {
                name,
                source: PerfEventArray::try_from(other).err().expect("only a perf event array converts to one"),
            }),
        }
    }

    /// Kernel counters summed across CPUs.
    pub fn counters(&self) -> Result<KernelCounters, DatapathError> {
        let name = MAP_COUNTERS;
        let map: PerCpuArray<_, u64> = self.typed(name)?;
        let mut values = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            let per_cpu = map.get(&counter.index(), 0).map_err(|source| DatapathError::Map { name, source })?;
            values[counter.index() as usize] = per_cpu.iter().sum();
        }
        Ok(KernelCounters { values })
    }

    /// Packets dropped for an invalid source address, by endpoint id (summed across CPUs; only
    /// endpoints that had any).
    pub fn invalid_source_drops(
        &self,
        endpoint_ids: impl IntoIterator<Item = u16>,
    ) -> Result<std::collections::BTreeMap<u16, u64>, DatapathError> {
        let name = MAP_INVALID_SOURCE;
        let map: PerCpuArray<_, u64> = self.typed(name)?;
        let mut drops = std::collections::BTreeMap::new();
        for id in endpoint_ids {
            let per_cpu = map.get(&u32::from(id), 0).map_err(|source| DatapathError::Map { name, source })?;
            let total: u64 = per_cpu.iter().sum();
            if total > 0 {
                drops.insert(id, total);
            }
        }
        Ok(drops)
    }
}

/// Without a pin directory nothing outlives the datapath: TCX links close with their file descriptors,
/// tc filters are deleted here (best effort: an interface that is gone took its filters with it).
impl Drop for Datapath {
    fn drop(&mut self) {
        if self.options.pin_dir.is_some() || self.options.attach_mode != AttachMode::Tc {
            return;
        }
        let mut by_netns: BTreeMap<PathBuf, Vec<(String, Vec<&'static str>)>> = BTreeMap::new();
        for (interface, links) in std::mem::take(&mut self.links) {
            by_netns.entry(links.netns).or_default().push((interface, links.programs));
        }
        for (netns, interfaces) in by_netns {
            let deleted = netns::in_netns_at(&netns, || {
                interfaces.iter().try_for_each(|(interface, names)| delete_filters(interface, names))
            });
            if let Err(e) = deleted.map_err(DatapathError::from).and_then(|r| r) {
                warn!("deleting the tc filters in {}: {}", netns.display(), error_chain(&e));
            }
        }
    }
}

/// The kernel map behind the kinds of map whose size the agent sets (tries and hash maps).
fn sized_map(map: &Map) -> Option<&MapData> {
    match map {
        Map::LpmTrie(m) | Map::HashMap(m) | Map::LruHashMap(m) => Some(m),
        _ => None,
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Deletes the tc filters of the programs `names` from `interface` of the calling thread's namespace.
fn delete_filters(interface: &str, names: &[&'static str]) -> Result<(), DatapathError> {
    for (name, attach_type) in PROGRAMS.into_iter().filter(|(name, _)| names.contains(name)) {
        crate::tc_filter::detach(interface, attach_type).map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(())
}

/// Swaps `program` into the link pinned at `path` (bpf_link_update) and keeps the pin; returns the
/// program's id of the link and the agent's own handle on the pin.
fn adopt(program: &mut SchedClassifier, path: &Path) -> Result<(SchedClassifierLinkId, PinnedLink), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| error_chain(&e))?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| error_chain(&e))?;
    let id = program.attach_to_link(link).map_err(|e| error_chain(&e))?;
    // The program now owns the link's fd; reopen the pin so the agent keeps its own handle too.
    Ok((id, PinnedLink::from_pin(path).map_err(|e| error_chain(&e))?))
}

/// One of the object's TC programs, by name.
fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// What the datapath's endpoints map holds for an endpoint.
pub fn endpoint_info(endpoint: &Endpoint) -> EndpointInfo {
    EndpointInfo {
        endpoint_id: endpoint.id,
        flags: 0,
        identity: endpoint.identity,
        ipv4: ip::v4_mapped(endpoint.ipv4.octets()),
        ipv6: endpoint.ipv6.map_or(ip::UNSPECIFIED, |v6| v6.octets()),
    }
}

/// A snapshot of the kernel's per-CPU counters, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    values: [u64; Counter::COUNT as usize],
}

impl KernelCounters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter.index() as usize]
    }
}
