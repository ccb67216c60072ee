//! The kernel side as the agent sees it: loads the embedded eBPF object, attaches the TC programs to
//! endpoints' node-side veths (TCX), writes the endpoints and config maps, reads the kernel counters.

use std::path::Path;

use std::{
    collections::HashMap as StdHashMap,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, PerfEventArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, TestRunResult},
};
use flowgate_common::{
    Counter, EndpointInfo,
    counters::{Config, aggregation, events_kind},
    names::{
        MAP_CONFIG, MAP_COUNTERS, MAP_ENDPOINTS, MAP_ENFORCEMENT, MAP_EVENTS_PERF, MAP_EVENTS_RINGBUF, MAP_IPCACHE, MAP_POLICY,
        PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT,
    },
    policy::{IpcacheValue, PolicyKey, PolicyValue},
};

use flowgate_proto::endpoint::Endpoint;

use crate::{
    netns::{self, NetnsError},
    policy::realize::MapContents,
};

/// How long a generation that was just switched away from stays untouched, so packets that read the
/// old generation number finish with the old maps.
const GENERATION_GRACE: Duration = Duration::from_millis(50);

/// The eBPF object built by build.rs from `ebpf-progs/`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowgate-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
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
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// Size of the events ring buffer in bytes (a power of two, multiple of the page size).
    pub events_buffer_bytes: u32,
    /// Unread bytes in the ring buffer above which the kernel wakes the reader.
    pub wakeup_bytes: u64,
    /// `counters::events_kind`: ring buffer or perf event array.
    pub events_kind: u64,
    /// `counters::aggregation` level of trace records.
    pub aggregation: u64,
}

impl Default for DatapathOptions {
    fn default() -> Self {
        Self {
            events_buffer_bytes: 8 << 20,
            wakeup_bytes: 256 << 10,
            events_kind: events_kind::RINGBUF,
            aggregation: aggregation::MEDIUM,
        }
    }
}

/// Loaded programs and maps. Dropping it detaches every program it attached.
pub struct Datapath {
    ebpf: Ebpf,
    options: DatapathOptions,
    /// Policy generation the programs read.
    generation: u8,
    last_switch: Option<Instant>,
}

const PROGRAMS: [(&str, TcAttachType); 2] =
    [(PROG_FROM_ENDPOINT, TcAttachType::Ingress), (PROG_TO_ENDPOINT, TcAttachType::Egress)];

impl Datapath {
    /// Loads the object into the kernel (programs verified, maps created); nothing is attached yet.
    pub fn load(options: DatapathOptions) -> Result<Self, DatapathError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_EVENTS_RINGBUF, options.events_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(DatapathError::Load)?;
        for (name, _) in PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram { name })?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            program.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        let mut datapath = Self { ebpf, options, generation: 0, last_switch: None };
        let options = datapath.options.clone();
        datapath.set_config(Config::WakeupBytes, options.wakeup_bytes)?;
        datapath.set_config(Config::EventsKind, options.events_kind)?;
        datapath.set_config(Config::Aggregation, options.aggregation)?;
        Ok(datapath)
    }

    pub fn options(&self) -> &DatapathOptions {
        &self.options
    }

    /// Attaches both programs to `interface`, looked up inside the network namespace at `netns_path`.
    pub fn attach_endpoint(&mut self, netns_path: &Path, interface: &str) -> Result<(), DatapathError> {
        for (name, attach_type) in PROGRAMS {
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram { name })?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            netns::run_in(netns_path, || program.attach(interface, attach_type))?.map_err(|source| {
                DatapathError::Attach {
                    program: name,
                    interface: interface.to_owned(),
                    netns: netns_path.display().to_string(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Writes (or replaces) the endpoints-map entry of a node-side interface.
    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DatapathError> {
        let name = MAP_ENDPOINTS;
        let mut map: HashMap<_, u32, EndpointInfo> = HashMap::try_from(
            self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap { name })?,
        )
        .map_err(|source| DatapathError::Map { name, source })?;
        map.insert(ifindex, info, 0).map_err(|source| DatapathError::Map { name, source })
    }

    /// Writes a complete policy generation into the inactive maps, then switches the programs to it in
    /// one write, so no packet sees a half-written policy. Counters of entries that stay are carried over.
    pub fn apply_policy(&mut self, contents: &MapContents) -> Result<(), DatapathError> {
        if let Some(elapsed) = self.last_switch.map(|t| t.elapsed()) {
            if elapsed < GENERATION_GRACE {
                std::thread::sleep(GENERATION_GRACE - elapsed);
            }
        }
        let next = usize::from(1 - self.generation);
        let current = self.policy_values(self.generation)?;

        let name = MAP_POLICY[next];
        let mut trie: LpmTrie<_, PolicyKey, PolicyValue> =
            LpmTrie::try_from(self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap { name })?)
                .map_err(|source| DatapathError::Map { name, source })?;
        let old: Vec<Key<PolicyKey>> = trie.keys().filter_map(Result::ok).collect();
        for key in old {
            trie.remove(&key).map_err(|source| DatapathError::Map { name, source })?;
        }
        for (prefix, key, value) in &contents.policy {
            let mut value = *value;
            if let Some(before) = current.get(&(*prefix, *key)) {
                value.packets = before.packets;
                value.bytes = before.bytes;
            }
            trie.insert(&Key::new(*prefix, *key), value, 0).map_err(|source| DatapathError::Map { name, source })?;
        }

        let name = MAP_IPCACHE[next];
        let mut ipcache: LpmTrie<_, [u8; 4], IpcacheValue> =
            LpmTrie::try_from(self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap { name })?)
                .map_err(|source| DatapathError::Map { name, source })?;
        let old: Vec<Key<[u8; 4]>> = ipcache.keys().filter_map(Result::ok).collect();
        for key in old {
            ipcache.remove(&key).map_err(|source| DatapathError::Map { name, source })?;
        }
        for (prefix, addr, value) in &contents.ipcache {
            ipcache
                .insert(&Key::new(*prefix, addr.octets()), *value, 0)
                .map_err(|source| DatapathError::Map { name, source })?;
        }

        let name = MAP_ENFORCEMENT[next];
        let mut enforce: HashMap<_, u16, u32> =
            HashMap::try_from(self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap { name })?)
                .map_err(|source| DatapathError::Map { name, source })?;
        let old: Vec<u16> = enforce.keys().filter_map(Result::ok).collect();
        for key in old {
            enforce.remove(&key).map_err(|source| DatapathError::Map { name, source })?;
        }
        for (endpoint_id, flags) in &contents.enforcement {
            enforce.insert(endpoint_id, flags, 0).map_err(|source| DatapathError::Map { name, source })?;
        }

        self.set_config(Config::ActiveGeneration, next as u64)?;
        self.generation = next as u8;
        self.last_switch = Some(Instant::now());
        Ok(())
    }

    /// The entries of a policy generation with their counters, by (prefix length, key).
    pub fn policy_values(&self, generation: u8) -> Result<StdHashMap<(u32, PolicyKey), PolicyValue>, DatapathError> {
        let name = MAP_POLICY[usize::from(generation)];
        let trie: LpmTrie<_, PolicyKey, PolicyValue> =
            LpmTrie::try_from(self.ebpf.map(name).ok_or(DatapathError::MissingMap { name })?)
                .map_err(|source| DatapathError::Map { name, source })?;
        let mut out = StdHashMap::new();
        for item in trie.iter() {
            let (key, value) = item.map_err(|source| DatapathError::Map { name, source })?;
            out.insert((key.prefix_len(), key.data()), value);
        }
        Ok(out)
    }

    /// The active policy generation.
    pub fn generation(&self) -> u8 {
        self.generation
    }

    fn set_config(&mut self, key: Config, value: u64) -> Result<(), DatapathError> {
        let name = MAP_CONFIG;
        let mut map: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap { name })?)
                .map_err(|source| DatapathError::Map { name, source })?;
        map.set(key.index(), value, 0).map_err(|source| DatapathError::Map { name, source })
    }

    /// Takes the events ring buffer out of the object, for the reader task.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        let name = MAP_EVENTS_RINGBUF;
        let map = self.ebpf.take_map(name).ok_or(DatapathError::MissingMap { name })?;
        RingBuf::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    /// Runs one of the programs on a crafted packet with BPF_PROG_TEST_RUN, `repeat` times. The
    /// result's `duration` is the kernel's average per run.
    pub fn test_run(&self, name: &'static str, packet: &[u8], repeat: u32) -> Result<TestRunResult, DatapathError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram { name })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(packet);
        options.repeat = repeat;
        program.test_run(options).map_err(|source| DatapathError::Program { name, source })
    }

    /// Takes the perf event array out of the object (for `--events-buffer perf`).
    pub fn take_perf_events(&mut self) -> Result<PerfEventArray<MapData>, DatapathError> {
        let name = MAP_EVENTS_PERF;
        let map = self.ebpf.take_map(name).ok_or(DatapathError::MissingMap { name })?;
        PerfEventArray::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    /// Kernel counters summed across CPUs.
    pub fn counters(&self) -> Result<KernelCounters, DatapathError> {
        let name = MAP_COUNTERS;
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(name).ok_or(DatapathError::MissingMap { name })?)
                .map_err(|source| DatapathError::Map { name, source })?;
        let mut values = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            let per_cpu =
                map.get(&counter.index(), 0).map_err(|source| DatapathError::Map { name, source })?;
            values[counter.index() as usize] = per_cpu.iter().sum();
        }
        Ok(KernelCounters { values })
    }
}

/// What the datapath's endpoints map holds for an endpoint.
pub fn endpoint_info(endpoint: &Endpoint) -> EndpointInfo {
    EndpointInfo {
        endpoint_id: endpoint.id,
        flags: 0,
        identity: endpoint.identity,
        ipv4: u32::from_ne_bytes(endpoint.ipv4.octets()),
        _pad: 0,
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
