//! Change detection for every file the agent follows (the policy directory, the lab topology, the
//! verdict log's configuration). Two parts: a [`Fingerprint`] of names, sizes, modification times and
//! inodes is the truth of "did it change" (a ConfigMap's `..data` symlink swap changes the inode even
//! when size and time happen to agree), and a [`ChangeNotifier`] (inotify on the directories that hold
//! the followed paths) says *when* to compare, so a change is taken as soon as it is written instead of
//! at the next poll. Watching the directory, not the files, sees editors' rename-into-place and
//! ConfigMap swaps, which replace the file under a watch on the file itself. Polling remains only as a
//! fallback: at the caller's interval where inotify cannot be set up (no instance or watch left), and as
//! a slow re-check where it is, for file systems whose changes inotify never reports (NFS, FUSE, a
//! file changed on the other side of a bind mount's host).

use std::{
    os::{
        fd::{AsFd as _, AsRawFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::SystemTime,
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::{Interest, unix::AsyncFd};

/// Whether a directory entry is one the policy loader reads (`flowgate_policy::load_dir`): `*.yaml` or
/// `*.yml`, not hidden. Editors' swap files, `.name.tmp` files written before a rename, and a
/// ConfigMap's `..data` and `..<timestamp>` entries are not; a change to them alone is no change (a
/// ConfigMap swap still changes what the visible `name.yaml -> ..data/name.yaml` links resolve to).
fn is_policy_file_name(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml")) && !name.starts_with('.')
}

/// Fingerprint of a file or of the policy files in a directory.
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
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .filter(|e| is_policy_file_name(&e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect();
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

/// Why change notification could not be set up (the caller then polls).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("creating an inotify instance (fs.inotify.max_user_instances may be exhausted)")]
    Init {
        #[source]
        source: nix::Error,
    },
    #[error("watching {} with inotify (fs.inotify.max_user_watches may be exhausted)", dir.display())]
    AddWatch {
        dir: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("registering the inotify descriptor with the runtime")]
    Register {
        #[source]
        source: std::io::Error,
    },
    #[error("reading inotify events")]
    Read {
        #[source]
        source: nix::Error,
    },
}

/// The inotify descriptor, as the runtime's reactor needs it.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// What changes a directory watch reports: a file written and closed, created, removed, renamed in or
/// out (rename-into-place, the `..data` swap of a ConfigMap volume), or its metadata changed (chmod,
/// touch); and the directory itself removed or moved. Plain `IN_MODIFY` is left out on purpose: a file
/// being written is read once it is closed, not half-way.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

/// The directory whose entries decide what `path` reads as: the path itself when it is a directory (the
/// policy directory), else its parent (a file is replaced by renames and symlink swaps in its parent).
fn watched_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_owned();
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Wakes its owner when something changed in the directories of the followed paths. It only says that
/// it is worth comparing [`Fingerprint`]s now; it never says what changed. A change to a hidden entry
/// alone (`.name.tmp` written before a rename into place, an editor's swap file) wakes no one: no
/// fingerprint holds one, unless it is a followed file itself; a ConfigMap's `..data` entries do wake.
/// So a rename into place costs one comparison, made once the file is in place.
pub struct ChangeNotifier {
    fd: AsyncFd<InotifyFd>,
    dirs: Vec<PathBuf>,
    /// The names of the followed paths that are files (a hidden one among them still wakes).
    files: Vec<std::ffi::OsString>,
}

/// Whether an event on the entry `name` of a watched directory (`None`: the directory itself, or the
/// queue overflowed) may change a fingerprint of `files` or of a followed directory.
fn concerns(name: Option<&std::ffi::OsStr>, files: &[std::ffi::OsString]) -> bool {
    let Some(name) = name else { return true };
    let text = name.to_string_lossy();
    !text.starts_with('.') || text.starts_with("..") || files.iter().any(|file| file == name)
}

impl std::fmt::Debug for ChangeNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeNotifier").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

impl ChangeNotifier {
    /// Watches the directories of `paths` (see [`watched_dir`]). Must be called inside a tokio runtime.
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<Self, NotifyError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|source| NotifyError::Init { source })?;
        let paths: Vec<&Path> = paths.into_iter().collect();
        let files = paths.iter().filter(|p| !p.is_dir()).filter_map(|p| p.file_name()).map(ToOwned::to_owned).collect();
        let mut dirs: Vec<PathBuf> = paths.into_iter().map(watched_dir).collect();
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            inotify
                .add_watch(dir, watch_mask())
                .map_err(|source| NotifyError::AddWatch { dir: dir.clone(), source })?;
        }
        // SAFETY: the descriptor is owned by the `Inotify` inside the `AsyncFd`, so it stays open for as
        // long as the registration lives and is closed only when both are dropped together.
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
            .map_err(|source| NotifyError::Register { source: source.into() })?;
        Ok(Self { fd, dirs, files })
    }

    /// The directories being watched.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Waits until at least one change that concerns the followed paths was reported, and takes every
    /// report queued by then (a burst of writes wakes the owner once or a few times, not once per event).
    pub async fn changed(&mut self) -> Result<(), NotifyError> {
        let files = &self.files;
        let concern = |events: &[nix::sys::inotify::InotifyEvent]| {
            events.iter().any(|event| concerns(event.name.as_deref(), files))
        };
        loop {
            let mut guard = self.fd.readable_mut().await.map_err(|source| NotifyError::Register { source })?;
            match guard.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => {
                    // Take what else is already queued, so that one burst is one wake-up.
                    let mut concerned = concern(&events);
                    while let Ok(more) = guard.get_inner().0.read_events()
                        && !more.is_empty()
                    {
                        concerned |= concern(&more);
                    }
                    guard.clear_ready();
                    if concerned {
                        return Ok(());
                    }
                }
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(source) => return Err(NotifyError::Read { source }),
            }
        }
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

    /// A fresh directory under the temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("fg-watch-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Within this time a notification must arrive. No polling is involved in [`ChangeNotifier`]:
    /// nothing but inotify can wake it.
    const NOTICE: std::time::Duration = std::time::Duration::from_secs(5);

    async fn notices(notifier: &mut ChangeNotifier) -> bool {
        tokio::time::timeout(NOTICE, notifier.changed()).await.is_ok_and(|r| r.is_ok())
    }

    /// Nothing queued: a change that happened before is taken, then the notifier waits.
    async fn quiet(notifier: &mut ChangeNotifier) -> bool {
        while tokio::time::timeout(std::time::Duration::from_millis(50), notifier.changed()).await.is_ok() {}
        tokio::time::timeout(std::time::Duration::from_millis(200), notifier.changed()).await.is_err()
    }

    #[tokio::test]
    async fn a_file_written_in_the_directory_is_noticed_without_polling() {
        let dir = TempDir::new("write");
        let mut watched = Watched::new(dir.0.clone());
        let mut notifier = ChangeNotifier::new([dir.0.as_path()]).unwrap();
        assert!(quiet(&mut notifier).await, "nothing changed yet");
        std::fs::write(dir.0.join(".a.yaml.tmp"), "x").unwrap();
        assert!(quiet(&mut notifier).await, "a hidden temporary file is not a policy file: no wake-up");
        assert!(!watched.changed(), "a hidden temporary file is not a policy file");
        std::fs::rename(dir.0.join(".a.yaml.tmp"), dir.0.join("b.yaml")).unwrap();
        assert!(notices(&mut notifier).await, "the rename into place was not noticed");
        assert!(watched.changed());
        std::fs::write(dir.0.join("a.yaml"), "x").unwrap();
        assert!(notices(&mut notifier).await, "a new file was not noticed");
        assert!(watched.changed());
        std::fs::write(dir.0.join("a.yaml"), "xy").unwrap();
        assert!(notices(&mut notifier).await, "a rewritten file was not noticed");
        assert!(watched.changed());
    }

    #[tokio::test]
    async fn an_editors_rename_into_place_is_noticed() {
        let dir = TempDir::new("rename");
        let tmp = TempDir::new("rename-tmp");
        std::fs::write(dir.0.join("policy.yaml"), "a").unwrap();
        let mut watched = Watched::new(dir.0.clone());
        let mut notifier = ChangeNotifier::new([dir.0.as_path()]).unwrap();
        // Written elsewhere (another directory, as some tools do), then renamed over the old file:
        // nothing is written or closed inside the watched directory.
        std::fs::write(tmp.0.join("policy.yaml.new"), "b").unwrap();
        assert!(quiet(&mut notifier).await);
        std::fs::rename(tmp.0.join("policy.yaml.new"), dir.0.join("policy.yaml")).unwrap();
        assert!(notices(&mut notifier).await, "rename-into-place was not noticed");
        assert!(watched.changed());
    }

    #[tokio::test]
    async fn a_followed_file_replaced_by_rename_is_noticed_through_its_directory() {
        let dir = TempDir::new("file");
        let file = dir.0.join("topology.yaml");
        std::fs::write(&file, "a").unwrap();
        let mut watched = Watched::new(file.clone());
        let mut notifier = ChangeNotifier::new([file.as_path()]).unwrap();
        assert_eq!(notifier.dirs(), std::slice::from_ref(&dir.0));
        // A followed file may be hidden itself: its changes wake.
        let hidden = dir.0.join(".hidden.yaml");
        std::fs::write(&hidden, "a").unwrap();
        let mut hidden_notifier = ChangeNotifier::new([hidden.as_path()]).unwrap();
        assert!(quiet(&mut hidden_notifier).await);
        std::fs::write(&hidden, "b").unwrap();
        assert!(notices(&mut hidden_notifier).await, "a change of a hidden followed file was not noticed");
        // An editor writes a swap file next to it (noticed: same directory), then renames it over.
        std::fs::write(dir.0.join(".topology.yaml.swp"), "b").unwrap();
        assert!(quiet(&mut notifier).await);
        assert!(!watched.changed(), "the followed file itself did not change yet");
        std::fs::rename(dir.0.join(".topology.yaml.swp"), &file).unwrap();
        assert!(notices(&mut notifier).await, "the rename over the followed file was not noticed");
        assert!(watched.changed());
    }

    /// A ConfigMap volume: `policy.yaml -> ..data/policy.yaml`, `..data -> ..<timestamp>`; an update
    /// writes a new timestamped directory, points `..data_tmp` at it and renames it over `..data`.
    #[tokio::test]
    async fn a_configmap_symlink_swap_is_noticed() {
        use std::os::unix::fs::symlink;
        let dir = TempDir::new("configmap");
        let d = &dir.0;
        std::fs::create_dir(d.join("..2026_12_05_00_00_00.1")).unwrap();
        std::fs::write(d.join("..2026_12_05_00_00_00.1/policy.yaml"), "a").unwrap();
        symlink("..2026_12_05_00_00_00.1", d.join("..data")).unwrap();
        symlink("..data/policy.yaml", d.join("policy.yaml")).unwrap();
        let mut watched = Watched::new(d.clone());
        let mut notifier = ChangeNotifier::new([d.as_path()]).unwrap();
        assert!(quiet(&mut notifier).await);
        // The kubelet's atomic writer: the new payload, then the swap.
        std::fs::create_dir(d.join("..2026_12_05_00_01_00.2")).unwrap();
        std::fs::write(d.join("..2026_12_05_00_01_00.2/policy.yaml"), "a").unwrap();
        symlink("..2026_12_05_00_01_00.2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert!(notices(&mut notifier).await, "the ..data swap was not noticed");
        // Same size, maybe the same second: the inode of what policy.yaml resolves to tells.
        assert!(watched.changed(), "the swap did not change the fingerprint");
    }
}
