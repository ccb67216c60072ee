//! The agent's metrics through a real Prometheus: an agent on a real lab with a deny policy and real
//! traffic, scraped every second by `/usr/bin/prometheus` (loopback only, its own storage, killed at
//! the end); then every PromQL expression of every panel of every dashboard in `dashboards/` (template
//! variables substituted, `label_values` variables resolved through the labels API) must return data
//! through Prometheus' HTTP API.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flowgate_proto::{client::Client, message::Subscription};
use flowgate_tests::{
    DENY_INTO_Y, LabGuard, TempDir,
    agent::{AgentGuard, SocketDir, runtime},
    example, free_port, lab_traffic, require_root,
};
use serde_json::Value;

/// A Prometheus server, killed and reaped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: flowgate\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start /usr/bin/prometheus (Debian package `prometheus`)");
        let p = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(p.port, "/-/ready").map(|(s, _)| s) != Ok(200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// `GET /api/v1/...` -> the `data` of a successful answer.
    fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = http_get(self.port, path_and_query).expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path_and_query}: {e}: {body}"));
        assert_eq!((status, v["status"].as_str()), (200, Some("success")), "{path_and_query}: {body}");
        v["data"].clone()
    }

    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encoding for a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET on loopback: status and body.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no head")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no status")?;
    Ok((status, body.to_owned()))
}

/// Every PromQL expression of a dashboard, with its panel's title.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((panel["title"].as_str().unwrap_or("").to_owned(), expr.to_owned()));
            }
        }
    }
    out
}

/// `label_values(METRIC{...}, LABEL)` -> the values through the labels API.
fn label_values(prom: &Prometheus, query: &str, vars: &[(String, String)]) -> Vec<String> {
    let inner =
        query.trim().strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("a label_values() query");
    let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
    let selector = substitute(selector.trim(), vars);
    let data = prom.api(&format!("/api/v1/label/{}/values?match[]={}", label.trim(), encode(&selector)));
    data.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$__interval", "15s");
    for (name, value) in vars {
        e = e.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    e
}

fn traffic(lab: &str, from: &str, to: &str, port: &str, proto: &str, count: &str) {
    lab_traffic(lab, from, to, port, proto, count, &["--interval", "1ms", "--time-limit", "5s"]);
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus_scraping_a_real_agent() {
    require_root();
    let lab = LabGuard::up("metr", &example("lab-netpol.yaml"));
    let tmp = TempDir::new("metrics");
    let policies = tmp.0.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("y.yaml"), DENY_INTO_Y).unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let sockets = SocketDir::new("metr");
    let log = tmp.0.join("verdicts.jsonl");
    let agent = AgentGuard::start(
        &lab.name,
        &sockets.socket("agent.sock"),
        &[
            "--policies",
            policies.to_str().unwrap(),
            "--metrics-addr",
            &metrics_addr,
            "--verdict-log",
            log.to_str().unwrap(),
        ],
    );
    // A socket client, so decode_to_send has samples.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (socket, stop) = (agent.socket.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            runtime().block_on(async {
                let client = Client::connect(&socket, "metrics-test").await.expect("connect");
                let mut stream = client.subscribe(Subscription::default()).await.expect("subscribe");
                while !stop.load(Ordering::Relaxed) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), stream.next_batch()).await;
                }
            })
        })
    };
    let prom = Prometheus::start(&tmp.0, &metrics_addr);

    // Traffic for about 10 s: allowed x/a -> y/b TCP 80, denied x/b -> y/b TCP 80 and z/c -> y/a UDP 81.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        traffic(&lab.name, "x/a", "y/b", "80", "TCP", "5");
        traffic(&lab.name, "x/b", "y/b", "80", "TCP", "2");
        traffic(&lab.name, "z/c", "y/a", "81", "UDP", "200");
        traffic(&lab.name, "x/a", "x/c", "81", "UDP", "50");
    }
    // Scraped often enough for rate() over a minute.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = prom.query("count_over_time(flowgate_endpoints[1m])");
        if n.first().and_then(|v| v["value"][1].as_str()).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) >= 8.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape the agent:\n{}",
            std::fs::read_to_string(&prom.log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let up = prom.query("up{job=\"flowgate\"}");
    assert_eq!(up[0]["value"][1], "1", "the agent is up for prometheus: {up:?}");

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "overview, policy and endpoint dashboards: {files:?}");
    let mut checked = 0;
    let mut empty = Vec::new();
    for file in &files {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        // Template variables, in order: `instance` is every agent; query variables are resolved through
        // the labels API, preferring an endpoint with allowed and denied verdicts so each panel has data.
        let mut vars: Vec<(String, String)> = Vec::new();
        for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap().to_owned();
            let query = var["query"]["query"].as_str().or_else(|| var["query"].as_str()).unwrap_or("");
            let values = label_values(&prom, query, &vars);
            assert!(!values.is_empty(), "{}: variable {name} ({query}) has no values", file.display());
            let value = if var["includeAll"].as_bool() == Some(true) {
                var["allValue"].as_str().unwrap_or(".*").to_owned()
            } else {
                // An endpoint with both allowed and denied verdicts.
                let denied = prom.query(&format!(
                    "count by ({name}) (sum by ({name}, action) (flowgate_endpoint_verdicts_total)) >= 2"
                ));
                denied
                    .iter()
                    .filter_map(|s| s["metric"][&name].as_str())
                    .find(|v| values.iter().any(|x| x == v))
                    .map(str::to_owned)
                    .unwrap_or_else(|| values[0].clone())
            };
            vars.push((name, value));
        }
        for (title, expr) in dashboard_exprs(&dashboard) {
            let expr = substitute(&expr, &vars);
            let result = prom.query(&expr);
            println!("{}: {title}: {} series: {expr}", file.file_name().unwrap().to_string_lossy(), result.len());
            if result.is_empty() {
                empty.push(format!("{}: {title}: {expr}", file.display()));
            }
            checked += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    assert!(
        empty.is_empty(),
        "queries without data:\n{}\nmetrics:\n{}",
        empty.join("\n"),
        http_get(metrics_addr.rsplit(':').next().unwrap().parse().unwrap(), "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    );
    assert!(checked >= 20, "{checked} queries checked");
    // The deny policy shows: denied verdicts, drops for policy, the pair x/b -> y/b.
    assert!(!prom.query("flowgate_drop_total{reason=\"POLICY_DENIED\"} > 0").is_empty());
    assert!(!prom.query("flowgate_denied_flows_total{source=\"x/b\",destination=\"y/b\"} > 0").is_empty());
    assert!(
        !prom
            .query("flowgate_policy_verdicts_by_policy_total{policy=\"y/only-x-a-into-y\",action=\"forwarded\"} > 0")
            .is_empty()
    );
    assert!(
        !prom.query("flowgate_pipeline_latency_seconds{stage=\"decode_to_send\",quantile=\"0.99\"} >= 0").is_empty()
    );
    drop(agent);
}
