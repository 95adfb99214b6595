//! Making the control thread: a raw `clone` thread with its own stack and thread pointer,
//! unknown to glibc, and its first steps before it serves.
//!
//! It shares the address space and signal handlers (a thread of the process) but not the fd
//! table or fs context (see `mod.rs` for why): it starts with a copy of each.

use super::endpoint;
use super::status::CTL_TID;
use crate::raw;
use core::sync::atomic::Ordering::Relaxed;

const STACK_SIZE: usize = 128 * 1024;
/// Thread-pointer area: nothing of ours uses it, but anything that did would land here.
const TLS_SIZE: usize = 16 * 1024;

/// Makes the control thread, which runs [`thread_main`]. Err if the memory for its stack or
/// the thread itself could not be had.
pub fn spawn_raw_thread() -> Result<(), ()> {
    // SAFETY: anonymous private mappings of our own; the clone below gives the new thread
    // the top of the stack and the thread-pointer area, which nothing else uses.
    unsafe {
        let stack = libc::mmap(
            core::ptr::null_mut(),
            STACK_SIZE + TLS_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            return Err(());
        }
        let base = stack as usize;
        let stack_top = (base + STACK_SIZE) & !15;
        // x86-64 thread pointer convention: the word at the thread pointer points to itself.
        let tp = base + STACK_SIZE + TLS_SIZE / 2;
        *(tp as *mut usize) = tp;
        *((tp + 16) as *mut usize) = tp;
        // The thread starts with every signal blocked: it never runs a handler of the
        // program's, and process-directed signals go to the program's threads.
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let flags = (libc::CLONE_VM
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS) as u64;
        let r = clone_thread(flags, stack_top as u64, tp as u64);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        if r < 0 {
            libc::munmap(stack, STACK_SIZE + TLS_SIZE);
            return Err(());
        }
    }
    Ok(())
}

/// clone(2) whose child starts on `stack_top` in [`thread_main`] (and never returns here).
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of a stack nothing else uses, `tls` a
/// thread-pointer area likewise.
unsafe fn clone_thread(flags: u64, stack_top: u64, tls: u64) -> i64 {
    let ret: i64;
    core::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        // The child: a fresh stack, no frame to return to.
        "xor ebp, ebp",
        "call {entry}",
        "ud2",
        "2:",
        entry = sym thread_main,
        inlateout("rax") libc::SYS_clone => ret,
        in("rdi") flags,
        in("rsi") stack_top,
        in("rdx") 0u64,
        in("r10") 0u64,
        in("r8") tls,
        lateout("rcx") _,
        lateout("r11") _,
    );
    ret
}

/// The control thread's first steps, before it serves for the rest of its life.
extern "C" fn thread_main() -> ! {
    // The fd table is a copy of the program's: drop those references at once, or a file the
    // program closes would stay open here (a pipe would never see its end).
    raw::close_range_all();
    // Its own fs context too: this umask is not the program's. The socket is made connectable
    // by anyone (the directory only traversable): who is answered is decided by SO_PEERCRED,
    // and the program itself must still reach it after dropping privileges.
    raw::umask(0);
    CTL_TID.store(raw::gettid(), Relaxed);
    raw::prctl_set_name(b"ckpt-ctl\0");
    endpoint::serve_forever()
}
