//! The control thread: the application's endpoint for `ckpt`.
//!
//! It is a raw thread (clone, its own stack and thread pointer), invisible to glibc: a glibc
//! thread would switch a single-threaded program into glibc's multi-threaded mode (locked
//! stdio and malloc arenas, cancellation bookkeeping around every blocking call). So this
//! thread runs only raw system calls (`raw.rs`) on fixed buffers, and never touches errno,
//! malloc or thread-local state.
//!
//! It also has its own fd table (no CLONE_FILES) and fs context (no CLONE_FS): a thread that
//! shares the fd table makes the kernel take a reference and the file-position lock on every
//! read and write of the program's (measured: +19 % on 1-byte writes). Its sockets are thus
//! not in the program's fd table at all; it reaches the program's files through
//! pidfd_getfd. `ckpt restore` recreates it the same way (`Thread::own_files`).
//!
//! Stdio is flushed by glibc code, in one of two ways:
//! - the program has threads of its own (it called pthread_create, interposed here): a glibc
//!   helper thread ("ckpt-flush", free at that point) runs fflush(NULL) before the freeze,
//!   with stdio's own locking;
//! - the program is single-threaded: ckpt, once it has frozen the process, makes the main
//!   thread call `ckpt_interceptor_flush` (`trampoline.rs`) if it stopped at a safe point (see
//!   `userspace/ckpt/src/flush.rs`).
//!
//! In a restored process the thread's fd table starts empty (`ckpt restore` closes what the
//! new thread got): its pending accept or read fails with EBADF and it makes a new endpoint.
//!
//! The parts, each using only parts listed before it:
//! - `status`: whether the thread runs, and its tid; `config`: the runtime directory, the
//!   application id and the paths made of them; `tid_offset`: where glibc keeps a thread's tid;
//! - `line_io`, `proc_dir`: protocol lines and /proc directories on fixed buffers;
//! - `trampoline`, `flush`, `sync_files`: stdio flushing and fdatasync of written files;
//! - `creds`: following the program's credentials;
//! - `protocol`: one connection, one request (INFO, PREPARE/READY/DONE, CREDS);
//! - `endpoint`: the socket made, served, made again when lost;
//! - `spawn`: the raw thread itself, which runs `endpoint::serve_forever`.

mod config;
mod creds;
mod endpoint;
mod flush;
mod line_io;
mod proc_dir;
mod protocol;
mod spawn;
mod status;
mod sync_files;
mod tid_offset;
mod trampoline;

pub use creds::follow_credentials;
pub use flush::{program_made_a_thread, PthreadCreate};

use ckpt_abi::interceptor::{ENV_APP_ID, ENV_RUNTIME_DIR};
use core::sync::atomic::Ordering::{Relaxed, Release};
use status::RUNNING;

/// Starts the control thread, if the process runs under `ckpt run`. Called in a glibc thread
/// (the constructor, or a fork child).
pub fn start() {
    let (Some(rt), Some(app)) = (
        std::env::var_os(ENV_RUNTIME_DIR),
        std::env::var_os(ENV_APP_ID),
    ) else {
        return; // preloaded by hand: only the (inactive) id functions are here
    };
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the control thread does not exist yet in this process.
    if !unsafe { config::set(rt.as_bytes(), app.as_bytes()) } {
        return;
    }
    tid_offset::find();
    if spawn::spawn_raw_thread().is_ok() {
        RUNNING.store(true, Release);
    }
}

/// In a child after fork: the parent's endpoint and threads are not the child's (the
/// endpoint's fds were in the control thread's own table, which the child does not have).
pub extern "C" fn after_fork_in_child() {
    endpoint::forget();
    flush::forget_helper();
    RUNNING.store(false, Relaxed);
    start();
}
