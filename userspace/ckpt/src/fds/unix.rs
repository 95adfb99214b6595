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
    getsockopt, recvmsg, send, sendmsg, setsockopt, shutdown, socket, sockopt, AddressFamily,
    ControlMessage, ControlMessageOwned, MsgFlags, Shutdown, SockFlag, SockProtocol, SockType,
    SockaddrLike, SockaddrStorage, UnixAddr,
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

/// A queued message of a datagram or seqpacket socket (or, at a stream socket whose queue
/// carries file descriptors, a run of its bytes): its length (its bytes follow the previous
/// messages' in the socket's data section), the address of the socket that sent it (empty:
/// unnamed, or not recorded) and the file descriptors in flight that came with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub len: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<u8>,
    /// The descriptors sent with it (SCM_RIGHTS), in order: indices in `Shared::in_flight`
    /// (`fds::in_flight`); the same index twice is one open file sent twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fds: Vec<usize>,
}

/// What waits to be read at a socket: its bytes, and for message types each message. A
/// stream's bytes are one run, unless descriptors are in flight: then its messages split it
/// where they are attached.
#[derive(Debug, Default)]
pub struct Queue {
    pub data: Vec<u8>,
    pub messages: Vec<Message>,
    /// Per message, in the same order: ckpt's copies of the descriptors in flight that came
    /// with it (a peek hands them out without consuming the message). `fds::in_flight` turns
    /// them into the messages' `fds`.
    pub rights: Vec<Vec<OwnedFd>>,
}

impl Queue {
    /// Refuses a queue with descriptors in flight, saying how many, where `why` they cannot
    /// be carried.
    pub fn refuse_rights(&self, why: &str) -> Result<(), DumpError> {
        let per_message = self
            .messages
            .iter()
            .zip(self.rights.iter().map(Vec::len).chain(std::iter::repeat(0)))
            .map(|(m, copies)| m.fds.len().max(copies));
        let (fds, messages) = per_message
            .filter(|&n| n > 0)
            .fold((0, 0), |(f, m), n| (f + n, m + 1));
        if messages == 0 {
            return Ok(());
        }
        Err(unsupported(format!(
            "{fds} file descriptor(s) are in flight in its queue (SCM_RIGHTS, in {messages} \
             message(s)): {why}"
        )))
    }
}

/// More messages than this in one queue is taken for a loop that does not end.
const MAX_MESSAGES: usize = 1 << 20;

/// Peeks everything queued at socket `s` of type `ty` (shut down for reading: `rcv_shut`),
/// without consuming it, with copies of the descriptors in flight.
pub fn peek_queue(s: &OwnedFd, ty: UnixType, rcv_shut: bool) -> Result<Queue, DumpError> {
    let saved = getsockopt(s, PeekOff).map_err(peek_off_error)?;
    set_peek_off(s, 0)?;
    let r = match ty {
        UnixType::Stream => peek_stream(s),
        _ => peek_messages(s, rcv_shut),
    };
    // The program's own peek offset back (-1: off).
    let _ = setsockopt(s, PeekOff, &saved);
    r
}

fn peek_off_error(e: nix::Error) -> DumpError {
    unsupported(format!("SO_PEEK_OFF: {e}"))
}

fn set_peek_off(s: &OwnedFd, at: usize) -> Result<(), DumpError> {
    let at = i32::try_from(at).map_err(|_| unsupported("more than 2 GiB queued"))?;
    setsockopt(s, PeekOff, &at).map_err(peek_off_error)
}

/// A datagram or seqpacket queue, message by message.
fn peek_messages(s: &OwnedFd, rcv_shut: bool) -> Result<Queue, DumpError> {
    let inq = bytes_queued(s)?;
    let mut q = Queue::default();
    let mut buf = vec![0u8; 64 * 1024];
    // MSG_TRUNC: a message's whole length, not what fit.
    while let Some(p) = peek_one(s, &mut buf, MsgFlags::MSG_TRUNC)? {
        // A seqpacket socket shut down for reading with all its bytes seen: an empty message
        // after a shutdown is not told apart from the end.
        if p.len == 0 && rcv_shut && q.data.len() == inq {
            break;
        }
        if p.len > buf.len() {
            // Cut short: peek it again whole, from its start.
            buf.resize(p.len, 0);
            set_peek_off(s, q.data.len())?;
            continue;
        }
        q.data.extend_from_slice(&buf[..p.len]);
        q.messages.push(Message {
            len: p.len as u32,
            from: p.from,
            fds: Vec::new(),
        });
        q.rights.push(p.fds);
        if q.messages.len() > MAX_MESSAGES {
            return Err(unsupported("its receive queue does not end"));
        }
    }
    // SIOCINQ counts every byte of a seqpacket queue (a datagram's first message only).
    let dgram = getsockopt(s, sockopt::SockType).is_ok_and(|t| t == SockType::Datagram);
    if !dgram && q.data.len() != inq {
        return Err(bytes_unseen(q.data.len(), inq));
    }
    Ok(q)
}

fn bytes_unseen(seen: usize, inq: usize) -> DumpError {
    unsupported(format!(
        "{seen} of its {inq} queued bytes could be read (credentials in flight?)"
    ))
}

/// A stream's queue. A peek gives the bytes of one write after the other, gluing them, but
/// stops after a write that carried descriptors, which come with it. Where that write began
/// among the bytes of that peek no peek tells: in 7.2 a stream peek goes on through the
/// following writes even once its buffer is full and hands out the descriptors of the first
/// that has some (unix_stream_read_generic), so probing byte by byte sees them from
/// anywhere before. The descriptors are put on the first byte that peek returned: sent
/// again as one write, a reader gets them no later than it did, possibly with bytes of
/// earlier writes it had not read yet.
fn peek_stream(s: &OwnedFd) -> Result<Queue, DumpError> {
    let inq = bytes_queued(s)?;
    let mut q = Queue::default();
    // A buffer for all that is left, so that a peek never stops short at a write boundary.
    let mut buf = vec![0u8; inq.max(1)];
    let mut plain_from = 0;
    while q.data.len() < inq {
        let at = q.data.len();
        let Some(p) = peek_one(s, &mut buf[..inq - at], MsgFlags::empty())? else {
            break;
        };
        if p.len == 0 {
            break; // its end of file
        }
        q.data.extend_from_slice(&buf[..p.len]);
        if !p.fds.is_empty() {
            push_run(&mut q, plain_from, at);
            push_run(&mut q, at, at + p.len);
            *q.rights.last_mut().expect("just pushed") = p.fds;
            plain_from = q.data.len();
        }
        if q.messages.len() > MAX_MESSAGES {
            return Err(unsupported("its receive queue does not end"));
        }
    }
    if !q.messages.is_empty() {
        let end = q.data.len();
        push_run(&mut q, plain_from, end);
    }
    if q.data.len() != inq {
        return Err(bytes_unseen(q.data.len(), inq));
    }
    Ok(q)
}

/// Bytes `from..to` of a stream's queue as one message, carrying nothing (none if empty).
fn push_run(q: &mut Queue, from: usize, to: usize) {
    if to > from {
        q.messages.push(Message {
            len: (to - from) as u32,
            from: Vec::new(),
            fds: Vec::new(),
        });
        q.rights.push(Vec::new());
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

/// SIOCINQ: the bytes queued (for a datagram socket, those of its first message only).
fn bytes_queued(s: &OwnedFd) -> Result<usize, DumpError> {
    nix::ioctl_read_bad!(fionread, libc::FIONREAD, libc::c_int);
    let mut inq: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `inq`.
    unsafe { fionread(s.as_raw_fd(), &mut inq) }
        .map_err(|e| unsupported(format!("FIONREAD: {e}")))?;
    Ok(inq.max(0) as usize)
}

/// One peek: the length of what came (for a message with MSG_TRUNC its whole length, which
/// may exceed the buffer), its sender's address and copies of the descriptors that came with
/// it.
struct Peeked {
    len: usize,
    from: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Peeks the next message (a stream: the next bytes) into `buf`; None when nothing more is
/// queued.
fn peek_one(s: &OwnedFd, buf: &mut [u8], extra: MsgFlags) -> Result<Option<Peeked>, DumpError> {
    use std::os::fd::FromRawFd;
    let mut iov = [IoSliceMut::new(buf)];
    // Room for the most descriptors one message carries (SCM_MAX_FD), credentials and a
    // pidfd (SO_PASSCRED, SO_PASSPIDFD).
    let mut cmsg = nix::cmsg_space!([RawFd; 253], libc::ucred, RawFd);
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | extra;
    // UnixAddr, not SockaddrStorage: it keeps the length the kernel gave (an abstract name's
    // bytes end there, not at the first NUL).
    let msg = match recvmsg::<UnixAddr>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
        Ok(m) => m,
        Err(nix::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(unsupported(format!("peeking its queue: {e}"))),
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| unsupported(format!("{e}")))? {
        // SAFETY: the kernel installed these descriptors in our table for this call; each is
        // ours alone (owned, so closed when dropped).
        let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        match c {
            ControlMessageOwned::ScmRights(got) => fds.extend(got.into_iter().map(own)),
            // A pidfd of the sender (SO_PASSPIDFD): not ours to keep.
            ControlMessageOwned::Unknown(u)
                if u.cmsg_header.cmsg_level == libc::SOL_SOCKET
                    && u.cmsg_header.cmsg_type == SCM_PIDFD =>
            {
                if let Ok(b) = <[u8; 4]>::try_from(u.data_bytes.as_slice()) {
                    drop(own(RawFd::from_ne_bytes(b)));
                }
            }
            _ => {}
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(unsupported(
            "a message in its queue carries more than ckpt could take (MSG_CTRUNC)",
        ));
    }
    let from = msg.address.map(|a| unix_addr_bytes(&a)).unwrap_or_default();
    Ok(Some(Peeked {
        len: msg.bytes,
        from,
        fds,
    }))
}

/// SCM_PIDFD (linux/socket.h), which the libc crate does not name.
const SCM_PIDFD: i32 = 4;

/// Sends `data` from `sender` to the socket it is connected to (`to` None) or to address
/// `to`, one message per entry of `messages` (none: one stream of bytes), never waiting. A
/// message's descriptors in flight are attached (SCM_RIGHTS) as `fds` gives them.
pub fn send_queue(
    sender: &OwnedFd,
    to: Option<&SockaddrStorage>,
    data: &[u8],
    (messages, fds): (&[Message], &dyn Fn(usize) -> Option<RawFd>),
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
        let rights = (m.fds.iter().map(|&i| fds(i)))
            .collect::<Option<Vec<RawFd>>>()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let cmsgs = [ControlMessage::ScmRights(&rights)];
        let cmsgs = if rights.is_empty() {
            &[][..]
        } else {
            &cmsgs[..]
        };
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let iov = [io::IoSlice::new(chunk)];
        let n = sendmsg(sender.as_raw_fd(), &iov, cmsgs, flags, to)?;
        if n != chunk.len() {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        at = end;
    }
    Ok(())
}

/// No descriptor in flight: for [`send_queue`] where none are.
pub fn no_fds(_: usize) -> Option<RawFd> {
    None
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
        if self.is_abstract() {
            return Ok(());
        }
        let path = self.display();
        match &self.file {
            Some(f) => settle_socket_file(&path, f),
            None => Ok(nix::unistd::unlink(path.as_str())?),
        }
    }
}

/// Gives the socket file at `path` (just bound) the owner and mode it had.
pub fn settle_socket_file(path: &str, f: &SockFile) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(f.uid),
        nix::unistd::Gid::from_raw(f.gid),
    );
    let (at, path) = (nix::fcntl::AT_FDCWD, path);
    nix::unistd::fchownat(at, path, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    let mode = Mode::from_bits_truncate(f.mode);
    fchmodat(at, path, mode, FchmodatFlags::FollowSymlink)?;
    Ok(())
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
        send_queue(&c, None, &q.data, (&q.messages, &no_fds)).unwrap();
        let mut buf = vec![0u8; 100000];
        for (i, n) in sizes.iter().enumerate() {
            let got = nix::sys::socket::recv(d.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT);
            assert_eq!(got, Ok(*n), "message {i}");
            assert!(buf[..*n].iter().all(|&x| x == i as u8 + 1));
        }
    }

    /// A stream's queue with descriptors in flight: the peek stops after each write that
    /// carried some, which come with it; the queue is split there, and the descriptors are
    /// copies of the ones sent, the message still queued.
    #[test]
    fn fds_in_flight_come_with_their_message() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let stream = || {
            socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::empty(),
            )
            .unwrap()
        };
        let (a, b) = stream();
        let (passed, _other) = stream();
        send(a.as_raw_fd(), b"abc", MsgFlags::empty()).unwrap();
        let fds = [passed.as_raw_fd(), passed.as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"de")];
        sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        send(a.as_raw_fd(), b"fg", MsgFlags::empty()).unwrap();
        let q = peek_queue(&b, UnixType::Stream, false).unwrap();
        assert_eq!(q.data, b"abcdefg");
        // The fds go with the first byte their peek returned (the run "abcde"), then "fg".
        let lens: Vec<u32> = q.messages.iter().map(|m| m.len).collect();
        assert_eq!(lens, [5, 2]);
        assert_eq!(q.rights[0].len(), 2);
        assert!(q.rights[1].is_empty());
        let same = |fd: &OwnedFd| {
            crate::sys::same_open_file(
                (std::process::id() as i32, fd.as_raw_fd()),
                (std::process::id() as i32, passed.as_raw_fd()),
            )
            .unwrap()
        };
        assert!(q.rights[0].iter().all(same));
        let err = q.refuse_rights("not here").unwrap_err();
        let DumpError::Unsupported(why) = err else {
            panic!("{err:?}");
        };
        assert!(why.contains("2 file descriptor(s) are in flight"), "{why}");
        assert!(why.contains("in 1 message(s)): not here"), "{why}");
        // Nothing was consumed: the reader gets the fds with its first read.
        let mut buf = [0u8; 16];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 2]);
        let m = recvmsg::<()>(
            b.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        assert_eq!(m.bytes, 5);
        let got: Vec<RawFd> = m
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(f) => f,
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(got.len(), 2);
        for fd in got {
            nix::unistd::close(fd).unwrap();
        }
    }

    /// Sent again with `send_queue`, each message carries its descriptors.
    #[test]
    fn messages_are_sent_again_with_their_fds() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let (x, y) = nix::unistd::pipe().unwrap();
        let message = |len, fds: Vec<usize>| Message {
            len,
            from: Vec::new(),
            fds,
        };
        let messages = [message(1, vec![]), message(2, vec![0, 1])];
        let made = [x.as_raw_fd(), y.as_raw_fd()];
        send_queue(&a, None, b"abc", (&messages, &|i| made.get(i).copied())).unwrap();
        let q = peek_queue(&b, UnixType::Seqpacket, false).unwrap();
        assert_eq!(q.data, b"abc");
        let counts: Vec<usize> = q.rights.iter().map(Vec::len).collect();
        assert_eq!(counts, [0, 2]);
        // An index nothing was made for is an error, not a message without its fds.
        let bad = [message(1, vec![5])];
        let e = send_queue(&a, None, b"z", (&bad, &|i| made.get(i).copied())).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
