//! Processes: clone3 with a chosen pid, _exit, pidfd_getfd, limits of another process, and
//! ioctls with a typed argument (nix has none of these in this form).

use super::{check, check_int};
use std::io;

/// prlimit of another process, by raw resource number (nix takes only its own, by enum).
pub fn prlimit_get(pid: i32, resource: u32) -> io::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid out-pointer.
    check_int(unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut old) })?;
    Ok((old.rlim_cur, old.rlim_max))
}

pub fn prlimit_set(resource: u32, cur: u64, max: u64) -> io::Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: `new` is valid.
    check_int(unsafe { libc::prlimit64(0, resource as _, &new, std::ptr::null_mut()) }).map(drop)
}

/// clone3 with `set_tid = [pid]` (the restored process gets its old pid), or a plain fork when
/// `pid` is None. Returns 0 in the child.
pub fn fork_with_pid(pid: Option<i32>) -> io::Result<i32> {
    clone3_fork(pid, 0)
}

/// A fork whose child is pid 1 of a new pid namespace. Returns 0 in the child.
pub fn fork_into_new_pid_namespace() -> io::Result<i32> {
    clone3_fork(None, libc::CLONE_NEWPID as u64)
}

fn clone3_fork(pid: Option<i32>, flags: u64) -> io::Result<i32> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tid = pid.unwrap_or(0);
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            &tid as *const i32 as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    // SAFETY: like fork(): no CLONE_VM, so the child gets a copy of our memory and returns
    // here with 0. ckpt is single-threaded when it forks its restorers (the restore's pages
    // check starts after: `image::background`), so the child may do anything.
    check(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    })
    .map(|r| r as i32)
}

/// prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP): the caller's capabilities stay as they
/// are when it changes its uids (nix has no securebits call). Needs CAP_SETPCAP.
pub fn keep_caps_across_setuid() -> io::Result<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    // SAFETY: plain prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) })
        .map(drop)
}

pub fn exit_now(code: i32) -> ! {
    // SAFETY: ends the process without running destructors (a forked child).
    unsafe { libc::_exit(code) }
}

/// An ioctl whose argument is one `T`. The kernel validates any user pointers inside it.
pub fn ioctl_with<T>(fd: i32, cmd: u32, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is a valid, exclusively borrowed `T` for the duration of the call.
    check_int(unsafe { libc::ioctl(fd, cmd as _, arg as *mut T) })
}

/// A dup of fd `fd` of process `pid` (pidfd_open + pidfd_getfd; needs ptrace permission).
pub fn steal_fd(pid: i32, fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls; the returned fds are new and ours.
    unsafe {
        let pidfd = check(libc::syscall(libc::SYS_pidfd_open, pid, 0))? as i32;
        let pidfd = std::os::fd::OwnedFd::from_raw_fd(pidfd);
        let r = check(libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        ))?;
        Ok(std::os::fd::OwnedFd::from_raw_fd(r as i32))
    }
}

/// dup2(from, to), checked (nix 0.32's `dup2_raw` wraps a failed dup2's -1 in an OwnedFd).
pub fn dup2(from: i32, to: i32) -> io::Result<()> {
    // SAFETY: plain syscall on fd numbers; the caller owns what `to` replaces.
    check_int(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Closes every fd from `first` to `last` (nix has no close_range).
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: closes fds of ours; the caller owns none of them any more.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}
