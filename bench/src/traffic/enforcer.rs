//! The enforcers side by side, each put in place on the lab for one measurement and removed after it, so the
//! next one starts from a clean node: nothing (the baseline), the eBPF hook's floor (a program that only
//! returns, as tc filters on every pod interface: what any tc enforcer pays before doing anything),
//! flowgate's agent as it runs by default (tc filters, its verdict log and metrics on; and with TCX links), iptables rules (with and without the conntrack
//! shortcut), iptables with ipset, and kube-network-policies ([`super::knp`]). Rules go into the lab's node
//! namespace only (the machine's own namespace is never touched); removing them flushes that namespace's
//! nftables ruleset (the iptables-nft backend's tables) and destroys its sets. The clsact qdiscs tc
//! filters hang on are deleted too: an agent leaves its qdisc when it exits (as Cilium's does), and a qdisc
//! left on a pod interface keeps the kernel's tc hook running for every packet of the next measurement.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    maps::{Map, MapData, RingBuf},
    programs::TcAttachType,
};
use flowgate_agent::{
    datapath::{Datapath, DatapathOptions},
    reader, tc_filter,
};
use flowgate_common::names::{MAP_EVENTS_RINGBUF, PROG_FLOOR};
use flowgate_events::sink::RecordSink;
use flowgate_lab::{LabState, netns};
use flowgate_tests::{
    TempDir,
    agent::{AgentGuard, SocketDir, agent_bin},
};

use super::{knp::KubeNetworkPolicies, rules::RuleSet};
use crate::events_agent::DRAIN_INTERVAL;

/// Who enforces (or nobody).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Enforcer {
    Baseline,
    /// A program that only returns, as tc filters on both hooks of every pod interface (flowgate's
    /// attach): the floor of any tc enforcer, and of flowgate's own cost the part that is not its work.
    HookFloor,
    /// The agent as it runs by default: tc filters.
    Flowgate,
    /// The agent attaching TCX links (`--attach-mode tcx`).
    FlowgateTcx,
    /// A variant, to locate flowgate's cost (not in the default set): the agent with its polling reader
    /// (`--events-poll-streams`).
    FlowgatePolled,
    /// A variant: the agent without its verdict log and metrics (half its CPU on new connections).
    FlowgateQuiet,
    /// A variant: the agent with the programs' trace records off (`--bpf-events-trace-enabled=false`): a
    /// connection's records are its decisions' only.
    FlowgateNoTraces,
    /// A variant: the agent stopped (SIGSTOP) once enforcing, and its ring buffer filled by
    /// [`PREFILL`] of new connections: the programs enforce as ever, but every record they try to write
    /// is refused in the kernel (counted lost), and nothing in user space runs. flowgate's cost without
    /// its records being written or read.
    FlowgateStopped,
    /// A variant: the agent stopped once enforcing, and its ring buffer drained by a bare reader in this
    /// process ([`BareReader`]: woken by the programs as the agent's reader is, it reads each record and
    /// does nothing with it). Beside [`Self::FlowgateStopped`], it tells the records' cost in the kernel
    /// and their reading from the agent's work on them (decoding, enriching, the verdict log, metrics).
    FlowgateBareReader,
    /// A variant: the agent with the arguments given to [`set_custom_args`] (`--custom-agent-args`) added to
    /// its own, or another build's agent ([`set_custom_binary`], `--custom-agent-bin`), for whatever else is
    /// to be measured in the same rounds.
    FlowgateCustom,
    /// One iptables rule per peer and protocol, every packet walks them.
    Iptables,
    /// The same, behind `-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`.
    IptablesConntrack,
    /// iptables with ipset, as kube-router and Calico's iptables mode write it (conntrack shortcut first).
    Ipset,
    KubeNetworkPolicies,
}

impl Enforcer {
    pub const ALL: [Self; 14] = [
        Self::Baseline,
        Self::HookFloor,
        Self::Flowgate,
        Self::FlowgateTcx,
        Self::FlowgatePolled,
        Self::FlowgateQuiet,
        Self::FlowgateNoTraces,
        Self::FlowgateStopped,
        Self::FlowgateBareReader,
        Self::FlowgateCustom,
        Self::Iptables,
        Self::IptablesConntrack,
        Self::Ipset,
        Self::KubeNetworkPolicies,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline (no policy)",
            Self::HookFloor => "tc hook floor (a program that only returns)",
            Self::Flowgate => "flowgate",
            Self::FlowgateTcx => "flowgate, TCX links",
            Self::FlowgatePolled => "flowgate, polling reader",
            Self::FlowgateQuiet => "flowgate, no verdict log or metrics",
            Self::FlowgateNoTraces => "flowgate, trace records off",
            Self::FlowgateStopped => "flowgate, agent stopped",
            Self::FlowgateBareReader => "flowgate, agent stopped, a bare reader draining",
            Self::FlowgateCustom => "flowgate, custom arguments",
            Self::Iptables => "iptables",
            Self::IptablesConntrack => "iptables + conntrack shortcut",
            Self::Ipset => "iptables + ipset",
            Self::KubeNetworkPolicies => "kube-network-policies",
        }
    }

    /// The name on the command line (`--enforcers`).
    pub fn key(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::HookFloor => "hook-floor",
            Self::Flowgate => "flowgate",
            Self::FlowgateTcx => "flowgate-tcx",
            Self::FlowgatePolled => "flowgate-polled",
            Self::FlowgateQuiet => "flowgate-quiet",
            Self::FlowgateNoTraces => "flowgate-no-traces",
            Self::FlowgateStopped => "flowgate-stopped",
            Self::FlowgateBareReader => "flowgate-bare-reader",
            Self::FlowgateCustom => "flowgate-custom",
            Self::Iptables => "iptables",
            Self::IptablesConntrack => "iptables-conntrack",
            Self::Ipset => "ipset",
            Self::KubeNetworkPolicies => "kube-network-policies",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.key() == key)
    }

    /// Whether this is flowgate's agent, as it runs by default or as one of the variants.
    pub fn is_flowgate(self) -> bool {
        self.agent_flags().is_some()
    }

    /// For flowgate's agent and its variants, the flags the variant adds to the agent's command line (the
    /// custom variant's come from [`set_custom_args`]); `None` for every other enforcer.
    fn agent_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Flowgate
            | Self::FlowgateQuiet
            | Self::FlowgateStopped
            | Self::FlowgateBareReader
            | Self::FlowgateCustom => Some(&[]),
            Self::FlowgateTcx => Some(&["--attach-mode", "tcx"]),
            Self::FlowgatePolled => Some(&["--events-poll-streams"]),
            Self::FlowgateNoTraces => Some(&["--bpf-events-trace-enabled=false"]),
            // Exhaustive, so a new enforcer is placed here on purpose.
            Self::Baseline
            | Self::HookFloor
            | Self::Iptables
            | Self::IptablesConntrack
            | Self::Ipset
            | Self::KubeNetworkPolicies => None,
        }
    }
}

/// The arguments [`Enforcer::FlowgateCustom`] adds to the agent's, set once from the command line.
static CUSTOM_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The agent binary [`Enforcer::FlowgateCustom`] runs in place of this build's, set once from the command
/// line (`--custom-agent-bin`): two builds side by side in the same interleaved rounds.
static CUSTOM_BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Sets the agent binary [`Enforcer::FlowgateCustom`] runs; only the first call counts.
pub fn set_custom_binary(binary: std::path::PathBuf) {
    let _ = CUSTOM_BINARY.set(binary);
}

/// Sets [`Enforcer::FlowgateCustom`]'s extra agent arguments (split at whitespace); only the first call counts.
pub fn set_custom_args(args: &str) {
    let _ = CUSTOM_ARGS.set(args.split_whitespace().map(str::to_owned).collect());
}

/// What [`Enforcer::FlowgateCustom`] changes, for its figures' note: its extra agent arguments and the
/// binary it runs, if another build's.
pub fn custom_note() -> String {
    let args = CUSTOM_ARGS.get().map(|a| a.join(" ")).unwrap_or_default();
    let mut note = if args.is_empty() { String::new() } else { format!("; the agent with `{args}` added") };
    if let Some(binary) = CUSTOM_BINARY.get() {
        note.push_str(&format!("; the agent binary {}", binary.display()));
    }
    note
}

/// How long [`Enforcer::FlowgateStopped`] makes new connections after stopping the agent, before the loads:
/// at the default aggregation a connection writes about 8 records (some 650 bytes), so the agent's 8 MiB ring
/// is full after some 13,000 connections, under 2 s of the load here.
pub const PREFILL: Duration = Duration::from_secs(3);

/// An enforcer in place; dropping it removes it.
pub enum Installed {
    Nothing,
    HookFloor {
        // Field order: the qdiscs (and the filters on them) go before the program.
        _qdiscs: Clsact,
        _datapath: Box<Datapath>,
    },
    Flowgate {
        // Field order: a stopped agent is resumed before it is asked to stop; the agent stops (deleting its
        // filters) before its qdiscs, socket directory, verdict log and policies go.
        stopped: Option<Box<Stopped>>,
        agent: AgentGuard,
        _qdiscs: Clsact,
        _sockets: SocketDir,
        _verdict_log: TempDir,
        _policies: PolicyDir,
    },
    Netfilter(NodeRules),
    KubeNetworkPolicies(Box<KubeNetworkPolicies>),
}

/// Puts `enforcer` in place for `rules` on `lab`. kube-network-policies is started apart
/// ([`KubeNetworkPolicies::start`]) and passed in here to be counted as installed.
pub fn install(enforcer: Enforcer, lab: &LabState, rules: &RuleSet) -> anyhow::Result<Installed> {
    match enforcer {
        Enforcer::Baseline => Ok(Installed::Nothing),
        Enforcer::HookFloor => {
            let qdiscs = Clsact::new(lab);
            let mut datapath = Datapath::load(DatapathOptions::default()).context("loading the programs")?;
            let floor = datapath.program(PROG_FLOOR)?;
            netns::in_netns(&lab.node_netns, || -> anyhow::Result<()> {
                for pod in &lab.pods {
                    let interface = pod.host_ifname.as_str();
                    tc_filter::add_clsact(interface).with_context(|| format!("a clsact qdisc on {interface}"))?;
                    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                        tc_filter::attach(floor, interface, hook)
                            .with_context(|| format!("the floor program on {interface} ({hook:?})"))?;
                    }
                }
                Ok(())
            })??;
            Ok(Installed::HookFloor { _qdiscs: qdiscs, _datapath: Box::new(datapath) })
        }
        e if e.is_flowgate() => {
            let policies = PolicyDir::new(&format!("{}-{}", lab.name, rules.size))?;
            let file = policies.0.join("bench.yaml");
            std::fs::write(&file, rules.network_policy()).with_context(|| format!("writing {}", file.display()))?;
            let sockets = SocketDir::new(&format!("bench-{}", lab.name));
            let socket = sockets.socket("agent");
            let dir = policies.0.to_str().context("policy directory path is not UTF-8")?.to_owned();
            // As the agent runs by default: its verdict log written and its metrics served (a counting
            // subscriber).
            let verdict_log = TempDir::new(&format!("bench-verdicts-{}-{}", lab.name, rules.size));
            let outputs = crate::agent_default_outputs(verdict_log.path());
            let mut args = vec!["--policies", dir.as_str(), "--no-pin"];
            let custom = if enforcer == Enforcer::FlowgateCustom { CUSTOM_ARGS.get() } else { None };
            if enforcer != Enforcer::FlowgateQuiet {
                // Each default output as a flag and its value; custom arguments that name the flag replace it.
                for pair in outputs.chunks(2) {
                    if !custom.is_some_and(|c| c.contains(&pair[0])) {
                        args.extend(pair.iter().map(String::as_str));
                    }
                }
            }
            args.extend(enforcer.agent_flags().unwrap_or_default());
            args.extend(custom.into_iter().flatten().map(String::as_str));
            let qdiscs = Clsact::new(lab);
            let binary = match CUSTOM_BINARY.get() {
                Some(other_build) if enforcer == Enforcer::FlowgateCustom => other_build.clone(),
                _ => agent_bin(),
            };
            let agent = AgentGuard::start_binary(&binary, &lab.name, &socket, &args);
            Ok(Installed::Flowgate {
                stopped: None,
                agent,
                _qdiscs: qdiscs,
                _sockets: sockets,
                _verdict_log: verdict_log,
                _policies: policies,
            })
        }
        Enforcer::Iptables | Enforcer::IptablesConntrack | Enforcer::Ipset => {
            // Removal first: a half-installed set of rules is removed too.
            let node = NodeRules::new(&lab.node_netns);
            if enforcer == Enforcer::Ipset {
                run_in(&node.netns, "ipset", &["restore"], Some(&rules.ipset_restore()))?;
            }
            let text = match enforcer {
                Enforcer::Ipset => rules.iptables_ipset(),
                other => rules.iptables_plain(other == Enforcer::IptablesConntrack),
            };
            run_in(&node.netns, "iptables-restore", &[], Some(&text))?;
            Ok(Installed::Netfilter(node))
        }
        Enforcer::KubeNetworkPolicies => {
            anyhow::bail!("kube-network-policies is started with KubeNetworkPolicies::start, not install")
        }
        e => anyhow::bail!("no way to install {}", e.name()),
    }
}

/// flowgate's agent held stopped (SIGSTOP); on drop resumed (SIGCONT), so that it can be stopped for good, or
/// killed when a bare reader took its ring over (its own reader's place in the ring is stale).
pub struct Stopped {
    pid: u32,
    /// Records the agent had read and been told were lost when it was stopped.
    records_before: Option<KernelRecords>,
    reader: Option<BareReader>,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.pid, if self.reader.is_some() { libc::SIGKILL } else { libc::SIGCONT });
    }
}

/// The agent's own ring-buffer reader (`flowgate_agent::reader`, woken by the programs and backed up as the
/// agent's is) with a sink that only counts the records: none is decoded, enriched or sent. It takes the
/// newest ring buffer named `names::MAP_EVENTS_RINGBUF` on the machine: the agent's, started last. Stops
/// when dropped.
pub struct BareReader {
    _reader: reader::Reader,
    read: Arc<AtomicU64>,
}

/// A sink that counts records and does nothing else.
struct Counting(Arc<AtomicU64>);

impl RecordSink for Counting {
    fn on_record(&mut self, _bytes: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn on_batch_end(&mut self) {}

    fn on_lost(&mut self, _count: u64) {}
}

impl BareReader {
    pub fn start() -> anyhow::Result<Self> {
        let id = aya::maps::loaded_maps()
            .filter_map(Result::ok)
            .filter(|m| m.name_as_str() == Some(MAP_EVENTS_RINGBUF))
            .map(|m| m.id())
            .max()
            .with_context(|| format!("no ring buffer named {MAP_EVENTS_RINGBUF} is loaded"))?;
        let map = MapData::from_id(id).with_context(|| format!("opening ring buffer {id}"))?;
        let ring = RingBuf::try_from(Map::RingBuf(map)).with_context(|| format!("mapping ring buffer {id}"))?;
        let read = Arc::new(AtomicU64::new(0));
        // As the agent's reader by default: its drain tick, the programs' default wake-up interval.
        let backstop = reader::Backstop::for_ring(DRAIN_INTERVAL, DatapathOptions::default().wakeup_interval);
        let reader = reader::spawn(ring, backstop, None, Counting(Arc::clone(&read)))
            .context("starting the bare reader's thread")?;
        Ok(Self { _reader: reader, read })
    }

    /// The records read so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

fn signal(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill takes no pointers; `pid` is the agent this run started and still owns (not yet reaped).
    unsafe { libc::kill(pid, signal) == 0 }
}

impl Installed {
    /// User plus system CPU time the enforcer's process has taken so far (none for rules in the kernel).
    pub fn process_cpu(&self) -> Option<std::time::Duration> {
        let pid = match self {
            Self::Flowgate { agent, .. } => agent.pid(),
            Self::KubeNetworkPolicies(knp) => knp.pid(),
            Self::Nothing | Self::HookFloor { .. } | Self::Netfilter(_) => return None,
        };
        process_cpu(pid)
    }

    /// The kernel records flowgate's agent has read so far, and those it was told the kernel lost (its
    /// status counters); `None` for every other enforcer, while the agent is stopped, or when it does not
    /// answer.
    pub fn kernel_records(&self) -> Option<KernelRecords> {
        let Self::Flowgate { agent, stopped: None, .. } = self else { return None };
        let counters = flowgate_tests::agent::status(&agent.socket).ok()?.counters;
        Some(KernelRecords { read: counters.records_read, lost: counters.records_lost_kernel })
    }

    /// Stops flowgate's agent (SIGSTOP) and runs `prefill`, which is to fill its ring buffer, so that the
    /// programs' records are refused from then on ([`Enforcer::FlowgateStopped`]).
    pub fn stop_agent(&mut self, prefill: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.stop_agent_with(false)?;
        prefill()
    }

    /// Stops flowgate's agent (SIGSTOP) and drains its ring with a [`BareReader`] instead
    /// ([`Enforcer::FlowgateBareReader`]); the agent is killed when this is removed.
    pub fn stop_agent_for_bare_reader(&mut self) -> anyhow::Result<()> {
        self.stop_agent_with(true)
    }

    fn stop_agent_with(&mut self, bare: bool) -> anyhow::Result<()> {
        let records_before = self.kernel_records();
        let Self::Flowgate { agent, stopped, .. } = self else { anyhow::bail!("only flowgate's agent stops") };
        anyhow::ensure!(signal(agent.pid(), libc::SIGSTOP), "stopping the agent (pid {})", agent.pid());
        // Whatever happens next, the agent is resumed or killed when this is removed.
        let stopped = stopped.insert(Box::new(Stopped { pid: agent.pid(), records_before, reader: None }));
        if bare {
            stopped.reader = Some(BareReader::start().context("starting a bare reader of the agent's ring")?);
        }
        Ok(())
    }

    /// The records the [`BareReader`] reading in place of the stopped agent's reader has read so far (`None`
    /// without one).
    pub fn bare_reader_read(&self) -> Option<u64> {
        let Self::Flowgate { stopped: Some(stopped), .. } = self else { return None };
        stopped.reader.as_ref().map(BareReader::read)
    }

    /// Resumes a stopped agent ([`Self::stop_agent`]) and returns what it read, and was told the kernel lost,
    /// while it was stopped; `None` if it was not stopped or does not answer.
    pub fn resume_agent(&mut self) -> Option<KernelRecords> {
        let Self::Flowgate { stopped, .. } = self else { return None };
        let stopped = stopped.take()?;
        if stopped.reader.is_some() {
            return None; // Killed on drop, not resumed: nothing to ask it.
        }
        let before = stopped.records_before;
        drop(stopped);
        // Resumed, the agent drains what waits in the ring and hears of the lost records from the kernel's
        // counters (read every 100 ms): wait until both are told and its counts stand still.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut last = None;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.kernel_records();
            let told = now.zip(before).is_some_and(|(n, b)| n.lost > b.lost);
            if (told && now == last) || std::time::Instant::now() > deadline {
                return before.zip(now).map(|(b, n)| b.until(n));
            }
            last = now;
        }
    }

    /// Why this enforcer will not enforce, once that is certain (so waiting longer would not help).
    pub fn gave_up(&mut self) -> Option<String> {
        match self {
            Self::KubeNetworkPolicies(knp) => knp.gave_up(),
            _ => None,
        }
    }

    /// The agent's output, for an error message.
    pub fn log(&self) -> String {
        match self {
            Self::Flowgate { agent, .. } => agent.output(),
            Self::KubeNetworkPolicies(knp) => knp.log(),
            _ => String::new(),
        }
    }
}

/// Counts of flowgate's kernel records ([`Installed::kernel_records`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelRecords {
    pub read: u64,
    pub lost: u64,
}

impl KernelRecords {
    /// What happened between `self` and `later`.
    pub fn until(self, later: Self) -> Self {
        Self { read: later.read.saturating_sub(self.read), lost: later.lost.saturating_sub(self.lost) }
    }
}

/// The netfilter rules and sets in the node namespace, removed on drop.
pub struct NodeRules {
    netns: String,
}

impl NodeRules {
    /// Whatever is put into `netns`'s netfilter from now on is removed when this is dropped.
    pub fn new(netns: &str) -> Self {
        Self { netns: netns.to_owned() }
    }
}

impl Drop for NodeRules {
    fn drop(&mut self) {
        for (program, args) in [("nft", &["flush", "ruleset"][..]), ("ipset", &["destroy"][..])] {
            if let Err(e) = run_in(&self.netns, program, args, None) {
                eprintln!("traffic: removing the rules from {}: {e:#}", self.netns);
            }
        }
    }
}

/// The clsact qdiscs on the lab's pod interfaces (with whatever filters are on them), deleted on drop.
pub struct Clsact {
    netns: String,
    interfaces: Vec<String>,
}

impl Clsact {
    /// Whatever clsact qdisc is on `lab`'s pod interfaces from now on is deleted when this is dropped.
    pub fn new(lab: &LabState) -> Self {
        Self { netns: lab.node_netns.clone(), interfaces: lab.pods.iter().map(|p| p.host_ifname.clone()).collect() }
    }
}

impl Drop for Clsact {
    fn drop(&mut self) {
        // `tc -force -batch` goes on past an interface without one (an error for that line only).
        let batch: String = self.interfaces.iter().map(|i| format!("qdisc del dev {i} clsact\n")).collect();
        let _ = run_in(&self.netns, "tc", &["-force", "-batch", "-"], Some(&batch));
        let left = netns::in_netns(&self.netns, || Command::new("tc").args(["qdisc", "show"]).output());
        match left {
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stdout);
                let count = text.lines().filter(|l| l.contains("clsact")).count();
                if count > 0 {
                    eprintln!("traffic: {count} clsact qdiscs left in {} after deleting them", self.netns);
                }
            }
            _ => eprintln!("traffic: could not list the qdiscs left in {}", self.netns),
        }
    }
}

/// A temporary directory of policy files, removed on drop.
pub struct PolicyDir(pub PathBuf);

impl PolicyDir {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("flowgate-bench-policies-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program ARGS...` inside network namespace `netns_name` (spawned from a thread that entered it, so
/// the process starts there), with `stdin` as its input; fails with its stderr.
pub fn run_in(netns_name: &str, program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let command = format!("{program} {}", args.join(" "));
    let output = netns::in_netns(netns_name, || -> std::io::Result<std::process::Output> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        child.wait_with_output()
    })
    .with_context(|| format!("entering {netns_name} to run `{command}`"))?
    .with_context(|| format!("running `{command}` in {netns_name} (is it installed? scripts/setup.sh installs it)"))?;
    anyhow::ensure!(
        output.status.success(),
        "`{command}` in {netns_name} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// User plus system CPU time of process `pid` (`/proc/PID/stat`, fields 14 and 15, in clock ticks).
pub fn process_cpu(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": fields after the last ')' start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|t| *t > 0)?;
    Some(std::time::Duration::from_micros(ticks * 1_000_000 / per_second))
}
