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
