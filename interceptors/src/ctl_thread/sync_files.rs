//! Making what the program wrote durable before its image is taken.

use super::proc_dir::for_each_number;
use crate::raw;

/// fdatasync of every regular file the program has open for writing, so that what the image
/// says was written is on disk. The program's fds are in its table, not ours: each is copied
/// here with pidfd_getfd (always allowed within a process) for the call. Returns how many.
pub fn sync_written_files() -> i64 {
    let mut fds = [0i32; 1024];
    let Some(n) = program_fds(&mut fds) else {
        return 0;
    };
    let pidfd = raw::pidfd_open(raw::getpid());
    if pidfd < 0 {
        return 0;
    }
    let pidfd = pidfd as i32;
    let mut synced = 0;
    for &target in &fds[..n] {
        let fd = raw::pidfd_getfd(pidfd, target);
        if fd < 0 {
            continue;
        }
        let fd = fd as i32;
        if sync_if_written_regular_file(fd) {
            synced += 1;
        }
        raw::close(fd);
    }
    raw::close(pidfd);
    synced
}

/// The program's fd numbers (as many as `fds` holds); how many.
fn program_fds(fds: &mut [i32]) -> Option<usize> {
    // /proc/self is the thread group's leader: its fd table is the program's.
    let dir = raw::open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    );
    if dir < 0 {
        return None;
    }
    let dir = dir as i32;
    let mut n = 0;
    for_each_number(dir, &[], |fd| {
        if n < fds.len() {
            fds[n] = fd;
            n += 1;
        }
    });
    raw::close(dir);
    Some(n)
}

/// fdatasync of `fd` if it is a regular file open for writing; whether it was synced.
fn sync_if_written_regular_file(fd: i32) -> bool {
    let fl = raw::fcntl(fd, libc::F_GETFL, 0);
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    fl >= 0
        && (fl as i32) & libc::O_ACCMODE != libc::O_RDONLY
        && raw::fstat(fd, &mut st) == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        && raw::fdatasync(fd) == 0
}
