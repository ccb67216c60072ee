//! The verdict log's configuration file (`--verdict-log-config`): include and exclude filters as in
//! Hubble's flow exporter, and the rotation settings. Every key is optional; what the file leaves out
//! comes from the command line. The filters are `flowgate_proto::filter`'s model, read straight from
//! the YAML (the keys and value spellings of `flowgate monitor`'s flags, an unknown key refused), so a
//! filter here means what it means on the command line. Pure: parsing and validation only.

use std::path::{Path, PathBuf};

use flowgate_proto::filter::{FlowFilter, StrictFilter};
use serde::Deserialize;

/// What goes into the log and how the file rotates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// Flows matching any of these (all flows when empty) ...
    pub include: Vec<FlowFilter>,
    /// ... and none of these are written.
    pub exclude: Vec<FlowFilter>,
    pub rotation: Rotation,
}

/// Size-based rotation into timestamped backups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The current file is rotated before a write would take it past this many bytes.
    pub max_size: u64,
    /// Rotated files kept; older ones are removed.
    pub max_backups: usize,
    /// Rotated files are gzip-compressed (in the background).
    pub compress: bool,
}

impl Default for Rotation {
    fn default() -> Self {
        Self { max_size: 100 << 20, max_backups: 5, compress: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: {field}: {problem}")]
    Invalid { path: PathBuf, field: String, problem: String },
}

/// The file as written by a person.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    include: Vec<StrictFilter>,
    #[serde(default)]
    exclude: Vec<StrictFilter>,
    max_size: Option<SizeValue>,
    max_backups: Option<usize>,
    compress: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn invalid(path: &Path, field: String, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: path.to_owned(), field, problem: problem.into() }
}

/// Parses a size: a number of bytes, or a number with a unit (`100MiB`, `10MB`, `512KiB`, `1GiB`, `64k`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 100MiB, 10MB, 65536)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!("{text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"));
        }
    };
    let bytes = (number * factor as f64).round();
    if !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{text:?}: the size must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Reads `path` and applies it over `base` (the command line's settings).
pub fn load(path: &Path, base: &LogSettings) -> Result<LogSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(path, &text, base)
}

/// Parses the text of a configuration file over `base`.
pub fn parse(path: &Path, text: &str, base: &LogSettings) -> Result<LogSettings, ConfigError> {
    let file: ConfigFile = if text.trim().is_empty() {
        ConfigFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml { path: path.to_owned(), source })?
    };
    let mut settings = base.clone();
    settings.include = file.include.into_iter().map(|f| f.0).collect();
    settings.exclude = file.exclude.into_iter().map(|f| f.0).collect();
    if let Some(size) = file.max_size {
        settings.rotation.max_size = match size {
            SizeValue::Bytes(0) => {
                return Err(invalid(path, "max_size".into(), "must be at least one byte"));
            }
            SizeValue::Bytes(n) => n,
            SizeValue::Text(t) => parse_size(&t).map_err(|e| invalid(path, "max_size".into(), e))?,
        };
    }
    if let Some(n) = file.max_backups {
        settings.rotation.max_backups = n;
    }
    if let Some(c) = file.compress {
        settings.rotation.compress = c;
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use flowgate_proto::flow::{EventType, Protocol, Verdict};

    use super::*;

    fn base() -> LogSettings {
        LogSettings { include: Vec::new(), exclude: Vec::new(), rotation: Rotation::default() }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn filters_and_rotation_override_the_command_line() {
        let text = "
include:
  - verdicts: [denied]
    namespaces: [x]
  - event_types: [drop]
exclude:
  - pods: [x/debug]
    protocols: [udp]
max_size: 1MiB
compress: true
";
        let s = parse(Path::new("c.yaml"), text, &base()).unwrap();
        assert_eq!(s.include.len(), 2);
        assert_eq!(s.include[0].verdicts, vec![Verdict::Dropped]);
        assert_eq!(s.include[1].event_types, vec![EventType::Drop]);
        assert_eq!(s.exclude[0].protocols, vec![Protocol::Udp]);
        assert_eq!(s.rotation, Rotation { max_size: 1 << 20, max_backups: 5, compress: true });
    }

    #[test]
    fn errors_say_where() {
        let e = parse(Path::new("c.yaml"), "include:\n  - verdicts: [maybe]\n", &base()).unwrap_err();
        assert!(e.to_string().starts_with("c.yaml: include[0].verdicts[0]: unknown verdict"), "{e}");
        let e = parse(Path::new("c.yaml"), "include:\n  - colour: red\n", &base()).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse(Path::new("c.yaml"), "max_size: lots\n", &base()).unwrap_err();
        assert!(e.to_string().starts_with("c.yaml: max_size:"), "{e}");
        assert_eq!(parse(Path::new("c.yaml"), "", &base()).unwrap(), base());
    }

    #[test]
    fn aliases_and_hubble_spellings_read_into_the_filter_model() {
        let text = "
include:
  - type: [policy-verdict, DROP]
    verdict: [FORWARDED, denied, AUDIT]
    namespace: [x]
    pod: [web, y/db-]
    label: ['k8s:app in (web, db)']
    port: [80]
    protocol: [TCP, ICMPv4]
    policy: [x/deny-all, allow-dns]
    from: [1]
    to: [2]
    related_to: [3]
";
        let s = parse(Path::new("c.yaml"), text, &base()).unwrap();
        let text = "
include:
  - event_types: [policy-verdict, drop]
    verdicts: [allowed, dropped, audit]
    namespaces: [x]
    pods: [/web, y/db-]
    labels: ['k8s:app in (web,db)']
    ports: [80]
    protocols: [tcp, icmp]
    policies: [x/deny-all, /allow-dns]
    from_endpoint: [1]
    to_endpoint: [2]
    related_to: [3]
";
        let canonical = parse(Path::new("c.yaml"), text, &base()).unwrap();
        assert_eq!(s, canonical);
        let f = &s.include[0];
        assert_eq!(f.verdicts, [Verdict::Forwarded, Verdict::Dropped, Verdict::Audit]);
        assert_eq!(f.event_types, [EventType::PolicyVerdict, EventType::Drop]);
        assert_eq!(f.protocols, [Protocol::Tcp, Protocol::Icmp]);
        assert_eq!(f.pods.iter().map(ToString::to_string).collect::<Vec<_>>(), ["web", "y/db-"]);
        assert_eq!(f.policies[1].to_string(), "allow-dns");
    }

    #[test]
    fn a_bad_value_names_its_field_and_line() {
        for (text, field, problem) in [
            ("exclude:\n  - protocol: [gre]\n", "exclude[0].protocol[0]", "unknown protocol \"gre\""),
            ("include:\n  - {}\n  - type: [packet]\n", "include[1].type[0]", "unknown event type \"packet\""),
            ("include:\n  - pods: [a/b/c]\n", "include[0].pods[0]", "pod \"a/b/c\": more than one `/`"),
            ("include:\n  - policies: [x/]\n", "include[0].policies[0]", "policy \"x/\": no name"),
            ("include:\n  - labels: ['a in b']\n", "include[0].labels[0]", "label selector \"a in b\""),
            ("include:\n  - ports: [http]\n", "include[0].ports[0]", "invalid type: string \"http\""),
        ] {
            let e = parse(Path::new("c.yaml"), text, &base()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("c.yaml: {field}: {problem}")), "{e}");
            assert!(e.contains(" at line "), "{e}");
        }
    }
}
