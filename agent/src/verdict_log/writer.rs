//! The verdict log's writer thread: takes batches from the log's hub subscription, applies the
//! include/exclude filters, joins lines into few large writes (under a stream, what piled up in
//! `hub::COALESCE`), rotates between writes, and accounts for
//! every record that cannot be written (counted, and marked in the file with a `lost_events` line once
//! the disk takes writes again). What a write does on disk is in [`super::file`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use flowgate_events::hub::{LiveEvents, Subscriber};
use flowgate_proto::{
    filter::FilterSet,
    message::{Event, LossSource},
};
use log::{info, warn};

use super::{
    FlowEncoder, LOST_SOURCE_LOG, MAX_WRITE_BYTES, VerdictLogStats, config::LogSettings, file::LogFile, lost_line,
    reload::ConfigFollower,
};

fn add_loss(losses: &mut Vec<(LossSource, u64)>, source: LossSource, count: u64) {
    match losses.iter_mut().find(|(s, _)| *s == source) {
        Some((_, n)) => *n += count,
        None => losses.push((source, count)),
    }
}

pub(super) struct Writer {
    pub(super) file: LogFile,
    /// `settings`' include and exclude lists, compiled.
    pub(super) filters: FilterSet,
    pub(super) settings: LogSettings,
    /// Follows the configuration file, when there is one.
    pub(super) follower: Option<ConfigFollower>,
    /// How long the writer waits for a batch before it checks for losses to mark and for a reload.
    pub(super) tick: Duration,
    pub(super) node: String,
    pub(super) encoder: FlowEncoder,
    pub(super) stats: Arc<VerdictLogStats>,
    /// Whole lines waiting for one write.
    pub(super) buf: Vec<u8>,
    pub(super) buf_records: u64,
    /// Loss markers in `buf`, to mark again if the write fails.
    pub(super) buf_markers: Vec<(LossSource, u64)>,
    pub(super) line: Vec<u8>,
    /// Losses not yet marked in the file, by Hubble source.
    pub(super) unmarked: Vec<(LossSource, u64)>,
    pub(super) failing: bool,
}

impl Writer {
    pub(super) fn run(
        mut self,
        subscriber: Subscriber,
        mut rx: LiveEvents,
        runtime: &tokio::runtime::Handle,
        stop: &AtomicBool,
    ) {
        let tick = self.tick;
        loop {
            if stop.load(Ordering::Acquire) {
                while let Ok(batch) = rx.try_recv() {
                    self.take(batch);
                }
                self.flush();
                break;
            }
            // Paced: under a stream, what piled up in `hub::COALESCE` rather than a wake-up per batch.
            match runtime.block_on(async { tokio::time::timeout(tick, rx.recv_paced()).await }) {
                Ok(Some(batch)) => {
                    self.take(batch);
                    // Join what else is queued into as few writes as possible.
                    while self.buf.len() < MAX_WRITE_BYTES {
                        match rx.try_recv() {
                            Ok(more) => self.take(more),
                            Err(_) => break,
                        }
                    }
                    self.flush();
                }
                Ok(None) => {
                    self.flush();
                    break;
                }
                Err(_) => {
                    // Idle: mark losses of failed writes once the disk takes writes again.
                    if !self.unmarked.is_empty() {
                        self.line.clear();
                        self.push_line(0);
                        self.flush();
                    }
                }
            }
            self.maybe_reload();
        }
        drop(subscriber);
        let rotations = self.file.rotations;
        self.stats.rotations.store(rotations, Ordering::Relaxed);
        // Dropping the file waits for the compressor to finish.
    }

    /// Takes a changed configuration file's settings; a bad file keeps the ones in effect.
    fn maybe_reload(&mut self) {
        let Some(settings) = self.follower.as_mut().and_then(ConfigFollower::poll) else {
            return;
        };
        self.file.set_rotation(settings.rotation);
        self.filters = FilterSet::compile(&settings.include, &settings.exclude);
        self.settings = settings;
        self.stats.config_reloads.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn take(&mut self, batch: Vec<Event>) {
        for event in batch {
            match event {
                Event::Flow(flow) => {
                    if !self.filters.matches(&flow) {
                        continue;
                    }
                    self.line.clear();
                    (self.encoder)(&mut self.line, &flow, &self.node);
                    self.line.push(b'\n');
                    self.push_line(1);
                }
                Event::Lost(lost) => {
                    if lost.source == LossSource::ClientQueue {
                        self.stats.queue_lost.fetch_add(lost.count, Ordering::Relaxed);
                        self.stats.records_lost.fetch_add(lost.count, Ordering::Relaxed);
                    }
                    add_loss(&mut self.unmarked, lost.source, lost.count);
                    // Written where the gap is: ahead of the next line.
                    self.line.clear();
                    self.push_line(0);
                }
            }
        }
    }

    /// Adds `self.line` (holding `records` flow records; may be empty) to the pending write, preceded
    /// by a marker line for each unmarked loss.
    fn push_line(&mut self, records: u64) {
        if !self.unmarked.is_empty() {
            let line = std::mem::take(&mut self.line);
            for (source, count) in std::mem::take(&mut self.unmarked) {
                self.line.clear();
                serde_json::to_writer(&mut self.line, &lost_line(source, count, &self.node)).expect("serializes");
                self.line.push(b'\n');
                self.append_line(0, Some((source, count)));
            }
            self.line = line;
        }
        if !self.line.is_empty() {
            self.append_line(records, None);
        }
    }

    /// Adds one line to the pending write; writes first when the line would not fit in the current
    /// file or in one write, and rotates between writes.
    fn append_line(&mut self, records: u64, marker: Option<(LossSource, u64)>) {
        let len = self.line.len();
        let max = self.file.rotation().max_size;
        if !self.buf.is_empty()
            && (self.file.size() + (self.buf.len() + len) as u64 > max || self.buf.len() + len > MAX_WRITE_BYTES)
        {
            self.flush();
        }
        if self.buf.is_empty() && self.file.needs_rotation(len) {
            match self.file.rotate() {
                Ok(()) => self.stats.rotations.store(self.file.rotations, Ordering::Relaxed),
                Err(e) => warn!("verdict log: rotating {}: {e}; writing on", self.file.path().display()),
            }
        }
        self.buf.extend_from_slice(&self.line);
        self.buf_records += records;
        self.buf_markers.extend(marker);
    }

    pub(super) fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.buf_records);
        let markers = std::mem::take(&mut self.buf_markers);
        match self.file.append(&self.buf) {
            Ok(()) => {
                self.stats.records_written.fetch_add(records, Ordering::Relaxed);
                self.stats.bytes_written.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                self.stats.lost_markers.fetch_add(markers.len() as u64, Ordering::Relaxed);
                if self.failing {
                    info!("verdict log: writing to {} again", self.file.path().display());
                    self.failing = false;
                }
            }
            Err(e) => {
                if !self.failing {
                    warn!("verdict log: {e}; records are counted as lost until writes succeed again");
                    self.failing = true;
                }
                self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                self.stats.records_lost.fetch_add(records, Ordering::Relaxed);
                add_loss(&mut self.unmarked, LOST_SOURCE_LOG, records);
                for (source, count) in markers {
                    add_loss(&mut self.unmarked, source, count);
                }
            }
        }
        self.buf.clear();
    }
}
