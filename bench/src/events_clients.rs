//! The clients of the events and latency benchmarks, each a real process on the agent's socket:
//! `flowgate monitor -o json` (its lines are counted here, as a log shipper would read them) and
//! `flowgate-bench-client` (the client library, [`flowgate_proto::client`]). Each client's count of
//! flows received and of events its loss notices said were lost is followed live, so a run can wait
//! until every client has everything it was offered or was told what it lost.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Which program a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// `flowgate monitor -o json`.
    MonitorJson,
    /// `flowgate-bench-client`, on the client library.
    Library,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::MonitorJson => "flowgate monitor -o json",
            ClientKind::Library => "client library",
        }
    }
}

/// Latency percentiles a library client measured (kernel timestamp to receipt), in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyReport {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// What a client counted.
#[derive(Debug, Default)]
pub struct Counts {
    pub flows: AtomicU64,
    pub lost: AtomicU64,
}

/// One client process and the thread that reads its output.
pub struct ClientProcess {
    pub kind: ClientKind,
    child: Child,
    stdin: Option<ChildStdin>,
    pub counts: Arc<Counts>,
    reader: Option<JoinHandle<Option<LatencyReport>>>,
}

/// The binary named `name` next to this one (every binary of the workspace lands in one target folder).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this binary")?;
    let path = me.parent().context("this binary has no folder")?.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first (cargo build --release -p flowgate-cli -p flowgate-benchmarks)",
            path.display()
        );
    }
    Ok(path)
}

/// `lost_events` count of a `flowgate monitor -o json` line, `None` for a flow line.
pub fn lost_in_json_line(line: &str) -> anyhow::Result<Option<u64>> {
    if !line.starts_with("{\"lost_events\"") {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
    value["lost_events"]["num_events_lost"].as_u64().map(Some).with_context(|| format!("no num_events_lost in {line}"))
}

impl ClientProcess {
    /// Starts a client of `kind` on `socket`; `latency` asks a library client to measure latency.
    pub fn start(kind: ClientKind, socket: &Path, latency: bool) -> anyhow::Result<Self> {
        let mut command = match kind {
            ClientKind::MonitorJson => {
                let mut c = Command::new(sibling_binary("flowgate")?);
                c.args(["monitor", "-o", "json"]);
                c
            }
            ClientKind::Library => {
                let mut c = Command::new(sibling_binary("flowgate-bench-client")?);
                if latency {
                    c.arg("--latency");
                }
                c
            }
        };
        let mut child = command
            .env(flowgate_proto::client::SOCKET_ENV, socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let stdout = child.stdout.take().context("client stdout")?;
        let stdin = child.stdin.take();
        let counts = Arc::new(Counts::default());
        let reader = {
            let counts = Arc::clone(&counts);
            std::thread::spawn(move || {
                let mut latency = None;
                for line in BufReader::with_capacity(1 << 20, stdout).lines() {
                    let Ok(line) = line else { break };
                    match kind {
                        ClientKind::MonitorJson => match lost_in_json_line(&line) {
                            Ok(Some(n)) => {
                                counts.lost.fetch_add(n, Ordering::Relaxed);
                            }
                            Ok(None) => {
                                counts.flows.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => eprintln!("{e:#}"),
                        },
                        ClientKind::Library => {
                            let words: Vec<&str> = line.split_whitespace().collect();
                            let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
                            match words.first() {
                                Some(&"count") => {
                                    counts.flows.store(num(1), Ordering::Relaxed);
                                    counts.lost.store(num(2), Ordering::Relaxed);
                                }
                                Some(&"latency") => {
                                    latency = Some(LatencyReport {
                                        count: num(1),
                                        p50_ns: num(2),
                                        p99_ns: num(3),
                                        max_ns: num(4),
                                    });
                                }
                                _ => eprintln!("flowgate-bench-client: unexpected line {line:?}"),
                            }
                        }
                    }
                }
                latency
            })
        };
        Ok(Self { kind, child, stdin, counts, reader: Some(reader) })
    }

    pub fn flows(&self) -> u64 {
        self.counts.flows.load(Ordering::Relaxed)
    }

    pub fn lost(&self) -> u64 {
        self.counts.lost.load(Ordering::Relaxed)
    }

    /// Tells a library client to report resetting its latency histogram (warm-up done).
    pub fn reset_latency(&mut self) -> anyhow::Result<()> {
        if let Some(stdin) = self.stdin.as_mut() {
            stdin.write_all(b"reset\n").and_then(|()| stdin.flush()).context("writing to flowgate-bench-client")?;
        }
        Ok(())
    }

    /// Ends the client: a library client is asked to report and exit (its stdin closes), the monitor is
    /// killed. Returns the latency report of a library client that measured it.
    pub fn finish(mut self) -> anyhow::Result<Option<LatencyReport>> {
        drop(self.stdin.take());
        if self.kind == ClientKind::MonitorJson {
            let _ = self.child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
        Ok(self.reader.take().and_then(|r| r.join().ok()).flatten())
    }

    /// The client's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until every client is connected (the hub has `clients` subscribers), or fails after 10 s.
pub fn wait_subscribed(hub: &flowgate_events::hub::Hub, clients: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.subscribers() < clients {
        if Instant::now() > deadline {
            bail!("only {} of {clients} clients subscribed within 10 s", hub.subscribers());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Waits until every client has flows + lost >= `offered()` (re-read on every check: the kernel-loss
/// poll may still be on its way), or `timeout` passed. Returns when the last client completed.
pub fn wait_accounted(
    clients: &[ClientProcess],
    offered: impl Fn() -> anyhow::Result<u64>,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let total = offered()?;
        if clients.iter().all(|c| c.flows() + c.lost() >= total) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Ok(Instant::now());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}
