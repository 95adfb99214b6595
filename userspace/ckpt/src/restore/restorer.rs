//! The restorer: the child `ckpt restore` forks, which becomes the process. Traced by its
//! parent and dying with it, signals blocked, it sets on itself everything that can only be
//! set from inside (fds, directory, umask, limits, personality, handlers, the main thread's
//! per-thread state), moves its vDSO where the image had it, and calls `CKPT_IOC_RESTORE`, in
//! which the module replaces its whole address space with the image's. It never returns: any
//! failure ends it with a message and a non-zero status, before anything of the image runs.

use crate::creds::as_fs_user;
use crate::device::Device;
use crate::fds::{Blobs, RestoreCtx};
use crate::manifest::Process;
use crate::memory::MemoryPlan;
use crate::sys;
use crate::vdso::{MoveError, Specials};
use ckpt_abi::{CkptRange, CkptRestore, CKPT_IOC_RESTORE};
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Everything the restorer needs, prepared (and allocated) by the parent before the fork.
pub struct Plan {
    pub memory: MemoryPlan,
    pub specials: Specials,
    /// The small sections the fds need (pipe and socket data, deleted files).
    pub blobs: Blobs,
    /// The highest fd open in ckpt when it forks.
    pub highest_own_fd: i32,
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("ckpt restore: {what}: {e}");
    sys::exit_now(1);
}

/// The restorer's side. Never returns.
pub fn run(p: &Process, plan: &mut Plan, image: &File, dev: &Device) -> ! {
    become_tracee();
    let work = WorkFds::take(p, plan, image, dev);
    if let Err((what, e)) = p.attrs.restore_cwd_umask() {
        fail(&what, e);
    }
    restore_fds(p, plan, &work);
    if let Err((what, e)) = p.attrs.restore_limits() {
        fail(&what, e);
    }
    if let Err((what, e)) = crate::signals::restore(&p.sigactions) {
        fail(&what, e);
    }
    if let Err((what, e)) = crate::thread::restore_main_in_restorer(&p.threads[0]) {
        fail(what, e);
    }
    plan.memory.set_file_fds(&work.files);
    let mut req = request(p, plan, &work);
    match plan.specials.move_into_place() {
        Ok(()) => {}
        Err(MoveError::Collision(what)) => {
            eprintln!("ckpt restore: {what}; run the restore again");
            sys::exit_now(75);
        }
        Err(MoveError::Failed(what, e)) => fail(what, e),
    }
    // From here on nothing may call into the vDSO (its old address is gone).
    // Stop #2, then the restore: the parent takes over at the ioctl's exit.
    let _ = sys::kill(std::process::id() as i32, libc::SIGSTOP);
    let r = sys::ioctl_with(work.dev, CKPT_IOC_RESTORE, &mut req);
    // Only reached if the module refused before touching anything.
    let code = r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
    sys::exit_now(100 + code.min(100));
}

/// Asks to be traced by the parent, blocks every signal, and stops until the parent has set
/// the ptrace options (exit-kill, syscall stops).
fn become_tracee() {
    let parent = nix::unistd::getppid();
    if let Err(e) = nix::sys::ptrace::traceme() {
        fail("PTRACE_TRACEME", e);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None) {
        fail("blocking signals", e);
    }
    // Stop #1.
    if let Err(e) = sys::kill(std::process::id() as i32, libc::SIGSTOP) {
        fail("stopping", e);
    }
    // Past stop #1 the parent has set PTRACE_O_EXITKILL: if it dies we die. If it died before
    // that, we have been reparented: give up rather than run unsupervised.
    if nix::unistd::getppid() != parent {
        sys::exit_now(1);
    }
}

/// The restorer's own fds (image, device, mapped files), moved above every fd of the image
/// and of ckpt so that they are consecutive; everything else is closed but inherited stdio.
struct WorkFds {
    base: i32,
    image: i32,
    dev: i32,
    files: Vec<i32>,
}

impl WorkFds {
    fn take(p: &Process, plan: &Plan, image: &File, dev: &Device) -> WorkFds {
        let max_fd = p.files.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
        let base = max_fd.max(plan.highest_own_fd) + 1;
        let mut work = Vec::new();
        let sources = [image.as_fd(), dev.as_fd()]
            .into_iter()
            .chain(plan.memory.files.iter().map(|f| f.as_fd()));
        for (i, fd) in sources.enumerate() {
            let want = base + i as i32;
            // Not owned: the module closes the working fds when the restore succeeds.
            match fcntl(fd, FcntlArg::F_DUPFD(want)) {
                Ok(n) if n == want => work.push(n),
                // Consecutive from `base` only if nothing else sits there; check.
                Ok(n) => fail("moving working fds", format!("fd {n} is not {want}")),
                Err(e) => fail("moving working fds", e),
            }
        }
        let last = base + work.len() as i32 - 1;
        // Close everything else: below `base` except inherited stdio, and above our range.
        let _ = sys::close_range(last as u32 + 1, u32::MAX);
        for fd in 0..base {
            let inherited = p
                .files
                .fds
                .iter()
                .any(|f| f.fd == fd && matches!(f.kind, crate::fds::FdKind::InheritStdio(_)));
            if !inherited {
                let _ = sys::close_range(fd as u32, fd as u32);
            }
        }
        WorkFds {
            base,
            image: work[0],
            dev: work[1],
            files: work[2..].to_vec(),
        }
    }

    fn count(&self) -> u32 {
        2 + self.files.len() as u32
    }
}

/// The process's fds, made as its own user: files are created and sockets bound by it, so
/// that they belong to it; existing files are opened as it too, and as root only where it
/// may not (a daemon that opened them before dropping privileges).
fn restore_fds(p: &Process, plan: &Plan, work: &WorkFds) {
    let fs_user = match p.threads[0].creds.as_ref() {
        Some(c) => match as_fs_user(c.uid[3], c.gid[3], &c.groups) {
            Ok(g) => Some(g),
            Err(e) => fail("taking the process's filesystem ids", e),
        },
        None => None,
    };
    let as_user = fs_user.is_some();
    let reopen = move |path: &Path, flags: OFlag| -> std::io::Result<OwnedFd> {
        match open(path, flags, Mode::empty()) {
            Err(nix::Error::EACCES | nix::Error::EPERM) if as_user => {
                let _root = as_fs_user(0, 0, &[])?;
                Ok(open(path, flags, Mode::empty())?)
            }
            r => Ok(r?),
        }
    };
    // Temporary fds (shared objects' ends) live above everything else.
    let scratch = work.base + work.count() as i32;
    let ctx = RestoreCtx::new(&p.files, &plan.blobs, scratch, &reopen);
    if let Err((what, e)) = crate::fds::restore(ctx) {
        fail(&what, e);
    }
    drop(fs_user);
}

/// The module's request: the address space, the kept kernel mappings, the fds to close.
fn request(p: &Process, plan: &Plan, work: &WorkFds) -> CkptRestore {
    let m = &plan.memory;
    let mut req = CkptRestore {
        image_fd: work.image,
        vmas: m.vmas.as_ptr() as u64,
        vma_count: m.vmas.len() as u32,
        run_count: m.runs.len() as u32,
        runs: m.runs.as_ptr() as u64,
        keep_count: plan.specials.keep.len() as u32,
        cleanup_fd_first: work.base as u32,
        cleanup_fd_count: work.count(),
        mm: p.memory.mm.to_abi(),
        ..Default::default()
    };
    for (slot, &(start, end)) in req.keep.iter_mut().zip(&plan.specials.keep) {
        *slot = CkptRange { start, end };
    }
    req
}
