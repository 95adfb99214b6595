//! UNIX sockets: the peer's supplementary groups (SO_PEERGROUPS answers a list of varying
//! length, which nix's fixed-size socket options cannot take).

use super::check_int;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// getsockopt(SO_PEERGROUPS): the supplementary groups of the credentials the socket's peer
/// had when the connection was made (ENODATA: it has none recorded).
pub fn peer_groups(s: BorrowedFd) -> io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536: ask for the size first (ERANGE gives it), then read.
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`, and `len` back.
        let r = check_int(unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        });
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        match r {
            Ok(_) => {
                groups.truncate(n);
                return Ok(groups);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() => {
                groups.resize(n, 0);
            }
            Err(e) => return Err(e),
        }
    }
}
