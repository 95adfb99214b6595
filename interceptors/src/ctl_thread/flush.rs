//! Stdio flushing for a checkpoint, by glibc code that cannot race the program.
//!
//! When the program has threads of its own (it called pthread_create, interposed here), a
//! glibc helper thread ("ckpt-flush", free at that point) runs fflush(NULL) before the freeze,
//! with stdio's own locking. A single-threaded program is flushed by ckpt itself once frozen
//! (`trampoline.rs`); here the control thread only says which way applies.

use super::proc_dir::count_numeric_entries;
use super::status::RUNNING;
use crate::raw;
use core::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use core::sync::atomic::{AtomicBool, AtomicU32};

/// The helper thread exists (the program has threads of its own).
static HELPER: AtomicBool = AtomicBool::new(false);
/// Flush handshake with the helper: 0 idle, 1 asked, 2 done.
static FLUSH: AtomicU32 = AtomicU32::new(0);

/// In a fork child: the parent's helper thread is not the child's.
pub fn forget_helper() {
    HELPER.store(false, Relaxed);
    FLUSH.store(0, Relaxed);
}

/// How stdio gets flushed for this checkpoint.
pub fn flush_stdio() -> &'static [u8] {
    if HELPER.load(Acquire) {
        FLUSH.store(1, SeqCst);
        raw::futex_wake(&FLUSH);
        // The helper takes each stream's lock: a thread holding one for long (blocked on a
        // full pipe) holds us up; ckpt gives up after its own timeout.
        // Within ckpt's own 10 s, so that ckpt gets the answer.
        for _ in 0..500 {
            let v = FLUSH.load(SeqCst);
            if v == 2 {
                FLUSH.store(0, SeqCst);
                return b"done";
            }
            raw::futex_wait(&FLUSH, v, 10);
        }
        return b"timeout";
    }
    if program_threads() == 1 {
        b"infcall"
    } else {
        // Threads that glibc made for itself or that appeared before this library: no helper,
        // and the main thread cannot flush safely while they run.
        b"skipped"
    }
}

/// Threads of the process other than this library's.
fn program_threads() -> usize {
    let fd = raw::open(
        b"/proc/self/task\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    );
    if fd < 0 {
        return usize::MAX;
    }
    let n = count_numeric_entries(fd as i32, &[]);
    raw::close(fd as i32);
    n.saturating_sub(1 + usize::from(HELPER.load(Relaxed)))
}

/// Runs in the helper: flushes when the control thread asks.
extern "C" fn helper_main(_: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: naming this thread.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"ckpt-flush".as_ptr()) };
    loop {
        let v = FLUSH.load(SeqCst);
        if v != 1 {
            raw::futex_wait(&FLUSH, v, 0);
            continue;
        }
        // SAFETY: fflush(NULL) flushes every stream, taking each one's lock.
        unsafe { libc::fflush(core::ptr::null_mut()) };
        FLUSH.store(2, SeqCst);
        raw::futex_wake(&FLUSH);
    }
}

/// libc's pthread_create, which the interposed one calls.
pub type PthreadCreate = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    *mut libc::c_void,
) -> libc::c_int;

/// The program made a thread: it is a multi-threaded glibc program from now on, so a glibc
/// helper thread costs it nothing more; start one (once) to flush stdio with proper locking.
pub fn program_made_a_thread(real: PthreadCreate) {
    // A plain load first: this runs on every pthread_create of the program.
    if HELPER.load(Relaxed) || !RUNNING.load(Acquire) || HELPER.swap(true, SeqCst) {
        return;
    }
    // SAFETY: sigset_t is plain data; the helper starts with every signal blocked.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 64 * 1024);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut t: libc::pthread_t = 0;
        if real(&mut t, &attr, helper_main, core::ptr::null_mut()) != 0 {
            HELPER.store(false, SeqCst);
        }
        libc::pthread_attr_destroy(&mut attr);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
    }
}
