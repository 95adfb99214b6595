//! UNIX datagram sockets that are not one of a connected pair: a server bound to a path or
//! an abstract name, its clients (connected to it, or sending with sendto), an unbound socket.
//! Recorded once per tree with their name (and socket file: owner, mode), the socket they are
//! connected to (which must be the tree's), their options, shutdown state and queued messages
//! with each sender's address. On restore ckpt binds every one, sends each queue again (from
//! the tree's socket with the sender's name, else from an unnamed socket), connects them, then
//! puts their files as they were: all before the restorers fork.

use super::unix::{self, Diag, Message, Name, UnixOpts, UnixType};
use super::{unsupported, DumpCtx, DumpError, Fd, FdKind, FdState, HolderEnv, RestoreCtx, View};
use crate::image::{section_is, Section};
use nix::sys::socket::connect;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

pub use super::socket_pair::SOCKET_DATA;

/// A datagram socket of the tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DgramSocket {
    /// Its inode when checkpointed (for humans).
    pub inode: u64,
    /// The process (index in the image) whose directory relative names resolve in.
    pub holder: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// The socket it is connected to (index in `Shared::unix_dgram`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<usize>,
    /// Its queued messages' bytes (`SOCKET_DATA`) and the messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_section: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shutdown: u8,
    #[serde(default, skip_serializing_if = "UnixOpts::is_default")]
    pub opts: UnixOpts,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// Why descriptors in flight at such a socket are refused.
pub const IN_PAIRS_ONLY: &str =
    "they are carried in the queues of connected socket pairs only (not yet here)";

/// An fd of one; `socket` indexes `Shared::unix_dgram`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DgramEnd {
    pub socket: usize,
}

/// Records datagram socket `s` (a copy of one of the process's fds, inode `inode`, `d` from
/// sock_diag; its peer, if any, is the tree's and not connected back) once for the tree.
pub fn dump_end(ctx: &mut DumpCtx, s: &OwnedFd, inode: u64, d: &Diag) -> Result<FdKind, DumpError> {
    if let Some(&socket) = ctx.shared.dgram_index.get(&inode) {
        return Ok(FdKind::UnixDgram(DgramEnd { socket }));
    }
    let q = super::in_flight::queue(ctx, (inode, s), UnixType::Dgram, d.shutdown & 1 != 0)?;
    q.refuse_rights(IN_PAIRS_ONLY)?;
    let name = Name::dump(ctx.pid, s, d.vfs_ino, true);
    if !q.messages.is_empty() && name.is_none() {
        return Err(unsupported(
            "messages are queued at an unnamed datagram socket that is not one of a pair: \
             they could not be sent to it again",
        ));
    }
    let data_section = match q.data.is_empty() {
        true => None,
        false => Some(
            ctx.image
                .add_blob(SOCKET_DATA, &q.data)
                .map_err(DumpError::Image)?,
        ),
    };
    let socket = DgramSocket {
        inode,
        holder: ctx.process,
        name,
        peer: None,
        data_section,
        messages: q.messages,
        shutdown: d.shutdown & 3,
        opts: UnixOpts::read(s)?,
    };
    let table = &mut ctx.shared.table.unix_dgram;
    table.push(socket);
    let index = table.len() - 1;
    ctx.shared.dgram_index.insert(inode, index);
    if d.peer != 0 {
        ctx.shared.dgram_peers.push((index, d.peer));
    }
    Ok(FdKind::UnixDgram(DgramEnd { socket: index }))
}

/// Resolves the peers recorded by inode once every socket is in `table` (`index`: inode ->
/// position); a peer that is not there is named.
pub fn resolve_peers(
    table: &mut [DgramSocket],
    index: &std::collections::BTreeMap<u64, usize>,
    peers: &[(usize, u64)],
) -> Result<(), String> {
    for &(i, peer_ino) in peers {
        let peer = index.get(&peer_ino).copied();
        let named = peer.is_some_and(|p| table[p].name.is_some());
        if !named {
            return Err(format!(
                "the UNIX datagram socket socket:[{}] is connected to socket:[{peer_ino}], \
                 which is not an unconnected, named datagram socket of the tree",
                table[i].inode
            ));
        }
        table[i].peer = peer;
    }
    Ok(())
}

/// Makes every socket of `table` again (see the module's description); `blob` reads a data
/// section, `envs` are the holders'.
pub fn make_all(
    table: &[DgramSocket],
    blob: &dyn Fn(Option<usize>) -> io::Result<Vec<u8>>,
    envs: &[HolderEnv],
) -> io::Result<Vec<OwnedFd>> {
    let cwd = |s: &DgramSocket| envs.get(s.holder).map(|e| e.cwd).ok_or_else(einval);
    let fds = table
        .iter()
        .map(|_| unix::new_socket(UnixType::Dgram))
        .collect::<io::Result<Vec<_>>>()?;
    for (s, fd) in table.iter().zip(&fds) {
        if let Some(name) = &s.name {
            unix::in_dir(cwd(s)?, || name.bind(fd)).map_err(named("binding", name))?;
        }
    }
    for (s, fd) in table.iter().zip(&fds) {
        refill(s, fd, (table, &fds), blob, cwd(s)?)?;
    }
    for (s, fd) in table.iter().zip(&fds) {
        let Some(peer) = s.peer.and_then(|p| table.get(p)) else {
            continue;
        };
        let name = peer.name.as_ref().ok_or_else(einval)?;
        unix::in_dir(cwd(peer)?, || {
            Ok(connect(fd.as_raw_fd(), &name.storage()?)?)
        })
        .map_err(named("connecting to", name))?;
    }
    for (s, fd) in table.iter().zip(&fds) {
        if let Some(name) = &s.name {
            unix::in_dir(cwd(s)?, || name.settle_file())
                .map_err(named("restoring the file of", name))?;
        }
        // Buffers as recorded (senders' were enlarged to hold the queues).
        s.opts.apply(fd)?;
        unix::apply_shutdown(fd, s.shutdown)?;
    }
    Ok(fds)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn named(what: &'static str, name: &Name) -> impl FnOnce(io::Error) -> io::Error {
    let name = name.display();
    move |e| io::Error::new(e.kind(), format!("{what} the datagram socket {name}: {e}"))
}

/// Sends socket `s`'s (made: `fd`) queued messages to it again, each from the socket of the
/// tree bound to its sender's address, or from an unnamed socket.
fn refill(
    s: &DgramSocket,
    fd: &OwnedFd,
    (table, fds): (&[DgramSocket], &[OwnedFd]),
    blob: &dyn Fn(Option<usize>) -> io::Result<Vec<u8>>,
    cwd: &str,
) -> io::Result<()> {
    let (Some(name), false) = (&s.name, s.messages.is_empty()) else {
        return Ok(());
    };
    let data = blob(s.data_section)?;
    let to = name.storage()?;
    let anonymous = unix::new_socket(UnixType::Dgram)?;
    let mut at = 0usize;
    // Runs of messages from one sender go together.
    for run in s.messages.chunk_by(|a, b| a.from == b.from) {
        let len: usize = run.iter().map(|m| m.len as usize).sum();
        let bytes = data.get(at..at + len).ok_or_else(einval)?;
        let sender = table
            .iter()
            .position(|o| {
                !run[0].from.is_empty() && o.name.as_ref().is_some_and(|n| n.addr == run[0].from)
            })
            .and_then(|j| fds.get(j))
            .filter(|&f| f.as_raw_fd() != fd.as_raw_fd())
            .unwrap_or(&anonymous);
        unix::in_dir(cwd, || {
            unix::send_queue(sender, Some(&to), bytes, (run, &unix::no_fds))
        })
        .map_err(named("refilling the queue of", name))?;
        at += len;
    }
    Ok(())
}

impl FdState for DgramEnd {
    fn what(&self) -> &'static str {
        "the UNIX datagram socket"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let socket = ctx.shared.dgram.get(self.socket).ok_or_else(einval)?;
        super::place_copy(socket, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.socket < v.shared.unix_dgram.len()
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        let Some(s) = v.shared.unix_dgram.get(self.socket) else {
            return "UNIX datagram socket ?".into();
        };
        let name = |s: &DgramSocket| s.name.as_ref().map_or("(unnamed)".into(), Name::display);
        let peer = s
            .peer
            .and_then(|p| v.shared.unix_dgram.get(p))
            .map_or(String::new(), |p| format!(" connected to {}", name(p)));
        let bytes = s
            .data_section
            .and_then(|i| v.sections.get(i))
            .map_or(0, |x| x.len);
        format!(
            "UNIX datagram socket {}{peer} ({} messages, {bytes} bytes unread)",
            name(s),
            s.messages.len()
        )
    }
}

/// Every socket's name, peer, sections, messages and holder make sense.
pub fn validate(
    table: &[DgramSocket],
    sections: &[Section],
    processes: usize,
) -> Result<(), String> {
    for (i, s) in table.iter().enumerate() {
        let peer_ok = s
            .peer
            .is_none_or(|p| p != i && table.get(p).is_some_and(|o| o.name.is_some()));
        let section_ok = s
            .data_section
            .is_none_or(|d| section_is(sections, d, &SOCKET_DATA));
        let len = s
            .data_section
            .and_then(|d| sections.get(d))
            .map_or(0, |x| x.len);
        let messages_ok = unix::messages_fill(&s.messages, len)
            && super::in_flight::indices_valid(&s.messages, 0)
            && (s.messages.is_empty() || s.name.is_some())
            && s.messages
                .iter()
                .all(|m| m.from.is_empty() || super::socket::valid_address(libc::AF_UNIX, &m.from));
        let name_ok = s.name.as_ref().is_none_or(Name::valid);
        if !(peer_ok
            && section_ok
            && messages_ok
            && name_ok
            && s.holder < processes
            && s.shutdown <= 3)
        {
            return Err(format!("bad UNIX datagram socket {i}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named server's queue, sent by a client with an abstract name, is recorded with each
    /// sender and passes validation.
    #[test]
    fn a_named_servers_queue_is_recorded_with_its_senders() {
        let dir = std::env::temp_dir().join(format!("ckpt-dg-{}", std::process::id()));
        let server = std::os::unix::net::UnixDatagram::bind(&dir).unwrap();
        let me = format!("\0ckpt-dg-test-{}", std::process::id());
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(&me.as_bytes()[1..]);
        let client = std::os::unix::net::UnixDatagram::bind_addr(&addr.unwrap()).unwrap();
        client.send_to(b"one", &dir).unwrap();
        client.send_to(b"three", &dir).unwrap();
        let cfd = OwnedFd::from(client);
        let cname = Name::dump(std::process::id() as i32, &cfd, None, true).unwrap();
        assert_eq!(cname.display(), format!("@{}", &me[1..]));
        assert!(cname.is_abstract() && cname.file.is_none());
        let fd = OwnedFd::from(server);
        let q = unix::peek_queue(&fd, UnixType::Dgram, false).unwrap();
        assert_eq!(q.messages.len(), 2);
        assert_eq!(
            super::super::socket::unix_path(&q.messages[0].from),
            format!("@{}", &me[1..])
        );
        let name = Name::dump(std::process::id() as i32, &fd, None, false);
        let s = DgramSocket {
            inode: 1,
            holder: 0,
            name,
            peer: None,
            data_section: Some(0),
            messages: q.messages,
            shutdown: 0,
            opts: UnixOpts::read(&fd).unwrap(),
        };
        let sections = [Section {
            kind: SOCKET_DATA,
            offset: 4096,
            len: q.data.len() as u64,
            xxh64: 0,
            compressed: None,
            delta: None,
        }];
        assert_eq!(validate(std::slice::from_ref(&s), &sections, 1), Ok(()));
        std::fs::remove_file(dir).unwrap();
    }
}
