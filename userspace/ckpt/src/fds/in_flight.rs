//! File descriptors in flight: sent over a UNIX socket of the tree (SCM_RIGHTS) and not
//! received yet, so held by no process, only by a message in a receive queue (a server
//! handing an accepted connection or a socket pair's end to a worker, a file passed to a
//! child). Each is recorded once per open file, with the state a process's fd of its kind has
//! (`Shared::in_flight`), and the messages carrying it refer to it by index; on restore ckpt
//! makes it before the restorers fork and sends the messages again with it attached.
//!
//! Checkpoint: after the census of the processes' fds and before anything is recorded, every
//! queue fdinfo says carries some (`scm_fds`) is peeked whole; a peek hands ckpt copies of
//! the descriptors in flight (unix_peek_fds), which ckpt keeps until the end of the
//! checkpoint. A copy of a socket whose own queue carries some is peeked in turn (nesting is
//! carried). The copies join the census as fds held for the process whose queue holds them:
//! a pipe or socket pair whose other end only a message holds is the tree's, and a copy that
//! is the open file description of a process's fd (or of another copy) is one of the tree's
//! shared open files (`open_file`), made once, so that they share their offset again; pipes
//! and sockets are one object again through their tables. The kinds carried: pipe ends, UNIX
//! sockets of the tree (pairs, datagram sockets, listeners, those connected outside) and what
//! ckpt makes once (files, deleted files, memfds, eventfds, timerfds, signalfds); anything
//! else in flight (an epoll instance, inotify, a pty, a network socket...) is refused by
//! name, as is a file holding a lock that only a message holds.

use super::unix::{self, Queue, UnixType};
use super::{
    open_file, unsupported, Blobs, DumpCtx, DumpError, Fd, FdKind, HolderEnv, SharedDump,
    SharedFds, View,
};
use crate::image::{ImageWriter, Section};
use crate::proc::FdEntry;
use nix::fcntl::{fcntl, FcntlArg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// A descriptor in flight, once per open file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InFlight {
    /// Its open file's access mode and status flags (fdinfo's, without close-on-exec: that
    /// belongs to the receiver's fd).
    pub flags: u32,
    /// The process (index in the image) holding the queue it was found in, as whom a file
    /// in flight is opened again.
    pub holder: usize,
    /// What it is, as a process's fd of that kind is recorded (a shared open file: an
    /// `open_file` of the tree's table).
    pub kind: FdKind,
}

/// Which process fd led to a descriptor in flight (pid, fd, link target): what a refusal names.
pub type Found = (i32, i32, String);

/// What failed, and through which process fd.
pub type Failure = (i32, i32, String, DumpError);

/// The descriptors in flight while the tree is recorded.
#[derive(Debug, Default)]
pub struct Seen {
    /// Socket inode -> its queue, peeked before any process was recorded (its messages'
    /// `fds` set), until that socket is recorded.
    queues: BTreeMap<u64, Queue>,
    /// ckpt's copy of each descriptor in flight, by index in `Shared::in_flight`.
    copies: Vec<Copy>,
}

#[derive(Debug)]
struct Copy {
    fd: OwnedFd,
    target: String,
    holder: usize,
    found: Found,
}

/// A socket whose queue is to be peeked: where a copy of it is (pid, fd), its inode, the
/// process holding it (or the queue it was found in) and the process fd that led to it.
struct Pending {
    at: (i32, i32),
    ino: u64,
    holder: usize,
    found: Found,
}

fn own_pid() -> i32 {
    std::process::id() as i32
}

/// Peeks every queue of the tree with descriptors in flight (`fds` per process: its index
/// in the image, pid and entries); their copies join `shared`'s census. Before any process
/// is recorded.
pub fn collect(fds: &[(usize, i32, &[FdEntry])], shared: &mut SharedDump) -> Result<(), Failure> {
    let mut pending: Vec<Pending> = fds
        .iter()
        .flat_map(|&(holder, pid, entries)| {
            entries
                .iter()
                .filter(|e| e.scm_fds > 0)
                .filter_map(move |e| {
                    Some(Pending {
                        at: (pid, e.fd),
                        ino: crate::proc::bracketed_inode(&e.target, "socket")?,
                        holder,
                        found: (pid, e.fd, e.target.clone()),
                    })
                })
        })
        .collect();
    while let Some(p) = pending.pop() {
        if shared.in_flight.queues.contains_key(&p.ino) {
            continue;
        }
        let fail = |e: DumpError| (p.found.0, p.found.1, p.found.2.clone(), e);
        let q = peek(&p).map_err(fail)?;
        let q = adopt(q, &p, shared, &mut pending).map_err(fail)?;
        shared.in_flight.queues.insert(p.ino, q);
    }
    Ok(())
}

/// The whole queue of socket `p`, with copies of its descriptors in flight.
fn peek(p: &Pending) -> Result<Queue, DumpError> {
    let s = crate::sys::steal_fd(p.at.0, p.at.1).map_err(super::io_error("pidfd_getfd"))?;
    let ty = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::SockType)
        .ok()
        .and_then(UnixType::of)
        .ok_or_else(|| unsupported("a UNIX socket of an unknown type"))?;
    let d = unix::diag(p.ino).map_err(|e| unsupported(format!("sock_diag: {e}")))?;
    unix::peek_queue(&s, ty, d.shutdown & 1 != 0)
}

/// Takes the copies of `q`'s descriptors in flight: each open file once (the same one sent
/// twice is one index), added to the census; a socket among them whose own queue carries
/// some is `pending` too. Returns `q` with its messages' `fds` set.
fn adopt(
    mut q: Queue,
    p: &Pending,
    shared: &mut SharedDump,
    pending: &mut Vec<Pending>,
) -> Result<Queue, DumpError> {
    let own = own_pid();
    for (m, copies) in q.messages.iter_mut().zip(std::mem::take(&mut q.rights)) {
        for fd in copies {
            // Never at 0, 1 or 2 (ckpt's stdio may be closed): not taken for stdio.
            let fd = super::above(fd, 3).map_err(super::io_error("moving a copy"))?;
            let e = crate::proc::fd_entry(own, fd.as_raw_fd())
                .map_err(super::io_error("reading a descriptor in flight"))?;
            if let Some(i) = known(&shared.in_flight.copies, &fd, &e.target)? {
                m.fds.push(i);
                continue;
            }
            let census = &mut shared.census;
            census.add_in_flight(p.holder, own, std::slice::from_ref(&e));
            if let (Some(ino), true) = (
                crate::proc::bracketed_inode(&e.target, "socket"),
                e.scm_fds > 0,
            ) {
                pending.push(Pending {
                    at: (own, e.fd),
                    ino,
                    holder: p.holder,
                    found: p.found.clone(),
                });
            }
            m.fds.push(shared.in_flight.copies.len());
            shared.in_flight.copies.push(Copy {
                fd,
                target: e.target,
                holder: p.holder,
                found: p.found.clone(),
            });
        }
    }
    Ok(q)
}

/// The index of the copy that is the same open file as `fd` (link target `target`), if any.
fn known(copies: &[Copy], fd: &OwnedFd, target: &str) -> Result<Option<usize>, DumpError> {
    let own = own_pid();
    for (i, c) in copies.iter().enumerate() {
        if c.target == target
            && crate::sys::same_open_file((own, c.fd.as_raw_fd()), (own, fd.as_raw_fd()))
                .map_err(super::io_error("comparing open files (kcmp)"))?
        {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Records every descriptor in flight collected (`Shared::in_flight`), as a process's fd of
/// its kind is recorded. After `collect` and the census's grouping of open files, before
/// any process is recorded.
pub fn record(shared: &mut SharedDump, image: &mut ImageWriter) -> Result<(), Failure> {
    for i in 0..shared.in_flight.copies.len() {
        let c = &shared.in_flight.copies[i];
        let (fd, holder, found) = (c.fd.as_raw_fd(), c.holder, c.found.clone());
        let fail = |e: DumpError| (found.0, found.1, found.2.clone(), e);
        let e = crate::proc::fd_entry(own_pid(), fd)
            .map_err(|x| fail(super::io_error("reading a descriptor in flight")(x)))?;
        let mut ctx = DumpCtx {
            pid: own_pid(),
            process: holder,
            image: &mut *image,
            shared: &mut *shared,
        };
        let kind = dump_kind(&mut ctx, &e).map_err(|err| fail(in_its_queue(&e, err)))?;
        shared.table.in_flight.push(InFlight {
            flags: e.flags & !(libc::O_CLOEXEC as u32),
            holder,
            kind,
        });
    }
    Ok(())
}

/// A refusal about descriptor `e` in flight, said as such.
fn in_its_queue(e: &FdEntry, err: DumpError) -> DumpError {
    match err {
        DumpError::Unsupported(why) => unsupported(format!(
            "a descriptor in flight in its queue (SCM_RIGHTS), {}: {why}",
            e.target
        )),
        other => other,
    }
}

/// The kind of descriptor `e` (ckpt's copy of one in flight), by the dumpers, when it is a
/// kind carried in flight.
fn dump_kind(ctx: &mut DumpCtx, e: &FdEntry) -> Result<FdKind, DumpError> {
    // A lock of an open file a process also holds is taken again through that process's fd.
    let shared_file = ctx.shared.census.descriptions.of(ctx.pid, e.fd).is_some();
    if !e.locks.is_empty() && !shared_file {
        return Err(unsupported(
            "it holds a file lock, and no process holds its open file to take it again",
        ));
    }
    let refused = || {
        unsupported(
            "only files, pipes, UNIX sockets, memfds, eventfds, timerfds and signalfds in \
             flight are carried (not this kind)",
        )
    };
    // Refused before its dumper runs: an epoll instance's watches name fds of a process.
    if e.target == super::epoll::TARGET {
        return Err(refused());
    }
    if crate::proc::bracketed_inode(&e.target, "socket").is_some() {
        let copy = crate::sys::steal_fd(ctx.pid, e.fd).map_err(super::io_error("pidfd_getfd"))?;
        let addr = super::socket::local_address(&copy).unwrap_or_default();
        if super::socket::family_of(&addr) != Some(libc::AF_UNIX) {
            return Err(unsupported(
                "only UNIX sockets in flight are carried (a network socket in flight is not)",
            ));
        }
    }
    let kind = super::dump_one(ctx, e)?;
    match carried(&kind) {
        true => Ok(kind),
        false => Err(refused()),
    }
}

/// The kinds a descriptor in flight may be: one object of the tree, or one ckpt makes.
fn carried(kind: &FdKind) -> bool {
    let object = matches!(
        kind,
        FdKind::Pipe(_)
            | FdKind::SocketPairEnd(_)
            | FdKind::UnixDgram(_)
            | FdKind::UnixExternal(_)
            | FdKind::Listen(_)
            | FdKind::OpenFile(_)
    );
    object || (kind.maker().is_some() && !matches!(kind, FdKind::Epoll(_)))
}

/// What is queued at socket `s` (inode `ino`, type `ty`, shut down for reading:
/// `rcv_shut`): as collected, with its descriptors in flight, or peeked now (then carrying
/// none: fdinfo said so before the tree was recorded).
pub fn queue(
    ctx: &mut DumpCtx,
    (ino, s): (u64, &OwnedFd),
    ty: UnixType,
    rcv_shut: bool,
) -> Result<Queue, DumpError> {
    if let Some(q) = ctx.shared.in_flight.queues.remove(&ino) {
        return Ok(q);
    }
    let q = unix::peek_queue(s, ty, rcv_shut)?;
    q.refuse_rights("they were sent while the tree was being recorded")?;
    Ok(q)
}

// ---------------------------------------------------------------------------------------------
// Restore

/// Makes every descriptor in flight, in ckpt once the objects they may be are made (`made`:
/// pipes, sockets, shared open files and memory), above `min`; each is then sent with its
/// messages. `envs`: the processes', as whom files are opened; `read` reads a section (a
/// deleted file's content).
pub fn make_all(
    table: &[InFlight],
    made: &SharedFds,
    envs: &[HolderEnv],
    (read, min): (&dyn Fn(usize) -> io::Result<Vec<u8>>, RawFd),
) -> io::Result<Vec<OwnedFd>> {
    let mut blobs = Blobs::new();
    for s in table.iter().filter_map(|f| f.kind.blob_section()) {
        blobs.insert(s, read(s)?);
    }
    table
        .iter()
        .map(|f| {
            let fd = make(f, made, envs, (&blobs, min)).map_err(|e| {
                let what = f.kind.state().what();
                io::Error::new(e.kind(), format!("making {what} in flight again: {e}"))
            })?;
            fcntl(&fd, FcntlArg::F_SETFL(super::settable_flags(f.flags)))?;
            super::above(fd, min)
        })
        .collect()
}

/// One descriptor in flight: a copy of the object of the tree it is, or one made as its
/// holder, as a shared open file is.
fn make(
    f: &InFlight,
    made: &SharedFds,
    envs: &[HolderEnv],
    (blobs, min): (&Blobs, RawFd),
) -> io::Result<OwnedFd> {
    let einval = || io::Error::from_raw_os_error(libc::EINVAL);
    let dup = |fd: Option<&OwnedFd>| fd.ok_or_else(einval)?.try_clone();
    match &f.kind {
        FdKind::Pipe(p) => dup(made.pipes.get(p.pipe).map(|e| &e[usize::from(p.write_end)])),
        FdKind::SocketPairEnd(e) => dup(made.pairs.get(e.pair).and_then(|p| p.get(e.end))),
        FdKind::UnixDgram(d) => dup(made.dgram.get(d.socket)),
        FdKind::UnixExternal(x) => dup(made.external.get(x.socket)),
        FdKind::Listen(l) => dup(made.listeners.get(l.listener)),
        FdKind::OpenFile(o) => dup(made.open_files.get(o.open_file)),
        kind => {
            let env = envs.get(f.holder).ok_or_else(einval)?;
            let one = open_file::OpenFile {
                holder: f.holder,
                flags: f.flags,
                kind: kind.clone(),
            };
            open_file::make_as(&one, env, (blobs, &made.memory, min))
        }
    }
}

/// One line for `ckpt inspect`.
pub fn describe(f: &InFlight, v: &View) -> String {
    let as_fd = Fd {
        fd: -1,
        flags: f.flags,
        kind: f.kind.clone(),
    };
    f.kind.state().describe(&as_fd, v)
}

/// The descriptors in flight are of the kinds carried, valid against the tree's objects and
/// sections; their holders are processes of the image.
pub fn validate(
    shared: &super::Shared,
    sections: &[Section],
    processes: usize,
) -> Result<(), String> {
    let v = View {
        fds: &[],
        shared,
        sections,
    };
    for (i, f) in shared.in_flight.iter().enumerate() {
        let as_fd = Fd {
            fd: 0,
            flags: f.flags,
            kind: f.kind.clone(),
        };
        if !carried(&f.kind) || f.holder >= processes || !f.kind.state().valid(&as_fd, &v) {
            return Err(format!("bad descriptor in flight #{i}"));
        }
    }
    Ok(())
}

/// The messages' descriptors in flight are entries of the table (`count` of them).
pub fn indices_valid(messages: &[unix::Message], count: usize) -> bool {
    messages.iter().flat_map(|m| &m.fds).all(|&i| i < count)
}
