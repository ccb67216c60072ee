//! The verdict log's files on disk: the contract between the agent, which writes and rotates them, and
//! `flowgate verdicts export`, which reads them without the agent. Kept in one place so both agree on the
//! default path, on how a backup is named (`verdicts-2024-05-01T10-20-30.123456.jsonl`, the rotation time
//! in UTC as Hubble's exporter names them, `.gz` appended once compressed) and on the order the files
//! were written in.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::civil;

/// Where the agent writes its verdict log unless told otherwise.
pub const DEFAULT_PATH: &str = "/var/log/flowgate/verdicts.jsonl";
/// Appended to a backup's name once it is gzip-compressed.
pub const COMPRESSED_SUFFIX: &str = ".gz";
/// Length of the timestamp in backup names: `2024-05-01T10-20-30.123456`.
pub const STAMP_LEN: usize = 26;

/// `2024-05-01T10-20-30.123456` (UTC) for microseconds since the epoch.
pub fn format_stamp(unix_micros: i64) -> String {
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let (year, month, day) = civil::from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem / 60) % 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}-{m:02}-{s:02}.{micros:06}")
}

/// The instant (microseconds since the epoch) of a backup stamp; `None` unless `stamp` is exactly what
/// [`format_stamp`] writes for some instant (so month 13, February 30 or hour 24 are not stamps). Cheap:
/// the agent checks every name in the log's directory after each rotation.
pub fn parse_stamp(stamp: &str) -> Option<i64> {
    let b = stamp.as_bytes();
    let shape = b.len() == STAMP_LEN
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 => *c == b'-',
            10 => *c == b'T',
            19 => *c == b'.',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    let field = |from: usize, to: usize| b[from..to].iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0'));
    let (year, month, day) = (field(0, 4), field(5, 7), field(8, 10));
    let (h, m, s, micros) = (field(11, 13), field(14, 16), field(17, 19), field(20, 26));
    let month = u32::try_from(month).ok().filter(|m| (1..=12).contains(m))?;
    let days = civil::to_days(year, month, 1);
    let days_in_month = if month == 12 { 31 } else { civil::to_days(year, month + 1, 1) - days };
    if !(1..=days_in_month).contains(&day) || h > 23 || m > 59 || s > 59 {
        return None;
    }
    Some(((days + day - 1) * 86_400 + h * 3600 + m * 60 + s) * 1_000_000 + micros)
}

/// `X` -> `X.gz`: where a backup goes once compressed.
pub fn compressed_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(COMPRESSED_SUFFIX);
    PathBuf::from(name)
}

/// How the current file's name splits around a backup's timestamp: `verdicts` + `.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naming {
    dir: PathBuf,
    stem: String,
    ext: String,
}

/// A rotated file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    /// `2024-05-01T10-20-30.123456`: sorts in rotation order.
    pub stamp: String,
    /// When it was rotated away, microseconds since the epoch.
    pub rotated_at_micros: i64,
    pub compressed: bool,
}

impl Naming {
    /// The naming of the log whose current file is `current`.
    pub fn new(current: &Path) -> Self {
        let dir = current.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let name = current.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (stem, ext) = match name.split_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
            _ => (name, String::new()),
        };
        Self { dir, stem, ext }
    }

    /// The directory that holds the current file and its backups.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The (uncompressed) backup with this stamp.
    pub fn backup_path(&self, stamp: &str) -> PathBuf {
        self.dir.join(format!("{}-{stamp}{}", self.stem, self.ext))
    }

    /// The backup name for a rotation at `unix_micros`, and its stamp.
    pub fn backup_path_at(&self, unix_micros: i64) -> (PathBuf, String) {
        let stamp = format_stamp(unix_micros);
        (self.backup_path(&stamp), stamp)
    }

    /// Whether `name` is a backup of this log; its stamp and whether it is compressed.
    pub fn parse_backup(&self, name: &str) -> Option<(String, bool)> {
        self.parse_backup_name(name).map(|(stamp, _, compressed)| (stamp.to_owned(), compressed))
    }

    /// The stamp, the rotation time and whether it is compressed, of a backup's file name.
    fn parse_backup_name<'a>(&self, name: &'a str) -> Option<(&'a str, i64, bool)> {
        let rest = name.strip_prefix(&self.stem)?.strip_prefix('-')?;
        let (rest, compressed) = match rest.strip_suffix(COMPRESSED_SUFFIX) {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let stamp = rest.strip_suffix(self.ext.as_str())?;
        parse_stamp(stamp).map(|micros| (stamp, micros, compressed))
    }

    /// One directory scan, added to `out`; a missing directory has no backups.
    fn scan_into(&self, out: &mut Vec<Backup>) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if let Some((stamp, rotated_at_micros, compressed)) = self.parse_backup_name(&name.to_string_lossy()) {
                out.push(Backup { path: entry.path(), stamp: stamp.to_owned(), rotated_at_micros, compressed });
            }
        }
        Ok(())
    }

    /// Rotation order, oldest first; a backup present both plain and compressed (the writer stopped
    /// between compressing and removing the plain file) is kept once, compressed.
    fn in_rotation_order(mut backups: Vec<Backup>) -> Vec<Backup> {
        backups.sort_by(|a, b| (&a.stamp, !a.compressed).cmp(&(&b.stamp, !b.compressed)));
        backups.dedup_by(|later, earlier| later.stamp == earlier.stamp);
        backups
    }

    /// Backups in rotation order, from one directory scan: the writer's view (the agent prunes from the
    /// thread that compresses, so no compression runs while it looks).
    pub fn scan_backups(&self) -> io::Result<Vec<Backup>> {
        let mut out = Vec::new();
        self.scan_into(&mut out)?;
        Ok(Self::in_rotation_order(out))
    }

    /// [`Self::scan_backups`], with a directory that cannot be read taken as one without backups.
    pub fn backups(&self) -> Vec<Backup> {
        self.scan_backups().unwrap_or_default()
    }

    /// Backups in rotation order for a reader that runs while the agent may be compressing: two scans,
    /// united. While a backup is compressed (`X.gz` appears, then `X` goes) a single directory scan can
    /// miss both names; once `X` is gone `X.gz` is complete and stays, so the second scan sees it.
    pub fn scan_backups_while_written(&self) -> io::Result<Vec<Backup>> {
        let mut out = Vec::new();
        self.scan_into(&mut out)?;
        self.scan_into(&mut out)?;
        Ok(Self::in_rotation_order(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_backups_round_trip() {
        let n = Naming::new(Path::new("/var/log/flowgate/verdicts.jsonl"));
        let (p, s) = n.backup_path_at(1_714_558_830_123_456);
        assert_eq!(p, Path::new("/var/log/flowgate/verdicts-2024-05-01T10-20-30.123456.jsonl"));
        assert_eq!(parse_stamp(&s), Some(1_714_558_830_123_456));
        assert_eq!(n.parse_backup("verdicts-2024-05-01T10-20-30.123456.jsonl"), Some((s.clone(), false)));
        assert_eq!(n.parse_backup("verdicts-2024-05-01T10-20-30.123456.jsonl.gz"), Some((s, true)));
        assert_eq!(compressed_path(&p), Path::new("/var/log/flowgate/verdicts-2024-05-01T10-20-30.123456.jsonl.gz"));
        for not_a_backup in [
            "verdicts.jsonl",
            "verdicts-2024-05-01.jsonl",
            "other-2024-05-01T10-20-30.123456.jsonl",
            "verdicts-2024-13-01T10-20-30.123456.jsonl",
            "verdicts-2024-02-30T10-20-30.123456.jsonl",
            "verdicts-2024-05-01T24-00-00.000000.jsonl",
            "verdicts-2024-05-01T10-20-30.123456.jsonl.gz.tmp",
        ] {
            assert_eq!(n.parse_backup(not_a_backup), None, "{not_a_backup}");
        }
        assert_eq!(format_stamp(0), "1970-01-01T00-00-00.000000");
        for micros in [0, 951_782_400_000_001, 1_709_164_800_999_999, 4_102_444_799_000_000] {
            assert_eq!(parse_stamp(&format_stamp(micros)), Some(micros), "{}", format_stamp(micros));
        }
    }

    #[test]
    fn backups_in_rotation_order_compressed_preferred() {
        let dir = std::env::temp_dir().join(format!("fg-proto-vlog-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "verdicts-2024-05-01T10-20-31.000000.jsonl.gz",
            "verdicts-2024-05-01T10-20-30.123456.jsonl",
            "verdicts-2024-05-01T10-20-31.000000.jsonl",
            "verdicts-garbage.jsonl",
            "other-2024-05-01T10-20-30.123456.jsonl",
            "verdicts.jsonl",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let backups = Naming::new(&dir.join("verdicts.jsonl")).scan_backups_while_written().unwrap();
        let names: Vec<String> =
            backups.iter().map(|b| b.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["verdicts-2024-05-01T10-20-30.123456.jsonl", "verdicts-2024-05-01T10-20-31.000000.jsonl.gz"]
        );
        assert_eq!(backups[1].rotated_at_micros, 1_714_558_831_000_000);
        assert!(Naming::new(&dir.join("missing/verdicts.jsonl")).scan_backups().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
