//! The programs as tc filters (`--attach-mode tc`): a `cls_bpf` filter in direct-action mode on the
//! interface's `clsact` qdisc, at a priority and handle of flowgate's own, as `tc filter add dev IF
//! ingress prio 1 handle 0xf1 bpf da` would put it.
//!
//! Why a second way to attach: a TCX attach (`BPF_LINK_CREATE`) waits for a full RCU grace period while
//! it holds the RTNL lock (see [`crate::rcu`]), 7-23 ms on this kind of node, so 1,000 endpoints take
//! about 25 s to start. Adding a qdisc and a filter waits for none (the tc code expedites the rare wait it
//! needs): the same 1,000 endpoints take well under a second, without touching a node-wide setting.
//!
//! A filter is not a file descriptor: it stays on its interface when the agent exits (also after
//! kill -9), holding the program and so the pinned maps, until it is deleted or the interface goes. A
//! restarted agent replaces it in place ([`attach`]: `RTM_NEWTFILTER` without `NLM_F_CREATE` on an
//! existing filter swaps its program under RCU), so no packet passes unchecked while it restarts.
//!
//! Every function here works in the network namespace of the calling thread.

use aya::programs::{
    Link as _, ProgramError, SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};

/// The filters' priority: 1, the first filter of the hook (a lower number runs earlier).
pub const PRIORITY: u16 = 1;
/// The filters' handle at [`PRIORITY`].
pub const HANDLE: TcHandle = TcHandle::new(0, 0xf1);

/// Adds the clsact qdisc the filters hang on to `interface`, unless it has one.
pub fn add_clsact(interface: &str) -> Result<(), ProgramError> {
    match tc::qdisc_add_clsact(interface) {
        Err(e) if os_error(&e) != Some(libc::EEXIST) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Puts `program` at flowgate's filter of `interface`'s `attach_type` hook (its clsact qdisc in place,
/// [`add_clsact`]): replaces the program of the filter there (a previous agent's) in one step, or adds
/// the filter. The filter stays when `program` is dropped; [`detach`] deletes it.
pub fn attach(program: &mut SchedClassifier, interface: &str, attach_type: TcAttachType) -> Result<(), ProgramError> {
    let options = TcAttachOptions::Netlink(NlOptions { priority: PRIORITY, handle: HANDLE, classid: None });
    let id = match program.attach_with_options(interface, attach_type, options) {
        Ok(id) => id,
        Err(ProgramError::TcError(e)) if os_error(&e) == Some(libc::EEXIST) => {
            let existing = SchedClassifierLink::attached(interface, attach_type, PRIORITY, HANDLE, None)
                .map_err(|e| ProgramError::TcError(TcError::IoError(e)))?;
            program.attach_to_link(existing)?
        }
        Err(e) => return Err(e),
    };
    // The program's own table would delete the filter when the program is dropped: take it out, and
    // forget it (it is plain data: interface index, hook, priority, handle).
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// Deletes flowgate's filter from `interface`'s `attach_type` hook. Returns whether there was one; an
/// interface that is gone has none.
pub fn detach(interface: &str, attach_type: TcAttachType) -> Result<bool, ProgramError> {
    let link = match SchedClassifierLink::attached(interface, attach_type, PRIORITY, HANDLE, None) {
        Ok(link) => link,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(false),
        Err(e) => return Err(ProgramError::TcError(TcError::IoError(e))),
    };
    match link.detach() {
        Ok(()) => Ok(true),
        Err(ProgramError::NetlinkError(e)) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The errno inside a tc error, if it carries one.
fn os_error(e: &TcError) -> Option<i32> {
    match e {
        TcError::NetlinkError(e) => e.raw_os_error(),
        TcError::IoError(e) => e.raw_os_error(),
        _ => None,
    }
}
