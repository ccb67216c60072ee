//! The verdict log's files in the order they were written: timestamped backups
//! (`verdicts-2024-05-01T10-20-30.123456.jsonl[.gz]`, oldest first), then the current file. Reading
//! is line by line with a reused buffer, gzip or plain, so memory stays constant whatever the size.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
};

use jiff::Timestamp;

/// Length of the timestamp in backup names, as the agent writes them.
const STAMP_LEN: usize = 26;

/// One file of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPart {
    pub path: PathBuf,
    pub compressed: bool,
    /// When the file was rotated away; `None` for the current file.
    pub rotated_at: Option<Timestamp>,
}

/// `2024-05-01T10-20-30.123456` -> the instant.
fn parse_stamp(stamp: &str) -> Option<Timestamp> {
    if stamp.len() != STAMP_LEN {
        return None;
    }
    let (date, time) = stamp.split_once('T')?;
    format!("{date}T{}Z", time.replacen('-', ":", 2))
        .parse()
        .ok()
}

/// One directory scan: (stamp, compressed, path) of every backup named `<stem>-<stamp><ext>[.gz]`.
fn scan_backups(dir: &Path, stem: &str, ext: &str) -> io::Result<Vec<(String, bool, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut backups = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(stem).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let (rest, compressed) = match rest.strip_suffix(".gz") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let Some(stamp) = rest.strip_suffix(ext) else {
            continue;
        };
        if parse_stamp(stamp).is_some() {
            backups.push((stamp.to_owned(), compressed, entry.path()));
        }
    }
    Ok(backups)
}

/// Backups of `current` in rotation order, then `current` itself if it exists. A backup present both
/// plain and compressed (the agent was stopped between the two steps) is read once, compressed.
pub fn parts(current: &Path) -> io::Result<Vec<LogPart>> {
    let dir = current
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = current
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = match name.split_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
        _ => (name.clone(), String::new()),
    };
    // Two scans, united: while the agent compresses a backup (`X.gz` appears, then `X` goes), a single
    // directory scan can miss both names. Once `X` is gone `X.gz` is complete and stays, so a second
    // scan after the first sees it.
    let mut backups = scan_backups(dir, &stem, &ext)?;
    backups.extend(scan_backups(dir, &stem, &ext)?);
    backups.sort_by(|a, b| (&a.0, !a.1).cmp(&(&b.0, !b.1)));
    backups.dedup_by(|later, earlier| later.0 == earlier.0);
    let mut out: Vec<LogPart> = backups
        .into_iter()
        .map(|(stamp, compressed, path)| LogPart {
            path,
            compressed,
            rotated_at: parse_stamp(&stamp),
        })
        .collect();
    if current.exists() {
        out.push(LogPart {
            path: current.to_owned(),
            compressed: false,
            rotated_at: None,
        });
    }
    Ok(out)
}

/// Reads a part line by line, counting lines.
pub struct LineReader {
    inner: BufReader<Box<dyn Read>>,
    pub line_number: u64,
}

impl LineReader {
    pub fn open(part: &LogPart) -> io::Result<Self> {
        let file = File::open(&part.path)?;
        let inner: Box<dyn Read> = if part.compressed {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        Ok(Self::new(inner))
    }

    pub fn new(inner: Box<dyn Read>) -> Self {
        Self {
            inner: BufReader::with_capacity(256 << 10, inner),
            line_number: 0,
        }
    }

    /// The next line into `buf` (cleared first, newline removed). `Ok(Some(true))`: a whole line;
    /// `Ok(Some(false))`: the last bytes of the file with no newline; `Ok(None)`: end of file.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
        buf.clear();
        let n = self.inner.read_until(b'\n', buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.line_number += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            Ok(Some(true))
        } else {
            Ok(Some(false))
        }
    }

    /// Like [`Self::next_line`] but keeps a partial last line in `buf` and appends to it on the next
    /// call, for following a file that is being written.
    pub fn next_complete_line(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        if buf.last() == Some(&b'\n') {
            buf.clear();
        }
        self.inner.read_until(b'\n', buf)?;
        if buf.last() == Some(&b'\n') {
            self.line_number += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_rotation_order_compressed_preferred() {
        let dir = std::env::temp_dir().join(format!("fg-export-parts-{}", std::process::id()));
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
        let got: Vec<String> = parts(&dir.join("verdicts.jsonl"))
            .unwrap()
            .iter()
            .map(|p| p.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "verdicts-2024-05-01T10-20-30.123456.jsonl",
                "verdicts-2024-05-01T10-20-31.000000.jsonl.gz",
                "verdicts.jsonl"
            ]
        );
        assert_eq!(
            parse_stamp("2024-05-01T10-20-30.123456")
                .unwrap()
                .to_string(),
            "2024-05-01T10:20:30.123456Z"
        );
    }
}
