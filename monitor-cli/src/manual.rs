//! `flowgate man --out-dir DIR` (hidden; `make install` runs it): manual pages in roff, generated from the
//! clap definitions (clap_mangen): `flowgate.1`, and one page per subcommand as git names them
//! (`flowgate-monitor.1`, `flowgate-lab-up.1`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Where to write the pages (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// Writes the page of `command` and of each of its visible subcommands, at any depth, into `dir`; returns the
/// files written, sorted.
pub fn write_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, dir).with_context(|| format!("writing manual pages into {}", dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}

pub fn run(args: &ManArgs, command: clap::Command) -> anyhow::Result<()> {
    for page in write_pages(command, &args.out_dir)? {
        println!("{}", page.display());
    }
    Ok(())
}
