// SPDX-License-Identifier: GPL-2.0
//! Tasks: lookup by pid, thread groups, credentials and the other pieces of the ptrace-style
//! permission check, the exec_update_lock, per-task state a dump records (clear_child_tid,
//! alternate signal stack, personality, signal dispositions), signals to and pending on the
//! caller, and the C layout of the task, signal and cred fields read through bindgen.

use crate::abi::{CkptSigaction, CKPT_NSIG};
use core::ffi::c_void;
use core::ptr::NonNull;
use kernel::{
    bindings, cred::Credential, error::to_result, prelude::*, sync::aref::ARef, task::Task,
};

/// Mirror of `struct ckpt_c_layout` in `ckpt_helpers.h`.
#[repr(C)]
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct CLayout {
    pub(crate) task_flags: u64,
    pub(crate) task_signal: u64,
    pub(crate) task_cred: u64,
    pub(crate) signal_nr_threads: u64,
    pub(crate) signal_exec_update_lock: u64,
    pub(crate) cred_uid: u64,
    pub(crate) cred_gid: u64,
    pub(crate) cred_suid: u64,
    pub(crate) cred_sgid: u64,
    pub(crate) cred_euid: u64,
    pub(crate) cred_egid: u64,
    pub(crate) cred_user_ns: u64,
}

/// Mirror of `struct ckpt_task_misc` in `ckpt_helpers.h`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct TaskMisc {
    pub(crate) clear_child_tid: u64,
    pub(crate) sas_ss_sp: u64,
    pub(crate) sas_ss_size: u64,
    pub(crate) sas_ss_flags: u32,
    pub(crate) personality: u32,
}

// Kernel structs are passed as `c_void`: bindgen's versions contain empty structs that the FFI
// lint rejects, and the helpers only need the pointers.
extern "C" {
    fn ckpt_helper_c_layout(out: *mut CLayout);
    fn ckpt_helper_task_still_dumpable(task: *mut c_void) -> bool;
    fn ckpt_helper_traced_by_current(task: *mut c_void) -> bool;
    fn ckpt_helper_may_open_as_group(gid: u32) -> bool;
    fn ckpt_helper_task_misc(task: *mut c_void, out: *mut TaskMisc);
    fn ckpt_helper_get_sigactions(task: *mut c_void, out: *mut CkptSigaction, count: u32) -> i32;
    fn ckpt_helper_itimers_armed(task: *mut c_void) -> i32;
    fn ckpt_helper_fatal_signal_pending(task: *mut c_void) -> bool;
}

/// The field offsets as the C compiler laid them out.
pub(crate) fn c_layout() -> CLayout {
    let mut out = CLayout::default();
    // SAFETY: `out` is a valid, writable `struct ckpt_c_layout` (same `repr(C)` layout).
    unsafe { ckpt_helper_c_layout(&mut out) };
    out
}

/// The task with id `nr` in the caller's pid namespace, with a reference held.
pub(crate) fn task_by_vpid(nr: i32) -> Option<ARef<Task>> {
    // SAFETY: `find_get_pid` accepts any number and returns NULL or a counted `struct pid`.
    let pid = unsafe { bindings::find_get_pid(nr) };
    if pid.is_null() {
        return None;
    }
    // SAFETY: `pid` is a valid counted reference; `get_pid_task` takes its own reference.
    let task = unsafe { bindings::get_pid_task(pid, bindings::pid_type_PIDTYPE_PID) };
    // SAFETY: drops the reference `find_get_pid` gave us; `pid` is not used afterwards.
    unsafe { bindings::put_pid(pid) };
    let task = NonNull::new(task.cast::<Task>())?;
    // SAFETY: `get_pid_task` returned a counted reference, which the `ARef` now owns. `Task` is
    // `repr(transparent)` over `task_struct`.
    Some(unsafe { ARef::from_raw(task) })
}

/// Whether `task` is a kernel thread (it has no user address space to inspect).
pub(crate) fn is_kernel_thread(task: &Task) -> bool {
    // SAFETY: `task` is valid; `flags` is only read (a racy read of PF_KTHREAD is fine: it is
    // set at creation and never cleared). The offset is checked at load time (layout.rs).
    let flags = unsafe { core::ptr::read_volatile(&raw const (*task.as_ptr()).flags) };
    flags & bindings::PF_KTHREAD != 0
}

/// Whether `a` and `b` belong to the same thread group (process).
pub(crate) fn same_thread_group(a: &Task, b: &Task) -> bool {
    // SAFETY: both tasks are valid; `signal` is set at creation and stays until the task
    // struct is freed, which our references prevent.
    unsafe { (*a.as_ptr()).signal == (*b.as_ptr()).signal }
}

/// Number of threads in `task`'s thread group (the kernel's `get_nr_threads()`).
pub(crate) fn nr_threads(task: &Task) -> u32 {
    // SAFETY: `signal` is valid while we hold the task (see `same_thread_group`); the count
    // changes concurrently, so it is read once, like `get_nr_threads()` does.
    let n = unsafe { core::ptr::read_volatile(&raw const (*(*task.as_ptr()).signal).nr_threads) };
    u32::try_from(n).unwrap_or(0)
}

/// The ids a ptrace-style permission check compares.
#[derive(Clone, Copy)]
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) euid: u32,
    pub(crate) egid: u32,
    pub(crate) suid: u32,
    pub(crate) sgid: u32,
    user_ns: *mut bindings::user_namespace,
}

fn ids_of(cred: &Credential) -> Ids {
    let c = cred.as_ptr();
    // SAFETY: `cred` is a valid credential; credentials are immutable once published.
    unsafe {
        Ids {
            uid: (*c).uid.val,
            gid: (*c).gid.val,
            euid: (*c).euid.val,
            egid: (*c).egid.val,
            suid: (*c).suid.val,
            sgid: (*c).sgid.val,
            user_ns: (*c).user_ns,
        }
    }
}

/// The calling task's subjective credentials (`current_cred()`).
pub(crate) fn current_ids() -> Ids {
    let cur = kernel::current!();
    // SAFETY: `current->cred` is valid while current runs, and only current replaces it.
    let cred = unsafe { Credential::from_ptr((*cur.as_ptr()).cred) };
    ids_of(cred)
}

/// `task`'s objective credentials (`__task_cred()`), read through a counted reference.
pub(crate) fn task_ids(task: &Task) -> Ids {
    // SAFETY: `task` is valid; `get_task_cred` returns a counted, non-NULL credential.
    let cred = unsafe { bindings::get_task_cred(task.as_ptr()) };
    // SAFETY: non-NULL and counted (above); the `ARef` drops that count with `put_cred`.
    let cred: ARef<Credential> =
        unsafe { ARef::from_raw(NonNull::new_unchecked(cred.cast_mut().cast::<Credential>())) };
    ids_of(&cred)
}

/// `ns_capable(ids.user_ns, CAP_SYS_PTRACE)`: may the caller ptrace tasks owned by that user
/// namespace whatever their ids? (May audit, like ptrace's own check.)
pub(crate) fn caller_has_ptrace_cap_over(ids: &Ids) -> bool {
    // SAFETY: `user_ns` came from a credential we held; user namespaces live at least as long as
    // the tasks and credentials in them, and the target is pinned by our task reference.
    unsafe { bindings::ns_capable(ids.user_ns, bindings::CAP_SYS_PTRACE as i32) }
}

/// The dumpability step of the ptrace check: the task is owner-dumpable, or the caller has
/// CAP_SYS_PTRACE over the namespace it was exec'd in.
pub(crate) fn task_still_dumpable(task: &Task) -> bool {
    // SAFETY: `task` is valid; the helper reads `exec_state` under RCU.
    unsafe { ckpt_helper_task_still_dumpable(task.as_ptr().cast()) }
}

/// Whether the calling thread is `task`'s tracer (it attached with PTRACE_SEIZE or
/// PTRACE_ATTACH, or `task` was born traced by it).
pub(crate) fn traced_by_current(task: &Task) -> bool {
    // SAFETY: `task` is valid; the helper reads its tracer under RCU and only compares it.
    unsafe { ckpt_helper_traced_by_current(task.as_ptr().cast()) }
}

/// Whether the caller may open a root-owned node of mode 0660 and group `gid` (its fsuid is
/// root, `gid` is one of its groups, or it has CAP_DAC_OVERRIDE).
pub(crate) fn may_open_as_group(gid: u32) -> bool {
    // SAFETY: the helper only inspects the caller's credentials.
    unsafe { ckpt_helper_may_open_as_group(gid) }
}

/// Read guard on `task->signal->exec_update_lock`: while held, the task cannot exec, so its
/// credentials and mm stay the ones a permission check saw (like `mm_access()`).
pub(crate) struct ExecUpdateReadGuard<'a> {
    task: &'a Task,
}

impl<'a> ExecUpdateReadGuard<'a> {
    pub(crate) fn lock_killable(task: &'a Task) -> Result<Self> {
        // SAFETY: `signal` is valid while we hold the task; the semaphore is initialised.
        let ret = unsafe {
            bindings::down_read_killable(&raw mut (*(*task.as_ptr()).signal).exec_update_lock)
        };
        to_result(ret)?;
        Ok(Self { task })
    }
}

impl Drop for ExecUpdateReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: we took the read lock in `lock_killable` and release it exactly once.
        unsafe { bindings::up_read(&raw mut (*(*self.task.as_ptr()).signal).exec_update_lock) };
    }
}

/// clear_child_tid, the alternate signal stack and the personality of `task`.
pub(crate) fn task_misc(task: &Task) -> TaskMisc {
    let mut out = TaskMisc::default();
    // SAFETY: `task` is valid; `out` is a valid `struct ckpt_task_misc`.
    unsafe { ckpt_helper_task_misc(task.as_ptr().cast(), &mut out) };
    out
}

/// The signal dispositions of `task`'s process.
pub(crate) fn sigactions(task: &Task, out: &mut [CkptSigaction; CKPT_NSIG]) -> Result {
    // SAFETY: `task` is valid; `out` has room for `CKPT_NSIG` entries.
    let ret = unsafe {
        ckpt_helper_get_sigactions(task.as_ptr().cast(), out.as_mut_ptr(), CKPT_NSIG as u32)
    };
    to_result(ret)
}

/// Which itimers of `task`'s process are armed: bit `ITIMER_REAL`, `ITIMER_VIRTUAL`,
/// `ITIMER_PROF` (ESRCH once it has exited).
pub(crate) fn itimers_armed(task: &Task) -> Result<u32> {
    // SAFETY: `task` is valid; the helper takes the locks it needs.
    let ret = unsafe { ckpt_helper_itimers_armed(task.as_ptr().cast()) };
    to_result(ret)?;
    u32::try_from(ret).map_err(|_| EINVAL)
}

/// `capable(cap)`: does the caller have `cap` in the initial user namespace?
pub(crate) fn capable(cap: u32) -> bool {
    // SAFETY: `capable` accepts any capability number and only inspects the caller.
    unsafe { bindings::capable(cap as i32) }
}

/// Kills the caller: after a failed restore its memory is gone and it must never run again.
pub(crate) fn force_sigkill_current() {
    // SAFETY: `force_sig` acts on current with any signal number.
    unsafe { bindings::force_sig(bindings::SIGKILL as i32) };
}

/// Whether the caller has a signal pending (interruptible loops stop then).
pub(crate) fn signal_pending() -> bool {
    kernel::current!().signal_pending()
}

/// Whether the caller has been killed (SIGKILL, or a fatal signal turned into it). Loops that
/// must not stop for an ordinary signal (past the restore's point of no return) stop for this.
pub(crate) fn fatal_signal_pending() -> bool {
    task_killed(kernel::current!())
}

/// Whether `task` has been killed (as [`fatal_signal_pending`] for current): a worker acting
/// for it stops then.
pub(crate) fn task_killed(task: &Task) -> bool {
    // SAFETY: `task` is valid; the helper only reads its pending signals.
    unsafe { ckpt_helper_fatal_signal_pending(task.as_ptr().cast()) }
}
