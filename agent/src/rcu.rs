//! Expedited RCU grace periods for a bulk attach of TCX links (`--attach-mode tcx --expedited-attach`;
//! the default attach mode, tc filters ([`crate::tc_filter`]), waits for no grace period).
//!
//! Every TCX attach (`BPF_LINK_CREATE`, kernel `tcx_link_attach`) swaps the interface's program array and
//! waits for an RCU grace period (`synchronize_rcu`) while it holds the RTNL lock, so attaches cannot
//! overlap, from any number of threads: on this kind of node each takes one grace period, 7-23 ms, and
//! 1,000 endpoints (2,000 attaches) take about 28 s. With `/sys/kernel/rcu_expedited` set, the same wait
//! is an expedited grace period (tens of microseconds; the kernel interrupts every CPU to end it sooner).
//! That setting is node-wide, so the agent only sets it when asked to, only around a bulk attach, and puts
//! back what it found ([`Expedited`]'s drop). An agent killed inside that window leaves it set.
//!
//! And grace periods after a policy generation switch ([`SwitchGrace`]): the datapath rewrites the
//! generation it switched away from at the next change, which must wait until no program run still reads
//! it. A grace period waited for from user space (`membarrier`, [`grace_period`]) is that guarantee; a time
//! bound alone is not one on a VM, where a vCPU can be held by its host in the middle of a program run.

use std::path::Path;

use log::{info, warn};

/// The kernel's switch: `1` makes `synchronize_rcu()` expedited.
const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// Expedited grace periods while this lives, if they were off and could be turned on.
pub struct Expedited {
    /// Whether this guard turned them on (and so turns them off again).
    turned_on: bool,
}

impl Expedited {
    /// Turns expedited grace periods on for `what` (a log line says so), unless they are on already.
    pub fn begin(what: &str) -> Self {
        let path = Path::new(RCU_EXPEDITED);
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim() == "0" => match std::fs::write(path, "1") {
                Ok(()) => {
                    info!("expedited RCU grace periods for {what} ({} = 1 until it is done)", path.display());
                    Self { turned_on: true }
                }
                Err(e) => {
                    warn!("cannot set {} ({e}); {what} waits a full grace period per attach", path.display());
                    Self { turned_on: false }
                }
            },
            Ok(_) => Self { turned_on: false },
            Err(e) => {
                warn!("cannot read {} ({e}); {what} waits a full grace period per attach", path.display());
                Self { turned_on: false }
            }
        }
    }
}

impl Drop for Expedited {
    fn drop(&mut self) {
        if self.turned_on
            && let Err(e) = std::fs::write(RCU_EXPEDITED, "0")
        {
            warn!("cannot put {RCU_EXPEDITED} back to 0: {e}");
        }
    }
}

/// `MEMBARRIER_CMD_GLOBAL` (`uapi/linux/membarrier.h`): in the kernel, `synchronize_rcu()`.
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Waits for an RCU grace period from user space: when it returns `Ok`, every eBPF program run that began
/// before the call has ended (the programs run inside RCU read-side sections, which a grace period waits
/// for; on one CPU none can be running while this runs). The kernel refuses it where CPUs run without the
/// scheduler tick (`nohz_full`): `Err` then.
pub fn grace_period() -> std::io::Result<()> {
    // SAFETY: membarrier takes two integers and touches no memory of the caller's.
    let done = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if done == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Grace periods after the datapath's policy generation switches, each waited for on a thread of its own
/// as soon as the switch is made, so that the next change knows for sure, and usually without waiting,
/// when no program run can still be reading the generation it is about to rewrite.
pub struct SwitchGrace {
    shared: std::sync::Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    progress: std::sync::Mutex<Progress>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct Progress {
    /// Switches made.
    switches: u64,
    /// Switches a grace period has passed since.
    graced: u64,
    /// The kernel refused a grace period: none is waited for any more.
    refused: bool,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SwitchGrace {
    /// Starts the thread that waits for the grace periods.
    pub fn start() -> std::io::Result<Self> {
        let shared = std::sync::Arc::new(Shared::default());
        let thread = std::thread::Builder::new().name("fg-switch-grace".into()).spawn({
            let shared = std::sync::Arc::clone(&shared);
            move || wait_for_grace_periods(&shared)
        })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// A switch was just made: a grace period after it begins now.
    pub fn switched(&self) {
        self.shared.lock().switches += 1;
        self.shared.changed.notify_all();
    }

    /// Waits until a grace period has passed since the last switch (at once when one has). `false` when the
    /// kernel gives none ([`grace_period`]): the caller must bound the readers by time instead.
    pub fn wait(&self) -> bool {
        let mut progress = self.shared.lock();
        while progress.graced < progress.switches && !progress.refused {
            progress = self.shared.changed.wait(progress).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        !progress.refused
    }
}

/// The thread: for every batch of switches, one grace period begun after the last of them.
fn wait_for_grace_periods(shared: &Shared) {
    loop {
        let switches = {
            let mut progress = shared.lock();
            while progress.graced == progress.switches && !progress.stop {
                progress = shared.changed.wait(progress).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if progress.stop {
                return;
            }
            progress.switches
        };
        let result = grace_period();
        let mut progress = shared.lock();
        match result {
            Ok(()) => progress.graced = switches,
            Err(e) => {
                warn!(
                    "membarrier(MEMBARRIER_CMD_GLOBAL): {e}; a policy generation is rewritten once the time bound \
                     after its switch has passed, not after a grace period"
                );
                progress.refused = true;
            }
        }
        shared.changed.notify_all();
        if progress.refused {
            return;
        }
    }
}

impl Drop for SwitchGrace {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_gives_grace_periods_and_every_switch_is_followed_by_one() {
        grace_period().expect("membarrier(MEMBARRIER_CMD_GLOBAL) on this kernel");
        let grace = SwitchGrace::start().expect("the grace thread");
        assert!(grace.wait(), "no switch yet: nothing to wait for");
        for _ in 0..3 {
            grace.switched();
            assert!(grace.wait());
            let progress = grace.shared.lock();
            assert_eq!(progress.graced, progress.switches);
        }
        // Switches in a burst: one grace period after the last covers them all.
        for _ in 0..5 {
            grace.switched();
        }
        assert!(grace.wait());
        assert_eq!(grace.shared.lock().graced, 8);
        drop(grace);
    }
}
