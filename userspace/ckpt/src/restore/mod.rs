//! `ckpt restore FILE`: the sequence of docs/design.md, "Restore".
//!
//! 1. The image is verified completely (every checksum) before any process is created, and
//!    everything the restorers need is prepared (`prepare`): mapped files opened as each
//!    process's user, the kernel mappings checked, the fds' data read.
//! 2. The root's restorer is forked with the original pid; it forks its children's, and so
//!    on down the tree (`restorer`); each reports its kernel pid and stops.
//! 3. We trace every restorer and follow each to the exit of its restore ioctl
//!    (`supervise`); there, every other thread is created and given its state, then the ids,
//!    credentials, registers (`finish_threads`).
//! 4. We detach, children first: the tree continues where it was checkpointed; pending
//!    signals are raised again.
//!
//! Any failure before the detach kills the whole tree: a half-restored process never runs.

mod pidns;
mod restorer;
mod supervise;

use crate::creds::as_fs_user;
use crate::errors::{restore_io, RestoreError};
use crate::inject::Injector;
use crate::manifest::{Image, Process};
use crate::{fds, memory, sys, thread, vdso};
use nix::sys::ptrace;
use nix::unistd::Pid;
use restorer::{Plan, Restorers};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

/// How to restore.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Into a new pid namespace even if every pid is free here.
    pub pidns: bool,
}

/// Where the restored tree went.
pub struct Restored {
    /// The root's pid, as we see it.
    pub pid: i32,
    pub original_pid: i32,
    /// Live processes restored.
    pub processes: usize,
    /// Our child whose exit status is the root's: the root, or the pid namespace's init.
    pub wait_pid: i32,
    /// Restored into a new pid namespace: (original pid, pid as we see it) per process.
    pub pidns: Option<Vec<(i32, i32)>>,
}

/// Restores the image at `path`. The restored root process (or the pid namespace's init) is
/// our child.
pub fn restore(path: &Path, device: &Path, opts: &Options) -> Result<Restored, RestoreError> {
    let img = Image::open(path)?;
    let m = &img.manifest;
    let xstates = m
        .processes
        .iter()
        .map(|p| {
            p.threads
                .iter()
                .map(|t| img.read_section(t.xstate_section))
                .collect()
        })
        .collect::<Result<Vec<Vec<_>>, _>>()?;
    // Opened (and its ABI checked) before anything else; the restorers use this fd.
    let dev = crate::device::Device::open(device)?;
    let shared = make_shared(&img)?;
    let plans = m
        .processes
        .iter()
        .map(|p| prepare(&img, p, &shared.memory))
        .collect::<Result<_, _>>()?;
    let pipe = || nix::unistd::pipe().map_err(|e| restore_io("pipe")(e.into()));
    let ((report_in, report_out), (go, go_out)) = (pipe()?, pipe()?);
    let mut restorers = Restorers {
        manifest: m,
        plans,
        image: &img.file,
        dev: &dev,
        report: report_out,
        go,
        go_writer: std::os::fd::AsRawFd::as_raw_fd(&go_out),
        any_pid: m.processes.len() == 1 && m.zombies.is_empty() && !opts.pidns,
        highest_own_fd: highest_own_fd()?,
        shared,
    };
    // Our children: the roots' restorers, or the pid namespace's init that forks them.
    let in_pidns = pidns::needed(m, opts.pidns);
    let mut roots = Vec::new();
    if in_pidns {
        roots.push(pidns::fork_init(&mut restorers, &m.roots())?);
    } else {
        for i in m.roots() {
            match fork_root(&mut restorers, i) {
                Ok(pid) => roots.push(pid),
                Err(e) => {
                    for &pid in &roots {
                        let _ = sys::kill(pid, libc::SIGKILL);
                    }
                    return Err(e);
                }
            }
        }
    }
    drop(restorers);
    // If anything fails from here, the whole tree must die: each restorer dies with its
    // parent, and every restored process is killed (it is also traced with exit-kill).
    let reported = read_reports(report_in);
    let kernel: Vec<i32> = m
        .processes
        .iter()
        .map(|p| reported.get(&p.pid).copied().unwrap_or(0))
        .collect();
    let kill_tree = |e: RestoreError| -> RestoreError {
        for &pid in kernel.iter().chain(&roots).filter(|&&p| p > 0) {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        for &pid in &roots {
            let _ = sys::waitpid(pid, 0);
        }
        e
    };
    if let Some(p) = m.processes.iter().zip(&kernel).find(|(_, &k)| k == 0) {
        eprintln!(
            "ckpt restore: the restorer of process {} failed (see above)",
            p.0.pid
        );
        return Err(kill_tree(RestoreError::Child(1)));
    }
    for &pid in &kernel {
        supervise::attach(pid).map_err(kill_tree)?;
    }
    drop(go_out); // every restorer goes on
    let mut all_tids = Vec::new();
    for ((p, &pid), xstates) in m.processes.iter().zip(&kernel).zip(&xstates) {
        supervise::to_restore_exit(pid).map_err(kill_tree)?;
        all_tids.push(finish_threads(pid, p, xstates).map_err(kill_tree)?);
    }
    // Children first: a parent that runs finds its children running.
    for tids in all_tids.iter().rev() {
        for &tid in tids {
            ptrace::detach(Pid::from_raw(tid), None)
                .map_err(|e| kill_tree(restore_io("PTRACE_DETACH")(e.into())))?;
        }
    }
    for ((p, &pid), tids) in m.processes.iter().zip(&kernel).zip(&all_tids) {
        let per_thread: Vec<u64> = p.threads.iter().map(|t| t.pending).collect();
        crate::signals::raise_pending(pid, p.shared_pending, &per_thread, tids)
            .map_err(restore_io("re-raising a pending signal"))?;
    }
    Ok(Restored {
        pid: kernel[0],
        original_pid: m.processes[0].pid,
        processes: m.processes.len(),
        wait_pid: roots[0],
        pidns: in_pidns.then(|| {
            m.processes
                .iter()
                .map(|p| p.pid)
                .zip(kernel.iter().copied())
                .collect()
        }),
    })
}

/// The tree's pipes and socket pairs with their bytes, above every fd number of the image.
fn make_shared(img: &Image) -> Result<fds::SharedFds, RestoreError> {
    let m = &img.manifest;
    let highest = m
        .processes
        .iter()
        .flat_map(|p| &p.files.fds)
        .map(|f| f.fd)
        .max();
    let read = |i| img.read_section(i).map_err(std::io::Error::other);
    let whole = (&img.file, img.sections.as_slice());
    let envs: Vec<fds::HolderEnv> = m
        .processes
        .iter()
        .map(|p| fds::HolderEnv {
            cwd: &p.attrs.cwd,
            umask: p.attrs.umask,
            creds: p.threads.first().and_then(|t| t.creds.as_ref()),
        })
        .collect();
    let min = highest.unwrap_or(2).max(2) + 1;
    fds::SharedFds::make(&m.shared, read, whole, &envs, min)
        .map_err(restore_io("recreating the tree's pipes and socket pairs"))
}

/// The highest fd open in ckpt now: the restorers' working fds go above it.
fn highest_own_fd() -> Result<i32, RestoreError> {
    Ok(std::fs::read_dir("/proc/self/fd")
        .map_err(restore_io("listing /proc/self/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .max()
        .unwrap_or(2))
}

/// Forks the restorer of root `index` (which forks the rest of its tree): with the original
/// pid if nobody has it, else (a lone process only) any. Returns its pid.
fn fork_root(r: &mut Restorers, index: usize) -> Result<i32, RestoreError> {
    let want = r.manifest.processes[index].pid;
    let me = nix::unistd::getpid();
    let free = !Path::new(&format!("/proc/{want}")).exists();
    let pid = match sys::fork_with_pid(free.then_some(want)) {
        Ok(pid) => pid,
        Err(e)
            if free
                && r.any_pid
                && matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EPERM)) =>
        {
            sys::fork_with_pid(None).map_err(restore_io("clone3"))?
        }
        Err(e) => return Err(restore_io("clone3")(e)),
    };
    if pid == 0 {
        restorer::run(r, index, me);
    }
    if pid != want && !r.any_pid {
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::waitpid(pid, 0);
        return Err(restore_io(format!("pid {want} is taken on this machine"))(
            std::io::Error::other(
                "a process tree needs its original pids (restoring into a new pid namespace is \
                 not supported yet)",
            ),
        ));
    }
    Ok(pid)
}

/// Reads "ORIGINAL KERNEL" lines until every restorer has reported or died (end of file):
/// original pid -> kernel pid.
fn read_reports(report: OwnedFd) -> BTreeMap<i32, i32> {
    let mut text = String::new();
    let _ = std::fs::File::from(report).read_to_string(&mut text);
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Everything the restorer needs, before the fork. Mapped files are opened as the
/// process's user, as it opened them.
fn prepare(img: &Image, p: &Process, shm: &[OwnedFd]) -> Result<Plan, RestoreError> {
    let specials = vdso::check(&p.memory.vmas)?;
    let fs_user = match p.threads[0].creds.as_ref() {
        Some(c) => Some(
            as_fs_user(c.uid[3], c.gid[3], &c.groups).map_err(restore_io(
                "taking the process's filesystem ids to open its files",
            ))?,
        ),
        None => None,
    };
    let memory = memory::plan(&p.memory.vmas, shm)?;
    drop(fs_user);
    let blobs = fds::blob_sections(&p.files)
        .into_iter()
        .map(|i| Ok((i, img.read_section(i)?)))
        .collect::<Result<_, RestoreError>>()?;
    Ok(Plan {
        memory,
        specials,
        blobs,
    })
}

/// At the restore ioctl's exit, the address space being the image's: the other threads are
/// created by the main thread itself (clone3 injected through ptrace, with their original
/// tids when free) and given their own state; then the main thread's rseq, names, the
/// interceptor's ids, credentials (last of the injections: from there on the threads may
/// lack the privileges the others needed), and finally registers. Returns the kernel tids.
fn finish_threads(pid: i32, p: &Process, xstates: &[Vec<u8>]) -> Result<Vec<i32>, RestoreError> {
    let inj = Injector::find(pid).map_err(restore_io("finding a syscall instruction"))?;
    let mut tids = vec![pid];
    if p.threads.len() > 1 {
        tids.extend(thread::create_others(&inj, pid, &p.threads)?);
    }
    thread::register_rseq(&inj, pid, &p.threads[0])?;
    thread::set_names(&inj, &p.threads, &tids, &p.attrs.comm);
    // The restorer's own traces: its parent-death signal, and signals that came while it
    // had every signal blocked (its children stopping or exiting); the image's pending
    // signals are raised again once it runs.
    let scratch = thread::scratch_area(&p.threads);
    thread::call(
        &inj,
        pid,
        "PR_SET_PDEATHSIG",
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
    )?;
    crate::signals::discard_pending(&inj, pid, scratch)?;
    p.attrs.restore_exe(&inj, pid, scratch);
    if let Some(ic) = &p.interceptor {
        // The ids the process sees (inside a new pid namespace, not ours).
        let seen: Vec<i32> = tids
            .iter()
            .map(|&t| crate::proc::tid_seen_inside(pid, t))
            .collect();
        ic.restore_ids(&inj, &p.threads, &seen)
            .map_err(restore_io("filling the interceptor's id table"))?;
    }
    crate::creds::restore(&inj, &p.threads, &tids, p.attrs.dumpable)?;
    thread::set_final_state(&p.threads, &tids, xstates)?;
    Ok(tids)
}

/// Waits for a restored child; returns a shell-style exit status.
pub fn wait_exit_status(pid: i32) -> Result<i32, RestoreError> {
    let status = sys::waitpid(pid, 0).map_err(restore_io("waiting for the restored process"))?;
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    })
}
