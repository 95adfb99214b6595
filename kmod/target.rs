// SPDX-License-Identifier: GPL-2.0
//! Finding a target process by pid and deciding whether the caller may read it.
//!
//! The caller must be the target's tracer (or the target itself). `ptrace_may_access()` and
//! the LSM hook `security_ptrace_access_check()` are not exported to modules; requiring that
//! the caller traces the target makes the kernel's own attach (PTRACE_SEIZE) the check, with
//! every LSM's (Yama's ptrace_scope, SELinux, AppArmor). ckpt seizes every thread it dumps, and
//! a snapshot clone is born traced by ckpt. A traced process that execs a setuid program gains
//! no privilege its tracer could not trace (LSM_UNSAFE_PTRACE).
//!
//! On top, under the target's exec_update_lock, ptrace attach's own rule (`__ptrace_may_access()`
//! with PTRACE_MODE_ATTACH_REALCREDS) is applied again, as `ptrace_access_vm()` does for a
//! tracer's PEEKDATA: the caller's real uid/gid equal all of the target's real, effective and
//! saved ids, or the caller has CAP_SYS_PTRACE in the target's user namespace; and the target
//! is owner-dumpable or the caller has CAP_SYS_PTRACE over the namespace it was exec'd in (a
//! traced process may have become non-dumpable since the attach).

use crate::helpers::{self, ExecUpdateReadGuard};
use kernel::{mm::MmWithUser, prelude::*, sync::aref::ARef, task::Task};

/// A checked target: its mm, and its exec_update_lock held for reading, so the process cannot
/// exec (change its mm, credentials or dumpability) while this lives.
pub(crate) struct Access<'a> {
    mm: ARef<MmWithUser>,
    _exec: ExecUpdateReadGuard<'a>,
}

impl Access<'_> {
    pub(crate) fn mm(&self) -> &MmWithUser {
        &self.mm
    }
}

/// A process that exists and is not a kernel thread. Holding it pins the task struct, not the
/// process: it may still exit.
pub(crate) struct Target {
    task: ARef<Task>,
}

impl Target {
    /// Looks `pid` up in the caller's pid namespace. EINVAL for a non-positive pid or a kernel
    /// thread, ESRCH when there is no such task.
    pub(crate) fn lookup(pid: i32) -> Result<Self> {
        if pid <= 0 {
            return Err(EINVAL);
        }
        let task = helpers::task_by_vpid(pid).ok_or(ESRCH)?;
        if helpers::is_kernel_thread(&task) {
            return Err(EINVAL);
        }
        Ok(Self { task })
    }

    pub(crate) fn task(&self) -> &Task {
        &self.task
    }

    /// Checks the caller's permission and returns the target's address space, for a caller
    /// that reads only through that mm. The check and `get_task_mm()` happen under the
    /// target's exec_update_lock, so an exec of a setuid program cannot slip in between (as
    /// in the kernel's `mm_access()`); after it, the process may exec, but the mm returned
    /// stays the old image's, the one the check allowed.
    /// EPERM when not allowed, ESRCH when the process has exited (a zombie has no mm).
    pub(crate) fn access_mm(&self) -> Result<ARef<MmWithUser>> {
        Ok(self.access()?.mm)
    }

    /// Like `access_mm`, but keeps the exec_update_lock (read) for as long as the `Access`
    /// lives: for a caller that also reads the task itself (`access_process_vm()` takes the
    /// task's mm anew, signal handlers, the personality), which an exec would otherwise
    /// replace with the new image's after the check. Drop it before touching the caller's own
    /// memory: a fault there must not hold up the target's exec.
    pub(crate) fn access(&self) -> Result<Access<'_>> {
        let exec = ExecUpdateReadGuard::lock_killable(&self.task)?;
        // An exited process (a zombie) has no mm: report it as gone before the permission
        // check, whose dumpability state an exited task may no longer have.
        let mm = helpers::task_mm(&self.task).ok_or(ESRCH)?;
        self.check_may_access()?;
        Ok(Access { mm, _exec: exec })
    }

    fn check_may_access(&self) -> Result {
        let current = kernel::current!();
        if helpers::same_thread_group(current, &self.task) {
            return Ok(());
        }
        if !helpers::traced_by_current(&self.task) {
            return Err(EPERM);
        }
        let caller = helpers::current_ids();
        let target = helpers::task_ids(&self.task);
        let ids_match = [target.uid, target.euid, target.suid]
            .iter()
            .all(|&u| u == caller.uid)
            && [target.gid, target.egid, target.sgid]
                .iter()
                .all(|&g| g == caller.gid);
        if !ids_match && !helpers::caller_has_ptrace_cap_over(&target) {
            return Err(EPERM);
        }
        if !helpers::task_still_dumpable(&self.task) {
            return Err(EPERM);
        }
        Ok(())
    }
}
