//! Running work inside another network namespace. Interface lookups and TCX attachment resolve
//! interface names in the caller's network namespace, so the agent attaches programs from a thread
//! that entered the node namespace with setns (never `ip netns exec`, which remounts /sys and hides
//! bpffs).

use std::{fs::File, path::Path};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: String,
        #[source]
        source: nix::Error,
    },
}

/// Runs `f` on a scoped thread that entered the network namespace at `path` (e.g.
/// `/run/netns/fg-demo-node`); the caller's thread is untouched. `f` may borrow from the caller.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let display = path.display().to_string();
    let ns = File::open(path).map_err(|source| NetnsError::Open { path: display.clone(), source })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::Enter { path: display, source })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
