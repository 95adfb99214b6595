//! `ckpt restore FILE`: bring a checkpointed process back.
//!
//! 1. The image is verified completely (every checksum) before any process is created.
//! 2. A child is created with the original pid when it is free (clone3 set_tid), else any.
//!    It asks to be traced by us and to die with us, blocks all signals, and becomes the
//!    process: fds, cwd, umask, rlimits, personality, signal handlers, sigaltstack, robust list,
//!    clear_child_tid, rseq; it moves its vDSO/vvar to where the image had them.
//! 3. It stops itself; we follow it to the entry and exit of `CKPT_IOC_RESTORE`, in which the
//!    module replaces its whole address space with the image's.
//! 4. At that syscall-exit stop we set its registers, XSAVE state and signal mask through
//!    ptrace (the kernel validates them) and detach: it continues where it was checkpointed.
//!
//! Any failure before the detach kills the child: a half-restored process never runs.

use crate::image::{Backing, FdKind, Image, ImageError, Process, Regs};
use crate::inject::Injector;
use crate::{proc, sys};
use ckpt_abi::{
    CkptMmLayout, CkptRange, CkptRestore, CkptRestoreRun, CkptRestoreVma, CKPT_IOC_RESTORE,
    CKPT_RESTORE_MAX_KEEP, CKPT_VMA_FILE, CKPT_VMA_GROWSDOWN, CKPT_VMA_SHARED,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Device(#[from] crate::device::DeviceError),
    #[error("the image holds {0} processes; this version restores one")]
    Processes(usize),
    #[error(
        "the image's kernel mappings ({image}) differ from this kernel's ({here}): it was \
         taken on another kernel"
    )]
    Vdso { image: String, here: String },
    #[error("mapped file {path}: {why}")]
    MappedFile { path: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "the restored process failed while preparing (exit status {0}); see its message above"
    )]
    Child(i32),
    #[error("the module refused the restore: {0}")]
    Ioctl(std::io::Error),
    #[error("giving thread {tid} its credentials back: {what}: {source}")]
    Creds {
        tid: i32,
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

/// Where the restored process went.
pub struct Restored {
    pub pid: i32,
    pub original_pid: i32,
}

/// Everything the child needs, prepared (and allocated) by the parent before the fork.
struct Plan {
    vmas: Vec<CkptRestoreVma>,
    runs: Vec<CkptRestoreRun>,
    keep: Vec<(u64, u64)>,
    /// Where our own kernel mappings are now, in the same order as `keep`.
    specials_here: Vec<(u64, u64)>,
    /// Distinct mapped files: (path, open file).
    files: Vec<File>,
    mm: CkptMmLayout,
    /// The highest fd open in ckpt when it forks.
    highest_own_fd: i32,
    /// The unread bytes of each pipe of the process.
    pipe_data: Vec<Vec<u8>>,
    /// Per socket pair, the bytes queued at each end.
    socket_data: Vec<[Vec<u8>; 2]>,
    /// Deleted files' contents, by section.
    file_data: BTreeMap<usize, Vec<u8>>,
}

/// Our own [vvar], [vvar_vclock] and [vdso], in address order: (name, start, end).
fn own_specials() -> Result<Vec<(String, u64, u64)>, RestoreError> {
    Ok(proc::maps("self")
        .map_err(io("reading /proc/self/maps"))?
        .into_iter()
        .filter(|m| m.is_special() && m.name != "[vsyscall]")
        .map(|m| (m.name, m.start, m.end))
        .collect())
}

fn plan(img: &Image, p: &Process) -> Result<Plan, RestoreError> {
    // Kernel mappings: same names and sizes, in the same order, or the image is foreign.
    let image_specials: Vec<(String, u64, u64)> = p
        .vmas
        .iter()
        .filter_map(|v| match &v.backing {
            Backing::Special { name } if name != "[vsyscall]" => {
                Some((name.clone(), v.start, v.end))
            }
            _ => None,
        })
        .collect();
    let here = own_specials()?;
    let shape = |v: &[(String, u64, u64)]| -> String {
        v.iter()
            .map(|(n, s, e)| format!("{n} {}K", (e - s) / 1024))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = image_specials.len() == here.len()
        && image_specials
            .iter()
            .zip(&here)
            .all(|(a, b)| a.0 == b.0 && a.2 - a.1 == b.2 - b.1);
    if !same || here.len() > CKPT_RESTORE_MAX_KEEP {
        return Err(RestoreError::Vdso {
            image: shape(&image_specials),
            here: shape(&here),
        });
    }

    let mut files: Vec<File> = Vec::new();
    let mut file_index: BTreeMap<(String, bool), usize> = BTreeMap::new();
    let mut vmas = Vec::new();
    let mut runs = Vec::new();
    for v in &p.vmas {
        let (flags_file, fd_slot, offset) = match &v.backing {
            Backing::Special { .. } => continue,
            Backing::Anonymous => (0, -1, 0),
            Backing::File {
                path,
                offset,
                inode,
                ..
            } => {
                let writable = v.shared && v.prot & 2 != 0;
                let key = (path.clone(), writable);
                let idx = match file_index.get(&key) {
                    Some(&i) => i,
                    None => {
                        let f = std::fs::OpenOptions::new()
                            .read(true)
                            .write(writable)
                            .open(path)
                            .map_err(|e| RestoreError::MappedFile {
                                path: path.clone(),
                                why: e.to_string(),
                            })?;
                        let ino = std::os::unix::fs::MetadataExt::ino(
                            &f.metadata().map_err(io(path.clone()))?,
                        );
                        if ino != *inode {
                            return Err(RestoreError::MappedFile {
                                path: path.clone(),
                                why: format!("it was replaced since the checkpoint (inode {ino}, was {inode})"),
                            });
                        }
                        files.push(f);
                        file_index.insert(key, files.len() - 1);
                        files.len() - 1
                    }
                };
                (CKPT_VMA_FILE, idx as i32, *offset)
            }
        };
        let mut flags = flags_file;
        if v.shared {
            flags |= CKPT_VMA_SHARED;
        }
        if v.growsdown {
            flags |= CKPT_VMA_GROWSDOWN;
        }
        // `fd` holds the index into `files` until the child knows the real fd numbers.
        vmas.push(CkptRestoreVma {
            start: v.start,
            end: v.end,
            prot: v.prot,
            flags,
            fd: fd_slot,
            _reserved: 0,
            file_offset: offset,
        });
        runs.extend(v.pages.iter().map(|r| CkptRestoreRun {
            addr: r.addr,
            len: r.len,
            image_offset: r.offset,
        }));
    }
    let mm = p.mm.to_abi();
    Ok(Plan {
        vmas,
        runs,
        keep: image_specials.iter().map(|s| (s.1, s.2)).collect(),
        specials_here: here.iter().map(|s| (s.1, s.2)).collect(),
        files,
        mm,
        highest_own_fd: 0,
        pipe_data: p
            .pipes
            .iter()
            .map(|pipe| {
                pipe.data_section
                    .map_or(Ok(Vec::new()), |i| img.read_section(i))
            })
            .collect::<Result<_, _>>()?,
        socket_data: p
            .socket_pairs
            .iter()
            .map(|sp| {
                let read = |s: Option<usize>| s.map_or(Ok(Vec::new()), |i| img.read_section(i));
                Ok([read(sp.data_sections[0])?, read(sp.data_sections[1])?])
            })
            .collect::<Result<_, ImageError>>()?,
        file_data: p
            .fds
            .iter()
            .filter_map(|f| match f.kind {
                FdKind::Deleted { data_section, .. } => Some(data_section),
                _ => None,
            })
            .map(|i| Ok((i, img.read_section(i)?)))
            .collect::<Result<_, ImageError>>()?,
    })
}

/// The registers to resume with. A thread stopped inside a system call shows the kernel's
/// internal restart code in rax; like the kernel on signal return, rewind to redo the call.
/// (An interrupted sleep restarts with its full duration: the remaining time is not saved.)
fn resume_regs(r: &Regs, now: &libc::user_regs_struct) -> libc::user_regs_struct {
    let mut out = *now;
    let (mut rax, mut rip) = (r.rax, r.rip);
    if (r.orig_rax as i64) >= 0 && sys::RESTART_CODES.contains(&(r.rax as i64)) {
        rax = r.orig_rax;
        rip = r.rip - 2;
    }
    out.r15 = r.r15;
    out.r14 = r.r14;
    out.r13 = r.r13;
    out.r12 = r.r12;
    out.rbp = r.rbp;
    out.rbx = r.rbx;
    out.r11 = r.r11;
    out.r10 = r.r10;
    out.r9 = r.r9;
    out.r8 = r.r8;
    out.rax = rax;
    out.rcx = r.rcx;
    out.rdx = r.rdx;
    out.rsi = r.rsi;
    out.rdi = r.rdi;
    // No syscall-restart processing on the way out: that was decided above.
    out.orig_rax = u64::MAX;
    out.rip = rip;
    out.eflags = r.eflags;
    out.rsp = r.rsp;
    out.fs_base = r.fs_base;
    out.gs_base = r.gs_base;
    // cs, ss and the data segment selectors stay those the kernel gave this task.
    out
}

/// The child's side: become the process, then call the restore ioctl. Never returns.
fn child(p: &Process, plan: &mut Plan, image: &File, dev: &crate::device::Device) -> ! {
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("ckpt restore: {what}: {e}");
        sys::exit_now(1);
    };
    let parent = sys::getppid();
    if let Err(e) = sys::ptrace_traceme() {
        fail("PTRACE_TRACEME", e);
    }
    if let Err(e) = sys::block_all_signals() {
        fail("blocking signals", e);
    }
    let me = sys::getpid();
    // Stop #1: the parent sets the ptrace options (exit-kill, syscall stops) before we go on.
    if let Err(e) = sys::kill(me, libc::SIGSTOP) {
        fail("stopping", e);
    }
    // Past stop #1 the parent has set PTRACE_O_EXITKILL: if it dies we die. If it died before
    // that, we have been reparented: give up rather than run unsupervised.
    if sys::getppid() != parent {
        sys::exit_now(1);
    }

    // Working fds go above every fd of the image and every fd we hold now, so that the
    // duplicates are consecutive.
    let max_fd = p.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
    let base = max_fd.max(plan.highest_own_fd) + 1;
    let mut work = Vec::new();
    for fd in [image.as_raw_fd(), dev.as_raw_fd()]
        .into_iter()
        .chain(plan.files.iter().map(|f| f.as_raw_fd()))
    {
        match sys::dup_at_least(fd, base + work.len() as i32) {
            Ok(n) => work.push(n),
            Err(e) => fail("moving working fds", e),
        }
    }
    // The dups are consecutive from `base` only if nothing else sits there; check.
    for (i, &fd) in work.iter().enumerate() {
        if fd != base + i as i32 {
            fail(
                "moving working fds",
                std::io::Error::other(format!("fd {fd} is not {}", base + i as i32)),
            );
        }
    }
    let (image_fd, dev_fd) = (work[0], work[1]);
    let last_work = base + work.len() as i32 - 1;
    // Close everything else: below `base` except inherited stdio, and above our range.
    let _ = sys::close_range(last_work as u32 + 1, u32::MAX);
    let inherit: Vec<i32> = p
        .fds
        .iter()
        .filter(|f| matches!(f.kind, FdKind::InheritStdio { .. }))
        .map(|f| f.fd)
        .collect();
    for fd in 0..base {
        if !inherit.contains(&fd) {
            sys::close(fd);
        }
    }
    // The process's directory and umask first (as root: a daemon may sit in a directory it
    // could not enter itself). Then files are created and sockets bound as the process's own
    // user, so that they belong to it; existing files are opened as it too, and as root only
    // where it may not (a daemon that opened them before dropping privileges).
    if let Err(e) = sys::chdir(Path::new(&p.cwd)) {
        fail(&format!("chdir {}", p.cwd), e);
    }
    sys::umask(p.umask);
    let fs_user = match p.threads[0].creds.as_ref() {
        Some(c) => match sys::as_fs_user(c.uid[3], c.gid[3], &c.groups) {
            Ok(g) => Some(g),
            Err(e) => fail("taking the process's filesystem ids", e),
        },
        None => None,
    };
    let reopen = |path: &Path, flags: i32| match sys::open(path, flags) {
        Err(e)
            if fs_user.is_some()
                && matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) =>
        {
            let _root = sys::as_fs_user(0, 0, &[])?;
            sys::open(path, flags)
        }
        r => r,
    };
    // Temporary fds (pipe ends being handed out) live above everything else.
    let scratch = last_work + 1;
    let mut pipe_ends: Vec<Option<(i32, i32)>> = vec![None; p.pipes.len()];
    let mut pair_ends: Vec<Option<[i32; 2]>> = vec![None; p.socket_pairs.len()];
    let keep_flags = |flags: u32| (flags as i32) & (libc::O_NONBLOCK | libc::O_APPEND);
    // A newly made fd to its number, with the status flags it had.
    let place = |made: std::io::Result<i32>, f: &crate::image::Fd| {
        made.and_then(|n| sys::move_fd(n, f.fd))
            .and_then(|_| sys::set_fl(f.fd, keep_flags(f.flags)))
    };
    for f in &p.fds {
        match &f.kind {
            FdKind::InheritStdio { .. } => {}
            FdKind::Path { path, pos } => {
                let flags = (f.flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
                match reopen(Path::new(path), flags) {
                    Ok(n) => {
                        if let Err(e) = sys::move_fd(n, f.fd) {
                            fail(&format!("placing fd {}", f.fd), e);
                        }
                        // Directories and devices may not seek; that is fine.
                        let _ = sys::lseek(f.fd, *pos);
                    }
                    Err(e) => fail(&format!("reopening fd {} ({path})", f.fd), e),
                }
            }
            FdKind::Pipe { pipe, write_end } => {
                let (r, w) = match pipe_ends[*pipe] {
                    Some(ends) => ends,
                    None => {
                        let made = sys::pipe().and_then(|(r, w)| {
                            let ends = (
                                sys::dup_at_least(r, scratch)?,
                                sys::dup_at_least(w, scratch)?,
                            );
                            sys::close(r);
                            sys::close(w);
                            // The original capacity, at least enough for the saved bytes.
                            let _ = sys::set_pipe_size(ends.1, p.pipes[*pipe].capacity);
                            sys::write_all_fd(ends.1, &plan.pipe_data[*pipe])?;
                            Ok(ends)
                        });
                        match made {
                            Ok(ends) => {
                                pipe_ends[*pipe] = Some(ends);
                                ends
                            }
                            Err(e) => fail(&format!("recreating the pipe of fd {}", f.fd), e),
                        }
                    }
                };
                let from = if *write_end { w } else { r };
                if let Err(e) =
                    sys::dup2(from, f.fd).and_then(|_| sys::set_fl(f.fd, keep_flags(f.flags)))
                {
                    fail(&format!("placing fd {}", f.fd), e);
                }
            }
            FdKind::Epoll { .. } => {} // below, once every fd it watches exists
            FdKind::EventFd { count, semaphore } => {
                if let Err(e) = place(sys::eventfd_with(*count, *semaphore), f) {
                    fail(&format!("recreating the eventfd of fd {}", f.fd), e);
                }
            }
            FdKind::TimerFd {
                clockid,
                value_ns,
                interval_ns,
                ticks,
            } => {
                let made = sys::timerfd_with(*clockid, *value_ns, *interval_ns, *ticks);
                if let Err(e) = place(made, f) {
                    fail(&format!("recreating the timerfd of fd {}", f.fd), e);
                }
            }
            FdKind::SignalFd { mask } => {
                if let Err(e) = place(sys::signalfd_with(*mask), f) {
                    fail(&format!("recreating the signalfd of fd {}", f.fd), e);
                }
            }
            FdKind::SocketPairEnd { pair, end } => {
                let ends = match pair_ends[*pair] {
                    Some(ends) => ends,
                    None => {
                        let data = &plan.socket_data[*pair];
                        let made =
                            crate::socket::restore_pair([&data[0], &data[1]]).and_then(|(a, b)| {
                                let ends = [
                                    sys::dup_at_least(a, scratch)?,
                                    sys::dup_at_least(b, scratch)?,
                                ];
                                sys::close(a);
                                sys::close(b);
                                Ok(ends)
                            });
                        match made {
                            Ok(ends) => {
                                pair_ends[*pair] = Some(ends);
                                ends
                            }
                            Err(e) => {
                                fail(&format!("recreating the socket pair of fd {}", f.fd), e)
                            }
                        }
                    }
                };
                if let Err(e) =
                    sys::dup2(ends[*end], f.fd).and_then(|_| sys::set_fl(f.fd, keep_flags(f.flags)))
                {
                    fail(&format!("placing fd {}", f.fd), e);
                }
            }
            FdKind::Listen { display, .. } => {
                let nonblock = f.flags as i32 & libc::O_NONBLOCK != 0;
                let made =
                    crate::socket::restore(&f.kind, nonblock).and_then(|n| sys::move_fd(n, f.fd));
                if let Err(e) = made {
                    fail(&format!("listening again on {display} (fd {})", f.fd), e);
                }
            }
            FdKind::Deleted {
                path,
                pos,
                mode,
                data_section,
            } => {
                let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
                let data = plan
                    .file_data
                    .get(data_section)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let flags = (f.flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
                // The unnamed file is kept above all targets while it is in use.
                let made = sys::anonymous_file(dir, *mode).and_then(|low| {
                    let tmp = sys::dup_at_least(low, scratch);
                    sys::close(low);
                    tmp
                });
                let made = made.and_then(|tmp| {
                    let r = sys::write_all_fd(tmp, data).and_then(|_| {
                        // Reopen with the original flags (O_APPEND, access mode, ...).
                        let n = sys::open(Path::new(&format!("/proc/self/fd/{tmp}")), flags)?;
                        sys::move_fd(n, f.fd)?;
                        sys::lseek(f.fd, *pos)
                    });
                    sys::close(tmp);
                    r
                });
                if let Err(e) = made {
                    fail(
                        &format!("recreating the deleted file of fd {} ({path})", f.fd),
                        e,
                    );
                }
            }
        }
    }
    for (r, w) in pipe_ends.into_iter().flatten() {
        sys::close(r);
        sys::close(w);
    }
    for [a, b] in pair_ends.into_iter().flatten() {
        sys::close(a);
        sys::close(b);
    }
    for f in &p.fds {
        if let FdKind::Epoll { watches } = &f.kind {
            // (Close-on-exec is set below, with every other fd's.)
            if let Err(e) = sys::epoll_with(watches).and_then(|ep| sys::move_fd(ep, f.fd)) {
                fail(&format!("recreating the epoll instance of fd {}", f.fd), e);
            }
        }
    }
    // Close-on-exec as it was (dup2 cleared it on every fd placed that way).
    for f in &p.fds {
        if !matches!(f.kind, FdKind::InheritStdio { .. }) {
            let cloexec = f.flags as i32 & libc::O_CLOEXEC != 0;
            if let Err(e) = sys::set_cloexec(f.fd, cloexec) {
                fail(&format!("setting close-on-exec on fd {}", f.fd), e);
            }
        }
    }

    drop(fs_user);
    for r in &p.rlimits {
        if let Err(e) = sys::setrlimit(r.resource, r.cur, r.max) {
            fail(&format!("setrlimit {}", r.resource), e);
        }
    }
    if let Err(e) = sys::personality(p.personality) {
        fail("personality", e);
    }
    for a in &p.sigactions {
        if a.signo == libc::SIGKILL as u32 || a.signo == libc::SIGSTOP as u32 {
            continue;
        }
        let act = sys::KernelSigaction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        };
        if let Err(e) = sys::rt_sigaction(a.signo, &act) {
            fail(&format!("sigaction {}", a.signo), e);
        }
    }
    let t = &p.threads[0];
    // The kernel keeps no flags for "no alternate stack": a zero size means none. ckpt itself
    // has one (Rust's overflow handler), so it is set either way.
    let ss = t.sigaltstack;
    let res = if ss.size == 0 {
        sys::sigaltstack(0, 0, libc::SS_DISABLE as u32)
    } else {
        // Only SS_AUTODISARM is a setting; SS_ONSTACK/SS_DISABLE are status bits.
        sys::sigaltstack(ss.sp, ss.size, ss.flags & (1u32 << 31))
    };
    if let Err(e) = res {
        fail("sigaltstack", e);
    }
    if t.robust_list.head != 0 {
        if let Err(e) = sys::set_robust_list(t.robust_list.head, t.robust_list.len) {
            fail("set_robust_list", e);
        }
    }
    sys::set_tid_address(t.clear_child_tid);
    // glibc registered an rseq area for us; the kernel would keep writing to that address in
    // the restored memory. Drop it; the image's area is registered after the restore, by the
    // restored thread itself (see `inject.rs`).
    if let Err(e) = sys::unregister_own_rseq() {
        fail("unregistering ckpt's own rseq area", e);
    }
    // Fill in the fds of the request now that they are known.
    for v in plan.vmas.iter_mut() {
        if v.flags & CKPT_VMA_FILE != 0 {
            v.fd = work[2 + v.fd as usize];
        }
    }
    let mut req = CkptRestore {
        image_fd,
        vmas: plan.vmas.as_ptr() as u64,
        vma_count: plan.vmas.len() as u32,
        run_count: plan.runs.len() as u32,
        runs: plan.runs.as_ptr() as u64,
        keep_count: plan.keep.len() as u32,
        cleanup_fd_first: base as u32,
        cleanup_fd_count: work.len() as u32,
        mm: plan.mm,
        ..Default::default()
    };
    for (slot, &(start, end)) in req.keep.iter_mut().zip(&plan.keep) {
        *slot = CkptRange { start, end };
    }

    // Move our kernel mappings where the image had them: first all out of the way, then into
    // place, so that no move lands on another. Nothing else of ours may be there.
    if plan.keep != plan.specials_here {
        let mine = proc::maps("self").unwrap_or_default();
        for &(s, e) in &plan.keep {
            if let Some(m) = mine
                .iter()
                .find(|m| !m.is_special() && m.start < e && s < m.end)
            {
                eprintln!(
                    "ckpt restore: the image's vDSO at {s:#x} collides with ckpt's own memory ({}); \
                     run the restore again",
                    if m.name.is_empty() { "anonymous" } else { &m.name }
                );
                sys::exit_now(75);
            }
        }
        let total: u64 = plan.specials_here.iter().map(|(s, e)| e - s).sum();
        let scratch = match sys::reserve(total) {
            Ok(a) => a,
            Err(e) => fail("reserving address space", e),
        };
        let mut at = scratch;
        let mut moved = Vec::new();
        for &(s, e) in &plan.specials_here {
            if let Err(err) = sys::mremap_fixed(s, e - s, at) {
                fail("moving the vDSO", err);
            }
            moved.push(at);
            at += e - s;
        }
        for (i, &(s, e)) in plan.keep.iter().enumerate() {
            if let Err(err) = sys::mremap_fixed(moved[i], e - s, s) {
                fail("moving the vDSO", err);
            }
        }
        // From here on nothing may call into the vDSO (its old address is gone).
    }

    // Stop #2, then the restore: the parent takes over at the ioctl's exit.
    let _ = sys::kill(me, libc::SIGSTOP);
    let r = sys::ioctl_with(dev_fd, CKPT_IOC_RESTORE, &mut req);
    // Only reached if the module refused before touching anything.
    let code = r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
    sys::exit_now(100 + code.min(100));
}

/// Follows the child from stop #2 to the exit of the restore ioctl. Returns its registers
/// there (rax is the ioctl's result).
fn follow_to_restore_exit(pid: i32) -> Result<libc::user_regs_struct, RestoreError> {
    let mut in_restore = false;
    for _ in 0..64 {
        sys::ptrace_syscall(pid, 0).map_err(io("PTRACE_SYSCALL"))?;
        let status = sys::waitpid(pid, libc::__WALL).map_err(io("waiting for the restorer"))?;
        if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            if code > 100 {
                return Err(RestoreError::Ioctl(std::io::Error::from_raw_os_error(
                    code - 100,
                )));
            }
            return Err(RestoreError::Child(code));
        }
        if libc::WIFSIGNALED(status) {
            return Err(RestoreError::Child(128 + libc::WTERMSIG(status)));
        }
        if !(libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == (libc::SIGTRAP | 0x80)) {
            continue; // not a syscall stop
        }
        let regs = sys::ptrace_getregs(pid).map_err(io("PTRACE_GETREGS"))?;
        let is_restore =
            regs.orig_rax == libc::SYS_ioctl as u64 && regs.rsi as u32 == CKPT_IOC_RESTORE;
        if in_restore {
            return Ok(regs);
        }
        in_restore = is_restore;
    }
    Err(RestoreError::Io {
        what: "the restorer never called the restore ioctl".into(),
        source: std::io::Error::other("lost"),
    })
}

/// Scratch memory for injected syscalls' arguments: below the main thread's saved stack
/// pointer, past the red zone; nothing live is there.
fn scratch_area(p: &Process) -> u64 {
    (p.threads[0].regs.rsp - 1024) & !15
}

/// Creates the process's threads after the first, in order, by making the main thread run
/// clone3 (through [`Injector`]); each new thread then sets its robust list, alternate signal
/// stack and rseq area the same way. Returns their tids; all stay stopped for the caller.
fn create_threads(inj: &Injector, pid: i32, p: &Process) -> Result<Vec<i32>, RestoreError> {
    const CLONE_FLAGS: u64 = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_CHILD_CLEARTID) as u64;
    sys::ptrace_setoptions(
        pid,
        libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACECLONE,
    )
    .map_err(io("PTRACE_SETOPTIONS"))?;
    let scratch = scratch_area(p);
    let mut tids = Vec::new();
    for t in &p.threads[1..] {
        let mut args = [0u64; 11];
        args[0] = if t.own_files {
            CLONE_FLAGS & !((libc::CLONE_FILES | libc::CLONE_FS) as u64)
        } else {
            CLONE_FLAGS
        };
        args[2] = t.clear_child_tid; // child_tid, with CLONE_CHILD_CLEARTID
        args[8] = scratch + 96; // set_tid
        args[9] = 1; // set_tid_size
        let mut bytes: Vec<u8> = args.iter().flat_map(|a| a.to_le_bytes()).collect();
        bytes.resize(96, 0);
        bytes.extend_from_slice(&(t.tid as i64).to_le_bytes());
        inj.poke(scratch, &bytes)
            .map_err(io("writing clone3 arguments"))?;
        let (mut ret, mut new) = inj
            .syscall(pid, libc::SYS_clone3, [scratch, 88, 0, 0, 0, 0])
            .map_err(io("creating a thread"))?;
        if ret == -(libc::EEXIST as i64) {
            // The tid is taken: any tid will do (the program's cached tid will be stale).
            eprintln!(
                "ckpt: thread id {} was taken; the thread was restored with another",
                t.tid
            );
            // Both set_tid (offset 64) and set_tid_size (72): a pointer with size 0 is EINVAL.
            inj.poke(scratch + 64, &[0u8; 16])
                .map_err(io("writing clone3 arguments"))?;
            (ret, new) = inj
                .syscall(pid, libc::SYS_clone3, [scratch, 88, 0, 0, 0, 0])
                .map_err(io("creating a thread"))?;
        }
        if ret < 0 {
            return Err(io("creating a thread")(std::io::Error::from_raw_os_error(
                -ret as i32,
            )));
        }
        let tid = new.unwrap_or(ret as i32);
        // The new thread starts stopped (auto-attached): wait for that stop.
        let status = sys::waitpid(tid, libc::__WALL).map_err(io("waiting for a new thread"))?;
        if !libc::WIFSTOPPED(status) {
            return Err(io("waiting for a new thread")(std::io::Error::other(
                "it did not stop",
            )));
        }
        tids.push(tid);
        let check = |what: &str, r: (i64, Option<i32>)| {
            if r.0 < 0 {
                Err(io(what.to_owned())(std::io::Error::from_raw_os_error(
                    -r.0 as i32,
                )))
            } else {
                Ok(())
            }
        };
        if t.own_files {
            // It got a copy of the process's fd table: it had none of those.
            let r = inj
                .syscall(
                    tid,
                    libc::SYS_close_range,
                    [0, u64::from(u32::MAX), 0, 0, 0, 0],
                )
                .map_err(io("close_range"))?;
            check("emptying a thread's own fd table", r)?;
        }
        if t.robust_list.head != 0 {
            let r = inj
                .syscall(
                    tid,
                    libc::SYS_set_robust_list,
                    [t.robust_list.head, t.robust_list.len, 0, 0, 0, 0],
                )
                .map_err(io("set_robust_list"))?;
            check("set_robust_list in a thread", r)?;
        }
        if t.sigaltstack.size != 0 {
            let mut ss = Vec::new();
            ss.extend_from_slice(&t.sigaltstack.sp.to_le_bytes());
            ss.extend_from_slice(&(t.sigaltstack.flags & (1u32 << 31)).to_le_bytes());
            ss.extend_from_slice(&0u32.to_le_bytes());
            ss.extend_from_slice(&t.sigaltstack.size.to_le_bytes());
            inj.poke(scratch, &ss)
                .map_err(io("writing sigaltstack arguments"))?;
            let r = inj
                .syscall(tid, libc::SYS_sigaltstack, [scratch, 0, 0, 0, 0, 0])
                .map_err(io("sigaltstack"))?;
            check("sigaltstack in a thread", r)?;
        }
        if let Some(rs) = t.rseq {
            let r = inj
                .syscall(
                    tid,
                    libc::SYS_rseq,
                    [rs.addr, u64::from(rs.len), 0, u64::from(rs.sig), 0, 0],
                )
                .map_err(io("rseq"))?;
            check("rseq in a thread", r)?;
        }
    }
    Ok(tids)
}

/// Under the interceptor: tells the restored process's library which kernel ids its ids now
/// have (its translation table), and rewrites glibc's copy of each thread's tid where the
/// kernel gave another. Every thread is still stopped, so none runs with stale ids.
fn virtualize_ids(
    inj: &Injector,
    p: &Process,
    ic: &crate::image::InterceptorState,
    tids: &[i32],
) -> Result<(), RestoreError> {
    // The process and its threads. The original parent is not part of the image: getppid
    // reports the real parent (its virtual id if it is a restored process of ours).
    let pairs: Vec<(i32, i32)> = p
        .threads
        .iter()
        .map(|t| t.tid)
        .zip(tids.iter().copied())
        .collect();
    crate::interceptor::write_table(inj, ic.ctl_addr, &pairs)
        .map_err(io("filling the interceptor's id table"))?;
    let Some(offset) = ic.tid_offset else {
        return Ok(());
    };
    for (t, &now) in p.threads.iter().zip(tids) {
        let was = t.kernel_tid.unwrap_or(t.tid);
        if was == now || t.regs.fs_base == 0 {
            continue;
        }
        let Some(addr) = t.regs.fs_base.checked_add(offset) else {
            continue;
        };
        // Only where glibc's descriptor really holds the old tid.
        let cur = inj
            .peek(addr, 4)
            .map_err(io("reading a thread descriptor"))?;
        if cur == was.to_le_bytes() {
            inj.poke(addr, &now.to_le_bytes())
                .map_err(io("updating a thread descriptor"))?;
        }
    }
    Ok(())
}

/// Gives every thread the credentials it had (the restorer's are root's): each thread sets its
/// own, by injected system calls, since credentials are per thread. Order matters: the
/// capability bounding set and groups while still privileged, uid last with KEEPCAPS so that
/// the permitted capabilities survive it, then the exact capability sets.
fn restore_creds(inj: &Injector, p: &Process, tids: &[i32]) -> Result<(), RestoreError> {
    // Arguments go below the main thread's saved stack pointer and red zone, and below
    // whatever they hold (a group list can be long): nothing live is there.
    let below = |len: usize| (scratch_area(p) - 64 - len as u64) & !15;
    let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for (t, &tid) in p.threads.iter().zip(tids) {
        let Some(c) = &t.creds else { continue };
        let call = |what: &str, nr: i64, args: [u64; 6]| -> Result<i64, RestoreError> {
            let (r, _) = inj
                .syscall(tid, nr, args)
                .map_err(io(format!("{what} in thread {}", t.tid)))?;
            if r < 0 {
                return Err(RestoreError::Creds {
                    tid: t.tid,
                    what: what.to_owned(),
                    source: std::io::Error::from_raw_os_error(-r as i32),
                });
            }
            Ok(r)
        };
        let prctl = |what: &str, args: [u64; 5]| {
            call(
                what,
                libc::SYS_prctl,
                [args[0], args[1], args[2], args[3], args[4], 0],
            )
        };
        // capset(header {version 3, pid 0}, data[2] {effective, permitted, inheritable} as
        // low and high 32-bit halves), the data at `at`.
        let capset = |what: &str, eff: u64, prm: u64, inh: u64| {
            let mut capdata = Vec::new();
            capdata.extend_from_slice(&0x2008_0522u32.to_le_bytes());
            capdata.extend_from_slice(&0i32.to_le_bytes());
            for half in [0, 32] {
                for set in [eff, prm, inh] {
                    capdata.extend_from_slice(&((set >> half) as u32).to_le_bytes());
                }
            }
            let at = below(capdata.len());
            inj.poke(at, &capdata)
                .map_err(io("writing the capabilities"))?;
            call(what, libc::SYS_capset, [at, at + 8, 0, 0, 0, 0])
        };
        // Nothing of the restorer's ambient set; the inheritable set first, while the
        // bounding set still allows it (inheritable must stay within it once dropped).
        prctl(
            "PR_CAP_AMBIENT_CLEAR_ALL",
            [
                libc::PR_CAP_AMBIENT as u64,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
                0,
                0,
                0,
            ],
        )?;
        let all = if last_cap >= 63 {
            u64::MAX
        } else {
            (1u64 << (last_cap + 1)) - 1
        };
        capset("capset (inheritable)", all, all, c.cap_inheritable & all)?;
        for cap in 0..=last_cap.min(63) {
            if c.cap_bounding & (1 << cap) == 0 {
                prctl(
                    "PR_CAPBSET_DROP",
                    [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0],
                )?;
            }
        }
        let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let at = below(groups.len());
        inj.poke(at, &groups).map_err(io("writing the groups"))?;
        call(
            "setgroups",
            libc::SYS_setgroups,
            [c.groups.len() as u64, at, 0, 0, 0, 0],
        )?;
        let [rg, eg, sg, fg] = c.gid.map(u64::from);
        call("setresgid", libc::SYS_setresgid, [rg, eg, sg, 0, 0, 0])?;
        prctl(
            "PR_SET_KEEPCAPS",
            [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0],
        )?;
        let [ru, eu, su, fu] = c.uid.map(u64::from);
        call("setresuid", libc::SYS_setresuid, [ru, eu, su, 0, 0, 0])?;
        // The filesystem ids follow the effective ones; set them (while the permitted
        // capabilities still allow any) only where they differed, and check they took:
        // setfs*id reports the old value, not errors.
        for (what, nr, want, eff) in [
            ("setfsgid", libc::SYS_setfsgid, fg, eg),
            ("setfsuid", libc::SYS_setfsuid, fu, eu),
        ] {
            if want != eff {
                call(what, nr, [want, 0, 0, 0, 0, 0])?;
                let now = call(what, nr, [u64::from(u32::MAX), 0, 0, 0, 0, 0])?;
                if now as u64 != want {
                    return Err(RestoreError::Creds {
                        tid: t.tid,
                        what: what.to_owned(),
                        source: std::io::Error::from_raw_os_error(libc::EPERM),
                    });
                }
            }
        }
        capset(
            "capset",
            c.cap_effective,
            c.cap_permitted,
            c.cap_inheritable,
        )?;
        for cap in 0..=last_cap.min(63) {
            if c.cap_ambient & (1 << cap) != 0 {
                prctl(
                    "PR_CAP_AMBIENT_RAISE",
                    [
                        libc::PR_CAP_AMBIENT as u64,
                        libc::PR_CAP_AMBIENT_RAISE as u64,
                        cap,
                        0,
                        0,
                    ],
                )?;
            }
        }
        prctl(
            "PR_SET_KEEPCAPS",
            [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0],
        )?;
        if c.no_new_privs {
            prctl(
                "PR_SET_NO_NEW_PRIVS",
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
            )?;
        }
    }
    // Changing the effective ids made the process non-dumpable: as it was.
    if let (Some(d), Some(&main)) = (p.dumpable, tids.first()) {
        let (r, _) = inj
            .syscall(
                main,
                libc::SYS_prctl,
                [libc::PR_SET_DUMPABLE as u64, u64::from(d), 0, 0, 0, 0],
            )
            .map_err(io("PR_SET_DUMPABLE"))?;
        if r < 0 {
            return Err(io("PR_SET_DUMPABLE")(std::io::Error::from_raw_os_error(
                -r as i32,
            )));
        }
    }
    Ok(())
}

/// Restores the image at `path`. The restored process is our child.
pub fn restore(path: &Path, device: &Path) -> Result<Restored, RestoreError> {
    let img = Image::open(path)?;
    let m = &img.manifest;
    if m.processes.len() != 1 {
        return Err(RestoreError::Processes(m.processes.len()));
    }
    let p = &m.processes[0];
    if p.threads.first().map(|t| t.tid) != Some(p.pid) {
        return Err(RestoreError::Image(ImageError::Corrupt {
            path: path.into(),
            what: "the first thread is not the main thread".into(),
        }));
    }
    let xstates = p
        .threads
        .iter()
        .map(|t| img.read_section(t.xstate_section))
        .collect::<Result<Vec<_>, _>>()?;
    // Opened (and its ABI checked) before anything else; the child uses this fd.
    let dev = crate::device::Device::open(device)?;
    // Mapped files are opened as the process's user, as it opened them.
    let fs_user = match p.threads[0].creds.as_ref() {
        Some(c) => Some(
            sys::as_fs_user(c.uid[3], c.gid[3], &c.groups)
                .map_err(io("taking the process's filesystem ids to open its files"))?,
        ),
        None => None,
    };
    let mut plan = plan(&img, p)?;
    drop(fs_user);
    plan.highest_own_fd = std::fs::read_dir("/proc/self/fd")
        .map_err(io("listing /proc/self/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .max()
        .unwrap_or(2);

    // The original pid if nobody has it.
    let want_pid = (!Path::new(&format!("/proc/{}", p.pid)).exists()).then_some(p.pid);
    let pid = match sys::fork_with_pid(want_pid) {
        Ok(pid) => pid,
        Err(e)
            if want_pid.is_some()
                && matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::EPERM)) =>
        {
            sys::fork_with_pid(None).map_err(io("clone3"))?
        }
        Err(e) => return Err(io("clone3")(e)),
    };
    if pid == 0 {
        child(p, &mut plan, &img.file, &dev);
    }
    // Parent. If anything fails from here, the child must die.
    let kill_child = |e: RestoreError| -> RestoreError {
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::waitpid(pid, 0);
        e
    };
    let status = sys::waitpid(pid, libc::__WALL)
        .map_err(io("waiting for the restorer"))
        .map_err(kill_child)?;
    if !libc::WIFSTOPPED(status) {
        return Err(kill_child(RestoreError::Child(libc::WEXITSTATUS(status))));
    }
    sys::ptrace_setoptions(pid, libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL)
        .map_err(io("PTRACE_SETOPTIONS"))
        .map_err(kill_child)?;
    // Let it prepare; it stops again (SIGSTOP, suppressed here) right before the ioctl.
    sys::ptrace_cont(pid, 0)
        .map_err(io("PTRACE_CONT"))
        .map_err(kill_child)?;
    loop {
        let status = sys::waitpid(pid, libc::__WALL)
            .map_err(io("waiting for the restorer"))
            .map_err(kill_child)?;
        if libc::WIFEXITED(status) {
            return Err(RestoreError::Child(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Err(RestoreError::Child(128 + libc::WTERMSIG(status)));
        }
        if libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGSTOP {
            break;
        }
        // Any other signal stop: keep going without delivering it (all are blocked anyway).
        sys::ptrace_cont(pid, 0)
            .map_err(io("PTRACE_CONT"))
            .map_err(kill_child)?;
    }
    let now = follow_to_restore_exit(pid).map_err(kill_child)?;
    if now.rax != 0 {
        let errno = -(now.rax as i64) as i32;
        return Err(kill_child(RestoreError::Ioctl(
            std::io::Error::from_raw_os_error(errno),
        )));
    }
    // The other threads: created by the main thread itself (clone3 injected through ptrace,
    // with their original tids when free), then given their own per-thread state.
    let inj = Injector::find(pid)
        .map_err(io("finding a syscall instruction"))
        .map_err(kill_child)?;
    let mut tids = vec![pid];
    if p.threads.len() > 1 {
        let extra = create_threads(&inj, pid, p).map_err(kill_child)?;
        tids.extend(extra);
    }
    // The main thread's rseq area, now that its memory is back.
    if let Some(rs) = p.threads[0].rseq {
        let (r, _) = inj
            .syscall(
                pid,
                libc::SYS_rseq,
                [rs.addr, u64::from(rs.len), 0, u64::from(rs.sig), 0, 0],
            )
            .map_err(io("rseq"))
            .map_err(kill_child)?;
        if r < 0 {
            let e = std::io::Error::from_raw_os_error(-r as i32);
            return Err(kill_child(io("registering the rseq area")(e)));
        }
    }
    // Thread names: a thread can only rename itself (prctl PR_SET_NAME). Informational, so a
    // failure here is not worth the process.
    {
        let scratch = scratch_area(p);
        for (t, &tid) in p.threads.iter().zip(&tids) {
            let comm = if t.comm.is_empty() && tid == pid {
                &p.comm
            } else {
                &t.comm
            };
            let mut name = comm.as_bytes()[..comm.len().min(15)].to_vec();
            name.push(0);
            if !comm.is_empty() && inj.poke(scratch, &name).is_ok() {
                let _ = inj.syscall(
                    tid,
                    libc::SYS_prctl,
                    [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0],
                );
            }
        }
    }
    if let Some(ic) = &p.interceptor {
        virtualize_ids(&inj, p, ic, &tids).map_err(kill_child)?;
    }
    // Last of all the injections: from here on the threads may have lost the privileges the
    // steps above needed.
    restore_creds(&inj, p, &tids).map_err(kill_child)?;
    for ((t, &tid), xstate) in p.threads.iter().zip(&tids).zip(&xstates) {
        let now = sys::ptrace_getregs(tid)
            .map_err(io("PTRACE_GETREGS"))
            .map_err(kill_child)?;
        let regs = resume_regs(&t.regs, &now);
        sys::ptrace_setregs(tid, &regs)
            .map_err(io("PTRACE_SETREGS"))
            .map_err(kill_child)?;
        sys::ptrace_set_xstate(tid, xstate)
            .map_err(io("PTRACE_SETREGSET NT_X86_XSTATE"))
            .map_err(kill_child)?;
        sys::ptrace_set_sigmask(tid, t.sigmask)
            .map_err(io("PTRACE_SETSIGMASK"))
            .map_err(kill_child)?;
    }
    for &tid in &tids {
        sys::ptrace_detach(tid, 0)
            .map_err(io("PTRACE_DETACH"))
            .map_err(kill_child)?;
    }
    // Signals that were pending: raised again. Blocked ones stay pending as they were; others
    // are delivered now, as they would have been. (Their siginfo is not carried over.)
    for sig in 1..=64u32 {
        let bit = 1u64 << (sig - 1);
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        if p.shared_pending & bit != 0 {
            sys::kill(pid, sig as i32).map_err(io("re-raising a pending signal"))?;
        }
        for (t, &tid) in p.threads.iter().zip(&tids) {
            if t.pending & bit != 0 {
                sys::tgkill(pid, tid, sig as i32).map_err(io("re-raising a pending signal"))?;
            }
        }
    }
    drop(plan);
    Ok(Restored {
        pid,
        original_pid: p.pid,
    })
}

/// Waits for a restored child; returns a shell-style exit status.
pub fn wait_exit_status(pid: i32) -> Result<i32, RestoreError> {
    let status = sys::waitpid(pid, 0).map_err(io("waiting for the restored process"))?;
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    })
}
