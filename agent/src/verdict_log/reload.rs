//! Follows the verdict log's configuration file (`--verdict-log-config`): when it changes, it is read
//! again over the command line's settings; a file that does not parse or validate keeps the settings in
//! effect (and says why). Change detection is the agent's one file-watch helper, [`crate::watch`].

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use log::{info, warn};

use super::config::{self, LogSettings};
use crate::watch::Watched;

pub struct ConfigFollower {
    watched: Watched,
    /// The command line's settings, under the configuration file.
    base: LogSettings,
    interval: Duration,
    checked: Instant,
}

impl ConfigFollower {
    /// Follows `path`, checking at most once per `interval`.
    pub fn new(path: PathBuf, base: LogSettings, interval: Duration) -> Self {
        Self { watched: Watched::new(path), base, interval, checked: Instant::now() }
    }

    /// The settings the file gives now, first read.
    pub fn load(&self) -> Result<LogSettings, config::ConfigError> {
        config::load(self.watched.path(), &self.base)
    }

    /// New settings when the file changed since the last look and reads well.
    pub fn poll(&mut self) -> Option<LogSettings> {
        if self.checked.elapsed() < self.interval {
            return None;
        }
        self.checked = Instant::now();
        if !self.watched.changed() {
            return None;
        }
        match self.load() {
            Ok(settings) => {
                info!(
                    "verdict log: reloaded {} ({} include, {} exclude filters, rotated at {} bytes, {} backups{})",
                    self.watched.path().display(),
                    settings.include.len(),
                    settings.exclude.len(),
                    settings.rotation.max_size,
                    settings.rotation.max_backups,
                    if settings.rotation.compress { ", compressed" } else { "" }
                );
                Some(settings)
            }
            Err(e) => {
                warn!("verdict log: {e}; keeping the previous configuration");
                None
            }
        }
    }
}
