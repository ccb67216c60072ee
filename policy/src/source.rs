//! Loads NetworkPolicy objects from a directory of YAML files (`*.yaml`/`*.yml`, several `---` documents
//! each), validates them, and reports every problem found with its file and document, never only the first.
//!
//! This is the crate's only IO. Hidden files (names starting with `.`, such as a ConfigMap mount's `..data`)
//! and subdirectories are skipped.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use k8s_openapi::{Resource, api::networking::v1::NetworkPolicy};
use serde::{Deserialize, Serialize};

use crate::{plan::PolicyRef, validate::FieldError};

/// The namespace a policy without `metadata.namespace` lands in (as `kubectl apply` would put it).
pub const DEFAULT_NAMESPACE: &str = "default";

/// A line and column (1-based) in a YAML file, as serde_yaml reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Renders `line L column C: ` or nothing.
struct At(Option<Location>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(Location { line, column }) => write!(f, "line {line} column {column}: "),
            None => Ok(()),
        }
    }
}

/// One problem with the policy sources. Displays as `<file>: document <n>: <what is wrong>`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: cannot read the policy directory: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot read the file: {source}", file.display())]
    ReadFile {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: document {document}: {}YAML syntax error: {message}", file.display(), At(*location))]
    Syntax { file: PathBuf, document: usize, location: Option<Location>, message: String },
    #[error("{}: document {document}: {}not a valid NetworkPolicy: {message}", file.display(), At(*location))]
    Decode { file: PathBuf, document: usize, location: Option<Location>, message: String },
    #[error("{}: document {document}: expected a mapping (a NetworkPolicy object), found {found}", file.display())]
    NotAnObject { file: PathBuf, document: usize, found: &'static str },
    #[error("{}: document {document}: kind: required value (expected NetworkPolicy)", file.display())]
    MissingKind { file: PathBuf, document: usize },
    #[error("{}: document {document}: kind: only NetworkPolicy is supported, found {kind:?}", file.display())]
    WrongKind { file: PathBuf, document: usize, kind: String },
    #[error(
        "{}: document {document}: apiVersion: expected \"networking.k8s.io/v1\", found {}",
        file.display(),
        api_version.as_deref().map_or_else(|| "nothing".to_owned(), |v| format!("{v:?}"))
    )]
    WrongApiVersion { file: PathBuf, document: usize, api_version: Option<String> },
    #[error("{}: document {document}: {error}", file.display())]
    Invalid {
        file: PathBuf,
        document: usize,
        #[source]
        error: FieldError,
    },
    #[error(
        "{}: document {document}: metadata.name: NetworkPolicy {namespace}/{name} is already defined in {}: document {first_document}",
        file.display(),
        first_file.display()
    )]
    Duplicate {
        file: PathBuf,
        document: usize,
        namespace: String,
        name: String,
        first_file: PathBuf,
        first_document: usize,
    },
}

/// A parsed policy and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadedPolicy {
    /// The file as found (the directory given to [`load_dir`] joined with the file name).
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file (empty documents count).
    pub document: usize,
    /// The object, with `metadata.namespace` defaulted.
    pub policy: NetworkPolicy,
}

impl LoadedPolicy {
    /// Wraps a policy that came from elsewhere (tests, the API server); the namespace is defaulted.
    #[must_use]
    pub fn new(file: impl Into<PathBuf>, document: usize, mut policy: NetworkPolicy) -> Self {
        default_namespace(&mut policy);
        Self { file: file.into(), document, policy }
    }

    #[must_use]
    pub fn namespace(&self) -> &str {
        self.policy.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        self.policy.metadata.name.as_deref().unwrap_or_default()
    }

    #[must_use]
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef::new(self.namespace(), self.name())
    }
}

fn default_namespace(policy: &mut NetworkPolicy) {
    if policy.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        policy.metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
}

/// Loads, parses and validates every policy file in `dir` (sorted by name). Either every policy, or every
/// error found in every file (including two documents defining the same namespace/name).
pub fn load_dir(dir: &Path) -> Result<Vec<LoadedPolicy>, Vec<SourceError>> {
    let policies = SourceCache::default().load_dir(dir)?;
    // A fresh cache holds no other reference, so nothing is copied.
    Ok(policies.into_iter().map(|p| Arc::try_unwrap(p).unwrap_or_else(|shared| (*shared).clone())).collect())
}

/// What identifies a file's contents without reading it: size, modification and change times, device and
/// inode (a ConfigMap's `..data` swap or an editor's rename-into-place gives a new inode). The same fields
/// (and the same limit: a rewrite in place within one timestamp tick, to the same size, is not seen) as
/// the agent's change detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    dev: u64,
    ino: u64,
}

impl FileStamp {
    fn of(metadata: &fs::Metadata) -> Self {
        Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// The policies of files that loaded without error, by file, with the stamp they were read at.
/// [`SourceCache::load_dir`] reads and parses only the files whose stamp changed (and those that had
/// errors), so a change to one file of a thousand costs one parse, not a thousand. The policies are
/// shared (`Arc`) with whoever keeps the set, so the cache holds no second copy.
#[derive(Debug, Default)]
pub struct SourceCache {
    files: BTreeMap<PathBuf, (FileStamp, Vec<Arc<LoadedPolicy>>)>,
}

impl SourceCache {
    /// [`load_dir`], reusing the parse of every file that did not change since the last call.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<Arc<LoadedPolicy>>, Vec<SourceError>> {
        let entries = fs::read_dir(dir).map_err(|source| vec![SourceError::ReadDir { dir: dir.to_owned(), source }])?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| vec![SourceError::ReadDir { dir: dir.to_owned(), source }])?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if !is_yaml || name.starts_with('.') {
                continue;
            }
            // fs::metadata follows symlinks (ConfigMap mounts link each key into ..data/).
            if let Ok(metadata) = fs::metadata(entry.path())
                && metadata.is_file()
            {
                files.push((name, FileStamp::of(&metadata)));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));

        let mut cached = std::mem::take(&mut self.files);
        let mut policies = Vec::new();
        let mut errors = Vec::new();
        for (name, stamp) in files {
            let file = dir.join(&name);
            if let Some((was, found)) = cached.remove(&file)
                && was == stamp
            {
                policies.extend(found.iter().cloned());
                self.files.insert(file, (stamp, found));
                continue;
            }
            match fs::read_to_string(&file) {
                Ok(text) => {
                    let (found, mut failed) = parse_str(&file, &text);
                    // Into a vector of their own size: `collect` would reuse the parsed vector's allocation
                    // in place and keep all of it (520 bytes a policy) for the pointers (8 bytes a policy),
                    // for as long as the file is cached: 8 MiB for a file of 10,000 policies.
                    let mut shared = Vec::with_capacity(found.len());
                    shared.extend(found.into_iter().map(Arc::new));
                    let found = shared;
                    policies.extend(found.iter().cloned());
                    // A file with errors is read again next time (its errors are reported every time).
                    if failed.is_empty() {
                        self.files.insert(file, (stamp, found));
                    }
                    errors.append(&mut failed);
                }
                Err(source) => errors.push(SourceError::ReadFile { file, source }),
            }
        }
        check_duplicates(&policies, &mut errors);
        if errors.is_empty() { Ok(policies) } else { Err(errors) }
    }
}

/// Parses and validates the documents of one file's text; `file` only labels results and errors.
#[must_use]
pub fn parse_str(file: &Path, text: &str) -> (Vec<LoadedPolicy>, Vec<SourceError>) {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                let (location, message) = split_location(&error);
                errors.push(SourceError::Syntax { file: file.to_owned(), document: number, location, message });
                // The parser cannot resynchronise after a syntax error; later documents are not read.
                break;
            }
        };
        match parse_document(file, text, index, value) {
            Ok(Some(policy)) => {
                let before = errors.len();
                errors.extend(validate_loaded(&policy));
                if errors.len() == before {
                    policies.push(policy);
                }
            }
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    (policies, errors)
}

fn validate_loaded(policy: &LoadedPolicy) -> impl Iterator<Item = SourceError> + '_ {
    crate::validate::validate(&policy.policy).into_iter().map(|error| SourceError::Invalid {
        file: policy.file.clone(),
        document: policy.document,
        error,
    })
}

/// One document: `None` when empty, else a typed policy or the reason it is not one.
fn parse_document(
    file: &Path,
    text: &str,
    index: usize,
    value: serde_yaml::Value,
) -> Result<Option<LoadedPolicy>, SourceError> {
    use serde_yaml::Value;
    let document = index + 1;
    let mapping = match &value {
        Value::Null => return Ok(None),
        Value::Mapping(mapping) => mapping,
        other => {
            return Err(SourceError::NotAnObject {
                file: file.to_owned(),
                document,
                found: match other {
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    Value::Sequence(_) => "a list",
                    _ => "a tagged value",
                },
            });
        }
    };
    match mapping.get("kind") {
        None | Some(Value::Null) => {
            return Err(SourceError::MissingKind { file: file.to_owned(), document });
        }
        Some(Value::String(kind)) if kind == NetworkPolicy::KIND => {}
        Some(other) => {
            return Err(SourceError::WrongKind { file: file.to_owned(), document, kind: scalar_text(other) });
        }
    }
    match mapping.get("apiVersion") {
        Some(Value::String(version)) if version == NetworkPolicy::API_VERSION => {}
        other => {
            return Err(SourceError::WrongApiVersion {
                file: file.to_owned(),
                document,
                api_version: other.map(scalar_text),
            });
        }
    }
    let policy = match serde_yaml::from_value::<NetworkPolicy>(value) {
        Ok(policy) => policy,
        Err(_) => {
            // Decode again from the text so the error carries its field path, line and column.
            let error = serde_yaml::Deserializer::from_str(text)
                .nth(index)
                .map(NetworkPolicy::deserialize)
                .and_then(Result::err);
            let (location, message) = error
                .as_ref()
                .map_or_else(|| (None, "does not match the NetworkPolicy schema".to_owned()), split_location);
            return Err(SourceError::Decode { file: file.to_owned(), document, location, message });
        }
    };
    Ok(Some(LoadedPolicy::new(file, document, policy)))
}

fn scalar_text(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(text) => text.clone(),
        other => serde_yaml::to_string(other).map(|s| s.trim_end().to_owned()).unwrap_or_default(),
    }
}

/// serde_yaml's message without its trailing ` at line L column C`, and that location.
fn split_location(error: &serde_yaml::Error) -> (Option<Location>, String) {
    let location = error.location().map(|l| Location { line: l.line(), column: l.column() });
    let mut message = error.to_string();
    if let Some(Location { line, column }) = location {
        let suffix = format!(" at line {line} column {column}");
        if let Some(at) = message.find(&suffix) {
            message.replace_range(at..at + suffix.len(), "");
        }
    }
    (location, message)
}

fn check_duplicates(policies: &[Arc<LoadedPolicy>], errors: &mut Vec<SourceError>) {
    let mut first: BTreeMap<(&str, &str), &LoadedPolicy> = BTreeMap::new();
    for policy in policies {
        let key = (policy.namespace(), policy.name());
        if let Some(original) = first.get(&key) {
            errors.push(SourceError::Duplicate {
                file: policy.file.clone(),
                document: policy.document,
                namespace: key.0.to_owned(),
                name: key.1.to_owned(),
                first_file: original.file.clone(),
                first_document: original.document,
            });
        } else {
            first.insert(key, &**policy);
        }
    }
}

#[cfg(test)]
mod tests;
