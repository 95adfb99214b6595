//! UNIX sockets of the tree whose peer no process of the tree holds: a program logging to
//! /dev/log (a datagram socket connected to journald or rsyslog), a D-Bus client (a stream
//! socket connected to the bus), one end of a socket pair whose other end is held outside.
//!
//! What is carried, and how it comes back (recorded in the image as `reconnect`):
//! - a datagram socket connected to a named socket (a path or an abstract name): by default;
//!   on restore it is connected to that name again (`name`). Messages queued at it (they can
//!   only have come from its peer) are sent to it again from an unnamed socket before it
//!   connects, if it is named itself; at an unnamed one they cannot be addressed and are
//!   dropped (a warning says how many).
//! - a stream or seqpacket socket, or a datagram socket whose peer is unnamed: only with
//!   `ckpt checkpoint --external unix`, else refused naming the peer. Connected to a named
//!   peer from an unnamed socket (a client of a server outside): connected to the name again
//!   on restore: a new connection, whose protocol starts over; the bytes queued from the old
//!   one are dropped. Otherwise (an unnamed peer, or this socket is named: the accepted end of
//!   a client outside, or a client that bound a name first): `gone`, a socket whose peer has
//!   closed: its queued bytes are read first, then end of file (EPIPE on writes).
//! - a stream or seqpacket socket whose peer had closed the connection already (its peer no
//!   longer shown): always, as `gone`: nothing is lost (a read that would have reported
//!   ECONNRESET, the peer having closed with bytes unread, reports end of file).
//!
//! Every one is made before the restorers fork, by `ckpt restore` itself; a stream or
//! seqpacket socket connects by a helper with its holder's pid and effective ids (`peercred`),
//! which the peer's SO_PEERCRED reports. If nothing listens at the name any more, the restore
//! fails naming it: a silently unconnected socket would lose what the program sends.

use super::unix::{self, Diag, Message, Name, UnixOpts, UnixType};
use super::{DumpCtx, DumpError, Fd, FdKind, FdState, HolderEnv, RestoreCtx, View};
use crate::image::{section_is, Section};
use nix::sys::socket::{getpeername, socketpair, AddressFamily, SockFlag, SockaddrStorage};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

pub use super::socket_pair::SOCKET_DATA;

/// How a socket with its peer outside comes back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reconnect {
    /// connect(2) to the peer's name again (stream, seqpacket: a new connection).
    Name,
    /// A socket whose peer has gone: queued bytes, then end of file.
    Gone,
}

/// A socket of the tree connected to one outside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExternalSocket {
    /// Its inode and its peer's when checkpointed (for humans).
    pub inode: u64,
    pub peer_inode: u64,
    /// The process (index in the image) whose directory relative names resolve in.
    pub holder: usize,
    #[serde(default, skip_serializing_if = "UnixType::is_stream")]
    pub sock_type: UnixType,
    pub reconnect: Reconnect,
    /// The peer's name (what `reconnect: name` connects to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Name>,
    /// Its own name (datagram sockets connected again by name only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// What is sent to it again before it connects (`SOCKET_DATA`), and its messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_section: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    /// Bytes that were queued at it and are not carried (see the module's description).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub shutdown: u8,
    #[serde(default, skip_serializing_if = "UnixOpts::is_default")]
    pub opts: UnixOpts,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

/// An fd of one; `socket` indexes `Shared::unix_external`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExternalEnd {
    pub socket: usize,
}

/// Records socket `s` (a copy of one of the process's fds, inode `inode`, type `ty`, `d` from
/// sock_diag), whose peer no process of the tree holds, once for the tree; `refusal` is the
/// error when it may not be carried (a stream without `--external unix`).
pub fn dump_end(
    ctx: &mut DumpCtx,
    s: &OwnedFd,
    (inode, ty): (u64, UnixType),
    d: &Diag,
    refusal: impl FnOnce(&DumpCtx) -> DumpError,
) -> Result<FdKind, DumpError> {
    if let Some(&socket) = ctx.shared.external_index.get(&inode) {
        return Ok(FdKind::UnixExternal(ExternalEnd { socket }));
    }
    let peer = peer_name(s);
    let own = Name::dump(ctx.pid, s, d.vfs_ino, ty == UnixType::Dgram);
    let reconnect = match (ty, &peer, &own) {
        (UnixType::Dgram, Some(_), _) => Reconnect::Name,
        (_, Some(_), None) => Reconnect::Name,
        _ => Reconnect::Gone,
    };
    // A datagram socket connected again by name loses nothing it had; the rest needs asking.
    let by_default = ty == UnixType::Dgram && reconnect == Reconnect::Name;
    if !by_default && !ctx.shared.external_unix {
        return Err(refusal(ctx));
    }
    record(ctx, s, (inode, ty), d, (reconnect, peer, own))
}

/// Records stream or seqpacket socket `s` (inode `inode`, type `ty`, `d` from sock_diag),
/// whose peer has closed the connection, once for the tree: it comes back as it is, its
/// queued bytes then end of file (`Reconnect::Gone`), with nothing outside to ask about.
pub fn dump_peer_closed(
    ctx: &mut DumpCtx,
    s: &OwnedFd,
    (inode, ty): (u64, UnixType),
    d: &Diag,
) -> Result<FdKind, DumpError> {
    if let Some(&socket) = ctx.shared.external_index.get(&inode) {
        return Ok(FdKind::UnixExternal(ExternalEnd { socket }));
    }
    record(ctx, s, (inode, ty), d, (Reconnect::Gone, None, None))
}

/// Records socket `s` as `reconnect` says (with the peer's and its own name if it has them).
fn record(
    ctx: &mut DumpCtx,
    s: &OwnedFd,
    (inode, ty): (u64, UnixType),
    d: &Diag,
    (reconnect, peer, own): (Reconnect, Option<Name>, Option<Name>),
) -> Result<FdKind, DumpError> {
    // Kept: a gone peer's bytes (sent from the other end of a new pair), and a named
    // datagram socket's messages (sent to its name before it connects).
    let keep = match reconnect {
        Reconnect::Gone => true,
        Reconnect::Name => ty == UnixType::Dgram && own.is_some(),
    };
    let (data_section, messages, dropped) = dump_queue(ctx, s, (inode, ty), d, keep)?;
    let socket = ExternalSocket {
        inode,
        peer_inode: d.peer,
        holder: ctx.process,
        sock_type: ty,
        reconnect,
        peer: peer.filter(|_| reconnect == Reconnect::Name),
        name: own.filter(|_| ty == UnixType::Dgram && reconnect == Reconnect::Name),
        data_section,
        messages,
        dropped_bytes: dropped,
        shutdown: d.shutdown & 3,
        opts: UnixOpts::read(s)?,
    };
    let table = &mut ctx.shared.table.unix_external;
    table.push(socket);
    ctx.shared.external_index.insert(inode, table.len() - 1);
    Ok(FdKind::UnixExternal(ExternalEnd {
        socket: table.len() - 1,
    }))
}

/// The queue of socket `s` (inode, type, sock_diag's `d`): its data section and messages if
/// it is to be kept, else how many bytes are dropped (said in a warning).
fn dump_queue(
    ctx: &mut DumpCtx,
    s: &OwnedFd,
    (inode, ty): (u64, UnixType),
    d: &Diag,
    keep: bool,
) -> Result<(Option<usize>, Vec<Message>, u64), DumpError> {
    let q = super::in_flight::queue(ctx, (inode, s), ty, d.shutdown & 1 != 0)?;
    q.refuse_rights(super::unix_dgram::IN_PAIRS_ONLY)?;
    if !keep && !q.data.is_empty() {
        let dropped = q.data.len() as u64;
        eprintln!(
            "ckpt: warning: {dropped} bytes queued at the UNIX {} socket socket:[{inode}] \
             (peer outside the tree) are not carried: it is connected anew on restore",
            ty.name()
        );
        return Ok((None, Vec::new(), dropped));
    }
    if !keep || q.data.is_empty() {
        // Nothing, or only empty datagrams (kept: they are messages too).
        let messages = if keep { q.messages } else { Vec::new() };
        return Ok((None, messages, 0));
    }
    let section = ctx
        .image
        .add_blob(SOCKET_DATA, &q.data)
        .map_err(DumpError::Image)?;
    Ok((Some(section), q.messages, 0))
}

/// The name of the socket `s` is connected to (None: unnamed).
fn peer_name(s: &OwnedFd) -> Option<Name> {
    let addr = getpeername::<SockaddrStorage>(s.as_raw_fd()).ok()?;
    let addr = super::socket::sockaddr_bytes(&addr);
    (addr.len() > 2).then_some(Name { addr, file: None })
}

/// Makes every socket of `table` again (see the module's description); `blob` reads a data
/// section, `envs` are the holders'.
pub fn make_all(
    table: &[ExternalSocket],
    blob: &dyn Fn(Option<usize>) -> io::Result<Vec<u8>>,
    envs: &[HolderEnv],
) -> io::Result<Vec<OwnedFd>> {
    table
        .iter()
        .map(|s| {
            let env = envs.get(s.holder).ok_or_else(einval)?;
            let fd = match s.reconnect {
                Reconnect::Name => {
                    unix::in_dir(env.cwd, || connected(s, &blob(s.data_section)?, env))
                }
                Reconnect::Gone => gone(s, &blob(s.data_section)?),
            }?;
            s.opts.apply(&fd)?;
            unix::apply_shutdown(&fd, s.shutdown)?;
            Ok(fd)
        })
        .collect()
}

/// A socket connected to `s.peer` again (its own name and queue back first, for datagrams).
/// A stream or seqpacket socket connects as its holder (`env`: its pid and effective ids),
/// which is what the peer's SO_PEERCRED reports (likely who connected first).
fn connected(s: &ExternalSocket, data: &[u8], env: &HolderEnv) -> io::Result<OwnedFd> {
    let peer = s.peer.as_ref().ok_or_else(einval)?;
    let fd = unix::new_socket(s.sock_type)?;
    if let Some(name) = &s.name {
        name.bind(&fd).map_err(named("binding", name))?;
        if !s.messages.is_empty() {
            let anonymous = unix::new_socket(UnixType::Dgram)?;
            unix::send_queue(
                &anonymous,
                Some(&name.storage()?),
                data,
                (&s.messages, &unix::no_fds),
            )
            .map_err(named("refilling the queue of", name))?;
        }
    }
    let as_holder = (s.sock_type != UnixType::Dgram)
        .then(|| env.peer_cred())
        .flatten();
    super::peercred::connect_as(&fd, &peer.storage()?, as_holder.as_ref()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "connecting the UNIX {} socket socket:[{}] again to {} (its peer outside the \
                 tree; is its server running?): {e}",
                s.sock_type.name(),
                s.inode,
                peer.display()
            ),
        )
    })?;
    if let Some(name) = &s.name {
        name.settle_file()
            .map_err(named("restoring the file of", name))?;
    }
    Ok(fd)
}

/// A socket whose peer has closed, holding `data` (`s.messages`) to be read first.
fn gone(s: &ExternalSocket, data: &[u8]) -> io::Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        s.sock_type.sock_type(),
        None,
        SockFlag::empty(),
    )?;
    if !data.is_empty() || !s.messages.is_empty() {
        unix::send_queue(&theirs, None, data, (&s.messages, &unix::no_fds))?;
    }
    drop(theirs);
    Ok(ours)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn named<'a>(what: &'a str, name: &'a Name) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", name.display()))
}

impl FdState for ExternalEnd {
    fn what(&self) -> &'static str {
        "the UNIX socket connected outside the tree"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let socket = ctx.shared.external.get(self.socket).ok_or_else(einval)?;
        super::place_copy(socket, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.socket < v.shared.unix_external.len()
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        let Some(s) = v.shared.unix_external.get(self.socket) else {
            return "UNIX socket connected outside the tree ?".into();
        };
        let how = match (s.reconnect, &s.peer) {
            (Reconnect::Name, Some(p)) if s.sock_type == UnixType::Dgram => {
                format!("connected again to {} on restore", p.display())
            }
            (Reconnect::Name, Some(p)) => format!(
                "reconnected to {} on restore (a new connection)",
                p.display()
            ),
            _ if s.peer_inode == 0 => "its peer had closed: restored so (end of file)".into(),
            _ => "peer unnamed: restored with its peer gone (end of file)".into(),
        };
        let bytes = s
            .data_section
            .and_then(|i| v.sections.get(i))
            .map_or(0, |x| x.len);
        let dropped = match s.dropped_bytes {
            0 => String::new(),
            n => format!(", {n} bytes dropped"),
        };
        format!(
            "UNIX {} socket with its peer outside the tree (socket:[{}]): {how} \
             ({bytes} bytes unread{dropped})",
            s.sock_type.name(),
            s.peer_inode
        )
    }
}

/// Every socket's names, section, messages and holder make sense.
pub fn validate(
    table: &[ExternalSocket],
    sections: &[Section],
    processes: usize,
) -> Result<(), String> {
    for (i, s) in table.iter().enumerate() {
        let len = s
            .data_section
            .and_then(|d| sections.get(d))
            .map_or(0, |x| x.len);
        let section_ok = s
            .data_section
            .is_none_or(|d| section_is(sections, d, &SOCKET_DATA));
        let messages_ok = match s.sock_type {
            UnixType::Stream => s.messages.is_empty(),
            _ => unix::messages_fill(&s.messages, len),
        } && super::in_flight::indices_valid(&s.messages, 0);
        // Bytes go back only through a pair, or to a named datagram socket.
        let data_ok = len == 0
            || s.reconnect == Reconnect::Gone
            || (s.sock_type == UnixType::Dgram && s.name.is_some());
        let names_ok = s.peer.as_ref().is_none_or(Name::valid)
            && s.name.as_ref().is_none_or(Name::valid)
            && (s.reconnect == Reconnect::Gone || s.peer.is_some());
        if !(section_ok
            && messages_ok
            && data_ok
            && names_ok
            && s.holder < processes
            && s.shutdown <= 3)
        {
            return Err(format!("bad UNIX socket connected outside the tree {i}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixDatagram, UnixListener};

    fn socket(reconnect: Reconnect, ty: UnixType, peer: Option<&str>) -> ExternalSocket {
        ExternalSocket {
            inode: 1,
            peer_inode: 2,
            holder: 0,
            sock_type: ty,
            reconnect,
            peer: peer.map(|p| Name {
                addr: address(p),
                file: None,
            }),
            name: None,
            data_section: None,
            messages: vec![],
            dropped_bytes: 0,
            shutdown: 0,
            opts: UnixOpts::default(),
        }
    }

    fn address(path: &str) -> Vec<u8> {
        let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(path.as_bytes());
        a.push(0);
        a
    }

    /// A datagram socket is connected to its peer's name again; a stream socket too (a new
    /// connection the listener accepts); nothing listening there fails naming the path.
    #[test]
    fn sockets_connect_again_to_the_peers_name() {
        let dir = std::env::temp_dir().join(format!("ckpt-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let server = UnixDatagram::bind(&log).unwrap();
        // No credentials recorded: connected by ckpt itself (a helper would fork).
        let env = HolderEnv {
            pid: 1,
            cwd: "/",
            umask: 0o22,
            creds: None,
        };
        let s = socket(Reconnect::Name, UnixType::Dgram, log.to_str());
        let fd = connected(&s, &[], &env).unwrap();
        nix::sys::socket::send(
            fd.as_raw_fd(),
            b"hello",
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(server.recv(&mut buf).unwrap(), 5);
        let srv = dir.join("srv");
        let l = UnixListener::bind(&srv).unwrap();
        let s = socket(Reconnect::Name, UnixType::Stream, srv.to_str());
        let _fd = connected(&s, &[], &env).unwrap();
        assert!(l.accept().is_ok());
        let s = socket(
            Reconnect::Name,
            UnixType::Stream,
            Some("/nonexistent/ckpt-srv"),
        );
        let err = connected(&s, &[], &env).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ckpt-srv"), "{err}");
        assert_eq!(validate(&[s], &[], 1), Ok(()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A socket whose peer is gone reads what was queued, then end of file.
    #[test]
    fn a_gone_peer_gives_the_queue_then_end_of_file() {
        let s = socket(Reconnect::Gone, UnixType::Stream, None);
        let fd = gone(&s, b"left").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(nix::unistd::read(&fd, &mut buf), Ok(4));
        assert_eq!(nix::unistd::read(&fd, &mut buf), Ok(0));
        // A named peer is needed to connect again.
        let bad = socket(Reconnect::Name, UnixType::Stream, None);
        assert!(validate(&[bad], &[], 1).is_err());
    }
}
