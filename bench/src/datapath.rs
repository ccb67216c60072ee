//! The datapath per packet: nanoseconds the kernel programs spend on one packet, timed by the kernel
//! itself (BPF_PROG_TEST_RUN's average over its repeats), for each kind of packet the datapath handles,
//! at 1, 100, 10,000 and 100,000 policy entries and 10 and 1,000 endpoints.
//!
//! Each scale is a real datapath, loaded and filled by the agent's own code (policy engine, endpoint
//! registry, ipcache): one server endpoint behind loopback (where test runs happen) and the rest on
//! interfaces no packet uses; `clients` remote pods with an identity each; one NetworkPolicy on the server
//! allowing the clients on `ports` TCP ports (clients x ports entries) and an ipBlock on 443.
//!
//! Every record the programs write is kept (the events ring buffer holds a whole run, and is emptied
//! between runs) and the kernel's lost-record counter is checked: a record that could not be written
//! would make a run look cheaper than it is.
//!
//! A packet repeated by BPF_PROG_TEST_RUN belongs to a connection after its first run, so new
//! connections that policy allows are measured with a SYN that also resets: conntrack records it closed,
//! and the next repeat is a new connection again, decided by policy and recorded (one conntrack lookup, as
//! a real opening SYN makes: a SYN is never looked up as a reply; its entry replaces the closed one, where a
//! real connection's is new). Denied connections are never tracked, so their plain SYN repeats as a new
//! connection.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use anyhow::{Context as _, ensure};
use aya::maps::{MapData, RingBuf};
use flowgate_agent::{
    craft::{Fragment, Transport, ipv4_frame, ipv4_packet, ipv6_l4, ipv6_packet},
    datapath::{self, Datapath, DatapathOptions},
    policy::{PolicyEngine, realize::Capacities},
    state::{AgentInfo, AgentState, RemotePod},
};
use flowgate_common::{
    Counter,
    counters::aggregation,
    names::{PROG_FLOOR, PROG_TO_ENDPOINT},
};
use flowgate_events::hub::{Hub, HubConfig};
use flowgate_policy::{ClusterView, LoadedPolicy, NOT_AN_ENDPOINT, NamespaceInfo, PodInfo};
use flowgate_proto::endpoint::NewEndpoint;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::{
    median,
    report::{Figure, Section, Target},
};

/// skb->ifindex under BPF_PROG_TEST_RUN: the loopback device of the caller's namespace.
const TEST_RUN_IFINDEX: u32 = 1;
const NAMESPACE: &str = "bench";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
/// Outside every block the policy allows: its connections are denied.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Inside the ipBlock the policy allows on port 443.
const CIDR_PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const FIRST_PORT: u16 = 1000;
const CIDR_PORT: u16 = 443;

/// Targets of issue #12 point 2.
const ESTABLISHED_TARGET_NS: f64 = 40.0;
const NEW_CONNECTION_TARGET_NS: f64 = 200.0;
const FLAT_TARGET_RATIO: f64 = 1.10;

/// How much to measure: repeats per run, runs per figure (the median is kept).
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    pub repeat: u32,
    pub runs: usize,
}

impl Effort {
    pub const FULL: Effort = Effort { repeat: 1_000_000, runs: 3 };
    pub const QUICK: Effort = Effort { repeat: 10_000, runs: 3 };
}

/// One measured configuration: policy entries (clients x ports) and endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub clients: usize,
    pub ports: usize,
    pub endpoints: usize,
}

impl Scale {
    pub fn entries(&self) -> usize {
        self.clients * self.ports
    }

    /// The matrix: 1, 100, 10,000 and 100,000 entries, at 10 and 1,000 endpoints.
    pub fn matrix() -> Vec<Scale> {
        let mut scales = Vec::new();
        for endpoints in [10, 1000] {
            for (clients, ports) in [(1, 1), (10, 10), (100, 100), (1000, 100)] {
                scales.push(Scale { clients, ports, endpoints });
            }
        }
        scales
    }
}

/// The IPv6 counterpart of a bench address (dual-stack pods).
fn v6(ip: Ipv4Addr) -> Ipv6Addr {
    let [a, b, c, d] = ip.octets();
    Ipv6Addr::new(0xfd00, 0x10, 0x200, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
}

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0aca_0000u32 + i as u32)
}

/// A loaded datapath at one scale, and its events ring.
struct Bench {
    datapath: Datapath,
    ring: RingBuf<MapData>,
    policy_entries: usize,
}

fn policy_yaml(scale: Scale) -> String {
    let mut ports = String::new();
    for p in 0..scale.ports {
        let _ = write!(ports, "{{port: {}}}, ", FIRST_PORT as usize + p);
    }
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
         \x20 - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]\n    ports: [{ports}]\n\
         \x20 - from: [{{ipBlock: {{cidr: 192.0.2.0/24}}}}]\n    ports: [{{port: {CIDR_PORT}}}]\n"
    )
}

impl Bench {
    fn load(scale: Scale) -> anyhow::Result<Self> {
        let mut datapath = Datapath::load(DatapathOptions {
            // A whole run's records fit: none is lost, none needs a reader competing for the CPU.
            events_buffer_bytes: 256 << 20,
            wakeup_bytes: u64::MAX,
            aggregation: aggregation::MEDIUM,
            capacities: Capacities { policy: 262_144, ..Capacities::default() },
            ..DatapathOptions::default()
        })
        .context("loading the datapath (run as root, with bpffs mounted)")?;
        let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
        let ns_labels: BTreeMap<String, String> =
            [("kubernetes.io/metadata.name".to_string(), NAMESPACE.to_string())].into();
        let mut pods = Vec::new();
        for i in 0..scale.endpoints {
            let (name, ip, ifindex) = if i == 0 {
                ("server".to_string(), SERVER, TEST_RUN_IFINDEX)
            } else {
                (format!("pod-{i}"), Ipv4Addr::from(0x0ac9_0000u32 + i as u32), 100 + i as u32)
            };
            let endpoint = state.upsert_endpoint(
                NewEndpoint {
                    namespace: NAMESPACE.into(),
                    pod_name: name.clone(),
                    labels: [("app".to_string(), name.clone())].into(),
                    ipv4: ip,
                    ipv6: Some(v6(ip)),
                    interface: format!("lxc{i}"),
                    ifindex,
                },
                &ns_labels,
            )?;
            datapath.set_endpoint(ifindex, datapath::endpoint_info(&endpoint))?;
            pods.push(PodInfo {
                endpoint_id: endpoint.id,
                namespace: NAMESPACE.into(),
                name,
                labels: endpoint.labels.clone(),
                ip,
                ipv6: Some(v6(ip)),
                identity: endpoint.identity,
                ports: Vec::new(),
            });
        }
        let remote: Vec<RemotePod> = (0..scale.clients)
            .map(|i| RemotePod {
                namespace: NAMESPACE.into(),
                name: format!("client-{i}"),
                labels: [("role".to_string(), "client".to_string()), ("client".to_string(), i.to_string())].into(),
                namespace_labels: ns_labels.clone(),
                ipv4: client_ip(i),
                ipv6: Some(v6(client_ip(i))),
            })
            .collect();
        let identities = state.set_remote_pods(&remote);
        for (pod, identity) in remote.into_iter().zip(identities) {
            pods.push(PodInfo {
                endpoint_id: NOT_AN_ENDPOINT,
                namespace: pod.namespace,
                name: pod.name,
                labels: pod.labels,
                ip: pod.ipv4,
                ipv6: pod.ipv6,
                identity,
                ports: Vec::new(),
            });
        }
        let policy: NetworkPolicy = serde_yaml::from_str(&policy_yaml(scale)).context("the bench policy")?;
        let mut engine = PolicyEngine::new(None, false);
        engine.set_capacities(Capacities { policy: 262_144, ..Capacities::default() });
        engine.set_policies(vec![std::sync::Arc::new(LoadedPolicy::new("bench-policy.yaml", 1, policy))]);
        let cluster =
            ClusterView { namespaces: vec![NamespaceInfo { name: NAMESPACE.into(), labels: ns_labels }], pods };
        let (contents, snapshot) = engine.prepare(cluster.clone())?;
        let policy_entries = contents.policy.len();
        state.set_policy(Arc::new(snapshot), engine.cidr_labels());
        datapath.apply_policy(&contents)?;
        engine.applied();
        let ring = datapath.take_events()?;
        Ok(Self { datapath, ring, policy_entries })
    }

    /// Empties the events ring; returns how many records it held.
    fn drain(&mut self) -> u64 {
        let mut n = 0;
        while self.ring.next().is_some() {
            n += 1;
        }
        n
    }

    fn lost(&self) -> anyhow::Result<u64> {
        Ok(self.datapath.counters()?.get(Counter::RecordsLost))
    }

    /// Median over `runs` of the kernel's ns per packet for `packet` repeated `repeat` times.
    fn repeated(&mut self, program: &'static str, packet: &[u8], effort: Effort) -> anyhow::Result<f64> {
        let mut samples = Vec::new();
        for _ in 0..effort.runs {
            let run = self.datapath.test_run(program, packet, effort.repeat)?;
            samples.push(run.duration.as_nanos() as f64);
            self.drain();
        }
        Ok(median(samples))
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Transport {
    Transport::Tcp { sport, dport, flags }
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

fn packet(src: Ipv4Addr, dst: Ipv4Addr, ipv6: bool, transport: Transport) -> Vec<u8> {
    if ipv6 { ipv6_packet(v6(src), v6(dst), transport) } else { ipv4_packet(src, dst, transport) }
}

/// What one scale measured, in ns per packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScaleFigures {
    pub established: [f64; 2],
    pub new_allowed: [f64; 2],
    pub new_denied: [f64; 2],
    pub cidr_allowed: f64,
    pub later_fragment: f64,
}

/// Measures one scale; returns its figures and the number of policy entries it had.
fn measure(scale: Scale, effort: Effort) -> anyhow::Result<(ScaleFigures, usize)> {
    let mut bench = Bench::load(scale)?;
    let mut figures = ScaleFigures::default();
    let client = client_ip(0);
    for (family, ipv6) in [(0, false), (1, true)] {
        // Established: the first run opens the connection, the measured ones are its later packets.
        let syn = packet(client, SERVER, ipv6, tcp(4000, FIRST_PORT, SYN));
        bench.datapath.test_run(PROG_TO_ENDPOINT, &syn, 1)?;
        let ack = packet(client, SERVER, ipv6, tcp(4000, FIRST_PORT, ACK));
        figures.established[family] = bench.repeated(PROG_TO_ENDPOINT, &ack, effort)?;
        // New and allowed, with its verdict record (and its trace record): a SYN that also resets closes
        // its connection at once, so every repeat is a new connection that policy decides and conntrack
        // records.
        let reset_syn = packet(client, SERVER, ipv6, tcp(4003, FIRST_PORT, SYN | RST));
        figures.new_allowed[family] = bench.repeated(PROG_TO_ENDPOINT, &reset_syn, effort)?;
        // New and denied: a verdict record and a drop record; nothing is tracked, so every run decides.
        let denied = packet(OUTSIDE, SERVER, ipv6, tcp(4001, FIRST_PORT, SYN));
        figures.new_denied[family] = bench.repeated(PROG_TO_ENDPOINT, &denied, effort)?;
    }
    let cidr = ipv4_packet(CIDR_PEER, SERVER, tcp(4004, CIDR_PORT, SYN | RST));
    figures.cidr_allowed = bench.repeated(PROG_TO_ENDPOINT, &cidr, effort)?;
    // A later fragment of an allowed datagram: its first fragment (a SYN with more fragments) is
    // decided once; every later one takes its fate from the fragment table.
    let (protocol, l4) = ipv6_l4(tcp(4002, FIRST_PORT, SYN));
    let first = ipv4_frame(client, SERVER, protocol, &l4, Some(Fragment { id: 7, offset: 0, more: true }));
    bench.datapath.test_run(PROG_TO_ENDPOINT, &first, 1)?;
    let later = ipv4_frame(client, SERVER, protocol, &[0u8; 24], Some(Fragment { id: 7, offset: 3, more: false }));
    figures.later_fragment = bench.repeated(PROG_TO_ENDPOINT, &later, effort)?;
    bench.drain();
    let lost = bench.lost()?;
    ensure!(lost == 0, "the kernel lost {lost} records during the runs: the figures would be too low");
    Ok((figures, bench.policy_entries))
}

/// The floor: a program that only returns.
fn floor(effort: Effort) -> anyhow::Result<f64> {
    let mut bench = Bench::load(Scale { clients: 1, ports: 1, endpoints: 1 })?;
    let any = ipv4_packet(client_ip(0), SERVER, tcp(4000, FIRST_PORT, ACK));
    bench.repeated(PROG_FLOOR, &any, effort)
}

/// Connections in the conntrack map when its walk and collection are timed.
pub const CONNTRACK_ENTRIES: usize = 100_000;
/// Source ports per client in that fill (each client's connections differ by source port).
const PORTS_PER_CLIENT: usize = 50_000;

/// The agent's side of conntrack at a busy node, in ms: a walk of `entries` connections (what `status`
/// and the collector read) and the collection of as many expired ones (walk, then each taken out), medians
/// of `effort.runs`. The map is filled by the programs themselves, one allowed SYN per connection.
fn conntrack(effort: Effort, entries: usize) -> anyhow::Result<(f64, f64)> {
    let clients = entries.div_ceil(PORTS_PER_CLIENT);
    let mut bench = Bench::load(Scale { clients, ports: 1, endpoints: 1 })?;
    let (mut walks, mut collections) = (Vec::new(), Vec::new());
    for _ in 0..effort.runs {
        for i in 0..entries {
            let sport = u16::try_from(1 + i % PORTS_PER_CLIENT).expect("fewer ports per client than u16 holds");
            let syn = ipv4_packet(client_ip(i / PORTS_PER_CLIENT), SERVER, tcp(sport, FIRST_PORT, SYN));
            bench.datapath.test_run(PROG_TO_ENDPOINT, &syn, 1)?;
            if i % 10_000 == 0 {
                bench.drain();
            }
        }
        bench.drain();
        let started = std::time::Instant::now();
        let fill = bench.datapath.conntrack_fill()?;
        walks.push(started.elapsed().as_secs_f64() * 1e3);
        ensure!(fill.entries == entries as u64, "{} conntrack entries, not {entries}", fill.entries);
        // An hour from now every one of them (unanswered SYNs) has expired.
        let later = datapath::monotonic_now_ns() + 3_600_000_000_000;
        let started = std::time::Instant::now();
        let (deleted, left) = bench.datapath.conntrack_gc(later)?;
        collections.push(started.elapsed().as_secs_f64() * 1e3);
        ensure!((deleted, left) == (entries as u64, 0), "collected {deleted}, left {left}, of {entries}");
    }
    Ok((median(walks), median(collections)))
}

/// Runs the whole datapath section into `section`.
pub fn run(section: &mut Section, effort: Effort, scales: &[Scale]) -> anyhow::Result<()> {
    let floor = floor(effort)?;
    let method = format!("BPF_PROG_TEST_RUN, median of {} runs of {} repeats", effort.runs, effort.repeat);
    let once = format!("{method}; SYN+RST, so that every repeat opens (and closes) a new connection");
    section.push(Figure::new("floor: a program that only returns", floor, "ns/packet").note(method.clone()));
    let mut flat: BTreeMap<usize, Vec<(usize, ScaleFigures)>> = BTreeMap::new();
    for &scale in scales {
        let (f, entries) = measure(scale, effort)?;
        let at = format!("{entries} entries, {} endpoints", scale.endpoints);
        let est = Target::at_most(ESTABLISHED_TARGET_NS);
        let new = Target::at_most(NEW_CONNECTION_TARGET_NS);
        for (family, name) in [(0, "IPv4"), (1, "IPv6")] {
            section.push(
                Figure::new(format!("established, {name}, {at}"), f.established[family], "ns/packet")
                    .target(est)
                    .note(method.clone()),
            );
            section.push(
                Figure::new(format!("new allowed + verdict record, {name}, {at}"), f.new_allowed[family], "ns/packet")
                    .target(new)
                    .note(once.clone()),
            );
            section.push(
                Figure::new(format!("new denied + verdict record, {name}, {at}"), f.new_denied[family], "ns/packet")
                    .target(new)
                    .note(method.clone()),
            );
        }
        section.push(
            Figure::new(format!("new allowed from a CIDR peer, IPv4, {at}"), f.cidr_allowed, "ns/packet")
                .target(new)
                .note(once.clone()),
        );
        section.push(
            Figure::new(format!("later fragment, IPv4, {at}"), f.later_fragment, "ns/packet").note(method.clone()),
        );
        flat.entry(scale.endpoints).or_default().push((entries, f));
    }
    let entries = if effort.repeat < Effort::FULL.repeat { CONNTRACK_ENTRIES / 10 } else { CONNTRACK_ENTRIES };
    let (walk, collection) = conntrack(effort, entries)?;
    let per_entry =
        |ms: f64| format!("{:.2} µs per entry; batched reads (BPF_MAP_LOOKUP_BATCH)", ms * 1e3 / entries as f64);
    section.push(
        Figure::new(format!("agent: conntrack walk of {entries} entries (status, the collector's read)"), walk, "ms")
            .note(per_entry(walk)),
    );
    section.push(
        Figure::new(format!("agent: conntrack collection of {entries} expired entries"), collection, "ms")
            .note(per_entry(collection) + ", then each taken out (BPF_MAP_LOOKUP_AND_DELETE_ELEM)"),
    );
    for (endpoints, rows) in flat {
        let (Some((few, first)), Some((many, last))) = (rows.first(), rows.last()) else { continue };
        if few == many {
            continue;
        }
        for (what, a, b) in [
            ("established", first.established[0], last.established[0]),
            ("new denied", first.new_denied[0], last.new_denied[0]),
            ("new allowed", first.new_allowed[0], last.new_allowed[0]),
        ] {
            section.push(
                Figure::new(format!("{what}, {many} / {few} entries, {endpoints} endpoints"), b / a, "ratio")
                    .target(Target::at_most(FLAT_TARGET_RATIO))
                    .note("flat: the cost must not grow with the number of policy entries"),
            );
        }
    }
    Ok(())
}
