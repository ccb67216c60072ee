//! Which records an export keeps: a time range and flow filters, applied to the Hubble-shaped JSON of
//! each line directly (no agent, no `Flow` needed). Within one criterion any value matches; all the
//! criteria given must match. Pure.

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

/// A time given on the command line: RFC 3339 (`2024-05-01T10:00:00Z`, `...+02:00`) or an age
/// (`90s`, `30m`, `2h`, `1d`, `1h30m`) meaning that long before `now`.
pub fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Ok(ts);
    }
    let mut total = 0i64;
    let mut digits = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad_time(text))?;
        digits.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad_time(text)),
        };
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(bad_time(text));
    }
    now.checked_sub(SignedDuration::from_secs(total))
        .map_err(|_| bad_time(text))
}

fn bad_time(text: &str) -> String {
    format!(
        "{text:?} is not a time: use RFC 3339 (2024-05-01T10:00:00Z) or an age (30m, 2h, 1d, 1h30m)"
    )
}

/// What a line of the log is.
pub enum Record<'a> {
    Flow(&'a Value),
    Lost(&'a Value),
    /// JSON, but neither a flow nor a lost-events record.
    Unknown,
}

pub fn classify(line: &Value) -> Record<'_> {
    if let Some(flow) = line.get("flow").filter(|f| f.is_object()) {
        Record::Flow(flow)
    } else if let Some(lost) = line.get("lost_events").filter(|l| l.is_object()) {
        Record::Lost(lost)
    } else {
        Record::Unknown
    }
}

/// The record's time: the line's `time`, else the flow's.
pub fn time_of(line: &Value) -> Option<Timestamp> {
    line.get("time")
        .or_else(|| line.get("flow").and_then(|f| f.get("time")))?
        .as_str()?
        .parse()
        .ok()
}

/// A field under either spelling (Hubble's JSON keeps proto names such as `ID` and `IP`).
pub fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| v.get(*n))
}

pub fn sides(flow: &Value) -> [Option<&Value>; 2] {
    [flow.get("source"), flow.get("destination")]
}

/// `(protocol, l4 object)`: `("TCP", {...})`.
pub fn l4(flow: &Value) -> Option<(&str, &Value)> {
    flow.get("l4")?
        .as_object()?
        .iter()
        .next()
        .map(|(k, v)| (k.as_str(), v))
}

pub fn ports(flow: &Value) -> (Option<u64>, Option<u64>) {
    match l4(flow) {
        Some((_, v)) => (
            v.get("source_port").and_then(Value::as_u64),
            v.get("destination_port").and_then(Value::as_u64),
        ),
        None => (None, None),
    }
}

/// Policies named on the flow: `(namespace, name, list)` for every `*_allowed_by` / `*_denied_by`.
pub fn policies(flow: &Value) -> impl Iterator<Item = (&str, &str, &'static str)> {
    const LISTS: [&str; 4] = [
        "ingress_allowed_by",
        "egress_allowed_by",
        "ingress_denied_by",
        "egress_denied_by",
    ];
    LISTS.into_iter().flat_map(move |list| {
        flow.get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(move |p| {
                (
                    p.get("namespace").and_then(Value::as_str).unwrap_or(""),
                    p.get("name").and_then(Value::as_str).unwrap_or(""),
                    list,
                )
            })
    })
}

fn str_at<'a>(v: Option<&'a Value>, names: &[&str]) -> &'a str {
    v.and_then(|v| field(v, names))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The filters of `flowgate verdicts export`.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub related_to: Vec<u64>,
    pub namespaces: Vec<String>,
    /// `namespace/name`, or `name` in any namespace.
    pub pods: Vec<String>,
    /// Hubble's names: FORWARDED, DROPPED, AUDIT.
    pub verdicts: Vec<String>,
    /// `(namespace, name)`.
    pub policies: Vec<(String, String)>,
    pub ports: Vec<u64>,
    /// Upper case: TCP, UDP, SCTP, ICMP.
    pub protocols: Vec<String>,
}

fn any_or<T>(values: &[T], pred: impl Fn(&T) -> bool) -> bool {
    values.is_empty() || values.iter().any(pred)
}

impl Selection {
    /// Whether a time is inside the range (a record without a time is inside only when no range is set).
    pub fn in_range(&self, time: Option<Timestamp>) -> bool {
        match time {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u),
            None => self.since.is_none() && self.until.is_none(),
        }
    }

    /// Whether the flow (the object under `flow`) meets every filter.
    pub fn matches(&self, flow: &Value) -> bool {
        let sides = sides(flow);
        any_or(&self.related_to, |id| {
            sides.iter().any(|s| {
                s.and_then(|s| field(s, &["ID", "id"]))
                    .and_then(Value::as_u64)
                    == Some(*id)
            })
        }) && any_or(&self.namespaces, |ns| {
            sides.iter().any(|s| str_at(*s, &["namespace"]) == ns)
        }) && any_or(&self.pods, |pod| {
            sides.iter().any(|s| {
                let (ns, name) = (str_at(*s, &["namespace"]), str_at(*s, &["pod_name"]));
                match pod.split_once('/') {
                    Some((want_ns, want)) => ns == want_ns && name == want,
                    None => !name.is_empty() && name == pod,
                }
            })
        }) && any_or(&self.verdicts, |v| {
            flow.get("verdict").and_then(Value::as_str) == Some(v)
        }) && any_or(&self.policies, |(ns, name)| {
            policies(flow).any(|(n, m, _)| n == ns && m == name)
        }) && any_or(&self.ports, |port| {
            let (s, d) = ports(flow);
            s == Some(*port) || d == Some(*port)
        }) && any_or(&self.protocols, |p| {
            l4(flow).is_some_and(|(proto, _)| proto.to_ascii_uppercase().starts_with(p.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn line() -> Value {
        json!({
            "flow": {
                "time": "2024-05-01T10:00:00.5Z",
                "verdict": "DROPPED",
                "IP": {"source": "10.0.0.1", "destination": "10.0.0.2"},
                "l4": {"TCP": {"source_port": 40000, "destination_port": 80}},
                "source": {"ID": 12, "identity": 5000, "namespace": "x", "pod_name": "a"},
                "destination": {"ID": 7, "identity": 5001, "namespace": "y", "pod_name": "b"},
                "ingress_denied_by": [{"namespace": "y", "name": "deny-all"}]
            },
            "node_name": "n1",
            "time": "2024-05-01T10:00:00.5Z"
        })
    }

    #[test]
    fn times() {
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_time("2h", now).unwrap().to_string(),
            "2024-05-01T10:00:00Z"
        );
        assert_eq!(
            parse_time("1h30m", now).unwrap().to_string(),
            "2024-05-01T10:30:00Z"
        );
        assert_eq!(
            parse_time("2024-05-01T12:00:00+02:00", now)
                .unwrap()
                .to_string(),
            "2024-05-01T10:00:00Z"
        );
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("10", now).is_err());
        assert_eq!(
            time_of(&line()).unwrap().to_string(),
            "2024-05-01T10:00:00.5Z"
        );
    }

    #[test]
    fn filters() {
        let l = line();
        let Record::Flow(f) = classify(&l) else {
            panic!()
        };
        let sel = |f: &dyn Fn(&mut Selection)| {
            let mut s = Selection::default();
            f(&mut s);
            s
        };
        assert!(Selection::default().matches(f));
        assert!(sel(&|s| s.related_to = vec![7, 99]).matches(f));
        assert!(!sel(&|s| s.related_to = vec![99]).matches(f));
        assert!(sel(&|s| s.pods = vec!["y/b".into()]).matches(f));
        assert!(sel(&|s| s.pods = vec!["a".into()]).matches(f));
        assert!(!sel(&|s| s.pods = vec!["x/b".into()]).matches(f));
        assert!(sel(&|s| s.namespaces = vec!["y".into()]).matches(f));
        assert!(sel(&|s| s.verdicts = vec!["DROPPED".into()]).matches(f));
        assert!(!sel(&|s| s.verdicts = vec!["FORWARDED".into()]).matches(f));
        assert!(sel(&|s| s.policies = vec![("y".into(), "deny-all".into())]).matches(f));
        assert!(!sel(&|s| s.policies = vec![("x".into(), "deny-all".into())]).matches(f));
        assert!(sel(&|s| s.ports = vec![80]).matches(f));
        assert!(sel(&|s| s.protocols = vec!["TCP".into()]).matches(f));
        assert!(
            !sel(&|s| {
                s.protocols = vec!["UDP".into()];
                s.ports = vec![80];
            })
            .matches(f)
        );
        let range = sel(&|s| s.since = Some("2024-05-01T10:00:01Z".parse().unwrap()));
        assert!(!range.in_range(time_of(&l)));
    }
}
