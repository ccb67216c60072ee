//! Which records an export keeps: a time range, and the flow filters of `flowgate_proto::filter`.
//! Each flow line is read back into the flow it was written from (`hubble::read_flow`) and decided by
//! the same code as `flowgate monitor` and the verdict log's include/exclude, so a flag means the same
//! live and in an export. Pure.

use flowgate_proto::{
    filter::FilterSet,
    hubble::{self, ReadError},
};
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
    now.checked_sub(SignedDuration::from_secs(total)).map_err(|_| bad_time(text))
}

fn bad_time(text: &str) -> String {
    format!("{text:?} is not a time: use RFC 3339 (2024-05-01T10:00:00Z) or an age (30m, 2h, 1d, 1h30m)")
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
    line.get("time").or_else(|| line.get("flow").and_then(|f| f.get("time")))?.as_str()?.parse().ok()
}

/// Which records an export keeps: those in the time range whose flow passes the filters.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// The command line's filter, compiled; empty when no filter flag was given.
    pub filters: FilterSet,
}

impl Selection {
    /// Whether a time is inside the range (a record without a time is inside only when no range is set).
    pub fn in_range(&self, time: Option<Timestamp>) -> bool {
        match time {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u),
            None => self.since.is_none() && self.until.is_none(),
        }
    }

    /// Whether the flow (the object under `flow`) passes the filters: read back into a `Flow` and
    /// decided by the filter model's own code. Without filters nothing needs reading; a flow that
    /// cannot be read when there are is an error, for the caller to report.
    pub fn keeps(&self, flow: &Value) -> Result<bool, ReadError> {
        if self.filters.is_empty() {
            return Ok(true);
        }
        Ok(self.filters.matches(&hubble::read_flow(flow)?))
    }
}

#[cfg(test)]
mod tests {
    use flowgate_proto::filter::FlowFilter;
    use serde_json::json;

    use super::*;

    fn line() -> Value {
        json!({
            "flow": {
                "time": "2024-05-01T10:00:00.5Z",
                "verdict": "DROPPED",
                "event_type": {"type": 5},
                "traffic_direction": "INGRESS",
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
        assert_eq!(parse_time("2h", now).unwrap().to_string(), "2024-05-01T10:00:00Z");
        assert_eq!(parse_time("1h30m", now).unwrap().to_string(), "2024-05-01T10:30:00Z");
        assert_eq!(parse_time("2024-05-01T12:00:00+02:00", now).unwrap().to_string(), "2024-05-01T10:00:00Z");
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("10", now).is_err());
        assert_eq!(time_of(&line()).unwrap().to_string(), "2024-05-01T10:00:00.5Z");
    }

    /// The same filter as the flags would build, as text.
    fn selection(filter: &str) -> Selection {
        let filter: FlowFilter = serde_json::from_str(filter).unwrap();
        Selection { filters: FilterSet::compile(&[filter], &[]), ..Selection::default() }
    }

    #[test]
    fn filters() {
        let l = line();
        let Record::Flow(f) = classify(&l) else { panic!() };
        let keeps = |filter: &str| selection(filter).keeps(f).unwrap();
        assert!(Selection::default().keeps(f).unwrap());
        assert!(keeps(r#"{"related_to": [7, 99]}"#));
        assert!(!keeps(r#"{"related_to": [99]}"#));
        assert!(keeps(r#"{"pods": ["y/b"]}"#));
        assert!(keeps(r#"{"pods": ["a"]}"#));
        assert!(!keeps(r#"{"pods": ["x/b"]}"#));
        assert!(keeps(r#"{"namespaces": ["y"]}"#));
        assert!(keeps(r#"{"verdicts": ["DROPPED"]}"#));
        assert!(!keeps(r#"{"verdicts": ["FORWARDED"]}"#));
        assert!(keeps(r#"{"policies": ["y/deny-all"]}"#));
        assert!(!keeps(r#"{"policies": ["x/deny-all"]}"#));
        assert!(keeps(r#"{"ports": [80]}"#));
        assert!(keeps(r#"{"protocols": ["TCP"]}"#));
        assert!(!keeps(r#"{"protocols": ["UDP"], "ports": [80]}"#));
        let range = Selection { since: Some("2024-05-01T10:00:01Z".parse().unwrap()), ..Selection::default() };
        assert!(!range.in_range(time_of(&l)));
    }

    #[test]
    fn pods_are_name_prefixes_in_any_namespace_as_in_the_monitor() {
        let l = line();
        let Record::Flow(f) = classify(&l) else { panic!() };
        let mut longer = f.clone();
        longer["destination"]["pod_name"] = "b-7d9f".into();
        for (filter, keeps) in
            [(r#"{"pods": ["y/b"]}"#, true), (r#"{"pods": ["b-"]}"#, true), (r#"{"pods": ["y/c"]}"#, false)]
        {
            assert_eq!(selection(filter).keeps(&longer).unwrap(), keeps, "{filter}");
        }
    }

    #[test]
    fn a_flow_that_cannot_be_read_is_an_error_only_when_filtering() {
        let mut l = line();
        l["flow"]["verdict"] = "TRANSLATED".into();
        let Record::Flow(f) = classify(&l) else { panic!() };
        assert!(Selection::default().keeps(f).unwrap(), "no filter: kept as it is");
        let e = selection(r#"{"ports": [80]}"#).keeps(f).unwrap_err();
        assert_eq!(e.to_string(), "`verdict` is \"TRANSLATED\", expected FORWARDED, DROPPED or AUDIT");
    }
}
