//! Output formats of an export: the JSON lines as they are in the log, CSV with one row per flow, or
//! a compact one-line text summary per record, taken from the JSON as written (fields a reader of
//! Hubble's JSON would see). Pure.

use std::io::{self, Write};

use serde_json::Value;

/// CSV columns, in order.
pub const CSV_HEADER: &str = "time,node_name,verdict,event_type,traffic_direction,drop_reason,source_ip,source_port,source_namespace,source_pod,source_identity,destination_ip,destination_port,destination_namespace,destination_pod,destination_identity,protocol,policies";

/// A field under either spelling (Hubble's JSON keeps proto names such as `ID` and `IP`).
fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| v.get(*n))
}

/// `(protocol, l4 object)`: `("TCP", {...})`.
fn l4(flow: &Value) -> Option<(&str, &Value)> {
    flow.get("l4")?.as_object()?.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn ports(flow: &Value) -> (Option<u64>, Option<u64>) {
    match l4(flow) {
        Some((_, v)) => {
            (v.get("source_port").and_then(Value::as_u64), v.get("destination_port").and_then(Value::as_u64))
        }
        None => (None, None),
    }
}

/// Policies named on the flow: `(namespace, name)` for every `*_allowed_by` / `*_denied_by`.
fn policies(flow: &Value) -> impl Iterator<Item = (&str, &str)> {
    const LISTS: [&str; 4] = ["ingress_allowed_by", "egress_allowed_by", "ingress_denied_by", "egress_denied_by"];
    LISTS.into_iter().flat_map(move |list| {
        flow.get(list).and_then(Value::as_array).into_iter().flatten().map(|p| {
            (
                p.get("namespace").and_then(Value::as_str).unwrap_or(""),
                p.get("name").and_then(Value::as_str).unwrap_or(""),
            )
        })
    })
}

fn s<'a>(v: Option<&'a Value>, names: &[&str]) -> &'a str {
    v.and_then(|v| field(v, names)).and_then(Value::as_str).unwrap_or("")
}

fn num(v: Option<&Value>, names: &[&str]) -> String {
    v.and_then(|v| field(v, names))
        .map(|n| match n {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// `policy-verdict`, `drop`, `trace`, from Cilium's monitor message types in `event_type.type`.
pub fn event_name(flow: &Value) -> String {
    match flow.get("event_type").and_then(|e| e.get("type")).and_then(Value::as_u64) {
        Some(1) => "drop".into(),
        Some(4) => "trace".into(),
        Some(5) => "policy-verdict".into(),
        Some(n) => format!("type-{n}"),
        None => String::new(),
    }
}

/// `x/deny-all,y/allow-db` (each once).
pub fn policy_list(flow: &Value) -> String {
    let mut names: Vec<String> = policies(flow).map(|(ns, name)| format!("{ns}/{name}")).collect();
    names.dedup();
    names.join(",")
}

fn csv_field(out: &mut impl Write, v: &str) -> io::Result<()> {
    if v.contains([',', '"', '\n', '\r']) {
        write!(out, "\"{}\"", v.replace('"', "\"\""))
    } else {
        out.write_all(v.as_bytes())
    }
}

pub fn csv_row(out: &mut impl Write, line: &Value, flow: &Value) -> io::Result<()> {
    let (src, dst) = (flow.get("source"), flow.get("destination"));
    let ip = field(flow, &["IP", "ip"]);
    let (sport, dport) = ports(flow);
    let port = |p: Option<u64>| p.map(|p| p.to_string()).unwrap_or_default();
    let fields = [
        s(Some(line), &["time"]).to_owned(),
        s(Some(line), &["node_name"]).to_owned(),
        s(Some(flow), &["verdict"]).to_owned(),
        event_name(flow),
        s(Some(flow), &["traffic_direction"]).to_owned(),
        s(Some(flow), &["drop_reason_desc"]).to_owned(),
        s(ip, &["source"]).to_owned(),
        port(sport),
        s(src, &["namespace"]).to_owned(),
        s(src, &["pod_name"]).to_owned(),
        num(src, &["identity"]),
        s(ip, &["destination"]).to_owned(),
        port(dport),
        s(dst, &["namespace"]).to_owned(),
        s(dst, &["pod_name"]).to_owned(),
        num(dst, &["identity"]),
        l4(flow).map(|(p, _)| p.to_owned()).unwrap_or_default(),
        policy_list(flow),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        csv_field(out, f)?;
    }
    out.write_all(b"\n")
}

/// `x/a (ID 12)` or the address when the side is not a pod.
fn side(v: Option<&Value>, ip: &str, port: Option<u64>) -> String {
    let pod = s(v, &["pod_name"]);
    let addr = match port {
        Some(p) => format!("{ip}:{p}"),
        None => ip.to_owned(),
    };
    if pod.is_empty() {
        let identity = num(v, &["identity"]);
        if identity.is_empty() { addr } else { format!("{addr} (identity {identity})") }
    } else {
        format!("{}/{pod} (ID {}) {addr}", s(v, &["namespace"]), num(v, &["ID", "id"]))
    }
}

/// `2024-05-01T10:00:00.5Z n1 DROPPED policy-verdict INGRESS x/a (ID 12) 10.0.0.1:40000 -> y/b (ID 7) 10.0.0.2:80 TCP policy y/deny-all`
pub fn text_line(out: &mut impl Write, line: &Value, flow: &Value) -> io::Result<()> {
    let ip = field(flow, &["IP", "ip"]);
    let (sport, dport) = ports(flow);
    let proto = l4(flow).map(|(p, _)| p).unwrap_or("?");
    let policies = policy_list(flow);
    let reason = s(Some(flow), &["drop_reason_desc"]);
    write!(
        out,
        "{} {} {} {} {} {} -> {} {}",
        s(Some(line), &["time"]),
        s(Some(line), &["node_name"]),
        s(Some(flow), &["verdict"]),
        event_name(flow),
        s(Some(flow), &["traffic_direction"]),
        side(flow.get("source"), s(ip, &["source"]), sport),
        side(flow.get("destination"), s(ip, &["destination"]), dport),
        proto,
    )?;
    if !reason.is_empty() && reason != "DROP_REASON_UNKNOWN" {
        write!(out, " reason {reason}")?;
    }
    if !policies.is_empty() {
        write!(out, " policy {policies}")?;
    }
    out.write_all(b"\n")
}

/// `2024-05-01T10:00:00Z n1 LOST 12 events (OBSERVER_EVENTS_QUEUE)`.
pub fn lost_text(out: &mut impl Write, line: &Value, lost: &Value) -> io::Result<()> {
    writeln!(
        out,
        "{} {} LOST {} events ({})",
        s(Some(line), &["time"]),
        s(Some(line), &["node_name"]),
        num(Some(lost), &["num_events_lost"]),
        s(Some(lost), &["source"])
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn csv_and_text() {
        let line = json!({
            "flow": {
                "verdict": "DROPPED", "event_type": {"type": 5}, "traffic_direction": "INGRESS",
                "IP": {"source": "10.0.0.1", "destination": "10.0.0.2"},
                "l4": {"TCP": {"source_port": 40000, "destination_port": 80}},
                "source": {"ID": 12, "identity": 5000, "namespace": "x", "pod_name": "a"},
                "destination": {"ID": 7, "identity": 5001, "namespace": "y", "pod_name": "b"},
                "ingress_denied_by": [{"namespace": "y", "name": "deny,all"}]
            },
            "node_name": "n1", "time": "2024-05-01T10:00:00.5Z"
        });
        let mut out = Vec::new();
        csv_row(&mut out, &line, &line["flow"]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2024-05-01T10:00:00.5Z,n1,DROPPED,policy-verdict,INGRESS,,10.0.0.1,40000,x,a,5000,10.0.0.2,80,y,b,5001,TCP,\"y/deny,all\"\n"
        );
        assert_eq!(CSV_HEADER.split(',').count(), 18);
        let mut out = Vec::new();
        text_line(&mut out, &line, &line["flow"]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2024-05-01T10:00:00.5Z n1 DROPPED policy-verdict INGRESS x/a (ID 12) 10.0.0.1:40000 -> y/b (ID 7) 10.0.0.2:80 TCP policy y/deny,all\n"
        );
    }
}
