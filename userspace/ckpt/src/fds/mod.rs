//! Open file descriptors: one module per kind, each with its saved state, its dump and its
//! restore side by side (like CRIU's files-reg.c / pipes.c / sk-unix.c).
//!
//! Adding a kind: a module whose state type implements [`FdState`] and which has a `dump`
//! function of type [`Dumper`]; then one variant in [`FdKind`], one line in
//! [`FdKind::state`] and one line in [`DUMPERS`].
//!
//! Checkpoint: every fd of the target is offered to the dumpers in order; the first that
//! recognises it records it (objects several fds share, such as a pipe, are recorded once in
//! the [`FdTable`]). Restore runs in the restorer child, which has closed everything but its
//! working fds (all above every fd of the image): each fd is made and moved to its number;
//! the kinds that refer to other fds (epoll) come last; close-on-exec is set at the end.

mod deleted;
mod epoll;
mod eventfd;
mod file;
mod listen;
mod pipe;
mod signalfd;
mod socket;
mod socket_pair;
mod stdio;
mod timerfd;

pub use deleted::DeletedFile;
pub use epoll::{Epoll, EpollWatch};
pub use eventfd::EventFd;
pub use file::PathFile;
pub use listen::ListeningSocket;
pub use pipe::{Pipe, PipeEnd};
pub use signalfd::SignalFd;
pub use socket_pair::{SocketPair, SocketPairEnd};
pub use stdio::InheritedStdio;
pub use timerfd::TimerFd;

use crate::image::{ImageWriter, Section};
use crate::proc::FdEntry;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    Listen(ListeningSocket),
    EventFd(EventFd),
    SignalFd(SignalFd),
    TimerFd(TimerFd),
    Epoll(Epoll),
    SocketPairEnd(SocketPairEnd),
    Deleted(DeletedFile),
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
            FdKind::Deleted(s) => s,
        }
    }
}

/// The dumpers, tried in this order on each fd; the first to return a kind records it.
/// Stdio to the outside comes first (it may be a pipe or a socket); plain paths last.
pub const DUMPERS: &[Dumper] = &[
    stdio::dump,
    socket::dump,
    pipe::dump,
    deleted::dump,
    epoll::dump,
    eventfd::dump,
    timerfd::dump,
    signalfd::dump,
    file::dump,
];

/// A process's descriptors and the kernel objects several of them share.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdTable {
    pub fds: Vec<Fd>,
    /// Pipes with both ends in the process.
    #[serde(default)]
    pub pipes: Vec<Pipe>,
    /// UNIX stream socket pairs with both ends in the process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_pairs: Vec<SocketPair>,
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
    /// Whether the state makes sense within its table and the image's sections (image data
    /// is never trusted).
    fn valid(&self, _f: &Fd, _table: &FdTable, _sections: &[Section]) -> bool {
        true
    }
    /// One line for `ckpt inspect`.
    fn describe(&self, f: &Fd, table: &FdTable, sections: &[Section]) -> String;
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
    /// Every fd of the process (a pipe is inside when both its ends are among them).
    pub entries: &'a [FdEntry],
    pub image: &'a mut ImageWriter,
    /// The table being built: pipes and socket pairs are added as their first fd is seen.
    pub table: FdTable,
    /// The kernel object's inode -> its index in the table's pipes or socket pairs.
    pub pipe_index: BTreeMap<u64, usize>,
    pub pair_index: BTreeMap<u64, usize>,
}

/// Records every descriptor of `pid` (its `entries`, from /proc), writing the data some kinds
/// hold (unread pipe bytes, deleted files) into `image`. On error, the fd that failed.
pub fn dump(
    pid: i32,
    entries: &[FdEntry],
    image: &mut ImageWriter,
) -> Result<FdTable, (i32, String, DumpError)> {
    let mut ctx = DumpCtx {
        pid,
        entries,
        image,
        table: FdTable::default(),
        pipe_index: BTreeMap::new(),
        pair_index: BTreeMap::new(),
    };
    for e in entries {
        let kind = dump_one(&mut ctx, e).map_err(|err| (e.fd, e.target.clone(), err))?;
        ctx.table.fds.push(Fd {
            fd: e.fd,
            flags: e.flags,
            kind,
        });
    }
    Ok(ctx.table)
}

fn dump_one(ctx: &mut DumpCtx, e: &FdEntry) -> Result<FdKind, DumpError> {
    for dumper in DUMPERS {
        if let Some(kind) = dumper(ctx, e)? {
            return Ok(kind);
        }
    }
    Err(unsupported(
        "pipes, sockets and other special files are not supported yet",
    ))
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

/// The sections `table` refers to, to be read before the fork.
pub fn blob_sections(table: &FdTable) -> Vec<usize> {
    let mut v: Vec<usize> = table.pipes.iter().filter_map(|p| p.data_section).collect();
    v.extend(
        table
            .socket_pairs
            .iter()
            .flat_map(|s| s.data_sections.iter().flatten()),
    );
    v.extend(table.fds.iter().filter_map(|f| match &f.kind {
        FdKind::Deleted(d) => Some(d.data_section),
        _ => None,
    }));
    v
}

/// Opens an existing file as the restored process would (its user, with a fallback for files
/// a daemon opened before dropping privileges).
pub type Reopen<'a> = &'a dyn Fn(&Path, OFlag) -> io::Result<OwnedFd>;

/// The state of one process's fd restore, in the restorer.
pub struct RestoreCtx<'a> {
    pub table: &'a FdTable,
    pub blobs: &'a Blobs,
    /// Temporary fds go at or above this number, clear of every fd of the image.
    pub scratch: RawFd,
    pub reopen: Reopen<'a>,
    /// The ends of shared objects made so far (a pipe, a socket pair), by (kind, index);
    /// closed when the restore of the table is over.
    shared: BTreeMap<(&'static str, usize), [OwnedFd; 2]>,
}

impl<'a> RestoreCtx<'a> {
    pub fn new(table: &'a FdTable, blobs: &'a Blobs, scratch: RawFd, reopen: Reopen<'a>) -> Self {
        RestoreCtx {
            table,
            blobs,
            scratch,
            reopen,
            shared: BTreeMap::new(),
        }
    }

    /// A saved section's bytes (empty if it was not read: the image was validated).
    pub fn blob(&self, section: Option<usize>) -> &[u8] {
        section
            .and_then(|i| self.blobs.get(&i))
            .map_or(&[], Vec::as_slice)
    }

    /// The two ends of shared object `key`, made by `make` the first time.
    pub fn shared_ends(
        &mut self,
        key: (&'static str, usize),
        make: impl FnOnce(&Self) -> io::Result<[OwnedFd; 2]>,
    ) -> io::Result<&[OwnedFd; 2]> {
        if !self.shared.contains_key(&key) {
            let [a, b] = make(self)?;
            let ends = [above(a, self.scratch)?, above(b, self.scratch)?];
            self.shared.insert(key, ends);
        }
        self.shared
            .get(&key)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
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
    drop(ctx);
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
    let settable =
        libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME | libc::O_NONBLOCK;
    OFlag::from_bits_retain(f.flags as i32 & settable)
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
    /// Checks every fd against the table and the sections.
    pub fn validate(&self, sections: &[Section]) -> Result<(), String> {
        pipe::validate(&self.pipes, sections)?;
        socket_pair::validate(&self.socket_pairs, sections)?;
        for f in &self.fds {
            if f.fd < 0 || !f.kind.state().valid(f, self, sections) {
                return Err(format!("bad fd {}", f.fd));
            }
        }
        Ok(())
    }

    /// One line per fd, for `ckpt inspect`.
    pub fn describe(&self, sections: &[Section]) -> Vec<(i32, String)> {
        self.fds
            .iter()
            .map(|f| (f.fd, f.kind.state().describe(f, self, sections)))
            .collect()
    }
}
