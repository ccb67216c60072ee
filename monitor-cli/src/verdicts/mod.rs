//! `flowgate verdicts export`: reads the agent's verdict log (the current file and its rotated
//! backups, gzip too) without the agent, in the order it was written, and writes the records in a
//! time range that pass the filters (the same flags, and the same filter code, as `flowgate monitor`)
//! as JSON lines, CSV or text; `--follow` goes on with live records, following rotation. Streams line
//! by line, so memory stays constant for logs of any size. A line that is not a record is reported on
//! stderr with its file and line number and skipped; a summary line on stderr closes every export.

mod files;
mod render;
mod select;

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use flowgate_proto::filter::FilterSet;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use self::{
    files::{LineReader, LogPart},
    select::{Record, Selection},
};
use crate::{client::SocketArg, endpoint_ref, filter_args::FilterArgs};

/// Where the agent writes its verdict log by default.
pub const DEFAULT_LOG: &str = flowgate_proto::verdict_log_files::DEFAULT_PATH;
/// Slack for comparing record times with rotation times (the kernel-derived clock may drift).
const CLOCK_SLACK: SignedDuration = SignedDuration::from_secs(300);
/// How often `--follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Args)]
pub struct VerdictsArgs {
    #[command(subcommand)]
    command: VerdictsCommand,
}

#[derive(Subcommand)]
enum VerdictsCommand {
    /// Export records of the verdict log (no agent needed): a time range, filters, JSON lines, CSV or text.
    Export(ExportArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The log's own lines (Hubble-shaped flow JSON), lost-event markers included.
    Jsonl,
    /// One row per flow with a header; lost-event markers are counted in the summary only.
    Csv,
    /// One compact line per record.
    Text,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The verdict log (the current file); its rotated files are found beside it.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_LOG)]
    log: PathBuf,
    /// Records from this time on: RFC 3339 (2024-05-01T10:00:00Z) or an age (30m, 2h, 1d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Records up to this time: RFC 3339 or an age.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Only to resolve endpoints given by name (`--related-to default/db`): the agent's socket.
    #[arg(long, value_name = "PATH", env = flowgate_proto::client::SOCKET_ENV,
          default_value = flowgate_proto::client::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Format::Jsonl)]
    output: Format,
    /// Write here instead of standard output.
    #[arg(long = "output-file", visible_alias = "out", value_name = "FILE")]
    output_file: Option<PathBuf>,
    /// After the log's end, go on with records as the agent writes them (following rotation), until
    /// interrupted or past --until.
    #[arg(short, long)]
    follow: bool,
}

/// Counts for the closing summary.
#[derive(Debug, Default)]
struct Tally {
    files: u64,
    lines: u64,
    flows_exported: u64,
    lost_markers: u64,
    events_marked_lost: u64,
    corrupt: u64,
    /// A last line with no newline (being written, or cut by a crash).
    incomplete: u64,
}

struct Export<W: Write> {
    selection: Selection,
    format: Format,
    out: W,
    tally: Tally,
}

impl<W: Write> Export<W> {
    /// Handles one line of `file`; reports and counts it when it is not a record.
    fn line(&mut self, bytes: &[u8], file: &Path, number: u64) -> io::Result<()> {
        self.tally.lines += 1;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                self.corrupt(file, number, &format!("not JSON ({e})"));
                return Ok(());
            }
        };
        let in_range = self.selection.in_range(select::time_of(&value));
        match select::classify(&value) {
            Record::Flow(flow) => {
                if !in_range {
                    return Ok(());
                }
                match self.selection.keeps(flow) {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => {
                        self.corrupt(file, number, &format!("a flow that cannot be read ({e})"));
                        return Ok(());
                    }
                }
                self.tally.flows_exported += 1;
                match self.format {
                    Format::Jsonl => {
                        self.out.write_all(bytes)?;
                        self.out.write_all(b"\n")
                    }
                    Format::Csv => render::csv_row(&mut self.out, &value, flow),
                    Format::Text => render::text_line(&mut self.out, &value, flow),
                }
            }
            Record::Lost(lost) => {
                if !in_range {
                    return Ok(());
                }
                self.tally.lost_markers += 1;
                self.tally.events_marked_lost += lost
                    .get("num_events_lost")
                    .and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
                    .unwrap_or(0);
                match self.format {
                    Format::Jsonl => {
                        self.out.write_all(bytes)?;
                        self.out.write_all(b"\n")
                    }
                    Format::Csv => Ok(()),
                    Format::Text => render::lost_text(&mut self.out, &value, lost),
                }
            }
            Record::Unknown => {
                self.corrupt(file, number, "neither a flow nor a lost_events record");
                Ok(())
            }
        }
    }

    fn corrupt(&mut self, file: &Path, number: u64, why: &str) {
        self.tally.corrupt += 1;
        eprintln!("{}:{number}: {why}; skipped", file.display());
    }

    /// Whether the range leaves out every record of the part. Part `i` holds records written after
    /// part `i-1` was rotated and up to its own rotation.
    fn skips(&self, part: &LogPart, previous_rotation: Option<Timestamp>) -> bool {
        let before_since = match (self.selection.since, part.rotated_at) {
            (Some(since), Some(rotated)) => rotated < since - CLOCK_SLACK,
            _ => false,
        };
        let after_until = match (self.selection.until, previous_rotation) {
            (Some(until), Some(previous)) => previous > until + CLOCK_SLACK,
            _ => false,
        };
        before_since || after_until
    }

    /// Every line of a part.
    fn read_part(&mut self, part: &LogPart) -> anyhow::Result<()> {
        let reader = match LineReader::open(part) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !part.compressed => {
                // Compressed meanwhile: read the compressed file.
                let mut gz = part.clone();
                gz.path = flowgate_proto::verdict_log_files::compressed_path(&part.path);
                gz.compressed = true;
                match LineReader::open(&gz) {
                    Ok(r) => return self.read_lines(&gz, r),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()), // removed (pruned)
                    Err(e) => {
                        return Err(e).with_context(|| format!("opening {}", gz.path.display()));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", part.path.display())),
        };
        self.read_lines(part, reader)
    }

    fn read_lines(&mut self, part: &LogPart, mut reader: LineReader) -> anyhow::Result<()> {
        self.tally.files += 1;
        let mut buf = Vec::with_capacity(4096);
        loop {
            let line = reader
                .next_line(&mut buf)
                .with_context(|| format!("reading {} after line {}", part.path.display(), reader.line_number));
            match line {
                Ok(Some(true)) => self.line(&buf, &part.path, reader.line_number)?,
                Ok(Some(false)) => {
                    self.tally.incomplete += 1;
                    eprintln!(
                        "{}:{}: incomplete last line ({} bytes, no newline: being written, or cut by a crash); skipped",
                        part.path.display(),
                        reader.line_number,
                        buf.len()
                    );
                }
                Ok(None) => return Ok(()),
                Err(e) if part.compressed => {
                    // A damaged gzip stream: report it and go on with the next file.
                    self.corrupt(&part.path, reader.line_number + 1, &format!("unreadable ({e:#})"));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn summary(&self) -> String {
        let t = &self.tally;
        format!(
            "flowgate verdicts export: {} flows exported; {} lines read from {} files; {} lost-event markers ({} events lost); {} corrupt lines skipped{}",
            t.flows_exported,
            t.lines,
            t.files,
            t.lost_markers,
            t.events_marked_lost,
            t.corrupt,
            if t.incomplete > 0 { format!("; {} incomplete last line(s)", t.incomplete) } else { String::new() }
        )
    }
}

fn selection(args: &ExportArgs) -> anyhow::Result<Selection> {
    let now = Timestamp::now();
    let time = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<Timestamp>> {
        v.as_deref().map(|t| select::parse_time(t, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))).transpose()
    };
    let (since, until) = (time("since", &args.since)?, time("until", &args.until)?);
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        bail!("--since ({s}) is after --until ({u}): nothing can match");
    }
    let filter = if args.filter.names_endpoints() {
        let socket = SocketArg { socket: args.socket.clone() };
        let endpoints = endpoint_ref::fetch(&socket)
            .context("endpoints given by name are resolved by the agent (or give their ids)")?;
        args.filter.resolve(&endpoints)?
    } else {
        args.filter.resolve(&[])?
    };
    let filters = if filter.is_empty() { FilterSet::default() } else { FilterSet::compile(&[filter], &[]) };
    Ok(Selection { since, until, filters })
}

/// Set on SIGINT/SIGTERM so `--follow` ends with its summary.
fn interrupted_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        set.store(true, Ordering::Release);
    });
    flag
}

pub fn run(args: VerdictsArgs) -> anyhow::Result<()> {
    match args.command {
        VerdictsCommand::Export(args) => {
            let result = export(&args);
            match result {
                Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => {
                    Ok(())
                }
                other => other,
            }
        }
    }
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let selection = selection(args)?;
    let out: Box<dyn Write> = match &args.output_file {
        Some(path) => Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => Box::new(io::stdout().lock()),
    };
    let mut export = Export {
        selection,
        format: args.output,
        out: BufWriter::with_capacity(256 << 10, out),
        tally: Tally::default(),
    };
    if export.format == Format::Csv {
        writeln!(export.out, "{}", render::CSV_HEADER)?;
    }
    let parts = files::parts(&args.log)
        .with_context(|| format!("listing the verdict log's files beside {}", args.log.display()))?;
    if parts.is_empty() && !args.follow {
        bail!(
            "no verdict log at {} (nor rotated files beside it); is the agent writing one (--verdict-log)?",
            args.log.display()
        );
    }
    let stop = args.follow.then(interrupted_flag);
    let mut previous_rotation = None;
    for part in &parts {
        let is_current = part.rotated_at.is_none();
        if is_current && args.follow {
            break; // followed from its start below
        }
        if !export.skips(part, previous_rotation) {
            export.read_part(part)?;
        }
        previous_rotation = part.rotated_at;
    }
    if let Some(stop) = stop {
        export.out.flush()?;
        follow(&mut export, &args.log, previous_rotation, &stop)?;
    }
    export.out.flush()?;
    eprintln!("{}", export.summary());
    Ok(())
}

/// The current file, opened while no rotation happened between opening it and listing the backups:
/// every backup listed is older than it, and the next backup to appear is this file.
fn open_current(path: &Path) -> io::Result<Option<(LineReader, u64, Vec<LogPart>)>> {
    loop {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let ino = file.metadata()?.ino();
        let backups: Vec<LogPart> = files::parts(path)?.into_iter().filter(|p| p.rotated_at.is_some()).collect();
        if std::fs::metadata(path).map(|m| m.ino()).ok() == Some(ino) {
            return Ok(Some((LineReader::new(Box::new(file)), ino, backups)));
        }
    }
}

/// Reads the current file from its start and what the agent appends to it; when it is rotated,
/// finishes it (still open), reads any backup rotated after it that was never current while we
/// looked, and goes on with the new current file. `processed`: backups up to this rotation time
/// were read already.
fn follow<W: Write>(
    export: &mut Export<W>,
    path: &Path,
    mut processed: Option<Timestamp>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let until = export.selection.until;
    let mut buf = Vec::with_capacity(4096);
    // The file being followed: its reader and inode.
    let mut current: Option<(LineReader, u64)> = None;
    let mut followed_ino: Option<u64> = None;
    loop {
        if stop.load(Ordering::Acquire) || until.is_some_and(|u| Timestamp::now() > u + SignedDuration::from_secs(5)) {
            return Ok(());
        }
        let Some((reader, ino)) = current.as_mut() else {
            let Some((reader, ino, backups)) = open_current(path)? else {
                std::thread::sleep(FOLLOW_POLL);
                continue;
            };
            // Backups that appeared since: the first is the file followed until now (read through
            // its descriptor) unless its plain file belongs to another inode; the rest are unseen.
            let mut newer: Vec<&LogPart> =
                backups.iter().filter(|b| processed.is_none_or(|p| b.rotated_at > Some(p))).collect();
            if followed_ino.is_some() && !newer.is_empty() {
                let first_is_other = !newer[0].compressed
                    && std::fs::metadata(&newer[0].path).map(|m| Some(m.ino()) != followed_ino).unwrap_or(false);
                if !first_is_other {
                    newer.remove(0);
                }
            }
            for part in newer {
                export.read_part(part)?;
            }
            processed = backups.iter().filter_map(|b| b.rotated_at).max().or(processed);
            export.tally.files += 1;
            followed_ino = Some(ino);
            current = Some((reader, ino));
            continue;
        };
        let mut got = false;
        while reader.next_complete_line(&mut buf)? {
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            export.line(line, path, reader.line_number)?;
            got = true;
        }
        if got {
            export.out.flush()?;
        }
        // Rotated (another file at the path) or gone: the old file is complete; read what was written
        // to it before the rename, then move on.
        if std::fs::metadata(path).map(|m| m.ino()).ok() != Some(*ino) {
            while reader.next_complete_line(&mut buf)? {
                let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                export.line(line, path, reader.line_number)?;
            }
            buf.clear();
            current = None;
            continue;
        }
        let started = Instant::now();
        while started.elapsed() < FOLLOW_POLL && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
