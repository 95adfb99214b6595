//! `ckpt checkpoint PID`: freeze a process with ptrace, record its state and memory into an
//! image, then let it go on (or kill it with `--kill`).
//!
//! The target is stopped with PTRACE_SEIZE + PTRACE_INTERRUPT, which its parent cannot see (no
//! SIGSTOP, no waitpid report) and which leaves its FPU state in memory. Registers and XSAVE
//! state come from ptrace; handlers, sigaltstack, clear_child_tid and the mm layout from the
//! module (`CKPT_IOC_DUMP_TASK`); mappings, page presence and contents, fds, cwd, umask and
//! rlimits from /proc. Any failure detaches and leaves the target running and untouched, and
//! no file under the final name.

use crate::device::{Device, QueryError};
use crate::image::{
    Backing, Fd, FdKind, ImageWriter, InterceptorState, Manifest, MmLayout, PageRun, Pipe, Process,
    Regs, RobustList, Rseq, SectionKind, SigAction, SigAltStack, SocketPair, Stats, Thread, Vma,
    FORMAT_VERSION, PAGE,
};
use crate::{proc, sys};
use ckpt_abi::CkptRange;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no such process: {0}")]
    NoSuchProcess(i32),
    #[error("process {0} is ckpt itself")]
    IsSelf(i32),
    #[error("process {0} is a kernel thread; only user processes can be checkpointed")]
    KernelThread(i32),
    #[error("process {0} is a zombie (it has exited and waits for its parent to reap it)")]
    Zombie(i32),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(
        "cannot attach to process {pid}: {source} (is it already being traced by a debugger?)"
    )]
    Attach { pid: i32, source: std::io::Error },
    #[error("cannot checkpoint fd {fd} of process {pid} ({target}): {why}")]
    UnsupportedFd {
        pid: i32,
        fd: i32,
        target: String,
        why: &'static str,
    },
    #[error("cannot checkpoint fd {fd} of process {pid} ({target}): {why}")]
    UnsupportedSocket {
        pid: i32,
        fd: i32,
        target: String,
        why: String,
    },
    #[error(
        "cannot checkpoint the mapping at {start:#x} of process {pid} ({name}): mappings of \
         deleted files, memfds and SysV shared memory are not supported yet"
    )]
    UnsupportedMapping { pid: i32, start: u64, name: String },
    #[error("process {pid}: {what}: {source}")]
    Io {
        pid: i32,
        what: String,
        source: std::io::Error,
    },
    #[error("writing the image {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Options<'a> {
    pub pid: i32,
    pub output: &'a Path,
    pub kill: bool,
    pub device: &'a Path,
    /// Do not use the interceptor even if the process runs under `ckpt run`.
    pub plain: bool,
    /// How long a single-threaded program's main thread may take to flush its stdio.
    pub flush_timeout: std::time::Duration,
}

/// Detaches from the target when dropped: whatever happens, the target runs on.
struct Seized {
    tids: Vec<i32>,
    active: bool,
}

impl Drop for Seized {
    fn drop(&mut self) {
        if self.active {
            for &tid in &self.tids {
                let _ = sys::ptrace_detach(tid, 0);
            }
        }
    }
}

/// Stops every thread of `pid` (seize + interrupt each, until no new thread appears) and
/// records them in `seized`. The main thread comes first.
fn freeze_all(pid: i32, seized: &mut Seized) -> Result<(), CheckpointError> {
    for _round in 0..100 {
        let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|_| CheckpointError::NoSuchProcess(pid))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_by_key(|&t| (t != pid, t));
        let new: Vec<i32> = tids
            .into_iter()
            .filter(|t| !seized.tids.contains(t))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        for tid in new {
            match sys::ptrace_seize(tid, 0) {
                Ok(()) => {}
                // Exited between the listing and now.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => continue,
                Err(source) => return Err(CheckpointError::Attach { pid, source }),
            }
            seized.tids.push(tid);
            sys::ptrace_interrupt(tid).map_err(io_err(pid, "PTRACE_INTERRUPT"))?;
            let status =
                sys::waitpid(tid, libc::__WALL).map_err(io_err(pid, "waiting for the stop"))?;
            if !libc::WIFSTOPPED(status) {
                seized.tids.pop();
                if tid == pid {
                    return Err(CheckpointError::NoSuchProcess(pid));
                }
            }
        }
    }
    Err(io_err(pid, "stopping its threads")(std::io::Error::other(
        "threads keep appearing",
    )))
}

/// System calls that fail with EINTR when a stop interrupts them, even with no signal handler
/// run (signal(7)): the kernel does not restart them after a freeze as it does the others.
const NEVER_RESTARTED: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_io_getevents,
    333, // io_pgetevents (not in the libc crate)
];

/// If frozen thread `tid` is about to return EINTR from one of `NEVER_RESTARTED` only because
/// of the freeze (no signal of its own deliverable), points it back at the call so that it is
/// made again (its timeout starts over), in the live process and in the image.
fn redo_interrupted_call(tid: i32) -> std::io::Result<()> {
    let mut r = sys::ptrace_getregs(tid)?;
    if !(NEVER_RESTARTED.contains(&(r.orig_rax as i64)) && r.rax as i64 == -(libc::EINTR as i64)) {
        return Ok(());
    }
    let (own, shared) = proc::pending_signals(tid)?;
    let blocked = sys::ptrace_get_sigmask(tid)?;
    if (own | shared) & !blocked != 0 {
        return Ok(()); // a real signal interrupts it: EINTR is the program's to see
    }
    r.rax = r.orig_rax;
    r.rip -= 2;
    sys::ptrace_setregs(tid, &r)
}

/// What is saved of one thread, before its XSAVE blob gets a section.
struct ThreadState {
    tid: i32,
    regs: Regs,
    xstate: Vec<u8>,
    sigmask: u64,
    rseq: Option<Rseq>,
    robust_list: RobustList,
    sigaltstack: SigAltStack,
    clear_child_tid: u64,
    pending: u64,
    comm: String,
    creds: crate::image::Creds,
}

fn capture_thread(dev: &Device, pid: i32, tid: i32) -> Result<ThreadState, CheckpointError> {
    let regs = sys::ptrace_getregs(tid).map_err(io_err(pid, "PTRACE_GETREGS"))?;
    let xstate =
        sys::ptrace_get_xstate(tid).map_err(io_err(pid, "PTRACE_GETREGSET NT_X86_XSTATE"))?;
    let sigmask = sys::ptrace_get_sigmask(tid).map_err(io_err(pid, "PTRACE_GETSIGMASK"))?;
    let rseq = match sys::ptrace_get_rseq(tid) {
        Ok(c) if c.rseq_abi_pointer != 0 => Some(Rseq {
            addr: c.rseq_abi_pointer,
            len: c.rseq_abi_size,
            sig: c.signature,
        }),
        Ok(_) => None,
        Err(e) => return Err(io_err(pid, "PTRACE_GET_RSEQ_CONFIGURATION")(e)),
    };
    let (head, len) = sys::get_robust_list(tid).map_err(io_err(pid, "get_robust_list"))?;
    let ts = dev.dump_task(tid)?;
    let (pending, _) =
        proc::pending_signals(tid).map_err(io_err(pid, "reading pending signals"))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_default();
    Ok(ThreadState {
        tid,
        regs: regs_from(&regs),
        xstate,
        sigmask,
        rseq,
        robust_list: RobustList { head, len },
        sigaltstack: SigAltStack {
            sp: ts.sas_ss_sp,
            size: ts.sas_ss_size,
            flags: ts.sas_ss_flags,
        },
        clear_child_tid: ts.clear_child_tid,
        pending,
        comm,
        creds: proc::creds(pid, tid).map_err(io_err(pid, "reading credentials"))?,
    })
}

fn io_err(pid: i32, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let what = what.into();
    move |source| CheckpointError::Io { pid, what, source }
}

/// Checks everything that can be checked without stopping the target.
fn precheck(pid: i32, dev: &Device) -> Result<proc::Stat, CheckpointError> {
    if pid == sys::getpid() {
        return Err(CheckpointError::IsSelf(pid));
    }
    let st = proc::stat(pid).map_err(|_| CheckpointError::NoSuchProcess(pid))?;
    const PF_KTHREAD: u64 = 0x0020_0000;
    if st.flags & PF_KTHREAD != 0 {
        return Err(CheckpointError::KernelThread(pid));
    }
    if st.state == 'Z' || st.state == 'X' {
        return Err(CheckpointError::Zombie(pid));
    }
    // The module applies ptrace's permission rule: fail here, before stopping anything.
    dev.query(pid, 0, &mut [])?;
    Ok(st)
}

fn regs_from(r: &libc::user_regs_struct) -> Regs {
    Regs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

/// Classifies an open descriptor.
fn fd_kind(pid: i32, e: &proc::FdEntry) -> Result<FdKind, CheckpointError> {
    let unsupported = |why| CheckpointError::UnsupportedFd {
        pid,
        fd: e.fd,
        target: e.target.clone(),
        why,
    };
    let is_stdio = (0..=2).contains(&e.fd);
    let outside = e.target.starts_with("pipe:")
        || e.target.starts_with("socket:")
        || e.target.starts_with("/dev/pts/")
        || e.target.starts_with("/dev/tty")
        || e.target == "/dev/console";
    if is_stdio && outside {
        return Ok(FdKind::InheritStdio {
            was: e.target.clone(),
        });
    }
    if e.target.ends_with(" (deleted)") {
        return Err(unsupported("deleted files are not supported yet"));
    }
    if e.target == "anon_inode:[eventpoll]" {
        return epoll_kind(pid, e);
    }
    let hex = |name: &str| {
        proc::fdinfo_field(pid, e.fd, name)
            .ok()
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .ok_or(CheckpointError::UnsupportedFd {
                pid,
                fd: e.fd,
                target: e.target.clone(),
                why: "its state is not readable in /proc/PID/fdinfo",
            })
    };
    if e.target == "anon_inode:[eventfd]" {
        return Ok(FdKind::EventFd {
            count: hex("eventfd-count")?,
            semaphore: proc::fdinfo_field(pid, e.fd, "eventfd-semaphore").is_ok_and(|v| v == "1"),
        });
    }
    if e.target == "anon_inode:[timerfd]" {
        // "it_value: (SECONDS, NANOSECONDS)", the time left; "it_interval: (...)".
        let ns = |name: &str| {
            proc::fdinfo_field(pid, e.fd, name).ok().and_then(|v| {
                let (s, n) = v.trim_matches(|c| c == '(' || c == ')').split_once(',')?;
                let (s, n): (u64, u64) = (s.trim().parse().ok()?, n.trim().parse().ok()?);
                s.checked_mul(1_000_000_000)?.checked_add(n)
            })
        };
        let num = |name: &str| {
            proc::fdinfo_field(pid, e.fd, name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
        };
        return match (
            num("clockid"),
            ns("it_value"),
            ns("it_interval"),
            num("ticks"),
        ) {
            (Some(clockid), Some(value_ns), Some(interval_ns), Some(ticks)) => {
                Ok(FdKind::TimerFd {
                    clockid: clockid as i32,
                    value_ns,
                    interval_ns,
                    ticks,
                })
            }
            _ => Err(CheckpointError::UnsupportedFd {
                pid,
                fd: e.fd,
                target: e.target.clone(),
                why: "its timer is not readable in /proc/PID/fdinfo",
            }),
        };
    }
    if e.target == "anon_inode:[signalfd]" {
        return Ok(FdKind::SignalFd {
            mask: hex("sigmask")?,
        });
    }
    if !e.target.starts_with('/') {
        return Err(unsupported(
            "pipes, sockets and other special files are not supported yet",
        ));
    }
    let meta =
        std::fs::metadata(format!("/proc/{pid}/fd/{}", e.fd)).map_err(io_err(pid, "stat fd"))?;
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() || ft.is_dir() || ft.is_char_device() {
        Ok(FdKind::Path {
            path: e.target.clone(),
            pos: e.pos,
        })
    } else {
        Err(unsupported(
            "only regular files, directories and character devices are supported",
        ))
    }
}

/// A process's interceptor during a checkpoint: the connection (kept open until the dump is
/// over) and its answer. Its fds are not the program's: they are in the control thread's own
/// fd table.
struct Interceptor {
    client: crate::interceptor::Client,
    ready: crate::interceptor::Ready,
    app_id: String,
}

/// An epoll instance: what it watches, each watched file checked to still be the process's
/// fd of the number it was added under (epoll keeps watching a file after that fd is closed).
fn epoll_kind(pid: i32, e: &proc::FdEntry) -> Result<FdKind, CheckpointError> {
    let unsupported = |why: String| CheckpointError::UnsupportedSocket {
        pid,
        fd: e.fd,
        target: e.target.clone(),
        why,
    };
    let watches =
        proc::epoll_watches(pid, e.fd).map_err(io_err(pid, "reading an epoll instance"))?;
    let mut out = Vec::new();
    for (fd, events, data, ino) in watches {
        use std::os::unix::fs::MetadataExt;
        let same = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|m| m.ino() == ino);
        if !same {
            return Err(unsupported(format!(
                "it watches a file that is no longer open as fd {fd}"
            )));
        }
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        if target == "anon_inode:[eventpoll]" {
            return Err(unsupported(
                "epoll instances watching other epoll instances are not supported yet".into(),
            ));
        }
        out.push(crate::image::EpollWatch { fd, events, data });
    }
    Ok(FdKind::Epoll { watches: out })
}

/// Records the descriptors: pipes with both ends inside (and their unread bytes, peeked with
/// tee(2) so the target loses nothing), deleted files (with their content), and the rest by
/// `fd_kind`.
fn dump_fds(
    pid: i32,
    entries: &[proc::FdEntry],
    w: &mut ImageWriter,
    image_path: &Path,
) -> Result<DumpedFds, CheckpointError> {
    let write_err = |source| CheckpointError::Write {
        path: image_path.into(),
        source,
    };
    let pipe_inode = |t: &str| proc::bracketed_inode(t, "pipe");
    let socket_inode = |t: &str| proc::bracketed_inode(t, "socket");
    let accmode = |e: &proc::FdEntry| e.flags as i32 & libc::O_ACCMODE;
    // inode -> (a read end fd, has a write end)
    let mut ends: BTreeMap<u64, (Option<i32>, bool)> = BTreeMap::new();
    for e in entries {
        if let Some(ino) = pipe_inode(&e.target) {
            let slot = ends.entry(ino).or_default();
            if accmode(e) == libc::O_RDONLY {
                slot.0.get_or_insert(e.fd);
            } else {
                slot.1 = true;
            }
        }
    }
    let mut pipes: Vec<Pipe> = Vec::new();
    let mut pipe_index: BTreeMap<u64, usize> = BTreeMap::new();
    let mut socket_pairs: Vec<SocketPair> = Vec::new();
    let mut pair_index: BTreeMap<u64, usize> = BTreeMap::new();
    let mut fds = Vec::new();
    for e in entries {
        let unsupported_socket = |why| CheckpointError::UnsupportedSocket {
            pid,
            fd: e.fd,
            target: e.target.clone(),
            why,
        };
        // Sockets other than stdio: one copy of the fd serves both questions (a socket pair's
        // end, else a listening socket).
        let socket = match socket_inode(&e.target).filter(|_| e.fd > 2) {
            Some(ino) => Some((
                ino,
                sys::steal_fd(pid, e.fd)
                    .map_err(|err| unsupported_socket(format!("pidfd_getfd: {err}")))?,
            )),
            None => None,
        };
        let pair_end = match &socket {
            Some((ino, ours)) => {
                crate::socket::unix_stream_end(std::os::fd::AsRawFd::as_raw_fd(ours), *ino)
                    .map_err(unsupported_socket)?
                    .filter(|end| {
                        entries
                            .iter()
                            .any(|o| socket_inode(&o.target) == Some(end.peer))
                    })
            }
            None => None,
        };
        let kind = if let Some(end) = pair_end {
            // Both ends are the process's: a socket pair, with what waits at this end.
            let key = end.inode.min(end.peer);
            let which = usize::from(end.inode > end.peer);
            let idx = match pair_index.get(&key) {
                Some(&i) => i,
                None => {
                    socket_pairs.push(SocketPair {
                        inodes: [key, end.inode.max(end.peer)],
                        data_sections: [None, None],
                    });
                    pair_index.insert(key, socket_pairs.len() - 1);
                    socket_pairs.len() - 1
                }
            };
            if !end.queued.is_empty() && socket_pairs[idx].data_sections[which].is_none() {
                socket_pairs[idx].data_sections[which] = Some(
                    w.add_blob(SectionKind::SocketData, &end.queued)
                        .map_err(write_err)?,
                );
            }
            FdKind::SocketPairEnd {
                pair: idx,
                end: which,
            }
        } else if let Some((ino, ours)) = &socket {
            crate::socket::dump(pid, std::os::fd::AsRawFd::as_raw_fd(ours), *ino)
                .map_err(unsupported_socket)?
        } else if let Some(ino) = pipe_inode(&e.target) {
            match ends.get(&ino) {
                Some(&(Some(read_fd), true)) => {
                    let idx = match pipe_index.get(&ino) {
                        Some(&i) => i,
                        None => {
                            let ours =
                                sys::steal_fd(pid, read_fd).map_err(io_err(pid, "pidfd_getfd"))?;
                            let fd = std::os::fd::AsRawFd::as_raw_fd(&ours);
                            let capacity =
                                sys::pipe_size(fd).map_err(io_err(pid, "F_GETPIPE_SZ"))?;
                            let data =
                                sys::peek_pipe(fd).map_err(io_err(pid, "reading pipe data"))?;
                            let data_section = if data.is_empty() {
                                None
                            } else {
                                Some(
                                    w.add_blob(SectionKind::PipeData, &data)
                                        .map_err(write_err)?,
                                )
                            };
                            pipes.push(Pipe {
                                inode: ino,
                                capacity,
                                data_section,
                            });
                            pipe_index.insert(ino, pipes.len() - 1);
                            pipes.len() - 1
                        }
                    };
                    FdKind::Pipe {
                        pipe: idx,
                        write_end: accmode(e) != libc::O_RDONLY,
                    }
                }
                _ => fd_kind(pid, e)?,
            }
        } else if let Some(path) = e
            .target
            .strip_suffix(" (deleted)")
            .filter(|p| p.starts_with('/'))
        {
            let proc_path = format!("/proc/{pid}/fd/{}", e.fd);
            let meta = std::fs::metadata(&proc_path).map_err(io_err(pid, "stat deleted file"))?;
            if !meta.is_file() {
                return Err(CheckpointError::UnsupportedFd {
                    pid,
                    fd: e.fd,
                    target: e.target.clone(),
                    why: "only deleted regular files are supported",
                });
            }
            let data = std::fs::read(&proc_path).map_err(io_err(pid, "reading a deleted file"))?;
            let data_section = w
                .add_blob(SectionKind::FileData, &data)
                .map_err(write_err)?;
            use std::os::unix::fs::PermissionsExt;
            FdKind::Deleted {
                path: path.to_owned(),
                pos: e.pos,
                mode: meta.permissions().mode(),
                data_section,
            }
        } else {
            fd_kind(pid, e)?
        };
        fds.push(Fd {
            fd: e.fd,
            flags: e.flags,
            kind,
        });
    }
    Ok(DumpedFds {
        fds,
        pipes,
        socket_pairs,
    })
}

/// What `dump_fds` records.
struct DumpedFds {
    fds: Vec<Fd>,
    pipes: Vec<Pipe>,
    socket_pairs: Vec<SocketPair>,
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// The ranges of `m` whose pages must be stored: present or swapped pages, except a private
/// file mapping's clean pages (they come from the file). Shared file mappings and kernel
/// mappings store nothing.
fn wanted_ranges(
    pid: i32,
    m: &proc::MapEntry,
    pagemap: &File,
    stats: &mut Stats,
    out: &mut Vec<CkptRange>,
) -> Result<(), CheckpointError> {
    if m.is_special() || (m.shared && m.is_file()) {
        return Ok(());
    }
    let anonymous = !m.is_file();
    let npages = ((m.end - m.start) / PAGE) as usize;
    const BATCH: usize = 4096;
    let mut entries = vec![0u8; BATCH * 8];
    let mut first = 0usize;
    while first < npages {
        let n = BATCH.min(npages - first);
        let addr0 = m.start + first as u64 * PAGE;
        pagemap
            .read_exact_at(&mut entries[..n * 8], addr0 / PAGE * 8)
            .map_err(io_err(pid, "reading /proc/PID/pagemap"))?;
        stats.pages_scanned += n as u64;
        for (i, e) in entries[..n * 8].chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().unwrap());
            if e & (PM_PRESENT | PM_SWAP) == 0 || (e & PM_FILE != 0 && !anonymous) {
                continue;
            }
            let addr = addr0 + i as u64 * PAGE;
            match out.last_mut() {
                Some(r) if r.end == addr => r.end += PAGE,
                _ => out.push(CkptRange {
                    start: addr,
                    end: addr + PAGE,
                }),
            }
        }
        first += n;
    }
    Ok(())
}

/// Takes the checkpoint. Returns the statistics (also stored in the image).
pub fn checkpoint(opts: &Options) -> Result<Stats, CheckpointError> {
    let t0 = Instant::now();
    let pid = opts.pid;
    let dev = Device::open(opts.device).map_err(|e| CheckpointError::Io {
        pid,
        what: "opening the ckpt device".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let st = precheck(pid, &dev)?;

    // Under `ckpt run`: the interceptor flushes and tells where its state is, then waits while
    // we freeze and dump.
    let flush_t0 = Instant::now();
    let mut interceptor = None;
    let location = crate::interceptor::locate(pid);
    if !opts.plain {
        if let Some(conn) = crate::interceptor::Client::connect(pid) {
            match conn.and_then(|mut c| c.prepare().map(|r| (c, r))) {
                Ok((client, ready)) => {
                    interceptor = Some(Interceptor {
                        client,
                        app_id: location
                            .as_ref()
                            .map(|l| l.app_id.clone())
                            .unwrap_or_default(),
                        ready,
                    })
                }
                Err(e) => eprintln!("ckpt: {e}; taking the plain path (nothing flushed)"),
            }
        }
    }
    let flush_us = if interceptor.is_some() {
        flush_t0.elapsed().as_micros() as u64
    } else {
        0
    };

    // Freeze every thread.
    let mut seized = Seized {
        tids: Vec::new(),
        active: true,
    };
    let mut frozen_at = Instant::now();
    freeze_all(pid, &mut seized)?;
    let mut stdio_flushed = interceptor
        .as_ref()
        .is_some_and(|i| i.ready.stdio == "done");
    if let Some(i) = interceptor
        .as_ref()
        .filter(|i| i.ready.stdio == "infcall" && i.ready.flush_addr != 0 && i.ready.flush_ctx != 0)
    {
        // A single-threaded program: flush its stdio from its own main thread, once that is
        // at a safe point (let it run a little between tries).
        let mut why = "it never stopped at a safe point";
        let mut safe = false;
        for _ in 0..100 {
            // Still the program's one thread (plus the control thread)? If it made another
            // since PREPARE, stdio is locked and the main thread must not flush.
            let only_main = seized.tids.len() == 2 && seized.tids.contains(&i.ready.ctl_tid);
            if !only_main {
                why = "it has started threads";
                break;
            }
            let r = sys::ptrace_getregs(pid).map_err(io_err(pid, "PTRACE_GETREGS"))?;
            // Not while it runs a signal handler on its alternate stack (it may have
            // interrupted stdio code; with SS_AUTODISARM this cannot be seen).
            let ts = dev.dump_task(pid)?;
            let on_altstack = ts.sas_ss_size != 0
                && r.rsp >= ts.sas_ss_sp
                && r.rsp < ts.sas_ss_sp + ts.sas_ss_size;
            if !on_altstack && crate::flush::at_safe_point(pid, &r) {
                safe = true;
                break;
            }
            for tid in seized.tids.drain(..) {
                let _ = sys::ptrace_detach(tid, 0);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            frozen_at = Instant::now();
            freeze_all(pid, &mut seized)?;
        }
        if safe {
            match crate::flush::call_flush(
                pid,
                i.ready.flush_addr,
                i.ready.flush_ctx,
                opts.flush_timeout,
            ) {
                Ok(crate::flush::Flushed::Done(_)) => stdio_flushed = true,
                Ok(crate::flush::Flushed::Stuck) => eprintln!(
                    "ckpt: stdio of process {pid} not flushed within {:.1} s (is its output \
                     blocked?); it is saved in the middle of the flush and finishes it when it \
                     runs",
                    opts.flush_timeout.as_secs_f64()
                ),
                Err(e) => return Err(io_err(pid, "flushing stdio")(e)),
            }
        } else {
            eprintln!(
                "ckpt: stdio of process {pid} not flushed: {why} (its buffers are in the image \
                 and get written after a restore)"
            );
        }
    } else if let Some(i) = interceptor.as_ref().filter(|i| i.ready.stdio != "done") {
        eprintln!(
            "ckpt: stdio of process {pid} not flushed ({}): its buffers are in the image and \
             get written after a restore",
            i.ready.stdio
        );
    }

    // A thread the freeze took out of a call the kernel never restarts (epoll_wait...) holds
    // EINTR for the program: make it redo the call instead, as it does for the others.
    for &tid in &seized.tids {
        redo_interrupted_call(tid).map_err(io_err(pid, "redoing an interrupted call"))?;
    }

    // Thread state.
    let threads = seized
        .tids
        .iter()
        .map(|&tid| capture_thread(&dev, pid, tid))
        .collect::<Result<Vec<_>, _>>()?;
    let ts = dev.dump_task(pid)?;
    let (_, shared_pending) =
        proc::pending_signals(pid).map_err(io_err(pid, "reading pending signals"))?;

    // Process state from /proc.
    let fd_entries = proc::fds(pid).map_err(io_err(pid, "listing fds"))?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(io_err(pid, "reading cwd"))?;
    let exe =
        std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned());
    let umask = proc::umask(pid).map_err(io_err(pid, "reading umask"))?;
    let mut rlimits = Vec::new();
    for resource in 0..16u32 {
        let (cur, max) = sys::prlimit_get(pid, resource).map_err(io_err(pid, "prlimit"))?;
        rlimits.push(crate::image::Rlimit { resource, cur, max });
    }
    let maps = proc::smaps(pid).map_err(io_err(pid, "reading smaps"))?;
    // A mapping of a file that no longer has a name (memfd, SysV shm, a deleted file) cannot
    // be mapped again by path: refuse now rather than fail at restore.
    if let Some(m) = maps
        .iter()
        .find(|m| m.is_file() && m.name.ends_with(" (deleted)"))
    {
        return Err(CheckpointError::UnsupportedMapping {
            pid,
            start: m.start,
            name: m.name.clone(),
        });
    }

    // Memory: the module copies the pages straight into the image file.
    let mut w = ImageWriter::create(opts.output).map_err(|source| CheckpointError::Write {
        path: opts.output.into(),
        source,
    })?;
    let write_err = |source| CheckpointError::Write {
        path: opts.output.into(),
        source,
    };
    let mut stats = Stats {
        interceptor: interceptor.is_some(),
        stdio_flushed,
        flush_us,
        ..Stats::default()
    };
    let mem_t0 = Instant::now();
    let pagemap =
        File::open(format!("/proc/{pid}/pagemap")).map_err(io_err(pid, "opening pagemap"))?;
    let maps: Vec<_> = maps
        .into_iter()
        .filter(|m| m.name != "[vsyscall]")
        .collect();
    // Zero pages are left out of anonymous memory only: a zero page of a private file
    // mapping differs from the file's page.
    let (mut anon_ranges, mut file_ranges) = (Vec::new(), Vec::new());
    for m in &maps {
        let out = if m.is_file() {
            &mut file_ranges
        } else {
            &mut anon_ranges
        };
        wanted_ranges(pid, m, &pagemap, &mut stats, out)?;
    }
    let mut runs: Vec<ckpt_abi::CkptRestoreRun> = Vec::new();
    for (set, skip_zero) in [(anon_ranges, true), (file_ranges, false)] {
        if set.is_empty() {
            continue;
        }
        let offset = w.external_pages_offset().map_err(write_err)?;
        let r =
            dev.dump_pages(pid, w.file(), &set, offset, skip_zero)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
                    | Some(libc::EIO) => CheckpointError::Write {
                        path: opts.output.into(),
                        source: e,
                    },
                    _ => io_err(pid, "dumping pages")(e),
                })?;
        w.external_pages_written(r.bytes_written)
            .map_err(write_err)?;
        stats.pages_written += r.bytes_written / PAGE;
        stats.pages_skipped_zero += r.pages_zero;
        runs.extend(r.runs);
    }
    runs.sort_by_key(|r| r.addr);
    let mut vmas = Vec::new();
    for m in &maps {
        // The module merges pages that follow each other in memory and in the file, also
        // across adjacent mappings: cut the runs at this mapping's bounds.
        let pages = runs
            .iter()
            .filter(|r| r.addr < m.end && m.start < r.addr + r.len)
            .map(|r| {
                let start = r.addr.max(m.start);
                let end = (r.addr + r.len).min(m.end);
                PageRun {
                    addr: start,
                    len: end - start,
                    offset: r.image_offset + (start - r.addr),
                }
            })
            .collect();
        let backing = if m.is_special() {
            Backing::Special {
                name: m.name.clone(),
            }
        } else if m.is_file() {
            Backing::File {
                path: m.name.clone(),
                offset: m.offset,
                dev: m.dev.clone(),
                inode: m.inode,
            }
        } else {
            Backing::Anonymous
        };
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot: u32::from(m.read) | u32::from(m.write) << 1 | u32::from(m.exec) << 2,
            shared: m.shared,
            growsdown: m.has_flag("gd"),
            backing,
            pages,
        });
    }
    stats.memdump_us = mem_t0.elapsed().as_micros() as u64;
    let mut xstate_sections = Vec::new();
    for t in &threads {
        xstate_sections.push(
            w.add_blob(SectionKind::Xstate, &t.xstate)
                .map_err(write_err)?,
        );
    }

    let DumpedFds {
        fds,
        pipes,
        socket_pairs,
    } = dump_fds(pid, &fd_entries, &mut w, opts.output)?;
    // Ids as the application sees them (they differ from the kernel's after a restore that
    // could not get the original ones back).
    let to_virtual = |k: i32| interceptor.as_ref().map_or(k, |i| i.ready.to_virtual(k));

    let sigactions = ts
        .sigactions
        .iter()
        .enumerate()
        .filter(|(_, a)| a.handler != 0 || a.flags != 0 || a.mask != 0 || a.restorer != 0)
        .map(|(i, a)| SigAction {
            signo: i as u32 + 1,
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        })
        .collect();
    let process = Process {
        pid: to_virtual(pid),
        ppid: to_virtual(st.ppid),
        comm: st.comm.clone(),
        exe: exe.unwrap_or_default(),
        cwd: cwd.to_string_lossy().into_owned(),
        umask,
        personality: ts.personality,
        rlimits,
        mm: MmLayout::from(&ts.mm),
        vmas,
        sigactions,
        fds,
        threads: threads
            .iter()
            .zip(&xstate_sections)
            .map(|(t, &xstate_section)| Thread {
                tid: to_virtual(t.tid),
                kernel_tid: (to_virtual(t.tid) != t.tid).then_some(t.tid),
                own_files: proc::has_own_files(pid, t.tid),
                creds: Some(t.creds.clone()),
                regs: t.regs,
                xstate_section,
                sigmask: t.sigmask,
                sigaltstack: t.sigaltstack,
                clear_child_tid: t.clear_child_tid,
                robust_list: t.robust_list,
                rseq: t.rseq,
                pending: t.pending,
                comm: t.comm.clone(),
            })
            .collect(),
        shared_pending,
        pipes,
        socket_pairs,
        dumpable: threads
            .first()
            .and_then(|t| proc::dumpable(pid, t.creds.uid[1])),
        interceptor: interceptor.as_ref().map(|i| InterceptorState {
            app_id: i.app_id.clone(),
            ctl_addr: i.ready.ctl,
            tid_offset: i.ready.tid_offset,
            fsynced_files: i.ready.fsynced,
        }),
    };
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        ckpt_version: env!("CARGO_PKG_VERSION").into(),
        arch: std::env::consts::ARCH.into(),
        kernel_release: proc::kernel_release(),
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        sections: w.sections().to_vec(),
        processes: vec![process],
        stats: None,
    };
    // Everything of the target is captured: unless it is to be killed, let it go now and
    // finish the image (checksums, manifest, fsync) while it runs.
    if !opts.kill {
        seized.active = false;
        for &tid in &seized.tids {
            sys::ptrace_detach(tid, 0).map_err(io_err(pid, "PTRACE_DETACH"))?;
        }
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
        if let Some(i) = interceptor.take() {
            i.client.done();
        }
    }
    w.checksum_external().map_err(write_err)?;
    manifest.sections = w.sections().to_vec();
    if opts.kill {
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
    }
    stats.total_us = t0.elapsed().as_micros() as u64;
    manifest.stats = Some(stats);
    let size = w.finish(&manifest).map_err(write_err)?;
    stats.image_bytes = size;
    if opts.kill {
        // Killed while still stopped, so it never runs past the checkpoint.
        sys::kill(pid, libc::SIGKILL).map_err(io_err(pid, "kill"))?;
        seized.active = false;
        // Collect the other threads first: the main thread is reported only after them.
        for &tid in seized.tids.iter().rev() {
            let _ = sys::waitpid(tid, libc::__WALL);
        }
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
    }
    stats.total_us = t0.elapsed().as_micros() as u64;
    Ok(stats)
}
