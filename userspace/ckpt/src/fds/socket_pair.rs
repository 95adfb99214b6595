//! Connected pairs of UNIX sockets whose both ends the tree holds, of any type: made by
//! socketpair(2) (event-loop self-pipes, asyncio, a parent and its worker), or by connect(2)
//! to a listening socket of the tree and accept(2), or two datagram sockets connected to each
//! other. The peer is found with sock_diag; what is queued at each end is peeked (not
//! consumed: bytes for a stream, each message for datagram and seqpacket) and, on restore,
//! sent again from the other end of a new socketpair, with each end's name, options and
//! shutdown state.
//!
//! Each end's peer credentials (SO_PEERCRED, SO_PEERGROUPS) are recorded and come back
//! (`peercred`): a pair whose ends report the same peer is made by socketpair(2) as that
//! peer; one whose ends report different peers (made by connect and accept) by listen(2) and
//! connect(2) as each, the accepted end taking its name from the listener it is accepted
//! from, bound to it for the moment (a path's file removed again: it is the listener's, which
//! is made after the pairs). A pair made by socketpair gets its ends' names back by binding
//! after the fact, so getsockname and getpeername answer as before; an abstract name a
//! listener of the tree also holds cannot be bound twice: that end is made the accepted end
//! of a connection instead, which holds the name without taking it.
//!
//! Messages may carry descriptors in flight (`in_flight`): a pair is made first, its queues
//! filled once every descriptor in flight is made (`fill`), since one may be a pair's end.

use super::peercred::{self, PeerCred};
use super::unix::{self, Diag, Message, Name, UnixOpts, UnixType};
use super::{DumpCtx, DumpError, Fd, FdKind, FdState, HolderEnv, RestoreCtx, View};
use crate::image::{section_is, Section, SectionKind};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{OwnedFd, RawFd};

/// Bytes queued in a socket, unread.
pub const SOCKET_DATA: SectionKind = SectionKind::named("socket_data");

/// A connected pair of the tree, with what was queued at each end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketPair {
    /// The two sockets' inode numbers when checkpointed (for humans).
    pub inodes: [u64; 2],
    /// Per end, the `SOCKET_DATA` section with the bytes waiting to be read there, if any.
    pub data_sections: [Option<usize>; 2],
    #[serde(default, skip_serializing_if = "UnixType::is_stream")]
    pub sock_type: UnixType,
    /// Each end's messages, name, options and shutdown state.
    #[serde(default, skip_serializing_if = "ends_are_default")]
    pub ends: [EndState; 2],
    /// The process (index in the image) whose directory relative names resolve in.
    #[serde(default)]
    pub holder: usize,
}

/// One end's state besides its bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndState {
    /// Datagram and seqpacket: the queued messages, in order (their bytes are the section's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// sk_shutdown: 1 receive side, 2 send side.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shutdown: u8,
    #[serde(default, skip_serializing_if = "UnixOpts::is_default")]
    pub opts: UnixOpts,
    /// What it reports for its peer (SO_PEERCRED); None: nothing (a datagram pair made by
    /// connect(2)), or an image older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerCred>,
}

fn ends_are_default(e: &[EndState; 2]) -> bool {
    e.iter().all(|s| *s == EndState::default())
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// One end of a socket pair; `pair` indexes `Shared::socket_pairs`, `end` is 0 or 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketPairEnd {
    pub pair: usize,
    pub end: usize,
}

/// Records socket `s` (a copy of one of the process's fds, inode `inode`, type `ty`, `d` from
/// sock_diag), whose peer the tree holds and whose peer's peer it is, as a pair end: the pair
/// once, each end's state when its first fd is seen.
pub fn dump_end(
    ctx: &mut DumpCtx,
    s: &OwnedFd,
    (inode, ty): (u64, UnixType),
    d: &Diag,
) -> Result<FdKind, DumpError> {
    let key = inode.min(d.peer);
    let end = usize::from(inode > d.peer);
    let shared = &mut *ctx.shared;
    let pairs = &mut shared.table.socket_pairs;
    let pair = *shared.pair_index.entry(key).or_insert_with(|| {
        pairs.push(SocketPair {
            inodes: [key, inode.max(d.peer)],
            data_sections: [None, None],
            sock_type: ty,
            ends: Default::default(),
            holder: ctx.process,
        });
        pairs.len() - 1
    });
    if shared.ends_seen.insert(inode) {
        let (state, data) = dump_state(ctx, s, (inode, ty), d)?;
        if !data.is_empty() {
            let section = ctx
                .image
                .add_blob(SOCKET_DATA, &data)
                .map_err(DumpError::Image)?;
            ctx.shared.table.socket_pairs[pair].data_sections[end] = Some(section);
        }
        ctx.shared.table.socket_pairs[pair].ends[end] = state;
    }
    Ok(FdKind::SocketPairEnd(SocketPairEnd { pair, end }))
}

/// One end's state and queued bytes.
fn dump_state(
    ctx: &mut DumpCtx,
    s: &OwnedFd,
    (inode, ty): (u64, UnixType),
    d: &Diag,
) -> Result<(EndState, Vec<u8>), DumpError> {
    let q = super::in_flight::queue(ctx, (inode, s), ty, d.shutdown & 1 != 0)?;
    // A connected stream's file, if any, is its listener's (made again by the listener).
    let keep_file = ty == UnixType::Dgram;
    let state = EndState {
        messages: q.messages,
        name: Name::dump(ctx.pid, s, d.vfs_ino, keep_file),
        shutdown: d.shutdown & 3,
        opts: UnixOpts::read(s)?,
        peer: peercred::read(s),
    };
    Ok((state, q.data))
}

/// A new connected pair like `sp` (each end reporting its recorded peer), its stream and
/// seqpacket ends named (in `env`'s directory; abstract names in `taken` are listeners'),
/// its queues still empty (see [`fill`]).
pub fn make(sp: &SocketPair, env: &HolderEnv, taken: &[&[u8]]) -> io::Result<[OwnedFd; 2]> {
    let ty = sp.sock_type;
    let named_later = ty == UnixType::Dgram;
    if let Some(accepted) = accepted_end(sp, taken) {
        let ends = connect_accept(sp, accepted, env)?;
        let client = &sp.ends[1 - accepted];
        if let Some(name) = &client.name {
            name_end(&ends[1 - accepted], name, ty, env, taken);
        }
        return Ok(ends);
    }
    let ends = peercred::socketpair_as(ty.sock_type(), sp.ends[0].peer.as_ref())?;
    for (fd, state) in ends.iter().zip(&sp.ends) {
        if let (Some(name), false) = (&state.name, named_later) {
            name_end(fd, name, ty, env, taken);
        }
    }
    Ok(ends)
}

/// Which end to make the accepted end of a connection (stream and seqpacket pairs only):
/// when the ends report different peers (socketpair gives both the same), or an end's
/// abstract name is a listener's (a socketpair end bound to it would hold it). The end with
/// that name, else the named one: an accepted end has its listener's name.
fn accepted_end(sp: &SocketPair, taken: &[&[u8]]) -> Option<usize> {
    if sp.sock_type == UnixType::Dgram {
        return None;
    }
    let name = |e: usize| sp.ends[e].name.as_ref();
    let listeners = |e: &usize| name(*e).is_some_and(|n| taken.contains(&n.addr.as_slice()));
    let held = (0..2)
        .filter(listeners)
        .any(|e| name(e).is_some_and(Name::is_abstract));
    if !held && sp.ends[0].peer == sp.ends[1].peer {
        return None;
    }
    let named = |e: &usize| name(*e).is_some();
    (0..2)
        .find(listeners)
        .or_else(|| (0..2).rev().find(named))
        .or(Some(1))
}

/// The pair made by listen and connect: end `accepted` accepted from a listener bound to
/// its name (or an automatic one if that cannot be had: a warning says so), the other the
/// client; each listens or connects as the peer the other end reports.
fn connect_accept(sp: &SocketPair, accepted: usize, env: &HolderEnv) -> io::Result<[OwnedFd; 2]> {
    let client = 1 - accepted;
    let listener = unix::new_socket(sp.sock_type)?;
    let name = sp.ends[accepted].name.as_ref();
    let bound = match name {
        Some(n) => unix::in_dir(env.cwd, || n.bind(&listener)).map_err(|e| {
            eprintln!(
                "ckpt: warning: a connected UNIX socket comes back without its name {} ({e})",
                n.display()
            );
        }),
        None => Err(()),
    };
    if bound.is_err() {
        let auto = nix::sys::socket::UnixAddr::new_unnamed();
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&listener), &auto)?;
    }
    let peers = [
        sp.ends[client].peer.as_ref(),
        sp.ends[accepted].peer.as_ref(),
    ];
    let [c, a] = peercred::connected_as(listener, sp.sock_type.sock_type(), peers, env.cwd)?;
    // A path was the listener's of the image, made after the pairs: not left behind.
    if let (Some(n), true) = (name, bound.is_ok()) {
        if !n.is_abstract() {
            unix::in_dir(env.cwd, || Ok(nix::unistd::unlink(n.display().as_str())?))?;
        }
    }
    Ok(if accepted == 1 { [c, a] } else { [a, c] })
}

/// Fills a made pair's queues, each sent again from the other end with its descriptors in
/// flight (`fds`: made, by index), then names a datagram pair's ends (after: its messages
/// came from wherever they did), sets the options and shuts down as recorded.
pub fn fill(
    sp: &SocketPair,
    ends: &[OwnedFd; 2],
    queued: [&[u8]; 2],
    (env, fds): (&HolderEnv, &dyn Fn(usize) -> Option<RawFd>),
) -> io::Result<()> {
    for (end, data) in queued.iter().enumerate() {
        // What waits at this end was sent by the other.
        if !data.is_empty() || !sp.ends[end].messages.is_empty() {
            let messages = &sp.ends[end].messages;
            unix::send_queue(&ends[1 - end], None, data, (messages, fds))?;
        }
    }
    if sp.sock_type == UnixType::Dgram {
        for (fd, state) in ends.iter().zip(&sp.ends) {
            if let Some(name) = &state.name {
                name_end(fd, name, sp.sock_type, env, &[]);
            }
        }
    }
    for (fd, state) in ends.iter().zip(&sp.ends) {
        state.opts.apply(fd)?;
        unix::apply_shutdown(fd, state.shutdown)?;
    }
    Ok(())
}

/// Gives end `fd` its name back. A name that cannot be had again (in use by now) leaves the
/// end unnamed, which only getsockname and getpeername can tell: said, not fatal.
fn name_end(fd: &OwnedFd, name: &Name, ty: UnixType, env: &HolderEnv, taken: &[&[u8]]) {
    if name.is_abstract() && taken.contains(&name.addr.as_slice()) {
        return;
    }
    let r = unix::in_dir(env.cwd, || {
        name.bind(fd)?;
        // A connected stream's path was its listener's: not left behind.
        if ty != UnixType::Dgram && !name.is_abstract() {
            return Ok(nix::unistd::unlink(name.display().as_str())?);
        }
        name.settle_file()
    });
    if let Err(e) = r {
        eprintln!(
            "ckpt: warning: a connected UNIX socket comes back without its name {} ({e})",
            name.display()
        );
    }
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
        let Some(sp) = v.shared.socket_pairs.get(self.pair) else {
            return "socket pair ?".into();
        };
        let bytes = sp.data_sections[self.end.min(1)]
            .and_then(|i| v.sections.get(i))
            .map_or(0, |s| s.len);
        let state = &sp.ends[self.end.min(1)];
        let name = state
            .name
            .as_ref()
            .map_or(String::new(), |n| format!(" named {}", n.display()));
        let what = match sp.sock_type {
            UnixType::Stream => String::new(),
            t => format!("{} ", t.name()),
        };
        let messages = match sp.sock_type {
            UnixType::Stream => String::new(),
            _ => format!("{} messages, ", state.messages.len()),
        };
        let fds: usize = state.messages.iter().map(|m| m.fds.len()).sum();
        let fds = match fds {
            0 => String::new(),
            n => format!(", {n} fds in flight"),
        };
        let peer = state.peer.as_ref().map_or(String::new(), |p| {
            format!(", peer pid {} uid {} gid {}", p.pid, p.uid, p.gid)
        });
        format!(
            "{what}socket pair {} end {}{name} ({messages}{bytes} bytes unread{fds}){peer}",
            self.pair, self.end
        )
    }
}

/// The table's socket pairs refer to sections of the right kind, their messages fill them,
/// their names are UNIX addresses and their holders processes of the image.
pub fn validate(
    pairs: &[SocketPair],
    sections: &[Section],
    (processes, in_flight): (usize, usize),
) -> Result<(), String> {
    for sp in pairs {
        if sp.holder >= processes {
            return Err("a socket pair's holder is not a process of the image".into());
        }
        for (section, state) in sp.data_sections.iter().zip(&sp.ends) {
            if section.is_some_and(|i| !section_is(sections, i, &SOCKET_DATA)) {
                return Err("bad socket data section".into());
            }
            let len = section.and_then(|i| sections.get(i)).map_or(0, |s| s.len);
            // A stream's messages split its bytes where descriptors in flight are attached.
            let messages_ok = match sp.sock_type {
                UnixType::Stream if state.messages.is_empty() => true,
                _ => unix::messages_fill(&state.messages, len),
            } && super::in_flight::indices_valid(&state.messages, in_flight);
            if !messages_ok || state.shutdown > 3 || !state.name.as_ref().is_none_or(Name::valid) {
                return Err("bad socket pair end (messages, name or shutdown)".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(name: Option<&[u8]>, pid: i32) -> EndState {
        EndState {
            name: name.map(|a| Name {
                addr: a.to_vec(),
                file: None,
            }),
            peer: Some(PeerCred {
                pid,
                uid: 0,
                gid: 0,
                groups: vec![],
            }),
            ..EndState::default()
        }
    }

    fn pair(ty: UnixType, ends: [EndState; 2]) -> SocketPair {
        SocketPair {
            inodes: [1, 2],
            data_sections: [None, None],
            sock_type: ty,
            ends,
            holder: 0,
        }
    }

    /// A pair is made by socketpair when its ends report the same peer and no end's
    /// abstract name is a listener's; else by connect and accept, the accepted end being the
    /// one named like a listener, or the named one. Never for datagram pairs.
    #[test]
    fn the_accepted_end_is_the_listeners_or_the_named_one() {
        let path: &[u8] = b"\x01\x00/tmp/srv\x00";
        let abs: &[u8] = b"\x01\x00\x00srv";
        let stream = UnixType::Stream;
        let same = pair(stream, [end(None, 5), end(Some(path), 5)]);
        assert_eq!(
            accepted_end(&same, &[path]),
            None,
            "a path can be bound after"
        );
        assert_eq!(
            accepted_end(&same, &[abs]),
            None,
            "not that listener's name"
        );
        let held = pair(stream, [end(Some(abs), 5), end(None, 5)]);
        assert_eq!(accepted_end(&held, &[abs]), Some(0));
        let connected = pair(stream, [end(Some(path), 5), end(None, 6)]);
        assert_eq!(accepted_end(&connected, &[]), Some(0));
        let both = pair(stream, [end(Some(path), 5), end(Some(abs), 6)]);
        assert_eq!(accepted_end(&both, &[path]), Some(0));
        assert_eq!(accepted_end(&both, &[]), Some(1));
        let dgram = pair(UnixType::Dgram, [end(Some(abs), 5), end(None, 6)]);
        assert_eq!(accepted_end(&dgram, &[abs]), None);
    }
}
