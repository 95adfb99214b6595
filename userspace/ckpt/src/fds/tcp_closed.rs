//! TCP connections recorded as closed (`ckpt checkpoint --tcp-close`): instead of carrying a
//! connection (and locking the network), the checkpoint keeps only its addresses. On restore
//! its fds are a TCP socket whose peer has reset the connection: ckpt connects a socket to
//! a listener of its own on the loopback address and resets it from the accepted end
//! (SO_LINGER 0, then close), so that the program's next read fails with ECONNRESET, later
//! ones return end of file, and a write fails with EPIPE: what a program sees of a peer
//! that went away, and handles. Its local and peer addresses are then that loopback pair,
//! not the recorded ones (shown by `ckpt inspect`).

use super::socket::{display, local_address, sockaddr_bytes, valid_address};
use super::{DumpCtx, DumpError, Fd, FdState, RestoreCtx, View};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getpeername, setsockopt, sockopt, SockaddrStorage};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClosedTcp {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// Local and peer addresses when checkpointed (`struct sockaddr_in*`; the peer's is
    /// empty if it had none).
    pub local: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer: Vec<u8>,
    /// "local -> peer", for humans.
    pub display: String,
}

/// An fd of a closed connection; `conn` indexes `Shared::tcp_closed`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcpClosedEnd {
    pub conn: usize,
}

/// Records TCP socket `s` (inode `inode`) as a closed connection, once for the tree.
pub fn dump_closed(ctx: &mut DumpCtx, s: &OwnedFd, inode: u64) -> Result<TcpClosedEnd, DumpError> {
    if let Some(&conn) = ctx.shared.tcp_closed_index.get(&inode) {
        return Ok(TcpClosedEnd { conn });
    }
    let local = local_address(s).map_err(super::io_error("getsockname"))?;
    let family = super::socket::family_of(&local).unwrap_or(-1);
    let peer = getpeername::<SockaddrStorage>(s.as_raw_fd())
        .map(|p| sockaddr_bytes(&p))
        .unwrap_or_default();
    let peer_shown = match peer.is_empty() {
        true => "(no peer)".into(),
        false => display(family, &peer),
    };
    let table = &mut ctx.shared.table.tcp_closed;
    table.push(ClosedTcp {
        family,
        display: format!("{} -> {peer_shown}", display(family, &local)),
        local,
        peer,
    });
    ctx.shared.tcp_closed_index.insert(inode, table.len() - 1);
    Ok(TcpClosedEnd {
        conn: table.len() - 1,
    })
}

impl ClosedTcp {
    /// A TCP socket whose peer has reset the connection (see the module documentation).
    pub fn make(&self) -> io::Result<OwnedFd> {
        let listener = match self.family {
            libc::AF_INET6 => TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
                .or_else(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))),
            _ => TcpListener::bind((Ipv4Addr::LOCALHOST, 0)),
        }?;
        let at: SocketAddr = listener.local_addr()?;
        let ours = OwnedFd::from(TcpStream::connect(at)?);
        let (theirs, _) = listener.accept()?;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(&theirs, sockopt::Linger, &linger)?;
        drop(theirs); // sends the reset
                      // Received at once on loopback, as a rule; waited for, so the program meets it.
        let mut pfd = [PollFd::new(ours.as_fd(), PollFlags::POLLIN)];
        poll(&mut pfd, PollTimeout::from(2000u16))?;
        let reset = pfd[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP));
        if !reset {
            return Err(io::Error::other("the reset was not received"));
        }
        Ok(ours)
    }
}

impl FdState for TcpClosedEnd {
    fn what(&self) -> &'static str {
        "the closed TCP connection"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let made = ctx
            .shared
            .tcp_closed
            .get(self.conn)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        super::place_copy(made, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.conn < v.shared.tcp_closed.len()
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        match v.shared.tcp_closed.get(self.conn) {
            Some(c) => format!(
                "TCP connection {}, recorded closed (--tcp-close): reset on restore",
                c.display
            ),
            None => "closed TCP connection ?".into(),
        }
    }
}

/// Addresses of their family (image data is never trusted).
pub fn validate_closed(conns: &[ClosedTcp]) -> Result<(), String> {
    for c in conns {
        let ok = [libc::AF_INET, libc::AF_INET6].contains(&c.family)
            && valid_address(c.family, &c.local)
            && (c.peer.is_empty() || valid_address(c.family, &c.peer));
        if !ok {
            return Err(format!("bad closed TCP connection {}", c.display));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made socket reads ECONNRESET once, then end of file.
    #[test]
    fn a_closed_connection_reads_as_reset() {
        let c = ClosedTcp {
            family: libc::AF_INET,
            local: vec![],
            peer: vec![],
            display: String::new(),
        };
        let s = c.make().unwrap();
        let mut buf = [0u8; 8];
        let first = nix::unistd::read(&s, &mut buf);
        assert_eq!(first, Err(nix::Error::ECONNRESET));
        assert_eq!(nix::unistd::read(&s, &mut buf), Ok(0));
    }
}
