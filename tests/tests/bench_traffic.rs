//! The traffic benchmark's smallest configuration (`flowgate-bench-traffic --quick`: 10 rules, one round of
//! 0.3 s per load) on a real lab: the section file is written with the baseline's rates and every enforcer's
//! rows, every enforcer refused the probe from a pod its policy does not admit, and none left a clsact qdisc
//! behind for the next one, and the programs' run time on the real loads was read for flowgate and the hook
//! floor. kube-network-policies runs against a real API server (built by the set-up, with
//! `tools/knp/xt-queue.patch`) and must enforce like the others. flowgate's variants that locate its cost run
//! too: the stopped agent's records must have been refused in the kernel, trace records off must leave one
//! record per connection, and the custom variant must run the binary and arguments it is given and name them. No timing is asserted.

use std::process::Command;

use flowgate_tests::{TempDir, bin_dir, require_root};

/// Every enforcer of the section (the rows' names): each must refuse the intruder before its figures count.
const ENFORCERS: [&str; 12] = [
    "flowgate",
    "flowgate, TCX links",
    "flowgate, polling reader",
    "flowgate, no verdict log or metrics",
    "flowgate, trace records off",
    "flowgate, agent stopped",
    "flowgate, agent stopped, a bare reader draining",
    "flowgate, custom arguments",
    "iptables",
    "iptables + conntrack shortcut",
    "iptables + ipset",
    "kube-network-policies",
];

/// The same, as `--enforcers` keys (the hook floor first).
const ALL_ENFORCERS: &str = "hook-floor,flowgate,flowgate-tcx,flowgate-polled,flowgate-quiet,flowgate-no-traces,\
                             flowgate-stopped,flowgate-bare-reader,flowgate-custom,iptables,iptables-conntrack,ipset,\
                             kube-network-policies";

#[test]
fn the_quick_run_writes_every_enforcers_rows() {
    require_root();
    let bin = bin_dir().join("flowgate-bench-traffic");
    assert!(bin.is_file(), "{} not found: build it (`cargo build -p flowgate-benchmarks`)", bin.display());
    let out_dir = TempDir::new("bench-traffic-quick");
    // The custom variant runs "another build": a script that notes its arguments and runs this build's agent.
    let other_build = out_dir.path().join("other-build-agent");
    let invoked = out_dir.path().join("other-build-invoked");
    std::fs::write(
        &other_build,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexec '{}' \"$@\"\n",
            invoked.display(),
            flowgate_tests::agent::agent_bin().display()
        ),
    )
    .expect("write the other build's agent");
    std::fs::set_permissions(&other_build, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let out = Command::new(&bin)
        // Every enforcer the section has, flowgate as TCX links too (not in its default set).
        .args(["--quick", "--enforcers", ALL_ENFORCERS, "--custom-agent-args", "--events-wakeup-interval-us 10000"])
        .arg("--custom-agent-bin")
        .arg(&other_build)
        .arg("--out")
        .arg(out_dir.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run flowgate-bench-traffic");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flowgate-bench-traffic --quick failed ({}):\n{stdout}\n{stderr}", out.status);

    let path = out_dir.path().join("results.d").join("traffic.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let section: serde_json::Value = serde_json::from_str(&text).expect("the section is JSON");
    assert_eq!(section["section"], "traffic");
    let figures = section["figures"].as_array().expect("figures");
    let named = |prefix: &str| -> Vec<&serde_json::Value> {
        figures.iter().filter(|f| f["name"].as_str().is_some_and(|n| n.starts_with(prefix))).collect()
    };
    for load in ["new TCP connections", "TCP request/response", "UDP packets"] {
        let baseline = named(&format!("baseline (no policy), {load}, 10 rules"));
        assert_eq!(baseline.len(), 1, "baseline {load} in {text}");
        assert!(baseline[0]["value"].as_f64().unwrap() > 0.0, "{text}");
        for enforcer in std::iter::once("tc hook floor (a program that only returns)").chain(ENFORCERS) {
            let rows = named(&format!("{enforcer}, {load}, 10 rules"));
            assert_eq!(rows.len(), 1, "{enforcer} {load} in {text}");
            assert_eq!(rows[0]["unit"], "x baseline");
            assert!(rows[0]["value"].as_f64().unwrap() > 0.0, "{text}");
        }
    }
    for enforcer in ENFORCERS {
        let probe = named(&format!("probe from a pod not admitted refused: {enforcer}, 10 rules"));
        assert_eq!(probe.len(), 1, "probe of {enforcer} in {text}");
        assert_eq!(probe[0]["value"], 1.0, "{enforcer} admitted the intruder: {text}");
    }
    // The baseline's probe got through: the probe can see a pass. So did the hook floor's, which enforces
    // nothing.
    for passes in ["baseline", "tc hook floor"] {
        let probe = named(&format!("probe from a pod not admitted refused: {passes}"));
        assert_eq!(probe.len(), 1, "{text}");
        assert_eq!(probe[0]["value"], 0.0, "{text}");
    }
    // What flowgate's programs (as the custom variant runs them too) and the hook floor's took on the real
    // loads, from the kernel's run-time statistics of the programs found on the pod interfaces (a pass after
    // the rounds).
    for (load, operation) in
        [("new TCP connections", "connection"), ("TCP request/response", "transaction"), ("UDP packets", "packet")]
    {
        for (enforcer, programs) in [
            ("flowgate", &["from_endpoint", "to_endpoint"][..]),
            ("flowgate, custom arguments", &["from_endpoint", "to_endpoint"][..]),
            ("tc hook floor (a program that only returns)", &["floor"][..]),
        ] {
            let rows = named(&format!("programs' run time per {operation}: {enforcer}, {load}, 10 rules"));
            assert_eq!(rows.len(), 1, "{enforcer}'s programs under {load} in {text}");
            assert_eq!(rows[0]["unit"], format!("ns/{operation}"));
            assert!(rows[0]["value"].as_f64().unwrap() > 0.0, "{text}");
            let note = rows[0]["note"].as_str().unwrap();
            for program in programs {
                assert!(note.contains(&format!("{program}: ")), "{program} not in {note}");
            }
        }
    }
    // What flowgate's agent read from the kernel per operation (its status counters around each load): every
    // connection has at least its verdict record, and none was lost at this rate.
    let records_per_connection = |enforcer: &str| {
        let rows = named(&format!("kernel records per connection: {enforcer}, new TCP connections, 10 rules"));
        assert_eq!(rows.len(), 1, "{enforcer}'s records in {text}");
        assert!(rows[0]["note"].as_str().unwrap().ends_with(" 0 lost in the kernel over those rounds"), "{text}");
        rows[0]["value"].as_f64().unwrap()
    };
    for enforcer in
        ["flowgate", "flowgate, TCX links", "flowgate, polling reader", "flowgate, no verdict log or metrics"]
    {
        let per_connection = records_per_connection(enforcer);
        assert!(per_connection > 4.0, "{enforcer}: {per_connection} records per connection (about 8 with traces)");
    }
    // With trace records off a connection has its decision's record only: a verdict at the server's ingress,
    // the one direction the policy enforces (a few of the last connections' may still be on their way when
    // the agent is asked, so a little under 1).
    let without = records_per_connection("flowgate, trace records off");
    assert!((0.5..1.5).contains(&without), "{without} records per connection with traces off");
    // The custom variant ran the other build's binary with the arguments given (on the lab, enforcing: its
    // probe was refused above), and says so.
    let custom = named("flowgate, custom arguments, new TCP connections, 10 rules");
    let note = custom[0]["note"].as_str().unwrap();
    assert!(note.contains("; the agent with `--events-wakeup-interval-us 10000` added"), "{note}");
    assert!(note.ends_with(&format!("; the agent binary {}", other_build.display())), "{note}");
    let invocations = std::fs::read_to_string(&invoked).expect("the other build's agent never ran");
    assert!(
        invocations.lines().all(|l| l.contains("--lab") && l.contains("--events-wakeup-interval-us 10000")),
        "{invocations}"
    );
    // The stopped agent read nothing while the loads ran (it was not asked), and the programs' records were
    // refused in the kernel: its ring was full.
    assert!(named("kernel records per connection: flowgate, agent stopped").is_empty(), "{text}");
    let refused = named("kernel records refused while the agent was stopped: flowgate, agent stopped, 10 rules");
    assert_eq!(refused.len(), 1, "{text}");
    assert!(refused[0]["value"].as_f64().unwrap() > 0.0, "no record was refused: the ring was not full: {text}");
    // The bare reader drained the agent's ring (not some other buffer, and not nothing).
    let bare = named("kernel records the bare reader read: flowgate, agent stopped, a bare reader draining, 10 rules");
    assert_eq!(bare.len(), 1, "{text}");
    assert!(bare[0]["value"].as_f64().unwrap() > 0.0, "the bare reader read nothing: {text}");
    // What the neighbours took: the host's steal, per size and over the section.
    for name in ["host steal while the loads ran, 10 rules", "host steal time while the section ran"] {
        assert_eq!(named(name).len(), 1, "{name} in {text}");
    }
    // Each enforcer's qdiscs went with it: one left behind would slow the next measurement's packets.
    assert!(!stderr.contains("clsact qdiscs left"), "{stderr}");
    let netns = flowgate_lab::netns::list();
    assert!(netns.iter().all(|ns| !ns.starts_with("fg-bt-")), "lab namespaces left: {netns:?}");
}
