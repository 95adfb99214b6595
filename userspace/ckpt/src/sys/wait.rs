//! waitpid with the raw status: nix's `WaitStatus` cannot represent a stop by a real-time
//! signal (its `Signal` names only the classic ones), which a traced program may receive.

use std::io;

/// `waitpid(pid, &status, flags)`; returns the raw status.
/// waitpid(pid, __WALL | WNOHANG): None while nothing happened.
pub fn waitpid_nohang(pid: i32) -> io::Result<Option<libc::c_int>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r > 0 {
            return Ok(Some(status));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

pub fn waitpid(pid: i32, flags: libc::c_int) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
