//! Files: flock on an fd the caller keeps, and kcmp of two processes' fds or of an fd and
//! an epoll instance's watched file (nix's `Flock` owns its fd and unlocks on drop; nix has
//! no kcmp).

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
    Ok(compare_open_files(a, b)? == std::cmp::Ordering::Equal)
}

/// kcmp's answer as an ordering: 0 equal, 1 less, 2 greater (it compares the kernel's
/// pointers, scrambled by a per-boot bijection, so the order is total and stable).
fn kcmp_ordering(r: libc::c_long) -> io::Result<std::cmp::Ordering> {
    match r {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        _ => Err(io::Error::other(format!("kcmp answered {r}"))),
    }
}

/// The order kcmp KCMP_FILE gives fd `a.1` of process `a.0` and fd `b.1` of process `b.0`:
/// equal when they are one open file description. Sorting fds by it puts the fds of each
/// description next to each other.
pub fn compare_open_files(a: (i32, i32), b: (i32, i32)) -> io::Result<std::cmp::Ordering> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only numbers and touches no memory of ours.
    kcmp_ordering(check(unsafe {
        libc::syscall(libc::SYS_kcmp, a.0, b.0, KCMP_FILE, a.1, b.1)
    })?)
}

/// Whether tasks `a` and `b` share one fd table (kcmp KCMP_FILES; needs ptrace access to
/// both): a thread created without CLONE_FILES has one of its own.
pub fn same_fd_table(a: i32, b: i32) -> io::Result<bool> {
    const KCMP_FILES: libc::c_long = 2;
    // SAFETY: kcmp takes only numbers and touches no memory of ours.
    let r = check(unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0, 0) })?;
    Ok(kcmp_ordering(r)? == std::cmp::Ordering::Equal)
}

/// Whether fd `file.1` of process `file.0` is the file that the epoll instance at fd `efd` of
/// process `pid` watches as its `toff`-th item added under fd number `tfd` (kcmp
/// KCMP_EPOLL_TFD: the only way to name a watched file, which epoll holds by pointer).
pub fn is_epoll_target(
    file: (i32, i32),
    (pid, efd): (i32, i32),
    (tfd, toff): (i32, u32),
) -> io::Result<bool> {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    // struct kcmp_epoll_slot { __u32 efd, tfd, toff; }
    let slot: [u32; 3] = [efd as u32, tfd as u32, toff];
    // SAFETY: the kernel reads the 12-byte slot, which lives across the call.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            file.0,
            pid,
            KCMP_EPOLL_TFD,
            file.1,
            slot.as_ptr(),
        )
    })?;
    Ok(kcmp_ordering(r)? == std::cmp::Ordering::Equal)
}

/// open_by_handle_at(mount, handle, O_PATH): the object a file handle (as /proc fdinfo shows
/// inotify and fanotify marks) names, found through a descriptor of a mount of its filesystem.
/// nix has no wrapper; needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(
    mount: BorrowedFd,
    handle_type: i32,
    bytes: &[u8],
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }, built in u32
    // words so that its alignment is right.
    let mut words = vec![0u32; 2 + bytes.len().div_ceil(4)];
    words[0] = bytes.len() as u32;
    words[1] = handle_type as u32;
    for (i, b) in bytes.iter().enumerate() {
        words[2 + i / 4] |= u32::from(*b) << (8 * (i % 4));
    }
    // SAFETY: `words` holds a complete file_handle of `bytes.len()` handle bytes (little
    // endian: the bytes land in memory order); the kernel only reads it. The result is a new
    // descriptor nothing else owns.
    unsafe {
        let fd = check(libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            words.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        ))?;
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd as i32))
    }
}

/// fcntl commands the libc crate does not name (asm-generic/fcntl.h).
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;

/// fcntl(F_GETSIG): the signal sent for the open file's I/O events and lease breaks (0:
/// SIGIO). nix has no F_GETSIG/F_SETSIG/F_SETLEASE.
pub fn io_signal(fd: BorrowedFd) -> io::Result<i32> {
    // SAFETY: plain syscall on a descriptor the caller borrows.
    check_int(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) })
}

/// fcntl(F_SETSIG, sig) then fcntl(F_SETLEASE): a read or write lease on the open file,
/// broken with `sig` (0: SIGIO); its owner is the caller's process.
pub fn set_lease(fd: BorrowedFd, sig: i32, write: bool) -> io::Result<()> {
    let kind = if write { libc::F_WRLCK } else { libc::F_RDLCK };
    // SAFETY: plain syscalls on a descriptor the caller borrows.
    unsafe {
        check_int(libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig))?;
        check_int(libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, kind)).map(drop)
    }
}
