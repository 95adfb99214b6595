//! Connected pairs of UNIX sockets whose both ends the tree holds, of any type: made by
//! socketpair(2) (event-loop self-pipes, asyncio, a parent and its worker), or by connect(2)
//! to a listening socket of the tree and accept(2), or two datagram sockets connected to each
//! other. The peer is found with sock_diag; what is queued at each end is peeked (not
//! consumed: bytes for a stream, each message for datagram and seqpacket) and, on restore,
//! sent again from the other end of a new socketpair, with each end's name, options and
//! shutdown state.
//!
//! A pair made by connect and accept comes back as a socketpair: its ends get their names
//! back by binding after the fact (a path name is bound and its file removed again: it is the
//! listener's, which is made after the pairs), so getsockname and getpeername answer as
//! before; an abstract name a listener of the tree also holds cannot be taken twice and is
//! left out (unnamed). Peer credentials (SO_PEERCRED) become those of `ckpt restore`.

use super::unix::{self, Diag, Message, Name, UnixOpts, UnixType};
use super::{DumpCtx, DumpError, Fd, FdKind, FdState, HolderEnv, RestoreCtx, View};
use crate::image::{section_is, Section, SectionKind};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::OwnedFd;

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
        let (state, data) = dump_state(ctx.pid, s, ty, d)?;
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
    pid: i32,
    s: &OwnedFd,
    ty: UnixType,
    d: &Diag,
) -> Result<(EndState, Vec<u8>), DumpError> {
    let q = unix::peek_queue(s, ty, d.shutdown & 1 != 0)?;
    // A connected stream's file, if any, is its listener's (made again by the listener).
    let keep_file = ty == UnixType::Dgram;
    let state = EndState {
        messages: q.messages,
        name: Name::dump(pid, s, d.vfs_ino, keep_file),
        shutdown: d.shutdown & 3,
        opts: UnixOpts::read(s)?,
    };
    Ok((state, q.data))
}

/// A new connected pair like `sp`, holding `queued[e]` ready to be read at end `e`; names
/// bound in `env`'s directory, except abstract names in `taken` (a listener's).
pub fn make(
    sp: &SocketPair,
    queued: [&[u8]; 2],
    env: &HolderEnv,
    taken: &[&[u8]],
) -> io::Result<[OwnedFd; 2]> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        sp.sock_type.sock_type(),
        None,
        SockFlag::empty(),
    )?;
    let ends = [a, b];
    for (end, data) in queued.iter().enumerate() {
        // What waits at this end was sent by the other.
        if !data.is_empty() || !sp.ends[end].messages.is_empty() {
            unix::send_queue(&ends[1 - end], None, data, &sp.ends[end].messages)?;
        }
    }
    for (fd, state) in ends.iter().zip(&sp.ends) {
        if let Some(name) = &state.name {
            name_end(fd, name, sp.sock_type, env, taken);
        }
    }
    for (fd, state) in ends.iter().zip(&sp.ends) {
        state.opts.apply(fd)?;
        unix::apply_shutdown(fd, state.shutdown)?;
    }
    Ok(ends)
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
        format!(
            "{what}socket pair {} end {}{name} ({messages}{bytes} bytes unread)",
            self.pair, self.end
        )
    }
}

/// The table's socket pairs refer to sections of the right kind, their messages fill them,
/// their names are UNIX addresses and their holders processes of the image.
pub fn validate(
    pairs: &[SocketPair],
    sections: &[Section],
    processes: usize,
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
            let messages_ok = match sp.sock_type {
                UnixType::Stream => state.messages.is_empty(),
                _ => unix::messages_fill(&state.messages, len),
            };
            if !messages_ok || state.shutdown > 3 || !state.name.as_ref().is_none_or(Name::valid) {
                return Err("bad socket pair end (messages, name or shutdown)".into());
            }
        }
    }
    Ok(())
}
