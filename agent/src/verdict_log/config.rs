//! The verdict log's configuration file (`--verdict-log-config`): include and exclude filters as in
//! Hubble's flow exporter, and the rotation settings. Every key is optional; what the file leaves out
//! comes from the command line. Pure: parsing and validation only.

use std::path::{Path, PathBuf};

use flowgate_proto::{
    filter::{FlowFilter, LabelSelector},
    flow::{EventType, Protocol, Verdict},
};
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
        Self {
            max_size: 100 << 20,
            max_backups: 5,
            compress: false,
        }
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
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

/// The file as written by a person.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    include: Vec<FilterSpec>,
    #[serde(default)]
    exclude: Vec<FilterSpec>,
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

/// One filter, with the names `flowgate monitor` uses on its command line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FilterSpec {
    #[serde(default)]
    related_to: Vec<u16>,
    #[serde(default)]
    from_endpoint: Vec<u16>,
    #[serde(default)]
    to_endpoint: Vec<u16>,
    /// `policy-verdict`, `drop`, `trace`.
    #[serde(default, alias = "type")]
    event_types: Vec<String>,
    /// `allowed`, `denied`, `audit` (or Hubble's `FORWARDED`, `DROPPED`, `AUDIT`).
    #[serde(default, alias = "verdict")]
    verdicts: Vec<String>,
    #[serde(default, alias = "namespace")]
    namespaces: Vec<String>,
    /// `namespace/name`.
    #[serde(default, alias = "pod")]
    pods: Vec<String>,
    /// Kubernetes label selectors, e.g. `app=db,tier in (a,b)`.
    #[serde(default, alias = "label")]
    labels: Vec<String>,
    #[serde(default, alias = "port")]
    ports: Vec<u16>,
    #[serde(default, alias = "protocol")]
    protocols: Vec<String>,
}

fn invalid(path: &Path, field: String, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        field,
        problem: problem.into(),
    }
}

impl FilterSpec {
    fn into_filter(self, path: &Path, at: &str) -> Result<FlowFilter, ConfigError> {
        let parse_all = |field: &str, values: &[String], f: &dyn Fn(&str) -> Result<(), String>| {
            for (i, v) in values.iter().enumerate() {
                f(v).map_err(|e| invalid(path, format!("{at}.{field}[{i}]"), e))?;
            }
            Ok::<(), ConfigError>(())
        };
        parse_all("event_types", &self.event_types, &|v| {
            v.parse::<EventType>().map(drop)
        })?;
        parse_all("verdicts", &self.verdicts, &|v| {
            v.parse::<Verdict>().map(drop)
        })?;
        parse_all("protocols", &self.protocols, &|v| {
            v.parse::<Protocol>().map(drop)
        })?;
        parse_all("labels", &self.labels, &|v| {
            LabelSelector::parse(v).map(drop).map_err(|e| e.to_string())
        })?;
        parse_all("pods", &self.pods, &|v| {
            if v.split_once('/')
                .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty())
            {
                Ok(())
            } else {
                Err(format!("{v:?}: write pods as namespace/name"))
            }
        })?;
        Ok(FlowFilter {
            related_to: self.related_to,
            from_endpoint: self.from_endpoint,
            to_endpoint: self.to_endpoint,
            event_types: self
                .event_types
                .iter()
                .filter_map(|v| v.parse().ok())
                .collect(),
            verdicts: self
                .verdicts
                .iter()
                .filter_map(|v| v.parse().ok())
                .collect(),
            namespaces: self.namespaces,
            pods: self.pods,
            labels: self
                .labels
                .iter()
                .filter_map(|v| LabelSelector::parse(v).ok())
                .collect(),
            ports: self.ports,
            protocols: self
                .protocols
                .iter()
                .filter_map(|v| v.parse().ok())
                .collect(),
        })
    }
}

/// Parses a size: a number of bytes, or a number with a unit (`100MiB`, `10MB`, `512KiB`, `1GiB`, `64k`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 100MiB, 10MB, 65536)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
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
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, base)
}

/// Parses the text of a configuration file over `base`.
pub fn parse(path: &Path, text: &str, base: &LogSettings) -> Result<LogSettings, ConfigError> {
    let file: ConfigFile = if text.trim().is_empty() {
        ConfigFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
            path: path.to_owned(),
            source,
        })?
    };
    let mut settings = base.clone();
    settings.include = file
        .include
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.into_filter(path, &format!("include[{i}]")))
        .collect::<Result<_, _>>()?;
    settings.exclude = file
        .exclude
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.into_filter(path, &format!("exclude[{i}]")))
        .collect::<Result<_, _>>()?;
    if let Some(size) = file.max_size {
        settings.rotation.max_size = match size {
            SizeValue::Bytes(0) => {
                return Err(invalid(
                    path,
                    "max_size".into(),
                    "must be at least one byte",
                ));
            }
            SizeValue::Bytes(n) => n,
            SizeValue::Text(t) => {
                parse_size(&t).map_err(|e| invalid(path, "max_size".into(), e))?
            }
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
    use super::*;

    fn base() -> LogSettings {
        LogSettings {
            include: Vec::new(),
            exclude: Vec::new(),
            rotation: Rotation::default(),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert!(parse_size("0").is_err());
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
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
        assert_eq!(
            s.rotation,
            Rotation {
                max_size: 1 << 20,
                max_backups: 5,
                compress: true
            }
        );
    }

    #[test]
    fn errors_say_where() {
        let e = parse(
            Path::new("c.yaml"),
            "include:\n  - verdicts: [maybe]\n",
            &base(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.yaml: include[0].verdicts[0]: unknown verdict"),
            "{e}"
        );
        let e = parse(Path::new("c.yaml"), "include:\n  - colour: red\n", &base()).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse(Path::new("c.yaml"), "max_size: lots\n", &base()).unwrap_err();
        assert!(e.to_string().starts_with("c.yaml: max_size:"), "{e}");
        assert_eq!(parse(Path::new("c.yaml"), "", &base()).unwrap(), base());
    }
}
