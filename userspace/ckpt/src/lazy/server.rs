//! The page server of a lazy restore: a process forked by `ckpt restore --lazy` before the
//! tree, left running when ckpt exits (a grandchild, reparented away from ckpt), that places
//! every lazily restored page.
//!
//! ckpt sends it each process's userfaultfd as soon as the process's restore ioctl returns,
//! then "released" once the tree runs (or closes the channel: the restore failed, the tree is
//! dead, the server exits). Once released, it traces every thread of the tree with
//! PTRACE_O_EXITKILL: were it killed before the last page is in, the tree dies with it rather
//! than run on with zeros where its memory was (the kernel maps zeros on a fault once no
//! userfaultfd is left). Its stops are passed on untouched (signals re-delivered, group stops
//! kept with PTRACE_LISTEN). When nothing is pending it detaches and closes every userfaultfd.

use super::pending::{Pending, Piece};
use crate::errors::{restore_io, RestoreError};
use crate::image::mapped::MappedFile;
use crate::manifest::Process;
use crate::sys::uffd::{self, Event};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

const PAGE: u64 = 4096;
/// A fault brings its page and the rest of its run up to this: programs read memory in order
/// more often than not, and each fault is a round trip through the server.
const FAULT_READAHEAD: u64 = 256 << 10;
/// The background load goes this far between looks at the userfaultfds.
const PREFETCH_CHUNK: u64 = 1 << 20;
/// The "released" message's index.
const RELEASED: u32 = u32::MAX;
/// The server's name in ps (its command line stays `ckpt restore --lazy IMAGE`).
pub const SERVER_NAME: &std::ffi::CStr = c"ckpt-pages";

/// Per image of the chain, its path and the pages sections (offset, length, XXH64) still to
/// check.
pub type Unverified = Vec<(std::path::PathBuf, Vec<(u64, u64, u64)>)>;

/// A pages section being checked in the background.
struct Check {
    image: usize,
    offset: u64,
    len: u64,
    sum: u64,
    done: u64,
    hasher: xxhash_rust::xxh64::Xxh64,
}

/// How much of a section is checked between looks at the userfaultfds.
const CHECK_STEP: u64 = 1 << 20;

/// ckpt's end of the channel to the server.
pub struct Server {
    channel: OwnedFd,
}

impl Server {
    /// Forks the server, which keeps the pages' files (`pages`: per image of the chain, the
    /// file or its decompressed view) and nothing else of ckpt's. `unverified`: per image,
    /// its path and the pages sections whose checksums the server checks in the background.
    pub fn start(
        processes: &[Process],
        (pages, unverified): (&[&File], Unverified),
    ) -> Result<Server, RestoreError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| restore_io("a socket pair for the page server")(e.into()))?;
        let initial: Vec<Pending> = processes.iter().map(super::pending_of).collect();
        let keep: Vec<RawFd> = pages.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: ckpt is single-threaded here; the child only forks again or runs `serve`.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // The grandchild serves; ckpt reaps the child at once, so the server is
                // nobody's child of ckpt's (ckpt waits for all its children on a failure).
                // SAFETY: as above.
                if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                    let _ = nix::unistd::setsid();
                    let _ = nix::sys::prctl::set_name(SERVER_NAME);
                    drop(ours);
                    serve(theirs, initial, (&keep, unverified))
                }
                crate::sys::exit_now(0)
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let _ = crate::sys::waitpid(child.as_raw(), 0);
                Ok(Server { channel: ours })
            }
            Err(e) => Err(restore_io("forking the page server")(e.into())),
        }
    }

    /// Hands over process `index`'s userfaultfd (`pid`: its pid as we see it).
    pub fn add(&self, index: usize, pid: i32, uffd: OwnedFd) -> Result<(), RestoreError> {
        self.send(index as u32, pid, Some(uffd.as_raw_fd()))
    }

    /// The tree runs: the server traces it (from then on the tree dies with the server) and
    /// loads what is left. Returns once it traces the tree.
    pub fn release(self, pids: &[i32]) -> Result<(), RestoreError> {
        for &pid in pids {
            self.send(RELEASED - 1, pid, None)?;
        }
        self.send(RELEASED, 0, None)?;
        let mut ack = [0u8; 1];
        match nix::unistd::read(&self.channel, &mut ack) {
            Ok(1) => Ok(()),
            _ => Err(restore_io("the page server")(std::io::Error::other(
                "it ended before it took hold of the tree",
            ))),
        }
    }

    fn send(&self, index: u32, pid: i32, fd: Option<RawFd>) -> Result<(), RestoreError> {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&index.to_ne_bytes());
        msg[4..].copy_from_slice(&pid.to_ne_bytes());
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        let cmsgs = if fds.is_empty() { &[][..] } else { &rights[..] };
        let sent = sendmsg::<()>(
            self.channel.as_raw_fd(),
            &[IoSlice::new(&msg)],
            cmsgs,
            MsgFlags::empty(),
            None,
        );
        sent.map(drop)
            .map_err(|e| restore_io("talking to the page server (it died?)")(e.into()))
    }
}

/// An image (or decompressed view) file, by the fd ckpt left it at: the mapping outlives the
/// fd's number, which is never closed.
fn map_image(fd: RawFd) -> std::io::Result<MappedFile> {
    // SAFETY: `fd` is open (inherited from ckpt) and stays open: the `File` is never dropped.
    let f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    MappedFile::new(&f)
}

/// One address space served: a process of the tree, or a child it forked since.
struct Space {
    uffd: OwnedFd,
    pending: Pending,
    /// Faults whose page could not be placed yet (the address space was changing).
    retry: Vec<u64>,
}

struct State {
    spaces: Vec<Space>,
    images: Vec<MappedFile>,
    initial: Vec<Pending>,
    channel: Option<OwnedFd>,
    /// The tree's processes (pids as we see them), told before "released".
    pids: Vec<i32>,
    tracer: Option<super::tracer::Tracer>,
    checks: VecDeque<Check>,
    paths: Vec<std::path::PathBuf>,
    /// Load what no fault asked for in the background (CKPT_LAZY_PREFETCH=0: never, only
    /// on demand; for tests that need pages to stay absent).
    prefetch: bool,
}

fn serve(channel: OwnedFd, initial: Vec<Pending>, (keep, unverified): (&[RawFd], Unverified)) -> ! {
    close_all_but(channel.as_raw_fd(), keep);
    let images = match keep.iter().map(|&fd| map_image(fd)).collect() {
        Ok(m) => m,
        Err(e) => fatal("mapping the image", e),
    };
    let (paths, checks) = checks_of(unverified);
    let mut st = State {
        spaces: Vec::new(),
        images,
        initial,
        channel: Some(channel),
        pids: Vec::new(),
        tracer: None,
        checks,
        paths,
        prefetch: std::env::var_os("CKPT_LAZY_PREFETCH").is_none_or(|v| v != "0"),
    };
    loop {
        let released = st.tracer.is_some();
        let pending = st.spaces.iter().any(|s| !s.pending.is_empty());
        if released && !pending && st.checks.is_empty() {
            finish(st)
        }
        let checking = released && !st.checks.is_empty();
        // Once the traced tree is gone, loading (even with background loading off) finds the
        // address spaces left without a process (ESRCH) and drops them: the server ends
        // instead of holding the image for pages nobody will ask for.
        let tree_gone = st.tracer.as_ref().is_some_and(|t| t.tree_gone());
        let loading = released && pending && (st.prefetch || tree_gone) && !checking;
        wait_for_work(&st, checking || loading);
        read_channel(&mut st);
        for i in 0..st.spaces.len() {
            handle_events(&mut st, i);
        }
        if let Some(t) = st.tracer.as_mut() {
            t.pass_on_stops();
        }
        if checking {
            check_step(&mut st);
        } else if loading {
            prefetch(&mut st);
        }
    }
}

/// The images' paths, and a check per pages section left unchecked.
fn checks_of(unverified: Unverified) -> (Vec<std::path::PathBuf>, VecDeque<Check>) {
    let mut checks = VecDeque::new();
    let mut paths = Vec::new();
    for (image, (path, sections)) in unverified.into_iter().enumerate() {
        paths.push(path);
        checks.extend(sections.into_iter().map(|(offset, len, sum)| Check {
            image,
            offset,
            len,
            sum,
            done: 0,
            hasher: xxhash_rust::xxh64::Xxh64::new(0),
        }));
    }
    (paths, checks)
}

/// Checks the next piece of the pages sections left unchecked (first of all, once the tree
/// runs); a mismatch ends the server, and the tree with it (PTRACE_O_EXITKILL): it may have
/// been given a damaged page already.
fn check_step(st: &mut State) {
    let Some(c) = st.checks.front_mut() else {
        return;
    };
    let n = (c.len - c.done).min(CHECK_STEP);
    let bytes = st
        .images
        .get(c.image)
        .and_then(|m| m.bytes(c.offset + c.done, n));
    let path = st.paths.get(c.image).map(|p| p.display().to_string());
    let path = path.unwrap_or_default();
    let Some(bytes) = bytes else {
        fatal(
            &path,
            "a pages section lies outside the file; the restored tree is killed",
        )
    };
    c.hasher.update(bytes);
    c.done += n;
    if c.done == c.len {
        if c.hasher.digest() != c.sum {
            let what = format!(
                "the pages section at offset {} does not match its checksum (the image is \
                 damaged); the restored tree is killed",
                c.offset
            );
            fatal(&path, what)
        }
        st.checks.pop_front();
    }
}

/// Blocks until a userfaultfd, the channel or the tracer has something (not at all while
/// there is background work to do: `busy`).
fn wait_for_work(st: &State, busy: bool) {
    let mut fds: Vec<PollFd> = st
        .spaces
        .iter()
        .map(|s| PollFd::new(s.uffd.as_fd(), PollFlags::POLLIN))
        .collect();
    if let Some(c) = &st.channel {
        fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
    }
    if let Some(t) = &st.tracer {
        fds.push(PollFd::new(t.signals(), PollFlags::POLLIN));
    }
    let timeout = if busy { 0u16 } else { 1000 };
    let _ = poll(&mut fds, PollTimeout::from(timeout));
}

fn read_channel(st: &mut State) {
    let Some(channel) = &st.channel else { return };
    let mut msg = [0u8; 8];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut msg)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let got = match recvmsg::<()>(channel.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
        Ok(got) => got,
        Err(nix::errno::Errno::EAGAIN) => return,
        Err(e) => fatal("reading from ckpt", e),
    };
    let mut fds = Vec::new();
    if let Ok(cmsgs) = got.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: installed for us by this recvmsg.
                fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    if got.bytes == 0 {
        // ckpt ended before the tree ran: the restore failed and the tree is dead.
        sys_exit(1);
    }
    let index = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let pid = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
    match (index, fds.pop()) {
        (RELEASED, _) => {
            st.tracer = Some(super::tracer::Tracer::seize(&st.pids));
            // ckpt waits for this before it says the tree is restored.
            let _ = nix::unistd::write(channel, b"!");
            st.channel = None;
        }
        (i, None) if i == RELEASED - 1 => st.pids.push(pid),
        (i, Some(uffd)) => {
            let pending = st.initial.get_mut(i as usize).map(std::mem::take);
            st.spaces.push(Space {
                uffd,
                pending: pending.unwrap_or_default(),
                retry: Vec::new(),
            });
        }
        _ => {}
    }
}

fn handle_events(st: &mut State, i: usize) {
    let events = match uffd::read_events(st.spaces[i].uffd.as_fd()) {
        Ok(ev) => ev,
        Err(e) => {
            eprintln!("ckpt page server: reading a userfaultfd: {e}");
            Vec::new()
        }
    };
    let retry = std::mem::take(&mut st.spaces[i].retry);
    for ev in events {
        match ev {
            Event::Fault { addr } => serve_fault(st, i, addr & !(PAGE - 1)),
            Event::Fork { uffd } => {
                // The child's absent pages are the parent's.
                let pending = st.spaces[i].pending.clone();
                st.spaces.push(Space {
                    // SAFETY: the kernel installed this fd in our table with the message.
                    uffd: unsafe { OwnedFd::from_raw_fd(uffd) },
                    pending,
                    retry: Vec::new(),
                });
            }
            Event::Remap { from, to, len } => st.spaces[i].pending.moved(from, to, len),
            Event::Removed { start, end } => st.spaces[i].pending.remove(start, end),
            Event::Other(_) => {}
        }
    }
    for addr in retry {
        serve_fault(st, i, addr);
    }
}

/// Places the page at `addr` (and what follows it in its run), or zeros if the image has
/// nothing there (never stored, or dropped by the program since).
fn serve_fault(st: &mut State, i: usize, addr: u64) {
    let (images, space) = (&st.images, &mut st.spaces[i]);
    match space.pending.take_at(addr, FAULT_READAHEAD) {
        Some(piece) => {
            if place(space, piece, images) == Placed::Again {
                space.retry.push(addr);
            }
        }
        None => {
            let fd = space.uffd.as_fd();
            match uffd::zeropage(fd, addr, PAGE) {
                Err(p) if p.error.raw_os_error() == Some(libc::EEXIST) => {
                    let _ = uffd::wake(fd, addr, PAGE);
                }
                Err(p) if p.error.raw_os_error() == Some(libc::EAGAIN) => space.retry.push(addr),
                _ => {}
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Placed {
    Done,
    /// The address space is changing (an event to read first): the rest is pending again.
    Again,
}

fn place(space: &mut Space, piece: Piece, images: &[MappedFile]) -> Placed {
    let Some(src) = images
        .get(piece.image)
        .and_then(|m| m.bytes(piece.offset, piece.len))
    else {
        eprintln!(
            "ckpt page server: page run at {:#x} is outside its image",
            piece.addr
        );
        return Placed::Done;
    };
    let mut done = 0u64;
    while done < piece.len {
        let Err(p) = uffd::copy(space.uffd.as_fd(), piece.addr + done, &src[done as usize..])
        else {
            return Placed::Done;
        };
        done += p.done;
        match p.error.raw_os_error() {
            // A page the program has already (it was placed, or written after a zero page).
            Some(libc::EEXIST) => done += PAGE,
            Some(libc::EAGAIN) => {
                space.pending.insert(Piece {
                    addr: piece.addr + done,
                    len: piece.len - done,
                    image: piece.image,
                    offset: piece.offset + done,
                });
                return Placed::Again;
            }
            // The address space is gone (the process exited).
            Some(libc::ESRCH) => {
                space.pending = Pending::default();
                return Placed::Done;
            }
            // The mapping went away meanwhile: its event follows.
            Some(libc::ENOENT) => return Placed::Done,
            _ => {
                eprintln!(
                    "ckpt page server: placing {:#x}+{:#x}: {}",
                    piece.addr, piece.len, p.error
                );
                return Placed::Done;
            }
        }
    }
    Placed::Done
}

/// Loads the next piece of the first address space with pages pending.
fn prefetch(st: &mut State) {
    let images = &st.images;
    if let Some(space) = st.spaces.iter_mut().find(|s| !s.pending.is_empty()) {
        if let Some(piece) = space.pending.take_first(PREFETCH_CHUNK) {
            place(space, piece, images);
        }
    }
}

/// Every page is in: lets go of the tree and exits.
fn finish(st: State) -> ! {
    if let Some(t) = st.tracer {
        t.detach_all();
    }
    // Closing the userfaultfds unregisters every range: faults are ordinary again.
    drop(st.spaces);
    sys_exit(0)
}

fn close_all_but(channel: RawFd, keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let open: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && fd != channel && !keep.contains(&fd) {
            // SAFETY: closes an fd inherited from ckpt that nothing here uses.
            unsafe { libc::close(fd) };
        }
    }
    // Not the program's input or output: only errors are said, on ckpt's stderr.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = crate::sys::dup2(null.as_raw_fd(), 0);
        let _ = crate::sys::dup2(null.as_raw_fd(), 1);
    }
}

pub(super) fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("ckpt page server: {what}: {e}");
    sys_exit(1)
}

fn sys_exit(code: i32) -> ! {
    crate::sys::exit_now(code)
}
