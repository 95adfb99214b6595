//! Files: flock on an fd the caller keeps, and kcmp of two processes' fds (nix's `Flock`
//! owns its fd and unlocks on drop; nix has no kcmp).

use super::{check, check_int};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// flock(fd, LOCK_SH or LOCK_EX | LOCK_NB): a lock that stays with the open file description
/// after this returns. nix's `Flock` would own `fd` and unlock it on drop, and forgetting one
/// made from a dup would leak that dup into the restored process.
pub fn flock_nonblocking(fd: BorrowedFd, exclusive: bool) -> io::Result<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: plain syscall on a descriptor the caller borrows.
    check_int(unsafe { libc::flock(fd.as_raw_fd(), op | libc::LOCK_NB) }).map(drop)
}

/// Whether fd `a.1` of process `a.0` and fd `b.1` of process `b.0` are one open file
/// description (kcmp KCMP_FILE; needs ptrace access to both).
pub fn same_open_file(a: (i32, i32), b: (i32, i32)) -> io::Result<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only numbers and touches no memory of ours.
    let r = check(unsafe { libc::syscall(libc::SYS_kcmp, a.0, b.0, KCMP_FILE, a.1, b.1) })?;
    Ok(r == 0)
}
