//! Per-thread kernel state with no nix call: robust futex list, clear_child_tid, rseq.

use super::check;
use std::io;

/// `get_robust_list(pid)`: (head, len).
pub fn get_robust_list(pid: i32) -> io::Result<(u64, u64)> {
    let mut head = 0u64;
    let mut len = 0usize;
    // SAFETY: out-pointers to our own variables.
    check(unsafe { libc::syscall(libc::SYS_get_robust_list, pid, &mut head, &mut len) })?;
    Ok((head, len as u64))
}

pub fn set_robust_list(head: u64, len: u64) -> io::Result<()> {
    // SAFETY: the kernel only stores the pointer.
    check(unsafe { libc::syscall(libc::SYS_set_robust_list, head, len) }).map(drop)
}

pub fn set_tid_address(addr: u64) {
    // SAFETY: the kernel only stores the pointer; the call cannot fail.
    unsafe { libc::syscall(libc::SYS_set_tid_address, addr) };
}

const RSEQ_FLAG_UNREGISTER: i32 = 1;

pub fn rseq(addr: u64, len: u32, flags: i32, sig: u32) -> io::Result<()> {
    // SAFETY: registers/unregisters an rseq area; the kernel validates it.
    check(unsafe { libc::syscall(libc::SYS_rseq, addr, len, flags, sig) }).map(drop)
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// Removes glibc's rseq registration of the calling (single) thread, so that the kernel stops
/// writing to an area that a restore is about to replace. Returns whether one was removed.
pub fn unregister_own_rseq() -> io::Result<bool> {
    // SAFETY: glibc's exported, read-only rseq ABI variables.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return Ok(false);
    }
    let mut tp = 0u64;
    // SAFETY: ARCH_GET_FS stores the fs base in `tp`.
    check(unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut tp) })?;
    let area = (tp as i64 + offset as i64) as u64;
    const RSEQ_SIG: u32 = 0x5305_3053;
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for len in [size.max(32), 32, size] {
        match rseq(area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) {
            Ok(()) => return Ok(true),
            Err(e) => last = e,
        }
    }
    Err(last)
}
