//! Connected pairs of UNIX stream sockets whose both ends the process holds (socketpair(2):
//! event-loop self-pipes, asyncio). The peer is found with sock_diag; the bytes queued at
//! each end are peeked (not consumed) and, on restore, sent again from the other end of a
//! new pair. Shut-down sockets and data with fds or credentials in flight are refused.

use super::{DumpCtx, DumpError, Fd, FdKind, FdState, RestoreCtx, View};
use crate::image::{section_is, Section, SectionKind};
use nix::sys::socket::{
    getsockopt, recv, send, setsockopt, socket, socketpair, sockopt, AddressFamily, MsgFlags,
    SockFlag, SockProtocol, SockType,
};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Bytes queued in a socket, unread.
pub const SOCKET_DATA: SectionKind = SectionKind::named("socket_data");

/// A socket pair inside the process, with what was queued at each end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketPair {
    /// The two sockets' inode numbers when checkpointed (for humans).
    pub inodes: [u64; 2],
    /// Per end, the `SOCKET_DATA` section with the bytes waiting to be read there, if any.
    pub data_sections: [Option<usize>; 2],
}

/// One end of a socket pair; `pair` indexes `Shared::socket_pairs`, `end` is 0 or 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketPairEnd {
    pub pair: usize,
    pub end: usize,
}

/// If socket `s` (a copy of one of the target's fds, inode `inode`) is a connected UNIX stream
/// socket whose peer the process also holds, records it as a pair end (the pair and what is
/// queued at this end); None for any other socket.
pub fn dump_end(ctx: &mut DumpCtx, s: &OwnedFd, inode: u64) -> Result<Option<FdKind>, DumpError> {
    let why = |e: nix::Error| super::unsupported(e.to_string());
    let family = super::socket::local_address(s)
        .ok()
        .and_then(|a| super::socket::family_of(&a));
    if family != Some(libc::AF_UNIX)
        || getsockopt(s, sockopt::SockType).map_err(why)? != SockType::Stream
    {
        return Ok(None);
    }
    let (peer, shutdown) =
        unix_diag(inode).map_err(|e| super::unsupported(format!("sock_diag: {e}")))?;
    let Some(peer) = peer.filter(|&p| p != 0).map(u64::from) else {
        return Ok(None);
    };
    if !ctx.shared.census.sockets.contains(&peer) {
        return Ok(None);
    }
    if shutdown != 0 {
        return Err(super::unsupported(
            "sockets shut down in one direction are not supported yet",
        ));
    }
    let queued = peek_queued(s)?;
    let key = inode.min(peer);
    let end = usize::from(inode > peer);
    let shared = &mut *ctx.shared;
    let pairs = &mut shared.table.socket_pairs;
    let pair = *shared.pair_index.entry(key).or_insert_with(|| {
        pairs.push(SocketPair {
            inodes: [key, inode.max(peer)],
            data_sections: [None, None],
        });
        pairs.len() - 1
    });
    if !queued.is_empty() && pairs[pair].data_sections[end].is_none() {
        let section = ctx
            .image
            .add_blob(SOCKET_DATA, &queued)
            .map_err(DumpError::Image)?;
        pairs[pair].data_sections[end] = Some(section);
    }
    Ok(Some(FdKind::SocketPairEnd(SocketPairEnd { pair, end })))
}

/// The bytes waiting to be read at socket `s`, peeked (not consumed).
fn peek_queued(s: &OwnedFd) -> Result<Vec<u8>, DumpError> {
    nix::ioctl_read_bad!(fionread, libc::FIONREAD, libc::c_int);
    let mut inq: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `inq`.
    unsafe { fionread(s.as_raw_fd(), &mut inq) }
        .map_err(|e| super::unsupported(format!("FIONREAD: {e}")))?;
    let mut queued = vec![0u8; inq.max(0) as usize];
    if !queued.is_empty() {
        let n = recv(
            s.as_raw_fd(),
            &mut queued,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        );
        if n != Ok(queued.len()) {
            return Err(super::unsupported(
                "its queued data cannot be read whole (file descriptors or credentials in \
                 flight?)",
            ));
        }
    }
    Ok(queued)
}

/// What sock_diag tells of a UNIX socket: its peer's inode and whether it was shut down.
fn unix_diag(ino: u64) -> io::Result<(Option<u32>, u8)> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_PEER: u32 = 4;
    let ino32 = u32::try_from(ino).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // nlmsghdr (16) + unix_diag_req (24).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&ino32.to_ne_bytes());
    req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    send(sock.as_raw_fd(), &req, MsgFlags::empty())?;
    let mut buf = vec![0u8; 8192];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    parse_diag_reply(&buf[..n])
}

/// The peer and shutdown attributes of a sock_diag reply.
fn parse_diag_reply(buf: &[u8]) -> io::Result<(Option<u32>, u8)> {
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_SHUTDOWN: u16 = 6;
    let u16_at = |i: usize| buf.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |i: usize| {
        buf.get(i..i + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u16_at(4) == Some(libc::NLMSG_ERROR as u16) {
        let errno = u32_at(16).map_or(libc::EIO, |e| -(e as i32));
        return Err(io::Error::from_raw_os_error(errno));
    }
    let msg_len = u32_at(0).unwrap_or(0) as usize;
    // Attributes follow nlmsghdr (16) and unix_diag_msg (16), each 4-byte aligned.
    let (mut peer, mut shutdown) = (None, 0u8);
    let mut at = 32;
    while at + 4 <= msg_len.min(buf.len()) {
        let (Some(len), Some(ty)) = (u16_at(at), u16_at(at + 2)) else {
            break;
        };
        let len = len as usize;
        if len < 4 {
            break;
        }
        match ty {
            UNIX_DIAG_PEER => peer = u32_at(at + 4),
            UNIX_DIAG_SHUTDOWN => shutdown = buf.get(at + 4).copied().unwrap_or(0),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok((peer, shutdown))
}

/// A new connected pair holding `queued[e]` ready to be read at end `e`.
pub fn make(queued: [&[u8]; 2]) -> io::Result<[OwnedFd; 2]> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )?;
    let ends = [a, b];
    for (end, data) in queued.iter().enumerate() {
        if data.is_empty() {
            continue;
        }
        // What waits at this end was sent by the other: room for all of it first.
        let other = &ends[1 - end];
        let room = (data.len() * 2 + 65536).min(i32::MAX as usize);
        let _ = setsockopt(other, sockopt::SndBufForce, &room);
        let _ = setsockopt(&ends[end], sockopt::RcvBufForce, &room);
        super::write_all(other, data)?;
    }
    Ok(ends)
}

impl FdState for SocketPairEnd {
    fn what(&self) -> &'static str {
        "the socket pair"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let ends = ctx
            .shared
            .pairs
            .get(self.pair)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        super::place_copy(&ends[self.end.min(1)], f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.pair < v.shared.socket_pairs.len() && self.end < 2
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        let bytes = v
            .shared
            .socket_pairs
            .get(self.pair)
            .and_then(|sp| sp.data_sections.get(self.end).copied().flatten())
            .and_then(|i| v.sections.get(i))
            .map_or(0, |s| s.len);
        format!(
            "socket pair {} end {} ({bytes} bytes unread)",
            self.pair, self.end
        )
    }
}

/// The table's socket pairs refer to sections of the right kind.
pub fn validate(pairs: &[SocketPair], sections: &[Section]) -> Result<(), String> {
    if pairs
        .iter()
        .flat_map(|sp| sp.data_sections.iter().flatten())
        .any(|&i| !section_is(sections, i, &SOCKET_DATA))
    {
        return Err("bad socket data section".into());
    }
    Ok(())
}
