//! Change detection for every file the agent follows (the policy directory, the lab topology, the
//! verdict log's configuration): a cheap fingerprint of names, sizes, modification times and inodes,
//! compared on a short interval. No inotify: it works the same on bind mounts and on ConfigMap symlink
//! swaps (a swap changes the inode even when size and time happen to agree).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

/// Fingerprint of a file or of the YAML files in a directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>, u64)>);

impl Fingerprint {
    pub fn of(path: &Path) -> Self {
        let mut items = Vec::new();
        let mut add = |p: &Path| {
            if let Ok(m) = std::fs::metadata(p) {
                items.push((p.to_owned(), m.len(), m.modified().ok(), m.ino()));
            }
        };
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
                paths.sort();
                for p in paths {
                    add(&p);
                }
            }
        } else {
            add(path);
        }
        Self(items)
    }
}

/// Remembers a fingerprint and says when it changed.
#[derive(Debug)]
pub struct Watched {
    path: PathBuf,
    last: Fingerprint,
}

impl Watched {
    pub fn new(path: PathBuf) -> Self {
        let last = Fingerprint::of(&path);
        Self { path, last }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path changed since the last call (or since creation).
    pub fn changed(&mut self) -> bool {
        let now = Fingerprint::of(&self.path);
        if now == self.last {
            return false;
        }
        self.last = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_added_changed_and_removed_files() {
        let dir = std::env::temp_dir().join(format!("fg-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Watched::new(dir.clone());
        assert!(!w.changed());
        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        std::fs::write(dir.join("a.yaml"), "xy").unwrap();
        assert!(w.changed());
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(w.changed());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
