//! Our flow JSON against Hubble's own schema: `flow.proto` / `observer.proto` (in `shared/hubble-flow/`,
//! beside the repository) are compiled with `protoc --python_out`, and `hubble_schema_check.py` parses
//! every line with `google.protobuf.json_format.Parse(line, GetFlowsResponse(), ignore_unknown_fields=False)`.
//! Lines of every kind of flow and of lost events must parse; the real `hubble observe -o json` lines of
//! `examples.jsonl` check the checker (the response-shaped ones parse, a bare flow does not).
//! Needs `protoc` and `/usr/bin/python3` with `google.protobuf` (scripts/setup.sh installs them).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use flowgate_proto::{
    hubble::{self, fixtures},
    message::{LossSource, LostEvents},
};

/// Overrides where `shared/` is looked for.
const SHARED_ENV: &str = "FLOWGATE_SHARED_DIR";
const PYTHON: &str = "/usr/bin/python3";

/// `shared/hubble-flow`: `$FLOWGATE_SHARED_DIR/hubble-flow`, else the first `shared/hubble-flow` found
/// beside the repository or one of its parents (CI clones the repository with a copy of `shared/`
/// beside it; the developers' checkout has it one level up).
fn hubble_flow_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates: Vec<PathBuf> = match std::env::var_os(SHARED_ENV) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => repo.ancestors().map(|a| a.join("shared")).collect(),
    };
    let found = candidates
        .iter()
        .map(|s| s.join("hubble-flow"))
        .find(|dir| dir.join("proto/flow/flow.proto").is_file() && dir.join("proto/observer/observer.proto").is_file());
    found.unwrap_or_else(|| {
        panic!(
            "Hubble's protos (shared/hubble-flow/proto) not found beside {} or its parents: this test needs the \
             project's shared/ directory beside the repository (or ${SHARED_ENV} pointing at it)",
            repo.display()
        )
    })
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("flowgate-hubble-schema-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles Hubble's protos to Python modules in a fresh directory.
fn compile_protos() -> TempDir {
    let proto = hubble_flow_dir().join("proto");
    let out = TempDir::new();
    let status = Command::new("protoc")
        .arg(format!("--proto_path={}", proto.display()))
        .arg("--proto_path=/usr/include")
        .arg(format!("--python_out={}", out.0.display()))
        .args(["flow/flow.proto", "relay/relay.proto", "observer/observer.proto"])
        .status()
        .expect("run protoc (install protobuf-compiler: scripts/setup.sh)");
    assert!(status.success(), "protoc failed on {}", proto.display());
    out
}

/// One result per non-empty line: `Ok(())` or the parser's complaint.
fn check(lines: &[String]) -> Vec<Result<(), String>> {
    let out = compile_protos();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hubble_schema_check.py");
    let mut child = Command::new(PYTHON)
        .arg(&script)
        .arg(&out.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (install python3-protobuf: scripts/setup.sh)");
    let mut stdin = child.stdin.take().unwrap();
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the schema checker failed: {}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<Result<(), String>> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| if l == "ok" { Ok(()) } else { Err(l.to_owned()) })
        .collect();
    assert_eq!(results.len(), lines.iter().filter(|l| !l.trim().is_empty()).count(), "one result per line");
    results
}

#[test]
fn our_flow_and_lost_event_lines_parse_as_hubble_get_flows_responses() {
    let mut named: Vec<(String, String)> = fixtures::all()
        .into_iter()
        .map(|(name, flow)| (name.to_owned(), hubble::flow_json(&flow, "lab-node").to_string()))
        .collect();
    for source in [LossSource::KernelBuffer, LossSource::ClientQueue, LossSource::DecodeError] {
        let lost = LostEvents { source, count: 312 };
        named.push((format!("lost {source:?}"), hubble::lost_json(&lost, "lab-node", fixtures::TIME_NS).to_string()));
    }
    let lines: Vec<String> = named.iter().map(|(_, l)| l.clone()).collect();
    let failures: Vec<String> = check(&lines)
        .into_iter()
        .zip(&named)
        .filter_map(|(r, (name, line))| r.err().map(|e| format!("{name}: {e}\n  {line}")))
        .collect();
    assert!(failures.is_empty(), "lines Hubble's schema rejects:\n{}", failures.join("\n"));
}

#[test]
fn checker_accepts_real_hubble_lines_and_rejects_a_bare_flow() {
    let text = std::fs::read_to_string(hubble_flow_dir().join("examples.jsonl")).expect("read examples.jsonl");
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    let results = check(&lines);
    let mut responses = 0;
    for (line, result) in lines.iter().zip(&results) {
        let value: serde_json::Value = serde_json::from_str(line).expect("examples are JSON");
        if value.get("flow").is_some() || value.get("lost_events").is_some() {
            responses += 1;
            assert!(result.is_ok(), "a real hubble line was rejected: {result:?}\n  {line}");
        } else {
            assert!(result.is_err(), "a line that is not a GetFlowsResponse was accepted:\n  {line}");
        }
    }
    assert!(responses >= 10, "examples.jsonl has real response lines");
    assert!(results.iter().any(Result::is_err), "the checker rejects something");
    // Unknown fields are errors, not ignored.
    let bogus = check(&[r#"{"flow":{"verdict":"DROPPED","not_a_field":1}}"#.to_owned()]);
    assert!(bogus[0].is_err(), "{bogus:?}");
}
