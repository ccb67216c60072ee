//! The verdict log's files in the order they were written: timestamped backups
//! (`verdicts-2024-05-01T10-20-30.123456.jsonl[.gz]`, oldest first, named and listed by
//! `flowgate_proto::verdict_log_files` as the agent writes them), then the current file. Reading is line
//! by line with a reused buffer, gzip or plain, so memory stays constant whatever the size.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
};

use flowgate_proto::verdict_log_files::Naming;
use jiff::Timestamp;

/// One file of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPart {
    pub path: PathBuf,
    pub compressed: bool,
    /// When the file was rotated away; `None` for the current file.
    pub rotated_at: Option<Timestamp>,
}

/// Backups of `current` in rotation order (as `flowgate_proto::verdict_log_files` lists them), then
/// `current` itself if it exists.
pub fn parts(current: &Path) -> io::Result<Vec<LogPart>> {
    let mut out: Vec<LogPart> = Naming::new(current)
        .scan_backups_while_written()?
        .into_iter()
        .map(|b| LogPart {
            path: b.path,
            compressed: b.compressed,
            rotated_at: Timestamp::from_microsecond(b.rotated_at_micros).ok(),
        })
        .collect();
    if current.exists() {
        out.push(LogPart { path: current.to_owned(), compressed: false, rotated_at: None });
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
        let inner: Box<dyn Read> =
            if part.compressed { Box::new(flate2::read::MultiGzDecoder::new(file)) } else { Box::new(file) };
        Ok(Self::new(inner))
    }

    pub fn new(inner: Box<dyn Read>) -> Self {
        Self { inner: BufReader::with_capacity(256 << 10, inner), line_number: 0 }
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
    fn parts_are_the_backups_then_the_current_file_with_rotation_times() {
        let dir = std::env::temp_dir().join(format!("fg-export-parts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["verdicts.jsonl", "verdicts-2024-05-01T10-20-31.000000.jsonl.gz"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let got: Vec<(String, bool, Option<String>)> = parts(&dir.join("verdicts.jsonl"))
            .unwrap()
            .into_iter()
            .map(|p| {
                let name = p.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, p.compressed, p.rotated_at.map(|t| t.to_string()))
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "verdicts-2024-05-01T10-20-31.000000.jsonl.gz".to_owned(),
                    true,
                    Some("2024-05-01T10:20:31Z".to_owned())
                ),
                ("verdicts.jsonl".to_owned(), false, None),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
