//! What every UNIX socket the tree holds shares, whatever its kind (`socket_pair`,
//! `unix_dgram`): its type, what sock_diag says of it (peer, shutdown, bound file), its queue
//! (bytes for a stream, messages with their boundaries and senders otherwise), its options and
//! its name, each with its dump and its restore.
//!
//! Queues are peeked, never consumed: the socket's peek offset (SO_PEEK_OFF) is set to 0 and
//! MSG_PEEK then returns one message after the other (the kernel moves the offset past each;
//! an empty datagram is skipped once peeked), as CRIU does; the program's own peek offset is
//! put back afterwards.

use super::socket::{storage_of, unix_path, valid_address};
use super::{unsupported, DumpError};
use nix::sys::socket::{
    getsockopt, recvmsg, send, sendto, setsockopt, shutdown, socket, sockopt, AddressFamily,
    ControlMessageOwned, MsgFlags, Shutdown, SockFlag, SockProtocol, SockType, SockaddrLike,
    SockaddrStorage, UnixAddr,
};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

// SO_PEEK_OFF, which nix does not name (its macro calls itself by its bare name).
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};
sockopt_impl!(
    PeekOff,
    Both,
    libc::SOL_SOCKET,
    libc::SO_PEEK_OFF,
    libc::c_int
);

/// The three types of UNIX socket.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnixType {
    #[default]
    Stream,
    Dgram,
    Seqpacket,
}

impl UnixType {
    pub fn of(t: SockType) -> Option<UnixType> {
        match t {
            SockType::Stream => Some(UnixType::Stream),
            SockType::Datagram => Some(UnixType::Dgram),
            SockType::SeqPacket => Some(UnixType::Seqpacket),
            _ => None,
        }
    }

    pub fn sock_type(self) -> SockType {
        match self {
            UnixType::Stream => SockType::Stream,
            UnixType::Dgram => SockType::Datagram,
            UnixType::Seqpacket => SockType::SeqPacket,
        }
    }

    pub fn is_stream(&self) -> bool {
        *self == UnixType::Stream
    }

    pub fn name(self) -> &'static str {
        match self {
            UnixType::Stream => "stream",
            UnixType::Dgram => "datagram",
            UnixType::Seqpacket => "seqpacket",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sock_diag

/// What sock_diag tells of a UNIX socket.
#[derive(Debug, Default, Clone, Copy)]
pub struct Diag {
    /// The peer's inode (0: none, or a peer already closed).
    pub peer: u64,
    /// sk_shutdown: 1 receive side shut down, 2 send side.
    pub shutdown: u8,
    /// The inode of the file its name was bound to (or its listener's, for an accepted socket).
    pub vfs_ino: Option<u64>,
}

/// Asks sock_diag about the UNIX socket with inode `ino`.
pub fn diag(ino: u64) -> io::Result<Diag> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_VFS: u32 = 2;
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
    req.extend_from_slice(&(UDIAG_SHOW_PEER | UDIAG_SHOW_VFS).to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    send(sock.as_raw_fd(), &req, MsgFlags::empty())?;
    let mut buf = vec![0u8; 8192];
    let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    parse_diag_reply(&buf[..n])
}

/// The attributes of a sock_diag reply that ckpt uses.
fn parse_diag_reply(buf: &[u8]) -> io::Result<Diag> {
    const UNIX_DIAG_VFS: u16 = 1;
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
    let mut d = Diag::default();
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
            UNIX_DIAG_PEER => d.peer = u32_at(at + 4).map_or(0, u64::from),
            UNIX_DIAG_SHUTDOWN => d.shutdown = buf.get(at + 4).copied().unwrap_or(0),
            UNIX_DIAG_VFS => d.vfs_ino = u32_at(at + 4).map(u64::from),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Queues

/// A queued message of a datagram or seqpacket socket: its length (its bytes follow the
/// previous messages' in the socket's data section) and the address of the socket that sent
/// it (empty: unnamed, or not recorded).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub len: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<u8>,
}

/// What waits to be read at a socket: its bytes, and for message types each message.
#[derive(Debug, Default)]
pub struct Queue {
    pub data: Vec<u8>,
    pub messages: Vec<Message>,
}

/// More messages than this in one queue is taken for a loop that does not end.
const MAX_MESSAGES: usize = 1 << 20;

/// Peeks everything queued at socket `s` of type `ty` (shut down for reading: `rcv_shut`),
/// without consuming it. Refuses file descriptors in flight, saying how many there are.
pub fn peek_queue(s: &OwnedFd, ty: UnixType, rcv_shut: bool) -> Result<Queue, DumpError> {
    let why = |e: nix::Error| unsupported(format!("SO_PEEK_OFF: {e}"));
    let saved = getsockopt(s, PeekOff).map_err(why)?;
    setsockopt(s, PeekOff, &0).map_err(why)?;
    let r = peek_all(s, ty, rcv_shut);
    // The program's own peek offset back (-1: off).
    let _ = setsockopt(s, PeekOff, &saved);
    r
}

fn peek_all(s: &OwnedFd, ty: UnixType, rcv_shut: bool) -> Result<Queue, DumpError> {
    let inq = bytes_queued(s)?;
    let mut q = Queue::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut rights = Rights::default();
    while let Some((len, from)) = peek_one(s, &mut buf, ty, &mut rights)? {
        // A stream at its end of file, or a seqpacket socket shut down for reading with all
        // its bytes seen (an empty message after a shutdown is not told apart from the end).
        let end = ty.is_stream() || (rcv_shut && q.data.len() == inq);
        if len == 0 && end {
            break;
        }
        if len > buf.len() {
            // Cut short: peek it again whole, from its start.
            buf.resize(len, 0);
            setsockopt(s, PeekOff, &clamp_offset(q.data.len())?)
                .map_err(|e| unsupported(format!("SO_PEEK_OFF: {e}")))?;
            continue;
        }
        q.data.extend_from_slice(&buf[..len]);
        if !ty.is_stream() {
            q.messages.push(Message {
                len: len as u32,
                from,
            });
        }
        if q.messages.len() > MAX_MESSAGES {
            return Err(unsupported("its receive queue does not end"));
        }
    }
    rights.refuse()?;
    // SIOCINQ counts every byte of a stream or seqpacket queue (a datagram's first only).
    if ty != UnixType::Dgram && q.data.len() != inq {
        return Err(unsupported(format!(
            "{} of its {inq} queued bytes could be read (credentials or file descriptors in \
             flight?)",
            q.data.len()
        )));
    }
    Ok(q)
}

/// The file descriptors in flight seen in a queue (SCM_RIGHTS), counted to be named.
#[derive(Default)]
struct Rights {
    fds: usize,
    messages: usize,
    /// Some did not fit the control buffer (more than 64 in one message).
    truncated: bool,
}

impl Rights {
    fn refuse(&self) -> Result<(), DumpError> {
        if self.messages == 0 {
            return Ok(());
        }
        let more = if self.truncated { "at least " } else { "" };
        Err(unsupported(format!(
            "{more}{} file descriptor(s) are in flight in its queue (SCM_RIGHTS, in {} \
             message(s)); carrying them is not supported yet",
            self.fds, self.messages
        )))
    }
}

/// The raw `struct sockaddr_un` of `a`, of its own length (empty: unnamed).
fn unix_addr_bytes(a: &UnixAddr) -> Vec<u8> {
    let len = a.len() as usize;
    if len <= 2 || len > std::mem::size_of::<libc::sockaddr_un>() {
        return Vec::new();
    }
    // SAFETY: a UnixAddr holds a whole sockaddr_un at `as_ptr()`, of which `len` bytes are
    // the address (checked above to be within it).
    unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), len) }.to_vec()
}

fn clamp_offset(n: usize) -> Result<i32, DumpError> {
    i32::try_from(n).map_err(|_| unsupported("more than 2 GiB queued"))
}

/// SIOCINQ: the bytes queued (for a datagram socket, those of its first message only).
fn bytes_queued(s: &OwnedFd) -> Result<usize, DumpError> {
    nix::ioctl_read_bad!(fionread, libc::FIONREAD, libc::c_int);
    let mut inq: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `inq`.
    unsafe { fionread(s.as_raw_fd(), &mut inq) }
        .map_err(|e| unsupported(format!("FIONREAD: {e}")))?;
    Ok(inq.max(0) as usize)
}

/// Peeks the next message (a stream: the next bytes) into `buf`: its whole length (which may
/// exceed `buf`) and its sender's address; None when nothing more is queued.
fn peek_one(
    s: &OwnedFd,
    buf: &mut [u8],
    ty: UnixType,
    seen: &mut Rights,
) -> Result<Option<(usize, Vec<u8>)>, DumpError> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 64], libc::ucred);
    let mut flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    if !ty.is_stream() {
        flags |= MsgFlags::MSG_TRUNC; // the whole length back, not what fit
    }
    // UnixAddr, not SockaddrStorage: it keeps the length the kernel gave (an abstract name's
    // bytes end there, not at the first NUL).
    let msg = match recvmsg::<UnixAddr>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
        Ok(m) => m,
        Err(nix::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(unsupported(format!("peeking its queue: {e}"))),
    };
    let mut rights = false;
    for c in msg.cmsgs().map_err(|e| unsupported(format!("{e}")))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            rights = true;
            seen.fds += fds.len();
            // A peek gives us copies of the fds in flight: not ours to keep.
            for fd in fds {
                let _ = nix::unistd::close(fd);
            }
        }
    }
    // Credentials (SO_PASSCRED) also come as control messages; a truncation with no fds
    // seen is still taken for fds that did not fit.
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    if rights || truncated {
        seen.messages += 1;
        seen.truncated |= truncated;
    }
    let from = msg.address.map(|a| unix_addr_bytes(&a)).unwrap_or_default();
    Ok(Some((msg.bytes, from)))
}

/// Sends `data` from `sender` to the socket it is connected to (`to` None) or to address
/// `to`, one message per entry of `messages` (none: one stream of bytes), never waiting.
pub fn send_queue(
    sender: &OwnedFd,
    to: Option<&SockaddrStorage>,
    data: &[u8],
    messages: &[Message],
) -> io::Result<()> {
    // Room for everything first (what the original held fit its buffers; ours may differ).
    let room = (data.len() * 2 + messages.len() * 2048 + 65536).min(i32::MAX as usize / 2);
    let _ = setsockopt(sender, sockopt::SndBufForce, &room);
    if messages.is_empty() {
        return match to {
            None => super::write_all(sender, data),
            Some(_) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
    }
    let mut at = 0usize;
    for m in messages {
        let end = at + m.len as usize;
        let chunk = data
            .get(at..end)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let n = match to {
            None => send(sender.as_raw_fd(), chunk, flags)?,
            Some(addr) => sendto(sender.as_raw_fd(), chunk, addr, flags)?,
        };
        if n != chunk.len() {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        at = end;
    }
    Ok(())
}

/// The messages' lengths add up to `len` bytes.
pub fn messages_fill(messages: &[Message], len: u64) -> bool {
    messages.iter().map(|m| u64::from(m.len)).sum::<u64>() == len
}

// ---------------------------------------------------------------------------------------------
// Options and state

/// The socket options carried.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnixOpts {
    /// SO_SNDBUF and SO_RCVBUF as getsockopt gives them (twice what was asked).
    #[serde(default)]
    pub sndbuf: usize,
    #[serde(default)]
    pub rcvbuf: usize,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passcred: bool,
    /// SO_PEEK_OFF when the program set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peek_off: Option<i32>,
}

impl UnixOpts {
    pub fn read(s: &OwnedFd) -> Result<UnixOpts, DumpError> {
        let why = |e: nix::Error| unsupported(format!("reading its options: {e}"));
        let peek = getsockopt(s, PeekOff).map_err(why)?;
        Ok(UnixOpts {
            sndbuf: getsockopt(s, sockopt::SndBuf).map_err(why)?,
            rcvbuf: getsockopt(s, sockopt::RcvBuf).map_err(why)?,
            passcred: getsockopt(s, sockopt::PassCred).map_err(why)?,
            peek_off: (peek >= 0).then_some(peek),
        })
    }

    pub fn is_default(&self) -> bool {
        *self == UnixOpts::default()
    }

    /// Sets them on `s` (buffers forced: the kernel doubles what it is given, and caps it at
    /// the sysctl maximum unless forced, which the original may have been allowed).
    pub fn apply(&self, s: &OwnedFd) -> io::Result<()> {
        if self.sndbuf > 0 {
            setsockopt(s, sockopt::SndBufForce, &(self.sndbuf / 2))?;
        }
        if self.rcvbuf > 0 {
            setsockopt(s, sockopt::RcvBufForce, &(self.rcvbuf / 2))?;
        }
        if self.passcred {
            setsockopt(s, sockopt::PassCred, &true)?;
        }
        if let Some(off) = self.peek_off {
            setsockopt(s, PeekOff, &off)?;
        }
        Ok(())
    }
}

/// Shuts `s` down as sk_shutdown `bits` say (1 receive, 2 send).
pub fn apply_shutdown(s: &OwnedFd, bits: u8) -> io::Result<()> {
    let how = match bits & 3 {
        0 => return Ok(()),
        1 => Shutdown::Read,
        2 => Shutdown::Write,
        _ => Shutdown::Both,
    };
    Ok(shutdown(s.as_raw_fd(), how)?)
}

// ---------------------------------------------------------------------------------------------
// Names

/// The name a socket is bound to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Name {
    /// The `struct sockaddr_un`, as getsockname gives it (a path, or "\0name": abstract).
    pub addr: Vec<u8>,
    /// A path whose socket file was still there: made again with this owner and mode. None
    /// for an abstract name, or a path unlinked since (bound again, then unlinked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<SockFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SockFile {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

impl Name {
    /// The name of socket `s` of process `pid` (None: unnamed); with `keep_file`, the owner
    /// and mode of its socket file if that is still linked where the name says (`vfs_ino`).
    pub fn dump(pid: i32, s: &OwnedFd, vfs_ino: Option<u64>, keep_file: bool) -> Option<Name> {
        let addr = super::socket::local_address(s).ok()?;
        if addr.len() <= 2 {
            return None;
        }
        let path = unix_path(&addr);
        let file = (keep_file && !path.starts_with('@'))
            .then(|| socket_file(pid, &path, vfs_ino?))
            .flatten();
        Some(Name { addr, file })
    }

    pub fn valid(&self) -> bool {
        valid_address(libc::AF_UNIX, &self.addr)
            && self.file.as_ref().is_none_or(|f| f.mode <= 0o7777)
    }

    pub fn is_abstract(&self) -> bool {
        self.addr.get(2) == Some(&0)
    }

    pub fn display(&self) -> String {
        unix_path(&self.addr)
    }

    pub fn storage(&self) -> io::Result<SockaddrStorage> {
        storage_of(&self.addr)
    }

    /// Binds `s` to the name (a stale socket file of the checkpointed process replaced). In
    /// the directory of the process that made it (relative paths).
    pub fn bind(&self, s: &OwnedFd) -> io::Result<()> {
        super::socket::remove_stale_socket_file(&self.display());
        nix::sys::socket::bind(s.as_raw_fd(), &self.storage()?)?;
        Ok(())
    }

    /// Once bound (and others connected to it): its file as it was, or none if it was gone.
    pub fn settle_file(&self) -> io::Result<()> {
        use nix::fcntl::AtFlags;
        use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
        if self.is_abstract() {
            return Ok(());
        }
        let path = self.display();
        let Some(f) = &self.file else {
            return Ok(nix::unistd::unlink(path.as_str())?);
        };
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(f.uid),
            nix::unistd::Gid::from_raw(f.gid),
        );
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path.as_str(),
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        let mode = Mode::from_bits_truncate(f.mode);
        fchmodat(
            nix::fcntl::AT_FDCWD,
            path.as_str(),
            mode,
            FchmodatFlags::FollowSymlink,
        )?;
        Ok(())
    }
}

/// Owner and mode of the socket file at `path` as process `pid` sees it, if it is the one
/// bound (inode `ino`).
fn socket_file(pid: i32, path: &str, ino: u64) -> Option<SockFile> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let seen = if path.starts_with('/') {
        format!("/proc/{pid}/root{path}")
    } else {
        format!("/proc/{pid}/cwd/{path}")
    };
    let m = std::fs::symlink_metadata(seen).ok()?;
    (m.file_type().is_socket() && m.ino() == ino).then(|| SockFile {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o7777,
    })
}

/// Runs `f` in directory `cwd` (where a process's relative socket names resolve), then back.
pub fn in_dir<T>(cwd: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let here = std::env::current_dir()?;
    std::env::set_current_dir(cwd)?;
    let r = f();
    std::env::set_current_dir(here)?;
    r
}

/// A new UNIX socket of type `ty`.
pub fn new_socket(ty: UnixType) -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        ty.sock_type(),
        SockFlag::empty(),
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::socketpair;

    /// Messages of a datagram pair are peeked one by one with their boundaries (an empty one
    /// included), without being consumed, and sent again the same.
    #[test]
    fn datagram_queue_is_peeked_whole_and_refilled() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let sizes = [5usize, 0, 70000, 1, 300];
        for (i, n) in sizes.iter().enumerate() {
            let msg = vec![i as u8 + 1; *n];
            setsockopt(&a, sockopt::SndBufForce, &(1 << 20)).unwrap();
            send(a.as_raw_fd(), &msg, MsgFlags::empty()).unwrap();
        }
        let q = peek_queue(&b, UnixType::Dgram, false).unwrap();
        let lens: Vec<usize> = q.messages.iter().map(|m| m.len as usize).collect();
        assert_eq!(lens, sizes);
        // Still there, and the program's peek offset is off again.
        assert_eq!(getsockopt(&b, PeekOff).unwrap(), -1);
        let again = peek_queue(&b, UnixType::Dgram, false).unwrap();
        assert_eq!(again.data, q.data);
        let (c, d) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        send_queue(&c, None, &q.data, &q.messages).unwrap();
        let mut buf = vec![0u8; 100000];
        for (i, n) in sizes.iter().enumerate() {
            let got = nix::sys::socket::recv(d.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT);
            assert_eq!(got, Ok(*n), "message {i}");
            assert!(buf[..*n].iter().all(|&x| x == i as u8 + 1));
        }
    }

    /// File descriptors in flight are refused.
    #[test]
    fn fds_in_flight_are_refused() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let fds = [a.as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"x")];
        sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let err = peek_queue(&b, UnixType::Stream, false).unwrap_err();
        let DumpError::Unsupported(why) = err else {
            panic!("{err:?}");
        };
        assert!(why.contains("1 file descriptor(s) are in flight"), "{why}");
        assert!(why.contains("SCM_RIGHTS, in 1 message(s)"), "{why}");
    }
}
