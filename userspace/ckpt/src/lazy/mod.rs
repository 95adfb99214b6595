//! `ckpt restore --lazy`: the program runs before its memory is back; its private anonymous
//! pages arrive when it touches them, and in the background until all are in (docs/design.md,
//! "Lazy restore").
//!
//! - The module maps every mapping but copies no page of the lazy ones (`is_lazy`): those are
//!   left out of the runs it gets (`crate::memory::plan`).
//! - Right after its restore ioctl, before anything reads or writes its memory, each process
//!   makes a userfaultfd (an injected syscall: the fd is its address space's), which ckpt takes
//!   (pidfd_getfd) and closes in it; ckpt registers the lazy mappings in missing mode and
//!   hands the fd to the page server (`server`). From then on a fault on an absent page,
//!   ckpt's own /proc/PID/mem accesses included, waits for the server.
//! - The server, a process of its own that outlives `ckpt restore`, serves faults from the
//!   image (the faulting page and the rest of its run, up to 256 KiB), follows the program's
//!   forks, munmaps, madvises and mremaps, and once the tree is released loads the rest in
//!   the background, then lets go of everything and exits.

pub mod pending;
pub mod server;
mod tracer;

use crate::errors::{restore_io, RestoreError};
use crate::inject::Injector;
use crate::manifest::Process;
use crate::memory::{Backing, Vma};
use crate::sys::uffd;
use pending::{Pending, Piece};
use std::os::fd::{AsFd, OwnedFd};

/// Private anonymous memory with stored pages: the only kind a userfaultfd serves in missing
/// mode (file mappings' pages come from the file; shared memory is one object for many).
pub fn is_lazy(v: &Vma) -> bool {
    matches!(v.backing, Backing::Anonymous) && !v.shared && !v.pages.is_empty()
}

/// The mappings of `p` to register.
pub fn lazy_vmas(p: &Process) -> impl Iterator<Item = &Vma> {
    p.memory.vmas.iter().filter(|v| is_lazy(v))
}

/// What `p`'s lazy mappings hold, not placed yet.
pub fn pending_of(p: &Process) -> Pending {
    Pending::new(lazy_vmas(p).flat_map(|v| &v.pages).map(|r| Piece {
        addr: r.addr,
        len: r.len,
        image: r.image as usize,
        offset: r.offset,
    }))
}

/// The features the server needs: it must see the program fork (the child's absent pages
/// are absent too), drop memory (what it dropped must not come back) and move it.
const FEATURES: u64 = uffd::UFFD_FEATURE_EVENT_FORK
    | uffd::UFFD_FEATURE_EVENT_REMAP
    | uffd::UFFD_FEATURE_EVENT_REMOVE
    | uffd::UFFD_FEATURE_EVENT_UNMAP;

/// At the exit of `pid`'s restore ioctl (stopped, traced by us, nothing of its memory touched
/// yet): makes its userfaultfd, takes it, and registers its lazy mappings.
pub fn take_userfaultfd(pid: i32, p: &Process) -> Result<OwnedFd, RestoreError> {
    let inj = Injector::find_in(pid, crate::vdso::place(&p.memory.vmas))
        .map_err(restore_io("finding a syscall instruction"))?;
    let what = "making the process's userfaultfd (userfaultfd(2))";
    let nr = libc::SYS_userfaultfd;
    let fd = crate::thread::call(
        &inj,
        pid,
        what,
        nr,
        [uffd::USERFAULTFD_FLAGS, 0, 0, 0, 0, 0],
    )?;
    let taken = crate::sys::steal_fd(pid, fd as i32)
        .map_err(restore_io("taking the process's userfaultfd (pidfd_getfd)"));
    // Its copy goes whatever happened: the program must not find an fd it never had.
    let close = libc::SYS_close;
    crate::thread::call(
        &inj,
        pid,
        "closing the userfaultfd",
        close,
        [fd as u64, 0, 0, 0, 0, 0],
    )?;
    let taken = taken?;
    uffd::api(taken.as_fd(), FEATURES).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => "following the program's forks needs CAP_SYS_PTRACE",
            _ => "this kernel lacks a userfaultfd feature it needs",
        };
        restore_io(format!("a lazy restore: {why} (UFFDIO_API)"))(e)
    })?;
    for v in lazy_vmas(p) {
        uffd::register_missing(taken.as_fd(), v.start, v.end - v.start).map_err(restore_io(
            format!("registering {:#x}-{:#x} with userfaultfd", v.start, v.end),
        ))?;
    }
    Ok(taken)
}
