//! Where glibc's `struct pthread` (at the thread pointer on x86-64) keeps the kernel tid.
//! `ckpt restore` rewrites that field when a thread comes back under another tid, so that
//! glibc's pthread_kill, raise and mutex owner checks address the right thread. READY reports
//! the offset (`tidoff=`).

use crate::raw;
use core::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Offset of the tid in glibc's `struct pthread` (-1: not found).
static TID_OFFSET: AtomicI64 = AtomicI64::new(-1);

pub fn get() -> i64 {
    TID_OFFSET.load(Relaxed)
}

/// Finds the offset in the calling thread's descriptor: it must be a glibc thread.
pub fn find() {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let tid = raw::gettid();
    let mut fs_base = 0usize;
    const ARCH_GET_FS: u64 = 0x1003;
    // SAFETY: ARCH_GET_FS writes one word to the address given.
    let r = unsafe {
        raw::syscall6(
            libc::SYS_arch_prctl,
            [ARCH_GET_FS, &mut fs_base as *mut usize as u64, 0, 0, 0, 0],
        )
    };
    if r != 0 || fs_base != me {
        return;
    }
    // The tid follows glibc's thread control block (hundreds of bytes of it); its struct
    // pthread is larger than 2 KiB, so the reads stay inside it.
    for off in (0x100..0x800usize).step_by(4) {
        // SAFETY: inside this thread's live descriptor (see above); 4-byte aligned.
        let v = unsafe { core::ptr::read_volatile((me + off) as *const i32) };
        if v == tid {
            TID_OFFSET.store(off as i64, Relaxed);
            return;
        }
    }
}
