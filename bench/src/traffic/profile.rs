//! Where an enforcer's programs spend their time on real traffic: the kernel's own statistics of each BPF
//! program's runs (`BPF_ENABLE_STATS`, run count and run time), read for the programs attached as tc filters
//! to the lab's pod interfaces while each load runs. The datapath section times one packet at a time in a
//! hot loop; this is every packet of a real load, cold caches, ring-buffer wake-ups and all.
//!
//! While the statistics are on, the kernel reads a clock twice around every program run, so the pass that
//! reads them is one of its own after the measured rounds: its rates are not in any ratio, and the
//! statistics' own cost is inside its figures (the hook floor's run, a program that only returns, shows how
//! much).

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::sys::{Stats, enable_stats};
use flowgate_lab::{LabState, netns};

use super::load::{self, Load, Servers};

/// Runs and run time of one program, as the kernel counts them while statistics are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub runs: u64,
    pub run_time_ns: u64,
}

impl RunStats {
    fn since(self, before: RunStats) -> RunStats {
        RunStats {
            runs: self.runs.saturating_sub(before.runs),
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
        }
    }

    fn add(&mut self, other: RunStats) {
        self.runs += other.runs;
        self.run_time_ns += other.run_time_ns;
    }

    /// Mean nanoseconds per run (0 without runs).
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 { 0.0 } else { self.run_time_ns as f64 / self.runs as f64 }
    }
}

/// One load under the profiled enforcer.
#[derive(Clone, Debug)]
pub struct LoadProfile {
    pub load: Load,
    /// Operations per second over the load's measured window (its warm-up ran at the same pace).
    pub rate: f64,
    /// How long the load ran, warm-up included: the time the programs' counts cover.
    pub wall: Duration,
    /// Per program name: what its runs took, summed over the interfaces it is attached to.
    pub programs: BTreeMap<String, RunStats>,
}

impl LoadProfile {
    /// Every program together.
    pub fn total(&self) -> RunStats {
        let mut total = RunStats::default();
        for stats in self.programs.values() {
            total.add(*stats);
        }
        total
    }

    /// Operations the load did while the programs were counted, about: its rate over that time.
    pub fn operations(&self) -> f64 {
        self.rate * self.wall.as_secs_f64()
    }
}

/// Ids of the BPF programs attached as tc filters (either hook) to `interfaces` in network namespace
/// `netns_name`, as `tc -j filter show` lists them.
pub fn attached_programs(netns_name: &str, interfaces: &[String]) -> anyhow::Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    for interface in interfaces {
        for hook in ["ingress", "egress"] {
            let args = ["-j", "filter", "show", "dev", interface.as_str(), hook];
            let output = netns::in_netns(netns_name, || Command::new("tc").args(args).output())
                .with_context(|| format!("entering {netns_name}"))?
                .with_context(|| format!("running `tc {}` in {netns_name}", args.join(" ")))?;
            anyhow::ensure!(
                output.status.success(),
                "`tc {}` in {netns_name} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            ids.extend(
                program_ids(&output.stdout).with_context(|| format!("`tc {}` in {netns_name}", args.join(" ")))?,
            );
        }
    }
    Ok(ids)
}

/// The program ids in `tc -j filter show`'s output: a JSON array of filters, a bpf filter's program at
/// `options.prog.id` (an empty output: no filters).
fn program_ids(json: &[u8]) -> anyhow::Result<Vec<u32>> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let filters: Vec<serde_json::Value> = serde_json::from_slice(json).context("not a JSON array of filters")?;
    Ok(filters
        .iter()
        .filter_map(|f| f.pointer("/options/prog/id")?.as_u64())
        .filter_map(|id| u32::try_from(id).ok())
        .collect())
}

/// Run statistics of the programs `ids` now, per id, with each one's name.
fn snapshot(ids: &BTreeSet<u32>) -> anyhow::Result<BTreeMap<u32, (String, RunStats)>> {
    let mut found = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing the loaded BPF programs")?;
        if ids.contains(&info.id()) {
            let stats = RunStats { runs: info.run_count(), run_time_ns: info.run_time().as_nanos() as u64 };
            found.insert(info.id(), (info.name_as_str().unwrap_or("?").to_owned(), stats));
        }
    }
    let missing: Vec<&u32> = ids.iter().filter(|id| !found.contains_key(id)).collect();
    anyhow::ensure!(missing.is_empty(), "BPF programs {missing:?} attached but no longer loaded");
    Ok(found)
}

/// Runs every load once with the kernel's run-time statistics on, and reads what the programs attached to
/// `lab`'s pod interfaces took during each.
pub fn profile_loads(
    lab: &LabState,
    client_netns: &str,
    servers: &Servers,
    server: std::net::Ipv4Addr,
    duration: Duration,
) -> anyhow::Result<Vec<LoadProfile>> {
    let interfaces: Vec<String> = lab.pods.iter().map(|p| p.host_ifname.clone()).collect();
    let ids = attached_programs(&lab.node_netns, &interfaces)?;
    anyhow::ensure!(!ids.is_empty(), "no BPF program attached to the pod interfaces {interfaces:?}");
    // On while this descriptor is open (the kernel counts users: another holder keeps them on).
    let _stats = enable_stats(Stats::RunTime).context("turning on the kernel's BPF run-time statistics")?;
    let mut profiles = Vec::new();
    for load in Load::ALL {
        let (before, started) = (snapshot(&ids)?, Instant::now());
        let rate = load::run(load, client_netns, servers, server, duration)
            .with_context(|| format!("{} with the run-time statistics on", load.name()))?;
        let (after, wall) = (snapshot(&ids)?, started.elapsed());
        let mut programs: BTreeMap<String, RunStats> = BTreeMap::new();
        for (id, (name, stats)) in &after {
            let earlier = before.get(id).map(|(_, s)| *s).unwrap_or_default();
            programs.entry(name.clone()).or_default().add(stats.since(earlier));
        }
        // The load's mean is over its window; the programs also ran for its warm-up, at the same pace.
        profiles.push(LoadProfile { load, rate: rate.mean, wall, programs });
    }
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_ids_are_read_from_bpf_filters_only() {
        let json = br#"[{"protocol":"all","pref":1,"kind":"bpf","chain":0},
            {"protocol":"all","pref":1,"kind":"bpf","chain":0,"options":{"handle":"0xf1","bpf_name":"from_endpoint",
             "direct-action":true,"not_in_hw":true,"prog":{"id":98813,"name":"from_endpoint","tag":"1a49","jited":1}}},
            {"protocol":"ip","pref":2,"kind":"u32","chain":0,"options":{"fh":"800:"}}]"#;
        assert_eq!(program_ids(json).unwrap(), vec![98813]);
        assert_eq!(program_ids(b"\n").unwrap(), Vec::<u32>::new());
        assert_eq!(program_ids(b"[]").unwrap(), Vec::<u32>::new());
        let err = program_ids(b"Error: Cannot find device").unwrap_err();
        assert!(format!("{err:#}").contains("not a JSON array"), "{err:#}");
    }

    #[test]
    fn run_stats_are_per_run_and_per_operation() {
        let mut total = RunStats::default();
        total.add(RunStats { runs: 10, run_time_ns: 4_000 }.since(RunStats { runs: 4, run_time_ns: 1_000 }));
        total.add(RunStats { runs: 4, run_time_ns: 1_000 });
        assert_eq!(total, RunStats { runs: 10, run_time_ns: 4_000 });
        assert_eq!(total.ns_per_run(), 400.0);
        assert_eq!(RunStats::default().ns_per_run(), 0.0);
        let profile = LoadProfile {
            load: Load::Connections,
            rate: 1_000.0,
            wall: Duration::from_millis(500),
            programs: BTreeMap::from([("a".to_owned(), total), ("b".to_owned(), total)]),
        };
        assert_eq!(profile.total().runs, 20);
        assert_eq!(profile.operations(), 500.0);
    }
}
