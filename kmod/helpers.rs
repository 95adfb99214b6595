// SPDX-License-Identifier: GPL-2.0
//! Every raw `bindings::` call and C helper the module uses, each wrapped once in a small safe
//! function. The rest of the module calls only these.
//!
//! They are grouped by the kernel object they act on: `task` (tasks, credentials, signals),
//! `mm` (address spaces and memory) and `file` (files and fds). Each file declares the C
//! helpers (`ckpt_helpers.c`) it wraps. Everything is re-exported here, so callers name
//! `helpers::x` whatever the group.

mod file;
mod mm;
mod task;

pub(crate) use file::{close_fds_on_return, hash_page, FileRef};
pub(crate) use mm::{
    access_process_vm, find_vma, mm_layout, mm_sole_user, pin_remote_pages, read_user_array,
    set_mm_layout, task_mm, vm_mmap, vm_munmap, vma_is_private_anon, with_own_pages_pinned,
    PinnedPage,
};
pub(crate) use task::{
    c_layout, caller_has_ptrace_cap_over, capable, current_ids, fatal_signal_pending,
    force_sigkill_current, is_kernel_thread, itimers_armed, may_open_as_group, nr_threads,
    same_thread_group, sigactions, signal_pending, task_by_vpid, task_ids, task_killed, task_misc,
    task_still_dumpable, traced_by_current, CLayout, ExecUpdateReadGuard,
};
