//! Smoke test of the benchmark sections of issue #12 (events, latency, propagation, footprint): each
//! binary runs in `--quick` mode into a temporary directory and must write its section file with every
//! figure it promises. No time is asserted (benchmarks report, they do not pass or fail on speed); what
//! is asserted is what must hold at any speed: every record of the events runs is delivered or
//! reported lost to each client, exactly, and the verdict log writes whole lines.

use std::process::Command;

use flowgate_tests::{LAB_DIR_ENV, TempDir, bin_dir, lab_dir, lab_netns, require_root};

/// Runs `flowgate-bench-<section> --quick --out DIR` and returns the section's figures.
fn run_section(section: &str) -> Vec<serde_json::Value> {
    let bin = bin_dir().join(format!("flowgate-bench-{section}"));
    assert!(bin.is_file(), "{} not found: build it first (cargo build -p flowgate-benchmarks)", bin.display());
    let out = TempDir::new(&format!("bench-{section}"));
    let status = Command::new(&bin)
        .args(["--quick", "--out"])
        .arg(out.path())
        .env(LAB_DIR_ENV, lab_dir())
        .env("RUST_BACKTRACE", "0")
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(status.success(), "{} --quick failed: {status}", bin.display());
    let path = out.path().join("results.d").join(format!("{section}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    assert_eq!(json["section"], section);
    assert!(json["finished"].as_str().is_some_and(|s| !s.is_empty()), "no finish time in {text}");
    let figures = json["figures"].as_array().unwrap_or_else(|| panic!("no figures in {text}")).clone();
    for f in &figures {
        assert!(f["name"].as_str().is_some_and(|n| !n.is_empty()), "a figure without a name: {f}");
        assert!(f["unit"].as_str().is_some_and(|u| !u.is_empty()), "a figure without a unit: {f}");
        assert!(f["value"].as_f64().is_some_and(f64::is_finite), "a figure without a finite value: {f}");
        if f.get("target").is_some() {
            assert!(f["met"].is_boolean(), "a target without met: {f}");
        }
    }
    figures
}

fn named<'a>(figures: &'a [serde_json::Value], part: &str) -> Vec<&'a serde_json::Value> {
    figures.iter().filter(|f| f["name"].as_str().is_some_and(|n| n.contains(part))).collect()
}

#[test]
fn events_section_accounts_for_every_record_per_client() {
    require_root();
    let figures = run_section("events");
    let unaccounted = named(&figures, "offered - delivered - lost");
    // Two buffers x four cases (1 library, 1 monitor, paced, 4 clients).
    assert_eq!(unaccounted.len(), 8, "{figures:#?}");
    for f in unaccounted {
        assert_eq!(f["value"].as_f64(), Some(0.0), "records neither delivered nor reported lost: {f}");
    }
    let delivered = named(&figures, ": delivered");
    assert!(delivered.iter().all(|f| f["value"].as_f64().is_some_and(|v| v > 0.0)), "{delivered:#?}");
    let broken = named(&figures, "not whole JSON");
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0]["value"].as_f64(), Some(0.0), "{}", broken[0]);
}

#[test]
fn latency_section_reports_percentiles_for_both_buffers_and_rates() {
    require_root();
    let figures = run_section("latency");
    for buffer in ["ring buffer", "perf event array"] {
        for rate in ["10k", "100k"] {
            for q in ["p50", "p99", "max"] {
                let name = format!("{buffer}, {rate} events/s paced, kernel timestamp to client: {q}");
                let f = figures.iter().find(|f| f["name"] == name.as_str()).unwrap_or_else(|| panic!("no {name}"));
                assert!(f["value"].as_f64().is_some_and(|v| v > 0.0), "{f}");
            }
        }
    }
}

#[test]
fn propagation_section_measures_policy_and_label_changes_at_both_sizes_and_kube_network_policies_anchor() {
    require_root();
    let figures = run_section("propagation");
    for size in ["10 policies, 9 endpoints", "1000 policies, 500 endpoints"] {
        for q in ["p50", "p99"] {
            let part = format!("{size}: {q}");
            // A policy file written and a pod label changed in the topology file; a NetworkPolicy created and
            // a pod label changed through the API server.
            let flowgate = named(&figures, &part).into_iter().filter(|f| !is_knp(f)).count();
            assert_eq!(flowgate, 4, "no {part} four times: {figures:#?}");
        }
    }
    // kube-network-policies' anchor, on real traffic: a NetworkPolicy created and a pod label changed through the
    // API server, on the small lab and at scale; and its time to answer an admitted new connection, which paces
    // the probes.
    for size in ["small lab: 3 pods", "1000 policies, 500 endpoints"] {
        for q in ["p50", "p99"] {
            let part = format!("{size}: {q}");
            let knp: Vec<_> = named(&figures, &part).into_iter().filter(|f| is_knp(f) && !is_knp_decision(f)).collect();
            assert_eq!(knp.len(), 2, "no kube-network-policies {part} twice: {figures:#?}");
            assert!(knp.iter().all(|f| f["value"].as_f64().is_some_and(|v| v > 0.0)), "{knp:#?}");
        }
        let decided: Vec<_> = named(&figures, size).into_iter().filter(|f| is_knp_decision(f)).collect();
        assert_eq!(decided.len(), 2, "no kube-network-policies decision time {size}: {figures:#?}");
        assert!(decided.iter().all(|f| f["value"].as_f64().is_some_and(|v| v > 0.0)), "{decided:#?}");
    }
}

fn is_knp_decision(figure: &serde_json::Value) -> bool {
    figure["name"].as_str().is_some_and(|n| n.starts_with("kube-network-policies: an admitted new connection answered"))
}

fn is_knp(figure: &serde_json::Value) -> bool {
    figure["name"].as_str().is_some_and(|n| n.starts_with("kube-network-policies:"))
}

#[test]
fn footprint_section_measures_agent_maps_and_tui_and_leaves_no_lab() {
    require_root();
    let figures = run_section("footprint");
    for part in [
        "start-up (spawn",
        "start-up with --attach-mode tcx",
        "resident memory, idle",
        "kernel map memory",
        "CPU at 100k events/s",
        "polling reader (--events-poll-streams): CPU at 100k events/s",
        "resident memory at 100k events/s",
        "TUI",
    ] {
        assert!(!named(&figures, part).is_empty(), "no {part}: {figures:#?}");
    }
    let maps = named(&figures, "kernel map memory (memlock), no policy");
    assert!(maps[0]["value"].as_f64().is_some_and(|v| v > 0.0), "the agent's maps were not found: {}", maps[0]);
    let fed = named(&figures, "resident memory at 100k events/s");
    assert!(
        fed[0]["note"].as_str().is_some_and(|n| !n.contains(" 0 delivered")),
        "the real agent delivered nothing: {}",
        fed[0]
    );
    let tui = named(&figures, "TUI");
    assert!(
        tui[0]["note"].as_str().is_some_and(|n| !n.contains("sent it 0 events")),
        "the TUI got nothing: {}",
        tui[0]
    );
    assert_eq!(lab_netns("fgbench-footprint"), Vec::<String>::new(), "the footprint lab is left");
}
