//! The one shape of a benchmark result: a [`Figure`] (value, unit, the target next to it, the method
//! in a note) inside a [`Section`], written to `bench/results.d/<section>.json`, and joined by
//! [`join`] into `bench/results.json` with the machine, kernel and date of the run.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Where the sections and the joined results live by default: `bench/` in the repository (this crate's
/// folder). Every section binary takes `--out DIR` instead (smoke tests write there).
pub fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Which way a target points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bound {
    /// The figure must be at most the target (a cost: ns per packet, ms of latency, MiB).
    #[serde(rename = "<=")]
    AtMost,
    /// The figure must be at least the target (a rate or a ratio to beat).
    #[serde(rename = ">=")]
    AtLeast,
}

/// The target a figure is measured against, in the figure's unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub bound: Bound,
    pub value: f64,
}

impl Target {
    pub fn at_most(value: f64) -> Self {
        Self { bound: Bound::AtMost, value }
    }

    pub fn at_least(value: f64) -> Self {
        Self { bound: Bound::AtLeast, value }
    }

    pub fn met_by(&self, value: f64) -> bool {
        match self.bound {
            Bound::AtMost => value <= self.value,
            Bound::AtLeast => value >= self.value,
        }
    }
}

/// One measured figure: a median (or the one figure a run gives), its unit, and its target if the
/// issue that asked for it set one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// What was measured, e.g. "established flow, IPv4, 1 policy entry".
    pub name: String,
    pub value: f64,
    /// "ns/packet", "events/s", "ratio to baseline", "ms", "MiB", ...
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Whether the target was met (absent when there is no target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// How it was measured (repeats, runs, spread), or why a target was missed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self { name: name.into(), value, unit: unit.into(), target: None, met: None, note: String::new() }
    }

    pub fn target(mut self, target: Target) -> Self {
        self.met = Some(target.met_by(self.value));
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// One section of the suite, as its binary writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// Short name, also the file name: "datapath", "traffic", "events", "latency", "propagation",
    /// "footprint".
    pub section: String,
    /// RFC 3339 time the section finished.
    pub finished: String,
    pub figures: Vec<Figure>,
}

impl Section {
    pub fn new(section: impl Into<String>) -> Self {
        Self { section: section.into(), finished: String::new(), figures: Vec::new() }
    }

    pub fn push(&mut self, figure: Figure) {
        println!("{}", row(&figure));
        self.figures.push(figure);
    }

    /// Writes `bench/results.d/<section>.json` (or into `dir`).
    pub fn write(mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        self.finished = jiff::Timestamp::now().to_string();
        let dir = dir.join("results.d");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.section));
        let json = serde_json::to_string_pretty(&self).context("encoding the section")?;
        std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// The joined results of one `make bench`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub date: String,
    pub machine: Machine,
    pub sections: Vec<Section>,
}

/// What the figures were measured on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
}

impl Machine {
    pub fn this() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        Self { kernel, cpu, cores, memory_mib }
    }
}

/// Reads every `results.d/*.json` under `dir`, in the suite's order, into one [`Results`].
pub fn join(dir: &Path) -> anyhow::Result<Results> {
    const ORDER: [&str; 6] = ["datapath", "traffic", "events", "latency", "propagation", "footprint"];
    let sections_dir = dir.join("results.d");
    let mut sections = Vec::new();
    for entry in std::fs::read_dir(&sections_dir).with_context(|| format!("reading {}", sections_dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let section: Section =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            sections.push(section);
        }
    }
    sections.sort_by_key(|s| ORDER.iter().position(|o| *o == s.section).unwrap_or(ORDER.len()));
    Ok(Results { date: jiff::Timestamp::now().to_string(), machine: Machine::this(), sections })
}

/// One table row: name, value and unit, the target and whether it was met.
pub fn row(f: &Figure) -> String {
    let target = match (f.target, f.met) {
        (Some(t), Some(met)) => {
            let op = if t.bound == Bound::AtMost { "<=" } else { ">=" };
            format!("{op} {}  {}", number(t.value), if met { "met" } else { "MISSED" })
        }
        _ => String::new(),
    };
    format!("  {:<64} {:>14} {:<18} {}", f.name, number(f.value), f.unit, target)
}

/// The whole table, section by section.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(
        out,
        "flowgate benchmarks, {} ({}, {} cores, {} MiB, Linux {})",
        results.date, m.cpu, m.cores, m.memory_mib, m.kernel
    );
    for s in &results.sections {
        let _ = writeln!(out, "\n{} (finished {})", s.section, s.finished);
        for f in &s.figures {
            let _ = writeln!(out, "{}", row(f));
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_met_or_missed_by_its_bound() {
        let f = Figure::new("established", 101.0, "ns/packet").target(Target::at_most(40.0));
        assert_eq!(f.met, Some(false));
        let f = Figure::new("to one client", 1.2e6, "events/s").target(Target::at_least(1e6));
        assert_eq!(f.met, Some(true));
        assert!(row(&f).contains(">= 1000000  met"), "{}", row(&f));
    }

    #[test]
    fn sections_join_in_the_suites_order() {
        let dir = std::env::temp_dir().join(format!("flowgate-bench-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for name in ["events", "datapath"] {
            let mut s = Section::new(name);
            s.push(Figure::new("x", 1.0, "ns"));
            s.write(&dir).unwrap();
        }
        let joined = join(&dir).unwrap();
        let names: Vec<_> = joined.sections.iter().map(|s| s.section.as_str()).collect();
        assert_eq!(names, ["datapath", "events"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
