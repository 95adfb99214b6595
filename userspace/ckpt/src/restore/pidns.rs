//! Restoring a tree into a new pid namespace, when one of its pids is taken here (or with
//! `--pidns`): inside, every process has its original pid, so nothing the programs hold
//! (pids in files, in memory, in their parents' wait calls) goes stale. ckpt forks an init,
//! pid 1 of the new namespace; it forks the roots' restorers with their pids and from then on
//! reaps orphans, forwards the usual termination and user signals to the first root, and exits
//! with that root's status when it ends (so `ckpt restore --wait` passes it on). Outside, the
//! processes have other pids, which ckpt traces and reports.

use super::restorer::{self, Restorers};
use crate::errors::{restore_io, RestoreError};
use crate::groups::Plan;
use crate::manifest::Manifest;
use crate::sys;
use nix::sys::signal::Signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// Whether the tree must go into a new pid namespace: asked for, or a pid of a tree (more
/// than one process, zombies, or helpers for groups and sessions, whose pids count too) is
/// taken here. A lone process takes another pid instead.
pub fn needed(m: &Manifest, groups: &Plan, asked: bool) -> bool {
    let tree = m.processes.len() > 1 || !m.zombies.is_empty() || !groups.no_helpers();
    let taken = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
    let pids = m
        .processes
        .iter()
        .map(|p| p.pid)
        .chain(m.zombies.iter().map(|z| z.pid))
        .chain(groups.helper_pids());
    asked || (tree && pids.clone().any(taken))
}

/// Forks the namespace's init, which forks every root's restorer. Returns the init's pid.
pub fn fork_init(r: &mut Restorers, roots: &[usize]) -> Result<i32, RestoreError> {
    let m = r.manifest;
    if m.processes.iter().any(|p| p.pid == 1) || m.zombies.iter().any(|z| z.pid == 1) {
        return Err(restore_io("restoring into a new pid namespace")(
            std::io::Error::other("the image has a process 1, which the namespace's init is"),
        ));
    }
    let pid = sys::fork_into_new_pid_namespace().map_err(restore_io("clone3 CLONE_NEWPID"))?;
    if pid == 0 {
        init(r, roots);
    }
    Ok(pid)
}

/// The first root, inside: where forwarded signals go.
static FIRST_ROOT: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let _ = sys::kill(FIRST_ROOT.load(Ordering::Relaxed), sig);
}

/// Pid 1 of the new namespace. Never returns.
fn init(r: &mut Restorers, roots: &[usize]) -> ! {
    let me = nix::unistd::getpid();
    for &i in roots {
        let want = r.manifest.processes[i].pid;
        if r.groups.session_helper_of(want).is_some() {
            continue; // forked by its session's helper, below
        }
        if restorer::fork_as(want, false) == 0 {
            restorer::run(r, i, restorer::Parent::direct(me));
        }
    }
    // Their roots become our children when the helpers exit (we reap the helpers below).
    let sessions: Vec<i32> = r.groups.sessions.keys().copied().collect();
    for sid in sessions {
        if let Err(e) = restorer::fork_session_helper(r, sid) {
            eprintln!("ckpt restore: forking the helper of session {sid}: {e}");
            sys::exit_now(1);
        }
    }
    // Inside, every root has its original pid.
    let first = roots.first().map_or(0, |&i| r.manifest.processes[i].pid);
    FIRST_ROOT.store(first, Ordering::Relaxed);
    // Nothing of ckpt's may stay open here (its pipes would never see their end of file;
    // whoever reads ckpt restore's output would wait for the whole namespace).
    let _ = sys::close_range(3, u32::MAX);
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    );
    if let Ok(null) = null {
        for fd in 0..3 {
            let _ = sys::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
        }
    }
    let act = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2] {
        // SAFETY: `forward` only reads an atomic and calls kill(2), async-signal-safe.
        let _ = unsafe { sigaction(sig, &act) };
    }
    // Forked from ckpt's restore, which blocks nothing: signals reach the handlers.
    let first = FIRST_ROOT.load(Ordering::Relaxed);
    loop {
        let mut status = 0;
        // SAFETY: waits for any child of ours; `status` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            sys::exit_now(0); // no child left
        }
        if pid == first {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            sys::exit_now(code);
        }
    }
}
