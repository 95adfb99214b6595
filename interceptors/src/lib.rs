//! `libckpt_interceptor.so`: the library `ckpt run` preloads into an application.
//!
//! It costs nothing while no checkpoint runs: a constructor starts one control thread, a raw
//! thread glibc does not know about (so a single-threaded program stays in glibc's cheaper
//! single-threaded mode), with every signal blocked, that sleeps in `accept` on a UNIX socket
//! `RUNTIME_DIR/APP/PID.sock`; the interposed id functions (`virt.rs`) take one relaxed load
//! and one branch before doing what libc would have done.
//!
//! A checkpoint (`ckpt checkpoint PID`) connects and asks to PREPARE: the library fdatasyncs
//! the regular files open for writing and flushes stdio (or says how ckpt can, see
//! `ctl_thread/flush.rs`), reports where its control block is, then waits for DONE.
//! Meanwhile ckpt freezes every thread with ptrace (the barrier: each thread stops at the
//! kernel boundary, and a thread blocked in read, accept, poll, nanosleep or a futex wait has
//! its call restarted by the kernel on resume, so the program never sees EINTR), dumps the
//! process (the library's sockets are in the control thread's own fd table, not the
//! program's), and lets it go.
//!
//! In a restored process the control thread comes back blocked on a connection that no longer
//! exists: its read fails with EBADF, and it makes a new endpoint under the new kernel pid.
//! Before any thread ran, `ckpt restore` filled the control block's translation table, so
//! `getpid`, `gettid` and friends answer with the ids the program had.

// The interposed functions are C ABI symbols: their contract is libc's, documented in the
// man pages, not in Rust `# Safety` sections.
#![allow(clippy::missing_safety_doc)]

mod control;
mod ctl_thread;
mod raw;
mod virt;

/// Runs when the library is loaded, before the program's `main`.
extern "C" fn init() {
    ctl_thread::start();
    // SAFETY: registering a plain function pointer; `after_fork_in_child` only touches this
    // library's own state.
    unsafe {
        libc::pthread_atfork(None, None, Some(ctl_thread::after_fork_in_child));
    }
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
