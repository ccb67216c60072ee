//! The verdict log and `flowgate verdicts export` end to end: a real agent on a real lab with a deny
//! policy writes its log under heavy traffic with a small rotation size (every line of every file,
//! gzip too, parses, and the flow lines are exactly what the agent counted as written; `export
//! --follow` run alongside gets every one of them across rotations); a full disk and a kill -9
//! mid-write leave only whole records, and what a full disk cost is counted and marked; and exports of generated logs of a million records select exact time ranges and
//! filters in constant memory, reporting corrupt lines with file and line number.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use flowgate_tests::{
    DENY_INTO_Y, LAB_DIR_ENV, LabGuard, TempDir,
    agent::{AgentGuard, SocketDir},
    example, flowgate_bin, free_port, lab_dir, require_root,
};
use serde_json::Value;

/// One sample of the agent's metrics.
/// The tests of this file flood the verdict log or export a million records; on a 2-core machine two of
/// them at once starve each other past their deadlines (an `export --follow` reader fell behind while the
/// million-record export ran beside it). They take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn metric(port: u16, name: &str) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{body}"))
}

/// Waits until `name` has not changed for `quiet`; returns it.
fn settled(port: u16, name: &str, quiet: Duration) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = metric(port, name);
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        assert!(Instant::now() < deadline, "{name} did not settle");
        std::thread::sleep(Duration::from_millis(100));
        let now = metric(port, name);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// Files of the log at `current`: rotated ones and the current one.
fn log_files(current: &Path) -> Vec<PathBuf> {
    let dir = current.parent().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("verdicts"))
        .filter(|p| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    files.sort();
    files
}

/// Every line of a file (gunzipped when `.gz`) and whether the last one ends without a newline.
fn file_lines(path: &Path) -> (Vec<String>, bool) {
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(file).read_to_end(&mut bytes).unwrap();
    } else {
        BufReader::new(file).read_to_end(&mut bytes).unwrap();
    }
    let torn = !bytes.is_empty() && !bytes.ends_with(b"\n");
    let text = String::from_utf8(bytes).expect("utf-8");
    (text.lines().map(str::to_owned).collect(), torn)
}

/// Flow lines and lost-event totals over every file; panics on a line that does not parse.
fn check_files(current: &Path) -> (u64, u64, Vec<Value>) {
    let (mut flows, mut lost, mut sample) = (0, 0, Vec::new());
    for file in log_files(current) {
        let (lines, torn) = file_lines(&file);
        assert!(!torn, "{}: a torn last line", file.display());
        for (i, line) in lines.iter().enumerate() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}: {line}", file.display(), i + 1));
            if v.get("flow").is_some() {
                flows += 1;
                if sample.len() < 50 {
                    sample.push(v);
                }
            } else {
                lost += v["lost_events"]["num_events_lost"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{}:{}: neither flow nor lost: {line}", file.display(), i + 1));
            }
        }
    }
    (flows, lost, sample)
}

fn flood(lab: &str, from: &str, to: &str, count: &str) -> std::process::Child {
    Command::new(flowgate_bin())
        .args([
            "lab",
            "traffic",
            "--lab",
            lab,
            "--from",
            from,
            "--to",
            to,
            "--port",
            "81",
            "--protocol",
            "UDP",
            "--count",
            count,
        ])
        .args(["--interval", "0.02ms", "--time-limit", "20s"])
        .env(LAB_DIR_ENV, lab_dir())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// `flowgate verdicts export ARGS`, with its max RSS (KiB), stdout and stderr.
fn export(args: &[&str]) -> (String, String, i64, Duration) {
    let started = Instant::now();
    // Peak RSS through GNU time, which forks the export from its own small process: the rusage of a
    // child spawned straight from this (large, multi-threaded) test process would carry the test
    // process's own peak, which the kernel records into the child at exec.
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "FLOWGATE-MAXRSS-KIB=%M"])
        .arg(flowgate_bin())
        .args(["verdicts", "export"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/time (Debian package `time`, installed by scripts/setup.sh)");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let mut stdout = String::new();
    out.read_to_string(&mut stdout).unwrap();
    let stderr = err_reader.join().unwrap();
    // Reaped, not left a zombie; its outcome is judged from the `time` lines on stderr below.
    child.wait().unwrap();
    let rss_line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("FLOWGATE-MAXRSS-KIB="))
        .unwrap_or_else(|| panic!("export {args:?} failed:\n{stderr}"));
    let rss: i64 = rss_line.trim_start_matches("FLOWGATE-MAXRSS-KIB=").trim().parse().unwrap();
    assert!(!stderr.contains("Command exited with non-zero status"), "export {args:?} failed:\n{stderr}");
    let stderr =
        stderr.lines().filter(|l| !l.starts_with("FLOWGATE-MAXRSS-KIB=")).collect::<Vec<_>>().join("\n") + "\n";
    (stdout, stderr, rss, started.elapsed())
}

/// `N flows exported` from the summary line.
fn exported(stderr: &str) -> u64 {
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("flowgate verdicts export:"))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    summary["flowgate verdicts export: ".len()..].split(' ').next().unwrap().parse().unwrap()
}

fn start_agent(lab: &LabGuard, sockets: &SocketDir, dir: &Path, port: u16, extra: &[&str]) -> AgentGuard {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("y.yaml"), DENY_INTO_Y).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.join("log").join("verdicts.jsonl");
    let mut args =
        vec!["--policies", policies.to_str().unwrap(), "--metrics-addr", &addr, "--verdict-log", log.to_str().unwrap()];
    args.extend_from_slice(extra);
    AgentGuard::start(&lab.name, &sockets.socket("agent.sock"), &args)
}

#[test]
fn rotation_under_load_keeps_every_record_whole_and_export_follow_gets_them_all() {
    require_root();
    let _turn = one_at_a_time();
    let lab = LabGuard::up("vrot", &example("lab-netpol.yaml"));
    let tmp = TempDir::new("vlog-rot");
    let sockets = SocketDir::new("vrot");
    let port = free_port();
    let agent = start_agent(
        &lab,
        &sockets,
        &tmp.0,
        port,
        &["--verdict-log-max-size", "64KiB", "--verdict-log-max-backups", "100000", "--verdict-log-compress"],
    );
    let log = tmp.0.join("log").join("verdicts.jsonl");
    let follower = Command::new(flowgate_bin())
        .args(["verdicts", "export", "--follow", "--log", log.to_str().unwrap(), "--output-file"])
        .arg(tmp.0.join("followed.jsonl"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Denied UDP into y: one drop record per datagram, plus verdicts.
    let floods = [flood(&lab.name, "z/c", "y/a", "20000"), flood(&lab.name, "x/b", "y/c", "20000")];
    for mut f in floods {
        assert!(f.wait().unwrap().success());
    }
    let written = settled(port, "flowgate_verdict_log_records_total", Duration::from_secs(2)) as u64;
    let rotations = metric(port, "flowgate_verdict_log_rotations_total") as u64;
    let lost = metric(port, "flowgate_lost_events_total{source=\"verdict_log\"}") as u64;
    std::thread::sleep(Duration::from_secs(1)); // the compressor finishes
    let (flows, marked, sample) = check_files(&log);
    println!("written {written}, lost {lost}, rotations {rotations}, files {}", log_files(&log).len());
    assert!(written > 20_000, "lots of records: {written}");
    assert!(rotations > 20, "rotated often: {rotations}");
    assert_eq!(flows, written, "the files hold exactly the records the agent counted as written");
    assert!(marked >= lost, "every loss of the log is marked in it ({marked} marked, {lost} lost)");
    assert!(log_files(&log).iter().any(|p| p.extension().is_some_and(|e| e == "gz")), "rotated files are compressed");
    assert!(
        sample.iter().any(|v| v["flow"]["verdict"] == "DROPPED" && v["flow"]["drop_reason_desc"] == "POLICY_DENIED")
    );
    assert!(sample.iter().all(|v| v["flow"]["event_type"]["type"] != 4), "no traces by default");

    // The exporter reads it all back, gzip included.
    let (out, err, _, _) = export(&["--log", log.to_str().unwrap()]);
    assert_eq!(exported(&err), written, "{err}");
    assert!(err.contains(" 0 corrupt lines skipped"), "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("{\"flow\"")).count() as u64, written);

    // --follow saw every record live, across every rotation (it may still be catching up: wait for it).
    let count_followed = || {
        std::fs::read_to_string(tmp.0.join("followed.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("{\"flow\"") && l.ends_with('}'))
            .count() as u64
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_followed() < written && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    let output = follower.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    let followed = std::fs::read_to_string(tmp.0.join("followed.jsonl")).unwrap();
    let followed_flows = followed.lines().filter(|l| l.starts_with("{\"flow\"")).count() as u64;
    assert_eq!(followed_flows, written, "export --follow: {err}");
    drop(agent);
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "flowgate-test"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount a tmpfs at {}", path.display());
        Self(path.to_owned())
    }

    fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount {}", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_only_whole_records_and_every_unwritten_one_is_counted_and_marked() {
    require_root();
    let _turn = one_at_a_time();
    let lab = LabGuard::up("vfull", &example("lab-netpol.yaml"));
    let tmp = TempDir::new("vlog-full");
    let disk = SmallDisk::mount(&tmp.0.join("log"), "256k");
    let sockets = SocketDir::new("vfull");
    let port = free_port();
    let agent = start_agent(&lab, &sockets, &tmp.0, port, &["--verdict-log-max-size", "100MiB"]);
    let log = tmp.0.join("log").join("verdicts.jsonl");

    // Far more than 256 KiB of records: the disk fills up while the agent writes.
    assert!(flood(&lab.name, "z/c", "y/a", "10000").wait().unwrap().success());
    let written = settled(port, "flowgate_verdict_log_records_total", Duration::from_secs(1)) as u64;
    let lost = metric(port, "flowgate_lost_events_total{source=\"verdict_log\"}") as u64;
    let (flows, _, _) = check_files(&log);
    println!("disk full: written {written}, lost {lost}, on disk {flows}");
    assert!(lost > 0, "the full disk cost records, and they were counted");
    assert_eq!(flows, written, "every line on disk is whole and is one the agent counted as written");

    // Room again: the next write marks the loss in the log, then goes on.
    disk.grow("64m");
    assert!(flood(&lab.name, "z/c", "y/b", "50").wait().unwrap().success());
    settled(port, "flowgate_verdict_log_records_total", Duration::from_secs(1));
    let lost_after = metric(port, "flowgate_lost_events_total{source=\"verdict_log\"}") as u64;
    let (flows, marked, _) = check_files(&log);
    assert!(flows > written, "writing went on once there was room");
    assert!(marked >= lost, "the loss is marked in the log: {marked} marked, {lost} lost");
    assert_eq!(lost_after, lost, "nothing more was lost once there was room");
    drop(agent);
}

#[test]
fn kill_9_while_writing_leaves_only_whole_records() {
    require_root();
    let _turn = one_at_a_time();
    let lab = LabGuard::up("vkill", &example("lab-netpol.yaml"));
    let tmp = TempDir::new("vlog-kill");
    let sockets = SocketDir::new("vkill");
    let port = free_port();
    let agent = start_agent(
        &lab,
        &sockets,
        &tmp.0,
        port,
        &["--verdict-log-max-size", "256KiB", "--verdict-log-max-backups", "100000"],
    );
    let log = tmp.0.join("log").join("verdicts.jsonl");
    // Phase 1: a burst, then quiet: everything the agent counts as written is on disk, exactly.
    assert!(flood(&lab.name, "z/c", "y/a", "5000").wait().unwrap().success());
    let quiet = settled(port, "flowgate_verdict_log_records_total", Duration::from_secs(1)) as u64;
    assert_eq!(check_files(&log).0, quiet, "at rest, the files hold exactly the written records");
    // Phase 2: kill -9 in the middle of heavy writing.
    let mut f = flood(&lab.name, "z/c", "y/a", "40000");
    std::thread::sleep(Duration::from_millis(1500));
    let before_kill = metric(port, "flowgate_verdict_log_records_total") as u64;
    agent.kill_hard();
    let _ = f.wait();
    // Whole records only: every line of every file parses. A write cut by the kill can only leave an
    // unterminated tail at the end of the current file; the exporter reports it, the next agent cuts it.
    let mut flows = 0;
    for file in log_files(&log) {
        let (lines, torn) = file_lines(&file);
        let complete = if torn { &lines[..lines.len() - 1] } else { &lines[..] };
        assert!(!torn || file == log, "{}: only the current file can end mid-line", file.display());
        for (i, line) in complete.iter().enumerate() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", file.display(), i + 1));
            flows += u64::from(v.get("flow").is_some());
        }
    }
    println!("at rest {quiet}; counted before the kill {before_kill}; whole flow records on disk {flows}");
    assert!(before_kill > quiet, "the kill came while writing");
    // Every record the agent had counted as written before the kill is on disk, whole; so are the
    // records of writes completed between that sample and the kill.
    assert!(flows >= before_kill, "{flows} on disk < {before_kill} counted");
    let (_, err, _, _) = export(&["--log", log.to_str().unwrap()]);
    assert_eq!(exported(&err), flows, "{err}");
    assert!(err.contains(" 0 corrupt lines skipped"), "{err}");

    // A new agent on the same log cuts a torn tail and appends after the last whole record.
    let agent = start_agent(
        &lab,
        &sockets,
        &tmp.0,
        port,
        &["--verdict-log-max-size", "256KiB", "--verdict-log-max-backups", "100000"],
    );
    // Records still in the pinned events buffer from before the kill are written by the new agent: wait
    // until it is quiet, so no write is in progress while the file is read.
    settled(port, "flowgate_verdict_log_records_total", Duration::from_secs(1));
    let (lines, torn) = file_lines(&log);
    assert!(!torn && lines.iter().all(|l| serde_json::from_str::<Value>(l).is_ok()));
    drop(agent);
}

/// Generates a log of `total` flows: `backups` rotated files (every other one gzip-compressed) and a
/// current one, record `i` at `BASE + i * 10 ms`, verdict DROPPED when `i % 4 == 0`, destination
/// namespace `y` when `i % 3 == 0` else `x`. Returns the path of the current file.
const BASE_SECS: i64 = 1_714_550_400; // 2024-05-01T08:00:00Z

fn stamp_of(i: u64) -> String {
    let ns = i64::try_from(i).unwrap() * 10_000_000;
    let secs = BASE_SECS + ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    let day = 1 + (secs - 1_714_521_600) / 86_400;
    format!("2024-05-{day:02}T{h:02}:{m:02}:{s:02}.{frac:09}Z")
}

fn generate(dir: &Path, total: u64, backups: u64) -> PathBuf {
    let per_file = total / (backups + 1);
    let mut i = 0;
    for file_index in 0..=backups {
        let is_current = file_index == backups;
        let end = if is_current { total } else { i + per_file };
        let path = if is_current {
            dir.join("verdicts.jsonl")
        } else {
            // Rotated right after its last record.
            let t = stamp_of(end - 1).replace(':', "-");
            let stamp = format!("{}.{}", &t[..19], &t[20..26]);
            dir.join(format!("verdicts-{stamp}.jsonl"))
        };
        let file = std::fs::File::create(&path).unwrap();
        let compress = !is_current && file_index % 2 == 1;
        let mut out: Box<dyn std::io::Write> = if compress {
            Box::new(flate2::write::GzEncoder::new(
                std::io::BufWriter::new(std::fs::File::create(path.with_extension("jsonl.gz")).unwrap()),
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(std::io::BufWriter::with_capacity(1 << 20, file))
        };
        while i < end {
            let t = stamp_of(i);
            let verdict = if i % 4 == 0 { "DROPPED" } else { "FORWARDED" };
            let dst_ns = if i % 3 == 0 { "y" } else { "x" };
            let port = 1024 + i % 50_000;
            writeln!(
                out,
                r#"{{"flow":{{"time":"{t}","verdict":"{verdict}","IP":{{"source":"10.200.0.1","destination":"10.200.0.2","ipVersion":"IPv4"}},"l4":{{"UDP":{{"source_port":{port},"destination_port":81}}}},"source":{{"ID":1,"identity":100,"namespace":"z","labels":["k8s:pod=c"],"pod_name":"c"}},"destination":{{"ID":2,"identity":101,"namespace":"{dst_ns}","labels":["k8s:pod=a"],"pod_name":"a"}},"Type":"L3_L4","node_name":"n1","event_type":{{"type":5}},"traffic_direction":"INGRESS","Summary":"UDP"}},"node_name":"n1","time":"{t}"}}"#
            )
            .unwrap();
            i += 1;
        }
        drop(out);
        if compress {
            std::fs::remove_file(&path).unwrap();
        }
    }
    dir.join("verdicts.jsonl")
}

#[test]
fn export_of_a_million_records_selects_exactly_in_constant_memory_and_reports_corrupt_lines() {
    let _turn = one_at_a_time();
    let tmp = TempDir::new("vlog-million");
    const TOTAL: u64 = 1_000_000;
    let started = Instant::now();
    let log = generate(&tmp.0, TOTAL, 9);
    println!("generated {TOTAL} records in {:?}", started.elapsed());
    let log_arg = log.to_str().unwrap();
    let out_file = tmp.0.join("out");
    let out_arg = out_file.to_str().unwrap();

    // Everything, in order.
    let (_, err, rss, took) = export(&["--log", log_arg, "--output-file", out_arg]);
    println!("all: {took:?}, max RSS {rss} KiB: {}", err.trim());
    assert_eq!(exported(&err), TOTAL);
    assert!(rss < 50 * 1024, "max RSS {rss} KiB");
    let mut previous = String::new();
    for (n, line) in BufReader::new(std::fs::File::open(&out_file).unwrap()).lines().enumerate() {
        let line = line.unwrap();
        let t = &line[17..47];
        assert!(t > previous.as_str(), "record {n} out of order");
        previous = t.to_owned();
    }

    // A time range: records 100000..=350000 (times are exact; rotated files outside it are skipped).
    let (since, until) = (stamp_of(100_000), stamp_of(350_000));
    let (_, err, rss, took) =
        export(&["--log", log_arg, "--since", &since, "--until", &until, "--output-file", out_arg]);
    println!("range: {took:?}, max RSS {rss} KiB: {}", err.trim());
    assert_eq!(exported(&err), 250_001);
    assert!(rss < 50 * 1024);

    // Filters: denied, into namespace y (either side), CSV.
    let (_, err, rss, took) =
        export(&["--log", log_arg, "--verdict", "denied", "--namespace", "y", "-o", "csv", "--output-file", out_arg]);
    println!("filters: {took:?}, max RSS {rss} KiB: {}", err.trim());
    let expected = (0..TOTAL).filter(|i| i % 4 == 0 && i % 3 == 0).count() as u64;
    assert_eq!(exported(&err), expected);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap().lines().count() as u64, expected + 1, "rows and a header");
    assert!(rss < 50 * 1024);
    let (text, _, _, _) = export(&["--log", log_arg, "--port", "1024", "--until", &stamp_of(60_000), "-o", "text"]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.starts_with("2024-05-01T08:00:00.000000000Z n1 DROPPED policy-verdict INGRESS z/c (ID 1) 10.200.0.1:1024 -> y/a (ID 2) 10.200.0.2:81 UDP"), "{text}");

    // Corrupt lines: reported with file and line, skipped, counted.
    let current = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = current.lines().collect();
    lines[4] = "{\"flow\": {\"time\": ";
    lines[9] = "not json at all";
    lines[14] = "{\"something\":\"else\"}";
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let (_, err, _, _) = export(&["--log", log_arg, "--output-file", out_arg]);
    let name = log.display().to_string();
    for n in [5, 10, 15] {
        assert!(err.contains(&format!("{name}:{n}: ")), "line {n} reported:\n{err}");
    }
    assert!(err.contains(" 3 corrupt lines skipped"), "{err}");
    assert_eq!(exported(&err), TOTAL - 3);
}
