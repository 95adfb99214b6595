// SPDX-License-Identifier: GPL-2.0
//! Load-time check that bindgen laid out the C structs we read the way the C compiler did.
//!
//! It does not always: with CONFIG_SCHEDSTATS off bindgen misplaces most of `task_struct`, and in
//! every 7.2 tree `struct ns_common` is 128 bytes short. A module reading a wrong offset would
//! return garbage or corrupt memory, so ckpt refuses to load instead.

use crate::helpers::{c_layout, CLayout};
use core::mem::offset_of;
use kernel::{bindings, prelude::*};

fn rust_layout() -> CLayout {
    CLayout {
        task_flags: offset_of!(bindings::task_struct, flags) as u64,
        task_signal: offset_of!(bindings::task_struct, signal) as u64,
        task_cred: offset_of!(bindings::task_struct, cred) as u64,
        signal_nr_threads: offset_of!(bindings::signal_struct, nr_threads) as u64,
        signal_exec_update_lock: offset_of!(bindings::signal_struct, exec_update_lock) as u64,
        cred_uid: offset_of!(bindings::cred, uid) as u64,
        cred_gid: offset_of!(bindings::cred, gid) as u64,
        cred_suid: offset_of!(bindings::cred, suid) as u64,
        cred_sgid: offset_of!(bindings::cred, sgid) as u64,
        cred_euid: offset_of!(bindings::cred, euid) as u64,
        cred_egid: offset_of!(bindings::cred, egid) as u64,
        cred_user_ns: offset_of!(bindings::cred, user_ns) as u64,
    }
}

/// Fails with ENOEXEC (and says which fields differ) if any offset disagrees.
pub(crate) fn check() -> Result {
    let c = c_layout();
    let rust = rust_layout();
    if c == rust {
        return Ok(());
    }
    pr_err!(
        "bindgen struct layout differs from C; refusing to load.\n  C:    {:?}\n  Rust: {:?}\n",
        c,
        rust
    );
    Err(ENOEXEC)
}
