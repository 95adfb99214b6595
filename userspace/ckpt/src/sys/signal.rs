//! Signals by number (nix's `Signal` lacks the real-time ones) and the raw rt_sigaction (glibc's
//! sigaction, which nix calls, replaces the restorer address with its own).

use super::{check, check_int};
use std::io;

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) }).map(drop)
}

/// The kernel's `struct sigaction` for rt_sigaction(2).
#[repr(C)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

pub fn rt_sigaction(sig: u32, act: &KernelSigaction) -> io::Result<()> {
    // SAFETY: `act` is a valid kernel sigaction; the handler address is only stored.
    check(unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act as *const KernelSigaction,
            0usize,
            8usize,
        )
    })
    .map(drop)
}

/// sigaltstack with any address: the restored program's stack is not ckpt's memory (nix takes
/// a buffer of ours).
pub fn sigaltstack(sp: u64, size: u64, flags: u32) -> io::Result<()> {
    let ss = libc::stack_t {
        ss_sp: sp as *mut _,
        ss_flags: flags as i32,
        ss_size: size as usize,
    };
    // SAFETY: `ss` is valid; the kernel only stores it.
    check_int(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }).map(drop)
}

/// Queues signal `sig` with the siginfo `info` to process `pid` (rt_sigqueueinfo) or, with
/// `tid`, to that thread (rt_tgsigqueueinfo): a signal taken from a stopped thread goes back
/// as it came (a timer's si_code, id and value). nix has neither call. The kernel refuses
/// (EPERM) siginfo it made itself or a kill made (si_code >= 0, SI_TKILL).
pub fn sigqueueinfo(
    pid: i32,
    tid: Option<i32>,
    sig: i32,
    info: &libc::siginfo_t,
) -> io::Result<()> {
    let info = info as *const libc::siginfo_t;
    // SAFETY: `info` is a whole siginfo_t the kernel only reads.
    check(unsafe {
        match tid {
            Some(tid) => libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, info),
            None => libc::syscall(libc::SYS_rt_sigqueueinfo, pid, sig, info),
        }
    })
    .map(drop)
}
