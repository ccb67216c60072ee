//! The lab node on real network namespaces with real traffic: up, probe, down, cleanup after panics, and two
//! labs at once. Run as root (`make test`); each test uses its own lab name so they run in parallel.

use std::{collections::BTreeSet, panic, sync::Mutex, time::Duration};

use flowgate_tests::{
    LabGuard, assert_nothing_left, example, flowgate, flowgate_ok, lab_netns, probe_results, require_root,
};

const NETPOL_PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

fn assert_full_matrix(report: &serde_json::Value, expect: impl Fn(&str, &str) -> bool, what: &str) {
    let results = probe_results(report);
    assert_eq!(results.len(), 81, "{what}: a 9x9 matrix");
    let wrong: Vec<String> = results
        .iter()
        .filter(|(from, to, ok)| *ok != expect(from, to))
        .map(|(from, to, ok)| format!("{from}->{to}={ok}"))
        .collect();
    assert!(wrong.is_empty(), "{what}: unexpected results: {}", wrong.join(", "));
}

#[test]
fn netpol_lab_connects_every_pair_over_tcp_and_udp_without_policy() {
    require_root();
    let lab = LabGuard::up("connect", &example("lab-netpol.yaml"));

    let pods: Vec<String> = lab.state.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
    assert_eq!(pods, NETPOL_PODS);
    assert_eq!(lab.state.node_netns, format!("fg-{}-node", lab.name));
    assert_eq!(lab.state.namespaces[0].labels["kubernetes.io/metadata.name"], "x");
    let ifindexes: BTreeSet<u32> = lab.state.pods.iter().map(|p| p.host_ifindex).collect();
    assert_eq!(ifindexes.len(), 9, "every pod has its own node-side veth");
    assert!(!ifindexes.contains(&0));
    assert_eq!(lab.saved_state(), lab.state, "`up -o json` prints what state.json holds");
    assert_eq!(lab_netns(&lab.name).len(), 10, "node + 9 pods");

    for (port, protocol) in [("80", "TCP"), ("80", "UDP"), ("81", "TCP"), ("81", "UDP")] {
        let (report, took) = lab.probe(&["--all", "--port", port, "--protocol", protocol]);
        println!("{port}/{protocol}: 81 probes, all connected, in {took:.2?}");
        assert_eq!(report["port"], port.parse::<u16>().unwrap());
        assert_eq!(report["protocol"], protocol);
        assert_full_matrix(&report, |_, _| true, &format!("{port}/{protocol} without policy"));
    }

    // A named port resolves against the destination's container ports.
    let (report, _) = lab.probe(&["--from", "x/a", "--to", "z/c", "--port", "serve-81-udp", "--protocol", "UDP"]);
    assert_eq!(report["results"]["x/a"]["z/c"], true);
    let (report, _) = lab.probe(&["--from", "x/a", "--to", "z/c", "--port", "no-such-port"]);
    assert_eq!(report["results"]["x/a"]["z/c"], false);

    // The default output is the e2e truth table.
    let table = flowgate_ok(&["lab", "probe", "--lab", &lab.name, "--all", "--port", "80"]);
    assert!(table.contains("\tx/a\tx/b\tx/c\ty/a\ty/b\ty/c\tz/a\tz/b\tz/c\n"), "{table}");
    assert!(table.contains("\nz/c\t.\t.\t.\t.\t.\t.\t.\t.\t.\n"), "{table}");
}

#[test]
fn probes_that_cannot_connect_are_reported_blocked_within_the_bound() {
    require_root();
    let lab = LabGuard::up("blocked", &example("lab-netpol.yaml"));

    // No server on 9999: refused (TCP RST, ICMP port unreachable; rate-limited ICMP makes some UDP probes wait
    // for the timeout).
    for protocol in ["TCP", "UDP"] {
        let (report, took) = lab.probe(&["--all", "--port", "9999", "--protocol", protocol, "--timeout", "1s"]);
        println!("9999/{protocol}: 81 probes to a port without a server in {took:.2?}");
        assert_full_matrix(&report, |_, _| false, &format!("9999/{protocol}"));
        assert!(took < Duration::from_secs(5), "81 probes took {took:?}");
    }

    // Silently dropped traffic (what a deny policy does): blackhole every pod route in the node namespace.
    // Every probe between two pods has to time out; a pod still reaches itself.
    for pod in &lab.state.pods {
        let status = std::process::Command::new("ip")
            .args(["-n", &lab.state.node_netns, "route", "replace", "blackhole", &format!("{}/32", pod.ip)])
            .status()
            .expect("run ip");
        assert!(status.success());
    }
    for protocol in ["TCP", "UDP"] {
        let (report, took) = lab.probe(&["--all", "--port", "80", "--protocol", protocol, "--timeout", "1s"]);
        println!("80/{protocol}: 81 probes, 72 dropped, in {took:.2?}");
        assert_full_matrix(&report, |from, to| from == to, &format!("80/{protocol} dropped"));
        assert!(took < Duration::from_secs(5), "81 probes with 72 timeouts took {took:?}");
    }
}

#[test]
fn down_removes_every_namespace_and_the_server_and_is_idempotent() {
    require_root();
    let lab = LabGuard::up("down", &example("lab-netpol.yaml"));
    let name = lab.name.clone();
    let pid = lab.state.server_pid.expect("the lab has a server");
    assert!(!flowgate_tests::process_gone(pid), "server {pid} runs while the lab is up");

    let out = flowgate_ok(&["lab", "down", &name]);
    assert!(out.contains("10 network namespaces deleted"), "{out}");
    assert_nothing_left(&name, Some(pid));

    let again = flowgate_ok(&["lab", "down", &name]);
    assert!(again.contains("nothing to do"), "{again}");
    drop(lab); // a third down, from the guard: still fine
    assert_nothing_left(&name, Some(pid));
}

#[test]
fn a_test_that_panics_while_holding_a_lab_leaves_nothing_behind() {
    require_root();
    let seen: Mutex<Option<(String, Option<u32>)>> = Mutex::new(None);
    let outcome = panic::catch_unwind(|| {
        let lab = LabGuard::up("panics", &example("lab-small.yaml"));
        *seen.lock().unwrap() = Some((lab.name.clone(), lab.state.server_pid));
        assert!(!lab_netns(&lab.name).is_empty());
        panic!("a test fails while its lab is up");
    });
    assert!(outcome.is_err(), "the closure panicked");
    let (name, pid) = seen.lock().unwrap().clone().expect("the lab came up before the panic");
    assert_nothing_left(&name, pid);
}

#[test]
fn two_labs_with_the_same_range_work_independently() {
    require_root();
    let one = LabGuard::up("twin-one", &example("lab-small.yaml"));
    let two = LabGuard::up("twin-two", &example("lab-small.yaml"));
    let web_ip = |lab: &LabGuard| lab.state.pods.iter().find(|p| p.name == "web").unwrap().ip;
    assert_eq!(web_ip(&one), web_ip(&two), "same addresses, separate namespaces");

    for lab in [&one, &two] {
        let (report, _) = lab.probe(&["--from", "default/client", "--to", "default/web", "--port", "http"]);
        assert_eq!(report["results"]["default/client"]["default/web"], true, "{}", lab.name);
        let (report, _) = lab.probe(&["--from", "outside", "--to", "default/web", "--port", "53", "--protocol", "UDP"]);
        assert_eq!(report["results"]["outside"]["default/web"], true, "{}: external -> pod", lab.name);
        let (report, _) = lab.probe(&["--from", "default/client", "--to", "outside", "--port", "8080"]);
        assert_eq!(report["results"]["default/client"]["outside"], true, "{}: pod -> external", lab.name);
    }

    let (one_name, one_pid) = (one.name.clone(), one.state.server_pid);
    drop(one);
    assert_nothing_left(&one_name, one_pid);
    let (report, _) = two.probe(&["--from", "default/client", "--to", "default/web", "--port", "80"]);
    assert_eq!(report["results"]["default/client"]["default/web"], true, "the other lab is untouched");
    assert_eq!(lab_netns(&two.name).len(), 4, "node, two pods, one external");
}

#[test]
fn up_refuses_a_name_in_use_and_a_bad_topology_with_clear_errors() {
    require_root();
    let lab = LabGuard::up("refuse", &example("lab-small.yaml"));

    // Same name, different topology: refused, and the existing lab is untouched.
    let netpol = example("lab-netpol.yaml");
    let out = flowgate(&["lab", "up", "-f", netpol.to_str().unwrap(), "--name", &lab.name]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("lab {} already exists", lab.name)), "{err}");
    assert_eq!(lab.saved_state(), lab.state);
    // Same name, same topology: the running lab is reused.
    let small = example("lab-small.yaml");
    flowgate_ok(&["lab", "up", "-f", small.to_str().unwrap(), "--name", &lab.name]);
    assert_eq!(lab.saved_state(), lab.state);

    let bad = std::env::temp_dir().join(format!("flowgate-bad-topology-{}.yaml", std::process::id()));
    std::fs::write(&bad, "namespaces:\n  - name: x\npods:\n  - namespace: y\n    name: a\n").unwrap();
    let out = flowgate(&["lab", "up", "-f", bad.to_str().unwrap(), "--name", "never-up"]);
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pod y/a uses namespace \"y\", which is not declared"), "{err}");
    assert!(lab_netns("never-up").is_empty());
}

#[test]
fn exec_runs_a_command_inside_a_pod() {
    require_root();
    let lab = LabGuard::up("exec", &example("lab-small.yaml"));
    let out = flowgate_ok(&["lab", "exec", &lab.name, "default/web", "--", "ip", "-o", "-4", "addr", "show", "eth0"]);
    let web = lab.state.pods.iter().find(|p| p.name == "web").unwrap();
    assert!(out.contains(&format!("{}/32", web.ip)), "{out}");
}
