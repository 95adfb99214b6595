// SPDX-License-Identifier: GPL-2.0
//! `CKPT_IOC_DUMP_TASK`: the kernel state of a process that /proc and ptrace do not show
//! completely: the mm layout with brk and the saved auxv, signal handlers, the alternate signal
//! stack, clear_child_tid and the personality. Restored by `restore.rs` (mm layout) and by user
//! space before the restore ioctl (handlers, sigaltstack, set_tid_address, personality).
//!
//! `CKPT_IOC_ITIMERS`: which itimers are armed, so that ckpt lends a thread to read their time
//! left (getitimer) only when there is something to read.

use crate::abi::{
    CkptItimers, CkptTaskState, CKPT_ITIMER_PROF, CKPT_ITIMER_REAL, CKPT_ITIMER_VIRTUAL,
};
use crate::helpers;
use crate::target::Target;
use kernel::{bindings, prelude::*};

/// Fills `st` for the task `st.pid`, with the same permission rule as every ioctl naming a pid.
pub(crate) fn dump_task(st: &mut CkptTaskState) -> Result {
    if st.flags != 0 {
        return Err(EINVAL);
    }
    let target = Target::lookup(st.pid)?;
    // Held throughout: the handlers, sigaltstack and personality are the task's, which an
    // exec after the check would reset to the new image's; all of it is one image's state.
    let access = target.access()?;
    st.mm = helpers::mm_layout(access.mm());
    let misc = helpers::task_misc(target.task());
    st.clear_child_tid = misc.clear_child_tid;
    st.sas_ss_sp = misc.sas_ss_sp;
    st.sas_ss_size = misc.sas_ss_size;
    st.sas_ss_flags = misc.sas_ss_flags;
    st.personality = misc.personality;
    helpers::sigactions(target.task(), &mut st.sigactions)
}

// The helper reports bit n for itimer n; the ABI's bits are the same.
const _: () = {
    assert!(CKPT_ITIMER_REAL == 1 << bindings::ITIMER_REAL);
    assert!(CKPT_ITIMER_VIRTUAL == 1 << bindings::ITIMER_VIRTUAL);
    assert!(CKPT_ITIMER_PROF == 1 << bindings::ITIMER_PROF);
};

/// Fills `req.armed` for the process of `req.pid`, with the same permission rule as every
/// ioctl naming a pid.
pub(crate) fn itimers(req: &mut CkptItimers) -> Result {
    if req.flags != 0 || req._reserved != 0 {
        return Err(EINVAL);
    }
    let target = Target::lookup(req.pid)?;
    let _access = target.access()?;
    req.armed = helpers::itimers_armed(target.task())?;
    Ok(())
}
