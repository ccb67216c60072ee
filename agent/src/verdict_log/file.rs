//! The log file on disk. Whole lines only: each write is one `write(2)` of complete lines to an
//! `O_APPEND` file, a failed or short write is truncated back to where it started, and a torn tail
//! left by a crash (SIGKILL in the middle of a write) is cut back to the last newline when the file is
//! opened again. Rotation happens between writes: the current file is renamed to a timestamped backup
//! (`verdicts-2024-05-01T10-20-30.123456.jsonl`, UTC, as Hubble's exporter names them), optionally
//! gzip-compressed by a background thread (`...jsonl.gz`), and backups beyond the limit are removed.
//! The names and the order of backups are `flowgate_proto::verdict_log_files`', which the exporter reads
//! by.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use flowgate_proto::verdict_log_files::compressed_path;
pub use flowgate_proto::verdict_log_files::{Backup, Naming};
use log::{info, warn};

use super::config::Rotation;

/// Temporary files a compression left behind (`<backup>.gz.tmp`), removed on open.
fn temp_files(naming: &Naming) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(naming.dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".tmp").is_some_and(|n| naming.parse_backup(n).is_some())
        })
        .map(|e| e.path())
        .collect()
}

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// Compresses rotated files one after another on its own thread, then prunes old backups.
struct Compressor {
    tx: Option<mpsc::Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl Compressor {
    fn start(naming: Naming, max_backups: Arc<AtomicUsize>, busy: Arc<AtomicBool>) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let thread = std::thread::Builder::new().name("verdict-log-gzip".into()).spawn(move || {
            for path in rx {
                busy.store(true, Ordering::Release);
                if let Err(e) = compress(&path) {
                    warn!("compressing {}: {e}; leaving it uncompressed", path.display());
                }
                prune(&naming, max_backups.load(Ordering::Relaxed));
                busy.store(false, Ordering::Release);
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `X` -> `X.gz` through `X.gz.tmp`; `X` is removed once `X.gz` is complete.
pub fn compress(path: &Path) -> io::Result<()> {
    let gz = compressed_path(path);
    let mut tmp_name = gz.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut input =
        io::BufReader::with_capacity(1 << 16, OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?);
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let mut encoder =
        flate2::write::GzEncoder::new(io::BufWriter::with_capacity(1 << 16, out), flate2::Compression::fast());
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
    std::fs::rename(&tmp, &gz)?;
    std::fs::remove_file(path)?;
    Ok(())
}

/// Removes the oldest backups beyond `keep`.
fn prune(naming: &Naming, keep: usize) {
    let backups = naming.backups();
    let excess = backups.len().saturating_sub(keep);
    for old in &backups[..excess] {
        // The plain file of a compressed backup may exist too (crash between steps): remove both.
        let plain = naming.backup_path(&old.stamp);
        let gz = compressed_path(&plain);
        for p in [plain, gz] {
            match std::fs::remove_file(&p) {
                Ok(()) => info!("removed old verdict log {}", p.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!("removing old verdict log {}: {e}", p.display()),
            }
        }
    }
}

/// Cuts a torn last line (no trailing newline) off `file`; returns the bytes removed.
fn repair_tail(file: &mut File, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    let mut first = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if first && chunk.last() == Some(&b'\n') {
            return Ok(0);
        }
        first = false;
        if let Some(pos) = chunk.iter().rposition(|b| *b == b'\n') {
            let keep = start + pos as u64 + 1;
            file.set_len(keep)?;
            return Ok(len - keep);
        }
        end = start;
    }
    file.set_len(0)?;
    Ok(len)
}

/// Why a write did not land; the caller counts its records as lost.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: only {written} of {wanted} bytes were written (disk full?)")]
    Short { path: PathBuf, written: usize, wanted: usize },
    /// After a rotation the new current file could not be created: nothing is written (never into the
    /// renamed backup) until it can.
    #[error("re-opening {path} after rotating it: {source}")]
    Reopen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub struct LogFile {
    path: PathBuf,
    naming: Naming,
    /// The current file; `None` after a rotation whose re-open failed (retried on every append).
    file: Option<File>,
    /// Bytes in the current file: everything up to here is whole lines.
    size: u64,
    rotation: Rotation,
    max_backups: Arc<AtomicUsize>,
    compressor: Option<Compressor>,
    compressing: Arc<AtomicBool>,
    last_stamp: i64,
    pub rotations: u64,
}

/// Opens the current file for appending, never through a symlink: one planted at the log's path would
/// have the agent (root) append to whatever file it names.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).read(true).mode(0o640).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Creates the log's directory (and missing parents) readable by its group only: verdicts name pods,
/// addresses and policies.
fn create_log_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)
}

impl LogFile {
    /// Opens (creating it and its directory) the current file, repairs a torn tail, finishes what a
    /// previous run left half done (temporary files, uncompressed backups) and prunes.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_log_dir(dir)?;
        }
        let mut file = open_append(path)?;
        let len = file.metadata()?.len();
        let cut = repair_tail(&mut file, len)?;
        if cut > 0 {
            warn!(
                "{}: removed a torn last line of {cut} bytes (the previous writer was killed mid-write)",
                path.display()
            );
        }
        let size = len - cut;
        let naming = Naming::new(path);
        for tmp in temp_files(&naming) {
            let _ = std::fs::remove_file(tmp);
        }
        let mut log = Self {
            path: path.to_owned(),
            naming,
            file: Some(file),
            size,
            rotation,
            max_backups: Arc::new(AtomicUsize::new(rotation.max_backups)),
            compressor: None,
            compressing: Arc::new(AtomicBool::new(false)),
            last_stamp: 0,
            rotations: 0,
        };
        // Plain backups whose compressed twin is complete, and plain ones waiting for compression.
        for backup in log.naming.backups() {
            let plain = log.naming.backup_path(&backup.stamp);
            if backup.compressed {
                let _ = std::fs::remove_file(plain);
            } else if rotation.compress {
                log.compress_later(plain)?;
            }
        }
        prune(&log.naming, rotation.max_backups);
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn rotation(&self) -> Rotation {
        self.rotation
    }

    pub fn set_rotation(&mut self, rotation: Rotation) {
        self.rotation = rotation;
        self.max_backups.store(rotation.max_backups, Ordering::Relaxed);
    }

    /// Whether the background compressor is idle (for tests and shutdown).
    pub fn compression_idle(&self) -> bool {
        !self.compressing.load(Ordering::Acquire)
    }

    fn compress_later(&mut self, path: PathBuf) -> io::Result<()> {
        if self.compressor.is_none() {
            self.compressor = Some(Compressor::start(
                self.naming.clone(),
                Arc::clone(&self.max_backups),
                Arc::clone(&self.compressing),
            )?);
        }
        self.compressing.store(true, Ordering::Release);
        if let Some(tx) = self.compressor.as_ref().and_then(|c| c.tx.as_ref()) {
            let _ = tx.send(path);
        }
        Ok(())
    }

    /// Whether writing `len` more bytes calls for a rotation first.
    pub fn needs_rotation(&self, len: usize) -> bool {
        self.size > 0 && self.size + len as u64 > self.rotation.max_size
    }

    /// Renames the current file to a timestamped backup and starts a new one.
    pub fn rotate(&mut self) -> io::Result<()> {
        // Strictly increasing stamps, so backups sort in rotation order even within a microsecond.
        let micros = now_micros().max(self.last_stamp + 1);
        self.last_stamp = micros;
        let (backup, _) = self.naming.backup_path_at(micros);
        std::fs::rename(&self.path, &backup)?;
        // From here on the open file is the backup: never write to it again, whether or not the new
        // current file can be created now (append retries).
        self.file = None;
        self.size = 0;
        self.rotations += 1;
        match open_append(&self.path) {
            Ok(file) => self.file = Some(file),
            Err(e) => {
                warn!("{}: re-opening after rotation: {e}; records are lost until it succeeds", self.path.display())
            }
        }
        if self.rotation.compress {
            self.compress_later(backup)?;
        } else {
            prune(&self.naming, self.rotation.max_backups);
        }
        Ok(())
    }

    /// Appends `lines` (complete lines) with one write. On failure the file is cut back to where it
    /// was, so it never holds part of a line.
    pub fn append(&mut self, lines: &[u8]) -> Result<(), WriteError> {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
        if lines.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            match open_append(&self.path) {
                Ok(file) => {
                    info!("{}: re-opened after rotation", self.path.display());
                    self.file = Some(file);
                }
                Err(source) => return Err(WriteError::Reopen { path: self.path.clone(), source }),
            }
        }
        let file = self.file.as_mut().expect("opened above");
        let result = file.write(lines);
        let error = match result {
            Ok(n) if n == lines.len() => {
                self.size += n as u64;
                return Ok(());
            }
            Ok(n) => WriteError::Short { path: self.path.clone(), written: n, wanted: lines.len() },
            Err(source) => WriteError::Io { path: self.path.clone(), source },
        };
        if let Err(e) = file.set_len(self.size) {
            // Cannot cut back: find the last whole line the slow way.
            warn!("{}: truncating after a failed write: {e}", self.path.display());
            let len = file.metadata().map(|m| m.len()).unwrap_or(self.size);
            if let Ok(cut) = repair_tail(file, len) {
                self.size = len - cut;
            }
        }
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fg-vlog-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_log_directory_is_made_for_its_group_only_and_symlinks_are_not_followed() {
        let d = dir("nofollow");
        let path = d.join("new").join("verdicts.jsonl");
        drop(LogFile::open(&path, Rotation::default()).unwrap());
        let mode = std::fs::metadata(d.join("new")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750, "{mode:o}");
        // A link planted where the log goes: refused, and the file it names is untouched.
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let link = d.join("linked.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = LogFile::open(&link, Rotation::default()).err().expect("refused");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A tmpfs with room for two inodes (its root and the log): after a rotation renames the log, the new
    /// current file cannot be created. Nothing may then go into the renamed backup; writes fail (and are
    /// counted lost by the writer) until a file can be created again.
    #[test]
    fn a_failed_reopen_after_rotation_never_writes_into_the_backup() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a tmpfs: run as root (make test)");
        let d = dir("reopen");
        let mount = |args: &[&str]| std::process::Command::new("mount").args(args).status().unwrap().success();
        assert!(mount(&["-t", "tmpfs", "-o", "size=1m,nr_inodes=2", "tmpfs", d.to_str().unwrap()]));
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _unmount = Unmount(d.clone());
        let path = d.join("verdicts.jsonl");
        let mut log = LogFile::open(&path, Rotation { max_size: 16, max_backups: 5, compress: false }).unwrap();
        log.append(b"{\"a\":1}\n").unwrap();
        log.rotate().unwrap();
        let backup = log.naming.backups().pop().expect("the rotated file").stamp;
        let backup = log.naming.backup_path(&backup);
        let err = log.append(b"{\"a\":2}\n").expect_err("no current file to write to");
        assert!(matches!(err, WriteError::Reopen { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), "{\"a\":1}\n", "the backup got nothing more");
        // Room again: the next write re-opens and lands in the new current file.
        std::fs::remove_file(&backup).unwrap();
        log.append(b"{\"a\":3}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":3}\n");
    }

    #[test]
    fn torn_tail_is_cut_on_open() {
        let d = dir("torn");
        let path = d.join("v.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let log = LogFile::open(&path, Rotation::default()).unwrap();
        assert_eq!(log.size(), 16);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"a\":2}\n");
        std::fs::write(&path, b"no newline at all").unwrap();
        drop(LogFile::open(&path, Rotation::default()).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn rotates_keeps_n_backups_and_compresses() {
        let d = dir("rot");
        let path = d.join("v.jsonl");
        let rotation = Rotation { max_size: 100, max_backups: 3, compress: true };
        let mut log = LogFile::open(&path, rotation).unwrap();
        let line = format!("{}\n", "x".repeat(39));
        for _ in 0..20 {
            if log.needs_rotation(line.len()) {
                log.rotate().unwrap();
            }
            log.append(line.as_bytes()).unwrap();
        }
        drop(log); // waits for the compressor
        let naming = Naming::new(&path);
        let backups = naming.backups();
        assert_eq!(backups.len(), 3, "{backups:?}");
        assert!(backups.iter().all(|b| b.compressed));
        for b in &backups {
            let mut text = String::new();
            flate2::read::GzDecoder::new(File::open(&b.path).unwrap()).read_to_string(&mut text).unwrap();
            assert_eq!(text, line.repeat(2));
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line.repeat(2));
        assert!(temp_files(&naming).is_empty());
    }
}
