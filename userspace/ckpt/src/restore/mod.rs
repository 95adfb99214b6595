//! `ckpt restore FILE`: the sequence of docs/design.md, "Restore".
//!
//! 1. The image is verified completely (every checksum) before any process is created, and
//!    everything the restorer needs is prepared (`prepare`): mapped files opened as the
//!    process's user, the kernel mappings checked, the fds' data read.
//! 2. A child is created with the original pid when it is free (clone3 set_tid), else any;
//!    it becomes the process (`restorer`) and calls the restore ioctl.
//! 3. We follow it to the ioctl's exit (`supervise`); there, every other thread is created
//!    and given its state, then the ids, credentials, registers (`finish_threads`).
//! 4. We detach: it continues where it was checkpointed; pending signals are raised again.
//!
//! Any failure before the detach kills the child: a half-restored process never runs.

mod restorer;
mod supervise;

use crate::creds::as_fs_user;
use crate::errors::{restore_io, RestoreError};
use crate::inject::Injector;
use crate::manifest::{Image, Process};
use crate::{fds, memory, sys, thread, vdso};
use nix::sys::ptrace;
use nix::unistd::Pid;
use restorer::Plan;
use std::path::Path;

/// Where the restored process went.
pub struct Restored {
    pub pid: i32,
    pub original_pid: i32,
}

/// Restores the image at `path`. The restored process is our child.
pub fn restore(path: &Path, device: &Path) -> Result<Restored, RestoreError> {
    let img = Image::open(path)?;
    let m = &img.manifest;
    if m.processes.len() != 1 {
        return Err(RestoreError::Processes(m.processes.len()));
    }
    let p = &m.processes[0];
    let xstates = p
        .threads
        .iter()
        .map(|t| img.read_section(t.xstate_section))
        .collect::<Result<Vec<_>, _>>()?;
    // Opened (and its ABI checked) before anything else; the restorer uses this fd.
    let dev = crate::device::Device::open(device)?;
    let mut plan = prepare(&img, p)?;

    let pid = fork_restorer(p.pid)?;
    if pid == 0 {
        restorer::run(p, &mut plan, &img.file, &dev);
    }
    // Parent. If anything fails from here, the child must die.
    let kill_child = |e: RestoreError| -> RestoreError {
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::waitpid(pid, 0);
        e
    };
    supervise::to_restore_exit(pid).map_err(kill_child)?;
    let tids = finish_threads(pid, p, &xstates).map_err(kill_child)?;
    for &tid in &tids {
        ptrace::detach(Pid::from_raw(tid), None)
            .map_err(|e| kill_child(restore_io("PTRACE_DETACH")(e.into())))?;
    }
    let per_thread: Vec<u64> = p.threads.iter().map(|t| t.pending).collect();
    crate::signals::raise_pending(pid, p.shared_pending, &per_thread, &tids)
        .map_err(restore_io("re-raising a pending signal"))?;
    drop(plan);
    Ok(Restored {
        pid,
        original_pid: p.pid,
    })
}

/// Everything the restorer needs, before the fork. Mapped files are opened as the
/// process's user, as it opened them.
fn prepare(img: &Image, p: &Process) -> Result<Plan, RestoreError> {
    let specials = vdso::check(&p.memory.vmas)?;
    let fs_user = match p.threads[0].creds.as_ref() {
        Some(c) => Some(
            as_fs_user(c.uid[3], c.gid[3], &c.groups).map_err(restore_io(
                "taking the process's filesystem ids to open its files",
            ))?,
        ),
        None => None,
    };
    let memory = memory::plan(&p.memory.vmas)?;
    drop(fs_user);
    let blobs = fds::blob_sections(&p.files)
        .into_iter()
        .map(|i| Ok((i, img.read_section(i)?)))
        .collect::<Result<_, RestoreError>>()?;
    let highest_own_fd = std::fs::read_dir("/proc/self/fd")
        .map_err(restore_io("listing /proc/self/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .max()
        .unwrap_or(2);
    Ok(Plan {
        memory,
        specials,
        blobs,
        highest_own_fd,
    })
}

/// Forks the restorer, with pid `want` if nobody has it (else any, said on stderr by the
/// caller). Returns 0 in the child.
fn fork_restorer(want: i32) -> Result<i32, RestoreError> {
    let want = (!Path::new(&format!("/proc/{want}")).exists()).then_some(want);
    match sys::fork_with_pid(want) {
        Ok(pid) => Ok(pid),
        Err(e)
            if want.is_some()
                && matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::EPERM)) =>
        {
            sys::fork_with_pid(None).map_err(restore_io("clone3"))
        }
        Err(e) => Err(restore_io("clone3")(e)),
    }
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
    if let Some(ic) = &p.interceptor {
        ic.restore_ids(&inj, &p.threads, &tids)
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
