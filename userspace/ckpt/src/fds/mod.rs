//! Open file descriptors: one module per kind, each with its saved state, its dump and its
//! restore side by side (like CRIU's files-reg.c / pipes.c / sk-unix.c).
//!
//! Adding a kind: a module whose state type implements [`FdState`] and which has a `dump`
//! function of type [`Dumper`]; then one variant in [`FdKind`], one line in
//! [`FdKind::state`] and one line in [`DUMPERS`].
//!
//! Checkpoint: every fd of the target is offered to the dumpers in order; the first that
//! recognises it records it (objects several fds share, such as a pipe, are recorded once in
//! the tree's [`Shared`] table; so is an open file description several fds share, see
//! `open_file`). Restore runs in the restorer child, which has closed everything but its
//! working fds (all above every fd of the image): each fd is made and moved to its number;
//! the kinds that refer to other fds (epoll) come last; close-on-exec is set at the end.

mod deleted;
mod epoll;
mod eventfd;
mod fanotify;
mod fifo;
mod file;
pub mod in_flight;
mod inotify;
mod listen;
pub mod locks;
mod memfd;
mod netlink;
mod notify;
mod open_file;
mod packet;
mod peercred;
mod pipe;
pub mod pty;
pub mod pty_data;
mod shared;
mod signalfd;
mod socket;
mod socket_pair;
mod stdio;
pub mod tcp;
mod tcp_closed;
mod timerfd;
pub mod udp;
mod unix;
mod unix_dgram;
mod unix_external;

pub use deleted::DeletedFile;
pub use epoll::{Epoll, EpollWatch};
pub use eventfd::EventFd;
pub use fanotify::{Fanotify, FanotifyMark, MarkOn};
pub use fifo::{Fifo, FifoEnd};
pub use file::PathFile;
pub use in_flight::InFlight;
pub use inotify::{Inotify, InotifyWatch};
pub use listen::{HolderEnv, ListenEnd, ListeningSocket, SharedListener};
pub use locks::{FileLock, LockKind};
pub use memfd::MemfdFd;
pub use netlink::NetlinkSocket;
pub use notify::Watched;
pub use open_file::{validate_watches as validate_shared_watches, OpenFile, OpenFileEnd};
pub use packet::MARK as PACKET_MARK;
pub use peercred::PeerCred;
pub use pipe::{Pipe, PipeEnd};
pub use pty::{Ctty, Pty, PtyEnd, PtyFds};
pub use shared::{Census, Shared, SharedDump, SharedFds};
pub use signalfd::SignalFd;
pub use socket_pair::{EndState, SocketPair, SocketPairEnd};
pub use stdio::InheritedStdio;
pub use tcp::{TcpConnection, TcpEnd};
pub use tcp_closed::{ClosedTcp, TcpClosedEnd};
pub use timerfd::TimerFd;
pub use udp::{Datagram, UdpEnd, UdpSocket};
pub use unix::{Message, Name, SockFile, UnixOpts, UnixType};
pub use unix_dgram::{DgramEnd, DgramSocket};
pub use unix_external::{ExternalEnd, ExternalSocket, Reconnect};

use crate::image::{ImageWriter, Section};
use crate::proc::FdEntry;
use crate::shmem::{ShmDump, ShmObject};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    /// open(2) flags as /proc/PID/fdinfo shows them.
    pub flags: u32,
    pub kind: FdKind,
}

/// Every kind of descriptor ckpt carries. The names are the image format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FdKind {
    Path(PathFile),
    InheritStdio(InheritedStdio),
    Pipe(PipeEnd),
    Listen(ListenEnd),
    EventFd(EventFd),
    SignalFd(SignalFd),
    TimerFd(TimerFd),
    Epoll(Epoll),
    SocketPairEnd(SocketPairEnd),
    UnixDgram(DgramEnd),
    UnixExternal(ExternalEnd),
    Deleted(DeletedFile),
    Memfd(MemfdFd),
    Pty(PtyEnd),
    Tcp(TcpEnd),
    Inotify(Inotify),
    Fanotify(Fanotify),
    Fifo(FifoEnd),
    Udp(UdpEnd),
    TcpClosed(TcpClosedEnd),
    OpenFile(OpenFileEnd),
    Netlink(NetlinkSocket),
}

impl FdKind {
    /// The kind's behaviour: the registry's one match.
    pub fn state(&self) -> &dyn FdState {
        match self {
            FdKind::Path(s) => s,
            FdKind::InheritStdio(s) => s,
            FdKind::Pipe(s) => s,
            FdKind::Listen(s) => s,
            FdKind::EventFd(s) => s,
            FdKind::SignalFd(s) => s,
            FdKind::TimerFd(s) => s,
            FdKind::Epoll(s) => s,
            FdKind::SocketPairEnd(s) => s,
            FdKind::UnixDgram(s) => s,
            FdKind::UnixExternal(s) => s,
            FdKind::Deleted(s) => s,
            FdKind::Memfd(s) => s,
            FdKind::Pty(s) => s,
            FdKind::Tcp(s) => s,
            FdKind::Inotify(s) => s,
            FdKind::Fanotify(s) => s,
            FdKind::Fifo(s) => s,
            FdKind::Udp(s) => s,
            FdKind::TcpClosed(s) => s,
            FdKind::OpenFile(s) => s,
            FdKind::Netlink(s) => s,
        }
    }

    /// The kinds whose object can be made apart from placing it (so once, by ckpt, for an
    /// open file description several fds share). The others are one object of the tree
    /// already (pipes, sockets, ptys, FIFOs), or made by their process only.
    pub fn maker(&self) -> Option<&dyn Make> {
        match self {
            FdKind::Path(s) => Some(s),
            FdKind::Deleted(s) => Some(s),
            FdKind::Memfd(s) => Some(s),
            FdKind::EventFd(s) => Some(s),
            FdKind::TimerFd(s) => Some(s),
            FdKind::SignalFd(s) => Some(s),
            FdKind::Epoll(s) => Some(s),
            FdKind::Netlink(s) => Some(s),
            _ => None,
        }
    }

    /// The section a restore of it reads (a deleted file's content).
    fn blob_section(&self) -> Option<usize> {
        match self {
            FdKind::Deleted(d) => Some(d.data_section),
            _ => None,
        }
    }
}

/// The dumpers, tried in this order on each fd; the first to return a kind records it.
/// Stdio to the outside comes first (it may be a pipe or a socket); plain paths last.
pub const DUMPERS: &[Dumper] = &[
    stdio::dump,
    pty::dump,
    socket::dump,
    pipe::dump,
    memfd::dump,
    deleted::dump,
    epoll::dump,
    eventfd::dump,
    timerfd::dump,
    signalfd::dump,
    inotify::dump,
    fanotify::dump,
    fifo::dump,
    file::dump,
];

/// A process's descriptors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdTable {
    pub fds: Vec<Fd>,
    /// The file locks the process takes again, each through one of its fds (a lock its open
    /// file description shares with an earlier process of the image is that process's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<FileLock>,
}

/// What a kind's checks and description see: the process's fds, the tree's shared objects,
/// the image's sections.
pub struct View<'a> {
    pub fds: &'a [Fd],
    pub shared: &'a Shared,
    pub sections: &'a [Section],
}

/// What each kind of saved descriptor does.
pub trait FdState {
    /// What it is, for messages ("the eventfd").
    fn what(&self) -> &'static str;
    /// In the restorer: makes the descriptor and puts it at `f.fd` (see [`place`]).
    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()>;
    /// Restored after every other kind (it refers to other fds).
    fn after_others(&self) -> bool {
        false
    }
    /// Whether the state makes sense within its process, the tree and the image's sections
    /// (image data is never trusted).
    fn valid(&self, _f: &Fd, _v: &View) -> bool {
        true
    }
    /// One line for `ckpt inspect`.
    fn describe(&self, f: &Fd, v: &View) -> String;
}

/// A kind whose object is made apart from being placed at its number.
pub trait Make {
    /// A new object like the recorded one, open with `flags` (open(2) flags as fdinfo showed
    /// them), not placed anywhere yet.
    fn make(&self, flags: u32, ctx: &MakeCtx) -> io::Result<OwnedFd>;
}

/// What making an object needs, in ckpt before the restorers fork or in a restorer.
pub struct MakeCtx<'a> {
    /// Section contents by index (a deleted file's).
    pub blobs: &'a Blobs,
    /// The tree's shared memory objects, made (a memfd's fd is opened on its object).
    pub memory: &'a [OwnedFd],
    /// Temporary fds go at or above this number, clear of every fd of the image.
    pub scratch: RawFd,
    pub reopen: Reopen<'a>,
}

impl MakeCtx<'_> {
    /// A saved section's bytes (empty if it was not read: the image was validated).
    pub fn blob(&self, section: usize) -> &[u8] {
        self.blobs.get(&section).map_or(&[], Vec::as_slice)
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

/// Why an fd could not be recorded.
#[derive(Debug)]
pub enum DumpError {
    /// The kind (or this instance of it) cannot be carried; the text says why.
    Unsupported(String),
    /// Reading its state failed.
    Io { what: String, source: io::Error },
    /// Writing its data into the image failed.
    Image(io::Error),
}

pub(crate) fn unsupported(why: impl Into<String>) -> DumpError {
    DumpError::Unsupported(why.into())
}

pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> DumpError {
    let what = what.into();
    move |source| DumpError::Io { what, source }
}

/// Records `e` if it is of the dumper's kind; `Ok(None)` leaves it to the next dumper.
pub type Dumper = fn(&mut DumpCtx, &FdEntry) -> DumpResult;
pub type DumpResult = Result<Option<FdKind>, DumpError>;

/// The state of one process's fd dump.
pub struct DumpCtx<'a> {
    pub pid: i32,
    /// Its index in the image's processes.
    pub process: usize,
    pub image: &'a mut ImageWriter,
    pub shared: &'a mut SharedDump,
}

/// The controlling terminal of the session process `pid` leads (its `stat`), if it is a pty
/// of the tree.
pub fn controlling_terminal(st: &crate::proc::Stat, pid: i32, shared: &SharedDump) -> Option<Ctty> {
    let index = pty::slave_index(st.tty_nr).filter(|_| st.sid == pid)?;
    Some(Ctty {
        pty: *shared.pty_index.get(&index)?,
        foreground: st.tpgid,
    })
}

/// Records every descriptor of `pid` (its `entries`, from /proc), writing the data some kinds
/// hold (unread pipe bytes, deleted files) into `image`; objects shared in the tree go to
/// `shared`. On error, the fd that failed.
pub fn dump(
    (pid, process): (i32, usize),
    entries: &[FdEntry],
    image: &mut ImageWriter,
    shared: &mut SharedDump,
) -> Result<FdTable, (i32, String, DumpError)> {
    let mut ctx = DumpCtx {
        pid,
        process,
        image,
        shared,
    };
    let mut table = FdTable::default();
    for e in entries {
        let kind = dump_one(&mut ctx, e).map_err(|err| (e.fd, e.target.clone(), err))?;
        locks::dump(&mut ctx, e, &kind, &mut table.locks)
            .map_err(|err| (e.fd, e.target.clone(), err))?;
        table.fds.push(Fd {
            fd: e.fd,
            flags: e.flags,
            kind,
        });
    }
    Ok(table)
}

fn dump_one(ctx: &mut DumpCtx, e: &FdEntry) -> Result<FdKind, DumpError> {
    match ctx.shared.census.descriptions.of(ctx.pid, e.fd) {
        Some(description) => open_file::dump(ctx, e, description),
        None => dump_alone(ctx, e),
    }
}

/// Records `e` as an fd of its own: the first dumper that knows its kind.
fn dump_alone(ctx: &mut DumpCtx, e: &FdEntry) -> Result<FdKind, DumpError> {
    for dumper in DUMPERS {
        if let Some(kind) = dumper(ctx, e)? {
            return Ok(kind);
        }
    }
    Err(unsupported(
        "pipes, sockets and other special files are not supported yet",
    ))
}

/// Processes outside `tree` holding the `kind` ("pipe", "socket") with inode `ino` (pid and
/// name), by a scan of every /proc/PID/fd.
pub(crate) fn holders_outside(kind: &str, ino: u64, tree: &BTreeSet<i32>) -> Vec<String> {
    let target = format!("{kind}:[{ino}]");
    let Ok(all) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids = all.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|p| !tree.contains(p))
        .filter(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|f| {
                    std::fs::read_link(f.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
                })
            })
        })
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!("{p} ({})", comm.trim())
        })
        .collect()
}

/// A numeric field of the fd's /proc fdinfo, in `radix`.
pub(crate) fn fdinfo_number(pid: i32, fd: i32, name: &str, radix: u32) -> Option<u64> {
    crate::proc::fdinfo_field(pid, fd, name)
        .ok()
        .and_then(|v| u64::from_str_radix(&v, radix).ok())
}

// ---------------------------------------------------------------------------------------------
// Restore

/// Section contents read before the restorer forks, by section index.
pub type Blobs = BTreeMap<usize, Vec<u8>>;

/// The sections a process's fds need in its restorer (deleted files' content).
pub fn blob_sections(table: &FdTable) -> Vec<usize> {
    table
        .fds
        .iter()
        .filter_map(|f| f.kind.blob_section())
        .collect()
}

/// Opens an existing file as the restored process would (its user, with a fallback for files
/// a daemon opened before dropping privileges).
pub type Reopen<'a> = &'a dyn Fn(&Path, OFlag) -> io::Result<OwnedFd>;

/// Root's filesystem identity while the returned guard lives.
pub type AsRoot<'a> = &'a dyn Fn() -> io::Result<Box<dyn std::any::Any>>;

/// Opens `path` with the caller's filesystem identity, which is the restored process's user
/// when `as_user`; where that user may not (a daemon opened the file before dropping its
/// privileges), as root.
pub fn reopen_as_user(path: &Path, flags: OFlag, as_user: bool) -> io::Result<OwnedFd> {
    let open = || nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty());
    match open() {
        Err(nix::Error::EACCES | nix::Error::EPERM) if as_user => {
            let _root = crate::creds::as_fs_user(0, 0, &[])?;
            Ok(open()?)
        }
        r => Ok(r?),
    }
}

/// The state of one process's fd restore, in the restorer.
pub struct RestoreCtx<'a> {
    /// The process's index in the image.
    pub process: usize,
    pub table: &'a FdTable,
    pub shared: &'a SharedFds,
    pub blobs: &'a Blobs,
    /// Temporary fds go at or above this number, clear of every fd of the image.
    pub scratch: RawFd,
    pub reopen: Reopen<'a>,
    /// Gives the restorer root's filesystem identity until the guard is dropped (for what the
    /// process's user may not reach, as `reopen` does).
    pub as_root: AsRoot<'a>,
}

impl RestoreCtx<'_> {
    /// A saved section's bytes (empty if it was not read: the image was validated).
    pub fn blob(&self, section: Option<usize>) -> &[u8] {
        section
            .and_then(|i| self.blobs.get(&i))
            .map_or(&[], Vec::as_slice)
    }

    /// What the kinds' `make` needs, from the restorer's context.
    pub fn making(&self) -> MakeCtx<'_> {
        MakeCtx {
            blobs: self.blobs,
            memory: &self.shared.memory,
            scratch: self.scratch,
            reopen: self.reopen,
        }
    }
}

/// Restores every fd of `table` in the restorer. On error, what failed.
pub fn restore(mut ctx: RestoreCtx) -> Result<(), (String, io::Error)> {
    let table = ctx.table;
    for last in [false, true] {
        for f in table
            .fds
            .iter()
            .filter(|f| f.kind.state().after_others() == last)
        {
            let s = f.kind.state();
            s.restore(f, &mut ctx)
                .map_err(|e| (format!("recreating {} of fd {}", s.what(), f.fd), e))?;
        }
    }
    // Once every fd is placed: what the process adds to the epoll instances it shares.
    open_file::add_watches(&ctx)?;
    // Close-on-exec as it was (dup2 cleared it on every fd placed that way).
    for f in table.fds.iter() {
        if !matches!(f.kind, FdKind::InheritStdio(_)) {
            let on = f.flags as i32 & libc::O_CLOEXEC != 0;
            let flag = if on {
                FdFlag::FD_CLOEXEC
            } else {
                FdFlag::empty()
            };
            fcntl(placed(f.fd), FcntlArg::F_SETFD(flag))
                .map_err(|e| (format!("setting close-on-exec on fd {}", f.fd), e.into()))?;
        }
    }
    Ok(())
}

/// The status flags a restored fd gets back: those F_SETFL can set (the access mode was given
/// to open).
fn status_flags(f: &Fd) -> OFlag {
    settable_flags(f.flags)
}

/// Of open(2) flags `flags`, those F_SETFL can set.
fn settable_flags(flags: u32) -> OFlag {
    let settable =
        libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME | libc::O_NONBLOCK;
    OFlag::from_bits_retain(flags as i32 & settable)
}

/// Moves a newly made descriptor to `f.fd` with the status flags it had.
pub fn place(made: OwnedFd, f: &Fd) -> io::Result<()> {
    fcntl(&made, FcntlArg::F_SETFL(status_flags(f)))?;
    if made.as_raw_fd() == f.fd {
        let _ = made.into_raw_fd(); // it is the process's now
        return Ok(());
    }
    place_copy(&made, f)
}

/// Makes `f.fd` another descriptor of `of` (one end of a shared object), with `f`'s status
/// flags (they belong to the open file, so the last fd placed decides, as it was).
pub fn place_copy(of: &OwnedFd, f: &Fd) -> io::Result<()> {
    fcntl(of, FcntlArg::F_SETFL(status_flags(f)))?;
    // `f.fd` is a number of the image's table. The restorer closed every fd below its working
    // range before restoring fds, and working and temporary fds sit above every fd of the
    // image: nothing of ours owns that number, so replacing it closes nothing in use. It is
    // the process's from now on (never closed here).
    crate::sys::dup2(of.as_raw_fd(), f.fd)
}

/// A descriptor of the process being restored, once placed at its number (or inherited
/// stdio, which the restorer kept).
pub fn placed(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only called for numbers of the image's table once they exist (placed, or
    // inherited stdio); such fds are the restored process's and stay open for the rest of the
    // restorer's life.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// `fd` moved to a number at or above `min` (the original is closed).
pub fn above(fd: OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= min {
        return Ok(fd);
    }
    let n = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Writes all of `data` to `fd`.
pub fn write_all(fd: impl AsFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = nix::unistd::write(fd.as_fd(), data)?;
        data = &data[n..];
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checks and views

impl FdTable {
    /// Checks every fd against the process's table, the tree's shared objects and the
    /// sections.
    pub fn validate(&self, shared: &Shared, sections: &[Section]) -> Result<(), String> {
        let v = View {
            fds: &self.fds,
            shared,
            sections,
        };
        for f in &self.fds {
            if f.fd < 0 || !f.kind.state().valid(f, &v) {
                return Err(format!("bad fd {}", f.fd));
            }
        }
        locks::validate(&self.locks, &self.fds)
    }

    /// One line per fd, for `ckpt inspect`.
    pub fn describe(&self, shared: &Shared, sections: &[Section]) -> Vec<(i32, String)> {
        let v = View {
            fds: &self.fds,
            shared,
            sections,
        };
        self.fds
            .iter()
            .map(|f| {
                let mut line = f.kind.state().describe(f, &v);
                for l in self.locks.iter().filter(|l| l.fd == f.fd) {
                    line += &format!(", holds a {}", l.describe());
                }
                (f.fd, line)
            })
            .collect()
    }
}
