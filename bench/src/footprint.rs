//! Section "footprint": what the agent costs the node.
//!
//! - The real `flowgate-agent` process, as it runs by default (its verdict log written, its metrics served),
//!   on a real lab of `endpoints` pods (network namespaces and veths):
//!   start-up (spawn to its socket answering, every endpoint attached), resident memory and CPU idle,
//!   kernel map memory (the `memlock` of every map fd in `/proc/<pid>/fdinfo`, reported apart), and
//!   resident memory again once `policies` policies are in effect; then start-up again with
//!   `--attach-mode tcx`, and with `--attach-mode tcx --expedited-attach` (the agent stopped, the
//!   policies removed, the same lab). Last, the agent once more with the policies, its maps pinned and
//!   every packet traced, fed 100k records/s by a copy of its programs that this process runs
//!   (BPF_PROG_TEST_RUN) on the agent's own pinned maps, one library client reading: the real agent's
//!   resident memory and CPU at that rate.
//! - The agent's event path at 100k events/s (paced, one library client), in this process: CPU of the
//!   agent's threads only (the producer's BPF_PROG_TEST_RUN time is the pods' cost, not the agent's).
//! - The monitor's TUI, `flowgate monitor` under a pseudo-terminal (`script`), fed 100k events/s over
//!   the socket: its process's CPU.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use flowgate_proto::{
    client::Client,
    message::{Request, Response},
};
use flowgate_tests::TempDir;

use flowgate_agent::{
    craft::{Transport, ipv4_packet},
    datapath::{Datapath, DatapathOptions},
};
use flowgate_common::{counters::aggregation, names::PROG_FROM_ENDPOINT};
use flowgate_lab::LabState;

use crate::{
    events_agent::{AGENT_THREAD, AgentOptions, BenchAgent, EventsBuffer, pace},
    events_clients::{ClientKind, ClientProcess, sibling_binary, wait_subscribed},
    report::{Figure, Section, Target},
};

pub const TARGET_RSS_MIB: f64 = 64.0;
pub const TARGET_TUI_CORES: f64 = 0.5;
pub const TARGET_STARTUP_S: f64 = 5.0;

const LAB: &str = "fgbench-footprint";

/// CPU seconds (user + system) of `/proc/<pid>` or `/proc/<pid>/task/<tid>` from its `stat`.
fn cpu_seconds(stat_path: &Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(stat_path).with_context(|| format!("reading {}", stat_path.display()))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("no ) in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Resident memory of `pid` in MiB (VmRSS).
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmRSS")
}

/// Peak resident memory of `pid` in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmHWM")
}

/// A memory field (`VmRSS`, `VmHWM`, given in kB) of `/proc/<pid>/status`, in MiB.
fn status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))?;
    Ok(kb / 1024.0)
}

/// Kernel memory of the BPF maps `pid` holds open, in MiB: the `memlock` the kernel charges for each
/// map fd (`/proc/<pid>/fdinfo`), each map counted once (by map id).
pub fn map_memory_mib(pid: u32) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut seen = std::collections::BTreeSet::new();
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else { continue };
        if !text.contains("map_type:") {
            continue;
        }
        let field =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:"))
            && seen.insert(id)
        {
            bytes += memlock;
        }
    }
    Ok(bytes as f64 / f64::from(1u32 << 20))
}

/// The part of `pid`'s resident memory that is BPF map memory mapped into it, in MiB: the `Rss` of its
/// `anon_inode:bpf-map` mappings in `/proc/<pid>/smaps`. That is the events ring buffer, whose data pages
/// the reader maps twice (a record that wraps reads on contiguously), so they count twice in VmRSS and
/// once more in the kernel map memory.
pub fn mapped_map_memory_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut in_map = false;
    let mut kb = 0u64;
    for line in text.lines() {
        // A mapping's header line starts with its address range and ends with what it maps.
        if line.split_whitespace().next().is_some_and(|first| first.contains('-') && !first.ends_with(':')) {
            in_map = line.ends_with("anon_inode:bpf-map");
        } else if in_map && let Some(value) = line.strip_prefix("Rss:") {
            kb += value.trim().trim_end_matches("kB").trim().parse::<u64>().context("Rss of a mapping")?;
        }
    }
    Ok(kb as f64 / 1024.0)
}

/// CPU seconds of this process's threads whose name starts with [`AGENT_THREAD`].
fn agent_threads_cpu() -> anyhow::Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let task = entry?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.starts_with(AGENT_THREAD) {
            total += cpu_seconds(&task.join("stat")).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// Brings the footprint lab down on drop (also when the run fails half-way).
struct LabGuard;

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = flowgate_lab::lab::down(LAB) {
            eprintln!("bringing lab {LAB} down: {e}");
        }
    }
}

/// The agent process, stopped (SIGTERM, then SIGKILL) on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this process has not reaped yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn topology(endpoints: usize) -> String {
    let mut t = format!("name: {LAB}\ncidr: 10.210.0.0/20\nnamespaces:\n  - name: fp\npods:\n");
    for i in 0..endpoints {
        let _ = writeln!(t, "  - {{namespace: fp, name: pod-{i}, labels: {{app: pod-{i}}}}}");
    }
    t
}

/// `policies` policies in one file: policy i selects pod i mod `endpoints` and admits pod i+1 on its
/// own port.
fn policies_yaml(endpoints: usize, policies: usize) -> String {
    let mut y = String::new();
    for i in 0..policies {
        let _ = write!(
            y,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p-{i}, namespace: fp}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: pod-{}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: pod-{}}}}}}}]\n    ports: [{{port: {}}}]\n---\n",
            i % endpoints,
            (i + 1) % endpoints,
            1000 + i % 20_000
        );
    }
    y
}

async fn status(socket: &Path) -> anyhow::Result<flowgate_proto::message::Status> {
    let mut client = Client::connect(socket, "flowgate-bench-footprint").await?;
    match client.request(Request::Status).await? {
        Response::Status(status) => Ok(*status),
        other => bail!("expected a status, got {other:?}"),
    }
}

/// Spawns the agent on the footprint lab (with `extra` arguments) and waits until its socket serves all
/// `endpoints` endpoints (attached); returns it and how long that took.
fn start_agent(
    runtime: &tokio::runtime::Runtime,
    dir: &TempDir,
    policy_dir: &Path,
    endpoints: usize,
    pins: Option<&Path>,
    extra: &[&str],
) -> anyhow::Result<(AgentProcess, Duration)> {
    let socket = dir.0.join("agent.sock");
    let log_path = dir.0.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut command = Command::new(sibling_binary("flowgate-agent")?);
    match pins {
        Some(pins) => command.arg("--bpf-dir").arg(pins),
        None => command.arg("--no-pin"),
    };
    // As the agent runs by default: two subscribers that hold memory and count every flow.
    let child = command
        .args(["--lab", LAB])
        .args(crate::agent_default_outputs(&dir.0))
        .arg("--socket")
        .arg(&socket)
        .arg("--policies")
        .arg(policy_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting flowgate-agent")?;
    let agent = AgentProcess(child);
    loop {
        if let Ok(s) = runtime.block_on(status(&socket))
            && s.endpoints == endpoints
        {
            return Ok((agent, started.elapsed()));
        }
        if started.elapsed() > Duration::from_secs(300) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the agent did not serve {endpoints} endpoints within 300 s; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Figures of the real agent on a lab of `endpoints` pods, then with `policies` policies.
pub struct AgentFootprint {
    pub startup: Duration,
    pub rss_idle_mib: f64,
    pub cpu_idle_cores: f64,
    pub maps_mib: f64,
    pub rss_with_policies_mib: f64,
    /// Of `rss_with_policies_mib`: BPF map memory mapped into the agent ([`mapped_map_memory_mib`]).
    pub rss_mapped_maps_mib: f64,
    pub maps_with_policies_mib: f64,
    pub policy_load: Duration,
    /// Start-up again, with `--attach-mode tcx`.
    pub startup_tcx: Duration,
    /// Start-up again, with `--attach-mode tcx --expedited-attach`.
    pub startup_expedited: Duration,
    /// The agent with the policies, fed records.
    pub under_events: AgentUnderEvents,
}

pub fn agent_process(endpoints: usize, policies: usize, events_secs: u64) -> anyhow::Result<AgentFootprint> {
    let dir = TempDir::new("footprint");
    let topology_path = dir.0.join("topology.yaml");
    std::fs::write(&topology_path, topology(endpoints))?;
    let policy_dir = dir.0.join("policies");
    std::fs::create_dir_all(&policy_dir)?;
    let topo = flowgate_lab::topology::Topology::load(&topology_path)?;
    // A lab left by an interrupted run of this benchmark would make `up` refuse.
    let _ = flowgate_lab::lab::down(LAB);
    let lab_started = Instant::now();
    let lab =
        flowgate_lab::lab::up(&topo, LAB, Some(&topology_path)).with_context(|| format!("bringing up lab {LAB}"))?;
    let _lab = LabGuard;
    println!("  (lab of {endpoints} pods up in {:.1} s)", lab_started.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (agent, startup) = start_agent(&runtime, &dir, &policy_dir, endpoints, None, &[])?;
    let pid = agent.0.id();
    std::thread::sleep(Duration::from_secs(1));
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let cpu0 = cpu_seconds(&stat)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let cpu_idle_cores = (cpu_seconds(&stat)? - cpu0) / t0.elapsed().as_secs_f64();
    let rss_idle_mib = rss_mib(pid)?;
    let maps_mib = map_memory_mib(pid)?;
    let policy_load = load_policies(&runtime, &dir, &policy_dir, endpoints, policies)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_with_policies_mib = rss_mib(pid)?;
    let rss_mapped_maps_mib = mapped_map_memory_mib(pid)?;
    let maps_with_policies_mib = map_memory_mib(pid)?;
    // Stopped (it pins nothing, so its programs are detached), then started again as the first time (no
    // policy) attaching TCX links, and once more with the grace periods of those attaches expedited.
    drop(agent);
    std::fs::remove_file(policy_dir.join("policies.yaml"))?;
    let (again, startup_tcx) = start_agent(&runtime, &dir, &policy_dir, endpoints, None, &["--attach-mode", "tcx"])?;
    drop(again);
    let tcx_expedited = ["--attach-mode", "tcx", "--expedited-attach"];
    let (again, startup_expedited) = start_agent(&runtime, &dir, &policy_dir, endpoints, None, &tcx_expedited)?;
    drop(again);
    let under_events = agent_under_events(&runtime, &dir, &policy_dir, &lab, (endpoints, policies), events_secs)?;
    Ok(AgentFootprint {
        startup,
        rss_idle_mib,
        cpu_idle_cores,
        maps_mib,
        rss_with_policies_mib,
        rss_mapped_maps_mib,
        maps_with_policies_mib,
        policy_load,
        startup_tcx,
        startup_expedited,
        under_events,
    })
}

/// Writes `policies` policies into the policy directory (renamed into place) and waits until the agent
/// behind `dir`'s socket has them all in effect; returns how long that took.
fn load_policies(
    runtime: &tokio::runtime::Runtime,
    dir: &TempDir,
    policy_dir: &Path,
    endpoints: usize,
    policies: usize,
) -> anyhow::Result<Duration> {
    let socket = dir.0.join("agent.sock");
    let tmp = dir.0.join("policies.yaml.tmp");
    std::fs::write(&tmp, policies_yaml(endpoints, policies))?;
    let loading = Instant::now();
    std::fs::rename(&tmp, policy_dir.join("policies.yaml"))?;
    loop {
        let s = runtime.block_on(status(&socket))?;
        if s.policy.loaded.len() == policies && s.policy.errors.is_empty() {
            return Ok(loading.elapsed());
        }
        if !s.policy.errors.is_empty() {
            bail!("the agent refused the {policies} policies: {:?}", s.policy.errors);
        }
        if loading.elapsed() > Duration::from_secs(120) {
            bail!("{policies} policies not in effect within 120 s ({} loaded)", s.policy.loaded.len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records a second the real agent process is fed in [`agent_under_events`].
pub const EVENTS_RATE: u64 = 100_000;
/// The interface BPF_PROG_TEST_RUN gives its packets: loopback.
const TEST_RUN_IFINDEX: u32 = 1;

/// The real agent process at [`EVENTS_RATE`] records a second.
pub struct AgentUnderEvents {
    /// Resident memory before the records (policies in effect, the client connected), and after them.
    pub rss_before_mib: f64,
    pub rss_mib: f64,
    /// Of `rss_mib`: BPF map memory mapped into the agent ([`mapped_map_memory_mib`]).
    pub rss_mapped_maps_mib: f64,
    /// Peak resident memory of the process (VmHWM) when the records were done.
    pub peak_mib: f64,
    /// CPU cores of the whole agent process while the records came.
    pub cores: f64,
    pub produced: u64,
    pub delivered: u64,
    pub lost: u64,
}

/// A directory on bpffs of this run's own, removed (with every pin in it) on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the agent with the policies, its maps pinned and every packet traced (`--monitor-aggregation
/// none`), connects one library client, and feeds it [`EVENTS_RATE`] records a second for `secs`: this
/// process loads
/// the agent's programs on the agent's pinned maps (the same ring buffer, endpoints and conntrack maps),
/// registers loopback as pod 0's interface in the endpoints map, and runs pod 0's egress program on a SYN
/// to pod 1 with BPF_PROG_TEST_RUN, paced. The agent reads, decodes, enriches and sends each record as
/// it would a pod's. Measures the agent process's resident memory and CPU.
fn agent_under_events(
    runtime: &tokio::runtime::Runtime,
    dir: &TempDir,
    policy_dir: &Path,
    lab: &LabState,
    (endpoints, policies): (usize, usize),
    secs: u64,
) -> anyhow::Result<AgentUnderEvents> {
    let pins = PinDir(PathBuf::from(format!("/sys/fs/bpf/fgbench-footprint-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&pins.0);
    let (agent, _) =
        start_agent(runtime, dir, policy_dir, endpoints, Some(&pins.0), &["--monitor-aggregation", "none"])?;
    load_policies(runtime, dir, policy_dir, endpoints, policies)?;
    let pid = agent.0.id();
    let (from, to) = (&lab.pods[0], &lab.pods[1]);
    let mut producer = Datapath::load(DatapathOptions {
        pin_dir: Some(pins.0.clone()),
        aggregation: aggregation::NONE,
        ..DatapathOptions::default()
    })
    .context("loading the agent's programs on its pinned maps")?;
    let info = producer.endpoint(from.host_ifindex).context("reading pod 0's endpoint entry")?;
    if info.endpoint_id == 0 {
        bail!("the agent has no endpoint on {} (ifindex {})", from.host_ifname, from.host_ifindex);
    }
    producer.set_endpoint(TEST_RUN_IFINDEX, info).context("registering loopback as pod 0's interface")?;
    let packet = ipv4_packet(from.ip, to.ip, Transport::Tcp { sport: 40000, dport: 80, flags: 0x02 });
    let client = ClientProcess::start(ClientKind::Library, &dir.0.join("agent.sock"), false)?;
    // The client's subscription is in place once a first record reaches it.
    let subscribed = Instant::now();
    while client.flows() == 0 {
        producer.test_run(PROG_FROM_ENDPOINT, &packet, 1).context("BPF_PROG_TEST_RUN")?;
        if subscribed.elapsed() > Duration::from_secs(10) {
            bail!("the agent's client received nothing within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = client.flows() + client.lost();
    std::thread::sleep(Duration::from_millis(500));
    let rss_before_mib = rss_mib(pid)?;
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let (cpu0, t0) = (cpu_seconds(&stat)?, Instant::now());
    let produced = pace(EVENTS_RATE, Duration::from_secs(secs), 10, |n| {
        producer.test_run(PROG_FROM_ENDPOINT, &packet, n).map(drop).context("BPF_PROG_TEST_RUN")
    })?;
    let cores = (cpu_seconds(&stat)? - cpu0) / t0.elapsed().as_secs_f64();
    let (rss, rss_mapped_maps_mib, peak_mib) = (rss_mib(pid)?, mapped_map_memory_mib(pid)?, peak_rss_mib(pid)?);
    let drained = Instant::now();
    while client.flows() + client.lost() - before < produced && drained.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (delivered, lost) = (client.flows(), client.lost());
    client.finish()?;
    drop(producer);
    drop(agent);
    Ok(AgentUnderEvents {
        rss_before_mib,
        rss_mib: rss,
        rss_mapped_maps_mib,
        peak_mib,
        cores,
        produced,
        delivered: delivered.saturating_sub(before),
        lost,
    })
}

/// The in-process agent's threads (its reader as `options` say): CPU cores used idle and at `rate` events/s
/// (one library client), and the process's resident memory at that rate.
pub fn event_path(rate: u64, secs: u64, options: &AgentOptions) -> anyhow::Result<(f64, f64, f64)> {
    let agent = BenchAgent::start(EventsBuffer::RingBuffer, options)?;
    let base = agent.state().hub().subscribers();
    let client = ClientProcess::start(ClientKind::Library, agent.socket(), false)?;
    wait_subscribed(agent.state().hub(), base + 1)?;
    let (c0, t0) = (agent_threads_cpu()?, Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let idle = (agent_threads_cpu()? - c0) / t0.elapsed().as_secs_f64();
    let (c1, t1) = (agent_threads_cpu()?, Instant::now());
    agent.produce_paced(rate, Duration::from_secs(secs), u32::try_from(rate / 10_000)?.max(1))?;
    let loaded = (agent_threads_cpu()? - c1) / t1.elapsed().as_secs_f64();
    let rss = rss_mib(std::process::id())?;
    client.finish()?;
    Ok((idle, loaded, rss))
}

/// `flowgate monitor` (TUI) under a pseudo-terminal of 200x50, fed `rate` events/s for `secs`: the
/// cores its process used, the events the agent sent it, and the KiB it drew on its terminal.
pub fn tui(rate: u64, secs: u64) -> anyhow::Result<(f64, u64, u64)> {
    let agent = BenchAgent::start(EventsBuffer::RingBuffer, &AgentOptions::default())?;
    let base = agent.state().hub().subscribers();
    let flowgate = sibling_binary("flowgate")?;
    let dir = TempDir::new("tui");
    let typescript = dir.0.join("typescript");
    let mut script = Command::new("script")
        .args(["-q", "-f", "-e", "-c"])
        .arg(format!("stty rows 50 cols 200; exec {} monitor", flowgate.display()))
        .arg(&typescript)
        .env(flowgate_proto::client::SOCKET_ENV, agent.socket())
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting `script` (util-linux) for the TUI")?;
    let stop_script = |script: &mut Child| {
        // `q` quits the TUI; the kill is for a TUI that did not start.
        if let Some(stdin) = script.stdin.as_mut() {
            let _ = std::io::Write::write_all(stdin, b"q");
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = script.kill();
        let _ = script.wait();
    };
    // The TUI asks the terminal where its cursor is (`ESC [ 6 n`) while it sets up; `script` only
    // relays, so the benchmark answers as a terminal would (row 1, column 1), until the TUI subscribed.
    let answer_cursor_queries = |script: &mut Child| {
        if let Some(stdin) = script.stdin.as_mut() {
            let _ = std::io::Write::write_all(stdin, b"\x1b[1;1R");
            let _ = std::io::Write::flush(stdin);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.state().hub().subscribers() < base + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        answer_cursor_queries(&mut script);
    }
    let subscribed = wait_subscribed(agent.state().hub(), base + 1);
    if let Err(e) = subscribed {
        stop_script(&mut script);
        return Err(e.context("the TUI did not subscribe"));
    }
    // `script` runs the command in a child, which the shell turned into `flowgate` with exec.
    let script_pid = script.id();
    let children =
        std::fs::read_to_string(format!("/proc/{script_pid}/task/{script_pid}/children")).unwrap_or_default();
    let monitor_pid = children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "flowgate"));
    let Some(pid) = monitor_pid else {
        stop_script(&mut script);
        bail!("no `flowgate` process under script (pid {script_pid}); its children: {children:?}");
    };
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let c0 = match cpu_seconds(&stat) {
        Ok(c) => c,
        Err(e) => {
            stop_script(&mut script);
            let screen = std::fs::read(&typescript).unwrap_or_default();
            let tail = String::from_utf8_lossy(&screen[screen.len().saturating_sub(2000)..]).into_owned();
            return Err(e.context(format!("the TUI (pid {pid}) is gone; the end of its terminal:\n{tail}")));
        }
    };
    let t0 = Instant::now();
    let produced = agent.produce_paced(rate, Duration::from_secs(secs), u32::try_from(rate / 10_000)?.max(1));
    let c1 = cpu_seconds(&stat);
    let cores = match c1 {
        Ok(c1) => (c1 - c0) / t0.elapsed().as_secs_f64(),
        Err(e) => {
            stop_script(&mut script);
            let screen = std::fs::read(&typescript).unwrap_or_default();
            let tail = String::from_utf8_lossy(&screen[screen.len().saturating_sub(3000)..]).into_owned();
            return Err(e.context(format!(
                "the TUI (pid {pid}) ended while fed {rate} events/s; the end of its terminal:\n{tail}"
            )));
        }
    };
    let sent = agent.state().status().clients.iter().find(|c| c.pid == pid).map_or(0, |c| c.events_sent);
    let drawn = std::fs::metadata(&typescript).map_or(0, |m| m.len() / 1024);
    stop_script(&mut script);
    produced?;
    Ok((cores, sent, drawn))
}

pub fn measure(quick: bool) -> anyhow::Result<Section> {
    let mut section = Section::new("footprint");
    let (endpoints, policies) = if quick { (20, 100) } else { (1_000, 10_000) };
    let events_secs = if quick { 1 } else { 5 };
    let a = agent_process(endpoints, policies, events_secs)?;
    let lab = format!("flowgate-agent on a lab of {endpoints} pods");
    let mut startup =
        Figure::new(format!("{lab}: start-up (spawn to all endpoints served)"), a.startup.as_secs_f64(), "s").note(
            format!(
                "{:.2} ms per endpoint; tc filters (--attach-mode tc, the default)",
                a.startup.as_secs_f64() * 1e3 / endpoints as f64
            ),
        );
    if endpoints == 1_000 {
        startup = startup.target(Target::at_most(TARGET_STARTUP_S));
    }
    section.push(startup);
    let mut tcx = Figure::new(format!("{lab}: start-up with --attach-mode tcx"), a.startup_tcx.as_secs_f64(), "s")
        .note(format!(
            "{:.1} ms per endpoint: each TCX attach waits for an RCU grace period under the RTNL lock",
            a.startup_tcx.as_secs_f64() * 1e3 / endpoints as f64
        ));
    if endpoints == 1_000 {
        tcx = tcx.target(Target::at_most(TARGET_STARTUP_S));
    }
    section.push(tcx);
    let mut expedited = Figure::new(
        format!("{lab}: start-up with --attach-mode tcx --expedited-attach"),
        a.startup_expedited.as_secs_f64(),
        "s",
    )
    .note("the same lab and agent, RCU grace periods expedited (node-wide) while it attaches");
    if endpoints == 1_000 {
        expedited = expedited.target(Target::at_most(TARGET_STARTUP_S));
    }
    section.push(expedited);
    section.push(Figure::new(format!("{lab}: resident memory, idle, no policy"), a.rss_idle_mib, "MiB"));
    section.push(Figure::new(format!("{lab}: CPU idle"), a.cpu_idle_cores, "cores").note("over 3 s"));
    section.push(Figure::new(format!("{lab}: kernel map memory (memlock), no policy"), a.maps_mib, "MiB"));
    let rss = Figure::new(format!("{lab}: resident memory with {policies} policies"), a.rss_with_policies_mib, "MiB")
        .note(format!(
            "kernel maps apart: {:.1} MiB, of which {:.1} MiB mapped into the agent count in this figure too \
                 (the events ring buffer); the set took {:.2} s to load",
            a.maps_with_policies_mib,
            a.rss_mapped_maps_mib,
            a.policy_load.as_secs_f64()
        ));
    section.push(rss);
    // The target counts the agent's own memory, maps reported apart: the ring buffer's pages mapped into
    // the agent are kernel map memory (in the figure below), not the agent's.
    let mut own = Figure::new(
        format!("{lab}: resident memory with {policies} policies, kernel maps apart"),
        a.rss_with_policies_mib - a.rss_mapped_maps_mib,
        "MiB",
    )
    .note("the figure above less the BPF map memory mapped into the agent (the events ring buffer's pages)");
    if endpoints == 1_000 && policies == 10_000 {
        own = own.target(Target::at_most(TARGET_RSS_MIB));
    }
    section.push(own);
    section.push(Figure::new(
        format!("{lab}: kernel map memory with {policies} policies"),
        a.maps_with_policies_mib,
        "MiB",
    ));
    let e = &a.under_events;
    let fed = format!(
        "{policies} policies in effect, every packet traced (--monitor-aggregation none), one library client; \
         {} records produced in {events_secs} s by the agent's programs run on its pinned maps \
         (BPF_PROG_TEST_RUN, paced), {} delivered to the client, {} reported lost",
        e.produced, e.delivered, e.lost
    );
    section.push(Figure::new(format!("{lab}: resident memory at 100k events/s"), e.rss_mib, "MiB").note(format!(
        "{fed}; {:.1} MiB before the records, peak {:.1} MiB; kernel maps apart (the ring buffer's pages \
             mapped into the agent): {:.1} MiB",
        e.rss_before_mib,
        e.peak_mib,
        e.rss_mib - e.rss_mapped_maps_mib
    )));
    section.push(
        Figure::new(format!("{lab}: CPU at 100k events/s"), e.cores, "cores")
            .note(format!("the whole agent process (reader, decoder, enricher, hub, socket): {fed}")),
    );

    let secs = if quick { 1 } else { 5 };
    let (idle, loaded, rss) = event_path(100_000, secs, &AgentOptions::default())?;
    section.push(Figure::new("agent event path (reader, hub, socket) threads: CPU idle", idle, "cores"));
    section.push(
        Figure::new("agent event path threads: CPU at 100k events/s", loaded, "cores")
            .note(format!("paced for {secs} s, one library client; the process's resident memory {rss:.1} MiB")),
    );
    // The reader that polls streams with the programs' wake-ups held off (`--events-poll-streams`, not the
    // default): what it costs the agent at the same rate.
    let polled = AgentOptions { poll_streams: true, ..AgentOptions::default() };
    let (idle, loaded, _) = event_path(100_000, secs, &polled)?;
    section.push(
        Figure::new(
            "agent event path threads, polling reader (--events-poll-streams): CPU at 100k events/s",
            loaded,
            "cores",
        )
        .note(format!("paced for {secs} s, one library client, as the row above; idle {idle:.3} cores")),
    );
    // 5 s even in a quick run: a TUI that cannot set its terminal up gives up after about 2 s.
    let secs = 5;
    let (cores, sent, drawn) = tui(100_000, secs)?;
    section.push(
        Figure::new("flowgate monitor (TUI, 200x50 pty) fed 100k events/s: CPU", cores, "cores")
            .target(Target::at_most(TARGET_TUI_CORES))
            .note(format!("for {secs} s; the agent sent it {sent} events; it drew {drawn} KiB on its terminal")),
    );
    Ok(section)
}
