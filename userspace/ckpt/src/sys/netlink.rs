//! Netlink sockets: one of any protocol number (nix's `socket` takes only the protocols its
//! `SockProtocol` names), and the list of multicast groups one joined (NETLINK_LIST_MEMBERSHIPS
//! answers a bitmap of varying length).

use super::check_int;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// socket(AF_NETLINK, SOCK_RAW or SOCK_DGRAM, `protocol`) (its fd flags come when it is
/// placed, as for every kind).
pub fn netlink_socket(datagram: bool, protocol: i32) -> io::Result<OwnedFd> {
    let ty = match datagram {
        true => libc::SOCK_DGRAM,
        false => libc::SOCK_RAW,
    };
    // SAFETY: socket(2) with plain integer arguments; the result is a new fd we own.
    let fd = check_int(unsafe { libc::socket(libc::AF_NETLINK, ty, protocol) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The multicast groups (numbered from 1) netlink socket `s` has joined.
pub fn netlink_groups(s: BorrowedFd) -> io::Result<Vec<u32>> {
    // Groups go up to 2^32 in principle; the kernel answers the length it needs.
    let mut words = vec![0u32; 4];
    loop {
        let mut len = (words.len() * 4) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `words`, and the length it needs
        // into `len`.
        check_int(unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_LIST_MEMBERSHIPS,
                words.as_mut_ptr().cast(),
                &mut len,
            )
        })?;
        let need = (len as usize).div_ceil(4);
        if need <= words.len() {
            words.truncate(need);
            break;
        }
        if need > 1 << 16 {
            return Err(io::Error::other("too many netlink groups"));
        }
        words.resize(need, 0);
    }
    let bits = words.iter().enumerate().flat_map(|(i, w)| {
        (0..32)
            .filter(move |b| w & (1 << b) != 0)
            .map(move |b| i as u32 * 32 + b + 1)
    });
    Ok(bits.collect())
}
